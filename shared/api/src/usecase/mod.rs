//! The use cases behind each endpoint, one module per function, generic over the ports they
//! need. They answer with a response or a [`DomainError`]; `router::handle` turns the error into
//! the contract's answer and logs the request's outcome.

pub(crate) mod confirmation;
pub(crate) mod payment_request;
pub(crate) mod registration;

use lambda_http::{Body, Response, http::StatusCode};
use twochan_domain::{
    DomainError, Payment, PaymentId, Result, Timestamp, UniqueCode,
    crypto::IssuerKeys,
    ports::{SettlementMessage, SettlementQueue},
};

use crate::http::json_response;
use crate::view::PaymentView;

/// How often a use case re-reads and retries after losing a race on a conditional write, before
/// answering 503 (a client retry is then safe).
const MAX_RACE_RETRIES: usize = 4;

/// Everything a handler may need, built once at init.
pub struct App<S, Q, E> {
    pub store: S,
    pub queue: Q,
    /// Where the events of payment changes go, to be sent to the merchants' webhooks.
    pub events: E,
    /// Whether `http://127.0.0.1:<port>/...` webhook URLs are accepted (the local stack only).
    pub allow_loopback_webhooks: bool,
    /// Every HTTP function verifies device codes (registration and beacon proofs, auth codes).
    pub issuer_keys: IssuerKeys,
    pub pending_ttl_seconds: i64,
}

/// A queue that refuses, for tests that run a function which never enqueues through the
/// all-in-one [`crate::routes::handle`]. The functions themselves hold `()` there, which is no
/// queue at all: enqueueing from registration or payment-request does not compile.
pub struct NoQueue;

impl SettlementQueue for NoQueue {
    async fn enqueue(&self, _: &SettlementMessage) -> Result<()> {
        Err(DomainError::Internal(
            "this function has no settlement queue".into(),
        ))
    }
}

/// Names the device (by its hash) and the payment on every further log line of the request.
fn record_log_ids(code: &UniqueCode, payment: Option<&PaymentId>) {
    let span = tracing::Span::current();
    span.record("unique_code_hash", code.log_hash());
    if let Some(id) = payment {
        span.record("payment_id", tracing::field::display(id));
    }
}

fn record_payment_log_ids(p: &Payment) {
    record_log_ids(&p.unique_code, Some(&p.payment_id));
}

fn payment_response(status: StatusCode, p: &Payment) -> Response<Body> {
    json_response(status, &PaymentView::new(p, Timestamp::now()))
}

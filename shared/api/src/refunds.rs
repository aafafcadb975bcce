//! `POST /v1/payments/{id}/refunds` and `GET /v1/payments/{id}/refunds`: money given back on a
//! settled payment, at most its amount in all, exactly once per idempotency key.

use lambda_http::{Body, Response, http::StatusCode};
use serde_json::json;
use twochan_domain::{
    Amount, DomainError, IdempotencyKey, MerchantId, PaymentId, PaymentSlot, Reason, RefundId,
    Result, Timestamp,
    crypto::sha256_hex,
    ports::{
        Directory, EventMessage, EventQueue, NewRefund, Payments, RefundSlotRecord, Refunds,
        StoredResponse, Write,
    },
    refund::Refund,
};

use crate::http::{JsonBody, json_response, kept_answer, replayed};
use crate::view::{RefundView, RefundsView};

/// Concurrent refunds of one payment each change it, so a request may lose several races in a
/// row before it wins or is refused; a loss means another refund succeeded, or another
/// transaction (a twin, a refund, a settlement on the balance) held its items for a moment (the
/// store pauses before reporting that), so the cap decides within a few rounds per racing refund.
const MAX_REFUND_ROUNDS: usize = 24;

struct RefundRequest {
    amount: Amount,
    reason: Option<Reason>,
}

impl RefundRequest {
    fn parse(body: &JsonBody) -> Result<Self> {
        Ok(Self {
            amount: Amount::try_from(body.u64("amount")?)?,
            reason: body
                .opt_string("reason")?
                .map(|r| Reason::try_from(r.to_owned()))
                .transpose()?,
        })
    }

    /// The parsed request and its payment, as "the same body" for the key.
    fn fingerprint(&self, payment: &PaymentId) -> String {
        let canonical = json!({
            "payment_id": payment.as_str(),
            "amount": self.amount.minor_units(),
            "reason": self.reason.as_ref().map(Reason::as_str),
        });
        sha256_hex(canonical.to_string().as_bytes())
    }
}

/// A refund request after its caller, body and key were accepted.
pub struct RefundCall<'a> {
    pub merchant: MerchantId,
    pub payment_id: PaymentId,
    pub key: IdempotencyKey,
    pub body: &'a JsonBody,
}

pub async fn create_refund<S, E>(
    store: &S,
    events: &E,
    call: RefundCall<'_>,
) -> Result<Response<Body>>
where
    S: Directory + Payments + Refunds,
    E: EventQueue,
{
    let request = RefundRequest::parse(call.body)?;
    let fingerprint = request.fingerprint(&call.payment_id);
    let slot = PaymentSlot::of_refund(&call.merchant, &call.key);
    for _ in 0..MAX_REFUND_ROUNDS {
        let payment = store
            .payment(&call.payment_id)
            .await?
            .filter(|p| p.merchant_id == call.merchant)
            .ok_or(DomainError::NotFound)?;
        if let Some(record) = store.refund_slot(&slot).await? {
            return replay(record, &fingerprint);
        }
        if let Err(e) = Refund::check(&payment, request.amount) {
            let Some(refusal) = StoredResponse::of(&e) else {
                return Err(e);
            };
            // A final answer: the same key gets it again.
            return match store
                .record_refund_rejection(&slot, &fingerprint, &refusal, Timestamp::now())
                .await?
            {
                // Kept: this request is refused like any other, by `routes::handle`.
                Write::Applied => Err(e),
                Write::Conflict => match store.refund_slot(&slot).await? {
                    Some(record) => replay(record, &fingerprint),
                    // A refund under this key was being written and did not commit: decide again.
                    None => continue,
                },
            };
        }
        let now = Timestamp::now();
        let refund = Refund {
            refund_id: RefundId::in_slot(now, &slot),
            payment_id: payment.payment_id.clone(),
            merchant_id: payment.merchant_id.clone(),
            amount: request.amount,
            currency: payment.currency,
            reason: request.reason.clone(),
            created_at: now.truncated_to_second(),
        };
        let write = NewRefund {
            refund: &refund,
            payment: &payment,
            fingerprint: &fingerprint,
        };
        // Announced before the commit; a refund that does not commit is dropped by the sender.
        events
            .enqueue_event(&EventMessage::refund(&refund, now))
            .await?;
        if store.refund(&write).await? == Write::Applied {
            tracing::info!(outcome = "refunded", refund_id = %refund.refund_id);
            return Ok(json_response(
                StatusCode::CREATED,
                &RefundView::new(&refund),
            ));
        }
        // The slot was taken, or the payment changed (another refund): decide again.
    }
    Err(DomainError::Unavailable("refund kept racing".into()))
}

/// The answer kept under a refund key: the refund as created, or the kept error; another body
/// under the key is `422 idempotency_key_reused`.
fn replay(record: RefundSlotRecord, fingerprint: &str) -> Result<Response<Body>> {
    let resp = match record {
        RefundSlotRecord::Refund {
            refund,
            fingerprint: kept,
        } if kept == fingerprint => json_response(StatusCode::CREATED, &RefundView::new(&refund)),
        RefundSlotRecord::Rejected {
            fingerprint: kept,
            response,
        } if kept == fingerprint => kept_answer(&response),
        _ => return Err(DomainError::IdempotencyKeyReused),
    };
    Ok(replayed(resp))
}

/// The refunds of a payment its caller may see (`owns` says whether it may), oldest first.
pub async fn list_refunds<S>(
    store: &S,
    payment_id: &PaymentId,
    owns: impl Fn(&twochan_domain::Payment) -> bool,
) -> Result<Response<Body>>
where
    S: Payments + Refunds,
{
    store
        .payment(payment_id)
        .await?
        .filter(|p| owns(p))
        .ok_or(DomainError::NotFound)?;
    let refunds = store.refunds_of(payment_id).await?;
    Ok(json_response(
        StatusCode::OK,
        &RefundsView {
            refunds: refunds.iter().map(RefundView::new).collect(),
        },
    ))
}

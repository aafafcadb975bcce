//! Webhooks: a merchant's endpoint (`PUT`/`GET`/`DELETE /v1/webhook-endpoint`), and the consumer
//! of the event queue that POSTs each event to it, signed, retried with growing delays.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_http::{Body, Response, http::StatusCode};
use serde::Serialize;
use serde_json::json;
use tracing::Instrument;
use twochan_domain::{
    DomainError, MerchantId, Payment, PaymentStatus, Result, Timestamp,
    ports::{
        Delivery, EventMessage, EventSources, ORPHAN_AFTER_MS, Refunds, WebhookEndpoint,
        WebhookEndpoints, WebhookTransport,
    },
    refund::Refund,
    webhook::{EventType, SecretSeal, WebhookSecret, WebhookUrl},
};

use crate::http::{JsonBody, empty_response, json_response};
use crate::view::{PaymentView, RefundView};

pub async fn put_endpoint<S: WebhookEndpoints>(
    store: &S,
    seal: &SecretSeal,
    allow_loopback: bool,
    merchant: &MerchantId,
    body: &JsonBody,
) -> Result<Response<Body>> {
    let url = WebhookUrl::parse(body.string("url")?, allow_loopback)?;
    let secret = WebhookSecret::generate();
    let endpoint = WebhookEndpoint {
        url,
        // Bound to its merchant: a sealed secret copied to another merchant's item does not open.
        sealed_secret: seal.seal(&secret, merchant.as_str()),
        set_at: Timestamp::now(),
    };
    store.put_endpoint(merchant, &endpoint).await?;
    tracing::info!(outcome = "webhook_endpoint_set");
    Ok(json_response(
        StatusCode::OK,
        &json!({"url": endpoint.url.as_str(), "secret": secret.as_str()}),
    ))
}

pub async fn get_endpoint<S: WebhookEndpoints>(
    store: &S,
    merchant: &MerchantId,
) -> Result<Response<Body>> {
    let endpoint = store
        .endpoint(merchant)
        .await?
        .ok_or(DomainError::NotFound)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"url": endpoint.url.as_str()}),
    ))
}

pub async fn delete_endpoint<S: WebhookEndpoints>(
    store: &S,
    merchant: &MerchantId,
) -> Result<Response<Body>> {
    store.delete_endpoint(merchant).await?;
    tracing::info!(outcome = "webhook_endpoint_deleted");
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// How the consumer paces its tries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The delay after the first failed try; each further one doubles it, up to `cap_seconds`.
    pub base_seconds: i32,
    pub cap_seconds: i32,
    /// The queue's receives before its dead-letter queue: the last failed try goes there at
    /// once instead of after one more delay.
    pub max_receives: u32,
    /// Age from which a message whose change is not (yet) visible is an orphan.
    pub orphan_after_ms: i64,
}

impl RetryPolicy {
    /// AWS: 1 min, 2, 4, … capped at 4 h; with the queue's 14 receives that is over 24 h of
    /// tries before the dead-letter queue. The local stack sets a base of 2 s.
    pub fn new(base_seconds: i32, max_receives: u32) -> Self {
        Self {
            base_seconds: base_seconds.max(1),
            cap_seconds: 4 * 3600,
            max_receives,
            orphan_after_ms: ORPHAN_AFTER_MS,
        }
    }

    /// The delay before the next try of a message received `receive_count` times.
    pub fn delay_after(&self, receive_count: u32) -> i32 {
        if receive_count >= self.max_receives {
            return 0;
        }
        let doublings = receive_count.saturating_sub(1).min(20);
        self.base_seconds
            .saturating_mul(1 << doublings)
            .min(self.cap_seconds)
    }
}

/// What became of one event message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// The merchant has no endpoint (now): nothing to send.
    NoEndpoint,
    /// The change it announces did not happen (its request failed before the commit).
    Orphan,
    /// Not delivered (or the change is not visible yet): deliver again later.
    Again(String),
}

/// One event: the change is checked against the stored state, the endpoint read as it is now,
/// the body built from the payment (and refund) as of the event, and POSTed.
pub async fn send_event<S, T>(
    store: &S,
    transport: &T,
    seal: &SecretSeal,
    message: &EventMessage,
    policy: &RetryPolicy,
    now: Timestamp,
) -> Result<Sent>
where
    S: EventSources + WebhookEndpoints + Refunds,
    T: WebhookTransport,
{
    // The endpoint first: a merchant without one costs this read and nothing more.
    let Some(endpoint) = store.endpoint(&message.merchant_id).await? else {
        return Ok(Sent::NoEndpoint);
    };
    let (payment, refund) = store
        .event_subject(&message.payment_id, message.refund_id.as_ref())
        .await?;
    let happened = payment
        .as_ref()
        .is_some_and(|p| message.happened(p, refund.as_ref()));
    let Some(payment) = payment.filter(|_| happened) else {
        return Ok(if message.age_ms(now) < policy.orphan_after_ms {
            Sent::Again("the change is not committed yet".into())
        } else {
            Sent::Orphan
        });
    };
    let payment = match &refund {
        Some(r) => as_of_refund(store, payment, r).await?,
        None => payment,
    };
    let secret = seal.open(&endpoint.sealed_secret, message.merchant_id.as_str())?;
    let body = event_body(message, &payment, refund.as_ref())?;
    Ok(
        match transport
            .deliver(&endpoint.url, &secret, body.as_bytes(), now)
            .await
        {
            Delivery::Delivered => Sent::Delivered,
            Delivery::Retry(why) => Sent::Again(why),
            Delivery::Forbidden(why) => {
                tracing::warn!(security_event = "webhook_forbidden", reason = %why, "webhook endpoint refused by the URL and address rules");
                Sent::Again(why)
            }
        },
    )
}

#[derive(Serialize)]
struct EventBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    created_at: String,
    data: EventData<'a>,
}

#[derive(Serialize)]
struct EventData<'a> {
    payment: PaymentView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refund: Option<RefundView<'a>>,
}

/// The payment as of `refund`: refunded by the refunds up to and including it, not by those that
/// came after it and before this event was sent. Only a payment with more than this refund costs
/// a read.
async fn as_of_refund<S: Refunds>(
    store: &S,
    mut payment: Payment,
    refund: &Refund,
) -> Result<Payment> {
    if payment.refunded_amount == refund.amount.minor_units() {
        return Ok(payment);
    }
    let refunds = store.refunds_of(&payment.payment_id).await?;
    if let Some(at) = refunds.iter().position(|r| r.refund_id == refund.refund_id) {
        payment.refunded_amount = refunds[..=at].iter().map(|r| r.amount.minor_units()).sum();
    }
    Ok(payment)
}

/// The event's JSON: the payment as of the event (its status then; a `payment.confirmed` sent
/// after settlement still shows `confirmed`), and the refund for `refund.succeeded`.
pub fn event_body(
    message: &EventMessage,
    current: &Payment,
    refund: Option<&Refund>,
) -> Result<String> {
    let mut then = current.clone();
    match message.event_type {
        EventType::PaymentConfirmed => {
            then.status = PaymentStatus::Confirmed;
            then.settled_at = None;
            then.refunded_amount = 0;
        }
        EventType::PaymentSettled => then.refunded_amount = 0,
        _ => {}
    }
    let body = EventBody {
        id: message.event_id.as_str(),
        kind: message.event_type.as_str(),
        created_at: Timestamp::from_millis(message.sent_at_ms).to_rfc3339(),
        data: EventData {
            payment: PaymentView::new(&then, then.created_at),
            refund: refund
                .filter(|_| message.event_type == EventType::RefundSucceeded)
                .map(RefundView::new),
        },
    };
    serde_json::to_string(&body).map_err(|e| DomainError::Internal(format!("event body: {e}")))
}

/// Makes a message visible again after a delay: the queue's side of a retry.
pub trait Redelivery: Send + Sync {
    fn retry_after(
        &self,
        receipt_handle: &str,
        seconds: i32,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Sends every event of a batch and reports the ones to deliver again, each made visible again
/// after its growing delay. After the queue's maximum receives it goes to the dead-letter queue.
pub async fn send_batch<S, T, R>(
    store: &S,
    transport: &T,
    seal: &SecretSeal,
    redelivery: &R,
    policy: &RetryPolicy,
    event: SqsEvent,
) -> SqsBatchResponse
where
    S: EventSources + WebhookEndpoints + Refunds,
    T: WebhookTransport,
    R: Redelivery,
{
    let outcomes = futures_util::future::join_all(event.records.iter().map(|record| {
        let id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!(
            "webhook",
            message_id = %id,
            event_id = tracing::field::Empty,
            event_type = tracing::field::Empty,
            payment_id = tracing::field::Empty,
        );
        async move {
            let failed = send_one(store, transport, seal, redelivery, policy, record)
                .instrument(span)
                .await;
            failed.then_some(id)
        }
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for id in outcomes.into_iter().flatten() {
        response.add_failure(id);
    }
    response
}

/// Whether the message must be delivered again.
async fn send_one<S, T, R>(
    store: &S,
    transport: &T,
    seal: &SecretSeal,
    redelivery: &R,
    policy: &RetryPolicy,
    record: &SqsMessage,
) -> bool
where
    S: EventSources + WebhookEndpoints + Refunds,
    T: WebhookTransport,
    R: Redelivery,
{
    let message: EventMessage = match serde_json::from_str(record.body.as_deref().unwrap_or("")) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error.detail = %e, "event message cannot be read; on to the dead-letter queue");
            return true;
        }
    };
    let span = tracing::Span::current();
    span.record("event_id", message.event_id.as_str());
    span.record("event_type", message.event_type.as_str());
    span.record("payment_id", tracing::field::display(&message.payment_id));
    let receives: u32 = record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let outcome = send_event(store, transport, seal, &message, policy, Timestamp::now()).await;
    let why = match outcome {
        Ok(Sent::Delivered) => {
            tracing::info!(outcome = "event_delivered", receives);
            return false;
        }
        Ok(Sent::NoEndpoint) => {
            tracing::info!(outcome = "no_endpoint");
            return false;
        }
        Ok(Sent::Orphan) => {
            tracing::info!(
                outcome = "orphan_event",
                "the change it announces never happened"
            );
            return false;
        }
        Ok(Sent::Again(why)) => why,
        Err(e) => format!("{}: {e:?}", e.code()),
    };
    let delay = policy.delay_after(receives);
    tracing::warn!(outcome = "event_not_delivered", reason = %why, receives, retry_in_s = delay);
    if let Some(handle) = record.receipt_handle.as_deref()
        && let Err(e) = redelivery.retry_after(handle, delay).await
    {
        // The queue's own visibility timeout retries it then.
        tracing::warn!(error.detail = ?e, "could not delay the retry");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_to_more_than_a_day_on_aws() {
        let aws = RetryPolicy::new(60, 14);
        let delays: Vec<i32> = (1..=13).map(|n| aws.delay_after(n)).collect();
        assert_eq!(&delays[..4], &[60, 120, 240, 480]);
        assert!(delays.iter().all(|d| *d <= 4 * 3600));
        // The tries after the first 13 receives span more than 24 h: the queue's 14 receives.
        assert!(delays.iter().map(|d| i64::from(*d)).sum::<i64>() > 24 * 3600);
        let local = RetryPolicy::new(2, 6);
        assert_eq!(
            local.delay_after(6),
            0,
            "the last try goes to the dead-letter queue at once"
        );
        let first_three: i32 = (1..=3).map(|n| local.delay_after(n)).sum();
        assert!(first_three < 60, "{first_three}");
    }
}

//! The settlement consumer: one span per message, partial batch failures.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;
use twochan_domain::{
    DomainError, PaymentStatus, Timestamp,
    ports::{EventMessage, EventQueue, Ledger, ORPHAN_AFTER_MS, Settlement, SettlementMessage},
    webhook::EventType,
};

/// Pauses before a message whose payment is still `pending` is tried again within the same
/// invocation. The confirmation sends the message just before it commits, so the commit is
/// normally milliseconds behind; only a slower one costs a redelivery (the visibility timeout).
pub const RECHECK_PAUSES_MS: [u64; 4] = [50, 150, 400, 1000];

/// How a consumer treats a message whose payment is not confirmed.
#[derive(Debug, Clone, Copy)]
pub struct SettleOptions<'a> {
    /// Pauses before looking again while the payment is `pending`.
    pub recheck_pauses_ms: &'a [u64],
    /// Age from which such a message is an orphan: see [`ORPHAN_AFTER_MS`].
    pub orphan_after_ms: i64,
}

impl SettleOptions<'static> {
    /// What the deployed function does.
    pub const DEPLOYED: Self = Self {
        recheck_pauses_ms: &RECHECK_PAUSES_MS,
        orphan_after_ms: ORPHAN_AFTER_MS,
    };
}

/// Settles every message of a batch and reports the ones to deliver again. A message that can
/// never settle (malformed, unknown payment) is reported too: after 5 receives the queue's redrive
/// policy moves it to the dead-letter queue, where an operator looks at it.
pub async fn settle_batch<L: Ledger, E: EventQueue>(
    ledger: &L,
    events: &E,
    event: SqsEvent,
) -> SqsBatchResponse {
    settle_batch_with(ledger, events, event, SettleOptions::DEPLOYED).await
}

/// [`settle_batch`] with its own treatment of messages whose payment is not confirmed.
pub async fn settle_batch_with<L: Ledger, E: EventQueue>(
    ledger: &L,
    events: &E,
    event: SqsEvent,
    options: SettleOptions<'_>,
) -> SqsBatchResponse {
    // The messages of a batch are settled concurrently, so that a few waiting on a commit (up to
    // 1.6 s each) cannot add up past the function's timeout.
    let outcomes = futures_util::future::join_all(event.records.iter().map(|record| {
        let id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!(
            "settle",
            message_id = %id,
            payment_id = tracing::field::Empty,
            unique_code_hash = tracing::field::Empty,
        );
        async move {
            let outcome = settle_one(ledger, events, record, options)
                .instrument(span.clone())
                .await;
            let _in_span = span.enter();
            match outcome {
                Ok(()) => None,
                Err(e) => {
                    if e.is_retryable() {
                        tracing::warn!(error.code = e.code(), error.detail = ?e, "settlement failed; will retry");
                    } else {
                        tracing::error!(error.code = e.code(), error.detail = ?e, "settlement message cannot settle; on to the dead-letter queue");
                    }
                    Some(id)
                }
            }
        }
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for id in outcomes.into_iter().flatten() {
        response.add_failure(id);
    }
    response
}

async fn settle_one<L: Ledger, E: EventQueue>(
    ledger: &L,
    events: &E,
    record: &SqsMessage,
    options: SettleOptions<'_>,
) -> Result<(), DomainError> {
    let body = record.body.as_deref().unwrap_or("");
    let message: SettlementMessage = serde_json::from_str(body)
        .map_err(|e| DomainError::InvalidRequest(format!("settlement message: {e}")))?;
    let span = tracing::Span::current();
    span.record("payment_id", tracing::field::display(&message.payment_id));
    span.record("unique_code_hash", message.unique_code.log_hash());
    // `payment.settled` is announced before the settlement commits, so no crash in between loses
    // it; its sender drops it if the payment never settles. Every delivery of this message sends
    // it again, under the same event id.
    events
        .enqueue_event(&EventMessage::of_payment(
            EventType::PaymentSettled,
            &message.payment_id,
            &message.merchant_id,
            Timestamp::now(),
        ))
        .await?;
    let mut pauses = options.recheck_pauses_ms.iter();
    loop {
        let now = Timestamp::now();
        match ledger.settle(&message, now).await? {
            Settlement::Settled => {
                tracing::info!(outcome = "settled");
                return Ok(());
            }
            Settlement::AlreadySettled => {
                tracing::info!(outcome = "duplicate_delivery");
                return Ok(());
            }
            // Its confirmation may still be committing: look again shortly, then let the
            // queue deliver it again.
            Settlement::NotConfirmed(PaymentStatus::Pending)
                if message.age_ms(now) < options.orphan_after_ms =>
            {
                match pauses.next() {
                    Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(*ms)).await,
                    None => {
                        return Err(DomainError::Unavailable("payment not confirmed yet".into()));
                    }
                }
            }
            // The confirmation that sent it never committed (lost a race, failed, or died
            // before its commit): nothing to settle, and nothing to retry.
            Settlement::NotConfirmed(status) => {
                tracing::info!(
                    outcome = "orphan_message",
                    status = status.as_str(),
                    "settlement message of a confirmation that never committed; dropped"
                );
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use twochan_domain::{
        Amount, Currency, MerchantId, PaymentId, UniqueCode,
        ports::{Balance, SettlementMessage},
    };

    use super::*;

    /// Answers `settle` from a script, and counts the calls.
    struct Scripted(Mutex<VecDeque<Settlement>>, Mutex<usize>);

    impl Scripted {
        fn new(answers: &[Settlement]) -> Self {
            Self(Mutex::new(answers.iter().copied().collect()), Mutex::new(0))
        }
        fn calls(&self) -> usize {
            *self.1.lock().unwrap()
        }
    }

    impl Ledger for Scripted {
        async fn settle(
            &self,
            _: &SettlementMessage,
            _: Timestamp,
        ) -> Result<Settlement, DomainError> {
            *self.1.lock().unwrap() += 1;
            Ok(self
                .0
                .lock()
                .unwrap()
                .pop_front()
                .expect("an answer left in the script"))
        }
        async fn balances(&self, _: &MerchantId) -> Result<Vec<Balance>, DomainError> {
            Ok(Vec::new())
        }
    }

    /// Events are sent and forgotten: the settlement tests look at the ledger only.
    struct Events;

    impl twochan_domain::ports::EventQueue for Events {
        async fn enqueue_event(
            &self,
            _: &twochan_domain::ports::EventMessage,
        ) -> Result<(), DomainError> {
            Ok(())
        }
    }

    fn event(sent_ms_ago: i64) -> SqsEvent {
        let message = SettlementMessage {
            payment_id: PaymentId::generate(Timestamp::now()),
            merchant_id: MerchantId::try_from("m-1").unwrap(),
            unique_code: UniqueCode::try_from("beacon-0001").unwrap(),
            amount: Amount::try_from(100).unwrap(),
            currency: Currency::try_from("EUR").unwrap(),
            sent_at_ms: Timestamp::now().millis() - sent_ms_ago,
        };
        let mut record = SqsMessage::default();
        record.message_id = Some("m".into());
        record.body = Some(serde_json::to_string(&message).unwrap());
        let mut event = SqsEvent::default();
        event.records = vec![record];
        event
    }

    const QUICK: SettleOptions<'static> = SettleOptions {
        recheck_pauses_ms: &[0, 0],
        orphan_after_ms: ORPHAN_AFTER_MS,
    };
    const PENDING: Settlement = Settlement::NotConfirmed(PaymentStatus::Pending);

    #[tokio::test]
    async fn a_young_message_of_a_pending_payment_waits_for_its_commit() {
        // The commit lands between two looks: settled in the same invocation.
        let ledger = Scripted::new(&[PENDING, Settlement::Settled]);
        let out = settle_batch_with(&ledger, &Events, event(10), QUICK).await;
        assert!(out.batch_item_failures.is_empty());
        assert_eq!(ledger.calls(), 2);
        // It never lands within the pauses: the queue must deliver it again.
        let ledger = Scripted::new(&[PENDING, PENDING, PENDING]);
        let out = settle_batch_with(&ledger, &Events, event(10), QUICK).await;
        assert_eq!(out.batch_item_failures.len(), 1);
        assert_eq!(ledger.calls(), 3);
    }

    #[tokio::test]
    async fn an_orphan_is_acknowledged_without_a_retry() {
        // Still pending long after its confirmation sent it: that confirmation never committed.
        let ledger = Scripted::new(&[PENDING]);
        let out = settle_batch_with(&ledger, &Events, event(ORPHAN_AFTER_MS), QUICK).await;
        assert!(out.batch_item_failures.is_empty());
        assert_eq!(ledger.calls(), 1);
        // A payment that ended otherwise (declined, expired...) never settles: at any age.
        let ledger = Scripted::new(&[Settlement::NotConfirmed(PaymentStatus::Declined)]);
        let out = settle_batch_with(&ledger, &Events, event(0), QUICK).await;
        assert!(out.batch_item_failures.is_empty());
        assert_eq!(ledger.calls(), 1);
    }
}

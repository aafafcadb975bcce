//! The settlement consumer: one span per message, partial batch failures.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
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

/// One message of a batch: its SQS id, its span, and what it says.
struct Received {
    id: String,
    span: tracing::Span,
    message: SettlementMessage,
}

/// [`settle_batch`] with its own treatment of messages whose payment is not confirmed.
///
/// The messages of one merchant and currency (one FIFO message group) settle in one transaction,
/// which updates their balance once: two settlements of one merchant never contend for the
/// balance item. Groups settle concurrently; they touch disjoint items.
pub async fn settle_batch_with<L: Ledger, E: EventQueue>(
    ledger: &L,
    events: &E,
    event: SqsEvent,
    options: SettleOptions<'_>,
) -> SqsBatchResponse {
    let mut failed: Vec<String> = Vec::new();
    let mut groups: Vec<(String, Vec<Received>)> = Vec::new();
    for record in &event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!(
            "settle",
            message_id = %id,
            payment_id = tracing::field::Empty,
            unique_code_hash = tracing::field::Empty,
        );
        let body = record.body.as_deref().unwrap_or("");
        match serde_json::from_str::<SettlementMessage>(body) {
            Ok(message) => {
                span.record("payment_id", tracing::field::display(&message.payment_id));
                span.record("unique_code_hash", message.unique_code.log_hash());
                let group = message.group();
                let received = Received { id, span, message };
                match groups.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, members)) => members.push(received),
                    None => groups.push((group, vec![received])),
                }
            }
            Err(e) => {
                let e = DomainError::InvalidRequest(format!("settlement message: {e}"));
                report_failure(&span, &e);
                failed.push(id);
            }
        }
    }
    let settled = futures_util::future::join_all(
        groups
            .iter()
            .map(|(_, members)| settle_group(ledger, events, members, options)),
    )
    .await;
    failed.extend(settled.into_iter().flatten());
    let mut response = SqsBatchResponse::default();
    for id in failed {
        response.add_failure(id);
    }
    response
}

fn report_failure(span: &tracing::Span, e: &DomainError) {
    let _in_span = span.enter();
    if e.is_retryable() {
        tracing::warn!(error.code = e.code(), error.detail = ?e, "settlement failed; will retry");
    } else {
        tracing::error!(error.code = e.code(), error.detail = ?e, "settlement message cannot settle; on to the dead-letter queue");
    }
}

/// Settles the messages of one group; returns the ids of those to deliver again.
async fn settle_group<L: Ledger, E: EventQueue>(
    ledger: &L,
    events: &E,
    members: &[Received],
    options: SettleOptions<'_>,
) -> Vec<String> {
    let mut failed = Vec::new();
    let mut fail = |r: &Received, e: &DomainError| {
        report_failure(&r.span, e);
        failed.push(r.id.clone());
    };
    // `payment.settled` is announced before the settlement commits, so no crash in between loses
    // it; its sender drops it if the payment never settles. Every delivery of a message sends it
    // again, under the same event id.
    let announced: Vec<EventMessage> = members
        .iter()
        .map(|r| {
            EventMessage::of_payment(
                EventType::PaymentSettled,
                &r.message.payment_id,
                &r.message.merchant_id,
                Timestamp::now(),
            )
        })
        .collect();
    if let Err(e) = events.enqueue_events(&announced).await {
        members.iter().for_each(|r| fail(r, &e));
        return failed;
    }
    let mut todo: Vec<&Received> = members.iter().collect();
    let mut pauses = options.recheck_pauses_ms.iter();
    while !todo.is_empty() {
        let now = Timestamp::now();
        let messages: Vec<SettlementMessage> = todo.iter().map(|r| r.message.clone()).collect();
        let outcomes = match ledger.settle_group(&messages, now).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                todo.iter().for_each(|r| fail(r, &e));
                return failed;
            }
        };
        let mut waiting = Vec::new();
        // Confirm → settle latency: the message is sent just before the confirmation commits.
        let mut latencies_ms: Vec<i64> = Vec::new();
        for (r, outcome) in todo.into_iter().zip(outcomes) {
            let _in_span = r.span.enter();
            match outcome {
                Ok(Settlement::Settled) => {
                    latencies_ms.push(r.message.age_ms(now).max(0));
                    tracing::info!(outcome = "settled")
                }
                Ok(Settlement::AlreadySettled) => tracing::info!(outcome = "duplicate_delivery"),
                // Its confirmation may still be committing: look again shortly, then let the
                // queue deliver it again.
                Ok(Settlement::NotConfirmed(PaymentStatus::Pending))
                    if r.message.age_ms(now) < options.orphan_after_ms =>
                {
                    waiting.push(r)
                }
                // The confirmation that sent it never committed (lost a race, failed, or died
                // before its commit): nothing to settle, and nothing to retry.
                Ok(Settlement::NotConfirmed(status)) => tracing::info!(
                    outcome = "orphan_message",
                    status = status.as_str(),
                    "settlement message of a confirmation that never committed; dropped"
                ),
                Err(e) => {
                    drop(_in_span);
                    fail(r, &e);
                }
            }
        }
        if !latencies_ms.is_empty() {
            crate::telemetry::emit(&[
                ("PaymentsSettled", "Count", latencies_ms.len().into()),
                (
                    "ConfirmToSettleLatency",
                    "Milliseconds",
                    latencies_ms.into(),
                ),
            ]);
        }
        if waiting.is_empty() {
            break;
        }
        match pauses.next() {
            Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(*ms)).await,
            None => {
                let e = DomainError::Unavailable("payment not confirmed yet".into());
                waiting.iter().for_each(|r| fail(r, &e));
                break;
            }
        }
        todo = waiting;
    }
    failed
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use aws_lambda_events::event::sqs::SqsMessage;
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
        async fn settle_group(
            &self,
            messages: &[SettlementMessage],
            _: Timestamp,
        ) -> Result<Vec<Result<Settlement, DomainError>>, DomainError> {
            *self.1.lock().unwrap() += 1;
            let mut script = self.0.lock().unwrap();
            Ok(messages
                .iter()
                .map(|_| Ok(script.pop_front().expect("an answer left in the script")))
                .collect())
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

    fn record(id: &str, merchant: &str, currency: &str, sent_ms_ago: i64) -> SqsMessage {
        let message = SettlementMessage {
            payment_id: PaymentId::generate(Timestamp::now()),
            merchant_id: MerchantId::try_from(merchant).unwrap(),
            unique_code: UniqueCode::try_from("beacon-0001").unwrap(),
            amount: Amount::try_from(100).unwrap(),
            currency: Currency::try_from(currency).unwrap(),
            sent_at_ms: Timestamp::now().millis() - sent_ms_ago,
        };
        let mut record = SqsMessage::default();
        record.message_id = Some(id.into());
        record.body = Some(serde_json::to_string(&message).unwrap());
        record
    }

    fn event(sent_ms_ago: i64) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = vec![record("m", "m-1", "EUR", sent_ms_ago)];
        event
    }

    /// Records each group it is asked to settle, as `merchant/currency × messages`.
    struct Groups(Mutex<Vec<(String, usize)>>);

    impl Ledger for Groups {
        async fn settle_group(
            &self,
            messages: &[SettlementMessage],
            _: Timestamp,
        ) -> Result<Vec<Result<Settlement, DomainError>>, DomainError> {
            let group = messages[0].group();
            assert!(messages.iter().all(|m| m.group() == group), "{messages:?}");
            self.0.lock().unwrap().push((group, messages.len()));
            Ok(messages.iter().map(|_| Ok(Settlement::Settled)).collect())
        }
        async fn balances(&self, _: &MerchantId) -> Result<Vec<Balance>, DomainError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_batch_settles_one_group_per_merchant_and_currency() {
        let mut event = SqsEvent::default();
        event.records = vec![
            record("a", "m-1", "EUR", 0),
            record("b", "m-2", "EUR", 0),
            record("c", "m-1", "EUR", 0),
            record("d", "m-1", "USD", 0),
            record("e", "m-2", "EUR", 0),
        ];
        let mut poison = SqsMessage::default();
        poison.message_id = Some("p".into());
        poison.body = Some("{}".into());
        event.records.push(poison);
        let ledger = Groups(Mutex::new(Vec::new()));
        let out = settle_batch_with(&ledger, &Events, event, QUICK).await;
        let failed: Vec<_> = out
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["p"]);
        let mut groups = ledger.0.into_inner().unwrap();
        groups.sort();
        assert_eq!(
            groups,
            [
                ("m-1/EUR".to_owned(), 2),
                ("m-1/USD".to_owned(), 1),
                ("m-2/EUR".to_owned(), 2)
            ]
        );
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

//! The settlement consumer: one span per message, partial batch failures.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;
use twochan_domain::{
    DomainError, Timestamp,
    ports::{Ledger, Settlement, SettlementMessage},
};

/// Settles every message of a batch and reports the ones to deliver again. A message that can
/// never settle (malformed, unknown payment) is reported too: after 5 receives the queue's redrive
/// policy moves it to the dead-letter queue, where an operator looks at it.
pub async fn settle_batch<L: Ledger>(ledger: &L, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!(
            "settle",
            message_id = %id,
            payment_id = tracing::field::Empty,
            unique_code_hash = tracing::field::Empty,
        );
        let outcome = settle_one(ledger, &record).instrument(span.clone()).await;
        let _in_span = span.enter();
        if let Err(e) = outcome {
            if e.is_retryable() {
                tracing::warn!(error.code = e.code(), error.detail = ?e, "settlement failed; will retry");
            } else {
                tracing::error!(error.code = e.code(), error.detail = ?e, "settlement message cannot settle; on to the dead-letter queue");
            }
            response.add_failure(id);
        }
    }
    response
}

async fn settle_one<L: Ledger>(ledger: &L, record: &SqsMessage) -> Result<(), DomainError> {
    let body = record.body.as_deref().unwrap_or("");
    let message: SettlementMessage = serde_json::from_str(body)
        .map_err(|e| DomainError::InvalidRequest(format!("settlement message: {e}")))?;
    let span = tracing::Span::current();
    span.record("payment_id", tracing::field::display(&message.payment_id));
    span.record("unique_code_hash", message.unique_code.log_hash());
    match ledger.settle(&message, Timestamp::now()).await? {
        Settlement::Settled => {
            tracing::info!(outcome = "settled")
        }
        Settlement::AlreadySettled => {
            tracing::info!(outcome = "duplicate_delivery")
        }
    }
    Ok(())
}

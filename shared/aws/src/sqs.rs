//! The settlement and webhook-event queues on SQS.

use serde::Serialize;
use twochan_domain::{
    DomainError, Result,
    ports::{EventMessage, EventQueue, SettlementMessage, SettlementQueue},
};

/// One SQS queue that messages are sent to as JSON.
#[derive(Clone, Debug)]
struct Queue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

/// Where a message goes on a FIFO queue: its message group (one consumer at a time per group)
/// and its deduplication id (a resend within 5 minutes is dropped).
struct Fifo {
    group: String,
    dedup: String,
}

/// Messages per `SendMessageBatch` (the service's limit).
const SEND_BATCH_LIMIT: usize = 10;

impl Queue {
    fn is_fifo(&self) -> bool {
        self.queue_url.ends_with(".fifo")
    }

    async fn send(&self, what: &str, message: &impl Serialize, fifo: Option<Fifo>) -> Result<()> {
        let body = serde_json::to_string(message)
            .map_err(|e| DomainError::Internal(format!("{what} message: {e}")))?;
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body);
        if let Some(f) = fifo.filter(|_| self.is_fifo()) {
            request = request
                .message_group_id(f.group)
                .message_deduplication_id(f.dedup);
        }
        request.send().await.map_err(|e| {
            let e = aws_sdk_sqs::error::DisplayErrorContext(e);
            tracing::error!(queue = what, error = %e, "sqs SendMessage failed");
            DomainError::Unavailable(format!("sqs SendMessage: {e}"))
        })?;
        Ok(())
    }

    /// Up to ten messages per request; any message the queue did not take fails the call.
    async fn send_all(&self, what: &str, messages: &[impl Serialize]) -> Result<()> {
        for chunk in messages.chunks(SEND_BATCH_LIMIT) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, message) in chunk.iter().enumerate() {
                let body = serde_json::to_string(message)
                    .map_err(|e| DomainError::Internal(format!("{what} message: {e}")))?;
                entries.push(
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| DomainError::Internal(format!("{what} message: {e}")))?,
                );
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    let e = aws_sdk_sqs::error::DisplayErrorContext(e);
                    tracing::error!(queue = what, error = %e, "sqs SendMessageBatch failed");
                    DomainError::Unavailable(format!("sqs SendMessageBatch: {e}"))
                })?;
            if let Some(failed) = out.failed.first() {
                tracing::error!(
                    queue = what,
                    code = failed.code(),
                    refused = out.failed.len(),
                    "sqs SendMessageBatch refused messages"
                );
                return Err(DomainError::Unavailable(format!(
                    "sqs SendMessageBatch refused {} of {} messages ({})",
                    out.failed.len(),
                    chunk.len(),
                    failed.code()
                )));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct SqsSettlementQueue(Queue);

impl SqsSettlementQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self(Queue { client, queue_url })
    }
}

impl SettlementQueue for SqsSettlementQueue {
    async fn enqueue(&self, message: &SettlementMessage) -> Result<()> {
        // Deduplicated per send, not per payment: an SDK retry of this very send is dropped,
        // while a confirmation retried after an orphaned message (or the sweeper) gets through.
        let fifo = Fifo {
            group: message.group(),
            dedup: format!("{}.{}", message.payment_id, message.sent_at_ms),
        };
        self.0.send("settlement", message, Some(fifo)).await
    }
}

#[derive(Clone, Debug)]
pub struct SqsEventQueue(Queue);

impl SqsEventQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self(Queue { client, queue_url })
    }

    /// Makes a received message visible again after `seconds` (SQS allows up to 12 h): how a
    /// failed delivery is retried later, with a delay that grows with its receive count.
    pub async fn retry_after(&self, receipt_handle: &str, seconds: i32) -> Result<()> {
        self.0
            .client
            .change_message_visibility()
            .queue_url(&self.0.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| {
                DomainError::Unavailable(format!(
                    "sqs ChangeMessageVisibility: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                ))
            })?;
        Ok(())
    }
}

impl EventQueue for SqsEventQueue {
    async fn enqueue_event(&self, message: &EventMessage) -> Result<()> {
        self.0.send("webhook", message, None).await
    }

    async fn enqueue_events(&self, messages: &[EventMessage]) -> Result<()> {
        self.0.send_all("webhook", messages).await
    }
}

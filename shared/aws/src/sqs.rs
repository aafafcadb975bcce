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

impl Queue {
    async fn send(&self, what: &str, message: &impl Serialize) -> Result<()> {
        let body = serde_json::to_string(message)
            .map_err(|e| DomainError::Internal(format!("{what} message: {e}")))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| {
                let e = aws_sdk_sqs::error::DisplayErrorContext(e);
                tracing::error!(queue = what, error = %e, "sqs SendMessage failed");
                DomainError::Unavailable(format!("sqs SendMessage: {e}"))
            })?;
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
        self.0.send("settlement", message).await
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
        self.0.send("webhook", message).await
    }
}

//! The settlement queue on SQS.

use twochan_domain::{
    DomainError, Result,
    ports::{SettlementMessage, SettlementQueue},
};

#[derive(Clone, Debug)]
pub struct SqsSettlementQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsSettlementQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }
}

impl SettlementQueue for SqsSettlementQueue {
    async fn enqueue(&self, message: &SettlementMessage) -> Result<()> {
        let body = serde_json::to_string(message)
            .map_err(|e| DomainError::Internal(format!("settlement message: {e}")))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| {
                let e = aws_sdk_sqs::error::DisplayErrorContext(e);
                tracing::error!(error = %e, "sqs SendMessage failed");
                DomainError::Unavailable(format!("sqs SendMessage: {e}"))
            })?;
        Ok(())
    }
}

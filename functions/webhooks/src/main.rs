//! Lambda function `webhooks`: SQS-triggered, POSTs each event to its merchant's endpoint.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{LambdaEvent, run, service_fn};
use twochan_api::{
    telemetry,
    webhooks::{Redelivery, RetryPolicy, send_batch},
};
use twochan_aws::{
    AwsClients, DynamoStore, Settings, SqsEventQueue, secrets, webhook_sender::WebhookSender,
};
use twochan_domain::{Result, webhook::SecretSeal};

/// The event queue's own messages are made visible again after a delay.
struct Queue(SqsEventQueue);

impl Redelivery for Queue {
    async fn retry_after(&self, receipt_handle: &str, seconds: i32) -> Result<()> {
        self.0.retry_after(receipt_handle, seconds).await
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let clients = AwsClients::from_env()?;
    let store = DynamoStore::new(clients.dynamodb.clone(), &settings.table_name);
    let ((), keys) = tokio::join!(
        store.warm_up(),
        secrets::issuer_keys(&settings, &clients.config)
    );
    let seal = SecretSeal::from_issuer_keys(&keys?);
    let queue = Queue(SqsEventQueue::new(
        clients.sqs,
        settings.require_webhook_queue_url()?,
    ));
    let sender = WebhookSender::new(settings.allow_loopback_webhooks);
    let policy = RetryPolicy::new(
        settings.webhook_retry_base_seconds as i32,
        settings.webhook_max_receives as u32,
    );
    let (store, seal, queue, sender, policy) = (&store, &seal, &queue, &sender, &policy);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, std::convert::Infallible>(
            send_batch(store, sender, seal, queue, policy, event.payload).await,
        )
    }))
    .await
}

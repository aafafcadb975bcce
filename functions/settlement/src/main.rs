//! Lambda function `settlement`: SQS-triggered, settles confirmed payments into the ledger.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{LambdaEvent, run, service_fn};
use twochan_api::{settlement::settle_batch, telemetry};
use twochan_aws::{AwsClients, DynamoStore, Settings, SqsEventQueue};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let clients = AwsClients::from_env()?;
    let store = DynamoStore::new(clients.dynamodb, &settings.table_name);
    let events = SqsEventQueue::new(clients.sqs, settings.require_webhook_queue_url()?);
    store.warm_up().await;
    let (store, events) = (&store, &events);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, std::convert::Infallible>(
            settle_batch(store, events, event.payload).await,
        )
    }))
    .await
}

//! Lambda function `reconciler`: run every minute by an EventBridge schedule, it re-sends the
//! settlement message of payments left `confirmed` (see `twochan_api::reconcile`).

use lambda_runtime::{LambdaEvent, run, service_fn};
use serde_json::Value;
use twochan_api::{
    reconcile::{DEFAULT_RECONCILE_BATCH, ReconcileReport, reconcile},
    telemetry,
};
use twochan_aws::{AwsClients, DynamoStore, Settings, SqsSettlementQueue};
use twochan_domain::Timestamp;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let clients = AwsClients::from_env().await;
    let store = DynamoStore::new(clients.dynamodb, &settings.table_name);
    store.warm_up().await;
    let queue = SqsSettlementQueue::new(clients.sqs, settings.require_queue_url()?);
    let (store, queue, after) = (&store, &queue, settings.reconcile_after_seconds);
    // The scheduled event carries nothing we need; a failed run is retried by the next schedule.
    run(service_fn(move |_: LambdaEvent<Value>| async move {
        let report: ReconcileReport = reconcile(
            store,
            queue,
            Timestamp::now(),
            after,
            DEFAULT_RECONCILE_BATCH,
        )
        .await?;
        Ok::<ReconcileReport, lambda_runtime::Error>(report)
    }))
    .await
}

//! Lambda function `sweeper`: run by an EventBridge schedule, it sends the settlement message of
//! every payment `confirmed` for longer than `STUCK_AFTER_SECONDS` (default 300) again, logs one
//! line per payment and one Embedded Metric Format line per run (`Twochan/StuckConfirmedFound`,
//! which `StuckConfirmedAlarm` watches). See `twochan_api::sweeper`.

use lambda_runtime::{LambdaEvent, run, service_fn};
use serde_json::Value;
use twochan_api::{
    sweeper::{self, SweepLimits, SweepSummary},
    telemetry,
};
use twochan_aws::{AwsClients, DynamoStore, Settings, SqsSettlementQueue, config};
use twochan_domain::Timestamp;

/// Kept back from the invocation's deadline: the sends under way finish and the metric line is
/// written before Lambda stops the function.
const DEADLINE_MARGIN_MS: i64 = 5_000;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let stuck_after = config::bounded_setting(
        &|k: &str| std::env::var(k).ok(),
        "STUCK_AFTER_SECONDS",
        sweeper::DEFAULT_STUCK_AFTER_SECONDS,
        1..=sweeper::MAX_STUCK_AFTER_SECONDS,
    )?;
    let function =
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "sweeper".to_owned());
    let clients = AwsClients::from_env()?;
    let store = DynamoStore::new(clients.dynamodb, &settings.table_name);
    let queue = SqsSettlementQueue::new(clients.sqs, settings.require_queue_url()?);
    let (store, queue, function) = (&store, &queue, function.as_str());
    // The event (an EventBridge "Scheduled Event") carries nothing the run needs but its id.
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = i64::try_from(event.context.deadline).unwrap_or(i64::MAX);
        let limits = SweepLimits {
            stop_at: Some(Timestamp::from_millis(
                deadline.saturating_sub(DEADLINE_MARGIN_MS),
            )),
            ..SweepLimits::DEPLOYED
        };
        tracing::info!(
            event_id = event.payload["id"].as_str().unwrap_or(""),
            stuck_after_seconds = stuck_after,
            "sweep: start"
        );
        let summary = sweeper::sweep(store, queue, Timestamp::now(), stuck_after, limits).await;
        println!("{}", summary.emf(function, Timestamp::now()));
        match summary.error() {
            Some(e) => Err::<SweepSummary, lambda_runtime::Error>(e.into()),
            None => Ok(summary),
        }
    }))
    .await
}

//! Lambda function `confirmation`: its routes are `twochan_api::routes::confirmation`.

use twochan_api::{App, routes, serve_http, telemetry};
use twochan_aws::{AwsClients, DynamoStore, Settings, SqsEventQueue, SqsSettlementQueue, secrets};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let clients = AwsClients::from_env()?;
    let store = DynamoStore::new(clients.dynamodb.clone(), &settings.table_name);
    // Both are network round trips at init; neither needs the other.
    let ((), keys) = tokio::join!(
        store.warm_up(),
        secrets::issuer_keys(&settings, &clients.config)
    );
    let app = App {
        store,
        queue: SqsSettlementQueue::new(clients.sqs.clone(), settings.require_queue_url()?),
        issuer_keys: keys?,
        pending_ttl_seconds: settings.pending_ttl_seconds,
        events: SqsEventQueue::new(clients.sqs.clone(), settings.require_webhook_queue_url()?),
        allow_loopback_webhooks: settings.allow_loopback_webhooks,
    };
    serve_http(|req| routes::confirmation(&app, req)).await
}

//! Lambda function `payment-request`: see `twochan_api::routes::Function::PaymentRequest` for its routes.

use twochan_api::{
    App,
    routes::{Function, NoQueue},
    serve_http, telemetry,
};
use twochan_aws::{AwsClients, DynamoStore, Settings};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let clients = AwsClients::from_env()?;
    let store = DynamoStore::new(clients.dynamodb.clone(), &settings.table_name);
    store.warm_up().await;
    let app = App {
        store,
        queue: NoQueue,
        issuer_keys: None,
        pending_ttl_seconds: settings.pending_ttl_seconds,
    };
    serve_http(app, Function::PaymentRequest).await
}

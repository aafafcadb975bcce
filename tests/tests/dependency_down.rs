//! A dependency that does not answer: the handlers, with real SDK clients pointed at a closed
//! port, answer 503 `unavailable` with `Retry-After` — never a 500, never a panic.

use crate::common::harness_config;
use lambda_http::http::StatusCode;
use twochan_api::{
    App,
    routes::{Function, NoQueue, handle},
};
use twochan_aws::{AwsClients, DynamoStore, SqsEventQueue, SqsSettlementQueue};
use twochan_domain::crypto::MasterKey;

async fn dead_clients() -> AwsClients {
    // Port 9 (discard) on loopback: nothing listens, every connection is refused.
    AwsClients::from_config(&harness_config("http://127.0.0.1:9").await)
}

fn fixture(name: &str) -> lambda_http::Request {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn every_http_function_answers_503_when_dynamodb_is_down() {
    let clients = dead_clients().await;
    let app = App {
        store: DynamoStore::new(clients.dynamodb.clone(), "payments"),
        queue: SqsSettlementQueue::new(
            clients.sqs.clone(),
            "http://127.0.0.1:9/000000000000/q".into(),
        ),
        issuer_keys: MasterKey::from_hex(&"00".repeat(32)).unwrap().into(),
        pending_ttl_seconds: 120,
        events: SqsEventQueue::new(
            clients.sqs.clone(),
            "http://127.0.0.1:9/000000000000/e".into(),
        ),
        allow_loopback_webhooks: true,
    };
    let no_queue = App {
        store: app.store.clone(),
        queue: NoQueue,
        issuer_keys: app.issuer_keys.clone(),
        pending_ttl_seconds: 120,
        events: SqsEventQueue::new(
            clients.sqs.clone(),
            "http://127.0.0.1:9/000000000000/e".into(),
        ),
        allow_loopback_webhooks: true,
    };
    for (file, function) in [
        ("create-payment.json", Function::PaymentRequest),
        ("get-payment.json", Function::PaymentRequest),
        ("balance.json", Function::PaymentRequest),
        ("pending-payments.json", Function::Confirmation),
        ("deregister-device.json", Function::Registration),
    ] {
        let resp = match function {
            Function::Confirmation => handle(&app, function, fixture(file)).await,
            _ => handle(&no_queue, function, fixture(file)).await,
        };
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{file}");
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("1"),
            "{file}"
        );
        let body: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{file}: {body}");
        assert!(
            !body.to_string().contains("127.0.0.1"),
            "dependency detail leaked: {body}"
        );
    }
}

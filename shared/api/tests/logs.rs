//! What `handle` logs of a refusal that a use case keeps under its idempotency key: one refusal
//! line, with the refusal's code as the outcome, and no other outcome line.

mod support;

use serde_json::{Value, json};
use support::*;
use twochan_api::{routes::Function, telemetry::CapturedLogs};
use twochan_domain::{
    Timestamp, UniqueCode,
    crypto::{BeaconStep, MasterKey},
};

/// Runs `req` through `handle` and returns its status and the lines it logged.
fn logged(function: Function, req: lambda_http::Request) -> (u16, Vec<Value>) {
    let (captured, _guard) = CapturedLogs::capture();
    let world = World::new();
    let app = world.app();
    let resp = run(&app, function, req);
    assert!(app.store.take_writes() > 0, "the refusal was not kept");
    let text = captured.text();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (resp.status().as_u16(), lines)
}

fn assert_refused_once(lines: &[Value], code: &str) {
    let outcomes: Vec<&Value> = lines
        .iter()
        .filter(|l| !l["fields"]["outcome"].is_null())
        .collect();
    assert_eq!(outcomes.len(), 1, "{lines:#?}");
    assert_eq!(outcomes[0]["fields"]["message"], "request refused");
    assert_eq!(outcomes[0]["fields"]["outcome"], code);
}

fn post(path: &str, key: &str, body: &Value) -> lambda_http::Request {
    let headers = [
        (
            "authorization".into(),
            format!("Bearer {MERCHANT_KEY}").into(),
        ),
        ("content-type".into(), b"application/json".to_vec()),
        ("idempotency-key".into(), key.as_bytes().to_vec()),
    ];
    request("POST", path, &headers, serde_json::to_vec(body).unwrap()).unwrap()
}

#[test]
fn a_kept_payment_refusal_is_logged_once() {
    // The world's device holds another payment: `409 device_busy`, kept under the key.
    let code = UniqueCode::try_from(CODE).unwrap();
    let beacon = MasterKey::from_hex(MASTER_KEY_HEX)
        .unwrap()
        .device_key(&code)
        .beacon_proof(&code, BeaconStep::at(Timestamp::now()));
    let body = json!({"unique_code": CODE, "beacon_proof": beacon, "amount": 4500, "currency": "KRW", "pos_id": "pos-1"});
    let req = post("/v1/payments", "logs-busy-1", &body);
    let (status, lines) = logged(Function::PaymentRequest, req);
    assert_eq!(status, 409);
    assert_refused_once(&lines, "device_busy");
}

#[test]
fn a_kept_refund_refusal_is_logged_once() {
    // The world's payment is pending: `409 payment_not_settled`, kept under the key.
    let path = format!("/v1/payments/{PAYMENT_ID}/refunds");
    let req = post(&path, "logs-refund-1", &json!({"amount": 100}));
    let (status, lines) = logged(Function::PaymentRequest, req);
    assert_eq!(status, 409);
    assert_refused_once(&lines, "payment_not_settled");
}

//! What the functions log about a payment, captured in the functions' own JSON format while the
//! real handlers run a payment against the emulator: every line after the payment is known
//! carries `payment_id`, `unique_code_hash` and `request_id`; every request ends with an
//! `outcome`; no line carries the unique code, a token, an API key, an auth code or the master
//! key. The fields the template's metric filters read are checked to exist.

use crate::common::{Harness, answer, registration_request, request};
use lambda_http::{Context, RequestExt};
use serde_json::{Value, json};
use twochan_api::{
    App,
    routes::{Function, NoQueue, handle},
    telemetry::CapturedLogs,
};
use twochan_aws::SqsSettlementQueue;
use twochan_domain::UniqueCode;
use twochan_tools::unique_id;

fn with_request_id(req: lambda_http::Request, id: &str) -> lambda_http::Request {
    let mut context = Context::default();
    context.request_id = id.into();
    req.with_lambda_context(context)
}

#[tokio::test]
async fn payment_log_lines_name_the_payment_never_the_secrets() {
    let ctx = Harness::new().await;
    let (captured, _guard) = CapturedLogs::capture();

    let pos = ctx.pos().await;
    let app = App {
        store: ctx.store.clone(),
        queue: SqsSettlementQueue::new(ctx.sqs.clone(), ctx.var("SETTLEMENT_QUEUE_URL")),
        issuer_keys: ctx.master.clone().into(),
        pending_ttl_seconds: 120,
        events: ctx.events(),
        allow_loopback_webhooks: true,
    };
    let no_queue = App {
        store: ctx.store.clone(),
        queue: NoQueue,
        issuer_keys: app.issuer_keys.clone(),
        pending_ttl_seconds: 120,
        events: ctx.events(),
        allow_loopback_webhooks: true,
    };
    let mut device = ctx.device();
    let terminal = unique_id("term-");
    let reg = registration_request(&ctx.store, &device, &terminal).await;
    let (status, body) = answer(
        &handle(
            &no_queue,
            Function::Registration,
            with_request_id(reg, "req-register"),
        )
        .await,
    );
    assert_eq!(status, 201, "{body}");
    let token = body["terminal_token"].as_str().unwrap().to_owned();
    let create = request(
        "POST",
        "/v1/payments",
        &pos.api_key,
        &[("idempotency-key", "k-logs-1")],
        Some(
            &json!({"unique_code": device.code(), "beacon_proof": device.beacon().proof, "amount": 990, "currency": "EUR", "pos_id": "pos-1"}),
        ),
    );
    let (status, payment) = answer(
        &handle(
            &no_queue,
            Function::PaymentRequest,
            with_request_id(create, "req-create"),
        )
        .await,
    );
    assert_eq!(status, 201, "{payment}");
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    let (code, counter) = device.authorize(&payment);
    // A wrong code first (a refusal and a security event), then the right one.
    for (n, auth) in [
        ("req-wrong", "ab".repeat(32)),
        ("req-confirm", code.clone()),
    ] {
        let req = request(
            "POST",
            &format!("/v1/payments/{id}/confirm"),
            &token,
            &[],
            Some(&json!({"auth_code": auth, "counter": counter})),
        );
        handle(&app, Function::Confirmation, with_request_id(req, n)).await;
    }
    let get = request(
        "GET",
        &format!("/v1/payments/{id}"),
        &pos.api_key,
        &[],
        None,
    );
    let (status, _) = answer(
        &handle(
            &no_queue,
            Function::PaymentRequest,
            with_request_id(get, "req-get"),
        )
        .await,
    );
    assert_eq!(status, 200);

    let text = captured.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.len() >= 6, "{text}");
    let hash = UniqueCode::try_from(device.code()).unwrap().log_hash();
    for secret in [
        device.code(),
        token.as_str(),
        pos.api_key.as_str(),
        code.as_str(),
        &ctx.var("ISSUER_MASTER_KEY"),
    ] {
        assert!(
            !text.contains(secret),
            "a log line carries a secret or the raw code: {text}"
        );
    }
    for request_id in ["req-wrong", "req-confirm", "req-get"] {
        let of_request: Vec<&Value> = lines
            .iter()
            .filter(|l| l["span"]["request_id"] == request_id)
            .collect();
        assert!(!of_request.is_empty(), "no line of {request_id}: {text}");
        for line in &of_request {
            assert_eq!(line["span"]["payment_id"], id.as_str(), "{line}");
            assert_eq!(line["span"]["unique_code_hash"], hash.as_str(), "{line}");
        }
        assert!(
            of_request
                .iter()
                .any(|l| l["fields"]["outcome"].is_string()),
            "{request_id} has no outcome line: {text}"
        );
    }
    // The wrong code is a security event a clone detector can alert on.
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["security_event"] == "wrong_auth_code"
                && l["span"]["request_id"] == "req-wrong"),
        "{text}"
    );
    // The alarms' metric filters (infra/template.yaml) read these fields: each must exist in the
    // lines the functions really write, or the filter would silently never match.
    let template = include_str!("../../infra/template.yaml");
    for field in template
        .split("$.fields.")
        .skip(1)
        .map(|s| s.split(' ').next().unwrap())
    {
        assert!(
            lines.iter().any(|l| !l["fields"][field].is_null()),
            "the template filters on fields.{field}, which no log line has: {text}"
        );
    }
    let created = lines
        .iter()
        .find(|l| l["fields"]["outcome"] == "payment_created")
        .expect("creation line");
    assert_eq!(created["span"]["payment_id"], id.as_str());
    assert_eq!(created["span"]["request_id"], "req-create");
    // API Gateway's id of the request (its access log's `requestId`), as the event carried it.
    assert_eq!(created["span"]["api_request_id"], "sim");
}

/// A successful deregistration logs its outcome and nothing that looks like a refusal: the
/// answer it keeps for a payment request caught between its writes is not a refusal of its own.
#[tokio::test]
async fn a_deregistration_logs_no_refusal() {
    let ctx = Harness::new().await;
    let (captured, _guard) = CapturedLogs::capture();
    let app = App {
        store: ctx.store.clone(),
        queue: NoQueue,
        issuer_keys: ctx.master.clone().into(),
        pending_ttl_seconds: 120,
        events: ctx.events(),
        allow_loopback_webhooks: true,
    };
    let device = ctx.device();
    let terminal = unique_id("term-");
    let reg = registration_request(&ctx.store, &device, &terminal).await;
    let (status, body) = answer(&handle(&app, Function::Registration, reg).await);
    assert_eq!(status, 201, "{body}");
    let token = body["terminal_token"].as_str().unwrap();
    let delete = request(
        "DELETE",
        &format!("/v1/devices/{}", device.code()),
        token,
        &[],
        None,
    );
    let delete = with_request_id(delete, "req-deregister");
    let (status, _) = answer(&handle(&app, Function::Registration, delete).await);
    assert_eq!(status, 204);
    let text = captured.text();
    let of_request: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|l| l["span"]["request_id"] == "req-deregister")
        .collect();
    assert!(
        of_request
            .iter()
            .any(|l| l["fields"]["outcome"] == "deregistered"),
        "{text}"
    );
    for line in &of_request {
        assert_ne!(line["fields"]["message"], "request refused", "{line}");
        assert!(
            line["fields"]["status"].is_null() || line["fields"]["status"] == 204,
            "{line}"
        );
    }
}

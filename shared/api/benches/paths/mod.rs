//! The HTTP functions' hot paths, each one request's worth of CPU on the in-memory `World` of
//! `tests/support` (no I/O: every port answers at once): request parsing and validation, whole
//! handlers, response building, and a whole Lambda invocation from the API Gateway event JSON to
//! the response JSON.
//!
//! One table serves two measurements: the criterion bench (`benches/handlers.rs`) and the
//! callgrind driver (`examples/hot_paths.rs`), so a row of `scripts/bench_cpu.sh` times and counts
//! exactly the same code. Both include this file and `tests/support/mod.rs` through `#[path]`.

#![allow(dead_code)]

use std::hint::black_box;

use lambda_http::{
    Body, Context, Request, RequestExt, Response,
    aws_lambda_events::apigw::ApiGatewayV2httpResponse, http::StatusCode,
};
use serde_json::Value;
use twochan_api::{
    http::{
        JsonBody, bearer, body_bytes, json_response, raw_json_response, require_json,
        route_segments,
    },
    routes::{App, Function, Route, handle},
    view::PaymentView,
};
use twochan_domain::{
    Amount, AuthCode, Counter, Currency, IdempotencyKey, MerchantId, Payment, PaymentId, PosId,
    Reference, Timestamp, UniqueCode,
    crypto::{MasterKey, PaymentBinding},
};

use crate::support::{
    MASTER_KEY_HEX, MERCHANT, MERCHANT_KEY, TERMINAL_TOKEN, World, WorldQueue, ready, request,
};

const CREATE_EVENT: &str = include_str!("../../../../events/create-payment.json");
const CONFIRM_EVENT: &str = include_str!("../../../../events/confirm-payment.json");
const GET_EVENT: &str = include_str!("../../../../events/get-payment.json");

/// A request kept as parts, built afresh for every call (`http::Request` is not `Clone`).
pub struct RequestParts {
    method: &'static str,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl RequestParts {
    fn build(&self) -> Request {
        request(self.method, &self.path, &self.headers, self.body.clone()).unwrap()
    }
}

pub struct Fixture {
    /// The world as `tests/support` makes it: its device holds a pending payment.
    app: App<World, WorldQueue, WorldQueue>,
    /// The same world with the device free, so that a new payment is created (201).
    free_app: App<World, WorldQueue, WorldQueue>,
    payment: Payment,
    /// The same payment as its stored DynamoDB item.
    payment_item: twochan_aws::dynamo::RawItem,
    create: RequestParts,
    confirm: RequestParts,
    get: RequestParts,
    /// Built once, for the parsing paths (which only borrow a request).
    create_request: Request,
    confirm_request: Request,
    create_event: String,
    confirm_event: String,
    get_event: String,
    lambda_context: Context,
    /// The functions' JSON log subscriber (`telemetry::subscriber`), writing to `io::sink`.
    logs: tracing::Dispatch,
    /// Never used, only kept registered: with a single registered dispatcher, tracing-core
    /// decides a callsite's interest from the default dispatcher of the moment it is first hit,
    /// so a log line first reached by an unlogged path would stay off in the logged ones.
    _second: tracing::Dispatch,
    /// A payment body as a stored idempotent answer holds it.
    payment_body: String,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

fn json_headers(bearer: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut headers = vec![
        (
            "authorization".to_owned(),
            format!("Bearer {bearer}").into_bytes(),
        ),
        ("content-type".to_owned(), b"application/json".to_vec()),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())),
    );
    headers
}

/// One of `events/*.json` (an API Gateway v2 event as the HTTP API sends it) with the world's
/// bearer and, when given, a body the world accepts.
fn event(template: &str, bearer: &str, body: Option<&str>) -> String {
    let mut event: Value = serde_json::from_str(template).unwrap();
    event["headers"]["authorization"] = format!("Bearer {bearer}").into();
    if let Some(body) = body {
        event["headers"]["content-length"] = body.len().to_string().into();
        event["body"] = body.into();
    }
    event.to_string()
}

impl Fixture {
    pub fn new() -> Self {
        let world = World::new();
        let payment = world.payment.clone();
        let id = world.payment_id().to_owned();
        let mut free = World::new();
        free.device.pending = None;

        let binding = PaymentBinding {
            payment_id: &payment.payment_id,
            merchant_id: &MerchantId::try_from(MERCHANT).unwrap(),
            amount: payment.amount,
            currency: payment.currency,
            challenge: &payment.challenge,
            counter: Counter::new(crate::support::LAST_COUNTER + 1),
        };
        let auth_code = MasterKey::from_hex(MASTER_KEY_HEX)
            .unwrap()
            .device_key(&payment.unique_code)
            .auth_code(&binding);
        let confirm_body = serde_json::json!({
            "auth_code": auth_code,
            "counter": (crate::support::LAST_COUNTER + 1).to_string(),
        })
        .to_string();
        let create_body = serde_json::json!({
            "unique_code": payment.unique_code.as_str(),
            "amount": 4500,
            "currency": "KRW",
            "pos_id": "pos-01",
            "reference": "order-4711",
        })
        .to_string();
        let idempotency_key = "9b2f6c1e-4a7d-4e35-8f0a-2c61d5e8b3a4";

        let create = RequestParts {
            method: "POST",
            path: "/v1/payments".into(),
            headers: json_headers(MERCHANT_KEY, &[("idempotency-key", idempotency_key)]),
            body: create_body.clone().into_bytes(),
        };
        let confirm = RequestParts {
            method: "POST",
            path: format!("/v1/payments/{id}/confirm"),
            headers: json_headers(TERMINAL_TOKEN, &[]),
            body: confirm_body.clone().into_bytes(),
        };
        let get = RequestParts {
            method: "GET",
            path: format!("/v1/payments/{id}"),
            headers: vec![(
                "authorization".into(),
                format!("Bearer {MERCHANT_KEY}").into_bytes(),
            )],
            body: Vec::new(),
        };
        let mut lambda_context = Context::default();
        lambda_context.request_id = "8f5a3c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into();
        let fx = Self {
            create_request: create.build(),
            confirm_request: confirm.build(),
            create_event: event(CREATE_EVENT, MERCHANT_KEY, Some(&create_body)),
            confirm_event: event(CONFIRM_EVENT, TERMINAL_TOKEN, Some(&confirm_body)),
            get_event: event(GET_EVENT, MERCHANT_KEY, None),
            payment_body: serde_json::to_string(&PaymentView::new(&payment, Timestamp::now()))
                .unwrap(),
            app: world.app(),
            free_app: free.app(),
            payment_item: twochan_aws::dynamo::payment_to_item(&payment, "fingerprint").unwrap(),
            payment,
            create,
            confirm,
            get,
            lambda_context,
            logs: tracing::Dispatch::new(twochan_api::telemetry::subscriber(std::io::sink)),
            _second: tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()),
        };
        for (name, op) in PATHS {
            assert!(op(&fx) > 0, "{name} does not succeed on its fixture");
        }
        fx
    }

    /// `handle` as the function `function` on a request, answering the response's body length
    /// (0 unless the status is `expected`).
    fn handle(
        &self,
        app: &App<World, WorldQueue, WorldQueue>,
        function: Function,
        req: Request,
        expected: StatusCode,
    ) -> usize {
        let resp = ready(handle(app, function, req));
        checked(&resp, expected)
    }

    /// A whole invocation as `lambda_http` runs it, less the runtime's HTTP: the event JSON into a
    /// `Request` (with the invocation's context), `handle`, the response into API Gateway's JSON.
    fn invoke(
        &self,
        app: &App<World, WorldQueue, WorldQueue>,
        function: Function,
        event: &str,
        expected: StatusCode,
    ) -> usize {
        let req = lambda_http::request::from_str(event)
            .unwrap()
            .with_lambda_context(self.lambda_context.clone());
        let resp = ready(handle(app, function, req));
        if resp.status() != expected {
            return 0;
        }
        apigw_json(resp).len()
    }
}

fn checked(resp: &Response<Body>, expected: StatusCode) -> usize {
    if resp.status() == expected {
        resp.body().len()
    } else {
        0
    }
}

/// What `lambda_http` sends back for an HTTP API (its `LambdaResponse::from_response`, which is
/// private, plus the runtime's `serde_json::to_vec`).
fn apigw_json(resp: Response<Body>) -> Vec<u8> {
    let (parts, body) = resp.into_parts();
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.is_base64_encoded = matches!(body, Body::Binary(_));
    out.body = (!matches!(body, Body::Empty)).then_some(body);
    out.headers = parts.headers;
    serde_json::to_vec(&out).unwrap()
}

/// An operation on the fixture; answers a non-zero size when it did what the path is about
/// (checked once in [`Fixture::new`]), so that the compiler cannot drop the work.
pub type Op = fn(&Fixture) -> usize;

/// `(name, op)`; a name is `group/function`, as criterion stores it under `target/criterion/`.
pub const PATHS: &[(&str, Op)] = &[
    ("parse/build_request", build_request),
    ("parse/apigw_event", apigw_event),
    ("parse/create_request", parse_create_request),
    ("parse/confirm_request", parse_confirm_request),
    ("handle/create_payment", handle_create_payment),
    ("handle/confirm_payment", handle_confirm_payment),
    ("handle/get_payment", handle_get_payment),
    ("response/payment_view", payment_view),
    ("item/payment_to_dynamo", payment_to_dynamo),
    ("item/payment_from_dynamo", payment_from_dynamo),
    ("response/apigw_json", response_apigw_json),
    ("lambda/create_payment", lambda_create_payment),
    ("lambda/confirm_payment", lambda_confirm_payment),
    ("lambda/get_payment", lambda_get_payment),
    ("lambda/create_payment_logged", lambda_create_payment_logged),
    (
        "lambda/confirm_payment_logged",
        lambda_confirm_payment_logged,
    ),
];

/// A payment into its DynamoDB item (serde_dynamo), as every payment write does.
fn payment_to_dynamo(fx: &Fixture) -> usize {
    twochan_aws::dynamo::payment_to_item(black_box(&fx.payment), "fingerprint")
        .unwrap()
        .len()
}

/// A stored payment item back into a payment, as every payment read does (its clone included).
fn payment_from_dynamo(fx: &Fixture) -> usize {
    twochan_aws::dynamo::payment_from_item(black_box(fx.payment_item.clone()))
        .unwrap()
        .amount
        .minor_units() as usize
}

/// The `http::Request` the `handle/*` paths start from (their cost includes this).
fn build_request(fx: &Fixture) -> usize {
    fx.confirm.build().body().len()
}

/// `lambda_http`'s deserialization of the confirm event into a `Request`.
fn apigw_event(fx: &Fixture) -> usize {
    lambda_http::request::from_str(black_box(&fx.confirm_event))
        .unwrap()
        .body()
        .len()
}

fn route(req: &Request) -> Option<Route> {
    route_segments(req).and_then(|segs| Route::of(req.method(), &segs))
}

/// What the create handler does before the store: route, size, bearer, media type, JSON, fields.
fn parse_create_request(fx: &Fixture) -> usize {
    let req = black_box(&fx.create_request);
    let Some(Route::CreatePayment) = route(req) else {
        return 0;
    };
    let parsed = (|| -> twochan_domain::Result<_> {
        let bytes = body_bytes(req)?;
        let (_, _hash) = bearer(req.headers())?;
        require_json(req.headers())?;
        let body = JsonBody::from_bytes(
            bytes,
            &["unique_code", "amount", "currency", "pos_id", "reference"],
        )?;
        let key = IdempotencyKey::try_from(
            req.headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        )?;
        let code: UniqueCode = body.field("unique_code")?;
        let amount = Amount::try_from(body.u64("amount")?)?;
        let currency: Currency = body.field("currency")?;
        let pos: PosId = body.field("pos_id")?;
        let reference = body
            .opt_string("reference")?
            .map(|r| Reference::try_from(r.to_owned()))
            .transpose()?;
        Ok(black_box((key, code, amount, currency, pos, reference)))
    })();
    parsed.is_ok() as usize
}

/// What the confirm handler does before the store: route, size, bearer, media type, JSON, fields.
fn parse_confirm_request(fx: &Fixture) -> usize {
    let req = black_box(&fx.confirm_request);
    let Some(Route::ConfirmPayment(id)) = route(req) else {
        return 0;
    };
    let parsed = (|| -> twochan_domain::Result<_> {
        let bytes = body_bytes(req)?;
        let (_, _hash) = bearer(req.headers())?;
        require_json(req.headers())?;
        let body = JsonBody::from_bytes(bytes, &["auth_code", "counter"])?;
        let auth_code: AuthCode = body.field("auth_code")?;
        let counter: Counter = body.field("counter")?;
        let id = PaymentId::try_from(id.as_str())?;
        Ok(black_box((auth_code, counter, id)))
    })();
    parsed.is_ok() as usize
}

fn handle_create_payment(fx: &Fixture) -> usize {
    fx.handle(
        &fx.free_app,
        Function::PaymentRequest,
        fx.create.build(),
        StatusCode::CREATED,
    )
}

fn handle_confirm_payment(fx: &Fixture) -> usize {
    fx.handle(
        &fx.app,
        Function::Confirmation,
        fx.confirm.build(),
        StatusCode::OK,
    )
}

fn handle_get_payment(fx: &Fixture) -> usize {
    fx.handle(
        &fx.app,
        Function::PaymentRequest,
        fx.get.build(),
        StatusCode::OK,
    )
}

/// The payment answer: `PaymentView` (RFC 3339 times) serialized by serde_json into a response.
fn payment_view(fx: &Fixture) -> usize {
    let view = PaymentView::new(black_box(&fx.payment), Timestamp::now());
    json_response(StatusCode::OK, &view).body().len()
}

/// A JSON response (an idempotent replay's stored body) into API Gateway's response JSON.
fn response_apigw_json(fx: &Fixture) -> usize {
    apigw_json(raw_json_response(StatusCode::OK, fx.payment_body.clone())).len()
}

fn lambda_create_payment(fx: &Fixture) -> usize {
    fx.invoke(
        &fx.free_app,
        Function::PaymentRequest,
        &fx.create_event,
        StatusCode::CREATED,
    )
}

fn lambda_confirm_payment(fx: &Fixture) -> usize {
    fx.invoke(
        &fx.app,
        Function::Confirmation,
        &fx.confirm_event,
        StatusCode::OK,
    )
}

fn lambda_get_payment(fx: &Fixture) -> usize {
    fx.invoke(
        &fx.app,
        Function::PaymentRequest,
        &fx.get_event,
        StatusCode::OK,
    )
}

/// With the functions' JSON log lines (level from `RUST_LOG`, default `info`), written to a sink.
fn lambda_create_payment_logged(fx: &Fixture) -> usize {
    tracing::dispatcher::with_default(&fx.logs, || lambda_create_payment(fx))
}

fn lambda_confirm_payment_logged(fx: &Fixture) -> usize {
    tracing::dispatcher::with_default(&fx.logs, || lambda_confirm_payment(fx))
}

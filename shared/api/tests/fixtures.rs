//! The invoke payloads in `events/` (used with `cargo lambda invoke --data-file`) stay what they
//! claim to be: each API Gateway v2 request parses with `lambda_http`, reaches the route its name
//! says, and is served by exactly one function; the SQS batch holds one settleable message and
//! one poison message. A fixture without a case here fails `every_fixture_is_covered`.

use std::{
    collections::BTreeSet,
    future::Future,
    path::PathBuf,
    pin::pin,
    task::{Context, Poll, Waker},
};

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_http::{
    Body, Request, RequestExt,
    http::{Method, header},
    request::RequestContext,
};
use twochan_api::{
    http::{BearerKind, bearer, require_json, route_segments},
    routes::{Function, Route},
    settlement::settle_batch,
};
use twochan_domain::{
    IdempotencyKey, MerchantId, PaymentId, Result, Timestamp, UniqueCode,
    ports::{Balance, Ledger, Settlement, SettlementMessage},
};

/// The fixtures of the SQS events; every other fixture is an API request in `API_CASES`.
const SETTLEMENT_BATCH: &str = "settlement-batch.json";
const WEBHOOK_BATCH: &str = "webhook-batch.json";

const PAYMENT_ID: &str = "pay_01KB1ZQ8RV4T6M2XW9C3HJ5N7P";
const UNIQUE_CODE: &str = "beacon-7f3a9c21";

/// One API fixture and what it must turn into.
struct ApiCase {
    file: &'static str,
    method: Method,
    route_key: &'static str,
    route: fn() -> Route,
    function: Function,
    /// The path parameters API Gateway fills in for the route.
    params: &'static [(&'static str, &'static str)],
    /// `None`: no `authorization` header (registration authenticates by its proof).
    bearer: Option<BearerKind>,
    has_body: bool,
}

const API_CASES: &[ApiCase] = &[
    ApiCase {
        file: "create-challenge.json",
        method: Method::POST,
        route_key: "POST /v1/devices/challenges",
        route: || Route::CreateChallenge,
        function: Function::Registration,
        params: &[],
        bearer: None,
        has_body: true,
    },
    ApiCase {
        file: "register-device.json",
        method: Method::POST,
        route_key: "POST /v1/devices",
        route: || Route::RegisterDevice,
        function: Function::Registration,
        params: &[],
        bearer: None,
        has_body: true,
    },
    ApiCase {
        file: "deregister-device.json",
        method: Method::DELETE,
        route_key: "DELETE /v1/devices/{unique_code}",
        route: || Route::DeregisterDevice(UNIQUE_CODE.into()),
        function: Function::Registration,
        params: &[("unique_code", UNIQUE_CODE)],
        bearer: Some(BearerKind::TerminalToken),
        has_body: false,
    },
    ApiCase {
        file: "create-payment.json",
        method: Method::POST,
        route_key: "POST /v1/payments",
        route: || Route::CreatePayment,
        function: Function::PaymentRequest,
        params: &[],
        bearer: Some(BearerKind::MerchantKey),
        has_body: true,
    },
    ApiCase {
        file: "get-payment.json",
        method: Method::GET,
        route_key: "GET /v1/payments/{payment_id}",
        route: || Route::GetPayment(PAYMENT_ID.into()),
        function: Function::PaymentRequest,
        params: &[("payment_id", PAYMENT_ID)],
        bearer: Some(BearerKind::MerchantKey),
        has_body: false,
    },
    ApiCase {
        file: "cancel-payment.json",
        method: Method::POST,
        route_key: "POST /v1/payments/{payment_id}/cancel",
        route: || Route::CancelPayment(PAYMENT_ID.into()),
        function: Function::PaymentRequest,
        params: &[("payment_id", PAYMENT_ID)],
        bearer: Some(BearerKind::MerchantKey),
        has_body: false,
    },
    ApiCase {
        file: "balance.json",
        method: Method::GET,
        route_key: "GET /v1/balance",
        route: || Route::Balance,
        function: Function::PaymentRequest,
        params: &[],
        bearer: Some(BearerKind::MerchantKey),
        has_body: false,
    },
    ApiCase {
        file: "pending-payments.json",
        method: Method::GET,
        route_key: "GET /v1/pending-payments",
        route: || Route::PendingPayments,
        function: Function::Confirmation,
        params: &[],
        bearer: Some(BearerKind::TerminalToken),
        has_body: false,
    },
    ApiCase {
        file: "confirm-payment.json",
        method: Method::POST,
        route_key: "POST /v1/payments/{payment_id}/confirm",
        route: || Route::ConfirmPayment(PAYMENT_ID.into()),
        function: Function::Confirmation,
        params: &[("payment_id", PAYMENT_ID)],
        bearer: Some(BearerKind::TerminalToken),
        has_body: true,
    },
    ApiCase {
        file: "decline-payment.json",
        method: Method::POST,
        route_key: "POST /v1/payments/{payment_id}/decline",
        route: || Route::DeclinePayment(PAYMENT_ID.into()),
        function: Function::Confirmation,
        params: &[("payment_id", PAYMENT_ID)],
        bearer: Some(BearerKind::TerminalToken),
        has_body: false,
    },
    ApiCase {
        file: "create-refund.json",
        method: Method::POST,
        route_key: "POST /v1/payments/{payment_id}/refunds",
        route: || Route::CreateRefund(PAYMENT_ID.into()),
        function: Function::PaymentRequest,
        params: &[("payment_id", PAYMENT_ID)],
        bearer: Some(BearerKind::MerchantKey),
        has_body: true,
    },
    ApiCase {
        file: "list-refunds.json",
        method: Method::GET,
        route_key: "GET /v1/payments/{payment_id}/refunds",
        route: || Route::ListRefunds(PAYMENT_ID.into()),
        function: Function::PaymentRequest,
        params: &[("payment_id", PAYMENT_ID)],
        bearer: Some(BearerKind::MerchantKey),
        has_body: false,
    },
    ApiCase {
        file: "put-webhook-endpoint.json",
        method: Method::PUT,
        route_key: "PUT /v1/webhook-endpoint",
        route: || Route::PutWebhookEndpoint,
        function: Function::PaymentRequest,
        params: &[],
        bearer: Some(BearerKind::MerchantKey),
        has_body: true,
    },
    ApiCase {
        file: "get-webhook-endpoint.json",
        method: Method::GET,
        route_key: "GET /v1/webhook-endpoint",
        route: || Route::GetWebhookEndpoint,
        function: Function::PaymentRequest,
        params: &[],
        bearer: Some(BearerKind::MerchantKey),
        has_body: false,
    },
    ApiCase {
        file: "delete-webhook-endpoint.json",
        method: Method::DELETE,
        route_key: "DELETE /v1/webhook-endpoint",
        route: || Route::DeleteWebhookEndpoint,
        function: Function::PaymentRequest,
        params: &[],
        bearer: Some(BearerKind::MerchantKey),
        has_body: false,
    },
];
const FUNCTIONS: [Function; 3] = [
    Function::Registration,
    Function::PaymentRequest,
    Function::Confirmation,
];

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

fn fixture(file: &str) -> String {
    let path = events_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_api(file: &str) -> Request {
    lambda_http::request::from_str(&fixture(file))
        .unwrap_or_else(|e| panic!("{file}: not an API Gateway request lambda_http accepts: {e}"))
}

#[test]
fn every_fixture_is_covered() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(events_dir())
        .expect("events/ exists at the workspace root")
        .map(|entry| {
            entry
                .expect("readable dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".json"))
        .collect();
    let covered: BTreeSet<String> = API_CASES
        .iter()
        .map(|c| c.file)
        .chain([SETTLEMENT_BATCH, WEBHOOK_BATCH])
        .map(str::to_owned)
        .collect();
    assert_eq!(
        covered.len(),
        API_CASES.len() + 2,
        "a fixture is listed twice"
    );
    assert_eq!(
        on_disk, covered,
        "events/*.json and the cases of this test differ"
    );
}

#[test]
fn api_fixtures_reach_their_route_and_function() {
    for case in API_CASES {
        let file = case.file;
        let req = parse_api(file);
        let expected = (case.route)();

        assert_eq!(req.method(), case.method, "{file}: method");
        let segments =
            route_segments(&req).unwrap_or_else(|| panic!("{file}: no /v1 path in {}", req.uri()));
        assert_eq!(
            Route::of(req.method(), &segments),
            Some(expected.clone()),
            "{file}: route"
        );
        for function in FUNCTIONS {
            assert_eq!(
                function.serves(&expected),
                function == case.function,
                "{file}: is {expected:?} served by {function:?}?"
            );
        }

        match req.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(ctx)) => {
                assert_eq!(
                    ctx.route_key.as_deref(),
                    Some(case.route_key),
                    "{file}: requestContext.routeKey"
                );
                assert_eq!(
                    ctx.http.method, case.method,
                    "{file}: requestContext.http.method"
                );
                assert_eq!(
                    ctx.http.path.as_deref(),
                    Some(req.raw_http_path()),
                    "{file}: http.path vs rawPath"
                );
                assert_eq!(ctx.stage.as_deref(), Some("$default"), "{file}: stage");
            }
            other => panic!("{file}: not an API Gateway v2 request context: {other:?}"),
        }
        // The route key's method and template agree with the request.
        let (key_method, template) = case
            .route_key
            .split_once(' ')
            .expect("route key is 'METHOD /path'");
        assert_eq!(key_method, case.method.as_str(), "{file}: routeKey method");
        assert_eq!(
            template.matches('{').count(),
            case.params.len(),
            "{file}: routeKey placeholders vs pathParameters"
        );

        let params = req.path_parameters();
        assert_eq!(
            params.iter().count(),
            case.params.len(),
            "{file}: pathParameters"
        );
        for (name, value) in case.params {
            assert_eq!(
                params.first(name),
                Some(*value),
                "{file}: pathParameters.{name}"
            );
            assert!(
                template.contains(&format!("{{{name}}}")),
                "{file}: {name} not in the route key"
            );
        }
        if let Some(id) = params.first("payment_id") {
            PaymentId::try_from(id).unwrap_or_else(|e| panic!("{file}: payment_id: {e}"));
        }
        if let Some(code) = params.first("unique_code") {
            UniqueCode::try_from(code).unwrap_or_else(|e| panic!("{file}: unique_code: {e}"));
        }

        match case.bearer {
            None => assert!(
                req.headers().get(header::AUTHORIZATION).is_none(),
                "{file}: unexpected authorization"
            ),
            Some(kind) => {
                let (got, _) =
                    bearer(req.headers()).unwrap_or_else(|e| panic!("{file}: authorization: {e}"));
                assert_eq!(got, kind, "{file}: bearer kind");
            }
        }

        if case.has_body {
            require_json(req.headers()).unwrap_or_else(|e| panic!("{file}: content-type: {e}"));
            let text = match req.body() {
                Body::Text(t) => t.as_str(),
                other => panic!("{file}: expected a text body, got {other:?}"),
            };
            let json: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{file}: body is not JSON: {e}"));
            assert!(json.is_object(), "{file}: body is a JSON object");
            let length = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap());
            assert_eq!(
                length,
                Some(text.len().to_string().as_str()),
                "{file}: content-length"
            );
        } else {
            assert!(req.body().is_empty(), "{file}: expected no body");
            assert!(
                req.headers().get(header::CONTENT_TYPE).is_none(),
                "{file}: content-type without a body"
            );
        }

        let key = req.headers().get("idempotency-key");
        if matches!(expected, Route::CreatePayment | Route::CreateRefund(_)) {
            let key = key.unwrap_or_else(|| panic!("{file}: idempotency-key is required"));
            IdempotencyKey::try_from(key.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        } else {
            assert!(
                key.is_none(),
                "{file}: idempotency-key only belongs on payment and refund requests"
            );
        }
    }
}

/// API Gateway always sends lower-case header names; `lambda_http` would accept either, so the
/// JSON itself is checked.
#[test]
fn api_fixture_headers_are_lowercase() {
    for case in API_CASES {
        let json: serde_json::Value = serde_json::from_str(&fixture(case.file)).unwrap();
        let headers = json["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: headers", case.file));
        for name in headers.keys() {
            assert_eq!(
                name,
                &name.to_ascii_lowercase(),
                "{}: header {name}",
                case.file
            );
        }
        assert_eq!(json["version"], "2.0", "{}: payload version", case.file);
        assert_eq!(
            json["isBase64Encoded"], false,
            "{}: isBase64Encoded",
            case.file
        );
    }
}

fn settlement_batch() -> SqsEvent {
    serde_json::from_str(&fixture(SETTLEMENT_BATCH))
        .unwrap_or_else(|e| panic!("{SETTLEMENT_BATCH}: not an SQS event: {e}"))
}

#[test]
fn settlement_batch_holds_one_good_and_one_poison_message() {
    let event = settlement_batch();
    assert_eq!(event.records.len(), 2);
    let parsed: Vec<_> = event
        .records
        .iter()
        .map(|r| serde_json::from_str::<SettlementMessage>(r.body.as_deref().unwrap_or("")))
        .collect();
    let good: Vec<_> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
    assert_eq!(
        good.len(),
        1,
        "exactly one body is a SettlementMessage: {parsed:?}"
    );
    assert_eq!(good[0].payment_id.as_str(), PAYMENT_ID);
    assert_eq!(good[0].unique_code.as_str(), UNIQUE_CODE);
    for record in &event.records {
        assert!(
            record.message_id.is_some(),
            "every record has a messageId (batchItemFailures need it)"
        );
        assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
    }
}

/// A ledger that settles everything: the batch response then names the poison message alone.
struct SettlesAll;

impl twochan_domain::ports::EventQueue for SettlesAll {
    async fn enqueue_event(&self, _: &twochan_domain::ports::EventMessage) -> Result<()> {
        Ok(())
    }
}

impl Ledger for SettlesAll {
    async fn settle_group(
        &self,
        messages: &[SettlementMessage],
        _: Timestamp,
    ) -> Result<Vec<Result<Settlement>>> {
        Ok(messages.iter().map(|_| Ok(Settlement::Settled)).collect())
    }

    async fn balances(&self, _: &MerchantId) -> Result<Vec<Balance>> {
        Ok(Vec::new())
    }
}

/// Polls a future that never waits (the fake ledger answers at once).
fn ready<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the future waited"),
    }
}

#[test]
fn settlement_batch_reports_only_the_poison_message() {
    let event = settlement_batch();
    let poison: Vec<String> = event
        .records
        .iter()
        .filter(|r| {
            serde_json::from_str::<SettlementMessage>(r.body.as_deref().unwrap_or("")).is_err()
        })
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    let response = ready(settle_batch(&SettlesAll, &SettlesAll, event));
    let failed: Vec<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    assert_eq!(failed, poison);
}

/// The webhooks function's SQS event: one event message of a settled payment, whose id is the one
/// its change makes, and one it cannot read (to the dead-letter queue after its receives).
#[test]
fn webhook_batch_holds_one_event_and_one_unreadable_message() {
    use twochan_domain::{
        ports::EventMessage,
        webhook::{EventId, EventType},
    };
    let event: SqsEvent = serde_json::from_str(&fixture(WEBHOOK_BATCH))
        .unwrap_or_else(|e| panic!("{WEBHOOK_BATCH}: not an SQS event: {e}"));
    let parsed: Vec<_> = event
        .records
        .iter()
        .map(|r| serde_json::from_str::<EventMessage>(r.body.as_deref().unwrap_or("")))
        .collect();
    assert!(parsed[1].is_err(), "the second message must be unreadable");
    let message = parsed[0]
        .as_ref()
        .expect("the first message is an event message");
    let payment = PaymentId::try_from(PAYMENT_ID).unwrap();
    assert_eq!(message.event_type, EventType::PaymentSettled);
    assert_eq!(
        message.event_id,
        EventId::for_change(
            payment.requested_at(),
            PAYMENT_ID,
            EventType::PaymentSettled
        )
    );
}

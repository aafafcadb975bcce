//! HTTP plumbing: body limits, media type, bearer tokens, JSON fields, and the one mapping from
//! [`DomainError`] to a status and a JSON error body.

use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    request::RequestContext,
};
use serde::Serialize;
use serde_json::{Map, Value};
use twochan_domain::{DomainError, Result, crypto::SecretHash, ports::StoredResponse};

/// Bodies larger than this are refused before anything else looks at them.
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Seconds a client should wait before retrying an in-flight key or an unavailable dependency.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// The HTTP status of each contract error. The only place this mapping exists.
pub fn status_of(e: &DomainError) -> StatusCode {
    use DomainError::*;
    match e {
        InvalidRequest(_) => StatusCode::BAD_REQUEST,
        Unauthorized => StatusCode::UNAUTHORIZED,
        NotFound | UnknownDevice => StatusCode::NOT_FOUND,
        DeviceAlreadyRegistered
        | TerminalIdTaken
        | DeviceBusy
        | IdempotencyKeyInUse
        | PaymentNotPending
        | PaymentNotSettled => StatusCode::CONFLICT,
        PaymentExpired => StatusCode::GONE,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        InvalidRegistrationProof
        | InvalidBeaconProof
        | IdempotencyKeyReused
        | InvalidAuthCode
        | StaleCounter
        | RefundExceedsPayment => StatusCode::UNPROCESSABLE_ENTITY,
        TooManyAttempts | DeviceLocked { .. } => StatusCode::TOO_MANY_REQUESTS,
        Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The contract's answer to `e`, logged: a refusal at info, a failure (5xx) at error with its
/// detail. Every refusal a client receives goes through here, and only those.
pub fn error_response(e: &DomainError) -> Response<Body> {
    let status = status_of(e);
    if status.is_server_error() {
        tracing::error!(
            error.code = e.code(),
            error.detail = ?e,
            status = status.as_u16(),
            outcome = e.code(),
            "request failed"
        );
    } else {
        tracing::info!(
            error.code = e.code(),
            status = status.as_u16(),
            outcome = e.code(),
            "request refused"
        );
    }
    render_error(e)
}

/// The message of `e`'s JSON answer: its `Display` (internal details stay out), with the limit
/// of this transport named where the error is about it.
fn message_of(e: &DomainError) -> String {
    match e {
        DomainError::PayloadTooLarge => format!(
            "the request body is larger than {} KiB",
            MAX_BODY_BYTES / 1024
        ),
        _ => e.to_string(),
    }
}

/// `{"error": {"code", "message"}}` with the contract's status, not logged (for an answer given
/// again under an idempotency key).
pub fn render_error(e: &DomainError) -> Response<Body> {
    let status = status_of(e);
    let body = serde_json::json!({"error": {"code": e.code(), "message": message_of(e)}});
    let mut resp = json_response(status, &body);
    let retry_after = match e {
        DomainError::IdempotencyKeyInUse | DomainError::Unavailable(_) => {
            Some(HeaderValue::from_static(RETRY_AFTER_SECONDS))
        }
        // Whole seconds until the lock lapses, rounded up.
        DomainError::DeviceLocked { until } => {
            let ms = (until.millis() - twochan_domain::Timestamp::now().millis()).max(0);
            Some(HeaderValue::from((ms + 999) / 1000))
        }
        _ => None,
    };
    if let Some(value) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, value);
    }
    resp
}

/// The answer kept under an idempotency key, given again as it was given first: rendered, not
/// logged (the request that kept it is logged once by `routes::handle`, each replay by its own).
pub fn kept_answer(kept: &StoredResponse) -> Response<Body> {
    render_error(&kept.error())
}

/// An answer given again for the same key and body: marked `Idempotent-Replayed: true`.
pub fn replayed(mut resp: Response<Body>) -> Response<Body> {
    tracing::info!(
        outcome = "idempotent_replay",
        status = resp.status().as_u16()
    );
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    match serde_json::to_string(body) {
        Ok(text) => raw_json_response(status, text),
        Err(e) => error_response(&DomainError::Internal(format!("serialize response: {e}"))),
    }
}

pub fn raw_json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::Text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn empty_response(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = status;
    resp
}

/// The body bytes, refused when over the limit (checked before anything else in the body).
pub fn body_bytes(req: &Request) -> Result<&[u8]> {
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(DomainError::PayloadTooLarge);
    }
    Ok(bytes)
}

/// A request that carries a body must say `application/json` (parameters allowed).
pub fn require_json(headers: &HeaderMap) -> Result<()> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match media_type {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(DomainError::UnsupportedMediaType),
    }
}

/// Kinds of bearer secret the server issues, told apart by their prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerKind {
    MerchantKey,
    TerminalToken,
}

pub use twochan_domain::crypto::{MERCHANT_KEY_PREFIX, TERMINAL_TOKEN_PREFIX};

/// The hash of the `Authorization: Bearer` secret and its kind; anything malformed is 401.
pub fn bearer(headers: &HeaderMap) -> Result<(BearerKind, SecretHash)> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(DomainError::Unauthorized)?;
    let (scheme, secret) = value
        .trim()
        .split_once(' ')
        .ok_or(DomainError::Unauthorized)?;
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() || secret.len() > 256 {
        return Err(DomainError::Unauthorized);
    }
    let kind = if secret.starts_with(MERCHANT_KEY_PREFIX) {
        BearerKind::MerchantKey
    } else if secret.starts_with(TERMINAL_TOKEN_PREFIX) {
        BearerKind::TerminalToken
    } else {
        return Err(DomainError::Unauthorized);
    };
    Ok((kind, SecretHash::of(secret)))
}

/// The path below `/v1`, as segments, whatever stage prefix API Gateway or `cargo lambda watch`
/// puts in front of it.
pub fn route_segments(req: &Request) -> Option<Vec<String>> {
    // The path as API Gateway received it: `uri().path()` was re-parsed as a URL, where an
    // escaped `?` or `#` in an id would end the path early.
    let (raw, from_uri) = match req.raw_http_path() {
        "" => (req.uri().path(), true),
        raw => (raw, false),
    };
    let stage = match req.request_context_ref() {
        // An HTTP API puts a named stage in front of `rawPath` (not `$default`).
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.stage.as_deref(),
        // A REST API's `path` never holds the stage; lambda_http puts it in front of `uri()`'s
        // (unless AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH is set), so only that one may start with it.
        Some(RequestContext::ApiGatewayV1(ctx)) if from_uri => ctx.stage.as_deref(),
        _ => None,
    };
    segments_of(raw, stage, lambda_url_prefix_allowed())
}

/// `cargo lambda watch` serves a function under `/lambda-url/<function>`; `make watch` sets
/// `TWOCHAN_LAMBDA_URL_PREFIX=1` so that its paths route. Deployed functions never accept it.
fn lambda_url_prefix_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var("TWOCHAN_LAMBDA_URL_PREFIX").is_ok_and(|v| v == "1"))
}

/// The segments after `/v1`; `None` unless the path is `/v1` or starts with `/v1/` after at most
/// one prefix: a named stage (API Gateway puts it in front of the path) or, when allowed,
/// `/lambda-url/<function>`. No segment may be empty (`/v1/devices/` is not
/// `DELETE /v1/devices/{unique_code}`) or escaped: every literal and id of the contract is made
/// of `[A-Za-z0-9_-]`, so a `%` can only spell one of them a second way.
pub fn segments_of(path: &str, stage: Option<&str>, lambda_url: bool) -> Option<Vec<String>> {
    let mut rest = path;
    if let Some(after) = stage
        .filter(|s| *s != "$default")
        .and_then(|s| rest.strip_prefix('/')?.strip_prefix(s))
        .filter(|after| after.starts_with('/'))
    {
        rest = after;
    } else if let Some(after) = rest.strip_prefix("/lambda-url/").filter(|_| lambda_url) {
        rest = &after[after.find('/')?..];
    }
    match rest.strip_prefix("/v1")? {
        "" => Some(Vec::new()),
        tail => tail
            .strip_prefix('/')?
            .split('/')
            .map(|s| (!s.is_empty() && !s.contains('%')).then(|| s.to_owned()))
            .collect(),
    }
}

/// A JSON object body with a fixed set of fields. Every error names the field at fault.
pub struct JsonBody(Map<String, Value>);

impl JsonBody {
    pub fn from_bytes(bytes: &[u8], allowed: &[&str]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            DomainError::InvalidRequest(format!("body: malformed JSON ({})", e.classify_name()))
        })?;
        let Value::Object(map) = value else {
            return Err(DomainError::invalid("body", "must be a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(DomainError::invalid(&truncate(unknown), "unknown field"));
        }
        Ok(Self(map))
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    pub fn string(&self, field: &str) -> Result<&str> {
        self.opt_string(field)?
            .ok_or_else(|| DomainError::invalid(field, "is required"))
    }

    pub fn opt_string(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(DomainError::invalid(field, "must be a string")),
        }
    }

    pub fn u64(&self, field: &str) -> Result<u64> {
        match self.get(field) {
            None => Err(DomainError::invalid(field, "is required")),
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| DomainError::invalid(field, "must be a positive integer")),
            Some(_) => Err(DomainError::invalid(field, "must be an integer")),
        }
    }

    /// A required string field parsed into its newtype.
    pub fn field<T>(&self, field: &str) -> Result<T>
    where
        T: for<'a> TryFrom<&'a str, Error = DomainError>,
    {
        T::try_from(self.string(field)?)
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn every_error_maps_to_its_contract_status() {
        use DomainError::*;
        let cases = [
            (InvalidRequest("x".into()), 400, "invalid_request"),
            (Unauthorized, 401, "unauthorized"),
            (NotFound, 404, "not_found"),
            (UnknownDevice, 404, "unknown_device"),
            (DeviceAlreadyRegistered, 409, "device_already_registered"),
            (TerminalIdTaken, 409, "terminal_id_taken"),
            (DeviceBusy, 409, "device_busy"),
            (IdempotencyKeyInUse, 409, "idempotency_key_in_use"),
            (PaymentNotPending, 409, "payment_not_pending"),
            (PaymentNotSettled, 409, "payment_not_settled"),
            (RefundExceedsPayment, 422, "refund_exceeds_payment"),
            (PaymentExpired, 410, "payment_expired"),
            (PayloadTooLarge, 413, "payload_too_large"),
            (UnsupportedMediaType, 415, "unsupported_media_type"),
            (InvalidRegistrationProof, 422, "invalid_registration_proof"),
            (InvalidBeaconProof, 422, "invalid_beacon_proof"),
            (IdempotencyKeyReused, 422, "idempotency_key_reused"),
            (InvalidAuthCode, 422, "invalid_auth_code"),
            (StaleCounter, 422, "stale_counter"),
            (TooManyAttempts, 429, "too_many_attempts"),
            (
                DeviceLocked {
                    until: twochan_domain::Timestamp::now().plus_seconds(60),
                },
                429,
                "too_many_attempts",
            ),
            (Internal("detail".into()), 500, "internal"),
            (Unavailable("detail".into()), 503, "unavailable"),
        ];
        for (e, status, code) in cases {
            let resp = error_response(&e);
            assert_eq!(resp.status().as_u16(), status, "{code}");
            let body: Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
            assert_eq!(body["error"]["code"], code);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert!(
                !body.to_string().contains("detail"),
                "internal detail leaked: {body}"
            );
            let retry_after = resp.headers().contains_key(header::RETRY_AFTER);
            assert_eq!(
                retry_after,
                matches!(status, 503)
                    || code == "idempotency_key_in_use"
                    || matches!(e, DeviceLocked { .. })
            );
        }
    }

    #[test]
    fn the_body_limit_is_named_in_its_refusal() {
        let resp = error_response(&DomainError::PayloadTooLarge);
        assert_eq!(
            resp.body().as_ref(),
            br#"{"error":{"code":"payload_too_large","message":"the request body is larger than 8 KiB"}}"#
        );
    }

    #[test]
    fn a_kept_refusal_is_given_again_as_it_was_given() {
        use twochan_domain::ports::FinalRefusal;
        for r in FinalRefusal::ALL {
            let first = error_response(&r.error());
            let again = kept_answer(&StoredResponse { refusal: r });
            assert_eq!(again.status(), first.status(), "{r:?}");
            assert_eq!(again.headers(), first.headers(), "{r:?}");
            assert_eq!(again.body().as_ref(), first.body().as_ref(), "{r:?}");
        }
        let kept = kept_answer(&StoredResponse {
            refusal: FinalRefusal::UnknownDevice,
        });
        assert_eq!(kept.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            kept.body().as_ref(),
            br#"{"error":{"code":"unknown_device","message":"no device is registered with this unique_code"}}"#
        );
    }

    #[test]
    fn media_type_rules() {
        assert!(require_json(&headers(&[("content-type", "application/json")])).is_ok());
        assert!(
            require_json(&headers(&[(
                "content-type",
                "application/json; charset=utf-8"
            )]))
            .is_ok()
        );
        assert!(require_json(&headers(&[("content-type", "Application/JSON")])).is_ok());
        assert!(require_json(&headers(&[("content-type", "text/plain")])).is_err());
        assert!(require_json(&headers(&[("content-type", "application/jsonx")])).is_err());
        assert!(require_json(&headers(&[])).is_err());
    }

    #[test]
    fn bearer_rules() {
        let (k, h) = bearer(&headers(&[("authorization", "Bearer mk_abc")])).unwrap();
        assert_eq!(k, BearerKind::MerchantKey);
        assert_eq!(h, SecretHash::of("mk_abc"));
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer tt_x")]))
                .unwrap()
                .0,
            BearerKind::TerminalToken
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic mk_abc",
            "mk_abc",
            "Bearer other_abc",
        ] {
            assert_eq!(
                bearer(&headers(&[("authorization", bad)])).unwrap_err(),
                DomainError::Unauthorized,
                "{bad}"
            );
        }
        assert!(bearer(&headers(&[])).is_err());
    }

    #[test]
    fn json_fields_name_the_field() {
        let b =
            JsonBody::from_bytes(br#"{"a":"x","n":5,"z":null}"#, &["a", "n", "z", "m"]).unwrap();
        assert_eq!(b.string("a").unwrap(), "x");
        assert_eq!(b.u64("n").unwrap(), 5);
        assert_eq!(b.opt_string("z").unwrap(), None);
        assert!(b.string("m").unwrap_err().to_string().starts_with("m:"));
        assert!(b.u64("a").unwrap_err().to_string().starts_with("a:"));
        assert!(b.string("n").unwrap_err().to_string().starts_with("n:"));
        let e = JsonBody::from_bytes(br#"{"a":"x","evil":1}"#, &["a"])
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("evil:"), "{e}");
        for bad in [&b"[1]"[..], b"nope", b"", b"{\"a\":", b"\"str\""] {
            assert!(matches!(
                JsonBody::from_bytes(bad, &["a"]),
                Err(DomainError::InvalidRequest(_))
            ));
        }
        let b = JsonBody::from_bytes(br#"{"n":-1,"f":1.5}"#, &["n", "f"]).unwrap();
        assert!(b.u64("n").is_err() && b.u64("f").is_err());
    }

    #[test]
    fn routes_from_the_path_start_only() {
        let segs = |p: &str| segments_of(p, None, false);
        assert_eq!(
            segs("/v1/payments/x"),
            Some(vec!["payments".into(), "x".into()])
        );
        assert_eq!(segs("/v1"), Some(vec![]));
        for no_route in [
            "/x/v1/devices",
            "//v1/devices",
            "/v1//devices",
            "/v1/devices/",
            "/v1/%64evices",
            "/v1/payments/pay_x%3F",
            "/v1x",
            "/lambda-url/registration/v1/devices",
        ] {
            assert_eq!(segs(no_route), None, "{no_route}");
        }
        assert_eq!(
            segments_of("/lambda-url/registration/v1/devices", None, true),
            Some(vec!["devices".into()])
        );
        assert_eq!(
            segments_of("/prod/v1/devices", Some("prod"), false),
            Some(vec!["devices".into()])
        );
        assert_eq!(
            segments_of("/prod/v1/devices", Some("$default"), false),
            None
        );
    }

    /// A REST API's event (payload 1.0, ApiKind rest), as API Gateway sends it to a proxy
    /// integration: `path` without the stage, `requestContext.path` with it.
    pub(crate) fn rest_event(path: &str, host: &str) -> Value {
        serde_json::json!({
            "resource": "/v1/payments/{payment_id}/cancel",
            "path": path,
            "httpMethod": "POST",
            "headers": {"host": host, "authorization": "Bearer mk_x"},
            "multiValueHeaders": {"host": [host], "authorization": ["Bearer mk_x"]},
            "queryStringParameters": {"a": "<"},
            "multiValueQueryStringParameters": {"a": ["<"]},
            "pathParameters": {"payment_id": "pay_1"},
            "stageVariables": null,
            "requestContext": {
                "accountId": "000000000000",
                "apiId": "abc123",
                "resourceId": "r1",
                "stage": "api",
                "requestId": "req-1",
                "path": format!("/api{path}"),
                "resourcePath": "/v1/payments/{payment_id}/cancel",
                "httpMethod": "POST",
                "identity": {"sourceIp": "203.0.113.24"}
            },
            "body": null,
            "isBase64Encoded": false
        })
    }

    #[test]
    fn rest_api_events_route_without_their_stage() {
        let event = rest_event("/v1/payments/pay_1/cancel", "abc123.execute-api.localhost");
        let req = lambda_http::request::from_str(&event.to_string()).unwrap();
        assert!(matches!(
            req.request_context_ref(),
            Some(RequestContext::ApiGatewayV1(_))
        ));
        assert_eq!(req.method(), lambda_http::http::Method::POST);
        assert_eq!(req.raw_http_path(), "/v1/payments/pay_1/cancel");
        let want = Some(vec![
            "payments".to_owned(),
            "pay_1".to_owned(),
            "cancel".to_owned(),
        ]);
        assert_eq!(route_segments(&req), want);
        // lambda_http puts the stage in front of `uri()`'s path only (not of the raw path the
        // router reads), unless AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH is set.
        if std::env::var_os("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH").is_none() {
            assert_eq!(req.uri().path(), "/api/v1/payments/pay_1/cancel");
            assert_eq!(segments_of(req.uri().path(), Some("api"), false), want);
        }
    }
}

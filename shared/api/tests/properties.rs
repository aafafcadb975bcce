//! Property tests of the HTTP-level parsing: bearer header, `Content-Type`, route segments and the
//! route table, JSON bodies and the 8 KiB limit, and — through `routes::handle` and an in-memory
//! world (`support`) — the contract's order of checks and the shape of every answer.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256).

mod support;

use lambda_http::http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use support::*;
use twochan_api::{
    http::{
        BearerKind, JsonBody, MAX_BODY_BYTES, bearer, body_bytes, require_json, route_segments,
        segments_of,
    },
    routes::{Function, Route},
};
use twochan_domain::{
    Challenge, Counter, DomainError, MerchantId, PosId, TerminalId, Timestamp, UniqueCode,
    crypto::{BeaconStep, MasterKey, PaymentBinding, SecretHash},
};

// ------------------------------------------------------------------ helpers

fn header_map(name: &'static str, value: &[u8]) -> Option<HeaderMap> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let mut h = HeaderMap::new();
    h.insert(HeaderName::from_static(name), value);
    Some(h)
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn invalid_field(e: &DomainError) -> String {
    match e {
        DomainError::InvalidRequest(m) => m.split(':').next().unwrap_or_default().to_owned(),
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

/// Random upper/lower case of an ASCII string, one bit of `mask` per char.
fn mixed_case(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

// ------------------------------------------------------------------ bearer

proptest! {
    #[test]
    fn bearer_accepts_the_contract_form(
        scheme_case in any::<u64>(),
        lead in " {0,2}",
        gap in " {1,3}",
        trail in " {0,2}",
        merchant in any::<bool>(),
        rest in "[!-~]{0,253}",
    ) {
        let secret = format!("{}{rest}", if merchant { "mk_" } else { "tt_" });
        let value = format!("{lead}{}{gap}{secret}{trail}", mixed_case("bearer", scheme_case));
        let (kind, hash) = bearer(&header_map("authorization", value.as_bytes()).unwrap()).unwrap();
        let expected = if merchant { BearerKind::MerchantKey } else { BearerKind::TerminalToken };
        prop_assert_eq!(kind, expected);
        prop_assert_eq!(hash, SecretHash::of(&secret));
    }

    #[test]
    fn bearer_refuses_every_other_form(
        case in 0u8..7,
        secret in "[!-~]{1,80}",
        long in "[!-~]{254,400}",
        scheme in select(vec!["Basic", "Token", "Bearer:", "Bearerx", "Digest", "B", "MAC", "bearer\u{0}"]),
    ) {
        let value = match case {
            // Another scheme, with a well-formed secret.
            0 => format!("{scheme} mk_{secret}"),
            // A secret without a kind prefix.
            1 => {
                prop_assume!(!secret.starts_with("mk_") && !secret.starts_with("tt_"));
                format!("Bearer {secret}")
            }
            // Over 256 chars (257 exactly, or longer).
            2 => {
                let secret = if long.len() % 2 == 0 { format!("tt_{long}") } else { format!("tt_{}", &long[..254]) };
                format!("Bearer {secret}")
            }
            // No secret.
            3 => "Bearer   ".to_owned(),
            // No scheme.
            4 => format!("mk_{secret}"),
            // Scheme and secret not separated by a space.
            5 => format!("Bearer\tmk_{secret}"),
            // Prefix in the wrong case.
            _ => format!("Bearer MK_{secret}"),
        };
        if let Some(h) = header_map("authorization", value.as_bytes()) {
            prop_assert_eq!(bearer(&h).unwrap_err(), DomainError::Unauthorized, "{:?}", value);
        }
    }

    #[test]
    fn bearer_never_panics_and_only_hashes_what_follows_the_scheme(
        value in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "(?i:bearer)[ \t]{0,3}(mk_|tt_)?[ -~]{0,40}".prop_map(String::into_bytes),
        ]
    ) {
        let Some(h) = header_map("authorization", &value) else { return Ok(()) };
        if let Ok((kind, hash)) = bearer(&h) {
            let text = std::str::from_utf8(&value).unwrap().trim();
            prop_assert!(text.len() > 7 && text[..7].eq_ignore_ascii_case("bearer "), "{:?}", text);
            let secret = text[7..].trim();
            prop_assert!(!secret.is_empty() && secret.len() <= 256);
            let expected = if secret.starts_with("mk_") { BearerKind::MerchantKey } else { BearerKind::TerminalToken };
            prop_assert!(secret.starts_with("mk_") || secret.starts_with("tt_"));
            prop_assert_eq!(kind, expected);
            prop_assert_eq!(hash, SecretHash::of(secret));
        }
    }
}

#[test]
fn missing_bearer_is_unauthorized() {
    assert_eq!(
        bearer(&HeaderMap::new()).unwrap_err(),
        DomainError::Unauthorized
    );
}

// ------------------------------------------------------------------ content type

proptest! {
    #[test]
    fn json_media_type_is_accepted_in_any_case_with_parameters(
        mask in any::<u64>(),
        ws in " {0,2}",
        params in prop_oneof![
            Just(String::new()),
            Just(";".to_owned()),
            "; ?charset=(utf-8|UTF-8|iso-8859-1)",
            "; ?[a-z]{1,8}=[a-z0-9-]{0,8}(; ?[a-z]{1,8}=[a-z0-9-]{1,8})?",
        ],
    ) {
        let value = format!("{ws}{}{ws}{params}", mixed_case("application/json", mask));
        prop_assert!(require_json(&header_map("content-type", value.as_bytes()).unwrap()).is_ok(), "{:?}", value);
    }

    #[test]
    fn other_media_types_are_unsupported(
        t in prop_oneof![
            "[a-z]{1,12}/[a-z0-9.+-]{1,20}",
            "application/json[a-z+.-]{1,6}",
            "[a-z]{0,3}application/json",
            "application/ json",
            "application/json,text/plain",
            "text/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ],
        params in prop_oneof![Just(String::new()), Just("; charset=utf-8".to_owned())],
    ) {
        prop_assume!(!t.eq_ignore_ascii_case("application/json"));
        let value = format!("{t}{params}");
        let h = header_map("content-type", value.as_bytes()).unwrap();
        prop_assert_eq!(require_json(&h).unwrap_err(), DomainError::UnsupportedMediaType, "{:?}", value);
    }

    #[test]
    fn any_content_type_header_is_accepted_only_when_it_names_json(value in proptest::collection::vec(any::<u8>(), 0..80)) {
        let Some(h) = header_map("content-type", &value) else { return Ok(()) };
        let accepted = require_json(&h).is_ok();
        let names_json = std::str::from_utf8(&value).ok().is_some_and(|v| {
            v.split(';').next().unwrap().trim().eq_ignore_ascii_case("application/json")
        });
        prop_assert_eq!(accepted, names_json, "{:?}", String::from_utf8_lossy(&value));
    }
}

#[test]
fn missing_content_type_is_unsupported() {
    assert_eq!(
        require_json(&HeaderMap::new()).unwrap_err(),
        DomainError::UnsupportedMediaType
    );
}

// ------------------------------------------------------------------ path and routes

fn get(path: &str) -> lambda_http::Request {
    lambda_http::http::Request::builder()
        .uri(path)
        .body(lambda_http::Body::Empty)
        .unwrap()
}

proptest! {
    /// After an allowed prefix (none, a named stage, `cargo lambda watch`'s `/lambda-url/<fn>`
    /// when allowed), the segments after `/v1` come back as they are; a doubled or trailing
    /// slash, or an escape, makes it no route.
    #[test]
    fn route_segments_after_an_allowed_prefix(
        (prefix, stage, watch) in select(vec![("", None, false), ("", Some("$default"), false), ("/prod", Some("prod"), false), ("/lambda-url/registration", None, true)]),
        segs in proptest::collection::vec("[A-Za-z0-9_%-]{1,12}", 0..5),
        doubled in proptest::collection::vec(any::<bool>(), 5),
        trailing in any::<bool>(),
    ) {
        let mut path = format!("{prefix}/v1");
        let mut clean = !trailing;
        for (i, s) in segs.iter().enumerate() {
            path.push('/');
            if doubled[i] {
                path.push('/');
                clean = false;
            }
            path.push_str(s);
            clean &= !s.contains('%');
        }
        if trailing {
            path.push('/');
        }
        prop_assert_eq!(segments_of(&path, stage, watch), clean.then(|| segs.clone()), "{}", path);
        // Without the permission, the watch prefix is no route.
        if watch {
            prop_assert_eq!(segments_of(&path, stage, false), None);
        }
        prop_assert_eq!(route_segments(&get(&path)).is_some(), clean && prefix.is_empty());
    }

    /// Anything before `/v1` but those prefixes, or no `/v1` at the start, is no route.
    #[test]
    fn other_paths_have_no_segments(prefix in "/[a-z0-9_-]{1,12}", rest in "(/[a-z0-9]{0,8}){0,3}") {
        prop_assert_eq!(segments_of(&format!("{prefix}/v1{rest}"), None, false), None);
        prop_assert_eq!(segments_of(&format!("{prefix}{rest}"), None, false), None);
    }

}

/// The contract's endpoint table, written out independently of `Route::of`.
fn contract_route(method: &str, segs: &[&str]) -> Option<Route> {
    let id = |s: &str| s.to_owned();
    match (method, segs.len()) {
        ("POST", 1) if segs[0] == "devices" => Some(Route::RegisterDevice),
        ("DELETE", 2) if segs[0] == "devices" => Some(Route::DeregisterDevice(id(segs[1]))),
        ("POST", 1) if segs[0] == "payments" => Some(Route::CreatePayment),
        ("GET", 2) if segs[0] == "payments" => Some(Route::GetPayment(id(segs[1]))),
        ("POST", 3) if segs[0] == "payments" && segs[2] == "cancel" => {
            Some(Route::CancelPayment(id(segs[1])))
        }
        ("POST", 3) if segs[0] == "payments" && segs[2] == "confirm" => {
            Some(Route::ConfirmPayment(id(segs[1])))
        }
        ("POST", 3) if segs[0] == "payments" && segs[2] == "decline" => {
            Some(Route::DeclinePayment(id(segs[1])))
        }
        ("GET", 1) if segs[0] == "pending-payments" => Some(Route::PendingPayments),
        ("GET", 1) if segs[0] == "balance" => Some(Route::Balance),
        _ => None,
    }
}

const SEGMENT_WORDS: &[&str] = &[
    "devices",
    "payments",
    "balance",
    "pending-payments",
    "cancel",
    "confirm",
    "decline",
    "v1",
    "Payments",
    "pay_01KB1ZQ8RV4T6M2XW9C3HJ5N7P",
    "beacon-0001",
    "",
];

const METHODS: &[&str] = &[
    "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "post", "FOO",
];

proptest! {
    #[test]
    fn route_table_is_the_contracts_and_each_route_has_one_function(
        method in select(METHODS),
        segs in proptest::collection::vec(prop_oneof![select(SEGMENT_WORDS).prop_map(str::to_owned), "\\PC{1,10}"], 0..5),
    ) {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let seg_refs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let route = Route::of(&m, &segs);
        prop_assert_eq!(route.clone(), contract_route(method, &seg_refs), "{} {:?}", method, segs);
        if let Some(r) = route {
            prop_assert_eq!(FUNCTIONS.iter().filter(|f| f.serves(&r)).count(), 1, "{:?}", r);
        }
    }
}

// ------------------------------------------------------------------ JSON bodies

const ALLOWED: &[&str] = &["unique_code", "amount", "currency", "pos_id", "reference"];

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Serializes `v` as JSON with random (valid) whitespace between tokens.
fn with_whitespace(v: &Value, ws: &str) -> String {
    let compact = serde_json::to_string(v).unwrap();
    if ws.is_empty() {
        return compact;
    }
    // Whitespace after every structural char outside strings.
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in compact.chars() {
        out.push(c);
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, '{' | '}' | '[' | ']' | ':' | ',') {
            out.push_str(ws);
        }
    }
    format!("{ws}{out}")
}

proptest! {
    #[test]
    fn objects_of_allowed_fields_parse_and_each_field_reads_by_its_type(
        fields in proptest::collection::btree_map(select(ALLOWED), json_scalar(), 0..5),
        ws in select(vec!["", " ", "\n\t ", "\r\n"]),
    ) {
        let obj: serde_json::Map<String, Value> = fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let text = with_whitespace(&Value::Object(obj), ws);
        let body = JsonBody::from_bytes(text.as_bytes(), ALLOWED).unwrap();
        for field in ALLOWED {
            let v = fields.get(field).cloned().unwrap_or(Value::Null);
            match &v {
                Value::String(s) => {
                    prop_assert_eq!(body.string(field).unwrap(), s.as_str());
                    prop_assert_eq!(invalid_field(&body.u64(field).unwrap_err()), *field);
                }
                Value::Null => {
                    prop_assert_eq!(body.opt_string(field).unwrap(), None);
                    prop_assert_eq!(invalid_field(&body.string(field).unwrap_err()), *field);
                    prop_assert_eq!(invalid_field(&body.u64(field).unwrap_err()), *field);
                }
                Value::Number(n) if n.as_u64().is_some() => {
                    prop_assert_eq!(body.u64(field).unwrap(), n.as_u64().unwrap());
                    prop_assert_eq!(invalid_field(&body.string(field).unwrap_err()), *field);
                }
                _ => {
                    prop_assert_eq!(invalid_field(&body.u64(field).unwrap_err()), *field);
                    prop_assert_eq!(invalid_field(&body.string(field).unwrap_err()), *field);
                }
            }
        }
    }

    #[test]
    fn an_unknown_field_is_named_in_the_error(
        fields in proptest::collection::btree_map(select(ALLOWED), json_scalar(), 0..5),
        unknown in prop_oneof!["\\PC{1,100}", "[a-z_]{1,20}", select(vec!["Amount", "amount ", "unique-code", "__proto__", ""]).prop_map(str::to_owned)],
        value in json_value(),
    ) {
        prop_assume!(!ALLOWED.contains(&unknown.as_str()));
        let mut obj: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        obj.insert(unknown.clone(), value);
        let err = JsonBody::from_bytes(serde_json::to_string(&obj).unwrap().as_bytes(), ALLOWED).err().unwrap();
        let DomainError::InvalidRequest(message) = err else { panic!("{err:?}") };
        let named: String = unknown.chars().take(64).collect();
        prop_assert!(message.starts_with(&format!("{named}:")), "{:?} for {:?}", message, unknown);
    }

    #[test]
    fn json_that_is_not_an_object_is_refused(v in json_value()) {
        // An object inside an array is still not an object.
        let v = if v.is_object() { Value::Array(vec![v]) } else { v };
        let err = JsonBody::from_bytes(serde_json::to_string(&v).unwrap().as_bytes(), ALLOWED).err().unwrap();
        prop_assert_eq!(invalid_field(&err), "body");
    }

    #[test]
    fn arbitrary_bytes_parse_only_as_an_object_of_allowed_fields(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            "[{}\\[\\]\":,0-9a-z \\\\]{0,60}".prop_map(String::into_bytes),
        ]
    ) {
        let parsed = JsonBody::from_bytes(&bytes, ALLOWED);
        let expected = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => m.keys().all(|k| ALLOWED.contains(&k.as_str())),
            _ => false,
        };
        prop_assert_eq!(parsed.is_ok(), expected, "{:?}", String::from_utf8_lossy(&bytes));
        if let Err(e) = parsed {
            prop_assert!(matches!(e, DomainError::InvalidRequest(_)));
        }
    }

    #[test]
    fn body_limit_is_8_kib(len in prop_oneof![0..=MAX_BODY_BYTES, (MAX_BODY_BYTES - 2)..=(MAX_BODY_BYTES + 2), (MAX_BODY_BYTES + 1)..40_000]) {
        let req = lambda_http::http::Request::builder()
            .body(lambda_http::Body::Binary(vec![b'x'; len]))
            .unwrap();
        let r = body_bytes(&req);
        if len <= 8192 {
            prop_assert_eq!(r.unwrap().len(), len);
        } else {
            prop_assert_eq!(r.unwrap_err(), DomainError::PayloadTooLarge);
        }
    }
}

// ------------------------------------------------------------------ whole requests through `handle`

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Register,
    Deregister,
    Create,
    Get,
    Cancel,
    Balance,
    Pending,
    Confirm,
    Decline,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint::Register,
    Endpoint::Deregister,
    Endpoint::Create,
    Endpoint::Get,
    Endpoint::Cancel,
    Endpoint::Balance,
    Endpoint::Pending,
    Endpoint::Confirm,
    Endpoint::Decline,
];

impl Endpoint {
    fn function(self) -> Function {
        use Endpoint::*;
        match self {
            Register | Deregister => Function::Registration,
            Create | Get | Cancel | Balance => Function::PaymentRequest,
            Pending | Confirm | Decline => Function::Confirmation,
        }
    }

    fn has_body(self) -> bool {
        matches!(
            self,
            Endpoint::Register | Endpoint::Create | Endpoint::Confirm
        )
    }

    /// The bearer this endpoint wants (`None`: registration, authenticated by its proof).
    fn bearer(self) -> Option<&'static str> {
        use Endpoint::*;
        match self {
            Register => None,
            Create | Get | Cancel | Balance => Some(MERCHANT_KEY),
            Deregister | Pending | Confirm | Decline => Some(TERMINAL_TOKEN),
        }
    }

    fn method_and_path(self, world: &World) -> (&'static str, String) {
        use Endpoint::*;
        let id = world.payment_id();
        match self {
            Register => ("POST", "/v1/devices".into()),
            Deregister => ("DELETE", format!("/v1/devices/{CODE}")),
            Create => ("POST", "/v1/payments".into()),
            Get => ("GET", format!("/v1/payments/{id}")),
            Cancel => ("POST", format!("/v1/payments/{id}/cancel")),
            Balance => ("GET", "/v1/balance".into()),
            Pending => ("GET", "/v1/pending-payments".into()),
            Confirm => ("POST", format!("/v1/payments/{id}/confirm")),
            Decline => ("POST", format!("/v1/payments/{id}/decline")),
        }
    }

    /// A body the endpoint accepts in the world, as a JSON value (`Null` for bodiless ones).
    fn valid_body(self, world: &World, new_code: &str) -> Value {
        let master = MasterKey::from_hex(MASTER_KEY_HEX).unwrap();
        match self {
            Endpoint::Register => {
                let code = UniqueCode::try_from(new_code).unwrap();
                let terminal = TerminalId::try_from("phone-new-0001").unwrap();
                let challenge = Challenge::try_from(CHALLENGE).unwrap();
                let proof = master
                    .device_key(&code)
                    .registration_proof(&code, &terminal, &challenge);
                json!({"unique_code": new_code, "terminal_id": "phone-new-0001", "challenge": CHALLENGE, "registration_proof": proof})
            }
            Endpoint::Create => {
                let code = UniqueCode::try_from(CODE).unwrap();
                let beacon = master
                    .device_key(&code)
                    .beacon_proof(&code, BeaconStep::at(Timestamp::now()));
                json!({"unique_code": CODE, "beacon_proof": beacon, "amount": 4500, "currency": "KRW", "pos_id": "pos-1", "reference": "order 42"})
            }
            Endpoint::Confirm => {
                let p = &world.payment;
                let binding = PaymentBinding {
                    payment_id: &p.payment_id,
                    merchant_id: &MerchantId::try_from(MERCHANT).unwrap(),
                    amount: p.amount,
                    currency: p.currency,
                    challenge: &p.challenge,
                    counter: Counter::new(8),
                };
                let code = master.device_key(&p.unique_code).auth_code(&binding);
                json!({"auth_code": code, "counter": "8"})
            }
            _ => Value::Null,
        }
    }

    /// The answer to the valid request in the world. Its payment holds the device's lock, so a
    /// new payment on the device is `409 device_busy` (a business answer, after the key is claimed).
    fn success(self) -> u16 {
        match self {
            Endpoint::Register => 201,
            Endpoint::Create => 409,
            Endpoint::Deregister => 204,
            _ => 200,
        }
    }
}

/// The defects the contract orders: size (413), caller (401), media type (415), JSON (400).
#[derive(Debug, Clone)]
struct Defects {
    oversize: bool,
    bad_bearer: Option<&'static str>,
    bad_content_type: Option<&'static str>,
    bad_json: Option<String>,
}

fn defects() -> impl Strategy<Value = Defects> {
    (
        any::<bool>(),
        proptest::option::of(select(vec![
            "",
            "Bearer",
            "Basic dXNlcjpwYXNz",
            "Bearer mk_unknown",
            "Bearer tt_unknown",
            "Bearer xx_0123",
            "bearer  tt_",
        ])),
        proptest::option::of(select(vec![
            "",
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "json",
            "application/xml; charset=utf-8",
        ])),
        proptest::option::of(prop_oneof![
            select(vec![
                "",
                "{",
                "[]",
                "null",
                "\"x\"",
                "{\"a\":1}",
                "{,}",
                "{\"amount\":1,}",
                "\u{feff}{}",
            ])
            .prop_map(str::to_owned),
            "[\\PC]{1,40}".prop_filter("not JSON", |s| serde_json::from_str::<Value>(s).is_err()),
        ]),
    )
        .prop_map(
            |(oversize, bad_bearer, bad_content_type, bad_json)| Defects {
                oversize,
                bad_bearer,
                bad_content_type,
                bad_json,
            },
        )
}

/// A request to `endpoint` with `defects`, the status the contract's order of checks gives it, and
/// whether that is a refusal (which must write nothing).
fn build(
    endpoint: Endpoint,
    world: &World,
    d: &Defects,
    swap_bearer: bool,
) -> (lambda_http::Request, u16, bool) {
    let (method, path) = endpoint.method_and_path(world);
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut expected = endpoint.success();
    let valid_bearer = endpoint.bearer().map(|b| {
        // The bearer of the other party (a valid secret of the wrong kind) is as bad as none.
        if swap_bearer && b == MERCHANT_KEY {
            TERMINAL_TOKEN
        } else if swap_bearer {
            MERCHANT_KEY
        } else {
            b
        }
    });
    match (d.bad_bearer, valid_bearer) {
        (Some(bad), _) => headers.push(("authorization".into(), bad.as_bytes().to_vec())),
        (None, Some(b)) => {
            headers.push(("authorization".into(), format!("Bearer {b}").into_bytes()))
        }
        (None, None) => {}
    }
    // A merchant may also read a payment with... only its own key; the phone reads with its token.
    // Registration needs no bearer, but one it is sent must be a current terminal token.
    let bearer_fails = (endpoint.bearer().is_some() || endpoint == Endpoint::Register)
        && (d.bad_bearer.is_some()
            || (endpoint.bearer().is_some() && swap_bearer && endpoint != Endpoint::Get));
    match d.bad_content_type {
        Some(ct) if !ct.is_empty() => headers.push(("content-type".into(), ct.as_bytes().to_vec())),
        Some(_) => {}
        None => headers.push((
            "content-type".into(),
            b"application/json; charset=utf-8".to_vec(),
        )),
    }
    if endpoint == Endpoint::Create {
        headers.push(("idempotency-key".into(), b"order-42 attempt 1".to_vec()));
    }
    let mut body = match (&d.bad_json, endpoint.has_body()) {
        (Some(bad), true) => bad.clone().into_bytes(),
        (_, true) => serde_json::to_vec(&endpoint.valid_body(world, "beacon-new-0001")).unwrap(),
        (Some(bad), false) => bad.clone().into_bytes(),
        (None, false) => Vec::new(),
    };
    if d.oversize {
        body.resize(MAX_BODY_BYTES + 1, b' ');
    }
    // The contract's order: size, caller, media type, JSON. Bodiless endpoints ignore the last two.
    if d.oversize {
        expected = 413;
    } else if bearer_fails {
        expected = 401;
    } else if endpoint.has_body() && d.bad_content_type.is_some() {
        expected = 415;
    } else if endpoint.has_body() && d.bad_json.is_some() {
        expected = 400;
    }
    let refused = expected != endpoint.success();
    (
        request(method, &path, &headers, body).unwrap(),
        expected,
        refused,
    )
}

proptest! {
    /// Order of checks (docs/CONTRACT_NOTES.md): body size → caller → Content-Type → JSON; bodiless
    /// endpoints ignore Content-Type and any body under 8 KiB; a refused request writes nothing.
    #[test]
    fn checks_come_in_the_contracts_order(
        endpoint in select(ENDPOINTS),
        d in defects(),
        swap_bearer in any::<bool>(),
    ) {
        let world = World::new();
        let (req, expected, refused) = build(endpoint, &world, &d, swap_bearer);
        let app = world.app();
        let resp = run(&app, endpoint.function(), req);
        let checked = check_response(&resp);
        prop_assert!(checked.is_ok(), "{:?}", checked);
        prop_assert_eq!(resp.status().as_u16(), expected, "{:?} {:?} swap {}: {:?}", endpoint, d, swap_bearer, String::from_utf8_lossy(resp.body().as_ref()));
        if refused {
            prop_assert_eq!(app.store.take_writes(), 0, "a refused request wrote");
        }
    }

    /// Every route answers 404 `not_found` on the functions that do not serve it, whatever else
    /// is wrong with the request (the HTTP API sends unknown routes to one of them).
    #[test]
    fn a_function_answers_not_found_for_routes_it_does_not_serve(
        endpoint in select(ENDPOINTS),
        other in 0usize..2,
        d in defects(),
    ) {
        let others: Vec<Function> = FUNCTIONS.into_iter().filter(|f| *f != endpoint.function()).collect();
        let function = others[other];
        let world = World::new();
        let (req, _, _) = build(endpoint, &world, &d, false);
        let app = world.app();
        let resp = run(&app, function, req);
        prop_assert_eq!(check_response(&resp), Ok(Some("not_found".to_owned())));
        prop_assert_eq!(app.store.take_writes(), 0);
    }
}

/// A field of a valid body replaced by something outside its grammar.
fn broken_field(endpoint: Endpoint) -> impl Strategy<Value = (String, Option<Value>)> {
    let fields: Vec<&'static str> = match endpoint {
        Endpoint::Register => vec![
            "unique_code",
            "terminal_id",
            "challenge",
            "registration_proof",
        ],
        Endpoint::Create => vec![
            "unique_code",
            "beacon_proof",
            "amount",
            "currency",
            "pos_id",
            "reference",
            "Idempotency-Key",
        ],
        _ => vec!["auth_code", "counter"],
    };
    let bad_value = prop_oneof![
        // Missing.
        Just(None),
        // Other JSON types.
        select(vec![
            json!(true),
            json!([]),
            json!({}),
            json!(1.5),
            json!(-1),
            json!(0)
        ])
        .prop_map(Some),
        // Strings outside every id grammar: empty, too long, unicode, control chars, spaces.
        select(vec![
            "",
            "short",
            "é-not-ascii-00",
            "line\nbreak-000",
            "tab\there-000",
            "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
            "🙂🙂🙂🙂🙂🙂🙂🙂"
        ])
        .prop_map(|s| Some(json!(s))),
        "[a-z]{65,200}".prop_map(|s| Some(json!(s))),
        // Numbers out of range (as text and as JSON numbers).
        select(vec![
            json!(0),
            json!(100_000_000u64),
            json!(u64::MAX),
            json!(-4500),
            json!("4500"),
            json!(1e300)
        ])
        .prop_map(Some),
    ];
    (select(fields), bad_value).prop_map(|(f, v)| (f.to_owned(), v))
}

proptest! {
    /// A body endpoint's valid request with one field broken is 400 `invalid_request` naming the
    /// field (or 422 for a registration proof that is a string) and writes nothing.
    #[test]
    fn a_broken_field_is_refused_naming_the_field(
        (endpoint, (field, value)) in select(vec![Endpoint::Register, Endpoint::Create, Endpoint::Confirm])
            .prop_flat_map(|e| (Just(e), broken_field(e))),
    ) {
        let world = World::new();
        let (method, path) = endpoint.method_and_path(&world);
        let mut body = endpoint.valid_body(&world, "beacon-new-0001");
        let mut idempotency_key = Some(b"key-1".to_vec());
        if field == "Idempotency-Key" {
            idempotency_key = match &value {
                None => None,
                Some(Value::String(s)) => Some(s.clone().into_bytes()),
                Some(_) => Some(vec![b'k'; 256]),
            };
        } else {
            match &value {
                None => { body.as_object_mut().unwrap().remove(&field); }
                Some(v) => { body[&field] = v.clone(); }
            }
        }
        // Some replacements stay inside the grammar: an optional reference may go, a reference
        // may be any text, 0 and "short" are fine where there is no lower bound.
        let still_valid = match (field.as_str(), &value) {
            ("reference", None) => true,
            ("reference", Some(Value::String(s))) => s.chars().count() <= 128 && !s.chars().any(char::is_control),
            ("Idempotency-Key", Some(Value::String(s))) => !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x20..0x7f).contains(&b)),
            ("pos_id", Some(Value::String(s))) => PosId::try_from(s.as_str()).is_ok(),
            // A well-formed counter is a business matter (stale_counter), not a malformed field.
            ("counter", Some(Value::String(s))) => Counter::try_from(s.as_str()).is_ok(),
            _ => false,
        };
        prop_assume!(!still_valid);
        let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
        if let Some(b) = endpoint.bearer() {
            headers.push(("authorization".into(), format!("Bearer {b}").into_bytes()));
        }
        if endpoint == Endpoint::Create {
            if let Some(k) = idempotency_key {
                headers.push(("idempotency-key".into(), k));
            }
        }
        let Some(req) = request(method, &path, &headers, serde_json::to_vec(&body).unwrap()) else {
            // http refuses the header value itself (a control char): API Gateway never sends it.
            return Ok(());
        };
        let app = world.app();
        let resp = run(&app, endpoint.function(), req);
        let code = check_response(&resp).map_err(TestCaseError::fail)?;
        let proof_string = field == "registration_proof" && matches!(value, Some(Value::String(_)));
        if proof_string {
            prop_assert_eq!(code.as_deref(), Some("invalid_registration_proof"));
        } else {
            prop_assert_eq!(code.as_deref(), Some("invalid_request"), "{} = {:?}", field, value);
            let message: Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
            let message = message["error"]["message"].as_str().unwrap();
            prop_assert!(message.starts_with(&format!("{field}:")), "{:?} for {}", message, field);
        }
        prop_assert_eq!(app.store.take_writes(), 0);
    }
}

fn any_method() -> impl Strategy<Value = String> {
    prop_oneof![select(METHODS).prop_map(str::to_owned), "[A-Z]{1,10}",]
}

fn any_path(world_id: String) -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        select(SEGMENT_WORDS).prop_map(str::to_owned),
        Just(world_id),
        Just(CODE.to_owned()),
        "\\PC{1,12}".prop_map(|s| pct(&s)),
        "%[0-9A-Fa-f]{2}|%|%%|%G0|\\.\\.|\\.",
    ];
    (
        select(vec!["", "/prod", "/v2", "/x"]),
        proptest::collection::vec(seg, 0..5),
        any::<bool>(),
    )
        .prop_map(|(prefix, segs, v1)| {
            let mut p = prefix.to_owned();
            if v1 {
                p.push_str("/v1");
            }
            for s in segs {
                p.push('/');
                p.push_str(&s);
            }
            if p.is_empty() {
                p.push('/');
            }
            p
        })
}

fn any_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let auth = prop_oneof![
        Just(format!("Bearer {MERCHANT_KEY}").into_bytes()),
        Just(format!("Bearer {TERMINAL_TOKEN}").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..300),
        "(?i:bearer) [ -~]{0,80}".prop_map(String::into_bytes),
    ];
    let ct = prop_oneof![
        Just(b"application/json".to_vec()),
        Just(b"text/plain".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    let key = prop_oneof![
        "[ -~]{0,300}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    (
        proptest::option::of(auth),
        proptest::option::of(ct),
        proptest::option::of(key),
    )
        .prop_map(|(a, c, k)| {
            let mut h = Vec::new();
            if let Some(a) = a {
                h.push(("authorization".to_owned(), a));
            }
            if let Some(c) = c {
                h.push(("content-type".to_owned(), c));
            }
            if let Some(k) = k {
                h.push(("idempotency-key".to_owned(), k));
            }
            h
        })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..100),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        // Objects with the contract's field names and arbitrary values.
        proptest::collection::btree_map(
            select(vec![
                "unique_code",
                "terminal_id",
                "registration_proof",
                "amount",
                "currency",
                "pos_id",
                "reference",
                "auth_code",
                "counter",
                "extra"
            ]),
            json_value(),
            0..6,
        )
        .prop_map(|m| serde_json::to_vec(&m).unwrap()),
        (8190usize..8200).prop_map(|n| vec![b'{'; n]),
    ]
}

proptest! {
    /// Whatever arrives, the answer is a contract answer (never a 5xx), and a request refused as
    /// malformed (400, 401, 404 `not_found`, 413, 415) writes nothing.
    #[test]
    fn every_answer_is_a_contract_answer(
        function in select(FUNCTIONS.to_vec()),
        method in any_method(),
        path in any_path("pay_00000000000000000000000000".to_owned()),
        use_world_id in any::<bool>(),
        headers in any_headers(),
        body in any_body(),
    ) {
        let world = World::new();
        // Half of the paths name the world's payment, so that requests reach past the lookup.
        let path = if use_world_id { path.replace("pay_00000000000000000000000000", world.payment_id()) } else { path };
        let Some(req) = request(&method, &path, &headers, body) else { return Ok(()) };
        let app = world.app();
        let resp = run(&app, function, req);
        let code = check_response(&resp).map_err(TestCaseError::fail)?;
        let writes = app.store.take_writes();
        if matches!(code.as_deref(), Some("invalid_request" | "unauthorized" | "not_found" | "payload_too_large" | "unsupported_media_type" | "invalid_registration_proof" | "invalid_beacon_proof")) {
            prop_assert_eq!(writes, 0, "{:?} wrote", code);
        }
    }
}

fn malformed_payment_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "pay_[0-9a-z]{26}",
        "pay_[0-9A-Z]{1,25}",
        "pay_[0-9A-Z]{27,40}",
        "[89A-Z][0-9A-Z]{25}".prop_map(|u| format!("pay_{u}")),
        "[a-z_]{0,10}",
        "\\PC{1,30}",
    ]
    .prop_filter("malformed", |s| {
        twochan_domain::PaymentId::try_from(s.as_str()).is_err()
    })
}

proptest! {
    /// A path id that cannot exist is `404 not_found` for a valid caller, like an id that does not
    /// exist (docs/CONTRACT_NOTES.md: a path is not a field), and nothing is written.
    #[test]
    fn a_malformed_path_id_is_not_found(
        endpoint in select(vec![Endpoint::Get, Endpoint::Cancel, Endpoint::Confirm, Endpoint::Decline, Endpoint::Deregister]),
        id in malformed_payment_id(),
        code in prop_oneof!["[A-Za-z0-9_-]{0,7}", "[A-Za-z0-9_-]{65,80}", "\\PC{1,30}"]
            .prop_filter("malformed", |s| UniqueCode::try_from(s.as_str()).is_err()),
    ) {
        let world = World::new();
        let (method, path) = endpoint.method_and_path(&world);
        let path = if endpoint == Endpoint::Deregister {
            format!("/v1/devices/{}", pct(&code))
        } else {
            path.replace(world.payment_id(), &pct(&id))
        };
        let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
        headers.push(("authorization".into(), format!("Bearer {}", endpoint.bearer().unwrap()).into_bytes()));
        let body = serde_json::to_vec(&endpoint.valid_body(&world, "beacon-new-0001")).unwrap();
        let body = if endpoint.has_body() { body } else { Vec::new() };
        let app = world.app();
        let resp = run(&app, endpoint.function(), request(method, &path, &headers, body).unwrap());
        prop_assert_eq!(check_response(&resp), Ok(Some("not_found".to_owned())), "{}", path);
        prop_assert_eq!(app.store.take_writes(), 0);
    }
}

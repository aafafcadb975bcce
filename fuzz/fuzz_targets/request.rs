//! Fuzz target `request`: arbitrary method, path, headers and body through everything the
//! functions do before storage — `lambda_http`'s API Gateway v2 event conversion (in event mode),
//! route table, 8 KiB limit, bearer, `Content-Type`, JSON fields, `Idempotency-Key`, newtypes —
//! and on into `routes::handle` against the fixed in-memory world of the API's property tests.
//!
//! Input: one flags byte, then an HTTP/1-like text the fuzzer can mutate from the seed corpus:
//!
//! ```text
//! <flags>METHOD /path?query\n
//! name: value\n
//! ...\n
//! \n
//! body bytes
//! ```
//!
//! flags bits 0–1: the function (0 registration, 1 payment-request, 2 confirmation, 3 all three);
//! bit 2: event mode (the request becomes an API Gateway v2 JSON event, read and converted the way
//! `twochan_api::serve_http` does: `LambdaRequest`, `without_unread_parts`, then `lambda_http`'s
//! conversion, whose panics would be caught there but are crashes here, so that none goes unseen).
//!
//! Must hold for every input: no panic; every answer is a contract answer (contract status, never
//! 5xx, the JSON error shape with a code of its status); a request refused as malformed writes
//! nothing.
//!
//! The event carries the client's headers (`Host`, `X-Forwarded-Proto` included), path and query
//! as they came: `lambda_http` 1.3.2 alone panics on some of them (docs/RELIABILITY.md).

#![no_main]

#[path = "../../shared/api/tests/support/mod.rs"]
mod support;

use std::sync::OnceLock;

use base64::Engine;
use lambda_http::{Context, LambdaEvent, request::LambdaRequest};
use libfuzzer_sys::fuzz_target;
use support::*;
use twochan_api::{
    routes::{App, Function},
    without_unread_parts,
};

fn app() -> &'static App<World, WorldQueue, WorldQueue> {
    static APP: OnceLock<App<World, WorldQueue, WorldQueue>> = OnceLock::new();
    APP.get_or_init(|| World::new().app())
}

struct Parsed<'a> {
    method: &'a [u8],
    target: &'a [u8],
    headers: Vec<(String, Vec<u8>)>,
    body: &'a [u8],
}

fn parse(data: &[u8]) -> Parsed<'_> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (method, target) = match first.iter().position(|b| *b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (first, &b"/"[..]),
    };
    let headers = lines
        .filter_map(|line| {
            let i = line.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&line[..i])
                .trim()
                .to_ascii_lowercase();
            let value = line[i + 1..].trim_ascii_start().to_vec();
            Some((name, value))
        })
        .collect();
    Parsed {
        method,
        target,
        headers,
        body,
    }
}

/// The request as API Gateway (payload format 2.0) hands it to a function, read and converted as
/// `twochan_api::serve_http` does.
fn via_event(p: &Parsed<'_>) -> Option<lambda_http::Request> {
    let target = String::from_utf8_lossy(p.target);
    let (raw_path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut headers = serde_json::Map::new();
    for (name, value) in &p.headers {
        let value = String::from_utf8_lossy(value).into_owned();
        // API Gateway joins repeated headers with commas.
        match headers.get_mut(name) {
            Some(serde_json::Value::String(v)) => {
                v.push(',');
                v.push_str(&value);
            }
            _ => {
                headers.insert(name.clone(), value.into());
            }
        }
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let text_body = content_type.starts_with("text/")
        || content_type.split(';').next().unwrap_or("").trim() == "application/json";
    let mut event = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "0d9e9dbf",
            "domainName": "0d9e9dbf.execute-api.localhost",
            "http": {
                "method": String::from_utf8_lossy(p.method),
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "fuzz"
            },
            "requestId": "fuzz",
            "routeKey": "$default",
            "stage": "$default",
            "time": "27/Nov/2026:04:05:06 +0000",
            "timeEpoch": 1795752306000u64
        },
        "isBase64Encoded": false
    });
    if !p.body.is_empty() {
        match std::str::from_utf8(p.body) {
            Ok(text) if text_body => event["body"] = text.into(),
            _ => {
                event["body"] = base64::engine::general_purpose::STANDARD
                    .encode(p.body)
                    .into();
                event["isBase64Encoded"] = true.into();
            }
        }
    }
    // An event the runtime cannot read is refused before any handler runs.
    let payload: LambdaRequest = serde_json::from_value(event).ok()?;
    let event = without_unread_parts(LambdaEvent::new(payload, Context::default()));
    Some(event.payload.into())
}

fn direct(p: &Parsed<'_>) -> Option<lambda_http::Request> {
    request(
        std::str::from_utf8(p.method).ok()?,
        std::str::from_utf8(p.target).ok()?,
        &p.headers,
        p.body.to_vec(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let parsed = parse(rest);
    let functions: &[Function] = match flags & 3 {
        0 => &FUNCTIONS[0..1],
        1 => &FUNCTIONS[1..2],
        2 => &FUNCTIONS[2..3],
        _ => &FUNCTIONS,
    };
    let app = app();
    for function in functions {
        let req = if flags & 4 != 0 {
            via_event(&parsed)
        } else {
            direct(&parsed)
        };
        let Some(req) = req else { return };
        app.store.take_writes();
        let resp = run(app, *function, req);
        let code = match check_response(&resp) {
            Ok(code) => code,
            Err(why) => panic!("{function:?}: {why}"),
        };
        let writes = app.store.take_writes();
        if matches!(
            code.as_deref(),
            Some(
                "invalid_request"
                    | "unauthorized"
                    | "not_found"
                    | "payload_too_large"
                    | "unsupported_media_type"
                    | "invalid_registration_proof"
                    | "invalid_beacon_proof"
            )
        ) {
            assert_eq!(writes, 0, "{function:?}: refused with {code:?} but wrote");
        }
    }
});

//! The simulated device ([`twochan_tools::Device`]) for scripts: one JSON request a line on
//! stdin, one JSON answer a line on stdout, until stdin closes. Scripts (scripts/sweep.py) keep
//! one process open and ask it for every proof and code, so the contract's HMACs are computed by
//! the Rust code the server verifies with, never re-encoded in the script.
//!
//! Requests (`master`: the issuer master key as configured, 64 hex characters, or several
//! comma-separated of which the first, the current generation, makes new devices):
//!
//! - `{"op": "beacon_proof", "master", "code", "at"?}`: the beacon proof of the 30 s step holding
//!   unix second `at` (default now);
//! - `{"op": "registration_proof", "master", "code", "terminal", "challenge"}`;
//! - `{"op": "registration_proof_v1", "master", "code", "terminal"}`: contract revision 1's, which
//!   revision 2 refuses;
//! - `{"op": "auth_code", "master", "code", "payment", "counter"}`: `payment` as the phone received
//!   it (`payment_id`, `merchant_id`, `amount`, `currency`, `challenge`);
//! - `{"op": "bearer_prefixes"}`: `{"merchant_key", "terminal_token"}`, the prefixes of the
//!   secrets the server issues.
//!
//! Each op that takes a `code` also takes `key_code`: the device then carries that code's key
//! while it claims `code` (a cloned or forged device, whose proofs must not verify).
//!
//! Answers are `{"ok": <value>}` or `{"error": "<why>"}` (the process carries on).

use std::io::{BufRead, Write};
use std::panic::{self, AssertUnwindSafe};

use serde_json::{Value, json};
use twochan_domain::crypto::{IssuerKeys, MERCHANT_KEY_PREFIX, TERMINAL_TOKEN_PREFIX};
use twochan_domain::{Timestamp, UniqueCode};
use twochan_tools::Device;

fn field<'a>(request: &'a Value, name: &str) -> Result<&'a str, String> {
    request[name]
        .as_str()
        .ok_or_else(|| format!("no string field {name:?}"))
}

fn device(request: &Value) -> Result<Device, String> {
    let keys =
        IssuerKeys::parse(field(request, "master")?).map_err(|e| format!("master: {e:?}"))?;
    let code = field(request, "code")?;
    let mut device =
        Device::manufacture(keys.current(), field(request, "key_code").unwrap_or(code));
    device.code = UniqueCode::try_from(code).map_err(|e| format!("code: {e:?}"))?;
    Ok(device)
}

fn answer(request: &Value) -> Result<Value, String> {
    let op = field(request, "op")?;
    let value = match op {
        "beacon_proof" => {
            let at = match &request["at"] {
                Value::Null => Timestamp::now(),
                at => Timestamp::from_millis(
                    at.as_i64()
                        .and_then(|s| s.checked_mul(1000))
                        .ok_or("\"at\" must be whole unix seconds")?,
                ),
            };
            json!(device(request)?.beacon_at(at).proof)
        }
        "registration_proof" => json!(
            device(request)?
                .registration_proof(field(request, "terminal")?, field(request, "challenge")?)
        ),
        "registration_proof_v1" => {
            json!(device(request)?.revision1_registration_proof(field(request, "terminal")?))
        }
        "auth_code" => {
            let counter = request["counter"]
                .as_u64()
                .ok_or("\"counter\" must be an unsigned integer")?;
            json!(device(request)?.auth_code_for(&request["payment"], counter))
        }
        "bearer_prefixes" => json!({
            "merchant_key": MERCHANT_KEY_PREFIX,
            "terminal_token": TERMINAL_TOKEN_PREFIX,
        }),
        _ => return Err(format!("unknown op {op:?}")),
    };
    Ok(value)
}

fn main() {
    // `Device` panics on input outside the contract's grammar (a malformed code, say): that is
    // the caller's mistake, answered as an error on its line, not a dead process.
    panic::set_hook(Box::new(|_| {}));
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line.expect("reading stdin");
        if line.trim().is_empty() {
            continue;
        }
        let outcome = match serde_json::from_str::<Value>(&line) {
            Err(e) => Err(format!("not JSON: {e}")),
            Ok(request) => panic::catch_unwind(AssertUnwindSafe(|| answer(&request)))
                .unwrap_or_else(|payload| {
                    Err(payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into()))
                }),
        };
        let reply = match outcome {
            Ok(value) => json!({ "ok": value }),
            Err(error) => json!({ "error": error }),
        };
        // A closed stdout means the script is gone: nothing left to answer.
        if writeln!(stdout, "{reply}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return;
        }
    }
}

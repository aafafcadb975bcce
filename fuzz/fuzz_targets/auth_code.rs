//! Fuzz target `auth_code`: keys, registration proofs and payment auth codes of contract v1.
//!
//! For arbitrary master keys, codes, terminals, payment ids, merchants, amounts, currencies,
//! challenges, counters and candidate codes/proofs (raw, or coerced into the contract's grammar so
//! that most inputs reach the HMACs):
//! - no parser or check panics;
//! - the device key, registration proof and auth code equal HMAC-SHA256 computed here, straight
//!   from the contract's text with the `hmac` crate;
//! - verification accepts a candidate exactly when it is 64 hex chars whose bytes are that HMAC;
//! - through `POST /v1/payments/{id}/confirm` on the in-memory world, the answer is exactly what
//!   the contract says for that body: 400 malformed, 422 `stale_counter` outside (last, last+1000],
//!   422 `invalid_auth_code` for a wrong code, 200 for the right one.

#![no_main]

#[path = "../../shared/api/tests/support/mod.rs"]
mod support;

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use support::*;
use twochan_api::routes::{App, Function};
use twochan_domain::{
    Amount, AuthCode, BeaconProof, Challenge, Counter, Currency, MerchantId, PaymentId, TerminalId, UniqueCode,
    crypto::{BeaconStep, MasterKey, PaymentBinding},
};

#[derive(Arbitrary, Debug)]
struct Input {
    master: [u8; 32],
    code: String,
    terminal: String,
    payment_id: String,
    merchant: String,
    amount: u64,
    currency: String,
    challenge: [u8; 16],
    counter: u64,
    counter_text: String,
    candidate: String,
    /// Bit 0: coerce ids into their grammar; bit 1: counter as its decimal text; bits 2–3: the
    /// candidate (0 fuzzed, 1 the right code, 2 the right code with one bit flipped, 3 the right
    /// code in upper case); bit 4: also confirm through the endpoint.
    mode: u8,
    flip: u16,
}

const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const ULID_CHARS: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CURRENCIES: &[&str] = &["USD", "EUR", "KRW", "JPY", "GBP", "BHD", "CLF", "XAU"];

fn coerce(s: &str, alphabet: &[u8], min: usize, max: usize) -> String {
    let mut out: String = s
        .bytes()
        .take(max)
        .map(|b| alphabet[b as usize % alphabet.len()] as char)
        .collect();
    while out.len() < min {
        out.push(alphabet[out.len() % alphabet.len()] as char);
    }
    out
}

fn hmac(key: &[u8], message: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The candidate the input asks for, from the right code `right`.
fn candidate(input: &Input, right: &[u8; 32]) -> String {
    match (input.mode >> 2) & 3 {
        0 => input.candidate.clone(),
        1 => hex::encode(right),
        2 => {
            let mut b = *right;
            b[(input.flip as usize / 8) % 32] ^= 1 << (input.flip % 8);
            hex::encode(b)
        }
        _ => hex::encode_upper(right),
    }
}

/// `Some(bytes)` exactly when `s` is 64 hex chars (either case), decoded by hand.
fn decode_64_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// A decimal u64 without leading zeros, judged as text.
fn canonical_counter(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let canonical = s == "0" || !s.starts_with('0');
    let fits = s.len() < 20 || (s.len() == 20 && s <= "18446744073709551615");
    (digits && canonical && fits).then(|| s.parse().unwrap())
}

fn app() -> &'static App<World, WorldQueue, WorldQueue> {
    static APP: OnceLock<App<World, WorldQueue, WorldQueue>> = OnceLock::new();
    APP.get_or_init(|| World::new().app())
}

fn check_keys_and_codes(input: &Input) {
    let coerced = input.mode & 1 == 1;
    let (code, terminal, pid, merchant, currency, amount) = if coerced {
        let ulid = coerce(&input.payment_id, ULID_CHARS, 25, 25);
        let first = (b'0' + input.payment_id.len() as u8 % 8) as char;
        (
            coerce(&input.code, ID_CHARS, 8, 64),
            coerce(&input.terminal, ID_CHARS, 8, 64),
            format!("pay_{first}{ulid}"),
            coerce(&input.merchant, ID_CHARS, 3, 64),
            CURRENCIES[input.amount as usize % CURRENCIES.len()].to_owned(),
            1 + input.amount % 99_999_999,
        )
    } else {
        (
            input.code.clone(),
            input.terminal.clone(),
            input.payment_id.clone(),
            input.merchant.clone(),
            input.currency.clone(),
            input.amount,
        )
    };
    // Parsers of arbitrary text never panic.
    let parsed = (
        UniqueCode::try_from(code.as_str()),
        TerminalId::try_from(terminal.as_str()),
        PaymentId::try_from(pid.as_str()),
        MerchantId::try_from(merchant.as_str()),
        Currency::try_from(currency.as_str()),
        Amount::try_from(amount),
    );
    let _ = Counter::try_from(input.counter_text.as_str());
    let parsed_candidate = AuthCode::try_from(input.candidate.as_str());
    assert_eq!(
        parsed_candidate.is_ok(),
        decode_64_hex(&input.candidate).is_some(),
        "AuthCode::try_from({:?})",
        input.candidate
    );
    let (Ok(code_v), Ok(terminal_v), Ok(pid_v), Ok(merchant_v), Ok(currency_v), Ok(amount_v)) =
        parsed
    else {
        return;
    };
    let challenge = hex::encode(input.challenge);
    let challenge_v = Challenge::try_from(challenge.clone()).unwrap();

    // Device key.
    let k_dev = hmac(&input.master, &format!("2ch/device-key/v1|{code}"));
    let device_key = MasterKey::from_hex(&hex::encode(input.master))
        .unwrap()
        .device_key(&code_v);
    assert_eq!(device_key.to_hex(), hex::encode(k_dev), "device key");

    // Registration proof, over the server's challenge.
    let proof = hmac(&k_dev, &format!("2ch/register/v2|{code}|{terminal}|{challenge}"));
    assert_eq!(
        device_key.registration_proof(&code_v, &terminal_v, &challenge_v),
        hex::encode(proof)
    );
    let proof_candidate = candidate(input, &proof);
    assert_eq!(
        device_key.verify_registration_proof(&code_v, &terminal_v, &challenge_v, &proof_candidate),
        decode_64_hex(&proof_candidate) == Some(proof),
        "registration proof {proof_candidate:?}"
    );

    // Beacon proof of a step (the counter's low bits make one): the first 8 bytes of the HMAC.
    let step = (input.counter % 100_000_000) as i64;
    let beacon = hmac(&k_dev, &format!("2ch/beacon/v1|{code}|{step}"));
    let beacon_hex = hex::encode(&beacon[..8]);
    assert_eq!(device_key.beacon_proof(&code_v, BeaconStep::of_number(step)), beacon_hex);
    let beacon_candidate: String = candidate(input, &proof).chars().take(16).collect();
    let parsed_beacon = BeaconProof::try_from(beacon_candidate.as_str());
    assert_eq!(
        parsed_beacon.is_ok(),
        beacon_candidate.len() == 16
            && beacon_candidate.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "BeaconProof::try_from({beacon_candidate:?})"
    );
    if let Ok(b) = parsed_beacon {
        assert_eq!(
            device_key.verify_beacon_proof(&code_v, BeaconStep::of_number(step), &b),
            beacon_candidate == beacon_hex,
            "beacon proof {beacon_candidate:?}"
        );
    }

    // Payment auth code.
    let counter = input.counter;
    let message = format!("2ch/pay/v1|{pid}|{merchant}|{amount}|{currency}|{challenge}|{counter}");
    let right = hmac(&k_dev, &message);
    let binding = PaymentBinding {
        payment_id: &pid_v,
        merchant_id: &merchant_v,
        amount: amount_v,
        currency: currency_v,
        challenge: &challenge_v,
        counter: Counter::new(counter),
    };
    assert_eq!(
        device_key.auth_code(&binding),
        hex::encode(right),
        "{message}"
    );
    let text = candidate(input, &right);
    match AuthCode::try_from(text.as_str()) {
        Ok(c) => assert_eq!(
            device_key.verify_auth_code(&binding, &c),
            decode_64_hex(&text) == Some(right),
            "auth code {text:?} for {message}"
        ),
        Err(_) => assert!(decode_64_hex(&text).is_none(), "{text:?} refused"),
    }
    // The right code never verifies for the next counter.
    let next = PaymentBinding {
        counter: Counter::new(counter.wrapping_add(1)),
        ..binding
    };
    assert!(!device_key.verify_auth_code(
        &next,
        &AuthCode::try_from(hex::encode(right).as_str()).unwrap()
    ));
}

fn check_confirm_endpoint(input: &Input) {
    let app = app();
    // Counters near the world's window (LAST_COUNTER, LAST_COUNTER + 1000] most of the time.
    let counter = if input.counter.is_multiple_of(4) {
        input.counter
    } else {
        input.counter % 1100
    };
    let counter_text = if input.mode & 2 != 0 {
        counter.to_string()
    } else {
        input.counter_text.clone()
    };
    let counter_value = canonical_counter(&counter_text);
    let master: [u8; 32] = hex::decode(MASTER_KEY_HEX).unwrap().try_into().unwrap();
    let k_dev = hmac(&master, &format!("2ch/device-key/v1|{CODE}"));
    let right = counter_value.map(|c| {
        hmac(
            &k_dev,
            &format!("2ch/pay/v1|{PAYMENT_ID}|{MERCHANT}|4500|KRW|{CHALLENGE}|{c}"),
        )
    });
    let text = candidate(input, &right.unwrap_or([0; 32]));
    let body = serde_json::json!({"auth_code": text, "counter": counter_text});
    let req = request(
        "POST",
        &format!("/v1/payments/{PAYMENT_ID}/confirm"),
        &[
            (
                "authorization".into(),
                format!("Bearer {TERMINAL_TOKEN}").into_bytes(),
            ),
            ("content-type".into(), b"application/json".to_vec()),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .unwrap();
    app.store.take_writes();
    let resp = run(app, Function::Confirmation, req);
    let code = check_response(&resp).unwrap_or_else(|why| panic!("{why}"));
    let expected = match (decode_64_hex(&text), counter_value) {
        (None, _) | (_, None) => Some("invalid_request"),
        (Some(_), Some(c)) if c <= LAST_COUNTER || c - LAST_COUNTER > 1000 => Some("stale_counter"),
        (Some(given), _) if Some(given) == right => None,
        (Some(_), _) => Some("invalid_auth_code"),
    };
    assert_eq!(
        code.as_deref(),
        expected,
        "confirm {body} -> {}",
        String::from_utf8_lossy(resp.body().as_ref())
    );
    if expected.is_none() {
        assert_eq!(resp.status().as_u16(), 200);
    }
}

fuzz_target!(|input: Input| {
    check_keys_and_codes(&input);
    if input.mode & 16 != 0 {
        check_confirm_endpoint(&input);
    }
});

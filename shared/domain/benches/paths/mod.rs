//! The domain's hot paths, each one operation on a fixed fixture: auth-code and registration-proof
//! verification and the newtype parsers every request goes through.
//!
//! One table serves two measurements: the criterion bench (`benches/crypto.rs`) and the callgrind
//! driver of twochan-api (`shared/api/examples/hot_paths.rs`, through `#[path]`), so a row of
//! `scripts/bench_cpu.sh` times and counts exactly the same code.

#![allow(dead_code)]

use std::hint::black_box;

use twochan_domain::{
    Amount, AuthCode, Challenge, Counter, Currency, MerchantId, PaymentId, TerminalId, UniqueCode,
    crypto::{DeviceKey, IssuerKeys, MasterKey, PaymentBinding, SecretHash},
};

const MASTER: &str = "1111111111111111111111111111111111111111111111111111111111111111";
/// Three older generations, for the rotation case (`IssuerKeys::MAX_GENERATIONS` = 4).
const OLD: [&str; 3] = [
    "2222222222222222222222222222222222222222222222222222222222222222",
    "3333333333333333333333333333333333333333333333333333333333333333",
    "4444444444444444444444444444444444444444444444444444444444444444",
];

pub struct Fixture {
    keys: IssuerKeys,
    keys_4_generations: IssuerKeys,
    device_key: DeviceKey,
    code: UniqueCode,
    terminal: TerminalId,
    payment_id: PaymentId,
    merchant_id: MerchantId,
    challenge: Challenge,
    amount: Amount,
    currency: Currency,
    counter: Counter,
    auth_code: AuthCode,
    wrong_code: AuthCode,
    proof: String,
    /// The raw forms the parsers see in a request body.
    raw_code: &'static str,
    raw_auth_code: String,
    raw_counter: &'static str,
    raw_currency: &'static str,
    raw_amount: u64,
    raw_bearer: &'static str,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let master = MasterKey::from_hex(MASTER).unwrap();
        let code = UniqueCode::try_from("beacon-world-01").unwrap();
        let terminal = TerminalId::try_from("phone-world-01").unwrap();
        let device_key = master.device_key(&code);
        let mut fx = Self {
            keys: master.clone().into(),
            // The device's generation last: a valid code is found only after three misses.
            keys_4_generations: IssuerKeys::parse(&format!("{},{MASTER}", OLD.join(","))).unwrap(),
            proof: device_key.registration_proof(&code, &terminal, &challenge()),
            device_key,
            code,
            terminal,
            payment_id: PaymentId::try_from("pay_01KB1ZQ8RV4T6M2XW9C3HJ5N7P").unwrap(),
            merchant_id: MerchantId::try_from("m_world").unwrap(),
            challenge: Challenge::try_from("000102030405060708090a0b0c0d0e0f".to_owned()).unwrap(),
            amount: Amount::try_from(4500).unwrap(),
            currency: Currency::try_from("KRW").unwrap(),
            counter: Counter::new(8),
            auth_code: AuthCode::try_from("00".repeat(32).as_str()).unwrap(),
            wrong_code: AuthCode::try_from("ab".repeat(32).as_str()).unwrap(),
            raw_code: "beacon-world-01",
            raw_auth_code: String::new(),
            raw_counter: "8",
            raw_currency: "KRW",
            raw_amount: 4500,
            raw_bearer: "tt_fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
        };
        fx.raw_auth_code = fx.device_key.auth_code(&fx.binding());
        fx.auth_code = AuthCode::try_from(fx.raw_auth_code.as_str()).unwrap();
        for (name, f) in PATHS {
            assert_eq!(f(&fx), 1, "{name} does not succeed on its fixture");
        }
        fx
    }

    fn binding(&self) -> PaymentBinding<'_> {
        PaymentBinding {
            payment_id: &self.payment_id,
            merchant_id: &self.merchant_id,
            amount: self.amount,
            currency: self.currency,
            challenge: &self.challenge,
            counter: self.counter,
        }
    }
}

/// An operation on the fixture; answers 1 when it did what the path is about (checked once in
/// [`Fixture::new`]), so that the compiler cannot drop the work.
pub type Op = fn(&Fixture) -> usize;

/// `(name, op)`; a name is `group/function`, as criterion stores it under `target/criterion/`.
pub const PATHS: &[(&str, Op)] = &[
    ("crypto/verify_auth_code", verify_auth_code),
    (
        "crypto/verify_auth_code_4_generations",
        verify_auth_code_4_generations,
    ),
    (
        "crypto/reject_auth_code_4_generations",
        reject_auth_code_4_generations,
    ),
    (
        "crypto/device_key_verify_auth_code",
        device_key_verify_auth_code,
    ),
    (
        "crypto/verify_registration_proof",
        verify_registration_proof,
    ),
    ("crypto/bearer_secret_hash", bearer_secret_hash),
    ("newtype/unique_code", parse_unique_code),
    ("newtype/amount", parse_amount),
    ("newtype/currency", parse_currency),
    ("newtype/counter", parse_counter),
    ("newtype/auth_code", parse_auth_code),
];

/// What confirmation does: derive the device key from the issuer key, HMAC, compare.
fn verify_auth_code(fx: &Fixture) -> usize {
    fx.keys
        .verify_auth_code(&fx.code, &fx.binding(), &fx.auth_code) as usize
}

/// During a key rotation: the device belongs to the oldest of four generations.
fn verify_auth_code_4_generations(fx: &Fixture) -> usize {
    fx.keys_4_generations
        .verify_auth_code(&fx.code, &fx.binding(), &fx.auth_code) as usize
}

/// The worst case: a wrong code tries all four generations.
fn reject_auth_code_4_generations(fx: &Fixture) -> usize {
    !fx.keys_4_generations
        .verify_auth_code(&fx.code, &fx.binding(), &fx.wrong_code) as usize
}

/// The HMAC and compare alone, with the device key already derived.
fn device_key_verify_auth_code(fx: &Fixture) -> usize {
    fx.device_key.verify_auth_code(&fx.binding(), &fx.auth_code) as usize
}

fn verify_registration_proof(fx: &Fixture) -> usize {
    fx.keys
        .verify_registration_proof(&fx.code, &fx.terminal, &challenge(), &fx.proof) as usize
}

/// A registration challenge, fixed so runs compare.
fn challenge() -> Challenge {
    Challenge::try_from("00112233445566778899aabbccddeeff").unwrap()
}

/// Every authenticated request hashes its bearer secret (SHA-256) before the lookup.
fn bearer_secret_hash(fx: &Fixture) -> usize {
    (SecretHash::of(black_box(fx.raw_bearer)).as_str().len() == 64) as usize
}

fn parse_unique_code(fx: &Fixture) -> usize {
    UniqueCode::try_from(black_box(fx.raw_code)).is_ok() as usize
}

fn parse_amount(fx: &Fixture) -> usize {
    Amount::try_from(black_box(fx.raw_amount)).is_ok() as usize
}

fn parse_currency(fx: &Fixture) -> usize {
    Currency::try_from(black_box(fx.raw_currency)).is_ok() as usize
}

fn parse_counter(fx: &Fixture) -> usize {
    Counter::try_from(black_box(fx.raw_counter)).is_ok() as usize
}

fn parse_auth_code(fx: &Fixture) -> usize {
    AuthCode::try_from(black_box(fx.raw_auth_code.as_str())).is_ok() as usize
}

//! Contract v1 test vectors (a copy of the contract's `vectors.json`) reproduced exactly.

use serde_json::Value;
use twochan_domain::{
    AuthCode, Challenge, Counter, Currency, MerchantId, PaymentId, TerminalId, UniqueCode,
    crypto::{DeviceKey, MasterKey, PaymentBinding},
};

fn vectors() -> Vec<Value> {
    let raw = include_str!("data/contract-v1-vectors.json");
    let doc: Value = serde_json::from_str(raw).expect("vectors.json parses");
    doc["vectors"].as_array().expect("vectors array").clone()
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn device_key(v: &Value) -> DeviceKey {
    let mut k = [0u8; 32];
    hex::decode_to_slice(str_of(v, "device_key"), &mut k).unwrap();
    DeviceKey::from_bytes(k)
}

#[test]
fn every_kind_is_covered() {
    let vs = vectors();
    for k in ["device_key", "registration_proof", "auth_code"] {
        assert!(vs.iter().any(|v| v["kind"] == k), "no {k} vector");
    }
}

#[test]
fn device_keys() {
    let mut n = 0;
    for v in vectors().iter().filter(|v| v["kind"] == "device_key") {
        let master = MasterKey::from_hex(str_of(v, "issuer_master_key")).unwrap();
        let code = UniqueCode::try_from(str_of(v, "unique_code")).unwrap();
        assert_eq!(master.device_key(&code).to_hex(), str_of(v, "device_key"));
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn registration_proofs() {
    let mut n = 0;
    for v in vectors()
        .iter()
        .filter(|v| v["kind"] == "registration_proof")
    {
        let key = device_key(v);
        let code = UniqueCode::try_from(str_of(v, "unique_code")).unwrap();
        let terminal = TerminalId::try_from(str_of(v, "terminal_id")).unwrap();
        let proof = str_of(v, "registration_proof");
        assert_eq!(key.registration_proof(&code, &terminal), proof);
        assert!(key.verify_registration_proof(&code, &terminal, proof));
        // One flipped nibble must not verify.
        let flipped: String = proof
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 10 {
                    if c == '0' { '1' } else { '0' }
                } else {
                    c
                }
            })
            .collect();
        assert!(!key.verify_registration_proof(&code, &terminal, &flipped));
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn auth_codes() {
    let mut n = 0;
    for v in vectors().iter().filter(|v| v["kind"] == "auth_code") {
        let key = device_key(v);
        let payment_id = PaymentId::try_from(str_of(v, "payment_id")).unwrap();
        let merchant_id = MerchantId::try_from(str_of(v, "merchant_id")).unwrap();
        let challenge = Challenge::try_from(str_of(v, "challenge").to_owned()).unwrap();
        let binding = PaymentBinding {
            payment_id: &payment_id,
            merchant_id: &merchant_id,
            amount: v["amount"].as_u64().unwrap().try_into().unwrap(),
            currency: Currency::try_from(str_of(v, "currency")).unwrap(),
            challenge: &challenge,
            counter: Counter::try_from(str_of(v, "counter")).unwrap(),
        };
        let expected = str_of(v, "auth_code");
        assert_eq!(key.auth_code(&binding), expected);
        assert!(key.verify_auth_code(&binding, &AuthCode::try_from(expected).unwrap()));
        // The code binds every field: change the counter and it no longer verifies.
        let other = PaymentBinding {
            counter: Counter::new(binding.counter.get().wrapping_sub(1)),
            ..binding
        };
        assert!(!key.verify_auth_code(&other, &AuthCode::try_from(expected).unwrap()));
        n += 1;
    }
    assert_eq!(n, 3);
}

//! The contract's test vectors (a copy of its `vectors.json`, revision 2) reproduced exactly:
//! every kind in the file has a test here, and `every_kind_is_covered` fails on a kind without one.

use serde_json::Value;
use twochan_domain::{
    AuthCode, BeaconProof, Challenge, Counter, Currency, MerchantId, PaymentId, TerminalId,
    Timestamp, UniqueCode,
    crypto::{BeaconStep, DeviceKey, IssuerKeys, MasterKey, PaymentBinding, webhook_signature},
};

fn vectors() -> Vec<Value> {
    let raw = include_str!("data/contract-vectors.json");
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
    const TESTED: [&str; 5] = [
        "device_key",
        "registration_proof",
        "auth_code",
        "beacon_proof",
        "webhook_signature",
    ];
    let vs = vectors();
    for k in TESTED {
        assert!(vs.iter().any(|v| v["kind"] == k), "no {k} vector");
    }
    for v in &vs {
        let kind = str_of(v, "kind");
        assert!(TESTED.contains(&kind), "vector kind {kind} has no test");
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
        let challenge = Challenge::try_from(str_of(v, "challenge")).unwrap();
        let proof = str_of(v, "registration_proof");
        assert_eq!(key.registration_proof(&code, &terminal, &challenge), proof);
        assert!(key.verify_registration_proof(&code, &terminal, &challenge, proof));
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
        assert!(!key.verify_registration_proof(&code, &terminal, &challenge, &flipped));
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

#[test]
fn beacon_proofs() {
    let mut n = 0;
    for v in vectors().iter().filter(|v| v["kind"] == "beacon_proof") {
        let key = device_key(v);
        let code = UniqueCode::try_from(str_of(v, "unique_code")).unwrap();
        let at = Timestamp::from_millis(v["unix_seconds"].as_i64().unwrap() * 1000);
        let step = BeaconStep::at(at);
        assert_eq!(step.number(), v["step"].as_i64().unwrap());
        let expected = str_of(v, "beacon_proof");
        assert_eq!(key.beacon_proof(&code, step), expected);
        let proof = BeaconProof::try_from(expected).unwrap();
        assert!(key.verify_beacon_proof(&code, step, &proof));
        assert!(!key.verify_beacon_proof(&code, BeaconStep::of_number(step.number() + 1), &proof));
        n += 1;
    }
    assert_eq!(n, 3);
    // Through the issuer key: the device-key vector's master key makes beacon-0001's device key.
    let master = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let keys = IssuerKeys::from(MasterKey::from_hex(master).unwrap());
    let code = UniqueCode::try_from("beacon-0001").unwrap();
    let proof = BeaconProof::try_from("c34fe4c32701ac39").unwrap();
    let heard = 1_764_216_306;
    for (now, accepted) in [
        (heard, true),
        (heard + 60, true),
        (heard - 30, true),
        (heard + 90, false),
    ] {
        assert_eq!(
            keys.verify_beacon_proof(&code, &proof, Timestamp::from_millis(now * 1000)),
            accepted,
            "{now}"
        );
    }
}

#[test]
fn webhook_signatures() {
    let mut n = 0;
    for v in vectors()
        .iter()
        .filter(|v| v["kind"] == "webhook_signature")
    {
        let t = v["t"].as_i64().unwrap();
        let body = str_of(v, "body");
        assert_eq!(format!("{t}.{body}"), str_of(v, "signed_payload"));
        assert_eq!(
            webhook_signature(str_of(v, "secret"), t, body.as_bytes()),
            str_of(v, "header")
        );
        n += 1;
    }
    assert_eq!(n, 2);
}

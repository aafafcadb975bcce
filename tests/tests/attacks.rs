//! Attacks over HTTP against the local stack. Each one compares the state it could corrupt (the
//! payment, its device, its ledger entries, the merchant's balance) before and after, besides the
//! answer. More attacks live beside the rules they break: a sniffed beacon registered without the
//! device (`registration.rs`), a code for one payment used on another and five wrong codes on one
//! payment (`confirmation.rs`), reading another merchant's payment (`payments.rs`).

use crate::common::{Harness, assert_error};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use twochan_aws::keys;
use twochan_domain::{
    PaymentId, Timestamp, UniqueCode,
    payment::{DEVICE_LOCKOUT_SECONDS, DEVICE_MAX_FAILURES},
    ports::Devices,
};
use twochan_tools::{Device, Phone, Pos, unique_id};

/// Everything a confirmation, cancel or decline may touch, minus the wrong-attempt counters
/// (counting a wrong code is the point of those): the payment (with its journal legs) and its
/// device.
async fn money_state(ctx: &Harness, payment: &Value) -> Vec<String> {
    let id = PaymentId::try_from(payment["payment_id"].as_str().unwrap()).unwrap();
    let code = payment["unique_code"].as_str().unwrap();
    let mut out = Vec::new();
    for pk in [keys::payment_pk(&id), keys::device_pk(code)] {
        for item in ctx.items_of(&pk).await {
            let mut kv: Vec<String> = item
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "failed_attempts" | "failed_auth" | "locked_until"
                    )
                })
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            kv.sort();
            out.push(kv.join(","));
        }
    }
    out
}

async fn balance(pos: &Pos) -> Value {
    pos.balance().await.unwrap().json
}

/// A code that really came from the device, but for another payment, amount, merchant, currency
/// or challenge: every variation is refused and nothing moves.
#[tokio::test]
async fn a_genuine_code_bound_to_anything_else_is_refused() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (mut device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 500).await;
    let id = p["payment_id"].as_str().unwrap();
    let before = money_state(&ctx, &p).await;
    let counter = device.counter() + 1;
    let variants: [(&str, Value); 5] = [
        ("payment_id", json!("pay_01KB1ZQ8RV4T6M2XW9C3HJ5N7P")),
        ("amount", json!(501)),
        ("merchant_id", json!(format!("{}-x", pos.merchant_id))),
        ("currency", json!("USD")),
        ("challenge", json!("0".repeat(32))),
    ];
    // Four of them: the fifth wrong code would fail the payment (tested elsewhere).
    for (field, value) in variants.iter().take(4) {
        let mut forged = p.clone();
        forged[*field] = value.clone();
        let code = device.auth_code_for(&forged, counter);
        let r = phone
            .confirm(id, &code, &counter.to_string())
            .await
            .unwrap();
        assert_error(&r, 422, "invalid_auth_code");
    }
    assert_eq!(
        money_state(&ctx, &p).await,
        before,
        "a refused code moved state"
    );
    // The genuine binding still works: the counter was not consumed by the forgeries.
    let (code, counter) = device.authorize(&p);
    assert_eq!(
        phone.confirm(id, &code, &counter).await.unwrap().status,
        200
    );
}

/// A code captured from one confirmation and replayed: on the same payment it is only the exact
/// repeat (200, nothing twice); on the device's next payment its counter is stale.
#[tokio::test]
async fn a_captured_code_cannot_pay_twice() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (mut device, phone) = ctx.paired().await;
    let p1 = ctx.pending_payment(&pos, &device, 700).await;
    let id1 = p1["payment_id"].as_str().unwrap();
    let (code, counter) = device.authorize(&p1);
    assert_eq!(
        phone.confirm(id1, &code, &counter).await.unwrap().status,
        200
    );
    let r = pos
        .wait_for_status(id1, "settled", std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.json["status"], "settled");
    let settled = balance(&pos).await;

    // Same payment: the exact repeat answers 200 and settles nothing again.
    assert_eq!(
        phone.confirm(id1, &code, &counter).await.unwrap().status,
        200
    );
    // The next payment, same amount: the captured code (and its counter) is refused.
    let p2 = ctx.pending_payment(&pos, &device, 700).await;
    let id2 = p2["payment_id"].as_str().unwrap();
    let before = money_state(&ctx, &p2).await;
    assert_error(
        &phone.confirm(id2, &code, &counter).await.unwrap(),
        422,
        "stale_counter",
    );
    // Rewound counters and a jump past the window are refused the same way.
    for c in [0, counter.parse::<u64>().unwrap() - 1]
        .into_iter()
        .chain([counter.parse::<u64>().unwrap() + twochan_domain::Counter::WINDOW + 1])
    {
        let code = device.auth_code_for(&p2, c);
        assert_error(
            &phone.confirm(id2, &code, &c.to_string()).await.unwrap(),
            422,
            "stale_counter",
        );
    }
    assert_eq!(money_state(&ctx, &p2).await, before);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(balance(&pos).await, settled, "a replay settled again");
}

/// Brute force spread over many payments of one device: after DEVICE_MAX_FAILURES wrong codes in
/// a row the device is locked; even its right code is refused (429 with Retry-After) and nothing
/// moves; when the lock lapses, the right code works and the count starts again.
#[tokio::test]
async fn wrong_codes_spread_over_payments_lock_the_device() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (mut device, phone) = ctx.paired().await;
    let mut failures = 0;
    let mut last = None;
    // Four wrong codes per payment (one short of failing it), then the POS cancels and retries.
    while failures < DEVICE_MAX_FAILURES {
        let p = ctx.pending_payment(&pos, &device, 100).await;
        let id = p["payment_id"].as_str().unwrap().to_owned();
        for _ in 0..4 {
            if failures == DEVICE_MAX_FAILURES {
                break;
            }
            let r = phone.confirm(&id, &"ab".repeat(32), "1").await.unwrap();
            assert_error(&r, 422, "invalid_auth_code");
            failures += 1;
        }
        if failures < DEVICE_MAX_FAILURES {
            assert_eq!(pos.cancel(&id).await.unwrap().status, 200);
        }
        last = Some(p);
    }
    let p = last.unwrap();
    let id = p["payment_id"].as_str().unwrap();
    let before = money_state(&ctx, &p).await;
    let (code, counter) = device.authorize(&p);
    let r = phone.confirm(id, &code, &counter).await.unwrap();
    assert_error(&r, 429, "too_many_attempts");
    let retry_after: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (DEVICE_LOCKOUT_SECONDS - 60..=DEVICE_LOCKOUT_SECONDS).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(
        money_state(&ctx, &p).await,
        before,
        "a locked device moved state"
    );
    // A wrong code while locked is refused the same way, and counts nothing.
    let r = phone.confirm(id, &"cd".repeat(32), &counter).await.unwrap();
    assert_error(&r, 429, "too_many_attempts");
    // Registering the device again does not lift the lock: it belongs to the device.
    let mut phone = phone;
    assert_eq!(phone.register(&device).await.unwrap().status, 200);
    assert_error(
        &phone.confirm(id, &code, &counter).await.unwrap(),
        429,
        "too_many_attempts",
    );

    // Time passes: the lock lapses (moved into the past here rather than waited for).
    let code_id = p["unique_code"].as_str().unwrap();
    ctx.dynamodb
        .update_item()
        .table_name(&ctx.table)
        .key("pk", AttributeValue::S(keys::device_pk(code_id)))
        .key("sk", AttributeValue::S(keys::SK_DEVICE.into()))
        .update_expression("SET locked_until = :past")
        .expression_attribute_values(
            ":past",
            AttributeValue::N((Timestamp::now().millis() - 1).to_string()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        phone.confirm(id, &code, &counter).await.unwrap().status,
        200
    );
    let stored = ctx
        .store
        .device(&UniqueCode::try_from(code_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.failed_auth, 0,
        "an accepted confirmation resets the count"
    );
}

/// Another merchant or another phone acting on a payment: 404, as if it did not exist, and
/// nothing moves.
#[tokio::test]
async fn strangers_cannot_read_or_act_on_a_payment() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let intruder_pos = ctx.pos().await;
    let (mut device, _phone) = ctx.paired().await;
    let (_, intruder_phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 300).await;
    let id = p["payment_id"].as_str().unwrap();
    let before = money_state(&ctx, &p).await;
    let (code, counter) = device.authorize(&p);
    for r in [
        intruder_pos.payment(id).await.unwrap(),
        intruder_pos.cancel(id).await.unwrap(),
        intruder_phone.payment(id).await.unwrap(),
        intruder_phone.confirm(id, &code, &counter).await.unwrap(),
        intruder_phone.decline(id).await.unwrap(),
    ] {
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(money_state(&ctx, &p).await, before);
    assert_eq!(
        intruder_phone.pending().await.unwrap().json["payments"],
        json!([])
    );
}

/// A token revoked by re-registration or deregistration authenticates nothing any more.
#[tokio::test]
async fn revoked_tokens_are_refused() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let device: Device = ctx.device();
    let mut phone: Phone = ctx.phone();
    assert_eq!(phone.register(&device).await.unwrap().status, 201);
    let mut old = Phone {
        token: phone.token.clone(),
        ..ctx.phone()
    };
    // Same terminal again: a new token, the old one revoked.
    assert_eq!(phone.register(&device).await.unwrap().status, 200);
    let p = ctx.pending_payment(&pos, &device, 200).await;
    let id = p["payment_id"].as_str().unwrap();
    let before = money_state(&ctx, &p).await;
    let code = device.auth_code_for(&p, device.counter() + 1);
    for r in [
        old.pending().await.unwrap(),
        old.payment(id).await.unwrap(),
        old.confirm(id, &code, &(device.counter() + 1).to_string())
            .await
            .unwrap(),
        old.decline(id).await.unwrap(),
        old.deregister(device.code()).await.unwrap(),
    ] {
        assert_error(&r, 401, "unauthorized");
    }
    assert_eq!(money_state(&ctx, &p).await, before);
    // Deregistration revokes the current token too.
    assert_eq!(phone.deregister(device.code()).await.unwrap().status, 204);
    assert_error(&phone.pending().await.unwrap(), 401, "unauthorized");
}

/// Everything of a victim's device and terminal an attacker could change: the device item, its
/// tokens and the terminal's holding.
async fn victim_state(ctx: &Harness, device: &Device, phone: &Phone) -> Vec<String> {
    let mut out = Vec::new();
    for pk in [
        keys::device_pk(device.code()),
        keys::terminal_pk(&phone.terminal_id),
    ] {
        for item in ctx.items_of(&pk).await {
            let mut kv: Vec<String> = item.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            kv.sort();
            out.push(kv.join(","));
        }
    }
    out
}

/// Revision 2, hole 1: a POS that is not near the device, with the code it heard once (or was
/// told) and even the proof it heard then, cannot ask it for payments, keep it busy or flood its
/// phone. Revision 1 took `{unique_code, amount, currency, pos_id}` and answered 201.
#[tokio::test]
async fn a_pos_far_from_the_device_cannot_ask_it_for_a_payment() {
    let ctx = Harness::new().await;
    let (device, phone) = ctx.paired().await;
    let far = ctx.pos().await;
    let heard_long_ago =
        device.beacon_at(Timestamp::from_millis(Timestamp::now().millis() - 120_000));
    let before = victim_state(&ctx, &device, &phone).await;
    for _ in 0..5 {
        let r = far
            .request_payment(
                &heard_long_ago,
                99_000,
                "KRW",
                Some("gift card"),
                &unique_id("k-"),
            )
            .await
            .unwrap();
        assert_error(&r, 422, "invalid_beacon_proof");
    }
    let revision_1 = json!({"unique_code": device.code(), "amount": 99_000, "currency": "KRW", "pos_id": "far-pos"});
    let r = far
        .api
        .call(
            reqwest::Method::POST,
            "/v1/payments",
            twochan_tools::Call {
                bearer: Some(&far.api_key),
                idempotency_key: Some("k-rev1"),
                body: Some(revision_1),
            },
        )
        .await
        .unwrap();
    assert_error(&r, 400, "invalid_request");
    assert_eq!(victim_state(&ctx, &device, &phone).await, before);
    let pending = phone.pending().await.unwrap();
    assert_eq!(pending.json["payments"], json!([]));
    // The POS at the counter, which hears the beacon now, is not kept waiting.
    let near = ctx.pos().await;
    let p = near
        .request_payment(&device.beacon(), 4_500, "KRW", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_eq!(p.status, 201, "{}", p.json);
}

/// Revision 2, hole 2: a phone that owns a genuine device cannot register it under another
/// phone's `terminal_id` and so act for that phone (list its payments, decline them, lock or
/// deregister its device). Revision 1 answered 201 with a token of the victim's terminal.
#[tokio::test]
async fn a_phone_cannot_take_over_another_phones_terminal() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (victim_device, victim) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &victim_device, 1_200).await;
    let before = victim_state(&ctx, &victim_device, &victim).await;
    let payment_before = money_state(&ctx, &p).await;
    let own_device = ctx.device();
    let mut mallory = Phone::new(ctx.api.clone(), &victim.terminal_id);
    let r = mallory.register(&own_device).await.unwrap();
    assert_error(&r, 409, "terminal_id_taken");
    assert!(mallory.token.is_none());
    // With the token of a terminal of her own, it is still the victim's terminal.
    let (_, own_phone) = ctx.paired().await;
    mallory.token = own_phone.token.clone();
    let r = mallory.register(&own_device).await.unwrap();
    assert_error(&r, 409, "terminal_id_taken");
    assert!(own_phone.pending().await.unwrap().json["payments"] == json!([]));
    assert_eq!(victim_state(&ctx, &victim_device, &victim).await, before);
    assert_eq!(money_state(&ctx, &p).await, payment_before);
    let listed = victim.pending().await.unwrap();
    assert_eq!(listed.json["payments"][0]["payment_id"], p["payment_id"]);
}

/// Revision 2, hole 3: a recorded registration request, replayed, neither registers nor revokes
/// the real phone's token. Revision 1's proof never changed, so the replay got a fresh token and
/// revoked the phone's.
#[tokio::test]
async fn a_recorded_registration_cannot_be_replayed() {
    let ctx = Harness::new().await;
    let device = ctx.device();
    let mut phone = ctx.phone();
    let r = phone.challenge(device.code()).await.unwrap();
    let challenge = r.json["challenge"].as_str().unwrap().to_owned();
    let proof = device.registration_proof(&phone.terminal_id, &challenge);
    let recorded = json!({"unique_code": device.code(), "terminal_id": phone.terminal_id,
                          "challenge": challenge, "registration_proof": proof});
    let r = phone
        .register_with(device.code(), &challenge, &proof)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    let before = victim_state(&ctx, &device, &phone).await;
    // The recording as it was, and with a fresh challenge the attacker asked for.
    let attacker = Phone::new(ctx.api.clone(), &phone.terminal_id);
    let fresh = attacker.challenge(device.code()).await.unwrap().json["challenge"]
        .as_str()
        .unwrap()
        .to_owned();
    for challenge in [challenge.as_str(), fresh.as_str()] {
        let mut body = recorded.clone();
        body["challenge"] = json!(challenge);
        let call = twochan_tools::Call {
            body: Some(body),
            ..Default::default()
        };
        let r = ctx
            .api
            .call(reqwest::Method::POST, "/v1/devices", call)
            .await
            .unwrap();
        assert_error(&r, 422, "invalid_registration_proof");
    }
    assert!(attacker.token.is_none());
    assert_eq!(victim_state(&ctx, &device, &phone).await, before);
    assert_eq!(phone.pending().await.unwrap().status, 200);
}

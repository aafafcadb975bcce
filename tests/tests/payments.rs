//! The POS side: `POST /v1/payments`, `GET /v1/payments/{id}`, cancel, balance.

use crate::common::{Harness, assert_error};
use reqwest::Method;
use serde_json::json;
use twochan_api::routes::{App, Function, NoQueue, handle};
use twochan_aws::{DynamoStore, SqsEventQueue, failpoints::Probe};
use twochan_domain::{
    Amount, Currency, IdempotencyKey, MerchantId, Payment, PaymentId, PaymentSlot, PosId,
    TerminalId, Timestamp, UniqueCode,
    crypto::BeaconStep,
    ports::{Devices, Payments, Write},
};
use twochan_tools::{Beacon, Call, unique_id};

const PAYMENT_FIELDS: [&str; 14] = [
    "payment_id",
    "status",
    "unique_code",
    "merchant_id",
    "pos_id",
    "amount",
    "currency",
    "reference",
    "challenge",
    "created_at",
    "expires_at",
    "confirmed_at",
    "settled_at",
    "refunded_amount",
];

#[tokio::test]
async fn a_payment_request_creates_a_pending_payment() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let r = pos
        .request_payment(
            &device.beacon(),
            450,
            "KRW",
            Some("order #1"),
            &unique_id("k-"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    let p = &r.json;
    let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = PAYMENT_FIELDS.to_vec();
    expected.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, expected);
    let id = p["payment_id"].as_str().unwrap();
    assert!(
        id.starts_with("pay_")
            && id.len() == 30
            && id[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
        "{id}"
    );
    assert_eq!(p["status"], "pending");
    assert_eq!(p["unique_code"], device.code());
    assert_eq!(p["merchant_id"], pos.merchant_id.as_str());
    assert_eq!(p["pos_id"], "pos-01");
    assert_eq!(p["amount"], 450);
    assert_eq!(p["currency"], "KRW");
    assert_eq!(p["reference"], "order #1");
    let challenge = p["challenge"].as_str().unwrap();
    assert!(
        challenge.len() == 32
            && challenge
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert!(p["confirmed_at"].is_null() && p["settled_at"].is_null());
    let created = p["created_at"].as_str().unwrap();
    let expires = p["expires_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && expires.ends_with('Z') && expires > created);
    let ttl: i64 = ctx
        .stack
        .get("PENDING_TTL_SECONDS")
        .unwrap_or("120")
        .parse()
        .unwrap();
    let secs = |t: &str| -> i64 {
        let (h, m, s) = (&t[11..13], &t[14..16], &t[17..19]);
        h.parse::<i64>().unwrap() * 3600
            + m.parse::<i64>().unwrap() * 60
            + s.parse::<i64>().unwrap()
    };
    assert_eq!((secs(expires) - secs(created)).rem_euclid(86_400), ttl);
    // Without a reference the field is null.
    let (d2, _) = ctx.paired().await;
    let r = pos
        .request_payment(&d2.beacon(), 1, "USD", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert!(r.json["reference"].is_null());
}

#[tokio::test]
async fn an_unregistered_code_is_unknown_device() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let r = pos
        .request_payment(&ctx.device().beacon(), 100, "EUR", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_error(&r, 404, "unknown_device");
}

#[tokio::test]
async fn one_pending_payment_per_code() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let other_pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    ctx.pending_payment(&pos, &device, 100).await;
    let r = pos
        .request_payment(&device.beacon(), 200, "KRW", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_error(&r, 409, "device_busy");
    // Also for another merchant: the lock belongs to the code.
    let r = other_pos
        .request_payment(&device.beacon(), 200, "KRW", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_error(&r, 409, "device_busy");
}

#[tokio::test]
async fn an_expired_pending_payment_frees_the_code_inside_the_write() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let first = ctx.pending_payment(&pos, &device, 100).await;
    ctx.backdate(&first).await;
    let second = ctx.pending_payment(&pos, &device, 200).await;
    assert_ne!(first["payment_id"], second["payment_id"]);
    let r = pos
        .payment(first["payment_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.json["status"], "expired");
}

#[tokio::test]
async fn idempotent_replay_mismatch_and_key_rules() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let key = unique_id("order-");
    let first = pos
        .request_payment(&device.beacon(), 700, "KRW", Some("r"), &key)
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    assert!(first.header("idempotent-replayed").is_none());
    let again = pos
        .request_payment(&device.beacon(), 700, "KRW", Some("r"), &key)
        .await
        .unwrap();
    assert_eq!(again.status, 201, "{}", again.json);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json, first.json);
    // Same key, different body.
    let other = pos
        .request_payment(&device.beacon(), 701, "KRW", Some("r"), &key)
        .await
        .unwrap();
    assert_error(&other, 422, "idempotency_key_reused");
    // Keys are scoped to the merchant: another merchant's same key is a new request (here: busy).
    let other_merchant = ctx.pos().await;
    let r = other_merchant
        .request_payment(&device.beacon(), 700, "KRW", Some("r"), &key)
        .await
        .unwrap();
    assert_error(&r, 409, "device_busy");
    // An error answer is replayed too.
    let busy_key = unique_id("busy-");
    let b1 = pos
        .request_payment(&device.beacon(), 5, "KRW", None, &busy_key)
        .await
        .unwrap();
    assert_error(&b1, 409, "device_busy");
    let b2 = pos
        .request_payment(&device.beacon(), 5, "KRW", None, &busy_key)
        .await
        .unwrap();
    assert_error(&b2, 409, "device_busy");
    assert_eq!(b2.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn idempotency_key_header_is_required_and_checked() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let body = json!({"unique_code": device.code(), "beacon_proof": device.beacon().proof, "amount": 10, "currency": "KRW", "pos_id": "pos-01"});
    let call = |key: Option<&'static str>| Call {
        bearer: Some(&pos.api_key),
        idempotency_key: key,
        body: Some(body.clone()),
    };
    let r = ctx
        .api
        .call(Method::POST, "/v1/payments", call(None))
        .await
        .unwrap();
    assert_error(&r, 400, "invalid_request");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    let long: &'static str = Box::leak("k".repeat(256).into_boxed_str());
    let r = ctx
        .api
        .call(Method::POST, "/v1/payments", call(Some(long)))
        .await
        .unwrap();
    assert_error(&r, 400, "invalid_request");
    // Nothing was created by the refused requests.
    let r = ctx
        .api
        .call(Method::POST, "/v1/payments", call(Some("fine-key")))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
}

#[tokio::test]
async fn malformed_payment_requests_are_400_naming_the_field_and_change_nothing() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let code = device.code();
    let base = json!({"unique_code": code, "beacon_proof": device.beacon().proof, "amount": 100, "currency": "KRW", "pos_id": "pos-01"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (with("amount", json!(0)), "amount"),
        (with("amount", json!(100_000_000)), "amount"),
        (with("amount", json!(-5)), "amount"),
        (with("amount", json!(4.5)), "amount"),
        (with("amount", json!("450")), "amount"),
        (without("amount"), "amount"),
        (with("currency", json!("usd")), "currency"),
        (with("currency", json!("ABC")), "currency"),
        (with("currency", json!("US")), "currency"),
        (without("currency"), "currency"),
        (with("pos_id", json!("p")), "pos_id"),
        (without("pos_id"), "pos_id"),
        (with("unique_code", json!("bad code!")), "unique_code"),
        (with("reference", json!("x".repeat(129))), "reference"),
        (with("reference", json!(12)), "reference"),
        (with("surprise", json!(1)), "surprise"),
    ];
    for (body, field) in cases {
        let call = Call {
            bearer: Some(&pos.api_key),
            idempotency_key: Some("k1"),
            body: Some(body.clone()),
        };
        let r = ctx
            .api
            .call(Method::POST, "/v1/payments", call)
            .await
            .unwrap();
        assert_error(&r, 400, "invalid_request");
        let msg = r.json["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{msg:?} should name {field} ({body})");
    }
    // The device is still free (nothing was created) and the key k1 was never consumed.
    let r = pos
        .request_payment(&device.beacon(), 100, "KRW", None, "k1")
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
}

#[tokio::test]
async fn authentication_rules() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let body = json!({"unique_code": device.code(), "beacon_proof": device.beacon().proof, "amount": 10, "currency": "KRW", "pos_id": "pos-01"});
    for bearer in [
        None,
        Some("mk_unknown"),
        Some("garbage"),
        Some(phone.token.as_deref().unwrap()),
    ] {
        let call = Call {
            bearer,
            idempotency_key: Some("k"),
            body: Some(body.clone()),
        };
        let r = ctx
            .api
            .call(Method::POST, "/v1/payments", call)
            .await
            .unwrap();
        assert_error(&r, 401, "unauthorized");
        let r = ctx
            .api
            .call(
                Method::GET,
                "/v1/balance",
                Call {
                    bearer,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_error(&r, 401, "unauthorized");
    }
    // A wrong scheme.
    let r = ctx
        .api
        .raw()
        .get(format!("{}/v1/balance", ctx.api.base_url()))
        .header("authorization", format!("Basic {}", pos.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn reading_payments_is_limited_to_its_merchant_and_terminal() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let stranger_pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let (_, stranger_phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 300).await;
    let id = p["payment_id"].as_str().unwrap();
    let by_pos = pos.payment(id).await.unwrap();
    assert_eq!(by_pos.status, 200);
    assert_eq!(by_pos.json, p);
    let by_phone = phone.payment(id).await.unwrap();
    assert_eq!(by_phone.status, 200);
    assert_eq!(by_phone.json, p);
    assert_error(&stranger_pos.payment(id).await.unwrap(), 404, "not_found");
    assert_error(&stranger_phone.payment(id).await.unwrap(), 404, "not_found");
    assert_error(
        &pos.payment("pay_01JD8Y2Z5K7M9Q1R3T5V7X9ZAB").await.unwrap(),
        404,
        "not_found",
    );
    assert_error(
        &pos.payment("not-a-payment-id").await.unwrap(),
        404,
        "not_found",
    );
    let anonymous = ctx
        .api
        .call(Method::GET, &format!("/v1/payments/{id}"), Call::default())
        .await
        .unwrap();
    assert_error(&anonymous, 401, "unauthorized");
    // Acting on it is limited too.
    assert_error(&stranger_pos.cancel(id).await.unwrap(), 404, "not_found");
    assert_error(&stranger_phone.decline(id).await.unwrap(), 404, "not_found");
    assert_eq!(pos.payment(id).await.unwrap().json["status"], "pending");
}

#[tokio::test]
async fn cancel_only_from_pending() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 300).await;
    let id = p["payment_id"].as_str().unwrap();
    let r = pos.cancel(id).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["status"], "canceled");
    assert_error(&pos.cancel(id).await.unwrap(), 409, "payment_not_pending");
    assert_error(
        &phone.decline(id).await.unwrap(),
        409,
        "payment_not_pending",
    );
    // Cancel freed the code.
    ctx.pending_payment(&pos, &device, 301).await;
    // A phone bearer cannot cancel.
    let r = ctx
        .api
        .call(
            Method::POST,
            &format!("/v1/payments/{id}/cancel"),
            Call {
                bearer: phone.token.as_deref(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_error(&r, 401, "unauthorized");
}

#[tokio::test]
async fn balance_starts_empty() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let r = pos.balance().await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json,
        json!({"merchant_id": pos.merchant_id, "balances": []})
    );
}

/// A request that took its device's lock and has not stored its payment yet is in flight: a
/// retry with its key is told so. Once its lease is over it died, and the retry finishes its work
/// under the same payment id.
#[tokio::test]
async fn a_key_held_by_a_request_in_flight_is_409_then_finished_by_the_retry() {
    use twochan_domain::{
        Amount, Currency, IdempotencyKey, MerchantId, Payment, PaymentId, PaymentSlot, PosId,
        TerminalId, Timestamp, UniqueCode,
        ports::{Devices, Payments},
    };
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let key = unique_id("inflight-");
    let merchant = MerchantId::try_from(pos.merchant_id.as_str()).unwrap();
    let slot = PaymentSlot::of(&merchant, &IdempotencyKey::try_from(key.as_str()).unwrap());
    let code = UniqueCode::try_from(device.code()).unwrap();
    let held_since = |ago_ms: i64| {
        Payment::new(
            PaymentId::in_slot(
                Timestamp::from_millis(Timestamp::now().millis() - ago_ms),
                &slot,
            ),
            code.clone(),
            TerminalId::try_from(phone.terminal_id.as_str()).unwrap(),
            merchant.clone(),
            PosId::try_from("pos-1").unwrap(),
            Amount::try_from(10).unwrap(),
            Currency::try_from("KRW").unwrap(),
            None,
            300,
        )
    };
    // The first request locked the device a moment ago and is still running.
    let first = held_since(0);
    let seen = ctx.store.device(&code).await.unwrap().unwrap();
    ctx.store.lock_device(&first, &seen).await.unwrap();
    let r = pos
        .request_payment(&device.beacon(), 10, "KRW", None, &key)
        .await
        .unwrap();
    assert_error(&r, 409, "idempotency_key_in_use");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        ctx.store.slot(&slot).await.unwrap().is_none(),
        "nothing stored"
    );
    // The same, but its lock is older than any live request: the retry completes it.
    ctx.store
        .release_lock(&code, &first.payment_id)
        .await
        .unwrap();
    let died = held_since(20_000);
    let seen = ctx.store.device(&code).await.unwrap().unwrap();
    ctx.store.lock_device(&died, &seen).await.unwrap();
    let r = pos
        .request_payment(&device.beacon(), 10, "KRW", None, &key)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["payment_id"], died.payment_id.as_str());
    assert_eq!(r.json["status"], "pending");
    assert_eq!(
        pos.payment(died.payment_id.as_str()).await.unwrap().json,
        r.json
    );
}

#[tokio::test]
async fn every_endpoint_refuses_oversized_bodies_and_anonymous_callers() {
    let ctx = Harness::new().await;
    let big = "x".repeat(8 * 1024 + 1);
    let id = "pay_01JD8Y2Z5K7M9Q1R3T5V7X9ZAB";
    let routes = [
        (Method::POST, "/v1/devices".to_owned(), false),
        (Method::DELETE, "/v1/devices/beacon-0001".to_owned(), true),
        (Method::POST, "/v1/payments".to_owned(), true),
        (Method::GET, format!("/v1/payments/{id}"), true),
        (Method::POST, format!("/v1/payments/{id}/cancel"), true),
        (Method::GET, "/v1/balance".to_owned(), true),
        (Method::GET, "/v1/pending-payments".to_owned(), true),
        (Method::POST, format!("/v1/payments/{id}/confirm"), true),
        (Method::POST, format!("/v1/payments/{id}/decline"), true),
    ];
    for (method, path, needs_bearer) in routes {
        let url = format!("{}{path}", ctx.api.base_url());
        let send = |body: String| {
            ctx.api
                .raw()
                .request(method.clone(), &url)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let r = send(big.clone()).await.unwrap();
        assert_eq!(r.status(), 413, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "payload_too_large",
            "{method} {path}"
        );
        if needs_bearer {
            let r = send("{}".to_owned()).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
        }
    }
}

/// The beacon proof over HTTP: the accepted middle of the window (its edges, with an injected
/// clock, are unit tests of `IssuerKeys::verify_beacon_proof`), a stale or future proof, another
/// code's, none or a malformed one. A refused proof does not use the key up.
#[tokio::test]
async fn only_a_current_beacon_proof_of_the_device_may_ask() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let (other, _) = ctx.paired().await;
    // Keep clear of a step boundary, so "now" is the same step for the test and the server.
    let into_step = Timestamp::now().seconds().rem_euclid(BeaconStep::SECONDS);
    if into_step > BeaconStep::SECONDS - 8 {
        tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    }
    let now = BeaconStep::at(Timestamp::now()).number();
    let of_step = |offset: i64| device.beacon_of_step(BeaconStep::of_number(now + offset));
    let key = unique_id("k-");
    for (beacon, why) in [
        (of_step(-3), "three steps ago"),
        (of_step(2), "two steps ahead"),
        (
            Beacon::heard(device.code(), &other.beacon().proof),
            "another code's proof",
        ),
    ] {
        let r = pos
            .request_payment(&beacon, 100, "KRW", None, &key)
            .await
            .unwrap();
        assert_error(&r, 422, "invalid_beacon_proof");
        assert!(r.header("idempotent-replayed").is_none(), "{why}");
    }
    for proof in ["", "C34FE4C32701AC39", "c34fe4c3", "zz4fe4c32701ac39"] {
        let r = pos
            .request_payment(&Beacon::heard(device.code(), proof), 100, "KRW", None, &key)
            .await
            .unwrap();
        assert_error(&r, 400, "invalid_request");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("beacon_proof")
        );
    }
    let missing =
        json!({"unique_code": device.code(), "amount": 100, "currency": "KRW", "pos_id": "pos-01"});
    let r = ctx
        .api
        .call(
            Method::POST,
            "/v1/payments",
            Call {
                bearer: Some(&pos.api_key),
                idempotency_key: Some(&key),
                body: Some(missing),
            },
        )
        .await
        .unwrap();
    assert_error(&r, 400, "invalid_request");
    // Nothing was locked or kept: the device is free and the key unused.
    let r = pos
        .request_payment(&of_step(-1), 100, "KRW", None, &key)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(
        pos.cancel(r.json["payment_id"].as_str().unwrap())
            .await
            .unwrap()
            .status,
        200
    );
    for offset in [-2, 0, 1] {
        let r = pos
            .request_payment(&of_step(offset), 100, "KRW", None, &unique_id("k-"))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "step now{offset:+}: {}", r.json);
        assert_eq!(
            pos.cancel(r.json["payment_id"].as_str().unwrap())
                .await
                .unwrap()
                .status,
            200
        );
    }
}

/// A caller without a current proof learns nothing about a code, registered or not.
#[tokio::test]
async fn the_beacon_proof_comes_before_the_registration() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (registered, _) = ctx.paired().await;
    let unregistered = ctx.device();
    for device in [&registered, &unregistered] {
        let stale = device.beacon_at(Timestamp::from_millis(Timestamp::now().millis() - 120_000));
        let r = pos
            .request_payment(&stale, 100, "KRW", None, &unique_id("k-"))
            .await
            .unwrap();
        assert_error(&r, 422, "invalid_beacon_proof");
    }
    let r = pos
        .request_payment(&unregistered.beacon(), 100, "KRW", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_error(&r, 404, "unknown_device");
}

/// A POS that retries after its proof aged out gets its answer again: the replay is not checked
/// against the beacon, and a newer proof is the same request.
#[tokio::test]
async fn an_idempotent_replay_outlives_its_beacon_proof() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let key = unique_id("k-");
    let first = pos
        .request_payment(&device.beacon(), 321, "KRW", Some("r-1"), &key)
        .await
        .unwrap();
    assert_eq!(first.status, 201, "{}", first.json);
    let aged = device.beacon_at(Timestamp::from_millis(Timestamp::now().millis() - 600_000));
    let newer = device.beacon_at(Timestamp::from_millis(Timestamp::now().millis() + 30_000));
    for beacon in [aged, newer] {
        let r = pos
            .request_payment(&beacon, 321, "KRW", Some("r-1"), &key)
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
        assert_eq!(r.json, first.json);
    }
    // The same key with another body is still refused, proof or not.
    let aged = device.beacon_at(Timestamp::from_millis(Timestamp::now().millis() - 600_000));
    let r = pos
        .request_payment(&aged, 322, "KRW", Some("r-1"), &key)
        .await
        .unwrap();
    assert_error(&r, 422, "idempotency_key_reused");
}

/// Revision 2: currencies that are not money, and text that can disguise itself, are 400.
#[tokio::test]
async fn not_money_and_disguised_text_are_refused() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    for currency in [
        "XAU", "XDR", "CLF", "USN", "XBA", "HRK", "SLL", "CUC", "XTS",
    ] {
        let r = pos
            .request_payment(&device.beacon(), 100, currency, None, &unique_id("k-"))
            .await
            .unwrap();
        assert_error(&r, 400, "invalid_request");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("currency")
        );
    }
    for reference in [
        "latte\u{202E}gnp.exe",
        "zero\u{200B}width",
        "two\u{2028}lines",
        "private\u{E000}",
    ] {
        let r = pos
            .request_payment(
                &device.beacon(),
                100,
                "KRW",
                Some(reference),
                &unique_id("k-"),
            )
            .await
            .unwrap();
        assert_error(&r, 400, "invalid_request");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("reference")
        );
    }
    let r = pos
        .request_payment(
            &device.beacon(),
            100,
            "KRW",
            Some("Table 4 · café ☕ 주문"),
            &unique_id("k-"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
}

/// Two locks of one terminal's devices may name one payment slot (a lock a replay left behind on
/// another device); a third device's payment between them in id order must not make the phone's
/// list ask for that slot twice (BatchGetItem refuses repeated keys: a 500).
#[tokio::test]
async fn pending_payments_survive_two_locks_on_one_slot() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (d1, mut phone) = ctx.paired().await;
    let (d2, d3) = (ctx.device(), ctx.device());
    for d in [&d2, &d3] {
        assert_eq!(phone.register(d).await.unwrap().status, 201);
    }
    let key = unique_id("k-");
    let p1 = pos
        .request_payment(&d1.beacon(), 11, "KRW", None, &key)
        .await
        .unwrap();
    assert_eq!(p1.status, 201, "{}", p1.json);
    let p3 = pos
        .request_payment(&d3.beacon(), 33, "KRW", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_eq!(p3.status, 201, "{}", p3.json);
    // d2 locked, later, by a payment of p1's slot that was never stored.
    let merchant = MerchantId::try_from(pos.merchant_id.as_str()).unwrap();
    let slot = PaymentSlot::of(&merchant, &IdempotencyKey::try_from(key.as_str()).unwrap());
    let code2 = UniqueCode::try_from(d2.code()).unwrap();
    let seen = ctx.store.device(&code2).await.unwrap().unwrap();
    let stray = Payment::new(
        PaymentId::in_slot(Timestamp::now(), &slot),
        code2,
        TerminalId::try_from(phone.terminal_id.as_str()).unwrap(),
        merchant,
        PosId::try_from("pos-01").unwrap(),
        Amount::try_from(22).unwrap(),
        Currency::try_from("KRW").unwrap(),
        None,
        120,
    );
    assert_eq!(
        ctx.store.lock_device(&stray, &seen).await.unwrap(),
        Write::Applied
    );
    let r = phone.pending().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    let ids: Vec<&str> = r.json["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payment_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            p1.json["payment_id"].as_str().unwrap(),
            p3.json["payment_id"].as_str().unwrap()
        ]
    );
}

/// A payment request whose payment write fails, and whose read of the slot then fails too,
/// answers 503 and gives its fresh lock back: the code is free for the next request.
#[tokio::test]
async fn a_503_leaves_the_code_free() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    // Calls: BatchGetItem (caller and device), UpdateItem (lock), PutItem (payment), GetItem
    // (slot), TransactWriteItems (release). The payment write and the slot read fail.
    let probe = Probe::failing([2, 3]);
    let clients = probe.clients(&ctx.config);
    let app = App {
        store: DynamoStore::new(clients.dynamodb, ctx.table.clone()),
        queue: NoQueue,
        issuer_keys: ctx.master.clone().into(),
        pending_ttl_seconds: 120,
        events: SqsEventQueue::new(clients.sqs.clone(), ctx.var("WEBHOOK_QUEUE_URL")),
        allow_loopback_webhooks: true,
    };
    let beacon = device.beacon();
    let body = json!({"unique_code": beacon.code, "beacon_proof": beacon.proof, "amount": 10,
                      "currency": "KRW", "pos_id": "pos-01"});
    let req = crate::common::request(
        "POST",
        "/v1/payments",
        &pos.api_key,
        &[("idempotency-key", "k-503")],
        Some(&body),
    );
    let (status, answer) =
        crate::common::answer(&handle(&app, Function::PaymentRequest, req).await);
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        probe.calls(),
        [
            "DynamoDB.BatchGetItem",
            "DynamoDB.UpdateItem",
            "DynamoDB.PutItem",
            "DynamoDB.GetItem",
            "DynamoDB.TransactWriteItems"
        ]
    );
    let code = UniqueCode::try_from(device.code()).unwrap();
    assert!(
        ctx.store
            .device(&code)
            .await
            .unwrap()
            .unwrap()
            .pending
            .is_none()
    );
    let r = pos
        .request_payment(&device.beacon(), 10, "KRW", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    // The failed request's retry is a request of its own, not a replay of a 409.
    let r = pos
        .request_payment(&device.beacon(), 10, "KRW", None, "k-503")
        .await
        .unwrap();
    assert_error(&r, 409, "device_busy");
}

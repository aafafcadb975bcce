//! The phone side: pending payments, confirm (auth code, counter, attempts, expiry), decline.

use std::time::Duration;

use crate::common::{Harness, assert_error};
use reqwest::Method;
use serde_json::json;
use twochan_tools::Call;

#[tokio::test]
async fn pending_payments_lists_this_terminals_unexpired_payments_oldest_first() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let mut phone = ctx.phone();
    let d1 = ctx.device();
    let d2 = ctx.device();
    let d3 = ctx.device();
    assert_eq!(phone.register(&d1).await.unwrap().status, 201);
    assert_eq!(phone.register(&d2).await.unwrap().status, 201);
    assert_eq!(phone.register(&d3).await.unwrap().status, 201);
    let (other_device, _) = ctx.paired().await;
    let p1 = ctx.pending_payment(&pos, &d1, 10).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let p2 = ctx.pending_payment(&pos, &d2, 20).await;
    let p3 = ctx.pending_payment(&pos, &d3, 30).await;
    ctx.pending_payment(&pos, &other_device, 40).await;
    ctx.backdate(&p3).await;
    let r = phone.pending().await.unwrap();
    assert_eq!(r.status, 200);
    let ids: Vec<&str> = r.json["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payment_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            p1["payment_id"].as_str().unwrap(),
            p2["payment_id"].as_str().unwrap()
        ]
    );
    assert_eq!(r.json["payments"][0], p1);
    // Merchants have no such list.
    let r = ctx
        .api
        .call(
            Method::GET,
            "/v1/pending-payments",
            Call {
                bearer: Some(&pos.api_key),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_error(&r, 401, "unauthorized");
}

#[tokio::test]
async fn confirm_then_settle_and_the_exact_repeat_is_200() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (mut device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 4321).await;
    let id = p["payment_id"].as_str().unwrap();
    let (code, counter) = device.authorize(&p);
    let r = phone.confirm(id, &code, &counter).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["status"], "confirmed");
    assert!(r.json["confirmed_at"].as_str().is_some());
    // The code is free for the next payment at once.
    let next = ctx.pending_payment(&pos, &device, 1).await;
    pos.cancel(next["payment_id"].as_str().unwrap())
        .await
        .unwrap();

    let settled = pos
        .wait_for_status(id, "settled", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(settled.json["status"], "settled", "{}", settled.json);
    assert!(settled.json["settled_at"].as_str().is_some());
    assert_eq!(pos.settled("KRW").await.unwrap(), (4321, 1));

    let again = phone.confirm(id, &code, &counter).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.json);
    assert_eq!(again.json["status"], "settled");
    // Not the same confirmation: 409.
    let other = device.auth_code_for(&p, 2);
    assert_error(
        &phone.confirm(id, &other, "2").await.unwrap(),
        409,
        "payment_not_pending",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pos.settled("KRW").await.unwrap(),
        (4321, 1),
        "the repeat settled nothing twice"
    );
}

#[tokio::test]
async fn counter_window_and_persistence_across_registrations() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (mut device, mut phone) = ctx.paired().await;

    // Counter 0 is never above the initial last counter 0.
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap();
    assert_error(
        &phone
            .confirm(id, &device.auth_code_for(&p, 0), "0")
            .await
            .unwrap(),
        422,
        "stale_counter",
    );
    // More than 1000 above: refused. Exactly 1000 above: accepted.
    assert_error(
        &phone
            .confirm(id, &device.auth_code_for(&p, 1001), "1001")
            .await
            .unwrap(),
        422,
        "stale_counter",
    );
    assert_eq!(
        phone
            .confirm(id, &device.auth_code_for(&p, 1000), "1000")
            .await
            .unwrap()
            .status,
        200
    );
    device.set_counter(1000);

    // The same counter again on a new payment: stale. The next one: fine.
    let p = ctx.pending_payment(&pos, &device, 11).await;
    let id = p["payment_id"].as_str().unwrap();
    assert_error(
        &phone
            .confirm(id, &device.auth_code_for(&p, 1000), "1000")
            .await
            .unwrap(),
        422,
        "stale_counter",
    );
    assert_error(
        &phone
            .confirm(id, &device.auth_code_for(&p, 999), "999")
            .await
            .unwrap(),
        422,
        "stale_counter",
    );
    // Stale counters did not count as wrong codes, and the payment is still pending.
    assert_eq!(pos.payment(id).await.unwrap().json["status"], "pending");

    // Deregister and register again: the device keeps its counter.
    pos.cancel(id).await.unwrap();
    assert_eq!(phone.deregister(device.code()).await.unwrap().status, 204);
    assert_eq!(phone.register(&device).await.unwrap().status, 201);
    let p = ctx.pending_payment(&pos, &device, 12).await;
    let id = p["payment_id"].as_str().unwrap();
    assert_error(
        &phone
            .confirm(id, &device.auth_code_for(&p, 5), "5")
            .await
            .unwrap(),
        422,
        "stale_counter",
    );
    let (code, counter) = device.authorize(&p);
    assert_eq!(counter, "1001");
    assert_eq!(
        phone.confirm(id, &code, &counter).await.unwrap().status,
        200
    );
}

#[tokio::test]
async fn malformed_confirmations_are_400() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap();
    let code = device.auth_code_for(&p, 1);
    let cases = [
        (json!({"auth_code": code, "counter": 1}), "counter"),
        (json!({"auth_code": code, "counter": "01"}), "counter"),
        (json!({"auth_code": code, "counter": "-1"}), "counter"),
        (
            json!({"auth_code": code, "counter": "18446744073709551616"}),
            "counter",
        ),
        (json!({"auth_code": code, "counter": ""}), "counter"),
        (json!({"auth_code": code}), "counter"),
        (json!({"counter": "1"}), "auth_code"),
        (json!({"auth_code": "xyz", "counter": "1"}), "auth_code"),
        (
            json!({"auth_code": code, "counter": "1", "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let call = Call {
            bearer: phone.token.as_deref(),
            body: Some(body.clone()),
            ..Default::default()
        };
        let r = ctx
            .api
            .call(Method::POST, &format!("/v1/payments/{id}/confirm"), call)
            .await
            .unwrap();
        assert_error(&r, 400, "invalid_request");
        assert!(
            r.json["error"]["message"].as_str().unwrap().contains(field),
            "{} for {body}",
            r.json
        );
    }
    let r = ctx
        .api
        .raw()
        .post(format!("{}/v1/payments/{id}/confirm", ctx.api.base_url()))
        .bearer_auth(phone.token.as_deref().unwrap())
        .header("content-type", "text/plain")
        .body(format!("{{\"auth_code\":\"{code}\",\"counter\":\"1\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // After all that the genuine confirmation works: nothing was consumed.
    assert_eq!(phone.confirm(id, &code, "1").await.unwrap().status, 200);
}

#[tokio::test]
async fn five_wrong_codes_fail_the_payment() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap();
    let good = device.auth_code_for(&p, 1);
    // Codes bound to something else: another amount, counter, payment.
    let mut other = p.clone();
    other["amount"] = json!(11);
    let wrong = [
        device.auth_code_for(&other, 1),
        device.auth_code_for(&p, 2),
        "0".repeat(64),
        "f".repeat(64),
    ];
    for w in &wrong {
        assert_error(
            &phone.confirm(id, w, "1").await.unwrap(),
            422,
            "invalid_auth_code",
        );
    }
    assert_eq!(pos.payment(id).await.unwrap().json["status"], "pending");
    assert_error(
        &phone.confirm(id, &"1".repeat(64), "1").await.unwrap(),
        429,
        "too_many_attempts",
    );
    assert_eq!(pos.payment(id).await.unwrap().json["status"], "failed");
    // Even the right code is refused now, and the code is free for a new payment.
    assert_error(
        &phone.confirm(id, &good, "1").await.unwrap(),
        429,
        "too_many_attempts",
    );
    ctx.pending_payment(&pos, &device, 12).await;
}

#[tokio::test]
async fn a_code_for_one_payment_does_not_confirm_another() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let p1 = ctx.pending_payment(&pos, &device, 10).await;
    let code1 = device.auth_code_for(&p1, 1);
    pos.cancel(p1["payment_id"].as_str().unwrap())
        .await
        .unwrap();
    let p2 = ctx.pending_payment(&pos, &device, 10).await;
    let r = phone
        .confirm(p2["payment_id"].as_str().unwrap(), &code1, "1")
        .await
        .unwrap();
    assert_error(&r, 422, "invalid_auth_code");
}

#[tokio::test]
async fn confirming_after_expiry_is_410_and_records_expired() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap();
    ctx.backdate(&p).await;
    let (code, counter) = (device.auth_code_for(&p, 1), "1");
    assert_error(
        &phone.confirm(id, &code, counter).await.unwrap(),
        410,
        "payment_expired",
    );
    assert_eq!(pos.payment(id).await.unwrap().json["status"], "expired");
    assert_error(
        &phone.confirm(id, &code, counter).await.unwrap(),
        410,
        "payment_expired",
    );
    assert_error(
        &phone.decline(id).await.unwrap(),
        409,
        "payment_not_pending",
    );
    assert_error(&pos.cancel(id).await.unwrap(), 409, "payment_not_pending");
    // The counter did not move: counter 1 works on the next payment.
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let r = phone
        .confirm(
            p["payment_id"].as_str().unwrap(),
            &device.auth_code_for(&p, 1),
            "1",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
}

#[tokio::test]
async fn decline_only_from_pending_and_only_by_its_terminal() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap();
    let r = ctx
        .api
        .call(
            Method::POST,
            &format!("/v1/payments/{id}/decline"),
            Call {
                bearer: Some(&pos.api_key),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_error(&r, 401, "unauthorized");
    let r = phone.decline(id).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["status"], "declined");
    assert_error(
        &phone.decline(id).await.unwrap(),
        409,
        "payment_not_pending",
    );
    let code = device.auth_code_for(&p, 1);
    assert_error(
        &phone.confirm(id, &code, "1").await.unwrap(),
        409,
        "payment_not_pending",
    );
    assert_error(
        &phone
            .decline("pay_01JD8Y2Z5K7M9Q1R3T5V7X9ZAB")
            .await
            .unwrap(),
        404,
        "not_found",
    );
}

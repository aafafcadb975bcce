//! `POST /v1/devices/challenges`, `POST /v1/devices` and `DELETE /v1/devices/{unique_code}` over
//! HTTP on the local stack.

use crate::common::{Harness, assert_error};
use futures_util::future::join_all;
use serde_json::json;
use twochan_aws::keys;
use twochan_domain::{
    Timestamp, UniqueCode,
    ports::{Devices, RegistrationChallenge},
};
use twochan_tools::{Phone, unique_id};

/// A fresh challenge for `code`, as a phone asks for it.
async fn challenge(phone: &Phone, code: &str) -> String {
    let r = phone.challenge(code).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["unique_code"], code);
    r.json["challenge"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_challenge_serves_one_registration_of_its_own_code_before_it_expires() {
    let ctx = Harness::new().await;
    let device = ctx.device();
    let mut phone = ctx.phone();
    let r = phone.challenge(device.code()).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    let c = r.json["challenge"].as_str().unwrap().to_owned();
    assert!(
        c.len() == 32
            && c.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let expires = r.json["expires_at"].as_str().unwrap();
    let now = Timestamp::now().seconds();
    let in_two_minutes = Timestamp::from_millis((now + 120) * 1000).to_rfc3339();
    let in_two_minutes_before = Timestamp::from_millis((now + 118) * 1000).to_rfc3339();
    assert!(
        (in_two_minutes_before.as_str()..=in_two_minutes.as_str()).contains(&expires),
        "{expires}"
    );

    // A wrong proof (the revision-1 message, without the challenge) does not use it up.
    let v1 = device.revision1_registration_proof(&phone.terminal_id);
    let r = phone.register_with(device.code(), &c, &v1).await.unwrap();
    assert_error(&r, 422, "invalid_registration_proof");
    let proof = device.registration_proof(&phone.terminal_id, &c);
    let r = phone
        .register_with(device.code(), &c, &proof)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    let token = phone.token.clone();

    // Used: the same request again (a recording of it) is refused, and the token stands.
    let mut replayer = Phone::new(ctx.api.clone(), &phone.terminal_id);
    let r = replayer
        .register_with(device.code(), &c, &proof)
        .await
        .unwrap();
    assert_error(&r, 422, "invalid_registration_proof");
    assert_eq!(phone.token, token);
    assert_eq!(phone.pending().await.unwrap().status, 200);

    // Another code's challenge, with a proof the other device really made for it.
    let other = ctx.device();
    let c_other = challenge(&phone, device.code()).await;
    let mut stranger = ctx.phone();
    let proof = other.registration_proof(&stranger.terminal_id, &c_other);
    let r = stranger
        .register_with(other.code(), &c_other, &proof)
        .await
        .unwrap();
    assert_error(&r, 422, "invalid_registration_proof");

    // An unknown challenge, and an expired one.
    let unknown = "0123456789abcdef0123456789abcdef";
    let proof = other.registration_proof(&stranger.terminal_id, unknown);
    let r = stranger
        .register_with(other.code(), unknown, &proof)
        .await
        .unwrap();
    assert_error(&r, 422, "invalid_registration_proof");
    let issued_long_ago = RegistrationChallenge::issue(
        UniqueCode::try_from(other.code()).unwrap(),
        Timestamp::from_millis(Timestamp::now().millis() - 121_000),
    );
    ctx.store.put_challenge(&issued_long_ago).await.unwrap();
    let expired = issued_long_ago.challenge.as_str();
    let proof = other.registration_proof(&stranger.terminal_id, expired);
    let r = stranger
        .register_with(other.code(), expired, &proof)
        .await
        .unwrap();
    assert_error(&r, 422, "invalid_registration_proof");
    assert!(
        ctx.items_of(&keys::device_pk(other.code()))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn registrations_racing_with_one_challenge_give_at_most_one_success() {
    let ctx = Harness::new().await;
    let device = ctx.device();
    let asker = ctx.phone();
    let c = challenge(&asker, device.code()).await;
    // Sixteen phones with the device's genuine proof for their own terminal, all at once.
    let phones: Vec<Phone> = (0..16).map(|_| ctx.phone()).collect();
    let answers = join_all(phones.into_iter().map(|mut phone| {
        let proof = device.registration_proof(&phone.terminal_id, &c);
        let (code, c) = (device.code().to_owned(), c.clone());
        async move { phone.register_with(&code, &c, &proof).await.unwrap() }
    }))
    .await;
    let won: Vec<_> = answers.iter().filter(|r| r.status.is_success()).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in answers.iter().filter(|r| !r.status.is_success()) {
        assert_error(r, 422, "invalid_registration_proof");
    }
    let device_item = &ctx.items_of(&keys::device_pk(device.code())).await[0];
    assert_eq!(
        device_item["terminal_id"].as_s().unwrap(),
        won[0].json["terminal_id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_terminal_that_holds_a_device_belongs_to_its_phone() {
    let ctx = Harness::new().await;
    let (first, mut owner) = ctx.paired().await;
    let second = ctx.device();
    // Without a token: taken.
    let mut anonymous = Phone::new(ctx.api.clone(), &owner.terminal_id);
    let r = anonymous.register(&second).await.unwrap();
    assert_error(&r, 409, "terminal_id_taken");
    // With a current token of another terminal: taken.
    let (_, other) = ctx.paired().await;
    let mut borrowed = Phone::new(ctx.api.clone(), &owner.terminal_id);
    borrowed.token = other.token.clone();
    let r = borrowed.register(&second).await.unwrap();
    assert_error(&r, 409, "terminal_id_taken");
    // An unknown or malformed bearer: 401 (a merchant key is not a terminal's).
    for bad in ["tt_nope", "garbage", "mk_0000"] {
        let mut forged = Phone::new(ctx.api.clone(), &owner.terminal_id);
        forged.token = Some(bad.into());
        let r = forged.register(&second).await.unwrap();
        assert_error(&r, 401, "unauthorized");
    }
    assert!(
        ctx.items_of(&keys::device_pk(second.code()))
            .await
            .is_empty()
    );
    // The same device again without a token is free only while it is the terminal's only one.
    let mut again = Phone::new(ctx.api.clone(), &owner.terminal_id);
    assert_eq!(again.register(&first).await.unwrap().status, 200);
    owner.token = again.token.clone();
    // The owner, with its token: a second device.
    let r = owner.register(&second).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    let mut anonymous = Phone::new(ctx.api.clone(), &owner.terminal_id);
    assert_error(
        &anonymous.register(&first).await.unwrap(),
        409,
        "terminal_id_taken",
    );
    // Deregistered both: the terminal is free for anyone again.
    assert_eq!(owner.deregister(first.code()).await.unwrap().status, 204);
    assert_eq!(owner.deregister(second.code()).await.unwrap().status, 204);
    let mut newcomer = Phone::new(ctx.api.clone(), &owner.terminal_id);
    assert_eq!(newcomer.register(&second).await.unwrap().status, 201);
}

#[tokio::test]
async fn registers_a_device_with_its_proof() {
    let ctx = Harness::new().await;
    let device = ctx.device();
    let mut phone = ctx.phone();
    let r = phone.register(&device).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["unique_code"], device.code());
    assert_eq!(r.json["terminal_id"], phone.terminal_id.as_str());
    assert!(
        r.json["terminal_token"]
            .as_str()
            .is_some_and(|t| t.len() > 32)
    );
    let at = r.json["registered_at"].as_str().unwrap();
    assert!(at.len() == 20 && at.ends_with('Z'), "{at}");
    // The token works: the phone can list its (empty) pending payments.
    let p = phone.pending().await.unwrap();
    assert_eq!(p.status, 200);
    assert_eq!(p.json, json!({"payments": []}));
}

#[tokio::test]
async fn same_terminal_again_gets_200_and_a_new_token_revoking_the_old() {
    let ctx = Harness::new().await;
    let (device, mut phone) = ctx.paired().await;
    let old = phone.token.clone().unwrap();
    let r = phone.register(&device).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    let new = phone.token.clone().unwrap();
    assert_ne!(old, new);
    let mut stale = phone.clone();
    stale.token = Some(old);
    assert_error(&stale.pending().await.unwrap(), 401, "unauthorized");
    assert_eq!(phone.pending().await.unwrap().status, 200);
}

#[tokio::test]
async fn another_terminal_cannot_take_a_registered_code() {
    let ctx = Harness::new().await;
    let (device, _) = ctx.paired().await;
    let mut mallory = ctx.phone();
    assert_error(
        &mallory.register(&device).await.unwrap(),
        409,
        "device_already_registered",
    );
    assert!(mallory.token.is_none());
}

#[tokio::test]
async fn a_sniffed_beacon_without_the_device_is_refused_and_changes_nothing() {
    let ctx = Harness::new().await;
    let device = ctx.device();
    let mut mallory = ctx.phone();
    let before = ctx.items_of(&keys::device_pk(device.code())).await;
    // A proof made for another terminal, a made-up proof, and garbage, each on a fresh challenge.
    for bad in ["other-terminal", "zeros", "nope", ""] {
        let c = mallory.challenge(device.code()).await.unwrap();
        assert_eq!(c.status, 201, "{}", c.json);
        let challenge = c.json["challenge"].as_str().unwrap();
        let proof = match bad {
            "other-terminal" => device.registration_proof("someone-else-01", challenge),
            "zeros" => "0".repeat(64),
            garbage => garbage.to_owned(),
        };
        let r = mallory
            .register_with(device.code(), challenge, &proof)
            .await
            .unwrap();
        assert_error(&r, 422, "invalid_registration_proof");
    }
    assert_eq!(ctx.items_of(&keys::device_pk(device.code())).await, before);
    // The genuine owner can still register it.
    let mut owner = ctx.phone();
    assert_eq!(owner.register(&device).await.unwrap().status, 201);
}

#[tokio::test]
async fn malformed_registrations_are_400_naming_the_field() {
    let ctx = Harness::new().await;
    let device = ctx.device();
    let terminal = unique_id("phone-");
    let challenge = "00112233445566778899aabbccddeeff";
    let proof = device.registration_proof(&terminal, challenge);
    let cases = [
        (
            json!({"terminal_id": terminal, "challenge": challenge, "registration_proof": proof}),
            "unique_code",
        ),
        (
            json!({"unique_code": "short", "terminal_id": terminal, "challenge": challenge, "registration_proof": proof}),
            "unique_code",
        ),
        (
            json!({"unique_code": "has space in it", "terminal_id": terminal, "challenge": challenge, "registration_proof": proof}),
            "unique_code",
        ),
        (
            json!({"unique_code": device.code(), "terminal_id": "x", "challenge": challenge, "registration_proof": proof}),
            "terminal_id",
        ),
        (
            json!({"unique_code": device.code(), "terminal_id": terminal, "challenge": challenge}),
            "registration_proof",
        ),
        (
            json!({"unique_code": device.code(), "terminal_id": terminal, "challenge": challenge, "registration_proof": 5}),
            "registration_proof",
        ),
        (
            json!({"unique_code": device.code(), "terminal_id": terminal, "challenge": challenge, "registration_proof": proof, "admin": true}),
            "admin",
        ),
        (
            json!({"unique_code": device.code(), "terminal_id": terminal, "registration_proof": proof}),
            "challenge",
        ),
        (
            json!({"unique_code": device.code(), "terminal_id": terminal, "challenge": "00112233445566778899AABBCCDDEEFF", "registration_proof": proof}),
            "challenge",
        ),
    ];
    for (body, field) in cases {
        let r = ctx
            .api
            .call(
                reqwest::Method::POST,
                "/v1/devices",
                twochan_tools::Call {
                    body: Some(body.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_error(&r, 400, "invalid_request");
        let msg = r.json["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(field),
            "message {msg:?} should name {field} for {body}"
        );
    }
    assert!(
        ctx.items_of(&keys::device_pk(device.code()))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn body_rules_413_415_400() {
    let ctx = Harness::new().await;
    let url = format!("{}/v1/devices", ctx.api.base_url());
    let http = ctx.api.raw();
    let send = |ct: Option<&'static str>, body: Vec<u8>| {
        let mut req = http.post(&url).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let big = format!("{{\"unique_code\":\"{}\"}}", "a".repeat(9000)).into_bytes();
    let r = send(Some("application/json"), big).await.unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = send(ct, b"{}".to_vec()).await.unwrap();
        assert_eq!(r.status(), 415, "{ct:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    for bad in [&b"{"[..], b"[]", b"null", b"", b"{\"unique_code\": }"] {
        let r = send(Some("application/json; charset=utf-8"), bad.to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{:?}", String::from_utf8_lossy(bad));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}

#[tokio::test]
async fn deregistration_frees_the_code_revokes_the_token_and_cancels_the_pending_payment() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, mut phone) = ctx.paired().await;
    let payment = ctx.pending_payment(&pos, &device, 1200).await;
    let pid = payment["payment_id"].as_str().unwrap();

    let r = phone.deregister(device.code()).await.unwrap();
    assert_eq!(r.status, 204, "{}", r.json);
    assert_eq!(r.json, serde_json::Value::Null);

    assert_error(&phone.pending().await.unwrap(), 401, "unauthorized");
    assert_eq!(pos.payment(pid).await.unwrap().json["status"], "canceled");
    // The code is free: a payment request now finds no device, and another phone may register it.
    let r = pos
        .request_payment(&device.beacon(), 10, "KRW", None, &unique_id("k-"))
        .await
        .unwrap();
    assert_error(&r, 404, "unknown_device");
    let mut next = ctx.phone();
    assert_eq!(next.register(&device).await.unwrap().status, 201);
}

#[tokio::test]
async fn only_the_owning_terminal_may_deregister() {
    let ctx = Harness::new().await;
    let (device, mut owner) = ctx.paired().await;
    let (_, mut other) = ctx.paired().await;
    assert_error(
        &other.deregister(device.code()).await.unwrap(),
        404,
        "not_found",
    );
    let mut anonymous = ctx.phone();
    assert_error(
        &anonymous.deregister(device.code()).await.unwrap(),
        401,
        "unauthorized",
    );
    assert_error(
        &owner.deregister("never-registered-code").await.unwrap(),
        404,
        "not_found",
    );
    assert_eq!(owner.deregister(device.code()).await.unwrap().status, 204);
    // Gone: a second delete by the same (now revoked) token is unauthenticated.
    assert_error(
        &owner.deregister(device.code()).await.unwrap(),
        401,
        "unauthorized",
    );
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let ctx = Harness::new().await;
    for path in ["/v1/nothing", "/v2/payments", "/v1/devices/a/b"] {
        let r = ctx
            .api
            .call(reqwest::Method::GET, path, Default::default())
            .await
            .unwrap();
        assert_error(&r, 404, "not_found");
    }
}

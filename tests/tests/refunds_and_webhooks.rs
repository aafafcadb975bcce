//! Revision 2, part 2, over HTTP on the local stack: refunds (the cap under concurrency, the
//! idempotency rules, the ledger and balances) and webhooks, with a real receiver in this process
//! on loopback (`twochan_tools::receiver`, the demo's): every event type arrives signed, once per change after deduplication by id,
//! retried with the same id, dead-lettered when never accepted, and only to its own merchant.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{Harness, assert_error};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use twochan_tools::{
    Call, Device, Phone, Pos,
    receiver::{Answer, ReceivedEvent, Receiver},
    unique_id,
};

/// The receivers of one test's merchants: the POS side of webhooks, in this process.
struct Hooks(Receiver);

impl Hooks {
    async fn start(answer: Answer) -> Hooks {
        Hooks(Receiver::answering(answer).await.unwrap())
    }

    fn url(&self) -> &str {
        &self.0.url
    }

    /// Registers this receiver as the merchant's endpoint, keeping the secret it is given.
    async fn subscribe(&self, pos: &Pos) {
        let r = pos.set_webhook(&self.0.url).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.json);
        self.0.set_secret(r.json["secret"].as_str().unwrap());
    }

    fn got(&self) -> Vec<ReceivedEvent> {
        self.0.received()
    }

    /// Every try received, once each (type, payment) of `want` is in or the time is up.
    async fn wait_for(&self, want: &[(&str, &str)], timeout: Duration) -> Vec<ReceivedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.got();
            let all = want.iter().all(|(kind, payment)| {
                got.iter().any(|r| {
                    r.event["type"] == *kind && r.event["data"]["payment"]["payment_id"] == *payment
                })
            });
            if all || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn put_endpoint(pos: &Pos, url: &str) -> twochan_tools::ApiResponse {
    pos.set_webhook(url).await.unwrap()
}

async fn refund(pos: &Pos, payment: &str, amount: u64, key: &str) -> twochan_tools::ApiResponse {
    let call = Call {
        bearer: Some(&pos.api_key),
        idempotency_key: Some(key),
        body: Some(json!({"amount": amount, "reason": "returned goods"})),
    };
    pos.api
        .call(
            Method::POST,
            &format!("/v1/payments/{payment}/refunds"),
            call,
        )
        .await
        .unwrap()
}

/// A payment of `amount` KRW confirmed by its phone and settled.
async fn settled(ctx: &Harness, pos: &Pos, amount: u64) -> (Value, Device, Phone) {
    let (mut device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(pos, &device, amount).await;
    let id = p["payment_id"].as_str().unwrap().to_owned();
    let (code, counter) = device.authorize(&p);
    let r = phone.confirm(&id, &code, &counter).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    let r = pos
        .wait_for_status(&id, "settled", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(r.json["status"], "settled", "{}", r.json);
    (r.json, device, phone)
}

#[tokio::test]
async fn concurrent_refunds_never_sum_above_the_payment() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (p, _, _) = settled(&ctx, &pos, 900).await;
    let id = p["payment_id"].as_str().unwrap();
    let keys: Vec<String> = (0..16).map(|_| unique_id("rk-")).collect();
    let answers = join_all(keys.iter().map(|k| refund(&pos, id, 300, k))).await;
    let created = answers.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        created,
        3,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in answers.iter().filter(|r| r.status != 201) {
        assert_error(r, 422, "refund_exceeds_payment");
    }
    let now = pos.payment(id).await.unwrap();
    assert_eq!(now.json["refunded_amount"], 900);
    assert_eq!(now.json["status"], "settled");
    let list = pos
        .api
        .call(
            Method::GET,
            &format!("/v1/payments/{id}/refunds"),
            Call {
                bearer: Some(&pos.api_key),
                ..Call::default()
            },
        )
        .await
        .unwrap();
    let refunds = list.json["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 3);
    assert!(
        refunds
            .windows(2)
            .all(|w| w[0]["refund_id"].as_str() < w[1]["refund_id"].as_str())
    );
    // Balance: settled 900, refunded 900, net 0.
    let b = pos.balance().await.unwrap().json;
    let krw = b["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["currency"] == "KRW")
        .unwrap()
        .clone();
    assert_eq!(
        (
            krw["settled_amount"].as_u64(),
            krw["refunded_amount"].as_u64(),
            krw["net_amount"].as_u64()
        ),
        (Some(900), Some(900), Some(0))
    );
}

#[tokio::test]
async fn a_refund_key_is_used_once() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (p, _, phone) = settled(&ctx, &pos, 1_000).await;
    let id = p["payment_id"].as_str().unwrap();
    let key = unique_id("rk-");
    // In-flight twins: one refund, every answer its 201.
    let twins = join_all((0..6).map(|_| refund(&pos, id, 100, &key))).await;
    for r in &twins {
        assert_eq!(r.status, 201, "{}", r.json);
        assert_eq!(r.json, twins[0].json);
    }
    assert_eq!(
        twins
            .iter()
            .filter(|r| r.header("idempotent-replayed").is_none())
            .count(),
        1
    );
    let again = refund(&pos, id, 100, &key).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json, twins[0].json);
    assert_error(
        &refund(&pos, id, 101, &key).await,
        422,
        "idempotency_key_reused",
    );
    assert_eq!(pos.payment(id).await.unwrap().json["refunded_amount"], 100);
    // The phone of the payment sees its refunds; a stranger's token sees nothing.
    let call = |bearer| Call {
        bearer: Some(bearer),
        ..Call::default()
    };
    let path = format!("/v1/payments/{id}/refunds");
    let seen = phone
        .api
        .call(Method::GET, &path, call(phone.token.as_deref().unwrap()))
        .await
        .unwrap();
    assert_eq!(seen.json["refunds"].as_array().unwrap().len(), 1);
    let other = ctx.pos().await;
    assert_error(
        &other
            .api
            .call(Method::GET, &path, call(&other.api_key))
            .await
            .unwrap(),
        404,
        "not_found",
    );
    assert_error(
        &refund(&other, id, 1, &unique_id("rk-")).await,
        404,
        "not_found",
    );
    // Bad input changes nothing.
    for (amount, key) in [(0, "k"), (100_000_000, "k")] {
        assert_error(&refund(&pos, id, amount, key).await, 400, "invalid_request");
    }
    assert_eq!(pos.payment(id).await.unwrap().json["refunded_amount"], 100);
}

#[tokio::test]
async fn only_a_settled_payment_is_refunded() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, _) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 500).await;
    let id = p["payment_id"].as_str().unwrap();
    let key = unique_id("rk-");
    assert_error(
        &refund(&pos, id, 100, &key).await,
        409,
        "payment_not_settled",
    );
    // The answer is kept under the key, like a payment request's.
    let again = refund(&pos, id, 100, &key).await;
    assert_error(&again, 409, "payment_not_settled");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn every_event_arrives_signed_once_per_change() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let receiver = Hooks::start(Answer::Accept).await;
    receiver.subscribe(&pos).await;
    let get = pos
        .api
        .call(
            Method::GET,
            "/v1/webhook-endpoint",
            Call {
                bearer: Some(&pos.api_key),
                ..Call::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(get.json, json!({"url": receiver.url()}));

    let (settled_p, _, _) = settled(&ctx, &pos, 900).await;
    let settled_id = settled_p["payment_id"].as_str().unwrap().to_owned();
    let r = refund(&pos, &settled_id, 300, &unique_id("rk-")).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let refund_id = r.json["refund_id"].as_str().unwrap().to_owned();
    // Declined by the phone, canceled by the merchant, canceled by deregistration, failed.
    let (device, mut phone) = ctx.paired().await;
    let declined = ctx.pending_payment(&pos, &device, 10).await;
    let declined_id = declined["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(phone.decline(&declined_id).await.unwrap().status, 200);
    let canceled = ctx.pending_payment(&pos, &device, 20).await;
    let canceled_id = canceled["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(pos.cancel(&canceled_id).await.unwrap().status, 200);
    let failed = ctx.pending_payment(&pos, &device, 30).await;
    let failed_id = failed["payment_id"].as_str().unwrap().to_owned();
    for n in 0..5 {
        let r = phone
            .confirm(&failed_id, &"ab".repeat(32), &(n + 1).to_string())
            .await
            .unwrap();
        assert!(r.status == 422 || r.status == 429, "{}", r.json);
    }
    let orphaned = ctx.pending_payment(&pos, &device, 40).await;
    let orphaned_id = orphaned["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(phone.deregister(device.code()).await.unwrap().status, 204);

    let want = [
        ("payment.confirmed", settled_id.as_str()),
        ("payment.settled", settled_id.as_str()),
        ("refund.succeeded", settled_id.as_str()),
        ("payment.declined", declined_id.as_str()),
        ("payment.canceled", canceled_id.as_str()),
        ("payment.failed", failed_id.as_str()),
        ("payment.canceled", orphaned_id.as_str()),
    ];
    let got = receiver.wait_for(&want, Duration::from_secs(30)).await;
    assert!(
        got.iter().all(|r| r.verified),
        "an unsigned or badly signed event: {got:?}"
    );
    let mut by_id: HashMap<String, Vec<&ReceivedEvent>> = HashMap::new();
    for r in &got {
        by_id
            .entry(r.event["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r);
    }
    for (kind, payment) in want {
        let ids: Vec<&String> = by_id
            .iter()
            .filter(|(_, rs)| {
                rs[0].event["type"] == kind
                    && rs[0].event["data"]["payment"]["payment_id"] == payment
            })
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids.len(), 1, "{kind} of {payment}: {got:?}");
        let event = &by_id[ids[0]][0].event;
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        let status = kind.strip_prefix("payment.").unwrap_or("settled");
        assert_eq!(event["data"]["payment"]["status"], status, "{event}");
        // Every copy of one event has the same body.
        assert!(by_id[ids[0]].iter().all(|r| r.event == *event));
    }
    let refund_event = got
        .iter()
        .find(|r| r.event["type"] == "refund.succeeded")
        .unwrap();
    assert_eq!(
        refund_event.event["data"]["refund"]["refund_id"],
        refund_id.as_str()
    );
    assert_eq!(refund_event.event["data"]["refund"]["amount"], 300);
    // No event for a change that did not happen: nothing for the pending payments' other kinds.
    assert!(!got.iter().any(|r| r.event["type"] == "payment.settled"
        && r.event["data"]["payment"]["payment_id"] != settled_id.as_str()));
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_event_again() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let receiver = Hooks::start(Answer::FailFirst(2)).await;
    receiver.subscribe(&pos).await;
    let (device, _) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap();
    assert_eq!(pos.cancel(id).await.unwrap().status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let tries = receiver.got();
        if tries.len() >= 3 || tokio::time::Instant::now() > deadline {
            assert_eq!(tries.len(), 3, "{tries:?}");
            assert!(
                tries
                    .iter()
                    .all(|r| r.verified && r.event == tries[0].event)
            );
            assert_eq!(tries[0].event["type"], "payment.canceled");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Accepted at the third try: no fourth.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(receiver.got().len(), 3);
}

#[tokio::test]
async fn an_event_never_accepted_ends_in_the_dead_letter_queue() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let receiver = Hooks::start(Answer::Refuse).await;
    receiver.subscribe(&pos).await;
    let (device, _) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(pos.cancel(&id).await.unwrap().status, 200);
    let dlq = ctx.var("WEBHOOK_DEAD_LETTER_QUEUE_URL");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    loop {
        let out = ctx
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        let mine = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.body.as_deref().is_some_and(|b| b.contains(&id)));
        if let Some(m) = mine {
            // Tries at 0, 2, 4, 8, 16, 32 s: at least 3 more tries within 60 s, then set aside.
            let tries = receiver.got().len();
            assert!(tries >= 4, "{tries} tries");
            let _ = ctx
                .sqs
                .delete_message()
                .queue_url(&dlq)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await;
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered; tries: {}",
            receiver.got().len()
        );
    }
}

#[tokio::test]
async fn events_go_only_to_their_merchant_and_to_the_endpoint_as_set_when_sent() {
    let ctx = Harness::new().await;
    let (a, b) = (ctx.pos().await, ctx.pos().await);
    let (ra, rb, ra2) = (
        Hooks::start(Answer::Accept).await,
        Hooks::start(Answer::Accept).await,
        Hooks::start(Answer::Accept).await,
    );
    ra.subscribe(&a).await;
    rb.subscribe(&b).await;
    let (device, _) = ctx.paired().await;
    let pa = ctx.pending_payment(&a, &device, 10).await;
    let pa_id = pa["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(a.cancel(&pa_id).await.unwrap().status, 200);
    ra.wait_for(
        &[("payment.canceled", pa_id.as_str())],
        Duration::from_secs(20),
    )
    .await;
    // Merchant A replaces its endpoint: the later events go to the new one only.
    ra2.subscribe(&a).await;
    let pa2 = ctx.pending_payment(&a, &device, 11).await;
    let pa2_id = pa2["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(a.cancel(&pa2_id).await.unwrap().status, 200);
    let got = ra2
        .wait_for(
            &[("payment.canceled", pa2_id.as_str())],
            Duration::from_secs(20),
        )
        .await;
    assert!(got.iter().all(|r| r.verified), "{got:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let of = |r: &Hooks, id: &str| {
        r.got()
            .iter()
            .filter(|x| x.event["data"]["payment"]["payment_id"] == id)
            .count()
    };
    assert_eq!(of(&ra, &pa2_id), 0);
    assert!(of(&ra2, &pa2_id) >= 1);
    assert_eq!(rb.got().len(), 0, "merchant B received A's events");
    // Deleted: nothing more is sent, and GET says so.
    let call = Call {
        bearer: Some(&a.api_key),
        ..Call::default()
    };
    assert_eq!(
        a.api
            .call(Method::DELETE, "/v1/webhook-endpoint", call.clone())
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        a.api
            .call(Method::DELETE, "/v1/webhook-endpoint", call.clone())
            .await
            .unwrap()
            .status,
        204
    );
    assert_error(
        &a.api
            .call(Method::GET, "/v1/webhook-endpoint", call)
            .await
            .unwrap(),
        404,
        "not_found",
    );
}

#[tokio::test]
async fn webhook_urls_must_not_reach_into_the_issuers_network() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    for url in [
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://2130706433/x",
        "http://example.com/x",
        "ftp://example.com/x",
        "http://127.0.0.1/x",
        "https://user:pass@example.com/x",
        &format!("https://example.com/{}", "a".repeat(2048)),
    ] {
        let r = put_endpoint(&pos, url).await;
        assert_error(&r, 400, "invalid_request");
        assert!(
            r.json["error"]["message"].as_str().unwrap().contains("url"),
            "{url}: {}",
            r.json
        );
    }
    let r = put_endpoint(&pos, "https://hooks.example.com:8443/twochan?x=1").await;
    assert_eq!(r.status, 200, "{}", r.json);
    let secret = r.json["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 70);
    let again = put_endpoint(&pos, "https://hooks.example.com:8443/twochan?x=1").await;
    assert_ne!(
        again.json["secret"], r.json["secret"],
        "each PUT makes a new secret"
    );
}

//! Revision 2, part 2, over HTTP on the local stack: refunds (the cap under concurrency, the
//! idempotency rules, the ledger and balances) and webhooks, with a real receiver in this process
//! on loopback: every event type arrives signed, once per change after deduplication by id,
//! retried with the same id, dead-lettered when never accepted, and only to its own merchant.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Ctx, assert_error};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use twochan_domain::crypto::webhook_signature;
use twochan_tools::{Call, Device, Phone, Pos, unique_id};

/// How the receiver answers an event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    /// 500 to the first two tries of each event id, then 200.
    FailTwice,
    Refuse,
}

#[derive(Debug, Clone)]
struct Received {
    event: Value,
    /// The `Twochan-Signature` header verified with the endpoint's secret, and `t` is now.
    signed: bool,
}

/// A webhook receiver on 127.0.0.1, as a merchant would run one (minimal HTTP/1.1).
#[derive(Clone)]
struct Receiver {
    url: String,
    secret: Arc<Mutex<String>>,
    got: Arc<Mutex<Vec<Received>>>,
    tries: Arc<Mutex<HashMap<String, usize>>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let r = Receiver {
            url,
            secret: Arc::default(),
            got: Arc::default(),
            tries: Arc::default(),
        };
        let state = r.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let status = state.record(&headers, &body, mode);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        r
    }

    fn record(&self, headers: &HashMap<String, String>, body: &[u8], mode: Mode) -> u16 {
        let event: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        let header = headers
            .get("twochan-signature")
            .cloned()
            .unwrap_or_default();
        let t: i64 = header
            .split(',')
            .find_map(|p| p.strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let secret = self.secret.lock().unwrap().clone();
        let now = twochan_domain::Timestamp::now().seconds();
        let signed = header == webhook_signature(&secret, t, body)
            && (now - t).abs() <= 300
            && headers.get("content-type").map(String::as_str) == Some("application/json");
        self.got.lock().unwrap().push(Received { event, signed });
        let mut tries = self.tries.lock().unwrap();
        let n = tries.entry(id).or_default();
        *n += 1;
        match mode {
            Mode::Accept => 200,
            Mode::FailTwice if *n <= 2 => 500,
            Mode::FailTwice => 204,
            Mode::Refuse => 500,
        }
    }

    /// Registers this receiver as the merchant's endpoint, keeping the secret it is given.
    async fn subscribe(&self, pos: &Pos) {
        let r = put_endpoint(pos, &self.url).await;
        assert_eq!(r.status, 200, "{}", r.json);
        *self.secret.lock().unwrap() = r.json["secret"].as_str().unwrap().to_owned();
    }

    /// The events received (every try), once `want` distinct (type, payment) pairs are in or the
    /// time is up.
    async fn wait_for(&self, want: &[(&str, &str)], timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.got.lock().unwrap().clone();
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

async fn read_request(
    stream: &mut tokio::net::TcpStream,
) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((headers, buf[head_end..head_end + len].to_vec()))
}

async fn put_endpoint(pos: &Pos, url: &str) -> twochan_tools::ApiResponse {
    let call = Call {
        bearer: Some(&pos.api_key),
        body: Some(json!({"url": url})),
        ..Call::default()
    };
    pos.api
        .call(Method::PUT, "/v1/webhook-endpoint", call)
        .await
        .unwrap()
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
async fn settled(ctx: &Ctx, pos: &Pos, amount: u64) -> (Value, Device, Phone) {
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
    let ctx = Ctx::new().await;
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
    let ctx = Ctx::new().await;
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
    let ctx = Ctx::new().await;
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
    let ctx = Ctx::new().await;
    let pos = ctx.pos().await;
    let receiver = Receiver::start(Mode::Accept).await;
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
    assert_eq!(get.json, json!({"url": receiver.url}));

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
        got.iter().all(|r| r.signed),
        "an unsigned or badly signed event: {got:?}"
    );
    let mut by_id: HashMap<String, Vec<&Received>> = HashMap::new();
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
    let ctx = Ctx::new().await;
    let pos = ctx.pos().await;
    let receiver = Receiver::start(Mode::FailTwice).await;
    receiver.subscribe(&pos).await;
    let (device, _) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 10).await;
    let id = p["payment_id"].as_str().unwrap();
    assert_eq!(pos.cancel(id).await.unwrap().status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let tries: Vec<Received> = receiver.got.lock().unwrap().clone();
        if tries.len() >= 3 || tokio::time::Instant::now() > deadline {
            assert_eq!(tries.len(), 3, "{tries:?}");
            assert!(tries.iter().all(|r| r.signed && r.event == tries[0].event));
            assert_eq!(tries[0].event["type"], "payment.canceled");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Accepted at the third try: no fourth.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(receiver.got.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn an_event_never_accepted_ends_in_the_dead_letter_queue() {
    let ctx = Ctx::new().await;
    let pos = ctx.pos().await;
    let receiver = Receiver::start(Mode::Refuse).await;
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
            let tries = receiver.got.lock().unwrap().len();
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
            receiver.got.lock().unwrap().len()
        );
    }
}

#[tokio::test]
async fn events_go_only_to_their_merchant_and_to_the_endpoint_as_set_when_sent() {
    let ctx = Ctx::new().await;
    let (a, b) = (ctx.pos().await, ctx.pos().await);
    let (ra, rb, ra2) = (
        Receiver::start(Mode::Accept).await,
        Receiver::start(Mode::Accept).await,
        Receiver::start(Mode::Accept).await,
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
    assert!(got.iter().all(|r| r.signed), "{got:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let of = |r: &Receiver, id: &str| {
        r.got
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.event["data"]["payment"]["payment_id"] == id)
            .count()
    };
    assert_eq!(of(&ra, &pa2_id), 0);
    assert!(of(&ra2, &pa2_id) >= 1);
    assert_eq!(
        rb.got.lock().unwrap().len(),
        0,
        "merchant B received A's events"
    );
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
    let ctx = Ctx::new().await;
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

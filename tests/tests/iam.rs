//! The AWS actions each function needs, observed: every route and consumer of every function runs
//! through its real in-process handler against the emulator, with one failpoints probe per
//! function (an SDK interceptor on the function's clients) recording the IAM action and resource
//! of every call (`Probe::actions`), the rarer paths included: a deregistration that cancels a
//! pending payment and one that finds a lock without its payment, a second device added with the
//! terminal's token, a refund and a refused one, the webhook endpoint's PUT, GET and DELETE, a
//! webhook delivery refused by its endpoint (the message made visible again later), a wrong auth
//! code, a cancel and a decline, the pending-payments list through the index, a device lock given
//! back after a failed write, a settlement message settled twice, and the sweeper finding a
//! payment stuck `confirmed`.
//!
//! Resources are written by the template's logical names (`Table`, `Table/index/gsi1`,
//! `SettlementQueue`, `WebhookQueue`), per function, to `target/iam-observed.json`;
//! `scripts/check_iam_used.py` compares that with each function's role, both ways. The handlers
//! run on the stack's table; the settlement and event queues they are given are queues of this
//! test's own, of the kind of the stack's (so that the deployed consumers never take this test's
//! messages), and the sweeper scans a table of the test's own on the stack's schema (so that the
//! scan sees only this test's payment): each stands in for the stack's resource of that name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use twochan_aws::keys;

use crate::common::{Harness, answer, challenge_request, registration_over, request};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use twochan_api::{
    App,
    routes::{Function, NoQueue, handle},
    settlement::settle_batch,
    sweeper::{SweepLimits, sweep},
    webhooks::{Redelivery, RetryPolicy, send_batch},
};
use twochan_aws::{
    DynamoStore, SqsEventQueue, SqsSettlementQueue,
    failpoints::{Crash, Probe},
    webhook_sender::WebhookSender,
};
use twochan_domain::{PaymentId, Timestamp, webhook::SecretSeal};
use twochan_tools::{
    Device, Pos,
    receiver::{Answer, Receiver},
    unique_id,
};

/// How long a payment may stay confirmed in this test's sweep.
const STUCK_AFTER_SECONDS: i64 = 300;

/// The functions of the template, by logical name.
const FUNCTIONS: [&str; 6] = [
    "RegistrationFunction",
    "PaymentRequestFunction",
    "ConfirmationFunction",
    "SettlementFunction",
    "WebhooksFunction",
    "SweeperFunction",
];

/// The webhooks function's redelivery, as its `main` makes it: the event queue's own messages
/// made visible again after a delay.
struct Redeliver(SqsEventQueue);

impl Redelivery for Redeliver {
    async fn retry_after(&self, receipt_handle: &str, seconds: i32) -> twochan_domain::Result<()> {
        self.0.retry_after(receipt_handle, seconds).await
    }
}

/// The functions under observation: the stack's table, queues of its own standing in for the stack's, and the
/// probes of the handler runs, by function.
struct ProbedFunctions<'a> {
    ctx: &'a Harness,
    /// Stands in for SettlementQueue: confirmations send here, the sweeper too; nothing else
    /// consumes it.
    held: String,
    /// Stands in for WebhookQueue.
    events: String,
    probes: Vec<(&'static str, Probe)>,
}

impl<'a> ProbedFunctions<'a> {
    async fn new(ctx: &'a Harness) -> ProbedFunctions<'a> {
        let held = ctx.scratch_settlement_queue("twochan-iam-held-").await;
        let events = ctx.scratch_queue("twochan-iam-events-").await;
        ProbedFunctions {
            ctx,
            held,
            events,
            probes: Vec::new(),
        }
    }

    /// A new probe of one handler run (or several) of `function`, kept for the record.
    fn probe(&mut self, function: &'static str, probe: Probe) -> Probe {
        assert!(FUNCTIONS.contains(&function), "{function}");
        self.probes.push((function, probe.clone()));
        probe
    }

    /// The HTTP functions' `App`, as their `main`s make it, on `probe`'s clients.
    fn app<Q>(
        &self,
        probe: &Probe,
        queue: impl FnOnce(aws_sdk_sqs::Client, String) -> Q,
    ) -> App<DynamoStore, Q, SqsEventQueue> {
        let c = probe.clients(&self.ctx.config);
        App {
            store: DynamoStore::new(c.dynamodb, self.ctx.table.clone()),
            queue: queue(c.sqs.clone(), self.held.clone()),
            issuer_keys: self.ctx.master.clone().into(),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(c.sqs, self.events.clone()),
            allow_loopback_webhooks: true,
        }
    }

    fn no_queue(&self, probe: &Probe) -> App<DynamoStore, NoQueue, SqsEventQueue> {
        self.app(probe, |_, _| NoQueue)
    }

    fn with_queue(&self, probe: &Probe) -> App<DynamoStore, SqsSettlementQueue, SqsEventQueue> {
        self.app(probe, SqsSettlementQueue::new)
    }

    /// Every message a queue holds now, as the functions' SQS event records (see
    /// `Harness::receive_all`).
    async fn drain(&self, url: &str, delete: bool) -> Vec<SqsMessage> {
        let messages = self.ctx.receive_all(url, delete).await;
        messages
            .into_iter()
            .map(|m| {
                let mut record = SqsMessage::default();
                record.message_id = m.message_id;
                record.receipt_handle = m.receipt_handle;
                record.body = m.body;
                record.attributes = m
                    .attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v))
                    .collect();
                record
            })
            .collect()
    }
}

/// One HTTP call through `function`'s handler: its status and JSON body.
async fn call<Q>(
    app: &App<DynamoStore, Q, SqsEventQueue>,
    function: Function,
    req: lambda_http::Request,
) -> (u16, Value)
where
    Q: twochan_domain::ports::SettlementQueue,
{
    answer(&handle(app, function, req).await)
}

/// A registration through the two routes: a challenge, then the device's proof over it.
async fn register<Q>(
    app: &App<DynamoStore, Q, SqsEventQueue>,
    device: &Device,
    terminal: &str,
    bearer: &str,
) -> (u16, Value)
where
    Q: twochan_domain::ports::SettlementQueue,
{
    let (status, body) = call(app, Function::Registration, challenge_request(device)).await;
    assert_eq!(status, 201, "{body}");
    let challenge = body["challenge"].as_str().unwrap();
    let register = registration_over(device, terminal, challenge, bearer);
    call(app, Function::Registration, register).await
}

fn create_payment(pos: &Pos, device: &Device, amount: u64, key: &str) -> lambda_http::Request {
    request(
        "POST",
        "/v1/payments",
        &pos.api_key,
        &[("idempotency-key", key)],
        Some(
            &json!({"unique_code": device.code(), "beacon_proof": device.beacon().proof,
                     "amount": amount, "currency": "KRW", "pos_id": "pos-1"}),
        ),
    )
}

fn id_of(payment: &Value) -> String {
    payment["payment_id"].as_str().unwrap().to_owned()
}

fn refund(pos: &Pos, payment: &str, amount: u64) -> lambda_http::Request {
    request(
        "POST",
        &format!("/v1/payments/{payment}/refunds"),
        &pos.api_key,
        &[("idempotency-key", &unique_id("rk-"))],
        Some(&json!({"amount": amount, "reason": "returned goods"})),
    )
}

/// Where the observed actions go: the workspace's target directory (CARGO_TARGET_DIR if set, a
/// relative one from the workspace root, as `scripts/check_iam_used.py` reads it).
fn observed_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    root.join(target).join("iam-observed.json")
}

#[tokio::test]
async fn every_function_s_aws_actions_are_recorded() {
    let ctx = Harness::new().await;
    let mut w = ProbedFunctions::new(&ctx).await;
    let (accepting, refusing) = (
        Receiver::answering(Answer::Accept).await.unwrap(),
        Receiver::answering(Answer::Refuse).await.unwrap(),
    );
    // A: endpoint that accepts; B: endpoint that refuses; C: endpoint set, read and deleted.
    let (a, b, c) = (ctx.pos().await, ctx.pos().await, ctx.pos().await);
    let (mut d1, d2, d3, d4) = (ctx.device(), ctx.device(), ctx.device(), ctx.device());
    let (t1, t2, t3) = (unique_id("term-"), unique_id("term-"), unique_id("term-"));

    // Registration: two devices of one terminal (the second with its token), one registered
    // again, two more on terminals of their own. An unknown route costs nothing.
    let registration = w.probe("RegistrationFunction", Probe::new());
    let reg = w.no_queue(&registration);
    let (status, body) = register(&reg, &d1, &t1, "").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = register(&reg, &d1, &t1, "").await;
    assert_eq!(status, 200, "registered again: {body}");
    let token1 = body["terminal_token"].as_str().unwrap().to_owned();
    let (status, body) = register(&reg, &d2, &t1, &token1).await;
    assert_eq!(
        status, 201,
        "a second device with the terminal's token: {body}"
    );
    let (status, body) = register(&reg, &d3, &t2, "").await;
    assert_eq!(status, 201, "{body}");
    let token2 = body["terminal_token"].as_str().unwrap().to_owned();
    let (status, body) = register(&reg, &d4, &t3, "").await;
    assert_eq!(status, 201, "{body}");
    let token3 = body["terminal_token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &reg,
        Function::Registration,
        request("GET", "/v1/nowhere", "", &[], None),
    )
    .await;
    assert_eq!(status, 404);

    // Payment requests: the webhook endpoints; payments created, replayed, refused (busy), read
    // and canceled; the balance.
    let payments = w.probe("PaymentRequestFunction", Probe::new());
    let pay = w.no_queue(&payments);
    for (pos, url) in [
        (&a, &accepting.url),
        (&b, &refusing.url),
        (&c, &accepting.url),
    ] {
        let put = request(
            "PUT",
            "/v1/webhook-endpoint",
            &pos.api_key,
            &[],
            Some(&json!({ "url": url })),
        );
        let (status, body) = call(&pay, Function::PaymentRequest, put).await;
        assert_eq!(status, 200, "{body}");
    }
    let endpoint = |method: &str| request(method, "/v1/webhook-endpoint", &c.api_key, &[], None);
    let (status, body) = call(&pay, Function::PaymentRequest, endpoint("GET")).await;
    assert_eq!((status, &body["url"]), (200, &json!(accepting.url)));
    let (status, _) = call(&pay, Function::PaymentRequest, endpoint("DELETE")).await;
    assert_eq!(status, 204);
    let (status, _) = call(&pay, Function::PaymentRequest, endpoint("GET")).await;
    assert_eq!(status, 404);

    let key1 = unique_id("k-");
    let (status, p1) = call(
        &pay,
        Function::PaymentRequest,
        create_payment(&a, &d1, 900, &key1),
    )
    .await;
    assert_eq!(status, 201, "{p1}");
    let (status, again) = call(
        &pay,
        Function::PaymentRequest,
        create_payment(&a, &d1, 900, &key1),
    )
    .await;
    assert_eq!((status, &again), (201, &p1), "the replay");
    let (status, busy) = call(
        &pay,
        Function::PaymentRequest,
        create_payment(&a, &d1, 50, &unique_id("k-")),
    )
    .await;
    assert_eq!(status, 409, "device busy: {busy}");
    let id1 = id_of(&p1);
    let get = request("GET", &format!("/v1/payments/{id1}"), &a.api_key, &[], None);
    let (status, body) = call(&pay, Function::PaymentRequest, get).await;
    assert_eq!(status, 200, "{body}");
    let (status, p2) = call(
        &pay,
        Function::PaymentRequest,
        create_payment(&b, &d2, 20, &unique_id("k-")),
    )
    .await;
    assert_eq!(status, 201, "{p2}");
    let id2 = id_of(&p2);
    let cancel = request(
        "POST",
        &format!("/v1/payments/{id2}/cancel"),
        &b.api_key,
        &[],
        None,
    );
    let (status, body) = call(&pay, Function::PaymentRequest, cancel).await;
    assert_eq!(status, 200, "{body}");
    let (status, p3) = call(
        &pay,
        Function::PaymentRequest,
        create_payment(&a, &d3, 30, &unique_id("k-")),
    )
    .await;
    assert_eq!(status, 201, "{p3}");
    let balance = request("GET", "/v1/balance", &a.api_key, &[], None);
    let (status, body) = call(&pay, Function::PaymentRequest, balance).await;
    assert_eq!(status, 200, "{body}");

    // The payment's write fails after the device's lock was taken (calls: the key and device,
    // the lock, the payment): the lock is given back, on condition that the payment is not stored.
    let failing = w.probe("PaymentRequestFunction", Probe::failing([2]));
    let (status, body) = call(
        &w.no_queue(&failing),
        Function::PaymentRequest,
        create_payment(&b, &d2, 25, &unique_id("k-")),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        failing.calls().last().map(String::as_str),
        Some("DynamoDB.TransactWriteItems"),
        "the lock given back: {:?}",
        failing.calls()
    );
    // A request that dies after taking d4's lock, before storing its payment.
    let crashed = w.probe(
        "PaymentRequestFunction",
        Probe::crashing(Some(Crash::Before(2))),
    );
    let _ = handle(
        &w.no_queue(&crashed),
        Function::PaymentRequest,
        create_payment(&a, &d4, 40, &unique_id("k-")),
    )
    .await;
    assert!(crashed.crashed(), "{:?}", crashed.calls());

    // Deregistration: d3 cancels its pending payment; d4's lock has no payment, whose slot gets
    // the answer its request will find.
    for (device, token) in [(&d3, &token2), (&d4, &token3)] {
        let gone = request(
            "DELETE",
            &format!("/v1/devices/{}", device.code()),
            token,
            &[],
            None,
        );
        let (status, body) = call(&reg, Function::Registration, gone).await;
        assert_eq!(status, 204, "{body}");
    }

    // Confirmation: the pending list (through the index), a wrong code, the right one and its
    // exact repeat, a decline; and a payment confirmed for the sweeper.
    let confirmation = w.probe("ConfirmationFunction", Probe::new());
    let conf = w.with_queue(&confirmation);
    let pending = request("GET", "/v1/pending-payments", &token1, &[], None);
    let (status, body) = call(&conf, Function::Confirmation, pending).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["payments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["payment_id"] == id1),
        "{body}"
    );
    let (code, counter) = d1.authorize(&p1);
    let confirm = |auth: &str| {
        request(
            "POST",
            &format!("/v1/payments/{id1}/confirm"),
            &token1,
            &[],
            Some(&json!({"auth_code": auth, "counter": counter})),
        )
    };
    let (status, body) = call(&conf, Function::Confirmation, confirm(&"ab".repeat(32))).await;
    assert_eq!(status, 422, "{body}");
    for _ in 0..2 {
        let (status, body) = call(&conf, Function::Confirmation, confirm(&code)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, p4) = call(
        &pay,
        Function::PaymentRequest,
        create_payment(&b, &d2, 60, &unique_id("k-")),
    )
    .await;
    assert_eq!(status, 201, "{p4}");
    let decline = request(
        "POST",
        &format!("/v1/payments/{}/decline", id_of(&p4)),
        &token1,
        &[],
        None,
    );
    let (status, body) = call(&conf, Function::Confirmation, decline).await;
    assert_eq!(status, 200, "{body}");
    let (status, p5) = call(
        &pay,
        Function::PaymentRequest,
        create_payment(&a, &d1, 70, &unique_id("k-")),
    )
    .await;
    assert_eq!(status, 201, "{p5}");
    let (code, counter) = d1.authorize(&p5);
    let confirm = request(
        "POST",
        &format!("/v1/payments/{}/confirm", id_of(&p5)),
        &token1,
        &[],
        Some(&json!({"auth_code": code, "counter": counter})),
    );
    let (status, body) = call(&conf, Function::Confirmation, confirm).await;
    assert_eq!(status, 200, "{body}");

    // The sweeper, on a table of its own holding p5 as confirmed long ago: it finds it and sends
    // its settlement message again.
    let sweep_table = unique_id("twochan-iam-sweep-");
    crate::common::create_table_like(&ctx.dynamodb, &ctx.table, &ctx.dynamodb, &sweep_table).await;
    let p5_key = HashMap::from([
        (
            "pk".to_owned(),
            AttributeValue::S(keys::payment_pk(
                &PaymentId::try_from(id_of(&p5).as_str()).unwrap(),
            )),
        ),
        ("sk".to_owned(), AttributeValue::S(keys::SK_PAYMENT.into())),
    ]);
    let mut item = ctx
        .dynamodb
        .get_item()
        .table_name(&ctx.table)
        .set_key(Some(p5_key))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("p5 stored");
    item.insert(
        "confirmed_at".into(),
        AttributeValue::N((Timestamp::now().millis() - 2 * STUCK_AFTER_SECONDS * 1000).to_string()),
    );
    ctx.dynamodb
        .put_item()
        .table_name(&sweep_table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
    let sweeper = w.probe("SweeperFunction", Probe::new());
    let c_sw = sweeper.clients(&ctx.config);
    let summary = sweep(
        &DynamoStore::new(c_sw.dynamodb, sweep_table.clone()),
        &SqsSettlementQueue::new(c_sw.sqs, w.held.clone()),
        Timestamp::now(),
        STUCK_AFTER_SECONDS,
        SweepLimits {
            max_pages: 10,
            max_payments: 10,
            stop_at: None,
        },
    )
    .await;
    assert_eq!((summary.found, summary.reenqueued), (1, 1), "{summary:?}");

    // Settlement: the batch of the held messages (p1, p5 twice), then the same batch again.
    let held = w.drain(&w.held, true).await;
    assert!(held.len() >= 3, "{held:?}");
    let settlement = w.probe("SettlementFunction", Probe::new());
    let c_s = settlement.clients(&ctx.config);
    let store = DynamoStore::new(c_s.dynamodb, ctx.table.clone());
    let events = SqsEventQueue::new(c_s.sqs, w.events.clone());
    for _ in 0..2 {
        let mut event = SqsEvent::default();
        event.records = held.clone();
        let out = settle_batch(&store, &events, event).await;
        assert!(out.batch_item_failures.is_empty(), "{out:?}");
    }

    // Refunds of the settled p1 (and one of the canceled p2, refused), and their list.
    let (status, body) = call(&pay, Function::PaymentRequest, refund(&a, &id1, 300)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&pay, Function::PaymentRequest, refund(&b, &id2, 1)).await;
    assert_eq!(status, 409, "{body}");
    let list = request(
        "GET",
        &format!("/v1/payments/{id1}/refunds"),
        &a.api_key,
        &[],
        None,
    );
    let (status, body) = call(&pay, Function::PaymentRequest, list).await;
    assert_eq!(status, 200, "{body}");

    // Webhooks: every event so far; A's endpoint takes them, B's refuses (each made visible
    // again after a delay), C has none any more.
    let messages = w.drain(&w.events, false).await;
    assert!(!messages.is_empty());
    let webhooks = w.probe("WebhooksFunction", Probe::new());
    let c_w = webhooks.clients(&ctx.config);
    let mut event = SqsEvent::default();
    event.records = messages;
    let out = send_batch(
        &DynamoStore::new(c_w.dynamodb, ctx.table.clone()),
        &WebhookSender::new(true),
        &SecretSeal::from_issuer_key(&ctx.master),
        &Redeliver(SqsEventQueue::new(c_w.sqs, w.events.clone())),
        &RetryPolicy::new(2, 6),
        event,
    )
    .await;
    assert!(
        !out.batch_item_failures.is_empty(),
        "B's events are refused"
    );
    assert!(!accepting.received().is_empty(), "A's events are delivered");

    // The record, by function and by the template's names.
    let names: HashMap<String, &str> = HashMap::from([
        (ctx.table.clone(), "Table"),
        (format!("{}/index/gsi1", ctx.table), "Table/index/gsi1"),
        (sweep_table.clone(), "Table"),
        (format!("{sweep_table}/index/gsi1"), "Table/index/gsi1"),
        (ctx.var("SETTLEMENT_QUEUE_URL"), "SettlementQueue"),
        (w.held.clone(), "SettlementQueue"),
        (ctx.var("WEBHOOK_QUEUE_URL"), "WebhookQueue"),
        (w.events.clone(), "WebhookQueue"),
    ]);
    let mut observed: BTreeMap<&str, BTreeMap<String, BTreeSet<String>>> =
        FUNCTIONS.iter().map(|f| (*f, BTreeMap::new())).collect();
    for (function, probe) in &w.probes {
        for (action, resource) in probe.actions() {
            // A resource of no known name stays as it is: the check then finds it granted nowhere.
            let name = names.get(&resource).map_or(resource, |n| (*n).to_owned());
            observed
                .get_mut(function)
                .unwrap()
                .entry(name)
                .or_default()
                .insert(action);
        }
    }
    let path = observed_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&observed).unwrap() + "\n",
    )
    .unwrap();
    for (function, by_resource) in &observed {
        for (resource, actions) in by_resource {
            let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
            println!("{function:24} {resource:18} {}", actions.join(", "));
        }
    }
    println!("written to {}", path.display());

    // The paths above were taken: the rarer actions are in the record.
    let has = |function: &str, resource: &str, action: &str| {
        observed[function]
            .get(resource)
            .is_some_and(|a| a.contains(action))
    };
    for (function, resource, action) in [
        (
            "RegistrationFunction",
            "Table",
            "dynamodb:ConditionCheckItem",
        ),
        ("RegistrationFunction", "Table", "dynamodb:BatchGetItem"),
        ("RegistrationFunction", "WebhookQueue", "sqs:SendMessage"),
        (
            "PaymentRequestFunction",
            "Table",
            "dynamodb:ConditionCheckItem",
        ),
        ("PaymentRequestFunction", "Table", "dynamodb:DeleteItem"),
        ("ConfirmationFunction", "Table/index/gsi1", "dynamodb:Query"),
        ("ConfirmationFunction", "SettlementQueue", "sqs:SendMessage"),
        ("SettlementFunction", "Table", "dynamodb:GetItem"),
        (
            "WebhooksFunction",
            "WebhookQueue",
            "sqs:ChangeMessageVisibility",
        ),
        ("SweeperFunction", "Table", "dynamodb:Scan"),
        ("SweeperFunction", "SettlementQueue", "sqs:SendMessage"),
    ] {
        assert!(
            has(function, resource, action),
            "{function} made no {action} on {resource}: {observed:?}"
        );
    }

    for url in [&w.held, &w.events] {
        let _ = ctx.sqs.delete_queue().queue_url(url).send().await;
    }
    let _ = ctx
        .dynamodb
        .delete_table()
        .table_name(&sweep_table)
        .send()
        .await;
}

//! Issue 12, item 5: every other set of items that concurrent requests write together, raced
//! through the real handlers (in this process, as `sim.rs` runs them) over the stack's
//! conflict-faithful DynamoDB proxy (`CONFLICT_PROXY_URL`, `tools/src/conflict_proxy.rs`). There,
//! as on DynamoDB, a transaction that meets an item of another transaction in flight is cancelled
//! (`TransactionConflict`) and a single-item write on such an item is refused
//! (`TransactionConflictException`). Whatever the layer refuses, each request must still answer
//! within its route's contract — retried inside the handler, a 409 or 422, or a 503 with
//! `Retry-After` (nothing was written, a retry is safe) — never a 500, and no answer may be
//! contradicted by what is stored (no lost write).
//!
//! | race | items written together | test |
//! | --- | --- | --- |
//! | confirm vs decline vs cancel of one payment | payment + device (three transactions) | `confirm_decline_and_cancel_of_one_payment_race` |
//! | wrong codes vs the right code on one payment | payment + device (wrong-code and confirm transactions) | `wrong_codes_race_the_right_code` |
//! | payment requests vs re-registration of the code | device (lock `UpdateItem` vs registration transaction) | `payment_requests_meet_a_re_registration_of_their_code` |
//! | payment requests vs deregistration | device (lock `UpdateItem` vs the deregistration's transaction) | `payment_requests_race_the_deregistration_of_their_code` |
//! | a payment's `PutItem` vs the deregistration that keeps a 404 in its slot | the request's payment slot (idempotency slot) + device | `a_payment_is_stored_while_its_code_is_deregistered` |
//! | confirm vs deregistration | device + payment (confirmation vs deregistration transactions) | `confirm_races_the_deregistration_of_its_code` |
//! | taking over a lapsed lock vs recording the expiry | device (lock `UpdateItem` vs the expiry's lock release, both single writes), payment | `a_lapsed_lock_is_taken_over_while_its_expiry_is_recorded` (no refusal expected) |
//! | refunds with several keys and twins of one key | refund slot + payment + balance (refund transactions) | `refunds_of_one_payment_race_each_other_and_their_twins` |
//! | refunds vs settlements of the same merchant and currency | balance (+ payments) | `refunds_and_settlements_meet_on_the_balance` |
//! | deregistration vs registering another device vs registering the same again, one terminal | device + terminal + tokens | `registrations_and_a_deregistration_on_one_terminal_race` |
//! | webhook endpoint `PUT` vs `PUT` vs `DELETE` | the endpoint item (single writes only: no transaction ever holds it) | `webhook_endpoint_writes_race` |
//!
//! Each test repeats its race until the proxy has refused at least one write or transaction during
//! it. The proxy's counters are global (another test binary running alongside adds to them), so
//! the tests of this file take turns and compare the counters before and after. Each prints a
//! `conflicts:` line with its rounds, what the proxy refused and how many answers were 503. Where
//! the window is a few milliseconds wide, a failpoint hook (`Probe::with_hook`) times one side on
//! the other: the payment's `PutItem` after the lock, the re-registration's transaction.
//!
//! Covered elsewhere: twins of one payment key (`concurrency.rs`: single writes only, which the
//! layer never refuses against each other), copies of one confirmation (`concurrency.rs`), copies
//! of one settlement message and settlement groups (`sim.rs`, `settlement.rs`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{Ctx, answer, request};
use futures_util::future::join_all;
use serde_json::{Value, json};
use twochan_api::routes::{App, Function, handle};
use twochan_aws::{DynamoStore, SqsEventQueue, SqsSettlementQueue, failpoints::Probe};
use twochan_domain::{
    Currency, DomainError, IdempotencyKey, MerchantId, Payment, PaymentId, PaymentSlot,
    PaymentStatus, Timestamp, UniqueCode,
    crypto::SecretHash,
    ports::{
        Devices, Ledger, Payments, RegistrationChallenge, Settlement, SettlementMessage,
        SlotRecord, WebhookEndpoints,
    },
    webhook::SecretSeal,
};
use twochan_tools::{
    Device,
    conflict_proxy::{STATS_PATH, StatsSnapshot},
    unique_id,
};

/// The tests of this file measure the proxy's global counters one at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Rounds of each race: at least this many, then until the layer has refused something.
const MIN_ROUNDS: usize = 4;
const MAX_ROUNDS: usize = 60;

/// One answer of an in-process handler.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<String>,
    replayed: bool,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// `status`, and the error `code` unless it is empty.
    fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && (code.is_empty() || self.code() == code)
    }

    fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_default().to_owned()
    }
}

/// An answer of a race: one the route's contract allows (`allowed`, or a 503 `unavailable` with
/// `Retry-After`), never a 500.
#[track_caller]
fn within(what: &str, r: &Reply, allowed: &[(u16, &str)]) {
    assert_ne!(
        r.status, 500,
        "{what}: a 500 under the conflict layer: {r:?}"
    );
    if r.status == 503 {
        assert_eq!(r.code(), "unavailable", "{what}: {r:?}");
        assert!(
            r.retry_after.is_some(),
            "{what}: a 503 without Retry-After: {r:?}"
        );
        return;
    }
    assert!(
        allowed.iter().any(|(s, c)| r.is(*s, c)),
        "{what}: {} {} is not an answer the contract allows here ({allowed:?})",
        r.status,
        r.body
    );
}

/// A short pause that spreads the start of a race's requests, so that some of them arrive while
/// another's transaction is in flight (the proxy holds each one 10 ms).
async fn stagger(round: usize, i: usize) {
    tokio::time::sleep(Duration::from_millis(((round * 7 + i * 5) % 23) as u64)).await;
}

/// Sends `f` again while it answers 503 (what a client does after `Retry-After`).
async fn retried<F, Fut>(what: &str, mut f: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Reply>,
{
    for _ in 0..20 {
        let r = f().await;
        if r.status != 503 {
            assert_ne!(r.status, 500, "{what}: {r:?}");
            return r;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("{what}: still 503 after 20 tries");
}

/// A merchant as the POS knows it.
struct Merchant {
    id: MerchantId,
    key: String,
}

/// A device registered to a phone.
struct Paired {
    device: Device,
    terminal: String,
    token: String,
}

struct World {
    ctx: Ctx,
    app: App<DynamoStore, SqsSettlementQueue, SqsEventQueue>,
    /// The test's own settlement queue: no deployed function settles its payments behind its back.
    queue_url: String,
    proxy: String,
    before: StatsSnapshot,
    name: &'static str,
    /// Answers 503 seen during the races (before any retry).
    unavailable: u64,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl World {
    async fn new(name: &'static str) -> World {
        let turn = TURN.lock().await;
        let ctx = Ctx::new().await;
        let proxy = ctx.var("CONFLICT_PROXY_URL");
        let queue_url = ctx
            .sqs
            .create_queue()
            .queue_name(unique_id("twochan-conflicts-"))
            .send()
            .await
            .expect("create the test's settlement queue")
            .queue_url
            .expect("queue url");
        let app = App {
            store: ctx.store.clone(),
            queue: SqsSettlementQueue::new(ctx.sqs.clone(), queue_url.clone()),
            events: ctx.events(),
            allow_loopback_webhooks: true,
            issuer_keys: ctx.master.clone().into(),
            pending_ttl_seconds: 120,
        };
        let before = stats(&proxy).await;
        World {
            ctx,
            app,
            queue_url,
            proxy,
            before,
            name,
            unavailable: 0,
            _turn: turn,
        }
    }

    /// What the layer refused since the test began: (transactions, single writes, per operation).
    async fn refused(&self) -> (u64, u64, BTreeMap<String, u64>) {
        let now = stats(&self.proxy).await;
        let by_op = now
            .refused_by_operation
            .iter()
            .map(|(op, n)| {
                let was = self.before.refused_by_operation.get(op).copied();
                (op.clone(), n - was.unwrap_or(0))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        (
            now.transactions_refused - self.before.transactions_refused,
            now.writes_refused - self.before.writes_refused,
            by_op,
        )
    }

    /// Whether the race has been run enough: `MIN_ROUNDS`, and the layer refused something.
    async fn enough(&self, rounds: usize) -> bool {
        let (t, w, _) = self.refused().await;
        rounds >= MAX_ROUNDS || (rounds >= MIN_ROUNDS && t + w > 0)
    }

    /// Counts the 503s among a race's first answers.
    fn count_503(&mut self, replies: &[&Reply]) {
        self.unavailable += replies.iter().filter(|r| r.status == 503).count() as u64;
    }

    /// The layer must have refused something, else the race proved nothing.
    async fn finish(self, rounds: usize) {
        let (t, w, by_op) = self.refused().await;
        println!(
            "conflicts: {}: {rounds} rounds; the layer refused {t} transactions and {w} single \
             writes ({by_op:?}); {} answers were 503",
            self.name, self.unavailable
        );
        let _ = self
            .ctx
            .sqs
            .delete_queue()
            .queue_url(&self.queue_url)
            .send()
            .await;
        assert!(
            t + w > 0,
            "{}: the layer refused nothing in {rounds} rounds: the race proved nothing",
            self.name
        );
    }

    /// For a race of single writes only, which DynamoDB never refuses against each other: the
    /// outcome checks are the test, and a refusal is not expected.
    async fn finish_single_writes(self, rounds: usize) {
        let (t, w, by_op) = self.refused().await;
        println!(
            "conflicts: {}: {rounds} rounds of single writes; the layer refused {t} transactions \
             and {w} single writes meanwhile ({by_op:?}: none need be this test's)",
            self.name
        );
        let _ = self
            .ctx
            .sqs
            .delete_queue()
            .queue_url(&self.queue_url)
            .send()
            .await;
    }

    /// The handlers' view of the world through clients carrying `probe` (a hook in a handler).
    fn app_with(&self, probe: &Probe) -> App<DynamoStore, SqsSettlementQueue, SqsEventQueue> {
        let clients = probe.clients(&self.ctx.config);
        App {
            store: DynamoStore::new(clients.dynamodb, self.ctx.table.clone()),
            queue: SqsSettlementQueue::new(clients.sqs.clone(), self.queue_url.clone()),
            events: SqsEventQueue::new(clients.sqs, self.ctx.var("WEBHOOK_QUEUE_URL")),
            allow_loopback_webhooks: true,
            issuer_keys: self.ctx.master.clone().into(),
            pending_ttl_seconds: 120,
        }
    }

    async fn call(
        &self,
        function: Function,
        method: &str,
        path: &str,
        bearer: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        call_on(&self.app, function, method, path, bearer, key, body).await
    }

    async fn merchant(&self) -> Merchant {
        let pos = self.ctx.pos().await;
        Merchant {
            id: MerchantId::try_from(pos.merchant_id.as_str()).unwrap(),
            key: pos.api_key,
        }
    }

    /// `POST /v1/devices` over a fresh challenge (the phone asks for one, pairs, sends the proof).
    async fn register(&self, device: &Device, terminal: &str, bearer: &str) -> Reply {
        self.register_on(&self.app, device, terminal, bearer).await
    }

    async fn register_on(
        &self,
        app: &App<DynamoStore, SqsSettlementQueue, SqsEventQueue>,
        device: &Device,
        terminal: &str,
        bearer: &str,
    ) -> Reply {
        let challenge = RegistrationChallenge::issue(
            UniqueCode::try_from(device.code()).unwrap(),
            Timestamp::now(),
        );
        self.ctx
            .store
            .put_challenge(&challenge)
            .await
            .expect("keep a challenge");
        let c = challenge.challenge.as_str();
        let body = json!({"unique_code": device.code(), "terminal_id": terminal, "challenge": c,
                          "registration_proof": device.registration_proof(terminal, c)});
        call_on(
            app,
            Function::Registration,
            "POST",
            "/v1/devices",
            bearer,
            None,
            Some(body),
        )
        .await
    }

    async fn paired(&self) -> Paired {
        let device = self.ctx.device();
        let terminal = unique_id("phone-");
        let r = retried("register", || self.register(&device, &terminal, "")).await;
        assert_eq!(r.status, 201, "{r:?}");
        Paired {
            device,
            terminal,
            token: r.str("terminal_token"),
        }
    }

    async fn deregister(&self, token: &str, device: &Device) -> Reply {
        let path = format!("/v1/devices/{}", device.code());
        self.call(Function::Registration, "DELETE", &path, token, None, None)
            .await
    }

    /// Each first answer of a race of payment requests, or for a 503 the answer of its retry
    /// with the same key (the first amount plus the request's index, as the race sent it).
    async fn retried_payments(
        &self,
        m: &Merchant,
        device: &Device,
        first_amount: u64,
        keys: &[String],
        firsts: &[Reply],
        asked: &[(u16, &str)],
    ) -> Vec<Reply> {
        let mut finals = Vec::new();
        for (i, (key, r)) in keys.iter().zip(firsts).enumerate() {
            let r = if r.status == 503 {
                retried("payment request", || {
                    self.pay(m, device, first_amount + i as u64, key)
                })
                .await
            } else {
                r.clone()
            };
            within("payment request, retried", &r, asked);
            finals.push(r);
        }
        finals
    }

    async fn pay(&self, m: &Merchant, device: &Device, amount: u64, key: &str) -> Reply {
        let body = payment_body(device, amount);
        self.call(
            Function::PaymentRequest,
            "POST",
            "/v1/payments",
            &m.key,
            Some(key),
            Some(body),
        )
        .await
    }

    async fn confirm(&self, token: &str, id: &str, code: &str, counter: &str) -> Reply {
        let path = format!("/v1/payments/{id}/confirm");
        let body = json!({"auth_code": code, "counter": counter});
        self.call(
            Function::Confirmation,
            "POST",
            &path,
            token,
            None,
            Some(body),
        )
        .await
    }

    async fn decline(&self, token: &str, id: &str) -> Reply {
        let path = format!("/v1/payments/{id}/decline");
        self.call(Function::Confirmation, "POST", &path, token, None, None)
            .await
    }

    async fn cancel(&self, m: &Merchant, id: &str) -> Reply {
        let path = format!("/v1/payments/{id}/cancel");
        self.call(Function::PaymentRequest, "POST", &path, &m.key, None, None)
            .await
    }

    async fn refund(&self, m: &Merchant, id: &str, amount: u64, key: &str) -> Reply {
        let path = format!("/v1/payments/{id}/refunds");
        let body = json!({"amount": amount});
        self.call(
            Function::PaymentRequest,
            "POST",
            &path,
            &m.key,
            Some(key),
            Some(body),
        )
        .await
    }

    async fn pending_of(&self, token: &str) -> Reply {
        self.call(
            Function::Confirmation,
            "GET",
            "/v1/pending-payments",
            token,
            None,
            None,
        )
        .await
    }

    async fn device(&self, device: &Device) -> twochan_domain::ports::Device {
        self.ctx
            .store
            .device(&UniqueCode::try_from(device.code()).unwrap())
            .await
            .expect("read the device")
            .expect("the device item")
    }

    async fn payment(&self, id: &str) -> Payment {
        self.ctx
            .store
            .payment(&PaymentId::try_from(id).unwrap())
            .await
            .expect("read the payment")
            .expect("the payment")
    }

    async fn slot(&self, m: &Merchant, key: &str) -> Option<SlotRecord> {
        let slot = PaymentSlot::of(&m.id, &IdempotencyKey::try_from(key).unwrap());
        self.ctx.store.slot(&slot).await.expect("read the slot")
    }

    /// A pending payment on `p`'s device, confirmed by its phone (not settled: the test's queue).
    async fn confirmed(&self, m: &Merchant, p: &mut Paired, amount: u64) -> Payment {
        let key = unique_id("k-");
        let r = retried("pay", || self.pay(m, &p.device, amount, &key)).await;
        assert_eq!(r.status, 201, "{r:?}");
        let (code, counter) = p.device.authorize(&r.body);
        let id = r.str("payment_id");
        let c = retried("confirm", || self.confirm(&p.token, &id, &code, &counter)).await;
        assert_eq!(c.status, 200, "{c:?}");
        self.payment(&id).await
    }

    /// Settles one confirmed payment as the settlement function does, again while the layer
    /// makes its transaction give up.
    async fn settle(&self, p: &Payment) {
        let message = SettlementMessage::for_payment(p, Timestamp::now());
        for _ in 0..20 {
            match self
                .ctx
                .store
                .settle_group(std::slice::from_ref(&message), Timestamp::now())
                .await
            {
                Ok(outcomes) => match &outcomes[..] {
                    [Ok(Settlement::Settled | Settlement::AlreadySettled)] => return,
                    [Err(DomainError::Unavailable(_))] => {}
                    other => panic!("settle {}: {other:?}", p.payment_id),
                },
                Err(DomainError::Unavailable(_)) => {}
                Err(e) => panic!("settle {}: {e:?}", p.payment_id),
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        panic!("settle {}: never settled", p.payment_id);
    }

    async fn raw(&self, pk: String, sk: &str) -> Option<BTreeMap<String, AttributeValue>> {
        self.ctx
            .dynamodb
            .get_item()
            .table_name(&self.ctx.table)
            .key("pk", AttributeValue::S(pk))
            .key("sk", AttributeValue::S(sk.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get item")
            .item
            .map(|i| i.into_iter().collect())
    }

    /// The merchant's balance in KRW: (settled, count, refunded, net).
    async fn krw_balance(&self, m: &Merchant) -> (u64, u64, u64, u64) {
        let krw = Currency::try_from("KRW").unwrap();
        self.ctx
            .store
            .balances(&m.id)
            .await
            .expect("balances")
            .into_iter()
            .find(|b| b.currency == krw)
            .map(|b| {
                (
                    b.settled_amount,
                    b.settled_count,
                    b.refunded_amount,
                    b.net_amount,
                )
            })
            .unwrap_or_default()
    }
}

fn payment_body(device: &Device, amount: u64) -> Value {
    json!({"unique_code": device.code(), "beacon_proof": device.beacon().proof,
           "amount": amount, "currency": "KRW", "pos_id": "pos-01"})
}

/// One request through a handler of `app`, as API Gateway hands it over.
async fn call_on(
    app: &App<DynamoStore, SqsSettlementQueue, SqsEventQueue>,
    function: Function,
    method: &str,
    path: &str,
    bearer: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let extra: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    let resp = handle(
        app,
        function,
        request(method, path, bearer, &extra, body.as_ref()),
    )
    .await;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (retry_after, replayed) = (header("retry-after"), header("idempotent-replayed"));
    let (status, body) = answer(&resp);
    Reply {
        status,
        body,
        retry_after,
        replayed: replayed.as_deref() == Some("true"),
    }
}

async fn stats(proxy: &str) -> StatsSnapshot {
    reqwest::get(format!("{proxy}{STATS_PATH}"))
        .await
        .expect("the stack's conflict proxy answers (make up)")
        .json()
        .await
        .expect("the proxy's counters")
}

/// Confirm (phone, right code), decline (phone) and cancel (merchant) of one pending payment at
/// once: three transactions on the payment and its device. Exactly one of them wins, at once or
/// after the 503'd ones are retried; the stored status is the winner's and the device agrees
/// (lock released; the counter moved only by a confirmation).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_decline_and_cancel_of_one_payment_race() {
    let mut w = World::new("confirm vs decline vs cancel").await;
    let m = w.merchant().await;
    let mut p = w.paired().await;
    let finished = [(200, ""), (409, "payment_not_pending")];
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let key = unique_id("k-");
        let created = w.pay(&m, &p.device, 100 + round as u64, &key).await;
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.str("payment_id");
        let (code, counter) = p.device.authorize(&created.body);
        let seen = w.device(&p.device).await;
        let (c, d, x) = tokio::join!(
            w.confirm(&p.token, &id, &code, &counter),
            async {
                stagger(round, 1).await;
                w.decline(&p.token, &id).await
            },
            async {
                stagger(round, 2).await;
                w.cancel(&m, &id).await
            },
        );
        within("confirm", &c, &finished);
        within("decline", &d, &finished);
        within("cancel", &x, &finished);
        w.count_503(&[&c, &d, &x]);
        let first_wins = [&c, &d, &x].iter().filter(|r| r.status == 200).count();
        assert!(first_wins <= 1, "two winners: {c:?} {d:?} {x:?}");
        // A 503 wrote nothing: its retry decides on what is stored now.
        let again = |r: &Reply| r.status == 503;
        let c = if again(&c) {
            retried("confirm", || w.confirm(&p.token, &id, &code, &counter)).await
        } else {
            c
        };
        let d = if again(&d) {
            retried("decline", || w.decline(&p.token, &id)).await
        } else {
            d
        };
        let x = if again(&x) {
            retried("cancel", || w.cancel(&m, &id)).await
        } else {
            x
        };
        let winners: Vec<(&str, &Reply)> = [("confirmed", &c), ("declined", &d), ("canceled", &x)]
            .into_iter()
            .filter(|(_, r)| r.status == 200)
            .collect();
        assert_eq!(winners.len(), 1, "one winner: {c:?} {d:?} {x:?}");
        let (status, reply) = winners[0];
        assert_eq!(reply.str("status"), status, "{reply:?}");
        let stored = w.payment(&id).await;
        assert_eq!(stored.status.as_str(), status, "stored {stored:?}");
        let device = w.device(&p.device).await;
        assert_eq!(device.pending, None, "the lock goes with the winner");
        let expected_counter = if status == "confirmed" {
            counter.parse::<u64>().unwrap()
        } else {
            seen.last_counter.get()
        };
        assert_eq!(device.last_counter.get(), expected_counter);
        assert_eq!(device.failed_auth, 0);
    }
    w.finish(round).await;
}

/// Three wrong codes and the right one on one payment at once: wrong-code and confirm
/// transactions on the payment and its device. Every wrong code answered 422 was counted once on
/// the payment (and on the device until the right code reset it); none answered otherwise was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_codes_race_the_right_code() {
    let mut w = World::new("wrong codes vs the right code").await;
    let m = w.merchant().await;
    let mut p = w.paired().await;
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let created = w
            .pay(&m, &p.device, 500 + round as u64, &unique_id("k-"))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.str("payment_id");
        let (code, counter) = p.device.authorize(&created.body);
        let wrong: Vec<String> = (0..3)
            .map(|i| format!("{:064x}", round * 16 + i + 1))
            .collect();
        let (right, wrongs) = tokio::join!(
            async {
                stagger(round, 3).await;
                w.confirm(&p.token, &id, &code, &counter).await
            },
            join_all(wrong.iter().enumerate().map(|(i, bad)| {
                let (w, id, token, counter) = (&w, &id, &p.token, &counter);
                async move {
                    stagger(round, i).await;
                    w.confirm(token, id, bad, counter).await
                }
            })),
        );
        within("the right code", &right, &[(200, "")]);
        for r in &wrongs {
            within(
                "a wrong code",
                r,
                &[(422, "invalid_auth_code"), (409, "payment_not_pending")],
            );
        }
        let mut firsts: Vec<&Reply> = wrongs.iter().collect();
        firsts.push(&right);
        w.count_503(&firsts);
        let counted = wrongs
            .iter()
            .filter(|r| r.is(422, "invalid_auth_code"))
            .count() as u32;
        let stored = w.payment(&id).await;
        let device = w.device(&p.device).await;
        assert_eq!(
            stored.failed_attempts, counted,
            "every 422 counted once on the payment, nothing else: {wrongs:?}"
        );
        if right.status == 200 {
            assert_eq!(stored.status, PaymentStatus::Confirmed);
            assert_eq!(device.failed_auth, 0, "the accepted code resets the device");
        } else {
            assert_eq!(stored.status, PaymentStatus::Pending);
            assert_eq!(
                device.failed_auth, counted,
                "every 422 counted on the device"
            );
            let r = retried("confirm", || w.confirm(&p.token, &id, &code, &counter)).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(w.device(&p.device).await.failed_auth, 0);
        }
        let device = w.device(&p.device).await;
        assert_eq!(device.last_counter.get(), counter.parse::<u64>().unwrap());
        assert_eq!(device.pending, None);
    }
    w.finish(round).await;
}

/// The phone registers its device again (a new token: a transaction on the device and the
/// tokens) while POS terminals ask for payments on its code (the lock: a single `UpdateItem` on
/// the device, refused while the registration is in flight). One payment is made however the
/// 503s fall; a 503'd request retried with its key gets 201 or the kept `409 device_busy`; the
/// new token is the only one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_requests_meet_a_re_registration_of_their_code() {
    let mut w = World::new("payment requests vs re-registration").await;
    let m = w.merchant().await;
    let mut p = w.paired().await;
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let keys: Vec<String> = (0..4).map(|_| unique_id("k-")).collect();
        let old_token = p.token.clone();
        // Every other round the requests go the moment the registration sends its transaction
        // (its 4th call: token, challenge, device and terminal, then the transaction), so that
        // they meet it in flight; the other rounds they go at staggered times.
        let go = Arc::new(tokio::sync::Semaphore::new(0));
        let probe = if round % 2 == 0 {
            let go = go.clone();
            Probe::with_hook(3, move || go.add_permits(16))
        } else {
            go.add_permits(16);
            Probe::new()
        };
        let app = w.app_with(&probe);
        let (reg, pays) = tokio::join!(
            async {
                let r = w
                    .register_on(&app, &p.device, &p.terminal, &old_token)
                    .await;
                go.add_permits(16);
                r
            },
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (w, m, device, go) = (&w, &m, &p.device, &go);
                async move {
                    drop(go.acquire().await.expect("open"));
                    if round % 2 == 1 {
                        stagger(round, i + 2).await;
                    }
                    w.pay(m, device, 1_000 + i as u64, key).await
                }
            })),
        );
        within("re-registration", &reg, &[(200, "")]);
        let asked = [(201, ""), (409, "device_busy")];
        for r in &pays {
            within("payment request", r, &asked);
        }
        let mut firsts: Vec<&Reply> = pays.iter().collect();
        firsts.push(&reg);
        w.count_503(&firsts);
        // The registration used its challenge up whatever it answered: a retry asks for another.
        let reg = if reg.status == 503 {
            retried("re-registration", || {
                w.register(&p.device, &p.terminal, &old_token)
            })
            .await
        } else {
            reg
        };
        assert_eq!(reg.status, 200, "{reg:?}");
        p.token = reg.str("terminal_token");
        let finals = w
            .retried_payments(&m, &p.device, 1_000, &keys, &pays, &asked)
            .await;
        let made: BTreeSet<String> = finals
            .iter()
            .filter(|r| r.status == 201)
            .map(|r| r.str("payment_id"))
            .collect();
        assert_eq!(made.len(), 1, "one payment on the code: {finals:?}");
        let id = made.into_iter().next().unwrap();
        let device = w.device(&p.device).await;
        assert_eq!(
            device.pending.as_ref().map(|(held, _)| held.to_string()),
            Some(id.clone()),
            "the lock is the payment's"
        );
        assert_eq!(w.payment(&id).await.status, PaymentStatus::Pending);
        // Every key keeps its answer: the same again, replayed.
        for (i, (key, r)) in keys.iter().zip(&finals).enumerate() {
            let again = w.pay(&m, &p.device, 1_000 + i as u64, key).await;
            assert_eq!(
                (again.status, again.replayed),
                (r.status, true),
                "{again:?}"
            );
            assert_eq!(again.body["payment_id"], r.body["payment_id"]);
        }
        // Only the newest token is current, and its phone sees the payment.
        let seen = w.pending_of(&p.token).await;
        assert_eq!(seen.status, 200, "{seen:?}");
        assert_eq!(seen.body["payments"][0]["payment_id"], json!(id));
        assert!(w.pending_of(&old_token).await.is(401, "unauthorized"));
        let freed = retried("cancel", || w.cancel(&m, &id)).await;
        assert_eq!(freed.status, 200, "{freed:?}");
    }
    w.finish(round).await;
}

/// The phone deregisters its device while POS terminals ask for payments on it: the lock's
/// `UpdateItem` and the payment's `PutItem` into its slot meet the deregistration's transaction
/// (device, token, terminal, and the lock's payment or its slot). At the end the code is free,
/// no payment of it is left pending (each one answered 201 was canceled), and every key keeps the
/// answer its request finally got.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_requests_race_the_deregistration_of_their_code() {
    let mut w = World::new("payment requests vs deregistration").await;
    let m = w.merchant().await;
    let asked = [(201, ""), (404, "unknown_device"), (409, "device_busy")];
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let p = w.paired().await;
        let keys: Vec<String> = (0..4).map(|_| unique_id("k-")).collect();
        let (gone, pays) = tokio::join!(
            async {
                stagger(round, 0).await;
                w.deregister(&p.token, &p.device).await
            },
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (w, m, device) = (&w, &m, &p.device);
                async move {
                    stagger(round, i + 1).await;
                    w.pay(m, device, 2_000 + i as u64, key).await
                }
            })),
        );
        within("deregistration", &gone, &[(204, "")]);
        for r in &pays {
            within("payment request", r, &asked);
        }
        let mut firsts: Vec<&Reply> = pays.iter().collect();
        firsts.push(&gone);
        w.count_503(&firsts);
        if gone.status == 503 {
            let r = retried("deregistration", || w.deregister(&p.token, &p.device)).await;
            assert_eq!(r.status, 204, "{r:?}");
        }
        let finals = w
            .retried_payments(&m, &p.device, 2_000, &keys, &pays, &asked)
            .await;
        let device = w.device(&p.device).await;
        assert!(device.registration.is_none(), "deregistered: {device:?}");
        assert_eq!(device.pending, None, "no lock left: {device:?}");
        assert!(w.pending_of(&p.token).await.is(401, "unauthorized"));
        let terminal = w
            .raw(format!("TERMINAL#{}", p.terminal), "TERMINAL")
            .await
            .expect("the terminal item");
        assert_eq!(
            terminal.get("devices").and_then(|v| v.as_n().ok()),
            Some(&"0".to_owned()),
            "the terminal holds nothing: {terminal:?}"
        );
        for (key, r) in keys.iter().zip(&finals) {
            match (r.status, w.slot(&m, key).await) {
                (201, Some(SlotRecord::Payment { payment, .. })) => {
                    assert_eq!(payment.payment_id.as_str(), r.str("payment_id"));
                    assert_eq!(
                        payment.status,
                        PaymentStatus::Canceled,
                        "a payment answered 201 on a deregistered code is canceled"
                    );
                }
                (status, Some(SlotRecord::Rejected { response, .. })) if status != 201 => {
                    assert_eq!(response.status, status, "the key keeps {response:?}");
                }
                (_, kept) => panic!("key {key} answered {r:?} but keeps {kept:?}"),
            }
        }
    }
    w.finish(round).await;
}

/// The phone confirms a payment (right code) while it deregisters the payment's code: the
/// confirmation's transaction (payment + device) and the deregistration's (device, token,
/// terminal, and the payment it cancels) meet on the device and the payment. The payment ends
/// `confirmed` exactly when a confirmation was answered 200, `canceled` otherwise; the code ends
/// free either way, and the device counter moved only with the confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_races_the_deregistration_of_its_code() {
    let mut w = World::new("confirm vs deregistration").await;
    let m = w.merchant().await;
    let confirmed = [
        (200, ""),
        (401, "unauthorized"),
        (409, "payment_not_pending"),
    ];
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let mut p = w.paired().await;
        let created = w
            .pay(&m, &p.device, 700 + round as u64, &unique_id("k-"))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.str("payment_id");
        let (code, counter) = p.device.authorize(&created.body);
        let (c, gone) = tokio::join!(
            async {
                stagger(round, 0).await;
                w.confirm(&p.token, &id, &code, &counter).await
            },
            async {
                stagger(round, 1).await;
                w.deregister(&p.token, &p.device).await
            },
        );
        within("confirm", &c, &confirmed);
        within("deregistration", &gone, &[(204, "")]);
        w.count_503(&[&c, &gone]);
        let c = if c.status == 503 {
            retried("confirm", || w.confirm(&p.token, &id, &code, &counter)).await
        } else {
            c
        };
        within("confirm, retried", &c, &confirmed);
        if gone.status == 503 {
            let r = retried("deregistration", || w.deregister(&p.token, &p.device)).await;
            assert_eq!(r.status, 204, "{r:?}");
        }
        let stored = w.payment(&id).await;
        let device = w.device(&p.device).await;
        assert!(device.registration.is_none(), "deregistered: {device:?}");
        assert_eq!(device.pending, None, "no lock left: {device:?}");
        if c.status == 200 {
            assert_eq!(stored.status, PaymentStatus::Confirmed, "{c:?}");
            assert_eq!(device.last_counter.get(), counter.parse::<u64>().unwrap());
        } else {
            assert_eq!(stored.status, PaymentStatus::Canceled, "{c:?}");
            assert!(device.last_counter.get() < counter.parse::<u64>().unwrap());
        }
    }
    w.finish(round).await;
}

/// A payment request that has taken its code's lock and is about to store its payment while the
/// phone deregisters the code: the deregistration finds the lock without its payment and keeps a
/// 404 in the request's slot, in the transaction that frees the device. The request's `PutItem`
/// into that slot comes before that transaction, during it (refused by the layer) or after it
/// (the slot is taken): the request pauses before the `PutItem` for a different time each round
/// (a failpoint hook), until the layer has refused such a put. Whatever it answers, the code ends
/// free, the key keeps one answer (a canceled payment's 201, or the 404), and a retry with the key
/// gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_is_stored_while_its_code_is_deregistered() {
    let mut w = World::new("payment put vs the deregistration's kept 404").await;
    let m = w.merchant().await;
    let asked = [(201, ""), (404, "unknown_device")];
    let mut round = 0;
    while round < MIN_ROUNDS || (round < MAX_ROUNDS && !w.refused().await.2.contains_key("PutItem"))
    {
        round += 1;
        let p = w.paired().await;
        let key = unique_id("k-");
        let locked = Arc::new(tokio::sync::Notify::new());
        // Calls of the request: BatchGetItem (caller and device), UpdateItem (lock), PutItem.
        let delay = Duration::from_millis(2 + (round as u64 * 7) % 90);
        let probe = {
            let locked = locked.clone();
            Probe::with_hook(2, move || {
                locked.notify_one();
                // The worker's other tasks (connections the deregistration uses) move on.
                tokio::task::block_in_place(|| std::thread::sleep(delay));
            })
        };
        let app = w.app_with(&probe);
        let body = payment_body(&p.device, 800);
        // A task of its own: the hook's pause blocks its thread, not the deregistration.
        let request = {
            let (bearer, key) = (m.key.clone(), key.clone());
            tokio::spawn(async move {
                call_on(
                    &app,
                    Function::PaymentRequest,
                    "POST",
                    "/v1/payments",
                    &bearer,
                    Some(&key),
                    Some(body),
                )
                .await
            })
        };
        locked.notified().await;
        let gone = w.deregister(&p.token, &p.device).await;
        let paid = request.await.expect("the payment request's task");
        within("payment request", &paid, &asked);
        within("deregistration", &gone, &[(204, "")]);
        w.count_503(&[&paid, &gone]);
        if gone.status == 503 {
            let r = retried("deregistration", || w.deregister(&p.token, &p.device)).await;
            assert_eq!(r.status, 204, "{r:?}");
        }
        let paid = if paid.status == 503 {
            retried("payment request", || w.pay(&m, &p.device, 800, &key)).await
        } else {
            paid
        };
        within("payment request, retried", &paid, &asked);
        let device = w.device(&p.device).await;
        assert!(device.registration.is_none(), "deregistered: {device:?}");
        assert_eq!(device.pending, None, "no lock left: {device:?}");
        match (paid.status, w.slot(&m, &key).await) {
            (201, Some(SlotRecord::Payment { payment, .. })) => {
                assert_eq!(payment.payment_id.as_str(), paid.str("payment_id"));
                assert_eq!(payment.status, PaymentStatus::Canceled);
            }
            (404, Some(SlotRecord::Rejected { response, .. })) => {
                assert_eq!(response.status, 404, "{response:?}");
            }
            (_, kept) => panic!("answered {paid:?} but the key keeps {kept:?}"),
        }
        let again = w.pay(&m, &p.device, 800, &key).await;
        assert_eq!(
            (again.status, again.replayed),
            (paid.status, true),
            "{again:?}"
        );
        assert_eq!(again.body["payment_id"], paid.body["payment_id"]);
    }
    w.finish(round).await;
}

/// A pending payment whose lifetime ran out: its confirmation (410) and its cancel (409) record
/// the expiry and try to free its lock (a transaction on the device), while new payment requests
/// take the lapsed lock over (a single `UpdateItem` on the device). One new payment holds the
/// code in the end; the old one was never confirmed nor canceled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lapsed_lock_is_taken_over_while_its_expiry_is_recorded() {
    let mut w = World::new("lapsed lock takeover vs expiry").await;
    let m = w.merchant().await;
    let mut p = w.paired().await;
    let asked = [(201, ""), (409, "device_busy")];
    let mut round = 0;
    // Recording the expiry and freeing its lock are two single writes, as is the takeover: no
    // transaction is involved, so the layer has nothing to refuse; the race is run all the same.
    while round < 8 {
        round += 1;
        let old = w
            .pay(&m, &p.device, 3_000 + round as u64, &unique_id("k-"))
            .await;
        assert_eq!(old.status, 201, "{old:?}");
        let old_id = old.str("payment_id");
        let (code, counter) = p.device.authorize(&old.body);
        w.ctx.backdate(&old.body).await;
        let keys: Vec<String> = (0..3).map(|_| unique_id("k-")).collect();
        let (c, x, pays) = tokio::join!(
            w.confirm(&p.token, &old_id, &code, &counter),
            w.cancel(&m, &old_id),
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (w, m, device) = (&w, &m, &p.device);
                async move {
                    stagger(round, i + 1).await;
                    w.pay(m, device, 4_000 + i as u64, key).await
                }
            })),
        );
        within(
            "confirm of a lapsed payment",
            &c,
            &[(410, "payment_expired")],
        );
        within(
            "cancel of a lapsed payment",
            &x,
            &[(409, "payment_not_pending")],
        );
        for r in &pays {
            within("payment request", r, &asked);
        }
        let mut firsts: Vec<&Reply> = pays.iter().collect();
        firsts.extend([&c, &x]);
        w.count_503(&firsts);
        let finals = w
            .retried_payments(&m, &p.device, 4_000, &keys, &pays, &asked)
            .await;
        let made: BTreeSet<String> = finals
            .iter()
            .filter(|r| r.status == 201)
            .map(|r| r.str("payment_id"))
            .collect();
        assert_eq!(made.len(), 1, "one new payment: {finals:?}");
        let id = made.into_iter().next().unwrap();
        let device = w.device(&p.device).await;
        assert_eq!(
            device.pending.as_ref().map(|(held, _)| held.to_string()),
            Some(id.clone())
        );
        let stale = w.payment(&old_id).await;
        assert!(
            matches!(
                stale.status,
                PaymentStatus::Expired | PaymentStatus::Pending
            ) && stale.effective_status(Timestamp::now()) == PaymentStatus::Expired,
            "the lapsed payment only expires: {stale:?}"
        );
        let freed = retried("cancel", || w.cancel(&m, &id)).await;
        assert_eq!(freed.status, 200, "{freed:?}");
    }
    w.finish_single_writes(round).await;
}

/// Six refunds of 300 with their own keys and three twins of one key for 100, at once, on a
/// settled payment of 1000: refund transactions on the refund slot, the payment and the balance.
/// The contract notes say a refund that loses a race reads again and decides again, and twins
/// all get the one refund's 201: so exactly three 300s and the 100 are made, every other answer
/// is `422 refund_exceeds_payment`, none is a 503, and payment, refunds and balance agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_of_one_payment_race_each_other_and_their_twins() {
    let mut w = World::new("refunds vs refunds and twins").await;
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let m = w.merchant().await;
        let mut p = w.paired().await;
        let paid = w.confirmed(&m, &mut p, 1_000).await;
        w.settle(&paid).await;
        let id = paid.payment_id.to_string();
        let keys: Vec<String> = (0..6).map(|_| unique_id("rk-")).collect();
        let twin_key = unique_id("rk-twin-");
        let (own, twins) = tokio::join!(
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (w, m, id) = (&w, &m, &id);
                async move {
                    stagger(round, i).await;
                    w.refund(m, id, 300, key).await
                }
            })),
            join_all((0..3).map(|i| {
                let (w, m, id, key) = (&w, &m, &id, &twin_key);
                async move {
                    stagger(round, i + 2).await;
                    w.refund(m, id, 100, key).await
                }
            })),
        );
        let firsts: Vec<&Reply> = own.iter().chain(&twins).collect();
        w.count_503(&firsts);
        for r in &own {
            assert!(
                r.is(201, "") || r.is(422, "refund_exceeds_payment"),
                "a refund that lost a race decides again, it does not answer {} {}",
                r.status,
                r.body
            );
        }
        let made: Vec<&Reply> = own.iter().filter(|r| r.status == 201).collect();
        assert_eq!(made.len(), 3, "three of 300 fit beside the 100: {own:?}");
        let twin_id = twins[0].str("refund_id");
        for r in &twins {
            assert_eq!(r.status, 201, "every twin gets the one refund: {twins:?}");
            assert_eq!(r.str("refund_id"), twin_id, "{twins:?}");
        }
        assert_eq!(twins.iter().filter(|r| !r.replayed).count(), 1, "{twins:?}");
        let stored = w.payment(&id).await;
        assert_eq!(stored.refunded_amount, 1_000, "{stored:?}");
        let mut ids: Vec<String> = made.iter().map(|r| r.str("refund_id")).collect();
        ids.push(twin_id);
        ids.sort();
        let listed = w
            .call(
                Function::PaymentRequest,
                "GET",
                &format!("/v1/payments/{id}/refunds"),
                &m.key,
                None,
                None,
            )
            .await;
        let mut listed: Vec<String> = listed.body["refunds"]
            .as_array()
            .expect("refunds")
            .iter()
            .map(|r| r["refund_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, ids, "the stored refunds are the ones answered 201");
        assert_eq!(w.krw_balance(&m).await, (1_000, 1, 1_000, 0));
        // Each key keeps its answer.
        for (key, r) in keys.iter().zip(&own) {
            let again = w.refund(&m, &id, 300, key).await;
            assert_eq!(
                (again.status, again.replayed),
                (r.status, true),
                "{again:?}"
            );
            assert_eq!(again.body, r.body);
        }
    }
    w.finish(round).await;
}

/// Refunds of one settled payment while four other payments of the same merchant and currency
/// settle, each in its own settlement transaction: refunds and settlements all write the one
/// balance item. Settlement retries its conflicts; a refund reads again and decides again. At the
/// end the balance is exactly the settled payments and the refunds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_and_settlements_meet_on_the_balance() {
    let mut w = World::new("refunds vs settlements on the balance").await;
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let m = w.merchant().await;
        let mut p = w.paired().await;
        let first = w.confirmed(&m, &mut p, 1_000).await;
        w.settle(&first).await;
        let mut others = Vec::new();
        for i in 0..4 {
            others.push(w.confirmed(&m, &mut p, 10 + i).await);
        }
        let id = first.payment_id.to_string();
        let keys: Vec<String> = (0..3).map(|_| unique_id("rk-")).collect();
        let (refunds, _) = tokio::join!(
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (w, m, id) = (&w, &m, &id);
                async move {
                    stagger(round, i).await;
                    w.refund(m, id, 200, key).await
                }
            })),
            join_all(others.iter().enumerate().map(|(i, paid)| {
                let w = &w;
                async move {
                    stagger(round, i + 1).await;
                    w.settle(paid).await
                }
            })),
        );
        let firsts: Vec<&Reply> = refunds.iter().collect();
        w.count_503(&firsts);
        for r in &refunds {
            assert_eq!(r.status, 201, "each refund fits: {r:?}");
        }
        for paid in &others {
            let stored = w.payment(paid.payment_id.as_str()).await;
            assert_eq!(stored.status, PaymentStatus::Settled);
            let legs = w.ctx.store.ledger_entries(&paid.payment_id).await.unwrap();
            assert_eq!(legs.len(), 2, "{legs:?}");
        }
        let settled: u64 = 1_000 + others.iter().map(|p| p.amount.minor_units()).sum::<u64>();
        assert_eq!(
            w.krw_balance(&m).await,
            (settled, 5, 600, settled - 600),
            "the balance is the settled payments less the refunds"
        );
        assert_eq!(w.payment(&id).await.refunded_amount, 600);
    }
    w.finish(round).await;
}

/// On one terminal at once: its phone deregisters device A (A's token), registers device B with
/// A's token as its authority, and registers A again with that token. Device, terminal and
/// tokens are written together by each transaction. Whatever wins, the terminal's holding count
/// is the number of devices registered to it, a token exists exactly while it is its device's
/// current one, and each success is visible in the end unless a later success undid it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_and_a_deregistration_on_one_terminal_race() {
    let mut w = World::new("registrations vs deregistration on one terminal").await;
    let registration = [
        (200, ""),
        (201, ""),
        (401, "unauthorized"),
        (409, "terminal_id_taken"),
        (409, "device_already_registered"),
    ];
    let mut round = 0;
    while !w.enough(round).await {
        round += 1;
        let a = w.paired().await;
        let b = w.ctx.device();
        let (gone, added, again) = tokio::join!(
            w.deregister(&a.token, &a.device),
            async {
                stagger(round, 1).await;
                w.register(&b, &a.terminal, &a.token).await
            },
            async {
                stagger(round, 2).await;
                w.register(&a.device, &a.terminal, &a.token).await
            },
        );
        within("deregistration", &gone, &[(204, ""), (401, "unauthorized")]);
        within("registering another device", &added, &registration);
        within("registering the same device again", &again, &registration);
        w.count_503(&[&gone, &added, &again]);
        let dev_a = w.device(&a.device).await;
        let dev_b = w.ctx.store.device(&b.code).await.expect("read device B");
        let here = |d: Option<&twochan_domain::ports::Device>| {
            d.and_then(|d| d.registration.as_ref())
                .filter(|r| r.terminal_id.as_str() == a.terminal)
                .map(|r| r.token_hash.as_str().to_owned())
        };
        let (current_a, current_b) = (here(Some(&dev_a)), here(dev_b.as_ref()));
        let terminal = w
            .raw(format!("TERMINAL#{}", a.terminal), "TERMINAL")
            .await
            .expect("the terminal item");
        let holding = terminal
            .get("devices")
            .and_then(|v| v.as_n().ok())
            .cloned()
            .unwrap_or_else(|| "0".into());
        let registered = u32::from(current_a.is_some()) + u32::from(current_b.is_some());
        assert_eq!(
            holding,
            registered.to_string(),
            "holding count {holding} with A {current_a:?}, B {current_b:?}; answers {gone:?} {added:?} {again:?}"
        );
        let mut tokens = vec![a.token.clone()];
        tokens.extend(
            [&added, &again]
                .iter()
                .filter(|r| r.status == 200 || r.status == 201)
                .map(|r| r.str("terminal_token")),
        );
        for token in &tokens {
            let hash = SecretHash::of(token);
            let stored = w.raw(format!("TOKEN#{}", hash.as_str()), "TOKEN").await;
            let current = [&current_a, &current_b]
                .iter()
                .any(|c| c.as_deref() == Some(hash.as_str()));
            assert_eq!(
                stored.is_some(),
                current,
                "a token exists exactly while it is current; answers {gone:?} {added:?} {again:?}"
            );
        }
        if gone.status == 204 {
            assert_eq!(
                current_a, None,
                "A was deregistered and nothing could bring it back"
            );
        }
        if added.status == 201 {
            assert_eq!(
                current_b,
                Some(
                    SecretHash::of(&added.str("terminal_token"))
                        .as_str()
                        .to_owned()
                )
            );
        }
        if again.status == 200 && gone.status != 204 {
            assert_eq!(
                current_a,
                Some(
                    SecretHash::of(&again.str("terminal_token"))
                        .as_str()
                        .to_owned()
                )
            );
        }
    }
    w.finish(round).await;
}

/// `PUT` (two URLs) and `DELETE` of a merchant's webhook endpoint at once. Only single writes
/// touch the endpoint item and no transaction ever holds it, so the layer has nothing to refuse
/// here (this test does not require a refusal): the point is that each answer is 200 or 204 and
/// the stored endpoint, if any, is one `PUT`'s URL with that same `PUT`'s secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_endpoint_writes_race() {
    let w = World::new("webhook endpoint PUT vs PUT vs DELETE").await;
    let m = w.merchant().await;
    let seal = SecretSeal::from_issuer_key(&w.ctx.master);
    let urls = ["http://127.0.0.1:9/one", "http://127.0.0.1:9/two"];
    for round in 0..8 {
        let put = |i: usize| {
            let w = &w;
            let (key, url) = (&m.key, urls[i]);
            async move {
                stagger(round, i).await;
                w.call(
                    Function::PaymentRequest,
                    "PUT",
                    "/v1/webhook-endpoint",
                    key,
                    None,
                    Some(json!({ "url": url })),
                )
                .await
            }
        };
        let (one, two, gone) = tokio::join!(put(0), put(1), async {
            stagger(round, 2).await;
            w.call(
                Function::PaymentRequest,
                "DELETE",
                "/v1/webhook-endpoint",
                &m.key,
                None,
                None,
            )
            .await
        });
        within("PUT", &one, &[(200, "")]);
        within("PUT", &two, &[(200, "")]);
        within("DELETE", &gone, &[(204, "")]);
        let stored = w
            .ctx
            .store
            .endpoint(&m.id)
            .await
            .expect("read the endpoint");
        if let Some(e) = stored {
            let secret = seal
                .open(&e.sealed_secret, m.id.as_str())
                .expect("the stored secret opens");
            let from = [&one, &two]
                .into_iter()
                .find(|r| r.str("url") == e.url.as_str())
                .expect("the stored URL is one PUT's");
            assert_eq!(
                from.str("secret"),
                secret.as_str(),
                "URL and secret of one PUT"
            );
        }
    }
    let (t, wr, by_op) = w.refused().await;
    println!(
        "conflicts: {}: 8 rounds; the layer refused {t} transactions and {wr} single writes \
         during it ({by_op:?}: none of them can be this test's)",
        w.name
    );
    let _ = w
        .ctx
        .sqs
        .delete_queue()
        .queue_url(&w.queue_url)
        .send()
        .await;
}

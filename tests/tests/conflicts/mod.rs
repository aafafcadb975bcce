//! Every set of items that concurrent requests write together, raced through the real handlers
//! (in this process, as `sim.rs` runs them) over a conflict-faithful DynamoDB proxy of the test's
//! own (`tools/src/conflict_proxy/`, with the stack's hold). There,
//! as on DynamoDB, a transaction that meets an item of another transaction in flight is cancelled
//! (`TransactionConflict`) and a single-item write on such an item is refused
//! (`TransactionConflictException`). Whatever the layer refuses, each request must still answer
//! within its route's contract — retried inside the handler, a 409 or 422, or a 503 with
//! `Retry-After` (nothing was written, a retry is safe) — never a 500, and no answer may be
//! contradicted by what is stored (no lost write).
//!
//! | race | items written together | test (module) |
//! | --- | --- | --- |
//! | confirm vs decline vs cancel of one payment | payment + device (three transactions) | `payments::confirm_decline_and_cancel_of_one_payment_race` |
//! | wrong codes vs the right code on one payment | payment + device (wrong-code and confirm transactions) | `payments::wrong_codes_race_the_right_code` |
//! | payment requests vs re-registration of the code | device (lock `UpdateItem` vs registration transaction) | `devices::payment_requests_meet_a_re_registration_of_their_code` |
//! | payment requests vs deregistration | device (lock `UpdateItem` vs the deregistration's transaction) | `devices::payment_requests_race_the_deregistration_of_their_code` |
//! | a payment's `PutItem` vs the deregistration that keeps a 404 in its slot | the request's payment slot (idempotency slot) + device | `devices::a_payment_is_stored_while_its_code_is_deregistered` |
//! | confirm vs deregistration | device + payment (confirmation vs deregistration transactions) | `devices::confirm_races_the_deregistration_of_its_code` |
//! | taking over a lapsed lock vs recording the expiry | device (lock `UpdateItem` vs the expiry's lock release, both single writes), payment | `payments::a_lapsed_lock_is_taken_over_while_its_expiry_is_recorded` (no refusal expected) |
//! | refunds with several keys and twins of one key | refund slot + payment + balance (refund transactions) | `ledger::refunds_of_one_payment_race_each_other_and_their_twins` |
//! | refunds vs settlements of the same merchant and currency | balance (+ payments) | `ledger::refunds_and_settlements_meet_on_the_balance` |
//! | deregistration vs registering another device vs registering the same again, one terminal | device + terminal + tokens | `devices::registrations_and_a_deregistration_on_one_terminal_race` |
//! | webhook endpoint `PUT` vs `PUT` vs `DELETE` | the endpoint item (single writes only: no transaction ever holds it) | `webhooks::webhook_endpoint_writes_race` |
//!
//! Each test repeats its race until its proxy has refused at least one write or transaction
//! (`Race::until_refused`). Every AWS call of the test goes through that proxy and nothing else
//! does, so its counters are the test's own and the tests run alongside any other. Each prints a
//! `conflicts:` line with its rounds, what the proxy refused and how many answers were 503. Where
//! the window is a few milliseconds wide, a failpoint hook (`Probe::with_hook`) times one side on
//! the other: the payment's `PutItem` after the lock, the re-registration's transaction.
//!
//! Covered elsewhere: twins of one payment key (`concurrency.rs`: single writes only, which the
//! layer never refuses against each other), copies of one confirmation (`concurrency.rs`), copies
//! of one settlement message and settlement groups (`sim.rs`, `settlement.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{Harness, answer, request};
use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::future::join_all;
use serde_json::{Value, json};
use twochan_api::routes::{App, Function, handle};
use twochan_aws::{DynamoStore, SqsEventQueue, SqsSettlementQueue, failpoints::Probe};
use twochan_domain::{
    DomainError, IdempotencyKey, MerchantId, Payment, PaymentId, PaymentSlot, PaymentStatus,
    Timestamp, UniqueCode,
    crypto::SecretHash,
    ports::{
        Devices, Ledger, Payments, RegistrationChallenge, Settlement, SettlementMessage,
        SlotRecord, WebhookEndpoints,
    },
    webhook::SecretSeal,
};
use twochan_memory::conformance;
use twochan_tools::{
    Device,
    conflict_proxy::{self, DEFAULT_HOLD, RunningProxy, STATS_PATH, StatsSnapshot},
    stack::Stack,
    unique_id,
};

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

/// `first`, or for a 503 (nothing written) the answer of `f` sent again until it is not one.
async fn unless_503<F, Fut>(what: &str, first: Reply, f: F) -> Reply
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Reply>,
{
    if first.status == 503 {
        retried(what, f).await
    } else {
        first
    }
}

/// The id of the one payment a race's requests made, retried until each had an answer.
#[track_caller]
fn the_one_payment(finals: &[Reply]) -> String {
    let made: BTreeSet<String> = finals
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.str("payment_id"))
        .collect();
    assert_eq!(made.len(), 1, "one payment on the code: {finals:?}");
    made.into_iter().next().unwrap()
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

mod devices;
mod ledger;
mod payments;
mod webhooks;

/// What a race's proxy refused.
struct Refused {
    transactions: u64,
    writes: u64,
    by_operation: BTreeMap<String, u64>,
}

/// One race test's stack: the harness and handlers with every AWS call going through a conflict
/// proxy of the test's own, whose counters are then the test's alone.
struct Race {
    ctx: Harness,
    proxy: RunningProxy,
    app: App<DynamoStore, SqsSettlementQueue, SqsEventQueue>,
    /// The test's own settlement queue: no deployed function settles its payments behind its back.
    queue_url: String,
    name: &'static str,
    /// Answers 503 seen during the races (before any retry).
    unavailable: AtomicU64,
}

impl Race {
    async fn new(name: &'static str) -> Race {
        let stack = Stack::load();
        let emulator = stack
            .require("AWS_ENDPOINT_URL")
            .unwrap_or_else(|e| panic!("{e}"))
            .to_owned();
        // The stack's proxy's hold when it runs one (`make up`), so that the windows are as wide.
        let hold = match stack.get("CONFLICT_PROXY_URL") {
            Some(url) => Duration::from_millis(stats(url).await.hold_ms),
            None => DEFAULT_HOLD,
        };
        let proxy = conflict_proxy::start_ephemeral(&emulator, hold)
            .await
            .expect("start the race's conflict proxy");
        let ctx = Harness::on(stack, &proxy.url).await;
        let queue_url = ctx.scratch_queue("twochan-conflicts-").await;
        let app = App {
            store: ctx.store.clone(),
            queue: SqsSettlementQueue::new(ctx.sqs.clone(), queue_url.clone()),
            events: ctx.events(),
            allow_loopback_webhooks: true,
            issuer_keys: ctx.master.clone().into(),
            pending_ttl_seconds: 120,
        };
        Race {
            ctx,
            proxy,
            app,
            queue_url,
            name,
            unavailable: AtomicU64::new(0),
        }
    }

    /// What the proxy refused since the test began.
    fn refused(&self) -> Refused {
        let now = self.proxy.stats.snapshot();
        Refused {
            transactions: now.transactions_refused,
            writes: now.writes_refused,
            by_operation: now
                .refused_by_operation
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    /// Runs `round` (numbered from 1) `MIN_ROUNDS` times, then again until the proxy has refused
    /// something (at most `MAX_ROUNDS` in all); the race must have met a refusal.
    async fn until_refused(&self, round: impl AsyncFnMut(usize)) {
        self.until(|r| r.transactions + r.writes > 0, round).await;
    }

    /// As [`Race::until_refused`], with `done` saying when the refusals are the ones sought.
    async fn until(&self, done: impl Fn(&Refused) -> bool, mut round: impl AsyncFnMut(usize)) {
        let mut rounds = 0;
        while rounds < MIN_ROUNDS || (rounds < MAX_ROUNDS && !done(&self.refused())) {
            rounds += 1;
            round(rounds).await;
        }
        let r = self.refused();
        self.finish(rounds, "", &r).await;
        assert!(
            r.transactions + r.writes > 0,
            "{}: the layer refused nothing in {rounds} rounds: the race proved nothing",
            self.name
        );
    }

    /// For a race of single writes only, which DynamoDB never refuses against each other: runs
    /// `round` `rounds` times; the outcome checks are the test, and a refusal is not expected.
    async fn single_writes(&self, rounds: usize, mut round: impl AsyncFnMut(usize)) {
        for n in 1..=rounds {
            round(n).await;
        }
        self.finish(rounds, " of single writes", &self.refused())
            .await;
    }

    /// Prints what the race met and deletes its queue.
    async fn finish(&self, rounds: usize, what: &str, r: &Refused) {
        println!(
            "conflicts: {}: {rounds} rounds{what}; the layer refused {} transactions and {} single \
             writes ({:?}); {} answers were 503",
            self.name,
            r.transactions,
            r.writes,
            r.by_operation,
            self.unavailable.load(Ordering::Relaxed)
        );
        let _ = self
            .ctx
            .sqs
            .delete_queue()
            .queue_url(&self.queue_url)
            .send()
            .await;
    }

    /// Counts the 503s among a race's first answers.
    fn count_503(&self, replies: &[&Reply]) {
        let n = replies.iter().filter(|r| r.status == 503).count() as u64;
        self.unavailable.fetch_add(n, Ordering::Relaxed);
    }

    /// The handlers' view of the stack through clients carrying `probe` (a hook in a handler).
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

    /// After a race, a deregistration answered 503 is sent again: it must then succeed.
    async fn deregistered(&self, first: &Reply, token: &str, device: &Device) {
        let r = unless_503("deregistration", first.clone(), || {
            self.deregister(token, device)
        })
        .await;
        assert_eq!(r.status, 204, "{r:?}");
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
            let r = unless_503("payment request", r.clone(), || {
                self.pay(m, device, first_amount + i as u64, key)
            })
            .await;
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
        conformance::krw_balance(&self.ctx.store, &m.id).await
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

/// The counters of the proxy at `proxy`, over HTTP.
async fn stats(proxy: &str) -> StatsSnapshot {
    twochan_tools::http_client()
        .get(format!("{proxy}{STATS_PATH}"))
        .send()
        .await
        .expect("the stack's conflict proxy answers (make up)")
        .json()
        .await
        .expect("the proxy's counters")
}

//! Seeded fault simulation of the money path: confirmation → queue → settlement → ledger, with the
//! real handlers in this process against the emulator's DynamoDB and SQS.
//!
//! Each seed registers a device and takes it through one or two payments. Every step is chosen by
//! the seed: how many copies of a confirmation race each other (1–3), where each handler run
//! crashes (a [`Crash`] before or after any of its AWS calls), whether the phone retries, how
//! often SQS delivers each settlement message (1–5 times, concurrently) and whether those
//! deliveries crash too. Then recovery runs: SQS redelivers what failed until the queue is empty.
//! The confirmation sends its settlement message before it commits, so no crash can leave a
//! confirmed payment without a message; messages of confirmations that never committed are
//! dropped as orphans (every confirmation of a seed has finished before settlement starts, so
//! the simulation treats them as orphans at once, where the deployed function waits 30 s).
//!
//! After every seed: each payment is settled with exactly one debit and one credit, or not settled
//! with no ledger entry; a confirmation answered 200 was settled; nothing is left `confirmed`; the
//! device counter never went backwards. After every worker: the ledger total equals the sum of the
//! settled payments and the merchant's balance.
//!
//! Each worker gets its own table (the stack's table schema, copied) and queue, so the checks
//! see only the simulation's payments. `SIM_SEEDS` (default 100) seeds from
//! `SIM_FIRST_SEED` (default: random, printed), on `SIM_JOBS` workers (default 4);
//! `SIM_SEED=n` replays one seed. `make test-sim` runs 1000.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use common::{Ctx, answer, registration_request, request};
use futures_util::future::join_all;
use serde_json::json;
use twochan_api::{
    App,
    routes::{Function, NoQueue, handle},
    settlement::{RECHECK_PAUSES_MS, SettleOptions, settle_batch_with},
};
use twochan_aws::{
    DynamoStore, SqsEventQueue, SqsSettlementQueue,
    failpoints::{Crash, Probe},
};
use twochan_domain::{
    MerchantId, PaymentId, PaymentStatus, Timestamp, UniqueCode,
    crypto::{IssuedSecret, MasterKey},
    ports::{Devices, Directory, Payments},
};
use twochan_tools::Device;

/// SplitMix64: a tiny, fully specified generator, so a seed means the same run on every machine
/// and every version of every crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.range(1, 100) <= percent
    }
    /// A crash somewhere in a handler making up to `calls` AWS calls, `percent` of the time.
    fn crash(&mut self, percent: u64, calls: u64) -> Option<Crash> {
        if !self.chance(percent) {
            return None;
        }
        let at = self.range(0, calls - 1) as usize;
        Some(if self.chance(50) {
            Crash::Before(at)
        } else {
            Crash::After(at)
        })
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// What the run did, for the report.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    seeds: u64,
    payments: u64,
    confirm_runs: u64,
    deliveries: u64,
    crashes: u64,
    settled: u64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.seeds += o.seeds;
        self.payments += o.payments;
        self.confirm_runs += o.confirm_runs;
        self.deliveries += o.deliveries;
        self.crashes += o.crashes;
        self.settled += o.settled;
    }
}

/// One worker's private world: a table and a queue of its own, and a merchant.
struct World {
    config: aws_config::SdkConfig,
    table: String,
    queue_url: String,
    /// The simulation's own webhook event queue.
    events_url: String,
    master: MasterKey,
    merchant: MerchantId,
    merchant_key: String,
    /// Clients without failpoints, for setup, recovery and the checks.
    store: DynamoStore,
    sqs: aws_sdk_sqs::Client,
}

impl World {
    async fn new(ctx: &Ctx, worker: u64) -> World {
        let stamp = Timestamp::now().millis();
        let table = format!("twochan-sim-{stamp}-{worker}");
        common::create_table_like(&ctx.dynamodb, &ctx.table, &ctx.dynamodb, &table).await;
        let queue_url = ctx
            .sqs
            .create_queue()
            .queue_name(format!("twochan-sim-{stamp}-{worker}"))
            .send()
            .await
            .expect("create the simulation queue")
            .queue_url
            .expect("queue url");
        let events_url = ctx
            .sqs
            .create_queue()
            .queue_name(format!("twochan-sim-events-{stamp}-{worker}"))
            .send()
            .await
            .expect("create the simulation's event queue")
            .queue_url
            .expect("queue url");
        let store = DynamoStore::new(ctx.dynamodb.clone(), table.clone());
        let merchant = MerchantId::try_from(format!("sim-merchant-{worker}")).unwrap();
        let key = IssuedSecret::generate("mk_");
        store
            .put_merchant(&merchant, &key.hash, Timestamp::now())
            .await
            .expect("merchant");
        World {
            config: ctx.config.clone(),
            table,
            queue_url,
            events_url,
            master: ctx.master.clone(),
            merchant,
            merchant_key: key.secret,
            store,
            sqs: ctx.sqs.clone(),
        }
    }

    /// The handlers' view of the world through clients carrying `probe`.
    fn app(&self, probe: &Probe) -> App<DynamoStore, SqsSettlementQueue, SqsEventQueue> {
        let clients = probe.clients(&self.config);
        App {
            store: DynamoStore::new(clients.dynamodb, self.table.clone()),
            queue: SqsSettlementQueue::new(clients.sqs.clone(), self.queue_url.clone()),
            issuer_keys: Some(self.master.clone().into()),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(clients.sqs.clone(), self.events_url.clone()),
            allow_loopback_webhooks: true,
        }
    }

    fn plain(&self) -> App<DynamoStore, NoQueue, SqsEventQueue> {
        App {
            store: self.store.clone(),
            queue: NoQueue,
            issuer_keys: Some(self.master.clone().into()),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(self.sqs.clone(), self.events_url.clone()),
            allow_loopback_webhooks: true,
        }
    }

    async fn teardown(&self) {
        let _ = self
            .sqs
            .delete_queue()
            .queue_url(&self.queue_url)
            .send()
            .await;
        let client = aws_sdk_dynamodb::Client::new(&self.config);
        let _ = client.delete_table().table_name(&self.table).send().await;
    }
}

/// One seed, start to finish. `Err` names the broken invariant.
async fn run_seed(w: &World, seed: u64) -> Result<Stats, String> {
    let mut rng = Rng(seed);
    let mut stats = Stats {
        seeds: 1,
        ..Stats::default()
    };
    let code = format!("simdev-{seed:08}");
    let terminal = format!("simterm-{seed:08}");
    let mut device = Device::manufacture(&w.master, &code);
    let plain = w.plain();

    let reg = handle(
        &plain,
        Function::Registration,
        registration_request(&plain.store, &device, &terminal).await,
    )
    .await;
    let (status, body) = answer(&reg);
    if status != 201 {
        return Err(format!("registration: {status} {body}"));
    }
    let token = body["terminal_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let unique_code = UniqueCode::try_from(code.as_str()).unwrap();
    let mut last_counter = 0;
    let mut payments: Vec<(PaymentId, bool)> = Vec::new();

    for n in 0..rng.range(1, 2) {
        stats.payments += 1;
        let currency = ["EUR", "KRW", "USD"][rng.range(0, 2) as usize];
        let created = handle(
            &plain,
            Function::PaymentRequest,
            request(
                "POST",
                "/v1/payments",
                &w.merchant_key,
                &[("idempotency-key", &format!("sim-{seed}-{n}"))],
                Some(
                    &json!({"unique_code": code, "beacon_proof": device.beacon().proof, "amount": rng.range(1, 100_000),
                             "currency": currency, "pos_id": "sim-pos"}),
                ),
            ),
        )
        .await;
        let (status, payment) = answer(&created);
        if status != 201 {
            return Err(format!("payment request: {status} {payment}"));
        }
        let id = payment["payment_id"].as_str().unwrap().to_owned();
        let counter = device.counter() + rng.range(1, 3);
        device.set_counter(counter);
        let confirm_body = json!({"auth_code": device.auth_code_for(&payment, counter),
                                  "counter": counter.to_string()});
        let confirm = |probe: Probe| {
            let app = w.app(&probe);
            let req = request(
                "POST",
                &format!("/v1/payments/{id}/confirm"),
                &token,
                &[],
                Some(&confirm_body),
            );
            async move {
                let resp = handle(&app, Function::Confirmation, req).await;
                (answer(&resp), probe.crashed())
            }
        };

        // Copies of the confirmation race each other, each with its own crash plan (a confirm
        // makes 4 AWS calls; a plan past the last one never fires).
        let runs = rng.range(1, 3);
        let plans: Vec<Probe> = (0..runs)
            .map(|_| Probe::crashing(rng.crash(60, 5)))
            .collect();
        let results = join_all(plans.into_iter().map(confirm)).await;
        stats.confirm_runs += runs;
        let mut accepted = false;
        for ((status, body), crashed) in &results {
            stats.crashes += u64::from(*crashed);
            match status {
                200 => accepted = true,
                // A crash surfaces as 503 (to API Gateway: a failed invocation).
                503 => {}
                _ => return Err(format!("confirm {id}: unexpected {status} {body}")),
            }
        }
        // The phone retries (fault-free) until it has an answer, or gives up.
        if !accepted && rng.chance(50) {
            stats.confirm_runs += 1;
            let ((status, body), _) = confirm(Probe::new()).await;
            if status != 200 {
                return Err(format!("confirm retry {id}: {status} {body}"));
            }
            accepted = true;
        }
        let pid = PaymentId::try_from(id.as_str()).unwrap();
        payments.push((pid.clone(), accepted));
        // Settle before the next payment: the device may then carry only one pending payment.
        settle_all(w, &mut rng, &mut stats).await?;
        let stored = w
            .store
            .payment(&pid)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("payment vanished")?;
        let dev = w
            .store
            .device(&unique_code)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("device vanished")?;
        if dev.last_counter.get() < last_counter {
            return Err(format!(
                "counter went back from {last_counter} to {}",
                dev.last_counter.get()
            ));
        }
        last_counter = dev.last_counter.get();
        match stored.status {
            PaymentStatus::Settled if dev.last_counter.get() == counter => {}
            PaymentStatus::Settled => {
                return Err(format!(
                    "settled, but the device counter is {} not {counter}",
                    dev.last_counter.get()
                ));
            }
            PaymentStatus::Pending if !accepted => {
                // Never confirmed: cancel it so the next payment can use the device.
                let r = handle(
                    &plain,
                    Function::PaymentRequest,
                    request(
                        "POST",
                        &format!("/v1/payments/{id}/cancel"),
                        &w.merchant_key,
                        &[],
                        None,
                    ),
                )
                .await;
                if r.status() != 200 {
                    return Err(format!("cancel {id}: {:?}", answer(&r)));
                }
            }
            other => {
                return Err(format!(
                    "payment {id} ended {} (accepted: {accepted})",
                    other.as_str()
                ));
            }
        }
    }

    // Exactly one debit and one credit per settled payment; nothing for the others.
    for (pid, _) in &payments {
        let p = w
            .store
            .payment(pid)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("payment vanished")?;
        let entries = w
            .store
            .ledger_entries(pid)
            .await
            .map_err(|e| e.to_string())?;
        let expected = if p.status == PaymentStatus::Settled {
            stats.settled += 1;
            let (amount, currency) = (p.amount.minor_units(), p.currency.code().to_owned());
            vec![
                (
                    "credit".to_owned(),
                    format!("merchant:{}", w.merchant),
                    amount,
                    currency.clone(),
                ),
                (
                    "debit".to_owned(),
                    format!("device:{code}"),
                    amount,
                    currency,
                ),
            ]
        } else {
            vec![]
        };
        let mut got = entries;
        got.sort();
        if got != expected {
            return Err(format!("ledger of {pid}: {got:?}, expected {expected:?}"));
        }
    }
    Ok(stats)
}

/// Delivers every queued settlement message 1–5 times at once, with crashes, and redelivers what
/// failed, until the queue is empty.
async fn settle_all(w: &World, rng: &mut Rng, stats: &mut Stats) -> Result<(), String> {
    for _ in 0..60 {
        let received = w
            .sqs
            .receive_message()
            .queue_url(&w.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .map_err(|e| format!("receive: {e}"))?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(());
        }
        for m in messages {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.receipt_handle = m.receipt_handle.clone();
            record.body = m.body.clone();
            let copies = rng.range(1, 5);
            let probes: Vec<Probe> = (0..copies)
                .map(|_| Probe::crashing(rng.crash(30, 2)))
                .collect();
            let outcomes = join_all(probes.iter().map(|probe| {
                let app = w.app(probe);
                let mut event = SqsEvent::default();
                event.records = vec![record.clone()];
                // No confirmation is running any more: a pending payment's message is an orphan.
                let options = SettleOptions {
                    recheck_pauses_ms: &RECHECK_PAUSES_MS[..0],
                    orphan_after_ms: 0,
                };
                async move { settle_batch_with(&app.store, &app.events, event, options).await }
            }))
            .await;
            stats.deliveries += copies;
            stats.crashes += probes.iter().filter(|p| p.crashed()).count() as u64;
            let handle = m.receipt_handle.unwrap_or_default();
            if outcomes.iter().any(|o| o.batch_item_failures.is_empty()) {
                w.sqs
                    .delete_message()
                    .queue_url(&w.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| format!("delete: {e}"))?;
            } else {
                // Every delivery failed: SQS makes it visible again.
                w.sqs
                    .change_message_visibility()
                    .queue_url(&w.queue_url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .map_err(|e| format!("visibility: {e}"))?;
            }
        }
    }
    Err("settlement did not converge in 60 rounds".into())
}

/// The ledger as a whole: credits equal the settled payments and the balance, per currency.
async fn check_ledger(w: &World) -> Result<(), String> {
    let client = aws_sdk_dynamodb::Client::new(&w.config);
    let (mut credits, mut debits, mut settled) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut balance: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut start = None;
    let num = |item: &HashMap<String, AttributeValue>, k: &str| -> u64 {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let text = |item: &HashMap<String, AttributeValue>, k: &str| -> String {
        item.get(k)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    loop {
        let page = client
            .scan()
            .table_name(&w.table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        for item in page.items.unwrap_or_default() {
            let (pk, sk) = (text(&item, "pk"), text(&item, "sk"));
            let currency = text(&item, "currency");
            if pk.starts_with("PAYMENT#") {
                // The journal legs live on the payment; count them apart from its status.
                for (leg, side) in [
                    ("credit_account", &mut credits),
                    ("debit_account", &mut debits),
                ] {
                    if item.contains_key(leg) {
                        let e: &mut (u64, u64) = side.entry(currency.clone()).or_default();
                        *e = (e.0 + num(&item, "amount"), e.1 + 1);
                    }
                }
                if text(&item, "status") == "settled" {
                    let e: &mut (u64, u64) = settled.entry(currency).or_default();
                    *e = (e.0 + num(&item, "amount"), e.1 + 1);
                }
            } else if sk.starts_with("BALANCE#") {
                balance.insert(
                    currency,
                    (num(&item, "settled_amount"), num(&item, "settled_count")),
                );
            }
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    if credits != settled || debits != settled || balance != settled {
        return Err(format!(
            "ledger mismatch: credits {credits:?}, debits {debits:?}, settled payments {settled:?}, balance {balance:?}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_faults_never_settle_twice_or_lose_a_confirmation() {
    let ctx = Ctx::new().await;
    let (first, count) = match env_u64("SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env_u64("SIM_FIRST_SEED")
                .unwrap_or_else(|| Timestamp::now().millis() as u64 % 1_000_000_000 * 1000),
            env_u64("SIM_SEEDS").unwrap_or(100),
        ),
    };
    let jobs = env_u64("SIM_JOBS").unwrap_or(4).clamp(1, 16).min(count);
    println!(
        "simulation: seeds {first}..{} on {jobs} workers",
        first + count
    );
    let started = Instant::now();
    let workers = (0..jobs).map(|worker| {
        let ctx = &ctx;
        async move {
            let world = World::new(ctx, worker).await;
            let mut stats = Stats::default();
            let mut failures = Vec::new();
            let mut seed = first + worker;
            while seed < first + count {
                match run_seed(&world, seed).await {
                    Ok(s) => stats.add(s),
                    Err(why) => failures.push(format!(
                        "seed {seed}: {why}\n  replay: SIM_SEED={seed} make test-sim"
                    )),
                }
                seed += jobs;
            }
            if let Err(why) = check_ledger(&world).await {
                failures.push(format!(
                    "worker {worker} (seeds {first}+{worker} step {jobs}): {why}"
                ));
            }
            if failures.is_empty() {
                world.teardown().await;
            } else {
                failures.push(format!(
                    "worker {worker}'s table {} is kept for inspection",
                    world.table
                ));
            }
            (stats, failures)
        }
    });
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for (stats, f) in join_all(workers).await {
        total.add(stats);
        failures.extend(f);
    }
    println!(
        "simulation: {} seeds, {} payments, {} confirm runs, {} settlement deliveries, {} crashes injected, {} settled; {:.1}s",
        total.seeds,
        total.payments,
        total.confirm_runs,
        total.deliveries,
        total.crashes,
        total.settled,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total.crashes > 0 || count < 5,
        "no crash was injected: the simulation tests nothing"
    );
}

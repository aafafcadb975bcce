//! Seeded fault simulation of the money path: confirmation → queue → settlement → ledger →
//! refunds → webhook events, with the real handlers in this process against the emulator's
//! DynamoDB and SQS.
//!
//! Each seed registers a device and takes it through one or two payments. Every step is chosen by
//! the seed: how many copies of a confirmation race each other (1–3), where each handler run
//! crashes (a [`Crash`] before or after any of its AWS calls), whether the phone retries, how
//! often SQS delivers each settlement message (1–5 times, concurrently) and whether those
//! deliveries crash too. Then recovery runs: SQS redelivers what failed until the queue is empty.
//! The confirmation sends its settlement message before it commits, so no crash can leave a
//! confirmed payment without a message; messages of confirmations that never committed are
//! dropped as orphans (every confirmation of a seed has finished before settlement starts, so
//! the simulation drops them at once, where the deployed function keeps delivering the message of
//! a pending payment until it is `ORPHAN_AFTER_MS` old).
//! Then 0–3 refunds, each on one of the seed's payments (settled or not) for an amount that may
//! be more than is left: each refund's idempotency key is sent by 1–3 racing copies, each
//! crashing somewhere or not, sometimes followed by the merchant's retry; half the time the
//! refunds of different keys race each other too.
//!
//! After every seed: each payment is settled with exactly one debit and one credit, or not settled
//! with no ledger entry; a confirmation answered 200 was settled; nothing is left `confirmed`; the
//! device counter never went backwards. Each refund key keeps at most one outcome and every
//! answer under it agrees (a 201 names the refund it holds, with the amount asked; a 409 or 422 is
//! the rejection it keeps; a 409 only for a payment that is not settled); a refund exists only
//! for a settled payment, with its legs debit `merchant:<id>` / credit `device:<code>` for its
//! amount; a payment's `refunded_amount` is the sum of its refund items (and `refund_ids` lists
//! exactly them), never above its amount.
//!
//! After every worker, over its whole table: the payments' credits and debits equal the settled
//! payments and the balance's settled sum; every refund item belongs to a settled payment of its
//! merchant and device; and per merchant and currency the ledger's net (payment credits less
//! refund debits) equals the settled payments less their refunds, the balance item's
//! `settled_amount - refunded_amount` and the `net_amount` the ledger reports. Then the worker's
//! event queue is drained and every message is sent by the real sender (`send_event`, treating a
//! change not visible now as an orphan at once, since every handler has finished) to a recording
//! endpoint: the distinct changes delivered are exactly the changes the store holds (each payment
//! confirmed or settled, canceled, ...; each refund made), no orphan is a change that happened,
//! and each change has exactly one event id (delivered at least once, maybe more).
//!
//! Each worker gets its own table (the stack's table schema, copied) and queues, so the checks
//! see only the simulation's payments and events. `SIM_SEEDS` (default 100) seeds from
//! `SIM_FIRST_SEED` (default: random, printed), on `SIM_JOBS` workers (default 4);
//! `SIM_SEED=n` replays one seed. `make test-sim` runs 1000.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::common::{Harness, answer, registration_request, request};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::{StreamExt, future::join_all, stream};
use serde_json::json;
use twochan_api::{
    App,
    routes::{Function, NoQueue, handle},
    settlement::{RECHECK_PAUSES_MS, SettleOptions, settle_batch_with},
    webhooks::{RetryPolicy, Sent, send_event},
};
use twochan_aws::{
    DynamoStore, SqsEventQueue, SqsSettlementQueue,
    failpoints::{Crash, Probe},
    keys,
};
use twochan_domain::{
    IdempotencyKey, MerchantId, PaymentId, PaymentSlot, PaymentStatus, Timestamp, UniqueCode,
    crypto::{IssuedSecret, MasterKey},
    ports::{
        Delivery, Devices, Directory, EventMessage, Ledger, Payments, WebhookEndpoint,
        WebhookEndpoints, WebhookTransport,
    },
    webhook::{EventType, SecretSeal, WebhookSecret, WebhookUrl},
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
    refund_keys: u64,
    refund_runs: u64,
    refunds: u64,
    events: u64,
    delivered: u64,
    orphans: u64,
    crashes: u64,
    settled: u64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.seeds += o.seeds;
        self.payments += o.payments;
        self.confirm_runs += o.confirm_runs;
        self.deliveries += o.deliveries;
        self.refund_keys += o.refund_keys;
        self.refund_runs += o.refund_runs;
        self.refunds += o.refunds;
        self.events += o.events;
        self.delivered += o.delivered;
        self.orphans += o.orphans;
        self.crashes += o.crashes;
        self.settled += o.settled;
    }
}

/// One worker's sandbox: a table and queues of its own, and a merchant.
struct Sandbox {
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
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
}

impl Sandbox {
    async fn new(ctx: &Harness, worker: u64) -> Sandbox {
        let stamp = Timestamp::now().millis();
        let table = format!("twochan-sim-{stamp}-{worker}");
        crate::common::create_table_like(&ctx.dynamodb, &ctx.table, &ctx.dynamodb, &table).await;
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
        Sandbox {
            config: ctx.config.clone(),
            table,
            queue_url,
            events_url,
            master: ctx.master.clone(),
            merchant,
            merchant_key: key.secret,
            store,
            dynamodb: ctx.dynamodb.clone(),
            sqs: ctx.sqs.clone(),
        }
    }

    /// The handlers' view of the sandbox through clients carrying `probe`.
    fn app(&self, probe: &Probe) -> App<DynamoStore, SqsSettlementQueue, SqsEventQueue> {
        let clients = probe.clients(&self.config);
        App {
            store: DynamoStore::new(clients.dynamodb, self.table.clone()),
            queue: SqsSettlementQueue::new(clients.sqs.clone(), self.queue_url.clone()),
            issuer_keys: self.master.clone().into(),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(clients.sqs.clone(), self.events_url.clone()),
            allow_loopback_webhooks: true,
        }
    }

    fn plain(&self) -> App<DynamoStore, NoQueue, SqsEventQueue> {
        App {
            store: self.store.clone(),
            queue: NoQueue,
            issuer_keys: self.master.clone().into(),
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
        let _ = self
            .sqs
            .delete_queue()
            .queue_url(&self.events_url)
            .send()
            .await;
        let _ = self
            .dynamodb
            .delete_table()
            .table_name(&self.table)
            .send()
            .await;
    }
}

/// One seed, start to finish. `Err` names the broken invariant.
async fn run_seed(w: &Sandbox, seed: u64) -> Result<Stats, String> {
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
    let mut payments: Vec<(PaymentId, u64)> = Vec::new();

    for n in 0..rng.range(1, 2) {
        stats.payments += 1;
        let currency = ["EUR", "KRW", "USD"][rng.range(0, 2) as usize];
        let amount = rng.range(1, 100_000);
        let created = handle(
            &plain,
            Function::PaymentRequest,
            request(
                "POST",
                "/v1/payments",
                &w.merchant_key,
                &[("idempotency-key", &format!("sim-{seed}-{n}"))],
                Some(
                    &json!({"unique_code": code, "beacon_proof": device.beacon().proof, "amount": amount,
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
        // makes 5 AWS calls).
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
        payments.push((pid.clone(), amount));
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

    // Refunds: 0–3 idempotency keys, each on one of the seed's payments (settled or not) for an
    // amount that may exceed what is left or the whole payment. The copies of one key race each
    // other, each with its own crash plan; half the time the keys race each other too.
    let mut refunds = Vec::new();
    for n in 0..rng.range(0, 3) {
        let (pid, paid) = payments[rng.range(0, payments.len() as u64 - 1) as usize].clone();
        let amount = match rng.range(1, 20) {
            1..=7 => rng.range(1, (paid / 4).max(1)),
            8..=12 => rng.range(1, paid),
            13..=16 => paid,
            _ => rng.range(paid + 1, 2 * paid),
        };
        let body = if rng.chance(30) {
            json!({"amount": amount, "reason": format!("sim refund {n}")})
        } else {
            json!({"amount": amount})
        };
        // A refund makes 5 AWS calls when nothing races it, a few more when something does.
        let copies = rng.range(1, 3);
        refunds.push(RefundKey {
            key: format!("sim-refund-{seed}-{n}"),
            payment: pid,
            amount,
            body,
            crashes: (0..copies).map(|_| rng.crash(60, 7)).collect(),
            retry_roll: rng.range(1, 100),
        });
    }
    let outcomes = if rng.chance(50) {
        join_all(refunds.iter().map(|k| run_refund(w, k))).await
    } else {
        let mut outcomes = Vec::new();
        for k in &refunds {
            outcomes.push(run_refund(w, k).await);
        }
        outcomes
    };
    let mut answers = Vec::new();
    for outcome in outcomes {
        let run = outcome?;
        stats.refund_keys += 1;
        stats.refund_runs += run.runs;
        stats.crashes += run.crashes;
        answers.push(run.answers);
    }
    stats.refunds += check_refunds(w, &code, &payments, &refunds, &answers).await?;
    Ok(stats)
}

/// One refund idempotency key of a seed: its request, and how its copies crash.
struct RefundKey {
    key: String,
    payment: PaymentId,
    amount: u64,
    body: serde_json::Value,
    /// One crash plan per concurrent copy.
    crashes: Vec<Option<Crash>>,
    /// Whether the merchant retries (fault-free): always below 60 when no copy got an answer,
    /// below 15 (a replay) when one did.
    retry_roll: u64,
}

/// What the copies of one refund key answered.
struct RefundRun {
    /// The answers that are not a crash's 503, in no particular order.
    answers: Vec<(u16, serde_json::Value)>,
    runs: u64,
    crashes: u64,
}

/// Runs the copies of one refund key at once, then maybe the merchant's retry.
async fn run_refund(w: &Sandbox, k: &RefundKey) -> Result<RefundRun, String> {
    let send = |probe: Probe| {
        let app = w.app(&probe);
        let req = request(
            "POST",
            &format!("/v1/payments/{}/refunds", k.payment),
            &w.merchant_key,
            &[("idempotency-key", &k.key)],
            Some(&k.body),
        );
        async move {
            let resp = handle(&app, Function::PaymentRequest, req).await;
            (answer(&resp), probe.crashed())
        }
    };
    let results = join_all(k.crashes.iter().map(|c| send(Probe::crashing(*c)))).await;
    let mut run = RefundRun {
        answers: Vec::new(),
        runs: k.crashes.len() as u64,
        crashes: 0,
    };
    for ((status, body), crashed) in results {
        run.crashes += u64::from(crashed);
        match status {
            // A crash surfaces as 503; a run that did not crash has no reason to.
            503 if crashed => {}
            201 | 409 | 422 => run.answers.push((status, body)),
            _ => {
                return Err(format!(
                    "refund {} (crashed: {crashed}): unexpected {status} {body}",
                    k.key
                ));
            }
        }
    }
    let limit = if run.answers.is_empty() { 60 } else { 15 };
    if k.retry_roll <= limit {
        run.runs += 1;
        let ((status, body), _) = send(Probe::new()).await;
        if !matches!(status, 201 | 409 | 422) {
            return Err(format!("refund retry {}: {status} {body}", k.key));
        }
        run.answers.push((status, body));
    }
    Ok(run)
}

/// The refunds of one seed against what its keys answered: every key keeps one outcome and all
/// its answers agree with it; a payment's `refunded_amount` is the sum of its refund items, never
/// above its amount, and only a settled payment has any; each refund's legs move its amount from
/// the merchant back to the device. Returns how many refunds were made.
async fn check_refunds(
    w: &Sandbox,
    code: &str,
    payments: &[(PaymentId, u64)],
    keys: &[RefundKey],
    answers: &[Vec<(u16, serde_json::Value)>],
) -> Result<u64, String> {
    let merchant_account = format!("merchant:{}", w.merchant);
    let device_account = format!("device:{code}");
    // The payments as stored now (refunds do not change their status).
    let mut stored = HashMap::new();
    for (pid, _) in payments {
        let item = raw(w, keys::payment_pk(pid), keys::SK_PAYMENT)
            .await?
            .ok_or("payment vanished")?;
        stored.insert(pid.to_string(), item);
    }
    // Refund items by payment: (refund id, amount).
    let mut made: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (k, answers) in keys.iter().zip(answers) {
        let slot = PaymentSlot::of_refund(
            &w.merchant,
            &IdempotencyKey::try_from(k.key.as_str()).map_err(|e| e.to_string())?,
        );
        let kept = raw(w, keys::refund_slot_pk(&slot), keys::SK_REFUND).await?;
        let payment = &stored[k.payment.as_str()];
        let settled = text(payment, "status") == "settled";
        let what = format!("refund key {} ({} of {})", k.key, k.amount, k.payment);
        // The refund item the key holds, if any; a kept rejection's error code otherwise.
        let (refund, rejected) = match &kept {
            Some(item) if item.contains_key(keys::REJECTED_AT) => {
                (None, Some(text(item, "rejected_code")))
            }
            Some(item) => (Some(item), None),
            None => (None, None),
        };
        if let Some(item) = refund {
            let id = text(item, "refund_id");
            let legs = (
                text(item, "payment_id"),
                num(item, "amount"),
                text(item, "currency"),
                text(item, "debit_account"),
                text(item, "credit_account"),
            );
            let expected = (
                k.payment.to_string(),
                k.amount,
                text(payment, "currency"),
                merchant_account.clone(),
                device_account.clone(),
            );
            if legs != expected {
                return Err(format!(
                    "{what}: refund {id} is (payment, amount, currency, debit, credit) {legs:?}, expected {expected:?}"
                ));
            }
            if !settled {
                return Err(format!(
                    "{what}: refund {id} of a payment that is {}",
                    text(payment, "status")
                ));
            }
            made.entry(k.payment.to_string())
                .or_default()
                .push((id, k.amount));
        }
        // Every answer agrees with what the key keeps: a 201 is its refund, an error its
        // rejection; a 409 only for a payment that is not settled.
        for (status, body) in answers {
            let ok = match status {
                201 => refund.is_some_and(|item| {
                    body["refund_id"].as_str() == Some(text(item, "refund_id").as_str())
                        && body["amount"].as_u64() == Some(k.amount)
                        && body["payment_id"].as_str() == Some(k.payment.as_str())
                }),
                409 => {
                    rejected.as_deref() == Some("payment_not_settled")
                        && !settled
                        && body["error"]["code"] == "payment_not_settled"
                }
                422 => {
                    rejected.as_deref() == Some("refund_exceeds_payment")
                        && body["error"]["code"] == "refund_exceeds_payment"
                }
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "{what}: answered {status} {body}, but the key keeps {kept:?}"
                ));
            }
        }
    }
    let mut count = 0;
    for (pid, paid) in payments {
        let item = &stored[pid.as_str()];
        let refunded = num(item, "refunded_amount");
        let mut ids = strings(item, "refund_ids");
        let refunds = made.remove(pid.as_str()).unwrap_or_default();
        count += refunds.len() as u64;
        let sum: u64 = refunds.iter().map(|(_, a)| a).sum();
        if refunded != sum || refunded > *paid {
            return Err(format!(
                "payment {pid} of {paid}: refunded_amount {refunded}, its refund items {refunds:?}"
            ));
        }
        let mut expected: Vec<String> = refunds.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        expected.sort();
        if ids != expected {
            return Err(format!(
                "payment {pid}: refund_ids {ids:?}, its refund items {expected:?}"
            ));
        }
    }
    Ok(count)
}

type Item = HashMap<String, AttributeValue>;

/// The kinds of partition key the checks sort items by, as the adapter spells them.
struct PkKinds {
    payment: String,
    refund: String,
    merchant: String,
}

impl PkKinds {
    fn of(w: &Sandbox) -> PkKinds {
        let slot = PaymentSlot::of(&w.merchant, &IdempotencyKey::try_from("any").unwrap());
        let kind = |pk: String| pk[..=pk.find('#').expect("a kind of key")].to_owned();
        PkKinds {
            payment: kind(keys::slot_pk(&slot)),
            refund: kind(keys::refund_slot_pk(&slot)),
            merchant: kind(keys::merchant_pk("")),
        }
    }
}

fn num(item: &Item, k: &str) -> u64 {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn text(item: &Item, k: &str) -> String {
    item.get(k)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

fn strings(item: &Item, k: &str) -> Vec<String> {
    item.get(k)
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
        .unwrap_or_default()
}

/// One item as stored, read consistently, without the failpoints.
async fn raw(w: &Sandbox, pk: String, sk: &str) -> Result<Option<Item>, String> {
    w.dynamodb
        .get_item()
        .table_name(&w.table)
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .map(|out| out.item)
        .map_err(|e| format!("get item: {e}"))
}

/// Every item of the worker's table.
async fn scan(w: &Sandbox) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = w
            .dynamodb
            .scan()
            .table_name(&w.table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// Delivers every queued settlement message 1–5 times at once, with crashes, and redelivers what
/// failed, until the queue is empty.
async fn settle_all(w: &Sandbox, rng: &mut Rng, stats: &mut Stats) -> Result<(), String> {
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

/// The ledger as a whole, per currency: the payments' credits and debits equal the settled
/// payments and the balance's settled sum; every refund item belongs to a settled payment of its
/// merchant and moves money back from the merchant to that payment's device; each payment's
/// `refunded_amount` is the sum of its refund items; and the net of the merchant's account
/// (payment credits less refund debits) equals the settled payments less their refunds, the
/// balance item's `settled_amount - refunded_amount` and the `net_amount` the ledger reports.
async fn check_ledger(w: &Sandbox, items: &[Item]) -> Result<(), String> {
    let kinds = PkKinds::of(w);
    let (mut credits, mut debits, mut settled) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut balance: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // Per (merchant account, currency): what the legs say, what the payments say, the balance.
    let mut legs_net: BTreeMap<(String, String), i128> = BTreeMap::new();
    let mut payments_net: BTreeMap<(String, String), i128> = BTreeMap::new();
    let mut balance_net: BTreeMap<(String, String), i128> = BTreeMap::new();
    let mut payments: HashMap<String, &Item> = HashMap::new();
    let mut refunds: Vec<&Item> = Vec::new();
    for item in items {
        let (pk, sk) = (text(item, "pk"), text(item, "sk"));
        let currency = text(item, "currency");
        if pk.starts_with(&kinds.payment) {
            // The journal legs live on the payment; count them apart from its status.
            for (leg, side) in [
                ("credit_account", &mut credits),
                ("debit_account", &mut debits),
            ] {
                if item.contains_key(leg) {
                    let e: &mut (u64, u64) = side.entry(currency.clone()).or_default();
                    *e = (e.0 + num(item, "amount"), e.1 + 1);
                }
            }
            if item.contains_key("credit_account") {
                *legs_net
                    .entry((text(item, "credit_account"), currency.clone()))
                    .or_default() += i128::from(num(item, "amount"));
            }
            if text(item, "status") == "settled" {
                let e: &mut (u64, u64) = settled.entry(currency.clone()).or_default();
                *e = (e.0 + num(item, "amount"), e.1 + 1);
                *payments_net
                    .entry((format!("merchant:{}", text(item, "merchant_id")), currency))
                    .or_default() +=
                    i128::from(num(item, "amount")) - i128::from(num(item, "refunded_amount"));
            }
            if sk == keys::SK_PAYMENT && item.contains_key("payment_id") {
                payments.insert(text(item, "payment_id"), item);
            }
        } else if pk.starts_with(&kinds.refund) && !item.contains_key(keys::REJECTED_AT) {
            *legs_net
                .entry((text(item, "debit_account"), currency))
                .or_default() -= i128::from(num(item, "amount"));
            refunds.push(item);
        } else if sk.starts_with(keys::BALANCE_PREFIX) {
            balance.insert(
                currency.clone(),
                (num(item, "settled_amount"), num(item, "settled_count")),
            );
            let merchant = pk.strip_prefix(&kinds.merchant).unwrap_or(&pk);
            balance_net.insert(
                (format!("merchant:{merchant}"), currency),
                i128::from(num(item, "settled_amount")) - i128::from(num(item, "refunded_amount")),
            );
        }
    }
    if credits != settled || debits != settled || balance != settled {
        return Err(format!(
            "ledger mismatch: credits {credits:?}, debits {debits:?}, settled payments {settled:?}, balance {balance:?}"
        ));
    }
    // Refund items by payment.
    let mut of_payment: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for r in &refunds {
        let (id, pid) = (text(r, "refund_id"), text(r, "payment_id"));
        let Some(p) = payments.get(&pid) else {
            return Err(format!(
                "refund {id} of a payment that does not exist: {pid}"
            ));
        };
        let legs = (
            text(r, "merchant_id"),
            text(r, "currency"),
            text(r, "debit_account"),
            text(r, "credit_account"),
        );
        let expected = (
            text(p, "merchant_id"),
            text(p, "currency"),
            format!("merchant:{}", text(p, "merchant_id")),
            format!("device:{}", text(p, "unique_code")),
        );
        if text(p, "status") != "settled" || legs != expected {
            return Err(format!(
                "refund {id} (merchant, currency, debit, credit) {legs:?} of payment {pid} ({}), expected {expected:?}",
                text(p, "status")
            ));
        }
        of_payment
            .entry(pid)
            .or_default()
            .push((id, num(r, "amount")));
    }
    for (pid, p) in &payments {
        let refunds = of_payment.remove(pid).unwrap_or_default();
        let sum: u64 = refunds.iter().map(|(_, a)| a).sum();
        let mut ids = strings(p, "refund_ids");
        let mut expected: Vec<String> = refunds.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        expected.sort();
        let refunded = num(p, "refunded_amount");
        if refunded != sum || refunded > num(p, "amount") || ids != expected {
            return Err(format!(
                "payment {pid} of {}: refunded_amount {refunded}, refund_ids {ids:?}, its refund items {refunds:?}",
                num(p, "amount")
            ));
        }
    }
    let reported: BTreeMap<(String, String), i128> = w
        .store
        .balances(&w.merchant)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|b| {
            (
                (
                    format!("merchant:{}", w.merchant),
                    b.currency.code().to_owned(),
                ),
                i128::from(b.net_amount),
            )
        })
        .collect();
    if legs_net != payments_net || balance_net != payments_net || reported != payments_net {
        return Err(format!(
            "net mismatch: ledger legs {legs_net:?}, settled less refunded payments {payments_net:?}, balance items {balance_net:?}, reported balances {reported:?}"
        ));
    }
    Ok(())
}

/// A merchant's webhook endpoint that answers 2xx to everything and keeps what it was sent.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<serde_json::Value>>);

impl WebhookTransport for Recorder {
    async fn deliver(
        &self,
        _url: &WebhookUrl,
        _secret: &WebhookSecret,
        body: &[u8],
        _now: Timestamp,
    ) -> Delivery {
        let event = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
        Delivery::Delivered
    }
}

/// A change an event announces: (type, payment, refund).
type Change = (String, String, Option<String>);

/// What the event counts add to the report.
#[derive(Debug, Default)]
struct EventStats {
    messages: u64,
    delivered: u64,
    orphans: u64,
}

/// The worker's event queue, drained once every handler has finished, each message sent by the
/// real sender to a recording endpoint: the distinct changes delivered are exactly the changes
/// committed (a payment confirmed or settled, canceled, declined or failed, a refund made), the
/// orphans only changes that never happened, and each change has one event id.
async fn check_events(w: &Sandbox, items: &[Item]) -> Result<EventStats, String> {
    let seal = SecretSeal::from_issuer_key(&w.master);
    let endpoint = WebhookEndpoint {
        url: WebhookUrl::parse("http://127.0.0.1:9/hook", true).map_err(|e| e.to_string())?,
        sealed_secret: seal.seal(&WebhookSecret::generate(), w.merchant.as_str()),
        set_at: Timestamp::now(),
    };
    w.store
        .put_endpoint(&w.merchant, &endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = Vec::new();
    loop {
        let received = w
            .sqs
            .receive_message()
            .queue_url(&w.events_url)
            .max_number_of_messages(10)
            .visibility_timeout(600)
            .send()
            .await
            .map_err(|e| format!("receive events: {e}"))?;
        let batch = received.messages.unwrap_or_default();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let body = m.body.unwrap_or_default();
            let message: EventMessage =
                serde_json::from_str(&body).map_err(|e| format!("event message {body}: {e}"))?;
            messages.push(message);
        }
    }
    // Every handler has finished: a change not visible now never will be.
    let policy = RetryPolicy {
        orphan_after_ms: 0,
        ..RetryPolicy::new(1, 14)
    };
    let recorder = Recorder::default();
    let sent: Vec<_> = stream::iter(&messages)
        .map(|m| {
            let (recorder, seal, policy) = (&recorder, &seal, &policy);
            async move {
                let sent = send_event(&w.store, recorder, seal, m, policy, Timestamp::now()).await;
                (m, sent)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // The changes the store holds.
    let kinds = PkKinds::of(w);
    let mut committed: BTreeSet<Change> = BTreeSet::new();
    for item in items {
        let (pk, sk) = (text(item, "pk"), text(item, "sk"));
        if pk.starts_with(&kinds.payment)
            && sk == keys::SK_PAYMENT
            && item.contains_key("payment_id")
        {
            let pid = text(item, "payment_id");
            let kinds: &[EventType] = match text(item, "status").as_str() {
                "confirmed" => &[EventType::PaymentConfirmed],
                "settled" => &[EventType::PaymentConfirmed, EventType::PaymentSettled],
                "canceled" => &[EventType::PaymentCanceled],
                "declined" => &[EventType::PaymentDeclined],
                "failed" => &[EventType::PaymentFailed],
                _ => &[],
            };
            for kind in kinds {
                committed.insert((kind.as_str().to_owned(), pid.clone(), None));
            }
        } else if pk.starts_with(&kinds.refund) && !item.contains_key(keys::REJECTED_AT) {
            committed.insert((
                EventType::RefundSucceeded.as_str().to_owned(),
                text(item, "payment_id"),
                Some(text(item, "refund_id")),
            ));
        }
    }

    let mut stats = EventStats {
        messages: messages.len() as u64,
        ..EventStats::default()
    };
    let change_of = |m: &EventMessage| -> Change {
        (
            m.event_type.as_str().to_owned(),
            m.payment_id.to_string(),
            m.refund_id.as_ref().map(|r| r.to_string()),
        )
    };
    for (m, sent) in &sent {
        match sent {
            Ok(Sent::Delivered) => stats.delivered += 1,
            Ok(Sent::Orphan) => {
                stats.orphans += 1;
                if committed.contains(&change_of(m)) {
                    return Err(format!(
                        "event {} dropped as an orphan, but its change {:?} is committed",
                        m.event_id,
                        change_of(m)
                    ));
                }
            }
            other => return Err(format!("event {m:?}: sent {other:?}")),
        }
    }
    // What the endpoint got: the changes, and the event ids of each.
    let bodies = recorder.0.into_inner().unwrap_or_else(|e| e.into_inner());
    if bodies.len() as u64 != stats.delivered {
        return Err(format!(
            "{} events delivered, the endpoint got {}",
            stats.delivered,
            bodies.len()
        ));
    }
    let mut ids_of: BTreeMap<Change, BTreeSet<String>> = BTreeMap::new();
    let mut changes_of: BTreeMap<String, BTreeSet<Change>> = BTreeMap::new();
    for body in &bodies {
        let kind = body["type"].as_str().unwrap_or_default().to_owned();
        let payment = &body["data"]["payment"];
        let refund = body["data"]["refund"]["refund_id"]
            .as_str()
            .map(str::to_owned);
        let change: Change = (
            kind.clone(),
            payment["payment_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            refund,
        );
        // The payment as of the event: the status it announces (a refund's: settled).
        let status = kind
            .strip_prefix("payment.")
            .unwrap_or("settled")
            .to_owned();
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        if payment["status"].as_str() != Some(status.as_str())
            || payment["merchant_id"].as_str() != Some(w.merchant.as_str())
            || (kind == EventType::RefundSucceeded.as_str()) != body["data"]["refund"].is_object()
        {
            return Err(format!("event {id} delivered as {body}"));
        }
        ids_of.entry(change.clone()).or_default().insert(id.clone());
        changes_of.entry(id).or_default().insert(change);
    }
    let delivered: BTreeSet<Change> = ids_of.keys().cloned().collect();
    if delivered != committed {
        return Err(format!(
            "events: committed but never delivered {:?}; delivered but never committed {:?}",
            committed.difference(&delivered).collect::<Vec<_>>(),
            delivered.difference(&committed).collect::<Vec<_>>()
        ));
    }
    if let Some((change, ids)) = ids_of.iter().find(|(_, ids)| ids.len() > 1) {
        return Err(format!(
            "change {change:?} delivered under event ids {ids:?}"
        ));
    }
    if let Some((id, changes)) = changes_of.iter().find(|(_, c)| c.len() > 1) {
        return Err(format!("event id {id} delivered for changes {changes:?}"));
    }
    Ok(stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_faults_never_settle_twice_or_lose_a_confirmation() {
    let ctx = Harness::new().await;
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
            let sandbox = Sandbox::new(ctx, worker).await;
            let mut stats = Stats::default();
            let mut failures = Vec::new();
            let mut seed = first + worker;
            while seed < first + count {
                match run_seed(&sandbox, seed).await {
                    Ok(s) => stats.add(s),
                    Err(why) => failures.push(format!(
                        "seed {seed}: {why}\n  replay: SIM_SEED={seed} make test-sim"
                    )),
                }
                seed += jobs;
            }
            let whose = format!("worker {worker} (seeds {first}+{worker} step {jobs})");
            match scan(&sandbox).await {
                Ok(items) => {
                    if let Err(why) = check_ledger(&sandbox, &items).await {
                        failures.push(format!("{whose}: {why}"));
                    }
                    match check_events(&sandbox, &items).await {
                        Ok(e) => {
                            stats.events += e.messages;
                            stats.delivered += e.delivered;
                            stats.orphans += e.orphans;
                        }
                        Err(why) => failures.push(format!("{whose}: {why}")),
                    }
                }
                Err(why) => failures.push(format!("{whose}: scan: {why}")),
            }
            if failures.is_empty() {
                sandbox.teardown().await;
            } else {
                failures.push(format!(
                    "worker {worker}'s table {} and queues are kept for inspection",
                    sandbox.table
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
        "simulation: {} seeds, {} payments, {} confirm runs, {} settlement deliveries, \
         {} refund keys ({} runs, {} refunds made), {} events ({} delivered, {} orphans), \
         {} crashes injected, {} settled; {:.1}s",
        total.seeds,
        total.payments,
        total.confirm_runs,
        total.deliveries,
        total.refund_keys,
        total.refund_runs,
        total.refunds,
        total.events,
        total.delivered,
        total.orphans,
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

//! Load against the local stack, for `make bench`: `loadgen <phase> <concurrency> <seconds>`.
//!
//! Phases, each printing one JSON line:
//! - `payments`: N simulated POS + phone pairs, each on its own device, run full payments
//!   (payment request over channel 1, confirmation over channel 2) back to back through the HTTP
//!   API; afterwards every confirmed payment must settle (checked on the merchant's balance).
//! - `noop`: the same API Gateway + Lambda path doing nothing: an unknown route, answered 404 by
//!   a function without touching AWS. The ceiling of the emulator's invoke path.
//! - `putitem`: raw conditional PutItems (`attribute_not_exists`) on a scratch table of the
//!   emulator's DynamoDB. Its write ceiling.
//!
//! Reads the stack's coordinates from `.local/stack.env` (see `twochan_tools::stack`). With
//! `LOADGEN_WATCH_URL` set (e.g. `http://[::1]:9000`, a `make watch`), `payments` sends the
//! payment requests and confirmations to the functions `cargo lambda watch` serves instead of the
//! emulator's API Gateway + Lambda (devices are still registered, and payments still settled, by
//! the deployed stack): the same load without the emulator's invoke path.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use reqwest::Method;
use serde_json::json;
use twochan_aws::{AwsClients, DynamoStore};
use twochan_domain::{PaymentId, crypto::MasterKey, ports::Payments};
use twochan_tools::{Api, Call, Device, Phone, Pos, new_merchant, stack::Stack, unique_id};

/// Latencies of one kind of step, in milliseconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, since: Instant) {
        self.0.push(since.elapsed().as_secs_f64() * 1000.0);
    }
    fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }
    fn percentile(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
    fn summary(&mut self) -> serde_json::Value {
        json!({"n": self.0.len(), "p50_ms": round(self.percentile(50.0)), "p99_ms": round(self.percentile(99.0))})
    }
}

/// Every load payment's amount, minor units: each balance must be a multiple of it.
const PAYMENT_AMOUNT: u64 = 1250;

/// Messages waiting or in flight in a queue.
async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let Ok(out) = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
    else {
        return 0;
    };
    let attrs = out.attributes.unwrap_or_default();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .filter_map(|k| attrs.get(k)?.parse::<u64>().ok())
    .sum()
}

/// The conflict proxy's refusals so far (transactions, single writes), when it runs.
async fn conflict_stats(stack: &Stack) -> Option<(u64, u64)> {
    let url = stack.get("CONFLICT_PROXY_URL").filter(|u| !u.is_empty())?;
    let stats: serde_json::Value = twochan_tools::http_client()
        .get(format!("{url}/_conflicts/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((
        stats["transactions_refused"].as_u64().unwrap_or(0),
        stats["writes_refused"].as_u64().unwrap_or(0),
    ))
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (phase, n, seconds) = match args.as_slice() {
        [_, phase, n, s] => (
            phase.clone(),
            n.parse::<usize>().unwrap_or_else(|_| fail("concurrency")),
            s.parse::<u64>().unwrap_or_else(|_| fail("seconds")),
        ),
        _ => fail("usage: loadgen <payments|noop|putitem> <concurrency> <seconds>"),
    };
    let stack = Stack::load();
    let var = |k: &str| stack.require(k).unwrap_or_else(|e| fail(e)).to_owned();
    let run_for = Duration::from_secs(seconds);
    let out = match phase.as_str() {
        "payments" => payments(&stack, n, run_for).await,
        "noop" => noop(&Api::new(&var("API_URL")), n, run_for).await,
        "putitem" => putitem(n, run_for).await,
        other => fail(format!("unknown phase {other}")),
    };
    println!(
        "{}",
        json!({"phase": phase, "concurrency": n, "seconds": seconds, "result": out})
    );
}

/// `n` clients repeating `op` (true: it succeeded) back to back for `run_for`: its rate and
/// latencies, and the failures.
async fn hammer<F, Fut>(n: usize, run_for: Duration, op: F) -> serde_json::Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let workers = (0..n).map(|_| async {
        let (mut lat, mut errors) = (Samples::default(), 0);
        while start.elapsed() < run_for {
            let t = Instant::now();
            if op().await {
                lat.push(t);
            } else {
                errors += 1;
            }
        }
        (lat, errors)
    });
    let (mut lat, mut errors) = (Samples::default(), 0);
    for (l, e) in futures_util::future::join_all(workers).await {
        lat.extend(l);
        errors += e;
    }
    let ops = lat.0.len() as f64 / start.elapsed().as_secs_f64();
    json!({"ops_per_s": round(ops), "errors": errors, "latency": lat.summary()})
}

async fn noop(api: &Api, n: usize, run_for: Duration) -> serde_json::Value {
    hammer(n, run_for, || async {
        api.call(Method::GET, "/v1/bench-noop", Call::default())
            .await
            .is_ok_and(|r| r.status == 404)
    })
    .await
}

async fn putitem(n: usize, run_for: Duration) -> serde_json::Value {
    let clients = AwsClients::load().await;
    let db = &clients.dynamodb;
    let table = unique_id("twochan-bench-");
    db.create_table()
        .table_name(&table)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap_or_else(|e| fail(format!("create table: {e}")));
    let result = hammer(n, run_for, || async {
        db.put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(unique_id("item-")))
            .item("payload", AttributeValue::S("x".repeat(400)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .is_ok()
    })
    .await;
    let _ = db.delete_table().table_name(&table).send().await;
    result
}

async fn payments(stack: &Stack, n: usize, run_for: Duration) -> serde_json::Value {
    let var = |k: &str| stack.require(k).unwrap_or_else(|e| fail(e)).to_owned();
    let api = Api::new(&var("API_URL"));
    let master = MasterKey::from_hex(var("ISSUER_MASTER_KEY").split(',').next().unwrap_or(""))
        .unwrap_or_else(|e| fail(e));
    let clients = AwsClients::load().await;
    let store = DynamoStore::new(clients.dynamodb.clone(), var("TABLE_NAME"));
    let watch = std::env::var("LOADGEN_WATCH_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let function_api = |function: &str| match &watch {
        Some(base) => Api::new(&format!(
            "{}/lambda-url/{function}",
            base.trim_end_matches('/')
        )),
        None => api.clone(),
    };
    // Merchants of their own, so their balances count exactly this run's payments. One by
    // default (the busy merchant); LOADGEN_MERCHANTS=k spreads the POS over k merchants.
    let merchants: usize = std::env::var("LOADGEN_MERCHANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let mut shops = Vec::new();
    for _ in 0..merchants {
        let (merchant, key) = new_merchant(&store, "bench-m-")
            .await
            .unwrap_or_else(|e| fail(format!("merchant: {e}")));
        shops.push(Pos::new(
            function_api("payment-request"),
            &merchant,
            &key,
            "bench-pos",
        ));
    }
    let dlq = stack.get("SETTLEMENT_DLQ_URL").map(str::to_owned);
    let dlq_before = match &dlq {
        Some(url) => queue_depth(&clients.sqs, url).await,
        None => 0,
    };
    let conflicts_before = conflict_stats(stack).await;
    let mut pairs = Vec::new();
    for _ in 0..n {
        let device = Device::manufacture(&master, &unique_id("bench-dev-"));
        let mut phone = Phone::new(api.clone(), &unique_id("bench-phone-"));
        let r = phone.register(&device).await.unwrap_or_else(|e| fail(e));
        if r.status != 201 {
            fail(format!("register: {} {}", r.status, r.json));
        }
        phone.api = function_api("confirmation");
        pairs.push((device, phone));
    }
    let start = Instant::now();
    let workers = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (mut device, phone))| {
            let pos = shops[i % shops.len()].clone();
            async move {
                let mut ids = Vec::new();
                let (mut create, mut confirm, mut whole) =
                    (Samples::default(), Samples::default(), Samples::default());
                let mut errors = Vec::new();
                while start.elapsed() < run_for {
                    let t = Instant::now();
                    let r = pos
                        .request_payment(
                            &device.beacon(),
                            PAYMENT_AMOUNT,
                            "EUR",
                            None,
                            &unique_id("k-"),
                        )
                        .await;
                    let payment = match r {
                        Ok(r) if r.status == 201 => r.json,
                        Ok(r) => {
                            errors.push(format!("create {} {}", r.status, r.json));
                            continue;
                        }
                        Err(e) => {
                            errors.push(format!("create: {e}"));
                            continue;
                        }
                    };
                    create.push(t);
                    let t2 = Instant::now();
                    let (code, counter) = device.authorize(&payment);
                    let id = payment["payment_id"].as_str().unwrap_or_default();
                    match phone.confirm(id, &code, &counter).await {
                        Ok(r) if r.status == 200 => {
                            confirm.push(t2);
                            whole.push(t);
                            ids.push(id.to_owned());
                        }
                        Ok(r) => errors.push(format!("confirm {} {}", r.status, r.json)),
                        Err(e) => errors.push(format!("confirm: {e}")),
                    }
                }
                (create, confirm, whole, errors, ids)
            }
        });
    let (mut create, mut confirm, mut whole) =
        (Samples::default(), Samples::default(), Samples::default());
    let mut errors = Vec::new();
    let mut ids = Vec::new();
    for (a, b, c, e, i) in futures_util::future::join_all(workers).await {
        create.extend(a);
        confirm.extend(b);
        whole.extend(c);
        errors.extend(e);
        ids.extend(i);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let confirmed = whole.0.len() as u64;
    // Nothing lost: every confirmed payment settles (through SQS and the settlement function).
    let settle_start = Instant::now();
    let (mut settled, mut settled_amount) = (0, 0);
    while settle_start.elapsed() < Duration::from_secs(120) {
        (settled, settled_amount) = (0, 0);
        for pos in &shops {
            let (amount, count) = pos.settled("EUR").await.unwrap_or((0, 0));
            settled += count;
            settled_amount += amount;
        }
        if settled >= confirmed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_wait = settle_start.elapsed().as_secs_f64();
    // Each confirmed payment, read back: settled, or still `confirmed` (stuck).
    let mut by_status = std::collections::BTreeMap::<String, u64>::new();
    for id in &ids {
        let status = match PaymentId::try_from(id.as_str()) {
            Ok(pid) => match store.payment(&pid).await {
                Ok(Some(p)) => p.status.as_str().to_owned(),
                Ok(None) => "missing".to_owned(),
                Err(e) => format!("unreadable: {e}"),
            },
            Err(_) => "bad id".to_owned(),
        };
        *by_status.entry(status).or_default() += 1;
    }
    let dlq_messages = match &dlq {
        Some(url) => queue_depth(&clients.sqs, url)
            .await
            .saturating_sub(dlq_before),
        None => 0,
    };
    let conflicts = match (conflicts_before, conflict_stats(stack).await) {
        (Some(before), Some(after)) => json!({
            "transactions_refused": after.0.saturating_sub(before.0),
            "writes_refused": after.1.saturating_sub(before.1),
        }),
        _ => serde_json::Value::Null,
    };
    json!({
        "via": if watch.is_some() { "cargo lambda watch" } else { "emulator API Gateway + Lambda" },
        "merchants": shops.len(),
        "payments_per_s": round(confirmed as f64 / elapsed),
        "confirmed": confirmed,
        "settled": settled,
        "statuses_after": by_status,
        "stuck_confirmed": by_status.get("confirmed").copied().unwrap_or(0),
        "settlement_dlq_messages": dlq_messages,
        "balance_matches": settled_amount == settled * PAYMENT_AMOUNT,
        "conflict_layer": conflicts,
        "all_settled_after_s": round(settle_wait),
        "errors": errors.len(),
        "first_errors": errors.iter().take(3).collect::<Vec<_>>(),
        "create": create.summary(),
        "confirm": confirm.summary(),
        "payment": whole.summary(),
    })
}

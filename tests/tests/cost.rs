//! AWS requests and write units of one full payment (registration excluded), counted by the
//! failpoints probe (an SDK interceptor on the handlers' clients) while the real handlers run
//! against the emulator, and write units computed from the stored items' sizes with DynamoDB's
//! rules, index writes included (there must be none). `make test` runs it as the regression
//! check: a handler that starts making more calls or writes fails it. `make bench` prints the
//! same figures in its table.

use std::collections::{BTreeMap, HashMap};

use crate::common::{
    Harness, answer, challenge_request, registration_over, registration_request, request,
};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use twochan_api::{
    App,
    routes::{Function, NoQueue, handle},
    settlement::settle_batch,
};
use twochan_aws::{DynamoStore, SqsEventQueue, SqsSettlementQueue, failpoints::Probe, keys};
use twochan_tools::unique_id;

/// The ceiling per step, and in all (issue target: 8 requests per settled payment).
/// Revision 2 added one `SQS SendMessage` to confirm and to settle: the webhook events, sent before
/// their commits whether or not the merchant has an endpoint (docs/PERFORMANCE.md says why).
const BUDGET: [(&str, usize); 3] = [("create", 3), ("confirm", 5), ("settle", 2)];
const TOTAL_BUDGET: usize = 10;
/// Write units per settled payment (issue target: 10). More means a write grew past 1 KB, a new
/// one was added, or a write started to touch the index.
const WCU_BUDGET: usize = 10;

/// DynamoDB's item size: attribute names plus values (numbers: about one byte per two digits,
/// plus one), as its capacity rules count it.
fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.trim_start_matches('-').len().div_ceil(2) + 1,
            AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, v)| k.len() + value(v) + 1).sum::<usize>()
            }
            AttributeValue::L(l) => 3 + l.iter().map(|v| value(v) + 1).sum::<usize>(),
            other => format!("{other:?}").len(),
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// Write units of one write of an item of `size` bytes: per started KB, doubled in a transaction.
fn write_units(size: usize, transactional: bool) -> usize {
    size.div_ceil(1024).max(1) * if transactional { 2 } else { 1 }
}

async fn item(ctx: &Harness, pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    ctx.dynamodb
        .get_item()
        .table_name(&ctx.table)
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_else(|| panic!("no item {pk}/{sk}"))
}

#[tokio::test]
async fn one_payment_costs_at_most_ten_aws_requests() {
    let ctx = Harness::new().await;
    let queue_url = ctx.scratch_queue("twochan-cost-").await;
    let app = |probe: &Probe| {
        let c = probe.clients(&ctx.config);
        App {
            store: DynamoStore::new(c.dynamodb, ctx.table.clone()),
            queue: SqsSettlementQueue::new(c.sqs.clone(), queue_url.clone()),
            issuer_keys: ctx.master.clone().into(),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(c.sqs.clone(), ctx.var("WEBHOOK_QUEUE_URL")),
            allow_loopback_webhooks: true,
        }
    };
    let plain = App {
        store: ctx.store.clone(),
        queue: NoQueue,
        issuer_keys: ctx.master.clone().into(),
        pending_ttl_seconds: 120,
        events: ctx.events(),
        allow_loopback_webhooks: true,
    };
    let pos = ctx.pos().await;
    let mut device = ctx.device();
    let terminal = unique_id("term-");
    let reg = registration_request(&ctx.store, &device, &terminal).await;
    let (status, body) = answer(&handle(&plain, Function::Registration, reg).await);
    assert_eq!(status, 201, "{body}");
    let token = body["terminal_token"].as_str().unwrap().to_owned();
    let code_pk = keys::device_pk(device.code());
    let index_keys = |item: &HashMap<String, AttributeValue>| {
        let mut keys: Vec<(String, AttributeValue)> = item
            .iter()
            .filter(|(k, _)| k.starts_with("gsi"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    };
    let device_index_before = index_keys(&item(&ctx, &code_pk, keys::SK_DEVICE).await);

    let mut calls: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let probe = Probe::new();
    let create = request(
        "POST",
        "/v1/payments",
        &pos.api_key,
        &[("idempotency-key", "k-cost")],
        Some(
            &json!({"unique_code": device.code(), "beacon_proof": device.beacon().proof, "amount": 4200, "currency": "EUR",
                     "pos_id": "pos-1", "reference": "order-1234"}),
        ),
    );
    let (status, payment) = answer(&handle(&app(&probe), Function::PaymentRequest, create).await);
    assert_eq!(status, 201, "{payment}");
    calls.insert("create", probe.calls());

    let probe = Probe::new();
    let (code, counter) = device.authorize(&payment);
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    let confirm = request(
        "POST",
        &format!("/v1/payments/{id}/confirm"),
        &token,
        &[],
        Some(&json!({"auth_code": code, "counter": counter})),
    );
    let (status, body) = answer(&handle(&app(&probe), Function::Confirmation, confirm).await);
    assert_eq!(status, 200, "{body}");
    calls.insert("confirm", probe.calls());

    let message = ctx
        .sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
        .pop()
        .expect("the settlement message");
    let mut record = SqsMessage::default();
    record.message_id = message.message_id;
    record.body = message.body;
    let mut event = SqsEvent::default();
    event.records = vec![record];
    let probe = Probe::new();
    let settling = app(&probe);
    let out = settle_batch(&settling.store, &settling.events, event).await;
    assert!(out.batch_item_failures.is_empty());
    calls.insert("settle", probe.calls());
    let _ = ctx.sqs.delete_queue().queue_url(&queue_url).send().await;

    // Write units, from the items as stored at the end (each write's item is at most that size).
    let pid = twochan_domain::PaymentId::try_from(id.as_str()).unwrap();
    let stored_payment = item(&ctx, &keys::payment_pk(&pid), keys::SK_PAYMENT).await;
    let payment_item = item_size(&stored_payment);
    let device_after = item(&ctx, &code_pk, keys::SK_DEVICE).await;
    let device_item = item_size(&device_after);
    let merchant_pk = keys::merchant_pk(&pos.merchant_id);
    let balance_item = item_size(&item(&ctx, &merchant_pk, &keys::balance_sk("EUR")).await);
    let writes: [(&str, &str, &str, usize, bool); 6] = [
        (
            "create",
            "DynamoDB.UpdateItem",
            "device lock",
            device_item,
            false,
        ),
        ("create", "DynamoDB.PutItem", "payment", payment_item, false),
        (
            "confirm",
            "DynamoDB.TransactWriteItems",
            "payment confirmed",
            payment_item,
            true,
        ),
        (
            "confirm",
            "DynamoDB.TransactWriteItems",
            "device counter + unlock",
            device_item,
            true,
        ),
        (
            "settle",
            "DynamoDB.TransactWriteItems",
            "payment settled + journal legs",
            payment_item,
            true,
        ),
        (
            "settle",
            "DynamoDB.TransactWriteItems",
            "balance",
            balance_item,
            true,
        ),
    ];
    // The list is the handlers' real writes: every write call made is in it, and nothing else.
    for (step, step_calls) in &calls {
        let mut made: Vec<&str> = step_calls
            .iter()
            .map(String::as_str)
            .filter(|c| !c.ends_with("GetItem") && !c.ends_with(".Query") && !c.starts_with("SQS."))
            .collect();
        let mut listed: Vec<&str> = writes
            .iter()
            .filter(|w| w.0 == *step)
            .map(|w| w.1)
            .collect();
        made.sort_unstable();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(
            made, listed,
            "{step}: the write calls changed: {step_calls:?}"
        );
    }
    // Index writes: the payment item carries no index key, and the device's index keys (set by
    // registration) did not change, so none of these writes touched gsi1.
    assert!(index_keys(&stored_payment).is_empty(), "{stored_payment:?}");
    assert_eq!(index_keys(&device_after), device_index_before);
    let writes: Vec<(&str, &str, usize, bool)> =
        writes.iter().map(|w| (w.0, w.2, w.3, w.4)).collect();
    let wcu: usize = writes.iter().map(|w| write_units(w.2, w.3)).sum();

    let total: usize = calls.values().map(Vec::len).sum();
    let table = calls
        .iter()
        .map(|(step, c)| format!("  {step:8} {} requests: {}", c.len(), c.join(", ")))
        .collect::<Vec<_>>()
        .join("\n");
    let writes_table = writes
        .iter()
        .map(|(step, what, size, tx)| {
            format!(
                "  {step:8} {what:32} {size:5} B  {} WCU",
                write_units(*size, *tx)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    println!("AWS requests per payment: {total}\n{table}\nwrite units: {wcu}\n{writes_table}");
    for (step, budget) in BUDGET {
        assert!(
            calls[step].len() <= budget,
            "{step} makes {} AWS requests, budget {budget}:\n{table}",
            calls[step].len()
        );
    }
    assert!(
        total <= TOTAL_BUDGET,
        "{total} AWS requests per payment, budget {TOTAL_BUDGET}:\n{table}"
    );
    assert!(
        wcu <= WCU_BUDGET,
        "{wcu} write units per payment, budget {WCU_BUDGET}:\n{writes_table}"
    );
}

/// A busy merchant's batch: ten confirmed payments of one merchant and currency, delivered in one
/// batch as the FIFO queue groups them, settle in two AWS requests in all (one `SendMessageBatch`
/// of their `payment.settled` events, one `TransactWriteItems` of ten payments and the balance
/// once): 22 write units for ten payments, 2.2 each, where one message alone costs 4.
#[tokio::test]
async fn a_batch_of_one_merchant_settles_in_two_requests() {
    const K: usize = 10;
    let ctx = Harness::new().await;
    let queue_url = ctx.scratch_queue("twochan-cost-batch-").await;
    let app = App {
        store: ctx.store.clone(),
        queue: SqsSettlementQueue::new(ctx.sqs.clone(), queue_url.clone()),
        issuer_keys: ctx.master.clone().into(),
        pending_ttl_seconds: 120,
        events: ctx.events(),
        allow_loopback_webhooks: true,
    };
    let pos = ctx.pos().await;
    let mut ids = Vec::new();
    for i in 0..K {
        let (mut device, phone) = ctx.paired().await;
        let create = request(
            "POST",
            "/v1/payments",
            &pos.api_key,
            &[("idempotency-key", &format!("k-batch-{i}"))],
            Some(
                &json!({"unique_code": device.code(), "beacon_proof": device.beacon().proof,
                         "amount": 100 + i, "currency": "EUR", "pos_id": "pos-1"}),
            ),
        );
        let (status, payment) = answer(&handle(&app, Function::PaymentRequest, create).await);
        assert_eq!(status, 201, "{payment}");
        let (code, counter) = device.authorize(&payment);
        let id = payment["payment_id"].as_str().unwrap();
        let confirm = request(
            "POST",
            &format!("/v1/payments/{id}/confirm"),
            phone.token.as_deref().unwrap(),
            &[],
            Some(&json!({"auth_code": code, "counter": counter})),
        );
        let (status, body) = answer(&handle(&app, Function::Confirmation, confirm).await);
        assert_eq!(status, 200, "{body}");
        ids.push(twochan_domain::PaymentId::try_from(id).unwrap());
    }
    let mut event = SqsEvent::default();
    while event.records.len() < K {
        let got = ctx
            .sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        assert!(!got.is_empty(), "only {} messages", event.records.len());
        for message in got {
            let mut record = SqsMessage::default();
            record.message_id = message.message_id;
            record.body = message.body;
            event.records.push(record);
        }
    }
    let _ = ctx.sqs.delete_queue().queue_url(&queue_url).send().await;
    let probe = Probe::new();
    let c = probe.clients(&ctx.config);
    let store = DynamoStore::new(c.dynamodb, ctx.table.clone());
    let events = SqsEventQueue::new(c.sqs, ctx.var("WEBHOOK_QUEUE_URL"));
    let out = settle_batch(&store, &events, event).await;
    assert!(out.batch_item_failures.is_empty(), "{out:?}");
    assert_eq!(
        probe.calls(),
        ["SQS.SendMessageBatch", "DynamoDB.TransactWriteItems"],
        "one group, one transaction"
    );
    let (amount, count) = pos.settled("EUR").await.unwrap();
    assert_eq!((amount, count), ((100..100 + K as u64).sum(), K as u64));
    let balance_item = item_size(
        &item(
            &ctx,
            &keys::merchant_pk(&pos.merchant_id),
            &keys::balance_sk("EUR"),
        )
        .await,
    );
    let mut wcu = write_units(balance_item, true);
    for id in &ids {
        let stored = item(&ctx, &keys::payment_pk(id), keys::SK_PAYMENT).await;
        wcu += write_units(item_size(&stored), true);
    }
    assert_eq!(wcu, 2 * (K + 1), "a payment or the balance grew past 1 KB");
    println!(
        "a batch of {K}: 2 AWS requests, {wcu} write units ({:.1} per payment)",
        wcu as f64 / K as f64
    );
}

/// What revision 2 adds to a registration: the challenge (one `PutItem`, used up by one
/// `DeleteItem`), the terminal's holding read with the device (`BatchGetItem`, was `GetItem`) and
/// written in the registration's transaction; and one `GetItem` of the bearer when a phone adds a
/// device to its terminal, whose token the transaction checks. Payment requests are unchanged:
/// the beacon check is CPU only (`one_payment_costs_at_most_ten_aws_requests`).
#[tokio::test]
async fn a_registration_costs_four_aws_requests_and_eight_write_units() {
    let ctx = Harness::new().await;
    let app = |probe: &Probe| {
        let c = probe.clients(&ctx.config);
        App {
            store: DynamoStore::new(c.dynamodb, ctx.table.clone()),
            queue: NoQueue,
            issuer_keys: ctx.master.clone().into(),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(c.sqs.clone(), ctx.var("WEBHOOK_QUEUE_URL")),
            allow_loopback_webhooks: true,
        }
    };
    let terminal = unique_id("term-");
    let mut token = String::new();
    for (n, device) in [ctx.device(), ctx.device()].iter().enumerate() {
        let probe = Probe::new();
        let ask = challenge_request(device);
        let (status, body) = answer(&handle(&app(&probe), Function::Registration, ask).await);
        assert_eq!(status, 201, "{body}");
        let challenge = body["challenge"].as_str().unwrap();
        let register = registration_over(device, &terminal, challenge, &token);
        let (status, body) = answer(&handle(&app(&probe), Function::Registration, register).await);
        assert_eq!(status, 201, "{body}");
        let mut expected = vec![
            "DynamoDB.PutItem",
            "DynamoDB.DeleteItem",
            "DynamoDB.BatchGetItem",
            "DynamoDB.TransactWriteItems",
        ];
        if n == 1 {
            // The second device of the terminal, added with the first one's token.
            expected.insert(1, "DynamoDB.GetItem");
        }
        assert_eq!(probe.calls(), expected, "registration {n}");
        token = body["terminal_token"].as_str().unwrap().to_owned();
    }
    // Write units of the first registration, from the items as stored: the challenge's put and
    // delete (an item of about 100 bytes: 1 + 1) and a transaction of device, token and terminal.
    let first = ctx
        .items_of(&keys::token_pk(
            twochan_domain::crypto::SecretHash::of(&token).as_str(),
        ))
        .await;
    let device_code = first[0]["unique_code"].as_s().unwrap().clone();
    let transaction: usize = [
        item(&ctx, &keys::device_pk(&device_code), keys::SK_DEVICE).await,
        first[0].clone(),
        item(&ctx, &keys::terminal_pk(&terminal), keys::SK_TERMINAL).await,
    ]
    .iter()
    .map(|i| write_units(item_size(i), true))
    .sum();
    let units = 1 + 1 + transaction;
    println!(
        "registration: 4 AWS requests and {units} write units (5 and {} with a token)",
        units + 2
    );
    assert_eq!(units, 8);
}

//! The sweeper against the emulator: a payment that stays `confirmed` has its settlement message
//! sent again and settles from it; a payment confirmed recently, a pending one and a settled one
//! are left alone. The real handlers make the payments, the real DynamoDB adapter scans (a table
//! of the test's own, on the stack's schema, so the scan sees only these payments and the stack's
//! own sweeper never sees them), the real SQS adapter sends to a queue of the test's own (FIFO
//! when the stack's settlement queue is), and the real settlement use case settles.
//!
//! End to end, the deployed sweeper runs on its schedule (a minute on the local stack): a payment
//! of the stack's table left `confirmed` long ago is settled through the stack's settlement queue
//! and function.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{Harness, answer, eventually, registration_request, request};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use serde_json::{Value, json};
use twochan_api::{
    App,
    routes::{Function, handle},
    settlement::settle_batch,
    sweeper::{Stop, SweepLimits, sweep},
};
use twochan_aws::{DynamoStore, SqsEventQueue, SqsSettlementQueue, keys};
use twochan_domain::{
    Amount, Currency, MerchantId, PaymentId, PaymentStatus, Timestamp, UniqueCode,
    ports::{Ledger, Payments, SettlementMessage},
};
use twochan_tools::{Device, new_merchant, unique_id};

/// How long a payment may stay confirmed in this test's runs.
const STUCK_AFTER_SECONDS: i64 = 300;

const UNBOUNDED: SweepLimits = SweepLimits {
    max_pages: 1000,
    max_payments: 1000,
    stop_at: None,
};

/// A sweeper test's own table (the stack's schema), merchant, device and phone, and the
/// handlers on them. Confirmations send to `held`, which nothing consumes: what they confirm
/// stays `confirmed` until the test settles it.
struct SweeperFixture {
    table: String,
    store: DynamoStore,
    app: App<DynamoStore, SqsSettlementQueue, SqsEventQueue>,
    held: String,
    events: String,
    merchant: String,
    api_key: String,
    device: Device,
    token: String,
    own_table: bool,
}

impl SweeperFixture {
    /// On a new table of the stack's schema, or (`own_table` false) on the stack's table.
    async fn new(ctx: &Harness, own_table: bool) -> SweeperFixture {
        let table = if own_table {
            let table = unique_id("twochan-sweeper-");
            crate::common::create_table_like(&ctx.dynamodb, &ctx.table, &ctx.dynamodb, &table)
                .await;
            table
        } else {
            ctx.table.clone()
        };
        let store = DynamoStore::new(ctx.dynamodb.clone(), table.clone());
        let held = ctx.scratch_settlement_queue("twochan-sweeper-held-").await;
        let events = ctx.scratch_queue("twochan-sweeper-events-").await;
        let app = App {
            store: store.clone(),
            queue: SqsSettlementQueue::new(ctx.sqs.clone(), held.clone()),
            issuer_keys: ctx.master.clone().into(),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(ctx.sqs.clone(), events.clone()),
            allow_loopback_webhooks: true,
        };
        let (merchant, api_key) = new_merchant(&store, "m-").await.unwrap();
        let device = ctx.device();
        let reg = registration_request(&store, &device, &unique_id("term-")).await;
        let (status, body) = answer(&handle(&app, Function::Registration, reg).await);
        assert_eq!(status, 201, "{body}");
        SweeperFixture {
            table,
            store,
            app,
            held,
            events,
            merchant,
            api_key,
            device,
            token: body["terminal_token"].as_str().unwrap().to_owned(),
            own_table,
        }
    }

    async fn pending(&self, amount: u64) -> Value {
        let create = request(
            "POST",
            "/v1/payments",
            &self.api_key,
            &[("idempotency-key", &unique_id("k-"))],
            Some(&json!({"unique_code": self.device.code(),
                         "beacon_proof": self.device.beacon().proof,
                         "amount": amount, "currency": "KRW", "pos_id": "pos-1"})),
        );
        let (status, payment) = answer(&handle(&self.app, Function::PaymentRequest, create).await);
        assert_eq!(status, 201, "{payment}");
        payment
    }

    async fn confirmed(&mut self, amount: u64) -> Value {
        let payment = self.pending(amount).await;
        let (code, counter) = self.device.authorize(&payment);
        let id = payment["payment_id"].as_str().unwrap();
        let confirm = request(
            "POST",
            &format!("/v1/payments/{id}/confirm"),
            &self.token,
            &[],
            Some(&json!({"auth_code": code, "counter": counter})),
        );
        let (status, body) = answer(&handle(&self.app, Function::Confirmation, confirm).await);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "confirmed");
        body
    }

    /// Makes a payment look confirmed `seconds` ago: its confirmation time written back.
    async fn confirmed_ago(&self, ctx: &Harness, payment: &Value, seconds: i64) {
        let id = payment_id(payment);
        ctx.dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(keys::payment_pk(&id)))
            .key("sk", AttributeValue::S(keys::SK_PAYMENT.into()))
            .update_expression("SET confirmed_at = :at")
            .condition_expression("attribute_exists(confirmed_at)")
            .expression_attribute_values(
                ":at",
                AttributeValue::N((Timestamp::now().millis() - seconds * 1000).to_string()),
            )
            .send()
            .await
            .expect("backdate the confirmation");
    }

    async fn status(&self, payment: &Value) -> PaymentStatus {
        self.store
            .payment(&payment_id(payment))
            .await
            .unwrap()
            .expect("the payment")
            .status
    }

    /// How many ledger entries the payment has (2 once settled).
    async fn entries(&self, payment: &Value) -> usize {
        self.store
            .ledger_entries(&payment_id(payment))
            .await
            .unwrap()
            .len()
    }

    async fn teardown(&self, ctx: &Harness, queues: &[&str]) {
        for url in [self.held.as_str(), self.events.as_str()]
            .into_iter()
            .chain(queues.iter().copied())
        {
            let _ = ctx.sqs.delete_queue().queue_url(url).send().await;
        }
        if self.own_table {
            let _ = ctx
                .dynamodb
                .delete_table()
                .table_name(&self.table)
                .send()
                .await;
        }
    }
}

fn payment_id(payment: &Value) -> PaymentId {
    PaymentId::try_from(payment["payment_id"].as_str().unwrap()).unwrap()
}

/// Items of ~4 KB that sort before every payment item (`FILLER#` < `PAYMENT#`), enough to push
/// the payments past the scan's first 1 MB page.
async fn fill(ctx: &Harness, table: &str, items: usize) {
    let body = "x".repeat(4000);
    let requests: Vec<WriteRequest> = (0..items)
        .map(|i| {
            let item = HashMap::from([
                ("pk".to_owned(), AttributeValue::S(format!("FILLER#{i:05}"))),
                ("sk".to_owned(), AttributeValue::S("FILLER".into())),
                ("body".to_owned(), AttributeValue::S(body.clone())),
            ]);
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build()
        })
        .collect();
    for chunk in requests.chunks(25) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            let out = ctx
                .dynamodb
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .expect("write filler");
            pending = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
        }
    }
}

#[tokio::test]
async fn a_payment_stuck_confirmed_is_sent_again_and_settles_from_it() {
    let ctx = Harness::new().await;
    let mut w = SweeperFixture::new(&ctx, true).await;
    let swept = ctx.scratch_settlement_queue("twochan-sweeper-swept-").await;

    let stuck = w.confirmed(4100).await;
    let settled = w.confirmed(4200).await;
    let recent = w.confirmed(4300).await;
    let pending = w.pending(4400).await;
    // Settled, then made to look confirmed long ago too: only its status keeps it out.
    let message = SettlementMessage {
        payment_id: payment_id(&settled),
        merchant_id: MerchantId::try_from(w.merchant.as_str()).unwrap(),
        unique_code: UniqueCode::try_from(w.device.code()).unwrap(),
        amount: Amount::try_from(4200).unwrap(),
        currency: Currency::try_from("KRW").unwrap(),
        sent_at_ms: Timestamp::now().millis(),
    };
    w.store.settle(&message, Timestamp::now()).await.unwrap();
    assert_eq!(w.status(&settled).await, PaymentStatus::Settled);
    w.confirmed_ago(&ctx, &stuck, 2 * STUCK_AFTER_SECONDS).await;
    w.confirmed_ago(&ctx, &settled, 3 * STUCK_AFTER_SECONDS)
        .await;
    w.confirmed_ago(&ctx, &recent, STUCK_AFTER_SECONDS - 60)
        .await;
    // More than a page of other items before the payments: the scan goes on from its cursor.
    fill(&ctx, &w.table, 300).await;

    let sweeper_queue = SqsSettlementQueue::new(ctx.sqs.clone(), swept.clone());
    // A run that may read one page stops there, says so, and has found nothing yet.
    let sweep_now = |limits| {
        sweep(
            &w.store,
            &sweeper_queue,
            Timestamp::now(),
            STUCK_AFTER_SECONDS,
            limits,
        )
    };
    let early = sweep_now(SweepLimits {
        max_pages: 1,
        ..UNBOUNDED
    })
    .await;
    assert_eq!(
        (
            early.pages,
            early.found,
            early.stopped.clone(),
            early.complete
        ),
        (1, 0, Stop::PageLimit, false),
        "{early:?}"
    );
    assert!(ctx.receive_all(&swept, false).await.is_empty());

    let summary = sweep_now(UNBOUNDED).await;
    assert_eq!(
        (summary.found, summary.reenqueued, summary.failed),
        (1, 1, 0),
        "{summary:?}"
    );
    assert!(summary.complete && summary.pages >= 2, "{summary:?}");
    assert_eq!(summary.stopped, Stop::Complete);

    // Exactly the stuck payment's message arrived, describing it.
    let messages = ctx.receive_all(&swept, false).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let body: SettlementMessage =
        serde_json::from_str(messages[0].body().unwrap()).expect("a settlement message");
    let stored = w.store.payment(&payment_id(&stuck)).await.unwrap().unwrap();
    assert!(body.describes(&stored), "{body:?} vs {stored:?}");
    assert_eq!(stored.status, PaymentStatus::Confirmed);
    // On a FIFO queue, in its merchant and currency's group, as the confirmation sends it.
    if swept.ends_with(".fifo") {
        let group = messages[0]
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId));
        assert_eq!(group, Some(&body.group()));
    }

    // Settling it (the settlement use case, as the settlement function runs it) settles it.
    let mut record = SqsMessage::default();
    record.message_id = messages[0].message_id.clone();
    record.body = messages[0].body.clone();
    let mut event = SqsEvent::default();
    event.records = vec![record];
    let out = settle_batch(&w.store, &w.app.events, event).await;
    assert!(out.batch_item_failures.is_empty(), "{out:?}");
    assert_eq!(w.status(&stuck).await, PaymentStatus::Settled);
    assert_eq!(w.entries(&stuck).await, 2);
    // The others are as they were.
    assert_eq!(w.status(&recent).await, PaymentStatus::Confirmed);
    assert_eq!(w.status(&pending).await, PaymentStatus::Pending);
    assert_eq!(w.status(&settled).await, PaymentStatus::Settled);

    // Nothing is stuck any more: the next run finds nothing.
    let again = sweep_now(UNBOUNDED).await;
    assert_eq!((again.found, again.complete), (0, true), "{again:?}");

    w.teardown(&ctx, &[&swept]).await;
}

/// End to end: the deployed sweeper, on its schedule, finds a payment of the stack's table that
/// stays `confirmed`, and the stack's settlement function settles it from the message it sent.
/// The payment looks confirmed 8 days ago, past any `StuckAfterSeconds` the stack may have; the
/// local stack's schedule is a minute (EventBridge's countdown, then MiniStack's 10 s tick).
#[tokio::test]
async fn the_deployed_sweeper_settles_a_payment_left_confirmed() {
    let ctx = Harness::new().await;
    let mut w = SweeperFixture::new(&ctx, false).await;
    let stuck = w.confirmed(4500).await;
    assert_eq!(w.status(&stuck).await, PaymentStatus::Confirmed);
    w.confirmed_ago(&ctx, &stuck, 8 * 86_400).await;
    let settled = eventually(Duration::from_secs(150), || async {
        (w.status(&stuck).await == PaymentStatus::Settled).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "the deployed sweeper did not get {} settled within 150 s (is the stack deployed with it? \
         make up)",
        stuck["payment_id"]
    );
    assert_eq!(w.entries(&stuck).await, 2);
    w.teardown(&ctx, &[]).await;
}

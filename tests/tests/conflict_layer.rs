//! The conflict-faithful DynamoDB proxy (`twochan_tools::conflict_proxy`) in front of the stack's
//! emulator, seen through the real SDK: DynamoDB's transaction-conflict rule holds, everything
//! else passes. Each test runs its own proxy (a long hold, so that "in flight" is a window a test
//! can act in) on a private table of the stack's schema.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::Harness;
use aws_sdk_dynamodb::{
    Client,
    error::ProvideErrorMetadata,
    error::SdkError,
    operation::{
        delete_item::DeleteItemError, put_item::PutItemError,
        transact_write_items::TransactWriteItemsError, update_item::UpdateItemError,
    },
    types::{
        AttributeValue as Av, ConditionCheck, Delete, Put, PutRequest, TransactWriteItem, Update,
        WriteRequest,
    },
};
use twochan_tools::{
    conflict_proxy::{self, ONGOING, RunningProxy, STATS_PATH, StatsSnapshot},
    unique_id,
};

/// How long the test proxy holds a transaction before forwarding it.
const HOLD: Duration = Duration::from_millis(1500);

struct Fixture {
    ctx: Harness,
    proxy: RunningProxy,
    /// The SDK through the test's proxy.
    db: Client,
    table: String,
}

impl Fixture {
    async fn new() -> Self {
        let ctx = Harness::new().await;
        // In front of the emulator itself (not of the stack's proxy, if any).
        let proxy = conflict_proxy::start_ephemeral(&ctx.var("AWS_ENDPOINT_URL"), HOLD)
            .await
            .expect("start the proxy");
        let db = Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&ctx.config)
                .endpoint_url(&proxy.url)
                .build(),
        );
        let table = unique_id("twochan-conflicts-");
        // Through the proxy: a control-plane call passes too.
        crate::common::create_table_like(&ctx.dynamodb, &ctx.table, &db, &table).await;
        Fixture {
            ctx,
            proxy,
            db,
            table,
        }
    }

    fn put(&self, pk: &str, n: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(key(pk)))
                    .item("n", Av::N(n.into()))
                    .build()
                    .unwrap(),
            )
            .build()
    }

    fn update(&self, pk: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(pk)))
                    .update_expression("ADD n :one")
                    .expression_attribute_values(":one", Av::N("1".into()))
                    .build()
                    .unwrap(),
            )
            .build()
    }

    fn check_absent(&self, pk: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .condition_check(
                ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(pk)))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .unwrap(),
            )
            .build()
    }

    fn delete(&self, pk: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(pk)))
                    .build()
                    .unwrap(),
            )
            .build()
    }

    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>>
    {
        self.db
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map(|_| ())
    }

    async fn put_item(
        &self,
        pk: &str,
    ) -> Result<(), SdkError<PutItemError, aws_sdk_dynamodb::config::http::HttpResponse>> {
        self.db
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key(pk)))
            .item("n", Av::N("100".into()))
            .send()
            .await
            .map(|_| ())
    }

    /// The `n` attribute of the item `pk`, as stored.
    async fn counter_of(&self, pk: &str) -> Option<String> {
        self.ctx
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk)))
            .consistent_read(true)
            .send()
            .await
            .expect("get")
            .item
            .and_then(|i| i.get("n").and_then(|n| n.as_n().ok()).cloned())
    }

    /// Waits until `items` items are held by transactions in flight at the proxy.
    async fn until_held(&self, items: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.proxy.stats.snapshot().items_held < items {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never in flight: {:?}",
                self.proxy.stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn drop_table(self) {
        let _ = self
            .ctx
            .dynamodb
            .delete_table()
            .table_name(&self.table)
            .send()
            .await;
    }
}

/// The key of the test's item `pk` (every item has the one sort key).
fn key(pk: &str) -> HashMap<String, Av> {
    HashMap::from([
        ("pk".to_owned(), Av::S(pk.to_owned())),
        ("sk".to_owned(), Av::S("ITEM".to_owned())),
    ])
}

fn codes(
    err: &SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> Vec<String> {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            assert!(
                e.message().unwrap_or_default().starts_with(
                    "Transaction cancelled, please refer cancellation reasons for specific reasons ["
                ),
                "{e:?}"
            );
            e.cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or_default().to_owned())
                .collect()
        }
        _ => panic!("expected TransactionCanceledException, got {err:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_meeting_a_transaction_in_flight_is_refused_as_dynamodb_refuses_it() {
    let f = Fixture::new().await;
    // A is in flight (held by the proxy) on a1, a2.
    let first = {
        let items = vec![f.put("a1", "1"), f.update("a2")];
        let db = f.db.clone();
        tokio::spawn(async move {
            db.transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
        })
    };
    f.until_held(2).await;

    // B overlaps on a2 only: cancelled, TransactionConflict on that item and None on the others.
    let err = f
        .transact(vec![f.put("b1", "1"), f.check_absent("a2"), f.delete("b3")])
        .await
        .unwrap_err();
    assert_eq!(codes(&err), ["None", "TransactionConflict", "None"]);
    let Some(TransactWriteItemsError::TransactionCanceledException(e)) = err.as_service_error()
    else {
        unreachable!()
    };
    assert_eq!(e.cancellation_reasons()[1].message(), Some(ONGOING));
    // Refused before the emulator saw it: b1 was not written.
    assert_eq!(f.counter_of("b1").await, None);

    // Single writes on an item of A: TransactionConflictException.
    let err = f.put_item("a1").await.unwrap_err();
    assert!(
        matches!(err.as_service_error(), Some(PutItemError::TransactionConflictException(e)) if e.message() == Some(ONGOING)),
        "{err:?}"
    );
    let err =
        f.db.update_item()
            .table_name(&f.table)
            .set_key(Some(key("a2")))
            .update_expression("SET n = :n")
            .expression_attribute_values(":n", Av::N("7".into()))
            .send()
            .await
            .unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(UpdateItemError::TransactionConflictException(_))
        ),
        "{err:?}"
    );
    let err =
        f.db.delete_item()
            .table_name(&f.table)
            .set_key(Some(key("a1")))
            .send()
            .await
            .unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(DeleteItemError::TransactionConflictException(_))
        ),
        "{err:?}"
    );
    let batch_put = |pk: &str| {
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .set_item(Some(key(pk)))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let err =
        f.db.batch_write_item()
            .request_items(&f.table, vec![batch_put("c9"), batch_put("a1")])
            .send()
            .await
            .unwrap_err();
    // The SDK's model lists no TransactionConflictException for BatchWriteItem: it arrives as an
    // unmodelled error carrying that code.
    assert_eq!(
        err.as_service_error().and_then(|e| e.code()),
        Some("TransactionConflictException"),
        "{err:?}"
    );
    assert_eq!(
        f.counter_of("c9").await,
        None,
        "a refused batch writes nothing"
    );

    // Reads pass while A is in flight (and A is not applied yet: it has not been forwarded).
    assert_eq!(f.counter_of("a1").await, None);
    f.db.get_item()
        .table_name(&f.table)
        .set_key(Some(key("a1")))
        .send()
        .await
        .expect("a read passes");

    // A transaction on other items runs alongside A.
    f.transact(vec![f.put("c1", "1"), f.put("c2", "2")])
        .await
        .expect("a disjoint transaction succeeds");

    // A itself succeeds.
    first
        .await
        .unwrap()
        .expect("the first transaction succeeds");
    assert_eq!(f.counter_of("a1").await.as_deref(), Some("1"));
    assert_eq!(f.counter_of("a2").await.as_deref(), Some("1"));

    // Once A has been answered, the same writes go through.
    f.put_item("a1")
        .await
        .expect("the put after the transaction");
    assert_eq!(f.counter_of("a1").await.as_deref(), Some("100"));
    f.transact(vec![f.put("b1", "1"), f.check_absent("b2"), f.delete("b3")])
        .await
        .expect("the cancelled transaction, again, after the first");

    let stats = f.proxy.stats.snapshot();
    assert_eq!(stats.transactions, 4, "{stats:?}");
    assert_eq!(stats.transactions_refused, 1, "{stats:?}");
    assert_eq!(stats.transaction_items_conflicted, 1, "{stats:?}");
    assert_eq!(stats.writes_refused, 4, "{stats:?}");
    for op in ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"] {
        assert_eq!(stats.refused_by_operation[op], 1, "{op}: {stats:?}");
    }
    assert_eq!(
        (stats.transactions_in_flight, stats.items_held),
        (0, 0),
        "{stats:?}"
    );
    f.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transactions_on_the_same_item_one_wins_and_other_services_pass() {
    let f = Fixture::new().await;
    // Both at once on x: exactly one is admitted, the other cancelled with TransactionConflict.
    let (one, two) = tokio::join!(
        f.transact(vec![f.update("x"), f.put("y1", "1")]),
        f.transact(vec![f.put("y2", "1"), f.update("x")]),
    );
    let refused: Vec<_> = [&one, &two].into_iter().filter(|r| r.is_err()).collect();
    assert_eq!(refused.len(), 1, "one: {one:?}\ntwo: {two:?}");
    let reasons = codes(refused[0].as_ref().unwrap_err());
    assert!(
        reasons == ["TransactionConflict", "None"] || reasons == ["None", "TransactionConflict"],
        "{reasons:?}"
    );
    assert_eq!(
        f.counter_of("x").await.as_deref(),
        Some("1"),
        "x was added to once"
    );

    // SQS (another service, another protocol) through the same proxy, unchanged.
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&f.ctx.config)
            .endpoint_url(&f.proxy.url)
            .build(),
    );
    let queue = sqs
        .get_queue_url()
        .queue_name(
            f.ctx
                .var("SETTLEMENT_QUEUE_URL")
                .rsplit('/')
                .next()
                .unwrap(),
        )
        .send()
        .await
        .expect("SQS through the proxy");
    assert!(queue.queue_url().is_some());

    // The counters over HTTP, as benchmarks read them.
    let stats: StatsSnapshot = twochan_tools::http_client()
        .get(format!("{}{STATS_PATH}", f.proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.hold_ms, HOLD.as_millis() as u64);
    assert_eq!(
        (stats.transactions, stats.transactions_refused),
        (2, 1),
        "{stats:?}"
    );
    assert!(stats.requests > stats.dynamodb_requests, "{stats:?}");
    f.drop_table().await;
}

/// With `make up`'s proxy on (the default), the stack's endpoint for the functions and the tests
/// is the proxy, and it is in front of the same emulator.
#[tokio::test]
async fn the_stack_s_proxy_answers_when_it_is_on() {
    let ctx = Harness::new().await;
    let Some(url) = ctx.stack.get("CONFLICT_PROXY_URL").map(str::to_owned) else {
        eprintln!("CONFLICT_PROXY_URL is empty: the stack runs without the proxy (CONFLICTS=off)");
        return;
    };
    let before: StatsSnapshot = twochan_tools::http_client()
        .get(format!("{url}{STATS_PATH}"))
        .send()
        .await
        .expect("the stack's proxy answers")
        .json()
        .await
        .unwrap();
    // ctx.dynamodb goes through it.
    ctx.dynamodb
        .describe_table()
        .table_name(&ctx.table)
        .send()
        .await
        .unwrap();
    let after: StatsSnapshot = twochan_tools::http_client()
        .get(format!("{url}{STATS_PATH}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(after.dynamodb_requests > before.dynamodb_requests);
}

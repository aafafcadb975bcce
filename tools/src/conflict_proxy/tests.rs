//! The rule on its own, and the proxy over HTTP in front of a fake upstream.

use super::*;

fn key(table: &str, pk: &str) -> Option<ItemKey> {
    let v = json!({"pk": {"S": pk}, "sk": {"S": "X"}});
    Some(ItemKey::new(table, v.as_object().unwrap()))
}

#[test]
fn a_transaction_meeting_an_item_in_flight_is_refused_item_by_item() {
    let mut locks = LockTable::default();
    let a = locks.begin(&[key("t", "1"), key("t", "2")]).unwrap();
    let refused = locks
        .begin(&[key("t", "3"), key("t", "2"), key("t", "4")])
        .unwrap_err();
    assert_eq!(refused, vec![false, true, false]);
    // A refused transaction holds nothing.
    assert_eq!(locks.items_held(), 2);
    assert_eq!(locks.transactions_in_flight(), 1);
    // Disjoint transactions run side by side.
    let c = locks.begin(&[key("t", "5"), key("u", "1")]).unwrap();
    assert_eq!(locks.transactions_in_flight(), 2);
    locks.finish(a);
    // Once answered, its items are free again.
    let b = locks
        .begin(&[key("t", "3"), key("t", "2"), key("t", "4")])
        .unwrap();
    locks.finish(b);
    locks.finish(c);
    assert_eq!(locks.items_held(), 0);
    assert_eq!(locks.transactions_in_flight(), 0);
}

#[test]
fn the_same_key_in_another_table_is_another_item() {
    let mut locks = LockTable::default();
    locks.begin(&[key("t", "1")]).unwrap();
    assert!(locks.begin(&[key("u", "1")]).is_ok());
    assert_eq!(
        locks.conflicts(&[key("t", "1"), key("u", "1")]),
        [true, true]
    );
    assert_eq!(locks.conflicts(&[key("v", "1"), None]), [false, false]);
}

#[test]
fn an_item_twice_in_one_transaction_is_not_a_conflict_with_itself() {
    let mut locks = LockTable::default();
    let id = locks.begin(&[key("t", "1"), key("t", "1"), None]).unwrap();
    assert_eq!(locks.items_held(), 1);
    locks.finish(id);
    assert_eq!(locks.items_held(), 0);
}

#[test]
fn single_writes_are_checked_and_hold_nothing() {
    let mut locks = LockTable::default();
    locks.begin(&[key("t", "1")]).unwrap();
    assert_eq!(locks.conflicts(&[key("t", "1")]), [true]);
    assert_eq!(locks.conflicts(&[key("t", "2")]), [false]);
    assert_eq!(locks.items_held(), 1);
}

#[test]
fn key_attribute_order_does_not_matter_and_values_do() {
    let a = json!({"pk": {"S": "1"}, "sk": {"S": "X"}});
    let b = json!({"sk": {"S": "X"}, "pk": {"S": "1"}});
    let c = json!({"sk": {"S": "Y"}, "pk": {"S": "1"}});
    let k = |v: &Value| ItemKey::new("t", v.as_object().unwrap());
    assert_eq!(k(&a), k(&b));
    assert_ne!(k(&a), k(&c));
    // A put's item is named by its key attributes alone.
    let item = json!({"pk": {"S": "1"}, "sk": {"S": "X"}, "amount": {"N": "5"}});
    let names = vec!["pk".to_owned(), "sk".to_owned()];
    assert_eq!(
        ItemKey::of_item("t", item.as_object().unwrap(), &names),
        Some(k(&a))
    );
    assert_eq!(
        ItemKey::of_item("t", item.as_object().unwrap(), &["id".to_owned()]),
        None
    );
}

#[test]
fn the_writes_of_each_request_kind_are_read_in_order() {
    let tx = json!({"TransactItems": [
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "1"}, "sk": {"S": "X"}, "a": {"N": "1"}}}},
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "2"}, "sk": {"S": "X"}}, "UpdateExpression": "SET a = :a"}},
        {"Delete": {"TableName": "u", "Key": {"pk": {"S": "3"}, "sk": {"S": "X"}}}},
        {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "4"}, "sk": {"S": "X"}}, "ConditionExpression": "attribute_exists(pk)"}},
        {"Nonsense": {}}
    ]});
    let t = targets(WriteOp::TransactWriteItems, &tx);
    assert_eq!(t.len(), 5);
    assert!(matches!(t[0], Target::Item("t", _)));
    assert!(matches!(t[2], Target::Key("u", _)));
    assert_eq!(t[4], Target::Unknown);
    assert_eq!(tables_of_puts(&t), ["t"]);
    let schema = |_: &str| Some(vec!["pk".to_owned(), "sk".to_owned()]);
    let items: Vec<_> = t.iter().map(|t| t.item(&schema)).collect();
    assert_eq!(items[0], key("t", "1"));
    assert_eq!(items[1], key("t", "2"));
    assert_eq!(items[2], key("u", "3"));
    assert_eq!(items[3], key("t", "4"));
    assert_eq!(items[4], None);

    let batch = json!({"RequestItems": {"t": [
        {"PutRequest": {"Item": {"pk": {"S": "1"}, "sk": {"S": "X"}}}},
        {"DeleteRequest": {"Key": {"pk": {"S": "2"}, "sk": {"S": "X"}}}}
    ]}});
    let items: Vec<_> = targets(WriteOp::BatchWriteItem, &batch)
        .iter()
        .map(|t| t.item(&schema))
        .collect();
    assert_eq!(items, [key("t", "1"), key("t", "2")]);

    let put = json!({"TableName": "t", "Item": {"pk": {"S": "1"}, "sk": {"S": "X"}}});
    assert_eq!(
        targets(WriteOp::PutItem, &put)[0].item(&schema),
        key("t", "1")
    );
    let update = json!({"TableName": "t", "Key": {"pk": {"S": "1"}, "sk": {"S": "X"}}});
    assert_eq!(
        targets(WriteOp::UpdateItem, &update)[0].item(&schema),
        key("t", "1")
    );
    assert_eq!(targets(WriteOp::DeleteItem, &json!({}))[0], Target::Unknown);
}

#[test]
fn only_dynamodb_writes_are_subject_to_the_rule() {
    assert_eq!(
        WriteOp::of_target("DynamoDB_20120810.TransactWriteItems"),
        Some(WriteOp::TransactWriteItems)
    );
    assert_eq!(
        WriteOp::of_target("DynamoDB_20120810.BatchWriteItem"),
        Some(WriteOp::BatchWriteItem)
    );
    for other in [
        "DynamoDB_20120810.GetItem",
        "DynamoDB_20120810.TransactGetItems",
        "DynamoDB_20120810.Query",
        "AmazonSQS.SendMessage",
        "AmazonSSM.GetParameter",
        "PutItem",
    ] {
        assert_eq!(WriteOp::of_target(other), None, "{other}");
    }
}

#[test]
fn refusals_are_shaped_like_dynamodb_s() {
    let b = canceled_body(&[false, true]);
    assert_eq!(
        b["__type"],
        "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
    );
    assert_eq!(
        b["Message"],
        "Transaction cancelled, please refer cancellation reasons for specific reasons [None, TransactionConflict]"
    );
    assert_eq!(
        b["CancellationReasons"],
        json!([{"Code": "None"}, {"Code": "TransactionConflict", "Message": ONGOING}])
    );
    let c = conflict_body();
    assert_eq!(
        c["__type"],
        "com.amazonaws.dynamodb.v20120810#TransactionConflictException"
    );
    assert_eq!(c["message"], ONGOING);
}

/// A stand-in for the emulator: records every request, answers DynamoDB calls with `{}` (a
/// `pk`/`sk` key schema for DescribeTable) and anything else with 201 and its body echoed.
type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, Bytes)>>>;

async fn fake_upstream() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let target = parts
                            .headers
                            .get("x-amz-target")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        log.lock().unwrap().push((
                            parts.method.clone(),
                            parts.uri.to_string(),
                            parts.headers.clone(),
                            body.clone(),
                        ));
                        let resp = if target.ends_with(".DescribeTable") {
                            json_response(
                                StatusCode::OK,
                                &json!({"Table": {"KeySchema": [
                                    {"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}]}}),
                            )
                        } else if target.starts_with(DYNAMODB_TARGET_PREFIX) {
                            json_response(StatusCode::OK, &json!({}))
                        } else {
                            let mut r = Response::new(Full::new(body));
                            *r.status_mut() = StatusCode::CREATED;
                            r.headers_mut()
                                .insert("x-upstream", HeaderValue::from_static("yes"));
                            r
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn other_requests_pass_through_unchanged() {
    let (upstream, seen) = fake_upstream().await;
    let proxy = start_ephemeral(&upstream, DEFAULT_HOLD).await.unwrap();
    let http = crate::http_client();
    let resp = http
        .put(format!("{}/bucket/a%20key?versionId=3&x=y", proxy.url))
        .header("host", "s3.localhost.example:4566")
        .header("authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc")
        .header("x-amz-target", "AmazonSQS.SendMessage")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert_eq!(resp.text().await.unwrap(), "the body");
    let seen = seen.lock().unwrap();
    let (method, uri, headers, body) = &seen[0];
    assert_eq!(method, Method::PUT);
    assert_eq!(uri, "/bucket/a%20key?versionId=3&x=y");
    assert_eq!(headers["host"], "s3.localhost.example:4566");
    assert!(
        headers["authorization"]
            .to_str()
            .unwrap()
            .ends_with("Signature=abc")
    );
    assert_eq!(headers["x-amz-target"], "AmazonSQS.SendMessage");
    assert_eq!(body.as_ref(), b"the body");
    let stats = proxy.stats.snapshot();
    assert_eq!((stats.requests, stats.dynamodb_requests), (1, 0));
}

fn sdk(url: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .http_client(twochan_aws::http_client())
        .endpoint_url(url)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sees_dynamodb_s_conflict_errors() {
    use aws_sdk_dynamodb::{
        operation::{put_item::PutItemError, transact_write_items::TransactWriteItemsError},
        types::{AttributeValue as Av, ConditionCheck, Put, TransactWriteItem, Update},
    };
    let (upstream, _) = fake_upstream().await;
    let proxy = start_ephemeral(&upstream, Duration::from_millis(700))
        .await
        .unwrap();
    let db = sdk(&proxy.url);
    let put = |pk: &str| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name("t")
                    .item("pk", Av::S(pk.into()))
                    .item("sk", Av::S("X".into()))
                    .item("n", Av::N("1".into()))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let update = |pk: &str| {
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name("t")
                    .key("pk", Av::S(pk.into()))
                    .key("sk", Av::S("X".into()))
                    .update_expression("SET n = :n")
                    .expression_attribute_values(":n", Av::N("2".into()))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let check = |pk: &str| {
        TransactWriteItem::builder()
            .condition_check(
                ConditionCheck::builder()
                    .table_name("t")
                    .key("pk", Av::S(pk.into()))
                    .key("sk", Av::S("X".into()))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let first = tokio::spawn(
        db.transact_write_items()
            .transact_items(put("1"))
            .transact_items(update("2"))
            .send(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while proxy.stats.snapshot().items_held < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = db
        .transact_write_items()
        .transact_items(put("3"))
        .transact_items(check("1"))
        .transact_items(update("4"))
        .send()
        .await
        .unwrap_err();
    let Some(TransactWriteItemsError::TransactionCanceledException(e)) = err.as_service_error()
    else {
        panic!("{err:?}");
    };
    let codes: Vec<_> = e
        .cancellation_reasons()
        .iter()
        .map(|r| r.code().unwrap_or_default())
        .collect();
    assert_eq!(codes, ["None", "TransactionConflict", "None"]);
    assert_eq!(e.cancellation_reasons()[1].message(), Some(ONGOING));
    let err = db
        .put_item()
        .table_name("t")
        .item("pk", Av::S("2".into()))
        .item("sk", Av::S("X".into()))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(PutItemError::TransactionConflictException(_))
        ),
        "{err:?}"
    );
    // A read of the same item passes.
    db.get_item()
        .table_name("t")
        .key("pk", Av::S("2".into()))
        .key("sk", Av::S("X".into()))
        .send()
        .await
        .unwrap();
    first.await.unwrap().unwrap();
    // Answered: the same write goes through.
    db.put_item()
        .table_name("t")
        .item("pk", Av::S("2".into()))
        .item("sk", Av::S("X".into()))
        .send()
        .await
        .unwrap();
    let stats = proxy.stats.snapshot();
    assert_eq!(stats.transactions, 2);
    assert_eq!(stats.transactions_refused, 1);
    assert_eq!(stats.transaction_items_conflicted, 1);
    assert_eq!((stats.writes, stats.writes_refused), (2, 1));
    assert_eq!(stats.refused_by_operation["PutItem"], 1);
    assert_eq!((stats.transactions_in_flight, stats.items_held), (0, 0));
    // The same counters over HTTP.
    let over_http: StatsSnapshot = crate::http_client()
        .get(format!("{}{STATS_PATH}", proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, stats);
}

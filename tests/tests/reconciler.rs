//! Nothing confirmed is lost, end to end: a confirmation whose settlement message is never sent
//! (the handler dies just before `SendMessage`, after its transaction committed) is found by the
//! deployed, scheduled `reconciler` function, whose re-sent message the deployed settlement
//! function settles.

mod common;

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{Ctx, answer, request};
use serde_json::{Value, json};
use twochan_api::{
    App,
    routes::{Function, handle},
};
use twochan_aws::{
    DynamoStore, SqsSettlementQueue,
    failpoints::{Crash, Probe},
};

#[tokio::test]
async fn a_lost_settlement_message_is_sent_again_by_the_reconciler() {
    let ctx = Ctx::new().await;
    let pos = ctx.pos().await;
    let (mut device, phone) = ctx.paired().await;
    let payment = ctx.pending_payment(&pos, &device, 777).await;
    let id = payment["payment_id"].as_str().unwrap().to_owned();

    // The phone's confirmation, served by the confirmation handler with the stack's table and
    // queue, dying just before its 4th AWS call: SQS SendMessage.
    let probe = Probe::crashing(Some(Crash::Before(3)));
    let clients = probe.clients(&ctx.config);
    let app = App {
        store: DynamoStore::new(clients.dynamodb, ctx.table.clone()),
        queue: SqsSettlementQueue::new(clients.sqs, ctx.var("SETTLEMENT_QUEUE_URL")),
        issuer_keys: Some(ctx.master.clone().into()),
        pending_ttl_seconds: 120,
    };
    let (code, counter) = device.authorize(&payment);
    let req = request(
        "POST",
        &format!("/v1/payments/{id}/confirm"),
        phone.token.as_deref().unwrap(),
        &[],
        Some(&json!({"auth_code": code, "counter": counter})),
    );
    let (status, body) = answer(&handle(&app, Function::Confirmation, req).await);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        probe.calls().last().map(String::as_str),
        Some("SQS.SendMessage")
    );
    // Committed, but no message: it would stay confirmed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pos.payment(&id).await.unwrap().json["status"], "confirmed");

    // Time passes: its confirmation is made older than the reconciler's threshold (60 s).
    let gsi_sk = ctx.items_of(&format!("PAYMENT#{id}")).await[0]["gsi1sk"]
        .as_s()
        .unwrap()
        .clone();
    let (_, rest) = gsi_sk.split_once('#').unwrap();
    ctx.dynamodb
        .update_item()
        .table_name(&ctx.table)
        .key("pk", AttributeValue::S(format!("PAYMENT#{id}")))
        .key("sk", AttributeValue::S("PAYMENT".into()))
        .update_expression("SET gsi1sk = :old")
        .expression_attribute_values(":old", AttributeValue::S(format!("{:015}#{rest}", 0)))
        .send()
        .await
        .unwrap();

    // The deployed function, invoked with what its schedule sends (events/reconciler-schedule.json)
    // through the emulator's Lambda Invoke API.
    let schedule = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/reconciler-schedule.json"
    ))
    .unwrap();
    let invoke = format!(
        "{}/2015-03-31/functions/{}/invocations",
        ctx.var("AWS_ENDPOINT_URL"),
        ctx.var("RECONCILER_FUNCTION")
    );
    let report: Value = ctx
        .api
        .raw()
        .post(&invoke)
        .body(schedule)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(report["requeued"].as_u64().unwrap_or(0) >= 1, "{report}");

    let settled = pos
        .wait_for_status(&id, "settled", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(settled.json["status"], "settled", "{}", settled.json);
    let pid = twochan_domain::PaymentId::try_from(id.as_str()).unwrap();
    assert_eq!(ctx.store.ledger_entries(&pid).await.unwrap().len(), 2);
}

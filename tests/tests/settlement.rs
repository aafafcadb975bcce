//! Settlement through the real queue: redelivery is harmless, poison lands in the dead-letter queue.

use std::time::Duration;

use crate::common::{Harness, eventually};
use serde_json::Value;
use twochan_domain::{
    PaymentId, Timestamp,
    ports::{Payments, SettlementMessage},
};
use twochan_tools::{Device, Phone, Pos, unique_id};

/// Confirms a pending payment with its phone and waits until the stack's settlement function has
/// settled it.
async fn confirm_and_settle(pos: &Pos, device: &mut Device, phone: &Phone, payment: &Value) {
    let id = payment["payment_id"].as_str().unwrap();
    let (code, counter) = device.authorize(payment);
    assert_eq!(
        phone.confirm(id, &code, &counter).await.unwrap().status,
        200
    );
    assert_eq!(
        pos.wait_for_status(id, "settled", Duration::from_secs(30))
            .await
            .unwrap()
            .json["status"],
        "settled"
    );
}

#[tokio::test]
async fn the_same_settlement_message_delivered_again_writes_one_ledger_entry_pair() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (mut device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 2500).await;
    let id = PaymentId::try_from(p["payment_id"].as_str().unwrap()).unwrap();
    confirm_and_settle(&pos, &mut device, &phone, &p).await;

    // The very message confirmation enqueued, sent twice more (an at-least-once queue may).
    let stored = ctx.store.payment(&id).await.unwrap().expect("the payment");
    let message = SettlementMessage::for_payment(&stored, Timestamp::now());
    let queue = ctx.var("SETTLEMENT_QUEUE_URL");
    for _ in 0..2 {
        // Its own deduplication id each time: the queue would drop a resend within 5 minutes.
        ctx.sqs
            .send_message()
            .queue_url(&queue)
            .message_body(serde_json::to_string(&message).unwrap())
            .message_group_id(message.group())
            .message_deduplication_id(unique_id("resend-"))
            .send()
            .await
            .unwrap();
    }
    // A second payment's message goes to the same FIFO group after the copies, so once it is
    // settled the copies have been handled: no need to wait for the shared queue to be empty,
    // which other tests keep busy.
    let second = ctx.pending_payment(&pos, &device, 700).await;
    confirm_and_settle(&pos, &mut device, &phone, &second).await;

    let entries = ctx.store.ledger_entries(&id).await.unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let credit = entries.iter().find(|e| e.0 == "credit").expect("credit");
    let debit = entries.iter().find(|e| e.0 == "debit").expect("debit");
    assert_eq!(credit.1, format!("merchant:{}", pos.merchant_id));
    assert_eq!(debit.1, format!("device:{}", device.code()));
    assert_eq!((credit.2, debit.2), (2500, 2500));
    assert_eq!(pos.settled("KRW").await.unwrap(), (2500 + 700, 2));
}

#[tokio::test]
async fn a_poison_message_lands_in_the_dead_letter_queue_after_five_receives() {
    let ctx = Harness::new().await;
    let queue = ctx.var("SETTLEMENT_QUEUE_URL");
    let dlq = ctx.var("SETTLEMENT_DLQ_URL");
    let marker = unique_id("poison-");
    ctx.sqs
        .send_message()
        .queue_url(&queue)
        .message_body(format!("{{\"not\": \"{marker}\"}}"))
        .message_group_id(&marker)
        .message_deduplication_id(&marker)
        .send()
        .await
        .unwrap();
    // Five receives, each followed by the visibility timeout (a few seconds on the local stack).
    let found = eventually(Duration::from_secs(90), || async {
        let out = ctx
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .ok()?;
        out.messages?
            .into_iter()
            .find(|m| m.body().is_some_and(|b| b.contains(&marker)))
    })
    .await
    .expect("the poison message reached the dead-letter queue");
    let receives = found
        .attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
        })
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(receives >= 5, "moved after {receives} receives");
    if let Some(handle) = found.receipt_handle() {
        ctx.sqs
            .delete_message()
            .queue_url(&dlq)
            .receipt_handle(handle)
            .send()
            .await
            .unwrap();
    }
}

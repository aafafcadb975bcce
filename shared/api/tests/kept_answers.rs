//! What an idempotency key keeps, over a store that changes (the static world of `support` never
//! does, so there a request can only be seen to write): a kept refusal or creation is answered
//! again after the state that decided it is gone, and only under its own key.

mod stateful;
mod support;

use stateful::World;
use twochan_domain::{PaymentStatus, ports::Payments};
use twochan_memory::conformance::fresh;

#[tokio::test]
async fn a_kept_payment_refusal_outlives_the_busy_device() {
    let w = World::new();
    let (m, p) = (w.merchant().await, w.paired().await);
    let first = w.pay(&m, &p.dev, 100, &fresh("k-")).await;
    assert_eq!(first.status, 201);
    let key = fresh("k-");
    let busy = w.pay(&m, &p.dev, 200, &key).await;
    assert!(busy.is(409, "device_busy") && !busy.replayed, "{busy:?}");
    assert_eq!(w.cancel(&m, &first.str("payment_id")).await.status, 200);
    let again = w.pay(&m, &p.dev, 200, &key).await;
    assert!(again.is(409, "device_busy") && again.replayed, "{again:?}");
    let other = w.pay(&m, &p.dev, 200, &fresh("k-")).await;
    assert_eq!(other.status, 201, "{other:?}");
}

#[tokio::test]
async fn an_unknown_device_stays_unknown_under_its_key() {
    let w = World::new();
    let m = w.merchant().await;
    let dev = w.device();
    let key = fresh("k-");
    let unknown = w.pay(&m, &dev, 100, &key).await;
    assert!(unknown.is(404, "unknown_device"), "{unknown:?}");
    assert_eq!(w.register(&dev, &fresh("phone-"), "").await.status, 201);
    let again = w.pay(&m, &dev, 100, &key).await;
    assert!(
        again.is(404, "unknown_device") && again.replayed,
        "{again:?}"
    );
    assert_eq!(w.pay(&m, &dev, 100, &fresh("k-")).await.status, 201);
}

#[tokio::test]
async fn a_kept_refund_refusal_outlives_the_settlement() {
    let w = World::new();
    let (m, mut p) = (w.merchant().await, w.paired().await);
    let id = w.confirmed(&m, &mut p, 900).await;
    let key = fresh("rk-");
    let early = w.refund(&m, &id, 100, &key).await;
    assert!(early.is(409, "payment_not_settled"), "{early:?}");
    assert!(w.settle_all().await.is_empty());
    let again = w.refund(&m, &id, 100, &key).await;
    assert!(
        again.is(409, "payment_not_settled") && again.replayed,
        "{again:?}"
    );
    let other = w.refund(&m, &id, 100, &fresh("rk-")).await;
    assert_eq!(other.status, 201, "{other:?}");
    let reused = w.refund(&m, &id, 200, &key).await;
    assert!(reused.is(422, "idempotency_key_reused"), "{reused:?}");
}

#[tokio::test]
async fn a_creation_is_replayed_as_created_after_the_payment_moved_on() {
    let w = World::new();
    let (m, mut p) = (w.merchant().await, w.paired().await);
    let key = fresh("k-");
    let created = w.pay(&m, &p.dev, 300, &key).await;
    let id = created.str("payment_id");
    let (code, counter) = p.dev.authorize(&created.body);
    assert_eq!(w.confirm(&p.token, &id, &code, &counter).await.status, 200);
    assert!(w.settle_all().await.is_empty());
    assert_eq!(w.stored(&id).await.status, PaymentStatus::Settled);
    // A retry gets a payment id of its own millisecond: in the creation's, it would name the
    // stored payment itself (a case only a store this fast meets).
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let replay = w.pay(&m, &p.dev, 300, &key).await;
    assert!(replay.is(201, "") && replay.replayed, "{replay:?}");
    assert_eq!(replay.str("payment_id"), id);
    assert_eq!(replay.str("status"), "pending", "the creation's own answer");
    // A new payment on the code is possible again (the lock went with the confirmation).
    assert_eq!(w.pay(&m, &p.dev, 300, &fresh("k-")).await.status, 201);
}

#[tokio::test]
async fn an_expired_pending_payment_frees_the_code_inside_the_write() {
    let mut w = World::new();
    // Payments that lapse as soon as they are made.
    w.app.pending_ttl_seconds = -1;
    let (m, p) = (w.merchant().await, w.paired().await);
    let old = w.pay(&m, &p.dev, 100, &fresh("k-")).await;
    assert_eq!(old.status, 201);
    let new = w.pay(&m, &p.dev, 100, &fresh("k-")).await;
    assert_eq!(new.status, 201, "the lapsed lock is taken over: {new:?}");
    let held = w.stored_device(&p.dev).await.pending.map(|(id, _)| id);
    assert_eq!(held.map(|id| id.to_string()), Some(new.str("payment_id")));
    // Canceling the lapsed one records its expiry and leaves the new lock alone.
    let cancel = w.cancel(&m, &old.str("payment_id")).await;
    assert!(cancel.is(409, "payment_not_pending"), "{cancel:?}");
    assert_eq!(
        w.stored(&old.str("payment_id")).await.status,
        PaymentStatus::Expired
    );
    let still = w
        .stored_device(&p.dev)
        .await
        .pending
        .map(|(id, _)| id.to_string());
    assert_eq!(still, Some(new.str("payment_id")));
    assert!(
        w.pending_of(&p.token).await.is_empty(),
        "both are past their expiry"
    );
    let stored = w
        .store()
        .payment(&twochan_domain::PaymentId::try_from(new.str("payment_id").as_str()).unwrap())
        .await
        .unwrap();
    assert!(stored.is_some());
}

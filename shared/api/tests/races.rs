//! Races and retries through the real use cases over `MemoryStore`, the logic side of
//! `tests/tests/concurrency.rs`, `conflicts` and `payments.rs` (which run them on the emulator):
//! nothing is charged, settled or refunded twice, and nothing is lost. Each race runs several
//! rounds on a multi-threaded runtime; the store yields at every call, so the requests interleave.
//! Injected failures (`MemoryStore::fail_next`) stand for a crash or a lost answer. Last, a
//! webhook event that loses the race with a later change of its payment.

mod stateful;
mod support;

use futures_util::future::join_all;
use stateful::{Reply, World};
use twochan_api::webhooks::{RetryPolicy, Sent, send_event};
use twochan_domain::{
    IdempotencyKey, PaymentId, PaymentSlot, PaymentStatus, Timestamp,
    ports::{
        Delivery, Payments, Refunds, SlotRecord, WebhookEndpoint, WebhookEndpoints,
        WebhookTransport,
    },
    webhook::{EventType, SecretSeal, WebhookSecret, WebhookUrl},
};
use twochan_memory::{Fault, Op, conformance::fresh};

const ROUNDS: usize = 12;

#[track_caller]
fn assert_one_of(r: &Reply, allowed: &[(u16, &str)]) {
    assert!(
        allowed.iter().any(|(s, c)| r.is(*s, c)),
        "{} {} is not one of {allowed:?}",
        r.status,
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_requests_on_one_code_make_exactly_one_payment() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, p) = (w.merchant().await, w.paired().await);
        let keys: Vec<String> = (0..16).map(|_| fresh("k-")).collect();
        let answers = join_all(
            keys.iter()
                .enumerate()
                .map(|(i, k)| w.pay(&m, &p.dev, 100 + i as u64, k)),
        )
        .await;
        let created: Vec<&Reply> = answers.iter().filter(|r| r.status == 201).collect();
        assert_eq!(created.len(), 1, "{answers:?}");
        for r in &answers {
            assert_one_of(r, &[(201, ""), (409, "device_busy")]);
        }
        let pending = w.pending_of(&p.token).await;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0]["payment_id"], created[0].body["payment_id"]);
        // Each refused key keeps its refusal, even once the code is free again.
        let id = created[0].str("payment_id");
        assert_eq!(w.cancel(&m, &id).await.status, 200);
        for (i, (k, r)) in keys.iter().zip(&answers).enumerate() {
            if r.status == 409 {
                let again = w.pay(&m, &p.dev, 100 + i as u64, k).await;
                assert!(again.is(409, "device_busy") && again.replayed, "{again:?}");
            }
        }
    }
}

/// Two POS terminals of one merchant retry one request under one key at once: one payment, and
/// every answer is its 201 or "still in flight".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pos_with_one_key_make_one_payment() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, p) = (w.merchant().await, w.paired().await);
        let key = fresh("retry-");
        let answers = join_all((0..8).map(|_| w.pay(&m, &p.dev, 999, &key))).await;
        let mut ids = std::collections::BTreeSet::new();
        for r in &answers {
            assert_one_of(r, &[(201, ""), (409, "idempotency_key_in_use")]);
            if r.status == 201 {
                ids.insert(r.str("payment_id"));
            }
        }
        assert_eq!(ids.len(), 1, "one payment, however many twins: {answers:?}");
        let replay = w.pay(&m, &p.dev, 999, &key).await;
        assert!(replay.is(201, "") && replay.replayed, "{replay:?}");
        assert!(ids.contains(&replay.str("payment_id")));
        assert_eq!(w.pending_of(&p.token).await.len(), 1);
        // The same key with another body is refused, and changes nothing.
        let other = w.pay_from(&m, &p.dev, 999, &key, "pos-02").await;
        assert!(other.is(422, "idempotency_key_reused"), "{other:?}");
        assert_eq!(w.pending_of(&p.token).await.len(), 1);
    }
}

/// One key, two different bodies at once (two POS that reused a key): the first stored wins,
/// the other is told the key is reused (or in flight); one payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_with_two_bodies_makes_one_payment() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, p) = (w.merchant().await, w.paired().await);
        let key = fresh("k-");
        let (a, b) = tokio::join!(
            w.pay_from(&m, &p.dev, 500, &key, "pos-a"),
            w.pay_from(&m, &p.dev, 500, &key, "pos-b")
        );
        let allowed = [
            (201, ""),
            (409, "idempotency_key_in_use"),
            (422, "idempotency_key_reused"),
        ];
        assert_one_of(&a, &allowed);
        assert_one_of(&b, &allowed);
        assert!(a.status == 201 || b.status == 201, "{a:?} {b:?}");
        assert!(!(a.status == 201 && b.status == 201), "{a:?} {b:?}");
        assert_eq!(w.pending_of(&p.token).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_confirmations_commit_and_settle_once() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, mut p) = (w.merchant().await, w.paired().await);
        let r = w.pay(&m, &p.dev, 777, &fresh("k-")).await;
        let id = r.str("payment_id");
        let (code, counter) = p.dev.authorize(&r.body);
        let answers = join_all((0..8).map(|_| w.confirm(&p.token, &id, &code, &counter))).await;
        for a in &answers {
            assert_eq!(a.status, 200, "every copy is answered 200: {a:?}");
        }
        assert_eq!(w.stored_device(&p.dev).await.last_counter.get(), 1);
        // Every message any copy sent, delivered at once and again: settled once.
        let sent = w.app.queue.all();
        assert!(!sent.is_empty());
        let (first, second) = tokio::join!(w.deliver(&sent), w.deliver(&sent));
        assert_eq!((first, second), (vec![], vec![]));
        assert_eq!(w.krw_balance(&m).await, (777, 1, 0, 777));
        let pid = PaymentId::try_from(id.as_str()).unwrap();
        assert_eq!(w.store().ledger_entries(&pid).len(), 2);
        assert_eq!(w.stored(&id).await.status, PaymentStatus::Settled);
    }
}

/// Confirm (phone), decline (phone) and cancel (merchant) of one payment at once: exactly one
/// wins, and payment and device agree with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_decline_and_cancel_of_one_payment_race() {
    let mut wins = std::collections::BTreeMap::new();
    for _ in 0..ROUNDS * 2 {
        let w = World::new();
        let (m, mut p) = (w.merchant().await, w.paired().await);
        let r = w.pay(&m, &p.dev, 300, &fresh("k-")).await;
        let id = r.str("payment_id");
        let (code, counter) = p.dev.authorize(&r.body);
        let (c, d, x) = tokio::join!(
            w.confirm(&p.token, &id, &code, &counter),
            w.decline(&p.token, &id),
            w.cancel(&m, &id)
        );
        let won: Vec<(&str, &Reply)> = [("confirmed", &c), ("declined", &d), ("canceled", &x)]
            .into_iter()
            .filter(|(_, r)| r.status == 200)
            .collect();
        assert_eq!(won.len(), 1, "{c:?} {d:?} {x:?}");
        for r in [&c, &d, &x].into_iter().filter(|r| r.status != 200) {
            assert_one_of(r, &[(409, "payment_not_pending")]);
        }
        let status = w.stored(&id).await.status;
        assert_eq!(status.as_str(), won[0].0);
        let device = w.stored_device(&p.dev).await;
        assert_eq!(device.pending, None, "the lock goes with the payment");
        let moved = u64::from(status == PaymentStatus::Confirmed);
        assert_eq!(device.last_counter.get(), moved);
        *wins.entry(won[0].0).or_insert(0) += 1;
    }
    println!("confirm/decline/cancel winners: {wins:?}");
}

/// Wrong codes and the right one at once: every 422 was counted once, the right code is either
/// accepted or refused because a wrong one came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_codes_race_the_right_code() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, mut p) = (w.merchant().await, w.paired().await);
        let r = w.pay(&m, &p.dev, 300, &fresh("k-")).await;
        let id = r.str("payment_id");
        let (code, counter) = p.dev.authorize(&r.body);
        let wrong = p.dev.auth_code(&r.body, 99);
        let mut calls = vec![w.confirm(&p.token, &id, &code, &counter)];
        for _ in 0..3 {
            calls.push(w.confirm(&p.token, &id, &wrong, &counter));
        }
        let answers = join_all(calls).await;
        let wrongs = answers[1..]
            .iter()
            .filter(|r| r.is(422, "invalid_auth_code"))
            .count() as u32;
        for r in &answers[1..] {
            assert_one_of(
                r,
                &[(422, "invalid_auth_code"), (409, "payment_not_pending")],
            );
        }
        let payment = w.stored(&id).await;
        let device = w.stored_device(&p.dev).await;
        if answers[0].status == 200 {
            assert_eq!(payment.status, PaymentStatus::Confirmed);
            assert_eq!(device.failed_auth, 0, "the right code resets the count");
        } else {
            assert_eq!(payment.status, PaymentStatus::Pending, "{:?}", answers[0]);
            assert_eq!(device.failed_auth, wrongs);
        }
        assert_eq!(payment.failed_attempts, wrongs);
    }
}

/// Deliveries of one group with a repeated message, a message of a payment still pending and a
/// forged one, twice at once: each payment settles once, the forged message is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_settlement_deliveries_settle_once() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let m = w.merchant().await;
        let (mut a, mut b) = (w.paired().await, w.paired().await);
        let ida = w.confirmed(&m, &mut a, 1000).await;
        let idb = w.confirmed(&m, &mut b, 250).await;
        let c = w.paired().await;
        let waiting = w.pay(&m, &c.dev, 40, &fresh("k-")).await;
        let mut sent = w.app.queue.all();
        assert_eq!(sent.len(), 2);
        let mut pending_msg = sent[0].clone();
        pending_msg.payment_id = PaymentId::try_from(waiting.str("payment_id").as_str()).unwrap();
        pending_msg.unique_code = c.dev.code.clone();
        pending_msg.amount = 40u64.try_into().unwrap();
        let mut forged = sent[1].clone();
        forged.amount = 1u64.try_into().unwrap();
        let mut batch = vec![
            sent[0].clone(),
            sent[0].clone(),
            pending_msg,
            sent[1].clone(),
        ];
        batch.push(forged);
        let (one, two) = tokio::join!(w.deliver(&batch), w.deliver(&batch));
        // The forged message can never settle; the pending payment's is an orphan here (no
        // pauses) or waits for its confirmation, which is reported too.
        for failed in [&one, &two] {
            assert!(failed.contains(&"msg-4".to_owned()), "{failed:?}");
            assert!(
                !failed
                    .iter()
                    .any(|f| ["msg-0", "msg-1", "msg-3"].contains(&f.as_str()))
            );
        }
        assert_eq!(w.krw_balance(&m).await, (1250, 2, 0, 1250));
        for id in [&ida, &idb] {
            assert_eq!(w.stored(id).await.status, PaymentStatus::Settled);
        }
        assert_eq!(
            w.stored(&waiting.str("payment_id")).await.status,
            PaymentStatus::Pending
        );
        // Delivered once more much later: nothing changes.
        sent.extend(sent.clone());
        assert_eq!(w.deliver(&sent).await, Vec::<String>::new());
        assert_eq!(w.krw_balance(&m).await, (1250, 2, 0, 1250));
    }
}

/// Six refunds of 300 with their own keys and three twins of one key for 100, at once, on a
/// settled payment of 1000: three 300s and the 100 are made, the rest are refused, and payment,
/// refunds and balance agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_of_one_payment_race_each_other_and_their_twins() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, mut p) = (w.merchant().await, w.paired().await);
        let id = w.confirmed(&m, &mut p, 1000).await;
        assert!(w.settle_all().await.is_empty());
        let twin_key = fresh("rk-");
        let keys: Vec<String> = (0..6).map(|_| fresh("rk-")).collect();
        let mut calls: Vec<_> = keys.iter().map(|k| w.refund(&m, &id, 300, k)).collect();
        for _ in 0..3 {
            calls.push(w.refund(&m, &id, 100, &twin_key));
        }
        let answers = join_all(calls).await;
        let made_300 = answers[..6].iter().filter(|r| r.status == 201).count();
        for r in &answers[..6] {
            assert_one_of(r, &[(201, ""), (422, "refund_exceeds_payment")]);
        }
        let twin_ids: std::collections::BTreeSet<String> =
            answers[6..].iter().map(|r| r.str("refund_id")).collect();
        for r in &answers[6..] {
            assert_eq!(r.status, 201, "{r:?}");
        }
        assert_eq!(twin_ids.len(), 1, "twins get the one refund");
        assert_eq!(made_300, 3, "{answers:?}");
        let payment = w.stored(&id).await;
        assert_eq!(payment.refunded_amount, 1000);
        let refunds = w.store().refunds_of(&payment.payment_id).await.unwrap();
        assert_eq!(refunds.len(), 4);
        let sum: u64 = refunds.iter().map(|r| r.amount.minor_units()).sum();
        assert_eq!(sum, 1000);
        assert_eq!(w.krw_balance(&m).await, (1000, 1, 1000, 0));
        // A refused key keeps its refusal.
        let refused = keys
            .iter()
            .zip(&answers)
            .find(|(_, r)| r.status == 422)
            .map(|(k, _)| k)
            .unwrap();
        let again = w.refund(&m, &id, 300, refused).await;
        assert!(
            again.is(422, "refund_exceeds_payment") && again.replayed,
            "{again:?}"
        );
    }
}

/// Refunds while other payments of the merchant settle: the balance is exactly the settlements
/// and the refunds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_and_settlements_meet_on_the_balance() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let m = w.merchant().await;
        let mut first = w.paired().await;
        let id = w.confirmed(&m, &mut first, 1000).await;
        assert!(w.settle_all().await.is_empty());
        let mut others = Vec::new();
        for _ in 0..4 {
            let mut p = w.paired().await;
            w.confirmed(&m, &mut p, 100).await;
            others.push(p);
        }
        let messages: Vec<_> = w.app.queue.all()[1..].to_vec();
        let settles = messages
            .iter()
            .map(|msg| w.deliver(std::slice::from_ref(msg)));
        let keys: Vec<String> = (0..4).map(|_| fresh("rk-")).collect();
        let refunds = keys.iter().map(|k| w.refund(&m, &id, 200, k));
        let (settled, refunded) = tokio::join!(join_all(settles), join_all(refunds));
        assert!(settled.iter().all(Vec::is_empty), "{settled:?}");
        assert!(refunded.iter().all(|r| r.status == 201), "{refunded:?}");
        assert_eq!(w.krw_balance(&m).await, (1400, 5, 800, 600));
    }
}

/// The phone deregisters its device while a payment request on it has taken the lock and not
/// stored its payment: the slot keeps the deregistration's answer, the request gives it, a retry
/// with the key gets it again, and the code is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_is_stored_while_its_code_is_deregistered() {
    let w = World::new();
    let (m, p) = (w.merchant().await, w.paired().await);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    w.store().on_call(Op::PutPayment, move || {
        let held = held.clone();
        async move {
            let _ = held.acquire().await.map(|permit| permit.forget());
        }
    });
    let key = fresh("k-");
    let (paid, gone) = tokio::join!(w.pay(&m, &p.dev, 100, &key), async {
        // The request holds the lock before the deregistration reads the device.
        while w.stored_device(&p.dev).await.pending.is_none() {
            tokio::task::yield_now().await;
        }
        let r = w.deregister(&p).await;
        gate.add_permits(1);
        r
    });
    w.store().clear_hook(Op::PutPayment);
    assert_eq!(gone.status, 204, "{gone:?}");
    assert!(paid.is(404, "unknown_device"), "{paid:?}");
    let again = w.pay(&m, &p.dev, 100, &key).await;
    assert!(
        again.is(404, "unknown_device") && again.replayed,
        "{again:?}"
    );
    let device = w.stored_device(&p.dev).await;
    assert_eq!((device.registration, device.pending), (None, None));
}

/// The payment's write commits but its answer is lost: the request finds its payment in the
/// slot and answers 201; one payment.
#[tokio::test]
async fn a_lost_answer_of_the_payment_write_still_creates_it_once() {
    let w = World::new();
    let (m, p) = (w.merchant().await, w.paired().await);
    w.store().fail_next(Op::PutPayment, Fault::LostAnswer);
    let key = fresh("k-");
    let r = w.pay(&m, &p.dev, 100, &key).await;
    assert_eq!(r.status, 201, "{r:?}");
    let replay = w.pay(&m, &p.dev, 100, &key).await;
    assert_eq!(replay.str("payment_id"), r.str("payment_id"));
    assert_eq!(w.pending_of(&p.token).await.len(), 1);
}

/// The payment's write fails outright: 503, the lock goes back, and the retry with the key
/// makes the payment.
#[tokio::test]
async fn a_failed_payment_write_leaves_the_code_free_for_the_retry() {
    let w = World::new();
    let (m, p) = (w.merchant().await, w.paired().await);
    w.store().fail_next(Op::PutPayment, Fault::Unavailable);
    let key = fresh("k-");
    let r = w.pay(&m, &p.dev, 100, &key).await;
    assert!(r.is(503, "unavailable"), "{r:?}");
    assert_eq!(w.stored_device(&p.dev).await.pending, None);
    let slot = PaymentSlot::of(&m.id, &IdempotencyKey::try_from(key.as_str()).unwrap());
    assert_eq!(w.store().slot(&slot).await.unwrap(), None, "nothing kept");
    let retry = w.pay(&m, &p.dev, 100, &key).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(matches!(
        w.store().slot(&slot).await.unwrap(),
        Some(SlotRecord::Payment { .. })
    ));
}

/// A request that took the lock and died before storing its payment: its retry within the lease
/// is told the request is in flight; the lock is its, so no other key gets the code meanwhile.
#[tokio::test]
async fn a_request_that_died_after_locking_is_in_flight_for_its_retry() {
    let w = World::new();
    let (m, p) = (w.merchant().await, w.paired().await);
    // The write never happens: the request dies (here, fails) between its two writes; its lock
    // is given back by the failure path, so lose the release as well.
    w.store().fail_next(Op::PutPayment, Fault::Unavailable);
    w.store().fail_next(Op::Slot, Fault::Unavailable);
    w.store().fail_next(Op::ReleaseLock, Fault::Unavailable);
    let key = fresh("k-");
    let r = w.pay(&m, &p.dev, 100, &key).await;
    assert!(r.is(503, "unavailable"), "{r:?}");
    assert!(w.stored_device(&p.dev).await.pending.is_some());
    let retry = w.pay(&m, &p.dev, 100, &key).await;
    assert!(retry.is(409, "idempotency_key_in_use"), "{retry:?}");
    let other = w.pay(&m, &p.dev, 100, &fresh("k-")).await;
    assert!(other.is(409, "device_busy"), "{other:?}");
}

/// The confirmation commits but its answer is lost: the phone's retry is answered 200 as the
/// same confirmation, enqueues settlement again, and the payment settles once.
#[tokio::test]
async fn a_lost_confirmation_answer_is_replayed_and_settles_once() {
    let w = World::new();
    let (m, mut p) = (w.merchant().await, w.paired().await);
    let r = w.pay(&m, &p.dev, 640, &fresh("k-")).await;
    let id = r.str("payment_id");
    let (code, counter) = p.dev.authorize(&r.body);
    w.store().fail_next(Op::Confirm, Fault::LostAnswer);
    let lost = w.confirm(&p.token, &id, &code, &counter).await;
    assert!(lost.is(503, "unavailable"), "{lost:?}");
    let retry = w.confirm(&p.token, &id, &code, &counter).await;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(
        w.app.queue.all().len(),
        2,
        "the retry sends settlement again"
    );
    assert!(w.settle_all().await.is_empty());
    assert_eq!(w.krw_balance(&m).await, (640, 1, 0, 640));
    assert_eq!(w.stored_device(&p.dev).await.last_counter.get(), 1);
}

/// A settlement that fails is reported for redelivery and settles on it, once.
#[tokio::test]
async fn a_failed_settlement_is_redelivered_and_settles_once() {
    let w = World::new();
    let (m, mut p) = (w.merchant().await, w.paired().await);
    w.confirmed(&m, &mut p, 450).await;
    w.store().fail_next(Op::SettleGroup, Fault::Unavailable);
    assert_eq!(w.settle_all().await, vec!["msg-0".to_owned()]);
    assert_eq!(w.krw_balance(&m).await, (0, 0, 0, 0));
    w.store().fail_next(Op::SettleGroup, Fault::LostAnswer);
    assert_eq!(w.settle_all().await, vec!["msg-0".to_owned()]);
    assert!(w.settle_all().await.is_empty());
    assert_eq!(w.krw_balance(&m).await, (450, 1, 0, 450));
}

/// A refund whose transaction met another (the adapter reports a lost race) reads again and
/// refunds once.
#[tokio::test]
async fn a_refund_that_met_another_transaction_refunds_once() {
    let w = World::new();
    let (m, mut p) = (w.merchant().await, w.paired().await);
    let id = w.confirmed(&m, &mut p, 800).await;
    assert!(w.settle_all().await.is_empty());
    w.store().fail_next(Op::Refund, Fault::Conflict);
    w.store().fail_next(Op::Refund, Fault::Conflict);
    let key = fresh("rk-");
    let r = w.refund(&m, &id, 500, &key).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(w.store().calls(Op::Refund), 3);
    let again = w.refund(&m, &id, 500, &key).await;
    assert!(again.is(201, "") && again.replayed, "{again:?}");
    assert_eq!(again.str("refund_id"), r.str("refund_id"));
    assert_eq!(w.krw_balance(&m).await, (800, 1, 500, 300));
}

/// A refusal that could not be kept because another request's transaction held its slot (the
/// adapter reports it as a lost race), and nothing was kept after all: decided again and kept,
/// never a 503.
#[tokio::test]
async fn a_refund_refusal_that_met_another_transaction_is_decided_again() {
    let w = World::new();
    let (m, mut p) = (w.merchant().await, w.paired().await);
    let id = w.confirmed(&m, &mut p, 800).await;
    assert!(w.settle_all().await.is_empty());
    w.store()
        .fail_next(Op::RecordRefundRejection, Fault::Conflict);
    let key = fresh("rk-");
    let r = w.refund(&m, &id, 900, &key).await;
    assert!(r.is(422, "refund_exceeds_payment"), "{r:?}");
    assert_eq!(w.store().calls(Op::RecordRefundRejection), 2);
    let again = w.refund(&m, &id, 900, &key).await;
    assert!(
        again.is(422, "refund_exceeds_payment") && again.replayed,
        "{again:?}"
    );
    assert_eq!(w.krw_balance(&m).await, (800, 1, 0, 800));
}

/// Registering the device again while POS terminals ask for payments on it: one payment, and
/// only the new token is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_requests_meet_a_re_registration_of_their_code() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, p) = (w.merchant().await, w.paired().await);
        let keys: Vec<String> = (0..4).map(|_| fresh("k-")).collect();
        let pays = join_all(keys.iter().map(|k| w.pay(&m, &p.dev, 100, k)));
        let (answers, again) = tokio::join!(pays, w.register(&p.dev, &p.terminal, &p.token));
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(
            answers.iter().filter(|r| r.status == 201).count(),
            1,
            "{answers:?}"
        );
        let new_token = again.str("terminal_token");
        assert_eq!(w.pending_of(&new_token).await.len(), 1);
        let old = w
            .call(
                twochan_api::routes::Function::Confirmation,
                "GET",
                "/v1/pending-payments",
                &p.token,
                None,
                None,
            )
            .await;
        assert!(old.is(401, "unauthorized"), "{old:?}");
    }
}

/// Deregistration while POS terminals ask for payments: the code ends free, no payment of it is
/// left pending, and every key keeps the answer it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_requests_race_the_deregistration_of_their_code() {
    for _ in 0..ROUNDS {
        let w = World::new();
        let (m, p) = (w.merchant().await, w.paired().await);
        let keys: Vec<String> = (0..4).map(|_| fresh("k-")).collect();
        let pays = join_all(keys.iter().map(|k| w.pay(&m, &p.dev, 100, k)));
        let (answers, gone) = tokio::join!(pays, w.deregister(&p));
        assert!(
            gone.status == 204 || gone.is(503, "unavailable"),
            "{gone:?}"
        );
        let gone = if gone.status == 503 {
            w.deregister(&p).await
        } else {
            gone
        };
        assert_eq!(gone.status, 204, "{gone:?}");
        let device = w.stored_device(&p.dev).await;
        assert_eq!((device.registration, device.pending), (None, None));
        for (k, r) in keys.iter().zip(&answers) {
            assert_one_of(
                r,
                &[(201, ""), (409, "device_busy"), (404, "unknown_device")],
            );
            if r.status == 201 {
                assert_eq!(
                    w.stored(&r.str("payment_id")).await.status,
                    PaymentStatus::Canceled
                );
            }
            let again = w.pay(&m, &p.dev, 100, k).await;
            assert_eq!((again.status, again.code()), (r.status, r.code()), "{k}");
        }
    }
}

/// A webhook endpoint that answers 2xx and keeps each event's JSON.
#[derive(Default)]
struct Received(std::sync::Mutex<Vec<serde_json::Value>>);

impl WebhookTransport for Received {
    async fn deliver(
        &self,
        _: &WebhookUrl,
        _: &WebhookSecret,
        body: &[u8],
        _: Timestamp,
    ) -> Delivery {
        self.0
            .lock()
            .unwrap()
            .push(serde_json::from_slice(body).unwrap());
        Delivery::Delivered
    }
}

/// Refund events sent after a later refund committed still show the payment as of their own
/// refund (the contract's "payment object as of the event"), not as it is when they are sent.
#[tokio::test]
async fn a_refund_event_sent_late_shows_the_payment_as_of_its_refund() {
    let w = World::new();
    let (m, mut p) = (w.merchant().await, w.paired().await);
    let id = w.confirmed(&m, &mut p, 900).await;
    assert!(w.settle_all().await.is_empty());
    let seal = SecretSeal::from_issuer_keys(&w.app.issuer_keys);
    let endpoint = WebhookEndpoint {
        url: WebhookUrl::parse("https://hooks.example.com/twochan", false).unwrap(),
        sealed_secret: seal.seal(&WebhookSecret::generate(), m.id.as_str()),
        set_at: Timestamp::now(),
    };
    w.store().put_endpoint(&m.id, &endpoint).await.unwrap();
    let first = w.refund(&m, &id, 300, &fresh("rk-")).await;
    let second = w.refund(&m, &id, 200, &fresh("rk-")).await;
    assert_eq!((first.status, second.status), (201, 201));

    let received = Received::default();
    let policy = RetryPolicy::new(2, 6);
    let events = w.app.events.all();
    let refunds: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == EventType::RefundSucceeded)
        .collect();
    assert_eq!(refunds.len(), 2);
    // Sent only now, after both refunds: the second first, then the first.
    for message in refunds.iter().rev() {
        let sent = send_event(
            w.store(),
            &received,
            &seal,
            message,
            &policy,
            Timestamp::now(),
        );
        assert!(matches!(sent.await, Ok(Sent::Delivered)));
    }
    let shown: Vec<(String, u64)> = received
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            let refund = e["data"]["refund"]["refund_id"]
                .as_str()
                .unwrap()
                .to_owned();
            (
                refund,
                e["data"]["payment"]["refunded_amount"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (second.str("refund_id"), 500),
            (first.str("refund_id"), 300)
        ]
    );
}

//! The store's test controls: injected failures, hooks, call counts; and what the store keeps
//! beside the ports (journal legs, challenge expiry).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use twochan_domain::{
    Amount, Currency, DomainError, MerchantId, Payment, PaymentId, PosId, Timestamp,
    ports::{Devices, Payments, RegistrationChallenge, Write},
};
use twochan_memory::{Fault, MemoryStore, Op, conformance};

async fn registered_payment(store: &MemoryStore) -> (Payment, twochan_domain::ports::Device) {
    let (code, terminal, device) = conformance::registered(store).await;
    let p = Payment::new(
        PaymentId::generate(Timestamp::now()),
        code,
        terminal,
        MerchantId::try_from("m-faults").unwrap(),
        PosId::try_from("pos-1").unwrap(),
        Amount::try_from(100).unwrap(),
        Currency::try_from("KRW").unwrap(),
        None,
        120,
    );
    (p, device)
}

#[tokio::test]
async fn an_injected_failure_writes_nothing_and_hits_one_call() {
    let store = MemoryStore::new();
    let (p, device) = registered_payment(&store).await;
    store.fail_next(Op::LockDevice, Fault::Unavailable);
    let before = store.applied_writes();
    let r = store.lock_device(&p, &device).await;
    assert!(matches!(r, Err(DomainError::Unavailable(_))), "{r:?}");
    assert_eq!(store.applied_writes(), before);
    assert_eq!(
        store.device(&p.unique_code).await.unwrap().unwrap().pending,
        None
    );
    // The next call is not failed.
    assert_eq!(
        store.lock_device(&p, &device).await.unwrap(),
        Write::Applied
    );
    assert_eq!(store.calls(Op::LockDevice), 2);
}

#[tokio::test]
async fn an_injected_conflict_is_a_lost_race() {
    let store = MemoryStore::new();
    let (p, device) = registered_payment(&store).await;
    store.fail_next(Op::LockDevice, Fault::Conflict);
    assert_eq!(
        store.lock_device(&p, &device).await.unwrap(),
        Write::Conflict
    );
    assert_eq!(
        store.device(&p.unique_code).await.unwrap().unwrap().pending,
        None
    );
    // A call that answers no `Write` fails instead.
    store.fail_next(Op::Device, Fault::Conflict);
    assert!(store.device(&p.unique_code).await.is_err());
}

#[tokio::test]
async fn a_lost_answer_writes_and_fails() {
    let store = MemoryStore::new();
    let (p, device) = registered_payment(&store).await;
    store.lock_device(&p, &device).await.unwrap();
    store.fail_next(Op::PutPayment, Fault::LostAnswer);
    assert!(store.put_payment(&p, "fp").await.is_err());
    assert_eq!(store.payment(&p.payment_id).await.unwrap(), Some(p.clone()));
    // Its retry finds the slot taken.
    assert_eq!(store.put_payment(&p, "fp").await.unwrap(), Write::Conflict);
}

#[tokio::test]
async fn failures_queue_up_per_operation() {
    let store = MemoryStore::new();
    let (p, _) = registered_payment(&store).await;
    store.fail_next(Op::Payment, Fault::Unavailable);
    store.fail_next(Op::Payment, Fault::Unavailable);
    assert!(store.payment(&p.payment_id).await.is_err());
    assert!(store.payment(&p.payment_id).await.is_err());
    assert!(store.payment(&p.payment_id).await.is_ok());
    // Other operations are untouched.
    assert!(store.device(&p.unique_code).await.is_ok());
}

#[tokio::test]
async fn a_hook_runs_before_each_call() {
    let store = MemoryStore::new();
    let (p, _) = registered_payment(&store).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    store.on_call(Op::Payment, move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    store.payment(&p.payment_id).await.unwrap();
    store.payment(&p.payment_id).await.unwrap();
    store.clear_hook(Op::Payment);
    store.payment(&p.payment_id).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_hook_holds_a_call_back_until_released() {
    let store = MemoryStore::new();
    let (p, device) = registered_payment(&store).await;
    store.lock_device(&p, &device).await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let held = gate.clone();
    store.on_call(Op::PutPayment, move || {
        let held = held.clone();
        async move { held.notified().await }
    });
    let put = tokio::spawn({
        let (store, p) = (store.clone(), p.clone());
        async move { store.put_payment(&p, "fp").await }
    });
    tokio::task::yield_now().await;
    assert_eq!(
        store.payment(&p.payment_id).await.unwrap(),
        None,
        "held back"
    );
    gate.notify_one();
    assert_eq!(put.await.unwrap().unwrap(), Write::Applied);
    assert!(store.payment(&p.payment_id).await.unwrap().is_some());
}

#[tokio::test]
async fn an_expired_challenge_goes_when_purged() {
    let store = MemoryStore::new();
    let code = twochan_domain::UniqueCode::try_from("beacon-purge-01").unwrap();
    let at = Timestamp::now();
    let c = RegistrationChallenge::issue(code.clone(), at);
    store.put_challenge(&c).await.unwrap();
    store.purge_expired_challenges(at);
    // Still usable: its expiry is later.
    store.purge_expired_challenges(c.expires_at.plus_seconds(1));
    assert_eq!(
        store.use_challenge(&c.challenge, &code, at).await.unwrap(),
        Write::Conflict,
        "gone"
    );
    // A challenge id is unique: putting one twice is a broken RNG.
    let again = RegistrationChallenge::issue(code, at);
    store.put_challenge(&again).await.unwrap();
    assert!(matches!(
        store.put_challenge(&again).await,
        Err(DomainError::Internal(_))
    ));
}

#[tokio::test]
async fn a_settled_payment_carries_its_journal_legs() {
    use twochan_domain::ports::{Ledger, SettlementMessage};
    let store = MemoryStore::new();
    let (p, device) = registered_payment(&store).await;
    assert!(store.ledger_entries(&p.payment_id).is_empty());
    store.lock_device(&p, &device).await.unwrap();
    store.put_payment(&p, "fp").await.unwrap();
    let d = store.device(&p.unique_code).await.unwrap().unwrap();
    let confirmation = twochan_domain::ports::Confirmation {
        payment: &p,
        device_failures: d.failed_auth,
        previous_counter: d.last_counter,
        counter: twochan_domain::Counter::new(1),
        fingerprint: "fp-c".into(),
        at: Timestamp::now(),
    };
    assert_eq!(store.confirm(&confirmation).await.unwrap(), Write::Applied);
    let p = store.payment(&p.payment_id).await.unwrap().unwrap();
    store
        .settle(
            &SettlementMessage::for_payment(&p, Timestamp::now()),
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.ledger_entries(&p.payment_id),
        vec![
            (
                "credit".into(),
                "merchant:m-faults".into(),
                100,
                "KRW".into()
            ),
            (
                "debit".into(),
                format!("device:{}", p.unique_code),
                100,
                "KRW".into()
            ),
        ]
    );
}

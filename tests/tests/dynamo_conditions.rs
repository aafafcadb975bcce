//! Every conditional expression of `twochan_aws::dynamo` against the emulator, through the
//! adapter's own methods: the write happens when its condition holds and is refused (nothing
//! written) when it does not.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::Ctx;
use twochan_domain::{
    Amount, Counter, Currency, IdempotencyKey, MerchantId, Payment, PaymentStatus, PosId,
    TerminalId, Timestamp, UniqueCode,
    crypto::IssuedSecret,
    ports::{
        Confirmation, Device, Devices, Idempotency, IdempotencyClaim, IdempotencyRecord, Ledger,
        Payments, Registration, Settlement, SettlementMessage, StoredResponse, Write, WrongCode,
    },
};
use twochan_tools::unique_id;

fn registration(terminal: &TerminalId) -> Registration {
    Registration {
        terminal_id: terminal.clone(),
        token_hash: IssuedSecret::generate("tt_").hash,
        registered_at: Timestamp::now().truncated_to_second(),
    }
}

/// A registered device as stored.
async fn registered(ctx: &Ctx) -> (UniqueCode, TerminalId, Device) {
    let code = UniqueCode::try_from(unique_id("cond-")).unwrap();
    let terminal = TerminalId::try_from(unique_id("term-")).unwrap();
    assert_eq!(
        ctx.store
            .register(&code, None, &registration(&terminal))
            .await
            .unwrap(),
        Write::Applied
    );
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    (code, terminal, device)
}

fn payment_for(code: &UniqueCode, terminal: &TerminalId, ttl: i64) -> Payment {
    Payment::new(
        code.clone(),
        terminal.clone(),
        MerchantId::try_from("m-cond").unwrap(),
        PosId::try_from("pos").unwrap(),
        Amount::try_from(100).unwrap(),
        Currency::try_from("EUR").unwrap(),
        None,
        Timestamp::now(),
        ttl,
    )
}

#[tokio::test]
async fn device_unregistered_and_same_registration() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    // DEVICE_UNREGISTERED: a second first-registration (stale "seen = none") is refused.
    let other = TerminalId::try_from(unique_id("term-")).unwrap();
    assert_eq!(
        ctx.store
            .register(&code, None, &registration(&other))
            .await
            .unwrap(),
        Write::Conflict
    );
    // DEVICE_SAME_REGISTRATION: re-registering with the current token works, with a stale one not.
    assert_eq!(
        ctx.store
            .register(&code, Some(&device), &registration(&terminal))
            .await
            .unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store
            .register(&code, Some(&device), &registration(&terminal))
            .await
            .unwrap(),
        Write::Conflict
    );
    let now = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(now.registration.unwrap().terminal_id, terminal);
}

#[tokio::test]
async fn deregister_needs_the_registration_and_lock_as_read() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    // A payment took the lock after `device` was read: DEVICE_DEREGISTER_NO_LOCK refuses.
    let p = payment_for(&code, &terminal, 120);
    assert_eq!(
        ctx.store.create(&p, &device, None).await.unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store
            .deregister(&device, Timestamp::now())
            .await
            .unwrap(),
        Write::Conflict
    );
    // With the lock as it is now (DEVICE_DEREGISTER_WITH_LOCK): applied, the payment canceled.
    let fresh = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        ctx.store
            .deregister(&fresh, Timestamp::now())
            .await
            .unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store
            .payment(&p.payment_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        PaymentStatus::Canceled
    );
    let gone = ctx.store.device(&code).await.unwrap().unwrap();
    assert!(gone.registration.is_none() && gone.pending.is_none());
}

#[tokio::test]
async fn lock_free_and_lock_lapsed() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let first = payment_for(&code, &terminal, 120);
    // NEW_ITEM + LOCK_FREE.
    assert_eq!(
        ctx.store.create(&first, &device, None).await.unwrap(),
        Write::Applied
    );
    // LOCK_FREE with a stale read: refused, and the refused payment does not exist.
    let second = payment_for(&code, &terminal, 120);
    assert_eq!(
        ctx.store.create(&second, &device, None).await.unwrap(),
        Write::Conflict
    );
    assert!(
        ctx.store
            .payment(&second.payment_id)
            .await
            .unwrap()
            .is_none()
    );
    // LOCK_LAPSED: the current lock has not lapsed yet, so it cannot be taken over.
    let locked = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        ctx.store.create(&second, &locked, None).await.unwrap(),
        Write::Conflict
    );
    // Once it has lapsed (and the old payment is pending: PAYMENT_PENDING), it can.
    let (code2, terminal2, device2) = registered(&ctx).await;
    let short = Payment {
        expires_at: Timestamp::from_millis(Timestamp::now().millis() - 1000),
        ..payment_for(&code2, &terminal2, 0)
    };
    assert_eq!(
        ctx.store.create(&short, &device2, None).await.unwrap(),
        Write::Applied
    );
    let locked2 = ctx.store.device(&code2).await.unwrap().unwrap();
    let next = payment_for(&code2, &terminal2, 120);
    assert_eq!(
        ctx.store.create(&next, &locked2, None).await.unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store
            .payment(&short.payment_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        PaymentStatus::Expired
    );
}

async fn wrong_code(ctx: &Ctx, p: &Payment, device: &Device, fails_payment: bool) -> Write {
    let at = Timestamp::now();
    ctx.store
        .record_wrong_code(&WrongCode {
            payment: p,
            device,
            fails_payment,
            lock_until: device.lock_after_wrong_code(at),
            at,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn device_failures_unchanged_with_and_without_lock() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    assert_eq!(device.failed_auth, 0);
    let p = payment_for(&code, &terminal, 120);
    ctx.store.create(&p, &device, None).await.unwrap();
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    // DEVICE_FAILURES_UNCHANGED: counts from the value read...
    assert_eq!(wrong_code(&ctx, &p, &device, false).await, Write::Applied);
    // ...so a fresh payment read with a stale device read is refused, and nothing moves.
    let p1 = ctx.store.payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(wrong_code(&ctx, &p1, &device, false).await, Write::Conflict);
    let d1 = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!((d1.failed_auth, p1.failed_attempts), (1, 1));
    assert_eq!(
        ctx.store
            .payment(&p.payment_id)
            .await
            .unwrap()
            .unwrap()
            .failed_attempts,
        1
    );
    // DEVICE_FAILURES_UNCHANGED_LOCK_HELD: failing the payment frees its code...
    assert_eq!(wrong_code(&ctx, &p1, &d1, true).await, Write::Applied);
    let d2 = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!((d2.failed_auth, d2.pending.is_none()), (2, true));
    let failed = ctx.store.payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(failed.status, PaymentStatus::Failed);
    // ...only while the lock is that payment's: with it pointed elsewhere (a state no use case
    // makes, written raw here), nothing is written.
    let q = payment_for(&code, &terminal, 120);
    assert_eq!(
        ctx.store.create(&q, &d2, None).await.unwrap(),
        Write::Applied
    );
    let d3 = ctx.store.device(&code).await.unwrap().unwrap();
    ctx.dynamodb
        .update_item()
        .table_name(&ctx.table)
        .key("pk", AttributeValue::S(format!("DEVICE#{code}")))
        .key("sk", AttributeValue::S("DEVICE".into()))
        .update_expression("SET pending_payment_id = :other")
        .expression_attribute_values(":other", AttributeValue::S(p.payment_id.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_code(&ctx, &q, &d3, true).await, Write::Conflict);
    let q1 = ctx.store.payment(&q.payment_id).await.unwrap().unwrap();
    assert_eq!((q1.status, q1.failed_attempts), (PaymentStatus::Pending, 0));
    assert_eq!(
        ctx.store.device(&code).await.unwrap().unwrap().failed_auth,
        2
    );
}

/// The confirmed-payments index: a confirmation enters it, settlement leaves it, and only
/// confirmations older than the cut-off are returned.
#[tokio::test]
async fn stale_confirmed_lists_confirmed_until_settled() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    ctx.store.create(&p, &device, None).await.unwrap();
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    let at = Timestamp::now();
    let confirmation = Confirmation {
        payment: &p,
        device_failures: device.failed_auth,
        previous_counter: device.last_counter,
        counter: Counter::new(device.last_counter.get() + 1),
        fingerprint: "f".into(),
        at,
    };
    assert_eq!(
        ctx.store.confirm(&confirmation).await.unwrap(),
        Write::Applied
    );
    let listed = |before: Timestamp| {
        let store = ctx.store.clone();
        let id = p.payment_id.clone();
        async move {
            store
                .stale_confirmed(before, 10_000)
                .await
                .unwrap()
                .iter()
                .any(|x| x.payment_id == id)
        }
    };
    assert!(
        !listed(at).await,
        "a confirmation at the cut-off is not stale yet"
    );
    assert!(listed(at.plus_seconds(1)).await);
    let confirmed = ctx.store.payment(&p.payment_id).await.unwrap().unwrap();
    ctx.store
        .settle(
            &SettlementMessage::for_payment(&confirmed),
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert!(
        !listed(at.plus_seconds(1)).await,
        "settled payments leave the index"
    );
    // Left the index itself, not only filtered out on reading it.
    let item = &ctx.items_of(&format!("PAYMENT#{}", p.payment_id)).await[0];
    assert!(
        !item.contains_key("gsi1pk") && !item.contains_key("gsi1sk"),
        "{item:?}"
    );
}

#[tokio::test]
async fn payment_pending_unexpired_attempts_and_lapsed() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    ctx.store.create(&p, &device, None).await.unwrap();
    // PAYMENT_PENDING_ATTEMPTS: counts from the value read; a stale read is refused.
    assert_eq!(wrong_code(&ctx, &p, &device, false).await, Write::Applied);
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(wrong_code(&ctx, &p, &device, false).await, Write::Conflict);
    let p1 = ctx.store.payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(p1.failed_attempts, 1);
    // PAYMENT_PENDING_LAPSED: an unexpired payment cannot be recorded expired.
    assert_eq!(
        ctx.store
            .finish_pending(&p1, PaymentStatus::Expired, Timestamp::now())
            .await
            .unwrap(),
        Write::Conflict
    );
    // PAYMENT_PENDING_UNEXPIRED: decline "after" expiry is refused, before it applies (LOCK_HELD_BY too).
    let later = p1.expires_at.plus_seconds(1);
    assert_eq!(
        ctx.store
            .finish_pending(&p1, PaymentStatus::Declined, later)
            .await
            .unwrap(),
        Write::Conflict
    );
    assert_eq!(
        ctx.store
            .finish_pending(&p1, PaymentStatus::Declined, Timestamp::now())
            .await
            .unwrap(),
        Write::Applied
    );
    // PAYMENT_PENDING: nothing moves a final payment again.
    assert_eq!(
        ctx.store
            .finish_pending(&p1, PaymentStatus::Canceled, Timestamp::now())
            .await
            .unwrap(),
        Write::Conflict
    );
    assert_eq!(
        ctx.store
            .payment(&p.payment_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        PaymentStatus::Declined
    );
    assert!(
        ctx.store
            .device(&code)
            .await
            .unwrap()
            .unwrap()
            .pending
            .is_none()
    );
}

/// A confirmation of `p` as if the device had been read with `failures` and counter `prev`.
async fn confirm_as(
    ctx: &Ctx,
    p: &Payment,
    failures: u32,
    prev: u64,
    counter: u64,
    at: Timestamp,
) -> Write {
    let c = Confirmation {
        payment: p,
        device_failures: failures,
        previous_counter: Counter::new(prev),
        counter: Counter::new(counter),
        fingerprint: "fp".into(),
        at,
    };
    ctx.store.confirm(&c).await.unwrap()
}

#[tokio::test]
async fn confirm_needs_the_counter_as_read_and_the_lock() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    ctx.store.create(&p, &device, None).await.unwrap();
    // COUNTER_UNCHANGED: another confirmation moved the counter since it was read.
    assert_eq!(
        confirm_as(&ctx, &p, 0, 7, 8, Timestamp::now()).await,
        Write::Conflict
    );
    // PAYMENT_PENDING_ATTEMPTS inside the same transaction: expired...
    assert_eq!(
        confirm_as(&ctx, &p, 0, 0, 1, p.expires_at.plus_seconds(1)).await,
        Write::Conflict
    );
    // ...or a wrong code counted since the payment and the device were read (this is what keeps
    // a correct code already being checked from beating a lock set meanwhile).
    let seen = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(wrong_code(&ctx, &p, &seen, false).await, Write::Applied);
    assert_eq!(
        confirm_as(&ctx, &p, 1, 0, 1, Timestamp::now()).await,
        Write::Conflict,
        "the payment's attempts changed"
    );
    let p = ctx.store.payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(
        confirm_as(&ctx, &p, 0, 0, 1, Timestamp::now()).await,
        Write::Conflict,
        "the device's wrong-code count changed"
    );
    assert_eq!(
        confirm_as(&ctx, &p, 1, 0, 1, Timestamp::now()).await,
        Write::Applied
    );
    let d = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(d.last_counter, Counter::new(1));
    assert!(d.pending.is_none());
    assert_eq!(
        d.failed_auth, 0,
        "an accepted confirmation resets the count"
    );
    // Twice: the payment is no longer pending.
    assert_eq!(
        confirm_as(&ctx, &p, 0, 1, 2, Timestamp::now()).await,
        Write::Conflict
    );
    assert_eq!(
        ctx.store.device(&code).await.unwrap().unwrap().last_counter,
        Counter::new(1)
    );
}

#[tokio::test]
async fn settlement_is_conditional_on_confirmed_and_matching() {
    let ctx = Ctx::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    ctx.store.create(&p, &device, None).await.unwrap();
    let message = SettlementMessage::for_payment(&p);
    // Pending, not confirmed: PAYMENT_SETTLEABLE refuses; nothing in the ledger.
    assert!(ctx.store.settle(&message, Timestamp::now()).await.is_err());
    assert!(
        ctx.store
            .ledger_entries(&p.payment_id)
            .await
            .unwrap()
            .is_empty()
    );
    let c = Confirmation {
        payment: &p,
        device_failures: 0,
        previous_counter: Counter::new(0),
        counter: Counter::new(1),
        fingerprint: "fp".into(),
        at: Timestamp::now(),
    };
    assert_eq!(ctx.store.confirm(&c).await.unwrap(), Write::Applied);
    // A message that does not describe this payment: refused.
    let forged = SettlementMessage {
        amount: Amount::try_from(1).unwrap(),
        ..message.clone()
    };
    assert!(ctx.store.settle(&forged, Timestamp::now()).await.is_err());
    assert!(
        ctx.store
            .ledger_entries(&p.payment_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ctx.store.settle(&message, Timestamp::now()).await.unwrap(),
        Settlement::Settled
    );
    assert_eq!(
        ctx.store.settle(&message, Timestamp::now()).await.unwrap(),
        Settlement::AlreadySettled
    );
    assert_eq!(
        ctx.store.ledger_entries(&p.payment_id).await.unwrap().len(),
        2
    );
    let balances = ctx.store.balances(&p.merchant_id).await.unwrap();
    assert!(
        balances
            .iter()
            .any(|b| b.currency.code() == "EUR" && b.settled_amount >= 100)
    );
}

#[tokio::test]
async fn idempotency_free_and_held() {
    let ctx = Ctx::new().await;
    let merchant = MerchantId::try_from(unique_id("m-")).unwrap();
    let key = IdempotencyKey::try_from("order-1").unwrap();
    let now = Timestamp::now();
    let IdempotencyClaim::Claimed { lease } =
        ctx.store.claim(&merchant, &key, "fp-a", now).await.unwrap()
    else {
        panic!("first claim must own the key");
    };
    // IDEMPOTENCY_FREE: held and live.
    assert_eq!(
        ctx.store.claim(&merchant, &key, "fp-a", now).await.unwrap(),
        IdempotencyClaim::InFlight
    );
    // Even another body waits while the key is held; it is told of the mismatch afterwards.
    assert_eq!(
        ctx.store.claim(&merchant, &key, "fp-b", now).await.unwrap(),
        IdempotencyClaim::InFlight
    );
    // A lapsed lease is taken over by the same request only.
    let later =
        Timestamp::from_millis(now.millis() + twochan_aws::dynamo::IDEMPOTENCY_LEASE_MS + 1);
    assert_eq!(
        ctx.store
            .claim(&merchant, &key, "fp-b", later)
            .await
            .unwrap(),
        IdempotencyClaim::Mismatch
    );
    let IdempotencyClaim::Claimed { lease: lease2 } = ctx
        .store
        .claim(&merchant, &key, "fp-a", later)
        .await
        .unwrap()
    else {
        panic!("a lapsed lease is taken over");
    };
    // IDEMPOTENCY_HELD: the old holder can neither complete nor release.
    let response = StoredResponse {
        status: 201,
        body: "{\"old\":true}".into(),
    };
    ctx.store
        .complete(IdempotencyRecord {
            merchant_id: &merchant,
            key: &key,
            lease: &lease,
            response,
        })
        .await
        .unwrap();
    ctx.store.release(&merchant, &key, &lease).await.unwrap();
    assert_eq!(
        ctx.store
            .claim(&merchant, &key, "fp-a", later)
            .await
            .unwrap(),
        IdempotencyClaim::InFlight
    );
    let response = StoredResponse {
        status: 201,
        body: "{\"new\":true}".into(),
    };
    ctx.store
        .complete(IdempotencyRecord {
            merchant_id: &merchant,
            key: &key,
            lease: &lease2,
            response: response.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        ctx.store
            .claim(&merchant, &key, "fp-a", later)
            .await
            .unwrap(),
        IdempotencyClaim::Replay(response)
    );
    // After the 24 h window (counted from the claim that took the key) it is free again.
    let next_day =
        Timestamp::from_millis(later.millis() + twochan_aws::dynamo::IDEMPOTENCY_WINDOW_MS + 1);
    assert!(matches!(
        ctx.store
            .claim(&merchant, &key, "fp-b", next_day)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed { .. }
    ));
}

//! Every conditional expression of `twochan_aws::dynamo` against the emulator, through the
//! adapter's own methods: the write happens when its condition holds and is refused (nothing
//! written) when it does not.

use crate::common::Harness;
use aws_sdk_dynamodb::types::AttributeValue;
use twochan_aws::keys;
use twochan_domain::{
    Amount, Challenge, Counter, Currency, IdempotencyKey, MerchantId, Payment, PaymentId,
    PaymentSlot, PaymentStatus, PosId, TerminalId, Timestamp, UniqueCode,
    crypto::IssuedSecret,
    ports::{
        Confirmation, Device, Devices, FinalRefusal, Ledger, NewRegistration, Payments,
        Registration, RegistrationChallenge, RegistrationKind, Settlement, SettlementMessage,
        SlotRecord, StoredResponse, Write, WrongCode,
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

/// Registers `code` to `terminal` as the use case does, without a caller's token: a first
/// registration, or the same terminal again when `seen` is registered.
async fn register(
    ctx: &Harness,
    code: &UniqueCode,
    seen: Option<&Device>,
    terminal: &TerminalId,
) -> Write {
    let kind = match seen.and_then(|d| d.registration.as_ref()) {
        Some(_) => RegistrationKind::Again,
        None => RegistrationKind::New,
    };
    let registration = registration(terminal);
    ctx.store
        .register(&NewRegistration {
            unique_code: code,
            seen,
            kind,
            registration: &registration,
            authority: None,
        })
        .await
        .unwrap()
}

/// A registered device as stored.
async fn registered(ctx: &Harness) -> (UniqueCode, TerminalId, Device) {
    let code = UniqueCode::try_from(unique_id("cond-")).unwrap();
    let terminal = TerminalId::try_from(unique_id("term-")).unwrap();
    assert_eq!(register(ctx, &code, None, &terminal).await, Write::Applied);
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    (code, terminal, device)
}

fn payment_for(code: &UniqueCode, terminal: &TerminalId, ttl: i64) -> Payment {
    Payment::new(
        PaymentId::generate(Timestamp::now()),
        code.clone(),
        terminal.clone(),
        MerchantId::try_from("m-cond").unwrap(),
        PosId::try_from("pos").unwrap(),
        Amount::try_from(100).unwrap(),
        Currency::try_from("EUR").unwrap(),
        None,
        ttl,
    )
}

/// What deregistration keeps for a payment request caught between its two writes.
fn abandoned() -> StoredResponse {
    StoredResponse {
        refusal: FinalRefusal::UnknownDevice,
    }
}

/// A new payment as the use case makes it: the device's lock (LOCK_FREE or LOCK_LAPSED), then
/// the payment in its slot (NEW_ITEM).
async fn create(ctx: &Harness, p: &Payment, seen: &Device) -> Write {
    match ctx.store.lock_device(p, seen).await.unwrap() {
        Write::Applied => ctx.store.put_payment(p, "fp-create").await.unwrap(),
        Write::Conflict => Write::Conflict,
    }
}

#[tokio::test]
async fn device_unregistered_and_same_registration() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    // DEVICE_UNREGISTERED: a second first-registration (stale "seen = none") is refused.
    let other = TerminalId::try_from(unique_id("term-")).unwrap();
    assert_eq!(register(&ctx, &code, None, &other).await, Write::Conflict);
    // DEVICE_SAME_REGISTRATION: re-registering with the current token works, with a stale one not.
    assert_eq!(
        register(&ctx, &code, Some(&device), &terminal).await,
        Write::Applied
    );
    assert_eq!(
        register(&ctx, &code, Some(&device), &terminal).await,
        Write::Conflict
    );
    let now = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(now.registration.unwrap().terminal_id, terminal);
}

#[tokio::test]
async fn deregister_needs_the_registration_and_lock_as_read() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    // A payment took the lock after `device` was read: DEVICE_DEREGISTER_NO_LOCK refuses.
    let p = payment_for(&code, &terminal, 120);
    assert_eq!(create(&ctx, &p, &device).await, Write::Applied);
    assert_eq!(
        ctx.store
            .deregister(&device, Timestamp::now(), &abandoned())
            .await
            .unwrap(),
        Write::Conflict
    );
    // With the lock as it is now (DEVICE_DEREGISTER_WITH_LOCK): applied, the payment canceled.
    let fresh = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        ctx.store
            .deregister(&fresh, Timestamp::now(), &abandoned())
            .await
            .unwrap(),
        Write::Applied
    );
    assert_eq!(
        stored(&ctx, &p.payment_id).await.status,
        PaymentStatus::Canceled
    );
    let gone = ctx.store.device(&code).await.unwrap().unwrap();
    assert!(gone.registration.is_none() && gone.pending.is_none());
}

/// A lock whose payment is not stored (its request died, or has not written it yet):
/// deregistration keeps an answer in that payment's slot (NEW_ITEM), so the late write fails.
#[tokio::test]
async fn deregistration_closes_the_slot_of_a_lock_without_payment() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    assert_eq!(
        ctx.store.lock_device(&p, &device).await.unwrap(),
        Write::Applied
    );
    let locked = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        ctx.store
            .deregister(&locked, Timestamp::now(), &abandoned())
            .await
            .unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store.put_payment(&p, "fp-late").await.unwrap(),
        Write::Conflict
    );
    assert_eq!(
        ctx.store.slot(&p.payment_id.slot()).await.unwrap(),
        Some(SlotRecord::Rejected {
            fingerprint: "*".into(),
            response: abandoned()
        })
    );
    let gone = ctx.store.device(&code).await.unwrap().unwrap();
    assert!(gone.registration.is_none() && gone.pending.is_none());
}

#[tokio::test]
async fn lock_free_and_lock_lapsed() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let first = payment_for(&code, &terminal, 120);
    // NEW_ITEM + LOCK_FREE.
    assert_eq!(create(&ctx, &first, &device).await, Write::Applied);
    // LOCK_FREE with a stale read: refused, and the refused payment does not exist.
    let second = payment_for(&code, &terminal, 120);
    assert_eq!(create(&ctx, &second, &device).await, Write::Conflict);
    assert!(
        ctx.store
            .payment(&second.payment_id)
            .await
            .unwrap()
            .is_none()
    );
    // LOCK_LAPSED: the current lock has not lapsed yet, so it cannot be taken over.
    let locked = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(create(&ctx, &second, &locked).await, Write::Conflict);
    // Once it has lapsed, it can; the old payment stays `pending` in the table and reads as
    // `expired` (no write of the new payment touches it).
    let (code2, terminal2, device2) = registered(&ctx).await;
    let short = Payment {
        expires_at: Timestamp::from_millis(Timestamp::now().millis() - 1000),
        ..payment_for(&code2, &terminal2, 0)
    };
    assert_eq!(create(&ctx, &short, &device2).await, Write::Applied);
    let locked2 = ctx.store.device(&code2).await.unwrap().unwrap();
    let next = payment_for(&code2, &terminal2, 120);
    assert_eq!(create(&ctx, &next, &locked2).await, Write::Applied);
    let old = stored(&ctx, &short.payment_id).await;
    assert_eq!(old.status, PaymentStatus::Pending);
    assert_eq!(
        old.effective_status(Timestamp::now()),
        PaymentStatus::Expired
    );
    assert_eq!(
        ctx.store.device(&code2).await.unwrap().unwrap().pending,
        Some((next.payment_id.clone(), next.expires_at))
    );
}

/// NEW_ITEM on a payment slot: the first answer kept under an idempotency key stays, whether a
/// payment or a final error; LOCK_HELD_BY on releasing a lock.
#[tokio::test]
async fn a_payment_slot_keeps_its_first_answer() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let merchant = MerchantId::try_from("m-cond").unwrap();
    let slot = PaymentSlot::of(
        &merchant,
        &IdempotencyKey::try_from(unique_id("k-").as_str()).unwrap(),
    );
    let mut p = payment_for(&code, &terminal, 120);
    p.payment_id = PaymentId::in_slot(Timestamp::now(), &slot);
    assert_eq!(create(&ctx, &p, &device).await, Write::Applied);
    // A twin with another id in the same slot cannot overwrite it.
    let mut twin = p.clone();
    twin.payment_id = PaymentId::in_slot(Timestamp::now().plus_seconds(1), &slot);
    assert_eq!(
        ctx.store.put_payment(&twin, "fp-other").await.unwrap(),
        Write::Conflict
    );
    let rejected = StoredResponse {
        refusal: FinalRefusal::DeviceBusy,
    };
    assert_eq!(
        ctx.store
            .record_rejection(&slot, "fp-other", &rejected, Timestamp::now())
            .await
            .unwrap(),
        Write::Conflict
    );
    match ctx.store.slot(&slot).await.unwrap() {
        Some(SlotRecord::Payment {
            payment,
            fingerprint,
        }) => {
            assert_eq!((*payment, fingerprint.as_str()), (p.clone(), "fp-create"));
        }
        other => panic!("{other:?}"),
    }
    // The twin's id shares the slot but is not the payment: read by id, it does not exist.
    assert!(ctx.store.payment(&twin.payment_id).await.unwrap().is_none());
    // A kept error, first in its slot, stays too.
    let other = PaymentSlot::of(
        &merchant,
        &IdempotencyKey::try_from(unique_id("k-").as_str()).unwrap(),
    );
    assert_eq!(
        ctx.store
            .record_rejection(&other, "fp-r", &rejected, Timestamp::now())
            .await
            .unwrap(),
        Write::Applied
    );
    let mut late = payment_for(&code, &terminal, 120);
    late.payment_id = PaymentId::in_slot(Timestamp::now(), &other);
    assert_eq!(
        ctx.store.put_payment(&late, "fp-r").await.unwrap(),
        Write::Conflict
    );
    assert_eq!(
        ctx.store.slot(&other).await.unwrap(),
        Some(SlotRecord::Rejected {
            fingerprint: "fp-r".into(),
            response: rejected
        })
    );
    assert!(ctx.store.payment(&late.payment_id).await.unwrap().is_none());
    // LOCK_HELD_BY: releasing another payment's lock changes nothing; SLOT_WITHOUT_PAYMENT: nor
    // does releasing the lock of a payment that is stored (its lock goes with its status).
    for other in [&twin.payment_id, &p.payment_id] {
        ctx.store.release_lock(&code, other).await.unwrap();
        assert_eq!(
            ctx.store.device(&code).await.unwrap().unwrap().pending,
            Some((p.payment_id.clone(), p.expires_at))
        );
    }
}

#[tokio::test]
async fn slot_without_payment_frees_a_lock_whose_slot_keeps_a_refusal() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    // The slot keeps another request's refusal (it has no payment_id), then this payment's
    // request takes the lock and cannot store the payment.
    let refusal = StoredResponse {
        refusal: FinalRefusal::DeviceBusy,
    };
    assert_eq!(
        ctx.store
            .record_rejection(&p.payment_id.slot(), "fp-other", &refusal, Timestamp::now())
            .await
            .unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store.lock_device(&p, &device).await.unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store.put_payment(&p, "fp-create").await.unwrap(),
        Write::Conflict
    );
    // SLOT_WITHOUT_PAYMENT holds for a slot without the payment_id attribute: the lock goes.
    ctx.store.release_lock(&code, &p.payment_id).await.unwrap();
    assert_eq!(
        ctx.store.device(&code).await.unwrap().unwrap().pending,
        None
    );
}

async fn wrong_code(ctx: &Harness, p: &Payment, device: &Device, fails_payment: bool) -> Write {
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
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    assert_eq!(device.failed_auth, 0);
    let p = payment_for(&code, &terminal, 120);
    create(&ctx, &p, &device).await;
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    // DEVICE_FAILURES_UNCHANGED: counts from the value read...
    assert_eq!(wrong_code(&ctx, &p, &device, false).await, Write::Applied);
    // ...so a fresh payment read with a stale device read is refused, and nothing moves.
    let p1 = stored(&ctx, &p.payment_id).await;
    assert_eq!(wrong_code(&ctx, &p1, &device, false).await, Write::Conflict);
    let d1 = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!((d1.failed_auth, p1.failed_attempts), (1, 1));
    assert_eq!(stored(&ctx, &p.payment_id).await.failed_attempts, 1);
    // DEVICE_FAILURES_UNCHANGED_LOCK_HELD: failing the payment frees its code...
    assert_eq!(wrong_code(&ctx, &p1, &d1, true).await, Write::Applied);
    let d2 = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!((d2.failed_auth, d2.pending.is_none()), (2, true));
    let failed = stored(&ctx, &p.payment_id).await;
    assert_eq!(failed.status, PaymentStatus::Failed);
    // ...only while the lock is that payment's: with it pointed elsewhere (a state no use case
    // makes, written raw here), nothing is written.
    let q = payment_for(&code, &terminal, 120);
    assert_eq!(create(&ctx, &q, &d2).await, Write::Applied);
    let d3 = ctx.store.device(&code).await.unwrap().unwrap();
    ctx.dynamodb
        .update_item()
        .table_name(&ctx.table)
        .key("pk", AttributeValue::S(keys::device_pk(code.as_str())))
        .key("sk", AttributeValue::S(keys::SK_DEVICE.into()))
        .update_expression("SET pending_payment_id = :other")
        .expression_attribute_values(":other", AttributeValue::S(p.payment_id.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_code(&ctx, &q, &d3, true).await, Write::Conflict);
    let q1 = stored(&ctx, &q.payment_id).await;
    assert_eq!((q1.status, q1.failed_attempts), (PaymentStatus::Pending, 0));
    assert_eq!(
        ctx.store.device(&code).await.unwrap().unwrap().failed_auth,
        2
    );
}

/// The keys-only index of a terminal's devices: registration writes it, the payment path never
/// does (no payment item carries index attributes), deregistration removes it.
#[tokio::test]
async fn only_registration_writes_the_terminal_index() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let device_pk = keys::device_pk(code.as_str());
    let device_item = || async { ctx.items_of(&device_pk).await.remove(0) };
    let item = device_item().await;
    assert_eq!(
        item.get("gsi1pk").and_then(|v| v.as_s().ok()).cloned(),
        Some(keys::terminal_pk(terminal.as_str()))
    );
    let p = payment_for(&code, &terminal, 120);
    assert_eq!(create(&ctx, &p, &device).await, Write::Applied);
    let listed = ctx.store.pending_for_terminal(&terminal).await.unwrap();
    assert_eq!(listed, vec![p.clone()]);
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        confirm_as(&ctx, &p, device.failed_auth, 0, 1, Timestamp::now()).await,
        Write::Applied
    );
    assert!(
        ctx.store
            .pending_for_terminal(&terminal)
            .await
            .unwrap()
            .is_empty()
    );
    let confirmed = stored(&ctx, &p.payment_id).await;
    ctx.store
        .settle(
            &SettlementMessage::for_payment(&confirmed, Timestamp::now()),
            Timestamp::now(),
        )
        .await
        .unwrap();
    let payment_item = &ctx.items_of(&keys::payment_pk(&p.payment_id)).await[0];
    assert!(
        payment_item.keys().all(|k| !k.starts_with("gsi")),
        "{payment_item:?}"
    );
    // The device's index keys did not move through the payment (no index write).
    let after = device_item().await;
    assert_eq!(
        (after.get("gsi1pk"), after.get("gsi1sk")),
        (item.get("gsi1pk"), item.get("gsi1sk"))
    );
    let fresh = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        ctx.store
            .deregister(&fresh, Timestamp::now(), &abandoned())
            .await
            .unwrap(),
        Write::Applied
    );
    let gone = device_item().await;
    assert!(!gone.contains_key("gsi1pk") && !gone.contains_key("gsi1sk"));
}

#[tokio::test]
async fn payment_pending_unexpired_attempts_and_lapsed() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    create(&ctx, &p, &device).await;
    // PAYMENT_PENDING_ATTEMPTS: counts from the value read; a stale read is refused.
    assert_eq!(wrong_code(&ctx, &p, &device, false).await, Write::Applied);
    let device = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(wrong_code(&ctx, &p, &device, false).await, Write::Conflict);
    let p1 = stored(&ctx, &p.payment_id).await;
    assert_eq!(p1.failed_attempts, 1);
    // PAYMENT_PENDING_LAPSED: an unexpired payment cannot be recorded expired.
    assert_eq!(
        finish(&ctx, &p1, PaymentStatus::Expired, Timestamp::now()).await,
        Write::Conflict
    );
    // PAYMENT_PENDING_UNEXPIRED: decline "after" expiry is refused, before it applies (LOCK_HELD_BY too).
    let later = p1.expires_at.plus_seconds(1);
    assert_eq!(
        finish(&ctx, &p1, PaymentStatus::Declined, later).await,
        Write::Conflict
    );
    assert_eq!(
        finish(&ctx, &p1, PaymentStatus::Declined, Timestamp::now()).await,
        Write::Applied
    );
    // PAYMENT_PENDING: nothing moves a final payment again.
    assert_eq!(
        finish(&ctx, &p1, PaymentStatus::Canceled, Timestamp::now()).await,
        Write::Conflict
    );
    assert_eq!(
        stored(&ctx, &p.payment_id).await.status,
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

/// The payment `id` as stored.
async fn stored(ctx: &Harness, id: &PaymentId) -> Payment {
    ctx.store.payment(id).await.unwrap().unwrap()
}

/// Records the pending payment `p` as finished with `status` at `at`.
async fn finish(ctx: &Harness, p: &Payment, status: PaymentStatus, at: Timestamp) -> Write {
    ctx.store.finish_pending(p, status, at).await.unwrap()
}

/// A confirmation of `p` as if the device had been read with `failures` and counter `prev`.
async fn confirm_as(
    ctx: &Harness,
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
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    create(&ctx, &p, &device).await;
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
    let p = stored(&ctx, &p.payment_id).await;
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
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    create(&ctx, &p, &device).await;
    let message = SettlementMessage::for_payment(&p, Timestamp::now());
    // Pending, not confirmed: PAYMENT_SETTLEABLE refuses; nothing in the ledger.
    assert_eq!(
        ctx.store.settle(&message, Timestamp::now()).await.unwrap(),
        Settlement::NotConfirmed(PaymentStatus::Pending)
    );
    assert!(
        ctx.store
            .ledger_entries(&p.payment_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        confirm_as(&ctx, &p, 0, 0, 1, Timestamp::now()).await,
        Write::Applied
    );
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
async fn challenge_usable_once_for_its_code_before_it_expires() {
    let ctx = Harness::new().await;
    let code = UniqueCode::try_from(unique_id("cond-")).unwrap();
    let other = UniqueCode::try_from(unique_id("cond-")).unwrap();
    let now = Timestamp::now();
    let c = RegistrationChallenge::issue(code.clone(), now);
    ctx.store.put_challenge(&c).await.unwrap();
    // CHALLENGE_USABLE: not for another code, not after its expiry; then once, and only once.
    for (code, at, expected) in [
        (&other, now, Write::Conflict),
        (&code, c.expires_at.plus_seconds(1), Write::Conflict),
        (&code, now, Write::Applied),
        (&code, now, Write::Conflict),
    ] {
        let used = ctx
            .store
            .use_challenge(&c.challenge, code, at)
            .await
            .unwrap();
        assert_eq!(used, expected, "{code} at {at:?}");
    }
    let unknown = Challenge::generate();
    assert_eq!(
        ctx.store.use_challenge(&unknown, &code, now).await.unwrap(),
        Write::Conflict
    );
}

#[tokio::test]
async fn terminal_free_and_only_this_guard_a_phones_terminal() {
    let ctx = Harness::new().await;
    let (_, terminal, first) = registered(&ctx).await;
    assert_eq!(
        ctx.store
            .device_and_terminal(&first.unique_code, &terminal)
            .await
            .unwrap()
            .1,
        1
    );
    // TERMINAL_FREE: a second device without the terminal's token is refused...
    let second = UniqueCode::try_from(unique_id("cond-")).unwrap();
    assert_eq!(
        register(&ctx, &second, None, &terminal).await,
        Write::Conflict
    );
    assert!(ctx.store.device(&second).await.unwrap().is_none());
    // ...and applies with a current token of the terminal (checked to exist: EXISTS).
    let token = &first.registration.as_ref().unwrap().token_hash;
    let reg = registration(&terminal);
    let with_token = |authority| NewRegistration {
        unique_code: &second,
        seen: None,
        kind: RegistrationKind::New,
        registration: &reg,
        authority,
    };
    let revoked = IssuedSecret::generate("tt_").hash;
    assert_eq!(
        ctx.store
            .register(&with_token(Some(&revoked)))
            .await
            .unwrap(),
        Write::Conflict
    );
    assert_eq!(
        ctx.store.register(&with_token(Some(token))).await.unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store
            .device_and_terminal(&second, &terminal)
            .await
            .unwrap()
            .1,
        2
    );
    // TERMINAL_ONLY_THIS: the first device again without a token, now that there are two.
    let first_now = ctx.store.device(&first.unique_code).await.unwrap().unwrap();
    assert_eq!(
        register(&ctx, &first.unique_code, Some(&first_now), &terminal).await,
        Write::Conflict
    );
    // Deregistration counts down: one device left, registered again freely.
    let second_now = ctx.store.device(&second).await.unwrap().unwrap();
    assert_eq!(
        ctx.store
            .deregister(&second_now, Timestamp::now(), &abandoned())
            .await
            .unwrap(),
        Write::Applied
    );
    assert_eq!(
        ctx.store
            .device_and_terminal(&second, &terminal)
            .await
            .unwrap()
            .1,
        1
    );
    assert_eq!(
        register(&ctx, &first.unique_code, Some(&first_now), &terminal).await,
        Write::Applied
    );
}

#[tokio::test]
async fn slot_without_payment_keeps_the_lock_of_a_stored_payment() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    // A lock whose payment was stored (its write's answer lost): the release leaves it.
    let stored = payment_for(&code, &terminal, 120);
    assert_eq!(create(&ctx, &stored, &device).await, Write::Applied);
    ctx.store
        .release_lock(&code, &stored.payment_id)
        .await
        .unwrap();
    let now = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        now.pending.map(|(id, _)| id),
        Some(stored.payment_id.clone())
    );
    // A lock whose payment was never stored goes back.
    let (code2, terminal2, device2) = registered(&ctx).await;
    let orphan2 = payment_for(&code2, &terminal2, 120);
    assert_eq!(
        ctx.store.lock_device(&orphan2, &device2).await.unwrap(),
        Write::Applied
    );
    ctx.store
        .release_lock(&code2, &orphan2.payment_id)
        .await
        .unwrap();
    assert!(
        ctx.store
            .device(&code2)
            .await
            .unwrap()
            .unwrap()
            .pending
            .is_none()
    );
}

/// A confirmed payment of `merchant` on a device of its own, as the handlers leave it.
async fn confirmed_payment(
    ctx: &Harness,
    merchant: &MerchantId,
    amount: u64,
    confirm: bool,
) -> Payment {
    let (code, terminal, device) = registered(ctx).await;
    let p = Payment {
        merchant_id: merchant.clone(),
        amount: Amount::try_from(amount).unwrap(),
        ..payment_for(&code, &terminal, 120)
    };
    assert_eq!(create(ctx, &p, &device).await, Write::Applied);
    if confirm {
        assert_eq!(
            confirm_as(ctx, &p, 0, 0, 1, Timestamp::now()).await,
            Write::Applied
        );
    }
    p
}

#[tokio::test]
async fn a_settlement_group_settles_each_confirmed_payment_once_with_one_balance_update() {
    let ctx = Harness::new().await;
    let merchant = MerchantId::try_from(unique_id("m-group-")).unwrap();
    let a = confirmed_payment(&ctx, &merchant, 100, true).await;
    let b = confirmed_payment(&ctx, &merchant, 250, true).await;
    let pending = confirmed_payment(&ctx, &merchant, 1000, false).await;
    let earlier = confirmed_payment(&ctx, &merchant, 7, true).await;
    let now = Timestamp::now();
    let message = |p: &Payment| SettlementMessage::for_payment(p, now);
    assert_eq!(
        ctx.store.settle(&message(&earlier), now).await.unwrap(),
        Settlement::Settled
    );
    let forged = SettlementMessage {
        amount: Amount::try_from(1).unwrap(),
        ..message(&b)
    };
    // PAYMENT_SETTLEABLE per payment inside one transaction: the pending, the settled and the
    // forged ones are taken out and told apart; the repeat follows its first; the rest settle.
    let group = [
        message(&a),
        message(&pending),
        message(&b),
        message(&a),
        message(&earlier),
        forged,
    ];
    let outcomes = ctx.store.settle_group(&group, now).await.unwrap();
    assert_eq!(outcomes[0], Ok(Settlement::Settled));
    assert_eq!(
        outcomes[1],
        Ok(Settlement::NotConfirmed(PaymentStatus::Pending))
    );
    assert_eq!(outcomes[2], Ok(Settlement::Settled));
    assert_eq!(outcomes[3], Ok(Settlement::AlreadySettled));
    assert_eq!(outcomes[4], Ok(Settlement::AlreadySettled));
    assert!(
        matches!(
            outcomes[5],
            Err(twochan_domain::DomainError::InvalidRequest(_))
        ),
        "{:?}",
        outcomes[5]
    );
    let balance = ctx.store.balances(&merchant).await.unwrap();
    assert_eq!(balance.len(), 1, "{balance:?}");
    assert_eq!(
        (balance[0].settled_amount, balance[0].settled_count),
        (100 + 250 + 7, 3)
    );
    // Delivered again, the whole group writes nothing.
    let again = ctx.store.settle_group(&group[..3], now).await.unwrap();
    assert_eq!(
        again,
        [
            Ok(Settlement::AlreadySettled),
            Ok(Settlement::NotConfirmed(PaymentStatus::Pending)),
            Ok(Settlement::AlreadySettled)
        ]
    );
    let balance = ctx.store.balances(&merchant).await.unwrap();
    assert_eq!(
        (balance[0].settled_amount, balance[0].settled_count),
        (357, 3)
    );
}

#[tokio::test]
async fn recording_an_expiry_frees_the_code_of_that_payment_only() {
    let ctx = Harness::new().await;
    let (code, terminal, device) = registered(&ctx).await;
    let p = payment_for(&code, &terminal, 120);
    assert_eq!(create(&ctx, &p, &device).await, Write::Applied);
    let lapsed = p.expires_at.plus_seconds(1);
    // PAYMENT_PENDING_LAPSED, then LOCK_HELD_BY on the device: the stored, now expired, payment
    // gives its lock back (the release of an unstored payment's lock could not apply here).
    assert_eq!(
        finish(&ctx, &p, PaymentStatus::Expired, lapsed).await,
        Write::Applied
    );
    let after = ctx.store.device(&code).await.unwrap().unwrap();
    assert_eq!(
        after.pending, None,
        "the expired payment still holds the code"
    );
    assert_eq!(
        stored(&ctx, &p.payment_id).await.status,
        PaymentStatus::Expired
    );
}

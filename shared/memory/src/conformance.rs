//! Checks any store of the ports must pass, [`crate::MemoryStore`] and `DynamoStore` alike: each
//! conditional write applies once and only while its condition holds, and a refused one writes
//! nothing. Every check makes its own merchant, devices and terminals (random names), so the
//! checks can run against a shared table, in any order and at once.
//!
//! A check panics (it is a test) when a store answers otherwise. `kept` is any final refusal a
//! slot may keep; the checks only store it and compare it with what they read back.

use twochan_domain::{
    Amount, Challenge, Counter, Currency, DomainError, IdempotencyKey, MerchantId, Payment,
    PaymentId, PaymentSlot, PaymentStatus, PosId, RefundId, TerminalId, Timestamp, UniqueCode,
    crypto::{IssuedSecret, SecretHash, fill_random},
    ports::{
        ANY_REQUEST, Confirmation, Device, Devices, Directory, Ledger, NewRefund, NewRegistration,
        Payments, RefundSlotRecord, Refunds, Registration, RegistrationChallenge, RegistrationKind,
        Settlement, SettlementMessage, SlotRecord, StoredResponse, StuckPayments, Write, WrongCode,
    },
    refund::Refund,
};

/// A name nobody else uses: `prefix` and 12 random hex characters.
pub fn fresh(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    fill_random(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

fn code() -> UniqueCode {
    UniqueCode::try_from(fresh("conf-dev-")).expect("a fresh code is well-formed")
}

fn terminal() -> TerminalId {
    TerminalId::try_from(fresh("conf-term-")).expect("a fresh terminal id is well-formed")
}

fn merchant() -> MerchantId {
    MerchantId::try_from(fresh("m-conf-")).expect("a fresh merchant id is well-formed")
}

fn krw() -> Currency {
    Currency::try_from("KRW").expect("KRW")
}

fn new_registration(terminal: &TerminalId) -> Registration {
    Registration {
        terminal_id: terminal.clone(),
        token_hash: IssuedSecret::generate("tt_").hash,
        registered_at: Timestamp::now().truncated_to_second(),
    }
}

/// Registers a fresh device to a fresh terminal; the device as stored.
pub async fn registered<S: Devices>(store: &S) -> (UniqueCode, TerminalId, Device) {
    let (code, terminal) = (code(), terminal());
    let registration = new_registration(&terminal);
    let write = store
        .register(&NewRegistration {
            unique_code: &code,
            seen: None,
            kind: RegistrationKind::New,
            registration: &registration,
            authority: None,
        })
        .await
        .expect("register");
    assert_eq!(write, Write::Applied, "a fresh device registers");
    let device = stored_device(store, &code).await;
    (code, terminal, device)
}

async fn stored_device<S: Devices>(store: &S, code: &UniqueCode) -> Device {
    store
        .device(code)
        .await
        .expect("read the device")
        .expect("the device is stored")
}

async fn stored_payment<S: Payments>(store: &S, id: &PaymentId) -> Payment {
    store
        .payment(id)
        .await
        .expect("read the payment")
        .expect("the payment is stored")
}

/// A pending payment of `merchant` on the device (not stored), living `ttl_seconds`.
fn payment_on(
    merchant: &MerchantId,
    code: &UniqueCode,
    terminal: &TerminalId,
    amount: u64,
    ttl_seconds: i64,
) -> Payment {
    Payment::new(
        PaymentId::generate(Timestamp::now()),
        code.clone(),
        terminal.clone(),
        merchant.clone(),
        PosId::try_from("pos-conf").expect("pos id"),
        Amount::try_from(amount).expect("amount"),
        krw(),
        None,
        ttl_seconds,
    )
}

/// Locks the device for `p` and stores it, as a payment request does.
async fn create<S: Payments>(store: &S, p: &Payment, seen: &Device) {
    assert_eq!(
        store.lock_device(p, seen).await.expect("lock_device"),
        Write::Applied,
        "the lock is free"
    );
    assert_eq!(
        store
            .put_payment(p, "fp-create")
            .await
            .expect("put_payment"),
        Write::Applied,
        "the slot is empty"
    );
}

/// A pending payment of a fresh device.
async fn pending<S: Devices + Payments>(
    store: &S,
    merchant: &MerchantId,
    amount: u64,
) -> (Payment, Device) {
    let (code, terminal, device) = registered(store).await;
    let p = payment_on(merchant, &code, &terminal, amount, 120);
    create(store, &p, &device).await;
    (p, stored_device(store, &code).await)
}

async fn confirm_as_read<S: Payments>(store: &S, p: &Payment, d: &Device) -> Write {
    store
        .confirm(&Confirmation {
            payment: p,
            device_failures: d.failed_auth,
            previous_counter: d.last_counter,
            counter: Counter::new(d.last_counter.get() + 1),
            fingerprint: "fp-confirm".into(),
            at: Timestamp::now(),
        })
        .await
        .expect("confirm")
}

/// A confirmed payment of a fresh device.
async fn confirmed<S: Devices + Payments>(
    store: &S,
    merchant: &MerchantId,
    amount: u64,
) -> Payment {
    let (p, d) = pending(store, merchant, amount).await;
    assert_eq!(confirm_as_read(store, &p, &d).await, Write::Applied);
    stored_payment(store, &p.payment_id).await
}

/// A settled payment of a fresh device.
async fn settled<S: Devices + Payments + Ledger>(
    store: &S,
    merchant: &MerchantId,
    amount: u64,
) -> Payment {
    let p = confirmed(store, merchant, amount).await;
    let outcome = store
        .settle(
            &SettlementMessage::for_payment(&p, Timestamp::now()),
            Timestamp::now(),
        )
        .await
        .expect("settle");
    assert_eq!(outcome, Settlement::Settled);
    stored_payment(store, &p.payment_id).await
}

/// The merchant's KRW balance: (settled, count, refunded, net); zeros before its first
/// settlement.
pub async fn krw_balance<S: Ledger>(store: &S, merchant: &MerchantId) -> (u64, u64, u64, u64) {
    store
        .balances(merchant)
        .await
        .expect("balances")
        .into_iter()
        .find(|b| b.currency == krw())
        .map(|b| {
            (
                b.settled_amount,
                b.settled_count,
                b.refunded_amount,
                b.net_amount,
            )
        })
        .unwrap_or_default()
}

/// `CHALLENGE_USABLE`: a challenge is used once, for its own code, before it expires.
pub async fn challenge_is_used_once<S: Devices>(store: &S) {
    let code = code();
    let now = Timestamp::now();
    let c = RegistrationChallenge::issue(code.clone(), now);
    store.put_challenge(&c).await.expect("put_challenge");
    let use_at = |code: UniqueCode, at: Timestamp| {
        let challenge = c.challenge.clone();
        async move {
            store
                .use_challenge(&challenge, &code, at)
                .await
                .expect("use_challenge")
        }
    };
    assert_eq!(
        use_at(self::code(), now).await,
        Write::Conflict,
        "another code"
    );
    assert_eq!(
        use_at(code.clone(), c.expires_at.plus_seconds(1)).await,
        Write::Conflict,
        "after expiry"
    );
    assert_eq!(use_at(code.clone(), now).await, Write::Applied);
    assert_eq!(use_at(code.clone(), now).await, Write::Conflict, "used");
    let unknown = Challenge::generate();
    assert_eq!(
        store
            .use_challenge(&unknown, &code, now)
            .await
            .expect("use"),
        Write::Conflict,
        "unknown"
    );
}

/// `DEVICE_UNREGISTERED`, `DEVICE_SAME_REGISTRATION`, `TERMINAL_FREE`, `TERMINAL_ONLY_THIS` and
/// the caller's token (`EXISTS`): a registration applies only on the state it was decided on.
pub async fn registration_follows_what_was_read<S: Devices + Directory>(store: &S) {
    let (code, terminal, device) = registered(store).await;
    let first = device.registration.clone().expect("registered");
    let session = store
        .session_for_token(&first.token_hash)
        .await
        .expect("session")
        .expect("the token is current");
    assert_eq!(
        (session.unique_code, &session.terminal_id),
        (code.clone(), &terminal)
    );
    // The same device as new again: it is registered now.
    let again = new_registration(&terminal);
    let as_new = NewRegistration {
        unique_code: &code,
        seen: None,
        kind: RegistrationKind::New,
        registration: &again,
        authority: None,
    };
    assert_eq!(
        store.register(&as_new).await.expect("register"),
        Write::Conflict
    );
    // Again, on the registration read: the new token replaces the old one.
    let as_again = NewRegistration {
        seen: Some(&device),
        kind: RegistrationKind::Again,
        ..as_new.clone()
    };
    assert_eq!(
        store.register(&as_again).await.expect("register"),
        Write::Applied
    );
    assert!(
        store
            .session_for_token(&first.token_hash)
            .await
            .expect("session")
            .is_none(),
        "the replaced token is revoked"
    );
    // Again on the stale read (the first token): refused, nothing changes.
    let third = new_registration(&terminal);
    let stale = NewRegistration {
        registration: &third,
        ..as_again.clone()
    };
    assert_eq!(
        store.register(&stale).await.expect("register"),
        Write::Conflict
    );
    assert!(
        store
            .session_for_token(&third.token_hash)
            .await
            .expect("session")
            .is_none()
    );
    let now = stored_device(store, &code).await;
    assert_eq!(
        now.registration.map(|r| r.token_hash),
        Some(again.token_hash.clone())
    );
    // Another device on the taken terminal: only with the terminal's current token.
    let other = self::code();
    let other_reg = new_registration(&terminal);
    let without = NewRegistration {
        unique_code: &other,
        seen: None,
        kind: RegistrationKind::New,
        registration: &other_reg,
        authority: None,
    };
    assert_eq!(
        store.register(&without).await.expect("register"),
        Write::Conflict
    );
    let revoked = NewRegistration {
        authority: Some(&first.token_hash),
        ..without.clone()
    };
    assert_eq!(
        store.register(&revoked).await.expect("register"),
        Write::Conflict
    );
    let with = NewRegistration {
        authority: Some(&again.token_hash),
        ..without.clone()
    };
    assert_eq!(
        store.register(&with).await.expect("register"),
        Write::Applied
    );
    let (_, held) = store
        .device_and_terminal(&other, &terminal)
        .await
        .expect("device_and_terminal");
    assert_eq!(held, 2, "the terminal counts both devices");
}

/// `NEW_ITEM` on a payment slot: the first payment or kept refusal stays, and a payment of the
/// same slot with another id is not that payment.
pub async fn payment_slot_keeps_its_first_answer<S: Devices + Payments>(
    store: &S,
    kept: &StoredResponse,
) {
    let (code, terminal, device) = registered(store).await;
    let merchant = merchant();
    let key = IdempotencyKey::try_from(fresh("k-").as_str()).expect("key");
    let slot = PaymentSlot::of(&merchant, &key);
    let mut p = payment_on(&merchant, &code, &terminal, 4500, 120);
    p.payment_id = PaymentId::in_slot(Timestamp::now(), &slot);
    create(store, &p, &device).await;
    let mut twin = p.clone();
    twin.payment_id = PaymentId::in_slot(Timestamp::now().plus_seconds(1), &slot);
    assert_eq!(
        store.put_payment(&twin, "fp-other").await.expect("put"),
        Write::Conflict
    );
    let refused = store
        .record_rejection(&slot, "fp-other", kept, Timestamp::now())
        .await
        .expect("record_rejection");
    assert_eq!(refused, Write::Conflict);
    assert_eq!(
        store.slot(&slot).await.expect("slot"),
        Some(SlotRecord::Payment {
            payment: Box::new(p.clone()),
            fingerprint: "fp-create".into()
        })
    );
    assert!(
        store
            .payment(&twin.payment_id)
            .await
            .expect("payment")
            .is_none()
    );
    // A kept refusal, first in its slot, stays too.
    let other = PaymentSlot::of(
        &merchant,
        &IdempotencyKey::try_from(fresh("k-").as_str()).expect("key"),
    );
    let first = store
        .record_rejection(&other, "fp-r", kept, Timestamp::now())
        .await
        .expect("record_rejection");
    assert_eq!(first, Write::Applied);
    let mut late = payment_on(&merchant, &code, &terminal, 4500, 120);
    late.payment_id = PaymentId::in_slot(Timestamp::now(), &other);
    assert_eq!(
        store.put_payment(&late, "fp-r").await.expect("put"),
        Write::Conflict
    );
    assert_eq!(
        store.slot(&other).await.expect("slot"),
        Some(SlotRecord::Rejected {
            fingerprint: "fp-r".into(),
            response: kept.clone()
        })
    );
    assert!(
        store
            .payment(&late.payment_id)
            .await
            .expect("payment")
            .is_none()
    );
}

/// `LOCK_FREE`, `LOCK_LAPSED`, `LOCK_HELD_BY` and `SLOT_WITHOUT_PAYMENT`: one pending payment per
/// device; a lapsed lock is taken over; a lock goes back only while its payment is not stored.
pub async fn device_lock_is_taken_once<S: Devices + Payments>(store: &S) {
    let (code, terminal, device) = registered(store).await;
    let merchant = merchant();
    let first = payment_on(&merchant, &code, &terminal, 100, 120);
    let second = payment_on(&merchant, &code, &terminal, 200, 120);
    assert_eq!(
        store.lock_device(&first, &device).await.expect("lock"),
        Write::Applied
    );
    assert_eq!(
        store.lock_device(&second, &device).await.expect("lock"),
        Write::Conflict,
        "two payments locked on one read"
    );
    let locked = stored_device(store, &code).await;
    assert_eq!(
        store.lock_device(&second, &locked).await.expect("lock"),
        Write::Conflict,
        "a live lock is not taken over"
    );
    // Another terminal's payment never locks the device.
    let elsewhere = payment_on(&merchant, &code, &self::terminal(), 300, 120);
    assert_eq!(
        store.lock_device(&elsewhere, &device).await.expect("lock"),
        Write::Conflict
    );
    // The lock of a payment never stored goes back; releasing another's changes nothing.
    store
        .release_lock(&code, &second.payment_id)
        .await
        .expect("release");
    assert_eq!(stored_device(store, &code).await.pending, locked.pending);
    store
        .release_lock(&code, &first.payment_id)
        .await
        .expect("release");
    let free = stored_device(store, &code).await;
    assert_eq!(free.pending, None);
    // A stored payment keeps its lock.
    create(store, &second, &free).await;
    store
        .release_lock(&code, &second.payment_id)
        .await
        .expect("release");
    let held = stored_device(store, &code).await;
    assert_eq!(
        held.pending.as_ref().map(|(id, _)| id),
        Some(&second.payment_id)
    );
    // A lapsed lock is taken over by a new payment.
    let (code, terminal, device) = registered(store).await;
    let lapsed = payment_on(&merchant, &code, &terminal, 100, -10);
    create(store, &lapsed, &device).await;
    let seen = stored_device(store, &code).await;
    let next = payment_on(&merchant, &code, &terminal, 100, 120);
    assert_eq!(
        store.lock_device(&next, &seen).await.expect("lock"),
        Write::Applied
    );
    assert_eq!(
        stored_device(store, &code).await.pending,
        Some((next.payment_id.clone(), next.expires_at))
    );
}

/// `PAYMENT_PENDING_ATTEMPTS` and `COUNTER_UNCHANGED`: a confirmation commits once, and moves
/// the counter, frees the lock and clears the failures with it.
pub async fn confirmation_commits_once<S: Devices + Payments>(store: &S) {
    let (p, d) = pending(store, &merchant(), 700).await;
    assert_eq!(confirm_as_read(store, &p, &d).await, Write::Applied);
    assert_eq!(
        confirm_as_read(store, &p, &d).await,
        Write::Conflict,
        "a copy of the confirmation"
    );
    let now = stored_payment(store, &p.payment_id).await;
    assert_eq!(now.status, PaymentStatus::Confirmed);
    assert_eq!(now.confirmation.as_deref(), Some("fp-confirm"));
    assert!(now.confirmed_at.is_some());
    let device = stored_device(store, &p.unique_code).await;
    assert_eq!(device.last_counter.get(), d.last_counter.get() + 1);
    assert_eq!((device.pending, device.failed_auth), (None, 0));
    // An expired payment is not confirmed.
    let (code, terminal, device) = registered(store).await;
    let lapsed = payment_on(&merchant(), &code, &terminal, 100, -10);
    create(store, &lapsed, &device).await;
    let d = stored_device(store, &code).await;
    assert_eq!(confirm_as_read(store, &lapsed, &d).await, Write::Conflict);
}

/// `PAYMENT_PENDING_ATTEMPTS`, `DEVICE_FAILURES_UNCHANGED(_LOCK_HELD)`: a wrong code counts once
/// per read, and a confirmation read before it is refused.
pub async fn wrong_code_is_counted_once<S: Devices + Payments>(store: &S) {
    let (p, d) = pending(store, &merchant(), 500).await;
    let at = Timestamp::now();
    let wrong = |fails_payment| WrongCode {
        payment: &p,
        device: &d,
        fails_payment,
        lock_until: None,
        at,
    };
    assert_eq!(
        store.record_wrong_code(&wrong(false)).await.expect("wrong"),
        Write::Applied
    );
    assert_eq!(
        store.record_wrong_code(&wrong(false)).await.expect("wrong"),
        Write::Conflict,
        "the same read counted twice"
    );
    assert_eq!(
        confirm_as_read(store, &p, &d).await,
        Write::Conflict,
        "a confirmation read before the wrong code"
    );
    let now = stored_payment(store, &p.payment_id).await;
    let device = stored_device(store, &p.unique_code).await;
    assert_eq!((now.failed_attempts, device.failed_auth), (1, 1));
    // The last tolerated attempt fails the payment and frees the lock.
    let lock_until = Some(at.plus_seconds(60));
    let last = WrongCode {
        payment: &now,
        device: &device,
        fails_payment: true,
        lock_until,
        at,
    };
    assert_eq!(
        store.record_wrong_code(&last).await.expect("wrong"),
        Write::Applied
    );
    let failed = stored_payment(store, &p.payment_id).await;
    let device = stored_device(store, &p.unique_code).await;
    assert_eq!(
        (failed.status, failed.failed_attempts),
        (PaymentStatus::Failed, 2)
    );
    assert_eq!(
        (device.failed_auth, device.pending, device.locked_until),
        (2, None, lock_until)
    );
}

/// `PAYMENT_PENDING_UNEXPIRED`, `PAYMENT_PENDING_LAPSED` and `LOCK_HELD_BY`: a pending payment
/// finishes once, and frees its lock.
pub async fn pending_payment_finishes_once<S: Devices + Payments>(store: &S) {
    let (p, _) = pending(store, &merchant(), 300).await;
    let now = Timestamp::now();
    let finish = |to| store.finish_pending(&p, to, now);
    assert!(matches!(
        finish(PaymentStatus::Confirmed).await,
        Err(DomainError::Internal(_))
    ));
    assert!(matches!(
        finish(PaymentStatus::Settled).await,
        Err(DomainError::Internal(_))
    ));
    assert_eq!(
        finish(PaymentStatus::Expired).await.expect("finish"),
        Write::Conflict,
        "not lapsed yet"
    );
    assert_eq!(
        finish(PaymentStatus::Canceled).await.expect("finish"),
        Write::Applied
    );
    assert_eq!(
        finish(PaymentStatus::Declined).await.expect("finish"),
        Write::Conflict
    );
    assert_eq!(
        stored_payment(store, &p.payment_id).await.status,
        PaymentStatus::Canceled
    );
    assert_eq!(stored_device(store, &p.unique_code).await.pending, None);
    // A lapsed payment is recorded expired (and its lock freed), never canceled.
    let (code, terminal, device) = registered(store).await;
    let lapsed = payment_on(&merchant(), &code, &terminal, 100, -10);
    create(store, &lapsed, &device).await;
    let now = Timestamp::now();
    let write = store
        .finish_pending(&lapsed, PaymentStatus::Canceled, now)
        .await
        .expect("finish");
    assert_eq!(write, Write::Conflict);
    let write = store
        .finish_pending(&lapsed, PaymentStatus::Expired, now)
        .await
        .expect("finish");
    assert_eq!(write, Write::Applied);
    assert_eq!(
        stored_payment(store, &lapsed.payment_id).await.status,
        PaymentStatus::Expired
    );
    assert_eq!(stored_device(store, &code).await.pending, None);
}

/// `DEVICE_DEREGISTER_*`, `PAYMENT_PENDING_HELD` and `NEW_ITEM`: deregistration frees the code,
/// revokes its token, cancels its pending payment, and keeps `abandoned` in the slot of a lock
/// whose payment was never stored, so that a late put of it fails.
pub async fn deregistration_frees_the_code<S: Devices + Payments + Directory>(
    store: &S,
    abandoned: &StoredResponse,
) {
    let (p, d) = pending(store, &merchant(), 900).await;
    let token = d.registration.clone().expect("registered").token_hash;
    let write = store
        .deregister(&d, Timestamp::now(), abandoned)
        .await
        .expect("deregister");
    assert_eq!(write, Write::Applied);
    assert_eq!(
        store
            .deregister(&d, Timestamp::now(), abandoned)
            .await
            .expect("deregister"),
        Write::Conflict,
        "deregistered already"
    );
    assert_eq!(
        stored_payment(store, &p.payment_id).await.status,
        PaymentStatus::Canceled
    );
    let device = stored_device(store, &p.unique_code).await;
    assert_eq!((device.registration, device.pending), (None, None));
    assert!(
        store
            .session_for_token(&token)
            .await
            .expect("session")
            .is_none()
    );
    let (_, held) = store
        .device_and_terminal(&p.unique_code, &p.terminal_id)
        .await
        .expect("device_and_terminal");
    assert_eq!(held, 0);
    // A lock without its payment: the slot keeps `abandoned`, for any request.
    let (code, terminal, device) = registered(store).await;
    let orphan = payment_on(&merchant(), &code, &terminal, 100, 120);
    assert_eq!(
        store.lock_device(&orphan, &device).await.expect("lock"),
        Write::Applied
    );
    let locked = stored_device(store, &code).await;
    // A read that no longer matches the lock is refused.
    assert_eq!(
        store
            .deregister(&device, Timestamp::now(), abandoned)
            .await
            .expect("deregister"),
        Write::Conflict
    );
    let write = store
        .deregister(&locked, Timestamp::now(), abandoned)
        .await
        .expect("deregister");
    assert_eq!(write, Write::Applied);
    assert_eq!(
        store.slot(&orphan.payment_id.slot()).await.expect("slot"),
        Some(SlotRecord::Rejected {
            fingerprint: ANY_REQUEST.into(),
            response: abandoned.clone()
        })
    );
    assert_eq!(
        store.put_payment(&orphan, "fp").await.expect("put"),
        Write::Conflict
    );
}

/// `PAYMENT_SETTLEABLE`: a group settles each confirmed payment once, a repeated message once,
/// and answers the others from what is stored; the balance gains exactly what settled.
pub async fn settlement_settles_once<S: Devices + Payments + Ledger>(store: &S) {
    let merchant = merchant();
    let a = confirmed(store, &merchant, 1000).await;
    let b = confirmed(store, &merchant, 250).await;
    let (waiting, _) = pending(store, &merchant, 40).await;
    let at = Timestamp::now();
    let msg = |p: &Payment| SettlementMessage::for_payment(p, at);
    let mut resent = msg(&a);
    resent.sent_at_ms += 1;
    let group = [msg(&a), msg(&waiting), resent.clone(), msg(&b)];
    let outcomes = store.settle_group(&group, at).await.expect("settle_group");
    assert_eq!(
        outcomes,
        vec![
            Ok(Settlement::Settled),
            Ok(Settlement::NotConfirmed(PaymentStatus::Pending)),
            Ok(Settlement::AlreadySettled),
            Ok(Settlement::Settled),
        ]
    );
    assert_eq!(krw_balance(store, &merchant).await, (1250, 2, 0, 1250));
    let settled = stored_payment(store, &a.payment_id).await;
    assert_eq!(settled.status, PaymentStatus::Settled);
    assert!(settled.settled_at.is_some());
    // Delivered again: nothing more.
    let again = store
        .settle_group(&[msg(&a), msg(&b)], at)
        .await
        .expect("settle_group");
    assert_eq!(
        again,
        vec![
            Ok(Settlement::AlreadySettled),
            Ok(Settlement::AlreadySettled)
        ]
    );
    assert_eq!(krw_balance(store, &merchant).await, (1250, 2, 0, 1250));
    // A message that does not describe its payment, and one of no payment.
    let mut forged = msg(&b);
    forged.amount = Amount::try_from(1).expect("amount");
    let mut unknown = msg(&b);
    unknown.payment_id = PaymentId::generate(at);
    let odd = store
        .settle_group(&[forged, unknown], at)
        .await
        .expect("settle_group");
    assert!(
        matches!(odd[0], Err(DomainError::InvalidRequest(_))),
        "{odd:?}"
    );
    assert_eq!(odd[1], Err(DomainError::NotFound));
    // One group is one merchant and currency; and at most a transaction's worth.
    let other = confirmed(store, &self::merchant(), 10).await;
    let mixed = store.settle_group(&[msg(&a), msg(&other)], at).await;
    assert!(matches!(mixed, Err(DomainError::Internal(_))), "{mixed:?}");
    let many = vec![msg(&a); twochan_domain::ports::MAX_SETTLEMENT_GROUP + 1];
    assert!(store.settle_group(&many, at).await.is_err());
    assert_eq!(store.settle_group(&[], at).await.expect("empty"), vec![]);
    assert_eq!(krw_balance(store, &merchant).await, (1250, 2, 0, 1250));
}

/// `PAYMENT_REFUNDABLE` and `NEW_ITEM` on refund slots: refunds of a settled payment never sum
/// above it, a refund slot keeps its first answer, and the balance follows.
pub async fn refunds_stay_within_the_payment<S: Devices + Payments + Ledger + Refunds>(
    store: &S,
    kept: &StoredResponse,
) {
    let merchant = merchant();
    let p = settled(store, &merchant, 1000).await;
    let refund = |amount: u64, key: &str| {
        let slot = PaymentSlot::of_refund(&merchant, &IdempotencyKey::try_from(key).expect("key"));
        Refund {
            refund_id: RefundId::in_slot(Timestamp::now(), &slot),
            payment_id: p.payment_id.clone(),
            merchant_id: merchant.clone(),
            amount: Amount::try_from(amount).expect("amount"),
            currency: krw(),
            reason: None,
            created_at: Timestamp::now().truncated_to_second(),
        }
    };
    let make = |r: &Refund, read: &Payment| {
        let (r, read) = (r.clone(), read.clone());
        async move {
            store
                .refund(&NewRefund {
                    refund: &r,
                    payment: &read,
                    fingerprint: "fp-refund",
                })
                .await
                .expect("refund")
        }
    };
    let (k1, k2, k3) = (fresh("rk-"), fresh("rk-"), fresh("rk-"));
    let first = refund(600, &k1);
    assert_eq!(make(&first, &p).await, Write::Applied);
    assert_eq!(
        make(&refund(600, &k1), &p).await,
        Write::Conflict,
        "its slot is taken"
    );
    assert_eq!(
        make(&refund(600, &k2), &p).await,
        Write::Conflict,
        "no room left"
    );
    assert_eq!(
        make(&refund(1001, &k2), &p).await,
        Write::Conflict,
        "never fits"
    );
    let second = refund(400, &k2);
    assert_eq!(
        make(&second, &p).await,
        Write::Applied,
        "decided on a stale read, still fits"
    );
    assert_eq!(
        make(&refund(1, &k3), &p).await,
        Write::Conflict,
        "fully refunded"
    );
    let now = stored_payment(store, &p.payment_id).await;
    assert_eq!(now.refunded_amount, 1000);
    let listed = store.refunds_of(&p.payment_id).await.expect("refunds_of");
    // In the order they committed, also when both have one millisecond in their ids.
    assert_eq!(listed, vec![first.clone(), second.clone()]);
    assert_eq!(krw_balance(store, &merchant).await, (1000, 1, 1000, 0));
    assert_eq!(
        store
            .refund_slot(&first.refund_id.slot())
            .await
            .expect("refund_slot"),
        Some(RefundSlotRecord::Refund {
            refund: Box::new(first.clone()),
            fingerprint: "fp-refund".into()
        })
    );
    let taken = store
        .record_refund_rejection(&first.refund_id.slot(), "fp-r", kept, Timestamp::now())
        .await
        .expect("record");
    assert_eq!(taken, Write::Conflict);
    let slot = PaymentSlot::of_refund(
        &merchant,
        &IdempotencyKey::try_from(k3.as_str()).expect("key"),
    );
    let write = store
        .record_refund_rejection(&slot, "fp-r", kept, Timestamp::now())
        .await
        .expect("record");
    assert_eq!(write, Write::Applied);
    assert_eq!(
        store.refund_slot(&slot).await.expect("refund_slot"),
        Some(RefundSlotRecord::Rejected {
            fingerprint: "fp-r".into(),
            response: kept.clone()
        })
    );
    // A payment that is not settled is not refunded.
    let c = confirmed(store, &merchant, 500).await;
    let not_settled = Refund {
        payment_id: c.payment_id.clone(),
        ..refund(100, &fresh("rk-"))
    };
    assert_eq!(make(&not_settled, &c).await, Write::Conflict);
    assert!(
        store
            .refunds_of(&c.payment_id)
            .await
            .expect("refunds_of")
            .is_empty()
    );
}

/// The terminal's pending payments: those its devices' locks hold, oldest first.
pub async fn pending_for_terminal_lists_the_locks<S: Devices + Payments>(store: &S) {
    let (code, terminal, device) = registered(store).await;
    let token = device.registration.clone().expect("registered").token_hash;
    let second = self::code();
    let reg = new_registration(&terminal);
    let write = store
        .register(&NewRegistration {
            unique_code: &second,
            seen: None,
            kind: RegistrationKind::New,
            registration: &reg,
            authority: Some(&token),
        })
        .await
        .expect("register");
    assert_eq!(write, Write::Applied);
    let merchant = merchant();
    let older = payment_on(&merchant, &code, &terminal, 100, 120);
    create(store, &older, &device).await;
    let mut newer = payment_on(&merchant, &second, &terminal, 200, 120);
    // A later id, whatever the clock did between the two.
    newer.payment_id = PaymentId::generate(Timestamp::from_millis(
        older.payment_id.requested_at().millis() + 1,
    ));
    create(store, &newer, &stored_device(store, &second).await).await;
    let listed = store
        .pending_for_terminal(&terminal)
        .await
        .expect("pending_for_terminal");
    let ids: Vec<&PaymentId> = listed.iter().map(|p| &p.payment_id).collect();
    assert_eq!(ids, vec![&older.payment_id, &newer.payment_id]);
    let write = store
        .finish_pending(&older, PaymentStatus::Canceled, Timestamp::now())
        .await
        .expect("finish");
    assert_eq!(write, Write::Applied);
    let listed = store
        .pending_for_terminal(&terminal)
        .await
        .expect("pending_for_terminal");
    assert_eq!(listed, vec![newer]);
    assert!(
        store
            .pending_for_terminal(&self::terminal())
            .await
            .expect("pending_for_terminal")
            .is_empty()
    );
}

/// A merchant's new key replaces the old one.
pub async fn merchant_key_is_replaced<S: Directory>(store: &S) {
    let merchant = merchant();
    let (k1, k2) = (SecretHash::of(&fresh("mk_")), SecretHash::of(&fresh("mk_")));
    store
        .put_merchant(&merchant, &k1, Timestamp::now())
        .await
        .expect("put_merchant");
    assert_eq!(
        store.merchant_for_key(&k1).await.expect("read"),
        Some(merchant.clone())
    );
    store
        .put_merchant(&merchant, &k2, Timestamp::now())
        .await
        .expect("put_merchant");
    assert_eq!(store.merchant_for_key(&k1).await.expect("read"), None);
    assert_eq!(
        store.merchant_for_key(&k2).await.expect("read"),
        Some(merchant)
    );
}

/// A payment confirmed before the cutoff and still confirmed is found by the scan; one that
/// settled is not.
pub async fn stuck_payments_are_found<S: Devices + Payments + Ledger + StuckPayments>(store: &S) {
    let merchant = merchant();
    let stuck = confirmed(store, &merchant, 120).await;
    let done = settled(store, &merchant, 130).await;
    let cutoff = Timestamp::now().plus_seconds(5);
    let (mut found_stuck, mut found_done) = (false, false);
    let mut after = None;
    // Bounded: a shared table may be large, and the scan must end.
    for _ in 0..10_000 {
        let page = store
            .confirmed_before(cutoff, after.as_ref())
            .await
            .expect("confirmed_before");
        found_stuck |= page
            .payments
            .iter()
            .any(|s| s.payment_id == stuck.payment_id);
        found_done |= page
            .payments
            .iter()
            .any(|s| s.payment_id == done.payment_id);
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    assert!(found_stuck, "the stuck payment was not found");
    assert!(!found_done, "a settled payment is not stuck");
}

/// Every check above, one after the other.
pub async fn all<S>(store: &S, kept: &StoredResponse)
where
    S: Directory + Devices + Payments + Ledger + Refunds + StuckPayments,
{
    challenge_is_used_once(store).await;
    registration_follows_what_was_read(store).await;
    payment_slot_keeps_its_first_answer(store, kept).await;
    device_lock_is_taken_once(store).await;
    confirmation_commits_once(store).await;
    wrong_code_is_counted_once(store).await;
    pending_payment_finishes_once(store).await;
    deregistration_frees_the_code(store, kept).await;
    settlement_settles_once(store).await;
    refunds_stay_within_the_payment(store, kept).await;
    pending_for_terminal_lists_the_locks(store).await;
    merchant_key_is_replaced(store).await;
    stuck_payments_are_found(store).await;
}

//! The confirmation function (the phone's side): the terminal's pending payments, declining
//! one, and confirming one with the device's auth code. Canceling by the merchant shares
//! [`finish_by_caller`] with declining.

use lambda_http::{Body, Request, Response, http::StatusCode};
use twochan_domain::{
    AuthCode, Counter, DomainError, Payment, PaymentId, PaymentStatus, Result, Timestamp,
    crypto::{IssuerKeys, PaymentBinding},
    payment::{ConfirmGate, MAX_AUTH_ATTEMPTS},
    ports::{
        Confirmation, Device, Devices, Directory, EventMessage, EventQueue, Payments,
        SettlementMessage, SettlementQueue, TerminalSession, Write, WrongCode,
    },
    webhook::EventType,
};

use super::{App, MAX_RACE_RETRIES, payment_response, record_payment_log_ids};
use crate::extract::{Owner, json_body, path_payment_id, terminal};
use crate::http::json_response;
use crate::view::{PaymentView, PendingPaymentsView};

pub(crate) async fn pending_payments<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
) -> Result<Response<Body>>
where
    S: Directory + Payments,
{
    let session = terminal(&app.store, req).await?;
    let now = Timestamp::now();
    let payments = app.store.pending_for_terminal(&session.terminal_id).await?;
    let views = payments
        .iter()
        .filter(|p| p.effective_status(now) == PaymentStatus::Pending)
        .map(|p| PaymentView::new(p, now))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &PendingPaymentsView { payments: views },
    ))
}

pub(crate) async fn decline_payment<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_id: &str,
) -> Result<Response<Body>>
where
    S: Directory + Payments,
    E: EventQueue,
{
    let session = terminal(&app.store, req).await?;
    let id = path_payment_id(raw_id)?;
    let owner = Owner::Terminal(session.terminal_id);
    finish_by_caller(app, &id, PaymentStatus::Declined, &owner).await
}

/// Cancel (merchant) or decline (phone): pending and unexpired only, else 409.
pub(super) async fn finish_by_caller<S, Q, E>(
    app: &App<S, Q, E>,
    id: &PaymentId,
    to: PaymentStatus,
    owner: &Owner,
) -> Result<Response<Body>>
where
    S: Payments,
    E: EventQueue,
{
    for _ in 0..MAX_RACE_RETRIES {
        let mut payment = app
            .store
            .payment(id)
            .await?
            .filter(|p| owner.owns(p))
            .ok_or(DomainError::NotFound)?;
        record_payment_log_ids(&payment);
        let now = Timestamp::now();
        if payment.status != PaymentStatus::Pending {
            return Err(DomainError::PaymentNotPending);
        }
        if payment.is_past_expiry(now) {
            record_expiry(app, &payment, now).await;
            return Err(DomainError::PaymentNotPending);
        }
        let kind = match to {
            PaymentStatus::Canceled => EventType::PaymentCanceled,
            _ => EventType::PaymentDeclined,
        };
        app.events
            .enqueue_event(&EventMessage::payment(kind, &payment, now))
            .await?;
        if app.store.finish_pending(&payment, to, now).await? == Write::Applied {
            tracing::info!(outcome = to.as_str());
            crate::telemetry::count(match to {
                PaymentStatus::Canceled => "PaymentsCanceled",
                _ => "PaymentsDeclined",
            });
            payment.status = to;
            return Ok(payment_response(StatusCode::OK, &payment));
        }
    }
    Err(DomainError::Unavailable("payment kept changing".into()))
}

/// Writes down that a pending payment lapsed and frees its code. Best effort: readers already see
/// it as expired, and the next payment on the code takes the lapsed lock over anyway.
async fn record_expiry<S: Payments, Q, E>(app: &App<S, Q, E>, payment: &Payment, now: Timestamp) {
    match app
        .store
        .finish_pending(payment, PaymentStatus::Expired, now)
        .await
    {
        Ok(Write::Applied) => tracing::info!(outcome = "expired"),
        // Recorded already, or the payment moved on meanwhile.
        Ok(Write::Conflict) => {}
        Err(e) => tracing::warn!(error = ?e, "could not record expiry"),
    }
}

/// A confirmation request after its caller, body and path were read.
struct ConfirmCall<'a> {
    id: PaymentId,
    session: TerminalSession,
    owner: Owner,
    auth_code: AuthCode,
    counter: Counter,
    /// What the payment keeps of an accepted confirmation, to know the same one again.
    fingerprint: String,
    issuer_keys: &'a IssuerKeys,
}

/// One round's answer; `None`: it lost a race on a conditional write, so read again.
type Round = Result<Option<Response<Body>>>;

pub(crate) async fn confirm_payment<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_id: &str,
) -> Result<Response<Body>>
where
    S: Directory + Devices + Payments,
    Q: SettlementQueue,
    E: EventQueue,
{
    let session = terminal(&app.store, req).await?;
    let owner = Owner::Terminal(session.terminal_id.clone());
    let body = json_body(req, &["auth_code", "counter"])?;
    let auth_code: AuthCode = body.field("auth_code")?;
    let counter: Counter = body.field("counter")?;
    let id = path_payment_id(raw_id)?;
    let issuer_keys = &app.issuer_keys;
    let call = ConfirmCall {
        fingerprint: Payment::confirmation_fingerprint(&auth_code, counter),
        id,
        session,
        owner,
        auth_code,
        counter,
        issuer_keys,
    };
    for _ in 0..MAX_RACE_RETRIES {
        if let Some(resp) = confirm_round(app, &call).await? {
            return Ok(resp);
        }
    }
    after_lost_races(app, &call).await
}

/// One read of the payment and its device, and what it decides. The checks come in this order:
/// the payment's state, the device's lock, the counter, the code.
async fn confirm_round<S, Q, E>(app: &App<S, Q, E>, call: &ConfirmCall<'_>) -> Round
where
    S: Directory + Devices + Payments,
    Q: SettlementQueue,
    E: EventQueue,
{
    let now = Timestamp::now();
    let (payment, device) = match open_gate(app, call, now).await? {
        Gate::Open(payment, device) => (payment, device),
        Gate::Repeat(payment) => return Ok(Some(payment_response(StatusCode::OK, &payment))),
    };
    let device = device_of(app, &payment, device).await?;
    if let Some(until) = device.locked_at(now) {
        // Refused before the code is even looked at, so a locked device teaches nothing.
        tracing::warn!(
            security_event = "locked_device_refused",
            "confirmation refused: device locked after repeated wrong codes"
        );
        return Err(DomainError::DeviceLocked { until });
    }
    if !call.counter.is_acceptable_after(device.last_counter) {
        return refuse_counter(app, call, &device).await;
    }
    let binding = PaymentBinding {
        payment_id: &payment.payment_id,
        merchant_id: &payment.merchant_id,
        amount: payment.amount,
        currency: payment.currency,
        challenge: &payment.challenge,
        counter: call.counter,
    };
    if !call
        .issuer_keys
        .verify_auth_code(&payment.unique_code, &binding, &call.auth_code)
    {
        return refuse_wrong_code(app, &payment, &device, now).await;
    }
    commit(app, call, &payment, &device, now).await
}

/// What the payment's state says before any device or code is looked at.
enum Gate {
    /// Pending and unexpired: on to the checks, with the device if it came with the payment.
    Open(Payment, Option<Device>),
    /// The accepted confirmation again, to be answered as the first time.
    Repeat(Payment),
}

async fn open_gate<S, Q, E>(
    app: &App<S, Q, E>,
    call: &ConfirmCall<'_>,
    now: Timestamp,
) -> Result<Gate>
where
    S: Payments,
    Q: SettlementQueue,
    E: EventQueue,
{
    // The payment and, in one round trip, the device of the caller's token: the payment's own
    // device unless the terminal has several devices (then it is read on its own, `device_of`).
    let (payment, device) = app
        .store
        .payment_and_device(&call.id, &call.session.unique_code)
        .await?;
    let payment = payment
        .filter(|p| call.owner.owns(p))
        .ok_or(DomainError::NotFound)?;
    record_payment_log_ids(&payment);
    match payment.gate_confirm(now, &call.fingerprint) {
        Ok(ConfirmGate::Proceed) => Ok(Gate::Open(payment, device)),
        Ok(ConfirmGate::Repeat) => {
            // If it is still `confirmed`, the first attempt may have failed to enqueue: enqueue
            // again (settlement is idempotent).
            if payment.status == PaymentStatus::Confirmed {
                app.queue
                    .enqueue(&SettlementMessage::for_payment(&payment, now))
                    .await?;
            }
            Ok(Gate::Repeat(payment))
        }
        Err(DomainError::PaymentExpired) if payment.status == PaymentStatus::Pending => {
            record_expiry(app, &payment, now).await;
            Err(DomainError::PaymentExpired)
        }
        Err(e) => Err(e),
    }
}

/// The payment's device: the one read with the payment if it is that, else read now.
async fn device_of<S, Q, E>(
    app: &App<S, Q, E>,
    payment: &Payment,
    read: Option<Device>,
) -> Result<Device>
where
    S: Devices,
{
    match read.filter(|d| d.unique_code == payment.unique_code) {
        Some(device) => Ok(device),
        None => app
            .store
            .device(&payment.unique_code)
            .await?
            .ok_or_else(|| DomainError::Internal("pending payment without its device".into())),
    }
}

/// A counter outside the window: 422, unless the payment has moved on meanwhile.
async fn refuse_counter<S, Q, E>(
    app: &App<S, Q, E>,
    call: &ConfirmCall<'_>,
    device: &Device,
) -> Round
where
    S: Payments,
{
    let counter = call.counter;
    // The counter may have moved because this very payment was confirmed since it was read (a
    // concurrent copy of this request): decide again on the fresh payment.
    let moved_on = app
        .store
        .payment(&call.id)
        .await?
        .is_some_and(|p| p.status != PaymentStatus::Pending);
    if moved_on {
        return Ok(None);
    }
    // A rewind is what a cloned device replaying old codes looks like; a jump, a device whose
    // counter ran far ahead. Either is for the clone detector to alert on.
    tracing::warn!(
        security_event = "counter_anomaly",
        anomaly = if counter <= device.last_counter {
            "rewind"
        } else {
            "jump"
        },
        last_counter = device.last_counter.get(),
        counter = counter.get(),
        "confirmation with a counter outside the window"
    );
    Err(DomainError::StaleCounter)
}

/// A wrong code counts on the payment (failing it at the limit) and on the device (locking it).
async fn refuse_wrong_code<S, Q, E>(
    app: &App<S, Q, E>,
    payment: &Payment,
    device: &Device,
    now: Timestamp,
) -> Round
where
    S: Payments,
    E: EventQueue,
{
    let wrong = WrongCode {
        payment,
        device,
        fails_payment: payment.failed_attempts + 1 >= MAX_AUTH_ATTEMPTS,
        lock_until: device.lock_after_wrong_code(now),
        at: now,
    };
    if wrong.fails_payment {
        app.events
            .enqueue_event(&EventMessage::payment(
                EventType::PaymentFailed,
                payment,
                now,
            ))
            .await?;
    }
    if app.store.record_wrong_code(&wrong).await? == Write::Conflict {
        return Ok(None);
    }
    if wrong.fails_payment {
        crate::telemetry::count("PaymentsFailed");
    }
    tracing::warn!(
        security_event = "wrong_auth_code",
        attempts = payment.failed_attempts + 1,
        device_failures = device.failed_auth + 1,
        "wrong auth code"
    );
    if let Some(until) = wrong.lock_until {
        tracing::warn!(
            security_event = "device_locked",
            until = %until.to_rfc3339(),
            "device locked after repeated wrong codes"
        );
    }
    Err(if wrong.fails_payment {
        DomainError::TooManyAttempts
    } else {
        DomainError::InvalidAuthCode
    })
}

/// The right code: settlement and the event go out, then the confirmation is committed.
async fn commit<S, Q, E>(
    app: &App<S, Q, E>,
    call: &ConfirmCall<'_>,
    payment: &Payment,
    device: &Device,
    now: Timestamp,
) -> Round
where
    S: Payments,
    Q: SettlementQueue,
    E: EventQueue,
{
    let confirmation = Confirmation {
        payment,
        device_failures: device.failed_auth,
        previous_counter: device.last_counter,
        counter: call.counter,
        fingerprint: call.fingerprint.clone(),
        at: now,
    };
    // The settlement message goes out *before* the commit, so no crash can leave a confirmed
    // payment without one. If the commit then fails or never happens, settlement finds the
    // payment not confirmed and drops the orphan (see `settlement::settle_batch`); if sending
    // fails, nothing was committed and the caller's retry is safe.
    app.queue
        .enqueue(&SettlementMessage::for_payment(payment, now))
        .await?;
    app.events
        .enqueue_event(&EventMessage::payment(
            EventType::PaymentConfirmed,
            payment,
            now,
        ))
        .await?;
    if app.store.confirm(&confirmation).await? == Write::Conflict {
        return Ok(None);
    }
    let mut confirmed = payment.clone();
    confirmed.status = PaymentStatus::Confirmed;
    confirmed.confirmed_at = Some(now.truncated_to_second());
    confirmed.confirmation = Some(call.fingerprint.clone());
    tracing::info!(outcome = "confirmed");
    crate::telemetry::count("PaymentsConfirmed");
    Ok(Some(payment_response(StatusCode::OK, &confirmed)))
}

/// Lost every race: many concurrent confirmations (wrong codes among them, which count on the
/// payment and the device). Answer from where they left it rather than a 503.
async fn after_lost_races<S, Q, E>(
    app: &App<S, Q, E>,
    call: &ConfirmCall<'_>,
) -> Result<Response<Body>>
where
    S: Payments,
{
    let (payment, device) = app
        .store
        .payment_and_device(&call.id, &call.session.unique_code)
        .await?;
    match (payment.filter(|p| call.owner.owns(p)), device) {
        (Some(p), _) if p.status == PaymentStatus::Failed => Err(DomainError::TooManyAttempts),
        (Some(p), Some(d)) if d.unique_code == p.unique_code => match d.locked_at(Timestamp::now())
        {
            Some(until) => Err(DomainError::DeviceLocked { until }),
            None => Err(DomainError::Unavailable("payment kept changing".into())),
        },
        _ => Err(DomainError::Unavailable("payment kept changing".into())),
    }
}

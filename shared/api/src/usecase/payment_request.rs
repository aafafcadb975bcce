//! The payment-request function (the POS's side): creating a payment on a device's code,
//! exactly once per idempotency key; reading and canceling it; the merchant's balance; and the
//! thin routes of refunds ([`crate::refunds`]) and the webhook endpoint ([`crate::webhooks`]).

use lambda_http::{Body, Request, Response, http::StatusCode};
use serde_json::json;
use twochan_domain::{
    Amount, BeaconProof, Currency, DomainError, IdempotencyKey, MerchantId, Payment, PaymentId,
    PaymentSlot, PaymentStatus, PosId, Reference, Result, TerminalId, Timestamp, UniqueCode,
    crypto::sha256_hex,
    ports::{
        ANY_REQUEST, Device, Devices, Directory, EventQueue, Ledger, Payments, Refunds, SlotRecord,
        StoredResponse, WebhookEndpoints, Write,
    },
    webhook::SecretSeal,
};

use super::confirmation::finish_by_caller;
use super::{App, MAX_RACE_RETRIES, payment_response, record_log_ids, record_payment_log_ids};
use crate::extract::{Owner, caller, idempotency_key, json_body, merchant, path_payment_id};
use crate::http::{BearerKind, JsonBody, bearer, json_response, kept_answer, replayed};
use crate::view::{BalanceView, PaymentView};

/// How long a payment request may hold its device's lock before storing its payment. A retry of
/// the same request that finds the lock younger than this is told the first is still in flight
/// (409 `idempotency_key_in_use`); an older one was left by a request that died, and the retry
/// finishes its work. Above the function timeout (10 s), so a live request is never overtaken.
const IN_FLIGHT_LEASE_MS: i64 = 15_000;

struct CreateRequest {
    unique_code: UniqueCode,
    /// What the POS heard beside the code; a credential of this request, not part of what it
    /// asks for, so not in its fingerprint.
    beacon_proof: BeaconProof,
    amount: Amount,
    currency: Currency,
    pos_id: PosId,
    reference: Option<Reference>,
}

impl CreateRequest {
    /// The body (415, 400) and then the `Idempotency-Key` header (400).
    fn from_request(req: &Request) -> Result<(Self, IdempotencyKey)> {
        let body = json_body(
            req,
            &[
                "unique_code",
                "beacon_proof",
                "amount",
                "currency",
                "pos_id",
                "reference",
            ],
        )?;
        Ok((Self::parse(&body)?, idempotency_key(req)?))
    }

    fn parse(body: &JsonBody) -> Result<Self> {
        Ok(Self {
            unique_code: body.field("unique_code")?,
            beacon_proof: body.field("beacon_proof")?,
            amount: Amount::try_from(body.u64("amount")?)?,
            currency: body.field("currency")?,
            pos_id: body.field("pos_id")?,
            reference: body
                .opt_string("reference")?
                .map(|r| Reference::try_from(r.to_owned()))
                .transpose()?,
        })
    }

    /// What "the same body" means for idempotency: the parsed request, not its bytes, so that
    /// whitespace or key order in a retry does not count as a different request. The beacon
    /// proof is left out: a retry a minute later carries a newer one and is the same request.
    fn fingerprint(&self) -> String {
        let canonical = json!({
            "unique_code": self.unique_code.as_str(),
            "amount": self.amount.minor_units(),
            "currency": self.currency.code(),
            "pos_id": self.pos_id.as_str(),
            "reference": self.reference.as_ref().map(|r| r.as_str()),
        });
        sha256_hex(canonical.to_string().as_bytes())
    }
}

pub(crate) async fn create_payment<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
) -> Result<Response<Body>>
where
    S: Directory + Devices + Payments,
{
    let parsed = CreateRequest::from_request(req);
    // A well-formed request reads the caller's key and the device in one round trip. The
    // answers keep the contract's order all the same: a bad bearer is 401 before a bad body.
    let (merchant_id, device) = match (&parsed, bearer(req.headers())?) {
        (Ok((request, _)), (BearerKind::MerchantKey, hash)) => {
            let (merchant, device) = app
                .store
                .merchant_and_device(&hash, &request.unique_code)
                .await?;
            (merchant.ok_or(DomainError::Unauthorized)?, Some(device))
        }
        _ => (merchant(&app.store, req).await?, None),
    };
    let (request, key) = parsed?;
    let new = NewPayment {
        fingerprint: request.fingerprint(),
        slot: PaymentSlot::of(&merchant_id, &key),
        merchant_id,
        request,
    };
    let r = &new.request;
    if !app
        .issuer_keys
        .verify_beacon_proof(&r.unique_code, &r.beacon_proof, Timestamp::now())
    {
        // A replay is answered without the proof (the first request checked it, and it may
        // have aged since); anything else learns nothing about the code, and the key stays free.
        if let Some(record) = app.store.slot(&new.slot).await? {
            return replay(record, &new.fingerprint);
        }
        record_log_ids(&r.unique_code, None);
        tracing::warn!(
            security_event = "invalid_beacon_proof",
            "payment request without a current beacon proof of the device"
        );
        return Err(DomainError::InvalidBeaconProof);
    }
    match create_pending(app, &new, device).await {
        Ok(Created::New(payment)) => Ok(payment_response(StatusCode::CREATED, &payment)),
        Ok(Created::Stored(record)) => replay(record, &new.fingerprint),
        Err(e) => {
            // Nothing final happened; the retry may find the device locked for this key and
            // finish.
            let Some(refusal) = StoredResponse::of(&e) else {
                return Err(e);
            };
            // A final answer (unknown device, busy): the same key gets the same answer.
            let kept = app
                .store
                .record_rejection(&new.slot, &new.fingerprint, &refusal, Timestamp::now())
                .await?;
            match kept {
                // Kept: this request is refused like any other, by `handle`.
                Write::Applied => Err(e),
                // The key already holds an answer (an earlier request's): that one stands.
                Write::Conflict => match app.store.slot(&new.slot).await? {
                    Some(record) => replay(record, &new.fingerprint),
                    None => Err(DomainError::Unavailable("payment slot changed".into())),
                },
            }
        }
    }
}

/// A parsed payment request and where it is kept.
struct NewPayment {
    merchant_id: MerchantId,
    request: CreateRequest,
    fingerprint: String,
    slot: PaymentSlot,
}

enum Created {
    New(Box<Payment>),
    /// The key's slot already held an answer: an earlier (or concurrent) request's.
    Stored(SlotRecord),
}

/// The answer kept under an idempotency key, again: the same status and body for the same
/// request, `422 idempotency_key_reused` for a different one.
fn replay(record: SlotRecord, fingerprint: &str) -> Result<Response<Body>> {
    let resp = match record {
        SlotRecord::Payment {
            payment,
            fingerprint: kept,
        } if kept == fingerprint => {
            // The creation's own answer: the payment as it was then, whatever it is now.
            let created = payment.as_created();
            json_response(
                StatusCode::CREATED,
                &PaymentView::new(&created, created.created_at),
            )
        }
        SlotRecord::Rejected {
            fingerprint: kept,
            response,
        } if kept == fingerprint || kept == ANY_REQUEST => kept_answer(&response),
        _ => return Err(DomainError::IdempotencyKeyReused),
    };
    Ok(replayed(resp))
}

/// Two writes, no transaction: the device's lock (one pending payment per code), then the
/// payment in the key's slot. A request that dies between them leaves a lock whose payment
/// id is in the key's slot, so the POS's retry finishes the work; the lock alone lapses
/// with the pending lifetime.
async fn create_pending<S, Q, E>(
    app: &App<S, Q, E>,
    new: &NewPayment,
    mut read_with_caller: Option<Option<Device>>,
) -> Result<Created>
where
    S: Devices + Payments,
{
    let r = &new.request;
    record_log_ids(&r.unique_code, None);
    for _ in 0..MAX_RACE_RETRIES {
        let now = Timestamp::now();
        // The first round may use the device read with the caller's key; later rounds re-read.
        let device = match read_with_caller.take() {
            Some(device) => device,
            None => app.store.device(&r.unique_code).await?,
        }
        .ok_or(DomainError::UnknownDevice)?;
        let terminal_id = device
            .registration
            .as_ref()
            .ok_or(DomainError::UnknownDevice)?
            .terminal_id
            .clone();
        let live_lock = device.pending.clone().filter(|(_, lapses)| now <= *lapses);
        let (payment, locked_here) = match live_lock {
            // The lock is this key's: its first request is in flight, or stored its payment.
            Some((held, lapses)) if held.slot() == new.slot => {
                if let Some(record) = app.store.slot(&new.slot).await? {
                    if !record_is(&record, &held) {
                        // A lock left by a replay that died before giving it back.
                        release_lock(app, &r.unique_code, &held).await;
                    }
                    return Ok(Created::Stored(record));
                }
                if now.millis() - held.requested_at().millis() < IN_FLIGHT_LEASE_MS {
                    return Err(DomainError::IdempotencyKeyInUse);
                }
                // Its request died after locking: finish its work, with its id and expiry.
                let mut payment = pending_payment(app, new, held, terminal_id);
                payment.expires_at = lapses;
                (payment, false)
            }
            Some(_) => return Err(DomainError::DeviceBusy),
            None => {
                let payment =
                    pending_payment(app, new, PaymentId::in_slot(now, &new.slot), terminal_id);
                if app.store.lock_device(&payment, &device).await? == Write::Conflict {
                    continue;
                }
                (payment, true)
            }
        };
        record_payment_log_ids(&payment);
        let put = app.store.put_payment(&payment, &new.fingerprint).await;
        if matches!(put, Ok(Write::Applied)) {
            tracing::info!(outcome = "payment_created");
            crate::telemetry::count("PaymentsRequested");
            return Ok(Created::New(Box::new(payment)));
        }
        // The slot holds an answer already (a retry after the first request's lock was gone), or
        // the write failed: it may still have been applied (an SDK retry after a lost answer).
        let record = match app.store.slot(&new.slot).await {
            Ok(record) => record,
            Err(e) => {
                // Nothing is known of the payment: give the lock back unless the payment turns
                // out to be stored (the release checks), so a 503 leaves the code free.
                if locked_here {
                    release_lock(app, &r.unique_code, &payment.payment_id).await;
                }
                return Err(put.err().unwrap_or(e));
            }
        };
        if let Some(record) = &record
            && record_is(record, &payment.payment_id)
        {
            tracing::info!(outcome = "payment_created");
            crate::telemetry::count("PaymentsRequested");
            return Ok(Created::New(Box::new(payment)));
        }
        if locked_here {
            // The lock just taken is for a payment that is not stored: give it back, so that
            // a failure does not keep the code busy for the pending lifetime.
            release_lock(app, &r.unique_code, &payment.payment_id).await;
        }
        return match (put, record) {
            (Err(e), _) => Err(e),
            (_, Some(record)) => Ok(Created::Stored(record)),
            (_, None) => Err(DomainError::Unavailable("payment slot changed".into())),
        };
    }
    // Lost every race: someone else holds the lock by now, or keeps changing the device.
    Err(DomainError::DeviceBusy)
}

/// Whether a slot record is the payment `id`.
fn record_is(record: &SlotRecord, id: &PaymentId) -> bool {
    matches!(record, SlotRecord::Payment { payment, .. } if payment.payment_id == *id)
}

/// Gives a device lock back; best effort, as the lock lapses with the pending lifetime anyway.
async fn release_lock<S: Payments, Q, E>(app: &App<S, Q, E>, code: &UniqueCode, id: &PaymentId) {
    if let Err(e) = app.store.release_lock(code, id).await {
        tracing::warn!(error = ?e, "could not give a device lock back");
    }
}

fn pending_payment<S, Q, E>(
    app: &App<S, Q, E>,
    new: &NewPayment,
    id: PaymentId,
    terminal_id: TerminalId,
) -> Payment {
    let r = &new.request;
    Payment::new(
        id,
        r.unique_code.clone(),
        terminal_id,
        new.merchant_id.clone(),
        r.pos_id.clone(),
        r.amount,
        r.currency,
        r.reference.clone(),
        app.pending_ttl_seconds,
    )
}

pub(crate) async fn create_refund<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_id: &str,
) -> Result<Response<Body>>
where
    S: Directory + Payments + Refunds,
    E: EventQueue,
{
    let merchant = merchant(&app.store, req).await?;
    let body = json_body(req, &["amount", "reason"])?;
    let key = idempotency_key(req)?;
    let payment_id = path_payment_id(raw_id)?;
    crate::refunds::create_refund(
        &app.store,
        &app.events,
        crate::refunds::RefundCall {
            merchant,
            payment_id,
            key,
            body: &body,
        },
    )
    .await
}

pub(crate) async fn list_refunds<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_id: &str,
) -> Result<Response<Body>>
where
    S: Directory + Payments + Refunds,
{
    let owner = caller(&app.store, req).await?;
    let id = path_payment_id(raw_id)?;
    crate::refunds::list_refunds(&app.store, &id, |p| owner.owns(p)).await
}

pub(crate) async fn get_payment<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_id: &str,
) -> Result<Response<Body>>
where
    S: Directory + Payments,
{
    // Either party may read; the bearer's kind says which one is asking.
    let owner = caller(&app.store, req).await?;
    let id = path_payment_id(raw_id)?;
    let payment = app
        .store
        .payment(&id)
        .await?
        .filter(|p| owner.owns(p))
        .ok_or(DomainError::NotFound)?;
    record_payment_log_ids(&payment);
    Ok(payment_response(StatusCode::OK, &payment))
}

pub(crate) async fn cancel_payment<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_id: &str,
) -> Result<Response<Body>>
where
    S: Directory + Payments,
    E: EventQueue,
{
    let merchant_id = merchant(&app.store, req).await?;
    let id = path_payment_id(raw_id)?;
    finish_by_caller(
        app,
        &id,
        PaymentStatus::Canceled,
        &Owner::Merchant(merchant_id),
    )
    .await
}

pub(crate) async fn balance<S, Q, E>(app: &App<S, Q, E>, req: &Request) -> Result<Response<Body>>
where
    S: Directory + Ledger,
{
    let merchant_id = merchant(&app.store, req).await?;
    let mut balances = app.store.balances(&merchant_id).await?;
    balances.sort_by(|a, b| a.currency.code().cmp(b.currency.code()));
    Ok(json_response(
        StatusCode::OK,
        &BalanceView {
            merchant_id: merchant_id.as_str(),
            balances: &balances,
        },
    ))
}

pub(crate) async fn put_webhook_endpoint<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
) -> Result<Response<Body>>
where
    S: Directory + WebhookEndpoints,
{
    let merchant = merchant(&app.store, req).await?;
    let body = json_body(req, &["url"])?;
    let seal = SecretSeal::from_issuer_keys(&app.issuer_keys);
    let loopback = app.allow_loopback_webhooks;
    crate::webhooks::put_endpoint(&app.store, &seal, loopback, &merchant, &body).await
}

pub(crate) async fn get_webhook_endpoint<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
) -> Result<Response<Body>>
where
    S: Directory + WebhookEndpoints,
{
    let merchant = merchant(&app.store, req).await?;
    crate::webhooks::get_endpoint(&app.store, &merchant).await
}

pub(crate) async fn delete_webhook_endpoint<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
) -> Result<Response<Body>>
where
    S: Directory + WebhookEndpoints,
{
    let merchant = merchant(&app.store, req).await?;
    crate::webhooks::delete_endpoint(&app.store, &merchant).await
}

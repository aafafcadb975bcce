//! The use cases behind each endpoint, generic over the ports they need.

use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{HeaderValue, Method, StatusCode},
};
use serde_json::json;
use tracing::Instrument;
use twochan_domain::{
    Amount, AuthCode, BeaconProof, Challenge, Counter, Currency, DomainError, IdempotencyKey,
    MerchantId, Payment, PaymentId, PaymentSlot, PaymentStatus, PosId, Reference, Result,
    TerminalId, Timestamp, UniqueCode,
    crypto::{IssuedSecret, IssuerKeys, PaymentBinding, sha256_hex},
    payment::{ConfirmGate, MAX_AUTH_ATTEMPTS},
    ports::{
        ANY_REQUEST, Confirmation, Device, Devices, Directory, EventMessage, EventQueue, Ledger,
        NewRegistration, Payments, Refunds, Registration, RegistrationChallenge, RegistrationKind,
        SettlementMessage, SettlementQueue, SlotRecord, StoredResponse, TerminalSession,
        WebhookEndpoints, Write, WrongCode,
    },
    webhook::{EventType, SecretSeal},
};

use crate::http::{
    BearerKind, JsonBody, TERMINAL_TOKEN_PREFIX, bearer, body_bytes, empty_response,
    error_response, json_response, raw_json_response, render_error, require_json, route_segments,
};
use crate::view::{BalanceView, ChallengeView, PaymentView, PendingPaymentsView, RegistrationView};

/// How often a use case re-reads and retries after losing a race on a conditional write, before
/// answering 503 (a client retry is then safe).
const MAX_RACE_RETRIES: usize = 4;

/// How long a payment request may hold its device's lock before storing its payment. A retry of
/// the same request that finds the lock younger than this is told the first is still in flight
/// (409 `idempotency_key_in_use`); an older one was left by a request that died, and the retry
/// finishes its work. Above the function timeout (10 s), so a live request is never overtaken.
const IN_FLIGHT_LEASE_MS: i64 = 15_000;

/// Everything a handler may need, built once at init.
pub struct App<S, Q, E> {
    pub store: S,
    pub queue: Q,
    /// Where the events of payment changes go, to be sent to the merchants' webhooks.
    pub events: E,
    /// Whether `http://127.0.0.1:<port>/...` webhook URLs are accepted (the local stack only).
    pub allow_loopback_webhooks: bool,
    /// Every HTTP function verifies device codes (registration and beacon proofs, auth codes).
    pub issuer_keys: Option<IssuerKeys>,
    pub pending_ttl_seconds: i64,
}

impl<S, Q, E> App<S, Q, E> {
    fn issuer_keys(&self) -> Result<&IssuerKeys> {
        self.issuer_keys
            .as_ref()
            .ok_or_else(|| DomainError::Internal("no issuer master key is configured".into()))
    }
}

/// A queue for functions that never enqueue.
pub struct NoQueue;

impl SettlementQueue for NoQueue {
    async fn enqueue(&self, _: &SettlementMessage) -> Result<()> {
        Err(DomainError::Internal(
            "this function has no settlement queue".into(),
        ))
    }
}

/// The route table: which function serves which `(method, path)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateChallenge,
    RegisterDevice,
    DeregisterDevice(String),
    CreatePayment,
    GetPayment(String),
    CancelPayment(String),
    Balance,
    PendingPayments,
    ConfirmPayment(String),
    DeclinePayment(String),
    CreateRefund(String),
    ListRefunds(String),
    PutWebhookEndpoint,
    GetWebhookEndpoint,
    DeleteWebhookEndpoint,
}

impl Route {
    pub fn of(method: &Method, segments: &[String]) -> Option<Route> {
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        Some(match (method.as_str(), segs.as_slice()) {
            ("POST", ["devices", "challenges"]) => Route::CreateChallenge,
            ("POST", ["devices"]) => Route::RegisterDevice,
            ("DELETE", ["devices", code]) => Route::DeregisterDevice((*code).to_owned()),
            ("POST", ["payments"]) => Route::CreatePayment,
            ("GET", ["payments", id]) => Route::GetPayment((*id).to_owned()),
            ("POST", ["payments", id, "cancel"]) => Route::CancelPayment((*id).to_owned()),
            ("GET", ["balance"]) => Route::Balance,
            ("GET", ["pending-payments"]) => Route::PendingPayments,
            ("POST", ["payments", id, "confirm"]) => Route::ConfirmPayment((*id).to_owned()),
            ("POST", ["payments", id, "decline"]) => Route::DeclinePayment((*id).to_owned()),
            ("POST", ["payments", id, "refunds"]) => Route::CreateRefund((*id).to_owned()),
            ("GET", ["payments", id, "refunds"]) => Route::ListRefunds((*id).to_owned()),
            ("PUT", ["webhook-endpoint"]) => Route::PutWebhookEndpoint,
            ("GET", ["webhook-endpoint"]) => Route::GetWebhookEndpoint,
            ("DELETE", ["webhook-endpoint"]) => Route::DeleteWebhookEndpoint,
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Route::CreateChallenge => "create_challenge",
            Route::RegisterDevice => "register_device",
            Route::DeregisterDevice(_) => "deregister_device",
            Route::CreatePayment => "create_payment",
            Route::GetPayment(_) => "get_payment",
            Route::CancelPayment(_) => "cancel_payment",
            Route::Balance => "balance",
            Route::PendingPayments => "pending_payments",
            Route::ConfirmPayment(_) => "confirm_payment",
            Route::DeclinePayment(_) => "decline_payment",
            Route::CreateRefund(_) => "create_refund",
            Route::ListRefunds(_) => "list_refunds",
            Route::PutWebhookEndpoint => "put_webhook_endpoint",
            Route::GetWebhookEndpoint => "get_webhook_endpoint",
            Route::DeleteWebhookEndpoint => "delete_webhook_endpoint",
        }
    }
}

/// Which group of routes a function serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Registration,
    PaymentRequest,
    Confirmation,
}

impl Function {
    pub fn serves(self, route: &Route) -> bool {
        use Route::*;
        match self {
            Function::Registration => {
                matches!(
                    route,
                    CreateChallenge | RegisterDevice | DeregisterDevice(_)
                )
            }
            Function::PaymentRequest => {
                matches!(
                    route,
                    CreatePayment
                        | GetPayment(_)
                        | CancelPayment(_)
                        | Balance
                        | CreateRefund(_)
                        | ListRefunds(_)
                        | PutWebhookEndpoint
                        | GetWebhookEndpoint
                        | DeleteWebhookEndpoint
                )
            }
            Function::Confirmation => {
                matches!(
                    route,
                    PendingPayments | ConfirmPayment(_) | DeclinePayment(_)
                )
            }
        }
    }
}

/// Every port an HTTP function's store provides (the DynamoDB adapter; the tests' in-memory world).
pub trait Store: Directory + Devices + Payments + Ledger + Refunds + WebhookEndpoints {}
impl<T: Directory + Devices + Payments + Ledger + Refunds + WebhookEndpoints> Store for T {}

/// The entry point of every HTTP function: never fails, every error becomes a contract response.
pub async fn handle<S, Q, E>(app: &App<S, Q, E>, function: Function, req: Request) -> Response<Body>
where
    S: Store,
    Q: SettlementQueue,
    E: EventQueue,
{
    let route = route_segments(&req).and_then(|segs| Route::of(req.method(), &segs));
    let Some(route) = route.filter(|r| function.serves(r)) else {
        return error_response(&DomainError::NotFound);
    };
    // The size limit comes before anything else, on every route, bodiless ones included.
    if let Err(e) = body_bytes(&req) {
        return error_response(&e);
    }
    // Every line of the request carries these; the handlers fill in the payment and device.
    let request_id = req
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        route = route.name(),
        request_id = %request_id,
        payment_id = tracing::field::Empty,
        unique_code_hash = tracing::field::Empty,
    );
    // `instrument`, not `enter`: the span must follow the future across its awaits.
    let result = async {
        match &route {
            Route::CreateChallenge => create_challenge(app, &req).await,
            Route::RegisterDevice => register_device(app, &req).await,
            Route::DeregisterDevice(code) => deregister_device(app, &req, code).await,
            Route::CreatePayment => create_payment(app, &req).await,
            Route::GetPayment(id) => get_payment(app, &req, id).await,
            Route::CancelPayment(id) => cancel_payment(app, &req, id).await,
            Route::Balance => balance(app, &req).await,
            Route::PendingPayments => pending_payments(app, &req).await,
            Route::ConfirmPayment(id) => confirm_payment(app, &req, id).await,
            Route::DeclinePayment(id) => decline_payment(app, &req, id).await,
            Route::CreateRefund(id) => create_refund(app, &req, id).await,
            Route::ListRefunds(id) => list_refunds(app, &req, id).await,
            Route::PutWebhookEndpoint => {
                let merchant = merchant(&app.store, &req).await?;
                let body = json_body(&req, &["url"])?;
                let seal = SecretSeal::from_issuer_keys(app.issuer_keys()?);
                let loopback = app.allow_loopback_webhooks;
                crate::webhooks::put_endpoint(&app.store, &seal, loopback, &merchant, &body).await
            }
            Route::GetWebhookEndpoint => {
                let merchant = merchant(&app.store, &req).await?;
                crate::webhooks::get_endpoint(&app.store, &merchant).await
            }
            Route::DeleteWebhookEndpoint => {
                let merchant = merchant(&app.store, &req).await?;
                crate::webhooks::delete_endpoint(&app.store, &merchant).await
            }
        }
    }
    .instrument(span.clone())
    .await;
    let _in_span = span.enter();
    match result {
        Ok(resp) => {
            tracing::info!(
                status = resp.status().as_u16(),
                outcome = "ok",
                "request done"
            );
            resp
        }
        // `error_response` logs the refusal or failure, with its code as the outcome.
        Err(e) => error_response(&e),
    }
}

/// Names the device (by its hash) and the payment on every further log line of the request.
fn tag(code: &UniqueCode, payment: Option<&PaymentId>) {
    let span = tracing::Span::current();
    span.record("unique_code_hash", code.log_hash());
    if let Some(id) = payment {
        span.record("payment_id", tracing::field::display(id));
    }
}

fn tag_payment(p: &Payment) {
    tag(&p.unique_code, Some(&p.payment_id));
}

async fn merchant<S: Directory>(store: &S, req: &Request) -> Result<MerchantId> {
    match bearer(req.headers())? {
        (BearerKind::MerchantKey, hash) => store
            .merchant_for_key(&hash)
            .await?
            .ok_or(DomainError::Unauthorized),
        _ => Err(DomainError::Unauthorized),
    }
}

async fn terminal<S: Directory>(store: &S, req: &Request) -> Result<TerminalSession> {
    match bearer(req.headers())? {
        (BearerKind::TerminalToken, hash) => store
            .session_for_token(&hash)
            .await?
            .ok_or(DomainError::Unauthorized),
        _ => Err(DomainError::Unauthorized),
    }
}

/// Who may see and act on a payment: its merchant, or the terminal its device was registered to.
enum Owner {
    Merchant(MerchantId),
    Terminal(TerminalId),
}

impl Owner {
    fn owns(&self, p: &Payment) -> bool {
        match self {
            Owner::Merchant(m) => p.merchant_id == *m,
            Owner::Terminal(t) => p.terminal_id == *t,
        }
    }
}

/// A JSON body: size, then media type, then shape.
fn json_body(req: &Request, fields: &[&str]) -> Result<JsonBody> {
    let bytes = body_bytes(req)?;
    require_json(req.headers())?;
    JsonBody::from_bytes(bytes, fields)
}

/// A payment id from the path; one that cannot exist is simply not found.
fn path_payment_id(raw: &str) -> Result<PaymentId> {
    PaymentId::try_from(raw).map_err(|_| DomainError::NotFound)
}

fn payment_response(status: StatusCode, p: &Payment) -> Response<Body> {
    json_response(status, &PaymentView::new(p, Timestamp::now()))
}

// ---------------------------------------------------------------- registration

async fn create_challenge<S, Q, E>(app: &App<S, Q, E>, req: &Request) -> Result<Response<Body>>
where
    S: Devices,
{
    let body = json_body(req, &["unique_code"])?;
    let code: UniqueCode = body.field("unique_code")?;
    tag(&code, None);
    let challenge = RegistrationChallenge::issue(code, Timestamp::now());
    app.store.put_challenge(&challenge).await?;
    tracing::info!(outcome = "challenge_issued");
    Ok(json_response(
        StatusCode::CREATED,
        &ChallengeView {
            unique_code: challenge.unique_code.as_str(),
            challenge: challenge.challenge.as_str(),
            expires_at: challenge.expires_at.to_rfc3339(),
        },
    ))
}

/// The terminal a registration's optional bearer acts for: none without one, 401 for an
/// unknown or malformed one (a merchant key included).
async fn optional_terminal<S: Directory>(
    store: &S,
    req: &Request,
) -> Result<Option<(TerminalSession, twochan_domain::crypto::SecretHash)>> {
    if !req
        .headers()
        .contains_key(lambda_http::http::header::AUTHORIZATION)
    {
        return Ok(None);
    }
    match bearer(req.headers())? {
        (BearerKind::TerminalToken, hash) => {
            let session = store
                .session_for_token(&hash)
                .await?
                .ok_or(DomainError::Unauthorized)?;
            Ok(Some((session, hash)))
        }
        _ => Err(DomainError::Unauthorized),
    }
}

async fn register_device<S, Q, E>(app: &App<S, Q, E>, req: &Request) -> Result<Response<Body>>
where
    S: Directory + Devices,
{
    let caller = optional_terminal(&app.store, req).await?;
    let body = json_body(
        req,
        &[
            "unique_code",
            "terminal_id",
            "challenge",
            "registration_proof",
        ],
    )?;
    let code: UniqueCode = body.field("unique_code")?;
    let terminal: TerminalId = body.field("terminal_id")?;
    let challenge: Challenge = body.field("challenge")?;
    let proof = body.string("registration_proof")?;
    tag(&code, None);
    // The proof comes first: without the device nobody learns whether a code is registered.
    if !app
        .issuer_keys()?
        .verify_registration_proof(&code, &terminal, &challenge, proof)
    {
        return Err(DomainError::InvalidRegistrationProof);
    }
    // A valid proof uses its challenge up, whatever the answer: a recorded request cannot be
    // played again, and of concurrent requests with one challenge at most one goes on.
    if app
        .store
        .use_challenge(&challenge, &code, Timestamp::now())
        .await?
        == Write::Conflict
    {
        tracing::warn!(
            security_event = "challenge_refused",
            "registration with a challenge that is unknown, expired, used or another code's"
        );
        return Err(DomainError::InvalidRegistrationProof);
    }
    let authority = caller
        .as_ref()
        .filter(|(session, _)| session.terminal_id == terminal)
        .map(|(_, hash)| hash);
    for _ in 0..MAX_RACE_RETRIES {
        let (seen, terminal_devices) = app.store.device_and_terminal(&code, &terminal).await?;
        let kind = RegistrationKind::decide(
            seen.as_ref(),
            &terminal,
            terminal_devices,
            authority.is_some(),
        )
        .inspect_err(|e| {
            if *e == DomainError::TerminalIdTaken {
                tracing::warn!(
                    security_event = "terminal_id_taken",
                    "registration to a terminal that holds another device, without its token"
                );
            }
        })?;
        let token = IssuedSecret::generate(TERMINAL_TOKEN_PREFIX);
        let registration = Registration {
            terminal_id: terminal.clone(),
            token_hash: token.hash.clone(),
            registered_at: Timestamp::now().truncated_to_second(),
        };
        let write = NewRegistration {
            unique_code: &code,
            seen: seen.as_ref(),
            kind,
            registration: &registration,
            authority,
        };
        if app.store.register(&write).await? == Write::Applied {
            let again = kind == RegistrationKind::Again;
            tracing::info!(outcome = "registered", replaced = again);
            return Ok(json_response(
                if again {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                &RegistrationView {
                    unique_code: code.as_str(),
                    terminal_id: terminal.as_str(),
                    terminal_token: &token.secret,
                    registered_at: registration.registered_at.to_rfc3339(),
                },
            ));
        }
    }
    Err(DomainError::Unavailable("registration kept racing".into()))
}

async fn deregister_device<S, Q, E>(
    app: &App<S, Q, E>,
    req: &Request,
    raw_code: &str,
) -> Result<Response<Body>>
where
    S: Directory + Devices + Payments,
    E: EventQueue,
{
    let session = terminal(&app.store, req).await?;
    let code = UniqueCode::try_from(raw_code).map_err(|_| DomainError::NotFound)?;
    tag(&code, None);
    for _ in 0..MAX_RACE_RETRIES {
        let device = app
            .store
            .device(&code)
            .await?
            .ok_or(DomainError::NotFound)?;
        match &device.registration {
            Some(r) if r.terminal_id == session.terminal_id => {}
            _ => return Err(DomainError::NotFound),
        }
        // What a payment request that still holds the lock without its payment will answer.
        let abandoned = stored_response(&render_error(&DomainError::UnknownDevice));
        let now = Timestamp::now();
        // The pending payment deregistration cancels is announced, before the commit (the
        // consumer drops the event if the payment did not become canceled after all).
        if let Some((held, lapses)) = &device.pending
            && now <= *lapses
            && let Some(p) = app.store.payment(held).await?
            && p.status == PaymentStatus::Pending
        {
            app.events
                .enqueue_event(&EventMessage::payment(EventType::PaymentCanceled, &p, now))
                .await?;
        }
        if app.store.deregister(&device, now, &abandoned).await? == Write::Applied {
            tracing::info!(
                outcome = "deregistered",
                canceled_payment = device.pending.is_some()
            );
            return Ok(empty_response(StatusCode::NO_CONTENT));
        }
    }
    Err(DomainError::Unavailable(
        "deregistration kept racing".into(),
    ))
}

// ---------------------------------------------------------------- payment request (POS)

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

async fn create_payment<S, Q, E>(app: &App<S, Q, E>, req: &Request) -> Result<Response<Body>>
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
        .issuer_keys()?
        .verify_beacon_proof(&r.unique_code, &r.beacon_proof, Timestamp::now())
    {
        // A replay is answered without the proof (the first request checked it, and it may
        // have aged since); anything else learns nothing about the code, and the key stays free.
        if let Some(record) = app.store.slot(&new.slot).await? {
            return replay(record, &new.fingerprint);
        }
        tag(&r.unique_code, None);
        tracing::warn!(
            security_event = "invalid_beacon_proof",
            "payment request without a current beacon proof of the device"
        );
        return Err(DomainError::InvalidBeaconProof);
    }
    match create_pending(app, &new, device).await {
        Ok(Created::New(payment)) => Ok(payment_response(StatusCode::CREATED, &payment)),
        Ok(Created::Stored(record)) => replay(record, &new.fingerprint),
        // Nothing final happened; the retry may find the device locked for this key and finish.
        Err(e) if crate::http::status_of(&e).is_server_error() => Err(e),
        Err(e @ DomainError::IdempotencyKeyInUse) => Err(e),
        Err(e) => {
            // A final answer (unknown device, busy): the same key gets the same answer.
            let resp = error_response(&e);
            let stored = stored_response(&resp);
            let kept = app
                .store
                .record_rejection(&new.slot, &new.fingerprint, &stored, Timestamp::now())
                .await?;
            match kept {
                Write::Applied => Ok(resp),
                // The key already holds an answer (an earlier request's): that one stands.
                Write::Conflict => match app.store.slot(&new.slot).await? {
                    Some(record) => replay(record, &new.fingerprint),
                    None => Err(DomainError::Unavailable("payment slot changed".into())),
                },
            }
        }
    }
}

pub(crate) fn stored_response(resp: &Response<Body>) -> StoredResponse {
    StoredResponse {
        status: resp.status().as_u16(),
        body: String::from_utf8_lossy(resp.body().as_ref()).into_owned(),
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
    let mut resp = match record {
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
        } if kept == fingerprint || kept == ANY_REQUEST => {
            let status = StatusCode::from_u16(response.status)
                .map_err(|_| DomainError::Internal("stored status".into()))?;
            raw_json_response(status, response.body)
        }
        _ => return Err(DomainError::IdempotencyKeyReused),
    };
    tracing::info!(
        outcome = "idempotent_replay",
        status = resp.status().as_u16()
    );
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(resp)
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
    tag(&r.unique_code, None);
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
        tag_payment(&payment);
        let put = app.store.put_payment(&payment, &new.fingerprint).await;
        if matches!(put, Ok(Write::Applied)) {
            tracing::info!(outcome = "payment_created");
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

/// The `Idempotency-Key` header (400 when missing or malformed).
fn idempotency_key(req: &Request) -> Result<IdempotencyKey> {
    req.headers()
        .get("idempotency-key")
        .ok_or_else(|| DomainError::invalid("Idempotency-Key", "header is required"))?
        .to_str()
        .map_err(|_| DomainError::invalid("Idempotency-Key", "header must be printable ASCII"))
        .and_then(IdempotencyKey::try_from)
}

async fn create_refund<S, Q, E>(
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

async fn list_refunds<S, Q, E>(
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

/// The merchant or the phone a bearer authenticates (its kind says which).
async fn caller<S: Directory>(store: &S, req: &Request) -> Result<Owner> {
    Ok(match bearer(req.headers())?.0 {
        BearerKind::MerchantKey => Owner::Merchant(merchant(store, req).await?),
        BearerKind::TerminalToken => Owner::Terminal(terminal(store, req).await?.terminal_id),
    })
}

async fn get_payment<S, Q, E>(
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
    tag_payment(&payment);
    Ok(payment_response(StatusCode::OK, &payment))
}

async fn cancel_payment<S, Q, E>(
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

async fn balance<S, Q, E>(app: &App<S, Q, E>, req: &Request) -> Result<Response<Body>>
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

// ---------------------------------------------------------------- confirmation (phone)

async fn pending_payments<S, Q, E>(app: &App<S, Q, E>, req: &Request) -> Result<Response<Body>>
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

async fn decline_payment<S, Q, E>(
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
async fn finish_by_caller<S, Q, E>(
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
        tag_payment(&payment);
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

async fn confirm_payment<S, Q, E>(
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
    let issuer_keys = app.issuer_keys()?;
    let fingerprint = Payment::confirmation_fingerprint(&auth_code, counter);

    for _ in 0..MAX_RACE_RETRIES {
        let now = Timestamp::now();
        // The payment and, in one round trip, the device of the caller's token: the payment's own
        // device unless the terminal has several devices (then it is read on its own below).
        let (payment, device) = app
            .store
            .payment_and_device(&id, &session.unique_code)
            .await?;
        let payment = payment
            .filter(|p| owner.owns(p))
            .ok_or(DomainError::NotFound)?;
        tag_payment(&payment);
        match payment.gate_confirm(now, &fingerprint) {
            Ok(ConfirmGate::Proceed) => {}
            Ok(ConfirmGate::Repeat) => {
                // The accepted confirmation again. If it is still `confirmed`, the first attempt may
                // have failed to enqueue: enqueue again (settlement is idempotent).
                if payment.status == PaymentStatus::Confirmed {
                    app.queue
                        .enqueue(&SettlementMessage::for_payment(&payment, now))
                        .await?;
                }
                return Ok(payment_response(StatusCode::OK, &payment));
            }
            Err(DomainError::PaymentExpired) if payment.status == PaymentStatus::Pending => {
                record_expiry(app, &payment, now).await;
                return Err(DomainError::PaymentExpired);
            }
            Err(e) => return Err(e),
        }
        let device = match device.filter(|d| d.unique_code == payment.unique_code) {
            Some(device) => device,
            None => app
                .store
                .device(&payment.unique_code)
                .await?
                .ok_or_else(|| {
                    DomainError::Internal("pending payment without its device".into())
                })?,
        };
        if let Some(until) = device.locked_at(now) {
            // Refused before the code is even looked at, so a locked device teaches nothing.
            tracing::warn!(
                security_event = "locked_device_refused",
                "confirmation refused: device locked after repeated wrong codes"
            );
            return Err(DomainError::DeviceLocked { until });
        }
        if !counter.is_acceptable_after(device.last_counter) {
            // The counter may have moved because this very payment was confirmed since it was
            // read (a concurrent copy of this request): decide again on the fresh payment.
            let moved_on = app
                .store
                .payment(&id)
                .await?
                .is_some_and(|p| p.status != PaymentStatus::Pending);
            if moved_on {
                continue;
            }
            // A rewind is what a cloned device replaying old codes looks like; a jump, a device
            // whose counter ran far ahead. Either is for the clone detector to alert on.
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
            return Err(DomainError::StaleCounter);
        }
        let binding = PaymentBinding {
            payment_id: &payment.payment_id,
            merchant_id: &payment.merchant_id,
            amount: payment.amount,
            currency: payment.currency,
            challenge: &payment.challenge,
            counter,
        };
        if !issuer_keys.verify_auth_code(&payment.unique_code, &binding, &auth_code) {
            let wrong = WrongCode {
                payment: &payment,
                device: &device,
                fails_payment: payment.failed_attempts + 1 >= MAX_AUTH_ATTEMPTS,
                lock_until: device.lock_after_wrong_code(now),
                at: now,
            };
            if wrong.fails_payment {
                app.events
                    .enqueue_event(&EventMessage::payment(
                        EventType::PaymentFailed,
                        &payment,
                        now,
                    ))
                    .await?;
            }
            if app.store.record_wrong_code(&wrong).await? == Write::Conflict {
                continue;
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
            return Err(if wrong.fails_payment {
                DomainError::TooManyAttempts
            } else {
                DomainError::InvalidAuthCode
            });
        }
        let confirmation = Confirmation {
            payment: &payment,
            device_failures: device.failed_auth,
            previous_counter: device.last_counter,
            counter,
            fingerprint: fingerprint.clone(),
            at: now,
        };
        // The settlement message goes out *before* the commit, so no crash can leave a confirmed
        // payment without one. If the commit then fails or never happens, settlement finds the
        // payment not confirmed and drops the orphan (see `settlement::settle_batch`); if sending
        // fails, nothing was committed and the caller's retry is safe.
        app.queue
            .enqueue(&SettlementMessage::for_payment(&payment, now))
            .await?;
        app.events
            .enqueue_event(&EventMessage::payment(
                EventType::PaymentConfirmed,
                &payment,
                now,
            ))
            .await?;
        if app.store.confirm(&confirmation).await? == Write::Conflict {
            continue;
        }
        let mut confirmed = payment.clone();
        confirmed.status = PaymentStatus::Confirmed;
        confirmed.confirmed_at = Some(now.truncated_to_second());
        confirmed.confirmation = Some(fingerprint.clone());
        tracing::info!(outcome = "confirmed");
        return Ok(payment_response(StatusCode::OK, &confirmed));
    }
    // Lost every race: many concurrent confirmations (wrong codes among them, which count on
    // the payment and the device). Answer from where they left it rather than a 503.
    let (payment, device) = app
        .store
        .payment_and_device(&id, &session.unique_code)
        .await?;
    match (payment.filter(|p| owner.owns(p)), device) {
        (Some(p), _) if p.status == PaymentStatus::Failed => Err(DomainError::TooManyAttempts),
        (Some(p), Some(d)) if d.unique_code == p.unique_code => match d.locked_at(Timestamp::now())
        {
            Some(until) => Err(DomainError::DeviceLocked { until }),
            None => Err(DomainError::Unavailable("payment kept changing".into())),
        },
        _ => Err(DomainError::Unavailable("payment kept changing".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn route_table() {
        let r = |m: Method, p: &str| Route::of(&m, &segs(p));
        assert_eq!(r(Method::POST, "devices"), Some(Route::RegisterDevice));
        assert_eq!(
            r(Method::DELETE, "devices/abc"),
            Some(Route::DeregisterDevice("abc".into()))
        );
        assert_eq!(r(Method::GET, "devices"), None);
        assert_eq!(
            r(Method::POST, "payments/p/confirm"),
            Some(Route::ConfirmPayment("p".into()))
        );
        assert_eq!(r(Method::GET, "payments/p/confirm"), None);
        assert_eq!(r(Method::GET, "balance"), Some(Route::Balance));
        assert_eq!(
            r(Method::GET, "pending-payments"),
            Some(Route::PendingPayments)
        );
        assert!(Function::Registration.serves(&Route::RegisterDevice));
        assert!(!Function::Registration.serves(&Route::CreatePayment));
        assert!(Function::Confirmation.serves(&Route::DeclinePayment("p".into())));
        assert!(Function::PaymentRequest.serves(&Route::Balance));
    }
}

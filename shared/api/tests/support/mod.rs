//! A fixed, in-memory world for driving `twochan_api::routes::handle` without AWS: one merchant,
//! one terminal with its registered device and one pending payment. It never changes (every
//! write answers `Applied` and is only counted), so each request sees the same state and a test
//! can tell whether a request wrote anything at all.
//!
//! Shared by `tests/properties.rs` and the `request` fuzz target (`fuzz/`, through `#[path]`).

#![allow(dead_code)]

use std::{
    future::Future,
    pin::pin,
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll, Waker},
};

use lambda_http::{Body, Request, Response, http::Method};
use twochan_api::routes::{App, Function, handle};
use twochan_domain::{
    Amount, Challenge, Currency, MerchantId, Payment, PaymentId, PaymentSlot, PosId, Result,
    TerminalId, Timestamp, UniqueCode,
    crypto::{MasterKey, SecretHash},
    ports::{
        Balance, Confirmation, Device, Devices, Directory, EventMessage, EventQueue, Ledger,
        NewRefund, NewRegistration, Payments, RefundSlotRecord, Refunds, Registration,
        RegistrationChallenge, Settlement, SettlementMessage, SettlementQueue, SlotRecord,
        StoredResponse, TerminalSession, WebhookEndpoint, WebhookEndpoints, Write, WrongCode,
    },
    refund::Refund,
};

pub const MERCHANT_KEY: &str =
    "mk_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const TERMINAL_TOKEN: &str =
    "tt_fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
pub const MERCHANT: &str = "m_world";
pub const TERMINAL: &str = "phone-world-01";
pub const CODE: &str = "beacon-world-01";
pub const PAYMENT_ID: &str = "pay_01KB1ZQ8RV4T6M2XW9C3HJ5N7P";
pub const CHALLENGE: &str = "000102030405060708090a0b0c0d0e0f";
/// The device's last accepted counter in the world.
pub const LAST_COUNTER: u64 = 7;
pub const MASTER_KEY_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

pub const FUNCTIONS: [Function; 3] = [
    Function::Registration,
    Function::PaymentRequest,
    Function::Confirmation,
];

/// The statuses contract v1 lets an endpoint answer.
pub const CONTRACT_STATUSES: &[u16] = &[
    200, 201, 204, 400, 401, 404, 409, 410, 413, 415, 422, 429, 500, 503,
];

/// The contract's error codes and the status of each.
pub const CONTRACT_ERRORS: &[(&str, u16)] = &[
    ("invalid_request", 400),
    ("unauthorized", 401),
    ("not_found", 404),
    ("unknown_device", 404),
    ("device_already_registered", 409),
    ("device_busy", 409),
    ("idempotency_key_in_use", 409),
    ("payment_not_pending", 409),
    ("payment_not_settled", 409),
    ("terminal_id_taken", 409),
    ("invalid_beacon_proof", 422),
    ("refund_exceeds_payment", 422),
    ("payment_expired", 410),
    ("payload_too_large", 413),
    ("unsupported_media_type", 415),
    ("invalid_registration_proof", 422),
    ("idempotency_key_reused", 422),
    ("invalid_auth_code", 422),
    ("stale_counter", 422),
    ("too_many_attempts", 429),
    ("internal", 500),
    ("unavailable", 503),
];

pub struct World {
    pub payment: Payment,
    pub device: Device,
    writes: AtomicUsize,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        let code = UniqueCode::try_from(CODE).unwrap();
        let terminal = TerminalId::try_from(TERMINAL).unwrap();
        let now = Timestamp::now();
        let mut payment = Payment::new(
            PaymentId::generate(now),
            code.clone(),
            terminal.clone(),
            MerchantId::try_from(MERCHANT).unwrap(),
            PosId::try_from("pos-world").unwrap(),
            Amount::try_from(4500).unwrap(),
            Currency::try_from("KRW").unwrap(),
            None,
            // Far longer than any test or fuzz run: the payment stays pending.
            30 * 24 * 3600,
        );
        // Fixed id and challenge: the same input always meets the same world (fuzzing needs it).
        payment.payment_id = PaymentId::try_from(PAYMENT_ID).unwrap();
        payment.challenge = Challenge::try_from(CHALLENGE.to_owned()).unwrap();
        let device = Device {
            unique_code: code,
            registration: Some(Registration {
                terminal_id: terminal,
                token_hash: SecretHash::of(TERMINAL_TOKEN),
                registered_at: now.truncated_to_second(),
            }),
            last_counter: twochan_domain::Counter::new(LAST_COUNTER),
            pending: Some((payment.payment_id.clone(), payment.expires_at)),
            failed_auth: 0,
            locked_until: None,
        };
        Self {
            payment,
            device,
            writes: AtomicUsize::new(0),
        }
    }

    pub fn payment_id(&self) -> &str {
        self.payment.payment_id.as_str()
    }

    /// Writes (and enqueues) made since the last call.
    pub fn take_writes(&self) -> usize {
        self.writes.swap(0, Ordering::SeqCst)
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }

    pub fn app(self) -> App<World, WorldQueue, WorldQueue> {
        App {
            store: self,
            queue: WorldQueue::default(),
            issuer_keys: MasterKey::from_hex(MASTER_KEY_HEX).unwrap().into(),
            pending_ttl_seconds: 120,
            events: WorldQueue::default(),
            allow_loopback_webhooks: false,
        }
    }
}

#[derive(Default)]
pub struct WorldQueue {
    pub sent: AtomicUsize,
}

impl SettlementQueue for WorldQueue {
    async fn enqueue(&self, _: &SettlementMessage) -> Result<()> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl EventQueue for WorldQueue {
    async fn enqueue_event(&self, _: &EventMessage) -> Result<()> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The world's one payment has no refunds, and its merchant no webhook endpoint.
impl Refunds for World {
    async fn refund_slot(&self, _: &PaymentSlot) -> Result<Option<RefundSlotRecord>> {
        Ok(None)
    }
    async fn refund(&self, _: &NewRefund<'_>) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn record_refund_rejection(
        &self,
        _: &PaymentSlot,
        _: &str,
        _: &StoredResponse,
        _: Timestamp,
    ) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn refunds_of(&self, _: &PaymentId) -> Result<Vec<Refund>> {
        Ok(Vec::new())
    }
}

impl WebhookEndpoints for World {
    async fn endpoint(&self, _: &MerchantId) -> Result<Option<WebhookEndpoint>> {
        Ok(None)
    }
    async fn put_endpoint(&self, _: &MerchantId, _: &WebhookEndpoint) -> Result<()> {
        self.wrote();
        Ok(())
    }
    async fn delete_endpoint(&self, _: &MerchantId) -> Result<()> {
        self.wrote();
        Ok(())
    }
}

impl Directory for World {
    async fn merchant_for_key(&self, key: &SecretHash) -> Result<Option<MerchantId>> {
        Ok((*key == SecretHash::of(MERCHANT_KEY)).then(|| MerchantId::try_from(MERCHANT).unwrap()))
    }
    async fn merchant_and_device(
        &self,
        key: &SecretHash,
        code: &UniqueCode,
    ) -> Result<(Option<MerchantId>, Option<Device>)> {
        Ok((self.merchant_for_key(key).await?, self.device(code).await?))
    }
    async fn session_for_token(&self, token: &SecretHash) -> Result<Option<TerminalSession>> {
        Ok(
            (*token == SecretHash::of(TERMINAL_TOKEN)).then(|| TerminalSession {
                terminal_id: TerminalId::try_from(TERMINAL).unwrap(),
                unique_code: UniqueCode::try_from(CODE).unwrap(),
            }),
        )
    }
    async fn put_merchant(&self, _: &MerchantId, _: &SecretHash, _: Timestamp) -> Result<()> {
        self.wrote();
        Ok(())
    }
}

impl Devices for World {
    async fn device(&self, code: &UniqueCode) -> Result<Option<Device>> {
        Ok((code.as_str() == CODE).then(|| self.device.clone()))
    }
    async fn device_and_terminal(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
    ) -> Result<(Option<Device>, u32)> {
        let holding = u32::from(terminal.as_str() == TERMINAL);
        Ok((self.device(code).await?, holding))
    }
    async fn put_challenge(&self, _: &RegistrationChallenge) -> Result<()> {
        self.wrote();
        Ok(())
    }
    /// Every challenge is usable in the world (and using one is a write).
    async fn use_challenge(&self, _: &Challenge, _: &UniqueCode, _: Timestamp) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn register(&self, _: &NewRegistration<'_>) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn deregister(&self, _: &Device, _: Timestamp, _: &StoredResponse) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
}

impl Payments for World {
    async fn payment(&self, id: &PaymentId) -> Result<Option<Payment>> {
        Ok((*id == self.payment.payment_id).then(|| self.payment.clone()))
    }
    async fn payment_and_device(
        &self,
        id: &PaymentId,
        code: &UniqueCode,
    ) -> Result<(Option<Payment>, Option<Device>)> {
        Ok((self.payment(id).await?, self.device(code).await?))
    }
    async fn slot(&self, _: &PaymentSlot) -> Result<Option<SlotRecord>> {
        Ok(None)
    }
    async fn lock_device(&self, _: &Payment, _: &Device) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn put_payment(&self, _: &Payment, _: &str) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn release_lock(&self, _: &UniqueCode, _: &PaymentId) -> Result<()> {
        self.wrote();
        Ok(())
    }
    async fn record_rejection(
        &self,
        _: &PaymentSlot,
        _: &str,
        _: &StoredResponse,
        _: Timestamp,
    ) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn pending_for_terminal(&self, terminal: &TerminalId) -> Result<Vec<Payment>> {
        Ok(if terminal.as_str() == TERMINAL {
            vec![self.payment.clone()]
        } else {
            Vec::new()
        })
    }
    async fn finish_pending(
        &self,
        _: &Payment,
        _: twochan_domain::PaymentStatus,
        _: Timestamp,
    ) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn record_wrong_code(&self, _: &WrongCode<'_>) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
    async fn confirm(&self, _: &Confirmation<'_>) -> Result<Write> {
        self.wrote();
        Ok(Write::Applied)
    }
}

impl Ledger for World {
    async fn settle_group(
        &self,
        messages: &[SettlementMessage],
        _: Timestamp,
    ) -> Result<Vec<Result<Settlement>>> {
        self.wrote();
        Ok(messages.iter().map(|_| Ok(Settlement::Settled)).collect())
    }
    async fn balances(&self, _: &MerchantId) -> Result<Vec<Balance>> {
        Ok(Vec::new())
    }
}

/// Runs a future whose every await is immediately ready (all of the world's are).
pub fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a future of the in-memory world did not complete");
}

/// Builds a request as `lambda_http` hands it to the handler; `None` when `http` refuses the
/// method, path or a header (API Gateway would never deliver such a request).
pub fn request(
    method: &str,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
) -> Option<Request> {
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let mut builder = lambda_http::http::Request::builder()
        .method(method)
        .uri(path);
    for (name, value) in headers {
        let name = lambda_http::http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = lambda_http::http::HeaderValue::from_bytes(value).ok()?;
        builder = builder.header(name, value);
    }
    let body = match String::from_utf8(body) {
        Ok(text) if text.is_empty() => Body::Empty,
        Ok(text) => Body::Text(text),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    builder.body(body).ok()
}

/// What a response says, checked against the contract's rules for every answer: a contract
/// status, never a 5xx for a client's request, and every error in the contract's JSON shape with a
/// code that belongs to its status. Returns the error code, if any.
pub fn check_response(resp: &Response<Body>) -> std::result::Result<Option<String>, String> {
    let status = resp.status().as_u16();
    if !CONTRACT_STATUSES.contains(&status) {
        return Err(format!("status {status} is not a contract status"));
    }
    if status >= 500 {
        return Err(format!(
            "status {status} for a client's request: {}",
            String::from_utf8_lossy(resp.body().as_ref())
        ));
    }
    let body = resp.body().as_ref();
    if status == 204 {
        return if body.is_empty() {
            Ok(None)
        } else {
            Err("204 with a body".into())
        };
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    if content_type != Some("application/json") {
        return Err(format!("{status} with content-type {content_type:?}"));
    }
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{status} body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    if status < 300 {
        return if json.is_object() {
            Ok(None)
        } else {
            Err(format!("{status} body is not an object: {json}"))
        };
    }
    let error = json
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("error"))
        .and_then(|e| e.as_object())
        .filter(|e| e.len() == 2)
        .ok_or_else(|| format!("{status} body is not {{\"error\": {{code, message}}}}: {json}"))?;
    let code = error
        .get("code")
        .and_then(|c| c.as_str())
        .unwrap_or_default();
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    if message.is_empty() {
        return Err(format!("{status} without a message: {json}"));
    }
    match CONTRACT_ERRORS.iter().find(|(c, _)| *c == code) {
        Some((_, s)) if *s == status => Ok(Some(code.to_owned())),
        Some((_, s)) => Err(format!(
            "code {code} belongs to {s}, answered with {status}"
        )),
        None => Err(format!("{code:?} is not a contract error code: {json}")),
    }
}

/// Runs one request through `handle` as `function`.
pub fn run(
    app: &App<World, WorldQueue, WorldQueue>,
    function: Function,
    req: Request,
) -> Response<Body> {
    ready(handle(app, function, req))
}

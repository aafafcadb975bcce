//! Ports: what the use cases need from storage and messaging. The DynamoDB and SQS adapters in
//! `twochan-aws` implement them; every method is one atomic step (one request or one transaction).

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::crypto::SecretHash;
use crate::error::{DomainError, Result};
use crate::ids::Challenge;
use crate::ids::RefundId;
use crate::ids::{Counter, MerchantId, PaymentId, PaymentSlot, TerminalId, UniqueCode};
use crate::money::{Amount, Currency};
use crate::payment::{Payment, PaymentStatus};
use crate::refund::Refund;
use crate::webhook::{EventId, EventType, WebhookSecret, WebhookUrl};

pub use crate::device::{
    Device, NewRegistration, Registration, RegistrationChallenge, RegistrationKind, TerminalSession,
};

/// The result of a conditional write whose condition depends on state read earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Applied,
    /// The state changed since it was read; re-read and decide again.
    Conflict,
}

/// The fingerprint of an answer kept for any request body (a deregistration's, for a payment
/// that was never stored).
pub const ANY_REQUEST: &str = "*";

/// A final refusal of an idempotent request, one that its key keeps: the same key gets it again.
/// A failure on our side or a request still in flight decided nothing, so it is never one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalRefusal {
    UnknownDevice,
    DeviceBusy,
    PaymentNotSettled,
    RefundExceedsPayment,
}

impl FinalRefusal {
    pub const ALL: [Self; 4] = [
        Self::UnknownDevice,
        Self::DeviceBusy,
        Self::PaymentNotSettled,
        Self::RefundExceedsPayment,
    ];

    /// The refusal `e` is, if a key keeps it.
    pub fn of(e: &DomainError) -> Option<Self> {
        match e {
            DomainError::UnknownDevice => Some(Self::UnknownDevice),
            DomainError::DeviceBusy => Some(Self::DeviceBusy),
            DomainError::PaymentNotSettled => Some(Self::PaymentNotSettled),
            DomainError::RefundExceedsPayment => Some(Self::RefundExceedsPayment),
            _ => None,
        }
    }

    pub fn error(self) -> DomainError {
        match self {
            Self::UnknownDevice => DomainError::UnknownDevice,
            Self::DeviceBusy => DomainError::DeviceBusy,
            Self::PaymentNotSettled => DomainError::PaymentNotSettled,
            Self::RefundExceedsPayment => DomainError::RefundExceedsPayment,
        }
    }

    /// Its contract code ([`DomainError::code`]): how a store spells it.
    pub fn code(self) -> &'static str {
        self.error().code()
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl From<FinalRefusal> for DomainError {
    fn from(r: FinalRefusal) -> Self {
        r.error()
    }
}

/// The answer an idempotency key keeps for a request that was refused for good: the refusal
/// itself. Each transport renders it as it renders the error, so a replay is the first answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub refusal: FinalRefusal,
}

impl StoredResponse {
    /// What a key keeps of `e`; `None` if `e` is not final (see [`FinalRefusal`]).
    pub fn of(e: &DomainError) -> Option<Self> {
        FinalRefusal::of(e).map(|refusal| Self { refusal })
    }

    pub fn error(&self) -> DomainError {
        self.refusal.error()
    }
}

/// What a payment slot (a merchant's idempotency key) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotRecord {
    /// The payment the key created, and the fingerprint of the request that created it.
    Payment {
        payment: Box<Payment>,
        fingerprint: String,
    },
    /// A request under the key got a final error (unknown device, busy): the key keeps it.
    Rejected {
        fingerprint: String,
        response: StoredResponse,
    },
}

/// What the settlement queue carries: enough to settle without another read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementMessage {
    pub payment_id: PaymentId,
    pub merchant_id: MerchantId,
    pub unique_code: UniqueCode,
    pub amount: Amount,
    pub currency: Currency,
    /// When the confirmation sent it (ms since the epoch). It is sent just *before* the
    /// confirmation commits, so a message whose payment is still pending long after this was
    /// never followed by a commit (see [`ORPHAN_AFTER_MS`]). Absent (a message of an older
    /// version): 0, so it counts as old, which only matters if its payment is not confirmed.
    #[serde(default)]
    pub sent_at_ms: i64,
}

/// How long after sending a settlement message its payment may still become confirmed: twice the
/// confirmation function's timeout (10 s; its SDK calls give up after 6 s). A message older than
/// this whose payment is not confirmed is an orphan of a confirmation that never committed. The
/// queue must keep such a message for that long: 4 visibility timeouts of at least 5 s (the
/// template's `SettlementVisibilityTimeout` minimum) before its 5th and last receive.
pub const ORPHAN_AFTER_MS: i64 = 20_000;

impl SettlementMessage {
    pub fn for_payment(p: &Payment, sent_at: Timestamp) -> Self {
        Self {
            payment_id: p.payment_id.clone(),
            merchant_id: p.merchant_id.clone(),
            unique_code: p.unique_code.clone(),
            amount: p.amount,
            currency: p.currency,
            sent_at_ms: sent_at.millis(),
        }
    }

    /// Whether the message describes `p` (a forged or corrupted one does not).
    pub fn describes(&self, p: &Payment) -> bool {
        self.payment_id == p.payment_id
            && self.merchant_id == p.merchant_id
            && self.unique_code == p.unique_code
            && self.amount == p.amount
            && self.currency == p.currency
    }

    /// The merchant and currency whose balance it changes: messages of one group settle in one
    /// transaction, and the queue hands a group to one consumer at a time (its FIFO message group).
    pub fn group(&self) -> String {
        format!("{}/{}", self.merchant_id, self.currency.code())
    }

    /// How long ago its confirmation sent it.
    pub fn age_ms(&self, now: Timestamp) -> i64 {
        now.millis() - self.sent_at_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Settled,
    /// Settled by an earlier delivery; nothing was written.
    AlreadySettled,
    /// The payment is not confirmed (its status is given): the confirmation that sent the
    /// message has not committed yet, or never will. Nothing was written.
    NotConfirmed(PaymentStatus),
}

/// One currency of a merchant's balance: its settled payments and their refunds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balance {
    pub currency: Currency,
    pub settled_amount: u64,
    pub settled_count: u64,
    pub refunded_amount: u64,
    /// `settled_amount - refunded_amount` (never negative: refunds are capped per payment).
    pub net_amount: u64,
}

impl Balance {
    pub fn new(currency: Currency, settled_amount: u64, settled_count: u64, refunded: u64) -> Self {
        Self {
            currency,
            settled_amount,
            settled_count,
            refunded_amount: refunded,
            net_amount: settled_amount.saturating_sub(refunded),
        }
    }
}

/// What a refund slot (a merchant's idempotency key for refunds) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundSlotRecord {
    Refund {
        refund: Box<Refund>,
        fingerprint: String,
    },
    Rejected {
        fingerprint: String,
        response: StoredResponse,
    },
}

/// A refund to write in one step: the refund in its slot, the payment's refunded sum (if it
/// still leaves room for it and the payment is still settled), the ledger legs and the balance.
#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    pub refund: &'a Refund,
    pub payment: &'a Payment,
    pub fingerprint: &'a str,
}

/// Accepted confirmation, written atomically with the counter advance and the lock release.
#[derive(Debug, Clone)]
pub struct Confirmation<'a> {
    pub payment: &'a Payment,
    /// The device's wrong-code count as read: a wrong code (or a lock) since then refuses the
    /// confirmation, so the lock-out also holds against concurrent requests.
    pub device_failures: u32,
    pub previous_counter: Counter,
    pub counter: Counter,
    pub fingerprint: String,
    pub at: Timestamp,
}

/// A wrong auth code, counted on the payment and on its device in one atomic step.
#[derive(Debug, Clone)]
pub struct WrongCode<'a> {
    pub payment: &'a Payment,
    /// The device as read; its `failed_auth` is the count the write expects to advance.
    pub device: &'a Device,
    /// The payment's last tolerated attempt: it becomes `failed` and frees its code.
    pub fails_payment: bool,
    /// Set when this failure locks the device.
    pub lock_until: Option<Timestamp>,
    pub at: Timestamp,
}

/// Callers and their secrets.
pub trait Directory: Send + Sync {
    fn merchant_for_key(
        &self,
        key: &SecretHash,
    ) -> impl Future<Output = Result<Option<MerchantId>>> + Send;
    /// The merchant of an API key and a device, read together (one round trip on the POS path).
    fn merchant_and_device(
        &self,
        key: &SecretHash,
        code: &UniqueCode,
    ) -> impl Future<Output = Result<(Option<MerchantId>, Option<Device>)>> + Send;
    fn session_for_token(
        &self,
        token: &SecretHash,
    ) -> impl Future<Output = Result<Option<TerminalSession>>> + Send;
    /// Creates a merchant, or gives an existing one a new key and revokes the old one.
    fn put_merchant(
        &self,
        id: &MerchantId,
        key: &SecretHash,
        at: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
}

pub trait Devices: Send + Sync {
    fn device(&self, code: &UniqueCode) -> impl Future<Output = Result<Option<Device>>> + Send;
    /// A device and how many devices are registered to a terminal, read together.
    fn device_and_terminal(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
    ) -> impl Future<Output = Result<(Option<Device>, u32)>> + Send;
    /// Keeps a new registration challenge until it is used or expires.
    fn put_challenge(
        &self,
        challenge: &RegistrationChallenge,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Uses a challenge up: `Applied` only if it exists, was issued for `code`, has not expired
    /// at `now` and was not used before; exactly one of concurrent uses applies.
    fn use_challenge(
        &self,
        challenge: &Challenge,
        code: &UniqueCode,
        now: Timestamp,
    ) -> impl Future<Output = Result<Write>> + Send;
    /// Registers a device as decided on what was read (see [`NewRegistration`]); `Conflict` if
    /// the device, the terminal's holding or the caller's token changed since.
    fn register(
        &self,
        registration: &NewRegistration<'_>,
    ) -> impl Future<Output = Result<Write>> + Send;
    /// Frees `device`'s code, revokes its token and cancels its pending payment, if any. A lock
    /// whose payment was never stored (its request died, or is still between its two writes)
    /// gets `abandoned` kept in that payment's slot, for every body, so that a late write of the
    /// payment fails and its request answers that instead.
    fn deregister(
        &self,
        device: &Device,
        at: Timestamp,
        abandoned: &StoredResponse,
    ) -> impl Future<Output = Result<Write>> + Send;
}

pub trait Payments: Send + Sync {
    fn payment(&self, id: &PaymentId) -> impl Future<Output = Result<Option<Payment>>> + Send;
    /// A payment and a device, read together (one round trip on the confirmation path).
    fn payment_and_device(
        &self,
        id: &PaymentId,
        code: &UniqueCode,
    ) -> impl Future<Output = Result<(Option<Payment>, Option<Device>)>> + Send;
    /// What a payment slot holds, if anything.
    fn slot(&self, slot: &PaymentSlot) -> impl Future<Output = Result<Option<SlotRecord>>> + Send;
    /// Takes the device's one-pending-payment lock for `payment`; `seen` is the device as read,
    /// whose lapsed lock may be taken over. The first of the two writes of a new payment.
    fn lock_device(
        &self,
        payment: &Payment,
        seen: &Device,
    ) -> impl Future<Output = Result<Write>> + Send;
    /// Stores a new pending payment in its slot; `Conflict` if the slot already holds something.
    fn put_payment(
        &self,
        payment: &Payment,
        fingerprint: &str,
    ) -> impl Future<Output = Result<Write>> + Send;
    /// Frees a device lock taken for a payment that was not stored after all (the slot turned
    /// out to hold another request's answer). Nothing happens if the lock is no longer its.
    fn release_lock(
        &self,
        code: &UniqueCode,
        payment: &PaymentId,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Keeps a final error under the slot; `Conflict` if the slot already holds something.
    fn record_rejection(
        &self,
        slot: &PaymentSlot,
        fingerprint: &str,
        response: &StoredResponse,
        at: Timestamp,
    ) -> impl Future<Output = Result<Write>> + Send;
    /// The pending payments of devices registered to `terminal`, oldest first (expired ones included;
    /// callers filter by time).
    fn pending_for_terminal(
        &self,
        terminal: &TerminalId,
    ) -> impl Future<Output = Result<Vec<Payment>>> + Send;
    /// Moves a pending payment to a final status and releases its device's lock.
    fn finish_pending(
        &self,
        payment: &Payment,
        to: PaymentStatus,
        at: Timestamp,
    ) -> impl Future<Output = Result<Write>> + Send;
    /// Counts a wrong auth code on a pending payment and its device; `Conflict` if either changed
    /// since it was read.
    fn record_wrong_code(
        &self,
        wrong: &WrongCode<'_>,
    ) -> impl Future<Output = Result<Write>> + Send;
    fn confirm(
        &self,
        confirmation: &Confirmation<'_>,
    ) -> impl Future<Output = Result<Write>> + Send;
}

/// The most messages [`Ledger::settle_group`] takes: a DynamoDB transaction holds 100 items, one of
/// which is the balance.
pub const MAX_SETTLEMENT_GROUP: usize = 99;

pub trait Ledger: Send + Sync {
    /// Settles messages of one merchant and currency together: every `confirmed` payment among
    /// them goes `confirmed → settled` with its merchant credit and payer debit (kept on the
    /// payment), and the balance gains their sum, atomically. One outcome per message, in order;
    /// a message repeated in `messages` settles once. `Err` only for the whole group (the store
    /// unavailable, or conflicts that outlasted the retries).
    fn settle_group(
        &self,
        messages: &[SettlementMessage],
        at: Timestamp,
    ) -> impl Future<Output = Result<Vec<Result<Settlement>>>> + Send;
    /// One message on its own: [`Ledger::settle_group`] of one.
    fn settle(
        &self,
        message: &SettlementMessage,
        at: Timestamp,
    ) -> impl Future<Output = Result<Settlement>> + Send {
        async move {
            self.settle_group(std::slice::from_ref(message), at)
                .await?
                .pop()
                .unwrap_or_else(|| Err(DomainError::Internal("no settlement outcome".into())))
        }
    }
    fn balances(&self, merchant: &MerchantId) -> impl Future<Output = Result<Vec<Balance>>> + Send;
}

pub trait Refunds: Send + Sync {
    fn refund_slot(
        &self,
        slot: &PaymentSlot,
    ) -> impl Future<Output = Result<Option<RefundSlotRecord>>> + Send;
    /// `Conflict` if the slot is taken, the payment is no longer settled, its refunds leave no
    /// room for this one, or another transaction held one of its items (re-read to tell which).
    fn refund(&self, refund: &NewRefund<'_>) -> impl Future<Output = Result<Write>> + Send;
    /// Keeps a final error under a refund slot; `Conflict` if the slot holds something.
    fn record_refund_rejection(
        &self,
        slot: &PaymentSlot,
        fingerprint: &str,
        response: &StoredResponse,
        at: Timestamp,
    ) -> impl Future<Output = Result<Write>> + Send;
    /// The payment's refunds, oldest first: in the order their writes committed.
    fn refunds_of(&self, payment: &PaymentId) -> impl Future<Output = Result<Vec<Refund>>> + Send;
}

/// What the webhook queue carries: which change to announce. The event's body is built when it
/// is sent, from the payment (and refund) as stored, so a message for a change that never
/// committed is found out and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMessage {
    pub event_id: EventId,
    pub event_type: EventType,
    pub payment_id: PaymentId,
    pub merchant_id: MerchantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<RefundId>,
    /// When it was sent (ms), before the change's commit: see [`ORPHAN_AFTER_MS`].
    pub sent_at_ms: i64,
}

impl EventMessage {
    /// The change of `p` to `kind`. Its id depends on the payment and the kind only, so every
    /// message sent for this change (a retried request, a redelivered settlement) has it.
    pub fn payment(kind: EventType, p: &Payment, at: Timestamp) -> Self {
        Self::of_payment(kind, &p.payment_id, &p.merchant_id, at)
    }

    pub fn of_payment(
        kind: EventType,
        payment: &PaymentId,
        merchant: &MerchantId,
        at: Timestamp,
    ) -> Self {
        Self {
            event_id: EventId::for_change(payment.requested_at(), payment.as_str(), kind),
            event_type: kind,
            payment_id: payment.clone(),
            merchant_id: merchant.clone(),
            refund_id: None,
            sent_at_ms: at.millis(),
        }
    }

    pub fn refund(r: &Refund, at: Timestamp) -> Self {
        let kind = EventType::RefundSucceeded;
        Self {
            event_id: EventId::for_change(r.created_at, r.refund_id.as_str(), kind),
            event_type: kind,
            payment_id: r.payment_id.clone(),
            merchant_id: r.merchant_id.clone(),
            refund_id: Some(r.refund_id.clone()),
            sent_at_ms: at.millis(),
        }
    }

    pub fn age_ms(&self, now: Timestamp) -> i64 {
        now.millis() - self.sent_at_ms
    }

    /// Whether the change it announces happened, judged on the payment (and refund) as stored
    /// now: a later status that can only follow it counts (settled after confirmed).
    pub fn happened(&self, payment: &Payment, refund: Option<&Refund>) -> bool {
        use PaymentStatus::*;
        payment.payment_id == self.payment_id
            && payment.merchant_id == self.merchant_id
            && match self.event_type {
                EventType::PaymentConfirmed => matches!(payment.status, Confirmed | Settled),
                EventType::PaymentSettled => payment.status == Settled,
                EventType::PaymentDeclined => payment.status == Declined,
                EventType::PaymentCanceled => payment.status == Canceled,
                EventType::PaymentFailed => payment.status == Failed,
                EventType::RefundSucceeded => refund.is_some_and(|r| {
                    Some(&r.refund_id) == self.refund_id.as_ref()
                        && r.payment_id == payment.payment_id
                }),
            }
    }
}

/// The events of a payment's changes, to be sent to its merchant's webhook endpoint.
pub trait EventQueue: Send + Sync {
    fn enqueue_event(&self, message: &EventMessage) -> impl Future<Output = Result<()>> + Send;
    /// Several events; an adapter may send them in fewer requests.
    fn enqueue_events(&self, messages: &[EventMessage]) -> impl Future<Output = Result<()>> + Send {
        async move {
            for message in messages {
                self.enqueue_event(message).await?;
            }
            Ok(())
        }
    }
}

/// A merchant's webhook endpoint; the secret is kept sealed (see `webhook::SecretSeal`).
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub url: WebhookUrl,
    pub sealed_secret: String,
    pub set_at: Timestamp,
}

pub trait WebhookEndpoints: Send + Sync {
    fn endpoint(
        &self,
        merchant: &MerchantId,
    ) -> impl Future<Output = Result<Option<WebhookEndpoint>>> + Send;
    fn put_endpoint(
        &self,
        merchant: &MerchantId,
        endpoint: &WebhookEndpoint,
    ) -> impl Future<Output = Result<()>> + Send;
    fn delete_endpoint(&self, merchant: &MerchantId) -> impl Future<Output = Result<()>> + Send;
}

/// What an event's change is read from: the payment and, for a refund's event, the refund.
pub trait EventSources: Send + Sync {
    fn event_subject(
        &self,
        payment: &PaymentId,
        refund: Option<&RefundId>,
    ) -> impl Future<Output = Result<(Option<Payment>, Option<Refund>)>> + Send;
}

/// The outcome of one try to POST an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx answer within the time limit.
    Delivered,
    /// Anything else (an error status, a redirect, no answer in time): try again later.
    Retry(String),
    /// The URL or the addresses it resolves to are not ones we send to: try again later too
    /// (the merchant may fix its endpoint or its DNS), but say so.
    Forbidden(String),
}

/// The HTTP side of webhooks: one signed POST.
pub trait WebhookTransport: Send + Sync {
    fn deliver(
        &self,
        url: &WebhookUrl,
        secret: &WebhookSecret,
        body: &[u8],
        now: Timestamp,
    ) -> impl Future<Output = Delivery> + Send;
}

pub trait SettlementQueue: Send + Sync {
    fn enqueue(&self, message: &SettlementMessage) -> impl Future<Output = Result<()>> + Send;
}

/// A payment found `confirmed` since before a cutoff (see [`StuckPayments`]): what its settlement
/// message needs, and when it was confirmed. Nothing else of the payment is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckPayment {
    pub payment_id: PaymentId,
    pub merchant_id: MerchantId,
    pub unique_code: UniqueCode,
    pub amount: Amount,
    pub currency: Currency,
    pub confirmed_at: Timestamp,
}

impl StuckPayment {
    /// Its settlement message, the one [`SettlementMessage::for_payment`] makes of the payment,
    /// sent again at `sent_at`.
    pub fn settlement_message(&self, sent_at: Timestamp) -> SettlementMessage {
        SettlementMessage {
            payment_id: self.payment_id.clone(),
            merchant_id: self.merchant_id.clone(),
            unique_code: self.unique_code.clone(),
            amount: self.amount,
            currency: self.currency,
            sent_at_ms: sent_at.millis(),
        }
    }

    /// How long it has been confirmed at `now`, in whole seconds.
    pub fn confirmed_for_seconds(&self, now: Timestamp) -> i64 {
        (now.millis() - self.confirmed_at.millis()).div_euclid(1000)
    }
}

/// Where a scan stopped, to go on from there: opaque to everyone but the adapter that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor(String);

impl ScanCursor {
    pub fn new(position: impl Into<String>) -> Self {
        Self(position.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One page of a scan for stuck payments: those it found, and where the next page starts (none
/// when the scan reached the end).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StuckPage {
    pub payments: Vec<StuckPayment>,
    pub next: Option<ScanCursor>,
    /// The read capacity units the page cost, when the store says (0 otherwise).
    pub read_units: f64,
}

/// Payments that stay `confirmed`: their settlement never took (its message was lost, or sits in
/// the dead-letter queue). No index knows payments by status, so this reads the whole table a
/// page at a time; a caller bounds how many pages it reads.
pub trait StuckPayments: Send + Sync {
    /// One page of the payments `confirmed` at a time before `cutoff` (and still `confirmed`),
    /// starting at `after` (the start of the table when `None`). A page may find none and still
    /// have a next one.
    fn confirmed_before(
        &self,
        cutoff: Timestamp,
        after: Option<&ScanCursor>,
    ) -> impl Future<Output = Result<StuckPage>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_refusal_is_its_error_under_the_same_code() {
        for r in FinalRefusal::ALL {
            assert_eq!(FinalRefusal::of(&r.error()), Some(r));
            assert_eq!(FinalRefusal::from_code(r.code()), Some(r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.code())
            );
            let kept = StoredResponse::of(&r.error()).unwrap();
            assert_eq!(kept.error(), DomainError::from(r));
        }
        assert_eq!(FinalRefusal::from_code("internal"), None);
        for e in [
            DomainError::Internal("x".into()),
            DomainError::Unavailable("x".into()),
            DomainError::IdempotencyKeyInUse,
        ] {
            assert_eq!(StoredResponse::of(&e), None, "{e:?}");
        }
    }
}

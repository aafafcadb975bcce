//! DynamoDB item shapes, kept apart from domain types and converted at the boundary.
//!
//! One table, string keys `pk`/`sk`, one sparse keys-only index `gsi1`: the devices of a
//! terminal. Only registration writes it, so a payment never pays for an index write.
//! See docs/DATA_MODEL.md for the access patterns.

use serde::{Deserialize, Serialize};
use twochan_domain::{
    Counter, DomainError, MerchantId, Payment, PaymentId, PaymentSlot, PaymentStatus, Timestamp,
    UniqueCode,
    crypto::SecretHash,
    ports::{Device, FinalRefusal, Registration, StoredResponse, TerminalSession},
    refund::Refund,
};

pub fn merchant_pk(id: &str) -> String {
    format!("MERCHANT#{id}")
}
pub fn api_key_pk(hash: &str) -> String {
    format!("APIKEY#{hash}")
}
pub fn token_pk(hash: &str) -> String {
    format!("TOKEN#{hash}")
}
pub fn device_pk(code: &str) -> String {
    format!("DEVICE#{code}")
}
/// A payment lives in its slot (the merchant's idempotency key): its id's random part.
pub fn slot_pk(slot: &PaymentSlot) -> String {
    format!("PAYMENT#{}", slot.key())
}
pub fn payment_pk(id: &PaymentId) -> String {
    slot_pk(&id.slot())
}
pub fn terminal_gsi_pk(terminal: &str) -> String {
    format!("TERMINAL#{terminal}")
}
/// A terminal's own item (how many devices it holds) shares the index's key spelling.
pub fn terminal_pk(terminal: &str) -> String {
    terminal_gsi_pk(terminal)
}
/// A refund lives in its slot, like a payment: its id's random part.
pub fn refund_slot_pk(slot: &PaymentSlot) -> String {
    format!("REFUND#{}", slot.key())
}
pub fn challenge_pk(challenge: &str) -> String {
    format!("CHALLENGE#{challenge}")
}
pub fn balance_sk(currency: &str) -> String {
    format!("BALANCE#{currency}")
}

pub const SK_MERCHANT: &str = "MERCHANT";
pub const SK_API_KEY: &str = "APIKEY";
pub const SK_TOKEN: &str = "TOKEN";
pub const SK_DEVICE: &str = "DEVICE";
pub const SK_PAYMENT: &str = "PAYMENT";
pub const SK_TERMINAL: &str = "TERMINAL";
pub const SK_CHALLENGE: &str = "CHALLENGE";
pub const SK_REFUND: &str = "REFUND";
pub const SK_WEBHOOK: &str = "WEBHOOK";
pub const BALANCE_PREFIX: &str = "BALANCE#";

fn corrupt(what: &str, e: impl std::fmt::Display) -> DomainError {
    DomainError::Internal(format!("stored {what} is malformed: {e}"))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MerchantItem {
    pub pk: String,
    pub sk: String,
    pub merchant_id: String,
    pub key_hash: String,
    pub updated_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApiKeyItem {
    pub pk: String,
    pub sk: String,
    pub merchant_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenItem {
    pub pk: String,
    pub sk: String,
    pub terminal_id: String,
    pub unique_code: String,
    pub issued_at: i64,
}

impl TryFrom<TokenItem> for TerminalSession {
    type Error = DomainError;
    fn try_from(t: TokenItem) -> Result<Self, DomainError> {
        Ok(Self {
            terminal_id: t.terminal_id.try_into().map_err(|e| corrupt("token", e))?,
            unique_code: t.unique_code.try_into().map_err(|e| corrupt("token", e))?,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceItem {
    pub pk: String,
    pub sk: String,
    pub unique_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<i64>,
    #[serde(default)]
    pub last_counter: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_payment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_expires_at: Option<i64>,
    #[serde(default)]
    pub failed_auth: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<i64>,
    /// `TERMINAL#<terminal>` while registered: the keys-only index of a terminal's devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi1pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi1sk: Option<String>,
}

impl TryFrom<DeviceItem> for Device {
    type Error = DomainError;
    fn try_from(d: DeviceItem) -> Result<Self, DomainError> {
        let registration = match (d.terminal_id, d.token_hash, d.registered_at) {
            (Some(t), Some(h), Some(at)) => Some(Registration {
                terminal_id: t.try_into().map_err(|e| corrupt("device", e))?,
                token_hash: SecretHash::from_stored(h),
                registered_at: Timestamp::from_millis(at),
            }),
            (None, None, None) => None,
            _ => return Err(corrupt("device", "partial registration")),
        };
        let pending = match (d.pending_payment_id, d.pending_expires_at) {
            (Some(p), Some(at)) => Some((
                p.try_into().map_err(|e| corrupt("device", e))?,
                Timestamp::from_millis(at),
            )),
            (None, None) => None,
            _ => return Err(corrupt("device", "partial pending lock")),
        };
        Ok(Self {
            unique_code: d.unique_code.try_into().map_err(|e| corrupt("device", e))?,
            registration,
            last_counter: Counter::new(d.last_counter),
            pending,
            failed_auth: d.failed_auth,
            locked_until: d.locked_until.map(Timestamp::from_millis),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PaymentItem {
    pub pk: String,
    pub sk: String,
    pub payment_id: String,
    pub status: String,
    pub unique_code: String,
    pub terminal_id: String,
    pub merchant_id: String,
    pub pos_id: String,
    pub amount: u64,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub challenge: String,
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<i64>,
    #[serde(default)]
    pub failed_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<String>,
    /// The fingerprint of the request that created it: what an idempotent retry must match.
    pub request_fingerprint: String,
    /// The two legs of the journal entry settlement posts (amount and currency are the
    /// payment's, the time is `settled_at`): `merchant:<id>` credited, `device:<code>` debited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debit_account: Option<String>,
    /// The sum of its refunds, and their ids in the order they were made.
    #[serde(default)]
    pub refunded_amount: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refund_ids: Vec<String>,
}

impl PaymentItem {
    pub fn new(p: &Payment, request_fingerprint: &str) -> Self {
        Self {
            pk: payment_pk(&p.payment_id),
            sk: SK_PAYMENT.into(),
            payment_id: p.payment_id.to_string(),
            status: p.status.as_str().into(),
            unique_code: p.unique_code.to_string(),
            terminal_id: p.terminal_id.to_string(),
            merchant_id: p.merchant_id.to_string(),
            pos_id: p.pos_id.to_string(),
            amount: p.amount.minor_units(),
            currency: p.currency.code().into(),
            reference: p.reference.as_ref().map(|r| r.as_str().to_owned()),
            challenge: p.challenge.as_str().into(),
            created_at: p.created_at.millis(),
            expires_at: p.expires_at.millis(),
            confirmed_at: p.confirmed_at.map(Timestamp::millis),
            settled_at: p.settled_at.map(Timestamp::millis),
            failed_attempts: p.failed_attempts,
            confirmation: p.confirmation.clone(),
            request_fingerprint: request_fingerprint.into(),
            credit_account: None,
            debit_account: None,
            refunded_amount: p.refunded_amount,
            refund_ids: Vec::new(),
        }
    }
}

impl TryFrom<PaymentItem> for Payment {
    type Error = DomainError;
    fn try_from(i: PaymentItem) -> Result<Self, DomainError> {
        let c = |e: DomainError| corrupt("payment", e);
        Ok(Self {
            payment_id: i.payment_id.try_into().map_err(c)?,
            status: PaymentStatus::try_from(i.status.as_str()).map_err(c)?,
            unique_code: i.unique_code.try_into().map_err(c)?,
            terminal_id: i.terminal_id.try_into().map_err(c)?,
            merchant_id: i.merchant_id.try_into().map_err(c)?,
            pos_id: i.pos_id.try_into().map_err(c)?,
            amount: i.amount.try_into().map_err(c)?,
            currency: i.currency.try_into().map_err(c)?,
            reference: i.reference.map(TryInto::try_into).transpose().map_err(c)?,
            challenge: i.challenge.try_into().map_err(c)?,
            created_at: Timestamp::from_millis(i.created_at),
            expires_at: Timestamp::from_millis(i.expires_at),
            confirmed_at: i.confirmed_at.map(Timestamp::from_millis),
            settled_at: i.settled_at.map(Timestamp::from_millis),
            failed_attempts: i.failed_attempts,
            confirmation: i.confirmation,
            refunded_amount: i.refunded_amount,
        })
    }
}

/// The attribute that every kept refusal has and nothing else a slot holds: it tells them apart.
pub const REJECTED_AT: &str = "rejected_at";

/// A final refusal kept under a payment or refund slot, so that a retry with the same key gets
/// it again: the refusal's contract code, not its rendering (the transport renders it again).
#[derive(Debug, Serialize, Deserialize)]
pub struct RejectedItem {
    pub pk: String,
    pub sk: String,
    pub request_fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_code: Option<String>,
    /// An item without `rejected_code` keeps the refusal as the JSON answer it was given as
    /// (with `rejected_status`): the refusal is that answer's `error.code`.
    #[serde(default, skip_serializing)]
    pub rejected_body: Option<String>,
    pub rejected_at: i64,
}

impl RejectedItem {
    pub fn new(
        pk: String,
        sk: &str,
        fingerprint: &str,
        response: &StoredResponse,
        at: Timestamp,
    ) -> Self {
        Self {
            pk,
            sk: sk.into(),
            request_fingerprint: fingerprint.into(),
            rejected_code: Some(response.refusal.code().into()),
            rejected_body: None,
            rejected_at: at.millis(),
        }
    }

    pub fn response(&self) -> Result<StoredResponse, DomainError> {
        let code = match (&self.rejected_code, &self.rejected_body) {
            (Some(code), _) => code.clone(),
            (None, Some(body)) => serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .ok_or_else(|| corrupt("rejection", "no error code in its answer"))?,
            (None, None) => return Err(corrupt("rejection", "no refusal")),
        };
        FinalRefusal::from_code(&code)
            .map(|refusal| StoredResponse { refusal })
            .ok_or_else(|| corrupt("rejection", format!("{code} is not a kept refusal")))
    }
}

/// The journal's account of a merchant (credited by settlement, debited by a refund).
pub fn merchant_account(merchant: &MerchantId) -> String {
    format!("merchant:{merchant}")
}

/// The journal's account of a payer's device (debited by settlement, credited by a refund).
pub fn device_account(code: &UniqueCode) -> String {
    format!("device:{code}")
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BalanceItem {
    pub pk: String,
    pub sk: String,
    pub currency: String,
    #[serde(default)]
    pub settled_amount: u64,
    #[serde(default)]
    pub settled_count: u64,
    #[serde(default)]
    pub refunded_amount: u64,
}

/// A merchant's webhook endpoint: its URL and its secret, sealed with a key derived from the
/// issuer master key (so a copy of the table alone does not give it away).
#[derive(Debug, Serialize, Deserialize)]
pub struct WebhookItem {
    pub pk: String,
    pub sk: String,
    pub url: String,
    pub sealed_secret: String,
    pub set_at: i64,
}

/// A refund, in its slot (the merchant's refund idempotency key), with its journal legs: the
/// merchant's account debited and the payer's credited, by the refund's amount and currency.
#[derive(Debug, Serialize, Deserialize)]
pub struct RefundItem {
    pub pk: String,
    pub sk: String,
    pub refund_id: String,
    pub payment_id: String,
    pub merchant_id: String,
    pub amount: u64,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: i64,
    pub request_fingerprint: String,
    pub debit_account: String,
    pub credit_account: String,
}

impl RefundItem {
    pub fn new(r: &Refund, payer: &UniqueCode, request_fingerprint: &str) -> Self {
        Self {
            pk: refund_slot_pk(&r.refund_id.slot()),
            sk: SK_REFUND.into(),
            refund_id: r.refund_id.to_string(),
            payment_id: r.payment_id.to_string(),
            merchant_id: r.merchant_id.to_string(),
            amount: r.amount.minor_units(),
            currency: r.currency.code().into(),
            reason: r.reason.as_ref().map(|x| x.as_str().to_owned()),
            created_at: r.created_at.millis(),
            request_fingerprint: request_fingerprint.into(),
            debit_account: merchant_account(&r.merchant_id),
            credit_account: device_account(payer),
        }
    }
}

impl TryFrom<RefundItem> for Refund {
    type Error = DomainError;
    fn try_from(i: RefundItem) -> Result<Self, DomainError> {
        let c = |e: DomainError| corrupt("refund", e);
        Ok(Self {
            refund_id: i.refund_id.try_into().map_err(c)?,
            payment_id: i.payment_id.try_into().map_err(c)?,
            merchant_id: i.merchant_id.try_into().map_err(c)?,
            amount: i.amount.try_into().map_err(c)?,
            currency: i.currency.try_into().map_err(c)?,
            reason: i.reason.map(TryInto::try_into).transpose().map_err(c)?,
            created_at: Timestamp::from_millis(i.created_at),
        })
    }
}

/// A registration challenge, until it is used (deleted) or DynamoDB's TTL removes it. Expiry is
/// checked in the condition that uses it; `ttl` (seconds) is only housekeeping.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChallengeItem {
    pub pk: String,
    pub sk: String,
    pub unique_code: String,
    pub expires_at: i64,
    pub ttl: i64,
}

/// A terminal: how many devices are registered to it. Registration and deregistration keep the
/// count in their transactions; a terminal holding a device belongs to the phone that holds its
/// tokens (`RegistrationKind::decide`).
#[derive(Debug, Serialize, Deserialize)]
pub struct TerminalItem {
    pub pk: String,
    pub sk: String,
    #[serde(default)]
    pub devices: i64,
}

impl TerminalItem {
    /// A count below zero would be a bug; read as none.
    pub fn device_count(&self) -> u32 {
        u32::try_from(self.devices.max(0)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use serde_dynamo::aws_sdk_dynamodb_1::{from_item, to_item};
    use twochan_domain::ports::FinalRefusal;

    use super::*;

    #[test]
    fn a_kept_refusal_is_stored_as_its_code_and_read_back() {
        for refusal in FinalRefusal::ALL {
            let kept = StoredResponse { refusal };
            let item = RejectedItem::new(
                "PAYMENT#x".into(),
                SK_PAYMENT,
                "fp",
                &kept,
                Timestamp::from_millis(7),
            );
            let raw: std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> =
                to_item(&item).unwrap();
            assert!(raw.contains_key(REJECTED_AT));
            assert_eq!(
                raw.get("rejected_code").and_then(|v| v.as_s().ok()),
                Some(&refusal.code().to_owned())
            );
            let back: RejectedItem = from_item(raw).unwrap();
            assert_eq!(back.response().unwrap(), kept);
        }
    }

    #[test]
    fn a_refusal_kept_as_its_rendered_answer_reads_as_its_code() {
        let rendered = |body: &str| RejectedItem {
            pk: "REFUND#x".into(),
            sk: SK_REFUND.into(),
            request_fingerprint: "fp".into(),
            rejected_code: None,
            rejected_body: Some(body.into()),
            rejected_at: 1,
        };
        let body = r#"{"error":{"code":"payment_not_settled","message":"only a settled payment can be refunded"}}"#;
        assert_eq!(
            rendered(body).response().unwrap().refusal,
            FinalRefusal::PaymentNotSettled
        );
        for bad in ["{}", "nope", r#"{"error":{"code":"internal"}}"#] {
            assert!(rendered(bad).response().is_err(), "{bad}");
        }
    }
}

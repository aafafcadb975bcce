//! The payment and its state machine. Every allowed transition is listed in [`PaymentStatus::can_become`].

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::crypto::sha256_hex;
use crate::error::DomainError;
use crate::ids::{
    AuthCode, Challenge, Counter, MerchantId, PaymentId, PosId, Reference, TerminalId, UniqueCode,
};
use crate::money::{Amount, Currency};

/// Wrong auth codes a payment tolerates; the last of them fails it.
pub const MAX_AUTH_ATTEMPTS: u32 = 5;
/// Wrong auth codes in a row a device tolerates across all its payments before it is locked:
/// without it, a POS could open payment after payment and guess 5 codes on each.
pub const DEVICE_MAX_FAILURES: u32 = 10;
/// How long a device stays locked. Every further wrong code while at the limit locks it again
/// (RFC 4226 §7.3 throttling); only an accepted confirmation resets the count.
pub const DEVICE_LOCKOUT_SECONDS: i64 = 15 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Confirmed,
    Settled,
    Declined,
    Canceled,
    Expired,
    Failed,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 7] = [
        Self::Pending,
        Self::Confirmed,
        Self::Settled,
        Self::Declined,
        Self::Canceled,
        Self::Expired,
        Self::Failed,
    ];

    /// Final statuses never change again.
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Pending | Self::Confirmed => false,
            Self::Settled | Self::Declined | Self::Canceled | Self::Expired | Self::Failed => true,
        }
    }

    /// The state machine: `pending → confirmed → settled`; `pending → declined | canceled | expired | failed`.
    pub fn can_become(self, next: PaymentStatus) -> bool {
        use PaymentStatus::*;
        matches!(
            (self, next),
            (Pending, Confirmed | Declined | Canceled | Expired | Failed) | (Confirmed, Settled)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Settled => "settled",
            Self::Declined => "declined",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }
}

impl TryFrom<&str> for PaymentStatus {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| DomainError::Internal(format!("unknown stored payment status {s:?}")))
    }
}

/// A payment as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: PaymentId,
    pub status: PaymentStatus,
    pub unique_code: UniqueCode,
    /// The terminal the device was registered to when the payment was requested.
    pub terminal_id: TerminalId,
    pub merchant_id: MerchantId,
    pub pos_id: PosId,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<Reference>,
    pub challenge: Challenge,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub confirmed_at: Option<Timestamp>,
    pub settled_at: Option<Timestamp>,
    pub failed_attempts: u32,
    /// Fingerprint of the confirmation that was accepted, so that its exact repeat is answered 200.
    pub confirmation: Option<String>,
    /// The sum of its succeeded refunds (minor units); never above `amount`.
    pub refunded_amount: u64,
}

/// What a confirm request may do to a payment, before its counter and code are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmGate {
    /// Pending and unexpired: check counter and code.
    Proceed,
    /// The exact confirmation that was already accepted: answer with the current payment.
    Repeat,
}

impl Payment {
    /// A new pending payment; its id's time part is when it was requested.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        payment_id: PaymentId,
        unique_code: UniqueCode,
        terminal_id: TerminalId,
        merchant_id: MerchantId,
        pos_id: PosId,
        amount: Amount,
        currency: Currency,
        reference: Option<Reference>,
        pending_ttl_seconds: i64,
    ) -> Self {
        let created_at = payment_id.requested_at().truncated_to_second();
        Self {
            payment_id,
            status: PaymentStatus::Pending,
            unique_code,
            terminal_id,
            merchant_id,
            pos_id,
            amount,
            currency,
            reference,
            challenge: Challenge::generate(),
            created_at,
            expires_at: created_at.plus_seconds(pending_ttl_seconds),
            confirmed_at: None,
            settled_at: None,
            failed_attempts: 0,
            confirmation: None,
            refunded_amount: 0,
        }
    }

    /// The payment as its creation answered it: the body an idempotent replay repeats.
    pub fn as_created(&self) -> Self {
        Self {
            status: PaymentStatus::Pending,
            confirmed_at: None,
            settled_at: None,
            failed_attempts: 0,
            confirmation: None,
            refunded_amount: 0,
            ..self.clone()
        }
    }

    /// Whether the pending lifetime is over at `now` ("past `expires_at`").
    pub fn is_past_expiry(&self, now: Timestamp) -> bool {
        now > self.expires_at
    }

    /// The status a reader sees: a pending payment past its expiry is `expired` even before any
    /// write has recorded it.
    pub fn effective_status(&self, now: Timestamp) -> PaymentStatus {
        if self.status == PaymentStatus::Pending && self.is_past_expiry(now) {
            PaymentStatus::Expired
        } else {
            self.status
        }
    }

    /// Fingerprint of a confirmation (auth code and counter), kept to recognise its exact repeat.
    pub fn confirmation_fingerprint(code: &AuthCode, counter: Counter) -> String {
        sha256_hex(format!("{}|{counter}", hex::encode(code.bytes())).as_bytes())
    }

    /// The status and expiry rules of `POST /confirm`, in the contract's order.
    pub fn gate_confirm(
        &self,
        now: Timestamp,
        fingerprint: &str,
    ) -> Result<ConfirmGate, DomainError> {
        match self.status {
            PaymentStatus::Pending if self.is_past_expiry(now) => Err(DomainError::PaymentExpired),
            PaymentStatus::Pending => Ok(ConfirmGate::Proceed),
            PaymentStatus::Confirmed | PaymentStatus::Settled
                if self.confirmation.as_deref() == Some(fingerprint) =>
            {
                Ok(ConfirmGate::Repeat)
            }
            PaymentStatus::Failed if self.failed_attempts >= MAX_AUTH_ATTEMPTS => {
                Err(DomainError::TooManyAttempts)
            }
            PaymentStatus::Expired => Err(DomainError::PaymentExpired),
            _ => Err(DomainError::PaymentNotPending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(now: Timestamp) -> Payment {
        Payment::new(
            PaymentId::generate(now),
            UniqueCode::try_from("beacon-0001").unwrap(),
            TerminalId::try_from("phone-alice-01").unwrap(),
            MerchantId::try_from("m_coffee_42").unwrap(),
            PosId::try_from("pos-1").unwrap(),
            Amount::try_from(450).unwrap(),
            Currency::try_from("KRW").unwrap(),
            None,
            120,
        )
    }

    #[test]
    fn transitions_are_exactly_the_contracts() {
        use PaymentStatus::*;
        let allowed = [
            (Pending, Confirmed),
            (Pending, Declined),
            (Pending, Canceled),
            (Pending, Expired),
            (Pending, Failed),
            (Confirmed, Settled),
        ];
        for from in PaymentStatus::ALL {
            for to in PaymentStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
            // A final status has no way out.
            if from.is_terminal() {
                assert!(PaymentStatus::ALL.iter().all(|t| !from.can_become(*t)));
            }
        }
        assert!(!Pending.is_terminal() && !Confirmed.is_terminal());
    }

    #[test]
    fn status_round_trips_through_its_name() {
        for s in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::try_from(s.as_str()).unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(PaymentStatus::try_from("PENDING").is_err());
    }

    #[test]
    fn expiry_is_strictly_after_expires_at() {
        let now = Timestamp::from_millis(1_795_752_306_789);
        let p = payment(now);
        assert_eq!(p.expires_at, Timestamp::from_millis(1_795_752_426_000));
        assert_eq!(p.effective_status(p.expires_at), PaymentStatus::Pending);
        let later = Timestamp::from_millis(p.expires_at.millis() + 1);
        assert_eq!(p.effective_status(later), PaymentStatus::Expired);
        assert_eq!(p.gate_confirm(later, "x"), Err(DomainError::PaymentExpired));
        assert_eq!(p.gate_confirm(now, "x"), Ok(ConfirmGate::Proceed));
    }

    #[test]
    fn only_the_exact_accepted_confirmation_is_a_repeat() {
        let now = Timestamp::from_millis(1_000_000);
        let mut p = payment(now);
        p.status = PaymentStatus::Confirmed;
        p.confirmation = Some("abc".into());
        assert_eq!(p.gate_confirm(now, "abc"), Ok(ConfirmGate::Repeat));
        assert_eq!(
            p.gate_confirm(now, "abd"),
            Err(DomainError::PaymentNotPending)
        );
        p.status = PaymentStatus::Settled;
        assert_eq!(p.gate_confirm(now, "abc"), Ok(ConfirmGate::Repeat));
        p.status = PaymentStatus::Failed;
        p.failed_attempts = MAX_AUTH_ATTEMPTS;
        assert_eq!(
            p.gate_confirm(now, "abc"),
            Err(DomainError::TooManyAttempts)
        );
        p.status = PaymentStatus::Declined;
        assert_eq!(
            p.gate_confirm(now, "abc"),
            Err(DomainError::PaymentNotPending)
        );
    }
}

//! The one error enum of the product.
//!
//! Each variant is a contract error code. Transports map it exactly once: HTTP status and JSON body
//! in `twochan-api`, retryable or not for SQS in the settlement function (see [`DomainError::is_retryable`]).

/// Every way a request can fail, named as the contract names it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DomainError {
    /// Malformed input; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("missing, malformed or unknown bearer token")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("no device is registered with this unique_code")]
    UnknownDevice,
    #[error("this unique_code is registered to another terminal")]
    DeviceAlreadyRegistered,
    #[error(
        "this terminal_id holds another device; registering to it needs a current token of that terminal"
    )]
    TerminalIdTaken,
    #[error("another payment is pending on this unique_code")]
    DeviceBusy,
    #[error("a request with this Idempotency-Key is still in flight")]
    IdempotencyKeyInUse,
    #[error("the payment is not pending")]
    PaymentNotPending,
    #[error("only a settled payment can be refunded")]
    PaymentNotSettled,
    #[error("the refunds of a payment cannot sum above its amount")]
    RefundExceedsPayment,
    #[error("the payment has expired")]
    PaymentExpired,
    /// The body is over the transport's limit (the transport names it).
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("a request body must be sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error(
        "the registration proof does not match this unique_code, terminal_id and a current challenge of this code"
    )]
    InvalidRegistrationProof,
    #[error("the beacon proof is not this device's for the current time")]
    InvalidBeaconProof,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("the auth code does not match this payment")]
    InvalidAuthCode,
    #[error(
        "counter must be greater than the device's last accepted counter and at most 1000 above it"
    )]
    StaleCounter,
    #[error("too many wrong auth codes; the payment has failed")]
    TooManyAttempts,
    /// Too many wrong codes in a row on one device (across payments): confirmations are refused
    /// until `until`. Same contract code as [`DomainError::TooManyAttempts`].
    #[error("too many wrong auth codes on this device; try again later")]
    DeviceLocked { until: crate::Timestamp },
    /// A bug or broken invariant on our side. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
    /// A dependency (DynamoDB, SQS) failed or timed out; nothing was half-done and a retry is safe.
    /// The detail is logged, never sent.
    #[error("a dependency is unavailable; retry later")]
    Unavailable(String),
}

impl DomainError {
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::InvalidRequest(format!("{field}: {why}"))
    }

    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::UnknownDevice => "unknown_device",
            Self::DeviceAlreadyRegistered => "device_already_registered",
            Self::TerminalIdTaken => "terminal_id_taken",
            Self::DeviceBusy => "device_busy",
            Self::IdempotencyKeyInUse => "idempotency_key_in_use",
            Self::PaymentNotPending => "payment_not_pending",
            Self::PaymentNotSettled => "payment_not_settled",
            Self::RefundExceedsPayment => "refund_exceeds_payment",
            Self::PaymentExpired => "payment_expired",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidRegistrationProof => "invalid_registration_proof",
            Self::InvalidBeaconProof => "invalid_beacon_proof",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InvalidAuthCode => "invalid_auth_code",
            Self::StaleCounter => "stale_counter",
            Self::TooManyAttempts | Self::DeviceLocked { .. } => "too_many_attempts",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Whether retrying the same work later can succeed (SQS redelivery, client retry).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::IdempotencyKeyInUse)
    }
}

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_the_message() {
        let e = DomainError::Internal("secret table name".into());
        assert_eq!(e.to_string(), "internal error");
        let e = DomainError::Unavailable("dynamodb: timeout at 10.0.0.1".into());
        assert!(!e.to_string().contains("10.0.0.1"));
    }

    #[test]
    fn only_dependency_failures_are_retryable() {
        assert!(DomainError::Unavailable(String::new()).is_retryable());
        assert!(!DomainError::InvalidAuthCode.is_retryable());
        assert!(!DomainError::Internal(String::new()).is_retryable());
    }
}

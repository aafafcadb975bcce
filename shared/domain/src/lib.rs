//! The domain of two-channel payments.
//!
//! Everything here is pure: parsing of identifiers and money (parse, don't validate), the key
//! derivation and HMAC codes of the contract, the payment state machine and the one error enum.
//! Adapters (DynamoDB, SQS) and transports (Lambda, HTTP) live in other crates and depend on this
//! one, never the other way round.

pub mod clock;
pub mod crypto;
pub mod device;
pub mod error;
pub mod ids;
pub mod money;
pub mod payment;
pub mod ports;
pub mod refund;
pub mod webhook;

pub use clock::Timestamp;
pub use error::{DomainError, Result};
pub use ids::{
    AuthCode, BeaconProof, Challenge, Counter, IdempotencyKey, MerchantId, PaymentId, PaymentSlot,
    PosId, Reason, Reference, RefundId, TerminalId, UniqueCode,
};
pub use money::{Amount, Currency};
pub use payment::{Payment, PaymentStatus};

//! Identifiers of contract v1, each a newtype that can only hold a well-formed value.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Defines a string newtype of `min..=max` chars of `[A-Za-z0-9_-]`, parsed with `TryFrom`.
macro_rules! charset_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The field name used in error messages.
            pub const FIELD: &'static str = $field;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;

            fn try_from(s: String) -> Result<Self, DomainError> {
                let n = s.chars().count();
                if !($min..=$max).contains(&n) || !s.chars().all(is_id_char) {
                    return Err(DomainError::invalid(
                        $field,
                        concat!("must be ", $min, "-", $max, " characters of [A-Za-z0-9_-]"),
                    ));
                }
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = DomainError;

            fn try_from(s: &str) -> Result<Self, DomainError> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

charset_id!(
    /// The code a device broadcasts as its beacon.
    UniqueCode, "unique_code", 8, 64
);
charset_id!(
    /// The phone (or app instance) a device is registered to.
    TerminalId, "terminal_id", 8, 64
);
charset_id!(
    /// A merchant.
    MerchantId, "merchant_id", 3, 64
);
charset_id!(
    /// One of a merchant's POS terminals.
    PosId, "pos_id", 3, 64
);

/// `pay_` + a ULID (26 chars of Crockford base32, upper case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentId(String);

impl PaymentId {
    pub const FIELD: &'static str = "payment_id";

    /// A new id whose ULID carries `at` as its time part.
    pub fn generate(at: crate::Timestamp) -> Self {
        let mut random = [0u8; 16];
        crate::crypto::fill_random(&mut random);
        let ulid = ulid::Ulid::from_parts(at.millis().max(0) as u64, u128::from_be_bytes(random));
        Self(format!("pay_{ulid}"))
    }

    /// The payment of `slot` requested at `at`: the ULID's time part is `at`, its 80-bit random
    /// part is the slot. Twin requests (same merchant and key) therefore share where they store.
    pub fn in_slot(at: crate::Timestamp, slot: &PaymentSlot) -> Self {
        let ulid = ulid::Ulid::from_parts(at.millis().max(0) as u64, slot.0);
        Self(format!("pay_{ulid}"))
    }

    /// The slot the payment is stored under: the ULID's random part.
    pub fn slot(&self) -> PaymentSlot {
        let ulid: ulid::Ulid = self.0["pay_".len()..]
            .parse()
            .expect("a parsed payment id is a ULID");
        PaymentSlot(ulid.random())
    }

    /// The ULID's time part: when the payment was first requested.
    pub fn requested_at(&self) -> crate::Timestamp {
        let ulid: ulid::Ulid = self.0["pay_".len()..]
            .parse()
            .expect("a parsed payment id is a ULID");
        crate::Timestamp::from_millis(ulid.timestamp_ms() as i64)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a payment request is stored: 80 bits of SHA-256 over its merchant and idempotency key.
/// A retry, or a concurrent twin, of the same request lands on the same item, so the payment
/// itself is the idempotency record: no separate write per payment. (Unkeyed on purpose: a
/// payment id is not a secret, and another merchant would need a second preimage on 80 bits to
/// occupy a slot; see docs/DATA_MODEL.md.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PaymentSlot(u128);

impl PaymentSlot {
    pub fn of(merchant: &MerchantId, key: &IdempotencyKey) -> Self {
        Self::in_namespace("2ch/payment-slot/v1", merchant, key)
    }

    /// The slot of a refund request: the same derivation in the refunds' own namespace, so a
    /// key used for a payment and for a refund names two slots.
    pub fn of_refund(merchant: &MerchantId, key: &IdempotencyKey) -> Self {
        Self::in_namespace("2ch/refund-slot/v1", merchant, key)
    }

    fn in_namespace(namespace: &str, merchant: &MerchantId, key: &IdempotencyKey) -> Self {
        let digest = crate::crypto::sha256(
            format!("{namespace}|{}|{}", merchant.as_str(), key.as_str()).as_bytes(),
        );
        let mut random = [0u8; 16];
        random[6..].copy_from_slice(&digest[..10]);
        Self(u128::from_be_bytes(random))
    }

    /// The 16 Crockford base-32 characters that end the ULID of its payments.
    pub fn key(&self) -> String {
        ulid::Ulid::from_parts(0, self.0).to_string()[10..].to_owned()
    }
}

impl TryFrom<String> for PaymentId {
    type Error = DomainError;

    fn try_from(s: String) -> Result<Self, DomainError> {
        let ok = s.strip_prefix("pay_").is_some_and(is_ulid);
        if ok {
            Ok(Self(s))
        } else {
            Err(DomainError::invalid(
                "payment_id",
                "must be pay_ followed by a 26-character ULID",
            ))
        }
    }
}

/// `re_` + a ULID whose random part is the refund's slot (its merchant's idempotency key in the
/// refunds' own namespace), like a payment id's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefundId(String);

impl RefundId {
    pub fn in_slot(at: crate::Timestamp, slot: &PaymentSlot) -> Self {
        let ulid = ulid::Ulid::from_parts(at.millis().max(0) as u64, slot.0);
        Self(format!("re_{ulid}"))
    }

    pub fn slot(&self) -> PaymentSlot {
        let ulid: ulid::Ulid = self.0["re_".len()..]
            .parse()
            .expect("a parsed refund id is a ULID");
        PaymentSlot(ulid.random())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RefundId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        if s.strip_prefix("re_").is_some_and(is_ulid) {
            Ok(Self(s))
        } else {
            Err(DomainError::invalid(
                "refund_id",
                "must be re_ followed by a 26-character ULID",
            ))
        }
    }
}

impl From<RefundId> for String {
    fn from(v: RefundId) -> String {
        v.0
    }
}

impl fmt::Display for RefundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 26 characters of Crockford base 32 as the ULID spec writes them (digits and upper-case
/// letters without I, L, O and U), the first at most '7' (the top 3 bits of a 48-bit time).
pub(crate) fn is_ulid(u: &str) -> bool {
    u.len() == 26
        && u.bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
        && u.as_bytes()[0] <= b'7'
}

impl TryFrom<&str> for PaymentId {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        Self::try_from(s.to_owned())
    }
}

impl From<PaymentId> for String {
    fn from(v: PaymentId) -> String {
        v.0
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Defines a merchant's free text shown to the payer: at most 128 printable characters.
macro_rules! merchant_text {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = 128;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, DomainError> {
                if s.chars().count() > Self::MAX_CHARS {
                    return Err(DomainError::invalid($field, "must be at most 128 characters"));
                }
                printable($field, &s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

merchant_text!(
    /// The POS's free-text reference for a payment.
    Reference, "reference"
);
merchant_text!(
    /// The merchant's free-text reason for a refund.
    Reason, "reason"
);

/// The contract's printable text (`reference`, `reason`): shown on the payer's phone, so no
/// character that can change how the rest reads or hide itself: general categories Cc
/// (controls), Cf (format: bidirectional overrides and isolates, zero-width characters, ...),
/// Zl and Zp (line and paragraph separators) and Co (private use).
pub fn printable(field: &str, s: &str) -> Result<(), DomainError> {
    use unicode_general_category::{GeneralCategory::*, get_general_category};
    match s.chars().find(|c| {
        matches!(
            get_general_category(*c),
            Control | Format | LineSeparator | ParagraphSeparator | PrivateUse
        )
    }) {
        Some(c) => Err(DomainError::invalid(
            field,
            format!(
                "must be printable text (U+{:04X} is a control, format, separator or private-use character)",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

/// A POS's `Idempotency-Key` header: 1–255 printable ASCII characters, scoped to its merchant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        if (1..=255).contains(&s.len()) && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(DomainError::invalid(
                "Idempotency-Key",
                "header must be 1-255 printable ASCII characters",
            ))
        }
    }
}

/// The server's per-payment challenge: 16 random bytes, shown as 32 lowercase hex chars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Challenge(String);

impl Challenge {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        crate::crypto::fill_random(&mut bytes);
        Self(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Challenge {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        if s.len() == 32 && is_lower_hex(&s) {
            Ok(Self(s))
        } else {
            Err(DomainError::invalid(
                "challenge",
                "must be 32 lowercase hex characters",
            ))
        }
    }
}

impl TryFrom<&str> for Challenge {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        Self::try_from(s.to_owned())
    }
}

impl From<Challenge> for String {
    fn from(v: Challenge) -> String {
        v.0
    }
}

pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl UniqueCode {
    /// How logs name a device: the first 16 hex characters of the code's SHA-256. Lines about one
    /// device can be joined, and the logs do not carry the code a stranger could look for.
    pub fn log_hash(&self) -> String {
        let mut h = crate::crypto::sha256_hex(self.as_str().as_bytes());
        h.truncate(16);
        h
    }
}

/// The rolling proof a device broadcasts beside its code: the first 8 bytes of an HMAC, as 16
/// lowercase hex characters. Compared in constant time only (no `PartialEq`).
#[derive(Clone)]
pub struct BeaconProof([u8; BeaconProof::LEN]);

impl BeaconProof {
    pub const LEN: usize = 8;

    pub fn bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Debug for BeaconProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BeaconProof(..)")
    }
}

impl TryFrom<&str> for BeaconProof {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        let mut bytes = [0u8; Self::LEN];
        if s.len() == 2 * Self::LEN
            && is_lower_hex(s)
            && hex::decode_to_slice(s, &mut bytes).is_ok()
        {
            Ok(Self(bytes))
        } else {
            Err(DomainError::invalid(
                "beacon_proof",
                "must be 16 lowercase hex characters",
            ))
        }
    }
}

/// A payment auth code as sent by a phone: 64 hex characters (an HMAC-SHA256).
///
/// Upper-case hex is accepted and folded to lower case: it carries the same bits.
#[derive(Clone)]
pub struct AuthCode([u8; 32]);

impl AuthCode {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

// Constant time, like every comparison of secrets: `==` on bytes stops at the first difference
// and would tell an attacker how much of a guess is right.
impl PartialEq for AuthCode {
    fn eq(&self, other: &Self) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }
}

impl Eq for AuthCode {}

// Auth codes are single-use secrets in flight: never print them.
impl fmt::Debug for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthCode(<redacted>)")
    }
}

impl TryFrom<&str> for AuthCode {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(DomainError::invalid(
                "auth_code",
                "must be 64 hex characters",
            ));
        }
        Ok(Self(out))
    }
}

/// The device's monotonic counter, sent as a decimal u64 string without leading zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Counter(u64);

impl Counter {
    /// How far above the last accepted counter a new one may jump.
    pub const WINDOW: u64 = 1000;

    pub const fn new(v: u64) -> Self {
        Self(v)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether `self` may follow `last`: strictly greater and at most [`Self::WINDOW`] above it.
    pub fn is_acceptable_after(self, last: Counter) -> bool {
        self.0 > last.0 && self.0 - last.0 <= Self::WINDOW
    }
}

impl TryFrom<&str> for Counter {
    type Error = DomainError;
    fn try_from(s: &str) -> Result<Self, DomainError> {
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        match s.parse::<u64>() {
            Ok(v) if canonical => Ok(Self(v)),
            _ => Err(DomainError::invalid(
                "counter",
                "must be a decimal u64 string without leading zeros",
            )),
        }
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payment_ids_of_one_slot_share_their_random_part_and_parse_back() {
        let merchant = MerchantId::try_from("m_coffee_42").unwrap();
        let key = IdempotencyKey::try_from("order-1").unwrap();
        let slot = PaymentSlot::of(&merchant, &key);
        let at = crate::Timestamp::from_millis(1_795_752_326_123);
        let id = PaymentId::in_slot(at, &slot);
        let later = PaymentId::in_slot(at.plus_seconds(5), &slot);
        assert_ne!(id, later);
        assert_eq!(id.slot(), slot);
        assert_eq!(later.slot(), slot);
        assert_eq!(id.requested_at(), at);
        assert!(id.as_str().ends_with(&slot.key()));
        // Letters outside Crockford's alphabet are not an id (not a panic further on).
        for bad in ["I", "L", "O", "U"] {
            let raw = format!("pay_0000000000000000000000000{bad}");
            assert!(PaymentId::try_from(raw.as_str()).is_err(), "{raw}");
        }
        assert_eq!(slot.key().len(), 16);
        // A well-formed id by the contract's own rules.
        assert_eq!(PaymentId::try_from(id.as_str()).unwrap(), id);
        // Other key, other merchant: other slot.
        let other_key = IdempotencyKey::try_from("order-2").unwrap();
        let other_merchant = MerchantId::try_from("m_tea_7").unwrap();
        assert_ne!(PaymentSlot::of(&merchant, &other_key), slot);
        assert_ne!(PaymentSlot::of(&other_merchant, &key), slot);
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unique_code_bounds_and_charset() {
        assert!(UniqueCode::try_from("beacon-0001").is_ok());
        assert!(UniqueCode::try_from("B7E3A9C2D4F6481A9E0C3B5D7F9A1C2E").is_ok());
        assert!(UniqueCode::try_from("short").is_err());
        assert!(UniqueCode::try_from("a".repeat(64).as_str()).is_ok());
        assert!(UniqueCode::try_from("a".repeat(65).as_str()).is_err());
        assert!(UniqueCode::try_from("beacon 0001").is_err());
        assert!(UniqueCode::try_from("beacon/0001").is_err());
        assert!(UniqueCode::try_from("béacon-0001").is_err());
        let e = UniqueCode::try_from("x").unwrap_err();
        assert!(e.to_string().starts_with("unique_code:"), "{e}");
    }

    #[test]
    fn merchant_ids_may_be_short() {
        assert!(MerchantId::try_from("m_1").is_ok());
        assert!(MerchantId::try_from("m1").is_err());
        assert!(PosId::try_from("pos").is_ok());
    }

    #[test]
    fn payment_id_shape() {
        let id = PaymentId::generate(crate::Timestamp::now());
        assert!(PaymentId::try_from(id.as_str()).is_ok(), "{id}");
        assert_eq!(id.as_str().len(), 30);
        assert!(PaymentId::try_from("pay_01JD8Y2Z5K7M9Q1R3T5V7X9ZAB").is_ok());
        assert!(PaymentId::try_from("pay_01jd8y2z5k7m9q1r3t5v7x9zab").is_err());
        assert!(PaymentId::try_from("pay_01JD8Y2Z5K7M9Q1R3T5V7X9ZA").is_err());
        assert!(PaymentId::try_from("pay_81JD8Y2Z5K7M9Q1R3T5V7X9ZAB").is_err());
        assert!(PaymentId::try_from("xay_01JD8Y2Z5K7M9Q1R3T5V7X9ZAB").is_err());
    }

    #[test]
    fn payment_ids_sort_by_time() {
        let a = PaymentId::generate(crate::Timestamp::from_millis(1_000));
        let b = PaymentId::generate(crate::Timestamp::from_millis(2_000));
        assert!(a < b);
    }

    #[test]
    fn idempotency_key_rules() {
        assert!(IdempotencyKey::try_from("k").is_ok());
        assert!(IdempotencyKey::try_from("a key with spaces ~!").is_ok());
        assert!(IdempotencyKey::try_from("").is_err());
        assert!(IdempotencyKey::try_from("k".repeat(256).as_str()).is_err());
        assert!(IdempotencyKey::try_from("tab\there").is_err());
        assert!(IdempotencyKey::try_from("ünïcode").is_err());
    }

    #[test]
    fn counter_rules() {
        assert_eq!(Counter::try_from("1").unwrap().get(), 1);
        assert_eq!(Counter::try_from("0").unwrap().get(), 0);
        assert_eq!(
            Counter::try_from("18446744073709551615").unwrap().get(),
            u64::MAX
        );
        for bad in [
            "",
            "01",
            "-1",
            "+1",
            "1.0",
            "18446744073709551616",
            " 1",
            "1e3",
            "0x10",
        ] {
            assert!(Counter::try_from(bad).is_err(), "{bad:?}");
        }
        let last = Counter::new(5);
        assert!(!Counter::new(5).is_acceptable_after(last));
        assert!(!Counter::new(4).is_acceptable_after(last));
        assert!(Counter::new(6).is_acceptable_after(last));
        assert!(Counter::new(1005).is_acceptable_after(last));
        assert!(!Counter::new(1006).is_acceptable_after(last));
        assert!(Counter::new(u64::MAX).is_acceptable_after(Counter::new(u64::MAX - 1000)));
        assert!(!Counter::new(0).is_acceptable_after(Counter::new(0)));
    }

    #[test]
    fn auth_code_parsing_and_redaction() {
        let hex64 = "5141b0e6d45bebbea9ebae5db2ed5313a52a5019c4a8eb3f397650185a4b8a8d";
        let code = AuthCode::try_from(hex64).unwrap();
        assert!(!format!("{code:?}").contains("5141"));
        assert!(AuthCode::try_from(&hex64[..63]).is_err());
        assert!(AuthCode::try_from(&format!("{}zz", &hex64[..62])[..]).is_err());
    }

    #[test]
    fn printable_text_refuses_what_can_disguise_itself() {
        for bad in [
            "pay\u{202E}gnp.exe", // right-to-left override
            "a\u{2066}b\u{2069}", // isolates
            "zero\u{200B}width",
            "join\u{200D}er",
            "bom\u{FEFF}",
            "line\u{2028}sep",
            "para\u{2029}sep",
            "private\u{E000}use",
            "plane15\u{F0000}",
            "tab\there",
            "soft\u{00AD}hyphen",
            "tag\u{E0041}",
        ] {
            assert!(Reference::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        for ok in ["Table 4 · café ☕", "주문 12", "ﷺ", "e\u{301}", "a b"] {
            assert!(Reference::try_from(ok.to_owned()).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn beacon_proof_shape() {
        assert!(BeaconProof::try_from("c34fe4c32701ac39").is_ok());
        for bad in [
            "C34FE4C32701AC39",
            "c34fe4c32701ac3",
            "c34fe4c32701ac399",
            "g34fe4c32701ac39",
            "",
        ] {
            assert!(BeaconProof::try_from(bad).is_err(), "{bad}");
        }
        assert!(
            !format!("{:?}", BeaconProof::try_from("c34fe4c32701ac39").unwrap()).contains("c34f")
        );
    }

    #[test]
    fn reference_limits() {
        assert!(Reference::try_from("x".repeat(128)).is_ok());
        assert!(Reference::try_from("é".repeat(128)).is_ok());
        assert!(Reference::try_from("x".repeat(129)).is_err());
        assert!(Reference::try_from("line\nbreak".to_owned()).is_err());
    }

    proptest! {
        #[test]
        fn unique_code_accepts_exactly_its_language(s in "\\PC{0,80}") {
            let expected = (8..=64).contains(&s.chars().count())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            prop_assert_eq!(UniqueCode::try_from(s.as_str()).is_ok(), expected);
        }

        #[test]
        fn counter_round_trips(v in any::<u64>()) {
            prop_assert_eq!(Counter::try_from(v.to_string().as_str()).unwrap().get(), v);
        }

        #[test]
        fn counter_parser_never_panics(s in "\\PC{0,30}") {
            let _ = Counter::try_from(s.as_str());
        }
    }
}

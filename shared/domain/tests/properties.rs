//! Property tests of every parser and newtype of the domain against the grammar of contract v1.
//!
//! Each newtype gets three kinds of property:
//! - values generated from the contract's grammar parse, and round-trip unchanged through
//!   `as_str`/`Display`/`String::from`/serde;
//! - values just outside the grammar (one char too many or too few, one char from outside the
//!   charset, wrong case, ...) are refused with an error naming the field;
//! - arbitrary strings never panic, and are accepted exactly when an oracle written from the
//!   contract's text (not from the implementation) says they are in the language.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256).

use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use sha2::{Digest, Sha256};
use twochan_domain::{
    Amount, AuthCode, Challenge, Counter, Currency, DomainError, IdempotencyKey, MerchantId,
    PaymentId, PaymentStatus, PosId, Reference, TerminalId, Timestamp, UniqueCode,
    crypto::{
        DeviceKey, IssuedSecret, IssuerKeys, MasterKey, PaymentBinding, SecretHash, sha256_hex,
    },
};

// ------------------------------------------------------------------ oracles from the contract

/// `[A-Za-z0-9_-]`, spelled out rather than through `char` helpers.
fn contract_id_char(c: char) -> bool {
    matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-')
}

/// "`min`–`max` chars of `[A-Za-z0-9_-]`".
fn in_id_language(s: &str, min: usize, max: usize) -> bool {
    let n = s.chars().count();
    n >= min && n <= max && s.chars().all(contract_id_char)
}

/// `pay_` + 26 chars of `[0-9A-Z]` that form a ULID (a 48-bit time: first char at most `7`).
fn in_payment_id_language(s: &str) -> bool {
    let Some(ulid) = s.strip_prefix("pay_") else {
        return false;
    };
    ulid.chars().count() == 26
        // Crockford base 32: the contract's [0-9A-Z] without I, L, O and U, which no ULID has.
        && ulid.chars().all(|c| matches!(c, '0'..='9' | 'A'..='Z') && !"ILOU".contains(c))
        && ulid.starts_with(['0', '1', '2', '3', '4', '5', '6', '7'])
}

fn is_hex_digit(c: char, upper_ok: bool) -> bool {
    matches!(c, '0'..='9' | 'a'..='f') || (upper_ok && matches!(c, 'A'..='F'))
}

/// A decimal u64 without leading zeros, compared as text (no integer parsing involved).
fn in_counter_language(s: &str) -> bool {
    const U64_MAX: &str = "18446744073709551615";
    let digits = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let canonical = s == "0" || !s.starts_with('0');
    let fits = s.len() < U64_MAX.len() || (s.len() == U64_MAX.len() && s <= U64_MAX);
    digits && canonical && fits
}

/// Unicode general category Cc: C0, DEL and C1.
fn is_cc(c: char) -> bool {
    c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c)
}

/// `reference`: at most 128 characters, no control characters (docs/CONTRACT_NOTES.md).
fn in_reference_language(s: &str) -> bool {
    s.chars().count() <= 128 && !s.chars().any(|c| is_cc(c) || is_disguise(c))
}

/// The contract's other non-printable categories, written out from the Unicode 16 tables so the
/// check does not lean on the crate under test: Cf (format), Zl, Zp and Co (private use).
fn is_disguise(c: char) -> bool {
    matches!(u32::from(c),
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F // Cf
        | 0x2028 | 0x2029 // Zl, Zp
        | 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD) // Co
}

/// `Idempotency-Key`: 1–255 printable ASCII characters.
fn in_idempotency_key_language(s: &str) -> bool {
    (1..=255).contains(&s.len()) && s.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// HMAC-SHA256 straight from the `hmac` crate, with the message assembled from the contract's text.
fn contract_hmac(key: &[u8], message: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().into()
}

fn field_of(e: &DomainError) -> String {
    match e {
        DomainError::InvalidRequest(m) => m.split(':').next().unwrap_or_default().to_owned(),
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

// ------------------------------------------------------------------ strategies

const ID_CHARSET: &str = "[A-Za-z0-9_-]";

fn id_string(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{ID_CHARSET}{{{min},{max}}}")).unwrap()
}

/// A char outside `[A-Za-z0-9_-]`: ASCII punctuation, space, controls or any non-ASCII char.
fn non_id_char() -> impl Strategy<Value = char> {
    prop_oneof![
        select(
            " !\"#$%&'()*+,./:;<=>?@[\\]^`{|}~\t\n\r\0\u{7f}"
                .chars()
                .collect::<Vec<_>>()
        ),
        any::<char>().prop_filter("not an id char", |c| !contract_id_char(*c)),
    ]
}

/// A valid id with one char replaced by (or, at the end, followed by) a char outside the charset.
fn id_with_bad_char(min: usize, max: usize) -> impl Strategy<Value = String> {
    (
        id_string(min, max),
        non_id_char(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(s, bad, at)| {
            let mut chars: Vec<char> = s.chars().collect();
            let i = at.index(chars.len());
            chars[i] = bad;
            chars.into_iter().collect()
        })
}

/// Arbitrary text: any Unicode, printable only, ASCII-heavy, and near-miss id-like strings.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,80}",
        "[ -~]{0,300}",
        "[A-Za-z0-9_ -]{0,70}",
        "pay_[0-9A-Za-z]{24,28}",
        "[0-9a-fA-Fg ]{30,66}",
        "[0-9+ -]{0,25}",
    ]
}

const ULID_CHARS: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn payment_id_string() -> impl Strategy<Value = String> {
    (
        select("01234567".chars().collect::<Vec<_>>()),
        proptest::collection::vec(select(ULID_CHARS.chars().collect::<Vec<_>>()), 25),
    )
        .prop_map(|(first, rest)| {
            let mut s = String::from("pay_");
            s.push(first);
            s.extend(rest);
            s
        })
}

fn counter_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|v| v.to_string()),
        (0u64..2000).prop_map(|v| v.to_string()),
        Just(u64::MAX.to_string()),
    ]
}

/// Currencies the contract's users expect to work; all are real ISO 4217 codes.
const COMMON_CURRENCIES: &[&str] = &[
    "USD", "EUR", "KRW", "JPY", "GBP", "CHF", "CNY", "CAD", "AUD", "SEK", "NOK", "DKK", "INR",
    "BRL", "MXN", "SGD", "HKD", "NZD", "ZAR", "TWD", "THB", "PLN", "CZK", "HUF", "ILS", "KWD",
    "BHD", "CLP",
];

// ------------------------------------------------------------------ charset identifiers

macro_rules! charset_id_properties {
    ($mod:ident, $ty:ty, $field:literal, $min:literal, $max:literal) => {
        mod $mod {
            use super::*;

            proptest! {
                #[test]
                fn grammar_values_parse_and_round_trip(s in id_string($min, $max)) {
                    let v = <$ty>::try_from(s.as_str()).unwrap();
                    prop_assert_eq!(v.as_str(), s.as_str());
                    prop_assert_eq!(v.to_string(), s.clone());
                    prop_assert_eq!(String::from(v.clone()), s.clone());
                    prop_assert_eq!(<$ty>::try_from(s.clone()).unwrap(), v.clone());
                    // serde goes through the same parser both ways.
                    prop_assert_eq!(serde_json::to_value(&v).unwrap(), json!(s));
                    prop_assert_eq!(serde_json::from_value::<$ty>(json!(s)).unwrap(), v);
                }

                #[test]
                fn too_short_or_too_long_is_refused(
                    s in prop_oneof![id_string(0, $min - 1), id_string($max + 1, $max + 40)]
                ) {
                    let e = <$ty>::try_from(s.as_str()).unwrap_err();
                    prop_assert_eq!(field_of(&e), $field);
                    prop_assert!(serde_json::from_value::<$ty>(json!(s)).is_err());
                }

                #[test]
                fn a_char_outside_the_charset_is_refused(s in id_with_bad_char($min, $max)) {
                    let e = <$ty>::try_from(s.as_str()).unwrap_err();
                    prop_assert_eq!(field_of(&e), $field);
                }

                #[test]
                fn arbitrary_text_is_accepted_exactly_when_in_the_language(s in prop_oneof![
                    any_text(),
                    // Lengths at both bounds, with and without a char from outside the charset.
                    id_string($min - 1, $min + 1),
                    id_string($max - 1, $max + 1),
                    id_with_bad_char($min, $min + 1),
                ]) {
                    let parsed = <$ty>::try_from(s.as_str());
                    prop_assert_eq!(parsed.is_ok(), in_id_language(&s, $min, $max), "{:?}", s);
                }
            }
        }
    };
}

charset_id_properties!(unique_code, UniqueCode, "unique_code", 8, 64);
charset_id_properties!(terminal_id, TerminalId, "terminal_id", 8, 64);
charset_id_properties!(merchant_id, MerchantId, "merchant_id", 3, 64);
charset_id_properties!(pos_id, PosId, "pos_id", 3, 64);

// ------------------------------------------------------------------ payment id

proptest! {
    #[test]
    fn payment_ids_of_the_grammar_parse_and_round_trip(s in payment_id_string()) {
        let id = PaymentId::try_from(s.as_str()).unwrap();
        prop_assert_eq!(id.as_str(), s.as_str());
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(serde_json::to_value(&id).unwrap(), json!(s));
        prop_assert_eq!(serde_json::from_value::<PaymentId>(json!(s)).unwrap(), id);
    }

    #[test]
    fn generated_payment_ids_are_in_the_grammar(ms in 0i64..=(1i64 << 48) - 1) {
        let id = PaymentId::generate(Timestamp::from_millis(ms));
        prop_assert!(in_payment_id_language(id.as_str()), "{}", id);
        prop_assert_eq!(PaymentId::try_from(id.as_str()).unwrap(), id);
    }

    #[test]
    fn payment_id_near_misses_are_refused(
        s in payment_id_string(),
        kind in 0u8..6,
        at in any::<prop::sample::Index>(),
    ) {
        let ulid = &s[4..];
        let bad = match kind {
            0 => format!("pay_{}", &ulid[1..]),            // 25 chars
            1 => format!("pay_{ulid}0"),                    // 27 chars
            2 => format!("PAY_{ulid}"),                     // prefix case
            3 => format!("pay-{ulid}"),                     // prefix separator
            4 => format!("pay_{}", ulid.to_lowercase()),    // lower case
            _ => {
                let mut chars: Vec<char> = s.chars().collect();
                let i = 4 + at.index(26);
                chars[i] = if chars[i] == '#' { '%' } else { '#' };
                chars.into_iter().collect()
            }
        };
        // Lower-casing a ULID made only of digits changes nothing.
        prop_assume!(bad != s);
        let e = PaymentId::try_from(bad.as_str()).unwrap_err();
        prop_assert_eq!(field_of(&e), "payment_id");
    }

    #[test]
    fn payment_id_text_is_accepted_exactly_when_in_the_language(s in prop_oneof![
        any_text(),
        "pay_[0-9A-Z]{26}",
        "pay_[0-9A-Z]{25,27}",
    ]) {
        prop_assert_eq!(PaymentId::try_from(s.as_str()).is_ok(), in_payment_id_language(&s), "{:?}", s);
    }
}

// ------------------------------------------------------------------ challenge

proptest! {
    #[test]
    fn challenges_of_the_grammar_round_trip(bytes in any::<[u8; 16]>()) {
        let s = hex::encode(bytes);
        let c = Challenge::try_from(s.clone()).unwrap();
        prop_assert_eq!(c.as_str(), s.as_str());
        prop_assert_eq!(serde_json::from_value::<Challenge>(json!(s)).unwrap(), c);
    }

    #[test]
    fn generated_challenges_are_32_lowercase_hex(_i in 0..8u8) {
        let c = Challenge::generate();
        prop_assert!(c.as_str().len() == 32 && c.as_str().chars().all(|ch| is_hex_digit(ch, false)));
    }

    #[test]
    fn challenge_text_is_accepted_exactly_when_in_the_language(s in prop_oneof![
        any_text(),
        "[0-9a-f]{31,33}",
        "[0-9a-fA-Fg]{32}",
    ]) {
        let expected = s.len() == 32 && s.chars().all(|c| is_hex_digit(c, false));
        prop_assert_eq!(Challenge::try_from(s.clone()).is_ok(), expected, "{:?}", s);
    }

    #[test]
    fn upper_case_challenges_are_refused(bytes in any::<[u8; 16]>()) {
        let s = hex::encode_upper(bytes);
        prop_assume!(s.chars().any(|c| c.is_ascii_uppercase()));
        prop_assert!(Challenge::try_from(s).is_err());
    }
}

// ------------------------------------------------------------------ auth code

proptest! {
    #[test]
    fn auth_codes_carry_exactly_their_bytes_in_either_case(bytes in any::<[u8; 32]>(), upper in any::<bool>()) {
        let s = if upper { hex::encode_upper(bytes) } else { hex::encode(bytes) };
        let code = AuthCode::try_from(s.as_str()).unwrap();
        prop_assert_eq!(code.bytes(), &bytes);
        // Never printed.
        let shown = format!("{code:?}");
        prop_assert!(!shown.contains(&s[..8]));
    }

    #[test]
    fn auth_code_text_is_accepted_exactly_when_64_hex(s in prop_oneof![
        any_text(),
        "[0-9a-fA-F]{63,65}",
        "[0-9a-fA-Fg-z]{64}",
    ]) {
        let expected = s.len() == 64 && s.chars().all(|c| is_hex_digit(c, true));
        let parsed = AuthCode::try_from(s.as_str());
        prop_assert_eq!(parsed.is_ok(), expected, "{:?}", s);
        if let Err(e) = parsed {
            prop_assert_eq!(field_of(&e), "auth_code");
        }
    }

    #[test]
    fn auth_code_of_wrong_length_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        prop_assume!(bytes.len() != 32);
        prop_assert!(AuthCode::try_from(hex::encode(&bytes).as_str()).is_err());
    }
}

// ------------------------------------------------------------------ counter

proptest! {
    #[test]
    fn counters_round_trip_through_their_decimal_text(s in counter_string()) {
        let c = Counter::try_from(s.as_str()).unwrap();
        prop_assert_eq!(c.to_string(), s.clone());
        prop_assert_eq!(Counter::new(c.get()), c);
    }

    #[test]
    fn counters_with_leading_zeros_signs_or_spaces_are_refused(
        v in any::<u64>(),
        kind in 0u8..7,
    ) {
        let s = match kind {
            0 => format!("0{v}"),
            1 => format!("+{v}"),
            2 => format!("-{v}"),
            3 => format!(" {v}"),
            4 => format!("{v} "),
            5 => format!("{v}.0"),
            _ => format!("{}", u128::from(v) + u128::from(u64::MAX) + 1),
        };
        let e = Counter::try_from(s.as_str()).unwrap_err();
        prop_assert_eq!(field_of(&e), "counter");
    }

    #[test]
    fn counter_text_is_accepted_exactly_when_in_the_language(
        s in prop_oneof![any_text(), "[0-9]{0,22}", "1844674407370955161[0-9]"]
    ) {
        prop_assert_eq!(Counter::try_from(s.as_str()).is_ok(), in_counter_language(&s), "{:?}", s);
    }

    #[test]
    fn counter_window_is_one_to_a_thousand_above_the_last(
        last in prop_oneof![any::<u64>(), 0u64..3, Just(u64::MAX - 1000), (u64::MAX - 2)..=u64::MAX],
        step in any::<u64>(),
        near in prop_oneof![-2i64..=2, 998i64..=1002, -3i64..1005],
    ) {
        // Both a uniformly random counter and one near the window's edges.
        for next in [step, last.saturating_add_signed(near)] {
            let diff = i128::from(next) - i128::from(last);
            let expected = (1..=1000).contains(&diff);
            prop_assert_eq!(
                Counter::new(next).is_acceptable_after(Counter::new(last)),
                expected,
                "last {} next {}", last, next
            );
        }
    }
}

// ------------------------------------------------------------------ money

proptest! {
    #[test]
    fn amounts_are_one_to_99_999_999_minor_units(v in prop_oneof![
        any::<u64>(),
        0u64..=100_000_001,
        0u64..=2,
        99_999_998u64..=100_000_001,
    ]) {
        let expected = (1..=99_999_999).contains(&v);
        match Amount::try_from(v) {
            Ok(a) => {
                prop_assert!(expected, "{} accepted", v);
                prop_assert_eq!(a.minor_units(), v);
                prop_assert_eq!(u64::from(a), v);
                prop_assert_eq!(a.to_string(), v.to_string());
                prop_assert_eq!(serde_json::from_value::<Amount>(json!(v)).unwrap(), a);
            }
            Err(e) => {
                prop_assert!(!expected, "{} refused", v);
                prop_assert_eq!(field_of(&e), "amount");
                prop_assert!(serde_json::from_value::<Amount>(json!(v)).is_err());
            }
        }
    }

    #[test]
    fn amounts_of_other_json_types_are_refused(f in any::<f64>(), i in i64::MIN..0, s in "[0-9]{1,8}") {
        prop_assert!(serde_json::from_value::<Amount>(json!(i)).is_err());
        prop_assert!(serde_json::from_value::<Amount>(json!(s)).is_err());
        if f.fract() != 0.0 || !f.is_finite() {
            prop_assert!(serde_json::from_value::<Amount>(json!(f)).is_err());
        }
    }

    #[test]
    fn known_currencies_round_trip(code in select(COMMON_CURRENCIES)) {
        let c = Currency::try_from(code).unwrap();
        prop_assert_eq!(c.code(), code);
        prop_assert_eq!(c.to_string(), code);
        prop_assert_eq!(String::from(c), code);
        prop_assert_eq!(serde_json::from_value::<Currency>(json!(code)).unwrap(), c);
        // The contract says upper case: the same code in any other case is refused.
        prop_assert!(Currency::try_from(code.to_lowercase().as_str()).is_err());
        let mixed: String = code.chars().enumerate()
            .map(|(i, ch)| if i == 1 { ch.to_ascii_lowercase() } else { ch })
            .collect();
        prop_assert!(Currency::try_from(mixed.as_str()).is_err());
        let (spaced, longer) = (format!(" {code}"), format!("{code}X"));
        prop_assert!(Currency::try_from(spaced.as_str()).is_err());
        prop_assert!(Currency::try_from(longer.as_str()).is_err());
    }

    #[test]
    fn currency_text_outside_three_upper_case_letters_is_refused(s in any_text()) {
        let parsed = Currency::try_from(s.as_str());
        let shape = s.len() == 3 && s.chars().all(|c| c.is_ascii_uppercase());
        if !shape {
            prop_assert!(parsed.is_err(), "{:?}", s);
        }
        if let Ok(c) = parsed {
            prop_assert_eq!(c.code(), s.as_str());
        }
        if let Err(e) = Currency::try_from(s.as_str()) {
            prop_assert_eq!(field_of(&e), "currency");
        }
    }
}

/// Every three-letter upper-case string: the accepted ones are real ISO 4217 codes of money.
#[test]
fn currency_language_over_every_three_letter_code() {
    let mut accepted = Vec::new();
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            for c in b'A'..=b'Z' {
                let s = String::from_utf8(vec![a, b, c]).unwrap();
                if let Ok(cur) = Currency::try_from(s.as_str()) {
                    assert_eq!(cur.code(), s);
                    accepted.push(s);
                }
            }
        }
    }
    for code in COMMON_CURRENCIES {
        assert!(accepted.iter().any(|a| a == code), "{code} refused");
    }
    for not_money in [
        "XTS", "XXX", "ABC", "AAA", "ZZZ", "USA", "EUA", "XAU", "XDR", "BOV", "HRK", "SLL", "CUC",
    ] {
        assert!(
            !accepted.iter().any(|a| a == not_money),
            "{not_money} accepted"
        );
    }
    // ISO 4217 lists about 180 codes; a wildly different count means the table is not ISO's.
    assert!(
        (150..=200).contains(&accepted.len()),
        "{} codes accepted",
        accepted.len()
    );
}

// ------------------------------------------------------------------ reference

proptest! {
    #[test]
    fn references_of_the_grammar_round_trip(s in "[^\\p{C}\\p{Zl}\\p{Zp}]{0,128}") {
        // Neither "other" (controls, format, private use, ...) nor a line or paragraph separator.
        prop_assume!(s.chars().count() <= 128);
        let r = Reference::try_from(s.clone()).unwrap();
        prop_assert_eq!(r.as_str(), s.as_str());
        prop_assert_eq!(String::from(r.clone()), s.clone());
        prop_assert_eq!(serde_json::from_value::<Reference>(json!(s)).unwrap(), r);
    }

    #[test]
    fn references_over_128_chars_are_refused(s in "[^\\p{C}\\p{Zl}\\p{Zp}]{129,200}") {
        prop_assume!(s.chars().count() > 128);
        let e = Reference::try_from(s).unwrap_err();
        prop_assert_eq!(field_of(&e), "reference");
    }

    #[test]
    fn references_with_a_control_char_are_refused(
        s in "[ -~]{0,120}",
        cc in prop_oneof![0u32..0x20, 0x7f..0xa0u32],
        at in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = s.chars().collect();
        chars.insert(at.index(chars.len() + 1), char::from_u32(cc).unwrap());
        let with_cc: String = chars.into_iter().collect();
        let e = Reference::try_from(with_cc).unwrap_err();
        prop_assert_eq!(field_of(&e), "reference");
    }

    #[test]
    fn reference_text_is_accepted_exactly_when_in_the_language(s in prop_oneof![
        any_text(),
        any::<String>(),
        // 127..=129 chars around the limit, some with a char at the edge of the control ranges.
        ("\\PC{127,129}", select(vec!['\u{1f}', ' ', '~', '\u{7f}', '\u{9f}', '\u{a0}', '\u{ad}', '\u{200b}', '\u{202e}', '\u{2028}', '\u{2029}', '\u{e000}', '\u{fffd}', '\u{e0041}']), any::<bool>())
            .prop_map(|(s, c, put)| if put { let mut s: String = s.chars().skip(1).collect(); s.push(c); s } else { s }),
    ]) {
        prop_assert_eq!(Reference::try_from(s.clone()).is_ok(), in_reference_language(&s), "{:?}", s);
    }
}

// ------------------------------------------------------------------ idempotency key

proptest! {
    #[test]
    fn idempotency_keys_of_the_grammar_round_trip(s in "[ -~]{1,255}") {
        let k = IdempotencyKey::try_from(s.as_str()).unwrap();
        prop_assert_eq!(k.as_str(), s.as_str());
    }

    #[test]
    fn idempotency_keys_too_long_or_not_printable_are_refused(
        long in "[ -~]{256,300}",
        s in "[ -~]{0,200}",
        bad in prop_oneof![0u32..0x20, Just(0x7f), 0x80..0x3000u32],
        at in any::<prop::sample::Index>(),
    ) {
        prop_assert!(IdempotencyKey::try_from(long.as_str()).is_err());
        prop_assert!(IdempotencyKey::try_from("").is_err());
        let mut chars: Vec<char> = s.chars().collect();
        if let Some(c) = char::from_u32(bad) {
            chars.insert(at.index(chars.len() + 1), c);
            let with_bad: String = chars.into_iter().collect();
            let e = IdempotencyKey::try_from(with_bad.as_str()).unwrap_err();
            prop_assert_eq!(field_of(&e), "Idempotency-Key");
        }
    }

    #[test]
    fn idempotency_key_text_is_accepted_exactly_when_in_the_language(s in prop_oneof![
        any_text(),
        "[ -~]{254,256}",
        ("[ -~]{0,10}", select(vec!['\u{1f}', ' ', '~', '\u{7f}', '\u{80}', '\t'])).prop_map(|(s, c)| format!("{s}{c}")),
    ]) {
        prop_assert_eq!(IdempotencyKey::try_from(s.as_str()).is_ok(), in_idempotency_key_language(&s), "{:?}", s);
    }
}

// ------------------------------------------------------------------ status, time

proptest! {
    #[test]
    fn payment_status_text_is_accepted_exactly_for_the_seven_names(s in prop_oneof![
        any_text(),
        select(vec!["pending", "confirmed", "settled", "declined", "canceled", "expired", "failed", "cancelled", "Pending"]).prop_map(str::to_owned),
    ]) {
        let names = ["pending", "confirmed", "settled", "declined", "canceled", "expired", "failed"];
        match PaymentStatus::try_from(s.as_str()) {
            Ok(st) => prop_assert_eq!(st.as_str(), s.as_str()),
            Err(_) => prop_assert!(!names.contains(&s.as_str())),
        }
    }

    /// Contract timestamps: UTC, RFC 3339, whole seconds, e.g. `2026-11-27T04:05:06Z`.
    #[test]
    fn timestamps_render_as_rfc3339_whole_seconds(ms in 0i64..253_402_300_800_000, other in 0i64..253_402_300_800_000) {
        let t = Timestamp::from_millis(ms);
        let s = t.to_rfc3339();
        let shape = s.len() == 20
            && s.char_indices().all(|(i, c)| match i {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                19 => c == 'Z',
                _ => c.is_ascii_digit(),
            });
        prop_assert!(shape, "{}", s);
        let parsed = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).unwrap();
        prop_assert_eq!(parsed.unix_timestamp(), ms.div_euclid(1000));
        prop_assert_eq!(t.truncated_to_second().to_rfc3339(), s.clone());
        // Fixed width: text order is time order.
        let o = Timestamp::from_millis(other);
        prop_assert_eq!(s.cmp(&o.to_rfc3339()), t.seconds().cmp(&o.seconds()));
    }
}

// ------------------------------------------------------------------ keys, codes and secrets

proptest! {
    #[test]
    fn master_key_is_64_hex_chars(
        bytes in any::<[u8; 32]>(),
        upper in any::<bool>(),
        s in prop_oneof![
            any_text(),
            (any::<[u8; 32]>(), "[ \t\r\n]{0,2}", "[ \t\r\n]{0,2}").prop_map(|(b, l, r)| format!("{l}{}{r}", hex::encode(b))),
        ],
    ) {
        let hex = if upper { hex::encode_upper(bytes) } else { hex::encode(bytes) };
        prop_assert!(MasterKey::from_hex(&hex).is_ok());
        prop_assert!(MasterKey::from_hex(&hex[..62]).is_err());
        let longer = format!("{hex}00");
        prop_assert!(MasterKey::from_hex(&longer).is_err());
        // The configured form tolerates surrounding whitespace (a trailing newline in a file).
        let t = s.trim();
        let expected = t.len() == 64 && t.chars().all(|c| is_hex_digit(c, true));
        prop_assert_eq!(MasterKey::from_hex(&s).is_ok(), expected, "{:?}", s);
    }

    /// Device key and registration proof agree with HMAC-SHA256 over the contract's messages, and
    /// verification accepts exactly the proof of this code and terminal.
    #[test]
    fn registration_proofs_follow_the_contract(
        master in any::<[u8; 32]>(),
        code in id_string(8, 64),
        terminal in id_string(8, 64),
        other_terminal in id_string(8, 64),
        tamper in any::<prop::sample::Index>(),
        garbage in any_text(),
        challenge_bytes in any::<[u8; 16]>(),
    ) {
        let m = MasterKey::from_hex(&hex::encode(master)).unwrap();
        let code_id = UniqueCode::try_from(code.as_str()).unwrap();
        let term = TerminalId::try_from(terminal.as_str()).unwrap();
        let k_dev = contract_hmac(&master, &format!("2ch/device-key/v1|{code}"));
        let dk = m.device_key(&code_id);
        prop_assert_eq!(dk.to_hex(), hex::encode(k_dev));
        let challenge = Challenge::try_from(hex::encode(challenge_bytes)).unwrap();
        let proof = hex::encode(contract_hmac(&k_dev, &format!("2ch/register/v2|{code}|{terminal}|{}", challenge.as_str())));
        prop_assert_eq!(dk.registration_proof(&code_id, &term, &challenge), proof.clone());
        prop_assert!(dk.verify_registration_proof(&code_id, &term, &challenge, &proof));
        // The revision-1 proof, without the challenge, never verifies.
        let v1 = hex::encode(contract_hmac(&k_dev, &format!("2ch/register/v1|{code}|{terminal}")));
        prop_assert!(!dk.verify_registration_proof(&code_id, &term, &challenge, &v1));
        // One hex digit changed.
        let mut chars: Vec<char> = proof.chars().collect();
        let i = tamper.index(64);
        chars[i] = if chars[i] == '0' { '1' } else { '0' };
        let tampered: String = chars.into_iter().collect();
        prop_assert!(!dk.verify_registration_proof(&code_id, &term, &challenge, &tampered));
        // Another terminal's proof.
        if other_terminal != terminal {
            let other = TerminalId::try_from(other_terminal.as_str()).unwrap();
            prop_assert!(!dk.verify_registration_proof(&code_id, &other, &challenge, &proof));
        }
        // Anything else never panics and only the proof itself (in any case) verifies.
        let ok = dk.verify_registration_proof(&code_id, &term, &challenge, &garbage);
        prop_assert_eq!(ok, garbage.eq_ignore_ascii_case(&proof));
    }

    /// The auth code binds every field of the contract's message: changing any one of them (or the
    /// key) makes a code that does not verify.
    #[test]
    fn auth_codes_follow_the_contract_and_bind_every_field(
        k_dev in any::<[u8; 32]>(),
        pid in payment_id_string(),
        merchant in id_string(3, 64),
        amount in 1u64..=99_999_999,
        currency in select(COMMON_CURRENCIES),
        challenge in any::<[u8; 16]>(),
        counter in any::<u64>(),
        which in 0u8..7,
    ) {
        let challenge = hex::encode(challenge);
        let message = format!("2ch/pay/v1|{pid}|{merchant}|{amount}|{currency}|{challenge}|{counter}");
        let expected = hex::encode(contract_hmac(&k_dev, &message));

        let key = DeviceKey::from_bytes(k_dev);
        let pid_v = PaymentId::try_from(pid.as_str()).unwrap();
        let merchant_v = MerchantId::try_from(merchant.as_str()).unwrap();
        let challenge_v = Challenge::try_from(challenge.clone()).unwrap();
        let binding = PaymentBinding {
            payment_id: &pid_v,
            merchant_id: &merchant_v,
            amount: Amount::try_from(amount).unwrap(),
            currency: Currency::try_from(currency).unwrap(),
            challenge: &challenge_v,
            counter: Counter::new(counter),
        };
        prop_assert_eq!(key.auth_code(&binding), expected.clone());
        let code = AuthCode::try_from(expected.as_str()).unwrap();
        prop_assert!(key.verify_auth_code(&binding, &code));
        prop_assert!(key.verify_auth_code(&binding, &AuthCode::try_from(expected.to_uppercase().as_str()).unwrap()));

        // One field changed.
        let other_pid = PaymentId::try_from(format!("pay_{}", if &pid[4..5] == "0" { "1" } else { "0" }) + &pid[5..]).unwrap();
        let other_merchant = MerchantId::try_from(format!("{merchant}x").chars().rev().take(64).collect::<String>()).unwrap();
        let other_challenge = Challenge::try_from(format!("{}{}", if challenge.starts_with('0') { '1' } else { '0' }, &challenge[1..])).unwrap();
        let mut changed = binding;
        match which {
            0 => changed.payment_id = &other_pid,
            1 => {
                prop_assume!(other_merchant != merchant_v);
                changed.merchant_id = &other_merchant;
            }
            2 => changed.amount = Amount::try_from(if amount == 1 { 2 } else { amount - 1 }).unwrap(),
            3 => changed.currency = Currency::try_from(if currency == "USD" { "EUR" } else { "USD" }).unwrap(),
            4 => changed.challenge = &other_challenge,
            5 => changed.counter = Counter::new(counter.wrapping_add(1)),
            _ => {
                let mut other_key = k_dev;
                other_key[0] ^= 1;
                prop_assert!(!DeviceKey::from_bytes(other_key).verify_auth_code(&binding, &code));
                return Ok(());
            }
        }
        prop_assert!(!key.verify_auth_code(&changed, &code), "field {} not bound", which);
    }

    /// Bearer secrets: a kind prefix, then 32 random bytes in lowercase hex; only their SHA-256
    /// is stored.
    #[test]
    fn issued_secrets_have_the_bearer_format(prefix in select(vec!["mk_", "tt_"]), any_secret in any_text()) {
        let s = IssuedSecret::generate(prefix);
        let rest = s.secret.strip_prefix(prefix).unwrap();
        prop_assert!(rest.len() == 64 && rest.chars().all(|c| is_hex_digit(c, false)), "{}", s.secret);
        prop_assert_eq!(s.hash.as_str(), hex::encode(Sha256::digest(s.secret.as_bytes())));
        let shown = format!("{s:?}");
        prop_assert!(!shown.contains(&s.secret));
        // Two issued secrets never collide.
        prop_assert_ne!(IssuedSecret::generate(prefix).secret, s.secret);
        let h = SecretHash::of(&any_secret);
        prop_assert_eq!(h.as_str(), hex::encode(Sha256::digest(any_secret.as_bytes())));
        prop_assert_eq!(sha256_hex(any_secret.as_bytes()), h.as_str());
        prop_assert_eq!(SecretHash::from_stored(h.as_str().to_owned()), h);
    }
}

// ------------------------------------------------------------------ issuer key generations

/// `ISSUER_MASTER_KEY` as configured for rotation: 1 to 4 comma-separated 64-hex-char keys
/// (scripts/deploy.py: "up to 4"; written out here, not taken from `MAX_GENERATIONS`).
fn in_issuer_keys_language(s: &str) -> bool {
    let keys: Vec<&str> = s.split(',').collect();
    keys.len() <= 4
        && keys.iter().all(|k| {
            let k = k.trim();
            k.len() == 64 && k.chars().all(|c| is_hex_digit(c, true))
        })
}

proptest! {
    #[test]
    fn issuer_keys_text_is_accepted_exactly_when_in_the_language(
        keys in proptest::collection::vec(any::<[u8; 32]>(), 0..=6),
        sep in select(vec![",", ", ", " ,", ",\n"]),
        extra in prop_oneof![Just(String::new()), any_text(), "[0-9a-f]{63,65}"],
    ) {
        let mut parts: Vec<String> = keys.iter().map(hex::encode).collect();
        if !extra.is_empty() {
            parts.push(extra);
        }
        let text = parts.join(sep);
        prop_assert_eq!(IssuerKeys::parse(&text).is_ok(), in_issuer_keys_language(&text), "{:?}", text);
    }

    /// Every generation in service verifies its devices' proofs and codes; a key not in service
    /// does not.
    #[test]
    fn every_issuer_key_generation_verifies_its_devices(
        keys in proptest::collection::vec(any::<[u8; 32]>(), 1..=4),
        which in any::<prop::sample::Index>(),
        code in id_string(8, 64),
        terminal in id_string(8, 64),
        pid in payment_id_string(),
        counter in any::<u64>(),
    ) {
        let ik = IssuerKeys::parse(&keys.iter().map(hex::encode).collect::<Vec<_>>().join(",")).unwrap();
        let mut stranger = keys[0];
        stranger[31] ^= 0x80;
        prop_assume!(!keys.contains(&stranger));
        let code_v = UniqueCode::try_from(code.as_str()).unwrap();
        let term_v = TerminalId::try_from(terminal.as_str()).unwrap();
        let pid_v = PaymentId::try_from(pid.as_str()).unwrap();
        let merchant = MerchantId::try_from("m_rotation").unwrap();
        let challenge = Challenge::try_from("00112233445566778899aabbccddeeff".to_owned()).unwrap();
        let binding = PaymentBinding {
            payment_id: &pid_v,
            merchant_id: &merchant,
            amount: Amount::try_from(4500).unwrap(),
            currency: Currency::try_from("KRW").unwrap(),
            challenge: &challenge,
            counter: Counter::new(counter),
        };
        let made_by = |master: &[u8; 32]| {
            let k_dev = contract_hmac(master, &format!("2ch/device-key/v1|{code}"));
            let proof = hex::encode(contract_hmac(&k_dev, &format!("2ch/register/v2|{code}|{terminal}|00112233445566778899aabbccddeeff")));
            let message = format!("2ch/pay/v1|{pid}|m_rotation|4500|KRW|00112233445566778899aabbccddeeff|{counter}");
            (proof, AuthCode::try_from(hex::encode(contract_hmac(&k_dev, &message)).as_str()).unwrap())
        };
        let (proof, auth) = made_by(&keys[which.index(keys.len())]);
        prop_assert!(ik.verify_registration_proof(&code_v, &term_v, &challenge, &proof));
        prop_assert!(ik.verify_auth_code(&code_v, &binding, &auth));
        let (proof, auth) = made_by(&stranger);
        prop_assert!(!ik.verify_registration_proof(&code_v, &term_v, &challenge, &proof));
        prop_assert!(!ik.verify_auth_code(&code_v, &binding, &auth));
    }
}

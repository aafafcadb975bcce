//! Webhooks of the contract: the endpoint URL a merchant sets, the secret that signs what is sent
//! there (and its sealing at rest), the event types and the event ids.
//!
//! The signature itself is [`crate::crypto::webhook_signature`]. Sending is an adapter's business
//! (`twochan_aws::webhook_sender`); this module only decides what may be sent where.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use url::{Host, Url};

use crate::clock::Timestamp;
use crate::crypto::{IssuerKeys, MasterKey, fill_random, sha256};
use crate::error::DomainError;

/// A merchant's webhook endpoint, as the contract allows it: `https://` and a host *name* that is
/// neither an IP address (in any spelling) nor `localhost`, no credentials, no fragment, at most
/// 2048 characters; on a local stack also `http://127.0.0.1:<port>/<path>`.
///
/// Holds the URL in its normalised form (scheme and host lower case, default port dropped), which
/// parses back to itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    /// The contract's limit, in characters of the URL as given.
    pub const MAX_CHARS: usize = 2048;
    /// The one address a local stack may deliver to.
    const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

    /// Parses and checks a URL. `allow_loopback` (a local stack only) also admits
    /// `http://127.0.0.1:<port>/<path>`, the address spelled exactly so and the port given.
    pub fn parse(s: &str, allow_loopback: bool) -> Result<Self, DomainError> {
        let invalid = |why: &str| DomainError::invalid("url", why);
        if s.chars().count() > Self::MAX_CHARS {
            return Err(invalid("must be at most 2048 characters"));
        }
        // The URL parser strips or encodes these silently; what is stored must be what was meant.
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must not contain spaces or control characters"));
        }
        if allow_loopback && starts_with_ignore_case(s, "http://") {
            return Self::parse_loopback(s);
        }
        // Also refuses `https:example.com` and `https:\\example.com`, which the URL standard
        // would read leniently.
        if !starts_with_ignore_case(s, "https://") || s[8..].starts_with(['/', '\\']) {
            return Err(invalid("must be an https:// URL"));
        }
        let url = Url::parse(s).map_err(|_| invalid("is not a valid URL"))?;
        Self::check_common(&url)?;
        match url.host() {
            Some(Host::Domain(name)) if is_refused_name(name) => Err(invalid(
                "host must be a host name that is not an IP address or localhost",
            )),
            Some(Host::Domain(_)) => Ok(Self(url)),
            // The parser reads every IPv4 spelling (`2130706433`, `0x7f.1`, `127.1`) as an address.
            Some(Host::Ipv4(_) | Host::Ipv6(_)) => {
                Err(invalid("host must be a host name, not an IP address"))
            }
            None => Err(invalid("must have a host")),
        }
    }

    fn parse_loopback(s: &str) -> Result<Self, DomainError> {
        let refuse = || {
            DomainError::invalid(
                "url",
                "must be https:// (or on a local stack http://127.0.0.1:<port>/<path>)",
            )
        };
        let rest = &s["http://".len()..];
        let authority = &rest[..rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len())];
        let port = authority.strip_prefix("127.0.0.1:").ok_or_else(refuse)?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        let url = Url::parse(s).map_err(|_| refuse())?;
        Self::check_common(&url)?;
        // `port()` is `None` for the scheme's default (80): it would not survive normalisation,
        // so the stored URL would no longer name a port.
        let ok = url.scheme() == "http"
            && url.host() == Some(Host::Ipv4(Self::LOOPBACK))
            && url.port().is_some_and(|p| p != 0);
        if ok { Ok(Self(url)) } else { Err(refuse()) }
    }

    fn check_common(url: &Url) -> Result<(), DomainError> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DomainError::invalid(
                "url",
                "must not contain a user name or password",
            ));
        }
        if url.fragment().is_some() {
            return Err(DomainError::invalid("url", "must not contain a fragment"));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether this is the local stack's `http://127.0.0.1:<port>/...` form.
    pub fn is_loopback(&self) -> bool {
        self.0.host() == Some(Host::Ipv4(Self::LOOPBACK))
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A (normalised, lower-case, ASCII) host name that is `localhost`, under `.localhost`, or that
/// spells an address: all digits and dots, or a last label that is a number (the URL standard's
/// "ends in a number", which the parser would already have read as IPv4 or refused).
fn is_refused_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if name.parse::<std::net::IpAddr>().is_ok()
        || name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return true;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || last.bytes().all(|b| b.is_ascii_digit())
}

/// A webhook signing secret: `whsec_` + 64 lowercase hex characters from the OS RNG. Shown once
/// (the answer of `PUT /v1/webhook-endpoint`), stored sealed ([`SecretSeal`]). No `PartialEq`: a
/// byte-wise compare exits early; no `Debug` of its value.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    const PREFIX: &'static str = "whsec_";

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes);
        Self(format!("{}{}", Self::PREFIX, hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_well_formed(s: &str) -> bool {
        s.strip_prefix(Self::PREFIX).is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Seals webhook secrets at rest: XChaCha20-Poly1305 under a key derived from the issuer master
/// key, `HMAC-SHA256(master, "2ch/webhook-secret-seal/v1")`, with the merchant id as associated
/// data, so a sealed secret read from storage opens only for the merchant it was sealed for.
///
/// Sealed form: lowercase hex of `nonce (24 bytes) || ciphertext || tag (16 bytes)`.
/// Sealed with the current issuer key generation; opened with any generation in service, so a
/// rotation does not lose the secrets sealed before it.
pub struct SecretSeal(Vec<XChaCha20Poly1305>);

impl SecretSeal {
    const NONCE_LEN: usize = 24;
    const TAG_LEN: usize = 16;

    pub fn from_issuer_key(master: &MasterKey) -> SecretSeal {
        SecretSeal(vec![Self::cipher(master)])
    }

    /// The current generation seals; every generation opens.
    pub fn from_issuer_keys(keys: &IssuerKeys) -> SecretSeal {
        SecretSeal(keys.generations().map(Self::cipher).collect())
    }

    fn cipher(master: &MasterKey) -> XChaCha20Poly1305 {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(master.bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"2ch/webhook-secret-seal/v1");
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        XChaCha20Poly1305::new(&key.into())
    }

    /// Seals `secret` for `context` (the merchant id) under a fresh random nonce.
    pub fn seal(&self, secret: &WebhookSecret, context: &str) -> String {
        let mut nonce = [0u8; Self::NONCE_LEN];
        fill_random(&mut nonce);
        let sealed = self.0[0]
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_str().as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message of this size");
        let mut out = Vec::with_capacity(Self::NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        hex::encode(out)
    }

    /// Opens what [`SecretSeal::seal`] made for the same `context`. Anything else (another
    /// merchant, another master key, a changed byte, not hex) is an internal error without detail.
    pub fn open(&self, sealed: &str, context: &str) -> Result<WebhookSecret, DomainError> {
        let fail = || DomainError::Internal("a sealed webhook secret did not open".into());
        let bytes = hex::decode(sealed).map_err(|_| fail())?;
        if bytes.len() < Self::NONCE_LEN + Self::TAG_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = bytes.split_at(Self::NONCE_LEN);
        let nonce: [u8; Self::NONCE_LEN] = nonce.try_into().map_err(|_| fail())?;
        let plain = self
            .0
            .iter()
            .find_map(|cipher| {
                let payload = Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                };
                cipher.decrypt(&XNonce::from(nonce), payload).ok()
            })
            .ok_or_else(fail)?;
        let secret = String::from_utf8(plain).map_err(|_| fail())?;
        if WebhookSecret::is_well_formed(&secret) {
            Ok(WebhookSecret(secret))
        } else {
            Err(fail())
        }
    }
}

impl fmt::Debug for SecretSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretSeal(<redacted>)")
    }
}

/// The changes a webhook announces (expiry is not announced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum EventType {
    PaymentConfirmed,
    PaymentSettled,
    PaymentDeclined,
    PaymentCanceled,
    PaymentFailed,
    RefundSucceeded,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        Self::PaymentConfirmed,
        Self::PaymentSettled,
        Self::PaymentDeclined,
        Self::PaymentCanceled,
        Self::PaymentFailed,
        Self::RefundSucceeded,
    ];

    /// The contract's name: `payment.confirmed`, ..., `refund.succeeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentConfirmed => "payment.confirmed",
            Self::PaymentSettled => "payment.settled",
            Self::PaymentDeclined => "payment.declined",
            Self::PaymentCanceled => "payment.canceled",
            Self::PaymentFailed => "payment.failed",
            Self::RefundSucceeded => "refund.succeeded",
        }
    }
}

impl TryFrom<&str> for EventType {
    type Error = DomainError;

    fn try_from(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| DomainError::invalid("type", "is not a webhook event type"))
    }
}

impl TryFrom<String> for EventType {
    type Error = DomainError;

    fn try_from(s: String) -> Result<Self, DomainError> {
        Self::try_from(s.as_str())
    }
}

impl From<EventType> for &'static str {
    fn from(t: EventType) -> &'static str {
        t.as_str()
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `evt_` + a ULID. Made deterministically per change ([`EventId::for_change`]) so that sending
/// the same change again (a retried function) gives the same id and receivers deduplicate it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    pub const FIELD: &'static str = "id";

    /// The event of the change of `subject` (a payment or refund id) to `kind` at `at`: the
    /// ULID's time part is `at`, its 80-bit random part the first 10 bytes of
    /// `SHA-256("2ch/event/v1|" + subject + "|" + kind)`.
    pub fn for_change(at: Timestamp, subject: &str, kind: EventType) -> Self {
        let digest = sha256(format!("2ch/event/v1|{subject}|{}", kind.as_str()).as_bytes());
        let mut random = [0u8; 16];
        random[6..].copy_from_slice(&digest[..10]);
        let ulid = ulid::Ulid::from_parts(at.millis().max(0) as u64, u128::from_be_bytes(random));
        Self(format!("evt_{ulid}"))
    }

    /// The ULID's time part: when the change happened.
    pub fn created_at(&self) -> Timestamp {
        let ulid: ulid::Ulid = self.0["evt_".len()..]
            .parse()
            .expect("a parsed event id is a ULID");
        Timestamp::from_millis(ulid.timestamp_ms() as i64)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventId {
    type Error = DomainError;

    fn try_from(s: String) -> Result<Self, DomainError> {
        let ok = s.strip_prefix("evt_").is_some_and(|u| {
            u.len() == 26
                // Crockford base 32 as the ULID spec writes it: digits and uppercase letters
                // without I, L, O and U.
                && u.bytes().all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
                // The first ULID char encodes the top 3 bits of a 48-bit time: at most '7'.
                && u.as_bytes()[0] <= b'7'
        });
        if ok {
            Ok(Self(s))
        } else {
            Err(DomainError::invalid(
                Self::FIELD,
                "must be evt_ followed by a 26-character ULID",
            ))
        }
    }
}

impl TryFrom<&str> for EventId {
    type Error = DomainError;

    fn try_from(s: &str) -> Result<Self, DomainError> {
        Self::try_from(s.to_owned())
    }
}

impl From<EventId> for String {
    fn from(v: EventId) -> String {
        v.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> WebhookUrl {
        WebhookUrl::parse(s, false).unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
    }

    fn refused(s: &str, allow_loopback: bool) {
        let e = WebhookUrl::parse(s, allow_loopback)
            .expect_err(&format!("{s:?} accepted (loopback {allow_loopback})"));
        assert_eq!(e.code(), "invalid_request", "{s:?}");
        assert!(e.to_string().starts_with("url: "), "{e}");
    }

    #[test]
    fn https_host_names_are_accepted() {
        assert_eq!(
            ok("https://example.com/hook").as_str(),
            "https://example.com/hook"
        );
        assert_eq!(
            ok("HTTPS://Example.com/x").as_str(),
            "https://example.com/x"
        );
        let u = ok("https://example.com:8443/hook?x=1");
        assert_eq!(u.as_str(), "https://example.com:8443/hook?x=1");
        assert!(!u.is_loopback());
        assert_eq!(ok("https://example.com").as_str(), "https://example.com/");
        assert_eq!(
            ok("https://example.com:443/a").as_str(),
            "https://example.com/a"
        );
        // Numbers inside a name are fine; only a name that spells an address is not.
        ok("https://1.2.3.example.com/");
        ok("https://123.example/");
        ok("https://localhost.example.com/");
        ok("https://mylocalhost/");
        ok("https://xn--caf-dma.example/");
        assert_eq!(
            ok("https://café.example/").as_str(),
            "https://xn--caf-dma.example/"
        );
        // Normalised form parses back to itself (the sender parses again before each try).
        for s in [
            "HTTPS://Example.COM:443/x?y",
            "https://café.example/ä?q=ü",
            "https://example.com:8443",
        ] {
            let u = ok(s);
            assert_eq!(WebhookUrl::parse(u.as_str(), false).unwrap(), u, "{s}");
        }
    }

    #[test]
    fn localhost_in_any_spelling_is_refused() {
        for s in [
            "https://localhost/",
            "https://localhost./",
            "https://localhost",
            "https://LOCALHOST/",
            "https://LocalHost:8443/x",
            "https://foo.localhost/",
            "https://a.b.LOCALHOST./",
            "https://localhost../",
            "https://local%68ost/",
            "https://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/", // fullwidth
        ] {
            refused(s, false);
            refused(s, true);
        }
    }

    #[test]
    fn ip_addresses_in_any_spelling_are_refused() {
        for s in [
            "https://127.0.0.1/",
            "https://127.0.0.1:8443/x",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/",
            "https://8.8.8.8/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[2001:db8::1]:8443/",
            "https://[fe80::1%25eth0]/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://127.1/",
            "https://127.0.1/",
            "https://0/",
            "https://1.2.3.4./",
            "https://017700000001/",
            "https://1.2.3.4.5/",
            "https://1.2.3/",
            "https://example.0x1/",
            "https://example.123/",
            "https://127.0.0.1%2e/",
            "https://%31%32%37.0.0.1/",
        ] {
            refused(s, false);
            refused(s, true);
        }
    }

    #[test]
    fn only_https_is_accepted() {
        for s in [
            "http://example.com/",
            "ftp://example.com/",
            "https:example.com/",
            "https:/example.com/",
            "https:\\\\example.com/",
            "//example.com/",
            "example.com/hook",
            "wss://example.com/",
            "",
            "https://",
            "https:///path",
        ] {
            refused(s, false);
        }
    }

    #[test]
    fn credentials_fragments_and_odd_characters_are_refused() {
        for s in [
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "https://:pass@example.com/",
            "https://example.com/#frag",
            "https://example.com/#",
            "https://example.com/a b",
            " https://example.com/",
            "https://example.com/\n",
            "https://exa\tmple.com/",
            "https://example.com/\u{0}",
        ] {
            refused(s, false);
        }
    }

    #[test]
    fn length_is_limited_to_2048_characters() {
        let prefix = "https://example.com/";
        let at_limit = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
        assert_eq!(at_limit.len(), 2048);
        ok(&at_limit);
        let over = format!("{prefix}{}", "a".repeat(2049 - prefix.len()));
        assert_eq!(over.len(), 2049);
        refused(&over, false);
        refused(&over, true);
    }

    #[test]
    fn loopback_only_when_allowed_and_only_with_a_port() {
        refused("http://127.0.0.1:9/x", false);
        let u = WebhookUrl::parse("http://127.0.0.1:9/x", true).unwrap();
        assert!(u.is_loopback());
        assert_eq!(u.as_str(), "http://127.0.0.1:9/x");
        assert_eq!(u.to_string(), "http://127.0.0.1:9/x");
        assert_eq!(WebhookUrl::parse(u.as_str(), true).unwrap(), u);
        let u = WebhookUrl::parse("HTTP://127.0.0.1:65535/a/b?c=d", true).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:65535/a/b?c=d");
        assert_eq!(
            WebhookUrl::parse("http://127.0.0.1:8080", true)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/"
        );
        for s in [
            "http://127.0.0.1/",
            "http://127.0.0.1/x",
            "http://127.0.0.1:/x",
            "http://127.0.0.1:80/x", // the default port would vanish on normalisation
            "http://127.0.0.1:0/x",
            "http://127.0.0.1:65536/x",
            "http://127.0.0.1:123456/x",
            "http://127.0.0.1:9/x#f",
            "http://user:pw@127.0.0.1:9/x",
            "http://127.0.0.2:9/x",
            "http://127.1:9/x",
            "http://2130706433:9/x",
            "http://0x7f000001:9/x",
            "http://localhost:9/x",
            "http://[::1]:9/x",
            "http://10.0.0.1:9/x",
            "http://example.com:9/x",
            "http://example.com/",
            "https://127.0.0.1:9/x",
        ] {
            refused(s, true);
        }
    }

    #[test]
    fn secrets_have_the_contract_shape_and_never_show() {
        let s = WebhookSecret::generate();
        assert!(WebhookSecret::is_well_formed(s.as_str()), "{}", s.as_str());
        assert_eq!(s.as_str().len(), 70);
        assert_ne!(s.as_str(), WebhookSecret::generate().as_str());
        let debug = format!("{s:?}");
        assert!(!debug.contains(&s.as_str()[6..]), "{debug}");
        assert!(!debug.contains("whsec_"), "{debug}");
        for bad in [
            "whsec_".to_owned(),
            format!("whsec_{}", "A".repeat(64)),
            format!("whsec_{}", "a".repeat(63)),
            format!("whsec_{}", "a".repeat(65)),
            format!("whsk_{}", "a".repeat(65)),
        ] {
            assert!(!WebhookSecret::is_well_formed(&bad), "{bad}");
        }
    }

    /// Review aid: the secret type must not get a derived (early-exit) `PartialEq` or `Debug`.
    #[test]
    fn secret_type_derives_no_compare_or_debug() {
        let src = include_str!("webhook.rs");
        let at = src.find("pub struct WebhookSecret").unwrap();
        let derive = &src[src[..at].rfind("#[derive(").unwrap()..at];
        assert!(!derive.contains("PartialEq"), "{derive}");
        assert!(!derive.contains("Debug"), "{derive}");
    }

    fn seal_of(byte: u8) -> SecretSeal {
        SecretSeal::from_issuer_key(&MasterKey::from_hex(&hex::encode([byte; 32])).unwrap())
    }

    #[test]
    fn sealed_secrets_open_for_their_merchant_only() {
        let seal = seal_of(7);
        let secret = WebhookSecret::generate();
        let sealed = seal.seal(&secret, "m_coffee_42");
        assert_eq!(
            seal.open(&sealed, "m_coffee_42").unwrap().as_str(),
            secret.as_str()
        );
        // Lowercase hex of 24 + 70 + 16 bytes.
        assert_eq!(sealed.len(), 2 * (24 + 70 + 16));
        assert!(
            sealed
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        // Never the secret, in any form.
        assert!(!sealed.contains(secret.as_str()));
        assert!(!sealed.contains(&secret.as_str()[6..]));
        assert!(!sealed.contains(&hex::encode(secret.as_str())));
        // A fresh nonce each time.
        let again = seal.seal(&secret, "m_coffee_42");
        assert_ne!(sealed, again);
        assert_eq!(
            seal.open(&again, "m_coffee_42").unwrap().as_str(),
            secret.as_str()
        );

        let wrong_context = seal.open(&sealed, "m_tea_7").unwrap_err();
        assert_eq!(
            wrong_context,
            DomainError::Internal("a sealed webhook secret did not open".into())
        );
        assert_eq!(wrong_context.to_string(), "internal error");
        assert!(seal.open(&sealed, "").is_err());
        assert!(seal_of(8).open(&sealed, "m_coffee_42").is_err());

        // Every flipped bit (nonce, ciphertext or tag) is refused.
        let bytes = hex::decode(&sealed).unwrap();
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            assert!(
                seal.open(&hex::encode(&tampered), "m_coffee_42").is_err(),
                "byte {i}"
            );
        }
        for bad in [
            "",
            "zz",
            &sealed[..sealed.len() - 2],
            &sealed[..(24 + 16) * 2],
            &sealed[1..],
            &format!("{sealed}00"),
            &format!("00{sealed}"),
        ] {
            assert!(seal.open(bad, "m_coffee_42").is_err(), "{bad}");
        }
    }

    #[test]
    fn seal_key_is_derived_from_the_current_issuer_key() {
        let keys = crate::crypto::IssuerKeys::parse(&format!(
            "{},{}",
            hex::encode([7u8; 32]),
            hex::encode([8u8; 32])
        ))
        .unwrap();
        let secret = WebhookSecret::generate();
        let sealed = SecretSeal::from_issuer_key(keys.current()).seal(&secret, "m_1x");
        assert!(seal_of(7).open(&sealed, "m_1x").is_ok());
        assert!(seal_of(8).open(&sealed, "m_1x").is_err());
        assert!(!format!("{:?}", seal_of(7)).contains("07"));
        // The seal key is HMAC-SHA256(master, label): pin it, so a change of derivation (which
        // would make every stored secret unopenable) cannot pass unnoticed.
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"2ch/webhook-secret-seal/v1");
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        let by_hand = XChaCha20Poly1305::new(&key.into());
        let bytes = hex::decode(&sealed).unwrap();
        let plain = by_hand
            .decrypt(
                &XNonce::from(<[u8; 24]>::try_from(&bytes[..24]).unwrap()),
                Payload {
                    msg: &bytes[24..],
                    aad: b"m_1x",
                },
            )
            .unwrap();
        assert_eq!(plain, secret.as_str().as_bytes());
    }

    #[test]
    fn event_types_have_the_contract_names() {
        let names: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "payment.confirmed",
                "payment.settled",
                "payment.declined",
                "payment.canceled",
                "payment.failed",
                "refund.succeeded"
            ]
        );
        for t in EventType::ALL {
            assert_eq!(EventType::try_from(t.as_str()).unwrap(), t);
            assert_eq!(t.to_string(), t.as_str());
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
        for bad in [
            "payment.expired",
            "Payment.Confirmed",
            "payment_confirmed",
            "",
        ] {
            assert!(EventType::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_are_deterministic_per_change() {
        let at = Timestamp::from_millis(1_795_752_326_123);
        let pay = "pay_01JD8Y2Z5K7M9Q1R3T5V7X9ZAB";
        let id = EventId::for_change(at, pay, EventType::PaymentSettled);
        assert_eq!(id, EventId::for_change(at, pay, EventType::PaymentSettled));
        assert_ne!(
            id,
            EventId::for_change(at, pay, EventType::PaymentConfirmed)
        );
        assert_ne!(
            id,
            EventId::for_change(
                at,
                "pay_01JD8Y2Z5K7M9Q1R3T5V7X9ZAC",
                EventType::PaymentSettled
            )
        );
        let later = EventId::for_change(at.plus_seconds(1), pay, EventType::PaymentSettled);
        assert_ne!(id, later);
        assert!(id < later);
        assert_eq!(id.as_str()[14..], later.as_str()[14..], "same random part");
        assert_eq!(id.created_at(), at);
        assert_eq!(id.as_str().len(), 30);
        assert!(id.as_str().starts_with("evt_"));
        assert_eq!(EventId::try_from(id.as_str()).unwrap(), id);
        assert_eq!(id.to_string(), id.as_str());

        // The random part is the first 10 bytes of the SHA-256 of the change.
        let digest = sha256(format!("2ch/event/v1|{pay}|payment.settled").as_bytes());
        let mut random = [0u8; 16];
        random[6..].copy_from_slice(&digest[..10]);
        let ulid = ulid::Ulid::from_parts(at.millis() as u64, u128::from_be_bytes(random));
        assert_eq!(id.as_str(), format!("evt_{ulid}"));

        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.as_str()));
        assert_eq!(serde_json::from_str::<EventId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<EventId>("\"evt_x\"").is_err());
    }

    #[test]
    fn event_id_shape() {
        assert!(EventId::try_from("evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DE").is_ok());
        for bad in [
            "evt_01jdq8z6v3w4x5y6z7a8b9c0de",
            "evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0D",
            "evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DEF",
            "evt_81JDQ8Z6V3W4X5Y6Z7A8B9C0DE",
            "evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DI",
            "evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DL",
            "evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DO",
            "evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DU",
            "pay_01JDQ8Z6V3W4X5Y6Z7A8B9C0DE",
            "evt01JDQ8Z6V3W4X5Y6Z7A8B9C0DE",
            "",
        ] {
            let e = EventId::try_from(bad).expect_err(bad);
            assert!(e.to_string().starts_with("id: "), "{e}");
        }
    }

    #[test]
    fn the_contract_vectors_sign_with_a_secret_of_this_shape() {
        // vectors.json, webhook_signature: the secret is a well-formed `whsec_` secret.
        let secret = format!("whsec_{}", "5e".repeat(32));
        assert!(WebhookSecret::is_well_formed(&secret));
        let body = br#"{"id":"evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DE","type":"payment.settled"}"#;
        assert!(EventId::try_from("evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DE").is_ok());
        assert_eq!(
            crate::crypto::webhook_signature(&secret, 1_764_216_306, body),
            "t=1764216306,v1=05010a07f7e50363e5ef5633a60dd3970823f5b48dce60c9aad628a309f712f8"
        );
    }

    #[test]
    fn a_secret_sealed_before_a_key_rotation_still_opens() {
        let (old, new) = ("11".repeat(32), "22".repeat(32));
        let before = SecretSeal::from_issuer_keys(&IssuerKeys::parse(&old).unwrap());
        let after =
            SecretSeal::from_issuer_keys(&IssuerKeys::parse(&format!("{new},{old}")).unwrap());
        let secret = WebhookSecret::generate();
        let sealed = before.seal(&secret, "m-1");
        assert_eq!(
            after.open(&sealed, "m-1").unwrap().as_str(),
            secret.as_str()
        );
        // New seals use the new generation: the old key alone no longer opens them.
        let resealed = after.seal(&secret, "m-1");
        assert!(before.open(&resealed, "m-1").is_err());
        assert!(after.open(&resealed, "m-2").is_err());
    }
}

//! Keys and codes of the contract (HMAC-SHA256, `|`-separated UTF-8 messages, lowercase hex), and
//! the bearer secrets the server issues.
//!
//! Secret comparisons go through `subtle` (or `Mac::verify_slice`, which uses it), so the time a
//! check takes does not depend on how many leading bytes matched.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Timestamp;
use crate::error::DomainError;
use crate::ids::{
    AuthCode, BeaconProof, Challenge, Counter, MerchantId, PaymentId, TerminalId, UniqueCode,
};
use crate::money::{Amount, Currency};

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], message: &[&str]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in message {
        mac.update(part.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing is not something a payment server can continue through.
    getrandom::fill(buf).expect("operating system random number generator failed");
}

/// The issuer master key (32 bytes) from which every device key is derived.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// Parses the configured form: 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, DomainError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut key).map_err(|_| {
            DomainError::Internal("ISSUER_MASTER_KEY must be 64 hex characters".into())
        })?;
        Ok(Self(key))
    }

    /// The raw key, for keys derived from it inside this crate (the webhook secret seal).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `K_dev = HMAC(ISSUER_MASTER_KEY, "2ch/device-key/v1|" + unique_code)`.
    pub fn device_key(&self, code: &UniqueCode) -> DeviceKey {
        DeviceKey(hmac(&self.0, &["2ch/device-key/v1|", code.as_str()]))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// The issuer master keys in service: the current generation first, then older ones whose
/// devices are still in the field. Device keys are burned in at manufacture, so a new master key
/// can only serve new devices; the old one must keep verifying the old devices until they are
/// retired (docs/OPERATIONS.md, "Rotating the issuer master key"). Configured as comma-separated
/// 64-hex-character keys; the contract's single key is the one-generation case.
#[derive(Clone, Debug)]
pub struct IssuerKeys(Vec<MasterKey>);

impl IssuerKeys {
    /// At most this many generations: each verification tries them all.
    pub const MAX_GENERATIONS: usize = 4;

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let keys = s
            .split(',')
            .map(MasterKey::from_hex)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.len() > Self::MAX_GENERATIONS {
            return Err(DomainError::Internal(format!(
                "at most {} issuer master keys",
                Self::MAX_GENERATIONS
            )));
        }
        Ok(Self(keys))
    }

    /// The current generation: the first configured key.
    /// Every generation in service, newest first.
    pub fn generations(&self) -> impl Iterator<Item = &MasterKey> {
        self.0.iter()
    }

    pub fn current(&self) -> &MasterKey {
        // `parse` refuses an empty list (an empty key is not 64 hex characters), and `From`
        // takes one key, so there is always a first.
        &self.0[0]
    }

    fn device_keys<'a>(&'a self, code: &'a UniqueCode) -> impl Iterator<Item = DeviceKey> + 'a {
        self.0.iter().map(move |k| k.device_key(code))
    }

    /// Whether any generation's device key made this proof (each compare in constant time).
    pub fn verify_registration_proof(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
        challenge: &Challenge,
        proof: &str,
    ) -> bool {
        self.device_keys(code)
            .any(|k| k.verify_registration_proof(code, terminal, challenge, proof))
    }

    /// Whether any generation's device key broadcast this proof in a step the server accepts at
    /// `now` (see [`BeaconStep::accepted_at`]); every candidate is compared in constant time.
    pub fn verify_beacon_proof(
        &self,
        code: &UniqueCode,
        proof: &BeaconProof,
        now: Timestamp,
    ) -> bool {
        self.device_keys(code).any(|k| {
            BeaconStep::accepted_at(now).any(|step| k.verify_beacon_proof(code, step, proof))
        })
    }

    /// Whether any generation's device key made this auth code (each compare in constant time).
    pub fn verify_auth_code(
        &self,
        code: &UniqueCode,
        binding: &PaymentBinding<'_>,
        auth: &AuthCode,
    ) -> bool {
        self.device_keys(code)
            .any(|k| k.verify_auth_code(binding, auth))
    }
}

impl From<MasterKey> for IssuerKeys {
    fn from(key: MasterKey) -> Self {
        Self(vec![key])
    }
}

/// A device's key, derived on demand and never stored.
#[derive(Clone)]
pub struct DeviceKey([u8; 32]);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

/// The fields an auth code binds.
#[derive(Debug, Clone, Copy)]
pub struct PaymentBinding<'a> {
    pub payment_id: &'a PaymentId,
    pub merchant_id: &'a MerchantId,
    pub amount: Amount,
    pub currency: Currency,
    pub challenge: &'a Challenge,
    pub counter: Counter,
}

impl DeviceKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn registration_mac(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
        challenge: &Challenge,
    ) -> [u8; 32] {
        hmac(
            &self.0,
            &[
                "2ch/register/v2|",
                code.as_str(),
                "|",
                terminal.as_str(),
                "|",
                challenge.as_str(),
            ],
        )
    }

    /// `hex(HMAC(K_dev, "2ch/register/v2|" + unique_code + "|" + terminal_id + "|" + challenge))`,
    /// as the device makes it for a server challenge.
    pub fn registration_proof(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
        challenge: &Challenge,
    ) -> String {
        hex::encode(self.registration_mac(code, terminal, challenge))
    }

    /// Checks a registration proof in constant time. Malformed hex simply does not verify.
    pub fn verify_registration_proof(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
        challenge: &Challenge,
        proof: &str,
    ) -> bool {
        let mut given = [0u8; 32];
        if proof.len() != 64 || hex::decode_to_slice(proof, &mut given).is_err() {
            return false;
        }
        bool::from(
            self.registration_mac(code, terminal, challenge)
                .ct_eq(&given),
        )
    }

    fn beacon_mac(&self, code: &UniqueCode, step: BeaconStep) -> [u8; BeaconProof::LEN] {
        let step = step.0.to_string();
        let mac = hmac(&self.0, &["2ch/beacon/v1|", code.as_str(), "|", &step]);
        let mut out = [0u8; BeaconProof::LEN];
        out.copy_from_slice(&mac[..BeaconProof::LEN]);
        out
    }

    /// The first 16 hex characters of `hex(HMAC(K_dev, "2ch/beacon/v1|" + unique_code + "|" +
    /// step))`, as the device broadcasts it during `step`.
    pub fn beacon_proof(&self, code: &UniqueCode, step: BeaconStep) -> String {
        hex::encode(self.beacon_mac(code, step))
    }

    /// Checks a beacon proof of one step in constant time.
    pub fn verify_beacon_proof(
        &self,
        code: &UniqueCode,
        step: BeaconStep,
        proof: &BeaconProof,
    ) -> bool {
        bool::from(self.beacon_mac(code, step).ct_eq(proof.bytes()))
    }

    fn auth_mac(&self, b: &PaymentBinding<'_>) -> [u8; 32] {
        let amount = b.amount.to_string();
        let counter = b.counter.to_string();
        hmac(
            &self.0,
            &[
                "2ch/pay/v1|",
                b.payment_id.as_str(),
                "|",
                b.merchant_id.as_str(),
                "|",
                &amount,
                "|",
                b.currency.code(),
                "|",
                b.challenge.as_str(),
                "|",
                &counter,
            ],
        )
    }

    /// The payment auth code, as the device makes it.
    pub fn auth_code(&self, b: &PaymentBinding<'_>) -> String {
        hex::encode(self.auth_mac(b))
    }

    /// Checks an auth code in constant time.
    pub fn verify_auth_code(&self, b: &PaymentBinding<'_>, code: &AuthCode) -> bool {
        bool::from(self.auth_mac(b).ct_eq(code.bytes()))
    }
}

/// A 30-second step of the beacon's rolling proof: `floor(unix_seconds / 30)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BeaconStep(i64);

impl BeaconStep {
    pub const SECONDS: i64 = 30;
    /// Steps accepted around the server's: two behind (a POS may have heard the beacon up to a
    /// minute ago, and the device's clock may lag) and one ahead (a device clock that runs fast).
    pub const BEHIND: i64 = 2;
    pub const AHEAD: i64 = 1;

    pub const fn at(t: Timestamp) -> Self {
        Self(t.seconds().div_euclid(Self::SECONDS))
    }

    pub const fn of_number(step: i64) -> Self {
        Self(step)
    }

    pub const fn number(self) -> i64 {
        self.0
    }

    /// The steps whose proof is accepted at `now`: `now_step - 2 ..= now_step + 1`.
    pub fn accepted_at(now: Timestamp) -> impl Iterator<Item = BeaconStep> {
        let now = Self::at(now).0;
        (now - Self::BEHIND..=now + Self::AHEAD).map(Self)
    }
}

/// The `Twochan-Signature` header of a webhook: `t=<unix seconds>,v1=<hex(HMAC(secret, t + "." +
/// body))>`, keyed with the UTF-8 bytes of the whole secret string, over the raw body bytes.
pub fn webhook_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// SHA-256 of a secret, as stored in place of API keys and terminal tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretHash(String);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(hex::encode(Sha256::digest(secret.as_bytes())))
    }

    /// Rebuilds a hash read back from storage.
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lowercase hex SHA-256 of `data`, for fingerprints that are not secrets.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The prefix of every merchant API key: the bearer check tells a secret's kind by it.
pub const MERCHANT_KEY_PREFIX: &str = "mk_";
/// The prefix of every terminal token.
pub const TERMINAL_TOKEN_PREFIX: &str = "tt_";

/// A bearer secret issued once (merchant API key, terminal token). Only its hash is stored.
pub struct IssuedSecret {
    pub secret: String,
    pub hash: SecretHash,
}

impl IssuedSecret {
    /// A new secret: `prefix` + 32 random bytes in hex. The prefix tells a leaked secret's kind.
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes);
        let secret = format!("{prefix}{}", hex::encode(bytes));
        let hash = SecretHash::of(&secret);
        Self { secret, hash }
    }
}

impl fmt::Debug for IssuedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuedSecret {{ hash: {} }}", self.hash.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review aid that fails loudly: the code and proof checks compare with `subtle` (constant
    /// time), never with `==`, whose early exit would leak how many leading bytes of a guess match.
    #[test]
    fn secret_checks_compare_in_constant_time() {
        let src = include_str!("crypto.rs");
        // The device key is where the bytes are compared; the issuer keys only delegate to it.
        let src = &src[src.find("impl DeviceKey {").expect("impl DeviceKey")..];
        for f in [
            "fn verify_registration_proof",
            "fn verify_auth_code",
            "fn verify_beacon_proof",
        ] {
            let body = &src[src.find(f).expect(f)..];
            let body = &body[..body.find("\n    }\n").expect("end of fn")];
            assert!(
                body.contains(".ct_eq("),
                "{f} must use subtle::ConstantTimeEq"
            );
            assert!(!body.contains("=="), "{f} compares secrets with ==");
        }
        let ids = include_str!("ids.rs");
        let auth_code = &ids[ids.find("pub struct AuthCode").unwrap() - 40..];
        assert!(
            !auth_code[..60].contains("PartialEq"),
            "AuthCode must not derive PartialEq (a byte-wise, early-exit compare)"
        );
    }

    #[test]
    fn every_key_generation_verifies_its_own_devices() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let keys =
            IssuerKeys::parse(&format!("{},{}", hex::encode(new), hex::encode(old))).unwrap();
        let code = UniqueCode::try_from("device-0001").unwrap();
        let terminal = TerminalId::try_from("terminal-01").unwrap();
        let challenge = Challenge::generate();
        let now = Timestamp::from_millis(1_764_216_306_000);
        for master in [old, new] {
            let device = MasterKey(master).device_key(&code);
            let proof = device.registration_proof(&code, &terminal, &challenge);
            assert!(keys.verify_registration_proof(&code, &terminal, &challenge, &proof));
            let beacon = device.beacon_proof(&code, BeaconStep::at(now));
            let beacon = BeaconProof::try_from(beacon.as_str()).unwrap();
            assert!(keys.verify_beacon_proof(&code, &beacon, now));
        }
        let stranger = MasterKey([3u8; 32])
            .device_key(&code)
            .registration_proof(&code, &terminal, &challenge);
        assert!(!keys.verify_registration_proof(&code, &terminal, &challenge, &stranger));
        assert!(IssuerKeys::parse("").is_err());
        assert!(IssuerKeys::parse(&vec![hex::encode(old); 5].join(",")).is_err());
        assert!(!format!("{keys:?}").contains(&hex::encode(old)));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let m = MasterKey::from_hex(&"ab".repeat(32)).unwrap();
        assert!(!format!("{m:?}").contains("abab"));
        let s = IssuedSecret::generate("tt_");
        assert!(!format!("{s:?}").contains(&s.secret));
        assert_eq!(s.hash, SecretHash::of(&s.secret));
        assert!(s.secret.starts_with("tt_") && s.secret.len() == 67);
    }

    #[test]
    fn master_key_must_be_64_hex() {
        assert!(MasterKey::from_hex("00").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn registration_proof_rejects_malformed_and_other_terminals() {
        let m = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let code = UniqueCode::try_from("beacon-0001").unwrap();
        let t1 = TerminalId::try_from("phone-alice-01").unwrap();
        let t2 = TerminalId::try_from("phone-mallory").unwrap();
        let k = m.device_key(&code);
        let c1 = Challenge::generate();
        let c2 = Challenge::generate();
        let proof = k.registration_proof(&code, &t1, &c1);
        assert!(k.verify_registration_proof(&code, &t1, &c1, &proof));
        assert!(!k.verify_registration_proof(&code, &t2, &c1, &proof));
        assert!(!k.verify_registration_proof(&code, &t1, &c2, &proof));
        assert!(!k.verify_registration_proof(&code, &t1, &c1, &proof[..63]));
        assert!(!k.verify_registration_proof(&code, &t1, &c1, "not hex"));
    }

    /// The window's edges with an injected clock: steps now-2 and now+1 are accepted, now-3 and
    /// now+2 are not, at the first and the last second of a step.
    #[test]
    fn beacon_window_edges() {
        let keys = IssuerKeys::from(MasterKey([7u8; 32]));
        let device = MasterKey([7u8; 32]).device_key(&UniqueCode::try_from("beacon-0001").unwrap());
        let code = UniqueCode::try_from("beacon-0001").unwrap();
        let other = UniqueCode::try_from("beacon-0002").unwrap();
        // 1764216300 is the first second of step 58807210.
        for now_s in [1_764_216_300, 1_764_216_329] {
            let now = Timestamp::from_millis(now_s * 1000 + 999);
            let step = BeaconStep::at(now).number();
            assert_eq!(step, 58_807_210);
            for (offset, accepted) in [
                (-3, false),
                (-2, true),
                (-1, true),
                (0, true),
                (1, true),
                (2, false),
            ] {
                let proof = device.beacon_proof(&code, BeaconStep::of_number(step + offset));
                let proof = BeaconProof::try_from(proof.as_str()).unwrap();
                assert_eq!(
                    keys.verify_beacon_proof(&code, &proof, now),
                    accepted,
                    "offset {offset} at {now_s}"
                );
                assert!(
                    !keys.verify_beacon_proof(&other, &proof, now),
                    "another code's proof"
                );
            }
        }
    }
}

//! Simulators of the three parties around the API, as real HTTP clients of the contract:
//! a short-range [`Device`] (beacon code and its rolling proof, burned-in key, counter), a
//! merchant's [`Pos`] and the user's [`Phone`]. The demo, the integration tests and POS/phone
//! integrators use them alike.

pub mod conflict_proxy;
pub mod receiver;
pub mod stack;

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use twochan_domain::{
    Challenge, Counter, Currency, MerchantId, PaymentId, TerminalId, Timestamp, UniqueCode,
    crypto::{BeaconStep, DeviceKey, MasterKey, PaymentBinding},
};

/// What a POS hears from a device's beacon: its code and the proof of the current 30 s step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beacon {
    pub code: String,
    pub proof: String,
}

impl Beacon {
    /// A beacon as heard, with whatever proof (a stale or forged one, in tests).
    pub fn heard(code: &str, proof: &str) -> Self {
        Self {
            code: code.into(),
            proof: proof.into(),
        }
    }
}

/// A device as manufactured: its code and the key derived from the issuer master key.
#[derive(Debug, Clone)]
pub struct Device {
    pub code: UniqueCode,
    key: DeviceKey,
    counter: u64,
}

impl Device {
    pub fn manufacture(master: &MasterKey, code: &str) -> Self {
        let code = UniqueCode::try_from(code).expect("simulated device code is well-formed");
        Self {
            key: master.device_key(&code),
            code,
            counter: 0,
        }
    }

    /// The burned-in key, for tests that compute codes by hand (an old message format, say).
    pub fn key_hex(&self) -> String {
        self.key.to_hex()
    }

    /// The code the beacon broadcasts.
    pub fn code(&self) -> &str {
        self.code.as_str()
    }

    /// What the beacon broadcasts now: the code and the proof of the current step.
    pub fn beacon(&self) -> Beacon {
        self.beacon_at(Timestamp::now())
    }

    /// What the beacon broadcast (or will) at `at`.
    pub fn beacon_at(&self, at: Timestamp) -> Beacon {
        self.beacon_of_step(BeaconStep::at(at))
    }

    pub fn beacon_of_step(&self, step: BeaconStep) -> Beacon {
        Beacon {
            code: self.code.to_string(),
            proof: self.key.beacon_proof(&self.code, step),
        }
    }

    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Sets the counter, as a device restored from a backup (or a clone) would.
    pub fn set_counter(&mut self, counter: u64) {
        self.counter = counter;
    }

    /// The registration proof the device hands the phone when they pair, for the server's
    /// challenge.
    pub fn registration_proof(&self, terminal_id: &str, challenge: &str) -> String {
        let terminal =
            TerminalId::try_from(terminal_id).expect("simulated terminal id is well-formed");
        let challenge = Challenge::try_from(challenge).expect("server challenge is well-formed");
        self.key
            .registration_proof(&self.code, &terminal, &challenge)
    }

    /// Contract revision 1's registration proof, `hex(HMAC(K_dev, "2ch/register/v1|" + code +
    /// "|" + terminal_id))`, without a challenge: revision 2 refuses it (422), which the tests
    /// and the hostile-input sweep check. Only the simulators make it, so it lives here.
    pub fn revision1_registration_proof(&self, terminal_id: &str) -> String {
        let key = hex::decode(self.key.to_hex()).expect("hex of the device key");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(format!("2ch/register/v1|{}|{terminal_id}", self.code).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The auth code for a payment object as the phone received it: advances the counter.
    /// Returns `(auth_code, counter)`.
    pub fn authorize(&mut self, payment: &Value) -> (String, String) {
        self.counter += 1;
        let counter = self.counter;
        (self.auth_code_for(payment, counter), counter.to_string())
    }

    /// The auth code for a payment at a given counter, without touching the device's counter.
    pub fn auth_code_for(&self, payment: &Value, counter: u64) -> String {
        let field = |k: &str| {
            payment[k]
                .as_str()
                .unwrap_or_else(|| panic!("payment has no {k}: {payment}"))
        };
        let payment_id = PaymentId::try_from(field("payment_id")).expect("payment_id");
        let merchant_id = MerchantId::try_from(field("merchant_id")).expect("merchant_id");
        let challenge = Challenge::try_from(field("challenge").to_owned()).expect("challenge");
        let binding = PaymentBinding {
            payment_id: &payment_id,
            merchant_id: &merchant_id,
            amount: payment["amount"]
                .as_u64()
                .expect("amount")
                .try_into()
                .expect("amount in range"),
            currency: Currency::try_from(field("currency")).expect("currency"),
            challenge: &challenge,
            counter: Counter::new(counter),
        };
        self.key.auth_code(&binding)
    }
}

/// One HTTP exchange with the API.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body, or `Value::Null` when empty.
    pub json: Value,
}

impl ApiResponse {
    /// The contract error code, if this is an error.
    pub fn error_code(&self) -> Option<&str> {
        self.json["error"]["code"].as_str()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A reqwest client builder with the workspace's TLS (rustls on ring, `twochan_aws::tls_config`).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(twochan_aws::tls_config())
}

/// A plain HTTP(S) client with the workspace's TLS.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("http client")
}

/// A thin client of the API's base URL.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// A request's optional parts.
#[derive(Debug, Default, Clone)]
pub struct Call<'a> {
    pub bearer: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub body: Option<Value>,
}

impl Api {
    pub fn new(base_url: &str) -> Self {
        let http = http_client_builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        call: Call<'_>,
    ) -> reqwest::Result<ApiResponse> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = call.bearer {
            req = req.bearer_auth(b);
        }
        if let Some(k) = call.idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(body) = call.body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(ApiResponse {
            status,
            headers,
            json,
        })
    }
}

/// A merchant's POS terminal.
#[derive(Debug, Clone)]
pub struct Pos {
    pub api: Api,
    pub merchant_id: String,
    pub api_key: String,
    pub pos_id: String,
}

impl Pos {
    pub fn new(api: Api, merchant_id: &str, api_key: &str, pos_id: &str) -> Self {
        Self {
            api,
            merchant_id: merchant_id.into(),
            api_key: api_key.into(),
            pos_id: pos_id.into(),
        }
    }

    fn auth(&self) -> Call<'_> {
        Call {
            bearer: Some(&self.api_key),
            ..Call::default()
        }
    }

    /// Channel 1: the POS heard a device's beacon and asks for a payment.
    pub async fn request_payment(
        &self,
        beacon: &Beacon,
        amount: u64,
        currency: &str,
        reference: Option<&str>,
        idempotency_key: &str,
    ) -> reqwest::Result<ApiResponse> {
        let mut body = json!({
            "unique_code": beacon.code,
            "beacon_proof": beacon.proof,
            "amount": amount,
            "currency": currency,
            "pos_id": self.pos_id,
        });
        if let Some(r) = reference {
            body["reference"] = json!(r);
        }
        let call = Call {
            idempotency_key: Some(idempotency_key),
            body: Some(body),
            ..self.auth()
        };
        self.api.call(Method::POST, "/v1/payments", call).await
    }

    pub async fn payment(&self, payment_id: &str) -> reqwest::Result<ApiResponse> {
        self.api
            .call(
                Method::GET,
                &format!("/v1/payments/{payment_id}"),
                self.auth(),
            )
            .await
    }

    pub async fn cancel(&self, payment_id: &str) -> reqwest::Result<ApiResponse> {
        self.api
            .call(
                Method::POST,
                &format!("/v1/payments/{payment_id}/cancel"),
                self.auth(),
            )
            .await
    }

    /// `PUT /v1/webhook-endpoint`: the answer carries the endpoint's new secret.
    pub async fn set_webhook(&self, url: &str) -> reqwest::Result<ApiResponse> {
        let call = Call {
            body: Some(json!({ "url": url })),
            ..self.auth()
        };
        self.api
            .call(Method::PUT, "/v1/webhook-endpoint", call)
            .await
    }

    pub async fn delete_webhook(&self) -> reqwest::Result<ApiResponse> {
        self.api
            .call(Method::DELETE, "/v1/webhook-endpoint", self.auth())
            .await
    }

    pub async fn balance(&self) -> reqwest::Result<ApiResponse> {
        self.api.call(Method::GET, "/v1/balance", self.auth()).await
    }

    /// Settled amount and count in `currency` (zero when none).
    pub async fn settled(&self, currency: &str) -> reqwest::Result<(u64, u64)> {
        let b = self.balance().await?;
        let entry = b.json["balances"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["currency"] == currency).cloned())
            .unwrap_or(Value::Null);
        Ok((
            entry["settled_amount"].as_u64().unwrap_or(0),
            entry["settled_count"].as_u64().unwrap_or(0),
        ))
    }

    /// Polls the payment until its status is `status` or `timeout` passes; returns the last read.
    pub async fn wait_for_status(
        &self,
        payment_id: &str,
        status: &str,
        timeout: Duration,
    ) -> reqwest::Result<ApiResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.payment(payment_id).await?;
            if r.json["status"] == status || tokio::time::Instant::now() >= deadline {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The user's phone: registers devices and confirms payments with codes from the device.
#[derive(Debug, Clone)]
pub struct Phone {
    pub api: Api,
    pub terminal_id: String,
    pub token: Option<String>,
    /// The device whose registration issued `token`: deregistering it revokes the token.
    pub token_device: Option<String>,
}

impl Phone {
    pub fn new(api: Api, terminal_id: &str) -> Self {
        Self {
            api,
            terminal_id: terminal_id.into(),
            token: None,
            token_device: None,
        }
    }

    fn auth(&self) -> Call<'_> {
        Call {
            bearer: self.token.as_deref(),
            ..Call::default()
        }
    }

    /// Asks the server for a registration challenge for `unique_code`.
    pub async fn challenge(&self, unique_code: &str) -> reqwest::Result<ApiResponse> {
        let call = Call {
            body: Some(json!({"unique_code": unique_code})),
            ..Call::default()
        };
        self.api
            .call(Method::POST, "/v1/devices/challenges", call)
            .await
    }

    /// Asks for a challenge, has `device` sign it over the short-range link and registers it,
    /// with this phone's token if it has one (a terminal that holds a device is its phone's);
    /// keeps the new token on success.
    pub async fn register(&mut self, device: &Device) -> reqwest::Result<ApiResponse> {
        let challenge = self.challenge(device.code()).await?;
        let Some(challenge) = challenge.json["challenge"].as_str().map(str::to_owned) else {
            return Ok(challenge);
        };
        let proof = device.registration_proof(&self.terminal_id, &challenge);
        self.register_with(device.code(), &challenge, &proof).await
    }

    /// `POST /v1/devices` with a given challenge and proof (and this phone's token, if any).
    pub async fn register_with(
        &mut self,
        unique_code: &str,
        challenge: &str,
        proof: &str,
    ) -> reqwest::Result<ApiResponse> {
        let body = json!({
            "unique_code": unique_code,
            "terminal_id": self.terminal_id,
            "challenge": challenge,
            "registration_proof": proof,
        });
        let call = Call {
            body: Some(body),
            ..self.auth()
        };
        let r = self.api.call(Method::POST, "/v1/devices", call).await?;
        if r.status.is_success() {
            self.token = r.json["terminal_token"].as_str().map(str::to_owned);
            self.token_device = Some(unique_code.to_owned());
        }
        Ok(r)
    }

    /// Deregisters a device; the token goes with it if that device's registration issued it.
    pub async fn deregister(&mut self, unique_code: &str) -> reqwest::Result<ApiResponse> {
        let r = self
            .api
            .call(
                Method::DELETE,
                &format!("/v1/devices/{unique_code}"),
                self.auth(),
            )
            .await?;
        if r.status.is_success() && self.token_device.as_deref() == Some(unique_code) {
            self.token = None;
            self.token_device = None;
        }
        Ok(r)
    }

    pub async fn pending(&self) -> reqwest::Result<ApiResponse> {
        self.api
            .call(Method::GET, "/v1/pending-payments", self.auth())
            .await
    }

    pub async fn payment(&self, payment_id: &str) -> reqwest::Result<ApiResponse> {
        self.api
            .call(
                Method::GET,
                &format!("/v1/payments/{payment_id}"),
                self.auth(),
            )
            .await
    }

    /// Channel 2: confirms with the code the device computed.
    pub async fn confirm(
        &self,
        payment_id: &str,
        auth_code: &str,
        counter: &str,
    ) -> reqwest::Result<ApiResponse> {
        let body = json!({"auth_code": auth_code, "counter": counter});
        let call = Call {
            body: Some(body),
            ..self.auth()
        };
        self.api
            .call(
                Method::POST,
                &format!("/v1/payments/{payment_id}/confirm"),
                call,
            )
            .await
    }

    pub async fn decline(&self, payment_id: &str) -> reqwest::Result<ApiResponse> {
        self.api
            .call(
                Method::POST,
                &format!("/v1/payments/{payment_id}/decline"),
                self.auth(),
            )
            .await
    }
}

/// A fresh identifier for tests and demos: `prefix` + 16 random hex characters.
pub fn unique_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    twochan_domain::crypto::fill_random(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// A merchant of a fresh id (`prefix` + [`unique_id`]'s suffix) with a new API key, stored as the
/// operator command stores one: its id and the key's secret (only its hash is stored).
pub async fn new_merchant(
    store: &impl twochan_domain::ports::Directory,
    prefix: &str,
) -> twochan_domain::Result<(String, String)> {
    let id = unique_id(prefix);
    let key =
        twochan_domain::crypto::IssuedSecret::generate(twochan_domain::crypto::MERCHANT_KEY_PREFIX);
    let merchant = MerchantId::try_from(id.as_str()).expect("a unique id is a merchant id");
    store
        .put_merchant(&merchant, &key.hash, Timestamp::now())
        .await?;
    Ok((id, key.secret))
}

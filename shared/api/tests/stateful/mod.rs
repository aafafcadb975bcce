//! A world that changes: the real use cases (`routes::handle`, `settlement`) over a
//! [`MemoryStore`], with queues that keep what they were sent. A merchant, devices and phones are
//! made as the API makes them (registration over a challenge, beacon proofs, auth codes), so a test
//! drives the same requests the emulator tests send, in milliseconds.

#![allow(dead_code)]

use std::sync::Mutex;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use lambda_http::Body;
use serde_json::{Value, json};
use twochan_api::{
    routes::{App, Function, handle},
    settlement::{SettleOptions, settle_batch_with},
};
use twochan_domain::{
    Amount, Challenge, Counter, Currency, MerchantId, PaymentId, Result, TerminalId, Timestamp,
    UniqueCode,
    crypto::{BeaconStep, DeviceKey, IssuedSecret, MasterKey, PaymentBinding},
    ports::{
        Devices, Directory, EventMessage, EventQueue, RegistrationChallenge, SettlementMessage,
        SettlementQueue,
    },
};
use twochan_memory::{
    MemoryStore,
    conformance::{self, fresh},
};

use crate::support;

pub const MASTER_KEY_HEX: &str = support::MASTER_KEY_HEX;

/// A queue that keeps every message.
pub struct Kept<T>(pub Mutex<Vec<T>>);

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T: Clone> Kept<T> {
    pub fn all(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
}

impl SettlementQueue for Kept<SettlementMessage> {
    async fn enqueue(&self, message: &SettlementMessage) -> Result<()> {
        self.0.lock().unwrap().push(message.clone());
        Ok(())
    }
}

impl EventQueue for Kept<EventMessage> {
    async fn enqueue_event(&self, message: &EventMessage) -> Result<()> {
        self.0.lock().unwrap().push(message.clone());
        Ok(())
    }
}

pub type MemoryApp = App<MemoryStore, Kept<SettlementMessage>, Kept<EventMessage>>;

/// One answer of a handler.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && (code.is_empty() || self.code() == code)
    }

    pub fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_default().to_owned()
    }
}

/// A device as manufactured, and its counter.
#[derive(Clone)]
pub struct Dev {
    pub code: UniqueCode,
    key: DeviceKey,
    pub counter: u64,
}

impl Dev {
    pub fn code(&self) -> &str {
        self.code.as_str()
    }

    pub fn beacon(&self) -> String {
        self.key
            .beacon_proof(&self.code, BeaconStep::at(Timestamp::now()))
    }

    /// The auth code for a payment as the phone got it, at the next counter.
    pub fn authorize(&mut self, payment: &Value) -> (String, String) {
        self.counter += 1;
        (
            self.auth_code(payment, self.counter),
            self.counter.to_string(),
        )
    }

    pub fn auth_code(&self, payment: &Value, counter: u64) -> String {
        let field = |k: &str| payment[k].as_str().unwrap_or_default().to_owned();
        let payment_id = PaymentId::try_from(field("payment_id")).unwrap();
        let merchant_id = MerchantId::try_from(field("merchant_id")).unwrap();
        let challenge = Challenge::try_from(field("challenge")).unwrap();
        self.key.auth_code(&PaymentBinding {
            payment_id: &payment_id,
            merchant_id: &merchant_id,
            amount: Amount::try_from(payment["amount"].as_u64().unwrap()).unwrap(),
            currency: Currency::try_from(field("currency").as_str()).unwrap(),
            challenge: &challenge,
            counter: Counter::new(counter),
        })
    }
}

/// A merchant as its POS knows it.
pub struct Merchant {
    pub id: MerchantId,
    pub key: String,
}

/// A device registered to a phone.
pub struct Paired {
    pub dev: Dev,
    pub terminal: String,
    pub token: String,
}

pub struct World {
    pub app: MemoryApp,
    master: MasterKey,
}

impl World {
    pub fn new() -> Self {
        let master = MasterKey::from_hex(MASTER_KEY_HEX).unwrap();
        let app = App {
            store: MemoryStore::new(),
            queue: Kept::default(),
            events: Kept::default(),
            allow_loopback_webhooks: false,
            issuer_keys: master.clone().into(),
            pending_ttl_seconds: 120,
        };
        Self { app, master }
    }

    pub fn store(&self) -> &MemoryStore {
        &self.app.store
    }

    pub async fn call(
        &self,
        function: Function,
        method: &str,
        path: &str,
        bearer: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        if !bearer.is_empty() {
            headers.push(("authorization".into(), format!("Bearer {bearer}").into()));
        }
        if let Some(k) = key {
            headers.push(("idempotency-key".into(), k.as_bytes().to_vec()));
        }
        let bytes = match &body {
            Some(b) => {
                headers.push(("content-type".into(), b"application/json".to_vec()));
                serde_json::to_vec(b).unwrap()
            }
            None => Vec::new(),
        };
        let req = support::request(method, path, &headers, bytes).unwrap();
        let resp = handle(&self.app, function, req).await;
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let status = resp.status().as_u16();
        let body = match resp.body() {
            Body::Empty => Value::Null,
            b => serde_json::from_slice(b.as_ref()).unwrap_or(Value::Null),
        };
        Reply {
            status,
            body,
            replayed,
        }
    }

    pub async fn merchant(&self) -> Merchant {
        let id = MerchantId::try_from(fresh("m-")).unwrap();
        let key = IssuedSecret::generate("mk_");
        self.store()
            .put_merchant(&id, &key.hash, Timestamp::now())
            .await
            .unwrap();
        Merchant {
            id,
            key: key.secret,
        }
    }

    pub fn device(&self) -> Dev {
        let code = UniqueCode::try_from(fresh("dev-")).unwrap();
        Dev {
            key: self.master.device_key(&code),
            code,
            counter: 0,
        }
    }

    /// `POST /v1/devices` over a fresh challenge.
    pub async fn register(&self, dev: &Dev, terminal: &str, bearer: &str) -> Reply {
        let c = RegistrationChallenge::issue(dev.code.clone(), Timestamp::now());
        self.store().put_challenge(&c).await.unwrap();
        let t = TerminalId::try_from(terminal).unwrap();
        let proof = dev.key.registration_proof(&dev.code, &t, &c.challenge);
        let body = json!({"unique_code": dev.code(), "terminal_id": terminal,
                          "challenge": c.challenge.as_str(), "registration_proof": proof});
        self.call(
            Function::Registration,
            "POST",
            "/v1/devices",
            bearer,
            None,
            Some(body),
        )
        .await
    }

    pub async fn paired(&self) -> Paired {
        let dev = self.device();
        let terminal = fresh("phone-");
        let r = self.register(&dev, &terminal, "").await;
        assert_eq!(r.status, 201, "{r:?}");
        Paired {
            dev,
            terminal,
            token: r.str("terminal_token"),
        }
    }

    pub async fn pay(&self, m: &Merchant, dev: &Dev, amount: u64, key: &str) -> Reply {
        self.pay_from(m, dev, amount, key, "pos-01").await
    }

    pub async fn pay_from(
        &self,
        m: &Merchant,
        dev: &Dev,
        amount: u64,
        key: &str,
        pos: &str,
    ) -> Reply {
        let body = json!({"unique_code": dev.code(), "beacon_proof": dev.beacon(),
                          "amount": amount, "currency": "KRW", "pos_id": pos});
        self.call(
            Function::PaymentRequest,
            "POST",
            "/v1/payments",
            &m.key,
            Some(key),
            Some(body),
        )
        .await
    }

    pub async fn confirm(&self, token: &str, id: &str, code: &str, counter: &str) -> Reply {
        let path = format!("/v1/payments/{id}/confirm");
        let body = json!({"auth_code": code, "counter": counter});
        self.call(
            Function::Confirmation,
            "POST",
            &path,
            token,
            None,
            Some(body),
        )
        .await
    }

    pub async fn decline(&self, token: &str, id: &str) -> Reply {
        let path = format!("/v1/payments/{id}/decline");
        self.call(Function::Confirmation, "POST", &path, token, None, None)
            .await
    }

    pub async fn cancel(&self, m: &Merchant, id: &str) -> Reply {
        let path = format!("/v1/payments/{id}/cancel");
        self.call(Function::PaymentRequest, "POST", &path, &m.key, None, None)
            .await
    }

    pub async fn deregister(&self, p: &Paired) -> Reply {
        let path = format!("/v1/devices/{}", p.dev.code());
        self.call(
            Function::Registration,
            "DELETE",
            &path,
            &p.token,
            None,
            None,
        )
        .await
    }

    pub async fn refund(&self, m: &Merchant, id: &str, amount: u64, key: &str) -> Reply {
        let path = format!("/v1/payments/{id}/refunds");
        self.call(
            Function::PaymentRequest,
            "POST",
            &path,
            &m.key,
            Some(key),
            Some(json!({"amount": amount})),
        )
        .await
    }

    pub async fn pending_of(&self, token: &str) -> Vec<Value> {
        let r = self
            .call(
                Function::Confirmation,
                "GET",
                "/v1/pending-payments",
                token,
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["payments"].as_array().cloned().unwrap_or_default()
    }

    /// A pending payment on `p`'s device, confirmed by its phone (not settled).
    pub async fn confirmed(&self, m: &Merchant, p: &mut Paired, amount: u64) -> String {
        let r = self.pay(m, &p.dev, amount, &fresh("k-")).await;
        assert_eq!(r.status, 201, "{r:?}");
        let (code, counter) = p.dev.authorize(&r.body);
        let id = r.str("payment_id");
        let c = self.confirm(&p.token, &id, &code, &counter).await;
        assert_eq!(c.status, 200, "{c:?}");
        id
    }

    /// Delivers settlement messages as one SQS batch to the settlement consumer; the ids of the
    /// messages it asks to get again.
    pub async fn deliver(&self, messages: &[SettlementMessage]) -> Vec<String> {
        let mut event = SqsEvent::default();
        for (i, m) in messages.iter().enumerate() {
            let mut record = SqsMessage::default();
            record.message_id = Some(format!("msg-{i}"));
            record.body = Some(serde_json::to_string(m).unwrap());
            event.records.push(record);
        }
        let options = SettleOptions {
            recheck_pauses_ms: &[],
            orphan_after_ms: twochan_domain::ports::ORPHAN_AFTER_MS,
        };
        let resp = settle_batch_with(&self.app.store, &self.app.events, event, options).await;
        resp.batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    }

    /// Every settlement message sent so far, delivered (in one batch).
    pub async fn settle_all(&self) -> Vec<String> {
        let sent = self.app.queue.all();
        self.deliver(&sent).await
    }

    /// The merchant's KRW balance: (settled, count, refunded, net).
    pub async fn krw_balance(&self, m: &Merchant) -> (u64, u64, u64, u64) {
        conformance::krw_balance(self.store(), &m.id).await
    }

    pub async fn stored(&self, id: &str) -> twochan_domain::Payment {
        use twochan_domain::ports::Payments;
        self.store()
            .payment(&PaymentId::try_from(id).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn stored_device(&self, dev: &Dev) -> twochan_domain::ports::Device {
        self.store().device(&dev.code).await.unwrap().unwrap()
    }
}

//! Shared harness of the integration tests: the stack `make up` deployed (read from
//! `.local/stack.env`), real SDK clients against the emulator, and the simulators.
//!
//! Every test makes its own merchant, devices and phones (and its own tables, queues or conflict
//! proxy where it counts or drains something), so the tests of every area run in parallel and
//! never see each other's payments, balances or counters. A missing stack is a failure, never a
//! skip.

use std::time::Duration;

use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use twochan_aws::{DynamoStore, SqsEventQueue, keys};
use twochan_domain::{
    Timestamp, UniqueCode,
    crypto::MasterKey,
    ports::{Devices, RegistrationChallenge},
};
use twochan_tools::{Api, Device, Phone, Pos, new_merchant, stack::Stack, unique_id};

/// The stack `make up` deployed and real SDK clients on it.
pub struct Harness {
    pub stack: Stack,
    pub api: Api,
    pub master: MasterKey,
    pub store: DynamoStore,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub table: String,
    /// The SDK settings of the clients above, for tests that build their own (failpoints).
    pub config: aws_config::SdkConfig,
}

/// `loader`'s settings on an emulator at `endpoint`, with its throwaway credentials: every SDK
/// configuration of the tests.
pub async fn emulator_config(loader: ConfigLoader, endpoint: &str) -> SdkConfig {
    loader
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

/// The harness's SDK settings (no timeouts of the functions': a slow emulator is not a failure
/// here) on an emulator at `endpoint`.
pub async fn harness_config(endpoint: &str) -> SdkConfig {
    let loader =
        aws_config::defaults(BehaviorVersion::latest()).http_client(twochan_aws::http_client());
    emulator_config(loader, endpoint).await
}

fn require(stack: &Stack, key: &str) -> String {
    stack
        .require(key)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_owned()
}

impl Harness {
    pub async fn new() -> Harness {
        let stack = Stack::load();
        // The harness always targets an emulator: its endpoint and throwaway credentials. With
        // the conflict proxy up (`make up`, CONFLICT_PROXY_URL), through it, as the functions:
        // the in-process handlers then meet DynamoDB's transaction conflicts too (the proxy
        // forwards every other service unchanged).
        let endpoint = stack
            .get("CONFLICT_PROXY_URL")
            .map(str::to_owned)
            .unwrap_or_else(|| require(&stack, "AWS_ENDPOINT_URL"));
        Harness::on(stack, &endpoint).await
    }

    /// The harness with every client going to `endpoint` (the emulator, or a proxy in front of it).
    pub async fn on(stack: Stack, endpoint: &str) -> Harness {
        let config = harness_config(endpoint).await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let table = require(&stack, "TABLE_NAME");
        Harness {
            api: Api::new(&require(&stack, "API_URL")),
            master: MasterKey::from_hex(&require(&stack, "ISSUER_MASTER_KEY")).expect("master key"),
            store: DynamoStore::new(dynamodb.clone(), table.clone()),
            sqs: aws_sdk_sqs::Client::new(&config),
            dynamodb,
            table,
            stack,
            config,
        }
    }

    /// A standard queue of the test's own (named `prefix` + a unique suffix): its URL.
    pub async fn scratch_queue(&self, prefix: &str) -> String {
        self.sqs
            .create_queue()
            .queue_name(unique_id(prefix))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    }

    /// A queue of the test's own of the kind of the stack's settlement queue (FIFO when it is):
    /// its URL.
    pub async fn scratch_settlement_queue(&self, prefix: &str) -> String {
        let create = self.sqs.create_queue();
        let create = if self.var("SETTLEMENT_QUEUE_URL").ends_with(".fifo") {
            create
                .queue_name(format!("{}.fifo", unique_id(prefix)))
                .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        } else {
            create.queue_name(unique_id(prefix))
        };
        create.send().await.unwrap().queue_url.unwrap()
    }

    /// Every message the queue at `url` holds now, each received once and left in flight for a
    /// minute; deleted at once when `delete` (a FIFO group hands out its next ones only then).
    pub async fn receive_all(&self, url: &str, delete: bool) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(60)
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap();
            let batch = out.messages.unwrap_or_default();
            if batch.is_empty() {
                return all;
            }
            if delete {
                for handle in batch.iter().filter_map(|m| m.receipt_handle()) {
                    self.sqs
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .unwrap();
                }
            }
            all.extend(batch);
        }
    }

    pub fn var(&self, key: &str) -> String {
        require(&self.stack, key)
    }

    /// The stack's webhook event queue, as the functions send to it.
    pub fn events(&self) -> SqsEventQueue {
        SqsEventQueue::new(self.sqs.clone(), self.var("WEBHOOK_QUEUE_URL"))
    }

    /// A new merchant (as the operator command makes one) and a POS of it.
    pub async fn pos(&self) -> Pos {
        let (id, key) = new_merchant(&self.store, "m-")
            .await
            .expect("create merchant");
        Pos::new(self.api.clone(), &id, &key, "pos-01")
    }

    pub fn device(&self) -> Device {
        Device::manufacture(&self.master, &unique_id("beacon-"))
    }

    pub fn phone(&self) -> Phone {
        Phone::new(self.api.clone(), &unique_id("phone-"))
    }

    /// A device registered to a new phone.
    pub async fn paired(&self) -> (Device, Phone) {
        let device = self.device();
        let mut phone = self.phone();
        let r = phone.register(&device).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
        (device, phone)
    }

    /// A pending payment of `amount` KRW on `device`.
    pub async fn pending_payment(&self, pos: &Pos, device: &Device, amount: u64) -> Value {
        let r = pos
            .request_payment(&device.beacon(), amount, "KRW", None, &unique_id("k-"))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
        r.json
    }

    /// Moves a pending payment's expiry (and its device's lock) into the past, as if its lifetime
    /// had run out, so expiry paths are tested without waiting.
    pub async fn backdate(&self, payment: &Value) {
        let past = AttributeValue::N((Timestamp::now().millis() - 5_000).to_string());
        let pid =
            twochan_domain::PaymentId::try_from(payment["payment_id"].as_str().unwrap()).unwrap();
        let code = payment["unique_code"].as_str().unwrap();
        for (pk, sk, attr) in [
            (keys::payment_pk(&pid), keys::SK_PAYMENT, "expires_at"),
            (keys::device_pk(code), keys::SK_DEVICE, "pending_expires_at"),
        ] {
            self.dynamodb
                .update_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(pk))
                .key("sk", AttributeValue::S(sk.into()))
                .update_expression(format!("SET {attr} = :past"))
                .expression_attribute_values(":past", past.clone())
                .send()
                .await
                .expect("backdate");
        }
    }

    /// The items of one partition key, as debug strings.
    pub async fn items_of(
        &self,
        pk: &str,
    ) -> Vec<std::collections::HashMap<String, AttributeValue>> {
        self.dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("query")
            .items
            .unwrap_or_default()
    }
}

/// Creates `table` through `target` with the key schema and indexes of `source_table` (the
/// stack's), so a test can have a private table on the real schema.
pub async fn create_table_like(
    source: &aws_sdk_dynamodb::Client,
    source_table: &str,
    target: &aws_sdk_dynamodb::Client,
    table: &str,
) {
    use aws_sdk_dynamodb::types::{
        BillingMode, GlobalSecondaryIndex, KeySchemaElement, Projection,
    };
    let live = source
        .describe_table()
        .table_name(source_table)
        .send()
        .await
        .expect("describe the stack's table")
        .table
        .expect("table description");
    let key_schema = |keys: &[KeySchemaElement]| -> Vec<KeySchemaElement> {
        keys.iter()
            .map(|k| {
                KeySchemaElement::builder()
                    .attribute_name(k.attribute_name())
                    .key_type(k.key_type().clone())
                    .build()
                    .expect("key")
            })
            .collect()
    };
    let indexes = live
        .global_secondary_indexes()
        .iter()
        .map(|g| {
            GlobalSecondaryIndex::builder()
                .index_name(g.index_name().unwrap_or_default())
                .set_key_schema(Some(key_schema(g.key_schema())))
                .projection(
                    g.projection()
                        .cloned()
                        .unwrap_or_else(|| Projection::builder().build()),
                )
                .build()
                .expect("index")
        })
        .collect::<Vec<_>>();
    target
        .create_table()
        .table_name(table)
        .set_key_schema(Some(key_schema(live.key_schema())))
        .set_attribute_definitions(Some(live.attribute_definitions().to_vec()))
        .set_global_secondary_indexes((!indexes.is_empty()).then_some(indexes))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
}

/// An API Gateway v2 request, as the HTTP API hands it to a function.
pub fn request(
    method: &str,
    path: &str,
    bearer: &str,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> lambda_http::Request {
    // An empty bearer sends no Authorization header at all.
    let mut headers = if bearer.is_empty() {
        json!({})
    } else {
        json!({"authorization": format!("Bearer {bearer}")})
    };
    if body.is_some() {
        headers["content-type"] = json!("application/json");
    }
    for (k, v) in extra {
        headers[*k] = json!(v);
    }
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000", "apiId": "sim", "domainName": "sim.local",
            "domainPrefix": "sim", "requestId": "sim", "routeKey": "$default", "stage": "$default",
            "time": "27/Nov/2026:00:00:00 +0000", "timeEpoch": 0,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "sim"}
        },
        "body": body.map(|b| b.to_string()),
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("API Gateway v2 event")
}

pub fn answer(resp: &lambda_http::Response<lambda_http::Body>) -> (u16, Value) {
    let body = serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null);
    (resp.status().as_u16(), body)
}

/// The registration a phone sends after pairing with `device`, as API Gateway hands it over,
/// signed over a fresh challenge for its code (kept in the table, as the challenge route does).
pub async fn registration_request(
    store: &impl Devices,
    device: &Device,
    terminal: &str,
) -> lambda_http::Request {
    let challenge = RegistrationChallenge::issue(
        UniqueCode::try_from(device.code()).unwrap(),
        Timestamp::now(),
    );
    store
        .put_challenge(&challenge)
        .await
        .expect("keep a challenge");
    registration_over(device, terminal, challenge.challenge.as_str(), "")
}

/// The phone's request for a registration challenge for `device`'s code.
pub fn challenge_request(device: &Device) -> lambda_http::Request {
    request(
        "POST",
        "/v1/devices/challenges",
        "",
        &[],
        Some(&json!({"unique_code": device.code()})),
    )
}

/// The registration of `device` to `terminal` signed over `challenge`, with the terminal's token
/// `bearer` (empty for none).
pub fn registration_over(
    device: &Device,
    terminal: &str,
    challenge: &str,
    bearer: &str,
) -> lambda_http::Request {
    request(
        "POST",
        "/v1/devices",
        bearer,
        &[],
        Some(
            &json!({"unique_code": device.code(), "terminal_id": terminal,
                     "challenge": challenge,
                     "registration_proof": device.registration_proof(terminal, challenge)}),
        ),
    )
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts the contract's error shape and code.
#[track_caller]
pub fn assert_error(r: &twochan_tools::ApiResponse, status: u16, code: &str) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "expected {status} {code}, got {} {}",
        r.status,
        r.json
    );
    assert_eq!(r.error_code(), Some(code), "body: {}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {}",
        r.json
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
}

//! The DynamoDB adapter. Every conditional expression of the product is in this module, next to
//! the write that uses it; `tests/tests/dynamo_conditions.rs` exercises each against the emulator.

use std::collections::HashMap;

use aws_sdk_dynamodb::{
    Client,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{
        AttributeValue, Delete, KeysAndAttributes, Put, ReturnValuesOnConditionCheckFailure,
        TransactWriteItem, Update,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_dynamo::aws_sdk_dynamodb_1::{from_item, to_item};
use twochan_domain::{
    Currency, DomainError, IdempotencyKey, MerchantId, Payment, PaymentId, PaymentStatus, Result,
    TerminalId, Timestamp, UniqueCode,
    crypto::{SecretHash, fill_random, sha256_hex},
    ports::{
        Balance, Confirmation, Device, Devices, Directory, Idempotency, IdempotencyClaim,
        IdempotencyRecord, Ledger, Payments, Registration, Settlement, SettlementMessage,
        StoredResponse, TerminalSession, Write, WrongCode,
    },
};

use crate::items::*;

/// How long a request may hold an idempotency key before another may take it over. Longer than
/// any function timeout, so a live request never loses its key.
pub const IDEMPOTENCY_LEASE_MS: i64 = 30_000;
/// How long a response is replayed under its idempotency key.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The conditions, named. Attribute names are literal because none is a reserved word except
/// `status`, `state` and `ttl`, which go through `#status`, `#state` placeholders.
mod cond {
    /// A key (device, token, payment, ledger entry) that must not exist yet.
    pub const NEW_ITEM: &str = "attribute_not_exists(pk)";
    /// A device free to register: unknown, or known (with its counter) but deregistered.
    pub const DEVICE_UNREGISTERED: &str = "attribute_not_exists(terminal_id)";
    /// Re-registration by the same terminal: the token we read is still the current one.
    pub const DEVICE_SAME_REGISTRATION: &str =
        "terminal_id = :terminal AND token_hash = :old_token";
    /// Deregistration: still the registration we read, and its pending lock unchanged.
    pub const DEVICE_DEREGISTER_NO_LOCK: &str =
        "token_hash = :token AND attribute_not_exists(pending_payment_id)";
    pub const DEVICE_DEREGISTER_WITH_LOCK: &str =
        "token_hash = :token AND pending_payment_id = :held";
    /// A new pending payment takes a free lock...
    pub const LOCK_FREE: &str =
        "terminal_id = :terminal AND attribute_not_exists(pending_payment_id)";
    /// ...or one whose payment is past its expiry, checked here against the write's own clock.
    pub const LOCK_LAPSED: &str =
        "terminal_id = :terminal AND pending_payment_id = :held AND pending_expires_at < :now";
    /// A payment that is still pending (the lock's owner, when taken over after expiry).
    pub const PAYMENT_PENDING: &str = "#status = :pending";
    /// A pending payment that has not expired yet: confirm, cancel, decline, wrong-code counting.
    pub const PAYMENT_PENDING_UNEXPIRED: &str = "#status = :pending AND expires_at >= :now";
    pub const PAYMENT_PENDING_ATTEMPTS: &str =
        "#status = :pending AND expires_at >= :now AND failed_attempts = :seen_attempts";
    /// A pending payment past its expiry (recording `expired`).
    pub const PAYMENT_PENDING_LAPSED: &str = "#status = :pending AND expires_at < :now";
    /// The lock is held by this payment.
    pub const LOCK_HELD_BY: &str = "pending_payment_id = :held";
    /// A wrong code: the device's failure count is still the one read (absent means never failed,
    /// as the count is never removed)...
    pub const DEVICE_FAILURES_UNCHANGED: &str = "attribute_exists(pk) \
         AND (attribute_not_exists(failed_auth) OR failed_auth = :seen_failures)";
    /// ...and, when the wrong code fails its payment, the lock is that payment's.
    pub const DEVICE_FAILURES_UNCHANGED_LOCK_HELD: &str = "(attribute_not_exists(failed_auth) \
         OR failed_auth = :seen_failures) AND pending_payment_id = :held";
    /// Confirmation: the lock is this payment's and the counter is the one we checked against.
    /// ...and no wrong code was counted on the device since it was read (so a lock set meanwhile
    /// wins over a correct code that was already being checked).
    pub const COUNTER_UNCHANGED: &str = "pending_payment_id = :held AND last_counter = :prev \
         AND (attribute_not_exists(failed_auth) OR failed_auth = :seen_failures)";
    /// Settlement: confirmed, and the message describes this very payment.
    pub const PAYMENT_SETTLEABLE: &str = "#status = :confirmed AND merchant_id = :merchant \
         AND amount = :amount AND currency = :currency AND unique_code = :code";
    /// An idempotency key is free: never used, its 24 h are over, or its holder's lease lapsed on
    /// the same request.
    pub const IDEMPOTENCY_FREE: &str = "attribute_not_exists(pk) OR expires_at < :now \
         OR (#state = :in_flight AND lease_expires_at < :now AND fingerprint = :fingerprint)";
    /// Only the lease holder completes or releases a key.
    pub const IDEMPOTENCY_HELD: &str = "#state = :in_flight AND lease = :lease";
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn item_of<T: Serialize>(value: &T) -> Result<HashMap<String, AttributeValue>> {
    to_item(value).map_err(|e| DomainError::Internal(format!("serialize item: {e}")))
}

fn parse_item<T: DeserializeOwned>(item: HashMap<String, AttributeValue>) -> Result<T> {
    from_item(item).map_err(|e| DomainError::Internal(format!("deserialize item: {e}")))
}

/// Maps an SDK failure: our own malformed request is a bug (500); anything else (throttling,
/// timeouts, the service down) is a dependency failure (503, retry is safe).
fn sdk_error<E, R>(op: &'static str, err: SdkError<E, R>) -> DomainError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().unwrap_or("").to_owned();
    let detail = DisplayErrorContext(&err).to_string();
    tracing::error!(operation = op, error_code = %code, error = %detail, "dynamodb call failed");
    if code == "ValidationException" || code == "ResourceNotFoundException" {
        DomainError::Internal(format!("dynamodb {op}: {detail}"))
    } else {
        DomainError::Unavailable(format!("dynamodb {op}: {detail}"))
    }
}

fn build_err(e: impl std::fmt::Display) -> DomainError {
    DomainError::Internal(format!("build dynamodb request: {e}"))
}

/// One conditional update of a transaction, with its names and values.
struct UpdateSpec {
    key: HashMap<String, AttributeValue>,
    update: String,
    condition: &'static str,
    values: Vec<(&'static str, AttributeValue)>,
}

/// The DynamoDB side of every port.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// A cheap call made at init so the first request finds a warm connection.
    pub async fn warm_up(&self) {
        if let Err(e) = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            tracing::warn!(error = %DisplayErrorContext(&e), "warm-up DescribeTable failed");
        }
    }

    async fn get<T: DeserializeOwned>(&self, pk: String, sk: &str) -> Result<Option<T>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        out.item.map(parse_item).transpose()
    }

    /// Two items in one request (BatchGetItem, strongly consistent): a request saved on the hot
    /// paths, which each need an item keyed by the caller and one keyed by the request.
    async fn get_two<A: DeserializeOwned, B: DeserializeOwned>(
        &self,
        a: (String, &str),
        b: (String, &str),
    ) -> Result<(Option<A>, Option<B>)> {
        let (key_a, key_b) = (key(a.0, a.1), key(b.0, b.1));
        let mut wanted = vec![key_a.clone(), key_b.clone()];
        let (mut found_a, mut found_b) = (None, None);
        // Keys left unprocessed (throttling) are asked for again after a short pause.
        for pause_ms in [0, 25, 100] {
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut wanted)))
                .consistent_read(true)
                .build()
                .map_err(build_err)?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| sdk_error("BatchGetItem", e))?;
            for item in out
                .responses
                .and_then(|mut r| r.remove(&self.table))
                .unwrap_or_default()
            {
                let is = |k: &HashMap<String, AttributeValue>| {
                    item.get("pk") == k.get("pk") && item.get("sk") == k.get("sk")
                };
                if is(&key_a) {
                    found_a = Some(parse_item(item)?);
                } else if is(&key_b) {
                    found_b = Some(parse_item(item)?);
                }
            }
            wanted = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
            if wanted.is_empty() {
                return Ok((found_a, found_b));
            }
        }
        Err(DomainError::Unavailable(
            "BatchGetItem left keys unprocessed".into(),
        ))
    }

    fn update_item(&self, spec: UpdateSpec) -> Result<TransactWriteItem> {
        let mut b = Update::builder()
            .table_name(&self.table)
            .set_key(Some(spec.key))
            .update_expression(spec.update)
            .condition_expression(spec.condition);
        for (name, value) in spec.values {
            b = b.expression_attribute_values(name, value);
        }
        if spec.condition.contains("#status") {
            b = b.expression_attribute_names("#status", "status");
        }
        Ok(TransactWriteItem::builder()
            .update(b.build().map_err(build_err)?)
            .build())
    }

    fn put_new(&self, item: HashMap<String, AttributeValue>) -> Result<TransactWriteItem> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond::NEW_ITEM)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn delete(&self, key: HashMap<String, AttributeValue>) -> Result<TransactWriteItem> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    /// Runs a transaction; a failed condition (or a conflicting transaction) is `Write::Conflict`.
    async fn transact(&self, op: &'static str, items: Vec<TransactWriteItem>) -> Result<Write> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Write::Applied),
            Err(err) => {
                let reasons: Vec<String> = err
                    .as_service_error()
                    .and_then(|se| match se {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
                        _ => None,
                    })
                    .map(|c| {
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| r.code().unwrap_or("None").to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let conflict = !reasons.is_empty()
                    && reasons.iter().all(|r| {
                        matches!(
                            r.as_str(),
                            "None" | "ConditionalCheckFailed" | "TransactionConflict"
                        )
                    });
                if conflict {
                    tracing::info!(operation = op, reasons = ?reasons, "transaction condition failed");
                    Ok(Write::Conflict)
                } else {
                    Err(sdk_error(op, err))
                }
            }
        }
    }
}

impl Directory for DynamoStore {
    async fn merchant_for_key(&self, key_hash: &SecretHash) -> Result<Option<MerchantId>> {
        let item: Option<ApiKeyItem> = self.get(api_key_pk(key_hash.as_str()), SK_API_KEY).await?;
        item.map(|i| {
            MerchantId::try_from(i.merchant_id)
                .map_err(|e| DomainError::Internal(format!("stored api key: {e}")))
        })
        .transpose()
    }

    async fn merchant_and_device(
        &self,
        key_hash: &SecretHash,
        code: &UniqueCode,
    ) -> Result<(Option<MerchantId>, Option<Device>)> {
        let (api_key, device): (Option<ApiKeyItem>, Option<DeviceItem>) = self
            .get_two(
                (api_key_pk(key_hash.as_str()), SK_API_KEY),
                (device_pk(code.as_str()), SK_DEVICE),
            )
            .await?;
        let merchant = api_key
            .map(|i| {
                MerchantId::try_from(i.merchant_id)
                    .map_err(|e| DomainError::Internal(format!("stored api key: {e}")))
            })
            .transpose()?;
        Ok((merchant, device.map(Device::try_from).transpose()?))
    }

    async fn session_for_token(&self, token: &SecretHash) -> Result<Option<TerminalSession>> {
        let item: Option<TokenItem> = self.get(token_pk(token.as_str()), SK_TOKEN).await?;
        item.map(TerminalSession::try_from).transpose()
    }

    async fn put_merchant(
        &self,
        id: &MerchantId,
        key_hash: &SecretHash,
        at: Timestamp,
    ) -> Result<()> {
        let existing: Option<MerchantItem> =
            self.get(merchant_pk(id.as_str()), SK_MERCHANT).await?;
        let merchant = MerchantItem {
            pk: merchant_pk(id.as_str()),
            sk: SK_MERCHANT.into(),
            merchant_id: id.to_string(),
            key_hash: key_hash.as_str().into(),
            updated_at: at.millis(),
        };
        let api_key = ApiKeyItem {
            pk: api_key_pk(key_hash.as_str()),
            sk: SK_API_KEY.into(),
            merchant_id: id.to_string(),
        };
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item_of(&merchant)?))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            self.put_new(item_of(&api_key)?)?,
        ];
        if let Some(old) = existing {
            items.push(self.delete(key(api_key_pk(&old.key_hash), SK_API_KEY))?);
        }
        match self
            .transact("TransactWriteItems(put_merchant)", items)
            .await?
        {
            Write::Applied => Ok(()),
            Write::Conflict => Err(DomainError::Unavailable(
                "merchant changed concurrently".into(),
            )),
        }
    }
}

impl Devices for DynamoStore {
    async fn device(&self, code: &UniqueCode) -> Result<Option<Device>> {
        let item: Option<DeviceItem> = self.get(device_pk(code.as_str()), SK_DEVICE).await?;
        item.map(Device::try_from).transpose()
    }

    async fn register(
        &self,
        code: &UniqueCode,
        seen: Option<&Device>,
        reg: &Registration,
    ) -> Result<Write> {
        let token = TokenItem {
            pk: token_pk(reg.token_hash.as_str()),
            sk: SK_TOKEN.into(),
            terminal_id: reg.terminal_id.to_string(),
            unique_code: code.to_string(),
            issued_at: reg.registered_at.millis(),
        };
        let previous = seen.and_then(|d| d.registration.as_ref());
        let mut values = vec![
            (":code", s(code.as_str())),
            (":terminal", s(reg.terminal_id.as_str())),
            (":token", s(reg.token_hash.as_str())),
            (":at", n(reg.registered_at.millis())),
            (":zero", n(0)),
        ];
        let condition = match previous {
            None => cond::DEVICE_UNREGISTERED,
            Some(p) => {
                values.push((":old_token", s(p.token_hash.as_str())));
                cond::DEVICE_SAME_REGISTRATION
            }
        };
        let mut items = vec![
            self.update_item(UpdateSpec {
                key: key(device_pk(code.as_str()), SK_DEVICE),
                update: "SET unique_code = :code, terminal_id = :terminal, token_hash = :token, \
                         registered_at = :at, last_counter = if_not_exists(last_counter, :zero), \
                         failed_auth = if_not_exists(failed_auth, :zero)"
                    .into(),
                condition,
                values,
            })?,
            self.put_new(item_of(&token)?)?,
        ];
        if let Some(p) = previous {
            items.push(self.delete(key(token_pk(p.token_hash.as_str()), SK_TOKEN))?);
        }
        self.transact("TransactWriteItems(register)", items).await
    }

    async fn deregister(&self, device: &Device, at: Timestamp) -> Result<Write> {
        let Some(reg) = &device.registration else {
            return Ok(Write::Conflict);
        };
        let mut values = vec![(":token", s(reg.token_hash.as_str()))];
        let condition = match &device.pending {
            None => cond::DEVICE_DEREGISTER_NO_LOCK,
            Some((held, _)) => {
                values.push((":held", s(held.as_str())));
                cond::DEVICE_DEREGISTER_WITH_LOCK
            }
        };
        let mut items = vec![
            self.update_item(UpdateSpec {
                key: key(device_pk(device.unique_code.as_str()), SK_DEVICE),
                update: "REMOVE terminal_id, token_hash, registered_at, pending_payment_id, \
                         pending_expires_at"
                    .into(),
                condition,
                values,
            })?,
            self.delete(key(token_pk(reg.token_hash.as_str()), SK_TOKEN))?,
        ];
        if let Some((held, lapses_at)) = &device.pending {
            // A payment past its expiry becomes expired, not canceled: it had already lapsed.
            let to = if at > *lapses_at {
                PaymentStatus::Expired
            } else {
                PaymentStatus::Canceled
            };
            items.push(self.update_item(UpdateSpec {
                key: key(payment_pk(held.as_str()), SK_PAYMENT),
                update: "SET #status = :to REMOVE gsi1pk, gsi1sk".into(),
                condition: cond::PAYMENT_PENDING,
                values: vec![(":pending", s("pending")), (":to", s(to.as_str()))],
            })?);
        }
        self.transact("TransactWriteItems(deregister)", items).await
    }
}

impl Payments for DynamoStore {
    async fn payment(&self, id: &PaymentId) -> Result<Option<Payment>> {
        let item: Option<PaymentItem> = self.get(payment_pk(id.as_str()), SK_PAYMENT).await?;
        item.map(Payment::try_from).transpose()
    }

    async fn payment_and_device(
        &self,
        id: &PaymentId,
        code: &UniqueCode,
    ) -> Result<(Option<Payment>, Option<Device>)> {
        let (payment, device): (Option<PaymentItem>, Option<DeviceItem>) = self
            .get_two(
                (payment_pk(id.as_str()), SK_PAYMENT),
                (device_pk(code.as_str()), SK_DEVICE),
            )
            .await?;
        Ok((
            payment.map(Payment::try_from).transpose()?,
            device.map(Device::try_from).transpose()?,
        ))
    }

    async fn create(
        &self,
        payment: &Payment,
        seen: &Device,
        idempotency: Option<IdempotencyRecord<'_>>,
    ) -> Result<Write> {
        let now = Timestamp::now();
        let mut values = vec![
            (":terminal", s(payment.terminal_id.as_str())),
            (":payment", s(payment.payment_id.as_str())),
            (":lapses", n(payment.expires_at.millis())),
        ];
        let condition = match &seen.pending {
            None => cond::LOCK_FREE,
            Some((held, _)) => {
                values.push((":held", s(held.as_str())));
                values.push((":now", n(now.millis())));
                cond::LOCK_LAPSED
            }
        };
        let mut items = vec![
            self.put_new(item_of(&PaymentItem::from(payment))?)?,
            self.update_item(UpdateSpec {
                key: key(device_pk(payment.unique_code.as_str()), SK_DEVICE),
                update: "SET pending_payment_id = :payment, pending_expires_at = :lapses".into(),
                condition,
                values,
            })?,
        ];
        if let Some((held, _)) = &seen.pending {
            items.push(self.update_item(UpdateSpec {
                key: key(payment_pk(held.as_str()), SK_PAYMENT),
                update: "SET #status = :expired REMOVE gsi1pk, gsi1sk".into(),
                condition: cond::PAYMENT_PENDING,
                values: vec![(":pending", s("pending")), (":expired", s("expired"))],
            })?);
        }
        if let Some(record) = idempotency {
            items.push(self.complete_item(record)?);
        }
        self.transact("TransactWriteItems(create_payment)", items)
            .await
    }

    async fn pending_for_terminal(&self, terminal: &TerminalId) -> Result<Vec<Payment>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(pending_gsi_pk(terminal.as_str())))
                .scan_index_forward(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("Query(gsi1)", e))?;
            for item in page.items.unwrap_or_default() {
                let p: PaymentItem = parse_item(item)?;
                out.push(Payment::try_from(p)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        // The index is eventually consistent: drop what has left `pending` since.
        out.retain(|p| p.status == PaymentStatus::Pending);
        Ok(out)
    }

    async fn finish_pending(
        &self,
        payment: &Payment,
        to: PaymentStatus,
        at: Timestamp,
    ) -> Result<Write> {
        // `confirm` and `record_wrong_code` make the other two moves, with their own conditions.
        if !PaymentStatus::Pending.can_become(to)
            || matches!(to, PaymentStatus::Confirmed | PaymentStatus::Failed)
        {
            return Err(DomainError::Internal(format!(
                "finish_pending to {}",
                to.as_str()
            )));
        }
        let condition = if to == PaymentStatus::Expired {
            cond::PAYMENT_PENDING_LAPSED
        } else {
            cond::PAYMENT_PENDING_UNEXPIRED
        };
        let items = vec![
            self.update_item(UpdateSpec {
                key: key(payment_pk(payment.payment_id.as_str()), SK_PAYMENT),
                update: "SET #status = :to REMOVE gsi1pk, gsi1sk".into(),
                condition,
                values: vec![
                    (":pending", s("pending")),
                    (":to", s(to.as_str())),
                    (":now", n(at.millis())),
                ],
            })?,
            self.update_item(UpdateSpec {
                key: key(device_pk(payment.unique_code.as_str()), SK_DEVICE),
                update: "REMOVE pending_payment_id, pending_expires_at".into(),
                condition: cond::LOCK_HELD_BY,
                values: vec![(":held", s(payment.payment_id.as_str()))],
            })?,
        ];
        self.transact("TransactWriteItems(finish_pending)", items)
            .await
    }

    async fn record_wrong_code(&self, w: &WrongCode<'_>) -> Result<Write> {
        let p = w.payment;
        let mut payment_values = vec![
            (":pending", s("pending")),
            (":now", n(w.at.millis())),
            (":seen_attempts", n(p.failed_attempts)),
            (":attempts", n(p.failed_attempts + 1)),
        ];
        let mut device_values = vec![
            (":seen_failures", n(w.device.failed_auth)),
            (":failures", n(w.device.failed_auth + 1)),
        ];
        let mut device_set = vec!["failed_auth = :failures"];
        if let Some(until) = w.lock_until {
            device_set.push("locked_until = :until");
            device_values.push((":until", n(until.millis())));
        }
        let (payment_update, device_update, device_condition) = if w.fails_payment {
            payment_values.push((":failed", s("failed")));
            device_values.push((":held", s(p.payment_id.as_str())));
            (
                "SET #status = :failed, failed_attempts = :attempts REMOVE gsi1pk, gsi1sk",
                format!(
                    "SET {} REMOVE pending_payment_id, pending_expires_at",
                    device_set.join(", ")
                ),
                cond::DEVICE_FAILURES_UNCHANGED_LOCK_HELD,
            )
        } else {
            (
                "SET failed_attempts = :attempts",
                format!("SET {}", device_set.join(", ")),
                cond::DEVICE_FAILURES_UNCHANGED,
            )
        };
        let items = vec![
            self.update_item(UpdateSpec {
                key: key(payment_pk(p.payment_id.as_str()), SK_PAYMENT),
                update: payment_update.into(),
                condition: cond::PAYMENT_PENDING_ATTEMPTS,
                values: payment_values,
            })?,
            self.update_item(UpdateSpec {
                key: key(device_pk(p.unique_code.as_str()), SK_DEVICE),
                update: device_update,
                condition: device_condition,
                values: device_values,
            })?,
        ];
        self.transact("TransactWriteItems(wrong_code)", items).await
    }

    async fn confirm(&self, c: &Confirmation<'_>) -> Result<Write> {
        let p = c.payment;
        let items = vec![
            self.update_item(UpdateSpec {
                key: key(payment_pk(p.payment_id.as_str()), SK_PAYMENT),
                // Into the index of confirmed payments, where the reconciler looks for lost messages.
                update:
                    "SET #status = :confirmed, confirmed_at = :at, confirmation = :fingerprint, \
                         gsi1pk = :gsi_pk, gsi1sk = :gsi_sk"
                        .into(),
                condition: cond::PAYMENT_PENDING_ATTEMPTS,
                values: vec![
                    (":pending", s("pending")),
                    (":seen_attempts", n(p.failed_attempts)),
                    (":confirmed", s("confirmed")),
                    (":now", n(c.at.millis())),
                    (":at", n(c.at.truncated_to_second().millis())),
                    (":fingerprint", s(c.fingerprint.clone())),
                    (
                        ":gsi_pk",
                        s(confirmed_gsi_pk(confirmed_shard(p.payment_id.as_str()))),
                    ),
                    (
                        ":gsi_sk",
                        s(confirmed_gsi_sk(c.at.millis(), p.payment_id.as_str())),
                    ),
                ],
            })?,
            self.update_item(UpdateSpec {
                key: key(device_pk(p.unique_code.as_str()), SK_DEVICE),
                update: "SET last_counter = :counter, failed_auth = :zero \
                         REMOVE pending_payment_id, pending_expires_at"
                    .into(),
                condition: cond::COUNTER_UNCHANGED,
                values: vec![
                    (":held", s(p.payment_id.as_str())),
                    (":prev", n(c.previous_counter.get())),
                    (":counter", n(c.counter.get())),
                    (":zero", n(0)),
                    (":seen_failures", n(c.device_failures)),
                ],
            })?,
        ];
        self.transact("TransactWriteItems(confirm)", items).await
    }

    async fn stale_confirmed(&self, before: Timestamp, limit: usize) -> Result<Vec<Payment>> {
        let mut out = Vec::new();
        // An equal share per shard, so a backlog in one cannot starve the others.
        let per_shard = limit.div_ceil(usize::from(CONFIRMED_SHARDS));
        for shard in 0..CONFIRMED_SHARDS {
            let mut start = None;
            let mut taken = 0;
            loop {
                let want = per_shard.saturating_sub(taken);
                if want == 0 {
                    break;
                }
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name("gsi1")
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk < :before")
                    .expression_attribute_values(":pk", s(confirmed_gsi_pk(shard)))
                    .expression_attribute_values(
                        ":before",
                        s(confirmed_gsi_sk(before.millis(), "")),
                    )
                    .limit(i32::try_from(want).unwrap_or(i32::MAX))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| sdk_error("Query(gsi1 confirmed)", e))?;
                for item in page.items.unwrap_or_default() {
                    let p = Payment::try_from(parse_item::<PaymentItem>(item)?)?;
                    taken += 1;
                    // The index is eventually consistent: it may still list a settled payment.
                    if p.status == PaymentStatus::Confirmed {
                        out.push(p);
                    }
                }
                start = page.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl DynamoStore {
    fn complete_item(&self, record: IdempotencyRecord<'_>) -> Result<TransactWriteItem> {
        let b = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(
                idempotency_pk(
                    record.merchant_id.as_str(),
                    &sha256_hex(record.key.as_str().as_bytes()),
                ),
                SK_IDEMPOTENCY,
            )))
            .update_expression(
                "SET #state = :done, response_status = :status, response_body = :body \
                 REMOVE lease, lease_expires_at",
            )
            .condition_expression(cond::IDEMPOTENCY_HELD)
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":in_flight", s("in_flight"))
            .expression_attribute_values(":lease", s(record.lease))
            .expression_attribute_values(":status", n(record.response.status))
            .expression_attribute_values(":body", s(record.response.body));
        Ok(TransactWriteItem::builder()
            .update(b.build().map_err(build_err)?)
            .build())
    }
}

impl Idempotency for DynamoStore {
    async fn claim(
        &self,
        merchant: &MerchantId,
        idem_key: &IdempotencyKey,
        fingerprint: &str,
        now: Timestamp,
    ) -> Result<IdempotencyClaim> {
        let mut lease = [0u8; 16];
        fill_random(&mut lease);
        let lease = hex_lease(&lease);
        let expires_at = now.millis() + IDEMPOTENCY_WINDOW_MS;
        let item = IdempotencyItem {
            pk: idempotency_pk(merchant.as_str(), &sha256_hex(idem_key.as_str().as_bytes())),
            sk: SK_IDEMPOTENCY.into(),
            fingerprint: fingerprint.into(),
            state: "in_flight".into(),
            lease: Some(lease.clone()),
            lease_expires_at: Some(now.millis() + IDEMPOTENCY_LEASE_MS),
            response_status: None,
            response_body: None,
            expires_at,
            ttl: expires_at / 1000,
        };
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(&item)?))
            .condition_expression(cond::IDEMPOTENCY_FREE)
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":now", n(now.millis()))
            .expression_attribute_values(":in_flight", s("in_flight"))
            .expression_attribute_values(":fingerprint", s(fingerprint))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match result {
            Ok(_) => return Ok(IdempotencyClaim::Claimed { lease }),
            Err(e) => match e.as_service_error() {
                Some(se) if se.is_conditional_check_failed_exception() => {
                    let returned = match se {
                        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item.clone(),
                        _ => None,
                    };
                    match returned {
                        Some(item) => parse_item::<IdempotencyItem>(item)?,
                        // Not every emulator returns the old item: read it.
                        None => match self
                            .get::<IdempotencyItem>(item.pk.clone(), SK_IDEMPOTENCY)
                            .await?
                        {
                            Some(old) => old,
                            None => {
                                return Err(DomainError::Unavailable(
                                    "idempotency key vanished; retry".into(),
                                ));
                            }
                        },
                    }
                }
                _ => return Err(sdk_error("PutItem(idempotency)", e)),
            },
        };
        let live_lease =
            old.state == "in_flight" && old.lease_expires_at.is_some_and(|t| t >= now.millis());
        Ok(if live_lease {
            // Whatever its body, a request must wait for the one holding the key.
            IdempotencyClaim::InFlight
        } else if old.fingerprint != fingerprint {
            IdempotencyClaim::Mismatch
        } else if old.state == "done" {
            match (old.response_status, old.response_body) {
                (Some(status), Some(body)) => {
                    IdempotencyClaim::Replay(StoredResponse { status, body })
                }
                _ => {
                    return Err(DomainError::Internal(
                        "idempotency record without response".into(),
                    ));
                }
            }
        } else {
            IdempotencyClaim::InFlight
        })
    }

    async fn complete(&self, record: IdempotencyRecord<'_>) -> Result<()> {
        let item = self.complete_item(record)?;
        match self
            .transact("TransactWriteItems(idempotency_complete)", vec![item])
            .await?
        {
            Write::Applied => Ok(()),
            // The lease lapsed and another request took the key: its answer stands.
            Write::Conflict => {
                tracing::warn!("idempotency lease lost before completion");
                Ok(())
            }
        }
    }

    async fn release(
        &self,
        merchant: &MerchantId,
        idem_key: &IdempotencyKey,
        lease: &str,
    ) -> Result<()> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(
                idempotency_pk(merchant.as_str(), &sha256_hex(idem_key.as_str().as_bytes())),
                SK_IDEMPOTENCY,
            )))
            .condition_expression(cond::IDEMPOTENCY_HELD)
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":in_flight", s("in_flight"))
            .expression_attribute_values(":lease", s(lease))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error("DeleteItem(idempotency)", e)),
        }
    }
}

fn hex_lease(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Ledger for DynamoStore {
    async fn settle(&self, m: &SettlementMessage, at: Timestamp) -> Result<Settlement> {
        let entry = |sk: &str, account: String, direction: &str| LedgerEntryItem {
            pk: ledger_pk(m.payment_id.as_str()),
            sk: sk.into(),
            payment_id: m.payment_id.to_string(),
            account,
            direction: direction.into(),
            amount: m.amount.minor_units(),
            currency: m.currency.code().into(),
            posted_at: at.millis(),
        };
        let credit = entry(SK_CREDIT, format!("merchant:{}", m.merchant_id), "credit");
        let debit = entry(SK_DEBIT, format!("device:{}", m.unique_code), "debit");
        let items = vec![
            self.update_item(UpdateSpec {
                key: key(payment_pk(m.payment_id.as_str()), SK_PAYMENT),
                update: "SET #status = :settled, settled_at = :at REMOVE gsi1pk, gsi1sk".into(),
                condition: cond::PAYMENT_SETTLEABLE,
                values: vec![
                    (":confirmed", s("confirmed")),
                    (":settled", s("settled")),
                    (":at", n(at.truncated_to_second().millis())),
                    (":merchant", s(m.merchant_id.as_str())),
                    (":amount", n(m.amount.minor_units())),
                    (":currency", s(m.currency.code())),
                    (":code", s(m.unique_code.as_str())),
                ],
            })?,
            self.put_new(item_of(&credit)?)?,
            self.put_new(item_of(&debit)?)?,
            {
                let b = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(
                        merchant_pk(m.merchant_id.as_str()),
                        &balance_sk(m.currency.code()),
                    )))
                    .update_expression(
                        "SET currency = :currency ADD settled_amount :amount, settled_count :one",
                    )
                    .expression_attribute_values(":currency", s(m.currency.code()))
                    .expression_attribute_values(":amount", n(m.amount.minor_units()))
                    .expression_attribute_values(":one", n(1));
                TransactWriteItem::builder()
                    .update(b.build().map_err(build_err)?)
                    .build()
            },
        ];
        match self.transact("TransactWriteItems(settle)", items).await? {
            Write::Applied => Ok(Settlement::Settled),
            Write::Conflict => match self.payment(&m.payment_id).await? {
                Some(p) if p.status == PaymentStatus::Settled => Ok(Settlement::AlreadySettled),
                // Confirmed but another delivery's transaction was in the way: try again later.
                Some(p)
                    if p.status == PaymentStatus::Confirmed
                        && SettlementMessage::for_payment(&p) == *m =>
                {
                    Err(DomainError::Unavailable(
                        "settlement raced another delivery".into(),
                    ))
                }
                Some(p) => Err(DomainError::InvalidRequest(format!(
                    "payment {} is {} or does not match the message",
                    p.payment_id,
                    p.status.as_str()
                ))),
                None => Err(DomainError::NotFound),
            },
        }
    }

    async fn balances(&self, merchant: &MerchantId) -> Result<Vec<Balance>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(merchant_pk(merchant.as_str())))
            .expression_attribute_values(":prefix", s(BALANCE_PREFIX))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("Query(balances)", e))?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                let b: BalanceItem = parse_item(item)?;
                Ok(Balance {
                    currency: Currency::try_from(b.currency.as_str())?,
                    settled_amount: b.settled_amount,
                    settled_count: b.settled_count,
                })
            })
            .collect()
    }
}

/// Test and operator access to raw items (ledger entries), kept out of the ports on purpose.
impl DynamoStore {
    /// The ledger entries of one payment: `(direction, account, amount, currency)`.
    pub async fn ledger_entries(
        &self,
        payment: &PaymentId,
    ) -> Result<Vec<(String, String, u64, String)>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(ledger_pk(payment.as_str())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("Query(ledger)", e))?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                let e: LedgerEntryItem = parse_item(item)?;
                Ok((e.direction, e.account, e.amount, e.currency))
            })
            .collect()
    }
}

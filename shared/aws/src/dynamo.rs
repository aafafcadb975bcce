//! The DynamoDB adapter. Every conditional expression of the product is in this module, next to
//! the write that uses it; `tests/tests/dynamo_conditions.rs` exercises each against the emulator.

use std::collections::HashMap;

use aws_sdk_dynamodb::{
    Client,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{
        AttributeValue, ConditionCheck, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_dynamo::aws_sdk_dynamodb_1::{from_item, to_item};
use twochan_domain::{
    Challenge, Currency, DomainError, MerchantId, Payment, PaymentId, PaymentSlot, PaymentStatus,
    RefundId, Result, TerminalId, Timestamp, UniqueCode,
    crypto::SecretHash,
    ports::{
        ANY_REQUEST, Balance, Confirmation, Device, Devices, Directory, EventSources, Ledger,
        NewRefund, NewRegistration, Payments, RefundSlotRecord, Refunds, RegistrationChallenge,
        RegistrationKind, Settlement, SettlementMessage, SlotRecord, StoredResponse,
        TerminalSession, WebhookEndpoint, WebhookEndpoints, Write, WrongCode,
    },
    refund::Refund,
    webhook::WebhookUrl,
};

use crate::items::*;

/// Keys per `BatchGetItem` request (the service's limit).
const BATCH_GET_LIMIT: usize = 100;

/// The conditions, named. Attribute names are literal because none is a reserved word except
/// `status`, which goes through the `#status` placeholder.
mod cond {
    /// No condition: the write applies whatever the item holds.
    pub const ALWAYS: &str = "";
    /// A key (token, api key, payment slot) that must not exist yet.
    pub const NEW_ITEM: &str = "attribute_not_exists(pk)";
    /// An item (a caller's token) that must still exist.
    pub const EXISTS: &str = "attribute_exists(pk)";
    /// A registration challenge used for its own code before it expires (a used one is gone).
    pub const CHALLENGE_USABLE: &str = "unique_code = :code AND expires_at >= :now";
    /// A terminal that holds no device yet: anyone may register the first one.
    pub const TERMINAL_FREE: &str = "attribute_not_exists(devices) OR devices <= :zero";
    /// A terminal whose only device is the one registered again.
    pub const TERMINAL_ONLY_THIS: &str = "attribute_not_exists(devices) OR devices <= :one";
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
    /// The lock's payment, still pending (deregistration cancels it).
    pub const PAYMENT_PENDING_HELD: &str = "#status = :pending AND payment_id = :held";
    /// A pending payment that has not expired yet: confirm, cancel, decline, wrong-code counting.
    pub const PAYMENT_PENDING_UNEXPIRED: &str = "#status = :pending AND expires_at >= :now";
    pub const PAYMENT_PENDING_ATTEMPTS: &str =
        "#status = :pending AND expires_at >= :now AND failed_attempts = :seen_attempts";
    /// A pending payment past its expiry (recording `expired`).
    pub const PAYMENT_PENDING_LAPSED: &str = "#status = :pending AND expires_at < :now";
    /// The lock is held by this payment.
    pub const LOCK_HELD_BY: &str = "pending_payment_id = :held";
    /// A payment's slot that does not hold that payment (empty, or another request's answer).
    pub const SLOT_WITHOUT_PAYMENT: &str = "attribute_not_exists(pk) OR payment_id <> :held";
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
    /// A refund: the payment is settled and its refunds so far leave room for this one.
    pub const PAYMENT_REFUNDABLE: &str = "#status = :settled AND payment_id = :payment \
         AND (attribute_not_exists(refunded_amount) OR refunded_amount <= :room)";
    /// Settlement: confirmed, and the message describes this very payment.
    pub const PAYMENT_SETTLEABLE: &str = "#status = :confirmed AND payment_id = :payment \
         AND merchant_id = :merchant AND amount = :amount AND currency = :currency \
         AND unique_code = :code";
}

pub type RawItem = HashMap<String, AttributeValue>;

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

    /// Items by key (BatchGetItem, strongly consistent), in no particular order. The hot paths
    /// each need an item keyed by the caller and one keyed by the request: one round trip.
    async fn get_many(&self, keys: Vec<RawItem>) -> Result<Vec<RawItem>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_LIMIT) {
            let mut wanted = chunk.to_vec();
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
                found.extend(
                    out.responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                wanted = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if wanted.is_empty() {
                    break;
                }
            }
            if !wanted.is_empty() {
                return Err(DomainError::Unavailable(
                    "BatchGetItem left keys unprocessed".into(),
                ));
            }
        }
        Ok(found)
    }

    /// Two items in one request, raw.
    async fn get_two(
        &self,
        a: (String, &str),
        b: (String, &str),
    ) -> Result<(Option<RawItem>, Option<RawItem>)> {
        let (key_a, key_b) = (key(a.0, a.1), key(b.0, b.1));
        let (mut found_a, mut found_b) = (None, None);
        for item in self.get_many(vec![key_a.clone(), key_b.clone()]).await? {
            let is = |k: &HashMap<String, AttributeValue>| {
                item.get("pk") == k.get("pk") && item.get("sk") == k.get("sk")
            };
            if is(&key_a) {
                found_a = Some(item);
            } else if is(&key_b) {
                found_b = Some(item);
            }
        }
        Ok((found_a, found_b))
    }

    /// A single conditional write outside a transaction: a failed condition is `Conflict`.
    fn write_if<T, E, R>(
        &self,
        op: &'static str,
        result: std::result::Result<T, SdkError<E, R>>,
    ) -> Result<Write>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match result {
            Ok(_) => Ok(Write::Applied),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                tracing::info!(operation = op, "condition failed");
                Ok(Write::Conflict)
            }
            Err(e) => Err(sdk_error(op, e)),
        }
    }

    /// A conditional `UpdateItem` on its own (not in a transaction): the same request a
    /// transaction's update would carry.
    async fn update_if(&self, op: &'static str, spec: UpdateSpec) -> Result<Write> {
        let u = self.update(spec)?;
        let result = self
            .client
            .update_item()
            .table_name(u.table_name)
            .set_key(Some(u.key))
            .update_expression(u.update_expression)
            .set_condition_expression(u.condition_expression)
            .set_expression_attribute_names(u.expression_attribute_names)
            .set_expression_attribute_values(u.expression_attribute_values)
            .send()
            .await;
        self.write_if(op, result)
    }

    /// A `PutItem` of an item whose key must be new.
    async fn put_if_new(
        &self,
        op: &'static str,
        item: HashMap<String, AttributeValue>,
    ) -> Result<Write> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond::NEW_ITEM)
            .send()
            .await;
        self.write_if(op, result)
    }

    fn update_item(&self, spec: UpdateSpec) -> Result<TransactWriteItem> {
        Ok(TransactWriteItem::builder()
            .update(self.update(spec)?)
            .build())
    }

    /// A conditional update of one item, with its names and values.
    fn update(&self, spec: UpdateSpec) -> Result<Update> {
        let mut b = Update::builder()
            .table_name(&self.table)
            .set_key(Some(spec.key))
            .update_expression(spec.update)
            .set_condition_expression(
                (spec.condition != cond::ALWAYS).then(|| spec.condition.to_owned()),
            );
        for (name, value) in spec.values {
            b = b.expression_attribute_values(name, value);
        }
        if spec.condition.contains("#status") {
            b = b.expression_attribute_names("#status", "status");
        }
        b.build().map_err(build_err)
    }

    /// A transaction's check that an item still exists, without writing it.
    fn check_exists(&self, key: HashMap<String, AttributeValue>) -> Result<TransactWriteItem> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .condition_expression(cond::EXISTS)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
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
        let (api_key, device) = self
            .get_two(
                (api_key_pk(key_hash.as_str()), SK_API_KEY),
                (device_pk(code.as_str()), SK_DEVICE),
            )
            .await?;
        let device = device.map(parse_item::<DeviceItem>).transpose()?;
        let merchant = api_key
            .map(parse_item::<ApiKeyItem>)
            .transpose()?
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

    async fn device_and_terminal(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
    ) -> Result<(Option<Device>, u32)> {
        let (device, holding) = self
            .get_two(
                (device_pk(code.as_str()), SK_DEVICE),
                (terminal_pk(terminal.as_str()), SK_TERMINAL),
            )
            .await?;
        let device = device.map(parse_item::<DeviceItem>).transpose()?;
        let devices = holding
            .map(parse_item::<TerminalItem>)
            .transpose()?
            .map_or(0, |t| t.device_count());
        Ok((device.map(Device::try_from).transpose()?, devices))
    }

    async fn put_challenge(&self, c: &RegistrationChallenge) -> Result<()> {
        let item = ChallengeItem {
            pk: challenge_pk(c.challenge.as_str()),
            sk: SK_CHALLENGE.into(),
            unique_code: c.unique_code.to_string(),
            expires_at: c.expires_at.millis(),
            ttl: c.expires_at.seconds() + 3600,
        };
        // 128 random bits: a collision would be a broken RNG, not a race to handle.
        match self
            .put_if_new("PutItem(challenge)", item_of(&item)?)
            .await?
        {
            Write::Applied => Ok(()),
            Write::Conflict => Err(DomainError::Internal("challenge collision".into())),
        }
    }

    async fn use_challenge(
        &self,
        challenge: &Challenge,
        code: &UniqueCode,
        now: Timestamp,
    ) -> Result<Write> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(challenge_pk(challenge.as_str()), SK_CHALLENGE)))
            .condition_expression(cond::CHALLENGE_USABLE)
            .expression_attribute_values(":code", s(code.as_str()))
            .expression_attribute_values(":now", n(now.millis()))
            .send()
            .await;
        self.write_if("DeleteItem(use_challenge)", result)
    }

    async fn register(&self, r: &NewRegistration<'_>) -> Result<Write> {
        let (code, reg) = (r.unique_code, r.registration);
        let token = TokenItem {
            pk: token_pk(reg.token_hash.as_str()),
            sk: SK_TOKEN.into(),
            terminal_id: reg.terminal_id.to_string(),
            unique_code: code.to_string(),
            issued_at: reg.registered_at.millis(),
        };
        let previous = match r.kind {
            RegistrationKind::New => None,
            RegistrationKind::Again => Some(
                r.seen
                    .and_then(|d| d.registration.as_ref())
                    .ok_or_else(|| {
                        DomainError::Internal("registration again without one".into())
                    })?,
            ),
        };
        let mut values = vec![
            (":code", s(code.as_str())),
            (":terminal", s(reg.terminal_id.as_str())),
            (":token", s(reg.token_hash.as_str())),
            (":at", n(reg.registered_at.millis())),
            (":zero", n(0)),
            (":terminal_pk", s(terminal_gsi_pk(reg.terminal_id.as_str()))),
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
                // Into the terminal's keys-only index: the one index write of a device, here.
                update: "SET unique_code = :code, terminal_id = :terminal, token_hash = :token, \
                         registered_at = :at, last_counter = if_not_exists(last_counter, :zero), \
                         failed_auth = if_not_exists(failed_auth, :zero), \
                         gsi1pk = :terminal_pk, gsi1sk = :code"
                    .into(),
                condition,
                values,
            })?,
            self.put_new(item_of(&token)?)?,
        ];
        if let Some(p) = previous {
            items.push(self.delete(key(token_pk(p.token_hash.as_str()), SK_TOKEN))?);
        }
        // The terminal's holding: counted for a new device; without the terminal's token, it
        // must still be as free as it was read. With one, that token must still be current (it
        // is, by the device's own condition, when it is the very token being replaced).
        let terminal_key = || key(terminal_pk(reg.terminal_id.as_str()), SK_TERMINAL);
        let (holding_condition, mut holding_values) = match (r.kind, r.authority) {
            (RegistrationKind::New, None) => (cond::TERMINAL_FREE, vec![(":zero", n(0))]),
            (RegistrationKind::Again, None) => (cond::TERMINAL_ONLY_THIS, vec![(":one", n(1))]),
            (_, Some(_)) => (cond::ALWAYS, vec![]),
        };
        if r.kind == RegistrationKind::New {
            holding_values.push((":one", n(1)));
            items.push(self.update_item(UpdateSpec {
                key: terminal_key(),
                update: "ADD devices :one".into(),
                condition: holding_condition,
                values: holding_values,
            })?);
        } else if holding_condition != cond::ALWAYS {
            items.push(self.update_item(UpdateSpec {
                key: terminal_key(),
                // A terminal registered before its count was kept gets one now.
                update: "SET devices = if_not_exists(devices, :one)".into(),
                condition: holding_condition,
                values: holding_values,
            })?);
        }
        if let Some(authority) = r.authority
            && previous.is_none_or(|p| p.token_hash != *authority)
        {
            items.push(self.check_exists(key(token_pk(authority.as_str()), SK_TOKEN))?);
        }
        self.transact("TransactWriteItems(register)", items).await
    }

    async fn deregister(
        &self,
        device: &Device,
        at: Timestamp,
        abandoned: &StoredResponse,
    ) -> Result<Write> {
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
                         pending_expires_at, gsi1pk, gsi1sk"
                    .into(),
                condition,
                values,
            })?,
            self.delete(key(token_pk(reg.token_hash.as_str()), SK_TOKEN))?,
            self.update_item(UpdateSpec {
                key: key(terminal_pk(reg.terminal_id.as_str()), SK_TERMINAL),
                update: "ADD devices :minus_one".into(),
                condition: cond::ALWAYS,
                values: vec![(":minus_one", n(-1))],
            })?,
        ];
        // The lock's payment, if it was stored: a request that died between taking the lock and
        // storing its payment (or is still between them) leaves a lock whose payment does not
        // exist. Its slot then gets `abandoned`, so that a late put of that payment fails.
        let mut held = None;
        if let Some((id, lapses_at)) = &device.pending {
            match self.get_raw(payment_pk(id), SK_PAYMENT).await? {
                None => {
                    let kept = RejectedItem {
                        pk: payment_pk(id),
                        sk: SK_PAYMENT.into(),
                        request_fingerprint: ANY_REQUEST.into(),
                        rejected_status: abandoned.status,
                        rejected_body: abandoned.body.clone(),
                        rejected_at: at.millis(),
                    };
                    items.push(self.put_new(item_of(&kept)?)?);
                }
                Some(item) => {
                    if let SlotRecord::Payment { payment, .. } = slot_record(item)?
                        && payment.payment_id == *id
                        && payment.status == PaymentStatus::Pending
                    {
                        held = Some((id, lapses_at));
                    }
                }
            }
        }
        if let Some((held, lapses_at)) = held {
            // A payment past its expiry becomes expired, not canceled: it had already lapsed.
            let to = if at > *lapses_at {
                PaymentStatus::Expired
            } else {
                PaymentStatus::Canceled
            };
            items.push(self.update_item(UpdateSpec {
                key: key(payment_pk(held), SK_PAYMENT),
                update: "SET #status = :to".into(),
                condition: cond::PAYMENT_PENDING_HELD,
                values: vec![
                    (":pending", s("pending")),
                    (":to", s(to.as_str())),
                    (":held", s(held.as_str())),
                ],
            })?);
        }
        self.transact("TransactWriteItems(deregister)", items).await
    }
}

impl Payments for DynamoStore {
    async fn payment(&self, id: &PaymentId) -> Result<Option<Payment>> {
        let item = self.get_raw(payment_pk(id), SK_PAYMENT).await?;
        payment_in(item, id)
    }

    async fn payment_and_device(
        &self,
        id: &PaymentId,
        code: &UniqueCode,
    ) -> Result<(Option<Payment>, Option<Device>)> {
        let (payment, device) = self
            .get_two(
                (payment_pk(id), SK_PAYMENT),
                (device_pk(code.as_str()), SK_DEVICE),
            )
            .await?;
        let device = device.map(parse_item::<DeviceItem>).transpose()?;
        Ok((
            payment_in(payment, id)?,
            device.map(Device::try_from).transpose()?,
        ))
    }

    async fn slot(&self, slot: &PaymentSlot) -> Result<Option<SlotRecord>> {
        self.get_raw(slot_pk(slot), SK_PAYMENT)
            .await?
            .map(slot_record)
            .transpose()
    }

    async fn lock_device(&self, payment: &Payment, seen: &Device) -> Result<Write> {
        let mut values = vec![
            (":terminal", s(payment.terminal_id.as_str())),
            (":payment", s(payment.payment_id.as_str())),
            (":lapses", n(payment.expires_at.millis())),
        ];
        // A lapsed lock is taken over; its payment stays `pending` in the table and every reader
        // sees it `expired` (its own writes record that when they meet it).
        let condition = match &seen.pending {
            None => cond::LOCK_FREE,
            Some((held, _)) => {
                values.push((":held", s(held.as_str())));
                values.push((":now", n(Timestamp::now().millis())));
                cond::LOCK_LAPSED
            }
        };
        self.update_if(
            "UpdateItem(lock_device)",
            UpdateSpec {
                key: key(device_pk(payment.unique_code.as_str()), SK_DEVICE),
                update: "SET pending_payment_id = :payment, pending_expires_at = :lapses".into(),
                condition,
                values,
            },
        )
        .await
    }

    async fn put_payment(&self, payment: &Payment, fingerprint: &str) -> Result<Write> {
        let item = item_of(&PaymentItem::new(payment, fingerprint))?;
        self.put_if_new("PutItem(payment)", item).await
    }

    async fn release_lock(&self, code: &UniqueCode, payment: &PaymentId) -> Result<()> {
        // The lock goes back only if its payment is not stored: a write whose answer was lost
        // may have stored it after all, and a stored pending payment keeps its lock.
        let not_stored = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key(payment_pk(payment), SK_PAYMENT)))
            .condition_expression(cond::SLOT_WITHOUT_PAYMENT)
            .expression_attribute_values(":held", s(payment.as_str()))
            .build()
            .map_err(build_err)?;
        let items = vec![
            self.update_item(UpdateSpec {
                key: key(device_pk(code.as_str()), SK_DEVICE),
                update: "REMOVE pending_payment_id, pending_expires_at".into(),
                condition: cond::LOCK_HELD_BY,
                values: vec![(":held", s(payment.as_str()))],
            })?,
            TransactWriteItem::builder()
                .condition_check(not_stored)
                .build(),
        ];
        self.transact("TransactWriteItems(release_lock)", items)
            .await
            .map(drop)
    }

    async fn record_rejection(
        &self,
        slot: &PaymentSlot,
        fingerprint: &str,
        response: &StoredResponse,
        at: Timestamp,
    ) -> Result<Write> {
        let item = RejectedItem {
            pk: slot_pk(slot),
            sk: SK_PAYMENT.into(),
            request_fingerprint: fingerprint.into(),
            rejected_status: response.status,
            rejected_body: response.body.clone(),
            rejected_at: at.millis(),
        };
        self.put_if_new("PutItem(rejection)", item_of(&item)?).await
    }

    async fn pending_for_terminal(&self, terminal: &TerminalId) -> Result<Vec<Payment>> {
        // The terminal's devices (keys only), then the devices, then their pending payments:
        // three reads, so that no payment ever writes an index.
        let mut device_keys = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(terminal_gsi_pk(terminal.as_str())))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("Query(gsi1)", e))?;
            for item in page.items.unwrap_or_default() {
                if let (Some(pk), Some(sk)) = (item.get("pk"), item.get("sk")) {
                    device_keys.push(HashMap::from([
                        ("pk".to_owned(), pk.clone()),
                        ("sk".to_owned(), sk.clone()),
                    ]));
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        if device_keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut held = Vec::new();
        for item in self.get_many(device_keys).await? {
            let device = Device::try_from(parse_item::<DeviceItem>(item)?)?;
            // The index is eventually consistent: keep only what is still this terminal's.
            let registered_here = device
                .registration
                .as_ref()
                .is_some_and(|r| r.terminal_id == *terminal);
            if let (true, Some((payment, _))) = (registered_here, device.pending) {
                held.push(payment);
            }
        }
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let keys = slot_keys(&held)
            .into_iter()
            .map(|slot| key(slot_pk(&slot), SK_PAYMENT))
            .collect();
        let mut out = Vec::new();
        for item in self.get_many(keys).await? {
            if let SlotRecord::Payment { payment, .. } = slot_record(item)?
                && held.contains(&payment.payment_id)
                && payment.status == PaymentStatus::Pending
                && payment.terminal_id == *terminal
            {
                out.push(*payment);
            }
        }
        // Payment ids are ULIDs: sorting by them is sorting by creation time.
        out.sort_by(|a, b| a.payment_id.as_str().cmp(b.payment_id.as_str()));
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
        let payment_update = UpdateSpec {
            key: key(payment_pk(&payment.payment_id), SK_PAYMENT),
            update: "SET #status = :to".into(),
            condition: if to == PaymentStatus::Expired {
                cond::PAYMENT_PENDING_LAPSED
            } else {
                cond::PAYMENT_PENDING_UNEXPIRED
            },
            values: vec![
                (":pending", s("pending")),
                (":to", s(to.as_str())),
                (":now", n(at.millis())),
            ],
        };
        if to == PaymentStatus::Expired {
            // A lapsed payment's lock may already be another payment's (taken over): record the
            // expiry on the payment alone, then free the lock if it is still this payment's.
            let written = self
                .update_if("UpdateItem(record_expiry)", payment_update)
                .await?;
            if written == Write::Applied {
                self.release_lock(&payment.unique_code, &payment.payment_id)
                    .await?;
            }
            return Ok(written);
        }
        let items = vec![
            self.update_item(payment_update)?,
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
                "SET #status = :failed, failed_attempts = :attempts",
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
                key: key(payment_pk(&p.payment_id), SK_PAYMENT),
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
                key: key(payment_pk(&p.payment_id), SK_PAYMENT),
                update: "SET #status = :confirmed, confirmed_at = :at, confirmation = :fingerprint"
                    .into(),
                condition: cond::PAYMENT_PENDING_ATTEMPTS,
                values: vec![
                    (":pending", s("pending")),
                    (":seen_attempts", n(p.failed_attempts)),
                    (":confirmed", s("confirmed")),
                    (":now", n(c.at.millis())),
                    (":at", n(c.at.truncated_to_second().millis())),
                    (":fingerprint", s(c.fingerprint.clone())),
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
}

impl Ledger for DynamoStore {
    async fn settle(&self, m: &SettlementMessage, at: Timestamp) -> Result<Settlement> {
        let items = vec![
            // The settled payment carries its journal entry's two legs: one item, so that
            // settling writes two items (payment and balance), not four.
            self.update_item(UpdateSpec {
                key: key(payment_pk(&m.payment_id), SK_PAYMENT),
                update: "SET #status = :settled, settled_at = :at, credit_account = :credit, \
                         debit_account = :debit"
                    .into(),
                condition: cond::PAYMENT_SETTLEABLE,
                values: vec![
                    (":confirmed", s("confirmed")),
                    (":settled", s("settled")),
                    (":at", n(at.truncated_to_second().millis())),
                    (":payment", s(m.payment_id.as_str())),
                    (":merchant", s(m.merchant_id.as_str())),
                    (":amount", n(m.amount.minor_units())),
                    (":currency", s(m.currency.code())),
                    (":code", s(m.unique_code.as_str())),
                    (":credit", s(format!("merchant:{}", m.merchant_id))),
                    (":debit", s(format!("device:{}", m.unique_code))),
                ],
            })?,
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
                Some(p) if !m.describes(&p) => Err(DomainError::InvalidRequest(format!(
                    "settlement message does not match payment {}",
                    p.payment_id
                ))),
                Some(p) if p.status == PaymentStatus::Settled => Ok(Settlement::AlreadySettled),
                // Confirmed but another delivery's transaction was in the way: try again later.
                Some(p) if p.status == PaymentStatus::Confirmed => Err(DomainError::Unavailable(
                    "settlement raced another delivery".into(),
                )),
                Some(p) => Ok(Settlement::NotConfirmed(p.status)),
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
                Ok(Balance::new(
                    Currency::try_from(b.currency.as_str())?,
                    b.settled_amount,
                    b.settled_count,
                    b.refunded_amount,
                ))
            })
            .collect()
    }
}

impl Refunds for DynamoStore {
    async fn refund_slot(&self, slot: &PaymentSlot) -> Result<Option<RefundSlotRecord>> {
        let Some(item) = self.get_raw(refund_slot_pk(slot), SK_REFUND).await? else {
            return Ok(None);
        };
        if item.contains_key("rejected_status") {
            let r: RejectedItem = parse_item(item)?;
            return Ok(Some(RefundSlotRecord::Rejected {
                fingerprint: r.request_fingerprint,
                response: StoredResponse {
                    status: r.rejected_status,
                    body: r.rejected_body,
                },
            }));
        }
        let r: RefundItem = parse_item(item)?;
        let fingerprint = r.request_fingerprint.clone();
        Ok(Some(RefundSlotRecord::Refund {
            refund: Box::new(Refund::try_from(r)?),
            fingerprint,
        }))
    }

    async fn refund(&self, new: &NewRefund<'_>) -> Result<Write> {
        let (r, p) = (new.refund, new.payment);
        let room = Refund::room_needed(p, r.amount);
        let item = RefundItem::new(r, &p.unique_code, new.fingerprint);
        let items = vec![
            self.put_new(item_of(&item)?)?,
            // The cap holds without reading the sum back: the write applies only while the
            // refunds so far leave room for this one, whatever else is refunded meanwhile.
            self.update_item(UpdateSpec {
                key: key(payment_pk(&p.payment_id), SK_PAYMENT),
                update: "SET refund_ids = list_append(if_not_exists(refund_ids, :none), :ids) \
                         ADD refunded_amount :amount"
                    .into(),
                condition: cond::PAYMENT_REFUNDABLE,
                values: vec![
                    (":settled", s(PaymentStatus::Settled.as_str())),
                    (":payment", s(p.payment_id.as_str())),
                    (":room", n(room)),
                    (":amount", n(r.amount.minor_units())),
                    (":none", AttributeValue::L(vec![])),
                    (":ids", AttributeValue::L(vec![s(r.refund_id.as_str())])),
                ],
            })?,
            self.update_item(UpdateSpec {
                key: key(
                    merchant_pk(r.merchant_id.as_str()),
                    &balance_sk(r.currency.code()),
                ),
                update: "SET currency = :currency ADD refunded_amount :amount".into(),
                condition: cond::ALWAYS,
                values: vec![
                    (":currency", s(r.currency.code())),
                    (":amount", n(r.amount.minor_units())),
                ],
            })?,
        ];
        self.transact("TransactWriteItems(refund)", items).await
    }

    async fn record_refund_rejection(
        &self,
        slot: &PaymentSlot,
        fingerprint: &str,
        response: &StoredResponse,
        at: Timestamp,
    ) -> Result<Write> {
        let item = RejectedItem {
            pk: refund_slot_pk(slot),
            sk: SK_REFUND.into(),
            request_fingerprint: fingerprint.into(),
            rejected_status: response.status,
            rejected_body: response.body.clone(),
            rejected_at: at.millis(),
        };
        self.put_if_new("PutItem(refund rejection)", item_of(&item)?)
            .await
    }

    async fn refunds_of(&self, payment: &PaymentId) -> Result<Vec<Refund>> {
        let ids: Vec<RefundId> = match self.get_raw(payment_pk(payment), SK_PAYMENT).await? {
            Some(item) if !item.contains_key("rejected_status") => {
                let p: PaymentItem = parse_item(item)?;
                if p.payment_id != payment.as_str() {
                    return Ok(Vec::new());
                }
                p.refund_ids
                    .into_iter()
                    .map(RefundId::try_from)
                    .collect::<Result<_>>()?
            }
            _ => return Ok(Vec::new()),
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = ids
            .iter()
            .map(|id| key(refund_slot_pk(&id.slot()), SK_REFUND))
            .collect();
        let mut refunds = self
            .get_many(keys)
            .await?
            .into_iter()
            .map(|item| Refund::try_from(parse_item::<RefundItem>(item)?))
            .collect::<Result<Vec<_>>>()?;
        refunds.retain(|r| r.payment_id == *payment && ids.contains(&r.refund_id));
        // Refund ids are ULIDs: sorting by them is sorting by creation time.
        refunds.sort_by(|a, b| a.refund_id.cmp(&b.refund_id));
        Ok(refunds)
    }
}

impl WebhookEndpoints for DynamoStore {
    async fn endpoint(&self, merchant: &MerchantId) -> Result<Option<WebhookEndpoint>> {
        let item: Option<WebhookItem> =
            self.get(merchant_pk(merchant.as_str()), SK_WEBHOOK).await?;
        item.map(|i| {
            Ok(WebhookEndpoint {
                // As stored; the sender checks it again against its own rules before each try.
                url: WebhookUrl::parse(&i.url, true)
                    .map_err(|e| DomainError::Internal(format!("stored webhook url: {e}")))?,
                sealed_secret: i.sealed_secret,
                set_at: Timestamp::from_millis(i.set_at),
            })
        })
        .transpose()
    }

    async fn put_endpoint(&self, merchant: &MerchantId, e: &WebhookEndpoint) -> Result<()> {
        let item = WebhookItem {
            pk: merchant_pk(merchant.as_str()),
            sk: SK_WEBHOOK.into(),
            url: e.url.as_str().into(),
            sealed_secret: e.sealed_secret.clone(),
            set_at: e.set_at.millis(),
        };
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(&item)?))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem(webhook)", e))?;
        Ok(())
    }

    async fn delete_endpoint(&self, merchant: &MerchantId) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(merchant_pk(merchant.as_str()), SK_WEBHOOK)))
            .send()
            .await
            .map_err(|e| sdk_error("DeleteItem(webhook)", e))?;
        Ok(())
    }
}

impl EventSources for DynamoStore {
    async fn event_subject(
        &self,
        payment: &PaymentId,
        refund: Option<&RefundId>,
    ) -> Result<(Option<Payment>, Option<Refund>)> {
        let Some(refund_id) = refund else {
            return Ok((self.payment(payment).await?, None));
        };
        let (p, r) = self
            .get_two(
                (payment_pk(payment), SK_PAYMENT),
                (refund_slot_pk(&refund_id.slot()), SK_REFUND),
            )
            .await?;
        let refund = r
            .filter(|i| !i.contains_key("rejected_status"))
            .map(|i| Refund::try_from(parse_item::<RefundItem>(i)?))
            .transpose()?
            .filter(|r| r.refund_id == *refund_id);
        Ok((payment_in(p, payment)?, refund))
    }
}

/// Test and operator access to raw items (journal legs), kept out of the ports on purpose.
impl DynamoStore {
    /// The journal entry of one settled payment: `(direction, account, amount, currency)` per leg.
    pub async fn ledger_entries(
        &self,
        payment: &PaymentId,
    ) -> Result<Vec<(String, String, u64, String)>> {
        let Some(item) = self.get_raw(payment_pk(payment), SK_PAYMENT).await? else {
            return Ok(Vec::new());
        };
        let p: PaymentItem = parse_item(item)?;
        if p.payment_id != payment.as_str() {
            return Ok(Vec::new());
        }
        let leg = |direction: &str, account: Option<String>| {
            account.map(|a| (direction.to_owned(), a, p.amount, p.currency.clone()))
        };
        Ok([
            leg("credit", p.credit_account.clone()),
            leg("debit", p.debit_account.clone()),
        ]
        .into_iter()
        .flatten()
        .collect())
    }

    async fn get_raw(&self, pk: String, sk: &str) -> Result<Option<RawItem>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        Ok(out.item)
    }
}

/// A payment as its stored item (serde_dynamo), as every payment write makes it. Public for the
/// CPU benchmarks (`make bench-cpu`), like [`payment_from_item`].
/// The slots of some payment ids, each once: two locks may name one slot (a lock left behind by
/// a replay, under another device of the terminal), and `BatchGetItem` refuses a repeated key.
pub fn slot_keys(ids: &[PaymentId]) -> Vec<PaymentSlot> {
    let mut slots: Vec<PaymentSlot> = Vec::with_capacity(ids.len());
    for slot in ids.iter().map(PaymentId::slot) {
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    slots
}

pub fn payment_to_item(p: &Payment, fingerprint: &str) -> Result<RawItem> {
    item_of(&PaymentItem::new(p, fingerprint))
}

/// A stored payment item back into a payment, as every payment read does.
pub fn payment_from_item(item: RawItem) -> Result<Payment> {
    match slot_record(item)? {
        SlotRecord::Payment { payment, .. } => Ok(*payment),
        SlotRecord::Rejected { .. } => Err(DomainError::Internal("not a payment item".into())),
    }
}

/// What a payment slot's item is: a payment, or a kept final error.
fn slot_record(item: HashMap<String, AttributeValue>) -> Result<SlotRecord> {
    if item.contains_key("rejected_status") {
        let r: RejectedItem = parse_item(item)?;
        Ok(SlotRecord::Rejected {
            fingerprint: r.request_fingerprint,
            response: StoredResponse {
                status: r.rejected_status,
                body: r.rejected_body,
            },
        })
    } else {
        let p: PaymentItem = parse_item(item)?;
        let fingerprint = p.request_fingerprint.clone();
        Ok(SlotRecord::Payment {
            payment: Box::new(Payment::try_from(p)?),
            fingerprint,
        })
    }
}

/// The payment `id`, if the slot item is that payment (not a kept error, and not another
/// payment whose id merely shares the random part).
fn payment_in(
    item: Option<HashMap<String, AttributeValue>>,
    id: &PaymentId,
) -> Result<Option<Payment>> {
    Ok(match item.map(slot_record).transpose()? {
        Some(SlotRecord::Payment { payment, .. }) if payment.payment_id == *id => Some(*payment),
        _ => None,
    })
}

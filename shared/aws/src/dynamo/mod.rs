//! The DynamoDB adapter: [`DynamoStore`] and the plumbing its port implementations share (one
//! module per port). Every conditional expression of the product is in `cond`;
//! `tests/tests/dynamo_conditions.rs` exercises each against the emulator.

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
    Currency, DomainError, MerchantId, Payment, PaymentId, PaymentSlot, Result,
    ports::{SlotRecord, Write},
};

use crate::items::{
    PaymentItem, REJECTED_AT, RejectedItem, SK_PAYMENT, balance_sk, merchant_pk, payment_pk,
};

mod cond;
mod devices;
mod directory;
mod expr;
mod ledger;
mod payments;
mod refunds;
mod sweep;
mod webhooks;

/// Keys per `BatchGetItem` request (the service's limit).
const BATCH_GET_LIMIT: usize = 100;

pub type RawItem = HashMap<String, AttributeValue>;

fn string_attr(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn number_attr(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), string_attr(pk)),
        ("sk".to_owned(), string_attr(sk)),
    ])
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
    if code == "TransactionConflictException" {
        // A write that met another request's transaction on its item: the client retries.
        tracing::warn!(operation = op, error_code = %code, "dynamodb write met a transaction");
        return DomainError::Unavailable(format!("dynamodb {op}: transaction conflict"));
    }
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

/// One conditional update, with the values its expressions use (their placeholders are bound
/// from the expressions: see `expr`).
struct UpdateSpec {
    key: HashMap<String, AttributeValue>,
    update: String,
    condition: &'static str,
    values: Vec<(&'static str, AttributeValue)>,
}

/// What a write adds to a merchant's balance in one currency.
#[derive(Debug, Default)]
struct BalanceAdds {
    settled_amount: u64,
    settled_count: u64,
    refunded_amount: u64,
}

/// The update of a merchant's balance in a currency, whose first write makes its item: the one
/// way settlement and refunds change a balance.
fn balance_update(merchant: &MerchantId, currency: Currency, adds: BalanceAdds) -> UpdateSpec {
    let sums = [
        ("settled_amount", ":settled_amount", adds.settled_amount),
        ("settled_count", ":settled_count", adds.settled_count),
        ("refunded_amount", ":refunded_amount", adds.refunded_amount),
    ];
    let mut added = Vec::new();
    let mut values = vec![(":currency", string_attr(currency.code()))];
    for (attribute, placeholder, by) in sums.into_iter().filter(|(_, _, by)| *by > 0) {
        added.push(format!("{attribute} {placeholder}"));
        values.push((placeholder, number_attr(by)));
    }
    let mut update = "SET currency = :currency".to_owned();
    if !added.is_empty() {
        update = format!("{update} ADD {}", added.join(", "));
    }
    UpdateSpec {
        key: key(merchant_pk(merchant.as_str()), &balance_sk(currency.code())),
        update,
        condition: cond::ALWAYS,
        values,
    }
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

    /// A single conditional write outside a transaction: a failed condition is `Conflict`, and
    /// so is a transaction in flight on the item (after a pause for it to end), since either
    /// way the caller's next step is to re-read the item and decide again.
    async fn write_if<T, E, R>(
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
            Err(e) if e.code() == Some("TransactionConflictException") => {
                tracing::info!(operation = op, "write met a transaction");
                let pause = fastrand::u64(1..=REREAD_PAUSE_MS);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
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
        self.write_if(op, result).await
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
        self.write_if(op, result).await
    }

    fn update_item(&self, spec: UpdateSpec) -> Result<TransactWriteItem> {
        Ok(TransactWriteItem::builder()
            .update(self.update(spec)?)
            .build())
    }

    /// A conditional update of one item: every update of the adapter is built here.
    fn update(&self, spec: UpdateSpec) -> Result<Update> {
        let bound = expr::bind(&[&spec.update, spec.condition], spec.values)?;
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(spec.key))
            .update_expression(spec.update)
            .set_condition_expression(
                (spec.condition != cond::ALWAYS).then(|| spec.condition.to_owned()),
            )
            .set_expression_attribute_names(bound.names)
            .set_expression_attribute_values(bound.values)
            .build()
            .map_err(build_err)
    }

    /// A transaction's check of a condition on an item, without writing it.
    fn check(
        &self,
        key: HashMap<String, AttributeValue>,
        condition: &'static str,
        values: Vec<(&'static str, AttributeValue)>,
    ) -> Result<TransactWriteItem> {
        let bound = expr::bind(&[condition], values)?;
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .condition_expression(condition)
            .set_expression_attribute_names(bound.names)
            .set_expression_attribute_values(bound.values)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// A transaction's check that an item still exists, without writing it.
    fn check_exists(&self, key: HashMap<String, AttributeValue>) -> Result<TransactWriteItem> {
        self.check(key, cond::EXISTS, Vec::new())
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

    /// A transaction whose conditions decide the answer. Cancelled by a failed condition:
    /// `Conflict` (the caller re-reads to tell why). Cancelled only because another transaction
    /// held one of its items (DynamoDB does not queue them): unavailable, so the client retries.
    async fn transact(&self, op: &'static str, items: Vec<TransactWriteItem>) -> Result<Write> {
        match self.transact_reasons(op, items).await? {
            Ok(()) => Ok(Write::Applied),
            Err(reasons) if reasons.iter().any(|r| r == CONDITION_FAILED) => {
                tracing::info!(operation = op, reasons = ?reasons, "transaction condition failed");
                Ok(Write::Conflict)
            }
            Err(reasons) => {
                tracing::warn!(operation = op, reasons = ?reasons, "transaction conflicted with another");
                Err(DomainError::Unavailable(format!(
                    "dynamodb {op}: transaction conflict"
                )))
            }
        }
    }

    /// A transaction whose loss to another in-flight transaction is a lost race like any other:
    /// after a short random pause it is `Conflict` too, so the caller reads again and decides
    /// again (a replay, a refusal, or one more try) instead of answering 503.
    async fn transact_or_reread(
        &self,
        op: &'static str,
        items: Vec<TransactWriteItem>,
    ) -> Result<Write> {
        match self.transact_reasons(op, items).await? {
            Ok(()) => Ok(Write::Applied),
            Err(reasons) => {
                if reasons.iter().any(|r| r == CONDITION_FAILED) {
                    tracing::info!(operation = op, reasons = ?reasons, "transaction condition failed");
                } else {
                    tracing::info!(operation = op, reasons = ?reasons, "transaction met another");
                    let pause = fastrand::u64(1..=REREAD_PAUSE_MS);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Ok(Write::Conflict)
            }
        }
    }

    /// A transaction, and when DynamoDB cancelled it for a condition or a conflict, the reason
    /// of each item in order (`None` for an item that was not the cause).
    async fn transact_reasons(
        &self,
        op: &'static str,
        items: Vec<TransactWriteItem>,
    ) -> Result<std::result::Result<(), Vec<String>>> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
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
                            .map(|r| r.code().unwrap_or(NO_REASON).to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let cancelled = !reasons.is_empty()
                    && reasons.iter().all(|r| {
                        matches!(
                            r.as_str(),
                            NO_REASON | CONDITION_FAILED | TRANSACTION_CONFLICT
                        )
                    });
                if cancelled {
                    Ok(Err(reasons))
                } else {
                    Err(sdk_error(op, err))
                }
            }
        }
    }
}

/// The longest pause before a transaction that met another is read again: about the other's
/// duration on DynamoDB (10-30 ms).
const REREAD_PAUSE_MS: u64 = 40;

/// Cancellation reasons of a transaction's items, as DynamoDB names them.
const NO_REASON: &str = "None";
const CONDITION_FAILED: &str = "ConditionalCheckFailed";
const TRANSACTION_CONFLICT: &str = "TransactionConflict";

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
}

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

/// A payment as its stored item (serde_dynamo), as every payment write makes it. Public for the
/// CPU benchmarks (`make bench-cpu`), like [`payment_from_item`].
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

/// Whether a slot's item (payment or refund) keeps a final refusal rather than what the key
/// made.
fn is_rejection(item: &RawItem) -> bool {
    item.contains_key(REJECTED_AT)
}

/// What a payment slot's item is: a payment, or a kept final error.
fn slot_record(item: HashMap<String, AttributeValue>) -> Result<SlotRecord> {
    if is_rejection(&item) {
        let r: RejectedItem = parse_item(item)?;
        Ok(SlotRecord::Rejected {
            response: r.response()?,
            fingerprint: r.request_fingerprint,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balance_update_adds_only_what_changed_and_binds_it() {
        let merchant = MerchantId::try_from("m-1").unwrap();
        let eur = Currency::try_from("EUR").unwrap();
        let settle = balance_update(
            &merchant,
            eur,
            BalanceAdds {
                settled_amount: 357,
                settled_count: 3,
                ..BalanceAdds::default()
            },
        );
        assert_eq!(
            settle.update,
            "SET currency = :currency ADD settled_amount :settled_amount, \
             settled_count :settled_count"
        );
        let refund = balance_update(
            &merchant,
            eur,
            BalanceAdds {
                refunded_amount: 30,
                ..BalanceAdds::default()
            },
        );
        assert_eq!(
            refund.update,
            "SET currency = :currency ADD refunded_amount :refunded_amount"
        );
        for spec in [settle, refund] {
            let bound = expr::bind(&[&spec.update, spec.condition], spec.values).unwrap();
            assert!(bound.names.is_none());
        }
    }
}

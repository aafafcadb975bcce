//! [`StuckPayments`]: a paginated `Scan` for payments that stay `confirmed`.
//!
//! No index knows payments by status (a payment write never pays for an index write: see
//! docs/DATA_MODEL.md), so the sweeper reads the whole table, one page (up to 1 MB) per request,
//! eventually consistent, keeping only payments confirmed before the cutoff (`STUCK_CONFIRMED`)
//! and projecting only what their settlement message needs. The filter saves bandwidth, not
//! read units: a scan is billed for every item it reads.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use serde::Deserialize;
use twochan_domain::{
    DomainError, PaymentStatus, Result, Timestamp,
    ports::{ScanCursor, StuckPage, StuckPayment, StuckPayments},
};

use super::{DynamoStore, cond, expr, number_attr, parse_item, sdk_error, string_attr};

/// What the scan projects of a payment item: its settlement message and its confirmation time.
const PROJECTION: &str = "payment_id, merchant_id, unique_code, amount, currency, confirmed_at";

#[derive(Debug, Deserialize)]
struct StuckItem {
    payment_id: String,
    merchant_id: String,
    unique_code: String,
    amount: u64,
    currency: String,
    confirmed_at: i64,
}

impl TryFrom<StuckItem> for StuckPayment {
    type Error = DomainError;
    fn try_from(i: StuckItem) -> Result<Self> {
        let corrupt = |e: DomainError| DomainError::Internal(format!("stored payment: {e}"));
        Ok(Self {
            payment_id: i.payment_id.try_into().map_err(corrupt)?,
            merchant_id: i.merchant_id.try_into().map_err(corrupt)?,
            unique_code: i.unique_code.try_into().map_err(corrupt)?,
            amount: i.amount.try_into().map_err(corrupt)?,
            currency: i.currency.try_into().map_err(corrupt)?,
            confirmed_at: Timestamp::from_millis(i.confirmed_at),
        })
    }
}

impl StuckPayments for DynamoStore {
    async fn confirmed_before(
        &self,
        cutoff: Timestamp,
        after: Option<&ScanCursor>,
    ) -> Result<StuckPage> {
        let bound = expr::bind(
            &[cond::STUCK_CONFIRMED, PROJECTION],
            vec![
                (":confirmed", string_attr(PaymentStatus::Confirmed.as_str())),
                (":cutoff", number_attr(cutoff.millis())),
            ],
        )?;
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(cond::STUCK_CONFIRMED)
            .projection_expression(PROJECTION)
            .set_expression_attribute_names(bound.names)
            .set_expression_attribute_values(bound.values)
            .set_exclusive_start_key(after.map(decode_cursor).transpose()?)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| sdk_error("Scan(stuck_confirmed)", e))?;
        let read_units = out
            .consumed_capacity()
            .and_then(|c| c.capacity_units())
            .unwrap_or(0.0);
        let payments = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| StuckPayment::try_from(parse_item::<StuckItem>(item)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(StuckPage {
            payments,
            next: out.last_evaluated_key.map(encode_cursor).transpose()?,
            read_units,
        })
    }
}

/// The scan's position (the table's key of the last item read, `pk` and `sk`) as JSON.
fn encode_cursor(key: HashMap<String, AttributeValue>) -> Result<ScanCursor> {
    let mut flat = BTreeMap::new();
    for (name, value) in key {
        match value {
            AttributeValue::S(v) => {
                flat.insert(name, v);
            }
            other => {
                return Err(DomainError::Internal(format!(
                    "scan position {name} is not a string: {other:?}"
                )));
            }
        }
    }
    serde_json::to_string(&flat)
        .map(ScanCursor::new)
        .map_err(|e| DomainError::Internal(format!("scan position: {e}")))
}

fn decode_cursor(cursor: &ScanCursor) -> Result<HashMap<String, AttributeValue>> {
    let flat: BTreeMap<String, String> = serde_json::from_str(cursor.as_str())
        .map_err(|e| DomainError::Internal(format!("scan position: {e}")))?;
    Ok(flat.into_iter().map(|(k, v)| (k, string_attr(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_position_goes_round_trip() {
        let key = HashMap::from([
            ("pk".to_owned(), string_attr("PAYMENT#0123456789ABCDEF")),
            ("sk".to_owned(), string_attr("PAYMENT")),
        ]);
        let cursor = encode_cursor(key.clone()).unwrap();
        assert_eq!(decode_cursor(&cursor).unwrap(), key);
        assert!(encode_cursor(HashMap::from([("pk".to_owned(), number_attr(1))])).is_err());
        assert!(decode_cursor(&ScanCursor::new("not json")).is_err());
    }

    #[test]
    fn a_projected_item_is_what_the_message_needs() {
        let item = HashMap::from([
            (
                "payment_id".to_owned(),
                string_attr("pay_01KBMQ3ZCW2X5V8N0Y7T6R4P1A"),
            ),
            ("merchant_id".to_owned(), string_attr("m-1")),
            ("unique_code".to_owned(), string_attr("beacon-0001")),
            ("amount".to_owned(), number_attr(4500)),
            ("currency".to_owned(), string_attr("KRW")),
            ("confirmed_at".to_owned(), number_attr(1_000)),
        ]);
        let p = StuckPayment::try_from(parse_item::<StuckItem>(item.clone()).unwrap()).unwrap();
        assert_eq!(p.amount.minor_units(), 4500);
        assert_eq!(p.confirmed_at, Timestamp::from_millis(1_000));
        let mut bad = item;
        bad.insert("currency".to_owned(), string_attr("XXX"));
        assert!(StuckPayment::try_from(parse_item::<StuckItem>(bad).unwrap()).is_err());
    }
}

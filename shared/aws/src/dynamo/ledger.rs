//! [`Ledger`]: settling a confirmed payment into its merchant's balance.

use twochan_domain::{
    Currency, DomainError, MerchantId, PaymentStatus, Result, Timestamp,
    ports::{Balance, Ledger, Payments, Settlement, SettlementMessage, Write},
};

use super::{DynamoStore, UpdateSpec, cond, key, n, parse_item, s, sdk_error};
use crate::items::{BALANCE_PREFIX, BalanceItem, SK_PAYMENT, balance_sk, merchant_pk, payment_pk};

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
                    (":confirmed", s(PaymentStatus::Confirmed.as_str())),
                    (":settled", s(PaymentStatus::Settled.as_str())),
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
            self.update_item(UpdateSpec {
                key: key(
                    merchant_pk(m.merchant_id.as_str()),
                    &balance_sk(m.currency.code()),
                ),
                update: "SET currency = :currency ADD settled_amount :amount, settled_count :one"
                    .into(),
                condition: cond::ALWAYS,
                values: vec![
                    (":currency", s(m.currency.code())),
                    (":amount", n(m.amount.minor_units())),
                    (":one", n(1)),
                ],
            })?,
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

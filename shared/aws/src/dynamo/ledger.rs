//! [`Ledger`]: settling a confirmed payment into its merchant's balance.

use aws_sdk_dynamodb::types::TransactWriteItem;
use twochan_domain::{
    Currency, DomainError, MerchantId, PaymentStatus, Result, Timestamp,
    ports::{Balance, Ledger, MAX_SETTLEMENT_GROUP, Payments, Settlement, SettlementMessage},
};

use super::{
    BalanceAdds, CONDITION_FAILED, DynamoStore, UpdateSpec, balance_update, cond, expr, key,
    number_attr, parse_item, sdk_error, string_attr,
};
use crate::items::{
    BALANCE_PREFIX, BalanceItem, SK_PAYMENT, device_account, merchant_account, merchant_pk,
    payment_pk,
};

/// Tries of one group's transaction while other transactions hold its items (DynamoDB cancels
/// rather than queues), before the messages go back to the queue.
const CONFLICT_TRIES: u32 = 6;
/// The first pause after a conflict; each later one may be twice as long (full jitter).
const CONFLICT_PAUSE_MS: u64 = 15;

impl Ledger for DynamoStore {
    async fn settle_group(
        &self,
        messages: &[SettlementMessage],
        at: Timestamp,
    ) -> Result<Vec<Result<Settlement>>> {
        if messages.len() > MAX_SETTLEMENT_GROUP {
            return Err(DomainError::Internal(format!(
                "{} settlement messages in one group, at most {MAX_SETTLEMENT_GROUP}",
                messages.len()
            )));
        }
        let mut outcomes: Vec<Option<Result<Settlement>>> = vec![None; messages.len()];
        // A transaction may not name an item twice: a repeated message follows its first.
        let firsts: Vec<usize> = (0..messages.len())
            .filter(|&i| {
                !messages[..i]
                    .iter()
                    .any(|m| m.payment_id == messages[i].payment_id)
            })
            .collect();
        let mut candidates = firsts.clone();
        let mut conflicts = 0;
        // Each round settles the group or takes a message out of it, bar a payment read back as
        // confirmed after failing its condition; bounded all the same.
        for _round in 0..=(messages.len() + CONFLICT_TRIES as usize) {
            if candidates.is_empty() {
                break;
            }
            let group: Vec<&SettlementMessage> = candidates.iter().map(|&i| &messages[i]).collect();
            match self
                .transact_reasons("TransactWriteItems(settle)", self.settle_items(&group, at)?)
                .await?
            {
                Ok(()) => {
                    for &i in &candidates {
                        outcomes[i] = Some(Ok(Settlement::Settled));
                    }
                    break;
                }
                Err(reasons) => {
                    let failed: Vec<usize> = candidates
                        .iter()
                        .zip(&reasons)
                        .filter(|(_, r)| r.as_str() == CONDITION_FAILED)
                        .map(|(&i, _)| i)
                        .collect();
                    if failed.is_empty() {
                        // Another transaction held one of the items: pause, then the same again.
                        conflicts += 1;
                        if conflicts >= CONFLICT_TRIES {
                            tracing::warn!(
                                tries = conflicts,
                                "settlement kept meeting other transactions"
                            );
                            return Err(DomainError::Unavailable(
                                "settlement: transaction conflicts persisted".into(),
                            ));
                        }
                        let ceiling = CONFLICT_PAUSE_MS << conflicts;
                        tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(
                            ..=ceiling,
                        )))
                        .await;
                        continue;
                    }
                    // Those payments are not (or no longer) settleable: say why, and settle the
                    // others without them.
                    for i in failed {
                        let outcome = self.why_not_settled(&messages[i]).await?;
                        // Confirmed after all (read a moment later): it stays a candidate.
                        if outcome.as_ref().ok() != Some(&Settlement::Settled) {
                            candidates.retain(|&c| c != i);
                            outcomes[i] = Some(outcome);
                        }
                    }
                }
            }
        }
        let mut answers = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let first = firsts
                .iter()
                .copied()
                .find(|&f| messages[f].payment_id == m.payment_id)
                .unwrap_or(i);
            let answer = match outcomes[first].clone() {
                // A repeat of a message that settled its payment just now.
                Some(Ok(Settlement::Settled))
                    if first != i && same_content(m, &messages[first]) =>
                {
                    Ok(Settlement::AlreadySettled)
                }
                Some(outcome) if first == i || same_content(m, &messages[first]) => outcome,
                // Another message naming the same payment: judged against what is stored.
                Some(_) => match self.why_not_settled(m).await? {
                    Ok(Settlement::Settled) => Err(DomainError::Unavailable(
                        "settlement: payment still confirmed after its group".into(),
                    )),
                    outcome => outcome,
                },
                None => Err(DomainError::Unavailable(
                    "settlement: group did not finish".into(),
                )),
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    async fn balances(&self, merchant: &MerchantId) -> Result<Vec<Balance>> {
        let bound = expr::bind(
            &[cond::MERCHANT_BALANCES],
            vec![
                (":pk", string_attr(merchant_pk(merchant.as_str()))),
                (":prefix", string_attr(BALANCE_PREFIX)),
            ],
        )?;
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(cond::MERCHANT_BALANCES)
            .set_expression_attribute_names(bound.names)
            .set_expression_attribute_values(bound.values)
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

impl DynamoStore {
    /// One transaction for a group of one merchant and currency: each payment `confirmed →
    /// settled`, carrying its journal entry's two legs (one item per payment, not three), and
    /// the balance once with the group's sum.
    fn settle_items(
        &self,
        group: &[&SettlementMessage],
        at: Timestamp,
    ) -> Result<Vec<TransactWriteItem>> {
        let Some(first) = group.first() else {
            return Ok(Vec::new());
        };
        let mut items = Vec::with_capacity(group.len() + 1);
        let mut sum: u64 = 0;
        for m in group {
            if m.group() != first.group() {
                return Err(DomainError::Internal(
                    "settlement group mixes merchants or currencies".into(),
                ));
            }
            sum = sum
                .checked_add(m.amount.minor_units())
                .ok_or_else(|| DomainError::Internal("settlement group sum overflows".into()))?;
            items.push(
                self.update_item(UpdateSpec {
                    key: key(payment_pk(&m.payment_id), SK_PAYMENT),
                    update: "SET #status = :settled, settled_at = :at, credit_account = :credit, \
                         debit_account = :debit"
                        .into(),
                    condition: cond::PAYMENT_SETTLEABLE,
                    values: vec![
                        (":confirmed", string_attr(PaymentStatus::Confirmed.as_str())),
                        (":settled", string_attr(PaymentStatus::Settled.as_str())),
                        (":at", number_attr(at.truncated_to_second().millis())),
                        (":payment", string_attr(m.payment_id.as_str())),
                        (":merchant", string_attr(m.merchant_id.as_str())),
                        (":amount", number_attr(m.amount.minor_units())),
                        (":currency", string_attr(m.currency.code())),
                        (":code", string_attr(m.unique_code.as_str())),
                        (":credit", string_attr(merchant_account(&m.merchant_id))),
                        (":debit", string_attr(device_account(&m.unique_code))),
                    ],
                })?,
            );
        }
        items.push(self.update_item(balance_update(
            &first.merchant_id,
            first.currency,
            BalanceAdds {
                settled_amount: sum,
                settled_count: group.len() as u64,
                ..BalanceAdds::default()
            },
        ))?);
        Ok(items)
    }

    /// Why a message's payment failed the settlement condition, read back: settled by an
    /// earlier delivery, not confirmed (its status), or a message that does not describe it.
    /// `Settled` means it reads as settleable after all (it was confirmed meanwhile).
    async fn why_not_settled(&self, m: &SettlementMessage) -> Result<Result<Settlement>> {
        Ok(match self.payment(&m.payment_id).await? {
            Some(p) if !m.describes(&p) => Err(DomainError::InvalidRequest(format!(
                "settlement message does not match payment {}",
                p.payment_id
            ))),
            Some(p) if p.status == PaymentStatus::Settled => Ok(Settlement::AlreadySettled),
            Some(p) if p.status == PaymentStatus::Confirmed => Ok(Settlement::Settled),
            Some(p) => Ok(Settlement::NotConfirmed(p.status)),
            None => Err(DomainError::NotFound),
        })
    }
}

/// Two messages for the same payment that say the same (they may have been sent at different
/// times).
fn same_content(a: &SettlementMessage, b: &SettlementMessage) -> bool {
    a.payment_id == b.payment_id
        && a.merchant_id == b.merchant_id
        && a.unique_code == b.unique_code
        && a.amount == b.amount
        && a.currency == b.currency
}

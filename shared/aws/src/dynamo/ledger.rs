//! [`Ledger`]: settling a confirmed payment into its merchant's balance.

use aws_sdk_dynamodb::types::TransactWriteItem;
use twochan_domain::{
    Currency, DomainError, MerchantId, PaymentStatus, Result, Timestamp,
    ports::{Balance, Ledger, MAX_SETTLEMENT_GROUP, Payments, Settlement, SettlementMessage},
};

use super::{CONDITION_FAILED, DynamoStore, UpdateSpec, cond, key, n, parse_item, s, sdk_error};
use crate::items::{BALANCE_PREFIX, BalanceItem, SK_PAYMENT, balance_sk, merchant_pk, payment_pk};

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
            );
        }
        items.push(self.update_item(UpdateSpec {
            key: key(
                merchant_pk(first.merchant_id.as_str()),
                &balance_sk(first.currency.code()),
            ),
            update:
                "SET currency = :currency ADD settled_amount :amount, settled_count :count".into(),
            condition: cond::ALWAYS,
            values: vec![
                (":currency", s(first.currency.code())),
                (":amount", n(sum)),
                (":count", n(group.len())),
            ],
        })?);
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

//! [`Ledger`], [`Refunds`], and the remaining ports: webhook endpoints, event sources and the
//! sweeper's scan.

use twochan_domain::{
    Currency, DomainError, MerchantId, Payment, PaymentId, PaymentSlot, PaymentStatus, RefundId,
    Result, Timestamp,
    ports::{
        Balance, EventSources, Ledger, MAX_SETTLEMENT_GROUP, NewRefund, RefundSlotRecord, Refunds,
        ScanCursor, Settlement, SettlementMessage, StoredResponse, StuckPage, StuckPayment,
        StuckPayments, WebhookEndpoint, WebhookEndpoints, Write,
    },
    refund::Refund,
};

use crate::state::{RefundItem, State, insert_new};
use crate::{MemoryStore, Op};

impl Ledger for MemoryStore {
    /// One transaction of every settleable first message (`PAYMENT_SETTLEABLE`) and the balance;
    /// the others are answered from what is stored, as `DynamoStore::settle_group` does after
    /// its transaction fails their conditions.
    async fn settle_group(
        &self,
        messages: &[SettlementMessage],
        at: Timestamp,
    ) -> Result<Vec<Result<Settlement>>> {
        self.call(Op::SettleGroup, || async {
            self.step(|s| settle_group(s, messages, at))
        })
        .await
    }

    async fn balances(&self, merchant: &MerchantId) -> Result<Vec<Balance>> {
        self.call(Op::Balances, || async {
            self.step(|s| {
                s.balances
                    .iter()
                    .filter(|((m, _), _)| m == merchant)
                    .map(|((_, code), b)| {
                        let corrupt = || {
                            DomainError::Internal("deserialize item: balance out of range".into())
                        };
                        let number = |v: u128| u64::try_from(v).map_err(|_| corrupt());
                        Ok(Balance::new(
                            b.currency.map_or_else(|| Currency::try_from(*code), Ok)?,
                            number(b.settled_amount)?,
                            number(b.settled_count)?,
                            number(b.refunded_amount)?,
                        ))
                    })
                    .collect()
            })
        })
        .await
    }
}

fn settle_group(
    s: &mut State,
    messages: &[SettlementMessage],
    at: Timestamp,
) -> Result<Vec<Result<Settlement>>> {
    if messages.len() > MAX_SETTLEMENT_GROUP {
        return Err(DomainError::Internal(format!(
            "{} settlement messages in one group, at most {MAX_SETTLEMENT_GROUP}",
            messages.len()
        )));
    }
    // A transaction may not name an item twice: a repeated message follows its first.
    let firsts: Vec<usize> = (0..messages.len())
        .filter(|&i| {
            !messages[..i]
                .iter()
                .any(|m| m.payment_id == messages[i].payment_id)
        })
        .collect();
    // What the adapter checks building its first transaction, which holds every first message.
    if let Some(&first) = firsts.first() {
        let mut sum: u64 = 0;
        for &i in &firsts {
            if messages[i].group() != messages[first].group() {
                return Err(DomainError::Internal(
                    "settlement group mixes merchants or currencies".into(),
                ));
            }
            sum = sum
                .checked_add(messages[i].amount.minor_units())
                .ok_or_else(|| DomainError::Internal("settlement group sum overflows".into()))?;
        }
    }
    let mut outcomes: Vec<Option<Result<Settlement>>> = vec![None; messages.len()];
    let mut settled: Vec<usize> = Vec::new();
    for &i in &firsts {
        if settleable(s, &messages[i]) {
            settled.push(i);
        } else {
            outcomes[i] = Some(why_not_settled(s, &messages[i]));
        }
    }
    if let Some(&first) = settled.first() {
        let mut sum: u128 = 0;
        for &i in &settled {
            let m = &messages[i];
            sum += u128::from(m.amount.minor_units());
            if let Some(p) = s.slot_payment_mut(&m.payment_id) {
                p.payment.status = PaymentStatus::Settled;
                p.payment.settled_at = Some(at.truncated_to_second());
                p.credit_account = Some(format!("merchant:{}", m.merchant_id));
                p.debit_account = Some(format!("device:{}", m.unique_code));
            }
            outcomes[i] = Some(Ok(Settlement::Settled));
        }
        let m = &messages[first];
        let balance = s.balance_mut(&m.merchant_id, m.currency);
        balance.settled_amount += sum;
        balance.settled_count += settled.len() as u128;
        s.applied_writes += 1;
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
            Some(Ok(Settlement::Settled)) if first != i && same_content(m, &messages[first]) => {
                Ok(Settlement::AlreadySettled)
            }
            Some(outcome) if first == i || same_content(m, &messages[first]) => outcome,
            // Another message naming the same payment: judged against what is stored.
            Some(_) => match why_not_settled(s, m) {
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

/// `PAYMENT_SETTLEABLE`: confirmed, and the message describes the item in the payment's slot.
fn settleable(s: &State, m: &SettlementMessage) -> bool {
    s.slot_payment(&m.payment_id).is_some_and(|p| {
        p.payment.status == PaymentStatus::Confirmed
            && p.payment.payment_id == m.payment_id
            && m.describes(&p.payment)
    })
}

/// Why a message's payment is not settleable, read from what is stored; `Settled` when it is.
fn why_not_settled(s: &State, m: &SettlementMessage) -> Result<Settlement> {
    match s.payment(&m.payment_id) {
        Some(p) if !m.describes(&p) => Err(DomainError::InvalidRequest(format!(
            "settlement message does not match payment {}",
            p.payment_id
        ))),
        Some(p) if p.status == PaymentStatus::Settled => Ok(Settlement::AlreadySettled),
        Some(p) if p.status == PaymentStatus::Confirmed => Ok(Settlement::Settled),
        Some(p) => Ok(Settlement::NotConfirmed(p.status)),
        None => Err(DomainError::NotFound),
    }
}

/// Two messages for the same payment that say the same (sent at different times, perhaps).
fn same_content(a: &SettlementMessage, b: &SettlementMessage) -> bool {
    a.payment_id == b.payment_id
        && a.merchant_id == b.merchant_id
        && a.unique_code == b.unique_code
        && a.amount == b.amount
        && a.currency == b.currency
}

impl Refunds for MemoryStore {
    async fn refund_slot(&self, slot: &PaymentSlot) -> Result<Option<RefundSlotRecord>> {
        self.call(Op::RefundSlot, || async {
            self.step(|s| Ok(s.refund_slots.get(slot).map(RefundItem::record)))
        })
        .await
    }

    /// One transaction: the refund in its slot (`NEW_ITEM`), the payment's refunded sum
    /// (`PAYMENT_REFUNDABLE`) and the balance.
    async fn refund(&self, new: &NewRefund<'_>) -> Result<Write> {
        self.write(Op::Refund, || async {
            self.step(|s| {
                let (r, p) = (new.refund, new.payment);
                // A refund larger than the payment never fits: the caller reads again.
                let Some(room) = Refund::room_needed(p, r.amount) else {
                    return Ok(Write::Conflict);
                };
                let slot = r.refund_id.slot();
                let refundable = s.slot_payment(&p.payment_id).is_some_and(|stored| {
                    stored.payment.status == PaymentStatus::Settled
                        && stored.payment.payment_id == p.payment_id
                        && stored.payment.refunded_amount <= room
                });
                if s.refund_slots.contains_key(&slot) || !refundable {
                    return Ok(Write::Conflict);
                }
                s.refund_slots.insert(
                    slot,
                    RefundItem::Refund {
                        refund: r.clone(),
                        fingerprint: new.fingerprint.to_owned(),
                    },
                );
                if let Some(stored) = s.slot_payment_mut(&p.payment_id) {
                    stored.refund_ids.push(r.refund_id.clone());
                    stored.payment.refunded_amount = stored
                        .payment
                        .refunded_amount
                        .saturating_add(r.amount.minor_units());
                }
                s.balance_mut(&r.merchant_id, r.currency).refunded_amount +=
                    u128::from(r.amount.minor_units());
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }

    /// `NEW_ITEM` on the refund slot.
    async fn record_refund_rejection(
        &self,
        slot: &PaymentSlot,
        fingerprint: &str,
        response: &StoredResponse,
        _at: Timestamp,
    ) -> Result<Write> {
        self.write(Op::RecordRefundRejection, || async {
            self.step(|s| {
                let kept = RefundItem::Rejected {
                    fingerprint: fingerprint.to_owned(),
                    response: response.clone(),
                };
                Ok(insert_new(
                    &mut s.refund_slots,
                    *slot,
                    kept,
                    &mut s.applied_writes,
                ))
            })
        })
        .await
    }

    async fn refunds_of(&self, payment: &PaymentId) -> Result<Vec<Refund>> {
        self.call(Op::RefundsOf, || async {
            self.step(|s| {
                let Some(stored) = s.stored_payment(payment) else {
                    return Ok(Vec::new());
                };
                let ids = &stored.refund_ids;
                let mut refunds = Vec::with_capacity(ids.len());
                for id in ids {
                    match s.refund_slots.get(&id.slot()) {
                        Some(RefundItem::Refund { refund, .. }) => refunds.push(refund.clone()),
                        // A kept answer where a refund was listed: not a refund item.
                        Some(RefundItem::Rejected { .. }) => {
                            return Err(DomainError::Internal(
                                "deserialize item: not a refund".into(),
                            ));
                        }
                        None => {}
                    }
                }
                // In the order the payment lists them: the order their writes committed.
                refunds.retain(|r| r.payment_id == *payment && ids.contains(&r.refund_id));
                Ok(refunds)
            })
        })
        .await
    }
}

impl WebhookEndpoints for MemoryStore {
    async fn endpoint(&self, merchant: &MerchantId) -> Result<Option<WebhookEndpoint>> {
        self.call(Op::Endpoint, || async {
            self.step(|s| Ok(s.webhooks.get(merchant).cloned()))
        })
        .await
    }

    async fn put_endpoint(&self, merchant: &MerchantId, e: &WebhookEndpoint) -> Result<()> {
        self.call(Op::PutEndpoint, || async {
            self.step(|s| {
                s.webhooks.insert(merchant.clone(), e.clone());
                s.applied_writes += 1;
                Ok(())
            })
        })
        .await
    }

    async fn delete_endpoint(&self, merchant: &MerchantId) -> Result<()> {
        self.call(Op::DeleteEndpoint, || async {
            self.step(|s| {
                if s.webhooks.remove(merchant).is_some() {
                    s.applied_writes += 1;
                }
                Ok(())
            })
        })
        .await
    }
}

impl EventSources for MemoryStore {
    async fn event_subject(
        &self,
        payment: &PaymentId,
        refund: Option<&RefundId>,
    ) -> Result<(Option<Payment>, Option<Refund>)> {
        self.call(Op::EventSubject, || async {
            self.step(|s| {
                let refund = refund.and_then(|id| match s.refund_slots.get(&id.slot()) {
                    Some(RefundItem::Refund { refund, .. }) if refund.refund_id == *id => {
                        Some(refund.clone())
                    }
                    _ => None,
                });
                Ok((s.payment(payment), refund))
            })
        })
        .await
    }
}

impl StuckPayments for MemoryStore {
    /// Pages over the payment slots in key order (`STUCK_CONFIRMED` filters each page); the
    /// cursor is the slot key of the page's last item.
    async fn confirmed_before(
        &self,
        cutoff: Timestamp,
        after: Option<&ScanCursor>,
    ) -> Result<StuckPage> {
        let page = self.scan_page();
        self.call(Op::ConfirmedBefore, || async {
            self.step(|s| {
                let start = after.map(|c| c.as_str().to_owned());
                if let Some(start) = &start
                    && (start.len() != 16 || !start.bytes().all(|b| b.is_ascii_alphanumeric()))
                {
                    return Err(DomainError::Internal(format!("scan position: {start:?}")));
                }
                let mut keyed: Vec<(String, &crate::state::SlotItem)> = s
                    .slots
                    .iter()
                    .map(|(slot, item)| (slot.key(), item))
                    .filter(|(key, _)| start.as_ref().is_none_or(|st| key > st))
                    .collect();
                keyed.sort_by(|a, b| a.0.cmp(&b.0));
                let more = keyed.len() > page;
                keyed.truncate(page);
                let next = more
                    .then(|| keyed.last().map(|(key, _)| ScanCursor::new(key.clone())))
                    .flatten();
                let payments = keyed
                    .iter()
                    .filter_map(|(_, item)| item.payment())
                    .map(|p| &p.payment)
                    .filter(|p| {
                        p.status == PaymentStatus::Confirmed
                            && p.confirmed_at.is_some_and(|at| at < cutoff)
                    })
                    .filter_map(|p| {
                        Some(StuckPayment {
                            payment_id: p.payment_id.clone(),
                            merchant_id: p.merchant_id.clone(),
                            unique_code: p.unique_code.clone(),
                            amount: p.amount,
                            currency: p.currency,
                            confirmed_at: p.confirmed_at?,
                        })
                    })
                    .collect();
                Ok(StuckPage {
                    payments,
                    next,
                    read_units: 0.0,
                })
            })
        })
        .await
    }
}

//! [`Refunds`]: refund slots, and refunding within what the payment has left.

use aws_sdk_dynamodb::types::AttributeValue;
use twochan_domain::{
    PaymentId, PaymentSlot, PaymentStatus, RefundId, Result, Timestamp,
    ports::{NewRefund, RefundSlotRecord, Refunds, StoredResponse, Write},
    refund::Refund,
};

use super::{DynamoStore, UpdateSpec, cond, item_of, key, n, parse_item, s};
use crate::items::{
    PaymentItem, RefundItem, RejectedItem, SK_PAYMENT, SK_REFUND, balance_sk, merchant_pk,
    payment_pk, refund_slot_pk,
};

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
        // A refund larger than the payment never fits: the caller reads again and refuses it.
        let Some(room) = Refund::room_needed(p, r.amount) else {
            return Ok(Write::Conflict);
        };
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
        // Another transaction on the slot, the payment or the balance (a twin, another refund, a
        // settlement): the contract has a refund that loses a race read again and decide again.
        self.transact_or_reread("TransactWriteItems(refund)", items)
            .await
    }

    async fn record_refund_rejection(
        &self,
        slot: &PaymentSlot,
        fingerprint: &str,
        response: &StoredResponse,
        at: Timestamp,
    ) -> Result<Write> {
        let item = RejectedItem::new(refund_slot_pk(slot), SK_REFUND, fingerprint, response, at);
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

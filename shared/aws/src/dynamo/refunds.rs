//! [`Refunds`]: refund slots, and refunding within what the payment has left.

use aws_sdk_dynamodb::types::AttributeValue;
use twochan_domain::{
    PaymentId, PaymentSlot, PaymentStatus, RefundId, Result, Timestamp,
    ports::{NewRefund, RefundSlotRecord, Refunds, StoredResponse, Write},
    refund::Refund,
};

use super::{
    BalanceAdds, DynamoStore, UpdateSpec, balance_update, cond, is_rejection, item_of, key,
    number_attr, parse_item, string_attr,
};
use crate::items::{
    PaymentItem, RefundItem, RejectedItem, SK_PAYMENT, SK_REFUND, payment_pk, refund_slot_pk,
};

impl Refunds for DynamoStore {
    async fn refund_slot(&self, slot: &PaymentSlot) -> Result<Option<RefundSlotRecord>> {
        let Some(item) = self.get_raw(refund_slot_pk(slot), SK_REFUND).await? else {
            return Ok(None);
        };
        if is_rejection(&item) {
            let r: RejectedItem = parse_item(item)?;
            return Ok(Some(RefundSlotRecord::Rejected {
                response: r.response()?,
                fingerprint: r.request_fingerprint,
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
                    (":settled", string_attr(PaymentStatus::Settled.as_str())),
                    (":payment", string_attr(p.payment_id.as_str())),
                    (":room", number_attr(room)),
                    (":amount", number_attr(r.amount.minor_units())),
                    (":none", AttributeValue::L(vec![])),
                    (
                        ":ids",
                        AttributeValue::L(vec![string_attr(r.refund_id.as_str())]),
                    ),
                ],
            })?,
            self.update_item(balance_update(
                &r.merchant_id,
                r.currency,
                BalanceAdds {
                    refunded_amount: r.amount.minor_units(),
                    ..BalanceAdds::default()
                },
            ))?,
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
            Some(item) if !is_rejection(&item) => {
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
        // In the order the payment lists them: the order their writes committed (two refunds of
        // one millisecond have ULIDs in random order).
        refunds.sort_by_key(|r| ids.iter().position(|id| *id == r.refund_id));
        Ok(refunds)
    }
}

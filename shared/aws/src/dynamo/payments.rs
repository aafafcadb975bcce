//! [`Payments`]: the device lock, storing a payment, and its moves out of `pending`.

use std::collections::HashMap;

use twochan_domain::{
    DomainError, Payment, PaymentId, PaymentSlot, PaymentStatus, Result, TerminalId, Timestamp,
    UniqueCode,
    ports::{Confirmation, Device, Payments, SlotRecord, StoredResponse, Write, WrongCode},
};

use super::{
    DynamoStore, UpdateSpec, cond, expr, item_of, key, number_attr, parse_item, payment_in,
    sdk_error, slot_keys, slot_record, string_attr,
};
use crate::items::{
    DeviceItem, PaymentItem, RejectedItem, SK_DEVICE, SK_PAYMENT, device_pk, payment_pk, slot_pk,
    terminal_gsi_pk,
};

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
            (":terminal", string_attr(payment.terminal_id.as_str())),
            (":payment", string_attr(payment.payment_id.as_str())),
            (":lapses", number_attr(payment.expires_at.millis())),
        ];
        // A lapsed lock is taken over; its payment stays `pending` in the table and every reader
        // sees it `expired` (its own writes record that when they meet it).
        let condition = match &seen.pending {
            None => cond::LOCK_FREE,
            Some((held, _)) => {
                values.push((":held", string_attr(held.as_str())));
                values.push((":now", number_attr(Timestamp::now().millis())));
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
        let items = vec![
            self.update_item(UpdateSpec {
                key: key(device_pk(code.as_str()), SK_DEVICE),
                update: "REMOVE pending_payment_id, pending_expires_at".into(),
                condition: cond::LOCK_HELD_BY,
                values: vec![(":held", string_attr(payment.as_str()))],
            })?,
            self.check(
                key(payment_pk(payment), SK_PAYMENT),
                cond::SLOT_WITHOUT_PAYMENT,
                vec![(":held", string_attr(payment.as_str()))],
            )?,
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
        let item = RejectedItem::new(slot_pk(slot), SK_PAYMENT, fingerprint, response, at);
        self.put_if_new("PutItem(rejection)", item_of(&item)?).await
    }

    async fn pending_for_terminal(&self, terminal: &TerminalId) -> Result<Vec<Payment>> {
        // The terminal's devices (keys only), then the devices, then their pending payments:
        // three reads, so that no payment ever writes an index.
        let mut device_keys = Vec::new();
        let mut start = None;
        loop {
            let bound = expr::bind(
                &[cond::TERMINAL_DEVICES],
                vec![(":pk", string_attr(terminal_gsi_pk(terminal.as_str())))],
            )?;
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression(cond::TERMINAL_DEVICES)
                .set_expression_attribute_names(bound.names)
                .set_expression_attribute_values(bound.values)
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
                (":pending", string_attr(PaymentStatus::Pending.as_str())),
                (":to", string_attr(to.as_str())),
                (":now", number_attr(at.millis())),
            ],
        };
        if to == PaymentStatus::Expired {
            // A lapsed payment's lock may already be another payment's (taken over): record the
            // expiry on the payment alone, then free the lock if it is still this payment's.
            let written = self
                .update_if("UpdateItem(record_expiry)", payment_update)
                .await?;
            if written == Write::Applied {
                // Not `release_lock`: that keeps the lock of a stored payment, and this one is
                // stored (now expired), so it would never apply.
                self.update_if(
                    "UpdateItem(release_expired_lock)",
                    UpdateSpec {
                        key: key(device_pk(payment.unique_code.as_str()), SK_DEVICE),
                        update: "REMOVE pending_payment_id, pending_expires_at".into(),
                        condition: cond::LOCK_HELD_BY,
                        values: vec![(":held", string_attr(payment.payment_id.as_str()))],
                    },
                )
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
                values: vec![(":held", string_attr(payment.payment_id.as_str()))],
            })?,
        ];
        self.transact("TransactWriteItems(finish_pending)", items)
            .await
    }

    async fn record_wrong_code(&self, w: &WrongCode<'_>) -> Result<Write> {
        let p = w.payment;
        let mut payment_values = vec![
            (":pending", string_attr(PaymentStatus::Pending.as_str())),
            (":now", number_attr(w.at.millis())),
            (":seen_attempts", number_attr(p.failed_attempts)),
            (":attempts", number_attr(p.failed_attempts + 1)),
        ];
        let mut device_values = vec![
            (":seen_failures", number_attr(w.device.failed_auth)),
            (":failures", number_attr(w.device.failed_auth + 1)),
        ];
        let mut device_set = vec!["failed_auth = :failures"];
        if let Some(until) = w.lock_until {
            device_set.push("locked_until = :until");
            device_values.push((":until", number_attr(until.millis())));
        }
        let (payment_update, device_update, device_condition) = if w.fails_payment {
            payment_values.push((":failed", string_attr(PaymentStatus::Failed.as_str())));
            device_values.push((":held", string_attr(p.payment_id.as_str())));
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
                    (":pending", string_attr(PaymentStatus::Pending.as_str())),
                    (":seen_attempts", number_attr(p.failed_attempts)),
                    (":confirmed", string_attr(PaymentStatus::Confirmed.as_str())),
                    (":now", number_attr(c.at.millis())),
                    (":at", number_attr(c.at.truncated_to_second().millis())),
                    (":fingerprint", string_attr(c.fingerprint.clone())),
                ],
            })?,
            self.update_item(UpdateSpec {
                key: key(device_pk(p.unique_code.as_str()), SK_DEVICE),
                update: "SET last_counter = :counter, failed_auth = :zero \
                         REMOVE pending_payment_id, pending_expires_at"
                    .into(),
                condition: cond::COUNTER_UNCHANGED,
                values: vec![
                    (":held", string_attr(p.payment_id.as_str())),
                    (":prev", number_attr(c.previous_counter.get())),
                    (":counter", number_attr(c.counter.get())),
                    (":zero", number_attr(0)),
                    (":seen_failures", number_attr(c.device_failures)),
                ],
            })?,
        ];
        // A copy of this confirmation may hold the same items: read again, and replay its answer.
        self.transact_or_reread("TransactWriteItems(confirm)", items)
            .await
    }
}

//! [`Payments`]: the device lock, storing a payment, and its moves out of `pending`.

use twochan_domain::{
    DomainError, Payment, PaymentId, PaymentSlot, PaymentStatus, Result, TerminalId, Timestamp,
    UniqueCode,
    ports::{Confirmation, Device, Payments, SlotRecord, StoredResponse, Write, WrongCode},
};

use crate::state::{SlotItem, State, StoredPayment, insert_new};
use crate::{MemoryStore, Op, yield_once};

impl Payments for MemoryStore {
    async fn payment(&self, id: &PaymentId) -> Result<Option<Payment>> {
        self.call(Op::Payment, || async { self.step(|s| Ok(s.payment(id))) })
            .await
    }

    async fn payment_and_device(
        &self,
        id: &PaymentId,
        code: &UniqueCode,
    ) -> Result<(Option<Payment>, Option<Device>)> {
        self.call(Op::PaymentAndDevice, || async {
            self.step(|s| Ok((s.payment(id), s.device(code))))
        })
        .await
    }

    async fn slot(&self, slot: &PaymentSlot) -> Result<Option<SlotRecord>> {
        self.call(Op::Slot, || async {
            self.step(|s| Ok(s.slots.get(slot).map(SlotItem::record)))
        })
        .await
    }

    /// `LOCK_FREE`, or `LOCK_LAPSED` against the write's own clock when `seen` held a lock.
    async fn lock_device(&self, payment: &Payment, seen: &Device) -> Result<Write> {
        self.write(Op::LockDevice, || async {
            self.step(|s| {
                let now = Timestamp::now();
                let Some(d) = s.devices.get_mut(&payment.unique_code) else {
                    return Ok(Write::Conflict);
                };
                let on_terminal = d
                    .registration
                    .as_ref()
                    .is_some_and(|r| r.terminal_id == payment.terminal_id);
                let lock_ok = match (&seen.pending, &d.pending) {
                    (None, None) => true,
                    (Some((held, _)), Some((now_held, lapses))) => {
                        held == now_held && *lapses < now
                    }
                    _ => false,
                };
                if !(on_terminal && lock_ok) {
                    return Ok(Write::Conflict);
                }
                d.pending = Some((payment.payment_id.clone(), payment.expires_at));
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }

    /// `NEW_ITEM` on the payment's slot.
    async fn put_payment(&self, payment: &Payment, fingerprint: &str) -> Result<Write> {
        self.write(Op::PutPayment, || async {
            self.step(|s| {
                let slot = payment.payment_id.slot();
                if s.slots.contains_key(&slot) {
                    return Ok(Write::Conflict);
                }
                s.slots.insert(
                    slot,
                    SlotItem::Payment(Box::new(StoredPayment {
                        payment: payment.clone(),
                        fingerprint: fingerprint.to_owned(),
                        credit_account: None,
                        debit_account: None,
                        refund_ids: Vec::new(),
                    })),
                );
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }

    /// `LOCK_HELD_BY` on the device and `SLOT_WITHOUT_PAYMENT` on the payment's slot, together.
    async fn release_lock(&self, code: &UniqueCode, payment: &PaymentId) -> Result<()> {
        self.call(Op::ReleaseLock, || async {
            self.step(|s| {
                // A kept answer in the slot is not the payment: the lock goes back.
                let stored = s
                    .slot_payment(payment)
                    .is_some_and(|p| p.payment.payment_id == *payment);
                if s.lock_held_by(code, payment) && !stored {
                    s.remove_lock(code);
                    s.applied_writes += 1;
                }
                Ok(())
            })
        })
        .await
    }

    /// `NEW_ITEM` on the slot.
    async fn record_rejection(
        &self,
        slot: &PaymentSlot,
        fingerprint: &str,
        response: &StoredResponse,
        _at: Timestamp,
    ) -> Result<Write> {
        self.write(Op::RecordRejection, || async {
            self.step(|s| {
                let kept = SlotItem::Rejected {
                    fingerprint: fingerprint.to_owned(),
                    response: response.clone(),
                };
                Ok(insert_new(&mut s.slots, *slot, kept, &mut s.applied_writes))
            })
        })
        .await
    }

    async fn pending_for_terminal(&self, terminal: &TerminalId) -> Result<Vec<Payment>> {
        self.call(Op::PendingForTerminal, || async {
            self.step(|s| Ok(pending_for_terminal(s, terminal)))
        })
        .await
    }

    /// To `expired`: `PAYMENT_PENDING_LAPSED` on the payment alone, then (a second write)
    /// `LOCK_HELD_BY` to free the lock. Otherwise one transaction: `PAYMENT_PENDING_UNEXPIRED` and
    /// `LOCK_HELD_BY`.
    async fn finish_pending(
        &self,
        payment: &Payment,
        to: PaymentStatus,
        at: Timestamp,
    ) -> Result<Write> {
        self.write(Op::FinishPending, || async {
            if !PaymentStatus::Pending.can_become(to)
                || matches!(to, PaymentStatus::Confirmed | PaymentStatus::Failed)
            {
                return Err(DomainError::Internal(format!(
                    "finish_pending to {}",
                    to.as_str()
                )));
            }
            let (id, code) = (&payment.payment_id, &payment.unique_code);
            let payment_ok = |s: &State| {
                s.slot_payment(id).is_some_and(|p| {
                    p.payment.status == PaymentStatus::Pending
                        && if to == PaymentStatus::Expired {
                            p.payment.expires_at < at
                        } else {
                            p.payment.expires_at >= at
                        }
                })
            };
            let set_status = |s: &mut State| {
                if let Some(p) = s.slot_payment_mut(id) {
                    p.payment.status = to;
                }
            };
            if to == PaymentStatus::Expired {
                let written = self.step(|s| {
                    if !payment_ok(s) {
                        return Ok(Write::Conflict);
                    }
                    set_status(s);
                    s.applied_writes += 1;
                    Ok(Write::Applied)
                })?;
                if written == Write::Applied {
                    yield_once().await;
                    self.step(|s| {
                        if s.lock_held_by(code, id) {
                            s.remove_lock(code);
                            s.applied_writes += 1;
                        }
                        Ok(())
                    })?;
                }
                return Ok(written);
            }
            self.step(|s| {
                if !(payment_ok(s) && s.lock_held_by(code, id)) {
                    return Ok(Write::Conflict);
                }
                set_status(s);
                s.remove_lock(code);
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }

    /// `PAYMENT_PENDING_ATTEMPTS` on the payment and `DEVICE_FAILURES_UNCHANGED` (or, when it
    /// fails the payment, `DEVICE_FAILURES_UNCHANGED_LOCK_HELD`) on the device, together.
    async fn record_wrong_code(&self, w: &WrongCode<'_>) -> Result<Write> {
        self.write(Op::RecordWrongCode, || async {
            self.step(|s| {
                let p = w.payment;
                let code = &p.unique_code;
                let device_ok = s.devices.get(code).is_some_and(|d| {
                    d.failed_auth == w.device.failed_auth
                        && (!w.fails_payment
                            || d.pending.as_ref().is_some_and(|(h, _)| *h == p.payment_id))
                });
                if !(pending_attempts(s, p, w.at) && device_ok) {
                    return Ok(Write::Conflict);
                }
                if let Some(stored) = s.slot_payment_mut(&p.payment_id) {
                    stored.payment.failed_attempts = p.failed_attempts.saturating_add(1);
                    if w.fails_payment {
                        stored.payment.status = PaymentStatus::Failed;
                    }
                }
                if let Some(d) = s.devices.get_mut(code) {
                    d.failed_auth = w.device.failed_auth.saturating_add(1);
                    if let Some(until) = w.lock_until {
                        d.locked_until = Some(until);
                    }
                    if w.fails_payment {
                        d.pending = None;
                    }
                }
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }

    /// `PAYMENT_PENDING_ATTEMPTS` on the payment and `COUNTER_UNCHANGED` on the device, together.
    async fn confirm(&self, c: &Confirmation<'_>) -> Result<Write> {
        self.write(Op::Confirm, || async {
            self.step(|s| {
                let p = c.payment;
                let code = &p.unique_code;
                let device_ok = s.devices.get(code).is_some_and(|d| {
                    d.pending.as_ref().is_some_and(|(h, _)| *h == p.payment_id)
                        && d.last_counter == c.previous_counter
                        && d.failed_auth == c.device_failures
                });
                if !(pending_attempts(s, p, c.at) && device_ok) {
                    return Ok(Write::Conflict);
                }
                if let Some(stored) = s.slot_payment_mut(&p.payment_id) {
                    stored.payment.status = PaymentStatus::Confirmed;
                    stored.payment.confirmed_at = Some(c.at.truncated_to_second());
                    stored.payment.confirmation = Some(c.fingerprint.clone());
                }
                if let Some(d) = s.devices.get_mut(code) {
                    d.last_counter = c.counter;
                    d.failed_auth = 0;
                    d.pending = None;
                }
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }
}

/// `PAYMENT_PENDING_ATTEMPTS`: the item in the payment's slot is pending, unexpired at `now`,
/// and has the wrong-code count `p` was read with.
fn pending_attempts(s: &State, p: &Payment, now: Timestamp) -> bool {
    s.slot_payment(&p.payment_id).is_some_and(|stored| {
        stored.payment.status == PaymentStatus::Pending
            && stored.payment.expires_at >= now
            && stored.payment.failed_attempts == p.failed_attempts
    })
}

/// The devices registered to `terminal`, their locks, and the pending payments of those locks
/// on the terminal, oldest first.
fn pending_for_terminal(s: &State, terminal: &TerminalId) -> Vec<Payment> {
    let held: Vec<&PaymentId> = s
        .devices
        .values()
        .filter(|d| {
            d.registration
                .as_ref()
                .is_some_and(|r| r.terminal_id == *terminal)
        })
        .filter_map(|d| d.pending.as_ref().map(|(id, _)| id))
        .collect();
    let mut slots: Vec<PaymentSlot> = Vec::new();
    for slot in held.iter().map(|id| id.slot()) {
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    let mut out: Vec<Payment> = slots
        .iter()
        .filter_map(|slot| s.slots.get(slot).and_then(SlotItem::payment))
        .map(|p| &p.payment)
        .filter(|p| {
            held.contains(&&p.payment_id)
                && p.status == PaymentStatus::Pending
                && p.terminal_id == *terminal
        })
        .cloned()
        .collect();
    // Payment ids are ULIDs: sorting by them is sorting by creation time.
    out.sort_by(|a, b| a.payment_id.as_str().cmp(b.payment_id.as_str()));
    out
}

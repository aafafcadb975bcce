//! [`Directory`] and [`Devices`]: merchants and their keys, challenges, registering and
//! deregistering devices.

use twochan_domain::{
    Challenge, DomainError, MerchantId, PaymentStatus, Result, TerminalId, Timestamp, UniqueCode,
    crypto::SecretHash,
    ports::{
        ANY_REQUEST, Device, Devices, Directory, NewRegistration, Registration,
        RegistrationChallenge, RegistrationKind, StoredResponse, TerminalSession, Write,
    },
};

use crate::state::{SlotItem, State};
use crate::{MemoryStore, Op, yield_once};

impl Directory for MemoryStore {
    async fn merchant_for_key(&self, key: &SecretHash) -> Result<Option<MerchantId>> {
        self.call(Op::MerchantForKey, || async {
            self.step(|s| Ok(s.api_keys.get(key).cloned()))
        })
        .await
    }

    async fn merchant_and_device(
        &self,
        key: &SecretHash,
        code: &UniqueCode,
    ) -> Result<(Option<MerchantId>, Option<Device>)> {
        self.call(Op::MerchantAndDevice, || async {
            self.step(|s| Ok((s.api_keys.get(key).cloned(), s.device(code))))
        })
        .await
    }

    async fn session_for_token(&self, token: &SecretHash) -> Result<Option<TerminalSession>> {
        self.call(Op::SessionForToken, || async {
            self.step(|s| Ok(s.tokens.get(token).cloned()))
        })
        .await
    }

    /// A read of the merchant, then one transaction: the merchant put as it is, its new key
    /// (`NEW_ITEM`), the old key deleted.
    async fn put_merchant(&self, id: &MerchantId, key: &SecretHash, _at: Timestamp) -> Result<()> {
        self.call(Op::PutMerchant, || async {
            let existing = self.step(|s| Ok(s.merchants.get(id).cloned()))?;
            yield_once().await;
            self.step(|s| {
                if existing.as_ref() == Some(key) {
                    // One transaction naming the key item twice (put and delete): DynamoDB
                    // refuses the request itself (ValidationException), which the adapter
                    // reports as its own bug.
                    return Err(DomainError::Internal(
                        "dynamodb TransactWriteItems(put_merchant): two operations on one item"
                            .into(),
                    ));
                }
                if s.api_keys.contains_key(key) {
                    return Err(DomainError::Unavailable(
                        "merchant changed concurrently".into(),
                    ));
                }
                s.merchants.insert(id.clone(), key.clone());
                s.api_keys.insert(key.clone(), id.clone());
                if let Some(old) = existing {
                    s.api_keys.remove(&old);
                }
                s.applied_writes += 1;
                Ok(())
            })
        })
        .await
    }
}

impl Devices for MemoryStore {
    async fn device(&self, code: &UniqueCode) -> Result<Option<Device>> {
        self.call(Op::Device, || async { self.step(|s| Ok(s.device(code))) })
            .await
    }

    async fn device_and_terminal(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
    ) -> Result<(Option<Device>, u32)> {
        self.call(Op::DeviceAndTerminal, || async {
            self.step(|s| {
                let held = s.terminals.get(terminal).copied().unwrap_or(0);
                // A count below zero would be a bug; read as none (`TerminalItem::device_count`).
                let held = u32::try_from(held.max(0)).unwrap_or(u32::MAX);
                Ok((s.device(code), held))
            })
        })
        .await
    }

    async fn put_challenge(&self, c: &RegistrationChallenge) -> Result<()> {
        self.call(Op::PutChallenge, || async {
            self.step(|s| {
                let key = c.challenge.as_str().to_owned();
                if s.challenges.contains_key(&key) {
                    return Err(DomainError::Internal("challenge collision".into()));
                }
                s.challenges
                    .insert(key, (c.unique_code.clone(), c.expires_at));
                s.applied_writes += 1;
                Ok(())
            })
        })
        .await
    }

    /// `CHALLENGE_USABLE`, then the challenge is deleted.
    async fn use_challenge(
        &self,
        challenge: &Challenge,
        code: &UniqueCode,
        now: Timestamp,
    ) -> Result<Write> {
        self.write(Op::UseChallenge, || async {
            self.step(|s| {
                let usable = s
                    .challenges
                    .get(challenge.as_str())
                    .is_some_and(|(c, expires_at)| c == code && *expires_at >= now);
                if !usable {
                    return Ok(Write::Conflict);
                }
                s.challenges.remove(challenge.as_str());
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }

    async fn register(&self, r: &NewRegistration<'_>) -> Result<Write> {
        self.write(Op::Register, || async { self.step(|s| register(s, r)) })
            .await
    }

    /// A read of the lock's payment, then one transaction (see `DynamoStore::deregister`).
    async fn deregister(
        &self,
        device: &Device,
        at: Timestamp,
        abandoned: &StoredResponse,
    ) -> Result<Write> {
        self.write(Op::Deregister, || async {
            let Some(reg) = &device.registration else {
                return Ok(Write::Conflict);
            };
            // What the lock's slot holds, read before the transaction.
            enum Held {
                Nothing,
                Unstored,
                Pending,
            }
            let held = match &device.pending {
                None => Held::Nothing,
                Some((id, _)) => self.step(|s| {
                    Ok(match s.slots.get(&id.slot()) {
                        None => Held::Unstored,
                        Some(SlotItem::Payment(p))
                            if p.payment.payment_id == *id
                                && p.payment.status == PaymentStatus::Pending =>
                        {
                            Held::Pending
                        }
                        Some(_) => Held::Nothing,
                    })
                })?,
            };
            yield_once().await;
            self.step(|s| {
                // DEVICE_DEREGISTER_NO_LOCK / DEVICE_DEREGISTER_WITH_LOCK.
                let device_ok = s.devices.get(&device.unique_code).is_some_and(|d| {
                    d.registration
                        .as_ref()
                        .is_some_and(|now| now.token_hash == reg.token_hash)
                        && match (&device.pending, &d.pending) {
                            (None, None) => true,
                            (Some((seen, _)), Some((now, _))) => seen == now,
                            _ => false,
                        }
                });
                if !device_ok {
                    return Ok(Write::Conflict);
                }
                let pending = device.pending.as_ref();
                match (&held, pending) {
                    // NEW_ITEM: the abandoned answer goes into the lock's empty slot.
                    (Held::Unstored, Some((id, _))) if s.slots.contains_key(&id.slot()) => {
                        return Ok(Write::Conflict);
                    }
                    // PAYMENT_PENDING_HELD.
                    (Held::Pending, Some((id, _))) => {
                        let ok = s.slot_payment(id).is_some_and(|p| {
                            p.payment.status == PaymentStatus::Pending
                                && p.payment.payment_id == *id
                        });
                        if !ok {
                            return Ok(Write::Conflict);
                        }
                    }
                    _ => {}
                }
                if let Some(d) = s.devices.get_mut(&device.unique_code) {
                    d.registration = None;
                    d.pending = None;
                }
                s.tokens.remove(&reg.token_hash);
                *s.terminals.entry(reg.terminal_id.clone()).or_insert(0) -= 1;
                match (&held, pending) {
                    (Held::Unstored, Some((id, _))) => {
                        s.slots.insert(
                            id.slot(),
                            SlotItem::Rejected {
                                fingerprint: ANY_REQUEST.into(),
                                response: abandoned.clone(),
                            },
                        );
                    }
                    (Held::Pending, Some((id, lapses_at))) => {
                        // Past its expiry it had already lapsed: expired, not canceled.
                        let to = if at > *lapses_at {
                            PaymentStatus::Expired
                        } else {
                            PaymentStatus::Canceled
                        };
                        if let Some(p) = s.slot_payment_mut(id) {
                            p.payment.status = to;
                        }
                    }
                    _ => {}
                }
                s.applied_writes += 1;
                Ok(Write::Applied)
            })
        })
        .await
    }
}

/// The registration transaction: the device (`DEVICE_UNREGISTERED` or
/// `DEVICE_SAME_REGISTRATION`), the new token (`NEW_ITEM`), the old token deleted, the terminal's
/// holding (`TERMINAL_FREE` / `TERMINAL_ONLY_THIS`, or none with a caller's token), and the
/// caller's token still there (`EXISTS`).
fn register(s: &mut State, r: &NewRegistration<'_>) -> Result<Write> {
    let (code, reg) = (r.unique_code, r.registration);
    let previous: Option<&Registration> = match r.kind {
        RegistrationKind::New => None,
        RegistrationKind::Again => Some(
            r.seen
                .and_then(|d| d.registration.as_ref())
                .ok_or_else(|| DomainError::Internal("registration again without one".into()))?,
        ),
    };
    let stored = s.devices.get(code);
    let device_ok = match previous {
        None => stored.is_none_or(|d| d.registration.is_none()),
        Some(p) => stored
            .and_then(|d| d.registration.as_ref())
            .is_some_and(|now| {
                now.terminal_id == reg.terminal_id && now.token_hash == p.token_hash
            }),
    };
    let token_free = !s.tokens.contains_key(&reg.token_hash);
    let holding = s.terminals.get(&reg.terminal_id).copied();
    let holding_ok = match (r.kind, r.authority) {
        (RegistrationKind::New, None) => holding.is_none_or(|n| n <= 0),
        (RegistrationKind::Again, None) => holding.is_none_or(|n| n <= 1),
        (_, Some(_)) => true,
    };
    let authority_ok = match r.authority {
        Some(authority) if previous.is_none_or(|p| p.token_hash != *authority) => {
            s.tokens.contains_key(authority)
        }
        _ => true,
    };
    if !(device_ok && token_free && holding_ok && authority_ok) {
        return Ok(Write::Conflict);
    }
    let device = s.devices.entry(code.clone()).or_insert_with(|| Device {
        unique_code: code.clone(),
        registration: None,
        last_counter: twochan_domain::Counter::new(0),
        pending: None,
        failed_auth: 0,
        locked_until: None,
    });
    device.registration = Some(reg.clone());
    s.tokens.insert(
        reg.token_hash.clone(),
        TerminalSession {
            terminal_id: reg.terminal_id.clone(),
            unique_code: code.clone(),
        },
    );
    if let Some(p) = previous {
        s.tokens.remove(&p.token_hash);
    }
    match (r.kind, r.authority) {
        (RegistrationKind::New, _) => {
            *s.terminals.entry(reg.terminal_id.clone()).or_insert(0) += 1;
        }
        // A terminal registered before its count was kept gets one now.
        (RegistrationKind::Again, None) => {
            s.terminals.entry(reg.terminal_id.clone()).or_insert(1);
        }
        (RegistrationKind::Again, Some(_)) => {}
    }
    s.applied_writes += 1;
    Ok(Write::Applied)
}

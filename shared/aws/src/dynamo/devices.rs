//! [`Devices`]: registration challenges, registering and deregistering a device.

use twochan_domain::{
    Challenge, DomainError, PaymentStatus, Result, TerminalId, Timestamp, UniqueCode,
    ports::{
        ANY_REQUEST, Device, Devices, NewRegistration, RegistrationChallenge, RegistrationKind,
        SlotRecord, StoredResponse, Write,
    },
};

use super::{
    DynamoStore, UpdateSpec, cond, expr, item_of, key, number_attr, parse_item, slot_record,
    string_attr,
};
use crate::items::{
    ChallengeItem, DeviceItem, RejectedItem, SK_CHALLENGE, SK_DEVICE, SK_PAYMENT, SK_TERMINAL,
    SK_TOKEN, TerminalItem, TokenItem, challenge_pk, device_pk, payment_pk, terminal_gsi_pk,
    terminal_pk, token_pk,
};

impl Devices for DynamoStore {
    async fn device(&self, code: &UniqueCode) -> Result<Option<Device>> {
        let item: Option<DeviceItem> = self.get(device_pk(code.as_str()), SK_DEVICE).await?;
        item.map(Device::try_from).transpose()
    }

    async fn device_and_terminal(
        &self,
        code: &UniqueCode,
        terminal: &TerminalId,
    ) -> Result<(Option<Device>, u32)> {
        let (device, holding) = self
            .get_two(
                (device_pk(code.as_str()), SK_DEVICE),
                (terminal_pk(terminal.as_str()), SK_TERMINAL),
            )
            .await?;
        let device = device.map(parse_item::<DeviceItem>).transpose()?;
        let devices = holding
            .map(parse_item::<TerminalItem>)
            .transpose()?
            .map_or(0, |t| t.device_count());
        Ok((device.map(Device::try_from).transpose()?, devices))
    }

    async fn put_challenge(&self, c: &RegistrationChallenge) -> Result<()> {
        let item = ChallengeItem {
            pk: challenge_pk(c.challenge.as_str()),
            sk: SK_CHALLENGE.into(),
            unique_code: c.unique_code.to_string(),
            expires_at: c.expires_at.millis(),
            ttl: c.expires_at.seconds() + 3600,
        };
        // 128 random bits: a collision would be a broken RNG, not a race to handle.
        match self
            .put_if_new("PutItem(challenge)", item_of(&item)?)
            .await?
        {
            Write::Applied => Ok(()),
            Write::Conflict => Err(DomainError::Internal("challenge collision".into())),
        }
    }

    async fn use_challenge(
        &self,
        challenge: &Challenge,
        code: &UniqueCode,
        now: Timestamp,
    ) -> Result<Write> {
        let bound = expr::bind(
            &[cond::CHALLENGE_USABLE],
            vec![
                (":code", string_attr(code.as_str())),
                (":now", number_attr(now.millis())),
            ],
        )?;
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(challenge_pk(challenge.as_str()), SK_CHALLENGE)))
            .condition_expression(cond::CHALLENGE_USABLE)
            .set_expression_attribute_names(bound.names)
            .set_expression_attribute_values(bound.values)
            .send()
            .await;
        self.write_if("DeleteItem(use_challenge)", result).await
    }

    async fn register(&self, r: &NewRegistration<'_>) -> Result<Write> {
        let (code, reg) = (r.unique_code, r.registration);
        let token = TokenItem {
            pk: token_pk(reg.token_hash.as_str()),
            sk: SK_TOKEN.into(),
            terminal_id: reg.terminal_id.to_string(),
            unique_code: code.to_string(),
            issued_at: reg.registered_at.millis(),
        };
        let previous = match r.kind {
            RegistrationKind::New => None,
            RegistrationKind::Again => Some(
                r.seen
                    .and_then(|d| d.registration.as_ref())
                    .ok_or_else(|| {
                        DomainError::Internal("registration again without one".into())
                    })?,
            ),
        };
        let mut values = vec![
            (":code", string_attr(code.as_str())),
            (":terminal", string_attr(reg.terminal_id.as_str())),
            (":token", string_attr(reg.token_hash.as_str())),
            (":at", number_attr(reg.registered_at.millis())),
            (":zero", number_attr(0)),
            (
                ":terminal_pk",
                string_attr(terminal_gsi_pk(reg.terminal_id.as_str())),
            ),
        ];
        let condition = match previous {
            None => cond::DEVICE_UNREGISTERED,
            Some(p) => {
                values.push((":old_token", string_attr(p.token_hash.as_str())));
                cond::DEVICE_SAME_REGISTRATION
            }
        };
        let mut items = vec![
            self.update_item(UpdateSpec {
                key: key(device_pk(code.as_str()), SK_DEVICE),
                // Into the terminal's keys-only index: the one index write of a device, here.
                update: "SET unique_code = :code, terminal_id = :terminal, token_hash = :token, \
                         registered_at = :at, last_counter = if_not_exists(last_counter, :zero), \
                         failed_auth = if_not_exists(failed_auth, :zero), \
                         gsi1pk = :terminal_pk, gsi1sk = :code"
                    .into(),
                condition,
                values,
            })?,
            self.put_new(item_of(&token)?)?,
        ];
        if let Some(p) = previous {
            items.push(self.delete(key(token_pk(p.token_hash.as_str()), SK_TOKEN))?);
        }
        // The terminal's holding: counted for a new device; without the terminal's token, it
        // must still be as free as it was read. With one, that token must still be current (it
        // is, by the device's own condition, when it is the very token being replaced).
        let terminal_key = || key(terminal_pk(reg.terminal_id.as_str()), SK_TERMINAL);
        let (holding_condition, mut holding_values) = match (r.kind, r.authority) {
            (RegistrationKind::New, None) => (cond::TERMINAL_FREE, vec![(":zero", number_attr(0))]),
            (RegistrationKind::Again, None) => {
                (cond::TERMINAL_ONLY_THIS, vec![(":one", number_attr(1))])
            }
            (_, Some(_)) => (cond::ALWAYS, vec![]),
        };
        if r.kind == RegistrationKind::New {
            holding_values.push((":one", number_attr(1)));
            items.push(self.update_item(UpdateSpec {
                key: terminal_key(),
                update: "ADD devices :one".into(),
                condition: holding_condition,
                values: holding_values,
            })?);
        } else if holding_condition != cond::ALWAYS {
            items.push(self.update_item(UpdateSpec {
                key: terminal_key(),
                // A terminal registered before its count was kept gets one now.
                update: "SET devices = if_not_exists(devices, :one)".into(),
                condition: holding_condition,
                values: holding_values,
            })?);
        }
        if let Some(authority) = r.authority
            && previous.is_none_or(|p| p.token_hash != *authority)
        {
            items.push(self.check_exists(key(token_pk(authority.as_str()), SK_TOKEN))?);
        }
        self.transact("TransactWriteItems(register)", items).await
    }

    async fn deregister(
        &self,
        device: &Device,
        at: Timestamp,
        abandoned: &StoredResponse,
    ) -> Result<Write> {
        let Some(reg) = &device.registration else {
            return Ok(Write::Conflict);
        };
        let mut values = vec![(":token", string_attr(reg.token_hash.as_str()))];
        let condition = match &device.pending {
            None => cond::DEVICE_DEREGISTER_NO_LOCK,
            Some((held, _)) => {
                values.push((":held", string_attr(held.as_str())));
                cond::DEVICE_DEREGISTER_WITH_LOCK
            }
        };
        let mut items = vec![
            self.update_item(UpdateSpec {
                key: key(device_pk(device.unique_code.as_str()), SK_DEVICE),
                update: "REMOVE terminal_id, token_hash, registered_at, pending_payment_id, \
                         pending_expires_at, gsi1pk, gsi1sk"
                    .into(),
                condition,
                values,
            })?,
            self.delete(key(token_pk(reg.token_hash.as_str()), SK_TOKEN))?,
            self.update_item(UpdateSpec {
                key: key(terminal_pk(reg.terminal_id.as_str()), SK_TERMINAL),
                update: "ADD devices :minus_one".into(),
                condition: cond::ALWAYS,
                values: vec![(":minus_one", number_attr(-1))],
            })?,
        ];
        // The lock's payment, if it was stored: a request that died between taking the lock and
        // storing its payment (or is still between them) leaves a lock whose payment does not
        // exist. Its slot then gets `abandoned`, so that a late put of that payment fails.
        let mut held = None;
        if let Some((id, lapses_at)) = &device.pending {
            match self.get_raw(payment_pk(id), SK_PAYMENT).await? {
                None => {
                    let kept =
                        RejectedItem::new(payment_pk(id), SK_PAYMENT, ANY_REQUEST, abandoned, at);
                    items.push(self.put_new(item_of(&kept)?)?);
                }
                Some(item) => {
                    if let SlotRecord::Payment { payment, .. } = slot_record(item)?
                        && payment.payment_id == *id
                        && payment.status == PaymentStatus::Pending
                    {
                        held = Some((id, lapses_at));
                    }
                }
            }
        }
        if let Some((held, lapses_at)) = held {
            // A payment past its expiry becomes expired, not canceled: it had already lapsed.
            let to = if at > *lapses_at {
                PaymentStatus::Expired
            } else {
                PaymentStatus::Canceled
            };
            items.push(self.update_item(UpdateSpec {
                key: key(payment_pk(held), SK_PAYMENT),
                update: "SET #status = :to".into(),
                condition: cond::PAYMENT_PENDING_HELD,
                values: vec![
                    (":pending", string_attr(PaymentStatus::Pending.as_str())),
                    (":to", string_attr(to.as_str())),
                    (":held", string_attr(held.as_str())),
                ],
            })?);
        }
        self.transact("TransactWriteItems(deregister)", items).await
    }
}

//! What the store holds: one map per kind of item of the DynamoDB table, keyed as the table is.

use std::collections::{BTreeMap, HashMap};

use twochan_domain::{
    Currency, MerchantId, Payment, PaymentId, PaymentSlot, RefundId, TerminalId, Timestamp,
    UniqueCode,
    crypto::SecretHash,
    ports::{Device, RefundSlotRecord, SlotRecord, StoredResponse, TerminalSession},
    refund::Refund,
};

#[derive(Default)]
pub(crate) struct State {
    /// `MERCHANT#id / MERCHANT`: the merchant's current api key.
    pub merchants: HashMap<MerchantId, SecretHash>,
    /// `APIKEY#hash`.
    pub api_keys: HashMap<SecretHash, MerchantId>,
    /// `TOKEN#hash`: a terminal's token, while it is its device's current one.
    pub tokens: HashMap<SecretHash, TerminalSession>,
    /// `DEVICE#code`: outlives registrations (it keeps the counter).
    pub devices: HashMap<UniqueCode, Device>,
    /// `TERMINAL#id`: how many devices it holds (`ADD`ed, so it may read below zero).
    pub terminals: HashMap<TerminalId, i64>,
    /// `CHALLENGE#challenge`: its code and expiry.
    pub challenges: HashMap<String, (UniqueCode, Timestamp)>,
    /// `PAYMENT#slot`: a payment, or a kept answer.
    pub slots: HashMap<PaymentSlot, SlotItem>,
    /// `REFUND#slot`: a refund, or a kept answer.
    pub refund_slots: HashMap<PaymentSlot, RefundItem>,
    /// `MERCHANT#id / BALANCE#currency`, ordered as the query reads them. Sums are `u128` as
    /// DynamoDB's numbers are wider than `u64`: a sum past `u64` is written, and fails its read.
    pub balances: BTreeMap<(MerchantId, &'static str), BalanceItem>,
    /// `MERCHANT#id / WEBHOOK`.
    pub webhooks: HashMap<MerchantId, twochan_domain::ports::WebhookEndpoint>,
    pub applied_writes: usize,
}

pub(crate) enum SlotItem {
    Payment(Box<StoredPayment>),
    Rejected {
        fingerprint: String,
        response: StoredResponse,
    },
}

/// A payment item: the payment, and what the item keeps beside it.
#[derive(Clone)]
pub(crate) struct StoredPayment {
    pub payment: Payment,
    pub fingerprint: String,
    /// The journal legs settlement writes.
    pub credit_account: Option<String>,
    pub debit_account: Option<String>,
    /// Its refunds, in the order they were made.
    pub refund_ids: Vec<RefundId>,
}

pub(crate) enum RefundItem {
    Refund {
        refund: Refund,
        fingerprint: String,
    },
    Rejected {
        fingerprint: String,
        response: StoredResponse,
    },
}

#[derive(Default)]
pub(crate) struct BalanceItem {
    pub currency: Option<Currency>,
    pub settled_amount: u128,
    pub settled_count: u128,
    pub refunded_amount: u128,
}

impl SlotItem {
    pub fn record(&self) -> SlotRecord {
        match self {
            SlotItem::Payment(p) => SlotRecord::Payment {
                payment: Box::new(p.payment.clone()),
                fingerprint: p.fingerprint.clone(),
            },
            SlotItem::Rejected {
                fingerprint,
                response,
            } => SlotRecord::Rejected {
                fingerprint: fingerprint.clone(),
                response: response.clone(),
            },
        }
    }

    pub fn payment(&self) -> Option<&StoredPayment> {
        match self {
            SlotItem::Payment(p) => Some(p),
            SlotItem::Rejected { .. } => None,
        }
    }

    pub fn payment_mut(&mut self) -> Option<&mut StoredPayment> {
        match self {
            SlotItem::Payment(p) => Some(p),
            SlotItem::Rejected { .. } => None,
        }
    }
}

impl RefundItem {
    pub fn record(&self) -> RefundSlotRecord {
        match self {
            RefundItem::Refund {
                refund,
                fingerprint,
            } => RefundSlotRecord::Refund {
                refund: Box::new(refund.clone()),
                fingerprint: fingerprint.clone(),
            },
            RefundItem::Rejected {
                fingerprint,
                response,
            } => RefundSlotRecord::Rejected {
                fingerprint: fingerprint.clone(),
                response: response.clone(),
            },
        }
    }
}

impl State {
    /// The payment item in `id`'s slot, whichever payment it is (conditions are checked on the
    /// item at the key, as DynamoDB does).
    pub fn slot_payment(&self, id: &PaymentId) -> Option<&StoredPayment> {
        self.slots.get(&id.slot()).and_then(SlotItem::payment)
    }

    pub fn slot_payment_mut(&mut self, id: &PaymentId) -> Option<&mut StoredPayment> {
        self.slots
            .get_mut(&id.slot())
            .and_then(SlotItem::payment_mut)
    }

    /// The payment `id` itself: not a kept answer, nor another payment of the same slot.
    pub fn stored_payment(&self, id: &PaymentId) -> Option<&StoredPayment> {
        self.slot_payment(id)
            .filter(|p| p.payment.payment_id == *id)
    }

    pub fn payment(&self, id: &PaymentId) -> Option<Payment> {
        self.stored_payment(id).map(|p| p.payment.clone())
    }

    pub fn device(&self, code: &UniqueCode) -> Option<Device> {
        self.devices.get(code).cloned()
    }

    /// Whether `device`'s lock is held by `held` (`LOCK_HELD_BY`).
    pub fn lock_held_by(&self, code: &UniqueCode, held: &PaymentId) -> bool {
        self.devices
            .get(code)
            .and_then(|d| d.pending.as_ref())
            .is_some_and(|(id, _)| id == held)
    }

    pub fn remove_lock(&mut self, code: &UniqueCode) {
        if let Some(d) = self.devices.get_mut(code) {
            d.pending = None;
        }
    }

    pub fn balance_mut(&mut self, merchant: &MerchantId, currency: Currency) -> &mut BalanceItem {
        let item = self
            .balances
            .entry((merchant.clone(), currency.code()))
            .or_default();
        item.currency = Some(currency);
        item
    }
}

/// `NEW_ITEM`: `value` goes into `slot` only if the slot is empty (a kept answer of either slot
/// kind).
pub(crate) fn insert_new<V>(
    map: &mut HashMap<PaymentSlot, V>,
    slot: PaymentSlot,
    value: V,
    applied_writes: &mut usize,
) -> twochan_domain::ports::Write {
    use std::collections::hash_map::Entry;
    match map.entry(slot) {
        Entry::Occupied(_) => twochan_domain::ports::Write::Conflict,
        Entry::Vacant(v) => {
            v.insert(value);
            *applied_writes += 1;
            twochan_domain::ports::Write::Applied
        }
    }
}

//! Failures and hooks a test sets on the store's calls, and how often each call was made.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

/// One call of a port method, named for [`crate::MemoryStore::fail_next`] and
/// [`crate::MemoryStore::on_call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    // Directory
    MerchantForKey,
    MerchantAndDevice,
    SessionForToken,
    PutMerchant,
    // Devices
    Device,
    DeviceAndTerminal,
    PutChallenge,
    UseChallenge,
    Register,
    Deregister,
    // Payments
    Payment,
    PaymentAndDevice,
    Slot,
    LockDevice,
    PutPayment,
    ReleaseLock,
    RecordRejection,
    PendingForTerminal,
    FinishPending,
    RecordWrongCode,
    Confirm,
    // Ledger
    SettleGroup,
    Balances,
    // Refunds
    RefundSlot,
    Refund,
    RecordRefundRejection,
    RefundsOf,
    // WebhookEndpoints, EventSources, StuckPayments
    Endpoint,
    PutEndpoint,
    DeleteEndpoint,
    EventSubject,
    ConfirmedBefore,
}

/// How a call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing is read or written; the call answers `DomainError::Unavailable` (DynamoDB
    /// throttled, timed out, or cancelled a transaction for another's).
    Unavailable,
    /// A conditional write answers `Write::Conflict` without writing, as when another
    /// transaction held its items and the adapter reports a lost race (`transact_or_reread`).
    /// Any other call answers `DomainError::Unavailable`, as [`Fault::Unavailable`].
    Conflict,
    /// The call does its work, then answers `DomainError::Unavailable`: the write committed but
    /// its answer was lost (a timeout after the commit).
    LostAnswer,
}

pub(crate) type Hook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Default)]
pub(crate) struct Faults {
    queued: Mutex<HashMap<Op, VecDeque<Fault>>>,
    hooks: Mutex<HashMap<Op, Hook>>,
    calls: Mutex<HashMap<Op, usize>>,
}

/// A test's lock: a panic elsewhere leaves these maps whole (each change is one insert).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Faults {
    pub(crate) fn push(&self, op: Op, fault: Fault) {
        lock(&self.queued).entry(op).or_default().push_back(fault);
    }

    /// Counts a call of `op` and gives it its fault, if one is queued.
    pub(crate) fn take(&self, op: Op) -> Option<Fault> {
        *lock(&self.calls).entry(op).or_default() += 1;
        lock(&self.queued)
            .get_mut(&op)
            .and_then(VecDeque::pop_front)
    }

    pub(crate) fn calls(&self, op: Op) -> usize {
        lock(&self.calls).get(&op).copied().unwrap_or(0)
    }

    pub(crate) fn set_hook<F, Fut>(&self, op: Op, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: Hook = Arc::new(move || Box::pin(hook()));
        lock(&self.hooks).insert(op, hook);
    }

    pub(crate) fn clear_hook(&self, op: Op) {
        lock(&self.hooks).remove(&op);
    }

    pub(crate) fn hook(&self, op: Op) -> Option<Hook> {
        lock(&self.hooks).get(&op).cloned()
    }
}

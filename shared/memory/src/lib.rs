//! [`MemoryStore`]: every store port of `twochan-domain` in memory, with the semantics of the
//! DynamoDB adapter (`twochan_aws::DynamoStore`). Each conditional write checks the condition the
//! adapter sends (`twochan_aws::dynamo::cond`, named in each method's comment) against the state
//! it holds, and answers the way the adapter does: `Write::Conflict` when a condition fails, the
//! same `DomainError` where the adapter makes one. A transaction checks all of its conditions and
//! then applies all of its writes under one lock, so it is all or nothing. Where the adapter makes
//! several requests (a read, then a transaction), so does this store, with a yield between them,
//! so other tasks can get in between as they could on DynamoDB.
//!
//! What DynamoDB does that this store does differently, and why the difference is harmless:
//! - Consistency: every read here is strongly consistent, the terminal index and the sweeper's
//!   scan included (both eventually consistent on DynamoDB: the adapter filters what it reads
//!   again, so a consistent read is one of the answers it can get). Two items read together
//!   (`BatchGetItem`) are read at one instant here.
//! - TTL: a used registration challenge is deleted, as on DynamoDB; an unused one stays until
//!   [`MemoryStore::purge_expired_challenges`], as it may for up to days on DynamoDB. Its expiry is
//!   checked in the condition that uses it, not by its removal, in both stores.
//! - Transactions never meet each other here (one lock), so DynamoDB's `TransactionConflict`
//!   cancellations never happen by themselves. [`MemoryStore::fail_next`] makes them: a
//!   `Fault::Conflict` is what a transaction the adapter turns into `Write::Conflict` answers
//!   (confirm, refund), a `Fault::Unavailable` what the other transactions answer.
//! - Attributes the adapter always writes (`failed_auth`, `last_counter`, `refunded_amount`) are
//!   plain numbers here, so `attribute_not_exists(failed_auth) OR failed_auth = :seen` reads as
//!   `failed_auth == seen`: registration writes the count, and no device exists without one.
//! - The scan for stuck payments pages over payments only (DynamoDB's pages hold every item of
//!   the table) and reports no read units.

mod directory;
mod faults;
mod ledger;
mod payments;
mod state;

pub mod conformance;

use std::sync::{Arc, Mutex, MutexGuard};

use twochan_domain::{DomainError, PaymentId, Result, Timestamp, ports::Write};

pub use faults::{Fault, Op};
use state::State;

/// Every store port in memory. Clones share one store, like clones of a `DynamoStore` share
/// its table.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    faults: faults::Faults,
    /// Payments per page of [`twochan_domain::ports::StuckPayments::confirmed_before`].
    scan_page: Mutex<Option<usize>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state, locked. A panic in another holder leaves the state as that holder's last
    /// complete write (every write checks first and changes after), so a poisoned lock is used.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next call of `op` fail with `fault`; several calls queue up, one per call.
    pub fn fail_next(&self, op: Op, fault: Fault) {
        self.inner.faults.push(op, fault);
    }

    /// Runs `hook` before every later call of `op` (before its fault, if any, and before it
    /// reads or writes anything): a test holds a call back there to time it against another.
    pub fn on_call<F, Fut>(&self, op: Op, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.faults.set_hook(op, hook);
    }

    /// Removes the hook of `op`.
    pub fn clear_hook(&self, op: Op) {
        self.inner.faults.clear_hook(op);
    }

    /// How many times `op` was called (failed calls included).
    pub fn calls(&self, op: Op) -> usize {
        self.inner.faults.calls(op)
    }

    /// Conditional writes (and transactions) that applied, over every port: a request that
    /// changed nothing leaves it as it was.
    pub fn applied_writes(&self) -> usize {
        self.state().applied_writes
    }

    /// How many payments a page of the stuck-payment scan reads (100 unless set).
    pub fn set_scan_page(&self, payments: usize) {
        *self
            .inner
            .scan_page
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(payments.max(1));
    }

    fn scan_page(&self) -> usize {
        self.inner
            .scan_page
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .unwrap_or(100)
    }

    /// Removes the registration challenges expired before `now`: what DynamoDB's TTL does, some
    /// time after their `ttl` (an hour past their expiry).
    pub fn purge_expired_challenges(&self, now: Timestamp) {
        self.state()
            .challenges
            .retain(|_, (_, expires_at)| *expires_at >= now);
    }

    /// The journal entry of one settled payment: `(direction, account, amount, currency)` per
    /// leg, as `DynamoStore::ledger_entries` gives it.
    pub fn ledger_entries(&self, payment: &PaymentId) -> Vec<(String, String, u64, String)> {
        let state = self.state();
        let Some(p) = state.stored_payment(payment) else {
            return Vec::new();
        };
        let leg = |direction: &str, account: &Option<String>| {
            account.clone().map(|a| {
                (
                    direction.to_owned(),
                    a,
                    p.payment.amount.minor_units(),
                    p.payment.currency.code().to_owned(),
                )
            })
        };
        [
            leg("credit", &p.credit_account),
            leg("debit", &p.debit_account),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Runs one call of `op`: its hook, a yield (so that concurrent calls interleave even on a
    /// single-threaded runtime), its fault if one is queued, then `run`.
    async fn call<T>(&self, op: Op, run: impl AsyncRun<T>) -> Result<T> {
        let fault = self.enter(op).await;
        match fault {
            Some(Fault::Unavailable | Fault::Conflict) => Err(injected(op)),
            Some(Fault::LostAnswer) => {
                run.run().await?;
                Err(injected(op))
            }
            None => run.run().await,
        }
    }

    /// [`Self::call`] for a conditional write: a `Fault::Conflict` answers `Write::Conflict`
    /// without writing, as a lost race would.
    async fn write(&self, op: Op, run: impl AsyncRun<Write>) -> Result<Write> {
        let fault = self.enter(op).await;
        match fault {
            Some(Fault::Unavailable) => Err(injected(op)),
            Some(Fault::Conflict) => Ok(Write::Conflict),
            Some(Fault::LostAnswer) => {
                run.run().await?;
                Err(injected(op))
            }
            None => run.run().await,
        }
    }

    async fn enter(&self, op: Op) -> Option<Fault> {
        if let Some(hook) = self.inner.faults.hook(op) {
            hook().await;
        }
        yield_once().await;
        self.inner.faults.take(op)
    }

    /// One atomic step: `f` over the locked state.
    fn step<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        f(&mut self.state())
    }
}

/// The body of a call, run after its hook and fault: a future made on demand, so that a fault
/// that answers at once runs nothing.
trait AsyncRun<T>: Send {
    fn run(self) -> impl std::future::Future<Output = Result<T>> + Send;
}

impl<T, F, Fut> AsyncRun<T> for F
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>> + Send,
{
    fn run(self) -> impl std::future::Future<Output = Result<T>> + Send {
        self()
    }
}

fn injected(op: Op) -> DomainError {
    DomainError::Unavailable(format!("memory store: injected failure of {op:?}"))
}

/// Gives other tasks a turn once: where DynamoDB has a round trip, so that requests racing
/// through the use cases interleave here too.
pub(crate) fn yield_once() -> impl std::future::Future<Output = ()> + Send {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
}

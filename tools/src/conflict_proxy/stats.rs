//! What the proxy has seen and refused.

use super::*;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) dynamodb_requests: AtomicU64,
    pub(super) transactions: AtomicU64,
    pub(super) transactions_refused: AtomicU64,
    pub(super) transaction_items_conflicted: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) writes_refused: AtomicU64,
    pub(super) refused_put_item: AtomicU64,
    pub(super) refused_update_item: AtomicU64,
    pub(super) refused_delete_item: AtomicU64,
    pub(super) refused_batch_write_item: AtomicU64,
    pub(super) upstream_errors: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the proxy has seen and refused so far (all counters since start).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub hold_ms: u64,
    /// Whether the conflict rule is applied (see [`ENFORCE_PATH`]).
    #[serde(default)]
    pub enforcing: bool,
    /// Every request received (the stats endpoint excepted).
    pub requests: u64,
    /// Those with a DynamoDB `X-Amz-Target`.
    pub dynamodb_requests: u64,
    /// `TransactWriteItems` received.
    pub transactions: u64,
    /// Of those, refused with `TransactionCanceledException` (`TransactionConflict`).
    pub transactions_refused: u64,
    /// Items marked `TransactionConflict` in those refusals.
    pub transaction_items_conflicted: u64,
    /// `PutItem`, `UpdateItem`, `DeleteItem` and `BatchWriteItem` received.
    pub writes: u64,
    /// Of those, refused with `TransactionConflictException`.
    pub writes_refused: u64,
    pub refused_by_operation: BTreeMap<String, u64>,
    /// Requests the emulator could not be reached for (the client's connection is dropped).
    pub upstream_errors: u64,
    /// Now: transactions between receipt and the emulator's answer, and the items they hold.
    pub transactions_in_flight: u64,
    pub items_held: u64,
}

pub(super) struct Shared {
    pub(super) counters: Counters,
    pub(super) locks: Mutex<LockTable>,
    pub(super) hold: Duration,
    pub(super) enforcing: std::sync::atomic::AtomicBool,
}

/// The counters of a running proxy.
#[derive(Clone)]
pub struct StatsHandle(pub(super) Arc<Shared>);

impl StatsHandle {
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (in_flight, held) = {
            let locks = self.0.locks.lock().unwrap_or_else(|e| e.into_inner());
            (locks.transactions_in_flight(), locks.items_held())
        };
        let refused_by_operation = [
            ("TransactWriteItems", get(&c.transactions_refused)),
            ("PutItem", get(&c.refused_put_item)),
            ("UpdateItem", get(&c.refused_update_item)),
            ("DeleteItem", get(&c.refused_delete_item)),
            ("BatchWriteItem", get(&c.refused_batch_write_item)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        StatsSnapshot {
            hold_ms: self.0.hold.as_millis() as u64,
            enforcing: self.0.enforcing.load(Ordering::Relaxed),
            requests: get(&c.requests),
            dynamodb_requests: get(&c.dynamodb_requests),
            transactions: get(&c.transactions),
            transactions_refused: get(&c.transactions_refused),
            transaction_items_conflicted: get(&c.transaction_items_conflicted),
            writes: get(&c.writes),
            writes_refused: get(&c.writes_refused),
            refused_by_operation,
            upstream_errors: get(&c.upstream_errors),
            transactions_in_flight: in_flight as u64,
            items_held: held as u64,
        }
    }
}

//! The conformance suite against [`MemoryStore`]: each check on a store of its own, and all of
//! them at once on one store (as they would run against a shared table).

use twochan_domain::{DomainError, ports::StoredResponse};
use twochan_memory::{MemoryStore, conformance};

/// A refusal a slot keeps; the checks only store and compare it.
fn kept() -> StoredResponse {
    StoredResponse::of(&DomainError::DeviceBusy).expect("device_busy is a final refusal")
}

#[tokio::test]
async fn challenge_is_used_once() {
    conformance::challenge_is_used_once(&MemoryStore::new()).await;
}

#[tokio::test]
async fn registration_follows_what_was_read() {
    conformance::registration_follows_what_was_read(&MemoryStore::new()).await;
}

#[tokio::test]
async fn payment_slot_keeps_its_first_answer() {
    conformance::payment_slot_keeps_its_first_answer(&MemoryStore::new(), &kept()).await;
}

#[tokio::test]
async fn device_lock_is_taken_once() {
    conformance::device_lock_is_taken_once(&MemoryStore::new()).await;
}

#[tokio::test]
async fn confirmation_commits_once() {
    conformance::confirmation_commits_once(&MemoryStore::new()).await;
}

#[tokio::test]
async fn wrong_code_is_counted_once() {
    conformance::wrong_code_is_counted_once(&MemoryStore::new()).await;
}

#[tokio::test]
async fn pending_payment_finishes_once() {
    conformance::pending_payment_finishes_once(&MemoryStore::new()).await;
}

#[tokio::test]
async fn deregistration_frees_the_code() {
    conformance::deregistration_frees_the_code(&MemoryStore::new(), &kept()).await;
}

#[tokio::test]
async fn settlement_settles_once() {
    conformance::settlement_settles_once(&MemoryStore::new()).await;
}

#[tokio::test]
async fn refunds_stay_within_the_payment() {
    conformance::refunds_stay_within_the_payment(&MemoryStore::new(), &kept()).await;
}

#[tokio::test]
async fn pending_for_terminal_lists_the_locks() {
    conformance::pending_for_terminal_lists_the_locks(&MemoryStore::new()).await;
}

#[tokio::test]
async fn merchant_key_is_replaced() {
    conformance::merchant_key_is_replaced(&MemoryStore::new()).await;
}

#[tokio::test]
async fn stuck_payments_are_found() {
    let store = MemoryStore::new();
    // Pages of two items: the scan goes on across pages.
    store.set_scan_page(2);
    conformance::stuck_payments_are_found(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_check_at_once_on_one_store() {
    let store = MemoryStore::new();
    let kept = kept();
    let runs = (0..4).map(|_| conformance::all(&store, &kept));
    futures_util::future::join_all(runs).await;
}

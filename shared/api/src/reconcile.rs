//! The reconciler: nothing confirmed is lost. A confirmation commits before its settlement
//! message is sent; if the send fails and the phone never retries, the payment would stay
//! `confirmed` forever. Run on a schedule, this sends such payments' messages again (settlement is
//! idempotent, so a message that was only slow costs one duplicate delivery).

use serde::Serialize;
use twochan_domain::{
    Result, Timestamp,
    ports::{Payments, SettlementMessage, SettlementQueue},
};

/// Payments re-sent per run at most; the next run takes the rest.
pub const DEFAULT_RECONCILE_BATCH: usize = 500;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Stale confirmed payments found.
    pub found: usize,
    /// Of those, messages sent again.
    pub requeued: usize,
    /// Sends that failed (the next run tries again).
    pub failed: usize,
}

/// Re-sends the settlement message of every payment confirmed before `now - after_seconds`.
pub async fn reconcile<S: Payments, Q: SettlementQueue>(
    store: &S,
    queue: &Q,
    now: Timestamp,
    after_seconds: i64,
    batch: usize,
) -> Result<ReconcileReport> {
    let stale = store
        .stale_confirmed(now.plus_seconds(-after_seconds), batch)
        .await?;
    let mut report = ReconcileReport {
        found: stale.len(),
        ..Default::default()
    };
    for payment in &stale {
        match queue
            .enqueue(&SettlementMessage::for_payment(payment))
            .await
        {
            Ok(()) => {
                report.requeued += 1;
                tracing::warn!(
                    payment_id = %payment.payment_id,
                    unique_code_hash = payment.unique_code.log_hash(),
                    outcome = "requeued",
                    "confirmed payment left unsettled; settlement message sent again"
                );
            }
            Err(e) => {
                report.failed += 1;
                tracing::error!(
                    payment_id = %payment.payment_id,
                    unique_code_hash = payment.unique_code.log_hash(),
                    outcome = "requeue_failed",
                    error.code = e.code(),
                    error.detail = ?e,
                    "re-sending settlement failed"
                );
            }
        }
    }
    tracing::info!(
        found = report.found,
        requeued = report.requeued,
        failed = report.failed,
        "reconciliation done"
    );
    Ok(report)
}

//! The sweeper: nothing stays `confirmed` unnoticed.
//!
//! A confirmed payment normally settles within a second of its confirmation. One that is still
//! `confirmed` long after lost its settlement message (or the message sits in the dead-letter
//! queue). Run on a schedule, the sweeper finds such payments, sends each one's settlement message
//! again (settlement is idempotent: a payment settles once, whatever number of messages), logs one
//! line per payment and one Embedded Metric Format line per run, on which an alarm fires.
//!
//! Bounded per run: at most [`SweepLimits::max_pages`] pages of the scan, [`SweepLimits::max_payments`]
//! payments, and nothing started after [`SweepLimits::stop_at`]; a run that stops early says so
//! (a warning, and `SweepIncomplete` in its metric line) and the next run starts over from the
//! start of the table. Payments past the payment limit are reached once the earlier ones have
//! settled; a table larger than the page limit has a tail that no run reaches, which
//! `SweepIncomplete` shows on every run.

use serde::Serialize;
use twochan_domain::{
    DomainError, Timestamp,
    ports::{ScanCursor, SettlementQueue, StuckPayment, StuckPayments},
};

/// How long a payment may stay `confirmed` before the sweeper sends its message again, when
/// `STUCK_AFTER_SECONDS` is not set.
pub const DEFAULT_STUCK_AFTER_SECONDS: i64 = 300;
/// The longest `STUCK_AFTER_SECONDS` a sweeper accepts: 7 days.
pub const MAX_STUCK_AFTER_SECONDS: i64 = 7 * 86_400;

/// The EMF namespace and metric the alarm watches.
pub use crate::telemetry::METRIC_NAMESPACE;
pub const STUCK_METRIC: &str = "StuckConfirmedFound";

/// Messages sent at once: a page may find many, and the queue is shared with the payment path.
const SEND_CONCURRENCY: usize = 10;

/// How much one run may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepLimits {
    /// Pages of the scan (up to 1 MB of table each).
    pub max_pages: usize,
    /// Payments found (and their messages sent).
    pub max_payments: usize,
    /// No page is read and no message sent from this instant on (the function's deadline less a
    /// margin); `None`: no time limit.
    pub stop_at: Option<Timestamp>,
}

impl SweepLimits {
    /// What the deployed function does, before its deadline is known: 100 pages is a table of up
    /// to 100 MB (about 150,000 payments of 600 B) per run, at most 12,800 read units.
    pub const DEPLOYED: Self = Self {
        max_pages: 100,
        max_payments: 500,
        stop_at: None,
    };
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum Stop {
    /// The scan reached the end of the table.
    Complete,
    PageLimit,
    PaymentLimit,
    TimeLimit,
    /// A page could not be read (the store unavailable): the next run tries again.
    ScanFailed(String),
}

/// What a run did: the function's answer, and the source of its metric line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepSummary {
    /// Payments found `confirmed` for longer than the threshold and handled (a page's payments
    /// past `max_payments` are left to the next run, uncounted).
    pub found: usize,
    /// Of those, the ones whose message was sent again.
    pub reenqueued: usize,
    /// Of those, the ones whose message could not be sent (the next run tries again).
    pub failed: usize,
    pub pages: usize,
    /// Read capacity units the scan cost, as the store reported them.
    pub read_units: f64,
    /// Whether the scan reached the end of the table.
    pub complete: bool,
    pub stopped: Stop,
    /// The confirmation time before which a payment counted as stuck (ms since the epoch).
    pub cutoff_ms: i64,
}

/// One run: finds the payments `confirmed` since before `now - stuck_after_seconds` and sends
/// each one's settlement message again. Never fails as a whole: a failed page or message is in
/// the summary (and its log line), and the next run tries again.
pub async fn sweep<S: StuckPayments, Q: SettlementQueue>(
    stuck: &S,
    queue: &Q,
    now: Timestamp,
    stuck_after_seconds: i64,
    limits: SweepLimits,
) -> SweepSummary {
    let cutoff = now.plus_seconds(-stuck_after_seconds);
    let mut summary = SweepSummary {
        found: 0,
        reenqueued: 0,
        failed: 0,
        pages: 0,
        read_units: 0.0,
        complete: false,
        stopped: Stop::Complete,
        cutoff_ms: cutoff.millis(),
    };
    let mut cursor: Option<ScanCursor> = None;
    summary.stopped = loop {
        if summary.pages >= limits.max_pages {
            break Stop::PageLimit;
        }
        if past(limits.stop_at) {
            break Stop::TimeLimit;
        }
        let page = match stuck.confirmed_before(cutoff, cursor.as_ref()).await {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error.code = e.code(), error.detail = ?e, pages = summary.pages, "sweep: scan failed");
                break Stop::ScanFailed(e.to_string());
            }
        };
        summary.pages += 1;
        summary.read_units += page.read_units;
        let room = limits.max_payments - summary.found;
        let over = page.payments.len() > room;
        let mut out_of_time = false;
        for chunk in page.payments[..page.payments.len().min(room)].chunks(SEND_CONCURRENCY) {
            if past(limits.stop_at) {
                out_of_time = true;
                break;
            }
            let sent = futures_util::future::join_all(
                chunk
                    .iter()
                    .map(|p| resend(queue, p, now, Timestamp::now())),
            )
            .await;
            summary.found += sent.len();
            summary.reenqueued += sent.iter().filter(|ok| **ok).count();
            summary.failed += sent.iter().filter(|ok| !**ok).count();
        }
        if out_of_time {
            break Stop::TimeLimit;
        }
        if over {
            break Stop::PaymentLimit;
        }
        match page.next {
            None => {
                summary.complete = true;
                break Stop::Complete;
            }
            Some(_) if summary.found >= limits.max_payments => break Stop::PaymentLimit,
            Some(next) => cursor = Some(next),
        }
    };
    if summary.stopped != Stop::Complete {
        tracing::warn!(
            outcome = "sweep_stopped_early",
            stopped = ?summary.stopped,
            pages = summary.pages,
            found = summary.found,
            "sweep: stopped before the end of the table; the next run starts over"
        );
    }
    tracing::info!(
        outcome = "sweep_done",
        found = summary.found,
        reenqueued = summary.reenqueued,
        failed = summary.failed,
        pages = summary.pages,
        read_units = summary.read_units,
        complete = summary.complete,
        "sweep: done"
    );
    summary
}

fn past(stop_at: Option<Timestamp>) -> bool {
    stop_at.is_some_and(|t| Timestamp::now() >= t)
}

/// Sends one stuck payment's message again, and logs it: its id, its merchant, and how long it
/// has been confirmed (the device only by its hash; no secret is in the message).
async fn resend<Q: SettlementQueue>(
    queue: &Q,
    p: &StuckPayment,
    now: Timestamp,
    sent_at: Timestamp,
) -> bool {
    let result = queue.enqueue(&p.settlement_message(sent_at)).await;
    let confirmed_for_seconds = p.confirmed_for_seconds(now);
    match &result {
        Ok(()) => tracing::warn!(
            outcome = "stuck_confirmed",
            payment_id = %p.payment_id,
            merchant_id = %p.merchant_id,
            unique_code_hash = %p.unique_code.log_hash(),
            confirmed_for_seconds,
            reenqueued = true,
            "payment confirmed for too long; its settlement message was sent again"
        ),
        Err(e) => tracing::error!(
            outcome = "stuck_confirmed",
            payment_id = %p.payment_id,
            merchant_id = %p.merchant_id,
            unique_code_hash = %p.unique_code.log_hash(),
            confirmed_for_seconds,
            reenqueued = false,
            error.code = e.code(),
            error.detail = ?e,
            "payment confirmed for too long; sending its settlement message again failed"
        ),
    }
    result.is_ok()
}

impl SweepSummary {
    /// The run as one CloudWatch Embedded Metric Format line (namespace `Twochan`, dimension
    /// `FunctionName`): CloudWatch Logs turns it into metrics, so an alarm needs no API call.
    /// `StuckConfirmedFound` is what the alarm watches; the others tell a run that could not send
    /// (`StuckConfirmedNotReenqueued`) or did not reach the end of the table (`SweepIncomplete`).
    pub fn emf(&self, function: &str, at: Timestamp) -> serde_json::Value {
        crate::telemetry::emf_line(
            function,
            at.millis(),
            &[
                (STUCK_METRIC, "Count", self.found.into()),
                ("StuckConfirmedNotReenqueued", "Count", self.failed.into()),
                ("SweepIncomplete", "Count", u8::from(!self.complete).into()),
            ],
        )
    }

    /// The run's failure, if its scan failed: the invocation then fails too (the function's
    /// `Errors` metric), after its metric line is out.
    pub fn error(&self) -> Option<DomainError> {
        match &self.stopped {
            Stop::ScanFailed(e) => Some(DomainError::Unavailable(format!("sweep: {e}"))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use twochan_domain::{
        Amount, Currency, MerchantId, PaymentId, PaymentStatus, Result, UniqueCode,
        ports::{SettlementMessage, StuckPage},
    };

    use super::*;
    use crate::telemetry::CapturedLogs;

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    /// A payment row of the fake table: its status and the fields the scan projects.
    fn row(
        status: PaymentStatus,
        confirmed_secs_ago: Option<i64>,
        n: u64,
    ) -> (PaymentStatus, StuckPayment) {
        let at = Timestamp::from_millis(NOW.millis() - 3_600_000);
        (
            status,
            StuckPayment {
                payment_id: PaymentId::generate(at),
                merchant_id: MerchantId::try_from(format!("m-{n}")).unwrap(),
                unique_code: UniqueCode::try_from(format!("beacon-{n:04}")).unwrap(),
                amount: Amount::try_from(100 + n).unwrap(),
                currency: Currency::try_from("KRW").unwrap(),
                // A payment never confirmed has no confirmation time; the fake then never matches.
                confirmed_at: NOW.plus_seconds(-confirmed_secs_ago.unwrap_or(-1_000_000)),
            },
        )
    }

    /// The table, scanned `page_size` rows per page as DynamoDB would (a page may match none);
    /// the scan of page `fail_at` fails.
    struct Table {
        rows: Vec<(PaymentStatus, StuckPayment)>,
        page_size: usize,
        fail_at: Option<usize>,
        scans: Mutex<usize>,
    }

    impl Table {
        fn new(rows: Vec<(PaymentStatus, StuckPayment)>, page_size: usize) -> Self {
            Self {
                rows,
                page_size,
                fail_at: None,
                scans: Mutex::new(0),
            }
        }
    }

    impl StuckPayments for Table {
        async fn confirmed_before(
            &self,
            cutoff: Timestamp,
            after: Option<&ScanCursor>,
        ) -> Result<StuckPage> {
            let page_no = {
                let mut scans = self.scans.lock().unwrap();
                *scans += 1;
                *scans - 1
            };
            if self.fail_at == Some(page_no) {
                return Err(DomainError::Unavailable("throttled".into()));
            }
            let start: usize = after.map_or(0, |c| c.as_str().parse().unwrap());
            let end = (start + self.page_size).min(self.rows.len());
            Ok(StuckPage {
                payments: self.rows[start..end]
                    .iter()
                    .filter(|(s, p)| *s == PaymentStatus::Confirmed && p.confirmed_at < cutoff)
                    .map(|(_, p)| p.clone())
                    .collect(),
                next: (end < self.rows.len()).then(|| ScanCursor::new(end.to_string())),
                read_units: 0.5,
            })
        }
    }

    /// The settlement queue: what was sent, and payments whose send fails.
    #[derive(Default)]
    struct Queue {
        sent: Mutex<Vec<SettlementMessage>>,
        refuse: Vec<PaymentId>,
    }

    impl SettlementQueue for Queue {
        async fn enqueue(&self, m: &SettlementMessage) -> Result<()> {
            if self.refuse.contains(&m.payment_id) {
                return Err(DomainError::Unavailable("sqs down".into()));
            }
            self.sent.lock().unwrap().push(m.clone());
            Ok(())
        }
    }

    impl Queue {
        fn sent_ids(&self) -> Vec<PaymentId> {
            self.sent
                .lock()
                .unwrap()
                .iter()
                .map(|m| m.payment_id.clone())
                .collect()
        }
    }

    const UNBOUNDED: SweepLimits = SweepLimits {
        max_pages: 1000,
        max_payments: 1000,
        stop_at: None,
    };

    #[tokio::test]
    async fn only_payments_confirmed_longer_than_the_threshold_are_sent_again() {
        use PaymentStatus::*;
        let rows = vec![
            row(Confirmed, Some(600), 1), // stuck: 10 minutes
            row(Confirmed, Some(60), 2),  // recent
            row(Pending, None, 3),
            row(Settled, Some(900), 4), // confirmed long ago, settled since
            row(Confirmed, Some(301), 5), // just past the threshold
            row(Confirmed, Some(300), 6), // exactly at it: not yet
            row(Declined, None, 7),
        ];
        let table = Table::new(rows.clone(), 3);
        let queue = Queue::default();
        let before = Timestamp::now();
        let summary = sweep(&table, &queue, NOW, 300, UNBOUNDED).await;
        assert_eq!(
            queue.sent_ids(),
            vec![rows[0].1.payment_id.clone(), rows[4].1.payment_id.clone()]
        );
        assert_eq!(
            (summary.found, summary.reenqueued, summary.failed),
            (2, 2, 0)
        );
        assert_eq!((summary.pages, summary.complete), (3, true));
        assert_eq!(summary.stopped, Stop::Complete);
        assert_eq!(summary.cutoff_ms, NOW.millis() - 300_000);
        assert!((summary.read_units - 1.5).abs() < 1e-9);
        // The message is the payment's own, as the confirmation sent it, sent now.
        let sent = queue.sent.lock().unwrap()[0].clone();
        let p = &rows[0].1;
        assert_eq!(
            (
                &sent.payment_id,
                &sent.merchant_id,
                &sent.unique_code,
                sent.amount,
                sent.currency
            ),
            (
                &p.payment_id,
                &p.merchant_id,
                &p.unique_code,
                p.amount,
                p.currency
            )
        );
        // Sent at the clock's time (its deduplication id on a FIFO queue is new).
        assert!(sent.sent_at_ms >= before.millis());
        assert!(summary.error().is_none());
    }

    #[tokio::test]
    async fn a_run_reads_at_most_its_pages_and_says_it_stopped_early() {
        let rows: Vec<_> = (0..10)
            .map(|n| row(PaymentStatus::Confirmed, Some(3600), n))
            .collect();
        let table = Table::new(rows, 2);
        let queue = Queue::default();
        let limits = SweepLimits {
            max_pages: 3,
            ..UNBOUNDED
        };
        let summary = sweep(&table, &queue, NOW, 300, limits).await;
        assert_eq!(
            (summary.pages, summary.found, summary.complete),
            (3, 6, false)
        );
        assert_eq!(summary.stopped, Stop::PageLimit);
        assert_eq!(*table.scans.lock().unwrap(), 3);
        // The last page is the limit: reading it all is complete, not stopped early.
        let table = Table::new(
            (0..6)
                .map(|n| row(PaymentStatus::Confirmed, Some(3600), n))
                .collect(),
            2,
        );
        let summary = sweep(&table, &Queue::default(), NOW, 300, limits).await;
        assert_eq!((summary.stopped, summary.complete), (Stop::Complete, true));
    }

    #[tokio::test]
    async fn a_run_sends_at_most_its_payments() {
        let rows: Vec<_> = (0..10)
            .map(|n| row(PaymentStatus::Confirmed, Some(3600), n))
            .collect();
        let ids: Vec<_> = rows.iter().map(|r| r.1.payment_id.clone()).collect();
        // The limit falls inside a page: the rest of that page waits for the next run.
        let queue = Queue::default();
        let limits = SweepLimits {
            max_payments: 5,
            ..UNBOUNDED
        };
        let summary = sweep(&Table::new(rows.clone(), 4), &queue, NOW, 300, limits).await;
        assert_eq!(queue.sent_ids(), ids[..5]);
        assert_eq!(
            (summary.found, summary.pages, summary.stopped),
            (5, 2, Stop::PaymentLimit)
        );
        // It falls at the end of a page that has a next one: no further page is read.
        let table = Table::new(rows.clone(), 5);
        let summary = sweep(&table, &Queue::default(), NOW, 300, limits).await;
        assert_eq!(
            (summary.found, summary.pages, summary.stopped),
            (5, 1, Stop::PaymentLimit)
        );
        // ...and at the end of the table, nothing was left: complete.
        let summary = sweep(
            &Table::new(rows[..5].to_vec(), 5),
            &Queue::default(),
            NOW,
            300,
            limits,
        )
        .await;
        assert_eq!(
            (summary.found, summary.stopped, summary.complete),
            (5, Stop::Complete, true)
        );
    }

    #[tokio::test]
    async fn nothing_starts_after_the_deadline() {
        let table = Table::new(vec![row(PaymentStatus::Confirmed, Some(3600), 1)], 2);
        let queue = Queue::default();
        let limits = SweepLimits {
            stop_at: Some(Timestamp::now().plus_seconds(-1)),
            ..UNBOUNDED
        };
        let summary = sweep(&table, &queue, NOW, 300, limits).await;
        assert_eq!(
            (summary.pages, summary.found, summary.stopped),
            (0, 0, Stop::TimeLimit)
        );
        assert!(queue.sent_ids().is_empty());
    }

    #[tokio::test]
    async fn a_message_that_cannot_be_sent_is_counted_and_the_others_still_go() {
        let rows: Vec<_> = (0..3)
            .map(|n| row(PaymentStatus::Confirmed, Some(3600), n))
            .collect();
        let queue = Queue {
            refuse: vec![rows[1].1.payment_id.clone()],
            ..Queue::default()
        };
        let summary = sweep(&Table::new(rows.clone(), 10), &queue, NOW, 300, UNBOUNDED).await;
        assert_eq!(
            (summary.found, summary.reenqueued, summary.failed),
            (3, 2, 1)
        );
        assert_eq!(
            queue.sent_ids(),
            vec![rows[0].1.payment_id.clone(), rows[2].1.payment_id.clone()]
        );
        assert!(summary.complete && summary.error().is_none());
        assert_eq!(
            summary.emf("sweeper", NOW)["StuckConfirmedNotReenqueued"],
            1
        );
    }

    #[tokio::test]
    async fn a_failed_scan_keeps_what_earlier_pages_sent_and_fails_the_run() {
        let rows: Vec<_> = (0..6)
            .map(|n| row(PaymentStatus::Confirmed, Some(3600), n))
            .collect();
        let mut table = Table::new(rows, 2);
        table.fail_at = Some(1);
        let queue = Queue::default();
        let summary = sweep(&table, &queue, NOW, 300, UNBOUNDED).await;
        assert_eq!(
            (summary.pages, summary.found, summary.complete),
            (1, 2, false)
        );
        assert!(matches!(summary.stopped, Stop::ScanFailed(_)));
        assert_eq!(queue.sent_ids().len(), 2);
        let e = summary.error().expect("the run fails");
        assert!(e.is_retryable(), "{e:?}");
    }

    #[test]
    fn the_metric_line_is_embedded_metric_format() {
        let summary = SweepSummary {
            found: 3,
            reenqueued: 3,
            failed: 0,
            pages: 2,
            read_units: 1.0,
            complete: false,
            stopped: Stop::PageLimit,
            cutoff_ms: 0,
        };
        let line = summary.emf("twochan-sweeper", NOW);
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(line["_aws"]["Timestamp"], NOW.millis());
        assert_eq!(directive["Namespace"], "Twochan");
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([["FunctionName"]])
        );
        // Every metric and dimension it names is a member of the line, with a value.
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(line[name].is_number(), "{name} missing from {line}");
            assert_eq!(metric["Unit"], "Count");
        }
        assert_eq!(line["FunctionName"], "twochan-sweeper");
        assert_eq!(line["StuckConfirmedFound"], 3);
        assert_eq!(line["SweepIncomplete"], 1);
        // One line: CloudWatch Logs reads a log event as one JSON object.
        assert!(!line.to_string().contains('\n'));
    }

    #[tokio::test]
    async fn one_log_line_per_payment_names_it_never_the_code() {
        let (captured, _guard) = CapturedLogs::capture();
        let rows = vec![
            row(PaymentStatus::Confirmed, Some(600), 1),
            row(PaymentStatus::Confirmed, Some(7200), 2),
        ];
        sweep(
            &Table::new(rows.clone(), 10),
            &Queue::default(),
            NOW,
            300,
            UNBOUNDED,
        )
        .await;
        let text = captured.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &serde_json::Value| l["fields"]["outcome"] == "stuck_confirmed")
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for (line, (_, p)) in lines.iter().zip(&rows) {
            let f = &line["fields"];
            assert_eq!(f["payment_id"], p.payment_id.as_str());
            assert_eq!(f["merchant_id"], p.merchant_id.as_str());
            assert_eq!(f["confirmed_for_seconds"], p.confirmed_for_seconds(NOW));
            assert_eq!(f["reenqueued"], true);
        }
        assert_eq!(lines[0]["fields"]["confirmed_for_seconds"], 600);
        for (_, p) in &rows {
            assert!(
                !text.contains(p.unique_code.as_str()),
                "the code leaked: {text}"
            );
        }
    }
}

//! Logging: JSON lines on stdout (CloudWatch picks them up), filter from `RUST_LOG`.
//!
//! Each line carries its span's fields: `route`, `request_id`, and once known `payment_id` and
//! `unique_code_hash` (never the code itself); outcome lines add `outcome`. Secrets (keys, tokens,
//! auth codes) never reach a log line: their types redact themselves in `Debug`.

use tracing_subscriber::{filter::Targets, fmt::MakeWriter, layer::SubscriberExt};

/// Installs the global subscriber once, at init.
pub fn init() {
    // Tests and tools may have installed one already; theirs stays.
    let _ = tracing::subscriber::set_global_default(subscriber(std::io::stdout));
}

/// The functions' log format, writing to `writer` (stdout in a function; a buffer in tests).
pub fn subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .with_writer(writer)
        .finish()
        .with(filter(std::env::var("RUST_LOG").ok().as_deref()))
}

/// The test sink for [`subscriber`]: what it is handed, kept in memory and shared by its clones,
/// so a test can hand one clone to the subscriber and read the lines through another.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// The functions' log lines written on this thread from now until the guard drops, in a
    /// test beside others that log without a subscriber. While a scoped subscriber is the only
    /// one, `tracing` decides whether a callsite is enabled by the subscriber of whichever thread
    /// meets it first, so a span first met by another test would be off for this one too: a
    /// global subscriber writing nowhere, installed once, keeps every callsite decided by one
    /// that wants it.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        static ANCHOR: std::sync::Once = std::sync::Once::new();
        ANCHOR.call_once(|| {
            // A global subscriber of the test binary's own stays, and anchors as well.
            let _ = tracing::subscriber::set_global_default(subscriber(std::io::sink));
        });
        let captured = Self::default();
        let sink = captured.clone();
        let guard = tracing::subscriber::set_default(subscriber(move || sink.clone()));
        tracing::callsite::rebuild_interest_cache();
        (captured, guard)
    }

    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("log lines are UTF-8")
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `RUST_LOG` as `target=level` directives and a default level (`info`, `twochan_api=debug,warn`).
/// `Targets` rather than `EnvFilter`: no span-field or regex directives, which nobody here uses,
/// and no regex engine in every bootstrap (docs/PERFORMANCE.md, size). Unparsable: `info`.
fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

/// The CloudWatch namespace of the functions' own metrics.
pub const METRIC_NAMESPACE: &str = "Twochan";

/// One metric of an EMF line: its name, its CloudWatch unit, and a value (a number, or an array
/// of up to 100 numbers for several samples).
pub type Metric<'a> = (&'a str, &'a str, serde_json::Value);

/// A CloudWatch Embedded Metric Format line (namespace [`METRIC_NAMESPACE`], dimension
/// `FunctionName`): CloudWatch Logs turns it into metrics, so no API call is made, nothing can
/// fail, and the alarms and the dashboard read them like any metric.
pub fn emf_line(function: &str, at_ms: i64, metrics: &[Metric<'_>]) -> serde_json::Value {
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": at_ms,
            "CloudWatchMetrics": [{
                "Namespace": METRIC_NAMESPACE,
                "Dimensions": [["FunctionName"]],
                "Metrics": metrics
                    .iter()
                    .map(|(name, unit, _)| serde_json::json!({"Name": name, "Unit": unit}))
                    .collect::<Vec<_>>(),
            }],
        },
        "FunctionName": function,
    });
    for (name, _, value) in metrics {
        line[*name] = value.clone();
    }
    line
}

/// Writes an EMF line for this function (`AWS_LAMBDA_FUNCTION_NAME`) to stdout, beside the logs.
/// Outside a Lambda runtime (the handlers run in-process by tests) there is no log group to turn
/// the line into a metric, so nothing is written.
pub fn emit(metrics: &[Metric<'_>]) {
    let Ok(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") else {
        return;
    };
    if metrics.is_empty() {
        return;
    }
    let now = twochan_domain::Timestamp::now().millis();
    println!("{}", emf_line(&function, now, metrics));
}

/// One more of a payment event: `PaymentsRequested`, `PaymentsConfirmed`, `PaymentsFailed`,
/// `PaymentsDeclined`, `PaymentsCanceled` (settlement writes `PaymentsSettled` with its latencies).
pub fn count(metric: &str) {
    emit(&[(metric, "Count", 1.into())]);
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::{emf_line, filter};

    #[test]
    fn an_emf_line_declares_each_metric_and_carries_its_value() {
        let line = emf_line(
            "twochan-settlement",
            1_700_000_000_000,
            &[
                ("PaymentsSettled", "Count", 3.into()),
                (
                    "ConfirmToSettleLatency",
                    "Milliseconds",
                    serde_json::json!([12, 40, 7]),
                ),
            ],
        );
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Twochan");
        assert_eq!(directive["Dimensions"][0][0], "FunctionName");
        assert_eq!(directive["Metrics"][1]["Name"], "ConfirmToSettleLatency");
        assert_eq!(directive["Metrics"][1]["Unit"], "Milliseconds");
        assert_eq!(line["_aws"]["Timestamp"], 1_700_000_000_000_i64);
        assert_eq!(line["FunctionName"], "twochan-settlement");
        assert_eq!(line["PaymentsSettled"], 3);
        assert_eq!(line["ConfirmToSettleLatency"][1], 40);
    }

    #[test]
    fn rust_log_sets_the_levels() {
        assert!(filter(None).would_enable("twochan_api", &Level::INFO));
        assert!(!filter(None).would_enable("twochan_api", &Level::DEBUG));
        let f = filter(Some("twochan_api=debug,warn"));
        assert!(f.would_enable("twochan_api::routes", &Level::DEBUG));
        assert!(!f.would_enable("aws_smithy_runtime", &Level::INFO));
        assert!(f.would_enable("aws_smithy_runtime", &Level::WARN));
        assert!(filter(Some("x=loud")).would_enable("y", &Level::INFO));
    }
}

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

/// `RUST_LOG` as `target=level` directives and a default level (`info`, `twochan_api=debug,warn`).
/// `Targets` rather than `EnvFilter`: no span-field or regex directives, which nobody here uses,
/// and no regex engine in every bootstrap (docs/PERFORMANCE.md, size). Unparsable: `info`.
fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::filter;

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

//! Logging: JSON lines on stdout (CloudWatch picks them up), filter from `RUST_LOG`.
//!
//! Each line carries its span's fields: `route`, `request_id`, and once known `payment_id` and
//! `unique_code_hash` (never the code itself); outcome lines add `outcome`. Secrets (keys, tokens,
//! auth codes) never reach a log line: their types redact themselves in `Debug`.

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .with_writer(writer)
        .finish()
}

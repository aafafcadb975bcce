//! Logging: JSON lines on stdout (CloudWatch picks them up), filter from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once, at init.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init`: tests and tools may have installed one already.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

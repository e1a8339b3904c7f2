//! Telemetry. For now: human-readable logs on stderr (stdout stays empty: it may be a pipe
//! someone parses) and the built-in sanitiser. OTLP export, spans and metrics hang off here.

pub mod sanitize;

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the stderr logger; `RUST_LOG` / `ACPD_LOG` choose the level (default `info`).
pub fn init_logging() {
    let filter = std::env::var("ACPD_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

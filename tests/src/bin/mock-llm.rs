//! The tests' mock LLM as a standalone server for manual use:
//! `cargo run -p acpd-tests --bin mock-llm -- [port]` (default: any free port) prints
//! `READY <port>` on stdout once listening on 127.0.0.1. Settings from `MOCK_SCENARIO`,
//! `MOCK_TEXT`, `MOCK_TOOL_PATH`, `MOCK_WRITE_PATH`, `MOCK_WRITE_CONTENT`, `MOCK_SLOW_SECONDS`,
//! `MOCK_ERROR_STATUS`; each request is appended as a JSON line to `MOCK_LOG` when set; it stops
//! by itself after `MOCK_MAX_SECONDS` (default 1800). See `acpd_tests::mock_llm`.

use acpd_tests::mock_llm::{MockConfig, MockLlm};
use anyhow::Context;
use std::io::Write;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().context("port")?,
        None => 0,
    };
    let max_secs: f64 = match std::env::var("MOCK_MAX_SECONDS") {
        Ok(v) if !v.is_empty() => v.parse().context("MOCK_MAX_SECONDS")?,
        _ => 1800.0,
    };
    let log = std::env::var_os("MOCK_LOG").map(std::path::PathBuf::from);
    let mock = MockLlm::serve(MockConfig::from_env()?, port, log).await?;
    println!("READY {}", mock.port());
    std::io::stdout().flush()?;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(max_secs)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

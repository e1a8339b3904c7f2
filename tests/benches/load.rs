//! The load harness in full (see `acpd_tests::load` and BENCHMARKS.md):
//! `cargo bench -p acpd-tests --bench load`. `ACPD_LOAD_SHORT=1` runs the CI-sized pass.

use acpd_tests::load::{Opts, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let short = std::env::var_os("ACPD_LOAD_SHORT").is_some();
    run(if short { Opts::SHORT } else { Opts::FULL }).await?;
    Ok(())
}

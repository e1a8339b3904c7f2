//! The load harness in full (see `acpd_tests::load` and BENCHMARKS.md):
//! `cargo bench -p acpd-tests --bench load`. `ACPD_LOAD_SHORT=1` runs the CI-sized pass.
//! The `responsive` section (see `acpd_tests::responsive`) runs only on its own,
//! `ACPD_LOAD_ONLY=responsive`: its daemons' agents burn the machine's CPU.

use acpd_tests::load::{Opts, run};

fn main() -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    // `ACPD_LOAD_CLIENT_RT=1`: the harness's threads (its clients, and the floor's server) run
    // `SCHED_RR` 1, so its own wake-ups do not wait for a core behind other work, as the
    // responsive section's real-time client; what they start (the daemons) starts fair
    // (`SCHED_RESET_ON_FORK`) and sets its own policy. Where not permitted it says so.
    if std::env::var_os("ACPD_LOAD_CLIENT_RT").is_some() {
        let rr = || acpd_tests::set_thread_realtime(true);
        if !rr() {
            println!("client real-time: not permitted to this user, ran without");
        } else {
            println!("client real-time: the harness's threads run SCHED_RR 1");
        }
        rt.on_thread_start(move || {
            rr();
        });
    }
    rt.build()?.block_on(run_main())
}

async fn run_main() -> anyhow::Result<()> {
    let short = std::env::var_os("ACPD_LOAD_SHORT").is_some();
    if std::env::var("ACPD_LOAD_ONLY").is_ok_and(|only| only.trim() == "responsive") {
        use acpd_tests::responsive::{Case, Client, Opts, section};
        let o = if short { Opts::SHORT } else { Opts::FULL };
        // `ACPD_RESPONSIVE_NICE`: another niceness for the nicer case than the default.
        let nice = std::env::var("ACPD_RESPONSIVE_NICE")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(acpd::config::DEFAULT_AGENT_NICE);
        // `ACPD_RESPONSIVE_SLICE_US`: another daemon CPU slice than the default.
        let slice = std::env::var("ACPD_RESPONSIVE_SLICE_US")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(acpd::config::ServerConfig::default().cpu_slice_us);
        // Real-time priority: the default's (`server.realtime_priority`) where the user may.
        let defaults = acpd::config::ServerConfig::default();
        let defaults = Case {
            burn: 0,
            nice,
            slice_us: slice,
            realtime: defaults.realtime_priority,
            client: Client::Fair,
        };
        section(&o, defaults).await?;
        return Ok(());
    }
    let mut o = if short { Opts::SHORT } else { Opts::FULL };
    // `ACPD_SOAK_PROMPTS`: a longer (or shorter) soak than the default 100,000 prompts, RSS still
    // read after each tenth; a value that is not a count of at least 10 is refused, not ignored.
    if let Ok(n) = std::env::var("ACPD_SOAK_PROMPTS") {
        o.soak_prompts = n
            .trim()
            .parse()
            .ok()
            .filter(|&n: &usize| n >= 10)
            .ok_or_else(|| anyhow::anyhow!("ACPD_SOAK_PROMPTS: {n:?} is not a count >= 10"))?;
    }
    run(o).await?;
    Ok(())
}

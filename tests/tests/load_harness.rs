//! The load harness's short mode: every measurement runs end to end and loses nothing (each
//! step checks its own counts). Speed is not asserted here; `cargo bench --bench load` measures.

use acpd_tests::load::{Opts, Target, Telemetry, run, soak};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_measurement_runs_in_short_mode() {
    let report = run(Opts::SHORT).await.expect("load harness");
    for part in [
        "floor:",
        "overhead @ 1 sessions",
        "admission prompts/s",
        "GET /health req/s",
        "fan-out 1 session x N subscribers",
        "fan-out N sessions x 1 subscriber",
        "RSS MiB (on + plugins)",
        "anon / file MiB (on + plugins)",
        "allocations (on + plugins)",
        "export (on + plugins)",
        "export overload",
        "gateway (on + plugins, alone)",
        "gateway drops",
        "gateway admission",
        "start-up exec -> first /health 200 (no plugins)",
        "journal admission POST->202",
        "journal @16 sessions, to client",
        "journal restart with 20 journaled sessions",
    ] {
        assert!(
            report.text.contains(part),
            "no {part:?} in:\n{}",
            report.text
        );
    }
}

/// The soak section's readings (it runs only when named: 100,000 prompts in full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_reads_rss_every_tenth() {
    let t = Target::start_sink(Telemetry::OnPlugins)
        .await
        .expect("daemon");
    let points = soak(&t, 64, 16).await.expect("soak");
    assert_eq!(
        points.iter().map(|p| p.prompts).collect::<Vec<_>>(),
        [0, 16, 32, 48, 64]
    );
    assert!(
        points
            .iter()
            .all(|p| p.rss_kib >= p.anon_kib && p.anon_kib > 0)
    );
}

//! The load harness's short mode: every measurement runs end to end and loses nothing (each
//! step checks its own counts). Speed is not asserted here; `cargo bench --bench load` measures.

use acpd_tests::load::{Opts, Target, Telemetry, hot_list_verdict, run, soak};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_measurement_runs_in_short_mode() {
    let report = run(Opts::SHORT).await.expect("load harness");
    for part in [
        "floor:",
        "floor paced as the 16-session row (",
        "): POST -> read p50/p99 ",
        "overhead @ 1 sessions",
        "(its read ",
        "CPU/turn daemon ",
        "admission prompts/s",
        "until all completed: ",
        "GET /health req/s",
        "fan-out 1 session x N subscribers",
        "fan-out N sessions x 1 subscriber",
        "hot-function list: ",
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

/// The memory figures' staleness line: current while the build defines at least 99 % of the
/// list's names its kind of build defined when the list was made, stale below.
#[test]
fn the_hot_list_is_stale_when_the_build_lost_its_names() {
    let list = (0..200)
        .map(|i| format!("_ZN4acpd1f{i}\n"))
        .collect::<String>();
    let made = "# comment\nrelease 100\nalloc-count 200\n";
    let nm = |n: usize| {
        (0..n)
            .map(|i| format!("0000000000001000 t _ZN4acpd1f{i}\n"))
            .chain(["0000000000002000 d _ZN4acpd1f199\n".to_string()])
            .collect::<String>()
    };
    let got = hot_list_verdict(&list, made, &nm(200), "alloc-count").unwrap();
    assert_eq!(
        got,
        "hot-function list: 200 of its 200 names in this build, 200 when it was made: current"
    );
    // 198 of 200 is 99 %: current; 197 is not. A data symbol of the same name does not count.
    assert!(
        hot_list_verdict(&list, made, &nm(198), "alloc-count")
            .unwrap()
            .ends_with("current")
    );
    let stale = hot_list_verdict(&list, made, &nm(197), "alloc-count").unwrap();
    assert!(
        stale.contains("197 of its 200") && stale.contains("STALE"),
        "{stale}"
    );
    // The plain release build is compared with its own count.
    assert!(
        hot_list_verdict(&list, made, &nm(100), "release")
            .unwrap()
            .ends_with("current")
    );
    assert!(hot_list_verdict(&list, made, &nm(100), "debug").is_err());
}

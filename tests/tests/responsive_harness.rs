//! The responsive-under-agent-load section of the load harness, in its short mode: agents that
//! burn CPU (`ACPD_DEMO_BURN`) at the daemon's priority and slice, and at the defaults
//! (`agent.nice`, `server.cpu_slice_us`, `server.realtime_priority`). Asserts
//! that every probe is answered, every admitted turn completes and the agents got CPU; the
//! figures themselves are for `cargo bench` (BENCHMARKS.md).

use acpd_tests::responsive::{Case, Client, Opts, run_case};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burning_agents_leave_admission_and_health_answering() {
    let o = Opts::SHORT;
    let server = acpd::config::ServerConfig::default();
    let defaults = (
        acpd::config::DEFAULT_AGENT_NICE,
        server.cpu_slice_us,
        server.realtime_priority,
    );
    for (client, (nice, slice_us, realtime)) in [
        (Client::Fair, (0, 0, 0)),
        (Client::Fair, defaults),
        (Client::RealTime, defaults),
    ] {
        let r = run_case(
            Case {
                burn: o.burn,
                nice,
                slice_us,
                realtime,
                client,
            },
            &o,
        )
        .await
        .unwrap();
        assert!(!r.admission.is_empty() && !r.health.is_empty(), "{r:?}");
        // The agents burned: they were scheduled at all, whatever their niceness.
        assert!(
            r.agent_cores > 0.0,
            "nice {nice}: the agents got no CPU: {r:?}"
        );
    }
}

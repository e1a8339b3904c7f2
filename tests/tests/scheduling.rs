//! The daemon's scheduling, as the kernel sees it (`/proc`): where the user may, the threads
//! that serve requests run real-time (`server.realtime_priority`) so a burning agent cannot
//! hold them back until the kernel's tick; the agents never do, and run `agent.nice` nicer.
//! The figures that chose this are the responsive section of the load harness.

use acpd_tests::responsive::realtime_threads;
use acpd_tests::{Daemon, eventually, set_thread_realtime, thread_stats};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Whether this user may run a thread real-time (tried on a thread of its own, which ends).
fn realtime_permitted() -> bool {
    std::thread::spawn(|| set_thread_realtime(false))
        .join()
        .unwrap()
}

/// Every thread of the agent `pid`: fair, at the daemon's niceness (0) + `agent.nice` (10).
fn assert_agent_fair(pid: u32) {
    let threads = thread_stats(pid);
    assert!(!threads.is_empty(), "agent {pid} is gone");
    for t in &threads {
        assert_eq!((t.policy(), t.field(19)), ("0", "10"), "agent thread {t:?}");
    }
}

#[tokio::test]
async fn serving_threads_run_real_time_and_agents_never_do() {
    if !realtime_permitted() {
        println!(
            "skipped: this user may not use a real-time policy (no CAP_SYS_NICE or RLIMIT_RTPRIO)"
        );
        return;
    }
    let d = Daemon::start().await.unwrap();
    let s = d.create_session().await.unwrap();
    let r = d.prompt(&s, "hello").await.unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);
    let agent = d.child_pid(&s).await.unwrap();

    // The main thread (it accepts connections) and the runtime's workers: SCHED_RR (2) at
    // priority 1 (field 40); the plugins' epoch ticker one above them, so that it can stop a
    // guest that loops on a worker; the export threads and the spawner, started from them,
    // fair (0).
    let threads = thread_stats(d.pid());
    assert!(
        threads.iter().any(|t| t.comm == "acpd-plugin-epo"),
        "{threads:?}"
    );
    for t in &threads {
        let want = if t.comm == "acpd" || t.comm.starts_with("tokio-") {
            ("2", "1")
        } else if t.comm == "acpd-plugin-epo" {
            ("2", "2")
        } else {
            ("0", "0")
        };
        assert_eq!((t.policy(), t.field(40)), want, "daemon thread {t:?}");
    }
    assert!(realtime_threads(d.pid()).unwrap() >= 2, "{threads:?}");
    assert_agent_fair(agent);
}

#[tokio::test]
async fn real_time_off_leaves_every_thread_fair() {
    let d = Daemon::builder()
        .config("[server]\nrealtime_priority = 0\n")
        .start()
        .await
        .unwrap();
    let s = d.create_session().await.unwrap();
    let agent = d.child_pid(&s).await.unwrap();
    assert_eq!(realtime_threads(d.pid()).unwrap(), 0);
    assert_eq!(realtime_threads(agent).unwrap(), 0);
}

/// The runtime has `server.worker_threads` workers (`ACPD_WORKER_THREADS`): one per CPU by
/// default, as many as configured otherwise; deep `/health` says how many, and a turn runs on
/// any count (BENCHMARKS.md, "Round eighteen", has what one worker costs and saves).
#[tokio::test]
async fn the_runtime_has_the_configured_workers() {
    // tokio's own default: `TOKIO_WORKER_THREADS`, else the CPUs this process may use.
    let per_cpu = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cases: [(&str, Option<&str>, usize); 3] = [
        ("", None, per_cpu),
        ("[server]\nworker_threads = 3\n", None, 3),
        ("[server]\nworker_threads = 3\n", Some("1"), 1),
    ];
    for (config, env, want) in cases {
        let mut b = Daemon::builder().config(config);
        if let Some(n) = env {
            b = b.env("ACPD_WORKER_THREADS", n);
        }
        let d = b.start().await.unwrap();
        let health = d.get("/health?deep=1").await.unwrap();
        assert_eq!(health.status, 200, "{:?}", health.body);
        assert_eq!(
            health.body["workers"], want,
            "{config:?} {env:?}: {:?}",
            health.body
        );
        let s = d.create_session().await.unwrap();
        let mut sse = d.events(&s, None, None).await.unwrap();
        let (_, frames) = d.turn(&s, &mut sse, "hello").await.unwrap();
        assert_eq!(frames.last().unwrap().event, "turn_complete", "{config:?}");
    }
}

/// The main thread's policy (its tid is the pid): "2" real-time round robin, "0" fair.
fn main_policy(pid: u32) -> String {
    thread_stats(pid)
        .iter()
        .find(|t| t.tid == pid)
        .map(|t| t.policy().to_string())
        .unwrap_or_default()
}

/// Under a load that takes more than half a core the serving threads go fair (so a local
/// client and the agents get their share and requests batch); once the load is light again
/// the next request brings them back to real time. `/metrics` says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_load_makes_serving_threads_fair_until_it_passes() {
    if !realtime_permitted() {
        println!(
            "skipped: this user may not use a real-time policy (no CAP_SYS_NICE or RLIMIT_RTPRIO)"
        );
        return;
    }
    let d = Arc::new(Daemon::start().await.unwrap());
    assert_eq!(main_policy(d.pid()), "2");
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..6 {
        let (d, stop) = (d.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let url = d.url("/health");
            while !stop.load(Ordering::Relaxed) {
                d.http
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
            }
        }));
    }
    let pid = d.pid();
    let went_fair = eventually(Duration::from_secs(20), || main_policy(pid) == "0").await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(went_fair, "the serving threads stayed real-time under load");
    let metrics = d.metrics_text().await.unwrap();
    assert!(
        acpd_tests::metric_total(&metrics, "acpd_sched_demotions_total", &[]) >= 1.0,
        "{metrics}"
    );
    // Quiet again: a request after a light window brings real time back.
    let back = {
        let d = d.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            d.get("/health").await.unwrap();
            if main_policy(pid) == "2" {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(back, "the serving threads did not return to real time");
}

/// An operator may start the daemon real-time themselves (`chrt`): the daemon then keeps its
/// policy, but its agents still start fair, at `agent.nice`. The daemon is started here from
/// a thread that runs real-time (without reset-on-fork), as `chrt` would start it.
#[test]
fn a_daemon_started_real_time_still_starts_its_agents_fair() {
    if !realtime_permitted() {
        println!(
            "skipped: this user may not use a real-time policy (no CAP_SYS_NICE or RLIMIT_RTPRIO)"
        );
        return;
    }
    std::thread::spawn(|| {
        // Without reset-on-fork, as `chrt` starts a command; the thread ends with the test.
        assert!(set_thread_realtime(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = Daemon::start().await.unwrap();
            assert_eq!(
                main_policy(d.pid()),
                "2",
                "the daemon did not inherit the policy"
            );
            let s = d.create_session().await.unwrap();
            let agent = d.child_pid(&s).await.unwrap();
            assert_agent_fair(agent);
        });
    })
    .join()
    .unwrap();
}

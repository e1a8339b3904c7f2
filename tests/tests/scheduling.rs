//! The daemon's scheduling, as the kernel sees it (`/proc`): where the user may, the threads
//! that serve requests run real-time (`server.realtime_priority`) so a burning agent cannot
//! hold them back until the kernel's tick; the agents never do, and run `agent.nice` nicer.
//! The figures that chose this are the responsive section of the load harness.

use acpd_tests::responsive::realtime_threads;
use acpd_tests::{Daemon, eventually};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Field `n` (1-based, as proc(5) counts) of `/proc/<pid>/task/<tid>/stat` for every thread.
fn thread_fields(pid: u32, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(t.unwrap().path().join("stat")) else {
            continue;
        };
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let comm = head.split_once('(').unwrap().1.to_string();
        let field = rest.split_whitespace().nth(n - 3).unwrap().to_string();
        out.push((comm, field));
    }
    out
}

/// Whether this user may run a thread real-time (tried on a thread of its own, which ends).
fn realtime_permitted() -> bool {
    std::thread::spawn(|| {
        let p = nix::libc::sched_param { sched_priority: 1 };
        // SAFETY: sets the calling thread's policy; the kernel reads `p`, which lives here.
        unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_RR, &p) == 0 }
    })
    .join()
    .unwrap()
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
    let policies = thread_fields(d.pid(), 41);
    let priorities = thread_fields(d.pid(), 40);
    assert!(
        policies.iter().any(|(c, _)| c == "acpd-plugin-epo"),
        "{policies:?}"
    );
    for ((comm, policy), (_, prio)) in policies.iter().zip(&priorities) {
        let (want_policy, want_prio) = if comm == "acpd" || comm.starts_with("tokio-") {
            ("2", "1")
        } else if comm == "acpd-plugin-epo" {
            ("2", "2")
        } else {
            ("0", "0")
        };
        assert_eq!(
            (policy.as_str(), prio.as_str()),
            (want_policy, want_prio),
            "daemon thread {comm}: {policies:?}"
        );
    }
    assert!(realtime_threads(d.pid()).unwrap() >= 2, "{policies:?}");

    // Every thread of the agent: fair, at the daemon's niceness (0) + agent.nice (10).
    for (comm, policy) in thread_fields(agent, 41) {
        assert_eq!(policy, "0", "agent thread {comm}");
    }
    for (comm, nice) in thread_fields(agent, 19) {
        assert_eq!(nice, "10", "agent thread {comm}");
    }
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

/// The main thread's policy (its tid is the pid): "2" real-time round robin, "0" fair.
fn main_policy(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(41 - 3).unwrap().to_string()
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
        let p = nix::libc::sched_param { sched_priority: 1 };
        // SAFETY: sets this thread's policy; the kernel reads `p`, which lives here. The thread
        // ends with the test.
        assert_eq!(
            unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_RR, &p) },
            0
        );
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
            for (comm, policy) in thread_fields(agent, 41) {
                assert_eq!(policy, "0", "agent thread {comm}");
            }
            for (comm, nice) in thread_fields(agent, 19) {
                assert_eq!(nice, "10", "agent thread {comm}");
            }
        });
    })
    .join()
    .unwrap();
}

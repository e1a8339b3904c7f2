//! Responsive under agent load: the daemon's control plane (prompt admission, `/health`) while
//! every session's agent burns CPU between and during turns, as real agents do (the demo
//! agent's `ACPD_DEMO_BURN`), with the agents at the daemon's priority and at `agent.nice`.
//! It also reads how much CPU the agents got, so that a priority that keeps the daemon
//! responsive is seen not to starve the agents' own work.
//!
//! Run with `ACPD_LOAD_ONLY=responsive cargo bench -p acpd-tests --bench load`; the
//! `responsive_harness` test runs the short mode (it asserts that every probe is answered and
//! every admitted turn completes, never how fast).

use crate::load::{cpu_time, pct, rss_kib};
use crate::otlp::{Protocol, Receiver};
use crate::{Daemon, SessionRef, Sse};
use anyhow::{Result, anyhow, bail, ensure};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One probe of each kind this often while the agents burn.
const EVERY: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// Sessions, each with its own agent child.
    pub sessions: usize,
    /// Share of one core each agent burns (percent), in the loaded cases.
    pub burn: u32,
    /// How long probes are timed, per case.
    pub secs: f64,
    /// Each case runs this often, interleaved, so the spread shows.
    pub repeats: usize,
}

impl Opts {
    /// Four agents at 50 % each ask for both cores of the machine.
    pub const FULL: Opts = Opts {
        sessions: 4,
        burn: 50,
        secs: 8.0,
        repeats: 2,
    };
    pub const SHORT: Opts = Opts {
        sessions: 2,
        burn: 20,
        secs: 1.0,
        repeats: 1,
    };
}

/// One case: the agents' burn and niceness, the daemon's CPU slice (`server.cpu_slice_us`,
/// 0: the kernel's default) and its threads' real-time priority (`server.realtime_priority`,
/// 0: off; the daemon applies it only where its user may, see [`Run::realtime_threads`]).
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub burn: u32,
    pub nice: i32,
    pub slice_us: u64,
    pub realtime: u8,
    pub client: Client,
}

/// The probing client. On a kernel that preempts at its tick, a client sharing the cores with
/// burning agents at a fair policy waits for a core after each of its own wake-ups (the timer,
/// the response) as long as the daemon would; a real-time client measures the daemon alone, as
/// a client on another machine, or one the machine favours, would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// On the harness's runtime, at the harness's policy.
    Fair,
    /// On a thread of its own at `SCHED_RR` 1 (where this user may; the table says if not).
    RealTime,
}

impl Case {
    pub fn label(self) -> String {
        let slice = match self.slice_us {
            0 => "kernel's slice".to_string(),
            us => format!("slice {us} µs"),
        };
        let slice = match self.realtime {
            0 => slice,
            p => format!("{slice}, real-time {p}"),
        };
        let slice = match self.client {
            Client::Fair => slice,
            Client::RealTime => format!("{slice}; client real-time"),
        };
        if self.burn == 0 {
            format!("idle agents, nice {}, {slice}", self.nice)
        } else {
            format!("agents burn {} %, nice {}, {slice}", self.burn, self.nice)
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Run {
    /// Admission (POST prompt -> 202) latencies, ns, sorted.
    pub admission: Vec<u64>,
    /// `GET /health` latencies, ns, sorted.
    pub health: Vec<u64>,
    /// CPU the agents got during the timed window, in cores (sum over the agents).
    pub agent_cores: f64,
    /// CPU the daemon used during the window, in cores.
    pub daemon_cores: f64,
    pub daemon_rss_mib: f64,
    /// The probing client did run real-time (asked for with [`Client::RealTime`]).
    pub client_realtime: bool,
    /// The daemon's threads of a real-time policy, read from `/proc` during the window: 0 where
    /// the case asked for one but the user may not have it.
    pub realtime_threads: usize,
}

/// How many of `pid`'s threads run a real-time policy (`SCHED_FIFO` or `SCHED_RR`); an error
/// once the process is gone, so that "none" is never read off a process that is not there.
pub fn realtime_threads(pid: u32) -> Result<usize> {
    let threads = crate::thread_stats(pid);
    anyhow::ensure!(!threads.is_empty(), "process {pid} is gone");
    Ok(threads
        .iter()
        .filter(|t| matches!(t.policy(), "1" | "2"))
        .count())
}

/// Telemetry and the default plugins on (to a sink that answers without decoding), one agent
/// child per session, limits out of the way.
async fn daemon(case: Case, rx: &Receiver) -> Result<Daemon> {
    let config = format!(
        "[limits]\nmax_sessions = 512\nmax_sessions_per_workspace = 512\n\
         max_pending_prompts_per_session = 1000000\nevent_ring = 256\n\
         [server]\ncpu_slice_us = {}\nrealtime_priority = {}\n\
         [agent]\nscope = \"session\"\nnice = {}\n\
         [agent.env]\nOTEL_SDK_DISABLED = \"true\"\nACPD_DEMO_BURN = \"{}\"\n",
        case.slice_us, case.realtime, case.nice, case.burn
    );
    crate::load::bench_daemon()
        .config(&config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .start()
        .await
}

/// Drains a session's stream, counting completed turns, until it fails or is aborted.
fn drain(mut sse: Sse, done: Arc<AtomicUsize>) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        while let Some(f) = sse.next_within(Duration::from_secs(3600)).await? {
            match f.event.as_str() {
                "turn_complete" => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                "turn_error" | "client_evicted" => bail!("{}: {}", f.event, f.data),
                _ => {}
            }
        }
        Err(anyhow!("the event stream ended"))
    })
}

/// Probes `GET /health` every [`EVERY`] until `end`: latencies in ns.
async fn health_probes(d: Arc<Daemon>, http: reqwest::Client, end: Instant) -> Result<Vec<u64>> {
    let url = d.url("/health");
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lat = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        let r = http.get(&url).send().await?;
        let status = r.status();
        r.bytes().await?;
        ensure!(status == 200, "health -> {status}");
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(lat)
}

/// Admits a `bench 2` prompt every [`EVERY`], round robin over `sessions`, until `end`.
async fn admission_probes(
    d: Arc<Daemon>,
    http: reqwest::Client,
    sessions: Vec<SessionRef>,
    end: Instant,
) -> Result<Vec<u64>> {
    let body = json!({"prompt": [{"type": "text", "text": "bench 2"}]});
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lat = Vec::new();
    for s in sessions.iter().cycle() {
        if Instant::now() >= end {
            break;
        }
        tick.tick().await;
        let t0 = Instant::now();
        let r = http
            .post(d.url(&format!("/session/{}/prompt", s.id)))
            .header("X-Qwen-Client-Id", &s.client_id)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        r.bytes().await?;
        ensure!(status == 202, "admission -> {status}");
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(lat)
}

/// Both kinds of probe on a thread of their own (its own runtime and HTTP connections) at
/// `SCHED_RR` 1, where this user may; the last value says whether it was.
async fn realtime_probes(
    d: Arc<Daemon>,
    sessions: Vec<SessionRef>,
    end: Instant,
) -> Result<(Vec<u64>, Vec<u64>, bool)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("probe-client".into())
        .spawn(move || {
            // The thread ends with the probes, so nothing else runs at this priority.
            let applied = crate::set_thread_realtime(false);
            let run = || -> Result<(Vec<u64>, Vec<u64>)> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()?;
                    let (a, h) = tokio::join!(
                        admission_probes(d.clone(), http.clone(), sessions, end),
                        health_probes(d, http, end)
                    );
                    Ok((a?, h?))
                })
            };
            let _ = tx.send(run().map(|(a, h)| (a, h, applied)));
        })?;
    rx.await?
}

/// One case, one daemon: sessions whose agents burn, then probes timed for `o.secs` while the
/// agents' and the daemon's CPU is read around the window.
pub async fn run_case(case: Case, o: &Opts) -> Result<Run> {
    let rx = Receiver::start_sink(Protocol::HttpProtobuf).await?;
    let d = Arc::new(daemon(case, &rx).await?);
    let done = Arc::new(AtomicUsize::new(0));
    let mut sessions = Vec::new();
    let mut drains = Vec::new();
    let mut agents = Vec::new();
    for _ in 0..o.sessions {
        let s = d.create_session().await?;
        let sse = d.events(&s, None, None).await?;
        drains.push(drain(sse, done.clone()));
        agents.push(d.child_pid(&s).await?);
        sessions.push(s);
    }
    // One turn each: the agents' sessions exist and the daemon's paths are warm.
    for s in &sessions {
        let r = d.prompt(s, "bench 2").await?;
        ensure!(r.status == 202, "warm-up prompt -> {}", r.status);
    }
    let warm = sessions.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < warm {
        ensure!(Instant::now() < deadline, "warm-up turns did not complete");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let agent_cpu =
        |agents: &[u32]| -> Result<Duration> { agents.iter().map(|p| cpu_time(*p)).sum() };
    let (a0, d0, t0) = (agent_cpu(&agents)?, cpu_time(d.pid())?, Instant::now());
    let end = t0 + Duration::from_secs_f64(o.secs);
    let (mut admission, mut health, client_realtime) = match case.client {
        Client::Fair => {
            let health = tokio::spawn(health_probes(d.clone(), d.http.clone(), end));
            let admission =
                admission_probes(d.clone(), d.http.clone(), sessions.clone(), end).await?;
            (admission, health.await??, false)
        }
        Client::RealTime => realtime_probes(d.clone(), sessions.clone(), end).await?,
    };
    let window = t0.elapsed().as_secs_f64();
    let (a1, d1) = (agent_cpu(&agents)?, cpu_time(d.pid())?);
    let realtime_threads = realtime_threads(d.pid())?;
    let expected = warm + admission.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < expected {
        if let Some(i) = drains.iter().position(|t| t.is_finished()) {
            drains.remove(i).await??; // the stream failed: its error says why
        }
        ensure!(
            Instant::now() < deadline,
            "admitted turns did not all complete: {}/{expected}",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in drains {
        t.abort();
    }
    admission.sort_unstable();
    health.sort_unstable();
    Ok(Run {
        admission,
        health,
        agent_cores: (a1 - a0).as_secs_f64() / window,
        daemon_cores: (d1 - d0).as_secs_f64() / window,
        daemon_rss_mib: rss_kib(d.pid())? as f64 / 1024.0,
        realtime_threads,
        client_realtime,
    })
}

/// Every case `o.repeats` times, interleaved; prints the table BENCHMARKS.md quotes.
/// The cases: idle agents and burning ones under the defaults, and burning ones as before each
/// mechanism (the kernel's slice and the daemon's priority; the slice without real-time),
/// each probed by a fair client and by a real-time one ([`Client`]).
pub async fn section(o: &Opts, defaults: Case) -> Result<String> {
    let burn = o.burn;
    let cases = [
        Case {
            burn: 0,
            ..defaults
        },
        Case {
            burn,
            nice: 0,
            slice_us: 0,
            realtime: 0,
            ..defaults
        },
        Case {
            burn,
            slice_us: 0,
            realtime: 0,
            ..defaults
        },
        Case {
            burn,
            realtime: 0,
            ..defaults
        },
        Case { burn, ..defaults },
    ];
    let mut out = String::new();
    writeln!(
        out,
        "\n## Responsive under agent load: {} sessions, one agent each, telemetry + plugins, \
         probes every {EVERY:?} for {} s\n",
        o.sessions, o.secs
    )?;
    writeln!(
        out,
        "| Case | run | admission p50 / p99 µs | /health p50 / p99 µs | agents' CPU, cores | \
         daemon CPU, cores | samples |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    let clients = [Client::Fair, Client::RealTime];
    for rep in 1..=o.repeats {
        for case in clients
            .into_iter()
            .flat_map(|client| cases.map(|c| Case { client, ..c }))
        {
            let r = run_case(case, o).await?;
            let us = |v: &[u64], p: f64| pct(v, p) / 1000;
            let refused = if (case.realtime > 0 && r.realtime_threads == 0)
                || (case.client == Client::RealTime && !r.client_realtime)
            {
                " (real-time not permitted to this user: ran without)"
            } else {
                ""
            };
            let line = format!(
                "| {}{refused} | {rep} | {} / {} | {} / {} | {:.3} | {:.3} | {} + {} |",
                case.label(),
                us(&r.admission, 50.0),
                us(&r.admission, 99.0),
                us(&r.health, 50.0),
                us(&r.health, 99.0),
                r.agent_cores,
                r.daemon_cores,
                r.admission.len(),
                r.health.len(),
            );
            println!("{line}");
            writeln!(out, "{line}")?;
        }
    }
    Ok(out)
}

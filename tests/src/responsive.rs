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

/// One case: the agents' burn and niceness, and the daemon's CPU slice (`server.cpu_slice_us`,
/// 0: the kernel's default).
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub burn: u32,
    pub nice: i32,
    pub slice_us: u64,
}

impl Case {
    pub fn label(self) -> String {
        let slice = match self.slice_us {
            0 => "kernel's slice".to_string(),
            us => format!("slice {us} µs"),
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
}

/// Telemetry and the default plugins on (to a sink that answers without decoding), one agent
/// child per session, limits out of the way.
async fn daemon(case: Case, rx: &Receiver) -> Result<Daemon> {
    let config = format!(
        "[limits]\nmax_sessions = 512\nmax_sessions_per_workspace = 512\n\
         max_pending_prompts_per_session = 1000000\nevent_ring = 256\n\
         [server]\ncpu_slice_us = {}\n\
         [agent]\nscope = \"session\"\nnice = {}\n\
         [agent.env]\nOTEL_SDK_DISABLED = \"true\"\nACPD_DEMO_BURN = \"{}\"\n",
        case.slice_us, case.nice, case.burn
    );
    Daemon::builder()
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
async fn health_probes(d: Arc<Daemon>, end: Instant) -> Result<Vec<u64>> {
    let url = d.url("/health");
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lat = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        let r = d.http.get(&url).send().await?;
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
        let r = d
            .http
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
    let health = tokio::spawn(health_probes(d.clone(), end));
    let mut admission = admission_probes(d.clone(), sessions.clone(), end).await?;
    let mut health = health.await??;
    let window = t0.elapsed().as_secs_f64();
    let (a1, d1) = (agent_cpu(&agents)?, cpu_time(d.pid())?);
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
    })
}

/// Every case `o.repeats` times, interleaved; prints the table BENCHMARKS.md quotes.
/// The cases: idle agents and burning ones under the defaults, and burning ones as before each
/// mechanism (the kernel's slice; the daemon's priority as well).
pub async fn section(o: &Opts, default_nice: i32, default_slice_us: u64) -> Result<String> {
    let burn = o.burn;
    let cases = [
        Case {
            burn: 0,
            nice: default_nice,
            slice_us: default_slice_us,
        },
        Case {
            burn,
            nice: 0,
            slice_us: 0,
        },
        Case {
            burn,
            nice: default_nice,
            slice_us: 0,
        },
        Case {
            burn,
            nice: default_nice,
            slice_us: default_slice_us,
        },
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
    for rep in 1..=o.repeats {
        for case in cases {
            let r = run_case(case, o).await?;
            let us = |v: &[u64], p: f64| pct(v, p) / 1000;
            let line = format!(
                "| {} | {rep} | {} / {} | {} / {} | {:.3} | {:.3} | {} + {} |",
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

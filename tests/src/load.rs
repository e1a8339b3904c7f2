//! The load harness: drives a running `acpd` (release build under `cargo bench`) serving the demo
//! agent's no-delay `bench` command on 127.0.0.1, and reports what BENCHMARKS.md quotes:
//! daemon overhead, admission and `/health` throughput, SSE fan-out, RSS, span export and
//! start-up, each with telemetry off / on / on+plugins from the same run; and the agent
//! telemetry gateway under a steady stream of the agent's own spans.
//!
//! `cargo bench -p acpd-tests --bench load` runs it in full; the `load_harness` test runs the
//! short mode (a few seconds, debug build), which asserts that every measurement works and
//! loses nothing, never how fast it is.

use crate::otlp::{Protocol, Receiver};
use crate::{Daemon, SessionRef, Sse, WAIT, agent_text};
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// Sequential prompts per session for the overhead percentiles.
    pub overhead_prompts: usize,
    pub concurrency: &'static [usize],
    pub admissions: usize,
    pub health_requests: usize,
    /// Turns of `flood` per fan-out shape, and chunks per turn.
    pub fanout_turns: usize,
    pub fanout_chunks: usize,
    pub fanout_width: usize,
    /// Prompts between the two RSS readings of the leak check.
    pub leak_prompts: usize,
    /// Spans per second offered to the export stage, and for how long.
    pub export_rate: usize,
    pub export_secs: f64,
    pub startups: usize,
    /// Spans per second the demo agent sends through the gateway, and for how long.
    pub gateway_rate: u64,
    pub gateway_secs: f64,
    /// Journaled sessions (one turn each) the daemon restarts with.
    pub journal_sessions: usize,
    /// Prompts of the soak run (`ACPD_LOAD_ONLY=soak`), RSS read after each tenth.
    pub soak_prompts: usize,
}

impl Opts {
    pub const FULL: Opts = Opts {
        overhead_prompts: 200,
        concurrency: &[1, 16, 64],
        admissions: 4000,
        health_requests: 20_000,
        fanout_turns: 10,
        fanout_chunks: 200,
        fanout_width: 100,
        leak_prompts: 10_000,
        export_rate: 5000,
        export_secs: 10.0,
        startups: 10,
        gateway_rate: 5000,
        gateway_secs: 10.0,
        journal_sessions: 1000,
        soak_prompts: 100_000,
    };

    /// Proves every part works in a few seconds; the figures mean nothing.
    pub const SHORT: Opts = Opts {
        overhead_prompts: 5,
        concurrency: &[1, 4],
        admissions: 40,
        health_requests: 100,
        fanout_turns: 1,
        fanout_chunks: 20,
        fanout_width: 8,
        leak_prompts: 50,
        export_rate: 500,
        export_secs: 0.5,
        startups: 1,
        gateway_rate: 500,
        gateway_secs: 1.0,
        journal_sessions: 20,
        soak_prompts: 160,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Telemetry {
    Off,
    On,
    OnPlugins,
}

impl Telemetry {
    pub const ALL: [Telemetry; 3] = [Telemetry::Off, Telemetry::On, Telemetry::OnPlugins];

    /// The modes a run measures: all of them, or those `ACPD_LOAD_MODES` names (`off`, `on`,
    /// `plugins`, comma-separated), to A/B one mode or profile one daemon in less time.
    pub fn selected() -> Vec<Telemetry> {
        let Ok(names) = std::env::var("ACPD_LOAD_MODES") else {
            return Self::ALL.to_vec();
        };
        let names: Vec<&str> = names.split(',').map(str::trim).collect();
        if let Some(bad) = names
            .iter()
            .find(|n| !Self::ALL.iter().any(|m| m.short() == **n))
        {
            panic!("ACPD_LOAD_MODES: unknown mode {bad:?} (off, on, plugins)");
        }
        Self::ALL
            .into_iter()
            .filter(|m| names.contains(&m.short()))
            .collect()
    }

    /// The mode's name in `ACPD_LOAD_MODES`.
    fn short(self) -> &'static str {
        match self {
            Telemetry::Off => "off",
            Telemetry::On => "on",
            Telemetry::OnPlugins => "plugins",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Telemetry::Off => "telemetry off",
            Telemetry::On => "telemetry on",
            Telemetry::OnPlugins => "on + plugins",
        }
    }
}

/// Pause between one session's turns in the overhead runs (uniform, ms): 16 sessions then offer
/// about 400 turns/s, well below what two cores serve, so the figures are the daemon's path and
/// not a queue.
pub const THINK_MS: (u64, u64) = (20, 60);

/// Tool calls per `bench` turn in the export run: each is an `execute_tool` span.
const EXPORT_TOOLS: usize = 8;

/// The compiled-plugin cache of the harness's daemons (`ACPD_CACHE_DIR`): beside the binary they
/// run, so a benchmark neither shares the user's cache with the tests nor starts cold each run.
pub fn cache_dir() -> std::path::PathBuf {
    crate::acpd_bin()
        .parent()
        .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf)
        .join("bench-cache")
}

/// A daemon of the harness: the tests' builder, with the harness's plugin cache.
pub fn bench_daemon() -> crate::DaemonBuilder {
    Daemon::builder().env("ACPD_CACHE_DIR", &cache_dir().to_string_lossy())
}

/// Limits raised so the harness measures the daemon, not its admission caps. The replay ring
/// is the default one (journaled: its byte bound fills within the warm-up, so the leak check
/// sees steady state). `ACPD_LOAD_LIMITS` adds lines to `[limits]` (e.g.
/// `journaled_event_ring_bytes = 1073741824` for a ring bounded by `event_ring` alone). The
/// agent's own telemetry is off in every mode: the figures are the daemon's.
fn bench_config(extra: &str) -> String {
    format!(
        "{}\n[agent.env]\nOTEL_SDK_DISABLED = \"true\"\n{extra}",
        bench_limits()
    )
}

/// The harness's `[limits]` section, with `ACPD_LOAD_LIMITS` added: every section's daemons
/// take it.
fn bench_limits() -> String {
    let more = std::env::var("ACPD_LOAD_LIMITS").unwrap_or_default();
    format!(
        "[limits]\nmax_sessions = 512\nmax_sessions_per_workspace = 512\n\
         max_pending_prompts_per_session = 1000000\nmax_subscribers_per_session = 256\n{more}\n"
    )
}

/// A daemon in one telemetry mode, with its OTLP receiver when telemetry is on.
pub struct Target {
    pub mode: Telemetry,
    pub d: Arc<Daemon>,
    pub rx: Option<Receiver>,
}

impl Target {
    pub async fn start(mode: Telemetry) -> Result<Target> {
        Self::start_with(mode, &[]).await
    }

    /// Telemetry (when on) goes to a sink that neither decodes nor stores: a collector
    /// elsewhere, whose work is not the daemon's.
    pub async fn start_sink(mode: Telemetry) -> Result<Target> {
        let rx = match mode {
            Telemetry::Off => None,
            _ => Some(Receiver::start_sink(Protocol::HttpProtobuf).await?),
        };
        Self::start_to(mode, rx, &[]).await
    }

    pub async fn start_with(mode: Telemetry, env: &[(&str, &str)]) -> Result<Target> {
        let rx = match mode {
            Telemetry::Off => None,
            _ => Some(Receiver::start(Protocol::HttpProtobuf).await?),
        };
        Self::start_to(mode, rx, env).await
    }

    async fn start_to(
        mode: Telemetry,
        rx: Option<Receiver>,
        env: &[(&str, &str)],
    ) -> Result<Target> {
        let mut b = bench_daemon().config(&bench_config(""));
        match (&rx, mode) {
            (None, _) | (_, Telemetry::Off) => {
                b = b.env("OTEL_SDK_DISABLED", "true").args(&["--no-plugins"]);
            }
            (Some(rx), _) => {
                b = b
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
                    .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env());
                if mode == Telemetry::On {
                    b = b.args(&["--no-plugins"]);
                }
            }
        }
        for (k, v) in env {
            b = b.env(k, v);
        }
        let d = b.start().await?;
        if mode == Telemetry::OnPlugins {
            // A release build whose build script last ran before the machine had the wasm
            // target embeds no plugins, and "on + plugins" would quietly measure none.
            let health = d.get("/health?deep=1").await?;
            let plugins = health.body["plugins"].as_array().map_or(0, Vec::len);
            if plugins == 0 {
                bail!(
                    "on + plugins: the daemon under test ({}) runs no plugins: {}",
                    crate::acpd_bin().display(),
                    health.body
                );
            }
        }
        Ok(Target {
            mode,
            d: Arc::new(d),
            rx,
        })
    }

    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.d.pid())
    }
}

/// Resident set of a process, from /proc.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

pub fn wall_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Percentile of sorted samples (nearest rank).
pub fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// A session with its SSE stream open, ready for timed turns.
struct Client {
    s: SessionRef,
    sse: Sse,
}

impl Client {
    async fn open(d: &Daemon) -> Result<Client> {
        let s = d.create_session().await?;
        let sse = d.events(&s, None, None).await?;
        Ok(Client { s, sse })
    }

    /// One timed turn, in ns: POST -> the agent's handler has `session/prompt`; POST -> the
    /// agent read its line from the pipe (where the floor's pipe write ends: the rest is the
    /// agent's own hop to its handler); agent's last chunk -> client has `turn_complete`.
    async fn timed_turn(&mut self, d: &Daemon, text: &str) -> Result<Turn> {
        let t0 = wall_ns();
        let (_, frames) = d.turn(&self.s, &mut self.sse, text).await?;
        let t_end = wall_ns();
        let last = frames.last().context("no frames")?;
        ensure!(
            last.event == "turn_complete",
            "turn ended with {}: {}",
            last.event,
            last.data
        );
        let text = agent_text(&frames);
        let stamp = |key: &str| -> Result<u128> {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in {text:?}"))
        };
        let (recv, read, sent) = (stamp("recv=")?, stamp("read=")?, stamp("last=")?);
        ensure!(
            read <= recv,
            "the agent read its line after its handler ran: {text:?}"
        );
        Ok(Turn {
            to_agent: recv.saturating_sub(t0) as u64,
            to_read: read.saturating_sub(t0) as u64,
            to_client: t_end.saturating_sub(sent) as u64,
        })
    }
}

struct Turn {
    to_agent: u64,
    to_read: u64,
    to_client: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Overhead {
    pub sessions: usize,
    pub to_agent: Vec<u64>,
    /// POST -> the agent read the request's line: the daemon's share of `to_agent`.
    pub to_read: Vec<u64>,
    pub to_client: Vec<u64>,
    /// CPU time per timed turn, in ns, of the daemon and of its agents: the daemon's bounds
    /// what any scheduling can take off its path.
    pub daemon_cpu_per_turn: u64,
    pub agent_cpu_per_turn: u64,
}

/// The CPU time of `pid` and of its children (the agents), in ns.
fn cpu_of_daemon_and_agents(pid: u32) -> Result<(u64, u64)> {
    let agents = crate::children_of(pid)
        .into_iter()
        .map(cpu_time)
        .sum::<Result<Duration>>()?;
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Ok((ns(cpu_time(pid)?), ns(agents)))
}

/// One client's pauses between its turns: a pseudo-random `think` (min, max ms), the same
/// sequence for client `i` in every run and in the paced floor; (0, 0) never pauses.
struct Pace {
    seed: u64,
    think: (u64, u64),
}

impl Pace {
    fn new(i: usize, think: (u64, u64)) -> Pace {
        Pace {
            seed: 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1),
            think,
        }
    }

    async fn pause(&mut self) {
        let (min, max) = self.think;
        if max == 0 {
            return;
        }
        // xorshift: deterministic, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let ms = min + self.seed % (max - min + 1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// `sessions` clients each run `prompts` turns, pausing a pseudo-random `think` (min, max ms)
/// between turns so the sessions' turns overlap at random, as real clients' do; (0, 0) runs
/// them back to back, which saturates the machine and measures queueing instead.
pub async fn overhead(
    d: &Arc<Daemon>,
    sessions: usize,
    prompts: usize,
    think: (u64, u64),
) -> Result<Overhead> {
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(Client::open(d).await?);
    }
    // Warm-up: the child, connections, first allocations.
    for c in clients.iter_mut() {
        c.timed_turn(d, "bench 4").await?;
    }
    let cpu_before = cpu_of_daemon_and_agents(d.pid())?;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(prompts);
                let mut pace = Pace::new(i, think);
                for _ in 0..prompts {
                    pace.pause().await;
                    out.push(c.timed_turn(&d, "bench 4").await?);
                }
                Ok::<_, anyhow::Error>(out)
            })
        })
        .collect();
    let mut o = Overhead {
        sessions,
        ..Default::default()
    };
    for t in tasks {
        for turn in t.await?? {
            o.to_agent.push(turn.to_agent);
            o.to_read.push(turn.to_read);
            o.to_client.push(turn.to_client);
        }
    }
    let cpu_after = cpu_of_daemon_and_agents(d.pid())?;
    let turns = (sessions * prompts).max(1) as u64;
    o.daemon_cpu_per_turn = cpu_after.0.saturating_sub(cpu_before.0) / turns;
    o.agent_cpu_per_turn = cpu_after.1.saturating_sub(cpu_before.1) / turns;
    ensure!(
        o.daemon_cpu_per_turn > 0 && o.agent_cpu_per_turn > 0,
        "no CPU time read for the daemon ({}) or its agents ({})",
        o.daemon_cpu_per_turn,
        o.agent_cpu_per_turn
    );
    o.to_agent.sort_unstable();
    o.to_read.sort_unstable();
    o.to_client.sort_unstable();
    Ok(o)
}

/// One admission run (see [`admissions`]).
pub struct Admissions {
    /// Prompts admitted per second.
    pub admitted: f64,
    /// Prompts per second until every admitted turn had completed.
    pub completed: f64,
    /// The share of the turns the daemon completed while the admissions still ran (by its own
    /// event timestamps).
    pub while_admitting: f64,
}

/// 8 clients post prompts back to back, each on its own session; then every admitted turn is
/// awaited to its end (none lost). The turns run while the admissions do, so a daemon that
/// completes turns sooner leaves admission less of the CPU: `completed` says whether a lower
/// `admitted` is work moved or work lost, and `while_admitting` says where it went.
pub async fn admissions(d: &Daemon, total: usize) -> Result<Admissions> {
    const CLIENTS: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::open(d).await?);
    }
    let per = total.div_ceil(CLIENTS);
    let started = Instant::now();
    let posters: Vec<_> = clients
        .iter()
        .map(|c| {
            let (http, url, client_id) = (
                d.http.clone(),
                d.url(&format!("/session/{}/prompt", c.s.id)),
                c.s.client_id.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..per {
                    let r = http
                        .post(&url)
                        .header("X-Qwen-Client-Id", &client_id)
                        .json(&json!({"prompt": [{"type": "text", "text": "bench 2"}]}))
                        .send()
                        .await?;
                    ensure!(r.status() == 202, "admission failed: {}", r.status());
                }
                Ok(())
            })
        })
        .collect();
    for p in posters {
        p.await??;
    }
    let rate = (per * CLIENTS) as f64 / started.elapsed().as_secs_f64();
    let posted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut while_admitting = 0usize;
    // Every admitted prompt ends with exactly one turn_complete.
    let deadline = Instant::now() + Duration::from_secs(120);
    for c in clients.iter_mut() {
        let mut done = 0;
        while done < per {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = c
                .sse
                .next_within(left)
                .await
                .map_err(|e| anyhow!("admitted turns did not all complete ({done}/{per}): {e}"))?
                .context("stream ended")?;
            match f.event.as_str() {
                "turn_complete" => {
                    done += 1;
                    let at = f.data["_meta"]["serverTimestamp"].as_u64();
                    if at.is_some_and(|at| at <= posted_ms) {
                        while_admitting += 1;
                    }
                }
                "turn_error" => bail!("an admitted turn failed: {}", f.data),
                _ => {}
            }
        }
    }
    let prompts = (per * CLIENTS) as f64;
    Ok(Admissions {
        admitted: rate,
        completed: prompts / started.elapsed().as_secs_f64(),
        while_admitting: while_admitting as f64 / prompts,
    })
}

/// `GET /health` requests per second from 8 concurrent clients.
pub async fn health(d: &Daemon, total: usize) -> Result<f64> {
    const CLIENTS: usize = 8;
    let per = total.div_ceil(CLIENTS);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url) = (d.http.clone(), d.url("/health"));
            tokio::spawn(async move {
                for _ in 0..per {
                    let r = http.get(&url).send().await?;
                    ensure!(r.status() == 200, "health -> {}", r.status());
                    r.bytes().await?;
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((per * CLIENTS) as f64 / started.elapsed().as_secs_f64())
}

#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    pub events: usize,
    pub per_sec: f64,
}

/// Reads one subscriber's frames until `turns` turns have ended; checks ids are gapless.
async fn drain_subscriber(mut sse: Sse, turns: usize) -> Result<usize> {
    let (mut seen, mut ended, mut last_id) = (0usize, 0usize, None::<u64>);
    while ended < turns {
        let f = sse
            .next_within(WAIT)
            .await?
            .context("stream ended during fan-out")?;
        ensure!(f.event != "client_evicted", "a subscriber was evicted");
        if let Some(id) = f.id {
            if let Some(prev) = last_id {
                ensure!(id == prev + 1, "gap in SSE ids: {prev} then {id}");
            }
            last_id = Some(id);
            seen += 1;
        }
        match f.event.as_str() {
            "turn_complete" => ended += 1,
            "turn_error" => bail!("turn_error during fan-out: {}", f.data),
            _ => {}
        }
    }
    Ok(seen)
}

/// `sessions` sessions with `width` subscribers each; every session runs `turns` floods of
/// `chunks` chunks. Events delivered per second, all subscribers together.
pub async fn fanout(
    d: &Arc<Daemon>,
    sessions: usize,
    width: usize,
    turns: usize,
    chunks: usize,
) -> Result<Fanout> {
    let mut readers = Vec::new();
    let mut owners = Vec::new();
    for _ in 0..sessions {
        let s = d.create_session().await?;
        for _ in 0..width {
            readers.push(tokio::spawn(drain_subscriber(
                d.events(&s, None, None).await?,
                turns,
            )));
        }
        owners.push(s);
    }
    let started = Instant::now();
    drive(d, owners, turns, &format!("flood {chunks} 64")).await?;
    let mut events = 0;
    for r in readers {
        events += r.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Each turn publishes at least its chunks and a turn_complete to every subscriber.
    let floor = sessions * width * turns * (chunks + 1);
    ensure!(events >= floor, "lost events: {events} < {floor}");
    Ok(Fanout {
        events,
        per_sec: events as f64 / elapsed,
    })
}

/// Resident set split as the kernel accounts it: (anonymous, file-backed) KiB, from /proc.
pub fn rss_split_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name| status_field(&status, name);
    Ok((field("RssAnon:")?, field("RssFile:")? + field("RssShmem:")?))
}

/// A number in `/proc/<pid>/status` (`Threads:`, or a size in kB).
fn status_field(status: &str, name: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| name.to_string())
}

/// The daemon's threads now (the blocking pool's grow with the hand-offs in flight).
pub fn threads(pid: u32) -> Result<u64> {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        "Threads:",
    )
}

/// A pause longer than the runtime's keep-alive of idle blocking threads (10 s; plugins whose
/// request hooks step out of async whole grow that pool): the memory section reads what a
/// daemon holds between bursts after it.
pub const QUIET: Duration = Duration::from_secs(12);

/// The daemon binary's own file-backed pages: (mapped, referenced since the last
/// [`clear_referenced`]) KiB, from `/proc/<pid>/smaps`. Mapped counts what the kernel's
/// fault-around maps next to each page the daemon touches; referenced is what it used.
pub fn binary_pages_kib(pid: u32) -> Result<(u64, u64)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut rss, mut referenced, mut ours) = (0, 0, false);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            ours = fields.nth(4) == Some(exe.as_str());
            continue;
        }
        if !ours {
            continue;
        }
        let mut kib = || {
            fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" => rss += kib(),
            "Referenced:" => referenced += kib(),
            _ => {}
        }
    }
    Ok((rss, referenced))
}

/// Clears the daemon's accessed bits (`/proc/<pid>/clear_refs`), so [`binary_pages_kib`]
/// counts what is touched from here on.
pub fn clear_referenced(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "1")?;
    Ok(())
}

/// The daemon's allocation counters (`acpd_alloc_*` on /metrics; the bench build counts them):
/// (allocations, bytes allocated, bytes live). `None` when the daemon was built without them.
pub async fn alloc_counts(d: &Daemon) -> Result<Option<(u64, u64, u64)>> {
    let text = d.metrics_text().await?;
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Ok(
        match (
            value("acpd_alloc_count_total"),
            value("acpd_alloc_bytes_total"),
            value("acpd_alloc_live_bytes"),
        ) {
            (Some(a), Some(b), Some(l)) => Some((a, b, l)),
            _ => None,
        },
    )
}

/// Allocations per operation between two readings: (allocations, bytes) per op.
#[derive(Debug, Clone, Copy)]
pub struct AllocsPer {
    pub allocs: f64,
    pub bytes: f64,
}

fn allocs_per(
    before: Option<(u64, u64, u64)>,
    after: Option<(u64, u64, u64)>,
    ops: usize,
) -> Option<AllocsPer> {
    let ((a0, b0, _), (a1, b1, _)) = (before?, after?);
    Some(AllocsPer {
        allocs: (a1 - a0) as f64 / ops as f64,
        bytes: (b1 - b0) as f64 / ops as f64,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub idle_kib: u64,
    /// Idle, (anonymous, file-backed) KiB.
    pub idle_split: (u64, u64),
    pub sessions_100_kib: u64,
    pub warm_kib: u64,
    pub warm_split: (u64, u64),
    /// The binary's pages: mapped idle; (mapped, referenced) after the warm-up (referenced:
    /// touched since idle); `None` where smaps or clear_refs cannot be read.
    pub idle_binary: Option<u64>,
    pub warm_binary: Option<(u64, u64)>,
    /// RSS after the warm-up and a quiet pause ([`QUIET`]).
    pub quiet_kib: u64,
    pub quiet_split: (u64, u64),
    pub after_kib: u64,
    /// After a second round of `prompts`: a leak keeps growing, a pool filling up does not.
    pub after2_kib: u64,
    pub prompts: usize,
    /// Per prompt over the last round (16 sessions, one SSE subscriber each, `bench 2`), and per
    /// sequential `GET /health`; `None` without the daemon's allocation counters.
    pub per_prompt: Option<AllocsPer>,
    pub per_health: Option<AllocsPer>,
    /// Bytes live in the daemon's heap, warm and at the end.
    pub live_warm: Option<u64>,
    pub live_end: Option<u64>,
    /// The daemon's threads: idle, warm, at the end.
    pub threads: (u64, u64, u64),
}

/// 16 sessions each with its SSE stream, `count` turns of `bench 2` spread over them.
async fn prompt_rounds(d: &Arc<Daemon>, workers: &[SessionRef], count: usize) -> Result<()> {
    drive(
        d,
        workers.to_vec(),
        count.div_ceil(workers.len()),
        "bench 2",
    )
    .await
}

/// `turns` turns of `text` on each session, the sessions concurrently, each on its own stream.
async fn drive(d: &Arc<Daemon>, sessions: Vec<SessionRef>, turns: usize, text: &str) -> Result<()> {
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let (d, text) = (d.clone(), text.to_string());
            tokio::spawn(async move {
                let mut sse = d.events(&s, None, None).await?;
                for _ in 0..turns {
                    d.turn(&s, &mut sse, &text).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// RSS idle, with 100 sessions, then after a warm-up of `prompts` prompts (fills the replay
/// rings, the trace view and the plugin instance pools) and after each of two more rounds of
/// `prompts`: growth that repeats is a leak. Allocations are counted over the last round.
pub async fn memory(t: &Target, prompts: usize, sessions_n: usize) -> Result<Memory> {
    let d = &t.d;
    d.get("/health").await?;
    let idle_kib = t.rss_kib()?;
    let idle_split = rss_split_kib(d.pid())?;
    let idle_binary = binary_pages_kib(d.pid()).ok().map(|(mapped, _)| mapped);
    let idle_threads = threads(d.pid())?;
    // From here, count the binary's pages the daemon actually touches while it serves.
    let cleared = clear_referenced(d.pid()).is_ok();
    let mut sessions = Vec::new();
    for _ in 0..sessions_n {
        sessions.push(d.create_session().await?);
    }
    let sessions_100_kib = t.rss_kib()?;
    let workers: Vec<SessionRef> = sessions.into_iter().take(16).collect();
    prompt_rounds(d, &workers, prompts).await?;
    let warm_kib = t.rss_kib()?;
    let warm_split = rss_split_kib(d.pid())?;
    let warm_binary = binary_pages_kib(d.pid()).ok();
    let live_warm = alloc_counts(d).await?.map(|c| c.2);
    let warm_threads = threads(d.pid())?;
    save_smaps(d, "warm")?;
    tokio::time::sleep(QUIET).await;
    let quiet_kib = t.rss_kib()?;
    let quiet_split = rss_split_kib(d.pid())?;
    prompt_rounds(d, &workers, prompts).await?;
    let after_kib = t.rss_kib()?;
    let before = alloc_counts(d).await?;
    let done = workers.len() * prompts.div_ceil(workers.len());
    prompt_rounds(d, &workers, prompts).await?;
    let after = alloc_counts(d).await?;
    let after2_kib = t.rss_kib()?;
    let end_threads = threads(d.pid())?;
    let per_prompt = allocs_per(before, after, done);
    let probes = (prompts / 5).max(10);
    let before = alloc_counts(d).await?;
    for _ in 0..probes {
        d.get("/health").await?;
    }
    let per_health = allocs_per(before, alloc_counts(d).await?, probes);
    Ok(Memory {
        idle_kib,
        idle_split,
        sessions_100_kib,
        warm_kib,
        warm_split,
        idle_binary,
        warm_binary: warm_binary.filter(|_| cleared),
        quiet_kib,
        quiet_split,
        after_kib,
        after2_kib,
        prompts,
        per_prompt,
        per_health,
        live_warm,
        live_end: after.map(|c| c.2),
        threads: (idle_threads, warm_threads, end_threads),
    })
}

/// `ACPD_LOAD_SMAPS=<dir>`: the daemon's mappings as `<dir>/<what>-<pid>.smaps`, to see what
/// holds its memory (the memory section's warm daemon, each reading of the soak run).
fn save_smaps(d: &Daemon, what: &str) -> Result<()> {
    if let Some(dir) = std::env::var_os("ACPD_LOAD_SMAPS") {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", d.pid()))?;
        let file = std::path::Path::new(&dir).join(format!("{what}-{}.smaps", d.pid()));
        std::fs::write(file, smaps)?;
    }
    Ok(())
}

/// One reading of the soak run.
#[derive(Debug, Clone, Copy)]
pub struct SoakPoint {
    pub prompts: usize,
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub live_bytes: Option<u64>,
    /// The session journals' bytes on disk: each session's is capped
    /// (`state.journal_max_session_bytes`), and its in-memory index grows with it until then.
    pub journal_bytes: u64,
}

/// `total` prompts (16 sessions, `bench 2`), RSS read every `every` prompts.
pub async fn soak(t: &Target, total: usize, every: usize) -> Result<Vec<SoakPoint>> {
    let d = &t.d;
    let mut workers = Vec::new();
    for _ in 0..16 {
        workers.push(d.create_session().await?);
    }
    let point = |done: usize, live: Option<u64>| -> Result<SoakPoint> {
        let (anon, _) = rss_split_kib(d.pid())?;
        Ok(SoakPoint {
            prompts: done,
            rss_kib: t.rss_kib()?,
            anon_kib: anon,
            live_bytes: live,
            journal_bytes: journal_bytes(d),
        })
    };
    let mut points = vec![point(0, alloc_counts(d).await?.map(|c| c.2))?];
    let mut done = 0;
    while done < total {
        prompt_rounds(d, &workers, every).await?;
        done += workers.len() * every.div_ceil(workers.len());
        points.push(point(done, alloc_counts(d).await?.map(|c| c.2))?);
        save_smaps(d, &format!("soak{done:06}"))?;
    }
    Ok(points)
}

#[derive(Debug, Clone, Copy)]
pub struct Export {
    pub offered_per_sec: f64,
    pub spans: usize,
    pub received: usize,
    pub dropped: u64,
    pub spans_per_prompt: usize,
}

/// `acpd.telemetry.dropped` for the export queue, from `/metrics`.
pub async fn export_dropped(d: &Daemon) -> Result<u64> {
    spans_dropped(d, "export_queue").await
}

/// `acpd.telemetry.dropped` for spans at one `acpd.drop.stage`, from `/metrics`.
pub async fn spans_dropped(d: &Daemon, stage: &str) -> Result<u64> {
    let label = format!("acpd_drop_stage=\"{stage}\"");
    let prom = d.metrics_text().await?;
    Ok(crate::metric_total(&prom, "acpd_telemetry_dropped", &[&label]) as u64)
}

/// Offers `rate` spans/s for `secs` (prompts of `bench 2 8`, paced), then waits for the receiver
/// to have every span. Needs a target with telemetry on.
pub async fn export(t: &Target, rate: usize, secs: f64) -> Result<Export> {
    let rx = t.rx.as_ref().context("export needs telemetry on")?;
    let d = &t.d;
    let prompt = format!("bench 2 {EXPORT_TOOLS}");
    // Calibrate: the spans of one prompt's trace, once its dispatch span (the last to end) is in.
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let pid = d.submit(&s, &prompt).await?;
    sse.until_turn_end(&pid).await?;
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| {
                s.name == "bridge prompt.dispatch" && s.attr_str("acpd.prompt.id") == Some(&pid)
            })
        })
        .await?;
    let trace = spans
        .iter()
        .find(|s| s.name == "bridge prompt.dispatch" && s.attr_str("acpd.prompt.id") == Some(&pid))
        .map(|s| s.trace_id.clone())
        .context("dispatch span")?;
    let per_prompt = spans.iter().filter(|s| s.trace_id == trace).count();
    ensure!(
        per_prompt >= 3 + EXPORT_TOOLS,
        "only {per_prompt} spans per prompt"
    );
    // Everything that ended before the dispatch span is in; the SSE stream stays open so its
    // GET span cannot arrive during the count.
    let before = rx.span_count();
    let dropped_before = export_dropped(d).await?;

    let prompts = ((rate as f64 * secs) / per_prompt as f64).ceil() as usize;
    let interval = Duration::from_secs_f64(per_prompt as f64 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut inflight = Vec::with_capacity(prompts);
    for _ in 0..prompts {
        tick.tick().await;
        let (d2, s2, p2) = (d.clone(), s.clone(), prompt.clone());
        inflight.push(tokio::spawn(async move { d2.submit(&s2, &p2).await }));
    }
    for f in inflight {
        f.await??;
    }
    let offered = (prompts * per_prompt) as f64 / started.elapsed().as_secs_f64();
    let expected = before + prompts * per_prompt;
    let received = rx
        .wait_for_span_count(expected, Duration::from_secs(60))
        .await
        .unwrap_or_else(|_| rx.span_count());
    drop(sse);
    Ok(Export {
        offered_per_sec: offered,
        spans: prompts * per_prompt,
        received: received - before,
        dropped: export_dropped(d).await? - dropped_before,
        spans_per_prompt: per_prompt,
    })
}

/// Beyond the rate: a collector that never answers and a 256-span queue. Every span offered
/// is either queued, in the one stuck export, or counted as dropped.
pub async fn export_overload(prompts: usize) -> Result<(usize, u64)> {
    let rx = Receiver::start_hanging(Protocol::HttpProtobuf).await?;
    let t = Target::start_to(
        Telemetry::OnPlugins,
        Some(rx),
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "256"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await?;
    let d = &t.d;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let mut offered = 0;
    for _ in 0..prompts {
        d.turn(&s, &mut sse, &format!("bench 2 {EXPORT_TOOLS}"))
            .await?;
        offered += 3 + EXPORT_TOOLS;
    }
    let dropped = export_dropped(d).await?;
    let held = 256 + 64;
    ensure!(
        dropped as usize + held >= offered,
        "{offered} spans offered, {dropped} counted as dropped, at most {held} held"
    );
    Ok((offered, dropped))
}

/// Time from exec to the first `/health` 200 (the agent starts lazily, so it is excluded).
pub async fn startup(plugins: bool) -> Result<Duration> {
    use tokio::io::AsyncBufReadExt;
    let ws = tempfile::tempdir()?;
    // A state directory of its own: the user's default one holds whatever journal earlier
    // daemons left, which a start restores (and would time).
    let state = tempfile::tempdir()?;
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(crate::acpd_bin());
    cmd.args(["serve", "--port", "0", "--workspace"])
        .arg(ws.path())
        .arg("--state-dir")
        .arg(state.path())
        .env("OTEL_SDK_DISABLED", "true")
        .env("ACPD_LOG", "info")
        .env("ACPD_CACHE_DIR", cache_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if !plugins {
        cmd.arg("--no-plugins");
    }
    let mut child = cmd.spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("acpd listening on http://") {
                return Ok(rest.trim().to_string());
            }
        }
        bail!("acpd exited before listening")
    })
    .await
    .map_err(|_| anyhow!("no listening line within {WAIT:?}"))??;
    let r = reqwest::get(format!("http://{addr}/health")).await?;
    ensure!(r.status() == 200, "health -> {}", r.status());
    let took = started.elapsed();
    child.kill().await?;
    Ok(took)
}

/// The physical floor: a loopback HTTP round trip to a minimal server, and a one-way pipe
/// write between two threads (half a ping-pong). Medians, in ns.
pub async fn floors(n: usize) -> Result<(u64, u64)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/");
    let mut http_ns = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t0 = Instant::now();
        http.get(&url).send().await?.bytes().await?;
        if i >= 10 {
            http_ns.push(t0.elapsed().as_nanos() as u64);
        }
    }
    server.abort();
    http_ns.sort_unstable();

    let pipe_ns = tokio::task::spawn_blocking(move || -> Result<u64> {
        use std::io::{Read, Write};
        let (mut a_rx, mut a_tx) = std::io::pipe()?;
        let (mut b_rx, mut b_tx) = std::io::pipe()?;
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            while let Ok(k) = a_rx.read(&mut buf) {
                if k == 0 || b_tx.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
        });
        let line = [b'x'; 128];
        let mut buf = [0u8; 128];
        let mut rtt = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            a_tx.write_all(&line)?;
            b_rx.read_exact(&mut buf)?;
            rtt.push(t0.elapsed().as_nanos() as u64 / 2);
        }
        drop(a_tx);
        let _ = echo.join();
        rtt.sort_unstable();
        Ok(pct(&rtt, 50.0))
    })
    .await??;
    Ok((pct(&http_ns, 50.0), pipe_ns))
}

/// The floor paced like the overhead rows, in processes as the daemon's path is.
pub struct PacedFloor {
    /// POST -> the reader process read its line (ns, sorted): the floor of "its read".
    pub to_read: Vec<u64>,
    /// The POST's round trip (ns, sorted).
    pub http: Vec<u64>,
}

/// `clients` clients each pause as a session does between its turns ([`Pace`]), then POST the
/// time to a minimal server process (`floor-daemon`: the same HTTP stack as acpd, and nothing
/// else), which writes it into the pipe of that client's own reader process. So the server and
/// the readers have gone idle between turns, as the daemon and its agents have in the paced
/// rows, and each POST crosses the same process boundaries; [`floors`] runs back to back in
/// the harness's own process, where nothing sleeps. The first turn of each client (connection,
/// first wake) is not kept.
pub async fn floor_paced(clients: usize, per: usize, think: (u64, u64)) -> Result<PacedFloor> {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir()?;
    let mut server = tokio::process::Command::new(crate::floor_daemon_bin())
        .arg("serve")
        .arg(clients.to_string())
        .arg(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start floor-daemon")?;
    let mut lines = tokio::io::BufReader::new(server.stdout.take().context("stdout")?).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .context("floor-daemon: no READY line in time")??
        .context("floor-daemon ended before READY")?;
    let port: u16 = ready
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("floor-daemon said {ready:?}"))?;
    // As the harness's client of a daemon ([`crate::Daemon`]): the same deadline per request.
    let http = reqwest::Client::builder().timeout(WAIT).build()?;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let http = http.clone();
            let url = format!("http://127.0.0.1:{port}/{i}");
            tokio::spawn(async move {
                let mut pace = Pace::new(i, think);
                let mut rtt = Vec::with_capacity(per);
                for k in 0..=per {
                    pace.pause().await;
                    let t0 = Instant::now();
                    let r = http.post(&url).body(wall_ns().to_string()).send().await?;
                    let status = r.status();
                    r.bytes().await?;
                    ensure!(status == 202, "floor-daemon answered {status}");
                    if k > 0 {
                        rtt.push(t0.elapsed().as_nanos() as u64);
                    }
                }
                Ok::<_, anyhow::Error>(rtt)
            })
        })
        .collect();
    let mut http_ns = Vec::new();
    for t in tasks {
        http_ns.extend(t.await??);
    }
    drop(server.stdin.take());
    let status = tokio::time::timeout(WAIT, server.wait())
        .await
        .context("floor-daemon did not end in time")??;
    ensure!(status.success(), "floor-daemon failed: {status}");
    let mut to_read = Vec::new();
    for i in 0..clients {
        let file = dir.path().join(format!("{i}.txt"));
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let took: Vec<u64> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.parse().ok())
            .collect();
        ensure!(
            took.len() == per,
            "floor reader {i} read {} of {per} timed lines",
            took.len()
        );
        to_read.extend(took);
    }
    to_read.sort_unstable();
    http_ns.sort_unstable();
    Ok(PacedFloor {
        to_read,
        http: http_ns,
    })
}

/// Everything the harness measured in one run.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
}

impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }
}

/// Sections of a run; `ACPD_LOAD_ONLY=overhead,export` (comma-separated) runs only those.
/// `soak` (100,000 prompts) runs only when named.
pub const SECTIONS: [&str; 10] = [
    "floor",
    "overhead",
    "admission",
    "fanout",
    "memory",
    "export",
    "gateway",
    "startup",
    "journal",
    "soak",
];

fn wanted(section: &str) -> bool {
    std::env::var("ACPD_LOAD_ONLY")
        .map(|only| only.split(',').any(|s| s.trim() == section))
        .unwrap_or(section != "soak")
}

/// Runs every measurement; prints the report as it goes and returns it.
pub async fn run(o: Opts) -> Result<Report> {
    if let Ok(only) = std::env::var("ACPD_LOAD_ONLY")
        && let Some(bad) = only
            .split(',')
            .map(str::trim)
            .find(|s| !SECTIONS.contains(s))
    {
        bail!("ACPD_LOAD_ONLY: no section {bad:?}; sections: {SECTIONS:?}");
    }
    let mut rep = Report::default();
    if wanted("floor") {
        floor_section(&mut rep, &o).await?;
    }
    if wanted("overhead") {
        overhead_section(&mut rep, &o).await?;
    }
    if wanted("admission") {
        admission_section(&mut rep, &o).await?;
    }
    if wanted("fanout") {
        fanout_section(&mut rep, &o).await?;
    }
    if wanted("memory") {
        memory_section(&mut rep, &o).await?;
    }
    if wanted("export") {
        export_section(&mut rep, &o).await?;
    }
    if wanted("gateway") {
        gateway_section(&mut rep, &o).await?;
    }
    if wanted("startup") {
        startup_section(&mut rep, &o).await?;
    }
    if wanted("journal") {
        journal_section(&mut rep, &o).await?;
    }
    if wanted("soak") {
        soak_section(&mut rep, &o).await?;
    }
    Ok(rep)
}

async fn floor_section(rep: &mut Report, o: &Opts) -> Result<()> {
    let (http_floor, pipe_floor) = floors(if o.overhead_prompts > 50 { 2000 } else { 50 }).await?;
    rep.line(format!(
        "floor: loopback HTTP round trip p50 {:.1} us; pipe write one-way p50 {:.1} us",
        us(http_floor),
        us(pipe_floor)
    ));
    // The goal's floor is the one above; this one says what the paced rows' path costs with
    // nothing in the daemon but its HTTP stack and a pipe write.
    let paced = floor_paced(16, o.overhead_prompts, THINK_MS).await?;
    rep.line(format!(
        "floor paced as the 16-session row (a minimal server process writes each POST into a \
         reader process's pipe): POST -> read p50/p99 {:.1}/{:.1} us; round trip p50 {:.1} us",
        us(pct(&paced.to_read, 50.0)),
        us(pct(&paced.to_read, 99.0)),
        us(pct(&paced.http, 50.0))
    ));
    Ok(())
}

async fn overhead_section(rep: &mut Report, o: &Opts) -> Result<()> {
    let runs = o.concurrency.iter().map(|&n| (n, THINK_MS, "")).chain([(
        16,
        (0, 0),
        ", back to back: saturated, queueing",
    )]);
    for (n, think, note) in runs {
        let mut row = format!("overhead @{n:>2} sessions{note} (p50/p99 us)  ");
        for mode in Telemetry::selected() {
            let t = Target::start_sink(mode).await?;
            let r = overhead(&t.d, n, o.overhead_prompts, think).await?;
            let _ = write!(
                row,
                "| {}: to agent {:.0}/{:.0} (its read {:.0}/{:.0}), to client {:.0}/{:.0}, \
                 CPU/turn daemon {:.0} agent {:.0} ",
                mode.label(),
                us(pct(&r.to_agent, 50.0)),
                us(pct(&r.to_agent, 99.0)),
                us(pct(&r.to_read, 50.0)),
                us(pct(&r.to_read, 99.0)),
                us(pct(&r.to_client, 50.0)),
                us(pct(&r.to_client, 99.0)),
                us(r.daemon_cpu_per_turn),
                us(r.agent_cpu_per_turn),
            );
        }
        rep.line(row);
    }
    Ok(())
}

async fn admission_section(rep: &mut Report, o: &Opts) -> Result<()> {
    // Probes first, each mode on a fresh daemon: measured after the admissions, they shared the
    // daemon with the tail of those turns' background work (their spans' export) and measured
    // how that ended, not what a probe costs (BENCHMARKS.md, "Round fifteen").
    let (hl, health_spread) = health_interleaved(o.health_requests).await?;
    let (adm, all, during, adm_spread) = admissions_interleaved(o.admissions).await?;
    rep.line(format!(
        "admission prompts/s: {}{adm_spread}",
        rates_against_off(&adm)
    ));
    rep.line(format!(
        "  until all completed: {} | completed while admitting: {}",
        rates_against_off(&all),
        during.join(", ")
    ));
    rep.line(format!(
        "GET /health req/s:   {}{health_spread}",
        rates_against_off(&hl)
    ));
    Ok(())
}

/// Rounds of admissions per mode, the modes in turn within each round.
const ADMISSION_ROUNDS: usize = 3;

type Rates = Vec<(Telemetry, f64)>;

/// [`admissions`] per mode in [`in_rounds`]: `ADMISSION_ROUNDS` rounds of `total` prompts
/// each, the median round per mode. Before each round the previous daemon's background work (its spans'
/// export) is let finish ([`settled`]), so it does not fall on the next mode's admissions.
/// Returns admitted and completed rates, the share completed while admitting, and the spread.
async fn admissions_interleaved(total: usize) -> Result<(Rates, Rates, Vec<String>, String)> {
    let (targets, rounds) = in_rounds(ADMISSION_ROUNDS, async |d| {
        let a = admissions(d, total).await?;
        settled(d).await?;
        Ok(a)
    })
    .await?;
    let median_of = |r: &[Admissions], f: fn(&Admissions) -> f64| median(r.iter().map(f));
    let per_mode = |f: fn(&Admissions) -> f64| {
        targets
            .iter()
            .zip(&rounds)
            .map(|(t, r)| (t.mode, median_of(r, f)))
            .collect::<Vec<_>>()
    };
    let during = targets
        .iter()
        .zip(&rounds)
        .map(|(t, r)| {
            format!(
                "{} {:.0} %",
                t.mode.short(),
                median_of(r, |a| a.while_admitting) * 100.0
            )
        })
        .collect();
    let admitted: Vec<Vec<f64>> = rounds
        .iter()
        .map(|r| r.iter().map(|a| a.admitted).collect())
        .collect();
    let spread = spread_against_off(&targets, &admitted, ADMISSION_ROUNDS);
    Ok((
        per_mode(|a| a.admitted),
        per_mode(|a| a.completed),
        during,
        spread,
    ))
}

/// Every selected mode's daemon started at once, then `rounds` rounds of `sample` on each, the
/// modes in turn: a slow spell of the machine falls on every mode. The samples per target, in
/// the targets' order.
async fn in_rounds<T>(
    rounds: usize,
    mut sample: impl AsyncFnMut(&Daemon) -> Result<T>,
) -> Result<(Vec<Target>, Vec<Vec<T>>)> {
    let mut targets = Vec::new();
    for mode in Telemetry::selected() {
        targets.push(Target::start_sink(mode).await?);
    }
    let mut samples: Vec<Vec<T>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (t, s) in targets.iter().zip(samples.iter_mut()) {
            s.push(sample(&t.d).await?);
        }
    }
    Ok((targets, samples))
}

/// The median of a round's samples (the upper one of an even count).
fn median(samples: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = samples.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Waits (up to 10 s) until a daemon and its agents use under 2 ms of CPU in 100 ms: the work
/// its last requests left behind is done.
async fn settled(d: &Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = cpu_of_daemon_and_agents(d.pid())?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_of_daemon_and_agents(d.pid())?;
        let used = (now.0 - last.0) + (now.1 - last.1);
        if used < 2_000_000 {
            return Ok(());
        }
        last = now;
    }
    // Measured anyway, but said: the next mode's round may share the machine with this work.
    eprintln!(
        "daemon {} still busy 10 s after its round; measuring on",
        d.pid()
    );
    Ok(())
}

/// `; medians of N interleaved rounds, each round's ratio: on/off lo-hi, ...` for `samples`
/// (per target, per round), or nothing without an `off` mode.
fn spread_against_off(targets: &[Target], samples: &[Vec<f64>], rounds: usize) -> String {
    let Some(off) = targets.iter().position(|t| t.mode == Telemetry::Off) else {
        return String::new();
    };
    let spread: Vec<String> = targets
        .iter()
        .zip(samples)
        .filter(|(t, _)| t.mode != Telemetry::Off)
        .map(|(t, r)| {
            let ratios: Vec<f64> = r.iter().zip(&samples[off]).map(|(a, b)| a / b).collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            format!("{}/off {lo:.2}-{hi:.2}", t.mode.short())
        })
        .collect();
    if spread.is_empty() {
        return String::new();
    }
    format!(
        "; medians of {rounds} interleaved rounds, each round's ratio: {}",
        spread.join(", ")
    )
}

/// Rounds of `/health` probes per mode, the modes in turn within each round.
const HEALTH_ROUNDS: usize = 5;

/// `/health` throughput per mode in [`in_rounds`]: `HEALTH_ROUNDS` rounds of `total` requests
/// each, the median round per mode. One
/// sample per mode, taken minutes apart, moved the ratio between modes by up to 1.7x from run
/// to run on a quiet machine (BENCHMARKS.md, "Round twenty"). Also returns each round's ratios against `off`, for the spread.
async fn health_interleaved(total: usize) -> Result<(Rates, String)> {
    let (targets, rounds) = in_rounds(HEALTH_ROUNDS, async |d| health(d, total).await).await?;
    let rates = targets
        .iter()
        .zip(&rounds)
        .map(|(t, r)| (t.mode, median(r.iter().copied())))
        .collect::<Vec<_>>();
    let spread = spread_against_off(&targets, &rounds, HEALTH_ROUNDS);
    Ok((rates, spread))
}

/// `off 1 | on 2 | on+plugins 3  (on/off 2.00, on+plugins/off 3.00)`, for the modes measured
/// (`ACPD_LOAD_MODES` may leave some out; the ratios need `off`).
fn rates_against_off(rates: &[(Telemetry, f64)]) -> String {
    let name = |m: Telemetry| match m {
        Telemetry::OnPlugins => "on+plugins",
        m => m.short(),
    };
    let mut out = rates
        .iter()
        .map(|(m, r)| format!("{} {r:.0}", name(*m)))
        .collect::<Vec<_>>()
        .join(" | ");
    if let Some((_, off)) = rates.iter().find(|(m, _)| *m == Telemetry::Off) {
        let ratios: Vec<String> = rates
            .iter()
            .filter(|(m, _)| *m != Telemetry::Off)
            .map(|(m, r)| format!("{}/off {:.2}", name(*m), r / off))
            .collect();
        if !ratios.is_empty() {
            out.push_str(&format!("  ({})", ratios.join(", ")));
        }
    }
    out
}

async fn fanout_section(rep: &mut Report, o: &Opts) -> Result<()> {
    for (sessions, width, name) in [
        (1, o.fanout_width, "1 session x N subscribers"),
        (o.fanout_width, 1, "N sessions x 1 subscriber"),
    ] {
        let mut row = format!("fan-out {name} (N={}), events/s: ", o.fanout_width);
        for mode in Telemetry::selected() {
            let t = Target::start_sink(mode).await?;
            let f = fanout(&t.d, sessions, width, o.fanout_turns, o.fanout_chunks).await?;
            let _ = write!(
                row,
                "| {} {:.0} ({} events, none lost) ",
                mode.label(),
                f.per_sec,
                f.events
            );
        }
        rep.line(row);
    }
    Ok(())
}

/// Whether the hot-function list (`host/link/hot-symbols.txt`) fits the daemon measured: how
/// many of its names the binary defines, against how many a build of the same kind defined
/// when the list was made (`host/link/hot-symbols.made`). Any code change renames some of the
/// linker's local symbols, and a stale list cost up to 2 MiB of warm RSS (BENCHMARKS.md, "Round
/// eleven"): memory figures are quoted with this line.
pub fn hot_list(bin: &std::path::Path) -> String {
    let release = bin
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "release");
    if !release {
        return "hot-function list: not used by this build (release builds only)".into();
    }
    let link = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/link");
    let (Ok(list), Ok(made)) = (
        std::fs::read_to_string(link.join("hot-symbols.txt")),
        std::fs::read_to_string(link.join("hot-symbols.made")),
    ) else {
        return "hot-function list: not checked (skipped: no hot-symbols.txt or .made)".into();
    };
    let nm = match std::process::Command::new("nm")
        .arg("--defined-only")
        .arg(bin)
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            return format!(
                "hot-function list: not checked (skipped: nm failed: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Err(e) => return format!("hot-function list: not checked (skipped: nm: {e})"),
    };
    // The harness's release daemon is the `alloc-count` build (`build_bin`).
    hot_list_verdict(&list, &made, &String::from_utf8_lossy(&nm), "alloc-count")
        .unwrap_or_else(|e| format!("hot-function list: not checked (skipped: {e})"))
}

/// [`hot_list`] of the harness's daemon, worked out once per run (the memory and the soak
/// sections both print it; `nm` of the binary takes a few seconds).
fn hot_list_of_harness_daemon() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| hot_list(crate::acpd_bin()))
}

/// [`hot_list`]'s count: `list` one name a line, `made` lines of `<build> <count>`, `nm` the
/// output of `nm --defined-only` (functions are of kind t, T, w or W). Current when the build
/// defines at least 99 % of what the same kind of build did when the list was made.
pub fn hot_list_verdict(list: &str, made: &str, nm: &str, build: &str) -> Result<String, String> {
    let then = made
        .lines()
        .find_map(|l| l.strip_prefix(build)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .ok_or_else(|| format!("hot-symbols.made has no count for the {build} build"))?;
    let defined: std::collections::HashSet<&str> = nm
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T" | "w" | "W").then_some(name)
        })
        .collect();
    let names = list.lines().count();
    let now = list.lines().filter(|n| defined.contains(n)).count();
    let verdict = if now * 100 >= then * 99 {
        "current"
    } else {
        "STALE: run tests/scripts/hot-symbols.sh before quoting memory figures"
    };
    Ok(format!(
        "hot-function list: {now} of its {names} names in this build, {then} when it was made: {verdict}"
    ))
}

async fn memory_section(rep: &mut Report, o: &Opts) -> Result<()> {
    let mib = |k: u64| k as f64 / 1024.0;
    rep.line(hot_list_of_harness_daemon());
    for mode in Telemetry::selected() {
        let t = Target::start_sink(mode).await?;
        let sessions = if o.leak_prompts >= 1000 { 100 } else { 20 };
        let m = memory(&t, o.leak_prompts, sessions).await?;
        rep.line(format!(
            "RSS MiB ({}): idle {:.1} | {} sessions {:.1} | warm {:.1} | +{} prompts {:.1} ({:+.2}) | +{} more {:.1} ({:+.2})",
            mode.label(),
            mib(m.idle_kib),
            sessions,
            mib(m.sessions_100_kib),
            mib(m.warm_kib),
            m.prompts,
            mib(m.after_kib),
            (m.after_kib as f64 - m.warm_kib as f64) / 1024.0,
            m.prompts,
            mib(m.after2_kib),
            (m.after2_kib as f64 - m.after_kib as f64) / 1024.0
        ));
        let live =
            |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0));
        rep.line(format!(
            "  anon / file MiB ({}): idle {:.1} / {:.1} | warm {:.1} / {:.1}; heap live MiB warm {} end {}; threads idle {} warm {} end {}",
            mode.label(),
            mib(m.idle_split.0),
            mib(m.idle_split.1),
            mib(m.warm_split.0),
            mib(m.warm_split.1),
            live(m.live_warm),
            live(m.live_end),
            m.threads.0,
            m.threads.1,
            m.threads.2,
        ));
        let pages = |b: Option<(u64, u64)>| {
            b.map_or("-".into(), |(m, r)| {
                format!(
                    "{:.1}, of which {:.1} touched while serving",
                    mib(m),
                    mib(r)
                )
            })
        };
        rep.line(format!(
            "  quiet {:.1} s after warm ({}): RSS {:.1} (anon {:.1} / file {:.1}); the binary's pages MiB: idle {}, warm {}",
            QUIET.as_secs_f64(),
            mode.label(),
            mib(m.quiet_kib),
            mib(m.quiet_split.0),
            mib(m.quiet_split.1),
            m.idle_binary.map_or("-".into(), |k| format!("{:.1}", mib(k))),
            pages(m.warm_binary),
        ));
        let per = |a: Option<AllocsPer>| {
            a.map_or("not counted (build without alloc-count)".into(), |a| {
                format!("{:.1} allocations, {:.0} bytes", a.allocs, a.bytes)
            })
        };
        rep.line(format!(
            "  allocations ({}): per prompt {} | per GET /health {}",
            mode.label(),
            per(m.per_prompt),
            per(m.per_health)
        ));
    }
    Ok(())
}

/// `ACPD_LOAD_ONLY=soak`: 100,000 prompts (telemetry and the default plugins on), RSS every
/// 10,000: a plateau or a trend.
async fn soak_section(rep: &mut Report, o: &Opts) -> Result<()> {
    rep.line(hot_list_of_harness_daemon());
    let t = Target::start_sink(Telemetry::OnPlugins).await?;
    let points = soak(&t, o.soak_prompts, o.soak_prompts / 10).await?;
    let mut row = format!(
        "soak ({}), RSS MiB (anon; heap live; journals on disk) by prompts:",
        t.mode.label()
    );
    for p in &points {
        let _ = write!(
            row,
            " | {} {:.1} ({:.1}; {}; {:.0})",
            p.prompts,
            p.rss_kib as f64 / 1024.0,
            p.anon_kib as f64 / 1024.0,
            p.live_bytes
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
            p.journal_bytes as f64 / 1048576.0
        );
    }
    rep.line(row);
    Ok(())
}

async fn export_section(rep: &mut Report, o: &Opts) -> Result<()> {
    for mode in [Telemetry::On, Telemetry::OnPlugins] {
        let t = Target::start(mode).await?;
        let e = export(&t, o.export_rate, o.export_secs).await?;
        rep.line(format!(
            "export ({}): offered {:.0} spans/s for {:.1} s ({} spans, {} per prompt): received {}, dropped {}",
            mode.label(),
            e.offered_per_sec,
            o.export_secs,
            e.spans,
            e.spans_per_prompt,
            e.received,
            e.dropped
        ));
        ensure!(
            e.dropped == 0 && e.received >= e.spans,
            "spans lost at {:.0} spans/s: received {} of {}, dropped {}",
            e.offered_per_sec,
            e.received,
            e.spans,
            e.dropped
        );
    }
    let (offered, dropped) = export_overload(if o.export_secs >= 5.0 { 100 } else { 40 }).await?;
    rep.line(format!(
        "export overload (collector never answers, queue 256): {offered} spans offered, {dropped} counted as dropped"
    ));
    ensure!(dropped > 0, "the drop counter did not move under overload");
    Ok(())
}

async fn startup_section(rep: &mut Report, o: &Opts) -> Result<()> {
    startup(true).await?; // compiles the plugins into the on-disk cache, as any first start does
    for plugins in [false, true] {
        let mut times = Vec::new();
        for _ in 0..o.startups {
            times.push(startup(plugins).await?.as_micros() as u64);
        }
        times.sort_unstable();
        rep.line(format!(
            "start-up exec -> first /health 200 ({}): median {:.1} ms, max {:.1} ms",
            if plugins {
                "default plugins, compiled cache warm"
            } else {
                "no plugins"
            },
            pct(&times, 50.0) as f64 / 1000.0,
            *times.last().unwrap_or(&0) as f64 / 1000.0
        ));
    }
    Ok(())
}

// ---- The agent telemetry gateway ----

/// The demo agent's `service.name`: the sink tells the agent's spans from the daemon's by it.
const DEMO_AGENT_SERVICE: &str = "acpd-demo-agent";

/// The span attribute of `telemetry-rate` spans (a key the safety net never removes).
const RATE_KEY: &str = "demo.rate.index";

/// How often an admission is timed in the gateway section (one POST at a time).
const ADMISSION_EVERY: Duration = Duration::from_millis(10);

/// The daemon for the gateway section: the demo agent exports its own telemetry (acpd points it
/// at the gateway), with a span queue that holds several of its exports' worth, so no loss can
/// come from the agent's own SDK (a full queue there drops silently, uncounted).
fn gateway_config() -> String {
    format!(
        "{}\n[agent.env]\nOTEL_BSP_MAX_QUEUE_SIZE = \"16384\"\n\
         OTEL_BSP_SCHEDULE_DELAY = \"200\"\n",
        bench_limits()
    )
}

/// What [`SpanCounter`] has seen.
#[derive(Debug, Default, Clone)]
pub struct SinkCounts {
    pub requests: u64,
    /// Spans whose resource is the demo agent's, and the others (the daemon's own).
    pub agent_spans: u64,
    pub daemon_spans: u64,
    /// `telemetry-rate` spans carrying the gateway's attribution (`acpd.child.id` and
    /// `acpd.prompt.id`), by prompt id.
    pub rate_spans: HashMap<String, u64>,
    /// `telemetry-rate` spans without that attribution.
    pub rate_unattributed: u64,
    /// Agent spans whose name the redaction safety net masked (a plugin failed).
    pub masked: u64,
    pub undecodable: u64,
}

/// A collector that answers every OTLP/HTTP protobuf export at once and keeps only counts. It
/// decodes the spans, because the gateway section counts the agent's spans and checks their
/// attribution; that costs the harness's CPU, never the daemon's.
pub struct SpanCounter {
    addr: std::net::SocketAddr,
    counts: Arc<Mutex<SinkCounts>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SpanCounter {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn str_attr<'a>(
    attrs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<&'a str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn count_spans(c: &mut SinkCounts, body: &[u8]) -> bool {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        c.undecodable += 1;
        return false;
    };
    c.requests += 1;
    for rs in &req.resource_spans {
        let agent = rs
            .resource
            .as_ref()
            .is_some_and(|r| str_attr(&r.attributes, "service.name") == Some(DEMO_AGENT_SERVICE));
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            if !agent {
                c.daemon_spans += 1;
                continue;
            }
            c.agent_spans += 1;
            if span.name == "[REDACTED]" {
                c.masked += 1;
            }
            if span.attributes.iter().any(|kv| kv.key == RATE_KEY) {
                let child = str_attr(&span.attributes, "acpd.child.id").is_some();
                match str_attr(&span.attributes, "acpd.prompt.id") {
                    Some(p) if child => *c.rate_spans.entry(p.to_owned()).or_default() += 1,
                    _ => c.rate_unattributed += 1,
                }
            }
        }
    }
    true
}

impl SpanCounter {
    pub async fn start() -> Result<SpanCounter> {
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(SinkCounts::default()));
        // Every Export*ServiceResponse without partial success encodes to no bytes.
        let ok = || {
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::<u8>::new(),
            )
                .into_response()
        };
        let c = counts.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let c = c.clone();
                    async move {
                        if count_spans(&mut c.lock().unwrap(), &body) {
                            ok()
                        } else {
                            StatusCode::BAD_REQUEST.into_response()
                        }
                    }
                }),
            )
            .route(
                "/v1/metrics",
                axum::routing::post(move || async move { ok() }),
            )
            .route("/v1/logs", axum::routing::post(move || async move { ok() }));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SpanCounter {
            addr,
            counts,
            server,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counts(&self) -> SinkCounts {
        self.counts.lock().unwrap().clone()
    }

    pub fn rate_spans(&self, prompt: &str) -> u64 {
        let c = self.counts.lock().unwrap();
        c.rate_spans.get(prompt).copied().unwrap_or(0)
    }

    /// Waits until the attributed `telemetry-rate` spans of `prompt` reach `n`, or `within`;
    /// returns how many arrived.
    pub async fn wait_rate_spans(&self, prompt: &str, n: u64, within: Duration) -> u64 {
        let until = Instant::now() + within;
        loop {
            let got = self.rate_spans(prompt);
            if got >= n || Instant::now() >= until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// CPU time (user + system) a process has used so far, all its threads (the exited ones
/// included), from its CPU clock: ns resolution, where /proc's stat counts 10 ms ticks, too
/// coarse for the CPU of one turn.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    use nix::time::{ClockId, clock_gettime};
    let clock = ClockId::pid_cpu_clock_id(nix::unistd::Pid::from_raw(pid as i32))
        .with_context(|| format!("no CPU clock for process {pid}"))?;
    let t = clock_gettime(clock).with_context(|| format!("CPU clock of process {pid}"))?;
    Ok(Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
}

/// `acpd_telemetry_dropped` on `/metrics` for one `acpd_drop_source`, by `signal/stage`.
pub async fn dropped_from(d: &Daemon, source: &str) -> Result<BTreeMap<String, u64>> {
    let text = d.http.get(d.url("/metrics")).send().await?.text().await?;
    let label = |line: &str, key: &str| -> String {
        line.split_once(&format!("{key}=\""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or_else(|| "?".into(), |(v, _)| v.to_owned())
    };
    let source = format!("acpd_drop_source=\"{source}\"");
    let mut out = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("acpd_telemetry_dropped") && l.contains(&source))
    {
        let n = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        let key = format!(
            "{}/{}",
            label(l, "acpd_signal"),
            label(l, "acpd_drop_stage")
        );
        *out.entry(key).or_default() += n;
    }
    Ok(out)
}

/// The sum of a counter's series on `/metrics` (0 when it has none).
pub async fn metric_sum(d: &Daemon, name: &str) -> Result<u64> {
    Ok(crate::metric_total(&d.metrics_text().await?, name, &[]) as u64)
}

/// One `telemetry-rate` turn through the gateway.
#[derive(Debug, Default, Clone)]
pub struct RateRun {
    /// Spans the agent emitted (its own count), over `emit` (first span to last).
    pub spans: u64,
    pub emit: Duration,
    /// The agent's flush at the end confirmed.
    pub flushed: bool,
    /// `telemetry-rate` spans the sink received with the gateway's attribution.
    pub received: u64,
    /// CPU used by the daemon and by the agent child, from the prompt to the last span at the
    /// sink.
    pub daemon_cpu: Duration,
    pub agent_cpu: Duration,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
}

/// Runs `telemetry-rate <rate> <secs>` on `s` and waits for the sink to hold every span the
/// agent reports having emitted (or 30 s); samples the daemon's RSS every 100 ms meanwhile.
async fn rate_run(
    d: &Arc<Daemon>,
    s: &SessionRef,
    sse: &mut Sse,
    sink: &SpanCounter,
    rate: u64,
    secs: f64,
) -> Result<RateRun> {
    let (pid, agent_pid) = (d.pid(), d.child_pid(s).await?);
    let rss_before_kib = rss_kib(pid)?;
    let peak = Arc::new(AtomicU64::new(rss_before_kib));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let (cpu0, agent_cpu0) = (cpu_time(pid)?, cpu_time(agent_pid)?);
    let prompt = d
        .submit(s, &format!("telemetry-rate {rate} {secs}"))
        .await?;
    let within = Duration::from_secs_f64(secs) + Duration::from_secs(30);
    let frames = sse
        .until(within, |f| {
            (f.event == "turn_complete" || f.event == "turn_error")
                && f.data["data"]["promptId"] == prompt.as_str()
        })
        .await?;
    let text = agent_text(&frames);
    ensure!(
        frames.last().is_some_and(|f| f.event == "turn_complete"),
        "telemetry-rate did not complete: {text}"
    );
    let field = |key: &str| -> Result<u64> {
        text.split_once(key)
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {key:?} in {text:?}"))
    };
    let (spans, emit_ms) = (field("emitted ")?, field(" spans in ")?);
    let received = sink
        .wait_rate_spans(&prompt, spans, Duration::from_secs(30))
        .await;
    let (cpu1, agent_cpu1) = (cpu_time(pid)?, cpu_time(agent_pid)?);
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    let rss_after_kib = rss_kib(pid)?;
    Ok(RateRun {
        spans,
        emit: Duration::from_millis(emit_ms),
        flushed: text.contains("(all flushed)"),
        received,
        daemon_cpu: cpu1.saturating_sub(cpu0),
        agent_cpu: agent_cpu1.saturating_sub(agent_cpu0),
        rss_before_kib,
        rss_peak_kib: peak.load(Ordering::Relaxed).max(rss_after_kib),
        rss_after_kib,
    })
}

/// Admission latencies (POST /session/{id}/prompt -> 202, ns, sorted) of `bench 2` prompts on a
/// new session, one at a time every [`ADMISSION_EVERY`] for `span`; its stream is drained
/// alongside, and every admitted turn must complete.
async fn admission_latencies(d: Arc<Daemon>, span: Duration) -> Result<Vec<u64>> {
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    d.turn(&s, &mut sse, "bench 2").await?; // the agent's session, first allocations
    let done = Arc::new(AtomicUsize::new(0));
    let drain = tokio::spawn({
        let done = done.clone();
        async move {
            while let Some(f) = sse.next_within(Duration::from_secs(3600)).await? {
                match f.event.as_str() {
                    "turn_complete" => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    "turn_error" | "client_evicted" => bail!("{}: {}", f.event, f.data),
                    _ => {}
                }
            }
            Err::<(), _>(anyhow!("the event stream ended"))
        }
    });
    let url = d.url(&format!("/session/{}/prompt", s.id));
    let body = json!({"prompt": [{"type": "text", "text": "bench 2"}]});
    let mut tick = tokio::time::interval(ADMISSION_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lat = Vec::new();
    let end = Instant::now() + span;
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        let r = d
            .http
            .post(&url)
            .header("X-Qwen-Client-Id", &s.client_id)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        r.bytes().await?;
        ensure!(status == 202, "admission -> {status}");
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    let until = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < lat.len() {
        if drain.is_finished() || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let completed = done.load(Ordering::Relaxed);
    if drain.is_finished() {
        drain.await??; // the stream failed: its error says why
    } else {
        drain.abort();
    }
    ensure!(
        completed >= lat.len(),
        "admitted turns did not all complete: {completed}/{}",
        lat.len()
    );
    lat.sort_unstable();
    Ok(lat)
}

/// The gateway section's measurements, from one daemon.
#[derive(Debug, Default, Clone)]
pub struct GatewayRun {
    /// The rate turn alone (CPU per span is read from this one).
    pub alone: RateRun,
    /// The same turn again while admissions are timed on another session.
    pub busy: RateRun,
    pub admission_idle: Vec<u64>,
    pub admission_busy: Vec<u64>,
    /// The agent's items lost, by `signal/stage`, over the whole run.
    pub agent_dropped: BTreeMap<String, u64>,
    pub plugin_failures: u64,
    pub sink: SinkCounts,
}

/// The demo agent emits `rate` spans/s for `secs` into acpd's gateway (default plugins on),
/// which forwards to a counting sink: once alone, then again while admissions are timed on
/// another session (after the same admissions timed without that load).
pub async fn gateway(rate: u64, secs: f64) -> Result<GatewayRun> {
    let sink = SpanCounter::start().await?;
    let d = Arc::new(
        bench_daemon()
            .config(&gateway_config())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .start()
            .await?,
    );
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    // Warm-up: the child, its exporter's connection to the gateway, the plugin instances.
    let warm = rate_run(&d, &s, &mut sse, &sink, 1000, 0.2).await?;
    ensure!(
        warm.received == warm.spans && warm.spans > 0,
        "warm-up: {} of {} spans at the sink ({:?})",
        warm.received,
        warm.spans,
        sink.counts()
    );
    let span = Duration::from_secs_f64(secs);
    let admission_idle = admission_latencies(d.clone(), span).await?;
    let alone = rate_run(&d, &s, &mut sse, &sink, rate, secs).await?;
    let timing = tokio::spawn(admission_latencies(d.clone(), span));
    let busy = rate_run(&d, &s, &mut sse, &sink, rate, secs).await?;
    let admission_busy = timing.await??;
    // The agent's metrics and logs are exported on their own clocks: let the last ones land.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(GatewayRun {
        alone,
        busy,
        admission_idle,
        admission_busy,
        agent_dropped: dropped_from(&d, "agent").await?,
        plugin_failures: metric_sum(&d, "acpd_plugin_failures").await?,
        sink: sink.counts(),
    })
}

async fn gateway_section(rep: &mut Report, o: &Opts) -> Result<()> {
    let g = gateway(o.gateway_rate, o.gateway_secs).await?;
    for (name, r) in [("alone", &g.alone), ("with admissions timed", &g.busy)] {
        let per_span = |cpu: Duration| cpu.as_secs_f64() * 1e6 / r.spans.max(1) as f64;
        rep.line(format!(
            "gateway (on + plugins, {name}): agent emitted {} spans in {:.2} s ({:.0}/s, {}); \
             sink received {} attributed | daemon CPU {:.2} s = {:.1} us/span | agent CPU {:.2} s = {:.1} us/span \
             | daemon RSS MiB {:.1} before, {:.1} peak, {:.1} after",
            r.spans,
            r.emit.as_secs_f64(),
            r.spans as f64 / r.emit.as_secs_f64().max(1e-9),
            if r.flushed { "flushed" } else { "flush NOT confirmed" },
            r.received,
            r.daemon_cpu.as_secs_f64(),
            per_span(r.daemon_cpu),
            r.agent_cpu.as_secs_f64(),
            per_span(r.agent_cpu),
            r.rss_before_kib as f64 / 1024.0,
            r.rss_peak_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
        ));
    }
    let dropped: u64 = g.agent_dropped.values().sum();
    let nonzero: BTreeMap<_, _> = g.agent_dropped.iter().filter(|(_, n)| **n > 0).collect();
    rep.line(format!(
        "gateway drops (acpd_drop_source=\"agent\"): {dropped} {:?} | sink: {} agent spans, {} daemon spans, \
         {} rate spans unattributed, {} names masked, {} undecodable | plugin failures {}",
        nonzero,
        g.sink.agent_spans,
        g.sink.daemon_spans,
        g.sink.rate_unattributed,
        g.sink.masked,
        g.sink.undecodable,
        g.plugin_failures
    ));
    let (i, b) = (&g.admission_idle, &g.admission_busy);
    rep.line(format!(
        "gateway admission (POST -> 202, one every {} ms, p50/p99 us): idle {:.0}/{:.0} ({} samples) \
         | under {} spans/s {:.0}/{:.0} ({} samples) | ratio p50 {:.2}, p99 {:.2}",
        ADMISSION_EVERY.as_millis(),
        us(pct(i, 50.0)),
        us(pct(i, 99.0)),
        i.len(),
        o.gateway_rate,
        us(pct(b, 50.0)),
        us(pct(b, 99.0)),
        b.len(),
        pct(b, 50.0) as f64 / pct(i, 50.0).max(1) as f64,
        pct(b, 99.0) as f64 / pct(i, 99.0).max(1) as f64,
    ));
    let expected = (o.gateway_rate as f64 * o.gateway_secs).round() as u64;
    for r in [&g.alone, &g.busy] {
        ensure!(
            r.spans == expected && r.flushed,
            "the agent emitted {} of {expected} spans (flushed: {})",
            r.spans,
            r.flushed
        );
        ensure!(
            r.received == r.spans,
            "the sink received {} of {} attributed agent spans",
            r.received,
            r.spans
        );
    }
    ensure!(
        dropped == 0,
        "the gateway dropped agent items: {:?}",
        g.agent_dropped
    );
    ensure!(
        g.sink.rate_unattributed == 0 && g.sink.undecodable == 0,
        "sink: {:?}",
        g.sink
    );
    Ok(())
}

// ---- The session journal ----

/// A daemon with telemetry and plugins off and the session journal `off`, at its default
/// (`interval`: written before any client gets an event, fdatasynced every 200 ms) or `always`
/// (fdatasynced before any client gets an event).
async fn journal_daemon(mode: &str, limits: &str) -> Result<Daemon> {
    let state = match mode {
        "off" => "[state]\njournal = false\n",
        "always" => "[state]\njournal_fsync = \"always\"\n",
        _ => "",
    };
    bench_daemon()
        .config(&format!(
            "{limits}\n[agent.env]\nOTEL_SDK_DISABLED = \"true\"\n{state}"
        ))
        .env("OTEL_SDK_DISABLED", "true")
        .args(&["--no-plugins"])
        .start()
        .await
}

/// `POST /session/:id/prompt` -> 202, one at a time (each turn ends before the next POST): the
/// admission path, which journals `pending_prompt_added` before it answers.
async fn admission_latency(d: &Daemon, n: usize) -> Result<Vec<u64>> {
    let mut c = Client::open(d).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n + 5 {
        let t0 = Instant::now();
        let id = d.submit(&c.s, "bench 2").await?;
        out.push(t0.elapsed().as_nanos() as u64);
        c.sse.until_turn_end(&id).await?;
    }
    out.drain(..5); // warm-up
    out.sort_unstable();
    Ok(out)
}

/// Bytes in the state directory's journal files.
fn journal_bytes(d: &Daemon) -> u64 {
    std::fs::read_dir(d.state_dir().join("journal"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn journal_section(rep: &mut Report, o: &Opts) -> Result<()> {
    // Journal off, interval and always, one after the other in this run.
    let mut row_adm = String::from("journal admission POST->202 p50/p99 us: ");
    let mut row_evt = String::from("journal @16 sessions, to client p50/p99 us: ");
    for mode in ["off", "interval", "always"] {
        let d = Arc::new(journal_daemon(mode, &bench_limits()).await?);
        let adm = admission_latency(&d, o.overhead_prompts * 2).await?;
        let _ = write!(
            row_adm,
            "| {mode}: {:.0}/{:.0} ",
            us(pct(&adm, 50.0)),
            us(pct(&adm, 99.0))
        );
        let r = overhead(&d, 16, o.overhead_prompts, THINK_MS).await?;
        let _ = write!(
            row_evt,
            "| {mode}: {:.0}/{:.0} ",
            us(pct(&r.to_client, 50.0)),
            us(pct(&r.to_client, 99.0))
        );
    }
    rep.line(row_adm);
    rep.line(row_evt);

    // Restart with many journaled sessions, each with one turn.
    let n = o.journal_sessions;
    let limits = format!(
        "[limits]\nmax_sessions = {m}\nmax_sessions_per_workspace = {m}\n",
        m = n + 16
    );
    let mut d = journal_daemon("interval", &limits).await?;
    let mut events = 0u64;
    for _ in 0..n {
        let mut c = Client::open(&d).await?;
        let id = d.submit(&c.s, "bench 4").await?;
        let frames = c.sse.until_turn_end(&id).await?;
        events += frames.iter().filter(|f| f.id.is_some()).count() as u64;
    }
    d.terminate(WAIT).await?;
    let bytes = journal_bytes(&d);
    let started = Instant::now();
    let d = d.restart().await?;
    let restart = started.elapsed();
    let ws = d.get("/capabilities").await?.body["workspaces"][0]["id"]
        .as_str()
        .context("workspace id")?
        .to_string();
    let listed = d
        .get(&format!("/workspace/{ws}/sessions?size=1000"))
        .await?;
    let listed = listed.body["sessions"].as_array().map_or(0, Vec::len);
    ensure!(
        listed == n.min(1000),
        "{listed} of {n} sessions listed after the restart"
    );
    let empty_started = Instant::now();
    let _empty = journal_daemon("interval", &limits).await?;
    let empty = empty_started.elapsed();
    rep.line(format!(
        "journal restart with {n} journaled sessions ({events} events, {bytes} bytes, {:.0} bytes per 1,000 events with each session's header and metadata): exec -> listening {:.0} ms (empty state directory {:.0} ms)",
        bytes as f64 * 1000.0 / events.max(1) as f64,
        restart.as_secs_f64() * 1000.0,
        empty.as_secs_f64() * 1000.0
    ));
    Ok(())
}

//! One typed configuration, layered: TOML file < `ACPD_*` env < command-line flags.
//!
//! Every layer is merged into one TOML tree before a single typed deserialisation, so an
//! invalid value names its key (`server.port`) whichever layer it came from.

mod layers;

pub use layers::{ConfigError, Override, load};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    pub server: ServerConfig,
    /// Workspaces the daemon serves; the first is the primary one. Empty means the cwd.
    pub workspaces: Vec<PathBuf>,
    pub agent: AgentConfig,
    pub limits: Limits,
    pub telemetry: TelemetryConfig,
    /// `[[plugins]]`, in hook order. Unset: the first-party set built into the binary;
    /// `plugins = []`: none.
    pub plugins: Option<Vec<PluginSpec>>,
    /// `[keys]`: HMAC keys for the plugins' `keyed-hash`, by id; plugins never see them.
    pub keys: BTreeMap<String, KeySpec>,
    pub plugin_host: PluginHostConfig,
    /// `[state]`: what survives a restart (the session journal, the agents' pid records).
    pub state: StateConfig,
    /// The file this configuration was read from (plugin paths are relative to it).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Unique; names the plugin in metrics, logs and /health.
    pub name: String,
    /// A `.wasm` component (relative to the config file), or `builtin:<name>`.
    pub path: String,
    /// Pins the file: a mismatch refuses to load it.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Linear memory cap (default 32 MiB).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Per-call CPU budget: the guest's own execution and the host work it asks for, not time
    /// spent waiting for a core (default 5 ms on the request path, 100 ms per export batch).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Passed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// Where an HMAC key comes from: exactly one of `env`, `file`, `value` (`value` is for demos).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginHostConfig {
    /// Compiled components are cached here (default `$XDG_CACHE_HOME/acpd/plugins`).
    pub cache_dir: Option<PathBuf>,
}

/// `[state]`: the on-disk state that survives a daemon restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The state directory (`--state-dir`, `ACPD_STATE_DIR`). Default `$XDG_STATE_HOME/acpd`,
    /// else `~/.local/state/acpd`. One daemon at a time owns it.
    pub dir: Option<PathBuf>,
    /// The session journal (`ACPD_JOURNAL`): sessions, their metadata and events survive a
    /// restart. false: nothing is journaled (sessions end with the process, as before).
    pub journal: bool,
    /// `interval` (default): each event is written to the OS before any client gets it, and
    /// fdatasynced within `journal_fsync_interval_ms`; `always`: fdatasynced before any client
    /// gets it (docs/JOURNAL.md).
    pub journal_fsync: Fsync,
    pub journal_fsync_interval_ms: u64,
    /// One session's journal: at the cap, its oldest events are compacted away.
    pub journal_max_session_bytes: u64,
    /// Every journal together: at the cap, events are not journaled (logged, counted).
    pub journal_max_total_bytes: u64,
    /// A journal not written for this long is removed at start-up.
    pub journal_retention_days: u64,
    /// At most this many journals are kept at start-up (the most recently written).
    pub journal_max_sessions: usize,
}

/// When journal writes reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Interval,
    Always,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: None,
            journal: true,
            journal_fsync: Fsync::Interval,
            journal_fsync_interval_ms: 200,
            journal_max_session_bytes: 64 << 20,
            journal_max_total_bytes: 2 << 30,
            journal_retention_days: 30,
            journal_max_sessions: 10_000,
        }
    }
}

impl StateConfig {
    /// The directory in use: the configured one, else the XDG default; None only when neither
    /// `XDG_STATE_HOME` nor `HOME` is set.
    pub fn resolved_dir(&self) -> Option<PathBuf> {
        self.dir.clone().or_else(|| {
            std::env::var_os("XDG_STATE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|h| PathBuf::from(h).join(".local/state"))
                })
                .map(|base| base.join("acpd"))
        })
    }
}

/// `[telemetry]`: OTLP export and the embedded trace view. Standard `OTEL_*` env vars also
/// apply and win over this section (the exporters read them directly).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// false: no spans, metrics or OTel logs at all (also `OTEL_SDK_DISABLED=true`).
    pub enabled: bool,
    /// OTLP endpoint (HTTP: base URL, `/v1/<signal>` is appended; gRPC: `http://host:4317`).
    /// Unset and no `OTEL_EXPORTER_OTLP_*ENDPOINT` env: nothing leaves the process.
    pub endpoint: Option<String>,
    /// `grpc`, `http/protobuf` (default) or `http/json`.
    pub protocol: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// Per-export timeout (the exporter's only bound; `OTEL_EXPORTER_OTLP_TIMEOUT` wins).
    pub timeout_ms: Option<u64>,
    pub service_name: Option<String>,
    /// All three signals are flushed in parallel within this deadline at shutdown.
    pub shutdown_timeout_ms: u64,
    /// How often spans are batched out (`OTEL_BSP_SCHEDULE_DELAY` wins).
    pub span_delay_ms: u64,
    /// How often metrics are pushed over OTLP (`OTEL_METRIC_EXPORT_INTERVAL` wins).
    pub metric_interval_ms: Option<u64>,
    /// `_meta` keys that carry the trace context into the agent (root W3C keys + Qwen's).
    pub meta_keys: Vec<String>,
    /// The trace view keeps this many recent traces, each up to `view_spans_per_trace` spans.
    pub view_traces: usize,
    pub view_spans_per_trace: usize,
    /// Agents export their telemetry to the daemon (a loopback OTLP endpoint, each child with
    /// its own credential): it passes the enrichment and redaction plugins, shows in the trace
    /// view and goes on to the collector. false: agents get no telemetry endpoint from acpd.
    pub agent_ingest: bool,
    /// With a collector configured, agents export straight to it, past the plugins: their
    /// telemetry is NOT redacted. Off by default.
    pub agent_direct: bool,
    /// Record prompt text (`gen_ai.input.messages`) and tool arguments
    /// (`gen_ai.tool.call.arguments`) on spans. Off by default: content is the user's; turn it
    /// on with a redaction plugin in place.
    pub capture_content: bool,
    /// Trace `GET /health` (probes are always counted in `http.server.request.duration`).
    pub trace_probes: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            timeout_ms: None,
            service_name: None,
            shutdown_timeout_ms: 5000,
            span_delay_ms: 1000,
            metric_interval_ms: None,
            meta_keys: [
                "traceparent",
                "tracestate",
                "baggage",
                "qwen.telemetry.traceparent",
                "qwen.telemetry.tracestate",
            ]
            .map(String::from)
            .to_vec(),
            view_traces: 200,
            view_spans_per_trace: 2000,
            agent_ingest: true,
            agent_direct: false,
            capture_content: false,
            trace_probes: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub port: u16,
    pub hostname: String,
    pub token: Option<String>,
    /// Also guard /health and /capabilities with the token.
    pub require_auth: bool,
    pub allow_origin: Vec<String>,
    pub max_body_bytes: usize,
    /// The CPU slice the daemon's threads ask the kernel for, in µs (Linux 6.12+; 100..=100000,
    /// 0: the kernel's default). Short, so a request or an agent's line that wakes the daemon
    /// preempts a CPU-burning agent at once instead of waiting out its slice; the agents keep
    /// their share of the CPU. See `crate::sched`.
    pub cpu_slice_us: u64,
    /// The round-robin real-time priority of the daemon's runtime threads (1..=99; 0: off),
    /// applied where the daemon may (root, `CAP_SYS_NICE`, an `RLIMIT_RTPRIO`) and skipped
    /// with a log line where it may not. A woken daemon thread then preempts a burning agent
    /// at once even on kernels that would make it wait for their tick; while the daemon uses
    /// over half a core its threads go fair. Agents and the daemon's other threads stay fair.
    /// See `crate::sched::realtime`.
    pub realtime_priority: u8,
    /// The async runtime's worker threads (`ACPD_WORKER_THREADS`; 1..=1024; 0, the default:
    /// tokio's, one per CPU unless `TOKIO_WORKER_THREADS` says otherwise). One costs the daemon
    /// about a quarter less CPU per turn: with two, a task requeued during a poll wakes the
    /// other worker, about three times a turn. But one thread serves every session, so the
    /// tail at 64 busy sessions and the requests a second the daemon can take are worse
    /// (BENCHMARKS.md, "Round eighteen"). One suits a daemon that shares a small machine with
    /// its agents and serves a few sessions at a time.
    pub worker_threads: usize,
}

impl ServerConfig {
    pub fn cpu_slice(&self) -> Option<std::time::Duration> {
        (self.cpu_slice_us > 0).then(|| std::time::Duration::from_micros(self.cpu_slice_us))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildScope {
    /// One child per workspace, shared by its sessions (like `qwen serve`).
    Workspace,
    /// One child per session: isolation, no head-of-line blocking between sessions.
    Session,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's command line; unset = the built-in demo agent (`acpd demo-agent`).
    pub command: Option<String>,
    pub scope: ChildScope,
    /// Warm, initialised children kept ready per workspace (session scope only).
    pub pool: usize,
    /// Extra environment for the child, applied after the daemon's secrets are removed.
    pub env: BTreeMap<String, String>,
    /// Further variables never passed to the child (on top of acpd's own secrets).
    pub env_remove: Vec<String>,
    pub init_timeout_ms: u64,
    /// Deadline for `session/new` and `session/load` (agents connect MCP servers first).
    pub session_timeout_ms: u64,
    /// A turn that has not ended after this long is cancelled.
    pub turn_timeout_secs: u64,
    /// How long a cancelled turn may take to answer `cancelled` before it is ended for it.
    pub cancel_grace_ms: u64,
    /// Shutdown: after stdin is closed, wait this long before SIGTERM, then as long again before SIGKILL.
    pub stop_grace_ms: u64,
    /// Crash-loop backoff ceiling.
    pub restart_backoff_max_ms: u64,
    /// The longest line (one JSON-RPC message) the agent may write; a longer one ends its
    /// connection. Generous: messages carry whole files.
    pub max_line_bytes: usize,
    /// Switch on the known agents' own telemetry (Qwen Code, Gemini CLI, Claude Code, and the
    /// OTEL_*_EXPORTER switches), exported through acpd's gateway. Off: each agent's own
    /// settings decide.
    pub telemetry: bool,
    /// Scheduling niceness the agent starts with (0..=19, set between fork and exec). Agents
    /// burn CPU between turns; a nicer agent leaves the daemon's control plane (admission,
    /// /health, event delivery) responsive on a machine they share, while the agent keeps all
    /// the CPU the daemon does not use. 0: the daemon's own priority.
    pub nice: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_sessions_per_workspace: usize,
    /// Running prompt included.
    pub max_pending_prompts_per_session: usize,
    pub permission_timeout_secs: u64,
    /// Events a session keeps in memory for `Last-Event-ID` replay.
    pub event_ring: usize,
    /// ...and their bytes at most.
    pub event_ring_bytes: usize,
    /// The byte bound while the session's events are journaled: older replays read the journal.
    /// Small by default (about 80 typical events): reading 370 events back from the journal
    /// takes about 50 us, while every busy session holds its ring (BENCHMARKS.md, "Round ten").
    pub journaled_event_ring_bytes: usize,
    pub subscriber_queue_frames: usize,
    pub subscriber_queue_bytes: usize,
    pub max_subscribers_per_session: usize,
    pub heartbeat_secs: u64,
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            port: 4170,
            hostname: "127.0.0.1".into(),
            token: None,
            require_auth: false,
            allow_origin: Vec::new(),
            max_body_bytes: 10 * 1024 * 1024,
            cpu_slice_us: 100,
            realtime_priority: 1,
            worker_threads: 0,
        }
    }
}

/// The agents' default niceness: see BENCHMARKS.md ("Responsive under agent load") for the
/// figures that chose it.
pub const DEFAULT_AGENT_NICE: i32 = 10;

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            command: None,
            scope: ChildScope::Workspace,
            pool: 0,
            env: BTreeMap::new(),
            env_remove: Vec::new(),
            init_timeout_ms: 60_000,
            session_timeout_ms: 120_000,
            turn_timeout_secs: 1800,
            cancel_grace_ms: 30_000,
            stop_grace_ms: 1_500,
            restart_backoff_max_ms: 30_000,
            max_line_bytes: 64 << 20,
            telemetry: false,
            nice: DEFAULT_AGENT_NICE,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_sessions_per_workspace: 32,
            max_pending_prompts_per_session: 5,
            permission_timeout_secs: 300,
            event_ring: 8000,
            event_ring_bytes: 4 * 1024 * 1024,
            journaled_event_ring_bytes: 32 * 1024,
            subscriber_queue_frames: 256,
            subscriber_queue_bytes: 2 * 1024 * 1024,
            max_subscribers_per_session: 64,
            heartbeat_secs: 15,
            shutdown_timeout_secs: 10,
        }
    }
}

impl Config {
    /// Checks what types cannot: cross-field rules and ranges. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: &str| Err(ConfigError::new(key, msg));
        if self.server.hostname.trim().is_empty() {
            return bad("server.hostname", "must not be empty");
        }
        if self
            .server
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return bad("server.token", "must not be empty");
        }
        if self.server.token.is_none() && !is_loopback_host(&self.server.hostname) {
            return bad(
                "server.token",
                "a token is required when binding to a non-loopback address (--token or ACPD_TOKEN)",
            );
        }
        if self.server.require_auth && self.server.token.is_none() {
            return bad("server.token", "--require-auth needs a token");
        }
        if self
            .agent
            .command
            .as_deref()
            .is_some_and(|c| shlex::split(c).is_none_or(|words| words.is_empty()))
        {
            return bad("agent.command", "not a valid command line");
        }
        if let Some(p) = &self.telemetry.protocol
            && !["grpc", "http/protobuf", "http/json"].contains(&p.as_str())
        {
            return bad(
                "telemetry.protocol",
                "must be grpc, http/protobuf or http/json",
            );
        }
        if self.server.cpu_slice_us != 0 && !(100..=100_000).contains(&self.server.cpu_slice_us) {
            // The kernel's range (it would clamp silently).
            return bad("server.cpu_slice_us", "must be 0 or between 100 and 100000");
        }
        if self.server.realtime_priority > 99 {
            return bad("server.realtime_priority", "must be between 0 and 99");
        }
        if self.server.worker_threads > 1024 {
            return bad(
                "server.worker_threads",
                "must be between 0 (one per CPU) and 1024",
            );
        }
        if !(0..=19).contains(&self.agent.nice) {
            // Below 0 needs privileges the daemon should not have.
            return bad("agent.nice", "must be between 0 and 19");
        }
        if self.agent.pool > 0 && self.agent.scope != ChildScope::Session {
            return bad("agent.pool", "warm pools need agent.scope = \"session\"");
        }
        for (key, v) in [
            ("limits.max_sessions", self.limits.max_sessions),
            (
                "limits.max_sessions_per_workspace",
                self.limits.max_sessions_per_workspace,
            ),
            (
                "limits.max_pending_prompts_per_session",
                self.limits.max_pending_prompts_per_session,
            ),
            ("limits.event_ring", self.limits.event_ring),
            ("limits.event_ring_bytes", self.limits.event_ring_bytes),
            (
                "limits.subscriber_queue_frames",
                self.limits.subscriber_queue_frames,
            ),
            (
                "limits.subscriber_queue_bytes",
                self.limits.subscriber_queue_bytes,
            ),
            (
                "limits.max_subscribers_per_session",
                self.limits.max_subscribers_per_session,
            ),
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("agent.max_line_bytes", self.agent.max_line_bytes),
            ("telemetry.view_traces", self.telemetry.view_traces),
            (
                "state.journal_max_sessions",
                self.state.journal_max_sessions,
            ),
            (
                "telemetry.view_spans_per_trace",
                self.telemetry.view_spans_per_trace,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        for (key, v) in [
            ("agent.init_timeout_ms", self.agent.init_timeout_ms),
            ("agent.session_timeout_ms", self.agent.session_timeout_ms),
            ("agent.turn_timeout_secs", self.agent.turn_timeout_secs),
            (
                "limits.permission_timeout_secs",
                self.limits.permission_timeout_secs,
            ),
            ("limits.heartbeat_secs", self.limits.heartbeat_secs),
            (
                "telemetry.shutdown_timeout_ms",
                self.telemetry.shutdown_timeout_ms,
            ),
            (
                "state.journal_fsync_interval_ms",
                self.state.journal_fsync_interval_ms,
            ),
            (
                "state.journal_retention_days",
                self.state.journal_retention_days,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be greater than 0 (every wait has a deadline)");
            }
        }
        if self.state.journal_max_session_bytes < 64 * 1024 {
            return bad("state.journal_max_session_bytes", "must be at least 65536");
        }
        if self.state.journal_max_total_bytes < 64 * 1024 {
            return bad("state.journal_max_total_bytes", "must be at least 65536");
        }
        Ok(())
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

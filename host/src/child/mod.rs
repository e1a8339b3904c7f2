//! Agent child processes: spawn (own process group, workspace cwd, scrubbed env), watch for
//! exit, forward stderr to logs, and stop (close stdin -> SIGTERM group -> SIGKILL group). No
//! agent outlives the daemon: each dies with it (`spawner`), and what a crashed daemon still left
//! running is stopped by the next one (`leftovers`).

mod backoff;
pub mod command;
mod env;
pub mod leftovers;
pub mod reap;
pub mod spawner;
mod stat;

pub use backoff::Backoff;
pub use command::SpawnFailure;
pub use env::child_env;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

use crate::telemetry::sanitize::sanitize;
use crate::telemetry::semconv::*;
use crate::telemetry::{metrics, propagation, spans};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

const STDERR_TAIL: usize = 20;
const STDERR_LINE_MAX: usize = 8192;

#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Scheduling niceness for the process (`agent.nice`); 0 leaves the daemon's.
    pub nice: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The daemon asked for this exit (shutdown, session close); false means a crash.
    pub expected: bool,
}

/// A running agent process (cheap to clone). Dropping it does not stop the process: call `stop`.
#[derive(Clone)]
pub struct ChildProc {
    pub id: String,
    pub pid: u32,
    exit: watch::Receiver<Option<ExitInfo>>,
    stopping: Arc<AtomicBool>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The trace context of the turn this child is running, for its stderr log records.
    turn: Arc<Mutex<Option<Context>>>,
}

static NEXT_CHILD: AtomicU64 = AtomicU64::new(1);

/// Spawns the agent under a `child.spawn` span (a child of the current context), whose trace
/// context the process gets as `TRACEPARENT`/`TRACESTATE`.
pub fn spawn(spec: &SpawnSpec) -> std::io::Result<(ChildProc, ChildStdin, ChildStdout)> {
    let exe = std::path::Path::new(&spec.program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let span = spans::start(
        "child.spawn",
        SpanKind::Internal,
        &Context::current(),
        vec![KeyValue::new(PROCESS_EXECUTABLE_NAME, exe.clone())],
    );
    let result = spawn_process(spec, &span);
    match &result {
        Ok((c, _, _)) => {
            spans::set(&span, KeyValue::new(PROCESS_PID, i64::from(c.pid)));
            spans::set(&span, KeyValue::new(CHILD_ID, c.id.clone()));
            // The `child` hook: enrichment for the lifecycle span, and for everything the
            // child's own telemetry sends through the gateway.
            if let Some(set) = crate::plugins::current()
                && set.has(crate::plugins::Hook::Child)
            {
                let facts = [
                    (CHILD_EVENT, "spawn".into()),
                    (CHILD_ID, c.id.clone().into()),
                    (PROCESS_PID, i64::from(c.pid).into()),
                    (PROCESS_EXECUTABLE_NAME, exe.clone().into()),
                ];
                let added = set.observe(crate::plugins::Hook::Child, &facts);
                for kv in &added {
                    spans::set(&span, kv.clone());
                }
                if let Some(g) = crate::gateway::current() {
                    g.enrich_child(&c.id, added);
                }
            }
            metrics()
                .child_lifecycle
                .add(1, &[KeyValue::new(CHILD_EVENT, "spawn")]);
            let _g = span.clone().attach();
            tracing::info!(name: "acpd.child.spawn", target: "acpd::child", { "acpd.child.id" = %c.id, "process.pid" = i64::from(c.pid), "process.executable.name" = %exe, cwd = %spec.cwd.display() }, "agent child spawned");
        }
        Err(e) => spans::fail(&span, format!("spawn failed: {e}")),
    }
    spans::end(&span);
    result
}

fn spawn_process(
    spec: &SpawnSpec,
    span: &Context,
) -> std::io::Result<(ChildProc, ChildStdin, ChildStdout)> {
    let id = format!("child-{}", NEXT_CHILD.fetch_add(1, Ordering::Relaxed));
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .envs(propagation::env(span))
        .envs(gateway_credentials(spec, &id))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own group: signals reach the agent's own children too, and a Ctrl-C on the
        // daemon's terminal does not hit the agent before the daemon drains it.
        .process_group(0)
        .kill_on_drop(true);
    spawner::die_with_daemon(&mut cmd, spec.nice);
    // Registered before the orphan reaper can look (see `reap`).
    let mut spawned = reap::lock();
    let mut child = spawner::spawn(cmd).inspect_err(|_| {
        if let Some(g) = crate::gateway::current() {
            g.forget_child(&id);
        }
    })?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("child exited at spawn"))?;
    reap::register(&mut spawned, pid);
    drop(spawned);
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin pipe"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let stderr = child.stderr.take();
    let recorded = leftovers::record(pid, &spec.program);

    let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let turn: Arc<Mutex<Option<Context>>> = Arc::default();
    if let Some(stderr) = stderr {
        let tail = stderr_tail.clone();
        let turn = turn.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr);
            let mut buf = Vec::new();
            // Bounded line reads: an agent printing a huge line cannot grow our memory.
            while let Ok(n) = read_bounded_line(&mut lines, &mut buf, STDERR_LINE_MAX).await {
                if n == 0 {
                    break;
                }
                let line = sanitize(String::from_utf8_lossy(&buf).trim_end());
                let cx = turn.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let _g = cx.map(Context::attach);
                tracing::info!(name: "acpd.child.stderr", target: "acpd::child::stderr", { "acpd.child.id" = %id }, "{line}");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
    }

    let (exit_tx, exit_rx) = watch::channel(None);
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            reap::forget(pid);
            // The leader is gone; whatever it left in its group (tools, MCP servers) has no
            // one to serve and would outlive the daemon: stop it, crash or not, and reap it
            // before the exit is reported, so a stopped agent leaves no zombie either.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            reap::group(pid, GROUP_REAP).await;
            if let Some(r) = recorded {
                r.remove();
            }
            let expected = stopping.load(Ordering::Acquire);
            let info = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitInfo {
                        code: s.code(),
                        signal: s.signal(),
                        expected,
                    }
                }
                Err(_) => ExitInfo {
                    code: None,
                    signal: None,
                    expected,
                },
            };
            metrics().child_lifecycle.add(
                1,
                &[
                    KeyValue::new(CHILD_EVENT, "exit"),
                    KeyValue::new(CHILD_EXPECTED, expected),
                ],
            );
            let (code, signal) = (
                i64::from(info.code.unwrap_or(-1)),
                i64::from(info.signal.unwrap_or(0)),
            );
            if expected {
                tracing::info!(name: "acpd.child.exit", target: "acpd::child", { "acpd.child.id" = %id, "process.exit.code" = code, "acpd.process.signal" = signal, "acpd.child.expected" = true }, "agent child exited");
            } else {
                tracing::warn!(name: "acpd.child.exit", target: "acpd::child", { "acpd.child.id" = %id, "process.exit.code" = code, "acpd.process.signal" = signal, "acpd.child.expected" = false }, "agent child exited unexpectedly");
            }
            let _ = exit_tx.send(Some(info));
            // Its credential goes after a grace: what it sent just before exiting may still be
            // on its way in.
            if let Some(g) = crate::gateway::current() {
                tokio::time::sleep(CREDENTIAL_GRACE).await;
                g.forget_child(&id);
            }
        });
    }
    Ok((
        ChildProc {
            id,
            pid,
            exit: exit_rx,
            stopping,
            stderr_tail,
            turn,
        },
        stdin,
        stdout,
    ))
}

/// How long the exit of an agent waits for its killed process group to be reaped.
const GROUP_REAP: Duration = Duration::from_secs(1);

/// How long a child's telemetry credential outlives the child.
const CREDENTIAL_GRACE: Duration = Duration::from_secs(2);

/// The child's own telemetry credential, when its environment points it at the gateway (an
/// operator's `[agent.env]` may send it elsewhere, and then it gets none).
fn gateway_credentials(spec: &SpawnSpec, child_id: &str) -> Vec<(String, String)> {
    let Some(g) = crate::gateway::current() else {
        return Vec::new();
    };
    let ours = spec
        .env
        .iter()
        .any(|(k, v)| k == "OTEL_EXPORTER_OTLP_ENDPOINT" && v == g.endpoint());
    if !ours {
        return Vec::new();
    }
    g.credentials(child_id, &crate::bridge::workspace_id(&spec.cwd))
}

async fn read_bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    buf.clear();
    let mut total = 0;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

impl ChildProc {
    /// Attributes this child's stderr lines to a running turn (None between turns).
    pub fn set_turn(&self, cx: Option<Context>) {
        *self.turn.lock().unwrap_or_else(|p| p.into_inner()) = cx;
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    pub fn is_alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                return ExitInfo {
                    code: None,
                    signal: None,
                    expected: self.stopping.load(Ordering::Acquire),
                };
            }
        }
    }

    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Marks the coming exit as expected, so it is not reported as a crash.
    pub fn expect_exit(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn signal_group(&self, signal: Signal) {
        // ESRCH (the group is gone) is the normal outcome late in a stop.
        let _ = killpg(Pid::from_raw(self.pid as i32), signal);
    }

    /// Stops the process after its stdin has been closed by the caller: wait `grace`, SIGTERM
    /// the group, wait `grace`, SIGKILL the group. Bounded by about 2 x grace + 1 s.
    pub async fn stop(&self, grace: Duration) -> ExitInfo {
        self.expect_exit();
        if let Ok(info) = tokio::time::timeout(grace, self.exited()).await {
            self.signal_group(Signal::SIGKILL); // leftovers of the group, if any
            return info;
        }
        self.signal_group(Signal::SIGTERM);
        if let Ok(info) = tokio::time::timeout(grace, self.exited()).await {
            self.signal_group(Signal::SIGKILL);
            return info;
        }
        self.signal_group(Signal::SIGKILL);
        tokio::time::timeout(Duration::from_secs(1), self.exited())
            .await
            .unwrap_or(ExitInfo {
                code: None,
                signal: Some(9),
                expected: true,
            })
    }
}

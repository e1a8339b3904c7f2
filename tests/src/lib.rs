//! End-to-end test harness: starts the real `acpd` binary (which spawns the real demo agent
//! as a child process speaking ACP over pipes) on 127.0.0.1 with a free port, and talks to it
//! over HTTP and SSE. Every wait has a deadline.

pub mod guests;
pub mod load;
pub mod mock_llm;
pub mod otlp;
pub mod plugin_checks;
pub mod responsive;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Default deadline for one awaited event.
pub const WAIT: Duration = Duration::from_secs(20);

/// Path of the `acpd` binary, built once per test process (same profile as the tests).
/// This package's directory in the checkout being tested. `cargo test` sets it at run time; the
/// compile-time value can name another checkout that shared the build cache (and may be gone).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Path of the `acpd` binary, built once per test process; or `$ACPD_BENCH_BIN`, a binary built
/// before, so two builds can be measured in turn within one hour (BENCHMARKS.md, "How to run").
pub fn acpd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("ACPD_BENCH_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build_bin("acpd", "acpd"),
    })
}

/// Path of the standalone `acpd-demo-agent` binary, built once per test process.
pub fn demo_agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("acpd-demo-agent", "acpd-demo-agent"))
}

/// Path of this package's `floor-daemon` binary (the load harness's paced floor), built once
/// per test process.
pub fn floor_daemon_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("acpd-tests", "floor-daemon"))
}

/// Builds a workspace binary with the tests' own cargo and profile; returns its path.
fn build_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q", "-p", package, "--bin", bin]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
        // The benchmarks' daemon counts its allocations (`acpd_alloc_*` on /metrics): the
        // load harness reports them per prompt. Counting costs a few ns per allocation
        // (BENCHMARKS.md, "Round fourteen": 1.3-1.5 % of the daemon's CPU on the prompt path).
        if package == "acpd" {
            cmd.args(["--features", "alloc-count"]);
        }
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p {package} failed");
    dir.join(bin)
}

#[derive(Clone)]
pub struct DaemonBuilder {
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    files: Vec<(String, String)>,
}

impl DaemonBuilder {
    /// An `acpd.toml` (written next to, not inside, the workspace) passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.into());
        self
    }

    /// Extra `acpd serve` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Exports the daemon's telemetry to an in-test receiver, with short batch and metric
    /// intervals so a test sees its items quickly.
    pub fn exporting_to(self, rx: &otlp::Receiver) -> Self {
        self.env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// A file created in the workspace before start (path relative to it).
    pub fn file(mut self, rel: &str, content: &str) -> Self {
        self.files.push((rel.into(), content.into()));
        self
    }

    pub async fn start(self) -> Result<Daemon> {
        let workspace = tempfile::tempdir()?;
        for (rel, content) in &self.files {
            let p = workspace.path().join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, content)?;
        }
        let config_dir = tempfile::tempdir()?;
        self.launch(workspace, config_dir).await
    }

    /// Starts `acpd` on an existing workspace and config/state directory (a restart).
    async fn launch(
        self,
        workspace: tempfile::TempDir,
        config_dir: tempfile::TempDir,
    ) -> Result<Daemon> {
        let ws = workspace.path().canonicalize()?;
        let mut cmd = Command::new(acpd_bin());
        cmd.arg("serve")
            .arg("--port")
            .arg("0")
            .arg("--workspace")
            .arg(&ws);
        if let Some(toml) = &self.config {
            let path = config_dir.path().join("acpd.toml");
            std::fs::write(&path, toml)?;
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.args);
        // Each daemon its own state directory (the session journal), unless the test sets one.
        cmd.env("XDG_STATE_HOME", config_dir.path().join("state"));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("ACPD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawn acpd")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let stdout_bytes = Arc::new(Mutex::new(Vec::new()));
        {
            let out = stdout_bytes.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stdout);
                let mut buf = [0u8; 4096];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut addr_tx = Some(addr_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.strip_prefix("acpd listening on http://")
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(rest.trim().to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = tokio::time::timeout(WAIT, addr_rx)
            .await
            .map_err(|_| {
                anyhow!(
                    "acpd did not report its address in time; log: {:?}",
                    log.lock().unwrap()
                )
            })?
            .map_err(|_| {
                anyhow!(
                    "acpd exited before listening; log: {:?}",
                    log.lock().unwrap()
                )
            })?;
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("port")?;
        Ok(Daemon {
            child,
            base: format!("http://{addr}"),
            port,
            workspace,
            _config_dir: config_dir,
            ws_path: ws,
            log,
            stdout: stdout_bytes,
            http: reqwest::Client::builder().timeout(WAIT).build()?,
            builder: self,
        })
    }
}

pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub workspace: tempfile::TempDir,
    _config_dir: tempfile::TempDir,
    /// Canonical workspace path.
    pub ws_path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    pub http: reqwest::Client,
    /// How it was started, for [`Daemon::restart`].
    builder: DaemonBuilder,
}

#[derive(Debug, Clone)]
pub struct SessionRef {
    pub id: String,
    pub client_id: String,
}

/// A JSON response: status, selected headers and body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Daemon {
    /// The `--config` file, when the daemon was started with one (rewrite it, then reload).
    pub fn config_path(&self) -> PathBuf {
        self._config_dir.path().join("acpd.toml")
    }

    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            files: Vec::new(),
        }
    }

    pub async fn start() -> Result<Daemon> {
        Self::builder().start().await
    }

    /// The Prometheus text of `GET /metrics` (read it with [`metric_total`]).
    pub async fn metrics_text(&self) -> Result<String> {
        let r = self.http.get(self.url("/metrics")).send().await;
        Ok(r.map_err(|e| self.unreachable(e))?.text().await?)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("daemon running")
    }

    /// Whether the daemon still runs, or how it ended (read from `/proc` without reaping it),
    /// with the last lines of its log.
    pub fn fate(&self) -> String {
        let state = match self.child.id() {
            Some(pid) => process_fate(pid),
            None => "was reaped".to_string(),
        };
        let log = self.log();
        let tail = &log[log.len().saturating_sub(20)..];
        format!(
            "the daemon {state}; its last log lines:\n{}",
            tail.join("\n")
        )
    }

    /// A request's failure to reach the daemon, with what became of it: a flake in CI is then
    /// diagnosable from its output alone.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::Error::new(e).context(self.fate())
    }

    /// The daemon's stderr lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Everything the daemon wrote to stdout (must stay empty).
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Resp> {
        let r = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Resp> {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    /// POST with the session's client id header.
    pub async fn post_as(&self, s: &SessionRef, path: &str, body: Value) -> Result<Resp> {
        self.send(
            self.http
                .post(self.url(path))
                .header("X-Qwen-Client-Id", &s.client_id)
                .json(&body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<Resp> {
        self.send(self.http.delete(self.url(path))).await
    }

    /// `POST /session` with `body`; fails unless 200.
    pub async fn create_session_with(&self, body: Value) -> Result<SessionRef> {
        let r = self.post("/session", body).await?;
        if r.status != 200 {
            bail!("POST /session -> {}: {}", r.status, r.body);
        }
        Ok(SessionRef {
            id: r.body["sessionId"]
                .as_str()
                .context("sessionId")?
                .to_string(),
            client_id: r.body["clientId"].as_str().context("clientId")?.to_string(),
        })
    }

    /// A new (thread-scoped) session.
    pub async fn create_session(&self) -> Result<SessionRef> {
        self.create_session_with(json!({"sessionScope": "thread"}))
            .await
    }

    /// `POST /session/:id/prompt` with one text block; returns the response (202 expected).
    pub async fn prompt(&self, s: &SessionRef, text: &str) -> Result<Resp> {
        self.post_as(
            s,
            &format!("/session/{}/prompt", s.id),
            json!({"prompt": [{"type": "text", "text": text}]}),
        )
        .await
    }

    /// Posts `text` on `s`: its prompt id once admitted (202), an error otherwise.
    pub async fn submit(&self, s: &SessionRef, text: &str) -> Result<String> {
        let r = self.prompt(s, text).await?;
        if r.status != 202 {
            bail!("prompt -> {}: {}", r.status, r.body);
        }
        Ok(r.body["promptId"].as_str().context("promptId")?.to_string())
    }

    /// [`Daemon::submit`]s `text` and reads `sse` to the end of its turn: the prompt's id and
    /// the turn's frames.
    pub async fn turn(
        &self,
        s: &SessionRef,
        sse: &mut Sse,
        text: &str,
    ) -> Result<(String, Vec<Frame>)> {
        let id = self.submit(s, text).await?;
        let frames = sse.until_turn_end(&id).await?;
        Ok((id, frames))
    }

    /// Opens the session's SSE stream. `last_event_id`/`epoch` set the replay headers.
    pub async fn events(
        &self,
        s: &SessionRef,
        last_event_id: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<Sse> {
        let mut req = self
            .http
            .get(self.url(&format!("/session/{}/events", s.id)))
            .header("X-Qwen-Client-Id", &s.client_id);
        // The stream is long-lived: no overall request timeout; each read has its own deadline.
        req = req.timeout(Duration::from_secs(3600));
        if let Some(n) = last_event_id {
            req = req.header("Last-Event-ID", n.to_string());
        }
        if let Some(e) = epoch {
            req = req.header("X-Qwen-Event-Epoch", e);
        }
        let r = req.send().await.map_err(|e| self.unreachable(e))?;
        if r.status() != 200 {
            let status = r.status();
            bail!("events -> {status}: {}", r.text().await.unwrap_or_default());
        }
        Ok(Sse::new(r))
    }

    /// The agent child's pid as reported by `GET /session/:id`.
    pub async fn child_pid(&self, s: &SessionRef) -> Result<u32> {
        let r = self.get(&format!("/session/{}", s.id)).await?;
        r.body["child"]["pid"]
            .as_u64()
            .map(|p| p as u32)
            .context(format!("no child pid in {}", r.body))
    }

    /// The daemon's state directory (its session journal, its agents' pid records).
    pub fn state_dir(&self) -> PathBuf {
        self._config_dir.path().join("state").join("acpd")
    }

    /// SIGKILLs the daemon (no shutdown of any kind) and reaps it.
    pub async fn kill(&mut self) -> Result<std::process::ExitStatus> {
        signal(self.pid(), nix::sys::signal::Signal::SIGKILL)?;
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .map_err(|_| anyhow!("acpd did not die on SIGKILL"))?
            .map_err(Into::into)
    }

    /// Starts the daemon again, as it was started, on the same workspace and state directory,
    /// once the previous process has exited (after [`Daemon::terminate`] or [`Daemon::kill`]).
    pub async fn restart(self) -> Result<Daemon> {
        let Daemon {
            mut child,
            workspace,
            _config_dir,
            builder,
            ..
        } = self;
        if child.try_wait()?.is_none() {
            bail!("restart: the previous acpd is still running");
        }
        builder.launch(workspace, _config_dir).await
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        signal(self.pid(), nix::sys::signal::Signal::SIGTERM)?;
        tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("acpd did not exit within {within:?}"))?
            .map_err(Into::into)
    }
}

/// "is running", or how process `pid` (a child not yet reaped) ended: `/proc/<pid>/stat`
/// keeps a zombie's wait status (its 52nd field).
pub fn process_fate(pid: u32) -> String {
    let Some(fields) = stat_fields(pid) else {
        return "is gone".to_string();
    };
    // Field 52 of the file is the 50th after the name.
    match (
        fields.first().map(String::as_str),
        fields.get(49).and_then(|s| s.parse::<i32>().ok()),
    ) {
        (Some("Z" | "X"), Some(status)) if status & 0x7f != 0 => {
            let sig = nix::sys::signal::Signal::try_from(status & 0x7f)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {}", status & 0x7f));
            let core = if status & 0x80 != 0 {
                ", core dumped"
            } else {
                ""
            };
            format!("was killed by {sig}{core}")
        }
        (Some("Z" | "X"), Some(status)) => {
            format!("exited with code {}", (status >> 8) & 0xff)
        }
        (Some(state), _) => format!("is running (state {state})"),
        (None, _) => "is in an unreadable state".to_string(),
    }
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
    Ok(())
}

/// True while any process is in process group `pgid` (a child's group id is its pid).
pub fn group_alive(pgid: u32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None).is_ok()
}

/// Live (non-zombie) processes whose `/proc/<pid>/stat` fields after the state (ppid, pgrp,
/// ...) satisfy `pred`.
fn live_processes(pred: impl Fn(&[&str]) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            stat_fields(*p).is_some_and(|f| {
                let after: Vec<&str> = f.iter().skip(1).take(2).map(String::as_str).collect();
                f.first().is_some_and(|state| state != "Z") && pred(&after)
            })
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may
/// hold spaces), the state first; `None` once the process is gone.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(split_stat(&stat)?.1)
}

/// A `stat` line of proc(5): the command name, and the fields after it (field 3, the state,
/// first: field `n` is at index `n - 3`).
fn split_stat(stat: &str) -> Option<(String, Vec<String>)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    Some((comm, rest.split_whitespace().map(String::from).collect()))
}

/// One thread of a process, from `/proc/<pid>/task/<tid>/stat`.
#[derive(Debug)]
pub struct ThreadStat {
    pub tid: u32,
    pub comm: String,
    /// The fields after the command name: field `n` of proc(5) is at index `n - 3`.
    pub fields: Vec<String>,
}

impl ThreadStat {
    /// Field `n` as proc(5) counts (1-based); "" past the end.
    pub fn field(&self, n: usize) -> &str {
        self.fields.get(n - 3).map_or("", String::as_str)
    }

    /// The scheduling policy, field 41: "0" fair, "1" FIFO, "2" round robin.
    pub fn policy(&self) -> &str {
        self.field(41)
    }
}

/// Every thread of `pid` (none once the process is gone; a thread that ends meanwhile is left
/// out).
pub fn thread_stats(pid: u32) -> Vec<ThreadStat> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|t| {
        let t = t.ok()?;
        let tid = t.file_name().to_str()?.parse().ok()?;
        let (comm, fields) = split_stat(&std::fs::read_to_string(t.path().join("stat")).ok()?)?;
        Some(ThreadStat { tid, comm, fields })
    })
    .collect()
}

/// Puts the calling thread at `SCHED_RR` 1 (`reset_on_fork`: what it starts is fair); whether
/// this user may (root, `CAP_SYS_NICE`, an `RLIMIT_RTPRIO`).
pub fn set_thread_realtime(reset_on_fork: bool) -> bool {
    let p = nix::libc::sched_param { sched_priority: 1 };
    let reset = if reset_on_fork {
        nix::libc::SCHED_RESET_ON_FORK
    } else {
        0
    };
    // SAFETY: sets the calling thread's policy; the kernel reads `p`, which lives here.
    unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_RR | reset, &p) == 0 }
}

/// Live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let pid = pid.to_string();
    live_processes(|f| f.first() == Some(&pid.as_str()))
}

/// Live processes in process group `pgid` (an exited process not yet reaped does not count).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let pgid = pgid.to_string();
    live_processes(|f| f.get(1) == Some(&pgid.as_str()))
}

/// True while process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// One SSE frame. `id` is None for synthetic frames (replay_complete, resync, warnings, eviction).
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

pub struct Sse {
    pub headers: reqwest::header::HeaderMap,
    body: futures::stream::BoxStream<'static, Result<bytes::Bytes>>,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a frame end (frames can be MiBs long).
    scanned: usize,
    /// Comment lines seen (e.g. heartbeats) and `retry:` values.
    pub comments: Vec<String>,
    pub retry: Option<u64>,
}

impl Sse {
    fn new(r: reqwest::Response) -> Self {
        Self {
            headers: r.headers().clone(),
            body: r.bytes_stream().map(|c| c.map_err(Into::into)).boxed(),
            buf: Vec::new(),
            scanned: 0,
            comments: Vec::new(),
            retry: None,
        }
    }

    /// A bare-socket subscriber with a chosen kernel receive buffer (HTTP/1.0, so the body is
    /// the raw event stream up to EOF): tests control exactly how much an unread connection
    /// can absorb, whatever the machine's socket defaults.
    pub async fn open_raw(
        d: &Daemon,
        s: &SessionRef,
        rcvbuf: u32,
        resume: Option<(u64, &str)>,
    ) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(rcvbuf)?;
        let mut sock = tokio::time::timeout(WAIT, socket.connect(([127, 0, 0, 1], d.port).into()))
            .await
            .context("connect")??;
        let mut req = format!(
            "GET /session/{}/events HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nX-Qwen-Client-Id: {}\r\n",
            s.id, d.port, s.client_id
        );
        if let Some((last, epoch)) = resume {
            req.push_str(&format!(
                "Last-Event-ID: {last}\r\nX-Qwen-Event-Epoch: {epoch}\r\n"
            ));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = find(&buf, b"\r\n\r\n") {
                    return Ok::<_, anyhow::Error>(i + 4);
                }
                if sock.read_buf(&mut buf).await? == 0 {
                    bail!("connection closed in the response head");
                }
            }
        })
        .await
        .context("response head")??;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        if head.split_whitespace().nth(1) != Some("200") {
            bail!("events -> {head}");
        }
        buf.drain(..head_end);
        let body = futures::stream::unfold(sock, |mut sock| async move {
            let mut chunk = Vec::with_capacity(64 * 1024);
            match sock.read_buf(&mut chunk).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(bytes::Bytes::from(chunk)), sock)),
                Err(e) => Some((Err(e.into()), sock)),
            }
        });
        Ok(Self {
            headers: reqwest::header::HeaderMap::new(),
            body: body.boxed(),
            buf,
            scanned: 0,
            comments: Vec::new(),
            retry: None,
        })
    }

    /// The next frame with data, or None when the stream ended. Errors after `within`.
    pub async fn next_within(&mut self, within: Duration) -> Result<Option<Frame>> {
        tokio::time::timeout(within, self.next_frame())
            .await
            .map_err(|_| anyhow!("no SSE frame within {within:?}"))?
    }

    pub async fn next(&mut self) -> Result<Option<Frame>> {
        self.next_within(WAIT).await
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            let from = self.scanned.saturating_sub(1);
            if let Some(i) = find(&self.buf[from..], b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..from + i + 2).collect();
                self.scanned = 0;
                let text = String::from_utf8(raw)?;
                let (mut id, mut event, mut data) = (None, None, None);
                for line in text.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.trim().parse::<u64>()?);
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str::<Value>(v)?);
                    }
                }
                if let (Some(event), Some(data)) = (event, data) {
                    return Ok(Some(Frame { id, event, data }));
                }
                continue;
            }
            self.scanned = self.buf.len();
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => return Ok(None),
            }
        }
    }

    /// Reads frames until one satisfies `pred` (returned last), within `within` overall.
    pub async fn until(
        &mut self,
        within: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Result<Vec<Frame>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Ok(Some(f)) => {
                    let done = pred(&f);
                    seen.push(f);
                    if done {
                        return Ok(seen);
                    }
                }
                Ok(None) => bail!(
                    "stream ended before the awaited frame; saw {:?}",
                    kinds(&seen)
                ),
                Err(e) => bail!("{e}; saw {:?}", kinds(&seen)),
            }
        }
    }

    /// Reads until the `turn_complete` or `turn_error` of `prompt_id`.
    pub async fn until_turn_end(&mut self, prompt_id: &str) -> Result<Vec<Frame>> {
        self.until(WAIT, |f| {
            (f.event == "turn_complete" || f.event == "turn_error")
                && f.data["data"]["promptId"] == prompt_id
        })
        .await
    }
}

pub fn kinds(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(|f| f.event.clone()).collect()
}

/// Concatenated `agent_message_chunk` text in `frames`.
pub fn agent_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| {
            f.event == "session_update"
                && f.data["data"]["update"]["sessionUpdate"] == "agent_message_chunk"
        })
        .filter_map(|f| f.data["data"]["update"]["content"]["text"].as_str())
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Polls `cond` every 20 ms until true or `within` passes. Only for state that has no event
/// to await (process table, files); everything observable over SSE is awaited instead.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The sum of a metric's series in Prometheus text whose line holds every one of `labels`
/// (`key="value"`); 0 when it has none.
pub fn metric_total(prom: &str, name: &str, labels: &[&str]) -> f64 {
    prom.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

//! A deterministic demo ACP agent for acpd's tests and demos.
//!
//! It speaks ACP v1 as an agent over this process's stdin/stdout (see [`run_stdio`]). The first
//! word of a prompt (case-insensitive; the prompt's text blocks are concatenated) selects a
//! scripted behaviour:
//! - (none of the below): echo `Hello from the demo agent. You said: <text>` in ~4 chunks.
//! - `read <rel>`: tool call + `fs/read_text_file` of `<session cwd>/<rel>`.
//! - `write <rel> <content...>`: tool call + `session/request_permission` + `fs/write_text_file`.
//! - `slow [n=20] [ms=250]`: n chunks `tick <i> `, one per ms; honours `session/cancel`.
//! - `quiet [ms=1000]`: says nothing for ms, then ends the turn; honours `session/cancel`.
//! - `crash`: chunk `about to crash`, then the process exits with code 3.
//! - `unknown`: sends the request `demo/unknownRequest` to the client and reports its answer.
//! - `flood <n=100> [size=1024]`: n chunks of `size` 'x' bytes.
//! - `bench [chunks=4] [tools=0]`: no delay; the first chunk is `recv=<ns> read=<ns> ` (wall clock
//!   when the prompt's handler ran, and when its line was read from stdin), then `tools` completed
//!   tool calls and filler chunks, and the last chunk is `last=<ns>` (just before it is written):
//!   the load harness measures the daemon between them.
//! - `env <NAME>`, `pwd`, `pid`, `stderr <text>`, `meta`: report process facts.
//! - `mode <id>`: switches the session's mode itself (`current_mode_update`; see [`modes`]).
//! - `telemetry <text>`: puts `<text>` verbatim into a span name (`demo.secret <text>`), span and
//!   span event attributes, a log record body and attribute and a metric point attribute (all
//!   `demo.text`), then replies with its length (never the text). For redaction tests: the
//!   agent itself redacts nothing.
//! - `telemetry-flood [n=1000]`: emits n spans and n log records as fast as the SDK takes them,
//!   flushes, and replies `telemetry-flood: emitted <s> spans and <l> log records (<f> flushes,
//!   all flushed)`. For ingest tests: a hostile, flooding agent.
//! - `telemetry-rate [per_s=1000] [secs=1]`: emits `per_s` spans a second for `secs` seconds,
//!   paced by the clock (every 10 ms), flushes, and replies `telemetry-rate: emitted <n> spans in
//!   <ms> ms (all flushed)`. For the gateway's load benchmark: a busy, well-behaved agent.
//!
//! With `ACPD_DEMO_BURN=<percent>` it burns that share of one core between and during turns
//! (see [`burn`]).
//!
//! With the standard OTLP environment set it also exports its own spans, metrics and log
//! records, each signal as that environment says (see [`telemetry`]); the two `telemetry`
//! commands then have something to emit into (without it they only reply).

pub mod burn;
pub mod modes;
pub mod telemetry;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, ContentBlock, ContentChunk, Diff, Implementation,
    InitializeRequest, InitializeResponse, LoadSessionRequest, LoadSessionResponse,
    NewSessionRequest, NewSessionResponse, PermissionOption, PermissionOptionKind, PromptRequest,
    PromptResponse, ReadTextFileRequest, RequestPermissionOutcome, RequestPermissionRequest,
    SessionId, SessionNotification, SessionUpdate, SetSessionConfigOptionRequest,
    SetSessionModeRequest, StopReason, ToolCall, ToolCallContent, ToolCallLocation, ToolCallStatus,
    ToolCallUpdate, ToolCallUpdateFields, ToolKind, WriteTextFileRequest,
};
use agent_client_protocol::{
    Agent, Client, Error, Lines, RequestCancellation, UntypedMessage, on_receive_notification,
    on_receive_request,
};
use futures::AsyncBufReadExt as _;
use futures::StreamExt as _;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::compat::TokioAsyncReadCompatExt as _;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{Telemetry, TurnTrace};

/// Name reported in `initialize`'s `agentInfo`.
pub const AGENT_NAME: &str = "acpd-demo-agent";
/// Exit code of the `crash` command.
pub const CRASH_EXIT_CODE: i32 = 3;
/// Env var: milliseconds to wait before answering `initialize`.
pub const INIT_DELAY_ENV: &str = "ACPD_DEMO_INIT_DELAY_MS";
/// Env var: a misbehaviour for acpd's fault tests: `silent-new` (never answers `session/new`),
/// `close-stdout` (closes stdout once `initialize` is answered, then keeps running),
/// `ignore-term` (survives SIGTERM and stdin EOF: only SIGKILL stops it), `clear-deathsig` (as
/// `ignore-term`, and clears the parent-death signal acpd gives it, so it outlives a killed
/// daemon, as an agent that daemonizes would), `huge-line` (after
/// answering `initialize`, writes one line that never ends), `garbage` (writes non-JSON lines
/// without end instead of answering), `no-load` (does not announce `loadSession`) or
/// `deaf-cancel` (ignores `session/cancel`: only `$/cancel_request` ends a turn early).
pub const FAULT_ENV: &str = "ACPD_DEMO_FAULT";

fn fault(name: &str) -> bool {
    std::env::var(FAULT_ENV).is_ok_and(|f| f.trim() == name)
}

/// The `clear-deathsig` fault: no signal when the parent dies (Linux; elsewhere there is none).
fn clear_parent_death_signal() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(None::<nix::sys::signal::Signal>) {
        eprintln!("demo agent: cannot clear the parent-death signal: {e}");
    }
}

type Cx = ConnectionTo<Client>;

/// Serves ACP v1 as an agent on stdin/stdout until stdin reaches EOF.
///
/// Only JSON-RPC lines go to stdout; diagnostics go to stderr. The prompt commands are listed
/// in the crate documentation.
///
/// Must run inside a multi-threaded tokio runtime that outlives it (OTLP export, when enabled,
/// uses it), called from the process's main thread (`block_on`'s, as `#[tokio::main]` does).
pub async fn run_stdio() -> anyhow::Result<()> {
    let clear_deathsig = fault("clear-deathsig");
    if clear_deathsig {
        // Here, on the main thread: the parent-death signal is a per-thread setting, and the
        // one the spawner armed before exec belongs to the main thread.
        clear_parent_death_signal();
    }
    // The agent itself serves from a worker, not from `block_on`'s thread: there, each line
    // read from the pipe (woken by a worker's I/O driver) and each line handed to the stdout
    // writer task crossed threads, a futex wake per message on the prompt path.
    tokio::spawn(serve_stdio(clear_deathsig)).await?
}

async fn serve_stdio(clear_deathsig: bool) -> anyhow::Result<()> {
    burn::start_from_env();
    let ignore_term = fault("ignore-term") || clear_deathsig;
    if ignore_term {
        // A handler replaces the default action, so SIGTERM no longer ends the process.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move { while term.recv().await.is_some() {} });
    }
    // Built first and inside the runtime; `None` (nothing built) without the OTLP env.
    let telemetry = Telemetry::from_env().map(Arc::new);
    // We own stdout through one writer task so that `crash` can exit right after its last
    // line is flushed, without racing the SDK's own writes.
    let (out_tx, out_rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(write_stdout(out_rx));

    let reads = Arc::new(PromptReads::default());
    let stamped = reads.clone();
    let incoming = futures::io::BufReader::new(stdin().compat())
        .lines()
        .inspect(move |line| {
            if let Ok(line) = line {
                stamped.note(line);
            }
        });
    let outgoing = futures::sink::unfold(out_tx.clone(), async |tx, line: String| {
        tx.send(Out::Line(line))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok::<_, io::Error>(tx)
    });
    let transport = Lines::new(Box::pin(outgoing), Box::pin(incoming));

    let state = Arc::new(State {
        sessions: Mutex::default(),
        next_call: AtomicU64::new(1),
        out: out_tx.clone(),
        reads,
    });
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state.clone());
    let tel = telemetry.clone();

    let served = Agent
        .v1()
        .name(AGENT_NAME)
        .on_receive_request(
            async |_req: InitializeRequest, responder, cx: Cx| {
                let response = InitializeResponse::new(ProtocolVersion::V1)
                    .agent_capabilities(AgentCapabilities::new().load_session(!fault("no-load")))
                    .agent_info(Implementation::new(AGENT_NAME, env!("CARGO_PKG_VERSION")));
                match init_delay() {
                    None => responder.respond(response),
                    Some(delay) => cx.spawn(async move {
                        tokio::time::sleep(delay).await;
                        log_err(responder.respond(response));
                        Ok(())
                    }),
                }
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: NewSessionRequest, responder, cx: Cx| {
                if fault("silent-new") {
                    return cx.spawn(async move {
                        std::future::pending::<()>().await;
                        drop(responder);
                        Ok(())
                    });
                }
                let id = SessionId::new(format!("demo-{}", uuid::Uuid::new_v4()));
                s1.open_session(&id, req.cwd);
                let (modes, options) = (modes::modes(&id), modes::config_options(&id));
                responder.respond(
                    NewSessionResponse::new(id)
                        .modes(modes)
                        .config_options(options),
                )
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: LoadSessionRequest, responder, _cx: Cx| {
                // History lives in memory only, so there is nothing to replay.
                s2.open_session(&req.session_id, req.cwd);
                let (modes, options) = (
                    modes::modes(&req.session_id),
                    modes::config_options(&req.session_id),
                );
                responder.respond(
                    LoadSessionResponse::new()
                        .modes(modes)
                        .config_options(options),
                )
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async |req: SetSessionModeRequest, responder, _cx: Cx| {
                responder.respond_with_result(modes::on_set_mode(&req))
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async |req: SetSessionConfigOptionRequest, responder, _cx: Cx| {
                responder.respond_with_result(modes::on_set_option(&req))
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: PromptRequest, responder, cx: Cx| {
                let received_ns = wall_ns();
                let read_ns = s3.reads.take(&req.session_id);
                let Some((cwd, session_cancel)) = s3.begin_turn(&req.session_id) else {
                    return responder.respond_with_error(
                        Error::invalid_params().data(json!({ "unknownSessionId": req.session_id })),
                    );
                };
                let text = prompt_text(&req);
                let trace = TurnTrace::start(
                    tel.as_ref(),
                    req.meta.as_ref(),
                    &req.session_id.to_string(),
                    &text,
                    command_label(&text),
                );
                let turn = Turn {
                    cx: cx.clone(),
                    state: s3.clone(),
                    session_id: req.session_id.clone(),
                    cwd,
                    cancel: TurnCancel {
                        session: session_cancel,
                        request: responder.cancellation(),
                    },
                    trace: trace.clone(),
                    received_ns,
                    read_ns,
                };
                let telemetry = tel.clone();
                let by_request = responder.cancellation();
                // The turn talks to the client (fs, permission), so it must run outside the
                // dispatch loop; awaiting those answers here would deadlock.
                cx.spawn(async move {
                    let result = turn.run(req).await;
                    if by_request.is_cancelled() {
                        // Shown in acpd's log: the fault tests wait for it.
                        eprintln!("turn ended by $/cancel_request");
                    }
                    trace.finish(&result);
                    log_err(responder.respond_with_result(result));
                    // The turn's spans leave now, not at the next batch tick (bounded).
                    if let Some(telemetry) = &telemetry {
                        telemetry.flush().await;
                    }
                    // An Err here would tear down the whole connection.
                    Ok(())
                })
            },
            on_receive_request!(),
        )
        .on_receive_notification(
            async move |n: CancelNotification, _cx: Cx| {
                if !fault("deaf-cancel") {
                    s4.cancel_session(&n.session_id);
                }
                Ok(())
            },
            on_receive_notification!(),
        )
        .connect_to(transport)
        .await;

    drop(state);
    if ignore_term {
        std::future::pending::<()>().await;
    }
    // Stop after everything queued so far has been written.
    let _ = out_tx.send(Out::Stop).await;
    let written = writer.await;
    if let Some(telemetry) = &telemetry {
        telemetry.shutdown().await;
    }
    written??;
    served.map_err(|e| anyhow::anyhow!("ACP connection failed: {e}"))
}

enum Out {
    Line(String),
    Exit(i32),
    Stop,
}

/// stdin as an async pipe when it is one (as under acpd): tokio's `stdin()` reads on the
/// blocking pool, a thread hop per read. A terminal or file falls back to it.
fn stdin() -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    use std::os::fd::AsFd as _;
    let pipe = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(tokio::net::unix::pipe::Receiver::from_owned_fd);
    match pipe {
        Ok(p) => Box::new(p),
        Err(_) => Box::new(tokio::io::stdin()),
    }
}

/// Closes fd 1, as an agent that shuts its output would (the writer drops its own duplicate).
fn close_fd1() {
    use std::os::fd::FromRawFd as _;
    // SAFETY: fd 1 is open for the life of the process and nothing else takes ownership of it;
    // the writer writes through its own duplicate, dropped just before this call.
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(1) });
}

/// stdout as an async pipe when it is one; see [`stdin`].
fn stdout() -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    use std::os::fd::AsFd as _;
    let pipe = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(tokio::net::unix::pipe::Sender::from_owned_fd);
    match pipe {
        Ok(p) => Box::new(p),
        Err(_) => Box::new(tokio::io::stdout()),
    }
}

async fn write_stdout(mut rx: mpsc::Receiver<Out>) -> io::Result<()> {
    let mut stdout = stdout();
    if fault("garbage") {
        // Until the reader goes away (the write then fails).
        for n in 0u64.. {
            stdout
                .write_all(format!("garbage {n}, not JSON-RPC\n").as_bytes())
                .await?;
        }
    }
    // The `close-stdout` fault: the first line written is the answer to `initialize`.
    let close_after_first = fault("close-stdout");
    let endless_line_after_first = fault("huge-line");
    while let Some(out) = rx.recv().await {
        match out {
            Out::Line(mut line) => {
                line.push('\n');
                stdout.write_all(line.as_bytes()).await?;
                stdout.flush().await?;
                if endless_line_after_first {
                    let chunk = vec![b'x'; 64 << 10];
                    loop {
                        stdout.write_all(&chunk).await?;
                    }
                }
                if close_after_first {
                    drop(stdout);
                    close_fd1();
                    // Keep draining so senders never block; nothing is written any more.
                    while rx.recv().await.is_some() {}
                    return Ok(());
                }
            }
            Out::Exit(code) => std::process::exit(code),
            Out::Stop => break,
        }
    }
    Ok(())
}

fn init_delay() -> Option<Duration> {
    let ms = std::env::var(INIT_DELAY_ENV).ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms))
}

fn log_err(result: Result<(), Error>) {
    if let Err(e) = result {
        eprintln!("{AGENT_NAME}: {e}");
    }
}

struct State {
    sessions: Mutex<HashMap<SessionId, Session>>,
    next_call: AtomicU64,
    out: mpsc::Sender<Out>,
    reads: Arc<PromptReads>,
}

/// When each session's latest `session/prompt` line was read from stdin. The `bench` command
/// reports it beside the handler's own stamp: the crate hands a request to its handler a task
/// hop after the read, and that hop is the agent's, not the client's. The read is where a
/// pipe's physical floor ends, so the load harness can hold the daemon's share to it.
#[derive(Default)]
struct PromptReads(Mutex<HashMap<String, u128>>);

impl PromptReads {
    /// Bounded: a session whose handler never ran (a line the crate rejected) leaves its entry
    /// behind; past this many, the map starts over (it only serves the benchmark's stamps).
    const MAX: usize = 4096;

    fn note(&self, line: &str) {
        if let Some(session) = prompt_session(line) {
            let now = wall_ns();
            let mut reads = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if reads.len() >= Self::MAX {
                reads.clear();
            }
            reads.insert(session.to_owned(), now);
        }
    }

    fn take(&self, session: &SessionId) -> Option<u128> {
        let mut reads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        reads.remove(&*session.0)
    }
}

/// The session of a `session/prompt` request line, found without parsing it (the crate parses
/// it once, after this): the daemon writes compact JSON, and a line that does not match simply
/// gets no stamp.
fn prompt_session(line: &str) -> Option<&str> {
    if !line.contains("\"method\":\"session/prompt\"") {
        return None;
    }
    let start = line.find("\"sessionId\":\"")? + "\"sessionId\":\"".len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

struct Session {
    cwd: PathBuf,
    /// Shared by the session's running turns; replaced once cancelled so later turns start clean.
    cancel: CancellationToken,
}

impl State {
    fn open_session(&self, id: &SessionId, cwd: PathBuf) {
        let mut sessions = self.sessions.lock().unwrap();
        // A reload keeps the cancel token that running turns of this session listen on.
        let cancel = sessions.remove(id).map(|s| s.cancel).unwrap_or_default();
        sessions.insert(id.clone(), Session { cwd, cancel });
    }

    fn begin_turn(&self, id: &SessionId) -> Option<(PathBuf, CancellationToken)> {
        let sessions = self.sessions.lock().unwrap();
        let session = sessions.get(id)?;
        Some((session.cwd.clone(), session.cancel.clone()))
    }

    fn cancel_session(&self, id: &SessionId) {
        if let Some(session) = self.sessions.lock().unwrap().get_mut(id) {
            std::mem::take(&mut session.cancel).cancel();
        }
    }

    fn next_tool_call_id(&self) -> String {
        format!("call_{}", self.next_call.fetch_add(1, Ordering::Relaxed))
    }
}

/// A turn ends early on `session/cancel` or on `$/cancel_request` for its prompt.
struct TurnCancel {
    session: CancellationToken,
    request: RequestCancellation,
}

impl TurnCancel {
    fn is_cancelled(&self) -> bool {
        self.session.is_cancelled() || self.request.is_cancelled()
    }

    async fn cancelled(&self) {
        tokio::select! {
            () = self.session.cancelled() => {}
            () = self.request.cancelled() => {}
        }
    }
}

struct Turn {
    cx: Cx,
    state: Arc<State>,
    session_id: SessionId,
    cwd: PathBuf,
    cancel: TurnCancel,
    trace: TurnTrace,
    /// Wall clock (ns since the epoch) when `session/prompt` arrived.
    received_ns: u128,
    /// Wall clock when its line was read from stdin (see [`PromptReads`]), if it was seen.
    read_ns: Option<u128>,
}

/// Wall clock in ns since the epoch: comparable across processes on one machine.
pub fn wall_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

type TurnResult = Result<PromptResponse, Error>;

fn done(stop_reason: StopReason) -> TurnResult {
    Ok(PromptResponse::new(stop_reason))
}

/// Splits off the first whitespace-separated word; the rest keeps its inner spacing.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// The prompt commands (first words) the agent knows.
const COMMANDS: &[&str] = &[
    "read",
    "write",
    "slow",
    "quiet",
    "crash",
    "unknown",
    "flood",
    "bench",
    "env",
    "pwd",
    "pid",
    "stderr",
    "meta",
    "mode",
    "telemetry",
    "telemetry-flood",
    "telemetry-rate",
];

/// The prompt's command word as a metric label: one of [`COMMANDS`], else `echo`, so a
/// prompt's text never becomes a label value.
fn command_label(text: &str) -> &'static str {
    let word = split_word(text).0.to_lowercase();
    COMMANDS
        .iter()
        .find(|c| **c == word)
        .copied()
        .unwrap_or("echo")
}

/// The prompt's text blocks, concatenated.
fn prompt_text(req: &PromptRequest) -> String {
    req.prompt
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect()
}

fn fs_error(e: &Error) -> String {
    format!("{} (code {})", e.message, e.code.value())
}

impl Turn {
    async fn run(self, req: PromptRequest) -> TurnResult {
        let text = prompt_text(&req);
        let (command, rest) = split_word(&text);
        let (arg, tail) = split_word(rest);
        match command.to_lowercase().as_str() {
            "read" if !arg.is_empty() => self.read(arg).await,
            "write" if !arg.is_empty() => self.write(arg, tail).await,
            "slow" => {
                let n = arg.parse().unwrap_or(20);
                let ms = split_word(tail).0.parse().unwrap_or(250);
                self.slow(n, Duration::from_millis(ms)).await
            }
            "quiet" => {
                self.quiet(Duration::from_millis(arg.parse().unwrap_or(1000)))
                    .await
            }
            "crash" => self.crash().await,
            "mode" => {
                self.update(modes::self_switch(&self.session_id, arg)?)?;
                self.reply(format!("mode: {arg}"))
            }
            "unknown" => self.unknown().await,
            "flood" => {
                let n = arg.parse().unwrap_or(100);
                let size = split_word(tail).0.parse().unwrap_or(1024);
                self.flood(n, size)
            }
            "bench" => {
                let chunks = arg.parse().unwrap_or(4);
                let tools = split_word(tail).0.parse().unwrap_or(0);
                self.bench(chunks, tools)
            }
            "env" if !arg.is_empty() => match std::env::var(arg) {
                Ok(value) => self.reply(format!("env {arg}={value}")),
                Err(_) => self.reply(format!("env {arg} unset")),
            },
            "pwd" => {
                let cwd = std::env::current_dir().map_err(Error::into_internal_error)?;
                self.reply(format!("cwd {}", cwd.display()))
            }
            "pid" => self.reply(format!("pid {}", std::process::id())),
            "stderr" => {
                eprintln!("{rest}");
                self.reply("ok")
            }
            "meta" => self.reply(serde_json::to_string(&req.meta)?),
            "telemetry" if !rest.is_empty() => {
                self.trace.secret(rest);
                self.reply(format!(
                    "telemetry: {} bytes put into a span name, span and event attributes, \
                     a log record and a metric point",
                    rest.len()
                ))
            }
            "telemetry-flood" => {
                let n = arg.parse().unwrap_or(1000);
                let flood = self.trace.flood(n).await;
                let flushed = if flood.flushed {
                    "all flushed"
                } else {
                    "a flush did not confirm: some may be lost"
                };
                self.reply(format!(
                    "telemetry-flood: emitted {} spans and {} log records ({} flushes, {flushed})",
                    flood.spans, flood.logs, flood.flushes
                ))
            }
            "telemetry-rate" => {
                let per_sec = arg.parse().unwrap_or(1000);
                let secs = split_word(tail).0.parse().unwrap_or(1.0_f64);
                let secs = if secs.is_finite() {
                    secs.clamp(0.0, 3600.0)
                } else {
                    1.0
                };
                let rate = self.trace.rate(per_sec, secs).await;
                let flushed = if rate.flushed {
                    "all flushed"
                } else {
                    "the flush did not confirm: some may be lost"
                };
                self.reply(format!(
                    "telemetry-rate: emitted {} spans in {} ms ({flushed})",
                    rate.spans,
                    rate.took.as_millis()
                ))
            }
            _ => self.echo(&text),
        }
    }

    fn update(&self, update: SessionUpdate) -> Result<(), Error> {
        self.cx
            .send_notification(SessionNotification::new(self.session_id.clone(), update))
    }

    fn say(&self, text: impl Into<String>) -> Result<(), Error> {
        let block = ContentBlock::from(text.into());
        self.update(SessionUpdate::AgentMessageChunk(ContentChunk::new(block)))
    }

    /// Says `text` as the turn's one generated reply and ends the turn.
    fn reply(&self, text: impl Into<String>) -> TurnResult {
        let text = text.into();
        let mut llm = self.trace.chat();
        llm.output(&text);
        self.say(text)?;
        llm.finish("stop");
        done(StopReason::EndTurn)
    }

    fn set_status(&self, id: &str, status: ToolCallStatus) -> Result<(), Error> {
        self.patch(id, ToolCallUpdateFields::new().status(status))
    }

    fn patch(&self, id: &str, fields: ToolCallUpdateFields) -> Result<(), Error> {
        let update = ToolCallUpdate::new(id.to_owned(), fields);
        self.update(SessionUpdate::ToolCallUpdate(update))
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.cwd.join(Path::new(rel))
    }

    fn echo(&self, text: &str) -> TurnResult {
        let reply = format!("Hello from the demo agent. You said: {text}");
        let words: Vec<&str> = reply.split_inclusive(' ').collect();
        let mut llm = self.trace.chat();
        for chunk in words.chunks(words.len().div_ceil(4)) {
            let chunk = chunk.concat();
            llm.output(&chunk);
            self.say(chunk)?;
        }
        llm.finish("stop");
        done(StopReason::EndTurn)
    }

    async fn read(&self, rel: &str) -> TurnResult {
        let id = self.state.next_tool_call_id();
        let path = self.abs(rel);
        let call = ToolCall::new(id.clone(), format!("Read {rel}"))
            .kind(ToolKind::Read)
            .status(ToolCallStatus::Pending)
            .locations(vec![ToolCallLocation::new(&path)])
            .raw_input(json!({ "path": path }));
        let tool = self.trace.tool("read_file", &id);
        self.update(SessionUpdate::ToolCall(call))?;
        self.set_status(&id, ToolCallStatus::InProgress)?;

        let request = ReadTextFileRequest::new(self.session_id.clone(), path);
        match self.cx.send_request(request).block_task().await {
            Ok(file) => {
                let content = vec![ToolCallContent::from(file.content.clone())];
                self.patch(
                    &id,
                    ToolCallUpdateFields::new()
                        .status(ToolCallStatus::Completed)
                        .content(content),
                )?;
                tool.completed();
                let n = file.content.len();
                self.reply(format!("Read {n} bytes from {rel}: {}", file.content))
            }
            Err(e) => {
                self.set_status(&id, ToolCallStatus::Failed)?;
                tool.failed("fs_error", fs_error(&e));
                self.reply(format!("Read failed: {}", fs_error(&e)))
            }
        }
    }

    async fn write(&self, rel: &str, content: &str) -> TurnResult {
        let id = self.state.next_tool_call_id();
        let path = self.abs(rel);
        let call = ToolCall::new(id.clone(), format!("Write {rel}"))
            .kind(ToolKind::Edit)
            .status(ToolCallStatus::Pending)
            .content(vec![Diff::new(&path, content).into()])
            .locations(vec![ToolCallLocation::new(&path)])
            .raw_input(json!({ "path": path, "content": content }));
        // The tool run includes asking for permission.
        let tool = self.trace.tool("write_file", &id);
        self.update(SessionUpdate::ToolCall(call.clone()))?;

        let options = vec![
            PermissionOption::new("allow", "Allow", PermissionOptionKind::AllowOnce),
            PermissionOption::new("reject", "Reject", PermissionOptionKind::RejectOnce),
        ];
        let ask = RequestPermissionRequest::new(self.session_id.clone(), call.into(), options);
        // No select on cancellation: on session/cancel the client must answer `cancelled`.
        let outcome = match self.cx.send_request(ask).block_task().await {
            Ok(answer) => answer.outcome,
            Err(e) => {
                self.set_status(&id, ToolCallStatus::Failed)?;
                tool.failed("permission_error", fs_error(&e));
                return self.reply(format!("Permission failed: {}", fs_error(&e)));
            }
        };
        let allowed = match outcome {
            _ if self.cancel.is_cancelled() => None,
            RequestPermissionOutcome::Selected(s) => Some(&*s.option_id.0 == "allow"),
            _ => None,
        };
        match allowed {
            None => {
                self.set_status(&id, ToolCallStatus::Failed)?;
                tool.failed("cancelled", "cancelled while asking permission");
                done(StopReason::Cancelled)
            }
            Some(false) => {
                self.set_status(&id, ToolCallStatus::Failed)?;
                tool.failed("permission_rejected", "permission rejected");
                self.reply("Permission rejected")
            }
            Some(true) => {
                self.set_status(&id, ToolCallStatus::InProgress)?;
                let request = WriteTextFileRequest::new(self.session_id.clone(), path, content);
                match self.cx.send_request(request).block_task().await {
                    Ok(_) => {
                        self.set_status(&id, ToolCallStatus::Completed)?;
                        tool.completed();
                        self.reply(format!("Wrote {} bytes to {rel}", content.len()))
                    }
                    Err(e) => {
                        self.set_status(&id, ToolCallStatus::Failed)?;
                        tool.failed("fs_error", fs_error(&e));
                        self.reply(format!("Write failed: {}", fs_error(&e)))
                    }
                }
            }
        }
    }

    async fn slow(&self, n: u64, every: Duration) -> TurnResult {
        let mut llm = self.trace.chat();
        for i in 1..=n {
            if i > 1 {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = self.cancel.cancelled() => {}
                }
            }
            if self.cancel.is_cancelled() {
                llm.finish("cancelled");
                return done(StopReason::Cancelled);
            }
            let tick = format!("tick {i} ");
            llm.output(&tick);
            self.say(tick)?;
        }
        llm.finish("stop");
        done(StopReason::EndTurn)
    }

    /// A turn in which the agent sends nothing at all: what a daemon shows its clients then
    /// comes from the daemon alone.
    async fn quiet(&self, wait: Duration) -> TurnResult {
        tokio::select! {
            () = tokio::time::sleep(wait) => done(StopReason::EndTurn),
            () = self.cancel.cancelled() => done(StopReason::Cancelled),
        }
    }

    async fn crash(&self) -> TurnResult {
        // Bypass the SDK's queue: the line must be on stdout before we exit.
        let note = SessionNotification::new(
            self.session_id.clone(),
            SessionUpdate::AgentMessageChunk(ContentChunk::new("about to crash".into())),
        );
        let line = json!({ "jsonrpc": "2.0", "method": "session/update", "params": note });
        let out = &self.state.out;
        if out.send(Out::Line(line.to_string())).await.is_err()
            || out.send(Out::Exit(CRASH_EXIT_CODE)).await.is_err()
        {
            std::process::exit(CRASH_EXIT_CODE);
        }
        // The writer task exits the process once the line is flushed.
        std::future::pending().await
    }

    async fn unknown(&self) -> TurnResult {
        let request = UntypedMessage::new("demo/unknownRequest", json!({}))?;
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            self.cx.send_request(request).block_task(),
        )
        .await;
        self.reply(match answer {
            Ok(Ok(_)) => "unknown request answered: ok".to_owned(),
            Ok(Err(e)) => format!("unknown request answered: error {}", e.code.value()),
            Err(_) => "unknown request timed out".to_owned(),
        })
    }

    fn flood(&self, n: u64, size: usize) -> TurnResult {
        let chunk = "x".repeat(size);
        let mut llm = self.trace.chat();
        for _ in 0..n {
            llm.output(&chunk);
            self.say(chunk.clone())?;
        }
        llm.finish("stop");
        done(StopReason::EndTurn)
    }

    fn bench(&self, chunks: u32, tools: u32) -> TurnResult {
        match self.read_ns {
            Some(read) => self.say(format!("recv={} read={read} ", self.received_ns))?,
            None => self.say(format!("recv={} ", self.received_ns))?,
        }
        for _ in 0..tools {
            let id = self.state.next_tool_call_id();
            let tool = self.trace.tool("bench", &id);
            let call = ToolCall::new(id.clone(), "bench")
                .kind(ToolKind::Other)
                .status(ToolCallStatus::InProgress);
            self.update(SessionUpdate::ToolCall(call))?;
            self.set_status(&id, ToolCallStatus::Completed)?;
            tool.completed();
        }
        for _ in 2..chunks {
            self.say("x ")?;
        }
        self.say(format!("last={}", wall_ns()))?;
        done(StopReason::EndTurn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_label_is_a_known_word_or_echo() {
        assert_eq!(
            command_label("  Telemetry sk-live-123 user@example.com"),
            "telemetry"
        );
        assert_eq!(command_label("telemetry-flood 10"), "telemetry-flood");
        assert_eq!(command_label("read a.txt"), "read");
        assert_eq!(command_label("pid"), "pid");
        assert_eq!(command_label("hunter2 is my password"), "echo");
        assert_eq!(command_label(""), "echo");
    }

    #[test]
    fn a_prompt_line_is_stamped_under_its_session_and_nothing_else_is() {
        let prompt = r#"{"jsonrpc":"2.0","id":7,"method":"session/prompt","params":{"sessionId":"demo-1","prompt":[{"type":"text","text":"bench 4"}]}}"#;
        assert_eq!(prompt_session(prompt), Some("demo-1"));
        // Another method, and a prompt whose text only quotes one (escaped, so no match).
        let other =
            r#"{"jsonrpc":"2.0","id":8,"method":"session/new","params":{"sessionId":"demo-2"}}"#;
        assert_eq!(prompt_session(other), None);
        let quoted = r#"{"jsonrpc":"2.0","id":9,"method":"session/cancel","params":{"sessionId":"demo-3","text":"\"method\":\"session/prompt\""}}"#;
        assert_eq!(prompt_session(quoted), None);

        let reads = PromptReads::default();
        reads.note(other);
        reads.note(prompt);
        let id = SessionId::new("demo-1");
        assert!(reads.take(&id).is_some_and(|ns| ns > 0));
        assert_eq!(reads.take(&id), None, "a stamp is taken once");
        assert_eq!(reads.take(&SessionId::new("demo-2")), None);
    }
}

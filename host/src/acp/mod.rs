//! One ACP connection per agent child (acpd is the ACP client). Agent requests are answered
//! without ever blocking the connection's dispatch loop: permission decisions and file I/O
//! run in their own tasks and answer through the moved responder; unknown requests get
//! -32601 from the crate.

pub mod fs;
pub(crate) mod lines;
mod outbox;
mod prompt;
mod session_config;
mod updates;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, FileSystemCapabilities, Implementation,
    InitializeRequest, LoadSessionRequest, Meta, NewSessionRequest, PromptRequest,
    ReadTextFileRequest, ReadTextFileResponse, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SessionId, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::{
    Agent, Client, Lines, UntypedMessage, on_receive_notification, on_receive_request,
};
use serde_json::Value;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use self::lines::{LineSink, LineStream};
use self::outbox::Outbox;
use crate::child::{self, ChildProc, ExitInfo, SpawnSpec};
use crate::error::ApiError;
use crate::path_marks::{self, Step};
use crate::telemetry::sanitize::sanitize;
use crate::telemetry::semconv::*;
use crate::telemetry::{propagation, spans};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

/// The bridge's side of a routed ACP session. Calls come from the dispatch loop: return fast.
pub trait SessionSink: Send + Sync {
    /// A `session/update` notification, as received. True when the session's subscribers are
    /// behind, so the reader should yield before the next one.
    fn update(&self, notification: Value) -> bool;
    /// A permission request; answer through `reply` (dropping it answers `cancelled`).
    fn permission(
        &self,
        request: RequestPermissionRequest,
        reply: oneshot::Sender<RequestPermissionOutcome>,
    );
    /// The child serving this session exited.
    fn agent_exited(&self, child_id: &str, exit: ExitInfo);
}

#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub name: String,
    pub load_session: bool,
}

/// A `session/prompt` already sent to the agent, its answer not yet awaited. Dropping it
/// before the answer forgets the request and sends the agent `$/cancel_request` for it, as the
/// crate does for its own requests; a late answer is dropped.
pub struct PromptCall {
    /// `None` when the request could not be written (the agent's stdin is closed).
    answer: Option<oneshot::Receiver<Value>>,
    pending: Option<(Arc<Routes>, Arc<Outbox>, u64)>,
}

impl Drop for PromptCall {
    fn drop(&mut self) {
        if let Some((routes, outbox, n)) = self.pending.take()
            && routes.prompts.forget(n)
            && let Ok(line) = prompt::cancel_line(n)
        {
            let _ = outbox.send_now(line);
        }
    }
}

#[derive(Debug)]
pub enum PromptError {
    /// The child exited or its pipe broke before the turn ended.
    AgentGone,
    /// The agent answered with a JSON-RPC error.
    Rpc { code: i32, message: String },
}

#[derive(Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<String, Route>>,
    /// Turns' `session/prompt` requests awaiting their answers (see `prompt`).
    prompts: prompt::Pending,
    /// How far the crate has dispatched the lines the reader handed it (see `updates`).
    order: updates::Order,
}

struct Route {
    sink: Weak<dyn SessionSink>,
    /// While `session/load` replays history the daemon already holds, updates are dropped.
    muted: bool,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sink(&self, session_id: &str) -> Option<(Arc<dyn SessionSink>, bool)> {
        let map = self.lock();
        let r = map.get(session_id)?;
        Some((r.sink.upgrade()?, r.muted))
    }

    fn all(&self) -> Vec<Arc<dyn SessionSink>> {
        self.lock()
            .values()
            .filter_map(|r| r.sink.upgrade())
            .collect()
    }
}

/// After the child exits, how long its remaining output may take to reach EOF (a process outside
/// its group could hold the pipe open) before the exit is acted on anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

pub struct AgentConn {
    pub child: ChildProc,
    pub info: AgentInfo,
    pub root: PathBuf,
    pub started: Instant,
    cx: ConnectionTo<Agent>,
    /// The agent's stdin, shared with the crate: turns write their prompt and cancel here.
    outbox: Arc<Outbox>,
    routes: Arc<Routes>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled once the connection has ended: everything the agent wrote was dispatched.
    closed: CancellationToken,
}

pub struct Timeouts {
    pub init: Duration,
    pub stop_grace: Duration,
    /// The longest line the agent may write (`agent.max_line_bytes`).
    pub max_line_bytes: usize,
}

/// The error code of a spawn no retry can cure (see [`spawn_failed`]).
pub const SPAWN_FAILED: &str = "agent_spawn_failed";

/// The client's error for an agent command that cannot be started as configured: 503 like any
/// unavailable agent, but with its own code, no `Retry-After`, `retryable: false`, and the
/// command and the reason (`not_found`, `not_executable`) as fields, so clients stop retrying and
/// operators see what to fix. Only the program is named: its arguments may carry secrets.
pub fn spawn_failed(f: &child::SpawnFailure) -> ApiError {
    ApiError::new(503, SPAWN_FAILED, f.message.clone())
        .with("command", f.command.clone())
        .with("reason", f.reason)
        .with("retryable", false)
}

impl AgentConn {
    /// Spawns the child and runs `initialize` under a deadline. On any failure the child is stopped.
    pub async fn connect(
        spec: &SpawnSpec,
        root: PathBuf,
        t: &Timeouts,
    ) -> Result<Arc<Self>, ApiError> {
        let (child, stdin, stdout) =
            child::spawn(spec).map_err(|e| match child::command::permanent(&spec.program, &e) {
                Some(failure) => spawn_failed(&failure),
                None => ApiError::agent_unavailable(format!(
                    "cannot start agent `{}`: {e}",
                    spec.program
                )),
            })?;
        let routes = Arc::new(Routes::default());
        let (cx_tx, cx_rx) = oneshot::channel();
        let (transport, outbox) = lines::transport(stdin, stdout, t.max_line_bytes, routes.clone());
        let connection = serve(transport, routes.clone(), root.clone(), cx_tx);
        let watched = child.clone();
        let closed = CancellationToken::new();
        let closed_guard = closed.clone().drop_guard();
        let task = tokio::spawn(async move {
            let _closed = closed_guard;
            if let Err(e) = connection.await {
                tracing::debug!(child.id = %watched.id, error = %e, "ACP connection ended with an error");
            }
            // stdout closed (or the transport broke) while the process may still run: it can no
            // longer serve anyone, so stop it; its exit is reported as a crash unless expected.
            if watched.is_alive() {
                watched.signal_group(nix::sys::signal::Signal::SIGTERM);
            }
        });
        {
            let routes = routes.clone();
            let child = child.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let exit = child.exited().await;
                // What the agent wrote before it died reaches its sessions before its death.
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, closed.cancelled()).await;
                for sink in routes.all() {
                    sink.agent_exited(&child.id, exit);
                }
            });
        }

        let handshake = async {
            let cx = cx_rx
                .await
                .map_err(|_| "the ACP connection closed before it started".to_string())?;
            let init = InitializeRequest::new(ProtocolVersion::V1)
                .client_capabilities(
                    ClientCapabilities::new()
                        .fs(FileSystemCapabilities::new()
                            .read_text_file(true)
                            .write_text_file(true))
                        .terminal(false),
                )
                .client_info(Implementation::new("acpd", env!("CARGO_PKG_VERSION")));
            let resp = cx
                .send_request(init)
                .block_task()
                .await
                .map_err(|e| rpc_text(&e))?;
            Ok::<_, String>((cx, resp))
        };
        let init_span = spans::start(
            "child.initialize",
            SpanKind::Client,
            &Context::current(),
            vec![
                KeyValue::new(RPC_SYSTEM, "jsonrpc"),
                KeyValue::new(RPC_METHOD, "initialize"),
                KeyValue::new(CHILD_ID, child.id.clone()),
                KeyValue::new(PROCESS_PID, i64::from(child.pid)),
            ],
        );
        let result = match tokio::time::timeout(t.init, handshake).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the agent did not answer initialize within {} ms",
                t.init.as_millis()
            )),
        };
        let (cx, resp) = match result {
            Ok(ok) => ok,
            Err(msg) => {
                task.abort();
                child.expect_exit();
                let exit = child.stop(t.stop_grace).await;
                let mut msg = format!("agent failed to start: {msg}");
                if exit.code.is_some() || exit.signal.is_some() {
                    msg.push_str(&format!(
                        " (exit code {:?}, signal {:?})",
                        exit.code, exit.signal
                    ));
                }
                if let Some(last) = child.stderr_tail().last() {
                    msg.push_str(&format!("; last stderr line: {last}"));
                }
                let msg = sanitize(&msg);
                spans::fail(&init_span, msg.clone());
                spans::end(&init_span);
                return Err(ApiError::agent_unavailable(msg));
            }
        };
        let info = AgentInfo {
            name: resp
                .agent_info
                .as_ref()
                .map(|i| i.name.clone())
                .unwrap_or_else(|| spec.program.clone()),
            load_session: resp.agent_capabilities.load_session,
        };
        spans::set(&init_span, KeyValue::new(AGENT_NAME, info.name.clone()));
        spans::set(
            &init_span,
            KeyValue::new(AGENT_LOAD_SESSION, info.load_session),
        );
        spans::end(&init_span);
        tracing::info!(child.id = %child.id, agent = %info.name, load_session = info.load_session, "agent initialised");
        Ok(Arc::new(Self {
            child,
            info,
            root,
            started: Instant::now(),
            cx,
            outbox,
            routes,
            task: Mutex::new(Some(task)),
            closed,
        }))
    }

    pub fn is_alive(&self) -> bool {
        self.child.is_alive() && !self.cx.is_incoming_closed()
    }

    /// Routes a session's updates and requests to `sink`; `muted` drops its updates until `unmute`.
    pub fn register(&self, session_id: &str, sink: Weak<dyn SessionSink>, muted: bool) {
        self.routes
            .lock()
            .insert(session_id.to_string(), Route { sink, muted });
    }

    pub fn unmute(&self, session_id: &str) {
        if let Some(r) = self.routes.lock().get_mut(session_id) {
            r.muted = false;
        }
    }

    pub fn unregister(&self, session_id: &str) {
        self.routes.lock().remove(session_id);
    }

    /// `session/new`: the session id, and the agent's whole answer (its `modes`, `models`,
    /// `configOptions`, ... as it sent them: read untyped so nothing it announced is dropped).
    pub async fn new_session(
        &self,
        cwd: PathBuf,
        meta: Meta,
        deadline: Duration,
    ) -> Result<(String, Value), ApiError> {
        let (span, meta) = self.client_span("session/new", None, meta);
        let req = NewSessionRequest::new(cwd).meta(meta);
        let resp = self.raw_call("session/new", &req, deadline, &span).await;
        let id = resp.and_then(|v| match v.get("sessionId").and_then(Value::as_str) {
            Some(id) => Ok((id.to_string(), v.clone())),
            None => Err(ApiError::new(
                502,
                "agent_error",
                "session/new failed: the answer has no sessionId",
            )),
        });
        if let Ok((id, _)) = &id {
            spans::set(&span, KeyValue::new(SESSION_ID, id.clone()));
        }
        spans::end(&span);
        id
    }

    /// `session/load`: the agent's whole answer (as for `new_session`).
    pub async fn load_session(
        &self,
        id: &str,
        cwd: PathBuf,
        meta: Meta,
        deadline: Duration,
    ) -> Result<Value, ApiError> {
        let (span, meta) = self.client_span("session/load", Some(id), meta);
        let req = LoadSessionRequest::new(SessionId::new(id), cwd).meta(meta);
        let r = self.raw_call("session/load", &req, deadline, &span).await;
        spans::end(&span);
        r
    }

    /// An `acp <method>` CLIENT span under the current context, and `meta` carrying it.
    fn client_span(
        &self,
        method: &'static str,
        session: Option<&str>,
        mut meta: Meta,
    ) -> (Context, Meta) {
        let mut attrs = vec![
            KeyValue::new(RPC_SYSTEM, "jsonrpc"),
            KeyValue::new(RPC_METHOD, method),
            KeyValue::new(CHILD_ID, self.child.id.clone()),
        ];
        if let Some(s) = session {
            attrs.push(KeyValue::new(SESSION_ID, s.to_string()));
        }
        let span = spans::start(
            format!("acp {method}"),
            SpanKind::Client,
            &Context::current(),
            attrs,
        );
        propagation::inject_meta(&span, &mut meta, crate::telemetry::meta_keys());
        (span, meta)
    }

    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, agent_client_protocol::Error>>,
        deadline: Duration,
        method: &str,
        span: &Context,
    ) -> Result<T, ApiError> {
        let r = self.call_inner(fut, deadline, method).await;
        if let Err(e) = &r {
            spans::set(span, KeyValue::new(ERROR_TYPE, e.code));
            if let Some(code) = e.context.get("rpcCode").and_then(Value::as_i64) {
                spans::set(span, KeyValue::new(RPC_JSONRPC_ERROR_CODE, code));
                spans::set(
                    span,
                    KeyValue::new(RPC_JSONRPC_ERROR_MESSAGE, e.message.clone()),
                );
            }
            spans::fail(span, e.message.clone());
        }
        r
    }

    async fn call_inner<T>(
        &self,
        fut: impl Future<Output = Result<T, agent_client_protocol::Error>>,
        deadline: Duration,
        method: &str,
    ) -> Result<T, ApiError> {
        tokio::select! {
            r = tokio::time::timeout(deadline, fut) => match r {
                Ok(Ok(v)) => Ok(v),
                // The pipe closed or broke (stdout closed, a line over the bound, invalid
                // UTF-8): the agent is gone for this request, as if it had exited.
                Ok(Err(e)) if connection_ended(&e) => Err(ApiError::agent_unavailable(
                    format!("the agent's connection ended during {method}"))),
                Ok(Err(e)) => Err(ApiError::new(502, "agent_error", format!("{method} failed: {}", rpc_text(&e)))
                    .with("rpcCode", i32::from(e.code))),
                Err(_) => Err(ApiError::agent_unavailable(format!("the agent did not answer {method} within {} ms", deadline.as_millis()))),
            },
            exit = self.child.exited() => Err(ApiError::agent_unavailable(format!(
                "the agent exited during {method} (exit code {:?}, signal {:?})", exit.code, exit.signal))),
        }
    }

    /// Sends `session/prompt` now, without awaiting anything: the request is written to the
    /// agent's pipe in this call when nothing is queued before it (see `outbox`), so the turn
    /// starts in whichever task admits it (see `Session::enqueue`); [`AgentConn::await_prompt`]
    /// awaits the answer.
    pub fn start_prompt(
        &self,
        session_id: &str,
        blocks: Vec<ContentBlock>,
        meta: Meta,
    ) -> PromptCall {
        let gone = PromptCall {
            answer: None,
            pending: None,
        };
        if self.closed.is_cancelled() {
            return gone;
        }
        let req = PromptRequest::new(SessionId::new(session_id), blocks).meta(meta);
        let (n, answer) = self.routes.prompts.open();
        let call = PromptCall {
            answer: Some(answer),
            pending: Some((self.routes.clone(), self.outbox.clone(), n)),
        };
        let sent = prompt::request_line(n, &req)
            .map_err(io::Error::other)
            .and_then(|line| self.outbox.send_now(line));
        match sent {
            Ok(()) => {
                path_marks::mark(Step::Written);
                call
            }
            Err(e) => {
                tracing::debug!(child.id = %self.child.id, error = %e, "session/prompt not written");
                // Never written: nothing to withdraw when `call` drops.
                self.routes.prompts.forget(n);
                gone
            }
        }
    }

    /// The end of a turn started with [`AgentConn::start_prompt`]. The caller owns
    /// cancellation (`cancel`) and deadlines; dropping the call sends `$/cancel_request`, so
    /// callers keep it alive until the turn ends.
    pub async fn await_prompt(&self, mut call: PromptCall) -> Result<String, PromptError> {
        let Some(answer) = call.answer.as_mut() else {
            return Err(PromptError::AgentGone);
        };
        tokio::select! {
            // An answer the connection dispatched before it ended is the turn's end.
            biased;
            r = answer => match r {
                Ok(response) => prompt::outcome(response),
                Err(_) => Err(PromptError::AgentGone),
            },
            // EOF from the agent, or the transport failed: everything it wrote was dispatched,
            // and no answer came.
            _ = self.closed.cancelled() => Err(PromptError::AgentGone),
            // Not before the agent's last updates were routed: they belong to this turn.
            _ = self.exited_and_drained() => Err(PromptError::AgentGone),
        }
    }

    async fn exited_and_drained(&self) {
        self.child.exited().await;
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, self.closed.cancelled()).await;
    }

    /// `session/cancel`, through the outbox like the prompt, so it can never reach the agent
    /// before the prompt it cancels, nor a stale one after the next turn's prompt.
    pub fn cancel(&self, session_id: &str) {
        let params = CancelNotification::new(SessionId::new(session_id));
        if let Ok(line) = prompt::notification_line("session/cancel", &params) {
            let _ = self.outbox.send_now(line);
        }
    }

    /// Closes stdin, then SIGTERM and SIGKILL the group as needed (see `ChildProc::stop`).
    pub async fn shutdown(&self, grace: Duration) -> ExitInfo {
        self.child.expect_exit();
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort(); // drops the transport
        }
        self.outbox.close(); // closes the child's stdin, which this connection shares
        self.child.stop(grace).await
    }
}

/// The client side of one ACP connection over `transport`, until the agent's output ends:
/// `ready` gets the handle to send requests with; agent requests are answered through `routes`,
/// file access confined to `root`.
pub(crate) async fn serve(
    transport: Lines<LineSink, LineStream>,
    routes: Arc<Routes>,
    root: PathBuf,
    ready: oneshot::Sender<ConnectionTo<Agent>>,
) -> Result<(), agent_client_protocol::Error> {
    let (r_notify, r_perm, r_read, r_write) = (
        routes.clone(),
        routes.clone(),
        routes.clone(),
        routes.clone(),
    );
    let (root_read, root_write) = (root.clone(), root.clone());
    Client
        .v1()
        .name("acpd")
        .on_receive_notification(
            async move |n: UntypedMessage, _cx| {
                if n.method == updates::BARRIER_METHOD {
                    r_notify.order.dispatched(&n.params);
                    return Ok(());
                }
                if n.method == prompt::ANSWER_METHOD {
                    r_notify.prompts.answer(n.params);
                    return Ok(());
                }
                if n.method != "session/update" {
                    return Ok(()); // vendor notifications (qwen/notify/...) are ignored, as the spec asks
                }
                route_update(&r_notify, n.params).await;
                Ok(())
            },
            on_receive_notification!(),
        )
        .on_receive_request(
            async move |req: RequestPermissionRequest, responder, _cx| {
                let (tx, rx) = oneshot::channel();
                match r_perm.sink(&req.session_id.to_string()) {
                    Some((sink, _)) => sink.permission(req, tx),
                    None => drop(tx),
                }
                tokio::spawn(async move {
                    let outcome = rx.await.unwrap_or(RequestPermissionOutcome::Cancelled);
                    let _ = responder.respond(RequestPermissionResponse::new(outcome));
                });
                Ok(())
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: ReadTextFileRequest, responder, _cx| {
                let known = r_read.sink(&req.session_id.to_string()).is_some();
                let root = root_read.clone();
                tokio::spawn(async move {
                    let result = match known {
                        true => fs::read(&root, &req.path, req.line, req.limit).await,
                        false => Err(unknown_session()),
                    };
                    let _ = responder.respond_with_result(result.map(ReadTextFileResponse::new));
                });
                Ok(())
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: WriteTextFileRequest, responder, _cx| {
                let known = r_write.sink(&req.session_id.to_string()).is_some();
                let root = root_write.clone();
                tokio::spawn(async move {
                    let result = match known {
                        true => fs::write(&root, &req.path, &req.content).await,
                        false => Err(unknown_session()),
                    };
                    let _ = responder
                        .respond_with_result(result.map(|()| WriteTextFileResponse::new()));
                });
                Ok(())
            },
            on_receive_request!(),
        )
        .connect_with(transport, async move |cx: ConnectionTo<Agent>| {
            let _ = ready.send(cx.clone());
            cx.incoming_closed().await;
            Ok(())
        })
        .await
}

/// Delivers a `session/update`'s params, by the reader (`updates`) or the crate's dispatch loop.
/// When that session's subscribers are behind, it yields first: an agent streaming fast would
/// otherwise have a long burst published before any SSE writer runs, and overflow subscribers
/// that keep up.
async fn route_update(routes: &Routes, params: Value) {
    if deliver_update(routes, params) {
        tokio::task::yield_now().await;
    }
}

/// [`route_update`]'s delivery; true when the session's subscribers are behind.
fn deliver_update(routes: &Routes, params: Value) -> bool {
    let Some(sid) = params.get("sessionId").and_then(Value::as_str) else {
        return false;
    };
    match routes.sink(sid) {
        Some((sink, false)) => sink.update(params),
        Some((_, true)) => false,
        None => {
            tracing::debug!(session.id = sid, "update for an unknown session dropped");
            false
        }
    }
}

fn unknown_session() -> agent_client_protocol::Error {
    agent_client_protocol::Error::invalid_params()
        .data(serde_json::json!({"reason": "unknown session"}))
}

fn rpc_text(e: &agent_client_protocol::Error) -> String {
    sanitize(&format!("{} (code {})", e.message, i32::from(e.code)))
}

/// The crate's own errors for a connection that ended under a pending request: the agent's
/// stdout reached EOF, or the transport failed (a line over the bound, invalid UTF-8).
fn connection_ended(e: &agent_client_protocol::Error) -> bool {
    agent_client_protocol::is_connection_terminated(e)
        || agent_client_protocol::is_incoming_transport_closed(e)
}

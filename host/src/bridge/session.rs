//! A daemon session: its event bus, its FIFO prompt queue run by one task, its pending
//! permission requests, the clients attached to it, and the child currently serving it.

use agent_client_protocol::v1::schema::{
    ContentBlock, Meta, RequestPermissionOutcome, RequestPermissionRequest,
    SelectedPermissionOutcome,
};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::Workspace;
use super::context::SessionContext;
use super::events::{Draft, EventBus, now_ms};
use super::trace::{self, TurnTrace};
use crate::acp::{AgentConn, PromptCall, PromptError, SessionSink};
use crate::child::ExitInfo;
use crate::error::{ApiError, Surface, client_visible};
use crate::path_marks::{self, Step};
use crate::telemetry::semconv::{
    PERMISSION_DECISION, PERMISSION_OPTION_KIND, PERMISSION_REQUEST_ID, PROMPT_ID,
};
use crate::telemetry::{propagation, spans};
use opentelemetry::KeyValue;

/// Client ids a session remembers (the most recently seen), in memory and in its journal. Every
/// attach, load or resume without a known id mints one, so a client that reconnects without
/// keeping its id would otherwise grow the set for the session's life. The least recently seen
/// is forgotten first: its header is then refused as not issued.
const MAX_CLIENTS: usize = 256;

/// An agent asking more than this many questions at once gets `cancelled` for the excess.
const MAX_PENDING_PERMISSIONS: usize = 64;

/// Per-session settings taken from the config once.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_pending: usize,
    pub permission_timeout: Duration,
    pub turn_timeout: Duration,
    pub cancel_grace: Duration,
    pub session_timeout: Duration,
}

pub struct Session {
    pub id: String,
    pub workspace: Arc<Workspace>,
    pub created_at: SystemTime,
    pub bus: EventBus,
    /// What the agent announced (models, modes, config options) and the session's metadata.
    pub ctx: SessionContext,
    limits: SessionLimits,
    state: Mutex<State>,
    wake: Notify,
    /// Serialises (re)binding to a child, so a restore happens once.
    bind: tokio::sync::Mutex<()>,
    me: Weak<Session>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Active,
    /// Its child died; the next prompt or load restores it through `session/load`.
    Died,
    /// Restored from the journal at start-up: no child until a load, resume or prompt restores
    /// it through `session/load`.
    Dormant,
    Closed,
}

struct State {
    queue: VecDeque<Prompt>,
    running: Option<Running>,
    agent: Option<Arc<AgentConn>>,
    life: Life,
    permissions: HashMap<String, Pending>,
    clients: HashMap<String, u64>,
    /// A turn that `enqueue` started itself (the session was idle): its request is with the
    /// agent and `running` is set; the runner awaits it before anything else.
    started: Option<Started>,
}

/// A turn started in the admitting task, handed to the runner to await. Its id, originator
/// and cancellation are the session's `running` turn's.
struct Started {
    agent: Arc<AgentConn>,
    call: PromptCall,
}

pub struct Prompt {
    pub id: String,
    pub blocks: Vec<ContentBlock>,
    pub meta: Meta,
    pub originator: Option<String>,
    text: String,
    queued_at: u64,
    trace: Option<TurnTrace>,
}

struct Running {
    id: String,
    text: String,
    queued_at: u64,
    originator: Option<String>,
    cancel: CancellationToken,
    /// Set when the child died during this turn: the runner reports it after `turn_error`.
    death: Option<ExitInfo>,
    trace: TurnTrace,
}

struct Pending {
    /// Option ids with their ACP kinds (`allow_once`, ...), as the agent offered them.
    options: Vec<(String, String)>,
    reply: oneshot::Sender<RequestPermissionOutcome>,
    span: opentelemetry::Context,
    /// The prompt whose turn asked.
    prompt: Option<String>,
    created_at: SystemTime,
    /// The agent's `toolCall` and `options`, as sent (for `pendingInteractions`).
    tool_call: Value,
    offered: Value,
}

/// What a vote decided, for the vote request's span.
pub struct Voted {
    /// The selected option id, or `cancelled`.
    pub decision: String,
    /// The selected option's ACP kind.
    pub option_kind: Option<String>,
    /// The prompt whose turn asked.
    pub prompt_id: Option<String>,
}

impl Prompt {
    pub fn new(blocks: Vec<ContentBlock>, meta: Meta, originator: Option<String>) -> Self {
        let text = blocks
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            blocks,
            meta,
            originator,
            text,
            queued_at: now_ms(),
            trace: None,
        }
    }
}

impl Session {
    pub fn new(
        id: String,
        workspace: Arc<Workspace>,
        bus: EventBus,
        limits: SessionLimits,
    ) -> Arc<Self> {
        Self::with_life(id, workspace, bus, limits, SystemTime::now(), Life::Active)
    }

    /// A session restored from the journal at start-up: its creation time, and `Dormant` (no
    /// child until it is loaded or prompted).
    pub fn with_life(
        id: String,
        workspace: Arc<Workspace>,
        bus: EventBus,
        limits: SessionLimits,
        created_at: SystemTime,
        life: Life,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            id,
            workspace,
            created_at,
            bus,
            ctx: SessionContext::default(),
            limits,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: None,
                agent: None,
                life,
                permissions: HashMap::new(),
                clients: HashMap::new(),
                started: None,
            }),
            wake: Notify::new(),
            bind: tokio::sync::Mutex::new(()),
            me: me.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn agent(&self) -> Option<Arc<AgentConn>> {
        self.lock().agent.clone()
    }

    pub fn sink(&self) -> Weak<dyn SessionSink> {
        self.me.clone() as Weak<dyn SessionSink>
    }

    /// Binds a child that already knows this session (just created it or loaded it).
    pub fn bind(&self, conn: Arc<AgentConn>) {
        let mut st = self.lock();
        st.agent = Some(conn);
        if matches!(st.life, Life::Died | Life::Dormant) {
            st.life = Life::Active;
        }
    }

    /// Journals the session's metadata (display name, pull requests, what the agent announced)
    /// when it changed.
    pub fn persist_meta(&self) {
        if let Some(j) = self.bus.journal() {
            let mut meta = json!({"state": self.ctx.state()});
            if let Some(n) = self.ctx.display_name() {
                meta["displayName"] = json!(n);
            }
            let prs = self.ctx.prs();
            if !prs.is_empty() {
                meta["prs"] = json!(prs);
            }
            // Bounded in memory already (`MAX_CLIENTS`).
            let clients: Vec<String> = self.lock().clients.keys().cloned().collect();
            meta["clients"] = json!(clients);
            // The workspace's default session (what a `single`-scope `POST /session` attaches
            // to) stays the default across a restart.
            let is_default = self
                .workspace
                .default_session
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_deref()
                == Some(self.id.as_str());
            if is_default {
                meta["workspaceDefault"] = json!(true);
            }
            j.set_meta(meta);
        }
    }

    /// Starts the task that runs this session's prompts one at a time.
    pub fn start_runner(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.run().await });
    }

    // ---- clients ----------------------------------------------------------------------

    /// Mints a client id for this session, or reuses `requested` if this session issued it.
    pub fn attach_client(&self, requested: Option<&str>) -> String {
        let mut st = self.lock();
        let id = match requested {
            Some(r) if st.clients.contains_key(r) => r.to_string(),
            _ => format!("client_{}", uuid::Uuid::new_v4()),
        };
        let minted = st.clients.insert(id.clone(), now_ms()).is_none();
        if minted && st.clients.len() > MAX_CLIENTS {
            let oldest = st
                .clients
                .iter()
                .filter(|(c, _)| **c != id)
                .min_by_key(|(_, seen)| **seen)
                .map(|(c, _)| c.clone());
            if let Some(oldest) = oldest {
                st.clients.remove(&oldest);
            }
        }
        drop(st);
        if minted {
            // Journaled, so a client keeps its id (and its `X-Qwen-Client-Id`) across a restart.
            self.persist_meta();
        }
        id
    }

    /// The client ids a journaled session had issued (at start-up).
    pub fn restore_clients(&self, meta: &Value) {
        let mut st = self.lock();
        for c in meta["clients"].as_array().into_iter().flatten() {
            if let Some(c) = c.as_str() {
                st.clients.insert(c.to_string(), 0);
            }
        }
    }

    /// Validates `X-Qwen-Client-Id`: absent is allowed; present must be well-formed and issued here.
    pub fn check_client(&self, header: Option<&str>) -> Result<Option<String>, ApiError> {
        let Some(id) = header else { return Ok(None) };
        let well_formed = (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        let mut st = self.lock();
        match st.clients.get_mut(id) {
            Some(seen) if well_formed => {
                *seen = now_ms();
                Ok(Some(id.to_string()))
            }
            _ => Err(ApiError::new(
                400,
                "invalid_client_id",
                "X-Qwen-Client-Id was not issued for this session",
            )
            .with("sessionId", self.id.as_str())),
        }
    }

    /// `X-Qwen-Client-Id` when this session issued it, else nothing: for routes whose contract
    /// does not include the header (never refused there, and not counted as the client's
    /// activity either).
    pub fn issued_client(&self, header: Option<&str>) -> Option<String> {
        let id = header?;
        self.lock().clients.contains_key(id).then(|| id.to_string())
    }

    // ---- prompt queue -----------------------------------------------------------------

    /// Admits a prompt (FIFO, cap includes the running one). Returns the bus's last id before it.
    pub fn enqueue(&self, prompt: Prompt) -> Result<(String, u64), ApiError> {
        let mut st = self.lock();
        if st.life == Life::Closed {
            return Err(ApiError::session_not_found(&self.id));
        }
        let pending = st.queue.len() + usize::from(st.running.is_some());
        if pending >= self.limits.max_pending {
            return Err(ApiError::new(
                503,
                "prompt_queue_full",
                "Too many pending prompts for this session",
            )
            .with("limit", self.limits.max_pending)
            .with("pendingCount", pending)
            .with("sessionId", self.id.as_str())
            .retry_after(1));
        }
        let last = self.bus.last_id();
        let mut prompt = prompt;
        let id = prompt.id.clone();
        let trace = TurnTrace::admit(&self.id, &id);
        trace.record_input(&prompt.text);
        path_marks::mark(Step::Admitted);
        prompt.trace = Some(trace);
        // queuedAt: the official client rejects a pending_prompt_added without it.
        let added = json!({"sessionId": self.id, "promptId": id, "text": prompt.text,
                           "position": pending, "queuedAt": prompt.queued_at});
        // An idle session with a live child: start the turn here, as the runner would next,
        // instead of waking the runner first. That wake was a task hop (often to the other
        // core) before the request even left; now the runner only awaits the answer. The
        // events and their order are the runner's (pending_prompt_added, then
        // pending_prompt_started and the echoed blocks), journaled here once the request is
        // written, ahead of any update of the agent's (`start_here`).
        let idle = pending == 0 && st.started.is_none() && st.life == Life::Active;
        let live = st.agent.clone().filter(|a| idle && a.is_alive());
        match live {
            Some(agent) => {
                self.start_here(&mut st, prompt, agent, added);
                // The runner is woken once the lock is released: woken under it, it was often
                // taken by the other worker at once (on this kind of guest, on the same vCPU)
                // only to block on this lock and be woken again (BENCHMARKS.md, "Round
                // twelve"). The request is in the agent's pipe already (`dispatch`). The runner
                // then hands the turn's first events to the subscribers: this task wakes only
                // the runner (`EventBus::publish_all_held`).
                drop(st);
                self.wake.notify_one();
            }
            None => {
                self.bus.publish(
                    "pending_prompt_added",
                    Some(&id),
                    added,
                    prompt.originator.as_deref(),
                );
                st.queue.push_back(prompt);
                drop(st);
                self.wake.notify_one();
            }
        }
        Ok((id, last))
    }

    /// Starts `prompt`'s turn in the caller's task (see `enqueue`, which then wakes the
    /// runner to await it). `added` is its `pending_prompt_added`, published with the start's
    /// events: one journal write for the three.
    fn start_here(&self, st: &mut State, prompt: Prompt, agent: Arc<AgentConn>, added: Value) {
        let Prompt {
            id,
            blocks,
            meta,
            originator,
            text,
            queued_at,
            trace,
        } = prompt;
        st.running = Some(Running {
            id: id.clone(),
            text: text.clone(),
            queued_at,
            originator: originator.clone(),
            cancel: CancellationToken::new(),
            death: None,
            trace: trace.unwrap_or_else(|| TurnTrace::admit(&self.id, &id)),
        });
        let mut events = Vec::with_capacity(2 + blocks.len());
        events.push(Draft {
            kind: "pending_prompt_added",
            prompt_id: Some(&id),
            data: added,
            originator: originator.as_deref(),
        });
        self.start_events(&mut events, &id, &text, &blocks, originator.as_deref());
        // The request first, its events after: no agent update can overtake them, because
        // the agent's updates reach the bus through this session's lock (`update`), which the
        // admission holds until it returns.
        path_marks::mark(Step::Prepared);
        let call = self.dispatch(st, &agent, blocks, meta);
        // Handed to the subscribers by the runner (see `publish_all_held`).
        self.bus.publish_all_held(&events);
        self.enrich_running(st, &agent);
        st.started = Some(Started { agent, call });
    }

    /// `pending_prompt_started` and the prompt's blocks echoed, as a turn starts (added to
    /// `events`, to be published together).
    fn start_events<'a>(
        &self,
        events: &mut Vec<Draft<'a>>,
        prompt_id: &'a str,
        text: &str,
        blocks: &[ContentBlock],
        originator: Option<&'a str>,
    ) {
        let pid = Some(prompt_id);
        // The prompt's text, as in pending_prompt_added: the official client requires it here too.
        events.push(Draft {
            kind: "pending_prompt_started",
            prompt_id: pid,
            data: json!({"sessionId": self.id, "promptId": prompt_id, "text": text}),
            originator,
        });
        for block in blocks {
            events.push(Draft {
                kind: "session_update",
                prompt_id: pid,
                data: json!({"sessionId": self.id, "update": {"sessionUpdate": "user_message_chunk", "content": block,
                       "_meta": {"source": "bridge-echo"}}}),
                originator,
            });
        }
    }

    /// Opens the turn's ACP span and sends `session/prompt` (no await: see `start_prompt`).
    /// The callers run the `dispatch` hook after it (`TurnTrace::enrich`), off the request's path.
    fn dispatch(
        &self,
        st: &mut State,
        agent: &AgentConn,
        blocks: Vec<ContentBlock>,
        meta: Meta,
    ) -> PromptCall {
        let acp_cx = match st.running.as_mut() {
            Some(r) => r.trace.start(&self.id, &agent.child.id),
            None => opentelemetry::Context::new(),
        };
        let mut meta = meta;
        propagation::inject_meta(&acp_cx, &mut meta, crate::telemetry::meta_keys());
        agent.child.set_turn(Some(acp_cx));
        path_marks::mark(Step::TurnSpan);
        agent.start_prompt(&self.id, blocks, meta)
    }

    /// The running turn's `dispatch` hook, once its request is on its way (`TurnTrace::enrich`).
    fn enrich_running(&self, st: &State, agent: &AgentConn) {
        if let Some(r) = st.running.as_ref() {
            r.trace.enrich(&self.id, &agent.child.id);
        }
    }

    pub fn pending_prompts(&self) -> Vec<Value> {
        let st = self.lock();
        let entry = |id: &str,
                     text: &str,
                     queued_at: u64,
                     state: &str,
                     originator: &Option<String>| {
            json!({"promptId": id, "text": text, "queuedAt": queued_at, "state": state, "originatorClientId": originator})
        };
        st.running
            .iter()
            .map(|r| entry(&r.id, &r.text, r.queued_at, "running", &r.originator))
            .chain(
                st.queue
                    .iter()
                    .map(|p| entry(&p.id, &p.text, p.queued_at, "queued", &p.originator)),
            )
            .collect()
    }

    /// Removes a queued (not running) prompt.
    pub fn remove_queued(&self, prompt_id: &str) -> Result<(), ApiError> {
        let mut st = self.lock();
        if let Some(i) = st.queue.iter().position(|p| p.id == prompt_id) {
            let p = st.queue.remove(i).expect("index from position");
            self.bus.publish(
                "prompt_cancelled",
                Some(prompt_id),
                json!({"sessionId": self.id, "promptId": prompt_id, "state": "queued"}),
                p.originator.as_deref(),
            );
            // The queue entry's end, as qwen serve's clients track the queue.
            self.bus.publish(
                "pending_prompt_completed",
                Some(prompt_id),
                json!({"sessionId": self.id, "promptId": prompt_id, "state": "removed"}),
                p.originator.as_deref(),
            );
            return Ok(());
        }
        if st.running.as_ref().is_some_and(|r| r.id == prompt_id) {
            return Err(ApiError::new(
                409,
                "prompt_running",
                "The prompt is running; use POST /session/:id/cancel",
            )
            .with("promptId", prompt_id));
        }
        Err(
            ApiError::new(404, "prompt_not_found", "No such queued prompt")
                .with("promptId", prompt_id),
        )
    }

    /// Cancels the running prompt only; queued prompts run afterwards. Returns its id.
    pub fn cancel_running(&self) -> Option<String> {
        let st = self.lock();
        trace::linked_operation(
            "session.cancel",
            &self.id,
            st.running.as_ref().map(|r| &r.trace.dispatch),
            st.running
                .iter()
                .map(|r| KeyValue::new(PROMPT_ID, r.id.clone()))
                .collect(),
        );
        let r = st.running.as_ref()?;
        if !r.cancel.is_cancelled() {
            self.bus.publish(
                "prompt_cancelled",
                Some(&r.id),
                json!({"sessionId": self.id, "promptId": r.id, "state": "running"}),
                r.originator.as_deref(),
            );
            r.cancel.cancel();
        }
        Some(r.id.clone())
    }

    async fn run(self: Arc<Self>) {
        enum Next {
            /// Started by `enqueue`: only its answer is awaited here (with the running turn's
            /// id, originator and cancellation).
            Started(Started, String, Option<String>, CancellationToken),
            /// Boxed: a prompt (with its trace) is several times the size of a started turn.
            Queued(Box<Prompt>, CancellationToken),
        }
        loop {
            let next = loop {
                {
                    let mut st = self.lock();
                    // A turn `enqueue` started is awaited even if the session closed since:
                    // its cancellation ends it, as for any running turn.
                    if let Some(started) = st.started.take()
                        && let Some(r) = st.running.as_ref()
                    {
                        let (id, originator) = (r.id.clone(), r.originator.clone());
                        break Next::Started(started, id, originator, r.cancel.clone());
                    }
                    if st.life == Life::Closed {
                        return;
                    }
                    if let Some(mut p) = st.queue.pop_front() {
                        let cancel = CancellationToken::new();
                        let trace = p
                            .trace
                            .take()
                            .unwrap_or_else(|| TurnTrace::admit(&self.id, &p.id));
                        st.running = Some(Running {
                            id: p.id.clone(),
                            text: p.text.clone(),
                            queued_at: p.queued_at,
                            originator: p.originator.clone(),
                            cancel: cancel.clone(),
                            death: None,
                            trace,
                        });
                        break Next::Queued(Box::new(p), cancel);
                    }
                }
                self.wake.notified().await;
            };
            let (prompt_id, originator, end) = match next {
                Next::Started(s, id, originator, cancel) => {
                    // The turn's first events, which `enqueue` journaled but did not hand over.
                    self.bus.release();
                    let end = self.await_turn(&s.agent, s.call, cancel).await;
                    (id, originator, end)
                }
                Next::Queued(p, cancel) => {
                    let (id, originator) = (p.id.clone(), p.originator.clone());
                    let end = self.run_turn(*p, cancel).await;
                    (id, originator, end)
                }
            };
            self.finish_turn(&prompt_id, originator.as_deref(), end);
        }
    }

    /// A queued turn: announced, bound to a child (restoring the session if its child died),
    /// sent, and awaited.
    async fn run_turn(&self, p: Prompt, cancel: CancellationToken) -> Result<String, ApiError> {
        {
            // Scoped: the events' payloads are not kept for the rest of the turn.
            let mut events = Vec::with_capacity(1 + p.blocks.len());
            let originator = p.originator.as_deref();
            self.start_events(&mut events, &p.id, &p.text, &p.blocks, originator);
            self.bus.publish_all(&events);
        }
        let agent = self.ensure_agent(true).await?;
        let call = {
            let mut st = self.lock();
            let call = self.dispatch(&mut st, &agent, p.blocks, p.meta);
            self.enrich_running(&st, &agent);
            call
        };
        self.await_turn(&agent, call, cancel).await
    }

    /// Awaits a sent turn's answer, under the turn's cancellation and deadline.
    async fn await_turn(
        &self,
        agent: &AgentConn,
        call: PromptCall,
        cancel: CancellationToken,
    ) -> Result<String, ApiError> {
        let turn = agent.await_prompt(call);
        tokio::pin!(turn);
        let deadline = tokio::time::sleep(self.limits.turn_timeout);
        tokio::pin!(deadline);
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let mut cancelling = false;
        loop {
            tokio::select! {
                r = &mut turn => {
                    if matches!(r, Err(PromptError::AgentGone)) {
                        self.note_death(agent).await;
                    }
                    return r.map_err(|e| match e {
                    PromptError::AgentGone => ApiError::new(502, "agent_exited", "The agent process exited during the turn"),
                    PromptError::Rpc { code, message } => ApiError::new(502, "agent_error", message).with("rpcCode", code),
                    });
                }
                _ = cancel.cancelled(), if !cancelling => {
                    cancelling = true;
                    self.cancel_permissions();
                    agent.cancel(&self.id);
                    grace.as_mut().reset(tokio::time::Instant::now() + self.limits.cancel_grace);
                }
                _ = &mut grace => return Err(ApiError::new(504, "cancel_timeout",
                    "The agent did not end the cancelled turn in time")),
                _ = &mut deadline => {
                    self.cancel_permissions();
                    agent.cancel(&self.id);
                    return Err(ApiError::new(504, "turn_timeout", "The turn exceeded its time limit and was cancelled"));
                }
            }
        }
    }

    fn finish_turn(
        &self,
        prompt_id: &str,
        originator: Option<&str>,
        end: Result<String, ApiError>,
    ) {
        let mut st = self.lock();
        let (death, trace) = match st.running.take() {
            Some(r) => (r.death, Some(r.trace)),
            None => (None, None),
        };
        // Added to the end event (clients that do not know them ignore them): the console links
        // each turn to its trace.
        let (trace_id, duration_ms) = trace.as_ref().map_or((None, None), |t| {
            let (id, ms) = t.summary();
            (id, Some(ms))
        });
        if let Some(mut trace) = trace {
            trace.finish(&end, death);
        }
        if let Some(a) = &st.agent {
            a.child.set_turn(None);
        }
        // A question of a turn that is over can no longer be answered (the agent crashed or
        // timed out while asking): resolve it before the turn's end is announced.
        self.cancel_pending(&mut st);
        let pid = Some(prompt_id);
        let with_trace = |mut data: Value| {
            if let Some(id) = &trace_id {
                data["traceId"] = json!(id);
            }
            if let Some(ms) = duration_ms {
                data["durationMs"] = json!(ms);
            }
            data
        };
        self.ctx.set_turn_error(end.as_ref().err().map(|e| {
            let shown = client_visible(e, Surface::Sse);
            json!({"message": shown.message, "code": shown.code})
        }));
        match &end {
            Ok(stop) => {
                self.bus.publish(
                    "turn_complete",
                    pid,
                    with_trace(
                        json!({"sessionId": self.id, "stopReason": stop, "promptId": prompt_id}),
                    ),
                    originator,
                );
            }
            Err(e) => {
                let shown = client_visible(e, Surface::Sse);
                let mut data = json!({"sessionId": self.id, "message": shown.message, "code": shown.code, "promptId": prompt_id});
                if let Some(r) = shown.retryable {
                    data["retryable"] = json!(r);
                }
                if let Some(rpc) = shown.context.get("rpcCode") {
                    data["rpcCode"] = rpc.clone();
                }
                self.bus
                    .publish("turn_error", pid, with_trace(data), originator);
            }
        }
        let stop = end.as_ref().ok().map(String::as_str);
        self.bus.publish(
            "pending_prompt_completed",
            pid,
            json!({"sessionId": self.id, "promptId": prompt_id, "state": "completed", "stopReason": stop}),
            originator,
        );
        if let Some(exit) = death {
            self.report_death(&mut st, exit);
        }
    }

    /// The turn lost its child: wait (briefly) for the exit status, so the turn's end reports
    /// how the child died, whichever of the pipe and the exit was noticed first.
    async fn note_death(&self, agent: &AgentConn) {
        let exit = tokio::time::timeout(Duration::from_secs(2), agent.child.exited()).await;
        if let Ok(exit) = exit.map(|e| ExitInfo {
            expected: agent.child.exit_info().is_some_and(|i| i.expected),
            ..e
        }) && !exit.expected
        {
            let mut st = self.lock();
            if let Some(r) = st.running.as_mut() {
                r.death.get_or_insert(exit);
            }
        }
    }

    fn report_death(&self, st: &mut State, exit: ExitInfo) {
        if st.life == Life::Closed {
            return;
        }
        st.life = Life::Died;
        tracing::warn!(name: "acpd.session.die", target: "acpd::bridge", { "session.id" = %self.id, "process.exit.code" = i64::from(exit.code.unwrap_or(-1)) }, "session lost its agent child");
        let signal = exit
            .signal
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .map(|s| s.as_str());
        self.bus.publish(
            "session_died",
            None,
            json!({"sessionId": self.id, "reason": "channel_closed", "exitCode": exit.code, "signalCode": signal}),
            None,
        );
    }

    /// The child serving this session, restoring the session on a new child through
    /// `session/load` when the old one died. `mute_replay`: the bus already holds the history.
    pub async fn ensure_agent(&self, mute_replay: bool) -> Result<Arc<AgentConn>, ApiError> {
        let _bind = self.bind.lock().await;
        if let Some(a) = self.agent().filter(|a| a.is_alive()) {
            return Ok(a);
        }
        let conn = self.workspace.agents.acquire().await?;
        if !conn.info.load_session {
            return Err(ApiError::new(
                410,
                "session_not_restorable",
                "The agent cannot restore sessions (no loadSession)",
            )
            .with("sessionId", self.id.as_str()));
        }
        conn.register(&self.id, self.sink(), mute_replay);
        let loaded = conn
            .load_session(
                &self.id,
                self.workspace.cwd.clone(),
                Meta::new(),
                self.limits.session_timeout,
            )
            .await;
        conn.unmute(&self.id);
        match loaded {
            Ok(announced) => {
                self.ctx.announce(&announced);
                self.persist_meta();
            }
            Err(e) => {
                conn.unregister(&self.id);
                return Err(e);
            }
        }
        tracing::info!(session.id = %self.id, child.id = %conn.child.id, "session restored on a new child");
        crate::telemetry::metrics().child_lifecycle.add(
            1,
            &[KeyValue::new(
                crate::telemetry::semconv::CHILD_EVENT,
                "restart",
            )],
        );
        self.bind(conn.clone());
        Ok(conn)
    }

    // ---- permissions ------------------------------------------------------------------

    /// A vote's `outcome`: the selected option id, or none for `cancelled`.
    pub fn check_outcome(outcome: &Value) -> Result<Option<String>, ApiError> {
        match outcome.get("outcome").and_then(Value::as_str) {
            Some("selected") => match outcome.get("optionId").and_then(Value::as_str) {
                Some(o) => Ok(Some(o.to_string())),
                None => Err(ApiError::invalid_request(
                    "outcome.optionId is required when outcome is \"selected\"",
                )),
            },
            Some("cancelled") => Ok(None),
            _ => Err(ApiError::invalid_request(
                "outcome.outcome must be \"selected\" or \"cancelled\"",
            )),
        }
    }

    /// A vote from a client. First responder wins; later votes find nothing pending (404).
    pub fn vote(
        &self,
        request_id: &str,
        outcome: &Value,
        voter: Option<&str>,
    ) -> Result<Voted, ApiError> {
        let parsed = Self::check_outcome(outcome)?;
        let mut st = self.lock();
        let Some(p) = st.permissions.get(request_id) else {
            return Err(ApiError::new(
                404,
                "permission_not_pending",
                "No pending permission request with this id",
            )
            .with("requestId", request_id));
        };
        let option_kind = match &parsed {
            Some(o) => match p.options.iter().find(|(id, _)| id == o) {
                Some((_, kind)) => Some(kind.clone()),
                None => {
                    return Err(ApiError::new(
                        400,
                        "invalid_option_id",
                        format!("Unknown optionId: {o}"),
                    )
                    .with("requestId", request_id)
                    .with(
                        "validOptionIds",
                        p.options
                            .iter()
                            .map(|(id, _)| id.clone())
                            .collect::<Vec<_>>(),
                    ));
                }
            },
            None => None,
        };
        let voted = Voted {
            decision: parsed.clone().unwrap_or_else(|| "cancelled".to_string()),
            option_kind,
            prompt_id: p.prompt.clone(),
        };
        let outcome = match parsed {
            Some(o) => RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(o)),
            None => RequestPermissionOutcome::Cancelled,
        };
        let mut attrs = vec![
            KeyValue::new(PERMISSION_REQUEST_ID, request_id.to_string()),
            KeyValue::new(PERMISSION_DECISION, voted.decision.clone()),
        ];
        attrs.extend(
            voted
                .option_kind
                .iter()
                .map(|k| KeyValue::new(PERMISSION_OPTION_KIND, k.clone())),
        );
        attrs.extend(
            voted
                .prompt_id
                .iter()
                .map(|p| KeyValue::new(PROMPT_ID, p.clone())),
        );
        trace::linked_operation(
            "permission.vote",
            &self.id,
            st.running.as_ref().map(|r| &r.trace.dispatch),
            attrs,
        );
        self.resolve(&mut st, request_id, outcome, voter);
        Ok(voted)
    }

    fn resolve(
        &self,
        st: &mut State,
        request_id: &str,
        outcome: RequestPermissionOutcome,
        voter: Option<&str>,
    ) {
        if let Some(p) = st.permissions.remove(request_id) {
            let decision = match &outcome {
                RequestPermissionOutcome::Selected(s) => s.option_id.to_string(),
                _ if voter.is_none() => "cancelled_by_daemon".to_string(),
                _ => "cancelled".to_string(),
            };
            if let Some((_, kind)) = p.options.iter().find(|(id, _)| *id == decision) {
                spans::set(&p.span, KeyValue::new(PERMISSION_OPTION_KIND, kind.clone()));
            }
            spans::set(&p.span, KeyValue::new(PERMISSION_DECISION, decision));
            spans::end(&p.span);
            let shown = serde_json::to_value(&outcome).unwrap_or(Value::Null);
            let _ = p.reply.send(outcome);
            let prompt = st.running.as_ref().map(|r| r.id.clone());
            self.bus.publish(
                "permission_resolved",
                prompt.as_deref(),
                json!({"requestId": request_id, "outcome": shown, "voterClientId": voter}),
                voter,
            );
        }
    }

    fn cancel_permissions(&self) {
        let mut st = self.lock();
        self.cancel_pending(&mut st);
    }

    /// Answers every pending permission request `cancelled` (turn cancelled, session closed,
    /// or the asking child gone).
    fn cancel_pending(&self, st: &mut State) {
        let ids: Vec<String> = st.permissions.keys().cloned().collect();
        for id in ids {
            self.resolve(st, &id, RequestPermissionOutcome::Cancelled, None);
        }
    }

    pub fn pending_permission_count(&self) -> usize {
        self.lock().permissions.len()
    }

    pub fn has_pending_permission(&self, request_id: &str) -> bool {
        self.lock().permissions.contains_key(request_id)
    }

    /// The pending permission requests as the contract's `pendingInteractions`, oldest first.
    pub fn pending_interactions(&self) -> Vec<Value> {
        let st = self.lock();
        let mut pending: Vec<(&String, &Pending)> = st.permissions.iter().collect();
        pending.sort_by_key(|(_, p)| p.created_at);
        pending
            .into_iter()
            .map(|(id, p)| {
                let title = p.tool_call.get("title").cloned();
                let mut action = json!({"type": "tool_call"});
                for key in ["title", "kind", "content", "locations"] {
                    if let Some(v) = p.tool_call.get(key) {
                        action[key] = v.clone();
                    }
                }
                if let Some(v) = p.tool_call.get("rawInput") {
                    action["input"] = v.clone();
                }
                let mut item = json!({"requestId": id, "kind": "permission",
                    "createdAt": crate::time::rfc3339(p.created_at), "action": action, "options": p.offered});
                if let Some(t) = title.filter(Value::is_string) {
                    item["title"] = t;
                }
                item
            })
            .collect()
    }

    /// Clients this session issued an id to.
    pub fn client_count(&self) -> usize {
        self.lock().clients.len()
    }

    pub fn life(&self) -> Life {
        self.lock().life
    }

    // ---- lifecycle --------------------------------------------------------------------

    /// Closes the session: `session_closed` (or `session_died` on shutdown) is the last event,
    /// then its SSE streams end. Returns the child it was bound to.
    pub fn close(&self, shutdown: bool) -> Option<Arc<AgentConn>> {
        let mut st = self.lock();
        if st.life == Life::Closed {
            return None;
        }
        let dormant = st.life == Life::Dormant;
        st.life = Life::Closed;
        st.queue.clear();
        if let Some(r) = &st.running {
            r.cancel.cancel();
        }
        self.cancel_pending(&mut st);
        if shutdown && dormant {
            // It had no child to lose: nothing to tell, nothing to journal.
        } else if shutdown {
            self.bus.publish(
                "session_died",
                None,
                json!({"sessionId": self.id, "reason": "daemon_shutdown", "exitCode": null, "signalCode": null}),
                None,
            );
        } else {
            // Only DELETE /session/{id} closes a session without shutting down.
            self.bus.publish(
                "session_closed",
                None,
                json!({"sessionId": self.id, "reason": "client_close"}),
                None,
            );
        }
        self.bus.close();
        let agent = st.agent.take();
        drop(st);
        self.wake.notify_one();
        if let Some(a) = &agent {
            a.unregister(&self.id);
        }
        agent
    }

    pub fn status(&self) -> Value {
        let st = self.lock();
        let state = match (st.life, st.running.is_some()) {
            (Life::Closed, _) => "closed",
            (Life::Died, _) => "died",
            (Life::Dormant, _) => "dormant",
            (Life::Active, true) => "running",
            (Life::Active, false) => "idle",
        };
        let child = st.agent.as_ref().map(|a| {
            json!({"id": a.child.id, "pid": a.child.pid, "state": if a.is_alive() { "alive" } else { "exited" }, "agent": a.info.name})
        });
        json!({
            "sessionId": self.id,
            "workspaceCwd": self.workspace.cwd_str(),
            "workspaceId": self.workspace.id,
            "createdAt": crate::time::rfc3339(self.created_at),
            "state": state,
            "child": child,
            "activePromptId": st.running.as_ref().map(|r| r.id.clone()),
            "queueLength": st.queue.len(),
            "pendingPermissions": st.permissions.len(),
            "clients": st.clients.len(),
            "lastEventId": self.bus.last_id(),
            "dropped": self.bus.stats.json(),
            "eventEpoch": self.bus.epoch(),
            "journal": self.bus.journal().map(|j| {
                let js = j.state();
                json!({"bytes": js.bytes, "firstEventId": js.first_id, "lastEventId": js.last_id,
                       "sealed": js.sealed.map(|r| r.as_str()), "lost": js.lost})
            }),
        })
    }

    pub fn is_running(&self) -> bool {
        self.lock().running.is_some()
    }
}

impl SessionSink for Session {
    fn update(&self, notification: Value) -> bool {
        self.ctx.observe(&notification);
        let mut st = self.lock();
        if let (Some(r), Some(update)) = (st.running.as_mut(), notification.get("update")) {
            r.trace.observe(&self.id, update);
        }
        let (prompt, originator) = st
            .running
            .as_ref()
            .map_or((None, None), |r| (Some(r.id.clone()), r.originator.clone()));
        drop(st);
        self.bus.publish(
            "session_update",
            prompt.as_deref(),
            notification,
            originator.as_deref(),
        );
        self.bus.subscribers_behind()
    }

    fn permission(
        &self,
        request: RequestPermissionRequest,
        reply: oneshot::Sender<RequestPermissionOutcome>,
    ) {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut st = self.lock();
        let tool_call = request.tool_call.tool_call_id.to_string();
        let parent = st
            .running
            .as_ref()
            .map_or_else(opentelemetry::Context::current, |r| {
                r.trace.permission_parent(&tool_call).clone()
            });
        let prompt = st.running.as_ref().map(|r| r.id.clone());
        let span = trace::permission_wait(&parent, &self.id, &request_id, prompt.as_deref());
        if st.life == Life::Closed {
            return; // dropping `reply` answers cancelled
        }
        if st.permissions.len() >= MAX_PENDING_PERMISSIONS {
            self.bus
                .stats
                .refused_permissions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(session.id = %self.id, "too many pending permission requests; answering cancelled");
            return;
        }
        let options: Vec<(String, String)> = request
            .options
            .iter()
            .map(|o| {
                let kind = serde_json::to_value(o.kind)
                    .ok()
                    .and_then(|k| k.as_str().map(str::to_string))
                    .unwrap_or_default();
                (o.option_id.to_string(), kind)
            })
            .collect();
        st.permissions.insert(
            request_id.clone(),
            Pending {
                options,
                reply,
                span,
                prompt: prompt.clone(),
                created_at: SystemTime::now(),
                tool_call: serde_json::to_value(&request.tool_call).unwrap_or(Value::Null),
                offered: serde_json::to_value(&request.options).unwrap_or(Value::Null),
            },
        );
        let originator = st.running.as_ref().and_then(|r| r.originator.clone());
        self.bus.publish(
            "permission_request",
            prompt.as_deref(),
            json!({"requestId": request_id, "sessionId": self.id, "toolCall": request.tool_call, "options": request.options}),
            originator.as_deref(),
        );
        drop(st);
        // The finite default: an unanswered request resolves `cancelled` so the agent never hangs.
        let me = self.me.clone();
        let timeout = self.limits.permission_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(s) = me.upgrade() {
                let mut st = s.lock();
                if st.permissions.contains_key(&request_id) {
                    tracing::info!(session.id = %s.id, request.id = %request_id, "permission request timed out");
                    s.resolve(
                        &mut st,
                        &request_id,
                        RequestPermissionOutcome::Cancelled,
                        None,
                    );
                }
            }
        });
    }

    fn agent_exited(&self, child_id: &str, exit: ExitInfo) {
        let mut st = self.lock();
        // A child this session already moved away from is not this session's death.
        if st.agent.as_ref().is_none_or(|a| a.child.id != child_id) {
            return;
        }
        st.agent = None;
        // The child that asked is gone: its questions can no longer be answered.
        self.cancel_pending(&mut st);
        if exit.expected || st.life != Life::Active {
            return;
        }
        match st.running.as_mut() {
            Some(r) => r.death = Some(exit),
            None => self.report_death(&mut st, exit),
        }
    }
}

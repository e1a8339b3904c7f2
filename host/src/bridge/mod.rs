//! The registry of workspaces and sessions, between the HTTP handlers and the agent children.

mod agents;
pub mod context;
pub mod events;
pub mod session;
mod trace;
pub mod transcript;

pub use agents::AgentPool;
pub use session::{Life, Prompt, Session, SessionLimits};

use agent_client_protocol::v1::schema::Meta;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::acp::Timeouts;
use crate::child::{SpawnSpec, child_env};
use crate::config::{ChildScope, Config, ConfigError};
use crate::error::ApiError;
use crate::journal::{AgentCommand, Header, Journal, Restored};
use crate::telemetry::semconv::*;
use crate::telemetry::{metrics, spans};
use events::{BusLimits, EventBus};
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::SpanKind;

pub struct Workspace {
    pub id: String,
    pub cwd: PathBuf,
    pub primary: bool,
    pub agents: Arc<AgentPool>,
    default_session: Mutex<Option<String>>,
    /// Serialises `single`-scope creation so concurrent callers attach to one session.
    create_lock: tokio::sync::Mutex<()>,
}

impl Workspace {
    pub fn cwd_str(&self) -> String {
        self.cwd.display().to_string()
    }
}

/// Workspace id: the first 16 hex chars of SHA-256 of the canonical absolute path.
pub fn workspace_id(path: &Path) -> String {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub struct Bridge {
    pub config: Arc<Config>,
    pub workspaces: Vec<Arc<Workspace>>,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    draining: AtomicBool,
    /// Turns true with `draining`: long-lived streams outside the bus (ACP over HTTP) end on it.
    drain_signal: tokio::sync::watch::Sender<bool>,
    bus_limits: BusLimits,
    session_limits: SessionLimits,
    /// The session journal, once the daemon opened it (`[state] journal`).
    journal: std::sync::OnceLock<Arc<Journal>>,
    /// The agent command line, as journaled with each session.
    agent: AgentCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateScope {
    Single,
    Thread,
}

pub struct Created {
    pub session: Arc<Session>,
    pub attached: bool,
    pub client_id: String,
}

impl Bridge {
    /// `child_env`: telemetry variables for the agent children, and names they must not inherit.
    pub fn new(
        config: Arc<Config>,
        telemetry_env: (Vec<(String, String)>, Vec<String>),
    ) -> Result<Arc<Self>, ConfigError> {
        let paths = if config.workspaces.is_empty() {
            vec![
                std::env::current_dir()
                    .map_err(|e| ConfigError::new("workspaces", e.to_string()))?,
            ]
        } else {
            config.workspaces.clone()
        };
        let (program, args) = agent_command(&config)?;
        let (otel_env, otel_remove) = telemetry_env;
        let mut remove = config.agent.env_remove.clone();
        remove.extend(otel_remove);
        let mut extra = config.agent.env.clone();
        for (k, v) in otel_env {
            extra.entry(k).or_insert(v); // an operator's [agent.env] wins
        }
        let env = child_env(
            std::env::vars(),
            config.server.token.as_deref(),
            &remove,
            &extra,
        );
        let mut workspaces = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let cwd = p
                .canonicalize()
                .map_err(|e| ConfigError::new("workspaces", format!("{}: {e}", p.display())))?;
            if !cwd.is_dir() {
                return Err(ConfigError::new(
                    "workspaces",
                    format!("{} is not a directory", cwd.display()),
                ));
            }
            let spec = SpawnSpec {
                program: program.clone(),
                args: args.clone(),
                cwd: cwd.clone(),
                env: env.clone(),
                nice: config.agent.nice,
            };
            let timeouts = Timeouts {
                init: Duration::from_millis(config.agent.init_timeout_ms),
                stop_grace: Duration::from_millis(config.agent.stop_grace_ms),
                max_line_bytes: config.agent.max_line_bytes,
            };
            let agents = AgentPool::new(
                cwd.clone(),
                spec,
                config.agent.scope,
                config.agent.pool,
                timeouts,
                Duration::from_millis(config.agent.restart_backoff_max_ms),
            );
            workspaces.push(Arc::new(Workspace {
                id: workspace_id(&cwd),
                cwd,
                primary: i == 0,
                agents,
                default_session: Mutex::new(None),
                create_lock: tokio::sync::Mutex::new(()),
            }));
        }
        let l = &config.limits;
        let bus_limits = BusLimits {
            ring: l.event_ring,
            ring_bytes: l.event_ring_bytes,
            journaled_ring_bytes: l.journaled_event_ring_bytes,
            queue_frames: l.subscriber_queue_frames,
            queue_bytes: l.subscriber_queue_bytes,
            max_subscribers: l.max_subscribers_per_session,
        };
        let session_limits = SessionLimits {
            max_pending: l.max_pending_prompts_per_session,
            permission_timeout: Duration::from_secs(l.permission_timeout_secs),
            turn_timeout: Duration::from_secs(config.agent.turn_timeout_secs),
            cancel_grace: Duration::from_millis(config.agent.cancel_grace_ms),
            session_timeout: Duration::from_millis(config.agent.session_timeout_ms),
        };
        Ok(Arc::new(Self {
            config,
            workspaces,
            sessions: RwLock::new(HashMap::new()),
            draining: AtomicBool::new(false),
            drain_signal: tokio::sync::watch::channel(false).0,
            bus_limits,
            session_limits,
            journal: std::sync::OnceLock::new(),
            agent: AgentCommand { program, args },
        }))
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.get()
    }

    /// Attaches the journal and restores the sessions it holds, before anything is served:
    /// each is `dormant` (listed, its events replayable, its transcript readable) until a load,
    /// resume or prompt restores it on a child through `session/load`.
    pub fn restore_journaled(&self, journal: Arc<Journal>, restored: Vec<Restored>) {
        let _ = self.journal.set(journal);
        let mut elsewhere = 0usize;
        for r in restored {
            let Some(ws) = self
                .workspaces
                .iter()
                .find(|w| w.id == r.header.workspace_id)
            else {
                elsewhere += 1;
                continue;
            };
            let created = std::time::UNIX_EPOCH + Duration::from_millis(r.header.created_at_ms);
            let bus = EventBus::journaled(self.bus_limits, Some(r.journal), r.epoch, r.last_id);
            let session = Session::with_life(
                r.header.session_id.clone(),
                ws.clone(),
                bus,
                self.session_limits,
                created,
                Life::Dormant,
            );
            session.ctx.restore(&r.meta);
            session.restore_clients(&r.meta);
            if r.meta.get("workspaceDefault") == Some(&serde_json::Value::Bool(true)) {
                // The newest wins should two claim it (a crash between two writes).
                let mut d = ws.default_session.lock().unwrap_or_else(|p| p.into_inner());
                let newer = d
                    .as_deref()
                    .and_then(|id| self.session(id).ok())
                    .is_none_or(|cur| cur.created_at <= created);
                if newer {
                    *d = Some(session.id.clone());
                }
            }
            if r.header.agent != self.agent {
                tracing::warn!(target: "acpd::journal", { "session.id" = %session.id }, "session {} ran with agent {:?}; it will be restored with {:?}", session.id, r.header.agent.program, self.agent.program);
            }
            let _ = self.insert(session);
        }
        if elsewhere > 0 {
            tracing::info!(target: "acpd::journal", "journal: {elsewhere} journaled sessions belong to workspaces this daemon does not serve; kept on disk");
        }
    }

    /// A journal for a session that starts now (created, or loaded from the agent), or none.
    fn new_journal(
        &self,
        id: &str,
        ws: &Workspace,
        epoch: &str,
    ) -> Option<Arc<crate::journal::SessionJournal>> {
        let journal = self.journal.get()?;
        let header = Header {
            v: 1,
            session_id: id.to_string(),
            agent_session_id: id.to_string(),
            workspace_id: ws.id.clone(),
            workspace_cwd: ws.cwd_str(),
            created_at_ms: events::now_ms(),
            epoch: epoch.to_string(),
            agent: self.agent.clone(),
            boot_id: journal.boot_id.clone(),
            fsync: journal.cfg.fsync.as_str().to_string(),
        };
        Some(journal.create(header, serde_json::Value::Null))
    }

    fn journaled_bus(&self, id: &str, ws: &Workspace) -> EventBus {
        let epoch = uuid::Uuid::new_v4().to_string();
        let journal = self.new_journal(id, ws, &epoch);
        EventBus::journaled(self.bus_limits, journal, epoch, 0)
    }

    /// Starts warm pools (session scope with `pool > 0`).
    pub fn start(&self) {
        for ws in &self.workspaces {
            ws.agents.warm_up();
        }
    }

    /// Resolves once the daemon drains.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut rx = self.drain_signal.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn primary(&self) -> &Arc<Workspace> {
        &self.workspaces[0]
    }

    /// The workspace for a request's `cwd` (default: the primary one).
    pub fn workspace_for_cwd(&self, cwd: Option<&str>) -> Result<Arc<Workspace>, ApiError> {
        let Some(cwd) = cwd else {
            return Ok(self.primary().clone());
        };
        let canonical = Path::new(cwd).canonicalize().ok();
        self.workspaces
            .iter()
            .find(|w| canonical.as_deref() == Some(w.cwd.as_path()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "workspace_mismatch",
                    "cwd is not a workspace served by this daemon",
                )
                .with("cwd", cwd)
                .with(
                    "workspaces",
                    self.workspaces
                        .iter()
                        .map(|w| w.cwd_str())
                        .collect::<Vec<_>>(),
                )
            })
    }

    /// By id or by (URL-decoded) absolute path.
    pub fn workspace(&self, key: &str) -> Option<Arc<Workspace>> {
        self.workspaces
            .iter()
            .find(|w| w.id == key)
            .cloned()
            .or_else(|| self.workspace_for_cwd(Some(key)).ok())
    }

    pub fn session(&self, id: &str) -> Result<Arc<Session>, ApiError> {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::session_not_found(id))
    }

    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<_> = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| s.created_at);
        all
    }

    fn admit(&self) -> Result<(), ApiError> {
        if self.is_draining() {
            Err(ApiError::draining())
        } else {
            Ok(())
        }
    }

    pub async fn create_session(
        &self,
        ws: Arc<Workspace>,
        scope: CreateScope,
        session_id: Option<&str>,
        meta: Meta,
        client: Option<&str>,
    ) -> Result<Created, ApiError> {
        self.admit()?;
        if let Some(id) = session_id {
            if let Ok(s) = self.session(id) {
                if s.workspace.id != ws.id {
                    return Err(ApiError::new(
                        400,
                        "workspace_mismatch",
                        "The session belongs to another workspace",
                    )
                    .with("sessionId", id));
                }
                let client_id = s.attach_client(client);
                return Ok(Created {
                    session: s,
                    attached: true,
                    client_id,
                });
            }
            let session = self.load_session(id, Some(ws)).await?;
            let client_id = session.attach_client(client);
            return Ok(Created {
                session,
                attached: false,
                client_id,
            });
        }
        if scope == CreateScope::Thread {
            let session = self.new_session(&ws, meta).await?;
            let client_id = session.attach_client(client);
            return Ok(Created {
                session,
                attached: false,
                client_id,
            });
        }
        let _one_at_a_time = ws.create_lock.lock().await;
        let current = ws
            .default_session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(s) = current.and_then(|id| self.session(&id).ok()) {
            let client_id = s.attach_client(client);
            return Ok(Created {
                session: s,
                attached: true,
                client_id,
            });
        }
        let session = self.new_session(&ws, meta).await?;
        *ws.default_session.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.id.clone());
        session.persist_meta();
        let client_id = session.attach_client(client);
        Ok(Created {
            session,
            attached: false,
            client_id,
        })
    }

    /// A dormant session (restored from the journal) takes a place under the session limits
    /// when something wakes it (a prompt, a model or mode switch), like a load does.
    pub fn admit_wake(&self, s: &Session) -> Result<(), ApiError> {
        if s.life() == Life::Dormant {
            self.check_capacity(&s.workspace)?;
        }
        Ok(())
    }

    fn check_capacity(&self, ws: &Workspace) -> Result<(), ApiError> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let l = &self.config.limits;
        // Dormant sessions (restored from the journal, no child) hold no agent: they count once
        // they are loaded.
        let live: Vec<&Arc<Session>> = sessions
            .values()
            .filter(|s| s.life() != Life::Dormant)
            .collect();
        let in_ws = live.iter().filter(|s| s.workspace.id == ws.id).count();
        if live.len() >= l.max_sessions || in_ws >= l.max_sessions_per_workspace {
            let limit = if live.len() >= l.max_sessions {
                l.max_sessions
            } else {
                l.max_sessions_per_workspace
            };
            return Err(
                ApiError::new(503, "session_limit_exceeded", "Session limit reached")
                    .with("limit", limit)
                    .retry_after(30),
            );
        }
        Ok(())
    }

    async fn new_session(&self, ws: &Arc<Workspace>, meta: Meta) -> Result<Arc<Session>, ApiError> {
        let span = bridge_span("session.new", ws, None);
        let r = self
            .new_session_traced(ws, meta)
            .with_context(span.clone())
            .await;
        close_span(&span, r.as_ref().map(|s| s.id.as_str()));
        r
    }

    async fn new_session_traced(
        &self,
        ws: &Arc<Workspace>,
        meta: Meta,
    ) -> Result<Arc<Session>, ApiError> {
        self.check_capacity(ws)?;
        let conn = ws.agents.acquire().await?;
        let created = conn
            .new_session(ws.cwd.clone(), meta, self.session_limits.session_timeout)
            .await;
        let (id, announced) = match created {
            Ok(created) => created,
            Err(e) => {
                if ws.agents.scope() == ChildScope::Session {
                    let grace = Duration::from_millis(self.config.agent.stop_grace_ms);
                    tokio::spawn(async move { conn.shutdown(grace).await });
                }
                return Err(e);
            }
        };
        let session = Session::new(
            id.clone(),
            ws.clone(),
            self.journaled_bus(&id, ws),
            self.session_limits,
        );
        session.ctx.announce(&announced);
        session.persist_meta();
        conn.register(&id, session.sink(), false);
        session.bind(conn);
        self.insert(session.clone())?;
        tracing::info!(name: "acpd.session.create", target: "acpd::bridge", { "session.id" = %id, "acpd.workspace.id" = %ws.id }, "session created");
        Ok(session)
    }

    fn insert(&self, session: Arc<Session>) -> Result<(), ApiError> {
        if self.is_draining() {
            session.close(true);
            return Err(ApiError::draining());
        }
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id.clone(), session.clone());
        metrics().session_active.add(
            1,
            &[KeyValue::new(WORKSPACE_ID, session.workspace.id.clone())],
        );
        session.start_runner();
        Ok(())
    }

    /// `POST /session/:id/load`: a known session is restored on a live child if its child died;
    /// an unknown one is restored from the agent (`session/load`), its history replayed as events.
    pub async fn load_session(
        &self,
        id: &str,
        ws: Option<Arc<Workspace>>,
    ) -> Result<Arc<Session>, ApiError> {
        self.restore_session(id, ws, true).await
    }

    /// `POST /session/:id/resume`: restored as by `load_session`, but the history the agent
    /// replays is not published (the event stream gets no historical replay).
    pub async fn resume_session(
        &self,
        id: &str,
        ws: Option<Arc<Workspace>>,
    ) -> Result<Arc<Session>, ApiError> {
        self.restore_session(id, ws, false).await
    }

    async fn restore_session(
        &self,
        id: &str,
        ws: Option<Arc<Workspace>>,
        replay: bool,
    ) -> Result<Arc<Session>, ApiError> {
        self.admit()?;
        let span = bridge_span(
            if replay {
                "session.load"
            } else {
                "session.resume"
            },
            ws.as_ref().unwrap_or(self.primary()),
            Some(id),
        );
        let r = self
            .load_session_traced(id, ws, replay)
            .with_context(span.clone())
            .await;
        close_span(&span, r.as_ref().map(|s| s.id.as_str()));
        r
    }

    async fn load_session_traced(
        &self,
        id: &str,
        ws: Option<Arc<Workspace>>,
        replay: bool,
    ) -> Result<Arc<Session>, ApiError> {
        check_session_id(id)?;
        if let Ok(s) = self.session(id) {
            if s.life() == Life::Dormant {
                self.check_capacity(&s.workspace)?;
            }
            s.ensure_agent(true).await?;
            return Ok(s);
        }
        let ws = ws.unwrap_or_else(|| self.primary().clone());
        self.check_capacity(&ws)?;
        let session = Session::new(
            id.to_string(),
            ws.clone(),
            self.journaled_bus(id, &ws),
            self.session_limits,
        );
        let restored = session.ensure_agent(!replay).await;
        if let Err(e) = restored {
            if let (Some(journal), Some(j)) = (self.journal.get(), session.bus.journal()) {
                journal.remove(j);
            }
            return Err(match e.code {
                "agent_error" => ApiError::session_not_found(id).with("detail", e.message.clone()),
                _ => e,
            });
        }
        self.insert(session.clone())?;
        Ok(session)
    }

    pub fn close_session(&self, id: &str) -> Result<(), ApiError> {
        let session = self
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .ok_or_else(|| ApiError::session_not_found(id))?;
        let span = bridge_span("session.close", &session.workspace, Some(id));
        spans::end(&span);
        metrics().session_active.add(
            -1,
            &[KeyValue::new(WORKSPACE_ID, session.workspace.id.clone())],
        );
        {
            let mut d = session
                .workspace
                .default_session
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if d.as_deref() == Some(id) {
                *d = None;
            }
        }
        let agent = session.close(false);
        // Closed by a client: nothing is left to restore, so its journal goes.
        if let (Some(journal), Some(j)) = (self.journal.get(), session.bus.journal()) {
            journal.remove(j);
        }
        if let Some(agent) = agent
            && session.workspace.agents.scope() == ChildScope::Session
        {
            let grace = Duration::from_millis(self.config.agent.stop_grace_ms);
            tokio::spawn(async move { agent.shutdown(grace).await });
        }
        tracing::info!(name: "acpd.session.close", target: "acpd::bridge", { "session.id" = %id }, "session closed");
        Ok(())
    }

    /// Stop admitting, tell every session's subscribers, end their streams, stop every child.
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_signal.send_replace(true);
        for s in self.sessions() {
            s.close(true);
        }
        // Every journaled event, `session_died` included, is on stable storage before exit.
        if let Some(j) = self.journal.get() {
            let j = j.clone();
            let _ = tokio::task::spawn_blocking(move || j.finish()).await;
        }
        futures::future::join_all(self.workspaces.iter().map(|w| w.agents.drain())).await;
    }

    /// Last resort (forced exit): SIGKILL every child's process group now.
    pub fn kill_all(&self) {
        for ws in &self.workspaces {
            for c in ws.agents.live() {
                c.child.expect_exit();
                c.child.signal_group(nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    pub fn live_children(&self) -> usize {
        self.workspaces.iter().map(|w| w.agents.live().len()).sum()
    }
}

fn bridge_span(
    operation: &'static str,
    ws: &Workspace,
    session: Option<&str>,
) -> opentelemetry::Context {
    let mut attrs = vec![
        KeyValue::new(BRIDGE_OPERATION, operation),
        KeyValue::new(WORKSPACE_ID, ws.id.clone()),
    ];
    if let Some(s) = session {
        attrs.push(KeyValue::new(SESSION_ID, s.to_string()));
    }
    spans::start(
        format!("bridge {operation}"),
        SpanKind::Internal,
        &opentelemetry::Context::current(),
        attrs,
    )
}

fn close_span(span: &opentelemetry::Context, result: Result<&str, &ApiError>) {
    match result {
        Ok(id) => spans::set(span, KeyValue::new(SESSION_ID, id.to_string())),
        Err(e) => {
            spans::set(span, KeyValue::new(ERROR_TYPE, e.code));
            spans::fail(span, e.message.clone());
        }
    }
    spans::end(span);
}

/// The agent command line, or the built-in demo agent (this executable's `demo-agent`).
fn agent_command(config: &Config) -> Result<(String, Vec<String>), ConfigError> {
    match &config.agent.command {
        Some(line) => {
            let mut words = shlex::split(line)
                .filter(|w| !w.is_empty())
                .ok_or_else(|| ConfigError::new("agent.command", "not a valid command line"))?;
            let program = words.remove(0);
            Ok((program, words))
        }
        None => {
            let me = std::env::current_exe().map_err(|e| {
                ConfigError::new(
                    "agent.command",
                    format!("cannot locate acpd for the demo agent: {e}"),
                )
            })?;
            Ok((me.display().to_string(), vec!["demo-agent".into()]))
        }
    }
}

/// Longest session id a client may name (`sessionId` on create, `/session/{id}/load`).
pub const MAX_SESSION_ID_LEN: usize = 256;

/// A client-named session id reaches the agent, URLs, span attributes and logs. It is held to
/// the characters every client puts in a URL path unchanged (agents' ids are UUIDs and fit):
/// an id with `%`, `#`, `?` or `/` would reach a careless client's session as another id, and
/// `.`/`..` would be removed by URL normalisation.
fn check_session_id(id: &str) -> Result<(), ApiError> {
    let well_formed = (1..=MAX_SESSION_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        && id != "."
        && id != "..";
    if !well_formed {
        return Err(ApiError::new(
            400,
            "invalid_session_id",
            format!(
                "A session id is 1 to {MAX_SESSION_ID_LEN} of A-Z a-z 0-9 . _ : - (not . or ..)"
            ),
        ));
    }
    Ok(())
}

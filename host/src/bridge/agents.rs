//! Which child serves which session: one shared child per workspace, or one per session with
//! an optional warm pool. Spawning respects a crash-loop backoff; draining stops every child.
//! An agent command that cannot be started at all (missing, not executable) is remembered for
//! `/health` and answered with a non-retryable error instead of feeding the backoff.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::acp::{AgentConn, SPAWN_FAILED, Timeouts, spawn_failed};
use crate::child::{Backoff, ChildProc, SpawnSpec};
use crate::config::ChildScope;
use crate::error::ApiError;

/// Backoffs up to this long delay the spawn; longer ones are refused with 503 + Retry-After.
const MAX_INLINE_BACKOFF: Duration = Duration::from_secs(3);

pub struct AgentPool {
    root: PathBuf,
    spec: SpawnSpec,
    scope: ChildScope,
    pool_size: usize,
    timeouts: Timeouts,
    shared: tokio::sync::Mutex<Option<Arc<AgentConn>>>,
    warm: Mutex<VecDeque<Arc<AgentConn>>>,
    backoff: Arc<Mutex<Backoff>>,
    live: Mutex<Vec<Weak<AgentConn>>>,
    /// Every child process started, until it has exited: a session that closes drops its
    /// connection while the process may still be stopping, and drain must wait for that too.
    procs: Mutex<Vec<ChildProc>>,
    draining: AtomicBool,
    refilling: AtomicBool,
    /// True while the start-up fill of the warm pool runs (see [`AgentPool::ready`]).
    warming: tokio::sync::watch::Sender<bool>,
    /// The last attempt to start the agent failed in a way no retry cures: why, and whether the
    /// probe finds the fault too (then each read re-checks it, so installing the agent clears it;
    /// otherwise the next spawn that works does).
    unstartable: Mutex<Option<(ApiError, bool)>>,
}

impl AgentPool {
    pub fn new(
        root: PathBuf,
        spec: SpawnSpec,
        scope: ChildScope,
        pool_size: usize,
        timeouts: Timeouts,
        backoff_max: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            root,
            spec,
            scope,
            pool_size,
            timeouts,
            shared: tokio::sync::Mutex::new(None),
            warm: Mutex::new(VecDeque::new()),
            backoff: Arc::new(Mutex::new(Backoff::new(backoff_max))),
            live: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            refilling: AtomicBool::new(false),
            warming: tokio::sync::watch::Sender::new(false),
            unstartable: Mutex::new(None),
        })
    }

    pub fn scope(&self) -> ChildScope {
        self.scope
    }

    /// A child for a session: the workspace's shared one (spawned if needed) or a fresh/warm one.
    pub async fn acquire(self: &Arc<Self>) -> Result<Arc<AgentConn>, ApiError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::draining());
        }
        match self.scope {
            ChildScope::Workspace => {
                let mut shared = self.shared.lock().await;
                if let Some(c) = shared.as_ref().filter(|c| c.is_alive()) {
                    return Ok(c.clone());
                }
                let c = self.spawn().await?;
                *shared = Some(c.clone());
                Ok(c)
            }
            ChildScope::Session => {
                // The start-up fill is under way: its children are for the first sessions, and
                // starting another one beside them would only exceed the pool.
                self.ready().await;
                let warm = {
                    let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
                    w.retain(|c| c.is_alive());
                    w.pop_front()
                };
                let c = match warm {
                    Some(c) => c,
                    None => self.spawn().await?,
                };
                self.refill();
                Ok(c)
            }
        }
    }

    async fn spawn(&self) -> Result<Arc<AgentConn>, ApiError> {
        let wait = self
            .backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait();
        if wait > MAX_INLINE_BACKOFF {
            return Err(ApiError::agent_unavailable(format!(
                "the agent keeps crashing; next start allowed in {} ms",
                wait.as_millis()
            ))
            .retry_after(wait.as_secs().max(1)));
        }
        // A short backoff is waited out: a caller whose child crashed once or twice should get a
        // child a moment later, not an error; a real crash loop quickly exceeds the bound.
        tokio::time::sleep(wait).await;
        let conn = match AgentConn::connect(&self.spec, self.root.clone(), &self.timeouts).await {
            Ok(c) => c,
            Err(e) if e.code == SPAWN_FAILED => {
                // Not a crash: nothing ran. Each request tries again (a stat and a failed exec),
                // so the agent works as soon as the operator installs it. When the program itself
                // is missing, `/health` can re-check that with the probe; when it is there but
                // cannot run (a `#!` interpreter missing, say), only a working spawn clears it.
                let recheck = crate::child::command::probe(&self.spec).is_err();
                *self.unstartable.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((e.clone(), recheck));
                return Err(e);
            }
            Err(e) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record_exit(true, Duration::ZERO);
                return Err(e);
            }
        };
        *self.unstartable.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the `live` lock, which drain holds while it sets the flag: a child that
        // finished starting after drain took its list is stopped here instead.
        if self.draining.load(Ordering::Acquire) {
            drop(live);
            conn.shutdown(self.timeouts.stop_grace).await;
            return Err(ApiError::draining());
        }
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&conn));
        drop(live);
        {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs.retain(ChildProc::is_alive);
            procs.push(conn.child.clone());
        }
        let (backoff, child, started) = (self.backoff.clone(), conn.child.clone(), conn.started);
        tokio::spawn(async move {
            let exit = child.exited().await;
            backoff
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_exit(!exit.expected, started.elapsed());
        });
        Ok(conn)
    }

    /// Tops the warm pool up in the background (session scope with `pool > 0`).
    fn refill(self: &Arc<Self>) {
        if self.pool_size == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let need = {
                    let mut w = this.warm.lock().unwrap_or_else(|p| p.into_inner());
                    w.retain(|c| c.is_alive());
                    w.len() < this.pool_size
                };
                if !need || this.draining.load(Ordering::Acquire) {
                    break;
                }
                match this.spawn().await {
                    Ok(c) => this
                        .warm
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "warm pool refill failed");
                        break;
                    }
                }
            }
            this.refilling.store(false, Ordering::Release);
        });
    }

    /// At start-up: checks that the agent command can be started (for `/health`), and fills the
    /// warm pool (session scope with `pool > 0`) with its children starting in parallel. Returns
    /// at once; [`AgentPool::ready`] resolves when the fill has finished.
    pub fn warm_up(self: &Arc<Self>) {
        if let Err(f) = crate::child::command::probe(&self.spec) {
            tracing::error!(command = %f.command, reason = f.reason, "{}", f.message);
            *self.unstartable.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((spawn_failed(&f), true));
            return;
        }
        if self.scope != ChildScope::Session
            || self.pool_size == 0
            || self.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.warming.send_replace(true);
        let this = self.clone();
        tokio::spawn(async move {
            let started =
                futures::future::join_all((0..this.pool_size).map(|_| this.spawn())).await;
            let mut ready = 0;
            for r in started {
                match r {
                    Ok(c) => {
                        ready += 1;
                        this.warm
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push_back(c);
                    }
                    Err(e) => tracing::warn!(error = %e, "warm pool: a child failed to start"),
                }
            }
            tracing::info!(ready, size = this.pool_size, "warm pool filled");
            this.refilling.store(false, Ordering::Release);
            this.warming.send_replace(false);
        });
    }

    /// Resolves once the start-up fill of the warm pool has finished (at once if none runs).
    pub async fn ready(&self) {
        let mut rx = self.warming.subscribe();
        let _ = rx.wait_for(|warming| !*warming).await;
    }

    /// Why the agent cannot be started, when the last attempt showed it cannot (for `/health`):
    /// the client error's message, command and reason. A failure the probe finds is checked
    /// again, so it clears once the agent is installed.
    pub fn unstartable(&self) -> Option<ApiError> {
        let mut state = self.unstartable.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, true)) = state.as_ref()
            && crate::child::command::probe(&self.spec).is_ok()
        {
            *state = None;
        }
        state.as_ref().map(|(e, _)| e.clone())
    }

    pub fn live(&self) -> Vec<Arc<AgentConn>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.is_alive())
            .collect()
    }

    /// Stops admitting spawns and stops every child, in parallel.
    pub async fn drain(&self) {
        let conns: Vec<_> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            self.draining.store(true, Ordering::Release);
            live.iter().filter_map(Weak::upgrade).collect()
        };
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let grace = self.timeouts.stop_grace;
        // Children whose connection is gone already (their session closed; with session scope,
        // all of them once the daemon closed its sessions) still get stopped and waited for:
        // acpd must not exit before they have, or they outlive it (as zombies at least).
        let orphans: Vec<ChildProc> = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.is_alive() && !conns.iter().any(|c| c.child.id == p.id))
            .cloned()
            .collect();
        futures::future::join(
            futures::future::join_all(conns.iter().map(|c| c.shutdown(grace))),
            // Their stdin cannot be closed from here (nothing holds their connection): asked
            // to stop with SIGTERM at once, then as usual.
            futures::future::join_all(orphans.iter().map(|p| {
                p.signal_group(nix::sys::signal::Signal::SIGTERM);
                p.stop(grace)
            })),
        )
        .await;
    }
}

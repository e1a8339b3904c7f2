//! Which child serves which session: one shared child per workspace, or one per session with
//! an optional warm pool. Spawning respects a crash-loop backoff; draining stops every child.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::acp::{AgentConn, Timeouts};
use crate::child::{Backoff, SpawnSpec};
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
    draining: AtomicBool,
    refilling: AtomicBool,
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
            draining: AtomicBool::new(false),
            refilling: AtomicBool::new(false),
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
            Err(e) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record_exit(true, Duration::ZERO);
                return Err(e);
            }
        };
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

    /// Pre-spawns the warm pool at start-up.
    pub fn warm_up(self: &Arc<Self>) {
        self.refill();
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
        futures::future::join_all(conns.iter().map(|c| c.shutdown(grace))).await;
    }
}

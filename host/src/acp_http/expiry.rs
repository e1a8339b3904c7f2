//! Expiry of abandoned HTTP+SSE connections. The crate keeps an HTTP connection until its
//! DELETE, with unbounded outbound queues: a client that goes away without DELETE would leave
//! its connection, and the events of the sessions it joined, in memory for good. A connection
//! with no stream open and no request for [`IDLE`] is ended here with the DELETE the client did
//! not send (through the crate's own router, so everything it holds goes), and counted.
//! WebSocket connections end with their socket and are not tracked.

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connection may sit without an open stream or a request.
pub const IDLE: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub struct Liveness {
    inner: Mutex<HashMap<String, Entry>>,
    /// Connections ended for idleness.
    pub expired: AtomicU64,
}

struct Entry {
    last: Instant,
    streams: usize,
}

/// Held by an open stream's body: the connection is in use until it drops.
pub struct StreamGuard {
    live: Arc<Liveness>,
    id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut inner = self.live.lock();
        if let Some(e) = inner.get_mut(&self.id) {
            e.streams = e.streams.saturating_sub(1);
            e.last = Instant::now();
        }
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection `initialize` just created.
    pub fn register(&self, id: &str) {
        self.lock().insert(
            id.to_string(),
            Entry {
                last: Instant::now(),
                streams: 0,
            },
        );
    }

    /// A request naming a connection (an unknown id is not recorded: it is client input).
    pub fn touch(&self, id: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.last = Instant::now();
        }
    }

    /// A stream of a known connection opened; None for an unknown one.
    pub fn open(self: &Arc<Self>, id: &str) -> Option<StreamGuard> {
        let mut inner = self.lock();
        let e = inner.get_mut(id)?;
        e.streams += 1;
        e.last = Instant::now();
        Some(StreamGuard {
            live: self.clone(),
            id: id.to_string(),
        })
    }

    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Connections with no stream open and nothing heard for `idle`.
    fn idle(&self, idle: Duration, now: Instant) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.streams == 0 && now.duration_since(e.last) >= idle)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Ends idle connections of the crate router `router` (mounted at `path`) until the process exits.
pub fn start(live: Arc<Liveness>, router: Router, path: String) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(IDLE / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            reap(&live, &router, &path, IDLE, Instant::now()).await;
        }
    });
}

/// Ends every connection idle for `idle` at `now` with a DELETE through `router`.
async fn reap(live: &Liveness, router: &Router, path: &str, idle: Duration, now: Instant) {
    for id in live.idle(idle, now) {
        live.forget(&id);
        let Ok(req) = Request::delete(path)
            .header("acp-connection-id", &id)
            .body(Body::empty())
        else {
            continue;
        };
        let mut svc = router.clone();
        let _ = tower::Service::call(&mut svc, req).await;
        live.expired.fetch_add(1, Ordering::Relaxed);
        super::DROPS
            .idle_connections
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(acp.connection.id = %id, "idle ACP connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_client_protocol::v1::schema::{InitializeRequest, InitializeResponse};
    use agent_client_protocol::{Agent, on_receive_request};

    async fn status(router: &Router, req: Request<Body>) -> u16 {
        let mut svc = router.clone();
        tower::Service::call(&mut svc, req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn an_idle_connection_is_deleted_through_the_crates_router() {
        let router = agent_client_protocol_http::AcpHttpServer::new(|| {
            Agent.v1().on_receive_request(
                async |init: InitializeRequest, responder, _cx| {
                    responder.respond(InitializeResponse::new(init.protocol_version))
                },
                on_receive_request!(),
            )
        })
        .into_router();
        let init = Request::post("/acp")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1}}"#,
            ))
            .unwrap();
        let mut svc = router.clone();
        let resp = tower::Service::call(&mut svc, init).await.unwrap();
        let id = resp.headers()["acp-connection-id"]
            .to_str()
            .unwrap()
            .to_string();
        let live = Liveness::default();
        live.register(&id);
        let ask = || {
            Request::post("/acp")
                .header("content-type", "application/json")
                .header("acp-connection-id", &id)
                .body(Body::from(
                    r#"{"jsonrpc":"2.0","method":"x/y","params":{}}"#,
                ))
                .unwrap()
        };
        assert_eq!(status(&router, ask()).await, 202);
        // Not idle yet: nothing happens.
        reap(&live, &router, "/acp", IDLE, Instant::now()).await;
        assert_eq!(status(&router, ask()).await, 202);
        reap(&live, &router, "/acp", Duration::ZERO, Instant::now()).await;
        assert_eq!(status(&router, ask()).await, 404);
        assert_eq!(live.expired.load(Ordering::Relaxed), 1);
        // Counted for `acpd.acp_http.dropped` too (process-wide, so other tests may add).
        assert!(super::super::DROPS.idle_connections.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn only_a_connection_without_streams_and_quiet_for_the_limit_is_idle() {
        let live = Arc::new(Liveness::default());
        live.register("a");
        live.register("b");
        live.touch("nope");
        let later = Instant::now() + Duration::from_secs(60);
        let guard = live.open("b").unwrap();
        assert_eq!(
            live.idle(Duration::from_secs(30), later),
            vec!["a".to_string()]
        );
        drop(guard);
        // Closing the stream counts as activity.
        assert_eq!(
            live.idle(Duration::from_secs(30), Instant::now()),
            Vec::<String>::new()
        );
        let mut idle = live.idle(Duration::from_secs(30), later);
        idle.sort();
        assert_eq!(idle, ["a", "b"]);
        assert!(live.open("nope").is_none());
        live.forget("a");
        assert_eq!(live.idle(Duration::ZERO, later), ["b"]);
    }
}

//! ACP over HTTP (`/acp`, and `/workspaces/{id}/acp` per workspace): any ACP client reaches the
//! supervised agents remotely, through the Streamable HTTP + WebSocket transport of the official
//! crate `agent-client-protocol-http` (its `AcpHttpServer`, mounted as a service on the daemon's
//! router).
//!
//! - The crate owns the wire: `initialize` answered 200 with `Acp-Connection-Id`, other POSTs
//!   202, connection and session-scoped SSE streams, WebSocket upgrades, DELETE.
//! - The daemon's router layers wrap it like every other route: request span, Host check, CORS,
//!   bearer token, admission while draining, request enrichment ([`crate::http::router`]).
//! - [`transport`] fills what the crate leaves to its host: the body limit, JSON errors, the
//!   trace context of the HTTP request for messages that carry none, batches refused 501.
//! - [`resume`] makes session streams resumable (`id:` + `Last-Event-ID`), as qwen serve's are.
//! - [`expiry`] ends HTTP connections abandoned without DELETE.
//! - [`facade`] is the ACP agent behind it: methods become bridge operations, and [`relay`]
//!   carries a session's bus events back as ACP messages.

mod expiry;
mod facade;
mod relay;
mod resume;
mod rpc;
mod transport;

use agent_client_protocol_http::{AcpHttpServer, ServerOptions};
use axum::Router;
use axum::middleware::from_fn_with_state;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http::AppState;
use facade::Mount;

/// What the transport's bounded stores let go, process-wide (every mount), exported as
/// `acpd.acp_http.dropped` by reason.
#[derive(Default)]
pub struct Drops {
    /// Events that fell out of a session stream's resume ring (a `Last-Event-ID` before them
    /// can no longer be honoured).
    pub resume_events: AtomicU64,
    /// Resume rings forgotten to make room for newer streams.
    pub resume_streams: AtomicU64,
    /// Connections ended after sitting idle without DELETE.
    pub idle_connections: AtomicU64,
    /// Request enrichments that fell out before their message's span took them.
    pub carried_context: AtomicU64,
}

pub static DROPS: Drops = Drops {
    resume_events: AtomicU64::new(0),
    resume_streams: AtomicU64::new(0),
    idle_connections: AtomicU64::new(0),
    carried_context: AtomicU64::new(0),
};

impl Drops {
    pub fn all(&self) -> [(&'static str, u64); 4] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("resume_event", n(&self.resume_events)),
            ("resume_stream", n(&self.resume_streams)),
            ("idle_connection", n(&self.idle_connections)),
            ("carried_context", n(&self.carried_context)),
        ]
    }
}

/// Registers `acpd.acp_http.dropped` once per process.
fn register_metrics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use crate::telemetry::semconv;
        let _ = opentelemetry::global::meter("acpd")
            .u64_observable_counter(semconv::M_ACP_HTTP_DROPPED)
            .with_unit("{item}")
            .with_description("What /acp's bounded stores let go, by reason")
            .with_callback(|o| {
                for (reason, n) in DROPS.all() {
                    o.observe(
                        n,
                        &[opentelemetry::KeyValue::new(
                            semconv::ACP_HTTP_REASON,
                            reason,
                        )],
                    );
                }
            })
            .build();
    });
}

/// The transport's routes, added to the daemon's router before its guard layers.
pub fn router(state: &AppState) -> Router<AppState> {
    register_metrics();
    let resume = Arc::new(resume::Streams::default());
    let mut router = Router::new().route_service("/acp", mount(state, None, "/acp", &resume));
    for ws in &state.bridge.workspaces {
        let path = format!("/workspaces/{}/acp", ws.id);
        router = router.route_service(
            &path.clone(),
            mount(state, Some(ws.clone()), &path, &resume),
        );
    }
    router
}

fn mount(
    state: &AppState,
    workspace: Option<Arc<crate::bridge::Workspace>>,
    path: &str,
    resume: &Arc<resume::Streams>,
) -> Router {
    let m = Mount {
        state: state.clone(),
        workspace,
    };
    // The crate's CORS stays off: the daemon's guard already answered for the origin (and
    // preflights), and its `/health` is the daemon's.
    let options = ServerOptions::default()
        .with_path(path)
        .with_health_endpoint(false);
    let inner = AcpHttpServer::new(move || facade::agent(m.clone()))
        .with_options(options)
        .into_router()
        .layer(from_fn_with_state(resume.clone(), resume::layer));
    let live = Arc::new(expiry::Liveness::default());
    expiry::start(live.clone(), inner.clone(), path.to_string());
    let t = transport::Transport {
        limit: state.bridge.config.server.max_body_bytes,
        live,
        bridge: state.bridge.clone(),
    };
    inner.layer(from_fn_with_state(t, transport::layer))
}

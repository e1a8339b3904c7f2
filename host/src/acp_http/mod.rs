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

use crate::http::AppState;
use facade::Mount;

/// The transport's routes, added to the daemon's router before its guard layers.
pub fn router(state: &AppState) -> Router<AppState> {
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

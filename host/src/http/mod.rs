//! The HTTP+SSE API (see shared/API.md): router, guards, handlers, error responses.

mod body;
mod enrich;
mod error;
mod guard;
mod routes;
mod span;
mod sse;
pub mod time;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use std::sync::Arc;

use crate::bridge::Bridge;
use crate::config::is_loopback_host;
use crate::telemetry::Telemetry;

#[derive(Clone)]
pub struct AppState {
    pub bridge: Arc<Bridge>,
    pub telemetry: Arc<Telemetry>,
    /// Accepted `Host` values (lower-case `host:port`); empty = no check (non-loopback bind).
    pub allowed_hosts: Arc<Vec<String>>,
}

impl AppState {
    pub fn new(bridge: Arc<Bridge>, telemetry: Arc<Telemetry>, port: u16) -> Self {
        let allowed_hosts = allowed_hosts(&bridge.config.server.hostname, port);
        Self {
            bridge,
            telemetry,
            allowed_hosts: Arc::new(allowed_hosts),
        }
    }
}

/// The `Host` values a loopback bind accepts (DNS-rebinding defence); none to check otherwise.
fn allowed_hosts(hostname: &str, port: u16) -> Vec<String> {
    let hostname = hostname.to_ascii_lowercase();
    if !is_loopback_host(&hostname) {
        return Vec::new();
    }
    let bind = if hostname.contains(':') && !hostname.starts_with('[') {
        format!("[{hostname}]")
    } else {
        hostname
    };
    [
        "localhost".to_string(),
        "127.0.0.1".into(),
        "[::1]".into(),
        bind,
    ]
    .iter()
    .map(|h| format!("{h}:{port}"))
    .collect()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/capabilities", get(routes::capabilities))
        .route("/session", post(routes::create_session))
        .route("/session/{id}", get(routes::status).delete(routes::close))
        .route("/session/{id}/load", post(routes::load_session))
        .route("/session/{id}/prompt", post(routes::prompt))
        .route("/session/{id}/cancel", post(routes::cancel))
        .route("/session/{id}/permission/{request_id}", post(routes::vote))
        .route(
            "/session/{id}/pending-prompts",
            get(routes::pending_prompts),
        )
        .route(
            "/session/{id}/pending-prompts/{prompt_id}",
            axum::routing::delete(routes::delete_pending),
        )
        .route("/session/{id}/heartbeat", post(routes::heartbeat))
        .route("/session/{id}/events", get(sse::events))
        .route("/workspace/{id}/sessions", get(routes::workspace_sessions))
        .route("/metrics", get(routes::metrics))
        .route("/debug/traces", get(routes::trace_page))
        .route("/debug/traces.json", get(routes::traces_json))
        .route("/admin/plugins/reload", post(routes::reload_plugins))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // Layers run bottom-up: the last added is the outermost.
        .layer(from_fn_with_state(state.clone(), enrich::request_hook))
        .layer(from_fn_with_state(state.clone(), guard::admission))
        .layer(from_fn_with_state(state.clone(), guard::auth))
        .layer(from_fn_with_state(state.clone(), guard::cors))
        .layer(from_fn_with_state(state.clone(), guard::host))
        .layer(axum::middleware::from_fn(span::trace))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::allowed_hosts;

    #[test]
    fn host_check_applies_to_loopback_binds_only() {
        assert_eq!(
            allowed_hosts("127.0.0.1", 4170),
            [
                "localhost:4170",
                "127.0.0.1:4170",
                "[::1]:4170",
                "127.0.0.1:4170"
            ]
        );
        assert!(allowed_hosts("::1", 1).contains(&"[::1]:1".to_string()));
        assert!(allowed_hosts("LOCALHOST", 2).contains(&"localhost:2".to_string()));
        // A non-loopback bind is reached under names acpd cannot know: no Host check.
        assert!(allowed_hosts("0.0.0.0", 4170).is_empty());
        assert!(allowed_hosts("10.1.2.3", 4170).is_empty());
    }
}

//! The HTTP+SSE API (docs/API.md): router, guards, handlers, error responses.

pub(crate) mod body;
mod console;
mod enrich;
mod error;
mod extract;
mod files;
mod guard;
pub mod openapi;
mod pipeline;
pub(crate) mod routes;
mod schema;
pub(crate) mod session_ops;
mod span;
pub(crate) mod sse;

use axum::Router;
use axum::middleware::from_fn_with_state;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// Every route with its OpenAPI entry: each handler is mounted from its `#[utoipa::path]`.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::health))
        .routes(routes!(routes::capabilities))
        .routes(routes!(openapi::serve))
        .routes(routes!(routes::create_session))
        .routes(routes!(routes::status, routes::close))
        .routes(routes!(routes::load_session))
        .routes(routes!(routes::prompt))
        .routes(routes!(routes::cancel))
        .routes(routes!(routes::vote))
        .routes(routes!(routes::pending_prompts))
        .routes(routes!(routes::delete_pending))
        .routes(routes!(routes::heartbeat))
        .routes(routes!(sse::events))
        .routes(routes!(routes::workspace_sessions))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::trace_page))
        .routes(routes!(routes::traces_json))
        .routes(routes!(routes::reload_plugins))
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
        // The rest of qwen serve's stable contract.
        .routes(routes!(session_ops::resume))
        .routes(routes!(session_ops::update_metadata))
        .routes(routes!(session_ops::set_model))
        .routes(routes!(session_ops::set_approval_mode))
        .routes(routes!(session_ops::session_status))
        .routes(routes!(session_ops::session_context))
        .routes(routes!(session_ops::session_transcript))
        .routes(routes!(session_ops::export_session))
        .routes(routes!(session_ops::legacy_vote))
        .routes(routes!(session_ops::workspace_tools))
        .routes(routes!(files::read_file))
        .routes(routes!(files::read_file_bytes))
        .routes(routes!(files::stat_path))
        .routes(routes!(files::list_dir))
        .routes(routes!(files::glob_paths))
        .split_for_parts();
    openapi::add_guards(&mut doc);
    (router, doc)
}

pub fn router(state: AppState) -> Router {
    api()
        .0
        // ACP over HTTP: not REST operations (so not in the document), guarded like them.
        .merge(crate::acp_http::router(&state))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // The span, the guards, the `request` hook and the pages' headers, in one layer.
        .layer(from_fn_with_state(state.clone(), pipeline::serve))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::allowed_hosts;

    #[test]
    fn every_documented_route_has_a_span_name_and_every_span_name_a_route() {
        let (_, doc) = super::api();
        let mut documented: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        let mut named: Vec<&str> = super::span::ROUTES.to_vec();
        documented.sort_unstable();
        named.sort_unstable();
        assert_eq!(documented, named);
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_operation_is_guarded() {
        let doc: serde_json::Value = serde_json::from_str(super::openapi::document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 18, "{}", paths.len());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for status in ["401", "403", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                assert!(op["security"].is_array(), "{method} {path}");
                // Every schema a response names exists.
                for r in responses.values() {
                    if let Some(name) = r.pointer("/content/application~1json/schema/$ref") {
                        let name = name.as_str().unwrap().rsplit('/').next().unwrap();
                        assert!(doc["components"]["schemas"][name].is_object(), "{name}");
                    }
                }
            }
        }
        assert!(
            doc["components"]["schemas"]["ErrorBody"]["required"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("code"))
        );
    }

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

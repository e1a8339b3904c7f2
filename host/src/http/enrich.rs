//! The `request` hook: enrichment plugins see who is asking (method, route, headers, the
//! session's workspace) and add attributes to the request span, which the spans the request
//! causes inherit (`telemetry::spans::Enrichment`). Runs after the guards, before the handler.

use axum::body::Body;
use axum::extract::Request;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, Value};
use std::sync::Arc;

use super::AppState;
use super::span::route_template;
use crate::error::ApiError;
use crate::path_marks::{self, Step};
use crate::plugins::{self, Hook};
use crate::telemetry::semconv::*;
use crate::telemetry::spans::Enrichment;

/// Headers never shown to a plugin: credentials.
fn secret_header(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie" | "x-api-key"
    ) || name.contains("token")
        || name.contains("secret")
        || name.contains("password")
}

/// What the rest of the request runs under: the request (its body read and put back when the
/// hook needed it) and, when a plugin added attributes, the context that carries them.
pub type Enriched = (Request, Option<Context>);

/// Calls the `request` plugins, if any asks for this request; `Err` is the answer to a body
/// too large to read.
pub async fn request_hook(state: &AppState, req: Request) -> Result<Enriched, ApiError> {
    path_marks::mark(Step::Guarded);
    let Some(set) = plugins::current().filter(|s| s.has(Hook::Request)) else {
        return Ok((req, None));
    };
    let path = req.uri().path().to_string();
    // An untraced probe (`telemetry.trace_probes` off, see `span::trace`) has no span to
    // enrich: a plugin call there would halve what /health serves, for nothing.
    let untraced_probe = path == "/health" && !crate::telemetry::trace_probes();
    if path.starts_with("/debug/")
        || path == "/metrics"
        || path.starts_with("/admin/")
        || untraced_probe
    {
        return Ok((req, None));
    }
    let route = route_template(&path);
    let mut facts: Vec<(&str, Value)> = vec![
        (
            HTTP_REQUEST_METHOD,
            req.method().as_str().to_string().into(),
        ),
        (URL_PATH, path.clone().into()),
    ];
    if let Some(r) = route {
        facts.push((HTTP_ROUTE, r.into()));
    }
    let header_keys: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(n, _)| !secret_header(n.as_str()))
        .filter_map(|(n, v)| {
            Some((
                format!("http.request.header.{}", n.as_str()),
                v.to_str().ok()?.chars().take(1024).collect(),
            ))
        })
        .take(64)
        .collect();
    for (k, v) in &header_keys {
        facts.push((k.as_str(), v.clone().into()));
    }
    // The workspace, where the request names one: the session's, or the one a new session asks
    // for.
    let mut req = req;
    let session_id = path
        .strip_prefix("/session/")
        .and_then(|rest| rest.split('/').next())
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    if let Some(id) = &session_id
        && let Ok(s) = state.bridge.session(id)
    {
        facts.push((SESSION_ID, s.id.clone().into()));
        facts.push((WORKSPACE_ID, s.workspace.id.clone().into()));
        facts.push(("acpd.workspace.path", s.workspace.cwd_str().into()));
    } else if route == Some("/session") && req.method() == axum::http::Method::POST {
        let (parts, body) = req.into_parts();
        let limit = state.bridge.config.server.max_body_bytes;
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            // The same answer the handler's extractor gives; the body is gone either way.
            Err(_) => return Err(super::body::too_large(limit)),
        };
        let cwd = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("cwd").and_then(|c| c.as_str()).map(str::to_string));
        let ws = match cwd {
            Some(c) => state
                .bridge
                .workspaces
                .iter()
                .find(|w| w.cwd_str() == c.trim_end_matches('/')),
            None => Some(state.bridge.primary()),
        };
        if let Some(w) = ws {
            facts.push((WORKSPACE_ID, w.id.clone().into()));
            facts.push(("acpd.workspace.path", w.cwd_str().into()));
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    let added = set.observe(Hook::Request, &facts);
    path_marks::mark(Step::Enriched);
    drop(set);
    if added.is_empty() {
        return Ok((req, None));
    }
    let cx = Context::current();
    for kv in &added {
        cx.span().set_attribute(kv.clone());
    }
    Ok((req, Some(cx.with_value(Enrichment(Arc::new(added))))))
}

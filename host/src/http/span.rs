//! The request span: one SERVER span per request (outermost step of `pipeline`, so guard
//! rejections are traced too), named by route template, parented to an inbound `traceparent`,
//! plus the `http.server.*` metrics.

use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use axum::response::Response;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use std::net::SocketAddr;
use std::time::Instant;

use crate::path_marks::{self, Step};
use crate::telemetry::metrics::{HTTP_METHODS, InFlight};
use crate::telemetry::semconv::*;
use crate::telemetry::spans::RequestFacts;
use crate::telemetry::{metrics, propagation, spans};

/// Route templates, for span names and `http.route` (never the raw path: unbounded cardinality).
pub(super) const ROUTES: &[&str] = &[
    "/",
    "/console/{file}",
    "/health",
    "/capabilities",
    "/openapi.json",
    "/metrics",
    "/debug/traces",
    "/debug/traces.json",
    "/session",
    "/session/{id}",
    "/session/{id}/load",
    "/session/{id}/prompt",
    "/session/{id}/cancel",
    "/session/{id}/permission/{request_id}",
    "/session/{id}/pending-prompts",
    "/session/{id}/pending-prompts/{prompt_id}",
    "/session/{id}/heartbeat",
    "/session/{id}/events",
    "/workspace/{id}/sessions",
    "/admin/plugins/reload",
    "/session/{id}/resume",
    "/session/{id}/metadata",
    "/session/{id}/model",
    "/session/{id}/approval-mode",
    "/session/{id}/status",
    "/session/{id}/context",
    "/session/{id}/transcript",
    "/session/{id}/export",
    "/permission/{request_id}",
    "/workspace/tools",
    "/file",
    "/file/bytes",
    "/stat",
    "/list",
    "/glob",
];

/// The ACP over HTTP endpoints (`crate::acp_http`): traced like the routes above, but not REST
/// operations, so not in the OpenAPI document.
pub(crate) const TRANSPORT_ROUTES: &[&str] = &["/acp", "/workspaces/{workspace}/acp"];

pub fn route_template(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    // Segment by segment, without allocating: this runs on every request.
    ROUTES
        .iter()
        .chain(TRANSPORT_ROUTES)
        .copied()
        .find(|template| {
            let (mut t, mut p) = (template.split('/'), path.split('/'));
            loop {
                match (t.next(), p.next()) {
                    (None, None) => return true,
                    (Some(ts), Some(ps)) if ts == ps || (ts.starts_with('{') && !ps.is_empty()) => {
                    }
                    _ => return false,
                }
            }
        })
}

/// The method's index in `HTTP_METHODS` (semconv's known methods, `_OTHER` for the rest).
fn method_index(m: &axum::http::Method) -> usize {
    let m = m.as_str();
    HTTP_METHODS
        .iter()
        .position(|known| *known == m)
        .unwrap_or(HTTP_METHODS.len() - 1)
}

/// At most one `acpd.traceparent.invalid` record per second: a client sending garbage on every
/// request must not flood the logs.
fn invalid_traceparent_log_allowed() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.swap(now, Ordering::Relaxed) != now
}

/// Runs `rest` (in `pipeline`: the guards, the hook and the router) for `req`, under the
/// request's span.
pub async fn trace<F>(req: Request, rest: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    path_marks::mark(Step::Received);
    // The outermost step: every request counts towards the daemon's load (`sched::realtime`).
    crate::sched::note_activity();
    // Looking at telemetry must not fill the trace view with its own requests, nor loading the
    // console's static files.
    let path = req.uri().path();
    if path.starts_with("/debug/")
        || path == "/metrics"
        || path == "/"
        || path.starts_with("/console/")
    {
        return rest(req).await;
    }
    let started = Instant::now();
    let method_at = method_index(req.method());
    let method = HTTP_METHODS[method_at];
    let route = route_template(req.uri().path());
    // Probes come every few seconds from every orchestrator: counted, not traced (unless the
    // operator asks), so they cost neither the export stage nor room in the trace view.
    if route == Some("/health") && !crate::telemetry::trace_probes() {
        let resp = rest(req).await;
        let status = resp.status().as_u16();
        metrics().http_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                KeyValue::new(HTTP_REQUEST_METHOD, method),
                KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)),
                KeyValue::new(HTTP_ROUTE, "/health"),
            ],
        );
        return resp;
    }
    let parent = match propagation::extract_headers(req.headers()) {
        Ok(cx) => cx,
        Err(why) => {
            if invalid_traceparent_log_allowed() {
                tracing::debug!(name: "acpd.traceparent.invalid", target: "acpd::http", "{why}; starting a new trace");
            }
            Context::new()
        }
    };
    let mut attrs = vec![
        KeyValue::new(HTTP_REQUEST_METHOD, method),
        KeyValue::new(URL_PATH, req.uri().path().to_string()),
        KeyValue::new(URL_SCHEME, "http"),
    ];
    if let Some(r) = route {
        attrs.push(KeyValue::new(HTTP_ROUTE, r));
    }
    if let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let (name, port) = host.rsplit_once(':').unwrap_or((host, ""));
        attrs.push(KeyValue::new(SERVER_ADDRESS, name.to_string()));
        if let Ok(p) = port.parse::<i64>() {
            attrs.push(KeyValue::new(SERVER_PORT, p));
        }
    }
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        attrs.push(KeyValue::new(CLIENT_ADDRESS, peer.ip().to_string()));
    }
    if let Some(ua) = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|h| h.to_str().ok())
    {
        attrs.push(KeyValue::new(USER_AGENT_ORIGINAL, ua.to_string()));
    }
    let name = match route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    let facts = RequestFacts::default();
    if let Some(r) = route {
        facts.push(HTTP_ROUTE, r);
    }
    let cx = spans::start(name, SpanKind::Server, &parent, attrs).with_value(facts);
    let in_flight = InFlight::enter(method_at);
    path_marks::mark(Step::Span);
    let resp = rest(req).with_context(cx.clone()).await;
    drop(in_flight);

    let status = resp.status().as_u16();
    let span = cx.span();
    span.set_attribute(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
    let mut labels = vec![
        KeyValue::new(HTTP_REQUEST_METHOD, method),
        KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)),
    ];
    if let Some(r) = route {
        labels.push(KeyValue::new(HTTP_ROUTE, r));
    }
    if status >= 500 {
        // The stable error code where the error became a response; else the status (semconv).
        let recorded = cx.get::<RequestFacts>().and_then(|f| f.get(ERROR_TYPE));
        if recorded.is_none() {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        let error_type = recorded.unwrap_or_else(|| status.to_string());
        span.set_attribute(KeyValue::new(ERROR_TYPE, error_type.clone()));
        labels.push(KeyValue::new(ERROR_TYPE, error_type));
    }
    metrics()
        .http_duration
        .record(started.elapsed().as_secs_f64(), &labels);
    span.end();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_by_segment() {
        assert_eq!(
            route_template("/session/abc/prompt"),
            Some("/session/{id}/prompt")
        );
        assert_eq!(
            route_template("/session/abc/permission/r1"),
            Some("/session/{id}/permission/{request_id}")
        );
        assert_eq!(route_template("/session"), Some("/session"));
        assert_eq!(route_template("/session/abc"), Some("/session/{id}"));
        assert_eq!(route_template("/nope/x"), None);
        assert_eq!(route_template("/session//prompt"), None);
    }
}

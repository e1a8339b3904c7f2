//! The one place where an `ApiError` becomes an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use serde_json::{Value, json};

use crate::error::{ApiError, Surface, client_visible};
use crate::telemetry::semconv::*;
use crate::telemetry::spans::RequestFacts;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Telemetry keeps the daemon's own code and detail; the client sees the translation.
        record(&self);
        let mut shown = client_visible(&self, Surface::Http);
        let mut body = json!({"error": shown.message, "code": shown.code});
        if let Some(r) = shown.retryable {
            body["retryable"] = json!(r);
        }
        if let Value::Object(map) = &mut body {
            for (k, v) in std::mem::take(&mut shown.context) {
                map.entry(k).or_insert(v);
            }
        }
        let status =
            StatusCode::from_u16(shown.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = shown.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Telemetry for an error response: the bridge error counter, and for a 5xx the request span's
/// error status and a log record correlated to it (route, session, prompt, sanitised message).
fn record(e: &ApiError) {
    crate::telemetry::metrics()
        .bridge_errors
        .add(1, &[KeyValue::new(ERROR_TYPE, e.code)]);
    if e.status < 500 {
        return;
    }
    let cx = Context::current();
    let span = cx.span();
    span.set_attribute(KeyValue::new(ERROR_TYPE, e.code));
    span.set_status(Status::error(e.message.clone()));
    let facts = cx.get::<RequestFacts>().cloned().unwrap_or_default();
    facts.push(ERROR_TYPE, e.code);
    let session = facts.get(SESSION_ID).or_else(|| {
        e.context
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let prompt = facts.get(PROMPT_ID);
    let _guard = cx.clone().attach();
    tracing::error!(
        name: "acpd.bridge.error",
        target: "acpd::http",
        {
            "error.type" = e.code,
            "http.route" = facts.get(HTTP_ROUTE).as_deref().unwrap_or(""),
            "http.response.status_code" = i64::from(e.status),
            "session.id" = session.as_deref().unwrap_or(""),
            "acpd.prompt.id" = prompt.as_deref().unwrap_or("")
        },
        "{}",
        e.message
    );
}

//! What the crate's server leaves to its host, done before and after it:
//!
//! - The daemon's body limit (`server.max_body_bytes`, 413 `payload_too_large`), not the crate's
//!   fixed 16 MiB.
//! - A JSON-RPC batch is answered 501 (as qwen serve does and the RFD lists) with the JSON-RPC
//!   error the crate would give, instead of the crate's 400.
//! - A message without trace context in `_meta` gets the HTTP request's, so its JSON-RPC span
//!   (and a prompt's turn) continue the trace of the request that carried it.
//! - The `Origin` header is removed once the daemon's CORS guard has let the request through:
//!   the crate would otherwise refuse every browser WebSocket (its own policy is off).
//! - The crate's plain-text refusals become the daemon's JSON error body, with a stable code
//!   per status (the status itself is the RFD's and is kept).
//! - Each HTTP connection's activity (requests, open streams) is recorded for [`super::expiry`].

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use serde_json::{Value, json};

use futures::StreamExt;
use std::sync::Arc;

use super::expiry::{Liveness, StreamGuard};
use crate::error::ApiError;
use crate::telemetry::propagation;
use crate::telemetry::semconv::RPC_METHOD;
use crate::telemetry::spans::Enrichment;

/// The crate's refusals are short; a longer body is not one of them.
const REFUSAL_BYTES: usize = 4096;

#[derive(Clone)]
pub struct Transport {
    pub limit: usize,
    pub live: Arc<Liveness>,
    pub bridge: Arc<crate::bridge::Bridge>,
}

pub async fn layer(State(t): State<Transport>, req: Request, next: Next) -> Response {
    let mut req = req;
    req.headers_mut().remove(header::ORIGIN);
    let connection = req
        .headers()
        .get(HEADER_CONNECTION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(c) = &connection {
        t.live.touch(c);
    }
    let method = req.method().clone();
    if method == Method::POST {
        req = match prepare_post(req, t.limit).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
    }
    let resp = next.run(req).await;
    if method == Method::POST
        && connection.is_none()
        && resp.status().is_success()
        && let Some(created) = resp
            .headers()
            .get(HEADER_CONNECTION_ID)
            .and_then(|v| v.to_str().ok())
    {
        t.live.register(created);
    }
    if method == Method::DELETE
        && resp.status().is_success()
        && let Some(c) = &connection
    {
        t.live.forget(c);
    }
    let streaming = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if method == Method::GET && streaming {
        let guard = connection.as_deref().and_then(|c| t.live.open(c));
        return held_open(resp, guard, t.bridge.drained());
    }
    json_refusal(resp).await
}

const HEADER_CONNECTION_ID: &str = "acp-connection-id";

/// The stream's body, holding `guard` until the client goes away, and ended when the daemon
/// drains (the crate's streams end only with their connection, so the shutdown would otherwise
/// wait its whole deadline for every open one).
fn held_open(
    resp: Response,
    guard: Option<StreamGuard>,
    drained: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    let (parts, body) = resp.into_parts();
    let stream = body
        .into_data_stream()
        .map(move |chunk| {
            let _held = &guard;
            chunk
        })
        .take_until(drained);
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn prepare_post(req: Request, limit: usize) -> Result<Request, Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(crate::http::body::too_large(limit).into_response());
    }
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| crate::http::body::too_large(limit).into_response())?;
    // The crate answers a wrong Content-Type 415 before it reads the body.
    if !json_body {
        return Ok(Request::from_parts(parts, Body::from(bytes)));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let error = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600,
            "message": "JSON-RPC batches are not supported"}});
        return Err((
            axum::http::StatusCode::NOT_IMPLEMENTED,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            error.to_string(),
        )
            .into_response());
    }
    let Ok(mut msg) = serde_json::from_slice::<Value>(&bytes) else {
        // Malformed JSON: the crate answers it (a JSON-RPC parse error).
        return Ok(Request::from_parts(parts, Body::from(bytes)));
    };
    let cx = Context::current();
    if let Some(method) = msg.get("method").and_then(Value::as_str) {
        cx.span()
            .set_attribute(KeyValue::new(RPC_METHOD, method.to_string()));
    }
    let body = match with_request_trace(&mut msg, &cx) {
        true => Body::from(msg.to_string()),
        false => Body::from(bytes),
    };
    if let Some(e) = cx.get::<Enrichment>()
        && let Some(tp) = msg
            .pointer("/params/_meta/traceparent")
            .and_then(Value::as_str)
    {
        super::rpc::carry(tp, e.clone());
    }
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Request::from_parts(parts, body))
}

/// Puts `cx` into a request's or notification's `params._meta` when the client put no trace
/// context there. True when the message changed.
fn with_request_trace(msg: &mut Value, cx: &Context) -> bool {
    if msg.get("method").is_none() || !cx.span().span_context().is_valid() {
        return false;
    }
    let Some(params) = msg.get_mut("params").and_then(Value::as_object_mut) else {
        return false;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else {
        return false;
    };
    if meta.contains_key("traceparent") {
        return false;
    }
    propagation::inject_meta(cx, meta, &["traceparent".to_string()]);
    true
}

/// A plain-text (or empty) 4xx from the crate as the daemon's error body.
async fn json_refusal(resp: Response) -> Response {
    let status = resp.status();
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/plain"));
    if !status.is_client_error() || !plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, REFUSAL_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, default) = match status.as_u16() {
        400 => ("invalid_request", "Invalid ACP request"),
        404 => (
            "acp_not_found",
            "Unknown Acp-Connection-Id or Acp-Session-Id",
        ),
        405 => ("method_not_allowed", "Method not allowed"),
        406 => ("not_acceptable", "Accept must include text/event-stream"),
        409 => ("stream_busy", "The stream already has a subscriber"),
        413 => ("payload_too_large", "Request body too large"),
        415 => (
            "unsupported_media_type",
            "Content-Type must be application/json",
        ),
        _ => ("acp_request_refused", "ACP request refused"),
    };
    let message = if text.is_empty() {
        default.to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status.as_u16(), code, message).into_response();
    // The crate's headers (Acp-Connection-Id on a refused stream) stay.
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn remote() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn the_request_trace_fills_an_empty_meta_and_never_replaces_the_clients() {
        let mut m = json!({"jsonrpc": "2.0", "id": 1, "method": "session/prompt", "params": {"sessionId": "s"}});
        assert!(with_request_trace(&mut m, &remote()));
        let tp = m["params"]["_meta"]["traceparent"].as_str().unwrap();
        assert!(tp.contains("0af7651916cd43dd8448eb211c80319c"), "{tp}");
        let mut own =
            json!({"method": "session/prompt", "params": {"_meta": {"traceparent": "x"}}});
        assert!(!with_request_trace(&mut own, &remote()));
        assert_eq!(own["params"]["_meta"]["traceparent"], "x");
        // A response carries no params to mark.
        let mut resp = json!({"jsonrpc": "2.0", "id": 1, "result": {}});
        assert!(!with_request_trace(&mut resp, &remote()));
    }
}

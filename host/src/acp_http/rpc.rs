//! JSON-RPC server spans and errors for `/acp`: one SERVER span per method the facade handles
//! (`rpc.system`, `rpc.method`, `session.id`; on failure `rpc.jsonrpc.error_code` and the
//! stable `error.type`), parented to the trace context in the message's `_meta` (the transport
//! puts the HTTP request's there when the client sent none). Errors are what REST shows for the
//! same failure: the bridge's `ApiError` through error translation and the sanitiser.

use agent_client_protocol::v1::schema::Meta;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use serde_json::{Value, json};

use crate::error::{ApiError, Surface, client_visible};
use crate::telemetry::semconv::*;
use crate::telemetry::spans::Enrichment;
use crate::telemetry::{propagation, spans};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

/// How many carried enrichments wait for their message's span at most.
const CARRIED_MAX: usize = 4096;

/// What the `request` plugins added to the HTTP request that carried a message, by the
/// `traceparent` in the message's `_meta`: the message's JSON-RPC span (and the turn under it)
/// inherit it as a REST request's spans do. Bounded; what falls out is counted.
#[derive(Default)]
struct Carried {
    inner: Mutex<(HashMap<String, Enrichment>, VecDeque<String>)>,
    evicted: AtomicU64,
}

static CARRIED: LazyLock<Carried> = LazyLock::new(Carried::default);

pub fn carry(traceparent: &str, e: Enrichment) {
    let mut inner = CARRIED.inner.lock().unwrap_or_else(|p| p.into_inner());
    let (map, order) = &mut *inner;
    if map.insert(traceparent.to_string(), e).is_none() {
        order.push_back(traceparent.to_string());
    }
    while map.len() > CARRIED_MAX {
        let Some(old) = order.pop_front() else { break };
        if map.remove(&old).is_some() {
            CARRIED.evicted.fetch_add(1, Ordering::Relaxed);
            super::DROPS.carried_context.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn carried(traceparent: &str) -> Option<Enrichment> {
    let mut inner = CARRIED.inner.lock().unwrap_or_else(|p| p.into_inner());
    let (map, order) = &mut *inner;
    let e = map.remove(traceparent)?;
    order.retain(|t| t != traceparent);
    Some(e)
}

/// ACP's "resource not found" (the spec's code for an unknown session).
const RESOURCE_NOT_FOUND: i32 = -32002;
const INVALID_PARAMS: i32 = -32602;
const INTERNAL_ERROR: i32 = -32603;

pub struct RpcSpan {
    cx: Context,
}

impl RpcSpan {
    pub fn start(method: &'static str, meta: Option<&Meta>, session: Option<&str>) -> Self {
        let parent = meta.map(parent_from_meta).unwrap_or_default();
        let mut attrs = vec![
            KeyValue::new(RPC_SYSTEM, "jsonrpc"),
            KeyValue::new(RPC_METHOD, method),
        ];
        if let Some(s) = session {
            attrs.push(KeyValue::new(SESSION_ID, s.to_string()));
        }
        Self {
            cx: spans::start(method, SpanKind::Server, &parent, attrs),
        }
    }

    pub fn cx(&self) -> &Context {
        &self.cx
    }

    pub fn set(&self, kv: KeyValue) {
        spans::set(&self.cx, kv);
    }

    pub fn session(&self, id: &str) {
        self.set(KeyValue::new(SESSION_ID, id.to_string()));
    }

    pub fn ok(&self) {
        spans::end(&self.cx);
    }

    /// Ends the span as failed and returns the JSON-RPC error the client gets.
    pub fn fail(&self, e: &ApiError) -> agent_client_protocol::Error {
        self.fail_rpc(to_rpc(e))
    }

    pub fn fail_rpc(&self, e: agent_client_protocol::Error) -> agent_client_protocol::Error {
        let span = self.cx.span();
        let code = i32::from(e.code);
        span.set_attribute(KeyValue::new(RPC_JSONRPC_ERROR_CODE, i64::from(code)));
        span.set_attribute(KeyValue::new(RPC_JSONRPC_ERROR_MESSAGE, e.message.clone()));
        let error_type = e
            .data
            .as_ref()
            .and_then(|d| d.get("code"))
            .and_then(Value::as_str)
            .map_or_else(|| code.to_string(), str::to_string);
        span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
        span.set_status(Status::error(e.message.clone()));
        spans::end(&self.cx);
        e
    }
}

/// `traceparent`/`tracestate`/`baggage` from `_meta` (a malformed one starts a new trace), with
/// the enrichment of the request that carried the message.
fn parent_from_meta(meta: &Meta) -> Context {
    let cx = trace_from_meta(meta);
    match meta
        .get("traceparent")
        .and_then(Value::as_str)
        .and_then(carried)
    {
        Some(e) => cx.with_value(e),
        None => cx,
    }
}

fn trace_from_meta(meta: &Meta) -> Context {
    let mut headers = axum::http::HeaderMap::new();
    for key in ["traceparent", "tracestate", "baggage"] {
        if let Some(v) = meta.get(key).and_then(Value::as_str)
            && let Ok(v) = axum::http::HeaderValue::from_str(v)
        {
            headers.insert(key, v);
        }
    }
    propagation::extract_headers(&headers).unwrap_or_default()
}

/// An `ApiError` as the JSON-RPC error a client sees: translated and sanitised as on REST, the
/// stable code and HTTP status in `data`, the agent's own JSON-RPC code kept when it has one.
pub fn to_rpc(e: &ApiError) -> agent_client_protocol::Error {
    let shown = client_visible(e, Surface::Http);
    let code = shown
        .context
        .get("rpcCode")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(match shown.status {
            404 | 410 => RESOURCE_NOT_FOUND,
            400 | 413 | 422 => INVALID_PARAMS,
            _ => INTERNAL_ERROR,
        });
    let mut data = json!({"code": shown.code, "status": shown.status});
    for (k, v) in shown.context {
        data[k] = v;
    }
    if let Some(s) = shown.retry_after {
        data["retryAfter"] = json!(s);
    }
    if let Some(r) = shown.retryable {
        data["retryable"] = json!(r);
    }
    agent_client_protocol::Error::new(code, shown.message).data(data)
}

/// A `turn_error` event (already translated for the SSE surface) as the prompt's JSON-RPC error.
pub fn from_turn_error(data: &Value) -> agent_client_protocol::Error {
    let code = data
        .get("rpcCode")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(INTERNAL_ERROR);
    let message = data
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("The turn failed")
        .to_string();
    let mut out = json!({"code": data.get("code").cloned().unwrap_or(Value::Null)});
    for key in ["retryable", "traceId", "promptId"] {
        if let Some(v) = data.get(key) {
            out[key] = v.clone();
        }
    }
    agent_client_protocol::Error::new(code, message).data(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_session_is_resource_not_found_with_the_stable_code() {
        let e = to_rpc(&ApiError::session_not_found("s1"));
        assert_eq!(i32::from(e.code), RESOURCE_NOT_FOUND);
        let data = e.data.unwrap();
        assert_eq!(data["code"], "session_not_found");
        assert_eq!(data["status"], 404);
    }

    #[test]
    fn an_agent_error_keeps_the_agents_code() {
        let e = to_rpc(&ApiError::new(502, "agent_error", "boom").with("rpcCode", -32000));
        assert_eq!(i32::from(e.code), -32000);
        let e = from_turn_error(&json!({"code": "turn_timeout", "message": "slow"}));
        assert_eq!(i32::from(e.code), INTERNAL_ERROR);
        assert_eq!(e.message, "slow");
    }
}

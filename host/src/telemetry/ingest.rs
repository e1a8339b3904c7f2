//! A loopback OTLP/HTTP endpoint for the daemon's own agent children: when no collector is
//! configured, agents export their spans here, so the trace view shows the whole cross-process
//! trace. Spans pass the same processing stage as the daemon's own.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::sync::Arc;

use super::sanitize::sanitize;
use super::view::{TraceRing, ViewSpan};

pub const KEY_HEADER: &str = "x-acpd-ingest-key";
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Ingest {
    ring: Arc<TraceRing>,
    key: Arc<str>,
}

/// Starts the endpoint on 127.0.0.1 (a free port); returns its base URL and the key agents send.
pub async fn start(ring: Arc<TraceRing>) -> std::io::Result<(String, String)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let key = uuid::Uuid::new_v4().simple().to_string();
    let state = Ingest {
        ring,
        key: key.clone().into(),
    };
    let app = Router::new()
        .route("/v1/traces", post(traces))
        // Agents may export the other signals too; the view has no use for them.
        .route("/v1/logs", post(accept))
        .route("/v1/metrics", post(accept))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "agent telemetry ingest stopped");
        }
    });
    Ok((format!("http://{addr}"), key))
}

async fn accept() -> StatusCode {
    StatusCode::OK
}

async fn traces(State(s): State<Ingest>, headers: HeaderMap, body: Bytes) -> (StatusCode, Vec<u8>) {
    if headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()) != Some(&*s.key) {
        return (StatusCode::UNAUTHORIZED, Vec::new());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let req = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).ok()
    } else {
        ExportTraceServiceRequest::decode(body).ok()
    };
    let Some(req) = req else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans: Vec<ViewSpan> = super::view::from_proto(&req);
    redact_views(&mut spans);
    let spans: Vec<ViewSpan> = spans.into_iter().map(sanitize_view).collect();
    s.ring.push(spans);
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// The agents' spans pass the same `export-spans` plugins as the daemon's own (failing closed
/// the same way) before the trace view shows them.
fn redact_views(spans: &mut [ViewSpan]) {
    use opentelemetry::trace::{SpanContext, SpanKind, Status};
    use opentelemetry::{KeyValue, Value};
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    let Some(set) = crate::plugins::current().filter(|s| s.has(crate::plugins::Hook::ExportSpans))
    else {
        return;
    };
    fn value(j: &serde_json::Value) -> Value {
        match j {
            serde_json::Value::String(s) => Value::String(s.clone().into()),
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) if n.is_i64() => {
                Value::I64(n.as_i64().unwrap_or_default())
            }
            serde_json::Value::Number(n) => Value::F64(n.as_f64().unwrap_or_default()),
            other => Value::String(other.to_string().into()),
        }
    }
    fn json(v: &Value) -> serde_json::Value {
        match v {
            Value::String(s) => serde_json::Value::String(s.to_string()),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::I64(i) => serde_json::json!(i),
            Value::F64(f) => serde_json::json!(f),
            other => serde_json::Value::String(other.to_string()),
        }
    }
    let kvs = |attrs: &[(String, serde_json::Value)]| -> Vec<KeyValue> {
        attrs
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), value(v)))
            .collect()
    };
    let mut batch: Vec<SpanData> = spans
        .iter()
        .map(|v| {
            let mut events = SpanEvents::default();
            for e in &v.events {
                events.events.push(opentelemetry::trace::Event::new(
                    e.name.clone(),
                    std::time::UNIX_EPOCH,
                    kvs(&e.attributes),
                    0,
                ));
            }
            SpanData {
                span_context: SpanContext::empty_context(),
                parent_span_id: opentelemetry::trace::SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: match v.kind.as_str() {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                },
                name: v.name.clone().into(),
                start_time: std::time::UNIX_EPOCH,
                end_time: std::time::UNIX_EPOCH,
                attributes: kvs(&v.attributes),
                dropped_attributes_count: 0,
                events,
                links: SpanLinks::default(),
                status: if v.status == "error" {
                    Status::error(v.status_message.clone())
                } else {
                    Status::Unset
                },
                instrumentation_scope: opentelemetry::InstrumentationScope::builder("agent")
                    .build(),
            }
        })
        .collect();
    set.spans(&mut batch);
    for (view, data) in spans.iter_mut().zip(batch) {
        view.name = data.name.into_owned();
        view.attributes = data
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), json(&kv.value)))
            .collect();
        if let Status::Error { description } = &data.status {
            view.status_message = description.to_string();
        }
        for (ve, de) in view.events.iter_mut().zip(data.events.events.iter()) {
            ve.attributes = de
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), json(&kv.value)))
                .collect();
        }
    }
}

/// The processing stage for spans that arrive already encoded.
fn sanitize_view(mut span: ViewSpan) -> ViewSpan {
    for (_, v) in span.attributes.iter_mut() {
        if let serde_json::Value::String(s) = v {
            *s = sanitize(s.as_str());
        }
    }
    span.status_message = sanitize(&span.status_message);
    for event in span.events.iter_mut() {
        event.name = sanitize(&event.name);
        for (_, v) in event.attributes.iter_mut() {
            if let serde_json::Value::String(s) = v {
                *s = sanitize(s.as_str());
            }
        }
    }
    span
}

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
    let spans: Vec<ViewSpan> = super::view::from_proto(&req)
        .into_iter()
        .map(sanitize_view)
        .collect();
    s.ring.push(spans);
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
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

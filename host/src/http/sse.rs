//! `GET /session/:id/events`: replay from `Last-Event-ID`, then live frames, heartbeats, and
//! an eviction notice when the client falls too far behind.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use super::AppState;
use super::routes::client_header;
use crate::bridge::events::{Next, Subscription};
use crate::error::ApiError;
use crate::telemetry::metrics;
use crate::telemetry::semconv::SSE_REASON;
use opentelemetry::KeyValue;

const HEARTBEAT: &[u8] = b": heartbeat\n\n";

struct Stream {
    preface: VecDeque<Bytes>,
    sub: Subscription,
    heartbeat: tokio::time::Interval,
    open: Open,
}

/// Counts the connection while its stream lives (the body is dropped when the client leaves).
struct Open(String);

impl Open {
    fn new(session: &str) -> Self {
        metrics().sse_subscribers.add(1, &[]);
        tracing::debug!(name: "acpd.sse.opened", target: "acpd::sse", { "session.id" = %session }, "event stream opened");
        Self(session.to_string())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics().sse_subscribers.add(-1, &[]);
        tracing::debug!(name: "acpd.sse.closed", target: "acpd::sse", { "session.id" = %self.0 }, "event stream closed");
    }
}

pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = state.bridge.session(&id)?;
    session.check_client(client_header(&headers))?;
    let last_event_id = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim))
    {
        None => None,
        Some(Ok(v)) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::new(
                400,
                "invalid_last_event_id",
                "Last-Event-ID must be a non-negative integer",
            )
        })?),
        Some(Err(_)) => {
            return Err(ApiError::new(
                400,
                "invalid_last_event_id",
                "Last-Event-ID must be a non-negative integer",
            ));
        }
    };
    let epoch = headers
        .get("x-qwen-event-epoch")
        .and_then(|v| v.to_str().ok());
    let sub = session.bus.subscribe(last_event_id, epoch)?;
    let mut preface: VecDeque<Bytes> = VecDeque::with_capacity(sub.preface.len() + 1);
    preface.push_back(Bytes::from_static(b"retry: 3000\n\n"));
    preface.extend(sub.preface.iter().cloned());
    let period = Duration::from_secs(state.bridge.config.limits.heartbeat_secs);
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let open = Open::new(&session.id);
    let stream = futures::stream::unfold(
        Some(Stream {
            open,
            preface,
            sub,
            heartbeat,
        }),
        |st| async move {
            let mut st = st?;
            if let Some(frame) = st.preface.pop_front() {
                return Some((Ok::<_, Infallible>(frame), Some(st)));
            }
            tokio::select! {
                next = st.sub.next() => match next {
                    Next::Frame(f) => Some((Ok(f), Some(st))),
                    Next::Evicted(f) => {
                    metrics().sse_evictions.add(1, &[KeyValue::new(SSE_REASON, "queue_overflow")]);
                    tracing::info!(name: "acpd.sse.evicted", target: "acpd::sse", { "session.id" = %st.open.0 }, "slow event-stream subscriber evicted");
                    Some((Ok(f), None))
                }
                    Next::Closed => None,
                },
                _ = st.heartbeat.tick() => Some((Ok(Bytes::from_static(HEARTBEAT)), Some(st))),
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(session.bus.epoch()) {
        h.insert("x-qwen-event-epoch", v);
    }
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-qwen-sse-stream-id", v);
    }
    Ok(resp)
}

//! `GET /session/:id/events`: replay from `Last-Event-ID`, then live frames, heartbeats, and
//! an eviction notice when the client falls too far behind.

use super::extract::Path;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use super::AppState;
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

/// `Last-Event-ID`: absent is `None` (live only); anything but a non-negative integer (surrounding
/// whitespace allowed) is 400 `invalid_last_event_id`.
pub(crate) fn parse_last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let invalid = || {
        ApiError::new(
            400,
            "invalid_last_event_id",
            "Last-Event-ID must be a non-negative integer",
        )
    };
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => {
            let text = v.to_str().map_err(|_| invalid())?;
            text.trim().parse::<u64>().map(Some).map_err(|_| invalid())
        }
    }
}

/// `X-Qwen-Event-Epoch`, as sent. A value that is not ASCII is still an epoch the client holds,
/// and never this bus's (a UUID): it must mismatch, not read as no epoch at all.
pub(crate) fn event_epoch(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    headers
        .get("x-qwen-event-epoch")
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
}

#[utoipa::path(get, path = "/session/{id}/events", tag = "events",
    params(("id" = String, Path, description = "Session id"),
           ("Last-Event-ID" = Option<String>, Header, description = "Replay every retained event after this id", pattern = "^[0-9]{1,19}$"),
           ("X-Qwen-Event-Epoch" = Option<String>, Header, description = "The epoch the client's ids belong to; a mismatch asks the client to resync"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = "The client id the daemon issued for this session", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The session's event stream: `id:`/`event:`/`data:` frames, heartbeats", content_type = "text/event-stream", body = super::schema::SseFrame),
        (status = 400, description = "`invalid_last_event_id`, `invalid_client_id`", body = super::schema::ErrorBody),
        (status = 404, description = "`session_not_found`", body = super::schema::ErrorBody),
        (status = 429, description = "`subscriber_limit_exceeded`", body = super::schema::ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (session, _) =
        super::routes::session_scope(&state, &id, &headers, super::routes::ClientHeader::Checked)?;
    let last_event_id = parse_last_event_id(&headers)?;
    let sub = session
        .bus
        .subscribe(last_event_id, event_epoch(&headers).as_deref())?;
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

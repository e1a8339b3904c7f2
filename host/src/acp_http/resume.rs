//! Resumable session streams. The crate's SSE events carry no `id:`, so a client that loses a
//! session stream mid-turn cannot tell what it missed. qwen serve's clients rely on resuming
//! one with `Last-Event-ID`; this layer gives every event of a session-scoped stream
//! (`Acp-Connection-Id` + `Acp-Session-Id`) an id, keeps the last [`RING`] per stream, and
//! replays those after `Last-Event-ID` when the client comes back. Keep-alives pass untouched.
//!
//! Bounded: [`RING`] events per stream and [`MAX_STREAMS`] streams (the oldest forgotten first);
//! both drops are counted. A DELETE forgets the connection's streams.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const RING: usize = 512;
const MAX_STREAMS: usize = 4096;

type Key = (String, String);

#[derive(Default)]
pub struct Streams {
    inner: Mutex<Inner>,
    /// Events that fell out of a ring, and streams forgotten for room.
    pub evicted_events: AtomicU64,
    pub evicted_streams: AtomicU64,
}

#[derive(Default)]
struct Inner {
    rings: HashMap<Key, Arc<Mutex<Ring>>>,
    order: VecDeque<Key>,
}

#[derive(Default)]
struct Ring {
    last_id: u64,
    events: VecDeque<(u64, Bytes)>,
}

impl Streams {
    fn ring(&self, key: Key) -> Arc<Mutex<Ring>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = inner.rings.get(&key) {
            return r.clone();
        }
        while inner.rings.len() >= MAX_STREAMS {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.rings.remove(&old);
            self.evicted_streams.fetch_add(1, Ordering::Relaxed);
            super::DROPS.resume_streams.fetch_add(1, Ordering::Relaxed);
        }
        let r = Arc::new(Mutex::new(Ring::default()));
        inner.rings.insert(key.clone(), r.clone());
        inner.order.push_back(key);
        r
    }

    fn forget_connection(&self, connection: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.rings.retain(|(c, _), _| c != connection);
        inner.order.retain(|(c, _)| c != connection);
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub async fn layer(State(streams): State<Arc<Streams>>, req: Request, next: Next) -> Response {
    let connection = header(&req, "acp-connection-id").map(str::to_string);
    if req.method() == Method::DELETE {
        let resp = next.run(req).await;
        if resp.status().is_success()
            && let Some(c) = connection
        {
            streams.forget_connection(&c);
        }
        return resp;
    }
    let session = header(&req, "acp-session-id").map(str::to_string);
    let last_seen = header(&req, "last-event-id").and_then(|v| v.trim().parse::<u64>().ok());
    let (Some(connection), Some(session)) = (connection, session) else {
        return next.run(req).await;
    };
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    let resp = next.run(req).await;
    let is_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if !resp.status().is_success() || !is_stream {
        return resp;
    }
    let ring = streams.ring((connection, session));
    let replay: VecDeque<Bytes> = match last_seen {
        Some(n) => ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .iter()
            .filter(|(id, _)| *id > n)
            .map(|(_, e)| e.clone())
            .collect(),
        None => VecDeque::new(),
    };
    let (parts, body) = resp.into_parts();
    let tap = Tap {
        body: body.into_data_stream(),
        buf: Vec::new(),
        out: replay,
        ring,
        streams: streams.clone(),
    };
    let stream = futures::stream::unfold(tap, |mut t| async move {
        loop {
            if let Some(b) = t.out.pop_front() {
                return Some((Ok::<_, axum::Error>(b), t));
            }
            match t.body.next().await {
                Some(Ok(chunk)) => {
                    t.buf.extend_from_slice(&chunk);
                    t.split();
                }
                Some(Err(e)) => return Some((Err(e), t)),
                None => return None,
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

struct Tap {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    out: VecDeque<Bytes>,
    ring: Arc<Mutex<Ring>>,
    streams: Arc<Streams>,
}

impl Tap {
    /// Moves each complete SSE event from the buffer to `out`, numbering those with data.
    fn split(&mut self) {
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let has_data = event
                .split(|b| *b == b'\n')
                .any(|line| line.starts_with(b"data:"));
            if !has_data {
                self.out.push_back(Bytes::from(event));
                continue;
            }
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.last_id += 1;
            let mut framed = format!("id: {}\n", ring.last_id).into_bytes();
            framed.extend_from_slice(&event);
            let framed = Bytes::from(framed);
            let id = ring.last_id;
            ring.events.push_back((id, framed.clone()));
            if ring.events.len() > RING {
                ring.events.pop_front();
                self.streams.evicted_events.fetch_add(1, Ordering::Relaxed);
                super::DROPS.resume_events.fetch_add(1, Ordering::Relaxed);
            }
            self.out.push_back(framed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_with_data_are_numbered_and_kept_keepalives_pass() {
        let streams = Arc::new(Streams::default());
        let ring = streams.ring(("c".into(), "s".into()));
        let mut t = Tap {
            body: Body::empty().into_data_stream(),
            buf: b"data: {\"a\":1}\n\n:\n\ndata: {\"a\"".to_vec(),
            out: VecDeque::new(),
            ring: ring.clone(),
            streams: streams.clone(),
        };
        t.split();
        assert_eq!(t.out.len(), 2);
        assert_eq!(&t.out[0][..], b"id: 1\ndata: {\"a\":1}\n\n");
        assert_eq!(&t.out[1][..], b":\n\n");
        t.buf.extend_from_slice(b":2}\n\n");
        t.split();
        assert_eq!(&t.out[2][..], b"id: 2\ndata: {\"a\":2}\n\n");
        assert_eq!(ring.lock().unwrap().events.len(), 2);
        streams.forget_connection("c");
        assert!(streams.inner.lock().unwrap().rings.is_empty());
    }
}

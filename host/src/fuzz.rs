//! Fuzz targets: one entry point per untrusted input, each running the daemon's own
//! parser on arbitrary bytes and checking what the API promises for it. A target panics only
//! when a promise is broken: that is how both drivers see a failure, libFuzzer (`tests/fuzz`)
//! and the smoke test CI runs (`host/tests/fuzz_smoke.rs`).
//!
//! The expectations are restated from the contract (docs/API.md, docs/PLUGINS.md, W3C trace
//! context) rather than copied from the code under test, so a parser that drifts from the
//! contract fails here.

use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use bytes::Bytes;
use serde_json::Value;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::ApiError;
use crate::telemetry::sanitize::MAX_TEXT;

/// A fuzz target: panics on a broken promise, returns otherwise.
pub type Target = fn(&[u8]);

/// Every target by name: the names of the corpus directories and of the cargo-fuzz binaries.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_body", request_body),
    ("last_event_id", last_event_id),
    ("epoch", epoch),
    ("traceparent", traceparent),
    ("acp_lines", acp_lines),
    ("acp_connection", acp_connection),
    ("plugin_output", plugin_output),
];

/// An error as a client receives it: this status, one of these stable codes, and a JSON
/// envelope whose message is sanitised text.
fn check_error(e: &ApiError, status: u16, codes: &[&str]) {
    assert_eq!(e.status, status, "status of {e}");
    assert!(codes.contains(&e.code), "unexpected code in {e}");
    let resp = e.clone().into_response();
    assert_eq!(resp.status().as_u16(), status);
    let body = futures::executor::block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
        .expect("an error body is in memory");
    let env: Value = serde_json::from_slice(&body).expect("an error body is JSON");
    assert_eq!(env["code"], e.code, "envelope {env}");
    let message = env["error"].as_str().expect("`error` is a string");
    assert!(!message.is_empty(), "empty message in {env}");
    assert!(
        !message.chars().any(char::is_control),
        "control characters reach the client: {message:?}"
    );
    assert!(
        message.len() <= MAX_TEXT + '…'.len_utf8(),
        "unbounded message"
    );
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

// ---------------------------------------------------------------------------------------------
// request_body: the JSON bodies of POST /session, /prompt, /permission (and the ignored ones).

/// The input is a whole request body, decoded as every body type the routes take.
pub fn request_body(data: &[u8]) {
    use crate::http::body::{decode, prompt_blocks};
    use crate::http::routes::{CreateBody, PromptBody, VoteBody};

    // The JSON a body holds, if any: what the API calls a blank body, else the document.
    let json: Option<Value> = if data.iter().all(u8::is_ascii_whitespace) {
        Some(serde_json::json!({}))
    } else {
        serde_json::from_slice(data).ok()
    };
    let typed = |name: &str, r: Result<(), ApiError>, model: fn(&Value) -> bool| match (&json, r) {
        (None, Ok(())) => panic!("{name} accepted a body that is not JSON"),
        (None, Err(e)) => check_error(&e, 400, &["invalid_json"]),
        (Some(v), Ok(())) => assert!(model(v), "{name} accepted the wrong shape: {v}"),
        (Some(v), Err(e)) => {
            check_error(&e, 400, &["invalid_request"]);
            assert!(!model(v), "{name} refused a valid body: {v}: {e}");
        }
    };
    // The bodies the routes ignore (load, cancel) must still be objects.
    typed(
        "an ignored body",
        decode::<serde_json::Map<String, Value>>(data).map(drop),
        Value::is_object,
    );
    typed(
        "CreateBody",
        decode::<CreateBody>(data).map(drop),
        create_shape,
    );
    typed("VoteBody", decode::<VoteBody>(data).map(drop), |v| {
        v.as_object().is_some_and(|o| o.contains_key("outcome"))
    });
    let prompt = decode::<PromptBody>(data);
    let accepted = prompt.is_ok();
    typed("PromptBody", prompt.map(drop), prompt_shape);
    if accepted {
        let Some(Value::Array(blocks)) = json.as_ref().map(|v| v["prompt"].clone()) else {
            unreachable!("prompt_shape checked it")
        };
        let n = blocks.len();
        let shaped: Vec<bool> = blocks.iter().map(block_shape).collect();
        match prompt_blocks(blocks) {
            Ok(out) => {
                assert_eq!(out.len(), n);
                assert!(shaped.iter().all(|ok| *ok), "accepted {shaped:?}");
            }
            Err(e) => {
                check_error(&e, 400, &["invalid_request"]);
                // It names the first block that failed, which is at or before the first one
                // that cannot be a ContentBlock at all.
                let named = (0..n).find(|i| e.message.starts_with(&format!("prompt[{i}] ")));
                let first_bad = shaped.iter().position(|ok| !ok).unwrap_or(n);
                assert!(
                    named.is_some_and(|i| i <= first_bad),
                    "refused {shaped:?} with {e}"
                );
            }
        }
    }
}

fn optional(v: &Value, key: &str, ok: fn(&Value) -> bool) -> bool {
    v.get(key).is_none_or(|x| x.is_null() || ok(x))
}

/// `{cwd?, sessionScope?, sessionId?, _meta?}`: strings and an object, each also `null`.
fn create_shape(v: &Value) -> bool {
    v.is_object()
        && ["cwd", "sessionScope", "sessionId"]
            .iter()
            .all(|k| optional(v, k, Value::is_string))
        && optional(v, "_meta", Value::is_object)
}

/// `{prompt: [...], _meta?}`.
fn prompt_shape(v: &Value) -> bool {
    v.is_object()
        && v.get("prompt").is_some_and(Value::is_array)
        && optional(v, "_meta", Value::is_object)
}

/// What every ACP ContentBlock is: an object tagged with one of ACP v1's content types. (Each
/// type's own fields are the schema crate's business; this is the part a client can get wrong.)
fn block_shape(v: &Value) -> bool {
    v.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| ["text", "image", "audio", "resource_link", "resource"].contains(&t))
        && v.is_object()
}

// ---------------------------------------------------------------------------------------------
// last_event_id / epoch: SSE reconnection headers and the replay they select.

/// OWS around a header value: hyper strips it on the wire, a `HeaderMap` built in code keeps it.
fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// A non-negative decimal integer that fits in u64 (an explicit `+` is tolerated).
fn decimal(b: &[u8]) -> Option<u64> {
    let b = trim_ows(b);
    let digits = b.strip_prefix(b"+").unwrap_or(b);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The input is the raw value of a `Last-Event-ID` header.
pub fn last_event_id(data: &[u8]) {
    use crate::http::sse::parse_last_event_id;
    assert_eq!(parse_last_event_id(&HeaderMap::new()).ok(), Some(None));
    // Bytes no header can carry never reach a handler: hyper refuses them.
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("last-event-id", value);
    let expected = decimal(data);
    match parse_last_event_id(&headers) {
        Ok(got) => assert_eq!(
            got,
            Some(expected.expect("accepted a non-integer")),
            "{data:?}"
        ),
        Err(e) => {
            assert!(expected.is_none(), "refused {expected:?}");
            check_error(&e, 400, &["invalid_last_event_id"]);
        }
    }
}

/// One SSE frame, as a client parses it.
struct Frame {
    id: Option<u64>,
    event: String,
    data: Value,
}

fn frame(b: &Bytes) -> Frame {
    let text = std::str::from_utf8(b).expect("a frame is UTF-8");
    let body = text
        .strip_suffix("\n\n")
        .expect("a frame ends with a blank line");
    let mut lines = body.split('\n').peekable();
    let id = lines
        .next_if(|l| l.starts_with("id: "))
        .map(|l| l[4..].parse::<u64>().expect("a numeric id"));
    let event = lines.next().and_then(|l| l.strip_prefix("event: "));
    let data = lines.next().and_then(|l| l.strip_prefix("data: "));
    assert!(lines.next().is_none(), "one field per line: {text:?}");
    let (Some(event), Some(data)) = (event, data) else {
        panic!("a frame has event: and data: {text:?}")
    };
    let data: Value = serde_json::from_str(data).expect("data is one JSON document");
    assert_eq!(data["v"], 1, "{text:?}");
    assert_eq!(data["type"], event, "{text:?}");
    match id {
        Some(id) => assert_eq!(data["id"], id, "{text:?}"),
        None => assert!(
            data.get("id").is_none(),
            "a synthetic frame has no id: {text:?}"
        ),
    }
    Frame {
        id,
        event: event.to_string(),
        data,
    }
}

/// A session bus with some history, then a reconnect with arbitrary `Last-Event-ID` and
/// `X-Qwen-Event-Epoch` headers. Input: ring size, events published, flags (bit 0: send
/// Last-Event-ID, bit 1: send an epoch, bit 2: send the bus's own epoch, bits 3-4: subscribers
/// already connected), then the Last-Event-ID bytes, a newline, the epoch bytes.
pub fn epoch(data: &[u8]) {
    use crate::bridge::events::{BusLimits, EventBus, Next};
    use crate::http::sse::{event_epoch, parse_last_event_id};

    let mut input = Input(data);
    let ring = 1 + usize::from(input.byte() % 8);
    let published = u64::from(input.byte() % 24);
    let flags = input.byte();
    let held = usize::from((flags >> 3) & 3);
    let (lei, epoch_bytes) = match input.rest().iter().position(|&b| b == b'\n') {
        Some(i) => (&input.0[..i], &input.0[i + 1..]),
        None => (input.0, &b""[..]),
    };
    let bus = EventBus::new(BusLimits {
        ring,
        ring_bytes: usize::MAX,
        journaled_ring_bytes: usize::MAX,
        queue_frames: 64,
        queue_bytes: 1 << 20,
        max_subscribers: 2,
    });
    for i in 0..published {
        assert_eq!(
            bus.publish("x", None, serde_json::json!({ "i": i }), None),
            Some(i + 1)
        );
    }
    let mut headers = HeaderMap::new();
    if flags & 1 != 0 {
        let Ok(v) = HeaderValue::from_bytes(lei) else {
            return;
        };
        headers.insert("last-event-id", v);
    }
    if flags & 4 != 0 {
        headers.insert(
            "x-qwen-event-epoch",
            HeaderValue::from_str(bus.epoch()).expect("a uuid is a header value"),
        );
    } else if flags & 2 != 0 {
        let Ok(v) = HeaderValue::from_bytes(epoch_bytes) else {
            return;
        };
        headers.insert("x-qwen-event-epoch", v);
    }
    let last_event_id = match parse_last_event_id(&headers) {
        Ok(n) => n,
        Err(e) => return check_error(&e, 400, &["invalid_last_event_id"]),
    };
    let _held: Vec<_> = (0..held)
        .map_while(|_| bus.subscribe(None, None).ok())
        .collect();
    let mut sub = match bus.subscribe(last_event_id, event_epoch(&headers).as_deref()) {
        Ok(sub) => {
            assert!(held < 2, "subscribed past the cap");
            sub
        }
        Err(e) => {
            assert!(held >= 2, "refused a subscriber under the cap: {e}");
            return check_error(&e, 429, &["subscriber_limit_exceeded"]);
        }
    };

    let last = published;
    let earliest = published.saturating_sub(ring as u64) + 1;
    let frames: Vec<Frame> = sub.preface.iter().map(frame).collect();
    match last_event_id {
        None => assert!(frames.is_empty(), "replay without Last-Event-ID"),
        Some(n) => {
            let epoch_matches = headers
                .get("x-qwen-event-epoch")
                .is_none_or(|v| v == bus.epoch());
            let reason = if !epoch_matches || n > last {
                Some("epoch_reset")
            } else if n + 1 < earliest {
                Some("ring_evicted")
            } else {
                None
            };
            let mut rest = &frames[..];
            if let Some(reason) = reason {
                let [resync, tail @ ..] = rest else {
                    panic!("no frames")
                };
                assert_eq!(resync.event, "state_resync_required");
                assert_eq!(resync.data["data"]["reason"], reason);
                assert_eq!(resync.data["data"]["lastDeliveredId"], n);
                assert_eq!(resync.data["data"]["earliestAvailableId"], earliest);
                rest = tail;
            }
            let [replayed @ .., done] = rest else {
                panic!("no replay_complete")
            };
            assert_eq!(done.event, "replay_complete");
            assert!(done.id.is_none());
            // After a resync everything retained is replayed; otherwise exactly what follows n.
            let from = if reason.is_some() { earliest } else { n + 1 };
            let ids: Vec<u64> = replayed
                .iter()
                .map(|f| f.id.expect("a replayed id"))
                .collect();
            assert_eq!(ids, (from..=last).collect::<Vec<_>>(), "replay after {n:?}");
            let d = &done.data["data"];
            assert_eq!(d["replayedCount"], ids.len());
            assert_eq!(
                d.get("lastReplayedEventId"),
                ids.last().map(|i| Value::from(*i)).as_ref()
            );
            assert_eq!(
                d.get("lastEventId"),
                (last > 0).then(|| Value::from(last)).as_ref()
            );
        }
    }
    // The live queue starts right after the replay: no overlap, no gap.
    assert_eq!(bus.publish("y", None, Value::Null, None), Some(last + 1));
    use futures::FutureExt as _;
    match sub.next().now_or_never() {
        Some(Next::Frame(f)) => assert_eq!(frame(&f).id, Some(last + 1)),
        _ => panic!("the next event is queued live"),
    }
}

// ---------------------------------------------------------------------------------------------
// traceparent: inbound W3C trace context.

/// W3C Trace Context level 1, `traceparent` as a receiver must parse it: version 2 lower-hex
/// (not `ff`), trace id 32 and parent id 16 lower-hex (neither all zero), flags 2 lower-hex; a
/// version-00 header is exactly that long, a later version may continue after a `-`. Whatever
/// follows must still be header text (visible ASCII): bytes beyond it are not a traceparent.
fn w3c_traceparent(b: &[u8]) -> bool {
    let b = trim_ows(b);
    if !b.iter().all(|c| matches!(c, b' '..=b'~' | b'\t')) {
        return false;
    }
    let hex = |r: &[u8]| r.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |r: &[u8]| r.iter().any(|&c| c != b'0');
    b.len() >= 55
        && hex(&b[0..2])
        && &b[0..2] != b"ff"
        && b[2] == b'-'
        && hex(&b[3..35])
        && nonzero(&b[3..35])
        && b[35] == b'-'
        && hex(&b[36..52])
        && nonzero(&b[36..52])
        && b[52] == b'-'
        && hex(&b[53..55])
        && (b.len() == 55 || (&b[0..2] != b"00" && b[55] == b'-'))
}

/// Input: a flags byte (bit 0: send `traceparent`, bit 1: `tracestate`, bit 2: `baggage`),
/// then the three header values separated by newlines.
pub fn traceparent(data: &[u8]) {
    use crate::telemetry::propagation::{extract_headers, fields};
    use opentelemetry::trace::{TraceContextExt as _, TraceState};
    use std::str::FromStr as _;

    let mut input = Input(data);
    let flags = input.byte();
    let mut parts = input.rest().split(|&b| b == b'\n');
    let mut headers = HeaderMap::new();
    let mut traceparent = None;
    for (bit, name) in [(1, "traceparent"), (2, "tracestate"), (4, "baggage")] {
        let part = parts.next().unwrap_or_default();
        if flags & bit == 0 {
            continue;
        }
        let Ok(v) = HeaderValue::from_bytes(part) else {
            return;
        };
        headers.insert(name, v);
        if bit == 1 {
            traceparent = Some(part);
        }
    }
    let result = extract_headers(&headers);
    let Some(tp) = traceparent else {
        let cx = result.expect("no traceparent is no error");
        assert!(!cx.span().span_context().is_valid(), "a trace from nowhere");
        assert!(!fields(&cx).contains_key("traceparent"));
        return;
    };
    let valid = w3c_traceparent(tp);
    let cx = match result {
        Ok(cx) => cx,
        Err(why) => {
            assert!(!valid, "refused a valid traceparent: {why}");
            assert!(!why.chars().any(|c| c.is_control() && c != '\t'), "{why:?}");
            return;
        }
    };
    assert!(
        valid,
        "accepted an invalid traceparent {:?}",
        String::from_utf8_lossy(tp)
    );
    let tp = trim_ows(tp);
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid() && sc.is_remote());
    assert_eq!(sc.trace_id().to_string().as_bytes(), &tp[3..35]);
    assert_eq!(sc.span_id().to_string().as_bytes(), &tp[36..52]);
    let flags = u8::from_str_radix(std::str::from_utf8(&tp[53..55]).unwrap(), 16).unwrap();
    assert_eq!(sc.is_sampled(), flags & 1 == 1);

    // What the daemon forwards (ACP `_meta`, child env) is header text, and the trace context
    // in it is stable: fed back in, it reproduces itself. (Baggage is not: OTel's propagator
    // writes decoded values back without escaping `%`, `,` or `;`, which a receiver then reads
    // differently; the daemon's contract covers traceparent and tracestate only.)
    let out = fields(&cx);
    let expected_tp = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), flags & 1);
    assert_eq!(out.get("traceparent"), Some(&expected_tp));
    if let Some(ts) = out.get("tracestate") {
        assert!(
            TraceState::from_str(ts).is_ok(),
            "forwarded tracestate {ts:?}"
        );
    }
    let mut again = HeaderMap::new();
    for (k, v) in &out {
        let name = axum::http::HeaderName::from_bytes(k.as_bytes()).expect("a header name");
        let value = HeaderValue::from_str(v).expect("a forwarded field is a header value");
        again.insert(name, value);
    }
    let cx2 = extract_headers(&again).expect("the daemon's own traceparent is valid");
    let trace_fields = |f: std::collections::HashMap<String, String>| {
        let mut f: Vec<(String, String)> = f.into_iter().filter(|(k, _)| k != "baggage").collect();
        f.sort();
        f
    };
    assert_eq!(
        trace_fields(fields(&cx2)),
        trace_fields(out),
        "forwarding is not stable"
    );
}

// ---------------------------------------------------------------------------------------------
// acp_lines / acp_connection: what an agent writes on stdout.

/// What the bounded reader must yield for `input`: each `\n`-terminated line (and a final
/// unterminated one) without its `\r`, until a line over `max` bytes or one that is not UTF-8
/// ends the stream with an error.
fn expected_lines(input: &[u8], max: usize) -> Vec<Result<String, &'static str>> {
    let mut out = Vec::new();
    let mut segments: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if segments.last().is_some_and(|s| s.is_empty()) {
        segments.pop(); // a trailing newline ends the last line, it does not start one
    }
    for seg in segments {
        if seg.len() > max {
            out.push(Err("longer than"));
            break;
        }
        let seg = seg.strip_suffix(b"\r").unwrap_or(seg);
        match std::str::from_utf8(seg) {
            Ok(s) => out.push(Ok(s.to_string())),
            Err(_) => {
                out.push(Err("invalid UTF-8"));
                break;
            }
        }
    }
    out
}

fn matches_expected(got: &[io::Result<String>], want: &[Result<String, &'static str>]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        match (g, w) {
            (Ok(g), Ok(w)) => assert_eq!(g, w),
            (Err(e), Err(w)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                assert!(e.to_string().contains(w), "{e} is not {w}");
            }
            _ => panic!("{g:?} is not {w:?}"),
        }
    }
}

/// Input: the line bound, a read-buffer size, then the agent's stdout.
pub fn acp_lines(data: &[u8]) {
    use crate::acp::lines::{incoming, read_line};
    use futures::StreamExt as _;

    let mut input = Input(data);
    let max = 1 + usize::from(input.byte() % 64);
    let capacity = 1 + usize::from(input.byte() % 16);
    let stdout = input.rest().to_vec();
    let want = expected_lines(&stdout, max);
    current_thread().block_on(async {
        // The reader itself, refilling a small buffer at every possible split...
        let mut r = tokio::io::BufReader::with_capacity(capacity, &stdout[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let next = read_line(&mut r, &mut buf, max).await;
            assert!(
                buf.len() <= max,
                "held {} bytes over a {max}-byte bound",
                buf.len()
            );
            match next {
                Ok(Some(line)) => got.push(Ok(line)),
                Ok(None) => break,
                Err(e) => {
                    got.push(Err(e));
                    break;
                }
            }
        }
        matches_expected(&got, &want);
        // ...and the stream the connection reads, which must stop at the first error.
        let got: Vec<io::Result<String>> = incoming(io::Cursor::new(stdout.clone()), max)
            .collect()
            .await;
        matches_expected(&got, &want);
    });
}

/// The agent's side of stdin: everything the daemon writes to the agent.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for Written {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The longest agent line in `acp_connection` (the daemon's default is 64 MiB; a small one lets
/// the fuzzer reach the over-long case).
const CONNECTION_MAX_LINE: usize = 1024;

/// The daemon's real ACP client connection, with no sessions routed, reading the input as the
/// agent's stdout followed by EOF. The connection must end (no hang) and everything it writes
/// back must be a JSON-RPC response, at most one per line the agent wrote.
pub fn acp_connection(data: &[u8]) {
    use crate::acp::{Routes, lines, serve};

    let written = Written::default();
    let routes = Arc::new(Routes::default());
    let (transport, _outbox) = lines::transport(
        written.clone(),
        io::Cursor::new(data.to_vec()),
        CONNECTION_MAX_LINE,
        routes.clone(),
    );
    let (ready, _) = tokio::sync::oneshot::channel();
    // Never a real directory: no route exists, so no file request may touch it anyway.
    let root = std::path::PathBuf::from("/nonexistent/acpd-fuzz");
    let done = current_thread().block_on(async {
        let connection = serve(transport, routes, root, ready);
        tokio::time::timeout(Duration::from_secs(2), connection).await
    });
    assert!(done.is_ok(), "the connection did not end within 2 s of EOF");
    let out = written.0.lock().unwrap().clone();
    let text = std::str::from_utf8(&out).expect("the daemon writes UTF-8");
    let answers: Vec<&str> = text.split_terminator('\n').collect();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a partial line: {text:?}"
    );
    let agent_lines = data.split(|&b| b == b'\n').count();
    assert!(
        answers.len() <= agent_lines,
        "{} answers to {agent_lines} lines",
        answers.len()
    );
    for line in answers {
        let v: Value = serde_json::from_str(line).expect("each line is JSON");
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        assert!(v.get("id").is_some(), "a response has an id: {line}");
        match (v.get("result"), v.get("error")) {
            (Some(_), None) => {}
            (None, Some(e)) => {
                assert!(e["code"].is_i64() && e["message"].is_string(), "{line}");
            }
            _ => panic!("a response has result xor error: {line}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// plugin_output: edits a WASM plugin returns, validated before anything is applied.

/// Reads the fuzzer's bytes as a stream; past the end every byte is 0.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0 {
            [b, rest @ ..] => {
                self.0 = rest;
                *b
            }
            [] => 0,
        }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn rest(&self) -> &'a [u8] {
        self.0
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn attr_value(input: &mut Input<'_>) -> crate::plugins::bindings::acpd::plugin::types::AttrValue {
    use crate::plugins::bindings::acpd::plugin::types::AttrValue;
    match input.byte() % 4 {
        0 => AttrValue::Int(i64::from(input.byte())),
        1 => AttrValue::Boolean(input.byte() & 1 == 1),
        2 => AttrValue::Double(f64::from(input.byte())),
        _ => {
            let n = usize::from(input.byte());
            let mut s = String::from_utf8_lossy(input.take(n)).into_owned();
            let pad = usize::from(u16::from_le_bytes([input.byte(), input.byte()]) % 9000);
            s.push_str(&"x".repeat(pad));
            AttrValue::Str(s)
        }
    }
}

/// Keys a plugin may not set, in the fuzz model (the hooks protect more; the rule is the same).
fn fuzz_protected(k: &str) -> bool {
    k.starts_with("session.")
}

/// Input: attribute count and value lengths, record count, then edits: an op byte, an index
/// (one byte, or four when the op says so), for upserts a key (length byte + bytes), and a value
/// (a tag, then bytes and a padding length for strings).
pub fn plugin_output(data: &[u8]) {
    use crate::plugins::bindings::acpd::plugin::types::{AttrEdit, AttrValue, ValueRef};
    use crate::plugins::pack::{
        MAX_KEY_BYTES, MAX_NEW_KEYS_PER_RECORD, MAX_VALUE_BYTES, Pack, packed_len, validate,
    };

    let mut input = Input(data);
    let n_attrs = usize::from(input.byte() % 6);
    let mut pack = Pack::default();
    let mut lens = Vec::new();
    for i in 0..n_attrs {
        let len = usize::from(input.byte()) * 32;
        let v = ValueRef::Str(pack.str(&"v".repeat(len)));
        pack.push(0, &format!("k{i}"), v);
        lens.push(len);
    }
    let records = 1 + usize::from(input.byte() % 4);
    let mut edits = Vec::new();
    while !input.is_empty() && edits.len() < 300 {
        let op = input.byte();
        let index = if op & 0x80 != 0 {
            u32::from_le_bytes([input.byte(), input.byte(), input.byte(), input.byte()])
        } else {
            u32::from(input.byte() % 8)
        };
        edits.push(match op % 3 {
            0 => AttrEdit::Replace((index, attr_value(&mut input))),
            1 => AttrEdit::Remove(index),
            _ => {
                let n = usize::from(input.byte());
                let key = String::from_utf8_lossy(input.take(n)).into_owned();
                AttrEdit::Upsert((index % 8, key, attr_value(&mut input)))
            }
        });
    }

    let result = validate(&edits, &pack.attrs, records, fuzz_protected, |i| {
        packed_len(&pack.attrs, i)
    });

    // The rules of PLUGINS.md, restated.
    let value_len = |v: &AttrValue| match v {
        AttrValue::Str(s) => s.len(),
        _ => 8,
    };
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= MAX_KEY_BYTES
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
            && !fuzz_protected(k)
    };
    let mut seen = std::collections::HashSet::new();
    let mut new_keys = vec![0usize; records];
    let model_ok = edits.iter().all(|e| match e {
        AttrEdit::Replace((i, v)) => {
            let i = *i as usize;
            i < n_attrs && seen.insert(i) && value_len(v) <= MAX_VALUE_BYTES.max(lens[i])
        }
        AttrEdit::Remove(i) => (*i as usize) < n_attrs && seen.insert(*i as usize),
        AttrEdit::Upsert((r, k, v)) => {
            let r = *r as usize;
            r < records && key_ok(k) && value_len(v) <= MAX_VALUE_BYTES && {
                new_keys[r] += 1;
                new_keys[r] <= MAX_NEW_KEYS_PER_RECORD
            }
        }
    });
    match result {
        Ok(()) => assert!(model_ok, "accepted edits that break a bound: {edits:?}"),
        Err(why) => {
            assert!(!model_ok, "refused edits within every bound: {why}");
            assert!(!why.is_empty() && why.len() <= 512, "reason {why:?}");
        }
    }
}

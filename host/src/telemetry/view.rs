//! The embedded trace view: a bounded in-memory store of recent traces (the daemon's own spans
//! and those its agent children send over OTLP) and their JSON shapes, which the page at
//! `GET /debug/traces` (`host/assets/traces.html`, see `crate::console`) lists and draws as a
//! waterfall.
//!
//! JSON served by the daemon:
//! - list (`/debug/traces.json`): `{traces: [{traceId, rootName, rootService, startUnixNanos,
//!   durationMs, spanCount, errorCount, services}], dropped: {spans, traces}}`, newest first;
//! - one trace (`/debug/traces.json?traceId=<id>`): `{traceId, spans: [ViewSpan...]}` by start.

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
use serde::Serialize;
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// One span as the view shows it: ids in lowercase hex, times in Unix nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `server`, `client`, `internal`, `producer` or `consumer`.
    pub kind: String,
    pub service: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// `unset`, `ok` or `error`.
    pub status: String,
    pub status_message: String,
    pub attributes: Vec<(String, Json)>,
    pub events: Vec<ViewEvent>,
    pub links: Vec<ViewLink>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewEvent {
    pub name: String,
    pub time_unix_nanos: u64,
    pub attributes: Vec<(String, Json)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewLink {
    pub trace_id: String,
    pub span_id: String,
}

impl ViewSpan {
    /// A span the daemon itself recorded; `service` is its resource's `service.name`.
    pub fn from_sdk(span: &opentelemetry_sdk::trace::SpanData, service: &str) -> ViewSpan {
        let parent = span.parent_span_id;
        let (status, status_message) = match &span.status {
            Status::Unset => ("unset", String::new()),
            Status::Ok => ("ok", String::new()),
            Status::Error { description } => ("error", description.to_string()),
        };
        ViewSpan {
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: (parent != opentelemetry::trace::SpanId::INVALID)
                .then(|| parent.to_string()),
            name: span.name.to_string(),
            kind: match span.span_kind {
                SpanKind::Server => "server",
                SpanKind::Client => "client",
                SpanKind::Producer => "producer",
                SpanKind::Consumer => "consumer",
                SpanKind::Internal => "internal",
            }
            .into(),
            service: service.into(),
            start_unix_nanos: unix_nanos(span.start_time),
            end_unix_nanos: unix_nanos(span.end_time),
            status: status.into(),
            status_message,
            attributes: sdk_attributes(&span.attributes),
            events: span
                .events
                .iter()
                .map(|e| ViewEvent {
                    name: e.name.to_string(),
                    time_unix_nanos: unix_nanos(e.timestamp),
                    attributes: sdk_attributes(&e.attributes),
                })
                .collect(),
            links: span
                .links
                .iter()
                .map(|l| ViewLink {
                    trace_id: l.span_context.trace_id().to_string(),
                    span_id: l.span_context.span_id().to_string(),
                })
                .collect(),
        }
    }
}

/// Spans received over OTLP (from the agent children). The service is each resource's
/// `service.name` (`unknown_service` without one); spans without a valid trace id are skipped.
pub fn from_proto(req: &ExportTraceServiceRequest) -> Vec<ViewSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                },
            )
            .unwrap_or_else(|| "unknown_service".into());
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            if !valid_id(&span.trace_id) {
                continue;
            }
            let (status, status_message) = match &span.status {
                Some(s) if s.code == 2 => ("error", s.message.clone()),
                Some(s) if s.code == 1 => ("ok", s.message.clone()),
                Some(s) => ("unset", s.message.clone()),
                None => ("unset", String::new()),
            };
            out.push(ViewSpan {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: valid_id(&span.parent_span_id).then(|| hex(&span.parent_span_id)),
                name: span.name.clone(),
                kind: match span.kind {
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "internal",
                }
                .into(),
                service: service.clone(),
                start_unix_nanos: span.start_time_unix_nano,
                end_unix_nanos: span.end_time_unix_nano,
                status: status.into(),
                status_message,
                attributes: proto_attributes(&span.attributes),
                events: span
                    .events
                    .iter()
                    .map(|e| ViewEvent {
                        name: e.name.clone(),
                        time_unix_nanos: e.time_unix_nano,
                        attributes: proto_attributes(&e.attributes),
                    })
                    .collect(),
                links: span
                    .links
                    .iter()
                    .map(|l| ViewLink {
                        trace_id: hex(&l.trace_id),
                        span_id: hex(&l.span_id),
                    })
                    .collect(),
            });
        }
    }
    out
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn valid_id(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| *b != 0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON has no NaN/infinity: those become their string form.
fn float(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or_else(|| Json::String(f.to_string()), Json::Number)
}

fn sdk_value(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::I64(i) => json!(i),
        Value::F64(f) => float(*f),
        Value::String(s) => Json::String(s.as_str().to_owned()),
        Value::Array(Array::Bool(a)) => json!(a),
        Value::Array(Array::I64(a)) => json!(a),
        Value::Array(Array::F64(a)) => Json::Array(a.iter().map(|f| float(*f)).collect()),
        Value::Array(Array::String(a)) => a
            .iter()
            .map(|s| Json::String(s.as_str().to_owned()))
            .collect(),
        other => Json::String(other.to_string()),
    }
}

fn sdk_attributes(kvs: &[KeyValue]) -> Vec<(String, Json)> {
    kvs.iter()
        .map(|kv| (kv.key.as_str().to_owned(), sdk_value(&kv.value)))
        .collect()
}

fn proto_value(v: Option<&AnyValue>) -> Json {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Json::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Json::Bool(*b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(f)) => float(*f),
        Some(any_value::Value::ArrayValue(a)) => {
            a.values.iter().map(|v| proto_value(Some(v))).collect()
        }
        Some(any_value::Value::KvlistValue(kvs)) => Json::Object(
            kvs.values
                .iter()
                .map(|kv| (kv.key.clone(), proto_value(kv.value.as_ref())))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Json::String(hex(b)),
        Some(any_value::Value::StringValueStrindex(_)) | None => Json::Null,
    }
}

fn proto_attributes(kvs: &[ProtoKeyValue]) -> Vec<(String, Json)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), proto_value(kv.value.as_ref())))
        .collect()
}

/// Recent traces, bounded twice: at most `max_traces` traces (the one with the oldest activity
/// is evicted first) of at most `max_spans_per_trace` spans each (later spans are dropped).
/// Spans of one trace may arrive in any number of batches, from any number of services; a span
/// id already present in its trace is ignored.
pub struct TraceRing {
    max_traces: usize,
    max_spans: usize,
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    traces: HashMap<String, Entry>,
    /// Activity tick -> trace id; the first entry is the least recently active trace.
    by_activity: BTreeMap<u64, String>,
    tick: u64,
    dropped_spans: u64,
    evicted_traces: u64,
}

struct Entry {
    spans: Vec<ViewSpan>,
    ids: HashSet<String>,
    activity: u64,
    start: u64,
    end: u64,
    errors: usize,
    /// Index of the earliest span without a parent, if any.
    root: Option<usize>,
}

impl TraceRing {
    pub fn new(max_traces: usize, max_spans_per_trace: usize) -> Self {
        Self {
            max_traces: max_traces.max(1),
            max_spans: max_spans_per_trace.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, spans: impl IntoIterator<Item = ViewSpan>) {
        // Converting (the caller's iterator may be lazy) happens before taking the lock.
        let spans: Vec<ViewSpan> = spans.into_iter().collect();
        let mut guard = self.lock();
        let ring = &mut *guard;
        for span in spans {
            ring.tick += 1;
            let tick = ring.tick;
            let entry = ring
                .traces
                .entry(span.trace_id.clone())
                .or_insert_with(|| Entry {
                    spans: Vec::new(),
                    ids: HashSet::new(),
                    activity: 0,
                    start: u64::MAX,
                    end: 0,
                    errors: 0,
                    root: None,
                });
            ring.by_activity.remove(&entry.activity);
            entry.activity = tick;
            ring.by_activity.insert(tick, span.trace_id.clone());
            if entry.ids.contains(&span.span_id) {
                continue;
            }
            if entry.spans.len() >= self.max_spans {
                ring.dropped_spans += 1;
                continue;
            }
            entry.start = entry.start.min(span.start_unix_nanos);
            entry.end = entry
                .end
                .max(span.end_unix_nanos.max(span.start_unix_nanos));
            if span.status == "error" {
                entry.errors += 1;
            }
            if span.parent_span_id.is_none()
                && entry
                    .root
                    .is_none_or(|r| span.start_unix_nanos < entry.spans[r].start_unix_nanos)
            {
                entry.root = Some(entry.spans.len());
            }
            entry.ids.insert(span.span_id.clone());
            entry.spans.push(span);
        }
        while ring.traces.len() > self.max_traces {
            let Some((_, id)) = ring.by_activity.pop_first() else {
                break;
            };
            ring.traces.remove(&id);
            ring.evicted_traces += 1;
        }
    }

    /// `(spans dropped over the per-trace cap, traces evicted)` since start.
    pub fn dropped(&self) -> (u64, u64) {
        let ring = self.lock();
        (ring.dropped_spans, ring.evicted_traces)
    }

    /// Summaries of up to `limit` traces, the most recently started first.
    pub fn list_json(&self, limit: usize) -> Json {
        let ring = self.lock();
        let mut entries: Vec<(&String, &Entry)> = ring.traces.iter().collect();
        entries.sort_by(|a, b| {
            b.1.start
                .cmp(&a.1.start)
                .then(b.1.activity.cmp(&a.1.activity))
        });
        let traces: Vec<Json> = entries
            .into_iter()
            .take(limit)
            .map(|(id, e)| summary(id, e))
            .collect();
        json!({
            "traces": traces,
            "dropped": {"spans": ring.dropped_spans, "traces": ring.evicted_traces},
        })
    }

    /// One trace with all its spans, by start time; None when it is not (or no longer) held.
    pub fn trace_json(&self, trace_id: &str) -> Option<Json> {
        let id = trace_id.trim().to_ascii_lowercase();
        let ring = self.lock();
        let entry = ring.traces.get(&id)?;
        let mut spans: Vec<&ViewSpan> = entry.spans.iter().collect();
        spans.sort_by_key(|s| s.start_unix_nanos);
        Some(json!({"traceId": id, "spans": spans}))
    }
}

fn summary(id: &str, e: &Entry) -> Json {
    // The root: the earliest span without a parent, else the earliest whose parent is not here
    // (e.g. a server span continuing a client's trace).
    let root = e.root.map(|i| &e.spans[i]).or_else(|| {
        e.spans
            .iter()
            .filter(|s| s.parent_span_id.as_ref().is_none_or(|p| !e.ids.contains(p)))
            .min_by_key(|s| s.start_unix_nanos)
    });
    let mut services: Vec<&str> = Vec::new();
    if let Some(r) = root {
        services.push(&r.service);
    }
    for s in &e.spans {
        if !services.contains(&s.service.as_str()) {
            services.push(&s.service);
        }
    }
    let (start, end) = if e.spans.is_empty() {
        (0, 0)
    } else {
        (e.start, e.end)
    };
    json!({
        "traceId": id,
        "rootName": root.map_or("", |r| r.name.as_str()),
        "rootService": root.map_or("", |r| r.service.as_str()),
        "startUnixNanos": start,
        "durationMs": end.saturating_sub(start) as f64 / 1e6,
        "spanCount": e.spans.len(),
        "errorCount": e.errors,
        "services": services,
    })
}

/// The trace view's page (`host/assets/traces.html` with `traces.js`, styled like the console).
/// It reads `<its own path>.json` (normally `/debug/traces.json`), sending
/// `Authorization: Bearer <t>` with the token the console signed in with (or given as
/// `?token=<t>`); `#<traceId>` opens that trace.
pub fn page() -> &'static str {
    crate::console::page("traces.html")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span, status};
    use std::time::Duration;

    const T1: &str = "0af7651916cd43dd8448eb211c80319c";
    const T2: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn span(
        trace: &str,
        id: &str,
        parent: Option<&str>,
        service: &str,
        start: u64,
        end: u64,
    ) -> ViewSpan {
        ViewSpan {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.map(String::from),
            name: format!("op {id}"),
            kind: "internal".into(),
            service: service.into(),
            start_unix_nanos: start,
            end_unix_nanos: end,
            status: "unset".into(),
            status_message: String::new(),
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    fn trace_id(n: u32) -> String {
        format!("{n:032x}")
    }

    fn listed_ids(ring: &TraceRing) -> Vec<String> {
        ring.list_json(100)["traces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["traceId"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn evicts_the_least_recently_active_trace_and_counts_it() {
        let ring = TraceRing::new(2, 10);
        ring.push([span(&trace_id(1), "a1", None, "acpd", 100, 200)]);
        ring.push([span(&trace_id(2), "b1", None, "acpd", 300, 400)]);
        // Trace 1 gets a late span: trace 2 is now the least recently active.
        ring.push([span(&trace_id(1), "a2", Some("a1"), "agent", 150, 180)]);
        ring.push([span(&trace_id(3), "c1", None, "acpd", 500, 600)]);
        assert_eq!(listed_ids(&ring), vec![trace_id(3), trace_id(1)]);
        assert!(ring.trace_json(&trace_id(2)).is_none());
        assert_eq!(
            ring.trace_json(&trace_id(1)).unwrap()["spans"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(ring.dropped(), (0, 1));
    }

    #[test]
    fn drops_spans_over_the_per_trace_cap_and_ignores_duplicates() {
        let ring = TraceRing::new(10, 3);
        let t = trace_id(7);
        ring.push((0..5).map(|i| span(&t, &format!("s{i}"), None, "acpd", i, i + 1)));
        assert_eq!(ring.dropped(), (2, 0));
        // A re-sent span is neither stored twice nor counted as dropped.
        ring.push([span(&t, "s0", None, "acpd", 0, 1)]);
        assert_eq!(ring.dropped(), (2, 0));
        let list = ring.list_json(10);
        assert_eq!(list["traces"][0]["spanCount"], 3);
        assert_eq!(list["dropped"], json!({"spans": 2, "traces": 0}));
    }

    #[test]
    fn assembles_one_trace_from_batches_of_several_services() {
        let ring = TraceRing::new(10, 100);
        let mut client = span(T1, "c", Some("r"), "acpd", 2_000_000, 9_000_000);
        client.name = "acp session/prompt".into();
        let mut tool = span(T1, "t", Some("i"), "qwen-code", 4_000_000, 5_000_000);
        tool.status = "error".into();
        // The agent's spans arrive first, with their parent in the daemon's later batch.
        ring.push([
            span(T1, "i", Some("c"), "qwen-code", 3_000_000, 8_000_000),
            tool,
        ]);
        let mut root = span(
            T1,
            "r",
            Some("ffffffffffffffff"),
            "acpd",
            1_000_000,
            11_000_000,
        );
        root.name = "POST /session/{id}/prompt".into();
        root.kind = "server".into();
        ring.push([client, root]);
        ring.push([span(T2, "x", None, "acpd", 20_000_000, 21_000_000)]);

        let list = ring.list_json(10);
        let traces = list["traces"].as_array().unwrap();
        assert_eq!(traces.len(), 2);
        assert_eq!(traces[0]["traceId"], T2, "newest first");
        assert_eq!(
            traces[1],
            json!({
                "traceId": T1,
                // The server span continues a remote parent: it is still the root.
                "rootName": "POST /session/{id}/prompt",
                "rootService": "acpd",
                "startUnixNanos": 1_000_000,
                "durationMs": 10.0,
                "spanCount": 4,
                "errorCount": 1,
                "services": ["acpd", "qwen-code"],
            })
        );
        assert_eq!(ring.list_json(1)["traces"].as_array().unwrap().len(), 1);

        let trace = ring.trace_json(&T1.to_uppercase()).unwrap();
        assert_eq!(trace["traceId"], T1);
        let order: Vec<&str> = trace["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["spanId"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["r", "c", "i", "t"]);
        assert!(
            ring.trace_json("00000000000000000000000000000001")
                .is_none()
        );
    }

    #[test]
    fn view_span_json_shape() {
        let mut s = span(T1, "00f067aa0ba902b7", None, "acpd", 1, 2);
        s.attributes = vec![("http.response.status_code".into(), json!(500))];
        s.events = vec![ViewEvent {
            name: "child.exit".into(),
            time_unix_nanos: 2,
            attributes: vec![],
        }];
        s.links = vec![ViewLink {
            trace_id: T2.into(),
            span_id: "b7ad6b7169203331".into(),
        }];
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({
                "traceId": T1, "spanId": "00f067aa0ba902b7", "parentSpanId": null, "name": "op 00f067aa0ba902b7",
                "kind": "internal", "service": "acpd", "startUnixNanos": 1, "endUnixNanos": 2,
                "status": "unset", "statusMessage": "",
                "attributes": [["http.response.status_code", 500]],
                "events": [{"name": "child.exit", "timeUnixNanos": 2, "attributes": []}],
                "links": [{"traceId": T2, "spanId": "b7ad6b7169203331"}],
            })
        );
    }

    #[test]
    fn converts_sdk_span_data() {
        let ctx = |t: &str, s: &str| {
            SpanContext::new(
                TraceId::from_hex(t).unwrap(),
                SpanId::from_hex(s).unwrap(),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            )
        };
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut events = opentelemetry_sdk::trace::SpanEvents::default();
        events.events.push(Event::new(
            "child.exit",
            start + Duration::from_millis(5),
            vec![KeyValue::new("process.exit.code", 137)],
            0,
        ));
        let mut links = opentelemetry_sdk::trace::SpanLinks::default();
        links
            .links
            .push(Link::with_context(ctx(T2, "b7ad6b7169203331")));
        let data = opentelemetry_sdk::trace::SpanData {
            span_context: ctx(T1, "00f067aa0ba902b7"),
            parent_span_id: SpanId::from_hex("53995c3f42cd8ad8").unwrap(),
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: "acp session/prompt".into(),
            start_time: start,
            end_time: start + Duration::from_millis(10),
            attributes: vec![
                KeyValue::new("rpc.method", "session/prompt"),
                KeyValue::new("acpd.prompt.queue_wait_ms", 12),
                KeyValue::new("ratio", 0.5),
                KeyValue::new("nan", f64::NAN),
                KeyValue::new("ok", true),
                KeyValue::new(
                    "args",
                    Value::Array(Array::String(vec!["a".into(), "b".into()])),
                ),
                KeyValue::new("codes", Value::Array(Array::I64(vec![1, 2]))),
            ],
            dropped_attributes_count: 0,
            events,
            links,
            status: Status::error("agent crashed"),
            instrumentation_scope: Default::default(),
        };
        let v = ViewSpan::from_sdk(&data, "acpd");
        assert_eq!(v.trace_id, T1);
        assert_eq!(v.span_id, "00f067aa0ba902b7");
        assert_eq!(v.parent_span_id.as_deref(), Some("53995c3f42cd8ad8"));
        assert_eq!(
            (v.kind.as_str(), v.service.as_str(), v.name.as_str()),
            ("client", "acpd", "acp session/prompt")
        );
        assert_eq!(v.start_unix_nanos, 1_700_000_000_123_456_789);
        assert_eq!(v.end_unix_nanos, 1_700_000_000_133_456_789);
        assert_eq!(
            (v.status.as_str(), v.status_message.as_str()),
            ("error", "agent crashed")
        );
        assert_eq!(
            v.attributes,
            vec![
                ("rpc.method".into(), json!("session/prompt")),
                ("acpd.prompt.queue_wait_ms".into(), json!(12)),
                ("ratio".into(), json!(0.5)),
                ("nan".into(), json!("NaN")),
                ("ok".into(), json!(true)),
                ("args".into(), json!(["a", "b"])),
                ("codes".into(), json!([1, 2])),
            ]
        );
        assert_eq!(
            v.events,
            vec![ViewEvent {
                name: "child.exit".into(),
                time_unix_nanos: 1_700_000_000_128_456_789,
                attributes: vec![("process.exit.code".into(), json!(137))],
            }]
        );
        assert_eq!(
            v.links,
            vec![ViewLink {
                trace_id: T2.into(),
                span_id: "b7ad6b7169203331".into()
            }]
        );

        // A root span: no parent; unset status.
        let mut root = data.clone();
        root.parent_span_id = SpanId::INVALID;
        root.status = Status::Unset;
        root.span_kind = SpanKind::Server;
        let v = ViewSpan::from_sdk(&root, "acpd");
        assert_eq!(
            (v.parent_span_id, v.status.as_str(), v.kind.as_str()),
            (None, "unset", "server")
        );
    }

    fn pkv(key: &str, v: any_value::Value) -> ProtoKeyValue {
        ProtoKeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn converts_otlp_proto_requests() {
        use any_value::Value as V;
        let resource = |name: Option<&str>| Resource {
            attributes: name
                .map(|n| pkv("service.name", V::StringValue(n.into())))
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let tool = Span {
            trace_id: unhex(T1),
            span_id: unhex("00f067aa0ba902b7"),
            parent_span_id: unhex("53995c3f42cd8ad8"),
            name: "qwen-code.tool".into(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 3_000,
            attributes: vec![
                pkv("tool.name", V::StringValue("read_file".into())),
                pkv("tokens", V::IntValue(42)),
                pkv("score", V::DoubleValue(0.25)),
                pkv("ok", V::BoolValue(false)),
                pkv(
                    "list",
                    V::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(V::IntValue(1)),
                            },
                            AnyValue {
                                value: Some(V::StringValue("x".into())),
                            },
                        ],
                    }),
                ),
                pkv(
                    "map",
                    V::KvlistValue(KeyValueList {
                        values: vec![pkv("k", V::StringValue("v".into()))],
                    }),
                ),
                pkv("raw", V::BytesValue(vec![0xde, 0xad])),
            ],
            events: vec![span::Event {
                time_unix_nano: 2_000,
                name: "retry".into(),
                attributes: vec![pkv("attempt", V::IntValue(2))],
                ..Default::default()
            }],
            links: vec![span::Link {
                trace_id: unhex(T2),
                span_id: unhex("b7ad6b7169203331"),
                ..Default::default()
            }],
            status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                message: "ENOENT".into(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        };
        let server = Span {
            trace_id: unhex(T1),
            span_id: unhex("1111111111111111"),
            parent_span_id: vec![0; 8],
            name: "llm".into(),
            kind: span::SpanKind::Client as i32,
            ..Default::default()
        };
        let invalid = Span {
            trace_id: vec![0; 16],
            span_id: unhex("2222222222222222"),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource(Some("qwen-code"))),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![tool, invalid],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceSpans {
                    resource: Some(resource(None)),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![server],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let spans = from_proto(&req);
        assert_eq!(
            spans.len(),
            2,
            "the span with an all-zero trace id is skipped"
        );
        let t = &spans[0];
        assert_eq!(
            (t.trace_id.as_str(), t.span_id.as_str()),
            (T1, "00f067aa0ba902b7")
        );
        assert_eq!(t.parent_span_id.as_deref(), Some("53995c3f42cd8ad8"));
        assert_eq!(
            (t.service.as_str(), t.kind.as_str(), t.name.as_str()),
            ("qwen-code", "internal", "qwen-code.tool")
        );
        assert_eq!((t.start_unix_nanos, t.end_unix_nanos), (1_000, 3_000));
        assert_eq!(
            (t.status.as_str(), t.status_message.as_str()),
            ("error", "ENOENT")
        );
        assert_eq!(
            serde_json::to_value(&t.attributes).unwrap(),
            json!([
                ["tool.name", "read_file"], ["tokens", 42], ["score", 0.25], ["ok", false],
                ["list", [1, "x"]], ["map", {"k": "v"}], ["raw", "dead"],
            ])
        );
        assert_eq!(
            t.events,
            vec![ViewEvent {
                name: "retry".into(),
                time_unix_nanos: 2_000,
                attributes: vec![("attempt".into(), json!(2))]
            }]
        );
        assert_eq!(
            t.links,
            vec![ViewLink {
                trace_id: T2.into(),
                span_id: "b7ad6b7169203331".into()
            }]
        );
        let s = &spans[1];
        assert_eq!(
            (s.service.as_str(), s.kind.as_str(), s.status.as_str()),
            ("unknown_service", "client", "unset")
        );
        assert_eq!(s.parent_span_id, None);
    }
}

//! The export stage for items that arrive already encoded (the agents' OTLP, the daemon's own
//! metrics): attribution, enrichment, the redaction plugins (failing closed exactly as for the
//! daemon's spans and logs: the same `export-spans` / `export-logs` hooks, the same safety net),
//! then the built-in sanitiser. Attribute sets without a span (resources, metric data points)
//! pass the span hook as attribute-only records, as the daemon's Prometheus labels do.

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue as PKeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::convert::{self, from_kvs, sanitize_kvs, to_kvs, upsert};
use super::registry::{ChildEntry, Registry};
use crate::plugins::{self, Hook, LogItem};
use crate::telemetry::export::{attribute_record, redact_spans};

/// Records per plugin call: an agent's batch may be far larger than the daemon's, and each call
/// has its own deadline.
const PLUGIN_CHUNK: usize = 128;

/// Resource keys that name the sender (kept readable even when the safety net masks content:
/// a backend groups by them).
fn identity(key: &str) -> bool {
    key.starts_with("service.") || key.starts_with("telemetry.")
}

/// Traces: attributed per span (the child, and the prompt whose trace it is in), redacted,
/// sanitised.
pub fn traces(req: &mut ExportTraceServiceRequest, child: Option<&ChildEntry>, reg: &Registry) {
    let base = child.map(ChildEntry::attributes).unwrap_or_default();
    let mut records = Vec::new();
    for rs in &mut req.resource_spans {
        for span in rs.scope_spans.iter_mut().flat_map(|s| s.spans.iter_mut()) {
            if let Some(c) = child {
                upsert(&mut span.attributes, &base);
                upsert(
                    &mut span.attributes,
                    &reg.prompt_attributes(&span.trace_id, &c.child_id),
                );
            }
            records.push(span_record(span));
        }
    }
    for chunk in records.chunks_mut(PLUGIN_CHUNK) {
        redact_spans(chunk);
    }
    let mut done = records.into_iter();
    for rs in &mut req.resource_spans {
        for span in rs.scope_spans.iter_mut().flat_map(|s| s.spans.iter_mut()) {
            if let Some(r) = done.next() {
                write_back(span, r);
            }
            sanitize_kvs(&mut span.attributes);
            for e in &mut span.events {
                sanitize_kvs(&mut e.attributes);
            }
            if let Some(s) = &mut span.status {
                s.message = crate::telemetry::sanitize::sanitize(&s.message);
            }
        }
    }
    resources(
        req.resource_spans
            .iter_mut()
            .filter_map(|r| r.resource.as_mut())
            .map(|r| &mut r.attributes),
    );
}

fn span_record(span: &opentelemetry_proto::tonic::trace::v1::Span) -> SpanData {
    let mut events = SpanEvents::default();
    for e in &span.events {
        events.events.push(opentelemetry::trace::Event::new(
            e.name.clone(),
            std::time::UNIX_EPOCH,
            to_kvs(&e.attributes),
            0,
        ));
    }
    let status = match &span.status {
        Some(s) if s.code == 2 => Status::error(s.message.clone()),
        _ => Status::Unset,
    };
    SpanData {
        span_context: SpanContext::empty_context(),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: match span.kind {
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Internal,
        },
        name: span.name.clone().into(),
        start_time: std::time::UNIX_EPOCH,
        end_time: std::time::UNIX_EPOCH,
        attributes: to_kvs(&span.attributes),
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status,
        instrumentation_scope: opentelemetry::InstrumentationScope::builder(
            crate::plugins::FOREIGN_SCOPE,
        )
        .build(),
    }
}

fn write_back(span: &mut opentelemetry_proto::tonic::trace::v1::Span, r: SpanData) {
    span.name = r.name.into_owned();
    span.attributes = from_kvs(&span.attributes, &r.attributes);
    if let (Status::Error { description }, Some(s)) = (&r.status, span.status.as_mut()) {
        s.message = description.to_string();
    }
    for (e, re) in span.events.iter_mut().zip(r.events.events.iter()) {
        e.attributes = from_kvs(&e.attributes, &re.attributes);
    }
}

/// Attribute sets that belong to no span pass the span hook as attribute-only records.
fn attribute_sets<'a>(sets: impl Iterator<Item = &'a mut Vec<PKeyValue>>, keep: fn(&str) -> bool) {
    let mut sets: Vec<&mut Vec<PKeyValue>> = sets.collect();
    if plugins::current().is_some_and(|s| s.has(Hook::ExportSpans)) {
        let mut records: Vec<_> = sets
            .iter()
            .map(|attrs| {
                attribute_record(
                    to_kvs(attrs)
                        .into_iter()
                        .filter(|kv| !keep(kv.key.as_str()))
                        .collect(),
                )
            })
            .collect();
        for chunk in records.chunks_mut(PLUGIN_CHUNK) {
            redact_spans(chunk);
        }
        for (attrs, r) in sets.iter_mut().zip(records) {
            let kept: Vec<KeyValue> = to_kvs(attrs)
                .into_iter()
                .filter(|kv| keep(kv.key.as_str()))
                .chain(r.attributes)
                .collect();
            **attrs = from_kvs(attrs, &kept);
        }
    }
    for attrs in sets {
        sanitize_kvs(attrs);
    }
}

fn resources<'a>(sets: impl Iterator<Item = &'a mut Vec<PKeyValue>>) {
    attribute_sets(sets, identity);
}

/// Metrics: data points get the child's attributes; their attributes and the resource's are
/// redacted like span attributes.
pub fn metrics(req: &mut ExportMetricsServiceRequest, child: Option<&ChildEntry>) {
    let base = child.map(ChildEntry::attributes).unwrap_or_default();
    let mut points: Vec<&mut Vec<PKeyValue>> = Vec::new();
    let mut resources_: Vec<&mut Vec<PKeyValue>> = Vec::new();
    for rm in &mut req.resource_metrics {
        if let Some(r) = rm.resource.as_mut() {
            resources_.push(&mut r.attributes);
        }
        for m in rm
            .scope_metrics
            .iter_mut()
            .flat_map(|s| s.metrics.iter_mut())
        {
            // Exemplars' attributes are sanitised; the points' own go through redaction.
            macro_rules! points {
                ($g:expr) => {
                    for p in $g.data_points.iter_mut() {
                        points.push(&mut p.attributes);
                        p.exemplars
                            .iter_mut()
                            .for_each(|e| sanitize_kvs(&mut e.filtered_attributes));
                    }
                };
            }
            match &mut m.data {
                Some(Data::Gauge(g)) => points!(g),
                Some(Data::Sum(g)) => points!(g),
                Some(Data::Histogram(g)) => points!(g),
                Some(Data::ExponentialHistogram(g)) => points!(g),
                Some(Data::Summary(g)) => g
                    .data_points
                    .iter_mut()
                    .for_each(|p| points.push(&mut p.attributes)),
                None => {}
            }
        }
    }
    for p in points.iter_mut() {
        upsert(p, &base);
    }
    attribute_sets(points.into_iter(), |_| false);
    resources(resources_.into_iter());
}

/// Logs: attributed like spans (a record in a prompt's trace gets its session and prompt), then
/// the `export-logs` plugins (which may drop records), then the sanitiser.
pub fn logs(req: &mut ExportLogsServiceRequest, child: Option<&ChildEntry>, reg: &Registry) {
    let base = child.map(ChildEntry::attributes).unwrap_or_default();
    let set = plugins::current().filter(|s| s.has(Hook::ExportLogs));
    let mut items = Vec::new();
    for rl in &mut req.resource_logs {
        for r in rl
            .scope_logs
            .iter_mut()
            .flat_map(|s| s.log_records.iter_mut())
        {
            if let Some(c) = child {
                upsert(&mut r.attributes, &base);
                upsert(
                    &mut r.attributes,
                    &reg.prompt_attributes(&r.trace_id, &c.child_id),
                );
            }
            if set.is_some() {
                let origin = items.len();
                items.push(LogItem {
                    body: r.body.as_ref().map(convert::to_log_value),
                    severity: u8::try_from(r.severity_number.clamp(0, 24)).unwrap_or(0),
                    event_name: (!r.event_name.is_empty()).then(|| r.event_name.clone().into()),
                    attrs: r
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                opentelemetry::Key::from(kv.key.clone()),
                                kv.value
                                    .as_ref()
                                    .map(convert::to_log_value)
                                    .unwrap_or(opentelemetry::logs::AnyValue::String("".into())),
                            )
                        })
                        .collect(),
                    dropped: false,
                    origin,
                });
            }
        }
    }
    if let Some(set) = &set {
        let mut done = Vec::with_capacity(items.len());
        let mut rest = items;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(PLUGIN_CHUNK));
            let mut chunk = std::mem::replace(&mut rest, tail);
            set.logs(&mut chunk);
            done.extend(chunk);
        }
        let items = done;
        // Plugins may drop records; the rest come back by origin.
        let total: usize = req
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        let mut by_origin: Vec<Option<LogItem>> = vec![None; total];
        for item in items {
            if !item.dropped && item.origin < total {
                let o = item.origin;
                by_origin[o] = Some(item);
            }
        }
        let mut i = 0;
        for rl in &mut req.resource_logs {
            for s in &mut rl.scope_logs {
                s.log_records.retain_mut(|r| {
                    let item = by_origin.get_mut(i).and_then(Option::take);
                    i += 1;
                    let Some(item) = item else { return false };
                    r.body = item.body.as_ref().map(convert::from_log_value);
                    let before = std::mem::take(&mut r.attributes);
                    r.attributes = item
                        .attrs
                        .iter()
                        .map(|(k, v)| {
                            let orig = before.iter().find(|p| p.key == k.as_str());
                            let value = match orig.and_then(|p| p.value.as_ref()) {
                                Some(o) if convert::to_log_value(o) == *v => o.clone(),
                                _ => convert::from_log_value(v),
                            };
                            PKeyValue {
                                key: k.to_string(),
                                value: Some(value),
                                key_strindex: 0,
                            }
                        })
                        .collect();
                    true
                });
            }
        }
    }
    for rl in &mut req.resource_logs {
        for r in rl
            .scope_logs
            .iter_mut()
            .flat_map(|s| s.log_records.iter_mut())
        {
            if let Some(b) = r.body.as_mut() {
                convert::sanitize_any(b);
            }
            sanitize_kvs(&mut r.attributes);
        }
    }
    resources(
        req.resource_logs
            .iter_mut()
            .filter_map(|r| r.resource.as_mut())
            .map(|r| &mut r.attributes),
    );
}

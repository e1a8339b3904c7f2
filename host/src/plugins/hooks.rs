//! Dispatch at each hook, in config order, with each hook's failure policy: redaction (export
//! hooks) fails closed through the safety net, enrichment fails open, error translation falls
//! back to the daemon's own wording.

use opentelemetry::logs::AnyValue;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

use super::bindings::acpd::plugin::types::{AttrEdit, AttrRef};
use super::bindings::exports::acpd::plugin::{error_hooks, log_hooks, span_hooks};
use super::instance::Failure;
use super::pack::{self, Pack, packed_len, to_any, to_value, validate};
use super::plugin::HookSelector;
use super::{Hook, PluginSet, Slot, metrics};

pub const REDACTED: &str = "[REDACTED]";

/// Keys whose values are structure, not content: the safety net leaves them readable so a
/// trace stays navigable while a redaction plugin is down.
const STRUCTURAL: &[&str] = &[
    "session.id",
    "acpd.prompt.id",
    "acpd.client.id",
    "acpd.workspace.id",
    "acpd.child.id",
    "acpd.bridge.operation",
    "acpd.prompt.queue_wait_ms",
    "acpd.stop_reason",
    "acpd.child.expected",
    "acpd.child.event",
    "acpd.agent.name",
    "acpd.tool.status",
    "acpd.tool.kind",
    "acpd.permission.decision",
    "acpd.permission.request_id",
    "acpd.sse.reason",
    "acpd.plugin.name",
    "acpd.plugin.hook",
    "acpd.plugin.failure",
    "acpd.plugin.reason",
    "acpd.agent.load_session",
    // The daemon's own metric labels: a masked `acpd.drop.stage` would hide what was lost.
    "acpd.signal",
    "acpd.drop.stage",
    "http.route",
    "http.request.method",
    "http.response.status_code",
    "url.scheme",
    "server.port",
    "error.type",
    "rpc.system",
    "rpc.method",
    "rpc.jsonrpc.error_code",
    "gen_ai.operation.name",
    "gen_ai.tool.call.id",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "process.pid",
    "process.exit.code",
    "acpd.process.signal",
    "event.name",
    "acpd.drop.source",
];

pub fn structural(key: &str) -> bool {
    STRUCTURAL.contains(&key)
}

/// Keys enrichment may not set: the daemon's own facts.
fn protected(key: &str, facts: &[AttrRef], arena: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "http.",
        "url.",
        "server.",
        "client.",
        "rpc.",
        "process.",
        "service.",
        "telemetry.",
        "otel.",
        "error.",
        "session.",
        "user_agent.",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p))
        || structural(key)
        || facts.iter().any(|a| {
            arena.get(a.key.offset as usize..(a.key.offset + a.key.len) as usize) == Some(key)
        })
}

fn mask_value(v: &mut Value) {
    if !matches!(v, Value::Bool(_)) {
        *v = Value::String(REDACTED.into());
    }
}

fn mask_any(v: &mut AnyValue) {
    if !matches!(v, AnyValue::Boolean(_)) {
        *v = AnyValue::String(REDACTED.into());
    }
}

/// The instrumentation scope the gateway gives the agents' spans on their way through the
/// plugins: their names are content too (the daemon's own are a fixed vocabulary).
pub const FOREIGN_SCOPE: &str = "acpd.gateway.agent";

/// Fail closed for spans: every non-structural value masked, error texts too, and the names of
/// spans from outside the daemon.
pub fn safety_net_spans(batch: &mut [SpanData]) {
    for span in batch {
        if span.instrumentation_scope.name() == FOREIGN_SCOPE {
            span.name = REDACTED.into();
        }
        for kv in span.attributes.iter_mut() {
            if !structural(kv.key.as_str()) {
                mask_value(&mut kv.value);
            }
        }
        for ev in span.events.events.iter_mut() {
            for kv in ev.attributes.iter_mut() {
                if !structural(kv.key.as_str()) {
                    mask_value(&mut kv.value);
                }
            }
        }
        if let Status::Error { description } = &mut span.status
            && !description.is_empty()
        {
            *description = REDACTED.into();
        }
    }
}

/// A log record on its way out, in a form plugins can edit.
#[derive(Debug, Clone)]
pub struct LogItem {
    pub body: Option<AnyValue>,
    pub severity: u8,
    pub event_name: Option<std::borrow::Cow<'static, str>>,
    pub attrs: Vec<(Key, AnyValue)>,
    pub dropped: bool,
    /// The record this item came from (plugins never see it).
    pub origin: usize,
}

/// Fail closed for logs: bodies become `[REDACTED]`, non-structural values masked.
pub fn safety_net_logs(batch: &mut [LogItem]) {
    for item in batch {
        if item.body.is_some() {
            item.body = Some(AnyValue::String(REDACTED.into()));
        }
        for (k, v) in item.attrs.iter_mut() {
            if !structural(k.as_str()) {
                mask_any(v);
            }
        }
    }
}

fn kind(k: &SpanKind) -> span_hooks::SpanKind {
    match k {
        SpanKind::Server => span_hooks::SpanKind::Server,
        SpanKind::Client => span_hooks::SpanKind::Client,
        SpanKind::Producer => span_hooks::SpanKind::Producer,
        SpanKind::Consumer => span_hooks::SpanKind::Consumer,
        SpanKind::Internal => span_hooks::SpanKind::Internal,
    }
}

#[derive(Clone, Copy)]
enum SpanLoc {
    Attr(usize),
    Event(usize, usize),
    Status,
}

const STATUS_KEY: &str = "otel.status_description";

fn upsert_value(attrs: &mut Vec<KeyValue>, key: String, value: Value) {
    match attrs.iter_mut().find(|kv| kv.key.as_str() == key) {
        Some(kv) => kv.value = value,
        None => attrs.push(KeyValue::new(key, value)),
    }
}

fn qualifies_span(sel: &HookSelector, span: &SpanData) -> bool {
    sel.record_qualifies(span.attributes.iter().map(|kv| kv.key.as_str()))
}

/// About what packing `batch` takes at most: attribute entries, and arena bytes (names, keys and
/// string values; 8 for any other value; an event's attribute is keyed `event.<name>.<key>`).
fn span_batch_size(batch: &[SpanData]) -> (usize, usize) {
    let value = |v: &Value| match v {
        Value::String(s) => s.as_str().len(),
        _ => 8,
    };
    let (mut attrs, mut bytes) = (0, 0);
    for s in batch {
        attrs += s.attributes.len() + 1;
        bytes += s.name.len();
        for kv in &s.attributes {
            bytes += kv.key.as_str().len() + value(&kv.value);
        }
        for ev in s.events.events.iter() {
            attrs += ev.attributes.len();
            for kv in &ev.attributes {
                bytes += ev.name.len() + kv.key.as_str().len() + 7 + value(&kv.value);
            }
        }
    }
    (attrs, bytes)
}

impl PluginSet {
    /// request / dispatch / child: attributes to add (enrichment). Fails open.
    pub fn observe(&self, hook: Hook, facts: &[(&str, Value)]) -> Vec<KeyValue> {
        let mut added: Vec<KeyValue> = Vec::new();
        for slot in self.at(hook) {
            let Slot::Ready(p) = slot else { continue };
            let Some(sel) = p.selector(hook) else {
                continue;
            };
            // Before packing: a request without the keys a selector requires (a header an
            // `enrich` mapping names) costs this check and nothing else.
            if !sel.record_qualifies(facts.iter().map(|(k, _)| *k)) {
                metrics::skipped(&p.name, hook, "selector");
                continue;
            }
            let mut pk = Pack::default();
            for (k, v) in facts
                .iter()
                .map(|(k, v)| (*k, v))
                .chain(added.iter().map(|kv| (kv.key.as_str(), &kv.value)))
            {
                if sel.keys.wants(k) {
                    let v = pk.value(v);
                    pk.push(0, k, v);
                }
            }
            let Ok(edits) = p.call(hook, |live, budget| {
                live.observe(hook, budget, &pk.arena, &pk.attrs)
            }) else {
                continue;
            };
            if edits.is_empty() {
                continue;
            }
            let check = validate(
                &edits,
                &pk.attrs,
                1,
                |k| protected(k, &pk.attrs, &pk.arena),
                |i| packed_len(&pk.attrs, i),
            )
            .and_then(|()| {
                if edits.iter().all(|e| matches!(e, AttrEdit::Upsert(_))) {
                    Ok(())
                } else {
                    Err("enrichment hooks may only upsert".to_string())
                }
            });
            if let Err(why) = check {
                p.failed(hook, &Failure::InvalidOutput(why));
                continue;
            }
            for e in edits {
                if let AttrEdit::Upsert((_, k, v)) = e {
                    upsert_value(&mut added, k, to_value(v));
                }
            }
        }
        added
    }

    /// export-spans: redaction of a batch in place. Fails closed.
    pub fn spans(&self, batch: &mut [SpanData]) {
        let hook = Hook::ExportSpans;
        // Packing is sized for the whole batch up front: growing the lists and the arena by
        // doubling copied them about twice over (0.6 M instructions per 512-span batch).
        let (attr_n, bytes) = span_batch_size(batch);
        for slot in self.at(hook) {
            let p = match slot {
                Slot::Ready(p) => p,
                Slot::Broken { .. } => {
                    safety_net_spans(batch);
                    continue;
                }
            };
            let Some(sel) = p.selector(hook) else {
                continue;
            };
            let mut pk = Pack::with_capacity(attr_n, bytes);
            let mut refs = Vec::with_capacity(batch.len());
            let mut locs: Vec<(usize, SpanLoc)> = Vec::with_capacity(attr_n);
            let mut any = false;
            for (r, span) in batch.iter().enumerate() {
                let name = pk.str(&span.name);
                refs.push(span_hooks::SpanRef {
                    name,
                    kind: kind(&span.span_kind),
                    is_error: matches!(span.status, Status::Error { .. }),
                });
                if !qualifies_span(sel, span) {
                    continue;
                }
                any = true;
                let rec = r as u32;
                for (i, kv) in span.attributes.iter().enumerate() {
                    if sel.keys.wants(kv.key.as_str()) {
                        let v = pk.value(&kv.value);
                        pk.push(rec, kv.key.as_str(), v);
                        locs.push((r, SpanLoc::Attr(i)));
                    }
                }
                if let Status::Error { description } = &span.status
                    && !description.is_empty()
                    && sel.keys.wants(STATUS_KEY)
                {
                    let v =
                        super::bindings::acpd::plugin::types::ValueRef::Str(pk.str(description));
                    pk.push(rec, STATUS_KEY, v);
                    locs.push((r, SpanLoc::Status));
                }
                for (e, ev) in span.events.events.iter().enumerate() {
                    for (i, kv) in ev.attributes.iter().enumerate() {
                        let key = format!("event.{}.{}", ev.name, kv.key.as_str());
                        if sel.keys.wants(&key) {
                            let v = pk.value(&kv.value);
                            pk.push(rec, &key, v);
                            locs.push((r, SpanLoc::Event(e, i)));
                        }
                    }
                }
            }
            if !any {
                metrics::skipped(&p.name, hook, "selector");
                continue;
            }
            let wb = span_hooks::SpanBatch {
                arena: std::mem::take(&mut pk.arena),
                spans: refs,
                attrs: std::mem::take(&mut pk.attrs),
            };
            let edits = match p.call(hook, |live, budget| live.spans(budget, &wb)) {
                Ok(e) => e,
                Err(_) => {
                    safety_net_spans(batch);
                    continue;
                }
            };
            let check = validate(
                &edits.attrs,
                &wb.attrs,
                batch.len(),
                |k| k == STATUS_KEY || k.starts_with("event."),
                |i| packed_len(&wb.attrs, i),
            )
            .and_then(|()| renames_ok(&edits.renames, batch.len()));
            if let Err(why) = check {
                p.failed(hook, &Failure::InvalidOutput(why));
                safety_net_spans(batch);
                continue;
            }
            apply_span_edits(batch, &locs, edits);
        }
    }

    /// export-logs: redaction of a batch in place (records may be dropped). Fails closed.
    pub fn logs(&self, batch: &mut Vec<LogItem>) {
        let hook = Hook::ExportLogs;
        let attr_n: usize = batch.iter().map(|i| i.attrs.len()).sum();
        for slot in self.at(hook) {
            let p = match slot {
                Slot::Ready(p) => p,
                Slot::Broken { .. } => {
                    safety_net_logs(batch);
                    continue;
                }
            };
            let Some(sel) = p.selector(hook) else {
                continue;
            };
            let mut pk = Pack::with_capacity(attr_n, 0);
            let mut refs = Vec::with_capacity(batch.len());
            let mut locs: Vec<(usize, usize)> = Vec::with_capacity(attr_n);
            let mut any = false;
            let mut body_lens = Vec::with_capacity(batch.len());
            for (r, item) in batch.iter().enumerate() {
                let body_text = item.body.as_ref().map(pack::any_text).unwrap_or_default();
                body_lens.push(body_text.len());
                let body = pk.str(&body_text);
                let event_name = pk.str(item.event_name.as_deref().unwrap_or(""));
                refs.push(log_hooks::LogRef {
                    body,
                    severity: item.severity,
                    event_name,
                });
                if !sel.record_qualifies(item.attrs.iter().map(|(k, _)| k.as_str())) {
                    continue;
                }
                any = true;
                for (i, (k, v)) in item.attrs.iter().enumerate() {
                    if sel.keys.wants(k.as_str()) {
                        let v = pk.any(v);
                        pk.push(r as u32, k.as_str(), v);
                        locs.push((r, i));
                    }
                }
            }
            if !any {
                metrics::skipped(&p.name, hook, "selector");
                continue;
            }
            let wb = log_hooks::LogBatch {
                arena: std::mem::take(&mut pk.arena),
                logs: refs,
                attrs: std::mem::take(&mut pk.attrs),
            };
            let edits = match p.call(hook, |live, budget| live.logs(budget, &wb)) {
                Ok(e) => e,
                Err(_) => {
                    safety_net_logs(batch);
                    continue;
                }
            };
            let check = validate(
                &edits.attrs,
                &wb.attrs,
                batch.len(),
                |_| false,
                |i| packed_len(&wb.attrs, i),
            )
            .and_then(|()| bodies_ok(&edits, batch.len(), &body_lens));
            if let Err(why) = check {
                p.failed(hook, &Failure::InvalidOutput(why));
                safety_net_logs(batch);
                continue;
            }
            apply_log_edits(batch, &locs, edits);
        }
        batch.retain(|i| !i.dropped);
    }

    /// error: the first plugin that answers decides what the client sees; a failing plugin
    /// falls back to the next one, then to the daemon's own mapping.
    pub fn translate(&self, err: &error_hooks::ErrorInfo) -> Option<error_hooks::ClientError> {
        for slot in self.at(Hook::Error) {
            let Slot::Ready(p) = slot else { continue };
            if let Ok(Some(out)) = p.call(Hook::Error, |live, budget| live.translate(budget, err)) {
                match client_error_ok(&out) {
                    Ok(()) => return Some(out),
                    Err(why) => p.failed(Hook::Error, &Failure::InvalidOutput(why)),
                }
            }
        }
        None
    }
}

fn renames_ok(renames: &[(u32, String)], spans: usize) -> Result<(), String> {
    for (i, name) in renames {
        if *i as usize >= spans {
            return Err(format!("rename of span {i} out of range ({spans} sent)"));
        }
        if name.is_empty() || name.len() > pack::MAX_NAME_BYTES {
            return Err(format!("span name of {} bytes", name.len()));
        }
    }
    Ok(())
}

fn bodies_ok(edits: &log_hooks::LogEdits, logs: usize, lens: &[usize]) -> Result<(), String> {
    for (i, body) in &edits.bodies {
        let i = *i as usize;
        if i >= logs {
            return Err(format!("body of log {i} out of range ({logs} sent)"));
        }
        if body.len() > pack::MAX_BODY_BYTES.max(lens[i]) {
            return Err(format!("body of {} bytes", body.len()));
        }
    }
    if let Some(d) = edits.drops.iter().find(|d| **d as usize >= logs) {
        return Err(format!("drop of log {d} out of range ({logs} sent)"));
    }
    Ok(())
}

fn client_error_ok(e: &error_hooks::ClientError) -> Result<(), String> {
    if !(400..=599).contains(&e.status) {
        return Err(format!("status {} outside 400-599", e.status));
    }
    let code_ok = !e.code.is_empty()
        && e.code.len() <= 64
        && e.code.starts_with(|c: char| c.is_ascii_lowercase())
        && e.code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !code_ok {
        return Err(format!(
            "code {:?} is not snake_case",
            pack::truncate(&e.code)
        ));
    }
    if e.message.is_empty() || e.message.len() > 4096 {
        return Err(format!("message of {} bytes", e.message.len()));
    }
    if e.retry_after.is_some_and(|s| s > 86_400) {
        return Err("retry-after over a day".into());
    }
    Ok(())
}

fn apply_span_edits(
    batch: &mut [SpanData],
    locs: &[(usize, SpanLoc)],
    edits: span_hooks::SpanEdits,
) {
    let mut removals: Vec<(usize, SpanLoc)> = Vec::new();
    for e in edits.attrs {
        match e {
            AttrEdit::Replace((i, v)) => {
                let (r, loc) = locs[i as usize];
                let span = &mut batch[r];
                let v = to_value(v);
                match loc {
                    SpanLoc::Attr(a) => span.attributes[a].value = v,
                    SpanLoc::Event(ev, a) => span.events.events[ev].attributes[a].value = v,
                    SpanLoc::Status => {
                        if let Status::Error { description } = &mut span.status {
                            *description = v.to_string().into();
                        }
                    }
                }
            }
            AttrEdit::Remove(i) => removals.push(locs[i as usize]),
            AttrEdit::Upsert((r, k, v)) => {
                upsert_value(&mut batch[r as usize].attributes, k, to_value(v))
            }
        }
    }
    // Highest index first, so earlier indexes stay valid.
    removals.sort_by_key(|(r, loc)| {
        std::cmp::Reverse(match loc {
            SpanLoc::Attr(a) => (*r, 0, *a, 0),
            SpanLoc::Event(e, a) => (*r, 1, *e, *a),
            SpanLoc::Status => (*r, 2, 0, 0),
        })
    });
    for (r, loc) in removals {
        let span = &mut batch[r];
        match loc {
            SpanLoc::Attr(a) => {
                span.attributes.remove(a);
            }
            SpanLoc::Event(e, a) => {
                span.events.events[e].attributes.remove(a);
            }
            SpanLoc::Status => {
                if let Status::Error { description } = &mut span.status {
                    *description = "".into();
                }
            }
        }
    }
    for (i, name) in edits.renames {
        batch[i as usize].name = name.into();
    }
}

fn apply_log_edits(batch: &mut [LogItem], locs: &[(usize, usize)], edits: log_hooks::LogEdits) {
    let mut removals: Vec<(usize, usize)> = Vec::new();
    for e in edits.attrs {
        match e {
            AttrEdit::Replace((i, v)) => {
                let (r, a) = locs[i as usize];
                batch[r].attrs[a].1 = to_any(v);
            }
            AttrEdit::Remove(i) => removals.push(locs[i as usize]),
            AttrEdit::Upsert((r, k, v)) => {
                let attrs = &mut batch[r as usize].attrs;
                match attrs.iter_mut().find(|(key, _)| key.as_str() == k) {
                    Some((_, old)) => *old = to_any(v),
                    None => attrs.push((Key::from(k), to_any(v))),
                }
            }
        }
    }
    removals.sort_by_key(|x| std::cmp::Reverse(*x));
    for (r, a) in removals {
        batch[r].attrs.remove(a);
    }
    for (i, body) in edits.bodies {
        batch[i as usize].body = Some(AnyValue::String(body.into()));
    }
    for d in edits.drops {
        batch[d as usize].dropped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels of the daemon's own metrics carry fixed vocabularies, not content: with the
    /// redaction plugin down they must stay readable (`/metrics`, OTLP), or an operator cannot
    /// tell what was dropped or why a plugin was skipped.
    #[test]
    fn the_daemons_metric_labels_are_structure() {
        use crate::telemetry::semconv::*;
        for key in [
            SIGNAL,
            DROP_STAGE,
            SSE_REASON,
            ERROR_TYPE,
            HTTP_ROUTE,
            HTTP_REQUEST_METHOD,
            HTTP_RESPONSE_STATUS_CODE,
            "acpd.plugin.name",
            "acpd.plugin.hook",
            "acpd.plugin.failure",
            "acpd.plugin.reason",
        ] {
            assert!(structural(key), "{key}");
        }
    }

    #[test]
    fn the_safety_net_masks_content_and_keeps_structure() {
        let mut items = vec![LogItem {
            body: Some(AnyValue::String("token sk-123".into())),
            severity: 9,
            event_name: Some("acpd.child.stderr".into()),
            attrs: vec![
                (Key::from("session.id"), AnyValue::String("s1".into())),
                (Key::from("user.email"), AnyValue::String("a@b.c".into())),
                (Key::from("ok"), AnyValue::Boolean(true)),
            ],
            dropped: false,
            origin: 0,
        }];
        safety_net_logs(&mut items);
        let i = &items[0];
        assert_eq!(i.body, Some(AnyValue::String(REDACTED.into())));
        assert_eq!(i.attrs[0].1, AnyValue::String("s1".into()));
        assert_eq!(i.attrs[1].1, AnyValue::String(REDACTED.into()));
        assert_eq!(i.attrs[2].1, AnyValue::Boolean(true));
    }

    #[test]
    fn client_errors_are_bounded() {
        let ok = error_hooks::ClientError {
            status: 502,
            code: "agent_exited".into(),
            message: "The agent stopped".into(),
            retryable: true,
            retry_after: Some(5),
        };
        assert!(client_error_ok(&ok).is_ok());
        assert!(
            client_error_ok(&error_hooks::ClientError {
                status: 200,
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            client_error_ok(&error_hooks::ClientError {
                code: "Bad-Code".into(),
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            client_error_ok(&error_hooks::ClientError {
                message: String::new(),
                ..ok.clone()
            })
            .is_err()
        );
    }
}

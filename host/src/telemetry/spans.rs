//! Span helpers on the raw OpenTelemetry API. acpd's spans cross tasks (a prompt's dispatch
//! span lives from admission to the end of its turn), so contexts are passed explicitly and
//! never taken from a process-wide "current session".

use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use super::semconv;

/// Starts a span under `parent` and returns the context that carries it.
pub fn start(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: &Context,
    attrs: Vec<KeyValue>,
) -> Context {
    start_linked(name, kind, parent, attrs, Vec::new())
}

/// Like `start`, with links (cancel and vote requests link to the prompt they act on).
pub fn start_linked(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: &Context,
    attrs: Vec<KeyValue>,
    links: Vec<SpanContext>,
) -> Context {
    let tracer = global::tracer("acpd");
    let mut attrs = attrs;
    // Request enrichment is inherited by every span the request causes.
    if let Some(Enrichment(extra)) = parent.get::<Enrichment>() {
        attrs.extend(extra.iter().cloned());
    }
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attrs)
        .with_links(
            links
                .into_iter()
                .filter(SpanContext::is_valid)
                .map(Link::with_context)
                .collect(),
        )
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Attributes the `request` plugins added; carried in the context so the spans a request
/// causes (including its prompt's, after the response) carry them too.
#[derive(Clone, Debug)]
pub struct Enrichment(pub Arc<Vec<KeyValue>>);

pub fn set(cx: &Context, kv: KeyValue) {
    cx.span().set_attribute(kv);
}

pub fn event(cx: &Context, name: &'static str, attrs: Vec<KeyValue>) {
    cx.span().add_event(name, attrs);
}

pub fn fail(cx: &Context, message: impl Into<Cow<'static, str>>) {
    cx.span().set_status(Status::error(message));
}

pub fn end(cx: &Context) {
    cx.span().end();
}

pub fn span_context(cx: &Context) -> SpanContext {
    cx.span().span_context().clone()
}

/// Validated facts about the request being served (session, prompt, client, workspace): set
/// on its server span as they become known, and read back for the correlated error log.
#[derive(Clone, Default, Debug)]
pub struct RequestFacts(Arc<Mutex<Vec<(&'static str, String)>>>);

impl RequestFacts {
    pub fn push(&self, key: &'static str, value: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, value.to_string()));
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }
}

/// Records a validated fact on the current request's span (no-op outside a request).
pub fn request_fact(key: &'static str, value: &str) {
    let cx = Context::current();
    if let Some(facts) = cx.get::<RequestFacts>() {
        facts.push(key, value);
        cx.span()
            .set_attribute(KeyValue::new(key, value.to_string()));
    }
}

pub fn session_fact(id: &str) {
    request_fact(semconv::SESSION_ID, id);
}

//! Span helpers on the raw OpenTelemetry API. acpd's spans cross tasks (a prompt's dispatch
//! span lives from admission to the end of its turn), so contexts are passed explicitly and
//! never taken from a process-wide "current session".

use arc_swap::ArcSwapOption;
use opentelemetry::trace::{
    Link, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use super::semconv;

/// The daemon's tracer, made once with its provider. `global::tracer` made a boxed tracer for
/// every span: an allocation, two reference counts shared by every thread touched, and the
/// span boxed twice (once as the boxed tracer's span, once more in its context).
static TRACER: ArcSwapOption<SdkTracer> = ArcSwapOption::const_empty();

/// Spans start on `provider`'s tracer from now on (the global provider is set alongside).
pub fn use_provider(provider: &SdkTracerProvider) {
    TRACER.store(Some(Arc::new(provider.tracer("acpd"))));
}

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
    let mut attrs = attrs;
    // Request enrichment is inherited by every span the request causes.
    if let Some(Enrichment(extra)) = parent.get::<Enrichment>() {
        attrs.extend(extra.iter().cloned());
    }
    let span = SpanBuilder::from_name(name)
        .with_kind(kind)
        .with_attributes(attrs)
        .with_links(
            links
                .into_iter()
                .filter(SpanContext::is_valid)
                .map(Link::with_context)
                .collect(),
        );
    match &*TRACER.load() {
        Some(tracer) => parent.with_span(span.start_with_context(&**tracer, parent)),
        // No telemetry set up (unit tests, tools): the global no-op provider.
        None => parent.with_span(span.start_with_context(&global::tracer("acpd"), parent)),
    }
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

//! The demo agent's own OpenTelemetry traces, exported over OTLP when (and only when) the
//! standard OTLP environment asks for it.
//!
//! Per prompt: `invoke_agent acpd-demo-agent` (INTERNAL; parent = the prompt's `_meta`
//! traceparent, else a new trace) with children `chat demo-model` (CLIENT, the reply
//! generation) and `execute_tool <read_file|write_file>` (INTERNAL). The spans of a turn are
//! force-flushed right after the turn's response; the provider is shut down on stdin EOF.
//! Both are blocking calls, so they run on the blocking pool, bounded by a deadline.
//!
//! Environment read here: `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER` (`none` disables),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (one must be set),
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/json`,
//! otherwise HTTP/protobuf), `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (the service name
//! defaults to `acpd-demo-agent`). The SDK itself reads the endpoint, headers, timeout,
//! sampler and `OTEL_BSP_*` variables. Without an endpoint nothing is built: no exporter, no
//! thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent_client_protocol::Error;
use agent_client_protocol::v1::schema::{Meta, PromptResponse};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use crate::AGENT_NAME;

/// How long a turn waits for its spans to be flushed (the flush itself gives up after the
/// SDK's fixed 5 s).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stdin EOF waits for the final export.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// The model name the demo agent pretends to call.
pub const MODEL: &str = "demo-model";
/// The `gen_ai.provider.name` of that model.
pub const PROVIDER: &str = "demo";

/// The OTLP transport chosen from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

/// Whether (and how) to export, from the environment `env` (a lookup of variable values).
/// `None`: export nothing.
pub fn transport_from_env(env: impl Fn(&str) -> Option<String>) -> Option<Transport> {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    Some(match protocol.as_str() {
        "grpc" => Transport::Grpc,
        "http/json" => Transport::HttpJson,
        _ => Transport::HttpProtobuf,
    })
}

/// Whether the environment names the service (then the SDK's resource detectors apply it).
fn service_name_in_env(env: impl Fn(&str) -> Option<String>) -> bool {
    env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs.split(',').any(|kv| {
                kv.split_once('=')
                    .is_some_and(|(k, _)| k.trim() == "service.name")
            })
        })
}

/// The tracer provider of this process, when exporting.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Only the first failed flush is reported on stderr.
    warned: AtomicBool,
}

impl Telemetry {
    /// Builds the OTLP exporter and tracer provider if the environment asks for export.
    /// Must run inside a tokio runtime (the gRPC exporter's channel is created there).
    pub fn from_env() -> Option<Telemetry> {
        let env = |k: &str| std::env::var(k).ok();
        let transport = transport_from_env(env)?;
        let exporter = match transport {
            Transport::Grpc => SpanExporter::builder().with_tonic().build(),
            Transport::HttpJson => SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .build(),
            // Explicitly: the SDK's own default with `http-json` compiled in would be JSON.
            Transport::HttpProtobuf => SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build(),
        };
        let exporter = match exporter {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("{AGENT_NAME}: OTLP trace export disabled: {e}");
                return None;
            }
        };
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if !service_name_in_env(env) {
            resource = resource.with_service_name(AGENT_NAME);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let scope = InstrumentationScope::builder(AGENT_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Some(Telemetry {
            provider,
            tracer,
            warned: AtomicBool::new(false),
        })
    }

    /// Exports the spans ended so far, waiting at most [`FLUSH_TIMEOUT`].
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush());
        let problem = match tokio::time::timeout(FLUSH_TIMEOUT, flushed).await {
            Ok(Ok(Ok(()))) => return,
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {FLUSH_TIMEOUT:?}"),
        };
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("{AGENT_NAME}: exporting spans failed (reported once): {problem}");
        }
    }

    /// Exports what is left and stops the exporter, waiting at most [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
        // The SDK bounds the call itself; the margin covers a worker stuck behind a flush.
        let bound = SHUTDOWN_TIMEOUT + Duration::from_millis(500);
        match tokio::time::timeout(bound, done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("{AGENT_NAME}: telemetry shutdown: {e}"),
            Ok(Err(e)) => eprintln!("{AGENT_NAME}: telemetry shutdown: {e}"),
            Err(_) => eprintln!("{AGENT_NAME}: telemetry shutdown: no answer within {bound:?}"),
        }
    }
}

/// Reads W3C trace context from a request's `_meta`: root keys `traceparent`/`tracestate`,
/// else `qwen.telemetry.traceparent`/`qwen.telemetry.tracestate`. Empty values are absent.
struct MetaExtractor<'a>(&'a Meta);

impl MetaExtractor<'_> {
    fn value(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl Extractor for MetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.value(&key)
            .or_else(|| self.value(&format!("qwen.telemetry.{key}")))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The remote parent carried by `_meta`, or an empty context (then spans start a new trace).
pub fn parent_from_meta(meta: Option<&Meta>) -> Context {
    match meta {
        Some(meta) => TraceContextPropagator::new()
            .extract_with_context(&Context::new(), &MetaExtractor(meta)),
        None => Context::new(),
    }
}

/// A rough token count: whitespace-separated words.
pub fn tokens(text: &str) -> i64 {
    i64::try_from(text.split_whitespace().count()).unwrap_or(i64::MAX)
}

fn strings(values: &[&str]) -> Value {
    let values = values.iter().map(|v| StringValue::from(v.to_string()));
    Value::Array(Array::String(values.collect()))
}

/// The `invoke_agent` span of one prompt turn, or nothing when not exporting.
#[derive(Clone, Default)]
pub struct TurnTrace(Option<TurnInner>);

#[derive(Clone)]
struct TurnInner {
    tracer: SdkTracer,
    /// Holds the `invoke_agent` span.
    cx: Context,
    session_id: String,
    input_tokens: i64,
}

impl TurnTrace {
    /// Starts the turn's `invoke_agent` span under the `_meta` parent (if any).
    pub fn start(
        telemetry: Option<&Telemetry>,
        meta: Option<&Meta>,
        session_id: &str,
        prompt_text: &str,
    ) -> TurnTrace {
        let Some(telemetry) = telemetry else {
            return TurnTrace(None);
        };
        let tracer = telemetry.tracer.clone();
        let parent = parent_from_meta(meta);
        let span = tracer
            .span_builder(format!("invoke_agent {AGENT_NAME}"))
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", "invoke_agent"),
                KeyValue::new("gen_ai.agent.name", AGENT_NAME),
                KeyValue::new("gen_ai.provider.name", PROVIDER),
                KeyValue::new("gen_ai.conversation.id", session_id.to_owned()),
                KeyValue::new("session.id", session_id.to_owned()),
            ])
            .start_with_context(&tracer, &parent);
        TurnTrace(Some(TurnInner {
            tracer,
            cx: parent.with_span(span),
            session_id: session_id.to_owned(),
            input_tokens: tokens(prompt_text),
        }))
    }

    /// Ends the `invoke_agent` span with the turn's outcome.
    pub fn finish(&self, result: &Result<PromptResponse, Error>) {
        let Some(inner) = &self.0 else { return };
        let span = inner.cx.span();
        match result {
            Ok(response) => {
                let reason = serde_json::to_value(response.stop_reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                span.set_attribute(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    strings(&[&reason]),
                ));
            }
            Err(e) => {
                span.set_attribute(KeyValue::new("error.type", e.code.value().to_string()));
                span.set_status(Status::error(e.message.clone()));
            }
        }
        span.end();
    }

    /// Starts a `chat demo-model` span (the reply generation); it ends when dropped.
    pub fn chat(&self) -> LlmCall {
        let span = self.0.as_ref().map(|inner| {
            inner
                .tracer
                .span_builder(format!("chat {MODEL}"))
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("gen_ai.operation.name", "chat"),
                    KeyValue::new("gen_ai.provider.name", PROVIDER),
                    KeyValue::new("gen_ai.request.model", MODEL),
                    KeyValue::new("gen_ai.conversation.id", inner.session_id.clone()),
                    KeyValue::new("gen_ai.output.type", "text"),
                    KeyValue::new("gen_ai.usage.input_tokens", inner.input_tokens),
                ])
                .start_with_context(&inner.tracer, &inner.cx)
        });
        LlmCall {
            span,
            output_tokens: 0,
            finish_reason: None,
        }
    }

    /// Starts an `execute_tool <name>` span; it ends when dropped.
    pub fn tool(&self, name: &'static str, call_id: &str) -> ToolRun {
        let span = self.0.as_ref().map(|inner| {
            inner
                .tracer
                .span_builder(format!("execute_tool {name}"))
                .with_kind(SpanKind::Internal)
                .with_attributes([
                    KeyValue::new("gen_ai.operation.name", "execute_tool"),
                    KeyValue::new("gen_ai.tool.name", name),
                    KeyValue::new("gen_ai.tool.call.id", call_id.to_owned()),
                    KeyValue::new("gen_ai.tool.type", "function"),
                ])
                .start_with_context(&inner.tracer, &inner.cx)
        });
        ToolRun {
            span,
            failure: None,
            completed: false,
        }
    }
}

/// A running `chat` span. Ended on drop: with its finish reason when [`LlmCall::finish`] was
/// called, else as an error (the generation was abandoned).
pub struct LlmCall {
    span: Option<Span>,
    output_tokens: i64,
    finish_reason: Option<&'static str>,
}

impl LlmCall {
    /// Counts generated text.
    pub fn output(&mut self, text: &str) {
        self.output_tokens += tokens(text);
    }

    /// The generation ended normally (`stop`) or was cut short (`cancelled`).
    pub fn finish(mut self, reason: &'static str) {
        self.finish_reason = Some(reason);
    }
}

impl Drop for LlmCall {
    fn drop(&mut self) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        span.set_attribute(KeyValue::new(
            "gen_ai.usage.output_tokens",
            self.output_tokens,
        ));
        span.set_attribute(KeyValue::new("gen_ai.response.model", MODEL));
        match self.finish_reason {
            Some(reason) => span.set_attribute(KeyValue::new(
                "gen_ai.response.finish_reasons",
                strings(&[reason]),
            )),
            None => {
                span.set_attribute(KeyValue::new("error.type", "aborted"));
                span.set_status(Status::error("generation abandoned"));
            }
        }
        span.end();
    }
}

/// A running `execute_tool` span. Ended on drop: OK after [`ToolRun::completed`], an error
/// after [`ToolRun::failed`] or when abandoned.
pub struct ToolRun {
    span: Option<Span>,
    failure: Option<(&'static str, String)>,
    completed: bool,
}

impl ToolRun {
    pub fn completed(mut self) {
        self.completed = true;
    }

    /// `error_type`: a low-cardinality reason (`fs_error`, `permission_rejected`, ...).
    pub fn failed(mut self, error_type: &'static str, message: impl Into<String>) {
        self.failure = Some((error_type, message.into()));
    }
}

impl Drop for ToolRun {
    fn drop(&mut self) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        let failure = match self.failure.take() {
            Some(failure) => Some(failure),
            None if !self.completed => Some(("aborted", "tool call abandoned".to_owned())),
            None => None,
        };
        if let Some((error_type, message)) = failure {
            span.set_attribute(KeyValue::new("error.type", error_type));
            span.set_status(Status::error(message));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn transport_needs_an_endpoint_and_follows_the_protocol_env() {
        assert_eq!(transport_from_env(env(&[])), None);
        assert_eq!(
            transport_from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])),
            None
        );
        assert_eq!(
            transport_from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            transport_from_env(env(&[ep])),
            Some(Transport::HttpProtobuf)
        );
        let traces_ep = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://x:4318/v1/traces",
        );
        assert_eq!(
            transport_from_env(env(&[traces_ep])),
            Some(Transport::HttpProtobuf)
        );
        for (value, expected) in [
            ("grpc", Transport::Grpc),
            ("GRPC", Transport::Grpc),
            ("http/json", Transport::HttpJson),
            ("http/protobuf", Transport::HttpProtobuf),
            ("bogus", Transport::HttpProtobuf),
        ] {
            let vars = [ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", value)];
            assert_eq!(transport_from_env(env(&vars)), Some(expected), "{value}");
        }
        let vars = [
            ep,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ];
        assert_eq!(transport_from_env(env(&vars)), Some(Transport::HttpJson));
    }

    #[test]
    fn sdk_disabled_and_exporter_none_turn_export_off() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(transport_from_env(env(&[ep, off])), None, "{off:?}");
        }
        let on = ("OTEL_SDK_DISABLED", "false");
        assert_eq!(
            transport_from_env(env(&[ep, on])),
            Some(Transport::HttpProtobuf)
        );
    }

    #[test]
    fn service_name_defaults_unless_the_env_names_one() {
        assert!(!service_name_in_env(env(&[])));
        assert!(service_name_in_env(env(&[("OTEL_SERVICE_NAME", "x")])));
        let attrs = ("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=y");
        assert!(service_name_in_env(env(&[attrs])));
        let attrs = ("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=y");
        assert!(!service_name_in_env(env(&[attrs])));
    }

    #[test]
    fn parent_comes_from_meta_root_keys_or_the_qwen_keys() {
        let trace = "0af7651916cd43dd8448eb211c80319c";
        let span = "b7ad6b7169203331";
        let tp = format!("00-{trace}-{span}-01");
        for meta in [
            json!({ "traceparent": tp, "tracestate": "k=v" }),
            json!({ "qwen.telemetry.traceparent": tp, "qwen.telemetry.tracestate": "k=v" }),
            json!({ "traceparent": tp, "qwen.telemetry.traceparent": "garbage", "tracestate": "k=v" }),
        ] {
            let meta = meta.as_object().unwrap().clone();
            let cx = parent_from_meta(Some(&meta));
            let sc = cx.span().span_context().clone();
            assert!(sc.is_valid() && sc.is_remote(), "{meta:?}");
            assert_eq!(sc.trace_id().to_string(), trace);
            assert_eq!(sc.span_id().to_string(), span);
            assert!(sc.is_sampled());
            assert_eq!(sc.trace_state().get("k"), Some("v"));
        }
        for meta in [
            json!({}),
            json!({ "traceparent": "" }),
            json!({ "traceparent": "not-a-traceparent" }),
            json!({ "traceparent": 42 }),
        ] {
            let meta = meta.as_object().unwrap().clone();
            let cx = parent_from_meta(Some(&meta));
            assert!(!cx.span().span_context().is_valid(), "{meta:?}");
        }
        assert!(!parent_from_meta(None).span().span_context().is_valid());
    }

    #[test]
    fn no_telemetry_means_no_spans_and_no_cost() {
        let trace = TurnTrace::start(None, None, "s", "hello there");
        let mut chat = trace.chat();
        chat.output("x y");
        chat.finish("stop");
        trace.tool("read_file", "call_1").completed();
        trace.finish(&Ok(PromptResponse::new(
            agent_client_protocol::v1::schema::StopReason::EndTurn,
        )));
        assert!(trace.0.is_none());
    }

    #[test]
    fn tokens_are_words() {
        assert_eq!(tokens(""), 0);
        assert_eq!(tokens(" read  a.txt \n"), 2);
    }
}

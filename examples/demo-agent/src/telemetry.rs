//! The demo agent's own OpenTelemetry traces, metrics and logs, each exported over OTLP when
//! (and only when) the standard OTLP environment asks for that signal.
//!
//! Per prompt:
//! - spans: `invoke_agent acpd-demo-agent` (INTERNAL; parent = the prompt's `_meta`
//!   traceparent, else a new trace) with children `chat demo-model` (CLIENT, the reply
//!   generation) and `execute_tool <read_file|write_file>` (INTERNAL);
//! - a log record `demo.user_prompt` (body and attribute `prompt` = the prompt text) in the
//!   `invoke_agent` span's context, so it carries its trace and span id (with traces off: the
//!   `_meta` parent's);
//! - metrics: counter `demo.prompts` and histogram `demo.turn.duration` (seconds), both with
//!   `demo.command` (the command word, or `echo`); the histogram also with `demo.outcome` (the
//!   stop reason, or `error`).
//!
//! The `telemetry <text>` command puts `<text>` into a span name (`demo.secret <text>`), span
//! attribute and span event attribute `demo.text`, a log record (`demo.secret`: body and
//! attribute `demo.text`) and a metric point (counter `demo.secret.count`, attribute
//! `demo.text`). `telemetry-flood <n>` emits n `demo.flood` spans and n `demo.flood` log
//! records as fast as the SDK takes them (see [`TurnTrace::flood`]); `telemetry-rate <per_s>
//! <secs>` emits `demo.rate` spans at a steady rate (see [`TurnTrace::rate`]).
//!
//! All three signals of a turn are force-flushed right after the turn's response; the providers
//! are shut down on stdin EOF. Both are blocking calls, so they run on one long-lived thread per
//! signal, bounded by a deadline.
//!
//! Environment read here, per signal `S` = `TRACES`, `METRICS`, `LOGS`: `OTEL_SDK_DISABLED`
//! (`true` disables all), `OTEL_S_EXPORTER` (`none` disables that signal),
//! `OTEL_EXPORTER_OTLP_S_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` (one must be set for the
//! signal), `OTEL_EXPORTER_OTLP_S_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`,
//! `http/json`, otherwise HTTP/protobuf), `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds; default
//! 1 s here rather than the SDK's 60 s, so a short-lived demo's metrics show up),
//! `OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BLRP_MAX_QUEUE_SIZE` (the flood's pace), and
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (the service name defaults to
//! `acpd-demo-agent`). The SDK itself reads the endpoints, headers (`OTEL_EXPORTER_OTLP_HEADERS`
//! and the per-signal `..._S_HEADERS`, sent as HTTP headers or gRPC metadata), timeouts,
//! sampler, `OTEL_BSP_*` and `OTEL_BLRP_*`. A signal without an endpoint builds nothing: no
//! exporter, no thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use agent_client_protocol::Error;
use agent_client_protocol::v1::schema::{Meta, PromptResponse};
use futures::channel::oneshot;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{
    ExporterBuildError, LogExporter, MetricExporter, Protocol, SpanExporter, WithExportConfig as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use crate::AGENT_NAME;

/// How long a turn waits for its telemetry to be flushed (the flush itself gives up after the
/// SDK's fixed 5 s).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stdin EOF waits for the final export.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Metric export interval unless `OTEL_METRIC_EXPORT_INTERVAL` sets one.
pub const METRIC_INTERVAL: Duration = Duration::from_secs(1);
/// The SDK's default span and log record queue size (`OTEL_BSP_MAX_QUEUE_SIZE`,
/// `OTEL_BLRP_MAX_QUEUE_SIZE`).
const SDK_QUEUE_SIZE: usize = 2048;

/// The model name the demo agent pretends to call.
pub const MODEL: &str = "demo-model";
/// The `gen_ai.provider.name` of that model.
pub const PROVIDER: &str = "demo";

/// One OTLP signal; each is switched on and routed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The signal's part of the per-signal variable names.
    fn env_name(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "metrics",
            Signal::Logs => "log records",
        }
    }
}

/// The OTLP transport chosen from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

/// A non-blank, trimmed variable.
fn var(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether (and how) to export `signal`, from the environment `env` (a lookup of variable
/// values). `None`: export nothing for it.
pub fn transport_for(signal: Signal, env: impl Fn(&str) -> Option<String>) -> Option<Transport> {
    let s = signal.env_name();
    if var(&env, "OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    if var(&env, &format!("OTEL_{s}_EXPORTER")).is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return None;
    }
    var(&env, &format!("OTEL_EXPORTER_OTLP_{s}_ENDPOINT"))
        .or_else(|| var(&env, "OTEL_EXPORTER_OTLP_ENDPOINT"))?;
    let protocol = var(&env, &format!("OTEL_EXPORTER_OTLP_{s}_PROTOCOL"))
        .or_else(|| var(&env, "OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    Some(match protocol.as_str() {
        "grpc" => Transport::Grpc,
        "http/json" => Transport::HttpJson,
        _ => Transport::HttpProtobuf,
    })
}

/// The metric export interval: `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds) when it is a
/// positive number, else [`METRIC_INTERVAL`].
pub fn metric_interval(env: impl Fn(&str) -> Option<String>) -> Duration {
    var(&env, "OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(METRIC_INTERVAL, Duration::from_millis)
}

/// A batch queue's size as the SDK reads it (an unparsable value is the default).
fn queue_size(env: &impl Fn(&str) -> Option<String>, name: &str) -> usize {
    env(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(SDK_QUEUE_SIZE)
}

/// How many spans and log records a flood emits between two flushes: half the smaller batch
/// queue (as configured for the SDK), so the flood's items never overflow a queue and the
/// other half is left to concurrent turns. The SDK drops what a full queue cannot take, so
/// without this pace the flood would be capped by the queue, silently.
pub fn flood_round(env: impl Fn(&str) -> Option<String>) -> usize {
    let spans = queue_size(&env, "OTEL_BSP_MAX_QUEUE_SIZE");
    let logs = queue_size(&env, "OTEL_BLRP_MAX_QUEUE_SIZE");
    (spans.min(logs) / 2).max(1)
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

/// The same builder calls for each signal's exporter type.
macro_rules! otlp_exporter {
    ($exporter:ty, $transport:expr) => {
        match $transport {
            Transport::Grpc => <$exporter>::builder().with_tonic().build(),
            Transport::HttpJson => <$exporter>::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .build(),
            // Explicitly: the SDK's own default with `http-json` compiled in would be JSON.
            Transport::HttpProtobuf => <$exporter>::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build(),
        }
    };
}

/// Reports a signal that cannot be exported and goes on without it.
fn built<T>(signal: Signal, exporter: Result<T, ExporterBuildError>) -> Option<T> {
    exporter
        .inspect_err(|e| {
            let what = signal.as_str();
            eprintln!("{AGENT_NAME}: OTLP export of {what} disabled: {e}");
        })
        .ok()
}

struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

struct Metrics {
    provider: SdkMeterProvider,
    instruments: Instruments,
}

#[derive(Clone)]
struct Instruments {
    prompts: Counter<u64>,
    turn_duration: Histogram<f64>,
    secrets: Counter<u64>,
}

struct Logs {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
}

/// The telemetry providers of this process, one per exported signal.
pub struct Telemetry {
    traces: Option<Traces>,
    metrics: Option<Metrics>,
    logs: Option<Logs>,
    /// See [`flood_round`].
    flood_round: usize,
    /// Only the first failed flush of each signal is reported on stderr.
    warned: [AtomicBool; 3],
    /// The threads that run each signal's blocking calls, started with the first call.
    flushers: [std::sync::OnceLock<std::io::Result<Flusher>>; 3],
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(AGENT_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl Telemetry {
    /// Builds the OTLP exporters and providers of the signals the environment asks for; `None`
    /// when it asks for none. Must run inside a tokio runtime (the gRPC exporters' channels are
    /// created there).
    pub fn from_env() -> Option<Telemetry> {
        let env = |k: &str| std::env::var(k).ok();
        let [traces, metrics, logs] = Signal::ALL.map(|signal| transport_for(signal, env));
        if traces.is_none() && metrics.is_none() && logs.is_none() {
            return None;
        }
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if !service_name_in_env(env) {
            resource = resource.with_service_name(AGENT_NAME);
        }
        let resource = resource.build();

        let traces = traces
            .and_then(|t| built(Signal::Traces, otlp_exporter!(SpanExporter, t)))
            .map(|exporter| {
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build();
                let tracer = provider.tracer_with_scope(scope());
                Traces { provider, tracer }
            });
        let metrics = metrics
            .and_then(|t| built(Signal::Metrics, otlp_exporter!(MetricExporter, t)))
            .map(|exporter| {
                let reader = PeriodicReader::builder(exporter)
                    .with_interval(metric_interval(env))
                    .build();
                let provider = SdkMeterProvider::builder()
                    .with_reader(reader)
                    .with_resource(resource.clone())
                    .build();
                let meter = provider.meter_with_scope(scope());
                let instruments = Instruments {
                    prompts: meter
                        .u64_counter("demo.prompts")
                        .with_description("Prompts received")
                        .with_unit("{prompt}")
                        .build(),
                    turn_duration: meter
                        .f64_histogram("demo.turn.duration")
                        .with_description("Time from a prompt's arrival to the end of its turn")
                        .with_unit("s")
                        .with_boundaries(vec![
                            0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
                        ])
                        .build(),
                    secrets: meter
                        .u64_counter("demo.secret.count")
                        .with_description("`telemetry <text>` prompts, by text")
                        .build(),
                };
                Metrics {
                    provider,
                    instruments,
                }
            });
        let logs = logs
            .and_then(|t| built(Signal::Logs, otlp_exporter!(LogExporter, t)))
            .map(|exporter| {
                let provider = SdkLoggerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build();
                let logger = provider.logger_with_scope(scope());
                Logs { provider, logger }
            });
        if traces.is_none() && metrics.is_none() && logs.is_none() {
            return None;
        }
        Some(Telemetry {
            traces,
            metrics,
            logs,
            flood_round: flood_round(env),
            warned: Default::default(),
            flushers: Default::default(),
        })
    }

    /// Whether `signal` is exported.
    pub fn exports(&self, signal: Signal) -> bool {
        match signal {
            Signal::Traces => self.traces.is_some(),
            Signal::Metrics => self.metrics.is_some(),
            Signal::Logs => self.logs.is_some(),
        }
    }

    /// Queues `call` on the flush thread of `signal`, starting it first if need be.
    fn flusher<T: Send + 'static>(
        &self,
        signal: Signal,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, String> {
        match self.flushers[signal as usize].get_or_init(|| Flusher::start(signal)) {
            Ok(f) => f.run(call),
            Err(e) => Err(format!("no thread for it: {e}")),
        }
    }

    /// Runs one blocking call per exported signal, concurrently, each on its signal's
    /// [`Flusher`] thread, and waits for them until `deadline`. Returns the signals that did
    /// not confirm, with the reason.
    ///
    /// Not on tokio's blocking pool: the runtime waits for those threads when it shuts down,
    /// and a metric flush is bounded only by the export timeout (the SDK waits for the periodic
    /// reader without a deadline), so a dead collector would hold the exit for 10 s. A thread
    /// still waiting when the process exits just ends with it.
    async fn each_provider(
        &self,
        deadline: tokio::time::Instant,
        traces: impl FnOnce(SdkTracerProvider) -> OTelSdkResult + Send + 'static,
        metrics: impl FnOnce(SdkMeterProvider) -> OTelSdkResult + Send + 'static,
        logs: impl FnOnce(SdkLoggerProvider) -> OTelSdkResult + Send + 'static,
    ) -> Vec<(Signal, String)> {
        let mut jobs = Vec::new();
        if let Some(t) = &self.traces {
            let p = t.provider.clone();
            jobs.push((
                Signal::Traces,
                self.flusher(Signal::Traces, move || traces(p)),
            ));
        }
        if let Some(m) = &self.metrics {
            let p = m.provider.clone();
            jobs.push((
                Signal::Metrics,
                self.flusher(Signal::Metrics, move || metrics(p)),
            ));
        }
        if let Some(l) = &self.logs {
            let p = l.provider.clone();
            jobs.push((Signal::Logs, self.flusher(Signal::Logs, move || logs(p))));
        }
        let waits = jobs.into_iter().map(|(signal, job)| async move {
            let problem = match job {
                Err(e) => e,
                Ok(answer) => match tokio::time::timeout_at(deadline, answer).await {
                    Ok(Ok(Ok(()))) => return None,
                    Ok(Ok(Err(e))) => e.to_string(),
                    Ok(Err(_)) => "the call panicked".to_owned(),
                    Err(_) => "no answer in time".to_owned(),
                },
            };
            Some((signal, problem))
        });
        futures::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Exports the spans, metrics and log records so far, waiting at most [`FLUSH_TIMEOUT`].
    /// Returns whether every signal confirmed.
    pub async fn flush(&self) -> bool {
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        let failed = self
            .each_provider(
                deadline,
                |p| p.force_flush(),
                |p| p.force_flush(),
                |p| p.force_flush(),
            )
            .await;
        for (signal, problem) in &failed {
            if !self.warned[*signal as usize].swap(true, Ordering::Relaxed) {
                let what = signal.as_str();
                eprintln!("{AGENT_NAME}: exporting {what} failed (reported once): {problem}");
            }
        }
        failed.is_empty()
    }

    /// Exports what is left and stops the exporters, waiting at most [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(&self) {
        // The SDK bounds the calls itself; the margin covers a worker stuck behind a flush.
        let bound = SHUTDOWN_TIMEOUT + Duration::from_millis(500);
        let failed = self
            .each_provider(
                tokio::time::Instant::now() + bound,
                |p| p.shutdown_with_timeout(SHUTDOWN_TIMEOUT),
                |p| p.shutdown_with_timeout(SHUTDOWN_TIMEOUT),
                |p| p.shutdown_with_timeout(SHUTDOWN_TIMEOUT),
            )
            .await;
        for (signal, problem) in failed {
            let what = signal.as_str();
            eprintln!("{AGENT_NAME}: telemetry shutdown ({what}): {problem}");
        }
    }
}

/// Blocking calls queued for the flush thread of one signal. The SDK's processor answers
/// flushes one at a time anyway, so one thread loses no concurrency; this many calls waiting
/// (one per session whose turn just ended, and then some) means the exporter is stuck (a dead
/// collector), and a newer call is refused: what it would have flushed leaves with the queued
/// flushes or the next batch.
const FLUSH_QUEUE: usize = 64;

/// A long-lived thread that runs one signal's blocking calls in turn. Each turn flushes all
/// three signals; a thread started per call cost three thread creations a turn (`perf trace`:
/// three `clone3` per prompt), about as much CPU as the daemon spends on the prompt.
struct Flusher {
    jobs: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
}

impl Flusher {
    fn start(signal: Signal) -> std::io::Result<Flusher> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(FLUSH_QUEUE);
        std::thread::Builder::new()
            .name(format!("otel-flush-{}", signal.as_str()))
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(Flusher { jobs })
    }

    /// Queues `call`; its result arrives on the returned channel.
    fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, String> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move || {
            let _ = tx.send(call());
        });
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => {
                format!("{FLUSH_QUEUE} earlier calls still wait for the exporter")
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => "the flush thread ended".to_owned(),
        })?;
        Ok(rx)
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

/// The telemetry of one prompt turn (its `invoke_agent` span, log records and metric
/// points), or nothing when not exporting.
#[derive(Clone, Default)]
pub struct TurnTrace(Option<TurnInner>);

#[derive(Clone)]
struct TurnInner {
    telemetry: Arc<Telemetry>,
    /// Holds the `invoke_agent` span when tracing, else just the `_meta` parent (so log
    /// records still join the caller's trace).
    cx: Context,
    session_id: String,
    input_tokens: i64,
    /// A command word from a fixed list: a metric attribute of bounded cardinality.
    command: &'static str,
    started: Instant,
}

/// How often `telemetry-rate` emits the spans that have come due.
pub const RATE_TICK: Duration = Duration::from_millis(10);

/// What a `telemetry-rate` sent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub spans: u64,
    /// From the first span to the last.
    pub took: Duration,
    /// The flush at the end confirmed.
    pub flushed: bool,
}

/// What a `telemetry-flood` sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flood {
    pub spans: u64,
    pub logs: u64,
    /// Flushes waited for (between rounds and at the end).
    pub flushes: u64,
    /// Every flush confirmed: nothing the flood emitted was left in (or dropped from) a queue.
    pub flushed: bool,
}

impl TurnInner {
    fn tracer(&self) -> Option<&SdkTracer> {
        self.telemetry.traces.as_ref().map(|t| &t.tracer)
    }

    /// Emits a log record in the span context of `cx` (when it has one).
    fn log(
        &self,
        cx: &Context,
        event: &'static str,
        body: String,
        attributes: impl IntoIterator<Item = (&'static str, opentelemetry::logs::AnyValue)>,
    ) {
        let Some(logs) = &self.telemetry.logs else {
            return;
        };
        let mut record = logs.logger.create_log_record();
        record.set_event_name(event);
        record.set_timestamp(SystemTime::now());
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.set_body(body.into());
        record.add_attributes(attributes);
        record.add_attribute("session.id", self.session_id.clone());
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            record.set_trace_context(sc.trace_id(), sc.span_id(), Some(sc.trace_flags()));
        }
        logs.logger.emit(record);
    }

    /// Starts a child span of the turn's span (`None` when not tracing).
    fn child(&self, name: String, attributes: Vec<KeyValue>) -> Option<Span> {
        let tracer = self.tracer()?;
        Some(
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Internal)
                .with_attributes(attributes)
                .start_with_context(tracer, &self.cx),
        )
    }
}

impl TurnTrace {
    /// Starts the turn's `invoke_agent` span under the `_meta` parent (if any), logs the
    /// prompt and counts it. `command`: the prompt's command word, `echo` for plain text.
    pub fn start(
        telemetry: Option<&Arc<Telemetry>>,
        meta: Option<&Meta>,
        session_id: &str,
        prompt_text: &str,
        command: &'static str,
    ) -> TurnTrace {
        let Some(telemetry) = telemetry else {
            return TurnTrace(None);
        };
        let parent = parent_from_meta(meta);
        let cx = match &telemetry.traces {
            Some(traces) => {
                let span = traces
                    .tracer
                    .span_builder(format!("invoke_agent {AGENT_NAME}"))
                    .with_kind(SpanKind::Internal)
                    .with_attributes([
                        KeyValue::new("gen_ai.operation.name", "invoke_agent"),
                        KeyValue::new("gen_ai.agent.name", AGENT_NAME),
                        KeyValue::new("gen_ai.provider.name", PROVIDER),
                        KeyValue::new("gen_ai.conversation.id", session_id.to_owned()),
                        KeyValue::new("session.id", session_id.to_owned()),
                    ])
                    .start_with_context(&traces.tracer, &parent);
                parent.with_span(span)
            }
            None => parent,
        };
        let inner = TurnInner {
            telemetry: telemetry.clone(),
            cx,
            session_id: session_id.to_owned(),
            input_tokens: tokens(prompt_text),
            command,
            started: Instant::now(),
        };
        inner.log(
            &inner.cx,
            "demo.user_prompt",
            prompt_text.to_owned(),
            [
                ("prompt", prompt_text.to_owned().into()),
                ("demo.command", command.into()),
            ],
        );
        if let Some(metrics) = &telemetry.metrics {
            let attributes = [KeyValue::new("demo.command", command)];
            metrics.instruments.prompts.add(1, &attributes);
        }
        TurnTrace(Some(inner))
    }

    /// Ends the `invoke_agent` span with the turn's outcome and records the turn's duration.
    pub fn finish(&self, result: &Result<PromptResponse, Error>) {
        let Some(inner) = &self.0 else { return };
        // Without tracing, `cx` holds the remote parent: not ours to annotate or end.
        let none = Context::new();
        let span = match inner.telemetry.traces {
            Some(_) => inner.cx.span(),
            None => none.span(),
        };
        let outcome = match result {
            Ok(response) => {
                let reason = serde_json::to_value(response.stop_reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                span.set_attribute(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    strings(&[&reason]),
                ));
                reason
            }
            Err(e) => {
                span.set_attribute(KeyValue::new("error.type", e.code.value().to_string()));
                span.set_status(Status::error(e.message.clone()));
                "error".to_owned()
            }
        };
        span.end();
        if let Some(metrics) = &inner.telemetry.metrics {
            let attributes = [
                KeyValue::new("demo.command", inner.command),
                KeyValue::new("demo.outcome", outcome),
            ];
            let took = inner.started.elapsed().as_secs_f64();
            metrics.instruments.turn_duration.record(took, &attributes);
        }
    }

    /// Starts a `chat demo-model` span (the reply generation); it ends when dropped.
    pub fn chat(&self) -> LlmCall {
        let span = self.0.as_ref().and_then(|inner| {
            let tracer = inner.tracer()?;
            Some(
                tracer
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
                    .start_with_context(tracer, &inner.cx),
            )
        });
        LlmCall {
            span,
            output_tokens: 0,
            finish_reason: None,
        }
    }

    /// Starts an `execute_tool <name>` span; it ends when dropped.
    pub fn tool(&self, name: &'static str, call_id: &str) -> ToolRun {
        let span = self.0.as_ref().and_then(|inner| {
            inner.child(
                format!("execute_tool {name}"),
                vec![
                    KeyValue::new("gen_ai.operation.name", "execute_tool"),
                    KeyValue::new("gen_ai.tool.name", name),
                    KeyValue::new("gen_ai.tool.call.id", call_id.to_owned()),
                    KeyValue::new("gen_ai.tool.type", "function"),
                ],
            )
        });
        ToolRun {
            span,
            failure: None,
            completed: false,
        }
    }

    /// Puts `text` verbatim into every place telemetry can carry it: a span name
    /// (`demo.secret <text>`), a span attribute and a span event attribute (`demo.text`), a log
    /// record's body and attribute (event `demo.secret`, in that span's context) and a metric
    /// data point's attribute (`demo.secret.count{demo.text=<text>}`). For redaction tests.
    pub fn secret(&self, text: &str) {
        let Some(inner) = &self.0 else { return };
        let span = inner.child(
            format!("demo.secret {text}"),
            vec![KeyValue::new("demo.text", text.to_owned())],
        );
        let own_span = span.is_some();
        let cx = match span {
            Some(mut span) => {
                span.add_event(
                    "demo.secret",
                    vec![KeyValue::new("demo.text", text.to_owned())],
                );
                inner.cx.with_span(span)
            }
            None => inner.cx.clone(),
        };
        inner.log(
            &cx,
            "demo.secret",
            text.to_owned(),
            [("demo.text", text.to_owned().into())],
        );
        if own_span {
            cx.span().end();
        }
        if let Some(metrics) = &inner.telemetry.metrics {
            let attributes = [KeyValue::new("demo.text", text.to_owned())];
            metrics.instruments.secrets.add(1, &attributes);
        }
    }

    /// Emits `n` spans `demo.flood` (children of the turn's span, attribute `demo.flood.index`)
    /// and `n` log records `demo.flood` (in those spans' contexts) as fast as the SDK takes
    /// them: in rounds of [`flood_round`] items, each followed by a flush, so no batch queue
    /// overflows. After the first flush that does not confirm (a slow or dead collector) the
    /// rest goes out without waiting, and the SDK drops what its queues cannot hold.
    pub async fn flood(&self, n: u64) -> Flood {
        let Some(inner) = &self.0 else {
            return Flood {
                flushed: true,
                ..Flood::default()
            };
        };
        let telemetry = &inner.telemetry;
        if telemetry.traces.is_none() && telemetry.logs.is_none() {
            return Flood {
                flushed: true,
                ..Flood::default()
            };
        }
        let round = u64::try_from(telemetry.flood_round).unwrap_or(u64::MAX);
        let mut flood = Flood {
            flushed: true,
            ..Flood::default()
        };
        for i in 0..n {
            let span = inner.child(
                "demo.flood".to_owned(),
                vec![KeyValue::new(
                    "demo.flood.index",
                    i64::try_from(i).unwrap_or(i64::MAX),
                )],
            );
            let own_span = span.is_some();
            let cx = match span {
                Some(span) => inner.cx.with_span(span),
                None => inner.cx.clone(),
            };
            if telemetry.logs.is_some() {
                inner.log(&cx, "demo.flood", format!("flood {i}"), []);
                flood.logs += 1;
            }
            if own_span {
                cx.span().end();
                flood.spans += 1;
            }
            let emitted = i + 1;
            if flood.flushed && (emitted % round == 0 || emitted == n) {
                flood.flushes += 1;
                flood.flushed = telemetry.flush().await;
            }
        }
        flood
    }
}

impl TurnTrace {
    /// Emits `per_sec` spans `demo.rate` per second for `secs` seconds (children of the turn's
    /// span, attribute `demo.rate.index`), paced by the clock: every [`RATE_TICK`] it emits the
    /// spans due by then, so a late tick catches up and the rate holds. Then flushes once. The
    /// SDK's batch queue must hold what arrives between its exports (`OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BSP_SCHEDULE_DELAY`), or it drops the excess silently.
    pub async fn rate(&self, per_sec: u64, secs: f64) -> Rate {
        let Some(inner) = self.0.as_ref().filter(|i| i.telemetry.traces.is_some()) else {
            return Rate {
                flushed: true,
                ..Rate::default()
            };
        };
        let total = (per_sec as f64 * secs).round() as u64;
        let started = Instant::now();
        let mut tick = tokio::time::interval(RATE_TICK);
        let mut emitted = 0u64;
        while emitted < total {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * per_sec as f64) as u64).min(total);
            for i in emitted..due {
                let index = i64::try_from(i).unwrap_or(i64::MAX);
                let attributes = vec![KeyValue::new("demo.rate.index", index)];
                if let Some(mut span) = inner.child("demo.rate".to_owned(), attributes) {
                    span.end();
                }
            }
            emitted = emitted.max(due);
        }
        let took = started.elapsed();
        Rate {
            spans: emitted,
            took,
            flushed: inner.telemetry.flush().await,
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
        for signal in Signal::ALL {
            let transport = |vars: &[(&str, &str)]| transport_for(signal, env(vars));
            assert_eq!(transport(&[]), None);
            assert_eq!(transport(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), None);
            assert_eq!(transport(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None);
            let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
            assert_eq!(transport(&[ep]), Some(Transport::HttpProtobuf));
            for (value, expected) in [
                ("grpc", Transport::Grpc),
                ("GRPC", Transport::Grpc),
                (" http/json ", Transport::HttpJson),
                ("http/protobuf", Transport::HttpProtobuf),
                ("bogus", Transport::HttpProtobuf),
            ] {
                let vars = [ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", value)];
                assert_eq!(transport(&vars), Some(expected), "{signal:?} {value}");
            }
        }
    }

    #[test]
    fn each_signal_has_its_own_endpoint_protocol_and_switch() {
        let of = |vars: &[(&str, &str)]| Signal::ALL.map(|s| transport_for(s, env(vars)));
        let (h, j, g) = (
            Some(Transport::HttpProtobuf),
            Some(Transport::HttpJson),
            Some(Transport::Grpc),
        );
        // A per-signal endpoint turns on that signal only.
        let metrics_ep = (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://x:4318/v1/metrics",
        );
        assert_eq!(of(&[metrics_ep]), [None, h, None]);
        let traces_ep = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://x:4318/v1/traces",
        );
        let logs_ep = ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://x:4318/v1/logs");
        assert_eq!(of(&[traces_ep, logs_ep]), [h, None, h]);
        // A per-signal protocol beats the general one, for its signal only.
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let grpc = ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        assert_eq!(of(&[ep, grpc]), [g, g, g]);
        let vars = [
            ep,
            grpc,
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(of(&vars), [j, g, h]);
        let vars = [ep, ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")];
        assert_eq!(of(&vars), [h, g, h]);
        // `none` switches off one signal; the others keep exporting.
        assert_eq!(of(&[ep, ("OTEL_TRACES_EXPORTER", "none")]), [None, h, h]);
        assert_eq!(of(&[ep, ("OTEL_METRICS_EXPORTER", "None")]), [h, None, h]);
        assert_eq!(of(&[ep, ("OTEL_LOGS_EXPORTER", " none")]), [h, h, None]);
        assert_eq!(of(&[ep, ("OTEL_LOGS_EXPORTER", "otlp")]), [h, h, h]);
    }

    #[test]
    fn sdk_disabled_and_exporter_none_turn_export_off() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        for signal in Signal::ALL {
            let transport = |vars: &[(&str, &str)]| transport_for(signal, env(vars));
            let own_none = format!("OTEL_{}_EXPORTER", signal.env_name());
            for off in [
                ("OTEL_SDK_DISABLED", "true"),
                ("OTEL_SDK_DISABLED", "TRUE"),
                (own_none.as_str(), "none"),
            ] {
                assert_eq!(transport(&[ep, off]), None, "{signal:?} {off:?}");
            }
            let on = ("OTEL_SDK_DISABLED", "false");
            assert_eq!(transport(&[ep, on]), Some(Transport::HttpProtobuf));
        }
    }

    #[test]
    fn metric_interval_defaults_to_a_second_unless_the_env_sets_one() {
        let interval = |v: &str| metric_interval(env(&[("OTEL_METRIC_EXPORT_INTERVAL", v)]));
        assert_eq!(metric_interval(env(&[])), METRIC_INTERVAL);
        assert_eq!(interval("250"), Duration::from_millis(250));
        assert_eq!(interval(" 60000 "), Duration::from_secs(60));
        for unusable in ["0", "-5", "1s", ""] {
            assert_eq!(interval(unusable), METRIC_INTERVAL, "{unusable:?}");
        }
    }

    #[test]
    fn a_flood_round_is_half_the_smaller_batch_queue() {
        assert_eq!(flood_round(env(&[])), 1024);
        let bsp = ("OTEL_BSP_MAX_QUEUE_SIZE", "100000");
        assert_eq!(flood_round(env(&[bsp])), 1024);
        let blrp = ("OTEL_BLRP_MAX_QUEUE_SIZE", "100000");
        assert_eq!(flood_round(env(&[bsp, blrp])), 50000);
        assert_eq!(flood_round(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "10")])), 5);
        assert_eq!(flood_round(env(&[("OTEL_BLRP_MAX_QUEUE_SIZE", "1")])), 1);
        // The SDK ignores what it cannot parse, and so do we.
        assert_eq!(
            flood_round(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")])),
            1024
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
        let trace = TurnTrace::start(None, None, "s", "hello there", "echo");
        trace.secret("sk-live-1234567890abcdef");
        let mut chat = trace.chat();
        chat.output("x y");
        chat.finish("stop");
        trace.tool("read_file", "call_1").completed();
        trace.finish(&Ok(PromptResponse::new(
            agent_client_protocol::v1::schema::StopReason::EndTurn,
        )));
        let flood = futures::executor::block_on(trace.flood(5));
        let nothing = Flood {
            flushed: true,
            ..Flood::default()
        };
        assert_eq!(flood, nothing);
        assert!(trace.0.is_none());
    }

    #[test]
    fn tokens_are_words() {
        assert_eq!(tokens(""), 0);
        assert_eq!(tokens(" read  a.txt \n"), 2);
    }
}

//! Telemetry: traces, metrics and logs over OTLP (config + standard `OTEL_*` env), the export
//! stage every item passes before it leaves the process, the embedded trace view, Prometheus
//! text at `/metrics`, propagation helpers, and a bounded shutdown. Human logs go to stderr;
//! nothing is ever written to stdout.

pub mod drops;
pub mod export;
pub mod metrics;
pub mod outcome;
pub mod prometheus;
pub mod propagation;
pub mod queue;
pub mod sanitize;
pub mod semconv;
pub mod spans;
pub mod view;

pub use metrics::metrics;

static META_KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The `_meta` keys that carry trace context into the agent (`telemetry.meta_keys`).
pub fn meta_keys() -> &'static [String] {
    META_KEYS.get_or_init(|| TelemetryConfig::default().meta_keys)
}

static CAPTURE_CONTENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static TRACE_PROBES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `GET /health` gets a span (`telemetry.trace_probes`); it is always counted.
pub fn trace_probes() -> bool {
    TRACE_PROBES.load(Ordering::Relaxed)
}

/// Whether prompt text and tool arguments go on spans (`telemetry.capture_content`).
pub fn capture_content() -> bool {
    CAPTURE_CONTENT.load(Ordering::Relaxed)
}

use opentelemetry::KeyValue;
use opentelemetry::global;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{ManualReader, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::config::TelemetryConfig;
use view::TraceRing;

pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    logger: Option<SdkLoggerProvider>,
    reader: Option<SharedReader>,
    gateway: Option<Arc<crate::gateway::Gateway>>,
    pub ring: Arc<TraceRing>,
    /// Environment the agent children get so their spans join the trace (see `child_env`).
    child_env: Vec<(String, String)>,
    shutdown_timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    Grpc,
    Http(Protocol),
}

pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_true(name: &str) -> bool {
    env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl Telemetry {
    /// Sets up providers and the log subscriber. Must run inside the tokio runtime (the gRPC
    /// exporter's channel is created there).
    pub async fn init(cfg: &TelemetryConfig) -> anyhow::Result<Arc<Self>> {
        let _ = META_KEYS.set(cfg.meta_keys.clone());
        CAPTURE_CONTENT.store(cfg.capture_content, Ordering::Relaxed);
        TRACE_PROBES.store(cfg.trace_probes, Ordering::Relaxed);
        let ring = Arc::new(TraceRing::new(cfg.view_traces, cfg.view_spans_per_trace));
        let shutdown_timeout = Duration::from_millis(cfg.shutdown_timeout_ms);
        if !cfg.enabled || env_true("OTEL_SDK_DISABLED") {
            install_subscriber(None);
            return Ok(Arc::new(Self {
                tracer: None,
                meter: None,
                logger: None,
                reader: None,
                gateway: None,
                ring,
                child_env: Vec::new(),
                shutdown_timeout,
            }));
        }
        global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
                Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
            ]),
        );
        let resource = resource(cfg);
        let service = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.to_string())
            .unwrap_or_else(|| "acpd".into());

        // The gateway first: the daemon's own metrics leave through it, and the agents
        // export to it.
        let gateway = crate::gateway::Gateway::start(cfg, ring.clone()).await?;
        let otlp_spans = match exports("TRACES", cfg) {
            Some(t) => Some(build_span_exporter(t, cfg)?),
            None => None,
        };
        let collector = otlp_spans.is_some();
        let endpoint = |s| crate::gateway::target_url(s, cfg).unwrap_or_default();
        let stage = export::StageSpanExporter::new(
            otlp_spans,
            endpoint(drops::Signal::Traces),
            ring.clone(),
            service,
        );
        let processor = queue::QueueProcessor::new(
            stage,
            queue::QueueConfig::from_env(Duration::from_millis(cfg.span_delay_ms)),
            Arc::default(),
        )
        .map_err(|e| anyhow::anyhow!("span export thread: {e}"))?;
        let tracer = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.clone())
            .build();
        global::set_tracer_provider(tracer.clone());
        spans::use_provider(&tracer);

        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let mut meter = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_view(|_: &opentelemetry_sdk::metrics::Instrument| {
                opentelemetry_sdk::metrics::Stream::builder()
                    .with_cardinality_limit(METRIC_CARDINALITY_LIMIT)
                    .build()
                    .ok()
            })
            .with_reader(reader.clone());
        if exports("METRICS", cfg).is_some() {
            let mut periodic = PeriodicReader::builder(crate::gateway::DaemonMetrics);
            if let (None, Some(ms)) = (env("OTEL_METRIC_EXPORT_INTERVAL"), cfg.metric_interval_ms) {
                periodic = periodic.with_interval(Duration::from_millis(ms));
            }
            meter = meter.with_reader(periodic.build());
        }
        let meter = meter.build();
        global::set_meter_provider(meter.clone());
        metrics::install();
        metrics::register_active_requests();
        register_observers(&ring);

        let logger = match exports("LOGS", cfg) {
            Some(t) => {
                let stage = export::StageLogExporter::new(
                    build_log_exporter(t, cfg)?,
                    endpoint(drops::Signal::Logs),
                );
                let processor = queue::LogQueueProcessor::new(
                    stage,
                    queue::QueueConfig::logs_from_env(Duration::from_millis(1000)),
                    Arc::default(),
                )
                .map_err(|e| anyhow::anyhow!("log export thread: {e}"))?;
                Some(
                    SdkLoggerProvider::builder()
                        .with_resource(resource)
                        .with_log_processor(processor)
                        .build(),
                )
            }
            None => None,
        };
        install_subscriber(logger.as_ref());

        let child_env = if collector && cfg.agent_direct {
            collector_env(cfg)
        } else if cfg.agent_ingest {
            crate::gateway::child_env(&gateway)
        } else {
            Vec::new()
        };
        Ok(Arc::new(Self {
            tracer: Some(tracer),
            meter: Some(meter),
            logger,
            reader: Some(reader),
            gateway: Some(gateway),
            ring,
            child_env,
            shutdown_timeout,
        }))
    }

    /// Variables the agent child gets on top of its scrubbed environment, and the names it must
    /// not inherit (per-signal OTLP settings that would bypass them).
    pub fn child_env(&self) -> (Vec<(String, String)>, Vec<String>) {
        // The daemon's own service name would relabel the agent's spans as the daemon's.
        let mut remove = vec!["OTEL_SERVICE_NAME".to_string()];
        if !self.child_env.is_empty() {
            remove.extend(
                crate::gateway::CHILD_ENV_REMOVED
                    .iter()
                    .map(|s| s.to_string()),
            );
            for signal in ["TRACES", "METRICS", "LOGS"] {
                for k in ["ENDPOINT", "PROTOCOL", "HEADERS"] {
                    remove.push(format!("OTEL_EXPORTER_OTLP_{signal}_{k}"));
                }
            }
        }
        (self.child_env.clone(), remove)
    }

    /// `/metrics`: the same instruments as OTLP, in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let Some(reader) = &self.reader else {
            return String::new();
        };
        let mut rm = opentelemetry_sdk::metrics::data::ResourceMetrics::default();
        match reader.collect(&mut rm) {
            Ok(()) => prometheus::encode(&rm),
            Err(e) => {
                tracing::warn!(error = %e, "metrics collection failed");
                String::new()
            }
        }
    }

    /// Flushes and shuts down all three signals in parallel, within one deadline: a dead
    /// collector can delay the exit by at most `shutdown_timeout`.
    pub async fn shutdown(&self) {
        let deadline = self.shutdown_timeout;
        let (tx, rx) = std::sync::mpsc::channel::<bool>();
        let mut pending = 0;
        let mut spawn = |f: Box<dyn FnOnce() -> bool + Send>| {
            let tx = tx.clone();
            pending += 1;
            std::thread::spawn(move || {
                let _ = tx.send(f());
            });
        };
        if let Some(t) = self.tracer.clone() {
            spawn(Box::new(move || t.shutdown_with_timeout(deadline).is_ok()));
        }
        if let Some(m) = self.meter.clone() {
            // Its last export goes into the gateway, flushed below.
            spawn(Box::new(move || m.shutdown_with_timeout(deadline).is_ok()));
        }
        if let Some(l) = self.logger.clone() {
            spawn(Box::new(move || l.shutdown_with_timeout(deadline).is_ok()));
        }
        if let Some(g) = self.gateway.clone() {
            // What the agents sent before they exited, and the daemon's last metrics.
            spawn(Box::new(move || g.flush(deadline)));
        }
        drop(tx);
        // The exporters' threads need the runtime alive (gRPC): wait off the runtime threads.
        let unflushed = tokio::task::spawn_blocking(move || {
            let until = std::time::Instant::now() + deadline;
            let mut flushed = 0;
            for _ in 0..pending {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(true) => flushed += 1,
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
            pending - flushed
        })
        .await
        .unwrap_or(0);
        if unflushed > 0 {
            eprintln!(
                "acpd: telemetry shutdown: {unflushed} pipeline(s) not flushed within {deadline:?}"
            );
        }
    }
}

/// Which transport a signal exports with, or None when it is not exported at all.
pub(crate) fn exports(signal: &str, cfg: &TelemetryConfig) -> Option<Transport> {
    if env(&format!("OTEL_{signal}_EXPORTER")).is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return None;
    }
    let configured = cfg.endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some();
    if !configured {
        return None;
    }
    let protocol = cfg
        .protocol
        .clone()
        .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    Some(match protocol.trim().to_ascii_lowercase().as_str() {
        "grpc" => Transport::Grpc,
        "http/json" => Transport::Http(Protocol::HttpJson),
        _ => Transport::Http(Protocol::HttpBinary),
    })
}

/// Builds one signal's OTLP exporter. Only what the config sets is set programmatically, so the
/// standard env vars keep working for everything else.
macro_rules! otlp_exporter {
    ($builder:expr, $transport:expr, $cfg:expr, $path:literal) => {{
        let cfg: &TelemetryConfig = $cfg;
        let timeout = cfg.timeout_ms.map(Duration::from_millis);
        match $transport {
            Transport::Grpc => {
                let mut b = $builder.with_tonic();
                if let Some(e) = &cfg.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if let Some(t) = timeout {
                    b = b.with_timeout(t);
                }
                if !cfg.headers.is_empty() {
                    let mut h = axum::http::HeaderMap::new();
                    for (k, v) in &cfg.headers {
                        if let (Ok(k), Ok(v)) = (
                            k.parse::<axum::http::HeaderName>(),
                            v.parse::<axum::http::HeaderValue>(),
                        ) {
                            h.insert(k, v);
                        }
                    }
                    b = b.with_metadata(
                        opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(h),
                    );
                }
                b.build()
            }
            Transport::Http(protocol) => {
                let mut b = $builder.with_http().with_protocol(protocol);
                if let Some(e) = &cfg.endpoint {
                    b = b.with_endpoint(format!("{}{}", e.trim_end_matches('/'), $path));
                }
                if let Some(t) = timeout {
                    b = b.with_timeout(t);
                }
                if !cfg.headers.is_empty() {
                    b = b.with_headers(
                        cfg.headers
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<HashMap<_, _>>(),
                    );
                }
                b.build()
            }
        }
    }};
}

fn build_span_exporter(
    t: Transport,
    cfg: &TelemetryConfig,
) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    Ok(otlp_exporter!(
        opentelemetry_otlp::SpanExporter::builder(),
        t,
        cfg,
        "/v1/traces"
    )?)
}

fn build_log_exporter(
    t: Transport,
    cfg: &TelemetryConfig,
) -> anyhow::Result<opentelemetry_otlp::LogExporter> {
    Ok(otlp_exporter!(
        opentelemetry_otlp::LogExporter::builder(),
        t,
        cfg,
        "/v1/logs"
    )?)
}

/// What a child needs to export to the same collector when the daemon's endpoint came from
/// `acpd.toml` (env-configured endpoints are inherited as they are).
fn collector_env(cfg: &TelemetryConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(e) = &cfg.endpoint {
        out.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), e.clone()));
        if let Some(p) = &cfg.protocol {
            out.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), p.clone()));
        }
        if !cfg.headers.is_empty() {
            let h: Vec<String> = cfg
                .headers
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push(("OTEL_EXPORTER_OTLP_HEADERS".into(), h.join(",")));
        }
    }
    out
}

fn resource(cfg: &TelemetryConfig) -> Resource {
    let mut b = Resource::builder();
    // The env (OTEL_SERVICE_NAME) wins over the config, which wins over the default.
    if env("OTEL_SERVICE_NAME").is_none() {
        b = b.with_service_name(cfg.service_name.clone().unwrap_or_else(|| "acpd".into()));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    b.with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        KeyValue::new("host.name", host),
        KeyValue::new("process.pid", i64::from(std::process::id())),
    ])
    .build()
}

fn register_observers(ring: &Arc<TraceRing>) {
    let ring = ring.clone();
    let _ = global::meter("acpd")
        .u64_observable_counter(semconv::M_TELEMETRY_DROPPED)
        .with_unit("{item}")
        .with_description("Telemetry items lost, by signal, stage and source")
        .with_callback(move |o| {
            let (spans, _traces) = ring.dropped();
            for (signal, stage, source, n) in drops::all() {
                // The view's ring counts its own evictions, whoever sent the spans.
                let n = if stage == drops::Stage::TraceView {
                    if source == drops::Source::Daemon {
                        spans
                    } else {
                        continue;
                    }
                } else {
                    n
                };
                o.observe(
                    n,
                    &[
                        KeyValue::new(semconv::SIGNAL, signal.as_str()),
                        KeyValue::new(semconv::DROP_STAGE, stage.as_str()),
                        KeyValue::new(DROP_SOURCE, source.as_str()),
                    ],
                );
            }
        })
        .build();
}

/// Attribute sets per instrument and reader, past which the SDK folds measurements into one
/// `otel.metric.overflow` set. The SDK's default (2,000) preallocates a table that large for
/// every instrument and reader: 135 KiB each, 4 MiB of the daemon's idle heap. The daemon's
/// attributes are low-cardinality by design (docs/TELEMETRY.md); 256 leaves room for the
/// plugins' own counters.
pub const METRIC_CARDINALITY_LIMIT: usize = 256;

/// Whose items were lost (`daemon` or `agent`); the trace view's evictions are reported as
/// `daemon`, the view holding both.
pub const DROP_SOURCE: &str = "acpd.drop.source";

/// stderr for people (`ACPD_LOG`/`RUST_LOG`, default `info`), plus OTel log records when a
/// logger provider exists. Exporter and HTTP-stack internals never feed back into OTel logs.
fn install_subscriber(logger: Option<&SdkLoggerProvider>) {
    let filter = env("ACPD_LOG")
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let otel = logger.map(|l| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(l).with_filter(
            EnvFilter::new("info,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,hyper=off,h2=off,tonic=off,tower=off,reqwest=off"),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
}

/// Shares one `ManualReader` between the meter provider and `/metrics`.
#[derive(Clone, Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<opentelemetry_sdk::metrics::Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(
        &self,
        rm: &mut opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(
        &self,
        kind: opentelemetry_sdk::metrics::InstrumentKind,
    ) -> opentelemetry_sdk::metrics::Temporality {
        self.0.temporality(kind)
    }
}

//! The agent telemetry gateway: acpd is the OTLP endpoint of every agent it spawns, so what an
//! agent emits (where prompts, file contents and tool arguments live) passes the same export
//! stage as the daemon's own items before anything leaves the host.
//!
//! ```text
//!  agent child ──OTLP/HTTP (protobuf, JSON, gzip) or OTLP/gRPC, own credential──┐
//!                                                                               ▼
//!            receive (auth, bounded body, decode) ─► per-signal bounded queue ─► stage
//!            (full: HTTP 429 / gRPC UNAVAILABLE, counted)                         │
//!  daemon's own metrics (PeriodicReader) ─────────────────────────────────────────┤
//!                                                                               ▼
//!   attribution (acpd.child.id, acpd.workspace.id, session.id, acpd.prompt.id)
//!   ─► enrichment (the child's and the prompt's enrichment attributes)
//!   ─► redaction plugins (export-spans / export-logs, fail closed) ─► sanitiser
//!   ─► trace view (traces) and the configured collector (forward: the agent's resource kept)
//! ```
//!
//! The daemon's own spans and logs take the SDK path (`telemetry::export`), through the same
//! plugins and sanitiser; every loss on either path is counted in `acpd.telemetry.dropped`.

mod convert;
mod forward;
mod receive;
mod registry;
mod stage;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use forward::parse_headers;
pub use receive::KEY_HEADER;
use registry::{ChildEntry, Registry};

use crate::config::TelemetryConfig;
use crate::telemetry::drops::{self, Signal, Source, Stage};
use crate::telemetry::outcome;
use crate::telemetry::view::TraceRing;

/// What one queue may hold: items (spans, data points, records) and encoded bytes.
const QUEUE_ITEMS: usize = 16_384;
const QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Requests in one queue at once (each within the item and byte bounds).
const QUEUE_REQUESTS: usize = 1024;

/// One OTLP export request.
#[derive(Debug, Clone)]
pub enum Batch {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
}

impl Batch {
    pub fn signal(&self) -> Signal {
        match self {
            Batch::Traces(_) => Signal::Traces,
            Batch::Metrics(_) => Signal::Metrics,
            Batch::Logs(_) => Signal::Logs,
        }
    }

    /// Spans, metric data points or log records.
    pub fn items(&self) -> usize {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        match self {
            Batch::Traces(r) => r
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum(),
            Batch::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .map(|m| match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Sum(g)) => g.data_points.len(),
                    Some(Data::Histogram(g)) => g.data_points.len(),
                    Some(Data::ExponentialHistogram(g)) => g.data_points.len(),
                    Some(Data::Summary(g)) => g.data_points.len(),
                    None => 0,
                })
                .sum(),
            Batch::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum(),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Batch::Traces(r) => r.encoded_len(),
            Batch::Metrics(r) => r.encoded_len(),
            Batch::Logs(r) => r.encoded_len(),
        }
    }
}

struct Job {
    batch: Batch,
    source: Source,
    child: Option<Arc<ChildEntry>>,
    items: usize,
    bytes: usize,
}

/// The queue full: the sender is told to retry later.
#[derive(Debug)]
pub struct Full;

/// One signal's bounded queue and the thread that drains it through the stage.
struct Lane {
    signal: Signal,
    tx: SyncSender<Job>,
    items: AtomicUsize,
    bytes: AtomicUsize,
    /// Jobs admitted and not yet finished, for flushing.
    pending: Mutex<usize>,
    idle: Condvar,
}

impl Lane {
    fn admit(&self, job: Job) -> Result<(), Full> {
        let (n, b) = (job.items, job.bytes);
        let items = self.items.fetch_add(n, Ordering::AcqRel) + n;
        let bytes = self.bytes.fetch_add(b, Ordering::AcqRel) + b;
        // One request larger than the whole queue still gets in when the queue is empty.
        let over = (items > QUEUE_ITEMS && items != n) || (bytes > QUEUE_BYTES && bytes != b);
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        if over || self.tx.try_send(job).is_err() {
            self.done(n, b);
            return Err(Full);
        }
        Ok(())
    }

    fn done(&self, items: usize, bytes: usize) {
        self.items.fetch_sub(items, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *p = p.saturating_sub(1);
        if *p == 0 {
            self.idle.notify_all();
        }
    }

    /// Waits until everything admitted so far has been processed, or the deadline.
    fn flush(&self, until: Instant) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while *p > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .idle
                .wait_timeout(p, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

pub struct Gateway {
    base_url: String,
    registry: Registry,
    lanes: [Arc<Lane>; 3],
}

static GATEWAY: OnceLock<Arc<Gateway>> = OnceLock::new();

/// The running gateway, when there is one.
pub fn current() -> Option<&'static Arc<Gateway>> {
    GATEWAY.get()
}

impl Gateway {
    /// Starts the receiver on 127.0.0.1 (a free port) and one worker thread per signal. Must
    /// run inside the runtime.
    pub async fn start(cfg: &TelemetryConfig, ring: Arc<TraceRing>) -> anyhow::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mut lanes = Vec::new();
        let mut workers = Vec::new();
        for signal in Signal::ALL {
            let (tx, rx) = sync_channel(QUEUE_REQUESTS);
            let lane = Arc::new(Lane {
                signal,
                tx,
                items: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                pending: Mutex::new(0),
                idle: Condvar::new(),
            });
            let target = forward::target(signal, cfg);
            if let Some(t) = &target {
                forward::validate(t)?;
            }
            lanes.push(lane.clone());
            workers.push((lane, rx, target));
        }
        let lanes: [Arc<Lane>; 3] = lanes
            .try_into()
            .map_err(|_| anyhow::anyhow!("three signals"))?;
        let gateway = Arc::new(Self {
            base_url: format!("http://{addr}"),
            registry: Registry::default(),
            lanes,
        });
        for (lane, rx, target) in workers {
            let gateway = Arc::downgrade(&gateway);
            let ring = ring.clone();
            std::thread::Builder::new()
                .name(format!("acpd-gateway-{}", lane.signal.as_str()))
                .spawn(move || {
                    // Its own runtime: forwarding never competes with the API's threads, and
                    // outlives the main runtime's shutdown while the last batches leave.
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!("gateway {} worker: {e}", lane.signal.as_str());
                            return;
                        }
                    };
                    let forwarder = target.and_then(|t| {
                        let _in = rt.enter();
                        forward::Forwarder::new(t)
                            .inspect_err(|e| tracing::error!("telemetry forwarder: {e:#}"))
                            .ok()
                    });
                    Worker {
                        gateway,
                        lane,
                        forwarder,
                        ring,
                        rt,
                    }
                    .run(rx)
                })?;
        }
        receive::serve(listener, gateway.clone());
        let _ = GATEWAY.set(gateway.clone());
        Ok(gateway)
    }

    /// The receiver's base URL (`/v1/<signal>` for OTLP/HTTP; gRPC on the same port).
    pub fn endpoint(&self) -> &str {
        &self.base_url
    }

    /// A credential for a child about to be spawned, and the environment carrying it.
    pub fn credentials(&self, child_id: &str, workspace_id: &str) -> Vec<(String, String)> {
        let key = self.registry.register(child_id, workspace_id);
        vec![(
            "OTEL_EXPORTER_OTLP_HEADERS".into(),
            format!("{KEY_HEADER}={key}"),
        )]
    }

    pub fn enrich_child(&self, child_id: &str, attrs: Vec<opentelemetry::KeyValue>) {
        self.registry.enrich_child(child_id, attrs);
    }

    /// The child exited; what it sent before is still processed, nothing after is accepted.
    pub fn forget_child(&self, child_id: &str) {
        self.registry.forget(child_id);
    }

    /// A prompt went to a child: items in its trace get its session and prompt.
    pub fn note_prompt(
        &self,
        trace_id: [u8; 16],
        child_id: &str,
        session_id: &str,
        prompt_id: &str,
        enrichment: Vec<opentelemetry::KeyValue>,
    ) {
        self.registry
            .note_prompt(trace_id, child_id, session_id, prompt_id, enrichment);
    }

    fn lane(&self, signal: Signal) -> &Lane {
        &self.lanes[Signal::ALL.iter().position(|s| *s == signal).unwrap_or(0)]
    }

    /// Queues a batch for the stage. A full queue is counted (stage `ingest` for agents,
    /// `export_queue` for the daemon's own items).
    fn submit(
        &self,
        batch: Batch,
        source: Source,
        child: Option<Arc<ChildEntry>>,
    ) -> Result<(), Full> {
        let signal = batch.signal();
        let items = batch.items();
        let job = Job {
            bytes: batch.encoded_len(),
            batch,
            source,
            child,
            items,
        };
        self.lane(signal).admit(job).inspect_err(|_| {
            let stage = match source {
                Source::Agent => Stage::Ingest,
                Source::Daemon => Stage::ExportQueue,
            };
            drops::add(signal, stage, source, items as u64);
        })
    }

    /// Waits until what was received so far has been processed and forwarded, or `deadline`.
    /// Blocking: call it off the runtime's threads.
    pub fn flush(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        self.lanes.iter().all(|l| l.flush(until))
    }
}

struct Worker {
    gateway: std::sync::Weak<Gateway>,
    lane: Arc<Lane>,
    forwarder: Option<forward::Forwarder>,
    ring: Arc<TraceRing>,
    rt: tokio::runtime::Runtime,
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        // Processing must not create spans that feed back into the pipeline.
        let _quiet = opentelemetry::Context::enter_telemetry_suppressed_scope();
        while let Ok(job) = rx.recv() {
            let (items, bytes) = (job.items, job.bytes);
            self.process(job);
            self.lane.done(items, bytes);
        }
    }

    fn process(&self, job: Job) {
        let Some(gateway) = self.gateway.upgrade() else {
            return;
        };
        let Job {
            mut batch,
            source,
            child,
            items,
            ..
        } = job;
        let child = child.as_deref();
        match &mut batch {
            Batch::Traces(r) => {
                stage::traces(r, child, &gateway.registry);
                self.ring.push(crate::telemetry::view::from_proto(r));
            }
            Batch::Metrics(r) => stage::metrics(r, child),
            Batch::Logs(r) => stage::logs(r, child, &gateway.registry),
        }
        let Some(f) = &self.forwarder else {
            return;
        };
        let outcome = outcome::of(self.lane.signal);
        if outcome.stopped() {
            outcome.skipped(source, items as u64);
            return;
        }
        match self.rt.block_on(f.send(&batch)) {
            Ok(()) => outcome.ok(),
            Err(why) => outcome.failed(source, items as u64, &why, &f.target.url),
        }
    }
}

/// Where a signal is forwarded, for reports (None: not exported).
pub fn target_url(signal: Signal, cfg: &TelemetryConfig) -> Option<String> {
    forward::target(signal, cfg).map(|t| t.url)
}

/// Variables an agent child must not inherit when it exports to the gateway: per-signal
/// endpoints would send a signal elsewhere, past the plugins (Qwen Code reads its own and the
/// standard ones as per-signal endpoints), and a per-signal headers variable would replace the
/// credential.
pub const CHILD_ENV_REMOVED: &[&str] = &[
    "QWEN_TELEMETRY_OTLP_TRACES_ENDPOINT",
    "QWEN_TELEMETRY_OTLP_METRICS_ENDPOINT",
    "QWEN_TELEMETRY_OTLP_LOGS_ENDPOINT",
];

/// The environment that points an agent child at the gateway: the standard OTLP variables and
/// the known agents' own knobs where those win over the standard ones or over their settings
/// files. Whether an agent's telemetry is on stays the operator's choice ([`SWITCH_ON`]). The
/// credential (`OTEL_EXPORTER_OTLP_HEADERS`, which all of them send over HTTP and gRPC) is
/// added per child at spawn ([`Gateway::credentials`]).
pub fn child_env(g: &Gateway) -> Vec<(String, String)> {
    let base = g.endpoint().to_string();
    [
        // The OpenTelemetry SDKs (the demo agent, Claude Code); OTLP/HTTP with protobuf.
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        // Qwen Code: its variables win over OTEL_* and its settings file; an outfile (set in
        // settings) would turn OTLP off, and an empty value overrides it.
        ("QWEN_TELEMETRY_OTLP_ENDPOINT", base.as_str()),
        ("QWEN_TELEMETRY_OTLP_PROTOCOL", "http"),
        ("QWEN_TELEMETRY_OUTFILE", ""),
        // Gemini CLI likewise; target `gcp` would export straight to Google Cloud.
        ("GEMINI_TELEMETRY_OTLP_ENDPOINT", base.as_str()),
        ("GEMINI_TELEMETRY_OTLP_PROTOCOL", "http"),
        ("GEMINI_TELEMETRY_TARGET", "local"),
        ("GEMINI_TELEMETRY_USE_COLLECTOR", "false"),
        ("GEMINI_TELEMETRY_OUTFILE", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `[agent] telemetry = true`: switches the known agents' own telemetry on (it is off by
/// default in each). Never set otherwise, and never switched off by acpd.
pub const SWITCH_ON: &[(&str, &str)] = &[
    ("QWEN_TELEMETRY_ENABLED", "true"),
    ("GEMINI_TELEMETRY_ENABLED", "true"),
    ("CLAUDE_CODE_ENABLE_TELEMETRY", "1"),
    ("CLAUDE_CODE_ENHANCED_TELEMETRY_BETA", "1"),
    ("OTEL_TRACES_EXPORTER", "otlp"),
    ("OTEL_METRICS_EXPORTER", "otlp"),
    ("OTEL_LOGS_EXPORTER", "otlp"),
];

/// The daemon's own metrics join the agents' on their way out, so their attributes pass the
/// same redaction before they leave (the SDK's exporter would send them as they are).
#[derive(Debug)]
pub struct DaemonMetrics;

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for DaemonMetrics {
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        if let Some(g) = current() {
            let _ = g.submit(Batch::Metrics(metrics.into()), Source::Daemon, None);
        }
        Ok(())
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        opentelemetry_sdk::metrics::Temporality::Cumulative
    }
}

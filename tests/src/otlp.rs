//! An in-process OTLP receiver for tests: HTTP/protobuf, HTTP/JSON or gRPC on 127.0.0.1:0,
//! accepting traces, metrics and logs. It keeps every decoded export request and offers
//! flattened views (spans, log records, metric points) plus waits that wake on each export.
//!
//! Failure modes for exporter tests: [`Receiver::start_failing`] answers every export with an
//! error status, [`Receiver::start_hanging`] accepts every request and never answers (until the
//! receiver is dropped).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The OTLP transport a [`Receiver`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::HttpProtobuf, Protocol::HttpJson, Protocol::Grpc];

    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` for this transport.
    pub fn env_value(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
            Protocol::Grpc => "grpc",
        }
    }

    fn is_http(self) -> bool {
        !matches!(self, Protocol::Grpc)
    }
}

/// One of the three OTLP signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    /// `traces`, `metrics` or `logs` (the HTTP path segment).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// One export request as it arrived, whatever the receiver answered.
#[derive(Clone, Debug)]
pub struct RecvRequest {
    pub signal: Signal,
    /// Request headers (HTTP) or metadata (gRPC); names lower-case, last value wins.
    pub headers: BTreeMap<String, String>,
    /// Set when the body could not be decoded (the receiver answered 400 / INVALID_ARGUMENT).
    pub decode_error: Option<String>,
}

/// A span, flattened with its resource's `service.name`.
#[derive(Clone, Debug, PartialEq)]
pub struct RecvSpan {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// 16 hex digits, or "" for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `Span.SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub service_name: String,
    pub scope_name: String,
    pub attributes: Map<String, Value>,
    /// All resource attributes.
    pub resource: Map<String, Value>,
    /// OTLP `Status.StatusCode`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// (name, attributes) per span event.
    pub events: Vec<(String, Map<String, Value>)>,
    /// (trace id, span id) per link, hex.
    pub links: Vec<(String, String)>,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl RecvSpan {
    /// The attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// The attribute `key` when it is a string.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// A log record, flattened with its resource's `service.name`.
#[derive(Clone, Debug, PartialEq)]
pub struct RecvLog {
    /// 32 hex digits, or "" when the record has no trace context.
    pub trace_id: String,
    /// 16 hex digits, or "".
    pub span_id: String,
    pub severity_number: i32,
    pub severity_text: String,
    /// The body as text: a string body verbatim, anything else as JSON.
    pub body: String,
    pub event_name: String,
    pub attributes: Map<String, Value>,
    pub service_name: String,
    pub scope_name: String,
    pub time_ns: u64,
}

/// One data point of a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct RecvPoint {
    pub attributes: Map<String, Value>,
    /// Sum and gauge: the value. Histograms and summaries: the count.
    pub value: f64,
    /// Histograms and summaries: the sum of the recorded values.
    pub sum: Option<f64>,
    /// Explicit-bucket histograms: the bucket bounds and per-bucket counts.
    pub bounds: Vec<f64>,
    pub bucket_counts: Vec<u64>,
}

/// One metric of one export (a cumulative metric shows up once per export).
#[derive(Clone, Debug, PartialEq)]
pub struct RecvMetric {
    pub name: String,
    pub unit: String,
    pub description: String,
    /// "sum", "gauge", "histogram", "exponential_histogram", "summary" or "none".
    pub kind: &'static str,
    /// Sums only.
    pub is_monotonic: bool,
    /// OTLP `AggregationTemporality` (1 delta, 2 cumulative); 0 for gauges.
    pub temporality: i32,
    pub points: Vec<RecvPoint>,
    pub service_name: String,
    pub scope_name: String,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Answer,
    Fail(u16),
    Hang,
    /// Answers success without decoding or storing: a collector on another machine, whose
    /// work must not be charged to the daemon in throughput runs.
    Sink,
}

#[derive(Default)]
struct Store {
    traces: Vec<ExportTraceServiceRequest>,
    /// Spans in `traces`, kept as they arrive so load runs can count without decoding again.
    span_count: usize,
    sink_requests: u64,
    sink_bytes: u64,
    metrics: Vec<ExportMetricsServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    requests: Vec<RecvRequest>,
}

impl Store {
    fn push_trace(&mut self, r: ExportTraceServiceRequest) {
        self.span_count += r
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum::<usize>();
        self.traces.push(r);
    }
}

struct Shared {
    /// Switchable while running: a collector that goes away and comes back.
    mode: Mutex<Mode>,
    store: Mutex<Store>,
    /// Signalled after every request (answered or not).
    changed: Notify,
    /// Becomes true when the receiver is dropped: hanging requests then end.
    closed: watch::Sender<bool>,
}

impl Shared {
    fn record(&self, request: RecvRequest) {
        self.store.lock().unwrap().requests.push(request);
        self.changed.notify_waiters();
    }

    fn store(&self, f: impl FnOnce(&mut Store)) {
        f(&mut self.store.lock().unwrap());
        self.changed.notify_waiters();
    }

    async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }
}

/// An OTLP receiver on 127.0.0.1; stops when dropped.
pub struct Receiver {
    protocol: Protocol,
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.closed.send_replace(true);
        self.server.abort();
    }
}

impl Receiver {
    /// A receiver that stores every export and answers success.
    pub async fn start(protocol: Protocol) -> Result<Receiver> {
        Self::start_with(protocol, Mode::Answer).await
    }

    /// A receiver that accepts connections and requests but never answers (until dropped).
    pub async fn start_hanging(protocol: Protocol) -> Result<Receiver> {
        Self::start_with(protocol, Mode::Hang).await
    }

    /// From now on, answer and store every export (a collector that came back). Requests left
    /// hanging earlier stay hanging until the receiver is dropped.
    pub fn recover(&self) {
        *self.shared.mode.lock().unwrap() = Mode::Answer;
    }

    /// A receiver that answers success and keeps only request and byte counts (no decoding).
    pub async fn start_sink(protocol: Protocol) -> Result<Receiver> {
        Self::start_with(protocol, Mode::Sink).await
    }

    /// Export requests and body bytes a sink received.
    pub fn sink_totals(&self) -> (u64, u64) {
        let s = self.shared.store.lock().unwrap();
        (s.sink_requests, s.sink_bytes)
    }

    /// A receiver that answers every export with the HTTP `status` (e.g. 503), or for gRPC
    /// with the matching code (503 UNAVAILABLE, 429 RESOURCE_EXHAUSTED, 500 INTERNAL, ...).
    /// Nothing is stored; [`Receiver::requests`] still lists the attempts.
    pub async fn start_failing(protocol: Protocol, status: u16) -> Result<Receiver> {
        Self::start_with(protocol, Mode::Fail(status)).await
    }

    async fn start_with(protocol: Protocol, mode: Mode) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            store: Mutex::default(),
            changed: Notify::new(),
            closed: watch::Sender::new(false),
        });
        let server = if protocol.is_http() {
            tokio::spawn(serve_http(listener, shared.clone()))
        } else {
            tokio::spawn(serve_grpc(listener, shared.clone()))
        };
        Ok(Receiver {
            protocol,
            addr,
            shared,
            server,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// `http://127.0.0.1:PORT`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT` (HTTP exporters
    /// append `/v1/<signal>` to it; gRPC uses it as is).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL of one signal: what a programmatic `with_endpoint` or a
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` needs (HTTP: `.../v1/<signal>`; gRPC: the endpoint).
    pub fn signal_endpoint(&self, signal: Signal) -> String {
        if self.protocol.is_http() {
            format!("{}/v1/{}", self.endpoint(), signal.as_str())
        } else {
            self.endpoint()
        }
    }

    /// The value for `OTEL_EXPORTER_OTLP_PROTOCOL`: "http/protobuf", "http/json" or "grpc".
    pub fn protocol_env(&self) -> &'static str {
        self.protocol.env_value()
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_PROTOCOL` for a child process.
    pub fn otel_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                self.protocol_env().to_owned(),
            ),
        ]
    }

    /// Every export request so far, in arrival order, whatever was answered.
    pub fn requests(&self) -> Vec<RecvRequest> {
        self.shared.store.lock().unwrap().requests.clone()
    }

    /// The decoded trace export requests answered with success.
    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.shared.store.lock().unwrap().traces.clone()
    }

    pub fn metrics_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.shared.store.lock().unwrap().metrics.clone()
    }

    pub fn logs_requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.shared.store.lock().unwrap().logs.clone()
    }

    /// All received spans, in arrival order.
    pub fn spans(&self) -> Vec<RecvSpan> {
        flatten_spans(&self.shared.store.lock().unwrap().traces)
    }

    /// All received log records, in arrival order.
    pub fn logs(&self) -> Vec<RecvLog> {
        flatten_logs(&self.shared.store.lock().unwrap().logs)
    }

    /// All received metrics, in arrival order (one entry per metric per export).
    pub fn metrics(&self) -> Vec<RecvMetric> {
        flatten_metrics(&self.shared.store.lock().unwrap().metrics)
    }

    /// The most recently received metric called `name`.
    pub fn latest_metric(&self, name: &str) -> Option<RecvMetric> {
        self.metrics().into_iter().rev().find(|m| m.name == name)
    }

    /// Waits until `pred` holds for all spans received so far; returns them.
    pub async fn wait_for_spans(
        &self,
        within: Duration,
        pred: impl Fn(&[RecvSpan]) -> bool,
    ) -> Result<Vec<RecvSpan>> {
        self.wait_until(within, "spans", Self::spans, pred).await
    }

    /// Spans received so far (cheap: no decoding or copying).
    pub fn span_count(&self) -> usize {
        self.shared.store.lock().unwrap().span_count
    }

    /// Waits until at least `n` spans have arrived; returns the count.
    pub async fn wait_for_span_count(&self, n: usize, within: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let count = self.span_count();
            if count >= n {
                return Ok(count);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!("OTLP receiver: {count} of {n} spans within {within:?}");
            }
        }
    }

    /// Waits until `pred` holds for all log records received so far; returns them.
    pub async fn wait_for_logs(
        &self,
        within: Duration,
        pred: impl Fn(&[RecvLog]) -> bool,
    ) -> Result<Vec<RecvLog>> {
        self.wait_until(within, "logs", Self::logs, pred).await
    }

    /// Waits until `pred` holds for all metrics received so far; returns them.
    pub async fn wait_for_metrics(
        &self,
        within: Duration,
        pred: impl Fn(&[RecvMetric]) -> bool,
    ) -> Result<Vec<RecvMetric>> {
        self.wait_until(within, "metrics", Self::metrics, pred)
            .await
    }

    /// Waits until `pred` holds for all requests received so far (answered or not).
    pub async fn wait_for_requests(
        &self,
        within: Duration,
        pred: impl Fn(&[RecvRequest]) -> bool,
    ) -> Result<Vec<RecvRequest>> {
        self.wait_until(within, "requests", Self::requests, pred)
            .await
    }

    async fn wait_until<T>(
        &self,
        within: Duration,
        what: &str,
        view: impl Fn(&Self) -> Vec<T>,
        pred: impl Fn(&[T]) -> bool,
    ) -> Result<Vec<T>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Register before looking, so an export between the look and the wait still wakes us.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let items = view(self);
            if pred(&items) {
                return Ok(items);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!(
                    "OTLP receiver ({}): {what} condition not met within {within:?}; received: {}",
                    self.protocol_env(),
                    self.summary()
                );
            }
        }
    }

    /// A one-paragraph account of everything received, for failure messages.
    pub fn summary(&self) -> String {
        let spans = self.spans();
        let logs = self.logs();
        let metrics = self.metrics();
        let requests = self.requests();
        let mut s = String::new();
        let count = |signal| requests.iter().filter(|r| r.signal == signal).count();
        let _ = write!(
            s,
            "{} requests (traces {}, metrics {}, logs {})",
            requests.len(),
            count(Signal::Traces),
            count(Signal::Metrics),
            count(Signal::Logs)
        );
        let errors: Vec<_> = requests
            .iter()
            .filter_map(|r| r.decode_error.as_deref())
            .collect();
        if !errors.is_empty() {
            let _ = write!(s, "; decode errors {errors:?}");
        }
        let spans: Vec<String> = spans
            .iter()
            .map(|sp| {
                format!(
                    "{} [{}] {}/{}<-{}",
                    sp.name, sp.service_name, sp.trace_id, sp.span_id, sp.parent_span_id
                )
            })
            .collect();
        let _ = write!(s, "; {} spans {spans:?}", spans.len());
        let logs: Vec<String> = logs
            .iter()
            .map(|l| format!("{} {} {:?}", l.severity_text, l.event_name, l.body))
            .collect();
        let _ = write!(s, "; {} logs {logs:?}", logs.len());
        let mut names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let _ = write!(s, "; metrics {names:?}");
        s
    }
}

// ---- HTTP ----

async fn serve_http(listener: TcpListener, shared: Arc<Shared>) {
    use axum::routing::post;
    let route = |signal: Signal| {
        let shared = shared.clone();
        post(move |headers: HeaderMap, body: Bytes| async move {
            handle_http(&shared, signal, &headers, &body).await
        })
    };
    let app = axum::Router::new()
        .route("/v1/traces", route(Signal::Traces))
        .route("/v1/metrics", route(Signal::Metrics))
        .route("/v1/logs", route(Signal::Logs));
    let closing = shared.clone();
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { closing.closed().await })
        .await;
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

type Push = Box<dyn FnOnce(&mut Store) + Send>;

async fn handle_http(
    shared: &Shared,
    signal: Signal,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut request = RecvRequest {
        signal,
        headers: header_map(headers),
        decode_error: None,
    };
    let mode = *shared.mode.lock().unwrap();
    match mode {
        Mode::Hang => {
            shared.record(request);
            shared.closed().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Mode::Fail(status) => {
            shared.record(request);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (status, "failing on purpose").into_response();
        }
        Mode::Sink => {
            let mut s = shared.store.lock().unwrap();
            s.sink_requests += 1;
            s.sink_bytes += body.len() as u64;
            return StatusCode::OK.into_response();
        }
        Mode::Answer => {}
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let decoded = match signal {
        Signal::Traces => decode::<ExportTraceServiceRequest>(json, body)
            .map(|r| Box::new(move |s: &mut Store| s.push_trace(r)) as Push),
        Signal::Metrics => decode::<ExportMetricsServiceRequest>(json, body)
            .map(|r| Box::new(move |s: &mut Store| s.metrics.push(r)) as Push),
        Signal::Logs => decode::<ExportLogsServiceRequest>(json, body)
            .map(|r| Box::new(move |s: &mut Store| s.logs.push(r)) as Push),
    };
    match decoded {
        Ok(push) => {
            shared.store(|s| {
                push(s);
                s.requests.push(request);
            });
            if json {
                ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
            } else {
                // Every Export*ServiceResponse without partial success encodes to no bytes.
                let content_type = [(header::CONTENT_TYPE, "application/x-protobuf")];
                (content_type, Vec::new()).into_response()
            }
        }
        Err(e) => {
            request.decode_error = Some(e.clone());
            shared.record(request);
            (StatusCode::BAD_REQUEST, e).into_response()
        }
    }
}

fn decode<T>(json: bool, body: &[u8]) -> Result<T, String>
where
    T: prost::Message + Default + for<'de> serde::Deserialize<'de>,
{
    if json {
        serde_json::from_slice(body).map_err(|e| format!("JSON: {e}"))
    } else {
        T::decode(body).map_err(|e| format!("protobuf: {e}"))
    }
}

// ---- gRPC ----

struct Grpc(Arc<Shared>);

async fn serve_grpc(listener: TcpListener, shared: Arc<Shared>) {
    let svc = Arc::new(Grpc(shared.clone()));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let _ = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::from_arc(svc.clone()))
        .add_service(MetricsServiceServer::from_arc(svc.clone()))
        .add_service(LogsServiceServer::from_arc(svc))
        .serve_with_incoming_shutdown(incoming, async move { shared.closed().await })
        .await;
}

fn grpc_code(http_status: u16) -> tonic::Code {
    match http_status {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        429 => tonic::Code::ResourceExhausted,
        500 => tonic::Code::Internal,
        501 => tonic::Code::Unimplemented,
        502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    }
}

impl Grpc {
    /// Records the request and, unless the receiver answers normally, fails or hangs.
    async fn admit<T>(
        &self,
        signal: Signal,
        request: tonic::Request<T>,
    ) -> Result<(T, RecvRequest), tonic::Status> {
        let headers = header_map(&request.metadata().clone().into_headers());
        let record = RecvRequest {
            signal,
            headers,
            decode_error: None,
        };
        let mode = *self.0.mode.lock().unwrap();
        match mode {
            Mode::Answer | Mode::Sink => Ok((request.into_inner(), record)),
            Mode::Fail(status) => {
                self.0.record(record);
                Err(tonic::Status::new(grpc_code(status), "failing on purpose"))
            }
            Mode::Hang => {
                self.0.record(record);
                self.0.closed().await;
                Err(tonic::Status::unavailable("receiver closed"))
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (body, record) = self.admit(Signal::Traces, request).await?;
        self.0.store(|s| {
            s.push_trace(body);
            s.requests.push(record);
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let (body, record) = self.admit(Signal::Metrics, request).await?;
        self.0.store(|s| {
            s.metrics.push(body);
            s.requests.push(record);
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let (body, record) = self.admit(Signal::Logs, request).await?;
        self.0.store(|s| {
            s.logs.push(body);
            s.requests.push(record);
        });
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

// ---- flattening ----

/// Lower-case hex of an id; "" for an empty (absent) id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An OTLP `AnyValue` as JSON: strings, ints, doubles, bools, arrays, maps; bytes as hex.
pub fn any_value_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_value_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attributes(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        #[allow(unreachable_patterns)]
        Some(_) => Value::Null,
    }
}

/// OTLP key-values as a JSON map (later duplicates win).
pub fn attributes(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .map(|kv| {
            let value = kv.value.as_ref().map_or(Value::Null, any_value_json);
            (kv.key.clone(), value)
        })
        .collect()
}

fn resource_parts(resource: Option<&Resource>) -> (Map<String, Value>, String) {
    let attrs = resource
        .map(|r| attributes(&r.attributes))
        .unwrap_or_default();
    let service = attrs
        .get("service.name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (attrs, service)
}

fn flatten_spans(requests: &[ExportTraceServiceRequest]) -> Vec<RecvSpan> {
    let mut out = Vec::new();
    for rs in requests.iter().flat_map(|r| &r.resource_spans) {
        let (resource, service_name) = resource_parts(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            let scope_name = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &ss.spans {
                let status = span.status.clone().unwrap_or_default();
                out.push(RecvSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    service_name: service_name.clone(),
                    scope_name: scope_name.clone(),
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                    status_code: status.code,
                    status_message: status.message,
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn flatten_logs(requests: &[ExportLogsServiceRequest]) -> Vec<RecvLog> {
    let mut out = Vec::new();
    for rl in requests.iter().flat_map(|r| &r.resource_logs) {
        let (_, service_name) = resource_parts(rl.resource.as_ref());
        for sl in &rl.scope_logs {
            let scope_name = sl
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for record in &sl.log_records {
                let body = match record.body.as_ref().map(any_value_json) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                };
                out.push(RecvLog {
                    trace_id: hex(&record.trace_id),
                    span_id: hex(&record.span_id),
                    severity_number: record.severity_number,
                    severity_text: record.severity_text.clone(),
                    body,
                    event_name: record.event_name.clone(),
                    attributes: attributes(&record.attributes),
                    service_name: service_name.clone(),
                    scope_name: scope_name.clone(),
                    time_ns: record.time_unix_nano,
                });
            }
        }
    }
    out
}

fn number(value: Option<&number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        #[allow(clippy::cast_precision_loss)]
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => f64::NAN,
    }
}

#[allow(clippy::cast_precision_loss)]
fn flatten_metrics(requests: &[ExportMetricsServiceRequest]) -> Vec<RecvMetric> {
    let mut out = Vec::new();
    for rm in requests.iter().flat_map(|r| &r.resource_metrics) {
        let (_, service_name) = resource_parts(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            let scope_name = sm
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for m in &sm.metrics {
                let number_point =
                    |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| RecvPoint {
                        attributes: attributes(&p.attributes),
                        value: number(p.value.as_ref()),
                        sum: None,
                        bounds: Vec::new(),
                        bucket_counts: Vec::new(),
                    };
                let (kind, is_monotonic, temporality, points) = match &m.data {
                    Some(metric::Data::Sum(s)) => (
                        "sum",
                        s.is_monotonic,
                        s.aggregation_temporality,
                        s.data_points.iter().map(number_point).collect(),
                    ),
                    Some(metric::Data::Gauge(g)) => (
                        "gauge",
                        false,
                        0,
                        g.data_points.iter().map(number_point).collect(),
                    ),
                    Some(metric::Data::Histogram(h)) => (
                        "histogram",
                        false,
                        h.aggregation_temporality,
                        h.data_points
                            .iter()
                            .map(|p| RecvPoint {
                                attributes: attributes(&p.attributes),
                                value: p.count as f64,
                                sum: p.sum,
                                bounds: p.explicit_bounds.clone(),
                                bucket_counts: p.bucket_counts.clone(),
                            })
                            .collect(),
                    ),
                    Some(metric::Data::ExponentialHistogram(h)) => (
                        "exponential_histogram",
                        false,
                        h.aggregation_temporality,
                        h.data_points
                            .iter()
                            .map(|p| RecvPoint {
                                attributes: attributes(&p.attributes),
                                value: p.count as f64,
                                sum: p.sum,
                                bounds: Vec::new(),
                                bucket_counts: Vec::new(),
                            })
                            .collect(),
                    ),
                    Some(metric::Data::Summary(sm)) => (
                        "summary",
                        false,
                        0,
                        sm.data_points
                            .iter()
                            .map(|p| RecvPoint {
                                attributes: attributes(&p.attributes),
                                value: p.count as f64,
                                sum: Some(p.sum),
                                bounds: Vec::new(),
                                bucket_counts: Vec::new(),
                            })
                            .collect(),
                    ),
                    None => ("none", false, 0, Vec::new()),
                };
                out.push(RecvMetric {
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    description: m.description.clone(),
                    kind,
                    is_monotonic,
                    temporality,
                    points,
                    service_name: service_name.clone(),
                    scope_name: scope_name.clone(),
                });
            }
        }
    }
    out
}

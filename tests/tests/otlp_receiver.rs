//! Proves the in-test OTLP receiver with the real opentelemetry-otlp exporters: one span tree,
//! one log record and two metrics over HTTP/protobuf, HTTP/JSON and gRPC, plus the failing and
//! hanging modes. Exporters are built inside the tokio runtime (tonic needs it) and providers
//! are flushed/shut down through `spawn_blocking` (their calls block).

use std::time::{Duration, Instant};

use acpd_tests::otlp::{Protocol, Receiver, RecvSpan, Signal};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, SpanId, Value};
use opentelemetry_otlp::{
    LogExporter, MetricExporter, RetryPolicy, SpanExporter, WithExportConfig as _,
    WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const SERVICE: &str = "otlp-receiver-test";

fn otlp_protocol(p: Protocol) -> opentelemetry_otlp::Protocol {
    match p {
        Protocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
        Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        Protocol::Grpc => opentelemetry_otlp::Protocol::Grpc,
    }
}

/// Builds one signal's exporter for `r`'s transport; `timeout` and no retries when given.
macro_rules! exporter {
    ($exporter:ident, $r:expr, $signal:expr, $timeout:expr) => {{
        let r: &Receiver = $r;
        let timeout: Option<Duration> = $timeout;
        let built = match r.protocol() {
            Protocol::Grpc => {
                let mut b = $exporter::builder()
                    .with_tonic()
                    .with_endpoint(r.signal_endpoint($signal));
                if let Some(t) = timeout {
                    b = b.with_timeout(t).with_retry_policy(RetryPolicy::disabled());
                }
                b.build()
            }
            p => {
                let mut b = $exporter::builder()
                    .with_http()
                    .with_protocol(otlp_protocol(p))
                    .with_endpoint(r.signal_endpoint($signal));
                if let Some(t) = timeout {
                    b = b.with_timeout(t).with_retry_policy(RetryPolicy::disabled());
                }
                b.build()
            }
        };
        built.expect("build the exporter")
    }};
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_service_name(SERVICE)
        .with_attribute(KeyValue::new("deployment.environment.name", "test"))
        .build()
}

/// Runs a blocking provider call off the runtime threads, bounded.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(WAIT, tokio::task::spawn_blocking(f))
        .await
        .expect("provider call timed out")
        .expect("provider call panicked")
}

const LINK_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const LINK_SPAN: &str = "b7ad6b7169203331";

async fn round_trip(protocol: Protocol) {
    let r = Receiver::start(protocol).await.unwrap();
    assert_eq!(r.protocol_env(), protocol.env_value());
    assert!(
        r.endpoint().starts_with("http://127.0.0.1:"),
        "{}",
        r.endpoint()
    );

    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter!(SpanExporter, &r, Signal::Traces, None))
        .with_resource(resource())
        .build();
    let logger_provider = SdkLoggerProvider::builder()
        .with_batch_exporter(exporter!(LogExporter, &r, Signal::Logs, None))
        .with_resource(resource())
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter!(MetricExporter, &r, Signal::Metrics, None))
        .with_resource(resource())
        .build();

    // Spans: a CLIENT parent with every attribute type, an event, a link and an error status;
    // an INTERNAL child.
    let tracer = tracer_provider.tracer("receiver-test-scope");
    let link = SpanContext::new(
        TraceId::from_hex(LINK_TRACE).unwrap(),
        SpanId::from_hex(LINK_SPAN).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let mut parent = tracer
        .span_builder("parent op")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("s", "text"),
            KeyValue::new("i", 42_i64),
            KeyValue::new("d", 1.5),
            KeyValue::new("b", true),
            KeyValue::new(
                "arr",
                Value::Array(Array::String(vec!["x".into(), "y".into()])),
            ),
        ])
        .with_links(vec![Link::with_context(link)])
        .start_with_context(&tracer, &Context::new());
    parent.add_event("something happened", vec![KeyValue::new("n", 7_i64)]);
    parent.set_status(Status::error("it broke"));
    let parent_cx = Context::new().with_span(parent);
    let mut child = tracer
        .span_builder("child op")
        .with_kind(SpanKind::Internal)
        .start_with_context(&tracer, &parent_cx);
    let (trace_id, parent_id) = {
        let sc = parent_cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    };
    child.end();
    parent_cx.span().end();

    // A log record correlated with the parent span.
    let logger = logger_provider.logger("receiver-test-logger");
    let mut record = logger.create_log_record();
    record.set_body(AnyValue::from("hello log"));
    record.set_severity_number(Severity::Warn);
    record.set_severity_text("WARN");
    record.set_event_name("test.event");
    record.add_attribute("k", "v");
    record.add_attribute("count", 3_i64);
    record.set_trace_context(trace_id, parent_id, Some(TraceFlags::SAMPLED));
    logger.emit(record);

    // A counter and an explicit-bucket histogram.
    let meter = meter_provider.meter("receiver-test-meter");
    let counter = meter
        .u64_counter("test.requests")
        .with_unit("{request}")
        .with_description("requests seen")
        .build();
    counter.add(3, &[KeyValue::new("route", "/a")]);
    let histogram = meter
        .f64_histogram("test.duration")
        .with_unit("s")
        .with_boundaries(vec![0.1, 1.0, 10.0])
        .build();
    histogram.record(0.5, &[]);
    histogram.record(2.0, &[]);

    blocking(move || {
        tracer_provider.shutdown().expect("tracer shutdown");
        logger_provider.shutdown().expect("logger shutdown");
        meter_provider.shutdown().expect("meter shutdown");
    })
    .await;

    let spans = r.wait_for_spans(WAIT, |s| s.len() >= 2).await.unwrap();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let by_name = |n: &str| -> RecvSpan { spans.iter().find(|s| s.name == n).unwrap().clone() };
    let p = by_name("parent op");
    let c = by_name("child op");
    assert_eq!(p.trace_id, trace_id.to_string());
    assert_eq!(p.trace_id.len(), 32);
    assert_eq!(p.span_id, parent_id.to_string());
    assert_eq!(p.parent_span_id, "");
    assert_eq!(p.kind, 3, "CLIENT");
    assert_eq!(p.service_name, SERVICE);
    assert_eq!(p.scope_name, "receiver-test-scope");
    assert_eq!(
        p.resource.get("deployment.environment.name"),
        Some(&json!("test"))
    );
    assert_eq!(p.attr("s"), Some(&json!("text")));
    assert_eq!(p.attr_str("s"), Some("text"));
    assert_eq!(p.attr("i"), Some(&json!(42)));
    assert_eq!(p.attr("d"), Some(&json!(1.5)));
    assert_eq!(p.attr("b"), Some(&json!(true)));
    assert_eq!(p.attr("arr"), Some(&json!(["x", "y"])));
    assert_eq!(p.status_code, 2, "ERROR");
    assert_eq!(p.status_message, "it broke");
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].0, "something happened");
    assert_eq!(p.events[0].1.get("n"), Some(&json!(7)));
    assert_eq!(p.links, [(LINK_TRACE.to_owned(), LINK_SPAN.to_owned())]);
    assert!(p.start_ns > 0 && p.end_ns >= p.start_ns);
    assert_eq!(c.trace_id, p.trace_id);
    assert_eq!(c.parent_span_id, p.span_id);
    assert_eq!(c.kind, 1, "INTERNAL");
    assert_eq!(c.status_code, 0, "UNSET");

    let logs = r.wait_for_logs(WAIT, |l| !l.is_empty()).await.unwrap();
    assert_eq!(logs.len(), 1, "{logs:#?}");
    let log = &logs[0];
    assert_eq!(log.body, "hello log");
    assert_eq!(log.severity_number, 13, "WARN");
    assert_eq!(log.severity_text, "WARN");
    assert_eq!(log.event_name, "test.event");
    assert_eq!(log.attributes.get("k"), Some(&json!("v")));
    assert_eq!(log.attributes.get("count"), Some(&json!(3)));
    assert_eq!(log.trace_id, p.trace_id);
    assert_eq!(log.span_id, p.span_id);
    assert_eq!(log.service_name, SERVICE);
    assert_eq!(log.scope_name, "receiver-test-logger");

    let metrics = r
        .wait_for_metrics(WAIT, |m| {
            m.iter().any(|m| m.name == "test.requests")
                && m.iter().any(|m| m.name == "test.duration")
        })
        .await
        .unwrap();
    assert!(metrics.iter().all(|m| m.service_name == SERVICE));
    let requests = r.latest_metric("test.requests").unwrap();
    assert_eq!(requests.kind, "sum");
    assert!(requests.is_monotonic);
    assert_eq!(requests.unit, "{request}");
    assert_eq!(requests.description, "requests seen");
    assert_eq!(requests.scope_name, "receiver-test-meter");
    assert_eq!(requests.points.len(), 1);
    assert_eq!(requests.points[0].value, 3.0);
    assert_eq!(
        requests.points[0].attributes.get("route"),
        Some(&json!("/a"))
    );
    let duration = r.latest_metric("test.duration").unwrap();
    assert_eq!(duration.kind, "histogram");
    assert_eq!(duration.unit, "s");
    let point = &duration.points[0];
    assert_eq!(point.value, 2.0, "count");
    assert_eq!(point.sum, Some(2.5));
    assert_eq!(point.bounds, [0.1, 1.0, 10.0]);
    assert_eq!(point.bucket_counts, [0, 1, 1, 0]);

    let requests = r.requests();
    assert!(
        requests.iter().all(|q| q.decode_error.is_none()),
        "{requests:?}"
    );
    for signal in [Signal::Traces, Signal::Metrics, Signal::Logs] {
        assert!(
            requests.iter().any(|q| q.signal == signal),
            "{signal:?}: {requests:?}"
        );
    }
    assert_eq!(
        r.trace_requests().len(),
        requests
            .iter()
            .filter(|q| q.signal == Signal::Traces)
            .count()
    );
    let content_type = requests[0]
        .headers
        .get("content-type")
        .cloned()
        .unwrap_or_default();
    let expected = match protocol {
        Protocol::HttpProtobuf => "application/x-protobuf",
        Protocol::HttpJson => "application/json",
        Protocol::Grpc => "application/grpc",
    };
    assert!(content_type.starts_with(expected), "{content_type}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_all_signals_over_http_protobuf() {
    round_trip(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_all_signals_over_http_json() {
    round_trip(Protocol::HttpJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_all_signals_over_grpc() {
    round_trip(Protocol::Grpc).await;
}

fn one_span(provider: &SdkTracerProvider) {
    let tracer = provider.tracer("receiver-test-scope");
    tracer.start("doomed").end();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_answers_errors_and_stores_nothing() {
    for protocol in Protocol::ALL {
        let r = Receiver::start_failing(protocol, 503).await.unwrap();
        let exporter = exporter!(
            SpanExporter,
            &r,
            Signal::Traces,
            Some(Duration::from_secs(5))
        );
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build();
        one_span(&provider);
        let flushed = blocking(move || {
            let flushed = provider.force_flush();
            let _ = provider.shutdown();
            flushed
        })
        .await;
        assert!(
            flushed.is_err(),
            "{protocol:?}: flush must report the failure"
        );
        let requests = r.wait_for_requests(WAIT, |q| !q.is_empty()).await.unwrap();
        assert_eq!(requests[0].signal, Signal::Traces);
        assert_eq!(requests.len(), 1, "{protocol:?}: retries are disabled");
        assert!(r.spans().is_empty(), "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_receiver_never_answers() {
    for protocol in Protocol::ALL {
        let r = Receiver::start_hanging(protocol).await.unwrap();
        let timeout = Duration::from_millis(300);
        let exporter = exporter!(SpanExporter, &r, Signal::Traces, Some(timeout));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build();
        one_span(&provider);
        let started = Instant::now();
        let flushed = blocking(move || {
            let flushed = provider.force_flush();
            let _ = provider.shutdown_with_timeout(Duration::from_secs(2));
            flushed
        })
        .await;
        let took = started.elapsed();
        assert!(flushed.is_err(), "{protocol:?}: the export must time out");
        assert!(took < Duration::from_secs(4), "{protocol:?}: took {took:?}");
        let requests = r.wait_for_requests(WAIT, |q| !q.is_empty()).await.unwrap();
        assert_eq!(requests[0].signal, Signal::Traces, "{protocol:?}");
        assert!(r.spans().is_empty(), "{protocol:?}");
        // Dropping the receiver releases the hanging request.
        drop(r);
    }
}

#[tokio::test]
async fn wait_reports_what_arrived_on_deadline() {
    let r = Receiver::start(Protocol::HttpProtobuf).await.unwrap();
    let err = r
        .wait_for_spans(Duration::from_millis(50), |s| !s.is_empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spans condition not met"), "{err}");
    assert!(err.contains("0 requests"), "{err}");
}

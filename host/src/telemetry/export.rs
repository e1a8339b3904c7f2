//! The export stage: every span and log record passes the redaction plugins (`export-spans`,
//! `export-logs`, failing closed) and then the built-in sanitiser before fan-out to OTLP and
//! the trace view. It runs on the SDK's batch threads, off the request path.

use opentelemetry::logs::{AnyValue, LogRecord as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::Arc;
use std::time::Duration;

use super::drops::{Signal, Source};
use super::outcome;
use super::sanitize::sanitize;
use super::view::{TraceRing, ViewSpan};
use crate::plugins::{self, Hook, LogItem};

/// The processing step for one span: every string value is sanitised (terminal escapes, URL
/// credentials, length).
pub fn process_span(span: &mut SpanData) {
    for kv in span.attributes.iter_mut() {
        sanitize_kv(kv);
    }
    for event in span.events.events.iter_mut() {
        for kv in event.attributes.iter_mut() {
            sanitize_kv(kv);
        }
    }
    if let opentelemetry::trace::Status::Error { description } = &mut span.status {
        *description = sanitize(description).into();
    }
}

/// A record with attributes only (metric label sets), to pass the span redaction plugins.
pub fn attribute_record(attributes: Vec<KeyValue>) -> SpanData {
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
    SpanData {
        span_context: SpanContext::empty_context(),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: "metric labels".into(),
        start_time: std::time::UNIX_EPOCH,
        end_time: std::time::UNIX_EPOCH,
        attributes,
        dropped_attributes_count: 0,
        events: opentelemetry_sdk::trace::SpanEvents::default(),
        links: opentelemetry_sdk::trace::SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: opentelemetry::InstrumentationScope::builder("acpd").build(),
    }
}

/// The `export-spans` plugins, when there are any.
pub fn redact_spans(batch: &mut [SpanData]) {
    if let Some(set) = plugins::current()
        && set.has(Hook::ExportSpans)
    {
        set.spans(batch);
    }
}

fn sanitize_kv(kv: &mut KeyValue) {
    if let Value::String(s) = &kv.value
        && !super::sanitize::is_clean(s.as_str())
    {
        let clean = sanitize(s.as_str());
        if clean != s.as_str() {
            kv.value = Value::String(clean.into());
        }
    }
}

pub struct StageSpanExporter {
    otlp: Option<opentelemetry_otlp::SpanExporter>,
    /// Where the spans go, for the reports of failed exports.
    endpoint: String,
    ring: Arc<TraceRing>,
    service: String,
}

impl std::fmt::Debug for StageSpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSpanExporter")
            .field("otlp", &self.otlp)
            .finish_non_exhaustive()
    }
}

impl StageSpanExporter {
    pub fn new(
        otlp: Option<opentelemetry_otlp::SpanExporter>,
        endpoint: String,
        ring: Arc<TraceRing>,
        service: String,
    ) -> Self {
        Self {
            otlp,
            endpoint,
            ring,
            service,
        }
    }
}

impl SpanExporter for StageSpanExporter {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        redact_spans(&mut batch);
        batch.iter_mut().for_each(process_span);
        self.ring
            .push(batch.iter().map(|s| ViewSpan::from_sdk(s, &self.service)));
        let Some(otlp) = &self.otlp else {
            return Ok(());
        };
        report(
            Signal::Traces,
            &self.endpoint,
            batch.len(),
            otlp.export(batch),
        )
        .await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.otlp
            .as_ref()
            .map_or(Ok(()), |o| o.shutdown_with_timeout(timeout))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.otlp.as_ref().map_or(Ok(()), |o| o.force_flush())
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(o) = &mut self.otlp {
            o.set_resource(resource);
        }
    }
}

/// Exports through `send` unless the collector refused the signal for good; counts and reports
/// what it does not take.
pub async fn report(
    signal: Signal,
    endpoint: &str,
    n: usize,
    send: impl std::future::Future<Output = OTelSdkResult>,
) -> OTelSdkResult {
    let outcome = outcome::of(signal);
    if outcome.stopped() {
        outcome.skipped(Source::Daemon, n as u64);
        return Ok(());
    }
    let result = send.await;
    match &result {
        Ok(()) => outcome.ok(),
        Err(e) => outcome.failed(
            Source::Daemon,
            n as u64,
            &outcome::Failure::from_sdk(&e.to_string()),
            endpoint,
        ),
    }
    result
}

pub struct StageLogExporter {
    otlp: opentelemetry_otlp::LogExporter,
    endpoint: String,
    /// Makes blank records: the SDK's records cannot lose an attribute, so redacted records
    /// are rebuilt.
    blank: opentelemetry_sdk::logs::SdkLogger,
    _provider: opentelemetry_sdk::logs::SdkLoggerProvider,
}

impl std::fmt::Debug for StageLogExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageLogExporter")
            .field("otlp", &self.otlp)
            .finish_non_exhaustive()
    }
}

impl StageLogExporter {
    pub fn new(otlp: opentelemetry_otlp::LogExporter, endpoint: String) -> Self {
        use opentelemetry::logs::LoggerProvider as _;
        let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder().build();
        Self {
            otlp,
            endpoint,
            blank: provider.logger("acpd"),
            _provider: provider,
        }
    }

    fn redact_logs(
        &self,
        set: &plugins::PluginSet,
        batch: &LogBatch<'_>,
    ) -> Vec<(SdkLogRecord, opentelemetry::InstrumentationScope)> {
        use opentelemetry::logs::Logger as _;
        let mut items = Vec::new();
        let mut kept = Vec::new();
        for (origin, (r, scope)) in batch.iter().enumerate() {
            items.push(LogItem {
                body: r.body().cloned(),
                severity: r.severity_number().map_or(0, |s| s as u8),
                event_name: r.event_name().map(Into::into),
                attrs: r.attributes_iter().cloned().collect(),
                dropped: false,
                origin,
            });
            kept.push((r, scope));
        }
        set.logs(&mut items);
        items
            .into_iter()
            .filter_map(|mut item| {
                let (src, scope) = kept.get(item.origin)?;
                let mut rec = self.blank.create_log_record();
                if let Some(e) = src.event_name() {
                    rec.set_event_name(e);
                }
                if let Some(t) = src.target() {
                    rec.set_target(t.clone());
                }
                if let Some(t) = src.timestamp() {
                    rec.set_timestamp(t);
                }
                if let Some(t) = src.observed_timestamp() {
                    rec.set_observed_timestamp(t);
                }
                if let Some(t) = src.severity_text() {
                    rec.set_severity_text(t);
                }
                if let Some(s) = src.severity_number() {
                    rec.set_severity_number(s);
                }
                if let Some(tc) = src.trace_context() {
                    rec.set_trace_context(tc.trace_id, tc.span_id, tc.trace_flags);
                }
                if let Some(body) = item.body.take() {
                    let body = match body {
                        AnyValue::String(s) => AnyValue::String(sanitize(s.as_str()).into()),
                        other => other,
                    };
                    rec.set_body(body);
                }
                for (k, v) in item.attrs {
                    rec.add_attribute(k, v);
                }
                Some((rec, (*scope).clone()))
            })
            .collect()
    }
}

impl LogExporter for StageLogExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        if let Some(set) = plugins::current()
            && set.has(Hook::ExportLogs)
        {
            let owned = self.redact_logs(&set, &batch);
            let refs: Vec<(&SdkLogRecord, &opentelemetry::InstrumentationScope)> =
                owned.iter().map(|(r, s)| (r, s)).collect();
            return report(
                Signal::Logs,
                &self.endpoint,
                refs.len(),
                self.otlp.export(LogBatch::new(&refs)),
            )
            .await;
        }
        // Records arrive borrowed: the processed copies are what leaves the process.
        let owned: Vec<(SdkLogRecord, opentelemetry::InstrumentationScope)> = batch
            .iter()
            .map(|(r, scope)| {
                let mut r = r.clone();
                if let Some(AnyValue::String(body)) = r.body() {
                    let clean = sanitize(body.as_str());
                    r.set_body(AnyValue::String(clean.into()));
                }
                (r, scope.clone())
            })
            .collect();
        let refs: Vec<(&SdkLogRecord, &opentelemetry::InstrumentationScope)> =
            owned.iter().map(|(r, s)| (r, s)).collect();
        report(
            Signal::Logs,
            &self.endpoint,
            refs.len(),
            self.otlp.export(LogBatch::new(&refs)),
        )
        .await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.otlp.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.otlp.set_resource(resource);
    }
}

//! The export stage: every span and log record passes one processing step (today the built-in
//! sanitiser; the redaction plugins plug in here) before fan-out to OTLP and the trace view.
//! It runs on the SDK's batch threads, off the request path.

use opentelemetry::logs::{AnyValue, LogRecord as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::Arc;
use std::time::Duration;

use super::sanitize::sanitize;
use super::view::{TraceRing, ViewSpan};

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

fn sanitize_kv(kv: &mut KeyValue) {
    if let Value::String(s) = &kv.value {
        let clean = sanitize(s.as_str());
        if clean != s.as_str() {
            kv.value = Value::String(clean.into());
        }
    }
}

pub struct StageSpanExporter {
    otlp: Option<opentelemetry_otlp::SpanExporter>,
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
        ring: Arc<TraceRing>,
        service: String,
    ) -> Self {
        Self {
            otlp,
            ring,
            service,
        }
    }
}

impl SpanExporter for StageSpanExporter {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        batch.iter_mut().for_each(process_span);
        self.ring
            .push(batch.iter().map(|s| ViewSpan::from_sdk(s, &self.service)));
        match &self.otlp {
            Some(otlp) => otlp.export(batch).await,
            None => Ok(()),
        }
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

#[derive(Debug)]
pub struct StageLogExporter {
    otlp: opentelemetry_otlp::LogExporter,
}

impl StageLogExporter {
    pub fn new(otlp: opentelemetry_otlp::LogExporter) -> Self {
        Self { otlp }
    }
}

impl LogExporter for StageLogExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
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
        self.otlp.export(LogBatch::new(&refs)).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.otlp.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.otlp.set_resource(resource);
    }
}

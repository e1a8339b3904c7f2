//! W3C trace context in and out: HTTP headers (inbound), ACP `_meta` (into the agent, per
//! request) and `TRACEPARENT`/`TRACESTATE` env (into the agent, at spawn).

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use serde_json::{Map, Value};
use std::collections::HashMap;

fn propagator() -> opentelemetry::propagation::TextMapCompositePropagator {
    opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The parent context from inbound `traceparent`/`tracestate`/`baggage`. An invalid
/// traceparent yields an empty context (a new root), reported as `Err` for a debug log.
pub fn extract_headers(headers: &axum::http::HeaderMap) -> Result<Context, String> {
    let cx = propagator().extract(&Headers(headers));
    match headers.get("traceparent") {
        Some(raw) if !cx.span().span_context().is_valid() => Err(format!(
            "invalid traceparent {:?}",
            raw.to_str().unwrap_or("<non-ascii>")
        )),
        _ => Ok(cx),
    }
}

/// The W3C fields of `cx` (`traceparent`, and `tracestate`/`baggage` when not empty).
pub fn fields(cx: &Context) -> HashMap<String, String> {
    let mut out = HashMap::new();
    propagator().inject_context(cx, &mut out);
    out.retain(|_, v| !v.is_empty());
    out
}

struct MetaCarrier<'a>(&'a mut Map<String, Value>, &'a [String]);

impl Injector for MetaCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return; // strict peers reject an empty tracestate
        }
        for k in self.1 {
            // Root W3C keys and vendor keys that end in one (`qwen.telemetry.traceparent`).
            if k == key || k.strip_suffix(key).is_some_and(|p| p.ends_with('.')) {
                self.0.insert(k.clone(), Value::String(value.clone()));
            }
        }
    }
}

/// Puts `cx` into an ACP `_meta` under the configured keys, overriding what a client sent.
pub fn inject_meta(cx: &Context, meta: &mut Map<String, Value>, keys: &[String]) {
    propagator().inject_context(cx, &mut MetaCarrier(meta, keys));
}

/// `TRACEPARENT`/`TRACESTATE`/`BAGGAGE` for a child process (the OTel env-carrier convention).
pub fn env(cx: &Context) -> Vec<(String, String)> {
    fields(cx)
        .into_iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn headers_meta_and_env_round_trip() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("traceparent", TP.parse().unwrap());
        let cx = extract_headers(&h).unwrap();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let keys = ["traceparent", "tracestate", "qwen.telemetry.traceparent"].map(String::from);
        let mut meta = Map::new();
        meta.insert("traceparent".into(), Value::String("client-forged".into()));
        inject_meta(&cx, &mut meta, &keys);
        assert_eq!(meta["traceparent"], TP);
        assert_eq!(meta["qwen.telemetry.traceparent"], TP);
        assert!(
            !meta.contains_key("tracestate"),
            "empty tracestate is not sent"
        );
        assert_eq!(env(&cx), vec![("TRACEPARENT".to_string(), TP.to_string())]);
    }

    #[test]
    fn invalid_traceparent_starts_a_new_root() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("traceparent", "00-zzzz-01".parse().unwrap());
        assert!(extract_headers(&h).is_err());
        assert!(extract_headers(&axum::http::HeaderMap::new()).is_ok());
    }
}

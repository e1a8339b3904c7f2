//! W3C trace context in and out: HTTP headers (inbound), ACP `_meta` (into the agent, per
//! request) and `TRACEPARENT`/`TRACESTATE` env (into the agent, at spawn).

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Built once: a composite allocates its propagators and their field names, and it is used
/// twice on every prompt's way to the agent (the request's headers in, the ACP `_meta` out).
fn propagator() -> &'static opentelemetry::propagation::TextMapCompositePropagator {
    static PROPAGATOR: std::sync::LazyLock<opentelemetry::propagation::TextMapCompositePropagator> =
        std::sync::LazyLock::new(|| {
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ])
        });
    &PROPAGATOR
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
        Some(raw)
            if !cx.span().span_context().is_valid()
                || !raw.to_str().is_ok_and(well_formed_traceparent) =>
        {
            Err(format!(
                "invalid traceparent {:?}",
                raw.to_str().unwrap_or("<non-ascii>")
            ))
        }
        _ => Ok(cx),
    }
}

/// The W3C syntax, which the OTel parser only approximates (it takes short ids, one-digit
/// flags and a `+` sign): lower-case hex fields of exactly 2, 32, 16 and 2 digits, version `ff`
/// invalid, and more fields only after a version later than `00`. (All-zero ids are refused by
/// the span context's own validity check.)
fn well_formed_traceparent(tp: &str) -> bool {
    let hex = |field: Option<&str>, len: usize| {
        field.is_some_and(|f| {
            f.len() == len && f.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    };
    let mut fields = tp.trim_matches([' ', '\t']).splitn(5, '-');
    let version = fields.next();
    hex(version, 2)
        && version != Some("ff")
        && hex(fields.next(), 32)
        && hex(fields.next(), 16)
        && hex(fields.next(), 2)
        && (version != Some("00") || fields.next().is_none())
}

/// The W3C fields of `cx` (`traceparent`, and `tracestate`/`baggage` when not empty).
pub fn fields(cx: &Context) -> HashMap<String, String> {
    let mut out = HashMap::new();
    propagator().inject_context(cx, &mut out);
    out.retain(|_, v| forwardable(v));
    out
}

/// Whether a field may be forwarded: not empty (strict peers reject an empty tracestate) and
/// header text. The OTel baggage propagator decodes a member's properties (`k=v;p%0D%0A`) and
/// writes them back raw, so a client could otherwise put a line break into the agent's
/// `BAGGAGE` and from there into the agent's own request headers (found by fuzzing).
fn forwardable(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| matches!(b, b' '..=b'~' | b'\t'))
}

struct MetaCarrier<'a>(&'a mut Map<String, Value>, &'a [String]);

impl Injector for MetaCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !forwardable(&value) {
            return;
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
    fn baggage_that_is_not_header_text_is_not_forwarded() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("traceparent", TP.parse().unwrap());
        h.insert("baggage", "k=v;p%0D%0AX-Injected: 1".parse().unwrap());
        let cx = extract_headers(&h).unwrap();
        assert_eq!(env(&cx), vec![("TRACEPARENT".to_string(), TP.to_string())]);
        let mut meta = Map::new();
        inject_meta(&cx, &mut meta, &["baggage".to_string()]);
        assert!(meta.is_empty(), "{meta:?}");
        h.insert("baggage", "k=v;p=1".parse().unwrap());
        let cx = extract_headers(&h).unwrap();
        assert_eq!(fields(&cx)["baggage"], "k=v;p=1");
    }

    #[test]
    fn invalid_traceparent_starts_a_new_root() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("traceparent", "00-zzzz-01".parse().unwrap());
        assert!(extract_headers(&h).is_err());
        assert!(extract_headers(&axum::http::HeaderMap::new()).is_ok());
        // What the OTel parser alone would take (found by the fuzz target).
        for bad in [
            &TP[..TP.len() - 1],          // one-digit flags
            &format!("00-{}", &TP[4..]),  // a 31-digit trace id
            &format!("00-+{}", &TP[4..]), // a sign
            &format!("{TP}-extra"),       // more fields after version 00
        ] {
            h.insert("traceparent", bad.parse().unwrap());
            assert!(extract_headers(&h).is_err(), "{bad}");
        }
        h.insert(
            "traceparent",
            format!("01{}-extra", &TP[2..]).parse().unwrap(),
        );
        assert!(
            extract_headers(&h).is_ok(),
            "a later version may add fields"
        );
    }
}

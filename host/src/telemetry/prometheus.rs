//! Prometheus text exposition (format 0.0.4) of the OTel metrics, for `GET /metrics`.
//!
//! Mapping (OTel -> Prometheus compatibility spec):
//! - names: invalid characters become `_`, runs of `_` collapse, a leading digit gets a `_`
//!   prefix; the unit is appended as a word (`s` -> `_seconds`, `By` -> `_bytes`, `ms` ->
//!   `_milliseconds`, `a/s` -> `_a_per_second`, `1` -> `_ratio` on gauges only; `{request}`-style
//!   annotations are dropped; unknown units are appended sanitised) unless the name already ends
//!   with it; monotonic sums get `_total`;
//! - cumulative monotonic sums -> `counter`; non-monotonic sums (UpDownCounters) and gauges ->
//!   `gauge`; cumulative histograms -> `histogram` (`_bucket{le}` cumulative, `+Inf`, `_sum`,
//!   `_count`). Delta sums and histograms (a reader configured for delta) and exponential
//!   histograms are skipped: the text format cannot carry them faithfully;
//! - labels come from the data point attributes: names sanitised like metric names (a leading
//!   digit gets `key_`), attributes that collide after sanitising are joined with `;` in the
//!   order of their original keys, values escaped (`\\`, `\"`, `\n`); non-string values in
//!   their string form, arrays as JSON;
//! - the resource becomes one `target_info` gauge (value 1, resource attributes as labels),
//!   omitted when the resource is empty. No `otel_scope_*` labels (the spec allows disabling
//!   them): instruments of the same name from several meters merge into one family (a later
//!   one of a different type is dropped);
//! - exemplars, `_created` series and timestamps are not emitted. Output is deterministic:
//!   `target_info` first, then families by name, series by labels.

use opentelemetry::{Array, Value};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    kind: Kind,
    help: String,
    /// Rendered label set (without braces) -> sample lines (name suffix + extra label, value).
    series: Vec<(String, Vec<Sample>)>,
}

struct Sample {
    suffix: &'static str,
    le: Option<String>,
    value: String,
}

/// Numbers as Prometheus writes them (`+Inf`, `-Inf`, `NaN`; never an exponent).
trait Num: Copy {
    fn text(self) -> String;
}

impl Num for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl Num for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl Num for f64 {
    fn text(self) -> String {
        float(self)
    }
}

fn float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        f.to_string()
    }
}

pub fn encode(rm: &ResourceMetrics) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    // Scopes come in no particular order: by name, so that merges are deterministic.
    let mut scopes: Vec<_> = rm.scope_metrics().collect();
    scopes.sort_by(|a, b| a.scope().name().cmp(b.scope().name()));
    for metric in scopes.into_iter().flat_map(|sm| sm.metrics()) {
        match metric.data() {
            AggregatedMetrics::F64(d) => add(&mut families, metric, d),
            AggregatedMetrics::U64(d) => add(&mut families, metric, d),
            AggregatedMetrics::I64(d) => add(&mut families, metric, d),
        }
    }
    let redacted = redacted_labels(rm);
    let shown = |l: &String| redacted.get(l).cloned().unwrap_or_else(|| l.clone());
    let mut out = String::new();
    let resource = rm.resource();
    if !resource.is_empty() {
        let labels = labels(resource.iter().map(|(k, v)| (k.as_str(), v)));
        out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\n");
        let _ = writeln!(out, "target_info{{{labels}}} 1");
    }
    for (name, mut family) in families {
        if !family.help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
        }
        let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
        family.series.sort_by(|a, b| a.0.cmp(&b.0));
        for (labels, samples) in &family.series {
            for s in samples {
                let mut all = shown(labels);
                if let Some(le) = &s.le {
                    if !all.is_empty() {
                        all.push(',');
                    }
                    let _ = write!(all, "le=\"{le}\"");
                }
                let braces = if all.is_empty() {
                    String::new()
                } else {
                    format!("{{{all}}}")
                };
                let _ = writeln!(out, "{name}{}{braces} {}", s.suffix, s.value);
            }
        }
    }
    out
}

/// Label values leave the process too: every distinct label set passes the `export-spans`
/// plugins (as attribute-only records) before it is written. Maps a label text to its
/// redacted form; empty when no plugin redacts spans.
fn redacted_labels(rm: &ResourceMetrics) -> std::collections::HashMap<String, String> {
    use opentelemetry::KeyValue;
    let mut map = std::collections::HashMap::new();
    let Some(set) = crate::plugins::current().filter(|s| s.has(crate::plugins::Hook::ExportSpans))
    else {
        return map;
    };
    fn points<T>(data: &MetricData<T>) -> Vec<Vec<KeyValue>> {
        match data {
            MetricData::Gauge(g) => g
                .data_points()
                .map(|p| p.attributes().cloned().collect())
                .collect(),
            MetricData::Sum(s) => s
                .data_points()
                .map(|p| p.attributes().cloned().collect())
                .collect(),
            MetricData::Histogram(h) => h
                .data_points()
                .map(|p| p.attributes().cloned().collect())
                .collect(),
            MetricData::ExponentialHistogram(_) => Vec::new(),
        }
    }
    let mut sets: Vec<Vec<KeyValue>> = rm
        .scope_metrics()
        .flat_map(|sm| sm.metrics())
        .flat_map(|m| match m.data() {
            AggregatedMetrics::F64(d) => points(d),
            AggregatedMetrics::U64(d) => points(d),
            AggregatedMetrics::I64(d) => points(d),
        })
        .filter(|a| !a.is_empty())
        .collect();
    sets.push(
        rm.resource()
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect(),
    );
    let original: Vec<String> = sets
        .iter()
        .map(|a| labels(a.iter().map(|kv| (kv.key.as_str(), &kv.value))))
        .collect();
    let mut batch: Vec<opentelemetry_sdk::trace::SpanData> = sets
        .into_iter()
        .map(super::export::attribute_record)
        .collect();
    set.spans(&mut batch);
    for (before, span) in original.into_iter().zip(batch) {
        let after = labels(
            span.attributes
                .iter()
                .map(|kv| (kv.key.as_str(), &kv.value)),
        );
        if after != before {
            map.insert(before, after);
        }
    }
    map
}

fn add<T: Num>(families: &mut BTreeMap<String, Family>, metric: &Metric, data: &MetricData<T>) {
    let (kind, series): (Kind, Vec<(String, Vec<Sample>)>) = match data {
        MetricData::Gauge(g) => (
            Kind::Gauge,
            g.data_points()
                .map(|p| (labels(attrs(p.attributes())), scalar(p.value().text())))
                .collect(),
        ),
        MetricData::Sum(s) => {
            if s.temporality() != Temporality::Cumulative {
                return;
            }
            let kind = if s.is_monotonic() {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            (
                kind,
                s.data_points()
                    .map(|p| (labels(attrs(p.attributes())), scalar(p.value().text())))
                    .collect(),
            )
        }
        MetricData::Histogram(h) => {
            if h.temporality() != Temporality::Cumulative {
                return;
            }
            let series = h
                .data_points()
                .map(|p| {
                    let mut samples = Vec::new();
                    let mut cumulative = 0u64;
                    for (bound, count) in p.bounds().zip(p.bucket_counts()) {
                        cumulative += count;
                        samples.push(Sample {
                            suffix: "_bucket",
                            le: Some(float(bound)),
                            value: cumulative.to_string(),
                        });
                    }
                    samples.push(Sample {
                        suffix: "_bucket",
                        le: Some("+Inf".into()),
                        value: p.count().to_string(),
                    });
                    samples.push(Sample {
                        suffix: "_sum",
                        le: None,
                        value: p.sum().text(),
                    });
                    samples.push(Sample {
                        suffix: "_count",
                        le: None,
                        value: p.count().to_string(),
                    });
                    (labels(attrs(p.attributes())), samples)
                })
                .collect();
            (Kind::Histogram, series)
        }
        MetricData::ExponentialHistogram(_) => return,
    };
    if series.is_empty() {
        return;
    }
    let name = metric_name(metric.name(), metric.unit(), kind);
    let family = families.entry(name).or_insert_with(|| Family {
        kind,
        help: String::new(),
        series: Vec::new(),
    });
    if family.kind != kind {
        return;
    }
    if family.help.is_empty() {
        family.help = metric.description().to_owned();
    }
    family.series.extend(series);
}

fn scalar(value: String) -> Vec<Sample> {
    vec![Sample {
        suffix: "",
        le: None,
        value,
    }]
}

fn attrs<'a>(
    kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    kvs.map(|kv| (kv.key.as_str(), &kv.value))
}

/// `name="value",...` sorted by label name; attributes that sanitise to the same label name are
/// joined with `;` in the order of their original keys.
fn labels<'a>(kvs: impl Iterator<Item = (&'a str, &'a Value)>) -> String {
    let mut raw: Vec<(String, String)> = kvs.map(|(k, v)| (k.to_owned(), label_value(v))).collect();
    raw.sort();
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in raw {
        merged
            .entry(label_name(&key))
            .and_modify(|v| {
                v.push(';');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let mut out = String::new();
    for (k, v) in merged {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_value(&v));
    }
    out
}

fn label_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.as_str().to_owned(),
        Value::F64(f) => float(*f),
        Value::Array(a) => {
            let json = match a {
                Array::Bool(v) => serde_json::json!(v),
                Array::I64(v) => serde_json::json!(v),
                Array::F64(v) => serde_json::json!(v),
                Array::String(v) => v
                    .iter()
                    .map(|s| serde_json::Value::from(s.as_str()))
                    .collect(),
                other => serde_json::Value::String(other.to_string()),
            };
            json.to_string()
        }
        other => other.to_string(),
    }
}

/// Replaces characters outside `allowed` with `_` and collapses runs of `_`.
fn sanitize(s: &str, allowed: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if allowed(c) { c } else { '_' };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out
}

fn label_name(key: &str) -> String {
    let name = sanitize(key, |c| c.is_ascii_alphanumeric() || c == '_');
    match name.chars().next() {
        None => "key".into(),
        Some(c) if c.is_ascii_digit() => format!("key_{name}"),
        _ => name,
    }
}

fn metric_name(name: &str, unit: &str, kind: Kind) -> String {
    let mut n = sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
        n.insert(0, '_');
    }
    if kind == Kind::Counter
        && let Some(stem) = n.strip_suffix("_total")
    {
        n = stem.to_owned();
    }
    if let Some(unit) = unit_suffix(unit, kind == Kind::Gauge)
        && !n.ends_with(&format!("_{unit}"))
    {
        n.push('_');
        n.push_str(&unit);
    }
    if kind == Kind::Counter {
        n.push_str("_total");
    }
    n
}

/// The unit as a name suffix (without the leading `_`), if any.
fn unit_suffix(unit: &str, gauge: bool) -> Option<String> {
    // `{...}` annotations carry no unit.
    let mut plain = String::new();
    let mut depth = 0usize;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let plain = plain.trim();
    let word = |u: &str| {
        let s = sanitize(u, |c| c.is_ascii_alphanumeric());
        let s = s.trim_matches('_');
        (!s.is_empty()).then(|| s.to_owned())
    };
    if let Some((num, den)) = plain.split_once('/') {
        let num = num.trim();
        let den = per_unit(den.trim())
            .map(String::from)
            .or_else(|| word(den))?;
        return Some(
            match unit_word(num).map(String::from).or_else(|| word(num)) {
                Some(n) if num != "1" => format!("{n}_per_{den}"),
                _ => format!("per_{den}"),
            },
        );
    }
    match plain {
        "" => None,
        "1" => gauge.then(|| "ratio".into()),
        u => unit_word(u).map(String::from).or_else(|| word(u)),
    }
}

fn unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        _ => return None,
    })
}

fn per_unit(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::reader::MetricReader;
    use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, SdkMeterProvider};
    use std::sync::{Arc, Weak};
    use std::time::Duration;

    /// Lets the test keep a handle on the reader the provider owns.
    #[derive(Clone, Debug)]
    struct Shared(Arc<ManualReader>);

    impl MetricReader for Shared {
        fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
            self.0.register_pipeline(pipeline)
        }
        fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
            self.0.collect(rm)
        }
        fn force_flush(&self) -> OTelSdkResult {
            self.0.force_flush()
        }
        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.0.shutdown_with_timeout(timeout)
        }
        fn temporality(&self, kind: InstrumentKind) -> Temporality {
            self.0.temporality(kind)
        }
    }

    fn provider(temporality: Temporality, resource: Resource) -> (SdkMeterProvider, Shared) {
        let reader = Shared(Arc::new(
            ManualReader::builder()
                .with_temporality(temporality)
                .build(),
        ));
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader.clone())
            .build();
        (provider, reader)
    }

    fn collect(reader: &Shared) -> String {
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).unwrap();
        encode(&rm)
    }

    #[test]
    fn encodes_every_instrument_kind() {
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "acpd"),
                KeyValue::new("process.pid", 42),
            ])
            .build();
        let (provider, reader) = provider(Temporality::Cumulative, resource);
        let meter = provider.meter("acpd");

        let cancels = meter
            .u64_counter("acpd.prompt.cancellations")
            .with_unit("{prompt}")
            .with_description("Prompts cancelled")
            .build();
        cancels.add(2, &[]);
        cancels.add(1, &[]);
        let busy = meter.f64_counter("acpd.busy.time").with_unit("s").build();
        busy.add(1.5, &[KeyValue::new("acpd.child.expected", true)]);

        let active = meter
            .i64_up_down_counter("http.server.active_requests")
            .with_unit("{request}")
            .with_description("Active requests")
            .build();
        active.add(3, &[KeyValue::new("http.request.method", "POST")]);
        active.add(-1, &[KeyValue::new("http.request.method", "POST")]);
        active.add(1, &[KeyValue::new("http.request.method", "GET")]);

        let duration = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(vec![0.005, 0.1, 1.0])
            .build();
        let attrs = [
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/session/{id}/prompt"),
            KeyValue::new("http.response.status_code", 202),
        ];
        for v in [0.00390625, 0.0625, 0.0625, 2.5] {
            duration.record(v, &attrs);
        }
        let sizes = meter
            .u64_histogram("acpd.payload.size")
            .with_unit("By")
            .with_boundaries(vec![100.0, 1000.0])
            .build();
        sizes.record(50, &[]);
        sizes.record(5000, &[]);

        let util = meter
            .f64_gauge("acpd.cpu.utilization")
            .with_unit("1")
            .with_description("CPU share\nwith a \\ backslash")
            .build();
        util.record(
            0.25,
            &[
                KeyValue::new("cpu.mode", "user"),
                KeyValue::new("2nd", "x"),
                KeyValue::new("a.b", "dot"),
                KeyValue::new("a_b", "underscore"),
                KeyValue::new("note", "say \"hi\"\\\nbye"),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec!["a".into(), "b".into()])),
                ),
            ],
        );
        let temp = meter.i64_gauge("acpd.temperature").with_unit("Cel").build();
        temp.record(-3, &[]);

        let expected = r#"# HELP target_info Target metadata
# TYPE target_info gauge
target_info{process_pid="42",service_name="acpd"} 1
# TYPE acpd_busy_time_seconds_total counter
acpd_busy_time_seconds_total{acpd_child_expected="true"} 1.5
# HELP acpd_cpu_utilization_ratio CPU share\nwith a \\ backslash
# TYPE acpd_cpu_utilization_ratio gauge
acpd_cpu_utilization_ratio{a_b="dot;underscore",cpu_mode="user",key_2nd="x",list="[\"a\",\"b\"]",note="say \"hi\"\\\nbye"} 0.25
# TYPE acpd_payload_size_bytes histogram
acpd_payload_size_bytes_bucket{le="100"} 1
acpd_payload_size_bytes_bucket{le="1000"} 1
acpd_payload_size_bytes_bucket{le="+Inf"} 2
acpd_payload_size_bytes_sum 5050
acpd_payload_size_bytes_count 2
# HELP acpd_prompt_cancellations_total Prompts cancelled
# TYPE acpd_prompt_cancellations_total counter
acpd_prompt_cancellations_total 3
# TYPE acpd_temperature_celsius gauge
acpd_temperature_celsius -3
# HELP http_server_active_requests Active requests
# TYPE http_server_active_requests gauge
http_server_active_requests{http_request_method="GET"} 1
http_server_active_requests{http_request_method="POST"} 2
# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{http_request_method="POST",http_response_status_code="202",http_route="/session/{id}/prompt",le="0.005"} 1
http_server_request_duration_seconds_bucket{http_request_method="POST",http_response_status_code="202",http_route="/session/{id}/prompt",le="0.1"} 3
http_server_request_duration_seconds_bucket{http_request_method="POST",http_response_status_code="202",http_route="/session/{id}/prompt",le="1"} 3
http_server_request_duration_seconds_bucket{http_request_method="POST",http_response_status_code="202",http_route="/session/{id}/prompt",le="+Inf"} 4
http_server_request_duration_seconds_sum{http_request_method="POST",http_response_status_code="202",http_route="/session/{id}/prompt"} 2.62890625
http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="202",http_route="/session/{id}/prompt"} 4
"#;
        assert_eq!(collect(&reader), expected);
    }

    #[test]
    fn skips_delta_sums_and_histograms_and_an_empty_resource() {
        let (provider, reader) = provider(Temporality::Delta, Resource::builder_empty().build());
        let meter = provider.meter("acpd");
        meter.u64_counter("c").build().add(1, &[]);
        meter.f64_histogram("h").build().record(1.0, &[]);
        meter.i64_gauge("g").build().record(7, &[]);
        assert_eq!(collect(&reader), "# TYPE g gauge\ng 7\n");
        assert_eq!(encode(&ResourceMetrics::default()), "");
    }

    #[test]
    fn merges_same_named_instruments_of_several_meters() {
        let (provider, reader) =
            provider(Temporality::Cumulative, Resource::builder_empty().build());
        provider
            .meter("a")
            .u64_counter("x")
            .with_description("from a")
            .build()
            .add(1, &[KeyValue::new("m", "a")]);
        provider
            .meter("b")
            .u64_counter("x")
            .build()
            .add(2, &[KeyValue::new("m", "b")]);
        provider
            .meter("c")
            .i64_gauge("x_total")
            .build()
            .record(5, &[]);
        assert_eq!(
            collect(&reader),
            "# HELP x_total from a\n# TYPE x_total counter\nx_total{m=\"a\"} 1\nx_total{m=\"b\"} 2\n"
        );
    }

    #[test]
    fn names_and_units() {
        let cases = [
            (
                "http.server.request.duration",
                "s",
                Kind::Histogram,
                "http_server_request_duration_seconds",
            ),
            (
                "acpd.telemetry.dropped",
                "{item}",
                Kind::Counter,
                "acpd_telemetry_dropped_total",
            ),
            (
                "requests_total",
                "{request}",
                Kind::Counter,
                "requests_total",
            ),
            ("latency_seconds", "s", Kind::Gauge, "latency_seconds"),
            ("io", "By/s", Kind::Gauge, "io_bytes_per_second"),
            (
                "packets",
                "{packet}/s",
                Kind::Counter,
                "packets_per_second_total",
            ),
            ("rate", "1/s", Kind::Gauge, "rate_per_second"),
            ("queue.depth", "1", Kind::Counter, "queue_depth_total"),
            ("queue.fill", "1", Kind::Gauge, "queue_fill_ratio"),
            (
                "tokens.used",
                "token",
                Kind::Counter,
                "tokens_used_token_total",
            ),
            (
                "my-metric..name",
                "ms",
                Kind::Gauge,
                "my_metric_name_milliseconds",
            ),
            ("2xx.count", "", Kind::Counter, "_2xx_count_total"),
            ("cpu.time", "s", Kind::Counter, "cpu_time_seconds_total"),
            (
                "cpu.time_total",
                "s",
                Kind::Counter,
                "cpu_time_seconds_total",
            ),
        ];
        for (name, unit, kind, want) in cases {
            assert_eq!(metric_name(name, unit, kind), want, "{name} [{unit}]");
        }
        assert_eq!(label_name("http.request.method"), "http_request_method");
        assert_eq!(label_name("9lives"), "key_9lives");
        assert_eq!(label_name("a..b/c"), "a_b_c");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(1e21), "1000000000000000000000");
    }
}

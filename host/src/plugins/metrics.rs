//! `acpd.plugin.*` instruments (TELEMETRY.md), labelled by plugin name and hook.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};
use std::sync::OnceLock;
use std::time::Duration;

use super::Hook;

struct Instruments {
    duration: Histogram<f64>,
    failures: Counter<u64>,
    skipped: Counter<u64>,
    state: Gauge<i64>,
    custom: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static I: OnceLock<Instruments> = OnceLock::new();
    I.get_or_init(|| {
        let m = opentelemetry::global::meter("acpd");
        Instruments {
            duration: m
                .f64_histogram("acpd.plugin.duration")
                .with_unit("s")
                .with_description("Duration of plugin hook calls")
                .with_boundaries(vec![
                    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01,
                    0.05, 0.1,
                ])
                .build(),
            failures: m
                .u64_counter("acpd.plugin.failures")
                .with_unit("{failure}")
                .with_description("Plugin calls that failed, by kind")
                .build(),
            skipped: m
                .u64_counter("acpd.plugin.skipped")
                .with_unit("{call}")
                .with_description("Plugin calls skipped (quarantine, selectors)")
                .build(),
            state: m
                .i64_gauge("acpd.plugin.state")
                .with_unit("{state}")
                .with_description("Plugin state: 0 active, 1 degraded, 2 quarantined")
                .build(),
            custom: m
                .u64_counter("acpd.plugin.custom")
                .with_unit("{count}")
                .with_description("Counters a plugin keeps through host.count")
                .build(),
        }
    })
}

fn labels(plugin: &str, hook: Hook) -> [KeyValue; 2] {
    [
        KeyValue::new("acpd.plugin.name", plugin.to_string()),
        KeyValue::new("acpd.plugin.hook", hook.name()),
    ]
}

/// Labels for one plugin at one hook, built once per plugin (the hot path records with them).
pub fn hook_labels(plugin: &str) -> [[KeyValue; 2]; 6] {
    Hook::ALL.map(|h| labels(plugin, h))
}

pub fn duration(labels: &[KeyValue; 2], d: Duration) {
    instruments().duration.record(d.as_secs_f64(), labels);
}

pub fn failure(plugin: &str, hook: Hook, kind: &'static str) {
    let [a, b] = labels(plugin, hook);
    instruments()
        .failures
        .add(1, &[a, b, KeyValue::new("acpd.plugin.failure", kind)]);
}

pub fn skipped(plugin: &str, hook: Hook, reason: &'static str) {
    let [a, b] = labels(plugin, hook);
    instruments()
        .skipped
        .add(1, &[a, b, KeyValue::new("acpd.plugin.reason", reason)]);
}

pub fn state(plugin: &str, state: i64) {
    instruments().state.record(
        state,
        &[KeyValue::new("acpd.plugin.name", plugin.to_string())],
    );
}

pub fn custom(plugin: &str, name: &str, delta: u64) {
    instruments().custom.add(
        delta,
        &[
            KeyValue::new("acpd.plugin.name", plugin.to_string()),
            KeyValue::new("acpd.plugin.counter", name.to_string()),
        ],
    );
}

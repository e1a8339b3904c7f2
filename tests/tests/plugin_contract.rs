//! The `acpd:plugin@0.1.0` contract, held by components built from it: one minimal plugin per
//! world, built once from `tests/plugins/fixtures/contract-0.1.0` with the SDK at 0.1.0 and
//! committed as binaries (`tests/plugins/fixtures/0.1.0/*.wasm`, rebuilt only deliberately by
//! `tests/plugins/fixtures/build.sh`). A host change that breaks deployed 0.1.0 plugins (a
//! renamed function, a changed record, a host import removed, an edit no longer applied) fails
//! here. The versioning rule is in wit/README.md.

use acpd::config::PluginSpec;
use acpd::plugins::{self, ErrorInfo, Hook, LogItem, PluginSet, Surface};
use opentelemetry::logs::AnyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::path::PathBuf;

const WORLDS: [&str; 7] = [
    "base",
    "observer",
    "span-processor",
    "log-processor",
    "redactor",
    "error-translator",
    "all-hooks",
];

fn fixture(world: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/fixtures/0.1.0")
        .join(format!("{world}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec(world: &str, config: serde_json::Value) -> PluginSpec {
    PluginSpec {
        name: world.into(),
        path: format!("{world}.wasm"),
        sha256: None,
        memory_mib: None,
        // A debug build on a busy machine: this test is about behaviour, not budgets.
        deadline_ms: Some(500),
        config: Some(config),
    }
}

fn load(host: &plugins::PluginHost, world: &str) -> PluginSet {
    let bytes = fixture(world);
    let keys = plugins::resolve_keys(&Default::default()).unwrap();
    let p = host
        .instantiate(
            &spec(world, serde_json::json!({"marker": "m-42"})),
            &bytes,
            world.into(),
            plugins::sha256_hex(&bytes),
            &keys,
        )
        .unwrap_or_else(|e| panic!("{world}: a 0.1.0 component no longer loads: {e}"));
    PluginSet::single(p)
}

fn span(name: &str, attrs: Vec<KeyValue>) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(1u128),
            SpanId::from(1u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: name.to_string().into(),
        start_time: std::time::UNIX_EPOCH,
        end_time: std::time::UNIX_EPOCH,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("acpd").build(),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn error(code: &str) -> ErrorInfo {
    ErrorInfo {
        surface: Surface::Http,
        code: code.into(),
        status: 502,
        message: "The agent exited".into(),
        retry_after: None,
        context_json: "{}".into(),
        rpc_code: None,
    }
}

fn hooks(set: &PluginSet) -> Vec<String> {
    set.health()[0]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn components_built_against_0_1_0_load_and_behave() {
    let host = plugins::standalone().unwrap();
    for world in WORLDS {
        let info = plugins::inspect(&fixture(world)).unwrap();
        assert_eq!(info["package"], "acpd:plugin@0.1.0", "{world}: {info}");
        let set = load(&host, world);
        assert_eq!(set.health()[0]["state"], "active", "{world}");
        assert_eq!(set.health()[0]["version"], "0.1.0", "{world}");
        let observer = matches!(world, "observer" | "all-hooks");
        let spans = matches!(world, "span-processor" | "redactor" | "all-hooks");
        let logs = matches!(world, "log-processor" | "redactor" | "all-hooks");
        let errors = matches!(world, "error-translator" | "all-hooks");
        let mut expected = Vec::new();
        if observer {
            expected.extend(["request", "dispatch", "child"]);
        }
        if spans {
            expected.push("export-spans");
        }
        if logs {
            expected.push("export-logs");
        }
        if errors {
            expected.push("error");
        }
        assert_eq!(hooks(&set), expected, "{world}: hooks");

        // observe-hooks: upserts only, on the request span.
        let added = set.observe(
            Hook::Request,
            &[
                ("http.request.method", "GET".into()),
                ("url.path", "/health".into()),
            ],
        );
        if observer {
            assert_eq!(
                attr(&added, "fixture.world"),
                Some(&Value::from(world)),
                "{added:?}"
            );
            assert_eq!(attr(&added, "fixture.marker"), Some(&Value::from("m-42")));
            assert_eq!(attr(&added, "fixture.attrs"), Some(&Value::I64(2)));
        } else {
            assert!(added.is_empty(), "{world}: {added:?}");
        }

        // span-hooks: replace by index, upsert per span, rename.
        let mut batch = vec![
            span(
                "rename-me",
                vec![
                    KeyValue::new("note", "token secret-123 here"),
                    KeyValue::new("n", 7),
                ],
            ),
            span("keep", vec![KeyValue::new("note", "nothing to hide")]),
        ];
        set.spans(&mut batch);
        if spans {
            assert_eq!(batch[0].name, "renamed", "{world}");
            assert_eq!(
                attr(&batch[0].attributes, "note"),
                Some(&Value::from("[fixture]"))
            );
            assert_eq!(attr(&batch[0].attributes, "n"), Some(&Value::I64(7)));
            assert_eq!(batch[1].name, "keep");
            assert_eq!(
                attr(&batch[1].attributes, "note"),
                Some(&Value::from("nothing to hide"))
            );
            for s in &batch {
                assert_eq!(
                    attr(&s.attributes, "fixture.world"),
                    Some(&Value::from(world))
                );
            }
        } else {
            assert_eq!(batch[0].name, "rename-me", "{world}");
            assert_eq!(
                attr(&batch[0].attributes, "note"),
                Some(&Value::from("token secret-123 here"))
            );
        }

        // log-hooks: new bodies, drops, upserts.
        let item = |body: &str| LogItem {
            body: Some(AnyValue::String(body.to_string().into())),
            severity: 9,
            event_name: None,
            attrs: vec![(Key::from("k"), AnyValue::String("v".into()))],
            dropped: false,
            origin: 0,
        };
        let mut logs_batch = vec![item("a secret-9 b"), item("drop me"), item("plain")];
        set.logs(&mut logs_batch);
        let bodies: Vec<String> = logs_batch
            .iter()
            .map(|l| plugins::any_text(l.body.as_ref().unwrap()))
            .collect();
        if logs {
            assert_eq!(bodies, ["a [fixture] b", "plain"], "{world}");
            for l in &logs_batch {
                assert!(
                    l.attrs.iter().any(|(k, v)| k.as_str() == "fixture.world"
                        && *v == AnyValue::String(world.to_string().into())),
                    "{world}: {:?}",
                    l.attrs
                );
            }
        } else {
            assert_eq!(bodies, ["a secret-9 b", "drop me", "plain"], "{world}");
        }

        // error-hooks: one translation, everything else keeps the daemon's wording.
        let translated = set.translate(&error("agent_crashed"));
        if errors {
            let t = translated.expect("translated");
            assert_eq!(
                (t.status, t.code.as_str(), t.message.as_str()),
                (503, "fixture_agent_crashed", "fixture: m-42")
            );
            assert!(t.retryable);
            assert_eq!(t.retry_after, Some(7));
            assert!(set.translate(&error("session_not_found")).is_none());
        } else {
            assert!(translated.is_none(), "{world}");
        }
        assert_eq!(set.health()[0]["state"], "active", "{world}: no failures");
    }
}

/// `init` refusing its config is `invalid-config`: the plugin is not activated.
#[test]
fn a_0_1_0_component_still_refuses_a_bad_config() {
    let host = plugins::standalone().unwrap();
    let bytes = fixture("all-hooks");
    let keys = plugins::resolve_keys(&Default::default()).unwrap();
    let r = host.instantiate(
        &spec("all-hooks", serde_json::json!({"colour": 1})),
        &bytes,
        "all-hooks".into(),
        plugins::sha256_hex(&bytes),
        &keys,
    );
    let e = r.err().expect("refused");
    assert!(e.0.contains("invalid_config"), "{e}");
}

/// Every kind of attribute value reaches a plugin as the host sent it, on the record it belongs
/// to, in span and log batches, and every kind of edit comes back as the plugin made it. The
/// batches' attribute lists are lowered and the edits lifted by acpd's own code
/// (host/src/plugins/lower.rs, lift.rs), not wasmtime's: this holds it to the canonical ABI. The echoing
/// plugin is the tests' hostile fixture in its `echo` mode, built from source.
#[test]
fn every_value_kind_reaches_a_plugin_as_sent() {
    use opentelemetry::{Array, StringValue};
    let host = plugins::standalone().unwrap();
    let bytes = std::fs::read(acpd_tests::guests::hostile()).unwrap();
    let keys = plugins::resolve_keys(&Default::default()).unwrap();
    let p = host
        .instantiate(
            &spec("echo", serde_json::json!({"mode": "echo"})),
            &bytes,
            "hostile".into(),
            plugins::sha256_hex(&bytes),
            &keys,
        )
        .unwrap();
    let set = PluginSet::single(p);

    // (key, value, what the plugin saw) per record; records differ so a misplaced one shows.
    let values = |i: i64| -> Vec<(&'static str, Value, Value)> {
        let same = |k, v: Value| (k, v.clone(), v);
        vec![
            same("s", Value::from(format!("text {i} ünï ✓"))),
            same("empty", Value::from("")),
            same("t", Value::Bool(i % 2 == 0)),
            same("f", Value::Bool(i % 2 == 1)),
            same("min", Value::I64(i64::MIN + i)),
            same("max", Value::I64(i64::MAX - i)),
            same("neg", Value::I64(-1 - i)),
            same("d", Value::F64(-0.5 - i as f64)),
            same("big", Value::F64(f64::MAX)),
            same("tiny", Value::F64(f64::MIN_POSITIVE * (i + 1) as f64)),
            (
                "words",
                Value::Array(Array::String(vec![
                    StringValue::from("a"),
                    StringValue::from(format!("b{i}")),
                ])),
                Value::from(format!("array:[\"a\",\"b{i}\"]")),
            ),
            (
                "ints",
                Value::Array(Array::I64(vec![i, -2])),
                Value::from(format!("array:[{i},-2]")),
            ),
            same("r.s", Value::from(format!("old {i} ✓"))),
            same("r.t", Value::Bool(i % 2 == 0)),
            same("r.n", Value::I64(i64::MAX - i)),
            same("r.d", Value::F64(0.75 + i as f64)),
            same("x.gone", Value::from(format!("gone {i}"))),
        ]
    };
    // What the plugin's `replace` edits leave (`remove`: nothing).
    let replaced = |i: i64| -> Vec<(&'static str, Option<Value>)> {
        vec![
            ("r.s", Some(Value::from(format!("r:old {i} ✓")))),
            ("r.t", Some(Value::Bool(i % 2 != 0))),
            ("r.n", Some(Value::I64((i64::MAX - i).wrapping_add(1)))),
            ("r.d", Some(Value::F64((0.75 + i as f64) * 2.0))),
            ("x.gone", None),
        ]
    };
    let kinds = [SpanKind::Internal, SpanKind::Server, SpanKind::Consumer];
    let mut batch: Vec<SpanData> = (0..3)
        .map(|i| {
            let attrs = values(i).into_iter().map(|(k, v, _)| KeyValue::new(k, v));
            let mut s = span(&format!("s{i} ✓"), attrs.collect());
            s.span_kind = kinds[i as usize].clone();
            if i == 1 {
                s.status = Status::error("broke");
            }
            s
        })
        .collect();
    set.spans(&mut batch);
    for (i, s) in batch.iter().enumerate() {
        for (k, now) in replaced(i as i64) {
            assert_eq!(attr(&s.attributes, k), now.as_ref(), "span {i}, {k}");
        }
        let record = [
            ("name", Value::from(format!("s{i} ✓"))),
            ("kind", Value::from(format!("{:?}", kinds[i]))),
            ("error", Value::Bool(i == 1)),
        ];
        for (k, v) in record {
            let k = format!("echo.record.{k}");
            assert_eq!(attr(&s.attributes, &k), Some(&v), "span {i}, {k}");
        }
        for (k, _, seen) in values(i as i64) {
            assert_eq!(
                attr(&s.attributes, &format!("echo.{k}")),
                Some(&seen),
                "span {i}, {k}: {:?}",
                s.attributes
            );
        }
    }

    let item = |i: i64| LogItem {
        body: Some(AnyValue::String(format!("log {i} ✓").into())),
        severity: 9 + i as u8,
        event_name: (i == 1).then_some("ev.one".into()),
        attrs: vec![
            (Key::from("s"), AnyValue::String(format!("v{i}").into())),
            (Key::from("b"), AnyValue::Boolean(i == 1)),
            (Key::from("n"), AnyValue::Int(i64::MIN + i)),
            (Key::from("d"), AnyValue::Double(1.25 * i as f64)),
            (Key::from("r.s"), AnyValue::String(format!("w{i}").into())),
            (Key::from("x.gone"), AnyValue::Int(i)),
        ],
        dropped: false,
        origin: 0,
    };
    let mut logs: Vec<LogItem> = (0..2).map(item).collect();
    set.logs(&mut logs);
    for (i, l) in logs.iter().enumerate() {
        let i = i as i64;
        let echoed = |k: &str| {
            l.attrs
                .iter()
                .find(|(key, _)| key.as_str() == format!("echo.{k}"))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(echoed("s"), Some(AnyValue::String(format!("v{i}").into())));
        assert_eq!(echoed("b"), Some(AnyValue::Boolean(i == 1)));
        assert_eq!(echoed("n"), Some(AnyValue::Int(i64::MIN + i)));
        assert_eq!(echoed("d"), Some(AnyValue::Double(1.25 * i as f64)));
        let own = |k: &str| {
            l.attrs
                .iter()
                .find(|(key, _)| key.as_str() == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(own("r.s"), Some(AnyValue::String(format!("r:w{i}").into())));
        assert_eq!(own("x.gone"), None, "removed: {:?}", l.attrs);
        assert_eq!(echoed("x.gone"), Some(AnyValue::Int(i)));
        assert_eq!(
            echoed("record.body"),
            Some(AnyValue::String(format!("log {i} ✓").into()))
        );
        assert_eq!(echoed("record.severity"), Some(AnyValue::Int(9 + i)));
        let event = if i == 1 { "ev.one" } else { "" };
        assert_eq!(echoed("record.event"), Some(AnyValue::String(event.into())));
    }

    // The `request` hook's facts, lowered like the batches, edits lifted like theirs.
    let facts: Vec<(&str, Value)> = vec![
        ("s", Value::from("fact ✓")),
        ("b", Value::Bool(true)),
        ("n", Value::I64(i64::MIN)),
        ("d", Value::F64(-2.5)),
    ];
    let added = set.observe(Hook::Request, &facts);
    for (k, v) in &facts {
        let echoed = added
            .iter()
            .find(|kv| kv.key.as_str() == format!("echo.{k}"));
        assert_eq!(echoed.map(|kv| &kv.value), Some(v), "{k}: {added:?}");
    }
    assert_eq!(set.health()[0]["state"], "active", "no failures");
}

//! Plugin hook costs (criterion), plus one summary run that prints the figures the plugin
//! work is judged by, measured in the same process so their ratios are comparable:
//! - `export-spans` on 512 spans x 20 attributes with the first-party redaction rules, as the
//!   WASM plugin through the daemon's real hook (pack, call, validate, apply) and as the same
//!   rules compiled natively (the plugin crate's own code over the same packed view);
//! - a hook with no plugin, a no-op plugin call, and the `request` hook with `enrich`.
//!
//! - the meters a call's budget can be counted in (PLUGINS.md, "CPU budgets"): the daemon's
//!   thread-CPU-time epochs against wall-clock epochs and wasmtime fuel, per call (a no-op
//!   call) and per guest instruction (a loop of 1M turns);
//! - the host kernels under hostile input: the 256-pattern compile bomb in `init`, and the
//!   process's RSS around it.
//!
//! - the ticket-redact rules in Rust, Python and JavaScript guests against native Rust, what
//!   loading each guest costs, and the budget meter's cost on that redaction.
//!
//! `ACPD_BENCH_PROFILE=wasm|native[:N]` runs only one side of the export-spans comparison, for
//! a profiler; under `valgrind --tool=callgrind` the instruction counts of two N give a
//! repeatable per-batch cost where wall clock on a shared machine is not (BENCHMARKS.md). There,
//! `ACPD_BENCH_REDACT_WASM=<path>` replaces the built-in redactor with another build of it (one
//! built with `CARGO_PROFILE_GUEST_STRIP=false` keeps its function names for `perf`).
//!
//! `cargo bench -p acpd --bench plugins` (the no-op plugin is the tests' fixture, built here;
//! the Python and JavaScript guests need the toolchains of
//! tests/scripts/install-guest-toolchains.sh, sourced into the environment).

use acpd::config::PluginSpec;
use acpd::plugins::{self, Hook, PluginSet};
use criterion::{BatchSize, Criterion, criterion_group};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SPANS: usize = 512;
const ATTRS: usize = 20;

/// 20 attributes like acpd's own spans, 3 of them sensitive (a key, an e-mail, URL credentials).
fn attributes(i: usize) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("http.route", "/session/{id}/prompt"),
        KeyValue::new("url.path", format!("/session/{i:08x}/prompt")),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("server.address", "127.0.0.1"),
        KeyValue::new("server.port", 4170),
        KeyValue::new("client.address", "127.0.0.1"),
        KeyValue::new("user_agent.original", "curl/8.5.0"),
        KeyValue::new("http.response.status_code", 202),
        KeyValue::new(
            "session.id",
            format!("5f0c{i:04}-8b1e-4e2a-9d3c-6a7b8c9d0e1f"),
        ),
        KeyValue::new("acpd.prompt.id", format!("p-{i}")),
        KeyValue::new("acpd.client.id", "cli-7"),
        KeyValue::new("acpd.workspace.id", "main"),
        KeyValue::new("acpd.bridge.operation", "prompt.dispatch"),
        KeyValue::new("acpd.prompt.queue_wait_ms", 0.42),
        KeyValue::new("gen_ai.tool.name", "Write notes.txt"),
        KeyValue::new(
            "gen_ai.tool.call.arguments",
            format!(
                r#"{{"path":"notes.txt","content":"key sk-proj-{i:04}Ab3dE5fG7hI9jK1lM3nO5pQ7rS9tU"}}"#
            ),
        ),
        KeyValue::new(
            "gen_ai.input.messages",
            format!("please mail the report to user{i}@example.com today"),
        ),
        KeyValue::new(
            "acpd.agent.endpoint",
            "https://svc:hunter2@agents.internal/v1",
        ),
        KeyValue::new("acpd.tool.status", "completed"),
    ];
    a.truncate(ATTRS);
    a
}

fn batch() -> Vec<SpanData> {
    (0..SPANS)
        .map(|i| SpanData {
            span_context: SpanContext::new(
                TraceId::from(i as u128 + 1),
                SpanId::from(i as u64 + 1),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "bridge prompt.dispatch".into(),
            start_time: std::time::UNIX_EPOCH,
            end_time: std::time::UNIX_EPOCH,
            attributes: attributes(i),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("acpd").build(),
        })
        .collect()
}

fn spec(name: &str, path: &str, config: serde_json::Value) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: path.into(),
        sha256: None,
        memory_mib: None,
        // Generous: the figures are the measurement; a timeout would measure the safety net.
        deadline_ms: Some(1000),
        config: Some(config),
    }
}

fn try_load(
    host: &plugins::PluginHost,
    spec: &PluginSpec,
    bytes: &[u8],
) -> Result<PluginSet, plugins::LoadError> {
    let keys = plugins::resolve_keys(&Default::default()).unwrap();
    host.instantiate(
        spec,
        bytes,
        spec.path.clone(),
        plugins::sha256_hex(bytes),
        &keys,
    )
    .map(PluginSet::single)
}

fn load(host: &plugins::PluginHost, spec: PluginSpec, bytes: &[u8]) -> PluginSet {
    let keys = plugins::resolve_keys(&Default::default()).unwrap();
    let p = host
        .instantiate(
            &spec,
            bytes,
            spec.path.clone(),
            plugins::sha256_hex(bytes),
            &keys,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    PluginSet::single(p)
}

fn builtin(name: &str) -> &'static [u8] {
    plugins::builtin::bytes(name).unwrap_or_else(|| {
        panic!(
            "built-in {name} missing: {}",
            plugins::builtin::available_note()
        )
    })
}

/// The tests' hostile fixture in `ok` mode is the no-op plugin (it exports every hook).
fn noop_wasm() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().join("wasm-guests");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .current_dir(root)
        .args([
            "build",
            "-q",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "-p",
            "acpd-test-hostile",
        ])
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("cargo");
    assert!(status.success(), "building the no-op plugin failed");
    target.join("wasm32-wasip2/guest/acpd_test_hostile.wasm")
}

fn request_facts() -> Vec<(&'static str, Value)> {
    vec![
        ("http.request.method", "POST".into()),
        ("url.path", "/session/abc/prompt".into()),
        ("http.route", "/session/{id}/prompt".into()),
        ("http.request.header.x-team", "payments".into()),
        ("http.request.header.user-agent", "curl/8.5.0".into()),
        ("session.id", "abc".into()),
        ("acpd.workspace.id", "main".into()),
        ("acpd.workspace.path", "/srv/repos/payments/api".into()),
    ]
}

struct Sets {
    redact: PluginSet,
    enrich: PluginSet,
    noop: PluginSet,
    none: PluginSet,
}

fn sets() -> Sets {
    let host = plugins::standalone().unwrap();
    let noop = std::fs::read(noop_wasm()).unwrap();
    Sets {
        redact: load(
            &host,
            spec("redact", "builtin:redact", serde_json::json!({})),
            builtin("redact"),
        ),
        enrich: load(
            &host,
            spec(
                "enrich",
                "builtin:enrich",
                serde_json::json!({
                    "static": {"deployment.environment": "prod"},
                    "headers": {"x-team": "team.name"},
                    "workspaces": [{"glob": "/srv/repos/payments/**", "attributes": {"org.unit": "payments"}}]
                }),
            ),
            builtin("enrich"),
        ),
        noop: load(
            &host,
            spec("noop", "noop.wasm", serde_json::json!({"mode": "ok"})),
            &noop,
        ),
        none: PluginSet::default(),
    }
}

/// The same redaction rules, compiled natively: the plugin crate's own code, fed the same
/// packed batch. In WASM the rules' regexes already run natively, in the daemon's
/// `pattern-set` kernel (one `scan` per batch); here they run in the SDK's native stand-in for
/// that kernel: the same `regex` crate with its default limits and caches, the best the crate
/// does natively (the daemon's kernel adds size and cache bounds for hostile guests). Packing
/// and applying edits are not timed here; the WASM figure includes both (conservative).
mod native {
    use acpd_plugin_redact::Redactor;
    use acpd_plugin_sdk::testing::Batch;
    use acpd_plugin_sdk::{AttrValue, Config, SpanEdits};
    use opentelemetry::Value;
    use opentelemetry_sdk::trace::SpanData;

    pub struct Native {
        batch: Batch,
        redactor: Redactor,
    }

    impl Native {
        pub fn new(input: &[SpanData]) -> Self {
            let mut batch = Batch::new();
            for s in input {
                let attrs: Vec<(&str, AttrValue)> = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match &kv.value {
                            Value::I64(i) => AttrValue::Int(*i),
                            Value::F64(f) => AttrValue::Double(*f),
                            Value::Bool(b) => AttrValue::Bool(*b),
                            other => AttrValue::Str(other.to_string()),
                        };
                        (kv.key.as_str(), v)
                    })
                    .collect();
                batch = batch.span(&s.name, &attrs);
            }
            let redactor = Redactor::new(&Config::from_json("{}").unwrap()).unwrap();
            Self { batch, redactor }
        }

        /// One batch; returns the number of edits (so the work cannot be optimised away).
        pub fn run(&mut self) -> usize {
            let mut out = SpanEdits::default();
            self.redactor
                .redact_spans(&self.batch.spans_view(), &mut out);
            std::hint::black_box(out.attrs.len())
        }
    }
}

fn criterion_benches(c: &mut Criterion) {
    let s = sets();
    let input = batch();
    let mut g = c.benchmark_group("export-spans 512x20");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function("wasm redact", |b| {
        b.iter_batched(
            || input.clone(),
            |mut x| s.redact.spans(&mut x),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("native redact", |b| {
        let mut r = native::Native::new(&input);
        b.iter(|| r.run())
    });
    g.bench_function("no plugin", |b| {
        b.iter_batched(
            || input.clone(),
            |mut x| {
                if s.none.has(Hook::ExportSpans) {
                    s.none.spans(&mut x)
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    let facts = request_facts();
    let mut g = c.benchmark_group("request hook");
    g.bench_function("no plugin", |b| b.iter(|| s.none.has(Hook::Request)));
    g.bench_function("no-op plugin", |b| {
        b.iter(|| s.noop.observe(Hook::Request, &[]))
    });
    g.bench_function("enrich, 8 facts", |b| {
        b.iter(|| s.enrich.observe(Hook::Request, &facts))
    });
    g.finish();
}

/// Median of 7 rounds of `n` calls, in ns per call.
fn median_ns(n: u32, mut f: impl FnMut()) -> f64 {
    f();
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn summary() {
    let s = sets();
    let input = batch();
    // Sanity: the WASM plugin really redacts (not the safety net, not a no-op).
    let mut probe = input.clone();
    s.redact.spans(&mut probe);
    let text = format!("{:?}", probe[0].attributes);
    assert!(
        !text.contains("hunter2") && !text.contains("@example.com"),
        "{text}"
    );
    assert!(text.contains("prompt.dispatch"), "structure kept: {text}");
    assert_eq!(s.redact.health()[0]["state"], "active");

    let mut copies: Vec<Vec<SpanData>> = (0..40).map(|_| input.clone()).collect();
    let clone_ns = median_ns(20, || {
        let _ = std::hint::black_box(input.clone());
    });
    let wasm_ns = median_ns(20, || {
        let mut b = copies.pop().unwrap_or_else(|| input.clone());
        s.redact.spans(&mut b);
        std::hint::black_box(&b);
    }) - clone_ns;
    let mut native = native::Native::new(&input);
    let edits = native.run();
    assert!(
        edits >= SPANS * 3,
        "the native rules redact too: {edits} edits"
    );
    let native_ns = median_ns(20, || {
        native.run();
    });
    let none_ns = median_ns(1_000_000, || {
        std::hint::black_box(s.none.has(Hook::ExportSpans));
    });
    let noop_ns = median_ns(20_000, || {
        std::hint::black_box(s.noop.observe(Hook::Request, &[]));
    });
    let facts = request_facts();
    let enrich_ns = median_ns(20_000, || {
        std::hint::black_box(s.enrich.observe(Hook::Request, &facts));
    });
    let per = (SPANS) as f64;
    println!("\n== plugin hook figures (one run, same process)");
    println!("export-spans 512x20, default redaction rules:");
    println!(
        "  wasm   {:>9.0} ns/span  ({:.2} ms/batch)",
        wasm_ns / per,
        wasm_ns / 1e6
    );
    println!(
        "  native {:>9.0} ns/span  ({:.2} ms/batch)",
        native_ns / per,
        native_ns / 1e6
    );
    println!(
        "  ratio wasm/native = {:.2}x (target <= 1.5x)",
        wasm_ns / native_ns
    );
    println!("hook with no plugin: {none_ns:.1} ns");
    println!(
        "no-op plugin call (request hook): {:.0} ns (target <= 500 ns)",
        noop_ns
    );
    println!("request hook, enrich with 8 facts: {:.0} ns", enrich_ns);
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// This thread's CPU time: on a shared machine, wall time measures the neighbours.
fn thread_cpu() -> Duration {
    use nix::libc;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Median of 9 rounds of `n` calls, in ns of this thread's CPU time per call.
fn cpu_median_ns(n: u32, mut f: impl FnMut()) -> f64 {
    f();
    let mut rounds: Vec<f64> = (0..9)
        .map(|_| {
            let t = thread_cpu();
            for _ in 0..n {
                f();
            }
            (thread_cpu() - t).as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[4]
}

/// The meters side by side: a no-op call, and ns per turn of a guest loop (the difference of
/// a 1M-turn and a 0-turn call, so call overhead cancels out). Timed in thread CPU time.
fn meters() {
    let noop = std::fs::read(noop_wasm()).unwrap();
    println!("\n== meters (budget per call counted in ...)");
    let mut base = None;
    for meter in [
        plugins::Meter::WallClock,
        plugins::Meter::CpuTime,
        plugins::Meter::Fuel,
    ] {
        let host = plugins::standalone_with(meter).unwrap();
        let ok = load(
            &host,
            spec("noop", "noop.wasm", serde_json::json!({"mode": "ok"})),
            &noop,
        );
        let spin = |n: u64| {
            load(
                &host,
                spec(
                    "spin",
                    "noop.wasm",
                    serde_json::json!({"mode": "spin", "iterations": n}),
                ),
                &noop,
            )
        };
        let (s0, s1) = (spin(0), spin(1_000_000));
        let call_ns = cpu_median_ns(20_000, || {
            std::hint::black_box(ok.observe(Hook::Request, &[]));
        });
        let t0 = cpu_median_ns(2_000, || {
            std::hint::black_box(s0.observe(Hook::Request, &[]));
        });
        let t1 = cpu_median_ns(20, || {
            std::hint::black_box(s1.observe(Hook::Request, &[]));
        });
        for set in [&ok, &s0, &s1] {
            assert_eq!(set.health()[0]["state"], "active", "{meter:?}");
        }
        let turn = (t1 - t0) / 1e6;
        let (b_call, b_turn) = *base.get_or_insert((call_ns, turn));
        println!(
            "  {meter:<9?}: no-op call {call_ns:>5.0} ns ({:+.0}%), loop {turn:.3} ns/turn ({:+.0}%)",
            (call_ns / b_call - 1.0) * 100.0,
            (turn / b_turn - 1.0) * 100.0
        );
    }
    println!("  (percentages against wall-clock epochs, the meter before CPU budgets)");
}

/// The 256-pattern Unicode compile bomb in `init` (the hostile fixture's `bomb` mode): how
/// long loading takes and what it leaves behind.
fn kernels() {
    let hostile = std::fs::read(noop_wasm()).unwrap();
    let host = plugins::standalone().unwrap();
    println!("\n== host kernels under hostile input");
    let before = rss_mib();
    let t = Instant::now();
    let set = try_load(
        &host,
        &spec("bomb", "noop.wasm", serde_json::json!({"mode": "bomb"})),
        &hostile,
    )
    .expect("the bomb's init survives a refused compile");
    let took = t.elapsed();
    let mut batch = batch();
    batch.truncate(4);
    set.spans(&mut batch);
    let refused = batch[0]
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "hostile.compiled.refused")
        .map(|kv| kv.value.to_string())
        .unwrap_or_default();
    println!(
        "  bomb in init: loaded in {:.1} ms, RSS {before:.0} -> {:.0} MiB; compile answered: {refused}",
        took.as_secs_f64() * 1e3,
        rss_mib()
    );
}

/// The ticket-redact rules (examples/ticket-redact*) over 512 spans x 20 attributes: 3 of
/// each span's values and its name carry ticket ids or customer names.
fn ticket_batch() -> Vec<SpanData> {
    let mut b = batch();
    for (i, s) in b.iter_mut().enumerate() {
        s.name = format!("execute_tool Edit OPS-{i} notes").into();
        let texts = [
            format!("Acme Corp escalated OPS-{i}; see SEC-77"),
            format!("globex reopened SUP-{}", i * 7),
            format!("{{\"path\":\"notes.md\",\"content\":\"ticket ZEN-{i} for Globex\"}}"),
        ];
        for (kv, t) in s.attributes.iter_mut().zip(texts) {
            kv.value = Value::String(t.into());
        }
    }
    b
}

const TICKET_PATTERN: &str = r"\b[A-Z]{2,10}-\d{1,6}\b";
const CUSTOMERS: &str = r"(?i)\b(?:Acme Corp|Globex)\b";

/// The same rules in native Rust: the `regex` crate over the span data, replacing in place.
struct NativeTickets {
    set: regex::Regex,
}

impl NativeTickets {
    fn new() -> Self {
        Self {
            set: regex::Regex::new(&format!("(?P<t>{TICKET_PATTERN})|(?P<c>{CUSTOMERS})")).unwrap(),
        }
    }

    fn redact(&self, text: &str) -> Option<String> {
        if !self.set.is_match(text) {
            return None;
        }
        Some(
            self.set
                .replace_all(text, |c: &regex::Captures| {
                    if c.name("t").is_some() {
                        "[ticket]"
                    } else {
                        "[customer]"
                    }
                })
                .into_owned(),
        )
    }

    fn run(&self, spans: &mut [SpanData]) -> usize {
        let mut edits = 0;
        for s in spans {
            if let Some(n) = self.redact(&s.name) {
                s.name = n.into();
                edits += 1;
            }
            for kv in s.attributes.iter_mut() {
                if let Value::String(v) = &kv.value
                    && let Some(n) = self.redact(v.as_str())
                {
                    kv.value = Value::String(n.into());
                    edits += 1;
                }
            }
        }
        edits
    }
}

/// The example plugin in Rust (its own project, built as its README says) and in Python and
/// JavaScript (built with the toolchains of tests/scripts/install-guest-toolchains.sh; skipped
/// without them).
fn ticket_guests(target: &Path) -> Vec<(&'static str, Result<PathBuf, String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let run = |mut c: std::process::Command, out: PathBuf| -> Result<PathBuf, String> {
        let o = c.current_dir(root).output().map_err(|e| e.to_string())?;
        if o.status.success() && out.is_file() {
            Ok(out)
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    };
    let mut rust = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    rust.args([
        "build",
        "-q",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
        "examples/ticket-redact/Cargo.toml",
        "--target-dir",
    ])
    .arg(target)
    .env_remove("CARGO_TARGET_DIR");
    let mut out = vec![(
        "Rust",
        run(
            rust,
            target.join("wasm32-wasip2/release/ticket_redact.wasm"),
        ),
    )];
    for (lang, dir, world) in [
        ("Python", "examples/ticket-redact-py", "redactor"),
        ("Python no-op", "tests/plugins/hostile-py", "all-hooks"),
    ] {
        let py = target.join(format!("bench-{}.wasm", dir.replace('/', "-")));
        out.push((
            lang,
            match std::env::var("ACPD_COMPONENTIZE_PY") {
                Ok(tool) => {
                    let mut c = std::process::Command::new(tool);
                    c.args(["-d", "wit", "-w", world, "componentize", "-p", dir])
                        .args(["-p", "sdk/python", "app", "-o"])
                        .arg(&py);
                    run(c, py)
                }
                Err(_) => Err("ACPD_COMPONENTIZE_PY unset".into()),
            },
        ));
    }
    for (lang, entry, world) in [
        (
            "JavaScript",
            "examples/ticket-redact-js/plugin.js",
            "redactor",
        ),
        (
            "JS no-op",
            "tests/plugins/hostile-js/plugin.js",
            "all-hooks",
        ),
    ] {
        let js = target.join(format!("bench-{}.wasm", entry.replace('/', "-")));
        out.push((
            lang,
            match std::env::var("ACPD_COMPONENTIZE_JS") {
                Ok(tool) => {
                    let mut c = std::process::Command::new(
                        std::env::var("ACPD_NODE22").unwrap_or("node".into()),
                    );
                    c.arg(tool)
                        .args(["--wit", "wit", "--world-name", world])
                        .args(["-d", "http", "fetch-event", "-o"])
                        .arg(&js)
                        .arg(entry);
                    run(c, js)
                }
                Err(_) => Err("ACPD_COMPONENTIZE_JS unset".into()),
            },
        ));
    }
    out
}

/// export-spans with the ticket rules in each guest language against native Rust; what
/// loading each guest costs (cold compile, cache load, first instance, RSS); and the cost of
/// the budget meter on this redaction (the no-op call's is in `meters`).
fn polyglot() {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().join("wasm-guests");
    let input = ticket_batch();
    let native = NativeTickets::new();
    let mut probe = input.clone();
    assert!(
        native.run(&mut probe) >= SPANS * 4,
        "the native rules redact"
    );
    let clone_ns = median_ns(20, || {
        let _ = std::hint::black_box(input.clone());
    });
    let native_ns = median_ns(20, || {
        let mut b = input.clone();
        native.run(&mut b);
        std::hint::black_box(&b);
    }) - clone_ns;
    println!("\n== export-spans 512x20, ticket-redact rules, per language (same process)");
    println!(
        "  native Rust {:>9.0} ns/span  ({:.2} ms/batch)",
        native_ns / SPANS as f64,
        native_ns / 1e6
    );
    // A compile cache of this run's own: the first load is a cold compile.
    let cache = std::env::temp_dir().join(format!("acpd-bench-cache-{}", std::process::id()));
    // SAFETY: set before any thread of this benchmark reads the environment concurrently.
    unsafe { std::env::set_var("ACPD_CACHE_DIR", &cache) };
    let customers = serde_json::json!({"customers": ["Acme Corp", "Globex"]});
    let mut rust_set = None;
    for (lang, wasm) in ticket_guests(&target) {
        let wasm = match wasm {
            Ok(w) => w,
            Err(e) => {
                println!("  {lang:<11} skipped: {}", e.lines().last().unwrap_or(""));
                continue;
            }
        };
        let bytes = std::fs::read(&wasm).unwrap();
        let host = plugins::standalone().unwrap();
        // The no-op guests (the hostile fixtures in `ok` mode) take the batch and answer
        // nothing: what moving it into the interpreter costs.
        let noop = lang.ends_with("no-op");
        let config = if noop {
            serde_json::json!({"mode": "ok"})
        } else {
            customers.clone()
        };
        let mut sp = spec("tickets", "tickets.wasm", config);
        sp.memory_mib = Some(256);
        let rss0 = rss_mib();
        let cold = load(&host, sp.clone(), &bytes);
        let rss1 = rss_mib();
        let warm = load(&host, sp.clone(), &bytes);
        let h = |s: &PluginSet, k: &str| s.health()[0]["startup"][k].as_f64().unwrap_or(0.0);
        let mut b = input.clone();
        warm.spans(&mut b);
        let text = format!("{} {:?}", b[0].name, b[0].attributes);
        assert!(
            noop || (text.contains("[ticket]")
                && !text.contains("OPS-0")
                && !text.contains("Acme")),
            "{lang} redacts: {text}"
        );
        let mut copies: Vec<Vec<SpanData>> = (0..40).map(|_| input.clone()).collect();
        let ns = median_ns(10, || {
            let mut b = copies.pop().unwrap_or_else(|| input.clone());
            warm.spans(&mut b);
            std::hint::black_box(&b);
        }) - clone_ns;
        println!(
            "  {lang:<11} {:>9.0} ns/span  ({:.2} ms/batch, {:.1}x native); {:.1} MB; compile {:.0} ms cold, {:.0} ms from cache; first instance {:.1} ms; {:.1} MiB linear memory; RSS +{:.1} MiB at load",
            ns / SPANS as f64,
            ns / 1e6,
            ns / native_ns,
            bytes.len() as f64 / 1e6,
            h(&cold, "loadMs"),
            h(&warm, "loadMs"),
            h(&warm, "instantiateMs"),
            warm.health()[0]["memoryBytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            rss1 - rss0,
        );
        if lang == "Rust" {
            rust_set = Some((bytes, sp));
        }
    }
    if let Some((bytes, sp)) = rust_set {
        println!("  budget meter on this redaction (Rust guest, thread CPU time per batch):");
        let mut base = None;
        for meter in [
            plugins::Meter::WallClock,
            plugins::Meter::CpuTime,
            plugins::Meter::Fuel,
        ] {
            let host = plugins::standalone_with(meter).unwrap();
            let set = load(&host, sp.clone(), &bytes);
            let ns = cpu_median_ns(10, || {
                let mut b = input.clone();
                set.spans(&mut b);
                std::hint::black_box(&b);
            });
            let b = *base.get_or_insert(ns);
            println!(
                "    {meter:<9?}: {:.2} ms/batch ({:+.1}%)",
                ns / 1e6,
                (ns / b - 1.0) * 100.0
            );
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}

criterion_group!(benches, criterion_benches);

/// `ACPD_BENCH_PROFILE=wasm|native[:N]`: only N (default 200) batches of one side of the
/// export-spans comparison, for `perf record` or `valgrind --tool=callgrind` (instruction
/// counts are repeatable where wall clock on a shared machine is not).
fn profile(which: &str) {
    let (side, n) = which.split_once(':').unwrap_or((which, "200"));
    let n: usize = n.parse().expect("ACPD_BENCH_PROFILE=wasm|native[:N]");
    let input = batch();
    match side {
        "wasm" => {
            let host = plugins::standalone().unwrap();
            let bytes = match std::env::var("ACPD_BENCH_REDACT_WASM") {
                Ok(p) => std::fs::read(p).unwrap(),
                Err(_) => builtin("redact").to_vec(),
            };
            let redact = load(
                &host,
                spec("redact", "builtin:redact", serde_json::json!({})),
                &bytes,
            );
            for _ in 0..n {
                let mut b = input.clone();
                redact.spans(&mut b);
                std::hint::black_box(&b);
            }
        }
        "native" => {
            let mut r = native::Native::new(&input);
            for _ in 0..n {
                r.run();
            }
        }
        other => panic!("ACPD_BENCH_PROFILE: {other}? (wasm, native)"),
    }
}

fn main() {
    if let Ok(which) = std::env::var("ACPD_BENCH_PROFILE") {
        return profile(&which);
    }
    summary();
    meters();
    kernels();
    polyglot();
    // `ACPD_BENCH_SUMMARY=1`: the one-run figures only, without the criterion groups.
    if std::env::var_os("ACPD_BENCH_SUMMARY").is_some() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! Python and JavaScript plugins end to end: the ticket-redact examples and hostile fixtures,
//! built from source in this run by the pinned toolchains (componentize-py, componentize-js),
//! loaded by the real daemon, with exports checked at an in-test OTLP receiver, on
//! /debug/traces and /metrics, as tests/tests/plugins.rs does for Rust plugins. Without a
//! toolchain (tests/scripts/install-guest-toolchains.sh) a test prints "skipped: <reason>".

use acpd_tests::otlp::{Protocol, Receiver};
use acpd_tests::plugin_checks::{self, log_text, span_text, toml_str, traces_json};
use acpd_tests::*;
use serde_json::{Value, json};
use std::path::PathBuf;

/// What the ticket rules must keep out of every export (customers match case-insensitively).
const TICKETS: [&str; 2] = ["OPS-4711", "ZEN-31337"];
const CUSTOMERS: [&str; 2] = ["acme corp", "globex"];
const USER_AGENT: &str = "support-bot/1.0 (Globex; ZEN-31337)";

fn leaks(text: &str) -> Vec<&'static str> {
    let lower = text.to_lowercase();
    let mut found: Vec<&'static str> = TICKETS.into_iter().filter(|t| text.contains(t)).collect();
    found.extend(CUSTOMERS.into_iter().filter(|c| lower.contains(c)));
    found
}

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    JavaScript,
}

impl Lang {
    fn example(self) -> Result<PathBuf, String> {
        match self {
            Lang::Python => guests::python_example(),
            Lang::JavaScript => guests::javascript_example(),
        }
    }

    fn hostile(self) -> Result<PathBuf, String> {
        match self {
            Lang::Python => guests::hostile_python(),
            Lang::JavaScript => guests::hostile_javascript(),
        }
    }
}

/// The guest, or why this test is skipped (printed, never a silent pass).
fn built(r: Result<PathBuf, String>) -> Option<PathBuf> {
    match r {
        Ok(p) => Some(p),
        Err(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}

async fn start_with(rx: &Receiver, config: &str) -> anyhow::Result<Daemon> {
    Daemon::builder()
        .config(config)
        .exporting_to(rx)
        .start()
        .await
}

/// Interpreter guests need more than the default 32 MiB; budgets absorb a debug daemon on a
/// loaded 2-core CI machine (the budget itself is what the `loop` tests check).
fn example_config(wasm: &std::path::Path) -> String {
    format!(
        r#"
[telemetry]
capture_content = true

[[plugins]]
name = "tickets"
path = {}
memory_mib = 128
deadline_ms = 500
[plugins.config]
customers = ["Acme Corp", "Globex"]
"#,
        toml_str(wasm)
    )
}

/// A prompt and a User-Agent carrying tickets and customers, an agent stderr line with them:
/// none reaches the OTLP receiver, the trace view or /metrics, and the plugin's own
/// replacements (not the fail-closed mask) are what arrives.
async fn example_redacts_end_to_end(lang: Lang) -> anyhow::Result<()> {
    let Some(wasm) = built(lang.example()) else {
        return Ok(());
    };
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = start_with(&rx, &example_config(&wasm)).await?;
    let h = d.get("/health?deep=1").await?;
    let p = &h.body["plugins"][0];
    assert_eq!(p["state"], "active", "{lang:?}: {p}");
    assert_eq!(p["hooks"], json!(["export-spans", "export-logs"]), "{p}");

    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let text = "hello OPS-4711 is blocking Acme Corp";
    let r = d
        .send(
            d.http
                .post(d.url(&format!("/session/{}/prompt", s.id)))
                .header("X-Qwen-Client-Id", &s.client_id)
                .header("User-Agent", USER_AGENT)
                .json(&json!({"prompt": [{"type": "text", "text": text}]})),
        )
        .await?;
    assert_eq!(r.status, 202, "{}", r.body);
    let prompt_id = r.body["promptId"].as_str().unwrap().to_string();
    sse.until_turn_end(&prompt_id).await?;
    let r = d.prompt(&s, "stderr globex reopened OPS-4711").await?;
    let stderr_id = r.body["promptId"].as_str().unwrap().to_string();
    sse.until_turn_end(&stderr_id).await?;

    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| {
                s.name == "bridge prompt.dispatch"
                    && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
            }) && spans.iter().any(|s| {
                s.name == "POST /session/{id}/prompt"
                    && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
            })
        })
        .await?;
    let dispatch = spans
        .iter()
        .find(|s| {
            s.name == "bridge prompt.dispatch" && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
        })
        .unwrap();
    assert_eq!(
        dispatch.attr_str("gen_ai.input.messages"),
        Some("hello [ticket] is blocking [customer]"),
        "{lang:?}"
    );
    let request = spans
        .iter()
        .find(|s| {
            s.name == "POST /session/{id}/prompt"
                && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
        })
        .unwrap();
    assert_eq!(
        request.attr_str("user_agent.original"),
        Some("support-bot/1.0 ([customer]; [ticket])"),
        "{lang:?}"
    );
    for span in &spans {
        let text = span_text(span);
        assert!(
            leaks(&text).is_empty(),
            "{lang:?}: span {} leaked {:?}",
            span.name,
            leaks(&text)
        );
    }
    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter()
                .any(|l| l.event_name == "acpd.child.stderr" && l.body.contains("reopened"))
        })
        .await?;
    let line = logs
        .iter()
        .find(|l| l.event_name == "acpd.child.stderr" && l.body.contains("reopened"))
        .unwrap();
    assert!(
        line.body.contains("[customer] reopened [ticket]"),
        "{lang:?}: {}",
        line.body
    );
    for l in &logs {
        let text = log_text(l);
        assert!(
            leaks(&text).is_empty(),
            "{lang:?}: log {} leaked {:?}",
            l.event_name,
            leaks(&text)
        );
    }
    let view = traces_json(&d).await?;
    assert!(
        view.contains("[ticket]"),
        "{lang:?}: the trace view has the prompt"
    );
    assert!(
        leaks(&view).is_empty(),
        "{lang:?}: trace view leaked {:?}",
        leaks(&view)
    );
    let metrics = d.metrics_text().await?;
    assert!(
        metrics.contains("acpd_plugin"),
        "{lang:?}: plugin metrics are there"
    );
    assert!(
        leaks(&metrics).is_empty(),
        "{lang:?}: /metrics leaked {:?}",
        leaks(&metrics)
    );
    Ok(())
}

#[tokio::test]
async fn the_python_example_redacts_end_to_end() -> anyhow::Result<()> {
    example_redacts_end_to_end(Lang::Python).await
}

#[tokio::test]
async fn the_javascript_example_redacts_end_to_end() -> anyhow::Result<()> {
    example_redacts_end_to_end(Lang::JavaScript).await
}

fn hostile_config(wasm: &std::path::Path, mode: &str) -> String {
    format!(
        r#"
[telemetry]
capture_content = true

[[plugins]]
name = "hostile"
path = {}
memory_mib = 128
[plugins.config]
mode = "{mode}"
"#,
        toml_str(wasm)
    )
}

/// A plugin that fails at every hook: the daemon keeps serving, the failure is counted under
/// the same label a Rust guest's is, and exports fail closed.
async fn hostile_fails_as_rust_does(lang: Lang, mode: &str, failure: &str) -> anyhow::Result<()> {
    let Some(wasm) = built(lang.hostile()) else {
        return Ok(());
    };
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = start_with(&rx, &hostile_config(&wasm, mode)).await?;
    let what = format!("{lang:?} {mode}");
    plugin_checks::hostile_guest_fails_closed(
        &d,
        &rx,
        "hello OPS-4711 for Acme Corp",
        leaks,
        failure,
        &what,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_python_exception_traps_like_a_rust_panic() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::Python, "exception", "trap").await
}

#[tokio::test]
async fn a_javascript_exception_traps_like_a_rust_panic() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::JavaScript, "exception", "trap").await
}

#[tokio::test]
async fn a_python_infinite_loop_hits_the_cpu_budget() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::Python, "loop", "timeout").await
}

#[tokio::test]
async fn a_javascript_infinite_loop_hits_the_cpu_budget() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::JavaScript, "loop", "timeout").await
}

#[tokio::test]
async fn a_python_1gib_allocation_hits_the_memory_limit() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::Python, "alloc", "memory").await
}

#[tokio::test]
async fn a_javascript_1gib_allocation_hits_the_memory_limit() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::JavaScript, "alloc", "memory").await
}

#[tokio::test]
async fn python_bad_edits_are_refused() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::Python, "bad-index", "invalid_output").await
}

#[tokio::test]
async fn javascript_bad_edits_are_refused() -> anyhow::Result<()> {
    hostile_fails_as_rust_does(Lang::JavaScript, "bad-index", "invalid_output").await
}

/// The hostile guest's entry in deep health, in `mode`.
async fn hostile_health(wasm: &std::path::Path, mode: &str) -> anyhow::Result<Value> {
    let d = Daemon::builder()
        .config(&hostile_config(wasm, mode))
        .start()
        .await?;
    let h = d.get("/health?deep=1").await?;
    Ok(h.body["plugins"][0].clone())
}

/// A refused config is not activated, in any language: the daemon reports it.
async fn refused_config_is_not_activated(lang: Lang) -> anyhow::Result<()> {
    let Some(wasm) = built(lang.hostile()) else {
        return Ok(());
    };
    let p = hostile_health(&wasm, "bad-config").await?;
    assert_eq!(p["state"], "failed", "{lang:?}: {p}");
    let error = p["error"].as_str().unwrap();
    assert!(error.contains("unknown mode"), "{lang:?}: {p}");
    Ok(())
}

#[tokio::test]
async fn a_refused_python_config_is_not_activated() -> anyhow::Result<()> {
    refused_config_is_not_activated(Lang::Python).await
}

#[tokio::test]
async fn a_refused_javascript_config_is_not_activated() -> anyhow::Result<()> {
    refused_config_is_not_activated(Lang::JavaScript).await
}

/// A guest that asks for no call (`Selector.none()`, `selector.none()`) is active at no hook, in
/// any language; the same guest with every hook shows all six.
async fn a_guest_asking_for_no_call_runs_at_no_hook(lang: Lang) -> anyhow::Result<()> {
    let Some(wasm) = built(lang.hostile()) else {
        return Ok(());
    };
    for (mode, hooks) in [
        ("none", json!([])),
        (
            "ok",
            json!([
                "request",
                "dispatch",
                "child",
                "export-spans",
                "export-logs",
                "error"
            ]),
        ),
    ] {
        let p = hostile_health(&wasm, mode).await?;
        assert_eq!(p["state"], "active", "{lang:?} {mode}: {p}");
        assert_eq!(p["hooks"], hooks, "{lang:?} {mode}: {p}");
    }
    Ok(())
}

#[tokio::test]
async fn a_python_guest_asking_for_no_call_runs_at_no_hook() -> anyhow::Result<()> {
    a_guest_asking_for_no_call_runs_at_no_hook(Lang::Python).await
}

#[tokio::test]
async fn a_javascript_guest_asking_for_no_call_runs_at_no_hook() -> anyhow::Result<()> {
    a_guest_asking_for_no_call_runs_at_no_hook(Lang::JavaScript).await
}

/// A guest whose memory does not fit its `memory_mib` is refused at load with an error that
/// names the limit; deep health reports what loading a plugin cost.
async fn memory_limit_is_named_and_startup_reported(lang: Lang) -> anyhow::Result<()> {
    let Some(wasm) = built(lang.example()) else {
        return Ok(());
    };
    let config = format!(
        r#"
[[plugins]]
name = "roomy"
path = {wasm}
memory_mib = 128

[[plugins]]
name = "cramped"
path = {wasm}
memory_mib = 2
"#,
        wasm = toml_str(&wasm)
    );
    let d = Daemon::builder().config(&config).start().await?;
    let h = d.get("/health?deep=1").await?;
    let roomy = &h.body["plugins"][0];
    assert_eq!(roomy["state"], "active", "{lang:?}: {roomy}");
    let memory = roomy["memoryBytes"].as_u64().unwrap();
    assert!(
        memory > 2 << 20 && memory <= 128 << 20,
        "{lang:?}: an interpreter's linear memory: {roomy}"
    );
    let startup = &roomy["startup"];
    for k in ["loadMs", "instantiateMs"] {
        assert!(startup[k].as_f64().unwrap() > 0.0, "{lang:?}: {startup}");
    }
    assert!(startup["rssBytes"].is_u64(), "{lang:?}: {startup}");
    let cramped = &h.body["plugins"][1];
    assert_eq!(cramped["state"], "failed", "{lang:?}: {cramped}");
    let error = cramped["error"].as_str().unwrap();
    assert!(
        error.contains("init failed (memory)")
            && error.contains("over this plugin's limit of 2 MiB (`memory_mib`)"),
        "{lang:?}: {error}"
    );
    Ok(())
}

#[tokio::test]
async fn a_python_guest_over_its_memory_limit_is_refused_by_name() -> anyhow::Result<()> {
    memory_limit_is_named_and_startup_reported(Lang::Python).await
}

#[tokio::test]
async fn a_javascript_guest_over_its_memory_limit_is_refused_by_name() -> anyhow::Result<()> {
    memory_limit_is_named_and_startup_reported(Lang::JavaScript).await
}

/// `acpd plugin inspect` names the guest's language and toolchain.
fn inspect_reports_the_toolchain(lang: Lang) -> anyhow::Result<()> {
    let Some(wasm) = built(lang.example()) else {
        return Ok(());
    };
    let out = std::process::Command::new(acpd_bin())
        .args(["plugin", "inspect"])
        .arg(&wasm)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(info["package"], "acpd:plugin@0.1.0", "{info}");
    let t = &info["toolchain"];
    let has = |field: &str, prefix: &str| {
        t[field].as_array().is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|v| v.starts_with(prefix))
        })
    };
    let (language, tool) = match lang {
        Lang::Python => ("Python", "componentize-py"),
        Lang::JavaScript => ("JavaScript", "ComponentizeJS"),
    };
    assert!(has("language", language), "{lang:?}: {t}");
    assert!(has("processedBy", tool), "{lang:?}: {t}");
    Ok(())
}

#[test]
fn inspect_names_the_python_toolchain() -> anyhow::Result<()> {
    inspect_reports_the_toolchain(Lang::Python)
}

#[test]
fn inspect_names_the_javascript_toolchain() -> anyhow::Result<()> {
    inspect_reports_the_toolchain(Lang::JavaScript)
}

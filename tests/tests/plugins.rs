//! WASM plugins end to end: components built from source in this run (first-party, the
//! example, and hostile fixtures) loaded by the real daemon, with exports checked at an
//! in-test OTLP receiver and on /debug/traces.

use acpd_tests::otlp::{Protocol, Receiver};
use acpd_tests::plugin_checks::{self, log_text, span_text, toml_str, traces_json};
use acpd_tests::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const API_KEY: &str = "sk-ant-api03-Zq8vR2mN5pL7xK4wT9yB3cF6hJ1dS0aE";
const EMAIL: &str = "bob.smith@example.com";
const URL_PASSWORD: &str = "hunter2pass";

fn secret_text() -> String {
    format!("key {API_KEY} mail {EMAIL} db https://admin:{URL_PASSWORD}@db.internal/x")
}

fn leaks(text: &str) -> Vec<&'static str> {
    [API_KEY, EMAIL, URL_PASSWORD]
        .into_iter()
        .filter(|s| text.contains(s))
        .collect()
}

async fn start_with(
    rx: &Receiver,
    config: &str,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<Daemon> {
    let mut b = Daemon::builder()
        .config(config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300");
    for (k, v) in extra_env {
        b = b.env(k, v);
    }
    b.start().await
}

/// Runs `write notes.txt <secrets>` with an allow vote; returns the prompt id.
async fn write_prompt(
    d: &Daemon,
    s: &SessionRef,
    headers: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut sse = d.events(s, None, None).await?;
    let mut req = d
        .http
        .post(d.url(&format!("/session/{}/prompt", s.id)))
        .header("X-Qwen-Client-Id", &s.client_id)
        .json(&json!({"prompt": [{"type": "text", "text": format!("write notes.txt {}", secret_text())}]}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = d.send(req).await?;
    assert_eq!(r.status, 202, "{}", r.body);
    let prompt_id = r.body["promptId"].as_str().unwrap().to_string();
    let frames = sse.until(WAIT, |f| f.event == "permission_request").await?;
    let request_id = frames.last().unwrap().data["data"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    let v = d
        .post_as(
            s,
            &format!("/session/{}/permission/{request_id}", s.id),
            json!({"outcome": {"outcome": "selected", "optionId": "allow"}}),
        )
        .await?;
    assert_eq!(v.status, 200, "{}", v.body);
    let end = sse.until_turn_end(&prompt_id).await?;
    assert_eq!(end.last().unwrap().event, "turn_complete");
    Ok(prompt_id)
}

/// Runs `stderr <secrets>`: the agent writes them to stderr, which acpd forwards as logs.
async fn stderr_prompt(d: &Daemon, s: &SessionRef) -> anyhow::Result<()> {
    let mut sse = d.events(s, None, None).await?;
    let r = d.prompt(s, &format!("stderr {}", secret_text())).await?;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["promptId"].as_str().unwrap().to_string();
    sse.until_turn_end(&id).await?;
    Ok(())
}

const FIRST_PARTY: &str = r#"
[telemetry]
capture_content = true

[keys]
pii = { value = "test-only-key-0123456789abcdef" }

[[plugins]]
name = "enrich"
path = "builtin:enrich"
deadline_ms = 200
[plugins.config]
static = { "org.name" = "acme" }
headers = { "x-team" = "team.name" }

[[plugins]]
name = "redact"
path = "builtin:redact"
# Deadlines here absorb a debug build on a loaded 2-core CI machine (tests run in parallel);
# the deadline itself is what the `loop` test checks.
deadline_ms = 200
[plugins.config]
hash_key = "pii"
actions = { email = "hash" }

[[plugins]]
name = "errors"
path = "builtin:errors"
deadline_ms = 200
"#;

#[tokio::test]
async fn the_default_config_runs_the_first_party_plugins() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let h = d.get("/health?deep=1").await?;
    let plugins = h.body["plugins"]
        .as_array()
        .expect("plugins in deep health")
        .clone();
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["enrich", "redact", "errors"], "{plugins:?}");
    for p in &plugins {
        assert_eq!(p["state"], "active", "{p}");
    }
    let redact = &plugins[1];
    assert_eq!(redact["hooks"], json!(["export-spans", "export-logs"]));
    // With no config it has nothing to add, so it asks for no call (the request path skips
    // the `request` hook altogether).
    assert_eq!(plugins[0]["hooks"], json!([]), "enrich: {}", plugins[0]);
    Ok(())
}

/// `enrich` mapping a header and nothing else asks for the requests that carry it: those are
/// enriched, the others are not called for.
#[tokio::test]
async fn enrich_with_only_a_header_mapping_is_called_for_requests_that_carry_it()
-> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let config = r#"
[[plugins]]
name = "enrich"
path = "builtin:enrich"
[plugins.config]
headers = { "X-Team" = "team.name" }
"#;
    let d = start_with(&rx, config, &[]).await?;
    let h = d.get("/health?deep=1").await?;
    assert_eq!(
        h.body["plugins"][0]["hooks"],
        json!(["request"]),
        "{}",
        h.body
    );
    let mut ids = Vec::new();
    for team in [Some("payments"), None] {
        let mut req = d.http.post(d.url("/session")).json(&json!({}));
        if let Some(t) = team {
            req = req.header("X-Team", t);
        }
        let r = d.send(req).await?;
        assert_eq!(r.status, 200, "{}", r.body);
        ids.push(r.body["sessionId"].as_str().unwrap().to_string());
    }
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().filter(|s| s.name == "POST /session").count() >= 2
        })
        .await?;
    let teams: Vec<Option<&str>> = spans
        .iter()
        .filter(|s| s.name == "POST /session")
        .map(|s| s.attr_str("team.name"))
        .collect();
    assert_eq!(teams.len(), 2, "{teams:?}");
    assert!(
        teams.contains(&Some("payments")) && teams.contains(&None),
        "{teams:?}"
    );
    let prom = d.metrics_text().await?;
    let enrich = [
        "acpd_plugin_name=\"enrich\"",
        "acpd_plugin_hook=\"request\"",
    ];
    assert_eq!(
        metric_total(&prom, "acpd_plugin_duration_seconds_count", &enrich),
        1.0,
        "one call, for the request with the header:\n{prom}"
    );
    assert_eq!(
        metric_total(&prom, "acpd_plugin_skipped_total", &enrich),
        1.0,
        "one request skipped by the selector:\n{prom}"
    );
    Ok(())
}

#[tokio::test]
async fn first_party_plugins_redact_enrich_and_translate_end_to_end() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = start_with(&rx, FIRST_PARTY, &[]).await?;
    let s = d.create_session().await?;
    let prompt_id = write_prompt(&d, &s, &[("x-team", "payments")]).await?;
    stderr_prompt(&d, &s).await?;

    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| {
                s.name == "bridge prompt.dispatch"
                    && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
            }) && spans.iter().any(|s| {
                s.name.starts_with("acpd.tool_call")
                    && s.attr("gen_ai.tool.call.arguments").is_some()
            })
        })
        .await?;
    let dispatch = spans
        .iter()
        .find(|s| {
            s.name == "bridge prompt.dispatch" && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
        })
        .unwrap();
    // Redaction: the prompt text is there, its secrets are not (the e-mail as a keyed hash).
    let input = dispatch
        .attr_str("gen_ai.input.messages")
        .expect("captured prompt text");
    assert!(input.starts_with("write notes.txt key "), "{input}");
    assert!(
        leaks(input).is_empty(),
        "leaked {:?}: {input}",
        leaks(input)
    );
    assert!(input.contains("[hash:"), "e-mail hashed: {input}");
    assert!(input.contains("[REDACTED"), "key masked: {input}");
    let tool = spans
        .iter()
        .find(|s| {
            s.name.starts_with("acpd.tool_call") && s.attr("gen_ai.tool.call.arguments").is_some()
        })
        .unwrap();
    let args = tool.attr_str("gen_ai.tool.call.arguments").unwrap();
    assert!(
        args.contains("notes.txt") && leaks(args).is_empty(),
        "{args}"
    );
    for span in &spans {
        let text = span_text(span);
        assert!(
            leaks(&text).is_empty(),
            "span {} leaked {:?}",
            span.name,
            leaks(&text)
        );
    }
    // Enrichment: on the request span and inherited by the prompt's bridge span.
    let request = spans
        .iter()
        .find(|s| {
            s.name == "POST /session/{id}/prompt"
                && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
        })
        .expect("prompt request span");
    assert_eq!(request.attr_str("org.name"), Some("acme"));
    assert_eq!(request.attr_str("team.name"), Some("payments"));
    assert_eq!(dispatch.attr_str("org.name"), Some("acme"));
    assert_eq!(dispatch.attr_str("team.name"), Some("payments"));

    // Logs: the agent's stderr line arrives without its secrets.
    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter()
                .any(|l| l.event_name == "acpd.child.stderr" && l.body.contains("mail"))
        })
        .await?;
    let line = logs
        .iter()
        .find(|l| l.event_name == "acpd.child.stderr" && l.body.contains("mail"))
        .unwrap();
    assert!(line.body.contains("[hash:"), "{}", line.body);
    for l in &logs {
        let text = log_text(l);
        assert!(
            leaks(&text).is_empty(),
            "log {} leaked {:?}",
            l.event_name,
            leaks(&text)
        );
    }
    // The trace view shows what was exported, never more.
    let view = traces_json(&d).await?;
    assert!(view.contains("notes.txt"));
    assert!(
        leaks(&view).is_empty(),
        "trace view leaked {:?}",
        leaks(&view)
    );

    // Error translation: an agent crash reaches the client as the errors plugin's message.
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, "crash").await?;
    let id = r.body["promptId"].as_str().unwrap().to_string();
    let frames = sse.until_turn_end(&id).await?;
    let err = frames.last().unwrap();
    assert_eq!(err.event, "turn_error", "{frames:?}");
    let message = err.data["data"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The agent stopped unexpectedly"),
        "{message}"
    );
    assert_eq!(err.data["data"]["retryable"], true, "{err:?}");
    Ok(())
}

fn hostile_config(mode: &str) -> String {
    format!(
        r#"
[telemetry]
capture_content = true

[[plugins]]
name = "hostile"
path = {}
[plugins.config]
mode = "{mode}"
"#,
        toml_str(&guests::hostile())
    )
}

/// A plugin that tries every way out of its sandbox (files, directory listing, writes, env,
/// args, a TCP connection to a listener of ours, the clock), at init
/// and at every batch, is denied each time, and the daemon's env stays out of its reach.
#[tokio::test]
async fn a_plugin_cannot_reach_files_sockets_env_or_the_clock() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let config = format!("{}connect = \"{addr}\"\n", hostile_config("escape"));
    let d = start_with(&rx, &config, &[("ACPD_ESCAPE_SECRET", "s3cr3t-env-value")]).await?;
    assert_eq!(d.get("/health").await?.status, 200);
    // A traced request (health checks are not): its span batch reaches the plugin.
    assert_eq!(d.get("/session/nope").await?.status, 404);
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.attr_str("hostile.escape.call.net").is_some())
        })
        .await?;
    let span = spans
        .iter()
        .find(|s| s.attr_str("hostile.escape.call.net").is_some())
        .unwrap();
    let mut tried = Vec::new();
    for stage in ["init", "call"] {
        for what in [
            "fs_read", "fs_list", "fs_write", "env", "args", "net", "clock",
        ] {
            let key = format!("hostile.escape.{stage}.{what}");
            let outcome = span.attr_str(&key).unwrap_or("missing");
            assert!(
                outcome.starts_with("denied"),
                "{key}: {outcome} (span {})",
                span_text(span)
            );
            tried.push(key);
        }
    }
    assert_eq!(tried.len(), 14);
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the plugin reached our TCP listener"
    );
    assert!(!std::path::Path::new("/tmp/acpd-hostile-escape").exists());
    let text = span_text(span);
    assert!(!text.contains("s3cr3t-env-value"), "{text}");
    Ok(())
}

/// A plugin that fails at every hook: the daemon keeps serving, the failure is counted and
/// logged, and exports fail closed (the safety net masks every non-structural value).
async fn hostile_mode_keeps_serving_and_fails_closed(
    mode: &str,
    failure: &str,
) -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = start_with(&rx, &hostile_config(mode), &[]).await?;
    let text = format!("hello {}", secret_text());
    plugin_checks::hostile_guest_fails_closed(&d, &rx, &text, leaks, failure, mode).await?;
    let view = traces_json(&d).await?;
    assert!(leaks(&view).is_empty(), "{mode}: trace view leaked");

    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter().any(|l| l.event_name == "acpd.plugin.failed")
        })
        .await?;
    let failed = logs
        .iter()
        .find(|l| l.event_name == "acpd.plugin.failed")
        .unwrap();
    assert_eq!(
        failed.attributes.get("acpd.plugin.name"),
        Some(&json!("hostile"))
    );
    Ok(())
}

#[tokio::test]
async fn a_trapping_plugin_is_contained() -> anyhow::Result<()> {
    hostile_mode_keeps_serving_and_fails_closed("trap", "trap").await
}

/// A plugin importing no sockets or files has its request-path calls run on the daemon's
/// async workers themselves. One that writes to stderr there (a blocking WASI write) is
/// served, every call; one that panics there (Rust prints the panic to stderr before the guest
/// traps) fails its calls as traps, and the daemon serves every request on.
#[tokio::test]
async fn a_plugin_writing_to_stderr_on_an_async_worker_is_served() -> anyhow::Result<()> {
    for mode in ["print", "panic"] {
        let rx = Receiver::start(Protocol::HttpProtobuf).await?;
        let config = format!(
            "[[plugins]]\nname = \"printer\"\npath = {}\n[plugins.config]\nmode = \"{mode}\"\n",
            toml_str(&guests::printer())
        );
        let d = start_with(&rx, &config, &[]).await?;
        let requests = 6;
        for i in 0..requests {
            let s = d.create_session().await?;
            let r = d.prompt(&s, &format!("hello {i}")).await?;
            assert!(
                r.status < 300,
                "{mode}: prompt {i}: {} {}",
                r.status,
                r.body
            );
        }
        assert_eq!(d.get("/health").await?.status, 200, "{mode}");
        let metrics = d.metrics_text().await?;
        let printed = metric_total(
            &metrics,
            "acpd_plugin_custom",
            &["acpd_plugin_counter=\"printed\""],
        );
        let traps = metric_total(
            &metrics,
            "acpd_plugin_failures",
            &[
                "acpd_plugin_failure=\"trap\"",
                "acpd_plugin_hook=\"request\"",
            ],
        );
        if mode == "print" {
            // A session and a prompt each pass the `request` hook.
            assert!(
                printed >= (2 * requests) as f64,
                "printed {printed}\n{metrics}"
            );
            assert_eq!(traps, 0.0, "{metrics}");
        } else {
            assert_eq!(printed, 0.0, "{metrics}");
            assert!(traps >= 1.0, "no trap counted\n{metrics}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline() -> anyhow::Result<()> {
    hostile_mode_keeps_serving_and_fails_closed("loop", "timeout").await
}

#[tokio::test]
async fn a_1gib_allocation_hits_the_memory_limit() -> anyhow::Result<()> {
    hostile_mode_keeps_serving_and_fails_closed("alloc", "memory").await
}

#[tokio::test]
async fn a_huge_output_is_refused() -> anyhow::Result<()> {
    hostile_mode_keeps_serving_and_fails_closed("huge-output", "invalid_output").await
}

#[tokio::test]
async fn out_of_range_edit_indexes_are_refused() -> anyhow::Result<()> {
    hostile_mode_keeps_serving_and_fails_closed("bad-index", "invalid_output").await
}

/// A plugin that cannot start (a panicking init, a config it refuses) is not activated; the
/// daemon serves, reports it, and keeps exports failing closed in its place.
async fn unloadable_plugin_fails_closed(mode: &str) -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = start_with(&rx, &hostile_config(mode), &[]).await?;
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.status, 200);
    let p = &h.body["plugins"][0];
    assert_eq!(p["name"], "hostile");
    assert_eq!(p["state"], "failed", "{mode}: {p}");
    assert!(p["error"].as_str().unwrap().contains("init failed"), "{p}");
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, &format!("hello {}", secret_text())).await?;
    let id = r.body["promptId"].as_str().unwrap().to_string();
    sse.until_turn_end(&id).await?;
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| s.name == "bridge prompt.dispatch")
        })
        .await?;
    for span in &spans {
        assert!(
            leaks(&span_text(span)).is_empty(),
            "{mode}: span {} leaked",
            span.name
        );
    }
    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter().any(|l| l.event_name == "acpd.plugin.failed")
        })
        .await?;
    assert!(logs.iter().any(|l| l.event_name == "acpd.plugin.failed"));
    Ok(())
}

#[tokio::test]
async fn a_panicking_init_is_not_activated() -> anyhow::Result<()> {
    unloadable_plugin_fails_closed("panic-init").await
}

#[tokio::test]
async fn a_refused_config_is_not_activated() -> anyhow::Result<()> {
    unloadable_plugin_fails_closed("bad-config").await
}

fn reload_config(mode: &str) -> String {
    format!(
        r#"
[[plugins]]
name = "enrich"
path = "builtin:enrich"
deadline_ms = 200
[plugins.config]
static = {{ "org.name" = "acme" }}

# This test is about the swap, not deadlines (a debug build on a loaded CI machine).
[[plugins]]
name = "hostile"
path = {}
deadline_ms = 200
[plugins.config]
mode = "{mode}"
"#,
        toml_str(&guests::hostile())
    )
}

#[tokio::test]
async fn reload_swaps_the_set_atomically_under_load() -> anyhow::Result<()> {
    const TOKEN: &str = "reload-test-token-123456";
    let d = Arc::new(
        Daemon::builder()
            .config(&reload_config("tag"))
            .args(&["--token", TOKEN])
            .start()
            .await?,
    );
    let auth = format!("Bearer {TOKEN}");
    let s = {
        let r = d
            .send(
                d.http
                    .post(d.url("/session"))
                    .header("Authorization", &auth)
                    .json(&json!({})),
            )
            .await?;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["sessionId"].as_str().unwrap().to_string()
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (d, stop, ok, failed, auth, s) = (
            d.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            auth.clone(),
            s.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = d
                    .http
                    .get(d.url(&format!("/session/{s}")))
                    .header("Authorization", &auth)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let reload = || async {
        d.send(
            d.http
                .post(d.url("/admin/plugins/reload"))
                .header("Authorization", &auth),
        )
        .await
    };
    let mut generation = 0;
    for _ in 0..5 {
        let r = reload().await?;
        assert_eq!(r.status, 200, "{}", r.body);
        let g = r.body["generation"].as_u64().unwrap();
        assert!(g > generation, "generation {g} after {generation}");
        generation = g;
    }
    // A broken new set is refused; the old one keeps running.
    std::fs::write(d.config_path(), reload_config("bad-config"))?;
    let r = reload().await?;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["code"], "plugin_reload_failed");
    assert!(
        r.body["error"].as_str().unwrap().contains("hostile"),
        "{}",
        r.body
    );
    // SIGHUP reloads too, once the file is fixed.
    std::fs::write(d.config_path(), reload_config("ok"))?;
    signal(d.pid(), nix::sys::signal::Signal::SIGHUP)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let h = d
            .send(
                d.http
                    .get(d.url("/health?deep=1"))
                    .header("Authorization", &auth),
            )
            .await?;
        let names: Vec<String> = h.body["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}:{}",
                    p["name"].as_str().unwrap(),
                    p["state"].as_str().unwrap()
                )
            })
            .collect();
        if d.log().iter().any(|l| l.contains("plugins reloaded")) {
            assert_eq!(names, ["enrich:active", "hostile:active"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP reload not seen: {:?}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await?;
    }
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reload"
    );
    // Without the token, the admin route is closed.
    let r = d.send(d.http.post(d.url("/admin/plugins/reload"))).await?;
    assert_eq!(r.status, 401);
    Ok(())
}

#[tokio::test]
async fn reload_needs_a_configured_token() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let r = d.post("/admin/plugins/reload", json!({})).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["code"], "token_required");
    Ok(())
}

#[tokio::test]
async fn plugin_cli_inspects_and_tests_the_example() -> anyhow::Result<()> {
    let wasm = guests::example();
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
    assert_eq!(info["package"], "acpd:plugin@0.1.0");
    // A reader that stops early (`| head -1`) ends the report quietly: no panic.
    let mut child = std::process::Command::new(acpd_bin())
        .args(["plugin", "inspect"])
        .arg(&wasm)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let cut = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await???;
    assert!(
        cut.status.success(),
        "{:?}: {}",
        cut.status,
        String::from_utf8_lossy(&cut.stderr)
    );
    let roles: Vec<&str> = info["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        roles.contains(&"span-hooks") && roles.contains(&"log-hooks"),
        "{info}"
    );
    assert!(
        !roles.contains(&"error-hooks"),
        "exports only its roles: {info}"
    );
    // The toolchain, from the component's `producers` sections (a stripped release build keeps
    // the tools, not rustc's language entry).
    let tools = info["toolchain"]["processedBy"].to_string();
    assert!(tools.contains("wit-bindgen-rust"), "{info}");

    let tests_dir = acpd_tests::manifest_dir();
    let root = tests_dir.parent().unwrap();
    let ex = root.join("examples/ticket-redact");
    let out = std::process::Command::new(acpd_bin())
        .args(["plugin", "test"])
        .arg(&wasm)
        .arg("--config")
        .arg(ex.join("config.toml"))
        .arg("--input")
        .arg(ex.join("sample.json"))
        // A debug build on a loaded CI machine; the daemon's deadlines are tested elsewhere.
        .args(["--deadline-ms", "200"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let before = report["spans"]["before"].to_string();
    let after = report["spans"]["after"].to_string();
    assert!(before.contains("OPS-"), "sample has ticket ids: {before}");
    assert!(!after.contains("OPS-"), "ticket ids redacted: {after}");
    assert!(
        after.contains("[ticket]") && after.contains("[customer]"),
        "by the plugin: {after}"
    );
    Ok(())
}

#[tokio::test]
async fn a_pinned_sha256_mismatch_refuses_the_plugin() -> anyhow::Result<()> {
    let config = format!(
        r#"
[[plugins]]
name = "hostile"
path = {}
sha256 = "{}"
[plugins.config]
mode = "ok"
"#,
        toml_str(&guests::hostile()),
        "0".repeat(64)
    );
    let d = Daemon::builder().config(&config).start().await?;
    let h = d.get("/health?deep=1").await?;
    let p = &h.body["plugins"][0];
    assert_eq!(p["state"], "failed");
    assert!(
        p["error"].as_str().unwrap().contains("sha256 mismatch"),
        "{p}"
    );
    Ok(())
}

//! The agent telemetry gateway end to end: the demo agent child exports all three signals to
//! acpd (which points it there), with secrets in span names, attributes, log bodies and metric
//! attributes; nothing secret reaches the collector, the trace view or /metrics, while the items
//! do arrive, attributed, and the agent's spans nest in the prompt's trace. Hostile agents:
//! no or a foreign credential, garbage bodies, a flood. A traces-only backend: the refused
//! signals stop with one warning and counted drops.

use acpd_tests::otlp::{Protocol, Receiver, Signal};
use acpd_tests::*;
use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use std::time::{Duration, Instant};

/// One of each thing the redaction must catch: an API key (the redact plugin's detector), an
/// e-mail address (likewise) and a URL password (the built-in sanitiser).
const SECRETS: [&str; 3] = [
    "sk-live-0123456789abcdefghijklmnop",
    "alice@example.com",
    "hunter2",
];
const SECRET_TEXT: &str =
    "sk-live-0123456789abcdefghijklmnop alice@example.com https://bob:hunter2@example.com/x";

/// The built-in plugins, with enrichment of each prompt's dispatch (which the agent's items in
/// that prompt's trace inherit) and deadlines that test redaction, not the scheduler of a
/// loaded test machine.
const PLUGINS: &str = r#"
[[plugins]]
name = "enrich"
path = "builtin:enrich"
deadline_ms = 250
[plugins.config]
static = { "org.team" = "payments" }
on_dispatch = true

[[plugins]]
name = "redact"
path = "builtin:redact"
deadline_ms = 250

[[plugins]]
name = "errors"
path = "builtin:errors"
"#;

/// A daemon exporting to `rx`, its demo agent exporting to the daemon over `agent`.
async fn daemon(rx: &Receiver, agent: Protocol, extra_toml: &str) -> Result<Daemon> {
    Daemon::builder()
        .config(&format!(
            "{PLUGINS}\n[agent.env]\nOTEL_EXPORTER_OTLP_PROTOCOL = \"{}\"\nOTEL_METRIC_EXPORT_INTERVAL = \"200\"\n{extra_toml}",
            agent.env_value()
        ))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .start()
        .await
}

fn leaked(text: &str) -> Vec<&'static str> {
    SECRETS.into_iter().filter(|s| text.contains(s)).collect()
}

async fn secrets_never_leave(protocol: Protocol) -> Result<()> {
    let rx = Receiver::start(protocol).await?;
    let d = daemon(&rx, protocol, "").await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d.prompt(&s, &format!("telemetry {SECRET_TEXT}")).await?;
    let prompt_id = p.body["promptId"].as_str().context("promptId")?.to_string();
    sse.until_turn_end(&prompt_id).await?;

    // The agent's items arrive, its own resource kept, attributed to the child, the workspace,
    // the session and the prompt.
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| s.name.starts_with("demo.secret"))
                && spans.iter().any(|s| {
                    s.name == "bridge prompt.dispatch"
                        && s.attr_str("acpd.prompt.id") == Some(prompt_id.as_str())
                })
        })
        .await?;
    let secret_span = spans
        .iter()
        .find(|s| s.name.starts_with("demo.secret"))
        .context("the agent's span")?;
    assert_eq!(secret_span.service_name, "acpd-demo-agent");
    assert!(
        secret_span
            .attr_str("acpd.child.id")
            .is_some_and(|c| c.starts_with("child-"))
    );
    assert!(secret_span.attr_str("acpd.workspace.id").is_some());
    assert_eq!(secret_span.attr_str("session.id"), Some(s.id.as_str()));
    assert_eq!(
        secret_span.attr_str("acpd.prompt.id"),
        Some(prompt_id.as_str())
    );
    assert_eq!(
        secret_span.attr_str("org.team"),
        Some("payments"),
        "the prompt's enrichment reaches the agent's spans"
    );
    let dispatch = spans
        .iter()
        .find(|s| {
            s.name == "bridge prompt.dispatch"
                && s.attr_str("acpd.prompt.id") == Some(prompt_id.as_str())
        })
        .context("dispatch")?;
    assert_eq!(
        secret_span.trace_id, dispatch.trace_id,
        "the agent's spans nest in the prompt's trace"
    );
    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter().any(|l| l.event_name == "demo.secret")
        })
        .await?;
    let log = logs
        .iter()
        .find(|l| l.event_name == "demo.secret")
        .context("log")?;
    assert_eq!(log.service_name, "acpd-demo-agent");
    assert_eq!(
        log.attributes
            .get("acpd.prompt.id")
            .and_then(|v| v.as_str()),
        Some(prompt_id.as_str())
    );
    let metrics = rx
        .wait_for_metrics(WAIT, |m| m.iter().any(|m| m.name == "demo.secret.count"))
        .await?;
    let metric = metrics
        .iter()
        .find(|m| m.name == "demo.secret.count")
        .context("metric")?;
    assert_eq!(metric.service_name, "acpd-demo-agent");
    assert!(
        metric
            .points
            .iter()
            .all(|p| p.attributes.contains_key("acpd.child.id")),
        "{metric:?}"
    );

    // Nothing secret in any signal, in the view, in /metrics.
    let everything = rx.summary();
    let lines: Vec<&str> = everything
        .lines()
        .filter(|l| !leaked(l).is_empty())
        .collect();
    let plugin_log: Vec<String> = d
        .log()
        .into_iter()
        .filter(|l| l.contains("plugin"))
        .collect();
    assert!(
        lines.is_empty(),
        "leaked to the collector: {lines:#?}\n{plugin_log:#?}"
    );
    let view = d
        .get(&format!("/debug/traces.json?traceId={}", dispatch.trace_id))
        .await?
        .body
        .to_string();
    assert!(
        view.contains("demo.secret"),
        "the agent's spans are in the view"
    );
    assert!(
        leaked(&view).is_empty(),
        "leaked {:?} to the view",
        leaked(&view)
    );
    let prom = d.http.get(d.url("/metrics")).send().await?.text().await?;
    assert!(
        leaked(&prom).is_empty(),
        "leaked {:?} to /metrics",
        leaked(&prom)
    );
    Ok(())
}

#[tokio::test]
async fn secrets_never_leave_over_http_protobuf() -> Result<()> {
    secrets_never_leave(Protocol::HttpProtobuf).await
}

#[tokio::test]
async fn secrets_never_leave_over_http_json() -> Result<()> {
    secrets_never_leave(Protocol::HttpJson).await
}

#[tokio::test]
async fn secrets_never_leave_over_grpc() -> Result<()> {
    secrets_never_leave(Protocol::Grpc).await
}

/// The child's environment, as the demo agent reports it.
async fn child_env(d: &Daemon, s: &SessionRef, sse: &mut Sse, name: &str) -> Result<String> {
    let p = d.prompt(s, &format!("env {name}")).await?;
    let id = p.body["promptId"].as_str().context("promptId")?.to_string();
    let frames = sse.until_turn_end(&id).await?;
    let text: String = frames
        .iter()
        .filter_map(|f| {
            f.data["data"]["update"]["content"]["text"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    Ok(text)
}

#[tokio::test]
async fn only_a_childs_own_credential_is_accepted_and_garbage_is_refused() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon(&rx, Protocol::HttpProtobuf, "").await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let endpoint = ingest_endpoint(&d, &s, &mut sse).await?;
    let key = child_key(&d, &s, &mut sse).await?;
    let http = reqwest::Client::new();
    let url = format!("{endpoint}/v1/traces");
    // No credential, a made-up one: refused.
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(vec![])
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .header("x-acpd-ingest-key", "0123456789abcdef0123456789abcdef")
        .header("content-type", "application/x-protobuf")
        .body(vec![])
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // The child's own credential with garbage: 400, for each encoding.
    for (ct, body) in [
        ("application/x-protobuf", vec![0xff_u8; 64]),
        ("application/json", b"{\"resourceSpans\": 7".to_vec()),
    ] {
        let r = http
            .post(&url)
            .header("x-acpd-ingest-key", &key)
            .header("content-type", ct)
            .body(body)
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{ct}");
    }
    let r = http
        .post(&url)
        .header("x-acpd-ingest-key", &key)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(vec![1, 2, 3])
        .send()
        .await?;
    assert_eq!(r.status(), 400, "a broken gzip body");
    // An empty but valid request is fine.
    let r = http
        .post(&url)
        .header("x-acpd-ingest-key", &key)
        .header("content-type", "application/x-protobuf")
        .body(vec![])
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // Nothing from the refused requests went on. The gateway forwards a signal's requests in
    // order: once a marker sent after them has reached the collector, so would they have.
    let marker = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![7; 16],
                    span_id: vec![7; 8],
                    name: "gateway-marker".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let r = http
        .post(&url)
        .header("x-acpd-ingest-key", &key)
        .header("content-type", "application/x-protobuf")
        .body(marker.encode_to_vec())
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let spans = rx
        .wait_for_spans(WAIT, |s| s.iter().any(|s| s.name == "gateway-marker"))
        .await?;
    let foreign: Vec<&str> = spans
        .iter()
        .filter(|s| s.service_name != "acpd" && s.service_name != "acpd-demo-agent")
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(foreign, ["gateway-marker"], "only the marker was forwarded");
    let marker = spans
        .iter()
        .find(|s| s.name == "gateway-marker")
        .context("marker")?;
    assert!(
        marker.attr_str("acpd.child.id").is_some(),
        "attributed to the key's child"
    );
    Ok(())
}

/// The sum of the `acpd.telemetry.dropped` series whose labels include all of `labels`.
async fn drops(d: &Daemon, labels: &[&str]) -> Result<u64> {
    let prom = d.metrics_text().await?;
    Ok(metric_total(&prom, "acpd_telemetry_dropped", labels) as u64)
}

/// Items lost from agents at `stage`, as /metrics reports them.
async fn agent_drops(d: &Daemon, stage: &str) -> Result<u64> {
    drops(
        d,
        &[
            "acpd_drop_source=\"agent\"",
            &format!("acpd_drop_stage=\"{stage}\""),
        ],
    )
    .await
}

/// An agent floods the ingest while the collector hangs: the gateway's queues fill, the agent
/// is told to retry later, memory stays bounded, the losses are counted, and another session's
/// prompts are admitted as fast as before.
#[tokio::test]
async fn a_flooding_agent_is_bounded_and_counted_and_others_are_unaffected() -> Result<()> {
    let rx = Receiver::start_hanging(Protocol::HttpProtobuf).await?;
    let d = Daemon::builder()
        .config(&format!("{PLUGINS}\n[telemetry]\ntimeout_ms = 300\n"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await?;
    let flooder = d.create_session().await?;
    let quiet = d
        .create_session_with(serde_json::json!({"sessionScope": "thread"}))
        .await?;
    let mut sse_q = d.events(&quiet, None, None).await?;
    let mut sse_f = d.events(&flooder, None, None).await?;
    // A baseline for the quiet session's admission latency.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let p = d.prompt(&quiet, "hello").await?;
        idle.push(t0.elapsed());
        sse_q
            .until_turn_end(p.body["promptId"].as_str().context("id")?)
            .await?;
    }
    let base_rss = acpd_tests::load::rss_kib(d.pid())?;
    let flood = d.prompt(&flooder, "telemetry-flood 40000").await?;
    assert_eq!(flood.status, 202);
    let mut busy = Vec::new();
    let mut peak = 0;
    for _ in 0..20 {
        let t0 = Instant::now();
        let p = d.prompt(&quiet, "hello").await?;
        busy.push(t0.elapsed());
        sse_q
            .until_turn_end(p.body["promptId"].as_str().context("id")?)
            .await?;
        peak = peak.max(acpd_tests::load::rss_kib(d.pid())?);
    }
    sse_f
        .until_turn_end(flood.body["promptId"].as_str().context("id")?)
        .await?;
    peak = peak.max(acpd_tests::load::rss_kib(d.pid())?);
    let refused = agent_drops(&d, "ingest").await?;
    let failed = agent_drops(&d, "export_failed").await?;
    idle.sort();
    busy.sort();
    eprintln!(
        "quiet session admission p50 idle {:?} / during the flood {:?}; RSS {} -> peak {} MiB; agent items refused at the ingest {refused}, lost in failed exports {failed}",
        idle[10],
        busy[10],
        base_rss / 1024,
        peak / 1024
    );
    assert!(
        refused + failed > 0,
        "a flood against a hanging collector loses items, and they are counted"
    );
    assert!(
        busy[10] < idle[10] * 5 + Duration::from_millis(20),
        "admission under a flood: idle {idle:?} busy {busy:?}"
    );
    assert!(peak < base_rss + 200 * 1024, "RSS {base_rss} -> {peak} KiB");
    Ok(())
}

/// A backend that takes traces only: logs and metrics are refused for good (405), so their
/// export stops with one warning each, the losses are counted, and traces keep flowing.
#[tokio::test]
async fn a_traces_only_backend_stops_the_refused_signals_with_one_warning() -> Result<()> {
    let traces = Receiver::start(Protocol::HttpProtobuf).await?;
    let refusing = Receiver::start_failing(Protocol::HttpProtobuf, 405).await?;
    let d = Daemon::builder()
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &traces.signal_endpoint(Signal::Traces),
        )
        .env(
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            &refusing.signal_endpoint(Signal::Logs),
        )
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            &refusing.signal_endpoint(Signal::Metrics),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    for i in 0..6 {
        let p = d.prompt(&s, &format!("stderr line {i}")).await?;
        sse.until_turn_end(p.body["promptId"].as_str().context("id")?)
            .await?;
    }
    let refused = refusing
        .wait_for_requests(WAIT, |r| {
            r.iter().any(|r| r.signal == Signal::Logs)
                && r.iter().any(|r| r.signal == Signal::Metrics)
        })
        .await?;
    assert!(!refused.is_empty());
    // The refused items are counted, per signal.
    let refused = |signal: &'static str| {
        let d = &d;
        async move {
            drops(
                d,
                &[
                    "acpd_drop_stage=\"export_refused\"",
                    &format!("acpd_signal=\"{signal}\""),
                ],
            )
            .await
        }
    };
    let counted = |logs: u64, metrics: u64| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = (refused("logs").await?, refused("metrics").await?);
            if now.0 > logs && now.1 > metrics {
                return Ok::<_, anyhow::Error>(now);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "refused items not counted: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (logs_then, metrics_then) = counted(0, 0).await?;
    let sent_then = refusing.requests().len();
    // Later batches are skipped, not sent: once more of each signal has been counted as
    // refused, the collector has seen at most the batches already in flight (one per signal).
    for i in 0..3 {
        let p = d.prompt(&s, &format!("stderr more {i}")).await?;
        sse.until_turn_end(p.body["promptId"].as_str().context("id")?)
            .await?;
    }
    traces
        .wait_for_spans(WAIT, |s| {
            s.iter().any(|s| s.name == "bridge prompt.dispatch")
        })
        .await?;
    counted(logs_then, metrics_then).await?;
    assert!(
        refusing.requests().len() <= sent_then + 2,
        "export stopped: {} then {}",
        sent_then,
        refusing.requests().len()
    );
    let log = d.log();
    let warnings: Vec<&String> = log.iter().filter(|l| l.contains("refuses")).collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("logs") && l.contains("405"))
            && warnings
                .iter()
                .any(|l| l.contains("metrics") && l.contains("405")),
        "{warnings:?}"
    );
    assert!(warnings.len() <= 2, "one warning per signal: {warnings:?}");
    Ok(())
}

/// A failing collector is reported with its status, for traces as for the other signals.
#[tokio::test]
async fn a_failing_collector_is_reported_with_its_status() -> Result<()> {
    let rx = Receiver::start_failing(Protocol::HttpProtobuf, 503).await?;
    let d = Daemon::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d.prompt(&s, "hello").await?;
    sse.until_turn_end(p.body["promptId"].as_str().context("id")?)
        .await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let log = d.log();
        if log
            .iter()
            .any(|l| l.contains("export of traces") && l.contains("HTTP status 503"))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no traces export report: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The real Qwen Code child with its telemetry on in its settings (prompts logged, no endpoint
/// of its own): its traces, metrics and logs reach the collector through acpd, redacted and
/// attributed, and the prompt's trace runs from `POST /session/{id}/prompt` into qwen's LLM
/// request span.
#[tokio::test]
async fn the_real_qwen_codes_telemetry_passes_the_gateway() -> Result<()> {
    use acpd_tests::mock_llm::MockLlm;
    use acpd_tests::mock_llm::agents::{AgentOptions, create_session_within, qwen_daemon};
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions {
        config: format!(
            "{PLUGINS}\n[telemetry]\nendpoint = \"{}\"\nprotocol = \"http/protobuf\"\nspan_delay_ms = 100\n",
            rx.endpoint()
        ),
        settings: Some(serde_json::json!({
            "telemetry": {"enabled": true, "logPrompts": true},
            "outboundCorrelation": {"propagateTraceContext": true}
        })),
        ..AgentOptions::default()
    };
    let Some((mut d, _home)) = qwen_daemon(&mock, &opts).await? else {
        return Ok(());
    };
    let s = create_session_within(&d, Duration::from_secs(90)).await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d
        .prompt(&s, &format!("Please remember {SECRET_TEXT}"))
        .await?;
    assert_eq!(p.status, 202, "{}", p.body);
    let prompt_id = p.body["promptId"].as_str().context("promptId")?.to_string();
    let frames =
        tokio::time::timeout(Duration::from_secs(90), sse.until_turn_end(&prompt_id)).await??;
    assert_eq!(frames.last().context("frames")?.event, "turn_complete");
    // Qwen flushes its telemetry when its stdin closes: stop the daemon, which stops the child
    // and then flushes the gateway.
    let status = d.terminate(Duration::from_secs(30)).await?;
    assert!(status.success(), "{status:?}");

    let spans = rx.spans();
    let logs = rx.logs();
    let metrics = rx.metrics();
    let agent_spans: Vec<_> = spans.iter().filter(|s| s.service_name != "acpd").collect();
    let agent_logs: Vec<_> = logs.iter().filter(|l| l.service_name != "acpd").collect();
    let agent_metrics: Vec<_> = metrics
        .iter()
        .filter(|m| m.service_name != "acpd")
        .collect();
    eprintln!(
        "qwen through the gateway: {} spans, {} log records, {} metrics; services {:?}",
        agent_spans.len(),
        agent_logs.len(),
        agent_metrics.len(),
        agent_spans
            .iter()
            .map(|s| s.service_name.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        !agent_spans.is_empty() && !agent_logs.is_empty() && !agent_metrics.is_empty(),
        "all three signals arrive: {}",
        rx.summary()
    );
    assert!(
        agent_spans
            .iter()
            .all(|s| s.attr_str("acpd.child.id").is_some())
    );
    assert!(
        agent_logs
            .iter()
            .all(|l| l.attributes.contains_key("acpd.child.id"))
    );
    // The prompt's trace: from the daemon's server span into qwen's LLM request.
    let server = spans
        .iter()
        .find(|s| s.name == "POST /session/{id}/prompt")
        .context("the prompt's server span")?;
    let llm = agent_spans
        .iter()
        .find(|s| s.name == "qwen-code.llm_request" && s.trace_id == server.trace_id)
        .context("qwen-code.llm_request in the prompt's trace")?;
    assert_eq!(llm.attr_str("acpd.prompt.id"), Some(prompt_id.as_str()));
    // The prompt reached qwen's logs (logPrompts) and left the host redacted.
    let prompt_log = agent_logs
        .iter()
        .find(|l| {
            l.event_name == "qwen-code.user_prompt"
                || l.attributes.get("event.name").and_then(|v| v.as_str())
                    == Some("qwen-code.user_prompt")
        })
        .with_context(|| {
            format!(
                "qwen's user_prompt record: {:?}",
                agent_logs
                    .iter()
                    .map(|l| (
                        l.event_name.as_str(),
                        l.body.chars().take(60).collect::<String>(),
                        l.attributes.keys().cloned().collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            )
        })?;
    assert_eq!(
        prompt_log
            .attributes
            .get("acpd.prompt.id")
            .and_then(|v| v.as_str()),
        Some(prompt_id.as_str())
    );
    let prompt_attr = prompt_log
        .attributes
        .get("prompt")
        .and_then(|v| v.as_str())
        .context("the prompt attribute")?;
    assert!(
        prompt_attr.starts_with("Please remember") && leaked(prompt_attr).is_empty(),
        "redacted, not dropped: {prompt_attr}"
    );
    let everything = rx.summary();
    // Every request as it arrived, whole (the summary shows names, not every attribute).
    let mut requests: Vec<String> = rx
        .logs_requests()
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    requests.extend(rx.trace_requests().iter().map(|r| format!("{r:?}")));
    requests.extend(rx.metrics_requests().iter().map(|r| format!("{r:?}")));
    for text in requests {
        assert!(leaked(&text).is_empty(), "leaked {:?}", leaked(&text));
    }
    assert!(leaked(&everything).is_empty());
    Ok(())
}

/// `agent_direct = true` is the documented bypass: the child gets the collector's endpoint,
/// and its items arrive there as it sent them (no attribution: they never passed acpd).
#[tokio::test]
async fn agent_direct_sends_the_children_straight_to_the_collector() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = Daemon::builder()
        .config(&format!(
            "[telemetry]\nendpoint = \"{}\"\nprotocol = \"http/protobuf\"\nagent_direct = true\n",
            rx.endpoint()
        ))
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let endpoint = child_env(&d, &s, &mut sse, "OTEL_EXPORTER_OTLP_ENDPOINT").await?;
    assert!(endpoint.contains(&rx.endpoint()), "{endpoint}");
    let p = d.prompt(&s, "telemetry direct").await?;
    sse.until_turn_end(p.body["promptId"].as_str().context("id")?)
        .await?;
    let spans = rx
        .wait_for_spans(WAIT, |s| {
            s.iter().any(|s| s.name.starts_with("demo.secret"))
        })
        .await?;
    let span = spans
        .iter()
        .find(|s| s.name.starts_with("demo.secret"))
        .context("span")?;
    assert!(span.attr_str("acpd.child.id").is_none(), "{span:?}");
    Ok(())
}

/// The ingest key a child got in its environment.
async fn child_key(d: &Daemon, s: &SessionRef, sse: &mut Sse) -> Result<String> {
    let headers = child_env(d, s, sse, "OTEL_EXPORTER_OTLP_HEADERS").await?;
    Ok(headers
        .split("x-acpd-ingest-key=")
        .nth(1)
        .context("key")?
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .context("key")?
        .to_string())
}

/// The gateway's base URL, from the child's environment.
async fn ingest_endpoint(d: &Daemon, s: &SessionRef, sse: &mut Sse) -> Result<String> {
    let endpoint = child_env(d, s, sse, "OTEL_EXPORTER_OTLP_ENDPOINT").await?;
    let port: String = endpoint
        .split("http://127.0.0.1:")
        .nth(1)
        .context("a loopback endpoint")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(format!("http://127.0.0.1:{port}"))
}

/// Each child has its own credential, and a child's stops working once it has exited.
#[tokio::test]
async fn credentials_are_per_child_and_revoked_after_exit() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = Daemon::builder()
        .args(&["--agent-scope", "session"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .start()
        .await?;
    let a = d.create_session().await?;
    let b = d
        .create_session_with(serde_json::json!({"sessionScope": "thread"}))
        .await?;
    let mut sse_a = d.events(&a, None, None).await?;
    let mut sse_b = d.events(&b, None, None).await?;
    assert_ne!(d.child_pid(&a).await?, d.child_pid(&b).await?);
    let key_a = child_key(&d, &a, &mut sse_a).await?;
    let key_b = child_key(&d, &b, &mut sse_b).await?;
    assert_ne!(key_a, key_b);
    let url = format!("{}/v1/logs", ingest_endpoint(&d, &a, &mut sse_a).await?);
    let http = reqwest::Client::new();
    let post = |key: String| {
        http.post(&url)
            .header("x-acpd-ingest-key", key)
            .header("content-type", "application/x-protobuf")
            .body(Vec::new())
            .send()
    };
    assert_eq!(post(key_a.clone()).await?.status(), 200);
    // Session a's child goes away; its key stops working (after a short grace for what it
    // sent just before exiting), b's keeps working.
    assert_eq!(d.delete(&format!("/session/{}", a.id)).await?.status, 204);
    let deadline = Instant::now() + WAIT;
    loop {
        if post(key_a.clone()).await?.status() == 401 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "a's key still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post(key_b).await?.status(), 200);
    Ok(())
}

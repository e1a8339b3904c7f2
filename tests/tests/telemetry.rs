//! OpenTelemetry end to end: the real daemon and the real demo agent export to an OTLP receiver
//! running in this test (HTTP/protobuf, HTTP/JSON and gRPC), and one prompt is reconstructable
//! from what arrives: one trace from the HTTP request through the bridge and the ACP call into
//! the agent's own spans, with metrics and correlated logs.

use acpd_tests::otlp::{Protocol, Receiver, RecvSpan};
use acpd_tests::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

async fn daemon_exporting_to(rx: &Receiver, extra: &[&str]) -> anyhow::Result<Daemon> {
    Daemon::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .args(extra)
        .file("hello.txt", "hello from the workspace")
        .start()
        .await
}

fn find<'a>(spans: &'a [RecvSpan], name: &str) -> Option<&'a RecvSpan> {
    spans.iter().find(|s| s.name == name)
}

fn child_of(spans: &[RecvSpan], parent: &RecvSpan, name_prefix: &str) -> bool {
    spans.iter().any(|s| {
        s.name.starts_with(name_prefix)
            && s.parent_span_id == parent.span_id
            && s.trace_id == parent.trace_id
    })
}

/// Runs `write out.txt ...` with an inbound traceparent and an allow vote; returns the prompt id.
async fn traced_write_prompt(d: &Daemon, s: &SessionRef) -> anyhow::Result<String> {
    let mut sse = d.events(s, None, None).await?;
    let r = d
        .send(
            d.http
                .post(d.url(&format!("/session/{}/prompt", s.id)))
                .header("X-Qwen-Client-Id", &s.client_id)
                .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
                .json(&json!({"prompt": [{"type": "text", "text": "write out.txt traced"}]})),
        )
        .await?;
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
    assert_eq!(v.status, 200);
    let end = sse.until_turn_end(&prompt_id).await?;
    assert_eq!(end.last().unwrap().event, "turn_complete");
    Ok(prompt_id)
}

async fn one_trace_across_the_process_boundary(protocol: Protocol) -> anyhow::Result<()> {
    let rx = Receiver::start(protocol).await?;
    let d = daemon_exporting_to(&rx, &[]).await?;
    let s = d.create_session().await?;
    let prompt_id = traced_write_prompt(&d, &s).await?;

    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            let t: Vec<_> = spans.iter().filter(|s| s.trace_id == TRACE).collect();
            // Every span asserted below: they end (and are batched out) at different times.
            [
                "POST /session/{id}/prompt",
                "bridge prompt.dispatch",
                "acp session/prompt",
                "invoke_agent",
                "chat",
                "execute_tool write",
                "permission.wait",
                "acpd.tool_call edit",
            ]
            .iter()
            .all(|n| t.iter().any(|s| s.name.starts_with(n)))
        })
        .await?;
    let trace: Vec<RecvSpan> = spans.into_iter().filter(|s| s.trace_id == TRACE).collect();
    let server = find(&trace, "POST /session/{id}/prompt").expect("server span");
    assert_eq!(
        server.parent_span_id, PARENT,
        "the inbound traceparent is the root's parent"
    );
    assert_eq!(server.kind, 2, "SERVER");
    assert_eq!(server.attributes["http.route"], "/session/{id}/prompt");
    assert_eq!(server.attributes["http.response.status_code"], 202);
    // The peer's address (`ConnectInfo`, from the server loop).
    assert_eq!(server.attributes["client.address"], "127.0.0.1");
    assert_eq!(server.attributes["session.id"], s.id.as_str());
    assert_eq!(server.attributes["acpd.prompt.id"], prompt_id.as_str());
    let dispatch = find(&trace, "bridge prompt.dispatch").expect("dispatch span");
    assert_eq!(dispatch.parent_span_id, server.span_id);
    assert!(
        dispatch
            .attributes
            .contains_key("acpd.prompt.queue_wait_ms")
    );
    let acp = find(&trace, "acp session/prompt").expect("acp span");
    assert_eq!(acp.parent_span_id, dispatch.span_id);
    assert_eq!(acp.kind, 3, "CLIENT");
    assert_eq!(acp.attributes["rpc.system"], "jsonrpc");
    assert!(
        child_of(&trace, acp, "acpd.tool_call edit"),
        "daemon-observed tool span under the ACP span"
    );
    let tool = find(&trace, "acpd.tool_call edit").unwrap();
    assert!(
        child_of(&trace, tool, "permission.wait"),
        "the permission wait under the tool call that asked"
    );
    // Across the process boundary: the agent's spans hang under the ACP client span.
    let agent = trace
        .iter()
        .find(|s| s.name.starts_with("invoke_agent"))
        .expect("agent interaction span");
    assert_eq!(agent.service_name, "acpd-demo-agent");
    assert_eq!(
        agent.parent_span_id, acp.span_id,
        "agent span parented across the process boundary"
    );
    assert!(
        child_of(&trace, agent, "chat"),
        "LLM span under the agent's interaction span"
    );
    assert!(
        child_of(&trace, agent, "execute_tool write"),
        "agent tool span under its interaction span"
    );
    let perm = find(&trace, "permission.wait").unwrap();
    assert_eq!(perm.attributes["acpd.permission.decision"], "allow");
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn one_trace_http_protobuf() -> anyhow::Result<()> {
    one_trace_across_the_process_boundary(Protocol::HttpProtobuf).await
}

#[tokio::test]
async fn one_trace_http_json() -> anyhow::Result<()> {
    one_trace_across_the_process_boundary(Protocol::HttpJson).await
}

#[tokio::test]
async fn one_trace_grpc() -> anyhow::Result<()> {
    one_trace_across_the_process_boundary(Protocol::Grpc).await
}

#[tokio::test]
async fn concurrent_sessions_get_their_own_traces() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx, &["--agent-scope", "session"]).await?;
    let (a, b) = (d.create_session().await?, d.create_session().await?);
    let (mut ea, mut eb) = (
        d.events(&a, None, None).await?,
        d.events(&b, None, None).await?,
    );
    let (pa, pb) = (
        d.prompt(&a, "slow 5 20").await?,
        d.prompt(&b, "slow 5 20").await?,
    );
    let (ida, idb) = (
        pa.body["promptId"].as_str().unwrap().to_string(),
        pb.body["promptId"].as_str().unwrap().to_string(),
    );
    ea.until_turn_end(&ida).await?;
    eb.until_turn_end(&idb).await?;
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            let count = |prefix: &str| spans.iter().filter(|s| s.name.starts_with(prefix)).count();
            [
                "POST /session/{id}/prompt",
                "bridge prompt.dispatch",
                "acp session/prompt",
                "invoke_agent",
            ]
            .iter()
            .all(|n| count(n) >= 2)
        })
        .await?;
    let trace_of = |prompt: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == "bridge prompt.dispatch"
                    && s.attributes.get("acpd.prompt.id") == Some(&json!(prompt))
            })
            .map(|s| s.trace_id.clone())
            .expect("dispatch span of the prompt")
    };
    let (ta, tb) = (trace_of(&ida), trace_of(&idb));
    assert_ne!(ta, tb, "two prompts, two traces");
    for (trace, session, other) in [(&ta, &a.id, &b.id), (&tb, &b.id, &a.id)] {
        let in_trace: Vec<_> = spans.iter().filter(|s| &s.trace_id == trace).collect();
        assert!(in_trace.len() >= 4, "{in_trace:?}");
        for s in &in_trace {
            if let Some(sid) = s.attributes.get("session.id") {
                assert_eq!(sid, &json!(session), "span {} in the wrong session", s.name);
                assert_ne!(sid, &json!(other));
            }
        }
        for name in [
            "POST /session/{id}/prompt",
            "bridge prompt.dispatch",
            "acp session/prompt",
        ] {
            let s = in_trace.iter().find(|s| s.name == name).expect(name);
            assert_eq!(
                s.attributes.get("session.id"),
                Some(&json!(session)),
                "{name} carries session.id"
            );
        }
    }
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn a_5xx_marks_the_span_error_and_logs_correlated() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx, &["--max-pending-prompts-per-session", "1"]).await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let first = d.prompt(&s, "slow 20 100").await?;
    let full = d.prompt(&s, "second").await?;
    assert_eq!(full.status, 503, "{}", full.body);
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| {
                s.name == "POST /session/{id}/prompt"
                    && s.attributes.get("http.response.status_code") == Some(&json!(503))
            })
        })
        .await?;
    let failed = spans
        .iter()
        .find(|s| {
            s.name == "POST /session/{id}/prompt"
                && s.attributes.get("http.response.status_code") == Some(&json!(503))
        })
        .unwrap();
    assert_eq!(failed.status_code, 2, "ERROR status on a 5xx");
    assert_eq!(failed.attributes["error.type"], "prompt_queue_full");
    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter().any(|l| l.event_name == "acpd.bridge.error")
        })
        .await?;
    let log = logs
        .iter()
        .find(|l| l.event_name == "acpd.bridge.error")
        .unwrap();
    assert_eq!(
        log.trace_id, failed.trace_id,
        "the error log is correlated to the request span"
    );
    assert_eq!(log.span_id, failed.span_id);
    assert_eq!(log.attributes["http.route"], "/session/{id}/prompt");
    assert_eq!(log.attributes["session.id"], s.id.as_str());
    assert!(
        log.body.contains("Too many pending prompts"),
        "{}",
        log.body
    );
    let _ = d
        .post_as(&s, &format!("/session/{}/cancel", s.id), json!({}))
        .await?;
    sse.until_turn_end(first.body["promptId"].as_str().unwrap())
        .await?;
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn a_child_crash_is_logged_as_unexpected_exit() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx, &[]).await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d.prompt(&s, "crash").await?;
    sse.until_turn_end(p.body["promptId"].as_str().unwrap())
        .await?;
    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter().any(|l| l.event_name == "acpd.child.exit")
        })
        .await?;
    let exit = logs
        .iter()
        .find(|l| l.event_name == "acpd.child.exit")
        .unwrap();
    assert_eq!(exit.attributes["acpd.child.expected"], false);
    assert_eq!(exit.attributes["process.exit.code"], 3);
    assert_eq!(exit.severity_text, "WARN");
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| {
                s.name == "bridge prompt.dispatch"
                    && s.events.iter().any(|(n, _)| n == "child.exit")
            })
        })
        .await?;
    let dispatch = spans
        .iter()
        .find(|s| s.name == "bridge prompt.dispatch")
        .unwrap();
    assert_eq!(
        dispatch.status_code, 2,
        "the crashed turn's dispatch span is an error"
    );
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn cancel_and_vote_link_to_the_prompt() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx, &[]).await?;
    let s = d.create_session().await?;
    traced_write_prompt(&d, &s).await?;
    let mut sse = d.events(&s, None, None).await?;
    let slow = d.prompt(&s, "slow 100 50").await?;
    let slow_id = slow.body["promptId"].as_str().unwrap().to_string();
    sse.until(WAIT, |f| {
        f.event == "pending_prompt_started" && f.data["promptId"] == slow_id.as_str()
    })
    .await?;
    d.post_as(&s, &format!("/session/{}/cancel", s.id), json!({}))
        .await?;
    sse.until_turn_end(&slow_id).await?;
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| s.name == "bridge session.cancel")
                && spans.iter().any(|s| s.name == "bridge permission.vote")
                && spans
                    .iter()
                    .filter(|s| s.name == "bridge prompt.dispatch")
                    .count()
                    >= 2
        })
        .await?;
    for (op, prompt) in [
        ("bridge permission.vote", None),
        ("bridge session.cancel", Some(&slow_id)),
    ] {
        let span = spans.iter().find(|s| s.name == op).unwrap();
        let (lt, ls) = span
            .links
            .first()
            .unwrap_or_else(|| panic!("{op} has no link"));
        let target = spans
            .iter()
            .find(|s| &s.trace_id == lt && &s.span_id == ls)
            .unwrap_or_else(|| panic!("{op} links to an unknown span"));
        assert_eq!(target.name, "bridge prompt.dispatch");
        assert_ne!(&span.trace_id, lt, "{op} is its own trace");
        if let Some(p) = prompt {
            assert_eq!(target.attributes["acpd.prompt.id"], p.as_str());
        }
    }
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn metrics_arrive_with_documented_names_units_and_attributes() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx, &[]).await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d.prompt(&s, "hello").await?;
    sse.until_turn_end(p.body["promptId"].as_str().unwrap())
        .await?;
    let expected = [
        ("http.server.request.duration", "s"),
        ("http.server.active_requests", "{request}"),
        ("acpd.session.active", "{session}"),
        ("acpd.prompt.queue_wait", "s"),
        ("acpd.prompt.duration", "s"),
        ("acpd.child.lifecycle", "{event}"),
    ];
    let metrics = rx
        .wait_for_metrics(WAIT, |m| {
            expected.iter().all(|(n, _)| m.iter().any(|x| x.name == *n))
        })
        .await?;
    for (name, unit) in expected {
        let m = metrics.iter().rev().find(|m| m.name == name).unwrap();
        assert_eq!(m.unit, unit, "{name}");
    }
    let http = metrics
        .iter()
        .rev()
        .find(|m| m.name == "http.server.request.duration")
        .unwrap();
    assert_eq!(http.kind, "histogram");
    let point = http
        .points
        .iter()
        .find(|p| p.attributes.get("http.route") == Some(&json!("/session/{id}/prompt")))
        .expect("a point for the prompt route");
    assert_eq!(point.attributes["http.request.method"], "POST");
    assert_eq!(point.attributes["http.response.status_code"], 202);
    assert!(
        !point.attributes.contains_key("session.id"),
        "no high-cardinality attributes on metrics"
    );
    let duration = metrics
        .iter()
        .rev()
        .find(|m| m.name == "acpd.prompt.duration")
        .unwrap();
    assert!(
        duration
            .points
            .iter()
            .any(|p| p.attributes.get("acpd.stop_reason") == Some(&json!("end_turn")))
    );
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn prometheus_endpoint_parses() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d.prompt(&s, "hello").await?;
    sse.until_turn_end(p.body["promptId"].as_str().unwrap())
        .await?;
    let r = d.http.get(d.url("/metrics")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()?
            .starts_with("text/plain")
    );
    let text = r.text().await?;
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value: {line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 0);
    assert!(
        text.contains("http_server_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        text.contains("http_route=\"/session/{id}/prompt\""),
        "{text}"
    );
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn trace_view_shows_the_cross_process_trace_without_a_collector() -> anyhow::Result<()> {
    let d = Daemon::builder()
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d.prompt(&s, "read hello.txt").await?;
    sse.until_turn_end(p.body["promptId"].as_str().unwrap())
        .await?;
    let deadline = Instant::now() + WAIT;
    let trace = loop {
        let list = d.get("/debug/traces.json").await?.body;
        let found = list["traces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["rootName"] == "POST /session/{id}/prompt");
        if let Some(t) = found {
            let id = t["traceId"].as_str().unwrap().to_string();
            let one = d
                .get(&format!("/debug/traces.json?traceId={id}"))
                .await?
                .body;
            let names: Vec<&str> = one["spans"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["name"].as_str())
                .collect();
            if names.iter().any(|n| n.starts_with("invoke_agent"))
                && names.contains(&"acp session/prompt")
            {
                break one;
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace view never showed the agent's spans: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // the view is pulled, not pushed
    };
    let services: Vec<&str> = trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert!(
        services.contains(&"acpd") && services.contains(&"acpd-demo-agent"),
        "{services:?}"
    );
    let page = d.http.get(d.url("/debug/traces")).send().await?;
    assert!(
        page.headers()["content-type"]
            .to_str()?
            .starts_with("text/html")
    );
    let html = page.text().await?;
    assert!(
        html.contains("<title>acpd traces</title>") && html.contains("traces.js"),
        "the page and its script: {html}"
    );
    let script = d
        .http
        .get(d.url("/console/traces.js"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        script.contains("'.json'"),
        "the page loads its data from <path>.json"
    );
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn shutdown_with_a_collector_that_never_answers_is_bounded() -> anyhow::Result<()> {
    let rx = Receiver::start_hanging(Protocol::HttpProtobuf).await?;
    let mut d = Daemon::builder()
        .config("[telemetry]\nshutdown_timeout_ms = 2000\n")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "30000")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d.prompt(&s, "hello").await?;
    sse.until_turn_end(p.body["promptId"].as_str().unwrap())
        .await?;
    let started = Instant::now();
    let status = d.terminate(Duration::from_secs(20)).await?;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    // Children stop within ~2 x 1.5 s grace at worst; telemetry gets its 2 s deadline on top.
    assert!(
        took < Duration::from_millis(2000 + 3000 + 1500),
        "shutdown took {took:?}"
    );
    assert!(d.stdout().is_empty());
    let log: Vec<String> = d.log();
    assert!(
        log.iter().any(|l| l.contains("not flushed within")),
        "the unflushed signals are reported: {log:?}"
    );
    let _ = Value::Null;
    Ok(())
}

#[tokio::test]
async fn agent_stderr_lines_become_logs_correlated_to_the_turn() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx, &[]).await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let p = d
        .prompt(
            &s,
            "stderr \u{1b}[31mwarning from https://bob:hunter2@example.com/x",
        )
        .await?;
    let prompt_id = p.body["promptId"].as_str().unwrap().to_string();
    sse.until_turn_end(&prompt_id).await?;
    let logs = rx
        .wait_for_logs(WAIT, |logs| {
            logs.iter().any(|l| l.event_name == "acpd.child.stderr")
        })
        .await?;
    let line = logs
        .iter()
        .find(|l| l.event_name == "acpd.child.stderr")
        .unwrap();
    assert_eq!(
        line.body, "warning from https://***@example.com/x",
        "sanitised: no escapes, no credentials"
    );
    assert!(line.attributes.contains_key("acpd.child.id"));
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| s.name == "acp session/prompt")
        })
        .await?;
    let acp = spans
        .iter()
        .find(|s| s.name == "acp session/prompt")
        .unwrap();
    assert_eq!(
        line.trace_id, acp.trace_id,
        "the stderr line belongs to the running turn's trace"
    );
    assert!(d.stdout().is_empty());
    Ok(())
}

/// The daemon's token is a credential: whatever clients send (right, wrong, or a near miss that
/// contains it), it never reaches a span, a log record, an error body, `/metrics` or the view.
#[tokio::test]
async fn the_token_never_reaches_spans_logs_or_error_bodies() -> anyhow::Result<()> {
    const TOKEN: &str = "tok-9d1e-never-exported";
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = Daemon::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
        // Probes are traced only when asked: this test wants the token-in-a-query case traced.
        .config("[telemetry]\ntrace_probes = true\n")
        .args(&["--token", TOKEN])
        .start()
        .await?;
    let bearer = format!("Bearer {TOKEN}");
    let mut bodies = Vec::new();
    for auth in [
        None,
        Some(format!("Bearer {TOKEN}x")),
        Some(TOKEN.to_string()),
    ] {
        let mut req = d.http.post(d.url("/session")).json(&json!({}));
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let r = d.send(req).await?;
        assert_eq!(r.status, 401, "{auth:?}");
        bodies.push(r.body.to_string());
    }
    let authed = |req: reqwest::RequestBuilder| req.header("Authorization", &bearer);
    let r = d
        .send(authed(d.http.post(d.url("/session"))).json(&json!({"sessionScope": "thread"})))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["sessionId"].is_string(), "{}", r.body);
    let r = d
        .send(authed(d.http.get(d.url(&format!("/health?token={TOKEN}")))))
        .await?;
    assert_eq!(r.status, 200);
    for path in ["/session/nope", "/session/nope/prompt"] {
        let r = d
            .send(authed(d.http.post(d.url(path))).json(&json!({"prompt": []})))
            .await?;
        assert!(r.status >= 400, "{path}: {}", r.status);
        bodies.push(r.body.to_string());
    }
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().filter(|s| s.name == "POST /session").count() >= 4
                && spans.iter().any(|s| s.name == "GET /health")
        })
        .await?;
    let logs = rx.wait_for_logs(WAIT, |logs| !logs.is_empty()).await?;
    for s in &spans {
        let text = format!(
            "{} {} {} {:?}",
            s.name,
            Value::Object(s.attributes.clone()),
            s.status_message,
            s.events
        );
        assert!(!text.contains(TOKEN), "span {}: {text}", s.name);
    }
    for l in &logs {
        let text = format!("{} {}", l.body, Value::Object(l.attributes.clone()));
        assert!(!text.contains(TOKEN), "log {}: {text}", l.event_name);
    }
    for b in &bodies {
        assert!(!b.contains(TOKEN), "error body: {b}");
    }
    for path in ["/metrics", "/debug/traces.json?limit=500"] {
        let text = authed(d.http.get(d.url(path))).send().await?.text().await?;
        assert!(!text.contains(TOKEN), "{path}");
    }
    assert!(!d.log().iter().any(|l| l.contains(TOKEN)), "stderr");
    Ok(())
}

/// Health probes are counted, not traced (a probe every second would fill the trace view and
/// cost every probe the export stage), unless `telemetry.trace_probes` is set.
#[tokio::test]
async fn health_probes_are_counted_not_traced_by_default() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx, &[]).await?;
    for _ in 0..5 {
        assert_eq!(d.get("/health").await?.status, 200);
    }
    let s = d.create_session().await?;
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| s.name == "POST /session")
        })
        .await?;
    assert!(
        spans.iter().all(|sp| sp.name != "GET /health"),
        "no probe spans"
    );
    let probes = metric_total(
        &d.metrics_text().await?,
        "http_server_request_duration_seconds_count",
        &["http_route=\"/health\""],
    );
    assert!(probes >= 5.0, "probes are counted: {probes}");
    drop(s);
    Ok(())
}

/// Polls `/metrics` (up to `WAIT`) until `http.server.active_requests` counts `n` POSTs; fails
/// with `what` and the metrics if it does not, or as soon as `gave_up()` says it never will.
async fn until_active_posts(
    d: &Daemon,
    n: f64,
    what: &str,
    gave_up: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let prom = d.metrics_text().await?;
        let posts = metric_total(
            &prom,
            "http_server_active_requests",
            &["http_request_method=\"POST\""],
        );
        if posts == n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline && !gave_up(), "{what}: {prom}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `http.server.active_requests` counts a request while it is served and lets it go when its
/// client does: hyper drops the request's future when the connection closes half way, and the
/// gauge must come down then, not only when a handler returns.
#[tokio::test]
async fn a_request_its_client_abandons_leaves_the_active_requests_gauge() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    // The agent never answers `initialize` within the test: `POST /session` waits for it.
    let d = std::sync::Arc::new(
        Daemon::builder()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
            .config(
                "[agent]\ninit_timeout_ms = 120000\n\n[agent.env]\n\
                 ACPD_DEMO_INIT_DELAY_MS = \"600000\"\n",
            )
            .start()
            .await?,
    );
    let waiting = {
        let d = d.clone();
        tokio::spawn(async move { d.post("/session", json!({"sessionScope": "thread"})).await })
    };
    until_active_posts(&d, 1.0, "the waiting POST was never counted", || {
        waiting.is_finished()
    })
    .await?;
    // The client goes away; the agent still has not answered.
    waiting.abort();
    until_active_posts(
        &d,
        0.0,
        "the abandoned POST is still counted as active",
        || false,
    )
    .await?;
    // The daemon still serves.
    assert_eq!(d.get("/health").await?.status, 200);
    Ok(())
}

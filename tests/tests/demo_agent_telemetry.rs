//! The standalone demo agent as a telemetry citizen: driven over raw ACP JSON-RPC on its
//! stdin/stdout with the standard OTLP env pointing at an in-test receiver, it exports its own
//! `invoke_agent` / `chat` / `execute_tool` spans under the `_meta` traceparent of each prompt
//! (over HTTP/protobuf, HTTP/JSON and gRPC), flushes them at the end of each turn, creates
//! nothing without the env, and a dead collector neither delays answers nor hangs its exit.
//! Its metrics and log records travel the same way, each signal where the env routes it, with
//! the `OTEL_EXPORTER_OTLP_HEADERS` credential; `telemetry <text>` puts the text verbatim into
//! all three signals and `telemetry-flood <n>` delivers all of its n spans and log records.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acpd_tests::demo_agent_bin;
use acpd_tests::otlp::{Protocol, Receiver, RecvLog, RecvMetric, RecvSpan, Signal};
use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);
/// With this batch delay only the agent's per-turn flush can deliver spans within [`WAIT`].
const NO_BATCH_TICK: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "600000");

fn random_hex(words: usize) -> String {
    (0..words)
        .map(|_| format!("{:016x}", RandomState::new().hash_one(Instant::now())))
        .collect()
}

/// The demo agent binary on pipes, with a minimal ACP client: it answers fs and permission
/// requests (reads/writes in its temp dir, always allows) and keeps the notifications.
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    messages: mpsc::UnboundedReceiver<Value>,
    /// stdout lines that are not JSON-RPC 2.0 messages (must stay empty).
    junk: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    updates: Vec<Value>,
    next_id: u64,
    dir: tempfile::TempDir,
}

impl Agent {
    async fn spawn(env: &[(&str, String)]) -> Result<Agent> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(demo_agent_bin());
        // Only what the test sets: no inherited OTel configuration or trace context.
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") || k == "TRACEPARENT" || k == "TRACESTATE" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawn acpd-demo-agent")?;
        let stdin = child.stdin.take();
        let (tx, messages) = mpsc::unbounded_channel();
        let junk = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let bad = junk.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(msg) if msg["jsonrpc"] == "2.0" => {
                        let _ = tx.send(msg);
                    }
                    _ => bad.lock().unwrap().push(line),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let log = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                log.lock().unwrap().push(line);
            }
        });
        let mut agent = Agent {
            child,
            stdin,
            messages,
            junk,
            stderr,
            updates: Vec::new(),
            next_id: 1,
            dir,
        };
        let fs = json!({ "readTextFile": true, "writeTextFile": true });
        let caps = json!({ "fs": fs, "terminal": false });
        let init = json!({ "protocolVersion": 1, "clientCapabilities": caps });
        agent.call("initialize", init).await?;
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    async fn send(&mut self, msg: Value) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        let mut line = msg.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends a request and serves the agent's requests until its answer arrives.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
            .await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.messages.recv())
                .await
                .with_context(|| format!("{method}: no answer within {WAIT:?}"))?
                .with_context(|| format!("{method}: the agent closed stdout"))?;
            if msg["id"] == id && msg.get("method").is_none() {
                if let Some(error) = msg.get("error") {
                    bail!("{method} failed: {error}");
                }
                return Ok(msg["result"].clone());
            }
            match (msg["method"].as_str(), msg.get("id")) {
                (Some(_), Some(request_id)) => {
                    let answer = self.answer(&msg);
                    let mut reply = json!({ "jsonrpc": "2.0", "id": request_id });
                    match answer {
                        Ok(result) => reply["result"] = result,
                        Err(error) => reply["error"] = error,
                    }
                    self.send(reply).await?;
                }
                (Some("session/update"), None) => self.updates.push(msg["params"].clone()),
                _ => {}
            }
        }
    }

    fn answer(&self, request: &Value) -> Result<Value, Value> {
        let params = &request["params"];
        let path = params["path"].as_str().unwrap_or_default();
        match request["method"].as_str().unwrap_or_default() {
            "fs/read_text_file" => std::fs::read_to_string(path)
                .map(|content| json!({ "content": content }))
                .map_err(|e| json!({ "code": -32002, "message": e.to_string() })),
            "fs/write_text_file" => {
                let content = params["content"].as_str().unwrap_or_default();
                std::fs::write(path, content)
                    .map(|()| json!({}))
                    .map_err(|e| json!({ "code": -32603, "message": e.to_string() }))
            }
            "session/request_permission" => {
                Ok(json!({ "outcome": { "outcome": "selected", "optionId": "allow" } }))
            }
            _ => Err(json!({ "code": -32601, "message": "Method not found" })),
        }
    }

    async fn new_session(&mut self) -> Result<String> {
        let cwd = self.dir.path().canonicalize()?;
        let r = self
            .call("session/new", json!({ "cwd": cwd, "mcpServers": [] }))
            .await?;
        Ok(r["sessionId"].as_str().context("sessionId")?.to_owned())
    }

    async fn prompt(&mut self, session: &str, text: &str, meta: Option<Value>) -> Result<Value> {
        let mut params = json!({
            "sessionId": session,
            "prompt": [{ "type": "text", "text": text }],
        });
        if let Some(meta) = meta {
            params["_meta"] = meta;
        }
        let r = self.call("session/prompt", params).await?;
        ensure!(r["stopReason"] == "end_turn", "{text:?} -> {r}");
        Ok(r)
    }

    /// The id of the latest `tool_call` update.
    fn last_tool_call_id(&self) -> Option<String> {
        self.updates
            .iter()
            .rev()
            .find(|u| u["update"]["sessionUpdate"] == "tool_call")
            .and_then(|u| u["update"]["toolCallId"].as_str())
            .map(str::to_owned)
    }

    /// Names of the agent's threads (Linux: `comm`, at most 15 bytes).
    fn thread_names(&self) -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    }

    fn has_otel_thread(&self) -> bool {
        self.thread_names()
            .iter()
            .any(|n| n.starts_with("OpenTelemetry"))
    }

    /// Closes stdin and waits for the exit; returns the status and how long it took.
    async fn close(&mut self) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        drop(self.stdin.take());
        let status = timeout(WAIT, self.child.wait())
            .await
            .context("the agent did not exit after stdin EOF")??;
        Ok((status, started.elapsed()))
    }

    /// The agent's message chunks from update `from` on, concatenated.
    fn said(&self, from: usize) -> String {
        self.updates[from..]
            .iter()
            .filter(|u| u["update"]["sessionUpdate"] == "agent_message_chunk")
            .filter_map(|u| u["update"]["content"]["text"].as_str())
            .collect()
    }

    fn junk(&self) -> Vec<String> {
        self.junk.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

fn one<'a>(spans: &'a [&RecvSpan], name: &str) -> &'a RecvSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} in {spans:#?}");
    found[0]
}

fn in_trace<'a>(spans: &'a [RecvSpan], trace_id: &str) -> Vec<&'a RecvSpan> {
    spans.iter().filter(|s| s.trace_id == trace_id).collect()
}

fn check_invoke(span: &RecvSpan, session: &str) {
    assert_eq!(span.kind, 1, "INTERNAL: {span:#?}");
    assert_eq!(span.service_name, "acpd-demo-agent");
    assert_eq!(span.attr_str("gen_ai.operation.name"), Some("invoke_agent"));
    assert_eq!(span.attr_str("gen_ai.agent.name"), Some("acpd-demo-agent"));
    assert_eq!(span.attr_str("session.id"), Some(session));
    assert_eq!(span.attr_str("gen_ai.conversation.id"), Some(session));
    assert_eq!(
        span.attr("gen_ai.response.finish_reasons"),
        Some(&json!(["end_turn"]))
    );
    assert_eq!(span.status_code, 0, "{span:#?}");
}

fn check_chat(span: &RecvSpan, parent: &RecvSpan, input_tokens: i64) {
    assert_eq!(span.trace_id, parent.trace_id);
    assert_eq!(
        span.parent_span_id, parent.span_id,
        "chat under invoke_agent"
    );
    assert_eq!(span.kind, 3, "CLIENT: {span:#?}");
    assert_eq!(span.service_name, "acpd-demo-agent");
    assert_eq!(span.attr_str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(span.attr_str("gen_ai.provider.name"), Some("demo"));
    assert_eq!(span.attr_str("gen_ai.request.model"), Some("demo-model"));
    assert_eq!(
        span.attr("gen_ai.usage.input_tokens"),
        Some(&json!(input_tokens))
    );
    let output = span.attr("gen_ai.usage.output_tokens");
    assert!(
        output.and_then(Value::as_i64).is_some_and(|n| n > 0),
        "{span:#?}"
    );
    assert_eq!(
        span.attr("gen_ai.response.finish_reasons"),
        Some(&json!(["stop"]))
    );
    assert_eq!(span.status_code, 0, "{span:#?}");
    assert!(span.start_ns >= parent.start_ns && span.end_ns <= parent.end_ns);
}

fn check_tool(span: &RecvSpan, parent: &RecvSpan, tool: &str, call_id: &str) {
    assert_eq!(span.trace_id, parent.trace_id);
    assert_eq!(
        span.parent_span_id, parent.span_id,
        "tool under invoke_agent"
    );
    assert_eq!(span.kind, 1, "INTERNAL: {span:#?}");
    assert_eq!(span.attr_str("gen_ai.operation.name"), Some("execute_tool"));
    assert_eq!(span.attr_str("gen_ai.tool.name"), Some(tool));
    assert_eq!(span.attr_str("gen_ai.tool.call.id"), Some(call_id));
    assert_eq!(span.status_code, 0, "{span:#?}");
}

async fn agent_spans_join_the_callers_trace(protocol: Protocol) -> Result<()> {
    let rx = Receiver::start(protocol).await?;
    let mut env = rx.otel_env();
    env.push((NO_BATCH_TICK.0, NO_BATCH_TICK.1.to_owned()));
    let mut agent = Agent::spawn(&env).await?;
    let session = agent.new_session().await?;
    std::fs::write(agent.dir.path().join("a.txt"), "alpha beta")?;

    // 1. `read` under a caller's traceparent (root `_meta` key).
    let (trace, parent) = (random_hex(2), random_hex(1));
    let meta = json!({ "traceparent": format!("00-{trace}-{parent}-01"), "tracestate": "acpd=1" });
    agent.prompt(&session, "read a.txt", Some(meta)).await?;
    let call_id = agent.last_tool_call_id().context("tool call update")?;
    let spans = rx
        .wait_for_spans(WAIT, |s| in_trace(s, &trace).len() >= 3)
        .await?;
    let spans = in_trace(&spans, &trace);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    // The batch thread has exported, so it has named itself by now (a new thread carries the
    // process name until it does).
    assert!(agent.has_otel_thread(), "{:?}", agent.thread_names());
    let invoke = one(&spans, "invoke_agent acpd-demo-agent");
    assert_eq!(invoke.parent_span_id, parent, "remote parent from _meta");
    check_invoke(invoke, &session);
    check_chat(one(&spans, "chat demo-model"), invoke, 2);
    let tool = one(&spans, "execute_tool read_file");
    check_tool(tool, invoke, "read_file", &call_id);
    // The reply is generated after the tool ran.
    assert!(tool.end_ns <= one(&spans, "chat demo-model").start_ns);

    // 2. `write` without any trace context: a new root trace.
    let before: Vec<String> = rx.spans().into_iter().map(|s| s.span_id).collect();
    agent.prompt(&session, "write b.txt hi there", None).await?;
    let call_id = agent.last_tool_call_id().context("tool call update")?;
    assert_eq!(
        std::fs::read_to_string(agent.dir.path().join("b.txt"))?,
        "hi there"
    );
    let spans = rx
        .wait_for_spans(WAIT, |s| s.len() >= before.len() + 3)
        .await?;
    let new: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| !before.contains(&s.span_id))
        .collect();
    let invoke = one(&new, "invoke_agent acpd-demo-agent");
    assert_eq!(invoke.parent_span_id, "", "no _meta: a root span");
    assert_ne!(invoke.trace_id, trace);
    check_invoke(invoke, &session);
    let new = in_trace(&spans, &invoke.trace_id);
    assert_eq!(new.len(), 3, "{new:#?}");
    check_chat(one(&new, "chat demo-model"), invoke, 4);
    check_tool(
        one(&new, "execute_tool write_file"),
        invoke,
        "write_file",
        &call_id,
    );

    // 3. The qwen-style `_meta` key is honoured too; a plain reply has no tool span.
    let (trace, parent) = (random_hex(2), random_hex(1));
    let meta = json!({ "qwen.telemetry.traceparent": format!("00-{trace}-{parent}-01") });
    agent.prompt(&session, "hello", Some(meta)).await?;
    let spans = rx
        .wait_for_spans(WAIT, |s| in_trace(s, &trace).len() >= 2)
        .await?;
    let spans = in_trace(&spans, &trace);
    let invoke = one(&spans, "invoke_agent acpd-demo-agent");
    assert_eq!(invoke.parent_span_id, parent);
    check_chat(one(&spans, "chat demo-model"), invoke, 1);

    let (status, _) = agent.close().await?;
    assert!(status.success(), "{status:?}; stderr {:?}", agent.stderr());
    assert_eq!(
        agent.junk(),
        Vec::<String>::new(),
        "stdout carries only JSON-RPC"
    );
    assert_eq!(
        agent.stderr(),
        Vec::<String>::new(),
        "no export problems reported"
    );
    let requests = rx.requests();
    assert!(
        requests.iter().all(|r| r.decode_error.is_none()),
        "{requests:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_spans_over_http_protobuf() -> Result<()> {
    agent_spans_join_the_callers_trace(Protocol::HttpProtobuf).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_spans_over_http_json() -> Result<()> {
    agent_spans_join_the_callers_trace(Protocol::HttpJson).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_spans_over_grpc() -> Result<()> {
    agent_spans_join_the_callers_trace(Protocol::Grpc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traces_endpoint_and_service_name_env_are_honoured() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let env = [
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", rx.endpoint()),
        ),
        ("OTEL_SERVICE_NAME", "renamed-agent".to_owned()),
        (NO_BATCH_TICK.0, NO_BATCH_TICK.1.to_owned()),
    ];
    let mut agent = Agent::spawn(&env).await?;
    let session = agent.new_session().await?;
    agent.prompt(&session, "hello", None).await?;
    let spans = rx.wait_for_spans(WAIT, |s| s.len() >= 2).await?;
    assert!(
        spans.iter().all(|s| s.service_name == "renamed-agent"),
        "{spans:#?}"
    );
    assert!(agent.close().await?.0.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_otlp_env_or_when_disabled_nothing_is_built() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let disabled = {
        let mut env = rx.otel_env();
        env.push(("OTEL_SDK_DISABLED", "true".to_owned()));
        env
    };
    let exporter_none = {
        let mut env = rx.otel_env();
        for name in [
            "OTEL_TRACES_EXPORTER",
            "OTEL_METRICS_EXPORTER",
            "OTEL_LOGS_EXPORTER",
        ] {
            env.push((name, "none".to_owned()));
        }
        env
    };
    for env in [Vec::new(), disabled, exporter_none] {
        let mut agent = Agent::spawn(&env).await?;
        let session = agent.new_session().await?;
        agent.prompt(&session, "hello", None).await?;
        // A thread the runtime is starting carries the process name until it names itself (a
        // window of microseconds between clone and prctl): read again until none is, with a
        // deadline, so a thread caught mid-start is not taken for an unnamed one.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut threads = agent.thread_names();
        while threads.iter().filter(|n| *n == "acpd-demo-agent").count() > 1
            && Instant::now() < deadline
        {
            tokio::task::yield_now().await;
            threads = agent.thread_names();
        }
        assert!(!threads.is_empty(), "/proc is readable");
        // No batch processor and no HTTP client thread; and no thread still unnamed (it would
        // carry the process name, like the main thread).
        assert!(!agent.has_otel_thread(), "{env:?}: {threads:?}");
        assert!(
            !threads.iter().any(|n| n.starts_with("reqwest")),
            "{env:?}: {threads:?}"
        );
        let unnamed = threads.iter().filter(|n| *n == "acpd-demo-agent").count();
        assert_eq!(unnamed, 1, "{env:?}: {threads:?}");
        assert!(agent.close().await?.0.success());
        // The agent is gone, so anything it would have sent has been sent.
        assert!(rx.requests().is_empty(), "{env:?}: {}", rx.summary());
        assert_eq!(agent.stderr(), Vec::<String>::new());
    }
    Ok(())
}

/// A collector that never answers delays neither the prompt's answer nor (beyond the
/// bounded flush/shutdown) the exit on stdin EOF.
async fn hanging_collector_is_bounded(protocol: Protocol) -> Result<()> {
    let rx = Receiver::start_hanging(protocol).await?;
    let mut env = rx.otel_env();
    env.push((NO_BATCH_TICK.0, NO_BATCH_TICK.1.to_owned()));
    let mut agent = Agent::spawn(&env).await?;
    let session = agent.new_session().await?;
    let started = Instant::now();
    agent.prompt(&session, "hello", None).await?;
    let answered = started.elapsed();
    assert!(
        answered < Duration::from_secs(2),
        "answer took {answered:?}"
    );
    // The turn's flush reached the collector (which keeps it hanging).
    rx.wait_for_requests(WAIT, |r| !r.is_empty()).await?;
    let (status, took) = agent.close().await?;
    assert!(status.success(), "{status:?}");
    eprintln!("{protocol:?}: answered in {answered:?}, exited {took:?} after EOF");
    // Flush (SDK: 5 s fixed) and shutdown (3 s) bounds; never the 10 s export timeout.
    assert!(took < Duration::from_secs(9), "exit took {took:?}");
    assert_eq!(
        agent.junk(),
        Vec::<String>::new(),
        "stdout carries only JSON-RPC"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_http_collector_is_bounded() -> Result<()> {
    hanging_collector_is_bounded(Protocol::HttpProtobuf).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_grpc_collector_is_bounded() -> Result<()> {
    hanging_collector_is_bounded(Protocol::Grpc).await
}

/// What the redaction tests feed through the agent: an API key, an email address and a URL
/// with credentials.
const SECRET: &str = "sk-live-1234567890abcdef user@example.com https://bob:hunter2@example.com/x";
/// The per-child credential, as acpd passes it.
const CREDENTIAL: (&str, &str) = ("x-acpd-test-key", "cred-8d3f2a");
/// With this interval only the agent's per-turn flush can deliver metrics within [`WAIT`].
const NO_METRIC_TICK: (&str, &str) = ("OTEL_METRIC_EXPORT_INTERVAL", "600000");

fn quiet_env(rx: &Receiver) -> Vec<(&'static str, String)> {
    let mut env = rx.otel_env();
    env.push((
        "OTEL_EXPORTER_OTLP_HEADERS",
        format!("{}={}", CREDENTIAL.0, CREDENTIAL.1),
    ));
    for (k, v) in [NO_BATCH_TICK, NO_METRIC_TICK] {
        env.push((k, v.to_owned()));
    }
    env
}

fn metric<'a>(metrics: &'a [RecvMetric], name: &str) -> Option<&'a RecvMetric> {
    metrics.iter().rev().find(|m| m.name == name)
}

fn has_point(metrics: &[RecvMetric], name: &str, key: &str, value: &str) -> bool {
    metric(metrics, name).is_some_and(|m| {
        m.points
            .iter()
            .any(|p| p.attributes.get(key).and_then(Value::as_str) == Some(value))
    })
}

fn log_of<'a>(logs: &'a [RecvLog], event: &str) -> Vec<&'a RecvLog> {
    logs.iter().filter(|l| l.event_name == event).collect()
}

/// `telemetry <secret>` under a caller's traceparent: the secret arrives verbatim in a span
/// name, span and event attributes, a log record's body and attribute and a metric point; the
/// prompt's own log record and metrics arrive too, all from the turn's flush, and every export
/// request carries the credential header.
async fn secret_reaches_all_three_signals(protocol: Protocol) -> Result<()> {
    let rx = Receiver::start(protocol).await?;
    let mut agent = Agent::spawn(&quiet_env(&rx)).await?;
    let session = agent.new_session().await?;
    let (trace, parent) = (random_hex(2), random_hex(1));
    let meta = json!({ "traceparent": format!("00-{trace}-{parent}-01") });
    let from = agent.updates.len();
    let prompt = format!("telemetry {SECRET}");
    agent.prompt(&session, &prompt, Some(meta)).await?;
    let reply = agent.said(from);
    assert!(reply.starts_with("telemetry: "), "{reply:?}");
    assert!(
        !reply.contains("hunter2"),
        "the reply never echoes the text"
    );

    // Spans: `demo.secret <text>` under `invoke_agent`, with the attribute and the event.
    let spans = rx
        .wait_for_spans(WAIT, |s| in_trace(s, &trace).len() >= 3)
        .await?;
    let spans = in_trace(&spans, &trace);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let invoke = one(&spans, "invoke_agent acpd-demo-agent");
    assert_eq!(invoke.parent_span_id, parent);
    check_invoke(invoke, &session);
    let secret = one(&spans, &format!("demo.secret {SECRET}"));
    assert_eq!(secret.parent_span_id, invoke.span_id);
    assert_eq!(secret.attr_str("demo.text"), Some(SECRET));
    assert_eq!(secret.events.len(), 1, "{secret:#?}");
    assert_eq!(secret.events[0].0, "demo.secret");
    assert_eq!(secret.events[0].1.get("demo.text"), Some(&json!(SECRET)));
    one(&spans, "chat demo-model");

    // Logs: the prompt in the turn's span, the secret in the secret span.
    let logs = rx
        .wait_for_logs(WAIT, |l| {
            !log_of(l, "demo.user_prompt").is_empty() && !log_of(l, "demo.secret").is_empty()
        })
        .await?;
    let prompted = log_of(&logs, "demo.user_prompt");
    assert_eq!(prompted.len(), 1, "{logs:#?}");
    let prompted = prompted[0];
    assert_eq!(prompted.body, prompt);
    assert_eq!(prompted.attributes.get("prompt"), Some(&json!(prompt)));
    assert_eq!(prompted.attributes.get("session.id"), Some(&json!(session)));
    assert_eq!(
        (prompted.trace_id.as_str(), prompted.span_id.as_str()),
        (trace.as_str(), invoke.span_id.as_str())
    );
    assert_eq!(prompted.service_name, "acpd-demo-agent");
    assert_eq!(prompted.severity_number, 9, "INFO");
    assert!(prompted.time_ns > 0);
    let logged = log_of(&logs, "demo.secret");
    assert_eq!(logged.len(), 1, "{logs:#?}");
    let logged = logged[0];
    assert_eq!(logged.body, SECRET);
    assert_eq!(logged.attributes.get("demo.text"), Some(&json!(SECRET)));
    assert_eq!(
        (logged.trace_id.as_str(), logged.span_id.as_str()),
        (trace.as_str(), secret.span_id.as_str())
    );

    // Metrics: the secret as a point attribute, the prompt counted and timed by command.
    let metrics = rx
        .wait_for_metrics(WAIT, |m| {
            has_point(m, "demo.secret.count", "demo.text", SECRET)
                && has_point(m, "demo.prompts", "demo.command", "telemetry")
                && has_point(m, "demo.turn.duration", "demo.outcome", "end_turn")
        })
        .await?;
    let count = metric(&metrics, "demo.secret.count").unwrap();
    assert_eq!((count.kind, count.is_monotonic), ("sum", true));
    assert_eq!(count.points.len(), 1);
    assert!((count.points[0].value - 1.0).abs() < f64::EPSILON);
    assert_eq!(count.service_name, "acpd-demo-agent");
    let duration = metric(&metrics, "demo.turn.duration").unwrap();
    assert_eq!((duration.kind, duration.unit.as_str()), ("histogram", "s"));
    let point = &duration.points[0];
    assert_eq!(
        point.attributes.get("demo.command"),
        Some(&json!("telemetry"))
    );
    assert!((point.value - 1.0).abs() < f64::EPSILON, "{point:?}");

    // Every request of every signal carried the credential.
    let requests = rx.requests();
    for signal in [Signal::Traces, Signal::Metrics, Signal::Logs] {
        assert!(
            requests.iter().any(|r| r.signal == signal),
            "{signal:?}: {}",
            rx.summary()
        );
    }
    for r in &requests {
        assert_eq!(
            r.headers.get(CREDENTIAL.0).map(String::as_str),
            Some(CREDENTIAL.1),
            "{r:?}"
        );
        assert!(r.decode_error.is_none(), "{r:?}");
    }

    let (status, _) = agent.close().await?;
    assert!(status.success(), "{status:?}; stderr {:?}", agent.stderr());
    assert_eq!(agent.junk(), Vec::<String>::new());
    assert_eq!(agent.stderr(), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_in_all_signals_over_http_protobuf() -> Result<()> {
    secret_reaches_all_three_signals(Protocol::HttpProtobuf).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_in_all_signals_over_http_json() -> Result<()> {
    secret_reaches_all_three_signals(Protocol::HttpJson).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_in_all_signals_over_grpc() -> Result<()> {
    secret_reaches_all_three_signals(Protocol::Grpc).await
}

/// Each signal goes where its own `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables say: traces to the
/// general HTTP/protobuf endpoint, metrics over gRPC and logs over HTTP/JSON to receivers of
/// their own, each with its own headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signal_follows_its_own_endpoint_protocol_and_headers() -> Result<()> {
    let traces = Receiver::start(Protocol::HttpProtobuf).await?;
    let metrics = Receiver::start(Protocol::Grpc).await?;
    let logs = Receiver::start(Protocol::HttpJson).await?;
    let mut env = quiet_env(&traces);
    env.extend([
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            metrics.signal_endpoint(Signal::Metrics),
        ),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "x-signal=metrics".to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            logs.signal_endpoint(Signal::Logs),
        ),
        ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/json".to_owned()),
    ]);
    let mut agent = Agent::spawn(&env).await?;
    let session = agent.new_session().await?;
    agent.prompt(&session, "hello", None).await?;
    traces.wait_for_spans(WAIT, |s| s.len() >= 2).await?;
    metrics
        .wait_for_metrics(WAIT, |m| {
            has_point(m, "demo.prompts", "demo.command", "echo")
        })
        .await?;
    logs.wait_for_logs(WAIT, |l| !log_of(l, "demo.user_prompt").is_empty())
        .await?;
    assert!(agent.close().await?.0.success());
    let only = |rx: &Receiver, signal: Signal| {
        let requests = rx.requests();
        assert!(
            requests.iter().all(|r| r.signal == signal),
            "{signal:?}: {}",
            rx.summary()
        );
        requests
    };
    for r in only(&traces, Signal::Traces) {
        assert_eq!(
            r.headers.get(CREDENTIAL.0).map(String::as_str),
            Some(CREDENTIAL.1)
        );
    }
    // A signal's own headers replace the general ones (the SDK's rule, not a merge).
    for r in only(&metrics, Signal::Metrics) {
        assert_eq!(
            r.headers.get("x-signal").map(String::as_str),
            Some("metrics")
        );
        assert_eq!(r.headers.get(CREDENTIAL.0), None, "{r:?}");
    }
    for r in only(&logs, Signal::Logs) {
        assert_eq!(
            r.headers.get(CREDENTIAL.0).map(String::as_str),
            Some(CREDENTIAL.1)
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
    Ok(())
}

/// `OTEL_TRACES_EXPORTER=none` switches off the spans only: the prompt's log record still
/// carries the caller's trace context (the `_meta` parent), and metrics still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traces_logs_and_metrics_still_flow() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let mut env = quiet_env(&rx);
    env.push(("OTEL_TRACES_EXPORTER", "none".to_owned()));
    let mut agent = Agent::spawn(&env).await?;
    let session = agent.new_session().await?;
    let (trace, parent) = (random_hex(2), random_hex(1));
    let meta = json!({ "traceparent": format!("00-{trace}-{parent}-01") });
    agent
        .prompt(&session, &format!("telemetry {SECRET}"), Some(meta))
        .await?;
    let logs = rx
        .wait_for_logs(WAIT, |l| log_of(l, "demo.secret").len() == 1)
        .await?;
    for log in &logs {
        assert_eq!(
            (log.trace_id.as_str(), log.span_id.as_str()),
            (trace.as_str(), parent.as_str())
        );
    }
    rx.wait_for_metrics(WAIT, |m| {
        has_point(m, "demo.secret.count", "demo.text", SECRET)
    })
    .await?;
    assert!(agent.close().await?.0.success());
    assert!(rx.spans().is_empty(), "{}", rx.summary());
    assert!(rx.requests().iter().all(|r| r.signal != Signal::Traces));
    assert_eq!(agent.stderr(), Vec::<String>::new());
    Ok(())
}

/// `telemetry-flood <n>` with n well above the SDK's default queue sizes (2048): every span and
/// log record arrives, because the agent paces itself by the queue size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_flood_delivers_every_item() -> Result<()> {
    const N: usize = 5000;
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let mut agent = Agent::spawn(&quiet_env(&rx)).await?;
    let session = agent.new_session().await?;
    let from = agent.updates.len();
    let started = Instant::now();
    agent
        .prompt(&session, &format!("telemetry-flood {N}"), None)
        .await?;
    let took = started.elapsed();
    let reply = agent.said(from);
    assert!(
        reply.starts_with(&format!(
            "telemetry-flood: emitted {N} spans and {N} log records ("
        )) && reply.ends_with(", all flushed)"),
        "{reply:?}"
    );
    // The turn's own spans (invoke_agent, chat) and its prompt log record come on top.
    let spans = rx.wait_for_spans(WAIT, |s| s.len() >= N + 2).await?;
    let logs = rx.wait_for_logs(WAIT, |l| l.len() > N).await?;
    eprintln!("flood of {N}: answered in {took:?}, {reply}");
    let mut indexes: Vec<i64> = spans
        .iter()
        .filter(|s| s.name == "demo.flood")
        .filter_map(|s| s.attr("demo.flood.index").and_then(Value::as_i64))
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), N, "every flood span, once");
    assert_eq!(log_of(&logs, "demo.flood").len(), N);
    assert!(agent.close().await?.0.success());
    assert_eq!(agent.stderr(), Vec::<String>::new());
    Ok(())
}

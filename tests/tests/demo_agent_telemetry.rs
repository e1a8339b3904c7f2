//! The standalone demo agent as a telemetry citizen: driven over raw ACP JSON-RPC on its
//! stdin/stdout with the standard OTLP env pointing at an in-test receiver, it exports its own
//! `invoke_agent` / `chat` / `execute_tool` spans under the `_meta` traceparent of each prompt
//! (over HTTP/protobuf, HTTP/JSON and gRPC), flushes them at the end of each turn, creates
//! nothing without the env, and a dead collector neither delays answers nor hangs its exit.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acpd_tests::demo_agent_bin;
use acpd_tests::otlp::{Protocol, Receiver, RecvSpan};
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
        env.push(("OTEL_TRACES_EXPORTER", "none".to_owned()));
        env
    };
    for env in [Vec::new(), disabled, exporter_none] {
        let mut agent = Agent::spawn(&env).await?;
        let session = agent.new_session().await?;
        agent.prompt(&session, "hello", None).await?;
        let threads = agent.thread_names();
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

//! Drives the built `acpd-demo-agent` binary as a child process with the SDK's client side.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, FileSystemCapabilities,
    InitializeRequest, InitializeResponse, LoadSessionRequest, Meta, NewSessionRequest,
    PermissionOptionKind, PromptRequest, PromptResponse, ReadTextFileRequest, ReadTextFileResponse,
    RequestPermissionOutcome, RequestPermissionRequest, RequestPermissionResponse,
    SelectedPermissionOutcome, SessionId, SessionNotification, SessionUpdate, StopReason,
    ToolCallContent, ToolCallStatus, ToolKind, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{
    Agent, ByteStreams, Client, Error, on_receive_notification, on_receive_request,
};
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};

const T: Duration = Duration::from_secs(10);

type PermissionAsk = (
    RequestPermissionRequest,
    Responder<RequestPermissionResponse>,
);

struct Harness {
    cx: ConnectionTo<Agent>,
    updates: mpsc::UnboundedReceiver<SessionNotification>,
    permissions: mpsc::UnboundedReceiver<PermissionAsk>,
    stderr: mpsc::UnboundedReceiver<String>,
    conn: tokio::task::JoinHandle<Result<(), Error>>,
    child: Child,
    dir: PathBuf,
    init: InitializeResponse,
}

/// Answers fs requests from the real disk, like an editor without unsaved buffers.
fn read_file(req: &ReadTextFileRequest) -> Result<ReadTextFileResponse, Error> {
    std::fs::read_to_string(&req.path)
        .map(ReadTextFileResponse::new)
        .map_err(|e| {
            Error::new(-32002, "Resource not found")
                .data(json!({ "uri": req.path, "detail": e.to_string() }))
        })
}

fn write_file(req: &WriteTextFileRequest) -> Result<WriteTextFileResponse, Error> {
    std::fs::write(&req.path, &req.content)
        .map(|()| WriteTextFileResponse::new())
        .map_err(Error::into_internal_error)
}

async fn start(env: &[(&str, &str)]) -> Harness {
    let dir = std::env::temp_dir().join(format!("acpd-demo-agent-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_acpd-demo-agent"))
        .current_dir(&dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let (stderr_tx, stderr) = mpsc::unbounded_channel();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = stderr_tx.send(line);
        }
    });

    let transport = ByteStreams::new(
        child.stdin.take().unwrap().compat_write(),
        child.stdout.take().unwrap().compat(),
    );
    let (update_tx, updates) = mpsc::unbounded_channel();
    let (permission_tx, permissions) = mpsc::unbounded_channel();
    let (cx_tx, cx_rx) = oneshot::channel();
    // Handlers only hand work off or answer from local disk: they never wait on the agent.
    let conn = tokio::spawn(
        Client
            .v1()
            .name("demo-agent-test")
            .on_receive_notification(
                async move |n: SessionNotification, _cx| {
                    let _ = update_tx.send(n);
                    Ok(())
                },
                on_receive_notification!(),
            )
            .on_receive_request(
                async move |req: RequestPermissionRequest, responder, _cx| {
                    let _ = permission_tx.send((req, responder));
                    Ok(())
                },
                on_receive_request!(),
            )
            .on_receive_request(
                async |req: ReadTextFileRequest, responder, _cx| {
                    responder.respond_with_result(read_file(&req))
                },
                on_receive_request!(),
            )
            .on_receive_request(
                async |req: WriteTextFileRequest, responder, _cx| {
                    responder.respond_with_result(write_file(&req))
                },
                on_receive_request!(),
            )
            .connect_with(transport, async move |cx: ConnectionTo<Agent>| {
                let _ = cx_tx.send(cx.clone());
                cx.incoming_closed().await;
                Ok(())
            }),
    );
    let cx = timeout(T, cx_rx).await.unwrap().unwrap();
    let fs = FileSystemCapabilities::new()
        .read_text_file(true)
        .write_text_file(true);
    let init = InitializeRequest::new(ProtocolVersion::V1)
        .client_capabilities(ClientCapabilities::new().fs(fs).terminal(false));
    let init = timeout(T, cx.send_request(init).block_task())
        .await
        .unwrap()
        .unwrap();
    Harness {
        cx,
        updates,
        permissions,
        stderr,
        conn,
        child,
        dir,
        init,
    }
}

impl Harness {
    async fn new_session(&self) -> SessionId {
        let request = NewSessionRequest::new(&self.dir);
        let response = timeout(T, self.cx.send_request(request).block_task())
            .await
            .unwrap()
            .unwrap();
        response.session_id
    }

    fn prompt_request(&self, session: &SessionId, text: &str) -> PromptRequest {
        PromptRequest::new(session.clone(), vec![ContentBlock::from(text)])
    }

    async fn prompt(&self, session: &SessionId, text: &str) -> Result<PromptResponse, Error> {
        let request = self.prompt_request(session, text);
        timeout(T, self.cx.send_request(request).block_task())
            .await
            .unwrap()
    }

    /// Starts a prompt without waiting for its turn to end.
    fn spawn_prompt(
        &self,
        session: &SessionId,
        text: &str,
    ) -> tokio::task::JoinHandle<Result<PromptResponse, Error>> {
        let request = self.cx.send_request(self.prompt_request(session, text));
        tokio::spawn(async move { timeout(T, request.block_task()).await.unwrap() })
    }

    fn cancel(&self, session: &SessionId) {
        let cancel = CancelNotification::new(session.clone());
        self.cx.send_notification(cancel).unwrap();
    }

    /// Updates already received; a turn's updates all arrive before its prompt response.
    fn drain(&mut self) -> Vec<SessionUpdate> {
        std::iter::from_fn(|| self.updates.try_recv().ok())
            .map(|n| n.update)
            .collect()
    }

    async fn next_update(&mut self) -> SessionUpdate {
        timeout(T, self.updates.recv())
            .await
            .unwrap()
            .unwrap()
            .update
    }

    async fn next_permission(&mut self) -> PermissionAsk {
        timeout(T, self.permissions.recv()).await.unwrap().unwrap()
    }

    /// Closes the agent's stdin by dropping the connection, then waits for it to exit.
    async fn close(mut self) -> ExitStatus {
        self.conn.abort();
        let _ = (&mut self.conn).await;
        self.wait().await
    }

    async fn wait(&mut self) -> ExitStatus {
        timeout(T, self.child.wait()).await.unwrap().unwrap()
    }
}

fn text_of(updates: &[SessionUpdate]) -> Vec<String> {
    updates
        .iter()
        .filter_map(|u| match u {
            SessionUpdate::AgentMessageChunk(chunk) => match &chunk.content {
                ContentBlock::Text(t) => Some(t.text.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn statuses(updates: &[SessionUpdate]) -> Vec<ToolCallStatus> {
    updates
        .iter()
        .filter_map(|u| match u {
            SessionUpdate::ToolCall(call) => Some(call.status),
            SessionUpdate::ToolCallUpdate(update) => update.fields.status,
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn echo_streams_chunks_and_ends_turn() {
    let mut h = start(&[]).await;
    let info = h.init.agent_info.clone().unwrap();
    assert_eq!(info.name, "acpd-demo-agent");
    assert_eq!(h.init.protocol_version, ProtocolVersion::V1);
    assert!(h.init.agent_capabilities.load_session);

    let session = h.new_session().await;
    assert!(session.0.starts_with("demo-"), "{session}");
    let response = h.prompt(&session, "hi there, agent").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let chunks = text_of(&h.drain());
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    assert_eq!(
        chunks.concat(),
        "Hello from the demo agent. You said: hi there, agent"
    );
    assert!(h.close().await.success());
}

#[tokio::test]
async fn read_goes_through_the_client_fs_handler() {
    let mut h = start(&[]).await;
    std::fs::write(h.dir.join("a.txt"), "secret PINEAPPLE-42\n").unwrap();
    let session = h.new_session().await;

    let response = h.prompt(&session, "read a.txt").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let updates = h.drain();
    let SessionUpdate::ToolCall(call) = &updates[0] else {
        panic!("expected a tool call first: {updates:?}");
    };
    assert_eq!(call.title, "Read a.txt");
    assert_eq!(call.kind, ToolKind::Read);
    let path = h.dir.join("a.txt");
    assert_eq!(call.raw_input, Some(json!({ "path": path })));
    use ToolCallStatus::*;
    assert_eq!(statuses(&updates), [Pending, InProgress, Completed]);
    let SessionUpdate::ToolCallUpdate(done) = &updates[2] else {
        panic!("expected the completed update: {updates:?}");
    };
    let content = done.fields.content.clone().unwrap();
    let ToolCallContent::Content(content) = &content[0] else {
        panic!("expected text content: {content:?}");
    };
    assert_eq!(content.content, ContentBlock::from("secret PINEAPPLE-42\n"));
    assert_eq!(
        text_of(&updates),
        ["Read 20 bytes from a.txt: secret PINEAPPLE-42\n"]
    );

    let response = h.prompt(&session, "read missing.txt").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let updates = h.drain();
    assert_eq!(statuses(&updates), [Pending, InProgress, Failed]);
    assert_eq!(
        text_of(&updates),
        ["Read failed: Resource not found (code -32002)"]
    );
    assert!(h.close().await.success());
}

#[tokio::test]
async fn write_asks_permission_and_writes_when_allowed() {
    let mut h = start(&[]).await;
    let session = h.new_session().await;

    let turn = h.spawn_prompt(&session, "write b.txt hello  world");
    let (ask, responder) = h.next_permission().await;
    assert_eq!(ask.session_id, session);
    assert_eq!(ask.tool_call.fields.title.as_deref(), Some("Write b.txt"));
    let kinds: Vec<_> = ask.options.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            PermissionOptionKind::AllowOnce,
            PermissionOptionKind::RejectOnce
        ]
    );
    let allow = ask
        .options
        .iter()
        .find(|o| o.kind == PermissionOptionKind::AllowOnce)
        .unwrap();
    let outcome =
        RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(allow.option_id.clone()));
    responder
        .respond(RequestPermissionResponse::new(outcome))
        .unwrap();

    let response = timeout(T, turn).await.unwrap().unwrap().unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let written = std::fs::read_to_string(h.dir.join("b.txt")).unwrap();
    assert_eq!(written, "hello  world");
    let updates = h.drain();
    let SessionUpdate::ToolCall(call) = &updates[0] else {
        panic!("expected a tool call first: {updates:?}");
    };
    assert_eq!(call.kind, ToolKind::Edit);
    assert!(matches!(call.content[0], ToolCallContent::Diff(_)));
    assert_eq!(statuses(&updates).last(), Some(&ToolCallStatus::Completed));
    assert_eq!(text_of(&updates), ["Wrote 12 bytes to b.txt"]);

    let turn = h.spawn_prompt(&session, "write c.txt nope");
    let (_, responder) = h.next_permission().await;
    let outcome = RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new("reject"));
    responder
        .respond(RequestPermissionResponse::new(outcome))
        .unwrap();
    let response = timeout(T, turn).await.unwrap().unwrap().unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let updates = h.drain();
    assert_eq!(statuses(&updates).last(), Some(&ToolCallStatus::Failed));
    assert_eq!(text_of(&updates), ["Permission rejected"]);
    assert!(!h.dir.join("c.txt").exists());
    assert!(h.close().await.success());
}

#[tokio::test]
async fn cancel_during_permission_ends_the_turn_cancelled() {
    let mut h = start(&[]).await;
    let session = h.new_session().await;

    let turn = h.spawn_prompt(&session, "write d.txt text");
    let (_, responder) = h.next_permission().await;
    h.cancel(&session);
    // As the spec asks of clients: answer pending permissions `cancelled` after session/cancel.
    responder
        .respond(RequestPermissionResponse::new(
            RequestPermissionOutcome::Cancelled,
        ))
        .unwrap();
    let response = timeout(T, turn).await.unwrap().unwrap().unwrap();
    assert_eq!(response.stop_reason, StopReason::Cancelled);
    assert_eq!(statuses(&h.drain()).last(), Some(&ToolCallStatus::Failed));
    assert!(h.close().await.success());
}

#[tokio::test]
async fn slow_turn_stops_promptly_on_cancel() {
    let mut h = start(&[]).await;
    let session = h.new_session().await;

    let turn = h.spawn_prompt(&session, "slow 200 50");
    let first = h.next_update().await;
    assert_eq!(text_of(&[first]), ["tick 1 "]);
    h.cancel(&session);
    let response = timeout(T, turn).await.unwrap().unwrap().unwrap();
    assert_eq!(response.stop_reason, StopReason::Cancelled);
    assert!(text_of(&h.drain()).len() < 199);

    // The cancel belonged to that turn only.
    let response = h.prompt(&session, "slow 2 1").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    assert_eq!(text_of(&h.drain()), ["tick 1 ", "tick 2 "]);
    assert!(h.close().await.success());
}

#[tokio::test]
async fn unknown_request_is_answered_method_not_found_by_the_client() {
    let mut h = start(&[]).await;
    let session = h.new_session().await;
    let response = h.prompt(&session, "unknown").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    assert_eq!(
        text_of(&h.drain()),
        ["unknown request answered: error -32601"]
    );
    assert!(h.close().await.success());
}

#[tokio::test]
async fn flood_sends_n_chunks_of_size_bytes() {
    let mut h = start(&[]).await;
    let session = h.new_session().await;
    let response = h.prompt(&session, "FLOOD 50 4096").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let chunks = text_of(&h.drain());
    assert_eq!(chunks.len(), 50);
    assert!(
        chunks
            .iter()
            .all(|c| c.len() == 4096 && c.bytes().all(|b| b == b'x'))
    );
    assert!(h.close().await.success());
}

#[tokio::test]
async fn telemetry_commands_reply_and_end_the_turn_without_an_exporter() {
    // Whatever OTLP env the test process has: nothing is exported here.
    let mut h = start(&[("OTEL_SDK_DISABLED", "true")]).await;
    let session = h.new_session().await;
    let secret = "sk-live-1234567890abcdef user@example.com https://bob:hunter2@example.com/x";
    let response = h
        .prompt(&session, &format!("telemetry {secret}"))
        .await
        .unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    let reply = text_of(&h.drain()).concat();
    assert_eq!(
        reply,
        format!(
            "telemetry: {} bytes put into a span name, span and event attributes, a log record \
             and a metric point",
            secret.len()
        )
    );
    let response = h.prompt(&session, "telemetry-flood 3000").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    assert_eq!(
        text_of(&h.drain()).concat(),
        "telemetry-flood: emitted 0 spans and 0 log records (0 flushes, all flushed)"
    );
    // `telemetry` without a text is plain text, echoed.
    h.prompt(&session, "telemetry").await.unwrap();
    assert!(
        text_of(&h.drain())
            .concat()
            .ends_with("You said: telemetry")
    );
    assert!(h.close().await.success());
}

#[tokio::test]
async fn reports_process_facts_and_meta() {
    let mut h = start(&[("DEMO_TEST_VAR", "forty two")]).await;
    let session = h.new_session().await;

    for (prompt, expected) in [
        (
            "env DEMO_TEST_VAR",
            "env DEMO_TEST_VAR=forty two".to_owned(),
        ),
        ("env DEMO_UNSET_VAR", "env DEMO_UNSET_VAR unset".to_owned()),
        ("pwd", format!("cwd {}", h.dir.display())),
        ("pid", format!("pid {}", h.child.id().unwrap())),
        ("stderr to the log", "ok".to_owned()),
        ("meta", "null".to_owned()),
    ] {
        h.prompt(&session, prompt).await.unwrap();
        assert_eq!(text_of(&h.drain()), [expected], "prompt {prompt:?}");
    }
    let line = timeout(T, h.stderr.recv()).await.unwrap().unwrap();
    assert_eq!(line, "to the log");

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut meta = Meta::new();
    meta.insert("traceparent".into(), json!(traceparent));
    let request = h.prompt_request(&session, "meta").meta(meta);
    timeout(T, h.cx.send_request(request).block_task())
        .await
        .unwrap()
        .unwrap();
    let chunks = text_of(&h.drain());
    let echoed: serde_json::Value = serde_json::from_str(&chunks[0]).unwrap();
    assert_eq!(echoed, json!({ "traceparent": traceparent }));
    assert!(h.close().await.success());
}

#[tokio::test]
async fn load_accepts_any_id_and_prompt_needs_a_known_session() {
    let mut h = start(&[]).await;
    let unknown = SessionId::new("never-created");
    let err = h.prompt(&unknown, "hi").await.unwrap_err();
    assert_eq!(err.code.value(), -32602);

    let load = LoadSessionRequest::new(unknown.clone(), &h.dir);
    timeout(T, h.cx.send_request(load).block_task())
        .await
        .unwrap()
        .unwrap();
    assert!(h.drain().is_empty(), "nothing to replay");
    let response = h.prompt(&unknown, "hi").await.unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    assert!(h.close().await.success());
}

#[tokio::test]
async fn crash_exits_with_code_3_after_its_chunk() {
    let mut h = start(&[]).await;
    let session = h.new_session().await;
    let err = h.prompt(&session, "crash").await.unwrap_err();
    assert!(
        agent_client_protocol::is_incoming_transport_closed(&err),
        "{err:?}"
    );
    assert_eq!(text_of(&h.drain()), ["about to crash"]);
    assert_eq!(h.wait().await.code(), Some(3));
}

#[tokio::test]
async fn exits_cleanly_on_stdin_eof_mid_turn() {
    let mut h = start(&[]).await;
    let session = h.new_session().await;
    let _turn = h.spawn_prompt(&session, "slow 1000 1000");
    h.next_update().await;
    assert!(h.close().await.success());
}

#[tokio::test]
async fn init_delay_postpones_the_initialize_answer() {
    let started = std::time::Instant::now();
    let h = start(&[("ACPD_DEMO_INIT_DELAY_MS", "300")]).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(h.close().await.success());
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

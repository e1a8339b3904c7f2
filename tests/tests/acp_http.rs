//! ACP over HTTP (`/acp`), end to end against the real daemon and the demo agent:
//!
//! - the official client (`agent-client-protocol-http`'s `HttpClient`) over HTTP+SSE and over
//!   WebSocket: initialize, session/new (a bridge session, listed over REST), a prompt with
//!   streamed updates, a permission round trip, cancel, session/load on a second connection
//!   (history replayed), and JSON-RPC errors;
//! - mixed clients: an ACP client and a REST client on one session see the same turns, and a vote
//!   from either resolves the permission once;
//! - a qwen serve style client on raw HTTP: connection and session-scoped streams, a session
//!   stream resumed with `Last-Event-ID`, and the transport's error statuses;
//! - the guards: the bearer token and the body limit apply to `/acp`.
//!
//! Every wait is on a message or an HTTP answer, each under a deadline.

use acpd_tests::*;
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    CancelNotification, ContentBlock, InitializeRequest, LoadSessionRequest, NewSessionRequest,
    PermissionOptionKind, PromptRequest, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome, SessionNotification, StopReason,
    TextContent,
};
use agent_client_protocol::{Agent, Client, on_receive_notification, on_receive_request};
use agent_client_protocol_http::HttpClient;
use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(60);

// ---- the official client ------------------------------------------------------------------

/// How the test client answers `session/request_permission`.
#[derive(Clone, Copy)]
enum Answer {
    Allow,
    /// Hand the request to the test (which may never answer).
    Hold,
}

type Held = (
    RequestPermissionRequest,
    agent_client_protocol::v1::Responder<RequestPermissionResponse>,
);

/// What the client saw: `session/update`s (as JSON) and held permission requests.
struct Seen {
    updates: Arc<Mutex<Vec<Value>>>,
    update_rx: mpsc::Receiver<Value>,
    held: mpsc::Receiver<Held>,
    /// Permission requests received.
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl Seen {
    /// The agent text streamed so far for `session`.
    fn text(&self, session: &str) -> String {
        agent_text_of(&self.updates.lock().unwrap(), session)
    }

    /// Waits until the agent text streamed for `session` contains `needle` (chunks split it).
    async fn until_text(&mut self, session: &str, needle: &str) -> Result<()> {
        tokio::time::timeout(LONG, async {
            while !self.text(session).contains(needle) {
                if self.update_rx.recv().await.is_none() {
                    bail!("connection closed before the text {needle:?}");
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| anyhow!("no text {needle:?} within {LONG:?}"))?
    }

    /// Waits for an update whose JSON contains `needle`.
    async fn until(&mut self, needle: &str) -> Result<Value> {
        tokio::time::timeout(LONG, async {
            while let Some(u) = self.update_rx.recv().await {
                if u.to_string().contains(needle) {
                    return Ok(u);
                }
            }
            bail!("connection closed before an update with {needle:?}")
        })
        .await
        .map_err(|_| anyhow!("no update with {needle:?} within {LONG:?}"))?
    }
}

fn agent_text_of(updates: &[Value], session: &str) -> String {
    updates
        .iter()
        .filter(|u| u["sessionId"] == session)
        .filter(|u| u["update"]["sessionUpdate"] == "agent_message_chunk")
        .filter_map(|u| u["update"]["content"]["text"].as_str())
        .collect()
}

/// Runs `body` on a connection to `endpoint` (`http://` or `ws://`), sending `headers` (the
/// daemon's token, say) with every request.
async fn with_client<T: Send + 'static>(
    endpoint: &str,
    headers: &[(&'static str, &str)],
    answer: Answer,
    body: impl AsyncFnOnce(ConnectionTo<Agent>, Seen) -> Result<T>,
) -> Result<T> {
    let mut builder = HttpClient::builder_with_endpoint(endpoint);
    if !headers.is_empty() {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse()?);
        }
        builder = builder.configure_http(move |http| http.default_headers(h.clone()));
    }
    let transport = builder.build()?;
    let updates = Arc::new(Mutex::new(Vec::new()));
    let (update_tx, update_rx) = mpsc::channel(4096);
    let (held_tx, held) = mpsc::channel(16);
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Seen {
        updates: updates.clone(),
        update_rx,
        held,
        asked: asked.clone(),
    };
    Client
        .v1()
        .name("acp-http-test")
        .on_receive_notification(
            async move |n: SessionNotification, _cx| {
                let v = serde_json::to_value(&n).unwrap_or(Value::Null);
                updates.lock().unwrap().push(v.clone());
                let _ = update_tx.try_send(v);
                Ok(())
            },
            on_receive_notification!(),
        )
        .on_receive_request(
            async move |req: RequestPermissionRequest, responder, _cx| {
                asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match answer {
                    // The option of kind allow_once (real agents name their options their own way).
                    Answer::Allow => {
                        let allow = req
                            .options
                            .iter()
                            .find(|o| o.kind == PermissionOptionKind::AllowOnce)
                            .map_or_else(|| "allow".to_string(), |o| o.option_id.to_string());
                        responder.respond(RequestPermissionResponse::new(
                            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(
                                allow,
                            )),
                        ))
                    }
                    Answer::Hold => {
                        let _ = held_tx.try_send((req, responder));
                        Ok(())
                    }
                }
            },
            on_receive_request!(),
        )
        .connect_with(transport, async move |cx| Ok(body(cx, seen).await))
        .await
        .map_err(|e| anyhow!("ACP connection: {e:?}"))?
}

fn text(t: &str) -> Vec<ContentBlock> {
    vec![ContentBlock::Text(TextContent::new(t))]
}

async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, agent_client_protocol::Error>>,
) -> Result<T> {
    tokio::time::timeout(LONG, f)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {LONG:?}"))?
        .map_err(|e| anyhow!("{what}: {e:?}"))
}

async fn initialize(cx: &ConnectionTo<Agent>) -> Result<()> {
    let init = within(
        "initialize",
        cx.send_request(InitializeRequest::new(
            agent_client_protocol::schema::ProtocolVersion::V1,
        ))
        .block_task(),
    )
    .await?;
    let name = init.agent_info.map(|i| i.name).unwrap_or_default();
    if name != "acpd" {
        bail!("agent_info.name = {name:?}");
    }
    if !init.agent_capabilities.load_session {
        bail!("loadSession not announced");
    }
    Ok(())
}

async fn new_session(cx: &ConnectionTo<Agent>, cwd: &std::path::Path) -> Result<String> {
    let r = within(
        "session/new",
        cx.send_request(NewSessionRequest::new(cwd)).block_task(),
    )
    .await?;
    Ok(r.session_id.to_string())
}

async fn prompt(cx: &ConnectionTo<Agent>, session: &str, t: &str) -> Result<StopReason> {
    let r = within(
        "session/prompt",
        cx.send_request(PromptRequest::new(session.to_string(), text(t)))
            .block_task(),
    )
    .await?;
    Ok(r.stop_reason)
}

async fn workspace_session_ids(d: &Daemon) -> Result<Vec<String>> {
    let caps = d.get("/capabilities").await?;
    let ws = caps.body["workspaces"][0]["id"]
        .as_str()
        .context("workspace id")?
        .to_string();
    let r = d.get(&format!("/workspace/{ws}/sessions")).await?;
    Ok(r.body["sessions"]
        .as_array()
        .context("sessions")?
        .iter()
        .filter_map(|s| s["sessionId"].as_str().map(str::to_string))
        .collect())
}

/// The whole flow on one transport; `endpoint` picks HTTP+SSE or WebSocket.
async fn full_flow(d: &Daemon, endpoint: &str) -> Result<()> {
    let cwd = d.ws_path.clone();
    let session = with_client(endpoint, &[], Answer::Allow, async |cx, mut seen| {
        initialize(&cx).await?;
        let sid = new_session(&cx, &cwd).await?;
        // A bridge session: REST lists it.
        let listed = workspace_session_ids(d).await?;
        if !listed.contains(&sid) {
            bail!("{sid} not in GET /workspace/{{id}}/sessions: {listed:?}");
        }

        // A prompt: updates stream, the answer is the stop reason.
        let stop = prompt(&cx, &sid, "hello over acp").await?;
        if stop != StopReason::EndTurn {
            bail!("stop reason {stop:?}");
        }
        let said = seen.text(&sid);
        if !said.contains("You said: hello over acp") {
            bail!("streamed text {said:?}");
        }

        // A permission round trip: the client allows, the agent writes the file.
        let stop = prompt(&cx, &sid, "write acp-out.txt written-over-acp").await?;
        if stop != StopReason::EndTurn {
            bail!("write turn stop reason {stop:?}");
        }
        let written = std::fs::read_to_string(d.ws_path.join("acp-out.txt"))?;
        let asked = seen.asked.load(std::sync::atomic::Ordering::Relaxed);
        if written != "written-over-acp" || asked != 1 {
            bail!("file holds {written:?} after {asked} permission requests");
        }

        // Cancel: a slow turn ends `cancelled` after session/cancel.
        let slow = cx
            .send_request(PromptRequest::new(sid.clone(), text("slow 200 50")))
            .block_task();
        let slow = tokio::spawn(async move { tokio::time::timeout(LONG, slow).await });
        seen.until("tick 1 ").await?;
        cx.send_notification(CancelNotification::new(sid.clone()))
            .map_err(|e| anyhow!("cancel: {e:?}"))?;
        let stop = slow
            .await?
            .map_err(|_| anyhow!("cancelled turn did not end"))?
            .map_err(|e| anyhow!("cancelled prompt: {e:?}"))?
            .stop_reason;
        if stop != StopReason::Cancelled {
            bail!("cancelled turn stop reason {stop:?}");
        }

        // Errors: an unknown session is ACP's resource-not-found, with the daemon's code.
        let err = cx
            .send_request(PromptRequest::new("no-such-session", text("hi")))
            .block_task()
            .await
            .err()
            .context("a prompt to an unknown session succeeded")?;
        if i32::from(err.code) != -32002
            || err.data.as_ref().map(|d| &d["code"]) != Some(&json!("session_not_found"))
        {
            bail!("unknown session error {err:?}");
        }
        // An empty prompt is invalid params.
        let err = cx
            .send_request(PromptRequest::new(sid.clone(), vec![]))
            .block_task()
            .await
            .err()
            .context("an empty prompt succeeded")?;
        if i32::from(err.code) != -32602 {
            bail!("empty prompt error {err:?}");
        }
        Ok(sid)
    })
    .await?;

    // session/load on a second connection: the history arrives before the answer.
    with_client(endpoint, &[], Answer::Allow, async |cx, seen| {
        initialize(&cx).await?;
        within(
            "session/load",
            cx.send_request(LoadSessionRequest::new(session.clone(), &cwd))
                .block_task(),
        )
        .await?;
        let replayed = seen.text(&session);
        if !replayed.contains("You said: hello over acp") {
            bail!("history not replayed before the load answer: {replayed:?}");
        }
        // And the loaded session takes prompts on this connection.
        let stop = prompt(&cx, &session, "again").await?;
        if stop != StopReason::EndTurn || !seen.text(&session).contains("You said: again") {
            bail!("prompt after load: {stop:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_official_client_runs_the_whole_flow_over_http_sse() -> Result<()> {
    let d = Daemon::start().await?;
    full_flow(&d, &d.url("/acp")).await
}

#[tokio::test]
async fn the_official_client_runs_the_whole_flow_over_websocket() -> Result<()> {
    let d = Daemon::start().await?;
    let ws = d.url("/acp").replacen("http://", "ws://", 1);
    full_flow(&d, &ws).await
}

#[tokio::test]
async fn the_workspace_endpoint_serves_its_workspace() -> Result<()> {
    let d = Daemon::start().await?;
    let caps = d.get("/capabilities").await?;
    let transports = caps.body["transports"].as_array().context("transports")?;
    if !transports.contains(&json!("acp")) {
        bail!("transports {transports:?}");
    }
    let ws = caps.body["workspaces"][0]["id"]
        .as_str()
        .context("ws")?
        .to_string();
    let cwd = d.ws_path.clone();
    with_client(
        &d.url(&format!("/workspaces/{ws}/acp")),
        &[],
        Answer::Allow,
        async |cx, seen| {
            initialize(&cx).await?;
            let sid = new_session(&cx, &cwd).await?;
            prompt(&cx, &sid, "pwd").await?;
            let said = seen.text(&sid);
            if !said.contains(cwd.to_str().unwrap()) {
                bail!("pwd said {said:?}");
            }
            // A cwd outside this endpoint's workspace is refused.
            let other = tempfile::tempdir()?;
            let err = cx
                .send_request(NewSessionRequest::new(other.path()))
                .block_task()
                .await
                .err()
                .context("a foreign cwd was accepted")?;
            if err.data.as_ref().map(|d| &d["code"]) != Some(&json!("workspace_mismatch")) {
                bail!("foreign cwd error {err:?}");
            }
            Ok(())
        },
    )
    .await?;
    let unknown = d.http.post(d.url("/workspaces/nope/acp")).send().await?;
    if unknown.status() != 404 {
        bail!("unknown workspace endpoint -> {}", unknown.status());
    }
    Ok(())
}

// ---- mixed clients ------------------------------------------------------------------------

#[tokio::test]
async fn an_acp_and_a_rest_client_share_a_session_and_the_first_vote_wins() -> Result<()> {
    let d = Daemon::start().await?;
    let cwd = d.ws_path.clone();
    with_client(&d.url("/acp"), &[], Answer::Hold, async |cx, mut seen| {
        initialize(&cx).await?;
        let sid = new_session(&cx, &cwd).await?;
        // The REST client attaches and listens.
        let rest = d.create_session_with(json!({"sessionId": sid})).await?;
        let mut events = d.events(&rest, None, None).await?;

        // A REST prompt: the ACP client sees its turn (the user's words and the answer).
        let r = d.prompt(&rest, "from rest").await?;
        if r.status != 202 {
            bail!("REST prompt -> {} {}", r.status, r.body);
        }
        seen.until_text(&sid, "You said: from rest").await?;
        let echoed = seen.updates.lock().unwrap().iter().any(|u| {
            u["update"]["sessionUpdate"] == "user_message_chunk"
                && u["update"]["content"]["text"] == "from rest"
        });
        if !echoed {
            bail!("the REST client's words did not reach the ACP client");
        }

        // An ACP prompt that asks permission: both clients are asked.
        let write = cx
            .send_request(PromptRequest::new(
                sid.clone(),
                text("write mixed.txt rest-won"),
            ))
            .block_task();
        let write = tokio::spawn(async move { tokio::time::timeout(LONG, write).await });
        let (req, responder) = tokio::time::timeout(LONG, seen.held.recv())
            .await
            .context("the ACP client was not asked")?
            .context("connection closed")?;
        if req.session_id.to_string() != sid {
            bail!("asked for {}", req.session_id);
        }
        let asked = events
            .until(LONG, |f| f.event == "permission_request")
            .await?;
        let request_id = asked
            .last()
            .and_then(|f| f.data["data"]["requestId"].as_str())
            .context("requestId")?
            .to_string();
        // REST answers first: allowed.
        let vote = d
            .post_as(
                &rest,
                &format!("/session/{sid}/permission/{request_id}"),
                json!({"outcome": {"outcome": "selected", "optionId": "allow"}}),
            )
            .await?;
        if vote.status != 200 {
            bail!("REST vote -> {} {}", vote.status, vote.body);
        }
        // The ACP client's late "reject" changes nothing.
        let _ = responder.respond(RequestPermissionResponse::new(
            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new("reject")),
        ));
        let stop = write
            .await?
            .map_err(|_| anyhow!("write turn did not end"))?
            .map_err(|e| anyhow!("write prompt: {e:?}"))?
            .stop_reason;
        if stop != StopReason::EndTurn {
            bail!("write turn {stop:?}");
        }
        if std::fs::read_to_string(d.ws_path.join("mixed.txt"))? != "rest-won" {
            bail!("the REST allow did not win");
        }
        // Decided once: a second vote finds nothing pending.
        let again = d
            .post_as(
                &rest,
                &format!("/session/{sid}/permission/{request_id}"),
                json!({"outcome": {"outcome": "cancelled"}}),
            )
            .await?;
        if again.status != 404 {
            bail!("second vote -> {}", again.status);
        }
        let resolved = events
            .until(LONG, |f| f.event == "permission_resolved")
            .await?;
        let voter = &resolved.last().context("resolved")?.data["data"]["voterClientId"];
        if voter != &json!(rest.client_id) {
            bail!("resolved by {voter}");
        }
        // The REST stream saw the ACP client's turn too.
        events.until(LONG, |f| f.event == "turn_complete").await?;
        Ok(())
    })
    .await
}

// ---- qwen serve style clients on raw HTTP -------------------------------------------------

/// An SSE stream of JSON-RPC messages: `(id, message)` per event.
struct RpcStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl RpcStream {
    fn new(r: reqwest::Response) -> Self {
        Self {
            body: r.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    async fn next(&mut self) -> Result<(Option<u64>, Value)> {
        tokio::time::timeout(LONG, async {
            loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                    let raw: Vec<u8> = self.buf.drain(..i + 2).collect();
                    let text = String::from_utf8(raw)?;
                    let (mut id, mut data) = (None, None);
                    for line in text.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = v.trim().parse().ok();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = Some(serde_json::from_str::<Value>(v)?);
                        }
                    }
                    if let Some(d) = data {
                        return Ok((id, d));
                    }
                    continue;
                }
                match self.body.next().await {
                    Some(c) => self.buf.extend_from_slice(&c?),
                    None => bail!("stream ended"),
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no SSE message within {LONG:?}"))?
    }

    /// Reads until a message satisfies `pred`; returns all read, the match last.
    async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Result<Vec<(Option<u64>, Value)>> {
        let mut seen = Vec::new();
        loop {
            let m = self.next().await?;
            let hit = pred(&m.1);
            seen.push(m);
            if hit {
                return Ok(seen);
            }
        }
    }
}

struct Raw<'a> {
    d: &'a Daemon,
    conn: String,
}

impl Raw<'_> {
    async fn post(&self, session: Option<&str>, msg: Value) -> Result<reqwest::Response> {
        let mut r = self
            .d
            .http
            .post(self.d.url("/acp"))
            .header("content-type", "application/json")
            .header("acp-connection-id", &self.conn)
            .body(msg.to_string());
        if let Some(s) = session {
            r = r.header("acp-session-id", s);
        }
        Ok(r.send().await?)
    }

    async fn stream(&self, session: Option<&str>, last: Option<u64>) -> Result<RpcStream> {
        let mut r = self
            .d
            .http
            .get(self.d.url("/acp"))
            .header("accept", "text/event-stream")
            .header("acp-connection-id", &self.conn)
            .timeout(Duration::from_secs(600));
        if let Some(s) = session {
            r = r.header("acp-session-id", s);
        }
        if let Some(n) = last {
            r = r.header("last-event-id", n.to_string());
        }
        let resp = r.send().await?;
        if resp.status() != 200 {
            bail!("GET /acp -> {}", resp.status());
        }
        Ok(RpcStream::new(resp))
    }
}

async fn raw_initialize(d: &Daemon) -> Result<Raw<'_>> {
    let r = d
        .http
        .post(d.url("/acp"))
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}).to_string())
        .send()
        .await?;
    if r.status() != 200 {
        bail!("initialize -> {}", r.status());
    }
    let conn = r
        .headers()
        .get("acp-connection-id")
        .and_then(|v| v.to_str().ok())
        .context("Acp-Connection-Id")?
        .to_string();
    let body: Value = r.json().await?;
    if body["result"]["agentInfo"]["name"] != "acpd" {
        bail!("initialize result {body}");
    }
    Ok(Raw { d, conn })
}

#[tokio::test]
async fn a_qwen_style_client_uses_session_streams_and_resumes_them() -> Result<()> {
    let d = Daemon::start().await?;
    let raw = raw_initialize(&d).await?;
    let mut conn_stream = raw.stream(None, None).await?;
    let r = raw
        .post(
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "session/new",
            "params": {"cwd": d.ws_path, "mcpServers": []}}),
        )
        .await?;
    if r.status() != 202 {
        bail!("session/new -> {}", r.status());
    }
    let created = conn_stream.until(|m| m["id"] == 1).await?;
    let sid = created.last().unwrap().1["result"]["sessionId"]
        .as_str()
        .context("sessionId")?
        .to_string();

    // The session stream carries the session's updates and the prompt's answer.
    let mut s = raw.stream(Some(&sid), None).await?;
    let r = raw
        .post(
            Some(&sid),
            json!({"jsonrpc": "2.0", "id": 2, "method": "session/prompt",
            "params": {"prompt": [{"type": "text", "text": "resume me"}]}}),
        )
        .await?;
    if r.status() != 202 {
        bail!("session/prompt -> {}", r.status());
    }
    let turn = s.until(|m| m["id"] == 2).await?;
    let answer = &turn.last().unwrap().1;
    if answer["result"]["stopReason"] != "end_turn" {
        bail!("prompt answer {answer}");
    }
    let updates: Vec<&(Option<u64>, Value)> = turn
        .iter()
        .filter(|(_, m)| m["method"] == "session/update")
        .collect();
    if updates.is_empty() || turn.iter().any(|(id, _)| id.is_none()) {
        bail!("session stream events without ids or updates: {turn:?}");
    }
    let ids: Vec<u64> = turn.iter().filter_map(|(id, _)| *id).collect();
    if ids.windows(2).any(|w| w[1] != w[0] + 1) {
        bail!("ids not consecutive: {ids:?}");
    }
    drop(s);

    // Resumed after the first event: everything after it again, in order, ending with the answer.
    let first = ids[0];
    let mut resumed = None;
    for _ in 0..50 {
        match raw.stream(Some(&sid), Some(first)).await {
            Ok(st) => {
                resumed = Some(st);
                break;
            }
            // The daemon learns that the old reader left only from its socket; nothing tells
            // this client when, so it asks again (50 times at most).
            Err(e) if e.to_string().contains("409") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let mut resumed = resumed.context("session stream not free again")?;
    let again = resumed.until(|m| m["id"] == 2).await?;
    let again_ids: Vec<u64> = again.iter().filter_map(|(id, _)| *id).collect();
    if again_ids != ids[1..] {
        bail!("resumed ids {again_ids:?}, expected {:?}", &ids[1..]);
    }

    // DELETE ends the connection; its id is then unknown.
    let del = d
        .http
        .delete(d.url("/acp"))
        .header("acp-connection-id", &raw.conn)
        .send()
        .await?;
    if del.status() != 202 {
        bail!("DELETE -> {}", del.status());
    }
    let after = raw
        .post(
            Some(&sid),
            json!({"jsonrpc": "2.0", "id": 3, "method": "session/cancel", "params": {}}),
        )
        .await?;
    if after.status() != 404 {
        bail!("POST after DELETE -> {}", after.status());
    }
    // The session stays a bridge session.
    if !workspace_session_ids(&d).await?.contains(&sid) {
        bail!("session gone with the connection");
    }
    // The transport's bounded stores count what they let go; nothing was, here.
    let metrics = d.http.get(d.url("/metrics")).send().await?.text().await?;
    for reason in [
        "resume_event",
        "resume_stream",
        "idle_connection",
        "carried_context",
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("acpd_acp_http_dropped") && l.contains(&format!("\"{reason}\""))
            })
            .with_context(|| format!("acpd.acp_http.dropped{{reason={reason}}} not on /metrics"))?;
        if !line.ends_with(" 0") {
            bail!("dropped where nothing should be: {line}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_transport_answers_the_rfds_error_statuses_with_json_bodies() -> Result<()> {
    let d = Daemon::start().await?;
    let raw = raw_initialize(&d).await?;
    let post = |ct: &'static str, conn: Option<&str>, body: String| {
        let mut r = d
            .http
            .post(d.url("/acp"))
            .header("content-type", ct)
            .body(body);
        if let Some(c) = conn {
            r = r.header("acp-connection-id", c.to_string());
        }
        r.send()
    };
    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        (
            "batch",
            post("application/json", Some(&raw.conn), "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"session/new\"}]".into()).await?,
            501,
            "",
        ),
        (
            "wrong content type",
            post("text/plain", Some(&raw.conn), "{}".into()).await?,
            415,
            "unsupported_media_type",
        ),
        (
            "no connection id",
            post("application/json", None, json!({"jsonrpc": "2.0", "id": 1, "method": "session/new", "params": {}}).to_string()).await?,
            400,
            "invalid_request",
        ),
        (
            "unknown connection id",
            post("application/json", Some("nope"), json!({"jsonrpc": "2.0", "id": 1, "method": "session/new", "params": {}}).to_string()).await?,
            404,
            "acp_not_found",
        ),
        (
            "GET without text/event-stream",
            d.http.get(d.url("/acp")).header("acp-connection-id", &raw.conn).send().await?,
            406,
            "not_acceptable",
        ),
        (
            "session method without Acp-Session-Id",
            post("application/json", Some(&raw.conn), json!({"jsonrpc": "2.0", "id": 1, "method": "session/prompt", "params": {"prompt": []}}).to_string()).await?,
            400,
            "invalid_request",
        ),
    ];
    let mut failures = Vec::new();
    for (what, resp, status, code) in cases {
        let got = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code_ok = if code.is_empty() {
            body["error"]["code"] == -32600
        } else {
            body["code"] == code && body["error"].is_string()
        };
        if got != status || !code_ok {
            failures.push(format!("{what}: {got} {body}"));
        }
    }
    if !failures.is_empty() {
        bail!("{failures:#?}");
    }
    Ok(())
}

// ---- guards -------------------------------------------------------------------------------

#[tokio::test]
async fn the_token_and_the_body_limit_guard_acp() -> Result<()> {
    let d = Daemon::builder()
        .config("[server]\ntoken = \"s3cret-acp\"\nmax_body_bytes = 4096\n")
        .start()
        .await?;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}).to_string();
    let r = d
        .http
        .post(d.url("/acp"))
        .header("content-type", "application/json")
        .body(init.clone())
        .send()
        .await?;
    if r.status() != 401 {
        bail!("no token -> {}", r.status());
    }
    let big = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1, "_meta": {"x": "y".repeat(8192)}}}).to_string();
    let r = d
        .http
        .post(d.url("/acp"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret-acp")
        .body(big)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status != 413 || body["code"] != "payload_too_large" {
        bail!("oversized -> {status} {body}");
    }
    // With the token the official client works.
    let cwd = d.ws_path.clone();
    with_client(
        &d.url("/acp"),
        &[("authorization", "Bearer s3cret-acp")],
        Answer::Allow,
        async |cx, seen| {
            initialize(&cx).await?;
            let sid = new_session(&cx, &cwd).await?;
            prompt(&cx, &sid, "guarded").await?;
            if !seen.text(&sid).contains("You said: guarded") {
                bail!("no text");
            }
            Ok(())
        },
    )
    .await
}

// ---- telemetry ----------------------------------------------------------------------------

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_prompt_over_acp_is_one_trace_from_the_json_rpc_span_into_the_agent() -> Result<()> {
    use acpd_tests::otlp::{Protocol, Receiver, RecvSpan};
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = Daemon::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await?;
    let cwd = d.ws_path.clone();
    let sid = with_client(&d.url("/acp"), &[], Answer::Allow, async |cx, _seen| {
        initialize(&cx).await?;
        let sid = new_session(&cx, &cwd).await?;
        let mut meta = serde_json::Map::new();
        meta.insert(
            "traceparent".into(),
            json!(format!("00-{TRACE}-{PARENT}-01")),
        );
        let r = within(
            "traced prompt",
            cx.send_request(
                PromptRequest::new(sid.clone(), text("write traced.txt over-acp")).meta(meta),
            )
            .block_task(),
        )
        .await?;
        if r.stop_reason != StopReason::EndTurn {
            bail!("traced turn {:?}", r.stop_reason);
        }
        Ok(sid)
    })
    .await?;
    let find = |t: &[RecvSpan], name: &str| t.iter().find(|s| s.name.starts_with(name)).cloned();
    let spans = rx
        .wait_for_spans(LONG, |spans| {
            let t: Vec<RecvSpan> = spans
                .iter()
                .filter(|s| s.trace_id == TRACE)
                .cloned()
                .collect();
            [
                "session/prompt",
                "bridge prompt.dispatch",
                "acp session/prompt",
                "invoke_agent",
            ]
            .iter()
            .all(|n| find(&t, n).is_some())
                && spans.iter().any(|s| s.name == "session/new")
        })
        .await?;
    let trace: Vec<RecvSpan> = spans
        .iter()
        .filter(|s| s.trace_id == TRACE)
        .cloned()
        .collect();
    let rpc = find(&trace, "session/prompt").unwrap();
    if rpc.parent_span_id != PARENT || rpc.kind != 2 {
        bail!("JSON-RPC span not the server span under the client's _meta: {rpc:?}");
    }
    if rpc.attr_str("rpc.system") != Some("jsonrpc")
        || rpc.attr_str("rpc.method") != Some("session/prompt")
        || rpc.attr_str("session.id") != Some(sid.as_str())
    {
        bail!("JSON-RPC span attributes {:?}", rpc.attributes);
    }
    let dispatch = find(&trace, "bridge prompt.dispatch").unwrap();
    let acp = find(&trace, "acp session/prompt").unwrap();
    let agent = find(&trace, "invoke_agent").unwrap();
    if dispatch.parent_span_id != rpc.span_id
        || acp.parent_span_id != dispatch.span_id
        || agent.parent_span_id != acp.span_id
        || agent.service_name != "acpd-demo-agent"
    {
        bail!("chain broken: rpc {rpc:?}\ndispatch {dispatch:?}\nacp {acp:?}\nagent {agent:?}");
    }
    // A message without trace context continues the HTTP request that carried it.
    let new = spans.iter().find(|s| s.name == "session/new").unwrap();
    let http = spans
        .iter()
        .find(|s| s.span_id == new.parent_span_id)
        .with_context(|| format!("no parent span for session/new: {new:?}"))?;
    if http.name != "POST /acp" || http.attr_str("rpc.method") != Some("session/new") {
        bail!("session/new's parent {http:?}");
    }
    Ok(())
}

// ---- a real agent -------------------------------------------------------------------------

#[tokio::test]
async fn codex_acp_behind_acp_over_http() -> Result<()> {
    use acpd_tests::mock_llm::MockLlm;
    use acpd_tests::mock_llm::agents::{AgentOptions, RealAgent};
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions::default();
    let Some(agent) = RealAgent::codex(&mock, &opts)? else {
        return Ok(());
    };
    let d = agent.daemon(&opts).await?;
    let cwd = d.ws_path.clone();
    let expected = mock.config().text;
    let target = d.ws_path.join("codex-acp.txt");
    with_client(&d.url("/acp"), &[], Answer::Allow, async |cx, seen| {
        initialize(&cx).await?;
        let sid = new_session(&cx, &cwd).await?;
        let stop = prompt(&cx, &sid, "Say hello").await?;
        if stop != StopReason::EndTurn || !seen.text(&sid).contains(&expected) {
            bail!("text turn {stop:?}: {:?}", seen.text(&sid));
        }
        // A write asks permission over /acp; the client allows it.
        mock.set(|c| {
            c.scenario = "write".into();
            c.write_path = target.display().to_string();
            c.write_content = "written by codex over acp".into();
        });
        let stop = prompt(&cx, &sid, "Write the file codex-acp.txt").await?;
        let written = std::fs::read_to_string(&target).unwrap_or_default();
        let asked = seen.asked.load(std::sync::atomic::Ordering::Relaxed);
        if stop != StopReason::EndTurn || written != "written by codex over acp" || asked != 1 {
            bail!("write turn {stop:?}, file {written:?}, {asked} permission requests");
        }
        Ok(())
    })
    .await
}

// ---- session configuration and limits -----------------------------------------------------

#[tokio::test]
async fn modes_are_announced_and_switched_and_the_session_limit_holds() -> Result<()> {
    use agent_client_protocol::v1::schema::SetSessionModeRequest;
    let d = Daemon::builder()
        .config("[limits]\nmax_sessions = 1\n")
        .start()
        .await?;
    let cwd = d.ws_path.clone();
    with_client(&d.url("/acp"), &[], Answer::Allow, async |cx, _seen| {
        initialize(&cx).await?;
        let created = within(
            "session/new",
            cx.send_request(NewSessionRequest::new(&cwd)).block_task(),
        )
        .await?;
        let sid = created.session_id.to_string();
        // What the agent announced reaches the ACP client.
        let modes = created
            .modes
            .context("no modes in the session/new answer")?;
        let ids: Vec<String> = modes
            .available_modes
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        if !ids.contains(&"plan".to_string()) {
            bail!("announced modes {ids:?}");
        }
        within(
            "session/set_mode",
            cx.send_request(SetSessionModeRequest::new(sid.clone(), "plan"))
                .block_task(),
        )
        .await?;
        let state = d.get(&format!("/session/{sid}/context")).await?;
        if state.body["state"]["modes"]["currentModeId"] != "plan" {
            bail!("mode after set_mode: {}", state.body);
        }
        let err = cx
            .send_request(SetSessionModeRequest::new(sid.clone(), "nope"))
            .block_task()
            .await
            .err()
            .context("an unknown mode was accepted")?;
        if err.data.as_ref().map(|d| &d["code"]) != Some(&json!("invalid_approval_mode")) {
            bail!("unknown mode error {err:?}");
        }
        // The daemon's session limit applies to ACP clients too.
        let err = cx
            .send_request(NewSessionRequest::new(&cwd))
            .block_task()
            .await
            .err()
            .context("a session over the limit was created")?;
        let data = err.data.clone().unwrap_or_default();
        if data["code"] != "session_limit_exceeded" || data["status"] != 503 {
            bail!("over the limit: {err:?}");
        }
        Ok(())
    })
    .await
}

// ---- plugins ------------------------------------------------------------------------------

#[tokio::test]
async fn error_translation_reaches_the_json_rpc_error_of_a_prompt() -> Result<()> {
    let config = "[[plugins]]\nname = \"errors\"\npath = \"builtin:errors\"\ndeadline_ms = 200\n";
    let d = match Daemon::builder().config(config).start().await {
        Ok(d) => d,
        Err(e) if format!("{e:#}").contains("not embedded") => {
            eprintln!("skipped: the built-in errors plugin is not embedded in this build ({e:#})");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let cwd = d.ws_path.clone();
    with_client(&d.url("/acp"), &[], Answer::Allow, async |cx, _seen| {
        initialize(&cx).await?;
        let sid = new_session(&cx, &cwd).await?;
        let err = tokio::time::timeout(
            LONG,
            cx.send_request(PromptRequest::new(sid.clone(), text("crash")))
                .block_task(),
        )
        .await
        .map_err(|_| anyhow!("the crashed turn did not end"))?
        .err()
        .context("a crashed turn answered a stop reason")?;
        let data = err.data.clone().unwrap_or_default();
        if !err.message.starts_with("The agent stopped unexpectedly") || data["retryable"] != true {
            bail!("untranslated: {err:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn enrichment_of_the_post_reaches_the_json_rpc_span_and_the_turn() -> Result<()> {
    use acpd_tests::otlp::{Protocol, Receiver};
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let config = "[[plugins]]\nname = \"enrich\"\npath = \"builtin:enrich\"\ndeadline_ms = 200\n\
                  [plugins.config]\nheaders = { \"x-team\" = \"team.name\" }\n";
    let d = match Daemon::builder()
        .config(config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await
    {
        Ok(d) => d,
        Err(e) if format!("{e:#}").contains("not embedded") => {
            eprintln!("skipped: the built-in enrich plugin is not embedded in this build ({e:#})");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let cwd = d.ws_path.clone();
    let sid = with_client(
        &d.url("/acp"),
        &[("x-team", "payments")],
        Answer::Allow,
        async |cx, _seen| {
            initialize(&cx).await?;
            let sid = new_session(&cx, &cwd).await?;
            prompt(&cx, &sid, "enriched").await?;
            Ok(sid)
        },
    )
    .await?;
    let team = |s: &acpd_tests::otlp::RecvSpan| s.attr_str("team.name") == Some("payments");
    let spans = rx
        .wait_for_spans(LONG, |spans| {
            spans.iter().any(|s| s.name == "session/prompt" && team(s))
                && spans.iter().any(|s| s.name == "bridge prompt.dispatch")
        })
        .await?;
    let rpc = spans
        .iter()
        .find(|s| s.name == "session/prompt" && s.attr_str("session.id") == Some(sid.as_str()))
        .context("session/prompt span")?;
    let dispatch = spans
        .iter()
        .find(|s| s.name == "bridge prompt.dispatch" && s.parent_span_id == rpc.span_id)
        .context("dispatch span under the JSON-RPC span")?;
    if !team(rpc) || !team(dispatch) {
        bail!(
            "not enriched: {:?} / {:?}",
            rpc.attributes,
            dispatch.attributes
        );
    }
    Ok(())
}

// ---- shutdown -----------------------------------------------------------------------------

#[tokio::test]
async fn open_acp_streams_end_when_the_daemon_drains() -> Result<()> {
    let mut d = Daemon::start().await?;
    let (conn_stream, session_stream) = {
        let raw = raw_initialize(&d).await?;
        let mut conn_stream = raw.stream(None, None).await?;
        raw.post(
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "session/new",
                "params": {"cwd": d.ws_path, "mcpServers": []}}),
        )
        .await?;
        let created = conn_stream.until(|m| m["id"] == 1).await?;
        let sid = created.last().unwrap().1["result"]["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        let session_stream = raw.stream(Some(&sid), None).await?;
        (conn_stream, session_stream)
    };
    // Well inside the daemon's 10 s connection deadline: the streams did not hold it.
    let t = std::time::Instant::now();
    let status = d.terminate(Duration::from_secs(8)).await?;
    if !status.success() {
        bail!("acpd exited {status:?}");
    }
    let waited = t.elapsed();
    if d.log()
        .iter()
        .any(|l| l.contains("connections still open after the shutdown deadline"))
    {
        bail!("the shutdown waited for open /acp streams ({waited:?})");
    }
    for mut s in [conn_stream, session_stream] {
        match s.next().await {
            Err(e) if e.to_string().contains("stream ended") => {}
            other => bail!("a stream outlived the daemon: {other:?}"),
        }
    }
    Ok(())
}

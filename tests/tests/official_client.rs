//! acpd driven by qwen's official client, `DaemonClient` of the npm package `@qwen-code/sdk`,
//! unmodified and pinned (tests/sdk-client/package.json and package-lock.json; `.ci/run` installs
//! it with tests/scripts/install-sdk-client.sh and names it in `ACPD_QWEN_SDK_DIR`, node 22 in
//! `ACPD_NODE22`). tests/sdk-client/drive.mjs calls the client's methods and prints one JSON line
//! per step; these tests assert on every step:
//!
//! - against the demo agent: the core flow (create, a prompt awaited by the client itself,
//!   events, permission votes on the session route and the legacy one, the queue listed and a
//!   queued prompt removed, cancel, heartbeat, the workspace's sessions, load) and every
//!   operation of the stable contract (status, context, model switch with its `model_switched`
//!   event and a refused and an unknown switch, approval mode, metadata, transcript pages
//!   following the cursors both ways, export in all four formats, the workspace file routes with
//!   traversal and binary refusals, workspace/tools, resume, close), then the same through the
//!   client's session object (`DaemonSessionClient`); and that the client's own event validation
//!   (`asKnownDaemonEvent`) and session view (`reduceDaemonSessionEvents`) accept every event
//!   acpd sent;
//! - against the real Qwen Code child (offline, on the tests' mock LLM, with two models
//!   configured): a switch from one model to the other and through every approval mode it
//!   announces, each reflected in the context; a turn in yolo mode then shows both reached the
//!   agent (the LLM is asked for the new model, the file it asks for is written unasked).
//!
//! Without node 22 or the SDK, these print "skipped: <reason>" and return. The event shapes the
//! client requires are also asserted without it, over plain SSE (`event_shapes_the_official_client_requires`).

use acpd_tests::mock_llm::MockLlm;
use acpd_tests::mock_llm::agents::{AGENT_WAIT, AgentOptions, RealAgent, skip};
use acpd_tests::*;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The whole driver run (the script bounds itself at 240 s too).
const RUN_WAIT: Duration = Duration::from_secs(300);
const LONG: Duration = Duration::from_secs(60);

/// Types the pinned client lists as known but has no validator for: its `asKnownDaemonEvent`
/// answers `undefined` for them whatever their data.
const NO_VALIDATOR: &[&str] = &["prompt_cancelled", "replay_complete"];

/// Node 22 and the installed SDK, or `None` after printing why not.
fn installed() -> Option<(PathBuf, PathBuf)> {
    let var = |name: &str, what: &str| match std::env::var_os(name) {
        Some(v) if !v.is_empty() && Path::new(&v).exists() => Ok(PathBuf::from(v)),
        Some(v) if !v.is_empty() => Err(format!(
            "{name}={} does not exist ({what})",
            Path::new(&v).display()
        )),
        _ => Err(format!(
            "{name} is not set: {what} is not installed (.ci/run installs it: tests/scripts/{})",
            if name == "ACPD_NODE22" {
                "install-agents.sh"
            } else {
                "install-sdk-client.sh"
            }
        )),
    };
    match (
        var("ACPD_NODE22", "node 22"),
        var("ACPD_QWEN_SDK_DIR", "@qwen-code/sdk"),
    ) {
        (Ok(node), Ok(sdk)) => Some((node, sdk)),
        (Err(e), _) | (_, Err(e)) => {
            skip(&e);
            None
        }
    }
}

/// The driver's output: each step's line by name.
struct Steps {
    lines: HashMap<String, Value>,
    order: Vec<String>,
}

impl Steps {
    fn line(&self, name: &str) -> &Value {
        self.lines
            .get(name)
            .unwrap_or_else(|| panic!("no step {name:?}; steps: {:?}", self.order))
    }

    /// The value of a step that succeeded.
    fn ok(&self, name: &str) -> &Value {
        let l = self.line(name);
        assert_eq!(l["ok"], true, "step {name} failed: {l}");
        &l["value"]
    }

    /// The error of a step that failed (the client threw): `{name, status, body, message}`.
    fn err(&self, name: &str) -> &Value {
        let l = self.line(name);
        assert_eq!(l["ok"], false, "step {name} should have failed: {l}");
        &l["error"]
    }

    /// A refused call: the client's `DaemonHttpError` with this status and error code.
    fn refused(&self, name: &str, status: u16, code: &str) -> &Value {
        let e = self.err(name);
        assert_eq!(e["name"], "DaemonHttpError", "{name}: {e}");
        assert_eq!(e["status"], status, "{name}: {e}");
        assert_eq!(e["body"]["code"], code, "{name}: {e}");
        e
    }
}

/// Runs the driver for `scenario` against `d`, within [`RUN_WAIT`].
async fn drive(node: &Path, sdk: &Path, d: &Daemon, scenario: &str) -> Result<Steps> {
    let script = manifest_dir().join("sdk-client/drive.mjs");
    let t = Instant::now();
    let child = tokio::process::Command::new(node)
        .arg(&script)
        .arg(sdk)
        .arg(&d.base)
        .arg(scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("run {} {}", node.display(), script.display()))?;
    let out = tokio::time::timeout(RUN_WAIT, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("the driver did not finish within {RUN_WAIT:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("driver {scenario}: {:?}, {}", t.elapsed(), out.status);
    if !out.status.success() {
        bail!(
            "driver exited {}; stderr: {stderr}; stdout: {stdout}",
            out.status
        );
    }
    let mut steps = Steps {
        lines: HashMap::new(),
        order: Vec::new(),
    };
    for line in stdout.lines() {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("driver line {line:?}"))?;
        let name = v["step"].as_str().context("step name")?.to_string();
        let shown = line.chars().take(300).collect::<String>();
        eprintln!("  {shown}");
        steps.order.push(name.clone());
        steps.lines.insert(name, v);
    }
    anyhow::ensure!(
        steps.lines.contains_key("done"),
        "the driver did not finish; stderr: {stderr}"
    );
    Ok(steps)
}

/// Every event of a known type that the client validates passed its validation.
fn assert_validated(steps: &Steps, name: &str) {
    let v = steps.ok(name);
    let by_type = v.get("validated").unwrap_or(v).as_object().expect("types");
    for (t, v) in by_type {
        assert_eq!(v["known"], true, "{name}: the client does not know {t}");
        if !NO_VALIDATOR.contains(&t.as_str()) {
            assert_eq!(
                v["malformed"], 0,
                "{name}: the client rejects acpd's {t} events: {v}"
            );
        }
    }
}

/// How many of the events counted in `by_type` (a `validate` result) are of a type the client
/// cannot validate, so its session view counts them unrecognized.
fn unvalidated(by_type: &Value) -> u64 {
    NO_VALIDATOR
        .iter()
        .filter_map(|t| by_type[*t]["count"].as_u64())
        .sum()
}

const BLOB: &[u8] = b"PK\x00\x01\x02binary";

#[tokio::test]
async fn the_official_client_drives_every_operation() -> Result<()> {
    let Some((node, sdk)) = installed() else {
        return Ok(());
    };
    let d = Daemon::builder()
        .file("hello.txt", "line one\nline two\nline three\n")
        .file("src/lib.rs", "pub fn f() {}\n")
        .start()
        .await?;
    std::fs::write(d.ws_path.join("blob.bin"), BLOB)?;
    let st = drive(&node, &sdk, &d, "demo").await?;
    let ws = d.ws_path.display().to_string();

    // The core flow.
    assert_eq!(st.ok("health")["status"], "ok");
    let caps = st.ok("capabilities");
    assert_eq!(caps["workspaceCwd"], ws.as_str());
    let s = st.ok("createOrAttachSession");
    let sid = s["sessionId"].as_str().context("sessionId")?;
    let cid = s["clientId"].as_str().context("clientId")?;
    assert_eq!(s["attached"], false);
    assert_eq!(s["workspaceCwd"], ws.as_str());
    assert_eq!(st.ok("prompt")["stopReason"], "end_turn");
    let events = st.ok("promptEvents").as_array().context("events")?;
    let text: String = events
        .iter()
        .filter(|e| e["data"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .filter_map(|e| e["data"]["update"]["content"]["text"].as_str())
        .collect();
    assert!(
        text.contains("Hello from the demo agent") && text.contains("official client"),
        "{text}"
    );

    // Status and context.
    let status = st.ok("sessionStatus");
    assert_eq!(status["sessionId"], sid);
    assert_eq!(status["hasActivePrompt"], false);
    assert_eq!(status["isWaitingForPermission"], false);
    assert_eq!(status["pendingInteractionCount"], 0);
    let cx = st.ok("sessionContext");
    assert_eq!(
        (cx["v"].as_u64(), cx["sessionId"].as_str()),
        (Some(1), Some(sid))
    );
    assert_eq!(cx["state"]["modes"]["currentModeId"], "default");
    let modes: Vec<&str> = cx["state"]["modes"]["availableModes"]
        .as_array()
        .context("availableModes")?
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(modes, ["default", "plan", "auto-edit", "yolo"]);
    let model = &cx["state"]["configOptions"][0];
    assert_eq!(
        (model["category"].as_str(), model["currentValue"].as_str()),
        (Some("model"), Some("demo-fast"))
    );

    // Model switches: accepted (with its event), refused by the agent, unknown.
    assert!(st.ok("setSessionModel").is_object());
    let ev = st.ok("modelSwitchedEvent");
    assert_eq!(ev["data"]["modelId"], "demo-smart");
    assert_eq!(ev["data"]["previousModelId"], "demo-fast");
    assert_eq!(ev["originatorClientId"], cid);
    st.refused("setSessionModelRefused", 502, "agent_error");
    assert_eq!(
        st.ok("modelSwitchFailedEvent")["data"]["requestedModelId"],
        "demo-broken"
    );
    let e = st.refused("setSessionModelUnknown", 404, "model_not_found");
    assert!(
        e["body"]["availableModels"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("demo-smart"))),
        "{e}"
    );

    // Approval mode.
    assert_eq!(
        st.ok("setSessionApprovalMode"),
        &json!({"sessionId": sid, "mode": "plan", "previous": "default", "persisted": false})
    );
    let ev = &st.ok("approvalModeChangedEvent")["data"];
    assert_eq!(
        (ev["previous"].as_str(), ev["next"].as_str()),
        (Some("default"), Some("plan"))
    );
    st.refused(
        "setSessionApprovalModeInvalid",
        400,
        "invalid_approval_mode",
    );
    let cx = &st.ok("sessionContextAfterSwitches")["state"];
    assert_eq!(cx["modes"]["currentModeId"], "plan");
    assert_eq!(cx["configOptions"][0]["currentValue"], "demo-smart");
    assert_eq!(st.ok("setSessionApprovalModeDefault")["mode"], "default");

    // Metadata round trip (the client keeps only well-formed PR entries).
    let pr = json!({"number": 42, "url": "https://github.com/acme/app/pull/42", "state": "open"});
    assert_eq!(
        st.ok("updateSessionMetadata"),
        &json!({"displayName": "Driven by the official client", "prs": [pr]})
    );
    assert_eq!(
        st.ok("metadataEvent")["data"]["displayName"],
        "Driven by the official client"
    );
    let status = st.ok("sessionStatusAfterMetadata");
    assert_eq!(status["displayName"], "Driven by the official client");
    assert_eq!(status["prs"], json!([pr]));

    // Permission votes: the session route, the legacy route, a second vote on the same request.
    let req = &st.ok("permissionRequestEvent")["data"];
    assert!(req["requestId"].is_string(), "{req}");
    assert_eq!(st.ok("respondToSessionPermission"), true);
    assert_eq!(st.ok("writeTurnEnd")["data"]["stopReason"], "end_turn");
    assert_eq!(
        std::fs::read_to_string(d.ws_path.join("sdk-note.txt"))?,
        "written through the session vote"
    );
    let req = &st.ok("legacyPermissionRequestEvent")["data"];
    let waiting = st.ok("sessionStatusWaiting");
    assert_eq!(waiting["isWaitingForPermission"], true);
    assert_eq!(waiting["pendingInteractionCount"], 1);
    assert_eq!(
        waiting["pendingInteractions"][0]["requestId"],
        req["requestId"]
    );
    assert_eq!(st.ok("respondToPermission"), true);
    assert_eq!(
        st.ok("legacyWriteTurnEnd")["data"]["stopReason"],
        "end_turn"
    );
    assert_eq!(
        std::fs::read_to_string(d.ws_path.join("legacy-note.txt"))?,
        "written through the legacy vote"
    );
    assert_eq!(
        st.ok("respondToPermissionAgain"),
        false,
        "a resolved request is 404, which the client reports as false"
    );

    // Cancel.
    assert_eq!(
        st.ok("slowFirstChunk")["data"]["update"]["content"]["text"],
        "tick 1 "
    );
    assert_eq!(st.ok("cancelledTurnEnd")["data"]["stopReason"], "cancelled");
    // The queue: listed behind the running prompt, then removed (the client reads the answer).
    let queued = st.ok("promptNonBlockingQueued")["promptId"].clone();
    let list = st.ok("getPendingPrompts")["pendingPrompts"].clone();
    assert_eq!(
        (list[0]["state"].as_str(), list[1]["state"].as_str()),
        (Some("running"), Some("queued")),
        "{list}"
    );
    assert_eq!(list[1]["promptId"], queued);
    assert_eq!(list[1]["text"], "queued then removed");
    assert_eq!(st.ok("removePendingPrompt"), &json!({"removed": true}));
    let removed = &st.ok("queuedRemovedEvent")["data"];
    assert_eq!(
        (removed["promptId"].clone(), removed["state"].as_str()),
        (queued, Some("removed"))
    );
    st.refused("removePendingPromptAgain", 404, "prompt_not_found");

    // Transcript: one page, then forward and backward pages following the cursors.
    let all = st.ok("transcriptAll");
    assert_eq!(
        (all["v"].as_u64(), all["sessionId"].as_str()),
        (Some(1), Some(sid))
    );
    assert_eq!(all["hasMore"], false);
    let all = all["events"].as_array().context("events")?;
    assert!(all.len() >= 10, "{}", all.len());
    assert!(
        all.iter()
            .any(|e| e["data"]["update"]["content"]["text"]
                == "hello from the official client <b>&</b>"),
        "the user's prompt is in the transcript"
    );
    let pages = st
        .ok("transcriptForwardPages")
        .as_array()
        .context("pages")?;
    assert!(pages.len() > 2, "{} pages", pages.len());
    let mut forward = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let page = p["events"].as_array().context("page")?;
        assert!(page.len() <= 3, "limit 3: {}", page.len());
        let last = i + 1 == pages.len();
        assert_eq!(p["hasMore"], !last, "page {i}");
        assert_eq!(
            p["nextCursor"].is_string(),
            !last,
            "page {i}: {}",
            p["nextCursor"]
        );
        forward.extend(page.iter().cloned());
    }
    assert_eq!(&forward, all, "forward pages add up to the transcript");
    let pages = st
        .ok("transcriptBackwardPages")
        .as_array()
        .context("pages")?;
    let mut backward: Vec<Value> = Vec::new();
    for p in pages {
        let mut page = p["events"].as_array().context("page")?.clone();
        page.extend(backward);
        backward = page;
    }
    assert_eq!(pages.last().context("a page")?["hasOlder"], false);
    assert_eq!(&backward, all, "backward pages add up to the transcript");
    st.refused("transcriptBadCursor", 400, "invalid_transcript_cursor");
    assert_validated(&st, "transcriptEventsValidated");

    // Export in every format; the client names the file from Content-Disposition.
    let file = format!("acpd-session-{sid}");
    for (step, format, mime, ext) in [
        ("exportDefault", "html", "text/html", "html"),
        ("export_html", "html", "text/html", "html"),
        ("export_md", "md", "text/markdown", "md"),
        ("export_json", "json", "application/json", "json"),
        ("export_jsonl", "jsonl", "application/jsonl", "jsonl"),
    ] {
        let x = st.ok(step);
        assert_eq!(x["format"], format, "{step}");
        assert!(
            x["mimeType"].as_str().is_some_and(|m| m.starts_with(mime)),
            "{step}: {}",
            x["mimeType"]
        );
        assert_eq!(x["filename"], format!("{file}.{ext}"), "{step}");
    }
    let html = st.ok("export_html")["content"].as_str().context("html")?;
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(
        html.contains("<title>Driven by the official client</title>"),
        "{html}"
    );
    assert!(
        html.contains("hello from the official client &lt;b&gt;&amp;&lt;/b&gt;"),
        "escaped: {html}"
    );
    assert!(
        !html.contains("<b>&</b>"),
        "nothing of the prompt is markup: {html}"
    );
    assert!(html.contains("Hello from the demo agent"), "{html}");
    assert_eq!(
        st.ok("exportDefault")["content"],
        st.ok("export_html")["content"]
    );
    let md = st.ok("export_md")["content"].as_str().context("md")?;
    assert!(
        md.contains("## User\n\nhello from the official client <b>&</b>"),
        "{md}"
    );
    let doc: Value =
        serde_json::from_str(st.ok("export_json")["content"].as_str().context("json")?)?;
    assert_eq!(doc["sessionId"], sid);
    assert_eq!(doc["events"].as_array().map(Vec::len), Some(all.len()));
    let lines = st.ok("export_jsonl")["content"]
        .as_str()
        .context("jsonl")?
        .lines();
    let lines: Vec<Value> = lines.map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), all.len());

    // Workspace files.
    let f = st.ok("readWorkspaceFile");
    assert_eq!(
        (f["kind"].as_str(), f["path"].as_str()),
        (Some("file"), Some("hello.txt"))
    );
    assert_eq!(f["content"], "line one\nline two\nline three\n");
    assert_eq!(f["hasMore"], false);
    let f = st.ok("readWorkspaceFileLines");
    assert_eq!(f["content"], "line two\n");
    assert_eq!(f["hasMore"], true);
    assert!(f["nextCursor"].is_string(), "{f}");
    assert_eq!(
        st.ok("readWorkspaceFileWritten")["content"],
        "written through the session vote"
    );
    st.refused("readWorkspaceFileTraversal", 403, "path_outside_workspace");
    st.refused("readWorkspaceFileBinary", 422, "binary_file");
    let b = st.ok("readWorkspaceFileBytes");
    assert_eq!(b["kind"], "file_bytes");
    assert_eq!(b["sizeBytes"], BLOB.len());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["contentBase64"].as_str().context("base64")?)?;
    assert_eq!(bytes, &BLOB[1..5]);
    let stat = st.ok("fileStat");
    assert_eq!(
        (stat["type"].as_str(), stat["sizeBytes"].as_u64()),
        (Some("file"), Some(14))
    );
    st.refused("fileStatTraversal", 403, "path_outside_workspace");
    let names: Vec<(&str, &str)> = st.ok("dirList")["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["kind"].as_str()?)))
        .collect();
    for want in [
        ("hello.txt", "file"),
        ("src", "directory"),
        ("blob.bin", "file"),
        ("sdk-note.txt", "file"),
    ] {
        assert!(names.contains(&want), "{want:?} in {names:?}");
    }
    assert_eq!(
        st.ok("dirListSrc")["entries"],
        json!([{"name": "lib.rs", "kind": "file", "ignored": false}])
    );
    let g = st.ok("glob");
    assert_eq!(
        (g["matches"].clone(), g["count"].as_u64()),
        (json!(["src/lib.rs"]), Some(1))
    );
    assert_eq!(
        st.ok("globTraversal")["matches"],
        json!([]),
        "nothing outside the workspace"
    );
    let tools = st.ok("workspaceTools");
    assert_eq!(
        (tools["v"].as_u64(), tools["initialized"].as_bool()),
        (Some(1), Some(true))
    );
    assert!(
        tools["tools"].is_array() && tools["acpChannelLive"].is_boolean(),
        "{tools}"
    );

    // Heartbeat, the workspace's sessions, load.
    let hb = st.ok("heartbeat");
    assert_eq!(
        (hb["sessionId"].as_str(), hb["clientId"].as_str()),
        (Some(sid), Some(cid))
    );
    assert!(hb["lastSeenAt"].is_string(), "{hb}");
    let listed = st
        .ok("listWorkspaceSessions")
        .as_array()
        .context("sessions")?;
    assert!(listed.iter().any(|x| x["sessionId"] == sid), "{listed:?}");
    let loaded = st.ok("loadSession");
    assert_eq!(
        (loaded["sessionId"].as_str(), loaded["attached"].as_bool()),
        (Some(sid), Some(true))
    );
    assert_eq!(
        loaded["state"]["configOptions"][0]["currentValue"],
        "demo-smart"
    );

    // Resume the live session, then close it.
    let r = st.ok("resumeSession");
    assert_eq!(
        (r["sessionId"].as_str(), r["clientId"].as_str()),
        (Some(sid), Some(cid))
    );
    assert_eq!(r["attached"], true);
    assert_eq!(r["state"]["modes"]["currentModeId"], "default");
    assert_eq!(r["state"]["configOptions"][0]["currentValue"], "demo-smart");
    st.ok("closeSession");
    assert_eq!(
        st.ok("sessionClosedEvent")["data"]["reason"],
        "client_close"
    );

    // The client's own judgement of every event it received.
    assert_validated(&st, "eventsValidated");
    let seen = st.ok("eventsValidated");
    for t in [
        "pending_prompt_added",
        "pending_prompt_started",
        "pending_prompt_completed",
        "session_closed",
    ] {
        assert!(seen[t]["count"].as_u64() > Some(0), "{t} seen: {seen}");
    }
    let view = st.ok("sessionView");
    assert_eq!(view["sessionId"], sid);
    assert_eq!(view["currentModelId"], "demo-smart");
    assert_eq!(view["approvalMode"], "default");
    assert_eq!(view["displayName"], "Driven by the official client");
    assert_eq!(view["pendingPermissions"], json!([]));
    assert_eq!(view["terminalEvent"], "session_closed");
    assert_eq!(view["alive"], false);
    assert_eq!(view["unmatchedPermissionResolutionCount"], 0);
    // Only the types the client cannot validate (qwen serve sends them too) go unrecognized.
    assert_eq!(
        view["unrecognizedKnownEventCount"],
        unvalidated(seen),
        "{view}"
    );
    assert_eq!(st.ok("eventStreamError"), &Value::Null);

    // A session created in an approval mode; a refused mode leaves no session behind.
    let created = st.ok("createInPlanMode");
    assert_eq!(created["attached"], false);
    let cx = &st.ok("createInPlanModeContext")["state"];
    assert_eq!(cx["modes"]["currentModeId"], "plan", "{cx}");
    st.ok("createInPlanModeClose");
    st.refused("createInBogusMode", 400, "invalid_approval_mode");
    assert_eq!(
        st.ok("sessionsAfterRefusedCreate"),
        st.ok("sessionsBeforeRefusedCreate")
    );

    // The client's session object: a prompt awaited on its own subscription, a switch, close.
    let created = st.ok("sessionClientCreate");
    assert_eq!(created["attached"], false);
    let other = created["sessionId"].as_str().context("sessionId")?;
    assert_ne!(other, sid);
    assert_eq!(st.ok("sessionClientPrompt")["stopReason"], "end_turn");
    assert!(st.ok("sessionClientSetModel").is_object());
    let cx = &st.ok("sessionClientContext")["state"];
    assert_eq!(cx["configOptions"][0]["currentValue"], "demo-smart");
    let tr = st.ok("sessionClientTranscript");
    assert!(
        tr["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["data"]["update"]["content"]["text"]
                == "slow 2 500 through the session client")),
        "{tr}"
    );
    st.ok("sessionClientClose");
    let evs = st.ok("sessionClientEvents");
    assert_eq!(
        evs["types"].as_array().and_then(|t| t.last()),
        Some(&json!("session_closed")),
        "{evs}"
    );
    assert_validated(&st, "sessionClientEvents");
    let view = &evs["view"];
    assert_eq!(
        (
            view["currentModelId"].as_str(),
            view["terminalEvent"].as_str()
        ),
        (Some("demo-smart"), Some("session_closed")),
        "{view}"
    );
    Ok(())
}

/// The events the official client validates, over plain SSE (no node needed): the data fields
/// its validators require, as `qwen serve` sends them.
#[tokio::test]
async fn event_shapes_the_official_client_requires() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, "slow 100 100").await?;
    let running = r.body["promptId"].as_str().context("promptId")?.to_string();
    let r = d.prompt(&s, "queued then removed").await?;
    let queued = r.body["promptId"].as_str().context("promptId")?.to_string();
    let of = |f: &Frame, t: &str, id: &str| f.event == t && f.data["data"]["promptId"] == id;
    let frames = sse
        .until(LONG, |f| of(f, "pending_prompt_added", &queued))
        .await?;
    let added = &frames.last().unwrap().data["data"];
    assert_eq!(added["text"], "queued then removed");
    assert!(added["queuedAt"].as_u64().is_some_and(|t| t > 0), "{added}");
    let started = frames
        .iter()
        .find(|f| of(f, "pending_prompt_started", &running))
        .context("started")?;
    assert_eq!(started.data["data"]["text"], "slow 100 100");

    let r = d
        .send(
            d.http
                .delete(d.url(&format!("/session/{}/pending-prompts/{queued}", s.id)))
                .header("X-Qwen-Client-Id", &s.client_id),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"removed": true}),
        "its client reads the body"
    );
    let frames = sse
        .until(LONG, |f| of(f, "pending_prompt_completed", &queued))
        .await?;
    assert_eq!(frames.last().unwrap().data["data"]["state"], "removed");

    let r = d
        .post_as(&s, &format!("/session/{}/cancel", s.id), json!({}))
        .await?;
    assert_eq!(r.status, 204);
    let frames = sse
        .until(LONG, |f| of(f, "pending_prompt_completed", &running))
        .await?;
    let done = &frames.last().unwrap().data["data"];
    assert_eq!(
        (done["state"].as_str(), done["stopReason"].as_str()),
        (Some("completed"), Some("cancelled"))
    );

    assert_eq!(d.delete(&format!("/session/{}", s.id)).await?.status, 204);
    let frames = sse.until(LONG, |f| f.event == "session_closed").await?;
    assert_eq!(
        frames.last().unwrap().data["data"]["reason"],
        "client_close"
    );
    Ok(())
}

/// Model and approval-mode switches through the official client against the real Qwen Code
/// child (offline, on the mock LLM).
#[tokio::test]
async fn the_official_client_switches_the_real_qwen_code() -> Result<()> {
    let Some((node, sdk)) = installed() else {
        return Ok(());
    };
    let mock = MockLlm::start("text").await?;
    // Two models of one OpenAI-compatible provider (both served by the mock), so that the switch
    // goes from one model to another.
    let model = |id: &str| {
        json!({"id": id, "name": id, "baseUrl": format!("{}/v1", mock.base_url()),
               "envKey": "OPENAI_API_KEY"})
    };
    let opts = AgentOptions {
        settings: Some(json!({
            "modelProviders": {"openai": [model("mock-model"), model("mock-model-b")]},
            "security": {"auth": {"selectedType": "openai"}},
            "model": {"name": "mock-model"},
        })),
        ..AgentOptions::default()
    };
    let Some(agent) = RealAgent::qwen(&mock, &opts)? else {
        return Ok(());
    };
    let d = agent.daemon(&opts).await?;
    // The turn the driver runs in yolo mode: the mock answers with a write of this file.
    let written = d.ws_path.join("official-client.txt");
    mock.set(|c| {
        c.scenario = "write".into();
        c.write_path = written.display().to_string();
        c.write_content = "written by qwen-code in yolo mode\n".into();
    });
    let t = Instant::now();
    let st = drive(&node, &sdk, &d, "qwen").await?;
    eprintln!(
        "qwen-code with the official client: {:?} (agent waits up to {AGENT_WAIT:?})",
        t.elapsed()
    );
    let cx = &st.ok("sessionContext")["state"];
    let models = cx["models"]["availableModels"]
        .as_array()
        .context("qwen-code announces its models")?;
    assert!(!models.is_empty(), "{cx}");
    let modes: Vec<&str> = cx["modes"]["availableModes"]
        .as_array()
        .context("qwen-code announces its modes")?
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for m in ["plan", "default", "auto-edit", "yolo"] {
        assert!(modes.contains(&m), "{m} in {modes:?}");
    }
    assert_eq!(cx["modes"]["currentModeId"], "default");

    // The model switch, from one configured model to the other: accepted by qwen-code through
    // ACP, announced, reflected in the context (the turn below shows it reached the agent).
    assert_eq!(cx["models"]["currentModelId"], "mock-model(openai)");
    let target = st.ok("modelTarget").as_str().context("a model")?;
    assert_eq!(target, "mock-model-b(openai)");
    assert!(st.ok("setSessionModel").is_object());
    let ev = st.ok("modelSwitchEvent");
    assert_eq!(ev["type"], "model_switched", "{ev}");
    assert_eq!(ev["data"]["modelId"], target);
    assert_eq!(ev["data"]["previousModelId"], "mock-model(openai)");
    st.refused("setSessionModelUnknown", 404, "model_not_found");

    // Each approval mode through ACP session/set_mode: answered, announced, in the context.
    let mut previous = "default";
    for mode in ["auto-edit", "plan", "auto", "default", "yolo"] {
        let r = st.ok(&format!("setSessionApprovalMode_{mode}"));
        assert_eq!(
            (r["mode"].as_str(), r["previous"].as_str()),
            (Some(mode), Some(previous)),
            "{r}"
        );
        let ev = &st.ok(&format!("approvalModeChangedEvent_{mode}"))["data"];
        assert_eq!(ev["previous"], previous, "{ev}");
        let cx = &st.ok(&format!("sessionContext_{mode}"))["state"];
        assert_eq!(cx["modes"]["currentModeId"], mode, "{cx}");
        assert_eq!(cx["models"]["currentModelId"], target, "{cx}");
        previous = mode;
    }
    st.refused(
        "setSessionApprovalModeInvalid",
        400,
        "invalid_approval_mode",
    );

    // The switches reached the agent: the next turn asks the LLM for the new model, and in yolo
    // mode qwen-code writes the file the LLM asks for without a permission request.
    assert!(st.ok("promptInYolo")["promptId"].is_string());
    let end = st.ok("promptInYoloEnd");
    assert_eq!(
        (end["type"].as_str(), end["data"]["stopReason"].as_str()),
        (Some("turn_complete"), Some("end_turn")),
        "{end}"
    );
    let kinds = st.ok("promptInYoloEvents");
    assert!(
        !kinds
            .as_array()
            .context("types")?
            .contains(&json!("permission_request")),
        "no permission asked in yolo mode: {kinds}"
    );
    assert_eq!(
        std::fs::read_to_string(&written).context("the file the agent wrote")?,
        "written by qwen-code in yolo mode\n"
    );
    let log = mock.requests();
    let chats: Vec<_> = log.iter().filter(|r| r.api == "chat").collect();
    let replies: Vec<&str> = chats.iter().map(|r| r.reply.as_str()).collect();
    assert!(replies.contains(&"tool_call write_file"), "{replies:?}");
    let asked: Vec<&Value> = chats.iter().map(|r| &r.body["model"]).collect();
    assert!(
        asked.iter().all(|m| *m == "mock-model-b"),
        "every LLM request after the switch names the new model: {asked:?}"
    );
    assert_validated(&st, "eventsValidated");
    let view = st.ok("sessionView");
    assert_eq!(view["currentModelId"], target);
    assert_eq!(view["approvalMode"], "yolo");
    assert_eq!(
        view["unrecognizedKnownEventCount"],
        unvalidated(st.ok("eventsValidated")),
        "{view}"
    );
    Ok(())
}

//! The agent side (southbound) end to end: permission votes and their timeout, workspace-confined
//! fs requests, unknown agent requests, child crashes and restores, both child scopes (and the
//! warm pool), SIGTERM with a turn in flight, and the child's scrubbed environment.

use acpd_tests::*;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::Duration;

/// Deadline for anything that may spawn a child or run a whole turn on a loaded machine.
const LONG: Duration = Duration::from_secs(60);

/// Posts a one-text-block prompt, checks the 202 and returns its promptId.
async fn start_turn(d: &Daemon, s: &SessionRef, text: &str) -> Result<String> {
    let r = d.prompt(s, text).await?;
    anyhow::ensure!(
        r.status == 202,
        "prompt {text:?} -> {}: {}",
        r.status,
        r.body
    );
    Ok(r.body["promptId"].as_str().context("promptId")?.to_string())
}

/// Reads until the end (turn_complete / turn_error) of `prompt_id`.
async fn turn_end(sse: &mut Sse, prompt_id: &str) -> Result<Vec<Frame>> {
    let pid = prompt_id.to_string();
    sse.until(LONG, move |f| {
        (f.event == "turn_complete" || f.event == "turn_error") && f.data["data"]["promptId"] == pid
    })
    .await
}

/// Runs one prompt to its end; returns the frames of the turn (the last is its end).
async fn run_turn(d: &Daemon, s: &SessionRef, sse: &mut Sse, text: &str) -> Result<Vec<Frame>> {
    let id = start_turn(d, s, text).await?;
    turn_end(sse, &id).await
}

fn last(frames: &[Frame]) -> &Frame {
    frames.last().expect("at least one frame")
}

fn stop_reason(frames: &[Frame]) -> &Value {
    &last(frames).data["data"]["stopReason"]
}

async fn until_event(sse: &mut Sse, kind: &'static str) -> Result<Vec<Frame>> {
    sse.until(LONG, move |f| f.event == kind).await
}

async fn vote(d: &Daemon, s: &SessionRef, request_id: &str, outcome: Value) -> Result<Resp> {
    d.post_as(
        s,
        &format!("/session/{}/permission/{request_id}", s.id),
        json!({ "outcome": outcome }),
    )
    .await
}

fn allow() -> Value {
    json!({"outcome": "selected", "optionId": "allow"})
}

/// Starts `write <rel> <content>` and waits for its permission request; returns (promptId, requestId).
async fn write_until_permission(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    rel: &str,
    content: &str,
) -> Result<(String, String, Frame)> {
    let prompt_id = start_turn(d, s, &format!("write {rel} {content}")).await?;
    let frames = until_event(sse, "permission_request").await?;
    let req = last(&frames).clone();
    let request_id = req.data["data"]["requestId"]
        .as_str()
        .context("requestId")?
        .to_string();
    Ok((prompt_id, request_id, req))
}

/// `GET /health?deep=1` until `pred` holds, within `within`.
async fn health_until(
    d: &Daemon,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = d.get("/health?deep=1").await?;
        if r.status == 200 && pred(&r.body) {
            return Ok(r.body);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("health never matched within {within:?}; last: {}", r.body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pid_reply(frames: &[Frame]) -> Result<u32> {
    let text = agent_text(frames);
    text.strip_prefix("pid ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("not a pid reply: {text:?}"))
}

// ---- 1. permissions ------------------------------------------------------------------------

#[tokio::test]
async fn permission_vote_allow_writes_the_file_and_second_vote_is_404() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, req) =
        write_until_permission(&d, &s, &mut sse, "out.txt", "hello world").await?;
    let data = &req.data["data"];
    assert_eq!(data["sessionId"], s.id.as_str());
    assert_eq!(req.data["promptId"], prompt_id.as_str());
    let option_ids: Vec<&str> = data["options"]
        .as_array()
        .context("options")?
        .iter()
        .filter_map(|o| o["optionId"].as_str())
        .collect();
    assert_eq!(option_ids, ["allow", "reject"], "{data}");
    assert_eq!(data["options"][0]["kind"], "allow_once");
    assert_eq!(data["options"][1]["kind"], "reject_once");
    assert!(
        data["toolCall"]["toolCallId"].is_string(),
        "toolCall: {}",
        data["toolCall"]
    );
    assert!(
        !d.ws_path.join("out.txt").exists(),
        "nothing is written before the vote"
    );
    let pending = d.get("/health?deep=1").await?;
    assert_eq!(pending.body["pendingPermissions"], 1, "{}", pending.body);

    // A second client attaches to the session; a client id the session never issued may not vote.
    let other = d
        .create_session_with(json!({"sessionId": s.id.as_str()}))
        .await?;
    assert_eq!(other.id, s.id);
    assert_ne!(other.client_id, s.client_id);
    let stranger = SessionRef {
        id: s.id.clone(),
        client_id: "client_never-issued".into(),
    };
    let r = vote(&d, &stranger, &request_id, allow()).await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["code"], "invalid_client_id");

    // First responder wins: the second client votes first.
    let r = vote(&d, &other, &request_id, allow()).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({}));

    let frames = turn_end(&mut sse, &prompt_id).await?;
    let resolved = frames
        .iter()
        .find(|f| f.event == "permission_resolved")
        .context("permission_resolved")?;
    assert_eq!(resolved.data["data"]["requestId"], request_id.as_str());
    assert_eq!(
        resolved.data["data"]["voterClientId"],
        other.client_id.as_str()
    );
    assert_eq!(resolved.data["data"]["outcome"], allow());
    assert_eq!(last(&frames).event, "turn_complete", "{:?}", kinds(&frames));
    assert_eq!(stop_reason(&frames), "end_turn");
    assert_eq!(agent_text(&frames), "Wrote 11 bytes to out.txt");
    assert_eq!(
        std::fs::read_to_string(d.ws_path.join("out.txt"))?,
        "hello world"
    );

    // The original client's vote comes too late.
    let again = vote(&d, &s, &request_id, allow()).await?;
    assert_eq!(again.status, 404, "{}", again.body);
    assert_eq!(again.body["code"], "permission_not_pending");
    let unknown = vote(&d, &s, "no-such-request", allow()).await?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    Ok(())
}

#[tokio::test]
async fn permission_unknown_option_is_400_and_request_stays_pending() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "later.txt", "kept").await?;

    let bad = vote(
        &d,
        &s,
        &request_id,
        json!({"outcome": "selected", "optionId": "maybe"}),
    )
    .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["code"], "invalid_option_id");
    assert!(bad.body["error"].is_string());
    let malformed = vote(&d, &s, &request_id, json!({"outcome": "perhaps"})).await?;
    assert_eq!(malformed.status, 400, "{}", malformed.body);

    let status = d.get(&format!("/session/{}", s.id)).await?;
    assert_eq!(status.body["pendingPermissions"], 1, "{}", status.body);
    assert!(!d.ws_path.join("later.txt").exists());

    let ok = vote(&d, &s, &request_id, allow()).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let frames = turn_end(&mut sse, &prompt_id).await?;
    assert_eq!(stop_reason(&frames), "end_turn", "{:?}", kinds(&frames));
    assert_eq!(
        frames
            .iter()
            .filter(|f| f.event == "permission_resolved")
            .count(),
        1,
        "the invalid votes resolved nothing"
    );
    assert_eq!(
        std::fs::read_to_string(d.ws_path.join("later.txt"))?,
        "kept"
    );
    Ok(())
}

#[tokio::test]
async fn permission_reject_vote_does_not_write() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "no.txt", "nope").await?;
    let r = vote(
        &d,
        &s,
        &request_id,
        json!({"outcome": "selected", "optionId": "reject"}),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let frames = turn_end(&mut sse, &prompt_id).await?;
    assert_eq!(stop_reason(&frames), "end_turn");
    assert_eq!(agent_text(&frames), "Permission rejected");
    assert!(!d.ws_path.join("no.txt").exists());
    Ok(())
}

#[tokio::test]
async fn permission_cancelled_vote_ends_the_turn_cancelled() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "cancelled.txt", "never").await?;
    let r = vote(&d, &s, &request_id, json!({"outcome": "cancelled"})).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({}));
    let frames = turn_end(&mut sse, &prompt_id).await?;
    let resolved = frames
        .iter()
        .find(|f| f.event == "permission_resolved")
        .context("permission_resolved")?;
    assert_eq!(
        resolved.data["data"]["outcome"],
        json!({"outcome": "cancelled"})
    );
    assert_eq!(resolved.data["data"]["voterClientId"], s.client_id.as_str());
    assert_eq!(last(&frames).event, "turn_complete", "{:?}", kinds(&frames));
    assert_eq!(stop_reason(&frames), "cancelled");
    assert!(!d.ws_path.join("cancelled.txt").exists());
    Ok(())
}

#[tokio::test]
async fn permission_timeout_resolves_cancelled() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--permission-timeout", "1"])
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "timeout.txt", "never").await?;
    let frames = turn_end(&mut sse, &prompt_id).await?;
    let resolved = frames
        .iter()
        .find(|f| f.event == "permission_resolved")
        .with_context(|| format!("no permission_resolved in {:?}", kinds(&frames)))?;
    assert_eq!(resolved.data["data"]["requestId"], request_id.as_str());
    assert_eq!(
        resolved.data["data"]["outcome"],
        json!({"outcome": "cancelled"})
    );
    assert!(resolved.data["data"]["voterClientId"].is_null());
    assert_eq!(last(&frames).event, "turn_complete", "{:?}", kinds(&frames));
    assert_eq!(stop_reason(&frames), "cancelled");
    assert!(!d.ws_path.join("timeout.txt").exists());
    let late = vote(&d, &s, &request_id, allow()).await?;
    assert_eq!(late.status, 404, "{}", late.body);
    Ok(())
}

// ---- 2. fs confinement ---------------------------------------------------------------------

#[tokio::test]
async fn fs_read_and_write_inside_the_workspace() -> Result<()> {
    let content = "line one\nline two\n";
    let d = Daemon::builder()
        .file("hello.txt", content)
        .file("sub/dir/nested.txt", "deep")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let frames = run_turn(&d, &s, &mut sse, "read hello.txt").await?;
    assert_eq!(stop_reason(&frames), "end_turn", "{:?}", kinds(&frames));
    assert_eq!(
        agent_text(&frames),
        format!("Read {} bytes from hello.txt: {content}", content.len())
    );
    let frames = run_turn(&d, &s, &mut sse, "read sub/dir/nested.txt").await?;
    assert_eq!(
        agent_text(&frames),
        "Read 4 bytes from sub/dir/nested.txt: deep"
    );
    // A file that does not exist reads as empty inside the workspace, as in Zed: agents check the
    // file they are about to create through this read (gemini-cli fails the write on any error).
    let frames = run_turn(&d, &s, &mut sse, "read missing.txt").await?;
    assert_eq!(agent_text(&frames), "Read 0 bytes from missing.txt: ");
    assert!(
        !d.ws_path.join("missing.txt").exists(),
        "a read creates nothing"
    );
    // Writing inside, into directories that do not exist yet, is allowed.
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "new/dir/file.txt", "fresh").await?;
    assert_eq!(vote(&d, &s, &request_id, allow()).await?.status, 200);
    let frames = turn_end(&mut sse, &prompt_id).await?;
    assert_eq!(agent_text(&frames), "Wrote 5 bytes to new/dir/file.txt");
    assert_eq!(
        std::fs::read_to_string(d.ws_path.join("new/dir/file.txt"))?,
        "fresh"
    );
    Ok(())
}

#[tokio::test]
async fn fs_read_outside_the_workspace_is_refused() -> Result<()> {
    let d = Daemon::start().await?;
    let parent = d.ws_path.parent().context("workspace parent")?;
    let secret = "TOP-SECRET-OUTSIDE-CONTENT";
    // A real file right next to the workspace, so only confinement can make the read fail.
    let outside = tempfile::Builder::new()
        .prefix("acpd-outside-")
        .suffix(".txt")
        .tempfile_in(parent)?;
    std::fs::write(outside.path(), secret)?;
    let name = outside
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .context("name")?
        .to_string();
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;

    let frames = run_turn(&d, &s, &mut sse, &format!("read ../{name}")).await?;
    assert_eq!(stop_reason(&frames), "end_turn", "{:?}", kinds(&frames));
    let text = agent_text(&frames);
    assert!(text.starts_with("Read failed:"), "{text:?}");
    assert!(
        text.contains("(code -32602)"),
        "refused as invalid params: {text:?}"
    );
    let all = serde_json::to_string(&frames.iter().map(|f| &f.data).collect::<Vec<_>>())?;
    assert!(!all.contains(secret), "the outside file was read: {all}");

    // An absolute path outside through `..` of a subdirectory is refused the same way.
    let frames = run_turn(&d, &s, &mut sse, &format!("read a/../../{name}")).await?;
    let text = agent_text(&frames);
    assert!(
        text.starts_with("Read failed:") && text.contains("-32602"),
        "{text:?}"
    );
    Ok(())
}

#[tokio::test]
async fn fs_write_outside_the_workspace_is_refused() -> Result<()> {
    let d = Daemon::start().await?;
    let parent = d
        .ws_path
        .parent()
        .context("workspace parent")?
        .to_path_buf();
    let ws_name = d
        .ws_path
        .file_name()
        .and_then(|n| n.to_str())
        .context("name")?
        .to_string();
    let escape_name = format!("{ws_name}-escape.txt");
    let escape = parent.join(&escape_name);
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, &format!("../{escape_name}"), "x").await?;
    let r = vote(&d, &s, &request_id, allow()).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let frames = turn_end(&mut sse, &prompt_id).await?;
    let text = agent_text(&frames);
    let escaped = escape.exists();
    let _ = std::fs::remove_file(&escape);
    assert!(!escaped, "a file was written outside the workspace");
    assert_eq!(stop_reason(&frames), "end_turn", "{:?}", kinds(&frames));
    assert!(
        text.starts_with("Write failed:") && text.contains("-32602"),
        "{text:?}"
    );
    Ok(())
}

#[tokio::test]
async fn fs_symlink_pointing_outside_is_refused() -> Result<()> {
    let d = Daemon::start().await?;
    let outside = tempfile::tempdir()?;
    let secret = "SYMLINKED-SECRET";
    std::fs::write(outside.path().join("secret.txt"), secret)?;
    std::os::unix::fs::symlink(outside.path(), d.ws_path.join("link"))?;
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        d.ws_path.join("filelink.txt"),
    )?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;

    for rel in ["link/secret.txt", "filelink.txt"] {
        let frames = run_turn(&d, &s, &mut sse, &format!("read {rel}")).await?;
        let text = agent_text(&frames);
        assert!(
            text.starts_with("Read failed:") && text.contains("-32602"),
            "read {rel}: {text:?}"
        );
        assert!(!text.contains(secret));
    }

    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "link/planted.txt", "x").await?;
    assert_eq!(vote(&d, &s, &request_id, allow()).await?.status, 200);
    let frames = turn_end(&mut sse, &prompt_id).await?;
    let text = agent_text(&frames);
    assert!(
        text.starts_with("Write failed:") && text.contains("-32602"),
        "{text:?}"
    );
    assert!(!outside.path().join("planted.txt").exists());

    // Overwriting the target through a file symlink is refused too.
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "filelink.txt", "overwritten").await?;
    assert_eq!(vote(&d, &s, &request_id, allow()).await?.status, 200);
    let frames = turn_end(&mut sse, &prompt_id).await?;
    assert!(agent_text(&frames).starts_with("Write failed:"));
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret.txt"))?,
        secret
    );
    Ok(())
}

// ---- 3. unknown agent requests -------------------------------------------------------------

#[tokio::test]
async fn unknown_agent_request_gets_method_not_found() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let frames = run_turn(&d, &s, &mut sse, "unknown").await?;
    assert_eq!(last(&frames).event, "turn_complete", "{:?}", kinds(&frames));
    assert_eq!(stop_reason(&frames), "end_turn");
    assert_eq!(
        agent_text(&frames),
        "unknown request answered: error -32601"
    );
    Ok(())
}

// ---- 4. crashes ------------------------------------------------------------------------------

#[tokio::test]
async fn crash_reports_turn_error_then_session_died_and_next_prompt_restores() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let old_pid = d.child_pid(&s).await?;

    let prompt_id = start_turn(&d, &s, "crash").await?;
    let frames = sse
        .until(LONG, |f| f.event == "session_died")
        .await
        .context("session_died after crash")?;
    let err = frames
        .iter()
        .position(|f| f.event == "turn_error")
        .with_context(|| format!("no turn_error in {:?}", kinds(&frames)))?;
    let died = frames.len() - 1;
    assert!(err < died, "turn_error comes before session_died");
    let e = &frames[err].data["data"];
    assert_eq!(e["code"], "agent_exited", "{e}");
    assert_eq!(e["promptId"], prompt_id.as_str());
    assert!(e["message"].is_string());
    assert!(
        agent_text(&frames).contains("about to crash"),
        "{:?}",
        kinds(&frames)
    );
    let died = &frames[died].data["data"];
    assert_eq!(died["reason"], "channel_closed", "{died}");
    assert_eq!(died["exitCode"], 3, "{died}");
    assert!(died["signalCode"].is_null(), "{died}");
    assert_eq!(died["sessionId"], s.id.as_str());
    assert!(eventually(LONG, || !process_alive(old_pid)).await);
    let status = d.get(&format!("/session/{}", s.id)).await?;
    assert_eq!(status.body["state"], "died", "{}", status.body);

    // The next prompt respawns a child and restores the session on it (session/load).
    let frames = run_turn(&d, &s, &mut sse, "pid").await?;
    assert_eq!(last(&frames).event, "turn_complete", "{:?}", kinds(&frames));
    let new_pid = pid_reply(&frames)?;
    assert_ne!(new_pid, old_pid);
    assert_eq!(d.child_pid(&s).await?, new_pid);
    let frames = run_turn(&d, &s, &mut sse, "still here").await?;
    assert_eq!(
        agent_text(&frames),
        "Hello from the demo agent. You said: still here"
    );
    let status = d.get(&format!("/session/{}", s.id)).await?;
    assert_eq!(status.body["state"], "idle", "{}", status.body);
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_turn_reports_signal_and_spares_other_sessions() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--agent-scope", "session"])
        .start()
        .await?;
    let a = d.create_session().await?;
    let b = d.create_session().await?;
    let (pid_a, pid_b) = (d.child_pid(&a).await?, d.child_pid(&b).await?);
    assert_ne!(pid_a, pid_b);
    let mut sse_a = d.events(&a, None, None).await?;
    let mut sse_b = d.events(&b, None, None).await?;

    let prompt_id = start_turn(&d, &a, "slow 100 100").await?;
    sse_a
        .until(LONG, |f| {
            f.data["data"]["update"]["sessionUpdate"] == "agent_message_chunk"
        })
        .await?;
    signal(pid_a, nix::sys::signal::Signal::SIGKILL)?;
    let frames = sse_a.until(LONG, |f| f.event == "session_died").await?;
    let err = frames
        .iter()
        .find(|f| f.event == "turn_error")
        .with_context(|| format!("no turn_error in {:?}", kinds(&frames)))?;
    assert_eq!(err.data["data"]["code"], "agent_exited");
    assert_eq!(err.data["data"]["promptId"], prompt_id.as_str());
    assert!(
        !frames.iter().any(|f| f.event == "turn_complete"),
        "{:?}",
        kinds(&frames)
    );
    let died = &last(&frames).data["data"];
    assert_eq!(died["reason"], "channel_closed", "{died}");
    assert_eq!(died["signalCode"], "SIGKILL", "{died}");
    assert!(died["exitCode"].is_null(), "{died}");

    // The other session, on its own child, is untouched.
    assert!(process_alive(pid_b));
    let frames = run_turn(&d, &b, &mut sse_b, "pid").await?;
    assert_eq!(stop_reason(&frames), "end_turn");
    assert_eq!(pid_reply(&frames)?, pid_b);
    assert!(
        !kinds(&frames).iter().any(|k| k == "session_died"),
        "{:?}",
        kinds(&frames)
    );
    Ok(())
}

// ---- 5. child scopes -------------------------------------------------------------------------

#[tokio::test]
async fn workspace_scope_sessions_share_one_child() -> Result<()> {
    let d = Daemon::start().await?;
    let a = d.create_session().await?;
    let b = d.create_session().await?;
    assert_ne!(a.id, b.id);
    let pid = d.child_pid(&a).await?;
    assert_eq!(d.child_pid(&b).await?, pid);
    let mut sse_a = d.events(&a, None, None).await?;
    let mut sse_b = d.events(&b, None, None).await?;
    assert_eq!(pid_reply(&run_turn(&d, &a, &mut sse_a, "pid").await?)?, pid);
    assert_eq!(pid_reply(&run_turn(&d, &b, &mut sse_b, "pid").await?)?, pid);
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["childrenAlive"], 1, "{}", h.body);
    assert_eq!(children_of(d.pid()), [pid]);
    Ok(())
}

#[tokio::test]
async fn session_scope_isolates_children() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--agent-scope", "session"])
        .start()
        .await?;
    let a = d.create_session().await?;
    let b = d.create_session().await?;
    let (pid_a, pid_b) = (d.child_pid(&a).await?, d.child_pid(&b).await?);
    assert_ne!(pid_a, pid_b);
    let mut sse_a = d.events(&a, None, None).await?;
    let mut sse_b = d.events(&b, None, None).await?;
    assert_eq!(
        pid_reply(&run_turn(&d, &a, &mut sse_a, "pid").await?)?,
        pid_a
    );
    assert_eq!(
        pid_reply(&run_turn(&d, &b, &mut sse_b, "pid").await?)?,
        pid_b
    );
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["childrenAlive"], 2, "{}", h.body);

    // Killing A's idle child reports A's death and nothing to B; B keeps working.
    signal(pid_a, nix::sys::signal::Signal::SIGKILL)?;
    let died = sse_a.until(LONG, |f| f.event == "session_died").await?;
    assert_eq!(last(&died).data["data"]["signalCode"], "SIGKILL");
    let frames = run_turn(&d, &b, &mut sse_b, "hello b").await?;
    assert_eq!(stop_reason(&frames), "end_turn", "{:?}", kinds(&frames));
    assert_eq!(
        agent_text(&frames),
        "Hello from the demo agent. You said: hello b"
    );
    assert!(!kinds(&frames).iter().any(|k| k == "session_died"));
    assert_eq!(d.child_pid(&b).await?, pid_b);

    // A comes back on a fresh child of its own.
    let frames = run_turn(&d, &a, &mut sse_a, "pid").await?;
    let new_a = pid_reply(&frames)?;
    assert!(new_a != pid_a && new_a != pid_b, "{new_a}");
    Ok(())
}

#[tokio::test]
async fn session_scope_warm_pool_serves_the_first_session() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--agent-scope", "session", "--pool", "1"])
        .start()
        .await?;
    // The warm child is spawned and initialised before any session exists.
    let h = health_until(&d, LONG, |h| h["childrenAlive"] == 1).await?;
    assert_eq!(h["sessions"], 0, "{h}");
    let warm = children_of(d.pid());
    assert_eq!(warm.len(), 1, "one pre-spawned child: {warm:?}");
    let warm = warm[0];
    assert!(process_alive(warm));

    let s = d.create_session().await?;
    assert_eq!(
        d.child_pid(&s).await?,
        warm,
        "the session got the warm child"
    );
    // The pool refills in the background.
    let h = health_until(&d, LONG, |h| h["childrenAlive"] == 2).await?;
    assert_eq!(h["sessions"], 1, "{h}");
    let spare = children_of(d.pid())
        .into_iter()
        .find(|p| *p != warm)
        .context("refilled child")?;
    let s2 = d.create_session().await?;
    assert_eq!(d.child_pid(&s2).await?, spare);
    let mut sse = d.events(&s, None, None).await?;
    assert_eq!(pid_reply(&run_turn(&d, &s, &mut sse, "pid").await?)?, warm);
    Ok(())
}

// ---- 6. shutdown and close -------------------------------------------------------------------

#[tokio::test]
async fn sigterm_with_a_turn_in_flight_exits_cleanly_and_stops_the_child() -> Result<()> {
    let mut d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    start_turn(&d, &s, "slow 100 100").await?;
    sse.until(LONG, |f| {
        f.data["data"]["update"]["sessionUpdate"] == "agent_message_chunk"
    })
    .await?;
    let child = d.child_pid(&s).await?;
    assert!(group_alive(child));

    let (frames, status) = tokio::join!(
        sse.until(LONG, |f| f.event == "session_died"),
        d.terminate(Duration::from_secs(20)),
    );
    let status = status?;
    assert!(
        status.success(),
        "exit status {status:?}; log: {:?}",
        d.log()
    );
    let frames = frames?;
    let died = &last(&frames).data["data"];
    assert_eq!(died["reason"], "daemon_shutdown", "{died}");
    assert_eq!(died["sessionId"], s.id.as_str());
    // session_died is the last event: the stream ends after it.
    let rest = sse.until(LONG, |_| false).await;
    assert!(
        rest.as_ref()
            .is_err_and(|e| e.to_string().contains("stream ended")),
        "{rest:?}"
    );
    assert!(
        eventually(LONG, || !group_alive(child)).await,
        "the child's process group outlived the daemon"
    );
    assert!(d.stdout().is_empty());
    Ok(())
}

#[tokio::test]
async fn delete_in_session_scope_stops_the_child() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--agent-scope", "session"])
        .start()
        .await?;
    let s = d.create_session().await?;
    let keep = d.create_session().await?;
    let pid = d.child_pid(&s).await?;
    let keep_pid = d.child_pid(&keep).await?;
    let mut sse = d.events(&s, None, None).await?;
    let r = d.delete(&format!("/session/{}", s.id)).await?;
    assert_eq!(r.status, 204, "{}", r.body);
    let frames = sse.until(LONG, |f| f.event == "session_closed").await?;
    assert_eq!(last(&frames).data["data"]["sessionId"], s.id.as_str());
    assert!(
        eventually(LONG, || !group_alive(pid)).await,
        "the deleted session's child still runs"
    );
    assert!(process_alive(keep_pid));
    let gone = d.get(&format!("/session/{}", s.id)).await?;
    assert_eq!(gone.status, 404);
    let again = d.delete(&format!("/session/{}", s.id)).await?;
    assert_eq!(again.status, 404);
    let mut sse_keep = d.events(&keep, None, None).await?;
    let frames = run_turn(&d, &keep, &mut sse_keep, "pid").await?;
    assert_eq!(pid_reply(&frames)?, keep_pid);
    Ok(())
}

// ---- 7. the child's environment --------------------------------------------------------------

#[tokio::test]
async fn child_env_is_scrubbed_and_cwd_is_the_workspace() -> Result<()> {
    let secret = "s3cret-e2e-token-7f1c";
    let mut d = Daemon::builder()
        .env("ACPD_TOKEN", secret)
        .env("QWEN_SERVER_TOKEN", secret)
        .env("ACPD_E2E_OTHER", "daemon-only")
        .env("E2E_COPY_OF_TOKEN", &format!("Bearer {secret}"))
        .env("E2E_VISIBLE", "plain-value")
        .args(&["--token", secret])
        .start()
        .await?;
    // Without the token nothing works; with it as a default header everything does.
    assert_eq!(d.post("/session", json!({})).await?.status, 401);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {secret}").parse()?,
    );
    d.http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(WAIT)
        .build()?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    for (name, want) in [
        ("ACPD_TOKEN", "env ACPD_TOKEN unset".to_string()),
        ("QWEN_SERVER_TOKEN", "env QWEN_SERVER_TOKEN unset".into()),
        ("ACPD_E2E_OTHER", "env ACPD_E2E_OTHER unset".into()),
        ("E2E_COPY_OF_TOKEN", "env E2E_COPY_OF_TOKEN unset".into()),
        ("E2E_VISIBLE", "env E2E_VISIBLE=plain-value".into()),
    ] {
        let frames = run_turn(&d, &s, &mut sse, &format!("env {name}")).await?;
        assert_eq!(agent_text(&frames), want);
    }
    let frames = run_turn(&d, &s, &mut sse, "pwd").await?;
    assert_eq!(agent_text(&frames), format!("cwd {}", d.ws_path.display()));
    // The child runs in its own process group (its pid is the group id).
    let pid = d.child_pid(&s).await?;
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))?;
    assert_eq!(pgid.as_raw() as u32, pid);
    assert!(
        !d.log().iter().any(|l| l.contains(secret)),
        "token in the log"
    );
    Ok(())
}

#[tokio::test]
async fn custom_agent_command_line() -> Result<()> {
    let bin = acpd_bin().display().to_string();
    let cmd = format!("'{}' demo-agent", bin.replace('\'', r"'\''"));
    let d = Daemon::builder()
        .args(&["--agent", &cmd])
        .env("E2E_CUSTOM", "yes")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let frames = run_turn(&d, &s, &mut sse, "custom hi").await?;
    assert_eq!(stop_reason(&frames), "end_turn", "{:?}", kinds(&frames));
    assert_eq!(
        agent_text(&frames),
        "Hello from the demo agent. You said: custom hi"
    );
    let frames = run_turn(&d, &s, &mut sse, "env E2E_CUSTOM").await?;
    assert_eq!(agent_text(&frames), "env E2E_CUSTOM=yes");
    let status = d.get(&format!("/session/{}", s.id)).await?;
    assert_eq!(
        status.body["child"]["agent"], "acpd-demo-agent",
        "{}",
        status.body
    );

    // A command that does not exist: session creation fails with a JSON error naming it, no
    // hang (tests/tests/agent_faults.rs covers the rest of that case).
    let bad = Daemon::builder()
        .args(&["--agent", "/nonexistent/agent-binary --acp"])
        .start()
        .await?;
    let r = bad
        .post("/session", json!({"sessionScope": "thread"}))
        .await?;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["code"], "agent_spawn_failed", "{}", r.body);
    assert_eq!(r.body["command"], "/nonexistent/agent-binary", "{}", r.body);
    Ok(())
}

// ---- process groups and stale requests ------------------------------------------------------

/// An agent command whose shell leaves a grandchild (`sleep`) in the agent's process group,
/// detached from the ACP pipes, then becomes the demo agent.
fn agent_with_grandchild() -> String {
    let bin = acpd_bin().display().to_string().replace('\'', r"'\''");
    format!("sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & exec \"$0\" demo-agent' '{bin}'")
}

#[tokio::test]
async fn sigterm_stops_the_agents_whole_process_group() -> Result<()> {
    let mut d = Daemon::builder()
        .args(&["--agent", &agent_with_grandchild()])
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let frames = run_turn(&d, &s, &mut sse, "hello").await?;
    assert_eq!(stop_reason(&frames), "end_turn", "{:?}", kinds(&frames));
    let child = d.child_pid(&s).await?;
    assert!(
        eventually(LONG, || group_members(child).len() >= 2).await,
        "the grandchild runs in the agent's group: {:?}",
        group_members(child)
    );
    let status = d.terminate(Duration::from_secs(20)).await?;
    assert!(status.success(), "{status:?}");
    assert!(
        eventually(LONG, || !group_alive(child)).await,
        "left in the agent's group: {:?}",
        group_members(child)
    );
    Ok(())
}

#[tokio::test]
async fn delete_in_session_scope_stops_the_whole_group() -> Result<()> {
    let d = Daemon::builder()
        .args(&[
            "--agent",
            &agent_with_grandchild(),
            "--agent-scope",
            "session",
        ])
        .start()
        .await?;
    let s = d.create_session().await?;
    let child = d.child_pid(&s).await?;
    assert!(eventually(LONG, || group_members(child).len() >= 2).await);
    assert_eq!(d.delete(&format!("/session/{}", s.id)).await?.status, 204);
    assert!(
        eventually(LONG, || !group_alive(child)).await,
        "left in the agent's group: {:?}",
        group_members(child)
    );
    Ok(())
}

#[tokio::test]
async fn crashed_agents_leftover_processes_are_stopped() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--agent", &agent_with_grandchild()])
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let child = d.child_pid(&s).await?;
    assert!(eventually(LONG, || group_members(child).len() >= 2).await);
    start_turn(&d, &s, "crash").await?;
    let frames = sse.until(LONG, |f| f.event == "session_died").await?;
    assert_eq!(last(&frames).data["data"]["exitCode"], 3);
    assert!(
        eventually(LONG, || !group_alive(child)).await,
        "the crashed agent's group lives on: {:?}",
        group_members(child)
    );
    Ok(())
}

#[tokio::test]
async fn pending_permission_is_resolved_when_the_agent_dies() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, _) =
        write_until_permission(&d, &s, &mut sse, "orphan.txt", "x").await?;
    let pid = d.child_pid(&s).await?;
    signal(pid, nix::sys::signal::Signal::SIGKILL)?;
    let frames = sse.until(LONG, |f| f.event == "session_died").await?;
    let err = frames
        .iter()
        .find(|f| f.event == "turn_error")
        .with_context(|| format!("{:?}", kinds(&frames)))?;
    assert_eq!(err.data["data"]["promptId"], prompt_id.as_str());
    let resolved = frames
        .iter()
        .find(|f| f.event == "permission_resolved")
        .with_context(|| {
            format!(
                "the dead agent's request stays pending: {:?}",
                kinds(&frames)
            )
        })?;
    assert_eq!(resolved.data["data"]["requestId"], request_id.as_str());
    assert_eq!(
        resolved.data["data"]["outcome"],
        json!({"outcome": "cancelled"})
    );
    let status = d.get(&format!("/session/{}", s.id)).await?;
    assert_eq!(status.body["pendingPermissions"], 0, "{}", status.body);
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["pendingPermissions"], 0, "{}", h.body);
    let late = vote(&d, &s, &request_id, allow()).await?;
    assert_eq!(late.status, 404, "{}", late.body);
    assert!(!d.ws_path.join("orphan.txt").exists());
    Ok(())
}

#[tokio::test]
async fn crash_of_a_shared_child_restores_every_session_on_one_new_child() -> Result<()> {
    let d = Daemon::start().await?;
    let a = d.create_session().await?;
    let b = d.create_session().await?;
    let old = d.child_pid(&a).await?;
    let mut sse_a = d.events(&a, None, None).await?;
    let mut sse_b = d.events(&b, None, None).await?;
    start_turn(&d, &a, "crash").await?;
    let frames = sse_a.until(LONG, |f| f.event == "session_died").await?;
    assert_eq!(last(&frames).data["data"]["exitCode"], 3);
    // B was idle on the same child: it is told too, without a turn_error.
    let frames = sse_b.until(LONG, |f| f.event == "session_died").await?;
    assert!(!kinds(&frames).iter().any(|k| k == "turn_error"));
    assert_eq!(last(&frames).data["data"]["reason"], "channel_closed");
    assert_eq!(last(&frames).data["data"]["exitCode"], 3);

    let pa = pid_reply(&run_turn(&d, &a, &mut sse_a, "pid").await?)?;
    let pb = pid_reply(&run_turn(&d, &b, &mut sse_b, "pid").await?)?;
    assert_ne!(pa, old);
    assert_eq!(pa, pb, "both sessions restored on the one new shared child");
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["childrenAlive"], 1, "{}", h.body);
    Ok(())
}

#[tokio::test]
async fn fs_dangling_symlink_pointing_outside_is_refused() -> Result<()> {
    let d = Daemon::start().await?;
    let outside = tempfile::tempdir()?;
    let target = outside.path().join("created-through-link.txt");
    // The link's target does not exist yet: writing through it would create it outside.
    std::os::unix::fs::symlink(&target, d.ws_path.join("dangling.txt"))?;
    std::os::unix::fs::symlink(
        outside.path().join("no-dir"),
        d.ws_path.join("dangling-dir"),
    )?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    for rel in ["dangling.txt", "dangling-dir/new.txt"] {
        let (prompt_id, request_id, _) =
            write_until_permission(&d, &s, &mut sse, rel, "pwned").await?;
        assert_eq!(vote(&d, &s, &request_id, allow()).await?.status, 200);
        let frames = turn_end(&mut sse, &prompt_id).await?;
        let text = agent_text(&frames);
        assert!(text.starts_with("Write failed:"), "write {rel}: {text:?}");
    }
    assert!(
        !target.exists(),
        "a file was created outside through a dangling link"
    );
    assert!(!outside.path().join("no-dir").exists());
    let frames = run_turn(&d, &s, &mut sse, "read dangling.txt").await?;
    assert!(agent_text(&frames).starts_with("Read failed:"));
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_warm_pool_children() -> Result<()> {
    let mut d = Daemon::builder()
        .args(&["--agent-scope", "session", "--pool", "1"])
        .start()
        .await?;
    health_until(&d, LONG, |h| h["childrenAlive"] == 1).await?;
    let warm = children_of(d.pid());
    assert_eq!(warm.len(), 1, "{warm:?}");
    let status = d.terminate(Duration::from_secs(20)).await?;
    assert!(status.success(), "{status:?}; log: {:?}", d.log());
    assert!(
        eventually(LONG, || !group_alive(warm[0])).await,
        "the warm child outlived the daemon"
    );
    Ok(())
}

//! The operations of `qwen serve`'s stable contract beyond the core, end to end against the demo
//! agent: status, context, metadata, model and approval-mode switches, resume, transcript
//! pages, export, the legacy vote, the tool catalogue and the workspace file routes (each with
//! its documented errors; the file routes against traversal, symlinks, NUL bytes, windows and
//! .gitignore).

use acpd_tests::*;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

async fn patch_as(d: &Daemon, s: &SessionRef, path: &str, body: Value) -> Result<Resp> {
    d.send(
        d.http
            .patch(d.url(path))
            .header("X-Qwen-Client-Id", &s.client_id)
            .json(&body),
    )
    .await
}

fn code(r: &Resp) -> &str {
    r.body["code"].as_str().unwrap_or("")
}

fn expect(r: &Resp, status: u16, code_: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(code(r), code_, "{what}: {}", r.body);
}

#[tokio::test]
async fn status_context_metadata_tools_and_capabilities() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let base = format!("/session/{}", s.id);

    let caps = d.get("/capabilities").await?.body;
    for tag in [
        "session_resume",
        "session_metadata",
        "session_set_model",
        "session_approval_mode_control",
        "session_status",
        "session_context",
        "session_transcript",
        "session_export",
        "permission_vote",
        "workspace_file_read",
        "workspace_file_bytes",
    ] {
        assert!(
            caps["features"].as_array().unwrap().contains(&json!(tag)),
            "{tag}: {caps}"
        );
    }
    assert!(caps["modelServices"].is_array());

    let st = d.get(&format!("{base}/status")).await?;
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(st.body["sessionId"], s.id);
    assert_eq!(st.body["clientCount"], 1);
    assert_eq!(st.body["hasActivePrompt"], false);
    assert_eq!(st.body["pendingInteractions"], json!([]));
    assert_eq!(st.body["hasTurnError"], false);
    assert!(st.body["createdAt"].is_string() && st.body["workspaceCwd"].is_string());
    expect(
        &d.get("/session/nope/status").await?,
        404,
        "session_not_found",
        "status of nothing",
    );

    let cx = d.get(&format!("{base}/context")).await?;
    assert_eq!(cx.status, 200, "{}", cx.body);
    assert_eq!(cx.body["v"], 1);
    assert_eq!(cx.body["state"]["modes"]["currentModeId"], "default");
    assert_eq!(
        cx.body["state"]["modes"]["availableModes"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(cx.body["state"]["configOptions"][0]["id"], "model");
    assert_eq!(
        cx.body["state"]["configOptions"][0]["currentValue"],
        "demo-fast"
    );
    expect(
        &d.get("/session/nope/context").await?,
        404,
        "session_not_found",
        "context of nothing",
    );

    // Metadata: every documented refusal, then an update seen on SSE and in the status.
    let m = format!("{base}/metadata");
    for (body, c) in [
        (json!({"displayName": "   "}), "invalid_metadata"),
        (
            json!({"pr": {"number": 1, "url": "ftp://x"}}),
            "invalid_metadata",
        ),
        (
            json!({"pr": {"number": 0, "url": "https://x"}}),
            "invalid_metadata",
        ),
        (
            json!({"pr": {"number": 1, "url": format!("https://{}", "x".repeat(2050))}}),
            "invalid_metadata",
        ),
        (
            json!({"pr": {"number": 1, "url": "https://x", "state": "weird"}}),
            "invalid_metadata",
        ),
        (json!({"displayName": "a", "extra": 1}), "invalid_request"),
        (json!({"pr": {"url": "https://x"}}), "invalid_request"),
    ] {
        expect(
            &patch_as(&d, &s, &m, body.clone()).await?,
            400,
            c,
            &body.to_string(),
        );
    }
    let other = SessionRef {
        id: s.id.clone(),
        client_id: "client_not-issued".into(),
    };
    expect(
        &patch_as(&d, &other, &m, json!({"displayName": "x"})).await?,
        400,
        "invalid_client_id",
        "foreign client",
    );
    expect(
        &patch_as(
            &d,
            &s,
            "/session/nope/metadata",
            json!({"displayName": "x"}),
        )
        .await?,
        404,
        "session_not_found",
        "metadata of nothing",
    );
    let mut sse = d.events(&s, None, None).await?;
    let long = "é".repeat(300);
    let r = patch_as(
        &d,
        &s,
        &m,
        json!({"displayName": long, "pr": {"number": 7, "url": "https://git.test/pr/7", "state": "open"}}),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["displayName"].as_str().unwrap().chars().count(), 256);
    assert_eq!(r.body["prs"][0]["number"], 7);
    let frames = sse
        .until(LONG, |f| f.event == "session_metadata_updated")
        .await?;
    let ev = &frames.last().unwrap().data["data"];
    assert_eq!(ev["titleSource"], "manual");
    assert_eq!(ev["prs"][0]["url"], "https://git.test/pr/7");
    let r = patch_as(
        &d,
        &s,
        &m,
        json!({"pr": {"number": 7, "url": "https://git.test/pr/7", "state": "merged"}}),
    )
    .await?;
    assert_eq!(r.body["prs"].as_array().unwrap().len(), 1, "{}", r.body);
    let st = d.get(&format!("{base}/status")).await?.body;
    assert_eq!(st["titleSource"], "manual");
    assert_eq!(st["prs"][0]["state"], "merged");

    // The tool catalogue: truthful and within the schema.
    let t = d.get("/workspace/tools").await?;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["v"], 1);
    assert_eq!(t.body["initialized"], true);
    assert_eq!(t.body["acpChannelLive"], true);
    assert_eq!(t.body["tools"], json!([]));
    assert_eq!(t.body["errors"][0]["status"], "unknown");
    Ok(())
}

#[tokio::test]
async fn pending_interactions_the_legacy_vote_and_turn_errors() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let base = format!("/session/{}", s.id);
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, "write notes.txt from the legacy vote").await?;
    let pid = r.body["promptId"].as_str().context("promptId")?.to_string();
    let frames = sse.until(LONG, |f| f.event == "permission_request").await?;
    let req = frames.last().unwrap().data["data"]["requestId"]
        .as_str()
        .context("requestId")?
        .to_string();

    let st = d.get(&format!("{base}/status")).await?.body;
    assert_eq!(st["hasActivePrompt"], true, "{st}");
    assert_eq!(st["activeWorkState"], "active");
    assert_eq!(st["isWaitingForPermission"], true);
    assert_eq!(st["pendingInteractionCount"], 1);
    let pi = &st["pendingInteractions"][0];
    assert_eq!(pi["requestId"], req);
    assert_eq!(pi["kind"], "permission");
    assert!(pi["createdAt"].is_string());
    assert!(
        pi["options"].as_array().is_some_and(|o| !o.is_empty()),
        "{pi}"
    );
    assert_eq!(pi["action"]["type"], "tool_call");

    let vote = |id: &str| format!("/permission/{id}");
    expect(
        &d.post(&vote(&req), json!({"outcome": {"outcome": "maybe"}}))
            .await?,
        400,
        "invalid_request",
        "bad outcome",
    );
    expect(
        &d.post(&vote(&req), json!({})).await?,
        400,
        "invalid_request",
        "no outcome",
    );
    expect(
        &d.post(
            &vote(&req),
            json!({"outcome": {"outcome": "selected", "optionId": "nope"}}),
        )
        .await?,
        400,
        "invalid_option_id",
        "unknown option",
    );
    expect(
        &d.post(&vote("nope"), json!({"outcome": {"outcome": "cancelled"}}))
            .await?,
        404,
        "permission_not_pending",
        "unknown request",
    );
    let r = d
        .send(
            d.http
                .post(d.url(&vote(&req)))
                .header("X-Qwen-Client-Id", "bad id!")
                .json(&json!({"outcome": {"outcome": "cancelled"}})),
        )
        .await?;
    expect(&r, 400, "invalid_client_id", "malformed client id");
    let r = d
        .send(
            d.http
                .post(d.url(&vote(&req)))
                .header("X-Qwen-Client-Id", &s.client_id)
                .json(&json!({"outcome": {"outcome": "selected", "optionId": "allow"}, "answers": {}})),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({}));
    let frames = sse.until_turn_end(&pid).await?;
    let resolved = frames
        .iter()
        .find(|f| f.event == "permission_resolved")
        .context("permission_resolved")?;
    assert_eq!(resolved.data["data"]["voterClientId"], s.client_id);
    expect(
        &d.post(&vote(&req), json!({"outcome": {"outcome": "cancelled"}}))
            .await?,
        404,
        "permission_not_pending",
        "second vote",
    );
    assert!(d.ws_path.join("notes.txt").exists());
    let st = d.get(&format!("{base}/status")).await?.body;
    assert_eq!(st["pendingInteractions"], json!([]));
    assert_eq!(st["isWaitingForPermission"], false);

    // A failed turn shows in the status until a turn ends well.
    let frames = d.turn(&s, &mut sse, "crash").await?.1;
    assert_eq!(frames.last().unwrap().event, "turn_error");
    let st = d.get(&format!("{base}/status")).await?.body;
    assert_eq!(st["hasTurnError"], true, "{st}");
    assert!(st["turnError"]["message"].is_string());
    assert!(st["turnError"]["code"].is_string());
    let frames = d.turn(&s, &mut sse, "hello again").await?.1;
    assert_eq!(frames.last().unwrap().event, "turn_complete");
    let st = d.get(&format!("{base}/status")).await?.body;
    assert_eq!(st["hasTurnError"], false, "{st}");
    Ok(())
}

#[tokio::test]
async fn model_and_approval_mode_switch_through_the_agent() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let base = format!("/session/{}", s.id);
    let mut sse = d.events(&s, None, None).await?;
    let model = format!("{base}/model");
    expect(
        &d.post_as(&s, &model, json!({})).await?,
        400,
        "invalid_request",
        "no modelId",
    );
    expect(
        &d.post_as(&s, &model, json!({"modelId": ""})).await?,
        400,
        "invalid_request",
        "empty modelId",
    );
    expect(
        &d.post_as(&s, &model, json!({"modelId": "x", "more": 1}))
            .await?,
        400,
        "invalid_request",
        "unknown key",
    );
    let r = d
        .post_as(&s, &model, json!({"modelId": "gpt-nope"}))
        .await?;
    expect(&r, 404, "model_not_found", "unknown model");
    assert!(
        r.body["availableModels"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("demo-smart")))
    );
    expect(
        &d.post_as(&s, "/session/nope/model", json!({"modelId": "demo-smart"}))
            .await?,
        404,
        "session_not_found",
        "model of nothing",
    );

    let r = d
        .post_as(&s, &model, json!({"modelId": "demo-smart"}))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.is_object());
    let frames = sse.until(LONG, |f| f.event == "model_switched").await?;
    let ev = &frames.last().unwrap().data;
    assert_eq!(ev["data"]["modelId"], "demo-smart");
    assert_eq!(ev["data"]["previousModelId"], "demo-fast");
    assert_eq!(ev["originatorClientId"], s.client_id);
    let cx = d.get(&format!("{base}/context")).await?.body;
    assert_eq!(
        cx["state"]["configOptions"][0]["currentValue"],
        "demo-smart"
    );

    // The agent refuses: 502 and model_switch_failed; the model is unchanged.
    let r = d
        .post_as(&s, &model, json!({"modelId": "demo-broken"}))
        .await?;
    expect(&r, 502, "agent_error", "refused switch");
    let frames = sse
        .until(LONG, |f| f.event == "model_switch_failed")
        .await?;
    let ev = &frames.last().unwrap().data["data"];
    assert_eq!(ev["requestedModelId"], "demo-broken");
    assert!(ev["error"].is_string());
    let cx = d.get(&format!("{base}/context")).await?.body;
    assert_eq!(
        cx["state"]["configOptions"][0]["currentValue"],
        "demo-smart"
    );

    // Approval modes through session/set_mode.
    let mode = format!("{base}/approval-mode");
    let r = d.post_as(&s, &mode, json!({"mode": "bogus"})).await?;
    expect(&r, 400, "invalid_approval_mode", "unknown mode");
    assert_eq!(r.body["availableModes"].as_array().map(Vec::len), Some(4));
    expect(
        &d.post_as(&s, &mode, json!({})).await?,
        400,
        "invalid_request",
        "no mode",
    );
    let r = d
        .post_as(&s, &mode, json!({"mode": "plan", "persist": true}))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"sessionId": s.id, "mode": "plan", "previous": "default", "persisted": false})
    );
    let frames = sse
        .until(LONG, |f| f.event == "approval_mode_changed")
        .await?;
    let ev = &frames.last().unwrap().data["data"];
    assert_eq!(
        (ev["previous"].as_str(), ev["next"].as_str()),
        (Some("default"), Some("plan"))
    );
    let cx = d.get(&format!("{base}/context")).await?.body;
    assert_eq!(cx["state"]["modes"]["currentModeId"], "plan");

    // The agent switches itself: its current_mode_update keeps the context current.
    let frames = d.turn(&s, &mut sse, "mode yolo").await?.1;
    assert_eq!(frames.last().unwrap().event, "turn_complete");
    let cx = d.get(&format!("{base}/context")).await?.body;
    assert_eq!(cx["state"]["modes"]["currentModeId"], "yolo");
    Ok(())
}

#[tokio::test]
async fn an_agent_without_models_or_modes_cannot_switch() -> Result<()> {
    let d = Daemon::builder()
        .config("[agent.env]\nACPD_DEMO_PLAIN = \"1\"\n")
        .start()
        .await?;
    let s = d.create_session().await?;
    let base = format!("/session/{}", s.id);
    let cx = d.get(&format!("{base}/context")).await?.body;
    assert_eq!(cx["state"], json!({}), "{cx}");
    expect(
        &d.post_as(&s, &format!("{base}/model"), json!({"modelId": "any"}))
            .await?,
        409,
        "model_switch_unsupported",
        "no models",
    );
    expect(
        &d.post_as(
            &s,
            &format!("{base}/approval-mode"),
            json!({"mode": "plan"}),
        )
        .await?,
        409,
        "approval_mode_unsupported",
        "no modes",
    );
    let r = d
        .post(&format!("{base}/resume"), json!({"approvalMode": "plan"}))
        .await?;
    expect(&r, 409, "approval_mode_unsupported", "resume with a mode");
    Ok(())
}

#[tokio::test]
async fn resume_restores_without_replay() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    d.turn(&s, &mut sse, "before the resume").await?;

    // A live session: attached, its state and stream position.
    let r = d
        .post_as(&s, &format!("/session/{}/resume", s.id), json!({}))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["attached"], true);
    assert_eq!(r.body["clientId"], s.client_id);
    assert!(r.body["lastEventId"].as_u64().unwrap() > 0);
    assert!(r.body["eventEpoch"].is_string());
    assert_eq!(r.body["state"]["modes"]["currentModeId"], "default");

    // The child died: resume restores it on a new one, without replaying history.
    let frames = d.turn(&s, &mut sse, "crash").await?.1;
    assert_eq!(frames.last().unwrap().event, "turn_error");
    sse.until(LONG, |f| f.event == "session_died").await?;
    let before = d.get(&format!("/session/{}", s.id)).await?.body["lastEventId"].clone();
    let r = d
        .post(
            &format!("/session/{}/resume", s.id),
            json!({"approvalMode": "auto-edit", "sourceType": "cli", "sourceId": "t1"}),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"]["modes"]["currentModeId"], "auto-edit");
    assert_eq!(r.body["sourceType"], "cli");
    let st = d.get(&format!("/session/{}", s.id)).await?.body;
    assert_eq!(st["child"]["state"], "alive", "{st}");
    let frames = sse
        .until(LONG, |f| f.event == "approval_mode_changed")
        .await?;
    // Nothing but the switch was published: no history.
    assert_eq!(kinds(&frames), vec!["approval_mode_changed"], "{before}");

    // A session the daemon does not hold: restored from the agent (session/load).
    let r = d
        .post("/session/resumed-elsewhere/resume", json!({}))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sessionId"], "resumed-elsewhere");
    assert_eq!(r.body["lastEventId"], 0);
    assert!(r.body["state"]["configOptions"].is_array());
    // Load answers the same state (the contract's RestoredSession).
    let r = d.post("/session/resumed-elsewhere/load", json!({})).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"]["modes"]["currentModeId"], "default");
    assert!(r.body["eventEpoch"].is_string());

    for (path, body, status, c) in [
        (
            format!("/session/{}/resume", s.id),
            json!({"bogus": 1}),
            400,
            "invalid_request",
        ),
        (
            "/session/bad%20id/resume".to_string(),
            json!({}),
            400,
            "invalid_session_id",
        ),
        (
            format!("/session/{}/resume", s.id),
            json!({"cwd": "/"}),
            400,
            "workspace_mismatch",
        ),
        (
            format!("/session/{}/resume", s.id),
            json!({"approvalMode": "nope"}),
            400,
            "invalid_approval_mode",
        ),
    ] {
        expect(
            &d.post(&path, body.clone()).await?,
            status,
            c,
            &format!("{path} {body}"),
        );
    }
    let r = d
        .send(
            d.http
                .post(d.url(&format!("/session/{}/resume", s.id)))
                .header("Content-Type", "application/json")
                .body(""),
        )
        .await?;
    assert_eq!(r.status, 200, "an empty body is {{}}: {}", r.body);
    Ok(())
}

#[tokio::test]
async fn transcript_pages_and_exports() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    d.turn(&s, &mut sse, "hello <b>world</b> & co").await?;
    d.turn(&s, &mut sse, "second turn").await?;
    let t = format!("/session/{}/transcript", s.id);

    let all = d.get(&format!("{t}?limit=500")).await?;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.body["v"], 1);
    assert_eq!(all.body["hasMore"], false);
    assert!(all.body.get("partial").is_none());
    let events = all.body["events"].as_array().unwrap().clone();
    assert!(events.len() >= 8, "{}", events.len());
    for e in &events {
        assert!(e.get("id").is_none(), "id-less: {e}");
        assert!(e["_meta"]["recordId"].is_string(), "{e}");
        assert_ne!(e["type"], "pending_prompt_added");
    }
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["_meta"]["recordId"].as_str().unwrap().to_string())
        .collect();

    // Forward in pages of 3, following nextCursor.
    let mut paged = Vec::new();
    let mut url = format!("{t}?limit=3");
    for _ in 0..100 {
        let p = d.get(&url).await?;
        assert_eq!(p.status, 200, "{}", p.body);
        paged.extend(p.body["events"].as_array().unwrap().iter().cloned());
        if p.body["hasMore"] == false {
            break;
        }
        url = format!("{t}?cursor={}", p.body["nextCursor"].as_str().unwrap());
    }
    assert_eq!(paged, events);

    // Backward from the newest.
    let mut back = Vec::new();
    let mut url = format!("{t}?direction=backward&limit=4");
    for _ in 0..100 {
        let p = d.get(&url).await?;
        assert_eq!(p.status, 200, "{}", p.body);
        let mut page = p.body["events"].as_array().unwrap().clone();
        page.extend(back);
        back = page;
        if p.body["hasMore"] == false {
            assert_eq!(p.body["hasOlder"], false);
            break;
        }
        url = format!("{t}?cursor={}", p.body["nextCursor"].as_str().unwrap());
    }
    assert_eq!(back, events);

    // Anchors.
    let epoch = d.get(&format!("/session/{}", s.id)).await?.body["eventEpoch"]
        .as_str()
        .unwrap()
        .to_string();
    let mid = &ids[ids.len() / 2];
    let p = d
        .get(&format!("{t}?atRecordId={mid}&snapshot={epoch}&limit=2"))
        .await?;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["targetRecordId"], mid.as_str());
    assert_eq!(p.body["events"][0]["_meta"]["recordId"], mid.as_str());
    let p = d
        .get(&format!("{t}?beforeRecordId={mid}&limit=500"))
        .await?;
    assert_eq!(
        p.body["events"].as_array().unwrap().len(),
        ids.len() / 2,
        "{}",
        p.body
    );

    for (q, status, c) in [
        ("limit=0", 400, "invalid_transcript_limit"),
        ("limit=501", 400, "invalid_transcript_limit"),
        ("limit=ten", 400, "invalid_transcript_limit"),
        ("direction=forward", 400, "invalid_transcript_direction"),
        (
            "cursor=x&direction=backward",
            400,
            "invalid_transcript_query",
        ),
        ("atRecordId=1", 400, "invalid_transcript_query"),
        ("snapshot=x", 400, "invalid_transcript_query"),
        (
            "beforeRecordId=1&atRecordId=1&snapshot=x",
            400,
            "invalid_transcript_query",
        ),
        (
            "direction=backward&beforeRecordId=3",
            400,
            "invalid_transcript_query",
        ),
        ("cursor=garbage", 400, "invalid_transcript_cursor"),
        ("cursor=v1:other-epoch:f:1", 409, "transcript_cursor_stale"),
        ("beforeRecordId=abc", 400, "invalid_record_id"),
        (
            "atRecordId=1&snapshot=stale",
            409,
            "transcript_snapshot_changed",
        ),
    ] {
        expect(&d.get(&format!("{t}?{q}")).await?, status, c, q);
    }
    expect(
        &d.get(&format!("{t}?atRecordId=99999&snapshot={epoch}"))
            .await?,
        404,
        "transcript_record_not_found",
        "unknown record",
    );
    expect(
        &d.get("/session/nope/transcript").await?,
        404,
        "session_not_found",
        "transcript of nothing",
    );

    // Exports.
    let e = format!("/session/{}/export", s.id);
    let raw = |q: &str| {
        let url = d.url(&format!("{e}{q}"));
        let http = d.http.clone();
        async move {
            let r = http.get(url).send().await?;
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let text = r.text().await?;
            anyhow::Ok((status, headers, text))
        }
    };
    let (status, h, html) = raw("").await?;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let disposition = h["content-disposition"].to_str()?;
    assert!(
        disposition.starts_with("attachment; filename=\"acpd-session-")
            && disposition.ends_with(".html\""),
        "{disposition}"
    );
    assert!(
        html.contains("hello &lt;b&gt;world&lt;/b&gt; &amp; co"),
        "{html}"
    );
    assert!(!html.contains("<b>world"), "escaped");
    assert!(html.contains("<h2>User</h2>") && html.contains("<h2>Assistant</h2>"));
    assert!(html.contains("Hello from the demo agent"), "{html}");
    let (_, h, md) = raw("?format=md").await?;
    assert_eq!(h["content-type"], "text/markdown; charset=utf-8");
    assert!(md.contains("## User\n\nhello <b>world</b> & co"), "{md}");
    assert!(md.contains("> Turn ended: end_turn"), "{md}");
    let (_, h, js) = raw("?format=json").await?;
    assert_eq!(h["content-type"], "application/json");
    let doc: Value = serde_json::from_str(&js)?;
    assert_eq!(doc["events"].as_array().unwrap().len(), events.len());
    let (_, h, jl) = raw("?format=jsonl").await?;
    assert_eq!(h["content-type"], "application/jsonl");
    assert!(h["content-disposition"].to_str()?.ends_with(".jsonl\""));
    let lines: Vec<Value> = jl
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), events.len());
    expect(
        &d.get(&format!("{e}?format=pdf")).await?,
        400,
        "invalid_export_format",
        "pdf",
    );
    expect(
        &d.get("/session/nope/export").await?,
        404,
        "session_not_found",
        "export of nothing",
    );
    Ok(())
}

#[tokio::test]
async fn a_transcript_past_the_ring_is_partial() -> Result<()> {
    // Without the journal: with it, the transcript reads every event (tests/tests/journal.rs).
    let d = Daemon::builder()
        .config("[limits]\nevent_ring = 12\n[state]\njournal = false\n")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    for i in 0..3 {
        d.turn(&s, &mut sse, &format!("turn {i}")).await?;
    }
    let p = d
        .get(&format!("/session/{}/transcript?direction=backward", s.id))
        .await?;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["partial"], true, "{}", p.body);
    assert_eq!(p.body["hasOlder"], true);
    assert!(p.body["replayError"].is_string());
    let (_, md) = {
        let r = d
            .http
            .get(d.url(&format!("/session/{}/export?format=md", s.id)))
            .send()
            .await?;
        (r.status(), r.text().await?)
    };
    assert!(md.contains("Partial"), "{md}");
    Ok(())
}

// ---- files ------------------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn q(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn workspace_files_are_confined_bounded_and_gitignore_aware() -> Result<()> {
    let d = Daemon::builder()
        .file("a.txt", "line1\nline2\nline3\n")
        .file("crlf.txt", "a\r\nb\r\n")
        .file("bom.txt", "\u{feff}x")
        .file("bin.dat", "PK\u{0}\u{1}\u{2}binary")
        .file(".gitignore", "ignored/\n*.log\n")
        .file("ignored/x.txt", "hidden")
        .file("app.log", "log")
        .file("src/main.rs", "fn main() {}\n")
        .file("src/lib.rs", "")
        .file("src/.gitignore", "!keep.log\n")
        .file("src/keep.log", "kept")
        .start()
        .await?;
    let ws = d.ws_path.clone();
    let outside = tempfile::tempdir()?;
    std::fs::write(outside.path().join("secret.txt"), "secret")?;
    std::os::unix::fs::symlink(outside.path(), ws.join("out_dir"))?;
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), ws.join("out_file"))?;
    std::os::unix::fs::symlink(ws.join("a.txt"), ws.join("in_link"))?;
    std::os::unix::fs::symlink(ws.join("nowhere"), ws.join("dangling"))?;
    let get = |path: String| {
        let url = d.url(&path);
        let http = d.http.clone();
        async move {
            let r = http.get(url).send().await?;
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let bytes = r.bytes().await?;
            anyhow::Ok(Resp {
                status,
                headers,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            })
        }
    };

    // /file
    let r = get("/file?path=a.txt".into()).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["kind"], "file");
    assert_eq!(r.body["path"], "a.txt");
    assert_eq!(r.body["content"], "line1\nline2\nline3\n");
    assert_eq!(r.body["lineEnding"], "lf");
    assert_eq!(r.body["encoding"], "utf-8");
    assert_eq!(r.body["bom"], false);
    assert_eq!(r.body["originalLineCount"], 3);
    assert_eq!(r.body["sizeBytes"], 18);
    assert_eq!(r.body["truncated"], false);
    assert_eq!(r.body["hasMore"], false);
    assert_eq!(r.body["matchedIgnore"], Value::Null);
    let hash = r.body["hash"].as_str().unwrap().to_string();
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");
    let abs = get(format!(
        "/file?path={}",
        q(&ws.join("a.txt").display().to_string())
    ))
    .await?;
    assert_eq!(abs.body["content"], r.body["content"], "absolute inside");
    let r = get("/file?path=a.txt&line=2&limit=1".into()).await?;
    assert_eq!(r.body["content"], "line2\n");
    assert_eq!(r.body["hasMore"], true);
    let cursor = r.body["nextCursor"].as_str().unwrap().to_string();
    let r = get(format!("/file?path=a.txt&cursor={}", q(&cursor))).await?;
    assert_eq!(r.body["content"], "line3\n", "{}", r.body);
    // A byte window: the cursor chain gives the whole file back.
    let mut text = String::new();
    let mut url = "/file?path=a.txt&maxBytes=4".to_string();
    for _ in 0..20 {
        let r = get(url.clone()).await?;
        assert!(r.body["returnedBytes"].as_u64().unwrap() <= 4);
        text.push_str(r.body["content"].as_str().unwrap());
        match r.body["nextCursor"].as_str() {
            Some(c) => url = format!("/file?path=a.txt&maxBytes=4&cursor={}", q(c)),
            None => break,
        }
    }
    assert_eq!(text, "line1\nline2\nline3\n");
    assert_eq!(
        get("/file?path=crlf.txt".into()).await?.body["lineEnding"],
        "crlf"
    );
    let r = get("/file?path=bom.txt".into()).await?;
    assert_eq!(
        (r.body["bom"].clone(), r.body["content"].clone()),
        (json!(true), json!("x"))
    );
    assert_eq!(
        get("/file?path=in_link".into()).await?.body["content"],
        "line1\nline2\nline3\n"
    );
    assert_eq!(
        get("/file?path=app.log".into()).await?.body["matchedIgnore"],
        "file"
    );
    assert_eq!(
        get("/file?path=ignored/x.txt".into()).await?.body["matchedIgnore"],
        "directory"
    );
    assert_eq!(
        get("/file?path=src/keep.log".into()).await?.body["matchedIgnore"],
        Value::Null
    );
    let r = get("/file?path=bin.dat".into()).await?;
    expect(&r, 422, "binary_file", "binary");
    assert_eq!(r.body["errorKind"], "binary_file");
    for (path, status, c) in [
        ("../etc/passwd".to_string(), 403, "path_outside_workspace"),
        ("src/../../x".to_string(), 403, "path_outside_workspace"),
        ("/etc/passwd".to_string(), 403, "path_outside_workspace"),
        ("out_file".to_string(), 403, "path_outside_workspace"),
        (
            "out_dir/secret.txt".to_string(),
            403,
            "path_outside_workspace",
        ),
        ("dangling".to_string(), 403, "path_outside_workspace"),
        ("a%00.txt".to_string(), 400, "invalid_path"),
        ("".to_string(), 400, "invalid_path"),
        ("missing.txt".to_string(), 404, "path_not_found"),
        ("src".to_string(), 400, "not_a_file"),
    ] {
        let url = if path.contains('%') {
            format!("/file?path={path}")
        } else {
            format!("/file?path={}", q(&path))
        };
        expect(&get(url).await?, status, c, &path);
    }
    let r = get("/file?path=missing.txt".into()).await?;
    assert_eq!(r.body["errorKind"], "missing_file");
    for query in [
        "",
        "path=a.txt&maxBytes=0",
        "path=a.txt&maxBytes=262145",
        "path=a.txt&maxBytes=99999999999999999999999",
        "path=a.txt&limit=2001",
        "path=a.txt&line=0",
        "path=a.txt&line=2&cursor=x",
    ] {
        expect(
            &get(format!("/file?{query}")).await?,
            400,
            "invalid_request",
            query,
        );
    }
    expect(
        &get("/file?path=a.txt&cursor=garbage".into()).await?,
        400,
        "invalid_cursor",
        "garbage cursor",
    );
    std::fs::write(ws.join("a.txt"), "changed\n")?;
    expect(
        &get(format!("/file?path=a.txt&cursor={}", q(&cursor))).await?,
        409,
        "file_changed",
        "stale cursor",
    );
    std::fs::write(ws.join("huge.txt"), vec![b'x'; 17 * 1024 * 1024])?;
    expect(
        &get("/file?path=huge.txt".into()).await?,
        413,
        "file_too_large",
        "huge",
    );

    // /file/bytes
    let r = get("/file/bytes?path=bin.dat".into()).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let raw = std::fs::read(ws.join("bin.dat"))?;
    assert_eq!(r.body["contentBase64"], b64(&raw));
    assert_eq!(r.body["sizeBytes"], raw.len());
    assert_eq!(r.body["truncated"], false);
    let r = get("/file/bytes?path=bin.dat&offset=2&maxBytes=3".into()).await?;
    assert_eq!(r.body["contentBase64"], b64(&raw[2..5]));
    assert_eq!(r.body["truncated"], true);
    let r = get("/file/bytes?path=bin.dat&offset=1000".into()).await?;
    assert_eq!(r.body["returnedBytes"], 0);
    let r = get("/file/bytes?path=huge.txt&offset=100&maxBytes=262144".into()).await?;
    assert_eq!(r.body["returnedBytes"], 262_144);
    expect(
        &get("/file/bytes?path=bin.dat&maxBytes=262145".into()).await?,
        400,
        "invalid_request",
        "huge window",
    );
    expect(
        &get("/file/bytes?path=bin.dat&offset=-1".into()).await?,
        400,
        "invalid_request",
        "negative offset",
    );
    expect(
        &get("/file/bytes?path=out_file".into()).await?,
        403,
        "path_outside_workspace",
        "bytes outside",
    );
    expect(
        &get("/file/bytes?path=nope".into()).await?,
        404,
        "path_not_found",
        "bytes missing",
    );

    // /stat
    let r = get("/stat?path=src/main.rs".into()).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["kind"].as_str(), r.body["type"].as_str()),
        (Some("stat"), Some("file"))
    );
    assert_eq!(r.body["sizeBytes"], 13);
    assert!(r.body["modifiedMs"].as_u64().unwrap() > 0);
    assert_eq!(
        get("/stat?path=src".into()).await?.body["type"],
        "directory"
    );
    let r = get("/stat?path=in_link".into()).await?;
    assert_eq!(
        (r.body["type"].as_str(), r.body["path"].as_str()),
        (Some("symlink"), Some("in_link"))
    );
    expect(
        &get("/stat?path=out_dir".into()).await?,
        403,
        "path_outside_workspace",
        "stat outside",
    );
    expect(
        &get("/stat?path=..".into()).await?,
        403,
        "path_outside_workspace",
        "stat ..",
    );
    expect(
        &get("/stat?path=nope".into()).await?,
        404,
        "path_not_found",
        "stat missing",
    );
    expect(
        &get("/stat".into()).await?,
        400,
        "invalid_request",
        "stat without path",
    );

    // /list
    let r = get("/list?path=.".into()).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<&str> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"a.txt") && names.contains(&"src") && names.contains(&".gitignore"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"ignored") && !names.contains(&"app.log"),
        "{names:?}"
    );
    assert_eq!(r.body["matchedIgnore"], Value::Null);
    let link = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "out_dir")
        .unwrap();
    assert_eq!(link["kind"], "symlink");
    let r = get("/list?path=.&includeIgnored=1".into()).await?;
    let ignored = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ignored")
        .unwrap();
    assert_eq!(
        (ignored["kind"].as_str(), ignored["ignored"].as_bool()),
        (Some("directory"), Some(true))
    );
    let r = get("/list?path=src&includeIgnored=true".into()).await?;
    assert_eq!(r.body["path"], "src");
    expect(
        &get("/list?path=.&includeIgnored=maybe".into()).await?,
        400,
        "invalid_request",
        "flag",
    );
    expect(
        &get("/list?path=a.txt".into()).await?,
        400,
        "not_a_directory",
        "list a file",
    );
    expect(
        &get("/list?path=..".into()).await?,
        403,
        "path_outside_workspace",
        "list ..",
    );
    expect(
        &get("/list?path=out_dir".into()).await?,
        403,
        "path_outside_workspace",
        "list a link out",
    );

    // /glob
    let matches = |r: &Resp| -> Vec<String> {
        r.body["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    };
    let r = get(format!("/glob?pattern={}", q("**/*.rs"))).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(matches(&r), ["src/lib.rs", "src/main.rs"]);
    assert_eq!(
        (r.body["count"].as_u64(), r.body["truncated"].as_bool()),
        (Some(2), Some(false))
    );
    assert_eq!(r.body["cwd"], ".");
    assert!(r.body["durationMs"].is_u64());
    let r = get(format!("/glob?pattern={}", q("**/*.txt"))).await?;
    assert!(
        !matches(&r).contains(&"ignored/x.txt".to_string()),
        "{:?}",
        matches(&r)
    );
    assert!(
        !matches(&r).iter().any(|m| m.contains("secret")),
        "links are not followed"
    );
    let r = get(format!("/glob?pattern={}", q("*.log"))).await?;
    assert_eq!(matches(&r), Vec::<String>::new());
    let r = get(format!("/glob?pattern={}&includeIgnored=1", q("**/*.log"))).await?;
    assert_eq!(matches(&r), ["app.log", "src/keep.log"]);
    let r = get(format!("/glob?pattern={}", q("**/*.log"))).await?;
    assert_eq!(
        matches(&r),
        ["src/keep.log"],
        "a nested negation re-includes"
    );
    let r = get(format!("/glob?pattern={}&cwd=src", q("*.rs"))).await?;
    assert_eq!(matches(&r), ["src/lib.rs", "src/main.rs"]);
    let r = get(format!("/glob?pattern={}&maxResults=1", q("**/*"))).await?;
    assert_eq!(
        (r.body["count"].as_u64(), r.body["truncated"].as_bool()),
        (Some(1), Some(true))
    );
    expect(
        &get("/glob?pattern=*&cwd=nope".into()).await?,
        404,
        "path_not_found",
        "glob cwd missing",
    );
    expect(
        &get("/glob?pattern=*&cwd=..".into()).await?,
        403,
        "path_outside_workspace",
        "glob cwd ..",
    );
    expect(
        &get("/glob?pattern=*&cwd=out_dir".into()).await?,
        403,
        "path_outside_workspace",
        "glob cwd link",
    );
    expect(
        &get("/glob?pattern=*&maxResults=0".into()).await?,
        400,
        "invalid_request",
        "maxResults 0",
    );
    expect(
        &get("/glob?pattern=*&maxResults=50001".into()).await?,
        400,
        "invalid_request",
        "maxResults big",
    );
    expect(
        &get("/glob".into()).await?,
        400,
        "invalid_request",
        "no pattern",
    );
    expect(
        &get(format!("/glob?pattern={}", q("a[b"))).await?,
        400,
        "invalid_glob",
        "bad glob",
    );
    expect(
        &get("/glob?pattern=a%00".into()).await?,
        400,
        "invalid_glob",
        "NUL glob",
    );
    Ok(())
}

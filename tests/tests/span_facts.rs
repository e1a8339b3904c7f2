//! What an operator filters and groups by in a tracing backend, read from the spans the real
//! daemon exports to an in-test OTLP receiver: every request on a session carries that
//! session's facts, cancel and vote spans say what they acted on and decided, the daemon's tool
//! span is not a second tool execution next to the agent's, and a permission wait hangs under
//! the tool call that waits.

use acpd_tests::otlp::{Protocol, Receiver, RecvSpan};
use acpd_tests::*;
use serde_json::{Value, json};

async fn daemon_exporting_to(rx: &Receiver) -> anyhow::Result<Daemon> {
    Daemon::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .file("hello.txt", "hello from the workspace")
        .start()
        .await
}

/// The SERVER span of `name` (`METHOD /route`) whose `session.id` is `session`, if any.
fn server_span<'a>(spans: &'a [RecvSpan], name: &str, session: &str) -> Option<&'a RecvSpan> {
    spans
        .iter()
        .find(|s| s.name == name && s.kind == 2 && s.attr_str("session.id") == Some(session))
}

/// Prompts `write <file> ...`, waits for its permission request and returns (prompt id,
/// request id, the tool call id the request names).
async fn write_until_asked(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    file: &str,
) -> anyhow::Result<(String, String, String)> {
    let r = d
        .prompt(s, &format!("write {file} from span_facts"))
        .await?;
    assert_eq!(r.status, 202, "{}", r.body);
    let prompt_id = r.body["promptId"].as_str().unwrap().to_string();
    let frames = sse.until(WAIT, |f| f.event == "permission_request").await?;
    let data = &frames.last().unwrap().data["data"];
    Ok((
        prompt_id,
        data["requestId"].as_str().unwrap().to_string(),
        data["toolCall"]["toolCallId"].as_str().unwrap().to_string(),
    ))
}

async fn vote(d: &Daemon, s: &SessionRef, request_id: &str, outcome: Value) -> anyhow::Result<()> {
    let v = d
        .post_as(
            s,
            &format!("/session/{}/permission/{request_id}", s.id),
            json!({ "outcome": outcome }),
        )
        .await?;
    assert_eq!(v.status, 200, "{}", v.body);
    Ok(())
}

#[tokio::test]
async fn every_session_scoped_request_span_carries_the_session_facts() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx).await?;
    let s = d.create_session().await?;
    let as_client = |req: reqwest::RequestBuilder| req.header("X-Qwen-Client-Id", &s.client_id);
    let status = d
        .send(as_client(d.http.get(d.url(&format!("/session/{}", s.id)))))
        .await?;
    let workspace = status.body["workspaceId"].as_str().unwrap().to_string();
    let mut sse = d.events(&s, None, None).await?;

    // A running prompt with one queued behind it: the queued one is deleted, the running one
    // cancelled.
    let slow = d.prompt(&s, "slow 100 50").await?;
    let slow_id = slow.body["promptId"].as_str().unwrap().to_string();
    sse.until(WAIT, |f| {
        f.event == "pending_prompt_started" && f.data["data"]["promptId"] == slow_id.as_str()
    })
    .await?;
    let queued = d.prompt(&s, "queued").await?;
    let queued_id = queued.body["promptId"].as_str().unwrap().to_string();
    let base = format!("/session/{}", s.id);
    let calls = [
        d.http.get(d.url(&base)),
        d.http.get(d.url(&format!("{base}/pending-prompts"))),
        d.http.post(d.url(&format!("{base}/heartbeat"))),
        d.http
            .delete(d.url(&format!("{base}/pending-prompts/{queued_id}"))),
        d.http
            .post(d.url(&format!("{base}/cancel")))
            .json(&json!({})),
    ];
    for req in calls {
        let r = d.send(as_client(req)).await?;
        assert!(r.status < 300, "{}: {}", r.status, r.body);
    }
    sse.until_turn_end(&slow_id).await?;
    let (_, request_id, _) = write_until_asked(&d, &s, &mut sse, "facts.txt").await?;
    vote(
        &d,
        &s,
        &request_id,
        json!({"outcome": "selected", "optionId": "allow"}),
    )
    .await?;
    let r = d
        .send(as_client(d.http.post(d.url(&format!("{base}/load")))).json(&json!({})))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    drop(d.events(&s, None, None).await?);
    let r = d.send(as_client(d.http.delete(d.url(&base)))).await?;
    assert_eq!(r.status, 204, "{}", r.body);

    let routes = [
        "GET /session/{id}",
        "GET /session/{id}/pending-prompts",
        "POST /session/{id}/heartbeat",
        "DELETE /session/{id}/pending-prompts/{prompt_id}",
        "POST /session/{id}/cancel",
        "POST /session/{id}/permission/{request_id}",
        "POST /session/{id}/load",
        "GET /session/{id}/events",
        "DELETE /session/{id}",
        "POST /session/{id}/prompt",
    ];
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            routes
                .iter()
                .all(|r| spans.iter().any(|s| s.name == *r && s.kind == 2))
        })
        .await?;
    for route in routes {
        let span = server_span(&spans, route, &s.id).unwrap_or_else(|| {
            let seen: Vec<_> = spans.iter().filter(|s| s.name == route).collect();
            panic!("{route}: no server span with session.id; saw {seen:?}")
        });
        assert_eq!(
            span.attr_str("acpd.workspace.id"),
            Some(workspace.as_str()),
            "{route}"
        );
        assert_eq!(
            span.attr_str("acpd.client.id"),
            Some(s.client_id.as_str()),
            "{route}"
        );
    }
    let deleted = server_span(
        &spans,
        "DELETE /session/{id}/pending-prompts/{prompt_id}",
        &s.id,
    )
    .unwrap();
    assert_eq!(deleted.attr_str("acpd.prompt.id"), Some(queued_id.as_str()));
    // A request naming no session records none: the id is client input, not a fact.
    let r = d.get("/session/no-such-session").await?;
    assert_eq!(r.status, 404);
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.attr_str("url.path") == Some("/session/no-such-session"))
        })
        .await?;
    let missing = spans
        .iter()
        .find(|s| s.attr_str("url.path") == Some("/session/no-such-session"))
        .unwrap();
    assert!(missing.attr("session.id").is_none(), "{missing:?}");
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn cancel_and_vote_spans_say_what_they_acted_on_and_decided() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx).await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;

    let (allowed_prompt, allowed, _) = write_until_asked(&d, &s, &mut sse, "a.txt").await?;
    vote(
        &d,
        &s,
        &allowed,
        json!({"outcome": "selected", "optionId": "allow"}),
    )
    .await?;
    sse.until_turn_end(&allowed_prompt).await?;
    let (refused_prompt, refused, _) = write_until_asked(&d, &s, &mut sse, "b.txt").await?;
    vote(&d, &s, &refused, json!({"outcome": "cancelled"})).await?;
    sse.until_turn_end(&refused_prompt).await?;

    let slow = d.prompt(&s, "slow 100 50").await?;
    let slow_id = slow.body["promptId"].as_str().unwrap().to_string();
    sse.until(WAIT, |f| {
        f.event == "pending_prompt_started" && f.data["data"]["promptId"] == slow_id.as_str()
    })
    .await?;
    let r = d
        .post_as(&s, &format!("/session/{}/cancel", s.id), json!({}))
        .await?;
    assert_eq!(r.status, 204);
    sse.until_turn_end(&slow_id).await?;

    let vote_route = "POST /session/{id}/permission/{request_id}";
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().filter(|s| s.name == vote_route).count() >= 2
                && spans
                    .iter()
                    .filter(|s| s.name == "bridge permission.vote")
                    .count()
                    >= 2
                && spans.iter().any(|s| s.name == "bridge session.cancel")
                && spans.iter().any(|s| s.name == "POST /session/{id}/cancel")
        })
        .await?;
    for (request, decision, kind, prompt) in [
        (&allowed, "allow", Some("allow_once"), &allowed_prompt),
        (&refused, "cancelled", None, &refused_prompt),
    ] {
        for name in [vote_route, "bridge permission.vote"] {
            let span = spans
                .iter()
                .find(|s| {
                    s.name == name
                        && s.attr_str("acpd.permission.request_id") == Some(request.as_str())
                })
                .unwrap_or_else(|| panic!("{name} of {request}"));
            assert_eq!(
                span.attr_str("acpd.permission.decision"),
                Some(decision),
                "{name}"
            );
            assert_eq!(span.attr_str("acpd.permission.option_kind"), kind, "{name}");
            assert_eq!(
                span.attr_str("acpd.prompt.id"),
                Some(prompt.as_str()),
                "{name}"
            );
        }
    }
    let wait = spans
        .iter()
        .find(|s| {
            s.name == "permission.wait"
                && s.attr_str("acpd.permission.request_id") == Some(allowed.as_str())
        })
        .expect("permission.wait of the allowed request");
    assert_eq!(
        wait.attr_str("acpd.permission.option_kind"),
        Some("allow_once")
    );
    assert_eq!(
        wait.attr_str("acpd.prompt.id"),
        Some(allowed_prompt.as_str())
    );
    for name in ["bridge session.cancel", "POST /session/{id}/cancel"] {
        let span = spans.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            span.attr_str("acpd.prompt.id"),
            Some(slow_id.as_str()),
            "{name}"
        );
    }
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn the_daemon_tool_span_is_named_by_kind_and_is_not_a_second_tool_execution()
-> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx).await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let read = d.prompt(&s, "read hello.txt").await?;
    sse.until_turn_end(read.body["promptId"].as_str().unwrap())
        .await?;
    let (prompt_id, request_id, tool_call) =
        write_until_asked(&d, &s, &mut sse, "target/notes.txt").await?;
    vote(
        &d,
        &s,
        &request_id,
        json!({"outcome": "selected", "optionId": "allow"}),
    )
    .await?;
    sse.until_turn_end(&prompt_id).await?;

    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            [
                "acpd.tool_call read",
                "acpd.tool_call edit",
                "permission.wait",
            ]
            .iter()
            .all(|n| spans.iter().any(|s| s.name == *n))
                && spans.iter().any(|s| {
                    s.name == "execute_tool write_file"
                        && s.attr_str("gen_ai.tool.call.id") == Some(tool_call.as_str())
                })
        })
        .await?;
    let ours: Vec<&RecvSpan> = spans.iter().filter(|s| s.service_name == "acpd").collect();
    assert!(
        !ours.iter().any(|s| s.name.starts_with("execute_tool")),
        "the daemon emits no execute_tool span"
    );
    let edit = spans
        .iter()
        .find(|s| s.name == "acpd.tool_call edit")
        .unwrap();
    assert_eq!(edit.service_name, "acpd");
    assert_eq!(
        edit.attr_str("acpd.tool.title"),
        Some("Write target/notes.txt"),
        "the title is an attribute, not the name"
    );
    assert_eq!(edit.attr_str("acpd.tool.kind"), Some("edit"));
    assert_eq!(
        edit.attr_str("gen_ai.tool.call.id"),
        Some(tool_call.as_str())
    );
    assert_eq!(edit.attr_str("gen_ai.tool.type"), Some("function"));
    assert_eq!(edit.attr_str("openinference.span.kind"), Some("CHAIN"));
    assert!(edit.attr("gen_ai.operation.name").is_none());
    assert!(edit.attr("gen_ai.tool.name").is_none());
    // One tool execution per call id, whoever counts them: the agent's.
    let executions: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| {
            s.attr_str("gen_ai.tool.call.id") == Some(tool_call.as_str())
                && (s.attr_str("gen_ai.operation.name") == Some("execute_tool")
                    || s.attr_str("openinference.span.kind") == Some("TOOL"))
        })
        .collect();
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!(executions[0].service_name, "acpd-demo-agent");
    let read = spans
        .iter()
        .find(|s| s.name == "acpd.tool_call read")
        .unwrap();
    assert_eq!(read.attr_str("acpd.tool.title"), Some("Read hello.txt"));
    assert!(d.stdout().is_empty(), "stdout must stay empty");
    Ok(())
}

#[tokio::test]
async fn a_permission_wait_hangs_under_the_tool_call_that_waits() -> anyhow::Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let d = daemon_exporting_to(&rx).await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (prompt_id, request_id, tool_call) =
        write_until_asked(&d, &s, &mut sse, "waits.txt").await?;
    vote(
        &d,
        &s,
        &request_id,
        json!({"outcome": "selected", "optionId": "allow"}),
    )
    .await?;
    sse.until_turn_end(&prompt_id).await?;

    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            spans.iter().any(|s| s.name == "permission.wait")
                && spans.iter().any(|s| s.name == "acpd.tool_call edit")
        })
        .await?;
    let tool = spans
        .iter()
        .find(|s| {
            s.name == "acpd.tool_call edit"
                && s.attr_str("gen_ai.tool.call.id") == Some(tool_call.as_str())
        })
        .expect("the daemon's span of the asking tool call");
    let wait = spans
        .iter()
        .find(|s| {
            s.name == "permission.wait"
                && s.attr_str("acpd.permission.request_id") == Some(request_id.as_str())
        })
        .unwrap();
    assert_eq!(wait.trace_id, tool.trace_id);
    assert_eq!(
        wait.parent_span_id, tool.span_id,
        "permission.wait is a child of the tool call it asks about"
    );
    assert!(
        wait.start_ns >= tool.start_ns && wait.end_ns <= tool.end_ns,
        "the wait lies within the tool call"
    );
    Ok(())
}

//! The tests' mock LLM (`acpd_tests::mock_llm`) in each wire format, with requests shaped as the
//! real agents send them (trimmed): answers parse as their clients expect, tool calls carry the
//! configured paths, a tool result (or a side conversation carrying the call) gets text, the
//! scenario switches at run time, `slow` holds answers back until released, `error` answers in
//! each API's error shape. No agent involved: cheap.

use acpd_tests::WAIT;
use acpd_tests::mock_llm::{MockConfig, MockLlm, parse_sse};
use serde_json::{Value, json};
use std::time::Duration;

fn config(scenario: &str) -> MockConfig {
    MockConfig {
        scenario: scenario.into(),
        tool_path: "/ws/hello.txt".into(),
        write_path: "/ws/new dir/it's.txt".into(),
        write_content: "line one\nline \"two\"\n".into(),
        ..MockConfig::default()
    }
}

async fn post(mock: &MockLlm, path: &str, body: Value) -> (u16, String, String) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", mock.base_url()))
        .timeout(WAIT)
        .json(&body)
        .send()
        .await
        .expect("mock answers");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ctype, r.text().await.unwrap())
}

/// SSE `data:` payloads as JSON (skipping `[DONE]`), and whether `[DONE]` ended the stream.
fn sse_json(body: &str) -> (Vec<(Option<String>, Value)>, bool) {
    let frames = parse_sse(body);
    let done = frames.last().is_some_and(|(_, d)| d == "[DONE]");
    let json = frames
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(e, d)| (e, serde_json::from_str(&d).expect("SSE data is JSON")))
        .collect();
    (json, done)
}

// ---------- OpenAI Chat Completions (qwen-code) ----------

fn qwen_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "read_file", "description": "Reads a file",
            "parameters": {"type": "object", "properties": {"absolute_path": {"type": "string"},
                           "offset": {"type": "number"}}, "required": ["absolute_path"]}}},
        {"type": "function", "function": {"name": "write_file", "description": "Writes a file",
            "parameters": {"type": "object", "properties": {"file_path": {"type": "string"},
                           "content": {"type": "string"}}, "required": ["file_path", "content"]}}},
        {"type": "function", "function": {"name": "todo_write", "parameters": {"type": "object"}}}
    ])
}

fn chat_body(messages: Value, stream: bool) -> Value {
    json!({"model": "mock-model", "messages": messages, "tools": qwen_tools(), "stream": stream,
           "stream_options": {"include_usage": true}})
}

fn chat_stream_text(body: &str) -> (String, Vec<Value>, bool) {
    let (frames, done) = sse_json(body);
    let chunks: Vec<Value> = frames.into_iter().map(|(_, v)| v).collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, chunks, done)
}

#[tokio::test]
async fn chat_completions_text_stream_and_json() {
    let mock = MockLlm::start("text").await.unwrap();
    let msgs = json!([{"role": "system", "content": "You are qwen"},
                      {"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
    let (status, ctype, body) =
        post(&mock, "/v1/chat/completions", chat_body(msgs.clone(), true)).await;
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    let (text, chunks, done) = chat_stream_text(&body);
    assert_eq!(text, mock.config().text);
    assert!(done, "stream ends with [DONE]: {body}");
    assert!(chunks.len() >= 3, "text streams in pieces: {body}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["total_tokens"], 15);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"])
    );

    let (status, ctype, body) = post(&mock, "/v1/chat/completions", chat_body(msgs, false)).await;
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], mock.config().text);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let log = mock.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].api.as_str(), log[0].reply.as_str()),
        ("chat", "text")
    );
    assert_eq!(log[0].body["stream"], true);
    assert_eq!(log[0].header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn chat_completions_write_then_text_after_result_and_in_side_conversations() {
    let mock = MockLlm::start_with(config("write")).await.unwrap();
    let user = json!({"role": "user", "content": [{"type": "text", "text": "write it"}]});
    let (_, _, body) = post(
        &mock,
        "/v1/chat/completions",
        chat_body(json!([user]), true),
    )
    .await;
    let (chunks, done) = sse_json(&body);
    assert!(done);
    let call = chunks
        .iter()
        .find_map(|(_, c)| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .cloned()
        })
        .expect("a tool call chunk");
    assert_eq!(call["function"]["name"], "write_file");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        args,
        json!({"file_path": "/ws/new dir/it's.txt", "content": "line one\nline \"two\"\n"})
    );
    assert_eq!(
        chunks.last().unwrap().1["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // The tool result comes back: text.
    let assistant = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": call["id"], "type": "function", "function": call["function"]}]});
    let result = json!({"role": "tool", "tool_call_id": call["id"], "content": "ok"});
    let history = json!([user, assistant, result]);
    let (_, _, body) = post(
        &mock,
        "/v1/chat/completions",
        chat_body(history.clone(), true),
    )
    .await;
    let (text, _, _) = chat_stream_text(&body);
    assert_eq!(text, format!("{} (after tool result)", mock.config().text));

    // A side conversation after the turn (qwen's prompt suggestion: the history plus a new user
    // message) gets text, not the same call again.
    let mut side = history.as_array().unwrap().clone();
    side.push(json!({"role": "assistant", "content": "done"}));
    side.push(json!({"role": "user", "content": "[SUGGESTION MODE: ...]"}));
    let (_, _, body) = post(
        &mock,
        "/v1/chat/completions",
        chat_body(json!(side.clone()), false),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        mock.config().text,
        "{v}"
    );

    // The next prompt of the session with a new target gets its call (non-streaming form).
    mock.set(|c| c.write_path = "/ws/second.txt".into());
    let (_, _, body) = post(&mock, "/v1/chat/completions", chat_body(json!(side), false)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "write_file", "{v}");
    assert!(
        call["function"]["arguments"]
            .as_str()
            .unwrap()
            .contains("/ws/second.txt")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let replies: Vec<String> = mock.requests().into_iter().map(|r| r.reply).collect();
    assert_eq!(
        replies,
        [
            "tool_call write_file",
            "text",
            "text",
            "tool_call write_file"
        ]
    );
}

#[tokio::test]
async fn chat_completions_read_tool_and_no_tool_offered() {
    let mock = MockLlm::start_with(config("tool")).await.unwrap();
    let msgs = json!([{"role": "user", "content": "read it"}]);
    let (_, _, body) = post(
        &mock,
        "/v1/chat/completions",
        chat_body(msgs.clone(), false),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let f = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(f["name"], "read_file");
    assert_eq!(
        serde_json::from_str::<Value>(f["arguments"].as_str().unwrap()).unwrap(),
        json!({"absolute_path": "/ws/hello.txt"})
    );
    // Without tools (a classifier, a title generator): text.
    let (_, _, body) = post(
        &mock,
        "/v1/chat/completions",
        json!({"model": "m", "messages": msgs}),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], mock.config().text);
}

// ---------- OpenAI Responses (codex) ----------

fn codex_body(input: Value) -> Value {
    json!({"model": "mock-model", "instructions": "You are Codex", "stream": true,
           "tool_choice": "auto", "parallel_tool_calls": false, "store": false,
           "tools": [
               {"type": "function", "name": "exec_command", "strict": false,
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"},
                    "sandbox_permissions": {"type": "string"}, "justification": {"type": "string"}},
                    "required": ["cmd"]}},
               {"type": "function", "name": "view_image", "parameters": {"type": "object",
                "properties": {"path": {"type": "string"}}}},
               {"type": "web_search"}],
           "input": input})
}

fn codex_user(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

#[tokio::test]
async fn responses_text_stream_events() {
    let mock = MockLlm::start("text").await.unwrap();
    let input = json!([
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
        codex_user("<environment_context>"), codex_user("hi")]);
    let (status, ctype, body) = post(&mock, "/v1/responses", codex_body(input)).await;
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    let (frames, _) = sse_json(&body);
    let kinds: Vec<&str> = frames.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    assert!(
        kinds.contains(&"response.output_item.added")
            && kinds.contains(&"response.output_item.done")
    );
    for (e, v) in &frames {
        assert_eq!(e.as_deref(), v["type"].as_str(), "event name = data.type");
    }
    let deltas: String = frames
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("response.output_text.delta"))
        .map(|(_, v)| v["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, mock.config().text);
    let done = &frames.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], mock.config().text);
    assert_eq!(done["usage"]["total_tokens"], 15);
}

fn function_call(body: &str) -> Value {
    let (frames, _) = sse_json(body);
    frames
        .iter()
        .find(|(e, v)| {
            e.as_deref() == Some("response.output_item.done")
                && v["item"]["type"] == "function_call"
        })
        .map(|(_, v)| v["item"].clone())
        .unwrap_or_else(|| panic!("no function_call item: {body}"))
}

#[tokio::test]
async fn responses_exec_command_for_read_and_escalated_write() {
    let mock = MockLlm::start_with(config("tool")).await.unwrap();
    let (_, _, body) = post(
        &mock,
        "/v1/responses",
        codex_body(json!([codex_user("read")])),
    )
    .await;
    let item = function_call(&body);
    assert_eq!(item["name"], "exec_command", "exec_command, not view_image");
    let args: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["cmd"], "cat '/ws/hello.txt'");

    mock.set_scenario("write");
    let (_, _, body) = post(
        &mock,
        "/v1/responses",
        codex_body(json!([codex_user("write")])),
    )
    .await;
    let item = function_call(&body);
    let args: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["sandbox_permissions"], "require_escalated");
    // The command really writes the configured content to the configured path.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("new dir/it's.txt");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let cmd = args["cmd"]
        .as_str()
        .unwrap()
        .replace("/ws/", &format!("{}/", dir.path().display()));
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "line one\nline \"two\"\n"
    );

    // The output comes back: text.
    let input = json!([codex_user("write"), item,
        {"type": "function_call_output", "call_id": item["call_id"], "output": "ok"}]);
    let (_, _, body) = post(&mock, "/v1/responses", codex_body(input)).await;
    assert!(body.contains("(after tool result)"), "{body}");
}

#[tokio::test]
async fn responses_apply_patch_when_offered() {
    let mock = MockLlm::start_with(config("write")).await.unwrap();
    let mut body = codex_body(json!([codex_user("write")]));
    body["tools"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}));
    let (_, _, sse) = post(&mock, "/v1/responses", body).await;
    let (frames, _) = sse_json(&sse);
    let item = frames
        .iter()
        .find(|(e, v)| {
            e.as_deref() == Some("response.output_item.done")
                && v["item"]["type"] == "custom_tool_call"
        })
        .map(|(_, v)| v["item"].clone())
        .expect("custom_tool_call");
    assert_eq!(item["name"], "apply_patch");
    assert_eq!(
        item["input"],
        "*** Begin Patch\n*** Add File: /ws/new dir/it's.txt\n+line one\n+line \"two\"\n*** End Patch\n"
    );
}

// ---------- Anthropic Messages (claude-code-acp) ----------

fn claude_body(messages: Value, stream: bool) -> Value {
    json!({"model": "claude-sonnet", "max_tokens": 32000, "stream": stream,
           "system": [{"type": "text", "text": "You are Claude Code"}],
           "tools": [
               {"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
               {"name": "mcp__acp__Read", "input_schema": {"type": "object", "properties": {
                   "file_path": {"type": "string"}, "limit": {"type": "number"}}}},
               {"name": "mcp__acp__Write", "input_schema": {"type": "object", "properties": {
                   "file_path": {"type": "string"}, "content": {"type": "string"}}}},
               {"name": "TodoWrite", "input_schema": {"type": "object"}}],
           "messages": messages})
}

#[tokio::test]
async fn anthropic_stream_text_and_write_tool_use() {
    let mock = MockLlm::start_with(config("write")).await.unwrap();
    let user = json!({"role": "user", "content": [{"type": "text", "text": "write it"}]});
    let (status, ctype, body) = post(
        &mock,
        "/v1/messages?beta=true",
        claude_body(json!([user]), true),
    )
    .await;
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    let (frames, _) = sse_json(&body);
    let kinds: Vec<&str> = frames.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let block = &frames[1].1["content_block"];
    assert_eq!(
        (block["type"].as_str(), block["name"].as_str()),
        (Some("tool_use"), Some("mcp__acp__Write"))
    );
    let input: Value =
        serde_json::from_str(frames[2].1["delta"]["partial_json"].as_str().unwrap()).unwrap();
    assert_eq!(
        input,
        json!({"file_path": "/ws/new dir/it's.txt", "content": "line one\nline \"two\"\n"})
    );
    assert_eq!(frames[4].1["delta"]["stop_reason"], "tool_use");

    // Claude puts the tool result (and often a reminder text) in a user message.
    let msgs = json!([user,
        {"role": "assistant", "content": [{"type": "tool_use", "id": block["id"], "name": block["name"], "input": input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": "ok"},
                                     {"type": "text", "text": "<system-reminder>"}]}]);
    let (_, _, body) = post(&mock, "/v1/messages", claude_body(msgs.clone(), true)).await;
    let (frames, _) = sse_json(&body);
    let text: String = frames
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, format!("{} (after tool result)", mock.config().text));
    assert_eq!(
        frames[frames.len() - 2].1["delta"]["stop_reason"],
        "end_turn"
    );

    // Non-streaming (claude's side calls) and count_tokens.
    mock.set_scenario("text");
    let (_, _, body) = post(&mock, "/v1/messages", claude_body(json!([user]), false)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["stop_reason"].as_str()),
        (Some("message"), Some("end_turn"))
    );
    assert_eq!(v["content"][0]["text"], mock.config().text);
    let (_, _, body) = post(&mock, "/v1/messages/count_tokens", json!({"messages": []})).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["input_tokens"],
        10
    );
}

#[tokio::test]
async fn anthropic_read_tool_picks_read() {
    let mock = MockLlm::start_with(config("tool")).await.unwrap();
    let user = json!({"role": "user", "content": "read it"});
    let (_, _, body) = post(&mock, "/v1/messages", claude_body(json!([user]), false)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["name"], "mcp__acp__Read");
    assert_eq!(
        v["content"][0]["input"],
        json!({"file_path": "/ws/hello.txt"})
    );
    assert_eq!(v["stop_reason"], "tool_use");
}

// ---------- Gemini (gemini-cli) ----------

fn gemini_body(contents: Value) -> Value {
    json!({"contents": contents,
           "systemInstruction": {"role": "user", "parts": [{"text": "You are Gemini CLI"}]},
           "generationConfig": {"temperature": 0},
           "tools": [{"functionDeclarations": [
               {"name": "list_directory", "parametersJsonSchema": {"type": "object", "properties": {"dir_path": {"type": "string"}}}},
               {"name": "read_file", "parametersJsonSchema": {"type": "object", "properties": {"file_path": {"type": "string"}}}},
               {"name": "write_file", "parametersJsonSchema": {"type": "object", "properties": {
                   "file_path": {"type": "string"}, "content": {"type": "string"}}}}]}]})
}

#[tokio::test]
async fn gemini_stream_sse_and_generate_content() {
    let mock = MockLlm::start_with(config("write")).await.unwrap();
    let user = json!({"role": "user", "parts": [{"text": "write it"}]});
    let path = "/v1beta/models/mock-model:streamGenerateContent?alt=sse";
    let (status, ctype, body) = post(&mock, path, gemini_body(json!([user]))).await;
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    let (frames, _) = sse_json(&body);
    let part = &frames[0].1["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(part["name"], "write_file");
    assert_eq!(
        part["args"],
        json!({"file_path": "/ws/new dir/it's.txt", "content": "line one\nline \"two\"\n"})
    );
    assert_eq!(
        frames.last().unwrap().1["candidates"][0]["finishReason"],
        "STOP"
    );

    let contents = json!([user,
        {"role": "model", "parts": [{"functionCall": part}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "write_file", "response": {"output": "ok"}}}]}]);
    let (_, _, body) = post(&mock, path, gemini_body(contents)).await;
    let (frames, _) = sse_json(&body);
    assert!(frames.len() >= 2, "text streams in pieces");
    let text: String = frames
        .iter()
        .filter_map(|(_, v)| v["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(text, format!("{} (after tool result)", mock.config().text));
    assert_eq!(
        frames.last().unwrap().1["usageMetadata"]["totalTokenCount"],
        15
    );

    mock.set_scenario("text");
    let (_, ctype, body) = post(
        &mock,
        "/v1beta/models/mock-model:generateContent",
        gemini_body(json!([user])),
    )
    .await;
    assert_eq!(ctype, "application/json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        mock.config().text
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    let (_, _, body) = post(
        &mock,
        "/v1beta/models/mock-model:countTokens",
        json!({"contents": []}),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["totalTokens"],
        10
    );
    let log = mock.requests();
    assert!(log.iter().all(|r| r.api == "gemini"), "{log:?}");
    assert_eq!(log[0].path, path, "the query is kept");
}

// ---------- control, slow, error ----------

#[tokio::test]
async fn scenario_endpoint_and_header_override() {
    let mock = MockLlm::start("text").await.unwrap();
    let (status, _, body) = post(
        &mock,
        "/__mock/scenario",
        json!({"scenario": "write", "write_path": "/ws/x.txt", "write_content": "x"}),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["scenario"].as_str(), v["write_path"].as_str()),
        (Some("write"), Some("/ws/x.txt"))
    );
    assert_eq!(mock.config().write_content, "x");
    assert!(
        mock.requests().is_empty(),
        "control requests are not logged"
    );

    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", mock.base_url()))
        .header("X-Mock-Scenario", "text")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&chat_body(
            json!([{"role": "user", "content": "hi"}]),
            false,
        ))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], mock.config().text);
    let logged = mock.wait_for(0, WAIT, |r| r.api == "chat").await.unwrap();
    assert_eq!(logged.scenario, "text");
    assert_eq!(
        logged.header("Traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );

    let models: Value = reqwest::get(format!("{}/v1/models", mock.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "mock-model");
}

#[tokio::test]
async fn slow_holds_until_the_scenario_changes() {
    let mock = MockLlm::start_with(MockConfig {
        slow: Duration::from_secs(60),
        ..config("slow")
    })
    .await
    .unwrap();
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let req = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .timeout(WAIT)
            .json(&chat_body(json!([{"role": "user", "content": "hi"}]), true))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    mock.wait_held(WAIT).await.unwrap();
    assert_eq!(mock.held(), 1);
    let held = mock.wait_for(0, WAIT, |r| r.reply == "held").await.unwrap();
    assert_eq!(
        held.body["stream"], true,
        "a held request is logged with its body"
    );
    mock.set_scenario("text");
    let body = tokio::time::timeout(WAIT, req).await.unwrap().unwrap();
    assert_eq!(chat_stream_text(&body).0, mock.config().text);
    let answered = mock.wait_for(0, WAIT, |r| r.reply == "text").await.unwrap();
    assert_eq!(answered.scenario, "slow");
    assert_eq!(mock.held(), 0);
    assert_eq!(mock.requests().len(), 1, "one entry, updated in place");
}

#[tokio::test]
async fn error_in_each_api_shape() {
    let mock = MockLlm::start("error").await.unwrap();
    let cases = [
        (
            "/v1/chat/completions",
            chat_body(json!([]), true),
            "/error/message",
        ),
        ("/v1/responses", codex_body(json!([])), "/error/message"),
        (
            "/v1/messages",
            claude_body(json!([]), true),
            "/error/message",
        ),
        (
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            gemini_body(json!([])),
            "/error/message",
        ),
    ];
    for (path, body, pointer) in &cases {
        let (status, ctype, text) = post(&mock, path, body.clone()).await;
        assert_eq!(
            (status, ctype.as_str()),
            (400, "application/json"),
            "{path}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v.pointer(pointer).and_then(Value::as_str).is_some(),
            "{path}: {v}"
        );
    }
    let (_, _, text) = post(&mock, cases[2].0, cases[2].1.clone()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["type"],
        "error"
    );
    let (_, _, text) = post(&mock, cases[3].0, cases[3].1.clone()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"]["status"],
        "INVALID_ARGUMENT"
    );

    mock.set_scenario("error:503");
    let (status, _, _) = post(&mock, cases[0].0, cases[0].1.clone()).await;
    assert_eq!(status, 503);
    assert_eq!(mock.requests().last().unwrap().reply, "error 503");
}

#[tokio::test]
async fn mock_llm_binary_prints_ready() {
    use tokio::io::AsyncBufReadExt;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mock-llm"))
        .env("MOCK_SCENARIO", "text")
        .env("MOCK_TEXT", "from the binary")
        .env("MOCK_LOG", log.path())
        .env("MOCK_MAX_SECONDS", "60")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("READY in time")
        .unwrap()
        .expect("a line");
    let port: u16 = line.strip_prefix("READY ").expect(&line).parse().unwrap();
    let v: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&chat_body(
            json!([{"role": "user", "content": "hi"}]),
            false,
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "from the binary");
    let logged = std::fs::read_to_string(log.path()).unwrap();
    let entry: Value = serde_json::from_str(logged.lines().next().expect("one line")).unwrap();
    assert_eq!(
        (entry["api"].as_str(), entry["reply"].as_str()),
        (Some("chat"), Some("text"))
    );
    child.kill().await.unwrap();
}

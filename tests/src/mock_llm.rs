//! A mock LLM on 127.0.0.1 speaking just enough of four wire formats for real coding agents to
//! complete turns offline:
//!
//! | API | path | agent |
//! |---|---|---|
//! | OpenAI Chat Completions (SSE and plain JSON) | `POST /v1/chat/completions` | qwen-code |
//! | OpenAI Responses (SSE and plain JSON) | `POST /v1/responses` | codex / codex-acp |
//! | Anthropic Messages (SSE and plain JSON) | `POST /v1/messages`, `/v1/messages/count_tokens` | claude-code-acp |
//! | Gemini | `POST /v1beta/models/M:streamGenerateContent?alt=sse`, `:generateContent`, `:countTokens` | gemini-cli |
//!
//! plus `GET /v1/models`, embeddings, and the control endpoint `POST /__mock/scenario`
//! (`{"scenario": "...", "text"?, "tool_path"?, "write_path"?, "write_content"?}`, every field
//! optional; answers the settings now in force). A request header `X-Mock-Scenario` overrides the
//! scenario for that request alone.
//!
//! Scenarios (each answer is decided from the request alone, nothing is counted across requests:
//! agents make extra calls of their own, such as prompt suggestions, memory extraction and
//! classifiers):
//!
//! - `text`: a plain text answer ([`MockConfig::text`]), streamed in two pieces.
//! - `tool`: a read-file tool call on [`MockConfig::tool_path`] when the request offers a
//!   read-file-like tool (codex: an escalated `exec_command` running `cat`, which codex asks
//!   approval for in its read-only mode), unless the conversation already
//!   holds a tool call on that path or its latest turn ends in a tool result: then text
//!   (`"<text> (after tool result)"` once a result came back). So the turn's side conversations
//!   (which carry its history) get text, and a session's next prompt gets a call again once
//!   the path changed ([`MockLlm::set`]).
//! - `write`: the same with a write-file tool writing [`MockConfig::write_content`] to
//!   [`MockConfig::write_path`] (qwen `write_file`, gemini `write_file`, claude `Write`; codex:
//!   `apply_patch` when offered, else an escalated `exec_command`), which makes agents ask
//!   permission. An earlier call counts here only when it carries the content too, so a file
//!   read first (`tool`) and then overwritten (`write`) gets its write call.
//! - `slow`: each answer is held back up to [`MockConfig::slow`] (released at once when the
//!   scenario changes), then answered like `text`: for cancellation.
//! - `error` (or `error:<status>`): an HTTP error in the API's own error shape, status
//!   [`MockConfig::error_status`] (default 400, which no agent retries).
//!
//! Every request except the control endpoint is logged ([`MockLlm::requests`], [`MockLlm::wait_for`]).
//! [`MockLlm::start`] serves in-process for tests; the `mock-llm` binary serves the same for manual
//! use (`MOCK_*` environment, [`MockConfig::from_env`]).

pub mod agents;

use anyhow::{Context, Result, anyhow};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// What the mock answers with. Every field can change at run time ([`MockLlm::set`],
/// `POST /__mock/scenario`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MockConfig {
    /// `text`, `tool`, `write`, `slow`, `error` or `error:<status>`.
    pub scenario: String,
    /// The text answer.
    pub text: String,
    /// The file the `tool` scenario reads (absolute: agents require it).
    pub tool_path: String,
    /// The file the `write` scenario writes (absolute).
    pub write_path: String,
    /// What the `write` scenario writes.
    pub write_content: String,
    /// How long `slow` holds an answer back at most.
    #[serde(skip)]
    pub slow: Duration,
    /// The status `error` answers with.
    pub error_status: u16,
}

impl Default for MockConfig {
    fn default() -> Self {
        let tmp = std::env::temp_dir().join("acp-e2e-work");
        Self {
            scenario: "text".into(),
            text: "MOCK-ANSWER: hello from mock".into(),
            tool_path: tmp.join("hello.txt").display().to_string(),
            write_path: tmp.join("written.txt").display().to_string(),
            write_content: "written by mock\n".into(),
            slow: Duration::from_secs(20),
            error_status: 400,
        }
    }
}

impl MockConfig {
    /// `scenario` with every other field at its default.
    pub fn scenario(scenario: &str) -> Self {
        Self {
            scenario: scenario.into(),
            ..Self::default()
        }
    }

    /// The defaults overridden by `MOCK_SCENARIO`, `MOCK_TEXT`, `MOCK_TOOL_PATH`,
    /// `MOCK_WRITE_PATH`, `MOCK_WRITE_CONTENT`, `MOCK_SLOW_SECONDS`, `MOCK_ERROR_STATUS`.
    pub fn from_env() -> Result<Self> {
        let mut c = Self::default();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("MOCK_SCENARIO") {
            c.scenario = v;
        }
        if let Some(v) = var("MOCK_TEXT") {
            c.text = v;
        }
        if let Some(v) = var("MOCK_TOOL_PATH") {
            c.tool_path = v;
        }
        if let Some(v) = var("MOCK_WRITE_PATH") {
            c.write_path = v;
        }
        if let Some(v) = var("MOCK_WRITE_CONTENT") {
            c.write_content = v;
        }
        if let Some(v) = var("MOCK_SLOW_SECONDS") {
            c.slow = Duration::from_secs_f64(v.parse().context("MOCK_SLOW_SECONDS")?);
        }
        if let Some(v) = var("MOCK_ERROR_STATUS") {
            c.error_status = v.parse().context("MOCK_ERROR_STATUS")?;
        }
        Ok(c)
    }

    /// Applies the fields present in a control request body.
    fn apply(&mut self, body: &Value) {
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        if let Some(v) = s("scenario") {
            self.scenario = v;
        }
        if let Some(v) = s("text") {
            self.text = v;
        }
        if let Some(v) = s("tool_path") {
            self.tool_path = v;
        }
        if let Some(v) = s("write_path") {
            self.write_path = v;
        }
        if let Some(v) = s("write_content") {
            self.write_content = v;
        }
        if let Some(v) = body.get("slow_seconds").and_then(Value::as_f64) {
            self.slow = Duration::from_secs_f64(v.max(0.0));
        }
        if let Some(v) = body.get("error_status").and_then(Value::as_u64) {
            self.error_status = v as u16;
        }
    }
}

/// One request the mock received.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    /// Milliseconds since the mock started.
    pub ms: u64,
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Every header, names lower-case (repeated headers joined with ", ").
    pub headers: BTreeMap<String, String>,
    /// The request body as JSON (`{"_raw": text}` when not JSON, `null` when empty).
    pub body: Value,
    /// `chat`, `responses`, `anthropic`, `gemini`, or `other`.
    pub api: String,
    /// The scenario that answered it.
    pub scenario: String,
    /// What the mock answered: `text`, `tool_call <name>`, `error <status>`, `not_found`, ...;
    /// `held` while the `slow` scenario holds it back (and for good when the client went away).
    pub reply: String,
}

impl LoggedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

struct Shared {
    config: watch::Sender<MockConfig>,
    log: Mutex<Vec<LoggedRequest>>,
    /// The log's length, for waiting on requests without polling.
    logged: watch::Sender<usize>,
    /// Answers `slow` is holding back right now.
    held: watch::Sender<usize>,
    started: Instant,
    jsonl: Option<Mutex<std::fs::File>>,
}

/// A running mock LLM; stops when dropped.
pub struct MockLlm {
    port: u16,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockLlm {
    /// Serves `scenario` (other settings at their defaults) on a free port of 127.0.0.1.
    pub async fn start(scenario: &str) -> Result<MockLlm> {
        Self::start_with(MockConfig::scenario(scenario)).await
    }

    pub async fn start_with(config: MockConfig) -> Result<MockLlm> {
        Self::serve(config, 0, None).await
    }

    /// Serves on `127.0.0.1:port` (0: any free port), appending each logged request as one JSON
    /// line to `jsonl` when given.
    pub async fn serve(
        config: MockConfig,
        port: u16,
        jsonl: Option<std::path::PathBuf>,
    ) -> Result<MockLlm> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .context("bind the mock LLM")?;
        let port = listener.local_addr()?.port();
        let jsonl = match jsonl {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .with_context(|| format!("open {}", p.display()))?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            config: watch::channel(config).0,
            log: Mutex::new(Vec::new()),
            logged: watch::channel(0).0,
            held: watch::channel(0).0,
            started: Instant::now(),
            jsonl,
        });
        let app = {
            let shared = shared.clone();
            axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let shared = shared.clone();
                    async move { handle(shared, method, uri, headers, body).await }
                },
            )
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockLlm {
            port,
            shared,
            server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` (OpenAI clients want `<base_url>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The settings in force.
    pub fn config(&self) -> MockConfig {
        self.shared.config.borrow().clone()
    }

    /// Changes the settings (a held-back `slow` answer is released when the scenario changes).
    pub fn set(&self, change: impl FnOnce(&mut MockConfig)) {
        self.shared.config.send_modify(change);
    }

    pub fn set_scenario(&self, scenario: &str) {
        self.set(|c| c.scenario = scenario.into());
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many answers the `slow` scenario is holding back now.
    pub fn held(&self) -> usize {
        *self.shared.held.borrow()
    }

    /// Waits (at most `within`) until the `slow` scenario holds at least one answer back (the
    /// agent is waiting on the LLM: the moment to cancel).
    pub async fn wait_held(&self, within: Duration) -> Result<()> {
        let mut rx = self.shared.held.subscribe();
        tokio::time::timeout(within, rx.wait_for(|n| *n > 0))
            .await
            .map_err(|_| anyhow!("no LLM answer held back within {within:?}"))??;
        Ok(())
    }

    /// Waits (at most `within`) for a request satisfying `pred`, logged at or after index `from`
    /// of [`MockLlm::requests`]; returns it.
    pub async fn wait_for(
        &self,
        from: usize,
        within: Duration,
        pred: impl Fn(&LoggedRequest) -> bool,
    ) -> Result<LoggedRequest> {
        let mut rx = self.shared.logged.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // From `from` every time: a held entry's reply changes in place.
            if let Some(r) = self
                .shared
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|r| pred(r))
            {
                return Ok(r.clone());
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .map_err(|_| {
                    anyhow!(
                        "no matching LLM request within {within:?}; saw {:?}",
                        self.requests()
                            .iter()
                            .map(|r| format!("{} {} -> {}", r.method, r.path, r.reply))
                            .collect::<Vec<_>>()
                    )
                })??;
        }
    }
}

static IDS: AtomicU64 = AtomicU64::new(1);

/// A fresh id: `prefix` + 12 hex digits.
fn new_id(prefix: &str) -> String {
    let n = IDS.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{prefix}{:012x}",
        (t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & 0xffff_ffff_ffff
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn handle(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({"_raw": String::from_utf8_lossy(&body)}))
    };
    if method == Method::POST && path == "/__mock/scenario" {
        shared.config.send_modify(|c| c.apply(&body));
        let c = shared.config.borrow().clone();
        return json_response(StatusCode::OK, &serde_json::to_value(c).unwrap_or_default());
    }
    let mut config = shared.config.borrow().clone();
    if let Some(s) = headers.get("x-mock-scenario").and_then(|v| v.to_str().ok()) {
        config.scenario = s.to_string();
    }
    let api = api_of(&path);
    let mut entry = LoggedRequest {
        ms: shared.started.elapsed().as_millis() as u64,
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| path.clone()),
        headers: headers_map(&headers),
        body: Value::Null,
        api: api.to_string(),
        scenario: config.scenario.clone(),
        reply: String::new(),
    };
    // A held answer is logged at once (reply `held`, updated when answered; it stays `held` when
    // the client went away first, e.g. on cancel).
    let held_at = (method == Method::POST && config.scenario == "slow").then(|| {
        let mut e = entry.clone();
        e.body = body.clone();
        e.reply = "held".into();
        push(&shared, e)
    });
    let (reply, response) = if method == Method::POST {
        if held_at.is_some() {
            hold(&shared, config.slow).await;
        }
        answer(&config, api, &path, &body)
    } else if method == Method::GET && path.contains("/models") {
        let list = if api == "gemini" {
            json!({"models": [{"name": "models/mock-model"}]})
        } else {
            json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "owned_by": "mock"}]})
        };
        ("models".to_string(), json_response(StatusCode::OK, &list))
    } else {
        (
            "ok".to_string(),
            json_response(StatusCode::OK, &json!({"ok": true})),
        )
    };
    entry.body = body;
    entry.reply = reply;
    if let Some(f) = &shared.jsonl
        && let Ok(line) = serde_json::to_string(&entry)
    {
        use std::io::Write;
        let _ = writeln!(f.lock().unwrap(), "{line}");
    }
    match held_at {
        Some(i) => {
            shared.log.lock().unwrap()[i].reply = entry.reply;
            shared.logged.send_modify(|_| {});
        }
        None => {
            push(&shared, entry);
        }
    }
    response
}

/// Appends to the log; returns the entry's index.
fn push(shared: &Shared, entry: LoggedRequest) -> usize {
    let i = {
        let mut log = shared.log.lock().unwrap();
        log.push(entry);
        log.len() - 1
    };
    shared.logged.send_modify(|n| *n += 1);
    i
}

/// Holds a `slow` answer for up to `max`, or until the scenario is no longer `slow`.
async fn hold(shared: &Shared, max: Duration) {
    struct Held<'a>(&'a watch::Sender<usize>);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.send_modify(|n| *n -= 1);
        }
    }
    let mut rx = shared.config.subscribe();
    shared.held.send_modify(|n| *n += 1);
    let _held = Held(&shared.held);
    let _ = tokio::time::timeout(max, rx.wait_for(|c| c.scenario != "slow")).await;
}

fn headers_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::<String, String>::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes()).to_string();
        out.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

fn api_of(path: &str) -> &'static str {
    if path.ends_with("/chat/completions") {
        "chat"
    } else if path.ends_with("/responses") {
        "responses"
    } else if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
        "anthropic"
    } else if (path.contains("/models/") && path.contains(':')) || path.starts_with("/v1beta") {
        "gemini"
    } else {
        "other"
    }
}

/// The answer to a POST: a label for the log and the response.
fn answer(c: &MockConfig, api: &str, path: &str, body: &Value) -> (String, Response) {
    if let Some(status) = error_status(c) {
        return (
            format!("error {}", status.as_u16()),
            json_response(status, &error_body(api, status)),
        );
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    match api {
        "chat" => chat(c, body, stream),
        "responses" => responses(c, body, stream),
        "anthropic" if path.ends_with("/count_tokens") => (
            "count_tokens".into(),
            json_response(StatusCode::OK, &json!({"input_tokens": 10})),
        ),
        "anthropic" => anthropic(c, body, stream),
        "gemini" if path.contains(":countTokens") => (
            "count_tokens".into(),
            json_response(StatusCode::OK, &json!({"totalTokens": 10})),
        ),
        "gemini" if path.contains(":embedContent") || path.contains(":batchEmbedContents") => {
            let n = body["requests"].as_array().map_or(1, Vec::len);
            let e = json!({"values": vec![0.0; 8]});
            let resp = if path.contains(":batch") {
                json!({"embeddings": vec![e; n]})
            } else {
                json!({"embedding": e})
            };
            ("embedding".into(), json_response(StatusCode::OK, &resp))
        }
        "gemini" if path.contains(":streamGenerateContent") => gemini(c, body, true),
        "gemini" if path.contains(":generateContent") => gemini(c, body, false),
        _ if path.ends_with("/embeddings") => (
            "embedding".into(),
            json_response(
                StatusCode::OK,
                &json!({"object": "list", "model": "mock-model",
                        "data": [{"object": "embedding", "embedding": vec![0.0; 8], "index": 0}]}),
            ),
        ),
        _ => (
            "not_found".into(),
            json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"message": format!("mock: unknown path {path}")}}),
            ),
        ),
    }
}

fn error_status(c: &MockConfig) -> Option<StatusCode> {
    let code = if c.scenario == "error" {
        c.error_status
    } else {
        c.scenario.strip_prefix("error:")?.trim().parse().ok()?
    };
    StatusCode::from_u16(code).ok()
}

fn error_body(api: &str, status: StatusCode) -> Value {
    let message = format!("mock LLM error ({})", status.as_u16());
    match api {
        "anthropic" => json!({"type": "error", "error": {
            "type": if status.is_server_error() { "api_error" } else { "invalid_request_error" },
            "message": message}}),
        "gemini" => json!({"error": {"code": status.as_u16(), "message": message,
            "status": if status.is_server_error() { "INTERNAL" } else { "INVALID_ARGUMENT" }}}),
        _ => json!({"error": {"message": message,
            "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "param": null, "code": null}}),
    }
}

// ---------- picking the tool ----------

/// The tool most likely to read a file among `names`.
pub fn pick_read_tool<'a>(names: &[&'a str]) -> Option<&'a str> {
    for exact in ["read_file", "readfile", "read", "mcp__acp__read", "view"] {
        if let Some(n) = names.iter().find(|n| n.to_lowercase() == exact) {
            return Some(n);
        }
    }
    if let Some(n) = names.iter().find(|n| {
        let l = n.to_lowercase();
        l.contains("read") && (l.contains("file") || l.ends_with("read"))
    }) {
        return Some(n);
    }
    names
        .iter()
        .find(|n| {
            let l = n.to_lowercase();
            ["read", "view", "cat"].iter().any(|h| l.contains(h)) && !l.contains("image")
        })
        .copied()
}

/// The tool most likely to write a whole file among `names`.
pub fn pick_write_tool<'a>(names: &[&'a str]) -> Option<&'a str> {
    for exact in ["write_file", "write", "mcp__acp__write"] {
        if let Some(n) = names.iter().find(|n| n.to_lowercase() == exact) {
            return Some(n);
        }
    }
    names
        .iter()
        .find(|n| {
            let l = n.to_lowercase();
            l.contains("write") && !l.contains("todo") && !l.contains("stdin")
        })
        .copied()
}

fn props(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn read_args(c: &MockConfig, schema: &Value) -> Value {
    let props = props(schema);
    let key = [
        "absolute_path",
        "file_path",
        "path",
        "filePath",
        "filename",
        "file",
    ]
    .into_iter()
    .find(|k| props.iter().any(|p| p == k))
    .map(str::to_string)
    .or_else(|| props.first().cloned())
    .unwrap_or_else(|| "path".into());
    json!({ key: c.tool_path })
}

fn write_args(c: &MockConfig, schema: &Value) -> Value {
    let props = props(schema);
    let find = |keys: &[&str], default: &str| {
        keys.iter()
            .find(|k| props.iter().any(|p| p == *k))
            .copied()
            .unwrap_or(default)
            .to_string()
    };
    let pk = find(
        &["file_path", "absolute_path", "path", "filePath"],
        "file_path",
    );
    let ck = find(&["content", "contents", "text"], "content");
    json!({ pk: c.write_path, ck: c.write_content })
}

/// A tool call to make: name and arguments.
struct Call {
    name: String,
    args: Value,
}

/// The call the scenario asks for, given the offered tools (name, JSON schema).
fn plan_call(c: &MockConfig, tools: &[(&str, &Value)]) -> Option<Call> {
    let names: Vec<&str> = tools.iter().map(|(n, _)| *n).collect();
    let schema = |name: &str| {
        tools
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| (*s).clone())
            .unwrap_or(Value::Null)
    };
    match c.scenario.as_str() {
        "tool" => pick_read_tool(&names).map(|n| Call {
            name: n.into(),
            args: read_args(c, &schema(n)),
        }),
        "write" => pick_write_tool(&names).map(|n| Call {
            name: n.into(),
            args: write_args(c, &schema(n)),
        }),
        _ => None,
    }
}

/// Text answer: the configured text, marked once a tool result came back.
fn text_for(c: &MockConfig, after_tool: bool) -> String {
    if after_tool {
        format!("{} (after tool result)", c.text)
    } else {
        c.text.clone()
    }
}

/// Whether the conversation's latest turn already holds a tool result: walking back from the
/// newest message, a tool result comes before any user message that is not one. Earlier turns
/// of the same conversation (history) do not count, so every prompt of a session gets its call.
fn latest_turn_has_tool_result<'a>(
    messages: impl DoubleEndedIterator<Item = &'a Value>,
    is_tool_result: impl Fn(&Value) -> bool,
    is_user: impl Fn(&Value) -> bool,
) -> bool {
    for m in messages.rev() {
        if is_tool_result(m) {
            return true;
        }
        if is_user(m) {
            return false;
        }
    }
    false
}

/// Whether one of the conversation's earlier tool calls (`calls`, in any format) already targets
/// the file the scenario is about (for `write`: with the content to write): then the mock
/// answers text. Agents run side conversations
/// after a turn (qwen: memory extraction, prompt suggestion) that end with a new user message
/// but carry the turn's history; they must not get the call again. A session's next prompt gets
/// a call when the target changed ([`MockLlm::set`]).
fn called_before<'a>(c: &MockConfig, mut calls: impl Iterator<Item = &'a Value>) -> bool {
    let (target, content) = match c.scenario.as_str() {
        "tool" => (&c.tool_path, None),
        // A write counts only with its content: an earlier read of the same file (read, then
        // edit) does not stand for the write.
        "write" => (
            &c.write_path,
            c.write_content.lines().find(|l| !l.trim().is_empty()),
        ),
        _ => return false,
    };
    // `s` in a call as sent: raw, JSON-escaped once (arguments) or twice (arguments as a string).
    let appears = |call: &str, s: &str| {
        let once = serde_json::to_string(s).unwrap_or_default();
        let once = once.trim_matches('"').to_string();
        let twice = serde_json::to_string(&once).unwrap_or_default();
        let twice = twice.trim_matches('"').to_string();
        call.contains(s) || call.contains(&once) || call.contains(&twice)
    };
    calls.any(|call| {
        let s = call.to_string();
        appears(&s, target) && content.is_none_or(|line| appears(&s, line))
    })
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

// ---------- OpenAI Chat Completions ----------

fn chat(c: &MockConfig, body: &Value, stream: bool) -> (String, Response) {
    let tools: Vec<(&str, &Value)> = array(body, "tools")
        .iter()
        .filter_map(|t| {
            let f = t.get("function")?;
            Some((
                f.get("name")?.as_str()?,
                f.get("parameters").unwrap_or(&Value::Null),
            ))
        })
        .collect();
    let after_tool = latest_turn_has_tool_result(
        array(body, "messages").iter(),
        |m| m["role"] == "tool",
        |m| m["role"] == "user",
    );
    let earlier = array(body, "messages")
        .iter()
        .filter(|m| m["role"] == "assistant")
        .flat_map(|m| array(m, "tool_calls"));
    let call = if after_tool || called_before(c, earlier) {
        None
    } else {
        plan_call(c, &tools)
    };
    let text = text_for(c, after_tool);
    let id = new_id("chatcmpl-");
    let model = body["model"].as_str().unwrap_or("mock-model");
    let created = unix_now();
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    let call = call.map(|call| {
        (
            new_id("call_"),
            call.name,
            serde_json::to_string(&call.args).unwrap_or_default(),
        )
    });
    let reply = match &call {
        Some((_, name, _)) => format!("tool_call {name}"),
        None => "text".into(),
    };
    if !stream {
        let mut msg = json!({"role": "assistant", "content": if call.is_some() { Value::Null } else { json!(text) }});
        if let Some((cid, name, args)) = &call {
            msg["tool_calls"] = json!([{"id": cid, "type": "function",
                                        "function": {"name": name, "arguments": args}}]);
        }
        let resp = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": msg,
                         "finish_reason": if call.is_some() { "tool_calls" } else { "stop" }}],
            "usage": usage});
        return (reply, json_response(StatusCode::OK, &resp));
    }
    let chunk = |choices: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": choices})
    };
    let mut sse = Sse::default();
    sse.data(&chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    ));
    match &call {
        Some((cid, name, args)) => {
            sse.data(&chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": cid, "type": "function",
                 "function": {"name": name, "arguments": args}}]}, "finish_reason": null}])));
            let mut last = chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]));
            last["usage"] = usage;
            sse.data(&last);
        }
        None => {
            let (a, b) = split_text(&text);
            for piece in [a, b] {
                sse.data(&chunk(json!([{"index": 0, "delta": {"content": piece},
                                        "finish_reason": null}])));
            }
            let mut last = chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]));
            last["usage"] = usage;
            sse.data(&last);
        }
    }
    sse.raw("[DONE]");
    (reply, sse.response())
}

// ---------- OpenAI Responses (codex) ----------

/// A unified diff-free patch in codex's `apply_patch` format adding `path` with `content`.
fn add_file_patch(path: &str, content: &str) -> String {
    let mut p = format!("*** Begin Patch\n*** Add File: {path}\n");
    for line in content.lines() {
        p.push('+');
        p.push_str(line);
        p.push('\n');
    }
    p.push_str("*** End Patch\n");
    p
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn responses(c: &MockConfig, body: &Value, stream: bool) -> (String, Response) {
    let tools = array(body, "tools");
    let named =
        |kind: &str, name: &str| tools.iter().any(|t| t["type"] == kind && t["name"] == name);
    let input = array(body, "input");
    let after_tool = latest_turn_has_tool_result(
        input.iter(),
        |i| {
            matches!(
                i["type"].as_str(),
                Some("function_call_output" | "custom_tool_call_output")
            )
        },
        |i| i["role"] == "user" && i["type"].as_str().is_none_or(|t| t == "message"),
    );
    let function = |name: &str, args: Value| {
        json!({"type": "function_call", "id": new_id("fc_"), "call_id": new_id("call_"),
               "name": name, "arguments": serde_json::to_string(&args).unwrap_or_default(),
               "status": "completed"})
    };
    let earlier = input.iter().filter(|i| {
        matches!(
            i["type"].as_str(),
            Some("function_call" | "custom_tool_call" | "local_shell_call")
        )
    });
    let call: Option<Value> = if after_tool || called_before(c, earlier) {
        None
    } else {
        match c.scenario.as_str() {
            "tool" => {
                if named("function", "exec_command") {
                    // Escalated like the write: codex's sandboxed commands need bubblewrap,
                    // which a container may lack; approved, it runs outside the sandbox.
                    Some(function(
                        "exec_command",
                        json!({"cmd": format!("cat {}", shell_quote(&c.tool_path)),
                               "sandbox_permissions": "require_escalated",
                               "justification": "The mock LLM reads a file."}),
                    ))
                } else if named("function", "shell") {
                    Some(function("shell", json!({"command": ["cat", c.tool_path]})))
                } else {
                    let fns: Vec<(&str, &Value)> = tools
                        .iter()
                        .filter(|t| t["type"] == "function")
                        .filter_map(|t| {
                            Some((
                                t["name"].as_str()?,
                                t.get("parameters").unwrap_or(&Value::Null),
                            ))
                        })
                        .collect();
                    plan_call(c, &fns).map(|call| function(&call.name, call.args))
                }
            }
            "write" => {
                let patch = add_file_patch(&c.write_path, &c.write_content);
                if named("custom", "apply_patch") {
                    Some(json!({"type": "custom_tool_call", "id": new_id("ctc_"),
                                "call_id": new_id("call_"), "name": "apply_patch",
                                "input": patch, "status": "completed"}))
                } else if named("function", "apply_patch") {
                    Some(function("apply_patch", json!({"input": patch})))
                } else if named("function", "exec_command") {
                    // Escalated: codex asks approval (session/request_permission) in its
                    // read-only and auto modes, then runs it outside its sandbox (none needed).
                    Some(function(
                        "exec_command",
                        json!({"cmd": format!("printf %s {} > {}",
                                              shell_quote(&c.write_content), shell_quote(&c.write_path)),
                               "sandbox_permissions": "require_escalated",
                               "justification": "The mock LLM writes a file."}),
                    ))
                } else {
                    None
                }
            }
            _ => None,
        }
    };
    let text = text_for(c, after_tool);
    let reply = match &call {
        Some(item) => format!("tool_call {}", item["name"].as_str().unwrap_or("")),
        None => "text".into(),
    };
    let model = body["model"].as_str().unwrap_or("mock-model");
    let resp = json!({"id": new_id("resp_"), "object": "response", "created_at": unix_now(),
                      "model": model, "status": "in_progress", "output": []});
    let usage = json!({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                       "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens_details": {"reasoning_tokens": 0}});
    let mut sse = Sse::default();
    sse.event(
        "response.created",
        &json!({"type": "response.created", "response": resp}),
    );
    let item = match call {
        Some(item) => {
            let mut added = item.clone();
            if added.get("arguments").is_some() {
                added["arguments"] = json!("");
            }
            if added.get("input").is_some() {
                added["input"] = json!("");
            }
            added["status"] = json!("in_progress");
            sse.event(
                "response.output_item.added",
                &json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            );
            item
        }
        None => {
            let mid = new_id("msg_");
            sse.event(
                "response.output_item.added",
                &json!({"type": "response.output_item.added", "output_index": 0,
                        "item": {"type": "message", "id": mid, "role": "assistant",
                                 "status": "in_progress", "content": []}}),
            );
            let (a, b) = split_text(&text);
            for piece in [a, b] {
                sse.event(
                    "response.output_text.delta",
                    &json!({"type": "response.output_text.delta", "item_id": mid,
                            "output_index": 0, "content_index": 0, "delta": piece}),
                );
            }
            json!({"type": "message", "id": mid, "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]})
        }
    };
    sse.event(
        "response.output_item.done",
        &json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    );
    let mut done = resp;
    done["status"] = json!("completed");
    done["output"] = json!([item]);
    done["usage"] = usage;
    if !stream {
        return (reply, json_response(StatusCode::OK, &done));
    }
    sse.event(
        "response.completed",
        &json!({"type": "response.completed", "response": done}),
    );
    (reply, sse.response())
}

// ---------- Anthropic Messages (claude) ----------

fn anthropic(c: &MockConfig, body: &Value, stream: bool) -> (String, Response) {
    let tools: Vec<(&str, &Value)> = array(body, "tools")
        .iter()
        .filter_map(|t| {
            Some((
                t.get("name")?.as_str()?,
                t.get("input_schema").unwrap_or(&Value::Null),
            ))
        })
        .collect();
    let has_result = |m: &Value| {
        array(m, "content")
            .iter()
            .any(|b| b["type"] == "tool_result")
    };
    let after_tool = latest_turn_has_tool_result(array(body, "messages").iter(), has_result, |m| {
        m["role"] == "user"
    });
    let earlier = array(body, "messages")
        .iter()
        .filter(|m| m["role"] == "assistant")
        .flat_map(|m| array(m, "content"))
        .filter(|b| b["type"] == "tool_use");
    let call = if after_tool || called_before(c, earlier) {
        None
    } else {
        plan_call(c, &tools)
    };
    let text = text_for(c, after_tool);
    let mid = new_id("msg_");
    let model = body["model"].as_str().unwrap_or("mock-model");
    let usage = json!({"input_tokens": 10, "output_tokens": 5});
    let call = call.map(|call| (new_id("toolu_"), call));
    let reply = match &call {
        Some((_, call)) => format!("tool_call {}", call.name),
        None => "text".into(),
    };
    let stop = if call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if !stream {
        let content = match &call {
            Some((id, call)) => {
                json!([{"type": "tool_use", "id": id, "name": call.name, "input": call.args}])
            }
            None => json!([{"type": "text", "text": text}]),
        };
        let resp = json!({"id": mid, "type": "message", "role": "assistant", "model": model,
                          "content": content, "stop_reason": stop, "stop_sequence": null,
                          "usage": usage});
        return (reply, json_response(StatusCode::OK, &resp));
    }
    let mut sse = Sse::default();
    sse.event(
        "message_start",
        &json!({"type": "message_start", "message": {"id": mid, "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": usage}}),
    );
    match &call {
        Some((id, call)) => {
            sse.event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "tool_use", "id": id, "name": call.name,
                                          "input": {}}}),
            );
            sse.event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "input_json_delta",
                                  "partial_json": serde_json::to_string(&call.args).unwrap_or_default()}}),
            );
        }
        None => {
            sse.event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
            );
            let (a, b) = split_text(&text);
            for piece in [a, b] {
                sse.event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": piece}}),
                );
            }
        }
    }
    sse.event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    );
    sse.event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": 5}}),
    );
    sse.event("message_stop", &json!({"type": "message_stop"}));
    (reply, sse.response())
}

// ---------- Gemini ----------

fn gemini(c: &MockConfig, body: &Value, stream: bool) -> (String, Response) {
    let decls: Vec<&Value> = array(body, "tools")
        .iter()
        .flat_map(|t| {
            let d = t
                .get("functionDeclarations")
                .or_else(|| t.get("function_declarations"));
            d.and_then(Value::as_array).map_or(&[][..], Vec::as_slice)
        })
        .collect();
    let tools: Vec<(&str, &Value)> = decls
        .iter()
        .filter_map(|d| {
            let schema = d
                .get("parametersJsonSchema")
                .or_else(|| d.get("parameters"))
                .unwrap_or(&Value::Null);
            Some((d.get("name")?.as_str()?, schema))
        })
        .collect();
    let has_result = |m: &Value| {
        array(m, "parts")
            .iter()
            .any(|p| p.get("functionResponse").is_some())
    };
    let after_tool = latest_turn_has_tool_result(array(body, "contents").iter(), has_result, |m| {
        m["role"] == "user"
    });
    let earlier = array(body, "contents")
        .iter()
        .filter(|m| m["role"] == "model")
        .flat_map(|m| array(m, "parts"))
        .filter_map(|p| p.get("functionCall"));
    let call = if after_tool || called_before(c, earlier) {
        None
    } else {
        plan_call(c, &tools)
    };
    let text = text_for(c, after_tool);
    let reply = match &call {
        Some(call) => format!("tool_call {}", call.name),
        None => "text".into(),
    };
    let candidate = |parts: Value, finish: bool| {
        let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if finish {
            cand["finishReason"] = json!("STOP");
        }
        json!({"candidates": [cand],
               "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                                 "totalTokenCount": 15},
               "modelVersion": "mock-model", "responseId": new_id("gem_")})
    };
    let parts = match &call {
        Some(call) => json!([{"functionCall": {"name": call.name, "args": call.args}}]),
        None => json!([{"text": text}]),
    };
    if !stream {
        return (
            reply,
            json_response(StatusCode::OK, &candidate(parts, true)),
        );
    }
    let mut sse = Sse::default();
    if call.is_none() {
        let (a, b) = split_text(&text);
        sse.data(&candidate(json!([{ "text": a }]), false));
        sse.data(&candidate(json!([{ "text": b }]), true));
    } else {
        sse.data(&candidate(parts, true));
    }
    (reply, sse.response())
}

// ---------- wire helpers ----------

/// Splits `text` in two at a char boundary near its middle (answers stream in two deltas).
fn split_text(text: &str) -> (&str, &str) {
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid += 1;
    }
    text.split_at(mid)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("valid response")
}

/// A whole SSE body built up front (the mock knows its full answer at once).
#[derive(Default)]
struct Sse(String);

impl Sse {
    fn event(&mut self, event: &str, data: &Value) {
        self.0
            .push_str(&format!("event: {event}\ndata: {data}\n\n"));
    }
    fn data(&mut self, data: &Value) {
        self.raw(&data.to_string());
    }
    fn raw(&mut self, data: &str) {
        self.0.push_str(&format!("data: {data}\n\n"));
    }
    fn response(self) -> Response {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from(self.0))
            .expect("valid response")
    }
}

/// Parses an SSE body into `(event, data)` pairs (for tests of the mock and of its clients).
pub fn parse_sse(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let mut event = None;
            let mut data = Vec::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

//! Handlers: validate, call the bridge, map the result. Nothing here waits on a turn.

use agent_client_protocol::v1::schema::{ContentBlock, Meta};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::body::JsonBody;
use super::extract::{Path, Query};
use super::schema::{Empty, ErrorBody, HeartbeatBody, PendingRemoved, PromptAccepted, SessionInfo};
use crate::bridge::{CreateScope, Prompt, Session};
use crate::error::ApiError;
use crate::path_marks::{self, Step};
use crate::telemetry::semconv::{
    CLIENT_ID, PERMISSION_DECISION, PERMISSION_OPTION_KIND, PERMISSION_REQUEST_ID, PROMPT_ID,
    WORKSPACE_ID,
};
use crate::telemetry::spans::{request_fact, session_fact};
use crate::time;

type Result<T> = std::result::Result<T, ApiError>;

/// `_meta` keys the daemon owns (trace context): a client may not set them.
const RESERVED_META: &[&str] = &["traceparent", "tracestate", "baggage"];

pub(crate) fn client_meta(meta: Option<Meta>) -> Meta {
    let mut meta = meta.unwrap_or_default();
    meta.retain(|k, _| !RESERVED_META.contains(&k.as_str()) && !k.starts_with("qwen.telemetry."));
    meta
}

pub fn client_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-qwen-client-id")
        .and_then(|v| v.to_str().ok())
}

#[derive(Deserialize)]
pub struct HealthQuery {
    deep: Option<String>,
}

#[utoipa::path(get, path = "/health", tag = "daemon",
    params(("deep" = Option<String>, Query, description = "`1` or `true` adds counts and plugin states")),
    responses(
        (status = 200, description = "The daemon serves (`status` is `ok`, or `degraded` with a `reason`: the agent command cannot be started)", body = super::schema::Health),
        (status = 503, description = "`?deep=1` while degraded: the same body", body = super::schema::Health),
    ))]
pub async fn health(State(state): State<AppState>, Query(q): Query<HealthQuery>) -> Response {
    let deep = q.deep.as_deref().is_some_and(|d| d == "1" || d == "true");
    // The daemon serves, but no session can get an agent: a missing or non-executable agent
    // command is a configuration fault, not a passing outage, so monitoring must see it.
    let unstartable = state
        .bridge
        .workspaces
        .iter()
        .find_map(|w| w.agents.unstartable());
    let mut body = match &unstartable {
        None => json!({"status": "ok"}),
        Some(e) => json!({
            "status": "degraded",
            "reason": crate::telemetry::sanitize::sanitize(&e.message),
            "agent": {
                "code": e.code,
                "command": e.context.get("command"),
                "reason": e.context.get("reason"),
            },
        }),
    };
    if !deep {
        return Json(body).into_response();
    }
    let sessions = state.bridge.sessions();
    let counts = json!({
        "sessions": sessions.len(),
        "activePrompts": sessions.iter().filter(|s| s.is_running()).count(),
        "pendingPermissions": sessions.iter().map(|s| s.pending_permission_count()).sum::<usize>(),
        "childrenAlive": state.bridge.live_children(),
        "draining": state.bridge.is_draining(),
        // The runtime's count: `server.worker_threads`, or one per CPU for its default, 0.
        "workers": tokio::runtime::Handle::current().metrics().num_workers(),
        "plugins": crate::plugins::current().map_or(Value::Array(Vec::new()), |set| set.health()),
    });
    if let (Value::Object(b), Value::Object(c)) = (&mut body, counts) {
        b.extend(c);
    }
    // qwen serve's contract: a failing deep probe is 503 with the same body.
    let status = if unstartable.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/capabilities", tag = "daemon",
    responses((status = 200, description = "What this daemon implements", body = super::schema::Capabilities)))]
pub async fn capabilities(State(state): State<AppState>) -> Json<Value> {
    let b = &state.bridge;
    let l = &b.config.limits;
    Json(json!({
        "v": 1,
        "protocolVersions": {"current": "v1", "supported": ["v1"]},
        "mode": "daemon",
        "features": [
            "session_create", "session_load", "session_prompt", "session_events", "session_cancel",
            "session_permission_vote", "non_blocking_prompt", "typed_event_schema", "session_heartbeat",
            "pending_prompts", "session_close", "session_status", "workspace_sessions",
            "session_resume", "session_metadata", "session_set_model", "session_approval_mode_control",
            "session_context", "session_transcript", "session_transcript_pagination", "session_export",
            "permission_vote", "workspace_file_read", "workspace_file_read_cursor", "workspace_file_bytes",
        ],
        // ACP agents choose their own model services: none are selectable through the daemon.
        "modelServices": [],
        "workspaceCwd": b.primary().cwd_str(),
        // `acp`: ACP over HTTP+SSE and WebSocket at `/acp` and `/workspaces/{id}/acp`.
        "transports": ["rest", "acp"],
        "policy": {"permission": "first-responder"},
        "limits": {
            "maxPendingPromptsPerSession": l.max_pending_prompts_per_session,
            "maxSessionsPerWorkspace": l.max_sessions_per_workspace,
            "maxTotalSessions": l.max_sessions,
        },
        "workspaces": b.workspaces.iter().map(|w| json!({"id": w.id, "cwd": w.cwd_str(), "primary": w.primary, "trusted": true})).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    /// An absolute path inside a configured workspace (default: the primary workspace).
    cwd: Option<String>,
    /// `single` (default: attach to the workspace's session) or `thread` (always create).
    #[schema(pattern = "^(single|thread)$")]
    session_scope: Option<String>,
    /// Attach to this session, or restore it through the agent's `session/load`.
    #[schema(pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._:-]{1,256}$")]
    session_id: Option<String>,
    /// Passed to the agent's `session/new`; trace-context keys are the daemon's.
    #[serde(rename = "_meta")]
    #[schema(value_type = Option<Object>)]
    meta: Option<Meta>,
    /// Applied once the session is created or attached, as `POST /session/{id}/approval-mode`
    /// does (a session created for this request is closed again when the switch fails).
    approval_mode: Option<String>,
}

/// How a session-scoped route treats `X-Qwen-Client-Id`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientHeader {
    /// Part of the route's contract: when present it must be one this session issued (400
    /// `invalid_client_id` otherwise).
    Checked,
    /// Not part of the route's contract (status, close, pending list): never refused, recorded
    /// only when this session issued it, so a backend still sees who asked.
    Noted,
}

/// The session a session-scoped request acts on, and its validated client. Every route under
/// `/session/{id}` goes through here, so each of their server spans carries `session.id`,
/// `acpd.workspace.id` and (when known) `acpd.client.id`: an operator filtering a backend by
/// session finds the cancel, vote, status and stream requests next to the prompts.
pub(super) fn session_scope(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    client: ClientHeader,
) -> Result<(std::sync::Arc<Session>, Option<String>)> {
    let s = state.bridge.session(id)?;
    record_session(&s);
    let header = client_header(headers);
    let client = match client {
        ClientHeader::Checked => s.check_client(header)?,
        ClientHeader::Noted => s.issued_client(header),
    };
    if let Some(c) = &client {
        request_fact(CLIENT_ID, c);
    }
    Ok((s, client))
}

/// The session's facts on the request span, once it is known to exist (an id that names no
/// session is not recorded: it is client input, and already in `url.path`).
fn record_session(s: &Session) {
    session_fact(&s.id);
    request_fact(WORKSPACE_ID, &s.workspace.id);
}

fn session_body(s: &Session, attached: bool, client_id: &str) -> SessionInfo {
    SessionInfo {
        session_id: s.id.clone(),
        workspace_cwd: s.workspace.cwd_str().to_string(),
        attached,
        client_id: client_id.to_string(),
        created_at: time::rfc3339(s.created_at),
        last_event_id: None,
        event_epoch: None,
        state: None,
    }
}

#[utoipa::path(post, path = "/session", tag = "sessions",
    request_body(content = CreateBody, description = "An empty body is `{}`"),
    responses(
        (status = 200, description = "Created or attached", body = SessionInfo),
        (status = 400, description = "`invalid_json`, `invalid_request`, `workspace_mismatch`, `invalid_session_id`, `invalid_approval_mode`", body = ErrorBody),
        (status = 409, description = "`approval_mode_unsupported`: an `approvalMode` for an agent that announced no modes", body = ErrorBody),
        (status = 502, description = "The agent failed `session/new` (`agent_error`, `agent_exited`)", body = ErrorBody),
        (status = 503, description = "`session_limit_exceeded`, `agent_unavailable` (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Json<SessionInfo>> {
    let scope = match body.session_scope.as_deref() {
        None | Some("single") => CreateScope::Single,
        Some("thread") => CreateScope::Thread,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "sessionScope must be \"single\" or \"thread\", got {other:?}"
            )));
        }
    };
    let ws = state.bridge.workspace_for_cwd(body.cwd.as_deref())?;
    let created = state
        .bridge
        .create_session(
            ws,
            scope,
            body.session_id.as_deref(),
            client_meta(body.meta),
            client_header(&headers),
        )
        .await?;
    if let Some(mode) = body.approval_mode.as_deref()
        && let Err(e) =
            super::session_ops::apply_mode(&state, &created.session, mode, Some(&created.client_id))
                .await
    {
        // An error names no session: one created for this request is not left behind.
        if !created.attached {
            let _ = state.bridge.close_session(&created.session.id);
        }
        return Err(e);
    }
    Ok(Json(session_body(
        &created.session,
        created.attached,
        &created.client_id,
    )))
}

#[utoipa::path(post, path = "/session/{id}/load", tag = "sessions",
    params(("id" = String, Path, description = "Session id", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._:-]{1,256}$")),
    request_body(content = Empty, description = "A JSON object (ignored); an empty body is `{}`"),
    responses(
        (status = 200, description = "Loaded (or already live); `lastEventId`, `eventEpoch` and `state` (as `GET /session/{id}/context` has it) set", body = SessionInfo),
        (status = 400, description = "`invalid_json`, `invalid_request`, `invalid_session_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 410, description = "`session_not_restorable`: the agent cannot load sessions", body = ErrorBody),
        (status = 502, description = "The agent failed `session/load`", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`", body = ErrorBody),
    ))]
pub async fn load_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_): JsonBody<serde_json::Map<String, Value>>,
) -> Result<Json<SessionInfo>> {
    let s = state.bridge.load_session(&id, None).await?;
    record_session(&s);
    let client_id = s.attach_client(client_header(&headers));
    request_fact(CLIENT_ID, &client_id);
    let mut body = session_body(&s, true, &client_id);
    body.last_event_id = Some(s.bus.last_id());
    body.event_epoch = Some(s.bus.epoch().to_string());
    body.state = Some(s.ctx.state());
    Ok(Json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PromptBody {
    /// ACP `ContentBlock`s (`{"type":"text","text":"..."}`, `image`, `audio`, `resource_link`,
    /// `resource`), at least one.
    #[schema(schema_with = super::openapi::content_blocks)]
    prompt: Vec<Value>,
    /// Passed to the agent's `session/prompt`; trace-context keys are the daemon's.
    #[serde(rename = "_meta")]
    #[schema(value_type = Option<Object>)]
    meta: Option<Meta>,
}

#[utoipa::path(post, path = "/session/{id}/prompt", tag = "prompts",
    params(("id" = String, Path, description = "Session id"), ("X-Qwen-Client-Id" = Option<String>, Header, description = "The client id the daemon issued for this session", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = PromptBody),
    responses(
        (status = 202, description = "Queued; the turn's events arrive on SSE", body = PromptAccepted),
        (status = 400, description = "`invalid_json`, `invalid_request`, `invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 503, description = "`prompt_queue_full` (with `limit`, `pendingCount`, `Retry-After`); `session_limit_exceeded` when the prompt would wake a dormant session (restored from the journal) past the session limits", body = ErrorBody),
    ))]
pub async fn prompt(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PromptBody>,
) -> Result<Response> {
    path_marks::mark(Step::Handler);
    let (s, client) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    if body.prompt.is_empty() {
        return Err(ApiError::invalid_request(
            "prompt must contain at least one content block",
        ));
    }
    let blocks: Vec<ContentBlock> = super::body::prompt_blocks(body.prompt)?;
    path_marks::mark(Step::Blocks);
    state.bridge.admit_wake(&s)?;
    let (prompt_id, last) = s.enqueue(Prompt::new(blocks, client_meta(body.meta), client))?;
    request_fact(PROMPT_ID, &prompt_id);
    let body = PromptAccepted {
        prompt_id,
        last_event_id: last,
        event_epoch: s.bus.epoch().to_string(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[utoipa::path(post, path = "/session/{id}/cancel", tag = "prompts",
    params(("id" = String, Path, description = "Session id"), ("X-Qwen-Client-Id" = Option<String>, Header, description = "The client id the daemon issued for this session", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = Empty, description = "A JSON object (ignored); an empty body is `{}`"),
    responses(
        (status = 204, description = "The running prompt (if any) is cancelled"),
        (status = 400, description = "`invalid_json`, `invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_): JsonBody<serde_json::Map<String, Value>>,
) -> Result<StatusCode> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    if let Some(prompt) = s.cancel_running() {
        request_fact(PROMPT_ID, &prompt);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct VoteBody {
    /// `{"outcome":"selected","optionId":"..."}` or `{"outcome":"cancelled"}`.
    #[schema(value_type = Object)]
    outcome: Value,
}

#[utoipa::path(post, path = "/session/{id}/permission/{request_id}", tag = "prompts",
    params(("id" = String, Path, description = "Session id"),
           ("request_id" = String, Path, description = "The `requestId` of a `permission_request` event"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = "The client id the daemon issued for this session", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = VoteBody),
    responses(
        (status = 200, description = "Vote taken (first responder wins)", body = Empty),
        (status = 400, description = "`invalid_json`, `invalid_request`, `invalid_option_id`, `invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`, `permission_not_pending`", body = ErrorBody),
    ))]
pub async fn vote(
    State(state): State<AppState>,
    Path((id, request_id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<VoteBody>,
) -> Result<Json<Empty>> {
    let (s, client) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    let voted = s.vote(&request_id, &body.outcome, client.as_deref())?;
    // Recorded once the request is known to be pending: a path segment that names nothing
    // is client input, already in `url.path`.
    request_fact(PERMISSION_REQUEST_ID, &request_id);
    request_fact(PERMISSION_DECISION, &voted.decision);
    if let Some(kind) = &voted.option_kind {
        request_fact(PERMISSION_OPTION_KIND, kind);
    }
    if let Some(prompt) = &voted.prompt_id {
        request_fact(PROMPT_ID, prompt);
    }
    Ok(Json(Empty {}))
}

#[utoipa::path(get, path = "/session/{id}/pending-prompts", tag = "prompts",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The running prompt, then the queue", body = super::schema::PendingPrompts),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn pending_prompts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Noted)?;
    Ok(Json(json!({"pendingPrompts": s.pending_prompts()})))
}

#[utoipa::path(delete, path = "/session/{id}/pending-prompts/{prompt_id}", tag = "prompts",
    params(("id" = String, Path, description = "Session id"),
           ("prompt_id" = String, Path, description = "A queued prompt's id"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = "The client id the daemon issued for this session", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "Removed from the queue (`pending_prompt_completed` with state `removed`)", body = PendingRemoved),
        (status = 400, description = "`invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`, `prompt_not_found`", body = ErrorBody),
        (status = 409, description = "`prompt_running`: cancel it instead", body = ErrorBody),
    ))]
pub async fn delete_pending(
    State(state): State<AppState>,
    Path((id, prompt_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<PendingRemoved>> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    s.remove_queued(&prompt_id)?;
    request_fact(PROMPT_ID, &prompt_id);
    Ok(Json(PendingRemoved { removed: true }))
}

#[utoipa::path(post, path = "/session/{id}/heartbeat", tag = "sessions",
    params(("id" = String, Path, description = "Session id"), ("X-Qwen-Client-Id" = String, Header, description = "The client id the daemon issued for this session (required here)", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "The client is live", body = HeartbeatBody),
        (status = 400, description = "`invalid_client_id` (the header is required here)", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<HeartbeatBody>> {
    let (s, client) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    let client = client
        .ok_or_else(|| ApiError::new(400, "invalid_client_id", "X-Qwen-Client-Id is required"))?;
    Ok(Json(HeartbeatBody {
        session_id: s.id.clone(),
        client_id: client,
        last_seen_at: time::rfc3339(std::time::SystemTime::now()),
    }))
}

#[utoipa::path(get, path = "/session/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Session status", body = super::schema::SessionStatus),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Noted)?;
    Ok(Json(s.status()))
}

#[utoipa::path(delete, path = "/session/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Closed: `session_closed` is published, then its streams end"),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn close(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    // Recorded before the close removes it; a concurrent close still answers 404 below.
    session_scope(&state, &id, &headers, ClientHeader::Noted)?;
    state.bridge.close_session(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct ListQuery {
    size: Option<i64>,
}

#[utoipa::path(get, path = "/workspace/{id}/sessions", tag = "sessions",
    params(("id" = String, Path, description = "Workspace id, or its URL-encoded absolute path"),
           ("size" = Option<i64>, Query, description = "Page size, clamped to 1..=1000 (default 100)")),
    responses(
        (status = 200, description = "The workspace's sessions", body = super::schema::WorkspaceSessions),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
    ))]
pub async fn workspace_sessions(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let ws = state.bridge.workspace(&key).ok_or_else(|| {
        ApiError::new(404, "workspace_not_found", "No such workspace")
            .with("workspace", key.as_str())
    })?;
    let size = q.size.unwrap_or(100).clamp(1, 1000) as usize;
    let sessions: Vec<Value> = state
        .bridge
        .sessions()
        .into_iter()
        .filter(|s| s.workspace.id == ws.id)
        .take(size)
        .map(|s| {
            let st = s.status();
            json!({"sessionId": s.id, "workspaceCwd": ws.cwd_str(), "createdAt": st["createdAt"], "state": st["state"],
                   "activePromptId": st["activePromptId"], "lastEventId": st["lastEventId"]})
        })
        .collect();
    Ok(Json(json!({"sessions": sessions})))
}

pub async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "Not found")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(405, "method_not_allowed", "Method not allowed")
}

#[utoipa::path(get, path = "/metrics", tag = "telemetry",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state.telemetry.prometheus();
    crate::alloc_count::append_prometheus(&mut body);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[utoipa::path(get, path = "/debug/traces", tag = "telemetry",
    responses((status = 200, description = "The embedded trace view (HTML; data from `/debug/traces.json`)", content_type = "text/html", body = String)))]
pub async fn trace_page() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::telemetry::view::page(),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracesQuery {
    trace_id: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/debug/traces.json", tag = "telemetry",
    params(("traceId" = Option<String>, Query, description = "One trace, whole"),
           ("limit" = Option<i64>, Query, description = "Recent traces to list, clamped to 1..=500 (default 50)")),
    responses(
        (status = 200, description = "Recent traces (after redaction), or one trace", body = Object),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 404, description = "`trace_not_found`", body = ErrorBody),
    ))]
pub async fn traces_json(
    State(state): State<AppState>,
    Query(q): Query<TracesQuery>,
) -> Result<Json<Value>> {
    let ring = &state.telemetry.ring;
    match q.trace_id {
        Some(id) => ring.trace_json(&id).map(Json).ok_or_else(|| {
            ApiError::new(404, "trace_not_found", "No such trace in the view")
                .with("traceId", id.as_str())
        }),
        None => Ok(Json(
            ring.list_json(q.limit.unwrap_or(50).clamp(1, 500) as usize),
        )),
    }
}

/// `POST /admin/plugins/reload`: loads and initialises the configured plugin set and swaps it
/// in; a set that fails leaves the running one in place (422). Needs the token: an admin
/// route is never open, even on loopback.
#[utoipa::path(post, path = "/admin/plugins/reload", tag = "plugins",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new plugin set is live", body = super::schema::Reloaded),
        (status = 403, description = "`token_required`: admin routes need a configured token", body = ErrorBody),
        (status = 422, description = "`plugin_reload_failed`: the running set is kept", body = ErrorBody),
        (status = 503, description = "`plugins_unavailable`", body = ErrorBody),
    ))]
pub async fn reload_plugins(State(state): State<AppState>) -> Result<Json<Value>> {
    if state.bridge.config.server.token.is_none() {
        return Err(ApiError::new(
            403,
            "token_required",
            "Admin routes need a configured token (--token or ACPD_TOKEN)",
        ));
    }
    let Some(host) = crate::plugins::host().cloned() else {
        return Err(ApiError::new(
            503,
            "plugins_unavailable",
            "This daemon runs no plugin host",
        ));
    };
    match tokio::task::spawn_blocking(move || host.reload()).await {
        Ok(Ok(set)) => Ok(Json(
            json!({"generation": set.generation, "plugins": set.health()}),
        )),
        Ok(Err(e)) => Err(ApiError::new(422, "plugin_reload_failed", e.0)),
        Err(e) => Err(ApiError::new(500, "internal_error", e.to_string())),
    }
}

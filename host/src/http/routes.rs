//! Handlers: validate, call the bridge, map the result. Nothing here waits on a turn.

use agent_client_protocol::v1::schema::{ContentBlock, Meta};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::JsonBody;
use super::{AppState, time};
use crate::bridge::{CreateScope, Prompt, Session};
use crate::error::ApiError;
use crate::telemetry::semconv::{CLIENT_ID, PROMPT_ID, WORKSPACE_ID};
use crate::telemetry::spans::{request_fact, session_fact};

type Result<T> = std::result::Result<T, ApiError>;

/// `_meta` keys the daemon owns (trace context): a client may not set them.
const RESERVED_META: &[&str] = &["traceparent", "tracestate", "baggage"];

fn client_meta(meta: Option<Meta>) -> Meta {
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

pub async fn health(State(state): State<AppState>, Query(q): Query<HealthQuery>) -> Json<Value> {
    let deep = q.deep.as_deref().is_some_and(|d| d == "1" || d == "true");
    if !deep {
        return Json(json!({"status": "ok"}));
    }
    let sessions = state.bridge.sessions();
    Json(json!({
        "status": "ok",
        "sessions": sessions.len(),
        "activePrompts": sessions.iter().filter(|s| s.is_running()).count(),
        "pendingPermissions": sessions.iter().map(|s| s.pending_permission_count()).sum::<usize>(),
        "childrenAlive": state.bridge.live_children(),
        "draining": state.bridge.is_draining(),
        "plugins": crate::plugins::current().map_or(Value::Array(Vec::new()), |set| set.health()),
    }))
}

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
        ],
        "workspaceCwd": b.primary().cwd_str(),
        "transports": ["rest"],
        "policy": {"permission": "first-responder"},
        "limits": {
            "maxPendingPromptsPerSession": l.max_pending_prompts_per_session,
            "maxSessionsPerWorkspace": l.max_sessions_per_workspace,
            "maxTotalSessions": l.max_sessions,
        },
        "workspaces": b.workspaces.iter().map(|w| json!({"id": w.id, "cwd": w.cwd_str(), "primary": w.primary, "trusted": true})).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    cwd: Option<String>,
    session_scope: Option<String>,
    session_id: Option<String>,
    #[serde(rename = "_meta")]
    meta: Option<Meta>,
}

/// The session, recorded on the request span once it is known to exist.
fn found(state: &AppState, id: &str) -> Result<std::sync::Arc<Session>> {
    let s = state.bridge.session(id)?;
    session_fact(&s.id);
    request_fact(WORKSPACE_ID, &s.workspace.id);
    Ok(s)
}

fn checked_client(s: &Session, headers: &HeaderMap) -> Result<Option<String>> {
    let client = s.check_client(client_header(headers))?;
    if let Some(c) = &client {
        request_fact(CLIENT_ID, c);
    }
    Ok(client)
}

fn session_body(s: &Session, attached: bool, client_id: &str) -> Value {
    json!({
        "sessionId": s.id,
        "workspaceCwd": s.workspace.cwd_str(),
        "attached": attached,
        "clientId": client_id,
        "createdAt": time::rfc3339(s.created_at),
    })
}

pub async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Json<Value>> {
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
    Ok(Json(session_body(
        &created.session,
        created.attached,
        &created.client_id,
    )))
}

pub async fn load_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_): JsonBody<Value>,
) -> Result<Json<Value>> {
    let s = state.bridge.load_session(&id, None).await?;
    let client_id = s.attach_client(client_header(&headers));
    let mut body = session_body(&s, true, &client_id);
    body["lastEventId"] = json!(s.bus.last_id());
    Ok(Json(body))
}

#[derive(Deserialize)]
pub struct PromptBody {
    prompt: Vec<Value>,
    #[serde(rename = "_meta")]
    meta: Option<Meta>,
}

pub async fn prompt(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PromptBody>,
) -> Result<Response> {
    let s = found(&state, &id)?;
    let client = checked_client(&s, &headers)?;
    if body.prompt.is_empty() {
        return Err(ApiError::invalid_request(
            "prompt must contain at least one content block",
        ));
    }
    let blocks = body
        .prompt
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            serde_json::from_value::<ContentBlock>(b).map_err(|e| {
                ApiError::invalid_request(format!("prompt[{i}] is not an ACP ContentBlock: {e}"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (prompt_id, last) = s.enqueue(Prompt::new(blocks, client_meta(body.meta), client))?;
    request_fact(PROMPT_ID, &prompt_id);
    let body = json!({"promptId": prompt_id, "lastEventId": last, "eventEpoch": s.bus.epoch()});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(_): JsonBody<Value>,
) -> Result<StatusCode> {
    let s = state.bridge.session(&id)?;
    s.check_client(client_header(&headers))?;
    s.cancel_running();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct VoteBody {
    outcome: Value,
}

pub async fn vote(
    State(state): State<AppState>,
    Path((id, request_id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<VoteBody>,
) -> Result<Json<Value>> {
    let s = found(&state, &id)?;
    let client = checked_client(&s, &headers)?;
    s.vote(&request_id, &body.outcome, client.as_deref())?;
    Ok(Json(json!({})))
}

pub async fn pending_prompts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let s = state.bridge.session(&id)?;
    Ok(Json(json!({"pendingPrompts": s.pending_prompts()})))
}

pub async fn delete_pending(
    State(state): State<AppState>,
    Path((id, prompt_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    let s = state.bridge.session(&id)?;
    s.check_client(client_header(&headers))?;
    s.remove_queued(&prompt_id)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let s = state.bridge.session(&id)?;
    let client = s
        .check_client(client_header(&headers))?
        .ok_or_else(|| ApiError::new(400, "invalid_client_id", "X-Qwen-Client-Id is required"))?;
    Ok(Json(
        json!({"sessionId": s.id, "clientId": client, "lastSeenAt": time::rfc3339(std::time::SystemTime::now())}),
    ))
}

pub async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    Ok(Json(state.bridge.session(&id)?.status()))
}

pub async fn close(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    state.bridge.close_session(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct ListQuery {
    size: Option<usize>,
}

pub async fn workspace_sessions(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let ws = state.bridge.workspace(&key).ok_or_else(|| {
        ApiError::new(404, "workspace_not_found", "No such workspace")
            .with("workspace", key.as_str())
    })?;
    let size = q.size.unwrap_or(100).clamp(1, 1000);
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

pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.telemetry.prometheus();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

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
    limit: Option<usize>,
}

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
        None => Ok(Json(ring.list_json(q.limit.unwrap_or(50).clamp(1, 500)))),
    }
}

/// `POST /admin/plugins/reload`: loads and initialises the configured plugin set and swaps it
/// in; a set that fails leaves the running one in place (422). Needs the token: an admin
/// route is never open, even on loopback.
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

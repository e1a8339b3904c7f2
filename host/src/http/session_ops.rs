//! The session operations of `qwen serve`'s stable contract beyond the core: resume, status,
//! context, metadata, model and approval-mode switches, transcript pages, export, the legacy
//! permission vote and the workspace tool catalogue.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::AppState;
use super::body::JsonBody;
use super::extract::{Path, Query};
use super::routes::{ClientHeader, client_header, session_scope};
use super::schema::{
    Empty, ErrorBody, ModeResult, ModelResult, RestoredSession, SessionContextBody,
    SessionMetadata, SessionSummary, TranscriptPage, WorkspaceTools,
};
use crate::bridge::Session;
use crate::bridge::context::{MAX_DISPLAY_NAME, Switch};
use crate::bridge::transcript::{self, ExportHead, Format, PageQuery};
use crate::error::ApiError;
use crate::telemetry::semconv::{CLIENT_ID, PERMISSION_DECISION, PERMISSION_REQUEST_ID};
use crate::telemetry::spans::{request_fact, session_fact};
use crate::time;

type Result<T> = std::result::Result<T, ApiError>;

const CLIENT_PARAM: &str = "The client id the daemon issued for this session";

fn deadline(state: &AppState) -> Duration {
    Duration::from_millis(state.bridge.config.agent.session_timeout_ms)
}

// ---- status and context -------------------------------------------------------------------

/// The contract's `SessionSummary` of a live session.
pub fn summary(s: &Session) -> Value {
    let interactions = s.pending_interactions();
    let running = s.is_running();
    let mut body = json!({
        "sessionId": s.id,
        "workspaceCwd": s.workspace.cwd_str(),
        "createdAt": time::rfc3339(s.created_at),
        "clientCount": s.client_count(),
        "hasActivePrompt": running,
        "activeWorkState": if running { "active" } else { "idle" },
        "isWaitingForPermission": !interactions.is_empty(),
        "isWaitingForUserQuestion": false,
        "pendingInteractionCount": interactions.len(),
        "pendingInteractions": interactions,
    });
    let turn_error = s.ctx.turn_error();
    body["hasTurnError"] = json!(turn_error.is_some());
    if let Some(e) = turn_error {
        body["turnError"] = e;
    }
    if let Some(name) = s.ctx.display_name() {
        body["displayName"] = json!(name);
        body["titleSource"] = json!("manual");
    }
    let prs = s.ctx.prs();
    if !prs.is_empty() {
        body["prs"] = json!(prs);
    }
    body
}

#[utoipa::path(get, path = "/session/{id}/status", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The live session's summary: active prompt, pending permissions as `pendingInteractions`, the last turn's error, client count", body = SessionSummary),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn session_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Noted)?;
    Ok(Json(summary(&s)))
}

#[utoipa::path(get, path = "/session/{id}/context", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "What the agent announced for this session (`models`, `modes`, `configOptions`, `_meta`), kept current from its notifications and acpd's switches", body = SessionContextBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn session_context(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Noted)?;
    Ok(Json(json!({
        "v": 1,
        "sessionId": s.id,
        "workspaceCwd": s.workspace.cwd_str(),
        "state": s.ctx.state(),
    })))
}

// ---- metadata -----------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetadataBody {
    /// Longer than 256 characters is truncated; empty or whitespace only is 400
    /// `invalid_metadata`; absent leaves the name unchanged.
    display_name: Option<String>,
    /// A pull request to bind (merged into the one with the same number).
    pr: Option<PrInput>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrInput {
    #[schema(minimum = 1)]
    number: i64,
    /// `http://` or `https://`, at most 2048 characters.
    #[schema(max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    url: String,
    /// `open`, `merged` or `closed`.
    #[schema(pattern = "^(open|merged|closed)$")]
    state: Option<String>,
}

fn invalid_metadata(message: &str) -> ApiError {
    ApiError::new(400, "invalid_metadata", message)
}

fn check_pr(pr: PrInput) -> Result<Value> {
    if pr.number < 1 {
        return Err(invalid_metadata("pr.number must be an integer >= 1"));
    }
    let scheme_ok = pr
        .url
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        || pr
            .url
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
    if !scheme_ok || pr.url.len() > 2048 {
        return Err(invalid_metadata(
            "pr.url must be an http(s) URL of at most 2048 characters",
        ));
    }
    let mut v = json!({"number": pr.number, "url": pr.url});
    if let Some(st) = pr.state {
        if !["open", "merged", "closed"].contains(&st.as_str()) {
            return Err(invalid_metadata("pr.state must be open, merged or closed"));
        }
        v["state"] = json!(st);
    }
    Ok(v)
}

#[utoipa::path(patch, path = "/session/{id}/metadata", tag = "sessions",
    params(("id" = String, Path, description = "Session id"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = CLIENT_PARAM, pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = MetadataBody),
    responses(
        (status = 200, description = "The session's metadata; `session_metadata_updated` is published", body = SessionMetadata),
        (status = 400, description = "`invalid_metadata`, `invalid_request` (unknown keys), `invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn update_metadata(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<MetadataBody>,
) -> Result<Json<Value>> {
    let (s, client) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    let name = match body.display_name {
        Some(n) if n.trim().is_empty() => {
            return Err(invalid_metadata("displayName must not be empty"));
        }
        Some(n) => Some(n.chars().take(MAX_DISPLAY_NAME).collect::<String>()),
        None => None,
    };
    let pr = body.pr.map(check_pr).transpose()?;
    let changed = name.is_some() || pr.is_some();
    s.ctx.update_metadata(name, pr);
    s.persist_meta();
    let mut result = json!({"sessionId": s.id});
    if let Some(n) = s.ctx.display_name() {
        result["displayName"] = json!(n);
    }
    let prs = s.ctx.prs();
    if !prs.is_empty() {
        result["prs"] = json!(prs);
    }
    if changed {
        let mut event = result.clone();
        if event.get("displayName").is_some() {
            event["titleSource"] = json!("manual");
        }
        s.bus
            .publish("session_metadata_updated", None, event, client.as_deref());
    }
    Ok(Json(result))
}

// ---- model and approval mode --------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelBody {
    #[schema(min_length = 1)]
    model_id: String,
}

/// An agent that does not serve the method it announced (JSON-RPC -32601) cannot switch.
fn unsupported_if_unknown(e: ApiError, what: &'static str, code: &'static str) -> ApiError {
    let method_missing = e.context.get("rpcCode").and_then(Value::as_i64) == Some(-32601);
    if method_missing {
        ApiError::new(
            409,
            code,
            format!("The agent does not serve {what} switches"),
        )
    } else {
        e
    }
}

#[utoipa::path(post, path = "/session/{id}/model", tag = "sessions",
    params(("id" = String, Path, description = "Session id"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = CLIENT_PARAM, pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = ModelBody),
    responses(
        (status = 200, description = "Switched (ACP `session/set_model` when the agent announced `models`, else `session/set_config_option` on its `model` option); `model_switched` is published", body = ModelResult),
        (status = 400, description = "`invalid_request` (no `modelId`), `invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`, `model_not_found` (not among the models the agent announced)", body = ErrorBody),
        (status = 409, description = "`model_switch_unsupported`: the agent announced no way to switch models", body = ErrorBody),
        (status = 502, description = "The agent refused the switch (`agent_error`); `model_switch_failed` is published", body = ErrorBody),
        (status = 410, description = "`session_not_restorable`: a dormant session (restored from the journal) whose agent cannot load sessions", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`; `session_limit_exceeded` when the switch would wake a dormant session past the session limits", body = ErrorBody),
    ))]
pub async fn set_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ModelBody>,
) -> Result<Json<Value>> {
    let (s, client) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    let model = body.model_id;
    if model.is_empty() {
        return Err(ApiError::invalid_request("modelId must not be empty"));
    }
    let switch = s.ctx.model_switch();
    if switch == Switch::Unsupported {
        return Err(ApiError::new(
            409,
            "model_switch_unsupported",
            "The agent announced no models to switch between",
        )
        .with("sessionId", s.id.as_str()));
    }
    if !switch.available().is_empty() && !switch.available().contains(&model) {
        return Err(
            ApiError::new(404, "model_not_found", format!("Unknown model: {model}"))
                .with("sessionId", s.id.as_str())
                .with("availableModels", switch.available().to_vec()),
        );
    }
    let previous = switch.current().map(str::to_string);
    state.bridge.admit_wake(&s)?;
    let agent = s.ensure_agent(true).await?;
    let result = match &switch {
        Switch::ConfigOption { config_id, .. } => agent
            .set_config_option(&s.id, config_id, &model, deadline(&state))
            .await
            .inspect(|r| {
                s.ctx
                    .set_config_value(config_id, &model, r.get("configOptions"))
            }),
        _ => agent
            .set_model(&s.id, &model, deadline(&state))
            .await
            .inspect(|_| s.ctx.set_current_model(&model)),
    };
    match result {
        Ok(answer) => {
            s.persist_meta();
            s.bus.publish(
                "model_switched",
                None,
                json!({"sessionId": s.id, "modelId": model, "previousModelId": previous}),
                client.as_deref(),
            );
            let mut out = json!({});
            if let Some(meta) = answer.get("_meta").filter(|m| m.is_object()) {
                out["_meta"] = meta.clone();
            }
            Ok(Json(out))
        }
        Err(e) => {
            s.bus.publish(
                "model_switch_failed",
                None,
                json!({"sessionId": s.id, "requestedModelId": model, "error": e.message, "code": e.code}),
                client.as_deref(),
            );
            Err(unsupported_if_unknown(
                e,
                "model",
                "model_switch_unsupported",
            ))
        }
    }
}

/// Switches the session's approval mode through the agent (`session/set_mode`, or its `mode`
/// config option) and publishes `approval_mode_changed`. Returns the previous mode.
pub(crate) async fn apply_mode(
    state: &AppState,
    s: &Arc<Session>,
    mode: &str,
    client: Option<&str>,
) -> Result<String> {
    let switch = s.ctx.mode_switch();
    if switch == Switch::Unsupported {
        return Err(ApiError::new(
            409,
            "approval_mode_unsupported",
            "The agent announced no modes to switch between",
        )
        .with("sessionId", s.id.as_str()));
    }
    if !switch.available().iter().any(|m| m == mode) {
        return Err(ApiError::new(
            400,
            "invalid_approval_mode",
            format!("Unknown approval mode: {mode}"),
        )
        .with("availableModes", switch.available().to_vec()));
    }
    let previous = switch.current().unwrap_or_default().to_string();
    state.bridge.admit_wake(s)?;
    let agent = s.ensure_agent(true).await?;
    match &switch {
        Switch::ConfigOption { config_id, .. } => {
            let r = agent
                .set_config_option(&s.id, config_id, mode, deadline(state))
                .await;
            let r = r.map_err(|e| {
                unsupported_if_unknown(e, "approval mode", "approval_mode_unsupported")
            })?;
            s.ctx
                .set_config_value(config_id, mode, r.get("configOptions"));
        }
        _ => {
            agent
                .set_mode(&s.id, mode, deadline(state))
                .await
                .map_err(|e| {
                    unsupported_if_unknown(e, "approval mode", "approval_mode_unsupported")
                })?;
            s.ctx.set_current_mode(mode);
        }
    }
    s.persist_meta();
    s.bus.publish(
        "approval_mode_changed",
        None,
        json!({"sessionId": s.id, "previous": previous, "next": mode, "persisted": false, "originatorClientId": client}),
        client,
    );
    Ok(previous)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModeBody {
    /// One of the mode ids the agent announced (`GET /session/{id}/context`, `state.modes`).
    #[schema(min_length = 1)]
    mode: String,
    /// Accepted; acpd never writes the agent's settings (`persisted` is always false).
    persist: Option<bool>,
    /// Accepted and ignored.
    plan_mode: Option<bool>,
}

#[utoipa::path(post, path = "/session/{id}/approval-mode", tag = "sessions",
    params(("id" = String, Path, description = "Session id"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = CLIENT_PARAM, pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = ModeBody),
    responses(
        (status = 200, description = "Switched through ACP `session/set_mode` (or the agent's `mode` config option); `approval_mode_changed` is published", body = ModeResult),
        (status = 400, description = "`invalid_approval_mode` (not among the agent's modes), `invalid_request`, `invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`approval_mode_unsupported`: the agent announced no modes", body = ErrorBody),
        (status = 502, description = "The agent refused the switch (`agent_error`)", body = ErrorBody),
        (status = 410, description = "`session_not_restorable`: a dormant session (restored from the journal) whose agent cannot load sessions", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`; `session_limit_exceeded` when the switch would wake a dormant session past the session limits", body = ErrorBody),
    ))]
pub async fn set_approval_mode(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ModeBody>,
) -> Result<Json<Value>> {
    let (s, client) = session_scope(&state, &id, &headers, ClientHeader::Checked)?;
    let _ = (body.persist, body.plan_mode);
    let previous = apply_mode(&state, &s, &body.mode, client.as_deref()).await?;
    Ok(Json(json!({
        "sessionId": s.id,
        "mode": body.mode,
        "previous": previous,
        "persisted": false,
    })))
}

// ---- resume -------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResumeBody {
    /// A workspace served by this daemon (default: the primary one).
    cwd: Option<String>,
    /// Applied after the restore, as `POST /session/{id}/approval-mode` does.
    approval_mode: Option<String>,
    /// Echoed back (not persisted).
    source_type: Option<String>,
    /// Echoed back (not persisted).
    source_id: Option<String>,
}

#[utoipa::path(post, path = "/session/{id}/resume", tag = "sessions",
    params(("id" = String, Path, description = "Session id", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._:-]{1,256}$"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = CLIENT_PARAM, pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = ResumeBody, description = "Optional; an empty body is `{}`"),
    responses(
        (status = 200, description = "Restored like `load` (through ACP `session/load` on a child), without historical replay on the event stream", body = RestoredSession),
        (status = 400, description = "`invalid_request`, `invalid_session_id`, `workspace_mismatch`, `invalid_approval_mode`, `invalid_client_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`: the agent knows no such session", body = ErrorBody),
        (status = 409, description = "`approval_mode_unsupported`", body = ErrorBody),
        (status = 410, description = "`session_not_restorable`: the agent cannot load sessions", body = ErrorBody),
        (status = 502, description = "The agent failed `session/load`", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`, `session_limit_exceeded`", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ResumeBody>,
) -> Result<Json<Value>> {
    // A client id that is not one the contract allows is refused (an unknown but well-formed
    // one is replaced by a new id, as on load).
    if let Some(c) = client_header(&headers)
        && !((1..=128).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)))
    {
        return Err(ApiError::new(
            400,
            "invalid_client_id",
            "X-Qwen-Client-Id must be 1-128 of A-Z a-z 0-9 . _ : -",
        ));
    }
    let ws = match body.cwd.as_deref() {
        Some(cwd) => Some(state.bridge.workspace_for_cwd(Some(cwd))?),
        None => None,
    };
    if let (Some(ws), Ok(s)) = (&ws, state.bridge.session(&id))
        && s.workspace.id != ws.id
    {
        return Err(ApiError::new(
            400,
            "workspace_mismatch",
            "The session belongs to another workspace",
        )
        .with("sessionId", id.as_str()));
    }
    let s = state.bridge.resume_session(&id, ws).await?;
    session_fact(&s.id);
    let client_id = s.attach_client(client_header(&headers));
    request_fact(CLIENT_ID, &client_id);
    if let Some(mode) = body.approval_mode.as_deref() {
        apply_mode(&state, &s, mode, Some(&client_id)).await?;
    }
    let mut out = json!({
        "sessionId": s.id,
        "workspaceCwd": s.workspace.cwd_str(),
        "attached": true,
        "clientId": client_id,
        "createdAt": time::rfc3339(s.created_at),
        "hasActivePrompt": s.is_running(),
        "state": s.ctx.state(),
        "lastEventId": s.bus.last_id(),
        "eventEpoch": s.bus.epoch(),
    });
    if let Some(t) = body.source_type {
        out["sourceType"] = json!(t);
    }
    if let Some(i) = body.source_id {
        out["sourceId"] = json!(i);
    }
    Ok(Json(out))
}

// ---- transcript and export ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptQuery {
    cursor: Option<String>,
    limit: Option<String>,
    direction: Option<String>,
    before_record_id: Option<String>,
    at_record_id: Option<String>,
    snapshot: Option<String>,
}

#[utoipa::path(get, path = "/session/{id}/transcript", tag = "sessions",
    params(("id" = String, Path, description = "Session id"),
           ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page; alone"),
           ("limit" = Option<i64>, Query, description = "Records per page, 1-500 (default 100; else 400 `invalid_transcript_limit`)"),
           ("direction" = Option<String>, Query, description = "`backward`: the page ends at the newest record"),
           ("beforeRecordId" = Option<String>, Query, description = "A backward page of the records before this one (`_meta.recordId`)"),
           ("atRecordId" = Option<String>, Query, description = "The forward page starting at this record; needs `snapshot`"),
           ("snapshot" = Option<String>, Query, description = "The transcript snapshot the anchors read from (the session's event epoch)")),
    responses(
        (status = 200, description = "A page of the session's recorded events (id-less envelopes, `_meta.recordId`), from the in-memory event ring: `partial` once older events were evicted", body = TranscriptPage),
        (status = 400, description = "`invalid_transcript_limit`, `invalid_transcript_direction`, `invalid_transcript_cursor`, `invalid_transcript_query`, `invalid_record_id`", body = ErrorBody),
        (status = 404, description = "`session_not_found`, `transcript_record_not_found`", body = ErrorBody),
        (status = 409, description = "`transcript_cursor_stale`, `transcript_snapshot_changed`", body = ErrorBody),
    ))]
pub async fn session_transcript(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<TranscriptQuery>,
) -> Result<Json<Value>> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Noted)?;
    let query = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
        direction: q.direction,
        before_record_id: q.before_record_id,
        at_record_id: q.at_record_id,
        snapshot: q.snapshot,
    };
    transcript::page(&s, transcript::history(&s).as_ref(), &query).map(Json)
}

#[derive(Deserialize)]
pub struct ExportQuery {
    format: Option<String>,
}

#[utoipa::path(get, path = "/session/{id}/export", tag = "sessions",
    params(("id" = String, Path, description = "Session id"),
           ("format" = Option<String>, Query, description = "`html` (default: a readable page), `md`, `json` or `jsonl`")),
    responses(
        (status = 200, description = "The transcript as an attachment (`Content-Disposition`)",
            content((String = "text/html"), (String = "text/markdown"), (Object = "application/json"), (String = "application/jsonl"))),
        (status = 400, description = "`invalid_export_format`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ))]
pub async fn export_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Result<Response> {
    let (s, _) = session_scope(&state, &id, &headers, ClientHeader::Noted)?;
    let format = Format::parse(q.format.as_deref())?;
    let history = transcript::history(&s);
    let records = transcript::all(history.as_ref());
    let title = s.ctx.display_name();
    let cwd = s.workspace.cwd_str();
    let created = time::rfc3339(s.created_at);
    let head = ExportHead {
        session_id: &s.id,
        title: title.as_deref(),
        workspace_cwd: &cwd,
        created_at: &created,
        partial: history.partial(),
    };
    let body = transcript::render(format, &head, &records);
    let safe: String =
        s.id.chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .take(128)
            .collect();
    let disposition = format!(
        "attachment; filename=\"acpd-session-{safe}.{}\"",
        format.extension()
    );
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

// ---- legacy vote and tools ----------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegacyVoteBody {
    /// `{"outcome":"selected","optionId":"..."}` or `{"outcome":"cancelled"}`.
    #[schema(value_type = Object)]
    outcome: Value,
    /// Answers to questions (accepted; ACP permission requests have none).
    #[schema(value_type = Option<Object>)]
    answers: Option<Value>,
}

#[utoipa::path(post, path = "/permission/{request_id}", tag = "prompts",
    params(("request_id" = String, Path, description = "The `requestId` of a `permission_request` event of a session in the primary workspace"),
           ("X-Qwen-Client-Id" = Option<String>, Header, description = "A client id the daemon issued (recorded as the voter when the session issued it)", pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    request_body(content = LegacyVoteBody),
    responses(
        (status = 200, description = "Vote taken (first responder wins)", body = Empty),
        (status = 400, description = "`invalid_request`, `invalid_option_id`, `invalid_client_id` (malformed)", body = ErrorBody),
        (status = 404, description = "`permission_not_pending`", body = ErrorBody),
    ))]
pub async fn legacy_vote(
    State(state): State<AppState>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LegacyVoteBody>,
) -> Result<Json<Empty>> {
    let _ = body.answers;
    let header = client_header(&headers);
    if let Some(h) = header
        && !((1..=128).contains(&h.len())
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)))
    {
        return Err(ApiError::new(
            400,
            "invalid_client_id",
            "X-Qwen-Client-Id is malformed",
        ));
    }
    let primary = state.bridge.primary().id.clone();
    let session = state
        .bridge
        .sessions()
        .into_iter()
        .filter(|s| s.workspace.id == primary)
        .find(|s| s.has_pending_permission(&request_id));
    let Some(s) = session else {
        // The outcome's shape is still checked first, as on the session route.
        Session::check_outcome(&body.outcome)?;
        return Err(ApiError::new(
            404,
            "permission_not_pending",
            "No pending permission request with this id",
        )
        .with("requestId", request_id.as_str()));
    };
    session_fact(&s.id);
    let voter = s.issued_client(header);
    let voted = s.vote(&request_id, &body.outcome, voter.as_deref())?;
    request_fact(PERMISSION_REQUEST_ID, &request_id);
    request_fact(PERMISSION_DECISION, &voted.decision);
    Ok(Json(Empty {}))
}

#[utoipa::path(get, path = "/workspace/tools", tag = "daemon",
    responses(
        (status = 200, description = "ACP has no tool catalogue: `tools` is always empty, and `errors` says why (an agent's tools appear as `tool_call` updates during its turns)", body = WorkspaceTools),
    ))]
pub async fn workspace_tools(State(state): State<AppState>) -> Json<Value> {
    let ws = state.bridge.primary();
    let live = !ws.agents.live().is_empty();
    Json(json!({
        "v": 1,
        "workspaceCwd": ws.cwd_str(),
        "initialized": true,
        "acpChannelLive": live,
        "tools": [],
        "errors": [{
            "kind": "tool_catalog",
            "status": "unknown",
            "error": "ACP agents do not publish a tool catalogue",
            "hint": "An agent's tools appear as tool_call session updates during its turns",
        }],
    }))
}

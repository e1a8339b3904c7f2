//! Response and request shapes for the OpenAPI document (`/openapi.json`). Handlers that build a
//! body from these types serialise them directly; bodies assembled elsewhere (session status,
//! capabilities, pending prompts) are described here and checked against live responses by the
//! schema fuzzer (see RELIABILITY.md).

use serde::Serialize;
use utoipa::ToSchema;

/// The error envelope of every non-2xx response. Further fields carry context (`sessionId`,
/// `limit`, `pendingCount`, ...); `code` values are stable API.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable message (sanitised; may be translated by error plugins).
    pub error: String,
    /// Stable snake_case code, e.g. `invalid_json`, `session_not_found`, `agent_unavailable`.
    pub code: String,
    /// Whether retrying the same request may succeed.
    pub retryable: Option<bool>,
}

/// A created, attached or loaded session.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub workspace_cwd: String,
    /// `true` when the request attached to an existing session.
    pub attached: bool,
    /// The client id minted for this caller: send it back as `X-Qwen-Client-Id`.
    pub client_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// Only on `load`: the last event id, for `Last-Event-ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<u64>,
}

/// A prompt accepted for the session's queue; its turn's events arrive on SSE.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptAccepted {
    pub prompt_id: String,
    /// The last event id before this prompt's events.
    pub last_event_id: u64,
    /// The session's event epoch (`X-Qwen-Event-Epoch`).
    pub event_epoch: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatBody {
    pub session_id: String,
    pub client_id: String,
    /// RFC 3339.
    pub last_seen_at: String,
}

/// An empty object: `POST /session/{id}/permission/{request_id}` answers `{}` (not 204).
#[derive(Serialize, ToSchema)]
pub struct Empty {}

#[derive(ToSchema)]
#[allow(dead_code)] // described, not built: the bridge assembles this body
pub struct Health {
    /// Always `ok` while the daemon serves.
    status: String,
    /// `?deep=1` only.
    sessions: Option<u64>,
    #[schema(rename = "activePrompts")]
    active_prompts: Option<u64>,
    #[schema(rename = "pendingPermissions")]
    pending_permissions: Option<u64>,
    #[schema(rename = "childrenAlive")]
    children_alive: Option<u64>,
    draining: Option<bool>,
    /// Per plugin: name, version, source, sha256, state, instances, hooks (or error).
    plugins: Option<Vec<serde_json::Value>>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionStatus {
    #[schema(rename = "sessionId")]
    session_id: String,
    #[schema(rename = "workspaceCwd")]
    workspace_cwd: String,
    #[schema(rename = "workspaceId")]
    workspace_id: String,
    #[schema(rename = "createdAt")]
    created_at: String,
    /// `idle`, `running`, `died` or `closed`.
    state: String,
    /// The agent child: id, pid, state (`alive`/`exited`), agent name; null before a spawn.
    child: Option<serde_json::Value>,
    #[schema(rename = "activePromptId")]
    active_prompt_id: Option<String>,
    #[schema(rename = "queueLength")]
    queue_length: u64,
    #[schema(rename = "pendingPermissions")]
    pending_permissions: u64,
    clients: u64,
    #[schema(rename = "lastEventId")]
    last_event_id: u64,
    /// Counters of what the session's event bus dropped.
    dropped: serde_json::Value,
    #[schema(rename = "eventEpoch")]
    event_epoch: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PendingPrompt {
    #[schema(rename = "promptId")]
    prompt_id: String,
    text: String,
    /// Unix milliseconds.
    #[schema(rename = "queuedAt")]
    queued_at: u64,
    /// `running` or `queued`.
    state: String,
    #[schema(rename = "originatorClientId")]
    originator_client_id: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PendingPrompts {
    #[schema(rename = "pendingPrompts")]
    pending_prompts: Vec<PendingPrompt>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceSession {
    #[schema(rename = "sessionId")]
    session_id: String,
    #[schema(rename = "workspaceCwd")]
    workspace_cwd: String,
    #[schema(rename = "createdAt")]
    created_at: String,
    state: String,
    #[schema(rename = "activePromptId")]
    active_prompt_id: Option<String>,
    #[schema(rename = "lastEventId")]
    last_event_id: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceSessions {
    sessions: Vec<WorkspaceSession>,
}

/// What the daemon implements (the `qwen serve` capabilities shape).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Capabilities {
    /// Always 1.
    v: u32,
    #[schema(rename = "protocolVersions")]
    protocol_versions: serde_json::Value,
    mode: String,
    features: Vec<String>,
    #[schema(rename = "workspaceCwd")]
    workspace_cwd: String,
    transports: Vec<String>,
    policy: serde_json::Value,
    limits: serde_json::Value,
    workspaces: Vec<serde_json::Value>,
}

/// `POST /admin/plugins/reload`: the new set's generation and per-plugin health.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Reloaded {
    generation: u64,
    plugins: Vec<serde_json::Value>,
}

/// One frame of `GET /session/{id}/events`, as an SSE parser yields it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SseFrame {
    /// The per-session event id (integer >= 1, gapless); absent on synthetic frames
    /// (`replay_complete`, `state_resync_required`, `slow_client_warning`, `client_evicted`).
    #[schema(pattern = "^[1-9][0-9]*$")]
    id: Option<String>,
    /// The event type, e.g. `session_update`, `turn_complete`, `turn_error`.
    event: String,
    /// The JSON envelope `{"id"?, "v": 1, "type", "promptId"?, "data", "originatorClientId"?,
    /// "_meta": {"serverTimestamp"}}`.
    data: String,
}

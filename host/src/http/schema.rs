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
    /// Only on `load`: the session's event epoch (`X-Qwen-Event-Epoch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_epoch: Option<String>,
    /// Only on `load`: what the agent announced (`{_meta?, models?, modes?, configOptions?}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<SessionState>)]
    pub state: Option<serde_json::Value>,
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

/// `DELETE /session/{id}/pending-prompts/{prompt_id}` answers `{"removed": true}` (200, not 204:
/// qwen serve does, and its client reads the body).
#[derive(Serialize, ToSchema)]
pub struct PendingRemoved {
    pub removed: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)] // described, not built: the bridge assembles this body
pub struct Health {
    /// `ok`, or `degraded` when the agent command cannot start (then `reason` and `agent`).
    status: String,
    /// Why the daemon is degraded.
    reason: Option<String>,
    /// The agent command's problem: `code` (`agent_spawn_failed`), `command`, `reason`.
    agent: Option<serde_json::Value>,
    /// `?deep=1` only.
    sessions: Option<u64>,
    #[schema(rename = "activePrompts")]
    active_prompts: Option<u64>,
    #[schema(rename = "pendingPermissions")]
    pending_permissions: Option<u64>,
    #[schema(rename = "childrenAlive")]
    children_alive: Option<u64>,
    draining: Option<bool>,
    /// The async runtime's worker threads (`server.worker_threads`).
    workers: Option<u64>,
    /// Per plugin: name, version, source, sha256, state, instances, hooks (or error),
    /// memoryBytes (linear memory of its idle instances) and startup (loadMs, instantiateMs,
    /// rssBytes: what loading it cost).
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
    /// `idle`, `running`, `died`, `dormant` (restored from the journal after a restart, no child
    /// until loaded) or `closed`.
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
    /// Feature tags: a client checks one before using its operation.
    features: Vec<String>,
    /// Always empty: the agent chooses its model services (see `GET /session/{id}/context`).
    #[schema(rename = "modelServices")]
    model_services: Vec<String>,
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

// ---- the contract's further operations (described here, assembled as JSON by their handlers) --

/// A permission request waiting for a vote (`GET /session/{id}/status`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PendingInteraction {
    #[schema(rename = "requestId")]
    request_id: String,
    /// Always `permission` (ACP agents ask no other questions).
    kind: String,
    /// RFC 3339.
    #[schema(rename = "createdAt")]
    created_at: String,
    title: Option<String>,
    /// `{type: "tool_call", title, kind, content, locations, input}` from the agent's tool call.
    action: Option<serde_json::Value>,
    /// The options the agent offered (`optionId`, `name`, `kind`).
    options: Option<Vec<serde_json::Value>>,
}

/// The contract's `SessionSummary`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionSummary {
    #[schema(rename = "sessionId")]
    session_id: String,
    #[schema(rename = "workspaceCwd")]
    workspace_cwd: String,
    #[schema(rename = "createdAt")]
    created_at: String,
    #[schema(rename = "clientCount")]
    client_count: u64,
    #[schema(rename = "hasActivePrompt")]
    has_active_prompt: bool,
    /// `active` while a prompt runs, else `idle`.
    #[schema(rename = "activeWorkState")]
    active_work_state: String,
    #[schema(rename = "isWaitingForPermission")]
    is_waiting_for_permission: bool,
    #[schema(rename = "isWaitingForUserQuestion")]
    is_waiting_for_user_question: bool,
    #[schema(rename = "pendingInteractionCount")]
    pending_interaction_count: u64,
    #[schema(rename = "pendingInteractions")]
    pending_interactions: Vec<PendingInteraction>,
    /// The last turn ended in an error (`turnError`); cleared by a turn that ends well.
    #[schema(rename = "hasTurnError")]
    has_turn_error: bool,
    /// `{message, code}`.
    #[schema(rename = "turnError")]
    turn_error: Option<serde_json::Value>,
    #[schema(rename = "displayName")]
    display_name: Option<String>,
    /// `manual` once a client named the session.
    #[schema(rename = "titleSource")]
    title_source: Option<String>,
    prs: Option<Vec<serde_json::Value>>,
}

/// `{_meta?, models?, modes?, configOptions?}` as the agent announced them.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionState {
    #[schema(rename = "_meta")]
    meta: Option<serde_json::Value>,
    /// Qwen Code's `{currentModelId, availableModels: [{modelId, name, description?}]}`.
    models: Option<serde_json::Value>,
    /// ACP `SessionModeState`: `{currentModeId, availableModes: [{id, name, description?}]}`.
    modes: Option<serde_json::Value>,
    /// ACP `SessionConfigOption`s.
    #[schema(rename = "configOptions")]
    config_options: Option<Vec<serde_json::Value>>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionContextBody {
    /// Always 1.
    v: u32,
    #[schema(rename = "sessionId")]
    session_id: String,
    #[schema(rename = "workspaceCwd")]
    workspace_cwd: String,
    state: SessionState,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionMetadata {
    #[schema(rename = "sessionId")]
    session_id: String,
    #[schema(rename = "displayName")]
    display_name: Option<String>,
    /// `[{number, url, state?}]`.
    prs: Option<Vec<serde_json::Value>>,
}

/// The agent's `_meta` from its answer, if any.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelResult {
    #[schema(rename = "_meta")]
    meta: Option<serde_json::Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModeResult {
    #[schema(rename = "sessionId")]
    session_id: String,
    mode: String,
    previous: String,
    /// Always false: acpd does not write the agent's settings.
    persisted: bool,
}

/// A resumed session: the session body plus its state and stream position.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RestoredSession {
    #[schema(rename = "sessionId")]
    session_id: String,
    #[schema(rename = "workspaceCwd")]
    workspace_cwd: String,
    attached: bool,
    #[schema(rename = "clientId")]
    client_id: String,
    #[schema(rename = "createdAt")]
    created_at: String,
    #[schema(rename = "hasActivePrompt")]
    has_active_prompt: bool,
    state: SessionState,
    #[schema(rename = "lastEventId")]
    last_event_id: u64,
    #[schema(rename = "eventEpoch")]
    event_epoch: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TranscriptPage {
    /// Always 1.
    v: u32,
    #[schema(rename = "sessionId")]
    session_id: String,
    /// Event envelopes without `id`; `_meta.recordId` names each record.
    events: Vec<serde_json::Value>,
    #[schema(rename = "nextCursor")]
    next_cursor: Option<String>,
    #[schema(rename = "hasMore")]
    has_more: bool,
    #[schema(rename = "startTime")]
    start_time: Option<String>,
    #[schema(rename = "lastUpdated")]
    last_updated: Option<String>,
    /// Present (true) once older events were evicted from the ring.
    partial: Option<bool>,
    #[schema(rename = "replayError")]
    replay_error: Option<String>,
    #[schema(rename = "targetRecordId")]
    target_record_id: Option<String>,
    #[schema(rename = "hasOlder")]
    has_older: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceTools {
    v: u32,
    #[schema(rename = "workspaceCwd")]
    workspace_cwd: String,
    initialized: bool,
    /// The primary workspace has a live agent child.
    #[schema(rename = "acpChannelLive")]
    acp_channel_live: bool,
    /// Always empty: ACP has no tool catalogue.
    tools: Vec<serde_json::Value>,
    /// `[{kind, status, error?, hint?}]`.
    errors: Vec<serde_json::Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceFile {
    /// `file`.
    kind: String,
    path: String,
    content: String,
    /// `utf-8`.
    encoding: String,
    bom: bool,
    /// `lf` or `crlf`.
    #[schema(rename = "lineEnding")]
    line_ending: String,
    #[schema(rename = "sizeBytes")]
    size_bytes: u64,
    #[schema(rename = "returnedBytes")]
    returned_bytes: u64,
    truncated: bool,
    /// `sha256:<64 hex>` of the whole file.
    hash: Option<String>,
    /// `file`, `directory` or null: the .gitignore rule that matches the path.
    #[schema(rename = "matchedIgnore")]
    matched_ignore: Option<String>,
    #[schema(rename = "originalLineCount")]
    original_line_count: Option<u64>,
    #[schema(rename = "nextCursor")]
    next_cursor: Option<String>,
    #[schema(rename = "hasMore")]
    has_more: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceFileBytes {
    /// `file_bytes`.
    kind: String,
    path: String,
    offset: u64,
    #[schema(rename = "sizeBytes")]
    size_bytes: u64,
    #[schema(rename = "returnedBytes")]
    returned_bytes: u64,
    truncated: bool,
    #[schema(rename = "contentBase64")]
    content_base64: String,
    hash: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceStat {
    /// `stat`.
    kind: String,
    path: String,
    /// `file`, `directory`, `symlink` or `other`.
    #[schema(rename = "type")]
    kind_of: String,
    #[schema(rename = "sizeBytes")]
    size_bytes: u64,
    #[schema(rename = "modifiedMs")]
    modified_ms: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceListEntry {
    name: String,
    /// `file`, `directory`, `symlink` or `other`.
    kind: String,
    ignored: bool,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceList {
    /// `list`.
    kind: String,
    path: String,
    entries: Vec<WorkspaceListEntry>,
    truncated: bool,
    /// Always null.
    #[schema(rename = "matchedIgnore")]
    matched_ignore: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WorkspaceGlob {
    /// `glob`.
    kind: String,
    pattern: String,
    cwd: String,
    /// Workspace-relative paths.
    matches: Vec<String>,
    count: u64,
    truncated: bool,
    #[schema(rename = "durationMs")]
    duration_ms: u64,
}

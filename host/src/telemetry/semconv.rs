//! Every attribute, span, metric and log name acpd emits, in one place (OpenTelemetry semantic
//! conventions where one exists, `acpd.*` otherwise). Plain strings: the semconv crate's GenAI
//! constants are deprecated and its experimental ones need a feature.

// HTTP server (stable semconv)
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_ROUTE: &str = "http.route";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const URL_PATH: &str = "url.path";
pub const URL_SCHEME: &str = "url.scheme";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
pub const ERROR_TYPE: &str = "error.type";

// RPC (the ACP client side)
pub const RPC_SYSTEM: &str = "rpc.system";
pub const RPC_METHOD: &str = "rpc.method";
pub const RPC_JSONRPC_ERROR_CODE: &str = "rpc.jsonrpc.error_code";
pub const RPC_JSONRPC_ERROR_MESSAGE: &str = "rpc.jsonrpc.error_message";

// Processes
pub const PROCESS_PID: &str = "process.pid";
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
pub const PROCESS_COMMAND_ARGS: &str = "process.command_args";
pub const PROCESS_EXIT_CODE: &str = "process.exit.code";
pub const PROCESS_SIGNAL: &str = "acpd.process.signal";

// GenAI (daemon-observed tool spans)
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
pub const GEN_AI_TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
pub const GEN_AI_TOOL_TYPE: &str = "acpd.tool.kind";
/// The GenAI `gen_ai.tool.type` key (`function`, `extension`, `datastore`); `GEN_AI_TOOL_TYPE`
/// above is, despite its name, acpd's own ACP-kind key (`TOOL_KIND`).
pub const GEN_AI_TOOL_TYPE_KEY: &str = "gen_ai.tool.type";
/// OpenInference's span classification (Arize Phoenix reads it before any `gen_ai.*` key).
pub const OPENINFERENCE_SPAN_KIND: &str = "openinference.span.kind";

// acpd
pub const SESSION_ID: &str = "session.id";
pub const PROMPT_ID: &str = "acpd.prompt.id";
pub const CLIENT_ID: &str = "acpd.client.id";
pub const WORKSPACE_ID: &str = "acpd.workspace.id";
pub const BRIDGE_OPERATION: &str = "acpd.bridge.operation";
pub const QUEUE_WAIT_MS: &str = "acpd.prompt.queue_wait_ms";
pub const STOP_REASON: &str = "acpd.stop_reason";
pub const CHILD_ID: &str = "acpd.child.id";
pub const CHILD_EXPECTED: &str = "acpd.child.expected";
pub const CHILD_EVENT: &str = "acpd.child.event";
pub const AGENT_NAME: &str = "acpd.agent.name";
pub const AGENT_LOAD_SESSION: &str = "acpd.agent.load_session";
pub const PERMISSION_DECISION: &str = "acpd.permission.decision";
pub const PERMISSION_REQUEST_ID: &str = "acpd.permission.request_id";
pub const TOOL_STATUS: &str = "acpd.tool.status";
/// The ACP `kind` of a tool call (`read`, `edit`, ..., `other`): names the daemon's tool span.
pub const TOOL_KIND: &str = "acpd.tool.kind";
/// The ACP tool call's human-readable `title` (often holds a path: never in a span name).
pub const TOOL_TITLE: &str = "acpd.tool.title";
/// The ACP `kind` of the permission option a vote selected (`allow_once`, `reject_always`, ...).
pub const PERMISSION_OPTION_KIND: &str = "acpd.permission.option_kind";
pub const SSE_REASON: &str = "acpd.sse.reason";
pub const SIGNAL: &str = "acpd.signal";
/// Where a telemetry item was dropped: `export_queue` (lost to OTLP and the view),
/// `export_failed` (in a batch the collector did not take: lost to OTLP only) or `trace_view`.
pub const DROP_STAGE: &str = "acpd.drop.stage";

// Metrics
pub const M_HTTP_DURATION: &str = "http.server.request.duration";
pub const M_HTTP_ACTIVE: &str = "http.server.active_requests";
pub const M_SESSION_ACTIVE: &str = "acpd.session.active";
pub const M_QUEUE_WAIT: &str = "acpd.prompt.queue_wait";
pub const M_PROMPT_DURATION: &str = "acpd.prompt.duration";
pub const M_CANCELLATIONS: &str = "acpd.prompt.cancellations";
pub const M_CHILD_LIFECYCLE: &str = "acpd.child.lifecycle";
pub const M_BRIDGE_ERRORS: &str = "acpd.bridge.errors";
pub const M_SSE_SUBSCRIBERS: &str = "acpd.sse.subscribers";
pub const M_SSE_EVICTIONS: &str = "acpd.sse.evictions";
pub const M_TELEMETRY_DROPPED: &str = "acpd.telemetry.dropped";
pub const M_JOURNAL_DROPPED: &str = "acpd.journal.dropped";
pub const M_JOURNAL_BYTES: &str = "acpd.journal.bytes";
pub const M_ACP_HTTP_DROPPED: &str = "acpd.acp_http.dropped";
/// 1 while the serving threads run real-time, 0 while the daemon's load keeps them fair.
pub const M_SCHED_REALTIME: &str = "acpd.sched.realtime";
pub const M_SCHED_DEMOTIONS: &str = "acpd.sched.demotions";
/// What `/acp`'s bounded stores let go: `resume_event`, `resume_stream`, `idle_connection`,
/// `carried_context`.
pub const ACP_HTTP_REASON: &str = "acpd.acp_http.reason";
/// Why events are missing from the session journal: `total_cap`, `session_cap`, `io_error`
/// (not journaled), `compacted` (removed to keep a session under its cap).
pub const JOURNAL_REASON: &str = "acpd.journal.reason";

/// The semconv buckets for `http.server.request.duration` (seconds).
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Turns and queue waits last seconds to minutes.
pub const PROMPT_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];
/// Opt-in content capture (`telemetry.capture_content`), GenAI semconv names.
pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
pub const GEN_AI_TOOL_CALL_ARGUMENTS: &str = "gen_ai.tool.call.arguments";

//! The telemetry of one turn: `bridge prompt.dispatch` (admission to end, under the request
//! span), `acp session/prompt` (whose context goes to the agent), and the daemon-observed
//! `acpd.tool_call <kind>` and `permission.wait` spans under it.
//!
//! The tool span is the daemon's *observation* of an ACP tool call (from `tool_call` to its
//! final `tool_call_update`), not a tool execution: the agent runs the tool and, when it is
//! instrumented (Qwen Code, the demo agent), emits its own `execute_tool` span for the same
//! `gen_ai.tool.call.id`. A GenAI backend must count that one, once. So the daemon's span has
//! no `gen_ai.operation.name` and is classified `CHAIN` for OpenInference (Phoenix would
//! otherwise call any span with `gen_ai.tool.*` keys a TOOL), keeps `gen_ai.tool.call.id` as the
//! join key to the agent's span, and is named from the bounded ACP `kind`, the free-text title
//! (often a file path) going to `acpd.tool.title`.

use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Instant;

use crate::child::ExitInfo;
use crate::error::ApiError;
use crate::telemetry::semconv::*;
use crate::telemetry::{metrics, spans};

pub struct TurnTrace {
    pub dispatch: Context,
    acp: Option<Context>,
    tools: HashMap<String, Context>,
    admitted: Instant,
    started: Option<Instant>,
    prompt_id: String,
}

impl TurnTrace {
    /// At admission, under the current (request) context.
    pub fn admit(session_id: &str, prompt_id: &str) -> Self {
        let dispatch = spans::start(
            "bridge prompt.dispatch",
            SpanKind::Internal,
            &Context::current(),
            vec![
                KeyValue::new(BRIDGE_OPERATION, "prompt.dispatch"),
                KeyValue::new(SESSION_ID, session_id.to_string()),
                KeyValue::new(PROMPT_ID, prompt_id.to_string()),
            ],
        );
        Self {
            dispatch,
            acp: None,
            tools: HashMap::new(),
            admitted: Instant::now(),
            started: None,
            prompt_id: prompt_id.to_string(),
        }
    }

    /// The prompt's text, when the operator opted into content capture (redaction plugins
    /// see it before it is exported).
    pub fn record_input(&self, text: &str) {
        if crate::telemetry::capture_content() {
            spans::set(
                &self.dispatch,
                KeyValue::new(GEN_AI_INPUT_MESSAGES, text.to_string()),
            );
        }
    }

    /// The turn leaves the queue: records the wait, opens the ACP client span, whose context
    /// goes to the agent with the request. Nothing here calls a plugin: the request is sent
    /// right after this, and [`TurnTrace::enrich`] follows it (see `Session::dispatch`).
    pub fn start(&mut self, session_id: &str, child_id: &str) -> Context {
        let wait = self.admitted.elapsed();
        self.started = Some(Instant::now());
        spans::set(
            &self.dispatch,
            KeyValue::new(QUEUE_WAIT_MS, wait.as_secs_f64() * 1000.0),
        );
        spans::set(
            &self.dispatch,
            KeyValue::new(CHILD_ID, child_id.to_string()),
        );
        metrics().queue_wait.record(wait.as_secs_f64(), &[]);
        // The agent's own telemetry in this trace is attributed to the session and prompt from
        // the moment the request can reach it; `enrich` adds the plugins' attributes.
        self.note_prompt(session_id, child_id, Vec::new());
        let acp = spans::start(
            "acp session/prompt",
            SpanKind::Client,
            &self.dispatch,
            vec![
                KeyValue::new(RPC_SYSTEM, "jsonrpc"),
                KeyValue::new(RPC_METHOD, "session/prompt"),
                KeyValue::new(SESSION_ID, session_id.to_string()),
                KeyValue::new(CHILD_ID, child_id.to_string()),
            ],
        );
        self.acp = Some(acp.clone());
        acp
    }

    /// The `dispatch` hook, once the request is on its way: enrichment for this prompt's
    /// bridge spans and for the agent's own telemetry in its trace. A guest call (and the
    /// wake of the plugins' epoch ticker after a quiet spell) no longer delays the request.
    /// The spans are still open, so they carry it when they end; the agent's items are
    /// processed on the gateway's threads, which see the attributes once this returns.
    pub fn enrich(&self, session_id: &str, child_id: &str) {
        let enriched = match crate::plugins::current() {
            Some(set) if set.has(crate::plugins::Hook::Dispatch) => set.observe(
                crate::plugins::Hook::Dispatch,
                &[
                    (SESSION_ID, session_id.to_string().into()),
                    (CHILD_ID, child_id.to_string().into()),
                ],
            ),
            _ => return,
        };
        if enriched.is_empty() {
            return;
        }
        for kv in &enriched {
            spans::set(&self.dispatch, kv.clone());
        }
        self.note_prompt(session_id, child_id, enriched);
    }

    fn note_prompt(&self, session_id: &str, child_id: &str, enriched: Vec<KeyValue>) {
        if let Some(g) = crate::gateway::current() {
            use opentelemetry::trace::TraceContextExt as _;
            let trace_id = self.dispatch.span().span_context().trace_id().to_bytes();
            g.note_prompt(trace_id, child_id, session_id, &self.prompt_id, enriched);
        }
    }

    /// The context new per-turn spans hang under (ACP span once dispatched).
    pub fn parent(&self) -> &Context {
        self.acp.as_ref().unwrap_or(&self.dispatch)
    }

    /// Opens an `acpd.tool_call <kind>` span at `tool_call` and ends it at a final
    /// `tool_call_update` (see the module comment for why it is not an `execute_tool` span).
    pub fn observe(&mut self, session_id: &str, update: &Value) {
        let kind = update.get("sessionUpdate").and_then(Value::as_str);
        let Some(id) = update.get("toolCallId").and_then(Value::as_str) else {
            return;
        };
        if kind == Some("tool_call") && !self.tools.contains_key(id) {
            let tool_kind = tool_kind(update.get("kind").and_then(Value::as_str));
            let mut attrs = vec![
                KeyValue::new(TOOL_KIND, tool_kind),
                KeyValue::new(GEN_AI_TOOL_CALL_ID, id.to_string()),
                // Every ACP tool call is a function the model called (not an extension or a
                // datastore, the other GenAI values).
                KeyValue::new(GEN_AI_TOOL_TYPE_KEY, "function"),
                KeyValue::new(OPENINFERENCE_SPAN_KIND, "CHAIN"),
                KeyValue::new(SESSION_ID, session_id.to_string()),
            ];
            if let Some(title) = update.get("title").and_then(Value::as_str) {
                attrs.push(KeyValue::new(TOOL_TITLE, title.to_string()));
            }
            if crate::telemetry::capture_content()
                && let Some(input) = update.get("rawInput")
            {
                attrs.push(KeyValue::new(GEN_AI_TOOL_CALL_ARGUMENTS, input.to_string()));
            }
            let cx = spans::start(
                format!("acpd.tool_call {tool_kind}"),
                SpanKind::Internal,
                self.parent(),
                attrs,
            );
            self.tools.insert(id.to_string(), cx);
        }
        let status = update.get("status").and_then(Value::as_str);
        if matches!(status, Some("completed" | "failed"))
            && let Some(cx) = self.tools.remove(id)
        {
            spans::set(
                &cx,
                KeyValue::new(TOOL_STATUS, status.unwrap_or_default().to_string()),
            );
            if status == Some("failed") {
                spans::fail(&cx, "tool call failed");
            }
            spans::end(&cx);
        }
    }

    /// Where a permission request's `permission.wait` span hangs: under the open span of the
    /// tool call it asks about (the wait is part of that call), else under the turn.
    pub fn permission_parent(&self, tool_call_id: &str) -> &Context {
        self.tools
            .get(tool_call_id)
            .unwrap_or_else(|| self.parent())
    }

    /// What the turn's end event tells clients: its trace id (when recorded: the trace view
    /// opens on it) and its duration from admission, in milliseconds.
    pub fn summary(&self) -> (Option<String>, u64) {
        use opentelemetry::trace::TraceContextExt as _;
        let span = self.dispatch.span();
        let sc = span.span_context();
        let trace_id = (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string());
        (trace_id, self.admitted.elapsed().as_millis() as u64)
    }

    /// Ends every span of the turn with its outcome.
    pub fn finish(&mut self, end: &Result<String, ApiError>, death: Option<ExitInfo>) {
        for (_, cx) in self.tools.drain() {
            spans::set(&cx, KeyValue::new(TOOL_STATUS, "unfinished"));
            spans::end(&cx);
        }
        if let Some(exit) = death {
            let attrs = vec![
                KeyValue::new(PROCESS_EXIT_CODE, i64::from(exit.code.unwrap_or(-1))),
                KeyValue::new(PROCESS_SIGNAL, i64::from(exit.signal.unwrap_or(0))),
                KeyValue::new(CHILD_EXPECTED, exit.expected),
            ];
            spans::event(&self.dispatch, "child.exit", attrs.clone());
            if let Some(acp) = &self.acp {
                spans::event(acp, "child.exit", attrs);
            }
        }
        let stop = match end {
            Ok(stop) => stop.clone(),
            Err(e) => {
                for cx in self.acp.iter().chain([&self.dispatch]) {
                    spans::set(cx, KeyValue::new(ERROR_TYPE, e.code));
                    spans::fail(cx, e.message.clone());
                }
                if let Some(acp) = &self.acp
                    && let Some(code) = e.context.get("rpcCode").and_then(Value::as_i64)
                {
                    spans::set(acp, KeyValue::new(RPC_JSONRPC_ERROR_CODE, code));
                    spans::set(
                        acp,
                        KeyValue::new(RPC_JSONRPC_ERROR_MESSAGE, e.message.clone()),
                    );
                }
                "error".to_string()
            }
        };
        spans::set(&self.dispatch, KeyValue::new(STOP_REASON, stop.clone()));
        if let Some(acp) = &self.acp {
            spans::end(acp);
        }
        spans::end(&self.dispatch);
        let elapsed = self
            .started
            .unwrap_or(self.admitted)
            .elapsed()
            .as_secs_f64();
        metrics()
            .prompt_duration
            .record(elapsed, &[KeyValue::new(STOP_REASON, stop.clone())]);
        if stop == "cancelled" {
            metrics().cancellations.add(1, &[]);
        }
    }
}

/// The ACP `ToolKind`s; anything else an agent sends is `other`, so span names stay a small,
/// fixed set whatever the agent puts there.
const TOOL_KINDS: &[&str] = &[
    "read",
    "edit",
    "delete",
    "move",
    "search",
    "execute",
    "think",
    "fetch",
    "switch_mode",
    "other",
];

fn tool_kind(kind: Option<&str>) -> &'static str {
    kind.and_then(|k| TOOL_KINDS.iter().copied().find(|known| *known == k))
        .unwrap_or("other")
}

/// A `permission.wait` span, from the agent's request to the vote or timeout.
pub fn permission_wait(
    parent: &Context,
    session_id: &str,
    request_id: &str,
    prompt_id: Option<&str>,
) -> Context {
    let mut attrs = vec![
        KeyValue::new(SESSION_ID, session_id.to_string()),
        KeyValue::new(PERMISSION_REQUEST_ID, request_id.to_string()),
    ];
    if let Some(p) = prompt_id {
        attrs.push(KeyValue::new(PROMPT_ID, p.to_string()));
    }
    spans::start("permission.wait", SpanKind::Internal, parent, attrs)
}

/// A short bridge span in the current request's trace, linked to the prompt it acts on, with
/// the facts of what it did (`attrs`).
pub fn linked_operation(
    operation: &'static str,
    session_id: &str,
    target: Option<&Context>,
    attrs: Vec<KeyValue>,
) {
    let links = target
        .map(|cx| vec![spans::span_context(cx)])
        .unwrap_or_default();
    let mut all = vec![
        KeyValue::new(BRIDGE_OPERATION, operation),
        KeyValue::new(SESSION_ID, session_id.to_string()),
    ];
    all.extend(attrs);
    let cx = spans::start_linked(
        format!("bridge {operation}"),
        SpanKind::Internal,
        &Context::current(),
        all,
        links,
    );
    spans::end(&cx);
}

#[cfg(test)]
mod tests {
    use super::tool_kind;

    #[test]
    fn tool_kinds_are_a_closed_set() {
        assert_eq!(tool_kind(Some("edit")), "edit");
        assert_eq!(tool_kind(Some("switch_mode")), "switch_mode");
        assert_eq!(tool_kind(None), "other");
        // An agent's invention (or a path) never reaches a span name.
        assert_eq!(tool_kind(Some("Write target/notes.txt")), "other");
    }
}

//! A session's transcript: pages of its recorded events (`GET /session/:id/transcript`) and a
//! readable export (`GET /session/:id/export`). Both read a [`History`]: the session's journal
//! when it has one, else its in-memory event ring (what SSE replays), whose transcript covers
//! what the ring still holds and says `partial` once older events were evicted.

use serde_json::{Value, json};

use super::Session;
use super::events::EventBus;
use crate::error::ApiError;

/// Where recorded events come from.
pub trait History {
    /// Identifies this history's content: a cursor or snapshot from another one is stale.
    fn snapshot(&self) -> String;
    /// The oldest and newest record ids it holds (`first > last` when it holds none).
    fn bounds(&self) -> (u64, u64);
    /// Records with ids in `range`, oldest first, as event envelopes (with their `id`).
    fn read(&self, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Value)>;
    /// Older records were lost (the ring evicted them).
    fn partial(&self) -> bool;
    /// Why records are missing, for `replayError`.
    fn lost(&self) -> String {
        "older events were evicted from the in-memory event ring (limits.event_ring, limits.event_ring_bytes)"
            .into()
    }
}

/// A session's journal, read as a history: every event since the session began (less what
/// compaction removed), whether the session is live or not.
pub struct JournalHistory<'a> {
    pub journal: &'a crate::journal::SessionJournal,
    pub epoch: &'a str,
}

impl History for JournalHistory<'_> {
    fn snapshot(&self) -> String {
        self.epoch.to_string()
    }

    fn bounds(&self) -> (u64, u64) {
        let st = self.journal.state();
        (st.first_id, st.last_id)
    }

    fn read(&self, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Value)> {
        self.journal
            .read_frames(range)
            .into_iter()
            .filter_map(|(id, frame)| super::events::envelope(&frame).map(|e| (id, e)))
            .collect()
    }

    fn partial(&self) -> bool {
        let st = self.journal.state();
        st.first_id > 1 || st.lost.is_some() || st.sealed.is_some()
    }

    fn lost(&self) -> String {
        let st = self.journal.state();
        match (st.lost, st.sealed) {
            (Some(l), _) => l,
            (None, Some(r)) => format!(
                "later events were not journaled ({}); see acpd.journal.dropped",
                r.as_str()
            ),
            (None, None) => "older events are no longer journaled".into(),
        }
    }
}

/// Where a session's transcript and export read: its journal when it has one, else its ring.
pub fn history(session: &Session) -> Box<dyn History + '_> {
    match session.bus.journal() {
        Some(j) => Box::new(JournalHistory {
            journal: j,
            epoch: session.bus.epoch(),
        }),
        None => Box::new(&session.bus),
    }
}

impl History for &EventBus {
    fn snapshot(&self) -> String {
        History::snapshot(*self)
    }
    fn bounds(&self) -> (u64, u64) {
        History::bounds(*self)
    }
    fn read(&self, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Value)> {
        History::read(*self, range)
    }
    fn partial(&self) -> bool {
        History::partial(*self)
    }
}

impl History for EventBus {
    fn snapshot(&self) -> String {
        self.epoch().to_string()
    }

    fn bounds(&self) -> (u64, u64) {
        (self.earliest_retained(), self.last_id())
    }

    fn read(&self, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Value)> {
        self.retained(range)
    }

    fn partial(&self) -> bool {
        self.earliest_retained() > 1
    }
}

/// The event types a transcript holds: the conversation and its outcomes, not queue or stream
/// bookkeeping (`pending_prompt_*`, replay and flow-control frames).
pub const TRANSCRIPT_TYPES: &[&str] = &[
    "session_update",
    "permission_request",
    "permission_resolved",
    "turn_complete",
    "turn_error",
    "prompt_cancelled",
    "model_switched",
    "model_switch_failed",
    "approval_mode_changed",
    "session_metadata_updated",
    "session_died",
];

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 500;
/// A page stops early (with `hasMore`) once its events exceed this many bytes of JSON.
pub const PAGE_BUDGET_BYTES: usize = 4 * 1024 * 1024;

/// The query of `GET /session/:id/transcript`, as received.
#[derive(Debug, Default, Clone)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<String>,
    pub direction: Option<String>,
    pub before_record_id: Option<String>,
    pub at_record_id: Option<String>,
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Forward,
    Backward,
}

/// Where a page starts, once the query is understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Forward from this id (inclusive).
    From(u64),
    /// Backward from before this id (exclusive).
    Before(u64),
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(400, code, message)
}

fn record_id(v: &str, name: &str) -> Result<u64, ApiError> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| bad("invalid_record_id", format!("{name} is not a record id")))
}

fn cursor(snapshot: &str, dir: Dir, at: u64) -> String {
    let d = if dir == Dir::Forward { "f" } else { "b" };
    format!("v1:{snapshot}:{d}:{at}")
}

/// A transcript record: the envelope without its `id` (the contract's id-less replay events),
/// the id kept as `_meta.recordId` for anchors.
fn record(id: u64, mut env: Value) -> Value {
    if let Some(map) = env.as_object_mut() {
        map.remove("id");
        let meta = map.entry("_meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("recordId".into(), json!(id.to_string()));
        }
    }
    env
}

fn is_transcript(env: &Value) -> bool {
    env.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| TRANSCRIPT_TYPES.contains(&t))
}

/// One page, as the contract's `TranscriptPage`.
pub fn page(session: &Session, history: &dyn History, q: &PageQuery) -> Result<Value, ApiError> {
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                bad(
                    "invalid_transcript_limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let snapshot = history.snapshot();
    let anchors = q.before_record_id.is_some() || q.at_record_id.is_some() || q.snapshot.is_some();
    if let Some(d) = q.direction.as_deref()
        && d != "backward"
    {
        return Err(bad(
            "invalid_transcript_direction",
            "direction must be \"backward\"",
        ));
    }
    let (first, last) = history.bounds();
    let mut target = None;
    let (dir, start) = if let Some(c) = q.cursor.as_deref() {
        if q.direction.is_some() || anchors {
            return Err(bad(
                "invalid_transcript_query",
                "cursor cannot be combined with direction, beforeRecordId, atRecordId or snapshot",
            ));
        }
        let parts: Vec<&str> = c.split(':').collect();
        let (snap, d, at) = match parts.as_slice() {
            ["v1", snap, d @ ("f" | "b"), at] => (
                *snap,
                *d,
                at.parse::<u64>()
                    .map_err(|_| bad("invalid_transcript_cursor", "malformed cursor"))?,
            ),
            _ => return Err(bad("invalid_transcript_cursor", "malformed cursor")),
        };
        if snap != snapshot {
            return Err(ApiError::new(
                409,
                "transcript_cursor_stale",
                "The transcript changed since this cursor was issued (daemon restart)",
            ));
        }
        match d {
            "f" => (Dir::Forward, Start::From(at)),
            _ => (Dir::Backward, Start::Before(at)),
        }
    } else {
        if q.direction.is_some() && anchors {
            return Err(bad(
                "invalid_transcript_query",
                "direction cannot be combined with beforeRecordId, atRecordId or snapshot",
            ));
        }
        if q.before_record_id.is_some() && q.at_record_id.is_some() {
            return Err(bad(
                "invalid_transcript_query",
                "beforeRecordId and atRecordId are exclusive",
            ));
        }
        if q.at_record_id.is_some() && q.snapshot.is_none() {
            return Err(bad("invalid_transcript_query", "atRecordId needs snapshot"));
        }
        if q.snapshot.is_some() && q.at_record_id.is_none() && q.before_record_id.is_none() {
            return Err(bad(
                "invalid_transcript_query",
                "snapshot only accompanies atRecordId or beforeRecordId",
            ));
        }
        if let Some(s) = q.snapshot.as_deref()
            && s != snapshot
        {
            return Err(ApiError::new(
                409,
                "transcript_snapshot_changed",
                "The transcript snapshot is no longer current",
            )
            .with("snapshot", snapshot.as_str()));
        }
        if let Some(b) = q.before_record_id.as_deref() {
            (
                Dir::Backward,
                Start::Before(record_id(b, "beforeRecordId")?),
            )
        } else if let Some(a) = q.at_record_id.as_deref() {
            let at = record_id(a, "atRecordId")?;
            let found = at >= first && at <= last && !history.read(at..=at).is_empty();
            if !found {
                return Err(ApiError::new(
                    404,
                    "transcript_record_not_found",
                    "No such record in the transcript",
                )
                .with("recordId", a));
            }
            target = Some(a.to_string());
            (Dir::Forward, Start::From(at))
        } else if q.direction.is_some() {
            (Dir::Backward, Start::Before(last.saturating_add(1)))
        } else {
            (Dir::Forward, Start::From(first))
        }
    };

    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    let mut edge = None; // the id just past the page, in its direction
    match start {
        Start::From(from) => {
            let from = from.max(first);
            let records = if from <= last {
                history.read(from..=last)
            } else {
                Vec::new()
            };
            for (id, env) in records.into_iter().filter(|(_, e)| is_transcript(e)) {
                if events.len() == limit || (bytes >= PAGE_BUDGET_BYTES && !events.is_empty()) {
                    more = true;
                    edge = Some(id);
                    break;
                }
                bytes += env.to_string().len();
                events.push(record(id, env));
            }
        }
        Start::Before(before) => {
            let records = if before > first {
                history.read(first..=before - 1)
            } else {
                Vec::new()
            };
            let mut picked = Vec::new();
            for (id, env) in records.into_iter().rev().filter(|(_, e)| is_transcript(e)) {
                if picked.len() == limit || (bytes >= PAGE_BUDGET_BYTES && !picked.is_empty()) {
                    more = true;
                    break;
                }
                bytes += env.to_string().len();
                picked.push((id, env));
            }
            picked.reverse();
            edge = picked.first().map(|(id, _)| *id);
            events = picked.into_iter().map(|(id, e)| record(id, e)).collect();
        }
    }
    let mut body = json!({
        "v": 1,
        "sessionId": session.id,
        "events": events,
        "hasMore": more,
        "startTime": crate::time::rfc3339(session.created_at),
    });
    if more && let Some(at) = edge {
        body["nextCursor"] = json!(cursor(&snapshot, dir, at));
    }
    if dir == Dir::Backward {
        body["hasOlder"] = json!(more || history.partial());
    }
    if let Some(ts) = last_timestamp(history, last) {
        body["lastUpdated"] = json!(ts);
    }
    if history.partial() {
        body["partial"] = json!(true);
        body["replayError"] = json!(history.lost());
    }
    if let Some(t) = target {
        body["targetRecordId"] = json!(t);
    }
    Ok(body)
}

fn last_timestamp(history: &dyn History, last: u64) -> Option<String> {
    let (_, env) = history.read(last..=last).pop()?;
    let ms = env.pointer("/_meta/serverTimestamp")?.as_u64()?;
    Some(crate::time::rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    ))
}

/// Every transcript record the history holds, oldest first (export).
pub fn all(history: &dyn History) -> Vec<Value> {
    let (first, last) = history.bounds();
    if first > last {
        return Vec::new();
    }
    history
        .read(first..=last)
        .into_iter()
        .filter(|(_, e)| is_transcript(e))
        .map(|(id, e)| record(id, e))
        .collect()
}

// ---- export -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Markdown,
    Json,
    Jsonl,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s.unwrap_or("html") {
            "html" => Ok(Self::Html),
            "md" => Ok(Self::Markdown),
            "json" => Ok(Self::Json),
            "jsonl" => Ok(Self::Jsonl),
            other => Err(bad(
                "invalid_export_format",
                format!("format must be html, md, json or jsonl, got {other:?}"),
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Html => "text/html; charset=utf-8",
            Self::Markdown => "text/markdown; charset=utf-8",
            Self::Json => "application/json",
            Self::Jsonl => "application/jsonl",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Html => "html",
            Self::Markdown => "md",
            Self::Json => "json",
            Self::Jsonl => "jsonl",
        }
    }
}

/// The conversation as a reader sees it: messages (consecutive chunks of one speaker joined)
/// and notes (tool calls, permissions, turn ends, errors, switches).
#[derive(Debug, PartialEq)]
enum Block {
    Message { role: &'static str, text: String },
    Tool { id: String, line: String },
    Note(String),
}

fn content_text(c: &Value) -> String {
    match c.get("type").and_then(Value::as_str) {
        Some("text") => c
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        Some("resource_link") => format!(
            "[link: {}]",
            c.get("uri").and_then(Value::as_str).unwrap_or("")
        ),
        Some("resource") => "[embedded resource]".into(),
        Some(other) => format!("[{other}]"),
        None => String::new(),
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn blocks(records: &[Value]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let say = |out: &mut Vec<Block>, role: &'static str, text: String| {
        if let Some(Block::Message { role: r, text: t }) = out.last_mut()
            && *r == role
        {
            t.push_str(&text);
            return;
        }
        out.push(Block::Message { role, text });
    };
    for r in records {
        let data = &r["data"];
        match r["type"].as_str().unwrap_or("") {
            "session_update" => {
                let u = &data["update"];
                match s(u, "/sessionUpdate") {
                    "user_message_chunk" => say(&mut out, "User", content_text(&u["content"])),
                    "agent_message_chunk" => {
                        say(&mut out, "Assistant", content_text(&u["content"]))
                    }
                    "agent_thought_chunk" => say(&mut out, "Thinking", content_text(&u["content"])),
                    "tool_call" => out.push(Block::Tool {
                        id: s(u, "/toolCallId").to_string(),
                        line: format!(
                            "Tool call: {} ({}, {})",
                            s(u, "/title"),
                            u["kind"].as_str().unwrap_or("other"),
                            u["status"].as_str().unwrap_or("pending")
                        ),
                    }),
                    "tool_call_update" => {
                        let id = s(u, "/toolCallId");
                        if let Some(status) = u["status"].as_str()
                            && let Some(Block::Tool { line, .. }) = out
                                .iter_mut()
                                .rev()
                                .find(|b| matches!(b, Block::Tool { id: i, .. } if i == id))
                            && let Some(open) = line.rfind(", ")
                        {
                            line.truncate(open);
                            line.push_str(&format!(", {status})"));
                        }
                    }
                    "plan" => {
                        let entries: Vec<String> = u["entries"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| format!("[{}] {}", s(e, "/status"), s(e, "/content")))
                            .collect();
                        out.push(Block::Note(format!("Plan: {}", entries.join("; "))));
                    }
                    "current_mode_update" => {
                        out.push(Block::Note(format!("Mode: {}", s(u, "/currentModeId"))))
                    }
                    _ => {}
                }
            }
            "permission_request" => out.push(Block::Note(format!(
                "Permission requested: {}",
                s(data, "/toolCall/title")
            ))),
            "permission_resolved" => {
                let o = &data["outcome"];
                let what = o["optionId"]
                    .as_str()
                    .or(o["outcome"].as_str())
                    .unwrap_or("?");
                out.push(Block::Note(format!("Permission answered: {what}")));
            }
            "turn_complete" => out.push(Block::Note(format!(
                "Turn ended: {}",
                s(data, "/stopReason")
            ))),
            "turn_error" => out.push(Block::Note(format!(
                "Turn failed: {} ({})",
                s(data, "/message"),
                s(data, "/code")
            ))),
            "prompt_cancelled" => out.push(Block::Note("Prompt cancelled".into())),
            "model_switched" => out.push(Block::Note(format!(
                "Model switched to {}",
                s(data, "/modelId")
            ))),
            "model_switch_failed" => out.push(Block::Note(format!(
                "Model switch to {} failed: {}",
                s(data, "/requestedModelId"),
                s(data, "/error")
            ))),
            "approval_mode_changed" => out.push(Block::Note(format!(
                "Approval mode: {} -> {}",
                s(data, "/previous"),
                s(data, "/next")
            ))),
            "session_metadata_updated" => {
                if let Some(n) = data["displayName"].as_str() {
                    out.push(Block::Note(format!("Renamed: {n}")));
                }
            }
            "session_died" => out.push(Block::Note(format!(
                "The agent stopped ({})",
                s(data, "/reason")
            ))),
            _ => {}
        }
    }
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What an export is about.
pub struct ExportHead<'a> {
    pub session_id: &'a str,
    pub title: Option<&'a str>,
    pub workspace_cwd: &'a str,
    pub created_at: &'a str,
    pub partial: bool,
}

pub fn render(format: Format, head: &ExportHead, records: &[Value]) -> String {
    match format {
        Format::Json => json!({
            "v": 1,
            "sessionId": head.session_id,
            "displayName": head.title,
            "workspaceCwd": head.workspace_cwd,
            "createdAt": head.created_at,
            "exportedAt": crate::time::rfc3339(std::time::SystemTime::now()),
            "partial": head.partial,
            "events": records,
        })
        .to_string(),
        Format::Jsonl => {
            let mut out = String::new();
            for r in records {
                out.push_str(&r.to_string());
                out.push('\n');
            }
            out
        }
        Format::Markdown => markdown(head, &blocks(records)),
        Format::Html => html(head, &blocks(records)),
    }
}

fn markdown(head: &ExportHead, blocks: &[Block]) -> String {
    let mut out = format!(
        "# {}\n\n- Session: `{}`\n- Workspace: `{}`\n- Created: {}\n",
        head.title.unwrap_or("Session transcript"),
        head.session_id,
        head.workspace_cwd,
        head.created_at
    );
    if head.partial {
        out.push_str("- Partial: older events were no longer held by the daemon\n");
    }
    for b in blocks {
        match b {
            Block::Message { role, text } => {
                out.push_str(&format!("\n## {role}\n\n{}\n", text.trim_end()));
            }
            Block::Tool { line, .. } | Block::Note(line) => {
                out.push_str(&format!("\n> {line}\n"));
            }
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#1f2328}\
header{border-bottom:1px solid #d0d7de;margin-bottom:1rem}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;font-size:13px}\
dt{color:#59636e}section{margin:1rem 0;padding:.6rem .9rem;border-radius:8px;border:1px solid #d0d7de}\
section h2{font-size:13px;margin:0 0 .3rem;color:#59636e;text-transform:uppercase;letter-spacing:.04em}\
section.user{background:#f6f8fa}section.thinking{color:#59636e;font-style:italic}\
.text{white-space:pre-wrap;word-wrap:break-word}p.note{margin:.4rem 0;font-size:13px;color:#59636e}\
p.warn{color:#9a6700}";

fn html(head: &ExportHead, blocks: &[Block]) -> String {
    let title = escape_html(head.title.unwrap_or("Session transcript"));
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<title>{title}</title><style>{STYLE}</style></head><body>\n<header><h1>{title}</h1><dl>\
<dt>Session</dt><dd><code>{}</code></dd><dt>Workspace</dt><dd><code>{}</code></dd><dt>Created</dt><dd>{}</dd></dl>",
        escape_html(head.session_id),
        escape_html(head.workspace_cwd),
        escape_html(head.created_at),
    );
    if head.partial {
        out.push_str(
            "<p class=\"warn\">Partial: older events were no longer held by the daemon.</p>",
        );
    }
    out.push_str("</header>\n<main>\n");
    for b in blocks {
        match b {
            Block::Message { role, text } => out.push_str(&format!(
                "<section class=\"{}\"><h2>{role}</h2><div class=\"text\">{}</div></section>\n",
                role.to_ascii_lowercase(),
                escape_html(text.trim_end())
            )),
            Block::Tool { line, .. } | Block::Note(line) => {
                out.push_str(&format!("<p class=\"note\">{}</p>\n", escape_html(line)));
            }
        }
    }
    out.push_str("</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(kind: &str, text: &str) -> Value {
        json!({"v": 1, "type": "session_update", "data": {"update": {"sessionUpdate": kind, "content": {"type": "text", "text": text}}}})
    }

    #[test]
    fn chunks_join_into_messages_and_html_is_escaped() {
        let records = vec![
            update("user_message_chunk", "hi <script>alert(1)</script>"),
            update("agent_message_chunk", "Hello "),
            update("agent_message_chunk", "& welcome"),
            json!({"v": 1, "type": "session_update", "data": {"update": {"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "Read a.txt", "kind": "read", "status": "pending"}}}),
            json!({"v": 1, "type": "session_update", "data": {"update": {"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed"}}}),
            json!({"v": 1, "type": "turn_complete", "data": {"stopReason": "end_turn"}}),
        ];
        let b = blocks(&records);
        assert_eq!(
            b[1],
            Block::Message {
                role: "Assistant",
                text: "Hello & welcome".into()
            }
        );
        assert!(
            matches!(&b[2], Block::Tool { line, .. } if line == "Tool call: Read a.txt (read, completed)")
        );
        let head = ExportHead {
            session_id: "s\"1",
            title: Some("<b>t</b>"),
            workspace_cwd: "/w",
            created_at: "now",
            partial: false,
        };
        let page = render(Format::Html, &head, &records);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("hi &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("<title>&lt;b&gt;t&lt;/b&gt;</title>"));
        assert!(page.contains("Hello &amp; welcome"));
        let md = render(Format::Markdown, &head, &records);
        assert!(md.contains("## Assistant\n\nHello & welcome"), "{md}");
        assert!(md.contains("> Turn ended: end_turn"));
        let jsonl = render(Format::Jsonl, &head, &records);
        assert_eq!(jsonl.lines().count(), records.len());
    }
}

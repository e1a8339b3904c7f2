//! Borrowed views over what the daemon sends: one arena string and entries pointing into it.

use crate::bindings::acpd::plugin::types::{AttrRef, StrRef, ValueRef};

/// An attribute value, borrowed from the call's arena.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// An array value, JSON-encoded.
    Array(&'a str),
}

impl<'a> Value<'a> {
    /// The string, for string values.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Any value as text (numbers and booleans formatted, arrays as their JSON).
    pub fn to_text(&self) -> std::borrow::Cow<'a, str> {
        match self {
            Value::Str(s) | Value::Array(s) => (*s).into(),
            Value::Bool(b) => b.to_string().into(),
            Value::Int(i) => i.to_string().into(),
            Value::Double(f) => f.to_string().into(),
        }
    }
}

/// One attribute. `index` is what edits refer to; `record` is the span or log it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub index: u32,
    pub record: u32,
    pub key: &'a str,
    pub value: Value<'a>,
    range: Option<(u32, u32)>,
}

impl Attr<'_> {
    /// `(offset, len)` of a string value in the arena: what [`crate::PatternSet::scan`] takes.
    pub fn value_range(&self) -> Option<(u32, u32)> {
        self.range
    }
}

pub(crate) fn slice(arena: &str, r: StrRef) -> &str {
    let (start, end) = (r.offset as usize, r.offset as usize + r.len as usize);
    arena.get(start..end).unwrap_or("")
}

/// A set of attributes: a whole batch, or one record of it.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    arena: &'a str,
    refs: &'a [AttrRef],
    base: u32,
}

impl<'a> Attrs<'a> {
    pub fn new(arena: &'a str, refs: &'a [AttrRef]) -> Self {
        Self {
            arena,
            refs,
            base: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    pub fn arena(&self) -> &'a str {
        self.arena
    }

    fn attr(&self, i: usize) -> Attr<'a> {
        let r = &self.refs[i];
        let (value, range) = match r.value {
            ValueRef::Str(s) => (Value::Str(slice(self.arena, s)), Some((s.offset, s.len))),
            ValueRef::Boolean(b) => (Value::Bool(b), None),
            ValueRef::Int(v) => (Value::Int(v), None),
            ValueRef::Double(v) => (Value::Double(v), None),
            ValueRef::Array(s) => (Value::Array(slice(self.arena, s)), Some((s.offset, s.len))),
        };
        Attr {
            index: self.base + i as u32,
            record: r.record,
            key: slice(self.arena, r.key),
            value,
            range,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Attr<'a>> + '_ {
        (0..self.refs.len()).map(|i| self.attr(i))
    }

    /// The first attribute named `key`.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.find(key).map(|a| a.value)
    }

    pub fn find(&self, key: &str) -> Option<Attr<'a>> {
        (0..self.refs.len())
            .find(|&i| slice(self.arena, self.refs[i].key) == key)
            .map(|i| self.attr(i))
    }

    /// Attributes whose key starts with `prefix` (e.g. `http.request.header.`).
    pub fn iter_prefix<'p>(&'p self, prefix: &'p str) -> impl Iterator<Item = Attr<'a>> + 'p {
        self.iter().filter(move |a| a.key.starts_with(prefix))
    }

    fn sub(&self, start: usize, end: usize) -> Attrs<'a> {
        Attrs {
            arena: self.arena,
            refs: &self.refs[start..end],
            base: self.base + start as u32,
        }
    }
}

/// Where each record's attributes are: the daemon sends a record's attributes together.
fn record_ranges(refs: &[AttrRef], records: usize) -> Vec<(usize, usize)> {
    let mut ranges = vec![(0, 0); records];
    let mut i = 0;
    while i < refs.len() {
        let r = refs[i].record as usize;
        let start = i;
        while i < refs.len() && refs[i].record as usize == r {
            i += 1;
        }
        if r < records {
            ranges[r] = (start, i);
        }
    }
    ranges
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanMeta {
    pub name: StrRef,
    pub kind: SpanKind,
    pub is_error: bool,
}

/// An export batch of spans.
pub struct SpanBatch<'a> {
    attrs: Attrs<'a>,
    spans: Vec<SpanMeta>,
    ranges: Vec<(usize, usize)>,
}

impl<'a> SpanBatch<'a> {
    pub(crate) fn new(arena: &'a str, refs: &'a [AttrRef], spans: Vec<SpanMeta>) -> Self {
        let ranges = record_ranges(refs, spans.len());
        Self {
            attrs: Attrs::new(arena, refs),
            spans,
            ranges,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn arena(&self) -> &'a str {
        self.attrs.arena
    }

    /// Every attribute of the batch (indexes are what edits refer to).
    pub fn attrs(&self) -> &Attrs<'a> {
        &self.attrs
    }

    pub fn spans(&self) -> impl Iterator<Item = SpanView<'a>> + '_ {
        self.spans.iter().enumerate().map(|(i, m)| {
            let (s, e) = self.ranges[i];
            SpanView {
                index: i as u32,
                meta: *m,
                arena: self.attrs.arena,
                attrs: self.attrs.sub(s, e),
            }
        })
    }
}

pub struct SpanView<'a> {
    pub index: u32,
    meta: SpanMeta,
    arena: &'a str,
    attrs: Attrs<'a>,
}

impl<'a> SpanView<'a> {
    pub fn name(&self) -> &'a str {
        slice(self.arena, self.meta.name)
    }

    /// `(offset, len)` of the name in the arena.
    pub fn name_range(&self) -> (u32, u32) {
        (self.meta.name.offset, self.meta.name.len)
    }

    pub fn kind(&self) -> SpanKind {
        self.meta.kind
    }

    pub fn is_error(&self) -> bool {
        self.meta.is_error
    }

    pub fn attrs(&self) -> &Attrs<'a> {
        &self.attrs
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct LogMeta {
    pub body: StrRef,
    pub severity: u8,
    pub event_name: StrRef,
}

/// An export batch of log records.
pub struct LogBatch<'a> {
    attrs: Attrs<'a>,
    logs: Vec<LogMeta>,
    ranges: Vec<(usize, usize)>,
}

impl<'a> LogBatch<'a> {
    pub(crate) fn new(arena: &'a str, refs: &'a [AttrRef], logs: Vec<LogMeta>) -> Self {
        let ranges = record_ranges(refs, logs.len());
        Self {
            attrs: Attrs::new(arena, refs),
            logs,
            ranges,
        }
    }

    pub fn len(&self) -> usize {
        self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    pub fn arena(&self) -> &'a str {
        self.attrs.arena
    }

    pub fn attrs(&self) -> &Attrs<'a> {
        &self.attrs
    }

    pub fn logs(&self) -> impl Iterator<Item = LogView<'a>> + '_ {
        self.logs.iter().enumerate().map(|(i, m)| {
            let (s, e) = self.ranges[i];
            LogView {
                index: i as u32,
                meta: *m,
                arena: self.attrs.arena,
                attrs: self.attrs.sub(s, e),
            }
        })
    }
}

pub struct LogView<'a> {
    pub index: u32,
    meta: LogMeta,
    arena: &'a str,
    attrs: Attrs<'a>,
}

impl<'a> LogView<'a> {
    pub fn body(&self) -> &'a str {
        slice(self.arena, self.meta.body)
    }

    /// `(offset, len)` of the body in the arena.
    pub fn body_range(&self) -> (u32, u32) {
        (self.meta.body.offset, self.meta.body.len)
    }

    /// OpenTelemetry severity number (1-24; 0 = unset).
    pub fn severity(&self) -> u8 {
        self.meta.severity
    }

    pub fn event_name(&self) -> &'a str {
        slice(self.arena, self.meta.event_name)
    }

    pub fn attrs(&self) -> &Attrs<'a> {
        &self.attrs
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Http,
    Sse,
}

/// An error about to be shown to a client.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    pub surface: Surface,
    /// The daemon's stable code (`session_not_found`, `agent_exited`, ...).
    pub code: String,
    pub status: u16,
    pub message: String,
    pub retry_after: Option<u32>,
    /// The envelope's extra fields (`sessionId`, `limit`, ...).
    pub context: serde_json::Value,
    /// The agent's JSON-RPC error code, when the error came from the agent.
    pub rpc_code: Option<i32>,
}

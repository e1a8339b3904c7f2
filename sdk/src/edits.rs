//! What a plugin answers: sparse edits by index, checked by the daemon before it applies them.

/// An attribute value a plugin writes.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Double(v)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    Replace(u32, AttrValue),
    Remove(u32),
    Upsert(u32, String, AttrValue),
}

/// Edits to the attributes a hook was given.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    pub(crate) list: Vec<Edit>,
}

impl Edits {
    /// Overwrites the value of attribute `index`.
    pub fn replace(&mut self, index: u32, value: impl Into<AttrValue>) {
        self.list.push(Edit::Replace(index, value.into()));
    }

    /// Deletes attribute `index`.
    pub fn remove(&mut self, index: u32) {
        self.list.push(Edit::Remove(index));
    }

    /// Sets `key` on record `record` (0 for request, dispatch and child hooks).
    pub fn upsert(&mut self, record: u32, key: impl Into<String>, value: impl Into<AttrValue>) {
        self.list
            .push(Edit::Upsert(record, key.into(), value.into()));
    }

    /// Replaces attribute `index` (whose text is `text`) with `****` and its last `keep_last`
    /// characters.
    pub fn mask(&mut self, index: u32, text: &str, keep_last: usize) {
        let n = text.chars().count();
        let tail: String = text.chars().skip(n.saturating_sub(keep_last)).collect();
        self.replace(index, format!("****{tail}"));
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Edit> {
        self.list.iter()
    }
}

/// Edits to a span batch: attribute edits plus renames.
#[derive(Debug, Clone, Default)]
pub struct SpanEdits {
    pub attrs: Edits,
    pub(crate) renames: Vec<(u32, String)>,
}

impl SpanEdits {
    pub fn rename(&mut self, span: u32, name: impl Into<String>) {
        self.renames.push((span, name.into()));
    }

    pub fn renames(&self) -> &[(u32, String)] {
        &self.renames
    }
}

/// Edits to a log batch: attribute edits, new bodies, dropped records.
#[derive(Debug, Clone, Default)]
pub struct LogEdits {
    pub attrs: Edits,
    pub(crate) bodies: Vec<(u32, String)>,
    pub(crate) drops: Vec<u32>,
}

impl LogEdits {
    pub fn set_body(&mut self, log: u32, body: impl Into<String>) {
        self.bodies.push((log, body.into()));
    }

    pub fn drop_log(&mut self, log: u32) {
        self.drops.push(log);
    }

    pub fn bodies(&self) -> &[(u32, String)] {
        &self.bodies
    }

    pub fn drops(&self) -> &[u32] {
        &self.drops
    }
}

/// What the client sees instead of the daemon's own wording.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientError {
    /// 400-599.
    pub status: u16,
    /// snake_case, at most 64 bytes.
    pub code: String,
    pub message: String,
    pub retryable: bool,
    pub retry_after: Option<u32>,
}

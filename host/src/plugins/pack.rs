//! Attributes cross the boundary packed (one arena string + flat entries: one guest
//! allocation per call, not one per string) and come back as sparse edits, validated here
//! before anything is applied.

use opentelemetry::logs::AnyValue;
use opentelemetry::{Array, StringValue, Value};

use super::bindings::acpd::plugin::types::{AttrEdit, AttrRef, AttrValue, StrRef, ValueRef};

#[derive(Default)]
pub struct Pack {
    pub arena: String,
    pub attrs: Vec<AttrRef>,
}

impl Pack {
    pub fn with_capacity(attrs: usize, bytes: usize) -> Self {
        Self {
            arena: String::with_capacity(bytes),
            attrs: Vec::with_capacity(attrs),
        }
    }

    // Inlined into the packing loops: 10,000 calls a batch.
    #[inline]
    pub fn str(&mut self, s: &str) -> StrRef {
        let offset = self.arena.len() as u32;
        self.arena.push_str(s);
        StrRef {
            offset,
            len: s.len() as u32,
        }
    }

    #[inline]
    pub fn push(&mut self, record: u32, key: &str, value: ValueRef) {
        let key = self.str(key);
        self.attrs.push(AttrRef { record, key, value });
    }

    #[inline]
    pub fn value(&mut self, v: &Value) -> ValueRef {
        match v {
            Value::String(s) => ValueRef::Str(self.str(s.as_str())),
            Value::Bool(b) => ValueRef::Boolean(*b),
            Value::I64(i) => ValueRef::Int(*i),
            Value::F64(f) => ValueRef::Double(*f),
            other => self.other_value(other),
        }
    }

    /// Arrays and future kinds, as text: out of line, so the common kinds inline.
    #[inline(never)]
    fn other_value(&mut self, v: &Value) -> ValueRef {
        match v {
            Value::Array(a) => ValueRef::Array(self.str(&array_json(a))),
            other => ValueRef::Str(self.str(&other.to_string())),
        }
    }

    pub fn any(&mut self, v: &AnyValue) -> ValueRef {
        match v {
            AnyValue::String(s) => ValueRef::Str(self.str(s.as_str())),
            AnyValue::Boolean(b) => ValueRef::Boolean(*b),
            AnyValue::Int(i) => ValueRef::Int(*i),
            AnyValue::Double(f) => ValueRef::Double(*f),
            other => ValueRef::Array(self.str(&any_text(other))),
        }
    }
}

fn array_json(a: &Array) -> String {
    let v = match a {
        Array::Bool(v) => serde_json::json!(v),
        Array::I64(v) => serde_json::json!(v),
        Array::F64(v) => serde_json::json!(v),
        Array::String(v) => {
            serde_json::json!(v.iter().map(StringValue::as_str).collect::<Vec<_>>())
        }
        _ => serde_json::Value::Null,
    };
    v.to_string()
}

/// A text form of any log value (maps and lists as JSON-ish text).
pub fn any_text(v: &AnyValue) -> String {
    match v {
        AnyValue::String(s) => s.as_str().to_string(),
        AnyValue::Int(i) => i.to_string(),
        AnyValue::Double(f) => f.to_string(),
        AnyValue::Boolean(b) => b.to_string(),
        AnyValue::Bytes(b) => format!("<{} bytes>", b.len()),
        AnyValue::ListAny(l) => {
            format!("[{}]", l.iter().map(any_text).collect::<Vec<_>>().join(","))
        }
        AnyValue::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", k.as_str(), any_text(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => String::new(),
    }
}

pub fn to_value(v: AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::String(s.into()),
        AttrValue::Boolean(b) => Value::Bool(b),
        AttrValue::Int(i) => Value::I64(i),
        AttrValue::Double(f) => Value::F64(f),
    }
}

pub fn to_any(v: AttrValue) -> AnyValue {
    match v {
        AttrValue::Str(s) => AnyValue::String(s.into()),
        AttrValue::Boolean(b) => AnyValue::Boolean(b),
        AttrValue::Int(i) => AnyValue::Int(i),
        AttrValue::Double(f) => AnyValue::Double(f),
    }
}

fn value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => s.len(),
        _ => 8,
    }
}

/// Output bounds (PLUGINS.md): a plugin cannot grow a record without limit.
pub const MAX_VALUE_BYTES: usize = 4096;
pub const MAX_NEW_KEYS_PER_RECORD: usize = 32;
pub const MAX_KEY_BYTES: usize = 128;
pub const MAX_NAME_BYTES: usize = 512;
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_BYTES
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Checks edits against the packed input: indexes in range and used once, records in range,
/// keys well-formed and not protected, values bounded. All or nothing.
pub fn validate(
    edits: &[AttrEdit],
    attrs: &[AttrRef],
    records: usize,
    protected: impl Fn(&str) -> bool,
    original_len: impl Fn(usize) -> usize,
) -> Result<(), String> {
    let max_edits = attrs.len() + records * (MAX_NEW_KEYS_PER_RECORD + 1) + 16;
    if edits.len() > max_edits {
        return Err(format!("{} edits (at most {max_edits})", edits.len()));
    }
    let mut seen = vec![false; attrs.len()];
    let mut new_keys = vec![0usize; records];
    for e in edits {
        match e {
            AttrEdit::Replace((i, _)) | AttrEdit::Remove(i) if *i as usize >= attrs.len() => {
                return Err(format!(
                    "attribute index {i} out of range ({} sent)",
                    attrs.len()
                ));
            }
            AttrEdit::Replace((i, v)) => {
                let i = *i as usize;
                if std::mem::replace(&mut seen[i], true) {
                    return Err(format!("attribute index {i} edited twice"));
                }
                if value_len(v) > MAX_VALUE_BYTES.max(original_len(i)) {
                    return Err(format!(
                        "value for index {i} too long ({} bytes)",
                        value_len(v)
                    ));
                }
            }
            AttrEdit::Remove(i) => {
                let i = *i as usize;
                if std::mem::replace(&mut seen[i], true) {
                    return Err(format!("attribute index {i} edited twice"));
                }
            }
            AttrEdit::Upsert((r, k, v)) => {
                let r = *r as usize;
                if r >= records {
                    return Err(format!("record index {r} out of range ({records} sent)"));
                }
                if !valid_key(k) {
                    return Err(format!("invalid key {:?}", truncate(k)));
                }
                if protected(k) {
                    return Err(format!("key {k} is protected"));
                }
                if value_len(v) > MAX_VALUE_BYTES {
                    return Err(format!("value for {k} too long ({} bytes)", value_len(v)));
                }
                new_keys[r] += 1;
                if new_keys[r] > MAX_NEW_KEYS_PER_RECORD {
                    return Err(format!(
                        "more than {MAX_NEW_KEYS_PER_RECORD} new keys on record {r}"
                    ));
                }
            }
        }
    }
    Ok(())
}

pub fn truncate(s: &str) -> &str {
    &s[..s.floor_char_boundary(64)]
}

/// The string length of the value behind a packed entry (bounds a `replace`).
pub fn packed_len(attrs: &[AttrRef], i: usize) -> usize {
    match &attrs[i].value {
        ValueRef::Str(r) | ValueRef::Array(r) => r.len as usize,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(n: usize) -> Pack {
        let mut p = Pack::default();
        for i in 0..n {
            let v = ValueRef::Str(p.str("value"));
            p.push(0, &format!("k{i}"), v);
        }
        p
    }

    fn check(edits: &[AttrEdit], p: &Pack) -> Result<(), String> {
        validate(
            edits,
            &p.attrs,
            1,
            |k| k == "session.id",
            |i| packed_len(&p.attrs, i),
        )
    }

    #[test]
    fn edits_are_checked_before_anything_is_applied() {
        let p = packed(3);
        let s = |v: &str| AttrValue::Str(v.into());
        assert!(check(&[AttrEdit::Replace((2, s("x"))), AttrEdit::Remove(0)], &p).is_ok());
        assert!(
            check(&[AttrEdit::Replace((3, s("x")))], &p)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(check(&[AttrEdit::Remove(u32::MAX)], &p).is_err());
        assert!(
            check(&[AttrEdit::Remove(1), AttrEdit::Replace((1, s("x")))], &p)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            check(&[AttrEdit::Upsert((1, "k".into(), s("x")))], &p)
                .unwrap_err()
                .contains("record")
        );
        assert!(
            check(&[AttrEdit::Upsert((0, "session.id".into(), s("x")))], &p)
                .unwrap_err()
                .contains("protected")
        );
        assert!(check(&[AttrEdit::Upsert((0, "bad key!".into(), s("x")))], &p).is_err());
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(
            check(&[AttrEdit::Upsert((0, "k".into(), s(&long)))], &p)
                .unwrap_err()
                .contains("too long")
        );
        let many: Vec<AttrEdit> = (0..=MAX_NEW_KEYS_PER_RECORD)
            .map(|i| AttrEdit::Upsert((0, format!("n{i}"), s("x"))))
            .collect();
        assert!(check(&many, &p).is_err());
    }

    #[test]
    fn packing_shares_one_arena() {
        let mut p = Pack::default();
        let v = p.value(&Value::String("b".into()));
        p.push(0, "a", v);
        let v = p.value(&Value::I64(7));
        p.push(0, "c", v);
        assert_eq!(p.arena, "bac");
        assert!(matches!(p.attrs[1].value, ValueRef::Int(7)));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn edit(attrs: u32, records: u32) -> impl Strategy<Value = AttrEdit> {
            let key = prop_oneof![
                "[a-z][a-z0-9._-]{0,20}",
                Just("session.id".to_string()),
                ".{0,140}",
            ];
            let value = prop_oneof![
                ".{0,64}".prop_map(AttrValue::Str),
                (4090usize..4100).prop_map(|n| AttrValue::Str("x".repeat(n))),
                any::<i64>().prop_map(AttrValue::Int),
                any::<bool>().prop_map(AttrValue::Boolean),
            ];
            prop_oneof![
                (0..attrs + 3, value.clone()).prop_map(|(i, v)| AttrEdit::Replace((i, v))),
                (0..attrs + 3).prop_map(AttrEdit::Remove),
                (0..records + 2, key, value).prop_map(|(r, k, v)| AttrEdit::Upsert((r, k, v))),
            ]
        }

        proptest! {
            /// Whatever a plugin sends, validation never panics, and what it accepts keeps
            /// every output bound: the model below restates PLUGINS.md's rules.
            #[test]
            fn accepted_edits_keep_every_bound(
                (n, records, edits) in (0u32..6, 1u32..4).prop_flat_map(|(n, r)| {
                    (Just(n), Just(r), proptest::collection::vec(edit(n, r), 0..80))
                })
            ) {
                let p = packed(n as usize);
                let result = validate(&edits, &p.attrs, records as usize, |k| k == "session.id", |i| packed_len(&p.attrs, i));
                if result.is_ok() {
                    let mut seen = std::collections::HashSet::new();
                    let mut new_keys = vec![0usize; records as usize];
                    for e in &edits {
                        match e {
                            AttrEdit::Replace((i, v)) => {
                                prop_assert!((*i as usize) < p.attrs.len());
                                prop_assert!(seen.insert(*i));
                                prop_assert!(value_len(v) <= MAX_VALUE_BYTES.max(packed_len(&p.attrs, *i as usize)));
                            }
                            AttrEdit::Remove(i) => {
                                prop_assert!((*i as usize) < p.attrs.len());
                                prop_assert!(seen.insert(*i));
                            }
                            AttrEdit::Upsert((r, k, v)) => {
                                prop_assert!(*r < records);
                                prop_assert!(valid_key(k) && k != "session.id");
                                prop_assert!(value_len(v) <= MAX_VALUE_BYTES);
                                new_keys[*r as usize] += 1;
                                prop_assert!(new_keys[*r as usize] <= MAX_NEW_KEYS_PER_RECORD);
                            }
                        }
                    }
                }
            }
        }
    }
}

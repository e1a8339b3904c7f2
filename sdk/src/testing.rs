//! Test a plugin's logic natively (`cargo test`, no wasm): build the batches the daemon would
//! send, run the trait method, and apply its edits the way the daemon does.
//!
//! ```
//! use acpd_plugin_sdk::testing::Batch;
//! let b = Batch::new().span("GET /x", &[("user.email", "a@b.c".into())]);
//! let view = b.spans_view();
//! assert_eq!(view.spans().next().unwrap().name(), "GET /x");
//! ```

use crate::bindings::acpd::plugin::types::{AttrRef, StrRef, ValueRef};
use crate::edits::{AttrValue, Edit, Edits, LogEdits, SpanEdits};
use crate::views::{Attrs, LogBatch, LogMeta, SpanBatch, SpanKind, SpanMeta};

/// One record's attributes after edits, in order.
pub type Record = Vec<(String, AttrValue)>;

/// Records (spans, logs, or one request's attributes) packed as the daemon packs them.
#[derive(Default)]
pub struct Batch {
    arena: String,
    refs: Vec<AttrRef>,
    values: Vec<(u32, String, AttrValue)>,
    spans: Vec<SpanMeta>,
    names: Vec<String>,
    logs: Vec<LogMeta>,
    bodies: Vec<String>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    fn str(&mut self, s: &str) -> StrRef {
        let offset = self.arena.len() as u32;
        self.arena.push_str(s);
        StrRef {
            offset,
            len: s.len() as u32,
        }
    }

    fn push_attrs(&mut self, record: u32, attrs: &[(&str, AttrValue)]) {
        for (k, v) in attrs {
            let key = self.str(k);
            let value = match v {
                AttrValue::Str(s) => ValueRef::Str(self.str(s)),
                AttrValue::Bool(b) => ValueRef::Boolean(*b),
                AttrValue::Int(i) => ValueRef::Int(*i),
                AttrValue::Double(f) => ValueRef::Double(*f),
            };
            self.refs.push(AttrRef { record, key, value });
            self.values.push((record, k.to_string(), v.clone()));
        }
    }

    /// Adds a span (internal, not an error) with these attributes.
    pub fn span(mut self, name: &str, attrs: &[(&str, AttrValue)]) -> Self {
        let record = self.spans.len() as u32;
        let name_ref = self.str(name);
        self.spans.push(SpanMeta {
            name: name_ref,
            kind: SpanKind::Internal,
            is_error: false,
        });
        self.names.push(name.to_string());
        self.push_attrs(record, attrs);
        self
    }

    /// Adds a log record (severity INFO) with this body and attributes.
    pub fn log(mut self, body: &str, event_name: &str, attrs: &[(&str, AttrValue)]) -> Self {
        let record = self.logs.len() as u32;
        let b = self.str(body);
        let e = self.str(event_name);
        self.logs.push(LogMeta {
            body: b,
            severity: 9,
            event_name: e,
        });
        self.bodies.push(body.to_string());
        self.push_attrs(record, attrs);
        self
    }

    /// The attributes of a request (or dispatch, child) hook: one record.
    pub fn attrs(mut self, attrs: &[(&str, AttrValue)]) -> Self {
        self.push_attrs(0, attrs);
        self
    }

    pub fn spans_view(&self) -> SpanBatch<'_> {
        SpanBatch::new(&self.arena, &self.refs, self.spans.clone())
    }

    pub fn logs_view(&self) -> LogBatch<'_> {
        LogBatch::new(&self.arena, &self.refs, self.logs.clone())
    }

    pub fn attrs_view(&self) -> Attrs<'_> {
        Attrs::new(&self.arena, &self.refs)
    }

    /// Each record's attributes after `edits`, as the daemon would apply them.
    pub fn apply(&self, edits: &Edits) -> Vec<Record> {
        let records = self.spans.len().max(self.logs.len()).max(1);
        let mut slots: Vec<Option<(u32, String, AttrValue)>> =
            self.values.iter().cloned().map(Some).collect();
        let mut added: Vec<(u32, String, AttrValue)> = Vec::new();
        for e in edits.iter() {
            match e {
                Edit::Replace(i, v) => {
                    let slot = slots[*i as usize]
                        .as_mut()
                        .expect("replace of a removed index");
                    slot.2 = v.clone();
                }
                Edit::Remove(i) => slots[*i as usize] = None,
                Edit::Upsert(r, k, v) => {
                    match slots
                        .iter_mut()
                        .flatten()
                        .find(|(rr, kk, _)| rr == r && kk == k)
                    {
                        Some(slot) => slot.2 = v.clone(),
                        None => added.push((*r, k.clone(), v.clone())),
                    }
                }
            }
        }
        let mut out = vec![Vec::new(); records];
        for (r, k, v) in slots.into_iter().flatten().chain(added) {
            out[r as usize].push((k, v));
        }
        out
    }

    /// Each span's name and attributes after `edits`.
    pub fn apply_spans(&self, edits: &SpanEdits) -> Vec<(String, Record)> {
        let mut names = self.names.clone();
        for (i, n) in edits.renames() {
            names[*i as usize] = n.clone();
        }
        names.into_iter().zip(self.apply(&edits.attrs)).collect()
    }

    /// Each log's body and attributes after `edits` (`None`: dropped).
    pub fn apply_logs(&self, edits: &LogEdits) -> Vec<Option<(String, Record)>> {
        let mut bodies = self.bodies.clone();
        for (i, b) in edits.bodies() {
            bodies[*i as usize] = b.clone();
        }
        bodies
            .into_iter()
            .zip(self.apply(&edits.attrs))
            .enumerate()
            .map(|(i, x)| (!edits.drops().contains(&(i as u32))).then_some(x))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_see_what_the_batch_holds() {
        let b = Batch::new()
            .span("a", &[("k1", "v1".into()), ("n", 3i64.into())])
            .span("b", &[("k2", "v2".into())]);
        let view = b.spans_view();
        let spans: Vec<_> = view.spans().collect();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].name(), "b");
        assert_eq!(
            spans[1].attrs().get("k2").and_then(|v| v.as_str()),
            Some("v2")
        );
        let second = spans[1].attrs().iter().next().unwrap();
        assert_eq!((second.index, second.record), (2, 1));
        assert_eq!(spans[0].attrs().get("n"), Some(crate::Value::Int(3)));
        let (o, l) = second.value_range().unwrap();
        assert_eq!(&view.arena()[o as usize..(o + l) as usize], "v2");
    }

    #[test]
    fn edits_apply_like_the_daemon() {
        let b = Batch::new().span("a", &[("x", "1".into()), ("y", "2".into())]);
        let mut e = SpanEdits::default();
        e.attrs.replace(0, "one");
        e.attrs.remove(1);
        e.attrs.upsert(0, "z", true);
        e.rename(0, "renamed");
        let out = b.apply_spans(&e);
        assert_eq!(out[0].0, "renamed");
        assert_eq!(
            out[0].1,
            vec![("x".into(), "one".into()), ("z".into(), true.into())]
        );
    }

    #[test]
    fn mask_keeps_the_tail() {
        let mut e = Edits::default();
        e.mask(0, "4111111111111111", 4);
        assert_eq!(e.iter().next(), Some(&Edit::Replace(0, "****1111".into())));
    }

    #[test]
    fn config_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct C {
            #[allow(dead_code)]
            n: u32,
        }
        let c = crate::Config::from_json(r#"{"n": "x"}"#).unwrap();
        let e = c.parse::<C>().unwrap_err();
        assert!(
            matches!(&e, crate::Error::Config(m) if m.contains("invalid type")),
            "{e}"
        );
        assert!(crate::Config::from_json("").unwrap().value().is_object());
        assert!(
            crate::Config::from_json("null")
                .unwrap()
                .value()
                .is_object()
        );
    }

    #[test]
    fn the_native_pattern_kernel_matches_the_host_semantics() {
        let p = crate::PatternSet::compile(&["a+", "aab", "b"]).unwrap();
        let m = p.find("xaab b");
        assert_eq!(
            m.iter()
                .map(|m| (m.pattern, m.start, m.end))
                .collect::<Vec<_>>(),
            [(1, 1, 4), (2, 5, 6)]
        );
        let s = p.scan("zzbzz", &[(0, 2), (2, 1)]);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].range, s[0].start), (1, 0));
    }
}

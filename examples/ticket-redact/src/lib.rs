//! Redacts internal ticket ids (`OPS-1234`) and customer names from the spans and logs acpd
//! exports. A starting point for your own plugin: copy the directory, change the rules.

use acpd_plugin_sdk::{
    Config, Error, LogBatch, LogEdits, LogProcessor, PatternSet, Plugin, SpanBatch, SpanEdits,
    SpanProcessor, export_plugin, keyed_hash,
};
use serde::Deserialize;

/// The operator's `[plugins.config]` table.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// A regex for ticket ids.
    ticket_pattern: String,
    /// Customer names, matched case-insensitively as whole words.
    customers: Vec<String>,
    /// When set, replacements are keyed hashes (`[ticket:1a2b...]`) under this `[keys]` id, so
    /// the same ticket can still be followed across spans.
    hash_key: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ticket_pattern: r"\b[A-Z]{2,10}-\d{1,6}\b".into(),
            customers: Vec::new(),
            hash_key: None,
        }
    }
}

pub struct TicketRedact {
    /// Pattern 0: tickets; pattern 1 (if any customers): customer names.
    patterns: PatternSet,
    hash_key: Option<String>,
}

impl Plugin for TicketRedact {
    const NAME: &'static str = "ticket-redact";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    /// Runs once per instance: validate the config and compile the patterns here, never per call.
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let mut patterns = vec![s.ticket_pattern.clone()];
        if !s.customers.is_empty() {
            let names: Vec<String> = s.customers.iter().map(|c| escape(c.trim())).collect();
            patterns.push(format!(r"(?i)\b(?:{})\b", names.join("|")));
        }
        let patterns = PatternSet::compile(&patterns)
            .map_err(|e| Error::config(format!("bad pattern: {e}")))?;
        if let Some(k) = &s.hash_key {
            keyed_hash(k, "probe", 8).map_err(|e| Error::config(format!("hash_key {k:?}: {e}")))?;
        }
        Ok(TicketRedact {
            patterns,
            hash_key: s.hash_key,
        })
    }
}

/// Regex-escapes a literal name.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

impl TicketRedact {
    fn replacement(&self, pattern: u32, text: &str) -> String {
        let label = if pattern == 0 { "ticket" } else { "customer" };
        match &self.hash_key {
            Some(k) => match keyed_hash(k, &text.to_lowercase(), 12) {
                Ok(h) => format!("[{label}:{h}]"),
                Err(_) => format!("[{label}]"),
            },
            None => format!("[{label}]"),
        }
    }

    /// One scan over many texts of a batch (one host call), then each changed text rebuilt.
    fn redact(&self, arena: &str, ranges: &[(u32, u32)]) -> Vec<Option<String>> {
        let mut out: Vec<Option<String>> = vec![None; ranges.len()];
        let mut by_range: Vec<Vec<(u32, usize, usize)>> = vec![Vec::new(); ranges.len()];
        for m in self.patterns.scan(arena, ranges) {
            by_range[m.range as usize].push((m.pattern, m.start as usize, m.end as usize));
        }
        for (i, matches) in by_range.iter().enumerate() {
            if matches.is_empty() {
                continue;
            }
            let (o, l) = ranges[i];
            let text = &arena[o as usize..(o + l) as usize];
            let mut s = String::with_capacity(text.len());
            let mut at = 0;
            for &(p, start, end) in matches {
                s.push_str(&text[at..start]);
                s.push_str(&self.replacement(p, &text[start..end]));
                at = end;
            }
            s.push_str(&text[at..]);
            out[i] = Some(s);
        }
        out
    }
}

impl SpanProcessor for TicketRedact {
    fn on_spans(&mut self, batch: &SpanBatch<'_>, out: &mut SpanEdits) -> Result<(), Error> {
        // Span names first, then every string attribute, in one scan.
        let mut ranges: Vec<(u32, u32)> = batch.spans().map(|s| s.name_range()).collect();
        let names = ranges.len();
        let mut indexes = Vec::new();
        for a in batch.attrs().iter() {
            if let Some(r) = a.value_range() {
                ranges.push(r);
                indexes.push(a.index);
            }
        }
        for (i, new) in self.redact(batch.arena(), &ranges).into_iter().enumerate() {
            let Some(new) = new else { continue };
            if i < names {
                out.rename(i as u32, new);
            } else {
                out.attrs.replace(indexes[i - names], new);
            }
        }
        Ok(())
    }
}

impl LogProcessor for TicketRedact {
    fn on_logs(&mut self, batch: &LogBatch<'_>, out: &mut LogEdits) -> Result<(), Error> {
        let mut ranges: Vec<(u32, u32)> = batch.logs().map(|l| l.body_range()).collect();
        let bodies = ranges.len();
        let mut indexes = Vec::new();
        for a in batch.attrs().iter() {
            if let Some(r) = a.value_range() {
                ranges.push(r);
                indexes.push(a.index);
            }
        }
        for (i, new) in self.redact(batch.arena(), &ranges).into_iter().enumerate() {
            let Some(new) = new else { continue };
            if i < bodies {
                out.set_body(i as u32, new);
            } else {
                out.attrs.replace(indexes[i - bodies], new);
            }
        }
        Ok(())
    }
}

export_plugin!(TicketRedact);

#[cfg(test)]
mod tests {
    use super::*;
    use acpd_plugin_sdk::AttrValue;
    use acpd_plugin_sdk::testing::Batch;

    fn plugin(config: &str) -> TicketRedact {
        TicketRedact::init(Config::from_json(config).unwrap()).unwrap()
    }

    #[test]
    fn tickets_and_customers_leave_spans_and_logs() {
        let mut p = plugin(r#"{"customers": ["Acme Corp", "Globex"]}"#);
        let b = Batch::new().span(
            "fix OPS-1234",
            &[
                (
                    "gen_ai.input.messages",
                    "acme corp asks about OPS-77".into(),
                ),
                ("n", 7i64.into()),
            ],
        );
        let mut e = SpanEdits::default();
        p.on_spans(&b.spans_view(), &mut e).unwrap();
        let out = b.apply_spans(&e);
        assert_eq!(out[0].0, "fix [ticket]");
        assert_eq!(
            out[0].1[0].1,
            AttrValue::from("[customer] asks about [ticket]")
        );

        let l = Batch::new().log("Globex reopened SEC-9", "acpd.child.stderr", &[]);
        let mut e = LogEdits::default();
        p.on_logs(&l.logs_view(), &mut e).unwrap();
        assert_eq!(
            l.apply_logs(&e)[0].as_ref().unwrap().0,
            "[customer] reopened [ticket]"
        );
    }

    #[test]
    fn hashes_keep_the_same_ticket_recognisable() {
        let mut p = plugin(r#"{"hash_key": "pii"}"#);
        let b = Batch::new().span("a", &[("x", "OPS-1".into()), ("y", "see OPS-1".into())]);
        let mut e = SpanEdits::default();
        p.on_spans(&b.spans_view(), &mut e).unwrap();
        let out = &b.apply_spans(&e)[0].1;
        let AttrValue::Str(x) = &out[0].1 else {
            panic!()
        };
        assert!(x.starts_with("[ticket:") && out[1].1 == AttrValue::Str(format!("see {x}")));
    }

    #[test]
    fn a_bad_pattern_is_refused_at_init() {
        assert!(
            TicketRedact::init(Config::from_json(r#"{"ticket_pattern": "("}"#).unwrap()).is_err()
        );
    }
}

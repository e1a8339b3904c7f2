//! acpd's first-party redaction plugin: the OTel Collector's redaction + attributes processors
//! and then some, on export batches of spans and logs.
//!
//! Per attribute, in order: ignored keys are never touched; blocked keys lose their whole value;
//! in allow-list mode a key not allowed loses its whole value; every other string value (and
//! span names, log bodies) is scanned for the detectors and blocked-value patterns, and only the
//! matched part is replaced. All regexes run in the host's pattern kernel, compiled once at
//! init, scanned once per batch.

use acpd_plugin_sdk::{
    Attr, Config, Edits, Error, LogBatch, LogEdits, LogProcessor, PatternSet, Plugin, SpanBatch,
    SpanEdits, SpanProcessor, Value, export_plugin, keyed_hash,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Built-in detectors: (name, pattern). Rust `regex` syntax (no look-around).
const DETECTORS: &[(&str, &str)] = &[
    (
        "private_key",
        r"(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\z)",
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",
    ),
    ("bearer", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    (
        "api_key",
        r"\b(?:sk-ant-[A-Za-z0-9_-]{20,}|sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}|AIza[0-9A-Za-z_-]{35}|xox[abpr]-[A-Za-z0-9-]{10,})|(?i)\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret|password|passwd)\s*[:=]\s*[^\s,;&]{6,}",
    ),
    (
        "url_credentials",
        r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]+:[^\s/?#@]+@",
    ),
    (
        "email",
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
    ),
    ("card", r"\b(?:\d[ -]?){12,18}\d\b"),
];

const DEFAULT_BLOCKED_KEYS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "x-api-key",
    "*.authorization",
    "*.cookie",
    "*.password",
    "*.token",
    "*.secret",
    "*.api_key",
    "*.x-api-key",
];

const DEFAULT_IGNORED_KEYS: &[&str] = &[
    "session.id",
    "acpd.prompt.id",
    "acpd.client.id",
    "acpd.workspace.id",
    "acpd.child.id",
    "http.route",
    "http.request.method",
    "http.response.status_code",
    "rpc.method",
    "rpc.system",
    "gen_ai.operation.name",
    "gen_ai.tool.call.id",
    "process.pid",
    "event.name",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Matched part -> `[REDACTED:<rule>]`; a whole value -> `[REDACTED]`.
    Mask,
    /// `****` and the last N characters.
    KeepLast(usize),
    /// `[hash:<hex>]`: HMAC with the operator's key (host-held).
    Hash,
    /// The attribute is removed (a name or body is masked instead).
    Drop,
    /// The first N characters, then `...`.
    Truncate(usize),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BlockedValue {
    Pattern(String),
    Rule {
        pattern: String,
        action: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Cfg {
    detectors: Option<Vec<String>>,
    blocked_values: Vec<BlockedValue>,
    blocked_keys: Option<Vec<String>>,
    allowed_keys: Vec<String>,
    allow_list_action: String,
    ignored_keys: Option<Vec<String>>,
    action: String,
    actions: BTreeMap<String, String>,
    hash_key: String,
    hash_len: u32,
    keep_last: usize,
    max_len: usize,
    signals: Vec<String>,
    span_names: bool,
    max_value_len: Option<usize>,
    summary: String,
}

impl Default for Cfg {
    fn default() -> Self {
        Self {
            detectors: None,
            blocked_values: Vec::new(),
            blocked_keys: None,
            allowed_keys: Vec::new(),
            allow_list_action: "mask".into(),
            ignored_keys: None,
            action: "mask".into(),
            actions: BTreeMap::new(),
            hash_key: "pii".into(),
            hash_len: 16,
            keep_last: 4,
            max_len: 64,
            signals: vec!["spans".into(), "logs".into()],
            span_names: true,
            max_value_len: None,
            summary: "silent".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Summary {
    Silent,
    Info,
    Debug,
}

/// `text` without `prefix`, compared ignoring ASCII case.
fn strip_prefix_ignore_case<'a>(text: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &text[prefix.len()..])
}

/// Key patterns: exact, `prefix.*` or `*.suffix`, compared case-insensitively.
///
/// Every attribute of every batch is matched against two or three of these, so a key is compared
/// only with the patterns that could match it: exact keys of its length, prefixes that start with
/// its first byte, suffixes that end with its last. Comparing with every pattern in turn was a
/// sixth of a batch's cost natively and more in a guest.
struct KeyMatcher {
    /// Exact keys (lower-case) by length.
    exact: Vec<Vec<Box<[u8]>>>,
    prefixes: Edge,
    suffixes: Edge,
}

/// Prefixes or suffixes (lower-case), with the set of bytes they start or end with.
#[derive(Default)]
struct Edge {
    patterns: Vec<Box<[u8]>>,
    /// bit `b` set: some pattern has byte `b` (in either ASCII case) at its edge
    bytes: [u64; 4],
    /// an empty pattern (`*` alone) matches every key, the empty key too
    empty: bool,
}

impl Edge {
    fn add(&mut self, pattern: &[u8], edge: Option<&u8>) {
        match edge {
            Some(b) => {
                for b in [b.to_ascii_lowercase(), b.to_ascii_uppercase()] {
                    self.bytes[b as usize / 64] |= 1 << (b % 64);
                }
            }
            None => self.empty = true,
        }
        self.patterns.push(pattern.into());
    }

    /// Whether a key with `b` at this edge could match any pattern.
    fn may(&self, b: Option<&u8>) -> bool {
        self.empty || b.is_some_and(|&b| self.bytes[b as usize / 64] & (1 << (b % 64)) != 0)
    }
}

impl KeyMatcher {
    fn new(keys: &[String]) -> Self {
        let mut m = KeyMatcher {
            exact: Vec::new(),
            prefixes: Edge::default(),
            suffixes: Edge::default(),
        };
        for k in keys {
            let k = k.to_ascii_lowercase().into_bytes();
            if let Some(p) = k.strip_suffix(b"*") {
                m.prefixes.add(p, p.first());
            } else if let Some(s) = k.strip_prefix(b"*") {
                m.suffixes.add(s, s.last());
            } else {
                if m.exact.len() <= k.len() {
                    m.exact.resize_with(k.len() + 1, Vec::new);
                }
                m.exact[k.len()].push(k.into());
            }
        }
        m
    }

    /// Compares in place, ignoring ASCII case (the patterns are stored lower-case): lower-casing
    /// a copy of each key cost an allocation per key per matcher.
    fn matches(&self, key: &str) -> bool {
        let k = key.as_bytes();
        // A header attribute is matched by its header name too.
        let header = strip_prefix_ignore_case(k, b"http.request.header.")
            .or_else(|| strip_prefix_ignore_case(k, b"http.response.header."));
        self.one(k) || header.is_some_and(|h| self.one(h))
    }

    fn one(&self, k: &[u8]) -> bool {
        self.exact
            .get(k.len())
            .is_some_and(|keys| keys.iter().any(|e| e.eq_ignore_ascii_case(k)))
            || (self.prefixes.may(k.first())
                && self
                    .prefixes
                    .patterns
                    .iter()
                    .any(|p| strip_prefix_ignore_case(k, p).is_some()))
            || (self.suffixes.may(k.last())
                && self
                    .suffixes
                    .patterns
                    .iter()
                    .any(|s| k.len() >= s.len() && k[k.len() - s.len()..].eq_ignore_ascii_case(s)))
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.prefixes.patterns.is_empty()
            && self.suffixes.patterns.is_empty()
    }
}

struct Rule {
    name: String,
    action: Action,
    luhn: bool,
}

pub struct Redactor {
    patterns: Option<PatternSet>,
    rules: Vec<Rule>,
    blocked_keys: KeyMatcher,
    blocked_action: Action,
    allowed: KeyMatcher,
    allow_action: Action,
    ignored: KeyMatcher,
    hash_key: String,
    hash_len: u32,
    spans: bool,
    logs: bool,
    span_names: bool,
    max_value_len: Option<usize>,
    summary: Summary,
}

fn parse_action(name: &str, keep_last: usize, max_len: usize) -> Result<Action, Error> {
    Ok(match name {
        "mask" => Action::Mask,
        "keep_last" => Action::KeepLast(keep_last),
        "hash" => Action::Hash,
        "drop" => Action::Drop,
        "truncate" => Action::Truncate(max_len),
        other => {
            return Err(Error::config(format!(
                "unknown action {other:?} (mask, keep_last, hash, drop, truncate)"
            )));
        }
    })
}

/// The Luhn check: card-like digit runs that fail it are left alone.
pub fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// What one scanned text becomes.
enum Outcome {
    Keep,
    Replace(String),
    Drop,
}

impl Redactor {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let c: Cfg = config.parse()?;
        let act = |n: &str| parse_action(n, c.keep_last, c.max_len);
        let default_action = act(&c.action)?;
        let action_for = |rule: &str| -> Result<Action, Error> {
            match c.actions.get(rule) {
                Some(a) => act(a),
                None => Ok(default_action),
            }
        };
        for k in c.actions.keys() {
            let known = DETECTORS.iter().any(|(d, _)| d == k)
                || k == "blocked_keys"
                || k == "blocked_values";
            if !known {
                return Err(Error::config(format!("actions: unknown rule {k:?}")));
            }
        }
        let detectors: Vec<String> = match &c.detectors {
            Some(list) => list.clone(),
            None => DETECTORS.iter().map(|(d, _)| d.to_string()).collect(),
        };
        let mut patterns = Vec::new();
        let mut rules = Vec::new();
        for d in &detectors {
            let Some((_, p)) = DETECTORS.iter().find(|(n, _)| n == d) else {
                return Err(Error::config(format!(
                    "unknown detector {d:?} (known: {})",
                    DETECTORS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            patterns.push(p.to_string());
            rules.push(Rule {
                name: d.clone(),
                action: action_for(d)?,
                luhn: d == "card",
            });
        }
        for (i, b) in c.blocked_values.iter().enumerate() {
            let (p, a) = match b {
                BlockedValue::Pattern(p) => (p.clone(), action_for("blocked_values")?),
                BlockedValue::Rule { pattern, action } => (
                    pattern.clone(),
                    match action {
                        Some(a) => act(a)?,
                        None => action_for("blocked_values")?,
                    },
                ),
            };
            patterns.push(p);
            rules.push(Rule {
                name: format!("blocked_value_{i}"),
                action: a,
                luhn: false,
            });
        }
        let patterns = if patterns.is_empty() {
            None
        } else {
            Some(
                PatternSet::compile(&patterns)
                    .map_err(|e| Error::config(format!("bad pattern: {e}")))?,
            )
        };
        let blocked: Vec<String> = c
            .blocked_keys
            .clone()
            .unwrap_or_else(|| DEFAULT_BLOCKED_KEYS.iter().map(|s| s.to_string()).collect());
        let ignored: Vec<String> = c
            .ignored_keys
            .clone()
            .unwrap_or_else(|| DEFAULT_IGNORED_KEYS.iter().map(|s| s.to_string()).collect());
        for s in &c.signals {
            if s != "spans" && s != "logs" {
                return Err(Error::config(format!(
                    "signals: unknown signal {s:?} (spans, logs)"
                )));
            }
        }
        let summary = match c.summary.as_str() {
            "silent" => Summary::Silent,
            "info" => Summary::Info,
            "debug" => Summary::Debug,
            other => {
                return Err(Error::config(format!(
                    "summary: {other:?} (silent, info, debug)"
                )));
            }
        };
        let r = Redactor {
            patterns,
            blocked_keys: KeyMatcher::new(&blocked),
            blocked_action: action_for("blocked_keys")?,
            allowed: KeyMatcher::new(&c.allowed_keys),
            allow_action: act(&c.allow_list_action)?,
            ignored: KeyMatcher::new(&ignored),
            hash_key: c.hash_key.clone(),
            hash_len: c.hash_len,
            spans: c.signals.iter().any(|s| s == "spans"),
            logs: c.signals.iter().any(|s| s == "logs"),
            span_names: c.span_names,
            max_value_len: c.max_value_len,
            summary,
            rules,
        };
        let hashes = r.rules.iter().any(|x| x.action == Action::Hash)
            || r.blocked_action == Action::Hash
            || r.allow_action == Action::Hash;
        if hashes {
            keyed_hash(&r.hash_key, "probe", 8).map_err(|e| {
                Error::config(format!(
                    "hash action needs key {:?} in acpd's [keys]: {e}",
                    r.hash_key
                ))
            })?;
        }
        Ok(r)
    }

    fn hash(&self, text: &str) -> String {
        match keyed_hash(&self.hash_key, text, self.hash_len) {
            Ok(h) => ["[hash:", &h, "]"].concat(),
            // Never fall back to the clear text.
            Err(_) => "[REDACTED]".to_string(),
        }
    }

    fn render(&self, action: Action, rule: &str, text: &str) -> String {
        let mut out = String::new();
        self.render_into(&mut out, action, rule, text);
        out
    }

    /// Appends what `action` makes of `text`. Pieces pushed in turn, not `format!`: the
    /// formatting machinery was a tenth of the guest's time on a batch with many matches.
    fn render_into(&self, out: &mut String, action: Action, rule: &str, text: &str) {
        match action {
            Action::Mask | Action::Drop => {
                out.push_str("[REDACTED:");
                out.push_str(rule);
                out.push(']');
            }
            Action::KeepLast(n) => {
                let count = text.chars().count();
                out.push_str("****");
                out.extend(text.chars().skip(count.saturating_sub(n)));
            }
            Action::Hash => out.push_str(&self.hash(text)),
            Action::Truncate(n) => {
                out.extend(text.chars().take(n));
                out.push_str("...");
            }
        }
    }

    /// A whole value under a key rule.
    fn whole(&self, action: Action, text: &str) -> Outcome {
        match action {
            Action::Drop => Outcome::Drop,
            Action::Mask => Outcome::Replace("[REDACTED]".into()),
            a => Outcome::Replace(self.render(a, "key", text)),
        }
    }

    /// The value-level rules over one text, given its matches (offsets into `text`).
    fn apply_matches(&self, text: &str, matches: &[(u32, u32, u32)]) -> Outcome {
        let mut out = String::with_capacity(text.len());
        let mut at = 0usize;
        let mut changed = false;
        for &(p, s, e) in matches {
            let (s, e) = (s as usize, e as usize);
            let Some(m) = text.get(s..e) else { continue };
            let rule = &self.rules[p as usize];
            if rule.luhn && !luhn(m) {
                continue;
            }
            if rule.action == Action::Drop {
                return Outcome::Drop;
            }
            out.push_str(&text[at..s]);
            if rule.name == "url_credentials" {
                // Keep the scheme and host readable: only the user-info goes.
                let (scheme, userinfo) = m.split_once("://").unwrap_or(("", m));
                let userinfo = userinfo.trim_end_matches('@');
                out.push_str(scheme);
                out.push_str("://");
                self.render_into(&mut out, rule.action, &rule.name, userinfo);
                out.push('@');
            } else {
                self.render_into(&mut out, rule.action, &rule.name, m);
            }
            at = e;
            changed = true;
        }
        let mut out = if changed {
            out.push_str(&text[at..]);
            out
        } else {
            String::new()
        };
        if let Some(max) = self.max_value_len {
            let current = if changed { out.as_str() } else { text };
            if current.chars().count() > max {
                out = format!("{}...", current.chars().take(max).collect::<String>());
                changed = true;
            }
        }
        if changed {
            Outcome::Replace(out)
        } else {
            Outcome::Keep
        }
    }

    /// The key-level decision for one (not ignored) attribute: `None` = scan its value.
    fn key_rule(&self, a: &Attr<'_>) -> Option<Action> {
        if self.blocked_keys.matches(a.key) {
            return Some(self.blocked_action);
        }
        if !self.allowed.is_empty() && !self.allowed.matches(a.key) {
            return Some(self.allow_action);
        }
        None
    }

    /// Attribute decisions for a batch, with one pattern scan over every text that needs it
    /// (`extra` are further texts, such as names or bodies, scanned in the same call).
    fn decide<'a>(
        &self,
        arena: &'a str,
        attrs: impl Iterator<Item = (u32, Attr<'a>)>,
        extra: &[(u32, u32)],
    ) -> (Vec<(u32, u32, Outcome)>, Vec<Outcome>) {
        // (attr index, record, outcome) for attributes; outcomes for extra texts.
        // Sized once for the batch: growing these was a visible share of a guest's batch.
        let hint = attrs.size_hint().0;
        let mut decided: Vec<(u32, u32, Outcome)> = Vec::with_capacity(hint);
        let mut scan: Vec<(u32, u32)> = Vec::with_capacity(hint + extra.len());
        let mut scanned_attrs: Vec<(u32, u32)> = Vec::with_capacity(hint);
        for (record, a) in attrs {
            if self.ignored.matches(a.key) {
                continue;
            }
            match self.key_rule(&a) {
                Some(action) => {
                    let text = a.value.to_text();
                    decided.push((a.index, record, self.whole(action, &text)));
                }
                None => {
                    if let (Value::Str(_), Some(range)) = (a.value, a.value_range()) {
                        scan.push(range);
                        scanned_attrs.push((a.index, record));
                    }
                }
            }
        }
        let n_attrs = scan.len();
        scan.extend_from_slice(extra);
        // The kernel answers in range order; a stable sort keeps that order (and each range's
        // own match order) without a list per range.
        let mut found = match &self.patterns {
            Some(p) => p.scan(arena, &scan),
            None => Vec::new(),
        };
        found.sort_by_key(|m| m.range);
        let mut next = 0;
        let mut matches: Vec<(u32, u32, u32)> = Vec::new();
        let text_of = |(o, l): (u32, u32)| arena.get(o as usize..(o + l) as usize).unwrap_or("");
        let mut extras = Vec::with_capacity(extra.len());
        for (i, &range) in scan.iter().enumerate() {
            matches.clear();
            while let Some(m) = found.get(next).filter(|m| m.range as usize == i) {
                matches.push((m.pattern, m.start, m.end));
                next += 1;
            }
            let outcome = if matches.is_empty() && self.max_value_len.is_none() {
                Outcome::Keep
            } else {
                self.apply_matches(text_of(range), &matches)
            };
            if i < n_attrs {
                let (index, record) = scanned_attrs[i];
                decided.push((index, record, outcome));
            } else {
                extras.push(outcome);
            }
        }
        (decided, extras)
    }

    fn emit(
        &self,
        decided: Vec<(u32, u32, Outcome)>,
        keys: impl Fn(u32) -> String,
        out: &mut Edits,
        records: usize,
    ) {
        let mut touched: Vec<Vec<String>> = vec![
            Vec::new();
            if self.summary == Summary::Silent {
                0
            } else {
                records
            }
        ];
        for (index, record, outcome) in decided {
            match outcome {
                Outcome::Keep => continue,
                Outcome::Replace(v) => out.replace(index, v),
                Outcome::Drop => out.remove(index),
            }
            if let Some(t) = touched.get_mut(record as usize) {
                t.push(keys(index));
            }
        }
        for (r, keys) in touched.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            out.upsert(r as u32, "redaction.redacted.count", keys.len() as i64);
            if self.summary == Summary::Debug {
                out.upsert(r as u32, "redaction.redacted.keys", keys.join(","));
            }
        }
    }

    pub fn redact_spans(&self, batch: &SpanBatch<'_>, out: &mut SpanEdits) {
        if !self.spans {
            return;
        }
        let names: Vec<(u32, u32)> = if self.span_names {
            batch.spans().map(|s| s.name_range()).collect()
        } else {
            Vec::new()
        };
        let all = batch.attrs();
        let (decided, renames) =
            self.decide(batch.arena(), all.iter().map(|a| (a.record, a)), &names);
        for (i, outcome) in renames.into_iter().enumerate() {
            match outcome {
                Outcome::Keep => {}
                Outcome::Replace(n) => out.rename(i as u32, n),
                Outcome::Drop => out.rename(i as u32, "[REDACTED]"),
            }
        }
        // Keys are only named in a non-silent summary: no list of them otherwise.
        let keys: Vec<&str> = if self.summary == Summary::Silent {
            Vec::new()
        } else {
            all.iter().map(|a| a.key).collect()
        };
        self.emit(
            decided,
            |i| keys[i as usize].to_string(),
            &mut out.attrs,
            batch.len(),
        );
    }

    pub fn redact_logs(&self, batch: &LogBatch<'_>, out: &mut LogEdits) {
        if !self.logs {
            return;
        }
        let bodies: Vec<(u32, u32)> = batch.logs().map(|l| l.body_range()).collect();
        let all = batch.attrs();
        let (decided, new_bodies) =
            self.decide(batch.arena(), all.iter().map(|a| (a.record, a)), &bodies);
        for (i, outcome) in new_bodies.into_iter().enumerate() {
            match outcome {
                Outcome::Keep => {}
                Outcome::Replace(b) => out.set_body(i as u32, b),
                Outcome::Drop => out.set_body(i as u32, "[REDACTED]"),
            }
        }
        // Keys are only named in a non-silent summary: no list of them otherwise.
        let keys: Vec<&str> = if self.summary == Summary::Silent {
            Vec::new()
        } else {
            all.iter().map(|a| a.key).collect()
        };
        self.emit(
            decided,
            |i| keys[i as usize].to_string(),
            &mut out.attrs,
            batch.len(),
        );
    }
}

pub struct Redact(Redactor);

impl Plugin for Redact {
    const NAME: &'static str = "redact";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn init(config: Config) -> Result<Self, Error> {
        Redactor::new(&config).map(Redact)
    }
}

impl SpanProcessor for Redact {
    fn on_spans(&mut self, batch: &SpanBatch<'_>, out: &mut SpanEdits) -> Result<(), Error> {
        self.0.redact_spans(batch, out);
        Ok(())
    }
}

impl LogProcessor for Redact {
    fn on_logs(&mut self, batch: &LogBatch<'_>, out: &mut LogEdits) -> Result<(), Error> {
        self.0.redact_logs(batch, out);
        Ok(())
    }
}

export_plugin!(Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use acpd_plugin_sdk::AttrValue;
    use acpd_plugin_sdk::testing::Batch;

    fn redactor(config: &str) -> Redactor {
        Redactor::new(&Config::from_json(config).unwrap()).unwrap()
    }

    fn one(config: &str, key: &str, value: &str) -> Option<AttrValue> {
        let b = Batch::new().span("s", &[(key, value.into())]);
        let mut e = SpanEdits::default();
        redactor(config).redact_spans(&b.spans_view(), &mut e);
        b.apply_spans(&e)[0].1.first().map(|(_, v)| v.clone())
    }

    fn text(v: Option<AttrValue>) -> String {
        match v {
            Some(AttrValue::Str(s)) => s,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn detectors_mask_only_the_secret() {
        let cases = [
            (
                "key sk-ant-api03-Zq8vR2mN5pL7xK4wT9yB3cF6hJ1dS0aE end",
                "[REDACTED:api_key]",
            ),
            ("aws AKIAIOSFODNN7EXAMPLE end", "[REDACTED:api_key]"),
            ("api_key=abcdef123456 end", "[REDACTED:api_key]"),
            (
                "Authorization: Bearer abc.def-ghi_jkl end",
                "[REDACTED:bearer]",
            ),
            (
                "t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl end",
                "[REDACTED:jwt]",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
                "[REDACTED:private_key]",
            ),
            ("mail bob.smith@example.com end", "[REDACTED:email]"),
            ("card 4111 1111 1111 1111 end", "[REDACTED:card]"),
        ];
        for (input, token) in cases {
            let out = text(one("{}", "msg", input));
            assert!(out.contains(token), "{input:?} -> {out:?}");
        }
        let url = text(one("{}", "msg", "db https://admin:hunter2@db.internal/x"));
        assert_eq!(url, "db https://[REDACTED:url_credentials]@db.internal/x");
    }

    #[test]
    fn harmless_values_are_left_alone() {
        assert_eq!(
            one("{}", "msg", "order 1234567890123456 shipped"),
            Some("order 1234567890123456 shipped".into()),
            "fails Luhn"
        );
        assert_eq!(one("{}", "msg", "hello world"), Some("hello world".into()));
        assert_eq!(
            one("{}", "session.id", "bob@example.com"),
            Some("bob@example.com".into()),
            "ignored key"
        );
    }

    #[test]
    fn blocked_keys_lose_the_whole_value() {
        assert_eq!(
            one("{}", "http.request.header.authorization", "Basic xyz"),
            Some("[REDACTED]".into())
        );
        assert_eq!(one("{}", "db.password", "x"), Some("[REDACTED]".into()));
        assert_eq!(
            one(
                r#"{"blocked_keys": ["customer.*"]}"#,
                "customer.name",
                "Ann"
            ),
            Some("[REDACTED]".into())
        );
        assert_eq!(
            one(r#"{"actions": {"blocked_keys": "drop"}}"#, "token", "x"),
            None
        );
    }

    #[test]
    fn actions_hash_keep_last_truncate_drop() {
        let h = text(one(
            r#"{"actions": {"email": "hash"}, "hash_key": "pii"}"#,
            "m",
            "to bob@example.com",
        ));
        assert!(
            h.starts_with("to [hash:") && h.len() == "to [hash:]".len() + 16,
            "{h}"
        );
        let again = text(one(
            r#"{"actions": {"email": "hash"}}"#,
            "m",
            "to bob@example.com",
        ));
        assert_eq!(h, again, "keyed hashes are stable");
        let k = text(one(
            r#"{"actions": {"card": "keep_last"}}"#,
            "m",
            "4111111111111111",
        ));
        assert_eq!(k, "****1111");
        let t = text(one(
            r#"{"actions": {"email": "truncate"}, "max_len": 3}"#,
            "m",
            "bob@example.com",
        ));
        assert_eq!(t, "bob...");
        assert_eq!(
            one(
                r#"{"actions": {"email": "drop"}}"#,
                "m",
                "x bob@example.com"
            ),
            None
        );
    }

    #[test]
    fn allow_list_mode_masks_everything_else() {
        let b = Batch::new().span(
            "s",
            &[
                ("http.route", "/a".into()),
                ("user.name", "ann".into()),
                ("session.id", "s1".into()),
            ],
        );
        let mut e = SpanEdits::default();
        redactor(r#"{"allowed_keys": ["http.*"]}"#).redact_spans(&b.spans_view(), &mut e);
        let out = &b.apply_spans(&e)[0].1;
        assert_eq!(out[0], ("http.route".into(), "/a".into()));
        assert_eq!(out[1], ("user.name".into(), "[REDACTED]".into()));
        assert_eq!(
            out[2],
            ("session.id".into(), "s1".into()),
            "ignored keys are never touched"
        );
    }

    #[test]
    fn names_bodies_signals_and_summary() {
        let b = Batch::new().span(
            "execute_tool mail bob@example.com",
            &[("a", "x@example.com".into())],
        );
        let mut e = SpanEdits::default();
        redactor(r#"{"summary": "debug"}"#).redact_spans(&b.spans_view(), &mut e);
        let out = b.apply_spans(&e);
        assert_eq!(out[0].0, "execute_tool mail [REDACTED:email]");
        assert!(
            out[0]
                .1
                .contains(&("redaction.redacted.count".into(), 1i64.into()))
        );
        assert!(
            out[0]
                .1
                .contains(&("redaction.redacted.keys".into(), "a".into()))
        );

        let l = Batch::new().log(
            "token sk-proj-Zq8vR2mN5pL7xK4wT9yB3cF6h",
            "acpd.child.stderr",
            &[],
        );
        let mut e = LogEdits::default();
        redactor("{}").redact_logs(&l.logs_view(), &mut e);
        assert_eq!(
            l.apply_logs(&e)[0].as_ref().unwrap().0,
            "token [REDACTED:api_key]"
        );
        let mut e = LogEdits::default();
        redactor(r#"{"signals": ["spans"]}"#).redact_logs(&l.logs_view(), &mut e);
        assert!(e.bodies().is_empty(), "logs out of scope");
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let err = |c: &str| match Redactor::new(&Config::from_json(c).unwrap()) {
            Err(Error::Config(m)) => m,
            other => panic!("{c}: {:?}", other.map(|_| ())),
        };
        assert!(err(r#"{"detectors": ["nope"]}"#).contains("unknown detector"));
        assert!(err(r#"{"action": "zap"}"#).contains("unknown action"));
        assert!(err(r#"{"blocked_values": ["("]}"#).contains("bad pattern"));
        assert!(err(r#"{"colour": 1}"#).contains("unknown field"));
        assert!(err(r#"{"summary": "loud"}"#).contains("summary"));
    }

    #[test]
    fn key_rules_ignore_ascii_case() {
        let m = KeyMatcher::new(&["Token".into(), "*.Secret".into(), "customer.*".into()]);
        assert!(m.matches("TOKEN") && m.matches("token"));
        assert!(m.matches("db.SECRET") && m.matches("Customer.Name"));
        assert!(m.matches("HTTP.Request.Header.token"), "header name");
        assert!(m.matches("http.response.header.x.secret"));
        assert!(!m.matches("tokens") && !m.matches("secret") && !m.matches("customer"));
        assert!(!m.matches("http.request.header.") && !m.matches("tökén"));
        // Only the patterns a key could match are compared: every edge still matches.
        let m = KeyMatcher::new(&["ÄPI.*".into(), "*.kéy".into(), "x".into(), "abc".into()]);
        assert!(
            m.matches("Äpi.v")
                && m.matches("a.Kéy")
                && !m.matches("a.KÉy")
                && m.matches("X")
                && m.matches("ABC")
        );
        assert!(!m.matches("äpi.v") && !m.matches("ab") && !m.matches("abcd") && !m.matches(""));
        let all = KeyMatcher::new(&["*".into()]);
        assert!(all.matches("") && all.matches("any.key") && all.matches("ü"));
        let any_suffix = KeyMatcher::new(&["*".into(), "*x".into()]);
        assert!(any_suffix.matches("") && any_suffix.matches("y"));
        assert_eq!(
            one("{}", "HTTP.Request.Header.Authorization", "Basic xyz"),
            Some("[REDACTED]".into())
        );
        assert_eq!(
            one("{}", "Session.ID", "bob@example.com"),
            Some("bob@example.com".into()),
            "ignored keys ignore case too"
        );
    }

    #[test]
    fn luhn_checks() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(!luhn("12345"));
    }
}

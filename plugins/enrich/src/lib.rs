//! acpd's first-party enrichment plugin: attributes that say who is asking, added where the
//! daemon knows it (the request span, inherited by every span the request causes).
//!
//! - `static`: added to every request;
//! - `deployment`: added as `deployment.<key>`;
//! - `headers`: request header -> attribute (the daemon never sends credential headers);
//! - `workspaces`: glob over the workspace path -> attributes (first match wins).

use acpd_plugin_sdk::{
    Attrs, Config, Edits, Error, Hook, Observer, Plugin, Selector, export_plugin,
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkspaceRule {
    glob: String,
    attributes: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Cfg {
    #[serde(rename = "static")]
    statics: BTreeMap<String, String>,
    deployment: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    workspaces: Vec<WorkspaceRule>,
    /// Also enrich each prompt's dispatch (the bridge span) with `static` and `deployment`.
    on_dispatch: bool,
}

/// Key prefixes that name the daemon's own facts (the daemon refuses them too).
const RESERVED: &[&str] = &[
    "http.",
    "url.",
    "server.",
    "client.",
    "rpc.",
    "process.",
    "service.",
    "telemetry.",
    "otel.",
    "error.",
    "session.",
    "user_agent.",
];

fn check_key(k: &str) -> Result<(), Error> {
    let ok = !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !ok {
        return Err(Error::config(format!(
            "attribute key {k:?}: use letters, digits, . _ - /"
        )));
    }
    if let Some(p) = RESERVED.iter().find(|p| k.starts_with(**p)) {
        return Err(Error::config(format!(
            "attribute key {k:?}: the {p}* keys are the daemon's own"
        )));
    }
    Ok(())
}

/// A path glob: `*` within a segment, `**` across segments, `?` one character.
#[derive(Debug)]
pub struct Glob(Vec<char>);

impl Glob {
    pub fn new(p: &str) -> Result<Self, Error> {
        if p.is_empty() {
            return Err(Error::config("empty glob"));
        }
        if p.contains("***") {
            return Err(Error::config(format!("glob {p:?}: `***` is not a pattern")));
        }
        Ok(Glob(p.chars().collect()))
    }

    pub fn matches(&self, path: &str) -> bool {
        let s: Vec<char> = path.chars().collect();
        fn m(p: &[char], s: &[char]) -> bool {
            match p.first() {
                None => s.is_empty(),
                Some('*') if p.get(1) == Some(&'*') => match &p[2..] {
                    // `**/x`: zero or more whole segments, then x.
                    ['/', after @ ..] => {
                        (0..=s.len()).any(|i| (i == 0 || s[i - 1] == '/') && m(after, &s[i..]))
                    }
                    rest => (0..=s.len()).any(|i| m(rest, &s[i..])),
                },
                Some('*') => (0..=s.len())
                    .take_while(|&i| i == 0 || s[i - 1] != '/')
                    .any(|i| m(&p[1..], &s[i..])),
                Some('?') => !s.is_empty() && s[0] != '/' && m(&p[1..], &s[1..]),
                Some(c) => s.first() == Some(c) && m(&p[1..], &s[1..]),
            }
        }
        m(&self.0, &s)
    }
}

pub struct Enrich {
    fixed: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    workspaces: Vec<(Glob, Vec<(String, String)>)>,
    on_dispatch: bool,
}

impl Plugin for Enrich {
    const NAME: &'static str = "enrich";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn init(config: Config) -> Result<Self, Error> {
        let c: Cfg = config.parse()?;
        let mut fixed = Vec::new();
        for (k, v) in &c.statics {
            check_key(k)?;
            fixed.push((k.clone(), v.clone()));
        }
        for (k, v) in &c.deployment {
            let key = format!("deployment.{k}");
            check_key(&key)?;
            fixed.push((key, v.clone()));
        }
        let mut headers = Vec::new();
        for (h, k) in &c.headers {
            check_key(k)?;
            headers.push((
                format!("http.request.header.{}", h.to_ascii_lowercase()),
                k.clone(),
            ));
        }
        let mut workspaces = Vec::new();
        for w in &c.workspaces {
            for k in w.attributes.keys() {
                check_key(k)?;
            }
            workspaces.push((
                Glob::new(&w.glob)?,
                w.attributes.clone().into_iter().collect(),
            ));
        }
        Ok(Enrich {
            fixed,
            headers,
            workspaces,
            on_dispatch: c.on_dispatch,
        })
    }

    /// Only the hooks where the config adds something, and only the keys it reads. Without
    /// static attributes a request is worth a call only when it carries a mapped header or
    /// names a workspace a glob could match; with an empty config (the default set's) the
    /// plugin adds nothing anywhere and asks for no call at all.
    fn selectors(&self) -> Vec<Selector> {
        const WORKSPACE_PATH: &str = "acpd.workspace.path";
        let mut reads: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        if !self.workspaces.is_empty() {
            reads.push(WORKSPACE_PATH.into());
        }
        // The keys sent: those it reads, never none (an empty list means every key).
        let keys = if reads.is_empty() {
            vec![WORKSPACE_PATH.to_string()]
        } else {
            reads.clone()
        };
        let statics = !self.fixed.is_empty();
        let request = Selector::hooks(&[Hook::Request]).keys(keys.clone());
        let mut out = Vec::new();
        if statics {
            out.push(request);
        } else if !reads.is_empty() {
            out.push(request.require_any(reads));
        }
        if self.on_dispatch && statics {
            out.push(Selector::hooks(&[Hook::Dispatch]).keys(keys));
        }
        if out.is_empty() {
            out.push(Selector::none());
        }
        out
    }
}

impl Enrich {
    fn fixed(&self, out: &mut Edits) {
        for (k, v) in &self.fixed {
            out.upsert(0, k.as_str(), v.as_str());
        }
    }
}

impl Observer for Enrich {
    fn on_request(&mut self, attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        self.fixed(out);
        for (header, key) in &self.headers {
            if let Some(v) = attrs.get(header).and_then(|v| v.as_str()) {
                out.upsert(0, key.as_str(), v);
            }
        }
        if let Some(path) = attrs.get("acpd.workspace.path").and_then(|v| v.as_str())
            && let Some((_, set)) = self.workspaces.iter().find(|(g, _)| g.matches(path))
        {
            for (k, v) in set {
                out.upsert(0, k.as_str(), v.as_str());
            }
        }
        Ok(())
    }

    fn on_dispatch(&mut self, _attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        self.fixed(out);
        Ok(())
    }
}

export_plugin!(Enrich);

#[cfg(test)]
mod tests {
    use super::*;
    use acpd_plugin_sdk::testing::Batch;

    fn run(config: &str, attrs: &[(&str, &str)]) -> Vec<(String, acpd_plugin_sdk::AttrValue)> {
        let mut p = Enrich::init(Config::from_json(config).unwrap()).unwrap();
        let b = Batch::new().attrs(
            &attrs
                .iter()
                .map(|(k, v)| (*k, (*v).into()))
                .collect::<Vec<_>>(),
        );
        let mut out = Edits::default();
        p.on_request(&b.attrs_view(), &mut out).unwrap();
        let before = attrs.len();
        b.apply(&out)[0][before..].to_vec()
    }

    #[test]
    fn static_headers_and_workspaces() {
        let cfg = r#"{"static": {"org.name": "acme"}, "deployment": {"environment": "prod"},
            "headers": {"X-Team": "team.name"},
            "workspaces": [{"glob": "/srv/**/payments/*", "attributes": {"org.unit": "payments"}}]}"#;
        let added = run(
            cfg,
            &[
                ("http.request.header.x-team", "core"),
                ("acpd.workspace.path", "/srv/repos/a/payments/api"),
            ],
        );
        let keys: Vec<&str> = added.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "org.name",
                "deployment.environment",
                "team.name",
                "org.unit"
            ]
        );
        assert!(
            run(cfg, &[("acpd.workspace.path", "/srv/payments/api/deep")])
                .iter()
                .all(|(k, _)| k != "org.unit")
        );
        assert!(
            run("{}", &[("http.request.header.x-team", "core")]).is_empty(),
            "an empty config adds nothing"
        );
    }

    #[test]
    fn selectors_ask_only_for_calls_that_can_add_something() {
        let sel = |cfg: &str| {
            Enrich::init(Config::from_json(cfg).unwrap())
                .unwrap()
                .selectors()
        };
        let hooks = |s: &[Selector]| s.iter().flat_map(|s| s.hooks.clone()).collect::<Vec<_>>();
        let none = sel("{}");
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].require_any, [""], "an empty config: no call at all");
        assert_eq!(
            sel(r#"{"on_dispatch": true}"#)[0].require_any,
            [""],
            "nothing static to add at dispatch either"
        );
        let fixed = sel(r#"{"static": {"org.name": "acme"}, "on_dispatch": true}"#);
        assert_eq!(hooks(&fixed), [Hook::Request, Hook::Dispatch]);
        assert!(
            fixed
                .iter()
                .all(|s| s.require_any.is_empty() && !s.keys.is_empty())
        );
        let mapped = sel(r#"{"headers": {"X-Team": "team.name"},
            "workspaces": [{"glob": "/srv/*", "attributes": {"org.unit": "u"}}]}"#);
        assert_eq!(hooks(&mapped), [Hook::Request]);
        assert_eq!(
            mapped[0].require_any,
            ["http.request.header.x-team", "acpd.workspace.path"]
        );
    }

    #[test]
    fn globs() {
        let g = |p: &str, s: &str| Glob::new(p).unwrap().matches(s);
        assert!(g("/a/*/c", "/a/b/c"));
        assert!(!g("/a/*/c", "/a/b/x/c"));
        assert!(g("/a/**/c", "/a/b/x/c"));
        assert!(g("/a/**", "/a/b/x/c"));
        assert!(g("/a/**/c", "/a/c"));
        assert!(!g("/a/**/c", "/a/bc"));
        assert!(g("/a/?", "/a/b"));
        assert!(!g("/a/?", "/a/bb"));
    }

    #[test]
    fn reserved_and_bad_keys_are_refused() {
        let err = |c: &str| Enrich::init(Config::from_json(c).unwrap()).err().unwrap();
        assert!(
            matches!(err(r#"{"static": {"session.id": "x"}}"#), Error::Config(m) if m.contains("daemon's own"))
        );
        assert!(matches!(
            err(r#"{"static": {"bad key": "x"}}"#),
            Error::Config(_)
        ));
        assert!(matches!(
            err(r#"{"workspaces": [{"glob": "", "attributes": {}}]}"#),
            Error::Config(_)
        ));
    }
}

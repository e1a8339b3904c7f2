//! The user docs agree with the code where a test can tell: every route the daemon's
//! `/openapi.json` lists is described in `docs/API.md`, every metric name in
//! `host/src/telemetry/semconv.rs` is listed in `docs/TELEMETRY.md`, and every plugin hook of
//! `wit/plugin.wit` is described in `docs/PLUGINS.md`. The files are read when the test runs,
//! so adding a route, a metric or a hook without its doc line fails here; the unit checks below
//! show that the extraction would see such an addition.

use acpd_tests::*;
use anyhow::Result;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

const METHODS: [&str; 5] = ["GET", "POST", "DELETE", "PUT", "PATCH"];

fn repo_file(rel: &str) -> String {
    let path: PathBuf = manifest_dir().join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A route as `METHOD /path`, with every path parameter written `{}` (docs may name them as
/// they like: `{requestId}`, `{request_id}`, `:requestId`).
fn normalize(method: &str, path: &str) -> String {
    let path = path
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') || seg.starts_with(':') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    format!("{method} {path}")
}

/// Every `METHOD /path` written in a Markdown text.
fn doc_routes(md: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for method in METHODS {
        let needle = format!("{method} /");
        let mut rest = md;
        while let Some(at) = rest.find(&needle) {
            let start = at + method.len() + 1;
            let path: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/_.-{}:".contains(*c))
                .collect();
            let path = path.trim_end_matches(['.', ':']);
            out.insert(normalize(method, path));
            rest = &rest[start..];
        }
    }
    out
}

/// Every operation of an OpenAPI document, normalized.
fn openapi_routes(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.to_ascii_lowercase()).is_some() {
                out.insert(normalize(method, path));
            }
        }
    }
    out
}

fn undocumented_routes(doc: &Value, md: &str) -> Vec<String> {
    let documented = doc_routes(md);
    openapi_routes(doc)
        .into_iter()
        .filter(|r| !documented.contains(r))
        .collect()
}

/// `(constant, metric name)` for every `pub const M_*: &str = "...";` in semconv.rs.
fn metric_names(semconv: &str) -> Vec<(String, String)> {
    semconv
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const M_")?;
            let (name, value) = rest.split_once(':')?;
            let value = value.split_once('"')?.1.split_once('"')?.0;
            Some((format!("M_{}", name.trim()), value.to_string()))
        })
        .collect()
}

/// `word` appears in `text` as a whole name (`acpd.prompt.duration` is not found in
/// `acpd.prompt.duration_ms`).
fn mentions(text: &str, word: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = &text[at + word.len()..];
        // A full stop ending a sentence is not part of the name.
        let after = after
            .strip_prefix('.')
            .filter(|r| r.is_empty() || r.starts_with(char::is_whitespace))
            .unwrap_or(after);
        !before.is_some_and(name_char) && !after.starts_with(name_char)
    })
}

fn undocumented_metrics(semconv: &str, md: &str) -> Vec<String> {
    metric_names(semconv)
        .into_iter()
        .filter(|(_, name)| !mentions(md, name))
        .map(|(c, name)| format!("{c} = {name:?}"))
        .collect()
}

/// The cases of `enum hook` in the WIT package.
fn wit_hooks(wit: &str) -> Vec<String> {
    let Some(start) = wit.find("enum hook {") else {
        return Vec::new();
    };
    let body = &wit[start + "enum hook {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn route_extraction_sees_an_added_route() {
    let md = "| `GET /health` | ... |\n| `POST /session/{id}/permission/{requestId}` | ... |\n\
              Also `DELETE /session/:id`.";
    let doc = json!({"paths": {
        "/health": {"get": {}},
        "/session/{id}/permission/{request_id}": {"post": {}},
        "/session/{id}": {"delete": {}},
    }});
    assert_eq!(undocumented_routes(&doc, md), Vec::<String>::new());
    // A new route, and a new method on a documented path, are both reported.
    let mut grown = doc.clone();
    grown["paths"]["/session/{id}/fork"] = json!({"post": {}});
    grown["paths"]["/health"]["post"] = json!({});
    assert_eq!(
        undocumented_routes(&grown, md),
        ["POST /health", "POST /session/{}/fork"]
    );
    // A route named only as a prefix of a longer one is not documented by it.
    let doc = json!({"paths": {"/debug/traces.json": {"get": {}}}});
    assert_eq!(
        undocumented_routes(&doc, "`GET /debug/traces`"),
        ["GET /debug/traces.json"]
    );
}

#[test]
fn metric_extraction_sees_an_added_metric() {
    let semconv = "pub const M_A: &str = \"acpd.a.count\";\n\
                   /// doc\npub const M_B: &str = \"acpd.b\";\npub const SPAN_X: &str = \"x\";\n";
    assert_eq!(
        metric_names(semconv),
        [
            ("M_A".to_string(), "acpd.a.count".to_string()),
            ("M_B".to_string(), "acpd.b".to_string())
        ]
    );
    let md = "| `acpd.a.count` | counter |\nThe `acpd.b_total` series.";
    assert_eq!(undocumented_metrics(semconv, md), ["M_B = \"acpd.b\""]);
    assert!(undocumented_metrics(semconv, "`acpd.a.count`, and acpd.b.").is_empty());
    // The real file yields its metrics: an extraction that finds nothing proves nothing.
    let real = metric_names(&repo_file("host/src/telemetry/semconv.rs"));
    assert!(real.len() >= 10, "{real:?}");
    assert!(
        real.iter()
            .any(|(c, n)| c == "M_HTTP_DURATION" && n == "http.server.request.duration")
    );
}

#[test]
fn every_metric_in_semconv_is_in_telemetry_md() {
    let missing = undocumented_metrics(
        &repo_file("host/src/telemetry/semconv.rs"),
        &repo_file("docs/TELEMETRY.md"),
    );
    assert!(
        missing.is_empty(),
        "metrics missing from docs/TELEMETRY.md: {missing:?}"
    );
}

#[test]
fn every_plugin_hook_is_in_plugins_md() {
    let hooks = wit_hooks(&repo_file("wit/plugin.wit"));
    assert!(hooks.len() >= 6, "{hooks:?}");
    assert_eq!(wit_hooks("enum hook {\n a,\n b-c,\n}"), ["a", "b-c"]);
    let md = repo_file("docs/PLUGINS.md");
    let missing: Vec<_> = hooks
        .iter()
        .filter(|h| !md.contains(&format!("`{h}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "hooks missing from docs/PLUGINS.md: {missing:?}"
    );
}

#[tokio::test]
async fn every_route_in_openapi_is_in_api_md() -> Result<()> {
    let d = Daemon::builder().args(&["--no-plugins"]).start().await?;
    let r = d.get("/openapi.json").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let routes = openapi_routes(&r.body);
    assert!(routes.len() >= 19, "{routes:?}");
    let missing = undocumented_routes(&r.body, &repo_file("docs/API.md"));
    assert!(
        missing.is_empty(),
        "routes in /openapi.json missing from docs/API.md: {missing:?}"
    );
    Ok(())
}

#[test]
fn docs_point_nowhere_outside_the_repository() {
    for rel in [
        "README.md",
        "docs/API.md",
        "docs/PLUGINS.md",
        "docs/DEPLOY.md",
    ] {
        let text = repo_file(rel);
        // The steering checkout's directory, spelled so that this file does not name it either.
        let outside = ["..", "shared"].join("/");
        assert!(!text.contains(&outside), "{rel} refers to {outside}");
    }
}

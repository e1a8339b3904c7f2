//! `/openapi.json` against the routes that exist: every documented operation is served, every
//! other method on a documented path is 405, and the Host/CORS/auth guards hold on every
//! documented operation (the document is the list of routes, so no route can be forgotten).

use acpd_tests::*;
use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "openapi-test-token-5c1e";
const METHODS: [&str; 5] = ["GET", "POST", "DELETE", "PUT", "PATCH"];

/// A template's path with every parameter filled with `x`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every (method, concrete path, template) the document lists.
fn operations(doc: &Value) -> Vec<(Method, String, String)> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let concrete = concrete(template);
        for m in METHODS {
            if item.get(m.to_ascii_lowercase()).is_some() {
                out.push((m.parse().unwrap(), concrete.clone(), template.clone()));
            }
        }
    }
    out
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn document(d: &Daemon) -> Result<Value> {
    // Public: tools fetch it without the token.
    let r = d.get("/openapi.json").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(header(&r, "content-type"), "application/json");
    assert_eq!(r.body["openapi"], "3.1.0");
    Ok(r.body)
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_that_exist() -> Result<()> {
    let d = Daemon::builder().args(&["--token", TOKEN]).start().await?;
    let doc = document(&d).await?;
    let ops = operations(&doc);
    assert!(ops.len() >= 19, "{} operations", ops.len());
    let auth = format!("Bearer {TOKEN}");

    for (template, item) in doc["paths"].as_object().unwrap() {
        let concrete = concrete(template);
        for m in METHODS {
            let method: Method = m.parse().unwrap();
            let body = if m == "POST" { json!({}) } else { Value::Null };
            let mut req = d
                .http
                .request(method.clone(), d.url(&concrete))
                .header("Authorization", &auth);
            if !body.is_null() {
                req = req.json(&body);
            }
            let r = d.send(req).await?;
            if item.get(m.to_ascii_lowercase()).is_some() {
                // The route matched: whatever the handler said, it was not the router's 404/405.
                assert_ne!(r.status, 405, "{m} {concrete}: {}", r.body);
                assert_ne!(r.body["code"], "not_found", "{m} {concrete}");
                assert!(r.status < 500, "{m} {concrete}: {} {}", r.status, r.body);
                let documented = &item[m.to_ascii_lowercase()]["responses"];
                assert!(
                    documented.get(r.status.to_string()).is_some(),
                    "{m} {concrete} answered {} which {template} does not document: {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(r.status, 405, "{m} {concrete}: {}", r.body);
                assert_eq!(r.body["code"], "method_not_allowed");
            }
        }
    }
    // And nothing undocumented answers.
    for path in ["/sessions", "/session/x/unknown", "/admin", "/openapi.yaml"] {
        let r = d
            .send(d.http.get(d.url(path)).header("Authorization", &auth))
            .await?;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.body["code"], "not_found");
    }
    Ok(())
}

#[tokio::test]
async fn host_cors_and_auth_hold_on_every_route() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--token", TOKEN, "--allow-origin", "http://a.test"])
        .start()
        .await?;
    let doc = document(&d).await?;
    let auth = format!("Bearer {TOKEN}");
    for (method, path, template) in operations(&doc) {
        let req = || {
            let r = d
                .http
                .request(method.clone(), d.url(&path))
                .header("Authorization", &auth);
            if method == Method::POST {
                r.json(&json!({}))
            } else {
                r
            }
        };
        let what = format!("{method} {path}");

        let r = d
            .send(req().header("Host", format!("evil.test:{}", d.port)))
            .await?;
        assert_eq!(r.status, 403, "{what} bad Host: {}", r.body);
        assert_eq!(r.body["code"], "invalid_host", "{what}");

        let r = d.send(req().header("Origin", "http://b.test")).await?;
        assert_eq!(r.status, 403, "{what} foreign Origin: {}", r.body);
        assert_eq!(r.body["code"], "cors_denied", "{what}");
        assert!(r.headers.get("access-control-allow-origin").is_none());

        let r = d.send(req().header("Origin", "http://a.test")).await?;
        assert_ne!(r.status, 403, "{what} allowed Origin: {}", r.body);
        assert_eq!(header(&r, "access-control-allow-origin"), "http://a.test");
        assert!(header(&r, "vary").contains("Origin"), "{what}");

        let pre = d
            .send(
                d.http
                    .request(Method::OPTIONS, d.url(&path))
                    .header("Origin", "http://a.test")
                    .header("Access-Control-Request-Method", method.as_str()),
            )
            .await?;
        assert_eq!(pre.status, 204, "{what} preflight: {}", pre.body);
        assert!(
            header(&pre, "access-control-allow-methods").contains(method.as_str()),
            "{what}: {:?}",
            pre.headers
        );

        // Without the token: 401 unless the document marks the route public (security `{}` only).
        let security = &doc["paths"][&template][method.as_str().to_ascii_lowercase()]["security"];
        let public = security.as_array().is_some_and(|s| {
            s.iter()
                .all(|req| req.as_object().is_some_and(|o| o.is_empty()))
        });
        let mut anon = d.http.request(method.clone(), d.url(&path));
        if method == Method::POST {
            anon = anon.json(&json!({}));
        }
        let r = d.send(anon).await?;
        if public {
            assert_ne!(r.status, 401, "{what} is documented public: {}", r.body);
        } else {
            assert_eq!(r.status, 401, "{what} without the token: {}", r.body);
            assert_eq!(r.body["code"], "unauthorized");
        }
    }
    Ok(())
}

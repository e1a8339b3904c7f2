//! The northbound guards and error contract: bearer auth, the Host check, CORS, JSON error
//! envelopes, start-up config errors, and the shape of /capabilities and /health.

use acpd_tests::*;
use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "e2e-guard-token-93b2";

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Every non-2xx is a JSON envelope with a string `error` and a string `code`.
fn assert_envelope(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(
        header(r, "content-type").starts_with("application/json"),
        "content-type {:?}",
        r.headers.get("content-type")
    );
    assert!(r.body["error"].is_string(), "{}", r.body);
    assert_eq!(r.body["code"], code, "{}", r.body);
}

// ---- 8. auth -------------------------------------------------------------------------------

#[tokio::test]
async fn bearer_token_is_required_on_api_routes() -> Result<()> {
    let d = Daemon::builder().args(&["--token", TOKEN]).start().await?;
    let url = d.url("/session");
    let body = json!({"sessionScope": "thread"});

    let none = d.send(d.http.post(&url).json(&body)).await?;
    assert_envelope(&none, 401, "unauthorized");
    assert_eq!(none.body["error"], "Unauthorized");

    for wrong in [
        format!("Bearer {TOKEN}x"),
        "Bearer ".to_string(),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
    ] {
        let r = d
            .send(
                d.http
                    .post(&url)
                    .header("Authorization", &wrong)
                    .json(&body),
            )
            .await?;
        assert_eq!(r.status, 401, "{wrong:?} -> {}", r.body);
        assert_eq!(r.body["error"], "Unauthorized");
    }

    for good in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
    ] {
        let r = d
            .send(d.http.post(&url).header("Authorization", &good).json(&body))
            .await?;
        assert_eq!(r.status, 200, "{good:?} -> {}", r.body);
        assert!(r.body["sessionId"].is_string());
    }

    // Auth runs before routing: an unknown session without the token is 401, not 404.
    let r = d.get("/session/whatever").await?;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = d.get("/session/whatever/events").await?;
    assert_eq!(r.status, 401, "{}", r.body);

    // /health and /capabilities stay public without --require-auth.
    let h = d.get("/health").await?;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["status"], "ok");
    assert_eq!(d.get("/capabilities").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn require_auth_guards_health_and_capabilities() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--token", TOKEN, "--require-auth"])
        .start()
        .await?;
    for path in ["/health", "/health?deep=1", "/capabilities"] {
        let r = d.get(path).await?;
        assert_envelope(&r, 401, "unauthorized");
        assert_eq!(r.body["error"], "Unauthorized");
        let ok = d
            .send(
                d.http
                    .get(d.url(path))
                    .header("Authorization", format!("Bearer {TOKEN}")),
            )
            .await?;
        assert_eq!(ok.status, 200, "{path}: {}", ok.body);
    }
    Ok(())
}

#[tokio::test]
async fn token_from_env_is_honoured() -> Result<()> {
    let d = Daemon::builder()
        .env("QWEN_SERVER_TOKEN", TOKEN)
        .start()
        .await?;
    let r = d.post("/session", json!({})).await?;
    assert_eq!(r.status, 401, "{}", r.body);
    let ok = d
        .send(
            d.http
                .post(d.url("/session"))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .json(&json!({})),
        )
        .await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    Ok(())
}

// ---- 8. Host check -------------------------------------------------------------------------

#[tokio::test]
async fn host_header_must_name_a_loopback_host_and_the_port() -> Result<()> {
    let d = Daemon::start().await?;
    let port = d.port;
    for bad in [
        format!("evil.com:{port}"),
        "evil.com".to_string(),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("127.0.0.2:{port}"),
        format!("localhost.evil.com:{port}"),
    ] {
        let r = d
            .send(d.http.get(d.url("/health")).header("Host", &bad))
            .await?;
        assert_eq!(r.status, 403, "Host {bad:?} -> {}", r.body);
        assert_eq!(r.body["error"], "Invalid Host header", "{}", r.body);
        assert!(r.body["code"].is_string());
    }
    for good in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = d
            .send(d.http.get(d.url("/health")).header("Host", &good))
            .await?;
        assert_eq!(r.status, 200, "Host {good:?} -> {}", r.body);
    }
    // The Host check comes first: it also guards session routes.
    let r = d
        .send(
            d.http
                .post(d.url("/session"))
                .header("Host", format!("evil.com:{port}"))
                .json(&json!({})),
        )
        .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    Ok(())
}

// The non-loopback case (no Host check) is a unit test in host/src/http: tests bind loopback only.

// ---- 8. CORS -------------------------------------------------------------------------------

#[tokio::test]
async fn cors_refuses_origins_unless_allowed() -> Result<()> {
    let d = Daemon::start().await?;
    let r = d
        .send(
            d.http
                .get(d.url("/health"))
                .header("Origin", "http://a.test"),
        )
        .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"], "Request denied by CORS policy");
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let r = d
        .send(
            d.http
                .post(d.url("/session"))
                .header("Origin", "http://a.test")
                .json(&json!({})),
        )
        .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    // Without an Origin header (non-browser clients) nothing changes.
    let r = d.get("/health").await?;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test]
async fn cors_allowed_origin_gets_preflight_and_echo() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--allow-origin", "http://a.test", "--token", TOKEN])
        .start()
        .await?;
    // Preflight: answered before auth (browsers send it without credentials).
    let pre = d
        .send(
            d.http
                .request(Method::OPTIONS, d.url("/session"))
                .header("Origin", "http://a.test")
                .header("Access-Control-Request-Method", "POST")
                .header(
                    "Access-Control-Request-Headers",
                    "authorization, content-type, x-qwen-client-id",
                ),
        )
        .await?;
    assert_eq!(pre.status, 204, "{}", pre.body);
    assert_eq!(header(&pre, "access-control-allow-origin"), "http://a.test");
    let allow_headers = header(&pre, "access-control-allow-headers").to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "x-qwen-client-id",
        "last-event-id",
        "x-qwen-event-epoch",
    ] {
        assert!(allow_headers.contains(h), "{h} in {allow_headers:?}");
    }
    assert!(
        header(&pre, "access-control-allow-methods").contains("POST"),
        "{:?}",
        pre.headers
    );
    assert!(header(&pre, "vary").contains("Origin"), "{:?}", pre.headers);

    // An actual request: echo, Vary: Origin, exposed headers.
    let get = d
        .send(
            d.http
                .get(d.url("/health"))
                .header("Origin", "http://a.test"),
        )
        .await?;
    assert_eq!(get.status, 200, "{}", get.body);
    assert_eq!(header(&get, "access-control-allow-origin"), "http://a.test");
    let vary: Vec<&str> = get
        .headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(vary.iter().any(|v| v.contains("Origin")), "{vary:?}");
    let expose = header(&get, "access-control-expose-headers").to_ascii_lowercase();
    for h in ["retry-after", "x-qwen-event-epoch", "x-qwen-sse-stream-id"] {
        assert!(expose.contains(h), "{h} in {expose:?}");
    }

    // A 401 for an allowed origin still carries the CORS headers, so the browser can read it.
    let unauth = d
        .send(
            d.http
                .post(d.url("/session"))
                .header("Origin", "http://a.test")
                .json(&json!({})),
        )
        .await?;
    assert_eq!(unauth.status, 401, "{}", unauth.body);
    assert_eq!(
        header(&unauth, "access-control-allow-origin"),
        "http://a.test"
    );

    // Another origin is still refused, preflight included.
    for method in [Method::GET, Method::OPTIONS] {
        let r = d
            .send(
                d.http
                    .request(method.clone(), d.url("/health"))
                    .header("Origin", "http://b.test")
                    .header("Access-Control-Request-Method", "GET"),
            )
            .await?;
        assert_eq!(r.status, 403, "{method} -> {}", r.body);
        assert_eq!(r.body["error"], "Request denied by CORS policy");
    }
    Ok(())
}

#[tokio::test]
async fn cors_wildcard_allows_any_origin() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--allow-origin", "*"])
        .start()
        .await?;
    let r = d
        .send(
            d.http
                .get(d.url("/health"))
                .header("Origin", "https://anything.example"),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://anything.example"
    );
    Ok(())
}

// ---- 8. error envelopes ------------------------------------------------------------------------

#[tokio::test]
async fn malformed_requests_get_json_errors() -> Result<()> {
    let d = Daemon::start().await?;

    let bad_json = d
        .send(
            d.http
                .post(d.url("/session"))
                .header("Content-Type", "application/json")
                .body("{\"sessionScope\": "),
        )
        .await?;
    assert_envelope(&bad_json, 400, "invalid_json");
    assert_eq!(bad_json.body["error"], "Invalid JSON in request body");

    let unknown = d.get("/no/such/route").await?;
    assert_envelope(&unknown, 404, "not_found");
    let unknown = d.post("/session/x/y/z", json!({})).await?;
    assert_envelope(&unknown, 404, "not_found");

    let wrong_method = d.send(d.http.delete(d.url("/health"))).await?;
    assert!(
        wrong_method.status == 405 || wrong_method.status == 404,
        "{}",
        wrong_method.status
    );
    assert!(
        wrong_method.body["code"].is_string(),
        "{}",
        wrong_method.body
    );

    let missing = d.get("/session/no-such-session").await?;
    assert_envelope(&missing, 404, "session_not_found");
    assert_eq!(missing.body["sessionId"], "no-such-session");
    for (path, body) in [
        (
            "/session/no-such-session/prompt",
            json!({"prompt": [{"type": "text", "text": "hi"}]}),
        ),
        ("/session/no-such-session/cancel", json!({})),
        (
            "/session/no-such-session/permission/r1",
            json!({"outcome": {"outcome": "cancelled"}}),
        ),
    ] {
        let r = d.post(path, body).await?;
        assert_envelope(&r, 404, "session_not_found");
        assert_eq!(r.body["sessionId"], "no-such-session");
    }
    let r = d.delete("/session/no-such-session").await?;
    assert_envelope(&r, 404, "session_not_found");
    let r = d
        .send(
            d.http
                .get(d.url("/session/no-such-session/events"))
                .timeout(WAIT),
        )
        .await?;
    assert_envelope(&r, 404, "session_not_found");

    let bad_scope = d
        .post("/session", json!({"sessionScope": "galaxy"}))
        .await?;
    assert_envelope(&bad_scope, 400, "invalid_request");
    let bad_cwd = d
        .post("/session", json!({"cwd": "/definitely/not/here"}))
        .await?;
    assert_envelope(&bad_cwd, 400, "workspace_mismatch");
    Ok(())
}

#[tokio::test]
async fn invalid_prompts_are_400() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let path = format!("/session/{}/prompt", s.id);
    for body in [
        json!({"prompt": [{"type": "no_such_block", "text": "x"}]}),
        json!({"prompt": [{"type": "text"}]}),
        json!({"prompt": ["just a string"]}),
        json!({"prompt": []}),
        json!({"prompt": "hello"}),
        json!({}),
    ] {
        let shown = body.to_string();
        let r = d.post_as(&s, &path, body).await?;
        assert_eq!(r.status, 400, "{shown} -> {}", r.body);
        assert_envelope(&r, 400, "invalid_request");
    }
    let bad_json = d
        .send(
            d.http
                .post(d.url(&path))
                .header("X-Qwen-Client-Id", &s.client_id)
                .header("Content-Type", "application/json")
                .body("[1,"),
        )
        .await?;
    assert_envelope(&bad_json, 400, "invalid_json");

    // A client id this session never issued is refused.
    let stranger = SessionRef {
        id: s.id.clone(),
        client_id: "client_not-issued".into(),
    };
    let r = d.prompt(&stranger, "hi").await?;
    assert_envelope(&r, 400, "invalid_client_id");

    // Nothing of the above was queued: the session is idle with an empty queue.
    let st = d.get(&format!("/session/{}", s.id)).await?;
    assert_eq!(st.body["state"], "idle", "{}", st.body);
    assert_eq!(st.body["lastEventId"], 0, "{}", st.body);
    Ok(())
}

#[tokio::test]
async fn client_named_session_ids_and_bad_paths_or_queries_get_json_errors() -> Result<()> {
    let d = Daemon::start().await?;
    let long = "a".repeat(257);
    for id in [
        "a%23b",
        "a#b",
        "a?b",
        "x/y",
        ".",
        "..",
        "",
        "tab\there",
        "caf\u{e9}",
        long.as_str(),
    ] {
        let r = d.post("/session", json!({"sessionId": id})).await?;
        assert_envelope(&r, 400, "invalid_session_id");
    }
    // The same rule on load, reached through a percent-encoded path.
    let r = d.post("/session/a%25b/load", json!({})).await?;
    assert_envelope(&r, 400, "invalid_session_id");
    // A well-formed id is restored through the agent's `session/load`, and addressable.
    let id = "Team-1.session_2:x";
    let r = d.post("/session", json!({"sessionId": id})).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sessionId"], id);
    assert_eq!(d.get(&format!("/session/{id}")).await?.status, 200);

    // Path and query values axum cannot decode are JSON 400s too, not plain text.
    for path in [
        "/session/%FF%FE",
        "/workspace/x/sessions?size=-",
        "/workspace/x/sessions?size=99999999999999999999",
        "/debug/traces.json?limit=many",
    ] {
        let r = d.get(path).await?;
        assert_envelope(&r, 400, "invalid_request");
    }
    // A body that is not an object where the body is ignored anyway.
    for body in [json!([]), json!(503), json!("x")] {
        let r = d.post("/session/whatever/cancel", body).await?;
        assert_envelope(&r, 400, "invalid_request");
    }
    Ok(())
}

/// Sends `head` (request line and headers, no blank line), then `body`, over a raw TCP
/// connection and reads the response until the server closes it: (status, JSON body).
async fn raw_http(d: &Daemon, head: &str, body: &[u8]) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", d.port)).await?;
    let host = format!("127.0.0.1:{}", d.port);
    let request = format!("{head}\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    // The server may answer (and stop reading) before the body is complete: a failed write
    // is fine, the response is what counts.
    let _ = tokio::time::timeout(LONG, tcp.write_all(body)).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(LONG, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    anyhow::ensure!(read.is_ok(), "no complete response within {LONG:?}");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no response head in {text:?}"))?;
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {headers:?}"))?;
    anyhow::ensure!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not JSON: {headers:?}"
    );
    let chunked = headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let json = if chunked {
        // One data chunk: "<hex>\r\n<data>\r\n0\r\n\r\n".
        body.split_once("\r\n")
            .and_then(|(_, rest)| rest.split("\r\n").next())
            .unwrap_or("")
    } else {
        body
    };
    Ok((status, serde_json::from_str(json)?))
}

#[tokio::test]
async fn oversized_body_is_413_json() -> Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session().await?;
    let limit = 10 * 1024 * 1024;

    // Declared too large: refused from the Content-Length alone, body unread.
    let (status, body) = raw_http(
        &d,
        &format!(
            "POST /session/{}/prompt HTTP/1.1\r\nContent-Type: application/json\r\n\
             X-Qwen-Client-Id: {}\r\nContent-Length: {}",
            s.id,
            s.client_id,
            limit + 1
        ),
        b"{\"prompt\":",
    )
    .await?;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large", "{body}");
    assert!(body["error"].is_string());

    // Streamed (chunked, no Content-Length) past the limit: refused once the limit is crossed.
    let size = limit + 1;
    let mut chunked = format!("{size:x}\r\n").into_bytes();
    chunked.extend(std::iter::repeat_n(b' ', size));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, body) = raw_http(
        &d,
        "POST /session HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        &chunked,
    )
    .await?;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large", "{body}");

    // Just under the limit is accepted (and then judged on its content).
    let text = "y".repeat(1024 * 1024);
    let ok = d
        .post_as(
            &s,
            &format!("/session/{}/prompt", s.id),
            json!({"prompt": [{"type": "text", "text": text}]}),
        )
        .await?;
    assert_eq!(ok.status, 202, "{}", ok.body);
    // The daemon still serves normally afterwards.
    assert_eq!(d.get("/health").await?.status, 200);
    Ok(())
}

// ---- 9. config errors ----------------------------------------------------------------------

/// One start-up attempt: arguments, extra environment, the key its error must name.
type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);

/// Runs `acpd serve <args>` with a clean environment (plus `env`); returns (exit code, stderr).
async fn run_acpd(args: &[&str], env: &[(&str, &str)]) -> Result<(Option<i32>, String)> {
    let run = tokio::process::Command::new(acpd_bin())
        .arg("serve")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| anyhow::anyhow!("acpd {args:?} did not exit within 30 s"))??;
    Ok((out.status.code(), String::from_utf8(out.stderr)?))
}

async fn assert_config_error(args: &[&str], env: &[(&str, &str)], key: &str) -> Result<()> {
    let (code, stderr) = run_acpd(args, env).await?;
    assert_eq!(code, Some(2), "{args:?}: stderr {stderr:?}");
    let line = stderr.trim_end_matches('\n');
    assert!(!line.is_empty(), "{args:?}: empty stderr");
    assert!(
        !line.contains('\n'),
        "{args:?}: one line expected, got {stderr:?}"
    );
    assert!(line.contains(key), "{args:?}: {key} not named in {line:?}");
    Ok(())
}

#[tokio::test]
async fn invalid_config_exits_2_with_one_line_naming_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| -> Result<String> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.display().to_string())
    };
    let port_str = file("port.toml", "[server]\nport = \"x\"\n")?;
    let unknown = file("unknown.toml", "[server]\nprot = 4170\n")?;
    let unknown_section = file("section.toml", "[agnet]\ncommand = \"x\"\n")?;
    let bad_scope = file("scope.toml", "[agent]\nscope = \"galaxy\"\n")?;
    let broken = file("broken.toml", "[server\nport = 1\n")?;
    let bad_slice = file("slice.toml", "[server]\ncpu_slice_us = 50\n")?;
    let no_ring = file("ring.toml", "[limits]\nevent_ring_bytes = 0\n")?;
    let many_workers = file("workers.toml", "[server]\nworker_threads = 5000\n")?;
    let ws = dir.path().display().to_string();
    let base = ["--workspace", ws.as_str()];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let cases: Vec<Case> = vec![
        (with(&["--port", "notanumber"]), vec![], "server.port"),
        (with(&["--port", "70000"]), vec![], "server.port"),
        (with(&["--port", "-1"]), vec![], "server.port"),
        (
            with(&["--max-sessions", "many", "--port", "0"]),
            vec![],
            "limits.max_sessions",
        ),
        (
            vec!["--config".into(), port_str]
                .into_iter()
                .chain(base.iter().map(|s| s.to_string()))
                .collect(),
            vec![],
            "server.port",
        ),
        (vec!["--config".into(), unknown], vec![], "server.prot"),
        (vec!["--config".into(), unknown_section], vec![], "agnet"),
        (vec!["--config".into(), bad_scope], vec![], "agent.scope"),
        (vec!["--config".into(), broken.clone()], vec![], &broken),
        (
            vec!["--config".into(), bad_slice],
            vec![],
            "server.cpu_slice_us",
        ),
        (
            vec!["--config".into(), no_ring],
            vec![],
            "limits.event_ring_bytes",
        ),
        (
            vec!["--config".into(), many_workers],
            vec![],
            "server.worker_threads",
        ),
        (
            with(&["--hostname", "0.0.0.0", "--port", "0"]),
            vec![],
            "server.token",
        ),
        (
            with(&["--require-auth", "--port", "0"]),
            vec![],
            "server.token",
        ),
        (
            with(&["--port", "0"]),
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "notaurl")],
            "telemetry",
        ),
        (
            with(&["--agent-scope", "galaxy", "--port", "0"]),
            vec![],
            "agent.scope",
        ),
        (with(&["--pool", "2", "--port", "0"]), vec![], "agent.pool"),
        (
            with(&["--port", "0"]),
            vec![("ACPD_PORT", "abc")],
            "ACPD_PORT",
        ),
        (with(&[]), vec![("ACPD_PORT", "abc")], "ACPD_PORT"),
        (
            with(&["--permission-timeout", "0", "--port", "0"]),
            vec![],
            "limits.permission_timeout_secs",
        ),
        (
            vec![
                "--workspace".into(),
                "/definitely/not/a/dir".into(),
                "--port".into(),
                "0".into(),
            ],
            vec![],
            "workspaces",
        ),
    ];
    for (args, env, key) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_config_error(&args, env, key).await?;
    }
    Ok(())
}

// ---- 10. capabilities and health -------------------------------------------------------------

#[tokio::test]
async fn capabilities_shape() -> Result<()> {
    let d = Daemon::start().await?;
    let r = d.get("/capabilities").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = &r.body;
    assert_eq!(c["v"], 1);
    assert_eq!(
        c["protocolVersions"],
        json!({"current": "v1", "supported": ["v1"]})
    );
    assert!(c["mode"].is_string());
    let features: Vec<&str> = c["features"]
        .as_array()
        .context("features")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in [
        "session_create",
        "session_prompt",
        "session_events",
        "session_cancel",
        "session_permission_vote",
        "non_blocking_prompt",
        "typed_event_schema",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    let ws = d.ws_path.display().to_string();
    assert_eq!(c["workspaceCwd"], ws.as_str());
    assert_eq!(c["transports"], json!(["rest", "acp"]));
    assert_eq!(c["policy"]["permission"], "first-responder");
    for k in [
        "maxPendingPromptsPerSession",
        "maxSessionsPerWorkspace",
        "maxTotalSessions",
    ] {
        assert!(c["limits"][k].as_u64().is_some_and(|n| n >= 1), "{k}: {c}");
    }
    assert_eq!(c["limits"]["maxPendingPromptsPerSession"], 5);
    let workspaces = c["workspaces"].as_array().context("workspaces")?;
    assert_eq!(workspaces.len(), 1, "{c}");
    let w = &workspaces[0];
    assert_eq!(w["cwd"], ws.as_str());
    assert_eq!(w["primary"], true);
    let id = w["id"].as_str().context("workspace id")?;
    assert_eq!(id.len(), 16, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    // The id names the workspace in the workspace routes.
    let sessions = d.get(&format!("/workspace/{id}/sessions")).await?;
    assert_eq!(sessions.status, 200, "{}", sessions.body);
    assert!(sessions.body["sessions"].is_array());
    Ok(())
}

#[tokio::test]
async fn deep_health_counts_sessions_prompts_permissions_children() -> Result<()> {
    let d = Daemon::start().await?;
    let plain = d.get("/health").await?;
    assert_eq!(plain.body, json!({"status": "ok"}));
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["sessions"], 0, "{}", h.body);
    assert_eq!(h.body["activePrompts"], 0, "{}", h.body);
    assert_eq!(h.body["pendingPermissions"], 0, "{}", h.body);
    assert_eq!(h.body["childrenAlive"], 0, "{}", h.body);

    let a = d.create_session().await?;
    let b = d.create_session().await?;
    let mut sse_a = d.events(&a, None, None).await?;
    let mut sse_b = d.events(&b, None, None).await?;
    // A: a slow turn in flight; B: a turn blocked on a permission request.
    let pa = d.prompt(&a, "slow 200 100").await?;
    assert_eq!(pa.status, 202);
    sse_a
        .until(LONG, |f| {
            f.data["data"]["update"]["sessionUpdate"] == "agent_message_chunk"
        })
        .await?;
    let pb = d.prompt(&b, "write held.txt x").await?;
    assert_eq!(pb.status, 202);
    let frames = sse_b
        .until(LONG, |f| f.event == "permission_request")
        .await?;
    let request_id = frames.last().unwrap().data["data"]["requestId"]
        .as_str()
        .context("requestId")?
        .to_string();

    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["sessions"], 2, "{}", h.body);
    assert_eq!(h.body["activePrompts"], 2, "{}", h.body);
    assert_eq!(h.body["pendingPermissions"], 1, "{}", h.body);
    assert_eq!(h.body["childrenAlive"], 1, "{}", h.body);

    // Resolve both; the counts go back down.
    let r = d
        .post_as(
            &b,
            &format!("/session/{}/permission/{request_id}", b.id),
            json!({"outcome": {"outcome": "cancelled"}}),
        )
        .await?;
    assert_eq!(r.status, 200);
    let c = d
        .post_as(&a, &format!("/session/{}/cancel", a.id), json!({}))
        .await?;
    assert_eq!(c.status, 204, "{}", c.body);
    let pid_a = pa.body["promptId"].as_str().unwrap().to_string();
    let pid_b = pb.body["promptId"].as_str().unwrap().to_string();
    let end_a = sse_a.until_turn_end(&pid_a).await?;
    assert_eq!(
        end_a.last().unwrap().data["data"]["stopReason"],
        "cancelled"
    );
    sse_b.until_turn_end(&pid_b).await?;
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["activePrompts"], 0, "{}", h.body);
    assert_eq!(h.body["pendingPermissions"], 0, "{}", h.body);
    assert_eq!(d.delete(&format!("/session/{}", a.id)).await?.status, 204);
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["sessions"], 1, "{}", h.body);
    Ok(())
}

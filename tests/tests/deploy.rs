//! The many-hosts topology of `docs/DEPLOY.md`, in small: two acpd instances behind a reverse
//! proxy with session affinity (written here, as an operator's proxy would be configured: the
//! token checked and removed at the proxy, `POST /session` balanced, `/session/{id}/...` routed
//! to the instance that created the session, event streams passed through unbuffered), both
//! exporting to one OTLP receiver (standing in for the Collector gateway). Then one instance
//! stops: its clients see `session_died`, and recover with a new session on the other one.

use acpd_tests::otlp::{Protocol, Receiver};
use acpd_tests::*;
use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "deploy-proxy-token-7f3a";

/// Hop-by-hop headers, and the ones the proxy owns (`host`: acpd checks it on loopback binds, so
/// the proxy sends the instance's own address; `authorization`: terminated here).
const NOT_FORWARDED: &[&str] = &[
    "host",
    "authorization",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

struct Proxy {
    /// `http://127.0.0.1:<port>` of each instance.
    backends: Vec<String>,
    /// Session id -> instance, filled from `POST /session` responses.
    sessions: Mutex<HashMap<String, usize>>,
    next: AtomicUsize,
    http: reqwest::Client,
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": message, "code": code}).to_string(),
    )
        .into_response()
}

impl Proxy {
    fn backend_for(&self, path: &str) -> Option<usize> {
        let id = path.strip_prefix("/session/")?.split('/').next()?;
        self.sessions.lock().unwrap().get(id).copied()
    }

    async fn send(
        &self,
        backend: usize,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &bytes::Bytes,
    ) -> reqwest::Result<reqwest::Response> {
        let mut req = self
            .http
            .request(
                method.clone(),
                format!("{}{path_and_query}", self.backends[backend]),
            )
            .body(body.clone());
        for (name, value) in headers {
            if !NOT_FORWARDED.contains(&name.as_str()) {
                req = req.header(name, value);
            }
        }
        req.send().await
    }
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if !authorized {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized");
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let headers = req.headers().clone();
    let Ok(body) = axum::body::to_bytes(req.into_body(), 16 << 20).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Body too large",
        );
    };
    let creates = method == Method::POST && path == "/session";
    // A new session goes to the next instance that answers; a session's routes to its instance;
    // anything else (health, capabilities) to the first that answers.
    let candidates: Vec<usize> = if creates || !path.starts_with("/session/") {
        let n = p.backends.len();
        let start = if creates {
            p.next.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        (0..n).map(|i| (start + i) % n).collect()
    } else {
        match p.backend_for(&path) {
            Some(b) => vec![b],
            None => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "session_not_found",
                    "Session not found",
                );
            }
        }
    };
    let mut upstream = None;
    for b in candidates {
        match p.send(b, &method, &path_and_query, &headers, &body).await {
            Ok(r) => {
                upstream = Some((b, r));
                break;
            }
            // The instance is gone: a new session may still land elsewhere.
            Err(e) if e.is_connect() => continue,
            Err(_) => break,
        }
    }
    let Some((backend, r)) = upstream else {
        return json_error(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "The session's acpd instance is unavailable",
        );
    };
    let status = r.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in r.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            out_headers.insert(name.clone(), value.clone());
        }
    }
    let body = if creates && status == StatusCode::OK {
        // Read the created session's id to route its requests from now on.
        let bytes = r.bytes().await.unwrap_or_default();
        if let Some(id) = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["sessionId"].as_str().map(str::to_string))
        {
            p.sessions.lock().unwrap().insert(id, backend);
        }
        Body::from(bytes)
    } else {
        // Streamed as it arrives: the event stream must not be buffered.
        Body::from_stream(r.bytes_stream())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = out_headers;
    resp.headers_mut()
        .insert("x-acpd-backend", HeaderValue::from(backend));
    resp
}

async fn start_proxy(backends: Vec<String>) -> Result<(String, Arc<Proxy>)> {
    let proxy = Arc::new(Proxy {
        backends,
        sessions: Mutex::new(HashMap::new()),
        next: AtomicUsize::new(0),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?,
    });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}"), proxy))
}

/// A client of the proxy: what an SDK behind a load balancer does.
struct Client {
    base: String,
    http: reqwest::Client,
}

struct Session {
    id: String,
    client_id: String,
}

impl Client {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let r = r.send().await?;
        let status = r.status().as_u16();
        let body = serde_json::from_slice(&r.bytes().await?).unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn create(&self) -> Result<Session> {
        let (status, body) = self
            .json(
                self.req(Method::POST, "/session")
                    .json(&json!({"sessionScope": "thread"})),
            )
            .await?;
        if status != 200 {
            bail!("POST /session -> {status}: {body}");
        }
        Ok(Session {
            id: body["sessionId"].as_str().context("sessionId")?.into(),
            client_id: body["clientId"].as_str().context("clientId")?.into(),
        })
    }

    async fn prompt(&self, s: &Session, text: &str) -> Result<(u16, Value)> {
        self.json(
            self.req(Method::POST, &format!("/session/{}/prompt", s.id))
                .header("X-Qwen-Client-Id", &s.client_id)
                .json(&json!({"prompt": [{"type": "text", "text": text}]})),
        )
        .await
    }

    async fn events(&self, s: &Session) -> Result<Events> {
        let r = self
            .req(Method::GET, &format!("/session/{}/events", s.id))
            .header("X-Qwen-Client-Id", &s.client_id)
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if r.status() != 200 {
            bail!("events -> {}", r.status());
        }
        Ok(Events {
            body: r.bytes_stream().boxed(),
            buf: String::new(),
        })
    }
}

/// A minimal SSE reader over the proxy's stream.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Events {
    async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if event.is_empty() {
                    continue; // `retry:` and heartbeat comments
                }
                let data = serde_json::from_str(&data)?;
                return Ok(Some(Frame { id, event, data }));
            }
            match self.body.next().await {
                Some(chunk) => self.buf.push_str(&String::from_utf8_lossy(&chunk?)),
                None => return Ok(None),
            }
        }
    }

    async fn until(&mut self, pred: impl Fn(&Frame) -> bool) -> Result<Vec<Frame>> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            while let Some(f) = self.next().await? {
                let done = pred(&f);
                seen.push(f);
                if done {
                    return Ok::<_, anyhow::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        match found {
            Ok(Ok(true)) => Ok(seen),
            other => bail!("awaited frame not seen ({other:?}); saw {:?}", kinds(&seen)),
        }
    }
}

async fn instance(rx: &Receiver) -> Result<Daemon> {
    let mut b = Daemon::builder()
        .args(&["--no-plugins"])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500");
    for (k, v) in rx.otel_env() {
        b = b.env(k, &v);
    }
    b.start().await
}

/// One turn through the proxy; returns the agent's text.
async fn turn(c: &Client, s: &Session, text: &str) -> Result<String> {
    let mut events = c.events(s).await?;
    let (status, body) = c.prompt(s, text).await?;
    assert_eq!(status, 202, "{body}");
    let prompt_id = body["promptId"].as_str().context("promptId")?.to_string();
    let frames = events
        .until(|f| {
            (f.event == "turn_complete" || f.event == "turn_error")
                && f.data["data"]["promptId"] == prompt_id.as_str()
        })
        .await?;
    assert_eq!(frames.last().unwrap().event, "turn_complete", "{frames:?}");
    Ok(agent_text(&frames))
}

#[tokio::test]
async fn two_instances_behind_an_affinity_proxy_export_to_one_collector() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let a = instance(&rx).await?;
    let mut b = instance(&rx).await?;
    let (base, proxy) = start_proxy(vec![a.url(""), b.url("")]).await?;
    let c = Client {
        base,
        http: reqwest::Client::new(),
    };

    // The token is the proxy's: without it nothing reaches an instance.
    let r = c.http.get(format!("{}/health", c.base)).send().await?;
    assert_eq!(r.status(), 401);
    let (status, body) = c.json(c.req(Method::GET, "/health")).await?;
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");

    // Sessions are balanced over the instances, and each lives on one of them only.
    let s1 = c.create().await?;
    let s2 = c.create().await?;
    let (on1, on2) = (
        proxy.backend_for(&format!("/session/{}", s1.id)),
        proxy.backend_for(&format!("/session/{}", s2.id)),
    );
    assert_eq!((on1, on2), (Some(0), Some(1)));
    assert_eq!(a.get(&format!("/session/{}", s1.id)).await?.status, 200);
    assert_eq!(b.get(&format!("/session/{}", s1.id)).await?.status, 404);
    assert_eq!(b.get(&format!("/session/{}", s2.id)).await?.status, 200);
    assert_eq!(a.get(&format!("/session/{}", s2.id)).await?.status, 404);

    // Every request of a session, the event stream included, reaches its instance.
    assert!(
        turn(&c, &s1, "hello from one")
            .await?
            .contains("hello from one")
    );
    assert!(
        turn(&c, &s2, "hello from two")
            .await?
            .contains("hello from two")
    );
    let (status, body) = c
        .json(c.req(Method::GET, &format!("/session/{}", s2.id)))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["lastEventId"].as_u64().unwrap_or(0) > 0, "{body}");

    // Both instances export to the one receiver; each session's spans come from its instance.
    let spans = rx
        .wait_for_spans(WAIT, |spans| {
            [&s1.id, &s2.id].iter().all(|id| {
                spans.iter().any(|s| {
                    s.service_name == "acpd" && s.attr_str("session.id") == Some(id.as_str())
                })
            })
        })
        .await?;
    // The daemon's own spans (the agents' spans in the session carry its id too, with the
    // agent's resource).
    let instance_of = |id: &str| {
        spans
            .iter()
            .find(|s| s.service_name == "acpd" && s.attr_str("session.id") == Some(id))
            .and_then(|s| s.resource.get("service.instance.id").cloned())
    };
    let (i1, i2) = (instance_of(&s1.id), instance_of(&s2.id));
    assert!(i1.is_some() && i2.is_some(), "{i1:?} {i2:?}");
    assert_ne!(i1, i2, "both sessions' spans came from one instance");

    // The second instance stops (SIGTERM): its clients see session_died on their stream.
    let mut events = c.events(&s2).await?;
    let stopping = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = b.terminate(Duration::from_secs(15)).await;
        (b, status)
    });
    let frames = events.until(|f| f.event == "session_died").await?;
    let died = &frames.last().unwrap().data["data"];
    assert_eq!(died["reason"], "daemon_shutdown", "{died}");
    let (_b, status) = stopping.await?;
    assert!(status?.success());

    // Its sessions are gone with it; the client recovers with a new session, which the proxy
    // places on the instance still serving.
    let (status, body) = c.prompt(&s2, "still there?").await?;
    assert_eq!(status, 502, "{body}");
    let s3 = c.create().await?;
    assert_eq!(
        proxy.backend_for(&format!("/session/{}", s3.id)),
        Some(0),
        "the new session must land on the live instance"
    );
    assert!(turn(&c, &s3, "hello again").await?.contains("hello again"));
    // The first instance's sessions never noticed.
    assert!(turn(&c, &s1, "still here").await?.contains("still here"));
    Ok(())
}

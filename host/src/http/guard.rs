//! Request guards, outermost first: Host check (DNS-rebinding defence on loopback binds),
//! CORS, bearer auth, and admission while draining.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::error::ApiError;

const ALLOW_HEADERS: &str = "Authorization, Content-Type, X-Qwen-Client-Id, Last-Event-ID, X-Qwen-Event-Epoch, Acp-Connection-Id, Acp-Session-Id";
const EXPOSE_HEADERS: &str =
    "Retry-After, X-Qwen-Event-Epoch, X-Qwen-SSE-Stream-Id, Acp-Connection-Id, Acp-Session-Id";

pub async fn host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.allowed_hosts.is_empty() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !state.allowed_hosts.contains(&host) {
            return ApiError::new(403, "invalid_host", "Invalid Host header").into_response();
        }
    }
    next.run(req).await
}

pub async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    if same_origin(req.headers()) {
        return next.run(req).await;
    }
    let allowed = &state.bridge.config.server.allow_origin;
    let ok = origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a == "*" || a == o));
    if !ok {
        return ApiError::new(403, "cors_denied", "Request denied by CORS policy").into_response();
    }
    let mut resp = if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    resp
}

/// A request from a page this daemon served (the console's module scripts and its POSTs carry
/// `Origin`): its origin names the host it was sent to. Not a cross-origin request, so no grant
/// is needed; the Host check (loopback binds) and the token (others) still apply.
fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host))
    })
}

/// Routes open without the token. The console, its files and the trace page are static (their
/// data comes from the guarded API), so a browser can open them; their scripts send the token
/// as a header. The API document describes routes, not state, so tools can fetch it.
pub(super) const PUBLIC: &[&str] = &["/", "/console/{file}", "/debug/traces", "/openapi.json"];
/// Open without the token unless `--require-auth`.
pub(super) const PUBLIC_UNLESS_REQUIRED: &[&str] = &["/health", "/capabilities"];

pub async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let server = &state.bridge.config.server;
    let Some(token) = server.token.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let public = PUBLIC.contains(&path)
        || path
            .strip_prefix("/console/")
            .is_some_and(|f| !f.contains('/'))
        || (PUBLIC_UNLESS_REQUIRED.contains(&path) && !server.require_auth);
    if public || bearer_matches(req.headers(), token) {
        return next.run(req).await;
    }
    ApiError::unauthorized().into_response()
}

/// Constant-time in the token's content and length: both sides are hashed to 32 bytes first.
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let a = Sha256::digest(given.trim().as_bytes());
    let b = Sha256::digest(token.as_bytes());
    a.ct_eq(&b).into()
}

pub async fn admission(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.bridge.is_draining() {
        return ApiError::draining().into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_exact() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(bearer_matches(&h("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(&h("bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(&h("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&h("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn same_origin_is_the_origin_of_the_host_asked() {
        let h = |origin: &str, host: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            m.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            m
        };
        assert!(same_origin(&h("http://127.0.0.1:4170", "127.0.0.1:4170")));
        assert!(same_origin(&h("https://Acpd.example", "acpd.example")));
        assert!(!same_origin(&h("http://127.0.0.1:4171", "127.0.0.1:4170")));
        assert!(!same_origin(&h("http://evil.test", "127.0.0.1:4170")));
        assert!(!same_origin(&h("null", "127.0.0.1:4170")));
        assert!(!same_origin(&h(
            "http://127.0.0.1:4170.evil.test",
            "127.0.0.1:4170"
        )));
    }
}

//! Request guards, in the order `pipeline` runs them: Host check (DNS-rebinding defence on
//! loopback binds), CORS, bearer auth, and admission while draining. Each is a check that
//! lets the request on or answers it; only CORS also touches the answer (its grant headers).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::error::ApiError;

const ALLOW_HEADERS: &str = "Authorization, Content-Type, X-Qwen-Client-Id, Last-Event-ID, X-Qwen-Event-Epoch, Acp-Connection-Id, Acp-Session-Id";
const EXPOSE_HEADERS: &str =
    "Retry-After, X-Qwen-Event-Epoch, X-Qwen-SSE-Stream-Id, Acp-Connection-Id, Acp-Session-Id";

/// On a loopback bind, the `Host` must be one of the bind's own names.
pub fn host(state: &AppState, req: &Request) -> Result<(), ApiError> {
    if state.allowed_hosts.is_empty() {
        return Ok(());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // Compared without case and without a lower-cased copy (the list is lower case).
    if state
        .allowed_hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(host))
    {
        return Ok(());
    }
    Err(ApiError::new(403, "invalid_host", "Invalid Host header"))
}

/// A cross-origin request the CORS check let on: its answer carries the grant.
pub struct Cors {
    /// The granted origin; `None` for a request that is not cross-origin.
    origin: Option<HeaderValue>,
    preflight: bool,
}

impl Cors {
    /// The answer to a preflight (`OPTIONS` with a granted origin), which goes no further.
    pub fn preflight(&self) -> Option<Response> {
        if !self.preflight {
            return None;
        }
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
        Some(r)
    }

    /// The grant's headers on whatever answers the request (the later guards' refusals too).
    pub fn finish(self, mut resp: Response) -> Response {
        if let Some(origin) = self.origin {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
        resp
    }
}

/// A cross-origin request must come from an allowed origin (`server.allow_origin`).
pub fn cors(state: &AppState, req: &Request) -> Result<Cors, ApiError> {
    let not_cross_origin = Cors {
        origin: None,
        preflight: false,
    };
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(not_cross_origin);
    };
    if same_origin(req.headers()) {
        return Ok(not_cross_origin);
    }
    let allowed = &state.bridge.config.server.allow_origin;
    let ok = origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a == "*" || a == o));
    if !ok {
        return Err(ApiError::new(
            403,
            "cors_denied",
            "Request denied by CORS policy",
        ));
    }
    Ok(Cors {
        origin: Some(origin.clone()),
        preflight: req.method() == Method::OPTIONS,
    })
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

/// With a token set, every route but the public ones needs it as a bearer token.
pub fn auth(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let server = &state.bridge.config.server;
    let Some(token) = server.token.as_deref() else {
        return Ok(());
    };
    let path = req.uri().path();
    let public = PUBLIC.contains(&path)
        || path
            .strip_prefix("/console/")
            .is_some_and(|f| !f.contains('/'))
        || (PUBLIC_UNLESS_REQUIRED.contains(&path) && !server.require_auth);
    if public || bearer_matches(req.headers(), token) {
        return Ok(());
    }
    Err(ApiError::unauthorized())
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

/// Nothing is admitted while the daemon drains.
pub fn admission(state: &AppState) -> Result<(), ApiError> {
    if state.bridge.is_draining() {
        return Err(ApiError::draining());
    }
    Ok(())
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

//! The daemon's one error type. `code` values are stable API; `http::error` is the one place
//! where an `ApiError` becomes a response (and where the error-translation hook will sit).

use serde_json::{Map, Value};
use std::fmt;

use crate::plugins::{self, Hook};
use crate::telemetry::sanitize::sanitize;

/// Boxed so `Result<T, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug, Clone)]
pub struct ApiError(Box<ErrorBody>);

#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Extra envelope fields (`sessionId`, `limit`, ...), merged at the top level.
    pub context: Map<String, Value>,
    pub retry_after: Option<u64>,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorBody;
    fn deref(&self) -> &ErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorBody {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorBody {
            status,
            code,
            message: message.into(),
            context: Map::new(),
            retry_after: None,
        }))
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.context.insert(key.to_string(), value.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn session_not_found(id: &str) -> Self {
        Self::new(404, "session_not_found", format!("Session not found: {id}"))
            .with("sessionId", id)
    }

    pub fn invalid_json() -> Self {
        Self::new(400, "invalid_json", "Invalid JSON in request body")
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "unauthorized", "Unauthorized")
    }

    pub fn draining() -> Self {
        Self::new(503, "daemon_draining", "The daemon is shutting down").retry_after(5)
    }

    pub fn agent_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "agent_unavailable", message).retry_after(5)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

/// An error as a client sees it.
#[derive(Debug, Clone)]
pub struct Shown {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Extra envelope fields, as in `ErrorBody::context`.
    pub context: Map<String, Value>,
    pub retry_after: Option<u64>,
    /// Set when an error-translation plugin said whether retrying may help.
    pub retryable: Option<bool>,
}

/// Where the client sees an error.
#[derive(Debug, Clone, Copy)]
pub enum Surface {
    Http,
    Sse,
}

/// What a client is shown of an error, whether as an HTTP error body or an SSE `turn_error`:
/// the one place where error translation happens (the `error` plugins; on failure or no
/// answer, the daemon's own wording), ending with the built-in sanitiser so no step before it
/// can leak terminal escapes, URL credentials or unbounded text.
pub fn client_visible(e: &ApiError, surface: Surface) -> Shown {
    let mut shown = Shown {
        status: e.status,
        code: e.code.to_string(),
        message: e.message.clone(),
        context: e.context.clone(),
        retry_after: e.retry_after,
        retryable: None,
    };
    if let Some(set) = plugins::current()
        && set.has(Hook::Error)
    {
        let info = plugins::ErrorInfo {
            surface: match surface {
                Surface::Http => plugins::Surface::Http,
                Surface::Sse => plugins::Surface::Sse,
            },
            code: e.code.to_string(),
            status: e.status,
            message: e.message.clone(),
            retry_after: e.retry_after.map(|s| s.min(u64::from(u32::MAX)) as u32),
            context_json: Value::Object(e.context.clone()).to_string(),
            rpc_code: e
                .context
                .get("rpcCode")
                .and_then(Value::as_i64)
                .map(|c| c as i32),
        };
        if let Some(t) = set.translate(&info) {
            shown.status = t.status;
            shown.code = t.code;
            shown.message = t.message;
            shown.retryable = Some(t.retryable);
            shown.retry_after = t.retry_after.map(u64::from);
        }
    }
    shown.message = sanitize(&shown.message);
    for v in shown.context.values_mut() {
        if let Value::String(s) = v {
            *s = sanitize(s);
        }
    }
    shown
}

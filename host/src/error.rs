//! The daemon's one error type. `code` values are stable API; `http::error` is the one place
//! where an `ApiError` becomes a response (and where the error-translation hook will sit).

use serde_json::{Map, Value};
use std::fmt;

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

/// What a client is shown of an error, whether as an HTTP error body or an SSE `turn_error`:
/// the one place where error translation happens, ending with the built-in sanitiser so no
/// step before it can leak terminal escapes, URL credentials or unbounded text.
pub fn client_visible(e: &ApiError) -> ApiError {
    let mut shown = e.clone();
    shown.message = sanitize(&shown.message);
    for v in shown.context.values_mut() {
        if let Value::String(s) = v {
            *s = sanitize(s);
        }
    }
    shown
}

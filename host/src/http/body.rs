//! JSON request bodies with the contract's errors: 413 over the limit, 400 `invalid_json` for
//! malformed JSON, 400 `invalid_request` for JSON of the wrong shape. An empty body is `{}`.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::AppState;
use crate::error::ApiError;

pub struct JsonBody<T>(pub T);

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("Request body exceeds {limit} bytes"),
    )
    .with("limit", limit)
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.bridge.config.server.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large(limit))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|_| ApiError::invalid_json())?;
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid_request(format!("Invalid request body: {e}")))
    }
}

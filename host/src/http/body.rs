//! JSON request bodies with the contract's errors: 413 over the limit, 400 `invalid_json` for
//! malformed JSON, 400 `invalid_request` for JSON of the wrong shape (every body is an object).
//! An empty body is `{}`.

use agent_client_protocol::v1::schema::ContentBlock;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use serde_json::Value;

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
        decode(&bytes).map(JsonBody)
    }
}

/// A whole request body as `T`: whitespace only is `{}`, malformed JSON is `invalid_json`, JSON
/// of the wrong shape (or not an object) is `invalid_request`. Parsed as a `Value` first so the
/// two stay apart.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|_| ApiError::invalid_json())?;
    // Every body is an object: serde would also fill a struct from an array of its fields in
    // order (`["/tmp","thread"]` as a CreateBody), a shape no client sends (found by fuzzing).
    if !value.is_object() {
        return Err(ApiError::invalid_request(
            "Invalid request body: expected a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid_request(format!("Invalid request body: {e}")))
}

/// A prompt's blocks as ACP `ContentBlock`s; the first one that is not names its index.
pub(crate) fn prompt_blocks(prompt: Vec<Value>) -> Result<Vec<ContentBlock>, ApiError> {
    prompt
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let not_a_block = |e: &dyn std::fmt::Display| {
                ApiError::invalid_request(format!("prompt[{i}] is not an ACP ContentBlock: {e}"))
            };
            // serde also reads a tagged enum from an array led by its tag (`["text", null,
            // "hi"]`), a shape ACP does not have (found by fuzzing).
            if !b.is_object() {
                return Err(not_a_block(&"expected a JSON object"));
            }
            serde_json::from_value::<ContentBlock>(b).map_err(|e| not_a_block(&e))
        })
        .collect()
}

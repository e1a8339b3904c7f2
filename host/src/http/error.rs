//! The one place where an `ApiError` becomes an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::{ApiError, client_visible};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut shown = client_visible(&self);
        if shown.status >= 500 {
            tracing::warn!(
                code = shown.code,
                status = shown.status,
                "{}",
                shown.message
            );
        }
        let mut body = json!({"error": shown.message, "code": shown.code});
        if let Value::Object(map) = &mut body {
            for (k, v) in std::mem::take(&mut shown.context) {
                map.entry(k).or_insert(v);
            }
        }
        let status =
            StatusCode::from_u16(shown.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = shown.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

//! `GET /` (the web console), `GET /console/{file}` (its scripts, styles and icon) and the
//! security headers of every page the daemon serves (console and trace view). The files are
//! `crate::console`'s; they are public (static, no state), and their scripts send the token
//! as a header on the API requests they make.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::extract::Path;
use crate::console;
use crate::error::ApiError;

#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The web console (HTML; its files under `/console/`, its data from this API)", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        console::page("console.html"),
    )
        .into_response()
}

#[utoipa::path(get, path = "/console/{file}", tag = "console",
    params(("file" = String, Path, description = "A file of the console or the trace view (`console.js`, `style.css`, ...)")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml"))),
        (status = 404, description = "`asset_not_found`", body = super::schema::ErrorBody),
    ))]
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let a = console::asset(&file).ok_or_else(|| {
        ApiError::new(404, "asset_not_found", "No such console file").with("file", file.as_str())
    })?;
    Ok(([(header::CONTENT_TYPE, a.content_type)], a.body).into_response())
}

/// Whether a path is one of the pages or their files.
pub(super) fn is_page(path: &str) -> bool {
    path == "/" || path == "/debug/traces" || path.starts_with("/console/")
}

/// The headers of the pages and their files: the Content-Security-Policy (no inline script or
/// style, no eval, this origin only), no MIME sniffing, no framing, no referrer, no stale copy
/// after an upgrade.
pub(super) fn security_headers(page: bool, mut resp: Response) -> Response {
    if page {
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(console::CONTENT_SECURITY_POLICY),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

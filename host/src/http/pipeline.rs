//! Every request's way through the daemon's own steps before its handler, outermost first:
//! the request span (`span`), the guards (`guard`: Host, CORS, bearer auth, admission while
//! draining), the `request` hook (`enrich`), and the pages' security headers (`console`).
//!
//! One middleware runs them all, in that order. As seven `from_fn` layers they cost about 85
//! heap allocations a request: each layer clones its inner service and boxes a future and a
//! `Next` on every call, and the inner service of an outer layer holds the boxes of all the
//! layers below it, so each clone copied them again (BENCHMARKS.md, "Round twenty-two").

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use opentelemetry::context::FutureExt as _;

use super::{AppState, console, enrich, guard, span};

/// The middleware (`axum::middleware::from_fn_with_state`) around every route.
pub async fn serve(State(state): State<AppState>, req: Request, next: Next) -> Response {
    span::trace(req, move |req| guarded(state, req, next)).await
}

/// What runs inside the request span: the guards, the hook, then the router.
async fn guarded(state: AppState, req: Request, next: Next) -> Response {
    if let Err(refused) = guard::host(&state, &req) {
        return refused.into_response();
    }
    let cors = match guard::cors(&state, &req) {
        Ok(cors) => cors,
        Err(refused) => return refused.into_response(),
    };
    // A granted origin's grant goes on every answer from here on, refusals included.
    if let Some(preflight) = cors.preflight() {
        return cors.finish(preflight);
    }
    if let Err(refused) = guard::auth(&state, &req).and_then(|()| guard::admission(&state)) {
        return cors.finish(refused.into_response());
    }
    let (req, enriched) = match enrich::request_hook(&state, req).await {
        Ok(hooked) => hooked,
        Err(refused) => return cors.finish(refused.into_response()),
    };
    let page = console::is_page(req.uri().path());
    let resp = match enriched {
        Some(cx) => next.run(req).with_context(cx).await,
        None => next.run(req).await,
    };
    cors.finish(console::security_headers(page, resp))
}

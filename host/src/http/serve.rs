//! Accepts connections and serves each with hyper, as `axum::serve` does (HTTP/1 and HTTP/2,
//! upgrades, the peer's address as `ConnectInfo`, a graceful stop), with two differences that
//! axum's loop does not let a caller make: every connection is polled through
//! [`Repoll`](crate::sched::repoll::Repoll), so the hand-overs between hyper's dispatcher and
//! the handler in its task do not wake another worker; and no Nagle delay (an SSE event or a
//! WebSocket frame is a small write that must leave at once: with Nagle, a WebSocket turn
//! waited ~40 ms on the peer's delayed ACK).

use crate::sched::repoll::Repoll;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::Service as _;

/// How long the loop waits after an accept error that is not the peer's (out of file
/// descriptors, say) before accepting again; hyper's and axum's figure.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` completes, then stops accepting, lets each
/// connection finish the requests it has begun, and returns when the last one has closed.
pub async fn serve(listener: TcpListener, app: Router, stop: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            // A router is always ready (its `poll_ready` returns at once), so it is called
            // directly; a clone is a reference count.
            app.clone().call(request)
        });
        let watcher = graceful.watcher();
        tokio::spawn(Repoll::new(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            // The CONNECT protocol, for WebSockets over HTTP/2 (axum's default too).
            builder.http2().enable_connect_protocol();
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::trace!(error = %e, %peer, "connection ended with an error");
            }
        }));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An accept error: the peer's (it reset or aborted before the accept) costs nothing; any
/// other is logged, and the loop pauses rather than spin on it.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; accepting again in a second");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

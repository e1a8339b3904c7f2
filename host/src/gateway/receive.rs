//! The receiver: OTLP/HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs`; protobuf or JSON,
//! optionally gzip) and OTLP/gRPC on one loopback port (HTTP/2 without TLS, as OTLP/gRPC
//! exporters speak to an `http://` endpoint). Every request must carry a child's credential;
//! bodies are bounded before and after decompression; a full queue is answered with OTLP's
//! retryable statuses (HTTP 429 + Retry-After, gRPC UNAVAILABLE), so exporters retry.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::io::Read as _;
use std::sync::Arc;

use super::{Batch, Gateway};
use crate::telemetry::drops::{Signal, Source};

/// The header (gRPC: metadata) carrying a child's credential.
pub const KEY_HEADER: &str = "x-acpd-ingest-key";
/// The largest request body, compressed or not; gRPC messages likewise.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Requests read and decoded at once.
const MAX_CONCURRENT: usize = 8;
/// The largest body after decompression (a small gzip bomb must not grow memory).
const MAX_DECODED: usize = 32 * 1024 * 1024;

pub fn serve(listener: tokio::net::TcpListener, gateway: Arc<Gateway>) {
    let grpc = Grpc(gateway.clone());
    let grpc = tonic::service::Routes::new(
        TraceServiceServer::new(grpc.clone())
            .max_decoding_message_size(MAX_BODY)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
    )
    .add_service(
        MetricsServiceServer::new(grpc.clone())
            .max_decoding_message_size(MAX_BODY)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
    )
    .add_service(
        LogsServiceServer::new(grpc)
            .max_decoding_message_size(MAX_BODY)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
    )
    .into_axum_router();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(gateway)
        .merge(grpc)
        // A bounded number of requests is read and decoded at once; the rest wait unread, so
        // many agents (or one flooding one) cannot make the daemon hold many bodies.
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "agent telemetry gateway stopped");
        }
    });
}

async fn traces(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    off_runtime(g, Signal::Traces, headers, body).await
}

async fn metrics(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    off_runtime(g, Signal::Metrics, headers, body).await
}

async fn logs(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    off_runtime(g, Signal::Logs, headers, body).await
}

/// Decompressing and decoding a large body is CPU work: it must not hold up the runtime's
/// threads, which also serve the API.
async fn off_runtime(g: Arc<Gateway>, signal: Signal, headers: HeaderMap, body: Bytes) -> Response {
    tokio::task::spawn_blocking(move || ingest(&g, signal, &headers, body))
        .await
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "ingest failed"))
}

fn plain(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

fn ingest(g: &Gateway, signal: Signal, headers: &HeaderMap, body: Bytes) -> Response {
    let Some(child) = headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|k| g.registry.child(k))
    else {
        return plain(
            StatusCode::UNAUTHORIZED,
            "unknown or missing ingest credential",
        );
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
    let body = if gzip {
        let mut out = Vec::new();
        let read = flate2::read::GzDecoder::new(&body[..])
            .take(MAX_DECODED as u64 + 1)
            .read_to_end(&mut out);
        match read {
            Ok(n) if n > MAX_DECODED => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "decompressed body too large");
            }
            Ok(_) => Bytes::from(out),
            Err(_) => return plain(StatusCode::BAD_REQUEST, "invalid gzip body"),
        }
    } else {
        body
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let batch = match decode(signal, json, &body) {
        Some(b) => b,
        None => return plain(StatusCode::BAD_REQUEST, "not an OTLP export request"),
    };
    if g.submit(batch, Source::Agent, Some(child)).is_err() {
        let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "ingest queue full");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let (bytes, ct) = if json {
        let v = match signal {
            Signal::Traces => serde_json::to_vec(&ExportTraceServiceResponse::default()),
            Signal::Metrics => serde_json::to_vec(&ExportMetricsServiceResponse::default()),
            Signal::Logs => serde_json::to_vec(&ExportLogsServiceResponse::default()),
        };
        (v.unwrap_or_else(|_| b"{}".to_vec()), "application/json")
    } else {
        let v = match signal {
            Signal::Traces => ExportTraceServiceResponse::default().encode_to_vec(),
            Signal::Metrics => ExportMetricsServiceResponse::default().encode_to_vec(),
            Signal::Logs => ExportLogsServiceResponse::default().encode_to_vec(),
        };
        (v, "application/x-protobuf")
    };
    ([(header::CONTENT_TYPE, ct)], bytes).into_response()
}

fn decode(signal: Signal, json: bool, body: &[u8]) -> Option<Batch> {
    Some(match (signal, json) {
        (Signal::Traces, true) => Batch::Traces(serde_json::from_slice(body).ok()?),
        (Signal::Traces, false) => Batch::Traces(ExportTraceServiceRequest::decode(body).ok()?),
        (Signal::Metrics, true) => Batch::Metrics(serde_json::from_slice(body).ok()?),
        (Signal::Metrics, false) => Batch::Metrics(ExportMetricsServiceRequest::decode(body).ok()?),
        (Signal::Logs, true) => Batch::Logs(serde_json::from_slice(body).ok()?),
        (Signal::Logs, false) => Batch::Logs(ExportLogsServiceRequest::decode(body).ok()?),
    })
}

#[derive(Clone)]
struct Grpc(Arc<Gateway>);

impl Grpc {
    fn admit<T>(&self, req: tonic::Request<T>, wrap: fn(T) -> Batch) -> Result<(), tonic::Status> {
        let child = req
            .metadata()
            .get(KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|k| self.0.registry.child(k))
            .ok_or_else(|| {
                tonic::Status::unauthenticated("unknown or missing ingest credential")
            })?;
        self.0
            .submit(wrap(req.into_inner()), Source::Agent, Some(child))
            .map_err(|_| tonic::Status::unavailable("ingest queue full"))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.admit(request, Batch::Traces)?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.admit(request, Batch::Metrics)?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.admit(request, Batch::Logs)?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

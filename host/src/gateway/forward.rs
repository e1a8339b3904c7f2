//! Sends processed OTLP batches on to the daemon's configured collector, as they are: the
//! agent's own resource and `service.name` stay its own (the SDK's exporters would stamp the
//! daemon's resource on everything). Same endpoint, protocol, headers and timeout as the
//! daemon's own exporters, read the same way (`[telemetry]` first, then the standard
//! `OTEL_EXPORTER_OTLP_*` variables, per signal before generic). Retries what OTLP calls
//! retryable (HTTP 429/502/503/504, gRPC Unavailable and friends, no answer) within the timeout.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use std::time::{Duration, Instant};

use super::Batch;
use crate::config::TelemetryConfig;
use crate::telemetry::drops::Signal;
use crate::telemetry::outcome::Failure;
use crate::telemetry::{Transport, env, exports};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const RETRIES: u32 = 3;

#[derive(Debug, Clone)]
pub struct Target {
    pub transport: Transport,
    /// HTTP: the signal's full URL; gRPC: the collector's address.
    pub url: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    gzip: bool,
}

/// Where a signal goes, or None when it is not exported.
pub fn target(signal: Signal, cfg: &TelemetryConfig) -> Option<Target> {
    let word = signal.env_word();
    let transport = exports(word, cfg)?;
    let generic = env("OTEL_EXPORTER_OTLP_ENDPOINT");
    let specific = env(&format!("OTEL_EXPORTER_OTLP_{word}_ENDPOINT"));
    let url = match transport {
        Transport::Grpc => cfg
            .endpoint
            .clone()
            .or(specific)
            .or(generic)
            .unwrap_or_else(|| "http://localhost:4317".into()),
        Transport::Http(_) => match (&cfg.endpoint, specific, generic) {
            (Some(e), _, _) => format!("{}{}", e.trim_end_matches('/'), signal.path()),
            (None, Some(e), _) => e,
            (None, None, Some(e)) => format!("{}{}", e.trim_end_matches('/'), signal.path()),
            (None, None, None) => format!("http://localhost:4318{}", signal.path()),
        },
    };
    // Later wins on the same key, as in the SDK: config, generic env, per-signal env.
    let mut headers: Vec<(String, String)> = cfg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS".to_string(),
        format!("OTEL_EXPORTER_OTLP_{word}_HEADERS"),
    ] {
        for (k, v) in env(&var).as_deref().map(parse_headers).unwrap_or_default() {
            headers.retain(|(x, _)| !x.eq_ignore_ascii_case(&k));
            headers.push((k, v));
        }
    }
    let ms = |v: Option<String>| v.and_then(|v| v.trim().parse::<u64>().ok());
    let timeout = cfg
        .timeout_ms
        .or_else(|| ms(env(&format!("OTEL_EXPORTER_OTLP_{word}_TIMEOUT"))))
        .or_else(|| ms(env("OTEL_EXPORTER_OTLP_TIMEOUT")))
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    let gzip = env(&format!("OTEL_EXPORTER_OTLP_{word}_COMPRESSION"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_COMPRESSION"))
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip"));
    Some(Target {
        transport,
        url,
        headers,
        timeout,
        gzip,
    })
}

/// `k=v,k2=v2`, values percent-decoded (the OTLP exporter spec's format).
pub fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses an endpoint that cannot work, at start-up (a configuration error, as for the SDK's
/// exporters).
pub fn validate(t: &Target) -> anyhow::Result<()> {
    let uri: axum::http::Uri = t
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("OTLP endpoint {:?}: {e}", t.url))?;
    match uri.scheme_str() {
        Some("http") => Ok(()),
        Some("https") => anyhow::bail!(
            "OTLP endpoint {:?}: https is not supported; use a local collector over http",
            t.url
        ),
        _ => anyhow::bail!("OTLP endpoint {:?} needs http://", t.url),
    }
}

pub struct Forwarder {
    pub target: Target,
    http: reqwest::Client,
    grpc: Option<tonic::transport::Channel>,
}

impl Forwarder {
    /// Must run inside the runtime that sends (the gRPC channel's task lives there).
    pub fn new(target: Target) -> anyhow::Result<Self> {
        let grpc = match target.transport {
            Transport::Grpc => Some(
                tonic::transport::Endpoint::from_shared(target.url.clone())?
                    .connect_timeout(target.timeout)
                    .connect_lazy(),
            ),
            Transport::Http(_) => None,
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(target.timeout)
                .build()?,
            grpc,
            target,
        })
    }

    /// One batch, retried while OTLP says retry and the timeout allows.
    pub async fn send(&self, batch: &Batch) -> Result<(), Failure> {
        let deadline = Instant::now() + self.target.timeout;
        let body = match self.target.transport {
            Transport::Http(p) => Some(self.http_body(batch, p)?),
            Transport::Grpc => None,
        };
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let once = async {
                match &body {
                    Some((bytes, ct)) => self.http_once(bytes.clone(), ct).await,
                    None => self.grpc_once(batch).await,
                }
            };
            let result = match tokio::time::timeout(left, once).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Transport(format!(
                    "no answer within {:?}",
                    self.target.timeout
                ))),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(f) if attempt < RETRIES && retryable(&f) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left <= backoff {
                        return Err(f);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(1600));
                    attempt += 1;
                }
                Err(f) => return Err(f),
            }
        }
    }

    fn http_body(
        &self,
        batch: &Batch,
        p: opentelemetry_otlp::Protocol,
    ) -> Result<(bytes::Bytes, &'static str), Failure> {
        let json = matches!(p, opentelemetry_otlp::Protocol::HttpJson);
        let raw = if json {
            match batch {
                Batch::Traces(r) => serde_json::to_vec(r),
                Batch::Metrics(r) => serde_json::to_vec(r),
                Batch::Logs(r) => serde_json::to_vec(r),
            }
            .map_err(|e| Failure::Transport(format!("cannot encode: {e}")))?
        } else {
            match batch {
                Batch::Traces(r) => r.encode_to_vec(),
                Batch::Metrics(r) => r.encode_to_vec(),
                Batch::Logs(r) => r.encode_to_vec(),
            }
        };
        let raw = if self.target.gzip {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw)
                .and_then(|()| e.finish())
                .map_err(|e| Failure::Transport(format!("cannot compress: {e}")))?
        } else {
            raw
        };
        Ok((
            raw.into(),
            if json {
                "application/json"
            } else {
                "application/x-protobuf"
            },
        ))
    }

    async fn http_once(&self, body: bytes::Bytes, content_type: &str) -> Result<(), Failure> {
        let mut req = self
            .http
            .post(&self.target.url)
            .header("content-type", content_type)
            .body(body);
        if self.target.gzip {
            req = req.header("content-encoding", "gzip");
        }
        for (k, v) in &self.target.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        // The error text names the URL, never the headers (which may hold credentials).
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Transport(e.without_url().to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Failure::Http(resp.status().as_u16()))
        }
    }

    async fn grpc_once(&self, batch: &Batch) -> Result<(), Failure> {
        let Some(channel) = self.grpc.clone() else {
            return Err(Failure::Transport("no gRPC channel".into()));
        };
        fn request<T>(msg: T, headers: &[(String, String)]) -> tonic::Request<T> {
            let mut r = tonic::Request::new(msg);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    k.to_ascii_lowercase()
                        .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                    v.parse(),
                ) {
                    r.metadata_mut().insert(k, v);
                }
            }
            r
        }
        let h = &self.target.headers;
        let result = match batch {
            Batch::Traces(b) => TraceServiceClient::new(channel)
                .export(request(b.clone(), h))
                .await
                .map(drop),
            Batch::Metrics(b) => MetricsServiceClient::new(channel)
                .export(request(b.clone(), h))
                .await
                .map(drop),
            Batch::Logs(b) => LogsServiceClient::new(channel)
                .export(request(b.clone(), h))
                .await
                .map(drop),
        };
        result.map_err(|s| {
            if std::error::Error::source(&s).is_some() {
                Failure::Transport(format!("gRPC transport: {:?}", s.code()))
            } else {
                Failure::Grpc(s.code() as i32)
            }
        })
    }
}

fn retryable(f: &Failure) -> bool {
    match f {
        Failure::Http(s) => matches!(s, 429 | 502 | 503 | 504),
        // Cancelled, DeadlineExceeded, ResourceExhausted, Aborted, OutOfRange, Unavailable,
        // DataLoss: the OTLP spec's retryable gRPC codes.
        Failure::Grpc(c) => matches!(c, 1 | 4 | 8 | 10 | 11 | 14 | 15),
        Failure::Transport(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_the_otlp_exporters_do() {
        assert_eq!(
            parse_headers("a=b, x-key = v%20w ,broken,=z"),
            vec![("a".into(), "b".into()), ("x-key".into(), "v w".into())]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("é%"), "é%");
    }

    #[test]
    fn what_is_retried() {
        assert!(retryable(&Failure::Http(503)));
        assert!(!retryable(&Failure::Http(400)));
        assert!(retryable(&Failure::Grpc(14)));
        assert!(!retryable(&Failure::Grpc(12)));
    }
}

//! What an export's result means for the signal: a transient failure is counted and reported
//! (once when it starts, then at most every 30 s, always with the HTTP status or gRPC code), a
//! permanent refusal (a traces-only backend answering logs with 405, or gRPC Unimplemented)
//! stops exporting that signal with one clear warning. Every item not exported is counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::drops::{self, Signal, Source, Stage};

const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Why an export did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An HTTP status from the collector.
    Http(u16),
    /// A gRPC status code from the collector (`tonic::Code` as its number).
    Grpc(i32),
    /// No answer: connection refused, reset, timed out.
    Transport(String),
}

impl Failure {
    /// Whether the collector will never take this signal: it does not serve the path or
    /// method. 400 and friends are about one batch, not the signal.
    pub fn permanent(&self) -> bool {
        match self {
            Failure::Http(s) => matches!(s, 404 | 405 | 501),
            Failure::Grpc(c) => *c == 12, // Unimplemented
            Failure::Transport(_) => false,
        }
    }

    /// Reads the SDK exporters' error text ("... status code: 405", "... gRPC code:
    /// Unimplemented"), the only form they report it in.
    pub fn from_sdk(message: &str) -> Failure {
        if let Some(rest) = message.split("status code: ").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(s) = digits.parse() {
                return Failure::Http(s);
            }
        }
        if let Some(rest) = message.split("gRPC code: ").nth(1) {
            let word: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            if let Some(code) = GRPC_CODES.iter().position(|c| *c == word) {
                return Failure::Grpc(code as i32);
            }
        }
        Failure::Transport(message.to_string())
    }
}

const GRPC_CODES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Http(s) => write!(f, "HTTP status {s}"),
            Failure::Grpc(c) => write!(
                f,
                "gRPC status {}",
                GRPC_CODES.get(*c as usize).copied().unwrap_or("unknown")
            ),
            Failure::Transport(e) => write!(f, "{e}"),
        }
    }
}

struct Report {
    failing_since: Option<Instant>,
    last: Option<Instant>,
    lost: u64,
}

/// One signal's export state (shared by the daemon's items and the agents').
pub struct SignalOutcome {
    signal: Signal,
    refused: AtomicBool,
    report: Mutex<Report>,
}

static OUTCOMES: [SignalOutcome; 3] = [
    SignalOutcome::new(Signal::Traces),
    SignalOutcome::new(Signal::Metrics),
    SignalOutcome::new(Signal::Logs),
];

pub fn of(signal: Signal) -> &'static SignalOutcome {
    &OUTCOMES[Signal::ALL.iter().position(|s| *s == signal).unwrap_or(0)]
}

impl SignalOutcome {
    const fn new(signal: Signal) -> Self {
        Self {
            signal,
            refused: AtomicBool::new(false),
            report: Mutex::new(Report {
                failing_since: None,
                last: None,
                lost: 0,
            }),
        }
    }

    /// Whether export of this signal stopped after a permanent refusal. The caller counts
    /// the items it does not send (`skipped`).
    pub fn stopped(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Items not sent because export stopped.
    pub fn skipped(&self, source: Source, n: u64) {
        drops::add(self.signal, Stage::ExportRefused, source, n);
    }

    /// A batch of `n` items went through.
    pub fn ok(&self) {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = r.failing_since.take() {
            tracing::info!(
                signal = self.signal.as_str(),
                lost = r.lost,
                "telemetry export of {} recovered after {:.1?} ({} items lost meanwhile)",
                self.signal.as_str(),
                since.elapsed(),
                r.lost
            );
            r.lost = 0;
            r.last = None;
        }
    }

    /// A batch of `n` items was not taken.
    pub fn failed(&self, source: Source, n: u64, why: &Failure, endpoint: &str) {
        if why.permanent() {
            drops::add(self.signal, Stage::ExportRefused, source, n);
            if !self.refused.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    signal = self.signal.as_str(),
                    "the collector at {endpoint} refuses {} for good ({why}): no more {} are exported; \
                     to stop sending them, set OTEL_{}_EXPORTER=none",
                    self.signal.as_str(),
                    self.signal.as_str(),
                    self.signal.env_word()
                );
            }
            return;
        }
        drops::add(self.signal, Stage::ExportFailed, source, n);
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.lost += n;
        let now = Instant::now();
        if r.failing_since.is_none() {
            r.failing_since = Some(now);
        }
        if r.last.is_none_or(|l| now.duration_since(l) >= REPORT_EVERY) {
            r.last = Some(now);
            tracing::warn!(
                signal = self.signal.as_str(),
                "telemetry export of {} to {endpoint} failed: {why} ({} items lost so far)",
                self.signal.as_str(),
                r.lost
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sdk_exporters_error_texts() {
        assert_eq!(
            Failure::from_sdk("HTTP export failed with status code: 405"),
            Failure::Http(405)
        );
        assert_eq!(
            Failure::from_sdk("LogsClient export failed with gRPC code: Unimplemented"),
            Failure::Grpc(12)
        );
        assert!(
            Failure::from_sdk("TraceClient export failed with gRPC code: Unimplemented: x")
                .permanent()
        );
        assert!(!Failure::from_sdk("HTTP export failed: network error").permanent());
        assert!(!Failure::Http(503).permanent());
        assert!(!Failure::Grpc(14).permanent());
        assert_eq!(Failure::Grpc(12).to_string(), "gRPC status Unimplemented");
    }
}

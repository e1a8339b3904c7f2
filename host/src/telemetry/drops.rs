//! What was lost, and where: one counter per (signal, stage, source), read by the
//! `acpd.telemetry.dropped` instrument. Every bounded buffer and every failed export on the way
//! out adds to it, for the daemon's own items and the agents' alike, so an operator can tell a
//! quiet agent from a lossy pipeline.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The OTLP/HTTP path of this signal.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }

    /// The upper-case word in this signal's `OTEL_*` variable names.
    pub fn env_word(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        }
    }
}

/// Where an item was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The agent ingest refused a request (queue full: answered with OTLP's retryable status,
    /// so the agent's exporter may send it again; unreadable or over-large bodies).
    Ingest,
    /// A full export queue.
    ExportQueue,
    /// The collector did not take a batch (refused, failed, timed out).
    ExportFailed,
    /// The collector refuses this signal for good (HTTP 404/405/501, gRPC Unimplemented):
    /// export of it stopped.
    ExportRefused,
    /// The trace view's ring evicted spans (the view only; OTLP is unaffected).
    TraceView,
}

impl Stage {
    const ALL: [Stage; 5] = [
        Stage::Ingest,
        Stage::ExportQueue,
        Stage::ExportFailed,
        Stage::ExportRefused,
        Stage::TraceView,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::ExportQueue => "export_queue",
            Stage::ExportFailed => "export_failed",
            Stage::ExportRefused => "export_refused",
            Stage::TraceView => "trace_view",
        }
    }
}

/// Whose item it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Daemon,
    Agent,
}

impl Source {
    const ALL: [Source; 2] = [Source::Daemon, Source::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Daemon => "daemon",
            Source::Agent => "agent",
        }
    }
}

const CELLS: usize = 3 * 5 * 2;
static COUNTS: [AtomicU64; CELLS] = [const { AtomicU64::new(0) }; CELLS];

fn cell(signal: Signal, stage: Stage, source: Source) -> usize {
    let s = Signal::ALL.iter().position(|x| *x == signal).unwrap_or(0);
    let t = Stage::ALL.iter().position(|x| *x == stage).unwrap_or(0);
    let o = Source::ALL.iter().position(|x| *x == source).unwrap_or(0);
    (s * 5 + t) * 2 + o
}

/// Counts `n` items lost.
pub fn add(signal: Signal, stage: Stage, source: Source, n: u64) {
    if n > 0 {
        COUNTS[cell(signal, stage, source)].fetch_add(n, Ordering::Relaxed);
    }
}

/// One counter.
pub fn get(signal: Signal, stage: Stage, source: Source) -> u64 {
    COUNTS[cell(signal, stage, source)].load(Ordering::Relaxed)
}

/// Every counter that can move for this combination of signal and source (the daemon never
/// loses at the agent ingest; the view holds traces only). Zeroes included, so a dashboard sees
/// the series before the first loss.
pub fn all() -> impl Iterator<Item = (Signal, Stage, Source, u64)> {
    Signal::ALL.into_iter().flat_map(|signal| {
        Stage::ALL.into_iter().flat_map(move |stage| {
            Source::ALL.into_iter().filter_map(move |source| {
                let possible = match stage {
                    Stage::Ingest => source == Source::Agent,
                    Stage::TraceView => signal == Signal::Traces,
                    _ => true,
                };
                possible.then(|| (signal, stage, source, get(signal, stage, source)))
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_has_its_own_counter() {
        let mut seen = std::collections::HashSet::new();
        for signal in Signal::ALL {
            for stage in Stage::ALL {
                for source in Source::ALL {
                    assert!(seen.insert(cell(signal, stage, source)));
                }
            }
        }
        assert_eq!(seen.len(), CELLS);
        let before = get(Signal::Logs, Stage::ExportRefused, Source::Agent);
        add(Signal::Logs, Stage::ExportRefused, Source::Agent, 3);
        assert_eq!(
            get(Signal::Logs, Stage::ExportRefused, Source::Agent),
            before + 3
        );
    }
}

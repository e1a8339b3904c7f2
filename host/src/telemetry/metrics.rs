//! The daemon's instruments, created once from the global meter (a no-op until `init`).

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Counter, Histogram, UpDownCounter};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::semconv::*;

pub struct Instruments {
    pub http_duration: Histogram<f64>,
    pub session_active: UpDownCounter<i64>,
    pub queue_wait: Histogram<f64>,
    pub prompt_duration: Histogram<f64>,
    pub cancellations: Counter<u64>,
    pub child_lifecycle: Counter<u64>,
    pub bridge_errors: Counter<u64>,
    pub sse_subscribers: UpDownCounter<i64>,
    pub sse_evictions: Counter<u64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// The instruments. `telemetry::init` creates them after installing the meter provider.
pub fn metrics() -> &'static Instruments {
    INSTRUMENTS.get_or_init(create)
}

pub(super) fn install() {
    let _ = INSTRUMENTS.set(create());
}

fn create() -> Instruments {
    let m = opentelemetry::global::meter("acpd");
    Instruments {
        http_duration: m
            .f64_histogram(M_HTTP_DURATION)
            .with_unit("s")
            .with_description("Duration of HTTP server requests")
            .with_boundaries(HTTP_DURATION_BUCKETS.to_vec())
            .build(),
        session_active: m
            .i64_up_down_counter(M_SESSION_ACTIVE)
            .with_unit("{session}")
            .with_description("Open sessions")
            .build(),
        queue_wait: m
            .f64_histogram(M_QUEUE_WAIT)
            .with_unit("s")
            .with_description("Time a prompt waited in its session's queue")
            .with_boundaries(PROMPT_BUCKETS.to_vec())
            .build(),
        prompt_duration: m
            .f64_histogram(M_PROMPT_DURATION)
            .with_unit("s")
            .with_description("Duration of a turn, from dispatch to its end")
            .with_boundaries(PROMPT_BUCKETS.to_vec())
            .build(),
        cancellations: m
            .u64_counter(M_CANCELLATIONS)
            .with_unit("{prompt}")
            .with_description("Cancelled prompts")
            .build(),
        child_lifecycle: m
            .u64_counter(M_CHILD_LIFECYCLE)
            .with_unit("{event}")
            .with_description("Agent child spawns, exits and restarts")
            .build(),
        bridge_errors: m
            .u64_counter(M_BRIDGE_ERRORS)
            .with_unit("{error}")
            .with_description("Errors returned to clients, by type")
            .build(),
        sse_subscribers: m
            .i64_up_down_counter(M_SSE_SUBSCRIBERS)
            .with_unit("{connection}")
            .with_description("Open SSE connections")
            .build(),
        sse_evictions: m
            .u64_counter(M_SSE_EVICTIONS)
            .with_unit("{connection}")
            .with_description("SSE connections evicted")
            .build(),
    }
}

/// `http.request.method` as the request span and the HTTP metrics record it (semconv: the
/// known methods, `_OTHER` for the rest); an index into [`HTTP_METHODS`].
pub const HTTP_METHODS: [&str; 8] = [
    "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "_OTHER",
];

/// `http.server.active_requests`, by method: an atomic per method, read by the meter at each
/// collection. Added through the SDK instead, each request built, hashed and looked up an
/// attribute set twice, the first time before its handler ran, on a prompt's way to the agent.
struct Active {
    n: AtomicI64,
    /// A method once seen keeps its series (at 0 when idle), as the SDK's counter did.
    seen: AtomicBool,
}

static ACTIVE: [Active; HTTP_METHODS.len()] = [const {
    Active {
        n: AtomicI64::new(0),
        seen: AtomicBool::new(false),
    }
}; HTTP_METHODS.len()];

/// One request in flight, by its method's index in [`HTTP_METHODS`]: counted until dropped,
/// so a request whose client went away mid-way is not left counted.
pub struct InFlight(usize);

impl InFlight {
    pub fn enter(method: usize) -> InFlight {
        let i = method.min(HTTP_METHODS.len() - 1);
        let a = &ACTIVE[i];
        if !a.seen.load(Ordering::Relaxed) {
            a.seen.store(true, Ordering::Relaxed);
        }
        a.n.fetch_add(1, Ordering::Relaxed);
        InFlight(i)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ACTIVE[self.0].n.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registers `http.server.active_requests` (once the meter provider is installed).
pub(super) fn register_active_requests() {
    let _ = opentelemetry::global::meter("acpd")
        .i64_observable_up_down_counter(M_HTTP_ACTIVE)
        .with_unit("{request}")
        .with_description("Active HTTP server requests")
        .with_callback(observe_active)
        .build();
}

fn observe_active(o: &dyn AsyncInstrument<i64>) {
    for (a, method) in ACTIVE.iter().zip(HTTP_METHODS) {
        if a.seen.load(Ordering::Relaxed) {
            o.observe(
                a.n.load(Ordering::Relaxed),
                &[KeyValue::new(HTTP_REQUEST_METHOD, method)],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_counted_until_dropped() {
        // PATCH: no other unit test sends one through the request layer.
        let patch = 4;
        let a = InFlight::enter(patch);
        let b = InFlight::enter(patch);
        assert!(ACTIVE[patch].seen.load(Ordering::Relaxed));
        assert_eq!(ACTIVE[patch].n.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(ACTIVE[patch].n.load(Ordering::Relaxed), 0);
        // An index past the list counts as `_OTHER`.
        let other = InFlight::enter(99);
        assert_eq!(other.0, HTTP_METHODS.len() - 1);
    }
}

//! The daemon's instruments, created once from the global meter (a no-op until `init`).

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use std::sync::OnceLock;

use super::semconv::*;

pub struct Instruments {
    pub http_duration: Histogram<f64>,
    pub http_active: UpDownCounter<i64>,
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
        http_active: m
            .i64_up_down_counter(M_HTTP_ACTIVE)
            .with_unit("{request}")
            .with_description("Active HTTP server requests")
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

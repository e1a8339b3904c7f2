//! What one plugin call may spend: CPU time (the guest's and the host kernels' it calls), not
//! wall-clock time, so a busy host's scheduling delays are never charged to a plugin.
//!
//! Under [`Meter::CpuTime`] nothing is read when a call starts (a thread CPU clock read is a
//! system call, ~1 us, five no-op calls' worth): the epoch deadline is one tick away, and the
//! first tick the running guest sees starts the CPU clock, charged one tick for what ran
//! before it. Each later tick charges the CPU time used since, and traps once the budget is
//! spent. Host kernels start the clock themselves and check it after any call that took
//! longer than [`HOST_CHECK_AFTER`], so a long host call is charged at once (the guest may
//! return right after it).

use std::time::{Duration, Instant};

use super::engine::{Meter, TICK, thread_cpu};

/// Where the instance is: `init` may do expensive host work (compiling pattern sets), hooks
/// may not (see `kernels::CompileLimits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Init,
    Hook,
}

/// A host call shorter than this (wall time, an upper bound of its CPU time) is left to the
/// next tick; a longer one reads the CPU clock when it returns.
pub const HOST_CHECK_AFTER: Duration = Duration::from_micros(200);

#[derive(Debug)]
pub struct CallMeter {
    pub meter: Meter,
    pub phase: Phase,
    budget: Duration,
    /// Thread CPU time when the clock started (first tick or first host kernel call), less
    /// the one tick charged for what ran before.
    start: Option<Duration>,
    /// Set when this call was stopped for its budget (classified as `timeout`).
    pub exceeded: bool,
    /// CPU charged when the call was stopped.
    pub used: Duration,
}

impl CallMeter {
    pub fn new(meter: Meter) -> Self {
        Self {
            meter,
            phase: Phase::Init,
            budget: Duration::MAX,
            start: None,
            exceeded: false,
            used: Duration::ZERO,
        }
    }

    /// A new call with `budget`.
    pub fn arm(&mut self, phase: Phase, budget: Duration) {
        self.phase = phase;
        self.budget = budget;
        self.start = None;
        self.exceeded = false;
        self.used = Duration::ZERO;
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    fn charged(&mut self) -> Duration {
        let now = thread_cpu();
        let start = *self.start.get_or_insert(now.saturating_sub(TICK));
        now.saturating_sub(start)
    }

    /// On an epoch tick: false when the budget is spent (the call is stopped).
    pub fn tick(&mut self) -> bool {
        let used = self.charged();
        if used > self.budget {
            self.exceeded = true;
            self.used = used;
            return false;
        }
        true
    }

    /// Before a host kernel call: the CPU clock runs from here at the latest.
    pub fn host_enter(&mut self) -> Option<Instant> {
        if self.meter != Meter::CpuTime {
            return None;
        }
        if self.start.is_none() {
            self.charged();
        }
        Some(Instant::now())
    }

    /// After a host kernel call: a long one is charged now. Err = the budget is spent.
    pub fn host_exit(&mut self, entered: Option<Instant>) -> wasmtime::Result<()> {
        match entered {
            Some(t) if t.elapsed() >= HOST_CHECK_AFTER && !self.tick() => {
                Err(wasmtime::Trap::Interrupt.into())
            }
            _ => Ok(()),
        }
    }
}

/// Default CPU budgets per call, sized from `cargo bench -p acpd --bench plugins` (PLUGINS.md,
/// "CPU budgets"): the first-party plugins' heaviest call at each hook, times a margin that
/// covers a debug build (its host kernels are unoptimised) and a slower machine.
pub mod defaults {
    use std::time::Duration;

    /// request, dispatch, child, error: enrich with 8 facts measures ~6 us (release, busy
    /// machine), a no-op call ~1-2 us. Small: a hook here holds up the request it runs on.
    pub const REQUEST: Duration = Duration::from_millis(5);
    /// One export batch (up to 512 spans or logs), on export threads: redact on 512 spans x 20
    /// attributes measures 12-15 ms (release, busy machine).
    pub const EXPORT: Duration = Duration::from_millis(100);
    /// Instantiation and `init` (compiling the plugin's pattern sets).
    pub const INIT: Duration = Duration::from_millis(1000);
}

//! The epoch ticker: the thread that makes plugin deadlines real by advancing the engine's
//! epoch every [`TICK`] while a guest runs.
//!
//! A deadline only needs ticks while a guest call is in flight, so the ticker parks once the
//! daemon has made no plugin call for [`QUIET_TICKS`] ticks, and the first call after that
//! wakes it ([`running`]). An idle daemon used to wake a core a thousand times a second for
//! nothing (`perf sched`: about 930 wake-ups/s, every other thread together about 7/s). Under
//! steady load the ticker never parks, so the calls pay nothing beyond two atomic operations;
//! only the first call after a quiet spell pays one futex wake.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use wasmtime::Engine;

/// One epoch tick. Under `Meter::CpuTime` a tick is only when the budget is looked at: what
/// is charged is the calling thread's CPU time.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks without a call before the ticker parks (10 ms): long enough that a busy daemon's
/// calls keep it awake, short enough that an agent's periodic export (every second for the
/// demo agent's metrics) costs ten ticks, not a second's worth.
const QUIET_TICKS: u32 = 10;

/// A parked ticker still looks this often whether its engine is gone (and the thread can end).
const PARKED_CHECK: Duration = Duration::from_secs(1);

/// What the calls and the tickers share. One for the process ([`GATE`]): the daemon has one
/// engine; benchmarks and tests make more, and a call on any of them wakes every ticker, which
/// costs nothing real.
struct Gate {
    /// Guest calls in flight.
    running: AtomicUsize,
    /// Tickers parked, so a call knows whether it must wake them.
    parked: AtomicUsize,
    /// Epoch increments, all tickers together.
    ticks: AtomicU64,
    wake: (Mutex<()>, Condvar),
}

impl Gate {
    const fn new() -> Gate {
        Gate {
            running: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
            wake: (Mutex::new(()), Condvar::new()),
        }
    }

    fn enter(&'static self) -> Running {
        // SeqCst on both sides: either this call sees a ticker parked and wakes it, or the
        // ticker, about to park, sees this call running and does not (see `park`).
        if self.running.fetch_add(1, SeqCst) == 0 && self.parked.load(SeqCst) > 0 {
            // The lock is taken and released before the notify, not held across it: a ticker
            // between its check and its wait holds it, so once we have had it the ticker is
            // either waiting (and gets the notify) or has not checked yet (and sees this call).
            // Notifying under the lock woke the ticker into a lock still held: it blocked on
            // the mutex and had to be woken a second time when the call released it, two more
            // context switches on the calling core for every first call after a quiet spell.
            drop(self.wake.0.lock().unwrap_or_else(|p| p.into_inner()));
            self.wake.1.notify_all();
        }
        Running(self)
    }

    /// The ticker's loop, until the engine is gone.
    fn tick(&self, engine: wasmtime::EngineWeak) {
        let mut quiet = 0u32;
        loop {
            std::thread::sleep(TICK);
            let Some(strong) = engine.upgrade() else {
                return;
            };
            strong.increment_epoch();
            drop(strong);
            self.ticks.fetch_add(1, SeqCst);
            if self.running.load(SeqCst) > 0 {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet >= QUIET_TICKS {
                quiet = 0;
                if !self.park(|| engine.upgrade().is_some()) {
                    return;
                }
            }
        }
    }

    /// Waits until a guest call starts. False: the engine is gone, the thread should end.
    fn park(&self, engine_alive: impl Fn() -> bool) -> bool {
        let mut g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        self.parked.fetch_add(1, SeqCst);
        let mut alive = true;
        // Checked under the lock that `enter` takes before it notifies: no wake-up falls
        // between the check and the wait.
        while self.running.load(SeqCst) == 0 {
            let (next, waited) = self
                .wake
                .1
                .wait_timeout(g, PARKED_CHECK)
                .unwrap_or_else(|p| p.into_inner());
            g = next;
            if waited.timed_out() && !engine_alive() {
                alive = false;
                break;
            }
        }
        self.parked.fetch_sub(1, SeqCst);
        alive
    }
}

static GATE: Gate = Gate::new();

/// Held for the length of one guest call (instantiation and `init` included): while any is
/// held, the tickers tick.
#[must_use]
pub struct Running(&'static Gate);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

/// Marks a guest call as started; its deadline is enforced until the guard drops.
pub fn running() -> Running {
    GATE.enter()
}

/// Starts the ticker of `engine`: a thread that lives as long as the engine does.
pub fn start(engine: &Engine) {
    start_on(&GATE, engine);
}

fn start_on(gate: &'static Gate, engine: &Engine) {
    let weak = engine.weak();
    let _ = std::thread::Builder::new()
        .name("acpd-plugin-epoch".into())
        .spawn(move || {
            // Above a real-time worker that runs a looping guest (see `sched::realtime`).
            crate::sched::realtime::above_serving();
            gate.tick(weak)
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "{what} within 20 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The ticker parks after a quiet spell and stops ticking; a call wakes it and it ticks
    /// while the call runs; it parks again after the call; it ends with its engine.
    #[test]
    fn the_ticker_parks_when_quiet_and_ticks_for_a_call() {
        let gate: &'static Gate = Box::leak(Box::new(Gate::new()));
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        start_on(gate, &engine);
        until("the ticker parks", || gate.parked.load(SeqCst) == 1);
        let parked_at = gate.ticks.load(SeqCst);
        assert!(
            parked_at >= u64::from(QUIET_TICKS),
            "{parked_at} ticks before parking"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(gate.ticks.load(SeqCst), parked_at, "a parked ticker ticked");

        let call = gate.enter();
        until("a call wakes the ticker", || gate.parked.load(SeqCst) == 0);
        until("the ticker ticks during the call", || {
            gate.ticks.load(SeqCst) >= parked_at + 5
        });
        drop(call);
        until("the ticker parks again", || gate.parked.load(SeqCst) == 1);

        drop(engine);
        // The parked thread looks once a second whether its engine is gone; then it ends.
        until("the ticker ends with its engine", || {
            gate.parked.load(SeqCst) == 0
        });
        let ended_at = gate.ticks.load(SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(gate.ticks.load(SeqCst), ended_at, "an ended ticker ticked");
    }
}

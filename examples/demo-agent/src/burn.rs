//! The CPU-burn mode: a demo agent that works between and during turns, as real agents do (a
//! Node agent keeps compacting, indexing and collecting garbage while nobody prompts it).
//!
//! With `ACPD_DEMO_BURN=<percent>` (1–100) one thread burns that share of one core for as long
//! as the agent runs: in every 10 ms period it computes for `percent` of the period by the wall
//! clock, then sleeps out the rest. What the agent gets done is then up to the scheduler: on a
//! contended machine the thread's busy window yields less work. The harness reads the agent's
//! CPU time from /proc to see how much work it got (see BENCHMARKS.md, "Responsive under agent
//! load").

use std::time::{Duration, Instant};

/// Env var: share of one core (percent) the agent burns from start to exit.
pub const BURN_ENV: &str = "ACPD_DEMO_BURN";

const PERIOD: Duration = Duration::from_millis(10);

/// Starts the burning thread when [`BURN_ENV`] asks for one.
pub fn start_from_env() {
    let Some(percent) = std::env::var(BURN_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|p| (1..=100).contains(p))
    else {
        return;
    };
    let busy = PERIOD * percent / 100;
    let spawned = std::thread::Builder::new()
        .name("demo-burn".into())
        .spawn(move || burn(busy));
    if let Err(e) = spawned {
        eprintln!("demo agent: cannot start the burn thread: {e}");
    }
}

fn burn(busy: Duration) -> ! {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut period_start = Instant::now();
    loop {
        let busy_until = period_start + busy;
        while Instant::now() < busy_until {
            // A unit of work the optimiser cannot drop: ~1 µs of xorshift.
            for _ in 0..256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            std::hint::black_box(x);
        }
        period_start += PERIOD;
        let now = Instant::now();
        if period_start > now {
            std::thread::sleep(period_start - now);
        } else {
            // Behind (the thread was not scheduled): start the next period now rather than
            // burning through the missed ones.
            period_start = now;
        }
    }
}

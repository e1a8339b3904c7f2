//! Real-time serving threads while the daemon's own load is light.
//!
//! On a kernel that preempts a fair task only at its tick (`CONFIG_HZ=250` and no kernel
//! preemption, measured as a nested guest), a daemon thread woken by a request waited up to
//! 4 ms for a core that a burning agent held, whatever the daemon's slice or the agent's
//! niceness (BENCHMARKS.md, "Responsive under agent load"). A thread of a real-time policy is
//! another class: its wake-up preempts any fair task at once, on every kernel. So, where the
//! daemon may (root, `CAP_SYS_NICE`, an `RLIMIT_RTPRIO`), the main thread (which accepts
//! connections) and every runtime thread run round-robin at `server.realtime_priority`.
//! Threads and children they start get a fair policy back (`SCHED_FLAG_RESET_ON_FORK`): the
//! export threads, the spawner and so the agents never run real-time.
//!
//! Real-time wins latency when the daemon's work is light, which is when a request waiting
//! for a core is the daemon's whole cost. Under heavy load it loses: each request preempts
//! the client or agent that sent it, so nothing batches (a local load generator got 20-35 %
//! fewer answers a second), and the agents and a local client wait for the daemon's whole
//! backlog. So a governor watches the daemon's CPU: above half a core over a 100 ms window its
//! threads go back to the fair policy (with the daemon's slice), below a quarter they return
//! to real time. That also bounds what a real-time daemon can take from the machine, a bug
//! that spins included, to about half a core for 100 ms. The governor samples only when work
//! arrives (a request, an agent's line): an idle daemon does nothing for it.

use super::SchedAttr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// How long a load sample spans, in ns.
const WINDOW_NS: u64 = 100_000_000;
/// The daemon's CPU over a window, in cores, above which its threads go fair...
const HIGH: f64 = 0.5;
/// ...and below which they return to real time.
const LOW: f64 = 0.25;

const SCHED_RR: u32 = 2;
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

fn rr(priority: u8) -> SchedAttr {
    SchedAttr {
        size: super::SCHED_ATTR_SIZE_VER0,
        policy: SCHED_RR,
        flags: SCHED_FLAG_RESET_ON_FORK,
        priority: u32::from(priority),
        ..SchedAttr::default()
    }
}

/// Round-robin real-time at `priority` (1..=99) for the calling thread; every thread or
/// process it starts from then on gets the fair policy at niceness 0 and the kernel's default
/// slice (`SCHED_FLAG_RESET_ON_FORK`). Refused (`EPERM`) without `CAP_SYS_NICE` or an
/// `RLIMIT_RTPRIO` of at least `priority`: the thread keeps its policy and slice.
pub fn set_realtime(priority: u8) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return super::set(&rr(priority));
    #[cfg(not(target_os = "linux"))]
    {
        let _ = priority;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Whether the daemon's threads should change class after a window in which it used `cores`:
/// `Some(true)` back to real time, `Some(false)` to fair, `None` as they are.
fn decide(realtime: bool, cores: f64) -> Option<bool> {
    match realtime {
        true if cores > HIGH => Some(false),
        false if cores < LOW => Some(true),
        _ => None,
    }
}

struct Governor {
    realtime: SchedAttr,
    /// The main thread's attributes before it went real-time: its niceness and the daemon's
    /// slice, which the threads take when they go fair.
    fair: SchedAttr,
    epoch: Instant,
    /// Start of the current window, ns since `epoch`.
    window_start: AtomicU64,
    on: AtomicBool,
    demotions: AtomicU64,
    state: Mutex<State>,
}

struct State {
    /// The runtime's threads and the main one; a runtime's threads are bounded by its worker
    /// and blocking-pool limits.
    tids: Vec<i32>,
    /// The process's CPU time at the window's start, ns.
    cpu_at_start: u64,
}

impl Governor {
    /// ns since `epoch`.
    #[cfg(target_os = "linux")]
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A new load window from `now`, the process's CPU time at that point being `cpu`.
    #[cfg(target_os = "linux")]
    fn start_window(&self, st: &mut State, now: u64, cpu: u64) {
        st.cpu_at_start = cpu;
        self.window_start.store(now, Ordering::Relaxed);
    }
}

static GOVERNOR: OnceLock<Governor> = OnceLock::new();

/// What became of `server.realtime_priority` on the main thread, for the start-up log: unset
/// when it was 0.
static OUTCOME: OnceLock<Outcome> = OnceLock::new();

enum Outcome {
    On(u8),
    Refused(String),
    /// Started real-time (`chrt`): the operator's choice, left alone, ungoverned.
    Inherited,
}

#[cfg(target_os = "linux")]
fn tid() -> i32 {
    nix::unistd::gettid().as_raw()
}

#[cfg(target_os = "linux")]
fn process_cpu_ns() -> u64 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec, which lives here.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Puts the calling thread (the main one, before the runtime starts) at `priority`, 0 being
/// off, and returns what the runtime's `on_thread_start` and `on_thread_stop` run on each of
/// its threads.
#[allow(clippy::type_complexity)]
pub fn realtime_runtime(
    priority: u8,
) -> Option<(
    impl Fn() + Send + Sync + 'static,
    impl Fn() + Send + Sync + 'static,
)> {
    if priority == 0 {
        return None;
    }
    #[cfg(target_os = "linux")]
    {
        let Some(fair) = super::fair_attr() else {
            let _ = OUTCOME.set(Outcome::Inherited);
            return None;
        };
        if let Err(e) = set_realtime(priority) {
            // Refused here, refused on every thread: nothing to govern.
            let _ = OUTCOME.set(Outcome::Refused(e.to_string()));
            return None;
        }
        let _ = OUTCOME.set(Outcome::On(priority));
        let epoch = Instant::now();
        let _ = GOVERNOR.set(Governor {
            realtime: rr(priority),
            fair,
            epoch,
            window_start: AtomicU64::new(0),
            on: AtomicBool::new(true),
            demotions: AtomicU64::new(0),
            state: Mutex::new(State {
                tids: vec![tid()],
                cpu_at_start: process_cpu_ns(),
            }),
        });
        Some((
            || {
                if let Some(g) = GOVERNOR.get() {
                    let mut st = g.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.tids.push(tid());
                    // Under the lock: a change of class cannot pass this thread by.
                    let attr = if g.on.load(Ordering::Relaxed) {
                        &g.realtime
                    } else {
                        &g.fair
                    };
                    let _ = super::set(attr);
                }
            },
            || {
                if let Some(g) = GOVERNOR.get() {
                    let me = tid();
                    let mut st = g.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.tids.retain(|t| *t != me);
                }
            },
        ))
    }
    #[cfg(not(target_os = "linux"))]
    None::<(fn(), fn())>
}

/// For a thread that enforces the serving threads' limits (the plugins' epoch ticker): one
/// real-time priority above them, where they run real-time, ungoverned (it runs a moment per
/// millisecond while a plugin call is in flight, and parks otherwise). A guest that loops on a
/// real-time worker holds that core; a fair ticker then waited for the other core behind
/// whatever else ran there while the loop was charged CPU time, 17 ms for a 5 ms budget on a
/// crowded host. At a higher priority it preempts the loop itself. Elsewhere: nothing.
pub fn above_serving() {
    #[cfg(target_os = "linux")]
    if let Some(g) = GOVERNOR.get() {
        let priority = u8::try_from(g.realtime.priority.saturating_add(1).min(99)).unwrap_or(99);
        let _ = super::set(&rr(priority));
    }
}

/// Work arrived (a request, an agent's line). Once per window, one caller reads the daemon's
/// CPU time and moves its threads between real time and fair if the load asks for it; every
/// other call is a clock read and a comparison.
pub fn note_activity() {
    #[cfg(target_os = "linux")]
    {
        let Some(g) = GOVERNOR.get() else { return };
        let now = g.now();
        if now.saturating_sub(g.window_start.load(Ordering::Relaxed)) < WINDOW_NS {
            return;
        }
        // Another caller is sampling: this one goes on.
        let Ok(mut st) = g.state.try_lock() else {
            return;
        };
        let elapsed = now.saturating_sub(g.window_start.load(Ordering::Relaxed));
        if elapsed < WINDOW_NS {
            return;
        }
        let cpu = process_cpu_ns();
        let cores = cpu.saturating_sub(st.cpu_at_start) as f64 / elapsed as f64;
        g.start_window(&mut st, now, cpu);
        let on = g.on.load(Ordering::Relaxed);
        if let Some(to) = decide(on, cores) {
            g.on.store(to, Ordering::Relaxed);
            let attr = if to { &g.realtime } else { &g.fair };
            // A thread that ended meanwhile is skipped (ESRCH); its stop hook removes it.
            for t in &st.tids {
                let _ = super::set_thread(*t, attr);
            }
            if !to {
                g.demotions.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(cores, realtime = to, "the daemon's threads changed class");
        }
    }
}

/// `acpd.sched.realtime` and `acpd.sched.demotions`, when real time is on (call once the
/// meter provider is installed).
pub fn register_metrics() {
    use crate::telemetry::semconv;
    let Some(g) = GOVERNOR.get() else { return };
    let meter = opentelemetry::global::meter("acpd");
    let _ = meter
        .u64_observable_gauge(semconv::M_SCHED_REALTIME)
        .with_unit("{state}")
        .with_description(
            "1 while the serving threads run real-time, 0 while the load keeps them fair",
        )
        .with_callback(|o| o.observe(u64::from(g.on.load(Ordering::Relaxed)), &[]))
        .build();
    let _ = meter
        .u64_observable_counter(semconv::M_SCHED_DEMOTIONS)
        .with_unit("{change}")
        .with_description(
            "How often the daemon's load moved its serving threads from real time to fair",
        )
        .with_callback(|o| o.observe(g.demotions.load(Ordering::Relaxed), &[]))
        .build();
}

/// Start-up is over: says once, at `info`, whether the daemon's threads run real-time and why
/// not, and starts the first load window here, so that start-up's work (plugins compiled or
/// loaded, the journal restored) is not taken for serving load.
pub fn serving() {
    #[cfg(target_os = "linux")]
    if let Some(g) = GOVERNOR.get() {
        let mut st = g.state.lock().unwrap_or_else(|e| e.into_inner());
        g.start_window(&mut st, g.now(), process_cpu_ns());
    }
    match OUTCOME.get() {
        None => tracing::info!("real-time scheduling off (server.realtime_priority = 0)"),
        Some(Outcome::On(p)) => tracing::info!(
            priority = p,
            "real-time scheduling on (SCHED_RR) while the daemon uses under half a core"
        ),
        Some(Outcome::Inherited) => tracing::info!(
            "the daemon was started with a real-time policy: kept as it is, not governed; \
             its agents still start fair"
        ),
        Some(Outcome::Refused(e)) => tracing::info!(
            error = %e,
            "real-time scheduling not permitted (needs CAP_SYS_NICE or an RLIMIT_RTPRIO); \
             the daemon relies on its CPU slice and the agents' niceness"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_load_goes_fair_light_load_returns_with_hysteresis() {
        assert_eq!(decide(true, 0.8), Some(false));
        assert_eq!(decide(true, 0.4), None);
        assert_eq!(decide(false, 0.4), None);
        assert_eq!(decide(false, 0.1), Some(true));
        assert_eq!(decide(true, 0.0), None);
        assert_eq!(decide(false, 0.9), None);
    }

    #[cfg(target_os = "linux")]
    fn policy_of(stat: &str) -> Option<String> {
        let rest = stat.rsplit_once(')')?.1;
        rest.split_whitespace().nth(41 - 3).map(String::from)
    }

    /// A real-time thread is `SCHED_RR`; what it starts, thread or process, is fair
    /// (`SCHED_FLAG_RESET_ON_FORK`), so neither the export threads nor an agent inherit it.
    /// Without the privilege the request is refused and the test says so.
    #[cfg(target_os = "linux")]
    #[test]
    fn real_time_is_not_inherited() {
        std::thread::spawn(|| {
            let tid = tid();
            let own = || std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            if let Err(e) = set_realtime(1) {
                println!("skipped: real-time scheduling not permitted here ({e})");
                return;
            }
            assert_eq!(policy_of(&own()).as_deref(), Some("2"));
            let inner =
                std::thread::spawn(|| std::fs::read_to_string("/proc/thread-self/stat").unwrap())
                    .join()
                    .unwrap();
            assert_eq!(policy_of(&inner).as_deref(), Some("0"), "{inner}");
            let child = std::process::Command::new("cat")
                .arg("/proc/self/stat")
                .output()
                .unwrap();
            let child = String::from_utf8_lossy(&child.stdout);
            assert_eq!(policy_of(&child).as_deref(), Some("0"), "{child}");
        })
        .join()
        .unwrap();
    }
}

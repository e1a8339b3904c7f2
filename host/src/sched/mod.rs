//! The daemon's CPU slice. Agents burn CPU between and during turns; on a machine they keep
//! busy, a daemon thread woken by a request (or an agent's line) must take a core from one of
//! them. The EEVDF scheduler (Linux 6.6+) lets a running task finish its slice before a waking
//! one of equal standing gets the core, so a burning agent held admission and `/health` back
//! by up to its slice even at a lower priority (`agent.nice`).
//!
//! Since Linux 6.12 a task may ask for a shorter slice (`sched_setattr(2)`, `sched_runtime`
//! for a fair policy, 0.1-100 ms, no privilege needed), and a task with a shorter slice
//! preempts at wake-up. So the daemon asks for a short one: its wake-ups run at once, while
//! the agents keep their full share of the CPU (a slice sets latency, not weight). Older
//! kernels ignore the request. A slice is inherited over `clone` and `fork`, so it is set on
//! the main thread before the runtime starts (every daemon thread inherits it), and an agent
//! gets the kernel's default back between fork and exec ([`ChildSched::apply_in_child`]).
//! BENCHMARKS.md ("Responsive under agent load") has the figures.
//!
//! The slice is not enough on every kernel: on one that preempts only at its tick
//! (`CONFIG_HZ=250`, measured as a nested guest), a burning agent kept the core for up to 4 ms
//! after a daemon thread woke, whatever the daemon's slice or the agent's niceness. A thread
//! of a real-time policy is another class: its wake-up preempts any fair task at once, on
//! every kernel. So, where the daemon may, its serving threads run real-time while its own
//! load is light ([`realtime`]).

pub mod realtime;

pub use realtime::{note_activity, realtime_runtime, serving, set_realtime};

use std::io;
use std::time::Duration;

/// `struct sched_attr`, version 0 (48 bytes), as sched_setattr(2) documents it.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_ATTR_SIZE_VER0: u32 = 48;
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;

#[cfg(target_os = "linux")]
fn get(attr: &mut SchedAttr) -> io::Result<()> {
    // SAFETY: the kernel writes at most `size` bytes into `attr`, which is that large.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_sched_getattr,
            0,
            attr as *mut SchedAttr,
            SCHED_ATTR_SIZE_VER0,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Async-signal-safe: one system call, no allocation (it runs between fork and exec too).
#[cfg(target_os = "linux")]
fn set(attr: &SchedAttr) -> io::Result<()> {
    set_thread(0, attr)
}

/// `tid` 0: the calling thread.
#[cfg(target_os = "linux")]
fn set_thread(tid: i32, attr: &SchedAttr) -> io::Result<()> {
    // SAFETY: the kernel reads `attr.size` bytes from `attr`, which is that large.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_sched_setattr,
            tid,
            attr as *const SchedAttr,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's attributes, if its policy is a fair one (the only kind a slice
/// applies to; a real-time policy an operator chose is left alone).
#[cfg(target_os = "linux")]
fn fair_attr() -> Option<SchedAttr> {
    let mut attr = SchedAttr {
        size: SCHED_ATTR_SIZE_VER0,
        ..SchedAttr::default()
    };
    get(&mut attr).ok()?;
    [SCHED_OTHER, SCHED_BATCH, SCHED_IDLE]
        .contains(&attr.policy)
        .then_some(SchedAttr {
            size: SCHED_ATTR_SIZE_VER0,
            flags: 0,
            ..attr
        })
}

/// Asks for `slice` for the calling thread and everything it starts from now on (its policy
/// and niceness are kept). `None`: nothing to do.
pub fn set_daemon_slice(slice: Option<Duration>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Some(slice) = slice
        && let Some(attr) = fair_attr()
    {
        let ns = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
        return set(&SchedAttr {
            runtime: ns,
            ..attr
        });
    }
    let _ = slice;
    Ok(())
}

/// What [`ChildSched::apply_in_child`] writes, read in the parent before the fork: the
/// parent's attributes with the slice set back to the kernel's default.
#[derive(Clone, Copy)]
pub struct ChildSched(Option<SchedAttr>);

impl ChildSched {
    pub fn prepare() -> ChildSched {
        #[cfg(target_os = "linux")]
        return ChildSched(
            fair_attr()
                .filter(|a| a.runtime != 0)
                .map(|a| SchedAttr { runtime: 0, ..a }),
        );
        #[cfg(not(target_os = "linux"))]
        ChildSched(None)
    }

    /// In the forked child before exec: a fair policy at the kernel's default slice.
    /// - An agent does not inherit the daemon's short slice (and preempt the daemon as readily
    ///   as it is preempted).
    /// - Nor a real-time policy: the daemon's own threads drop theirs for what they start, but a
    ///   daemon an operator started real-time (`chrt`) forks from real-time threads, and an
    ///   agent that burns CPU at a real-time priority would starve the machine.
    ///
    /// `nice`: the niceness the child has been given by then, if not the parent's
    /// (sched_setattr(2) sets both). An error (only from leaving a real-time policy) fails the
    /// spawn. Async-signal-safe: system calls only.
    pub fn apply_in_child(&self, nice: Option<i32>) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            if let Some(attr) = self.0 {
                // Best effort: a slice is latency only.
                let _ = set(&SchedAttr {
                    nice: nice.unwrap_or(attr.nice),
                    ..attr
                });
                return Ok(());
            }
            let mut now = SchedAttr {
                size: SCHED_ATTR_SIZE_VER0,
                ..SchedAttr::default()
            };
            get(&mut now)?;
            if ![SCHED_OTHER, SCHED_BATCH, SCHED_IDLE].contains(&now.policy) {
                return set(&SchedAttr {
                    size: SCHED_ATTR_SIZE_VER0,
                    policy: SCHED_OTHER,
                    nice: nice.unwrap_or(0),
                    ..SchedAttr::default()
                });
            }
        }
        let _ = nice;
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn slice_of(tid: i32) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).ok()?;
        s.lines()
            .find(|l| l.starts_with("se.slice"))?
            .rsplit(':')
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// A thread that asks for a short slice has it, threads it starts inherit it, and the
    /// child attributes put the default back (all in a thread of its own, so the test
    /// process is left as it was). Kernels without custom slices (before 6.12) show no
    /// `se.slice` line, or ignore the request: the test then says so and checks nothing.
    #[test]
    fn the_slice_is_set_inherited_and_reset_for_children() {
        std::thread::spawn(|| {
            let tid = nix::unistd::gettid().as_raw();
            let Some(default) = slice_of(tid) else {
                println!("skipped: this kernel shows no se.slice in /proc");
                return;
            };
            set_daemon_slice(Some(Duration::from_micros(100))).unwrap();
            if slice_of(tid) == Some(default) {
                println!("skipped: this kernel ignores a custom slice");
                return;
            }
            assert_eq!(slice_of(tid), Some(100_000));
            let inner = std::thread::spawn(|| slice_of(nix::unistd::gettid().as_raw()))
                .join()
                .unwrap();
            assert_eq!(inner, Some(100_000));
            ChildSched::prepare().apply_in_child(None).unwrap();
            assert_eq!(slice_of(tid), Some(default));
        })
        .join()
        .unwrap();
    }
}

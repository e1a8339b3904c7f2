//! Agents die with the daemon, however it dies. Each agent asks the kernel for SIGKILL when its
//! parent dies (`PR_SET_PDEATHSIG`, set in the child between fork and exec), which holds for a
//! SIGKILLed daemon too, where nothing of the daemon's own runs any more.
//!
//! The kernel's "parent" there is the *thread* that forked, not the daemon process: an agent
//! forked on a tokio blocking-pool thread (they exit after idling) or on a worker that
//! `block_in_place` handed over to that pool would be killed, healthy, when that thread goes. So
//! every agent is forked on one thread of its own, started once and never ending while the
//! daemon runs.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel, sync_channel};
use tokio::process::{Child, Command};

type Job = Box<dyn FnOnce() + Send>;

static JOBS: OnceLock<Sender<Job>> = OnceLock::new();

/// Arms `cmd` so its process gets SIGKILL when the thread that spawns it exits (Linux; elsewhere
/// nothing: see docs/AGENTS.md), and starts it `nice` steps nicer than the daemon (0: the
/// daemon's priority; at most 19). Spawn it with [`spawn`], whose thread is the daemon's
/// lifetime.
pub fn die_with_daemon(cmd: &mut Command, nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let daemon = nix::unistd::getpid();
        // Relative to the daemon's own niceness, as nice(1) is: an absolute value below the
        // daemon's would need privileges. Read here, in the parent, where errno is ours.
        let target = (nice > 0).then(|| {
            // SAFETY: getpriority(2) reads the calling thread's niceness; no memory involved.
            let ours = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
            (ours + nice).min(19)
        });
        let slice = crate::sched::ChildSched::prepare();
        // SAFETY: runs in the forked child before exec, where only async-signal-safe calls are
        // allowed: prctl(2) and getppid(2) are plain system calls that allocate nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                // The daemon may have died between the fork and the prctl: then no signal will
                // come, and the agent must not start for no one.
                if nix::unistd::getppid() != daemon {
                    return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                // Here rather than with `nice(1)` in front: no extra exec, and the agent's own
                // threads and children inherit it. setpriority(2) is a plain system call too;
                // `who` 0 is this (single-threaded) child. A refusal (e.g. a seccomp policy)
                // fails the spawn rather than running the agent at a priority not asked for.
                if let Some(target) = target
                    && nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, target) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The daemon's short CPU slice is inherited over fork, and a real-time policy
                // where an operator started the daemon so; an agent gets the fair policy at the
                // kernel's default slice (see `crate::sched`).
                slice.apply_in_child(target)?;
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, nice);
}

/// Spawns `cmd` on the spawner thread, within the caller's tokio runtime (which then watches
/// the child as always). Blocks the caller for the fork and exec, as `Command::spawn` does.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    let rt = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    run(move || {
        let _rt = rt.enter();
        cmd.spawn()
    })?
}

/// Runs `job` on the spawner thread and returns what it returned.
fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        // Should the thread not start, `rx` is dropped with it and every spawn fails below.
        let _ = std::thread::Builder::new()
            .name("acpd-spawner".into())
            .spawn(move || {
                for job in rx {
                    // A panicking job must not end the thread: its agents would go with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        tx
    });
    let (tx, rx) = sync_channel(1);
    jobs.send(Box::new(move || {
        let _ = tx.send(job());
    }))
    .map_err(|_| io::Error::other("the agent spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the agent spawner thread failed the spawn"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").kill_on_drop(true);
        die_with_daemon(&mut cmd, 0);
        cmd
    }

    fn until(within: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The trap this module exists for, and that it is avoided: a thread (like a blocking-pool
    /// thread that idled out) spawns two agents and exits. The one it forked itself is killed by
    /// the parent-death signal; the one it had the spawner thread fork lives on.
    #[test]
    fn an_agent_outlives_the_thread_that_asked_for_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (mut ours, mut forked_here, tid) = std::thread::spawn(move || {
            let _rt = handle.enter();
            let ours = spawn(sleeper()).expect("spawn on the spawner thread");
            let forked_here = sleeper().spawn().expect("spawn on this thread");
            (ours, forked_here, nix::unistd::gettid())
        })
        .join()
        .unwrap();
        // The thread is gone from the process (past the point where the kernel signals).
        assert!(until(Duration::from_secs(10), || {
            !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
        }));
        let status = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), forked_here.wait()).await
            })
            .expect("the child of the exited thread got its parent-death signal")
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        // Signalled in the same pass as its sibling would have been: it is alive, not dying.
        assert!(ours.try_wait().unwrap().is_none(), "the healthy agent died");
        let pid = ours.id().unwrap();
        let stat = super::super::stat::Stat::read(pid).unwrap();
        assert!(!stat.is_zombie());
        rt.block_on(async {
            ours.start_kill().unwrap();
            tokio::time::timeout(Duration::from_secs(10), ours.wait())
                .await
                .unwrap()
                .unwrap()
        });
    }

    /// `agent.nice` reaches the agent: its niceness is read back from /proc.
    #[test]
    fn an_agent_starts_at_the_niceness_asked_for() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut cmd = Command::new("sleep");
            cmd.arg("30").kill_on_drop(true);
            die_with_daemon(&mut cmd, 7);
            let mut child = spawn(cmd).expect("spawn");
            let pid = child.id().unwrap();
            // SAFETY: plain system calls reading a niceness.
            let (ours, theirs) = unsafe {
                (
                    nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0),
                    nix::libc::getpriority(nix::libc::PRIO_PROCESS, pid),
                )
            };
            assert_eq!(theirs, (ours + 7).min(19));
            child.start_kill().unwrap();
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .unwrap()
                .unwrap();
        });
    }

    #[test]
    fn a_panicking_job_leaves_the_spawner_running() {
        let r = run(|| -> u32 { panic!("a job that panics") });
        assert!(r.is_err());
        assert_eq!(run(|| 7).unwrap(), 7);
    }
}

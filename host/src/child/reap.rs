//! Reaping what the agents leave behind. An agent's own children (claude-code-acp's Claude Code
//! CLI, codex's shells) are orphaned when the agent exits; killed with its process group, they
//! would stay zombies until the system's init reaps them, seconds later or (in a container whose
//! PID 1 does not reap) never. acpd makes itself their subreaper, so they are re-parented to it,
//! and reaps them itself: a stopped agent is then gone, group and all, before acpd reports it
//! stopped or exits.
//!
//! tokio reaps the agent processes acpd spawned (by pid); this module only ever waits for other
//! pids, so the two never take each other's exit status.

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Pids of the agent processes tokio waits for (counted: a pid can be reused by a new agent
/// before the old one's entry is removed).
static SPAWNED: Mutex<Option<HashMap<u32, usize>>> = Mutex::new(None);

type Spawned = MutexGuard<'static, Option<HashMap<u32, usize>>>;

/// Held across a spawn and its registration, so a sweep never sees a spawned agent (even one
/// that exits at once) before it is known.
pub(super) fn lock() -> Spawned {
    SPAWNED.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn register(guard: &mut Spawned, pid: u32) {
    *guard
        .get_or_insert_with(HashMap::new)
        .entry(pid)
        .or_insert(0) += 1;
}

/// After tokio reaped it.
pub(super) fn forget(pid: u32) {
    if let Some(map) = lock().as_mut()
        && let Some(n) = map.get_mut(&pid)
    {
        *n -= 1;
        if *n == 0 {
            map.remove(&pid);
        }
    }
}

/// Makes acpd the subreaper of its descendants (Linux), and reaps orphans as they exit.
pub fn start() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!(error = %e, "cannot become the agents' subreaper");
        return;
    }
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(mut sigchld) => {
            tokio::spawn(async move {
                while sigchld.recv().await.is_some() {
                    sweep();
                }
            });
        }
        Err(e) => tracing::debug!(error = %e, "no SIGCHLD stream; orphans are reaped at exit"),
    }
}

/// Reaps every exited child of acpd that is not an agent tokio waits for. Returns how many
/// children of that kind are still running.
pub fn sweep() -> usize {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let guard = lock();
    let spawned = guard.as_ref();
    let mut running = 0;
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if spawned.is_some_and(|s| s.contains_key(&pid)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name: state, ppid, ...
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let (state, ppid) = (rest.next(), rest.next());
        if ppid != Some(me.as_str()) {
            continue;
        }
        if state == Some("Z") {
            let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
        } else {
            running += 1;
        }
    }
    running
}

/// Reaps the members of process group `pgid` (killed by the caller) as they become acpd's
/// zombies, until none is left or `within` passes. Its leader has been reaped already.
pub async fn group(pgid: u32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match waitpid(Pid::from_raw(-(pgid as i32)), Some(WaitPidFlag::WNOHANG)) {
            // One reaped: there may be more.
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => continue,
            // None of ours in that group any more (an orphan still dying belongs to a parent
            // that is itself dying: it comes to us a moment later).
            Err(nix::errno::Errno::ECHILD) if !members_alive(pgid) => return,
            Err(nix::errno::Errno::ECHILD) | Ok(_) => {}
            Err(_) => return,
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether any process (zombies included) is left in group `pgid`.
fn members_alive(pgid: u32) -> bool {
    nix::sys::signal::killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

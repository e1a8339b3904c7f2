//! Agents a previous daemon left running. The parent-death signal (`spawner`) ends an agent with
//! the daemon, but not what the agent itself started (the signal is not inherited over a fork),
//! nor an agent that cleared it or could not get it. So each agent is also recorded on disk while
//! it runs, and a daemon starting on the same state directory stops what its predecessor's
//! records name before it serves.
//!
//! One file per agent, `<state dir>/agents/<pid>-<start>.json`, written to a temporary name and
//! renamed into place, so a daemon killed mid-write leaves a whole record or none. No fsync: a
//! record only has to outlive the daemon, not the machine, whose restart ends its agents too.
//!
//! A record names one process by pid and start time, so a pid the system has since reused is
//! never signalled. The agent leads its own process group, whose id is its pid; members of that
//! group are stopped too, also when the agent itself is gone: the kernel hands out a pid again
//! only when no group still uses it as its id, so while such members exist the group is the
//! agent's (they must also be in the agent's session and have started after it).

use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use opentelemetry::KeyValue;

use super::stat::{self, Stat};
use crate::telemetry::metrics;
use crate::telemetry::semconv::CHILD_EVENT;

/// One running agent, as the daemon that spawned it recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pid: u32,
    /// Its start time, in clock ticks since boot (see [`Stat::start`]).
    pub start: u64,
    /// Its process group (its own: the pid).
    pub pgid: u32,
    pub session: u32,
    /// The boot the start time counts from.
    pub boot: String,
    /// The daemon that spawned it: its records are its own while it runs.
    pub daemon: Owner,
    /// The program only: its arguments may carry secrets.
    pub program: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    fn alive(&self) -> bool {
        Stat::read(self.pid).is_some_and(|s| s.start == self.start && !s.is_zombie())
    }
}

/// This daemon's records directory, once [`stop_leftovers`] has run; no records before.
static DIR: OnceLock<Recorder> = OnceLock::new();

struct Recorder {
    dir: PathBuf,
    me: Owner,
    boot: String,
}

/// The file of a running agent's record, removed once the agent (and its group) is reaped.
#[derive(Debug)]
pub struct Recorded(PathBuf);

impl Recorded {
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Records agent `pid` (just spawned, not yet reaped: the pid is still its own). None when
/// there is no records directory or the record cannot be written; the agent runs all the same.
pub fn record(pid: u32, program: &str) -> Option<Recorded> {
    let r = DIR.get()?;
    let stat = Stat::read(pid)?;
    let record = Record {
        pid,
        start: stat.start,
        pgid: stat.pgrp,
        session: stat.session,
        boot: r.boot.clone(),
        daemon: r.me,
        program: program.to_string(),
    };
    let name = format!("{pid}-{}.json", stat.start);
    let path = r.dir.join(&name);
    let tmp = r.dir.join(format!(".{name}.{}.tmp", r.me.pid));
    let written = serde_json::to_vec(&record)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => Some(Recorded(path)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(target: "acpd::child", error = %e, dir = %r.dir.display(), "cannot record the agent's pid; a restart after a crash will not find it");
            None
        }
    }
}

/// At start-up, before the daemon serves: stops every process the records in
/// `<state_dir>/agents` name (SIGTERM, `grace`, SIGKILL) unless the daemon that wrote them still
/// runs, clears those records, and records this daemon's agents there from now on. Returns how
/// many leftover agents it found running. Without a state directory nothing is recorded.
pub async fn stop_leftovers(state_dir: Option<&Path>, grace: Duration) -> usize {
    let Some(state_dir) = state_dir else {
        tracing::info!(target: "acpd::child", "no state directory: agents left by a crashed daemon are not looked for");
        return 0;
    };
    let dir = state_dir.join("agents");
    let (Some(me), Some(boot)) = (Stat::read(std::process::id()), stat::boot_id()) else {
        tracing::info!(target: "acpd::child", "no /proc: agents left by a crashed daemon are not looked for");
        return 0;
    };
    let me = Owner {
        pid: me.pid,
        start: me.start,
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        tracing::warn!(target: "acpd::child", error = %e, dir = %dir.display(), "cannot create the agents' records directory; agents are not recorded");
        return 0;
    }
    let (records, files) = read_records(&dir, me, &boot);
    let found = stop(&records, me, grace).await;
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    let _ = DIR.set(Recorder { dir, me, boot });
    found
}

/// The records to act on and the files to clear: records of daemons that still run stay;
/// records from another boot, unreadable ones and half-written temporary files of daemons that
/// died are cleared without acting on them.
fn read_records(dir: &Path, me: Owner, boot: &str) -> (Vec<Record>, Vec<PathBuf>) {
    let (mut records, mut files) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (records, files);
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(tmp) = name.strip_suffix(".tmp") {
            // `.<record>.<daemon pid>.tmp`: being written unless that daemon is gone.
            let writer = tmp.rsplit('.').next().and_then(|p| p.parse::<u32>().ok());
            if writer.is_none_or(|p| p == me.pid || Stat::read(p).is_none()) {
                files.push(path);
            }
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let record = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok());
        match record {
            Some(r) if r.daemon != me && r.daemon.alive() => continue,
            Some(r) if r.boot == boot => records.push(r),
            Some(_) => {}
            None => {
                tracing::warn!(target: "acpd::child", file = %path.display(), "unreadable agent record removed")
            }
        }
        files.push(path);
    }
    (records, files)
}

/// The live processes that are `r`'s agent or members of its process group (see the module
/// documentation for why these and no others).
fn processes_of(r: &Record, procs: &[Stat], me: u32) -> Vec<u32> {
    let own_group = r.pgid == r.pid;
    let leader_is_agent = match procs.iter().find(|p| p.pid == r.pid) {
        // The pid was reused: neither that process nor a group under its id is the agent's.
        Some(l) if l.start != r.start => return Vec::new(),
        Some(_) => true,
        None => false,
    };
    let member = |p: &Stat| {
        if leader_is_agent {
            p.pid == r.pid || (own_group && p.pgrp == r.pgid)
        } else {
            own_group && p.pgrp == r.pgid && p.session == r.session && p.start >= r.start
        }
    };
    procs
        .iter()
        .filter(|p| !p.is_zombie() && p.pid != me && member(p))
        .map(|p| p.pid)
        .collect()
}

fn running(records: &[Record], me: u32) -> Vec<Vec<u32>> {
    let procs = stat::all();
    records
        .iter()
        .map(|r| processes_of(r, &procs, me))
        .collect()
}

/// How often the stop looks again whether the leftovers are gone (they are not its children: no
/// event tells it).
const POLL: Duration = Duration::from_millis(20);

/// How long the SIGKILLed leftovers get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);

async fn stop(records: &[Record], me: Owner, grace: Duration) -> usize {
    let found = running(records, me.pid);
    let mut leftovers = 0;
    for (r, pids) in records.iter().zip(&found) {
        if pids.is_empty() {
            continue;
        }
        leftovers += 1;
        metrics()
            .child_lifecycle
            .add(1, &[KeyValue::new(CHILD_EVENT, "leftover")]);
        tracing::warn!(name: "acpd.child.leftover", target: "acpd::child", { "process.pid" = i64::from(r.pid), "process.executable.name" = %r.program, processes = pids.len(), "acpd.daemon.pid" = i64::from(r.daemon.pid) }, "stopping an agent a previous acpd left running");
    }
    if leftovers == 0 {
        return 0;
    }
    signal_all(&found, Signal::SIGTERM);
    if !gone_within(records, me.pid, grace, None).await {
        let left = running(records, me.pid);
        signal_all(&left, Signal::SIGKILL);
        if !gone_within(records, me.pid, KILL_WAIT, Some(Signal::SIGKILL)).await {
            for (r, pids) in records.iter().zip(running(records, me.pid)) {
                if !pids.is_empty() {
                    tracing::error!(target: "acpd::child", { "process.pid" = i64::from(r.pid), left = ?pids }, "a leftover agent survived SIGKILL");
                }
            }
        }
    }
    leftovers
}

fn signal_all(pids: &[Vec<u32>], sig: Signal) {
    for pid in pids.iter().flatten() {
        // ESRCH: it exited since the look.
        let _ = kill(Pid::from_raw(*pid as i32), sig);
    }
}

/// Waits up to `within` for every process of `records` to be gone; `resend` goes to any that
/// appears meanwhile (a member forked after the first look).
async fn gone_within(
    records: &[Record],
    me: u32,
    within: Duration,
    resend: Option<Signal>,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = running(records, me);
        if left.iter().all(Vec::is_empty) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        if let Some(sig) = resend {
            signal_all(&left, sig);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, pgrp: u32, session: u32, start: u64) -> Stat {
        Stat {
            pid,
            state: 'S',
            pgrp,
            session,
            start,
        }
    }

    fn record(pid: u32, start: u64) -> Record {
        Record {
            pid,
            start,
            pgid: pid,
            session: 7,
            boot: "b".into(),
            daemon: Owner { pid: 5, start: 1 },
            program: "agent".into(),
        }
    }

    #[test]
    fn only_the_recorded_process_and_its_group_are_named() {
        let r = record(100, 50);
        let procs = [
            stat(100, 100, 7, 50), // the agent
            stat(101, 100, 7, 60), // its tool
            stat(102, 102, 7, 70), // its tool in a group of its own: not reachable as the group
            stat(103, 9, 7, 40),   // unrelated
        ];
        assert_eq!(processes_of(&r, &procs, 1), vec![100, 101]);
        // Never this daemon itself.
        assert_eq!(processes_of(&r, &procs, 101), vec![100]);
    }

    #[test]
    fn a_reused_pid_is_never_named_nor_its_group() {
        let r = record(100, 50);
        let procs = [stat(100, 100, 7, 80), stat(101, 100, 7, 90)];
        assert!(processes_of(&r, &procs, 1).is_empty());
    }

    #[test]
    fn with_the_agent_gone_its_group_is_named_if_session_and_start_fit() {
        let r = record(100, 50);
        let procs = [
            stat(101, 100, 7, 60),
            stat(104, 100, 8, 60), // another session
            stat(105, 100, 7, 40), // started before the agent
            Stat {
                state: 'Z',
                ..stat(106, 100, 7, 60)
            },
        ];
        assert_eq!(processes_of(&r, &procs, 1), vec![101]);
        // A record whose group is not the agent's own names the agent alone.
        let r = Record { pgid: 3, ..r };
        assert!(processes_of(&r, &[stat(101, 3, 7, 60)], 1).is_empty());
    }

    #[test]
    fn records_of_a_running_daemon_stay_and_others_are_read_or_cleared() {
        let dir = std::env::temp_dir().join(format!("acpd-leftovers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = Stat::read(std::process::id()).unwrap();
        let me = Owner {
            pid: me.pid,
            start: me.start,
        };
        let boot = stat::boot_id().unwrap();
        let write = |name: &str, r: &Record| {
            std::fs::write(dir.join(name), serde_json::to_vec(r).unwrap()).unwrap();
        };
        // A dead daemon's record from this boot: acted on.
        let dead = Record {
            boot: boot.clone(),
            daemon: Owner {
                pid: me.pid,
                start: me.start + 1,
            },
            ..record(100, 50)
        };
        write("100-50.json", &dead);
        // Another boot's: cleared only.
        write(
            "101-50.json",
            &Record {
                boot: "other".into(),
                ..dead.clone()
            },
        );
        // A running daemon's (this test process stands for it): left alone.
        let parent = Stat::read(std::os::unix::process::parent_id()).unwrap();
        let live = Record {
            daemon: Owner {
                pid: parent.pid,
                start: parent.start,
            },
            ..dead.clone()
        };
        write("102-50.json", &live);
        std::fs::write(dir.join("103-50.json"), b"{\"pid\":").unwrap();
        std::fs::write(dir.join(".104-50.json.4000000000.tmp"), b"{").unwrap();
        let (records, mut files) = read_records(&dir, me, &boot);
        files.sort();
        assert_eq!(records, vec![dead]);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                ".104-50.json.4000000000.tmp",
                "100-50.json",
                "101-50.json",
                "103-50.json"
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! No agent outlives its daemon: a SIGKILLed daemon takes its agents with it (the parent-death
//! signal), also agents that ignore stdin EOF and SIGTERM; whatever still runs after it (an
//! agent's own subprocesses, an agent the signal did not reach) is stopped by the next daemon on
//! the same state directory before it serves; and a record whose pid now names another process
//! (a different start time) never gets that process signalled.

use acpd_tests::*;
use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The log line of one stopped leftover (see `child::leftovers`).
const LEFTOVER_LINE: &str = "stopping an agent a previous acpd left running";

fn linux() -> bool {
    if cfg!(target_os = "linux") {
        return true;
    }
    eprintln!("skipped: the parent-death signal and /proc are Linux-only");
    false
}

/// Agent config: the demo agent's fault, the stop grace of the fault tests.
fn config(fault: &str) -> String {
    format!("[agent]\nstop_grace_ms = 300\n\n[agent.env]\nACPD_DEMO_FAULT = \"{fault}\"\n")
}

/// An agent command whose shell leaves a grandchild (`sleep`, without the parent-death signal,
/// which a fork does not pass on) in the agent's process group, then becomes the demo agent.
fn agent_with_grandchild() -> String {
    let bin = acpd_bin().display().to_string().replace('\'', r"'\''");
    format!("sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & exec \"$0\" demo-agent' '{bin}'")
}

async fn start(state: &Path, fault: &str, agent: Option<&str>) -> Result<Daemon> {
    let state = state.display().to_string();
    let mut b = Daemon::builder()
        .config(&config(fault))
        .args(&["--state-dir", &state]);
    if let Some(agent) = agent {
        b = b.args(&["--agent", agent]);
    }
    b.start().await
}

/// SIGKILLs the daemon and waits (bounded) until it is gone.
async fn kill(d: &mut Daemon) -> Result<()> {
    signal(d.pid(), Signal::SIGKILL)?;
    tokio::time::timeout(WAIT, d.child.wait())
        .await
        .context("the SIGKILLed daemon did not exit")??;
    Ok(())
}

/// A session whose agent runs (it answered a prompt); returns the agent's pid.
async fn running_agent(d: &Daemon, fault: &str) -> Result<u32> {
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, "env ACPD_DEMO_FAULT").await?;
    let id = r.body["promptId"].as_str().context("promptId")?.to_string();
    let frames = sse.until_turn_end(&id).await?;
    assert_eq!(agent_text(&frames), format!("env ACPD_DEMO_FAULT={fault}"));
    d.child_pid(&s).await
}

/// `/proc/<pid>/stat`: (session, start time in clock ticks since boot).
fn session_and_start(pid: u32) -> Result<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    Ok((f[3].parse()?, f[19].parse()?))
}

/// The record file of agent `pid` in the state directory, if any.
fn record_of(state: &Path, pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(state.join("agents"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pid}-")))
        })
}

fn leftover_lines(d: &Daemon) -> Vec<String> {
    d.log()
        .into_iter()
        .filter(|l| l.contains(LEFTOVER_LINE))
        .collect()
}

#[tokio::test]
async fn a_sigkilled_daemon_takes_an_agent_that_ignores_eof_and_sigterm_with_it() -> Result<()> {
    if !linux() {
        return Ok(());
    }
    let state = tempfile::tempdir()?;
    let mut d = start(state.path(), "ignore-term", Some(&agent_with_grandchild())).await?;
    let agent = running_agent(&d, "ignore-term").await?;
    assert!(
        eventually(WAIT, || group_members(agent).len() >= 2).await,
        "the grandchild runs in the agent's group: {:?}",
        group_members(agent)
    );
    let grandchild = group_members(agent)
        .into_iter()
        .find(|&p| p != agent)
        .context("grandchild")?;

    // The agent is on record while it runs: pid, start time, its own group.
    let file = record_of(state.path(), agent).context("no record of the running agent")?;
    let record: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    let (session, start_time) = session_and_start(agent)?;
    assert_eq!(record["pid"], agent, "{record}");
    assert_eq!(record["pgid"], agent, "{record}");
    assert_eq!(record["start"], start_time, "{record}");
    assert_eq!(record["session"], session, "{record}");

    kill(&mut d).await?;
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || !process_alive(agent)).await,
        "the agent outlived its SIGKILLed daemon"
    );
    eprintln!("agent gone {:?} after its daemon", killed.elapsed());

    // What the agent started does not get the signal; the next daemon stops it before serving.
    let restarted = Instant::now();
    let d2 = start(state.path(), "", None).await?;
    eprintln!("restarted daemon listening after {:?}", restarted.elapsed());
    assert!(
        !process_alive(grandchild),
        "the agent's subprocess outlived the restart"
    );
    let lines = leftover_lines(&d2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&agent.to_string()), "{lines:?}");
    assert!(!file.exists(), "the record outlived the cleanup");
    assert_eq!(d2.get("/health").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_leftover_the_death_signal_missed_is_stopped_before_the_next_daemon_serves() -> Result<()>
{
    if !linux() {
        return Ok(());
    }
    let state = tempfile::tempdir()?;
    let mut d = start(
        state.path(),
        "clear-deathsig",
        Some(&agent_with_grandchild()),
    )
    .await?;
    let agent = running_agent(&d, "clear-deathsig").await?;
    assert!(eventually(WAIT, || group_members(agent).len() >= 2).await);
    let group = group_members(agent);
    kill(&mut d).await?;
    // Nothing of the daemon runs any more: the agent and its subprocess live on.
    for p in &group {
        assert!(process_alive(*p), "{p} of {group:?} died with the daemon");
    }

    let restarted = Instant::now();
    let d2 = start(state.path(), "", None).await?;
    let took = restarted.elapsed();
    eprintln!("restarted daemon listening after {took:?}");
    // Stopped before the daemon bound its port: nothing can have been served before.
    let left: Vec<u32> = group
        .iter()
        .copied()
        .filter(|p| process_alive(*p))
        .collect();
    assert!(left.is_empty(), "still running at /health time: {left:?}");
    let lines = leftover_lines(&d2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&agent.to_string()), "{lines:?}");
    assert!(record_of(state.path(), agent).is_none());
    assert_eq!(d2.get("/health").await?.status, 200);
    // Counted: `acpd.child.lifecycle` with `acpd.child.event=leftover`.
    let metrics = d2.http.get(d2.url("/metrics")).send().await?.text().await?;
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("acpd_child_lifecycle") && l.contains("\"leftover\""))
        .collect();
    assert_eq!(counted.len(), 1, "{metrics}");
    assert!(counted[0].ends_with(" 1"), "{counted:?}");
    Ok(())
}

#[tokio::test]
async fn a_record_whose_pid_now_names_another_process_is_not_signalled() -> Result<()> {
    if !linux() {
        return Ok(());
    }
    let state = tempfile::tempdir()?;
    let agents = state.path().join("agents");
    std::fs::create_dir_all(&agents)?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string();
    // Built first: a build after the sleepers started could outlast them.
    acpd_bin();
    let sleeper = || {
        tokio::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    };
    // Two processes on record, as a crashed daemon's agents would be: one as it is, and one
    // whose start time differs (the pid the record names was reused by another process).
    let (mut recorded, mut reused) = (sleeper()?, sleeper()?);
    let write = |pid: u32, start: u64| -> Result<PathBuf> {
        let (session, _) = session_and_start(pid)?;
        let record = json!({
            "pid": pid, "start": start, "pgid": pid, "session": session, "boot": boot,
            // A daemon that is gone (no process started at tick 0).
            "daemon": {"pid": pid, "start": 0}, "program": "sleep",
        });
        let file = agents.join(format!("{pid}-{start}.json"));
        std::fs::write(&file, serde_json::to_vec(&record)?)?;
        Ok(file)
    };
    let recorded_pid = recorded.id().context("pid")?;
    let reused_pid = reused.id().context("pid")?;
    let files = [
        write(recorded_pid, session_and_start(recorded_pid)?.1)?,
        write(reused_pid, session_and_start(reused_pid)?.1 + 1)?,
    ];

    let d = start(state.path(), "", None).await?;
    // The record as it is was acted on (so the other one is well-formed and was read) ...
    let status = tokio::time::timeout(WAIT, recorded.wait())
        .await
        .context("the recorded process was not stopped")??;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");
    // ... and the process whose start time differs was left alone.
    if let Some(status) = reused.try_wait()? {
        bail!("the process that reused a recorded pid was signalled: {status:?}");
    }
    let lines = leftover_lines(&d);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&recorded_pid.to_string()), "{lines:?}");
    for f in &files {
        assert!(!f.exists(), "{} not cleared", f.display());
    }
    assert_eq!(d.get("/health").await?.status, 200);
    Ok(())
}

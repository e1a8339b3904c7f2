//! The session journal end to end: sessions survive a daemon restart (SIGTERM and SIGKILL), a
//! SIGKILL at random instants loses nothing any client received and leaves no agent running
//! (agents that ignore stdin EOF and SIGTERM included), caps and damaged files are
//! clear errors confined to their session, and one daemon owns a state directory.

use acpd_tests::{Daemon, Frame, SessionRef, WAIT, agent_text};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Reads a stream opened with `Last-Event-ID` up to its `replay_complete` (excluded).
async fn replay(d: &Daemon, s: &SessionRef, last: u64, epoch: Option<&str>) -> Result<Vec<Frame>> {
    let mut sse = d.events(s, Some(last), epoch).await?;
    let mut frames = sse.until(WAIT, |f| f.event == "replay_complete").await?;
    frames.pop();
    Ok(frames)
}

fn ids(frames: &[Frame]) -> Vec<u64> {
    frames.iter().filter_map(|f| f.id).collect()
}

async fn prompt_id(d: &Daemon, s: &SessionRef, text: &str) -> Result<String> {
    let r = d.prompt(s, text).await?;
    ensure!(r.status == 202, "prompt -> {}: {}", r.status, r.body);
    Ok(r.body["promptId"].as_str().context("promptId")?.to_string())
}

/// A turn on `s`, watched from a stream opened after `last`: its frames.
async fn turn(d: &Daemon, s: &SessionRef, text: &str) -> Result<Vec<Frame>> {
    let status = d.get(&format!("/session/{}", s.id)).await?;
    let last = status.body["lastEventId"].as_u64().unwrap_or(0);
    let mut sse = d.events(s, Some(last), None).await?;
    sse.until(WAIT, |f| f.event == "replay_complete").await?;
    let p = prompt_id(d, s, text).await?;
    sse.until_turn_end(&p).await
}

async fn workspace_sessions(d: &Daemon) -> Result<Vec<Value>> {
    let ws = d.get("/capabilities").await?.body["workspaces"][0]["id"]
        .as_str()
        .context("workspace id")?
        .to_string();
    let r = d.get(&format!("/workspace/{ws}/sessions")).await?;
    ensure!(r.status == 200, "{}", r.body);
    Ok(r.body["sessions"].as_array().cloned().unwrap_or_default())
}

fn journal_file(d: &Daemon, session: &str) -> std::path::PathBuf {
    d.state_dir()
        .join("journal")
        .join(acpd::journal::file_name(session))
}

#[tokio::test]
async fn sessions_survive_sigterm_and_sigkill() -> Result<()> {
    for kill in [false, true] {
        let how = if kill { "SIGKILL" } else { "SIGTERM" };
        let mut d = Daemon::start().await?;
        let a = d.create_session().await?;
        let b = d.create_session().await?;
        let r = d
            .send(
                d.http
                    .patch(d.url(&format!("/session/{}/metadata", a.id)))
                    .header("X-Qwen-Client-Id", &a.client_id)
                    .json(&json!({"displayName": "survivor"})),
            )
            .await?;
        ensure!(r.status == 200, "metadata: {}", r.body);
        let seen = turn(&d, &a, "before the restart").await?;
        ensure!(agent_text(&seen).contains("before the restart"));
        turn(&d, &b, "the other one").await?;
        let status = d.get(&format!("/session/{}", a.id)).await?.body;
        let epoch = status["eventEpoch"].as_str().context("epoch")?.to_string();
        let last = status["lastEventId"].as_u64().context("lastEventId")?;
        let before = replay(&d, &a, 0, Some(&epoch)).await?;
        ensure!(ids(&before) == (1..=last).collect::<Vec<_>>());

        if kill {
            d.kill().await?;
        } else {
            d.terminate(Duration::from_secs(20)).await?;
        }
        let d = d.restart().await?;

        let listed = workspace_sessions(&d).await?;
        for s in [&a, &b] {
            let entry = listed
                .iter()
                .find(|e| e["sessionId"] == s.id.as_str())
                .with_context(|| format!("{how}: {} not listed in {listed:?}", s.id))?;
            ensure!(entry["state"] == "dormant", "{how}: {entry}");
        }
        let status = d.get(&format!("/session/{}", a.id)).await?.body;
        ensure!(
            status["eventEpoch"] == epoch.as_str(),
            "{how}: epoch kept: {status}"
        );
        ensure!(status["child"].is_null(), "{how}: no child until loaded");
        let last_now = status["lastEventId"].as_u64().context("lastEventId")?;
        // SIGTERM journals each live session's `session_died`; SIGKILL nothing more.
        ensure!(
            last_now == last + u64::from(!kill),
            "{how}: {last} -> {last_now}"
        );

        // The old Last-Event-ID and epoch replay what followed, with the frames as sent.
        let from = last / 2;
        let after = replay(&d, &a, from, Some(&epoch)).await?;
        ensure!(
            after.iter().all(|f| f.event != "state_resync_required"),
            "{how}"
        );
        ensure!(
            ids(&after) == (from + 1..=last_now).collect::<Vec<_>>(),
            "{how}: {:?}",
            ids(&after)
        );
        for (old, new) in before
            .iter()
            .zip(replay(&d, &a, 0, Some(&epoch)).await?.iter())
        {
            ensure!(
                old.id == new.id && old.data == new.data,
                "{how}: frame {:?} changed",
                old.id
            );
        }

        // Transcript and export of a session that is not live.
        let t = d.get(&format!("/session/{}/transcript", a.id)).await?;
        ensure!(
            t.status == 200 && t.body["partial"].is_null(),
            "{how}: {}",
            t.body
        );
        ensure!(
            t.body.to_string().contains("before the restart"),
            "{how}: {}",
            t.body
        );
        let md = d
            .http
            .get(d.url(&format!("/session/{}/export?format=md", a.id)))
            .send()
            .await?
            .text()
            .await?;
        ensure!(
            md.starts_with("# survivor") && md.contains("before the restart"),
            "{how}: {md}"
        );

        // The client keeps its id; load restores the session on a new child; ids go on.
        let r = d
            .post_as(&a, &format!("/session/{}/load", a.id), json!({}))
            .await?;
        ensure!(r.status == 200, "{how}: load: {}", r.body);
        ensure!(r.body["eventEpoch"] == epoch.as_str() && r.body["lastEventId"] == last_now);
        let a2 = SessionRef {
            id: a.id.clone(),
            client_id: a.client_id.clone(),
        };
        let next = turn(&d, &a2, "after the restart").await?;
        ensure!(agent_text(&next).contains("after the restart"), "{how}");
        ensure!(
            next.first().and_then(|f| f.id) == Some(last_now + 1),
            "{how}: {:?}",
            ids(&next)
        );
        // The other session restores on its first prompt (resume for it would do the same).
        let r = d
            .post(&format!("/session/{}/resume", b.id), json!({}))
            .await?;
        ensure!(
            r.status == 200 && r.body["eventEpoch"].is_string(),
            "{how}: resume: {}",
            r.body
        );
        turn(&d, &b, "b again").await?;
    }
    Ok(())
}

/// A small deterministic generator (xorshift64*): the kill instants are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `/proc/<pid>/stat` after the command name: state, ppid, ..., start time (field 22).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The daemon's child processes (the agents), as (pid, start time) so a reused pid is not
/// mistaken for one of them.
fn children_of(parent: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let f = stat_fields(pid)?;
            (f.get(1)?.parse::<u32>().ok()? == parent && f[0] != "Z")
                .then(|| Some((pid, f.get(19)?.parse().ok()?)))?
        })
        .collect()
}

/// Still running (a zombie nobody reaped counts as gone).
fn alive((pid, start): (u32, u64)) -> bool {
    stat_fields(pid).is_some_and(|f| {
        f[0] != "Z" && f.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start)
    })
}

const TRANSCRIPT_TYPES: &[&str] = &[
    "session_update",
    "permission_request",
    "permission_resolved",
    "turn_complete",
    "turn_error",
    "prompt_cancelled",
    "session_died",
];

#[tokio::test]
async fn sigkill_at_random_instants_loses_nothing_a_client_received() -> Result<()> {
    const SESSIONS: usize = 8;
    const ROUNDS: usize = 3;
    let mut rng = Rng(0x5eed_acbd_2026_1203);
    // One agent per session, each ignoring stdin EOF and SIGTERM (only SIGKILL stops it), so
    // nothing but the parent-death signal and the next daemon's leftover sweep can end them.
    let mut d = Daemon::builder()
        .config("[agent]\nscope = \"session\"\n\n[agent.env]\nACPD_DEMO_FAULT = \"ignore-term\"\n")
        .start()
        .await?;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(d.create_session().await?);
    }
    // Every frame any client received, by session and id, across every run.
    let mut received: Vec<BTreeMap<u64, Value>> = vec![BTreeMap::new(); SESSIONS];
    let mut epochs: Vec<Option<String>> = vec![None; SESSIONS];
    for round in 0..ROUNDS {
        // Readers: one stream per session from the last id it holds, recording until the kill.
        let mut readers = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            let last = received[i].keys().next_back().copied().unwrap_or(0);
            let mut sse = d.events(s, Some(last), epochs[i].as_deref()).await?;
            let epoch = sse
                .headers
                .get("x-qwen-event-epoch")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(e) = &epochs[i] {
                ensure!(
                    epoch.as_deref() == Some(e.as_str()),
                    "round {round}: epoch changed"
                );
            }
            epochs[i] = epoch;
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(Some(f)) = sse.next_within(Duration::from_secs(30)).await {
                    if let Some(id) = f.id {
                        got.push((id, f.data));
                    }
                }
                got
            }));
        }
        // Every session prompts (slow turns stream for a while); the kill lands mid-stream.
        for (i, s) in sessions.iter().enumerate() {
            let text = match (i + round) % 3 {
                0 => "slow 40 15".to_string(),
                1 => format!("round {round} session {i} hello"),
                _ => "flood 30 300".to_string(),
            };
            prompt_id(&d, s, &text).await?;
            prompt_id(&d, s, "slow 30 10").await?;
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(700))).await;
        let agents = children_of(d.pid());
        ensure!(
            !agents.is_empty(),
            "round {round}: no agent process found under the daemon"
        );
        d.kill().await?;
        for (i, r) in readers.into_iter().enumerate() {
            for (id, data) in r.await? {
                if let Some(old) = received[i].insert(id, data.clone()) {
                    ensure!(old == data, "round {round}: session {i} id {id} was reused");
                }
            }
        }
        d = d.restart().await?;
        let survivors: Vec<_> = agents.iter().filter(|a| alive(**a)).collect();
        ensure!(
            survivors.is_empty(),
            "round {round}: agents from before the kill still run: {survivors:?}"
        );
        ensure!(
            !d.log()
                .iter()
                .any(|l| l.contains("journal:") && l.contains("ERROR")),
            "round {round}: journal errors at start-up: {:?}",
            d.log()
        );
        for (i, s) in sessions.iter().enumerate() {
            let all = replay(&d, s, 0, epochs[i].as_deref()).await?;
            ensure!(
                all.iter().all(|f| f.event != "state_resync_required"),
                "round {round}: session {i} asked to resync"
            );
            let got: BTreeMap<u64, Value> = all
                .into_iter()
                .filter_map(|f| Some((f.id?, f.data)))
                .collect();
            let last = got.keys().next_back().copied().unwrap_or(0);
            ensure!(
                got.keys().copied().eq(1..=last),
                "round {round}: session {i}: ids not contiguous"
            );
            for (id, data) in &received[i] {
                ensure!(
                    got.get(id) == Some(data),
                    "round {round}: session {i}: event {id} received before the kill is not replayed as sent"
                );
            }
            // The transcript has every transcript event a client received.
            let mut records = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let q = cursor
                    .as_ref()
                    .map_or("?limit=500".to_string(), |c| format!("?cursor={c}"));
                let t = d.get(&format!("/session/{}/transcript{q}", s.id)).await?;
                ensure!(t.status == 200, "{}", t.body);
                records.extend(t.body["events"].as_array().cloned().unwrap_or_default());
                match t.body["nextCursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            let in_transcript: std::collections::HashSet<u64> = records
                .iter()
                .filter_map(|r| r["_meta"]["recordId"].as_str()?.parse().ok())
                .collect();
            for (id, data) in &received[i] {
                if TRANSCRIPT_TYPES.contains(&data["type"].as_str().unwrap_or("")) {
                    ensure!(
                        in_transcript.contains(id),
                        "round {round}: session {i}: event {id} missing from the transcript"
                    );
                }
            }
            received[i] = got;
        }
    }
    // After the last kill every session loads and completes a new turn.
    for s in &sessions {
        let r = d
            .post_as(s, &format!("/session/{}/load", s.id), json!({}))
            .await?;
        ensure!(r.status == 200, "load: {}", r.body);
        let frames = turn(&d, s, "the end").await?;
        ensure!(agent_text(&frames).contains("the end"));
    }
    let total: usize = received.iter().map(BTreeMap::len).sum();
    eprintln!("crash safety: {ROUNDS} kills, {total} events checked over {SESSIONS} sessions");
    Ok(())
}

#[tokio::test]
async fn a_damaged_journal_is_a_clear_error_for_its_session_only() -> Result<()> {
    let mut d = Daemon::start().await?;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let s = d.create_session().await?;
        turn(
            &d,
            &s,
            &format!("session {i} speaks at length about its journal"),
        )
        .await?;
        turn(&d, &s, "slow 10 5").await?;
        sessions.push(s);
    }
    let status = |s: &SessionRef| format!("/session/{}", s.id);
    let mut before = Vec::new();
    for s in &sessions {
        before.push(d.get(&status(s)).await?.body);
    }
    d.terminate(Duration::from_secs(20)).await?;
    // Session 0: the file cut inside a record; session 1: bytes flipped in the middle.
    let cut = journal_file(&d, &sessions[0].id);
    let len = std::fs::metadata(&cut)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)?
        .set_len(len - 7)?;
    let flipped = journal_file(&d, &sessions[1].id);
    let mut bytes = std::fs::read(&flipped)?;
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&flipped, &bytes)?;

    let d = d.restart().await?;
    let log = d.log().join("\n");
    for (i, why) in [(0, "incomplete record"), (1, "checksum mismatch")] {
        let id = &sessions[i].id;
        ensure!(
            d.log()
                .iter()
                .any(|l| l.contains("ERROR") && l.contains(id.as_str()) && l.contains(why)),
            "no clear error for session {i} ({why}): {log}"
        );
        let st = d.get(&status(&sessions[i])).await?.body;
        ensure!(st["state"] == "dormant", "{st}");
        ensure!(
            st["eventEpoch"] != before[i]["eventEpoch"],
            "session {i}: the epoch must change"
        );
        ensure!(
            st["journal"]["lost"]
                .as_str()
                .is_some_and(|l| l.contains(why)),
            "{st}"
        );
        // A client holding the old epoch is told to resync, then gets what is left.
        let old_epoch = before[i]["eventEpoch"].as_str().unwrap_or_default();
        let frames = replay(&d, &sessions[i], 3, Some(old_epoch)).await?;
        ensure!(
            frames
                .first()
                .is_some_and(|f| f.event == "state_resync_required")
        );
        let t = d.get(&format!("/session/{}/transcript", id)).await?;
        ensure!(
            t.body["partial"] == true
                && t.body["replayError"]
                    .as_str()
                    .is_some_and(|e| e.contains(why)),
            "{}",
            t.body
        );
        // It still loads and serves a new turn, its ids above every earlier one.
        let r = d
            .post_as(&sessions[i], &format!("/session/{id}/load"), json!({}))
            .await?;
        ensure!(r.status == 200, "{}", r.body);
        let frames = turn(&d, &sessions[i], "still here").await?;
        ensure!(agent_text(&frames).contains("still here"));
    }
    // The untouched session is exactly as it was.
    let st = d.get(&status(&sessions[2])).await?.body;
    ensure!(
        st["eventEpoch"] == before[2]["eventEpoch"] && st["journal"]["lost"].is_null(),
        "{st}"
    );
    let last = before[2]["lastEventId"].as_u64().context("last")?;
    let frames = replay(&d, &sessions[2], 0, before[2]["eventEpoch"].as_str()).await?;
    ensure!(ids(&frames)[..last as usize] == (1..=last).collect::<Vec<_>>()[..]);
    ensure!(frames.iter().all(|f| f.event != "state_resync_required"));
    Ok(())
}

/// A flood past a journal bound (`reason`: `total_cap`, `io_error`): live clients still get every
/// event, the drop is one clear ERROR and counted in `acpd.journal.dropped`, the daemon goes on
/// serving new sessions, and the flooded session says it is sealed. Returns the flooded session.
async fn flood_past_a_bound(d: &Daemon, flood: &str, reason: &str) -> Result<SessionRef> {
    let s = d.create_session().await?;
    let frames = turn(d, &s, flood).await?;
    ensure!(
        frames.last().is_some_and(|f| f.event == "turn_complete"),
        "live clients get every event"
    );
    ensure!(
        d.log()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("not journaled") && l.contains(reason)),
        "no clear error: {:?}",
        d.log()
    );
    let metrics = d.http.get(d.url("/metrics")).send().await?.text().await?;
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("acpd_journal_dropped_total") && l.contains(reason))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .with_context(|| format!("no drop counter in {metrics}"))?;
    ensure!(dropped > 0);
    ensure!(d.get("/health").await?.status == 200);
    let other = d.create_session().await?;
    ensure!(agent_text(&turn(d, &other, "still serving").await?).contains("still serving"));
    let st = d.get(&format!("/session/{}", s.id)).await?.body;
    ensure!(st["journal"]["sealed"] == reason, "{st}");
    Ok(s)
}

#[tokio::test]
async fn the_total_cap_is_a_counted_drop_not_a_crash() -> Result<()> {
    let mut d = Daemon::builder()
        .config("[state]\njournal_max_total_bytes = 65536\njournal_max_session_bytes = 1048576\n")
        .start()
        .await?;
    // ~120 KiB of events: past the 64 KiB cap.
    let s = flood_past_a_bound(&d, "flood 120 1024", "total_cap").await?;
    let st = d.get(&format!("/session/{}", s.id)).await?.body;
    let last = st["lastEventId"].as_u64().context("last")?;
    let epoch = st["eventEpoch"].as_str().context("epoch")?.to_string();
    // After a restart the session has a new epoch: ids past what was journaled are not reused
    // under the one clients hold.
    d.terminate(Duration::from_secs(20)).await?;
    let d = d.restart().await?;
    let st = d.get(&format!("/session/{}", s.id)).await?.body;
    ensure!(st["eventEpoch"] != epoch.as_str(), "{st}");
    let frames = replay(&d, &s, last, Some(&epoch)).await?;
    ensure!(
        frames
            .first()
            .is_some_and(|f| f.event == "state_resync_required")
    );
    Ok(())
}

#[tokio::test]
async fn an_agent_without_load_session_is_a_clear_error() -> Result<()> {
    let mut d = Daemon::builder()
        .config("[agent.env]\nACPD_DEMO_FAULT = \"no-load\"\n")
        .start()
        .await?;
    let s = d.create_session().await?;
    turn(&d, &s, "remember me").await?;
    d.kill().await?;
    let d = d.restart().await?;
    let r = d
        .post(&format!("/session/{}/load", s.id), json!({}))
        .await?;
    ensure!(
        r.status == 410 && r.body["code"] == "session_not_restorable",
        "{}",
        r.body
    );
    let r = d
        .post(&format!("/session/{}/resume", s.id), json!({}))
        .await?;
    ensure!(
        r.status == 410 && r.body["code"] == "session_not_restorable",
        "{}",
        r.body
    );
    // Its history is still there.
    let t = d.get(&format!("/session/{}/transcript", s.id)).await?;
    ensure!(t.body.to_string().contains("remember me"), "{}", t.body);
    Ok(())
}

#[tokio::test]
async fn one_daemon_per_state_directory() -> Result<()> {
    let d = Daemon::start().await?;
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(acpd_tests::acpd_bin())
            .args(["serve", "--port", "0", "--state-dir"])
            .arg(d.state_dir())
            .arg("--workspace")
            .arg(&d.ws_path)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let err = String::from_utf8(out.stderr)?;
    ensure!(
        out.status.code() == Some(2),
        "exit {:?}: {err}",
        out.status.code()
    );
    ensure!(err.trim().lines().count() == 1, "one line: {err}");
    ensure!(
        err.contains("in use by another acpd") && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
    Ok(())
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// None (with the reason) where this process cannot mount one (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_counted_drop_not_a_crash() -> Result<()> {
    let fs = match Tmpfs::mount("256k") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs for a full disk: {why}");
            return Ok(());
        }
    };
    let state = fs.0.path().join("state");
    let mut d = Daemon::builder()
        .args(&["--state-dir", state.to_str().context("path")?])
        .start()
        .await?;
    // ~400 KiB of events on a 256 KiB filesystem; a session created on the full disk still
    // serves (unjournaled, counted).
    flood_past_a_bound(&d, "flood 400 1024", "io_error").await?;
    d.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test]
async fn a_live_session_replays_past_its_ring_from_the_journal() -> Result<()> {
    // The ring bounded by its count, and by its journaled byte bound (nothing in memory).
    for limits in ["event_ring = 4", "journaled_event_ring_bytes = 0"] {
        replays_past_the_ring(limits)
            .await
            .with_context(|| limits.to_string())?;
    }
    Ok(())
}

async fn replays_past_the_ring(limits: &str) -> Result<()> {
    let d = Daemon::builder()
        .config(&format!("[limits]\n{limits}\n"))
        .start()
        .await?;
    let s = d.create_session().await?;
    let frames = turn(&d, &s, "a turn with more events than the ring holds").await?;
    let st = d.get(&format!("/session/{}", s.id)).await?.body;
    let last = st["lastEventId"].as_u64().context("last")?;
    ensure!(last > 8, "{last} events");
    let epoch = st["eventEpoch"].as_str().context("epoch")?;
    let all = replay(&d, &s, 0, Some(epoch)).await?;
    ensure!(all.iter().all(|f| f.event != "state_resync_required"));
    ensure!(
        ids(&all) == (1..=last).collect::<Vec<_>>(),
        "{:?}",
        ids(&all)
    );
    for f in &frames {
        ensure!(all.iter().any(|a| a.id == f.id && a.data == f.data));
    }
    let t = d.get(&format!("/session/{}/transcript", s.id)).await?;
    ensure!(
        t.body["partial"].is_null(),
        "the journal holds it all: {}",
        t.body
    );
    Ok(())
}

#[tokio::test]
async fn waking_a_dormant_session_counts_against_the_session_limit() -> Result<()> {
    let mut d = Daemon::builder()
        .args(&["--max-sessions", "1"])
        .start()
        .await?;
    let a = d.create_session().await?;
    turn(&d, &a, "before the restart").await?;
    d.kill().await?;
    let d = d.restart().await?;
    // The dormant session holds no agent, so a new one fits under the limit...
    let b = d.create_session().await?;
    // ...and then waking the dormant one would exceed it: a prompt is refused before it is
    // queued, like a load.
    let r = d.prompt(&a, "wake up").await?;
    ensure!(
        r.status == 503 && r.body["code"] == "session_limit_exceeded",
        "prompt to a dormant session over the limit -> {}: {}",
        r.status,
        r.body
    );
    let r = d
        .post_as(
            &a,
            &format!("/session/{}/model", a.id),
            json!({"modelId": "demo-fast"}),
        )
        .await?;
    ensure!(
        r.status == 503 && r.body["code"] == "session_limit_exceeded",
        "model switch on a dormant session over the limit -> {}: {}",
        r.status,
        r.body
    );
    // With the place free again, the same prompt wakes it and the turn completes.
    let r = d.delete(&format!("/session/{}", b.id)).await?;
    ensure!(r.status == 204, "DELETE -> {}", r.status);
    let frames = turn(&d, &a, "wake up").await?;
    ensure!(
        agent_text(&frames).contains("wake up"),
        "the woken session answered: {frames:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_workspace_default_session_stays_the_default_across_a_restart() -> Result<()> {
    let mut d = Daemon::start().await?;
    // `single` scope (the default): every such client shares the workspace's default session.
    let a = d.create_session_with(json!({})).await?;
    turn(&d, &a, "first life").await?;
    d.kill().await?;
    let d = d.restart().await?;
    let r = d.post("/session", json!({})).await?;
    ensure!(
        r.status == 200 && r.body["sessionId"] == a.id.as_str() && r.body["attached"] == true,
        "a single-scope POST /session after the restart attaches to the earlier default: {}",
        r.body
    );
    let again = acpd_tests::SessionRef {
        id: a.id.clone(),
        client_id: r.body["clientId"].as_str().context("clientId")?.to_string(),
    };
    let frames = turn(&d, &again, "second life").await?;
    ensure!(agent_text(&frames).contains("second life"), "{frames:?}");
    // A thread-scope session never becomes the default.
    let t = d.create_session().await?;
    ensure!(t.id != a.id);
    Ok(())
}

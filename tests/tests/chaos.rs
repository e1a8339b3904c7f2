//! Chaos under load: 32 sessions prompt continuously while their agent children are SIGKILLed
//! at random. Every accepted prompt ends with exactly one `turn_complete` or `turn_error`, SSE
//! ids stay gapless per session, the daemon's memory stays bounded, and every session works
//! again afterwards. `ACPD_CHAOS_SECS` sets the length (default 5 s; longer runs by hand).

use acpd_tests::*;
use anyhow::{Context, Result, bail, ensure};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SESSIONS: usize = 32;
/// How a turn cut short by a SIGKILL may end: the agent exited mid-turn, or the session could
/// not get a live agent (the restart was killed too).
const KILLED_CODES: [&str; 2] = ["agent_exited", "agent_unavailable"];

#[derive(Default, Debug)]
struct Tally {
    accepted: AtomicU64,
    completed: AtomicU64,
    errored: AtomicU64,
    refused: AtomicU64,
}

/// One session's client: prompts back to back until `stop`, checking every frame.
async fn client(
    d: Arc<Daemon>,
    s: SessionRef,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Result<()> {
    let mut sse = d.events(&s, None, None).await?;
    let mut last_id = 0u64;
    let mut ends: HashMap<String, u32> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let r = d.prompt(&s, "slow 3 10").await?;
        if r.status != 202 {
            // Refused while the child restarts: allowed, and nothing was accepted.
            tally.refused.fetch_add(1, Ordering::Relaxed);
            ensure!(
                r.body["code"].is_string(),
                "refusal without a code: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        tally.accepted.fetch_add(1, Ordering::Relaxed);
        let id = r.body["promptId"].as_str().context("promptId")?.to_string();
        loop {
            let f = sse
                .next_within(Duration::from_secs(30))
                .await?
                .context("SSE stream ended")?;
            ensure!(f.event != "client_evicted", "evicted");
            if let Some(n) = f.id {
                ensure!(n == last_id + 1, "{}: SSE id gap {last_id} -> {n}", s.id);
                last_id = n;
            }
            if f.event == "turn_complete" || f.event == "turn_error" {
                let pid = f.data["data"]["promptId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let seen = ends.entry(pid.clone()).or_default();
                *seen += 1;
                ensure!(*seen == 1, "prompt {pid} ended twice");
                ensure!(pid == id, "an end for {pid} while {id} runs");
                if f.event == "turn_complete" {
                    tally.completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    // A killed agent is reported as such (retryable), never as its own error.
                    let code = f.data["data"]["code"].as_str().unwrap_or_default();
                    ensure!(
                        KILLED_CODES.contains(&code),
                        "a turn ended by a kill reported {code}: {}",
                        f.data
                    );
                    tally.errored.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
    // Usable again once the chaos is over. A kill from the last moments can still surface as
    // the next turn's `agent_exited`; then the turn after it must work.
    let mut frames = Vec::new();
    for attempt in 0..2 {
        let r = d.prompt(&s, "hello after chaos").await?;
        ensure!(r.status == 202, "after chaos: {}: {}", r.status, r.body);
        let id = r.body["promptId"].as_str().context("promptId")?.to_string();
        let got = sse.until_turn_end(&id).await?;
        let end = got.last().context("no frames")?;
        let late_kill = end.event == "turn_error" && end.data["data"]["code"] == "agent_exited";
        frames.extend(got.iter().cloned());
        if end.event == "turn_complete" {
            break;
        }
        ensure!(
            late_kill && attempt == 0,
            "after chaos: {} {}",
            end.event,
            end.data
        );
    }
    ensure!(
        frames.last().is_some_and(|f| f.event == "turn_complete"),
        "after chaos: {:?}",
        kinds(&frames)
    );
    for f in &frames {
        if let Some(n) = f.id {
            ensure!(n == last_id + 1, "{}: SSE id gap {last_id} -> {n}", s.id);
            last_id = n;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_under_load_lose_no_turn_and_leave_every_session_usable() -> Result<()> {
    let secs: u64 = std::env::var("ACPD_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let d = Arc::new(
        Daemon::builder()
            .config(
                "[agent]\nscope = \"session\"\nrestart_backoff_max_ms = 200\n\n\
                 [limits]\nmax_sessions = 64\nmax_sessions_per_workspace = 64\n",
            )
            .start()
            .await?,
    );
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(d.create_session().await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|s| tokio::spawn(client(d.clone(), s, stop.clone(), tally.clone())))
        .collect();

    let started = Instant::now();
    let mut kills = 0u32;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut peak_rss = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let s = &sessions[(seed % SESSIONS as u64) as usize];
        let r = d.get(&format!("/session/{}", s.id)).await?;
        if let Some(pid) = r.body["child"]["pid"].as_u64()
            && signal(pid as u32, nix::sys::signal::Signal::SIGKILL).is_ok()
        {
            kills += 1;
        }
        peak_rss = peak_rss.max(acpd_tests::load::rss_kib(d.pid())?);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(120), c).await???;
    }
    eprintln!(
        "{secs} s: {kills} SIGKILLs, {:?}, daemon peak RSS {} MiB",
        tally,
        peak_rss / 1024
    );
    if kills == 0 {
        bail!("no child was killed");
    }
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let ended = tally.completed.load(Ordering::Relaxed) + tally.errored.load(Ordering::Relaxed);
    assert_eq!(accepted, ended, "every accepted prompt ended exactly once");
    assert!(
        tally.errored.load(Ordering::Relaxed) > 0,
        "the kills hit running turns"
    );
    assert!(peak_rss < 256 * 1024, "daemon RSS peaked at {peak_rss} KiB");
    assert_eq!(d.get("/health").await?.status, 200);
    Ok(())
}

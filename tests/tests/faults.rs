//! Agents that misbehave (the demo agent's `ACPD_DEMO_FAULT` modes and delays, over the same
//! ACP pipes as always): each ends in a clear client-visible error within its deadline, and no
//! agent process outlives what it was for.

use acpd_tests::*;
use anyhow::{Result, bail};
use serde_json::json;
use std::time::{Duration, Instant};

/// Tight agent deadlines, plus the agent's environment (`KEY = "value"` lines).
fn config(agent_env: &str) -> String {
    format!(
        "[agent]\ninit_timeout_ms = 500\nsession_timeout_ms = 500\nturn_timeout_secs = 1\n\
         cancel_grace_ms = 300\nstop_grace_ms = 300\n\n[agent.env]\n{agent_env}\n"
    )
}

/// A daemon whose demo agent gets `agent_env` (`config`), a session on it and the session's
/// event stream.
async fn session_with(agent_env: &str) -> Result<(Daemon, SessionRef, Sse)> {
    let d = Daemon::builder().config(&config(agent_env)).start().await?;
    let s = d.create_session().await?;
    let sse = d.events(&s, None, None).await?;
    Ok((d, s, sse))
}

/// Waits (bounded) until `done` holds; /proc has no event to await.
async fn eventually(what: &str, within: Duration, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `POST /session` against a misbehaving agent: 503 `agent_unavailable` (retryable, with
/// `Retry-After`) within `within`; then (when `stopped`) the agent is gone, the daemon's memory is bounded and it
/// still serves.
async fn session_refused_in_time(config: &str, within: Duration, stopped: bool) -> Result<Daemon> {
    let d = Daemon::builder().config(config).start().await?;
    let started = Instant::now();
    let r = d
        .post("/session", json!({"sessionScope": "thread"}))
        .await?;
    let took = started.elapsed();
    eprintln!("{} {} after {took:?}", r.status, r.body["code"]);
    // Whatever the agent did, the client sees one retryable answer: no agent for now.
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["code"], "agent_unavailable", "{}", r.body);
    assert_eq!(r.body["retryable"], true, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    assert!(took < within, "took {took:?}");
    if stopped {
        let rss = acpd_tests::load::rss_kib(d.pid())?;
        assert!(rss < 200 * 1024, "daemon RSS {rss} KiB");
        eventually("the agent is stopped", WAIT, || {
            children_of(d.pid()).is_empty()
        })
        .await?;
        assert_eq!(d.get("/health").await?.status, 200);
    }
    Ok(d)
}

#[tokio::test]
async fn an_agent_that_hangs_in_initialize_is_refused_in_time_and_stopped() -> Result<()> {
    let config = config("ACPD_DEMO_INIT_DELAY_MS = \"600000\"");
    session_refused_in_time(&config, Duration::from_secs(5), true).await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_that_never_answers_session_new_fails_the_request_in_time() -> Result<()> {
    let config = config("ACPD_DEMO_FAULT = \"silent-new\"");
    let mut d = session_refused_in_time(&config, Duration::from_secs(5), false).await?;
    let children = children_of(d.pid());
    let status = d.terminate(Duration::from_secs(10)).await?;
    assert!(status.success(), "{status:?}");
    for c in children {
        assert_eq!(
            group_members(c),
            Vec::<u32>::new(),
            "agent group {c} outlived the daemon"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_turn_that_never_finishes_ends_at_the_turn_deadline() -> Result<()> {
    let (d, s, mut sse) = session_with("").await?;
    let started = Instant::now();
    let (_, frames) = d.turn(&s, &mut sse, "slow 100000 1000").await?;
    let took = started.elapsed();
    let end = frames.last().unwrap();
    eprintln!("{} {} after {took:?}", end.event, end.data["data"]);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        end.event == "turn_error" || end.data["data"]["stopReason"] == "cancelled",
        "{}: {}",
        end.event,
        end.data
    );
    // The session is usable again.
    let (_, frames) = d.turn(&s, &mut sse, "hello again").await?;
    assert_eq!(frames.last().unwrap().event, "turn_complete");
    Ok(())
}

/// A turn the daemon stops waiting for (its deadline passed) is withdrawn from an agent that
/// ignores `session/cancel`: `$/cancel_request` for its `session/prompt` ends it.
#[tokio::test]
async fn a_turn_past_its_deadline_is_withdrawn_with_cancel_request() -> Result<()> {
    let (d, s, mut sse) = session_with("ACPD_DEMO_FAULT = \"deaf-cancel\"").await?;
    let (_, frames) = d.turn(&s, &mut sse, "slow 100000 1000").await?;
    let end = frames.last().unwrap();
    assert_eq!(end.event, "turn_error", "{}", end.data);
    assert_eq!(end.data["data"]["code"], "turn_timeout", "{}", end.data);
    logged(&d, "turn ended by $/cancel_request").await
}

#[tokio::test]
async fn an_agent_that_closes_stdout_but_keeps_running_is_stopped() -> Result<()> {
    // Seen as soon as the pipe closes, not at the 15 s session deadline.
    let config = config("ACPD_DEMO_FAULT = \"close-stdout\"")
        .replace("session_timeout_ms = 500", "session_timeout_ms = 15000");
    session_refused_in_time(&config, Duration::from_secs(5), true).await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_that_ignores_sigterm_is_killed_at_shutdown() -> Result<()> {
    let (mut d, s, mut sse) = session_with("ACPD_DEMO_FAULT = \"ignore-term\"").await?;
    let (_, frames) = d.turn(&s, &mut sse, "env ACPD_DEMO_FAULT").await?;
    assert_eq!(agent_text(&frames), "env ACPD_DEMO_FAULT=ignore-term");
    let child = d.child_pid(&s).await?;
    let started = Instant::now();
    let status = d.terminate(Duration::from_secs(10)).await?;
    eprintln!("daemon exited {status:?} after {:?}", started.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        group_members(child),
        Vec::<u32>::new(),
        "the agent outlived the daemon"
    );
    Ok(())
}

#[tokio::test]
async fn an_agent_that_writes_a_line_without_end_is_cut_off_at_the_line_bound() -> Result<()> {
    // Cut off at 1 MiB, not at the 15 s session deadline, with the daemon's memory bounded.
    let config = config("ACPD_DEMO_FAULT = \"huge-line\"")
        .replace("session_timeout_ms = 500", "session_timeout_ms = 15000")
        .replace("[agent]\n", "[agent]\nmax_line_bytes = 1048576\n");
    session_refused_in_time(&config, Duration::from_secs(5), true).await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_that_writes_only_garbage_is_refused_in_time_and_stopped() -> Result<()> {
    let config = config("ACPD_DEMO_FAULT = \"garbage\"");
    session_refused_in_time(&config, Duration::from_secs(5), true).await?;
    Ok(())
}

/// SIGTERM while 8 sessions are prompting: the daemon exits in bounded time with status 0,
/// every turn that completed before it has its spans at the collector (flushed, not lost), and
/// no agent process is left.
#[tokio::test]
async fn sigterm_under_load_exits_in_time_flushes_telemetry_and_leaves_no_agent() -> Result<()> {
    use acpd_tests::otlp::{Protocol, Receiver};
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let mut d = Daemon::builder()
        .config("[agent]\nscope = \"session\"\nstop_grace_ms = 300\n\n[limits]\nshutdown_timeout_secs = 3\n")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .start()
        .await?;
    let d_ref = &d;
    let mut sessions = Vec::new();
    for _ in 0..8 {
        let s = d_ref.create_session().await?;
        let sse = d_ref.events(&s, None, None).await?;
        let child = d_ref.child_pid(&s).await?;
        sessions.push((s, sse, child));
    }
    // Each session keeps one short turn in flight; collect the ids of completed turns.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut loops = Vec::new();
    let children: Vec<u32> = sessions.iter().map(|(_, _, c)| *c).collect();
    for (s, mut sse, _) in sessions {
        let (http, url, done_tx) = (
            d_ref.http.clone(),
            d_ref.url(&format!("/session/{}/prompt", s.id)),
            done_tx.clone(),
        );
        loops.push(tokio::spawn(async move {
            loop {
                let Ok(r) = http
                    .post(&url)
                    .header("X-Qwen-Client-Id", &s.client_id)
                    .json(&json!({"prompt": [{"type": "text", "text": "slow 3 20"}]}))
                    .send()
                    .await
                else {
                    return;
                };
                if r.status() != 202 {
                    return; // draining or gone
                }
                let Ok(body) = r.json::<serde_json::Value>().await else {
                    return;
                };
                let id = body["promptId"].as_str().unwrap_or_default().to_string();
                match sse.until_turn_end(&id).await {
                    Ok(frames) if frames.last().is_some_and(|f| f.event == "turn_complete") => {
                        let _ = done_tx.send(id);
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(done_tx);
    let mut completed = Vec::new();
    while completed.len() < 24 {
        let id = tokio::time::timeout(WAIT, done_rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the prompt loops stopped early"))?;
        completed.push(id);
    }
    let started = Instant::now();
    let status = d.terminate(Duration::from_secs(15)).await?;
    let took = started.elapsed();
    eprintln!(
        "daemon exited {status:?} after {took:?} with {} turns done",
        completed.len()
    );
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for l in loops {
        tokio::time::timeout(WAIT, l).await??;
    }
    while let Ok(id) = done_rx.try_recv() {
        completed.push(id);
    }
    for c in &children {
        assert_eq!(
            group_members(*c),
            Vec::<u32>::new(),
            "agent group {c} outlived the daemon"
        );
    }
    // Flushed at exit: the daemon is gone, so what is at the receiver now is all there is.
    let spans = rx.spans();
    for id in &completed {
        assert!(
            spans.iter().any(|s| s.name == "bridge prompt.dispatch"
                && s.attr_str("acpd.prompt.id") == Some(id.as_str())),
            "no dispatch span for completed turn {id}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn sighup_plugin_reload_under_prompt_load_fails_no_request() -> Result<()> {
    const RELOADS: usize = 5;
    // The default plugin set with generous deadlines: this test is about swapping the set under
    // load, not about the 2 ms request-path deadline on a machine crowded by parallel tests.
    let mut config = String::from("[agent]\nscope = \"session\"\n");
    for name in ["enrich", "redact", "errors"] {
        config += &format!(
            "\n[[plugins]]\nname = \"{name}\"\npath = \"builtin:{name}\"\ndeadline_ms = 250\n"
        );
    }
    let d = Daemon::builder().config(&config).start().await?;
    let plugins_before = d.get("/health?deep=1").await?.body["plugins"].clone();
    assert!(
        plugins_before.as_array().is_some_and(|p| !p.is_empty()),
        "the default set runs plugins: {plugins_before}"
    );
    let d = std::sync::Arc::new(d);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let turns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let s = d.create_session().await?;
        let mut sse = d.events(&s, None, None).await?;
        let (d, stop, turns) = (d.clone(), stop.clone(), turns.clone());
        // Each loop returns (turns completed, what failed).
        loops.push(tokio::spawn(async move {
            let (mut done, mut failed) = (0usize, Vec::<String>::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = match d.prompt(&s, "slow 3 20").await {
                    Ok(r) if r.status == 202 => r,
                    Ok(r) => {
                        failed.push(format!("prompt {}: {}", r.status, r.body));
                        continue;
                    }
                    Err(e) => {
                        failed.push(format!("prompt: {e}"));
                        continue;
                    }
                };
                let id = r.body["promptId"].as_str().unwrap_or_default().to_string();
                match sse.until_turn_end(&id).await {
                    Ok(f) if f.last().is_some_and(|f| f.event == "turn_complete") => {
                        done += 1;
                        turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(f) => failed.push(format!("turn {id}: {:?}", f.last().map(|f| &f.data))),
                    Err(e) => failed.push(format!("turn {id}: {e}")),
                }
            }
            (done, failed)
        }));
    }
    let reloads = || {
        d.log()
            .iter()
            .filter(|l| l.contains("plugins reloaded"))
            .count()
    };
    for n in 1..=RELOADS {
        // Each reload lands while turns are running: more have completed since the last one.
        eventually("turns between reloads", WAIT, || {
            turns.load(std::sync::atomic::Ordering::Relaxed) >= 4 * n
        })
        .await?;
        signal(d.pid(), nix::sys::signal::Signal::SIGHUP)?;
        eventually("the SIGHUP reload", WAIT, || reloads() >= n).await?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut done, mut failed) = (0, Vec::new());
    for l in loops {
        let (n, f) = tokio::time::timeout(WAIT, l).await??;
        done += n;
        failed.extend(f);
    }
    eprintln!("{RELOADS} reloads under load: {done} turns completed");
    assert!(failed.is_empty(), "failed during reloads: {failed:?}");
    assert!(done >= 4 * RELOADS, "the load ran: {done} turns");
    // The set is whole after the swaps, and no plugin call failed during them.
    let after = d.get("/health?deep=1").await?.body["plugins"].clone();
    let states = |p: &serde_json::Value| -> Vec<String> {
        p.as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}:{}", p["name"], p["state"]))
            .collect()
    };
    let metrics = d.http.get(d.url("/metrics")).send().await?.text().await?;
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("acpd_plugin_failures"))
        .collect();
    assert!(failures.is_empty(), "plugin failures: {failures:?}");
    assert_eq!(states(&after), states(&plugins_before));
    assert!(
        states(&after).iter().all(|s| s.ends_with(":\"active\"")),
        "{after}"
    );
    assert!(!d.log().iter().any(|l| l.contains("reload refused")));
    Ok(())
}

/// SIGTERMs for a daemon that has one completed turn whose spans are still queued for export
/// (a 60 s batch delay), returning the turn's prompt id.
async fn daemon_with_queued_spans(
    rx: &acpd_tests::otlp::Receiver,
    extra_config: &str,
) -> Result<(Daemon, String)> {
    let d = Daemon::builder()
        .config(&format!("[agent]\nstop_grace_ms = 300\n\n{extra_config}"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let (id, _) = d.turn(&s, &mut sse, "hello").await?;
    Ok((d, id))
}

/// Waits (bounded) for a line of the daemon's stderr containing `needle`.
async fn logged(d: &Daemon, needle: &str) -> Result<()> {
    eventually(&format!("log line {needle:?}"), WAIT, || {
        d.log().iter().any(|l| l.contains(needle))
    })
    .await
}

/// coreutils `timeout` signals the daemon, then its process group, about a millisecond apart:
/// one stop, delivered twice. It must not force the exit (which skips the telemetry flush): the
/// daemon shuts down in order, exits 0, and the spans still queued at the signal arrive.
#[tokio::test]
async fn a_repeated_sigterm_within_the_grace_is_one_stop_and_flushes_the_last_spans() -> Result<()>
{
    use acpd_tests::otlp::{Protocol, Receiver};
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let (mut d, prompt_id) = daemon_with_queued_spans(&rx, "").await?;
    let dispatched = |spans: &[acpd_tests::otlp::RecvSpan]| {
        spans.iter().any(|s| {
            s.name == "bridge prompt.dispatch" && s.attr_str("acpd.prompt.id") == Some(&prompt_id)
        })
    };
    assert!(
        !dispatched(&rx.spans()),
        "the turn's spans must still be queued when the signals arrive"
    );
    let first = Instant::now();
    signal(d.pid(), nix::sys::signal::Signal::SIGTERM)?;
    // The second one once the daemon has taken the first (two signals the daemon has not yet
    // read would merge into one, and the test would prove nothing), still well inside the grace.
    logged(&d, "shutting down").await?;
    signal(d.pid(), nix::sys::signal::Signal::SIGTERM)?;
    let gap = first.elapsed();
    assert!(
        gap < Duration::from_millis(500),
        "the repeat came {gap:?} after the first signal: not within the grace, so not this test"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), d.child.wait()).await??;
    assert_eq!(status.code(), Some(0), "{status:?}: {:?}", d.log());
    assert!(
        !d.log().iter().any(|l| l.contains("forcing exit")),
        "{:?}",
        d.log()
    );
    // The daemon is gone: what the receiver holds now is all there is.
    assert!(
        dispatched(&rx.spans()),
        "the queued spans were flushed at exit"
    );
    Ok(())
}

/// A second signal after the grace is a deliberate request to stop now: with the telemetry
/// flush stuck on a collector that never answers, the daemon exits at once (130), its agent
/// children killed, instead of waiting out the 30 s flush deadline.
#[tokio::test]
async fn a_second_signal_after_the_grace_forces_the_exit() -> Result<()> {
    use acpd_tests::otlp::{Protocol, Receiver};
    let rx = Receiver::start_hanging(Protocol::HttpProtobuf).await?;
    let (mut d, _) =
        daemon_with_queued_spans(&rx, "[telemetry]\nshutdown_timeout_ms = 30000\n").await?;
    signal(d.pid(), nix::sys::signal::Signal::SIGTERM)?;
    // Logged just before the telemetry flush, which the hanging collector holds up.
    logged(&d, "acpd stopped").await?;
    // Not synchronisation: the repeat must come after the 500 ms grace to count as a second
    // request. The grace runs from when the daemon took the first signal, which on a loaded
    // machine can be well after it was sent, so it is timed from the line that proves it did.
    let grace_over = Instant::now() + Duration::from_millis(600);
    tokio::time::sleep(grace_over.saturating_duration_since(Instant::now())).await;
    let second = Instant::now();
    signal(d.pid(), nix::sys::signal::Signal::SIGTERM)?;
    let status = tokio::time::timeout(Duration::from_secs(20), d.child.wait()).await??;
    let took = second.elapsed();
    assert_eq!(status.code(), Some(130), "{status:?}: {:?}", d.log());
    assert!(took < Duration::from_secs(3), "forced exit took {took:?}");
    // The process can be reaped before the harness has read its last stderr line: await it.
    logged(&d, "forcing exit").await?;
    Ok(())
}

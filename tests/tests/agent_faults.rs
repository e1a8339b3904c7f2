//! The agent command as configured: one that cannot be started (missing, not executable) is a
//! distinct, non-retryable error naming the command and a degraded `/health`, and clears once the
//! agent is installed; a warm pool is ready when the daemon says it listens, its size honoured.

use acpd_tests::*;
use anyhow::{Context, Result};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// The refusal of `POST /session` for an agent that cannot be started.
fn assert_spawn_failed(r: &Resp, command: &str, reason: &str) {
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["code"], "agent_spawn_failed", "{}", r.body);
    assert_eq!(r.body["retryable"], false, "{}", r.body);
    assert_eq!(r.body["command"], command, "{}", r.body);
    assert_eq!(r.body["reason"], reason, "{}", r.body);
    assert!(
        !r.headers.contains_key("retry-after"),
        "no Retry-After for what no retry cures: {:?}",
        r.headers
    );
    assert!(
        !r.body.to_string().contains("--secret-flag"),
        "the agent's arguments stay out: {}",
        r.body
    );
}

#[tokio::test]
async fn a_missing_agent_is_a_permanent_error_and_health_is_degraded_until_it_is_installed()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dir.path().join("agent");
    let command = agent.display().to_string();
    let d = Daemon::builder()
        .args(&["--agent", &format!("{command} --secret-flag")])
        .start()
        .await?;

    // Before any session asks for the agent.
    let h = d.get("/health").await?;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["status"], "degraded", "{}", h.body);
    assert_eq!(h.body["agent"]["code"], "agent_spawn_failed", "{}", h.body);
    assert_eq!(h.body["agent"]["command"], command.as_str(), "{}", h.body);
    assert_eq!(h.body["agent"]["reason"], "not_found", "{}", h.body);
    let reason = h.body["reason"].as_str().context("reason")?;
    assert!(reason.contains(&command), "{reason}");
    assert!(!h.body.to_string().contains("--secret-flag"), "{}", h.body);
    // qwen serve's contract: a failing deep probe is 503 with the same body.
    let deep = d.get("/health?deep=1").await?;
    assert_eq!(deep.status, 503, "{}", deep.body);
    assert_eq!(deep.body["status"], "degraded");
    assert_eq!(deep.body["agent"], h.body["agent"]);
    assert_eq!(deep.body["sessions"], 0);

    // Every attempt gets the same answer: a crash loop's backoff (503 agent_unavailable with
    // Retry-After after two failures) never hides it.
    for scope in ["thread", "thread", "thread", "single"] {
        let r = d.post("/session", json!({"sessionScope": scope})).await?;
        assert_spawn_failed(&r, &command, "not_found");
    }

    // Installed: /health recovers without a restart, and sessions start.
    std::os::unix::fs::symlink(demo_agent_bin(), &agent)?;
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["status"], "ok", "{}", h.body);
    assert!(h.body.get("agent").is_none(), "{}", h.body);
    let s = d.create_session().await?;
    assert!(d.child_pid(&s).await? > 0);
    Ok(())
}

#[tokio::test]
async fn an_agent_that_is_not_executable_is_named_in_the_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dir.path().join("agent.js");
    std::fs::write(&agent, "console.log('not an executable')\n")?;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o644))?;
    let command = agent.display().to_string();
    let d = Daemon::builder()
        .args(&[
            "--agent",
            &format!("{command} --secret-flag"),
            "--agent-scope",
            "session",
        ])
        .start()
        .await?;
    let h = d.get("/health").await?;
    assert_eq!(h.body["status"], "degraded", "{}", h.body);
    assert_eq!(h.body["agent"]["reason"], "not_executable", "{}", h.body);
    let r = d
        .post("/session", json!({"sessionScope": "thread"}))
        .await?;
    assert_spawn_failed(&r, &command, "not_executable");
    // The error names the command in its message too (the daemon's log has it in full).
    assert!(
        d.log().iter().any(|l| l.contains(&command)),
        "log: {:?}",
        d.log()
    );
    Ok(())
}

#[tokio::test]
async fn a_healthy_agent_reports_ok() -> Result<()> {
    let d = Daemon::start().await?;
    let h = d.get("/health").await?;
    assert_eq!((h.status, h.body.clone()), (200, json!({"status": "ok"})));
    let deep = d.get("/health?deep=1").await?;
    assert_eq!(deep.status, 200, "{}", deep.body);
    assert_eq!(deep.body["status"], "ok");
    Ok(())
}

/// Waits until `/health?deep=1` counts `n` started children (a child counts once its
/// `initialize` has been answered), within [`LONG`].
async fn children_alive(d: &Daemon, n: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let h = d.get("/health?deep=1").await?;
        if h.body["childrenAlive"] == n {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never {n} children: {}",
            h.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_warm_pool_is_ready_at_start_up_and_keeps_its_size() -> Result<()> {
    let d = Daemon::builder()
        .args(&["--agent-scope", "session", "--pool", "2"])
        .start()
        .await?;
    // Ready when the daemon says it listens: both children started, no more.
    let warm = children_of(d.pid());
    assert_eq!(warm.len(), 2, "two warm children at start-up: {warm:?}");
    let h = d.get("/health?deep=1").await?;
    assert_eq!(h.body["childrenAlive"], 2, "{}", h.body);

    // The first session right after start-up gets one of them.
    let s = d.create_session().await?;
    let first = d.child_pid(&s).await?;
    assert!(warm.contains(&first), "{first} is not one of {warm:?}");

    // The pool tops up to two idle children beside the one in use: three, never more.
    children_alive(&d, 3).await?;
    let spares: Vec<u32> = children_of(d.pid())
        .into_iter()
        .filter(|p| *p != first)
        .collect();
    assert_eq!(spares.len(), 2, "{spares:?}");
    // The next session is served from the pool too, which tops up again: two in use, two idle.
    let s2 = d.create_session().await?;
    let second = d.child_pid(&s2).await?;
    assert!(
        spares.contains(&second),
        "{second} is not one of {spares:?}"
    );
    children_alive(&d, 4).await?;
    assert_eq!(children_of(d.pid()).len(), 4, "{:?}", children_of(d.pid()));
    Ok(())
}

/// `RUST_LOG` set for an agent (codex reads it) does not silence acpd when `ACPD_LOG` is set, and
/// the address is announced on exactly one line.
#[tokio::test]
async fn acpd_log_wins_over_rust_log_and_the_address_is_announced_once() -> Result<()> {
    // The harness sets ACPD_LOG=info.
    let d = Daemon::builder().env("RUST_LOG", "off").start().await?;
    let s = d.create_session().await?;
    assert!(d.child_pid(&s).await? > 0);
    let log = d.log();
    assert!(
        log.iter().any(|l| l.contains("agent child spawned")),
        "acpd's info log is on: {log:?}"
    );
    let announced = log
        .iter()
        .filter(|l| l.contains("acpd listening on"))
        .count();
    assert_eq!(announced, 1, "{log:?}");
    // The agent gets RUST_LOG as set (it is the agent's variable); ACPD_LOG stays acpd's.
    let mut sse = d.events(&s, None, None).await?;
    for (var, want) in [
        ("RUST_LOG", "env RUST_LOG=off"),
        ("ACPD_LOG", "env ACPD_LOG unset"),
    ] {
        let r = d.prompt(&s, &format!("env {var}")).await?;
        let id = r.body["promptId"].as_str().context("promptId")?.to_string();
        let text = agent_text(&sse.until_turn_end(&id).await?);
        assert!(text.contains(want), "{var}: {text:?}");
    }
    Ok(())
}

//! The README's walkthrough, as a test: create, subscribe, prompt, see events in order.

use acpd_tests::*;
use serde_json::json;

#[tokio::test]
async fn prompt_streams_echo_chunks_and_turn_complete_in_order() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session_with(json!({})).await?;
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, "hi there").await?;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let prompt_id = r.body["promptId"].as_str().unwrap().to_string();
    assert_eq!(r.body["lastEventId"], 0);
    let frames = sse.until_turn_end(&prompt_id).await?;
    let ids: Vec<u64> = frames.iter().filter_map(|f| f.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "ids are 1..n without gaps"
    );
    let echo = frames
        .iter()
        .position(|f| f.data["data"]["update"]["_meta"]["source"] == "bridge-echo")
        .unwrap();
    let first_chunk = frames
        .iter()
        .position(|f| f.data["data"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .unwrap();
    assert!(echo < first_chunk);
    assert_eq!(frames.last().unwrap().event, "turn_complete");
    assert_eq!(
        frames.last().unwrap().data["data"]["stopReason"],
        "end_turn"
    );
    assert_eq!(
        agent_text(&frames),
        "Hello from the demo agent. You said: hi there"
    );
    assert!(d.stdout().is_empty());
    Ok(())
}

/// A request the daemon can no longer answer says how it ended (a signal, or an exit code)
/// and what it last logged, read without reaping it: a flake in CI is diagnosable from its
/// output alone.
#[tokio::test]
async fn a_request_to_a_dead_daemon_says_how_it_ended() -> anyhow::Result<()> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let d = Daemon::start().await?;
    let s = d.create_session_with(json!({})).await?;
    let pid = d.pid();
    signal(pid, nix::sys::signal::Signal::SIGKILL)?;
    // Until it has exited (within the harness's deadline), leaving it unreaped (WNOWAIT).
    let exited = |pid: u32| async move {
        let wait = tokio::task::spawn_blocking(move || {
            waitid(
                Id::Pid(nix::unistd::Pid::from_raw(pid as i32)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            )
        });
        anyhow::Ok(tokio::time::timeout(WAIT, wait).await???)
    };
    exited(pid).await?;
    let err = d.get("/health").await.expect_err("a dead daemon answered");
    let text = format!("{err:#}");
    assert!(text.contains("the daemon was killed by SIGKILL"), "{text}");
    assert!(text.contains("acpd listening on http://"), "{text}");
    // The other helpers that reach the daemon say it too.
    let err = d.metrics_text().await.expect_err("a dead daemon answered");
    assert!(
        format!("{err:#}").contains("was killed by SIGKILL"),
        "{err:#}"
    );
    let err = d
        .events(&s, None, None)
        .await
        .err()
        .expect("a dead daemon answered");
    assert!(
        format!("{err:#}").contains("was killed by SIGKILL"),
        "{err:#}"
    );

    let mut child = std::process::Command::new("sh")
        .args(["-c", "exit 3"])
        .spawn()?;
    let pid = child.id();
    exited(pid).await?;
    assert_eq!(process_fate(pid), "exited with code 3");
    // Reaped: a zombie is not left behind by the test.
    child.wait()?;
    Ok(())
}

//! acpd in front of a real ACP agent: codex-acp (npm @zed-industries/codex-acp, a static binary),
//! pointed at the offline mock LLM from shared/tools/agents. `.ci/run` installs codex-acp and
//! sets ACPD_CODEX_ACP to its path; without it these tests say so and return.

use acpd_tests::*;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Mock {
    _child: tokio::process::Child,
    port: u16,
}

async fn start_mock(scenario: &str) -> anyhow::Result<Mock> {
    let script = acpd_tests::manifest_dir().join("../../shared/tools/agents/mock_llm.py");
    anyhow::ensure!(
        script.exists(),
        "mock LLM not found at {}",
        script.display()
    );
    let log = tempfile::NamedTempFile::new()?;
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg("0")
        .env("MOCK_SCENARIO", scenario)
        .env("MOCK_MAX_SECONDS", "300")
        .env("MOCK_SLOW_SECONDS", "30")
        .env("MOCK_LOG", log.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(p) = line.strip_prefix("READY ") {
                return Ok::<u16, anyhow::Error>(p.trim().parse()?);
            }
        }
        anyhow::bail!("mock exited before READY")
    })
    .await??;
    Ok(Mock {
        _child: child,
        port,
    })
}

fn codex() -> Option<String> {
    match std::env::var("ACPD_CODEX_ACP") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!(
                "ACPD_CODEX_ACP is not set: real-agent test not run (.ci/run installs codex-acp)"
            );
            None
        }
    }
}

async fn codex_daemon(bin: &str, mock: &Mock) -> anyhow::Result<(Daemon, tempfile::TempDir)> {
    let home = tempfile::tempdir()?;
    let codex_home = home.path().join(".codex");
    std::fs::create_dir_all(&codex_home)?;
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            "model = \"mock-model\"\nmodel_provider = \"mock\"\ncheck_for_update_on_startup = false\n\
             [model_providers.mock]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:{}/v1\"\n\
             env_key = \"MOCK_API_KEY\"\nwire_api = \"responses\"\nrequest_max_retries = 0\nstream_max_retries = 0\n\
             [analytics]\nenabled = false\n",
            mock.port
        ),
    )?;
    let d = Daemon::builder()
        .args(&["--agent", bin, "--agent-scope", "session"])
        .env("HOME", &home.path().display().to_string())
        .env("CODEX_HOME", &codex_home.display().to_string())
        .env("MOCK_API_KEY", "mock-key")
        .env("RUST_LOG", "warn")
        .start()
        .await?;
    Ok((d, home))
}

#[tokio::test]
async fn codex_acp_turn_cancel_and_clean_shutdown() -> anyhow::Result<()> {
    let Some(bin) = codex() else { return Ok(()) };
    let mock = start_mock("text").await?;
    let (mut d, _home) = codex_daemon(&bin, &mock).await?;

    let s = d.create_session().await?;
    let mut sse = d.events(&s, Some(0), None).await?;
    let r = d.prompt(&s, "Say hello").await?;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let frames = sse
        .until_turn_end(r.body["promptId"].as_str().unwrap())
        .await?;
    let end = frames.last().unwrap();
    assert_eq!(end.event, "turn_complete", "{:?}", end.data);
    assert_eq!(end.data["data"]["stopReason"], "end_turn");
    assert!(
        agent_text(&frames).contains("MOCK-ANSWER"),
        "agent text: {}",
        agent_text(&frames)
    );

    // A held-back LLM answer, then cancel: codex answers `cancelled` and the session stays usable.
    let client = reqwest::Client::new();
    client
        .post(format!("http://127.0.0.1:{}/__mock/scenario", mock.port))
        .json(&json!({"scenario": "slow"}))
        .send()
        .await?;
    let r = d.prompt(&s, "Say hello slowly").await?;
    let slow_id = r.body["promptId"].as_str().unwrap().to_string();
    sse.until(WAIT, |f| {
        f.event == "pending_prompt_started" && f.data["promptId"] == slow_id.as_str()
    })
    .await?;
    let c = d
        .post_as(&s, &format!("/session/{}/cancel", s.id), json!({}))
        .await?;
    assert_eq!(c.status, 204);
    let frames = sse.until_turn_end(&slow_id).await?;
    let end = frames.last().unwrap();
    assert_eq!(end.event, "turn_complete", "{:?}", end.data);
    assert_eq!(end.data["data"]["stopReason"], "cancelled");

    // codex ignores stdin EOF: shutdown must signal its group, and nothing may outlive the daemon.
    let child_pid = d.child_pid(&s).await?;
    let status = d.terminate(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        eventually(Duration::from_secs(5), || !group_alive(child_pid)).await,
        "codex group {child_pid} outlived acpd"
    );
    assert!(d.stdout().is_empty());
    Ok(())
}

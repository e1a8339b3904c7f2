//! acpd in front of real ACP agents, offline: qwen-code, codex-acp, claude-code-acp and gemini-cli,
//! each pointed at the tests' own mock LLM (`acpd_tests::mock_llm`). `.ci/run` installs them
//! (tests/scripts/install-agents.sh) and names them in `ACPD_*` variables; a test whose agent is
//! not installed prints "skipped: <reason>" and returns.
//!
//! Every agent goes through the same flows: a text prompt completes with the agent's text
//! streamed; a write of a new file asks permission over SSE, the test votes with the option whose
//! kind is `allow_once`, and the file then exists with the mock's content (for every agent,
//! gemini-cli included); SIGTERM ends the daemon cleanly and leaves no agent process, not even a
//! zombie. qwen and codex also cancel a turn held at the LLM.
//!
//! The real agents are heavy (node processes of 100-300 MB taking seconds of CPU to start), so
//! these tests run one at a time, and every wait is bounded by [`AGENT_WAIT`].

use acpd_tests::mock_llm::MockLlm;
use acpd_tests::mock_llm::agents::{AGENT_WAIT, AgentOptions, RealAgent, create_session_within};
use acpd_tests::*;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::time::{Duration, Instant};

/// One real agent at a time (see the module doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads until `prompt_id`'s turn ends (`turn_complete` or `turn_error`), within [`AGENT_WAIT`].
async fn turn_end(sse: &mut Sse, prompt_id: &str) -> Result<Vec<Frame>> {
    sse.until(AGENT_WAIT, |f| {
        (f.event == "turn_complete" || f.event == "turn_error")
            && f.data["data"]["promptId"] == prompt_id
    })
    .await
}

fn prompt_id(r: &Resp) -> Result<String> {
    anyhow::ensure!(r.status == 202, "prompt -> {}: {}", r.status, r.body);
    Ok(r.body["promptId"].as_str().context("promptId")?.to_string())
}

/// A text prompt completes: `turn_complete` with `end_turn`, the mock's answer streamed as
/// agent text.
async fn text_turn(d: &Daemon, s: &SessionRef, sse: &mut Sse, mock: &MockLlm) -> Result<()> {
    mock.set_scenario("text");
    let t = Instant::now();
    let id = prompt_id(&d.prompt(s, "Say hello").await?)?;
    let frames = turn_end(sse, &id).await?;
    let end = frames.last().unwrap();
    anyhow::ensure!(
        end.event == "turn_complete" && end.data["data"]["stopReason"] == "end_turn",
        "text turn ended with {} {}",
        end.event,
        end.data
    );
    let text = agent_text(&frames);
    anyhow::ensure!(
        text.contains(&mock.config().text),
        "agent text {text:?}; events {:?}",
        kinds(&frames)
    );
    eprintln!("text turn: {:?}", t.elapsed());
    Ok(())
}

/// The agent writes a new file `name` in the workspace: the SSE stream shows a
/// `permission_request`, the test votes `allow_once` (the option id read from the event), the turn
/// completes and the file holds the mock's content.
async fn write_with_permission(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    mock: &MockLlm,
    name: &str,
) -> Result<()> {
    let path = d.ws_path.join(name);
    let content = format!("written by the mock through {name}\n");
    mock.set(|c| {
        c.scenario = "write".into();
        c.write_path = path.display().to_string();
        c.write_content = content.clone();
    });
    let t = Instant::now();
    let id = prompt_id(&d.prompt(s, &format!("Create the file {name}")).await?)?;
    let frames = sse
        .until(AGENT_WAIT, |f| {
            f.event == "permission_request"
                || ((f.event == "turn_complete" || f.event == "turn_error")
                    && f.data["data"]["promptId"] == id.as_str())
        })
        .await?;
    let req = frames.last().unwrap();
    if req.event != "permission_request" {
        let calls: Vec<String> = mock
            .requests()
            .iter()
            .map(|r| format!("{} -> {}", r.path, r.reply))
            .collect();
        bail!(
            "the turn ended ({} {}) without a permission request; events {:?}; agent text {:?}; LLM calls {calls:?}",
            req.event,
            req.data["data"],
            kinds(&frames),
            agent_text(&frames)
        );
    }
    let data = &req.data["data"];
    let request_id = data["requestId"].as_str().context("requestId")?;
    let option = data["options"]
        .as_array()
        .context("options")?
        .iter()
        .find(|o| o["kind"] == "allow_once")
        .with_context(|| format!("no allow_once option in {data}"))?;
    let option_id = option["optionId"].as_str().context("optionId")?;
    anyhow::ensure!(!path.exists(), "{} exists before the vote", path.display());
    let v = d
        .post_as(
            s,
            &format!("/session/{}/permission/{request_id}", s.id),
            json!({"outcome": {"outcome": "selected", "optionId": option_id}}),
        )
        .await?;
    anyhow::ensure!(v.status == 200, "vote -> {}: {}", v.status, v.body);
    let frames = turn_end(sse, &id).await?;
    let end = frames.last().unwrap();
    anyhow::ensure!(
        frames.iter().any(|f| f.event == "permission_resolved"),
        "no permission_resolved in {:?}",
        kinds(&frames)
    );
    anyhow::ensure!(
        end.event == "turn_complete" && end.data["data"]["stopReason"] == "end_turn",
        "write turn ended with {} {}",
        end.event,
        end.data
    );
    let written = std::fs::read_to_string(&path)
        .with_context(|| format!("{} after the turn", path.display()))?;
    anyhow::ensure!(written == content, "{name} holds {written:?}");
    eprintln!(
        "write turn with permission ({option_id}): {:?}",
        t.elapsed()
    );
    Ok(())
}

/// A prompt whose LLM answer is held back is cancelled: `turn_complete` with `cancelled`.
async fn cancel_turn(d: &Daemon, s: &SessionRef, sse: &mut Sse, mock: &MockLlm) -> Result<()> {
    mock.set(|c| {
        c.scenario = "slow".into();
        c.slow = Duration::from_secs(60);
    });
    let id = prompt_id(&d.prompt(s, "Say hello slowly").await?)?;
    mock.wait_held(AGENT_WAIT).await?;
    let t = Instant::now();
    let c = d
        .post_as(s, &format!("/session/{}/cancel", s.id), json!({}))
        .await?;
    anyhow::ensure!(c.status == 204, "cancel -> {}: {}", c.status, c.body);
    let frames = turn_end(sse, &id).await?;
    let end = frames.last().unwrap();
    anyhow::ensure!(
        end.event == "turn_complete" && end.data["data"]["stopReason"] == "cancelled",
        "cancelled turn ended with {} {}",
        end.event,
        end.data
    );
    eprintln!("cancel -> turn end: {:?}", t.elapsed());
    mock.set_scenario("text"); // releases the held answer
    Ok(())
}

/// SIGTERM: acpd exits 0 in time, its agent's process group is gone, stdout stayed empty.
async fn clean_shutdown(mut d: Daemon, s: &SessionRef) -> Result<()> {
    let child_pid = d.child_pid(s).await?;
    let t = Instant::now();
    let status = d.terminate(Duration::from_secs(20)).await?;
    eprintln!("shutdown: {:?}", t.elapsed());
    anyhow::ensure!(status.success(), "exit status {status:?}");
    // Gone when acpd has exited, zombies included (acpd reaps the agent's whole group, the
    // orphans it re-parents included, before it exits; init would take seconds, if it reaps).
    anyhow::ensure!(
        !group_alive(child_pid),
        "the agent's group {child_pid} outlived acpd: {:?}",
        group_states(child_pid)
    );
    anyhow::ensure!(d.stdout().is_empty(), "acpd wrote to stdout");
    Ok(())
}

/// `pid state` of every process (zombies included) in group `pgid`, for a failure message.
fn group_states(pgid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            (fields.get(2) == Some(&pgid.to_string().as_str()))
                .then(|| format!("{pid} {}", fields.first().unwrap_or(&"?")))
        })
        .collect()
}

/// Starts acpd with `agent`, opens a session (spawning the agent) and its event stream.
async fn start(agent: &RealAgent, opts: &AgentOptions) -> Result<(Daemon, SessionRef, Sse)> {
    let t = Instant::now();
    let d = agent.daemon(opts).await?;
    eprintln!("{}: acpd listening: {:?}", agent.name, t.elapsed());
    let t = Instant::now();
    let s = create_session_within(&d, AGENT_WAIT)
        .await
        .with_context(|| format!("{} session; acpd log: {:?}", agent.name, d.log()))?;
    eprintln!(
        "{}: session (spawn, initialize, session/new): {:?}",
        agent.name,
        t.elapsed()
    );
    let sse = d.events(&s, Some(0), None).await?;
    Ok((d, s, sse))
}

#[tokio::test]
async fn qwen_code_text_write_permission_cancel() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions::default();
    let Some(agent) = RealAgent::qwen(&mock, &opts)? else {
        return Ok(());
    };
    let (d, s, mut sse) = start(&agent, &opts).await?;
    text_turn(&d, &s, &mut sse, &mock).await?;
    write_with_permission(&d, &s, &mut sse, &mock, "qwen-new-file.txt").await?;
    cancel_turn(&d, &s, &mut sse, &mock).await?;
    // The session is still usable after the cancel.
    text_turn(&d, &s, &mut sse, &mock).await?;
    let log = mock.requests();
    assert!(
        log.iter()
            .all(|r| r.api == "chat" && r.path == "/v1/chat/completions"),
        "qwen speaks OpenAI chat completions: {:?}",
        log.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(log.iter().any(|r| r.reply == "tool_call write_file"));
    clean_shutdown(d, &s).await
}

#[tokio::test]
async fn codex_acp_text_write_permission_cancel_and_clean_shutdown() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions {
        args: vec!["--agent-scope".into(), "session".into()],
        ..AgentOptions::default()
    };
    let Some(agent) = RealAgent::codex(&mock, &opts)? else {
        return Ok(());
    };
    let (d, s, mut sse) = start(&agent, &opts).await?;
    text_turn(&d, &s, &mut sse, &mock).await?;
    // codex's default mode is read-only: the mock's escalated exec_command asks approval and then
    // runs outside codex's sandbox (none here: no bubblewrap in the container).
    write_with_permission(&d, &s, &mut sse, &mock, "codex-new-file.txt").await?;
    cancel_turn(&d, &s, &mut sse, &mock).await?;
    text_turn(&d, &s, &mut sse, &mock).await?;
    assert!(mock.requests().iter().all(|r| r.path == "/v1/responses"));
    // codex ignores stdin EOF: shutdown must signal its group.
    clean_shutdown(d, &s).await
}

#[tokio::test]
async fn claude_code_acp_text_and_write_permission() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions::default();
    let Some(agent) = RealAgent::claude(&mock, &opts)? else {
        return Ok(());
    };
    let (d, s, mut sse) = start(&agent, &opts).await?;
    text_turn(&d, &s, &mut sse, &mock).await?;
    write_with_permission(&d, &s, &mut sse, &mock, "claude-new-file.txt").await?;
    assert!(
        mock.requests()
            .iter()
            .filter(|r| r.reply.starts_with("tool_call"))
            .all(|r| r.api == "anthropic")
    );
    clean_shutdown(d, &s).await
}

#[tokio::test]
async fn gemini_cli_text_and_write_permission() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions::default();
    let Some(agent) = RealAgent::gemini(&mock, &opts)? else {
        return Ok(());
    };
    let (d, s, mut sse) = start(&agent, &opts).await?;
    text_turn(&d, &s, &mut sse, &mock).await?;
    // gemini-cli reads the file through fs/read_text_file before writing it and fails the write on
    // any error there; acpd answers a missing file inside the workspace with empty content, as
    // Zed does, so the new file is created after the vote.
    write_with_permission(&d, &s, &mut sse, &mock, "gemini-new-file.txt")
        .await
        .with_context(|| {
            // What gemini-cli told the LLM about its write, from the mock's log.
            let answer: Vec<String> = mock
                .requests()
                .iter()
                .flat_map(|r| r.body["contents"].as_array().cloned().unwrap_or_default())
                .flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p.get("functionResponse").map(|f| f["response"].to_string()))
                .collect();
            format!("gemini-cli's new file; tool results sent to the LLM: {answer:?}")
        })?;
    clean_shutdown(d, &s).await
}

/// The helper other tests use (`qwen_daemon`): extra env and settings.json reach qwen (with
/// trace-context propagation on, its LLM requests carry a W3C `traceparent`), and a turn whose LLM
/// answers with an HTTP error still ends.
#[tokio::test]
async fn qwen_daemon_helper_env_settings_and_llm_error() -> Result<()> {
    use acpd_tests::mock_llm::agents::qwen_daemon;
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions {
        env: vec![("QWEN_TELEMETRY_ENABLED".into(), "true".into())],
        settings: Some(json!({"outboundCorrelation": {"propagateTraceContext": true}})),
        ..AgentOptions::default()
    };
    let Some((d, home)) = qwen_daemon(&mock, &opts).await? else {
        return Ok(());
    };
    let settings = std::fs::read_to_string(home.path().join(".qwen/settings.json"))?;
    assert!(settings.contains("propagateTraceContext"), "{settings}");
    let s = create_session_within(&d, AGENT_WAIT).await?;
    let mut sse = d.events(&s, Some(0), None).await?;
    let from = mock.requests().len();
    text_turn(&d, &s, &mut sse, &mock).await?;
    let turn = mock
        .wait_for(from, AGENT_WAIT, |r| r.api == "chat" && r.reply == "text")
        .await?;
    let tp = turn
        .header("traceparent")
        .with_context(|| format!("no traceparent on qwen's LLM request: {:?}", turn.headers))?;
    let parts: Vec<&str> = tp.split('-').collect();
    assert!(
        parts.len() == 4 && parts[1].len() == 32 && parts[2].len() == 16,
        "traceparent {tp}"
    );

    mock.set_scenario("error");
    let t = Instant::now();
    let id = prompt_id(&d.prompt(&s, "Say hello").await?)?;
    let frames = turn_end(&mut sse, &id).await?;
    let end = frames.last().unwrap();
    eprintln!(
        "LLM error 400 -> {} {} after {:?}; agent text {:?}",
        end.event,
        end.data["data"],
        t.elapsed(),
        agent_text(&frames)
    );
    assert_eq!(
        end.event, "turn_error",
        "an LLM error is a turn error: {}",
        end.data
    );
    assert!(
        mock.requests().iter().any(|r| r.reply == "error 400"),
        "qwen called the LLM"
    );
    clean_shutdown(d, &s).await
}

/// `examples/configs/<agent>.toml` as shipped, with only what points it online swapped for the
/// mock: the agent's program (the installed one) and the LLM's URL. The agent must answer a text
/// turn and, where its write goes through a permission vote without a sandbox tool missing here,
/// create a new file after the vote.
async fn reference_config(
    agent: &RealAgent,
    mock: &MockLlm,
    file: &str,
    write: bool,
) -> Result<()> {
    let path = manifest_dir().join("../examples/configs").join(file);
    let shipped = std::fs::read_to_string(&path)?;
    // The first word of `command = "..."` (or `"""...`).
    let program = shipped
        .lines()
        .find_map(|l| l.strip_prefix("command = "))
        .map(|v| v.trim_start_matches('"'))
        .and_then(|v| v.split_whitespace().next())
        .map(|w| w.trim_end_matches('"'))
        .with_context(|| format!("no agent command in {file}"))?;
    // The installed program: `node entry.js` for the node agents, the binary for codex.
    let installed: Vec<&str> = agent.command.split_whitespace().collect();
    let installed = if agent.name == "codex-acp" {
        installed[0].to_string()
    } else {
        installed[..2].join(" ")
    };
    let text = shipped
        .replacen(&format!("\"{program} "), &format!("\"{installed} "), 1)
        .replacen(&format!("\"{program}\""), &format!("\"{installed}\""), 1)
        .replacen(
            &format!("\"\"\"{program} "),
            &format!("\"\"\"{installed} "),
            1,
        )
        .replace(
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            &format!("{}/v1", mock.base_url()),
        )
        .replace(
            "https://api.openai.com/v1",
            &format!("{}/v1", mock.base_url()),
        );
    anyhow::ensure!(
        text.contains(&installed),
        "{file}: command not replaced: {text}"
    );
    // gemini's default model (`auto`) first asks a classifier model for a routing decision in
    // JSON, which the mock does not give: name the model, as docs/AGENTS.md says for offline use.
    let text = if agent.name == "gemini-cli" {
        text.replacen(" --acp ", " --acp -m mock-model ", 1)
    } else {
        text
    };
    let mut b = Daemon::builder().config(&text);
    for (k, v) in &agent.env {
        b = b.env(k, v);
    }
    let d = b.env("OPENAI_API_KEY", "sk-mock").start().await?;
    let s = create_session_within(&d, AGENT_WAIT)
        .await
        .with_context(|| format!("{file}: session; acpd log: {:?}", d.log()))?;
    let mut sse = d.events(&s, Some(0), None).await?;
    text_turn(&d, &s, &mut sse, mock).await.with_context(|| {
        let calls: Vec<String> = mock
            .requests()
            .iter()
            .map(|r| format!("{} -> {}", r.path, r.reply))
            .collect();
        format!(
            "{file}: LLM calls {calls:?}; acpd log tail {:?}",
            d.log().iter().rev().take(15).collect::<Vec<_>>()
        )
    })?;
    if write {
        write_with_permission(&d, &s, &mut sse, mock, &format!("{file}.txt"))
            .await
            .context(file.to_string())?;
    }
    clean_shutdown(d, &s).await
}

#[tokio::test]
async fn the_reference_configs_work_as_shipped() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let opts = AgentOptions::default();
    let mock = MockLlm::start("text").await?;
    if let Some(a) = RealAgent::qwen(&mock, &opts)? {
        reference_config(&a, &mock, "qwen.toml", true).await?;
    }
    if let Some(a) = RealAgent::gemini(&mock, &opts)? {
        reference_config(&a, &mock, "gemini.toml", true).await?;
    }
    if let Some(a) = RealAgent::claude(&mock, &opts)? {
        reference_config(&a, &mock, "claude.toml", true).await?;
    }
    if let Some(a) = RealAgent::codex(&mock, &opts)? {
        // Its shipped sandbox (workspace-write) runs commands through bubblewrap; without `bwrap`
        // only the text turn is checked.
        let bwrap = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("bwrap").exists()));
        if !bwrap {
            eprintln!("codex.toml: write flow skipped: bubblewrap (bwrap) is not installed");
        }
        reference_config(&a, &mock, "codex.toml", bwrap).await?;
    }
    Ok(())
}

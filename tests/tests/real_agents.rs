//! acpd in front of real ACP agents, offline: qwen-code, codex-acp, claude-code-acp and gemini-cli,
//! each pointed at the tests' own mock LLM (`acpd_tests::mock_llm`). `.ci/run` installs them
//! (tests/scripts/install-agents.sh) and names them in `ACPD_*` variables; a test whose agent is
//! not installed prints "skipped: <reason>" and returns.
//!
//! One test per agent runs every flow as a step on one daemon and session (printed as
//! `== <agent> <step>: pass <time>`; a failed step does not stop the next, the test fails at the
//! end naming them all):
//!
//! 1. text: a prompt completes with the mock's text streamed;
//! 2. read: the agent reads a file of the workspace with its read tool, its next LLM request
//!    carries the file's content (the tool result), the stream shows the tool call;
//! 3. create: a write of a new file asks permission over SSE, the test votes with the option
//!    whose kind is `allow_once` (its id read from the event), the file then holds the content;
//! 4. edit: the same write over the file read in step 2, untouched until the vote;
//! 5. cancel: a turn held at the LLM ends `cancelled` after `POST /session/{id}/cancel`, and the
//!    session answers the next prompt;
//! 6. crash: SIGKILL of the agent's child while idle, then mid-turn: `session_died` (after
//!    `turn_error` for the running turn), and the next prompt restores the session on a new
//!    child and completes;
//! 7. shutdown: SIGTERM ends the daemon cleanly and leaves no agent process, not even a zombie.
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

/// The agent writes the file `name` in the workspace: the SSE stream shows a
/// `permission_request`, the test votes `allow_once` (the option id read from the event), the turn
/// completes and the file holds the mock's content. With `before`, the file exists (with that
/// content, untouched until the vote) and the write overwrites it: an edit.
async fn write_with_permission(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    mock: &MockLlm,
    name: &str,
    before: Option<&str>,
) -> Result<()> {
    let path = d.ws_path.join(name);
    let content = match before {
        None => format!("written by the mock through {name}\n"),
        Some(_) => format!("edited by the mock through {name}\n"),
    };
    if let Some(old) = before {
        anyhow::ensure!(
            std::fs::read_to_string(&path).ok().as_deref() == Some(old),
            "{} does not hold {old:?} before the edit",
            path.display()
        );
    }
    mock.set(|c| {
        c.scenario = "write".into();
        c.write_path = path.display().to_string();
        c.write_content = content.clone();
    });
    let t = Instant::now();
    let verb = if before.is_some() {
        "Overwrite"
    } else {
        "Create"
    };
    let id = prompt_id(&d.prompt(s, &format!("{verb} the file {name}")).await?)?;
    let frames = sse
        .until(AGENT_WAIT, |f| {
            f.event == "permission_request"
                || ((f.event == "turn_complete" || f.event == "turn_error")
                    && f.data["data"]["promptId"] == id.as_str())
        })
        .await?;
    let req = frames.last().unwrap();
    if req.event != "permission_request" {
        bail!(
            "the turn ended ({} {}) without a permission request; events {:?}; agent text {:?}; LLM calls {:?}",
            req.event,
            req.data["data"],
            kinds(&frames),
            agent_text(&frames),
            llm_calls(mock)
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
    match before {
        None => anyhow::ensure!(!path.exists(), "{} exists before the vote", path.display()),
        Some(old) => {
            let now = std::fs::read_to_string(&path)?;
            anyhow::ensure!(now == old, "{name} changed before the vote: {now:?}");
        }
    }
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
    anyhow::ensure!(
        written == content,
        "{name} holds {written:?}; agent text {:?}; LLM calls {:?}",
        agent_text(&frames),
        llm_calls(mock)
    );
    eprintln!(
        "{} turn with permission ({option_id}): {:?}",
        if before.is_some() { "edit" } else { "write" },
        t.elapsed()
    );
    Ok(())
}

/// The tool results in an LLM request body (any of the four APIs), for failure messages.
fn tool_results(body: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["messages", "input", "contents"] {
        for m in body[key].as_array().into_iter().flatten() {
            let is_result = m["role"] == "tool"
                || m["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("_call_output"))
                || m.to_string().contains("\"tool_result\"")
                || m.to_string().contains("functionResponse");
            if is_result {
                out.push(m.to_string());
            }
        }
    }
    out
}

/// Every file under `dir` (with its size), for failure messages.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(format!("{} ({len} B)", p.display()));
        }
    }
    out
}

/// `path -> reply` of every LLM request so far, for failure messages.
fn llm_calls(mock: &MockLlm) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|r| format!("{} -> {}", r.path, r.reply))
        .collect()
}

/// Reads until `prompt_id`'s turn ends, voting `allow_once` on every permission request on the
/// way (an agent may ask before running its read tool); returns the frames and the votes cast.
async fn turn_end_voting(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    prompt_id: &str,
) -> Result<(Vec<Frame>, usize)> {
    let deadline = Instant::now() + AGENT_WAIT;
    let mut all = Vec::new();
    let mut votes = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frames = sse
            .until(left, |f| {
                f.event == "permission_request"
                    || ((f.event == "turn_complete" || f.event == "turn_error")
                        && f.data["data"]["promptId"] == prompt_id)
            })
            .await?;
        let last = frames.last().unwrap().clone();
        all.extend(frames);
        if last.event != "permission_request" {
            return Ok((all, votes));
        }
        let data = &last.data["data"];
        let request_id = data["requestId"].as_str().context("requestId")?;
        let option_id = data["options"]
            .as_array()
            .context("options")?
            .iter()
            .find(|o| o["kind"] == "allow_once")
            .and_then(|o| o["optionId"].as_str())
            .with_context(|| format!("no allow_once option in {data}"))?;
        let v = d
            .post_as(
                s,
                &format!("/session/{}/permission/{request_id}", s.id),
                json!({"outcome": {"outcome": "selected", "optionId": option_id}}),
            )
            .await?;
        anyhow::ensure!(v.status == 200, "vote -> {}: {}", v.status, v.body);
        votes += 1;
    }
}

/// The agent reads the file `name` (written here with a unique marker) with its read tool: the
/// turn completes, the agent's next LLM request carries the marker (the tool result) and the
/// mock's after-result answer is streamed.
async fn read_file(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    mock: &MockLlm,
    name: &str,
    content: &str,
) -> Result<()> {
    let path = d.ws_path.join(name);
    std::fs::write(&path, content)?;
    let marker = content.lines().next().context("content")?.to_string();
    mock.set(|c| {
        c.scenario = "tool".into();
        c.tool_path = path.display().to_string();
    });
    let from = mock.requests().len();
    let t = Instant::now();
    let id = prompt_id(&d.prompt(s, &format!("Read the file {name}")).await?)?;
    let (frames, votes) = turn_end_voting(d, s, sse, &id).await?;
    let end = frames.last().unwrap();
    anyhow::ensure!(
        end.event == "turn_complete" && end.data["data"]["stopReason"] == "end_turn",
        "read turn ended with {} {}; LLM calls {:?}",
        end.event,
        end.data,
        llm_calls(mock)
    );
    let log = mock.requests();
    let turn = &log[from.min(log.len())..];
    let call = turn
        .iter()
        .find(|r| r.reply.starts_with("tool_call"))
        .with_context(|| format!("no read tool call; LLM calls {:?}", llm_calls(mock)))?;
    // The tool result reached the LLM: a later request's body holds the file's marker (which no
    // prompt names).
    anyhow::ensure!(
        turn.iter().any(|r| r.body.to_string().contains(&marker)),
        "no LLM request carries {marker:?} after {}; LLM calls {:?}; the last request ends {:?}",
        call.reply,
        llm_calls(mock),
        turn.last().map(|r| tool_results(&r.body))
    );
    let tool_updates = frames
        .iter()
        .filter(|f| {
            f.event == "session_update"
                && matches!(
                    f.data["data"]["update"]["sessionUpdate"].as_str(),
                    Some("tool_call" | "tool_call_update")
                )
        })
        .count();
    anyhow::ensure!(
        tool_updates > 0,
        "no tool_call update on the stream: {:?}",
        kinds(&frames)
    );
    let text = agent_text(&frames);
    anyhow::ensure!(
        text.contains("(after tool result)"),
        "agent text {text:?}; events {:?}",
        kinds(&frames)
    );
    eprintln!(
        "read turn ({}, {tool_updates} tool updates, {votes} votes): {:?}",
        call.reply,
        t.elapsed()
    );
    Ok(())
}

/// A prompt whose LLM answer is held back (at most `hold`) is cancelled: `turn_complete` with
/// `cancelled`. An agent that finishes its in-flight LLM request first (claude) ends the turn
/// when the hold ends, so `hold` is kept short for it. The session then answers a text turn.
async fn cancel_turn(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    mock: &MockLlm,
    hold: Duration,
) -> Result<()> {
    mock.set(|c| {
        c.scenario = "slow".into();
        c.slow = hold;
    });
    let id = prompt_id(&d.prompt(s, "Say hello slowly").await?)?;
    mock.wait_held(AGENT_WAIT).await?;
    let t = Instant::now();
    let c = d
        .post_as(s, &format!("/session/{}/cancel", s.id), json!({}))
        .await?;
    anyhow::ensure!(c.status == 204, "cancel -> {}: {}", c.status, c.body);
    let frames = sse
        .until(hold + Duration::from_secs(30), |f| {
            (f.event == "turn_complete" || f.event == "turn_error")
                && f.data["data"]["promptId"] == id.as_str()
        })
        .await
        .context("turn end after the cancel")?;
    let took = t.elapsed();
    mock.set_scenario("text"); // releases a held answer
    let end = frames.last().unwrap();
    anyhow::ensure!(
        end.event == "turn_complete" && end.data["data"]["stopReason"] == "cancelled",
        "cancelled turn ended with {} {}",
        end.event,
        end.data
    );
    eprintln!("cancel -> turn end: {took:?} (LLM hold {hold:?})");
    // The session is still usable after the cancel.
    text_turn(d, s, sse, mock)
        .await
        .context("text turn after the cancel")
}

/// SIGKILL of the agent's child, idle or mid-turn (its LLM answer held back): a running turn
/// ends with `turn_error` (`agent_exited`), then the session reports `session_died`
/// (`channel_closed`); the next prompt spawns a new child, restores the session on it and
/// completes.
async fn crash_and_restore(
    d: &Daemon,
    s: &SessionRef,
    sse: &mut Sse,
    mock: &MockLlm,
    mid_turn: bool,
    no_restore: Option<&str>,
) -> Result<Outcome> {
    let old = d.child_pid(s).await?;
    let id = if mid_turn {
        mock.set(|c| {
            c.scenario = "slow".into();
            c.slow = Duration::from_secs(60);
        });
        let id = prompt_id(&d.prompt(s, "Say hello slowly").await?)?;
        mock.wait_held(AGENT_WAIT).await?;
        Some(id)
    } else {
        None
    };
    let t = Instant::now();
    signal(old, nix::sys::signal::Signal::SIGKILL)?;
    let frames = sse
        .until(AGENT_WAIT, |f| f.event == "session_died")
        .await
        .context("session_died after SIGKILL")?;
    let died_after = t.elapsed();
    mock.set_scenario("text"); // releases a held answer
    let turn_error = frames.iter().find(|f| f.event == "turn_error");
    match (&id, turn_error) {
        (Some(id), Some(e)) => {
            let e = &e.data["data"];
            anyhow::ensure!(
                e["code"] == "agent_exited" && e["promptId"] == id.as_str(),
                "turn_error {e}"
            );
        }
        (Some(id), None) => bail!("no turn_error for {id} in {:?}", kinds(&frames)),
        (None, Some(e)) => bail!("turn_error with no turn running: {}", e.data),
        (None, None) => {}
    }
    let died = &frames.last().unwrap().data["data"];
    anyhow::ensure!(died["reason"] == "channel_closed", "session_died {died}");
    anyhow::ensure!(died["sessionId"] == s.id.as_str(), "session_died {died}");
    eprintln!(
        "SIGKILL -> session_died: {died_after:?} (exitCode {}, signalCode {})",
        died["exitCode"], died["signalCode"]
    );
    let t = Instant::now();
    if let Err(e) = text_turn(d, s, sse, mock).await {
        // An agent that cannot load its session in a new process fails the restore with an
        // internal error (-32603) from session/load; anything else is a failure.
        if let Some(why) = no_restore
            && e.to_string().contains("\"rpcCode\":-32603")
        {
            return Ok(Outcome::Skip(format!(
                "restore: {why} (the prompt after the crash ended with turn_error -32603)"
            )));
        }
        bail!(
            "the first prompt after the crash: {e:#}; acpd log tail {:?}",
            d.log().iter().rev().take(25).rev().collect::<Vec<_>>()
        );
    }
    let new = d.child_pid(s).await?;
    anyhow::ensure!(new != old, "the same child {old} after the crash");
    eprintln!(
        "restore on a new child ({old} -> {new}) + text turn: {:?}",
        t.elapsed()
    );
    Ok(Outcome::Pass)
}

/// A live session to go on with: `s` when it has a child, else (a restore that failed) a new
/// session and its event stream.
async fn live_session(
    agent: &RealAgent,
    d: &Daemon,
    s: &mut SessionRef,
    sse: &mut Sse,
) -> Result<()> {
    if d.child_pid(s).await.is_ok() {
        return Ok(());
    }
    *s = create_session_within(d, AGENT_WAIT)
        .await
        .with_context(|| format!("{} new session after a failed restore", agent.name))?;
    *sse = d.events(s, Some(0), None).await?;
    eprintln!(
        "{}: session {} has no child: going on with a new session",
        agent.name, s.id
    );
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

/// How a flow ended, besides failing.
enum Outcome {
    Pass,
    /// The agent cannot do the flow here; why.
    Skip(String),
}

impl From<()> for Outcome {
    fn from(_: ()) -> Self {
        Outcome::Pass
    }
}

/// One agent's flows run in order on one daemon and session, each reported as a step with its
/// time; a failed step does not stop the next ones, the test fails at the end naming them all.
struct Steps {
    agent: &'static str,
    report: Vec<String>,
    failed: Vec<String>,
}

impl Steps {
    fn new(agent: &'static str) -> Self {
        Steps {
            agent,
            report: Vec::new(),
            failed: Vec::new(),
        }
    }

    async fn run<T: Into<Outcome>>(
        &mut self,
        name: &str,
        flow: impl std::future::Future<Output = Result<T>>,
    ) {
        eprintln!("== {} {name}", self.agent);
        let t = Instant::now();
        let line = match flow.await {
            Ok(o) => match o.into() {
                Outcome::Pass => format!("pass {:?}", t.elapsed()),
                Outcome::Skip(why) => {
                    eprintln!("skipped: {} {name}: {why}", self.agent);
                    format!("skipped ({why})")
                }
            },
            Err(e) => {
                self.failed.push(format!("{name}: {e:#}"));
                format!("FAILED after {:?}: {e:#}", t.elapsed())
            }
        };
        eprintln!("== {} {name}: {line}", self.agent);
        self.report.push(format!("{} {name}: {line}", self.agent));
    }

    fn finish(self) -> Result<()> {
        eprintln!("{}", self.report.join("\n"));
        if !self.failed.is_empty() {
            bail!("{} failed:\n{}", self.agent, self.failed.join("\n"));
        }
        Ok(())
    }
}

/// Every agent's flows, one after the other on one session: text; read a file; create a new
/// file after a permission vote; edit (overwrite) the file it read, after a vote; cancel a turn
/// held at the LLM (`cancel_hold`: how long the mock holds it); SIGKILL of the agent mid-turn and
/// the restore; SIGTERM of acpd.
async fn all_flows(
    agent: &RealAgent,
    opts: &AgentOptions,
    mock: &MockLlm,
    cancel_hold: Duration,
    no_restore: Option<&str>,
) -> Result<()> {
    let (d, mut s, mut sse) = start(agent, opts).await?;
    let mut steps = Steps::new(agent.name);
    let tag = agent.name.split('-').next().unwrap_or(agent.name);
    let notes = format!("{tag}-notes.txt");
    let original = format!("READ-ME-{tag}-{}\nsecond line\n", std::process::id());
    steps.run("text", text_turn(&d, &s, &mut sse, mock)).await;
    steps
        .run("read", read_file(&d, &s, &mut sse, mock, &notes, &original))
        .await;
    let new_file = format!("{tag}-new-file.txt");
    steps
        .run(
            "create file after a vote",
            write_with_permission(&d, &s, &mut sse, mock, &new_file, None),
        )
        .await;
    steps
        .run(
            "edit existing file after a vote",
            write_with_permission(&d, &s, &mut sse, mock, &notes, Some(&original)),
        )
        .await;
    steps
        .run("cancel", cancel_turn(&d, &s, &mut sse, mock, cancel_hold))
        .await;
    steps
        .run(
            "crash while idle, restore",
            crash_and_restore(&d, &s, &mut sse, mock, false, no_restore),
        )
        .await;
    live_session(agent, &d, &mut s, &mut sse).await?;
    steps
        .run(
            "crash mid-turn, restore",
            crash_and_restore(&d, &s, &mut sse, mock, true, no_restore),
        )
        .await;
    live_session(agent, &d, &mut s, &mut sse).await?;
    steps.run("shutdown", clean_shutdown(d, &s)).await;
    steps.finish()
}

#[tokio::test]
async fn qwen_code_flows() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions::default();
    let Some(agent) = RealAgent::qwen(&mock, &opts)? else {
        return Ok(());
    };
    all_flows(&agent, &opts, &mock, Duration::from_secs(60), None).await?;
    let log = mock.requests();
    assert!(
        log.iter()
            .all(|r| r.api == "chat" && r.path == "/v1/chat/completions"),
        "qwen speaks OpenAI chat completions: {:?}",
        log.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(log.iter().any(|r| r.reply == "tool_call write_file"));
    Ok(())
}

#[tokio::test]
async fn codex_acp_flows() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    // codex's default mode is read-only: the mock's escalated exec_command asks approval and then
    // runs outside codex's sandbox (none here: no bubblewrap in the container). It ignores stdin
    // EOF: shutdown must signal its group.
    let opts = AgentOptions {
        args: vec!["--agent-scope".into(), "session".into()],
        ..AgentOptions::default()
    };
    let Some(agent) = RealAgent::codex(&mock, &opts)? else {
        return Ok(());
    };
    all_flows(&agent, &opts, &mock, Duration::from_secs(60), None).await?;
    assert!(mock.requests().iter().all(|r| r.path == "/v1/responses"));
    Ok(())
}

#[tokio::test]
async fn claude_code_acp_flows() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions::default();
    let Some(agent) = RealAgent::claude(&mock, &opts)? else {
        return Ok(());
    };
    // claude finishes its in-flight LLM request before it ends a cancelled turn: a short hold.
    all_flows(&agent, &opts, &mock, Duration::from_secs(5), None).await?;
    assert!(
        mock.requests()
            .iter()
            .filter(|r| r.reply.starts_with("tool_call"))
            .all(|r| r.api == "anthropic")
    );
    Ok(())
}

/// gemini-cli reads the file through fs/read_text_file before writing it and fails the write on
/// any error there; acpd answers a missing file inside the workspace with empty content, as Zed
/// does, so the new file is created after the vote. Its own `read_file` reads the disk.
#[tokio::test]
async fn gemini_cli_flows() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mock = MockLlm::start("text").await?;
    let opts = AgentOptions::default();

    let Some(agent) = RealAgent::gemini(&mock, &opts)? else {
        return Ok(());
    };
    // gemini-cli 0.61.0 answers acpd's session/load in a new process with -32603 (internal
    // error) for the sessions of this test (once in several runs, a session of one turn was
    // restored). Driven directly over ACP, without acpd, it fails the load of a session without
    // messages the same way: "No previous sessions found for this project."
    let no_restore = "gemini-cli 0.61.0 fails session/load (-32603) in a new process";
    all_flows(
        &agent,
        &opts,
        &mock,
        Duration::from_secs(60),
        Some(no_restore),
    )
    .await
    .with_context(|| {
        // What gemini-cli told the LLM about its tools, from the mock's log.
        let answer: Vec<String> = mock
            .requests()
            .iter()
            .flat_map(|r| r.body["contents"].as_array().cloned().unwrap_or_default())
            .flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p.get("functionResponse").map(|f| f["response"].to_string()))
            .collect();
        // The sessions it recorded (what its session/load restores from).
        let chats: Vec<String> = walk(&agent.home.path().join(".gemini"))
            .into_iter()
            .filter(|p| p.contains("chats"))
            .collect();
        format!("gemini-cli; tool results sent to the LLM: {answer:?}; recorded chats {chats:?}")
    })
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
        write_with_permission(&d, &s, &mut sse, mock, &format!("{file}.txt"), None)
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

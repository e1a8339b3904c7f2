//! Real ACP agents pointed at the [`MockLlm`], served by acpd, for end-to-end tests.
//!
//! `.ci/run` (through `tests/scripts/install-agents.sh`) installs them pinned and exports where:
//! `ACPD_NODE22` (node 22), `ACPD_QWEN_CLI` (qwen-code's `cli-entry.js`), `ACPD_GEMINI_CLI`
//! (gemini-cli's `bundle/gemini.js`), `ACPD_CLAUDE_ACP` (claude-code-acp's `dist/index.js`),
//! `ACPD_CODEX_ACP` (the codex-acp binary). When one is missing, [`RealAgent::qwen`] and friends
//! print `skipped: <reason>` and return `None`: the test then returns without asserting.
//!
//! Each agent gets a throw-away HOME with its configuration pointing at the mock, and is started
//! by acpd (`--agent`) with its environment given to the daemon, which passes it on to its child.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use acpd_tests::mock_llm::{MockLlm, agents::{AgentOptions, qwen_daemon}};
//! let mock = MockLlm::start("text").await?;
//! let opts = AgentOptions {
//!     env: vec![("QWEN_TELEMETRY_ENABLED".into(), "true".into())],
//!     settings: Some(serde_json::json!({"telemetry": {"enabled": true, "logPrompts": true}})),
//!     ..AgentOptions::default()
//! };
//! let Some((daemon, _home)) = qwen_daemon(&mock, &opts).await? else { return Ok(()) };
//! # Ok(()) }
//! ```

use super::MockLlm;
use crate::{Daemon, SessionRef};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// Deadline for an agent's start-up steps and turns: node agents take 1-8 s to start on an idle
/// machine, several times that on a busy one.
pub const AGENT_WAIT: Duration = Duration::from_secs(90);

/// What a test adds to an agent's set-up.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Extra `acpd.toml` content (passed with `--config`).
    pub config: String,
    /// Extra `acpd serve` arguments.
    pub args: Vec<String>,
    /// Extra environment for the agent (given to the daemon, which passes it on).
    pub env: Vec<(String, String)>,
    /// JSON merged (top-level keys) into the agent's settings file in its HOME: qwen
    /// `.qwen/settings.json`, gemini `.gemini/settings.json`, claude `.claude/settings.json`;
    /// codex takes TOML, so for codex this is ignored (use `codex_config`).
    pub settings: Option<Value>,
    /// Extra lines appended to codex's `config.toml`.
    pub codex_config: String,
}

/// An installed agent, configured against a mock: the command line acpd runs and the
/// environment it needs. Dropping it removes its HOME.
#[derive(Debug)]
pub struct RealAgent {
    pub name: &'static str,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub home: TempDir,
}

/// Prints `skipped: <reason>` (the test then returns without asserting).
pub fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// The installed file named by environment variable `var`, or why not.
fn installed(var: &str, what: &str) -> std::result::Result<PathBuf, String> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.exists() {
                Ok(p)
            } else {
                Err(format!("{var}={} does not exist ({what})", p.display()))
            }
        }
        _ => Err(format!(
            "{var} is not set: {what} is not installed (.ci/run installs it: tests/scripts/install-agents.sh)"
        )),
    }
}

/// `Some` of both paths, or `None` after printing why not.
fn installed_with_node(var: &str, what: &str) -> Option<(PathBuf, PathBuf)> {
    match (installed("ACPD_NODE22", "node 22"), installed(var, what)) {
        (Ok(node), Ok(entry)) => Some((node, entry)),
        (Err(e), _) | (_, Err(e)) => {
            skip(&e);
            None
        }
    }
}

/// A word for acpd's shell-like command line (single-quoted when needed).
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@:=,".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `PATH` with node 22's directory first (agents that spawn `node` get the same one).
fn path_with(node: &Path) -> String {
    let dir = node.parent().unwrap_or(Path::new("/"));
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", dir.display()),
        _ => dir.display().to_string(),
    }
}

/// Writes `settings` (merged over `base`) as JSON to `home/rel`.
fn write_settings(home: &Path, rel: &str, base: Value, settings: Option<&Value>) -> Result<()> {
    let mut v = base;
    if let (Some(obj), Some(Value::Object(extra))) = (v.as_object_mut(), settings) {
        for (k, x) in extra {
            obj.insert(k.clone(), x.clone());
        }
    }
    if v.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(());
    }
    let p = home.join(rel);
    std::fs::create_dir_all(p.parent().context("settings dir")?)?;
    std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

fn pairs(list: &[(&str, String)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl RealAgent {
    /// qwen-code 0.24 (`cli-entry.js --acp --approval-mode default`: otherwise its ACP sessions
    /// start in `auto` mode and never ask permission), on node 22, over OpenAI Chat Completions.
    pub fn qwen(mock: &MockLlm, opts: &AgentOptions) -> Result<Option<RealAgent>> {
        let Some((node, cli)) = installed_with_node("ACPD_QWEN_CLI", "qwen-code") else {
            return Ok(None);
        };
        let home = tempfile::tempdir()?;
        write_settings(
            home.path(),
            ".qwen/settings.json",
            json!({}),
            opts.settings.as_ref(),
        )?;
        let env = pairs(&[
            ("PATH", path_with(&node)),
            ("OPENAI_API_KEY", "sk-mock".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.base_url())),
            ("OPENAI_MODEL", "mock-model".into()),
        ]);
        Ok(Some(Self::finish(
            "qwen-code",
            format!(
                "{} {} --acp --approval-mode default",
                quote(&node),
                quote(&cli)
            ),
            env,
            home,
            opts,
        )))
    }

    /// gemini-cli 0.61 (`bundle/gemini.js --experimental-acp -m mock-model`) over the Gemini API.
    pub fn gemini(mock: &MockLlm, opts: &AgentOptions) -> Result<Option<RealAgent>> {
        let Some((node, cli)) = installed_with_node("ACPD_GEMINI_CLI", "gemini-cli") else {
            return Ok(None);
        };
        let home = tempfile::tempdir()?;
        write_settings(
            home.path(),
            ".gemini/settings.json",
            json!({}),
            opts.settings.as_ref(),
        )?;
        let env = pairs(&[
            ("PATH", path_with(&node)),
            ("GEMINI_API_KEY", "mock-key".into()),
            ("GOOGLE_GEMINI_BASE_URL", mock.base_url()),
        ]);
        Ok(Some(Self::finish(
            "gemini-cli",
            format!(
                "{} {} --experimental-acp -m mock-model",
                quote(&node),
                quote(&cli)
            ),
            env,
            home,
            opts,
        )))
    }

    /// claude-code-acp 0.16 (`dist/index.js`, which runs the Claude Code CLI) over Anthropic
    /// Messages. `IS_SANDBOX=1`: Claude Code refuses to run as root otherwise.
    pub fn claude(mock: &MockLlm, opts: &AgentOptions) -> Result<Option<RealAgent>> {
        let Some((node, entry)) = installed_with_node("ACPD_CLAUDE_ACP", "claude-code-acp") else {
            return Ok(None);
        };
        let home = tempfile::tempdir()?;
        write_settings(
            home.path(),
            ".claude/settings.json",
            json!({}),
            opts.settings.as_ref(),
        )?;
        let env = pairs(&[
            ("PATH", path_with(&node)),
            ("IS_SANDBOX", "1".into()),
            ("ANTHROPIC_BASE_URL", mock.base_url()),
            ("ANTHROPIC_API_KEY", "sk-ant-mock".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            ("DISABLE_TELEMETRY", "1".into()),
        ]);
        Ok(Some(Self::finish(
            "claude-code-acp",
            format!("{} {}", quote(&node), quote(&entry)),
            env,
            home,
            opts,
        )))
    }

    /// codex-acp 0.16 (a static binary) over OpenAI Responses, configured by
    /// `$CODEX_HOME/config.toml` (a provider other than "openai" skips its login check).
    pub fn codex(mock: &MockLlm, opts: &AgentOptions) -> Result<Option<RealAgent>> {
        let bin = match installed("ACPD_CODEX_ACP", "codex-acp") {
            Ok(b) => b,
            Err(e) => {
                skip(&e);
                return Ok(None);
            }
        };
        let home = tempfile::tempdir()?;
        let codex_home = home.path().join(".codex");
        std::fs::create_dir_all(&codex_home)?;
        std::fs::write(
            codex_home.join("config.toml"),
            format!(
                "model = \"mock-model\"\nmodel_provider = \"mock\"\ncheck_for_update_on_startup = false\n\
                 {}\n\
                 [model_providers.mock]\nname = \"mock\"\nbase_url = \"{}/v1\"\n\
                 env_key = \"MOCK_API_KEY\"\nwire_api = \"responses\"\nrequest_max_retries = 0\nstream_max_retries = 0\n\
                 [analytics]\nenabled = false\n",
                opts.codex_config,
                mock.base_url()
            ),
        )?;
        let env = pairs(&[
            ("CODEX_HOME", codex_home.display().to_string()),
            ("MOCK_API_KEY", "mock-key".into()),
            ("RUST_LOG", "warn".into()),
        ]);
        Ok(Some(Self::finish(
            "codex-acp",
            quote(&bin),
            env,
            home,
            opts,
        )))
    }

    fn finish(
        name: &'static str,
        command: String,
        mut env: Vec<(String, String)>,
        home: TempDir,
        opts: &AgentOptions,
    ) -> RealAgent {
        env.insert(0, ("HOME".into(), home.path().display().to_string()));
        // acpd itself keeps its compiled-plugin cache where it was (HOME changes for the agent).
        if std::env::var_os("ACPD_CACHE_DIR").is_none()
            && let Some(cache) = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        {
            env.push((
                "ACPD_CACHE_DIR".into(),
                cache.join("acpd").display().to_string(),
            ));
        }
        env.extend(opts.env.iter().cloned());
        RealAgent {
            name,
            command,
            env,
            home,
        }
    }

    /// Starts acpd serving this agent (`--agent`), with `opts.config` and `opts.args`.
    pub async fn daemon(&self, opts: &AgentOptions) -> Result<Daemon> {
        let mut b = Daemon::builder().args(&["--agent", &self.command]);
        let args: Vec<&str> = opts.args.iter().map(String::as_str).collect();
        b = b.args(&args);
        if !opts.config.is_empty() {
            b = b.config(&opts.config);
        }
        for (k, v) in &self.env {
            b = b.env(k, v);
        }
        b.start().await
    }
}

/// acpd serving the real qwen-code child pointed at `mock`, with `opts` added; `None` (after
/// printing `skipped: <reason>`) when qwen-code or node 22 is not installed. Keep the returned
/// HOME alive as long as the daemon.
pub async fn qwen_daemon(mock: &MockLlm, opts: &AgentOptions) -> Result<Option<(Daemon, TempDir)>> {
    let Some(agent) = RealAgent::qwen(mock, opts)? else {
        return Ok(None);
    };
    let d = agent.daemon(opts).await?;
    Ok(Some((d, agent.home)))
}

/// `POST /session` (a new thread-scoped session) with a deadline fit for a real agent's start.
pub async fn create_session_within(d: &Daemon, within: Duration) -> Result<SessionRef> {
    let r = d
        .send(
            d.http
                .post(d.url("/session"))
                .json(&json!({"sessionScope": "thread"}))
                .timeout(within),
        )
        .await?;
    if r.status != 200 {
        bail!("POST /session -> {}: {}", r.status, r.body);
    }
    Ok(SessionRef {
        id: r.body["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string(),
        client_id: r.body["clientId"].as_str().context("clientId")?.to_string(),
    })
}

//! acpd's first-party error-translation plugin: what a client reads when something fails.
//!
//! - `messages`: code -> client message (defaults below; yours are merged over them);
//! - `hide_5xx_detail` (default true): a 5xx without a message of its own gets a generic one,
//!   so internal detail (paths, agent output) never reaches clients;
//! - `retryable`: codes a client may retry (with `retry_after` seconds per code, else the
//!   daemon's own value);
//! - `rpc_messages`: the agent's JSON-RPC error code -> message, for `agent_error`;
//! - `codes`: code -> code, for clients that expect other names.
//!
//! The daemon's own sanitiser still runs on whatever this returns.

use acpd_plugin_sdk::{
    ClientError, Config, Error, ErrorInfo, ErrorTranslator, Plugin, export_plugin,
};
use serde::Deserialize;
use std::collections::BTreeMap;

const DEFAULT_MESSAGES: &[(&str, &str)] = &[
    (
        "agent_exited",
        "The agent stopped unexpectedly. Your session will be restored on the next request.",
    ),
    (
        "agent_unavailable",
        "The agent is not available right now. Please retry shortly.",
    ),
    (
        "agent_spawn_failed",
        "The agent is not installed correctly on this server. Please contact its operator.",
    ),
    ("agent_error", "The agent could not complete the request."),
    (
        "turn_timeout",
        "The agent took too long and the turn was cancelled.",
    ),
    (
        "cancel_timeout",
        "The agent did not stop in time after the cancel.",
    ),
    (
        "prompt_queue_full",
        "Too many prompts are waiting for this session. Please retry shortly.",
    ),
    (
        "session_limit_exceeded",
        "The server is at its session limit. Please retry shortly.",
    ),
    (
        "daemon_draining",
        "The server is restarting. Please retry shortly.",
    ),
    ("internal_error", "Something went wrong on our side."),
];

const DEFAULT_RETRYABLE: &[&str] = &[
    "agent_exited",
    "agent_unavailable",
    "turn_timeout",
    "prompt_queue_full",
    "session_limit_exceeded",
    "daemon_draining",
];

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Cfg {
    messages: BTreeMap<String, String>,
    hide_5xx_detail: bool,
    retryable: Option<Vec<String>>,
    retry_after: BTreeMap<String, u32>,
    rpc_messages: BTreeMap<String, String>,
    codes: BTreeMap<String, String>,
}

impl Default for Cfg {
    fn default() -> Self {
        Self {
            messages: BTreeMap::new(),
            hide_5xx_detail: true,
            retryable: None,
            retry_after: BTreeMap::new(),
            rpc_messages: BTreeMap::new(),
            codes: BTreeMap::new(),
        }
    }
}

fn snake(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.starts_with(|ch: char| ch.is_ascii_lowercase())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub struct Errors {
    messages: BTreeMap<String, String>,
    hide_5xx: bool,
    retryable: Vec<String>,
    retry_after: BTreeMap<String, u32>,
    rpc: BTreeMap<i32, String>,
    codes: BTreeMap<String, String>,
}

impl Plugin for Errors {
    const NAME: &'static str = "errors";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn init(config: Config) -> Result<Self, Error> {
        let c: Cfg = config.parse()?;
        let mut messages: BTreeMap<String, String> = DEFAULT_MESSAGES
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in c.messages {
            if v.trim().is_empty() || v.len() > 1024 {
                return Err(Error::config(format!("messages.{k}: 1 to 1024 bytes")));
            }
            messages.insert(k, v);
        }
        let mut rpc = BTreeMap::new();
        for (k, v) in c.rpc_messages {
            let code: i32 = k.parse().map_err(|_| {
                Error::config(format!("rpc_messages: {k:?} is not a JSON-RPC error code"))
            })?;
            rpc.insert(code, v);
        }
        for (from, to) in &c.codes {
            if !snake(to) {
                return Err(Error::config(format!(
                    "codes.{from}: {to:?} is not snake_case"
                )));
            }
        }
        Ok(Errors {
            messages,
            hide_5xx: c.hide_5xx_detail,
            retryable: c
                .retryable
                .unwrap_or_else(|| DEFAULT_RETRYABLE.iter().map(|s| s.to_string()).collect()),
            retry_after: c.retry_after,
            rpc,
            codes: c.codes,
        })
    }
}

impl ErrorTranslator for Errors {
    fn translate(&mut self, err: &ErrorInfo) -> Result<Option<ClientError>, Error> {
        let message = err
            .rpc_code
            .and_then(|c| self.rpc.get(&c).cloned())
            .or_else(|| self.messages.get(&err.code).cloned())
            .or_else(|| {
                (self.hide_5xx && err.status >= 500)
                    .then(|| format!("The agent service had a problem (code {}).", err.code))
            });
        let retryable = self.retryable.contains(&err.code);
        let code = self.codes.get(&err.code).cloned();
        if message.is_none() && !retryable && code.is_none() {
            return Ok(None);
        }
        let retry_after = self.retry_after.get(&err.code).copied().or(err.retry_after);
        Ok(Some(ClientError {
            status: err.status,
            code: code.unwrap_or_else(|| err.code.clone()),
            message: message.unwrap_or_else(|| err.message.clone()),
            retryable,
            retry_after: if retryable {
                retry_after
            } else {
                err.retry_after
            },
        }))
    }
}

export_plugin!(Errors);

#[cfg(test)]
mod tests {
    use super::*;
    use acpd_plugin_sdk::Surface;

    fn info(code: &str, status: u16, message: &str) -> ErrorInfo {
        ErrorInfo {
            surface: Surface::Sse,
            code: code.into(),
            status,
            message: message.into(),
            retry_after: None,
            context: serde_json::json!({}),
            rpc_code: None,
        }
    }

    fn errors(c: &str) -> Errors {
        Errors::init(Config::from_json(c).unwrap()).unwrap()
    }

    #[test]
    fn known_codes_get_friendly_retryable_messages() {
        let out = errors("{}")
            .translate(&info("agent_exited", 502, "exit code 3 at /srv/x"))
            .unwrap()
            .unwrap();
        assert!(out.message.starts_with("The agent stopped unexpectedly"));
        assert!(out.retryable);
        assert_eq!((out.status, out.code.as_str()), (502, "agent_exited"));
    }

    #[test]
    fn unknown_5xx_detail_is_hidden_and_4xx_kept() {
        let mut e = errors("{}");
        let out = e
            .translate(&info("weird_failure", 500, "panic at /home/u/src"))
            .unwrap()
            .unwrap();
        assert!(!out.message.contains("/home"), "{}", out.message);
        assert_eq!(
            e.translate(&info("session_not_found", 404, "Session not found: x"))
                .unwrap(),
            None
        );
        let mut shown = errors(r#"{"hide_5xx_detail": false}"#);
        assert_eq!(
            shown.translate(&info("weird_failure", 500, "x")).unwrap(),
            None
        );
    }

    #[test]
    fn config_overrides_messages_codes_rpc_and_retry_after() {
        let mut e = errors(
            r#"{"messages": {"session_not_found": "No such chat."}, "codes": {"session_not_found": "chat_not_found"},
                "rpc_messages": {"-32000": "The model is overloaded."}, "retry_after": {"agent_exited": 2}}"#,
        );
        let out = e
            .translate(&info("session_not_found", 404, "x"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (out.code.as_str(), out.message.as_str()),
            ("chat_not_found", "No such chat.")
        );
        let mut rpc = info("agent_error", 502, "boom");
        rpc.rpc_code = Some(-32000);
        assert_eq!(
            e.translate(&rpc).unwrap().unwrap().message,
            "The model is overloaded."
        );
        assert_eq!(
            e.translate(&info("agent_exited", 502, "x"))
                .unwrap()
                .unwrap()
                .retry_after,
            Some(2)
        );
        assert!(
            Errors::init(Config::from_json(r#"{"codes": {"a": "Not Snake"}}"#).unwrap()).is_err()
        );
    }
}

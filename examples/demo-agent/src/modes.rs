//! The demo agent's session modes and model choice, announced in `session/new` and
//! `session/load` as ACP `modes` and a `model` select config option, switched with
//! `session/set_mode` and `session/set_config_option`, and by the `mode <id>` prompt command
//! (the agent switching itself, announced with `current_mode_update`).
//!
//! The modes are Qwen Code's approval modes; [`BROKEN_MODEL`] is listed but every switch to it
//! fails, so clients can see a refused switch.

use agent_client_protocol::Error;
use agent_client_protocol::v1::schema::{
    SessionConfigOption, SessionConfigOptionCategory, SessionConfigSelectOption, SessionId,
    SessionMode, SessionModeState,
};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

pub const MODES: &[&str] = &["default", "plan", "auto-edit", "yolo"];
pub const MODELS: &[&str] = &["demo-fast", "demo-smart", BROKEN_MODEL];
/// Listed, but switching to it fails (`-32603`).
pub const BROKEN_MODEL: &str = "demo-broken";
/// The id of the model config option.
pub const MODEL_OPTION: &str = "model";
/// Env var: when set, the agent announces neither modes nor config options (an agent that
/// cannot switch).
pub const PLAIN_ENV: &str = "ACPD_DEMO_PLAIN";

fn plain() -> bool {
    std::env::var_os(PLAIN_ENV).is_some()
}

/// Per session: (mode, model).
static CURRENT: LazyLock<Mutex<HashMap<String, (String, String)>>> = LazyLock::new(Mutex::default);

fn current(id: &SessionId) -> (String, String) {
    CURRENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id.to_string())
        .or_insert_with(|| (MODES[0].to_string(), MODELS[0].to_string()))
        .clone()
}

fn set(id: &SessionId, mode: Option<&str>, model: Option<&str>) {
    let mut all = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    let entry = all
        .entry(id.to_string())
        .or_insert_with(|| (MODES[0].to_string(), MODELS[0].to_string()));
    if let Some(m) = mode {
        entry.0 = m.to_string();
    }
    if let Some(m) = model {
        entry.1 = m.to_string();
    }
}

/// The session's modes (`modes` of `session/new` and `session/load`).
pub fn modes(id: &SessionId) -> Option<SessionModeState> {
    if plain() {
        return None;
    }
    let available = MODES.iter().map(|m| SessionMode::new(*m, *m)).collect();
    Some(SessionModeState::new(current(id).0, available))
}

/// The session's config options: one select of category `model`.
pub fn config_options(id: &SessionId) -> Option<Vec<SessionConfigOption>> {
    if plain() {
        return None;
    }
    Some(options(id))
}

fn options(id: &SessionId) -> Vec<SessionConfigOption> {
    let options: Vec<SessionConfigSelectOption> = MODELS
        .iter()
        .map(|m| SessionConfigSelectOption::new(*m, *m))
        .collect();
    vec![
        SessionConfigOption::select(MODEL_OPTION, "Model", current(id).1, options)
            .category(SessionConfigOptionCategory::Model),
    ]
}

/// `session/set_mode`.
pub fn set_mode(id: &SessionId, mode: &str) -> Result<(), Error> {
    if !MODES.contains(&mode) {
        return Err(Error::invalid_params().data(serde_json::json!({"unknownMode": mode})));
    }
    set(id, Some(mode), None);
    Ok(())
}

/// `session/set_config_option`: the new list of options.
pub fn set_option(
    id: &SessionId,
    option: &str,
    value: &str,
) -> Result<Vec<SessionConfigOption>, Error> {
    if option != MODEL_OPTION || !MODELS.contains(&value) {
        return Err(Error::invalid_params()
            .data(serde_json::json!({"unknownOption": option, "value": value})));
    }
    if value == BROKEN_MODEL {
        return Err(Error::internal_error()
            .data(serde_json::json!({"reason": "this model is broken on purpose"})));
    }
    set(id, None, Some(value));
    Ok(options(id))
}

/// Answers `session/set_mode`.
pub fn on_set_mode(
    req: &agent_client_protocol::v1::schema::SetSessionModeRequest,
) -> Result<agent_client_protocol::v1::schema::SetSessionModeResponse, Error> {
    set_mode(&req.session_id, &req.mode_id.to_string())
        .map(|()| agent_client_protocol::v1::schema::SetSessionModeResponse::new())
}

/// Answers `session/set_config_option` (select values only).
pub fn on_set_option(
    req: &agent_client_protocol::v1::schema::SetSessionConfigOptionRequest,
) -> Result<agent_client_protocol::v1::schema::SetSessionConfigOptionResponse, Error> {
    use agent_client_protocol::v1::schema::SessionConfigOptionValue;
    let value = match &req.value {
        SessionConfigOptionValue::ValueId { value } => value.to_string(),
        _ => {
            return Err(
                Error::invalid_params().data(serde_json::json!({"reason": "select values only"}))
            );
        }
    };
    set_option(&req.session_id, &req.config_id.to_string(), &value)
        .map(agent_client_protocol::v1::schema::SetSessionConfigOptionResponse::new)
}

/// The `mode <id>` prompt command: the agent switches itself and says so.
pub fn self_switch(
    id: &SessionId,
    mode: &str,
) -> Result<agent_client_protocol::v1::schema::SessionUpdate, Error> {
    set_mode(id, mode)?;
    Ok(
        agent_client_protocol::v1::schema::SessionUpdate::CurrentModeUpdate(
            agent_client_protocol::v1::schema::CurrentModeUpdate::new(mode.to_string()),
        ),
    )
}

//! What a session's agent announced about itself (its models, modes and config options, from
//! `session/new` or `session/load`, kept current from its `current_mode_update` and
//! `config_option_update` notifications and from the switches acpd made), and what clients set
//! on the session (display name, pull requests) or learnt from its turns (the last turn error).
//!
//! Kept as the agent's JSON (camelCase, as ACP has it): clients get exactly what the agent said,
//! including fields of ACP extensions acpd does not model (Qwen Code's `models`).

use serde_json::{Map, Value, json};
use std::sync::Mutex;

/// Longest `displayName` kept (characters); longer ones are truncated.
pub const MAX_DISPLAY_NAME: usize = 256;
/// Pull requests kept per session; binding one more drops the oldest.
pub const MAX_PRS: usize = 50;

#[derive(Default)]
pub struct SessionContext {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    meta: Option<Value>,
    models: Option<Value>,
    modes: Option<Value>,
    config_options: Option<Value>,
    display_name: Option<String>,
    prs: Vec<Value>,
    turn_error: Option<Value>,
}

/// How the session's model can be switched, as the agent announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// ACP `session/set_model` (Qwen Code's `models`): the ids it listed, and the current one.
    SetModel {
        available: Vec<String>,
        current: Option<String>,
    },
    /// ACP `session/set_mode`: the mode ids it listed, and the current one.
    SetMode {
        available: Vec<String>,
        current: Option<String>,
    },
    /// ACP `session/set_config_option` on a select option of the right category.
    ConfigOption {
        config_id: String,
        available: Vec<String>,
        current: Option<String>,
    },
    /// The agent announced no way to switch.
    Unsupported,
}

impl Switch {
    pub fn available(&self) -> &[String] {
        match self {
            Switch::SetModel { available, .. }
            | Switch::SetMode { available, .. }
            | Switch::ConfigOption { available, .. } => available,
            Switch::Unsupported => &[],
        }
    }

    pub fn current(&self) -> Option<&str> {
        match self {
            Switch::SetModel { current, .. }
            | Switch::SetMode { current, .. }
            | Switch::ConfigOption { current, .. } => current.as_deref(),
            Switch::Unsupported => None,
        }
    }
}

impl SessionContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent's answer to `session/new` or `session/load`: what it announces replaces what
    /// was known (an agent that restores a session may announce less; nothing is invented).
    pub fn announce(&self, response: &Value) {
        let mut inner = self.lock();
        let take = |key: &str| response.get(key).filter(|v| !v.is_null()).cloned();
        if let Some(v) = take("models") {
            inner.models = Some(v);
        }
        if let Some(v) = take("modes") {
            inner.modes = Some(v);
        }
        if let Some(v) = take("configOptions") {
            inner.config_options = Some(v);
        }
        if let Some(v) = take("_meta") {
            inner.meta = Some(v);
        }
    }

    /// What the journal kept (`{displayName?, prs?, state?}`, as `Session::persist_meta` wrote
    /// it), for a session restored at start-up.
    pub fn restore(&self, meta: &Value) {
        if let Some(state) = meta.get("state") {
            self.announce(state);
        }
        let mut inner = self.lock();
        if let Some(n) = meta.get("displayName").and_then(Value::as_str) {
            inner.display_name = Some(n.to_string());
        }
        if let Some(prs) = meta.get("prs").and_then(Value::as_array) {
            inner.prs = prs.iter().take(MAX_PRS).cloned().collect();
        }
    }

    /// A `session/update` notification's params (`{sessionId, update}`).
    pub fn observe(&self, notification: &Value) {
        let Some(update) = notification.get("update") else {
            return;
        };
        match update.get("sessionUpdate").and_then(Value::as_str) {
            Some("current_mode_update") => {
                if let Some(id) = update.get("currentModeId").and_then(Value::as_str) {
                    self.set_current_mode(id);
                }
            }
            Some("config_option_update") => {
                if let Some(options) = update.get("configOptions").filter(|v| v.is_array()) {
                    self.lock().config_options = Some(options.clone());
                }
            }
            _ => {}
        }
    }

    /// `{_meta?, models?, modes?, configOptions?}`: the contract's `SessionState`.
    pub fn state(&self) -> Value {
        let inner = self.lock();
        let mut state = Map::new();
        for (key, value) in [
            ("_meta", &inner.meta),
            ("models", &inner.models),
            ("modes", &inner.modes),
            ("configOptions", &inner.config_options),
        ] {
            if let Some(v) = value {
                state.insert(key.to_string(), v.clone());
            }
        }
        Value::Object(state)
    }

    /// How to switch the model: `session/set_model` when the agent announced `models`, else a
    /// select config option of category `model`.
    pub fn model_switch(&self) -> Switch {
        let inner = self.lock();
        if let Some(models) = &inner.models {
            return Switch::SetModel {
                available: ids(models.get("availableModels"), "modelId"),
                current: str_at(models, "currentModelId"),
            };
        }
        config_switch(inner.config_options.as_ref(), "model")
    }

    /// How to switch the approval mode: `session/set_mode` when the agent announced `modes`,
    /// else a select config option of category `mode`.
    pub fn mode_switch(&self) -> Switch {
        let inner = self.lock();
        if let Some(modes) = &inner.modes {
            return Switch::SetMode {
                available: ids(modes.get("availableModes"), "id"),
                current: str_at(modes, "currentModeId"),
            };
        }
        config_switch(inner.config_options.as_ref(), "mode")
    }

    pub fn set_current_model(&self, id: &str) {
        if let Some(models) = self.lock().models.as_mut().and_then(Value::as_object_mut) {
            models.insert("currentModelId".into(), json!(id));
        }
    }

    pub fn set_current_mode(&self, id: &str) {
        if let Some(modes) = self.lock().modes.as_mut().and_then(Value::as_object_mut) {
            modes.insert("currentModeId".into(), json!(id));
        }
    }

    /// After `session/set_config_option`: the agent's full list when it sent one, else the one
    /// option's new value.
    pub fn set_config_value(&self, config_id: &str, value: &str, full: Option<&Value>) {
        let mut inner = self.lock();
        if let Some(list) = full.filter(|v| v.is_array()) {
            inner.config_options = Some(list.clone());
            return;
        }
        if let Some(options) = inner.config_options.as_mut().and_then(Value::as_array_mut) {
            for o in options {
                if o.get("id").and_then(Value::as_str) == Some(config_id)
                    && let Some(o) = o.as_object_mut()
                {
                    o.insert("currentValue".into(), json!(value));
                }
            }
        }
    }

    // ---- metadata ---------------------------------------------------------------------

    /// Applies a metadata update (already validated) and returns the session's metadata.
    pub fn update_metadata(&self, display_name: Option<String>, pr: Option<Value>) {
        let mut inner = self.lock();
        if let Some(name) = display_name {
            inner.display_name = Some(name);
        }
        if let Some(pr) = pr {
            let number = pr.get("number").cloned();
            match inner
                .prs
                .iter_mut()
                .find(|p| p.get("number") == number.as_ref())
            {
                Some(existing) => merge(existing, pr),
                None => {
                    inner.prs.push(pr);
                    if inner.prs.len() > MAX_PRS {
                        inner.prs.remove(0);
                    }
                }
            }
        }
    }

    pub fn display_name(&self) -> Option<String> {
        self.lock().display_name.clone()
    }

    pub fn prs(&self) -> Vec<Value> {
        self.lock().prs.clone()
    }

    // ---- turn errors ------------------------------------------------------------------

    /// The last turn's error (`{message, code}`), or none when it ended well.
    pub fn set_turn_error(&self, error: Option<Value>) {
        self.lock().turn_error = error;
    }

    pub fn turn_error(&self) -> Option<Value> {
        self.lock().turn_error.clone()
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn str_at(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The `key` of each object in an array.
fn ids(list: Option<&Value>, key: &str) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| str_at(item, key))
        .collect()
}

/// A select config option of `category` (ACP `SessionConfigOptionCategory`).
fn config_switch(options: Option<&Value>, category: &str) -> Switch {
    let Some(option) = options
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|o| {
            o.get("category").and_then(Value::as_str) == Some(category)
                && o.get("type").and_then(Value::as_str) == Some("select")
        })
    else {
        return Switch::Unsupported;
    };
    let Some(config_id) = str_at(option, "id") else {
        return Switch::Unsupported;
    };
    // Options are a flat list or groups of lists.
    let mut available = Vec::new();
    for item in option
        .get("options")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("options") {
            Some(group) => available.extend(ids(Some(group), "value")),
            None => available.extend(str_at(item, "value")),
        }
    }
    Switch::ConfigOption {
        config_id,
        available,
        current: str_at(option, "currentValue"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_state_is_kept_current_from_notifications() {
        let ctx = SessionContext::default();
        ctx.announce(&json!({
            "sessionId": "s",
            "modes": {"currentModeId": "default", "availableModes": [{"id": "default", "name": "Default"}, {"id": "plan", "name": "Plan"}]},
            "configOptions": [{"id": "model", "name": "Model", "category": "model", "type": "select", "currentValue": "a",
                               "options": [{"value": "a", "name": "A"}, {"group": "g", "name": "G", "options": [{"value": "b", "name": "B"}]}]}],
        }));
        assert_eq!(
            ctx.mode_switch(),
            Switch::SetMode {
                available: vec!["default".into(), "plan".into()],
                current: Some("default".into())
            }
        );
        assert_eq!(
            ctx.model_switch(),
            Switch::ConfigOption {
                config_id: "model".into(),
                available: vec!["a".into(), "b".into()],
                current: Some("a".into())
            }
        );
        ctx.observe(&json!({"sessionId": "s", "update": {"sessionUpdate": "current_mode_update", "currentModeId": "plan"}}));
        assert_eq!(ctx.state()["modes"]["currentModeId"], "plan");
        ctx.set_config_value("model", "b", None);
        assert_eq!(ctx.model_switch().current(), Some("b"));
        ctx.observe(
            &json!({"update": {"sessionUpdate": "config_option_update", "configOptions": []}}),
        );
        assert_eq!(ctx.model_switch(), Switch::Unsupported);
        // Qwen Code's `models` win over a config option.
        ctx.announce(&json!({"models": {"currentModelId": "q", "availableModels": [{"modelId": "q", "name": "Q"}]}}));
        assert!(matches!(ctx.model_switch(), Switch::SetModel { .. }));
        assert!(ctx.state().get("_meta").is_none());
    }

    #[test]
    fn pull_requests_merge_by_number_and_stay_bounded() {
        let ctx = SessionContext::default();
        ctx.update_metadata(
            Some("n".into()),
            Some(json!({"number": 1, "url": "https://x/1"})),
        );
        ctx.update_metadata(
            None,
            Some(json!({"number": 1, "url": "https://x/1", "state": "merged"})),
        );
        assert_eq!(
            ctx.prs(),
            vec![json!({"number": 1, "url": "https://x/1", "state": "merged"})]
        );
        for n in 2..=(MAX_PRS as u64 + 5) {
            ctx.update_metadata(None, Some(json!({"number": n, "url": "https://x"})));
        }
        assert_eq!(ctx.prs().len(), MAX_PRS);
        assert_eq!(ctx.display_name().as_deref(), Some("n"));
    }
}

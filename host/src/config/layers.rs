use super::Config;
use std::fmt;
use std::path::Path;
use toml::{Table, Value};

/// A configuration error that names the key (or env var / file) at fault, printed on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flat = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        write!(f, "invalid config: {}: {}", self.key, flat)
    }
}

impl std::error::Error for ConfigError {}

/// One value set by a flag, addressed by its dotted key.
#[derive(Debug, Clone)]
pub struct Override {
    pub key: &'static str,
    pub value: Value,
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Bool,
    Str,
    List,
    Paths,
}

/// Env vars, lowest precedence first (so `ACPD_TOKEN` beats `QWEN_SERVER_TOKEN`).
const ENV: &[(&str, &str, Kind)] = &[
    ("QWEN_SERVER_TOKEN", "server.token", Kind::Str),
    ("ACPD_TOKEN", "server.token", Kind::Str),
    ("ACPD_PORT", "server.port", Kind::Int),
    ("ACPD_HOSTNAME", "server.hostname", Kind::Str),
    ("ACPD_REQUIRE_AUTH", "server.require_auth", Kind::Bool),
    ("ACPD_WORKER_THREADS", "server.worker_threads", Kind::Int),
    ("ACPD_ALLOW_ORIGIN", "server.allow_origin", Kind::List),
    ("ACPD_WORKSPACE", "workspaces", Kind::Paths),
    ("ACPD_STATE_DIR", "state.dir", Kind::Str),
    ("ACPD_JOURNAL", "state.journal", Kind::Bool),
    ("ACPD_JOURNAL_FSYNC", "state.journal_fsync", Kind::Str),
    ("ACPD_AGENT", "agent.command", Kind::Str),
    ("ACPD_AGENT_SCOPE", "agent.scope", Kind::Str),
    ("ACPD_AGENT_POOL", "agent.pool", Kind::Int),
    ("ACPD_MAX_SESSIONS", "limits.max_sessions", Kind::Int),
    (
        "ACPD_MAX_SESSIONS_PER_WORKSPACE",
        "limits.max_sessions_per_workspace",
        Kind::Int,
    ),
    (
        "ACPD_MAX_PENDING_PROMPTS_PER_SESSION",
        "limits.max_pending_prompts_per_session",
        Kind::Int,
    ),
    (
        "ACPD_PERMISSION_TIMEOUT_SECS",
        "limits.permission_timeout_secs",
        Kind::Int,
    ),
];

/// Builds the configuration from an optional TOML file, the environment and flag overrides.
pub fn load(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    flags: &[Override],
) -> Result<Config, ConfigError> {
    let file_tree = match file {
        Some(path) => read_file(path)?,
        None => Table::new(),
    };
    let mut tree = file_tree.clone();
    // Every value from the environment, with the variable it came from, lowest first.
    let mut from_env: Vec<(&str, &str, Value)> = Vec::new();
    for (var, key, kind) in ENV {
        if let Some(raw) = env(var) {
            let value = parse_env(&raw, *kind).map_err(|m| ConfigError::new(*var, m))?;
            set(&mut tree, key, value.clone()).map_err(|m| ConfigError::new(*var, m))?;
            from_env.push((var, key, value));
        }
    }
    for o in flags {
        set(&mut tree, o.key, o.value.clone()).map_err(|m| ConfigError::new(o.key, m))?;
    }
    let mut config = typed(tree.clone())?;
    config.source = file.map(Path::to_path_buf);
    config.validate()?;
    check_overridden(file, &file_tree, &from_env, flags, &tree)?;
    Ok(config)
}

/// One typed deserialisation of a merged tree; an error names the key at fault.
fn typed(tree: Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(Value::Table(tree)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.inner().message().to_string();
        ConfigError::new(if key == "." { "config".into() } else { key }, message)
    })
}

/// Every layer is valid, not only the values that win: a bad value in the file (or the
/// environment) that a later layer overrides is still a mistake the operator should hear about,
/// before the override is removed one day and the daemon stops starting. Each overridden value
/// is checked in place of the winning one, in the otherwise final configuration, so checks that
/// relate keys (a pool needs session scope) see the same neighbours.
fn check_overridden(
    file: Option<&Path>,
    file_tree: &Table,
    from_env: &[(&str, &str, Value)],
    flags: &[Override],
    merged: &Table,
) -> Result<(), ConfigError> {
    let check = |key: &str, value: &Value, name: String| -> Result<(), ConfigError> {
        let mut tree = merged.clone();
        set(&mut tree, key, value.clone()).map_err(|m| ConfigError::new(name.clone(), m))?;
        typed(tree).and_then(|c| c.validate()).map_err(|e| {
            ConfigError::new(
                name,
                format!("{} (overridden, but still invalid)", e.message),
            )
        })
    };
    let overridden_later = |key: &str, env_from: usize| {
        from_env[env_from..].iter().any(|(_, k, _)| *k == key) || flags.iter().any(|o| o.key == key)
    };
    if let Some(path) = file {
        let keys = from_env
            .iter()
            .map(|(_, k, _)| *k)
            .chain(flags.iter().map(|o| o.key));
        let mut seen = Vec::new();
        for key in keys {
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            if let Some(value) = get(file_tree, key) {
                check(key, value, format!("{key} in {}", path.display()))?;
            }
        }
    }
    for (i, (var, key, value)) in from_env.iter().enumerate() {
        if overridden_later(key, i + 1) {
            check(key, value, (*var).to_string())?;
        }
    }
    Ok(())
}

/// The value at a dotted key, if the tree sets it.
fn get<'a>(tree: &'a Table, dotted: &str) -> Option<&'a Value> {
    let mut parts = dotted.split('.');
    let mut value = tree.get(parts.next()?)?;
    for p in parts {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(&name, e.to_string()))?;
    let mut table: Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| format!(" (line {})", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        ConfigError::new(&name, format!("{}{at}", e.message()))
    })?;
    // Relative workspace paths in a file are relative to the file, not to the daemon's cwd.
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(Value::Array(ws)) = table.get_mut("workspaces") {
        for w in ws.iter_mut() {
            if let Value::String(s) = w
                && Path::new(s.as_str()).is_relative()
            {
                *s = base.join(&*s).display().to_string();
            }
        }
    }
    Ok(table)
}

fn parse_env(raw: &str, kind: Kind) -> Result<Value, String> {
    Ok(match kind {
        Kind::Int => Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("expected an integer, got {raw:?}"))?,
        ),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Value::Boolean(true),
            "0" | "false" | "no" | "off" | "" => Value::Boolean(false),
            _ => return Err(format!("expected true or false, got {raw:?}")),
        },
        Kind::Str => Value::String(raw.to_string()),
        Kind::List => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
        Kind::Paths => Value::Array(
            std::env::split_paths(raw)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| Value::String(p.display().to_string()))
                .collect(),
        ),
    })
}

fn set(tree: &mut Table, dotted: &str, value: Value) -> Result<(), String> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().ok_or("empty key")?;
    let mut table = tree;
    for p in parts {
        let entry = table.entry(p).or_insert_with(|| Value::Table(Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` must be a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// The annotated example ships the defaults: it parses, and its limits are the defaults
    /// (a changed default or a new limit shows here until the example is updated).
    #[test]
    fn the_example_config_parses_and_states_the_default_limits() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/configs/acpd.toml");
        let c = load(Some(&example), no_env, &[]).unwrap();
        assert_eq!(
            format!("{:?}", c.limits),
            format!("{:?}", Config::default().limits)
        );
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("acpd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("acpd.toml");
        std::fs::write(&file, "[server]\nport = 1111\nhostname = \"localhost\"\n").unwrap();
        let env = |k: &str| (k == "ACPD_PORT").then(|| "2222".to_string());
        let c = load(Some(&file), env, &[]).unwrap();
        assert_eq!(
            (c.server.port, c.server.hostname.as_str()),
            (2222, "localhost")
        );
        let flags = [Override {
            key: "server.port",
            value: Value::Integer(3333),
        }];
        assert_eq!(load(Some(&file), env, &flags).unwrap().server.port, 3333);
    }

    #[test]
    fn errors_name_the_key() {
        let env = |k: &str| (k == "ACPD_PORT").then(|| "abc".to_string());
        assert_eq!(load(None, env, &[]).unwrap_err().key, "ACPD_PORT");
        let flags = [Override {
            key: "server.port",
            value: Value::String("x".into()),
        }];
        let e = load(None, no_env, &flags).unwrap_err();
        assert_eq!(e.key, "server.port");
        assert!(!e.to_string().contains('\n'));
        let flags = [Override {
            key: "limits.event_ring",
            value: Value::Integer(0),
        }];
        assert_eq!(
            load(None, no_env, &flags).unwrap_err().key,
            "limits.event_ring"
        );
    }

    #[test]
    fn an_overridden_value_must_still_be_valid() {
        let dir = std::env::temp_dir().join(format!("acpd-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("acpd.toml");
        let port = |v: i64| Override {
            key: "server.port",
            value: Value::Integer(v),
        };
        // A bad type in the file, overridden by a flag.
        std::fs::write(&file, "[server]\nport = \"abc\"\n").unwrap();
        let e = load(Some(&file), no_env, &[port(0)]).unwrap_err();
        assert!(e.key.starts_with("server.port in "), "{e}");
        assert!(e.to_string().contains("acpd.toml"), "{e}");
        // ... or by the environment.
        let env = |k: &str| (k == "ACPD_PORT").then(|| "0".to_string());
        assert!(load(Some(&file), env, &[]).is_err());
        // A value out of range (a limit of 0) in the file.
        std::fs::write(&file, "[limits]\nmax_sessions = 0\n").unwrap();
        let flags = [Override {
            key: "limits.max_sessions",
            value: Value::Integer(4),
        }];
        let e = load(Some(&file), no_env, &flags).unwrap_err();
        assert!(e.to_string().contains("must be at least 1"), "{e}");
        // A bad environment value overridden by a flag names the variable.
        let env = |k: &str| (k == "ACPD_MAX_SESSIONS").then(|| "0".to_string());
        assert_eq!(
            load(None, env, &flags).unwrap_err().key,
            "ACPD_MAX_SESSIONS"
        );
        // Values that relate keys are checked with the final neighbours: a pool in the file is
        // fine when a flag sets session scope, and overriding a valid value is fine.
        std::fs::write(&file, "[agent]\npool = 2\n[server]\nport = 1\n").unwrap();
        let flags = [
            Override {
                key: "agent.scope",
                value: Value::String("session".into()),
            },
            Override {
                key: "agent.pool",
                value: Value::Integer(3),
            },
            port(0),
        ];
        let c = load(Some(&file), no_env, &flags).unwrap();
        assert_eq!((c.agent.pool, c.server.port), (3, 0));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("acpd-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("acpd.toml");
        std::fs::write(&file, "[agent]\ncomand = \"x\"\n").unwrap();
        let e = load(Some(&file), no_env, &[]).unwrap_err();
        assert!(e.to_string().contains("comand"), "{e}");
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let flags = [Override {
            key: "server.hostname",
            value: Value::String("0.0.0.0".into()),
        }];
        assert_eq!(load(None, no_env, &flags).unwrap_err().key, "server.token");
        let env = |k: &str| (k == "QWEN_SERVER_TOKEN").then(|| "s3cret".to_string());
        assert_eq!(
            load(None, env, &flags).unwrap().server.token.as_deref(),
            Some("s3cret")
        );
    }
}

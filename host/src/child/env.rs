use std::collections::BTreeMap;

/// Variables that carry acpd's own secrets or configuration; never inherited by an agent.
const DAEMON_ONLY: &[&str] = &["QWEN_SERVER_TOKEN", "TRACEPARENT", "TRACESTATE"];

/// The child's environment: the daemon's own, minus its secrets (every `ACPD_*` variable, the
/// token under any name, operator-listed names), plus the configured `[agent.env]`.
pub fn child_env(
    parent: impl IntoIterator<Item = (String, String)>,
    token: Option<&str>,
    remove: &[String],
    extra: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = parent
        .into_iter()
        .filter(|(k, v)| {
            !k.starts_with("ACPD_")
                && !DAEMON_ONLY.contains(&k.as_str())
                && !remove.iter().any(|r| r == k)
                && token.is_none_or(|t| !v.contains(t))
        })
        .collect();
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_secrets_and_adds_configured() {
        let parent = [
            ("PATH", "/bin"),
            ("ACPD_TOKEN", "s3cret-token"),
            ("MY_COPY", "Bearer s3cret-token"),
            ("OTHER_SECRET", "x"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let extra = BTreeMap::from([(
            "OPENAI_BASE_URL".to_string(),
            "http://127.0.0.1:1".to_string(),
        )]);
        let env = child_env(
            parent,
            Some("s3cret-token"),
            &["OTHER_SECRET".into()],
            &extra,
        );
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["HOME", "OPENAI_BASE_URL", "PATH"]);
    }
}

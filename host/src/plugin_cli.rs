//! `acpd plugin inspect|test`: what a plugin author runs before deploying a component. `test`
//! uses the daemon's own engine, limits and hook dispatch, so what it prints is what the
//! daemon would export.

use opentelemetry::logs::AnyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde_json::{Map, Value as Json, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::PluginSpec;
use crate::plugins::{self, ErrorInfo, Hook, LogItem, PluginSet, Surface};

pub enum Command {
    Inspect {
        file: String,
    },
    Test {
        file: String,
        config: Option<PathBuf>,
        input: PathBuf,
        keys: Vec<String>,
        deadline_ms: Option<u64>,
    },
}

pub fn run(cmd: Command) -> ExitCode {
    // The plugin's own log lines and its failures, as the daemon would log them.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
    let r = match cmd {
        Command::Inspect { file } => inspect(&file),
        Command::Test {
            file,
            config,
            input,
            keys,
            deadline_ms,
        } => test(&file, config.as_deref(), &input, &keys, deadline_ms),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acpd plugin: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes the report to stdout. A reader that went away (`| head`) is not an error: `println!`
/// panicked there.
fn print_json(v: &Json) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let r = serde_json::to_writer_pretty(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn read(file: &str) -> anyhow::Result<Vec<u8>> {
    match file.strip_prefix("builtin:") {
        Some(name) => plugins::builtin::bytes(name)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| anyhow::anyhow!("no built-in plugin `{name}` in this build")),
        None => std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}")),
    }
}

fn inspect(file: &str) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let mut info = plugins::inspect(&bytes)?;
    // Selectors and version come from `init`: run it with an empty config if it accepts one.
    if let Ok(set) = load(file, &bytes, Json::Object(Map::new()), &[], None) {
        if let Some(h) = set.health().as_array().and_then(|a| a.first()).cloned() {
            info["name"] = h["name"].clone();
            info["version"] = h["version"].clone();
            info["hooks"] = h["hooks"].clone();
        }
    } else {
        info["init"] = json!("refused an empty config; pass one to `acpd plugin test`");
    }
    print_json(&info)?;
    Ok(())
}

fn load(
    file: &str,
    bytes: &[u8],
    config: Json,
    keys: &[String],
    deadline_ms: Option<u64>,
) -> anyhow::Result<PluginSet> {
    let host = plugins::standalone()?;
    let mut key_specs = std::collections::BTreeMap::new();
    for k in keys {
        let (id, value) = k
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--key wants id=value, got {k:?}"))?;
        key_specs.insert(
            id.to_string(),
            crate::config::KeySpec {
                env: None,
                file: None,
                value: Some(value.to_string()),
            },
        );
    }
    let keys = plugins::resolve_keys(&key_specs).map_err(|e| anyhow::anyhow!(e))?;
    let name = Path::new(file).file_stem().map_or("plugin".into(), |s| {
        s.to_string_lossy()
            .trim_start_matches("builtin:")
            .to_string()
    });
    let spec = PluginSpec {
        name,
        path: file.to_string(),
        sha256: None,
        memory_mib: None,
        deadline_ms,
        config: Some(config),
    };
    let digest = plugins::sha256_hex(bytes);
    let p = host
        .instantiate(&spec, bytes, file.to_string(), digest, &keys)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(PluginSet::single(p))
}

fn read_config(path: Option<&Path>) -> anyhow::Result<Json> {
    let Some(path) = path else {
        return Ok(Json::Object(Map::new()));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(serde_json::from_str(&text)?);
    }
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(serde_json::to_value(table)?)
}

fn test(
    file: &str,
    config: Option<&Path>,
    input: &Path,
    keys: &[String],
    deadline_ms: Option<u64>,
) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let set = load(file, &bytes, read_config(config)?, keys, deadline_ms)?;
    let text = std::fs::read_to_string(input)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", input.display()))?;
    let input: Json =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let mut report = Map::new();
    if let Some(spans) = input.get("spans").and_then(Json::as_array) {
        let mut batch: Vec<SpanData> = spans.iter().map(span_from_json).collect();
        let before: Vec<Json> = batch.iter().map(span_to_json).collect();
        set.spans(&mut batch);
        let after: Vec<Json> = batch.iter().map(span_to_json).collect();
        report.insert("spans".into(), json!({"before": before, "after": after}));
    }
    if let Some(logs) = input.get("logs").and_then(Json::as_array) {
        let mut batch: Vec<LogItem> = logs.iter().map(log_from_json).collect();
        let before: Vec<Json> = batch.iter().map(log_to_json).collect();
        set.logs(&mut batch);
        let after: Vec<Json> = batch.iter().map(log_to_json).collect();
        report.insert("logs".into(), json!({"before": before, "after": after}));
    }
    if let Some(reqs) = input.get("requests").and_then(Json::as_array) {
        let out: Vec<Json> = reqs
            .iter()
            .map(|r| {
                let facts: Vec<(String, Value)> = attrs_from_json(r.get("attributes").unwrap_or(r));
                let facts: Vec<(&str, Value)> =
                    facts.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                let added = set.observe(Hook::Request, &facts);
                json!({"added": kvs_to_json(&added)})
            })
            .collect();
        report.insert("requests".into(), Json::Array(out));
    }
    if let Some(errors) = input.get("errors").and_then(Json::as_array) {
        let out: Vec<Json> = errors
            .iter()
            .map(|e| {
                let info = ErrorInfo {
                    surface: if e["surface"] == "sse" { Surface::Sse } else { Surface::Http },
                    code: e["code"].as_str().unwrap_or("internal_error").to_string(),
                    status: e["status"].as_u64().unwrap_or(500) as u16,
                    message: e["message"].as_str().unwrap_or("").to_string(),
                    retry_after: e["retryAfter"].as_u64().map(|s| s as u32),
                    context_json: e.get("context").map_or("{}".into(), Json::to_string),
                    rpc_code: e["rpcCode"].as_i64().map(|c| c as i32),
                };
                match set.translate(&info) {
                    Some(c) => json!({"code": info.code, "translated": {"status": c.status, "code": c.code, "message": c.message, "retryable": c.retryable, "retryAfter": c.retry_after}}),
                    None => json!({"code": info.code, "translated": null}),
                }
            })
            .collect();
        report.insert("errors".into(), Json::Array(out));
    }
    let health = set.health();
    let failures: Vec<&Json> = health
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["state"] != "active")
        .collect();
    report.insert(
        "plugin".into(),
        health
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(Json::Null),
    );
    print_json(&Json::Object(report))?;
    if !failures.is_empty() {
        anyhow::bail!("the plugin failed during the test (see the log above and `plugin.state`)");
    }
    Ok(())
}

fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) if n.is_i64() => Value::I64(n.as_i64().unwrap_or_default()),
        Json::Number(n) => Value::F64(n.as_f64().unwrap_or_default()),
        Json::String(s) => Value::String(s.clone().into()),
        other => Value::String(other.to_string().into()),
    }
}

fn attrs_from_json(v: &Json) -> Vec<(String, Value)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect()
        })
        .unwrap_or_default()
}

fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        other => json!(other.to_string()),
    }
}

fn kvs_to_json(kvs: &[KeyValue]) -> Json {
    Json::Object(
        kvs.iter()
            .map(|kv| (kv.key.to_string(), value_to_json(&kv.value)))
            .collect(),
    )
}

fn span_from_json(v: &Json) -> SpanData {
    let kind = match v["kind"].as_str().unwrap_or("internal") {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => SpanKind::Internal,
    };
    let status = match v["error"].as_str() {
        Some(d) => Status::error(d.to_string()),
        None => Status::Unset,
    };
    let mut events = SpanEvents::default();
    for e in v["events"].as_array().into_iter().flatten() {
        events.events.push(opentelemetry::trace::Event::new(
            e["name"].as_str().unwrap_or("event").to_string(),
            std::time::SystemTime::now(),
            attrs_from_json(&e["attributes"])
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
            0,
        ));
    }
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(1u128),
            SpanId::from(1u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: kind,
        name: v["name"].as_str().unwrap_or("span").to_string().into(),
        start_time: std::time::SystemTime::now(),
        end_time: std::time::SystemTime::now(),
        attributes: attrs_from_json(&v["attributes"])
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect(),
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("acpd-plugin-test").build(),
    }
}

fn span_to_json(s: &SpanData) -> Json {
    let mut out = json!({"name": s.name, "attributes": kvs_to_json(&s.attributes)});
    if let Status::Error { description } = &s.status {
        out["error"] = json!(description);
    }
    if !s.events.events.is_empty() {
        out["events"] = Json::Array(
            s.events
                .events
                .iter()
                .map(|e| json!({"name": e.name, "attributes": kvs_to_json(&e.attributes)}))
                .collect(),
        );
    }
    out
}

fn log_from_json(v: &Json) -> LogItem {
    LogItem {
        body: v["body"]
            .as_str()
            .map(|b| AnyValue::String(b.to_string().into())),
        severity: v["severity"].as_u64().unwrap_or(9).min(24) as u8,
        event_name: v["event_name"].as_str().map(|s| s.to_string().into()),
        attrs: attrs_from_json(&v["attributes"])
            .into_iter()
            .map(|(k, v)| (Key::from(k), value_to_any(v)))
            .collect(),
        dropped: false,
        origin: 0,
    }
}

fn value_to_any(v: Value) -> AnyValue {
    match v {
        Value::Bool(b) => AnyValue::Boolean(b),
        Value::I64(i) => AnyValue::Int(i),
        Value::F64(f) => AnyValue::Double(f),
        other => AnyValue::String(other.to_string().into()),
    }
}

fn log_to_json(l: &LogItem) -> Json {
    json!({
        "body": l.body.as_ref().map(plugins::any_text),
        "attributes": Json::Object(l.attrs.iter().map(|(k, v)| (k.to_string(), json!(plugins::any_text(v)))).collect()),
    })
}

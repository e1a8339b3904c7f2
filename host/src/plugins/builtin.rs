//! The first-party plugins, compiled from `plugins/` by the build script and embedded, so the
//! default configuration needs no files: `path = "builtin:redact"`.

use crate::config::PluginSpec;

static REDACT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin/redact.wasm"));
static ENRICH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin/enrich.wasm"));
static ERRORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin/errors.wasm"));

pub const NAMES: [&str; 3] = ["enrich", "redact", "errors"];

pub fn bytes(name: &str) -> Option<&'static [u8]> {
    let b: &'static [u8] = match name {
        "redact" => REDACT,
        "enrich" => ENRICH,
        "errors" => ERRORS,
        _ => return None,
    };
    (!b.is_empty()).then_some(b)
}

/// Why a built-in may be missing (the build script's note).
pub fn available_note() -> &'static str {
    env!("ACPD_BUILTIN_PLUGINS_NOTE")
}

/// The default set, in hook order: enrichment first, redaction after it, then errors.
pub fn defaults() -> Vec<PluginSpec> {
    NAMES
        .into_iter()
        .filter(|n| bytes(n).is_some())
        .map(|n| PluginSpec {
            name: n.to_string(),
            path: format!("builtin:{n}"),
            sha256: None,
            memory_mib: None,
            deadline_ms: None,
            config: None,
        })
        .collect()
}

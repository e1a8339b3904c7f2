//! What a component says about how it was made: the `producers` custom sections (the tool
//! conventions' `language`, `processed-by`, `sdk` fields) of the component and the core modules
//! inside it. An interpreter guest names its toolchain there (componentize-py, ComponentizeJS);
//! a Rust one names rustc and wit-component.

use std::collections::BTreeMap;
use wasmparser::{KnownCustom, Parser, Payload};

/// `{field: ["name version", ...]}`, each value once, in the order first seen. Unreadable
/// sections are skipped: this is information, never a reason to refuse a plugin.
pub fn producers(bytes: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut componentize_py = false;
    for payload in Parser::new(0).parse_all(bytes) {
        let section = match payload {
            Ok(Payload::CustomSection(section)) => section,
            // componentize-py (0.25) writes no producers entry of its own; its runtime module
            // library, which the other modules import from, names it as surely.
            Ok(Payload::ImportSection(imports)) if !componentize_py => {
                componentize_py = imports
                    .into_imports()
                    .flatten()
                    .any(|i| i.module.starts_with("libcomponentize_py_runtime"));
                continue;
            }
            _ => continue,
        };
        let KnownCustom::Producers(reader) = section.as_known() else {
            continue;
        };
        for field in reader.into_iter().flatten() {
            let values = out.entry(field.name.to_string()).or_default();
            for v in field.values.into_iter().flatten() {
                let entry = if v.version.is_empty() {
                    v.name.to_string()
                } else {
                    format!("{} {}", v.name, v.version)
                };
                if !values.contains(&entry) {
                    values.push(entry);
                }
            }
        }
    }
    if componentize_py {
        let language = out.entry("language".into()).or_default();
        if !language.iter().any(|l| l.starts_with("Python")) {
            language.push("Python".into());
        }
        let tools = out.entry("processed-by".into()).or_default();
        if !tools.iter().any(|t| t.starts_with("componentize-py")) {
            tools.push("componentize-py".into());
        }
    }
    out
}

/// The guest's language toolchain, as `acpd plugin inspect` reports it: the languages and the
/// tools that built the component (empty lists when the component does not say).
pub fn toolchain(bytes: &[u8]) -> serde_json::Value {
    let p = producers(bytes);
    let field = |k: &str| p.get(k).cloned().unwrap_or_default();
    serde_json::json!({
        "language": field("language"),
        "processedBy": field("processed-by"),
        "sdk": field("sdk"),
    })
}

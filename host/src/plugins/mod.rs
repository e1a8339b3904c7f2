//! WASM plugins: the wasmtime component host behind the pipeline hooks (PLUGINS.md). Nothing
//! else in the daemon touches wasmtime; the rest calls the hook functions of `PluginSet`.
//!
//! - `engine`: one Engine (concurrency support off, epochs), the artifact cache;
//! - `ticker`: advances the epoch while a guest runs, parked when no call is in flight;
//! - `budget`: CPU budgets per call (the calling thread's CPU time, not wall-clock time);
//! - `instance` / `plugin`: long-lived instances in a small pool, limits, circuit breaker;
//! - `kernels`: what the `host` import gives a plugin; a WASI that grants nothing;
//! - `wasi_io`: that WASI's streams and polls, which step out of async only when they block;
//! - `pack` / `hooks`: packed attributes in, validated sparse edits out, per-hook policy;
//! - `builtin`: the first-party plugins embedded in the binary.

pub(crate) mod bindings;
mod budget;
pub mod builtin;
mod engine;
mod hooks;
mod instance;
mod kernels;
mod lift;
mod lower;
mod metrics;
pub(crate) mod pack;
mod plugin;
mod producers;
mod ticker;
mod wasi_io;

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use bindings::exports::acpd::plugin::error_hooks::{ClientError, ErrorInfo, Surface};
pub use engine::{Meter, sha256_hex};
pub use hooks::{FOREIGN_SCOPE, LogItem, REDACTED, safety_net_logs, safety_net_spans, structural};
pub use instance::Failure;
pub use kernels::keyed_hash;
pub use pack::any_text;
pub use plugin::Plugin;

use crate::config::{Config, KeySpec, PluginSpec};

/// The pipeline points where plugins run (the WIT `hook` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Request = 0,
    Dispatch = 1,
    Child = 2,
    ExportSpans = 3,
    ExportLogs = 4,
    Error = 5,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::Request,
        Hook::Dispatch,
        Hook::Child,
        Hook::ExportSpans,
        Hook::ExportLogs,
        Hook::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Request => "request",
            Hook::Dispatch => "dispatch",
            Hook::Child => "child",
            Hook::ExportSpans => "export-spans",
            Hook::ExportLogs => "export-logs",
            Hook::Error => "error",
        }
    }
}

/// A configured plugin: running, or (at startup only) one that failed to load. A broken
/// plugin that may have been a redactor keeps the export hooks failing closed.
pub enum Slot {
    Ready(Arc<Plugin>),
    Broken { name: String, reason: String },
}

impl Slot {
    pub fn name(&self) -> &str {
        match self {
            Slot::Ready(p) => &p.name,
            Slot::Broken { name, .. } => name,
        }
    }
}

/// An immutable, ordered set of plugins, swapped whole on reload.
#[derive(Default)]
pub struct PluginSet {
    pub slots: Vec<Arc<Slot>>,
    by_hook: [Vec<Arc<Slot>>; 6],
    pub generation: u64,
}

impl PluginSet {
    /// Where the set's plugins' compiled code is mapped: it stays mapped while the set lives
    /// (what `startup_pages::release` needs to know it may release those pages).
    pub fn code_ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.slots
            .iter()
            .filter_map(|s| match &**s {
                Slot::Ready(p) => Some(p.code_range()),
                Slot::Broken { .. } => None,
            })
            .collect()
    }

    fn new(slots: Vec<Arc<Slot>>, generation: u64) -> Self {
        let mut by_hook: [Vec<Arc<Slot>>; 6] = Default::default();
        for slot in &slots {
            for hook in Hook::ALL {
                let runs = match &**slot {
                    Slot::Ready(p) => p.selector(hook).is_some(),
                    // Unknown exports: only the fail-closed hooks need to know it is there.
                    Slot::Broken { .. } => matches!(hook, Hook::ExportSpans | Hook::ExportLogs),
                };
                if runs {
                    by_hook[hook as usize].push(slot.clone());
                }
            }
        }
        Self {
            slots,
            by_hook,
            generation,
        }
    }

    /// One plugin on its own (`acpd plugin test`, benchmarks).
    pub fn single(p: Arc<Plugin>) -> Self {
        Self::new(vec![Arc::new(Slot::Ready(p))], 0)
    }

    /// A hook with no plugin costs this check and nothing else.
    #[inline]
    pub fn has(&self, hook: Hook) -> bool {
        !self.by_hook[hook as usize].is_empty()
    }

    fn at(&self, hook: Hook) -> impl Iterator<Item = &Slot> {
        self.by_hook[hook as usize].iter().map(|s| &**s)
    }

    pub fn health(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.slots
                .iter()
                .map(|s| match &**s {
                    Slot::Ready(p) => serde_json::json!({
                        "name": p.name,
                        "version": p.version,
                        "source": p.source,
                        "sha256": p.sha256,
                        "state": p.state(),
                        "instances": p.instances(),
                        "memoryBytes": p.memory_bytes(),
                        "startup": p.startup.get().map(|s| serde_json::json!({
                            "loadMs": s.load.as_secs_f64() * 1000.0,
                            "instantiateMs": s.instantiate.as_secs_f64() * 1000.0,
                            "rssBytes": s.rss_bytes,
                        })),
                        "hooks": Hook::ALL.iter().filter(|h| p.selector(**h).is_some()).map(|h| h.name()).collect::<Vec<_>>(),
                    }),
                    Slot::Broken { name, reason } => serde_json::json!({
                        "name": name, "state": "failed", "error": reason,
                    }),
                })
                .collect(),
        )
    }
}

/// Host-wide bounds on what a plugin's config may ask for.
const MAX_MEMORY_MIB: u64 = 1024;
const MAX_DEADLINE_MS: u64 = 1000;

pub struct PluginHost {
    engine: wasmtime::Engine,
    meter: Meter,
    linker: wasmtime::component::Linker<kernels::State>,
    cache: Option<PathBuf>,
    current: ArcSwap<PluginSet>,
    generation: AtomicU64,
    /// One reload at a time; the set in use is never blocked by it.
    reloading: Mutex<()>,
    /// Re-reads the configuration (file, env, flags) for a reload.
    reread: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
}

static HOST: OnceLock<Arc<PluginHost>> = OnceLock::new();

/// The plugins in use, if the daemon runs a plugin host.
pub fn current() -> Option<arc_swap::Guard<Arc<PluginSet>>> {
    HOST.get().map(|h| h.current.load())
}

pub fn host() -> Option<&'static Arc<PluginHost>> {
    HOST.get()
}

#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PluginHost {
    pub fn new(
        cache: Option<PathBuf>,
        reread: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    ) -> anyhow::Result<Self> {
        Self::with_meter(cache, reread, Meter::CpuTime)
    }

    pub fn with_meter(
        cache: Option<PathBuf>,
        reread: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
        meter: Meter,
    ) -> anyhow::Result<Self> {
        let engine = engine::new_engine_with(meter)?;
        let linker = instance::linker(&engine)?;
        Ok(Self {
            engine,
            meter,
            linker,
            cache,
            current: ArcSwap::from_pointee(PluginSet::default()),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
            reread,
        })
    }

    /// Starts the daemon's plugin host: every configured plugin that loads is active; one
    /// that does not is logged and, at export hooks, keeps redaction failing closed.
    pub fn start(
        config: &Config,
        reread: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    ) -> anyhow::Result<Arc<PluginHost>> {
        let cache = config
            .plugin_host
            .cache_dir
            .clone()
            .or_else(engine::default_cache_dir);
        let host = Arc::new(PluginHost::new(cache, reread)?);
        let keys = resolve_keys(&config.keys).map_err(|e| anyhow::anyhow!("{e}"))?;
        let specs = effective_specs(config);
        if config.plugins.is_none() && specs.len() < builtin::NAMES.len() {
            tracing::warn!(
                target: "acpd::plugin",
                "some built-in plugins are not in this build ({}); `rustup target add wasm32-wasip2` and rebuild",
                builtin::available_note()
            );
        }
        let mut slots = Vec::new();
        for spec in &specs {
            match host.load_one(spec, config, &keys) {
                Ok(p) => {
                    log_loaded(&p);
                    slots.push(Arc::new(Slot::Ready(p)));
                }
                Err(e) => {
                    tracing::error!(name: "acpd.plugin.failed", target: "acpd::plugin", { "acpd.plugin.name" = spec.name.as_str() }, "plugin {} not loaded: {e}", spec.name);
                    slots.push(Arc::new(Slot::Broken {
                        name: spec.name.clone(),
                        reason: e.0,
                    }));
                }
            }
        }
        host.swap(slots);
        let _ = HOST.set(host.clone());
        Ok(host)
    }

    fn swap(&self, slots: Vec<Arc<Slot>>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        for s in &slots {
            if let Slot::Ready(p) = &**s {
                metrics::state(&p.name, 0);
            }
        }
        self.current
            .store(Arc::new(PluginSet::new(slots, generation)));
        generation
    }

    pub fn current(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    /// Loads and initialises the whole configured set, then swaps it in atomically (calls in
    /// flight finish on the old set). Any failure refuses the new set and keeps the old one.
    pub fn reload(&self) -> Result<Arc<PluginSet>, LoadError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let config = (self.reread)().map_err(LoadError)?;
        let keys = resolve_keys(&config.keys).map_err(LoadError)?;
        let mut slots = Vec::new();
        for spec in &effective_specs(&config) {
            let p = self.load_one(spec, &config, &keys).map_err(|e| {
                tracing::error!(name: "acpd.plugin.failed", target: "acpd::plugin", { "acpd.plugin.name" = spec.name.as_str() }, "reload refused: plugin {}: {e}", spec.name);
                LoadError(format!("plugin {}: {e}", spec.name))
            })?;
            slots.push(Arc::new(Slot::Ready(p)));
        }
        for s in &slots {
            if let Slot::Ready(p) = &**s {
                log_loaded(p);
            }
        }
        let generation = self.swap(slots);
        tracing::info!(name: "acpd.plugin.reloaded", target: "acpd::plugin", "plugin set {generation} active");
        Ok(self.current())
    }

    /// Reads, verifies, compiles (or takes from the cache), type-checks and initialises one
    /// plugin.
    pub fn load_one(
        &self,
        spec: &PluginSpec,
        config: &Config,
        keys: &kernels::Keys,
    ) -> Result<Arc<Plugin>, LoadError> {
        let (bytes, source) = read_plugin(spec, config.source.as_deref())?;
        let digest = engine::sha256_hex(&bytes);
        if let Some(pin) = &spec.sha256
            && !pin.eq_ignore_ascii_case(&digest)
        {
            return Err(LoadError(format!(
                "sha256 mismatch: pinned {pin}, file has {digest}"
            )));
        }
        self.instantiate(spec, &bytes, source, digest, keys)
    }

    pub fn instantiate(
        &self,
        spec: &PluginSpec,
        bytes: &[u8],
        source: String,
        digest: String,
        keys: &kernels::Keys,
    ) -> Result<Arc<Plugin>, LoadError> {
        let (started, rss_before) = (std::time::Instant::now(), resident_bytes());
        let component = engine::compile(&self.engine, self.meter, bytes, self.cache.as_deref())
            .map_err(|e| LoadError(format!("not a loadable component: {e}")))?;
        let loaded = started.elapsed();
        let pre =
            instance::Pre::new(&self.linker, &component).map_err(|e| LoadError(e.to_string()))?;
        let limits = limits(spec, self.meter);
        let init_json = spec_config_json(spec);
        let shared = Arc::new(kernels::Shared::new(spec.name.clone(), keys.clone()));
        let plugin = Plugin::new(
            spec.name.clone(),
            source,
            digest,
            pre,
            shared,
            init_json,
            limits,
        )
        .map_err(|f| LoadError(format!("init failed ({}): {f}", f.kind())))?;
        let _ = plugin.startup.set(plugin::Startup {
            load: loaded,
            instantiate: started.elapsed() - loaded,
            rss_bytes: resident_bytes().saturating_sub(rss_before),
        });
        Ok(plugin)
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }
}

fn log_loaded(p: &Plugin) {
    tracing::info!(
        name: "acpd.plugin.loaded",
        target: "acpd::plugin",
        { "acpd.plugin.name" = p.name.as_str() },
        "plugin {} {} loaded from {} (sha256 {}), hooks: {}",
        p.name,
        p.version,
        p.source,
        &p.sha256[..12],
        Hook::ALL.iter().filter(|h| p.selector(**h).is_some()).map(|h| h.name()).collect::<Vec<_>>().join(", ")
    );
}

/// The configured plugins; unset means the first-party defaults (those built into this
/// binary).
pub fn effective_specs(config: &Config) -> Vec<PluginSpec> {
    match &config.plugins {
        Some(list) => list.clone(),
        None => builtin::defaults(),
    }
}

/// `deadline_ms` (kept for existing configs) is the CPU budget of one call at every hook, in
/// milliseconds of the plugin's own execution (guest code and the host kernels it calls);
/// unset, each hook has its measured default (`budget::defaults`).
pub fn limits(spec: &PluginSpec, meter: Meter) -> plugin::Limits {
    let memory = spec.memory_mib.unwrap_or(32).clamp(1, MAX_MEMORY_MIB);
    let budget = spec
        .deadline_ms
        .map(|d| std::time::Duration::from_millis(d.clamp(1, MAX_DEADLINE_MS)));
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    plugin::Limits {
        memory_bytes: (memory as usize) << 20,
        request_budget: budget.unwrap_or(budget::defaults::REQUEST),
        export_budget: budget.unwrap_or(budget::defaults::EXPORT),
        init_budget: budget::defaults::INIT,
        max_instances: (parallel * 2).max(4),
        meter,
    }
}

pub fn spec_config_json(spec: &PluginSpec) -> String {
    match &spec.config {
        Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
        None => "{}".into(),
    }
}

fn read_plugin(
    spec: &PluginSpec,
    config_file: Option<&Path>,
) -> Result<(Vec<u8>, String), LoadError> {
    if let Some(name) = spec.path.strip_prefix("builtin:") {
        return builtin::bytes(name)
            .map(|b| (b.to_vec(), spec.path.clone()))
            .ok_or_else(|| {
                LoadError(format!(
                    "no built-in plugin `{name}` in this build ({})",
                    builtin::available_note()
                ))
            });
    }
    let mut path = PathBuf::from(&spec.path);
    if path.is_relative()
        && let Some(dir) = config_file.and_then(Path::parent)
    {
        path = dir.join(path);
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| LoadError(format!("cannot read {}: {e}", path.display())))?;
    Ok((bytes, path.display().to_string()))
}

/// `[keys]`: HMAC keys by id, from an env var or a file (inline `value` is for tests and demos).
pub fn resolve_keys(specs: &BTreeMap<String, KeySpec>) -> Result<kernels::Keys, String> {
    let mut keys = BTreeMap::new();
    for (id, spec) in specs {
        let bytes = match (&spec.env, &spec.file, &spec.value) {
            (Some(var), None, None) => std::env::var(var)
                .map_err(|_| format!("keys.{id}: environment variable {var} is not set"))?
                .into_bytes(),
            (None, Some(file), None) => std::fs::read(file)
                .map_err(|e| format!("keys.{id}: cannot read {}: {e}", file.display()))?,
            (None, None, Some(v)) => v.clone().into_bytes(),
            _ => return Err(format!("keys.{id}: set exactly one of env, file, value")),
        };
        let trimmed = bytes.trim_ascii().to_vec();
        if trimmed.len() < 16 {
            return Err(format!("keys.{id}: a key needs at least 16 bytes"));
        }
        keys.insert(id.clone(), trimmed);
    }
    Ok(Arc::new(keys))
}

/// What `acpd plugin inspect` prints about a component, without running it.
pub fn inspect(bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    let engine = engine::new_engine()?;
    // Through the compile cache: an interpreter guest takes seconds to compile, and the
    // daemon (same engine settings) then loads it from there.
    let component = engine::compile(
        &engine,
        engine::Meter::default(),
        bytes,
        engine::default_cache_dir().as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("not a component: {e}"))?;
    let ty = component.component_type();
    let names = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>();
    let exports = names(&mut ty.exports(&engine).map(|(n, _)| n.to_string()));
    let imports = names(&mut ty.imports(&engine).map(|(n, _)| n.to_string()));
    let version = exports.iter().chain(imports.iter()).find_map(|n| {
        n.strip_prefix("acpd:plugin/")
            .and_then(|r| r.split_once('@'))
            .map(|(_, v)| v.to_string())
    });
    let roles: Vec<&str> = exports
        .iter()
        .filter_map(|n| n.strip_prefix("acpd:plugin/"))
        .filter_map(|n| n.split('@').next())
        .filter(|n| *n != "lifecycle")
        .collect();
    Ok(serde_json::json!({
        "sha256": engine::sha256_hex(bytes),
        "bytes": bytes.len(),
        "package": version.map(|v| format!("acpd:plugin@{v}")),
        "roles": roles,
        "toolchain": producers::toolchain(bytes),
        "exports": exports,
        "imports": imports,
    }))
}

/// The daemon's resident set (`/proc/self/statm`), 0 where there is none to read.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * crate::startup_pages::page_size() as u64
}

/// A standalone host for `acpd plugin test` and benchmarks: no daemon, no global state.
pub fn standalone() -> anyhow::Result<PluginHost> {
    standalone_with(Meter::CpuTime)
}

/// [`standalone`] with another meter (benchmarks compare them).
pub fn standalone_with(meter: Meter) -> anyhow::Result<PluginHost> {
    PluginHost::with_meter(
        engine::default_cache_dir(),
        Box::new(|| Err("no configuration to reload".into())),
        meter,
    )
}

#[cfg(test)]
mod cost {
    use super::*;

    /// Where a no-op call's time goes (run: cargo test --release -p acpd cost -- --ignored --nocapture).
    #[test]
    #[ignore]
    fn no_op_call_breakdown() {
        let wasm = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm-guests/wasm32-wasip2/guest/acpd_test_hostile.wasm"),
        )
        .unwrap();
        let host = standalone().unwrap();
        let spec = PluginSpec {
            name: "noop".into(),
            path: "x".into(),
            sha256: None,
            memory_mib: None,
            deadline_ms: Some(1000),
            config: Some(serde_json::json!({"mode": "ok"})),
        };
        let keys = resolve_keys(&Default::default()).unwrap();
        let p = host
            .instantiate(&spec, &wasm, "x".into(), "d".into(), &keys)
            .unwrap();
        let time = |label: &str, f: &mut dyn FnMut()| {
            for _ in 0..1000 {
                f();
            }
            let t = std::time::Instant::now();
            for _ in 0..100_000 {
                f();
            }
            println!(
                "{label}: {:.0} ns",
                t.elapsed().as_nanos() as f64 / 100_000.0
            );
        };
        let mut live = p.pool.lock().unwrap().pop().unwrap();
        time("raw typed call", &mut || {
            live.observe(Hook::Request, std::time::Duration::from_secs(1), "", &[])
                .unwrap();
        });
        p.pool.lock().unwrap().push(live);
        time("Plugin::call", &mut || {
            p.call(Hook::Request, |l, t| l.observe(Hook::Request, t, "", &[]))
                .unwrap();
        });
        let set = PluginSet::single(p.clone());
        time("PluginSet::observe", &mut || {
            set.observe(Hook::Request, &[]);
        });
    }
}

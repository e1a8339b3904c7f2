//! One loaded plugin: its type-checked component, a small pool of long-lived instances (init
//! state is reused; never a Store per call), its selectors, limits and circuit breaker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bindings::acpd::plugin::types::{self as wit, PluginInfo};
use super::engine::Meter;
use super::instance::{Exports, Failure, Live, Pre};
use super::kernels::Shared;
use super::{Hook, metrics};

/// Per-plugin limits (config values, bounded by the host's maxima).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: usize,
    /// CPU budget of one call at a request-path hook (request, dispatch, child, error).
    pub request_budget: Duration,
    /// CPU budget of one export batch.
    pub export_budget: Duration,
    pub init_budget: Duration,
    pub max_instances: usize,
    pub meter: Meter,
}

impl Limits {
    pub fn budget(&self, hook: Hook) -> Duration {
        match hook {
            Hook::ExportSpans | Hook::ExportLogs => self.export_budget,
            _ => self.request_budget,
        }
    }
}

/// Which keys a plugin is sent at one hook.
#[derive(Debug, Clone, Default)]
pub enum KeyFilter {
    #[default]
    All,
    Only {
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
}

impl KeyFilter {
    pub fn wants(&self, key: &str) -> bool {
        match self {
            KeyFilter::All => true,
            KeyFilter::Only { exact, prefixes } => {
                exact.iter().any(|k| k == key)
                    || prefixes.iter().any(|p| key.starts_with(p.as_str()))
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HookSelector {
    pub keys: KeyFilter,
    /// Call only for records with one of these keys (empty: always).
    pub require_any: Vec<String>,
}

impl HookSelector {
    pub fn record_qualifies<'a>(&self, mut keys: impl Iterator<Item = &'a str>) -> bool {
        self.require_any.is_empty() || keys.any(|k| self.require_any.iter().any(|r| r == k))
    }
}

fn wit_hook(h: wit::Hook) -> Hook {
    match h {
        wit::Hook::Request => Hook::Request,
        wit::Hook::Dispatch => Hook::Dispatch,
        wit::Hook::Child => Hook::Child,
        wit::Hook::ExportSpans => Hook::ExportSpans,
        wit::Hook::ExportLogs => Hook::ExportLogs,
        wit::Hook::Error => Hook::Error,
    }
}

/// The hooks a plugin is called at and what it is sent there: exported interfaces narrowed by
/// the selectors `init` returned.
pub fn selectors(exports: Exports, info: &PluginInfo) -> [Option<HookSelector>; 6] {
    let mut out: [Option<HookSelector>; 6] = Default::default();
    for hook in Hook::ALL {
        let exported = match hook {
            Hook::Request | Hook::Dispatch | Hook::Child => exports.observe,
            Hook::ExportSpans => exports.spans,
            Hook::ExportLogs => exports.logs,
            Hook::Error => exports.errors,
        };
        if !exported {
            continue;
        }
        if info.selectors.is_empty() {
            out[hook as usize] = Some(HookSelector::default());
            continue;
        }
        let applying: Vec<&wit::Selector> = info
            .selectors
            .iter()
            .filter(|s| s.hooks.is_empty() || s.hooks.iter().any(|h| wit_hook(*h) == hook))
            .filter(|s| !applies_nowhere(s))
            .collect();
        if applying.is_empty() {
            continue;
        }
        let keys = if applying.iter().any(|s| s.keys.is_empty()) {
            KeyFilter::All
        } else {
            let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
            for k in applying.iter().flat_map(|s| s.keys.iter()) {
                match k.strip_suffix('*') {
                    Some(p) => prefixes.push(p.to_string()),
                    None => exact.push(k.clone()),
                }
            }
            KeyFilter::Only { exact, prefixes }
        };
        let require_any = if applying.iter().any(|s| s.require_any.is_empty()) {
            Vec::new()
        } else {
            applying
                .iter()
                .flat_map(|s| s.require_any.iter())
                .filter(|k| !k.is_empty())
                .cloned()
                .collect()
        };
        out[hook as usize] = Some(HookSelector { keys, require_any });
    }
    out
}

/// A selector whose `require-any` holds only the empty key, which never matches: the plugin
/// has nothing to do at these hooks under its config (the SDK's `Selector::none`), so it is
/// not called there at all, and the hook costs the daemon nothing when no other plugin runs
/// at it (the default `enrich` plugin, with no config, adds nothing to a request).
fn applies_nowhere(s: &wit::Selector) -> bool {
    !s.require_any.is_empty() && s.require_any.iter().all(String::is_empty)
}

/// 5 failures within 10 s quarantine a plugin for 30 s, doubling up to 10 min while it keeps
/// failing.
struct Breaker {
    recent: VecDeque<Instant>,
    until: Option<Instant>,
    backoff: Duration,
    last_quarantine: Option<Instant>,
}

const BREAKER_FAILURES: usize = 5;
const BREAKER_WINDOW: Duration = Duration::from_secs(10);
const QUARANTINE_BASE: Duration = Duration::from_secs(30);
const QUARANTINE_MAX: Duration = Duration::from_secs(600);

impl Breaker {
    fn new() -> Self {
        Self {
            recent: VecDeque::new(),
            until: None,
            backoff: QUARANTINE_BASE,
            last_quarantine: None,
        }
    }

    fn quarantined(&mut self) -> bool {
        match self.until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                self.until = None;
                false
            }
            None => false,
        }
    }

    /// Returns true when this failure opened the breaker.
    fn failure(&mut self) -> bool {
        let now = Instant::now();
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > BREAKER_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() < BREAKER_FAILURES {
            return false;
        }
        // Quiet for a long while since the last quarantine: start over from the base.
        if self
            .last_quarantine
            .is_some_and(|t| now.duration_since(t) > QUARANTINE_MAX * 2)
        {
            self.backoff = QUARANTINE_BASE;
        }
        self.until = Some(now + self.backoff);
        self.last_quarantine = Some(now);
        self.backoff = (self.backoff * 2).min(QUARANTINE_MAX);
        self.recent.clear();
        true
    }

    fn state(&mut self) -> &'static str {
        if self.quarantined() {
            "quarantined"
        } else if !self.recent.is_empty() {
            "degraded"
        } else {
            "active"
        }
    }
}

/// What loading a plugin cost (`/health?deep=1`): interpreter guests are tens of MB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Startup {
    /// Compiling the component, or loading it from the compile cache.
    pub load: Duration,
    /// Type-checking it and making its first instance, `init` included.
    pub instantiate: Duration,
    /// How much the daemon's resident memory grew while it loaded (code, first instance).
    pub rss_bytes: u64,
}

pub struct Plugin {
    pub startup: std::sync::OnceLock<Startup>,
    pub name: String,
    pub source: String,
    pub sha256: String,
    pub version: String,
    pub exports: Exports,
    pub hooks: [Option<HookSelector>; 6],
    pub limits: Limits,
    pre: Arc<Pre>,
    shared: Arc<Shared>,
    init_json: String,
    pub(super) pool: Arc<Mutex<Vec<Live>>>,
    /// Signalled when an instance returns to the pool.
    returned: Arc<std::sync::Condvar>,
    live: Arc<AtomicUsize>,
    breaker: Mutex<Breaker>,
    quarantine_flag: std::sync::atomic::AtomicBool,
    labels: [[opentelemetry::KeyValue; 2]; 6],
}

/// How long an export batch waits for a free instance before it counts as a failure.
const EXPORT_CHECKOUT_WAIT: Duration = Duration::from_millis(500);

/// A poisoned instance is replaced once per this many calls at most (trap storms stay cheap).
const MAX_CALLS_PER_INSTANCE: u64 = 100_000;

impl Plugin {
    /// Where the compiled code is mapped (see [`Pre::code_range`]).
    pub fn code_range(&self) -> std::ops::Range<usize> {
        self.pre.code_range()
    }

    /// Instantiates and initialises the first instance: a plugin that cannot `init` with its
    /// config is never activated.
    pub fn new(
        name: String,
        source: String,
        sha256: String,
        pre: Pre,
        shared: Arc<Shared>,
        init_json: String,
        limits: Limits,
    ) -> Result<Arc<Plugin>, Failure> {
        let (live, info) = Live::new(
            &pre,
            shared.clone(),
            limits.memory_bytes,
            &init_json,
            limits.init_budget,
            limits.meter,
        )?;
        let exports = pre.exports();
        let name_for_labels = name.clone();
        let plugin = Arc::new(Plugin {
            startup: std::sync::OnceLock::new(),
            hooks: selectors(exports, &info),
            version: info.version,
            name,
            source,
            sha256,
            exports,
            limits,
            pre: Arc::new(pre),
            shared,
            init_json,
            pool: Arc::new(Mutex::new(vec![live])),
            returned: Arc::default(),
            live: Arc::new(AtomicUsize::new(1)),
            breaker: Mutex::new(Breaker::new()),
            quarantine_flag: std::sync::atomic::AtomicBool::new(false),
            labels: metrics::hook_labels(&name_for_labels),
        });
        Ok(plugin)
    }

    pub fn selector(&self, hook: Hook) -> Option<&HookSelector> {
        self.hooks[hook as usize].as_ref()
    }

    pub fn state(&self) -> &'static str {
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
    }

    pub fn instances(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Linear memory held by the idle instances (a busy one is counted when it returns).
    pub fn memory_bytes(&self) -> usize {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(Live::memory_bytes)
            .sum()
    }

    /// Lock-free on the hot path: the breaker's mutex is only taken while a quarantine is on.
    fn quarantined(&self) -> bool {
        if !self.quarantine_flag.load(Ordering::Acquire) {
            return false;
        }
        let on = self
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quarantined();
        if !on {
            self.quarantine_flag.store(false, Ordering::Release);
        }
        on
    }

    fn instantiate(&self) -> Result<Live, Failure> {
        Live::new(
            &self.pre,
            self.shared.clone(),
            self.limits.memory_bytes,
            &self.init_json,
            self.limits.init_budget,
            self.limits.meter,
        )
        .map(|(live, _)| live)
    }

    fn checkout(&self) -> Result<Live, Failure> {
        if let Some(live) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(live);
        }
        // All instances busy (concurrent requests): grow the pool up to its bound.
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.limits.max_instances {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Failure::Busy);
        }
        self.instantiate().inspect_err(|_| {
            self.live.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// The export hooks run off the request path, on several export threads (the daemon's
    /// spans and logs, the gateway's three signals): there a busy pool is waited for, within
    /// the hook's own deadline, instead of failing the batch.
    fn checkout_for(&self, hook: Hook) -> Result<Live, Failure> {
        let first = self.checkout();
        if !matches!(first, Err(Failure::Busy))
            || !matches!(hook, Hook::ExportSpans | Hook::ExportLogs)
        {
            return first;
        }
        let until = Instant::now() + EXPORT_CHECKOUT_WAIT;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(live) = pool.pop() {
                return Ok(live);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Busy);
            }
            pool = self
                .returned
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn checkin(&self, live: Live) {
        if live.calls >= MAX_CALLS_PER_INSTANCE || live.memory_exceeded() {
            // Linear memory never shrinks: recycle long-lived instances now and then.
            self.live.fetch_sub(1, Ordering::AcqRel);
            self.replenish();
            return;
        }
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(live);
        self.returned.notify_one();
    }

    /// Rebuilds an instance off the calling path (a new instance pays `init`).
    fn replenish(&self) {
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.limits.max_instances {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let pre = self.pre.clone();
        let shared = self.shared.clone();
        let init = self.init_json.clone();
        let limits = self.limits;
        let pool = self.pool.clone();
        let returned = self.returned.clone();
        let live = self.live.clone();
        let spawned = std::thread::Builder::new()
            .name("acpd-plugin-rebuild".into())
            .spawn(move || {
                match Live::new(
                    &pre,
                    shared,
                    limits.memory_bytes,
                    &init,
                    limits.init_budget,
                    limits.meter,
                ) {
                    Ok((l, _)) => {
                        pool.lock().unwrap_or_else(|p| p.into_inner()).push(l);
                        returned.notify_one();
                    }
                    Err(_) => {
                        live.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            });
        if spawned.is_err() {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Runs one hook call on a pooled instance with the hook's CPU budget, and accounts for it.
    pub fn call<R>(
        &self,
        hook: Hook,
        f: impl FnOnce(&mut Live, Duration) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        // On an async worker (the request path) a call runs where it is: `wasi_io` steps out
        // for the rare WASI call that blocks, and the default budget bounds how long the call
        // holds the worker. A plugin with other blocking WASI imports, or given a longer
        // budget by its operator, steps out of async for the whole call, as every plugin did:
        // that hands the worker's core to another thread each call (a thread wake-up, and the
        // runtime's blocking pool grows to the hand-offs in flight).
        if self.pre.blocks_elsewhere || self.limits.budget(hook) > super::budget::defaults::REQUEST
        {
            super::wasi_io::outside_async(|| self.call_here(hook, f))
        } else {
            self.call_here(hook, f)
        }
    }

    fn call_here<R>(
        &self,
        hook: Hook,
        f: impl FnOnce(&mut Live, Duration) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        if self.quarantined() {
            metrics::skipped(&self.name, hook, "quarantined");
            return Err(Failure::Quarantined);
        }
        let mut live = match self.checkout_for(hook) {
            Ok(l) => l,
            Err(f) => {
                self.failed(hook, &f);
                return Err(f);
            }
        };
        let started = Instant::now();
        let r = f(&mut live, self.limits.budget(hook));
        let wall = started.elapsed();
        metrics::duration(&self.labels[hook as usize], wall);
        let detail = match &r {
            Err(Failure::Timeout) if self.limits.meter == Meter::CpuTime => format!(
                " (charged {} us CPU of a {} us budget, {} us wall)",
                live.charged().as_micros(),
                self.limits.budget(hook).as_micros(),
                wall.as_micros()
            ),
            _ => String::new(),
        };
        match &r {
            Ok(_) => self.checkin(live),
            Err(f) => {
                if f.poisons() {
                    drop(live);
                    self.live.fetch_sub(1, Ordering::AcqRel);
                    self.replenish();
                } else {
                    self.checkin(live);
                }
                self.failed_with(hook, f, &detail);
            }
        }
        r
    }

    /// Accounts for a failure that happened outside `call` (output validation).
    pub fn failed(&self, hook: Hook, f: &Failure) {
        self.failed_with(hook, f, "")
    }

    fn failed_with(&self, hook: Hook, f: &Failure, detail: &str) {
        metrics::failure(&self.name, hook, f.kind());
        let opened = self
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failure();
        if failure_log_allowed() {
            tracing::warn!(
                name: "acpd.plugin.failed",
                target: "acpd::plugin",
                { "acpd.plugin.name" = self.name.as_str(), "acpd.plugin.hook" = hook.name(), "acpd.plugin.failure" = f.kind() },
                "plugin {} failed at {}: {f}{detail}",
                self.name,
                hook.name()
            );
        }
        if opened {
            self.quarantine_flag.store(true, Ordering::Release);
            metrics::state(&self.name, 2);
            tracing::error!(
                name: "acpd.plugin.quarantined",
                target: "acpd::plugin",
                { "acpd.plugin.name" = self.name.as_str() },
                "plugin {} keeps failing: quarantined",
                self.name
            );
        }
    }
}

/// At most 20 failure records per second across plugins.
fn failure_log_allowed() -> bool {
    static BUDGET: Mutex<Option<(Instant, u32)>> = Mutex::new(None);
    let mut b = BUDGET.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let (since, n) = b.get_or_insert((now, 0));
    if now.duration_since(*since) >= Duration::from_secs(1) {
        *since = now;
        *n = 0;
    }
    *n += 1;
    *n <= 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_backs_off() {
        let mut b = Breaker::new();
        for _ in 0..BREAKER_FAILURES - 1 {
            assert!(!b.failure());
        }
        assert_eq!(b.state(), "degraded");
        assert!(b.failure(), "the fifth failure in the window opens it");
        assert_eq!(b.state(), "quarantined");
        assert_eq!(
            b.backoff,
            QUARANTINE_BASE * 2,
            "the next quarantine is longer"
        );
    }

    #[test]
    fn selectors_narrow_hooks_and_keys() {
        let exports = Exports {
            observe: true,
            spans: true,
            logs: false,
            errors: false,
        };
        let info = PluginInfo {
            name: "p".into(),
            version: "1".into(),
            selectors: vec![wit::Selector {
                hooks: vec![wit::Hook::Request, wit::Hook::ExportLogs],
                keys: vec!["http.request.header.*".into(), "acpd.workspace.path".into()],
                require_any: vec![],
            }],
        };
        let s = selectors(exports, &info);
        let req = s[Hook::Request as usize]
            .as_ref()
            .expect("request selected");
        assert!(req.keys.wants("http.request.header.x-team"));
        assert!(req.keys.wants("acpd.workspace.path"));
        assert!(!req.keys.wants("url.path"));
        assert!(s[Hook::Dispatch as usize].is_none(), "not selected");
        assert!(
            s[Hook::ExportSpans as usize].is_none(),
            "exported but not selected"
        );
        assert!(
            s[Hook::ExportLogs as usize].is_none(),
            "selected but not exported"
        );
    }

    #[test]
    fn a_selector_requiring_only_the_empty_key_applies_nowhere() {
        let exports = Exports {
            observe: true,
            spans: true,
            logs: true,
            errors: true,
        };
        let sel = |hooks: Vec<wit::Hook>, require_any: &[&str]| wit::Selector {
            hooks,
            keys: vec![],
            require_any: require_any.iter().map(|k| k.to_string()).collect(),
        };
        let info = |selectors| PluginInfo {
            name: "p".into(),
            version: "1".into(),
            selectors,
        };
        let none = selectors(exports, &info(vec![sel(vec![], &[""])]));
        assert!(none.iter().all(Option::is_none), "no hook at all");
        // Beside a selector that does apply, it takes nothing away from it; and an empty key
        // among real ones is dropped, so a record with an empty key does not qualify.
        let some = selectors(
            exports,
            &info(vec![
                sel(vec![], &[""]),
                sel(vec![wit::Hook::ExportSpans], &["", "gen_ai.prompt"]),
            ]),
        );
        let spans = some[Hook::ExportSpans as usize].as_ref().expect("spans");
        assert_eq!(spans.require_any, ["gen_ai.prompt"]);
        assert!(!spans.record_qualifies([""].into_iter()));
        assert!(spans.record_qualifies(["gen_ai.prompt"].into_iter()));
        assert!(some[Hook::Request as usize].is_none());
    }
}

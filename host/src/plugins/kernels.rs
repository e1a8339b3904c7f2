//! What a plugin can call: `host.log`, `host.count`, `keyed-hash` and the `pattern-set`
//! kernel, plus a WASI that grants nothing (no files, sockets, env, args or real clocks;
//! toolchains import WASI even for pure logic).

use hmac::{Hmac, Mac};
use regex::{Regex, RegexSet};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::acpd::plugin::host::{self, Level, Match, RangeMatch};
use super::budget::{CallMeter, Phase};
use super::engine::Meter;
use super::lift::Ranges;
use super::lower::Hit;

/// Operator-held HMAC keys by id (`[keys]`); a plugin only ever sees digests.
pub type Keys = Arc<BTreeMap<String, Vec<u8>>>;

const MAX_MATCHES: usize = 100_000;
const MAX_COUNTER_NAMES: usize = 64;

/// What compiling one pattern set may cost. The regex engine's compile time and memory grow
/// with the size of the compiled program (Unicode classes: `\w` alone is ~48 KiB, the
/// 256-pattern `\w{12}[[:alpha:]]{6}k<i>_<j>` bomb tens of MiB), so the size limit is what
/// bounds both; the set is compiled first, so a set over the limit fails before any of its
/// patterns is compiled on its own. Sizes measured (PLUGINS.md, "Host kernels"): the
/// first-party redactor's seven rules need 149 KiB.
#[derive(Debug, Clone, Copy)]
pub struct CompileLimits {
    pub max_patterns: usize,
    pub max_pattern_bytes: usize,
    /// Compiled-size limits tried in turn (the smallest that fits is what the set is
    /// accounted at); each failed try stops as soon as it passes its limit.
    pub size_limits: &'static [usize],
}

/// In `init` (off the request path, within the init budget).
pub const INIT_COMPILE: CompileLimits = CompileLimits {
    max_patterns: 256,
    max_pattern_bytes: 64 << 10,
    size_limits: &[128 << 10, 1 << 20],
};

/// In a hook: small sets only (a rejected bomb costs ~3 ms release), and the time is charged
/// to the call's budget like any host call.
pub const HOOK_COMPILE: CompileLimits = CompileLimits {
    max_patterns: 32,
    max_pattern_bytes: 4 << 10,
    size_limits: &[64 << 10],
};

/// Lazy DFA cache of the set (it grows with the text scanned, up to this) and of each
/// pattern's own regex (only run on texts the set matched).
const SET_DFA_BYTES: usize = 1 << 20;

/// Each pattern's cache: a share of 1 MiB, between 32 and 128 KiB (32 KiB from 32 patterns
/// up, as before). 32 KiB was too small for a forward and reverse lazy DFA of a pattern like
/// the redactor's `api_key`: the cache was cleared on every search until the engine gave up
/// for the bounded backtracker, ~6M instructions per 512-span batch (callgrind,
/// `ACPD_BENCH_PROFILE=wasm` of `--bench plugins`) that the same regex with the crate's
/// default cache does not spend; 64 KiB is enough for it.
const PATTERN_DFA_TOTAL: usize = 1 << 20;
const PATTERN_DFA_MIN: usize = 32 << 10;
const PATTERN_DFA_MAX: usize = 128 << 10;

fn pattern_dfa_bytes(patterns: usize) -> usize {
    (PATTERN_DFA_TOTAL / patterns.max(1)).clamp(PATTERN_DFA_MIN, PATTERN_DFA_MAX)
}
const NEST_LIMIT: u32 = 64;

/// Live pattern sets per instance, and the bytes they are accounted at.
pub const MAX_SETS: usize = 16;
pub const MAX_SET_BYTES: usize = 16 << 20;

/// What every instance of one plugin shares.
pub struct Shared {
    pub name: String,
    pub keys: Keys,
    log_budget: Mutex<(Instant, u32)>,
    counter_names: Mutex<Vec<String>>,
    /// The pattern sets this plugin's instances compiled, by what they were compiled from.
    /// Every instance of a pool compiles the same rules in `init`: one copy of the programs
    /// and of their lazy DFA caches (the regex crate keeps one per thread searching at once,
    /// whichever instance asks) serves them all. Only live sets are kept.
    sets: Mutex<HashMap<SetKey, Weak<Compiled>>>,
}

/// What a compiled set depends on: its compile limits and its patterns.
type SetKey = (&'static [usize], Vec<String>);

impl Shared {
    pub fn new(name: String, keys: Keys) -> Self {
        Self {
            name,
            keys,
            log_budget: Mutex::new((Instant::now(), 0)),
            counter_names: Mutex::new(Vec::new()),
            sets: Mutex::default(),
        }
    }

    /// The set of `patterns`, compiled once for all of this plugin's instances while any of
    /// them holds it. Each instance still accounts it in full against its own bound, so what
    /// a guest may compile is what it was without the sharing.
    fn pattern_set(
        &self,
        patterns: Vec<String>,
        limits: &CompileLimits,
    ) -> Result<PatternSet, String> {
        PatternSet::check(&patterns, limits)?;
        let key = (limits.size_limits, patterns);
        let lock = || self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(compiled) = lock().get(&key).and_then(Weak::upgrade) {
            return Ok(PatternSet { compiled });
        }
        // Compiled outside the lock: another instance's lookup does not wait for it.
        let set = PatternSet::compile_checked(&key.1, limits)?;
        let mut sets = lock();
        sets.retain(|_, s| s.strong_count() > 0);
        let slot = sets.entry(key).or_default();
        match slot.upgrade() {
            // Another instance compiled the same set meanwhile: one copy stays.
            Some(compiled) => Ok(PatternSet { compiled }),
            None => {
                *slot = Arc::downgrade(&set.compiled);
                Ok(set)
            }
        }
    }

    /// At most 50 plugin log lines per second: a chatty plugin cannot flood the logs.
    fn log_allowed(&self) -> bool {
        let mut b = self.log_budget.lock().unwrap_or_else(|p| p.into_inner());
        if b.0.elapsed() >= Duration::from_secs(1) {
            *b = (Instant::now(), 0);
        }
        b.1 += 1;
        b.1 <= 50
    }
}

/// A guest's handle on a compiled set, which its plugin's instances may share (`Shared`).
pub struct PatternSet {
    compiled: Arc<Compiled>,
}

struct Compiled {
    set: RegexSet,
    regexes: Vec<Regex>,
    /// What the set is accounted at against [`MAX_SET_BYTES`]: an upper bound of its compiled
    /// programs (set and patterns: twice the size limit it fit in) and of its DFA caches.
    bytes: usize,
}

fn too_big(e: &regex::Error) -> bool {
    matches!(e, regex::Error::CompiledTooBig(_))
}

impl PatternSet {
    pub fn bytes(&self) -> usize {
        self.compiled.bytes
    }

    /// The limits checked before any compile work (or any lookup of a compiled set).
    fn check(patterns: &[String], limits: &CompileLimits) -> Result<(), String> {
        if patterns.len() > limits.max_patterns {
            return Err(format!("at most {} patterns", limits.max_patterns));
        }
        let text: usize = patterns.iter().map(String::len).sum();
        if text > limits.max_pattern_bytes {
            return Err(format!(
                "patterns exceed {} bytes",
                limits.max_pattern_bytes
            ));
        }
        Ok(())
    }

    /// A set compiled on its own, as [`Shared::pattern_set`] compiles one it has not seen.
    #[cfg(test)]
    fn compile(patterns: &[String], limits: &CompileLimits) -> Result<Self, String> {
        Self::check(patterns, limits)?;
        Self::compile_checked(patterns, limits)
    }

    /// [`compile`](Self::compile) once [`check`](Self::check) has passed.
    fn compile_checked(patterns: &[String], limits: &CompileLimits) -> Result<Self, String> {
        let mut compiled = None;
        for &limit in limits.size_limits {
            match regex::RegexSetBuilder::new(patterns)
                .size_limit(limit)
                .dfa_size_limit(SET_DFA_BYTES)
                .nest_limit(NEST_LIMIT)
                .build()
            {
                Ok(set) => {
                    compiled = Some((set, limit));
                    break;
                }
                Err(e) if too_big(&e) => continue,
                Err(e) => return Err(first_invalid(patterns).unwrap_or_else(|| e.to_string())),
            }
        }
        let Some((set, limit)) = compiled else {
            let max = limits.size_limits.last().copied().unwrap_or(0);
            return Err(format!(
                "patterns compile to more than {} KiB (Unicode classes such as \\w are large; \
                 (?-u) or ASCII classes are small)",
                max >> 10
            ));
        };
        let pattern_dfa = pattern_dfa_bytes(patterns.len());
        let regexes = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                regex::RegexBuilder::new(p)
                    .size_limit(limit)
                    .dfa_size_limit(pattern_dfa)
                    .nest_limit(NEST_LIMIT)
                    .build()
                    .map_err(|e| format!("pattern {i}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            compiled: Arc::new(Compiled {
                set,
                regexes,
                bytes: 2 * limit + SET_DFA_BYTES + patterns.len() * pattern_dfa,
            }),
        })
    }

    /// Leftmost-first, non-overlapping matches of any pattern (an earlier pattern wins a tie).
    pub fn find(&self, text: &str, out: &mut Vec<(u32, u32, u32)>) {
        let Compiled { set, regexes, .. } = &*self.compiled;
        let hits = set.matches(text);
        if !hits.matched_any() {
            return;
        }
        let start = out.len();
        for p in hits.iter() {
            for m in regexes[p].find_iter(text) {
                out.push((p as u32, m.start() as u32, m.end() as u32));
            }
        }
        let found = &mut out[start..];
        found.sort_by_key(|&(p, s, e)| (s, std::cmp::Reverse(e), p));
        let mut end = 0u32;
        let mut keep = start;
        for i in start..out.len() {
            let m = out[i];
            if i == start || m.1 >= end {
                end = m.2;
                out[keep] = m;
                keep += 1;
            }
        }
        out.truncate(keep);
    }
}

/// The first pattern that does not parse, with its index (parsing stops before compiling: a
/// zero size limit fails every valid pattern at once).
fn first_invalid(patterns: &[String]) -> Option<String> {
    patterns.iter().enumerate().find_map(|(i, p)| {
        match regex::RegexBuilder::new(p)
            .size_limit(0)
            .nest_limit(NEST_LIMIT)
            .build()
        {
            Err(e) if !too_big(&e) => Some(format!("pattern {i}: {e}")),
            _ => None,
        }
    })
}

/// Memory accounting per instance: refusing growth traps the guest and marks the failure as
/// `memory` (not a generic trap).
pub struct Limiter {
    limits: StoreLimits,
    max_memory: usize,
    pub exceeded: bool,
    /// The size a refused growth asked for (the error names it).
    pub wanted: usize,
    /// Linear memory granted so far, all memories of the instance.
    pub bytes: usize,
}

impl Limiter {
    pub fn new(max_memory: usize) -> Self {
        Self {
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .table_elements(100_000)
                .instances(64)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            max_memory,
            exceeded: false,
            wanted: 0,
            bytes: 0,
        }
    }

    pub fn max_memory(&self) -> usize {
        self.max_memory
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.exceeded = true;
            self.wanted = desired;
        }
        let granted = self.limits.memory_growing(current, desired, maximum)?;
        if granted {
            self.bytes = self.bytes.saturating_add(desired.saturating_sub(current));
        }
        Ok(granted)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A clock frozen at the epoch: the WIT grants no clock.
struct NoClock;

impl wasmtime_wasi::HostWallClock for NoClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for NoClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The data of one instance's Store.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: Limiter,
    pub shared: Arc<Shared>,
    pub meter: CallMeter,
    /// Live pattern sets of this instance and the bytes they are accounted at.
    sets: usize,
    set_bytes: usize,
}

impl State {
    pub fn new(shared: Arc<Shared>, max_memory: usize, meter: Meter) -> Self {
        // Nothing inherited: no args, env, preopens, stdio or network; fixed clocks.
        let mut b = WasiCtxBuilder::new();
        b.allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .wall_clock(NoClock)
            .monotonic_clock(NoClock);
        let wasi = b.build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(max_memory),
            shared,
            meter: CallMeter::new(meter),
            sets: 0,
            set_bytes: 0,
        }
    }

    /// The instance's WASI resources (`wasi_io` serves its streams and pollables).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for State {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if !self.shared.log_allowed() {
            return Ok(());
        }
        let msg = crate::telemetry::sanitize::sanitize(&message);
        let plugin = self.shared.name.as_str();
        match level {
            Level::Trace | Level::Debug => {
                tracing::debug!(name: "acpd.plugin.log", target: "acpd::plugin", { "acpd.plugin.name" = plugin }, "{msg}")
            }
            Level::Info => {
                tracing::info!(name: "acpd.plugin.log", target: "acpd::plugin", { "acpd.plugin.name" = plugin }, "{msg}")
            }
            Level::Warn => {
                tracing::warn!(name: "acpd.plugin.log", target: "acpd::plugin", { "acpd.plugin.name" = plugin }, "{msg}")
            }
            Level::Error => {
                tracing::error!(name: "acpd.plugin.log", target: "acpd::plugin", { "acpd.plugin.name" = plugin }, "{msg}")
            }
        }
        Ok(())
    }

    fn count(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        // Plugin-chosen names become metric labels: bounded per plugin.
        let mut names = self
            .shared
            .counter_names
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !names.contains(&name) {
            if names.len() >= MAX_COUNTER_NAMES || name.len() > 64 {
                return Ok(());
            }
            names.push(name.clone());
        }
        drop(names);
        super::metrics::custom(&self.shared.name, &name, delta);
        Ok(())
    }

    fn keyed_hash(
        &mut self,
        key_id: String,
        data: String,
        hex_len: u32,
    ) -> wasmtime::Result<Result<String, String>> {
        let Some(key) = self.shared.keys.get(&key_id) else {
            return Ok(Err(format!("unknown key id `{key_id}`")));
        };
        let entered = self.meter.host_enter();
        let digest = keyed_hash(key, &data, hex_len);
        self.meter.host_exit(entered)?;
        Ok(Ok(digest))
    }
}

pub fn keyed_hash(key: &[u8], data: &str, hex_len: u32) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if hex_len > 0 && (hex_len as usize) < hex.len() {
        hex.truncate(hex_len as usize);
    }
    hex
}

impl host::HostPatternSet for State {
    fn compile(
        &mut self,
        patterns: Vec<String>,
    ) -> wasmtime::Result<Result<Resource<PatternSet>, String>> {
        if self.sets >= MAX_SETS {
            return Ok(Err(format!(
                "at most {MAX_SETS} live pattern sets per instance (drop unused ones)"
            )));
        }
        let limits = match self.meter.phase {
            Phase::Init => &INIT_COMPILE,
            Phase::Hook => &HOOK_COMPILE,
        };
        // The least this set can be accounted at: refused before any compile work.
        let least = limits.size_limits.first().map_or(0, |l| 2 * l)
            + SET_DFA_BYTES
            + patterns.len() * pattern_dfa_bytes(patterns.len());
        if self.set_bytes + least > MAX_SET_BYTES {
            return Ok(Err(format!(
                "pattern sets of this instance would exceed {} MiB",
                MAX_SET_BYTES >> 20
            )));
        }
        let entered = self.meter.host_enter();
        let compiled = self.shared.pattern_set(patterns, limits);
        self.meter.host_exit(entered)?;
        let set = match compiled {
            Ok(set) => set,
            Err(e) => return Ok(Err(e)),
        };
        if self.set_bytes + set.bytes() > MAX_SET_BYTES {
            return Ok(Err(format!(
                "pattern sets of this instance would exceed {} MiB",
                MAX_SET_BYTES >> 20
            )));
        }
        self.sets += 1;
        self.set_bytes += set.bytes();
        Ok(Ok(self.table.push(set)?))
    }

    fn find(&mut self, this: Resource<PatternSet>, text: String) -> wasmtime::Result<Vec<Match>> {
        let entered = self.meter.host_enter();
        let set = self.table.get(&this)?;
        let mut out = Vec::new();
        set.find(&text, &mut out);
        out.truncate(MAX_MATCHES);
        self.meter.host_exit(entered)?;
        Ok(out
            .into_iter()
            .map(|(pattern, start, end)| Match {
                pattern,
                start,
                end,
            })
            .collect())
    }

    fn scan(
        &mut self,
        this: Resource<PatternSet>,
        arena: String,
        ranges: Vec<(u32, u32)>,
    ) -> wasmtime::Result<Vec<RangeMatch>> {
        // Shadowed in the linker by `scan_hook`; kept for the generated trait.
        let entered = self.meter.host_enter();
        let out = scan(self.table.get(&this)?, &arena, &ranges);
        self.meter.host_exit(entered)?;
        Ok(out.into_iter().map(|h| h.0).collect())
    }

    fn drop(&mut self, this: Resource<PatternSet>) -> wasmtime::Result<()> {
        let set = self.table.delete(this)?;
        self.sets -= 1;
        self.set_bytes -= set.bytes();
        Ok(())
    }
}

/// The interface the kernels are imported from, and `scan`'s name in it.
pub const HOST_INTERFACE: &str = "acpd:plugin/host@0.1.0";
pub const SCAN: &str = "[method]pattern-set.scan";

/// `pattern-set.scan` as the linker serves it. The generated binding would copy the arena (the
/// whole batch's text) into the daemon and lift and lower the ranges and matches field by field;
/// this one reads the arena where the guest holds it, and moves the lists in one pass (lift.rs).
pub fn scan_hook(
    mut store: wasmtime::StoreContextMut<'_, State>,
    (this, arena, ranges): (Resource<PatternSet>, wasmtime::component::WasmStr, Ranges),
) -> wasmtime::Result<(Vec<Hit>,)> {
    let entered = store.data_mut().meter.host_enter();
    let out = {
        let text = arena.to_str(&store)?;
        scan(store.data().table.get(&this)?, &text, &ranges.0)
    };
    store.data_mut().meter.host_exit(entered)?;
    Ok((out,))
}

/// `find` over each `(offset, len)` range of `arena`, offsets relative to the range; a range
/// off the arena or its character boundaries matches nothing; at most [`MAX_MATCHES`].
fn scan(set: &PatternSet, arena: &str, ranges: &[(u32, u32)]) -> Vec<Hit> {
    let mut found = Vec::new();
    let mut out = Vec::new();
    for (i, &(offset, len)) in ranges.iter().enumerate() {
        let Some(text) = arena.get(offset as usize..(offset as usize).saturating_add(len as usize))
        else {
            continue;
        };
        found.clear();
        set.find(text, &mut found);
        out.extend(found.iter().map(|&(pattern, start, end)| {
            Hit(RangeMatch {
                range: i as u32,
                pattern,
                start,
                end,
            })
        }));
        if out.len() >= MAX_MATCHES {
            break;
        }
    }
    out
}

/// The `types` interface has no functions; the world still names it as an import.
impl super::bindings::acpd::plugin::types::Host for State {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_is_leftmost_first_without_overlaps() {
        let set =
            PatternSet::compile(&["a+".into(), "aab".into(), "b".into()], &INIT_COMPILE).unwrap();
        let mut out = Vec::new();
        set.find("xaab b", &mut out);
        // "aab" (pattern 1) starts where "aa" does and is longer; then the lone "b".
        assert_eq!(out, vec![(1, 1, 4), (2, 5, 6)]);
    }

    /// The 256-pattern Unicode bomb is refused by the set's size limit before any pattern is
    /// compiled on its own; a hook's limit is tighter; the first-party rules fit in `init`.
    #[test]
    fn compile_limits_hold_for_the_unicode_bomb() {
        let bomb: Vec<String> = (0..256)
            .map(|j| format!(r"\w{{12}}[[:alpha:]]{{6}}k1_{j}"))
            .collect();
        let e = PatternSet::compile(&bomb, &INIT_COMPILE).err().unwrap();
        assert!(e.contains("more than 1024 KiB"), "{e}");
        let e = PatternSet::compile(&bomb[..32], &HOOK_COMPILE)
            .err()
            .unwrap();
        assert!(e.contains("more than 64 KiB"), "{e}");
        let e = PatternSet::compile(&bomb, &HOOK_COMPILE).err().unwrap();
        assert!(e.contains("at most 32 patterns"), "{e}");
        let rules: Vec<String> = [
            r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
            r"\b(?:\d[ -]?){12,18}\d\b",
            r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",
        ]
        .map(String::from)
        .to_vec();
        let set = PatternSet::compile(&rules, &INIT_COMPILE).unwrap();
        assert!(set.bytes() <= MAX_SET_BYTES / 2, "{}", set.bytes());
        let e = PatternSet::compile(&["ok".into(), "(".into()], &INIT_COMPILE)
            .err()
            .unwrap();
        assert!(e.starts_with("pattern 1:"), "{e}");
    }

    /// Instances of one plugin compiling the same rules get one compiled set while any holds
    /// it; the limits are checked before the lookup; sets no instance holds are not kept.
    #[test]
    fn a_plugins_instances_share_one_compiled_set() {
        let shared = Shared::new("p".into(), Keys::default());
        let rules = vec!["a+".to_string(), "b".into()];
        let a = shared.pattern_set(rules.clone(), &INIT_COMPILE).unwrap();
        let b = shared.pattern_set(rules.clone(), &INIT_COMPILE).unwrap();
        assert!(Arc::ptr_eq(&a.compiled, &b.compiled));
        let mut out = Vec::new();
        b.find("xaab", &mut out);
        assert_eq!(out, vec![(0, 1, 3), (1, 3, 4)]);
        let hook = shared.pattern_set(rules.clone(), &HOOK_COMPILE).unwrap();
        assert!(!Arc::ptr_eq(&a.compiled, &hook.compiled));
        let other = shared.pattern_set(vec!["c".into()], &INIT_COMPILE).unwrap();
        assert!(!Arc::ptr_eq(&a.compiled, &other.compiled));
        let many = vec!["a".to_string(); 33];
        shared.pattern_set(many.clone(), &INIT_COMPILE).unwrap();
        let e = shared.pattern_set(many, &HOOK_COMPILE).err().unwrap();
        assert!(e.contains("at most 32 patterns"), "{e}");
        drop((a, b, hook));
        let _c = shared.pattern_set(vec!["d".into()], &INIT_COMPILE).unwrap();
        // Live: `other` and `_c`; the rest were dropped (the 33-pattern set at once).
        assert_eq!(shared.sets.lock().unwrap().len(), 2);
        let again = shared.pattern_set(rules.clone(), &INIT_COMPILE).unwrap();
        let alone = PatternSet::compile(&rules, &INIT_COMPILE).unwrap();
        assert_eq!(again.bytes(), alone.bytes());
        assert_eq!(shared.sets.lock().unwrap().len(), 3);
    }

    /// Small sets get larger caches per pattern, within the same total; from 32 patterns up
    /// the accounting is what it always was.
    #[test]
    fn pattern_caches_share_a_bound() {
        assert_eq!(pattern_dfa_bytes(1), 128 << 10);
        assert_eq!(pattern_dfa_bytes(7), 128 << 10);
        assert_eq!(pattern_dfa_bytes(16), 64 << 10);
        assert_eq!(pattern_dfa_bytes(32), 32 << 10);
        assert_eq!(pattern_dfa_bytes(256), 32 << 10);
        for n in 1..=256 {
            assert!(n * pattern_dfa_bytes(n) <= (1 << 20).max(n * (32 << 10)));
        }
    }

    #[test]
    fn keyed_hash_truncates_and_depends_on_the_key() {
        let a = keyed_hash(b"k1", "bob@example.com", 16);
        assert_eq!(a.len(), 16);
        assert_ne!(a, keyed_hash(b"k2", "bob@example.com", 16));
        assert_eq!(keyed_hash(b"k1", "x", 0).len(), 64);
    }
}

//! The one wasmtime `Engine` (settings that decide per-call cost), its epoch ticker (`ticker`), the CPU
//! clock plugin budgets are counted in, and the on-disk cache of compiled components.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, OptLevel};

pub use super::ticker::TICK;

/// How a plugin call's budget is measured (PLUGINS.md, "CPU budgets").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Meter {
    /// The daemon's meter: the calling thread's CPU time (guest code and the host kernels it
    /// calls), looked at on each epoch tick that passes while the guest runs and after each
    /// long host call. Time the thread waits for a core is not charged.
    #[default]
    CpuTime,
    /// Wall-clock epochs, the meter before CPU budgets (benchmarks compare against it).
    WallClock,
    /// wasmtime fuel, one unit per guest instruction, [`FUEL_PER_MS`] per millisecond of
    /// budget (benchmarks only: host calls are not charged).
    Fuel,
}

/// Fuel per millisecond of budget under [`Meter::Fuel`]: about what a guest executes in 1 ms
/// of CPU on the reference machine (`cargo bench -p acpd --bench plugins`).
pub const FUEL_PER_MS: u64 = 1_000_000;

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`). A system call, ~1 us on the
/// reference machine: read once per tick of a running guest, never per call.
pub fn thread_cpu() -> Duration {
    use nix::libc;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub fn new_engine() -> anyhow::Result<Engine> {
    new_engine_with(Meter::default())
}

pub fn new_engine_with(meter: Meter) -> anyhow::Result<Engine> {
    let engine = Engine::new(&config(meter)).map_err(|e| anyhow::anyhow!("{e}"))?;
    if meter != Meter::Fuel {
        super::ticker::start(&engine);
    }
    Ok(engine)
}

/// The settings of the daemon's engine, and of the short-lived engines that compile for it
/// ([`compile`]): the same settings give the same compatibility hash.
fn config(meter: Meter) -> Config {
    let mut c = Config::new();
    // On by default with component-model-async, and 3x the cost of a sync call: our hooks are
    // plain synchronous functions.
    c.concurrency_support(false);
    match meter {
        Meter::CpuTime | Meter::WallClock => {
            c.epoch_interruption(true);
        }
        Meter::Fuel => {
            c.consume_fuel(true);
        }
    }
    c.cranelift_opt_level(OptLevel::Speed);
    c.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(16));
    c.max_wasm_stack(1 << 20);
    // For profiling: wasmtime writes /tmp/perf-<pid>.map, and `perf report` names the guest's
    // functions (BENCHMARKS.md, "How to run").
    if std::env::var_os("ACPD_PERFMAP").is_some() {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    c
}

/// Where compiled artifacts live: `$ACPD_CACHE_DIR`, else `$XDG_CACHE_HOME/acpd/plugins`, else
/// `$HOME/.cache/acpd/plugins`, else a private directory in the system temp dir.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ACPD_CACHE_DIR") {
        return Some(PathBuf::from(d).join("plugins"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match base {
        Some(b) => Some(b.join("acpd").join("plugins")),
        None => private_temp_dir(),
    }
}

/// `<tmp>/acpd-<uid>`, only if it is ours and nobody else can write it: deserialising an
/// artifact runs its code, so a directory others can write would be an injection point.
fn private_temp_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = nix::unistd::geteuid().as_raw();
    let dir = std::env::temp_dir().join(format!("acpd-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0;
    private.then(|| dir.join("plugins"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles `bytes` (`meter`: the settings `engine` was made with), or loads the artifact
/// compiled earlier for the same bytes by an engine with the same settings. Only artifacts
/// this function wrote are ever deserialised.
pub fn compile(
    engine: &Engine,
    meter: Meter,
    bytes: &[u8],
    cache: Option<&Path>,
) -> anyhow::Result<Component> {
    let Some(dir) = cache else {
        let artifact = precompile(meter, bytes)?;
        // SAFETY: `artifact` was just produced by an engine with `engine`'s settings.
        return unsafe { Component::deserialize(engine, &artifact) }
            .map_err(|e| anyhow::anyhow!("{e:?}"));
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let key = format!(
        "{}-{:016x}-{}.cwasm",
        sha256_hex(bytes),
        h.finish(),
        env!("CARGO_PKG_VERSION")
    );
    let path = dir.join(key);
    if path.is_file() {
        // SAFETY: the file was produced by `precompile_component` of an engine with the same
        // compatibility hash, in a directory only this user writes.
        if let Ok(c) = unsafe { Component::deserialize_file(engine, &path) } {
            return Ok(c);
        }
    }
    let artifact = precompile(meter, bytes)?;
    if std::fs::create_dir_all(dir).is_ok() {
        // Write-then-rename: a concurrent daemon never reads half an artifact.
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let written = std::fs::write(&tmp, &artifact).is_ok();
        if written && std::fs::rename(&tmp, &path).is_ok() {
            // Mapped from the file, as every later start maps it: the code's pages are then
            // the page cache's, not anonymous memory this process holds for its life (about
            // 2 MiB for the default plugins on a first start).
            // SAFETY: the file was just written from this engine's artifact, by this user.
            if let Ok(c) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok(c);
            }
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    // SAFETY: `artifact` was just produced by an engine with `engine`'s settings.
    unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Compiles with an engine made for this one component and dropped after it. An engine keeps
/// the compiler's working state (Cranelift's contexts, one per compiling thread) for its life:
/// compiled by the daemon's own engine, the default plugins left about 14 MiB of heap live
/// until a restart (BENCHMARKS.md, "memory"). The artifact is the same: same settings.
fn precompile(meter: Meter, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let compiler = Engine::new(&config(meter)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let artifact = compiler
        .precompile_component(bytes)
        .map_err(|e| anyhow::anyhow!("{e:?}"));
    drop(compiler);
    release_free_heap();
    artifact
}

/// A compile frees tens of MiB in many small blocks across the compiling threads' arenas, and
/// glibc returns only what is free at the top of a heap: the rest stayed resident (7 MiB with
/// the default plugins). One trim per compile gives it back, about a millisecond.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; any thread may call it.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

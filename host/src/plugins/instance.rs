//! One live instance of a plugin: its Store, the exports it has, and calls with a deadline.
//! A trap poisons an instance (wasmtime refuses to re-enter it): the caller drops it.

use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use super::bindings::AllHooks;
use super::bindings::acpd::plugin::types::{AttrEdit, AttrRef, PluginError, PluginInfo};
use super::bindings::exports::acpd::plugin::{
    error_hooks, lifecycle, log_hooks, observe_hooks, span_hooks,
};
use super::budget::Phase;
use super::engine::{FUEL_PER_MS, Meter};
use super::kernels::{Shared, State};
use super::ticker;
use super::{kernels, lift, lower};

/// Why a call did not produce a usable answer (the `acpd.plugin.failure` label).
#[derive(Debug, Clone)]
pub enum Failure {
    Trap(String),
    Timeout,
    /// A linear memory would have grown past the plugin's `memory_mib` (bytes).
    Memory {
        limit: usize,
        wanted: usize,
    },
    InvalidOutput(String),
    /// The plugin returned `plugin-error::failed`.
    Failed(String),
    InvalidConfig(String),
    /// Every instance is busy and the pool is at its bound.
    Busy,
    Quarantined,
}

impl Failure {
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => "trap",
            Failure::Timeout => "timeout",
            Failure::Memory { .. } => "memory",
            Failure::InvalidOutput(_) => "invalid_output",
            Failure::Failed(_) => "failed",
            Failure::InvalidConfig(_) => "invalid_config",
            Failure::Busy => "busy",
            Failure::Quarantined => "quarantined",
        }
    }

    /// The instance cannot be entered again after these.
    pub fn poisons(&self) -> bool {
        matches!(
            self,
            Failure::Trap(_) | Failure::Timeout | Failure::Memory { .. }
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(m) => write!(f, "trap: {m}"),
            Failure::Timeout => write!(f, "CPU budget exceeded"),
            Failure::Memory { limit, wanted } => write!(
                f,
                "memory limit exceeded: a linear memory of {} MiB is over this plugin's limit of {} MiB (`memory_mib`)",
                wanted.div_ceil(1 << 20),
                limit >> 20
            ),
            Failure::InvalidOutput(m) => write!(f, "invalid output: {m}"),
            Failure::Failed(m) => write!(f, "plugin error: {m}"),
            Failure::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Failure::Busy => write!(f, "no free instance"),
            Failure::Quarantined => write!(f, "quarantined"),
        }
    }
}

/// The linker every plugin is instantiated against: the `host` interface and a WASI that
/// grants nothing.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
    // `wasi:io` again: its blocking calls step out of async only when made (wasi_io.rs).
    super::wasi_io::shadow(&mut linker)?;
    AllHooks::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // `scan` again, over the generated one: it borrows the arena from the guest's memory and
    // moves its ranges and matches in one pass (kernels::scan_hook).
    linker.allow_shadowing(true);
    linker
        .instance(kernels::HOST_INTERFACE)
        .and_then(|mut i| i.func_wrap(kernels::SCAN, kernels::scan_hook))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// Type-checked once per plugin; instances are cheap to make from it.
pub struct Pre {
    pre: InstancePre<State>,
    /// The component imports WASI that blocks on the ambient runtime other than `wasi:io`
    /// (`wasi_io::blocks_elsewhere`): its request-path calls step out of async whole.
    pub blocks_elsewhere: bool,
    lifecycle: lifecycle::GuestIndices,
    observe: Option<observe_hooks::GuestIndices>,
    spans: Option<span_hooks::GuestIndices>,
    logs: Option<log_hooks::GuestIndices>,
    errors: Option<error_hooks::GuestIndices>,
}

/// Which hook interfaces a component exports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exports {
    pub observe: bool,
    pub spans: bool,
    pub logs: bool,
    pub errors: bool,
}

impl Pre {
    /// Where the component's compiled image is mapped (mapped while this lives).
    pub fn code_range(&self) -> std::ops::Range<usize> {
        let r = self.pre.component().image_range();
        r.start as usize..r.end as usize
    }

    pub fn new(
        linker: &Linker<State>,
        component: &wasmtime::component::Component,
    ) -> anyhow::Result<Self> {
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let lifecycle = lifecycle::GuestIndices::new(&pre).map_err(|e| {
            anyhow::anyhow!("not an acpd:plugin@0.1 component (no lifecycle export): {e}")
        })?;
        Ok(Self {
            blocks_elsewhere: super::wasi_io::blocks_elsewhere(component, linker.engine()),
            observe: observe_hooks::GuestIndices::new(&pre).ok(),
            spans: span_hooks::GuestIndices::new(&pre).ok(),
            logs: log_hooks::GuestIndices::new(&pre).ok(),
            errors: error_hooks::GuestIndices::new(&pre).ok(),
            pre,
            lifecycle,
        })
    }

    pub fn exports(&self) -> Exports {
        Exports {
            observe: self.observe.is_some(),
            spans: self.spans.is_some(),
            logs: self.logs.is_some(),
            errors: self.errors.is_some(),
        }
    }
}

pub struct Live {
    store: Store<State>,
    observe: Option<observe_hooks::Guest>,
    spans: Option<span_hooks::Guest>,
    logs: Option<log_hooks::Guest>,
    errors: Option<error_hooks::Guest>,
    pub calls: u64,
}

fn classify(store: &Store<State>, e: wasmtime::Error) -> Failure {
    let limiter = &store.data().limiter;
    if limiter.exceeded {
        return Failure::Memory {
            limit: limiter.max_memory(),
            wanted: limiter.wanted,
        };
    }
    if store.data().meter.exceeded
        || matches!(
            e.downcast_ref::<Trap>(),
            Some(Trap::Interrupt | Trap::OutOfFuel)
        )
    {
        return Failure::Timeout;
    }
    let mut m = format!("{e:#}");
    m.truncate(m.floor_char_boundary(2000));
    Failure::Trap(m)
}

fn finish<R>(
    store: &Store<State>,
    r: wasmtime::Result<Result<R, PluginError>>,
) -> Result<R, Failure> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(PluginError::Failed(m))) => Err(Failure::Failed(m)),
        Ok(Err(PluginError::InvalidConfig(m))) => Err(Failure::InvalidConfig(m)),
        Err(e) => Err(classify(store, e)),
    }
}

/// The hooks acpd calls with types of its own: the records and attributes lowered in one pass
/// (lower.rs) and the edits lifted in one pass (lift.rs). Checked against the component once,
/// when an instance is made, as the generated bindings check theirs; a call then skips the
/// check (a few thousand instructions, a microsecond per request hook).
fn check_own_types(
    store: &Store<State>,
    observe: Option<&observe_hooks::Guest>,
    spans: Option<&span_hooks::Guest>,
    logs: Option<&log_hooks::Guest>,
) -> wasmtime::Result<()> {
    if let Some(g) = observe {
        for f in [
            g.func_on_request().func(),
            g.func_on_dispatch().func(),
            g.func_on_child().func(),
        ] {
            f.typed::<ObserveParams<'static>, ObserveResult>(store)?;
        }
    }
    if let Some(g) = spans {
        g.func_on_spans()
            .func()
            .typed::<(lower::SpanBatch<'static>,), SpansResult>(store)?;
    }
    if let Some(g) = logs {
        g.func_on_logs()
            .func()
            .typed::<(lower::LogBatch<'static>,), LogsResult>(store)?;
    }
    Ok(())
}

type ObserveParams<'a> = (&'a str, &'a [lower::Attr]);
type ObserveResult = (Result<lift::Edits, PluginError>,);
type SpansResult = (Result<lift::SpanEdits, PluginError>,);
type LogsResult = (Result<lift::LogEdits, PluginError>,);

/// Calls a hook whose types `check_own_types` checked when the instance was made.
fn call_checked<P, R>(
    store: &mut Store<State>,
    f: wasmtime::component::Func,
    params: P,
) -> wasmtime::Result<R>
where
    P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
    R: wasmtime::component::ComponentNamedList + wasmtime::component::Lift + 'static,
{
    // SAFETY: `f` is one of the hooks `check_own_types` checked against exactly these types
    // (`P` and `R` are the aliases above) when this instance was made.
    let typed = unsafe { wasmtime::component::TypedFunc::<P, R>::new_unchecked(f) };
    typed.call(store, params)
}

fn missing() -> Failure {
    Failure::Trap("hook not exported".into())
}

/// Arms `store` for one call of `budget` under its meter.
fn arm_store(store: &mut Store<State>, phase: Phase, budget: Duration) {
    let meter = store.data().meter.meter;
    store.data_mut().meter.arm(phase, budget);
    match meter {
        // Looked at on the next tick; charged in CPU time from there (budget.rs).
        Meter::CpuTime => store.set_epoch_deadline(1),
        Meter::WallClock => {
            let ms = budget.as_millis().min(u64::MAX as u128) as u64;
            store.set_epoch_deadline(ms.max(1) + 1)
        }
        Meter::Fuel => {
            let ms = budget.as_millis().min(u64::MAX as u128) as u64;
            let _ = store.set_fuel(ms.max(1).saturating_mul(FUEL_PER_MS));
        }
    }
}

impl Live {
    /// Instantiates and runs `init` within `init_budget`.
    pub fn new(
        pre: &Pre,
        shared: Arc<Shared>,
        max_memory: usize,
        init_json: &str,
        init_budget: Duration,
        meter: Meter,
    ) -> Result<(Live, PluginInfo), Failure> {
        let _running = ticker::running();
        let mut store = Store::new(pre.pre.engine(), State::new(shared, max_memory, meter));
        store.limiter(|s| &mut s.limiter);
        if meter == Meter::CpuTime {
            store.epoch_deadline_callback(|mut cx| {
                if cx.data_mut().meter.tick() {
                    Ok(UpdateDeadline::Continue(1))
                } else {
                    Err(Trap::Interrupt.into())
                }
            });
        }
        arm_store(&mut store, Phase::Init, init_budget);
        let instance = pre
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e))?;
        let load = |store: &mut Store<State>| -> wasmtime::Result<_> {
            Ok((
                pre.lifecycle.load(&mut *store, &instance)?,
                pre.observe
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                pre.spans
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                pre.logs
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                pre.errors
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
            ))
        };
        let (lifecycle, observe, spans, logs, errors) =
            load(&mut store).map_err(|e| classify(&store, e))?;
        check_own_types(&store, observe.as_ref(), spans.as_ref(), logs.as_ref())
            .map_err(|e| classify(&store, e))?;
        let r = lifecycle.call_init(&mut store, init_json);
        let info = finish(&store, r)?;
        Ok((
            Live {
                store,
                observe,
                spans,
                logs,
                errors,
                calls: 0,
            },
            info,
        ))
    }

    /// Arms the store for one hook call; the call's deadline holds while the guard lives.
    fn arm(&mut self, budget: Duration) -> ticker::Running {
        let running = ticker::running();
        self.calls += 1;
        self.store.data_mut().limiter.exceeded = false;
        arm_store(&mut self.store, Phase::Hook, budget);
        running
    }

    /// CPU charged to the last call when it was stopped for its budget.
    pub fn charged(&self) -> Duration {
        self.store.data().meter.used
    }

    pub fn memory_exceeded(&self) -> bool {
        self.store.data().limiter.exceeded
    }

    /// Bytes of linear memory this instance holds (what it may keep resident).
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.bytes
    }

    pub fn observe(
        &mut self,
        which: super::Hook,
        budget: Duration,
        arena: &str,
        attrs: &[AttrRef],
    ) -> Result<Vec<AttrEdit>, Failure> {
        let _running = self.arm(budget);
        let g = self.observe.as_ref().ok_or_else(missing)?;
        let f = *match which {
            super::Hook::Dispatch => g.func_on_dispatch(),
            super::Hook::Child => g.func_on_child(),
            _ => g.func_on_request(),
        }
        .func();
        let params: ObserveParams<'_> = (arena, lower::Attr::slice(attrs));
        let r = call_checked::<_, ObserveResult>(&mut self.store, f, params).map(|(r,)| r);
        finish(&self.store, r).map(|e| e.0)
    }

    pub fn spans(
        &mut self,
        budget: Duration,
        batch: &span_hooks::SpanBatch,
    ) -> Result<span_hooks::SpanEdits, Failure> {
        let _running = self.arm(budget);
        let g = self.spans.as_ref().ok_or_else(missing)?;
        let f = *g.func_on_spans().func();
        let params = (lower::SpanBatch::from(batch),);
        let r = call_checked::<_, SpansResult>(&mut self.store, f, params).map(|(r,)| r);
        finish(&self.store, r).map(Into::into)
    }

    pub fn logs(
        &mut self,
        budget: Duration,
        batch: &log_hooks::LogBatch,
    ) -> Result<log_hooks::LogEdits, Failure> {
        let _running = self.arm(budget);
        let g = self.logs.as_ref().ok_or_else(missing)?;
        let f = *g.func_on_logs().func();
        let params = (lower::LogBatch::from(batch),);
        let r = call_checked::<_, LogsResult>(&mut self.store, f, params).map(|(r,)| r);
        finish(&self.store, r).map(Into::into)
    }

    pub fn translate(
        &mut self,
        budget: Duration,
        err: &error_hooks::ErrorInfo,
    ) -> Result<Option<error_hooks::ClientError>, Failure> {
        let _running = self.arm(budget);
        let g = self.errors.as_ref().ok_or_else(missing)?;
        let r = g.call_translate(&mut self.store, err);
        finish(&self.store, r)
    }
}

//! The bridge between the generated bindings and the plugin's traits (used by
//! [`crate::export_plugin!`]). The plugin instance lives here between calls: an instance is
//! long-lived in the daemon, so state built in `init` (compiled rules) is reused.

use std::any::Any;
use std::cell::RefCell;

use crate::bindings::acpd::plugin::types as w;
use crate::edits::{AttrValue, Edit, Edits};
use crate::{Config, Error, Hook, Plugin};

thread_local! {
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

pub(crate) fn error(e: Error) -> w::PluginError {
    match e {
        Error::Config(m) => w::PluginError::InvalidConfig(m),
        Error::Failed(m) => w::PluginError::Failed(m),
    }
}

pub fn with<T: 'static, R>(
    f: impl FnOnce(&mut T) -> Result<R, Error>,
) -> Result<R, w::PluginError> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let t = s
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .ok_or_else(|| w::PluginError::Failed("hook called before init".into()))?;
        f(t).map_err(error)
    })
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        crate::kernels::host_log(record.level(), &record.args().to_string());
    }

    fn flush(&self) {}
}

static LOGGER: HostLogger = HostLogger;

fn install_once() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Info);
        // A panic traps the instance; its message goes to the daemon's log first.
        std::panic::set_hook(Box::new(|info| {
            crate::kernels::host_log(log::Level::Error, &format!("panic: {info}"));
        }));
    });
}

/// The hooks of the roles the type plays: a component may export interfaces of roles it does
/// not play (the `all-hooks` world), and the daemon must not call those.
fn role_hooks(roles: &Roles) -> Vec<w::Hook> {
    let mut h = Vec::new();
    if roles.observe {
        h.extend([w::Hook::Request, w::Hook::Dispatch, w::Hook::Child]);
    }
    if roles.spans {
        h.push(w::Hook::ExportSpans);
    }
    if roles.logs {
        h.push(w::Hook::ExportLogs);
    }
    if roles.errors {
        h.push(w::Hook::Error);
    }
    h
}

fn wit_hook(h: Hook) -> w::Hook {
    match h {
        Hook::Request => w::Hook::Request,
        Hook::Dispatch => w::Hook::Dispatch,
        Hook::Child => w::Hook::Child,
        Hook::ExportSpans => w::Hook::ExportSpans,
        Hook::ExportLogs => w::Hook::ExportLogs,
        Hook::Error => w::Hook::Error,
    }
}

pub fn init<T: Plugin>(config_json: &str, roles: Roles) -> Result<w::PluginInfo, w::PluginError> {
    install_once();
    let plugin = T::init(Config::from_json(config_json).map_err(error)?).map_err(error)?;
    let roles = role_hooks(&roles);
    let mut selectors: Vec<w::Selector> = plugin
        .selectors()
        .into_iter()
        .map(|s| w::Selector {
            hooks: if s.hooks.is_empty() {
                roles.clone()
            } else {
                s.hooks.into_iter().map(wit_hook).collect()
            },
            keys: s.keys,
            require_any: s.require_any,
        })
        .collect();
    if selectors.is_empty() {
        selectors.push(w::Selector {
            hooks: roles,
            keys: Vec::new(),
            require_any: Vec::new(),
        });
    }
    STATE.with(|s| *s.borrow_mut() = Some(Box::new(plugin)));
    Ok(w::PluginInfo {
        name: T::NAME.to_string(),
        version: T::VERSION.to_string(),
        selectors,
    })
}

// Unused only in the `base` world (no role enabled).
#[allow(dead_code)]
pub(crate) fn wit_value(v: AttrValue) -> w::AttrValue {
    match v {
        AttrValue::Str(s) => w::AttrValue::Str(s),
        AttrValue::Bool(b) => w::AttrValue::Boolean(b),
        AttrValue::Int(i) => w::AttrValue::Int(i),
        AttrValue::Double(f) => w::AttrValue::Double(f),
    }
}

#[allow(dead_code)]
pub(crate) fn wit_edits(e: Edits) -> Vec<w::AttrEdit> {
    e.list
        .into_iter()
        .map(|e| match e {
            Edit::Replace(i, v) => w::AttrEdit::Replace((i, wit_value(v))),
            Edit::Remove(i) => w::AttrEdit::Remove(i),
            Edit::Upsert(r, k, v) => w::AttrEdit::Upsert((r, k, wit_value(v))),
        })
        .collect()
}

/// Which roles the registered type plays, decided in the user's crate where its type is
/// concrete (see [`Wrap`]).
pub struct Roles {
    pub observe: bool,
    pub spans: bool,
    pub logs: bool,
    pub errors: bool,
}

/// Dispatch by what a type implements, without requiring it (autoref specialisation): called
/// as `(&Wrap::<T>::new()).__acpd_call(..)`, the `Specific` impl on `Wrap<T>` (needs the role's
/// trait) matches first; when `T` lacks the trait, probing goes on to the `General` impl on
/// `&Wrap<T>`, the no-op default. So a component of the `all-hooks` world, or of a crate whose
/// SDK features were unified with another plugin's, still needs only the traits of its roles.
pub struct Wrap<T>(std::marker::PhantomData<T>);

impl<T> Wrap<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Wrap(std::marker::PhantomData)
    }
}

macro_rules! role {
    ($module:ident, $specific:ident, $general:ident, $bound:path, $args:ty, $ret:ty, $default:expr, $call:expr) => {
        pub trait $specific {
            fn __acpd_call(&self, args: $args) -> Result<$ret, w::PluginError>;
            fn __acpd_has(&self) -> bool {
                true
            }
        }

        impl<T: Plugin + $bound> $specific for Wrap<T> {
            fn __acpd_call(&self, args: $args) -> Result<$ret, w::PluginError> {
                with::<T, _>(|p| $call(p, args))
            }
        }

        pub trait $general {
            fn __acpd_call(&self, _args: $args) -> Result<$ret, w::PluginError> {
                Ok($default)
            }
            fn __acpd_has(&self) -> bool {
                false
            }
        }

        impl<T> $general for &Wrap<T> {}
    };
}

#[cfg(acpd_has_observe)]
pub mod observe {
    use super::*;
    use crate::views::Attrs;

    pub type Args = (Hook, String, Vec<w::AttrRef>);

    fn call<T: crate::Observer>(
        p: &mut T,
        (hook, arena, attrs): Args,
    ) -> Result<Vec<w::AttrEdit>, Error> {
        let view = Attrs::new(&arena, &attrs);
        let mut out = Edits::default();
        match hook {
            Hook::Dispatch => p.on_dispatch(&view, &mut out)?,
            Hook::Child => p.on_child(&view, &mut out)?,
            _ => p.on_request(&view, &mut out)?,
        }
        Ok(wit_edits(out))
    }

    role!(
        observe,
        Specific,
        General,
        crate::Observer,
        Args,
        Vec<w::AttrEdit>,
        Vec::new(),
        call
    );
}

#[cfg(acpd_has_spans)]
pub mod spans {
    use super::*;
    use crate::bindings::exports::acpd::plugin::span_hooks as s;
    use crate::views::{SpanBatch, SpanKind, SpanMeta};

    fn call<T: crate::SpanProcessor>(
        p: &mut T,
        batch: s::SpanBatch,
    ) -> Result<s::SpanEdits, Error> {
        let metas = batch
            .spans
            .iter()
            .map(|r| SpanMeta {
                name: r.name,
                kind: match r.kind {
                    s::SpanKind::Internal => SpanKind::Internal,
                    s::SpanKind::Server => SpanKind::Server,
                    s::SpanKind::Client => SpanKind::Client,
                    s::SpanKind::Producer => SpanKind::Producer,
                    s::SpanKind::Consumer => SpanKind::Consumer,
                },
                is_error: r.is_error,
            })
            .collect();
        let view = SpanBatch::new(&batch.arena, &batch.attrs, metas);
        let mut out = crate::SpanEdits::default();
        p.on_spans(&view, &mut out)?;
        Ok(s::SpanEdits {
            attrs: wit_edits(out.attrs),
            renames: out.renames,
        })
    }

    role!(
        spans,
        Specific,
        General,
        crate::SpanProcessor,
        s::SpanBatch,
        s::SpanEdits,
        s::SpanEdits {
            attrs: Vec::new(),
            renames: Vec::new()
        },
        call
    );
}

#[cfg(acpd_has_logs)]
pub mod logs {
    use super::*;
    use crate::bindings::exports::acpd::plugin::log_hooks as l;
    use crate::views::{LogBatch, LogMeta};

    fn call<T: crate::LogProcessor>(p: &mut T, batch: l::LogBatch) -> Result<l::LogEdits, Error> {
        let metas = batch
            .logs
            .iter()
            .map(|r| LogMeta {
                body: r.body,
                severity: r.severity,
                event_name: r.event_name,
            })
            .collect();
        let view = LogBatch::new(&batch.arena, &batch.attrs, metas);
        let mut out = crate::LogEdits::default();
        p.on_logs(&view, &mut out)?;
        Ok(l::LogEdits {
            attrs: wit_edits(out.attrs),
            bodies: out.bodies,
            drops: out.drops,
        })
    }

    role!(
        logs,
        Specific,
        General,
        crate::LogProcessor,
        l::LogBatch,
        l::LogEdits,
        l::LogEdits {
            attrs: Vec::new(),
            bodies: Vec::new(),
            drops: Vec::new()
        },
        call
    );
}

#[cfg(acpd_has_errors)]
pub mod errors {
    use super::*;
    use crate::bindings::exports::acpd::plugin::error_hooks as e;

    fn call<T: crate::ErrorTranslator>(
        p: &mut T,
        err: e::ErrorInfo,
    ) -> Result<Option<e::ClientError>, Error> {
        let info = crate::ErrorInfo {
            surface: match err.surface {
                e::Surface::Http => crate::Surface::Http,
                e::Surface::Sse => crate::Surface::Sse,
            },
            context: serde_json::from_str(&err.context_json)
                .unwrap_or(serde_json::Value::Object(Default::default())),
            code: err.code,
            status: err.status,
            message: err.message,
            retry_after: err.retry_after,
            rpc_code: err.rpc_code,
        };
        Ok(p.translate(&info)?.map(|c| e::ClientError {
            status: c.status,
            code: c.code,
            message: c.message,
            retryable: c.retryable,
            retry_after: c.retry_after,
        }))
    }

    role!(
        errors,
        Specific,
        General,
        crate::ErrorTranslator,
        e::ErrorInfo,
        Option<e::ClientError>,
        None,
        call
    );
}

#[cfg(acpd_has_observe)]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_observe {
    ($glue:ident, $ty:ty) => {
        impl $crate::bindings::exports::acpd::plugin::observe_hooks::Guest for $glue {
            fn on_request(
                arena: ::std::string::String,
                attrs: ::std::vec::Vec<$crate::bindings::acpd::plugin::types::AttrRef>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::acpd::plugin::types::AttrEdit>,
                $crate::bindings::acpd::plugin::types::PluginError,
            > {
                use $crate::glue::observe::{General as _, Specific as _};
                (&$crate::glue::Wrap::<$ty>::new()).__acpd_call((
                    $crate::Hook::Request,
                    arena,
                    attrs,
                ))
            }
            fn on_dispatch(
                arena: ::std::string::String,
                attrs: ::std::vec::Vec<$crate::bindings::acpd::plugin::types::AttrRef>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::acpd::plugin::types::AttrEdit>,
                $crate::bindings::acpd::plugin::types::PluginError,
            > {
                use $crate::glue::observe::{General as _, Specific as _};
                (&$crate::glue::Wrap::<$ty>::new()).__acpd_call((
                    $crate::Hook::Dispatch,
                    arena,
                    attrs,
                ))
            }
            fn on_child(
                arena: ::std::string::String,
                attrs: ::std::vec::Vec<$crate::bindings::acpd::plugin::types::AttrRef>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::acpd::plugin::types::AttrEdit>,
                $crate::bindings::acpd::plugin::types::PluginError,
            > {
                use $crate::glue::observe::{General as _, Specific as _};
                (&$crate::glue::Wrap::<$ty>::new()).__acpd_call(($crate::Hook::Child, arena, attrs))
            }
        }
    };
    (has $ty:ty) => {{
        use $crate::glue::observe::{General as _, Specific as _};
        (&$crate::glue::Wrap::<$ty>::new()).__acpd_has()
    }};
}

#[cfg(not(acpd_has_observe))]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_observe {
    ($glue:ident, $ty:ty) => {};
    (has $ty:ty) => {
        false
    };
}

#[cfg(acpd_has_spans)]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_spans {
    ($glue:ident, $ty:ty) => {
        impl $crate::bindings::exports::acpd::plugin::span_hooks::Guest for $glue {
            fn on_spans(
                batch: $crate::bindings::exports::acpd::plugin::span_hooks::SpanBatch,
            ) -> ::core::result::Result<
                $crate::bindings::exports::acpd::plugin::span_hooks::SpanEdits,
                $crate::bindings::acpd::plugin::types::PluginError,
            > {
                use $crate::glue::spans::{General as _, Specific as _};
                (&$crate::glue::Wrap::<$ty>::new()).__acpd_call(batch)
            }
        }
    };
    (has $ty:ty) => {{
        use $crate::glue::spans::{General as _, Specific as _};
        (&$crate::glue::Wrap::<$ty>::new()).__acpd_has()
    }};
}

#[cfg(not(acpd_has_spans))]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_spans {
    ($glue:ident, $ty:ty) => {};
    (has $ty:ty) => {
        false
    };
}

#[cfg(acpd_has_logs)]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_logs {
    ($glue:ident, $ty:ty) => {
        impl $crate::bindings::exports::acpd::plugin::log_hooks::Guest for $glue {
            fn on_logs(
                batch: $crate::bindings::exports::acpd::plugin::log_hooks::LogBatch,
            ) -> ::core::result::Result<
                $crate::bindings::exports::acpd::plugin::log_hooks::LogEdits,
                $crate::bindings::acpd::plugin::types::PluginError,
            > {
                use $crate::glue::logs::{General as _, Specific as _};
                (&$crate::glue::Wrap::<$ty>::new()).__acpd_call(batch)
            }
        }
    };
    (has $ty:ty) => {{
        use $crate::glue::logs::{General as _, Specific as _};
        (&$crate::glue::Wrap::<$ty>::new()).__acpd_has()
    }};
}

#[cfg(not(acpd_has_logs))]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_logs {
    ($glue:ident, $ty:ty) => {};
    (has $ty:ty) => {
        false
    };
}

#[cfg(acpd_has_errors)]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_errors {
    ($glue:ident, $ty:ty) => {
        impl $crate::bindings::exports::acpd::plugin::error_hooks::Guest for $glue {
            fn translate(
                err: $crate::bindings::exports::acpd::plugin::error_hooks::ErrorInfo,
            ) -> ::core::result::Result<
                ::core::option::Option<
                    $crate::bindings::exports::acpd::plugin::error_hooks::ClientError,
                >,
                $crate::bindings::acpd::plugin::types::PluginError,
            > {
                use $crate::glue::errors::{General as _, Specific as _};
                (&$crate::glue::Wrap::<$ty>::new()).__acpd_call(err)
            }
        }
    };
    (has $ty:ty) => {{
        use $crate::glue::errors::{General as _, Specific as _};
        (&$crate::glue::Wrap::<$ty>::new()).__acpd_has()
    }};
}

#[cfg(not(acpd_has_errors))]
#[doc(hidden)]
#[macro_export]
macro_rules! __acpd_errors {
    ($glue:ident, $ty:ty) => {};
    (has $ty:ty) => {
        false
    };
}

//! Write acpd plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`] (config validated once, in `init`) plus the trait
//! of each role it plays, registered with [`export_plugin!`]. Roles are cargo features, and the
//! features choose the WIT world, so the component exports only its roles' interfaces (the
//! daemon calls only what a component exports):
//!
//! | feature | trait | hooks |
//! |---|---|---|
//! | `observer` | [`Observer`] | `request`, `dispatch`, `child` (enrichment: upserts only) |
//! | `spans` | [`SpanProcessor`] | `export-spans` (redaction; fails closed) |
//! | `logs` | [`LogProcessor`] | `export-logs` (redaction; fails closed) |
//! | `errors` | [`ErrorTranslator`] | `error` (what clients see) |
//!
//! Attributes arrive packed (one arena string, entries pointing into it) and are read through
//! borrowed views ([`Attrs`], [`SpanBatch`], [`LogBatch`]); answers are sparse [`Edits`] by
//! index. Heavy work belongs in the host kernels: [`PatternSet`] (regexes compiled once, run
//! natively, one [`PatternSet::scan`] per batch) and [`keyed_hash`] (HMAC with a key the plugin
//! never sees). Off wasm32 the kernels have native stand-ins, so plugin logic is testable with
//! plain `cargo test` (see [`testing`]).

pub mod bindings;
mod edits;
#[doc(hidden)]
pub mod glue;
mod kernels;
pub mod testing;
mod views;

pub use edits::{AttrValue, ClientError, Edits, LogEdits, SpanEdits};
pub use kernels::{Match, PatternSet, RangeMatch, count, keyed_hash};
pub use views::{
    Attr, Attrs, ErrorInfo, LogBatch, LogView, SpanBatch, SpanKind, SpanView, Surface, Value,
};

pub use log;
pub use serde;
pub use serde_json;

/// The pipeline points where the daemon calls plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Request,
    Dispatch,
    Child,
    ExportSpans,
    ExportLogs,
    Error,
}

/// What a plugin wants to see at some hooks: the daemon skips calls no selector matches and
/// sends only the attributes a selector names.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Empty: every hook the plugin exports.
    pub hooks: Vec<Hook>,
    /// Exact keys or `prefix.*`; empty: every key.
    pub keys: Vec<String>,
    /// Call only for records that carry one of these keys; empty: always.
    pub require_any: Vec<String>,
}

impl Selector {
    pub fn hooks(hooks: &[Hook]) -> Self {
        Self {
            hooks: hooks.to_vec(),
            ..Self::default()
        }
    }

    pub fn keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    pub fn require_any<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.require_any.extend(keys.into_iter().map(Into::into));
        self
    }

    /// No call at any hook: for a plugin that has nothing to do under its config (an empty
    /// list of selectors means the opposite, every hook). The daemon then skips the plugin
    /// where it would have called it, which on the request path saves the whole call.
    /// On the wire: `require-any` holding only the empty key, which never matches.
    pub fn none() -> Self {
        Self::default().require_any([""])
    }
}

/// A plugin's failure: a config it refuses (the plugin is not activated) or a failed call (the
/// daemon applies the hook's failure policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Config(String),
    Failed(String),
}

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    pub fn failed(msg: impl Into<String>) -> Self {
        Error::Failed(msg.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "invalid config: {m}"),
            Error::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::Failed(m)
    }
}

impl From<&str> for Error {
    fn from(m: &str) -> Self {
        Error::Failed(m.to_string())
    }
}

/// The operator's `[plugins.config]`, as JSON.
#[derive(Debug, Clone)]
pub struct Config(serde_json::Value);

impl Config {
    /// An empty or `null` config is `{}`.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Ok(Config(serde_json::Value::Object(Default::default())));
        }
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("config is not JSON: {e}")))?;
        Ok(Config(if v.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            v
        }))
    }

    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }

    /// Typed config; the error names the offending field.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.0).map_err(|e| Error::config(e.to_string()))
    }
}

/// Every plugin: validates its config once and says what it wants to see.
pub trait Plugin: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;

    fn init(config: Config) -> Result<Self, Error>;

    /// Empty: every hook of the enabled roles, every key.
    fn selectors(&self) -> Vec<Selector> {
        Vec::new()
    }
}

/// Enrichment where the daemon knows who is asking: add attributes with [`Edits::upsert`] on
/// record 0 (the daemon refuses any other edit here).
pub trait Observer {
    fn on_request(&mut self, attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        let _ = (attrs, out);
        Ok(())
    }

    fn on_dispatch(&mut self, attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        let _ = (attrs, out);
        Ok(())
    }

    fn on_child(&mut self, attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        let _ = (attrs, out);
        Ok(())
    }
}

/// Redaction of an export batch of spans.
pub trait SpanProcessor {
    fn on_spans(&mut self, batch: &SpanBatch<'_>, out: &mut SpanEdits) -> Result<(), Error> {
        let _ = (batch, out);
        Ok(())
    }
}

/// Redaction of an export batch of log records.
pub trait LogProcessor {
    fn on_logs(&mut self, batch: &LogBatch<'_>, out: &mut LogEdits) -> Result<(), Error> {
        let _ = (batch, out);
        Ok(())
    }
}

/// What a client is shown of an error; `None` keeps the daemon's wording.
pub trait ErrorTranslator {
    fn translate(&mut self, err: &ErrorInfo) -> Result<Option<ClientError>, Error> {
        let _ = err;
        Ok(None)
    }
}

/// Registers `$ty` as the component's plugin: every enabled role is bridged to its trait.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __AcpdGlue;

        impl $crate::bindings::exports::acpd::plugin::lifecycle::Guest for __AcpdGlue {
            fn init(
                config_json: ::std::string::String,
            ) -> ::core::result::Result<
                $crate::bindings::acpd::plugin::types::PluginInfo,
                $crate::bindings::acpd::plugin::types::PluginError,
            > {
                let roles = $crate::glue::Roles {
                    observe: $crate::__acpd_observe!(has $ty),
                    spans: $crate::__acpd_spans!(has $ty),
                    logs: $crate::__acpd_logs!(has $ty),
                    errors: $crate::__acpd_errors!(has $ty),
                };
                $crate::glue::init::<$ty>(&config_json, roles)
            }
        }
        $crate::__acpd_observe!(__AcpdGlue, $ty);
        $crate::__acpd_spans!(__AcpdGlue, $ty);
        $crate::__acpd_logs!(__AcpdGlue, $ty);
        $crate::__acpd_errors!(__AcpdGlue, $ty);
        // Only a wasm32 build exports the component's functions: their names (`pkg:iface#fn`)
        // cannot be linked into a native cdylib, and native builds are for unit tests.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__acpd_export_world!(__AcpdGlue with_types_in $crate::bindings);
    };
}

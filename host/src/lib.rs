//! acpd: serves ACP coding agents to HTTP+SSE clients.
//!
//! The pipeline, in dependency order: `http` -> `bridge` -> {`acp`, `child`}; `config`,
//! `error`, `telemetry` and `time` are used by all of them; `plugins` (the WASM hooks) is called
//! from `http` (request enrichment), `error` (translation) and `telemetry` (export redaction).

pub mod acp;
pub mod acp_http;
pub mod alloc_count;
pub mod bridge;
pub mod child;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod error;
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod http;
pub mod journal;
pub mod path_marks;
pub mod plugin_cli;
pub mod plugins;
pub mod sched;
pub mod startup_pages;
pub mod telemetry;
pub mod time;

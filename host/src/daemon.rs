//! Runs the daemon: bind, serve, and shut down in order on SIGTERM/SIGINT (a second signal
//! forces the exit, after killing every child's process group, unless it is a duplicate of the
//! first: see `DUPLICATE_SIGNAL_WINDOW`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::bridge::Bridge;
use crate::config::Config;
use crate::http::{AppState, router};
use crate::plugins::PluginHost;
use crate::telemetry::Telemetry;

pub type Reread = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// A second SIGTERM/SIGINT this soon after the first is the same stop request delivered twice,
/// not a request to force the exit: coreutils `timeout` signals the daemon and then its process
/// group (about a millisecond apart), a terminal's Ctrl-C reaches the whole foreground group, a
/// supervisor and a wrapper script may both forward one stop. Forcing then would skip the
/// telemetry flush and lose the last spans. Such duplicates arrive within milliseconds even on a
/// loaded host; a person who decides the shutdown is taking too long and signals again does so
/// after seconds, so 500 ms leaves both a wide margin.
const DUPLICATE_SIGNAL_WINDOW: Duration = Duration::from_millis(500);

pub async fn run(config: Config, reread: Reread) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // One daemon per state directory, held until the process ends: a second one exits 2 here,
    // before it touches the journal or the agents' pid records.
    let state_dir = config.state.resolved_dir();
    let _state_lock = match &state_dir {
        Some(dir) => Some(
            crate::journal::lock::lock(dir)
                .map_err(|e| crate::config::ConfigError::new("state.dir", e.to_string()))?,
        ),
        None => None,
    };
    // An unusable exporter setting (a bad OTEL_* endpoint, say) is a configuration error.
    let telemetry = Telemetry::init(&config.telemetry)
        .await
        .map_err(|e| crate::config::ConfigError::new("telemetry", format!("{e:#}")))?;
    let (mut child_env, mut child_env_remove) = telemetry.child_env();
    // The operator asked for the agents' own telemetry, and it has somewhere to go.
    if config.agent.telemetry && !child_env.is_empty() {
        child_env.extend(
            crate::gateway::SWITCH_ON
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    // HMAC keys read from the environment are the daemon's secrets, not the agent's.
    child_env_remove.extend(config.keys.values().filter_map(|k| k.env.clone()));
    // Checks the workspaces (a configuration error exits here, before anything else is said);
    // spawns nothing yet.
    let bridge = Bridge::new(config.clone(), (child_env, child_env_remove))?;
    // Before anything is served or spawned: what a crashed predecessor left running is stopped
    // (this daemon's own agents are recorded from here on).
    crate::child::leftovers::stop_leftovers(
        state_dir.as_deref(),
        Duration::from_millis(config.agent.stop_grace_ms),
    )
    .await;
    open_journal(&config, state_dir.as_deref(), &bridge).await?;
    crate::child::reap::start();
    // Plugins are compiled (or taken from the cache) and initialised before the first request.
    let plugins = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || PluginHost::start(&config, reread))
            .await?
            .map_err(|e| crate::config::ConfigError::new("plugins", format!("{e:#}")))?
    };
    watch_sighup(plugins.clone())?;
    let host = config
        .server
        .hostname
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let listener = TcpListener::bind((host.as_str(), config.server.port))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}:{}: {e}",
                config.server.hostname,
                config.server.port
            )
        })?;
    let addr = listener.local_addr()?;
    let app = router(AppState::new(
        bridge.clone(),
        telemetry.clone(),
        addr.port(),
    ));
    bridge.start();
    // A warm pool is ready before the daemon says it listens, so the first session gets one of
    // its children instead of paying the agent's start (each start is bounded by the init
    // timeout; the children start in parallel).
    for ws in &bridge.workspaces {
        ws.agents.ready().await;
    }
    // Start-up is over: its code and tables need not stay resident (see `startup_pages`).
    // Here, before the daemon says it listens, so that what it reports from then on is its
    // serving size; it takes about a millisecond.
    release_pages(&plugins, "start-up");
    crate::sched::serving();
    crate::sched::realtime::register_metrics();
    // Tests and scripts read the bound address from this line (port 0 picks a free port). One
    // line, printed as is: a log line would carry a timestamp and level before it, and appear
    // only at `info`.
    eprintln!("acpd listening on http://{addr}");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (drained_tx, drained) = tokio::sync::watch::channel(false);
    let drain_task = {
        let bridge = bridge.clone();
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            let first = std::time::Instant::now();
            tracing::info!("shutting down: draining sessions and children");
            // Detached: it stays armed until the process exits.
            {
                let bridge = bridge.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                        if first.elapsed() >= DUPLICATE_SIGNAL_WINDOW {
                            break;
                        }
                        tracing::info!(
                            "signal repeated within {} ms of the first: the same stop, still shutting down in order",
                            DUPLICATE_SIGNAL_WINDOW.as_millis()
                        );
                    }
                    tracing::warn!("second signal: forcing exit");
                    bridge.kill_all();
                    std::process::exit(130);
                })
            };
            bridge.shutdown().await;
            let _ = drained_tx.send(true);
        })
    };
    let mut graceful = drained.clone();
    // No Nagle delay: an SSE event or a WebSocket frame is a small write that must leave at
    // once (with Nagle, a WebSocket turn waited ~40 ms on the peer's delayed ACK).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|d| *d).await;
    });
    let limit = Duration::from_secs(config.limits.shutdown_timeout_secs);
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = &mut server => r?,
        _ = deadline_after_drain(drained, limit) => {
            tracing::warn!("connections still open after the shutdown deadline; exiting");
        }
    }
    bridge.kill_all();
    drain_task.abort();
    // The agents' orphans that exited since the last SIGCHLD: none is left a zombie.
    crate::child::reap::sweep();
    tracing::info!("acpd stopped");
    telemetry.shutdown().await;
    Ok(())
}

/// Opens the session journal and restores the sessions it holds, before anything is served.
async fn open_journal(
    config: &Config,
    state_dir: Option<&std::path::Path>,
    bridge: &Arc<Bridge>,
) -> anyhow::Result<()> {
    let Some(dir) = state_dir.filter(|_| config.state.journal) else {
        if config.state.journal {
            tracing::warn!(target: "acpd::journal", "no state directory (neither XDG_STATE_HOME nor HOME is set, and no --state-dir): sessions are not journaled");
        }
        return Ok(());
    };
    let cfg = crate::journal::JournalConfig::from_state(&config.state);
    let dir = dir.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || crate::journal::Journal::open(&dir, cfg))
        .await?
        .map_err(|e| {
            crate::config::ConfigError::new("state.dir", format!("cannot open the journal: {e}"))
        })?;
    let (journal, restored, report) = opened;
    bridge.restore_journaled(journal, restored);
    tracing::info!(
        target: "acpd::journal",
        "journal: {} sessions ({} events, {} bytes) restored in {} ms; {} damaged, {} unusable, {} removed by retention",
        report.sessions,
        report.events,
        report.bytes,
        report.elapsed.as_millis(),
        report.damaged,
        report.unusable,
        report.removed_by_retention
    );
    Ok(())
}

/// Resolves `limit` after the drain finished: the server gets that long to close connections.
async fn deadline_after_drain(mut drained: tokio::sync::watch::Receiver<bool>, limit: Duration) {
    if drained.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(limit).await;
}

/// SIGHUP reloads the plugin set (the same as `POST /admin/plugins/reload`).
/// Releases the read-only file pages (`startup_pages`), the current plugin set's code among
/// them: the set is held across the release (a concurrent reload may replace it meanwhile);
/// an older set's code, unmapped when its last call ends, is not touched.
fn release_pages(plugins: &PluginHost, after: &str) {
    let held = plugins.current();
    crate::startup_pages::release_logged(after, &held.code_ranges());
}

fn watch_sighup(plugins: Arc<PluginHost>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let p = plugins.clone();
            // A reload may have compiled plugins: the compiler's code goes as start-up's did.
            let reload = move || {
                let set = p.reload();
                release_pages(&p, "plugin reload");
                set
            };
            match tokio::task::spawn_blocking(reload).await {
                Ok(Ok(set)) => eprintln!("acpd: plugins reloaded (set {})", set.generation),
                Ok(Err(e)) => {
                    eprintln!("acpd: plugin reload refused, the previous set keeps running: {e}")
                }
                Err(e) => eprintln!("acpd: plugin reload failed: {e}"),
            }
        }
    });
    Ok(())
}

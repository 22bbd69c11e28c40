//! Process signals: SIGTERM and SIGINT start a graceful drain; SIGHUP
//! reloads the configuration file (an invalid file is logged and the old
//! configuration keeps serving).

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

use super::Reloader;
use crate::config::Config;

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install SIGTERM/SIGINT handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Reloads `path` through `reloader` on every SIGHUP; `on_reload` sees each
/// new config that was applied (for the log level). Must be called inside
/// the runtime; the handler is in place when it returns.
pub fn spawn_reloader(
    path: PathBuf,
    reloader: Reloader,
    on_reload: impl Fn(&Config) + Send + 'static,
) {
    // Installed before returning, not in the task: a SIGHUP that arrives
    // right after start-up must reload, never hit the default action
    // (terminate).
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler: reload disabled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.reload_file(&path) {
                Ok(config) => {
                    on_reload(&config);
                    tracing::info!(path = %path.display(), "configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        "reload failed: keeping the current configuration"
                    );
                }
            }
        }
    });
}

//! Process signals: SIGTERM and SIGINT start a graceful drain, and a
//! second one during the drain stops it at once (Ctrl-C twice, as Caddy,
//! Traefik and the Docker CLI take it); SIGHUP reloads the configuration
//! file (an invalid file is logged and the old configuration keeps
//! serving).

use std::future::Future;
use std::path::PathBuf;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;

use super::Reloader;
use crate::config::Config;

/// Installs the SIGTERM and SIGINT handlers (inside the runtime; they are
/// in place when it returns). The first future completes on the first of
/// these signals (drain), the second on the next one (stop the drain now):
/// the two arguments of [`super::Server::run_with_force`].
pub fn shutdown() -> (impl Future<Output = ()>, impl Future<Output = ()>) {
    let (first_tx, first) = oneshot::channel::<()>();
    let (second_tx, second) = oneshot::channel::<()>();
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::spawn(async move {
                let Some(name) = next(&mut term, &mut int).await else {
                    return;
                };
                tracing::info!("{name}: shutting down");
                let _ = first_tx.send(());
                let Some(name) = next(&mut term, &mut int).await else {
                    return;
                };
                tracing::warn!("{name} during the drain: closing the remaining connections now");
                let _ = second_tx.send(());
            });
        }
        _ => tracing::error!("cannot install SIGTERM/SIGINT handlers"),
    }
    // A dropped sender (no handlers) never completes: serve on.
    let wait = |rx: oneshot::Receiver<()>| async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    (wait(first), wait(second))
}

/// The name of the next SIGTERM or SIGINT received.
async fn next(term: &mut Signal, int: &mut Signal) -> Option<&'static str> {
    tokio::select! {
        r = term.recv() => r.map(|_| "SIGTERM"),
        r = int.recv() => r.map(|_| "SIGINT"),
    }
}

/// Takes SIGHUP over from its default action (terminate): called first
/// thing at start-up, inside the runtime, so that a reload sent while the
/// configuration loads and the listeners bind (a `systemctl reload` right
/// after `start`) waits for [`spawn_reloader`] instead of killing the
/// process. `None` when the handler cannot be installed (logged).
pub fn hangup() -> Option<Signal> {
    let hup = signal(SignalKind::hangup());
    if hup.is_err() {
        tracing::error!("cannot install the SIGHUP handler: reload disabled");
    }
    hup.ok()
}

/// Reloads `path` through `reloader` on every SIGHUP `hup` ([`hangup`])
/// receives, one received before this call included; `on_reload` sees
/// each new config that was applied (for the log level). Must be called
/// inside the runtime.
pub fn spawn_reloader(
    hup: Option<Signal>,
    path: PathBuf,
    reloader: Reloader,
    on_reload: impl Fn(&Config) + Send + 'static,
) {
    let Some(mut hup) = hup else {
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

//! SIGHUP reloads: [`Reloader`] checks a new configuration whole
//! (certificates included) and swaps it in, or keeps the running one; the
//! settings only a restart changes are warned about (`restart_only.rs`).

use std::sync::Arc;

use super::{restart_only, tls};
use crate::activity::Kind;
use crate::alerts::Event;
use crate::config::{Config, ConfigError, LogFormat};
use crate::proxy::Shared;

/// Why a reload was refused (the running configuration is kept).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Applies new configurations to a running server. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    /// The TLS listener's acceptor, when one is running.
    tls: Option<tls::Acceptor>,
    /// The configuration the process started with (see [`super::Server`]).
    started: Arc<Config>,
    /// The `--log-format` given on the command line, which wins over the
    /// file's `[log] format` (for the restart-only warnings).
    cli_format: Option<LogFormat>,
}

impl Reloader {
    pub(super) fn new(
        shared: Arc<Shared>,
        tls: Option<tls::Acceptor>,
        started: Arc<Config>,
    ) -> Reloader {
        Reloader {
            shared,
            tls,
            started,
            cli_format: None,
        }
    }

    /// The `--log-format` the process was started with: a reload's
    /// `[log] format` then changes nothing and is not warned about.
    pub fn with_cli_log_format(mut self, format: Option<LogFormat>) -> Reloader {
        self.cli_format = format;
        self
    }

    /// Reads `path` and applies it; see [`Reloader::apply`].
    pub fn reload_file(&self, path: &std::path::Path) -> Result<Arc<Config>, ReloadError> {
        let result = Config::load(path)
            .map_err(ReloadError::from)
            .and_then(|c| self.apply(c));
        self.shared.metrics.reload(result.is_ok());
        match &result {
            Ok(_) => self.shared.activity.record(
                Kind::Reload,
                format!("configuration reloaded from {}", path.display()),
            ),
            // The error names the file (and line, column, key).
            Err(e) => {
                self.shared
                    .activity
                    .record(Kind::ReloadFailed, format!("{e}; old configuration kept"));
                self.shared.alerts.emit(
                    Event::ReloadFailed,
                    format!(
                        "reload of {} refused, the previous configuration keeps serving: {e}",
                        path.display()
                    ),
                    &[("path", &path.display().to_string())],
                );
            }
        }
        result
    }

    /// Checks `config` whole, certificates included, then swaps it in:
    /// rules, upstreams, health checks, compression, cache policies, the
    /// access log switch and the certificates change for the next request
    /// or handshake; cached entries, connections and in-flight requests
    /// are kept. On error nothing changes. Listener addresses, limits and
    /// tiers (and adding or removing `[server.tls]`, adding `[warming]`)
    /// need a restart: a warning says so at each reload whose file differs
    /// from what the process started with.
    pub fn apply(&self, mut config: Config) -> Result<Arc<Config>, ReloadError> {
        let certificates = match &config.server.tls {
            Some(t) => Some(tls::Certificates::load(t)?),
            None => None,
        };
        if let (Some(acceptor), Some(certificates)) = (&self.tls, certificates) {
            acceptor.replace(certificates);
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        for warning in restart_only::pending(&self.started, &config, self.cli_format) {
            tracing::warn!("{warning}");
        }
        let old = self.shared.runtime.load().config.clone();
        if let Some(warning) = self
            .shared
            .warming
            .restart_warning(old.warming.as_ref(), config.warming.as_ref())
        {
            tracing::warn!("{warning}");
        }
        // The log layers were built for the old format: requests keep
        // shaping their access events for it until a restart.
        config.log.access_format = self.started.log.access_format;
        self.shared.reload(config);
        Ok(self.shared.runtime.load().config.clone())
    }
}

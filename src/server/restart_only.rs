//! The settings a reload cannot change (built into the server at
//! start-up): a changed one is logged as taking effect only after a
//! restart.

use crate::config::{AccessFormat, Config, LogFormat};

/// Settings built into the server at start-up: a reload cannot change
/// them (listener addresses are checked by `Shared::reload`).
pub(super) fn warn(old: &Config, new: &Config) {
    let redis = |c: &Config| {
        c.cache
            .redis
            .as_ref()
            .map(|r| (r.mode, r.urls.clone(), r.key_prefix.clone()))
    };
    if old.server.sendfile != new.server.sendfile {
        tracing::warn!("server.sendfile changed: takes effect only after a restart");
    }
    let (o, n) = (&old.server, &new.server);
    if (o.header_read_timeout, o.send_timeout, o.drain_timeout)
        != (n.header_read_timeout, n.send_timeout, n.drain_timeout)
        || (o.max_header_size, o.max_connections) != (n.max_header_size, n.max_connections)
    {
        tracing::warn!(
            "server header_read_timeout, send_timeout, drain_timeout, max_header_size or max_connections changed: takes effect only after a restart"
        );
    }
    // The formats in effect (unset: text, access lines following it), so
    // spelling out a default is no change.
    let formats = |c: &Config| {
        let format = c.log.format.unwrap_or(LogFormat::Text);
        let access = c
            .log
            .access_format
            .unwrap_or(AccessFormat::following(format));
        (format, access)
    };
    if formats(old) != formats(new) {
        tracing::warn!("[log] format or access_format changed: takes effect only after a restart");
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        tracing::warn!("[server.tls] added or removed: takes effect only after a restart");
    }
    if old.cache.memory_capacity != new.cache.memory_capacity || redis(old) != redis(new) {
        tracing::warn!(
            "cache.memory_capacity or [cache.redis] changed: takes effect only after a restart"
        );
    }
}

//! The settings a reload cannot change (built into the server at
//! start-up): each group that differs from what the process started with
//! is logged as taking effect only after a restart.
//!
//! The comparison is with the configuration the process started with, not
//! with the last file read: after a reload that changes `server.listen`,
//! the old address is still the one bound, so every later reload warns
//! again while the file differs, and a file set back to the running value
//! warns no more.

use crate::config::{AccessFormat, AdminConfig, Config, LogFormat, ServerConfig};

/// The restart-only groups in which `new` differs from `running` (the
/// configuration the process started with), as warnings to log.
pub(super) fn pending(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut warnings = Vec::new();
    // Destructured whole, so a field added to `[server]` or `[admin]` must
    // be sorted here into reloadable or restart-only.
    let ServerConfig {
        listen,
        tls,
        drain_timeout,
        header_read_timeout,
        send_timeout,
        max_header_size,
        max_connections,
        trusted_proxies: _,        // read per request
        strip_request_headers: _,  // read per request
        underscores_in_headers: _, // read per request
        sendfile,
    } = &new.server;
    let AdminConfig {
        listen: admin_listen,
        token: _,      // read per request
        read_token: _, // read per request
        max_connections: admin_max_connections,
    } = &new.admin;
    let o = &running.server;
    if *listen != o.listen
        || *admin_listen != running.admin.listen
        || tls.as_ref().map(|t| t.listen) != o.tls.as_ref().map(|t| t.listen)
    {
        warnings.push(
            "listener addresses changed in the new config: they take effect only after a restart",
        );
    }
    if tls.is_some() != o.tls.is_some() {
        warnings.push("[server.tls] added or removed: takes effect only after a restart");
    }
    if (*header_read_timeout, *send_timeout, *drain_timeout)
        != (o.header_read_timeout, o.send_timeout, o.drain_timeout)
        || (*max_header_size, *max_connections) != (o.max_header_size, o.max_connections)
    {
        warnings.push(
            "server header_read_timeout, send_timeout, drain_timeout, max_header_size or max_connections changed: takes effect only after a restart",
        );
    }
    if *sendfile != o.sendfile {
        warnings.push("server.sendfile changed: takes effect only after a restart");
    }
    if *admin_max_connections != running.admin.max_connections {
        warnings.push("admin.max_connections changed: takes effect only after a restart");
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
    if formats(running) != formats(new) {
        warnings.push("[log] format or access_format changed: takes effect only after a restart");
    }
    let redis = |c: &Config| {
        c.cache
            .redis
            .as_ref()
            .map(|r| (r.mode, r.urls.clone(), r.key_prefix.clone()))
    };
    if running.cache.memory_capacity != new.cache.memory_capacity || redis(running) != redis(new) {
        warnings.push(
            "cache.memory_capacity or [cache.redis] changed: takes effect only after a restart",
        );
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(server: &str, admin: &str, extra: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\n{server}[admin]\nlisten = \"127.0.0.1:9090\"\n{admin}[upstream]\nservers = [\"127.0.0.1:3000\"]\n{extra}"
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn reloadable_keys_are_no_restart_warning() {
        let running = config("", "", "");
        assert!(pending(&running, &running.clone()).is_empty());
        let new = config(
            "trusted_proxies = [\"10.0.0.0/8\"]\n",
            "token = \"t\"\nread_token = \"r\"\n",
            "",
        );
        assert_eq!(pending(&running, &new), Vec::<&str>::new());
    }

    /// It was in no list: neither applied nor warned.
    #[test]
    fn admin_max_connections_is_restart_only() {
        let running = config("", "max_connections = 2\n", "");
        let new = config("", "max_connections = 300\n", "");
        assert_eq!(
            pending(&running, &new),
            ["admin.max_connections changed: takes effect only after a restart"]
        );
    }

    /// Each group is compared with what runs: a file set back to the
    /// running values is no change, whatever an earlier reload read.
    #[test]
    fn each_group_is_compared_with_the_running_config() {
        let running = config("", "", "");
        let mut moved = config(
            "drain_timeout = \"1s\"\nsendfile = false\n",
            "max_connections = 3\n",
            "[log]\nformat = \"json\"\n[cache]\nmemory_capacity = \"1MiB\"\n",
        );
        moved.server.listen = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(
            pending(&running, &moved).len(),
            6,
            "{:?}",
            pending(&running, &moved)
        );
        assert!(pending(&running, &config("", "", "")).is_empty());
    }
}

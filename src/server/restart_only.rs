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
/// `cli_format`: the `--log-format` the process was started with, which
/// wins over both files' `[log] format`.
pub(super) fn pending(
    running: &Config,
    new: &Config,
    cli_format: Option<LogFormat>,
) -> Vec<&'static str> {
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
    // The formats in effect (the command line's, else the file's, else
    // text; access lines following it), so spelling out a default, or a
    // format the command line overrides, is no change.
    let formats = |c: &Config| {
        let format = cli_format.or(c.log.format).unwrap_or(LogFormat::Text);
        let access = c
            .log
            .access_format
            .unwrap_or(AccessFormat::following(format));
        (format, access)
    };
    if formats(running) != formats(new) {
        warnings.push("[log] format or access_format changed: takes effect only after a restart");
    }
    // Every `[cache.redis]` key (a derived `PartialEq`, so a key added
    // later is compared too): the tier's connections, breaker and write
    // queue are built at start-up.
    if running.cache.memory_capacity != new.cache.memory_capacity
        || running.cache.redis != new.cache.redis
    {
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
        assert!(pending(&running, &running.clone(), None).is_empty());
        let new = config(
            "trusted_proxies = [\"10.0.0.0/8\"]\n",
            "token = \"t\"\nread_token = \"r\"\n",
            "",
        );
        assert_eq!(pending(&running, &new, None), Vec::<&str>::new());
    }

    /// It was in no list: neither applied nor warned.
    #[test]
    fn admin_max_connections_is_restart_only() {
        let running = config("", "max_connections = 2\n", "");
        let new = config("", "max_connections = 300\n", "");
        assert_eq!(
            pending(&running, &new, None),
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
            pending(&running, &moved, None).len(),
            6,
            "{:?}",
            pending(&running, &moved, None)
        );
        assert!(pending(&running, &config("", "", ""), None).is_empty());
    }

    /// Only `mode`, `urls` and `key_prefix` were compared: a reload that
    /// raised `breaker_threshold` said nothing while the old threshold
    /// stayed in force.
    #[test]
    fn every_redis_key_is_restart_only() {
        let redis = |extra: &str| {
            config(
                "",
                "",
                &format!("[cache.redis]\nurls = [\"redis://127.0.0.1:6379\"]\n{extra}"),
            )
        };
        let running = redis("");
        assert!(pending(&running, &redis(""), None).is_empty());
        for changed in [
            "timeout = \"1s\"\n",
            "write_queue = 7\n",
            "breaker_threshold = 1000\n",
            "breaker_backoff = \"9s\"\n",
            "key_prefix = \"x:\"\n",
        ] {
            assert_eq!(
                pending(&running, &redis(changed), None),
                ["cache.memory_capacity or [cache.redis] changed: takes effect only after a restart"],
                "{changed}"
            );
        }
        // Outside sentinel mode `sentinel_master` is ignored (a warning).
        let sentinel = |master: &str| {
            redis(&format!(
                "mode = \"sentinel\"\nsentinel_master = \"{master}\"\n"
            ))
        };
        assert_eq!(pending(&sentinel("a"), &sentinel("b"), None).len(), 1);
        assert!(pending(&running, &redis("sentinel_master = \"b\"\n"), None).is_empty());
    }

    /// With `--log-format json` the file's `[log] format` is not used:
    /// writing the running format into it warned, changing it did not.
    #[test]
    fn the_command_line_log_format_wins_over_both_files() {
        let json = Some(LogFormat::Json);
        let running = config("", "", "");
        for file in ["[log]\nformat = \"json\"\n", "[log]\nformat = \"text\"\n"] {
            assert!(
                pending(&running, &config("", "", file), json).is_empty(),
                "{file}"
            );
        }
        let access = config("", "", "[log]\naccess_format = \"combined\"\n");
        assert_eq!(
            pending(&running, &access, json),
            ["[log] format or access_format changed: takes effect only after a restart"]
        );
    }
}

//! Validation of the cache sections: `[cache]` (freshness, grace,
//! targeted fields, refresh-ahead), `[cache.redis]` and `[compression]`.

use super::super::file;
use std::time::Duration;

use toml::Spanned;

use super::super::{CacheConfig, ConfigError, RedisConfig, RedisMode};
use super::{dur, Validator};
use crate::compression::{Coding, CompressionPolicy, Levels};

impl Validator<'_> {
    pub(super) fn cache(&self, c: file::CacheFile) -> Result<CacheConfig, ConfigError> {
        let file::CacheFile {
            enabled,
            memory_capacity,
            max_object_size,
            collapse_timeout,
            heuristic_fraction,
            max_heuristic_lifetime,
            prefresh,
            prefresh_min_hits,
            grace,
            targeted_cache_control,
            redis,
        } = c;
        let prefresh = match prefresh {
            Some(f) if !(0.0..1.0).contains(f.get_ref()) => {
                return Err(self.at.spanned(
                    &f,
                    "cache.prefresh",
                    "expected a fraction of the freshness lifetime from 0.0 (off) to below 1.0, e.g. 0.9",
                ))
            }
            Some(f) => f.into_inner(),
            None => 0.0,
        };
        let capacity_span = memory_capacity.as_ref().map(Spanned::span);
        let memory_capacity = memory_capacity.map_or(256 * 1024 * 1024, |s| s.into_inner().0);
        let max_object_size = match max_object_size {
            Some(s) if s.get_ref().0 == 0 => {
                return Err(self.at.spanned(
                    &s,
                    "cache.max_object_size",
                    "expected a size above zero",
                ))
            }
            Some(s) => s.into_inner().0,
            None => 16 * 1024 * 1024,
        };
        let heuristic_fraction = match heuristic_fraction {
            Some(f) if !(0.0..=1.0).contains(f.get_ref()) => {
                return Err(self.at.spanned(
                    &f,
                    "cache.heuristic_fraction",
                    "expected a fraction between 0.0 and 1.0",
                ))
            }
            Some(f) => f.into_inner(),
            None => 0.1,
        };
        let targeted_cache_control = match targeted_cache_control {
            None => vec![
                http::HeaderName::from_static("strata-cache-control"),
                http::HeaderName::from_static("cdn-cache-control"),
            ],
            Some(names) => {
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    match http::HeaderName::from_bytes(name.get_ref().as_bytes()) {
                        Ok(n) => out.push(n),
                        Err(_) => {
                            return Err(self.at.spanned(
                                &name,
                                "cache.targeted_cache_control",
                                format_args!(
                                    "{:?} is not a field name; expected names such as \"CDN-Cache-Control\"",
                                    name.get_ref()
                                ),
                            ))
                        }
                    }
                }
                out
            }
        };
        let redis = match redis {
            None => None,
            Some(r) => Some(self.redis(r)?),
        };
        if let (Some(span), None, true) = (capacity_span, &redis, enabled != Some(false)) {
            if memory_capacity == 0 {
                return Err(self.at.error(
                    span,
                    "cache.memory_capacity",
                    "\"0\" keeps nothing without [cache.redis]; to cache nothing, set cache.enabled = false",
                ));
            }
        }
        Ok(CacheConfig {
            enabled: enabled.unwrap_or(true),
            memory_capacity,
            max_object_size,
            collapse_timeout: dur(collapse_timeout, 10),
            heuristic_fraction,
            max_heuristic_lifetime: max_heuristic_lifetime
                .map_or(Duration::from_secs(86_400), |d| d.0),
            prefresh,
            prefresh_min_hits: prefresh_min_hits.unwrap_or(10),
            grace: grace.map_or(Duration::from_secs(10), |d| d.0),
            targeted_cache_control,
            redis,
        })
    }

    pub(super) fn redis(&self, r: file::RedisFile) -> Result<RedisConfig, ConfigError> {
        let file::RedisFile {
            mode,
            urls,
            sentinel_master,
            timeout,
            key_prefix,
            write_queue,
            breaker_threshold,
            breaker_backoff,
        } = r;
        let mode_value = match &mode {
            None => RedisMode::Standalone,
            Some(m) => match m.get_ref().as_str() {
                "standalone" => RedisMode::Standalone,
                "cluster" => RedisMode::Cluster,
                "sentinel" => RedisMode::Sentinel,
                other => {
                    return Err(self.at.spanned(
                        m,
                        "cache.redis.mode",
                        format!(
                            "unknown mode {other:?}, expected \"standalone\", \"cluster\" or \"sentinel\""
                        ),
                    ))
                }
            },
        };
        if urls.get_ref().is_empty() {
            return Err(self.at.spanned(
                &urls,
                "cache.redis.urls",
                "expected at least one URL such as \"redis://127.0.0.1:6379\"",
            ));
        }
        for (i, u) in urls.get_ref().iter().enumerate() {
            self.redis_url(u, &format!("cache.redis.urls[{i}]"), mode_value)?;
        }
        if mode_value == RedisMode::Standalone && urls.get_ref().len() > 1 {
            return Err(self.at.spanned(
                &urls,
                "cache.redis.urls",
                "standalone mode takes exactly one URL (use mode = \"cluster\" or \"sentinel\" for several)",
            ));
        }
        let sentinel_master = match (mode_value, sentinel_master) {
            (RedisMode::Sentinel, None) => {
                let span = mode.as_ref().map_or(urls.span(), |m| m.span());
                return Err(self.at.error(
                    span,
                    "cache.redis.sentinel_master",
                    "required in sentinel mode: the master name the sentinels monitor",
                ));
            }
            (RedisMode::Sentinel, Some(m)) if m.get_ref().trim().is_empty() => {
                return Err(self.at.spanned(
                    &m,
                    "cache.redis.sentinel_master",
                    "expected the master name the sentinels monitor, not an empty string",
                ))
            }
            (RedisMode::Sentinel, Some(m)) => Some(m.into_inner()),
            // SPEC §2's own example sets it beside mode = "standalone"
            // ("sentinel mode only"): accepted, said, and ignored.
            (_, Some(m)) => {
                self.warn(
                    &m,
                    "cache.redis.sentinel_master",
                    "ignored: only used with mode = \"sentinel\"",
                );
                None
            }
            (_, None) => None,
        };
        // A zero would skip Redis for good (`timeout`: every operation
        // times out at once), open the breaker on no failure, or probe with
        // no pause.
        let timeout = self.nonzero(timeout, "cache.redis.timeout", Duration::from_millis(50))?;
        let breaker_backoff = self.nonzero(
            breaker_backoff,
            "cache.redis.breaker_backoff",
            Duration::from_secs(5),
        )?;
        let breaker_threshold =
            self.at_least_one(breaker_threshold, "cache.redis.breaker_threshold", 5)?;
        Ok(RedisConfig {
            mode: mode_value,
            urls: urls
                .into_inner()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            sentinel_master,
            timeout,
            key_prefix: key_prefix.unwrap_or_else(|| "strata:".to_string()),
            // Zero would still queue (one write per lane): refused
            // rather than meaning something it does not.
            write_queue: self.one_to(write_queue, "cache.redis.write_queue", 1024, 1_000_000)?,
            breaker_threshold,
            breaker_backoff,
        })
    }

    /// One `cache.redis.urls` entry: `redis://`, or a Unix socket
    /// (`unix://`, `redis+unix://`) outside cluster mode; `rediss://` (TLS)
    /// is refused as such (the `redis` crate is built without TLS). A
    /// refused URL is shown with its whole userinfo hidden
    /// ([`crate::telemetry::without_userinfo`]).
    fn redis_url(
        &self,
        u: &Spanned<String>,
        key: &str,
        mode: RedisMode,
    ) -> Result<(), ConfigError> {
        let url = u.get_ref().as_str();
        let shown = crate::telemetry::without_userinfo(url);
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        let unix = match scheme.to_ascii_lowercase().as_str() {
            "redis" => false,
            "unix" | "redis+unix" => true,
            "rediss" => {
                return Err(self.at.spanned(
                    u,
                    key,
                    format!("{shown:?}: rediss:// (TLS to Redis) is not supported; use redis:// on a trusted network, or a local TLS tunnel (stunnel, spiped) in front of Redis"),
                ))
            }
            _ => {
                return Err(self.at.spanned(
                    u,
                    key,
                    format!("invalid Redis URL {shown:?}, expected \"redis://host:port\" or \"unix:///path/to/redis.sock\""),
                ))
            }
        };
        if unix && mode == RedisMode::Cluster {
            return Err(self.at.spanned(
                u,
                key,
                format!("{shown:?}: a Unix socket cannot be used in cluster mode (cluster nodes are found by IP and port); use redis://host:port"),
            ));
        }
        if redis::IntoConnectionInfo::into_connection_info(url).is_err() {
            return Err(self.at.spanned(
                u,
                key,
                format!("invalid Redis URL {shown:?}, expected \"redis://host:port\" or \"unix:///path/to/redis.sock\""),
            ));
        }
        if let Some(why) = unread_query_parameter(url) {
            return Err(self.at.spanned(u, key, why));
        }
        Ok(())
    }

    pub(super) fn compression(
        &self,
        c: file::CompressionFile,
    ) -> Result<Option<CompressionPolicy>, ConfigError> {
        let file::CompressionFile {
            enabled,
            algorithms,
            min_size,
            types,
            store_level,
            stream_level,
        } = c;
        // Every key is checked even when compression is off, so that a
        // typo fails `check` now, not the reload that turns it on.
        let mut policy = CompressionPolicy::default();
        if let Some(algorithms) = algorithms {
            let mut list = Vec::new();
            for (i, a) in algorithms.get_ref().iter().enumerate() {
                let coding = Coding::from_token(a.get_ref()).ok_or_else(|| {
                    self.at.spanned(
                        a,
                        &format!("compression.algorithms[{i}]"),
                        format!(
                            "unknown algorithm {:?}, expected \"br\" or \"gzip\"",
                            a.get_ref()
                        ),
                    )
                })?;
                // A repeat changes nothing (the first place sets the
                // preference): a typo for the other coding, most likely.
                if list.contains(&coding) {
                    return Err(self.at.spanned(
                        a,
                        &format!("compression.algorithms[{i}]"),
                        format!(
                            "duplicate algorithm {:?}, each of \"br\" and \"gzip\" may be listed once",
                            a.get_ref()
                        ),
                    ));
                }
                list.push(coding);
            }
            policy.algorithms = list;
        }
        if let Some(min) = min_size {
            policy.min_size = min.0;
        }
        if let Some(types) = types {
            // The rule forms of `compression::DEFAULT_TYPES`; anything else
            // would silently never match.
            let token = |t: &str| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            let mut list = Vec::with_capacity(types.len());
            for (i, t) in types.into_iter().enumerate() {
                let rule = t.get_ref().trim();
                let ok = match rule.strip_prefix('+') {
                    Some(suffix) => token(suffix),
                    None => {
                        rule == "*/*"
                            || rule
                                .split_once('/')
                                .is_some_and(|(ty, sub)| token(ty) && (sub == "*" || token(sub)))
                    }
                };
                if !ok {
                    return Err(self.at.spanned(
                        &t,
                        &format!("compression.types[{i}]"),
                        format!(
                            "invalid media type rule {rule:?}, expected \"type/subtype\", \"type/*\", \"+suffix\" or \"*/*\""
                        ),
                    ));
                }
                list.push(rule.to_owned());
            }
            policy.types = list;
        }
        if let Some(l) = store_level {
            policy.store_level = self.levels(l, policy.store_level, "compression.store_level")?;
        }
        if let Some(l) = stream_level {
            policy.stream_level =
                self.levels(l, policy.stream_level, "compression.stream_level")?;
        }
        // `algorithms = []` turns compression off too.
        if enabled == Some(false) || policy.algorithms.is_empty() {
            return Ok(None);
        }
        Ok(Some(policy))
    }

    fn levels(
        &self,
        l: file::LevelsFile,
        default: Levels,
        key: &str,
    ) -> Result<Levels, ConfigError> {
        let file::LevelsFile { br, gzip } = l;
        let br = match br {
            Some(v) if *v.get_ref() > 11 => {
                return Err(self
                    .at
                    .spanned(&v, &format!("{key}.br"), "expected 0 to 11"))
            }
            Some(v) => v.into_inner(),
            None => default.br,
        };
        let gzip = match gzip {
            Some(v) if !(1..=9).contains(v.get_ref()) => {
                return Err(self
                    .at
                    .spanned(&v, &format!("{key}.gzip"), "expected 1 to 9"))
            }
            Some(v) => v.into_inner(),
            None => default.gzip,
        };
        Ok(Levels { br, gzip })
    }
}

/// Why a query parameter of Redis URL `url` would be ignored, if one would
/// (SPEC §2: a typo must not silently do nothing). redis-rs reads only
/// `protocol` in a `redis://` URL, whose user, password and database are
/// the userinfo and the path, and `db`, `user`, `pass` and `protocol` in a
/// `redis+unix://` or `unix://` one. A `?password=` was masked in the logs
/// but never sent: every command failed with `NOAUTH`. Only the names
/// given a hint are quoted: a password pasted as a bare parameter must not
/// reach the error.
fn unread_query_parameter(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let unix = matches!(parsed.scheme(), "redis+unix" | "unix");
    let read: &[&str] = if unix {
        &["db", "user", "pass", "protocol"]
    } else {
        &["protocol"]
    };
    let unread: Vec<_> = parsed
        .query_pairs()
        .map(|(name, _)| name)
        .filter(|name| !read.contains(&name.as_ref()))
        .collect();
    // A credential first: it is what the operator must fix most.
    let hinted = ["password", "pass", "user", "username", "db"];
    let name = unread
        .iter()
        .find(|name| hinted.contains(&name.as_ref()))
        .or(unread.first())?;
    let not_read = |name: &str| format!("query parameter {name:?} is not read");
    Some(match (unix, name.as_ref()) {
        (false, n @ ("password" | "pass")) => format!(
            "{}, so no password would be sent: write it before the host, \"redis://:PASSWORD@host:port\" (percent-encoded)",
            not_read(n)
        ),
        (false, n @ ("user" | "username")) => format!(
            "{}: write the user before the host, \"redis://USER:PASSWORD@host:port\"",
            not_read(n)
        ),
        (false, "db") => format!(
            "{}: the database is the path, \"redis://host:port/DB\"",
            not_read("db")
        ),
        (true, "password") => format!("{}: write \"?pass=PASSWORD\"", not_read("password")),
        (true, "username") => format!("{}: write \"?user=USER\"", not_read("username")),
        (false, _) => "unknown query parameter: a redis:// URL takes only \"protocol\" (user, password and database: \"redis://USER:PASSWORD@host:port/DB\")".to_string(),
        (true, _) => "unknown query parameter: a Unix socket URL takes only \"db\", \"user\", \"pass\" and \"protocol\"".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::unread_query_parameter as unread;

    #[test]
    fn query_parameters_the_client_ignores_are_refused() {
        for read in [
            "redis://h:1",
            "redis://u:pw@h:1/2?protocol=resp2",
            "redis+unix:///tmp/r.sock?pass=pw&db=1&user=u&protocol=3",
        ] {
            assert_eq!(unread(read), None, "{read}");
        }
        for (url, want) in [
            (
                "redis://h:1/?password=pw",
                "\"password\" is not read, so no password",
            ),
            (
                "redis://h:1/?a=1&pass=pw",
                "\"redis://:PASSWORD@host:port\"",
            ),
            ("redis://h:1/?user=u", "\"redis://USER:PASSWORD@host:port\""),
            ("redis://h:1/?db=2", "\"redis://host:port/DB\""),
            ("unix:///tmp/r.sock?password=pw", "write \"?pass=PASSWORD\""),
            ("redis+unix:///tmp/r.sock?timeout=1", "takes only \"db\""),
        ] {
            let why = unread(url).unwrap_or_default();
            assert!(why.contains(want), "{url}: {why}");
        }
        // A name outside the list is not quoted: it may be a pasted password.
        let why = unread("redis://h:1/?S3cretPW").unwrap_or_default();
        assert!(why.starts_with("unknown query parameter"), "{why}");
        assert!(!why.contains("S3cretPW"), "{why}");
    }
}

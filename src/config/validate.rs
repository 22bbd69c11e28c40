//! Validation: the serde shape of `config/file.rs` → the typed
//! [`Config`](super::Config), every default filled in here, every error
//! located as `file:line:column: key: message` by [`Locator`].
//!
//! - `validate/rules.rs`: `[[rules]]`, including the TTL and key options.
//! - `validate/operations.rs`: `[[invalidation.cascade]]`, `[warming]`.
//! - `validate/cache.rs`: `[cache]`, `[cache.redis]`, `[compression]`.
//! - `validate/listeners.rs`: `[server]`, `[server.tls]`, `[admin]`.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

mod rules;

use super::file::{self, FileConfig};
use super::units;
use super::*;
use crate::upstream::health::StatusMatch;

mod cache;
mod listeners;
mod operations;
mod toml_errors;

/// Turns byte spans into `file:line:column` errors.
pub(super) struct Locator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        (line, column)
    }

    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line,
            column,
            key: if key.is_empty() {
                String::new()
            } else {
                format!("{key}: ")
            },
            message: message.to_string(),
        }
    }

    /// `file:line:column: key` of a value, for errors found later (when
    /// a file the config names is loaded).
    pub(super) fn place<T>(&self, value: &Spanned<T>, key: &str) -> String {
        let (line, column) = self.line_col(value.span().start);
        format!("{}:{line}:{column}: {key}", self.path.display())
    }

    pub(super) fn spanned<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        self.error(value.span(), key, message)
    }
}

pub(super) struct Validator<'a> {
    pub(super) at: Locator<'a>,
    /// `file:line:column: key: message` of keys accepted but ignored
    /// ([`Validator::warn`]), handed to [`Config::warnings`].
    pub(super) warnings: std::cell::RefCell<Vec<String>>,
}

impl Validator<'_> {
    /// Notes that `value` (at `key`) is accepted but ignored, saying why:
    /// a warning, located like an error, not a refusal.
    pub(super) fn warn<T>(&self, value: &Spanned<T>, key: &str, message: impl fmt::Display) {
        let warning = self.at.spanned(value, key, message).to_string();
        self.warnings.borrow_mut().push(warning);
    }

    /// A count that must be at least 1 (a zero threshold, limit or burst
    /// would refuse everything or act on nothing); `default` when absent.
    pub(super) fn at_least_one<T: From<u8> + PartialEq>(
        &self,
        v: Option<Spanned<T>>,
        key: &str,
        default: T,
    ) -> Result<T, ConfigError> {
        match v {
            Some(v) if *v.get_ref() == T::from(0) => {
                Err(self.at.spanned(&v, key, "expected at least 1"))
            }
            Some(v) => Ok(v.into_inner()),
            None => Ok(default),
        }
    }

    /// A count from 1 to `max` (a limit past it would make `serve` fail
    /// where `check` passed: tokio's semaphores hold at most 2^61 permits);
    /// `default` when the key is absent.
    pub(super) fn one_to<T: From<u8> + PartialOrd + std::fmt::Display + Copy>(
        &self,
        v: Option<Spanned<T>>,
        key: &str,
        default: T,
        max: T,
    ) -> Result<T, ConfigError> {
        let value = self.at_least_one(v.clone(), key, default)?;
        match v {
            Some(v) if value > max => {
                Err(self.at.spanned(&v, key, format!("expected at most {max}")))
            }
            _ => Ok(value),
        }
    }

    /// A duration that must be above zero (a timeout of zero fails every
    /// wait it bounds); `default` when the key is absent.
    pub(super) fn nonzero(
        &self,
        v: Option<Spanned<units::Dur>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            Some(v) if v.get_ref().0.is_zero() => {
                Err(self.at.spanned(&v, key, "expected a duration above zero"))
            }
            Some(v) => Ok(v.into_inner().0),
            None => Ok(default),
        }
    }

    pub(super) fn config(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let FileConfig {
            server,
            admin,
            upstream,
            cache,
            rules,
            compression,
            log,
            rate_limits,
            alerts,
            invalidation,
            warming,
        } = file;
        let server = self.server(server)?;
        let admin = self.admin(admin, &server)?;
        let alerts = self.alerts(alerts, &server)?;
        let upstream = self.upstream(upstream)?;
        let cache = self.cache(cache)?;
        // Keys that need the shared tier are errors without it, not silent
        // no-ops (SPEC §2: a typo must not silently do nothing).
        let redis = cache.redis.is_some();
        let rate_limits = self.rate_limits(rate_limits, redis, &server)?;
        Ok(Config {
            path: self.at.path.to_path_buf(),
            server,
            admin,
            upstream,
            cache,
            rules: self.rules(rules)?,
            compression: self.compression(compression)?,
            log: self.log(log)?,
            rate_limits,
            alerts,
            invalidation: self.invalidation(invalidation)?,
            warming: match warming {
                None => None,
                Some(w) => Some(self.warming(w, redis)?),
            },
            warnings: self.warnings.take(),
        })
    }

    fn upstream(&self, u: file::UpstreamFile) -> Result<UpstreamConfig, ConfigError> {
        let file::UpstreamFile {
            servers,
            balance,
            hash_key,
            slow_start,
            sticky,
            connect_timeout,
            response_timeout,
            body_idle_timeout,
            pool_idle_timeout,
            pool_max_idle_per_server,
            health,
        } = u;
        let (servers, weights) = self.servers(servers)?;
        let sticky = match sticky {
            None => None,
            Some(s) => Some(self.sticky(s)?),
        };
        Ok(UpstreamConfig {
            servers,
            weights,
            balance: self.balance(balance, hash_key)?,
            slow_start: slow_start.map_or(Duration::ZERO, |d| d.0),
            sticky,
            connect_timeout: self.nonzero(connect_timeout, "upstream.connect_timeout", secs(2))?,
            response_timeout: self.nonzero(
                response_timeout,
                "upstream.response_timeout",
                secs(30),
            )?,
            body_idle_timeout: self.nonzero(
                body_idle_timeout,
                "upstream.body_idle_timeout",
                secs(60),
            )?,
            pool_idle_timeout: dur(pool_idle_timeout, 90),
            pool_max_idle_per_server: pool_max_idle_per_server.unwrap_or(256),
            health: self.health(health)?,
        })
    }

    fn health(&self, h: file::HealthFile) -> Result<HealthConfig, ConfigError> {
        let file::HealthFile {
            enabled,
            path,
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
            fail_timeout,
            expect_status,
        } = h;
        let mut expect = Vec::new();
        if let Some(list) = expect_status {
            if list.get_ref().is_empty() {
                return Err(self.at.spanned(
                    &list,
                    "upstream.health.expect_status",
                    "expected at least one status such as \"2xx\" or \"204\" (omit the key for the liveness check)",
                ));
            }
            for (i, v) in list.get_ref().iter().enumerate() {
                let m = StatusMatch::parse(v.get_ref()).ok_or_else(|| {
                    self.at.spanned(
                        v,
                        &format!("upstream.health.expect_status[{i}]"),
                        format!(
                            "invalid status {:?}, expected a class such as \"2xx\" or a code such as \"204\"",
                            v.get_ref()
                        ),
                    )
                })?;
                expect.push(m);
            }
        }
        let path = match path {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(self.at.spanned(
                    &p,
                    "upstream.health.path",
                    "expected an absolute path such as \"/health\"",
                ))
            }
            // What the checks send as their request target: a path no
            // request line can carry (`/he alth`) failed every check, so
            // every server went out of rotation.
            Some(p) if p.get_ref().parse::<http::uri::PathAndQuery>().is_err() => {
                return Err(self.at.spanned(
                    &p,
                    "upstream.health.path",
                    "not a valid request target (percent-encode spaces and other reserved characters: \"/he%20alth\")",
                ))
            }
            Some(p) => p.into_inner(),
            None => "/health".to_string(),
        };
        Ok(HealthConfig {
            enabled: enabled.unwrap_or(true),
            path,
            interval: self.nonzero(interval, "upstream.health.interval", secs(30))?,
            timeout: self.nonzero(timeout, "upstream.health.timeout", secs(5))?,
            unhealthy_threshold: self.at_least_one(
                unhealthy_threshold,
                "upstream.health.unhealthy_threshold",
                3,
            )?,
            healthy_threshold: self.at_least_one(
                healthy_threshold,
                "upstream.health.healthy_threshold",
                2,
            )?,
            fail_timeout: self.nonzero(fail_timeout, "upstream.health.fail_timeout", secs(10))?,
            expect_status: expect,
        })
    }

    fn log(&self, l: file::LogFile) -> Result<LogConfig, ConfigError> {
        let file::LogFile {
            level,
            format,
            access_log,
            access_format,
        } = l;
        let access_format = match access_format {
            None => None,
            Some(f) => Some(match f.get_ref().as_str() {
                "text" => AccessFormat::Text,
                "json" => AccessFormat::Json,
                "combined" => AccessFormat::Combined,
                other => {
                    return Err(self.at.spanned(
                        &f,
                        "log.access_format",
                        format!(
                            "unknown format {other:?}, expected \"text\", \"json\" or \"combined\""
                        ),
                    ))
                }
            }),
        };
        let format = match format {
            None => None,
            Some(f) => Some(match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(self.at.spanned(
                        &f,
                        "log.format",
                        format!("unknown format {other:?}, expected \"text\" or \"json\""),
                    ))
                }
            }),
        };
        // The same parser the logger uses, so that `check` refuses what
        // would otherwise be replaced by `info` at start-up.
        if let Some(l) = &level {
            if let Err(e) = crate::telemetry::check_filter(l.get_ref()) {
                return Err(self.at.spanned(l, "log.level", e));
            }
        }
        Ok(LogConfig {
            level: level.map(Spanned::into_inner),
            format,
            // SPEC §9 names only `access_format`: choosing a format asks
            // for the access log, unless `access_log = false` says not.
            access_log: access_log.unwrap_or(access_format.is_some()),
            access_format,
        })
    }
}

impl Validator<'_> {
    /// A path glob (`[[rules]] match`, `[[rate_limits]] match`, a
    /// cascade's `on`) starts with `/`, `**`, or a `*` before a `/`:
    /// anything else is a typo that could match no path and would silently
    /// do nothing. `*.html` is one (`*` stays inside a segment, and every
    /// path starts with `/`): the message names `**/*.html`.
    pub(super) fn path_glob(&self, glob: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
        let g = glob.get_ref();
        if g.starts_with('/') || g == "**" || g.starts_with("**/") || g.starts_with("*/") {
            return Ok(());
        }
        let message = if let Some(rest) = g.strip_prefix("**") {
            // `**` is a whole segment or nothing: `**.html` is `*.html`.
            format!(
                "\"{g}\" matches no path (** stands for whole segments: write \"**/*{}\")",
                rest.trim_start_matches('*')
            )
        } else if g.starts_with('*') {
            format!("\"{g}\" matches no path (every path starts with /, and * stays inside one segment): write \"**/{g}\" for any directory, or \"/{g}\" for the root only")
        } else {
            "expected a path glob starting with / (or **)".to_string()
        };
        Err(self.at.spanned(glob, key, message))
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn dur(d: Option<units::Dur>, default_secs: u64) -> Duration {
    d.map_or(Duration::from_secs(default_secs), |d| d.0)
}

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

    pub(super) fn toml(&self, key: String, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        // toml's message can span lines; keep the first, it is the gist.
        let message = e.message().lines().next().unwrap_or("invalid").trim();
        if message == "duplicate key" {
            if let Some(message) = self.duplicate(span.start) {
                return self.error(span, &key, message);
            }
        }
        if message == "invalid type: map, expected a sequence" && !key.is_empty() {
            // `[rules]` written for `[[rules]]`.
            let hint = format!("{message} (write [[{key}]] above each entry: an array of tables)");
            return self.error(span, &key, hint);
        }
        let message = without_quoted_credentials(&plain_types(message));
        let message = if is_secret(&key) {
            without_values(&message)
        } else {
            message
        };
        self.error(span, &key, message)
    }

    /// What a duplicate at `at` duplicates, named from the text (toml
    /// names the place, not the key): `duplicate table [upstream.health]`,
    /// or `duplicate key rules[1].status_ttl.404` with the array index of
    /// an `[[array]]` entry and the key of an inline table.
    fn duplicate(&self, at: usize) -> Option<String> {
        let (before, rest) = (self.text.get(..at)?, self.text.get(at..)?);
        let name = rest.split(['=', '\n']).next()?.trim();
        let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        if rest.starts_with('[') || line.trim_start().starts_with('[') {
            // The whole header, wherever on it toml points.
            let header = format!("{line}{}", rest.split('\n').next().unwrap_or(""));
            let table = header.trim().trim_matches(['[', ']']).trim();
            return Some(format!("duplicate table [{table}]"));
        }
        let name = name.trim_matches('"');
        let inline = line
            .contains('{')
            .then(|| line.split('=').next().unwrap_or("").trim());
        let header = before.lines().map(str::trim).rfind(|l| l.starts_with('['));
        let table = header.map(|h| match h.strip_prefix("[[") {
            Some(array) => {
                let array = array.split("]]").next().unwrap_or(array).trim();
                let index = before
                    .lines()
                    .filter(|l| l.trim() == h)
                    .count()
                    .saturating_sub(1);
                format!("{array}[{index}]")
            }
            None => h
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or(h)
                .trim()
                .to_string(),
        });
        let path: Vec<&str> = [table.as_deref(), inline, Some(name)]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        Some(format!("duplicate key {}", path.join(".")))
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
        Ok(Config {
            path: self.at.path.to_path_buf(),
            server,
            admin,
            upstream,
            cache,
            rules: self.rules(rules)?,
            compression: self.compression(compression)?,
            log: self.log(log)?,
            rate_limits: self.rate_limits(rate_limits, redis)?,
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
        if g.starts_with('/') || g.starts_with("**") || g.starts_with("*/") {
            return Ok(());
        }
        let message = if g.starts_with('*') {
            format!("\"{g}\" matches no path (every path starts with /, and * stays inside one segment): write \"**/{g}\" for any directory, or \"/{g}\" for the root only")
        } else {
            "expected a path glob starting with / (or **)".to_string()
        };
        Err(self.at.spanned(glob, key, message))
    }
}

/// serde's Rust type names in a message (`expected u32`) as an operator
/// reads them (`expected a whole number`).
/// `message` with every quoted value shown as
/// [`crate::telemetry::without_userinfo`] shows a refused URL: toml quotes
/// a value of the wrong type (`urls = "redis://:pw@h"` for a list), and the
/// error must not carry its password.
fn without_quoted_credentials(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        let Some(len) = rest[open + 1..].find('"') else {
            break;
        };
        let inner = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..=open]);
        out.push_str(&crate::telemetry::without_userinfo(inner));
        out.push('"');
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Whether `key` holds a secret (`admin.token`, `admin.read_token`,
/// `upstream.sticky.secret`, a webhook's `secret`, a password): its value
/// never appears in an error, which reaches the log, a `reload_failed`
/// alert and the dashboard's activity list.
fn is_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    last.ends_with("token") || last.ends_with("secret") || last.contains("password")
}

/// `message` with each `` `value` `` serde quotes replaced by `<hidden>`
/// (`invalid type: integer `987654321`, expected a string`).
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        out.push_str(if inside { "`<hidden>`" } else { part });
        inside = !inside;
    }
    out
}

fn plain_types(message: &str) -> String {
    // toml reads an integer too large for 64 bits as `i128`.
    let message = &message.replace(" as i128", "").replace(" as u128", "");
    let Some((head, ty)) = message.rsplit_once("expected ") else {
        return message.to_string();
    };
    // An integer that does not fit its type (negative, or too large)
    // gets the range: "expected a whole number" is true of the value.
    let plain = match ty {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number from 0 to 18446744073709551615",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        _ => return message.to_string(),
    };
    format!("{head}expected {plain}")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn dur(d: Option<units::Dur>, default_secs: u64) -> Duration {
    d.map_or(Duration::from_secs(default_secs), |d| d.0)
}

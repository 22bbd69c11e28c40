//! Validation: the serde shape of `config/file.rs` → the typed
//! [`Config`](super::Config), every default filled in here, every error
//! located as `file:line:column: key: message` by [`Locator`].
//!
//! - `validate/rules.rs`: `[[rules]]`, including the TTL and key options.
//! - `validate/operations.rs`: `[[invalidation.cascade]]`, `[warming]`.
//! - `validate/cache.rs`: `[cache]`, `[cache.redis]`, `[compression]`.

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
        self.error(span, &key, message)
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
}

impl Validator<'_> {
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
        Ok(Config {
            path: self.at.path.to_path_buf(),
            server,
            admin,
            upstream: self.upstream(upstream)?,
            cache: self.cache(cache)?,
            rules: self.rules(rules)?,
            compression: self.compression(compression)?,
            log: self.log(log)?,
            rate_limits: self.rate_limits(rate_limits)?,
            alerts,
            invalidation: self.invalidation(invalidation)?,
            warming: match warming {
                None => None,
                Some(w) => Some(self.warming(w)?),
            },
        })
    }

    fn server(&self, s: file::ServerFile) -> Result<ServerConfig, ConfigError> {
        let file::ServerFile {
            listen,
            tls,
            drain_timeout,
            header_read_timeout,
            send_timeout,
            max_header_size,
            max_connections,
            trusted_proxies,
            strip_request_headers,
            sendfile,
        } = s;
        let send_timeout = match send_timeout {
            None => Duration::from_secs(60),
            Some(v) if v.get_ref().0.is_zero() => {
                return Err(self.at.spanned(
                    &v,
                    "server.send_timeout",
                    "expected a duration above zero",
                ))
            }
            Some(v) => v.into_inner().0,
        };
        let max_header_size = match max_header_size {
            None => 64 * 1024,
            Some(v) if v.get_ref().0 < 1024 || v.get_ref().0 > 16 * 1024 * 1024 => {
                return Err(self.at.spanned(
                    &v,
                    "server.max_header_size",
                    "expected a size between 1KiB and 16MiB",
                ))
            }
            Some(v) => v.get_ref().0 as usize,
        };
        let tls = match tls {
            None => None,
            Some(t) => Some(self.tls(t)?),
        };
        Ok(ServerConfig {
            listen: listen.0,
            tls,
            drain_timeout: dur(drain_timeout, 30),
            header_read_timeout: dur(header_read_timeout, 10),
            send_timeout,
            max_header_size,
            max_connections: max_connections.unwrap_or(10_000),
            trusted_proxies: self.trusted_proxies(trusted_proxies)?,
            strip_request_headers: self.strip_request_headers(strip_request_headers)?,
            sendfile: sendfile.unwrap_or(true),
        })
    }

    fn strip_request_headers(
        &self,
        list: Option<Vec<Spanned<String>>>,
    ) -> Result<Vec<http::HeaderName>, ConfigError> {
        let Some(list) = list else {
            return Ok(crate::proxy::headers::STRIP_BY_DEFAULT
                .iter()
                .map(|n| http::HeaderName::from_static(n))
                .collect());
        };
        list.iter()
            .enumerate()
            .map(|(i, item)| {
                http::HeaderName::from_bytes(item.get_ref().trim().as_bytes()).map_err(|_| {
                    self.at.spanned(
                        item,
                        &format!("server.strip_request_headers[{i}]"),
                        format!("invalid header name {:?}", item.get_ref()),
                    )
                })
            })
            .collect()
    }

    fn tls(&self, t: file::TlsFile) -> Result<TlsConfig, ConfigError> {
        let file::TlsFile {
            listen,
            cert,
            key,
            certificates,
            handshake_timeout,
        } = t;
        let mut pairs = vec![self.cert_pair(cert, key, "server.tls")?];
        for (i, c) in certificates.into_iter().enumerate() {
            let file::CertFile { cert, key } = c;
            pairs.push(self.cert_pair(cert, key, &format!("server.tls.certificates[{i}]"))?);
        }
        Ok(TlsConfig {
            listen: listen.0,
            certificates: pairs,
            handshake_timeout: dur(handshake_timeout, 10),
        })
    }

    fn cert_pair(
        &self,
        cert: Spanned<PathBuf>,
        key: Spanned<PathBuf>,
        at: &str,
    ) -> Result<CertPair, ConfigError> {
        let resolve = |p: &Path| self.relative(p);
        let pair = CertPair {
            cert: resolve(cert.get_ref()),
            key: resolve(key.get_ref()),
            cert_at: self.at.place(&cert, &format!("{at}.cert")),
            key_at: self.at.place(&key, &format!("{at}.key")),
        };
        // Loading (and the cert/key match) is checked by the TLS module;
        // here, only that the files can be read, so the error has a line.
        if let Err(e) = std::fs::metadata(&pair.cert) {
            return Err(self.at.spanned(
                &cert,
                &format!("{at}.cert"),
                format!("cannot read {}: {e}", pair.cert.display()),
            ));
        }
        if let Err(e) = std::fs::metadata(&pair.key) {
            return Err(self.at.spanned(
                &key,
                &format!("{at}.key"),
                format!("cannot read {}: {e}", pair.key.display()),
            ));
        }
        Ok(pair)
    }

    /// Relative paths in the file are relative to the working directory, as
    /// with nginx's `-p`-less default; absolute ones are kept.
    fn relative(&self, p: &Path) -> PathBuf {
        p.to_path_buf()
    }

    fn admin(&self, a: file::AdminFile, server: &ServerConfig) -> Result<AdminConfig, ConfigError> {
        let file::AdminFile {
            listen,
            token,
            read_token,
            max_connections,
        } = a;
        if listen.get_ref().0 == server.listen && server.listen.port() != 0 {
            return Err(self.at.spanned(
                &listen,
                "admin.listen",
                "must differ from server.listen (the admin API has its own listener)",
            ));
        }
        let token = self.token(
            token,
            "admin.token",
            "omit the key to disable mutating endpoints",
        )?;
        let read_token = self.token(
            read_token,
            "admin.read_token",
            "omit the key to leave the read endpoints open",
        )?;
        Ok(AdminConfig {
            listen: listen.get_ref().0,
            token,
            read_token,
            max_connections: max_connections.unwrap_or(256).max(1),
        })
    }

    /// A bearer token: absent, or non-empty (a blank one would be an
    /// accident that opens or closes endpoints silently).
    fn token(
        &self,
        t: Option<Spanned<String>>,
        key: &str,
        hint: &str,
    ) -> Result<Option<String>, ConfigError> {
        match t {
            Some(t) if t.get_ref().trim().is_empty() => {
                Err(self
                    .at
                    .spanned(&t, key, format!("expected a non-empty token ({hint})")))
            }
            Some(t) => Ok(Some(t.into_inner())),
            None => Ok(None),
        }
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
            connect_timeout: dur(connect_timeout, 2),
            response_timeout: dur(response_timeout, 30),
            body_idle_timeout: dur(body_idle_timeout, 60),
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
            Some(p) => p.into_inner(),
            None => "/health".to_string(),
        };
        let positive = |v: Option<Spanned<u32>>, key: &str, default: u32| match v {
            Some(v) if *v.get_ref() == 0 => {
                Err(self.at.spanned(&v, key, "expected a number of at least 1"))
            }
            Some(v) => Ok(v.into_inner()),
            None => Ok(default),
        };
        let nonzero = |v: Option<Spanned<units::Dur>>, key: &str, default: u64| match v {
            Some(v) if v.get_ref().0.is_zero() => {
                Err(self.at.spanned(&v, key, "expected a duration above zero"))
            }
            Some(v) => Ok(v.into_inner().0),
            None => Ok(Duration::from_secs(default)),
        };
        Ok(HealthConfig {
            enabled: enabled.unwrap_or(true),
            path,
            interval: nonzero(interval, "upstream.health.interval", 30)?,
            timeout: nonzero(timeout, "upstream.health.timeout", 5)?,
            unhealthy_threshold: positive(
                unhealthy_threshold,
                "upstream.health.unhealthy_threshold",
                3,
            )?,
            healthy_threshold: positive(healthy_threshold, "upstream.health.healthy_threshold", 2)?,
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
        Ok(LogConfig {
            level,
            format,
            access_log: access_log.unwrap_or(false),
            access_format,
        })
    }
}

fn dur(d: Option<units::Dur>, default_secs: u64) -> Duration {
    d.map_or(Duration::from_secs(default_secs), |d| d.0)
}

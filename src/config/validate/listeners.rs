//! Validation of the listener sections: `[server]` (limits, timeouts,
//! trusted proxies), `[server.tls]` (certificates) and `[admin]` (tokens);
//! two listeners that would need the same port are an error here, not a
//! bind failure at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::super::file;
use super::super::*;
use super::{dur, Validator};

/// Most connections a listener's `max_connections` may allow (far past
/// any file-descriptor limit; tokio's semaphores hold at most 2^61).
const MAX_CONNECTIONS: usize = 1_000_000;

impl Validator<'_> {
    pub(super) fn server(&self, s: file::ServerFile) -> Result<ServerConfig, ConfigError> {
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
            underscores_in_headers,
            sendfile,
        } = s;
        let send_timeout =
            self.nonzero(send_timeout, "server.send_timeout", Duration::from_secs(60))?;
        let header_read_timeout = self.nonzero(
            header_read_timeout,
            "server.header_read_timeout",
            Duration::from_secs(10),
        )?;
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
            Some(t) => Some(self.tls(t, listen.0)?),
        };
        Ok(ServerConfig {
            listen: listen.0,
            tls,
            drain_timeout: dur(drain_timeout, 30),
            header_read_timeout,
            send_timeout,
            max_header_size,
            max_connections: self.one_to(
                max_connections,
                "server.max_connections",
                10_000,
                MAX_CONNECTIONS,
            )?,
            trusted_proxies: self.trusted_proxies(trusted_proxies)?,
            strip_request_headers: self.strip_request_headers(strip_request_headers)?,
            underscores_in_headers: underscores_in_headers.unwrap_or(false),
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

    fn tls(&self, t: file::TlsFile, plain: SocketAddr) -> Result<TlsConfig, ConfigError> {
        let file::TlsFile {
            listen,
            cert,
            key,
            certificates,
            handshake_timeout,
        } = t;
        if overlaps(listen.get_ref().0, plain) {
            return Err(self.at.spanned(
                &listen,
                "server.tls.listen",
                "must differ from server.listen (both cannot be bound)",
            ));
        }
        let mut pairs = vec![self.cert_pair(cert, key, "server.tls")?];
        for (i, c) in certificates.into_iter().enumerate() {
            let file::CertFile { cert, key } = c;
            pairs.push(self.cert_pair(cert, key, &format!("server.tls.certificates[{i}]"))?);
        }
        Ok(TlsConfig {
            listen: listen.into_inner().0,
            certificates: pairs,
            handshake_timeout: self.nonzero(
                handshake_timeout,
                "server.tls.handshake_timeout",
                Duration::from_secs(10),
            )?,
        })
    }

    fn cert_pair(
        &self,
        cert: Spanned<PathBuf>,
        key: Spanned<PathBuf>,
        at: &str,
    ) -> Result<CertPair, ConfigError> {
        // Loading (and the cert/key match) is checked by the TLS module;
        // here, only that the files can be read, so the error has a line.
        Ok(CertPair {
            cert: self.readable_file(&cert, &format!("{at}.cert"))?,
            key: self.readable_file(&key, &format!("{at}.key"))?,
            cert_at: self.at.place(&cert, &format!("{at}.cert")),
            key_at: self.at.place(&key, &format!("{at}.key")),
        })
    }

    /// A file the config names (`server.tls` certificates and keys,
    /// `warming.urls_file`), resolved by [`Validator::relative`] and opened
    /// now, so that a missing or unreadable file (or a directory) fails
    /// `check`, start-up and a reload with the file's line and key, not
    /// later with no line at all. An empty path is refused as such (it
    /// read "cannot read : No such file or directory").
    pub(super) fn readable_file(
        &self,
        p: &Spanned<PathBuf>,
        key: &str,
    ) -> Result<PathBuf, ConfigError> {
        if p.get_ref().as_os_str().is_empty() {
            return Err(self
                .at
                .spanned(p, key, "expected a file path, not an empty string"));
        }
        let path = self.relative(p.get_ref());
        let refused = |reason: &dyn std::fmt::Display| {
            self.at
                .spanned(p, key, format!("cannot read {}: {reason}", path.display()))
        };
        match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_dir() => Err(refused(&"it is a directory")),
            Ok(_) => Ok(path.clone()),
            Err(e) => Err(refused(&e)),
        }
    }

    /// Relative paths in the file are relative to the working directory, as
    /// with nginx's `-p`-less default (`WorkingDirectory=/etc/strata` in the
    /// systemd unit); absolute ones are kept.
    pub(super) fn relative(&self, p: &Path) -> PathBuf {
        p.to_path_buf()
    }

    pub(super) fn admin(
        &self,
        a: file::AdminFile,
        server: &ServerConfig,
    ) -> Result<AdminConfig, ConfigError> {
        let file::AdminFile {
            listen,
            token,
            read_token,
            max_connections,
        } = a;
        if overlaps(listen.get_ref().0, server.listen) {
            return Err(self.at.spanned(
                &listen,
                "admin.listen",
                "must differ from server.listen (the admin API has its own listener)",
            ));
        }
        if server
            .tls
            .as_ref()
            .is_some_and(|t| overlaps(listen.get_ref().0, t.listen))
        {
            return Err(self.at.spanned(
                &listen,
                "admin.listen",
                "must differ from server.tls.listen (the admin API has its own listener)",
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
            max_connections: self.one_to(
                max_connections,
                "admin.max_connections",
                256,
                MAX_CONNECTIONS,
            )?,
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
            // A bearer token is sent as a header value, trimmed here on
            // arrival: a space, line break or non-ASCII character in it
            // could never be matched (every request would be `401`).
            Some(t) if !t.get_ref().chars().all(|c| c.is_ascii_graphic()) => Err(self.at.spanned(
                &t,
                key,
                "expected visible ASCII characters only (no spaces, tabs, line breaks or non-ASCII): no Authorization header could carry this token",
            )),
            Some(t) => Ok(Some(t.into_inner())),
            None => Ok(None),
        }
    }
}

/// Whether two listeners would need the same port: equal, or one on the
/// unspecified address (`0.0.0.0`, `[::]`, `:port`) of that port. Port 0
/// (any free port) never collides.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

//! The log line of a failed upstream exchange, what nginx's error log says
//! as `upstream timed out`, `upstream sent too big header` or `connect()
//! failed`: one `warn` event per failure, naming the server, the cause
//! (the error and each of its sources: a refused connect, which timeout,
//! a reset, the malformed part of a response), the request's method and
//! path and the client IP. The metrics count failures by kind; this says
//! why.
//!
//! The path is logged without its query, which routinely carries
//! credentials (as in the access log); no header value and no body is
//! logged.

use std::fmt;
use std::net::IpAddr;

use http::{Method, Request, Uri};

use super::UpstreamError;
use crate::traffic::ClientIp;

/// What the line says about the request, taken before the request moves
/// into the exchange. Only read on a failure; taking it clones a method
/// (an enum for the standard ones) and a URI (reference counts, not its
/// text).
pub(super) struct Attempt {
    method: Method,
    uri: Uri,
    /// The [`ClientIp`] extension `proxy/forward.rs` puts on every
    /// forwarded request; `None` for a request made without one.
    client: Option<IpAddr>,
}

impl Attempt {
    pub(super) fn of<B>(req: &Request<B>) -> Attempt {
        Attempt {
            method: req.method().clone(),
            uri: req.uri().clone(),
            client: req.extensions().get::<ClientIp>().map(|c| c.0),
        }
    }

    /// Logs `e`: at `warn` when it is the upstream's fault (or no server
    /// is eligible), at `debug` when the client's request body broke or
    /// stalled. `retry_on` names the server a failed connect is retried
    /// on: that hop gets a line of its own, as the request may still
    /// succeed there and the refusing server would otherwise go unseen.
    pub(super) fn failed(&self, e: &UpstreamError, retry_on: Option<&str>) {
        let server = e.server().unwrap_or("-");
        let path = self.uri.path();
        let client = ClientField(self.client);
        let cause = Chain(e);
        if let UpstreamError::LocalResources { .. } = e {
            tracing::error!(server, method = %self.method, path, client_ip = %client, cause = %cause, "cannot open a socket to the upstream: this process is out of file descriptors or buffers");
            return;
        }
        if !e.is_upstream_fault() {
            tracing::debug!(server, method = %self.method, path, client_ip = %client, cause = %cause, "request body to the upstream failed");
            return;
        }
        match retry_on {
            Some(next) => tracing::warn!(
                server,
                method = %self.method,
                path,
                client_ip = %client,
                cause = %cause,
                retry = next,
                "upstream failed; retrying on the next server"
            ),
            None => tracing::warn!(
                server,
                method = %self.method,
                path,
                client_ip = %client,
                cause = %cause,
                "upstream failed"
            ),
        }
    }
}

/// The client IP, or `-` without one.
struct ClientField(Option<IpAddr>);

impl fmt::Display for ClientField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// An error and its sources, joined by `: ` (hyper's errors say what broke
/// in their Display and why in their source).
/// An error and each of its sources, joined by `: ` (also the reason a
/// failed health check gives).
pub(super) struct Chain<'a>(pub(super) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_the_whole_chain() {
        let e = UpstreamError::Connect {
            server: "127.0.0.1:9".into(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert_eq!(
            Chain(&e).to_string(),
            "cannot connect to upstream 127.0.0.1:9: refused"
        );
        assert_eq!(ClientField(None).to_string(), "-");
    }
}

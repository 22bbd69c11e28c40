//! The access log: one structured tracing event per client request, target
//! `strata::access`, written with the rest of the logs (text or JSON).
//! `[log] access_log = false` turns it off (reloadable).
//!
//! The path is logged without its query: query strings routinely carry
//! credentials (signed-URL signatures, API keys, reset tokens), and a log
//! is read by more people than the traffic it records. No header value and
//! no body is ever logged.

use std::time::Duration;

use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;

use super::body::ProxyBody;
use super::cache_status::{CacheStatus, Tier};
use super::ConnInfo;
use crate::metrics::Outcome;
use crate::upstream::ServedBy;

/// The tracing target of access events (filter on it, e.g.
/// `warn,strata::access=info`).
pub const TARGET: &str = "strata::access";

/// What is kept of the request until its response is known.
pub struct Pending {
    method: Method,
    uri: Uri,
    version: Version,
}

impl Pending {
    /// Captures the request line when access logging is on and the log
    /// filter lets access events through; `None` costs nothing more.
    pub fn capture<B>(req: &Request<B>, enabled: bool) -> Option<Pending> {
        if !enabled || !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return None;
        }
        Some(Pending {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
        })
    }

    /// Emits the event for `response`. `duration_ms` is the time to the
    /// response head, as in `strata_request_duration_seconds`.
    pub fn emit(
        self,
        conn: ConnInfo,
        response: &Response<ProxyBody>,
        outcome: Outcome,
        status: &CacheStatus,
        elapsed: Duration,
    ) {
        let upstream = response
            .extensions()
            .get::<ServedBy>()
            .map(|s| s.0.as_str());
        tracing::info!(
            target: TARGET,
            client = %conn.peer,
            client_ip = %conn.client_ip,
            scheme = if conn.https { "https" } else { "http" },
            version = ?self.version,
            method = self.method.as_str(),
            path = self.uri.path(),
            status = response.status().as_u16(),
            bytes = body_bytes(response),
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            cache = outcome.as_str(),
            tier = status.tier().map(Tier::as_str),
            upstream,
            "access"
        );
    }
}

/// The response body's length when known before it is sent: exact for
/// stored (`Full`) and empty bodies, else the `Content-Length`. A streamed
/// body of unknown length (chunked, compressed on the fly) logs none.
pub fn body_bytes(response: &Response<ProxyBody>) -> Option<u64> {
    response
        .body()
        .size_hint()
        .exact()
        .or_else(|| super::headers::content_length(response.headers()))
}

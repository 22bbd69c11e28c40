//! Why an upstream exchange failed, said where it fails. The pipeline turns
//! it into a status code in one place (`proxy/error.rs`): no healthy server
//! → 503, a timeout → 504, anything else → 502.

use std::time::Duration;

/// An upstream failure, naming the server (`host:port`) it is about.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every server is out of rotation (unhealthy).
    #[error("no healthy upstream server")]
    NoHealthy,
    /// The TCP connect failed or timed out (`connect_timeout`; the source
    /// is then of kind `TimedOut`).
    #[error("cannot connect to upstream {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// No response head within `response_timeout`.
    #[error("upstream {server} did not answer within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    /// The exchange broke after connecting (reset, malformed response).
    #[error("upstream {server} failed")]
    Protocol {
        server: String,
        #[source]
        source: hyper::Error,
    },
    /// The response's framing cannot be relayed faithfully.
    #[error("upstream {server} sent a response with unsupported framing")]
    Framing { server: String },
}

impl UpstreamError {
    /// The server the failure is about, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            UpstreamError::NoHealthy => None,
            UpstreamError::Connect { server, .. }
            | UpstreamError::Timeout { server, .. }
            | UpstreamError::Protocol { server, .. }
            | UpstreamError::Framing { server } => Some(server),
        }
    }

    /// The `kind` label of `strata_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::NoHealthy => "no_healthy",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } | UpstreamError::Framing { .. } => "protocol",
        }
    }
}

//! Why an upstream exchange failed, said where it fails. The pipeline turns
//! it into a status code in one place (`proxy/error.rs`): no healthy server
//! → 503, a timeout (a connect timeout included) → 504, anything else → 502.

use std::time::Duration;

/// An upstream failure, naming the server (`host:port`) it is about.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every server is out of rotation (unhealthy) or drained.
    #[error("no upstream server in rotation (all unhealthy or drained)")]
    NoHealthy,
    /// The TCP connect failed or timed out (`connect_timeout`; the source
    /// is then of kind `TimedOut`).
    #[error("cannot connect to upstream {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// Strata itself could not open a socket to the upstream: out of file
    /// descriptors (`EMFILE`, `ENFILE`) or buffers (`ENOBUFS`, `ENOMEM`).
    /// Not the upstream's fault: `503`, not counted against it, never
    /// retried on another server (which would fail alike). nginx answers
    /// `500` for the same `socket()` failure.
    #[error("no local resources to connect to upstream {server} (raise the file descriptor limit, e.g. LimitNOFILE)")]
    LocalResources {
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
    /// A `101 Switching Protocols` to a request that asked for no upgrade
    /// (RFC 9110 §15.2.2: 101 only answers a client's `Upgrade`).
    #[error("upstream {server} switched protocols unasked")]
    UnaskedSwitch { server: String },
    /// A `304 Not Modified` to a request with no precondition (RFC 9110
    /// §15.4.5: 304 only answers a conditional GET or HEAD). Relayed, it
    /// left a client that holds nothing an empty page; Varnish's built-in
    /// VCL refuses it too.
    #[error("upstream {server} answered 304 to an unconditional request")]
    UnaskedNotModified { server: String },
    /// The client sent no more of its request body for
    /// `upstream.body_idle_timeout` while it was going upstream (nginx's
    /// `client_body_timeout`): `408`, not the upstream's fault.
    #[error("the client's request body to upstream {server} stalled for {idle:?}")]
    ClientStalled { server: String, idle: Duration },
    /// The client's request body broke while it was being sent (say, an
    /// invalid chunk size): the client's fault, answered 400 and not counted
    /// against the upstream. The upstream never got a complete request:
    /// the chunked request was cut off without its last chunk.
    #[error("the request body sent to upstream {server} was malformed")]
    ClientBody {
        server: String,
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// A failed connect to `server`: [`UpstreamError::LocalResources`] when
    /// the shortage is this process's (`EMFILE`, `ENFILE`, `ENOBUFS`,
    /// `ENOMEM`), else [`UpstreamError::Connect`].
    pub fn connecting(server: String, source: std::io::Error) -> UpstreamError {
        if matches!(source.raw_os_error(), Some(24 | 23 | 105 | 12)) {
            UpstreamError::LocalResources { server, source }
        } else {
            UpstreamError::Connect { server, source }
        }
    }

    /// The server the failure is about, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            UpstreamError::NoHealthy => None,
            UpstreamError::Connect { server, .. }
            | UpstreamError::LocalResources { server, .. }
            | UpstreamError::Timeout { server, .. }
            | UpstreamError::Protocol { server, .. }
            | UpstreamError::ClientBody { server, .. }
            | UpstreamError::ClientStalled { server, .. }
            | UpstreamError::UnaskedSwitch { server }
            | UpstreamError::UnaskedNotModified { server } => Some(server),
        }
    }

    /// Whether the upstream was too slow (SPEC §3, "upstream timeout →
    /// 504"): no response head within `response_timeout`, a stalled
    /// request body, or a TCP connect that timed out (`connect_timeout`, or
    /// the kernel's own `ETIMEDOUT`). A refused or otherwise failed connect
    /// is not: that is a broken exchange (`502`), as in nginx.
    pub fn is_timeout(&self) -> bool {
        match self {
            UpstreamError::Timeout { .. } => true,
            UpstreamError::Connect { source, .. } => source.kind() == std::io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    /// The `kind` label of `strata_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::NoHealthy => "no_healthy",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::LocalResources { .. } => "local",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. }
            | UpstreamError::UnaskedSwitch { .. }
            | UpstreamError::UnaskedNotModified { .. } => "protocol",
            UpstreamError::ClientBody { .. } | UpstreamError::ClientStalled { .. } => "client_body",
        }
    }

    /// Whether the failure is the upstream's (counted in
    /// `strata_upstream_errors_total`); a broken client body is not, nor a
    /// local shortage of sockets.
    pub fn is_upstream_fault(&self) -> bool {
        !matches!(
            self,
            UpstreamError::ClientBody { .. }
                | UpstreamError::ClientStalled { .. }
                | UpstreamError::LocalResources { .. }
        )
    }

    /// Classifies a failed send (after connecting): a failure of the
    /// request body the client streams is hyper's "user body" error
    /// somewhere in the chain; anything else is a protocol failure.
    pub fn from_send(server: String, source: hyper::Error) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        let mut client_body = false;
        while let Some(e) = cause {
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_user())
            {
                client_body = true;
                break;
            }
            cause = e.source();
        }
        if client_body {
            UpstreamError::ClientBody { server, source }
        } else {
            UpstreamError::Protocol { server, source }
        }
    }
}

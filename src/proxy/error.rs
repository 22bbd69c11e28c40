//! The one place where a failure becomes a status code: 400 for requests
//! Strata refuses (501 for a transfer coding it cannot forward), 502 for
//! a broken upstream exchange (a refused connect included), 503 when no
//! upstream is healthy, 504 when the upstream is too slow: no response
//! head in time, or a connect that timed out (or, for `only-if-cached`,
//! when nothing usable is stored).

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use crate::upstream::UpstreamError;

/// The `Allow` of a 405: every standard method but TRACE and CONNECT.
pub const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's request is malformed or refused; it never went upstream.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// More request header fields than the HTTP/1.1 server accepts (hyper's
    /// 100), over HTTP/2 (RFC 6585 §5).
    #[error("too many request header fields")]
    TooManyFields,
    /// An HTTP/2 request's header list over `server.max_header_size`
    /// (RFC 9113 §6.5.2's count; RFC 6585 §5). HTTP/1.1 heads are limited
    /// by hyper.
    #[error("request header section too large")]
    HeadTooLarge,
    /// An HTTP/2 request declaring an empty body whose stream did not end
    /// within `upstream.body_idle_timeout` (`408`; it never went upstream).
    #[error("request body stalled")]
    BodyStalled,
    /// RFC 9112 §6.1: a request transfer coding other than `chunked`;
    /// never forwarded.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The upstream exchange failed (see [`UpstreamError`]).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream's body broke before a response that had to be stored
    /// first (HEAD, conditional or range miss) was complete; `stalled`
    /// when it stalled past `body_idle_timeout` (`504`, else `502`).
    #[error("upstream {server} response body failed")]
    UpstreamBody { server: String, stalled: bool },
    /// `TRACE` and `CONNECT`: refused at the edge (SPEC §10), never forwarded.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// RFC 9111 §5.2.1.7: `only-if-cached` and nothing usable stored.
    #[error("only-if-cached request and nothing fresh in cache")]
    NotCached,
    /// RFC 9111 §4.2.4 / §5.2.2.2: a stale response that may not be served
    /// without validation (`must-revalidate`, `no-cache`, ...) could not
    /// be validated because the upstream failed; "SHOULD be 504".
    #[error("stored response could not be revalidated: {0}")]
    NotRevalidated(#[source] UpstreamError),
    #[error("over the rate limit {:?}", .0.name)]
    RateLimited(crate::traffic::Limited),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::Upstream(UpstreamError::ClientBody { .. }) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Upstream(UpstreamError::ClientStalled { .. }) | ProxyError::BodyStalled => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::TooManyFields | ProxyError::HeadTooLarge => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Upstream(
                UpstreamError::NoHealthy | UpstreamError::LocalResources { .. },
            ) => StatusCode::SERVICE_UNAVAILABLE,
            // A response timeout, and a connect timeout too (nginx's
            // `proxy_connect_timeout` gives 504); a refused connect is 502.
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamBody { stalled: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) | ProxyError::UpstreamBody { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::NotCached | ProxyError::NotRevalidated(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whether an HTTP/1.x connection is closed after this answer: a
    /// request refused as malformed (`400`) or framed with a transfer
    /// coding Strata cannot forward (`501`) leaves in doubt where the next
    /// request starts, so none is read after it (nginx closes after both;
    /// hyper after its own `400`). HTTP/2 streams are framed apart: their
    /// connection stays.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.status(),
            StatusCode::BAD_REQUEST | StatusCode::NOT_IMPLEMENTED
        )
    }

    /// The answer for a stale response that may not be served stale
    /// (`must-revalidate`, `no-cache`, ...) when its revalidation failed
    /// with `self`: an upstream that could not be reached or broke (`502`)
    /// becomes [`ProxyError::NotRevalidated`] (`504`, RFC 9111 §5.2.2.2);
    /// any other failure (a timeout is `504` already, no healthy server
    /// `503`) stays as it is.
    pub fn revalidating(self) -> ProxyError {
        match self {
            ProxyError::Upstream(u) if self.status() == StatusCode::BAD_GATEWAY => {
                ProxyError::NotRevalidated(u)
            }
            other => other,
        }
    }

    /// The upstream server the failure is about, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            ProxyError::Upstream(e) | ProxyError::NotRevalidated(e) => e.server(),
            ProxyError::UpstreamBody { server, .. } => Some(server),
            ProxyError::BadRequest(_)
            | ProxyError::BodyStalled
            | ProxyError::TooManyFields
            | ProxyError::HeadTooLarge
            | ProxyError::NotImplemented(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::NotCached
            | ProxyError::RateLimited(_) => None,
        }
    }

    /// The response sent to the client. The body is a short reason, never
    /// upstream details.
    pub fn into_response(&self) -> Response<ProxyBody> {
        if let ProxyError::RateLimited(limited) = self {
            return limited.response();
        }
        let status = self.status();
        let reason: &'static str = match self {
            ProxyError::BadRequest(why) | ProxyError::NotImplemented(why) => why,
            ProxyError::Upstream(UpstreamError::ClientBody { .. }) => "malformed request body",
            _ => status.canonical_reason().unwrap_or("error"),
        };
        let mut resp = Response::new(ProxyBody::from(reason));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let ProxyError::MethodNotAllowed = self {
            // RFC 9110 §15.5.6 asks for Allow: the standard methods Strata
            // forwards (what the origin accepts is the origin's business).
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        }
        if let Some(server) = self.server().and_then(|s| s.parse().ok()) {
            resp.extensions_mut()
                .insert(crate::upstream::ServedBy(server));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(kind: std::io::ErrorKind) -> ProxyError {
        ProxyError::Upstream(UpstreamError::Connect {
            server: "127.0.0.1:1".into(),
            source: std::io::Error::from(kind),
        })
    }

    /// Out of file descriptors is Strata's shortage, not the upstream's:
    /// it was a `502` counted against the server (and could take it out of
    /// rotation), as if the origin refused.
    #[test]
    fn a_socket_strata_cannot_open_is_503_and_not_the_upstreams_fault() {
        let e =
            UpstreamError::connecting("127.0.0.1:1".into(), std::io::Error::from_raw_os_error(24));
        assert!(matches!(e, UpstreamError::LocalResources { .. }));
        assert!(!e.is_upstream_fault());
        assert_eq!(
            ProxyError::Upstream(e).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let refused =
            UpstreamError::connecting("127.0.0.1:1".into(), std::io::Error::from_raw_os_error(111));
        assert!(matches!(refused, UpstreamError::Connect { .. }));
        assert_eq!(
            ProxyError::Upstream(refused).status(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn a_connect_timeout_is_504_and_a_refused_connect_502() {
        use std::io::ErrorKind;
        assert_eq!(
            connect(ErrorKind::TimedOut).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            connect(ErrorKind::ConnectionRefused).status(),
            StatusCode::BAD_GATEWAY
        );
        let timeout = ProxyError::Upstream(UpstreamError::Timeout {
            server: "127.0.0.1:1".into(),
            timeout: std::time::Duration::from_secs(1),
        });
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        // A failed revalidation: a timeout stays 504, a refusal becomes it.
        assert!(matches!(
            connect(ErrorKind::TimedOut).revalidating(),
            ProxyError::Upstream(_)
        ));
        assert_eq!(
            connect(ErrorKind::ConnectionRefused)
                .revalidating()
                .status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}

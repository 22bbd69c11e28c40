//! The one place where a failure becomes a status code: 400 for requests
//! Strata refuses, 502 for a broken upstream exchange, 503 when no upstream
//! is healthy, 504 when the upstream is too slow.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no healthy upstream server")]
    NoHealthyUpstream,
    #[error("cannot connect to upstream {server}")]
    Connect {
        server: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {server} failed")]
    Upstream {
        server: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {server} did not answer within {timeout:?}")]
    Timeout {
        server: String,
        timeout: std::time::Duration,
    },
    #[error("upstream {server} sent a response with unsupported framing")]
    BadFraming { server: String },
    #[error("only-if-cached request and nothing fresh in cache")]
    NotCached,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadFraming { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            // RFC 9111 §5.2.1.7
            ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The upstream server the failure is about, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            ProxyError::Connect { server, .. }
            | ProxyError::Upstream { server, .. }
            | ProxyError::Timeout { server, .. }
            | ProxyError::BadFraming { server } => Some(server),
            ProxyError::BadRequest(_) | ProxyError::NoHealthyUpstream | ProxyError::NotCached => {
                None
            }
        }
    }

    /// The response sent to the client. The body is a short reason, never
    /// upstream details.
    pub fn into_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let reason: &'static str = match self {
            ProxyError::BadRequest(why) => why,
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
        if let Some(server) = self.server().and_then(|s| s.parse().ok()) {
            resp.extensions_mut()
                .insert(crate::upstream::ServedBy(server));
        }
        resp
    }
}

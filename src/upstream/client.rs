//! The pooled keep-alive HTTP/1.1 client used for every upstream request
//! (hyper-util's legacy client): connections are reused across requests,
//! `connect_timeout` bounds the TCP connect and `response_timeout` the wait
//! for the response head.

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::error::UpstreamError;
use crate::config::UpstreamConfig;

/// A request body going upstream: the client's own, or none.
pub type ReqBody = Either<Incoming, Empty<Bytes>>;

pub fn empty_body() -> ReqBody {
    Either::Right(Empty::new())
}

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, ReqBody>,
}

impl UpstreamClient {
    pub fn new(config: &UpstreamConfig) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_server)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_preserve_header_case(false)
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector);
        UpstreamClient { client }
    }

    /// Sends `req` to `authority`, waiting at most `timeout` for the head.
    pub async fn request(
        &self,
        authority: &Authority,
        mut req: Request<ReqBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        // Upstreams speak HTTP/1.1 whatever the client used.
        *req.version_mut() = http::Version::HTTP_11;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout {
                server: authority.to_string(),
                timeout,
            }),
            Ok(Err(source)) if source.is_connect() => Err(UpstreamError::Connect {
                server: authority.to_string(),
                source,
            }),
            Ok(Err(source)) => Err(UpstreamError::Protocol {
                server: authority.to_string(),
                source,
            }),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

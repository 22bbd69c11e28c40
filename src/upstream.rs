//! The upstream pool: the configured servers, which of them are healthy,
//! round-robin selection, and sending a request with one retry on a connect
//! failure.
//!
//! - `upstream/balancer.rs`: per-server health state and round-robin choice.
//! - `upstream/health.rs`: active HTTP health checks.
//! - `upstream/client.rs`: the pooled keep-alive HTTP/1.1 client.

pub mod balancer;
pub mod client;
mod error;
pub mod health;

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
pub use balancer::{Balancer, ServerState};
pub use client::{ReqBody, UpstreamClient};
pub use error::UpstreamError;

/// The pool of upstream servers. Cheap to share (`Arc`); replaced whole on
/// reload, carrying over the health of servers that stay.
pub struct Upstreams {
    pub balancer: Balancer,
    client: UpstreamClient,
    config: UpstreamConfig,
    metrics: Metrics,
    /// Cancels the health-check tasks when the pool is dropped or replaced.
    stop: CancellationToken,
}

/// Response extension naming the upstream server that produced a response
/// (for the access log); it travels with the response's parts.
#[derive(Debug, Clone)]
pub struct ServedBy(pub http::uri::Authority);

/// A response from an upstream, with which server answered.
pub struct Answer {
    pub response: Response<Incoming>,
    pub server: usize,
}

impl Upstreams {
    pub fn new(
        config: &UpstreamConfig,
        previous: Option<&Upstreams>,
        metrics: Metrics,
    ) -> Arc<Upstreams> {
        let balancer = Balancer::new(&config.servers, previous.map(|p| &p.balancer));
        for s in balancer.servers() {
            metrics.upstream_healthy(s.authority.as_str(), s.is_healthy());
        }
        Arc::new(Upstreams {
            balancer,
            client: UpstreamClient::new(config),
            config: config.clone(),
            metrics,
            stop: CancellationToken::new(),
        })
    }

    /// Starts the active health checks (if enabled); they stop when this
    /// pool is dropped.
    pub fn start_health_checks(self: &Arc<Self>) {
        if self.config.health.enabled {
            health::spawn(Arc::downgrade(self), self.stop.clone());
        }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends `req` (origin-form URI; the server's authority is filled in)
    /// to the next healthy server. A connect failure counts against that
    /// server and, when `retry` is given (an idempotent request without a
    /// body, whose parts can be sent again), is retried once on the next.
    pub async fn send(
        &self,
        req: Request<ReqBody>,
        retry: Option<&RetryParts>,
    ) -> Result<Answer, UpstreamError> {
        let first = self.balancer.pick(None).ok_or(UpstreamError::NoHealthy)?;
        match self.send_to(first, req).await {
            Err(e @ UpstreamError::Connect { .. }) => {
                let (Some(parts), Some(next)) = (retry, self.balancer.pick(Some(first))) else {
                    return Err(e);
                };
                tracing::debug!(
                    failed = e.server(),
                    "connect failed, retrying on the next server"
                );
                self.send_to(next, parts.rebuild()).await
            }
            other => other,
        }
    }

    async fn send_to(&self, index: usize, req: Request<ReqBody>) -> Result<Answer, UpstreamError> {
        let server = &self.balancer.servers()[index];
        let started = Instant::now();
        let result = self
            .client
            .request(&server.authority, req, self.config.response_timeout)
            .await;
        let elapsed = started.elapsed();
        match result {
            Ok(mut response) => {
                self.metrics.upstream_response(
                    server.authority.as_str(),
                    response.status().as_u16(),
                    elapsed,
                );
                response
                    .extensions_mut()
                    .insert(ServedBy(server.authority.clone()));
                Ok(Answer {
                    response,
                    server: index,
                })
            }
            Err(e) => {
                self.metrics
                    .upstream_error(server.authority.as_str(), e.kind(), elapsed);
                if let UpstreamError::Connect { .. } = e {
                    if self.balancer.passive_failure(index, &self.config.health) {
                        self.metrics
                            .upstream_healthy(server.authority.as_str(), false);
                    }
                }
                Err(e)
            }
        }
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What is needed to send a body-less request again on another server.
pub struct RetryParts {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl RetryParts {
    pub fn capture(req: &Request<ReqBody>) -> RetryParts {
        RetryParts {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn rebuild(&self) -> Request<ReqBody> {
        let mut req = Request::new(client::empty_body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

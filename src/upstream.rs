//! The upstream pool: the configured servers, which of them are eligible
//! (healthy, not drained), the balancing policy, sticky sessions, and
//! sending a request with one retry on a connect failure (another server)
//! or on a dead keep-alive connection (the same server, a fresh
//! connection).
//!
//! - `upstream/balancer.rs`: round-robin, least-request and hash policies
//!   (`balancer/ring.rs`: the consistent hash ring).
//! - `upstream/server.rs`: one server's health, drain, in-flight count and
//!   slow-start ramp.
//! - `upstream/sticky.rs`: the signed sticky-session cookie.
//! - `upstream/health.rs`: active HTTP health checks.
//! - `upstream/client.rs`: one exchange with one server, the retry rule for
//!   dead keep-alive connections, the body that returns its connection.
//! - `upstream/pool.rs`: per-server keep-alive connections (connect, idle
//!   list, expiry).
//! - `upstream/failure_log.rs`: the `warn` line of each failed exchange.

pub mod balancer;
pub mod client;
mod counted;
mod error;
mod failure_log;
pub mod health;
mod outgoing;
mod pool;
pub mod server;
pub mod sticky;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Response};
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerts;
use crate::config::{Balance, HashKey, UpstreamConfig};
use crate::metrics::{Metrics, ServerSeries};
pub use balancer::{Balancer, Route};
pub use client::{Failure, ReqBody, UpstreamBody, UpstreamClient};
pub use error::UpstreamError;
pub use server::ServerState;
pub use sticky::{SetSticky, Sticky};

/// The pool of upstream servers. Cheap to share (`Arc`); replaced whole on
/// reload, carrying over the health of servers that stay.
pub struct Upstreams {
    pub balancer: Balancer,
    /// `[upstream.sticky]`, when configured.
    sticky: Option<Sticky>,
    client: UpstreamClient,
    /// Per-server metric series, in the balancer's order.
    series: Vec<Arc<ServerSeries>>,
    config: UpstreamConfig,
    metrics: Metrics,
    alerts: Alerts,
    /// Cancels the health-check tasks when the pool is dropped or replaced.
    stop: CancellationToken,
    /// True while `all_upstreams_down` is raised and not yet ended, shared
    /// with the pool a reload replaces. Its lock orders the health alerts
    /// (never held across an `.await`), so one outage raises one
    /// `all_upstreams_down` and one recovery ends it, however many servers
    /// leave or return at once ([`health::went_down`], [`health::came_back`]).
    outage: Arc<std::sync::Mutex<bool>>,
}

/// Response extension naming the upstream server that produced a response
/// (for the access log); it travels with the response's parts.
#[derive(Debug, Clone)]
pub struct ServedBy(pub http::uri::Authority);

/// A response from an upstream, with which server answered.
pub struct Answer {
    pub response: Response<UpstreamBody>,
    pub server: usize,
}

impl Upstreams {
    pub fn new(
        config: &UpstreamConfig,
        previous: Option<&Upstreams>,
        metrics: Metrics,
        alerts: Alerts,
    ) -> Arc<Upstreams> {
        let balancer = Balancer::new(config, previous.map(|p| &p.balancer));
        if !config.health.enabled && previous.is_some_and(|p| p.config.health.enabled) {
            health::checks_turned_off(balancer.servers(), &alerts);
        }
        for s in balancer.servers() {
            metrics.upstream_known(s.authority.as_str());
            metrics.upstream_healthy(s.authority.as_str(), s.is_healthy());
            metrics.upstream_draining(s.authority.as_str(), s.is_draining());
        }
        let current =
            |a: &http::uri::Authority| balancer.servers().iter().any(|s| s.authority == *a);
        for gone in previous.iter().flat_map(|p| p.balancer.servers()) {
            if !current(&gone.authority) {
                metrics.upstream_removed(gone.authority.as_str());
            }
        }
        let sticky = config.sticky.as_ref().and_then(|c| {
            let s = Sticky::new(c, balancer.servers().iter().map(|s| &s.authority));
            if s.is_none() {
                tracing::error!(
                    "upstream.sticky: the secret cannot key HMAC-SHA256; sticky sessions are off"
                );
            }
            s
        });
        if previous.is_none_or(|p| p.config.health != config.health) {
            tracing::info!(
                servers = config.servers.len(),
                "upstream health checks: {}",
                health::describe(&config.health)
            );
        }
        let series = balancer
            .servers()
            .iter()
            .map(|s| Arc::new(metrics.server_series(s.authority.as_str())))
            .collect();
        let client = UpstreamClient::new(balancer.servers().iter().map(|s| &s.authority), config);
        let outage = previous.map_or_else(Default::default, |p| p.outage.clone());
        if balancer.eligible_count() > 0 {
            // A reload that brings servers in rotation ends an outage.
            health::ended_outage(&outage, &alerts, "a reload put upstreams in rotation");
        }
        Arc::new(Upstreams {
            balancer,
            sticky,
            series,
            client,
            config: config.clone(),
            metrics,
            alerts,
            stop: CancellationToken::new(),
            outage,
        })
    }

    /// Starts the active health checks (if enabled); they stop when this
    /// pool is dropped.
    pub fn start_health_checks(self: &Arc<Self>) {
        if self.config.health.enabled {
            health::spawn(Arc::downgrade(self), self.stop.clone());
        }
    }

    /// Stops this pool's active health checks (a reload replaced it). A
    /// request still in flight keeps the pool alive, and its checkers
    /// with it, until its answer: a removed server was checked and
    /// alerted on, and a kept one checked twice per interval.
    pub fn stop_health_checks(&self) {
        self.stop.cancel();
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

    /// Drains (`true`) or undrains `server` (`host:port`): a drained
    /// server gets no new requests; those in flight finish. Returns the
    /// previous state, or `None` for a server that is not configured.
    pub fn set_draining(&self, server: &str, draining: bool) -> Option<bool> {
        let index = self.balancer.find(server)?;
        let s = &self.balancer.servers()[index];
        let was = s.set_draining(draining);
        if was != draining {
            self.metrics
                .upstream_draining(s.authority.as_str(), draining);
            tracing::info!(server = %s.authority, draining, "upstream drain changed");
            health::drain_changed(self, s, draining);
        }
        Some(was)
    }

    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// Sends `req` (origin-form URI; the server's authority is filled in)
    /// to the server the balancer picks: the sticky cookie's server while
    /// it is eligible, else by `upstream.balance`. The sticky cookie is
    /// removed from the request; when the answer came from another server
    /// than a valid cookie named, the response carries a [`SetSticky`]
    /// extension. `replayable` says the request is idempotent and has no
    /// body: it is re-sent once on a fresh connection when a reused one
    /// turns out dead (`upstream/client.rs`). After a connect failure
    /// (which counts against that server) any idempotent request, body
    /// included, is retried once on the next: nothing of it was sent.
    pub async fn send(
        &self,
        mut req: Request<ReqBody>,
        replayable: bool,
    ) -> Result<Answer, UpstreamError> {
        let now = SystemTime::now();
        let preferred = self
            .sticky
            .as_ref()
            .and_then(|s| s.take(req.headers_mut(), now));
        let idempotent = req.method().is_idempotent();
        let mut route = Route {
            exclude: None,
            preferred,
            hash: self.hash_of(&req),
            // Only a request retried after a connect failure tries a
            // server whose `fail_timeout` has passed.
            no_trial: !idempotent,
        };
        let attempt = failure_log::Attempt::of(&req);
        let asks_upgrade = req.headers().contains_key(http::header::UPGRADE);
        // Any precondition field (`If-None-Match`, `If-Modified-Since`, …):
        // without one, a 304 answers nothing that was asked.
        let conditional = req.headers().keys().any(|k| k.as_str().starts_with("if-"));
        let Some(mut target) = self.balancer.pick(&route) else {
            attempt.failed(&UpstreamError::NoHealthy, None);
            return Err(UpstreamError::NoHealthy);
        };
        // One `send_to` in the loop, not one per attempt: each would take
        // its own 1 KB in this future and in every caller's.
        let mut answer = loop {
            match self.send_to(target, req, replayable).await {
                Ok(answer) => break answer,
                // Once, on another server.
                Err(Failure {
                    error: e @ UpstreamError::Connect { .. },
                    request: Some(again),
                }) if idempotent && route.exclude.is_none() => {
                    route.exclude = Some(target);
                    let Some(next) = self.balancer.pick(&route) else {
                        attempt.failed(&e, None);
                        return Err(e);
                    };
                    let next_server = &self.balancer.servers()[next].authority;
                    attempt.failed(&e, Some(next_server.as_str()));
                    // The sticky cookie was already taken out of `again`.
                    (target, req) = (next, again);
                }
                Err(f) => {
                    attempt.failed(&f.error, None);
                    return Err(f.error);
                }
            }
        };
        if answer.response.status() == http::StatusCode::SWITCHING_PROTOCOLS && !asks_upgrade {
            // Answered, but the proxy turns it into a 502 (`proxy/forward.rs`).
            let server = self.balancer.servers()[answer.server].authority.to_string();
            let e = UpstreamError::UnaskedSwitch { server };
            self.series[answer.server].body_error(e.kind());
            attempt.failed(&e, None);
        }
        if answer.response.status() == http::StatusCode::NOT_MODIFIED && !conditional {
            let server = self.balancer.servers()[answer.server].authority.to_string();
            let e = UpstreamError::UnaskedNotModified { server };
            self.series[answer.server].body_error(e.kind());
            attempt.failed(&e, None);
            return Err(e);
        }
        if let Some(sticky) = &self.sticky {
            if preferred != Some(answer.server) {
                if let Some(set) = sticky.issue(answer.server, now) {
                    answer.response.extensions_mut().insert(set);
                }
            }
        }
        Ok(answer)
    }

    /// The request's `hash_key` hash under `balance = "hash"`; `None`
    /// (round-robin) for other policies or when the key is absent or
    /// empty (`sid=`, `X-User:`: every such client pinned to one server).
    fn hash_of(&self, req: &Request<ReqBody>) -> Option<u64> {
        let Balance::Hash(key) = self.balancer.balance() else {
            return None;
        };
        let hash = balancer::ring::Ring::hash;
        match key {
            HashKey::Uri => req
                .uri()
                .path_and_query()
                .map(|p| hash(p.as_str().as_bytes())),
            HashKey::Header(name) => req
                .headers()
                .get(name)
                .filter(|v| !v.is_empty())
                .map(|v| hash(v.as_bytes())),
            HashKey::Cookie(name) => req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(cookie::Cookie::split_parse)
                .flatten()
                .find(|c| c.name() == name)
                .filter(|c| !c.value().is_empty())
                .map(|c| hash(c.value().as_bytes())),
        }
    }

    async fn send_to(
        &self,
        index: usize,
        req: Request<ReqBody>,
        replayable: bool,
    ) -> Result<Answer, Failure> {
        let server = &self.balancer.servers()[index];
        let started = Instant::now();
        // Out of rotation yet picked: a trial after `fail_timeout`.
        let trial = !server.is_healthy();
        let in_flight = server.begin();
        let result = self
            .client
            .request(
                index,
                req,
                replayable,
                self.config.response_timeout,
                self.config.body_idle_timeout,
            )
            .await;
        drop(in_flight);
        let elapsed = started.elapsed();
        match result {
            Ok(mut response) => {
                if !trial {
                    server.record_answer();
                } else if server.trial_passed() {
                    health::came_back(self, server, "a request after fail_timeout");
                }
                self.series[index].response(response.status().as_u16(), elapsed);
                response.body_mut().count_failures(&self.series[index]);
                response
                    .extensions_mut()
                    .insert(ServedBy(server.authority.clone()));
                Ok(Answer {
                    response,
                    server: index,
                })
            }
            Err(f) => {
                let e = &f.error;
                if e.is_upstream_fault() {
                    self.series[index].error(e.kind(), elapsed);
                }
                if let UpstreamError::Connect { .. } = e {
                    if self.balancer.passive_failure(index, &self.config.health) {
                        health::went_down(self, server, "connect failed");
                    }
                }
                Err(f)
            }
        }
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

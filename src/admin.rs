//! The admin API on its own listener: `GET /health` (always open);
//! `GET /metrics`, `/stats`, `/dashboard`, `/events` and
//! `GET /cache?url=` (behind `[admin] read_token` when set); the mutating `POST /purge`,
//! `POST /upstreams/drain` and `POST /upstreams/undrain` (bearer
//! `[admin] token` required).
//!
//! - `admin/auth.rs`: bearer tokens, compared in constant time.
//! - `admin/health.rs`: the shape of `GET /health`'s body.
//! - `admin/dashboard.rs`: the live dashboard page (embedded assets).
//! - `admin/events.rs`: the Server-Sent-Events stream of snapshots.
//! - `admin/snapshot.rs`: what a snapshot holds and how it is computed.
//! - `admin/purge.rs`: `POST /purge`.
//! - `admin/inspect.rs`: `GET /cache?url=`, what is stored for a URL.
//! - `admin/target.rs`: a URL keyed as a request for it would be (purge
//!   and inspection).
//! - `admin/upstreams.rs`: drain and undrain an upstream server.

pub mod auth;
pub mod dashboard;
pub mod events;
mod health;
pub mod inspect;
pub mod purge;
pub mod snapshot;
pub mod target;
pub mod upstreams;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::proxy::body::ProxyBody;
use crate::proxy::Shared;

pub struct Admin {
    shared: Arc<Shared>,
    events: events::Events,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Admin {
        Admin {
            events: events::Events::new(shared.clone()),
            shared,
        }
    }

    /// The server is draining: end the `/events` streams (they would
    /// otherwise hold the drain until its timeout).
    pub fn close(&self) {
        self.events.close();
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400,
        // here as on the proxy listener (`strata healthcheck` sends one).
        if req.version() == http::Version::HTTP_11
            && !req.headers().contains_key(http::header::HOST)
        {
            return bad_request("an HTTP/1.1 request needs a Host field");
        }
        if is_read_endpoint(req.uri().path())
            && !auth::may_read(&req, &self.shared.runtime.load().config.admin)
        {
            return auth::unauthorized_read(&req);
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/health") => self.health(),
            (&Method::GET | &Method::HEAD, "/metrics") => self.metrics(),
            (&Method::GET | &Method::HEAD, "/stats") => self.stats(),
            (&Method::GET | &Method::HEAD, "/dashboard") => dashboard::page(),
            (&Method::GET, "/events") => self.events.subscribe(auth::read_credential(&req)),
            (&Method::POST, "/purge") => purge::handle(&self.shared, req).await,
            (&Method::GET | &Method::HEAD, "/cache") => inspect::handle(&self.shared, &req).await,
            (&Method::POST, "/upstreams/drain") => upstreams::handle(&self.shared, req, true).await,
            (&Method::POST, "/upstreams/undrain") => {
                upstreams::handle(&self.shared, req, false).await
            }
            (_, path) => match allowed_methods(path) {
                Some(allow) => method_not_allowed(allow),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        }
    }

    fn health(&self) -> Response<ProxyBody> {
        let runtime = self.shared.runtime.load();
        let balancer = &runtime.upstreams.balancer;
        let upstreams = balancer
            .servers()
            .iter()
            .enumerate()
            .map(|(i, s)| health::Upstream {
                server: s.authority.as_str(),
                state: if s.is_healthy() {
                    "healthy"
                } else {
                    "unhealthy"
                },
                healthy: s.is_healthy(),
                weight: balancer.weight(i),
                draining: s.is_draining(),
                in_flight: s.in_flight(),
            })
            .collect();
        // Healthy, drained or not (SPEC §4: 503 when none is healthy): a
        // drain is maintenance, and the instance still serves its cache.
        let healthy = balancer.healthy_count();
        let status = if healthy > 0 {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = health::Health {
            status: if healthy > 0 { "ok" } else { "unavailable" },
            healthy,
            upstreams,
            // Redis never makes Strata unhealthy (it degrades to memory
            // only), but operators want to see it.
            redis: self
                .shared
                .cache
                .redis_state()
                .map(|(connected, breaker_open)| health::Redis {
                    connected,
                    breaker_open,
                }),
            // Warming never makes Strata unhealthy either: it stays 200.
            // Shown only for a warming loop that runs (or ran), not for a
            // section a reload added, which waits for a restart.
            warming: self
                .shared
                .warming
                .shown(runtime.config.warming.is_some())
                .then(|| self.shared.warming.to_json()),
        };
        json_response(status, &body)
    }

    fn metrics(&self) -> Response<ProxyBody> {
        self.shared.cache.export_sizes();
        match self.shared.metrics.render() {
            Ok(text) => {
                let mut r = Response::new(ProxyBody::full(Bytes::from(text)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot render metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
            }
        }
    }

    fn stats(&self) -> Response<ProxyBody> {
        self.shared.cache.export_sizes();
        json_response(StatusCode::OK, &self.shared.metrics.stats())
    }
}

/// The endpoints `[admin] read_token` protects (SPEC: `/metrics`,
/// `/stats`, `/dashboard`, `/events`, `/cache` and below it). `/health`
/// stays open for load balancers and orchestrators; `/purge` has its own
/// token.
fn is_read_endpoint(path: &str) -> bool {
    matches!(
        path,
        "/metrics" | "/stats" | "/dashboard" | "/events" | "/cache"
    ) || path.starts_with("/cache/")
}

/// The methods each admin path answers, for `405`'s `Allow` (RFC 9110
/// §15.5.6: a 405 must list them); `None` for an unknown path.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/health" | "/metrics" | "/stats" | "/dashboard" | "/cache" => Some("GET, HEAD"),
        "/events" => Some("GET"),
        "/purge" | "/upstreams/drain" | "/upstreams/undrain" => Some("POST"),
        _ => None,
    }
}

fn method_not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A `400` with `{"error": reason}`.
pub fn bad_request(reason: &str) -> Response<ProxyBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": reason }),
    )
}

/// A mutating endpoint's request body: at most `limit` bytes, all of it
/// within `server.header_read_timeout` (a client that stalls mid-body held
/// the admin connection open for good). `Err` is the answer: `413` (more
/// than `limit` bytes), `400` (unreadable) or `408` (too slow).
pub async fn read_body(
    shared: &Shared,
    body: hyper::body::Incoming,
    limit: usize,
) -> Result<Bytes, Response<ProxyBody>> {
    use http_body_util::{BodyExt, Limited};
    let within = shared.runtime.load().config.server.header_read_timeout;
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        // RFC 9110 §15.5.14, as nginx's `client_max_body_size` answers.
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({ "error": format!("request body larger than {limit} bytes") }),
        )),
        Ok(Err(_)) => Err(bad_request("request body unreadable")),
        Err(_) => Err(json_response(
            StatusCode::REQUEST_TIMEOUT,
            &serde_json::json!({ "error": "request body not received in time" }),
        )),
    }
}

pub fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `value` as JSON (objects built with `json!` have sorted keys; a
/// `#[derive(Serialize)]` struct keeps its fields' order).
pub fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

//! The body of `GET /health`, as structs so that its keys keep the
//! README's order (`status`, `healthy`, `upstreams`, then `redis` and
//! `warming` when present; per upstream `server`, `state`, `healthy`, then
//! the details): serde_json's own map would sort them.

use serde::Serialize;

/// The whole answer.
#[derive(Serialize)]
pub(super) struct Health<'a> {
    /// `"ok"` while at least one upstream is healthy, else `"unavailable"`.
    pub status: &'static str,
    /// Servers passing their health checks, drained or not.
    pub healthy: usize,
    pub upstreams: Vec<Upstream<'a>>,
    /// Present only with `[cache.redis]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
    /// Present only while a warming loop runs or ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warming: Option<serde_json::Value>,
}

/// One configured upstream server.
#[derive(Serialize)]
pub(super) struct Upstream<'a> {
    /// `host:port` as configured.
    pub server: &'a str,
    /// `"healthy"` or `"unhealthy"`.
    pub state: &'static str,
    pub healthy: bool,
    pub weight: u32,
    /// Drained by `POST /upstreams/drain`: no new requests.
    pub draining: bool,
    /// Requests it is answering now.
    pub in_flight: usize,
}

/// The Redis tier's state.
#[derive(Serialize)]
pub(super) struct Redis {
    pub connected: bool,
    pub breaker_open: bool,
}

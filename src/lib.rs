//! Strata: a caching reverse proxy.
//!
//! # Layout
//! - [`cli`], [`telemetry`]: command line and logging.
//! - [`config`]: the TOML file → a validated [`config::Config`].
//! - [`server`]: listeners (plain, TLS, admin), connections, signals, drain.
//! - [`proxy`]: the request pipeline, headers, `Cache-Status`, errors.
//! - [`rules`]: path globs → Cache-Control overrides.
//! - [`cache`]: the RFC 9111 shared cache: keys, entries, freshness,
//!   storage tiers (memory, Redis), collapsed forwarding, tags and purge.
//! - [`upstream`]: balancing (smooth weighted round-robin, least-request,
//!   consistent hash), slow start, drain, sticky cookies, health checks,
//!   pooled client.
//! - [`traffic`]: the client IP behind trusted proxies, rate limits.
//! - [`compression`]: br/gzip negotiation and encoding.
//! - [`admin`]: `/health`, `/metrics`, `/stats`, `/purge`, `/upstreams/drain`,
//!   the live `/dashboard` and its `/events` stream.
//! - [`metrics`]: Prometheus registry.
//! - [`activity`]: recent purges, reloads and alerts (for the dashboard).
//! - [`probe`]: `strata healthcheck`, the container health probe.
//!
//! # Request flow
//! - **hit**: accept → validate → client IP → `count = "all"` rate limits →
//!   rule → memory, then Redis (promote) → fresh → 304 / Range / HEAD /
//!   full from stored bytes →
//!   `Cache-Status: strata; hit; detail=memory|redis`. No upstream, no
//!   compression.
//! - **miss**: collapse lock → `count = "origin"` rate limits → the leader
//!   goes to the server the balancer picks (sticky cookie first) → rule
//!   override → storable and small enough? stream to the client while
//!   buffering → at the end, encode once, admit to memory now and Redis in
//!   the background → followers read the result (`collapsed`); a sticky
//!   `Set-Cookie` is added as the response leaves, never stored.
//! - **stale**: inside stale-while-revalidate serve now and refresh in the
//!   background; else a conditional request, a 304 refreshes; an upstream
//!   failure inside stale-if-error serves stale; else 502/503/504.
//! - **pass**: other methods and uncacheable requests stream both ways;
//!   unsafe methods invalidate the URL (RFC 9111 §4.4).

#![forbid(unsafe_code)]

pub mod activity;
pub mod admin;
pub mod cache;
pub mod cli;
pub mod compression;
pub mod config;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod rules;
pub mod server;
pub mod telemetry;
pub mod traffic;
pub mod upstream;

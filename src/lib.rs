//! Strata: a caching reverse proxy.
//!
//! # Layout
//! - [`cli`], [`telemetry`]: command line and logging.
//! - [`config`]: the TOML file → a validated [`config::Config`]
//!   (`config/file.rs` the serde shape, `config/validate.rs` the checks and
//!   defaults, `config/units.rs` sizes and durations).
//! - [`server`]: listeners (plain, TLS, admin), connections, signals, drain.
//! - [`proxy`]: the request pipeline, as phases (below).
//! - `rules`: path globs → Cache-Control overrides, lifetimes and cache-key
//!   options.
//! - [`cache`]: the RFC 9111 shared cache and nothing else: keys, entries,
//!   directives, freshness, collapse locks, tags, the memory tier (moka)
//!   and the Redis tier. It never calls into `proxy`.
//! - [`upstream`]: the server pool — balancing (smooth weighted
//!   round-robin, least-request, consistent hash), slow start, drain,
//!   sticky cookies, health checks, the pooled client and `UpstreamError`;
//!   it never calls into `proxy` either.
//! - [`traffic`]: the client IP behind trusted proxies, rate limits.
//! - [`compression`]: br/gzip negotiation, one-shot and streamed encoding.
//! - `admin`: `/health`, `/metrics`, `/stats`, `/purge`,
//!   `/upstreams/drain`, the live `/dashboard` and
//!   its `/events` stream.
//! - [`alerts`]: webhook alerts (health, Redis breaker, reloads, ratios,
//!   certificates), delivered off the request path.
//! - [`metrics`]: Prometheus registry; [`activity`]: recent purges,
//!   reloads and alerts.
//! - [`invalidation`]: cascading invalidation (`[[invalidation.cascade]]`).
//! - [`warming`]: cache warming (`[warming]`): URL file, sitemap, `redis_hot`.
//! - [`probe`]: `strata healthcheck`, the container health probe.
//!
//! # Request flow (`proxy::Shared::handle`)
//! validate (`proxy/validate.rs`) → client IP and `count = "all"` rate limits → route → lookup →
//! one `match` on `proxy::lookup::Lookup` → finish (`Cache-Status`, `Via`,
//! metrics, access log).
//! - **hit**: `proxy.rs` → `proxy/lookup.rs` (memory, then Redis with
//!   promotion; Vary; freshness) → `proxy/stored.rs` (304 / Range / HEAD /
//!   full from stored bytes) → `strata; hit; detail=memory|redis`. No
//!   upstream, no compression, no body copy.
//! - **miss**: `proxy/lookup.rs` → `proxy/fetch.rs` (collapse lock;
//!   `count = "origin"` rate limits; the leader goes to the server the
//!   balancer picks, sticky cookie first; the answer is classified once as
//!   `Fetched`) → `proxy/admit.rs` (stream to the client while buffering;
//!   at the end encode once, admit to memory now and Redis in the
//!   background) → followers answer from the result (`collapsed`). A
//!   sticky `Set-Cookie` is added as the response leaves, never stored.
//! - **stale**: `proxy/lookup.rs` decides; inside stale-while-revalidate
//!   `proxy/fetch/refresh.rs` revalidates in the background while the
//!   stale copy is served; otherwise a conditional fetch, where a 304
//!   refreshes the entry and an upstream failure inside stale-if-error
//!   serves the stale copy.
//! - **pass**: `proxy/forward.rs` — other methods, uncacheable URLs and
//!   upgrades stream both ways; unsafe methods invalidate the URL
//!   (RFC 9111 §4.4).

// Unsafe code is refused everywhere but in `cache/arena.rs`, which maps
// the body arena's shared memory, `cache/large.rs`, which maps large
// bodies one by one, `compression/tables.rs`, which maps the brotli
// encoder's tables, and `heap.rs`, which calls the allocator's purge (each
// block with its SAFETY note).
#![deny(unsafe_code)]

pub mod activity;
pub(crate) mod admin;
pub mod alerts;
pub mod cache;
pub mod cli;
pub mod compression;
pub mod config;
#[allow(unsafe_code)]
pub mod heap;
pub mod invalidation;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub(crate) mod rules;
pub mod server;
pub mod telemetry;
pub mod traffic;
pub mod upstream;
pub mod warming;

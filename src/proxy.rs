//! The request pipeline, as phases: **validate** → **route** (cacheable?
//! rule, key) → **lookup** → one `match` on [`Lookup`] → **finish**
//! (`Cache-Status`, `Via`, metrics, access log). Every response passes
//! through [`Shared::handle`].
//!
//! - `proxy/lookup.rs`: the hit path — route, memory then Redis, Vary,
//!   freshness → [`Lookup`].
//! - `proxy/stored.rs`: answering from a stored variant (304/412, HEAD,
//!   `Age`); `proxy/range.rs`: byte ranges (206/416, `If-Range`).
//! - `proxy/fetch.rs`: the miss path — collapsed forwarding, the upstream
//!   fetch and its one classification (`fetch/exchange.rs`, with
//!   `fetch/storability.rs`), stale-if-error, the background refresh
//!   (`fetch/refresh.rs`).
//! - `proxy/admit.rs`: storing a miss at the upstream's speed while it
//!   streams to its client (`proxy/feed.rs`: that client's body).
//! - `proxy/forward.rs`: pass-through (other methods, uncacheable URLs,
//!   upgrades) and sending any request upstream.
//! - `proxy/target.rs`: the one normalised request path (SPEC §10).
//! - `proxy/headers.rs`: hop-by-hop stripping and forwarding fields.
//! - `proxy/as_forwarded.rs`: a request's fields as the origin gets them,
//!   for `Vary` (the forwarding fields Strata rewrites).
//! - `proxy/cache_status.rs`: RFC 9211 `Cache-Status` and the metrics
//!   outcome derived from it.
//! - `proxy/error.rs`: the one place errors become 400/502/503/504.
//! - `proxy/body.rs`: the response body type (hits are `Full` bytes).
//! - `proxy/access.rs`: the access log (one event per request).
//! - `proxy/rule_count.rs`: the rule a request counts under (the one that
//!   applied to its response).

pub mod access;
pub mod admit;
pub mod as_forwarded;
pub mod body;
pub mod cache_status;
pub mod error;
pub mod feed;
pub mod fetch;
pub mod forward;
pub mod headers;
mod limits;
pub mod lookup;
pub mod range;
mod rule_count;
pub mod stored;
pub mod target;
pub mod validate;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::activity::Activity;
use crate::alerts::Alerts;
use crate::cache::directives::CacheControl;
use crate::cache::entry::Variant;
use crate::cache::freshness::{now_millis, Millis};
use crate::cache::Cache;
use crate::compression::Coding;
use crate::config::Config;
use crate::metrics::{MethodClass, Metrics, Outcome, RuleCounters};
use crate::traffic::RateLimits;
use crate::upstream::{SetSticky, Upstreams};
use body::ProxyBody;
use cache_status::{CacheStatus, Fwd, ServedStale};
use error::ProxyError;
use lookup::{Hit, Lookup};
use validate::{Field, Present};

/// The client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub https: bool,
    /// The client's IP: the peer's, or the one its trusted proxies report
    /// (`server.trusted_proxies`); set per request by [`Shared::handle`].
    pub client_ip: IpAddr,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, https: bool) -> ConnInfo {
        ConnInfo {
            peer,
            https,
            client_ip: peer.ip(),
        }
    }
}

/// Everything that a reload replaces at once.
pub struct Runtime {
    pub config: Arc<Config>,
    pub upstreams: Arc<Upstreams>,
    /// `strata_rule_requests_total` handles for `config.rules`, by index.
    pub rule_counters: RuleCounters,
    /// `[[rate_limits]]`; `None` when there are none.
    pub rate_limits: Option<Arc<RateLimits>>,
}

/// State shared by every connection (cheap `Arc` clones).
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub cache: Cache,
    /// Recent purges, reloads and alerts (the dashboard's list).
    pub activity: Activity,
    /// Webhook alerts (never used on the request path).
    pub alerts: Alerts,
    /// Cache warming progress (`GET /health`).
    pub warming: Arc<crate::warming::Progress>,
}

/// A response and how it was produced, before the common finishing touches.
pub struct Answered {
    pub response: Response<ProxyBody>,
    pub status: CacheStatus,
    /// Strata answered with an error of its own (4xx, 502/503/504).
    failed: bool,
    /// Closes an HTTP/1.x connection ([`ProxyError::closes_connection`]).
    close: bool,
    /// A rate limit refused the request ([`ProxyError::RateLimited`]).
    limited: bool,
}

impl Answered {
    pub fn new(response: Response<ProxyBody>, status: CacheStatus) -> Answered {
        Answered {
            response,
            status,
            failed: false,
            close: false,
            limited: false,
        }
    }

    pub fn error(e: &ProxyError, mut status: CacheStatus) -> Answered {
        if let ProxyError::RateLimited(limited) = e {
            limited.count();
            // Refused before it went forward, on arrival or on its way
            // upstream (`count = "origin"`): never `fwd=miss`, which says
            // the request went towards the origin (RFC 9211 §2.2).
            status = CacheStatus::fwd(Fwd::Bypass);
        }
        Answered {
            response: e.into_response(),
            status,
            failed: true,
            close: e.closes_connection(),
            limited: matches!(e, ProxyError::RateLimited(_)),
        }
    }

    /// The `outcome` label: `error` for Strata's own errors, else what
    /// the Cache-Status says.
    pub fn outcome(&self) -> Outcome {
        if self.failed {
            Outcome::Error
        } else {
            self.status.outcome()
        }
    }
}

/// What the phases share about one request, computed once.
pub struct RequestCtx<'a> {
    pub shared: &'a Shared,
    pub runtime: &'a Arc<Runtime>,
    pub conn: ConnInfo,
    /// The request's own directives (RFC 9111 §5.2.1; `Pragma`, §5.4).
    pub req_cc: CacheControl,
    /// Index of the matching rule in `config.rules`.
    pub rule: Option<usize>,
    /// The content coding negotiated from `Accept-Encoding` (RFC 9110
    /// §12.5.3); `None` is identity or compression off.
    pub coding: Option<Coding>,
    /// When the request was routed, in milliseconds since the epoch.
    pub now: Millis,
    /// The request fields noted by validation.
    pub present: Present,
}

// === impl RequestCtx ===

impl RequestCtx<'_> {
    /// The response for `req` from a stored variant, in the negotiated
    /// coding when one is stored.
    pub fn respond<B>(&self, req: &Request<B>, variant: &Variant) -> Response<ProxyBody> {
        stored::from_stored(
            variant,
            req.method(),
            req.headers(),
            self.present,
            stored::stored_coding(
                variant,
                self.coding,
                self.runtime.config.compression.as_ref(),
                req.headers(),
            ),
            self.coding,
            self.now,
        )
    }

    /// A hit: counted per tier and rule, answered from stored bytes.
    fn hit<B>(&self, req: &Request<B>, hit: &Hit) -> Answered {
        if hit.ttl > 0 {
            // Fresh hits only, as `outcome="hit"` counts them: a stale copy
            // served under stale-while-revalidate is `outcome="stale"`,
            // like a soft-purged one.
            self.shared.metrics.hit(hit.tier.as_str());
        }
        self.shared.cache.sample_hit(&hit.object);
        self.count_hit(req, &hit.variant);
        Answered::new(
            self.respond(req, &hit.variant),
            CacheStatus::hit(hit.tier, hit.ttl),
        )
    }
}

impl Shared {
    pub fn new(config: Config, metrics: Metrics, alerts: Alerts) -> Arc<Shared> {
        let activity = Activity::new();
        alerts.attach(activity.clone());
        let upstreams = Upstreams::new(&config.upstream, None, metrics.clone(), alerts.clone());
        upstreams.start_health_checks();
        let cache = Cache::new(&config.cache, metrics.clone(), alerts.clone());
        cache.set_track_hits(tracks_hits(&config));
        let rule_counters = metrics.rule_counters(config.rules.labels());
        let rate_limits =
            RateLimits::new(&config.rate_limits, None, cache.redis().cloned(), &metrics);
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime {
                config: Arc::new(config),
                upstreams,
                rule_counters,
                rate_limits,
            }),
            metrics,
            cache,
            activity,
            alerts,
            warming: Arc::default(),
        })
    }

    /// Applies a new configuration: rules, upstreams and their health
    /// settings, compression and cache policies change for the next request;
    /// cached entries and in-flight requests are kept. Restart-only
    /// settings are the caller's to warn about (`server::Reloader`).
    pub fn reload(&self, config: Config) {
        let current = self.runtime.load_full();
        let upstreams = Upstreams::new(
            &config.upstream,
            Some(&current.upstreams),
            self.metrics.clone(),
            self.alerts.clone(),
        );
        self.alerts.reconfigure(&config.alerts);
        upstreams.start_health_checks();
        self.cache.set_track_hits(tracks_hits(&config));
        let rule_counters = self.metrics.rule_counters(config.rules.labels());
        let rate_limits = RateLimits::new(
            &config.rate_limits,
            current.rate_limits.as_deref(),
            self.cache.redis().cloned(),
            &self.metrics,
        );
        self.runtime.store(Arc::new(Runtime {
            config: Arc::new(config),
            upstreams,
            rule_counters,
            rate_limits,
        }));
        current.upstreams.stop_health_checks();
    }

    /// Handles one client request end to end.
    ///
    /// This future lives in every connection (hyper keeps one slot of its
    /// size per connection, idle or not), so everything past a memory hit
    /// (the miss, the pass, Redis, shared rate limits) is boxed where it
    /// starts: an idle keep-alive connection stays within SPEC §10's
    /// 16 KiB, and a memory hit allocates nothing for it.
    ///
    /// Written as a function returning an `async` block, not an `async fn`:
    /// an `async fn` keeps each argument twice in its future (as passed,
    /// and moved into the body), which here is the request (264 bytes) and
    /// the connection, in a future hyper moves once per request.
    #[allow(clippy::manual_async_fn)]
    pub fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + '_ {
        async move {
            // Counts and logs the request as `499` if its client leaves
            // before the answer (hyper then drops this future). It holds
            // the start time and the connection for the whole request.
            let mut abandoned = access::Abandoned {
                shared: self,
                started: Instant::now(),
                method: None,
                conn,
                access: None,
            };
            let http10 = req.version() == http::Version::HTTP_10;
            let http1 = req.version() < http::Version::HTTP_2;
            // A request body that may still be arriving when Strata answers
            // with an error of its own (see `refused` below).
            let with_body = http1 && !http_body::Body::is_end_stream(req.body());
            let runtime = self.runtime.load_full();
            let conn = &mut abandoned.conn;
            conn.client_ip = runtime
                .config
                .server
                .trusted_proxies
                .client_ip(conn.peer.ip(), req.headers());
            let conn = *conn;
            abandoned.method = Some(MethodClass::of(req.method()));
            abandoned.access = access::Pending::capture(&req, &runtime.config.log);
            let checked = match validate::validate(&mut req, &runtime.config.server) {
                // Rare: boxed, so the request future keeps its size.
                Ok(present) if validate::declared_empty_but_open(&req) => {
                    let idle = runtime.config.upstream.body_idle_timeout;
                    let ended = Box::pin(validate::empty_body_end(&mut req, idle)).await;
                    ended.map(|()| present)
                }
                checked => checked,
            };
            let answered = match checked {
                Err(e) => Answered::error(&e, CacheStatus::fwd(Fwd::Bypass)),
                // No limits configured: one `Option` check. With limits,
                // their future (the answer's and the arrival's) is boxed,
                // so the request future hyper moves keeps its size.
                Ok(present) => match &runtime.rate_limits {
                    Some(limits) => {
                        Box::pin(self.limited(limits, &runtime, req, conn, present)).await
                    }
                    None => self.answer(&runtime, req, conn, present).await,
                },
            };
            let outcome = answered.outcome();
            // An error of Strata's own (a refused connect's `502`, a
            // `429`) to a request with a body may come before the body
            // was read; hyper then closes the connection, and said so
            // nowhere: a client that sent the body in a second write got a
            // broken pipe on its next request (RFC 9112 §9.6).
            let unread = with_body && answered.failed;
            let Answered {
                mut response,
                status,
                close: refused,
                ..
            } = answered;
            let refused = refused || unread;
            let code = response.status().as_u16();
            // The client's protocol decides the status line, never the
            // upstream's (an HTTP/1.0 upstream must not downgrade it);
            // `Via` names the protocol the response was received with
            // (RFC 9110 §7.6.3; 1.1 for what the cache answered).
            let received = std::mem::take(response.version_mut());
            // A sticky cookie is added only now, after anything was stored,
            // and only to responses that came from an upstream.
            let sticky = response.extensions_mut().remove::<SetSticky>();
            // HTTP/1.0 has no chunked coding: a body of unknown length ends
            // only by closing, and hyper still told a keep-alive client
            // `Connection: keep-alive` before closing (RFC 9112 §9.3).
            let close = http10
                && !http_body::Body::is_end_stream(response.body())
                && !response.headers().contains_key(header::CONTENT_LENGTH);
            if close {
                // As a 1.0 response without `keep-alive`, hyper closes
                // the connection (as 1.1 it appended `keep-alive`).
                *response.version_mut() = http::Version::HTTP_10;
            }
            if close || (refused && http1) {
                // hyper reads no further request after `Connection: close`.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            let h = response.headers_mut();
            // RFC 9211 §2: an upstream cache's members (a shield, a CDN,
            // another Strata) are kept, this cache's added last.
            match h.entry(cache_status::CACHE_STATUS) {
                http::header::Entry::Vacant(e) => {
                    e.insert(status.to_header());
                }
                http::header::Entry::Occupied(mut e) => {
                    let chain = cache_status::chain(e.iter(), &status.to_header());
                    e.insert(chain);
                }
            }
            h.append(header::VIA, headers::via_value(received));
            if let Some(SetSticky(cookie)) = sticky {
                h.append(header::SET_COOKIE, cookie);
            }
            let elapsed = abandoned.started.elapsed();
            let method = abandoned.answered();
            self.metrics.request(outcome, code, elapsed);
            self.metrics.request_class(method, code);
            if let Some(bytes) = access::body_bytes(&response) {
                self.metrics.response_bytes(outcome, bytes);
            }
            if let Some(access) = &abandoned.access {
                access.emit(conn, &response, outcome, &status, elapsed);
            }
            response
        }
    }
}

impl Shared {
    /// Route → lookup → hit, refresh, fetch or pass; `present` says which
    /// fields `req` has (from [`validate::validate`]).
    /// A function returning an `async` block for the reason
    /// [`Shared::handle`] is.
    #[allow(clippy::manual_async_fn)]
    fn answer<'a>(
        &'a self,
        runtime: &'a Arc<Runtime>,
        req: Request<Incoming>,
        conn: ConnInfo,
        present: Present,
    ) -> impl Future<Output = Answered> + 'a {
        async move {
            let route = match lookup::route(self, runtime, &req, conn, present) {
                Ok(route) => route,
                // RFC 9111 §5.2.1.7: nothing is stored for a request the
                // cache does not handle, so `only-if-cached` gets its 504.
                Err(pass)
                    if pass.fwd == Fwd::Bypass
                        && lookup::request_directives(req.headers(), present).only_if_cached =>
                {
                    return Answered::error(&ProxyError::NotCached, CacheStatus::OnlyIfCached);
                }
                Err(pass) => {
                    return Box::pin(forward::pass(self, runtime, req, conn, pass, present)).await
                }
            };
            let ctx = RequestCtx {
                shared: self,
                runtime,
                conn,
                req_cc: lookup::request_directives(req.headers(), present),
                rule: route.rule,
                coding: runtime.config.compression.as_ref().and_then(|p| {
                    // Without the field, identity (RFC 9110 §12.5.3: a
                    // cache picks no coding the client did not ask for).
                    if !present.has(Field::AcceptEncoding) {
                        return None;
                    }
                    p.negotiate(req.headers().get_all(header::ACCEPT_ENCODING).iter())
                }),
                now: now_millis(),
                present,
            };
            match lookup::lookup(&ctx, &req, &route).await {
                Lookup::Hit(hit) => ctx.hit(&req, &hit),
                Lookup::HitAndRefresh(hit) => {
                    fetch::refresh(&ctx, &req, &hit);
                    ctx.hit(&req, &hit)
                }
                Lookup::SoftPurged(hit) => {
                    fetch::refresh(&ctx, &req, &hit);
                    ctx.count_hit(&req, &hit.variant);
                    let status = CacheStatus::fwd(Fwd::Stale).map(|f| {
                        f.stale = Some(ServedStale::SoftPurge);
                        f.ttl = Some(hit.ttl);
                    });
                    Answered::new(ctx.respond(&req, &hit.variant), status)
                }
                Lookup::Fetch(miss) => Box::pin(fetch::fetch(&ctx, req, miss)).await,
                Lookup::OnlyIfCached => {
                    Answered::error(&ProxyError::NotCached, CacheStatus::OnlyIfCached)
                }
            }
        }
    }
}

/// Whether hits are sampled into the fleet's popularity set: only for
/// `[warming] redis_hot` (every instance of the fleet should carry it).
fn tracks_hits(config: &Config) -> bool {
    config.warming.as_ref().is_some_and(|w| w.redis_hot > 0)
}

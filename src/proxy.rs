//! The request pipeline, as phases: **validate** → **route** (cacheable?
//! rule, key) → **lookup** → one `match` on [`Lookup`] → **finish**
//! (`Cache-Status`, `Via`, metrics, access log). Every response passes
//! through [`Shared::handle`].
//!
//! - `proxy/lookup.rs`: the hit path — route, memory then Redis, Vary,
//!   freshness → [`Lookup`].
//! - `proxy/stored.rs`: answering from a stored variant (304/412, 206/416,
//!   HEAD, `Age`).
//! - `proxy/fetch.rs`: the miss path — collapsed forwarding, the upstream
//!   fetch and its one classification, stale-if-error, the background
//!   refresh of stale-while-revalidate.
//! - `proxy/admit.rs`: streaming a miss to the client while storing it.
//! - `proxy/forward.rs`: pass-through (other methods, uncacheable URLs,
//!   upgrades) and sending any request upstream.
//! - `proxy/target.rs`: the one normalised request path (SPEC §10).
//! - `proxy/headers.rs`: hop-by-hop stripping and forwarding fields.
//! - `proxy/cache_status.rs`: RFC 9211 `Cache-Status` and the metrics
//!   outcome derived from it.
//! - `proxy/error.rs`: the one place errors become 400/502/503/504.
//! - `proxy/body.rs`: the response body type (hits are `Full` bytes).
//! - `proxy/access.rs`: the access log (one event per request).

pub mod access;
pub mod admit;
pub mod body;
pub mod cache_status;
pub mod error;
pub mod fetch;
pub mod forward;
pub mod headers;
pub mod lookup;
pub mod stored;
pub mod target;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header;
use http::{Method, Request, Response, Version};
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
}

impl Answered {
    pub fn new(response: Response<ProxyBody>, status: CacheStatus) -> Answered {
        Answered {
            response,
            status,
            failed: false,
        }
    }

    pub fn error(e: &ProxyError, status: CacheStatus) -> Answered {
        Answered {
            response: e.into_response(),
            status,
            failed: true,
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
}

// === impl RequestCtx ===

impl RequestCtx<'_> {
    /// The response for `req` from a stored variant, in the negotiated
    /// coding when one is stored.
    pub fn respond<B>(&self, req: &Request<B>, variant: &Variant) -> Response<ProxyBody> {
        stored::from_stored(variant, req.method(), req.headers(), self.coding, self.now)
    }

    /// A hit: counted per tier and rule, answered from stored bytes.
    fn hit<B>(&self, req: &Request<B>, hit: &Hit) -> Answered {
        self.shared.metrics.hit(hit.tier.as_str());
        self.shared.cache.sample_hit(&hit.object);
        if let Some(i) = self.rule {
            self.runtime.rule_counters.hit(i);
        }
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
        let rule_counters = metrics.rule_counters(config.rules.iter().map(|r| r.pattern()));
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
    /// cached entries and in-flight requests are kept.
    pub fn reload(&self, config: Config) {
        let current = self.runtime.load_full();
        let old = &current.config;
        if old.server.listen != config.server.listen
            || old.admin.listen != config.admin.listen
            || old.server.tls.as_ref().map(|t| t.listen)
                != config.server.tls.as_ref().map(|t| t.listen)
        {
            tracing::warn!("listener addresses changed in the new config: they take effect only after a restart");
        }
        let upstreams = Upstreams::new(
            &config.upstream,
            Some(&current.upstreams),
            self.metrics.clone(),
            self.alerts.clone(),
        );
        self.alerts.reconfigure(&config.alerts);
        upstreams.start_health_checks();
        self.cache.set_track_hits(tracks_hits(&config));
        let rule_counters = self
            .metrics
            .rule_counters(config.rules.iter().map(|r| r.pattern()));
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
    }

    /// Handles one client request end to end.
    ///
    /// This future lives in every connection (hyper keeps one slot of its
    /// size per connection, idle or not), so everything past a memory hit
    /// (the miss, the pass, Redis, shared rate limits) is boxed where it
    /// starts: an idle keep-alive connection stays within SPEC §10's
    /// 16 KiB, and a memory hit allocates nothing for it.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        mut conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let runtime = self.runtime.load_full();
        conn.client_ip = runtime
            .config
            .server
            .trusted_proxies
            .client_ip(conn.peer.ip(), req.headers());
        let method = MethodClass::of(req.method());
        let access = access::Pending::capture(&req, &runtime.config.log);
        let answered = match validate(&mut req) {
            Err(e) => Answered::error(&e, CacheStatus::fwd(Fwd::Bypass)),
            Ok(()) => 'serve: {
                // No limits configured: one `Option` check.
                if let Some(limits) = &runtime.rate_limits {
                    if let Err(over) = Box::pin(limits.on_arrival(&req, conn.client_ip)).await {
                        let e = ProxyError::RateLimited(over);
                        break 'serve Answered::error(&e, CacheStatus::fwd(Fwd::Bypass));
                    }
                }
                self.answer(&runtime, req, conn).await
            }
        };
        let outcome = answered.outcome();
        let Answered {
            mut response,
            status,
            ..
        } = answered;
        let code = response.status().as_u16();
        // The client's protocol decides the status line, never the
        // upstream's (an HTTP/1.0 upstream must not downgrade it).
        *response.version_mut() = Version::default();
        // A sticky cookie is added only now, after anything was stored,
        // and only to responses that came from an upstream.
        let sticky = response.extensions_mut().remove::<SetSticky>();
        let h = response.headers_mut();
        h.insert(HeaderName::CACHE_STATUS.clone(), status.to_header());
        h.append(header::VIA, headers::via_value(Version::HTTP_11));
        if let Some(SetSticky(cookie)) = sticky {
            h.append(header::SET_COOKIE, cookie);
        }
        let elapsed = started.elapsed();
        self.metrics.request(outcome, code, elapsed);
        self.metrics.request_class(method, code);
        if let Some(bytes) = access::body_bytes(&response) {
            self.metrics.response_bytes(outcome, bytes);
        }
        if let Some(access) = access {
            access.emit(conn, &response, outcome, &status, elapsed);
        }
        response
    }
}

impl Shared {
    /// Route → lookup → hit, refresh, fetch or pass.
    async fn answer(
        &self,
        runtime: &Arc<Runtime>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Answered {
        let route = match lookup::route(self, runtime, &req, conn) {
            Ok(route) => route,
            Err(pass) => return Box::pin(forward::pass(self, runtime, req, conn, pass)).await,
        };
        let ctx =
            RequestCtx {
                shared: self,
                runtime,
                conn,
                req_cc: lookup::request_directives(req.headers()),
                rule: route.rule,
                coding: runtime.config.compression.as_ref().and_then(|p| {
                    p.negotiate(req.headers().get_all(header::ACCEPT_ENCODING).iter())
                }),
                now: now_millis(),
            };
        match lookup::lookup(&ctx, &req, &route).await {
            Lookup::Hit(hit) => ctx.hit(&req, &hit),
            Lookup::HitAndRefresh(hit) => {
                fetch::refresh(&ctx, &req, &hit);
                ctx.hit(&req, &hit)
            }
            Lookup::SoftPurged(hit) => {
                fetch::refresh(&ctx, &req, &hit);
                let status = CacheStatus::fwd(Fwd::Stale).map(|f| {
                    f.stale = Some(ServedStale::SoftPurge);
                    f.ttl = Some(hit.ttl);
                });
                Answered::new(ctx.respond(&req, &hit.variant), status)
            }
            Lookup::Fetch(miss) => Box::pin(fetch::fetch(&ctx, req, miss)).await,
            Lookup::OnlyIfCached => {
                Answered::error(&ProxyError::NotCached, CacheStatus::fwd(Fwd::Request))
            }
        }
    }
}

/// Whether hits are sampled into the fleet's popularity set: only for
/// `[warming] redis_hot` (every instance of the fleet should carry it).
fn tracks_hits(config: &Config) -> bool {
    config.warming.as_ref().is_some_and(|w| w.redis_hot > 0)
}

/// Header names Strata adds.
pub struct HeaderName;

impl HeaderName {
    pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");
}

/// Rejects requests that must never reach an upstream (RFC 9112 §3.2,
/// SPEC §10), and replaces the request's path by its normalised form
/// ([`target::normalize`]) so every later phase reads the same one.
fn validate(req: &mut Request<Incoming>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    match req.version() {
        Version::HTTP_11 if host.is_none() && req.uri().authority().is_none() => {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        Version::HTTP_2 if host.is_none() && req.uri().authority().is_none() => {
            return Err(ProxyError::BadRequest("missing :authority"));
        }
        _ => {}
    }
    if let Some(host) = host {
        if host.to_str().map_or(true, |h| !valid_host(h)) {
            return Err(ProxyError::BadRequest("invalid Host header"));
        }
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    if req.method() == Method::TRACE {
        // TRACE echoes the request, credentials included, back to
        // whoever can make a client send it (cross-site tracing).
        return Err(ProxyError::MethodNotAllowed);
    }
    if req.uri().path_and_query().is_none() && req.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest("invalid request target"));
    }
    if req.headers().contains_key(header::TRANSFER_ENCODING) {
        if req.headers().contains_key(header::CONTENT_LENGTH) {
            return Err(ProxyError::BadRequest(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        transfer_codings(req.headers())?;
    }
    match target::normalize(req.uri()) {
        Ok(None) => {}
        Ok(Some(normal)) => *req.uri_mut() = normal,
        Err(e) => return Err(ProxyError::BadRequest(e.reason())),
    }
    Ok(())
}

/// A request's `Transfer-Encoding` (all its lines) must be exactly one
/// `chunked`: hyper has already refused one whose last coding is not
/// `chunked`, and it decodes only that one, so any coding before it
/// (`gzip, chunked`) would be lost on the way upstream — `501`, as RFC 9112
/// §6.1 asks for a coding the server does not understand (and as nginx
/// answers) — and `chunked` applied twice is broken framing (§7.1): `400`.
fn transfer_codings(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !coding.is_empty() {
                return Err(ProxyError::NotImplemented("unsupported transfer coding"));
            }
        }
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest("chunked applied more than once"));
    }
    Ok(())
}

/// RFC 9110 §7.2 `Host = uri-host [ ":" port ]`, checked without
/// allocating: a reg-name, IPv4 or bracketed IPv6, and digits after ':'.
/// One table lookup per byte (it runs on every request).
fn valid_host(h: &str) -> bool {
    let h = h.as_bytes();
    let (host, port) = match h.iter().rposition(|&b| b == b':') {
        Some(i) if !h[i..].contains(&b']') => (&h[..i], Some(&h[i + 1..])),
        _ => (h, None),
    };
    let host_ok = match host.strip_prefix(b"[") {
        Some(inner) => inner.strip_suffix(b"]").is_some_and(|ip| {
            !ip.is_empty()
                && ip
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }),
        None => !host.is_empty() && host.iter().all(|&b| REG_NAME[usize::from(b)]),
    };
    host_ok && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// The bytes of an RFC 3986 §3.2.2 reg-name (unreserved, sub-delims, and
/// `%` of pct-encoded), as a table indexed by byte.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// The authority the client asked for: the URI's (absolute-form, HTTP/2)
/// or else the Host header. Borrowed, so the hit path does not allocate.
/// Only for a request that passed [`validate`], which checked the Host
/// header's syntax once (not again here: it runs on every hit).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            debug_assert!(valid_host(host), "request_host before validate");
            Some(host)
        }
    }
}

/// [`request_host`] as an owned `Authority` (for invalidation).
pub fn request_authority<B>(req: &Request<B>) -> Option<http::uri::Authority> {
    request_host(req).and_then(|h| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:443",
            "[::1]",
            "a_b",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "", "a b", "a/b", "u@h", "h:port", "h:123456", "[::1", "h?x", ":80",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}

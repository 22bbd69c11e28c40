//! The miss path: collapsed forwarding (one leader per URL goes upstream,
//! followers wait for its stored result), the upstream request for the
//! cache (conditional when a stored response is stale), one
//! classification of the upstream's answer ([`Fetched`]) shared by the
//! foreground fetch and the background refresh (stale-while-revalidate),
//! stale-if-error, and streaming a miss to the client while it is stored.

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::admit::{self, Plan};
use super::body::{IdleTimeout, ProxyBody};
use super::cache_status::{CacheStatus, ServedStale};
use super::error::ProxyError;
use super::lookup::{Hit, Miss, Stale};
use super::{forward, headers, Answered, ConnInfo, RequestCtx, Runtime};
use crate::cache::collapse::{Flight, Locked, ReadLock, WriteLock};
use crate::cache::directives::CacheControl;
use crate::cache::entry::{self, Object, Variant};
use crate::cache::freshness::{self, now_millis, Heuristic, Millis, NotStorable};
use crate::cache::key::CacheKey;
use crate::cache::{tags, Cache};
use crate::compression::{self, Coding, CompressionPolicy};
use crate::rules::{lifetime, Lifetime, Rule};
use crate::upstream::client::empty_body;

/// Request fields Strata removes before a fetch it may store: the cache
/// fetches whole, unconditional representations (or adds its own
/// validators) and answers the client's conditions and ranges itself.
const CLIENT_CONDITIONALS: [header::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// RFC 9213 field addressed to Strata alone: obeyed, never passed on.
pub const STRATA_CACHE_CONTROL: header::HeaderName =
    header::HeaderName::from_static("strata-cache-control");

/// An upstream body behind the idle timeout.
type UpstreamBody = IdleTimeout<crate::upstream::UpstreamBody>;

/// The upstream's answer to a fetch for the cache, classified once.
enum Fetched {
    /// The exchange failed.
    Failed(ProxyError),
    /// 5xx while a stale copy may stand in (the response is dropped).
    ServerError(StatusCode),
    /// 304 to a conditional fetch: the stored variant, refreshed and
    /// admitted, and the object now holding it.
    NotModified(Arc<Object>, Arc<Variant>),
    /// A response to store while it streams.
    Storable(Box<Plan>, http::response::Parts, UpstreamBody),
    /// A full response that must not be stored.
    Uncacheable(NotStorable, http::response::Parts, UpstreamBody),
}

/// What a fetch for the cache needs, owned so that a background refresh
/// can carry it past the request.
struct Exchange {
    runtime: Arc<Runtime>,
    cache: Cache,
    conn: ConnInfo,
    rule: Option<usize>,
    req_cc: CacheControl,
}

// === impl Exchange ===

impl Exchange {
    fn new(ctx: &RequestCtx<'_>) -> Exchange {
        Exchange {
            runtime: ctx.runtime.clone(),
            cache: ctx.shared.cache.clone(),
            conn: ctx.conn,
            rule: ctx.rule,
            req_cc: ctx.req_cc.clone(),
        }
    }

    /// The rule for a response to `parts` with `headers`: from the
    /// request's rule on, the first whose `content_type` fits too.
    fn rule(&self, parts: &Parts, headers: &HeaderMap) -> Option<&Rule> {
        self.runtime.config.rules.for_response(
            self.rule?,
            parts.uri.path(),
            &parts.method,
            headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        )
    }

    /// The freshness policy of a response with final directives `cc`,
    /// with the rule's TTL keys applied.
    fn policy(
        &self,
        parts: &Parts,
        status: StatusCode,
        headers: &HeaderMap,
        cc: &CacheControl,
        response_time: Millis,
    ) -> freshness::Policy {
        let mut policy = freshness::policy(
            status,
            headers,
            cc,
            response_time,
            self.heuristic(),
            self.grace(),
        );
        if let Some(rule) = self.rule(parts, headers) {
            let explicit = lifetime::explicit_lifetime(cc, headers);
            rule.lifetimes.adjust(&mut policy, status, cc, explicit);
        }
        policy
    }

    fn heuristic(&self) -> Heuristic {
        let c = &self.runtime.config.cache;
        Heuristic {
            fraction: c.heuristic_fraction,
            max_secs: c.max_heuristic_lifetime.as_secs(),
        }
    }

    /// The origin's directives to Strata: the first valid targeted field
    /// (RFC 9213), else Cache-Control. A rule's Cache-Control, where it
    /// applies, replaces them (see `shape`).
    fn directives(&self, headers: &HeaderMap) -> CacheControl {
        CacheControl::for_cache(headers, &self.runtime.config.cache.targeted_cache_control)
    }

    /// `[cache] grace` in seconds.
    fn grace(&self) -> u64 {
        self.runtime.config.cache.grace.as_secs()
    }

    /// The upstream request for a fetch Strata may store: a GET (HEAD is
    /// converted), the client's conditions and range removed, and the
    /// stored validators added when revalidating.
    fn upstream_request(
        &self,
        parts: &Parts,
        stale: Option<&Variant>,
    ) -> Request<crate::upstream::ReqBody> {
        let mut up = Request::new(empty_body());
        *up.method_mut() = Method::GET;
        *up.uri_mut() = parts.uri.clone();
        *up.version_mut() = parts.version;
        let mut h = parts.headers.clone();
        for name in &CLIENT_CONDITIONALS {
            h.remove(name);
        }
        if let Some(v) = stale {
            if let Some(etag) = v.etag() {
                h.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = v.last_modified() {
                h.insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
        *up.headers_mut() = h;
        forward::upstream_request(up, self.conn, &self.runtime.config.server, false)
    }

    /// Sends the fetch and classifies the answer. `stale` is the stored
    /// variant being validated; `stale_on_5xx` says a 5xx should give way
    /// to it.
    async fn fetch(
        &self,
        parts: &Parts,
        key: &CacheKey,
        object: Option<&Arc<Object>>,
        stale: Option<&Arc<Variant>>,
        stale_on_5xx: bool,
    ) -> Fetched {
        let upstream = self.upstream_request(parts, stale.map(|v| &**v));
        let request_time = now_millis();
        let answer = match forward::send(&self.runtime, upstream).await {
            Ok(a) => a,
            Err(e) => return Fetched::Failed(e),
        };
        let response_time = now_millis();
        let status = answer.response.status();
        if let (StatusCode::NOT_MODIFIED, Some(old)) = (status, stale) {
            let v = Arc::new(self.freshen(
                parts,
                old,
                answer.response.headers(),
                request_time,
                response_time,
            ));
            let object = Arc::new(match object {
                Some(o) => o.with_variant(v.clone()),
                None => Object {
                    key: key.clone(),
                    variants: vec![v.clone()],
                },
            });
            let now = CacheControl::from_headers(answer.response.headers());
            if now.private || now.no_store {
                // The origin no longer lets it be shared (SPEC §10).
                self.cache.remove(key);
            } else {
                self.cache.admit(object.clone());
            }
            return Fetched::NotModified(object, v);
        }
        if stale_on_5xx && stale.is_some() && status.is_server_error() {
            return Fetched::ServerError(status);
        }
        let (mut rparts, body) = answer.response.into_parts();
        let body = IdleTimeout::new(body, self.runtime.config.upstream.body_idle_timeout);
        let entry_tags = normalize_response(&mut rparts.headers);
        let shaped = shape(
            self.rule(parts, &rparts.headers),
            &self.runtime.config.cache.targeted_cache_control,
            status,
            &parts.headers,
            &self.req_cc,
            &mut rparts.headers,
        );
        let cc = match shaped {
            Ok(cc) => cc,
            Err(reason) => return Fetched::Uncacheable(reason, rparts, body),
        };
        let max = self.runtime.config.cache.max_object_size;
        if headers::content_length(&rparts.headers).is_some_and(|len| len > max) {
            return Fetched::Uncacheable(NotStorable::TooLarge, rparts, body);
        }
        let times = freshness::times(&rparts.headers, request_time, response_time);
        let policy = self.policy(parts, status, &rparts.headers, &cc, response_time);
        let names = entry::vary_names(&rparts.headers);
        let plan = Plan {
            key: key.clone(),
            base: object.cloned(),
            vary: entry::vary_key(&parts.headers, &names),
            status,
            headers: rparts.headers.clone(),
            times,
            policy,
            tags: entry_tags,
            max_size: max,
            compression: self.runtime.config.compression.clone(),
        };
        Fetched::Storable(Box::new(plan), rparts, body)
    }
}

// === the foreground fetch ===

/// A miss: the first request for the URL leads and goes upstream; the
/// others wait (bounded) for its result.
pub async fn fetch(ctx: &RequestCtx<'_>, req: Request<Incoming>, miss: Miss) -> Answered {
    match ctx.shared.cache.collapser().lock(miss.key.hash()) {
        Locked::Write(lock) => lead(ctx, req, miss, lock).await,
        Locked::Read(wait) => follow(ctx, req, miss, wait).await,
    }
}

/// A follower: answered from the leader's stored result (`collapsed`), or
/// released to go upstream alone.
async fn follow(
    ctx: &RequestCtx<'_>,
    req: Request<Incoming>,
    miss: Miss,
    wait: ReadLock,
) -> Answered {
    let limit = ctx.runtime.config.cache.collapse_timeout;
    if let Some(Flight::Stored(object)) = wait.wait(limit).await {
        if let Some(variant) = object.select(req.headers()) {
            ctx.shared.metrics.collapsed();
            let status = CacheStatus::fwd(miss.fwd).map(|f| {
                f.collapsed = true;
                f.ttl = Some(variant.ttl(ctx.now));
            });
            return Answered::new(ctx.respond(&req, variant), status);
        }
    }
    // Released, timed out, or another variant: go upstream alone.
    forward::pass(ctx.shared, ctx.runtime, req, ctx.conn, miss.fwd).await
}

/// The leader: fetch, then answer by what came back.
async fn lead(
    ctx: &RequestCtx<'_>,
    req: Request<Incoming>,
    miss: Miss,
    lock: WriteLock,
) -> Answered {
    let (parts, _) = req.into_parts();
    let exchange = Exchange::new(ctx);
    let stale_on_error = miss.stale.as_ref().is_some_and(|s| s.on_error.is_some());
    let fetched = exchange
        .fetch(
            &parts,
            &miss.key,
            miss.object.as_ref(),
            miss.stale.as_ref().map(|s| &s.variant),
            stale_on_error,
        )
        .await;
    let req = Request::from_parts(parts, ());
    match fetched {
        Fetched::Failed(e) => {
            drop(lock);
            match &miss.stale {
                Some(s) if s.on_error.is_some() => serve_stale(ctx, &req, &miss, s, None),
                _ => {
                    tracing::debug!(error = %e, "upstream failed");
                    Answered::error(&e, CacheStatus::fwd(miss.fwd))
                }
            }
        }
        Fetched::ServerError(status) => {
            drop(lock);
            match &miss.stale {
                Some(s) if s.on_error.is_some() => {
                    serve_stale(ctx, &req, &miss, s, Some(status.as_u16()))
                }
                _ => Answered::error(
                    &ProxyError::UpstreamBody {
                        server: "upstream".into(),
                    },
                    CacheStatus::fwd(miss.fwd),
                ),
            }
        }
        Fetched::NotModified(object, variant) => {
            lock.publish(Flight::Stored(object));
            let status = CacheStatus::fwd(miss.fwd).map(|f| {
                f.fwd_status = Some(304);
                f.ttl = Some(variant.ttl(now_millis()));
            });
            Answered::new(ctx.respond(&req, &variant), status)
        }
        Fetched::Uncacheable(reason, rparts, body) => {
            uncacheable(ctx, &req, &miss, lock, reason, rparts, body)
        }
        Fetched::Storable(plan, rparts, body) => {
            storable(ctx, &req, &miss, lock, *plan, rparts, body).await
        }
    }
}

/// The upstream failed or answered 5xx inside stale-if-error or grace:
/// serve the stale copy (`detail=` says which allowed it).
fn serve_stale(
    ctx: &RequestCtx<'_>,
    req: &Request<()>,
    miss: &Miss,
    s: &Stale,
    fwd_status: Option<u16>,
) -> Answered {
    let status = CacheStatus::fwd(miss.fwd).map(|f| {
        f.fwd_status = fwd_status;
        f.stale = Some(
            s.on_error
                .map_or(ServedStale::StaleIfError, ServedStale::from),
        );
        f.ttl = Some(s.variant.ttl(ctx.now));
    });
    Answered::new(ctx.respond(req, &s.variant), status)
}

/// A response that must not be stored streams through; the URL skips the
/// collapse lock for a while (hit-for-miss) unless the reason was this
/// request's own.
fn uncacheable(
    ctx: &RequestCtx<'_>,
    req: &Request<()>,
    miss: &Miss,
    lock: WriteLock,
    reason: NotStorable,
    rparts: http::response::Parts,
    body: UpstreamBody,
) -> Answered {
    tracing::debug!(key = %miss.key, reason = reason.as_str(), "not storable");
    let request_specific = matches!(reason, NotStorable::Authorization) || ctx.req_cc.no_store;
    if !request_specific {
        ctx.shared.cache.mark_pass(miss.key.hash());
        if miss.stale.is_some() {
            // What was stored no longer describes the resource.
            ctx.shared.cache.remove(&miss.key);
        }
    }
    drop(lock); // waiters go upstream at once, in parallel
    let compression = ctx.runtime.config.compression.as_ref();
    if client_validator_matches(req, &rparts, compression) {
        // The fetch dropped the client's If-None-Match; the validator it
        // holds (ours for an encoded response) still names this response.
        let resp = Response::from_parts(rparts, ProxyBody::empty());
        let resp = compress_stream(resp, compression, ctx.coding);
        let resp = super::stored::not_modified(resp.headers());
        return Answered::new(resp, CacheStatus::fwd(miss.fwd));
    }
    let mut resp = Response::from_parts(rparts, ProxyBody::Upstream(body));
    if req.method() == Method::HEAD {
        *resp.body_mut() = ProxyBody::empty();
    } else {
        resp = compress_stream(resp, ctx.runtime.config.compression.as_ref(), ctx.coding);
    }
    Answered::new(resp, CacheStatus::fwd(miss.fwd))
}

/// Whether the client's `If-None-Match` (its encoded ETags mapped back)
/// matches a 200's `ETag` by weak comparison (RFC 9110 §13.1.2).
fn client_validator_matches(
    req: &Request<()>,
    rparts: &http::response::Parts,
    compression: Option<&CompressionPolicy>,
) -> bool {
    if rparts.status != StatusCode::OK {
        return false;
    }
    let Some(inm) = req.headers().get(header::IF_NONE_MATCH) else {
        return false;
    };
    let mut h = HeaderMap::new();
    h.insert(header::IF_NONE_MATCH, inm.clone());
    if let Some(p) = compression {
        forward::unmap_etags(&mut h, p);
    }
    let etag = rparts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok());
    h.get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| super::stored::etag_list_matches(list, etag, false))
}

/// A storable response: admitted while it streams to the client; HEAD,
/// conditional and range requests are answered from the stored variant
/// once its body is in (bounded by `max_object_size`).
async fn storable(
    ctx: &RequestCtx<'_>,
    req: &Request<()>,
    miss: &Miss,
    lock: WriteLock,
    plan: Plan,
    mut rparts: http::response::Parts,
    body: UpstreamBody,
) -> Answered {
    let upstream_status = rparts.status;
    let status = CacheStatus::fwd(miss.fwd).map(|f| {
        f.stored = true;
        f.ttl = Some(freshness::ttl(
            &plan.policy,
            &plan.times,
            plan.times.response,
        ));
        if miss.stale.is_some() {
            f.fwd_status = Some(upstream_status.as_u16());
        }
    });
    let cache = ctx.shared.cache.clone();
    if req.method() == Method::HEAD {
        admit::spawn(cache, plan, Some(lock), body, None, None);
        return Answered::new(Response::from_parts(rparts, ProxyBody::empty()), status);
    }
    if CLIENT_CONDITIONALS
        .iter()
        .any(|h| req.headers().contains_key(h))
    {
        let (done_tx, done_rx) = oneshot::channel();
        admit::spawn(cache, plan, Some(lock), body, None, Some(done_tx));
        return match done_rx.await {
            Ok(Some(variant)) => Answered::new(ctx.respond(req, &variant), status),
            _ => Answered::error(
                &ProxyError::UpstreamBody {
                    server: served_by(&rparts.extensions),
                },
                CacheStatus::fwd(miss.fwd),
            ),
        };
    }
    let compression = ctx.runtime.config.compression.as_ref();
    let (tx, client_body) = admit::client_channel();
    admit::spawn(cache, plan, Some(lock), body, Some(tx), None);
    if compression.is_some_and(|p| would_compress(p, upstream_status, &rparts.headers)) {
        compression::merge_vary_accept_encoding(&mut rparts.headers);
    }
    let resp = Response::from_parts(rparts, client_body);
    Answered::new(compress_stream(resp, compression, ctx.coding), status)
}

/// The upstream server named by a response's extensions (for errors).
fn served_by(ext: &http::Extensions) -> String {
    ext.get::<crate::upstream::ServedBy>()
        .map_or_else(|| "upstream".to_string(), |s| s.0.to_string())
}

// === the background refresh ===

/// stale-while-revalidate, soft purge and refresh-ahead: one background
/// validation per URL; the stored copy keeps being served until it lands.
pub fn refresh<B>(ctx: &RequestCtx<'_>, req: &Request<B>, hit: &Hit) {
    let Some(lock) = ctx.shared.cache.collapser().try_lock(hit.object.key.hash()) else {
        return; // a refresh is already running
    };
    let mut exchange = Exchange::new(ctx);
    // The refresh is the cache's own request: the client's directives
    // (say, no-store) do not decide whether its result is stored.
    exchange.req_cc = CacheControl::default();
    let parts = request_parts(req);
    let object = hit.object.clone();
    let variant = hit.variant.clone();
    tokio::spawn(async move {
        let key = object.key.clone();
        match exchange
            .fetch(&parts, &key, Some(&object), Some(&variant), true)
            .await
        {
            Fetched::NotModified(object, _) => lock.publish(Flight::Stored(object)),
            Fetched::Storable(mut plan, _, body) => {
                // Same request fields as the stored variant.
                plan.vary = variant.vary.clone();
                admit::spawn(exchange.cache, *plan, Some(lock), body, None, None);
            }
            // What was soft-purged no longer describes the resource.
            Fetched::Uncacheable(..) if variant.soft_purged => exchange.cache.remove(&key),
            // Stays stale; the lock drops.
            Fetched::Failed(_) | Fetched::ServerError(_) | Fetched::Uncacheable(..) => {}
        }
    });
}

/// The request's method, URI, version and headers (for building
/// upstream requests after the original was consumed).
fn request_parts<B>(req: &Request<B>) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r.into_parts().0
}

// === response shaping ===

/// Compresses a streamed response with the request's negotiated `coding`
/// when Strata compresses it at all: an eligible type and at least
/// `min_size` (or of unknown length). Those, and only those, get
/// `Vary: Accept-Encoding`, whichever coding this client gets; any other
/// response keeps the origin's `Vary` byte for byte (SPEC §6).
pub fn compress_stream(
    resp: Response<ProxyBody>,
    policy: Option<&CompressionPolicy>,
    coding: Option<Coding>,
) -> Response<ProxyBody> {
    let Some(policy) = policy else { return resp };
    if !would_compress(policy, resp.status(), resp.headers()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    compression::merge_vary_accept_encoding(&mut parts.headers);
    let Some(coding) = coding else {
        return Response::from_parts(parts, body);
    };
    compression::mark_encoded(&mut parts.headers, coding, None);
    let level = policy.stream_level.for_coding(coding);
    let body = ProxyBody::boxed(compression::compress_body(coding, level, body));
    Response::from_parts(parts, body)
}

/// Whether Strata produces encoded representations of such a response:
/// an eligible status, type and coding, and a body of at least `min_size`
/// (unknown lengths are assumed large enough).
pub fn would_compress(policy: &CompressionPolicy, status: StatusCode, h: &HeaderMap) -> bool {
    policy.eligible(status, h) && policy.large_enough(headers::content_length(h))
}

/// Shapes upstream response headers the way the cache stores and serves
/// them: hop-by-hop fields out, surrogate tags taken out (and returned).
fn normalize_response(headers: &mut HeaderMap) -> Vec<String> {
    headers::strip_hop_by_hop(headers, false);
    tags::take(headers)
}

/// Applies `rule` to a response within SPEC §10 and decides whether it
/// may be stored: the response's directives after the rule, or why not.
///
/// What the origin made private (or the request, `Authorization`) stays
/// private whatever the rule says, and the client gets the origin's own
/// Cache-Control; a rule's Cache-Control and TTL keys apply to success
/// statuses only, others only when `status_ttl` names them.
fn shape(
    rule: Option<&Rule>,
    targeted: &[header::HeaderName],
    status: StatusCode,
    request: &HeaderMap,
    request_cc: &CacheControl,
    response: &mut HeaderMap,
) -> Result<CacheControl, NotStorable> {
    // The origin's directives to Strata: a targeted field (RFC 9213) if
    // valid, else Cache-Control. Strata's own field is never passed on.
    let origin = CacheControl::for_cache(response, targeted);
    response.remove(STRATA_CACHE_CONTROL);
    if let Some(reason) = lifetime::private(request, request_cc, response, &origin) {
        return Err(reason);
    }
    let mut cc = origin;
    if let Some((value, directives)) = rule
        .filter(|_| lifetime::rule_status(status))
        .and_then(|r| Some((r.cache_control()?, r.directives()?)))
    {
        response.insert(header::CACHE_CONTROL, value.clone());
        cc = directives.clone();
    }
    let verdict = freshness::storable(&Method::GET, request, request_cc, status, response, &cc);
    let given = rule.map_or(Lifetime::Origin, |r| {
        r.lifetimes
            .decide(status, lifetime::explicit_lifetime(&cc, response))
    });
    match (verdict, given) {
        (_, Lifetime::Never) => Err(NotStorable::Status),
        (Ok(()), _) => Ok(cc),
        // A rule's lifetime stands in for the freshness the response
        // lacks; never for what makes a response unstorable as such.
        (Err(NotStorable::Status | NotStorable::NoFreshness), Lifetime::Given(_))
            if !(status.is_informational()
                || status == StatusCode::PARTIAL_CONTENT
                || status == StatusCode::NOT_MODIFIED) =>
        {
            Ok(cc)
        }
        (Err(reason), _) => Err(reason),
    }
}

/// RFC 9111 §4.3.4: a 304 updates the stored headers (all but
/// Content-Length and the representation's framing) and restarts the
/// freshness clock. A rule's Cache-Control and TTL keys still apply, to
/// the stored status; a `Set-Cookie` on the 304 is the requester's, never
/// the shared copy's.
impl Exchange {
    fn freshen(
        &self,
        parts: &Parts,
        old: &Variant,
        update: &HeaderMap,
        request_time: Millis,
        response_time: Millis,
    ) -> Variant {
        let rule = self.rule(parts, &old.headers);
        // Owned values: the 304's are slices of the connection's read buffer.
        let mut update = entry::owned_headers(update);
        normalize_response(&mut update);
        let origin = self.directives(&update);
        let ruled = match rule
            .filter(|_| lifetime::rule_status(old.status) && !origin.private && !origin.no_store)
            .and_then(Rule::cache_control)
        {
            Some(value) => {
                update.insert(header::CACHE_CONTROL, value.clone());
                true
            }
            None => false,
        };
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::CONTENT_RANGE,
            header::SET_COOKIE,
        ] {
            update.remove(name);
        }
        let apply = |target: &mut HeaderMap, keep_etag: bool| {
            let mut last: Option<header::HeaderName> = None;
            for (name, value) in update.iter() {
                if keep_etag && name == header::ETAG {
                    continue;
                }
                if last.as_ref() != Some(name) {
                    target.remove(name);
                    last = Some(name.clone());
                }
                target.append(name.clone(), value.clone());
            }
            target.remove(header::AGE);
        };
        let mut v = old.clone();
        v.soft_purged = false;
        apply(&mut v.headers, false);
        let cc = if ruled {
            CacheControl::from_headers(&v.headers)
        } else {
            self.directives(&v.headers)
        };
        v.headers.remove(STRATA_CACHE_CONTROL);
        for e in &mut v.encoded {
            apply(&mut e.headers, true);
            e.headers.remove(STRATA_CACHE_CONTROL);
        }
        v.times = freshness::times(&update, request_time, response_time);
        v.policy = self.policy(parts, v.status, &v.headers, &cc, response_time);
        v
    }
}

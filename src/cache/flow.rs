//! The cache flow for GET and HEAD, in named stages:
//!
//! 1. **classify**: the key, the matching rule, the request's own
//!    directives; a rule that says `no-store` or a URL marked uncacheable
//!    bypasses the cache (no lookup, no waiting on anyone).
//! 2. **lookup**: memory (then Redis) → select the variant by `Vary` →
//!    decide reuse: fresh → hit; stale inside stale-while-revalidate → hit
//!    plus one background refresh; otherwise validate.
//! 3. **collapse**: one request per URL goes upstream (the leader); the
//!    others wait, bounded, and are answered from its stored result
//!    (`collapsed`) or released to go upstream in parallel.
//! 4. **fetch** (leader): a conditional request when a stored response can
//!    be validated; 304 refreshes the stored headers; 5xx or failure inside
//!    stale-if-error serves stale; a storable response streams to the
//!    client while it is stored; anything else streams through.

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::admission::{self, Plan};
use super::collapse::{Flight, Locked, WriteLock};
use super::directives::CacheControl;
use super::entry::{self, Object, Variant};
use super::freshness::{self, now_millis, Heuristic, Millis, NotStorable, Reuse};
use super::key::CacheKey;
use super::respond;
use super::tags;
use crate::compression::{self, Coding};
use crate::metrics::Outcome;
use crate::proxy::body::{IdleTimeout, ProxyBody};
use crate::proxy::cache_status::{CacheStatus, Fwd, Tier};
use crate::proxy::error::ProxyError;
use crate::proxy::{forward, headers, Answered, ConnInfo, Runtime, Shared};
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

/// A request's directives: Cache-Control, or `Pragma: no-cache` when it
/// has none (RFC 9111 §5.4).
fn request_directives(h: &HeaderMap) -> CacheControl {
    if h.contains_key(header::CACHE_CONTROL) {
        return CacheControl::from_headers(h);
    }
    let mut cc = CacheControl::default();
    if h.get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-cache"))
    {
        cc.no_cache = true;
    }
    cc
}

/// Everything the stages share about one request.
struct Ctx<'a> {
    shared: &'a Shared,
    runtime: &'a Arc<Runtime>,
    conn: ConnInfo,
    req_cc: CacheControl,
    rule: Option<usize>,
    now: Millis,
}

pub async fn serve(
    shared: &Shared,
    runtime: &Arc<Runtime>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Answered {
    let config = &runtime.config;
    // === classify ===
    if !req.body().is_end_stream() {
        // A GET with a body is not something a cache can key on.
        return forward::pass(shared, runtime, req, conn, Fwd::Bypass).await;
    }
    let Some(authority) = crate::proxy::request_host(&req) else {
        return forward::pass(shared, runtime, req, conn, Fwd::Bypass).await;
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let hash = CacheKey::hash_of(conn.https, authority, path);
    let rule = config.rules.find(req.uri().path());
    if rule.is_some_and(|(_, r)| r.directives().no_store) || shared.cache.is_pass(hash) {
        return forward::pass(shared, runtime, req, conn, Fwd::Bypass).await;
    }
    let ctx = Ctx {
        shared,
        runtime,
        conn,
        req_cc: request_directives(req.headers()),
        rule: rule.map(|(i, _)| i),
        now: now_millis(),
    };
    let cache = &shared.cache;

    // === lookup ===
    let found = cache.lookup(hash, conn.https, authority, path).await;
    let mut fwd = Fwd::Miss;
    let mut stale: Option<Stale> = None;
    let object = found.as_ref().map(|(o, _)| o.clone());
    if let Some((object, tier)) = &found {
        match object.select(req.headers()) {
            None => fwd = Fwd::VaryMiss,
            Some(variant) => {
                match freshness::reuse(&variant.policy, &variant.times, ctx.now, &ctx.req_cc) {
                    Reuse::Fresh { ttl } | Reuse::StaleAccepted { ttl } => {
                        return ctx.hit(&req, variant, *tier, ttl);
                    }
                    Reuse::StaleWhileRevalidate { ttl } => {
                        ctx.refresh_in_background(&req, object.clone(), variant.clone());
                        return ctx.hit(&req, variant, *tier, ttl);
                    }
                    Reuse::Validate { on_error, .. } => {
                        fwd = if ctx.req_cc.no_cache {
                            Fwd::Request
                        } else {
                            Fwd::Stale
                        };
                        stale = Some(Stale {
                            variant: variant.clone(),
                            serve_on_error: on_error,
                        });
                    }
                }
            }
        }
    }
    if ctx.req_cc.only_if_cached {
        // RFC 9111 §5.2.1.7
        return Answered::error(&ProxyError::NotCached, CacheStatus::fwd(Fwd::Request));
    }
    if let Some((i, _)) = rule {
        runtime.rule_counters.miss(i);
    }

    // === collapse ===
    let key = CacheKey::new(conn.https, authority, path);
    match cache.collapser().lock(hash) {
        Locked::Write(lock) => ctx.fetch(req, key, object, stale, lock, fwd).await,
        Locked::Read(wait) => {
            let limit = config.cache.collapse_timeout;
            if let Some(Flight::Stored(object)) = wait.wait(limit).await {
                if let Some(variant) = object.select(req.headers()) {
                    shared.metrics.collapsed();
                    let ttl = variant.policy.lifetime as i64
                        - freshness::current_age(&variant.times, ctx.now) as i64;
                    let mut status = CacheStatus::fwd(fwd).with_ttl(ttl);
                    status.collapsed = true;
                    return Answered {
                        response: ctx.respond(&req, variant),
                        outcome: Outcome::Miss,
                        status,
                    };
                }
            }
            // Released, timed out, or another variant: go upstream alone.
            forward::pass(shared, runtime, req, conn, fwd).await
        }
    }
}

/// A stored response that must be validated before reuse.
struct Stale {
    variant: Arc<Variant>,
    /// stale-if-error allows serving it when the upstream fails.
    serve_on_error: bool,
}

impl Ctx<'_> {
    /// The rule that matched this request, if any.
    fn rule(&self) -> Option<&crate::rules::Rule> {
        self.rule.and_then(|i| self.runtime.config.rules.get(i))
    }

    fn coding(&self, req: &HeaderMap, variant: &Variant) -> Option<Coding> {
        if variant.encoded.is_empty() {
            return None;
        }
        self.runtime
            .config
            .compression
            .as_ref()
            .and_then(|p| p.negotiate(req.get_all(header::ACCEPT_ENCODING).iter()))
    }

    fn respond<B>(&self, req: &Request<B>, variant: &Variant) -> Response<ProxyBody> {
        let coding = self.coding(req.headers(), variant);
        respond::from_stored(variant, req.method(), req.headers(), coding, self.now)
    }

    // === hit ===
    fn hit<B>(&self, req: &Request<B>, variant: &Variant, tier: Tier, ttl: i64) -> Answered {
        let metrics = &self.shared.metrics;
        metrics.hit(tier.as_str());
        if let Some(i) = self.rule {
            self.runtime.rule_counters.hit(i);
        }
        Answered {
            response: self.respond(req, variant),
            outcome: if ttl > 0 {
                Outcome::Hit
            } else {
                Outcome::Stale
            },
            status: CacheStatus::hit(tier).with_ttl(ttl),
        }
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
        forward::upstream_request(up, self.conn, false)
    }

    fn heuristic(&self) -> Heuristic {
        let c = &self.runtime.config.cache;
        Heuristic {
            fraction: c.heuristic_fraction,
            max_secs: c.max_heuristic_lifetime.as_secs(),
        }
    }

    // === fetch (leader) ===
    async fn fetch(
        &self,
        req: Request<Incoming>,
        key: CacheKey,
        object: Option<Arc<Object>>,
        stale: Option<Stale>,
        lock: WriteLock,
        fwd: Fwd,
    ) -> Answered {
        let (parts, _) = req.into_parts();
        let upstream = self.upstream_request(&parts, stale.as_ref().map(|s| &*s.variant));
        let req = Request::from_parts(parts, ());
        let request_time = now_millis();
        let answer = match forward::send(self.runtime, upstream).await {
            Ok(a) => a,
            Err(e) => {
                drop(lock);
                return match stale {
                    Some(s) if s.serve_on_error => self.serve_stale(&req, &s, fwd, None),
                    _ => {
                        tracing::debug!(error = %e, "upstream failed");
                        Answered::error(&e, CacheStatus::fwd(fwd))
                    }
                };
            }
        };
        let response_time = now_millis();
        let status = answer.response.status();

        if status == StatusCode::NOT_MODIFIED {
            if let Some(s) = &stale {
                let refreshed = self.freshen(
                    &key,
                    object.as_ref(),
                    &s.variant,
                    answer.response.headers(),
                    request_time,
                    response_time,
                );
                lock.publish(Flight::Stored(refreshed.0.clone()));
                let variant = refreshed.1;
                let mut cs = CacheStatus::fwd(fwd);
                cs.fwd_status = Some(304);
                let ttl = variant.policy.lifetime as i64
                    - freshness::current_age(&variant.times, now_millis()) as i64;
                return Answered {
                    response: self.respond(&req, &variant),
                    outcome: Outcome::Revalidated,
                    status: cs.with_ttl(ttl),
                };
            }
        }
        if let Some(s) = stale.as_ref().filter(|s| s.serve_on_error) {
            if status.is_server_error() {
                drop(lock);
                return self.serve_stale(&req, s, fwd, Some(status.as_u16()));
            }
        }

        // A full response: decide whether to store it.
        let (mut rparts, body) = answer.response.into_parts();
        let entry_tags = normalize_response(&mut rparts.headers, self.rule());
        let cc = CacheControl::from_headers(&rparts.headers);
        let max = self.runtime.config.cache.max_object_size;
        let verdict = freshness::storable(
            &Method::GET,
            req.headers(),
            &self.req_cc,
            status,
            &rparts.headers,
            &cc,
        )
        .and_then(|()| {
            let too_big = rparts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|len| len > max);
            if too_big {
                Err(NotStorable::TooLarge)
            } else {
                Ok(())
            }
        });
        let idle = self.runtime.config.upstream.body_idle_timeout;
        let body = IdleTimeout::new(body, idle);
        let compression = self.runtime.config.compression.clone();

        let verdict = match verdict {
            Ok(()) => Ok(()),
            Err(reason) => {
                tracing::debug!(key = %key, reason = reason.as_str(), "not storable");
                // Mark the URL so later requests skip the collapse lock,
                // unless the reason is this request's own.
                let request_specific =
                    matches!(reason, NotStorable::Authorization) || self.req_cc.no_store;
                if !request_specific {
                    self.shared.cache.mark_pass(key.hash());
                }
                if stale.is_some() && !request_specific {
                    // What was stored no longer describes the resource.
                    self.shared.cache.remove(&key);
                }
                Err(reason)
            }
        };
        if verdict.is_err() {
            drop(lock); // waiters go upstream at once, in parallel
            let mut resp = Response::from_parts(rparts, ProxyBody::Upstream(body));
            if req.method() == Method::HEAD {
                *resp.body_mut() = ProxyBody::empty();
            } else {
                resp = compress_stream(resp, compression.as_ref(), req.headers());
            }
            return Answered {
                response: resp,
                outcome: Outcome::Miss,
                status: CacheStatus::fwd(fwd),
            };
        }

        let times = freshness::times(&rparts.headers, request_time, response_time);
        let policy = freshness::policy(
            status,
            &rparts.headers,
            &cc,
            response_time,
            self.heuristic(),
        );
        let names = entry::vary_names(&rparts.headers);
        let vary = entry::vary_key(req.headers(), &names);
        let ttl = policy.lifetime as i64 - freshness::current_age(&times, response_time) as i64;
        let plan = Plan {
            key,
            base: object,
            vary,
            status,
            headers: rparts.headers.clone(),
            times,
            policy,
            tags: entry_tags,
            max_size: max,
            compression: compression.clone(),
        };
        let mut cs = CacheStatus::fwd(fwd).with_ttl(ttl);
        cs.stored = true;
        if stale.is_some() {
            cs.fwd_status = Some(status.as_u16());
        }
        let cache = self.shared.cache.clone();
        let wants_stored_answer = req.method() == Method::HEAD
            || CLIENT_CONDITIONALS
                .iter()
                .any(|h| req.headers().contains_key(h));
        if wants_stored_answer {
            // Conditions, ranges and HEAD are answered from the stored
            // variant once the body is in (bounded by max_object_size).
            if req.method() == Method::HEAD {
                admission::spawn(cache, plan, Some(lock), body, None, None);
                let resp = Response::from_parts(rparts, ProxyBody::empty());
                return Answered {
                    response: resp,
                    outcome: Outcome::Miss,
                    status: cs,
                };
            }
            let (done_tx, done_rx) = oneshot::channel();
            admission::spawn(cache, plan, Some(lock), body, None, Some(done_tx));
            return match done_rx.await {
                Ok(Some(variant)) => Answered {
                    response: self.respond(&req, &variant),
                    outcome: Outcome::Miss,
                    status: cs,
                },
                _ => Answered::error(
                    &ProxyError::BadFraming {
                        server: "upstream".into(),
                    },
                    CacheStatus::fwd(fwd),
                ),
            };
        }
        let (tx, client_body) = admission::client_channel();
        admission::spawn(cache, plan, Some(lock), body, Some(tx), None);
        if let Some(p) = &compression {
            if p.eligible(status, &rparts.headers) {
                compression::merge_vary_accept_encoding(&mut rparts.headers);
            }
        }
        let resp = Response::from_parts(rparts, client_body);
        Answered {
            response: compress_stream(resp, compression.as_ref(), req.headers()),
            outcome: Outcome::Miss,
            status: cs,
        }
    }

    /// The upstream failed or answered 5xx inside stale-if-error: serve
    /// the stale copy.
    fn serve_stale(
        &self,
        req: &Request<()>,
        s: &Stale,
        fwd: Fwd,
        fwd_status: Option<u16>,
    ) -> Answered {
        let mut cs = CacheStatus::fwd(fwd).with_detail("stale-if-error");
        cs.fwd_status = fwd_status;
        let ttl = s.variant.policy.lifetime as i64
            - freshness::current_age(&s.variant.times, self.now) as i64;
        Answered {
            response: self.respond(req, &s.variant),
            outcome: Outcome::Stale,
            status: cs.with_ttl(ttl),
        }
    }

    /// Applies a 304 to the stored variant and admits the result.
    fn freshen(
        &self,
        key: &CacheKey,
        object: Option<&Arc<Object>>,
        old: &Variant,
        update: &HeaderMap,
        request_time: Millis,
        response_time: Millis,
    ) -> (Arc<Object>, Arc<Variant>) {
        let v = Arc::new(freshen(
            old,
            update,
            self.rule(),
            self.heuristic(),
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
        self.shared.cache.admit(object.clone());
        (object, v)
    }

    /// stale-while-revalidate: one background validation per URL.
    fn refresh_in_background<B>(
        &self,
        req: &Request<B>,
        object: Arc<Object>,
        variant: Arc<Variant>,
    ) {
        let cache = self.shared.cache.clone();
        let Some(lock) = cache.collapser().try_lock(object.key.hash()) else {
            return; // a refresh is already running
        };
        let parts = request_parts(req);
        let upstream = self.upstream_request(&parts, Some(&variant));
        let runtime = self.runtime.clone();
        let rule = self.rule;
        let heuristic = self.heuristic();
        let vary = variant.vary.clone();
        tokio::spawn(async move {
            let request_time = now_millis();
            let Ok(answer) = forward::send(&runtime, upstream).await else {
                return; // stays stale; the lock drops
            };
            let response_time = now_millis();
            let status = answer.response.status();
            let (mut rparts, body) = answer.response.into_parts();
            if status == StatusCode::NOT_MODIFIED {
                let rule = rule.and_then(|i| runtime.config.rules.get(i));
                let v = freshen(
                    &variant,
                    &rparts.headers,
                    rule,
                    heuristic,
                    request_time,
                    response_time,
                );
                let obj = Arc::new(object.with_variant(Arc::new(v)));
                cache.admit(obj.clone());
                lock.publish(Flight::Stored(obj));
                return;
            }
            let rule = rule.and_then(|i| runtime.config.rules.get(i));
            let entry_tags = normalize_response(&mut rparts.headers, rule);
            let cc = CacheControl::from_headers(&rparts.headers);
            let ok = freshness::storable(
                &Method::GET,
                &parts.headers,
                &CacheControl::default(),
                status,
                &rparts.headers,
                &cc,
            )
            .is_ok();
            if !ok || status.is_server_error() {
                return;
            }
            let times = freshness::times(&rparts.headers, request_time, response_time);
            let policy = freshness::policy(status, &rparts.headers, &cc, response_time, heuristic);
            let plan = Plan {
                key: object.key.clone(),
                base: Some(object.clone()),
                vary,
                status,
                headers: rparts.headers,
                times,
                policy,
                tags: entry_tags,
                max_size: runtime.config.cache.max_object_size,
                compression: runtime.config.compression.clone(),
            };
            let idle = runtime.config.upstream.body_idle_timeout;
            admission::spawn(
                cache,
                plan,
                Some(lock),
                IdleTimeout::new(body, idle),
                None,
                None,
            );
        });
    }
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

/// Compresses a streamed response when the client accepts a coding and
/// the response is eligible (`Vary: Accept-Encoding` is added either way).
pub fn compress_stream(
    resp: Response<ProxyBody>,
    policy: Option<&crate::compression::CompressionPolicy>,
    req: &HeaderMap,
) -> Response<ProxyBody> {
    let Some(policy) = policy else { return resp };
    if !policy.eligible(resp.status(), resp.headers()) {
        return resp;
    }
    let len = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (mut parts, body) = resp.into_parts();
    compression::merge_vary_accept_encoding(&mut parts.headers);
    if !policy.large_enough(len) {
        return Response::from_parts(parts, body);
    }
    let Some(coding) = policy.negotiate(req.get_all(header::ACCEPT_ENCODING).iter()) else {
        return Response::from_parts(parts, body);
    };
    compression::mark_encoded(&mut parts.headers, coding, None);
    let level = policy.stream_level.for_coding(coding);
    let body = ProxyBody::boxed(compression::compress_body(coding, level, body));
    Response::from_parts(parts, body)
}

/// Shapes upstream response headers the way the cache stores and serves
/// them: hop-by-hop fields out, the rule's Cache-Control in, surrogate
/// tags taken out (and returned).
fn normalize_response(headers: &mut HeaderMap, rule: Option<&crate::rules::Rule>) -> Vec<String> {
    headers::strip_hop_by_hop(headers, false);
    if let Some(r) = rule {
        headers.insert(header::CACHE_CONTROL, r.cache_control().clone());
    }
    tags::take(headers)
}

/// RFC 9111 §4.3.4: a 304 updates the stored headers (all but
/// Content-Length and the representation's framing) and restarts the
/// freshness clock. A rule's Cache-Control still wins.
fn freshen(
    old: &Variant,
    update: &HeaderMap,
    rule: Option<&crate::rules::Rule>,
    heuristic: Heuristic,
    request_time: Millis,
    response_time: Millis,
) -> Variant {
    let mut update = update.clone();
    normalize_response(&mut update, rule);
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
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
    apply(&mut v.headers, false);
    for e in &mut v.encoded {
        apply(&mut e.headers, true);
    }
    let cc = CacheControl::from_headers(&v.headers);
    v.times = freshness::times(&update, request_time, response_time);
    v.policy = freshness::policy(v.status, &v.headers, &cc, response_time, heuristic);
    v
}

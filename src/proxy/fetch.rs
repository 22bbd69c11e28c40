//! The miss path: collapsed forwarding (one leader per URL goes upstream,
//! followers wait for its stored result), acting on the classified
//! upstream answer (`exchange`) in the foreground fetch and the background
//! refresh (stale-while-revalidate, refresh-ahead, soft purge),
//! stale-if-error and grace, streaming a miss to the client while it is
//! stored, compressed where SPEC §3 says so, and answering from a response
//! that is not stored (`relay`: the client's preconditions and range
//! evaluated against it).

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::admit::{self, Admitted, Plan};
use super::as_forwarded::AsForwarded;
use super::body::ProxyBody;
use super::cache_status::{CacheStatus, ServedStale};
use super::error::ProxyError;
use super::lookup::{Miss, Stale};
use super::rule_count::NotedRule;
use super::{headers, Answered, RequestCtx};
use crate::cache::collapse::{Flight, Locked, WriteLock};
use crate::cache::directives::CacheControl;
use crate::cache::freshness::{self, now_millis, NotStorable};
use crate::compression::{self, Coding, CompressionPolicy};
use crate::upstream::ServedBy;

mod exchange;
mod follow;
mod refresh;
mod relay;
mod storability;

use exchange::{Exchange, Fetched, UpstreamBody, CLIENT_CONDITIONALS};
pub use refresh::refresh;
pub(super) use refresh::request_parts;
pub use storability::{would_store, STRATA_CACHE_CONTROL};

// === the foreground fetch ===

/// How many times a follower asks for the lock again after its leader went
/// away without an answer, before it goes upstream alone.
const REJOINS: u8 = 2;

/// A miss: the first request for the URL leads and goes upstream; the
/// others wait (bounded) for its result.
pub async fn fetch(ctx: &RequestCtx<'_>, req: Request<Incoming>, miss: Miss) -> Answered {
    // The rule the request counts under, noted here (inside the boxed miss
    // future: the hit path's request context does not carry it).
    let noted = NotedRule::default();
    ctx.count_miss(&noted);
    let answered = fetch_or_rejoin(ctx, req, miss, REJOINS, &noted).await;
    ctx.count_answered(&noted, answered.outcome());
    answered
}

async fn fetch_or_rejoin(
    ctx: &RequestCtx<'_>,
    req: Request<Incoming>,
    miss: Miss,
    rejoins: u8,
    noted: &NotedRule,
) -> Answered {
    let key = miss.collapse_key(&AsForwarded::new(
        &req,
        ctx.conn,
        &ctx.runtime.config.server,
    ));
    match ctx.shared.cache.collapser().lock(key) {
        Locked::Write(lock) => lead(ctx, req, miss, lock, noted).await,
        Locked::Read(wait) => follow::follow(ctx, req, miss, wait, rejoins, noted).await,
    }
}

/// The leader: fetch, then answer by what came back.
async fn lead(
    ctx: &RequestCtx<'_>,
    req: Request<Incoming>,
    miss: Miss,
    lock: WriteLock,
    noted: &NotedRule,
) -> Answered {
    let (parts, _) = req.into_parts();
    let fwd = miss.fwd;
    let Ok((parts, miss, lock, fetched)) = detached(Exchange::new(ctx), parts, miss, lock).await
    else {
        // The fetch's task panicked (a bug): its lock went with it.
        let e = ProxyError::UpstreamBody {
            server: "upstream".into(),
            stalled: false,
        };
        return Answered::error(&e, CacheStatus::fwd(fwd));
    };
    let req = Request::from_parts(parts, ());
    let answer_fields = match &fetched {
        Fetched::Storable(_, rparts, _) | Fetched::Uncacheable(_, rparts, _) => {
            Some(&rparts.headers)
        }
        Fetched::NotModified(_, variant, _) => Some(&variant.headers),
        // The stale copy, whether or not it may be served.
        Fetched::Failed(_) | Fetched::ServerError(_) => {
            miss.stale.as_ref().map(|s| &s.variant.headers)
        }
    };
    ctx.count_fetched(noted, req.uri().path(), req.method(), answer_fields);
    match fetched {
        Fetched::Failed(e) => {
            lock.publish(Flight::Failed { status: None });
            match &miss.stale {
                Some(s) if s.on_error.is_some() => serve_stale(ctx, &req, &miss, s, None, false),
                // A stored response that must not be served stale, and no
                // upstream to validate it.
                Some(_) => {
                    tracing::debug!(error = %e, "upstream failed; stale entry may not be served");
                    Answered::error(&e.revalidating(), CacheStatus::fwd(miss.fwd))
                }
                // Logged where it failed (`upstream/failure_log.rs`).
                None => Answered::error(&e, CacheStatus::fwd(miss.fwd)),
            }
        }
        Fetched::ServerError(status) => {
            lock.publish(Flight::Failed {
                status: Some(status.as_u16()),
            });
            match &miss.stale {
                Some(s) if s.on_error.is_some() => {
                    serve_stale(ctx, &req, &miss, s, Some(status.as_u16()), false)
                }
                _ => Answered::error(
                    &ProxyError::UpstreamBody {
                        server: "upstream".into(),
                        stalled: false,
                    },
                    CacheStatus::fwd(miss.fwd),
                ),
            }
        }
        Fetched::NotModified(stored, variant, requester) => {
            // A 304 that says `private` or `no-store` removed the entry:
            // no `ttl` is reported for what is no longer stored.
            let kept = stored.is_some();
            lock.publish(Flight::admitted(stored));
            let status = CacheStatus::fwd(miss.fwd).map(|f| {
                f.fwd_status = Some(304);
                f.ttl = kept.then(|| variant.ttl(now_millis()));
            });
            let mut resp = from_stored(ctx, &req, &variant, requester.served.as_ref());
            // The origin's cookies and proxy authentication for this
            // client (RFC 9111 §3.1 and §4.3.4 keep them out of the stored
            // headers, not out of the response).
            for (name, value) in requester.own_fields {
                resp.headers_mut().append(name, value);
            }
            Answered::new(resp, status)
        }
        Fetched::Uncacheable(reason, rparts, body) => {
            uncacheable(ctx, &req, &miss, lock, reason, rparts, body)
        }
        Fetched::Storable(plan, rparts, body) => {
            storable(ctx, &req, &miss, lock, *plan, rparts, body).await
        }
    }
}

/// The leader's fetch, in a task of its own, so that a client that goes
/// away before the response head arrives does not cancel it (as nginx's
/// `proxy_cache` finishes a cacheable fetch, and Varnish any): with the
/// client gone, a storable response is admitted for the requests waiting
/// on the lock and the next ones, a 304's refreshed entry (stored by the
/// exchange) handed to them, a failure published to them; an uncacheable
/// response is dropped (its waiters go upstream themselves). Before, the
/// fetch was cancelled, and with clients that give up before a slow
/// origin answers nothing was ever stored (slow-peers probe).
async fn detached(
    exchange: Exchange,
    parts: http::request::Parts,
    miss: Miss,
    lock: WriteLock,
) -> Result<(http::request::Parts, Miss, WriteLock, Fetched), oneshot::error::RecvError> {
    let (mut tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let stale_on_error = miss.stale.as_ref().is_some_and(|s| s.on_error.is_some());
        let stale = miss.stale.as_ref().map(|s| &s.variant);
        let fetched = {
            let fetch = exchange.fetch(
                &parts,
                &miss.key,
                miss.object.as_ref(),
                stale,
                stale_on_error,
            );
            let mut fetch = std::pin::pin!(fetch);
            let mut permit = None;
            loop {
                tokio::select! {
                    fetched = &mut fetch => break fetched,
                    () = tx.closed(), if permit.is_none() => {
                        // The client left: go on only within the bound.
                        match exchange.cache.clientless().clone().try_acquire_owned() {
                            Ok(p) => permit = Some(p),
                            Err(_) => {
                                tracing::debug!(key = %miss.key, "the client left and too many fetches go on without theirs: stopped");
                                return;
                            }
                        }
                    }
                }
            }
        };
        let Err((_, miss, lock, fetched)) = tx.send((parts, miss, lock, fetched)) else {
            return;
        };
        match fetched {
            Fetched::Storable(plan, _, body) => {
                tracing::debug!(key = %miss.key, "the client left before the response head: stored for the others");
                admit::spawn(exchange.cache, *plan, Some(lock), body, None, None);
            }
            Fetched::NotModified(stored, ..) => lock.publish(Flight::admitted(stored)),
            Fetched::ServerError(status) => lock.publish(Flight::Failed {
                status: Some(status.as_u16()),
            }),
            Fetched::Failed(_) => lock.publish(Flight::Failed { status: None }),
            Fetched::Uncacheable(..) => drop(lock),
        }
    });
    rx.await
}

/// The upstream failed or answered 5xx (`fwd_status`) inside
/// stale-if-error or grace: serve the stale copy (`detail=` says which
/// allowed it; `collapsed` when it was another request's validation that
/// failed).
fn serve_stale<B>(
    ctx: &RequestCtx<'_>,
    req: &Request<B>,
    miss: &Miss,
    s: &Stale,
    fwd_status: Option<u16>,
    collapsed: bool,
) -> Answered {
    let status = CacheStatus::fwd(miss.fwd).map(|f| {
        f.fwd_status = fwd_status;
        f.collapsed = collapsed;
        f.stale = Some(
            s.on_error
                .map_or(ServedStale::StaleIfError, ServedStale::from),
        );
        f.ttl = Some(s.variant.ttl(ctx.now));
    });
    Answered::new(ctx.respond(req, &s.variant), status)
}

/// Whether `reason` is the request's own (its `Authorization`, its
/// `no-store`, an answer about the request such as `431`) or the moment's (no room in the collecting budget), so the
/// answer says nothing about what the cache holds or may store.
pub(super) fn for_this_request_only(reason: NotStorable, req_cc: &CacheControl) -> bool {
    matches!(
        reason,
        NotStorable::Authorization | NotStorable::Busy | NotStorable::RequestError
    ) || req_cc.no_store
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
    // A server error in answer to a validation says nothing about the
    // resource (RFC 9111 §4.3.3): the stored entry stays, to be validated
    // again or served under grace, as nginx and Varnish keep theirs.
    let failed_validation = miss.stale.is_some() && rparts.status.is_server_error();
    let request_specific = for_this_request_only(reason, &ctx.req_cc);
    if !(request_specific || failed_validation) {
        ctx.shared.cache.mark_pass(miss.key.hash());
        if miss.stale.is_some() {
            // What was stored no longer describes the resource.
            ctx.shared.cache.remove(&miss.key);
        }
    }
    if failed_validation {
        // Waiters holding a stale copy they may serve on error serve it.
        lock.publish(Flight::Failed {
            status: Some(rparts.status.as_u16()),
        });
    } else if request_specific {
        // Uncacheable for this request only (its Authorization or
        // no-store, or no room to collect its body now): the waiters may
        // well get a storable answer.
        drop(lock);
    } else {
        lock.publish(Flight::Released); // waiters go upstream at once, in parallel
    }
    // A stale entry was validated and the upstream's answer replaced it:
    // `fwd-status` says what came back, as on the storable path.
    let upstream_status = rparts.status.as_u16();
    let status = CacheStatus::fwd(miss.fwd).map(|f| {
        if miss.stale.is_some() {
            f.fwd_status = Some(upstream_status);
        }
    });
    relay::relay(ctx, req, rparts, ProxyBody::Upstream(body), status)
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
    // A purge of the URL since the fetch began keeps its answer out
    // (`cache/memory.rs`): known before the head goes out, it is not
    // reported `stored` (RFC 9211 §2.5).
    let purged = ctx
        .shared
        .cache
        .memory()
        .url_removed_since(&miss.key, plan.since);
    let status = CacheStatus::fwd(miss.fwd).map(|f| {
        f.stored = !purged;
        f.ttl = (!purged).then(|| freshness::ttl(&plan.policy, &plan.times, plan.times.response));
        if miss.stale.is_some() {
            f.fwd_status = Some(upstream_status.as_u16());
        }
    });
    let cache = ctx.shared.cache.clone();
    // An origin's Age is sent as Strata computed it (RFC 9111 §4.2.3: the
    // first member of a list, invalid values ignored), one integer field,
    // as every hit of this entry will be: never `200, 0` or `abc`.
    if rparts.headers.contains_key(header::AGE) {
        let age = freshness::current_age(&plan.times, plan.times.response);
        rparts.headers.insert(header::AGE, age.into());
    }
    if req.method() == Method::HEAD || body.is_end_stream() {
        // Answered once the GET it was fetched as is stored, so that a
        // request after this response is a hit, never collapsed onto the
        // admission (SPEC §6). An empty body (a `204`, `Content-Length: 0`)
        // is the same case: the head alone is the whole response, so the
        // admission must come first. A body that is not stored (too large,
        // broken) leaves the upstream's head to answer with.
        let (done_tx, done_rx) = oneshot::channel();
        let done = admit::Done::Visible(done_tx);
        admit::spawn(cache, plan, Some(lock), body, None, Some(done));
        return match done_rx.await {
            Ok(Admitted::Stored(variant)) => {
                Answered::new(from_stored(ctx, req, &variant, served(&rparts)), status)
            }
            _ => relay::relay(
                ctx,
                req,
                rparts,
                ProxyBody::empty(),
                CacheStatus::fwd(miss.fwd),
            ),
        };
    }
    if CLIENT_CONDITIONALS
        .iter()
        .any(|h| req.headers().contains_key(h))
    {
        let (done_tx, done_rx) = oneshot::channel();
        let done = admit::Done::Complete(done_tx);
        admit::spawn(cache, plan, Some(lock), body, None, Some(done));
        return match done_rx.await {
            Ok(Admitted::Stored(variant)) => {
                Answered::new(from_stored(ctx, req, &variant, served(&rparts)), status)
            }
            // Not stored after all (no length, and more than
            // `max_object_size`, or no room in the collecting budget): the
            // request is answered from the upstream's response as it
            // streams (a range is ignored: its length is unknown).
            Ok(Admitted::NotStored(body)) => {
                relay::relay(ctx, req, rparts, body, CacheStatus::fwd(miss.fwd))
            }
            outcome => {
                let stalled = matches!(outcome, Ok(Admitted::Failed { stalled: true }));
                let server = served_by(&rparts.extensions);
                // Strata answers this failure itself: logged as any
                // failed exchange is (`upstream/failure_log.rs`).
                tracing::warn!(
                    server,
                    method = %req.method(),
                    path = req.uri().path(),
                    client_ip = %ctx.conn.client_ip,
                    cause = if stalled { "the response body stalled past body_idle_timeout" } else { "the response body was cut short" },
                    "upstream failed"
                );
                // A stale copy that may stand in for an upstream failure
                // (grace, stale-if-error) does, as for a failure before
                // the head (regression probe: it was a 504).
                if let Some(s) = miss.stale.as_ref().filter(|s| s.on_error.is_some()) {
                    return serve_stale(ctx, req, miss, s, None, false);
                }
                let e = ProxyError::UpstreamBody { server, stalled };
                Answered::error(&e, CacheStatus::fwd(miss.fwd))
            }
        };
    }
    let (feed, client_body) = super::feed::channel();
    admit::spawn(cache, plan, Some(lock), body, Some(feed), None);
    streamed(ctx, rparts, client_body, status)
}

/// A miss's response streamed to the client as it arrives: `Vary:
/// Accept-Encoding` when Strata compresses such a response, compressed on
/// the fly for the client's coding.
fn streamed(
    ctx: &RequestCtx<'_>,
    mut rparts: http::response::Parts,
    body: ProxyBody,
    status: CacheStatus,
) -> Answered {
    let compression = ctx.runtime.config.compression.as_ref();
    if compression.is_some_and(|p| would_compress(p, rparts.status, &rparts.headers)) {
        compression::merge_vary_accept_encoding(&mut rparts.headers);
    }
    let resp = Response::from_parts(rparts, body);
    Answered::new(compress_stream(resp, compression, ctx.coding), status)
}

/// The answer to a miss from the entry it fetched or revalidated (HEAD,
/// conditional and range misses, a 304), still naming the upstream that
/// answered (`served`, for the access log).
fn from_stored<B>(
    ctx: &RequestCtx<'_>,
    req: &Request<B>,
    variant: &crate::cache::entry::Variant,
    served: Option<&ServedBy>,
) -> Response<ProxyBody> {
    let mut resp = ctx.respond(req, variant);
    if let Some(served) = served {
        resp.extensions_mut().insert(served.clone());
    }
    resp
}

/// The upstream server named by a response's parts.
fn served(parts: &http::response::Parts) -> Option<&ServedBy> {
    parts.extensions.get::<ServedBy>()
}

/// The upstream server named by a response's extensions (for errors).
fn served_by(ext: &http::Extensions) -> String {
    ext.get::<ServedBy>()
        .map_or_else(|| "upstream".to_string(), |s| s.0.to_string())
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

//! A follower of a collapsed miss: answered from the leader's stored
//! result (`collapsed`), unless that result must be validated before each
//! reuse (then it validates it itself); collapsed again behind a new leader when the leader went away
//! or its answer was purged while fetched; else sent upstream alone.

use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;

use super::super::as_forwarded::AsForwarded;
use super::super::cache_status::CacheStatus;
use super::super::cache_status::Fwd;
use super::super::lookup::{validate_first, Miss, Stale};
use super::super::rule_count::NotedRule;
use super::super::{forward, Answered, RequestCtx};
use super::{fetch_or_rejoin, lead, serve_stale};
use crate::cache::collapse::{Flight, ReadLock};
use crate::cache::directives::CacheControl;
use crate::cache::entry::Variant;
use crate::cache::freshness;

/// A follower: answered from the leader's stored result (`collapsed`),
/// collapsed again behind a new leader when the leader went away without
/// an answer, or released to go upstream alone.
pub(super) async fn follow(
    ctx: &RequestCtx<'_>,
    req: Request<Incoming>,
    miss: Miss,
    wait: ReadLock,
    rejoins: u8,
    noted: &NotedRule,
) -> Answered {
    let limit = ctx.runtime.config.cache.collapse_timeout;
    match wait.wait(limit).await {
        Some(Flight::Stored(object)) => {
            let server = &ctx.runtime.config.server;
            let selected = object.select(&AsForwarded::new(&req, ctx.conn, server));
            if let Some((fwd, stale)) = selected.and_then(|v| validation(v, ctx.now)) {
                // Not handed over: the leader's answer may be its own (a
                // page per cookie, say). This request validates the
                // stored copy itself, as it would had it come alone (a
                // `304` serves it, a `200` replaces it), in parallel with
                // the other followers; a lock nobody waits on.
                let miss = Miss {
                    key: miss.key,
                    object: Some(object),
                    stale,
                    fwd,
                };
                let lock = ctx.shared.cache.collapser().solo(miss.key.hash());
                return Box::pin(lead(ctx, req, miss, lock, noted)).await;
            }
            if let Some(variant) = selected {
                ctx.shared.metrics.collapsed();
                ctx.count_fetched(
                    noted,
                    req.uri().path(),
                    req.method(),
                    Some(&variant.headers),
                );
                let status = CacheStatus::fwd(miss.fwd).map(|f| {
                    f.collapsed = true;
                    f.ttl = Some(variant.ttl(ctx.now));
                });
                return Answered::new(ctx.respond(&req, variant), status);
            }
            if rejoins > 0 {
                // Stored, but another variant: the leader's answer says
                // what the URL varies on, so this request's variant is
                // now collapsed on its own (with the other followers
                // that asked for it), not fetched once per follower.
                let miss = Miss {
                    object: Some(object),
                    ..miss
                };
                return Box::pin(fetch_or_rejoin(ctx, req, miss, rejoins - 1, noted)).await;
            }
        }
        Some(Flight::Abandoned) if rejoins > 0 => {
            // Boxed: the future would otherwise contain itself.
            return Box::pin(fetch_or_rejoin(ctx, req, miss, rejoins - 1, noted)).await;
        }
        Some(Flight::Failed { status }) => {
            // The leader's validation failed: a stale copy this request
            // may have on error is served as the leader's was, without
            // asking the failing upstream again (RFC 5861 §4, SPEC §6).
            if let Some(s) = miss.stale.as_ref().filter(|s| s.on_error.is_some()) {
                ctx.shared.metrics.collapsed();
                ctx.count_fetched(
                    noted,
                    req.uri().path(),
                    req.method(),
                    Some(&s.variant.headers),
                );
                return serve_stale(ctx, &req, &miss, s, status, true);
            }
        }
        Some(Flight::Released | Flight::Abandoned | Flight::Found { .. }) | None => {}
    }
    // Released, failed with nothing to serve instead, timed out, or
    // another variant: go upstream alone.
    pass_alone(ctx, req, miss, noted).await
}

/// What a follower starts its own validation from when `variant`, just
/// stored by the leader, may be reused only after a validation of its
/// own (`no-cache`, or no freshness left: `max-age=0`, no explicit or
/// heuristic lifetime; RFC 9111 §4, §5.2.2.4), as a lookup would have
/// started it (`lookup::validate_first`); `None` when it may be handed
/// over. The request's own directives are not asked: the leader's fetch
/// stands for the ones that arrived while it was under way.
fn validation(variant: &Arc<Variant>, now: freshness::Millis) -> Option<(Fwd, Option<Stale>)> {
    match freshness::reuse(
        &variant.policy,
        &variant.times,
        now,
        &CacheControl::default(),
    ) {
        freshness::Reuse::Validate { on_error, .. } => {
            Some(validate_first(variant.clone(), on_error, false))
        }
        _ => None,
    }
}

/// A follower that goes upstream alone, its request forwarded as it came.
async fn pass_alone(
    ctx: &RequestCtx<'_>,
    req: Request<Incoming>,
    miss: Miss,
    noted: &NotedRule,
) -> Answered {
    let pass = super::super::lookup::Pass {
        fwd: miss.fwd,
        rule: ctx.rule,
        marked: None,
    };
    // Counted by the response the pass gets (under a rule that waits for it).
    let counted = ctx
        .rule_waits()
        .then(|| (req.uri().path().to_owned(), req.method().clone()));
    let answered = forward::pass(ctx.shared, ctx.runtime, req, ctx.conn, pass, ctx.present).await;
    if let Some((path, method)) = counted {
        let fields = (!answered.failed).then(|| answered.response.headers());
        ctx.count_fetched(noted, &path, &method, fields);
    }
    answered
}

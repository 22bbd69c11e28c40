//! The hit path: route a GET or HEAD to the cache (or say why not), look
//! the URL up in memory and then Redis, select the variant by `Vary`, and
//! decide whether it can be reused (RFC 9111 §4.2, RFC 5861). Nothing here
//! goes upstream; the answer is a [`Lookup`] that `proxy::handle` matches.
//!
//! A fresh memory hit allocates nothing here: the key is hashed from
//! borrowed parts, and the stored object is shared by `Arc`. Only a rule
//! with key options (`key.*`, `rules/key.rs`) builds its key path, once per
//! request, in [`route`].

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Method, Request};
use http_body::Body as _;
use hyper::body::Incoming;

use super::as_forwarded::AsForwarded;
use super::cache_status::Fwd;
use super::validate::{Field, Present};
use super::{ConnInfo, RequestCtx, Runtime, Shared};
use crate::cache::directives::CacheControl;
use crate::cache::entry::{Object, RequestFields, Variant};
use crate::cache::freshness::{self, Fallback, Millis, Reuse};
use crate::cache::key::CacheKey;
use crate::cache::Tier;
use crate::config::CacheConfig;

/// Where a cacheable request's key and rule come from; borrowed from the
/// request so routing a hit allocates nothing.
pub struct Route<'r> {
    /// [`CacheKey::hash_of`] the scheme, authority and path.
    pub hash: u128,
    /// As keyed ([`crate::cache::key::keyed_authority`]): borrowed but
    /// for a root dot before a port.
    pub authority: Cow<'r, str>,
    /// Path and query as the key holds them: the request's own, or,
    /// under a rule with key options, normalised and with header and
    /// cookie values appended (never what goes upstream).
    pub path: Cow<'r, str>,
    /// Index of the first matching rule in `config.rules`.
    pub rule: Option<usize>,
}

/// Why a request goes straight upstream (`Cache-Status: fwd=…`), and the
/// rule it matched, whose `cache_control` the client still gets.
pub struct Pass {
    pub fwd: Fwd,
    pub rule: Option<usize>,
    /// The URL's key hash when it goes upstream only because it is marked
    /// uncacheable (hit-for-miss): its answer may lift the mark.
    pub marked: Option<u128>,
}

impl From<Fwd> for Pass {
    fn from(fwd: Fwd) -> Pass {
        Pass {
            fwd,
            rule: None,
            marked: None,
        }
    }
}

/// Decides whether the cache handles `req`; `Err` says why it goes
/// straight upstream.
pub fn route<'r>(
    shared: &Shared,
    runtime: &Runtime,
    req: &'r Request<Incoming>,
    conn: ConnInfo,
    present: Present,
) -> Result<Route<'r>, Pass> {
    let cacheable = (req.method() == Method::GET || req.method() == Method::HEAD)
        && !(present.has(Field::Upgrade) && super::forward::wants_upgrade(req));
    if !cacheable {
        return Err(Fwd::Method.into());
    }
    if !runtime.config.cache.enabled {
        return Err(Fwd::Bypass.into());
    }
    if !req.body().is_end_stream() {
        // A GET with a body is not something a cache can key on.
        return Err(Fwd::Bypass.into());
    }
    let host = super::validate::request_host(req).ok_or(Pass::from(Fwd::Bypass))?;
    let authority = crate::cache::key::keyed_authority(conn.https, host);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let rule = runtime.config.rules.find(req.uri().path(), req.method());
    let path = match rule.and_then(|(_, r)| r.key()) {
        None => Cow::Borrowed(target),
        Some(key) => Cow::Owned(key.request_path(target, req.headers())),
    };
    let hash = CacheKey::hash_of(conn.https, &authority, &path);
    let bypass = rule.is_some_and(|(_, r)| r.bypasses());
    if bypass || shared.cache.is_pass(hash) {
        return Err(Pass {
            fwd: Fwd::Bypass,
            rule: rule.map(|(i, _)| i),
            marked: (!bypass).then_some(hash),
        });
    }
    Ok(Route {
        hash,
        authority,
        path,
        rule: rule.map(|(i, _)| i),
    })
}

/// A stored response that can be served without going upstream.
pub struct Hit {
    pub object: Arc<Object>,
    pub variant: Arc<Variant>,
    pub tier: Tier,
    /// Remaining freshness in seconds (≤ 0: a stale copy the request or
    /// stale-while-revalidate allows).
    pub ttl: i64,
}

/// A stored response that must be validated before reuse.
pub struct Stale {
    pub variant: Arc<Variant>,
    /// Whether (and why) it may be served when the upstream fails or
    /// answers 5xx: stale-if-error or grace.
    pub on_error: Option<Fallback>,
}

/// What a fetch starts from.
pub struct Miss {
    pub key: CacheKey,
    /// The object stored for the URL (other variants, or the stale one).
    pub object: Option<Arc<Object>>,
    pub stale: Option<Stale>,
    pub fwd: Fwd,
}

impl Miss {
    /// The collapse lock's key for `request`: the URL's, or its
    /// variant's once the stored responses say what they vary on
    /// ([`Object::collapse_key`]).
    pub fn collapse_key(&self, request: &(impl RequestFields + ?Sized)) -> u128 {
        self.object
            .as_ref()
            .map_or(self.key.hash(), |o| o.collapse_key(request))
    }
}

/// The lookup's verdict.
pub enum Lookup {
    /// Fresh, or stale and allowed by the request (`max-stale`).
    Hit(Hit),
    /// Stale inside stale-while-revalidate, or fresh and due for
    /// refresh-ahead (`prefresh`): serve it and refresh once in the
    /// background.
    HitAndRefresh(Hit),
    /// Marked stale by a soft purge: serve it (`fwd=stale;
    /// detail=soft-purge`) and revalidate once in the background.
    SoftPurged(Hit),
    /// Go upstream (collapsed with concurrent misses).
    Fetch(Miss),
    /// `only-if-cached` and nothing usable: 504 (RFC 9111 §5.2.1.7).
    OnlyIfCached,
}

/// Whether a soft-purged copy has stood in for a failing origin long
/// enough: its background revalidations have failed for longer than its
/// `grace` (or `stale-if-error`, the longer). From then on it is validated
/// before the answer like any stale entry, and the failure is the answer,
/// as Varnish keeps a soft-purged object for its grace only; it was
/// served for as long as the origin failed (up to its whole lifetime).
fn soft_purge_outlived(v: &Variant, now: Millis) -> bool {
    let window = v.policy.grace.max(v.policy.stale_if_error);
    v.refresh
        .failing_for(now)
        .is_some_and(|ms| ms > window.saturating_mul(1000))
}

/// Refresh-ahead (`[cache] prefresh`): counts this hit on the variant and
/// says whether it should start a background revalidation: the variant has
/// had at least `prefresh_min_hits` hits and its age (milliseconds) has
/// reached `prefresh` of its freshness lifetime. One relaxed atomic add;
/// only called when prefresh is on.
fn prefresh_due(v: &Variant, now: Millis, cache: &CacheConfig) -> bool {
    if v.hits.add() < cache.prefresh_min_hits {
        return false;
    }
    let age_ms = freshness::current_age_ms(&v.times, now);
    age_ms as f64 >= cache.prefresh * v.policy.lifetime.saturating_mul(1000) as f64
}

/// A stored variant that must be validated before reuse: `fwd=stale`, or
/// `fwd=request` when it was usable but the request's directives refused
/// it (RFC 9211 §2.2). A stored `5xx` (a `status_ttl` negative entry) is
/// no fallback for a failing upstream: the new answer replaces it (and is
/// stored by the same `status_ttl`) instead of an older error being
/// served as `grace` while every request goes upstream.
pub(super) fn validate_first(
    variant: Arc<Variant>,
    on_error: Option<Fallback>,
    requested: bool,
) -> (Fwd, Option<Stale>) {
    let on_error = on_error.filter(|_| !variant.status.is_server_error());
    let fwd = if requested { Fwd::Request } else { Fwd::Stale };
    (fwd, Some(Stale { variant, on_error }))
}

/// Whether the request's directives refuse a stale response, such as a
/// soft-purged one (RFC 9111 §4.2.4, §5.2.1): `no-cache`, `max-age`,
/// `min-fresh`, or `max-stale=0`. Any other `max-stale` accepts it.
fn refuses_stale(req: &CacheControl) -> bool {
    req.no_cache || req.max_age.is_some() || req.min_fresh.is_some() || req.max_stale == Some(0)
}

/// A request's directives: Cache-Control, or `Pragma: no-cache` when it
/// has none (RFC 9111 §5.4). Fields not in `present` are not looked up
/// ([`Present::ALL`] looks both up).
pub fn request_directives(h: &HeaderMap, present: Present) -> CacheControl {
    if present.has(Field::CacheControl) && h.contains_key(header::CACHE_CONTROL) {
        return CacheControl::from_headers(h);
    }
    let mut cc = CacheControl::default();
    if present.has(Field::Pragma)
        && h.get_all(header::PRAGMA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-cache"))
    {
        cc.no_cache = true;
    }
    cc
}

/// Memory, then Redis (promoted into memory), then the reuse decision.
pub async fn lookup<B>(ctx: &RequestCtx<'_>, req: &Request<B>, route: &Route<'_>) -> Lookup {
    let https = ctx.conn.https;
    let found = ctx
        .shared
        .cache
        .lookup(route.hash, https, &route.authority, &route.path)
        .await;
    let mut fwd = Fwd::Miss;
    let mut stale = None;
    let mut object = None;
    if let Some((mut found, mut tier)) = found {
        // Vary reads the request as the origin gets it (the fields Strata
        // rewrites upstream as it rewrites them; computed only if a Vary
        // names one).
        let selects = |o: &Object| {
            let request = AsForwarded::new(req, ctx.conn, &ctx.runtime.config.server);
            o.select(&request).cloned()
        };
        let mut selected = selects(&found);
        if selected.is_none() && tier == Tier::Memory {
            // Another instance may have stored the request's variant.
            if let Some(o) = Box::pin(ctx.shared.cache.variants_elsewhere(&found)).await {
                selected = selects(&o);
                if selected.is_some() {
                    tier = Tier::Redis;
                }
                found = o;
            }
        }
        if selected.as_ref().is_some_and(|v| v.soft_purged) && tier == Tier::Memory {
            // Another instance may have revalidated it already.
            if let Some(o) = Box::pin(ctx.shared.cache.revalidated_elsewhere(&found.key)).await {
                selected = selects(&o);
                found = o;
                tier = Tier::Redis;
            }
        }
        match selected {
            None => fwd = Fwd::VaryMiss,
            Some(variant) if variant.soft_purged => {
                if !(variant.policy.must_revalidate
                    || variant.policy.no_cache
                    || refuses_stale(&ctx.req_cc)
                    || soft_purge_outlived(&variant, ctx.now))
                {
                    let ttl = variant.reported_ttl(ctx.now);
                    return Lookup::SoftPurged(Hit {
                        object: found,
                        variant,
                        tier,
                        ttl,
                    });
                }
                // Never served stale: validated first, like any stale entry
                // (`fwd=stale`: soft-purged, it is stale, whatever the
                // request asked).
                (fwd, stale) = validate_first(variant, None, false);
            }
            Some(variant) => {
                match freshness::reuse(&variant.policy, &variant.times, ctx.now, &ctx.req_cc) {
                    Reuse::Fresh { ttl }
                        if ctx.runtime.config.cache.prefresh > 0.0
                            && prefresh_due(&variant, ctx.now, &ctx.runtime.config.cache) =>
                    {
                        return Lookup::HitAndRefresh(Hit {
                            object: found,
                            variant,
                            tier,
                            ttl,
                        });
                    }
                    Reuse::Fresh { ttl } | Reuse::StaleAccepted { ttl } => {
                        return Lookup::Hit(Hit {
                            object: found,
                            variant,
                            tier,
                            ttl,
                        });
                    }
                    Reuse::StaleWhileRevalidate { ttl } => {
                        return Lookup::HitAndRefresh(Hit {
                            object: found,
                            variant,
                            tier,
                            ttl,
                        });
                    }
                    Reuse::Validate {
                        on_error,
                        requested,
                        ..
                    } => {
                        (fwd, stale) = validate_first(variant, on_error, requested);
                    }
                }
            }
        }
        object = Some(found);
    }
    if ctx.req_cc.only_if_cached {
        return Lookup::OnlyIfCached;
    }
    Lookup::Fetch(Miss {
        key: CacheKey::new(https, &route.authority, &route.path),
        object,
        stale,
        fwd,
    })
}

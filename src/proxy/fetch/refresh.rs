//! The background refresh: one validation per URL (per variant, for a
//! URL with `Vary`) for stale-while-revalidate, refresh-ahead and soft
//! purge, while the stored copy keeps being served.

use http::request::Parts;
use http::Request;

use super::super::admit;
use super::super::lookup::Hit;
use super::super::RequestCtx;
use super::exchange::{Exchange, Fetched};
use super::for_this_request_only;
use crate::cache::collapse::Flight;
use crate::cache::directives::CacheControl;
use crate::cache::freshness::NotStorable;

/// How long a refresh that found no room to collect (`NotStorable::Busy`)
/// keeps its URL's lock: hits meanwhile start no other (a fetch thrown away).
const BUSY_REFRESH_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// stale-while-revalidate, soft purge and refresh-ahead: one background
/// validation per URL (per variant, for a URL with `Vary`); the stored
/// copy keeps being served until it lands.
pub fn refresh<B>(ctx: &RequestCtx<'_>, req: &Request<B>, hit: &Hit) {
    let key = hit.object.collapse_key(req.headers());
    let Some(lock) = ctx.shared.cache.collapser().try_lock(key) else {
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
            Fetched::NotModified(stored, ..) => lock.publish(Flight::admitted(stored)),
            Fetched::Uncacheable(NotStorable::Busy, rparts, body) => {
                drop((rparts, body)); // the upstream connection goes now
                tokio::time::sleep(BUSY_REFRESH_BACKOFF).await;
            }
            Fetched::Storable(mut plan, _, body) => {
                // Same request fields as the stored variant.
                plan.vary = variant.vary.clone();
                admit::spawn(exchange.cache, *plan, Some(lock), body, None, None);
            }
            // A full answer that may not be stored (RFC 9111 §4.3.3: the
            // stored response is no longer suitable), unless only the
            // client's Authorization, sent along, made it so.
            Fetched::Uncacheable(reason, ..)
                if variant.soft_purged || !for_this_request_only(reason, &exchange.req_cc) =>
            {
                exchange.cache.mark_pass(key.hash());
                exchange.cache.remove(&key);
            }
            // Stays stale (stale-if-error's reading of a failure); the
            // lock drops.
            Fetched::Failed(_) | Fetched::ServerError(_) | Fetched::Uncacheable(..) => {}
        }
    });
}

/// The request's method, URI, version and headers (for building
/// upstream requests after the original was consumed).
pub(in crate::proxy) fn request_parts<B>(req: &Request<B>) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r.into_parts().0
}

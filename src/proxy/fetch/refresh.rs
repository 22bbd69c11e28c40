//! The background refresh: one validation per URL (per variant, for a
//! URL with `Vary`) for stale-while-revalidate, refresh-ahead and soft
//! purge, while the stored copy keeps being served.
//!
//! A refresh is the cache's own request, made for the shared entry and not
//! for the client whose hit started it: it carries neither that client's
//! cache directives nor its `Authorization` (unless the entry varies on
//! it), so its answer is judged as the answer to an anonymous request (RFC
//! 9111 §3.5) and one signed-in visitor can neither keep an entry from
//! being refreshed nor turn a soft purge into a removal. A refresh that
//! fails holds the entry's next one back ([`REFRESH_BACKOFF`]).

use std::time::Duration;

use http::header;
use http::request::Parts;
use http::Request;

use super::super::admit;
use super::super::as_forwarded::AsForwarded;
use super::super::lookup::Hit;
use super::super::RequestCtx;
use super::exchange::{Exchange, Fetched};
use super::for_this_request_only;
use crate::cache::collapse::Flight;
use crate::cache::directives::CacheControl;
use crate::cache::entry::{Variant, VaryKey};
use crate::cache::freshness::now_millis;

/// How long after a failed background refresh (the upstream unreachable,
/// timed out or answering 5xx, an answer refused for the request's own
/// reasons, or no room to collect it) the hits on that stored copy start
/// no other: a failing origin gets one refresh per second per entry, not
/// its hit traffic, while the stale copy keeps being served.
pub const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// stale-while-revalidate, soft purge and refresh-ahead: one background
/// validation per URL (per variant, for a URL with `Vary`); the stored
/// copy keeps being served until it lands.
pub fn refresh<B>(ctx: &RequestCtx<'_>, req: &Request<B>, hit: &Hit) {
    if hit.variant.refresh.holds(ctx.now) {
        return; // the last refresh failed a moment ago
    }
    let server = &ctx.runtime.config.server;
    let key = hit
        .object
        .collapse_key(&AsForwarded::new(req, ctx.conn, server));
    let Some(lock) = ctx.shared.cache.collapser().try_lock(key) else {
        return; // a refresh is already running
    };
    let mut exchange = Exchange::new(ctx);
    // The refresh is the cache's own request: the client's directives
    // (say, no-store) do not decide whether its result is stored.
    exchange.req_cc = CacheControl::default();
    let mut parts = request_parts(req);
    if !varies_on_authorization(&hit.variant) {
        // Made for the shared entry, not for this client (module doc).
        parts.headers.remove(header::AUTHORIZATION);
    }
    let object = hit.object.clone();
    let variant = hit.variant.clone();
    tokio::spawn(async move {
        let key = object.key.clone();
        let back_off = || {
            let now = now_millis();
            let until = now.saturating_add(REFRESH_BACKOFF.as_millis() as u64);
            variant.refresh.hold_until(now, until);
        };
        match exchange
            .fetch(&parts, &key, Some(&object), Some(&variant), true)
            .await
        {
            Fetched::NotModified(stored, ..) => lock.publish(Flight::admitted(stored)),
            Fetched::Storable(mut plan, _, body) => {
                // Under the stored variant's values when the new response
                // varies on the same fields; one that names others is
                // keyed by this request's values of them, as forwarded
                // (`plan.vary`, RFC 9111 §4.1).
                if same_fields(&plan.vary, &variant.vary) {
                    plan.vary = variant.vary.clone();
                }
                admit::spawn(exchange.cache, *plan, Some(lock), body, None, None);
            }
            // A full answer that may not be stored (RFC 9111 §4.3.3: the
            // stored response is no longer suitable), unless the reason
            // was this request's own: no room to collect it now, or the
            // Authorization of an entry that varies on it.
            Fetched::Uncacheable(reason, ..)
                if !for_this_request_only(reason, &exchange.req_cc) =>
            {
                exchange.cache.mark_pass(key.hash());
                exchange.cache.remove(&key);
            }
            Fetched::Uncacheable(reason, rparts, body) => {
                tracing::debug!(%key, reason = reason.as_str(), "refresh not stored; backing off");
                drop((rparts, body)); // the upstream connection goes now
                back_off();
            }
            // Stays stale (stale-if-error's reading of a failure); waiters
            // on the lock may serve their stale copies too.
            Fetched::Failed(e) => {
                tracing::debug!(%key, error = %e, "refresh failed; backing off");
                back_off();
                lock.publish(Flight::Failed { status: None });
            }
            Fetched::ServerError(status) => {
                tracing::debug!(%key, %status, "refresh answered 5xx; backing off");
                back_off();
                lock.publish(Flight::Failed {
                    status: Some(status.as_u16()),
                });
            }
        }
    });
}

/// Whether two Vary keys name the same fields, in the same order.
fn same_fields(a: &VaryKey, b: &VaryKey) -> bool {
    a.0.iter().map(|(n, _)| n).eq(b.0.iter().map(|(n, _)| n))
}

/// Whether `variant` was stored for the `Authorization` of its request
/// (`Vary: Authorization`): its refresh must carry that same field.
fn varies_on_authorization(variant: &Variant) -> bool {
    variant
        .vary
        .0
        .iter()
        .any(|(name, _)| name == header::AUTHORIZATION)
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

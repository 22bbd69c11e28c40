//! Purges and invalidations: what an admin purge names ([`Purge`], its
//! [`Selector`]), applying it to every tier (hard or soft), the cascades it
//! sets off, the invalidation after an unsafe method (RFC 9111 §4.4), and
//! reading what a selector names without changing it (`GET /cache`).

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::Uri;

use super::entry::Object;
use super::key::CacheKey;
use super::storage::{self, Selector};
use super::Cache;
use crate::invalidation::Cascades;
use crate::metrics::PurgeCause;

/// What a purge removed (or marked stale): directly, and through cascades.
#[derive(Debug, Default)]
pub struct Purged {
    pub direct: u64,
    pub cascaded: u64,
    /// Redis (and with it the fleet) could not be purged: memory was, and
    /// the counts are memory's. A dead Redis degrades a purge to this
    /// instance; it never fails it.
    pub redis_error: Option<storage::StorageError>,
}

/// The path a purge names, for cascades: a URL's path or a prefix (less
/// any `#` of values a rule's key options append); tag purges name none.
fn cascade_path(purge: &Purge) -> Option<&str> {
    let path = named_path(purge)?;
    Some(path.split('#').next().unwrap_or(path))
}

fn named_path(purge: &Purge) -> Option<&str> {
    match purge {
        Purge::Url(url) if url.starts_with('/') => Some(url),
        Purge::Url(url) => {
            let rest = url.split_once("://")?.1;
            Some(rest.find('/').map_or("/", |i| &rest[i..]))
        }
        Purge::Prefix(p) => Some(p),
        Purge::Tags(_) => None,
    }
}

/// What an admin purge removes. Its `Debug` form (what logs show) cuts
/// queries to `?…` ([`loggable`](crate::cache::key::loggable)).
#[derive(Clone)]
pub enum Purge {
    Url(String),
    Prefix(String),
    Tags(Vec<String>),
}

impl std::fmt::Debug for Purge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::cache::key::loggable;
        match self {
            Purge::Url(u) => write!(f, "Url({:?})", loggable(u)),
            Purge::Prefix(p) => write!(f, "Prefix({:?})", loggable(p)),
            Purge::Tags(tags) => f.debug_tuple("Tags").field(tags).finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("invalid url {0:?}: expected an absolute http(s) URL or a path starting with /")]
    BadUrl(String),
    #[error("invalid prefix {0:?}: expected a path starting with /")]
    BadPrefix(String),
}

impl Purge {
    pub fn selector(&self) -> Result<Selector, PurgeError> {
        Ok(match self {
            Purge::Url(url) if url.starts_with('/') => Selector::PathAnyHost(url.clone()),
            Purge::Url(url) => Selector::Key(
                CacheKey::from_url(url).ok_or_else(|| PurgeError::BadUrl(url.clone()))?,
            ),
            Purge::Prefix(p) if p.starts_with('/') => Selector::Prefix(p.clone()),
            Purge::Prefix(p) => return Err(PurgeError::BadPrefix(p.clone())),
            Purge::Tags(tags) => {
                Selector::Tags(tags.iter().map(|t| t.trim().to_string()).collect())
            }
        })
    }
}

impl Cache {
    /// Admin purge: removes from memory and, with Redis, from Redis and
    /// (through the purge channel) every instance's memory; `soft` marks
    /// the entries stale instead (served stale once while one background
    /// revalidation runs). Then runs the cascades the purged path sets off
    /// ([`Cascades::plan`]). Counts are of objects: the larger of the two
    /// tiers' counts, since memory mostly holds copies of what Redis has.
    /// Only a selector that names nothing valid is an error; Redis failing
    /// is reported in [`Purged::redis_error`], memory and the cascades
    /// having been purged all the same. Waits for Redis (each command at
    /// most `max(timeout, 1 s)`, a step at most [`PURGE_CAP`]) so that
    /// the answer can say whether Redis and the fleet were purged.
    ///
    /// [`PURGE_CAP`]: super::redis::PURGE_CAP
    ///
    /// Runs to the end in a task of its own (see [`to_the_end`]).
    pub async fn purge(
        &self,
        purge: &Purge,
        soft: bool,
        cascades: &Cascades,
    ) -> Result<Purged, PurgeError> {
        let selector = purge.selector()?;
        let (cache, purge, cascades) = (self.clone(), purge.clone(), cascades.clone());
        let purged = to_the_end(async move {
            let (direct, redis_error) = cache.apply(&selector, soft).await;
            cache.inner.metrics.purged(PurgeCause::Api, direct);
            let cascaded = match cascade_path(&purge) {
                Some(path) => cache.cascade_here(path, &cascades).await,
                None => 0,
            };
            Purged {
                direct,
                cascaded,
                redis_error,
            }
        });
        Ok(purged.await.unwrap_or_default())
    }

    /// Up to `limit` objects per tier that `selector` selects, read
    /// without changing or promoting them (`GET /cache`). Redis is `None`
    /// when not configured; its error is the caller's to report.
    pub async fn find(
        &self,
        selector: &Selector,
        limit: usize,
    ) -> (
        Vec<Arc<Object>>,
        Option<Result<Vec<Arc<Object>>, storage::StorageError>>,
    ) {
        let memory = self.inner.memory.find(selector, limit);
        let redis = match &self.inner.redis {
            Some(redis) => Some(redis.find(selector, limit).await),
            None => None,
        };
        (memory, redis)
    }

    /// One selector on every tier (hard or soft); returns the object count
    /// and, if Redis could not be reached, why. Memory is always done;
    /// Redis is skipped while its breaker is open (it would only time out,
    /// holding the admin request for each step).
    async fn apply(&self, selector: &Selector, soft: bool) -> (u64, Option<storage::StorageError>) {
        let redis = self.inner.redis.as_ref();
        let in_redis = |soft: bool| async move {
            match redis {
                None => None,
                Some(r) if r.breaker_open() => Some(Err(storage::StorageError::BreakerOpen)),
                Some(r) if soft => Some(r.soft_purge(selector).await),
                Some(r) => Some(r.purge(selector).await),
            }
        };
        // Redis first, then memory. Soft: a memory copy marked before Redis
        // would find the Redis copy still unmarked and take it as
        // revalidated. Hard: a lookup that read the Redis copy before it
        // was deleted then overlaps the memory removal, which keeps it from
        // promoting that copy back into memory (`Cache::read_redis`);
        // removed from memory first, it could promote it after.
        // Noted first: a fetch begun before the purge and admitted while it
        // works in Redis would otherwise be stored, and written to Redis
        // behind its delete.
        self.inner.memory.note_removal(selector);
        let in_redis = in_redis(soft).await;
        let n = if soft {
            self.inner.memory.mark_stale(selector)
        } else {
            self.inner.memory.purge_now(selector)
        };
        if let (Some(redis), Some(Ok(_))) = (redis, &in_redis) {
            // A write queued before the purge may land after it.
            redis.purge_behind_queued_writes(selector.clone(), soft);
        }
        match in_redis {
            Some(Ok(m)) => (n.max(m), None),
            Some(Err(e)) => (n, Some(e)),
            None => (n, None),
        }
    }

    /// The cascades a successful unsafe request on `path` sets off
    /// (README "Cascading invalidation"); returns how many objects memory
    /// held (counted as `cause="cascade"`). Memory is purged (or marked)
    /// now, before the response goes out; Redis and the fleet in the
    /// background ([`purge_background`]), this instance reading
    /// what each step selects from Redis as a miss until that is done: the
    /// request never waits on Redis, however slow it is.
    ///
    /// [`purge_background`]: super::redis::RedisTier::purge_background
    pub fn cascade_after_unsafe(&self, path: &str, cascades: &Cascades) -> u64 {
        let mut total = 0;
        for (step, selector) in cascade_steps(path, cascades) {
            tracing::debug!(from = path, purge = ?step.purge, soft = step.soft, depth = step.depth, "cascade");
            total += self.invalidate(selector, step.soft);
        }
        self.inner.metrics.purged(PurgeCause::Cascade, total);
        total
    }

    /// The cascades an admin purge of `path` sets off, each step waiting
    /// for Redis ([`Cache::apply`]); returns how many objects they purged
    /// (counted as `cause="cascade"`). A failing step is logged and the
    /// others still run.
    async fn cascade_here(&self, path: &str, cascades: &Cascades) -> u64 {
        let mut total = 0;
        for (step, selector) in cascade_steps(path, cascades) {
            let (n, redis_error) = self.apply(&selector, step.soft).await;
            tracing::debug!(from = path, purge = ?step.purge, soft = step.soft, depth = step.depth, purged = n, "cascade");
            total += n;
            if let Some(e) = redis_error {
                tracing::warn!(from = path, purge = ?step.purge, error = %e, "cascade purge: Redis not purged, memory was");
            }
        }
        self.inner.metrics.purged(PurgeCause::Cascade, total);
        total
    }

    /// RFC 9111 §4.4: a non-error response to an unsafe request
    /// invalidates the target URI and same-host Location and
    /// Content-Location. `entries` says what a URL's entries are (its
    /// key, or, under a rule with key options, the keys built from it):
    /// the caller knows the rules, the cache does not. It gets each path
    /// as referenced (resolved, fragment dropped) and normalises it as it
    /// normalises request paths, so that `/a/./b`, `/a/%62` and `/a/b`
    /// name one key.
    pub fn invalidate_after_unsafe(
        &self,
        uri: &Uri,
        authority: Option<&Authority>,
        https: bool,
        response: &HeaderMap,
        entries: impl Fn(bool, &str, &str) -> Selector,
    ) {
        let Some(authority) = authority else { return };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut n = self.invalidate(entries(https, authority.as_str(), path), false);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = response.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            // An absolute path as it is but for its fragment (RFC 3986
            // §4.2: not part of the target); any other reference resolved,
            // and kept only when on the same host (§4.4: another host's
            // entries are not this response's to invalidate). `entries`
            // normalises the path as request paths are.
            let same_host = if target.starts_with('/') && !target.starts_with("//") {
                Some(target.split('#').next().unwrap_or(target).to_owned())
            } else {
                same_host_reference(https, authority.as_str(), path, target)
            };
            if let Some(p) = same_host {
                n += self.invalidate(entries(https, authority.as_str(), &p), false);
            }
        }
        // Location and Content-Location invalidations are counted with the
        // target's (SPEC §7: every purged entry is counted).
        self.inner.metrics.purged(PurgeCause::UnsafeMethod, n);
    }

    /// Removes (with `soft`, marks stale) what `selector` selects in
    /// memory now and, with Redis, in Redis and the fleet without waiting:
    /// one key through the key's write queue, other selectors in a
    /// background purge. Returns how many objects memory held.
    fn invalidate(&self, selector: Selector, soft: bool) -> u64 {
        if let (Selector::Key(key), false) = (&selector, soft) {
            let held = u64::from(self.inner.memory.get_key(key).is_some());
            self.remove(key);
            return held;
        }
        // Redis first: from here this instance reads what it selects from
        // Redis as a miss (`Cache::remove` likewise), so a soft-purged
        // memory copy never takes the unmarked Redis copy as revalidated.
        if let Some(redis) = &self.inner.redis {
            redis.purge_background(selector.clone(), soft);
        }
        if soft {
            self.inner.memory.mark_stale(&selector)
        } else {
            self.inner.memory.purge_now(&selector)
        }
    }
}

/// Runs `work` in a task of its own and waits for it. A purge (with its
/// cascades) goes from Redis to memory; were it dropped in between, with
/// the request that asked for it (its client went away), memory would
/// keep what Redis and the fleet lost. A panic in it is the caller's, as
/// it would be inline; `None` only while the runtime shuts down.
async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    match tokio::spawn(work).await {
        Ok(done) => Some(done),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => None,
        },
    }
}

/// A reference (`target`: an absolute URL, or a relative one such as
/// `item/8`, `../up`, `?page=2` or `//host/x`) resolved against the
/// request URL (RFC 3986 §5.2, by the `url` crate): its path and query
/// when it stays on the request's origin, else `None`.
fn same_host_reference(https: bool, authority: &str, path: &str, target: &str) -> Option<String> {
    let scheme = if https { "https" } else { "http" };
    let base = url::Url::parse(&format!("{scheme}://{authority}{path}")).ok()?;
    let resolved = base.join(target).ok()?;
    // RFC 9111 §4.4 compares the host part only: behind a load balancer
    // that ends TLS every key is `http`, while the origin names its own
    // URLs `https://` (and on the public port); the entry invalidated is
    // this request's scheme and authority with the reference's path.
    if !matches!(resolved.scheme(), "http" | "https") || resolved.host() != base.host() {
        return None;
    }
    Some(match resolved.query() {
        Some(q) => format!("{}?{q}", resolved.path()),
        None => resolved.path().to_owned(),
    })
}

/// The steps a change to `path` sets off, each with its selector; a step
/// whose purge cannot be made one (an invalid URL) is logged and skipped.
fn cascade_steps(
    path: &str,
    cascades: &Cascades,
) -> impl Iterator<Item = (crate::invalidation::Step, Selector)> {
    cascades
        .plan(path)
        .into_iter()
        .filter_map(|step| match step.purge.selector() {
            Ok(selector) => Some((step, selector)),
            Err(e) => {
                tracing::warn!(error = %e, "cascade: invalid purge skipped");
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use super::same_host_reference;

    #[test]
    fn relative_references_resolve_against_the_request_url() {
        let r = |target| same_host_reference(false, "shop.example", "/k/dir/act?x=1", target);
        assert_eq!(r("target").as_deref(), Some("/k/dir/target"));
        assert_eq!(r("../up").as_deref(), Some("/k/up"));
        assert_eq!(r("./a?b=2").as_deref(), Some("/k/dir/a?b=2"));
        assert_eq!(r("?page=2").as_deref(), Some("/k/dir/act?page=2"));
        assert_eq!(r("//shop.example/same").as_deref(), Some("/same"));
        assert_eq!(r("//other.example/x"), None);
        assert_eq!(r("mailto:a@b.example"), None);
        assert_eq!(r("http://shop.example/abs?q").as_deref(), Some("/abs?q"));
        assert_eq!(r("http://SHOP.example:80/abs").as_deref(), Some("/abs"));
        // The host part decides, not the scheme or port (§4.4).
        assert_eq!(r("https://shop.example/abs").as_deref(), Some("/abs"));
        assert_eq!(r("https://shop.example:8443/abs").as_deref(), Some("/abs"));
        assert_eq!(r("http://other.example/abs"), None);
        assert_eq!(r("https://sub.shop.example/abs"), None);
    }
}

//! Invalidations queued for Redis and not yet done there.
//!
//! An unsafe request's invalidation (RFC 9111 §4.4) deletes in Redis off
//! the request path: one URL's object through the key's write lane
//! (`RedisTier::invalidate_background`), so that it stays in order with
//! the key's writes; the entries of a URL under a rule's key options (a
//! selector), and the purges its cascades set off, hard or soft, in a task
//! of their own (`RedisTier::purge_background`). Until that is done Redis
//! still holds the old objects; a read of one from this instance is a miss
//! instead, so a client that reads after its own write never gets the copy
//! it invalidated. Other instances learn of it when the deletion is
//! published.
//!
//! Costs a Redis read one load while nothing is pending. A tag selector is
//! checked on the object read (tags are not in the key), so that pending
//! tag purges make misses of what carries the tag only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::store::Core;
use super::{RedisTier, PURGE_CAP};
use crate::cache::entry::Object;
use crate::cache::key::CacheKey;
use crate::cache::storage::Selector;

#[derive(Default)]
pub(crate) struct Pending {
    /// How many invalidations are pending, keys and selectors together.
    count: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Pending invalidations per key hash.
    keys: HashMap<u128, u32>,
    /// Pending selector invalidations, by id.
    selectors: Vec<(u64, Selector)>,
    next_id: u64,
}

impl Pending {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An invalidation of `hash` is queued.
    pub(crate) fn begin(&self, hash: u128) {
        *self.state().keys.entry(hash).or_default() += 1;
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// An invalidation of `hash` is done (or failed, or was dropped).
    pub(crate) fn end(&self, hash: u128) {
        let mut state = self.state();
        if let Some(n) = state.keys.get_mut(&hash) {
            *n -= 1;
            if *n == 0 {
                state.keys.remove(&hash);
            }
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// An invalidation of what `selector` selects is under way; returns
    /// its id for [`Pending::end_selector`].
    pub(crate) fn begin_selector(&self, selector: Selector) -> u64 {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.selectors.push((id, selector));
        self.count.fetch_add(1, Ordering::SeqCst);
        id
    }

    pub(crate) fn end_selector(&self, id: u64) {
        let mut state = self.state();
        if let Some(i) = state.selectors.iter().position(|(s, _)| *s == id) {
            state.selectors.swap_remove(i);
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// How many invalidations are pending, keys and selectors together.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether an invalidation that may select `key` by its URL is
    /// pending. Tags are on the objects: a pending tag invalidation is
    /// checked on the object read ([`Pending::selects`]), so that it does
    /// not make every read a miss.
    pub(crate) fn contains(&self, key: &CacheKey) -> bool {
        if self.count.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let state = self.state();
        state.keys.contains_key(&key.hash())
            || state
                .selectors
                .iter()
                .any(|(_, s)| !matches!(s, Selector::Tags(_)) && s.may_select(key))
    }

    /// Whether a pending invalidation selects `object` (read from Redis).
    pub(crate) fn selects(&self, object: &Object) -> bool {
        if self.count.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let state = self.state();
        state.keys.contains_key(&object.key.hash())
            || state.selectors.iter().any(|(_, s)| s.selects(object))
    }
}

impl RedisTier {
    /// Invalidations not yet done in Redis (each key's and each
    /// selector's: this instance's, and the repeats of hard purges, its
    /// own and the fleet's, [`Self::repeat_behind_queued_writes`]).
    pub fn pending_invalidations(&self) -> usize {
        self.inner.core.invalidating.count()
    }

    /// Deletes (with `soft`, marks stale) what `selector` selects in Redis
    /// and tells the fleet, in a task of its own: an unsafe request's
    /// invalidation of a URL under a rule's key options, and its cascades.
    /// Until it is done, this instance reads what it selects as a miss
    /// (this module's marks; a soft-purged memory copy is then served
    /// stale and revalidated, never taken as revalidated elsewhere).
    ///
    /// It runs twice: at once, and again once every write lane has
    /// passed what was queued before it (a write of an entry it selects,
    /// queued earlier, may land after the first pass; one URL's
    /// invalidation goes through that URL's lane instead). Skipped while
    /// the breaker is open, and dropped (counted as a dropped write) past
    /// [`MAX_BACKGROUND_PURGES`] at once.
    pub fn purge_background(&self, selector: Selector, soft: bool) {
        let core = &self.inner.core;
        if core.breaker.is_open() {
            return;
        }
        let Ok(slot) = self.inner.background.clone().try_acquire_owned() else {
            core.metrics.redis_dropped_write();
            tracing::debug!(?selector, "too many invalidations under way: dropped");
            return;
        };
        // Ended however the task ends (a panic, the runtime stopping).
        let end = EndSelector(
            core.clone(),
            core.invalidating.begin_selector(selector.clone()),
        );
        let tier = self.clone();
        tokio::spawn(async move {
            let _held = (slot, end);
            let run = || async {
                if soft {
                    tier.soft_purge(&selector).await
                } else {
                    tier.purge(&selector).await
                }
            };
            if let Err(e) = run().await {
                tracing::debug!(?selector, soft, error = %e, "invalidation in redis failed");
            }
            if tier.flush(PURGE_CAP).await {
                if let Err(e) = run().await {
                    tracing::debug!(?selector, soft, error = %e, "invalidation in redis failed (after the queued writes)");
                }
            }
        });
    }

    /// The second half of an admin purge that has just deleted (or, with
    /// `soft`, marked) what `selector` selects in Redis and told the fleet:
    /// a write on its way then (this instance's, though `received` skips
    /// or undoes those, or another's whose purge message was still on the
    /// way) may land after it. One URL is deleted again through its own
    /// lane; a selector once every lane has passed what was queued, in
    /// Redis only (no second message to the fleet). Either way what it
    /// selects is read from Redis as a miss here meanwhile, never promoted
    /// (a tag's on the object read). Best effort: skipped while the
    /// breaker is open, dropped past [`MAX_BACKGROUND_PURGES`] under way.
    pub fn purge_behind_queued_writes(&self, selector: Selector, soft: bool) {
        if let (Selector::Key(key), false) = (&selector, soft) {
            return self.invalidate_background(key.clone());
        }
        self.repeat_behind_queued_writes(selector, soft);
    }

    /// Deletes (with `soft`, marks) what `selector` selects in Redis again,
    /// once every write lane has passed what was queued, telling no one;
    /// for a hard purge, until then (and for [`LINGER`] after) this
    /// instance reads what it selects from Redis as a miss. For a purge of
    /// this instance's (see [`Self::purge_behind_queued_writes`]) and for
    /// another instance's hard purge just received: one of our writes may
    /// have landed after its delete, before its message reached us.
    pub fn repeat_behind_queued_writes(&self, selector: Selector, soft: bool) {
        if self.inner.core.breaker.is_open() {
            return;
        }
        let Ok(slot) = self.inner.behind.clone().try_acquire_owned() else {
            tracing::debug!(?selector, "too many purges under way: not repeated");
            return;
        };
        // Until a hard purge's repeat is done this instance reads what it
        // selects from Redis as a miss: a write that landed after the
        // first pass (another instance's, as its purge message was on the
        // way) is then never promoted into memory here. Not a soft purge's:
        // a copy revalidated meanwhile by another instance is to be found.
        let core = &self.inner.core;
        let end = (!soft).then(|| {
            EndSelector(
                core.clone(),
                core.invalidating.begin_selector(selector.clone()),
            )
        });
        let tier = self.clone();
        tokio::spawn(async move {
            let _held = (slot, end);
            if !tier.flush(PURGE_CAP).await {
                return;
            }
            let core = &tier.inner.core;
            let done = if soft {
                core.soft_purge_redis(&selector, PURGE_CAP).await
            } else {
                core.purge_redis(&selector, PURGE_CAP).await
            };
            if let Err(e) = done {
                tracing::debug!(?selector, soft, error = %e, "purge behind the queued writes failed");
            }
            // Other instances repeat a hard purge as its message reaches
            // them: their copies may land until then.
            if !soft {
                tokio::time::sleep(LINGER).await;
            }
        });
    }
}

/// A [`RedisTier`] that does not keep it alive.
pub struct WeakRedisTier(std::sync::Weak<super::Inner>);

impl WeakRedisTier {
    pub fn upgrade(&self) -> Option<RedisTier> {
        self.0.upgrade().map(|inner| RedisTier { inner })
    }
}

impl RedisTier {
    /// A handle that does not keep the tier alive (its tasks stop when
    /// the last strong one goes).
    pub fn downgrade(&self) -> WeakRedisTier {
        WeakRedisTier(Arc::downgrade(&self.inner))
    }
}

/// How long after its repeat a purge still makes reads of what it
/// selects misses here ([`RedisTier::repeat_behind_queued_writes`]).
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// Ends a selector's pending invalidation when dropped.
struct EndSelector(Arc<Core>, u64);

impl Drop for EndSelector {
    fn drop(&mut self) {
        self.0.invalidating.end_selector(self.1);
    }
}

/// Background purges under way at once, of each kind
/// ([`RedisTier::purge_background`]; [`RedisTier::repeat_behind_queued_writes`],
/// for this instance's purges and the fleet's hard ones by selector).
pub(super) const MAX_BACKGROUND_PURGES: usize = 64;

#[cfg(test)]
mod tests {
    use super::Pending;
    use crate::cache::entry::Object;
    use crate::cache::key::CacheKey;
    use crate::cache::storage::Selector;

    #[test]
    fn a_key_is_pending_until_each_of_its_invalidations_ends() {
        let (one, two) = (
            CacheKey::new(false, "h", "/1"),
            CacheKey::new(false, "h", "/2"),
        );
        let p = Pending::default();
        assert!(!p.contains(&one));
        p.begin(one.hash());
        p.begin(one.hash());
        assert!(p.contains(&one) && !p.contains(&two));
        p.end(one.hash());
        assert!(p.contains(&one), "one of two still pending");
        p.end(one.hash());
        assert!(!p.contains(&one));
        p.end(one.hash());
        assert!(!p.contains(&one), "an extra end changes nothing");
        p.begin(two.hash());
        assert!(p.contains(&two) && !p.contains(&one));
    }

    #[test]
    fn a_selector_covers_what_it_may_select_until_it_ends() {
        let p = Pending::default();
        let id = p.begin_selector(Selector::Prefix("/p#".into()));
        assert!(p.contains(&CacheKey::new(false, "h", "/p#v1")));
        assert!(!p.contains(&CacheKey::new(false, "h", "/q")));
        p.end_selector(id);
        p.end_selector(id);
        assert!(!p.contains(&CacheKey::new(false, "h", "/p#v1")));
        let id = p.begin_selector(Selector::Tags(vec!["t".into()]));
        let key = CacheKey::new(false, "h", "/any");
        assert!(!p.contains(&key), "checked on the object read");
        let mut variant = crate::cache::entry::one_byte_variant(Default::default(), 0);
        let untagged = Object {
            key: key.clone(),
            variants: vec![std::sync::Arc::new(variant.clone())],
        };
        variant.tags = vec!["t".into()];
        let tagged = Object {
            key,
            variants: vec![std::sync::Arc::new(variant)],
        };
        assert!(p.selects(&tagged) && !p.selects(&untagged));
        p.end_selector(id);
        assert!(!p.selects(&tagged));
    }
}

//! Purges made here or received from the fleet, remembered for a moment
//! so that this instance's queued Redis writes never undo them.
//!
//! A write queued on a lane before another instance's purge reached this
//! one (an admission, a revalidation of a soft-purged copy) would land in
//! Redis after the purge had deleted there, and bring back the copy for
//! the whole fleet, the purging instance included. So each write job
//! carries the count of purges received when it was queued: a purge
//! received since that selects the object skips a write still queued,
//! and deletes again (in Redis only; the purging instance told the fleet)
//! one that was in flight meanwhile. What remains is the moment between
//! the purge's delete in Redis and its message reaching this instance.
//!
//! A resubscription after a gap (purges may have been missed) is recorded
//! as a purge of everything: the writes queued then are skipped, which
//! costs misses elsewhere, never a stale copy.
//!
//! Hand-written: a counter and a short log under a mutex, touched by a
//! write only when a purge arrived since it was queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::store::Core;
use crate::cache::entry::Object;
use crate::cache::key::CacheKey;
use crate::cache::storage::{Selector, SelectorLog, StorageError};

/// Purges remembered; a write queued before the oldest of them counts as
/// selected by one forgotten (skipping or deleting never serves stale).
const KEPT: usize = 256;

pub(crate) struct Received {
    /// Purges seen so far.
    count: AtomicU64,
    log: Mutex<SelectorLog>,
}

impl Default for Received {
    fn default() -> Received {
        Received {
            count: AtomicU64::new(0),
            log: Mutex::new(SelectorLog::new(KEPT)),
        }
    }
}

impl Received {
    /// Purges seen so far: what a write job carries when queued.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// A purge (hard or soft): this instance's own, before it deletes in
    /// Redis, or another instance's, before it is applied to the memory
    /// tier.
    pub(crate) fn record(&self, selector: &Selector) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let at = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        log.push(at, selector.clone());
    }

    /// Whether a purge seen after `since` (a [`Received::count`]) selects
    /// `object` (one forgotten counts).
    pub(crate) fn selects_since(&self, object: &Object, since: u64) -> bool {
        if self.count.load(Ordering::SeqCst) <= since {
            return false;
        }
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.since(since, true, |s| s.selects(object))
    }
}

impl Core {
    /// A write job of a lane: `object` written for `keep` unless a purge
    /// seen since it was `queued` (a [`Received::count`]) selects it;
    /// deleted again when one arrived while it was under way. Failures
    /// are counted and logged inside; a lost write is a miss.
    pub(crate) async fn put_unless_purged(&self, object: &Object, keep: Duration, queued: u64) {
        let received = &self.fleet.received;
        if received.selects_since(object, queued) {
            tracing::debug!(key = %object.key, "redis write skipped: purged since it was queued");
            return;
        }
        let _ = self.put(object, keep).await;
        if received.selects_since(object, queued) {
            // It may have landed after the purge's delete.
            tracing::debug!(key = %object.key, "redis write purged meanwhile: deleted again");
            let _ = self.delete_quietly(&object.key).await;
        }
    }

    /// Unindexes and deletes one object, telling no one (the purging
    /// instance told the fleet).
    async fn delete_quietly(&self, key: &CacheKey) -> Result<u64, StorageError> {
        self.purge_redis(&Selector::Key(key.clone()), self.limits.write)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::CacheKey;

    fn object(path: &str) -> Object {
        Object {
            key: CacheKey::new(false, "h", path),
            variants: Vec::new(),
        }
    }

    #[test]
    fn only_purges_since_the_write_was_queued_and_selecting_it_count() {
        let r = Received::default();
        let queued = r.count();
        assert!(!r.selects_since(&object("/a/1"), queued));
        r.record(&Selector::Prefix("/b/".into()));
        assert!(!r.selects_since(&object("/a/1"), queued));
        r.record(&Selector::Prefix("/a/".into()));
        assert!(r.selects_since(&object("/a/1"), queued));
        // Queued after both: neither counts.
        assert!(!r.selects_since(&object("/a/1"), r.count()));
        // A write older than every purge remembered counts as selected.
        let old = r.count();
        for _ in 0..=KEPT {
            r.record(&Selector::Prefix("/z/".into()));
        }
        assert!(r.selects_since(&object("/a/1"), old));
        assert!(!r.selects_since(&object("/a/1"), r.count() - 1));
    }
}

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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use super::index::{member, Keys};
use super::store::Core;
use crate::cache::entry::Object;
use crate::cache::key::CacheKey;
use crate::cache::storage::{Selector, StorageError};

/// Purges remembered; a write queued before the oldest of them counts as
/// selected by one forgotten (skipping or deleting never serves stale).
const KEPT: usize = 256;

#[derive(Default)]
pub(crate) struct Received {
    /// Purges received so far.
    count: AtomicU64,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// `(count once received, selector)`, oldest first.
    recent: VecDeque<(u64, Selector)>,
    /// The count of the newest purge no longer in `recent`.
    forgotten: u64,
}

impl Received {
    /// Purges received so far: what a write job carries when queued.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// A purge (hard or soft): this instance's own, before it deletes in
    /// Redis, or another instance's, before it is applied to the memory
    /// tier.
    pub(crate) fn record(&self, selector: &Selector) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let at = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        log.recent.push_back((at, selector.clone()));
        if log.recent.len() > KEPT {
            if let Some((old, _)) = log.recent.pop_front() {
                log.forgotten = old;
            }
        }
    }

    /// Whether a purge received after `since` (a [`Received::count`])
    /// selects `object`.
    pub(crate) fn selects_since(&self, object: &Object, since: u64) -> bool {
        if self.count.load(Ordering::SeqCst) <= since {
            return false;
        }
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.forgotten > since
            || log
                .recent
                .iter()
                .any(|(at, s)| *at > since && s.selects(object))
    }
}

impl Core {
    /// A write job of a lane: `object` written for `keep` unless a fleet
    /// purge received since it was `queued` (a [`Received::count`])
    /// selects it; deleted again when one arrived while it was under way.
    /// Failures are counted and logged inside; a lost write is a miss.
    pub(crate) async fn put_unless_purged(&self, object: &Object, keep: Duration, queued: u64) {
        let received = &self.fleet.received;
        if received.selects_since(object, queued) {
            tracing::debug!(key = %object.key, "redis write skipped: purged by the fleet since it was queued");
            return;
        }
        let _ = self.put(object, keep).await;
        if received.selects_since(object, queued) {
            // It may have landed after the purge's delete.
            tracing::debug!(key = %object.key, "redis write purged by the fleet meanwhile: deleted again");
            let _ = self.delete_quietly(&object.key).await;
        }
    }

    /// Unindexes and deletes one object, telling no one (the purging
    /// instance told the fleet).
    async fn delete_quietly(&self, key: &CacheKey) -> Result<(), StorageError> {
        let gate = self.permit()?;
        let object_key = self.keys.object(key);
        let unindex = self
            .keys
            .paths_remove(&[Bytes::from(member(key.path(), &object_key))]);
        self.run("delete", self.limits.write, gate, |mut c| async move {
            unindex.query_async::<Value>(&mut c).await?;
            Keys::delete(object_key.as_bytes())
                .query_async::<Value>(&mut c)
                .await?;
            Ok(())
        })
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

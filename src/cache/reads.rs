//! Reads of the Redis tier on this cache's behalf, and the copies they
//! promote into memory: coalesced lookups after a memory miss
//! ([`Cache::lookup`]), warming, and the lookups a soft-purged or vary-missed
//! memory entry makes. Every copy goes into memory through
//! [`MemoryTier::promote`](super::memory::MemoryTier::promote), so a read
//! that overlapped a purge of its URL never puts the purged copy back.

use std::sync::Arc;
use std::time::Duration;

use super::collapse::{Flight, Locked};
use super::entry::Object;
use super::key::CacheKey;
use super::redis::RedisTier;
use super::{storage, Cache};

/// How many times a lookup joins or leads a Redis read of its URL before
/// it takes a miss: a leader that leaves (its client went away) or whose
/// answer may predate a purge sends its waiters to read again.
const REDIS_READ_TRIES: usize = 3;

/// How much longer than the Redis timeout a lookup waits for the read it
/// joined (the leader's read is bounded by the timeout itself).
const REDIS_READ_SLACK: Duration = Duration::from_millis(50);

impl Cache {
    /// `key` read from Redis after a memory miss, and promoted into memory.
    ///
    /// Concurrent reads of one URL are coalesced: the first request
    /// (the leader) sends the `GET`; the others wait for its answer, at
    /// most the Redis timeout and a little more, and share the decoded
    /// object. A hot URL costs Redis one read per round trip, not one per
    /// request: the hot-key load on one Cluster shard, and the per-hit
    /// decoding, when the memory tier does not hold it (`memory_capacity`
    /// small or `0`). A leader's error or miss is every waiter's miss.
    ///
    /// A purge that removes the URL while its read is in flight may have
    /// come after Redis answered: the answer is then served to the
    /// leader's own request (which overlapped the purge) but neither
    /// promoted into memory (`MemoryTier::promote`) nor handed to the
    /// waiters, which read again.
    /// (A hard purge removes from Redis before memory, see
    /// `cache/purge.rs`, so every read that can have seen the purged copy
    /// overlaps the memory removal.)
    pub(super) async fn read_redis(&self, redis: &RedisTier, key: CacheKey) -> Option<Arc<Object>> {
        let memory = &self.inner.memory;
        for _ in 0..REDIS_READ_TRIES {
            // A leader's, read before its `GET` leaves; a waiter checks the
            // leader's instead (`Flight::Found`).
            let epoch = memory.removal_epoch();
            let lock = match self.inner.redis_reads.lock(key.hash()) {
                Locked::Write(lock) => lock,
                Locked::Read(read) => {
                    match read.wait(redis.read_timeout() + REDIS_READ_SLACK).await {
                        Some(Flight::Found { object, epoch }) => {
                            if memory.removed_since(&object, epoch) {
                                // A purge completed after the leader's
                                // read began: its copy may be the purged
                                // one.
                                continue;
                            }
                            if object.key != key {
                                // Another URL of the same hash (never seen).
                                return None;
                            }
                            self.inner.metrics.redis_coalesced();
                            return Some(object);
                        }
                        // The leader left or its answer may predate a purge.
                        Some(Flight::Abandoned) => continue,
                        Some(Flight::Released | Flight::Failed { .. } | Flight::Stored(_))
                        | None => return None,
                    }
                }
            };
            let found = match redis.get(&key).await {
                Ok(found) => found,
                Err(e) => {
                    // Counted by the tier; a Redis problem is only ever a miss.
                    tracing::debug!(key = %key, error = %e, "redis lookup failed: miss");
                    None
                }
            };
            match &found {
                Some(o) if memory.promote(o, epoch) => lock.publish(Flight::Found {
                    object: o.clone(),
                    epoch,
                }),
                // A removal overlapped the read: the copy is served to this
                // request only; dropping the lock sends the waiters back.
                Some(_) => {}
                None => lock.publish(Flight::Released),
            }
            return found;
        }
        None
    }

    /// Copies `key`'s object from Redis into memory (no upstream request);
    /// `Ok(false)` when memory already has it or Redis does not.
    pub async fn warm_from_redis(&self, key: &CacheKey) -> Result<bool, storage::StorageError> {
        if self.inner.memory.get_key(key).is_some() {
            return Ok(false);
        }
        let Some(redis) = &self.inner.redis else {
            return Ok(false);
        };
        let epoch = self.inner.memory.removal_epoch();
        match redis.get(key).await? {
            Some(object) => Ok(self.inner.memory.promote(&object, epoch)),
            None => Ok(false),
        }
    }

    /// A soft-purged object in memory may have been revalidated by another
    /// instance already: the Redis copy, promoted into memory, when it is no
    /// longer soft-purged. Only soft-purged entries pay for this lookup.
    pub async fn revalidated_elsewhere(&self, key: &CacheKey) -> Option<Arc<Object>> {
        let redis = self.inner.redis.as_ref()?;
        let epoch = self.inner.memory.removal_epoch();
        match redis.get(key).await {
            Ok(Some(object)) if !object.is_soft_purged() => {
                // Not when a purge overlapped the read: it may be its copy.
                self.inner.memory.promote(&object, epoch).then_some(object)
            }
            _ => None,
        }
    }

    /// Variants this instance lacks may be in Redis, stored by other
    /// instances: the memory `object` with those added (and promoted into
    /// memory), so that a request for one is a Redis hit and a variant
    /// fetched here is written back beside them, not over them. Only a
    /// memory entry without the request's variant (a vary miss) pays for
    /// this lookup. `None` without Redis or when it adds nothing.
    pub async fn variants_elsewhere(&self, object: &Object) -> Option<Arc<Object>> {
        let redis = self.inner.redis.as_ref()?;
        let epoch = self.inner.memory.removal_epoch();
        let theirs = redis.get(&object.key).await.ok()??;
        let merged = Arc::new(object.with_missing_from(&theirs)?);
        self.inner.memory.promote(&merged, epoch).then_some(merged)
    }
}

//! Invalidations queued for Redis and not yet done there.
//!
//! An unsafe request's invalidation (RFC 9111 §4.4) deletes the URL's
//! object in Redis off the request path, through the key's write lane
//! (`RedisTier::invalidate_background`), so that it stays in order with the
//! key's writes. Until the lane has done it, Redis still holds the old
//! object; a read of that key from this instance is a miss instead, so a
//! client that reads after its own write never gets the copy it
//! invalidated. Other instances learn of it when the lane publishes it.
//!
//! Costs a Redis read one relaxed load while nothing is pending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Pending {
    /// How many invalidations are pending, over all keys.
    count: AtomicUsize,
    /// Pending invalidations per key hash.
    keys: Mutex<HashMap<u128, u32>>,
}

impl Pending {
    /// An invalidation of `hash` is queued.
    pub(crate) fn begin(&self, hash: u128) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        *keys.entry(hash).or_default() += 1;
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// An invalidation of `hash` is done (or failed, or was dropped).
    pub(crate) fn end(&self, hash: u128) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = keys.get_mut(&hash) {
            *n -= 1;
            if *n == 0 {
                keys.remove(&hash);
            }
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether an invalidation of `hash` is pending.
    pub(crate) fn contains(&self, hash: u128) -> bool {
        self.count.load(Ordering::SeqCst) > 0
            && self
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&hash)
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn a_key_is_pending_until_each_of_its_invalidations_ends() {
        let p = Pending::default();
        assert!(!p.contains(1));
        p.begin(1);
        p.begin(1);
        assert!(p.contains(1) && !p.contains(2));
        p.end(1);
        assert!(p.contains(1), "one of two still pending");
        p.end(1);
        assert!(!p.contains(1));
        p.end(1);
        assert!(!p.contains(1), "an extra end changes nothing");
        p.begin(2);
        assert!(p.contains(2) && !p.contains(1));
    }
}

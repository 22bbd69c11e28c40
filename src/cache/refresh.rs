//! When a stored copy is revalidated in the background: its hits, for
//! refresh-ahead (`[cache] prefresh`), and the back-off after a failed
//! background refresh. Both live on the [`Variant`](super::entry::Variant)
//! as one atomic each, so a hit reads or counts them without a lock or an
//! allocation; a copy of a variant starts both afresh.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::freshness::Millis;

/// Hits on one stored copy of a response: one relaxed atomic add per hit,
/// and only while refresh-ahead (`[cache] prefresh`) is on. A copy (a
/// refreshed or soft-purged variant) starts again from zero.
#[derive(Debug, Default)]
pub struct HitCount(AtomicU32);

impl HitCount {
    /// Counts one hit; returns the count including it.
    pub fn add(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Clone for HitCount {
    fn clone(&self) -> HitCount {
        HitCount::default()
    }
}

/// The back-off of one stored copy's background refresh
/// (stale-while-revalidate, refresh-ahead, soft purge): after a refresh
/// that failed (the upstream unreachable, a `5xx`, no room to collect the
/// answer), no other starts before a moment (Unix milliseconds), so a
/// failing origin gets one refresh per back-off, not one per hit. One
/// relaxed atomic load per refreshing hit; a copy (a refreshed or
/// soft-purged variant) starts without one.
///
/// It also remembers when the first refresh failed, so that a
/// soft-purged copy stands in for a failing origin only for a while
/// (`proxy/lookup.rs`).
#[derive(Debug, Default)]
pub struct RefreshBackoff {
    until: AtomicU64,
    /// When the first refresh failed (Unix milliseconds); 0: none has.
    failed_since: AtomicU64,
}

impl RefreshBackoff {
    /// A refresh failed at `now`: no other before `until` (Unix
    /// milliseconds).
    pub fn hold_until(&self, now: Millis, until: Millis) {
        self.until.store(until, Ordering::Relaxed);
        let _ =
            self.failed_since
                .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether a refresh may not start at `now` (Unix milliseconds).
    pub fn holds(&self, now: Millis) -> bool {
        now < self.until.load(Ordering::Relaxed)
    }

    /// Milliseconds since the first failed refresh, if one failed.
    pub fn failing_for(&self, now: Millis) -> Option<Millis> {
        match self.failed_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now.saturating_sub(since)),
        }
    }
}

impl Clone for RefreshBackoff {
    fn clone(&self) -> RefreshBackoff {
        RefreshBackoff::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_back_off_holds_until_its_moment_and_is_not_copied() {
        let b = RefreshBackoff::default();
        assert!(!b.holds(1_000), "none at first");
        assert_eq!(b.failing_for(1_000), None);
        b.hold_until(1_000, 2_000);
        assert!(b.holds(1_999));
        assert!(!b.holds(2_000));
        b.hold_until(2_500, 3_000);
        assert_eq!(b.failing_for(3_000), Some(2_000), "since the first failure");
        assert!(!b.clone().holds(1_999), "a copy starts without one");
        assert_eq!(b.clone().failing_for(3_000), None);
    }
}

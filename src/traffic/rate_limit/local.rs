//! One instance's GCRA for a limit (`backend = "local"`, and the fallback
//! of `backend = "redis"`): the `governor` crate's keyed limiter, on a
//! state store this module keeps a second handle to, so that a charge can
//! be taken back ([`Local::refund`]) when a later limit refuses the same
//! request (governor itself has no way to undo a charge).
//!
//! The key map is bounded: [`Local::sweep`] drops keys whose budget is full
//! again, and a map that holds more than [`MAX_KEYS`] keys is swept at once
//! and, if that is not enough, started afresh.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimitConfig;

/// Keys one local limiter may hold before it is swept on the spot.
pub const MAX_KEYS: usize = 100_000;
/// Checks between two looks at a limiter's size.
pub(super) const SIZE_CHECK_EVERY: u64 = 1024;

/// governor's DashMap state (per key, the theoretical arrival time in
/// nanoseconds since the limiter's start) behind an `Arc`: the limiter
/// holds one handle, [`Gcra::store`] the other.
#[derive(Clone, Default)]
struct Store(Arc<DashMapStateStore<u64>>);

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// A keyed limiter and a handle on its state.
struct Gcra {
    limiter: RateLimiter<u64, Store, DefaultClock>,
    store: Store,
}

impl Gcra {
    fn new(quota: Quota) -> Gcra {
        let store = Store::default();
        Gcra {
            limiter: RateLimiter::new(quota, store.clone(), DefaultClock::default()),
            store,
        }
    }
}

/// One instance's local GCRA state for a limit; kept across reloads while
/// the limit's name, key, rate and burst stay the same.
pub(super) struct Local {
    gcra: ArcSwap<Gcra>,
    quota: Quota,
    /// The emission interval (one request's worth of budget).
    interval: Nanos,
    checks: AtomicU64,
    name: String,
}

impl Local {
    /// `None` when the rate or burst is zero (config validation refuses
    /// both).
    pub(super) fn new(config: &RateLimitConfig) -> Option<Local> {
        let period = (config.per / config.rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(config.burst)?);
        Some(Local {
            gcra: ArcSwap::from_pointee(Gcra::new(quota)),
            quota,
            interval: Nanos::from(u64::try_from(period.as_nanos()).unwrap_or(u64::MAX)),
            checks: AtomicU64::new(0),
            name: config.name.clone(),
        })
    }

    /// Charges one request to `key`: `None` when allowed, else the wait
    /// until the next allowed request (a refused request is not charged).
    pub(super) fn check(&self, key: u64) -> Option<Duration> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SIZE_CHECK_EVERY)
        {
            self.bound();
        }
        let gcra = self.gcra.load();
        match gcra.limiter.check_key(&key) {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(gcra.limiter.clock().now())),
        }
    }

    /// Takes back one request [`Local::check`] allowed for `key`: its
    /// theoretical arrival time moves back one interval, to where it was
    /// (or, for a budget that was full, to the charge's time, which is as
    /// full). Charges made in between are kept (they commute). After a
    /// reset of the map in between there is nothing to take back.
    pub(super) fn refund(&self, key: u64) {
        let interval = self.interval;
        let _ = self
            .gcra
            .load()
            .store
            .measure_and_replace(&key, |tat| match tat {
                Some(tat) => Ok(((), tat.saturating_sub(interval))),
                None => Err(()),
            });
    }

    /// Drops keys whose budget is full again.
    pub(super) fn sweep(&self) {
        let gcra = self.gcra.load();
        gcra.limiter.retain_recent();
        gcra.limiter.shrink_to_fit();
    }

    fn bound(&self) {
        if self.len() <= MAX_KEYS {
            return;
        }
        self.sweep();
        if self.len() > MAX_KEYS {
            tracing::warn!(
                limit = %self.name,
                max_keys = MAX_KEYS,
                "rate limit tracks too many distinct keys: state reset"
            );
            self.gcra.store(Arc::new(Gcra::new(self.quota)));
        }
    }

    /// Keys held.
    pub(super) fn len(&self) -> usize {
        self.gcra.load().limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(rate: &str, burst: u32) -> Local {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nservers = [\"127.0.0.1:1\"]\n\
             [[rate_limits]]\nname = \"l\"\nrate = \"{rate}\"\nburst = {burst}\n"
        );
        let c = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        Local::new(&c.rate_limits[0]).unwrap()
    }

    #[test]
    fn a_refund_gives_back_exactly_one_request() {
        let l = local("1/h", 3);
        for _ in 0..3 {
            assert_eq!(l.check(7), None);
        }
        assert!(l.check(7).is_some(), "burst spent");
        l.refund(7);
        assert_eq!(l.check(7), None, "one back");
        assert!(l.check(7).is_some(), "only one");
        // Refunding everything leaves a full budget, never more.
        for _ in 0..10 {
            l.refund(7);
        }
        for _ in 0..3 {
            assert_eq!(l.check(7), None);
        }
        assert!(l.check(7).is_some());
        // A key never charged has nothing to take back.
        l.refund(8);
        assert_eq!(l.check(8), None);
    }
}

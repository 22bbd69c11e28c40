//! One instance's GCRA for a limit (`backend = "local"`, and the fallback
//! of `backend = "redis"`): the `governor` crate's keyed limiter, on a
//! state store of our own: per key, governor's [`InMemoryState`] in a
//! `moka` cache, which this module keeps a second handle to, so that a
//! charge can be taken back ([`Local::refund`]) when a later limit refuses
//! the same request (governor itself has no way to undo a charge).
//!
//! The key map is bounded by moka, not by hand: at most [`MAX_KEYS`] keys,
//! and a key idle for `burst` emission intervals goes (its budget is full
//! again, as if it had never been seen). Past the bound moka's TinyLFU
//! policy forgets the least used keys, so a flood of one-off keys (junk
//! header values, spoofed addresses through a trusted proxy) cannot push
//! out a client that keeps asking and is being limited: nginx's
//! `limit_req` evicts its least recently used states in the same spirit.
//! It used to reset every key at once past the bound, freeing every
//! limited client (rate-limit probe).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;

use crate::config::RateLimitConfig;

/// Keys one local limiter holds at most.
pub const MAX_KEYS: u64 = 100_000;

/// Per key, the theoretical arrival time (nanoseconds since the limiter's
/// start) in governor's atomic cell; the limiter holds one handle,
/// [`Local`] the other.
#[derive(Clone)]
struct Store(Cache<u64, Arc<InMemoryState>>);

impl Store {
    /// `idle`: how long a key may go unused before it is forgotten.
    fn new(idle: Duration) -> Store {
        Store(
            Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_idle(idle)
                .build(),
        )
    }
}

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0
            .get_with(*key, || Arc::new(InMemoryState::default()))
            .measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// One instance's local GCRA state for a limit; kept across reloads while
/// the limit's name, key, rate and burst stay the same.
pub(super) struct Local {
    limiter: RateLimiter<u64, Store, DefaultClock>,
    store: Store,
    /// The emission interval (one request's worth of budget).
    interval: Nanos,
    name: String,
}

impl Local {
    /// `None` when the rate or burst is zero (config validation refuses
    /// both).
    pub(super) fn new(config: &RateLimitConfig) -> Option<Local> {
        let period = (config.per / config.rate).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(config.burst)?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        // After `burst` intervals unused a key's budget is full again.
        let idle = period
            .saturating_mul(burst.get())
            .max(Duration::from_secs(1));
        let store = Store::new(idle);
        Some(Local {
            limiter: RateLimiter::new(quota, store.clone(), DefaultClock::default()),
            store,
            interval: Nanos::from(u64::try_from(period.as_nanos()).unwrap_or(u64::MAX)),
            name: config.name.clone(),
        })
    }

    /// Charges one request to `key`: `None` when allowed, else the wait
    /// until the next allowed request (a refused request is not charged).
    pub(super) fn check(&self, key: u64) -> Option<Duration> {
        match self.limiter.check_key(&key) {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }

    /// Takes back one request [`Local::check`] allowed for `key`: its
    /// theoretical arrival time moves back one interval, to where it was
    /// (or, for a budget that was full, to the charge's time, which is as
    /// full). Charges made in between are kept (they commute). A key
    /// forgotten in between has nothing to take back.
    pub(super) fn refund(&self, key: u64) {
        let interval = self.interval;
        if let Some(state) = self.store.0.get(&key) {
            let _ = state.measure_and_replace(&NotKeyed::NonKey, |tat| match tat {
                Some(tat) => Ok(((), tat.saturating_sub(interval))),
                None => Err(()),
            });
        }
    }

    /// Lets moka drop the keys idle past their budget's refill and evict
    /// past [`MAX_KEYS`] now (it also does so as it is used), and says so
    /// when the limit is at its bound.
    pub(super) fn sweep(&self) {
        if self.len() as u64 >= MAX_KEYS {
            tracing::warn!(
                limit = %self.name,
                max_keys = MAX_KEYS,
                "rate limit tracks as many distinct keys as it may: the least used are forgotten"
            );
        }
    }

    /// Keys held, once moka has done its pending work (evictions,
    /// expiries), which this runs first.
    pub(super) fn len(&self) -> usize {
        self.store.0.run_pending_tasks();
        usize::try_from(self.store.0.entry_count()).unwrap_or(usize::MAX)
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

//! The Redis circuit breaker: after `threshold` consecutive failures Redis
//! is skipped for `backoff` (every operation is an instant miss), then one
//! probe is let through (half-open); its success closes the breaker, its
//! failure opens it for another `backoff`. Only the probe decides: an
//! operation admitted before the breaker opened (or one run without a
//! permit) that ends while it is open changes nothing, whether it failed or
//! succeeded (a slow Redis answering some calls within the bound and not
//! others would otherwise close and reopen it many times a second).
//!
//! A failed probe gets one second chance [`REPROBE`] later: the first
//! command a client sends after Redis restarts fails on the connection the
//! old server dropped, and only that failure makes redis-rs reconnect
//! (measured: the breaker closed two backoffs after opening, not one). While
//! Redis stays down this costs one extra fast failure per backoff.
//!
//! An operation asks for a [`Permit`] and reports its outcome on it. A
//! permit dropped without an outcome (the caller's future was cancelled)
//! counts as nothing, except that a dropped probe lets the next caller
//! probe at once, so the breaker can never stay half-open for good.
//!
//! State changes are logged, exported as `strata_redis_breaker_open`,
//! raised as alerts (`redis_breaker_open`, `redis_breaker_closed`), and
//! each opening is counted (`strata_redis_breaker_opens_total`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::alerts::{Alerts, Event};
use crate::metrics::Metrics;

/// How soon a failed probe is repeated once, before a whole backoff.
pub(crate) const REPROBE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// Skipping Redis until `until`; `reprobe`: a failure of the next
    /// probe is retried after [`REPROBE`] instead of a whole backoff.
    Open {
        until: Instant,
        reprobe: bool,
    },
    HalfOpen {
        reprobe: bool,
    },
}

pub(crate) struct Breaker {
    state: Mutex<State>,
    /// Mirrors "not closed" for lock-free reads by `breaker_open()`.
    open: AtomicBool,
    threshold: u32,
    backoff: Duration,
    metrics: Metrics,
    alerts: Alerts,
}

/// Leave to talk to Redis once; report the outcome with [`Permit::success`]
/// or [`Permit::failure`].
#[must_use = "report the outcome on the permit"]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Breaker {
    pub(crate) fn new(
        threshold: u32,
        backoff: Duration,
        metrics: Metrics,
        alerts: Alerts,
    ) -> Breaker {
        metrics.redis_breaker(false);
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            open: AtomicBool::new(false),
            threshold: threshold.max(1),
            backoff,
            metrics,
            alerts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value, always valid: a panic elsewhere while
        // holding the lock cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether Redis is currently being skipped (open or half-open).
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// A permit, or `None` while the breaker is open (or a probe is out).
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        if !self.is_open() {
            return Some(Permit {
                breaker: self,
                probe: false,
                done: false,
            });
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Some(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            State::Open { until, reprobe } if Instant::now() >= until => {
                *state = State::HalfOpen { reprobe };
                tracing::debug!("redis circuit breaker half-open: probing");
                Some(Permit {
                    breaker: self,
                    probe: true,
                    done: false,
                })
            }
            State::Open { .. } | State::HalfOpen { .. } => None,
        }
    }

    /// Records an outcome of an operation that ran without a permit (an
    /// admin purge, which is tried even while the breaker is open): counted
    /// while the breaker is closed, never the probe's. Returns whether this
    /// outcome opened the breaker.
    pub(crate) fn record(&self, ok: bool) -> bool {
        if ok {
            self.on_success(false);
            false
        } else {
            self.on_failure(false)
        }
    }

    /// Resets the failure count; closes the breaker when `probe` is the
    /// half-open probe's success.
    fn on_success(&self, probe: bool) {
        let mut state = self.lock();
        let was_open = match *state {
            State::Closed { .. } => false,
            State::HalfOpen { .. } if probe => true,
            // Only the probe decides; a late success of an operation
            // admitted before the breaker opened changes nothing.
            State::HalfOpen { .. } | State::Open { .. } => return,
        };
        *state = State::Closed { failures: 0 };
        drop(state);
        if was_open {
            self.open.store(false, Ordering::Relaxed);
            self.metrics.redis_breaker(false);
            tracing::info!("redis circuit breaker closed: Redis answers again");
            self.alerts.emit(
                Event::RedisBreakerClosed,
                "Redis answers again: the shared tier is back",
                &[],
            );
        }
    }

    /// Returns whether this failure opened the breaker (from closed).
    fn on_failure(&self, probe: bool) -> bool {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    Some(false)
                } else {
                    *state = State::Closed { failures };
                    None
                }
            }
            // Only the probe decides; a late failure of an operation
            // admitted before the breaker opened changes nothing.
            State::HalfOpen { reprobe } if probe => Some(reprobe),
            State::HalfOpen { .. } | State::Open { .. } => None,
        };
        let Some(soon) = open else {
            return false;
        };
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Open {
            until: Instant::now()
                + if soon {
                    REPROBE.min(self.backoff)
                } else {
                    self.backoff
                },
            reprobe: !soon,
        };
        drop(state);
        if was_closed {
            self.open.store(true, Ordering::Relaxed);
            self.metrics.redis_breaker(true);
            self.metrics.redis_breaker_opened();
            tracing::warn!(
                threshold = self.threshold,
                backoff_ms = self.backoff.as_millis() as u64,
                "redis circuit breaker open: skipping Redis"
            );
            self.alerts.emit(
                Event::RedisBreakerOpen,
                format!(
                    "Redis failed {} times in a row: skipped (memory tier only), probed every {:?}",
                    self.threshold, self.backoff
                ),
                &[],
            );
        } else {
            tracing::debug!(
                retry_ms = if soon { REPROBE } else { self.backoff }.as_millis() as u64,
                "redis circuit breaker probe failed: staying open"
            );
        }
        was_closed
    }

    /// A probe that never reported: let the next caller probe at once.
    fn on_abandoned_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { reprobe } = *state {
            *state = State::Open {
                until: Instant::now(),
                reprobe,
            };
        }
    }
}

impl Permit<'_> {
    pub(crate) fn success(mut self) {
        self.done = true;
        self.breaker.on_success(self.probe);
    }

    /// Returns whether this failure opened the breaker.
    pub(crate) fn failure(mut self) -> bool {
        self.done = true;
        self.breaker.on_failure(self.probe)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.on_abandoned_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(backoff_ms: u64) -> Breaker {
        Breaker::new(
            3,
            Duration::from_millis(backoff_ms),
            Metrics::new(),
            Alerts::disabled(),
        )
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = breaker(10_000);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert!(!b.is_open(), "a success resets the count");
        b.try_acquire().unwrap().failure();
        assert!(b.is_open());
        assert!(b.try_acquire().is_none());
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let b = breaker(0);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert!(b.is_open());
        let probe = b.try_acquire().expect("backoff elapsed: probe");
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        probe.failure();
        assert!(b.is_open());
        let probe = b.try_acquire().expect("probe again");
        probe.success();
        assert!(!b.is_open());
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn abandoned_probe_does_not_wedge() {
        let b = breaker(0);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        drop(b.try_acquire().expect("probe"));
        b.try_acquire().expect("next caller probes").success();
        assert!(!b.is_open());
    }

    #[test]
    fn late_failures_do_not_extend_the_backoff() {
        let b = breaker(50);
        let late: Vec<_> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
        let mut late = late.into_iter();
        for p in late.by_ref().take(3) {
            p.failure();
        }
        let before = *b.lock();
        assert!(
            matches!(before, State::Open { reprobe: true, .. }),
            "{before:?}"
        );
        late.next().unwrap().failure();
        assert_eq!(*b.lock(), before);
    }

    /// Black-box finding F1: with replies jittering around the timeout, an
    /// operation admitted before the breaker opened (or one without a
    /// permit) that succeeded afterwards closed it at once, with no probe:
    /// 65 openings and 65 alert pairs in 10 s. Only the probe closes it.
    #[test]
    fn late_successes_do_not_close_the_breaker() {
        let b = breaker(60_000);
        let mut late: Vec<_> = (0..5).map(|_| b.try_acquire().unwrap()).collect();
        for p in late.drain(..3) {
            p.failure();
        }
        let before = *b.lock();
        assert!(matches!(before, State::Open { .. }), "{before:?}");
        late.pop().unwrap().success();
        assert!(!b.record(true), "a success opens nothing");
        assert_eq!(*b.lock(), before, "open until the backoff has passed");
        assert!(b.is_open());
        assert!(b.try_acquire().is_none());
        // Half-open: the probe is out; a late success still decides nothing.
        *b.lock() = State::Open {
            until: Instant::now(),
            reprobe: true,
        };
        let probe = b.try_acquire().expect("backoff elapsed: probe");
        late.pop().unwrap().success();
        b.record(true);
        assert_eq!(*b.lock(), State::HalfOpen { reprobe: true });
        assert!(b.is_open());
        probe.success();
        assert_eq!(*b.lock(), State::Closed { failures: 0 });
        assert!(!b.is_open());
    }

    #[test]
    fn a_failed_probe_is_repeated_once_soon_then_after_a_backoff() {
        let b = breaker(60_000);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        let open = |b: &Breaker| match *b.lock() {
            State::Open { until, reprobe } => (until, reprobe),
            s => panic!("{s:?}"),
        };
        // Let the backoff elapse.
        let (_, reprobe) = open(&b);
        *b.lock() = State::Open {
            until: Instant::now(),
            reprobe,
        };
        let before = Instant::now();
        b.try_acquire().expect("first probe").failure();
        let (until, reprobe) = open(&b);
        assert!(!reprobe);
        assert!(until <= Instant::now() + REPROBE, "second probe soon");
        assert!(until >= before + REPROBE);
        *b.lock() = State::Open {
            until: Instant::now(),
            reprobe,
        };
        b.try_acquire().expect("second probe").failure();
        let (until, reprobe) = open(&b);
        assert!(
            reprobe,
            "the next backoff's probe gets its second chance again"
        );
        assert!(
            until >= Instant::now() + Duration::from_secs(59),
            "a whole backoff"
        );
    }
}

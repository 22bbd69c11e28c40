//! One upstream server's live state: health (active checks and passive
//! failures), drain, requests in flight and the slow-start ramp.
//!
//! Health counts two runs of failures, each `unhealthy_threshold` long at
//! most: failed checks (reset by a successful check) and connect failures
//! of proxied requests (reset by a successful check or by any answer from
//! the server, as nginx's `max_fails`). An answer does not reset the failed
//! checks: a check judges the app's own verdict (`/health` answering 503
//! to leave rotation), which traffic it still serves does not overrule.
//!
//! State is atomics only, so choosing a server takes no lock on it. The
//! state outlives a reload for servers that stay configured (the new pool
//! takes the same `Arc`), so health, drain and an ongoing ramp carry over.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::config::HealthConfig;

/// Milliseconds since a process-wide epoch (monotonic), plus one so that
/// zero can mean "never".
fn now_ticks() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

/// One upstream server and its state.
#[derive(Debug)]
pub struct ServerState {
    pub authority: Authority,
    healthy: AtomicBool,
    /// Set by `POST /upstreams/drain`: no new requests.
    draining: AtomicBool,
    /// Requests sent and waiting for their response head.
    in_flight: AtomicUsize,
    /// Consecutive failed checks while healthy.
    failed_checks: AtomicU32,
    /// Consecutive connect failures while healthy, with no answer from the
    /// server between them.
    failed_connects: AtomicU32,
    /// Consecutive successful checks while unhealthy.
    successes: AtomicU32,
    /// When the server (re)entered rotation ([`now_ticks`]); 0 = at start.
    since: AtomicU64,
}

impl ServerState {
    pub fn new(authority: Authority) -> ServerState {
        ServerState {
            authority,
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            failed_checks: AtomicU32::new(0),
            failed_connects: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            since: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether new requests may go to this server: healthy and not drained.
    pub fn is_eligible(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    /// Drains (true) or undrains the server; returns the previous state.
    /// Undraining starts a slow-start ramp, as a recovery does.
    pub fn set_draining(&self, draining: bool) -> bool {
        let was = self.draining.swap(draining, Ordering::Relaxed);
        if was && !draining {
            self.mark_entered();
        }
        was
    }

    /// Requests waiting on this server's response head.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Starts the slow-start ramp now (a recovery, or added by a reload).
    pub fn mark_entered(&self) {
        self.since.store(now_ticks(), Ordering::Relaxed);
    }

    /// The share of its weight the server gets now, in thousandths: from
    /// [`RAMP_FLOOR`] right after it entered rotation up to 1000 once
    /// `slow_start` has passed (always 1000 when slow start is off).
    pub fn ramp(&self, slow_start: Duration) -> u64 {
        let since = self.since.load(Ordering::Relaxed);
        if since == 0 || slow_start.is_zero() {
            return 1000;
        }
        let elapsed = now_ticks().saturating_sub(since);
        let total = slow_start.as_millis().max(1) as u64;
        if elapsed >= total {
            return 1000;
        }
        RAMP_FLOOR + (1000 - RAMP_FLOOR) * elapsed / total
    }

    /// Records a failed check; returns true when this made it unhealthy.
    pub fn record_failure(&self, health: &HealthConfig) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failed_checks.fetch_add(1, Ordering::Relaxed) + 1;
        n >= health.unhealthy_threshold && self.leave()
    }

    /// Records a successful check (which ends both runs of failures);
    /// returns true when this made it healthy (and starts its slow-start
    /// ramp).
    pub fn record_success(&self, health: &HealthConfig) -> bool {
        self.failed_checks.store(0, Ordering::Relaxed);
        self.failed_connects.store(0, Ordering::Relaxed);
        if self.is_healthy() {
            return false;
        }
        let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        let back = n >= health.healthy_threshold && !self.healthy.swap(true, Ordering::Relaxed);
        if back {
            self.mark_entered();
        }
        back
    }

    /// Records a connect failure of a proxied request; returns true when
    /// it makes `unhealthy_threshold` in a row (the server should leave
    /// rotation: [`ServerState::leave`], unless it is the last one).
    pub fn record_connect_failure(&self, health: &HealthConfig) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failed_connects.fetch_add(1, Ordering::Relaxed) + 1;
        n >= health.unhealthy_threshold
    }

    /// Records an answer (a response head) from the server: connect
    /// failures before it were not consecutive. Writes only after a
    /// failure, so busy servers' answers do not contend on the counter.
    pub fn record_answer(&self) {
        if self.failed_connects.load(Ordering::Relaxed) != 0 {
            self.failed_connects.store(0, Ordering::Relaxed);
        }
    }

    /// Takes the server out of rotation; returns true when it was in.
    pub fn leave(&self) -> bool {
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// Puts back a server [`ServerState::leave`] just took out (the last
    /// one in rotation): no recovery, so no slow-start ramp; its run of
    /// failures stays, so the next failure tries again.
    pub fn stay(&self) {
        self.healthy.store(true, Ordering::Relaxed);
    }
}

/// The share (in thousandths of its weight) a server gets the moment it
/// re-enters rotation under slow start.
pub const RAMP_FLOOR: u64 = 50;

/// A request in flight on a server; dropping it ends the count.
pub struct InFlight<'a>(&'a ServerState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> HealthConfig {
        HealthConfig {
            enabled: true,
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            expect_status: Vec::new(),
        }
    }

    #[test]
    fn only_consecutive_failures_count() {
        let h = health();
        let s = ServerState::new("127.0.0.1:1".parse().unwrap());
        // Sporadic connect failures with answers between them: never three
        // in a row.
        for _ in 0..10 {
            assert!(!s.record_connect_failure(&h));
            s.record_answer();
        }
        assert!(!s.record_connect_failure(&h));
        assert!(!s.record_connect_failure(&h));
        assert!(s.record_connect_failure(&h), "three in a row");
        // A successful check ends the run too.
        s.record_success(&h);
        assert!(!s.record_connect_failure(&h));
        // Answers to proxied requests do not overrule failed checks.
        assert!(!s.record_failure(&h));
        s.record_answer();
        assert!(!s.record_failure(&h));
        s.record_answer();
        assert!(s.record_failure(&h));
        assert!(!s.is_healthy());
        // Back after `healthy_threshold` successes, a failure resetting them.
        assert!(!s.record_success(&h));
        assert!(!s.record_failure(&h));
        assert!(!s.record_success(&h));
        assert!(s.record_success(&h));
        assert!(s.is_healthy());
    }

    #[test]
    fn ramp_and_drain() {
        let s = ServerState::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(s.ramp(Duration::from_secs(10)), 1000);
        s.mark_entered();
        let r = s.ramp(Duration::from_secs(10));
        assert!((RAMP_FLOOR..RAMP_FLOOR + 20).contains(&r), "{r}");
        assert_eq!(s.ramp(Duration::ZERO), 1000);
        assert!(!s.set_draining(true));
        assert!(!s.is_eligible());
        assert!(s.set_draining(false));
        assert!(s.is_eligible());
        {
            let _a = s.begin();
            let _b = s.begin();
            assert_eq!(s.in_flight(), 2);
        }
        assert_eq!(s.in_flight(), 0);
    }
}

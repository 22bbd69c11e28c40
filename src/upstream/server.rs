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
//! Out of rotation by connect failures alone is bounded in time (nginx's
//! `fail_timeout`, Envoy's `base_ejection_time`): once `fail_timeout` has
//! passed, one request may try the server again ([`ServerState::claim_trial`],
//! which starts the next period at once). Its answer puts the server back
//! ([`ServerState::trial_passed`]); if it fails, the server waits another
//! period. `unhealthy_threshold` failed checks end the periods: then only
//! `healthy_threshold` successful checks bring the server back.
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
    /// Out by connect failures alone: when a trial request may go
    /// ([`now_ticks`]); 0 = not so (in rotation, or out by failed checks).
    retry_at: AtomicU64,
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
            retry_at: AtomicU64::new(0),
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
    /// `unhealthy_threshold` of them also end connect-failure periods: the
    /// server then waits for successful checks, with no trial requests.
    pub fn record_failure(&self, health: &HealthConfig) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failed_checks.fetch_add(1, Ordering::Relaxed) + 1;
        if n < health.unhealthy_threshold {
            return false;
        }
        self.retry_at.store(0, Ordering::Relaxed);
        self.leave()
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
            self.retry_at.store(0, Ordering::Relaxed);
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

    /// Takes the server out of rotation for connect failures: a trial
    /// request may go once `fail_timeout` has passed. Returns true when it
    /// was in (else it is left as it is: out by checks, or already out).
    pub fn eject(&self, fail_timeout: Duration) -> bool {
        if !self.leave() {
            return false;
        }
        self.retry_at.store(
            now_ticks().saturating_add(millis(fail_timeout)),
            Ordering::Relaxed,
        );
        true
    }

    /// Puts back a server [`ServerState::eject`] just took out (the last
    /// one in rotation): no recovery, so no slow-start ramp; its run of
    /// failures stays, so the next failure tries again.
    pub fn stay(&self) {
        self.retry_at.store(0, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// Whether one request may try this server, out for connect failures
    /// alone, now that its `fail_timeout` has passed; true claims the trial
    /// and starts the next period, so concurrent requests get one trial
    /// between them. `now` is [`now_ticks`], read at most once per pick
    /// (0 until read). One atomic load for a server in rotation.
    pub fn claim_trial(&self, now: &mut u64, fail_timeout: Duration) -> bool {
        let at = self.retry_at.load(Ordering::Relaxed);
        if at == 0 {
            return false;
        }
        if *now == 0 {
            *now = now_ticks();
        }
        at <= *now
            && self
                .retry_at
                .compare_exchange(
                    at,
                    now.saturating_add(millis(fail_timeout)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Active checks were turned off (a reload): a server out by failed
    /// checks would never come back (no check runs, and such a server
    /// gets no trial requests), so it returns to rotation, with a
    /// slow-start ramp, its failure counts forgotten, as every server
    /// starts. Returns true when this put it back.
    pub fn checks_turned_off(&self) -> bool {
        if self.is_healthy() || self.retry_at.load(Ordering::Relaxed) != 0 {
            return false;
        }
        self.failed_checks.store(0, Ordering::Relaxed);
        self.failed_connects.store(0, Ordering::Relaxed);
        self.successes.store(0, Ordering::Relaxed);
        let back = !self.healthy.swap(true, Ordering::Relaxed);
        if back {
            self.mark_entered();
        }
        back
    }

    /// The server answered a trial request: back in rotation (with a
    /// slow-start ramp, as after checks), its connect failures forgotten.
    /// Returns true when this put it back (false when it was in, or out by
    /// failed checks meanwhile).
    pub fn trial_passed(&self) -> bool {
        self.record_answer();
        if self.retry_at.swap(0, Ordering::Relaxed) == 0 {
            return false;
        }
        let back = !self.healthy.swap(true, Ordering::Relaxed);
        if back {
            self.successes.store(0, Ordering::Relaxed);
            self.mark_entered();
        }
        back
    }
}

/// A period in [`now_ticks`] units (milliseconds), at least one.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2).max(1)
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

/// Checks every second, two successes to come back, `fail_timeout` 10 s
/// (the unit tests' health settings here and in `balancer.rs`).
#[cfg(test)]
pub(crate) fn health_for_tests(unhealthy_threshold: u32) -> HealthConfig {
    HealthConfig {
        enabled: true,
        path: "/health".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        unhealthy_threshold,
        healthy_threshold: 2,
        fail_timeout: Duration::from_secs(10),
        expect_status: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> HealthConfig {
        health_for_tests(3)
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
    fn connect_failure_ejection_lasts_fail_timeout_then_one_trial() {
        let h = health(); // unhealthy_threshold = 3
        let period = Duration::from_secs(10);
        let s = ServerState::new("127.0.0.1:1".parse().unwrap());
        let at = |secs: u64| now_ticks() + secs * 1000;
        // In rotation: no trial, whatever the time.
        assert!(!s.claim_trial(&mut at(100), period));
        for _ in 0..3 {
            s.record_connect_failure(&h);
        }
        assert!(s.eject(period));
        assert!(!s.is_healthy());
        assert!(!s.eject(period), "already out");
        assert!(!s.claim_trial(&mut at(5), period), "within fail_timeout");
        let mut after = at(11);
        assert!(s.claim_trial(&mut after, period), "after fail_timeout");
        assert!(!s.claim_trial(&mut at(11), period), "one trial at a time");
        // The trial failed: another period from the claim.
        assert!(!s.claim_trial(&mut at(20), period));
        assert!(s.claim_trial(&mut at(22), period));
        // The trial answered: back in rotation, its count reset.
        assert!(s.trial_passed());
        assert!(s.is_healthy());
        assert!(!s.trial_passed(), "already back");
        assert!(!s.claim_trial(&mut at(100), period));
        assert!(!s.record_connect_failure(&h), "the count starts over");

        // `unhealthy_threshold` failed checks end the periods: only checks
        // bring it back.
        s.record_connect_failure(&h);
        assert!(s.record_connect_failure(&h));
        assert!(s.eject(period));
        for _ in 0..3 {
            assert!(!s.record_failure(&h), "already out");
        }
        assert!(!s.claim_trial(&mut at(100), period));
        assert!(!s.trial_passed());
        assert!(!s.is_healthy());
        assert!(!s.record_success(&h));
        assert!(s.record_success(&h));
        assert!(!s.claim_trial(&mut at(100), period));

        // Back by checks during a period: no trial left over.
        for _ in 0..3 {
            s.record_connect_failure(&h);
        }
        assert!(s.eject(period));
        s.record_success(&h);
        assert!(s.record_success(&h));
        assert!(!s.claim_trial(&mut at(100), period));
        // Out by checks alone: never a trial.
        for _ in 0..3 {
            s.record_failure(&h);
        }
        assert!(!s.is_healthy());
        assert!(!s.claim_trial(&mut at(100), period));
        // Kept in rotation as the last one: no trial pending.
        s.record_success(&h);
        s.record_success(&h);
        assert!(s.eject(period));
        s.stay();
        assert!(!s.claim_trial(&mut at(100), period));
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

//! How failed Redis operations reach the log at the default level: at
//! most one `warn` line a minute, with the count since the last one.
//! (`tracing` has no rate limit of its own; the line carries the count
//! the skipped ones would have said.)

use crate::cache::freshness::now_millis;

/// How often at most a failing Redis operation is logged at `warn`.
const WARN_EVERY_MS: u64 = 60_000;

/// A failed operation logged at `warn` at most once a minute, with the
/// count of failures since the last one: every failure is counted in
/// `strata_redis_errors_total`, but a Redis that refuses every write (full,
/// `maxmemory` with `noeviction`) or holds corrupt entries had nothing in
/// the log at the default level, and one line per failure would flood it.
#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    /// When the last warning was logged (ms since the epoch; 0: never).
    last: std::sync::atomic::AtomicU64,
    /// Failures since then.
    since: std::sync::atomic::AtomicU64,
}

impl FailureLog {
    pub(crate) fn failed(&self, op: &str, err: &dyn std::fmt::Display) {
        use std::sync::atomic::Ordering::Relaxed;
        self.since.fetch_add(1, Relaxed);
        let now = now_millis();
        let last = self.last.load(Relaxed);
        if now.saturating_sub(last) < WARN_EVERY_MS
            || self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        let failures = self.since.swap(0, Relaxed);
        tracing::warn!(
            op,
            error = %err,
            failures,
            "redis operations failing (this one, and the count since the last such line; at most one line a minute)"
        );
    }
}

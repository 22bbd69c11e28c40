//! Pacing of the reconnect loops (the data connection's connector and
//! the purge subscriber): exponential backoff with jitter, and a sleep
//! that ends early on shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff with jitter for reconnect loops.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay: between half and all of the current step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step / 2 + step.mul_f64(jitter() / 2.0)
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps, returning false if `stop` fired first.
pub(crate) async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

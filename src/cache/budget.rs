//! Byte budgets for memory an admission holds outside the memory tier
//! (SPEC §10: RSS within 1.25 × `memory_capacity` + 64 MiB): bodies being
//! collected from their upstream, and bodies waiting to be encoded. Each
//! cache has its own (`Cache::collecting`, `Cache::encoding_backlog`).
//!
//! A budget always takes one body of any size when nothing else holds it,
//! so an object up to `max_object_size` can be stored whatever the budget;
//! past that, a [`Reservation`] that would go over it is refused and the
//! caller streams the body without storing it (Varnish, out of storage,
//! does the same: the object is delivered, not kept).
//!
//! A counter and a compare-and-swap rather than a semaphore: a refused
//! reservation never waits (waiting would stall the client's response),
//! and tokio's semaphore cannot grant "anything when empty".

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Bytes held against a limit (bytes).
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// The budget's size in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty reservation (nothing is counted until [`Reservation::cover`]).
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// A reservation of `bytes`, or `None` when others hold some of the
    /// budget and `bytes` more would pass its limit.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut r = self.reservation();
        r.cover(bytes).then_some(r)
    }
}

/// Bytes counted in a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    /// Grows the reservation to at least `total` bytes: `false` (and
    /// nothing changed) when others hold some of the budget and the growth
    /// would pass its limit. When this reservation is all the budget holds,
    /// it grows to any size.
    pub fn cover(&mut self, total: usize) -> bool {
        let Some(more) = total.checked_sub(self.bytes).filter(|&m| m > 0) else {
            return true;
        };
        let (mine, limit) = (self.bytes, self.budget.limit);
        let grown = self.budget.used.fetch_update(Relaxed, Relaxed, |used| {
            (used == mine || used.saturating_add(more) <= limit).then(|| used.saturating_add(more))
        });
        if grown.is_ok() {
            self.bytes = total;
        }
        grown.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_takes_one_body_of_any_size_then_up_to_its_limit() {
        let budget = Budget::new(10);
        let big = budget.reserve(40).expect("an empty budget takes any body");
        assert!(budget.reserve(1).is_none());
        drop(big);
        let a = budget.reserve(6).expect("a");
        let b = budget.reserve(4).expect("b");
        assert!(budget.reserve(1).is_none());
        drop((a, b));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_reservation_grows_while_the_budget_allows_or_while_it_is_alone() {
        let budget = Budget::new(10);
        let mut alone = budget.reservation();
        assert!(alone.cover(4));
        assert!(alone.cover(25), "alone, it grows past the limit");
        assert!(alone.cover(3), "covering less changes nothing");
        assert_eq!(budget.used(), 25);
        drop(alone);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.cover(4));
        assert!(b.cover(6));
        assert!(!a.cover(5), "4 + 6 + 1 would pass 10");
        assert_eq!(budget.used(), 10, "a refused growth counts nothing");
        drop(b);
        assert!(a.cover(30));
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}

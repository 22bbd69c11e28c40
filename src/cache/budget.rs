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
//! **Room for a large body.** Under a steady stream of small misses the
//! budget is rarely empty, so a body larger than what is left would never
//! get in. A budget built with [`Budget::keeping_room`] remembers a refused
//! size for a while (the collecting budget: 1 s): meanwhile smaller reservations are refused
//! unless they leave that much free, so the budget drains and the next
//! request for the large body (a retry of a popular URL comes soon) is
//! stored. The encoding backlog does not keep room: a body refused there is
//! stored without encodings and never asks again.
//!
//! A counter and a compare-and-swap rather than a semaphore: a refused
//! reservation never waits (waiting would stall the client's response),
//! and tokio's semaphore cannot grant "anything when empty".

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes held against a limit (bytes).
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Room kept for a refused reservation, when the budget keeps room.
    room: Option<Room>,
}

/// The largest refused size (bytes) and until when (milliseconds since
/// `since`) it is kept free, for `keep_ms` after the refusal.
#[derive(Debug)]
struct Room {
    wanted: AtomicUsize,
    until: AtomicU64,
    since: Instant,
    keep_ms: u64,
}

impl Room {
    fn now(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The size kept free now (0 when none, or expired).
    fn wanted(&self, now: u64) -> usize {
        match self.wanted.load(Relaxed) {
            0 => 0,
            w if now < self.until.load(Relaxed) => w,
            _ => 0,
        }
    }
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
            room: None,
        })
    }

    /// A budget of `limit` bytes that keeps room for a refused body for
    /// `keep` (see the module doc).
    pub fn keeping_room(limit: usize, keep: Duration) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
            room: Some(Room {
                wanted: AtomicUsize::new(0),
                until: AtomicU64::new(0),
                since: Instant::now(),
                keep_ms: u64::try_from(keep.as_millis()).unwrap_or(u64::MAX),
            }),
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
    /// budget and `bytes` more would pass its limit (or take room kept for
    /// a larger body).
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut r = self.reservation();
        r.cover(bytes).then_some(r)
    }

    /// [`Budget::reserve`] for a caller that will not ask again when
    /// refused: no room is kept for it.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut r = self.reservation();
        r.grow(bytes, false).then_some(r)
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
    /// would pass its limit, or leave less free than the room kept for a
    /// larger refused body. When this reservation is all the budget holds,
    /// it grows to any size.
    pub fn cover(&mut self, total: usize) -> bool {
        self.grow(total, true)
    }

    /// [`Reservation::cover`]; a refusal keeps room for `total` only when
    /// `keep_room` (and the budget keeps room at all).
    fn grow(&mut self, total: usize, keep_room: bool) -> bool {
        let Some(more) = total.checked_sub(self.bytes).filter(|&m| m > 0) else {
            return true;
        };
        let budget = &*self.budget;
        let room = budget.room.as_ref();
        let now = room.map_or(0, Room::now);
        let wanted = room.map_or(0, |r| r.wanted(now));
        // Room kept for a body larger than this one.
        let kept = if wanted > total { wanted } else { 0 };
        let (mine, limit) = (self.bytes, budget.limit);
        let grown = budget.used.fetch_update(Relaxed, Relaxed, |used| {
            let after = used.saturating_add(more);
            let alone = used == mine && kept == 0;
            (alone || after.saturating_add(kept) <= limit).then_some(after)
        });
        if let Some(room) = room {
            if grown.is_ok() && wanted > 0 && wanted <= total {
                room.wanted.store(0, Relaxed); // the body room was kept for
            } else if grown.is_err() && keep_room && wanted < total {
                room.wanted.store(total, Relaxed);
                room.until.store(now.saturating_add(room.keep_ms), Relaxed);
            }
        }
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
    fn room_is_kept_for_a_refused_larger_body_for_a_while() {
        let budget = Budget::keeping_room(10, Duration::from_secs(3600));
        let small = budget.reserve(4).expect("small");
        assert!(budget.reserve(8).is_none(), "4 + 8 > 10");
        assert!(
            budget.reserve(3).is_none(),
            "3 more would leave less than 8"
        );
        assert!(budget.reserve(2).is_none(), "room for 8 is kept");
        drop(small);
        let large = budget.reserve(8).expect("once drained, the large one");
        assert!(
            budget.reserve(2).is_some(),
            "room no longer kept once it got in"
        );
        drop(large);
        // Larger than the whole budget: it gets in only alone, and nothing
        // smaller starts meanwhile.
        let small = budget.reserve(1).expect("small");
        assert!(budget.reserve(20).is_none());
        assert!(budget.reserve(1).is_none());
        drop(small);
        assert!(
            budget.reserve(1).is_none(),
            "empty, but kept for the large one"
        );
        assert!(budget.reserve(20).is_some());
    }

    #[test]
    fn room_is_kept_no_longer_than_asked() {
        let budget = Budget::keeping_room(10, Duration::from_millis(20));
        let small = budget.reserve(4).expect("small");
        assert!(budget.reserve(8).is_none());
        assert!(budget.reserve(3).is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert!(budget.reserve(3).is_some(), "the room was given up");
        drop(small);
    }

    #[test]
    fn a_refused_try_reserve_keeps_no_room() {
        let budget = Budget::keeping_room(10, Duration::from_secs(3600));
        let _small = budget.reserve(4).expect("small");
        assert!(budget.try_reserve(8).is_none());
        assert!(budget.reserve(3).is_some(), "no room kept for the 8");
    }

    #[test]
    fn a_budget_that_keeps_no_room_takes_what_fits() {
        let budget = Budget::new(10);
        let _small = budget.reserve(4).expect("small");
        assert!(budget.reserve(8).is_none());
        assert!(budget.reserve(3).is_some());
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

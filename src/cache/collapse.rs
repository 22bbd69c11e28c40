//! Collapsed forwarding: concurrent misses for one URL make one upstream
//! request. The first caller gets [`Locked::Write`] and fetches; the others
//! get [`Locked::Read`] and wait (bounded) for its [`Flight`] result. If the
//! response turns out uncacheable, every waiter is released at once to go
//! upstream itself, in parallel. If the upstream fails (or answers 5xx),
//! the waiters are told so ([`Flight::Failed`]): one holding a stale copy
//! it may serve on error (stale-if-error, grace) serves it as the leader
//! did, without asking the failing upstream again. If the leader is
//! gone without an answer (its client disconnected, the body it was
//! storing broke), the waiters collapse again behind a new leader, as
//! Varnish rushes its waiting list: one upstream request, not one each.
//!
//! The map is a std `Mutex<HashMap>`: critical sections are a lookup or an
//! insert, never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::entry::Object;

/// How a leader's fetch ended, as seen by the waiters.
#[derive(Debug, Clone)]
pub enum Flight {
    /// Stored: look it up again.
    Stored(Arc<Object>),
    /// Not storable or too large: go upstream yourself.
    Released,
    /// The upstream could not be reached, timed out, dropped the
    /// connection (`status: None`) or answered a 5xx (`status`): serve the
    /// stale copy if it may stand in for an error (RFC 5861 §4, grace),
    /// else go upstream yourself.
    Failed { status: Option<u16> },
    /// The leader went away without an answer: ask for the lock again.
    Abandoned,
    /// A Redis read found it (coalesced lookups, `Cache::lookup`), having
    /// begun at removal count `epoch`: a waiter takes it only if its URL
    /// was not removed from memory since, which a purge that completed
    /// before the waiter joined would have done.
    Found { object: Arc<Object>, epoch: u64 },
}

impl Flight {
    /// `Stored(object)` for what an admission stored; `Released` when it
    /// stored nothing (a response fetched across a purge of its URL is not
    /// stored, and a request made after the purge may be waiting).
    pub fn admitted(stored: Option<Arc<Object>>) -> Flight {
        stored.map_or(Flight::Released, Flight::Stored)
    }
}

type Slot = watch::Sender<Option<Flight>>;

#[derive(Default)]
pub struct Collapser {
    inflight: Mutex<HashMap<u128, Weak<Slot>>>,
}

/// The outcome of asking for the lock on a key.
pub enum Locked {
    /// You fetch; publish the result (or drop the lock to release waiters).
    Write(WriteLock),
    /// Someone else is fetching; wait for it.
    Read(ReadLock),
}

pub struct WriteLock {
    key: u128,
    slot: Arc<Slot>,
    owner: Arc<Collapser>,
    published: bool,
}

pub struct ReadLock {
    rx: watch::Receiver<Option<Flight>>,
}

impl Collapser {
    pub fn new() -> Arc<Collapser> {
        Arc::new(Collapser::default())
    }

    pub fn lock(self: &Arc<Self>, key: u128) -> Locked {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = map.get(&key).and_then(Weak::upgrade) {
            return Locked::Read(ReadLock {
                rx: slot.subscribe(),
            });
        }
        let (tx, _) = watch::channel(None);
        let slot = Arc::new(tx);
        map.insert(key, Arc::downgrade(&slot));
        Locked::Write(WriteLock {
            key,
            slot,
            owner: self.clone(),
            published: false,
        })
    }

    /// A lock for `key` that nobody can wait on and that displaces no
    /// other: for a request that must go upstream itself through the
    /// leader's path (a follower whose leader's answer needs a validation
    /// of its own). Publishing it tells no one.
    pub fn solo(self: &Arc<Self>, key: u128) -> WriteLock {
        let (tx, _) = watch::channel(None);
        WriteLock {
            key,
            slot: Arc::new(tx),
            owner: self.clone(),
            published: false,
        }
    }

    /// Takes the lock only if nobody holds it (background refreshes).
    pub fn try_lock(self: &Arc<Self>, key: u128) -> Option<WriteLock> {
        match self.lock(key) {
            Locked::Write(w) => Some(w),
            Locked::Read(_) => None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .map(|m| m.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }

    /// Requests waiting on a leader, over all keys.
    pub fn waiting(&self) -> usize {
        self.inflight
            .lock()
            .map(|m| {
                m.values()
                    .filter_map(Weak::upgrade)
                    .map(|s| s.receiver_count())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn release(&self, key: u128, slot: &Arc<Slot>) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = map.get(&key) {
            if std::ptr::eq(current.as_ptr(), Arc::as_ptr(slot)) {
                map.remove(&key);
            }
        }
    }
}

impl WriteLock {
    /// Tells the waiters how it ended and removes the lock.
    pub fn publish(mut self, flight: Flight) {
        self.finish(flight);
    }

    fn finish(&mut self, flight: Flight) {
        if self.published {
            return;
        }
        self.published = true;
        // Remove first, so that a request arriving after this point starts
        // from the cache, not from a finished flight.
        self.owner.release(self.key, &self.slot);
        self.slot.send_replace(Some(flight));
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        self.finish(Flight::Abandoned);
    }
}

impl ReadLock {
    /// Waits for the leader, at most `limit`; `None` on timeout.
    pub async fn wait(mut self, limit: Duration) -> Option<Flight> {
        let result = tokio::time::timeout(limit, self.rx.wait_for(Option::is_some)).await;
        match result {
            Ok(Ok(v)) => v.clone(),
            // The leader vanished without publishing.
            Ok(Err(_)) => Some(Flight::Abandoned),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_writer_many_readers() {
        let c = Collapser::new();
        let Locked::Write(w) = c.lock(1) else {
            panic!("first is the writer")
        };
        let mut readers = Vec::new();
        for _ in 0..10 {
            match c.lock(1) {
                Locked::Read(r) => readers.push(tokio::spawn(r.wait(Duration::from_secs(5)))),
                Locked::Write(_) => panic!("only one writer"),
            }
        }
        assert!(matches!(c.lock(2), Locked::Write(_)));
        w.publish(Flight::Released);
        for r in readers {
            assert!(matches!(r.await.unwrap(), Some(Flight::Released)));
        }
        assert!(
            matches!(c.lock(1), Locked::Write(_)),
            "the lock is free again"
        );
    }

    #[tokio::test]
    async fn dropped_writer_abandons() {
        let c = Collapser::new();
        let w = c.try_lock(7).unwrap();
        assert!(c.try_lock(7).is_none());
        let Locked::Read(r) = c.lock(7) else { panic!() };
        drop(w);
        assert!(matches!(
            r.wait(Duration::from_secs(1)).await,
            Some(Flight::Abandoned)
        ));
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn wait_is_bounded() {
        let c = Collapser::new();
        let _w = c.try_lock(9).unwrap();
        let Locked::Read(r) = c.lock(9) else { panic!() };
        assert!(r.wait(Duration::from_millis(20)).await.is_none());
    }
}

//! The body of the client a storable miss is fetched for, fed from what
//! its admission has read ([`super::admit`]). The admission reads the
//! upstream at the upstream's speed while the body is stored and queues
//! each chunk as collected (shared `Bytes`: a slice of the body's mapping
//! or the collected chunk itself, never a copy); the client takes them at
//! its own pace and may lag behind without slowing the fill, as nginx's
//! `proxy_cache` fills its cache file at the upstream's speed. Once the
//! body is stored, what the client has not taken yet is replaced by a
//! slice of the stored body ([`Feed::complete`]), and the body's place in
//! the collecting budget stays with the client until it has taken it
//! ([`Feed::close`]): a lagging client may hold a body the tier has since
//! evicted, so it stays counted (SPEC §10; uncounted, 32 clients of
//! 1 KiB–16 MiB misses through a 32 MiB tier had peaked at 158 MiB, the
//! bound being 104), and a client that takes nothing for `send_timeout` is
//! cut off there (HTTP/2 has no connection-level `send_timeout`: a stream
//! that never opens its window would hold the body for as long as its
//! connection lives).
//!
//! A body that is not stored streams at its client's pace instead
//! ([`Feed::taken`] with a bound on what is queued): nothing is read ahead
//! of a slow client beyond that bound.
//!
//! The client's body ends as complete only through [`Feed::complete`] or
//! [`Feed::close`] with `Ok`; a feed dropped otherwise ends it in an error,
//! so a response cut short never looks complete.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::Notify;

// Bytes handed to the client per frame at most, as the upstream is read:
// a slice of a whole stored body reaches the connection in pieces.
use super::body::{BoxError, ProxyBody, PIECE};
use crate::cache::budget::Reservation;

/// The error a cut-off client's body ends with (see [`Feed::close`]).
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing for send_timeout")]
pub struct CutOff;

/// The error a client's body ends with when its feed was dropped before
/// the body was complete (the admission gave up on it).
#[derive(Debug, thiserror::Error)]
#[error("the response body was cut short")]
pub struct Unfinished;

/// How the client's body ends once it has taken what is queued.
enum End {
    Open,
    Complete,
    Failed(BoxError),
    /// The end was handed to the client.
    Told,
}

struct State {
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    queued: usize,
    /// Bytes ever queued (taken or not).
    pushed: usize,
    end: End,
    /// The client's body waiting for a chunk.
    reader: Option<Waker>,
    /// The client's body was dropped (the client went away).
    gone: bool,
    /// The body's place in the collecting budget, given back once the
    /// client has taken everything, went away or was cut off.
    held: Option<Reservation>,
}

struct Shared {
    state: Mutex<State>,
    /// Told each time the client takes a chunk or goes away.
    taken: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What [`Feed::taken`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The client has taken enough.
    Drained,
    /// The client went away.
    Gone,
    /// The client took nothing for the idle limit.
    Stalled,
}

/// The admission's end of a client's body.
pub struct Feed {
    shared: Arc<Shared>,
}

/// The client's end: the response body.
pub struct FeedBody {
    shared: Arc<Shared>,
}

/// A feed and the body it feeds.
pub fn channel() -> (Feed, ProxyBody) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            queued: 0,
            pushed: 0,
            end: End::Open,
            reader: None,
            gone: false,
            held: None,
        }),
        taken: Notify::new(),
    });
    let body = FeedBody {
        shared: shared.clone(),
    };
    (Feed { shared }, ProxyBody::boxed(body))
}

impl Feed {
    /// Queues `data` for the client; `false` when the client went away.
    pub fn push(&self, data: Bytes) -> bool {
        self.push_all(std::iter::once(data))
    }

    /// Queues every chunk of `chunks`; `false` when the client went away.
    pub fn push_all(&self, chunks: impl IntoIterator<Item = Bytes>) -> bool {
        let mut state = self.shared.lock();
        if state.gone {
            return false;
        }
        for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
            state.queued += chunk.len();
            state.pushed += chunk.len();
            state.queue.push_back(chunk);
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(w) = reader {
            w.wake();
        }
        true
    }

    /// The whole body is stored as `body`: what the client has not taken
    /// yet becomes a slice of it (the chunks it replaces, read buffers
    /// among them, are let go), the part never queued included (the
    /// admission holds back the chunk that completes a declared length
    /// until the entry is visible). [`Feed::close`] ends it.
    pub fn complete(&self, body: &Bytes) {
        let mut state = self.shared.lock();
        if state.gone {
            return;
        }
        let taken = state.pushed - state.queued;
        let rest = body.slice(taken.min(body.len())..);
        state.queue.clear();
        state.queued = rest.len();
        state.pushed = body.len();
        if !rest.is_empty() {
            state.queue.push_back(rest);
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Ends the client's body with `end` once it has taken what is
    /// queued. `held` (the body's place in the collecting budget) is given
    /// back once it has, or went away; a client that meanwhile takes
    /// nothing for `idle` is cut off (what is queued is dropped and its
    /// body fails with [`CutOff`]).
    pub fn close(self, end: Result<(), BoxError>, held: Option<Reservation>, idle: Duration) {
        let end = end.map_or_else(End::Failed, |()| End::Complete);
        if self.close_with(end, held) {
            tokio::spawn(async move {
                if self.taken(0, idle).await == Taken::Stalled {
                    self.cut();
                }
            });
        }
    }

    /// Sets the end (unless one is set) and, when the client has something
    /// left to take, gives it `held`: whether it has.
    fn close_with(&self, end: End, held: Option<Reservation>) -> bool {
        let mut state = self.shared.lock();
        if matches!(state.end, End::Open) {
            state.end = end;
        }
        let lagging = !state.gone && !state.queue.is_empty();
        if lagging {
            if let Some(held) = held {
                state.held = Some(held);
            }
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(w) = reader {
            w.wake();
        }
        lagging
    }

    /// Waits until the client has at most `ahead` bytes queued, or went
    /// away; [`Taken::Stalled`] when it took nothing for `idle`.
    pub async fn taken(&self, ahead: usize, idle: Duration) -> Taken {
        loop {
            // Registered before the check, so a take in between is seen.
            let notified = self.shared.taken.notified();
            {
                let state = self.shared.lock();
                if state.gone {
                    return Taken::Gone;
                }
                if state.queued <= ahead {
                    return Taken::Drained;
                }
            }
            if tokio::time::timeout(idle, notified).await.is_err() {
                return Taken::Stalled;
            }
        }
    }

    /// Gives up on the client: what is queued is dropped, its body fails
    /// with [`CutOff`] and its place in the budget is given back.
    pub fn cut(self) {
        let mut state = self.shared.lock();
        state.queue.clear();
        state.queued = 0;
        state.held = None;
        if !matches!(state.end, End::Told) {
            state.end = End::Failed(Box::new(CutOff));
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(w) = reader {
            w.wake();
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.close_with(End::Failed(Box::new(Unfinished)), None);
    }
}

impl Body for FeedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut state = self.shared.lock();
        if let Some(front) = state.queue.front_mut() {
            let piece = if front.len() > PIECE {
                front.split_to(PIECE)
            } else {
                std::mem::take(front)
            };
            if front.is_empty() {
                state.queue.pop_front();
            }
            state.queued -= piece.len();
            let held = if state.queue.is_empty() && !matches!(state.end, End::Open) {
                state.held.take()
            } else {
                None
            };
            drop(state);
            drop(held);
            self.shared.taken.notify_one();
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match std::mem::replace(&mut state.end, End::Told) {
            End::Open => {
                state.end = End::Open;
                if !state
                    .reader
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.reader = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            End::Complete | End::Told => Poll::Ready(None),
            End::Failed(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state.queue.is_empty() && matches!(state.end, End::Complete | End::Told)
    }
}

impl Drop for FeedBody {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.gone = true;
        let queue = std::mem::take(&mut state.queue);
        state.queued = 0;
        let held = state.held.take();
        drop(state);
        drop((queue, held));
        self.shared.taken.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn reservation(bytes: usize) -> (Arc<crate::cache::budget::Budget>, Reservation) {
        let budget = crate::cache::budget::Budget::new(1 << 20);
        let r = budget.reserve(bytes).expect("room");
        (budget, r)
    }

    #[tokio::test]
    async fn the_client_takes_what_was_queued_then_the_stored_rest() {
        let (feed, mut body) = channel();
        let stored = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
        assert!(feed.push(stored.slice(..1000)));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, stored.slice(..1000));
        assert!(feed.push(stored.slice(1000..5000)));
        let (budget, held) = reservation(stored.len());
        feed.complete(&stored);
        feed.close(Ok(()), Some(held), Duration::from_secs(60));
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, stored.slice(1000..));
        assert_eq!(budget.used(), 0, "given back once the client took it all");
    }

    #[tokio::test]
    async fn a_dropped_feed_fails_the_body() {
        let (feed, body) = channel();
        assert!(feed.push(Bytes::from_static(b"part")));
        drop(feed);
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_is_cut_off_and_lets_go_of_the_budget() {
        let (feed, body) = channel();
        assert!(feed.push(Bytes::from(vec![1u8; 100])));
        let (budget, held) = reservation(100);
        feed.close(Ok(()), Some(held), Duration::from_millis(10));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while budget.used() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "never cut off");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn pacing_waits_for_the_client_and_sees_it_leave() {
        let (feed, mut body) = channel();
        assert!(feed.push(Bytes::from(vec![1u8; 10])));
        assert_eq!(
            feed.taken(0, Duration::from_millis(10)).await,
            Taken::Stalled
        );
        body.frame().await.unwrap().unwrap();
        assert_eq!(
            feed.taken(0, Duration::from_millis(10)).await,
            Taken::Drained
        );
        drop(body);
        assert_eq!(feed.taken(0, Duration::from_millis(10)).await, Taken::Gone);
        assert!(!feed.push(Bytes::from_static(b"x")));
    }
}

//! `server.send_timeout` for one HTTP/2 stream: a response body the
//! client takes nothing of (it gives no flow-control window, while it may
//! still answer pings and use its other streams) is cut off between one
//! and one and a half timeouts after it stopped, as HTTP/1.1 connections
//! are (`HeadDeadline`) and as nginx's `send_timeout` resets such a stream.
//!
//! hyper's HTTP/2 server holds a chunk it cannot send until the stream's
//! window opens and polls the body no more meanwhile, so a body cannot
//! notice the stall itself (a failure it is told of waits for the next
//! poll). A watchdog task per streamed body therefore checks, twice per
//! timeout, whether hyper has polled it since it last gave a chunk; once
//! it has not for a whole timeout, the inner body is dropped there — the
//! upstream connection of a pass-through or the queue of a miss is let go
//! at once — and the next poll, if the client ever opens its window, ends
//! the stream in an error (hyper resets it), never as if complete. A body
//! hyper waits on (a slow upstream, a long poll) is never cut.
//!
//! Chunks go to hyper in 16 KiB pieces ([`PIECE`], one frame), so that a
//! slow but steady reader shows progress at least that often: a client
//! that takes less than 16 KiB per `send_timeout` is cut (nginx's
//! `send_timeout` likewise times one write operation, not one byte).
//!
//! A hit's body (`Full`) of more than one piece is guarded too: handed to
//! h2 whole, its request ended at once and its connection counted as idle
//! while a slow reader was still taking it (cut 1–2 `header_read_timeout`s
//! in). The guard holds the request's `Open` until the last piece is
//! taken, or drops it with the body when it cuts the stream, so the
//! connection may then be closed as idle. A smaller body (most hits) is
//! tracked as any response, at no cost. Cost per streamed HTTP/2
//! response: one allocation, one task, and two relaxed updates per frame.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::bodies::{Open, Tracked};
use crate::proxy::body::{BoxError, ProxyBody, PIECE};

/// The error a stalled stream's body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of the response for send_timeout")]
pub struct Stalled;

/// `body` as the response of HTTP/2 request `open`: guarded when it
/// streams or holds more than one piece (see the module doc), with `open`
/// held by the guard until the body ends or is cut; else tracked as any
/// response. `send_timeout` is `server.send_timeout`.
pub fn guard(body: ProxyBody, send_timeout: Duration, open: Open) -> Tracked<ProxyBody> {
    match body {
        ProxyBody::Empty => Tracked::new(body, open),
        ProxyBody::Full(ref b) if b.as_ref().is_none_or(|b| b.len() <= PIECE) => {
            Tracked::new(body, open)
        }
        guarded => {
            let shared = Arc::new(Shared {
                body: Mutex::new(Some(guarded)),
                open: Mutex::new(Some(open.answered())),
                polls: AtomicU64::new(0),
                owed: AtomicBool::new(false),
                cut: AtomicBool::new(false),
            });
            tokio::spawn(watch(Arc::downgrade(&shared), send_timeout));
            Tracked::holding_its_own(ProxyBody::boxed(Guarded {
                shared,
                rest: Bytes::new(),
            }))
        }
    }
}

struct Shared {
    /// `None` once ended, cut, or dropped by hyper.
    body: Mutex<Option<ProxyBody>>,
    /// The request, open on its connection until the body is done or cut
    /// (a cut stream's connection may then be idle and closed).
    open: Mutex<Option<Open>>,
    /// Polls so far.
    polls: AtomicU64,
    /// A chunk was given and hyper has not polled since.
    owed: AtomicBool,
    cut: AtomicBool,
}

impl Shared {
    fn body(&self) -> MutexGuard<'_, Option<ProxyBody>> {
        self.body.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Guarded {
    shared: Arc<Shared>,
    /// What is left of a chunk handed over in [`PIECE`]s (one frame each).
    rest: Bytes,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let shared = &this.shared;
        shared.polls.fetch_add(1, Ordering::Relaxed);
        shared.owed.store(false, Ordering::Relaxed);
        if !this.rest.is_empty() && !shared.cut.load(Ordering::Relaxed) {
            let n = this.rest.len().min(PIECE);
            shared.owed.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))));
        }
        let mut body = shared.body();
        let Some(inner) = body.as_mut() else {
            let cut = shared.cut.load(Ordering::Relaxed);
            return Poll::Ready(cut.then(|| Err(Box::new(Stalled) as BoxError)));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                shared.owed.store(true, Ordering::Relaxed);
                let Ok(mut data) = frame.into_data() else {
                    return Poll::Ready(None);
                };
                if data.len() > PIECE {
                    this.rest = data.split_off(PIECE);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                *body = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.rest.is_empty() {
            return false;
        }
        match self.shared.body().as_ref() {
            Some(inner) => inner.is_end_stream(),
            None => !self.shared.cut.load(Ordering::Relaxed),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.len() as u64;
        match self.shared.body().as_ref() {
            Some(inner) => {
                let inner = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + rest);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + rest);
                }
                hint
            }
            None => SizeHint::default(),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let inner = self.shared.body().take();
        drop(inner);
    }
}

/// Checks `shared` every half `send_timeout` until its body is gone; cuts
/// it after a whole timeout with a chunk owed and no poll.
async fn watch(shared: Weak<Shared>, send_timeout: Duration) {
    let period = (send_timeout / 2).max(Duration::from_millis(1));
    let (mut last, mut quiet) = (u64::MAX, 0u8);
    loop {
        tokio::time::sleep(period).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.body().is_none() {
            return;
        }
        let polls = shared.polls.load(Ordering::Relaxed);
        if shared.owed.load(Ordering::Relaxed) && polls == last {
            quiet += 1;
            if quiet >= 2 {
                shared.cut.store(true, Ordering::Relaxed);
                let inner = shared.body().take();
                drop(inner);
                let open = shared.open.lock().unwrap_or_else(|p| p.into_inner()).take();
                drop(open);
                tracing::debug!("an HTTP/2 client took nothing for send_timeout: stream cut off");
                return;
            }
        } else {
            quiet = 0;
        }
        last = polls;
    }
}

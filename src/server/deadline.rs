//! `server.header_read_timeout` (SPEC §10) for every request head of a
//! connection: the first must be complete within the timeout of accept,
//! whether the client sent a few bytes or nothing at all; each later one
//! within the timeout of the end of the previous response (which bounds
//! idle keep-alive connections, like nginx's `keepalive_timeout`).
//!
//! One timer per connection, checked when it fires, instead of hyper's
//! header timer, which reads the clock and arms (then cancels) a timer for
//! every request head — about 3–4% of a 1 KiB hit's CPU. Per request this
//! costs two relaxed counter updates when the head arrives and two when
//! the response ends (its body is done or dropped). The price is
//! precision after the first request: a connection with no new request
//! head is closed between one and two timeouts after its last response
//! ended (the timer re-arms for a full period whenever anything happened
//! during the last one).
//!
//! hyper-util's protocol detection (HTTP/1.1 or h2 prior knowledge) waits
//! for the first bytes without any timer, and hyper's HTTP/1.1 server has
//! none unless given one: without this, a silent connection would hold its
//! slot of `max_connections` forever. An HTTP/2 connection is bounded until
//! its first request only; after that hyper's keep-alive pings watch it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// A connection's request heads and responses, and by when the next head
/// must arrive.
#[derive(Clone)]
pub struct HeadDeadline {
    state: Arc<State>,
    timeout: Duration,
    accepted: Instant,
}

struct State {
    /// Requests whose response has not ended.
    open: AtomicU32,
    /// Bumped when a request head arrives and when a response ends; 0
    /// until the first head.
    activity: AtomicU64,
    /// The connection speaks HTTP/2.
    http2: AtomicBool,
}

/// How a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ConnError<E> {
    /// No complete first request head within the timeout of accept.
    #[error("no request head within header_read_timeout of accept")]
    Silent,
    /// No next request head within the timeout of the last response.
    #[error("no new request head within header_read_timeout of the last response")]
    Idle,
    #[error("{0}")]
    Http(E),
}

impl HeadDeadline {
    /// Starts the clock now (call at accept).
    pub fn new(timeout: Duration) -> HeadDeadline {
        HeadDeadline {
            state: Arc::new(State {
                open: AtomicU32::new(0),
                activity: AtomicU64::new(0),
                http2: AtomicBool::new(false),
            }),
            timeout,
            accepted: Instant::now(),
        }
    }

    /// Called by the service for every request (a complete head). The
    /// request counts as open until the returned guard is dropped: keep it
    /// with the response body ([`Tracked`]).
    pub fn arrived(&self, version: Version) -> Open {
        let s = &self.state;
        if version == Version::HTTP_2 {
            s.http2.store(true, Ordering::Relaxed);
        }
        s.open.fetch_add(1, Ordering::Relaxed);
        s.activity.fetch_add(1, Ordering::Relaxed);
        Open(self.state.clone())
    }

    /// Drives `conn`, dropping it (which closes the socket) when a request
    /// head is overdue.
    pub async fn serve<F, E>(self, conn: F) -> Result<(), ConnError<E>>
    where
        F: Future<Output = Result<(), E>>,
    {
        let mut conn = std::pin::pin!(conn);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(self.accepted + self.timeout));
        let mut seen = 0;
        loop {
            tokio::select! {
                done = &mut conn => return done.map_err(ConnError::Http),
                _ = &mut timer => {}
            }
            let s = &self.state;
            let activity = s.activity.load(Ordering::Relaxed);
            if activity == 0 {
                return Err(ConnError::Silent);
            }
            if s.http2.load(Ordering::Relaxed) {
                return conn.await.map_err(ConnError::Http);
            }
            if activity == seen && s.open.load(Ordering::Relaxed) == 0 {
                return Err(ConnError::Idle);
            }
            seen = activity;
            timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

/// A request that has not been answered to the end.
pub struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request [`Open`] until it is dropped
/// (hyper drops it when it has been written, or the connection ended).
pub struct Tracked<B> {
    inner: B,
    _open: Open,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, open: Open) -> Tracked<B> {
        Tracked { inner, _open: open }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

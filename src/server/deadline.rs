//! `server.header_read_timeout` (SPEC §10) for every request head of a
//! connection: the first must be complete within the timeout of accept,
//! whether the client sent a few bytes or nothing at all; each later one
//! within the timeout of the end of the previous response (which bounds
//! idle keep-alive connections, like nginx's `keepalive_timeout`).
//!
//! One timer per connection, checked when it fires, instead of hyper's
//! header timer, which reads the clock and arms (then cancels) a timer for
//! every request head — about 3–4% of a 1 KiB hit's CPU. Per request this
//! costs two relaxed counter updates when the head arrives, one when hyper
//! is done with the response body ([`Open`] dropped) and two when the
//! socket has taken the response's last byte (the connection's first
//! flush after that, seen by [`Flushes`]). A response still being written
//! to a slow client is therefore never cut. The price is precision after
//! the first request: a connection with no new request head is closed
//! between one and two timeouts after its last response was written (the
//! timer re-arms for a full period whenever anything happened during the
//! last one).
//!
//! Known difference from hyper's timer: a request body still arriving
//! after its response was written (an upload the upstream answered early,
//! say with `401`) does not count as activity, so such a connection is
//! closed one to two timeouts after the response, like nginx's
//! `lingering_time` but without its lingering reads. Counting every read
//! would let a client trickling a request head byte by byte keep its
//! connection forever.
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// Requests whose response has not been written to the end.
    open: AtomicU32,
    /// Of those, the ones whose body hyper is done with (it may still hold
    /// bytes of them to write).
    ended: AtomicU32,
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
                ended: AtomicU32::new(0),
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

    /// Wraps the connection's socket so that a flush tells when the
    /// responses hyper is done with have been written.
    pub fn watch_io<T>(&self, io: T) -> Flushes<T> {
        Flushes {
            io,
            state: self.state.clone(),
        }
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
        // Still open until the socket has taken what hyper holds of it.
        self.0.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request [`Open`] until it is dropped
/// (hyper drops it when it has queued the last frame, or the connection
/// ended).
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

/// A client connection's socket. hyper flushes the socket only once its
/// own write buffer is empty, so the first successful flush after a
/// response body was dropped means that response has been written.
pub struct Flushes<T> {
    io: T,
    state: Arc<State>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Flushes<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Flushes<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            let s = &this.state;
            if s.ended.load(Ordering::Relaxed) != 0 {
                let written = s.ended.swap(0, Ordering::Relaxed);
                s.open.fetch_sub(written, Ordering::Relaxed);
                s.activity.fetch_add(1, Ordering::Relaxed);
            }
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

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
//! The same timer enforces `server.send_timeout` (like nginx's
//! `send_timeout`): a connection whose writes have waited for socket space
//! for a whole timeout, with no byte taken by the client in between, is
//! closed, between one and one and a half timeouts after the client
//! stopped reading (the send check runs twice per timeout).
//! A client reading slowly but steadily is never cut, and neither is one
//! waiting for a slow upstream (no write is pending then). This costs a
//! relaxed load per write, and two relaxed updates when a write has to
//! wait or stops waiting.
//!
//! hyper-util's protocol detection (HTTP/1.1 or h2 prior knowledge) waits
//! for the first bytes without any timer, and hyper's HTTP/1.1 server has
//! none unless given one: without this, a silent connection would hold its
//! slot of `max_connections` forever. An HTTP/2 connection with no stream
//! open is idle like a keep-alive one and closed the same way (nginx's
//! `keepalive_timeout` applies to HTTP/2 too); hyper's keep-alive pings
//! only tell a live client from a dead one, so a client that answers them
//! but sends nothing would otherwise keep its slot for good. An HTTP/2
//! response body of more than one 16 KiB piece keeps its request open
//! until the client has taken all but the last piece (`stalled.rs`): h2
//! would take it whole at once, and the connection, counted idle, was
//! closed under a slow reader.
//!
//! **Premature resets** (CVE-2023-44487, "rapid reset"): an HTTP/2 client
//! may open a stream and reset it a few milliseconds later, again and
//! again, staying under `SETTINGS_MAX_CONCURRENT_STREAMS` while each stream
//! has already gone upstream. h2 stops resets sent with their HEADERS; the
//! paced ones are caught here, as Envoy does: once a connection has opened
//! [`RESET_MIN_STREAMS`] streams, more than half of them reset before their
//! response head closes it. A stream counts as reset when its request is
//! dropped before the service answered (its [`Open`] goes without being
//! [`Tracked`]); one relaxed update per stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::own_responses::OwnResponses;

mod bodies;
pub mod stalled;
pub use bodies::{BodyEnd, Open, RequestBody, Tracked};

/// Timeouts are capped here: a deadline beyond `Instant`'s range would
/// panic, and ten years is "never" for a connection.
const LONGEST: Duration = Duration::from_secs(10 * 365 * 86_400);

/// HTTP/2 streams a connection may open before its share of premature
/// resets is judged (see the module doc).
pub const RESET_MIN_STREAMS: u32 = 100;

/// A connection's request heads and responses, and by when the next head
/// must arrive.
#[derive(Clone)]
pub struct HeadDeadline {
    state: Arc<State>,
    timeout: Duration,
    send_timeout: Duration,
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
    /// A `101` switched the connection to another protocol: its bytes are
    /// a tunnel's, never to be taken for hyper's own responses.
    switched: AtomicBool,
    /// A write (or flush) to the client is waiting for socket space.
    blocked: AtomicBool,
    /// The latest request came with a body that has not been read to its
    /// end (see [`HeadDeadline::quiet`]): that request's `activity`
    /// number, 0 if none.
    body: AtomicU64,
    /// Bumped whenever `blocked` changes: unchanged over two checks in a
    /// row (half a send timeout apart each) while blocked, the client took
    /// nothing for at least a whole timeout. Only the connection's task
    /// writes both (through [`Flushes`]).
    send_events: AtomicU64,
    /// HTTP/2 streams opened, and of those the ones reset before their
    /// response head (see the module doc).
    streams: AtomicU32,
    resets: AtomicU32,
    /// Woken when the resets pass the bound: [`HeadDeadline::serve`]
    /// closes the connection.
    abusive: tokio::sync::Notify,
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
    /// The client took no response byte for a whole send timeout.
    #[error("the client read nothing for send_timeout")]
    SendTimeout,
    /// Most of an HTTP/2 client's streams were reset before their answer.
    #[error("too many HTTP/2 streams reset by the client before their response (rapid reset)")]
    PrematureResets,
    #[error("{0}")]
    Http(E),
}

impl HeadDeadline {
    /// Starts the clock now (call at accept): `timeout` is
    /// `server.header_read_timeout`, `send_timeout` `server.send_timeout`.
    pub fn new(timeout: Duration, send_timeout: Duration) -> HeadDeadline {
        HeadDeadline {
            state: Arc::new(State {
                open: AtomicU32::new(0),
                ended: AtomicU32::new(0),
                activity: AtomicU64::new(0),
                http2: AtomicBool::new(false),
                switched: AtomicBool::new(false),
                blocked: AtomicBool::new(false),
                body: AtomicU64::new(0),
                send_events: AtomicU64::new(0),
                streams: AtomicU32::new(0),
                resets: AtomicU32::new(0),
                abusive: tokio::sync::Notify::new(),
            }),
            timeout: timeout.min(LONGEST),
            send_timeout: send_timeout.min(LONGEST),
            accepted: Instant::now(),
        }
    }

    /// Called by the service for every request (a complete head; `body`:
    /// a request body follows it). The request counts as open until the
    /// returned guard is dropped: keep it with the response body
    /// ([`Tracked`]).
    pub fn arrived(&self, version: Version, body: bool) -> Open {
        let s = &self.state;
        let http2 = version == Version::HTTP_2;
        if http2 {
            s.http2.store(true, Ordering::Relaxed);
            s.streams.fetch_add(1, Ordering::Relaxed);
        }
        s.open.fetch_add(1, Ordering::Relaxed);
        let number = s.activity.fetch_add(1, Ordering::Relaxed) + 1;
        s.body
            .store(if body { number } else { 0 }, Ordering::Relaxed);
        Open {
            state: self.state.clone(),
            unanswered_stream: http2,
        }
    }

    /// `Some(activity)` while this HTTP/1.1 connection has no request open,
    /// no response byte waiting for socket space, no request body that
    /// may still be arriving and no protocol switch: hyper holds nothing of
    /// it but, at most, the start of a next request head. The value
    /// changes with every request head and every response written, so two
    /// equal values some time apart mean the connection was idle in
    /// between ([`super::keepalive`]).
    pub fn quiet(&self) -> Option<u64> {
        let s = &self.state;
        let busy = s.open.load(Ordering::Relaxed) != 0
            || s.blocked.load(Ordering::Relaxed)
            || s.body.load(Ordering::Relaxed) != 0
            || s.http2.load(Ordering::Relaxed)
            || s.switched.load(Ordering::Relaxed);
        (!busy).then(|| s.activity.load(Ordering::Relaxed))
    }

    /// For the latest request, if it has a body (call right after
    /// [`Self::arrived`]): the mark a [`RequestBody`] clears when that body
    /// has been read to its end. hyper has then read all of it, and what
    /// follows on the connection is a next head, so the connection may be
    /// taken back when idle. The proxy's service puts it in the request's
    /// extensions, for the pass path that reads the body
    /// (`proxy::forward`).
    pub fn body_end(&self) -> Option<BodyEnd> {
        let number = self.state.body.load(Ordering::Relaxed);
        (number != 0).then(|| BodyEnd {
            state: self.state.clone(),
            number,
        })
    }

    /// Wraps the connection's socket so that a flush tells when the
    /// responses hyper is done with have been written; with `own` (a
    /// proxy listener), hyper's own error responses get `Cache-Status` and
    /// `Via` and are reported ([`super::own_responses`]).
    pub fn watch_io<T>(&self, io: T, own: Option<OwnResponses>) -> Flushes<T> {
        Flushes {
            io,
            state: self.state.clone(),
            own,
            eof_deferred: false,
        }
    }

    /// Drives `conn`, dropping it (which closes the socket) when a request
    /// head is overdue or the client stopped reading.
    pub async fn serve<F, E>(self, conn: F) -> Result<(), ConnError<E>>
    where
        F: Future<Output = Result<(), E>>,
    {
        let mut conn = std::pin::pin!(conn);
        let mut head_at = self.accepted + self.timeout;
        // Checked twice per send timeout: still blocked, with no change,
        // at two checks in a row after the one that saw the stall begin is
        // a stall of one to one and a half timeouts.
        let send_every = (self.send_timeout / 2).max(Duration::from_millis(1));
        let mut send_at = self.accepted + send_every;
        let mut quiet = 0u8;
        let mut timer = std::pin::pin!(tokio::time::sleep_until(head_at.min(send_at)));
        let mut seen = 0;
        let mut send_seen = 0;
        loop {
            tokio::select! {
                done = &mut conn => return done.map_err(ConnError::Http),
                _ = &mut timer => {}
                _ = self.state.abusive.notified() => return Err(ConnError::PrematureResets),
            }
            let s = &self.state;
            let now = Instant::now();
            if now >= send_at {
                let events = s.send_events.load(Ordering::Relaxed);
                if events == send_seen && s.blocked.load(Ordering::Relaxed) {
                    quiet += 1;
                    if quiet >= 2 {
                        return Err(ConnError::SendTimeout);
                    }
                } else {
                    quiet = 0;
                }
                send_seen = events;
                send_at = now + send_every;
            }
            if now >= head_at {
                let activity = s.activity.load(Ordering::Relaxed);
                if activity == 0 {
                    return Err(ConnError::Silent);
                }
                if activity == seen && s.open.load(Ordering::Relaxed) == 0 {
                    return Err(ConnError::Idle);
                }
                seen = activity;
                head_at = now + self.timeout;
            }
            timer.as_mut().reset(head_at.min(send_at));
        }
    }
}

impl State {
    /// Records whether a write to the client had to wait for socket space
    /// (see the module doc on `send_timeout`).
    fn note_write(&self, waiting: bool) {
        if self.blocked.load(Ordering::Relaxed) != waiting {
            self.blocked.store(waiting, Ordering::Relaxed);
            let events = self.send_events.load(Ordering::Relaxed);
            self.send_events
                .store(events.wrapping_add(1), Ordering::Relaxed);
        }
    }
}

/// A client connection's socket. hyper flushes the socket only once its
/// own write buffer is empty, so the first successful flush after a
/// response body was dropped means that response has been written.
pub struct Flushes<T> {
    io: T,
    state: Arc<State>,
    /// Set on proxy listeners (the admin's responses carry no
    /// `Cache-Status`).
    own: Option<OwnResponses>,
    /// The end of the client's input was held back once (see `poll_read`).
    eof_deferred: bool,
}

impl<T: AsyncWrite + Unpin> Flushes<T> {
    /// hyper's own error response, stamped, when no request is open on an
    /// HTTP/1 connection (see [`super::own_responses`]); `None` otherwise.
    fn poll_own(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Option<Poll<std::io::Result<usize>>> {
        let s = &self.state;
        if s.open.load(Ordering::Relaxed) != 0
            || s.http2.load(Ordering::Relaxed)
            || s.switched.load(Ordering::Relaxed)
        {
            return None;
        }
        let written = self.own.as_mut()?.poll_write(&mut self.io, cx, bufs)?;
        self.state.note_write(written.is_pending());
        Some(written)
    }
}

impl<T> Flushes<T> {
    /// Whether to hold back the end of input now (once per connection,
    /// only while an HTTP/1 request is open).
    fn defer_eof(&mut self) -> bool {
        let s = &self.state;
        let defer = !self.eof_deferred
            && s.open.load(Ordering::Relaxed) != 0
            && !s.http2.load(Ordering::Relaxed)
            && !s.switched.load(Ordering::Relaxed);
        self.eof_deferred |= defer;
        defer
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The wrapped socket, to read from without `Flushes`' bookkeeping
    /// (which is for writes only).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Flushes<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() == before && this.defer_eof() {
            // The end of input while an HTTP/1 request is open: a client
            // that half-closed after its request (`nc -N`, some scripts).
            // hyper takes it for a closed connection and drops the request
            // before polling its answer once; held back for one turn, the
            // answer is polled first, and one ready at once (a hit) is
            // written, as nginx and Varnish answer such a client. A request
            // that needs longer still ends at the next read (`499`).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Flushes<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(own) = this.poll_own(cx, &[std::io::IoSlice::new(buf)]) {
            return own;
        }
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.state.note_write(written.is_pending());
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(own) = this.poll_own(cx, bufs) {
            return own;
        }
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.state.note_write(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        // A TLS stream's flush writes its buffered records: it can wait
        // for socket space too.
        this.state.note_write(flushed.is_pending());
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECOND: Duration = Duration::from_secs(1);

    /// A connection that has received a request head and writes `len`
    /// bytes of response into `io` after `wait`, holding the request open.
    fn respond(
        heads: &HeadDeadline,
        mut io: Flushes<tokio::io::DuplexStream>,
        wait: Duration,
        len: usize,
    ) -> impl Future<Output = std::io::Result<()>> {
        let open = heads.arrived(Version::HTTP_11, false);
        async move {
            let _open = open;
            tokio::time::sleep(wait).await;
            io.write_all(&vec![b'x'; len]).await?;
            io.flush().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_cut_within_one_and_a_half_send_timeouts() {
        let heads = HeadDeadline::new(10 * SECOND, SECOND);
        let (_client, server) = tokio::io::duplex(1024);
        let conn = respond(
            &heads,
            heads.watch_io(server, None),
            Duration::ZERO,
            64 * 1024,
        );
        let start = Instant::now();
        let ended = tokio::time::timeout(60 * SECOND, heads.serve(conn))
            .await
            .expect("closed within a minute");
        assert!(matches!(ended, Err(ConnError::SendTimeout)), "{ended:?}");
        let took = start.elapsed();
        assert!(took >= SECOND && took <= 3 * SECOND / 2, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_steady_reader_is_never_cut() {
        let heads = HeadDeadline::new(10 * SECOND, SECOND);
        let (mut client, server) = tokio::io::duplex(1024);
        let conn = respond(&heads, heads.watch_io(server, None), Duration::ZERO, 4096);
        // 100 bytes every 0.7 s: each wait is shorter than the timeout,
        // the whole response takes many of them.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 100];
            loop {
                tokio::time::sleep(Duration::from_millis(700)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        let start = Instant::now();
        let ended = heads.serve(conn).await;
        assert!(ended.is_ok(), "{ended:?}");
        assert!(start.elapsed() > 10 * SECOND, "{:?}", start.elapsed());
        assert_eq!(reader.await.unwrap(), 4096);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_too_long_for_a_deadline_mean_never() {
        let heads = HeadDeadline::new(Duration::MAX, Duration::MAX);
        let (mut client, server) = tokio::io::duplex(1024);
        let conn = respond(&heads, heads.watch_io(server, None), 3600 * SECOND, 16);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            client.read_exact(&mut buf).await.map(|_| buf.len())
        });
        assert!(heads.serve(conn).await.is_ok());
        assert_eq!(reader.await.unwrap().unwrap(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_upstream_is_not_a_stalled_client() {
        let heads = HeadDeadline::new(10 * SECOND, SECOND);
        let (mut client, server) = tokio::io::duplex(1024);
        // Nothing to write for 5 s (a slow upstream), then a response the
        // client reads at once.
        let conn = respond(&heads, heads.watch_io(server, None), 5 * SECOND, 512);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            client.read_exact(&mut buf).await.map(|_| buf.len())
        });
        let ended = heads.serve(conn).await;
        assert!(ended.is_ok(), "{ended:?}");
        assert_eq!(reader.await.unwrap().unwrap(), 512);
    }

    #[tokio::test(start_paused = true)]
    async fn mostly_reset_http2_streams_close_the_connection() {
        let heads = HeadDeadline::new(3600 * SECOND, 3600 * SECOND);
        // Answered streams and a few resets: fine.
        for i in 0..RESET_MIN_STREAMS {
            let open = heads.arrived(Version::HTTP_2, false);
            if i % 3 == 0 {
                drop(open);
            } else {
                drop(Tracked::new((), open));
            }
        }
        let served = tokio::time::timeout(
            SECOND,
            heads
                .clone()
                .serve(std::future::pending::<Result<(), ()>>()),
        );
        assert!(
            served.await.is_err(),
            "closed with a third of its streams reset"
        );
        // Then every stream reset before its answer: closed once more than
        // half of all were.
        for _ in 0..RESET_MIN_STREAMS {
            drop(heads.arrived(Version::HTTP_2, false));
        }
        let ended = tokio::time::timeout(
            SECOND,
            heads.serve(std::future::pending::<Result<(), ()>>()),
        )
        .await
        .expect("closed at once");
        assert!(
            matches!(ended, Err(ConnError::PrematureResets)),
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_closed_like_an_http1_one() {
        let heads = HeadDeadline::new(SECOND, 3600 * SECOND);
        let (_client, server) = tokio::io::duplex(1024);
        let mut io = heads.watch_io(server, None);
        // One stream answered and written, then nothing: the connection
        // stays up (a pending future: the client answers pings).
        let open = heads.arrived(Version::HTTP_2, false);
        drop(Tracked::new((), open));
        io.flush().await.unwrap();
        let start = Instant::now();
        let ended = tokio::time::timeout(
            10 * SECOND,
            heads.serve(std::future::pending::<Result<(), ()>>()),
        )
        .await
        .expect("closed within ten seconds");
        assert!(matches!(ended, Err(ConnError::Idle)), "{ended:?}");
        assert!(start.elapsed() <= 2 * SECOND, "{:?}", start.elapsed());
    }
}

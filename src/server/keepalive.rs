//! Idle keep-alive connections of the plain and TLS listeners give their
//! buffers back (SPEC §10: an idle keep-alive connection costs at most 16
//! KiB).
//!
//! hyper's HTTP/1.1 connection keeps an 8 KiB read buffer, an 8 KiB write
//! buffer and the slot of the service future for as long as it lives: 19–20
//! KiB per idle connection (docs/performance.md §12), and hyper offers no
//! setting to release them. So Strata does what nginx does with a
//! keep-alive connection (it frees the request's buffers and allocates new
//! ones when the next request arrives): it takes the socket and the service
//! back from an idle hyper connection (`into_parts`), waits for the client
//! with no buffer of hyper's (a TLS connection keeps rustls's; see
//! [`super::transport`]), and starts a new hyper connection on the same
//! stream when the client sends again.
//!
//! **Idle** is decided by [`Keepalive::sweep`], one task for the listener,
//! every [`SWEEP`]: a connection whose [`HeadDeadline::quiet`] value is the
//! same at two sweeps in a row (nothing open, no request head and no
//! response written in between) is asked to let go, so a connection is
//! released between one and two sweeps after its last response. A request
//! pays nothing for this (no timer, no clock read): the connection's task
//! reads one flag when it is woken. Before letting go the task checks
//! `quiet` again itself; it is the only one driving hyper, so nothing moves
//! while it looks. What hyper had read of a next request head (a client
//! that stalled half-way) is replayed to the new hyper connection before
//! the socket's own bytes.
//!
//! **Not released:** a connection whose latest request's body has not been
//! read to its end ([`super::deadline::RequestBody`] says when it has: hyper
//! may still be reading it after the response, and the rest of a body must
//! never be parsed as a request head), a protocol switch (`101`), HTTP/2
//! (h2c, found by looking at the first bytes, or ALPN `h2` over TLS;
//! served by hyper-util's auto builder, like a client that has sent only
//! part of the preface so far) and the admin listener. Over TLS, ALPN
//! decides: a client that agreed on `h2` and sends something else than its
//! preface is closed, one that agreed on `http/1.1` (or on nothing) is
//! served HTTP/1.1 whatever it sends.
//!
//! **The future's size** is per connection too: [`serve`] returns an async
//! block rather than being an async fn (which keeps its arguments beside
//! the locals it moves them into: the TLS stream, 1.2 KiB with rustls's
//! state inline, was held twice), and no binding that holds the stream
//! stays in scope across an await (`parts`, the unboxed h2 connection).
//!
//! **Drain** ([`Keepalive::drain`]) goes through the same flag: a
//! connection with a request in flight gets hyper's graceful shutdown (the
//! response is finished, then the connection closed), an idle one is
//! closed at once, even with part of a next head received (hyper would
//! wait for the rest, and a client that never sends it held the drain for
//! all of `drain_timeout`).
//!
//! **The freed buffers reach the kernel** through [`on_thread_park`]: the
//! allocator purges freed pages only when their thread allocates again, so
//! a burst of connections going idle at once left their buffers resident
//! in a process that then sat idle. A runtime worker about to park after
//! it released connections runs [`crate::heap::release_freed`] once.
//!
//! **The cost** is for clients that pause between requests long enough
//! to be taken back: a new hyper connection per request, about 9 µs of CPU
//! (1,000 clients pausing 0.4 s: 16.7 → 26 µs per request). A client whose
//! requests come closer than one sweep apart never pays it.
//!
//! The task's waker is recorded once per hyper connection rather than on
//! every poll: a spawned task's waker does not change while it lives, and
//! the connection future is polled by its own task only.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::ReadBuf;

use super::deadline::HeadDeadline;
use super::transport::{Protocol, Replay, Transport, LOOK};

/// How often idle connections are looked for.
pub const SWEEP: Duration = Duration::from_millis(200);

/// The first bytes of an h2c (prior knowledge) connection, RFC 9113 §3.4.
const H2_PREFACE: &[u8; LOOK] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Flags a connection's task reads when woken.
const RELEASE: u8 = 1;
const DRAIN: u8 = 2;

thread_local! {
    /// Connections this thread let go of since it last purged its heap.
    static RELEASED_HERE: Cell<u32> = const { Cell::new(0) };
}

/// For the runtime's `on_thread_park`: a worker going idle after it took
/// connections back hands the freed buffers back to the kernel. One
/// thread-local read per park otherwise. A burst of releases costs one
/// purge per worker: a worker parks only once it has run all its ready
/// tasks. (A time limit between purges was tried: a worker whose purge
/// was put off could then sleep for good with the pages resident.)
pub fn on_thread_park() {
    RELEASED_HERE.with(|released| {
        if released.get() != 0 {
            released.set(0);
            crate::heap::release_freed();
        }
    });
}

/// What a connection ends with.
pub type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The plain listener's connections, for the sweep and the drain.
#[derive(Default)]
pub struct Keepalive {
    conns: Mutex<Vec<Entry>>,
    /// Wakes the sweep when a connection is registered into an empty list.
    added: tokio::sync::Notify,
}

struct Entry {
    conn: Arc<Handle>,
    /// `quiet` at the last sweep.
    seen: Option<u64>,
    /// Asked to let go since `seen` last changed.
    asked: bool,
}

/// One connection as the sweep and the drain see it.
pub struct Handle {
    heads: HeadDeadline,
    flags: AtomicU8,
    waker: Mutex<Option<Waker>>,
    /// Times this connection let go of hyper's connection.
    releases: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Handle {
    fn ask(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::Relaxed);
        // The flag is set before the lock: a task that records its waker
        // after this sees the flag when it next reads it.
        if let Some(waker) = lock(&self.waker).as_ref() {
            waker.wake_by_ref();
        }
    }

    fn record_waker(&self, cx: &Context<'_>) {
        let mut waker = lock(&self.waker);
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
    }

    fn draining(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & DRAIN != 0
    }

    /// Asked to let go (the flag is cleared), and still idle now.
    fn take_release(&self) -> bool {
        self.flags.fetch_and(!RELEASE, Ordering::Relaxed) & RELEASE != 0
            && self.heads.quiet().is_some()
    }

    /// Forgets an ask that came while no hyper connection was held (before
    /// the first bytes, or while released): the next one is new.
    fn forget_release(&self) {
        self.flags.fetch_and(!RELEASE, Ordering::Relaxed);
    }
}

impl Keepalive {
    /// Adds a connection (call at accept).
    pub fn register(&self, heads: HeadDeadline) -> Arc<Handle> {
        let conn = Arc::new(Handle {
            heads,
            flags: AtomicU8::new(0),
            waker: Mutex::new(None),
            releases: AtomicU64::new(0),
        });
        let mut conns = lock(&self.conns);
        conns.push(Entry {
            conn: conn.clone(),
            seen: None,
            asked: false,
        });
        if conns.len() == 1 {
            self.added.notify_one();
        }
        conn
    }

    /// Runs for the listener's life: every [`SWEEP`], asks the connections
    /// idle since the last sweep to let go, and forgets closed ones.
    pub async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.sweep_once() {
                // Nothing to look at: sleep until a connection comes.
                self.added.notified().await;
            }
        }
    }

    /// One pass; true when no connection is left.
    fn sweep_once(&self) -> bool {
        let mut conns = lock(&self.conns);
        conns.retain_mut(|e| {
            if Arc::strong_count(&e.conn) == 1 {
                return false;
            }
            let quiet = e.conn.heads.quiet();
            if quiet.is_some() && quiet == e.seen {
                if !e.asked {
                    e.asked = true;
                    e.conn.ask(RELEASE);
                }
            } else {
                e.seen = quiet;
                e.asked = false;
            }
            true
        });
        conns.is_empty()
    }

    /// Releases so far by the connections still open.
    pub fn released(&self) -> u64 {
        lock(&self.conns)
            .iter()
            .map(|e| e.conn.releases.load(Ordering::Relaxed))
            .sum()
    }

    /// Closes idle connections and lets busy ones finish their response
    /// (then close).
    pub fn drain(&self) {
        for e in lock(&self.conns).iter() {
            e.conn.ask(DRAIN);
        }
    }
}

/// Serves one proxy connection: HTTP/1.1 with release when idle, or h2
/// (h2c, or ALPN `h2` over TLS) through `fallback`. The stream comes
/// wrapped (`Replay::new`), and the future holds it once (a TLS stream,
/// rustls's connection state inline, is 1.3 KiB).
// Not an async fn: see the body's first comment.
#[allow(clippy::manual_async_fn)]
pub fn serve<T, S, B>(
    mut io: Replay<T>,
    mut service: S,
    conn: Arc<Handle>,
    h1: Arc<http1::Builder>,
    fallback: Arc<auto::Builder<TokioExecutor>>,
) -> impl Future<Output = ConnResult>
where
    T: Transport,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Unpin + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // An async block, not an async fn: an async fn moves its arguments
    // into locals of its own and keeps both, which held the stream twice.
    async move {
        let first = first_bytes(&mut io.io, &conn).await;
        let first = match (first, io.io.agreed()) {
            (First::Closed, _) | (_, None) => first,
            (First::Http2, Some(Protocol::Http2)) => First::Http2,
            // ALPN `h2` and not its preface: not served as HTTP/1.1.
            (_, Some(Protocol::Http2)) => return Ok(()),
            // HTTP/1.1 by ALPN (or none): hyper closes on an h2 preface.
            (_, Some(Protocol::Http1)) => First::Http1,
        };
        match first {
            First::Closed => {
                // Closed (or drained) before a first byte: a TLS client
                // still gets its `close_notify`. A few bytes written into
                // an empty send buffer do not wait.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                return Ok(());
            }
            First::Http2 => {
                // One expression: a binding of the unboxed connection would stay
                // in this future, with the stream inside it.
                let mut http = Box::pin(
                    fallback
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .into_owned(),
                );
                // Never left: only an HTTP/1.1 connection lets go.
                let done = drive(&conn, http.as_mut(), false, |h| h.graceful_shutdown()).await;
                return done.unwrap_or(Ok(()));
            }
            First::Http1 => {}
        }
        loop {
            conn.forget_release();
            let mut http = Box::pin(
                h1.serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            );
            if let Some(done) = drive(&conn, http.as_mut(), true, |h| h.graceful_shutdown()).await {
                return done;
            }
            // Taken back. `parts` lives in this arm only: a binding still in
            // scope at the wait below would be kept in this future across it
            // (another copy of the stream's room), and hyper's read buffer (a
            // `Bytes` that owns all 8 KiB however little is left in it) with it.
            match Pin::into_inner(http).into_parts() {
                Some(parts) => {
                    io = parts.io.into_inner();
                    service = parts.service;
                    io.hold(&parts.read_buf);
                }
                None => return Ok(()),
            }
            RELEASED_HERE.with(|released| released.set(released.get().saturating_add(1)));
            conn.releases.fetch_add(1, Ordering::Relaxed);
            // Idle: no hyper connection and no buffer of hyper's until the
            // client sends (or closes, which the new connection then reads).
            let wake = poll_fn(|cx| {
                conn.record_waker(cx);
                if conn.draining() {
                    return Poll::Ready(false);
                }
                if !io.held.is_empty() {
                    return Poll::Ready(true);
                }
                io.io.poll_arrival(cx, None).map(|arrived| arrived.is_ok())
            })
            .await;
            if !wake {
                return Ok(());
            }
        }
    }
}

#[derive(Clone, Copy)]
enum First {
    Closed,
    Http1,
    /// The h2 preface, or so far only a part of it.
    Http2,
}

/// Looks at the client's first bytes without taking them.
async fn first_bytes<T: Transport>(io: &mut T, conn: &Handle) -> First {
    let mut first = [MaybeUninit::<u8>::uninit(); LOOK];
    poll_fn(|cx| {
        conn.record_waker(cx);
        if conn.draining() {
            return Poll::Ready(First::Closed);
        }
        let mut buf = ReadBuf::uninit(&mut first);
        io.poll_arrival(cx, Some(&mut buf))
            .map(|arrived| match arrived {
                Err(_) => First::Closed,
                Ok(()) if buf.filled().is_empty() => First::Closed,
                Ok(()) if H2_PREFACE.starts_with(buf.filled()) => First::Http2,
                Ok(()) => First::Http1,
            })
    })
    .await
}

/// Drives `http` to its end (`Some`), shutting it down gracefully on
/// drain. An HTTP/1.1 connection (`http1`) with nothing in flight is
/// closed at once on drain instead (at most part of a next head was
/// received, which nginx does not wait for either), and is left (`None`)
/// when asked to let go while still quiet.
async fn drive<F, E>(
    conn: &Handle,
    mut http: Pin<&mut F>,
    http1: bool,
    shutdown: impl Fn(Pin<&mut F>),
) -> Option<ConnResult>
where
    F: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut watching = false;
    let mut shutting = false;
    poll_fn(|cx| {
        if !watching {
            watching = true;
            conn.record_waker(cx);
        }
        let flags = conn.flags.load(Ordering::Relaxed);
        if flags & DRAIN != 0 {
            if http1 && conn.heads.quiet().is_some() {
                return Poll::Ready(Some(Ok(())));
            }
            if !shutting {
                shutting = true;
                shutdown(http.as_mut());
            }
        } else if http1 && flags & RELEASE != 0 && conn.take_release() {
            return Poll::Ready(None);
        }
        http.as_mut()
            .poll(cx)
            .map(|done| Some(done.map_err(Into::into)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io;

    use http_body_util::Full;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::server::deadline::{RequestBody, Tracked};
    use crate::server::sendfile::Socket;
    use bytes::Bytes;

    /// One connection served by [`serve`]: its service answers every
    /// request at once with the request's path; a request body is read to
    /// its end afterwards, by a task of its own, into `bodies` (like a
    /// proxy that streams an upload upstream after the answer).
    struct Served<C = TcpStream> {
        keepalive: Arc<Keepalive>,
        client: C,
        /// The server's end of the connection, to see what hyper has read.
        server_end: std::net::TcpStream,
        bodies: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
        task: JoinHandle<ConnResult>,
    }

    /// A connected pair: the client's end, the server's (and a clone of it).
    async fn tcp_pair() -> (TcpStream, TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let stream = stream.into_std().unwrap();
        let server_end = stream.try_clone().unwrap();
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        (client, stream, server_end)
    }

    async fn served() -> Served {
        let (client, stream, server_end) = tcp_pair().await;
        let heads = HeadDeadline::new(Duration::from_secs(60), Duration::from_secs(60));
        let socket = heads.watch_io(Socket::new(stream, false), None);
        start(client, server_end, socket, heads)
    }

    /// The same over TLS (a self-signed certificate, ALPN `http/1.1`).
    async fn served_tls() -> Served<tokio_rustls::client::TlsStream<TcpStream>> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let (client, stream, server_end) = tcp_pair().await;
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], PrivateKeyDer::from(key))
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(stream);
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client_config))
            .connect(ServerName::try_from("localhost").unwrap(), client);
        let (stream, client) = tokio::join!(accept, connect);
        let heads = HeadDeadline::new(Duration::from_secs(60), Duration::from_secs(60));
        let socket = heads.watch_io(stream.unwrap(), None);
        start(client.unwrap(), server_end, socket, heads)
    }

    fn start<C, T: Transport>(
        client: C,
        server_end: std::net::TcpStream,
        socket: T,
        heads: HeadDeadline,
    ) -> Served<C> {
        let keepalive = Arc::new(Keepalive::default());
        let conn = keepalive.register(heads.clone());
        let (read, bodies) = tokio::sync::mpsc::unbounded_channel();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let open = heads.arrived(req.version(), !req.body().is_end_stream());
            let path = Bytes::from(req.uri().path().to_owned());
            let read = read.clone();
            let body = RequestBody::new(req.into_body(), heads.body_end());
            tokio::spawn(async move {
                if let Ok(body) = http_body_util::BodyExt::collect(body).await {
                    let body = body.to_bytes();
                    if !body.is_empty() {
                        let _ = read.send(body);
                    }
                }
            });
            async move { Ok::<_, Infallible>(Response::new(Tracked::new(Full::new(path), open))) }
        });
        let mut h1 = http1::Builder::new();
        h1.keep_alive(true);
        let fallback = auto::Builder::new(TokioExecutor::new());
        let task = tokio::spawn(serve(
            Replay::new(socket),
            service,
            conn,
            Arc::new(h1),
            Arc::new(fallback),
        ));
        Served {
            keepalive,
            client,
            server_end,
            bodies,
            task,
        }
    }

    /// Reads one response and returns its body.
    async fn body<C: AsyncRead + Unpin>(client: &mut C) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + len {
                    return text[end + 4..end + 4 + len].to_owned();
                }
            }
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {text:?}");
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// Waits until hyper has read everything the client sent.
    async fn all_read(server_end: &std::net::TcpStream) {
        for _ in 0..400 {
            match server_end.peek(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        panic!("the client's bytes were not read");
    }

    /// Sends `GET path` and returns the response's body.
    async fn get<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C, path: &str) -> String {
        send(client, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        body(client).await
    }

    /// Writes and flushes (a TLS client holds what it has not flushed).
    async fn send<C: AsyncWrite + Unpin>(client: &mut C, bytes: &str) {
        client.write_all(bytes.as_bytes()).await.unwrap();
        client.flush().await.unwrap();
    }

    /// Sweeps until the connections have released `n` times in all.
    async fn swept_until_released(keepalive: &Keepalive, n: u64) {
        for _ in 0..400 {
            keepalive.sweep_once();
            if keepalive.released() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("released {} times, not {n}", keepalive.released());
    }

    #[tokio::test]
    async fn an_idle_connection_lets_go_and_serves_the_next_request() {
        let mut s = served().await;
        assert_eq!(get(&mut s.client, "/one").await, "/one");
        swept_until_released(&s.keepalive, 1).await;
        assert_eq!(get(&mut s.client, "/two").await, "/two");
        swept_until_released(&s.keepalive, 2).await;
        assert_eq!(get(&mut s.client, "/three").await, "/three");
    }

    #[tokio::test]
    async fn a_head_half_sent_before_the_release_is_kept() {
        let mut s = served().await;
        assert_eq!(get(&mut s.client, "/one").await, "/one");
        s.client.write_all(b"GET /tw").await.unwrap();
        swept_until_released(&s.keepalive, 1).await;
        s.client
            .write_all(b"o HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(body(&mut s.client).await, "/two");
    }

    /// Over TLS the wait reads records into rustls's plaintext buffer and
    /// leaves them there; a head hyper had half read is replayed, and a
    /// pipelined pair that arrives in one record while released is served
    /// whole.
    #[tokio::test]
    async fn an_idle_tls_connection_lets_go_and_keeps_what_the_client_sent() {
        let mut s = served_tls().await;
        assert_eq!(get(&mut s.client, "/one").await, "/one");
        swept_until_released(&s.keepalive, 1).await;
        assert_eq!(get(&mut s.client, "/two").await, "/two");
        send(&mut s.client, "GET /thr").await;
        swept_until_released(&s.keepalive, 2).await;
        send(&mut s.client, "ee HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(body(&mut s.client).await, "/three");
        swept_until_released(&s.keepalive, 3).await;
        let pair = "GET /four HTTP/1.1\r\nHost: x\r\n\r\nGET /five HTTP/1.1\r\nHost: x\r\n\r\n";
        send(&mut s.client, pair).await;
        assert_eq!(body(&mut s.client).await, "/four");
        assert_eq!(body(&mut s.client).await, "/five");
        swept_until_released(&s.keepalive, 4).await;
        s.keepalive.drain();
        let done = tokio::time::timeout(Duration::from_secs(5), s.task).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    }

    #[tokio::test]
    async fn a_request_body_still_arriving_keeps_the_connection() {
        let mut s = served().await;
        // The body's rest is shaped like a request head: released after the
        // answer, the connection would take it for one.
        let rest: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\nfirst",
            5 + rest.len()
        );
        s.client.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(body(&mut s.client).await, "/up");
        for _ in 0..10 {
            s.keepalive.sweep_once();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        s.client.write_all(rest).await.unwrap();
        assert_eq!(get(&mut s.client, "/two").await, "/two");
        assert_eq!(s.keepalive.released(), 0);
        let mut whole = b"first".to_vec();
        whole.extend_from_slice(rest);
        assert_eq!(s.bodies.recv().await.unwrap(), whole);
    }

    /// A request body read to its end (a declared length, or chunked) no
    /// longer keeps the connection from letting go, and what follows it is
    /// served as the next request.
    #[tokio::test]
    async fn a_request_body_read_to_its_end_lets_the_connection_go() {
        let mut s = served().await;
        send(
            &mut s.client,
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst",
        )
        .await;
        assert_eq!(body(&mut s.client).await, "/up");
        assert_eq!(s.bodies.recv().await.unwrap(), "first");
        swept_until_released(&s.keepalive, 1).await;
        assert_eq!(get(&mut s.client, "/two").await, "/two");
        send(
            &mut s.client,
            "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(body(&mut s.client).await, "/c");
        assert_eq!(s.bodies.recv().await.unwrap(), "hello");
        swept_until_released(&s.keepalive, 2).await;
        assert_eq!(get(&mut s.client, "/three").await, "/three");
    }

    #[tokio::test]
    async fn drain_closes_an_idle_connection_at_once() {
        let mut s = served().await;
        assert_eq!(get(&mut s.client, "/one").await, "/one");
        swept_until_released(&s.keepalive, 1).await;
        s.keepalive.drain();
        let ended = tokio::time::timeout(Duration::from_secs(5), s.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        // The test's own copy of the server's end would keep it open.
        drop(s.server_end);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    }

    #[tokio::test]
    async fn drain_does_not_wait_for_the_rest_of_a_head() {
        let mut s = served().await;
        // A new hyper connection (a fresh one, or one started after a
        // release) counts as busy until its first response: hyper's own
        // graceful shutdown would wait for the rest of this head.
        s.client.write_all(b"GET /one HT").await.unwrap();
        all_read(&s.server_end).await;
        s.keepalive.drain();
        let ended = tokio::time::timeout(Duration::from_secs(5), s.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }

    #[tokio::test]
    async fn drain_closes_a_connection_that_sent_nothing_yet() {
        let s = served().await;
        s.keepalive.drain();
        let ended = tokio::time::timeout(Duration::from_secs(5), s.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }
}

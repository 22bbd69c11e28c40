//! Keep-alive connections to one upstream server: connecting (TCP with
//! `connect_timeout`, `TCP_NODELAY`, TCP keepalive, then an HTTP/1.1
//! handshake with hyper's `client::conn::http1`), and the idle list that
//! connections are checked out of and back into.
//!
//! Hand-written rather than hyper-util's pooled client: that client hands
//! every request to the connection through its own checkout future, keys
//! its pool by a hashed (scheme, authority), and spawns a task per request
//! to wait for the connection to become idle again. Here a checkout is a
//! mutex-guarded `Vec::pop` on the server's own list (the server index is
//! known), and a connection goes back when its response body ends (see
//! [`super::client::UpstreamBody`]): no task, no hash.
//!
//! No task per connection either: a [`Conn`] carries hyper's connection
//! state machine (the `Connection` future that does the socket I/O) with
//! its request handle, and whoever holds the connection drives it — the
//! request's own task while it waits for the response head, then whoever
//! reads the response body. The usual design spawns that future, which
//! costs every request a wake-up of, and a hop through a channel to,
//! another task both ways (nginx, whose upstream I/O runs in the request's
//! own event handler, has neither). Only an upgraded connection (`101`)
//! gets a task of its own. An idle connection is polled by nobody: a close
//! by the upstream is noticed at the next checkout or sweep.
//!
//! Idle connections are used last-in first-out, so under light load the
//! surplus ones age out; an idle connection older than `pool_idle_timeout`
//! is closed at the next checkout or by the sweeper ([`spawn_sweeper`]),
//! and at most `pool_max_idle_per_server` wait per server.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::counted::{Counted, ReadCount};
use super::error::UpstreamError;
use super::outgoing::Outgoing;

/// The most an upstream connection's read buffer grows to (bytes). hyper's
/// default, ~400 KiB, let every
/// chunk of a fast upstream body be a slice of a buffer that large, kept
/// until the client had taken the chunk: 16 concurrent large misses held
/// 60 MiB of them, freed only into the allocator (SPEC §10's memory
/// bound). A 16 MiB body is read in 256 reads instead of about 40.
const READ_BUFFER_MAX: usize = 64 << 10;

/// The largest response head an upstream may send, in bytes: the status
/// line, the fields and the empty line that ends them, each `1xx` head
/// counted on its own (nginx's `proxy_buffer_size`, 4–8 KiB, is the same
/// kind of limit). A larger one is a protocol error (`502`). Set as
/// hyper's `max_header_size`, so it is one number. The buffer limit alone
/// is checked only while a head is incomplete, and a read may fill more
/// than it (the buffer's spare capacity, which depends on what the
/// connection read before): a fresh connection took heads up to about
/// 112 KiB, one whose previous response had a large head refused anything
/// over 64 KiB. No larger than [`READ_BUFFER_MAX`], so that limit never
/// refuses a head this one allows.
const RESPONSE_HEAD_MAX: usize = READ_BUFFER_MAX;

/// TCP keepalive probes on upstream sockets start after this long idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A request that is never re-sent (non-idempotent, or with a body) takes
/// a pooled connection only if it has been idle for less than this. An
/// upstream closing idle connections (after 1 s, say) races a request
/// written just then; a GET that loses the race is re-sent (RFC 9112
/// §9.3.1), a POST could have been applied and is not, so it must not run
/// that race (SPEC §6: no client error at any request rate). Half a second
/// is below the keep-alive timeout of the common servers (nginx 75 s,
/// Apache and Node.js 5 s, gunicorn 2 s) and above the idle time of a
/// connection under steady load. Connections older than this stay for the
/// requests that may be re-sent. (Not learned from the closes seen: one
/// upstream restart would make every later POST open a connection.)
const UNRETRYABLE_IDLE: Duration = Duration::from_millis(500);

/// An HTTP/1.1 connection's request handle.
pub type Sender = http1::SendRequest<Outgoing>;

/// An HTTP/1.1 connection's I/O state machine (hyper's `Connection`, with
/// upgrades for WebSocket pass-through). It resolves when the connection
/// ends: closed by either side, failed, or handed to an upgrade. Boxed
/// once per connection: hyper does not name its upgradeable type.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One upstream connection: its request handle and its I/O, driven by
/// whoever holds it (see the module doc).
pub struct Conn {
    pub sender: Sender,
    /// `None` once the connection has ended (a finished hyper connection
    /// must not be polled again; dropping it fails what it still held).
    driver: Option<Driver>,
    /// Bytes read from the socket so far.
    read: ReadCount,
}

impl Conn {
    /// Bytes read from the upstream on this connection so far (a response
    /// byte arrived when this grows).
    pub fn bytes_read(&self) -> u64 {
        self.read.get()
    }

    /// Runs the connection's I/O as far as it can go now: writes what is
    /// queued, reads what has arrived. The connection ending drops the
    /// driver, which fails any request it still held (hyper hands an
    /// unsent one back).
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver {
            if let Poll::Ready(result) = driver.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                self.driver = None;
            }
        }
    }

    /// Whether the connection has ended or can take no more requests.
    pub fn is_closed(&self) -> bool {
        self.driver.is_none() || self.sender.is_closed()
    }

    /// Drives the connection until it can take a request (the previous
    /// exchange is over on the wire); an error means it closed.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            self.sender.poll_ready(cx)
        })
        .await
    }

    /// Drives `fut` (a request sent on this connection) to completion
    /// together with the connection's I/O.
    pub async fn run<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            self.drive(cx);
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Hands the connection to a task of its own: an upgraded (`101`)
    /// exchange, whose I/O hyper gives to the upgraded stream only from a
    /// driven connection.
    pub fn spawn(self) {
        if let Some(driver) = self.driver {
            let sender = self.sender;
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                drop(sender);
            });
        }
    }
}

/// The connections of one upstream server.
pub struct ServerPool {
    pub authority: Authority,
    /// Idle connections, most recently used last. A std mutex: it is held
    /// only for a push or a pop, never across an `.await`.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl ServerPool {
    pub fn new(
        authority: Authority,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> ServerPool {
        ServerPool {
            authority,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            connect_timeout,
        }
    }

    /// The most recently used idle connection that is still open and
    /// ready for a request, if any. Expired and closed ones are dropped
    /// (which closes them). For a request that will not be re-sent
    /// (`retryable` false), only one idle for less than
    /// [`UNRETRYABLE_IDLE`] qualifies; older ones are left for others.
    pub async fn checkout(&self, retryable: bool) -> Option<Conn> {
        let fresh_enough = if retryable {
            Duration::MAX
        } else {
            UNRETRYABLE_IDLE
        };
        loop {
            let mut conn = {
                let now = Instant::now();
                let mut idle = self.idle.lock().ok()?;
                loop {
                    // The newest is last: if it is too old, all are.
                    let age = now.saturating_duration_since(idle.last()?.since);
                    if age >= fresh_enough && age < self.idle_timeout {
                        return None;
                    }
                    let entry = idle.pop()?;
                    if !entry.conn.is_closed() && age < self.idle_timeout {
                        break entry.conn;
                    }
                }
            };
            // Driving it reads what arrived while nobody polled it: the end
            // of the last exchange, or the upstream's close. Ready means it
            // can take a request; an error means it closed meanwhile.
            if conn.ready().await.is_ok() && !conn.is_closed() {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose response body was read to the end. A
    /// full list or a closed connection drops it. One whose exchange is not
    /// over on the wire yet — hyper still writing the request body because
    /// the upstream answered early (a `401` or `413` to an upload), or not
    /// yet back to idle — is driven to the end by a task of its own first
    /// (for at most `pool_idle_timeout`, then closed): nobody else would
    /// poll it, so the upload would stall.
    pub fn checkin(self: &Arc<Self>, mut conn: Conn) {
        if conn.is_closed() || self.max_idle == 0 {
            return;
        }
        if !conn.sender.is_ready() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            tracing::debug!(server = %self.authority, "upstream exchange not over at check-in; finishing it in the background");
            let pool = self.clone();
            // Bounded like an idle connection: an upstream that answered
            // and then stopped reading must not hold a task and a socket
            // forever.
            let bound = self.idle_timeout;
            runtime.spawn(async move {
                let finished = tokio::time::timeout(bound, conn.ready()).await;
                if matches!(finished, Ok(Ok(()))) && !conn.is_closed() {
                    pool.put_idle(conn);
                }
            });
            return;
        }
        self.put_idle(conn);
    }

    /// A full list gives up its oldest connection for this one: the
    /// newest are the ones worth keeping (used first, and the only ones
    /// a request that is never re-sent may take).
    fn put_idle(&self, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let evicted = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            let evicted = (idle.len() >= self.max_idle).then(|| idle.remove(0));
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
            evicted
        };
        // Closed outside the lock.
        drop(evicted);
    }

    /// Drops idle connections that expired or closed. Each is driven once
    /// first (with a waker that does nothing: nobody waits on an idle
    /// connection), which is how a close by the upstream is noticed.
    fn sweep(&self) {
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        let expired: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => idle
                .extract_if(.., |e| {
                    e.conn.drive(&mut cx);
                    e.conn.is_closed()
                        || now.saturating_duration_since(e.since) >= self.idle_timeout
                })
                .collect(),
            Err(_) => return,
        };
        // Closed outside the lock.
        drop(expired);
    }

    /// Opens a new connection: TCP connect within `connect_timeout`, then
    /// the HTTP/1.1 handshake (which does no I/O: the connection is driven
    /// by its holder, see [`Conn`]).
    pub async fn connect(&self) -> Result<Conn, UpstreamError> {
        let connect_error = |source| UpstreamError::connecting(self.authority.to_string(), source);
        // `host()` keeps an IPv6 literal's brackets; the resolver wants none.
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self.authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(connect_error(e)),
            Err(_) => {
                return Err(connect_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", self.connect_timeout),
                )))
            }
        };
        stream.set_nodelay(true).map_err(connect_error)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "cannot set TCP keepalive on an upstream socket");
        }
        let (stream, read) = Counted::new(stream);
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(READ_BUFFER_MAX)
            .max_header_size(RESPONSE_HEAD_MAX)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Protocol {
                server: self.authority.to_string(),
                source,
            })?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(conn.with_upgrades())),
            read,
        })
    }
}

/// Sweeps the servers' idle lists every `every` until the pools are
/// dropped. Without a runtime (a pool built outside one) nothing is
/// spawned and expiry happens at checkout only.
pub fn spawn_sweeper(servers: Weak<[Arc<ServerPool>]>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let every = every.max(Duration::from_millis(100));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(servers) = servers.upgrade() else {
                return;
            };
            for s in servers.iter() {
                s.sweep();
            }
        }
    });
}

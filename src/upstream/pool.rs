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
//! [`super::client::UpstreamBody`]): no task, no hash, no extra channel
//! beyond hyper's own dispatch to the connection task.
//!
//! Idle connections are used last-in first-out, so under light load the
//! surplus ones age out; an idle connection older than `pool_idle_timeout`
//! is closed at the next checkout or by the sweeper ([`spawn_sweeper`]),
//! and at most `pool_max_idle_per_server` wait per server.

use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::client::ReqBody;
use super::error::UpstreamError;

/// TCP keepalive probes on upstream sockets start after this long idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// An HTTP/1.1 connection's request handle.
pub type Sender = http1::SendRequest<ReqBody>;

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
    sender: Sender,
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
    /// (which closes them).
    pub async fn checkout(&self) -> Option<Sender> {
        loop {
            let mut sender = {
                let now = Instant::now();
                let mut idle = self.idle.lock().ok()?;
                loop {
                    let entry = idle.pop()?;
                    if !entry.sender.is_closed()
                        && now.saturating_duration_since(entry.since) < self.idle_timeout
                    {
                        break entry.sender;
                    }
                }
            };
            // A connection checked in as its body ended may still be
            // finishing that exchange; `ready` waits for it, and fails if
            // the connection closed meanwhile.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Returns a connection whose exchange has ended (its response body
    /// was read to the end). A full list or a closed connection drops it.
    pub fn checkin(&self, sender: Sender) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops idle connections that expired or closed.
    fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => {
                let (keep, expired) = idle.drain(..).partition(|e| {
                    !e.sender.is_closed()
                        && now.saturating_duration_since(e.since) < self.idle_timeout
                });
                *idle = keep;
                expired
            }
            Err(_) => return,
        };
        // Closed outside the lock.
        drop(expired);
    }

    /// Opens a new connection: TCP connect within `connect_timeout`, then
    /// the HTTP/1.1 handshake; the connection task is spawned (with
    /// upgrades, for WebSocket pass-through) and ends when the connection
    /// closes or every handle to it is dropped.
    pub async fn connect(&self) -> Result<Sender, UpstreamError> {
        let connect_error = |source| UpstreamError::Connect {
            server: self.authority.to_string(),
            source,
        };
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Protocol {
                server: self.authority.to_string(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
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

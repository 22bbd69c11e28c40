//! Sending one request to one upstream server over a pooled keep-alive
//! HTTP/1.1 connection (`upstream/pool.rs`), and the response body that
//! gives its connection back when it ends.
//!
//! The retry rule (RFC 9112 §9.3.1): a request that hyper hands back
//! unsent (the pooled connection was found closed before it was written)
//! goes out on a fresh connection, whatever its method; an idempotent
//! request without a body (RFC 9110 §9.2.2) whose reused connection closed
//! before any response byte is re-sent once on a fresh connection. Nothing
//! else is ever sent twice: a POST that may have reached the origin fails.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use crate::server::deadline::RequestBody;

use super::error::UpstreamError;
use super::outgoing::{Outgoing, Stalled};
use super::pool::{self, Conn, ServerPool};
use crate::config::UpstreamConfig;

/// A request body going upstream: the client's own, or none.
pub type ReqBody = Either<RequestBody, Empty<Bytes>>;

pub fn empty_body() -> ReqBody {
    Either::Right(Empty::new())
}

/// The keep-alive connections to every configured server, in the
/// balancer's order (its indices).
#[derive(Clone)]
pub struct UpstreamClient {
    servers: Arc<[Arc<ServerPool>]>,
}

/// A failed send. `request` is given back when it never left Strata (the
/// connect failed), so the caller may try another server with it.
pub struct Failure {
    pub error: UpstreamError,
    pub request: Option<Request<ReqBody>>,
}

impl UpstreamClient {
    /// Pools for `servers` (their authorities, in the balancer's order),
    /// with the pool settings of `config`.
    pub fn new<'a>(
        servers: impl Iterator<Item = &'a Authority>,
        config: &UpstreamConfig,
    ) -> UpstreamClient {
        let servers: Arc<[Arc<ServerPool>]> = servers
            .map(|a| {
                Arc::new(ServerPool::new(
                    a.clone(),
                    config.pool_max_idle_per_server,
                    config.pool_idle_timeout,
                    config.connect_timeout,
                ))
            })
            .collect();
        pool::spawn_sweeper(Arc::downgrade(&servers), config.pool_idle_timeout);
        UpstreamClient { servers }
    }

    /// Sends `req` to server `server` (an index into `upstream.servers`),
    /// waiting at most `timeout` for the response head once the request
    /// has gone out (connect included; a request body first goes out
    /// within `body_idle` between chunks, see `upstream/outgoing.rs`).
    /// `replayable` says the request is idempotent and has no body, so it
    /// may be re-sent after a reused connection turned out dead.
    pub async fn request(
        &self,
        server: usize,
        req: Request<ReqBody>,
        replayable: bool,
        timeout: Duration,
        body_idle: Duration,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let pool = &self.servers[server];
        let (parts, body) = req.into_parts();
        let (body, progress) = Outgoing::new(body);
        // Boxed: every caller up the chain (send_to, Upstreams::send,
        // forward::send, pass) holds this future inside its own and is
        // itself moved once into its caller's; unboxed, its 1.4 KB would
        // be copied at each of those levels (about 9 KB per pass).
        let mut exchange = Box::pin(exchange(pool, Request::from_parts(parts, body), replayable));
        if let Some(progress) = progress {
            // The response may come before the body is all sent (an early
            // answer to an upload).
            tokio::select! {
                done = &mut exchange => return done,
                sent = progress.sent(body_idle) => if let Err(who) = sent {
                    let server = pool.authority.to_string();
                    return Err(Failure {
                        error: match who {
                            Stalled::Client => UpstreamError::ClientStalled { server, idle: body_idle },
                            Stalled::Upstream => UpstreamError::Timeout { server, timeout: body_idle },
                        },
                        request: None,
                    });
                },
            }
        }
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                error: UpstreamError::Timeout {
                    server: pool.authority.to_string(),
                    timeout,
                },
                request: None,
            }),
        }
    }
}

async fn exchange(
    pool: &Arc<ServerPool>,
    mut req: Request<Outgoing>,
    replayable: bool,
) -> Result<Response<UpstreamBody>, Failure> {
    // Origin-form target (RFC 9112 §3.2.1); upstreams speak HTTP/1.1
    // whatever the client used.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>();
        if let Ok(uri) = target {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = http::Version::HTTP_11;
    // RFC 9112 §3.2: every HTTP/1.1 request carries Host. The client's, or
    // its URI's authority, was kept upstream; an HTTP/1.0 client may have
    // sent neither, and then the server's own name goes, as nginx's
    // default `proxy_set_header Host $proxy_host` would send.
    if !req.headers().contains_key(http::header::HOST) {
        if let Ok(host) = http::HeaderValue::from_str(pool.authority.as_str()) {
            req.headers_mut().insert(http::header::HOST, host);
        }
    }

    if let Some(mut conn) = pool.checkout(replayable).await {
        let again = replayable.then(|| Replay::capture(&req));
        // Anything read from here on is this request's response.
        let read_before = conn.bytes_read();
        let sent = conn.sender.try_send_request(req);
        match conn.run(sent).await {
            Ok(resp) => return Ok(UpstreamBody::wrap(resp, conn, pool)),
            Err(mut e) => {
                if let Some(unsent) = e.take_message() {
                    tracing::debug!(server = %pool.authority, "pooled connection closed before the request was sent; using a new one");
                    req = unsent;
                } else {
                    let error = e.into_error();
                    match again {
                        Some(replay)
                            if conn.bytes_read() == read_before
                                && closed_before_response(&error) =>
                        {
                            tracing::debug!(server = %pool.authority, error = %error, "reused connection closed before any response byte; re-sending once on a new one");
                            req = replay.rebuild();
                        }
                        _ => {
                            return Err(Failure {
                                error: protocol(pool, error),
                                request: None,
                            })
                        }
                    }
                }
            }
        }
    }

    let mut conn = match pool.connect().await {
        Ok(c) => c,
        Err(error) => {
            return Err(Failure {
                error,
                request: Some(req.map(Outgoing::into_inner)),
            })
        }
    };
    let sent = conn.sender.send_request(req);
    match conn.run(sent).await {
        Ok(resp) => Ok(UpstreamBody::wrap(resp, conn, pool)),
        Err(error) => Err(Failure {
            error: protocol(pool, error),
            request: None,
        }),
    }
}

/// RFC 9110 §8.6: a `Content-Length` sent as a list of one repeated value
/// (`5, 5`, or the field twice) is that one value: rewritten as one
/// field. Forwarded as received it would be an invalid field (hyper's
/// server refuses to send it, and the client got no response at all).
/// `Err` when the values differ (a malformed message), the fields left as
/// they are. For responses hyper's client has already refused differing
/// values (a 502); for an HTTP/2 request the caller answers `400`.
pub fn single_content_length(h: &mut http::HeaderMap) -> Result<(), ConflictingLengths> {
    let mut lines = h.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(first) = lines.next() else {
        return Ok(());
    };
    if lines.next().is_none() && first.as_bytes().iter().all(u8::is_ascii_digit) {
        return Ok(());
    }
    let mut length: Option<u64> = None;
    for v in h.get_all(http::header::CONTENT_LENGTH) {
        for element in v.to_str().map_err(|_| ConflictingLengths)?.split(',') {
            let n = element
                .trim()
                .parse::<u64>()
                .map_err(|_| ConflictingLengths)?;
            if length.is_some_and(|l| l != n) {
                return Err(ConflictingLengths);
            }
            length = Some(n);
        }
    }
    if let Some(length) = length {
        h.insert(http::header::CONTENT_LENGTH, length.into());
    }
    Ok(())
}

/// `Content-Length` values that differ, or one that is not a number.
#[derive(Debug, thiserror::Error)]
#[error("conflicting or invalid content-length fields")]
pub struct ConflictingLengths;

fn protocol(pool: &ServerPool, source: hyper::Error) -> UpstreamError {
    UpstreamError::from_send(pool.authority.to_string(), source)
}

/// The connection ended: EOF where the head should be, or the socket
/// reset or closed under the write. hyper reports an EOF partway through
/// a head the same way, so whether any response byte came first is told
/// by the bytes the connection read ([`Conn::bytes_read`]).
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// What is needed to send a body-less request again.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
}

impl Replay {
    fn capture(req: &Request<Outgoing>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn rebuild(self) -> Request<Outgoing> {
        let mut req = Request::new(Outgoing::new(empty_body()).0);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = http::Version::HTTP_11;
        *req.headers_mut() = self.headers;
        req
    }
}

/// An upstream response body. When it has been read to the end (or is
/// empty), its connection goes back to the server's idle list; dropped
/// before the end, the connection is closed (HTTP/1.1 cannot skip the rest
/// of a response). Reading it drives the connection's I/O (see
/// [`pool::Conn`]). A `101 Switching Protocols` never returns its
/// connection: it belongs to the upgraded stream, driven by a task of its
/// own.
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<(Conn, Arc<ServerPool>)>,
    /// Where a failure of this body is counted (once), when it is.
    series: Option<Arc<crate::metrics::ServerSeries>>,
}

impl UpstreamBody {
    fn wrap(mut resp: Response<Incoming>, conn: Conn, pool: &Arc<ServerPool>) -> Response<Self> {
        // hyper's client refused differing values already.
        let _ = single_content_length(resp.headers_mut());
        let conn = if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            conn.spawn();
            None
        } else {
            Some((conn, pool.clone()))
        };
        resp.map(|inner| {
            let mut body = UpstreamBody {
                inner,
                conn,
                series: None,
            };
            body.release_if_done();
            body
        })
    }

    /// Counts this body's failure, if it fails, in `series`
    /// (`strata_upstream_errors_total`): cut short (`protocol`) or stalled
    /// past `body_idle_timeout` ([`UpstreamBody::stalled`], `timeout`). A
    /// body dropped because the client went away is no failure.
    pub fn count_failures(&mut self, series: &Arc<crate::metrics::ServerSeries>) {
        self.series = Some(series.clone());
    }

    /// The body was cut off for stalling (see [`Self::count_failures`]).
    pub fn stalled(&mut self) {
        self.failed("timeout");
    }

    fn failed(&mut self, kind: &str) {
        if let Some(series) = self.series.take() {
            series.body_error(kind);
        }
    }

    fn release_if_done(&mut self) {
        if self.inner.is_end_stream() {
            if let Some((conn, pool)) = self.conn.take() {
                pool.checkin(conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            // The connection has read nothing more yet, or holds what it
            // read for us to ask for (hyper's body channel waits for
            // demand): drive it, then look again.
            if let Some((conn, _)) = &mut this.conn {
                conn.drive(cx);
                polled = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
        match &polled {
            Poll::Ready(None) => {
                if let Some((conn, pool)) = this.conn.take() {
                    pool.checkin(conn);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.release_if_done(),
            Poll::Ready(Some(Err(_))) => {
                this.conn = None;
                this.failed("protocol");
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release_if_done();
    }
}

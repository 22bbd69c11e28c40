//! A real test origin on 127.0.0.1:0. Each test gives it a handler; the
//! origin records every request it sees (method, path, headers) so tests
//! can assert on what reached the upstream.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

/// A response with `status`, `headers` and `body`.
/// The request's `name` field as text; `"-"` when absent or not text.
pub fn field<B>(req: &Request<B>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    r
}

/// A `200` with `headers` whose body is `chunks` as they come, without a
/// `Content-Length` (sent chunked).
pub fn streamed(
    headers: &[(&str, &str)],
    chunks: impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static,
) -> Response<Body> {
    use futures_util::StreamExt;
    let frames = chunks.map(|b| Ok::<_, std::io::Error>(http_body::Frame::data(b)));
    let body = http_body_util::StreamBody::new(frames)
        .map_err(|e| e.into())
        .boxed();
    let mut r = reply(200, headers, Bytes::new());
    *r.body_mut() = body;
    r
}

impl Origin {
    /// An origin answering every request with `f(request)`; `/health`
    /// answers 200 while [`Origin::set_healthy`] is true (the default)
    /// and is not counted.
    pub async fn start<F, Fut>(f: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(f(req)));
        Origin::start_handler(handler).await
    }

    /// An origin answering 200 with a fixed body and headers.
    pub async fn fixed(
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> Origin {
        Origin::start(move |_req| async move { reply(200, headers, body) }).await
    }

    /// An origin answering 200 with `headers` and a body that echoes the
    /// request target and the `Cookie` it received (`"/p?q=1 a=b"`).
    pub async fn echo(headers: &'static [(&'static str, &'static str)]) -> Origin {
        Origin::start(move |req| async move {
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let cookie = req
                .headers()
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            reply(200, headers, format!("{target} {cookie}"))
        })
        .await
    }

    pub async fn start_handler(handler: Handler) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let (stop, mut stopped) = watch::channel(false);
        let (seen2, count2, conns2, healthy2) =
            (seen.clone(), count.clone(), conns.clone(), healthy.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                conns2.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, count, healthy) = (
                    handler.clone(),
                    seen2.clone(),
                    count2.clone(),
                    healthy2.clone(),
                );
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, seen, count, healthy) = (
                            handler.clone(),
                            seen.clone(),
                            count.clone(),
                            healthy.clone(),
                        );
                        async move {
                            if req.uri().path() == "/health" {
                                let status = if healthy.load(Ordering::SeqCst) {
                                    200
                                } else {
                                    500
                                };
                                return Ok::<_, Infallible>(reply(status, &[], "health"));
                            }
                            seen.lock().expect("seen").push(Seen {
                                method: req.method().clone(),
                                path: req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_default(),
                                headers: req.headers().clone(),
                            });
                            count.fetch_add(1, Ordering::SeqCst);
                            Ok(handler(req).await)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Origin {
            addr,
            seen,
            count,
            conns,
            healthy,
            stop,
        }
    }

    /// Requests seen (health checks excluded).
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().expect("seen").last().cloned()
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A raw TCP origin for upstream misbehaviour that hyper would not produce:
/// per connection it reads the request head, writes `response` verbatim
/// and closes. Returns its address and how many requests it answered.
pub async fn raw(response: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw origin");
    let addr = listener.local_addr().expect("addr");
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(response).await;
            });
        }
    });
    (addr, answered)
}

impl Origin {
    /// An origin that holds every response until the returned gate is
    /// notified (once per response), then answers 200 with `headers` and
    /// `body`.
    pub async fn gated(
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> (Origin, Arc<tokio::sync::Notify>) {
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let origin = Origin::start(move |_req| {
            let g = g.clone();
            async move {
                g.notified().await;
                reply(200, headers, body)
            }
        })
        .await;
        (origin, gate)
    }
}

/// What a [`raw_keepalive`] origin saw: the request line of every request
/// it read, in order, and how many connections it accepted.
#[derive(Default)]
pub struct RawSeen {
    pub requests: Mutex<Vec<String>>,
    pub connections: AtomicUsize,
}

impl RawSeen {
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }

    /// Request lines starting with `method `.
    pub fn count(&self, method: &str) -> usize {
        let prefix = format!("{method} ");
        self.requests()
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .count()
    }
}

/// A raw keep-alive origin: per connection it answers up to `answers`
/// requests with `response` (which must frame itself, e.g. with
/// `Content-Length`), then reads one more request, records it and closes
/// without answering; a connection idle for `idle_close` is closed too.
/// Reads from `s` into `buf` until it holds a whole HTTP/1.1 request head
/// (waiting at most `idle` for each read): the head as sent, and where the
/// request ends in `buf` (after its Content-Length body, 0 without one).
/// `None` when the connection ends or goes idle first.
pub async fn read_head(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    idle: std::time::Duration,
) -> Option<(String, usize)> {
    use tokio::io::AsyncReadExt;
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(idle, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some((head, head_end + length))
}

/// Reads until `buf` holds `end` bytes (the request [`read_head`] found),
/// then removes that request from `buf`. `None` when the connection ends.
pub async fn read_body(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, end: usize) -> Option<()> {
    use tokio::io::AsyncReadExt;
    while buf.len() < end {
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    buf.drain(..end);
    Some(())
}

/// Every request line read is recorded, answered or not.
pub async fn raw_keepalive(
    response: &'static [u8],
    answers: usize,
    idle_close: std::time::Duration,
) -> (SocketAddr, Arc<RawSeen>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw origin");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(RawSeen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen2.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut answered = 0;
                loop {
                    // One request: the head, then a Content-Length body.
                    let Some((head, end)) = read_head(&mut s, &mut buf, idle_close).await else {
                        return;
                    };
                    if read_body(&mut s, &mut buf, end).await.is_none() {
                        return;
                    }
                    let line = head.lines().next().unwrap_or("").to_string();
                    seen.requests.lock().expect("requests").push(line);
                    if answered == answers {
                        return;
                    }
                    answered += 1;
                    if s.write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

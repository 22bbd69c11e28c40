//! The core proxy against real origins: balancing, health, retries,
//! timeouts, streaming both ways, header rules, malformed requests, limits,
//! graceful shutdown, config errors and the admin `/health`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, StreamBody};
use support::origin::{reply, Body};
use support::{wait_until, Client, Origin, Strata};
use tokio::sync::{mpsc, Notify};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

/// A port nobody listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn named_origin(name: &'static str) -> Origin {
    Origin::start(move |_req| async move { reply(200, &[("cache-control", "no-store")], name) })
        .await
}

#[tokio::test]
async fn round_robin_over_two_and_three_upstreams() {
    for n in [2usize, 3] {
        let names = ["a", "b", "c"];
        let mut origins = Vec::new();
        for name in &names[..n] {
            origins.push(named_origin(name).await);
        }
        let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
        let strata = Strata::start(&addrs, NO_HEALTH).await;
        let client = Client::new();
        for _ in 0..(n * 10) {
            let r = client.get(&strata.url("/api/x")).await;
            assert_eq!(r.status, 200);
        }
        for o in &origins {
            assert_eq!(o.count(), 10, "each of {n} origins gets an equal share");
        }
    }
}

/// `/health` keeps the README's key order (`status`, `healthy`,
/// `upstreams`; per server `server`, `state`, `healthy`, then the
/// details), not serde_json's alphabetical one.
#[tokio::test]
async fn health_keys_follow_the_readme_order() {
    let a = named_origin("a").await;
    let strata = Strata::start(&[a.addr], NO_HEALTH).await;
    let h = Client::new().get(&strata.admin_url("/health")).await;
    assert_eq!(h.status, 200);
    assert_eq!(
        h.text(),
        format!(
            "{{\"status\":\"ok\",\"healthy\":1,\"upstreams\":[{{\"server\":\"{}\",\"state\":\"healthy\",\"healthy\":true,\"weight\":1,\"draining\":false,\"in_flight\":0}}]}}\n",
            a.addr
        )
    );
}

#[tokio::test]
async fn failing_health_check_ejects_and_recovery_returns() {
    let a = named_origin("a").await;
    let b = named_origin("b").await;
    let strata = Strata::start(
        &[a.addr, b.addr],
        "[upstream.health]\ninterval = \"50ms\"\ntimeout = \"2s\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
    )
    .await;
    let client = Client::new();
    a.set_healthy(false);
    // Ejected within interval x threshold (plus scheduling slack).
    let started = Instant::now();
    wait_until(Duration::from_secs(15), "a marked unhealthy", || async {
        let h = client.get(&strata.admin_url("/health")).await;
        h.text().contains("\"healthy\":1")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let before = a.count();
    for _ in 0..10 {
        assert_eq!(client.get(&strata.url("/x")).await.text(), "b");
    }
    assert_eq!(a.count(), before, "an unhealthy server gets no traffic");
    let h = client.get(&strata.admin_url("/health")).await;
    assert_eq!(h.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    let states: Vec<_> = json["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, vec!["unhealthy", "healthy"]);

    a.set_healthy(true);
    wait_until(Duration::from_secs(15), "a back in rotation", || async {
        client
            .get(&strata.admin_url("/health"))
            .await
            .text()
            .contains("\"healthy\":2")
    })
    .await;
    for _ in 0..4 {
        client.get(&strata.url("/x")).await;
    }
    assert!(a.count() > before, "a serves again after recovery");
}

#[tokio::test]
async fn connect_failure_is_retried_on_the_next_server() {
    let live = named_origin("live").await;
    let dead = dead_addr().await;
    let strata = Strata::start(&[dead, live.addr], NO_HEALTH).await;
    let client = Client::new();
    for _ in 0..6 {
        let r = client.get(&strata.url("/x")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "live");
    }
    assert_eq!(live.count(), 6);
    // An idempotent request with a body too (black-box audit: a PUT got
    // 502 every other time): nothing of it reached the dead server.
    for _ in 0..4 {
        let r = client
            .send(
                Method::PUT,
                &strata.url("/x"),
                &[],
                Bytes::from_static(b"payload"),
            )
            .await;
        assert_eq!(r.status, 200);
        let seen = live.last().unwrap();
        assert_eq!(seen.method, Method::PUT);
        assert_eq!(seen.headers["content-length"], "7");
    }
    assert_eq!(live.count(), 10);
}

#[tokio::test]
async fn all_upstreams_down_is_503_fast() {
    let d1 = dead_addr().await;
    let d2 = dead_addr().await;
    // Health checks take the dead servers out; then answers are immediate.
    let text = support::config_text(&[d1, d2], "")
        + "connect_timeout = \"5s\"\nresponse_timeout = \"30s\"\n[upstream.health]\ninterval = \"50ms\"\nunhealthy_threshold = 1\n";
    let strata = Strata::start_text(&text).await;
    let client = Client::new();
    wait_until(Duration::from_secs(15), "both servers ejected", || async {
        client.get(&strata.admin_url("/health")).await.status == 503
    })
    .await;
    let started = Instant::now();
    let r = client.get(&strata.url("/x")).await;
    assert_eq!(r.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no healthy server answers at once, not after a timeout"
    );
    let h = client.get(&strata.admin_url("/health")).await;
    let json: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(json["healthy"], 0);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let slow = Origin::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        reply(200, &[], "late")
    })
    .await;
    let text = support::config_text(&[slow.addr], "response_timeout = \"200ms\"\n") + NO_HEALTH;
    let strata = Strata::start_text(&text).await;
    let started = Instant::now();
    let r = Client::new().get(&strata.url("/slow")).await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An address whose TCP connects time out: a listener with a backlog of
/// zero that never accepts, its accept queue filled (on Linux one
/// connection fills it; the kernel then drops further SYNs, so later
/// connects hang). Returns the address and what must stay open for it;
/// panics if no connect times out here.
fn unanswering_addr() -> (SocketAddr, socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (addr, listener, held),
            Err(e) => panic!("filling the backlog: {e}"),
        }
    }
    panic!("no connect to a full backlog timed out: cannot test connect timeouts here");
}

/// SPEC §3 "upstream timeout → 504": a connect that times out is a
/// timeout (nginx's `proxy_connect_timeout` gives 504 too); a refused
/// connect stays 502. After the retry on the next server, the status is
/// the last failure's.
#[tokio::test]
async fn connect_timeout_is_504_and_a_refused_connect_502() {
    let (slow1, _l1, _h1) = unanswering_addr();
    let (slow2, _l2, _h2) = unanswering_addr();
    let dead = dead_addr().await;
    let client = Client::new();
    for (servers, status) in [
        (vec![slow1], 504),
        (vec![slow1, slow2], 504),
        (vec![slow1, dead], 502),
        (vec![dead, slow1], 504),
        (vec![dead], 502),
    ] {
        let text = support::config_text(&servers, "connect_timeout = \"300ms\"\n") + NO_HEALTH;
        let strata = Strata::start_text(&text).await;
        let r = client.get(&strata.url("/x")).await;
        assert_eq!(r.status, status, "{servers:?}: {}", r.text());
        strata.stop().await;
    }
}

/// An origin that streams `total` bytes: the first chunk at once, the rest
/// only after `gate` is notified.
async fn gated_stream_origin(
    total: usize,
    gate: Arc<Notify>,
    cache_control: &'static str,
) -> Origin {
    Origin::start(move |_req| {
        let gate = gate.clone();
        async move {
            let (tx, rx) = mpsc::channel::<
                Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
            >(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                let _ = tx.send(Ok(http_body::Frame::data(chunk.clone()))).await;
                gate.notified().await;
                let mut sent = chunk.len();
                while sent < total {
                    let n = (total - sent).min(chunk.len());
                    if tx
                        .send(Ok(http_body::Frame::data(chunk.slice(..n))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent += n;
                }
            });
            let stream = tokio_stream_from(rx);
            let body: Body = StreamBody::new(stream).boxed();
            let mut r = http::Response::new(body);
            r.headers_mut()
                .insert("cache-control", cache_control.parse().unwrap());
            r.headers_mut()
                .insert("content-type", "application/octet-stream".parse().unwrap());
            r
        }
    })
    .await
}

/// An h2c (prior knowledge) connection to `addr`, driven in the
/// background. `window` (stream, connection) sets the initial windows with
/// adaptive windows off, so that only reading opens them further; `None`
/// keeps hyper's defaults.
async fn h2_connect<B>(
    addr: SocketAddr,
    window: Option<(u32, u32)>,
) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    if let Some((stream, connection)) = window {
        builder
            .adaptive_window(false)
            .initial_stream_window_size(stream)
            .initial_connection_window_size(connection);
    }
    let (send, conn) = builder.handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

/// A `GET` of `url` with no body, for [`h2_connect`]'s sender.
fn h2_get(url: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(url)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn large_response_streams_before_origin_finishes() {
    let gate = Arc::new(Notify::new());
    let origin = gated_stream_origin(64 << 20, gate.clone(), "no-store").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let client = Client::new();
    let req = Request::get(strata.url("/big"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = client.start(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first bytes arrive while the origin is still held at its gate:
    // nothing buffers the whole body.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first bytes before the origin finishes")
        .unwrap()
        .unwrap();
    let mut total = first.data_ref().map_or(0, |d| d.len());
    assert!(total > 0);
    gate.notify_one();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("body keeps flowing")
    {
        total += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(total, 64 << 20);
}

/// `response_timeout` bounds the wait for the response head once the
/// request has gone out, not a client's upload (black-box audit: an upload
/// slower than the timeout got 504 and was counted against the upstream);
/// a client that stops sending its body gets 408 after `body_idle_timeout`,
/// not counted against the upstream either.
#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout_and_a_stalled_one_is_408() {
    let origin = Origin::start(|req| async move {
        let n = req
            .into_body()
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len());
        reply(200, &[], format!("{n}"))
    })
    .await;
    let text = support::config_text(
        &[origin.addr],
        "response_timeout = \"1s\"\nbody_idle_timeout = \"3s\"\n",
    ) + NO_HEALTH;
    let strata = Strata::start_text(&text).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let upload = |chunks: usize, then_stall: bool| {
        let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
        let req = Request::post(strata.url("/upload"))
            .body(StreamBody::new(tokio_stream_from(rx)))
            .unwrap();
        let sending = tokio::spawn(async move {
            for _ in 0..chunks {
                // A client on a slow link: 64 KiB every 400 ms.
                tokio::time::sleep(Duration::from_millis(400)).await;
                let chunk = Bytes::from(vec![b'u'; 64 << 10]);
                if tx.send(Ok(http_body::Frame::data(chunk))).await.is_err() {
                    return None;
                }
            }
            // Keeps the body open, sending nothing more.
            then_stall.then_some(tx)
        });
        (client.request(req), sending)
    };
    // 2 s of upload through a 1 s response timeout.
    let (answer, sending) = upload(5, false);
    let resp = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{}", 5 * (64 << 10)).as_bytes());
    drop(sending);
    // A client that stops sending: 408.
    let (answer, sending) = upload(1, true);
    let resp = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), 408);
    drop(sending.await);
    let metrics = Client::new()
        .get(&strata.admin_url("/metrics"))
        .await
        .text();
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("strata_upstream_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(counted.is_empty(), "{counted:?}");
}

#[tokio::test]
async fn large_upload_streams_to_the_upstream() {
    let got_first = Arc::new(Notify::new());
    let received = Arc::new(AtomicUsize::new(0));
    let (gf, rc) = (got_first.clone(), received.clone());
    let origin = Origin::start(move |req| {
        let (gf, rc) = (gf.clone(), rc.clone());
        async move {
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    if n == 0 {
                        gf.notify_one();
                    }
                    n += d.len();
                }
            }
            rc.store(n, Ordering::SeqCst);
            reply(200, &[], format!("{n}"))
        }
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;

    let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(2);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post(strata.url("/upload")).body(body).unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let pending = tokio::spawn(async move { client.request(req).await });
    let chunk = Bytes::from(vec![b'u'; 1 << 20]);
    tx.send(Ok(http_body::Frame::data(chunk.clone())))
        .await
        .unwrap();
    // The origin sees the first MiB while the client still holds the rest.
    tokio::time::timeout(Duration::from_secs(10), got_first.notified())
        .await
        .expect("upload streamed to the origin before it was complete");
    for _ in 0..15 {
        tx.send(Ok(http_body::Frame::data(chunk.clone())))
            .await
            .unwrap();
    }
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(received.load(Ordering::SeqCst), 16 << 20);
}

#[tokio::test]
async fn hop_by_hop_stripped_and_forwarding_headers_set() {
    let origin = Origin::start(|_req| async {
        reply(
            200,
            &[
                ("connection", "x-internal"),
                ("x-internal", "1"),
                ("keep-alive", "timeout=5"),
                ("x-kept", "yes"),
            ],
            "ok",
        )
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let r = Client::new()
        .get_with(
            &strata.url("/h"),
            &[
                ("connection", "x-secret"),
                ("x-secret", "hush"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic abc"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-custom", "kept"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = origin.last().unwrap();
    for gone in ["x-secret", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} must not reach the upstream"
        );
    }
    assert_eq!(seen.headers["x-custom"], "kept");
    // Not a trusted proxy: its own X-Forwarded-For is replaced (SPEC §10).
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers["via"].to_str().unwrap().contains("strata"));
    assert_eq!(seen.headers["host"], strata.addr.to_string().as_str());
    assert!(r.headers.get("x-internal").is_none());
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.header("x-kept"), Some("yes"));
    assert!(r.header("via").unwrap().contains("strata"));
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_the_origin() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = named_origin("o").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let cases: [&[u8]; 10] = [
        b"GET / HTTP/1.1\r\n\r\n", // no Host (RFC 9112 §3.2)
        // No Host with an absolute-form target: still a 400 (it was
        // forwarded and cached).
        b"GET http://example.test/nohost HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", // two Hosts
        b"GARBAGE\r\n\r\n",                              // no request line
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", // space in a field name
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", // bad length
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",          // bad Host
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", // obs-fold
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    ];
    for raw in cases {
        let out = support::http::raw(strata.addr, raw).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} → {out:?}",
            String::from_utf8_lossy(raw)
        );
        // Every response carries Cache-Status (SPEC §3), hyper's own
        // refusals of heads it cannot parse too.
        // Strata's own refusals are not stamped twice.
        let head = out.to_ascii_lowercase();
        assert!(
            head.matches("\r\ncache-status: strata; fwd=bypass\r\n")
                .count()
                == 1
                && head.contains("\r\nvia: 1.1 strata\r\n"),
            "{:?} → {out:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(origin.count(), 0);
    // After a keep-alive exchange, a broken second head is stamped too.
    // (After Strata's own 400 the connection closes: no second head.)
    let mut s = tokio::net::TcpStream::connect(strata.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed after the 400")
        .unwrap();
    let out = String::from_utf8_lossy(&got);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(out.matches("HTTP/1.1 400").count(), 1, "{out}");
    assert_eq!(
        out.to_ascii_lowercase().matches("cache-status:").count(),
        2,
        "{out}"
    );
    // All eleven are counted, hyper's own refusals (which never reach
    // Strata's service) included.
    let metrics = Client::new()
        .get(&strata.admin_url("/metrics"))
        .await
        .text();
    assert!(
        metrics.contains("strata_requests_total{outcome=\"error\",status=\"400\"} 11\n"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("strata_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let origin = named_origin("o").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let big = "a".repeat(70 * 1024);
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let out = support::http::raw(strata.addr, raw.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(100)]
    );
    assert!(out.contains("cache-status: strata; fwd=bypass"), "{out}");
    assert_eq!(origin.count(), 0);
}

#[tokio::test]
async fn more_than_100_header_fields_get_431() {
    // Up to 100 fields pass (hyper's default limit; Varnish's
    // http_max_hdr is 64); 101 are refused with 431 before any upstream
    // sees them. (The test origin, also hyper, takes 100 fields too, and
    // Strata adds Via and X-Forwarded-*: 90 go through.)
    let origin = named_origin("o").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let head = |n: usize| {
        let fields: String = (1..n).map(|i| format!("X-F{i}: v\r\n")).collect();
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fields}\r\n")
    };
    let ok = support::http::raw(strata.addr, head(89).as_bytes()).await;
    assert!(
        ok.starts_with("HTTP/1.1 200"),
        "{}",
        &ok[..ok.len().min(100)]
    );
    assert_eq!(origin.count(), 1);
    let refused = support::http::raw(strata.addr, head(100).as_bytes()).await;
    assert!(
        refused.starts_with("HTTP/1.1 431"),
        "{}",
        &refused[..refused.len().min(100)]
    );
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn any_method_and_status_pass_through() {
    let origin = Origin::start(|req| async move {
        let status = if req.method().as_str() == "M-SEARCH" {
            299
        } else {
            599
        };
        reply(status, &[], req.method().as_str().to_string())
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let client = Client::new();
    let r = client
        .send(
            Method::from_bytes(b"M-SEARCH").unwrap(),
            &strata.url("/"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 299);
    assert_eq!(r.text(), "M-SEARCH");
    let r = client
        .send(Method::DELETE, &strata.url("/x"), &[], Bytes::new())
        .await;
    assert_eq!(r.status.as_u16(), 599);
}

#[tokio::test]
async fn upstream_dying_mid_body_cuts_the_response_off() {
    // Promises 1000 bytes, sends 10 and closes.
    let (addr, _) = support::origin::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: no-store\r\n\r\n0123456789",
    )
    .await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    let req = Request::get(strata.url("/cut"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    // The cut may come before Strata has sent the head (the upstream's
    // head, 10 bytes and its close are often read at once): the client's
    // connection is then closed with no response. After the head, the
    // body is cut short. Either way, never a short success.
    if let Ok(resp) = Client::new().try_start(req).await {
        let outcome = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("the client is not left hanging");
        assert!(
            outcome.is_err(),
            "a truncated body is an error, not a short success"
        );
    }
    // Counted against the upstream (black-box audit: it was not).
    let line = format!("strata_upstream_errors_total{{kind=\"protocol\",server=\"{addr}\"}} 1");
    wait_until(Duration::from_secs(5), "the cut counted", || async {
        let metrics = Client::new()
            .get(&strata.admin_url("/metrics"))
            .await
            .text();
        metrics.lines().any(|l| l == line)
    })
    .await;
}

#[tokio::test]
async fn junk_transfer_encoding_from_upstream_is_read_to_close() {
    // RFC 9112 §6.3: a Transfer-Encoding not ending in chunked frames the
    // body by connection close; Strata re-frames it for the client.
    let (addr, _) = support::origin::raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: bogus, chunked, gzip\r\n\r\nzzz",
    )
    .await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Client::new().send(Method::POST, &strata.url("/te"), &[], Bytes::new()),
    )
    .await
    .expect("answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "zzz");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    // A raw origin that accepts an upgrade and echoes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(strata.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    // Tunnel bytes that look like an HTTP/1 error head go through as they
    // are (hyper's own error heads get Cache-Status; a tunnel's never do).
    let lookalike = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    s.write_all(lookalike).await.unwrap();
    let mut echo = vec![0u8; lookalike.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo[..], &lookalike[..]);
    s.write_all(b"end!").await.unwrap();
    let mut tail = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut tail))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&tail, b"end!");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let origin = named_origin("o").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let client = Client::new();
    for _ in 0..30 {
        assert_eq!(client.get(&strata.url("/x")).await.status, 200);
    }
    assert_eq!(origin.count(), 30);
    assert!(
        origin.connections() <= 2,
        "{} connections for 30 sequential requests",
        origin.connections()
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let origin = named_origin("o").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let resp = client
        .request(
            Request::get(strata.url("/h2"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen = origin.last().unwrap();
    assert_eq!(seen.headers["host"], strata.addr.to_string().as_str());
    // RFC 9113 §8.3.1: a `host` naming another authority than `:authority`
    // is malformed (400, never upstream); the same one, in any case, is not.
    let with_host = |host: &str| {
        Request::get(strata.url("/h2"))
            .header("host", host)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let resp = client.request(with_host("other.test")).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(origin.count(), 1);
    let same = strata.addr.to_string().to_uppercase();
    let resp = client.request(with_host(&same)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(origin.count(), 2);
    // The HTTP/1.1 limit of 100 fields holds over HTTP/2 (431), and a
    // value padded with whitespace is malformed (RFC 9113 §8.2.1: 400);
    // neither reaches the origin (black-box audit: both were forwarded).
    let mut many = Request::get(strata.url("/h2"));
    for i in 0..101 {
        many = many.header(format!("x-m{i}"), "1");
    }
    let many = many.body(http_body_util::Full::new(Bytes::new())).unwrap();
    assert_eq!(client.request(many).await.unwrap().status(), 431);
    let padded = Request::get(strata.url("/h2"))
        .header("x-a", " padded ")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(padded).await.unwrap().status(), 400);
    assert_eq!(origin.count(), 2);
    // A header list over `max_header_size` (64 KiB) gets Strata's own 431,
    // stamped like every answer (SPEC §3); it was the h2 library's bare
    // `:status 431`, without Cache-Status or Via, and never counted.
    let big = Request::get(strata.url("/h2"))
        .header("x-big", "a".repeat(66_000))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(big).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.headers()["cache-status"], "strata; fwd=bypass");
    assert!(resp.headers().contains_key("via"));
    assert_eq!(origin.count(), 2);
}

// === the binary: check, config errors, SIGTERM ===

fn strata_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
}

#[test]
fn spec_example_and_shipped_config_pass_check() {
    for path in ["tests/fixtures/spec-example.toml", "config/strata.toml"] {
        let out = strata_bin()
            .args(["check", "--config", path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
    }
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[[rules]]\nmatch = \"/a\"\ncache_control = \"max-age=1\"\n[[rules]]\nmatch = \"/b\"\ncache_control = \"max-age=1\"\n[[rules]]\nmatch = \"[\"\ncache_control = \"max-age=1\"\n",
            ":14:9: rules[2].match: invalid glob \"[\"",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\nlistne = 1\n",
            ":3:1: server.listne: unknown field `listne`",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\nresponse_timeout = \"soon\"\n",
            ":7:20: upstream.response_timeout: invalid duration",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[cache]\nmemory_capacity = \"12 parsecs\"\n",
            ":8:19: cache.memory_capacity: invalid size",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n",
            "missing field `upstream`",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[cache.redis]\nmode = \"sentinel\"\nurls = [\"redis://127.0.0.1:1\"]\nsentinel_master = \"\"\n",
            ":10:19: cache.redis.sentinel_master: expected the master name",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[cache.redis]\nurls = [\"redis://127.0.0.1:1\"]\nbreaker_threshold = 0\n",
            ":9:21: cache.redis.breaker_threshold: expected at least 1",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[cache.redis]\nurls = [\"redis://127.0.0.1:1\"]\ntimeout = \"0s\"\n",
            ":9:11: cache.redis.timeout: expected a duration above zero",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\nresponse_timeout = \"0s\"\n",
            ":7:20: upstream.response_timeout: expected a duration above zero",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\nheader_read_timeout = \"0ms\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n",
            ":3:23: server.header_read_timeout: expected a duration above zero",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[compression]\ntypes = [\"text/*\", \"not a type\"]\n",
            ":8:20: compression.types[1]: invalid media type rule \"not a type\"",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = support::binary::check_fails(&path);
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let (origin, gate) = Origin::gated(&[("cache-control", "no-store")], "finished").await;
    let dir = tempfile::tempdir().unwrap();
    let port = dead_addr().await.port();
    let admin = dead_addr().await.port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_timeout = \"20s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[upstream]\nservers = [\"{}\"]\n{NO_HEALTH}",
        origin.addr
    );
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/slow");
    let client = Client::new();
    wait_until(Duration::from_secs(10), "strata listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.get(&url).await }
    });
    wait_until(
        Duration::from_secs(10),
        "request reached the origin",
        || async { origin.count() == 1 },
    )
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // New connections are refused once draining starts…
    wait_until(Duration::from_secs(10), "listener closed", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    // …while the in-flight request completes.
    gate.notify_one();
    let r = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn admin_health_reports_each_upstream() {
    let a = named_origin("a").await;
    let dead = dead_addr().await;
    let strata = Strata::start(
        &[a.addr, dead],
        "[upstream.health]\ninterval = \"50ms\"\nunhealthy_threshold = 1\n",
    )
    .await;
    let client = Client::new();
    // Bounded generously: the whole suite runs in parallel on 2 cores.
    wait_until(Duration::from_secs(15), "dead server ejected", || async {
        client
            .get(&strata.admin_url("/health"))
            .await
            .text()
            .contains("\"healthy\":1")
    })
    .await;
    let h = client.get(&strata.admin_url("/health")).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(json["upstreams"][0]["server"], a.addr.to_string());
    assert_eq!(json["upstreams"][0]["state"], "healthy");
    assert_eq!(json["upstreams"][1]["state"], "unhealthy");
    assert_eq!(client.get(&strata.admin_url("/nope")).await.status, 404);
}

#[tokio::test]
async fn an_http10_upstream_does_not_downgrade_the_client_status_line() {
    let (addr, _) = support::origin::raw(
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok",
    )
    .await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    let out = support::http::raw(strata.addr, b"GET /v HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Via names the protocol the response was received with (RFC 9110
    // §7.6.3).
    assert!(
        out.to_ascii_lowercase().contains("\r\nvia: 1.0 strata\r\n"),
        "{out}"
    );
}

/// RFC 9112 §3.2: an HTTP/1.0 client may send no Host, but the request
/// Strata sends upstream is HTTP/1.1 and must carry one: the server's own
/// name, as nginx's default `proxy_set_header Host $proxy_host` sends.
#[tokio::test]
async fn an_http10_request_without_host_goes_upstream_with_the_servers_name() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "ok").await;
    let s = Strata::start(&[origin.addr], "").await;
    let answer = support::http::raw(s.addr, b"GET /v10 HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = origin.last().expect("the origin saw the request");
    assert_eq!(seen.path, "/v10");
    assert_eq!(
        seen.headers.get("host").and_then(|h| h.to_str().ok()),
        Some(origin.addr.to_string().as_str())
    );
    // A client's own Host still goes as sent.
    let answer =
        support::http::raw(s.addr, b"GET /v10b HTTP/1.0\r\nHost: shop.example\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = origin.last().expect("second request");
    assert_eq!(seen.headers.get("host").unwrap(), "shop.example");
}

/// An origin answering with what it received: the body's length and the
/// `Cookie` fields, one per line.
async fn body_and_cookie_origin() -> Origin {
    Origin::start(|req| async move {
        let cookies: Vec<String> = req
            .headers()
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .collect();
        let len = req
            .into_body()
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len());
        reply(
            200,
            &[("cache-control", "no-store")],
            format!("{len}\n{}", cookies.join("\n")),
        )
    })
    .await
}

/// A GET body of unknown length (HTTP/2 DATA frames, an HTTP/1.1 chunked
/// upload) reaches the origin: hyper's client sends a GET's body only
/// when told its length or asked for chunked, and dropped it before. And
/// an HTTP/2 client's `cookie` fields go to the HTTP/1.1 origin as one
/// `Cookie` line (RFC 9113 §8.2.3).
#[tokio::test]
async fn get_bodies_of_unknown_length_and_h2_cookie_fields_reach_the_origin() {
    let origin = body_and_cookie_origin().await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;

    let raw = support::http::raw(
        strata.addr,
        b"GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n5\n"), "{raw}");

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(2);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello"))))
        .await
        .unwrap();
    drop(tx);
    let req = Request::get(strata.url("/h2"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"5\na=1; b=2");
}

/// `Upgrade` without `upgrade` in `Connection`, or for `h2c` (which curl
/// sends with `--http2`) or any protocol but WebSocket, is no protocol switch: the request is cached as
/// any other and the field is stripped as hop-by-hop.
#[tokio::test]
async fn a_bare_or_h2c_upgrade_is_an_ordinary_cacheable_request() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    for (path, headers) in [
        (
            "/h2c",
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ][..],
        ),
        ("/bare", &[("upgrade", "websocket")][..]),
        // Only WebSocket is tunnelled: after a `101` the bytes reach the
        // origin raw (security probe: `foo/1` tunnelled a raw request).
        (
            "/foo",
            &[("upgrade", "foo/1"), ("connection", "upgrade")][..],
        ),
    ] {
        let first = c.get_with(&strata.url(path), headers).await;
        assert_eq!(first.status, 200);
        assert!(
            first.cache_status().contains("fwd=miss"),
            "{path}: {}",
            first.cache_status()
        );
        let seen = origin.last().unwrap();
        assert!(
            seen.headers.get("upgrade").is_none(),
            "{path}: {:?}",
            seen.headers
        );
        let again = c.get_with(&strata.url(path), headers).await;
        assert!(
            again.cache_status().contains("hit"),
            "{path}: {}",
            again.cache_status()
        );
    }
    assert_eq!(origin.count(), 3);
}

/// An HTTP/2 client's cookie fields are one `Cookie` from the start: an
/// entry that varies on Cookie, stored for an HTTP/1.1 client's `a=1;
/// b=2`, is a hit for an HTTP/2 client sending `a=1` and `b=2` apart.
#[tokio::test]
async fn h2_cookie_fields_share_the_http11_clients_vary_entry() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60"), ("vary", "Cookie")],
        "per cookie",
    )
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let r = Client::new()
        .get_with(&strata.url("/v"), &[("cookie", "a=1; b=2")])
        .await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let req = Request::get(strata.url("/v"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.headers()["cache-status"].to_str().unwrap().to_string();
    assert!(status.contains("hit"), "{status}");
    assert_eq!(origin.count(), 1);
}

/// RFC 9113 §8.1.1: an HTTP/2 request whose `DATA` exceeds its
/// `content-length` is malformed and must not be forwarded. When the excess
/// came in a later frame than the one completing the length, the origin got
/// a complete request and the client a `200`. The completing frame is now
/// held until the stream ends, so the origin never sees a whole body and
/// the client gets an error; a request whose `END_STREAM` comes alone
/// after its last `DATA` still goes through whole.
#[tokio::test]
async fn an_h2_body_longer_than_its_content_length_never_reaches_the_origin_whole() {
    let complete = Arc::new(AtomicUsize::new(0));
    let seen = complete.clone();
    let origin = Origin::start(move |req| {
        let seen = seen.clone();
        async move {
            if let Ok(body) = req.into_body().collect().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let body = body.to_bytes();
                return reply(200, &[("cache-control", "no-store")], body);
            }
            reply(500, &[], "broken")
        }
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let mut send = h2_connect(strata.addr, None).await;
    // `chunks` as separate DATA frames, the next one sent only when
    // `gate` is notified; END_STREAM comes with an empty last frame.
    let post = |chunks: Vec<&'static str>, gate: Arc<Notify>| {
        let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
        tokio::spawn(async move {
            for (i, c) in chunks.into_iter().enumerate() {
                if i > 0 {
                    gate.notified().await;
                }
                let _ = tx.send(Ok(http_body::Frame::data(Bytes::from(c)))).await;
            }
        });
        let body = StreamBody::new(tokio_stream_from(rx));
        Request::post(strata.url("/upload"))
            .header("content-length", "5")
            .body(body)
            .unwrap()
    };
    // Too long: 5 bytes, then 5 more in a later frame.
    let gate = Arc::new(Notify::new());
    let pending = send.send_request(post(vec!["12345", "67890"], gate.clone()));
    let answer = tokio::spawn(pending);
    // The upstream exchange has begun (the origin has the head) before the
    // excess is sent.
    wait_until(
        Duration::from_secs(5),
        "the request to reach the origin",
        || async { origin.count() == 1 },
    )
    .await;
    // Before the excess, the origin must not be able to finish reading a
    // body (without the hold it did within a millisecond or two).
    let whole_early = tokio::time::timeout(Duration::from_millis(300), async {
        while complete.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok();
    assert!(
        !whole_early,
        "the origin read a whole body before the client ended it"
    );
    gate.notify_one();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer within 5 s")
        .unwrap();
    if let Ok(resp) = answer {
        assert_ne!(resp.status(), 200);
    }
    assert_eq!(
        complete.load(Ordering::SeqCst),
        0,
        "the origin got a whole body"
    );
    // Exact: 5 bytes, END_STREAM in a frame of its own.
    let gate = Arc::new(Notify::new());
    let pending = tokio::spawn(send.send_request(post(vec!["12345", ""], gate.clone())));
    wait_until(
        Duration::from_secs(5),
        "the second request to reach the origin",
        || async { origin.count() == 2 },
    )
    .await;
    gate.notify_one();
    let resp = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("an answer within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"12345");
    assert_eq!(complete.load(Ordering::SeqCst), 1);
}

/// An HTTP/2 client that never opens its flow-control window paced the
/// admission of the miss it fetched for as long as it stayed connected
/// (HTTP/2 has no connection-level `send_timeout`), so every other request
/// for the URL waited out `collapse_timeout` and went upstream itself,
/// never stored. The admission no longer waits on its client: the object
/// is stored while the client stalls; the stalled client is cut off at
/// `send_timeout` (its body fails, never ends as if complete) and lets go
/// of the body, which it held in the collecting budget.
#[tokio::test]
async fn a_stalled_h2_client_holds_neither_its_miss_nor_its_body() {
    let body = Bytes::from(vec![b'x'; 2 << 20]);
    let origin = Origin::start(move |_req| {
        let body = body.clone();
        async move { reply(200, &[("cache-control", "max-age=300")], body) }
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nsend_timeout = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\n[upstream]\nservers = [\"{}\"]\n{NO_HEALTH}[cache]\ncollapse_timeout = \"300ms\"\n",
        origin.addr
    );
    let strata = Strata::start_text(&text).await;
    // HTTP/2's default windows (64 KiB), which only reading opens further.
    let mut send = h2_connect(strata.addr, Some((65_535, 65_535))).await;
    let req = h2_get(&strata.url("/big"));
    // The head, then nothing read: the stream's window stays shut.
    let stalled = send.send_request(req).await.unwrap();
    assert_eq!(stalled.status(), 200);
    let client = Client::new();
    wait_until(
        Duration::from_secs(15),
        "the object to be stored",
        || async {
            let r = client.get(&strata.url("/big")).await;
            assert_eq!(r.body.len(), 2 << 20);
            r.cache_status().starts_with("strata; hit")
        },
    )
    .await;
    let collecting = strata.shared.cache.collecting().clone();
    wait_until(
        Duration::from_secs(15),
        "the stalled client cut off, its body let go",
        || {
            let used = collecting.used();
            async move { used == 0 }
        },
    )
    .await;
    // The stalled client's body fails once it reads what was sent.
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.into_body().collect())
        .await
        .expect("the body ends within 10 s");
    assert!(read.is_err(), "a cut-off body must not end as if complete");
}

/// An HTTP/2 client that stops opening its window on a pass-through (a
/// `no-store` body, streamed at its client's pace) held the upstream
/// connection for as long as it stayed connected: hyper's HTTP/2 server
/// stops polling a body it cannot send, so `send_timeout` never reached
/// it, and one client connection could pin one origin connection per
/// stream (the HTTP/2 probe held 100). Now the stalled stream's body is
/// dropped at `send_timeout`, which closes the upstream connection, and
/// the stream ends in an error, never as if complete.
#[tokio::test]
async fn a_stalled_h2_pass_through_lets_go_of_its_upstream_at_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let closed = Arc::new(Notify::new());
    {
        let closed = closed.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-length: 1073741824\r\n\r\n")
                .await;
            // Writes until the proxy lets go (at most the 1 GiB declared).
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..(1 << 14) {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            closed.notify_one();
        });
    }
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nsend_timeout = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\n[upstream]\nservers = [\"{origin}\"]\n{NO_HEALTH}"
    );
    let strata = Strata::start_text(&text).await;
    let mut send = h2_connect(strata.addr, Some((65_535, 65_535))).await;
    let req = h2_get(&strata.url("/stream"));
    let stalled = send.send_request(req).await.unwrap();
    assert_eq!(stalled.status(), 200);
    tokio::time::timeout(Duration::from_secs(15), closed.notified())
        .await
        .expect("the upstream connection closed within 15 s of the stall");
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.into_body().collect())
        .await
        .expect("the body ends within 10 s");
    assert!(read.is_err(), "a cut-off body must not end as if complete");
}

/// The other side of the rule above: an HTTP/2 response waiting on a slow
/// upstream (nothing owed to the client) is never cut, however long the
/// upstream pauses past `send_timeout`.
#[tokio::test]
async fn an_h2_pass_through_waiting_on_its_upstream_is_not_cut() {
    let origin = Origin::start(|_req| async move {
        let chunks = futures_util::stream::unfold(0u8, |n| async move {
            match n {
                0 => Some((Bytes::from_static(b"first "), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Some((Bytes::from_static(b"second"), 2))
                }
                _ => None,
            }
        });
        support::origin::streamed(&[("cache-control", "no-store")], chunks)
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nsend_timeout = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\n[upstream]\nservers = [\"{}\"]\nbody_idle_timeout = \"10s\"\n{NO_HEALTH}",
        origin.addr
    );
    let strata = Strata::start_text(&text).await;
    let mut send = h2_connect(strata.addr, None).await;
    let req = h2_get(&strata.url("/slow"));
    let resp = send.send_request(req).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(15), resp.into_body().collect())
        .await
        .expect("the body ends within 15 s")
        .expect("a complete body")
        .to_bytes();
    assert_eq!(&body[..], b"first second");
}

/// An HTTP/2 request declaring `content-length: 0` whose stream goes on
/// with `DATA` (malformed, RFC 9113 §8.1.1) reached the origin complete at
/// its HEADERS, while the client got a reset: the origin acted on a
/// request the client was told failed. It now goes upstream only once its
/// stream has ended empty; one whose `DATA` holds bytes never does.
#[tokio::test]
async fn an_h2_request_declared_empty_goes_upstream_only_once_its_stream_ends() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "done").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let mut send = h2_connect(strata.addr, None).await;
    // HEADERS now; one DATA frame (`chunk`) when `gate` is notified, with
    // END_STREAM.
    let post = |chunk: &'static str, gate: Arc<Notify>| {
        let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
        tokio::spawn(async move {
            gate.notified().await;
            let _ = tx
                .send(Ok(http_body::Frame::data(Bytes::from(chunk))))
                .await;
        });
        Request::post(strata.url("/empty"))
            .header("content-length", "0")
            .body(StreamBody::new(tokio_stream_from(rx)))
            .unwrap()
    };
    for (chunk, forwarded) in [("abc", false), ("", true)] {
        let before = origin.count();
        let gate = Arc::new(Notify::new());
        let answer = tokio::spawn(send.send_request(post(chunk, gate.clone())));
        // Without the wait the origin had the request within a millisecond.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            origin.count(),
            before,
            "{chunk:?}: upstream before the stream ended"
        );
        gate.notify_one();
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if forwarded {
            assert_eq!(answer.unwrap().status(), 200);
            assert_eq!(origin.count(), before + 1);
        } else {
            if let Ok(r) = answer {
                assert_eq!(r.status(), 400);
            }
            assert_eq!(origin.count(), before, "{chunk:?} reached the origin");
        }
    }
}

/// A hit over HTTP/2 read slowly but steadily is never cut: h2 takes the
/// whole body at once, so the request ended long before the client had
/// it, and the connection, counted idle, was closed 1–2
/// `header_read_timeout`s into the download with no GOAWAY (regression
/// probe: 1 MB at 60 KB/s cut at 8 s with a 4 s timeout). Writes of
/// response data now count as activity.
#[tokio::test]
async fn a_slow_steady_h2_download_of_a_hit_outlasts_header_read_timeout() {
    let body = Bytes::from(vec![b'h'; 512 << 10]);
    let origin = Origin::start(move |_req| {
        let body = body.clone();
        async move { reply(200, &[("cache-control", "max-age=300")], body) }
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\n[upstream]\nservers = [\"{}\"]\n{NO_HEALTH}",
        origin.addr
    );
    let strata = Strata::start_text(&text).await;
    let client = Client::new();
    client.get(&strata.url("/big")).await;
    assert!(client.get(&strata.url("/big")).await.is_hit());
    let mut send = h2_connect(strata.addr, Some((16 << 10, 16 << 10))).await;
    let req = h2_get(&strata.url("/big"));
    let mut body = send.send_request(req).await.unwrap().into_body();
    // About 128 KiB/s: four seconds, four header_read_timeouts.
    let started = Instant::now();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the download is not cut");
        if let Some(data) = frame.data_ref() {
            got += data.len();
            tokio::time::sleep(Duration::from_millis(data.len() as u64 / 128)).await;
        }
    }
    assert_eq!(got, 512 << 10);
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A slow but steady HTTP/2 reader of a streamed response is not taken
/// for a stalled one: the per-stream `send_timeout` sees progress only
/// when hyper asks for more, which it did once h2 had taken a whole 64 KiB
/// piece, so a client reading 40 KiB/s against a 1 s timeout was cut
/// (regression probe). Pieces are now one 16 KiB frame.
#[tokio::test]
async fn a_slow_steady_h2_reader_is_not_cut_by_send_timeout() {
    let body = Bytes::from(vec![b's'; 192 << 10]);
    // A miss (stored while it streams) and a pass-through (streamed as the
    // upstream's chunks come, which can be far larger than a frame).
    let origin = Origin::start(move |req| {
        let body = body.clone();
        let cc = if req.uri().path() == "/pass" {
            "no-store"
        } else {
            "max-age=300"
        };
        async move { reply(200, &[("cache-control", cc)], body) }
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nsend_timeout = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\n[upstream]\nservers = [\"{}\"]\n{NO_HEALTH}",
        origin.addr
    );
    let strata = Strata::start_text(&text).await;
    let mut send = h2_connect(strata.addr, Some((16 << 10, 16 << 10))).await;
    for path in ["/miss", "/pass"] {
        let req = h2_get(&strata.url(path));
        let mut body = send.send_request(req).await.unwrap().into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("{path}: a steady reader cut: {e}"));
            if let Some(data) = frame.data_ref() {
                got += data.len();
                // About 40 KiB/s.
                tokio::time::sleep(Duration::from_millis(data.len() as u64 / 40)).await;
            }
        }
        assert_eq!(got, 192 << 10, "{path}");
    }
}

/// An HTTP/2 client that stops reading a large hit loses that stream at
/// `send_timeout`, not its whole connection: handed to h2 whole, the hit
/// had ended its request at once, and the connection, counted idle, was
/// closed at 1–2 `header_read_timeout`s with every stream on it (probe).
/// Its other requests go on meanwhile.
#[tokio::test]
async fn a_stalled_h2_hit_costs_its_stream_not_its_connection() {
    let big = Bytes::from(vec![b'b'; 512 << 10]);
    let origin = Origin::start(move |req| {
        let body = if req.uri().path() == "/big" {
            big.clone()
        } else {
            Bytes::from_static(b"small")
        };
        async move { reply(200, &[("cache-control", "max-age=300")], body) }
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\nsend_timeout = \"2s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\n[upstream]\nservers = [\"{}\"]\n{NO_HEALTH}",
        origin.addr
    );
    let strata = Strata::start_text(&text).await;
    let client = Client::new();
    for path in ["/big", "/small"] {
        client.get(&strata.url(path)).await;
        assert!(client.get(&strata.url(path)).await.is_hit(), "{path}");
    }
    let mut send = h2_connect(strata.addr, Some((16 << 10, 1 << 20))).await;
    let stalled = send
        .send_request(h2_get(&strata.url("/big")))
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    // Nothing read for four header_read_timeouts, past the stream's cut
    // (one to one and a half send_timeouts); the connection still serves.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let small = tokio::time::timeout(
        Duration::from_secs(5),
        send.send_request(h2_get(&strata.url("/small"))),
    )
    .await
    .expect("an answer within 5 s")
    .expect("the connection still serves");
    let body = small.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"small");
    // The stalled stream was cut: it fails once read, never ends whole.
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.into_body().collect())
        .await
        .expect("the body ends within 10 s");
    assert!(read.is_err(), "a cut-off body must not end as if complete");
}

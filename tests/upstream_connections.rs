//! Keep-alive connections to upstreams (SPEC §6 "Upstream connections"):
//! reuse, idle expiry and limits, and the retry rule for a reused
//! connection the origin closed (RFC 9112 §9.3.1), against raw-socket
//! origins that close connections the way real servers do.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::{Client, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok";

/// An origin that answers each request and then closes the socket
/// without `Connection: close`: every reused connection is dead.
#[tokio::test]
async fn origin_closing_after_each_answer_causes_no_error() {
    let (addr, answered) = support::origin::raw(OK).await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    let client = Client::new();
    for i in 0..40 {
        let r = client.get(&strata.url(&format!("/close/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    // Each request reached the origin once (a request written on a dead
    // connection is never read by it).
    assert_eq!(answered.load(Ordering::SeqCst), 40);
    // HEAD is idempotent too, and DELETE goes through pass-through.
    for method in [Method::GET, Method::HEAD, Method::DELETE] {
        for _ in 0..5 {
            let r = client
                .send(method.clone(), &strata.url("/pass"), &[], Bytes::new())
                .await;
            assert_eq!(r.status, 200, "{method}");
        }
    }
}

/// An origin closing connections idle for 200 ms, asked at intervals
/// around that figure: requests race the close, none may fail.
#[tokio::test]
async fn origin_closing_idle_connections_causes_no_error() {
    let (addr, seen) = support::origin::raw_keepalive(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok",
        usize::MAX,
        Duration::from_millis(200),
    )
    .await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    let client = Client::new();
    let mut sent = 0;
    for round in 0..2 {
        for pause in (150..=250).step_by(5) {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let r = client
                .get(&strata.url(&format!("/idle/{round}/{pause}")))
                .await;
            assert_eq!(r.status, 200, "after {pause} ms idle: {}", r.text());
            sent += 1;
        }
    }
    // Replays happen only for requests the origin never read.
    assert_eq!(seen.count("GET"), sent);
}

/// A POST on a reused connection the origin closes after reading it: it
/// may have been applied, so it is never sent again and the client gets
/// 502. The next request works on a fresh connection.
#[tokio::test]
async fn post_on_a_dead_reused_connection_is_never_resent() {
    // Per connection: answer one request, read the next, close.
    let (addr, seen) = support::origin::raw_keepalive(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok",
        1,
        Duration::from_secs(30),
    )
    .await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    let client = Client::new();
    let r = client.get(&strata.url("/first")).await;
    assert_eq!(r.status, 200);
    let r = client
        .send(
            Method::POST,
            &strata.url("/order"),
            &[],
            Bytes::from_static(b"buy"),
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(seen.count("POST"), 1, "seen: {:?}", seen.requests());
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    // A GET on the same kind of dead connection is replayed.
    let r = client.get(&strata.url("/second")).await;
    assert_eq!(r.status, 200);
    let r = client.get(&strata.url("/third")).await;
    assert_eq!(r.status, 200, "{:?}", seen.requests());
    assert_eq!(seen.count("POST"), 1);
}

/// Renders a config whose `[upstream]` table also holds `keys`.
fn with_upstream_keys(addr: std::net::SocketAddr, keys: &str) -> String {
    support::config_text(&[addr], NO_HEALTH)
        .replace("[upstream]\n", &format!("[upstream]\n{keys}\n"))
}

/// Sequential requests share one upstream connection; with
/// `pool_max_idle_per_server = 0` none is kept; an idle connection older
/// than `pool_idle_timeout` is not used again.
#[tokio::test]
async fn connections_are_reused_within_the_idle_limit_and_timeout() {
    let client = Client::new();
    let (addr, seen) =
        support::origin::raw_keepalive(OK, usize::MAX, Duration::from_secs(30)).await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    for i in 0..10 {
        let r = client.get(&strata.url(&format!("/reuse/{i}"))).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

    let (addr, seen) =
        support::origin::raw_keepalive(OK, usize::MAX, Duration::from_secs(30)).await;
    let strata =
        Strata::start_text(&with_upstream_keys(addr, "pool_max_idle_per_server = 0")).await;
    for i in 0..3 {
        let r = client.get(&strata.url(&format!("/fresh/{i}"))).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);

    let (addr, seen) =
        support::origin::raw_keepalive(OK, usize::MAX, Duration::from_secs(30)).await;
    let strata =
        Strata::start_text(&with_upstream_keys(addr, "pool_idle_timeout = \"100ms\"")).await;
    let r = client.get(&strata.url("/expire/1")).await;
    assert_eq!(r.status, 200);
    let r = client.get(&strata.url("/expire/2")).await;
    assert_eq!(r.status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    // Past the idle timeout the connection is not reused (expiry is
    // decided on the pool's clock, so this wait is not a race).
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = client.get(&strata.url("/expire/3")).await;
    assert_eq!(r.status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

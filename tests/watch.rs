//! Watching Strata: `[admin] read_token` on the read endpoints, the
//! recent-activity list (purges, reloads), `/events` (Server-Sent Events
//! snapshots) and the metrics behind the dashboard.

mod support;

use bytes::Bytes;
use http::Method;
use strata::activity::Kind;
use support::origin::reply;
use support::{Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

async fn cacheable_origin() -> Origin {
    Origin::start(|req| async move {
        let body = format!("page {}", req.uri().path());
        reply(200, &[("cache-control", "public, max-age=60")], body)
    })
    .await
}

/// `config_text` with `read_token` added to `[admin]` (its `token` is
/// `secret`).
fn with_read_token(upstream: std::net::SocketAddr) -> String {
    support::config_text(&[upstream], NO_HEALTH).replace(
        "token = \"secret\"\n",
        "token = \"secret\"\nread_token = \"reader\"\n",
    )
}

#[tokio::test]
async fn read_token_guards_every_read_endpoint_and_health_stays_open() {
    let origin = cacheable_origin().await;
    let s = Strata::start_text(&with_read_token(origin.addr)).await;
    let c = Client::new();
    for path in ["/metrics", "/stats", "/cache"] {
        let url = s.admin_url(path);
        let none = c.get(&url).await;
        assert_eq!(none.status, 401, "{path} without a token");
        assert_eq!(
            none.header("www-authenticate"),
            Some("Bearer realm=\"strata-admin\"")
        );
        for wrong in ["Bearer readerx", "Bearer reade", "Bearer ", "Basic reader"] {
            let r = c.get_with(&url, &[("authorization", wrong)]).await;
            assert_eq!(r.status, 401, "{path} with {wrong:?}");
        }
        for good in ["Bearer reader", "Bearer secret", "bearer  reader "] {
            let r = c.get_with(&url, &[("authorization", good)]).await;
            // `/cache` is guarded whether or not it is served.
            let want = if path == "/cache" { 404 } else { 200 };
            assert_eq!(r.status, want, "{path} with {good:?}");
        }
    }
    let health = c.get(&s.admin_url("/health")).await;
    assert_eq!(health.status, 200, "/health needs no token");
    // The read token does not purge.
    let purge = c
        .send(
            Method::POST,
            &s.admin_url("/purge"),
            &[("authorization", "Bearer reader")],
            Bytes::from_static(br#"{"prefix": "/"}"#),
        )
        .await;
    assert_eq!(purge.status, 401);
}

#[tokio::test]
async fn without_read_token_the_read_endpoints_are_open() {
    let origin = cacheable_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    for path in ["/metrics", "/stats", "/health"] {
        assert_eq!(c.get(&s.admin_url(path)).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn purges_are_listed_in_recent_activity_without_queries() {
    let origin = cacheable_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    c.get(&s.url("/a?sig=abc")).await;
    let purge = c
        .send(
            Method::POST,
            &s.admin_url("/purge"),
            &[("authorization", "Bearer secret")],
            Bytes::from_static(br#"{"url": "/a?sig=abc"}"#),
        )
        .await;
    assert_eq!(purge.status, 200, "{}", purge.text());
    let recent = s.shared.activity.recent();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].kind, Kind::Purge);
    assert_eq!(recent[0].message, "url /a?… → 1 purged");
}

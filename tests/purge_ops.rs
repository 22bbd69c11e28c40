//! Soft purge and cascading invalidation (SPEC §7) against real origins
//! that count requests, and across two instances sharing a real Redis.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use strata::cache::key::CacheKey;
use support::redis::RedisServer;
use support::{wait_until, Client, Origin, Strata};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(10);

/// An origin with a validator: `If-None-Match: "v1"` gets a 304 (once
/// `gate`, if any, is notified, so that concurrent requests overlap the
/// revalidation); counts the conditional requests in `revalidations`.
async fn validating_origin(gate: Option<Arc<Notify>>, revalidations: Arc<AtomicUsize>) -> Origin {
    Origin::start(move |req| {
        let revalidations = revalidations.clone();
        let gate = gate.clone();
        async move {
            let headers = [
                ("cache-control", "max-age=300"),
                ("etag", "\"v1\""),
                ("content-type", "text/plain"),
            ];
            if req
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v == "\"v1\"")
            {
                revalidations.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                return support::origin::reply(304, &headers, "");
            }
            support::origin::reply(200, &headers, format!("body of {}", req.uri().path()))
        }
    })
    .await
}

fn soft_purged(s: &Strata, host: &str, path: &str) -> Option<bool> {
    let key = CacheKey::new(false, host, path);
    let object = s.shared.cache.memory().get_key(&key)?;
    Some(object.variants.iter().any(|v| v.soft_purged))
}

#[tokio::test]
async fn soft_purge_serves_stale_while_one_revalidation_runs() {
    let revalidations = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let origin = validating_origin(Some(gate.clone()), revalidations.clone()).await;
    let strata = Strata::start(&[origin.addr], "[upstream.health]\nenabled = false\n").await;
    let c = Client::new();
    let url = strata.url("/page");
    let host = strata.addr.to_string();

    assert!(c.get(&url).await.cache_status().contains("stored"));
    assert!(c.get(&url).await.cache_status().contains("hit"));
    assert_eq!(origin.count(), 1);

    let answer = purge_ok(&strata, r#"{"url": "/page", "soft": true}"#).await;
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(soft_purged(&strata, &host, "/page"), Some(true));

    // Five concurrent requests: all get the stale copy at once, and the
    // one background revalidation (held by the origin until all five are
    // answered: a fixed 300 ms hold raced them on a loaded machine) is
    // shared.
    let replies = futures_util::future::join_all((0..5).map(|_| c.get(&url))).await;
    gate.notify_one();
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "body of /page");
        assert!(
            r.cache_status()
                .starts_with("strata; fwd=stale; detail=soft-purge"),
            "{}",
            r.cache_status()
        );
    }
    wait_until(WAIT, "the revalidation landed", || async {
        soft_purged(&strata, &host, "/page") == Some(false)
    })
    .await;
    assert_eq!(revalidations.load(Ordering::SeqCst), 1);
    assert_eq!(origin.count(), 2, "exactly one origin revalidation");

    let r = c.get(&url).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.count(), 2);
}

/// A soft-purged entry is stale: a request that refuses staleness
/// (`max-age`, `min-fresh`, `max-stale=0`, RFC 9111 §4.2.4) waits for the
/// revalidation instead of getting the stale copy; `max-stale` with room
/// still gets it at once.
#[tokio::test]
async fn soft_purge_respects_requests_that_refuse_stale() {
    let revalidations = Arc::new(AtomicUsize::new(0));
    let origin = validating_origin(None, revalidations.clone()).await;
    let strata = Strata::start(&[origin.addr], "[upstream.health]\nenabled = false\n").await;
    let c = Client::new();
    let url = strata.url("/strict");
    assert!(c.get(&url).await.cache_status().contains("stored"));
    for (i, directive) in ["max-age=0", "max-age=600", "min-fresh=10", "max-stale=0"]
        .into_iter()
        .enumerate()
    {
        purge_ok(&strata, r#"{"url": "/strict", "soft": true}"#).await;
        let r = c.get_with(&url, &[("cache-control", directive)]).await;
        assert_eq!(r.text(), "body of /strict");
        assert!(
            r.cache_status()
                .starts_with("strata; fwd=stale; fwd-status=304; ttl="),
            "{directive}: {}",
            r.cache_status()
        );
        assert_eq!(revalidations.load(Ordering::SeqCst), i + 1, "{directive}");
    }
    purge_ok(&strata, r#"{"url": "/strict", "soft": true}"#).await;
    let r = c.get_with(&url, &[("cache-control", "max-stale=60")]).await;
    assert!(
        r.cache_status()
            .starts_with("strata; fwd=stale; detail=soft-purge"),
        "{}",
        r.cache_status()
    );
}

/// A soft-purged URL with two variants (`Vary`): each variant's background
/// revalidation runs (one each, at the same time) and both land; neither
/// overwrites the other (fresh-eyes tryout: one variant stayed soft-purged
/// and went to the origin a third time).
#[tokio::test]
async fn soft_purged_variants_revalidate_together_and_both_land() {
    let revalidations = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let seen = revalidations.clone();
    let origin = Origin::start(move |req| {
        let seen = seen.clone();
        let mut gate = gate.clone();
        async move {
            let v = support::origin::field(&req, "x-v");
            let headers = [
                ("cache-control", "max-age=300"),
                ("vary", "X-V"),
                ("etag", "\"v1\""),
            ];
            if req.headers().contains_key("if-none-match") {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                return support::origin::reply(304, &headers, "");
            }
            support::origin::reply(200, &headers, format!("variant {v}"))
        }
    })
    .await;
    let strata = Strata::start(&[origin.addr], "[upstream.health]\nenabled = false\n").await;
    let c = Client::new();
    let url = strata.url("/vv");
    let host = strata.addr.to_string();
    for v in ["a", "b"] {
        let r = c.get_with(&url, &[("x-v", v)]).await;
        assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    }
    let answer = purge_ok(&strata, r#"{"url": "/vv", "soft": true}"#).await;
    assert_eq!(answer["purged"], 1, "{answer}");
    for v in ["a", "b"] {
        let r = c.get_with(&url, &[("x-v", v)]).await;
        assert_eq!(r.text(), format!("variant {v}"));
        assert!(
            r.cache_status().contains("detail=soft-purge"),
            "{}",
            r.cache_status()
        );
    }
    wait_until(WAIT, "both revalidations at the origin", || async {
        revalidations.load(Ordering::SeqCst) == 2
    })
    .await;
    open.send_replace(true);
    wait_until(WAIT, "both revalidations landed", || async {
        soft_purged(&strata, &host, "/vv") == Some(false)
    })
    .await;
    for v in ["a", "b"] {
        let r = c.get_with(&url, &[("x-v", v)]).await;
        assert_eq!(r.text(), format!("variant {v}"));
        assert!(
            r.cache_status().starts_with("strata; hit"),
            "{v}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn soft_purge_reaches_the_fleet_and_revalidates_once() {
    let redis = RedisServer::start().await;
    let revalidations = Arc::new(AtomicUsize::new(0));
    let origin = validating_origin(None, revalidations.clone()).await;
    let cfg = format!(
        "[upstream.health]\nenabled = false\n\n[cache.redis]\nurls = [\"{}\"]\ntimeout = \"1s\"\n",
        redis.url()
    );
    let (a, b) = Strata::pair_sharing_redis(&[origin.addr], &cfg).await;

    assert!(get(&a).await.cache_status().contains("stored"));
    a.shared.cache.flush(WAIT).await;
    let r = get(&b).await;
    assert!(
        r.cache_status().contains("detail=redis"),
        "{}",
        r.cache_status()
    );
    assert!(get(&b).await.cache_status().contains("detail=memory"));
    assert_eq!(origin.count(), 1);

    // Both instances listen on the purge channel before the purge.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    wait_until(WAIT, "both instances subscribed", || {
        let mut conn = conn.clone();
        async move {
            let subs: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("strata:purge")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            subs.first().is_some_and(|(_, n)| *n >= 2)
        }
    })
    .await;

    let answer = purge_ok(&a, r#"{"prefix": "/sha", "soft": true}"#).await;
    assert!(answer["purged"].as_u64().unwrap() >= 1, "{answer}");
    assert_eq!(soft_purged(&a, "fleet.example", "/shared"), Some(true));
    wait_until(WAIT, "B's copy marked stale through pub/sub", || async {
        soft_purged(&b, "fleet.example", "/shared") == Some(true)
    })
    .await;

    // B serves the stale copy and revalidates (a 304) ...
    let r = get(&b).await;
    assert!(
        r.cache_status()
            .starts_with("strata; fwd=stale; detail=soft-purge"),
        "{}",
        r.cache_status()
    );
    wait_until(WAIT, "B's revalidation landed", || async {
        soft_purged(&b, "fleet.example", "/shared") == Some(false)
    })
    .await;
    b.shared.cache.flush(WAIT).await;
    // ... and A, whose memory copy is still marked, finds B's fresh one
    // in Redis instead of revalidating again.
    let r = get(&a).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert!(get(&b).await.cache_status().contains("hit"));
    assert_eq!(revalidations.load(Ordering::SeqCst), 1);
    assert_eq!(origin.count(), 2, "one fetch and one revalidation in all");
    let _ = redis::cmd("PING").query_async::<String>(&mut conn).await;
}

const HOST: (&str, &str) = ("host", "fleet.example");

async fn get(s: &Strata) -> support::Reply {
    Client::new().get_with(&s.url("/shared"), &[HOST]).await
}

/// Products tagged `product-listing` on listing pages; PUT answered 204.
async fn shop_origin() -> Origin {
    Origin::start(|req| async move {
        if req.method() != Method::GET {
            return support::origin::reply(204, &[], "");
        }
        let path = req.uri().path().to_string();
        let tag = if path.starts_with("/listing") {
            "product-listing"
        } else {
            "other"
        };
        support::origin::reply(
            200,
            &[("cache-control", "max-age=300"), ("surrogate-key", tag)],
            format!("body of {path}"),
        )
    })
    .await
}

async fn metric(s: &Strata, cause: &str) -> f64 {
    let text = Client::new().get(&s.admin_url("/metrics")).await.text();
    let needle = format!("strata_purged_total{{cause=\"{cause}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .unwrap_or_else(|| panic!("{needle} is exported"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn put_on_a_product_cascades_to_listing_tags() {
    let origin = shop_origin().await;
    let strata = Strata::start(
        &[origin.addr],
        r#"[upstream.health]
enabled = false

[[invalidation.cascade]]
on = "/api/products/**"
purge_tags = ["product-listing"]
purge_prefixes = ["/catalog/"]
"#,
    )
    .await;
    let c = Client::new();
    for cause in ["api", "unsafe_method", "cascade"] {
        assert_eq!(metric(&strata, cause).await, 0.0, "{cause} from start");
    }
    for path in [
        "/listing/1",
        "/listing/2",
        "/catalog/a",
        "/api/products/7",
        "/other",
    ] {
        assert!(c
            .get(&strata.url(path))
            .await
            .cache_status()
            .contains("stored"));
    }
    assert_eq!(origin.count(), 5);

    let r = c
        .send(
            Method::PUT,
            &strata.url("/api/products/7"),
            &[],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(origin.count(), 6);
    // The cascade ran before the PUT's response: no wait needed.
    for path in ["/listing/1", "/listing/2", "/catalog/a", "/api/products/7"] {
        let r = c.get(&strata.url(path)).await;
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{path}: {}",
            r.cache_status()
        );
    }
    assert!(c
        .get(&strata.url("/other"))
        .await
        .cache_status()
        .contains("hit"));
    assert_eq!(metric(&strata, "unsafe_method").await, 1.0);
    assert_eq!(metric(&strata, "cascade").await, 3.0);

    // An admin purge of a product URL cascades as well.
    let answer = purge_ok(&strata, r#"{"url": "/api/products/7"}"#).await;
    assert_eq!(answer["cascaded"], 3, "{answer}");
    assert_eq!(answer["purged"], 4, "{answer}");
    assert_eq!(metric(&strata, "api").await, 1.0);
    assert_eq!(metric(&strata, "cascade").await, 6.0);
}

#[tokio::test]
async fn cascade_cycles_terminate() {
    let origin = shop_origin().await;
    let strata = Strata::start(
        &[origin.addr],
        r#"[upstream.health]
enabled = false

[[invalidation.cascade]]
on = "/a/**"
purge_prefixes = ["/b/"]
soft = true

[[invalidation.cascade]]
on = "/b/**"
purge_prefixes = ["/a/"]
soft = true
"#,
    )
    .await;
    let c = Client::new();
    for path in ["/a/1", "/b/1"] {
        assert!(c
            .get(&strata.url(path))
            .await
            .cache_status()
            .contains("stored"));
    }
    let answer = tokio::time::timeout(WAIT, purge_ok(&strata, r#"{"prefix": "/a/"}"#))
        .await
        .expect("a cyclic cascade ends");
    // /a/ hard by the API; /b/ then /a/ again soft by the two cascades.
    assert_eq!(answer["purged"], 2, "{answer}");
    assert!(c
        .get(&strata.url("/a/1"))
        .await
        .cache_status()
        .contains("fwd=miss"));
    let r = c.get(&strata.url("/b/1")).await;
    assert!(
        r.cache_status().contains("detail=soft-purge"),
        "{}",
        r.cache_status()
    );
}

async fn purge_ok(s: &Strata, body: &str) -> Value {
    let (status, answer) = s.purge(body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A soft-purged copy stands in for a failing origin for its `grace`
/// only, counted from the first failed background revalidation; then it
/// is validated before the answer and the failure is the answer, as
/// Varnish keeps a soft-purged object for its grace. It was served for as
/// long as the origin failed (found by the invalidation probe).
#[tokio::test]
async fn a_soft_purged_copy_stands_in_for_a_failing_origin_for_grace_only() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failing.clone();
    let origin = Origin::start(move |_req| {
        let failing = f.load(Ordering::SeqCst);
        async move {
            let headers = [("cache-control", "max-age=300"), ("etag", "\"v1\"")];
            if failing {
                support::origin::reply(503, &[], "down")
            } else {
                support::origin::reply(200, &headers, "v1")
            }
        }
    })
    .await;
    let strata = Strata::start(
        &[origin.addr],
        "[upstream.health]\nenabled = false\n[cache]\ngrace = \"1s\"\n",
    )
    .await;
    let c = Client::new();
    let url = strata.url("/sp");
    assert!(c.get(&url).await.cache_status().contains("stored"));
    purge_ok(&strata, r#"{"url": "/sp", "soft": true}"#).await;
    failing.store(true, Ordering::SeqCst);
    let r = c.get(&url).await;
    assert_eq!(r.text(), "v1");
    assert!(
        r.cache_status().contains("detail=soft-purge"),
        "{}",
        r.cache_status()
    );
    wait_until(WAIT, "the background revalidation failed", || async {
        origin.count() == 2
    })
    .await;
    let failed = std::time::Instant::now();
    wait_until(WAIT, "the failure answered after grace", || async {
        let r = c.get(&url).await;
        assert!(
            r.status == 503 || r.cache_status().contains("detail=soft-purge"),
            "{} {}",
            r.status,
            r.cache_status()
        );
        r.status == 503
    })
    .await;
    assert!(
        failed.elapsed() >= Duration::from_millis(900),
        "{:?}",
        failed.elapsed()
    );
    // The origin back: validated at once, and fresh again.
    failing.store(false, Ordering::SeqCst);
    let r = c.get(&url).await;
    assert_eq!(r.text(), "v1");
    assert!(c.get(&url).await.cache_status().contains("hit"));
}

/// A second soft purge of what is marked already changes and counts
/// nothing: each answered `{"purged": 1}` and added to
/// `strata_purged_total` (found by the invalidation probe).
#[tokio::test]
async fn a_repeated_soft_purge_counts_nothing() {
    let origin = validating_origin(None, Arc::new(AtomicUsize::new(0))).await;
    let strata = Strata::start(&[origin.addr], "[upstream.health]\nenabled = false\n").await;
    let c = Client::new();
    assert!(c
        .get(&strata.url("/twice"))
        .await
        .cache_status()
        .contains("stored"));
    let soft = r#"{"url": "/twice", "soft": true}"#;
    assert_eq!(purge_ok(&strata, soft).await["purged"], 1);
    assert_eq!(purge_ok(&strata, soft).await["purged"], 0);
    let metrics = c.get(&strata.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("strata_purged_total{cause=\"api\"} 1\n"),
        "{metrics}"
    );
    // A hard purge still removes the marked entry.
    assert_eq!(purge_ok(&strata, r#"{"url": "/twice"}"#).await["purged"], 1);
}

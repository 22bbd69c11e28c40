//! The shared Redis tier with real Redis servers spawned by the tests:
//! standalone, a 6-node Cluster and Sentinel; fleet-wide purge; a dead
//! Redis never fails a request.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use support::redis::{command_calls, RedisCluster, RedisSentinel, RedisServer};
use support::{wait_until, Client, Origin, Strata};

/// Both instances must see the same Host to share keys, as they would
/// behind one load balancer.
const HOST: (&str, &str) = ("host", "fleet.example");

async fn get(c: &Client, url: &str) -> support::Reply {
    c.get_with(url, &[HOST]).await
}

fn redis_section(mode: &str, urls: &[String], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[upstream.health]\nenabled = false\n\n[cache.redis]\nmode = \"{mode}\"\nurls = [{}]\ntimeout = \"250ms\"\n{extra}",
        urls.join(", ")
    )
}

async fn tagged_origin() -> Origin {
    Origin::start(|req| async move {
        let tag = if req.uri().path().starts_with("/news") {
            "news"
        } else {
            "other"
        };
        support::origin::reply(
            200,
            &[
                ("cache-control", "max-age=300"),
                ("surrogate-key", tag),
                ("content-type", "text/plain"),
            ],
            format!("body of {}", req.uri().path()),
        )
    })
    .await
}

/// Waits (up to 30 s: a loaded CI machine can trip the 250 ms Redis
/// timeout and the breaker for a while) until instance `s` answers `path`
/// from Redis. The write from
/// another instance is asynchronous (off the request path), so `s` asks
/// with `only-if-cached`: until the entry is in Redis it gets a 504 and
/// stores nothing of its own.
async fn shared_hit(s: &Strata, path: &str) -> support::Reply {
    shared_hit_with(s, path, &[]).await
}

/// [`shared_hit`] with further request fields.
async fn shared_hit_with(s: &Strata, path: &str, fields: &[(&str, &str)]) -> support::Reply {
    let c = Client::new();
    let url = s.url(path);
    let mut fields = fields.to_vec();
    fields.extend([HOST, ("cache-control", "only-if-cached")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.get_with(&url, &fields).await;
        if r.status == 200 {
            assert!(
                r.cache_status().contains("detail=redis"),
                "{}",
                r.cache_status()
            );
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no shared hit for {path}: {}",
            r.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stores a fresh path through `a` and waits until `b` reads it from
/// Redis; retries with new paths while the tier recovers (or a write is
/// lost on a loaded machine). Returns the path read back.
async fn shared_again(a: &Strata, b: &Strata, what: &str) -> String {
    let c = Client::new();
    let n = std::sync::atomic::AtomicUsize::new(0);
    wait_until(Duration::from_secs(30), what, || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (c, a_url, b_url) = (
            c.clone(),
            a.url(&format!("/again/{i}")),
            b.url(&format!("/again/{i}")),
        );
        async move {
            assert_eq!(get(&c, &a_url).await.status, 200);
            for _ in 0..25 {
                let r = c
                    .get_with(&b_url, &[HOST, ("cache-control", "only-if-cached")])
                    .await;
                if r.status == 200 && r.cache_status().contains("detail=redis") {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    })
    .await;
    let last = n.load(std::sync::atomic::Ordering::SeqCst) - 1;
    format!("/again/{last}")
}

/// A gzip representation read from Redis by another instance comes back
/// whole: its fields are kept unparsed in the entry until served
/// (`cache/fields.rs`), then parsed once for the promoted copy.
#[tokio::test]
async fn an_encoded_representation_read_from_redis_is_whole() {
    let redis = RedisServer::start().await;
    let body: String = (0..200).map(|i| format!("{{\"item\":{i}}},")).collect();
    let served = body.clone();
    let origin = Origin::start(move |_req| {
        let body = served.clone();
        async move {
            support::origin::reply(
                200,
                &[
                    ("cache-control", "max-age=300"),
                    ("content-type", "application/json"),
                    ("etag", "\"v1\""),
                    ("x-app", "catalog"),
                ],
                body,
            )
        }
    })
    .await;
    let cfg = redis_section("standalone", &[redis.url()], "");
    let (a, b) = Strata::pair_sharing_redis(&[origin.addr], &cfg).await;
    let c = Client::new();
    let r = get(&c, &a.url("/items.json")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    assert_eq!(r.text(), body);

    let gunzip = |r: &support::Reply| {
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("x-app"), Some("catalog"));
        assert_eq!(r.header("etag"), Some("\"v1-gzip\""));
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut plain)
            .unwrap();
        plain
    };
    // B's first request for it, in gzip: read from Redis.
    let r = shared_hit_with(&b, "/items.json", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gunzip(&r), body);
    // Then from the copy B promoted into memory.
    let r = c
        .get_with(&b.url("/items.json"), &[HOST, ("accept-encoding", "gzip")])
        .await;
    assert!(
        r.cache_status().contains("detail=memory"),
        "{}",
        r.cache_status()
    );
    assert_eq!(gunzip(&r), body);
    assert_eq!(origin.count(), 1, "every answer from a cache");
}

/// `memory_capacity = "0"` (moka evicts at once): while a miss's encoded
/// representations are prepared, successful POSTs to other URLs (each an
/// RFC 9111 §4.4 invalidation of its own URL) must not stop the object
/// from reaching Redis. Before per-URL removal counts, any invalidation
/// anywhere dropped the write, and this URL was never stored.
#[tokio::test]
async fn a_redis_only_instance_stores_while_other_urls_are_invalidated() {
    let redis = RedisServer::start().await;
    let body: String = (0..4_000)
        .map(|i| format!("{{\"item\":{i},\"name\":\"thing {i}\"}},"))
        .collect();
    let served = body.clone();
    let origin = Origin::start(move |req| {
        let body = served.clone();
        async move {
            if req.method() == Method::POST {
                return support::origin::reply(204, &[], "");
            }
            support::origin::reply(
                200,
                &[
                    ("cache-control", "max-age=300"),
                    ("content-type", "application/json"),
                ],
                body,
            )
        }
    })
    .await;
    let cfg = format!(
        "[cache]\nmemory_capacity = \"0\"\n\n{}",
        redis_section("standalone", &[redis.url()], "")
    );
    let s = Strata::start(&[origin.addr], &cfg).await;
    wait_until(Duration::from_secs(10), "connected to Redis", || async {
        s.shared.cache.redis_state() == Some((true, false))
    })
    .await;
    let c = Client::new();
    let writes = {
        let (c, url) = (c.clone(), s.url("/other"));
        tokio::spawn(async move {
            loop {
                let r = c
                    .send(Method::POST, &url, &[HOST], Bytes::from_static(b"x"))
                    .await;
                assert_eq!(r.status, 204);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let r = get(&c, &s.url("/doc.json")).await;
    assert_eq!(r.text(), body);
    let url = s.url("/doc.json");
    wait_until(
        Duration::from_secs(30),
        "the object read back from Redis",
        || async {
            let r = c
                .get_with(&url, &[HOST, ("cache-control", "only-if-cached")])
                .await;
            r.status == 200 && r.cache_status().contains("detail=redis")
        },
    )
    .await;
    writes.abort();
    let gets = origin
        .seen()
        .iter()
        .filter(|r| r.method == Method::GET)
        .count();
    assert_eq!(gets, 1, "one GET upstream");
}

#[tokio::test]
async fn standalone_fleet_shares_entries_and_purges() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section("standalone", &[redis.url()], "");
    // Both connected first: a write made before A's tier is up is dropped.
    let (a, b) = Strata::pair_sharing_redis(&[origin.addr], &cfg).await;
    let c = Client::new();

    let r = get(&c, &a.url("/news/1")).await;
    assert!(r.cache_status().contains("stored"));
    let r = shared_hit(&b, "/news/1").await;
    assert_eq!(r.text(), "body of /news/1");
    assert_eq!(
        origin.count(),
        1,
        "B answered from Redis without the origin"
    );
    let r = get(&c, &b.url("/news/1")).await;
    assert!(
        r.cache_status().contains("detail=memory"),
        "promoted: {}",
        r.cache_status()
    );

    // Purge on A: B's memory tier is evicted through the channel.
    assert!(
        purge_ok(&a, r#"{"url": "/news/1"}"#).await["purged"]
            .as_u64()
            .unwrap()
            >= 1
    );
    wait_until(Duration::from_secs(10), "B evicted", || async {
        get(&c, &b.url("/news/1"))
            .await
            .cache_status()
            .contains("fwd=miss")
    })
    .await;
    assert_eq!(origin.count(), 2);

    // Tags.
    get(&c, &a.url("/news/2")).await;
    shared_hit(&b, "/news/2").await;
    get(&c, &b.url("/news/2")).await; // now in B's memory
    purge_ok(&a, r#"{"tags": ["news"]}"#).await;
    wait_until(Duration::from_secs(10), "B evicted by tag", || async {
        get(&c, &b.url("/news/2"))
            .await
            .cache_status()
            .contains("fwd=miss")
    })
    .await;

    // Prefix.
    get(&c, &a.url("/other/x")).await;
    shared_hit(&b, "/other/x").await;
    assert!(
        purge_ok(&b, r#"{"prefix": "/other/"}"#).await["purged"]
            .as_u64()
            .unwrap()
            >= 1
    );
    wait_until(Duration::from_secs(10), "A evicted by prefix", || async {
        get(&c, &a.url("/other/x"))
            .await
            .cache_status()
            .contains("fwd=miss")
    })
    .await;
}

#[tokio::test]
async fn unsafe_method_invalidation_reaches_the_fleet() {
    let redis = RedisServer::start().await;
    let origin = Origin::start(|req| async move {
        if req.method() == Method::PUT {
            return support::origin::reply(204, &[], "");
        }
        support::origin::reply(200, &[("cache-control", "max-age=300")], "doc")
    })
    .await;
    let cfg = redis_section("standalone", &[redis.url()], "");
    let (a, b) = Strata::pair_sharing_redis(&[origin.addr], &cfg).await;
    let c = Client::new();
    // Same Host on both instances, so both use one key.
    let host = [HOST];
    c.get_with(&a.url("/doc"), &host).await;
    wait_until(Duration::from_secs(10), "B has it", || async {
        c.get_with(&b.url("/doc"), &host)
            .await
            .cache_status()
            .contains("hit")
    })
    .await;
    let r = c
        .send(
            Method::PUT,
            &a.url("/doc"),
            &host,
            Bytes::from_static(b"new"),
        )
        .await;
    assert_eq!(r.status, 204);
    wait_until(Duration::from_secs(10), "B invalidated", || async {
        c.get_with(&b.url("/doc"), &host)
            .await
            .cache_status()
            .contains("fwd=miss")
    })
    .await;
}

#[tokio::test]
async fn dead_redis_degrades_to_memory_and_recovers() {
    let mut redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section(
        "standalone",
        &[redis.url()],
        "breaker_backoff = \"200ms\"\n",
    );
    let a = Strata::start(&[origin.addr], &cfg).await;
    let b = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    shared_again(&a, &b, "shared hits before the outage").await;

    redis.kill();
    // Every request still succeeds, none waits on Redis beyond its timeout
    // (250 ms) plus the origin's (instant) time.
    for i in 0..30 {
        let started = Instant::now();
        let r = get(&c, &a.url(&format!("/down/{i}"))).await;
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "request {i} took {:?}",
            started.elapsed()
        );
        let r = get(&c, &a.url(&format!("/down/{i}"))).await;
        assert!(
            r.cache_status().contains("detail=memory"),
            "memory still serves: {}",
            r.cache_status()
        );
    }
    let metrics = c.get(&a.admin_url("/metrics")).await.text();
    let errors: f64 = metrics
        .lines()
        .find(|l| l.starts_with("strata_redis_errors_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(errors > 0.0, "Redis errors are counted");

    redis.restart().await;
    shared_again(&a, &b, "shared hits resume once Redis is back").await;
}

/// With Redis dead, a purge degrades to this instance's memory: `200`
/// with the memory count and a warning (it answered `400` and skipped the
/// cascades), the cascades run, `strata_purged_total` counts; and an
/// unsafe method's cascade does not wait on Redis while its breaker is
/// open (it took the purge bound, seconds, per step).
#[tokio::test]
async fn purges_and_cascades_degrade_to_memory_when_redis_is_dead() {
    let mut redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section(
        "standalone",
        &[redis.url()],
        "breaker_backoff = \"30s\"\n\n[[invalidation.cascade]]\non = \"/api/**\"\npurge_prefixes = [\"/catalog/\"]\n",
    );
    let s = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    for path in ["/api/1", "/catalog/1", "/catalog/2", "/api/2"] {
        get(&c, &s.url(path)).await;
    }
    redis.kill();
    // Misses meet the dead Redis until its breaker opens.
    let probes = std::sync::atomic::AtomicUsize::new(0);
    wait_until(
        Duration::from_secs(30),
        "the Redis breaker open",
        || async {
            let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            get(&c, &s.url(&format!("/probe/{n}"))).await;
            let metrics = c.get(&s.admin_url("/metrics")).await.text();
            metrics.lines().any(|l| l == "strata_redis_breaker_open 1")
        },
    )
    .await;
    let (status, answer) = s.purge(r#"{"url": "/api/1"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["purged"], 3, "{answer}");
    assert_eq!(answer["cascaded"], 2, "{answer}");
    assert!(
        answer["warning"]
            .as_str()
            .is_some_and(|w| w.contains("memory")),
        "{answer}"
    );
    for path in ["/api/1", "/catalog/1", "/catalog/2"] {
        let r = get(&c, &s.url(path)).await;
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{path}: {}",
            r.cache_status()
        );
    }
    let metrics = c.get(&s.admin_url("/metrics")).await.text();
    for line in [
        "strata_purged_total{cause=\"api\"} 1",
        "strata_purged_total{cause=\"cascade\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    // A PUT whose cascade purges /catalog/ again: memory only, at once.
    let started = Instant::now();
    let r = c
        .send(
            http::Method::PUT,
            &s.url("/api/2"),
            &[HOST],
            bytes::Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the PUT took {:?}",
        started.elapsed()
    );
    let r = get(&c, &s.url("/catalog/1")).await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn corrupt_payload_is_a_counted_miss() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section("standalone", &[redis.url()], "");
    let a = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    let port = redis.port().to_string();
    let scan = || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port, "--scan", "--pattern", "strata:o:*"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // The tier connects in the background: store paths until one lands.
    let mut stored = None;
    for i in 0..200 {
        let path = format!("/c{i}");
        get(&c, &a.url(&path)).await;
        let landed = (0..10).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !scan().is_empty()
        });
        if landed {
            stored = Some(path);
            break;
        }
    }
    let path = stored.expect("an object reached Redis");
    for key in scan() {
        let ok = std::process::Command::new("redis-cli")
            .args(["-p", &port, "SET", &key, "garbage\x01\x02"])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let b = Strata::start(&[origin.addr], &cfg).await;
    // Once B's tier is connected, B reads the corrupt payload: a miss, counted.
    wait_until(Duration::from_secs(10), "B connected to Redis", || async {
        let h: Value = serde_json::from_slice(&c.get(&b.admin_url("/health")).await.body).unwrap();
        h["redis"]["connected"] == true
    })
    .await;
    wait_until(Duration::from_secs(10), "corruption counted", || async {
        let r = get(&c, &b.url(&path)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("body of {path}"));
        assert!(
            !r.cache_status().contains("detail=redis"),
            "{}",
            r.cache_status()
        );
        let metrics = c.get(&b.admin_url("/metrics")).await.text();
        metrics
            .lines()
            .any(|l| l.starts_with("strata_redis_errors_total") && !l.ends_with(" 0"))
    })
    .await;
}

/// Many URLs read from Redis at once: every request gets its own URL's
/// body (the batch's answers are matched to their reads in order), and the
/// reads share `MGET`s (`cache/redis/batch.rs`). `ports` are the data
/// nodes whose command counts are read; `b` keeps nothing in memory, so
/// every round reads Redis again.
async fn many_urls_read_at_once(cfg: &str, ports: &[u16]) {
    let origin = tagged_origin().await;
    let a = Strata::start(&[origin.addr], cfg).await;
    let b = Strata::start(
        &[origin.addr],
        &format!("[cache]\nmemory_capacity = \"0\"\n\n{cfg}"),
    )
    .await;
    // Connected first: a write made before A's tier is up is dropped.
    for s in [&a, &b] {
        wait_until(Duration::from_secs(10), "connected to Redis", || async {
            s.shared.cache.redis_state() == Some((true, false))
        })
        .await;
    }
    let c = Client::new();
    const URLS: usize = 40;
    for i in 0..URLS {
        assert_eq!(get(&c, &a.url(&format!("/m/{i}"))).await.status, 200);
    }
    for i in 0..URLS {
        shared_hit(&b, &format!("/m/{i}")).await;
    }
    let stored = origin.count();
    let mget_calls = || async {
        let mut n = 0;
        for &port in ports {
            n += support::redis::command_calls(port, "mget").await;
        }
        n
    };
    let before = mget_calls().await;
    wait_until(Duration::from_secs(20), "reads shared an MGET", || async {
        let replies = futures_util::future::join_all((0..URLS).map(|i| {
            let (c, url) = (c.clone(), b.url(&format!("/m/{i}")));
            async move { (i, get(&c, &url).await) }
        }))
        .await;
        for (i, r) in replies {
            assert_eq!(r.text(), format!("body of /m/{i}"));
            assert!(
                r.cache_status().contains("detail=redis"),
                "{}",
                r.cache_status()
            );
        }
        mget_calls().await > before
    })
    .await;
    assert_eq!(origin.count(), stored, "every read answered from Redis");
}

#[tokio::test]
async fn concurrent_reads_of_many_urls_share_mget() {
    let redis = RedisServer::start().await;
    let cfg = redis_section("standalone", &[redis.url()], "");
    many_urls_read_at_once(&cfg, &[redis.port()]).await;
}

#[tokio::test]
async fn concurrent_reads_of_many_urls_share_mget_across_cluster_slots() {
    let cluster = RedisCluster::start().await;
    let cfg = redis_section("cluster", &cluster.urls(), "");
    many_urls_read_at_once(&cfg, &cluster.ports()).await;
}

#[tokio::test]
async fn cluster_shares_entries_and_survives_a_master_failover() {
    let mut cluster = RedisCluster::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section("cluster", &cluster.urls(), "breaker_backoff = \"200ms\"\n");
    let a = Strata::start(&[origin.addr], &cfg).await;
    let b = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    shared_again(&a, &b, "shared hits through the cluster").await;
    for i in 0..6 {
        get(&c, &a.url(&format!("/k{i}"))).await;
        shared_hit(&b, &format!("/k{i}")).await;
    }
    cluster.kill_a_master().await;
    // During the failover every client request still succeeds.
    for i in 0..20 {
        let r = get(&c, &a.url(&format!("/during/{i}"))).await;
        assert_eq!(r.status, 200);
    }
    cluster.wait_failover().await;
    shared_again(&a, &b, "shared hits resume after the failover").await;
}

#[tokio::test]
async fn sentinel_failover_is_followed() {
    let mut sentinel = RedisSentinel::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section(
        "sentinel",
        &sentinel.sentinel_urls(),
        &format!(
            "sentinel_master = \"{}\"\nbreaker_backoff = \"200ms\"\n",
            sentinel.master_name()
        ),
    );
    let a = Strata::start(&[origin.addr], &cfg).await;
    let b = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    // The tier connects in the background (through the sentinels).
    shared_again(&a, &b, "shared hits through the sentinel-resolved master").await;
    sentinel.kill_master().await;
    sentinel.wait_failover().await;
    for i in 0..10 {
        assert_eq!(get(&c, &a.url(&format!("/during/{i}"))).await.status, 200);
    }
    shared_again(&a, &b, "reads and writes through the new master").await;
}

/// SPEC §4: a purge reaches every instance. After a manual failover the
/// old master keeps answering (and calling itself master) for seconds,
/// and the purge subscriptions stayed on it while the fleet published on
/// the new one: B served a purged copy from memory until the old master
/// was demoted (about 10 s; black-box probe). The subscription now follows
/// the data connection to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_purges_reach_the_fleet_right_after_a_manual_failover() {
    let mut sentinel = RedisSentinel::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section(
        "sentinel",
        &sentinel.sentinel_urls(),
        &format!("sentinel_master = \"{}\"\n", sentinel.master_name()),
    );
    let a = Strata::start(&[origin.addr], &cfg).await;
    let b = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    shared_again(&a, &b, "shared hits through the sentinel-resolved master").await;
    get(&c, &a.url("/news/kept")).await;
    shared_hit(&b, "/news/kept").await;
    let r = get(&c, &b.url("/news/kept")).await;
    assert!(
        r.cache_status().contains("detail=memory"),
        "{}",
        r.cache_status()
    );
    let old = sentinel.master_port();
    sentinel.failover_gracefully().await;
    sentinel.wait_failover().await;
    let new = sentinel.master_port();
    let t = Instant::now();
    // Only once A's data connection follows the new master (a write of
    // A's reaches it; the old master still answers meanwhile) is the one
    // purge made: an earlier one would go out on the old master, where B
    // still listens.
    let written = command_calls(new, "set").await;
    for i in 0.. {
        get(&c, &a.url(&format!("/news/follow{i}"))).await;
        if command_calls(new, "set").await > written {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "A never wrote to the new master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = command_calls(new, "publish").await;
    purge_ok(&a, r#"{"url": "/news/kept"}"#).await;
    assert!(command_calls(new, "publish").await > published);
    let purged = t.elapsed();
    assert!(
        !sentinel.is_replica(old).await,
        "the old master was demoted before A's purge: nothing shown"
    );
    loop {
        let r = get(&c, &b.url("/news/kept")).await;
        if !r.is_hit() {
            break;
        }
        assert!(
            !sentinel.is_replica(old).await,
            "B served the purged copy until the old master was demoted ({:?} after the failover)",
            t.elapsed()
        );
        // The subscription follows within a second or two; the old
        // master is demoted (and B's subscription cut) about 10 s after
        // the failover.
        assert!(
            t.elapsed() - purged < Duration::from_secs(5),
            "B still served the purged copy {:?} after the purge",
            t.elapsed() - purged
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "A published on the new master {purged:?} after the failover, B dropped the copy at {:?}",
        t.elapsed()
    );
}

/// Pub/sub ignores the database number: a fleet on `redis://h/2` had its
/// memory tier emptied by a purge of a fleet on database 0 with the same
/// `key_prefix` (black-box probe). Each database has its own channel now.
#[tokio::test]
async fn purges_stay_within_their_redis_database() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let on = |db: u8| {
        let url = format!("{}/{db}", redis.url().trim_end_matches('/'));
        redis_section("standalone", &[url], "")
    };
    let purger = Strata::start(&[origin.addr], &on(0)).await;
    let same_db = Strata::start(&[origin.addr], &on(0)).await;
    let other_db = Strata::start(&[origin.addr], &on(2)).await;
    wait_until(Duration::from_secs(10), "all connected", || async {
        [&purger, &same_db, &other_db]
            .iter()
            .all(|s| s.shared.cache.redis_state() == Some((true, false)))
    })
    .await;
    let c = Client::new();
    for s in [&same_db, &other_db] {
        get(&c, &s.url("/news/db")).await;
        let r = get(&c, &s.url("/news/db")).await;
        assert!(
            r.cache_status().contains("detail=memory"),
            "{}",
            r.cache_status()
        );
    }
    purge_ok(&purger, r#"{"url": "/news/db"}"#).await;
    // The instance on database 0 hears it (and so has the other, were it
    // listening on the same channel: one server delivers both at once).
    wait_until(Duration::from_secs(10), "database 0 purged", || async {
        !get(&c, &same_db.url("/news/db")).await.is_hit()
    })
    .await;
    let r = get(&c, &other_db.url("/news/db")).await;
    assert!(
        r.cache_status().contains("detail=memory"),
        "{}",
        r.cache_status()
    );
}

/// A Redis `timeout` (the server closes clients idle that long) made the
/// first read after every quiet spell fail: an error, and a miss that
/// went to the origin although Redis held the object (black-box probe).
/// The connection is PINGed every second, so it never idles.
#[tokio::test]
async fn a_redis_idle_timeout_costs_no_read() {
    let redis = RedisServer::start().await;
    // Redis closes a client idle for more than `timeout` whole seconds,
    // counted on its seconds clock: with `timeout 2` that is after 2 to 3 s
    // of silence, so the 1 s PING has a second of margin even on a loaded
    // machine (`timeout 1` would leave it none).
    redis.config_set("timeout", "2").await;
    let origin = tagged_origin().await;
    let cfg = redis_section("standalone", &[redis.url()], "");
    let s = Strata::start(
        &[origin.addr],
        &format!("[cache]\nmemory_capacity = \"0\"\n\n{cfg}"),
    )
    .await;
    let c = Client::new();
    let path = shared_again(&s, &s, "an entry stored in Redis").await;
    let fetched = origin.count();
    let before = metric(&c, &s, "strata_redis_errors_total").await;
    // Quiet for longer than Redis's idle limit (3 s on its clock at most;
    // its client check runs several times a second).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = get(&c, &s.url(&path)).await;
    assert!(
        r.cache_status().contains("detail=redis"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count(), fetched);
    assert_eq!(metric(&c, &s, "strata_redis_errors_total").await, before);
}

/// README documents Unix-socket URLs (`unix://`, `redis+unix://`) in
/// standalone mode: two instances, one on each spelling, share entries
/// and purges through a real `redis-server` listening on a socket.
#[tokio::test]
async fn standalone_over_a_unix_socket_shares_entries_and_purges() {
    let redis = RedisServer::start_with_socket().await;
    let origin = tagged_origin().await;
    let socket = redis.socket();
    let with = |scheme: &str| {
        let url = format!("{scheme}://{}", socket.display());
        redis_section("standalone", &[url], "")
    };
    let a = Strata::start(&[origin.addr], &with("unix")).await;
    let b = Strata::start(&[origin.addr], &with("redis+unix")).await;
    wait_until(
        Duration::from_secs(10),
        "both connected over the socket",
        || async {
            a.shared.cache.redis_state() == Some((true, false))
                && b.shared.cache.redis_state() == Some((true, false))
        },
    )
    .await;
    let c = Client::new();
    let r = get(&c, &a.url("/news/1")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let r = shared_hit(&b, "/news/1").await;
    assert_eq!(r.text(), "body of /news/1");
    assert_eq!(origin.count(), 1, "B answered from Redis");
    get(&c, &b.url("/news/1")).await; // now in B's memory
    purge_ok(&a, r#"{"url": "/news/1"}"#).await;
    wait_until(Duration::from_secs(10), "B evicted", || async {
        get(&c, &b.url("/news/1"))
            .await
            .cache_status()
            .contains("fwd=miss")
    })
    .await;
}

async fn purge_ok(s: &Strata, body: &str) -> Value {
    let (status, answer) = s.purge(body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Reads `"breaker_open"` from `/health`.
async fn breaker_open(c: &Client, s: &Strata) -> bool {
    let health: Value =
        serde_json::from_str(&c.get(&s.admin_url("/health")).await.text()).unwrap_or(Value::Null);
    health["redis"]["breaker_open"].as_bool().unwrap_or(false)
}

/// Black-box finding F4: `redis://host:port/?password=PW` passed `check`
/// and was masked in the logs as a password, but redis-rs reads the
/// password of a `redis://` URL from its userinfo only: none was sent and
/// every command failed with `NOAUTH`. `check` refuses it now, naming the
/// key and the form to write instead, which works against a Redis with
/// `requirepass`.
#[tokio::test]
async fn a_password_in_the_url_query_is_refused_and_the_userinfo_form_works() {
    const PW: &str = "s3cr3tPW";
    let server = RedisServer::start().await;
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(PW)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let origin = tagged_origin().await;
    let dir = tempfile::tempdir().unwrap();
    for query in ["password", "pass"] {
        let url = format!("redis://127.0.0.1:{}/?{query}={PW}", server.port());
        let path = dir.path().join(format!("{query}.toml"));
        let text = support::config_text(&[origin.addr], &redis_section("standalone", &[url], ""));
        std::fs::write(&path, text).unwrap();
        let err = support::binary::check_fails(&path);
        let want = format!("cache.redis.urls[0]: query parameter \"{query}\" is not read");
        assert!(err.contains(&want), "want {want:?} in {err:?}");
        assert!(err.contains("\"redis://:PASSWORD@host:port\""), "{err}");
        assert!(!err.contains(PW), "the password in {err:?}");
    }
    // The form it names is sent: two instances share an entry through the
    // password-protected Redis.
    let url = format!("redis://:{PW}@127.0.0.1:{}", server.port());
    let (a, b) =
        Strata::pair_sharing_redis(&[origin.addr], &redis_section("standalone", &[url], "")).await;
    assert_eq!(get(&Client::new(), &a.url("/news/pw")).await.status, 200);
    shared_hit(&b, "/news/pw").await;
}

/// After Redis comes back, the breaker closes at the first probe, one
/// `breaker_backoff` after it opened, not two: the first command after a
/// restart fails on the connection the server dropped (redis-rs then
/// reconnects), and that probe failure used to keep Redis skipped for
/// another whole backoff (and `redis_breaker_closed` late).
#[tokio::test]
async fn the_breaker_closes_at_the_first_probe_after_redis_returns() {
    let mut redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let backoff = Duration::from_secs(3);
    let cfg = redis_section("standalone", &[redis.url()], "breaker_backoff = \"3s\"\n");
    let a = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    get(&c, &a.url("/warm")).await;
    wait_until(Duration::from_secs(10), "Redis connected", || async {
        let health: Value = serde_json::from_str(&c.get(&a.admin_url("/health")).await.text())
            .unwrap_or(Value::Null);
        health["redis"]["connected"].as_bool() == Some(true)
    })
    .await;

    redis.kill();
    let mut i = 0;
    wait_until(Duration::from_secs(10), "the breaker opens", || {
        i += 1;
        let path = format!("/down/{i}");
        let (c, a) = (&c, &a);
        async move {
            get(c, &a.url(&path)).await;
            breaker_open(c, a).await
        }
    })
    .await;
    let opened = Instant::now();
    // While Redis is being skipped, /health does not call it connected.
    let health: Value = serde_json::from_str(&c.get(&a.admin_url("/health")).await.text()).unwrap();
    assert_eq!(health["redis"]["connected"], false, "{health}");
    assert_eq!(health["redis"]["breaker_open"], true, "{health}");
    redis.restart().await;
    // Requests keep coming (each may be the probe) until it closes.
    let mut j = 0;
    wait_until(Duration::from_secs(20), "the breaker closes", || {
        j += 1;
        let path = format!("/up/{j}");
        let (c, a) = (&c, &a);
        async move {
            get(c, &a.url(&path)).await;
            !breaker_open(c, a).await
        }
    })
    .await;
    let closed_after = opened.elapsed();
    assert!(
        closed_after < backoff + Duration::from_secs(2),
        "closed {closed_after:?} after opening; the first probe is due after {backoff:?}"
    );
}

/// `/health`'s `"redis"` object.
async fn redis_health(c: &Client, s: &Strata) -> Value {
    let health: Value =
        serde_json::from_str(&c.get(&s.admin_url("/health")).await.text()).unwrap_or(Value::Null);
    health["redis"].clone()
}

/// The value of the unlabelled metric `name` (0 when absent).
async fn metric(c: &Client, s: &Strata, name: &str) -> f64 {
    c.get(&s.admin_url("/metrics"))
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// An instance that gets no proxy traffic (one used for admin purges)
/// notices a dead Redis through its purge subscription: the lost
/// subscription and the failed resubscriptions are counted as Redis errors
/// and check Redis through the breaker, which opens, so `/health` says
/// `connected: false`; once Redis is back and the subscription too, it
/// says `connected: true` again. It said `connected: true`, breaker
/// closed, no errors, for as long as Redis was down, while the instance
/// missed every fleet purge.
#[tokio::test]
async fn an_idle_instance_reports_redis_down_and_back_through_its_subscription() {
    let mut redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let cfg = redis_section("standalone", &[redis.url()], "breaker_backoff = \"1s\"\n");
    let a = Strata::start(&[origin.addr], &cfg).await;
    let c = Client::new();
    wait_until(Duration::from_secs(10), "Redis connected", || async {
        redis_health(&c, &a).await["connected"] == true
    })
    .await;
    let errors = metric(&c, &a, "strata_redis_errors_total").await;

    redis.kill();
    // Default breaker_threshold (5): a handful of failed resubscriptions,
    // under a second against a refused connection.
    wait_until(
        Duration::from_secs(10),
        "/health says Redis is down",
        || async {
            let r = redis_health(&c, &a).await;
            r["connected"] == false && r["breaker_open"] == true
        },
    )
    .await;
    assert_eq!(metric(&c, &a, "strata_redis_breaker_open").await, 1.0);
    assert!(
        metric(&c, &a, "strata_redis_errors_total").await > errors,
        "the lost subscription is counted"
    );

    redis.restart().await;
    // The breaker's prober closes it one backoff after it opened; the
    // subscriber is back within its own backoff (at most 1 s).
    wait_until(
        Duration::from_secs(20),
        "/health says Redis is back",
        || async {
            let r = redis_health(&c, &a).await;
            r["connected"] == true && r["breaker_open"] == false
        },
    )
    .await;
    assert!(a.shared.cache.redis().unwrap().is_subscribed());
    assert_eq!(metric(&c, &a, "strata_redis_breaker_open").await, 0.0);
    assert_eq!(origin.count(), 0, "no proxy traffic at all");
}

/// Variants of one URL (`Vary: Accept-Language`) stored by different
/// instances are shared: an instance that holds the URL without the
/// request's variant finds it in Redis (it went to the origin), and its
/// own write keeps the variants others stored (it replaced them).
#[tokio::test]
async fn vary_variants_stored_by_different_instances_are_shared() {
    let redis = RedisServer::start().await;
    let origin = Origin::start(|req| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        support::origin::reply(
            200,
            &[
                ("cache-control", "max-age=300"),
                ("vary", "accept-language"),
            ],
            format!("lang={lang}"),
        )
    })
    .await;
    let cfg = redis_section("standalone", &[redis.url()], "");
    let (a, b) = Strata::pair_sharing_redis(&[origin.addr], &cfg).await;
    let c = Client::new();
    let lang = |l: &'static str| [HOST, ("accept-language", l)];
    let r = c.get_with(&a.url("/page"), &lang("en")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    // B reads A's object from Redis, lacks "de", fetches and stores it.
    shared_hit_with(&b, "/page", &[("accept-language", "en")]).await;
    let r = c.get_with(&b.url("/page"), &lang("de")).await;
    assert_eq!(r.text(), "lang=de");
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    // A holds the URL ("en") without "de": found in Redis.
    let r = shared_hit_with(&a, "/page", &[("accept-language", "de")]).await;
    assert_eq!(r.text(), "lang=de");
    // A stores "fr"; its write keeps "de" and "en" beside it.
    let r = c.get_with(&a.url("/page"), &lang("fr")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let fresh = Strata::start(&[origin.addr], &cfg).await;
    shared_hit_with(&fresh, "/page", &[("accept-language", "fr")]).await;
    for l in ["de", "en"] {
        let r = c
            .get_with(
                &fresh.url("/page"),
                &[
                    HOST,
                    ("accept-language", l),
                    ("cache-control", "only-if-cached"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{l}: {}", r.cache_status());
        assert_eq!(r.text(), format!("lang={l}"));
    }
    assert_eq!(origin.count(), 3, "one origin request per language");
}

/// A Redis-only instance (`memory_capacity = "0"`: every read comes from
/// Redis) on `redis`, connected.
async fn redis_only(origin: &Origin, redis: &RedisServer) -> Strata {
    let cfg = format!(
        "[cache]\nmemory_capacity = \"0\"\n\n{}",
        redis_section("standalone", &[redis.url()], "")
    );
    let s = Strata::start(&[origin.addr], &cfg).await;
    wait_until(Duration::from_secs(10), "connected to Redis", || async {
        s.shared.cache.redis_state() == Some((true, false))
    })
    .await;
    s
}

/// `path` read from Redis with `fields`, once that copy `fits` (30 s).
async fn redis_copy(
    s: &Strata,
    path: &str,
    fields: &[(&str, &str)],
    fits: impl Fn(&support::Reply) -> bool,
) -> support::Reply {
    let c = Client::new();
    let mut fields = fields.to_vec();
    fields.extend([HOST, ("cache-control", "only-if-cached")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.get_with(&s.url(path), &fields).await;
        if r.status == 200 && r.cache_status().contains("detail=redis") && fits(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{path}: {}", r.cache_status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Redis tier's tag index follows a 304 that retags the entry (RFC
/// 9111 §4.3.4): the object written back carries the 304's tags, so a
/// purge by the new tag finds it (bug replay: `{"purged":0}` and the copy
/// kept being served).
#[tokio::test]
async fn a_304_retags_the_redis_copy() {
    let redis = RedisServer::start().await;
    let origin = Origin::start(|req| async move {
        if req.headers().contains_key("if-none-match") {
            let fields = [
                ("cache-control", "max-age=300"),
                ("etag", "\"r\""),
                ("surrogate-key", "new"),
                ("x-version", "2"),
            ];
            return support::origin::reply(304, &fields, "");
        }
        let fields = [
            ("cache-control", "max-age=300"),
            ("etag", "\"r\""),
            ("surrogate-key", "old"),
            ("x-version", "1"),
        ];
        support::origin::reply(200, &fields, "retagged")
    })
    .await;
    let s = redis_only(&origin, &redis).await;
    let c = Client::new();
    assert!(get(&c, &s.url("/rt"))
        .await
        .cache_status()
        .contains("stored"));
    redis_copy(&s, "/rt", &[], |_| true).await;
    // A request `max-age=0` revalidates the fresh copy.
    let r = c
        .get_with(&s.url("/rt"), &[HOST, ("cache-control", "max-age=0")])
        .await;
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    redis_copy(&s, "/rt", &[], |r| r.header("x-version") == Some("2")).await;
    let (_, answer) = s.purge(r#"{"tags": ["new"]}"#).await;
    assert_eq!(answer["purged"], 1, "{answer}");
    let r = get(&c, &s.url("/rt")).await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 3);
}

/// A `Vary` widened by a 304 selects in the Redis tier too: the object
/// written back holds the validated request's variant, keyed by its
/// cookie, which another cookie does not select (RFC 9111 §4.1).
#[tokio::test]
async fn a_304_that_widens_vary_rekeys_the_redis_copy() {
    let redis = RedisServer::start().await;
    let origin = Origin::start(|req| async move {
        if req.headers().contains_key("if-none-match") {
            let fields = [
                ("cache-control", "max-age=300"),
                ("etag", "\"p\""),
                ("vary", "Accept-Language, Cookie"),
            ];
            return support::origin::reply(304, &fields, "");
        }
        let cookie = support::origin::field(&req, "cookie");
        if cookie == "-" {
            let fields = [
                ("cache-control", "max-age=300"),
                ("etag", "\"p\""),
                ("vary", "Accept-Language"),
            ];
            return support::origin::reply(200, &fields, "page-for-1");
        }
        let fields = [
            ("cache-control", "max-age=300"),
            ("vary", "Accept-Language, Cookie"),
        ];
        support::origin::reply(200, &fields, format!("page-for-{cookie}"))
    })
    .await;
    let s = redis_only(&origin, &redis).await;
    let c = Client::new();
    let en = ("accept-language", "en");
    let r = c.get_with(&s.url("/vr"), &[HOST, en]).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    redis_copy(&s, "/vr", &[en], |_| true).await;
    let alice = ("cookie", "user=alice");
    let r = c
        .get_with(
            &s.url("/vr"),
            &[HOST, en, alice, ("cache-control", "max-age=0")],
        )
        .await;
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.text(), "page-for-1");
    let r = redis_copy(&s, "/vr", &[en, alice], |r| {
        r.header("vary") == Some("Accept-Language, Cookie")
    })
    .await;
    assert_eq!(r.text(), "page-for-1");
    let bob = ("cookie", "user=bob");
    let r = c
        .get_with(
            &s.url("/vr"),
            &[HOST, en, bob, ("cache-control", "only-if-cached")],
        )
        .await;
    assert_eq!(r.status, 504, "bob is not alice: {}", r.cache_status());
    let r = c.get_with(&s.url("/vr"), &[HOST, en, bob]).await;
    assert_eq!(r.text(), "page-for-user=bob");
    assert_eq!(origin.last().unwrap().headers["cookie"], "user=bob");
    assert_eq!(origin.count(), 3);
}

/// A purge subscription Redis refuses (an ACL user without channel
/// permission; Redis 7 gives new users none) is logged at warn with
/// Redis's error: such an instance never hears purges made elsewhere, and
/// said so nowhere but in a counter (fleet probe, medium).
#[tokio::test]
async fn a_refused_purge_subscription_is_logged() {
    let redis = RedisServer::start().await;
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let extra = format!(
        "[upstream.health]\nenabled = false\n[cache.redis]\nurls = [\"redis://limited:pw@127.0.0.1:{}\"]\n",
        redis.port()
    );
    std::fs::write(&path, support::config_text(&[origin.addr], &extra)).unwrap();
    let bin = support::binary::Binary::start(&path, &[]).await;
    let (_, event) = bin
        .wait_event(0, "the refused subscription, at warn", |e| {
            e["level"] == "WARN"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("redis purge channel: subscribe failed"))
        })
        .await;
    let line = event.to_string();
    assert!(
        line.contains("NOPERM") || line.contains("permission"),
        "{line}"
    );
    assert!(
        !line.contains(":pw@"),
        "the password is never logged: {line}"
    );
}

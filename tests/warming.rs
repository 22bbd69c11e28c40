//! Cache warming (URL file, sitemap and index with .gz, rate, redis_hot,
//! a reload that adds it) and refresh-ahead, against real origins that
//! count requests and a real Redis.

mod support;

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::binary::Binary;
use support::redis::RedisServer;
use support::{wait_until, Client, Origin, Strata};

const WAIT: Duration = Duration::from_secs(20);
const HOST: (&str, &str) = ("host", "www.example.com");

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn urlset(paths: &[&str]) -> String {
    let urls: String = paths
        .iter()
        .map(|p| format!("<url><loc>http://www.example.com{p}</loc></url>"))
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>"#
    )
}

/// Pages at any path (cacheable for 5 minutes), and the sitemaps: an
/// index naming a plain and a gzip sitemap.
async fn site() -> Origin {
    Origin::start(|req| async move {
        let path = req.uri().path().to_string();
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let xml = [("content-type", "application/xml")];
        match path.as_str() {
            "/index.xml" => support::origin::reply(
                200,
                &xml,
                format!(
                    r#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap><loc>http://{host}/one.xml</loc></sitemap><sitemap><loc>http://{host}/two.xml.gz</loc></sitemap></sitemapindex>"#
                ),
            ),
            "/one.xml" => support::origin::reply(200, &xml, urlset(&["/s/1", "/s/2?x=1&amp;y=2"])),
            "/two.xml.gz" => support::origin::reply(
                200,
                &[("content-type", "application/gzip")],
                gzip(urlset(&["/s/3", "/s/4"]).as_bytes()),
            ),
            _ => support::origin::reply(
                200,
                &[("cache-control", "max-age=300"), ("content-type", "text/plain")],
                format!("page {path}"),
            ),
        }
    })
    .await
}

async fn health(s: &Strata) -> Value {
    let r = Client::new().get(&s.admin_url("/health")).await;
    assert_eq!(r.status, 200, "health stays 200 while warming");
    serde_json::from_slice(&r.body).unwrap()
}

async fn warmed(s: &Strata) -> Value {
    wait_until(WAIT, "warming done", || async {
        health(s).await["warming"]["state"] == "done"
    })
    .await;
    health(s).await["warming"].clone()
}

async fn metric(s: &Strata, source: &str, result: &str) -> f64 {
    let text = Client::new().get(&s.admin_url("/metrics")).await.text();
    let needle = format!("strata_warm_requests_total{{result=\"{result}\",source=\"{source}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn page_requests(origin: &Origin) -> Vec<String> {
    origin
        .seen()
        .into_iter()
        .filter(|s| !s.path.ends_with(".xml") && !s.path.ends_with(".gz"))
        .map(|s| s.path)
        .collect()
}

#[tokio::test]
async fn warming_from_a_file_and_a_sitemap_index_fills_the_cache() {
    let origin = site().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warm.txt");
    std::fs::write(
        &file,
        "# warm these\n/f/1\n\n/f/2\nhttp://www.example.com/s/1\n",
    )
    .unwrap();
    let strata = Strata::start(
        &[origin.addr],
        &format!(
            "[upstream.health]\nenabled = false\n\n[warming]\nurls_file = \"{}\"\nsitemap = \"http://{}/index.xml\"\nhost = \"www.example.com\"\nrate = \"1000/s\"\nconcurrency = 2\n",
            file.display(),
            origin.addr
        ),
    )
    .await;

    let progress = warmed(&strata).await;
    // /f/1, /f/2, /s/1 from the file; /s/2?…, /s/3, /s/4 from the sitemaps
    // (/s/1 again is warmed once).
    assert_eq!(progress["total"], 6, "{progress}");
    assert_eq!(progress["done"], 6, "{progress}");
    assert_eq!(progress["errors"], 0, "{progress}");
    let mut pages = page_requests(&origin);
    pages.sort();
    assert_eq!(
        pages,
        ["/f/1", "/f/2", "/s/1", "/s/2?x=1&y=2", "/s/3", "/s/4"]
    );
    for s in origin.seen().iter().filter(|s| s.path.starts_with("/f/")) {
        assert_eq!(s.headers["user-agent"], "strata-warmer");
    }
    assert_eq!(metric(&strata, "urls_file", "stored").await, 3.0);
    assert_eq!(metric(&strata, "sitemap", "stored").await, 3.0);

    // Every warmed URL is now a hit for clients.
    let c = Client::new();
    for path in ["/f/1", "/f/2", "/s/1", "/s/2?x=1&y=2", "/s/3", "/s/4"] {
        let r = c.get_with(&strata.url(path), &[HOST]).await;
        assert!(
            r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
    }
    assert_eq!(page_requests(&origin).len(), 6, "no page fetched twice");
}

#[tokio::test]
async fn a_failing_source_never_stops_serving() {
    let origin = site().await;
    // A file `check` can open (a missing one is refused there) but the
    // round cannot read: not UTF-8.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warm.txt");
    std::fs::write(&file, b"/a\n\xff\xfe\n").unwrap();
    let strata = Strata::start(
        &[origin.addr],
        &format!(
            "[upstream.health]\nenabled = false\n\n[warming]\nurls_file = \"{}\"\nsitemap = \"http://127.0.0.1:9/sitemap.xml\"\n",
            file.display()
        ),
    )
    .await;
    let progress = warmed(&strata).await;
    assert_eq!(progress["errors"], 2, "{progress}");
    let r = Client::new().get(&strata.url("/x")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
}

#[tokio::test]
async fn warming_never_exceeds_its_rate() {
    let origin = site().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warm.txt");
    let lines: String = (0..20).map(|i| format!("/r/{i}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    let started = Instant::now();
    let _strata = Strata::start(
        &[origin.addr],
        &format!(
            "[upstream.health]\nenabled = false\n\n[warming]\nurls_file = \"{}\"\nrate = \"10/s\"\nconcurrency = 8\n",
            file.display()
        ),
    )
    .await;
    // At 10/s with a burst of one, n requests need at least (n-1)/10 s:
    // every sample must satisfy count <= 1 + 10 × elapsed (elapsed read
    // after the count, so the bound only loosens on a slow machine).
    let mut samples = 0;
    wait_until(WAIT, "all 20 warmed", || {
        let count = origin.count();
        let elapsed = started.elapsed().as_secs_f64();
        assert!(
            count as f64 <= 1.0 + 10.0 * elapsed + 1e-9,
            "{count} requests after {elapsed:.3}s exceeds 10/s"
        );
        samples += 1;
        async move { count == 20 }
    })
    .await;
    assert!(samples > 1);
    assert!(started.elapsed() >= Duration::from_millis(1900));
}

#[tokio::test]
async fn redis_hot_warms_another_instance_without_the_origin() {
    let redis = RedisServer::start().await;
    let origin = site().await;
    let cfg = format!(
        "[upstream.health]\nenabled = false\n\n[cache.redis]\nurls = [\"{}\"]\ntimeout = \"1s\"\n\n[warming]\nredis_hot = 10\n",
        redis.url()
    );
    let a = Strata::start(&[origin.addr], &cfg).await;
    warmed(&a).await;
    let c = Client::new();
    // Traffic on A: sampled one hit in 64 into the popularity set.
    for (path, hits) in [("/hot/1", 200), ("/hot/2", 140)] {
        let url = a.url(path);
        assert!(c
            .get_with(&url, &[("host", "fleet.example")])
            .await
            .cache_status()
            .contains("stored"));
        for _ in 0..hits {
            c.get_with(&url, &[("host", "fleet.example")]).await;
        }
    }
    a.shared.cache.flush(WAIT).await;
    assert_eq!(origin.count(), 2);

    let b = Strata::start(&[origin.addr], &cfg).await;
    let progress = warmed(&b).await;
    assert_eq!(progress["total"], 2, "{progress}");
    assert_eq!(metric(&b, "redis_hot", "stored").await, 2.0);
    for path in ["/hot/1", "/hot/2"] {
        let r = c.get_with(&b.url(path), &[("host", "fleet.example")]).await;
        assert!(
            r.cache_status().contains("hit; detail=memory"),
            "{path} warmed into B's memory: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), 2, "B warmed with zero origin requests");
}

/// Adding `[warming]` by a reload started no warming and said nothing,
/// while `/health` showed an `idle` block that never ran: a warning now
/// says it needs a restart, and `/health` shows no block. After the
/// restart it warms.
#[tokio::test]
async fn warming_added_by_a_reload_says_it_needs_a_restart() {
    let origin = site().await;
    let dir = tempfile::tempdir().unwrap();
    let urls = dir.path().join("warm.txt");
    std::fs::write(&urls, "/a\n").unwrap();
    let path = dir.path().join("strata.toml");
    let base = "[upstream.health]\nenabled = false\n";
    std::fs::write(&path, support::config_text(&[origin.addr], base)).unwrap();
    let strata = Binary::start(&path, &[]).await;
    let health = |admin| async move {
        let r = Client::new().get(&format!("http://{admin}/health")).await;
        assert_eq!(r.status, 200);
        serde_json::from_slice::<Value>(&r.body).unwrap()
    };
    assert!(health(strata.admin).await.get("warming").is_none());

    let with = format!(
        "{base}\n[warming]\nurls_file = \"{}\"\ninterval = \"1s\"\n",
        urls.display()
    );
    std::fs::write(&path, support::config_text(&[origin.addr], &with)).unwrap();
    let reloaded = strata.reload().await;
    assert_eq!(reloaded["message"], "configuration reloaded", "{reloaded}");
    let warned = strata
        .events()
        .iter()
        .filter(|e| {
            e["level"] == "WARN"
                && e["message"] == "[warming] added: takes effect only after a restart"
        })
        .count();
    assert_eq!(warned, 1, "{:?}", strata.lines());
    let h = health(strata.admin).await;
    assert!(h.get("warming").is_none(), "no loop runs for it: {h}");
    let (status, _) = strata.stop().await;
    assert!(status.success());

    let strata = Binary::start(&path, &[]).await;
    wait_until(WAIT, "warming done after the restart", || async {
        health(strata.admin).await["warming"]["state"] == "done"
    })
    .await;
    assert_eq!(page_requests(&origin), ["/a"]);
    let (status, _) = strata.stop().await;
    assert!(status.success());
}

#[tokio::test]
async fn refresh_ahead_keeps_a_hot_entry_hitting_across_its_expiry() {
    let origin = Origin::start(|_req| async move {
        support::origin::reply(
            200,
            &[("cache-control", "max-age=2"), ("etag", "\"e\"")],
            "hot",
        )
    })
    .await;
    let strata = Strata::start(
        &[origin.addr],
        "[upstream.health]\nenabled = false\n\n[cache]\nprefresh = 0.75\nprefresh_min_hits = 3\n",
    )
    .await;
    let c = Client::new();
    let url = strata.url("/hot");
    let stored = Instant::now();
    assert!(c.get(&url).await.cache_status().contains("stored"));
    // Past the first copy's expiry (2 s), short of the refreshed copy's
    // own refresh point (1.5 s after the refresh at ~1.5 s).
    let mut hits = 0;
    while stored.elapsed() < Duration::from_millis(2500) {
        let r = c.get(&url).await;
        assert!(
            r.cache_status().contains("; hit;"),
            "after {:?}: {}",
            stored.elapsed(),
            r.cache_status()
        );
        hits += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(hits > 10);
    // One fetch and at least one refresh ahead. `Date` has one-second
    // resolution and is read as the start of its second (SPEC §6), so each
    // copy arrives up to 1 s old and a second refresh may fall in the window.
    assert!(
        (2..=4).contains(&origin.count()),
        "{} fetches",
        origin.count()
    );
}

/// An `https://` URL is warmed through the TLS listener, so it lands
/// under the `https` key that TLS clients read; it filled the `http` entry
/// and the first TLS client still missed (found by the invalidation
/// probe). An `http://` URL still warms the `http` entry.
///
/// A self-signed certificate marked as a CA (what `openssl req -x509`
/// makes) is trusted too: the listener's own certificates are pinned
/// (the regression probe found WebPKI refusing it, so nothing warmed).
#[tokio::test]
async fn https_urls_warm_the_https_entries() {
    for ca in [false, true] {
        https_urls_warm_with(ca).await;
    }
}

async fn https_urls_warm_with(ca: bool) {
    use strata::cache::key::CacheKey;
    let origin = site().await;
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["secure.example".to_string()]).unwrap();
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let signing = rcgen::KeyPair::generate().unwrap();
    let issued = params.self_signed(&signing).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&cert, issued.pem()).unwrap();
    std::fs::write(&key, signing.serialize_pem()).unwrap();
    let file = dir.path().join("warm.txt");
    std::fs::write(
        &file,
        "https://secure.example/tls/1\nhttp://secure.example/plain/1\n",
    )
    .unwrap();
    let strata = Strata::start(
        &[origin.addr],
        &format!(
            "[upstream.health]\nenabled = false\n\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n[warming]\nurls_file = \"{}\"\n",
            cert.display(),
            key.display(),
            file.display(),
        ),
    )
    .await;
    let progress = warmed(&strata).await;
    assert_eq!(progress["errors"], 0, "CA: {ca}: {progress}");
    let stored = |https: bool, path: &str| {
        let key = CacheKey::new(https, "secure.example", path);
        strata.shared.cache.memory().get_key(&key).is_some()
    };
    assert!(stored(true, "/tls/1"));
    assert!(!stored(false, "/tls/1"));
    assert!(stored(false, "/plain/1"));
    let seen = origin.seen();
    let tls = seen.iter().find(|s| s.path == "/tls/1").expect("warmed");
    assert_eq!(tls.headers["x-forwarded-proto"], "https");
}

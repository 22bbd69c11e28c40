//! Watching Strata: `[admin] read_token` on the read endpoints, the
//! recent-activity list (purges, reloads), `/events` (Server-Sent Events
//! snapshots) and the metrics behind the dashboard.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use strata::activity::Kind;
use support::binary::Binary;
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
    for path in ["/metrics", "/stats", "/dashboard", "/cache"] {
        let url = s.admin_url(path);
        let none = c.get(&url).await;
        assert_eq!(none.status, 401, "{path} without a token");
        let challenges: Vec<_> = none.headers.get_all("www-authenticate").iter().collect();
        assert_eq!(
            challenges,
            [
                "Bearer realm=\"strata-admin\"",
                "Basic realm=\"strata-admin\", charset=\"UTF-8\""
            ]
        );
        // "Basic " + base64("any:readerx"), then base64("reader") without a user.
        for wrong in [
            "Bearer readerx",
            "Bearer reade",
            "Bearer ",
            "Basic reader",
            "Basic YW55OnJlYWRlcng=",
            "Basic cmVhZGVy",
        ] {
            let r = c.get_with(&url, &[("authorization", wrong)]).await;
            assert_eq!(r.status, 401, "{path} with {wrong:?}");
        }
        // base64("any:reader"), base64(":secret").
        for good in [
            "Bearer reader",
            "Bearer secret",
            "bearer  reader ",
            "Basic YW55OnJlYWRlcg==",
            "Basic OnNlY3JldA==",
        ] {
            let r = c.get_with(&url, &[("authorization", good)]).await;
            // Past the guard, `/cache` without `?url=` is a bad request.
            let want = if path == "/cache" { 400 } else { 200 };
            assert_eq!(r.status, want, "{path} with {good:?}");
        }
    }
    // /events is a stream: its head is enough here.
    let events = |auth: Option<&'static str>| {
        let c = c.clone();
        let url = s.admin_url("/events");
        async move {
            let mut req = http::Request::get(url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let req = req.body(Full::new(Bytes::new())).unwrap();
            c.start(req).await.status().as_u16()
        }
    };
    assert_eq!(events(None).await, 401);
    assert_eq!(events(Some("Bearer reader")).await, 200);
    assert_eq!(events(Some("Bearer secret")).await, 200);

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
    for path in ["/metrics", "/stats", "/dashboard", "/health"] {
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

/// Reads `/events` until `n` snapshots have arrived (bounded); `between`
/// runs after each one.
async fn snapshots(
    c: &Client,
    url: &str,
    n: usize,
    mut between: impl FnMut(usize),
) -> (http::HeaderMap, Vec<Value>) {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.start(req).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("snapshots within 30 s")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(json) = line.strip_prefix("data: ") {
                    out.push(serde_json::from_str(json).expect("snapshot JSON"));
                    between(out.len());
                } else {
                    assert!(line.starts_with("retry: ") || line.is_empty(), "{line}");
                }
            }
        }
    }
    (headers, out)
}

#[tokio::test]
async fn events_stream_snapshots_whose_counters_move() {
    let origin = cacheable_origin().await;
    let s = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}[[rules]]\nmatch = \"/assets/**\"\ncache_control = \"public, max-age=600\"\n"),
    )
    .await;
    let c = Client::new();
    // Traffic between snapshots: a miss then hits, on and on.
    let traffic = {
        let (c, url) = (c.clone(), s.url("/assets/app.js"));
        tokio::spawn(async move {
            for _ in 0..2000 {
                c.get(&url).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (headers, snaps) = snapshots(&c, &s.admin_url("/events"), 4, |_| {}).await;
    traffic.abort();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-store");

    let requests: Vec<u64> = snaps
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .collect();
    assert!(
        requests.windows(2).all(|w| w[1] > w[0]),
        "requests move: {requests:?}"
    );
    let at: Vec<u64> = snaps.iter().map(|s| s["at_ms"].as_u64().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[1] > w[0]), "{at:?}");
    let last = &snaps[3];
    assert!(last["requests_per_s"].as_f64().unwrap() > 0.0, "{last}");
    let ratio = last["hit_ratio"].as_f64().unwrap();
    assert!(ratio > 0.5 && ratio <= 1.0, "{last}");
    assert!(last["byte_hit_ratio"].as_f64().unwrap() > 0.5, "{last}");
    assert!(last["outcomes"]["hit"]["requests"].as_u64().unwrap() > 10);
    assert_eq!(last["outcomes"]["miss"]["requests"], 1);
    assert!(last["outcomes"]["hit"]["bytes"].as_u64().unwrap() > 0);
    assert!(last["tiers"]["memory"]["hits"].as_u64().unwrap() > 10);
    assert!(last["latency_ms"]["hit"]["p50"].as_f64().unwrap() > 0.0);
    assert_eq!(last["rules"][0]["rule"], "/assets/**");
    assert!(last["rules"][0]["hits"].as_u64().unwrap() > 10);
    assert_eq!(last["upstreams"][0]["server"], origin.addr.to_string());
    assert_eq!(last["upstreams"][0]["responses"], 1);
    assert_eq!(last["redis"], Value::Null);
    assert!(last["memory"]["entries"].as_u64().unwrap() >= 1);
    assert!(last["process"]["resident_bytes"].as_f64().unwrap() > 0.0);
    assert!(last["activity"].as_array().unwrap().is_empty());
}

/// The first snapshot has no window yet (`window_s` 0): its windowed
/// figures are `null`, not the totals since start (it had shown the
/// lifetime hit ratio and latencies as "the last 10 s" for one second).
#[tokio::test]
async fn the_first_snapshot_has_an_empty_window() {
    let origin = cacheable_origin().await;
    let s = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}[[rules]]\nmatch = \"/assets/**\"\ncache_control = \"public, max-age=600\"\n"),
    )
    .await;
    let c = Client::new();
    // Past traffic, before anyone watches: one miss, three hits.
    for _ in 0..4 {
        assert_eq!(c.get(&s.url("/assets/app.js")).await.status, 200);
    }
    let (_, snaps) = snapshots(&c, &s.admin_url("/events"), 2, |_| {}).await;
    let first = &snaps[0];
    assert_eq!(first["window_s"], 0.0, "{first}");
    // Totals since start are there...
    assert_eq!(first["requests"], 4, "{first}");
    assert_eq!(first["outcomes"]["hit"]["requests"], 3, "{first}");
    assert_eq!(first["tiers"]["memory"]["hits"], 3, "{first}");
    assert_eq!(first["rules"][0]["hits"], 3, "{first}");
    assert_eq!(first["rules"][0]["misses"], 1, "{first}");
    // ...but nothing happened in an empty window.
    for snap in &snaps {
        for field in [
            "/hit_ratio",
            "/byte_hit_ratio",
            "/tiers/memory/ratio",
            "/tiers/redis/ratio",
            "/rules/0/hit_ratio",
            "/latency_ms/hit/p50",
            "/latency_ms/hit/p99",
            "/latency_ms/miss/p50",
            "/latency_ms/miss/p99",
        ] {
            assert_eq!(snap.pointer(field), Some(&Value::Null), "{field}: {snap}");
        }
    }
    assert!(snaps[1]["window_s"].as_f64().unwrap() > 0.0, "{}", snaps[1]);
}

#[tokio::test]
async fn every_subscriber_gets_the_same_snapshot_each_second() {
    let origin = cacheable_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let url = s.admin_url("/events");
    let (a, b) = tokio::join!(
        snapshots(&c, &url, 3, |_| {}),
        snapshots(&c, &url, 3, |_| {})
    );
    // Computed once, published to both: identical snapshots (same
    // instant), whichever subscriber started the producer.
    let by_time = |snaps: &[Value]| -> HashMap<u64, String> {
        snaps
            .iter()
            .map(|s| (s["at_ms"].as_u64().unwrap(), s.to_string()))
            .collect()
    };
    let (a, b) = (by_time(&a.1), by_time(&b.1));
    let shared: Vec<_> = a.keys().filter(|t| b.contains_key(t)).collect();
    assert!(shared.len() >= 2, "{a:?} / {b:?}");
    for t in shared {
        assert_eq!(a[t], b[t]);
    }
}

/// Every family is exported from the start, before its first event.
#[tokio::test]
async fn every_metric_family_is_exported_at_zero_from_the_start() {
    let origin = cacheable_origin().await;
    let s = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}[[rules]]\nmatch = \"/a/**\"\ncache_control = \"max-age=1\"\n"),
    )
    .await;
    let text = Client::new().get(&s.admin_url("/metrics")).await.text();
    let server = origin.addr.to_string();
    let version = env!("CARGO_PKG_VERSION");
    let mut want = vec![
        format!("strata_build_info{{version=\"{version}\"}} 1"),
        format!("strata_upstream_requests_total{{server=\"{server}\",status=\"200\"}} 0"),
        format!("strata_upstream_errors_total{{kind=\"connect\",server=\"{server}\"}} 0"),
        format!("strata_upstream_duration_seconds_count{{server=\"{server}\"}} 0"),
        format!("strata_upstream_healthy{{server=\"{server}\"}} 1"),
        "strata_config_reloads_total{result=\"ok\"} 0".to_string(),
        "strata_config_reloads_total{result=\"error\"} 0".to_string(),
        "strata_rule_requests_total{result=\"hit\",rule=\"/a/**\"} 0".to_string(),
        "strata_cache_hits_total{tier=\"redis\"} 0".to_string(),
        "strata_requests_total{outcome=\"hit\",status=\"200\"} 0".to_string(),
        "strata_request_duration_seconds_count{outcome=\"miss\"} 0".to_string(),
        "strata_cache_bytes{tier=\"memory\"} 0".to_string(),
        "strata_redis_errors_total 0".to_string(),
        "strata_redis_breaker_open 0".to_string(),
        "strata_redis_dropped_writes_total 0".to_string(),
        "strata_redis_breaker_opens_total 0".to_string(),
        "strata_collapsed_total 0".to_string(),
    ];
    for cause in ["api", "unsafe_method", "cascade"] {
        want.push(format!("strata_purged_total{{cause=\"{cause}\"}} 0"));
    }
    for source in ["urls_file", "sitemap", "redis_hot"] {
        for result in ["stored", "hit", "uncached", "error"] {
            want.push(format!(
                "strata_warm_requests_total{{result=\"{result}\",source=\"{source}\"}} 0"
            ));
        }
    }
    for outcome in ["hit", "stale", "revalidated", "miss", "bypass", "error"] {
        want.push(format!(
            "strata_response_bytes_total{{outcome=\"{outcome}\"}} 0"
        ));
    }
    for line in &want {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "missing {family} in:\n{text}"
        );
    }
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss > 1e6, "{rss}");
}

#[tokio::test]
async fn response_bytes_count_hits_and_misses_bodies() {
    let body = "0123456789".repeat(100);
    let origin = Origin::start(move |_req| {
        let body = body.clone();
        async move { reply(200, &[("cache-control", "public, max-age=60")], body) }
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    assert!(c.get(&s.url("/k")).await.cache_status().contains("miss"));
    assert!(c.get(&s.url("/k")).await.cache_status().contains("hit"));
    let head = c.send(Method::HEAD, &s.url("/k"), &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    let text = c.get(&s.admin_url("/metrics")).await.text();
    for line in [
        "strata_response_bytes_total{outcome=\"miss\"} 1000",
        // The GET hit; the HEAD hit sends no body.
        "strata_response_bytes_total{outcome=\"hit\"} 1000",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
}

/// A SIGTERM while dashboards watch: the streams end and the drain does
/// not wait for its timeout (120 s here, beyond `stop`'s 40 s bound).
#[tokio::test]
async fn sigterm_ends_event_streams_and_reloads_are_listed() {
    let origin = cacheable_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let config = support::config_text(&[origin.addr], "[upstream.health]\nenabled = false\n")
        .replace("[server]\n", "[server]\ndrain_timeout = \"120s\"\n");
    std::fs::write(&path, &config).unwrap();
    let bin = Binary::start(&path, &[]).await;
    assert_eq!(bin.reload().await["message"], "configuration reloaded");
    let c = Client::new();
    let url = format!("http://{}/events", bin.admin);
    let (_, snaps) = snapshots(&c, &url, 1, |_| {}).await;
    let activity = &snaps[0]["activity"][0];
    assert_eq!(activity["kind"], "reload");
    assert!(activity["message"]
        .as_str()
        .unwrap()
        .starts_with("configuration reloaded from "));

    let req = http::Request::get(&url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = c.start(req).await.into_body();
    let stopping = tokio::spawn(bin.stop());
    // The stream ends (cleanly or cut) instead of running on.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived the shutdown");
    let (status, _) = stopping.await.unwrap();
    assert!(status.success(), "{status}");
}

/// An origin that answers `application/json` for paths ending `.json` and
/// `text/plain` otherwise, storable for a minute.
async fn typed_origin() -> Origin {
    Origin::start(|req| async move {
        let path = req.uri().path();
        let media = if path.ends_with(".json") {
            "application/json"
        } else {
            "text/plain"
        };
        reply(
            200,
            &[("cache-control", "max-age=60"), ("content-type", media)],
            format!("page {path}"),
        )
    })
    .await
}

/// The `strata_rule_requests_total` line of `rule` and `result`.
fn rule_line(rule: &str, result: &str, n: u64) -> String {
    format!("strata_rule_requests_total{{result=\"{result}\",rule=\"{rule}\"}} {n}")
}

/// SPEC §7: a rule whose `content_type` does not match the response does
/// not apply, and the next matching rule does; the request counts under
/// that one (it had counted under the first glob that matched).
#[tokio::test]
async fn rule_requests_count_under_the_rule_whose_content_type_applied() {
    let origin = typed_origin().await;
    let s = Strata::start(
        &[origin.addr],
        &format!(
            "{NO_HEALTH}[[rules]]\nmatch = \"/api/**\"\ncontent_type = [\"application/json\"]\n\
             cache_control = \"public, max-age=10\"\n\n\
             [[rules]]\nmatch = \"/**\"\ncache_control = \"public, max-age=20\"\n"
        ),
    )
    .await;
    let c = Client::new();
    // text/plain: the second rule applies (its lifetime); a miss, two hits.
    for i in 0..3 {
        let r = c.get(&s.url("/api/z")).await;
        assert_eq!(r.header("cache-control"), Some("public, max-age=20"));
        assert_eq!(r.is_hit(), i > 0, "{}", r.cache_status());
    }
    // application/json: the first rule applies; a miss, one hit.
    for i in 0..2 {
        let r = c.get(&s.url("/api/a.json")).await;
        assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
        assert_eq!(r.is_hit(), i > 0, "{}", r.cache_status());
    }
    let text = c.get(&s.admin_url("/metrics")).await.text();
    for want in [
        rule_line("/**", "hit", 2),
        rule_line("/**", "miss", 1),
        rule_line("/api/**", "hit", 1),
        rule_line("/api/**", "miss", 1),
    ] {
        assert!(text.contains(&want), "{want} in\n{text}");
    }
    let (_, snaps) = snapshots(&c, &s.admin_url("/events"), 1, |_| {}).await;
    let rules = &snaps[0]["rules"];
    assert_eq!(rules[0]["rule"], "/api/**", "{rules}");
    assert_eq!(
        (&rules[0]["hits"], &rules[0]["misses"]),
        (&1.into(), &1.into())
    );
    assert_eq!(rules[1]["rule"], "/**", "{rules}");
    assert_eq!(
        (&rules[1]["hits"], &rules[1]["misses"]),
        (&2.into(), &1.into())
    );
}

/// A rule's `hit` and `miss` count as `strata_requests_total`'s outcomes
/// do (README, "Hit ratio: the one formula"): an origin-phase `429` is an
/// `error`, in neither (it had counted as the rule's miss), and a stale
/// copy served because the upstream answered `500` is `stale`, a hit (it
/// had counted as a miss).
#[tokio::test]
async fn rule_requests_leave_out_errors_and_count_stale_as_hits() {
    let origin = Origin::start(|req| async move {
        if req.uri().path() == "/s/x" && req.headers().contains_key("if-none-match") {
            return reply(500, &[], "down");
        }
        // Age 5 > max-age 1: stored already stale.
        let cc = [
            ("cache-control", "max-age=1, stale-if-error=600"),
            ("age", "5"),
            ("etag", "\"e\""),
        ];
        reply(200, &cc, format!("page {}", req.uri().path()))
    })
    .await;
    let s = Strata::start(
        &[origin.addr],
        &format!(
            "{NO_HEALTH}[[rules]]\nmatch = \"/o/**\"\n\n[[rules]]\nmatch = \"/s/**\"\n\n\
             [[rate_limits]]\nname = \"orig\"\nmatch = \"/o/**\"\nrate = \"1/m\"\nburst = 1\n\
             count = \"origin\"\n"
        ),
    )
    .await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/o/1")).await.status, 200);
    for path in ["/o/2", "/o/3"] {
        assert_eq!(c.get(&s.url(path)).await.status, 429, "{path}");
    }
    assert_eq!(c.get(&s.url("/s/x")).await.status, 200);
    let r = c.get(&s.url("/s/x")).await;
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    let text = c.get(&s.admin_url("/metrics")).await.text();
    for want in [
        rule_line("/o/**", "hit", 0),
        rule_line("/o/**", "miss", 1),
        rule_line("/s/**", "hit", 1),
        rule_line("/s/**", "miss", 1),
    ] {
        assert!(text.contains(&want), "{want} in\n{text}");
    }
    // A soft-purged copy served stale is the rule's hit too (it was not
    // counted at all).
    let (status, _) = s.purge(r#"{"url": "/s/x", "soft": true}"#).await;
    assert_eq!(status, 200);
    let r = c.get(&s.url("/s/x")).await;
    assert!(
        r.cache_status().contains("detail=soft-purge"),
        "{}",
        r.cache_status()
    );
    let text = c.get(&s.admin_url("/metrics")).await.text();
    let want = rule_line("/s/**", "hit", 2);
    assert!(text.contains(&want), "{want} in\n{text}");
}

/// Rules sharing a glob (different `content_type`, SPEC §7's pattern) each
/// have their own series: the glob for the first, `"<glob> #<index>"` for
/// a repeat, in `/metrics` and `/events` alike (they had shared one series,
/// listed twice in `/events`).
#[tokio::test]
async fn rules_sharing_a_glob_count_apart_under_their_index() {
    let origin = typed_origin().await;
    let s = Strata::start(
        &[origin.addr],
        &format!(
            "{NO_HEALTH}[[rules]]\nmatch = \"/api/**\"\ncontent_type = [\"application/json\"]\n\
             cache_control = \"public, max-age=10\"\n\n\
             [[rules]]\nmatch = \"/api/**\"\ncache_control = \"public, max-age=20\"\n\n\
             [[rules]]\nmatch = \"/other\"\ncache_control = \"public, max-age=30\"\n\n\
             [[rules]]\nmatch = \"/api/**\"\nmethods = [\"HEAD\"]\n"
        ),
    )
    .await;
    let c = Client::new();
    for i in 0..2 {
        let r = c.get(&s.url("/api/x")).await;
        assert_eq!(r.header("cache-control"), Some("public, max-age=20"));
        assert_eq!(r.is_hit(), i > 0, "{}", r.cache_status());
    }
    let text = c.get(&s.admin_url("/metrics")).await.text();
    for want in [
        rule_line("/api/**", "hit", 0),
        rule_line("/api/**", "miss", 0),
        rule_line("/api/** #1", "hit", 1),
        rule_line("/api/** #1", "miss", 1),
        rule_line("/other", "miss", 0),
        rule_line("/api/** #3", "miss", 0),
    ] {
        assert!(text.contains(&want), "{want} in\n{text}");
    }
    let (_, snaps) = snapshots(&c, &s.admin_url("/events"), 1, |_| {}).await;
    let rules: Vec<(String, u64, u64)> = snaps[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                r["rule"].as_str().unwrap().to_string(),
                n("hits"),
                n("misses"),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("/api/**".to_string(), 0, 0),
            ("/api/** #1".to_string(), 1, 1),
            ("/other".to_string(), 0, 0),
            ("/api/** #3".to_string(), 0, 0),
        ]
    );
}

/// Each open `/events` stream holds an admin connection slot: with
/// `admin.max_connections = 3`, three dashboard tabs made `/health` and
/// `strata healthcheck` time out (found by the ops probe). Streams are
/// capped at half the slots; one more is `503` with `Retry-After`, and
/// `/health` still answers. A closed stream frees its place.
#[tokio::test]
async fn event_streams_leave_admin_slots_for_health() {
    let origin = cacheable_origin().await;
    let text = support::config_text(&[origin.addr], NO_HEALTH).replace(
        "token = \"secret\"\n",
        "token = \"secret\"\nmax_connections = 4\n",
    );
    let s = Strata::start_text(&text).await;
    let c = Client::new();
    let url = s.admin_url("/events");
    let open = || {
        let req = http::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.start(req)
    };
    let first = open().await;
    let second = open().await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let refused = c.get(&url).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(c.get(&s.admin_url("/health")).await.status, 200);
    drop(first);
    support::wait_until(
        Duration::from_secs(10),
        "a closed stream's place",
        || async {
            let again = open().await;
            again.status() == 200
        },
    )
    .await;
    drop(second);
}

/// An `/events` stream opened with a read token that a reload rotates away
/// ends at its next snapshot (it kept streaming to a holder of the old
/// token); one opened with the admin token, still valid, goes on (found by
/// the observability probe).
#[tokio::test]
async fn a_rotated_read_token_ends_the_streams_it_opened() {
    let origin = cacheable_origin().await;
    let text = with_read_token(origin.addr);
    let s = Strata::start_text(&text).await;
    let c = Client::new();
    let open = |token: &str| {
        let req = http::Request::get(s.admin_url("/events"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.start(req)
    };
    let old = open("reader").await;
    let admin = open("secret").await;
    assert_eq!(
        (old.status(), admin.status()),
        (http::StatusCode::OK, http::StatusCode::OK)
    );
    let rotated = text.replace("read_token = \"reader\"", "read_token = \"rotated\"");
    s.shared
        .reload(strata::config::Config::parse(std::path::Path::new("t.toml"), &rotated).unwrap());
    // The old token's stream ends: every frame until the end, bounded.
    let mut old = old.into_body();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = old.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of the rotated token still runs");
    // The admin token's stream carries snapshots on.
    let mut admin = admin.into_body();
    let mut data = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while data.matches("data: ").count() < 2 {
            let frame = admin.frame().await.expect("open").expect("frame");
            if let Ok(d) = frame.into_data() {
                data.push_str(std::str::from_utf8(&d).unwrap());
            }
        }
    })
    .await
    .expect("snapshots on the admin token's stream");
    assert_eq!(open("reader").await.status(), 401);
}

//! Rate limits end to end (SPEC §8): a burst then 429 with Retry-After
//! and no upstream request, per-key budgets, the client IP behind trusted
//! proxies, `count = "origin"` never charging hits (nor keeping the arrival
//! charges of what it refuses), dry runs counted, and
//! `backend = "redis"` sharing one budget across instances and falling
//! back to local limits when Redis dies.

mod support;

use std::time::Duration;

use support::origin::reply;
use support::redis::RedisServer;
use support::{wait_until, Client, Origin, Strata};

async fn uncached() -> Origin {
    Origin::start(|_req| async move { reply(200, &[("cache-control", "no-store")], "ok") }).await
}

#[tokio::test]
async fn burst_then_429_without_upstream_request() {
    let origin = uncached().await;
    let strata = Strata::start(
        &[origin.addr],
        "[[rate_limits]]\nname = \"api\"\nmatch = \"/api/**\"\nrate = \"1/m\"\nburst = 3\n\
         [[rate_limits]]\nname = \"unused\"\nmatch = \"/nothing/**\"\nrate = \"1/s\"\n",
    )
    .await;
    let client = Client::new();
    for _ in 0..3 {
        assert_eq!(client.get(&strata.url("/api/x")).await.status, 200);
    }
    let over = client.get(&strata.url("/api/x")).await;
    assert_eq!(over.status, 429);
    let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(origin.count(), 3, "a limited request reached the upstream");
    // Other paths are not limited.
    assert_eq!(client.get(&strata.url("/public")).await.status, 200);

    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("strata_rate_limited_total{name=\"api\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_rate_limited_total{name=\"unused\"} 0"),
        "exported at zero"
    );
}

/// RFC 9110 §10.2.3: `Retry-After` is when a follow-up may succeed, so
/// over two limits it is the longer wait, whichever refused first (it was
/// the first limit's second, and a client that waited as told was refused
/// again for an hour). Local, shared and mixed budgets alike.
async fn two_limits_retry_after(strata: &Strata) {
    let client = Client::new();
    assert_eq!(client.get(&strata.url("/z/a")).await.status, 200);
    let over = client.get(&strata.url("/z/a")).await;
    assert_eq!(over.status, 429);
    let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("strata_rate_limited_total{name=\"fast\"} 1"),
        "the first limit over counts it: {metrics}"
    );
}

const FAST_THEN_SLOW: &str =
    "[[rate_limits]]\nname = \"fast\"\nmatch = \"/z/**\"\nrate = \"1/s\"\nburst = 1\n\
     [[rate_limits]]\nname = \"slow\"\nmatch = \"/z/**\"\nrate = \"1/h\"\nburst = 1\n";

#[tokio::test]
async fn retry_after_is_the_longest_wait_of_the_limits_over() {
    let origin = uncached().await;
    two_limits_retry_after(&Strata::start(&[origin.addr], FAST_THEN_SLOW).await).await;
    let redis = RedisServer::start().await;
    two_limits_retry_after(&with_redis_budgets(&redis, &origin, FAST_THEN_SLOW).await).await;
    // The first shared, the second local: the local one is looked at too.
    let redis = RedisServer::start().await;
    let mixed = FAST_THEN_SLOW.replacen("burst = 1", "backend = \"redis\"\nburst = 1", 1);
    two_limits_retry_after(&with_redis(&redis, &origin, &mixed).await).await;
}

#[tokio::test]
async fn keys_have_their_own_budgets() {
    let origin = uncached().await;
    let strata = Strata::start(
        &[origin.addr],
        "[[rate_limits]]\nname = \"per-key\"\nkey = \"header:x-api-key\"\nrate = \"1/h\"\nburst = 2\n",
    )
    .await;
    let client = Client::new();
    let get = |key: &'static str| {
        let client = client.clone();
        let url = strata.url("/k");
        async move { client.get_with(&url, &[("x-api-key", key)]).await.status }
    };
    assert_eq!(get("alice").await, 200);
    assert_eq!(get("alice").await, 200);
    assert_eq!(get("alice").await, 429);
    assert_eq!(get("bob").await, 200);
    assert_eq!(get("bob").await, 200);
    assert_eq!(get("bob").await, 429);
    // Without the key the limit does not apply.
    assert_eq!(client.get(&strata.url("/k")).await.status, 200);
}

#[tokio::test]
async fn client_ip_comes_from_trusted_proxies() {
    let origin = uncached().await;
    let text = support::config_text(
        &[origin.addr],
        "[[rate_limits]]\nname = \"ip\"\nrate = \"1/h\"\nburst = 1\n",
    )
    .replace(
        "listen = \"127.0.0.1:0\"\n\n[admin]",
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n[admin]",
    );
    assert!(text.contains("trusted_proxies"));
    let strata = Strata::start_text(&text).await;
    let client = Client::new();
    let from = |ip: &'static str| {
        let client = client.clone();
        let url = strata.url("/ip");
        async move {
            let xff = format!("6.6.6.6, {ip}");
            client
                .get_with(&url, &[("x-forwarded-for", xff.as_str())])
                .await
                .status
        }
    };
    assert_eq!(from("1.1.1.1").await, 200);
    assert_eq!(from("1.1.1.1").await, 429);
    assert_eq!(from("2.2.2.2").await, 200);
}

#[tokio::test]
async fn origin_count_never_limits_hits() {
    let origin =
        Origin::start(|_req| async move { reply(200, &[("cache-control", "max-age=60")], "doc") })
            .await;
    let strata = Strata::start(
        &[origin.addr],
        "[[rate_limits]]\nname = \"origin\"\nrate = \"1/h\"\nburst = 1\ncount = \"origin\"\n",
    )
    .await;
    let client = Client::new();
    assert_eq!(client.get(&strata.url("/doc")).await.status, 200);
    for _ in 0..20 {
        let r = client.get(&strata.url("/doc")).await;
        assert_eq!(r.status, 200, "a hit was limited");
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    }
    // A second miss is charged and over the budget.
    let r = client.get(&strata.url("/other")).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // It never went forward: not `fwd=miss` (rate-limit probe).
    assert_eq!(r.cache_status(), "strata; fwd=bypass");
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn dry_run_only_counts() {
    let origin = uncached().await;
    let strata = Strata::start(
        &[origin.addr],
        "[[rate_limits]]\nname = \"dry\"\nrate = \"1/h\"\nburst = 1\ndry_run = true\n",
    )
    .await;
    let client = Client::new();
    for _ in 0..5 {
        assert_eq!(client.get(&strata.url("/d")).await.status, 200);
    }
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("strata_rate_limited_total{name=\"dry\"} 4"),
        "{metrics}"
    );
}

/// A site-wide limit listed before a tighter one on `/api/**`: the
/// requests `api` refuses are charged to neither `site` nor the dry-run
/// `watch` (nginx's `limit_req` commits its zones only once all accepted),
/// so the client's site budget is intact and `/other` goes through.
const SITE_THEN_API: &str = "[[rate_limits]]\nname = \"site\"\nmatch = \"/**\"\nrate = \"1/m\"\nburst = 10\n\
     [[rate_limits]]\nname = \"watch\"\nmatch = \"/**\"\nrate = \"1/m\"\nburst = 2\ndry_run = true\n\
     [[rate_limits]]\nname = \"api\"\nmatch = \"/api/**\"\nrate = \"1/m\"\nburst = 1\n";

/// Twelve `/api/x` then `/other` (see [`SITE_THEN_API`]); the metrics text.
async fn refused_then_other(client: &Client, strata: &Strata) -> String {
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(client.get(&strata.url("/api/x")).await.status.as_u16());
    }
    let mut expected = vec![429; 12];
    expected[0] = 200;
    assert_eq!(statuses, expected);
    assert_eq!(
        client.get(&strata.url("/other")).await.status,
        200,
        "requests refused by `api` used up the site budget"
    );
    client.get(&strata.admin_url("/metrics")).await.text()
}

fn assert_counted(metrics: &str, name: &str, n: u64) {
    let line = format!("strata_rate_limited_total{{name=\"{name}\"}} {n}\n");
    assert!(metrics.contains(&line), "want {line}in {metrics}");
}

#[tokio::test]
async fn a_refused_request_is_charged_to_no_limit() {
    let origin = uncached().await;
    let strata = Strata::start(&[origin.addr], SITE_THEN_API).await;
    let client = Client::new();
    let metrics = refused_then_other(&client, &strata).await;
    assert_eq!(origin.count(), 2);
    assert_counted(&metrics, "api", 11);
    assert_counted(&metrics, "site", 0);
    assert_counted(&metrics, "watch", 0);
}

/// Strata in front of `origin` with `limits` kept in `redis`
/// (`backend = "redis"` on each), once it is connected to Redis.
async fn with_redis_budgets(redis: &RedisServer, origin: &Origin, limits: &str) -> Strata {
    let limits = limits.replace("burst = ", "backend = \"redis\"\nburst = ");
    with_redis(redis, origin, &limits).await
}

/// Strata in front of `origin` with `limits` as written and `redis` as its
/// Redis, once it is connected to Redis.
async fn with_redis(redis: &RedisServer, origin: &Origin, limits: &str) -> Strata {
    let config = format!(
        "[cache.redis]\nurls = [\"{}\"]\ntimeout = \"1s\"\n{limits}",
        redis.url()
    );
    let strata = Strata::start(&[origin.addr], &config).await;
    let client = Client::new();
    wait_until(Duration::from_secs(10), "connected to Redis", || async {
        connected(&client, &strata).await
    })
    .await;
    strata
}

#[tokio::test]
async fn a_refused_request_is_charged_to_no_shared_budget() {
    let redis = RedisServer::start().await;
    let origin = uncached().await;
    let strata = with_redis_budgets(&redis, &origin, SITE_THEN_API).await;
    let client = Client::new();
    let metrics = refused_then_other(&client, &strata).await;
    assert_eq!(origin.count(), 2);
    assert_counted(&metrics, "api", 11);
    assert_counted(&metrics, "site", 0);
    assert_counted(&metrics, "watch", 0);
    assert!(
        metrics.contains("strata_redis_errors_total 0"),
        "the budgets were Redis's, not the local fallback"
    );
}

/// A Redis-backed limit whose rate or burst changed (a reload, or an
/// instance running the new config) starts every client's budget afresh,
/// as a local one does (README "Reload"); the same limit on another
/// instance still shares the budget. Before, the stored arrival time was
/// judged against the new, smaller window: a limit loosened from 1/m to
/// 100/s kept a refused client out for a minute (rate-limit probe).
#[tokio::test]
async fn a_changed_shared_limit_starts_every_budget_afresh() {
    let redis = RedisServer::start().await;
    let origin = uncached().await;
    let limit = |rate: &str, burst: u32| {
        format!("[[rate_limits]]\nname = \"shared\"\nrate = \"{rate}\"\nburst = {burst}\n")
    };
    let strict = with_redis_budgets(&redis, &origin, &limit("1/m", 2)).await;
    let same = with_redis_budgets(&redis, &origin, &limit("1/m", 2)).await;
    let loosened = with_redis_budgets(&redis, &origin, &limit("100/s", 100)).await;
    let client = Client::new();
    for _ in 0..2 {
        assert_eq!(client.get(&strict.url("/a")).await.status, 200);
    }
    assert_eq!(client.get(&strict.url("/a")).await.status, 429);
    assert_eq!(
        client.get(&same.url("/a")).await.status,
        429,
        "one budget for the fleet"
    );
    let r = client.get(&loosened.url("/a")).await;
    assert_eq!(r.status, 200, "retry-after {:?}", r.header("retry-after"));
    assert_eq!(origin.count(), 3);
}

/// A site-wide limit (5) and a tighter one on `/login/**` (2), both kept
/// in Redis.
const SITE_AND_LOGIN: &str =
    "[[rate_limits]]\nname = \"site\"\nmatch = \"/**\"\nrate = \"1/m\"\nburst = 5\n\
     [[rate_limits]]\nname = \"login\"\nmatch = \"/login/**\"\nrate = \"1/m\"\nburst = 2\n";

/// Both Redis-backed limits of a request are checked and charged in one
/// script call, all or none: a request `login` refuses never holds a
/// charge on `site` (which a concurrent request to another path would
/// find used up, and be refused by `site` for). Counted as Redis sees it:
/// one call per request, none to give a charge back.
#[tokio::test]
async fn a_refused_request_holds_no_charge_on_another_shared_budget() {
    let redis = RedisServer::start().await;
    let origin = uncached().await;
    let strata = with_redis_budgets(&redis, &origin, SITE_AND_LOGIN).await;
    let client = Client::new();
    // The first call loads the script.
    assert_eq!(client.get(&strata.url("/login/a")).await.status, 200);
    let before = support::redis::command_calls(redis.port(), "evalsha").await;
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(client.get(&strata.url("/login/a")).await.status.as_u16());
    }
    let mut expected = vec![429; 11];
    expected[0] = 200;
    assert_eq!(statuses, expected);
    let calls = support::redis::command_calls(redis.port(), "evalsha").await - before;
    assert_eq!(
        calls, 11,
        "one script call per request (a refused one charged `site`, then gave it back)"
    );
    // `site` has 5 - 2 left.
    for i in 0..3 {
        assert_eq!(client.get(&strata.url("/o")).await.status, 200, "/o {i}");
    }
    assert_eq!(client.get(&strata.url("/o")).await.status, 429);
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    assert_counted(&metrics, "login", 10);
    assert_counted(&metrics, "site", 1);
    assert!(
        metrics.contains("strata_redis_errors_total 0"),
        "the budgets were Redis's, not the local fallback"
    );
}

/// A local limit refusing what the Redis-backed ones accepted gives their
/// charges back: `site` (Redis) keeps 5 - 2 after ten refused `/login`.
#[tokio::test]
async fn a_local_refusal_gives_back_the_shared_charges() {
    let redis = RedisServer::start().await;
    let origin = uncached().await;
    let limits = SITE_AND_LOGIN.replacen("burst = 5", "backend = \"redis\"\nburst = 5", 1);
    let strata = with_redis(&redis, &origin, &limits).await;
    let client = Client::new();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(client.get(&strata.url("/login/a")).await.status.as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 429]);
    for i in 0..3 {
        assert_eq!(client.get(&strata.url("/o")).await.status, 200, "/o {i}");
    }
    assert_eq!(client.get(&strata.url("/o")).await.status, 429);
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    assert_counted(&metrics, "login", 10);
    assert!(metrics.contains("strata_redis_errors_total 0"), "{metrics}");
}

/// `/c` is cacheable, anything else not.
async fn cached_and_uncached() -> Origin {
    Origin::start(|req| async move {
        let cc = if req.uri().path() == "/c" {
            "max-age=100"
        } else {
            "no-store"
        };
        reply(200, &[("cache-control", cc)], "ok")
    })
    .await
}

/// A site-wide `all` limit (3) and an `orig` limit (1) on what goes
/// upstream, which the first `/c` spends.
const ALL_AND_ORIGIN: &str = "[[rate_limits]]\nname = \"all\"\nmatch = \"/**\"\nrate = \"1/m\"\nburst = 3\n\
     [[rate_limits]]\nname = \"orig\"\nmatch = \"/**\"\nrate = \"1/m\"\nburst = 1\ncount = \"origin\"\n";

/// `/c` (stored, the one `orig` token), five `/u` that `orig` refuses,
/// then two hits of `/c`: the refused `/u` gave their `all` charge back,
/// so the hits are within `all`'s budget. The metrics text.
async fn origin_refusals_then_hits(client: &Client, strata: &Strata) -> String {
    assert_eq!(client.get(&strata.url("/c")).await.status, 200);
    for i in 0..5 {
        let r = client.get(&strata.url("/u")).await;
        assert_eq!(r.status, 429, "/u {i}");
    }
    for i in 0..2 {
        let r = client.get(&strata.url("/c")).await;
        assert_eq!(
            r.status, 200,
            "hit {i}: requests `orig` refused used up `all`"
        );
        assert!(r.is_hit(), "{}", r.cache_status());
    }
    client.get(&strata.admin_url("/metrics")).await.text()
}

#[tokio::test]
async fn an_origin_refusal_is_charged_to_no_arrival_limit() {
    let origin = cached_and_uncached().await;
    let strata = Strata::start(&[origin.addr], ALL_AND_ORIGIN).await;
    let client = Client::new();
    let metrics = origin_refusals_then_hits(&client, &strata).await;
    assert_eq!(origin.count(), 1);
    assert_counted(&metrics, "all", 0);
    assert_counted(&metrics, "orig", 5);
    // Refunds gave back no more than was charged: `/c` and the two hits
    // spent `all`.
    assert_eq!(client.get(&strata.url("/c")).await.status, 429);
}

#[tokio::test]
async fn an_origin_refusal_is_charged_to_no_shared_arrival_budget() {
    let redis = RedisServer::start().await;
    let origin = cached_and_uncached().await;
    let strata = with_redis_budgets(&redis, &origin, ALL_AND_ORIGIN).await;
    let client = Client::new();
    let metrics = origin_refusals_then_hits(&client, &strata).await;
    assert_eq!(origin.count(), 1);
    assert_counted(&metrics, "all", 0);
    assert_counted(&metrics, "orig", 5);
    assert!(
        metrics.contains("strata_redis_errors_total 0"),
        "the budgets were Redis's, not the local fallback"
    );
}

/// A `count = "all"` dry run sees only what the enforced limits of both
/// phases let through: of six `/u`, `orig` lets one through.
#[tokio::test]
async fn an_arrival_dry_run_does_not_count_origin_refusals() {
    let origin = uncached().await;
    let strata = Strata::start(
        &[origin.addr],
        "[[rate_limits]]\nname = \"dry\"\nmatch = \"/**\"\nrate = \"1/m\"\nburst = 2\ndry_run = true\n\
         [[rate_limits]]\nname = \"orig\"\nmatch = \"/**\"\nrate = \"1/m\"\nburst = 1\ncount = \"origin\"\n",
    )
    .await;
    let client = Client::new();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(client.get(&strata.url("/u")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429]);
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    assert_counted(&metrics, "dry", 0);
    assert_counted(&metrics, "orig", 5);
    assert_eq!(origin.count(), 1);
}

fn redis_limit(url: &str) -> String {
    format!(
        "[upstream.health]\nenabled = false\n[cache.redis]\nurls = [\"{url}\"]\ntimeout = \"1s\"\n\
         breaker_threshold = 2\nbreaker_backoff = \"30s\"\n\
         [[rate_limits]]\nname = \"fleet\"\nkey = \"global\"\nrate = \"1/h\"\nburst = 4\nbackend = \"redis\"\n"
    )
}

async fn connected(client: &Client, strata: &Strata) -> bool {
    let r = client.get(&strata.admin_url("/health")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["redis"]["connected"] == true
}

#[tokio::test]
async fn redis_backend_shares_one_budget_and_falls_back_locally() {
    let mut redis = RedisServer::start().await;
    let origin = uncached().await;
    let one = Strata::start(&[origin.addr], &redis_limit(&redis.url())).await;
    let two = Strata::start(&[origin.addr], &redis_limit(&redis.url())).await;
    let client = Client::new();
    wait_until(
        Duration::from_secs(10),
        "both instances connected",
        || async { connected(&client, &one).await && connected(&client, &two).await },
    )
    .await;

    // Four requests in all, alternating instances, then both are over.
    for i in 0..4 {
        let s = if i % 2 == 0 { &one } else { &two };
        assert_eq!(client.get(&s.url("/r")).await.status, 200, "request {i}");
    }
    assert_eq!(client.get(&one.url("/r")).await.status, 429);
    assert_eq!(client.get(&two.url("/r")).await.status, 429);
    assert_eq!(origin.count(), 4);

    // Redis dies: every request is still answered (never a 5xx), and the
    // local limiter (a fresh budget of 4 per instance) takes over.
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = tokio::time::timeout(Duration::from_secs(5), client.get(&one.url("/r")))
            .await
            .expect("answered promptly with Redis down");
        statuses.push(r.status.as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429));
}

/// nginx's `merge_slashes`: a limit and a rule on `/api/**` see `//api/x`
/// and `/api//x` as `/api/x` (origins such as Python's `http.server` serve
/// them so), while the cache key and the path sent upstream keep the
/// slashes.
#[tokio::test]
async fn repeated_slashes_do_not_escape_a_limit_or_a_rule() {
    // No Cache-Control from the origin: only the rule makes it storable.
    let origin = Origin::start(|_req| async move { reply(200, &[], "ok") }).await;
    let strata = Strata::start(
        &[origin.addr],
        "[[rules]]\nmatch = \"/api/**\"\ncache_control = \"max-age=60\"\n\
         [[rate_limits]]\nname = \"api\"\nmatch = \"/api/**\"\nrate = \"1/h\"\nburst = 3\n",
    )
    .await;
    let client = Client::new();
    let first = client.get(&strata.url("//api/x")).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("cache-control"),
        Some("max-age=60"),
        "the rule"
    );
    assert_eq!(origin.last().unwrap().path, "//api/x", "forwarded as sent");
    assert!(client.get(&strata.url("//api/x")).await.is_hit());
    let other = client.get(&strata.url("/api//x")).await;
    assert_eq!(other.status, 200);
    assert!(
        !other.is_hit(),
        "a key of its own: {}",
        other.cache_status()
    );
    assert_eq!(
        other.header("cache-control"),
        Some("max-age=60"),
        "the rule"
    );
    assert_eq!(origin.last().unwrap().path, "/api//x");
    // Three requests charged to `api`: the fourth is over.
    assert_eq!(client.get(&strata.url("/api//x")).await.status, 429);
    assert_eq!(client.get(&strata.url("//api/y")).await.status, 429);
    assert_eq!(origin.count(), 2);
}

/// A rate-limit call Redis runs only after its caller gave up on it
/// (Redis stalled past the call's deadline: `timeout` after it was sent,
/// plus as much again for clocks) charges nothing: the local limiter
/// decided those requests, and the fleet budget is not charged twice.
#[tokio::test]
async fn a_call_redis_runs_after_its_deadline_charges_nothing() {
    let redis = RedisServer::start().await;
    let origin = uncached().await;
    let config = format!(
        "[upstream.health]\nenabled = false\n[cache.redis]\nurls = [\"{}\"]\ntimeout = \"100ms\"\n\
         breaker_threshold = 100\n\
         [[rate_limits]]\nname = \"fleet\"\nkey = \"global\"\nrate = \"1/h\"\nburst = 4\nbackend = \"redis\"\n",
        redis.url()
    );
    let strata = Strata::start(&[origin.addr], &config).await;
    let client = Client::new();
    wait_until(Duration::from_secs(10), "connected to Redis", || async {
        connected(&client, &strata).await
    })
    .await;
    // One charge in Redis (and the script loaded).
    assert_eq!(client.get(&strata.url("/r")).await.status, 200);
    {
        let _paused = redis.pause();
        // Redis stalled: the local limiter decides (its own budget of 4).
        for i in 0..3 {
            assert_eq!(
                client.get(&strata.url("/r")).await.status,
                200,
                "stalled {i}"
            );
        }
        // Past every stalled call's deadline (2 × timeout after it was sent).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The stalled calls run now, before the next ones (one connection):
    // the fleet budget still has 4 - 1.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.get(&strata.url("/r")).await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "stalled calls charged Redis too"
    );
}

/// README: "a limited revalidation inside `stale-if-error` serves the
/// stale copy", and such a request is no refusal: it was still counted in
/// `strata_rate_limited_total` (black-box probe). Only a `429` counts.
#[tokio::test]
async fn a_stale_copy_served_instead_of_a_429_is_not_counted_as_refused() {
    let origin = Origin::start(|req| async move {
        let cc = if req.uri().path() == "/o/stale" {
            // Age 5 > max-age 1: stored already stale.
            "max-age=1, stale-if-error=600"
        } else {
            "max-age=1"
        };
        reply(200, &[("cache-control", cc), ("age", "5")], "o")
    })
    .await;
    let strata = Strata::start(
        &[origin.addr],
        "[upstream.health]\nenabled = false\n[cache]\ngrace = \"0s\"\n\
         [[rate_limits]]\nname = \"o\"\nmatch = \"/o/**\"\nrate = \"1/h\"\nburst = 2\ncount = \"origin\"\n",
    )
    .await;
    let client = Client::new();
    for path in ["/o/stale", "/o/plain"] {
        assert_eq!(client.get(&strata.url(path)).await.status, 200, "{path}");
    }
    // The budget is spent: the stale copy stands in for the 429...
    let r = client.get(&strata.url("/o/stale")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    // ...which the other URL gets.
    assert_eq!(client.get(&strata.url("/o/plain")).await.status, 429);
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("strata_rate_limited_total{name=\"o\"} 1"),
        "{metrics}"
    );
    assert_eq!(origin.count(), 2);
}

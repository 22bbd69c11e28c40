//! `GET /cache?url=` (SPEC §7) end to end: the JSON shape (keys, Vary
//! values, encodings and sizes, age, ttl, tags, tiers), 404, 400, the token
//! it needs, and two instances sharing a real redis-server (entries found
//! through Redis, a purge by URL through one instance emptying the other).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::origin::reply;
use support::redis::RedisServer;
use support::{wait_until, Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";
const ADMIN: (&str, &str) = ("authorization", "Bearer secret");
const WAIT: Duration = Duration::from_secs(10);
/// The host both fleet instances are asked for (one key across them).
const HOST: (&str, &str) = ("host", "fleet.example");

#[tokio::test]
async fn cache_inspection_shape_and_404() {
    let body = "x".repeat(4096);
    let origin = Origin::start(move |_req| {
        let body = body.clone();
        async move {
            reply(
                200,
                &[
                    ("cache-control", "max-age=600"),
                    ("content-type", "text/plain"),
                    ("vary", "Accept-Language"),
                    ("surrogate-key", "docs product-7"),
                ],
                body,
            )
        }
    })
    .await;
    let s = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}[compression]\nalgorithms = [\"gzip\"]\n"),
    )
    .await;
    let c = Client::new();
    c.get_with(
        &s.url("/doc"),
        &[("accept-encoding", "gzip"), ("accept-language", "en")],
    )
    .await;
    let url = s.inspect_url("/doc");
    // The encoded representation is added just after the response went out.
    wait_until(WAIT, "the gzip representation stored", || async {
        let r = c.get_with(&url, &[ADMIN]).await;
        r.status == 200 && r.text().contains("\"gzip\"")
    })
    .await;
    // Without `read_token`, open like `/metrics` (SPEC §9).
    let r = c.get(&url).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["url"], "/doc");
    let objects = v["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{v}");
    let object = &objects[0];
    assert_eq!(object["key"], format!("http://{}/doc", s.addr));
    assert_eq!(object["tiers"], json!(["memory"]));
    let variant = &object["variants"][0];
    assert_eq!(variant["vary"], json!({ "accept-language": "en" }));
    assert_eq!(variant["status"], 200);
    assert_eq!(variant["tags"], json!(["docs", "product-7"]));
    assert_eq!(variant["tiers"], json!(["memory"]));
    assert_eq!(variant["soft_purged"], false);
    assert!(variant["age"].as_u64().unwrap() <= 2, "{variant}");
    let ttl = variant["ttl"].as_i64().unwrap();
    assert!((595..=600).contains(&ttl), "{ttl}");
    let encodings = variant["encodings"].as_array().unwrap();
    assert_eq!(encodings[0], json!({"coding": "identity", "bytes": 4096}));
    assert!(
        encodings
            .iter()
            .any(|e| e["coding"] == "gzip" && e["bytes"].as_u64().unwrap() < 4096),
        "{encodings:?}"
    );
    // Absolute URLs name one host; normalised like a request.
    let abs = s.inspect_url(&format!("http://{}/x/../doc", s.addr));
    assert_eq!(c.get_with(&abs, &[ADMIN]).await.status, 200);
    let other = s.inspect_url("http://elsewhere.example/doc");
    assert_eq!(c.get_with(&other, &[ADMIN]).await.status, 404);
    let missing = c.get_with(&s.inspect_url("/nothing"), &[ADMIN]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&missing.body).unwrap()["error"],
        "nothing stored"
    );
    for bad in ["nope", "/a/..%2fb"] {
        let r = c.get_with(&s.inspect_url(bad), &[ADMIN]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = c.get_with(&s.admin_url("/cache"), &[ADMIN]).await;
    assert_eq!(r.status, 400);
    // Soft-purged: stale whatever its lifetime, as Cache-Status says.
    let r = c
        .send(
            http::Method::POST,
            &s.admin_url("/purge"),
            &[("authorization", "Bearer secret")],
            bytes::Bytes::from_static(br#"{"url": "/doc", "soft": true}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&c.get_with(&url, &[ADMIN]).await.body).unwrap();
    let variant = &v["objects"][0]["variants"][0];
    assert_eq!(variant["soft_purged"], true, "{v}");
    assert!(variant["ttl"].as_i64().unwrap() <= 0, "{v}");
    assert_eq!(origin.count(), 1, "inspection never goes upstream");
}

#[tokio::test]
async fn read_token_opens_inspection_like_the_dashboard() {
    let origin = Origin::echo(&[("cache-control", "max-age=600")]).await;
    let text = support::config_text(&[origin.addr], NO_HEALTH).replace(
        "token = \"secret\"\n",
        "token = \"secret\"\nread_token = \"reader\"\n",
    );
    let s = Strata::start_text(&text).await;
    let c = Client::new();
    c.get(&s.url("/page")).await;
    let url = s.inspect_url("/page");
    assert_eq!(c.get(&url).await.status, 401);
    for token in ["Bearer reader", "Bearer secret"] {
        let r = c.get_with(&url, &[("authorization", token)]).await;
        assert_eq!(r.status, 200, "{token}: {}", r.text());
    }
}

#[tokio::test]
async fn inspection_and_purge_by_url_across_instances_sharing_redis() {
    let redis = RedisServer::start().await;
    let origin = Origin::echo(&[("cache-control", "max-age=600")]).await;
    let cfg = format!(
        "{NO_HEALTH}\n[cache.redis]\nurls = [\"{}\"]\ntimeout = \"1s\"\n\n\
         [[rules]]\nmatch = \"/prices\"\nkey.cookies = [\"currency\"]\nkey.query = \"sorted\"\n",
        redis.url()
    );
    let (a, b) = Strata::pair_sharing_redis(&[origin.addr], &cfg).await;
    let c = Client::new();
    for currency in ["EUR", "USD"] {
        let cookie = format!("currency={currency}");
        let r = c
            .get_with(&a.url("/prices?y=2&x=1"), &[HOST, ("cookie", &cookie)])
            .await;
        assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    }
    a.shared.cache.flush(WAIT).await;
    // B finds A's entries through Redis (same key, same normalisation).
    let r = c
        .get_with(
            &b.url("/prices?x=1&y=2"),
            &[HOST, ("cookie", "currency=USD")],
        )
        .await;
    assert!(
        r.cache_status().contains("detail=redis"),
        "{}",
        r.cache_status()
    );
    assert!(r.text().contains("currency=USD"));
    assert_eq!(origin.count(), 2);

    // B's memory holds USD (promoted), Redis both.
    let r = c
        .get_with(&b.inspect_url("/prices?x=1&y=2"), &[ADMIN])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let tiers = |currency: &str| {
        let key = format!("http://fleet.example/prices?x=1&y=2#c.currency={currency}");
        v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == key)
            .map(|o| o["tiers"].clone())
            .unwrap_or_else(|| panic!("{key} not in {v}"))
    };
    assert_eq!(tiers("USD"), json!(["memory", "redis"]));
    assert_eq!(tiers("EUR"), json!(["redis"]));

    // A purge through B, by an unsorted URL, empties A's memory too.
    let (status, purged) = b.purge(r#"{"url": "/prices?y=2&x=1"}"#).await;
    assert_eq!((status, &purged["purged"]), (200, &json!(2)), "{purged}");
    wait_until(WAIT, "A's memory purged through the fleet", || async {
        let memory = a.shared.cache.memory();
        memory.weighted_size(); // applies moka's pending removals
        memory.entry_count() == 0
    })
    .await;
    let r = c
        .get_with(
            &a.url("/prices?x=1&y=2"),
            &[HOST, ("cookie", "currency=EUR")],
        )
        .await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 3);
    let gone = c.get_with(&b.inspect_url("/prices"), &[ADMIN]).await;
    assert_eq!(gone.status, 404, "{}", gone.text());
}

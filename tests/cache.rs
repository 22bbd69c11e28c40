//! The RFC 9111 shared cache end to end: real origins that count requests,
//! the real listener, assertions on Cache-Status, headers, bodies and how
//! many requests reached the origin.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use support::origin::{reply, Body};
use support::{wait_until, Client, Origin, Strata};
use tokio::sync::{Barrier, Notify};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

async fn strata(origin: &Origin, extra: &str) -> Strata {
    Strata::start(&[origin.addr], &format!("{NO_HEALTH}{extra}")).await
}

#[tokio::test]
async fn miss_then_memory_hit_without_origin_contact() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
        "hello",
    )
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let first = c.get(&s.url("/a")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello");
    assert!(
        first.cache_status().starts_with("strata; fwd=miss; stored"),
        "{}",
        first.cache_status()
    );
    let second = c.get(&s.url("/a")).await;
    assert_eq!(second.text(), "hello");
    assert!(
        second
            .cache_status()
            .starts_with("strata; hit; detail=memory"),
        "{}",
        second.cache_status()
    );
    assert!(second.header("age").is_some());
    assert_eq!(second.header("content-length"), Some("5"));
    assert_eq!(origin.count(), 1);
    // The query is part of the key.
    let other = c.get(&s.url("/a?x=1")).await;
    assert!(other.cache_status().contains("fwd=miss"));
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn rules_override_cache_control_for_cache_and_client() {
    let origin = Origin::start(|req| async move {
        let path = req.uri().path().to_string();
        reply(
            200,
            &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
            path,
        )
    })
    .await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/assets/**\"\ncache_control = \"public, max-age=31536000, immutable\"\n\
         [[rules]]\nmatch = \"/api/**\"\ncache_control = \"no-cache\"\n\
         [[rules]]\nmatch = \"**/*.html\"\ncache_control = \"public, max-age=3600\"\n",
    )
    .await;
    let c = Client::new();
    for path in [
        "/assets/app.js",
        "/assets/a/b/c.css",
        "/index.html",
        "/a/b/page.html",
    ] {
        let r = c.get(&s.url(path)).await;
        assert!(
            r.cache_status().contains("stored"),
            "{path}: {}",
            r.cache_status()
        );
        let r = c.get(&s.url(path)).await;
        assert!(
            r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
    }
    let r = c.get(&s.url("/assets/app.js")).await;
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(origin.count(), 4);
    // The API rule says no-cache: stored, but validated every time.
    let r = c.get(&s.url("/api/items")).await;
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let before = origin.count();
    let r = c.get(&s.url("/api/items")).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.count(), before + 1);
    assert_eq!(origin.last().unwrap().headers["if-none-match"], "\"v1\"");
    // Unmatched paths follow the upstream (no-cache here).
    c.get(&s.url("/other")).await;
    let r = c.get(&s.url("/other")).await;
    assert!(!r.cache_status().contains("hit"));
}

#[tokio::test]
async fn memory_capacity_is_honoured() {
    let origin = Origin::start(|req| async move {
        let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
        reply(
            200,
            &[("cache-control", "max-age=600")],
            vec![b'a' + (n % 26) as u8; 64 * 1024],
        )
    })
    .await;
    let s = strata(&origin, "[cache]\nmemory_capacity = \"1MiB\"\n").await;
    let c = Client::new();
    // 4 MiB of objects through a 1 MiB cache.
    for i in 0..64 {
        assert_eq!(c.get(&s.url(&format!("/{i}"))).await.body.len(), 64 * 1024);
    }
    let bytes = s.shared.cache.memory().weighted_size();
    assert!(bytes <= 1024 * 1024, "accounted {bytes} bytes > capacity");
    assert!(bytes > 0);
    let stats: Value = serde_json::from_slice(&c.get(&s.admin_url("/stats")).await.body).unwrap();
    let reported = stats["strata_cache_bytes"][0]["value"].as_f64().unwrap();
    assert!(reported <= 1024.0 * 1024.0);
}

/// A full memory tier still takes a new object, large or small: the
/// least recently used entries make room, as in nginx and Varnish (black-box
/// audit, high: with moka's default TinyLFU admission a 256 KiB object
/// never got in once small entries filled the tier, each miss answered
/// `stored` and the next request went upstream again).
#[tokio::test]
async fn a_full_memory_tier_takes_new_objects_large_and_small() {
    let origin = Origin::start(|req| async move {
        let len = if req.uri().path().starts_with("/big") {
            300 * 1024
        } else {
            2 * 1024
        };
        reply(200, &[("cache-control", "max-age=600")], vec![b'x'; len])
    })
    .await;
    let s = strata(&origin, "[cache]\nmemory_capacity = \"2MiB\"\n").await;
    let c = Client::new();
    // 3 MiB of small objects, each asked for twice (a hit each).
    for i in 0..1500 {
        for _ in 0..2 {
            assert_eq!(c.get(&s.url(&format!("/s/{i}"))).await.status, 200);
        }
    }
    for path in ["/big/1", "/s/new"] {
        let first = c.get(&s.url(path)).await;
        assert!(
            first.cache_status().contains("stored"),
            "{}",
            first.cache_status()
        );
        let again = c.get(&s.url(path)).await;
        assert!(
            again.cache_status().starts_with("strata; hit"),
            "{path}: {}",
            again.cache_status()
        );
    }
}

#[tokio::test]
async fn objects_over_max_size_stream_through_uncached() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60")],
        "0123456789abcdef0123456789abcdef",
    )
    .await;
    let s = strata(&origin, "[cache]\nmax_object_size = \"16B\"\n").await;
    let c = Client::new();
    for _ in 0..3 {
        let r = c.get(&s.url("/big")).await;
        assert_eq!(r.body.len(), 32);
        assert!(!r.cache_status().contains("hit"));
    }
    assert_eq!(origin.count(), 3);
}

/// Without Redis, an object larger than the memory tier was answered
/// `fwd=miss; stored` every time and never kept: it now streams through
/// uncached, without `stored`.
#[tokio::test]
async fn an_object_larger_than_the_memory_tier_is_never_said_stored() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60")],
        "x".repeat(1_500_000).leak(),
    )
    .await;
    let s = strata(&origin, "[cache]\nmemory_capacity = \"1MiB\"\n").await;
    let c = Client::new();
    for _ in 0..2 {
        let r = c.get(&s.url("/big")).await;
        assert_eq!(r.body.len(), 1_500_000);
        assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
        assert!(!r.cache_status().contains("hit"), "{}", r.cache_status());
    }
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn vary_stores_variants_selected_by_request_fields() {
    let origin = Origin::start(|req| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "none".into());
        reply(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            lang,
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let en = c.get_with(&s.url("/v"), &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "en");
    let de = c.get_with(&s.url("/v"), &[("accept-language", "de")]).await;
    assert_eq!(de.text(), "de");
    assert!(
        de.cache_status().contains("fwd=vary-miss"),
        "{}",
        de.cache_status()
    );
    let en2 = c.get_with(&s.url("/v"), &[("accept-language", "en")]).await;
    assert_eq!(en2.text(), "en");
    assert!(en2.cache_status().contains("hit"));
    let de2 = c.get_with(&s.url("/v"), &[("accept-language", "de")]).await;
    assert_eq!(de2.text(), "de");
    assert!(de2.cache_status().contains("hit"));
    let none = c.get(&s.url("/v")).await;
    assert_eq!(none.text(), "none");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn vary_star_never_matches() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60"), ("vary", "*")], "x").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/star")).await;
    c.get(&s.url("/star")).await;
    assert_eq!(origin.count(), 2);
}

/// A `Vary` whose list holds a member that is not a field name
/// (`Origin;`, space-separated names) cannot be matched: it is read as
/// `*`, as Varnish does, and never stored. Before, the bad member was
/// dropped, the entry stored as not varying, and a second `Origin` got
/// the first one's `Access-Control-Allow-Origin` as a hit (the probe's
/// replay of GSA/api.data.gov#397). Empty list elements are valid.
#[tokio::test]
async fn a_malformed_vary_is_read_as_varying_on_everything() {
    let origin = Origin::start(|req| async move {
        let vary = match req.uri().path() {
            "/semicolon" => "Accept-Encoding; Origin",
            "/spaces" => "Origin Cookie",
            "/trailing" => "Origin;",
            _ => ", Origin,",
        };
        let allowed = req
            .headers()
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        reply(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", vary),
                ("access-control-allow-origin", &allowed),
            ],
            "x",
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/semicolon", "/spaces", "/trailing", "/empty-elements"] {
        let a = c
            .get_with(&s.url(path), &[("origin", "https://a.example")])
            .await;
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some("https://a.example")
        );
        let b = c
            .get_with(&s.url(path), &[("origin", "https://b.example")])
            .await;
        assert_eq!(
            b.header("access-control-allow-origin"),
            Some("https://b.example"),
            "{path}"
        );
        assert!(
            !b.cache_status().contains("hit"),
            "{path}: {}",
            b.cache_status()
        );
    }
    // Empty elements around a valid name still vary on it, and store.
    let again = c
        .get_with(
            &s.url("/empty-elements"),
            &[("origin", "https://a.example")],
        )
        .await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert_eq!(origin.count(), 8);
}

#[tokio::test]
async fn what_a_shared_cache_must_not_store() {
    let origin = Origin::start(|req| async move {
        let cc = match req.uri().path() {
            "/no-store" => "no-store, max-age=60",
            "/private" => "private, max-age=60",
            "/public-cookie" => "public, max-age=60",
            _ => "max-age=60",
        };
        let mut headers = vec![("cache-control", cc)];
        if req.uri().path().ends_with("cookie") {
            headers.push(("set-cookie", "session=abc"));
        }
        reply(200, &headers, "x")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/no-store", "/private", "/cookie"] {
        c.get(&s.url(path)).await;
        let r = c.get(&s.url(path)).await;
        assert!(!r.cache_status().contains("hit"), "{path}");
    }
    // Authorization: not stored without public/s-maxage/must-revalidate.
    c.get_with(&s.url("/auth"), &[("authorization", "Bearer a")])
        .await;
    let r = c
        .get_with(&s.url("/auth"), &[("authorization", "Bearer a")])
        .await;
    assert!(!r.cache_status().contains("hit"));
    assert_eq!(origin.count(), 8);
    // Stored because the origin vouches for sharing, but the cookie is the
    // fetching client's alone: hits never hand it to anyone else.
    let r = c.get(&s.url("/public-cookie")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    assert_eq!(r.header("set-cookie"), Some("session=abc"));
    let r = c.get(&s.url("/public-cookie")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.header("set-cookie"), None);
}

/// `Set-Cookie2` (RFC 2965, obsoleted by RFC 6265 but still sent by old
/// application servers) sets a client's state as `Set-Cookie` does: the
/// response is not shared unless the origin says so, and a shared copy
/// never hands the cookie to later hits, nor does a 304's.
#[tokio::test]
async fn set_cookie2_is_somebodys_state_like_set_cookie() {
    let origin = Origin::start(|req| async move {
        let cc = match req.uri().path() {
            "/public" => "public, max-age=60",
            "/stale" if req.headers().contains_key("if-none-match") => {
                return reply(
                    304,
                    &[
                        ("cache-control", "max-age=60"),
                        ("etag", "\"s\""),
                        ("set-cookie2", "v=2; Version=1"),
                    ],
                    "",
                )
            }
            "/stale" => {
                return reply(
                    200,
                    &[
                        ("cache-control", "max-age=10"),
                        ("age", "20"),
                        ("etag", "\"s\""),
                    ],
                    "s",
                )
            }
            _ => "max-age=60",
        };
        reply(
            200,
            &[("cache-control", cc), ("set-cookie2", "sid=1; Version=1")],
            "x",
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/private")).await;
    let r = c.get(&s.url("/private")).await;
    assert!(!r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.count(), 2);
    let r = c.get(&s.url("/public")).await;
    assert_eq!(r.header("set-cookie2"), Some("sid=1; Version=1"));
    let r = c.get(&s.url("/public")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.header("set-cookie2"), None);
    c.get(&s.url("/stale")).await;
    let r = c.get(&s.url("/stale")).await;
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.header("set-cookie2"), Some("v=2; Version=1"));
    let r = c.get(&s.url("/stale")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.header("set-cookie2"), None);
}

#[tokio::test]
async fn stale_entry_is_revalidated_and_304_updates_stored_headers() {
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let origin = Origin::start(move |req| {
        let v = v.clone();
        async move {
            let n = v.load(Ordering::SeqCst).to_string();
            if req
                .headers()
                .get("if-none-match")
                .is_some_and(|t| t == "\"e1\"")
            {
                // Age makes the refreshed entry fresh for 60 s.
                return reply(
                    304,
                    &[
                        ("cache-control", "max-age=60"),
                        ("etag", "\"e1\""),
                        ("x-version", &n),
                    ],
                    "",
                );
            }
            // Age: 20 > max-age=10: stored already stale.
            reply(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("age", "20"),
                    ("etag", "\"e1\""),
                    ("x-version", &n),
                ],
                "body-v1",
            )
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let r = c.get(&s.url("/r")).await;
    assert_eq!(r.text(), "body-v1");
    version.store(2, Ordering::SeqCst);
    let r = c.get(&s.url("/r")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body-v1");
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        r.header("x-version"),
        Some("2"),
        "304 updates stored headers"
    );
    assert_eq!(origin.last().unwrap().headers["if-none-match"], "\"e1\"");
    // Now fresh again: a hit with the updated headers.
    let r = c.get(&s.url("/r")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.header("x-version"), Some("2"));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert_eq!(origin.count(), 2);
}

/// A `Set-Cookie` on the `304` that validates a stored response is the
/// requesting client's: it reaches that client (as Varnish delivers it),
/// and is neither stored nor handed to later hits (RFC 9111 §4.3.4 with
/// SPEC §10).
#[tokio::test]
async fn a_304_set_cookie_reaches_its_requester_only() {
    let origin = Origin::start(|req| async move {
        if req.headers().contains_key("if-none-match") {
            return reply(
                304,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"c1\""),
                    ("set-cookie", "seen=1; Path=/"),
                    ("set-cookie", "lang=en"),
                ],
                "",
            );
        }
        // Age: 20 > max-age=10: stored already stale.
        reply(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("age", "20"),
                ("etag", "\"c1\""),
            ],
            "cookie-body",
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let r = c.get(&s.url("/c")).await;
    assert_eq!(r.header("set-cookie"), None);
    let r = c.get(&s.url("/c")).await;
    assert_eq!(r.text(), "cookie-body");
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>(),
        ["seen=1; Path=/", "lang=en"]
    );
    let r = c.get(&s.url("/c")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(origin.count(), 2);
}

/// RFC 9111 §3.1: `Proxy-Authentication-Info` answers one client's proxy
/// credentials and is never stored (the miss or the validation that
/// fetched it passes it on to its client, as a 304's `Set-Cookie`). RFC 9111 §4.3.4: a 304 does not replace the fields that describe
/// the stored body, `Content-MD5` among them (cache-tests
/// `headers-store-Proxy-Authentication-Info`,
/// `304-etag-update-response-Content-MD5`).
#[tokio::test]
async fn proxy_authentication_info_is_never_stored_and_a_304_keeps_content_md5() {
    let origin = Origin::start(|req| async move {
        if req.headers().contains_key("if-none-match") {
            return reply(
                304,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"m1\""),
                    ("content-md5", "bm90IHRoZSBzdG9yZWQgYm9keQ=="),
                    ("proxy-authentication-info", "nextnonce=\"b\""),
                ],
                "",
            );
        }
        // Age: 20 > max-age=10: stored already stale.
        reply(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("age", "20"),
                ("etag", "\"m1\""),
                ("content-md5", "ICGaD7ui5EM8xWSX3gI0WA=="),
                ("proxy-authentication-info", "nextnonce=\"a\""),
            ],
            "md5-body",
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let r = c.get(&s.url("/m")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    assert_eq!(
        r.header("proxy-authentication-info"),
        Some("nextnonce=\"a\""),
        "the fetching client gets it"
    );
    let r = c.get(&s.url("/m")).await;
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.text(), "md5-body");
    assert_eq!(r.header("content-md5"), Some("ICGaD7ui5EM8xWSX3gI0WA=="));
    assert_eq!(
        r.header("proxy-authentication-info"),
        Some("nextnonce=\"b\""),
        "the 304 was fetched for this client: it gets the 304's field"
    );
    let r = c.get(&s.url("/m")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.header("content-md5"), Some("ICGaD7ui5EM8xWSX3gI0WA=="));
    assert_eq!(r.header("proxy-authentication-info"), None);
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn client_conditionals_answered_from_cache() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"abc\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ],
        "conditional body",
    )
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/c")).await;
    let r = c
        .get_with(&s.url("/c"), &[("if-none-match", "\"zzz\", \"abc\"")])
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"abc\""));
    let r = c
        .get_with(&s.url("/c"), &[("if-none-match", "W/\"abc\"")])
        .await;
    assert_eq!(r.status, 304, "If-None-Match uses the weak comparison");
    let r = c
        .get_with(
            &s.url("/c"),
            &[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 304);
    let r = c
        .get_with(
            &s.url("/c"),
            &[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c.get_with(&s.url("/c"), &[("if-match", "\"nope\"")]).await;
    assert_eq!(r.status, 412);
    assert_eq!(origin.count(), 1);
}

/// RFC 9110 §13.1.1/§13.1.2: `*` matches any current representation, with
/// or without an `ETag`; and §13.2.1: preconditions are ignored for a
/// response other than 2xx (a stored `404` is no representation to
/// compare).
#[tokio::test]
async fn a_star_precondition_matches_a_stored_200_without_etag_and_never_a_404() {
    let origin = Origin::start(|req| async move {
        let status = if req.uri().path() == "/gone" {
            404
        } else {
            200
        };
        reply(status, &[("cache-control", "max-age=60")], "body")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/page")).await;
    let r = c.get_with(&s.url("/page"), &[("if-none-match", "*")]).await;
    assert_eq!(r.status, 304, "If-None-Match: * on a stored 200");
    let r = c.get_with(&s.url("/page"), &[("if-match", "*")]).await;
    assert_eq!(r.status, 200, "If-Match: *");
    assert_eq!(&r.body[..], b"body");
    c.get(&s.url("/gone")).await;
    let r = c.get_with(&s.url("/gone"), &[("if-none-match", "*")]).await;
    assert_eq!(r.status, 404, "preconditions on a stored 404 are ignored");
    let r = c.get_with(&s.url("/gone"), &[("if-match", "*")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn conditional_request_on_a_miss_is_answered_after_storing() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60"), ("etag", "\"m\"")],
        "miss body",
    )
    .await;
    let s = strata(&origin, "").await;
    let r = Client::new()
        .get_with(&s.url("/m"), &[("if-none-match", "\"m\"")])
        .await;
    assert_eq!(r.status, 304);
    assert!(
        origin
            .last()
            .unwrap()
            .headers
            .get("if-none-match")
            .is_none(),
        "the cache fetches unconditionally"
    );
    let r = Client::new().get(&s.url("/m")).await;
    assert!(r.cache_status().contains("hit"));
    assert_eq!(r.text(), "miss body");
}

#[tokio::test]
async fn head_is_served_from_a_cached_get() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "0123456789").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/h")).await;
    let r = c.send(Method::HEAD, &s.url("/h"), &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.cache_status().contains("hit"));
    assert_eq!(origin.count(), 1);
    // A HEAD miss fills the cache with a GET, and is answered once that is
    // stored: the next request is a hit at once, never collapsed onto the
    // admission (SPEC §6) — also for a body that is being compressed.
    let r = c.send(Method::HEAD, &s.url("/h2"), &[], Bytes::new()).await;
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(origin.last().unwrap().method, Method::GET);
    let r = c.get(&s.url("/h2")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.text(), "0123456789");

    // The body's second half comes 100 ms after the head, as from an
    // origin that renders as it sends.
    let html = Origin::start(|_req| async move {
        use futures_util::StreamExt;
        let half = Bytes::from("<p>compressible</p>".repeat(200));
        let second = half.clone();
        let chunks =
            futures_util::stream::iter([half]).chain(futures_util::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                second
            }));
        support::origin::streamed(
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "text/html"),
            ],
            chunks,
        )
    })
    .await;
    let s = strata(&html, "").await;
    for i in 0..10 {
        let url = s.url(&format!("/page{i}"));
        let r = c.send(Method::HEAD, &url, &[], Bytes::new()).await;
        assert_eq!(r.status, 200);
        assert!(
            r.cache_status().contains("fwd=miss; stored"),
            "{}",
            r.cache_status()
        );
        let r = c.get_with(&url, &[("accept-encoding", "gzip")]).await;
        assert!(
            r.cache_status().contains("hit"),
            "{i}: {}",
            r.cache_status()
        );
    }
    assert_eq!(html.count(), 10);
}

#[tokio::test]
async fn ranges_are_served_from_the_stored_object() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60"), ("etag", "\"r\"")],
        "0123456789",
    )
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/range")).await;
    let r = c
        .get_with(&s.url("/range"), &[("range", "bytes=2-4")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "234");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = c.get_with(&s.url("/range"), &[("range", "bytes=7-")]).await;
    assert_eq!(r.text(), "789");
    let r = c.get_with(&s.url("/range"), &[("range", "bytes=-2")]).await;
    assert_eq!(r.text(), "89");
    let r = c
        .get_with(&s.url("/range"), &[("range", "bytes=50-")])
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    // Two Range lines are no valid field: ignored (it gave a 206 of the
    // first), and a position beyond u64 is past the end (it gave 200).
    let r = c
        .get_with(
            &s.url("/range"),
            &[("range", "bytes=0-1"), ("range", "bytes=4-5")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "0123456789");
    let r = c
        .get_with(
            &s.url("/range"),
            &[("range", "bytes=99999999999999999999999-")],
        )
        .await;
    assert_eq!(r.status, 416);
    let r = c
        .get_with(
            &s.url("/range"),
            &[("range", "bytes=0-1"), ("if-range", "\"other\"")],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "a failed If-Range gets the whole representation"
    );
    assert_eq!(r.text(), "0123456789");
    let r = c
        .get_with(
            &s.url("/range"),
            &[("range", "bytes=0-1"), ("if-range", "\"r\"")],
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(origin.count(), 1);
}

/// RFC 9110 §13.1.5 with §8.8.2.2: an `If-Range` date selects the stored
/// bytes only when it is a strong validator for a cache, the response's
/// `Date` at least 60 seconds after its `Last-Modified`; otherwise the
/// whole representation is sent (a resource changed twice within one
/// second would have its ranges spliced from two versions).
#[tokio::test]
async fn an_if_range_date_must_be_a_strong_validator() {
    let now = std::time::SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let recent = httpdate::fmt_http_date(now - Duration::from_secs(5));
    let old = httpdate::fmt_http_date(now - Duration::from_secs(3600));
    let (d, r, o) = (date.clone(), recent.clone(), old.clone());
    let origin = Origin::start(move |req| {
        let lm = if req.uri().path() == "/recent" {
            r.clone()
        } else {
            o.clone()
        };
        let d = d.clone();
        async move {
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("date", &d),
                    ("last-modified", &lm),
                ],
                "0123456789",
            )
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for (path, lm, status, body) in [
        ("/recent", &recent, 200, "0123456789"),
        ("/old", &old, 206, "01"),
    ] {
        c.get(&s.url(path)).await;
        let r = c
            .get_with(&s.url(path), &[("range", "bytes=0-1"), ("if-range", lm)])
            .await;
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.text(), body, "{path}");
    }
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn unsafe_methods_invalidate_target_and_location() {
    let origin = Origin::start(|req| async move {
        if req.method() == Method::POST {
            return reply(201, &[("location", "/other")], "created");
        }
        reply(200, &[("cache-control", "max-age=60")], "cached")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/target")).await;
    c.get(&s.url("/other")).await;
    assert!(c
        .get(&s.url("/target"))
        .await
        .cache_status()
        .contains("hit"));
    assert!(c.get(&s.url("/other")).await.cache_status().contains("hit"));
    let r = c
        .send(
            Method::POST,
            &s.url("/target"),
            &[],
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r.status, 201);
    // Both removals are counted, the Location's too (SPEC §7).
    let metrics = c.get(&s.admin_url("/metrics")).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "strata_purged_total{cause=\"unsafe_method\"} 2"),
        "{metrics}"
    );
    assert!(c
        .get(&s.url("/target"))
        .await
        .cache_status()
        .contains("fwd=miss"));
    assert!(c
        .get(&s.url("/other"))
        .await
        .cache_status()
        .contains("fwd=miss"));

    // Relative references are resolved against the request URL (RFC 3986
    // §5): same origin by construction.
    let origin = Origin::start(|req| async move {
        match (req.method().clone(), req.uri().path()) {
            (Method::POST, _) => reply(201, &[("location", "target")], "created"),
            (Method::PUT, _) => reply(200, &[("content-location", "../up")], "put"),
            _ => reply(200, &[("cache-control", "max-age=60")], "cached"),
        }
    })
    .await;
    let s = strata(&origin, "").await;
    for (method, at, other) in [
        (Method::POST, "/k/dir/act", "/k/dir/target"),
        (Method::PUT, "/k/dir/act2", "/k/up"),
    ] {
        c.get(&s.url(other)).await;
        assert!(c.get(&s.url(other)).await.cache_status().contains("hit"));
        c.send(method, &s.url(at), &[], Bytes::from_static(b"x"))
            .await;
        let r = c.get(&s.url(other)).await;
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{other}: {}",
            r.cache_status()
        );
    }
}

/// RFC 9111 §4.4 with RFC 3986 §5.2.2 / §6.2.2 (replay probe): an
/// absolute-path `Location` / `Content-Location` was used as written, so
/// a dot segment, a fragment or an encoded unreserved character (also in
/// an absolute URL) named no stored key and invalidated nothing. Each is
/// now normalised as a request path is.
#[tokio::test]
async fn locations_are_normalised_like_request_paths_before_invalidating() {
    let origin = Origin::start(|req| async move {
        if req.method() == Method::POST {
            // The reference the test asks for: `x-field: x-value`.
            let get = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            return reply(201, &[(&get("x-field"), &get("x-value"))], "created");
        }
        reply(200, &[("cache-control", "max-age=60")], "cached")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let absolute = s.url("/iv/x%7ey");
    // The origin behind a TLS-ending load balancer names its URLs
    // `https://` on the public port: the host decides (RFC 9111 §4.4; the
    // invalidation probe found it ignored).
    let public = format!("https://{}:443/iv/pub", s.addr.ip());
    for (field, value, stored) in [
        ("location", public.as_str(), "/iv/pub"),
        ("location", "/iv/./item", "/iv/item"),
        ("location", "/iv/x/../item", "/iv/item"),
        ("location", "/iv/%69tem", "/iv/item"),
        ("location", "/iv/item#top", "/iv/item"),
        ("location", "/iv/item?q=1#f", "/iv/item?q=1"),
        ("content-location", "/iv/x%7ey", "/iv/x~y"),
        ("location", absolute.as_str(), "/iv/x~y"),
    ] {
        c.get(&s.url(stored)).await;
        let r = c.get(&s.url(stored)).await;
        assert!(r.is_hit(), "{stored}: {}", r.cache_status());
        let r = c
            .send(
                Method::POST,
                &s.url("/iv/new"),
                &[("x-field", field), ("x-value", value)],
                Bytes::from_static(b"x"),
            )
            .await;
        assert_eq!(r.status, 201);
        let r = c.get(&s.url(stored)).await;
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{field}: {value} left {stored}: {}",
            r.cache_status()
        );
    }
}

/// Raw UTF-8 in a request path (not allowed in a target, RFC 9112 §3.2,
/// but accepted) is percent-encoded as a browser sends it: one key with
/// `/caf%C3%A9`, so purges and invalidations reach it, and the origin gets
/// the encoded path. It was a key of its own (the bug-report probe's
/// replay of ngx_cache_purge#21): the admin API refuses the raw form, so
/// after a purge of the URL anyone could keep the old copy alive.
#[tokio::test]
async fn raw_utf8_in_a_path_is_one_key_with_its_percent_encoding() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "x").await;
    let s = strata(&origin, "").await;
    let out = support::http::raw(
        s.addr,
        b"GET /u/caf\xC3\xA9 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(origin.last().unwrap().path, "/u/caf%C3%A9");
    let c = Client::new();
    let r = c.get_with(&s.url("/u/caf%C3%A9"), &[("host", "h")]).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 1);
    // The query's raw UTF-8 too (regression probe: still a key of its own).
    let out = support::http::raw(
        s.addr,
        b"GET /u/q?x=\xC3\xA9 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(origin.last().unwrap().path, "/u/q?x=%C3%A9");
    let r = c.get_with(&s.url("/u/q?x=%C3%A9"), &[("host", "h")]).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 2);
}

/// A leader whose client goes away before the answer does not cancel its
/// fetch: its followers get the answer it stores, with no more upstream
/// requests, and so do later requests (nginx's `proxy_cache` finishes a
/// cacheable fetch too). At first each follower went upstream alone and
/// nothing was stored (black-box audit); then they collapsed behind a new
/// leader (one more request); and with impatient clients and a slow
/// origin, nothing was ever stored (slow-peers probe).
#[tokio::test]
async fn a_leader_whose_client_went_away_still_fetches_for_its_followers() {
    use tokio::io::AsyncWriteExt;
    let (origin, gate) = Origin::gated(&[("cache-control", "max-age=60")], "body").await;
    let s = Arc::new(strata(&origin, "").await);
    let mut leader = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    leader
        .write_all(format!("GET /gone HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).as_bytes())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the leader at the origin",
        || async { origin.count() == 1 },
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = s.url("/gone");
        tasks.push(tokio::spawn(async move { Client::new().get(&url).await }));
    }
    wait_until(Duration::from_secs(5), "five followers waiting", || async {
        s.shared.cache.collapser().waiting() == 5
    })
    .await;
    drop(leader);
    let c = Client::new();
    wait_until(
        Duration::from_secs(5),
        "the leader's client gone (499)",
        || async {
            c.get(&s.admin_url("/metrics"))
                .await
                .text()
                .contains(r#"strata_requests_total{outcome="error",status="499"} 1"#)
        },
    )
    .await;
    gate.notify_waiters();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "body");
    }
    assert_eq!(origin.count(), 1);
    let again = Client::new().get(&s.url("/gone")).await;
    assert!(
        again.cache_status().starts_with("strata; hit"),
        "{}",
        again.cache_status()
    );
}

/// With nobody waiting at all, the fetch of a client that gave up before a
/// slow origin answered is stored: the next request is a hit.
#[tokio::test]
async fn a_miss_whose_client_gave_up_is_stored_anyway() {
    let (origin, gate) = Origin::gated(&[("cache-control", "max-age=60")], "slow").await;
    let s = strata(&origin, "").await;
    let url = s.url("/impatient");
    let impatient = tokio::spawn(async move { Client::new().get(&url).await });
    wait_until(
        Duration::from_secs(5),
        "the request at the origin",
        || async { origin.count() == 1 },
    )
    .await;
    impatient.abort();
    let c = Client::new();
    wait_until(Duration::from_secs(5), "the client gone (499)", || async {
        c.get(&s.admin_url("/metrics"))
            .await
            .text()
            .contains(r#"strata_requests_total{outcome="error",status="499"} 1"#)
    })
    .await;
    gate.notify_one();
    wait_until(Duration::from_secs(10), "the answer stored", || async {
        c.get(&s.url("/impatient")).await.is_hit()
    })
    .await;
    assert_eq!(origin.count(), 1);
}

/// Fetches that go on after their client left are bounded
/// (`strata::cache::CLIENTLESS` at once): past the bound such a fetch
/// stops, as all did before, so that clients that ask and leave cannot
/// start unbounded upstream work.
#[tokio::test]
async fn fetches_without_their_client_are_bounded() {
    use strata::cache::key::CacheKey;
    use strata::cache::CLIENTLESS;
    let (origin, gate) = Origin::gated(&[("cache-control", "max-age=60")], "late").await;
    let s = strata(&origin, "").await;
    let n = CLIENTLESS + 6;
    let mut clients = Vec::new();
    for i in 0..n {
        let url = s.url(&format!("/left/{i}"));
        clients.push(tokio::spawn(async move {
            Client::new()
                .get_with(&url, &[("host", "shop.example")])
                .await
        }));
    }
    wait_until(
        Duration::from_secs(20),
        "every request at the origin",
        || async { origin.count() == n },
    )
    .await;
    for c in &clients {
        c.abort();
    }
    let c = Client::new();
    let gone = format!(r#"strata_requests_total{{outcome="error",status="499"}} {n}"#);
    wait_until(
        Duration::from_secs(20),
        "every client gone (499)",
        || async { c.get(&s.admin_url("/metrics")).await.text().contains(&gone) },
    )
    .await;
    gate.notify_waiters();
    let stored = || {
        (0..n)
            .filter(|i| {
                let key = CacheKey::new(false, "shop.example", &format!("/left/{i}"));
                s.shared.cache.memory().get_key(&key).is_some()
            })
            .count()
    };
    // Every fetch done (its collapse lock gone: stored or stopped).
    wait_until(Duration::from_secs(20), "every fetch done", || {
        std::future::ready(s.shared.cache.collapser().in_flight() == 0)
    })
    .await;
    assert_eq!(stored(), CLIENTLESS);
}

/// An origin answering `variant {X-V}` with `Vary: X-V`, fresh for a
/// minute; a request for variant `v` is held until `gate` reaches
/// `stage(v)` (a watch: a stage reached before a request waits is not
/// missed).
async fn variant_origin(gate: tokio::sync::watch::Receiver<u32>, stage: fn(&str) -> u32) -> Origin {
    Origin::start(move |req| {
        let mut gate = gate.clone();
        async move {
            let v = support::origin::field(&req, "x-v");
            let at = stage(&v);
            let _ = gate.wait_for(|now| *now >= at).await;
            reply(
                200,
                &[("cache-control", "max-age=60"), ("vary", "X-V")],
                format!("variant {v}"),
            )
        }
    })
    .await
}

/// Each of `variants` of `url` is a memory hit with its own body.
async fn assert_variant_hits(url: &str, variants: &[&str]) {
    for v in variants {
        let r = Client::new().get_with(url, &[("x-v", v)]).await;
        assert_eq!(r.text(), format!("variant {v}"));
        assert!(
            r.cache_status().starts_with("strata; hit"),
            "{v}: {}",
            r.cache_status()
        );
    }
}

/// Followers of a leader whose answer is another variant (`Vary`) collapse
/// among themselves: one upstream request for their variant, stored, not
/// one each (fresh-eyes tryout: three `X-V: b` followers each went
/// upstream, `fwd=miss`, and none was stored).
#[tokio::test]
async fn followers_wanting_another_variant_collapse_among_themselves() {
    // a is held until stage 1, b until stage 2.
    let (stage, gate) = tokio::sync::watch::channel(0);
    let origin = variant_origin(gate, |v| if v == "a" { 1 } else { 2 }).await;
    let s = Arc::new(strata(&origin, "").await);
    let get = |v: &'static str| {
        let url = s.url("/col");
        tokio::spawn(async move { Client::new().get_with(&url, &[("x-v", v)]).await })
    };
    let leader = get("a");
    wait_until(
        Duration::from_secs(5),
        "the leader at the origin",
        || async { origin.count() == 1 },
    )
    .await;
    let followers: Vec<_> = (0..3).map(|_| get("b")).collect();
    wait_until(
        Duration::from_secs(5),
        "three followers waiting",
        || async { s.shared.cache.collapser().waiting() == 3 },
    )
    .await;
    stage.send_replace(1);
    let a = leader.await.unwrap();
    assert_eq!(a.text(), "variant a");
    wait_until(
        Duration::from_secs(5),
        "one follower at the origin for variant b",
        || async { origin.count() == 2 },
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "two followers waiting on it",
        || async { s.shared.cache.collapser().waiting() == 2 },
    )
    .await;
    stage.send_replace(2);
    let mut collapsed = 0;
    for f in followers {
        let r = f.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "variant b");
        collapsed += usize::from(r.cache_status().contains("collapsed"));
    }
    assert_eq!(collapsed, 2);
    assert_eq!(origin.count(), 2, "one upstream request per variant");
    assert_variant_hits(&s.url("/col"), &["a", "b"]).await;
    assert_eq!(origin.count(), 2);
}

/// Variants of one URL fetched at the same time are all kept: each is
/// added to what the cache holds when it lands, not to what its lookup saw
/// (fresh-eyes tryout: with `a` stored, `b` and `c` fetched together both
/// said `stored`, but one was lost and fetched again).
#[tokio::test]
async fn variants_fetched_at_the_same_time_are_all_kept() {
    // a answers at once; b, c and d once all three are at the origin.
    let (open, gate) = tokio::sync::watch::channel(0);
    let origin = variant_origin(gate, |v| u32::from(v != "a")).await;
    let s = Arc::new(strata(&origin, "").await);
    let get = |v: &'static str| {
        let url = s.url("/vars");
        tokio::spawn(async move { Client::new().get_with(&url, &[("x-v", v)]).await })
    };
    assert_eq!(get("a").await.unwrap().text(), "variant a");
    let later: Vec<_> = ["b", "c", "d"].into_iter().map(get).collect();
    wait_until(
        Duration::from_secs(5),
        "b, c and d at the origin",
        || async { origin.count() == 4 },
    )
    .await;
    open.send_replace(1);
    for (t, v) in later.into_iter().zip(["b", "c", "d"]) {
        let r = t.await.unwrap();
        assert_eq!(r.text(), format!("variant {v}"));
        assert!(
            r.cache_status().contains("stored"),
            "{v}: {}",
            r.cache_status()
        );
    }
    assert_variant_hits(&s.url("/vars"), &["a", "b", "c", "d"]).await;
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn fifty_concurrent_cold_requests_make_one_origin_request() {
    let (origin, gate) = Origin::gated(&[("cache-control", "max-age=60")], "collapsed body").await;
    let s = Arc::new(strata(&origin, "").await);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = s.url("/hot");
        tasks.push(tokio::spawn(async move { Client::new().get(&url).await }));
    }
    wait_until(
        Duration::from_secs(5),
        "the leader reached the origin",
        || async { origin.count() == 1 },
    )
    .await;
    // Every follower queued behind the leader (bounded). `in_flight() == 1`
    // held as soon as the leader alone had the lock, so it waited for
    // nothing and `collapsed > 0` below depended on timing.
    wait_until(Duration::from_secs(5), "followers waiting", || async {
        s.shared.cache.collapser().waiting() == 49
    })
    .await;
    gate.notify_one();
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "collapsed body");
        if r.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(
        origin.count(),
        1,
        "one upstream request for 50 concurrent misses"
    );
    assert!(collapsed > 0);
}

/// A response that must be validated before each reuse (`no-cache`,
/// `max-age=0`, no freshness at all) is never handed to requests collapsed
/// onto its fetch: each goes upstream itself, as nginx and Varnish pass
/// them (RFC 9111 §4, §5.2.2.4). They got the leader's response, so with
/// an origin answering per cookie (Express's default: an ETag, no
/// `Cache-Control`) one user's page went to the others, on a cold URL and
/// again when the leader revalidated the stored copy (found by the
/// bug-replay probe).
#[tokio::test]
async fn responses_needing_validation_are_not_shared_with_collapsed_requests() {
    for cc in ["no-cache", "max-age=0", ""] {
        let gate = Arc::new(Notify::new());
        let g = gate.clone();
        let origin = Origin::start(move |req| {
            let g = g.clone();
            async move {
                let cookie = support::origin::field(&req, "cookie");
                let user = cookie.trim_start_matches("user=").to_string();
                if user == "alice" {
                    g.notified().await;
                }
                let etag = format!("\"{user}\"");
                let mut headers = vec![
                    ("etag", etag.as_str()),
                    ("content-type", "application/json"),
                ];
                if !cc.is_empty() {
                    headers.push(("cache-control", cc));
                }
                if support::origin::field(&req, "if-none-match") == etag {
                    reply(304, &headers, "")
                } else {
                    reply(200, &headers, format!("{{\"user\":\"{user}\"}}"))
                }
            }
        })
        .await;
        let s = Arc::new(strata(&origin, "").await);
        // A cold URL, then its stored copy validated by alice's request.
        for round in 0..2 {
            let get = |user: &'static str| {
                let url = s.url("/me");
                tokio::spawn(async move {
                    let cookie = format!("user={user}");
                    Client::new().get_with(&url, &[("cookie", &cookie)]).await
                })
            };
            let alice = get("alice");
            wait_until(
                Duration::from_secs(5),
                "alice's request upstream",
                || async {
                    let alice = |r: &support::origin::Seen| {
                        r.headers.get("cookie").is_some_and(|v| v == "user=alice")
                    };
                    origin.seen().iter().filter(|r| alice(r)).count() == round + 1
                },
            )
            .await;
            let others = [("bob", get("bob")), ("carol", get("carol"))];
            wait_until(Duration::from_secs(5), "bob and carol waiting", || async {
                s.shared.cache.collapser().waiting() == 2
            })
            .await;
            gate.notify_one();
            let r = alice.await.unwrap();
            assert_eq!(r.text(), "{\"user\":\"alice\"}", "{cc:?} round {round}");
            for (user, task) in others {
                let r = task.await.unwrap();
                assert_eq!(r.status, 200, "{cc:?} round {round}");
                assert_eq!(
                    r.text(),
                    format!("{{\"user\":\"{user}\"}}"),
                    "{cc:?} round {round}: {}",
                    r.cache_status()
                );
            }
        }
    }
}

/// The followers of a `no-cache` entry's validation each validate the
/// stored copy themselves (`If-None-Match`, a `304` each), as they would
/// one at a time; they sent full unconditional requests, so a burst of
/// `/api/**` requests under the shipped `no-cache` rule took twice as
/// long (found by the regression probe).
#[tokio::test]
async fn followers_of_a_no_cache_validation_validate_it_themselves() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let held = Arc::new(AtomicBool::new(false));
    let h = held.clone();
    let origin = Origin::start(move |req| {
        let (g, h) = (g.clone(), h.clone());
        async move {
            let headers = [("cache-control", "no-cache"), ("etag", "\"same\"")];
            if support::origin::field(&req, "if-none-match") == "\"same\"" {
                // The first validation waits until the followers queued.
                if !h.swap(true, Ordering::SeqCst) {
                    g.notified().await;
                }
                return reply(304, &headers, "");
            }
            reply(200, &headers, "page")
        }
    })
    .await;
    let s = Arc::new(strata(&origin, "").await);
    assert!(Client::new()
        .get(&s.url("/nc"))
        .await
        .cache_status()
        .contains("stored"));
    let get = || {
        let url = s.url("/nc");
        tokio::spawn(async move { Client::new().get(&url).await })
    };
    let leader = get();
    wait_until(
        Duration::from_secs(5),
        "the leader's validation",
        || async { origin.count() == 2 },
    )
    .await;
    let followers: Vec<_> = (0..4).map(|_| get()).collect();
    wait_until(Duration::from_secs(5), "4 waiting", || async {
        s.shared.cache.collapser().waiting() == 4
    })
    .await;
    gate.notify_one();
    for t in std::iter::once(leader).chain(followers) {
        let r = t.await.unwrap();
        assert_eq!(r.text(), "page");
        assert!(
            r.cache_status().contains("fwd-status=304"),
            "{}",
            r.cache_status()
        );
    }
    let conditional = origin
        .seen()
        .iter()
        .filter(|r| r.headers.contains_key("if-none-match"))
        .count();
    assert_eq!((origin.count(), conditional), (6, 5), "one validation each");
}

/// A purge while a miss is fetched keeps its answer out of the cache, but
/// the requests collapsed onto it collapse again behind one new fetch,
/// which is stored (SPEC §3: concurrent misses make one upstream
/// request). They were released: 20 waiters made 20 upstream requests,
/// none stored (found by the invalidation and bug-replay probes).
#[tokio::test]
async fn a_purge_during_a_miss_sends_its_waiters_behind_one_new_fetch() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let first = Arc::new(AtomicBool::new(true));
    let origin = Origin::start(move |_req| {
        let (g, first) = (g.clone(), first.clone());
        async move {
            if first.swap(false, Ordering::SeqCst) {
                g.notified().await;
            }
            reply(200, &[("cache-control", "max-age=60")], "body")
        }
    })
    .await;
    let s = Arc::new(strata(&origin, "").await);
    let get = || {
        let url = s.url("/herd");
        tokio::spawn(async move { Client::new().get(&url).await })
    };
    let leader = get();
    wait_until(Duration::from_secs(5), "the leader upstream", || async {
        origin.count() == 1
    })
    .await;
    let waiters: Vec<_> = (0..10).map(|_| get()).collect();
    wait_until(Duration::from_secs(5), "10 waiting", || async {
        s.shared.cache.collapser().waiting() == 10
    })
    .await;
    let (status, _) = s.purge(r#"{"url":"/herd"}"#).await;
    assert_eq!(status, 200);
    gate.notify_one();
    let r = leader.await.unwrap();
    assert_eq!(r.text(), "body");
    // The purge came before the head: not reported `stored`.
    assert_eq!(r.cache_status(), "strata; fwd=miss");
    for w in waiters {
        let r = w.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "body");
    }
    assert_eq!(origin.count(), 2, "one new fetch after the purge");
    let r = Client::new().get(&s.url("/herd")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
}

#[tokio::test]
async fn uncacheable_requests_never_wait_on_each_other() {
    // After the first request, the origin answers only once 10 requests
    // are inside it at the same time: serialized requests never get there.
    let barrier = Arc::new(Barrier::new(10));
    let seen = Arc::new(AtomicUsize::new(0));
    let (b, n) = (barrier.clone(), seen.clone());
    let origin = Origin::start(move |_req| {
        let (b, n) = (b.clone(), n.clone());
        async move {
            if n.fetch_add(1, Ordering::SeqCst) > 0 {
                b.wait().await;
            }
            reply(200, &[("cache-control", "no-store")], "pass")
        }
    })
    .await;
    let s = strata(&origin, "").await;
    // The first response teaches the cache that the URL is uncacheable.
    assert_eq!(Client::new().get(&s.url("/nostore")).await.status, 200);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let url = s.url("/nostore");
            tokio::spawn(async move { Client::new().get(&url).await })
        })
        .collect();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("uncacheable requests run in parallel")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.cache_status(), "strata; fwd=bypass");
    }
    assert_eq!(origin.count(), 11);
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_in_background() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let origin = Origin::start(move |_req| {
        let k = n2.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            // Stored already 5 s stale, inside a 60 s SWR window.
            reply(
                200,
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=60"),
                    ("age", "15"),
                ],
                format!("v{k}"),
            )
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/swr")).await.text(), "v1");
    let r = c.get(&s.url("/swr")).await;
    assert_eq!(r.text(), "v1", "stale served at once");
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    // A stale copy is `outcome="stale"`, not a fresh tier hit (black-box
    // audit: SWR counted as a tier hit, a soft-purged copy did not).
    let metrics = c.get(&s.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("strata_cache_hits_total{tier=\"memory\"} 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("hits_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    wait_until(Duration::from_secs(5), "background refresh", || async {
        origin.count() == 2
    })
    .await;
    wait_until(Duration::from_secs(5), "refreshed entry served", || async {
        c.get(&s.url("/swr")).await.text() == "v2"
    })
    .await;
}

/// A background refresh whose answer may not be stored (the page was
/// deleted: a 404 without freshness; or it now says `no-store` or
/// `private`) removes the stale copy (RFC 9111 §4.3.3): clients get the
/// origin's answer next. It had kept serving the old 200 for the whole
/// stale-while-revalidate window, refetching on every hit (a replayed
/// nginx/Souin bug report).
#[tokio::test]
async fn an_unstorable_refresh_answer_ends_stale_while_revalidate() {
    for (status, cc) in [(404, ""), (200, "no-store"), (200, "private")] {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let origin = Origin::start(move |_req| {
            let first = n2.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    let h = [
                        ("cache-control", "max-age=10, stale-while-revalidate=60"),
                        ("age", "15"),
                    ];
                    return reply(200, &h, "old page");
                }
                let h: Vec<(&str, &str)> = if cc.is_empty() {
                    vec![]
                } else {
                    vec![("cache-control", cc)]
                };
                reply(status, &h, "new answer")
            }
        })
        .await;
        let s = strata(&origin, "").await;
        let c = Client::new();
        assert_eq!(c.get(&s.url("/p")).await.text(), "old page");
        let r = c.get(&s.url("/p")).await;
        assert_eq!(r.text(), "old page", "{status} {cc}: stale served at once");
        wait_until(
            Duration::from_secs(5),
            "the refresh's answer served",
            || async { c.get(&s.url("/p")).await.text() == "new answer" },
        )
        .await;
        let r = c.get(&s.url("/p")).await;
        assert_eq!(r.status, status, "{cc}");
        assert_eq!(r.text(), "new answer", "{cc}");
    }
}

/// An origin whose response is already stale when stored (`Age: 15`
/// against `max-age=10`), answering `fail_status` once `fail` is set.
async fn failing_origin(
    cc: &'static str,
    body: &'static str,
    fail_status: u16,
) -> (Origin, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    let origin = Origin::start(move |_req| {
        let failing = f.load(Ordering::SeqCst);
        async move {
            if failing {
                return reply(fail_status, &[], "upstream failure");
            }
            reply(200, &[("cache-control", cc), ("age", "15")], body)
        }
    })
    .await;
    (origin, fail)
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_and_on_a_dead_upstream() {
    let (origin, fail) = failing_origin("max-age=10, stale-if-error=600", "good", 500).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/sie")).await.text(), "good");
    fail.store(true, Ordering::SeqCst);
    let r = c.get(&s.url("/sie")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "good");
    assert!(
        r.cache_status().contains("stale-if-error"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().contains("fwd-status=500"));
    origin.shutdown();
    wait_until(Duration::from_secs(5), "origin gone", || async {
        tokio::net::TcpStream::connect(origin.addr).await.is_err()
    })
    .await;
    let r = c.get(&s.url("/sie")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "good");
    // Without stale-if-error, a dead upstream is an error.
    let r = c.get(&s.url("/never-stored")).await;
    assert_eq!(r.status, 502);
}

/// RFC 9111 §4.3.3: a 5xx in answer to a validation says nothing about the
/// resource. It is passed on (here `must-revalidate` forbids stale), but
/// the stored entry stays: once the origin is back, its 304 validates it
/// (it was deleted and the URL marked uncacheable, so the next request
/// went upstream unconditionally, `fwd=bypass`).
#[tokio::test]
async fn a_5xx_to_a_validation_keeps_the_stored_entry() {
    let mode = Arc::new(AtomicUsize::new(0)); // 0 good, 1 failing
    let m = mode.clone();
    let origin = Origin::start(move |req| {
        let failing = m.load(Ordering::SeqCst) == 1;
        let conditional = req.headers().contains_key("if-none-match");
        async move {
            let cc = ("cache-control", "max-age=0, must-revalidate");
            if failing {
                reply(500, &[], "down")
            } else if conditional {
                reply(304, &[cc, ("etag", "\"v1\"")], "")
            } else {
                reply(200, &[cc, ("etag", "\"v1\"")], "stored body")
            }
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/v")).await.text(), "stored body");
    mode.store(1, Ordering::SeqCst);
    let r = c.get(&s.url("/v")).await;
    assert_eq!(r.status, 500);
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    mode.store(0, Ordering::SeqCst);
    let r = c.get(&s.url("/v")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "stored body");
    assert!(
        r.cache_status().contains("fwd=stale") && r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let (origin, fail) =
        failing_origin("max-age=10, must-revalidate, stale-if-error=600", "x", 503).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/mr")).await;
    fail.store(true, Ordering::SeqCst);
    assert_eq!(c.get(&s.url("/mr")).await.status, 503);
}

/// RFC 9110 §4.2.3: `Host: example.com:80` and `Host: example.com` name
/// one resource, so they share one entry, and a purge of the URL without
/// the port removes what was stored through the port.
#[tokio::test]
async fn a_default_port_names_the_same_entry() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "body").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let with_port = [("host", "example.com:80")];
    let without = [("host", "Example.com")];
    assert!(c
        .get_with(&s.url("/port"), &with_port)
        .await
        .cache_status()
        .contains("fwd=miss"));
    assert!(c
        .get_with(&s.url("/port"), &without)
        .await
        .cache_status()
        .contains("hit"));
    assert_eq!(origin.count(), 1);
    assert_eq!(
        s.purge(r#"{"url": "http://example.com/port"}"#).await.1["purged"],
        1
    );
    assert!(c
        .get_with(&s.url("/port"), &with_port)
        .await
        .cache_status()
        .contains("fwd=miss"));
    assert_eq!(origin.count(), 2);
    // And the other way round: stored without the port, purged with it.
    assert_eq!(
        s.purge(r#"{"url": "http://example.com:80/port"}"#).await.1["purged"],
        1
    );
    // Another port is another origin.
    assert!(c
        .get_with(&s.url("/port"), &[("host", "example.com:8080")])
        .await
        .cache_status()
        .contains("fwd=miss"));
    assert_eq!(origin.count(), 3);
}

/// The origin sees the host the entry is keyed by (SPEC §10: one form for
/// key and upstream), in `Host`, `X-Forwarded-Host` and `Forwarded`: an
/// origin that builds a redirect from `Host: GOOD.example:80` stored
/// `Location: http://GOOD.example:80/` under the key of
/// `Host: good.example`, served to everyone (unkeyed-port poisoning; the
/// security probe's high finding).
#[tokio::test]
async fn the_origin_sees_the_host_as_keyed_so_host_spellings_cannot_poison() {
    let origin = Origin::start(|req| async move {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let location = format!("http://{}/", h("host"));
        let seen = format!("{}|{}|{}", h("host"), h("x-forwarded-host"), h("forwarded"));
        reply(
            301,
            &[("cache-control", "max-age=60"), ("location", &location)],
            seen,
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for (i, spelling) in [
        "GOOD.example:80",
        "good.example.",
        "good.example:",
        "Good.Example.:080",
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/r{i}");
        let attacker = c.get_with(&s.url(&path), &[("host", spelling)]).await;
        assert_eq!(attacker.status, 301);
        let text = attacker.text();
        assert!(
            text.starts_with("good.example|good.example|") && text.contains("host=good.example"),
            "{spelling}: the origin saw {text}"
        );
        let innocent = c.get_with(&s.url(&path), &[("host", "good.example")]).await;
        assert!(innocent.is_hit(), "{}", innocent.cache_status());
        assert_eq!(
            innocent.header("location"),
            Some("http://good.example/"),
            "{spelling}"
        );
    }
    // A port that is not the default stays: another origin, its own entry.
    let other = c
        .get_with(&s.url("/r9"), &[("host", "Good.Example:8080")])
        .await;
    assert!(
        other.text().starts_with("good.example:8080|"),
        "{}",
        other.text()
    );
}

#[tokio::test]
async fn tags_are_hidden_and_purges_work_by_tag_url_and_prefix() {
    let origin = Origin::start(|req| async move {
        let tag = if req.uri().path().starts_with("/t/") {
            "news sport"
        } else {
            "other"
        };
        reply(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-key", tag),
                ("cache-tag", "all"),
            ],
            "tagged",
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let r = c.get(&s.url("/t/1")).await;
    assert!(r.header("surrogate-key").is_none());
    assert!(r.header("cache-tag").is_none());
    for p in ["/t/2", "/u/1", "/u/2?q=1"] {
        c.get(&s.url(p)).await;
    }
    assert_eq!(
        s.purge(r#"{"tags": ["sport"]}"#).await,
        (200, serde_json::json!({"purged": 2}))
    );
    assert!(c
        .get(&s.url("/t/1"))
        .await
        .cache_status()
        .contains("fwd=miss"));
    assert!(c.get(&s.url("/u/1")).await.cache_status().contains("hit"));
    assert_eq!(s.purge(r#"{"url": "/u/1"}"#).await.1["purged"], 1);
    assert!(c
        .get(&s.url("/u/1"))
        .await
        .cache_status()
        .contains("fwd=miss"));
    let abs = format!(r#"{{"url": "http://{}/u/2?q=1"}}"#, s.addr);
    assert_eq!(s.purge(&abs).await.1["purged"], 1);
    // /t/1 was fetched again after the tag purge; /t/2 was not.
    assert_eq!(s.purge(r#"{"prefix": "/t/"}"#).await.1["purged"], 1);
    assert_eq!(s.purge(r#"{"tags": ["nothing"]}"#).await.1["purged"], 0);

    // Authentication and validation.
    let r = c
        .send(
            Method::POST,
            &s.admin_url("/purge"),
            &[],
            Bytes::from_static(br#"{"url": "/x"}"#),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = c
        .send(
            Method::POST,
            &s.admin_url("/purge"),
            &[("authorization", "Bearer wrong")],
            Bytes::from_static(br#"{"url": "/x"}"#),
        )
        .await;
    assert_eq!(r.status, 401);
    for bad in [
        r#"{"url": 5}"#,
        "not json",
        "{}",
        r#"{"url": "/a", "prefix": "/b"}"#,
        r#"{"tags": []}"#,
        r#"{"prefix": "x"}"#,
    ] {
        assert_eq!(s.purge(bad).await.0, 400, "{bad}");
    }
    // Not an object: the error says what is expected, not serde's
    // "expected struct PurgeBody".
    for bad in ["[]", "5", r#""/a""#] {
        let (status, answer) = s.purge(bad).await;
        assert_eq!(status, 400, "{bad}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("expected a JSON object"),
            "{bad}: {error}"
        );
    }
}

/// A tag with a space or a comma can never be stored (tags are split on
/// them), so a purge naming one is a `400` with `strata check`'s wording
/// for a cascade's `purge_tags` (it answered `200 {"purged": 0}`, leaving
/// the entries tagged `a` and `b` in place); so is a URL whose port no
/// request can carry. A tag is trimmed, as `check` trims it.
#[tokio::test]
async fn purge_refuses_tags_that_can_never_match_and_out_of_range_ports() {
    let origin = Origin::start(|_req| async move {
        reply(
            200,
            &[("cache-control", "max-age=60"), ("surrogate-key", "a b")],
            "tagged",
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/t")).await;
    for bad in [r#"["a b"]"#, r#"["a,b"]"#, r#"["a\tb"]"#, r#"["a", " "]"#] {
        let (status, answer) = s.purge(&format!(r#"{{"tags": {bad}}}"#)).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.ends_with(
                "]: expected a non-empty tag of visible ASCII characters, without commas"
            ),
            "{bad}: {error}"
        );
    }
    assert!(c.get(&s.url("/t")).await.cache_status().contains("hit"));
    for bad in ["http://h:99999/a", "http://h:65536/a"] {
        let (status, answer) = s.purge(&format!(r#"{{"url": "{bad}"}}"#)).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    assert_eq!(
        s.purge(r#"{"tags": [" a "]}"#).await,
        (200, serde_json::json!({"purged": 1}))
    );
}

#[tokio::test]
async fn storable_miss_streams_while_storing() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let origin = Origin::start(move |_req| {
        let g = g.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
            >(2);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(http_body::Frame::data(Bytes::from_static(b"first-"))))
                    .await;
                g.notified().await;
                let _ = tx
                    .send(Ok(http_body::Frame::data(Bytes::from_static(b"second"))))
                    .await;
            });
            let mut rx = rx;
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            let body: Body =
                http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream));
            let mut r = http::Response::new(body);
            r.headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            r
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let req = http::Request::get(s.url("/stream"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = Client::new().start(req).await;
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first-"));
    gate.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second"));
    let c = Client::new();
    wait_until(
        Duration::from_secs(5),
        "stored after the stream ended",
        || async {
            c.get(&s.url("/stream"))
                .await
                .cache_status()
                .contains("hit")
        },
    )
    .await;
    assert_eq!(c.get(&s.url("/stream")).await.text(), "first-second");
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn a_broken_upstream_body_is_never_stored() {
    let (addr, hits) = support::origin::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\ntruncated",
    )
    .await;
    let s = Strata::start(&[addr], NO_HEALTH).await;
    let c = Client::new();
    for _ in 0..2 {
        let req = http::Request::get(s.url("/broken"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = c.start(req).await;
        use http_body_util::BodyExt;
        let got = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .unwrap();
        assert!(got.is_err(), "the client sees a cut-off body");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the truncated response was not stored"
    );
}

#[tokio::test]
async fn only_if_cached_miss_is_504() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "x").await;
    let s = strata(&origin, "").await;
    let r = Client::new()
        .get_with(&s.url("/oic"), &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504);
    // Nothing went forward: no `fwd` parameter (RFC 9211 §2.2).
    assert_eq!(r.cache_status(), "strata; detail=only-if-cached");
    assert_eq!(origin.count(), 0);
}

#[tokio::test]
async fn request_no_cache_and_max_age_zero_revalidate() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60"), ("etag", "\"q\"")], "x").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/q")).await;
    let r = c
        .get_with(&s.url("/q"), &[("cache-control", "no-cache")])
        .await;
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
    let r = c.get_with(&s.url("/q"), &[("pragma", "no-cache")]).await;
    assert!(r.cache_status().contains("fwd=request"));
    // A fresh entry that only the request's max-age or min-fresh refuses
    // is `fwd=request` too (RFC 9211 §2.2), not `fwd=stale`.
    for directive in ["max-age=0", "min-fresh=120"] {
        let r = c
            .get_with(&s.url("/q"), &[("cache-control", directive)])
            .await;
        assert!(
            r.cache_status().contains("fwd=request"),
            "{directive}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), 5);
}

#[tokio::test]
async fn every_response_carries_cache_status() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "x").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert!(c
        .get(&s.url("/x"))
        .await
        .cache_status()
        .starts_with("strata; fwd="));
    let r = c.send(Method::POST, &s.url("/x"), &[], Bytes::new()).await;
    assert_eq!(r.cache_status(), "strata; fwd=method");
    let r = support::http::raw(s.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(r.to_ascii_lowercase().contains("cache-status: strata"));
}

// === large bodies: the body arena and sendfile ===

/// The process's body arena; `None` (saying so) on a host that cannot
/// have one (not Linux, or huge pages in shared memory: README, Large
/// bodies and sendfile). Anywhere else its absence fails the test.
fn arena_or_skip() -> Option<&'static strata::cache::arena::Arena> {
    if let Some(why) = strata::cache::arena::unsupported_here() {
        eprintln!("no body arena on this host ({why}): its checks are skipped");
        return None;
    }
    Some(strata::cache::arena::get().expect("an arena (Linux, sendfile on)"))
}

/// `len` bytes that differ from any other `seed`'s at most offsets.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

/// Reads `stream` to its end (bounded) and splits the HTTP/1.1 responses
/// in it (each with a Content-Length): `(head, body)` pairs.
async fn read_responses(stream: &mut tokio::net::TcpStream) -> Vec<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut all))
        .await
        .expect("responses within 20 s")
        .expect("read");
    let mut out = Vec::new();
    let mut rest = &all[..];
    while !rest.is_empty() {
        let (body, end) = support::http::first_response(rest).expect("a whole response");
        let head = String::from_utf8_lossy(&rest[..body]).to_ascii_lowercase();
        out.push((head, rest[body..end].to_vec()));
        rest = &rest[end..];
    }
    out
}

#[tokio::test]
async fn large_hits_are_sent_from_the_arena_byte_exact() {
    // Bodies of 16 to 64 KiB are stored in the shared-memory arena and
    // sent with sendfile; heads, small bodies, ranges and HTTP/2 frames
    // around them must come out in order and intact.
    let origin = Origin::start(|req| async move {
        let (seed, len) = match req.uri().path() {
            "/a" => (1, 60_000),
            "/b" => (2, 20_000),
            _ => (3, 1000),
        };
        reply(
            200,
            &[
                ("cache-control", "public, max-age=600"),
                ("content-type", "application/octet-stream"),
            ],
            pattern(seed, len),
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for (path, seed, len) in [("/a", 1, 60_000), ("/b", 2, 20_000), ("/small", 3, 1000)] {
        let r = c.get(&s.url(path)).await;
        assert_eq!(r.status, 200);
        assert!(r.body == pattern(seed, len), "{path} on its miss");
    }
    let host = s.addr.to_string();
    // Where the bodies live (the byte-exact checks below hold either way).
    if let Some(arena) = arena_or_skip() {
        let stored = |path: &str| {
            let key = strata::cache::key::CacheKey::new(false, &host, path);
            let object = s.shared.cache.memory().get_key(&key).expect("stored");
            object.variants[0].body.clone()
        };
        assert!(arena.locate(&stored("/a")).is_some());
        assert!(arena.locate(&stored("/b")).is_some());
        assert_eq!(
            arena.locate(&stored("/small")),
            None,
            "small bodies stay on the heap"
        );
    }

    // Pipelined on one connection: large, small, large, and a range of a
    // large one (a slice of the stored body, from an offset).
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let requests = format!(
        "GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /b HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /a HTTP/1.1\r\nHost: {host}\r\nRange: bytes=1001-50000\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(requests.as_bytes()).await.unwrap();
    let responses = read_responses(&mut conn).await;
    assert_eq!(responses.len(), 4);
    let expected = [
        ("http/1.1 200", pattern(1, 60_000)),
        ("http/1.1 200", pattern(3, 1000)),
        ("http/1.1 200", pattern(2, 20_000)),
        ("http/1.1 206", pattern(1, 60_000)[1001..=50000].to_vec()),
    ];
    for (i, ((head, body), (status, want))) in responses.iter().zip(&expected).enumerate() {
        assert!(head.starts_with(status), "response {i}: {head}");
        assert!(
            head.contains("cache-status: strata; hit"),
            "response {i}: {head}"
        );
        assert!(body == want, "response {i}: body differs");
    }

    // HTTP/2 (prior knowledge): DATA frames chain the stored body.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let resp = h2
        .request(
            http::Request::get(s.url("/a"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body == pattern(1, 60_000), "h2 body differs");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn a_large_hit_in_flight_survives_its_purge_and_the_reuse_of_its_pages() {
    // sendfile queues references to the arena's pages. A body that is
    // purged (and its range given to the next body) while the client has
    // not read it yet must still arrive as it was: freed ranges are
    // punched out of the file, never overwritten in place.
    const LEN: usize = 57_000; // 14 pages: a size no other test uses
    let origin = Origin::start(|req| async move {
        let byte = if req.uri().path() == "/old" {
            b'o'
        } else {
            b'n'
        };
        reply(
            200,
            &[("cache-control", "public, max-age=600")],
            vec![byte; LEN],
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let host = s.addr.to_string();
    let Some(arena) = arena_or_skip() else {
        return;
    };
    let offset_of = |path: &str| {
        let key = strata::cache::key::CacheKey::new(false, &host, path);
        let object = s.shared.cache.memory().get_key(&key)?;
        arena.locate(&object.variants[0].body)
    };
    assert_eq!(c.get(&s.url("/old")).await.body.len(), LEN);
    let old = offset_of("/old").expect("/old in the arena");

    // A hit the client does not read: the whole response fits in the
    // socket buffers, so Strata is done with it at once.
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1 << 20).unwrap();
    let mut reader = socket.connect(s.addr).await.unwrap();
    reader
        .write_all(
            format!("GET /old HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    // The answer has begun (the hit holds the body) before the purge.
    tokio::time::timeout(Duration::from_secs(10), reader.peek(&mut [0u8; 1]))
        .await
        .expect("an answer within 10 s")
        .unwrap();

    // Purge it; then store /new until it lands on /old's pages (once the
    // hit above has let go of them).
    let (status, _) = s.purge(&format!(r#"{{"url": "{}"}}"#, s.url("/old"))).await;
    assert_eq!(status, 200);
    wait_until(
        Duration::from_secs(10),
        "/new stored on /old's pages",
        || async {
            s.purge(&format!(r#"{{"url": "{}"}}"#, s.url("/new"))).await;
            let r = c.get(&s.url("/new")).await;
            assert!(r.body.iter().all(|&b| b == b'n'));
            offset_of("/new") == Some(old)
        },
    )
    .await;

    let responses = read_responses(&mut reader).await;
    assert_eq!(responses.len(), 1);
    let (head, body) = &responses[0];
    assert!(head.contains("cache-status: strata; hit"), "{head}");
    assert_eq!(body.len(), LEN);
    assert!(
        body.iter().all(|&b| b == b'o'),
        "{} bytes of the purged body were overwritten",
        body.iter().filter(|&&b| b != b'o').count()
    );
}

/// An origin answering 8 chunks of 16 KiB without `Content-Length`
/// (`max-age=60`, `ETag: "big"`), and a Strata whose `max_object_size`
/// (64 KiB) the body outgrows.
async fn oversize_without_length() -> (Origin, Strata) {
    let origin = Origin::start(|_req| async move {
        use futures_util::StreamExt;
        let chunks = futures_util::stream::iter(0..8u8).map(|i| Bytes::from(vec![b'a' + i; 16384]));
        support::origin::streamed(
            &[("cache-control", "max-age=60"), ("etag", "\"big\"")],
            chunks,
        )
    })
    .await;
    let s = strata(&origin, "[cache]\nmax_object_size = \"64KiB\"\n").await;
    (origin, s)
}

/// A conditional or range request on a miss whose body has no length and
/// turns out larger than `max_object_size`: not stored, and answered
/// anyway (it got 502): preconditions against the upstream's head, else
/// the full body streamed (the range ignored, as RFC 9110 §14.2 allows).
#[tokio::test]
async fn a_conditional_miss_too_large_to_store_is_still_answered() {
    let (_origin, s) = oversize_without_length().await;
    let c = Client::new();
    let expected: Vec<u8> = (0..8u8).flat_map(|i| vec![b'a' + i; 16384]).collect();
    for (i, headers) in [
        &[("if-none-match", "\"other\"")][..],
        &[("range", "bytes=0-9")][..],
    ]
    .into_iter()
    .enumerate()
    {
        let r = c.get_with(&s.url(&format!("/full{i}")), headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.cache_status());
        assert_eq!(r.body.len(), expected.len(), "{headers:?}");
        assert!(r.body[..] == expected[..], "{headers:?}");
        assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
    }
    let r = c
        .get_with(&s.url("/match"), &[("if-none-match", "\"big\"")])
        .await;
    assert_eq!(r.status, 304, "{}", r.cache_status());
    assert_eq!(r.header("etag"), Some("\"big\""));
}

/// A body without a length that outgrew `max_object_size` marks its URL
/// hit-for-miss for the mark's whole minute, as one whose `Content-Length`
/// is too large does: later answers look storable by their fields, and
/// each lifted the mark, so every other request collected the body again
/// (`fwd=miss; stored`) and every other HEAD went upstream as a GET of the
/// whole body (found by the content-coding probe).
#[tokio::test]
async fn an_oversize_body_without_a_length_stays_hit_for_miss() {
    let (origin, s) = oversize_without_length().await;
    let c = Client::new();
    let url = s.url("/big");
    let r = c.get(&url).await;
    assert_eq!(r.body.len(), 8 * 16384);
    for method in [
        Method::GET,
        Method::GET,
        Method::HEAD,
        Method::GET,
        Method::HEAD,
    ] {
        let r = c.send(method.clone(), &url, &[], Bytes::new()).await;
        assert_eq!(r.status, 200);
        assert!(
            r.cache_status().contains("fwd=bypass"),
            "{method}: {}",
            r.cache_status()
        );
        let seen = origin.last().expect("a request upstream");
        assert_eq!(seen.method, method, "forwarded as it came");
    }
    assert_eq!(origin.count(), 6);
}

/// SPEC §6: an entry is visible once its client response is complete. A
/// client that reads a storable miss to its last byte (`Content-Length`
/// framing, so the client knows it is complete) and at once sends the
/// next request on the same connection gets a hit, never `collapsed` onto
/// the finished fetch. Two workers, so that the client's connection can be
/// writing while the admission task takes the last chunk; a large body
/// makes the window wide (the admission copies it into one allocation
/// after the last chunk came in). Without the fix about 1 in 10 of these
/// second requests was `collapsed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_right_after_a_complete_miss_is_a_hit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(|_req| async move {
        use futures_util::StreamExt;
        let most = Bytes::from(vec![b'x'; (8 << 20) - 1]);
        let last = futures_util::stream::once(async { Bytes::from_static(b"x") });
        support::origin::streamed(
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "application/octet-stream"),
                ("content-length", "8388608"),
            ],
            futures_util::stream::iter([most]).chain(last),
        )
    })
    .await;
    let s = strata(&origin, "[cache]\nmax_object_size = \"64MiB\"\n").await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    let mut read = [0u8; 65536];
    for i in 0..30 {
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let head = format!("GET /big{i} HTTP/1.1\r\nHost: t\r\n\r\n");
            conn.write_all(head.as_bytes()).await.unwrap();
            let (start, end) = loop {
                if let Some(r) = support::http::first_response(&buf) {
                    break r;
                }
                let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut read))
                    .await
                    .expect("response within 10 s")
                    .unwrap();
                assert!(n > 0, "connection closed");
                buf.extend_from_slice(&read[..n]);
            };
            assert_eq!(end - start, 8 << 20);
            let head = String::from_utf8_lossy(&buf[..start]).to_ascii_lowercase();
            let status = head
                .lines()
                .find_map(|l| l.strip_prefix("cache-status:"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            statuses.push(status);
            buf.drain(..end);
        }
        assert!(statuses[0].contains("fwd=miss"), "{statuses:?}");
        assert!(statuses[1].contains("; hit"), "request {i}: {statuses:?}");
    }
    assert_eq!(origin.count(), 30);
    // The upstream connection went back to the pool each time although the
    // admission stopped reading at the declared length.
    assert_eq!(origin.connections(), 1);
}

/// A storable miss is read from the origin at the origin's speed, not its
/// client's. It was read only as fast as the client it was fetched for
/// took it, so a client reading slowly but steadily (never stalled for
/// `send_timeout`) kept the object out of the cache for its whole
/// download, and every collapsed request for the URL waited
/// `collapse_timeout` and then went upstream itself. Now, once the origin
/// has sent the whole body, the object is stored and a request is a hit
/// while the slow client is still reading; the slow client still gets
/// every byte, and the origin is asked once.
#[tokio::test]
async fn a_slow_client_does_not_keep_its_miss_out_of_the_cache() {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LEN: usize = 8 << 20;
    const CHUNK: usize = 64 << 10;
    let body = Bytes::from(pattern(7, LEN));
    let sent = Arc::new(AtomicBool::new(false));
    let origin = {
        let (body, sent) = (body.clone(), sent.clone());
        Origin::start(move |_req| {
            let (body, sent) = (body.clone(), sent.clone());
            async move {
                // The flag is set when the origin's server asks for the
                // last chunk: everything before it has been handed over.
                let chunks = futures_util::stream::iter((0..LEN).step_by(CHUNK)).map(move |at| {
                    if at + CHUNK >= LEN {
                        sent.store(true, Ordering::SeqCst);
                    }
                    body.slice(at..LEN.min(at + CHUNK))
                });
                support::origin::streamed(
                    &[
                        ("cache-control", "max-age=60"),
                        ("content-type", "application/octet-stream"),
                        ("content-length", &LEN.to_string()),
                    ],
                    chunks,
                )
            }
        })
        .await
    };
    let s = strata(&origin, "[cache]\nmax_object_size = \"64MiB\"\n").await;

    // The slow client: a small receive buffer, 2 KiB every 20 ms (about
    // 100 KB/s, far from send_timeout) until told to read on at full speed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(s.addr).await.unwrap();
    let host = s.addr.to_string();
    conn.write_all(format!("GET /slow HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let progress = Arc::new(AtomicUsize::new(0));
    let fast = Arc::new(AtomicBool::new(false));
    let reader = {
        let (progress, fast) = (progress.clone(), fast.clone());
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                if let Some((start, end)) = support::http::first_response(&got) {
                    return (got[..start].to_vec(), got[start..end].to_vec());
                }
                let slow = !fast.load(Ordering::SeqCst);
                let want = if slow { 2048 } else { buf.len() };
                let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf[..want]))
                    .await
                    .expect("a byte within 30 s")
                    .unwrap();
                assert!(n > 0, "connection closed after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
                progress.store(got.len(), Ordering::SeqCst);
                if slow {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };

    wait_until(
        Duration::from_secs(10),
        "the origin to send the whole body",
        || {
            let sent = sent.load(Ordering::SeqCst);
            async move { sent }
        },
    )
    .await;
    let key = strata::cache::key::CacheKey::new(false, &host, "/slow");
    wait_until(Duration::from_secs(10), "the object stored", || {
        let stored = s.shared.cache.memory().get_key(&key).is_some();
        async move { stored }
    })
    .await;
    let c = Client::new();
    let r = c.get(&s.url("/slow")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert!(r.body == body, "the hit's body");
    assert!(
        progress.load(Ordering::SeqCst) < LEN,
        "the slow client is still reading"
    );

    fast.store(true, Ordering::SeqCst);
    let (head, got) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the slow client's body within 30 s")
        .unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("fwd=miss"), "{head}");
    assert!(got == body, "the slow client's body");
    assert_eq!(origin.count(), 1);
}

/// The paths an origin has answered, to answer each path's first request
/// differently from the later ones.
#[derive(Clone, Default)]
struct SeenPaths(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl SeenPaths {
    fn first(&self, path: &str) -> bool {
        self.0.lock().unwrap().insert(path.to_owned())
    }
}

/// RFC 9111 §4.3.4: a 304 updates only the stored response its validator
/// names. An origin that compares only `If-Modified-Since` answers 304
/// with its new tag; that must not freshen the old body under the new tag
/// (it did: the old body was served as `"v2"` for a minute). Strata asks
/// again without conditions and stores what comes back. Each path's first
/// response is stored already stale (`Age` beyond `max-age`).
#[tokio::test]
async fn a_304_naming_another_validator_updates_nothing() {
    const LM: &str = "Mon, 30 Nov 2026 10:00:00 GMT";
    const LATER: &str = "Mon, 30 Nov 2026 12:00:00 GMT";
    let served = SeenPaths::default();
    let origin = Origin::start(move |req| {
        let served = served.clone();
        async move {
            let path = req.uri().path().to_owned();
            // (first response's validator, the 304's, the new response's)
            type Fields = &'static [(&'static str, &'static str)];
            let (old, not_modified, new): (Fields, Fields, Fields) = match path.as_str() {
                "/strong" => (
                    &[("etag", "\"v1\"")],
                    &[("etag", "\"v2\"")],
                    &[("etag", "\"v2\"")],
                ),
                "/weak" => (
                    &[("etag", "W/\"v1\"")],
                    &[("etag", "W/\"v2\"")],
                    &[("etag", "W/\"v2\"")],
                ),
                "/date" => (
                    &[("last-modified", LM)],
                    &[("last-modified", LATER)],
                    &[("last-modified", LATER)],
                ),
                "/bare" => (&[("etag", "\"v1\"")], &[], &[("etag", "\"v2\"")]),
                _ => (
                    &[("etag", "\"v1\"")],
                    &[("etag", "\"v1\"")],
                    &[("etag", "\"v1\"")],
                ),
            };
            let conditional = req.headers().contains_key("if-none-match")
                || req.headers().contains_key("if-modified-since");
            let first = served.first(&path);
            if first {
                let mut h = vec![("cache-control", "max-age=10"), ("age", "20")];
                h.extend_from_slice(old);
                return reply(200, &h, "old body");
            }
            let mut h = vec![("cache-control", "max-age=60")];
            if conditional {
                h.extend_from_slice(not_modified);
                return reply(304, &h, "");
            }
            h.extend_from_slice(new);
            reply(200, &h, "new body")
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for (path, tag) in [
        ("/strong", Some("\"v2\"")),
        ("/weak", Some("W/\"v2\"")),
        ("/date", None),
    ] {
        assert_eq!(c.get(&s.url(path)).await.text(), "old body");
        let before = origin.count();
        let r = c.get(&s.url(path)).await;
        assert_eq!(r.text(), "new body", "{path}");
        assert_eq!(r.header("etag"), tag, "{path}");
        assert!(
            r.cache_status().contains("fwd=stale"),
            "{path}: {}",
            r.cache_status()
        );
        assert!(
            !r.cache_status().contains("fwd-status=304"),
            "{path}: {}",
            r.cache_status()
        );
        // The conditional request, then the unconditional one.
        assert_eq!(origin.count(), before + 2, "{path}");
        let last = origin.last().unwrap();
        assert!(!last.headers.contains_key("if-none-match"), "{path}");
        assert!(!last.headers.contains_key("if-modified-since"), "{path}");
        // Stored: the next request is a hit with the new body.
        let r = c.get(&s.url(path)).await;
        assert!(
            r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
        assert_eq!(r.text(), "new body", "{path}");
    }
    // A 304 with the stored tag still freshens the stored body, and so
    // does one without any validator (an origin that does not repeat the
    // ETag, RFC 9110 §15.4.5): it answers the one response Strata asked
    // about (it had been fetched whole again).
    for path in ["/same", "/bare"] {
        assert_eq!(c.get(&s.url(path)).await.text(), "old body");
        let before = origin.count();
        let r = c.get(&s.url(path)).await;
        assert_eq!(r.text(), "old body", "{path}");
        assert!(
            r.cache_status().contains("fwd=stale; fwd-status=304"),
            "{path}: {}",
            r.cache_status()
        );
        assert_eq!(origin.count(), before + 1, "{path}");
    }
}

/// Hit-for-miss (Varnish's): an uncacheable answer marks the URL so that
/// requests skip the collapse wait, but a storable answer lifts the mark.
/// After an origin error (`500`, no Cache-Control) or a `private` answer,
/// a cacheable response was fetched again and again for 60 s and never
/// stored.
#[tokio::test]
async fn a_storable_answer_lifts_the_hit_for_miss_mark() {
    let served = SeenPaths::default();
    let origin = Origin::start(move |req| {
        let served = served.clone();
        async move {
            let path = req.uri().path().to_owned();
            let first = served.first(&path);
            match (first, path.as_str()) {
                (_, "/mine") => reply(200, &[("cache-control", "private")], "mine"),
                (true, "/err") => reply(500, &[], "error"),
                (true, _) => reply(200, &[("cache-control", "private")], "mine"),
                (false, _) => reply(200, &[("cache-control", "max-age=300")], "shared"),
            }
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/err", "/private"] {
        let r = c.get(&s.url(path)).await;
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{path}: {}",
            r.cache_status()
        );
        // Marked: straight upstream, and the answer is cacheable now.
        let r = c.get(&s.url(path)).await;
        assert_eq!(r.text(), "shared");
        assert!(
            r.cache_status().contains("fwd=bypass"),
            "{path}: {}",
            r.cache_status()
        );
        // The mark is lifted: a miss that is stored, then hits.
        let r = c.get(&s.url(path)).await;
        assert_eq!(r.text(), "shared");
        assert!(
            r.cache_status().contains("fwd=miss; stored"),
            "{path}: {}",
            r.cache_status()
        );
        let before = origin.count();
        let r = c.get(&s.url(path)).await;
        assert!(
            r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
        assert_eq!(origin.count(), before);
    }
    // Still uncacheable: the mark stays.
    let r = c.get(&s.url("/mine")).await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    for _ in 0..2 {
        let r = c.get(&s.url("/mine")).await;
        assert!(
            r.cache_status().contains("fwd=bypass"),
            "{}",
            r.cache_status()
        );
    }
}

/// The bodies being collected for admission have a budget (a quarter of
/// `memory_capacity`, at least 8 MiB; one body of any size when alone).
/// While a 9 MiB body is collected through a 32 MiB tier, a 1 MiB miss
/// streams to its client whole and is not stored (a range request on one
/// gets its range cut from the stream, as on a body too large to store);
/// once the large
/// one is stored, the same URL is stored again.
#[tokio::test]
async fn a_miss_over_the_collecting_budget_streams_unstored_and_is_stored_later() {
    let gate = Arc::new(Notify::new());
    let origin = gated_origin(gate.clone(), |_path| {
        support::origin::reply(200, &[("cache-control", "max-age=60")], vec![b's'; 1 << 20])
    })
    .await;
    let s = strata(&origin, "[cache]\nmemory_capacity = \"32MiB\"\n").await;
    let big = fill_the_budget(&s).await;
    let c = Client::new();
    for (path, headers) in [
        ("/small", &[][..]),
        ("/ranged", &[("range", "bytes=0-9")][..]),
    ] {
        let r = c.get_with(&s.url(path), headers).await;
        if headers.is_empty() {
            assert_eq!(r.status, 200, "{path}: {}", r.cache_status());
            assert_eq!(r.body.len(), 1 << 20, "{path}");
        } else {
            // The range is cut from the stream (its length is known).
            assert_eq!(r.status, 206, "{path}: {}", r.cache_status());
            assert_eq!(r.body, vec![b's'; 10], "{path}");
        }
        assert!(
            !r.cache_status().contains("stored"),
            "{path}: {}",
            r.cache_status()
        );
        let again = c.get(&s.url(path)).await;
        assert!(
            !again.cache_status().contains("hit"),
            "{path}: {}",
            again.cache_status()
        );
    }
    // Each of the four is counted (an operator's sign of a full budget).
    let metrics = c.get(&s.admin_url("/metrics")).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "strata_admission_shed_total{reason=\"busy\"} 4"),
        "{metrics}"
    );
    gate.notify_one();
    let r = big.await.unwrap();
    assert_eq!(r.body.len(), GATED);
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    assert_eq!(s.shared.cache.collecting().used(), 0);
    let r = c.get(&s.url("/small")).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let r = c.get(&s.url("/small")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
}

/// A slow client of a body without a length that turns out larger than
/// `max_object_size` (8 MiB of 12) gets every byte once, in order, when
/// the admission stops storing it and streams on.
#[tokio::test]
async fn a_slow_client_of_a_body_too_large_to_store_gets_it_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CHUNKS: usize = 192;
    const CHUNK: usize = 64 << 10;
    let pulled = Arc::new(AtomicUsize::new(0));
    let origin = {
        let pulled = pulled.clone();
        Origin::start(move |_req| {
            use futures_util::StreamExt;
            let pulled = pulled.clone();
            let chunks = futures_util::stream::iter(0..CHUNKS).map(move |i| {
                pulled.fetch_add(1, Ordering::SeqCst);
                Bytes::from(vec![i as u8; CHUNK])
            });
            async move { support::origin::streamed(&[("cache-control", "max-age=60")], chunks) }
        })
        .await
    };
    let s = strata(&origin, "[cache]\nmax_object_size = \"8MiB\"\n").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut slow = socket.connect(s.addr).await.unwrap();
    let get = format!(
        "GET /chunked HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.addr
    );
    slow.write_all(get.as_bytes()).await.unwrap();
    // Read nothing until the admission has read past the limit (more
    // than the kernel's buffers and the client channel hold).
    wait_until(Duration::from_secs(10), "8 MiB read upstream", || {
        let n = pulled.load(Ordering::SeqCst);
        async move { n * CHUNK > 8 << 20 }
    })
    .await;
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).await.unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    // Chunked transfer coding: collect the data of each chunk.
    let mut body = Vec::new();
    let mut rest = &raw[head_end..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
    let expected: Vec<u8> = (0..CHUNKS).flat_map(|i| vec![i as u8; CHUNK]).collect();
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "bytes lost, repeated or out of order");
}

/// A body larger than what the collecting budget has left gets its turn
/// under a steady stream of smaller misses: the budget keeps room for it
/// once it is refused, so the next request for it is stored. Four clients
/// keep 1 MiB misses (each streamed over ~60 ms) in flight through a
/// 32 MiB tier (an 8 MiB budget) while a 12 MiB object is asked for until
/// it is a hit.
#[tokio::test]
async fn a_large_body_is_stored_under_a_steady_stream_of_small_misses() {
    const LARGE: usize = 12 << 20;
    let origin = Origin::start(|req| async move {
        use futures_util::StreamExt;
        let headers = [("cache-control", "max-age=60")];
        if req.uri().path() == "/large" {
            return support::origin::reply(200, &headers, vec![b'l'; LARGE]);
        }
        // 1 MiB in four chunks 20 ms apart, with its length declared.
        let chunks = futures_util::stream::iter(0..4).then(|i| async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Bytes::from(vec![b's'; 256 << 10])
        });
        let mut r = support::origin::streamed(&headers, chunks);
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from(1 << 20));
        r
    })
    .await;
    let s = strata(&origin, "[cache]\nmemory_capacity = \"32MiB\"\n").await;
    let running = Arc::new(AtomicBool::new(true));
    let loopers: Vec<_> = (0..4)
        .map(|n| {
            let (running, base) = (running.clone(), s.url(&format!("/small/{n}/")));
            tokio::spawn(async move {
                let c = Client::new();
                let mut i = 0;
                while running.load(Ordering::SeqCst) {
                    let r = c.get(&format!("{base}{i}")).await;
                    assert_eq!(r.body.len(), 1 << 20);
                    i += 1;
                }
            })
        })
        .collect();
    let c = Client::new();
    wait_until(
        Duration::from_secs(20),
        "the large object a hit",
        || async {
            let r = c.get(&s.url("/large")).await;
            assert_eq!(r.body.len(), LARGE);
            r.cache_status().contains("hit")
        },
    )
    .await;
    running.store(false, Ordering::SeqCst);
    for l in loopers {
        l.await.unwrap();
    }
}

/// A background refresh that finds no room in the collecting budget holds
/// the entry's next refresh back for a second, so the hits meanwhile do not each start
/// another full upstream fetch (thrown away): while a 9 MiB body is being
/// collected through a 32 MiB tier, five hits on a stale-while-revalidate
/// entry of 1 MiB make one refresh, not five.
#[tokio::test]
async fn a_refresh_with_no_room_is_not_retried_on_every_hit() {
    let gate = Arc::new(Notify::new());
    let origin = gated_origin(gate.clone(), |_path| {
        support::origin::reply(
            200,
            &[("cache-control", "max-age=1, stale-while-revalidate=60")],
            vec![b's'; 1 << 20],
        )
    })
    .await;
    let s = strata(&origin, "[cache]\nmemory_capacity = \"32MiB\"\n").await;
    let c = Client::new();
    assert!(c
        .get(&s.url("/swr"))
        .await
        .cache_status()
        .contains("stored"));
    let big = fill_the_budget(&s).await;
    // The first stale hit starts a refresh, which finds no room.
    wait_until(Duration::from_secs(10), "the entry stale", || async {
        c.get(&s.url("/swr")).await.cache_status().contains("ttl=-")
    })
    .await;
    let swr_seen = || origin.seen().iter().filter(|r| r.path == "/swr").count();
    wait_until(Duration::from_secs(5), "the first refresh", || {
        let n = swr_seen();
        async move { n == 2 }
    })
    .await;
    let first = std::time::Instant::now();
    for _ in 0..4 {
        let r = c.get(&s.url("/swr")).await;
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    }
    let within_backoff = first.elapsed() < Duration::from_millis(900);
    // Every refresh lock given back.
    wait_until(Duration::from_secs(5), "the refresh locks released", || {
        let locks = s.shared.cache.collapser().in_flight();
        async move { locks == 1 } // the large body's own
    })
    .await;
    let refreshes = swr_seen() - 1;
    if within_backoff {
        assert_eq!(refreshes, 1);
    } else {
        // A machine so loaded that four local hits took most of a second.
        assert!(refreshes <= 2, "{refreshes}");
    }
    gate.notify_one();
    assert_eq!(big.await.unwrap().body.len(), GATED);
}

/// A 9 MiB body (no length) whose last byte is sent once `gate` is
/// notified: it holds 9 MiB of the collecting budget until then.
const GATED: usize = 9 << 20;

fn gated_response(gate: Arc<Notify>) -> http::Response<support::origin::Body> {
    use futures_util::StreamExt;
    let head = futures_util::stream::iter([Bytes::from(vec![b'b'; GATED - 1])]);
    let last = futures_util::stream::once(async move {
        gate.notified().await;
        Bytes::from_static(b"b")
    });
    support::origin::streamed(&[("cache-control", "max-age=60")], head.chain(last))
}

/// An origin answering `/big` with a [`gated_response`], any other path
/// with `other(path)`.
async fn gated_origin(
    gate: Arc<Notify>,
    other: fn(&str) -> http::Response<support::origin::Body>,
) -> Origin {
    Origin::start(move |req| {
        let response = match req.uri().path() {
            "/big" => gated_response(gate.clone()),
            path => other(path),
        };
        async move { response }
    })
    .await
}

/// Requests `/big` (a [`gated_response`]) in the background and waits until
/// its body fills the collecting budget; the task answers once the gate
/// is opened.
async fn fill_the_budget(s: &Strata) -> tokio::task::JoinHandle<support::Reply> {
    let big = {
        let url = s.url("/big");
        tokio::spawn(async move { Client::new().get(&url).await })
    };
    let collecting = s.shared.cache.collecting().clone();
    wait_until(Duration::from_secs(10), "the large body collected", || {
        let used = collecting.used();
        async move { used >= GATED - 1 }
    })
    .await;
    big
}

/// brotli's working memory (four bytes per byte of body, up to 32 MiB) is
/// counted against the collecting budget while it encodes; without room
/// for it the object is stored with gzip only. Here a 9 MiB body being
/// collected leaves 7 MiB of a 64 MiB tier's 16 MiB budget, which a
/// 2 MiB text body fits and its brotli encoding (8 MiB) does not.
#[tokio::test]
async fn brotli_is_left_out_when_its_working_memory_has_no_room() {
    let gate = Arc::new(Notify::new());
    let origin = gated_origin(gate.clone(), |_path| {
        let text = "<p>compressible text</p>\n".repeat((2 << 20) / 26);
        support::origin::reply(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "text/html"),
            ],
            text,
        )
    })
    .await;
    let s = strata(&origin, "[cache]\nmemory_capacity = \"64MiB\"\n").await;
    let big = fill_the_budget(&s).await;
    let c = Client::new();
    assert!(c
        .get(&s.url("/text"))
        .await
        .cache_status()
        .contains("stored"));
    wait_until(
        Duration::from_secs(10),
        "the gzip representation",
        || async {
            let r = c
                .get_with(&s.url("/text"), &[("accept-encoding", "gzip")])
                .await;
            r.header("content-encoding") == Some("gzip")
        },
    )
    .await;
    let r = c
        .get_with(&s.url("/text"), &[("accept-encoding", "br")])
        .await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_ne!(r.header("content-encoding"), Some("br"));
    let metrics = c.get(&s.admin_url("/metrics")).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "strata_admission_shed_total{reason=\"brotli_memory\"} 1"),
        "{metrics}"
    );
    gate.notify_one();
    assert_eq!(big.await.unwrap().body.len(), GATED);
    // With room, a new object gets both.
    c.get(&s.url("/text2")).await;
    wait_until(Duration::from_secs(10), "the br representation", || async {
        let r = c
            .get_with(&s.url("/text2"), &[("accept-encoding", "br")])
            .await;
        r.header("content-encoding") == Some("br")
    })
    .await;
}

/// A response that left the origin before a purge or a write of its URL
/// (its fetch began before them, it arrives after) is served to its
/// request but not stored: storing it would undo them. Without the check
/// the next request was a hit on it until its lifetime ran out.
#[tokio::test]
async fn a_response_fetched_across_a_purge_or_a_write_is_not_stored() {
    let gate = Arc::new(Notify::new());
    let hold = Arc::new(AtomicBool::new(true));
    let gets = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (gate, hold, gets) = (gate.clone(), hold.clone(), gets.clone());
        Origin::start(move |req| {
            let (gate, hold, gets) = (gate.clone(), hold.clone(), gets.clone());
            async move {
                if req.method() != Method::GET {
                    return reply(204, &[], "");
                }
                gets.fetch_add(1, Ordering::SeqCst);
                if hold.swap(false, Ordering::SeqCst) {
                    gate.notified().await;
                }
                reply(200, &[("cache-control", "max-age=60")], "before")
            }
        })
        .await
    };
    let s = strata(&origin, "").await;
    let c = Client::new();
    // A purge that selects other URLs (tags, prefixes: a CMS may send one
    // a second) stores it all the same.
    for (path, removal) in [
        ("/purged", "purge"),
        ("/written", "put"),
        ("/kept", "other purges"),
    ] {
        hold.store(true, Ordering::SeqCst);
        let before = gets.load(Ordering::SeqCst);
        let fetch = {
            let url = s.url(path);
            tokio::spawn(async move { Client::new().get(&url).await })
        };
        wait_until(Duration::from_secs(10), "the fetch at the origin", || {
            let n = gets.load(Ordering::SeqCst);
            async move { n > before }
        })
        .await;
        if removal == "purge" {
            let (status, _) = s.purge(&format!(r#"{{"url": "{path}"}}"#)).await;
            assert_eq!(status, 200);
        } else if removal == "other purges" {
            for body in [r#"{"tags": ["other"]}"#, r#"{"prefix": "/elsewhere/"}"#] {
                assert_eq!(s.purge(body).await.0, 200);
            }
        } else {
            let r = c
                .send(Method::PUT, &s.url(path), &[], Bytes::from_static(b"new"))
                .await;
            assert_eq!(r.status, 204);
        }
        gate.notify_one();
        let r = fetch.await.unwrap();
        assert_eq!(
            (r.status.as_u16(), &r.body[..]),
            (200, &b"before"[..]),
            "{path}"
        );
        let r = c.get(&s.url(path)).await;
        let expected = if removal == "other purges" {
            "hit"
        } else {
            "fwd=miss"
        };
        assert!(
            r.cache_status().contains(expected),
            "{path} after the {removal}: {}",
            r.cache_status()
        );
        let r = c.get(&s.url(path)).await;
        assert!(
            r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
    }
}

/// A revalidation (`304`) that crossed a purge of its URL is not stored,
/// and a request made after the purge that waited on it fetches for
/// itself instead of getting the refreshed pre-purge copy.
#[tokio::test]
async fn a_revalidation_across_a_purge_is_not_handed_to_later_requests() {
    let gate = Arc::new(Notify::new());
    let purged = Arc::new(AtomicBool::new(false));
    let conditional = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (gate, purged, conditional) = (gate.clone(), purged.clone(), conditional.clone());
        Origin::start(move |req| {
            let (gate, purged, conditional) = (gate.clone(), purged.clone(), conditional.clone());
            async move {
                if req.headers().get("if-none-match").is_some() {
                    // Decided before the purge, answered after it.
                    conditional.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    let fields = [("cache-control", "max-age=60"), ("etag", "\"e1\"")];
                    return reply(304, &fields, "");
                }
                let body = if purged.load(Ordering::SeqCst) {
                    "after"
                } else {
                    "before"
                };
                // Stale at once: the next request revalidates it.
                let fields = [
                    ("cache-control", "max-age=10"),
                    ("age", "20"),
                    ("etag", "\"e1\""),
                ];
                reply(200, &fields, body)
            }
        })
        .await
    };
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/r")).await.text(), "before");
    let revalidating = {
        let url = s.url("/r");
        tokio::spawn(async move { Client::new().get(&url).await })
    };
    wait_until(
        Duration::from_secs(10),
        "the revalidation at the origin",
        || {
            let n = conditional.load(Ordering::SeqCst);
            async move { n == 1 }
        },
    )
    .await;
    purged.store(true, Ordering::SeqCst);
    assert_eq!(s.purge(r#"{"url": "/r"}"#).await.0, 200);
    // After the purge: a miss that waits on the revalidation in flight.
    let after = {
        let url = s.url("/r");
        tokio::spawn(async move { Client::new().get(&url).await })
    };
    let collapser = s.shared.cache.collapser().clone();
    wait_until(Duration::from_secs(10), "the request waiting", || {
        let n = collapser.waiting();
        async move { n == 1 }
    })
    .await;
    gate.notify_one();
    assert_eq!(revalidating.await.unwrap().text(), "before");
    let r = after.await.unwrap();
    assert_eq!(
        r.text(),
        "after",
        "a request made after the purge got the pre-purge copy: {}",
        r.cache_status()
    );
    let r = c.get(&s.url("/r")).await;
    assert_eq!(r.text(), "after", "{}", r.cache_status());
}

/// The tags of `path`'s stored variants in `s`'s memory tier (`None`
/// when it holds no object for the URL).
fn stored_tags(s: &Strata, path: &str) -> Option<Vec<Vec<String>>> {
    let key = strata::cache::key::CacheKey::new(false, &s.addr.to_string(), path);
    let object = s.shared.cache.memory().get_key(&key)?;
    Some(object.variants.iter().map(|v| v.tags.clone()).collect())
}

/// RFC 9111 §4.3.4: the tag fields a 304 carries replace the stored
/// tags, so a tag purge selects the entry by the tags its stored response
/// carries now (README, Admin API); a 304 without them keeps them (bug
/// replay: a 304 bringing `Surrogate-Key: new` left the entry tagged
/// `old`, and purging `new` answered `{"purged":0}`).
#[tokio::test]
async fn a_304_replaces_the_tags_it_carries_and_keeps_absent_ones() {
    let origin = Origin::start(|req| async move {
        if req.headers().contains_key("if-none-match") {
            let mut fields = vec![("cache-control", "max-age=60"), ("etag", "\"t\"")];
            if req.uri().path() == "/retag" {
                fields.extend([("surrogate-key", "new"), ("cache-tag", "newer")]);
            }
            return reply(304, &fields, "");
        }
        // Age: 20 > max-age=10: stored already stale.
        reply(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("age", "20"),
                ("etag", "\"t\""),
                ("surrogate-key", "old"),
            ],
            "tagged",
        )
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/retag", "/keep"] {
        let r = c.get(&s.url(path)).await;
        assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
        let r = c.get(&s.url(path)).await;
        assert!(
            r.cache_status().contains("fwd=stale; fwd-status=304"),
            "{path}: {}",
            r.cache_status()
        );
        assert_eq!(r.header("surrogate-key"), None);
        assert_eq!(r.header("cache-tag"), None);
    }
    assert_eq!(origin.count(), 4);
    assert_eq!(
        stored_tags(&s, "/retag"),
        Some(vec![vec!["new".into(), "newer".into()]])
    );
    assert_eq!(stored_tags(&s, "/keep"), Some(vec![vec!["old".into()]]));
    // `old` now tags /keep only; `new` tags /retag.
    let (status, answer) = s.purge(r#"{"tags": ["old"]}"#).await;
    assert_eq!(
        (status, &answer["purged"]),
        (200, &Value::from(1)),
        "{answer}"
    );
    assert!(stored_tags(&s, "/retag").is_some(), "untouched by `old`");
    let (status, answer) = s.purge(r#"{"tags": ["new"]}"#).await;
    assert_eq!(
        (status, &answer["purged"]),
        (200, &Value::from(1)),
        "{answer}"
    );
    let r = c.get(&s.url("/retag")).await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 5);
}

/// The background 304s (stale-while-revalidate, soft purge) replace the
/// stored tags as a synchronous revalidation does: each refresh here
/// brings the tag `t{n}` (`n` counting the 304s).
#[tokio::test]
async fn background_304s_replace_the_tags_too() {
    let refreshes = Arc::new(AtomicUsize::new(0));
    let counted = refreshes.clone();
    let origin = Origin::start(move |req| {
        let counted = counted.clone();
        async move {
            if req.headers().contains_key("if-none-match") {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let tag = format!("t{n}");
                return reply(
                    304,
                    &[
                        ("cache-control", "max-age=60"),
                        ("etag", "\"b\""),
                        ("surrogate-key", &tag),
                    ],
                    "",
                );
            }
            // Stale at once, inside stale-while-revalidate.
            reply(
                200,
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=60"),
                    ("age", "20"),
                    ("etag", "\"b\""),
                    ("surrogate-key", "t0"),
                ],
                "swr",
            )
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let tagged = |n: &str| Some(vec![vec![n.to_string()]]);
    assert!(c.get(&s.url("/bg")).await.cache_status().contains("stored"));
    let r = c.get(&s.url("/bg")).await;
    assert_eq!(r.text(), "swr");
    wait_until(
        Duration::from_secs(10),
        "the refresh's tags stored",
        || async { stored_tags(&s, "/bg") == tagged("t1") },
    )
    .await;
    let (_, answer) = s.purge(r#"{"url": "/bg", "soft": true}"#).await;
    assert_eq!(answer["purged"], 1, "{answer}");
    let r = c.get(&s.url("/bg")).await;
    assert_eq!(r.text(), "swr");
    wait_until(
        Duration::from_secs(10),
        "the soft purge's refresh's tags stored",
        || async { stored_tags(&s, "/bg") == tagged("t2") },
    )
    .await;
    let (_, answer) = s.purge(r#"{"tags": ["t2"]}"#).await;
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(refreshes.load(Ordering::SeqCst), 2);
}

/// An origin whose first answer (`page-for-1`) varies on `Accept-Language`
/// and is stored already stale; a revalidation of it is a 304 that widens
/// `Vary` to `Accept-Language, Cookie` (`Vary: *` for `/star`), held until
/// `open` says true; later full answers vary on both, their body naming
/// the request's cookie.
async fn widening_vary_origin(open: tokio::sync::watch::Receiver<bool>) -> Origin {
    let first = Arc::new(AtomicBool::new(true));
    Origin::start(move |req| {
        let (first, mut open) = (first.clone(), open.clone());
        async move {
            if req.headers().contains_key("if-none-match") {
                let _ = open.wait_for(|open| *open).await;
                let vary = if req.uri().path() == "/star" {
                    "*"
                } else {
                    "Accept-Language, Cookie"
                };
                return reply(
                    304,
                    &[
                        ("cache-control", "max-age=60"),
                        ("etag", "\"p\""),
                        ("vary", vary),
                    ],
                    "",
                );
            }
            if first.swap(false, Ordering::SeqCst) {
                // Age: 20 > max-age=10: stored already stale.
                return reply(
                    200,
                    &[
                        ("cache-control", "max-age=10"),
                        ("age", "20"),
                        ("etag", "\"p\""),
                        ("vary", "Accept-Language"),
                    ],
                    "page-for-1",
                );
            }
            let cookie = support::origin::field(&req, "cookie");
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"q\""),
                    ("vary", "Accept-Language, Cookie"),
                ],
                format!("page-for-{cookie}"),
            )
        }
    })
    .await
}

const EN: (&str, &str) = ("accept-language", "en");
const ALICE: (&str, &str) = ("cookie", "user=alice");
const BOB: (&str, &str) = ("cookie", "user=bob");

/// RFC 9111 §4.1 with §4.3.4: a `Vary` that arrives on a 304 selects, as
/// it is sent: the updated response is the one stored for the request
/// that was validated (its `Cookie` now among the selecting values), so a
/// request with another cookie, or none, is not served it (bug replay:
/// alice's revalidated copy, sent with `Vary: Accept-Language, Cookie`,
/// was a hit for bob and for a request without a cookie).
#[tokio::test]
async fn a_vary_on_a_304_selects_by_the_validated_request() {
    let (_open, gate) = tokio::sync::watch::channel(true);
    let origin = widening_vary_origin(gate).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let url = s.url("/vc");
    let r = c.get_with(&url, &[EN]).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let r = c.get_with(&url, &[EN, ALICE]).await;
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.text(), "page-for-1");
    assert_eq!(r.header("vary"), Some("Accept-Language, Cookie"));
    let r = c.get_with(&url, &[EN, BOB]).await;
    assert!(!r.is_hit(), "bob is not alice: {}", r.cache_status());
    assert_eq!(r.text(), "page-for-user=bob");
    assert_eq!(origin.count(), 3);
    assert_eq!(origin.last().unwrap().headers["cookie"], "user=bob");
    let r = c.get_with(&url, &[EN]).await;
    assert!(
        !r.is_hit(),
        "no cookie is not alice's: {}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 4);
    // Each request is now a hit on its own variant.
    for (cookie, body) in [(ALICE, "page-for-1"), (BOB, "page-for-user=bob")] {
        let r = c.get_with(&url, &[EN, cookie]).await;
        assert!(r.is_hit(), "{cookie:?}: {}", r.cache_status());
        assert_eq!(r.text(), body);
    }
    assert_eq!(origin.count(), 4);
}

/// A 304 that says `Vary: *` answers its own request, and the stored
/// response it updated is used for no later one (RFC 9111 §4.1).
#[tokio::test]
async fn a_304_saying_vary_star_ends_the_entry() {
    let (_open, gate) = tokio::sync::watch::channel(true);
    let origin = widening_vary_origin(gate).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let url = s.url("/star");
    assert!(c
        .get_with(&url, &[EN])
        .await
        .cache_status()
        .contains("stored"));
    let r = c.get_with(&url, &[EN]).await;
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.text(), "page-for-1");
    let r = c.get_with(&url, &[EN]).await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 3);
}

/// An invalid `Last-Modified` is no validator (RFC 9110 §8.8.2): it is
/// never sent back as `If-Modified-Since` (it was, on every request), and
/// without explicit freshness it gives no reason to store the response.
#[tokio::test]
async fn an_invalid_last_modified_is_no_validator() {
    let conditionals = Arc::new(AtomicUsize::new(0));
    let seen = conditionals.clone();
    let origin = Origin::start(move |req| {
        if req.headers().contains_key("if-modified-since") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            let mut fields = vec![("last-modified", "yesterday")];
            if req.uri().path() == "/stale" {
                fields.push(("cache-control", "max-age=0"));
            }
            reply(200, &fields, "lm")
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/heuristic", "/stale"] {
        for _ in 0..3 {
            let r = c.get(&s.url(path)).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(!r.is_hit(), "{path}: {}", r.cache_status());
        }
    }
    assert_eq!(origin.count(), 6);
    assert_eq!(conditionals.load(Ordering::SeqCst), 0);
}

/// A 304 that says `private` or `no-store` removes the stored copy, and
/// its `Cache-Status` reports no `ttl` for it (it said `ttl=100` and
/// `ttl=-1` for an entry no longer there).
#[tokio::test]
async fn a_304_that_ends_the_entry_reports_no_ttl() {
    let origin = Origin::start(|req| async move {
        let cc = if req.uri().path() == "/private" {
            "private, max-age=100"
        } else {
            "no-store"
        };
        if req.headers().contains_key("if-none-match") {
            return reply(304, &[("cache-control", cc), ("etag", "\"p\"")], "");
        }
        // Age 20 > max-age 10: stored already stale.
        let fields = [
            ("cache-control", "max-age=10"),
            ("age", "20"),
            ("etag", "\"p\""),
        ];
        reply(200, &fields, "p")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/private", "/no-store"] {
        c.get(&s.url(path)).await;
        let r = c.get(&s.url(path)).await;
        let status = r.cache_status();
        assert!(status.contains("fwd-status=304"), "{path}: {status}");
        assert!(!status.contains("ttl="), "{path}: {status}");
        let r = c.get(&s.url(path)).await;
        assert!(!r.is_hit(), "{path}: {}", r.cache_status());
    }
}

/// A request collapsed onto another's validation whose 304 widens `Vary`
/// is not answered with the validated request's copy unless it matches it
/// too: bob, waiting on alice's validation, goes to the origin with his
/// own cookie.
#[tokio::test]
async fn a_waiter_on_a_304_that_widens_vary_is_selected_anew() {
    let (open, gate) = tokio::sync::watch::channel(false);
    let origin = widening_vary_origin(gate).await;
    let s = Arc::new(strata(&origin, "").await);
    let url = s.url("/vw");
    let r = Client::new().get_with(&url, &[EN]).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let get = |cookie: (&'static str, &'static str)| {
        let url = url.clone();
        tokio::spawn(async move { Client::new().get_with(&url, &[EN, cookie]).await })
    };
    let alice = get(ALICE);
    wait_until(
        Duration::from_secs(5),
        "alice's validation at the origin",
        || async { origin.count() == 2 },
    )
    .await;
    let bob = get(BOB);
    wait_until(Duration::from_secs(5), "bob waiting on it", || async {
        s.shared.cache.collapser().waiting() == 1
    })
    .await;
    open.send_replace(true);
    let alice = alice.await.unwrap();
    assert!(
        alice.cache_status().contains("fwd-status=304"),
        "{}",
        alice.cache_status()
    );
    let bob = bob.await.unwrap();
    assert!(
        !bob.cache_status().contains("collapsed"),
        "{}",
        bob.cache_status()
    );
    assert_eq!(origin.count(), 3, "bob's own request");
    assert_eq!(origin.last().unwrap().headers["cookie"], "user=bob");
    // Each is stored for its own cookie.
    for cookie in [ALICE, BOB] {
        let r = Client::new().get_with(&url, &[EN, cookie]).await;
        assert!(r.is_hit(), "{cookie:?}: {}", r.cache_status());
    }
    assert_eq!(origin.count(), 3);
}

/// RFC 9111 §4.1: a background refresh (stale-while-revalidate) answered
/// with a 200 whose `Vary` names other fields stores it under the
/// refreshing request's values of those fields, not the old variant's:
/// alice's refreshed page, sent with `Vary: Accept-Language, Cookie`, is
/// no hit for bob (bug replay: it was stored under `Accept-Language: en`
/// alone, and bob was served alice's page).
#[tokio::test]
async fn a_refresh_whose_vary_names_other_fields_selects_by_the_refreshing_request() {
    let first = Arc::new(AtomicBool::new(true));
    let origin = Origin::start(move |req| {
        let first = first.clone();
        async move {
            if first.swap(false, Ordering::SeqCst) {
                // Age: 20 > max-age=10, within stale-while-revalidate.
                return reply(
                    200,
                    &[
                        ("cache-control", "max-age=10, stale-while-revalidate=600"),
                        ("age", "20"),
                        ("etag", "\"p\""),
                        ("vary", "Accept-Language"),
                    ],
                    "page-for-1",
                );
            }
            let cookie = support::origin::field(&req, "cookie");
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"q\""),
                    ("vary", "Accept-Language, Cookie"),
                ],
                format!("page-for-{cookie}"),
            )
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let url = s.url("/swr-vary");
    let r = c.get_with(&url, &[EN]).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    // Served stale; the refresh goes in the background with alice's cookie.
    let r = c.get_with(&url, &[EN, ALICE]).await;
    assert_eq!(r.text(), "page-for-1");
    wait_until(
        Duration::from_secs(5),
        "alice's refreshed page stored",
        || async {
            let r = c.get_with(&url, &[EN, ALICE]).await;
            r.is_hit() && r.text() == "page-for-user=alice"
        },
    )
    .await;
    assert_eq!(origin.count(), 2);
    let r = c.get_with(&url, &[EN, BOB]).await;
    assert!(!r.is_hit(), "bob is not alice: {}", r.cache_status());
    assert_eq!(r.text(), "page-for-user=bob");
    assert_eq!(origin.count(), 3);
    let r = c.get_with(&url, &[EN]).await;
    assert!(
        !r.is_hit(),
        "no cookie is not alice's: {}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 4);
}

/// A fully qualified host's root dot names the same site (nginx's `$host`
/// drops it): `Host: example.com.` is keyed as `example.com`, so a purge
/// of `http://example.com/x` reaches it. It had an entry of its own that
/// the purge left serving.
#[tokio::test]
async fn a_hosts_trailing_dot_is_keyed_without_it() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let url = s.url("/dot");
    let get = |host: &'static str| {
        let (c, url) = (&c, url.clone());
        async move { c.get_with(&url, &[("host", host)]).await }
    };
    assert!(!get("example.com").await.is_hit());
    for host in ["example.com.", "EXAMPLE.COM.", "example.com.:80"] {
        let r = get(host).await;
        assert!(r.is_hit(), "{host}: {}", r.cache_status());
    }
    let (status, answer) = s.purge(r#"{"url": "http://example.com/dot"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(answer["purged"], 1);
    let after = get("example.com.").await;
    assert!(!after.is_hit(), "{}", after.cache_status());
    // An empty label, or nothing but the root, names no host (nginx: 400);
    // each had an entry of its own.
    for host in ["example.com..", "."] {
        assert_eq!(get(host).await.status, 400, "{host}");
    }
    assert_eq!(origin.count(), 2);
}

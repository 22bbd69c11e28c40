//! Rules end to end (SPEC §10, §7): what a rule can and cannot override,
//! the TTL keys and the key options, against real origins that count
//! requests.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::origin::reply;
use support::{Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

/// The `[[rules]]` of the shipped `config/strata.toml`, verbatim.
fn shipped_rules() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/strata.toml"))
        .expect("shipped config");
    let start = text.find("[[rules]]").expect("shipped rules");
    let end = text[start..]
        .find("\n[log]")
        .or_else(|| text[start..].find("\n[compression]"))
        .expect("a section after the rules");
    text[start..start + end].to_string()
}

async fn strata(origin: &Origin, extra: &str) -> Strata {
    Strata::start(&[origin.addr], &format!("{NO_HEALTH}{extra}")).await
}

/// An origin that signs users in: a request with a session cookie or
/// `Authorization` gets that user's page, `private` with a fresh
/// `Set-Cookie`; an anonymous one gets the public page.
async fn signing_in_origin(cache_control: &'static str) -> Origin {
    Origin::start(move |req| async move {
        let user = req
            .headers()
            .get("authorization")
            .or_else(|| req.headers().get("cookie"))
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.rsplit('=')
                    .next()
                    .unwrap_or(v)
                    .rsplit(' ')
                    .next()
                    .unwrap_or(v)
                    .to_string()
            });
        match user {
            Some(user) => {
                let mut headers = vec![("set-cookie", "session=s3cr3t-alice; HttpOnly")];
                if !cache_control.is_empty() {
                    headers.push(("cache-control", cache_control));
                }
                reply(200, &headers, format!("account page of {user}"))
            }
            None => reply(200, &[("cache-control", "max-age=60")], "anonymous page"),
        }
    })
    .await
}

#[tokio::test]
async fn shipped_rules_never_share_a_signed_in_page() {
    // private + Set-Cookie, Set-Cookie alone, and Authorization with a
    // lifetime but nothing that makes it shareable.
    for origin_cc in ["private", "", "max-age=600"] {
        let origin = signing_in_origin(origin_cc).await;
        let s = strata(&origin, &shipped_rules()).await;
        let c = Client::new();
        let alice = c
            .get_with(
                &s.url("/private/me.html"),
                &[
                    ("authorization", "Bearer alice"),
                    ("cookie", "session=alice"),
                ],
            )
            .await;
        assert_eq!(alice.text(), "account page of alice", "{origin_cc:?}");
        assert!(
            !alice.cache_status().contains("stored"),
            "{origin_cc:?}: {}",
            alice.cache_status()
        );
        // The client gets the origin's own Cache-Control, not the rule's.
        let expected = (!origin_cc.is_empty()).then_some(origin_cc);
        assert_eq!(alice.header("cache-control"), expected, "{origin_cc:?}");
        for _ in 0..2 {
            let anon = c.get(&s.url("/private/me.html")).await;
            assert_eq!(anon.text(), "anonymous page", "{origin_cc:?}");
            assert!(
                anon.header("set-cookie").is_none(),
                "{origin_cc:?}: a cookie leaked"
            );
        }
        // Alice's page never answered anyone else (the URL may be passed
        // to the origin for a while: hit-for-miss).
        assert!(origin.count() >= 2, "{origin_cc:?}");
    }
}

#[tokio::test]
async fn set_cookie_is_shared_only_when_the_origin_says_public() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "public, max-age=60"),
            ("set-cookie", "lang=en"),
        ],
        "public page",
    )
    .await;
    let s = strata(&origin, &shipped_rules()).await;
    let c = Client::new();
    c.get(&s.url("/page.html")).await;
    let r = c.get(&s.url("/page.html")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn an_authorization_request_is_stored_when_the_origin_allows_it() {
    let origin = Origin::fixed(&[("cache-control", "s-maxage=60")], "shared api answer").await;
    let s = strata(&origin, &shipped_rules()).await;
    let c = Client::new();
    c.get_with(&s.url("/docs/a.html"), &[("authorization", "Bearer a")])
        .await;
    let r = c.get(&s.url("/docs/a.html")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    // The rule's lifetime applies once the origin allowed storing.
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
}

/// RFC 9111 §3.5: an answer to an `Authorization` request that the origin
/// let be shared only through `must-revalidate` keeps the origin's
/// lifetime and `must-revalidate` under a rule; the rule's
/// `public, max-age=31536000, immutable` served one user's authenticated
/// answer to anonymous clients for a year, never revalidated (security
/// probe). With `s-maxage` (above) or `public` the rule applies.
#[tokio::test]
async fn a_rule_does_not_stretch_an_authenticated_answer_shared_by_must_revalidate() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=60, must-revalidate")],
        "alice's data",
    )
    .await;
    let s = strata(&origin, &shipped_rules()).await;
    let c = Client::new();
    let first = c
        .get_with(
            &s.url("/assets/me.css"),
            &[("authorization", "Bearer alice")],
        )
        .await;
    assert!(
        first.cache_status().contains("stored; ttl=60"),
        "{}",
        first.cache_status()
    );
    assert_eq!(
        first.header("cache-control"),
        Some("max-age=60, must-revalidate")
    );
    let other = c.get(&s.url("/assets/me.css")).await;
    assert!(other.is_hit(), "{}", other.cache_status());
    assert_eq!(
        other.header("cache-control"),
        Some("max-age=60, must-revalidate")
    );
    assert!(
        !other.cache_status().contains("ttl=31"),
        "{}",
        other.cache_status()
    );
}

#[tokio::test]
async fn errors_are_not_stored_under_lifetime_rules() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let origin = Origin::start(move |req| {
        h.fetch_add(1, Ordering::SeqCst);
        async move {
            match req.uri().path() {
                "/assets/missing.js" => reply(404, &[], "not found"),
                "/assets/broken.js" => reply(500, &[], "boom"),
                "/assets/gone.js" => reply(302, &[("location", "/assets/new.js")], ""),
                _ => reply(200, &[], "app"),
            }
        }
    })
    .await;
    let s = strata(&origin, &shipped_rules()).await;
    let c = Client::new();
    for (path, status) in [
        ("/assets/missing.js", 404),
        ("/assets/broken.js", 500),
        ("/assets/gone.js", 302),
    ] {
        for _ in 0..2 {
            let r = c.get(&s.url(path)).await;
            assert_eq!(r.status, status, "{path}");
            assert!(
                !r.cache_status().contains("hit"),
                "{path}: {}",
                r.cache_status()
            );
            assert_ne!(
                r.header("cache-control"),
                Some("public, max-age=31536000, immutable"),
                "{path}"
            );
        }
    }
    assert_eq!(origin.count(), 6, "every error went to the origin");
    // A success under the same rule is stored with the rule's lifetime.
    c.get(&s.url("/assets/app.js")).await;
    let r = c.get(&s.url("/assets/app.js")).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(origin.count(), 7);
}

/// SPEC §2: a rule's `cache_control` is what the client gets on every
/// response under it, including those that pass the cache by: a URL
/// remembered as uncacheable, and a `no-store` rule; within SPEC §10 (an
/// origin's `private` stays).
#[tokio::test]
async fn a_rules_cache_control_reaches_the_client_on_passed_responses_too() {
    let origin = Origin::start(|req| async move {
        let cc: &[(&str, &str)] = if req.uri().path().starts_with("/api/me") {
            &[
                ("cache-control", "private"),
                ("content-type", "application/json"),
            ]
        } else {
            &[("content-type", "application/json")]
        };
        reply(200, cc, "{}")
    })
    .await;
    let s = strata(&origin, &shipped_rules()).await;
    let c = Client::new();
    // `/api/**` says no-cache; the origin gives no freshness or validator,
    // so the first response is not stored and the URL is then passed.
    for i in 0..3 {
        let r = c.get(&s.url("/api/items")).await;
        assert_eq!(r.header("cache-control"), Some("no-cache"), "request {i}");
        assert!(!r.cache_status().contains("hit"), "request {i}");
    }
    for i in 0..2 {
        let r = c.get(&s.url("/api/me")).await;
        assert_eq!(r.header("cache-control"), Some("private"), "request {i}");
    }
    assert_eq!(origin.count(), 5);
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/nostore/**\"\ncache_control = \"no-store\"\n",
    )
    .await;
    let r = c.get(&s.url("/nostore/a")).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.cache_status().contains("fwd=bypass"),
        "{}",
        r.cache_status()
    );
}

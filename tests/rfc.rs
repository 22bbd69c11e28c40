//! SPEC §6, cache side, end to end: exact freshness (sub-second ages,
//! invalid Expires, Age lists), grace, targeted Cache-Control (RFC 9213),
//! Vary kept byte for byte, and entries visible (and purgeable) as soon as
//! the client's response is complete. Real origins count every request.

mod support;

use std::time::Duration;

use support::origin::reply;
use support::{http_date, Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

async fn strata(origin: &Origin, extra: &str) -> Strata {
    Strata::start(&[origin.addr], &format!("{NO_HEALTH}{extra}")).await
}

/// An origin answering each path with the headers `headers_for(path)`
/// (name, value pairs, repeated names kept) and the body `path`.
async fn origin_with(headers_for: fn(&str) -> Vec<(String, String)>) -> Origin {
    Origin::start(move |req| async move {
        let path = req.uri().path().to_string();
        let owned = headers_for(&path);
        let pairs: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        reply(200, &pairs, path.clone())
    })
    .await
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Responses whose freshness lifetime is zero: never a hit, however soon
/// the second request comes.
fn already_stale(path: &str) -> Vec<(String, String)> {
    let date = http_date(0);
    let later = http_date(3600);
    let mut h = vec![("date".to_string(), date.clone())];
    h.extend(match path {
        "/max-age-0" => pairs(&[("cache-control", "max-age=0"), ("etag", "\"a\"")]),
        "/public-max-age-0" => pairs(&[
            ("cache-control", "public, max-age=0"),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]),
        "/expires-0" => pairs(&[("expires", "0"), ("etag", "\"a\"")]),
        "/max-age-negative" => pairs(&[("cache-control", "max-age=-1"), ("etag", "\"a\"")]),
        "/expires-at-date" => vec![("expires".into(), date.clone())],
        "/two-spaces" => vec![("expires".into(), later.replacen(' ', "  ", 2))],
        "/dashes" => vec![(
            "expires".into(),
            later.replacen(' ', "-", 3).replacen('-', " ", 1),
        )],
        "/periods" => vec![("expires".into(), later.replace(':', "."))],
        "/one-digit-hour" => pairs(&[("expires", "Sun, 06 Nov 2050 8:49:37 GMT")]),
        "/two-expires" => vec![("expires".into(), later.clone()), ("expires".into(), later)],
        _ => pairs(&[("cache-control", "max-age=60")]),
    });
    h
}

#[tokio::test]
async fn zero_lifetimes_are_never_served_as_hits() {
    let origin = origin_with(already_stale).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let paths = [
        "/max-age-0",
        "/public-max-age-0",
        "/expires-0",
        "/max-age-negative",
        "/expires-at-date",
        "/two-spaces",
        "/dashes",
        "/periods",
        "/one-digit-hour",
        "/two-expires",
    ];
    for path in paths {
        let before = origin.count();
        let first = c.get(&s.url(path)).await;
        assert_eq!(first.status, 200, "{path}");
        let second = c.get(&s.url(path)).await;
        assert_eq!(second.status, 200, "{path}");
        assert_eq!(second.text(), path);
        assert!(
            !second.cache_status().contains("hit"),
            "{path}: {}",
            second.cache_status()
        );
        assert_eq!(
            origin.count(),
            before + 2,
            "{path} went to the origin twice"
        );
    }
    // The control: a real lifetime is a hit.
    c.get(&s.url("/fresh")).await;
    let hit = c.get(&s.url("/fresh")).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
}

/// RFC 9110 §5.6.7 asks recipients to be robust: an `Expires` an hour
/// ahead with names in the wrong case or a day name that does not fit the
/// date (origins with a buggy formatter send these; nginx and Varnish read
/// them) gives an hour of freshness, as cache-tests.fyi's optimal
/// `freshness-expires-wrong-case-*` and `-ansi-c` tests expect. Each was
/// read as invalid, so already stale.
#[tokio::test]
async fn an_expires_with_odd_case_or_a_wrong_day_name_still_gives_freshness() {
    fn expires(path: &str) -> Vec<(String, String)> {
        let later = http_date(3600);
        let day = &later[..3];
        let other_day = if day == "Mon" { "Tue" } else { "Mon" };
        let value = match path {
            "/upper-month" => {
                let month = &later[8..11];
                later.replacen(month, &month.to_ascii_uppercase(), 1)
            }
            "/lower-zone" => later.replace("GMT", "gmt"),
            "/upper-day" => later.replacen(day, &day.to_ascii_uppercase(), 1),
            _ => later.replacen(day, other_day, 1),
        };
        vec![("expires".into(), value)]
    }
    let origin = origin_with(expires).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/upper-month", "/lower-zone", "/upper-day", "/wrong-day"] {
        let first = c.get(&s.url(path)).await;
        assert!(
            first.cache_status().contains("stored; ttl=3"),
            "{path}: {}",
            first.cache_status()
        );
        let second = c.get(&s.url(path)).await;
        assert!(second.is_hit(), "{path}: {}", second.cache_status());
    }
    assert_eq!(origin.count(), 4);
    // A request's precondition is read exactly (RFC 9110 §13.1.3: one that
    // is not a valid HTTP-date is ignored): 8 August 2050 was a Monday.
    for (ims, status) in [
        ("Mon, 08 Aug 2050 02:01:18 GMT", 304),
        ("Thu, 08 Aug 2050 02:01:18 GMT", 200),
        ("MON, 08 AUG 2050 02:01:18 GMT", 200),
    ] {
        let r = c
            .get_with(&s.url("/upper-month"), &[("if-modified-since", ims)])
            .await;
        assert_eq!(r.status, status, "{ims}");
    }
}

#[tokio::test]
async fn max_age_counts_sub_second_ages() {
    let origin = Origin::fixed(&[("cache-control", "max-age=2")], "two").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/a")).await.text(), "two");
    let hit = c.get(&s.url("/a")).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    // 2.3 s after receipt the whole-second age is 2 but the entry is stale.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let late = c.get(&s.url("/a")).await;
    assert_eq!(late.text(), "two");
    assert!(
        late.cache_status().contains("fwd=stale"),
        "{}",
        late.cache_status()
    );
    assert_eq!(origin.count(), 2);
}

fn aged(path: &str) -> Vec<(String, String)> {
    let mut h = pairs(&[("cache-control", "max-age=20")]);
    match path {
        "/list" => h.push(("age".into(), "30, 0".into())),
        "/lines" => {
            h.push(("age".into(), "30".into()));
            h.push(("age".into(), "0".into()));
        }
        "/huge" => h.push(("age".into(), "4294967297".into())),
        "/invalid-first" => h.push(("age".into(), "old, 30".into())),
        "/fraction" => h.push(("age".into(), "30.5".into())),
        "/negative" => h.push(("age".into(), "-30".into())),
        _ => {}
    }
    h
}

#[tokio::test]
async fn age_lists_use_the_first_member_and_bad_values_are_ignored() {
    let origin = origin_with(aged).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    // The miss itself sends one Age, as computed (what its hits send):
    // never the origin's list, two lines or a bad value.
    let age_of = |r: &support::http::Reply| -> Vec<String> {
        r.headers
            .get_all("age")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    // Already older than max-age=20: stale on arrival.
    for (path, age) in [("/list", "30"), ("/lines", "30"), ("/huge", "2147483648")] {
        let first = c.get(&s.url(path)).await;
        assert_eq!(age_of(&first), [age], "{path}");
        let again = c.get(&s.url(path)).await;
        assert!(
            !again.cache_status().contains("hit"),
            "{path}: {}",
            again.cache_status()
        );
    }
    assert_eq!(origin.count(), 6);
    // Ignored values: age 0, fresh. "0" or "1": hyper stamps the origin's
    // `Date` with the start of its second, so a miss that crosses a second
    // boundary between the origin and its `Age` is a second old (SPEC §6).
    for path in ["/invalid-first", "/fraction", "/negative"] {
        let first = c.get(&s.url(path)).await;
        let age = age_of(&first);
        assert!(age == ["0"] || age == ["1"], "{path}: {age:?}");
        let again = c.get(&s.url(path)).await;
        assert!(
            again.cache_status().contains("hit"),
            "{path}: {}",
            again.cache_status()
        );
    }
    assert_eq!(origin.count(), 9);
}

/// An origin serving `cache_control` for GET /x until told to fail with 503
/// (or be shut down).
async fn failing_origin(
    cache_control: &'static str,
) -> (Origin, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    failing_origin_with(vec![("cache-control", cache_control)], 503).await
}

/// An origin answering 200 "cached" with `headers` until told to fail with
/// `down`.
async fn failing_origin_with(
    headers: Vec<(&'static str, &'static str)>,
    down: u16,
) -> (Origin, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failing = std::sync::Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let origin = Origin::start(move |_req| {
        let failing = f.load(Ordering::SeqCst);
        let headers = headers.clone();
        async move {
            if failing {
                reply(down, &[], "down")
            } else {
                reply(200, &headers, "cached")
            }
        }
    })
    .await;
    (origin, failing)
}

#[tokio::test]
async fn grace_serves_a_just_stale_entry_when_the_origin_fails() {
    use std::sync::atomic::Ordering;
    let (origin, failing) = failing_origin("max-age=1").await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/x")).await.text(), "cached");
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.get(&s.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "cached");
    assert!(
        r.cache_status()
            .starts_with("strata; fwd=stale; detail=grace; fwd-status=503"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 2);
    // Unreachable origin: the same.
    origin.shutdown();
    let r = c.get(&s.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "cached");
    assert!(
        r.cache_status().contains("detail=grace"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn grace_is_forbidden_by_must_revalidate_and_off_at_zero() {
    use std::sync::atomic::Ordering;
    for (cc, extra) in [
        ("max-age=1, must-revalidate", ""),
        ("s-maxage=1", ""),
        ("max-age=1, proxy-revalidate", ""),
        ("max-age=1", "[cache]\ngrace = \"0s\"\n"),
    ] {
        // A validator keeps the entry stored while stale, so the refusal
        // is what is tested (without one it leaves the cache at the end of
        // its lifetime, and the request after the wait is a plain miss).
        let (origin, failing) = failing_origin_with(
            vec![
                ("cache-control", cc),
                ("last-modified", "Mon, 30 Nov 2026 00:00:00 GMT"),
            ],
            503,
        )
        .await;
        let s = strata(&origin, extra).await;
        let c = Client::new();
        assert_eq!(c.get(&s.url("/x")).await.text(), "cached");
        failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = c.get(&s.url("/x")).await;
        assert_eq!(r.status, 503, "{cc} {extra}: {}", r.cache_status());
        assert_eq!(r.text(), "down");
        assert_eq!(origin.count(), 2);
    }
}

/// RFC 9111 §5.2.2.4: a `no-cache` response is never used without a
/// successful validation, so an origin's 5xx (or its absence) on
/// revalidation is passed on even inside `stale-if-error` — fresh or not.
/// It was served as `fwd=stale; detail=stale-if-error`.
#[tokio::test]
async fn stale_if_error_never_answers_for_a_no_cache_response() {
    use std::sync::atomic::Ordering;
    for cc in [
        "max-age=100, no-cache, stale-if-error=100",
        "no-cache, stale-if-error=100",
    ] {
        let (origin, failing) =
            failing_origin_with(vec![("cache-control", cc), ("etag", "\"e\"")], 500).await;
        let s = strata(&origin, "").await;
        let c = Client::new();
        let first = c.get(&s.url("/x")).await;
        assert_eq!(first.text(), "cached");
        assert!(
            first.cache_status().contains("stored"),
            "{cc}: {}",
            first.cache_status()
        );
        failing.store(true, Ordering::SeqCst);
        for request_cc in [None, Some("stale-if-error=600")] {
            let headers: Vec<(&str, &str)> = request_cc
                .map(|v| ("cache-control", v))
                .into_iter()
                .collect();
            let r = c.get_with(&s.url("/x"), &headers).await;
            assert_eq!(r.status, 500, "{cc} {request_cc:?}: {}", r.cache_status());
            assert_eq!(r.text(), "down");
        }
        assert_eq!(origin.count(), 3, "{cc}");
    }
}

/// RFC 9111 §5.2.2.2: a stale `must-revalidate` response whose origin
/// cannot be reached is not served, and "the generated status code SHOULD
/// be 504 (Gateway Timeout)" (it was 502). The entry has a validator, so
/// it stays stored past its lifetime: one without leaves the cache when it
/// goes stale, and whether a request found it stale (504) or gone (a miss,
/// 502) depended on moka's timer (CI saw `fwd=miss`, 502).
#[tokio::test]
async fn an_unreachable_origin_for_a_must_revalidate_entry_is_a_504() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=1, must-revalidate"),
            ("last-modified", "Mon, 30 Nov 2026 00:00:00 GMT"),
        ],
        "cached",
    )
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/x")).await.text(), "cached");
    origin.shutdown();
    support::wait_until(Duration::from_secs(10), "the entry to go stale", || async {
        let r = c.get(&s.url("/x")).await;
        r.status != 200
    })
    .await;
    let r = c.get(&s.url("/x")).await;
    assert_eq!(r.status, 504, "{}", r.cache_status());
    assert!(
        r.cache_status().starts_with("strata; fwd=stale"),
        "{}",
        r.cache_status()
    );
    assert_ne!(r.text(), "cached");
}

#[tokio::test]
async fn an_upstream_error_that_replaces_a_stale_entry_says_its_status() {
    use std::sync::atomic::Ordering;
    // A validator keeps the entry stored past its lifetime (for
    // revalidation); must-revalidate forbids serving it stale.
    let (origin, failing) = failing_origin_with(
        vec![
            ("cache-control", "max-age=1, must-revalidate"),
            ("etag", "\"v1\""),
        ],
        500,
    )
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    assert_eq!(c.get(&s.url("/x")).await.text(), "cached");
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.get(&s.url("/x")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "down");
    assert_eq!(r.cache_status(), "strata; fwd=stale; fwd-status=500");
    assert_eq!(origin.count(), 2);
}

fn targeted(path: &str) -> Vec<(String, String)> {
    pairs(match path {
        "/cdn-no-store" => &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
        ],
        "/cdn-private" => &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "private"),
        ],
        "/cdn-no-cache" => &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-cache"),
            ("etag", "\"v\""),
        ],
        "/cdn-max-age" => &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=3600"),
        ],
        "/strata-first" => &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "no-store"),
            ("strata-cache-control", "max-age=60"),
        ],
        "/cdn-invalid" => &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=\"60"),
        ],
        _ => &[("cache-control", "max-age=60")],
    })
}

#[tokio::test]
async fn targeted_cache_control_decides_for_strata_only() {
    let origin = origin_with(targeted).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/cdn-no-store", "/cdn-private", "/cdn-no-cache"] {
        let before = origin.count();
        let first = c.get(&s.url(path)).await;
        let second = c.get(&s.url(path)).await;
        assert_eq!(second.text(), path);
        assert!(!second.cache_status().contains("hit"), "{path}");
        assert_eq!(origin.count(), before + 2, "{path}");
        // Cache-Control and CDN-Cache-Control still reach the client.
        assert_eq!(first.header("cache-control"), Some("max-age=60"));
        assert!(first.header("cdn-cache-control").is_some());
    }
    for path in ["/cdn-max-age", "/strata-first", "/cdn-invalid"] {
        let before = origin.count();
        let first = c.get(&s.url(path)).await;
        let second = c.get(&s.url(path)).await;
        assert!(
            second.cache_status().contains("hit"),
            "{path}: {}",
            second.cache_status()
        );
        assert_eq!(second.text(), path);
        assert_eq!(origin.count(), before + 1, "{path}");
        assert!(first.header("strata-cache-control").is_none());
        assert!(second.header("strata-cache-control").is_none());
        assert_eq!(
            first.header("cache-control"),
            second.header("cache-control")
        );
    }
    assert_eq!(
        c.get(&s.url("/cdn-max-age")).await.header("cache-control"),
        Some("no-store")
    );
}

#[tokio::test]
async fn a_rule_never_overrides_what_a_targeted_field_keeps_private() {
    // SPEC §10 with RFC 9213: the privacy of a response is judged on the
    // directives addressed to Strata, before a rule's lifetime applies.
    let origin = origin_with(targeted).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/**\"\ncache_control = \"public, max-age=600\"\n",
    )
    .await;
    let c = Client::new();
    for path in ["/cdn-private", "/cdn-no-store"] {
        let before = origin.count();
        c.get(&s.url(path)).await;
        let second = c.get(&s.url(path)).await;
        assert!(!second.cache_status().contains("hit"), "{path}");
        assert_eq!(second.text(), path);
        assert_eq!(origin.count(), before + 2, "{path}");
    }
    // Cache-Control says no-store, the field addressed to CDNs allows
    // storing: the rule's lifetime applies and Strata's own field never
    // reaches the client.
    // The client, and every cache after Strata, still get the origin's own
    // `no-store`, not the rule's `public, max-age=600` (it was replaced:
    // security probe, medium; SPEC §6 "Cache-Control still goes to the
    // client").
    for path in ["/cdn-max-age", "/strata-first"] {
        let before = origin.count();
        let first = c.get(&s.url(path)).await;
        let second = c.get(&s.url(path)).await;
        assert!(second.cache_status().contains("hit"), "{path}");
        assert_eq!(origin.count(), before + 1, "{path}");
        assert!(second.header("strata-cache-control").is_none());
        // The rule's lifetime, not the targeted field's 3600.
        assert!(
            ["ttl=600", "ttl=599"]
                .iter()
                .any(|t| second.cache_status().contains(t)),
            "{path}: {}",
            second.cache_status()
        );
        for r in [&first, &second] {
            assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        }
    }
    // Without a targeted field the rule's value is what the client gets.
    assert_eq!(
        c.get(&s.url("/plain")).await.header("cache-control"),
        Some("public, max-age=600")
    );
}

/// RFC 9111 §4.3.4 with RFC 9213: a 304 without `Strata-Cache-Control`
/// leaves the stored one in force (it was dropped, and the entry then
/// lived by `Cache-Control`'s ten minutes); a 304 with one replaces it.
#[tokio::test]
async fn strata_cache_control_outlives_a_304_without_one() {
    let origin = Origin::start(|req| async move {
        let validating = req.headers().contains_key("if-none-match");
        let mut fields = vec![
            ("cache-control", "max-age=600"),
            ("etag", "\"t\""),
            // Older than Strata's lifetime: stale for Strata at once.
            ("age", "20"),
        ];
        if !validating || req.uri().path() == "/replaced" {
            let strata_cc = if validating {
                "max-age=600"
            } else {
                "max-age=10"
            };
            fields.push(("strata-cache-control", strata_cc));
        }
        reply(if validating { 304 } else { 200 }, &fields, "t")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    // Kept: every request revalidates (Strata's 10 s < the age of 20 s).
    for i in 0..3 {
        let r = c.get(&s.url("/kept")).await;
        assert!(!r.is_hit(), "{i}: {}", r.cache_status());
        assert!(r.header("strata-cache-control").is_none());
    }
    assert_eq!(origin.count(), 3);
    // Replaced by the 304's ten minutes: a hit after it.
    c.get(&s.url("/replaced")).await;
    let r = c.get(&s.url("/replaced")).await;
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    let r = c.get(&s.url("/replaced")).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 5);
}

/// SPEC §6: the targeted field decides for Strata, on a 304 too. A 304
/// whose `Strata-Cache-Control` says `no-store` ends the entry (it was
/// kept, reported with a ttl, and later served as grace: only
/// `Cache-Control` was read); a 304 whose `Cache-Control` says `no-store`
/// while the stored `Strata-Cache-Control` stays in force does not.
#[tokio::test]
async fn a_304_is_judged_by_the_targeted_field_in_force() {
    let origin = Origin::start(|req| async move {
        let validating = req.headers().contains_key("if-none-match");
        let mut fields = vec![("etag", "\"t\""), ("age", "20")];
        match (req.uri().path(), validating) {
            (_, false) => {
                fields.push(("cache-control", "max-age=600"));
                fields.push(("strata-cache-control", "max-age=10"));
            }
            ("/ended", true) => {
                fields.push(("cache-control", "max-age=600"));
                fields.push(("strata-cache-control", "no-store"));
            }
            (_, true) => fields.push(("cache-control", "no-store")),
        }
        reply(if validating { 304 } else { 200 }, &fields, "t")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    c.get(&s.url("/ended")).await;
    let r = c.get(&s.url("/ended")).await;
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert!(!r.cache_status().contains("ttl="), "{}", r.cache_status());
    let r = c.get(&s.url("/ended")).await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    // Cache-Control's no-store is not Strata's word while its own field
    // (stored with the 200) is in force: the entry stays, revalidated
    // each time (10 s < the age of 20 s).
    c.get(&s.url("/kept")).await;
    for _ in 0..2 {
        let r = c.get(&s.url("/kept")).await;
        assert!(
            r.cache_status().contains("fwd=stale; fwd-status=304; ttl="),
            "{}",
            r.cache_status()
        );
    }
}

#[tokio::test]
async fn targeted_cache_control_can_be_turned_off() {
    let origin = origin_with(targeted).await;
    let s = strata(&origin, "[cache]\ntargeted_cache_control = []\n").await;
    let c = Client::new();
    c.get(&s.url("/cdn-no-store")).await;
    let again = c.get(&s.url("/cdn-no-store")).await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.count(), 1);
}

fn varied(path: &str) -> Vec<(String, String)> {
    pairs(match path {
        "/small.txt" => &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("vary", "Foo"),
        ],
        "/image" => &[
            ("cache-control", "max-age=60"),
            ("content-type", "image/png"),
            ("vary", "Foo"),
        ],
        _ => &[("cache-control", "max-age=60"), ("vary", "Foo")],
    })
}

#[tokio::test]
async fn vary_is_the_origins_unless_strata_compresses() {
    let origin = origin_with(varied).await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/small.txt", "/image"] {
        for _ in 0..2 {
            let r = c
                .get_with(&s.url(path), &[("accept-encoding", "gzip")])
                .await;
            assert_eq!(r.header("vary"), Some("Foo"), "{path}");
            assert!(r.header("content-encoding").is_none());
        }
    }
}

fn page(path: &str) -> Vec<(String, String)> {
    let _ = path;
    pairs(&[
        ("cache-control", "max-age=60"),
        ("content-type", "text/html"),
    ])
}

#[tokio::test]
async fn a_completed_miss_is_a_hit_and_purgeable_at_once() {
    // Bodies large enough to be compressed at admission.
    let origin = Origin::start(|req| async move {
        let body: String = (0..400)
            .map(|i| format!("<p>{} line {i}</p>\n", req.uri().path()))
            .collect();
        let h = page("");
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        reply(200, &pairs, body)
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for i in 0..25 {
        let path = format!("/v{i}");
        let first = c
            .get_with(&s.url(&path), &[("accept-encoding", "gzip")])
            .await;
        assert!(
            first.cache_status().contains("fwd=uri-miss")
                || first.cache_status().contains("fwd=miss")
        );
        let next = c
            .get_with(&s.url(&path), &[("accept-encoding", "gzip")])
            .await;
        assert!(
            next.cache_status()
                .starts_with("strata; hit; detail=memory"),
            "{path}: {}",
            next.cache_status()
        );
    }
    assert_eq!(origin.count(), 25);
    for i in 0..25 {
        let path = format!("/p{i}");
        c.get_with(&s.url(&path), &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(
            s.purge(&format!("{{\"url\": \"{}\"}}", &path)).await.1["purged"],
            1,
            "{path}"
        );
        let after = c.get(&s.url(&path)).await;
        assert!(
            !after.cache_status().contains("hit"),
            "{path}: {}",
            after.cache_status()
        );
    }
    assert_eq!(origin.count(), 75);
}

/// RFC 9111 §4.1: an origin that varies on `Accept-Encoding` and encodes
/// in a coding Strata does not know (`zstd`) has each variant served only
/// to requests whose list means the same. `Accept-Encoding` was reduced to
/// the coding Strata would pick, so `gzip, deflate, br` (and `identity`)
/// were served the `zstd` body stored for `gzip, deflate, br, zstd`.
#[tokio::test]
async fn an_origins_own_coding_reaches_only_clients_that_accept_it() {
    let origin = Origin::start(|req| async move {
        let zstd = req
            .headers()
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("zstd"));
        let mut h = vec![
            ("cache-control", "max-age=100"),
            ("vary", "Accept-Encoding"),
            ("content-type", "application/octet-stream"),
        ];
        if zstd {
            h.push(("content-encoding", "zstd"));
        }
        reply(200, &h, if zstd { "ZSTD-BYTES" } else { "plain" })
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let get = |ae: &'static str| {
        let c = &c;
        let url = s.url("/p");
        async move { c.get_with(&url, &[("accept-encoding", ae)]).await }
    };
    let r = get("gzip, deflate, br, zstd").await;
    assert_eq!(r.text(), "ZSTD-BYTES");
    for ae in ["gzip, deflate, br", "identity", "deflate"] {
        let r = get(ae).await;
        assert_eq!(r.text(), "plain", "{ae}: {}", r.cache_status());
        assert_eq!(r.header("content-encoding"), None, "{ae}");
    }
    // Another spelling of the first list is the same variant: a hit.
    let r = get("zstd,br , GZIP,deflate").await;
    assert_eq!(r.text(), "ZSTD-BYTES");
    assert!(
        r.cache_status().starts_with("strata; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 4);
}

/// RFC 9211 §2: an upstream cache's Cache-Status members are kept, this
/// cache's member added last, on the miss and on hits (they were
/// replaced). One field line, so a client reading one value sees the chain.
#[tokio::test]
async fn an_upstream_caches_cache_status_is_kept_before_ours() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=60"),
            ("cache-status", "OriginCache; hit; ttl=30"),
            ("etag", "\"s1\""),
        ],
        "shielded",
    )
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let miss = c.get(&s.url("/s")).await;
    assert_eq!(
        miss.header("cache-status"),
        Some("OriginCache; hit; ttl=30, strata; fwd=miss; stored; ttl=60")
    );
    let hit = c.get(&s.url("/s")).await;
    let status = hit.header("cache-status").unwrap();
    assert!(
        status.starts_with("OriginCache; hit; ttl=30, strata; hit; detail=memory"),
        "{status}"
    );
    assert_eq!(hit.headers.get_all("cache-status").iter().count(), 1);
    // A 304 from the stored copy carries the chain too.
    let not_modified = c
        .get_with(&s.url("/s"), &[("if-none-match", "\"s1\"")])
        .await;
    assert_eq!(not_modified.status, 304);
    let status = not_modified.header("cache-status").unwrap();
    assert!(
        status.starts_with("OriginCache; hit; ttl=30, strata; hit; detail=memory"),
        "{status}"
    );
    // An empty upstream member is dropped, not chained as `, strata; ...`
    // (an invalid list a strict parser throws away whole).
    let empty = Origin::fixed(
        &[("cache-control", "max-age=60"), ("cache-status", "")],
        "e",
    )
    .await;
    let s = strata(&empty, "").await;
    assert_eq!(
        c.get(&s.url("/e")).await.header("cache-status"),
        Some("strata; fwd=miss; stored; ttl=60")
    );
}

/// SPEC §6 for empty bodies: a `204` or a `200` with `Content-Length: 0`
/// is complete with its head, so it must be admitted before the head goes
/// out. A request right after it on the same connection was answered
/// `fwd=miss; collapsed` about one time in eight.
#[tokio::test]
async fn a_completed_empty_miss_is_a_hit_at_once() {
    let origin = Origin::start(|req| async move {
        let status = if req.uri().path().starts_with("/nc") {
            204
        } else {
            200
        };
        reply(status, &[("cache-control", "max-age=100")], "")
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for i in 0..40 {
        for path in [format!("/nc{i}"), format!("/empty{i}")] {
            let first = c.get(&s.url(&path)).await;
            assert!(
                first.cache_status().contains("stored"),
                "{path}: {}",
                first.cache_status()
            );
            let next = c.get(&s.url(&path)).await;
            assert!(
                next.cache_status()
                    .starts_with("strata; hit; detail=memory"),
                "{path}: {}",
                next.cache_status()
            );
            assert!(next.body.is_empty());
        }
    }
    assert_eq!(origin.count(), 80);
}

/// RFC 9111 §3 and §5.2.2.3: with `must-understand`, a status whose
/// caching requirements Strata does not know (an unregistered `299`) is
/// never stored; a known one is, and `299` without the directive is too.
#[tokio::test]
async fn must_understand_keeps_unknown_statuses_out_of_the_cache() {
    let origin = Origin::start(|req| async move {
        let path = req.uri().path().to_string();
        let (status, cc) = match path.as_str() {
            "/299-must-understand" => (299, "max-age=100, must-understand"),
            "/200-must-understand" => (200, "max-age=100, must-understand"),
            _ => (299, "max-age=100"),
        };
        reply(status, &[("cache-control", cc)], path.clone())
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for (path, stored) in [
        ("/299-must-understand", false),
        ("/200-must-understand", true),
        ("/299", true),
    ] {
        let before = origin.count();
        let first = c.get(&s.url(path)).await;
        let second = c.get(&s.url(path)).await;
        assert_eq!(second.text(), path);
        assert_eq!(
            second.cache_status().contains("hit"),
            stored,
            "{path}: {} then {}",
            first.cache_status(),
            second.cache_status()
        );
        let upstream = if stored { 1 } else { 2 };
        assert_eq!(origin.count(), before + upstream, "{path}");
    }
    // A hit of a status without a standard name has an empty reason
    // phrase (hyper's default was `<none>`).
    let head = format!(
        "GET /299 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.addr
    );
    let raw = support::http::raw(s.addr, head.as_bytes()).await;
    assert!(raw.contains("strata; hit"), "{raw}");
    assert!(raw.starts_with("HTTP/1.1 299 \r\n"), "{raw}");
}

//! SPEC §10 against real origins: one normalised path for rules, key and
//! upstream (web cache deception), edge-owned forwarding headers (cache
//! poisoning), `TRACE`, and connections that send nothing.

mod support;

use http::{Method, Request};
use hyper::body::Incoming;
use support::origin::reply;
use support::{Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

/// The shipped rules: assets for a year, HTML for an hour.
const SHIPPED_RULES: &str = "[[rules]]\nmatch = \"/assets/**\"\n\
cache_control = \"public, max-age=31536000, immutable\"\n\
[[rules]]\nmatch = \"**/*.html\"\ncache_control = \"public, max-age=3600\"\n";

// === an origin that normalises paths like nginx ===

fn percent_decode(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// nginx's `$uri`: fully percent-decoded, `\` not special, dot segments
/// resolved (nginx answers 400 above the root; so does this).
fn nginx_uri(path: &str) -> Option<String> {
    let decoded = String::from_utf8_lossy(&percent_decode(path)).into_owned();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." | "" => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// The signed-in user, from `Cookie: user=NAME`.
fn user(req: &Request<Incoming>) -> String {
    req.headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.strip_prefix("user="))
        .unwrap_or("anonymous")
        .to_string()
}

/// An app behind nginx: `/private/me` (and, PATH_INFO style, anything
/// below it) is the signed-in user's account page, sent without any
/// Cache-Control (as many apps do); `/assets/*` are public files.
async fn nginx_like_origin() -> Origin {
    Origin::start(|req: Request<Incoming>| async move {
        let Some(uri) = nginx_uri(req.uri().path()) else {
            return reply(400, &[], "bad request");
        };
        if uri == "/private/me" || uri.starts_with("/private/me/") {
            let who = user(&req);
            return reply(
                200,
                &[("content-type", "text/html")],
                format!("account page of {who}"),
            );
        }
        if uri.starts_with("/assets/") {
            return reply(200, &[("content-type", "text/css")], "body{}");
        }
        reply(404, &[], "not found")
    })
    .await
}

fn upstream_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("strata_upstream_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn ambiguous_paths_get_400_and_never_reach_the_origin() {
    let origin = nginx_like_origin().await;
    let strata = Strata::start(&[origin.addr], &format!("{NO_HEALTH}{SHIPPED_RULES}")).await;
    let c = Client::new();
    for path in [
        "/assets/..%2fprivate/me",
        "/assets/..%2Fprivate/me",
        "/assets/%2e%2e%2fprivate/me",
        "/assets/%2e%2e%5cprivate/me",
        "/assets/.%2f..%2fprivate/me",
        "/assets/x%00.css",
        "/../private/me",
        "/assets/../../private/me",
    ] {
        for cookie in ["user=victim", "user=attacker"] {
            let r = c.get_with(&strata.url(path), &[("cookie", cookie)]).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            assert!(!r.text().contains("account"), "{path}");
            assert_eq!(r.cache_status(), "strata; fwd=bypass", "{path}");
        }
    }
    assert_eq!(origin.count(), 0, "{:?}", origin.seen());
    let metrics = c.get(&strata.admin_url("/metrics")).await.text();
    assert_eq!(upstream_errors(&metrics), 0.0);
}

#[tokio::test]
async fn dot_segments_resolve_before_rules_so_no_client_gets_another_ones_page() {
    let origin = nginx_like_origin().await;
    let strata = Strata::start(&[origin.addr], &format!("{NO_HEALTH}{SHIPPED_RULES}")).await;
    let c = Client::new();
    for path in [
        "/assets/%2e%2e/private/me",
        "/assets/%2E%2E/private/me",
        "/assets/../private/me",
        "/assets/./../private/me",
        "/assets/x/%2e%2e/../private/me",
    ] {
        let before = origin.count();
        let victim = c
            .get_with(&strata.url(path), &[("cookie", "user=victim")])
            .await;
        assert_eq!(victim.status, 200, "{path}");
        assert_eq!(victim.text(), "account page of victim", "{path}");
        // The origin was asked for the path the rules saw.
        assert_eq!(origin.last().unwrap().path, "/private/me", "{path}");
        // /private/me matches no rule and the origin set no lifetime:
        // not stored, so the attacker gets their own page.
        let attacker = c
            .get_with(&strata.url(path), &[("cookie", "user=attacker")])
            .await;
        assert_eq!(attacker.text(), "account page of attacker", "{path}");
        assert!(!attacker.cache_status().contains("hit"), "{path}");
        assert_eq!(origin.count(), before + 2, "{path}");
    }
    // A real asset is still stored under the rule, one key per normal path.
    let a = c.get(&strata.url("/assets/%61pp.css")).await;
    assert_eq!(a.cache_status(), "strata; fwd=miss; stored");
    assert_eq!(origin.last().unwrap().path, "/assets/app.css");
    let b = c.get(&strata.url("/assets/x/../app.css")).await;
    assert!(b.cache_status().contains("hit"), "{}", b.cache_status());
    assert_eq!(b.text(), "body{}");
}

#[tokio::test]
async fn an_encoded_slash_alone_is_forwarded_as_sent() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "repo").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let r = c.get(&strata.url("/repos/group%2Fname?tab=%2e%2e")).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.last().unwrap().path, "/repos/group%2Fname?tab=%2e%2e");
    // Not the same resource as /repos/group/name.
    let other = c.get(&strata.url("/repos/group/name")).await;
    assert_eq!(other.cache_status(), "strata; fwd=miss; stored");
    assert_eq!(origin.count(), 2);
    // Pass-through methods get the normalised path too.
    let post = c
        .send(
            Method::POST,
            &strata.url("/a/%2e%2e/form"),
            &[],
            bytes::Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(post.status, 200);
    assert_eq!(origin.last().unwrap().path, "/form");
}

#[tokio::test]
async fn trace_gets_405_with_allow_and_never_reaches_the_origin() {
    let origin = Origin::fixed(&[], "echo").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let raw = support::http::raw(
        strata.addr,
        b"TRACE / HTTP/1.1\r\nHost: x\r\nCookie: session=secret\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    let lower = raw.to_ascii_lowercase();
    assert!(
        lower.contains("allow: get, head, post, put, patch, delete, options"),
        "{raw}"
    );
    assert!(!raw.contains("secret"), "{raw}");
    assert_eq!(origin.count(), 0);
}

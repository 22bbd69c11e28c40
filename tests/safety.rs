//! SPEC §10 against real origins: one normalised path for rules, key and
//! upstream (web cache deception), edge-owned forwarding headers (cache
//! poisoning), `TRACE`, and connections that send nothing.

mod support;

use std::time::Duration;

use http::{Method, Request};
use hyper::body::Incoming;
use support::binary::{idle_cost_at_most, resident_kib};
use support::http::read_response;
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
        // Path parameters on a dot segment: Tomcat and Jetty climb.
        "/assets/..;/private/me",
        "/assets/.;/..;/private/me",
        "/assets/..;jsessionid=x/private/me",
        // A `%` that starts no escape (nginx: 400; it was forwarded and
        // stored, found by the bug-replay probe).
        "/assets/%zz.css",
        "/assets/x%",
        "/assets/%4.css",
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
    assert!(
        a.cache_status().starts_with("strata; fwd=miss; stored"),
        "{}",
        a.cache_status()
    );
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
    assert_eq!(
        origin.last().unwrap().path,
        "/repos/group%2Fname?tab=%2e%2e"
    );
    // Not the same resource as /repos/group/name.
    let other = c.get(&strata.url("/repos/group/name")).await;
    assert!(
        other.cache_status().starts_with("strata; fwd=miss; stored"),
        "{}",
        other.cache_status()
    );
    assert_eq!(origin.count(), 2);
    // The same escape in lower case is the same path (RFC 3986 §6.2.2.1):
    // one key, one purge, sent upstream in upper case.
    let lower = c.get(&strata.url("/repos/group%2fname?tab=%2e%2e")).await;
    assert!(
        lower.cache_status().contains("hit"),
        "{}",
        lower.cache_status()
    );
    let (status, answer) = strata
        .purge(r#"{"url": "/repos/group%2fname?tab=%2e%2e"}"#)
        .await;
    assert_eq!((status, &answer["purged"]), (200, &1.into()), "{answer}");
    let again = c.get(&strata.url("/repos/group%2Fname?tab=%2e%2e")).await;
    assert!(
        again.cache_status().contains("fwd=miss"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.count(), 3);
    // A prefix gets the same escapes (and no dot-segment resolution).
    let (status, answer) = strata.purge(r#"{"prefix": "/repos/group%2f"}"#).await;
    assert_eq!((status, &answer["purged"]), (200, &1.into()), "{answer}");
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

/// Request targets that must never reach an upstream: an absolute-form
/// authority with userinfo (it went upstream as the Host and in the
/// forwarding fields, and keyed the cache apart; a Host field with it got
/// 400), the asterisk-form with another method than OPTIONS, and CONNECT
/// (405 like TRACE, not 400).
#[tokio::test]
async fn odd_request_targets_never_reach_the_origin() {
    let origin = Origin::fixed(&[], "ok").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    for (raw, want) in [
        (
            &b"GET http://u:p@other.example/a HTTP/1.1\r\nHost: y\r\n\r\n"[..],
            "HTTP/1.1 400",
        ),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
        (b"DELETE * HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
        (
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        let out = support::http::raw(strata.addr, raw).await;
        assert!(
            out.starts_with(want),
            "{:?} → {out}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(origin.count(), 0);
    // The forms that are fine still go through.
    for raw in [
        &b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET http://other.example/a HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n",
    ] {
        let out = support::http::raw(strata.addr, raw).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    assert_eq!(origin.count(), 2);
}

/// An absolute-form target with an empty path and a query
/// (`http://y?a=1`) is `/?a=1` with Host `y` (RFC 9112 §3.2.1, RFC 3986
/// §6.2.3): it went upstream in absolute-form (`GET http://y/?a=1`) and
/// was stored under a key of its own that no purge reached. Found by the
/// wire probe (finding 1).
#[tokio::test]
async fn an_absolute_target_with_an_empty_path_is_the_root() {
    let (addr, seen) = support::origin::raw_keepalive(
        b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 2\r\n\r\nok",
        100,
        Duration::from_secs(10),
    )
    .await;
    let strata = Strata::start(&[addr], NO_HEALTH).await;
    let out = support::http::raw(
        strata.addr,
        b"GET http://y?a=1 HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("stored"), "{out}");
    assert_eq!(seen.requests(), ["GET /?a=1 HTTP/1.1"]);
    // One key with the origin-form target: a hit, inspected, purged.
    let r = Client::new()
        .get_with(&strata.url("/?a=1"), &[("host", "y")])
        .await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(seen.requests().len(), 1);
    let (status, answer) = strata.purge(r#"{"url":"http://y/?a=1"}"#).await;
    assert_eq!((status, &answer["purged"]), (200, &serde_json::json!(1)));
    let r = Client::new()
        .get_with(&strata.url("/?a=1"), &[("host", "y")])
        .await;
    assert!(!r.is_hit(), "{}", r.cache_status());
}

// === unkeyed request headers ===

/// An origin that trusts whatever it is told: it builds absolute links
/// from `X-Forwarded-Host` / `X-Forwarded-Proto` / `Forwarded`, serves
/// the path named by `X-Original-URL` / `X-Rewrite-URL`, and acts on
/// `X-HTTP-Method-Override` — all in a `public, max-age=600` response.
async fn reflecting_origin() -> Origin {
    Origin::start(|req: Request<Incoming>| async move {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-");
        let path = h
            .get("x-original-url")
            .or_else(|| h.get("x-rewrite-url"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or(req.uri().path());
        let method = h
            .get("x-http-method-override")
            .or_else(|| h.get("x-http-method"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or(req.method().as_str());
        let body = format!(
            "page {path} by {method}; script {}://{}/app.js; fwd {}",
            get("x-forwarded-proto"),
            get("x-forwarded-host"),
            get("forwarded"),
        );
        reply(200, &[("cache-control", "public, max-age=600")], body)
    })
    .await
}

#[tokio::test]
async fn forwarding_and_steering_headers_from_clients_never_poison_an_entry() {
    let origin = reflecting_origin().await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let host = format!("{}", strata.addr);
    let attacker = c
        .get_with(
            &strata.url("/home"),
            &[
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "javascript"),
                ("forwarded", "host=evil.example;proto=https"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-original-url", "/admin"),
                ("x-rewrite-url", "/admin"),
                ("x-http-method-override", "DELETE"),
                ("x-http-method", "DELETE"),
                // The rest of the family, and `_` spellings that CGI-style
                // origins read as the same variables.
                ("x-forwarded-scheme", "http"),
                ("x-forwarded-port", "1"),
                ("x-forwarded-prefix", "/evil"),
                ("x_forwarded_host", "evil.example"),
                ("x_original_url", "/admin"),
            ],
        )
        .await;
    let clean = format!(
        "page /home by GET; script http://{host}/app.js; fwd for=127.0.0.1;host=\"{host}\";proto=http"
    );
    assert_eq!(attacker.text(), clean);
    assert!(
        attacker
            .cache_status()
            .starts_with("strata; fwd=miss; stored"),
        "{}",
        attacker.cache_status()
    );
    let seen = origin.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    for stripped in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-forwarded-scheme",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x_forwarded_host",
        "x_original_url",
    ] {
        assert!(
            !seen.headers.contains_key(stripped),
            "{stripped} reached the origin"
        );
    }
    // A later client gets the clean entry, never the attacker's values.
    let later = c.get(&strata.url("/home")).await;
    assert!(
        later.cache_status().contains("hit"),
        "{}",
        later.cache_status()
    );
    assert_eq!(later.text(), clean);
    assert_eq!(origin.count(), 1);
}

/// Underscore spellings of field names (security probe F2): `X_Lang` and
/// `X_Attack` reached the origin, whose CGI-style stack reads them as
/// `X-Lang` / `X-Attack`, while `key.headers` and `Vary` saw them as
/// absent, so the attacker's value was stored as the default variant.
/// They are dropped on arrival, as nginx does (`underscores_in_headers
/// off`); `server.underscores_in_headers = true` forwards them.
#[tokio::test]
async fn underscored_field_names_never_reach_the_origin_unkeyed() {
    let origin = Origin::start(|req: Request<Incoming>| async move {
        // As PHP-FPM, Rack and WSGI read fields: `_` and `-` alike.
        let read = |dashed: &str| {
            let under = dashed.replace('-', "_");
            support::origin::field(
                &req,
                if req.headers().contains_key(&under) {
                    &under
                } else {
                    dashed
                },
            )
        };
        let body = format!("attack={} lang={}", read("x-attack"), read("x-lang"));
        reply(
            200,
            &[
                ("cache-control", "public, max-age=600"),
                ("vary", "X-Attack"),
            ],
            body,
        )
    })
    .await;
    let rules = "[[rules]]\nmatch = \"/k/**\"\nkey.headers = [\"X-Lang\"]\n";
    let strata = Strata::start(&[origin.addr], &format!("{NO_HEALTH}{rules}")).await;
    let c = Client::new();
    for path in ["/vary9", "/k/page"] {
        let attacker = c
            .get_with(&strata.url(path), &[("x_attack", "evil"), ("x_lang", "fr")])
            .await;
        assert_eq!(attacker.text(), "attack=- lang=-", "{path}");
        let seen = origin.last().unwrap();
        assert!(
            !seen.headers.contains_key("x_attack") && !seen.headers.contains_key("x_lang"),
            "{path}: {:?}",
            seen.headers
        );
        let later = c.get(&strata.url(path)).await;
        assert_eq!(later.text(), "attack=- lang=-", "{path}");
    }
    let dashed = c
        .get_with(&strata.url("/k/page"), &[("x-lang", "fr")])
        .await;
    assert!(!dashed.is_hit(), "{}", dashed.cache_status());
    assert_eq!(dashed.text(), "attack=- lang=fr");
    strata.stop().await;

    // Forwarded when the operator says so.
    let text = support::config_text(&[origin.addr], NO_HEALTH).replacen(
        "[server]\n",
        "[server]\nunderscores_in_headers = true\n",
        1,
    );
    let strata = Strata::start_text(&text).await;
    let r = c
        .get_with(&strata.url("/other"), &[("x_attack", "evil")])
        .await;
    assert_eq!(r.text(), "attack=evil lang=-");
}

/// Cache-poisoned denial of service (security probe F3; Nguyen et al.,
/// CCS 2019): the origin refused one client's oversized header with a
/// `431` carrying its site-wide `public, max-age=60`, and that `431` was
/// stored and served to everybody. Statuses about the request (400, 408,
/// 411, 413, 414, 417, 428, 429, 431, 511) are never stored, whatever a
/// rule says, and do not displace what is stored.
#[tokio::test]
async fn an_error_about_one_request_is_never_stored_for_everybody() {
    let origin = Origin::start(|req: Request<Incoming>| async move {
        let cc = [("cache-control", "public, max-age=60")];
        match support::origin::field(&req, "x-refuse").parse::<u16>() {
            Ok(status) => reply(status, &cc, "refused"),
            Err(_) => reply(200, &cc, "home"),
        }
    })
    .await;
    let rules = "[[rules]]\nmatch = \"/ttl/**\"\nstatus_ttl = { \"4xx\" = \"1h\" }\n";
    let strata = Strata::start(&[origin.addr], &format!("{NO_HEALTH}{rules}")).await;
    let c = Client::new();
    let mut expected = 0;
    // 428, 429, 511: RFC 6585 says a cache MUST NOT store them (the
    // security probe found them stored and served as hits).
    for status in [
        "400", "408", "411", "413", "414", "417", "428", "429", "431", "511",
    ] {
        for path in [format!("/home{status}"), format!("/ttl/{status}")] {
            let attacker = c
                .get_with(&strata.url(&path), &[("x-refuse", status)])
                .await;
            assert_eq!(attacker.status.as_str(), status, "{path}");
            assert!(
                !attacker.cache_status().contains("stored"),
                "{path}: {}",
                attacker.cache_status()
            );
            // Not marked uncacheable (hit-for-miss) either: the next
            // request is an ordinary miss, and its 200 is stored.
            let victim = c.get(&strata.url(&path)).await;
            assert_eq!(victim.status, 200, "{path}: {}", victim.cache_status());
            assert_eq!(victim.text(), "home");
            assert!(
                victim
                    .cache_status()
                    .starts_with("strata; fwd=miss; stored"),
                "{path}: {}",
                victim.cache_status()
            );
            let next = c.get(&strata.url(&path)).await;
            assert!(next.is_hit(), "{path}: {}", next.cache_status());
            expected += 2;
        }
    }
    assert_eq!(origin.count(), expected);
    // A 404 under the same rule still follows status_ttl.
    c.get_with(&strata.url("/ttl/x"), &[("x-refuse", "404")])
        .await;
    let r = c.get(&strata.url("/ttl/x")).await;
    assert!(r.is_hit() && r.status == 404, "{}", r.cache_status());
}

/// After Strata's own `400` (or `501`) on HTTP/1.1 the connection stayed
/// open and the next pipelined request was served (security probe F6);
/// where that request starts is in doubt, so the connection now closes,
/// as nginx does.
#[tokio::test]
async fn the_connection_closes_after_strata_refuses_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::fixed(&[], "ok").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    for refused in [
        &b"GET /a/..%2fb HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(strata.addr).await.unwrap();
        let mut pipelined = refused.to_vec();
        pipelined.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(&pipelined).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "still open after: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{text}"
        );
    }
    assert_eq!(origin.count(), 0);
}

/// RFC 9110 §7.6.1 `Connection` options (black-box audit, high): a client
/// naming `Host` had it removed upstream, so the origin answered for its
/// own default host and that answer was stored under the client's host;
/// naming a field the response varies on had the variant keyed by a value
/// the origin never saw.
#[tokio::test]
async fn fields_a_client_names_in_connection_never_key_what_the_origin_did_not_see() {
    let origin = Origin::start(|req: Request<Incoming>| async move {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-");
        let body = format!("host={} lang={}", get("host"), get("accept-language"));
        reply(
            200,
            &[
                ("cache-control", "public, max-age=600"),
                ("vary", "Accept-Language"),
            ],
            body,
        )
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let attacker = c
        .get_with(
            &strata.url("/page"),
            &[
                ("host", "victim.test"),
                ("connection", "keep-alive, Host, Accept-Language"),
                ("accept-language", "de"),
            ],
        )
        .await;
    assert_eq!(attacker.status, 200);
    // Host went upstream; Accept-Language did not, and the stored variant
    // is the one for a request without it.
    assert_eq!(attacker.text(), "host=victim.test lang=-");
    let seen = origin.last().unwrap();
    assert_eq!(seen.headers["host"], "victim.test");
    assert!(!seen.headers.contains_key("accept-language"));
    let german = c
        .get_with(
            &strata.url("/page"),
            &[("host", "victim.test"), ("accept-language", "de")],
        )
        .await;
    assert!(
        german.cache_status().starts_with("strata; fwd=vary-miss"),
        "{}",
        german.cache_status()
    );
    assert_eq!(german.text(), "host=victim.test lang=de");
    let plain = c
        .get_with(&strata.url("/page"), &[("host", "victim.test")])
        .await;
    assert!(
        plain.cache_status().contains("hit"),
        "{}",
        plain.cache_status()
    );
    assert_eq!(plain.text(), "host=victim.test lang=-");
    assert_eq!(origin.count(), 2);
}

/// RFC 9111 §5.2.1.7: a request the cache does not handle (here a GET
/// with a body) has no stored response, so `only-if-cached` gets `504`
/// and nothing goes upstream.
#[tokio::test]
async fn only_if_cached_on_a_bypassed_request_is_a_504_not_a_fetch() {
    let origin = Origin::start(|_req: Request<Incoming>| async {
        reply(200, &[("cache-control", "public, max-age=600")], "fresh")
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let host = strata.addr.to_string();
    let raw = format!(
        "GET /fat HTTP/1.1\r\nHost: {host}\r\nCache-Control: only-if-cached\r\n\
         Content-Length: 4\r\nConnection: close\r\n\r\nbody"
    );
    let out = support::http::raw(strata.addr, raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert_eq!(origin.count(), 0);
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarding_fields_and_the_strip_list_can_change() {
    let origin = reflecting_origin().await;
    // The test client connects from 127.0.0.1: trust it, and strip only
    // X-Rewrite-URL.
    let text = support::config_text(&[origin.addr], NO_HEALTH).replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\nstrip_request_headers = [\"X-Rewrite-URL\"]\n",
    );
    let strata = Strata::start_text(&text).await;
    let c = Client::new();
    let r = c
        .get_with(
            &strata.url("/home"),
            &[
                ("x-forwarded-host", "www.example"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "203.0.113.9"),
                ("forwarded", "for=203.0.113.9"),
                ("x-rewrite-url", "/admin"),
                ("x-http-method-override", "PUT"),
            ],
        )
        .await;
    let host = format!("{}", strata.addr);
    assert_eq!(
        r.text(),
        format!(
            "page /home by PUT; script https://www.example/app.js; \
             fwd for=203.0.113.9, for=127.0.0.1;host=\"{host}\";proto=http"
        )
    );
    let seen = origin.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert!(!seen.headers.contains_key("x-rewrite-url"));
}

/// A GET of `path` sent from the source address `ip` (127.0.0.2,
/// 127.0.0.3: Linux routes all of 127/8 to the loopback, so each is
/// another client to Strata), with `fields`: the response as text.
async fn get_from(ip: &str, strata: &Strata, path: &str, fields: &[(&str, &str)]) -> String {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(strata.addr).await.unwrap();
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        strata.addr
    );
    for (name, value) in fields {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// The `Cache-Status` line and the body of a response read as text.
fn status_and_body(response: &str) -> (String, String) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head
        .lines()
        .find_map(|l| l.strip_prefix("cache-status: "))
        .unwrap_or("-");
    (status.to_string(), body.to_string())
}

/// RFC 9111 §4.1 (replay probe, medium-high): Strata writes
/// `X-Forwarded-For` and `Forwarded` from the peer address, but Vary was
/// matched on the client's own fields, so an origin answering `Vary:
/// X-Forwarded-For` for per-client content had one client's response
/// served to another (neither sent the field), and a forged value
/// selected the variant of whoever forged it first. The variant is now
/// keyed and selected by the values the origin received.
#[tokio::test]
async fn vary_on_forwarding_fields_matches_what_the_origin_received() {
    let origin = Origin::start(|req: Request<Incoming>| async move {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-");
        let vary = if req.uri().path() == "/xff" {
            "X-Forwarded-For"
        } else {
            "Forwarded"
        };
        let body = format!("xff={} fwd={}", get("x-forwarded-for"), get("forwarded"));
        reply(
            200,
            &[("cache-control", "public, max-age=600"), ("vary", vary)],
            body,
        )
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    for path in ["/xff", "/fwd"] {
        let (status, body) = status_and_body(&get_from("127.0.0.2", &strata, path, &[]).await);
        assert!(
            status.starts_with("strata; fwd=miss; stored"),
            "{path}: {status}"
        );
        assert!(body.starts_with("xff=127.0.0.2 "), "{path}: {body}");
        // Another client: the origin sees another address, so this is
        // another variant, never the first client's response.
        let (status, body) = status_and_body(&get_from("127.0.0.3", &strata, path, &[]).await);
        assert!(
            status.starts_with("strata; fwd=vary-miss"),
            "{path}: {status}"
        );
        assert!(body.starts_with("xff=127.0.0.3 "), "{path}: {body}");
        // Forged values are dropped on the way upstream: the origin would
        // see the peer's address, so the peer's variant is the answer.
        let forged = [
            ("X-Forwarded-For", "127.0.0.3"),
            ("Forwarded", "for=127.0.0.3"),
        ];
        let (status, body) = status_and_body(&get_from("127.0.0.2", &strata, path, &forged).await);
        assert!(status.starts_with("strata; hit"), "{path}: {status}");
        assert!(body.starts_with("xff=127.0.0.2 "), "{path}: {body}");
    }
    assert_eq!(origin.count(), 4);
}

/// The redirect loop behind a cache (replay probe): an origin that sends
/// plain-http requests to https answers by `X-Forwarded-Proto` with
/// `Vary: X-Forwarded-Proto`. A client outside `trusted_proxies` claiming
/// `https` had its request forwarded as `http`, and the redirect was
/// stored under `https`: the trusted TLS front's https users were then
/// redirected to https forever.
#[tokio::test]
async fn vary_on_x_forwarded_proto_cannot_be_poisoned_by_an_untrusted_client() {
    let origin = Origin::start(|req: Request<Incoming>| async move {
        let https = req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v == "https");
        let cache = ("cache-control", "public, max-age=600");
        let vary = ("vary", "X-Forwarded-Proto");
        if https {
            reply(200, &[cache, vary], "secure page")
        } else {
            reply(
                301,
                &[cache, vary, ("location", "https://shop.example/")],
                "",
            )
        }
    })
    .await;
    // 127.0.0.2 is the TLS-terminating front; 127.0.0.3 is anybody.
    let text = support::config_text(&[origin.addr], NO_HEALTH).replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.2\"]\n",
    );
    let strata = Strata::start_text(&text).await;
    let https = [("X-Forwarded-Proto", "https")];
    let attacker = get_from("127.0.0.3", &strata, "/", &https).await;
    assert!(attacker.starts_with("HTTP/1.1 301"), "{attacker}");
    let front = get_from("127.0.0.2", &strata, "/", &https).await;
    assert!(front.starts_with("HTTP/1.1 200"), "{front}");
    let (status, body) = status_and_body(&front);
    assert!(status.starts_with("strata; fwd=vary-miss"), "{status}");
    assert_eq!(body, "secure page");
    // The redirect was stored as the answer to `http`, which is what any
    // untrusted client's request is forwarded as.
    let plain = get_from("127.0.0.3", &strata, "/", &[]).await;
    assert!(plain.starts_with("HTTP/1.1 301"), "{plain}");
    assert!(
        status_and_body(&plain).0.starts_with("strata; hit"),
        "{plain}"
    );
    let again = get_from("127.0.0.2", &strata, "/", &https).await;
    assert_eq!(status_and_body(&again).1, "secure page");
    assert_eq!(origin.count(), 2);
}

// === connections that send nothing ===

#[tokio::test]
async fn silent_connections_are_closed_within_header_read_timeout_and_admin_still_answers() {
    use tokio::io::AsyncReadExt;
    let origin = Origin::fixed(&[], "ok").await;
    let text = support::config_text(&[origin.addr], NO_HEALTH).replace(
        "[server]\n",
        "[server]\nheader_read_timeout = \"1s\"\nmax_connections = 4\n",
    );
    let strata = Strata::start_text(&text).await;
    // Twice the limit: the first four hold every proxy slot, the rest
    // wait in the backlog until those are closed.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(strata.addr).await.unwrap());
    }
    // Meanwhile the admin listener, with its own limit, answers.
    let c = Client::new();
    let health = c.get(&strata.admin_url("/health")).await;
    assert_eq!(health.status, 200);
    // Each silent connection ends with EOF (closed by Strata), within a
    // bounded wait well beyond the 1 s timeout (twice: the backlog ones
    // are accepted only once the first four are gone).
    for (i, s) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {i} still open after 15 s"));
        assert!(matches!(read, Ok(0) | Err(_)), "connection {i}: {read:?}");
    }
    // Slots are free again.
    let r = c.get(&strata.url("/")).await;
    assert_eq!(r.text(), "ok");
}

#[tokio::test]
async fn a_slow_head_is_cut_off_too() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::fixed(&[], "ok").await;
    let text = support::config_text(&[origin.addr], NO_HEALTH)
        .replace("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n");
    let strata = Strata::start_text(&text).await;
    let mut s = tokio::net::TcpStream::connect(strata.addr).await.unwrap();
    // A partial h2 preface: hyper-util's protocol detection waits for more.
    s.write_all(b"PRI * HTTP/2").await.unwrap();
    assert_closed(&mut s, "a partial h2 preface").await;
    assert_eq!(origin.count(), 0);
}

// === later request heads on a kept-alive connection ===

/// Asserts that Strata closes `s` within a generous bound (without any
/// response bytes arriving first).
async fn assert_closed(s: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("closed within the bound");
    assert!(matches!(read, Ok(0) | Err(_)), "{what}: {read:?}");
}

#[tokio::test]
async fn an_idle_or_slow_next_head_is_cut_off_after_the_last_response() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::fixed(&[("cache-control", "no-store")], "ok").await;
    let text = support::config_text(&[origin.addr], NO_HEALTH)
        .replace("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n");
    let strata = Strata::start_text(&text).await;
    for partial in [&b""[..], b"GET / HT"] {
        let mut s = tokio::net::TcpStream::connect(strata.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        s.write_all(partial).await.unwrap();
        // Closed by Strata between one and two timeouts after the
        // response; the bound here is generous.
        assert_closed(&mut s, &format!("{partial:?}")).await;
    }
    assert_eq!(origin.count(), 2);
}

/// An h2c connection over which `requests` can be sent; its driver task
/// ends when Strata closes the connection.
async fn h2c(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

fn h2_get(strata: &Strata, path: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
    Request::get(strata.url(path))
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// What the HTTP/2 checks of request fields let through (black-box
/// re-check of this session's fixes): a browser's cookie crumbs are one
/// field, as over HTTP/1.1, so 150 cookies are no 431; `host` and
/// `:authority` naming the same authority, one with the default port
/// written, are no 400 (RFC 3986 §6.2.3).
#[tokio::test]
async fn http2_cookie_crumbs_and_a_default_port_are_not_refused() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "ok").await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let (mut send, _driver) = h2c(strata.addr).await;
    let mut crumbs = h2_get(&strata, "/crumbs");
    for i in 0..150 {
        crumbs.headers_mut().append(
            "cookie",
            http::HeaderValue::from_str(&format!("c{i}=v{i}")).unwrap(),
        );
    }
    let resp = send.send_request(crumbs).await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = origin.last().unwrap().headers["cookie"].clone();
    assert_eq!(cookie.to_str().unwrap().split("; ").count(), 150);
    let mut port = Request::get("http://a.example:80/port")
        .body(http_body_util::Empty::new())
        .unwrap();
    port.headers_mut()
        .insert("host", http::HeaderValue::from_static("A.example"));
    let resp = send.send_request(port).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(origin.count(), 2);
}

/// An HTTP/2 client that answers pings but sends nothing more keeps no
/// slot of `max_connections` for good (black-box audit: such connections
/// were never closed, so a few clients could take every slot): idle is
/// idle, as on HTTP/1.1.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_header_read_timeout() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "ok").await;
    let text = support::config_text(&[origin.addr], NO_HEALTH)
        .replace("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n");
    let strata = Strata::start_text(&text).await;
    let (mut send, driver) = h2c(strata.addr).await;
    let resp = send.send_request(h2_get(&strata, "/x")).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    tokio::time::timeout(Duration::from_secs(15), driver)
        .await
        .expect("closed within the bound")
        .unwrap();
    assert_eq!(origin.count(), 1);
}

/// CVE-2023-44487, paced: streams reset a moment after their HEADERS, each
/// one already gone upstream (black-box audit: 3,000 such streams made
/// ~2,500 upstream requests, and the connection was never closed). The
/// connection is closed once more than half of at least 100 streams were
/// reset before their answer.
#[tokio::test]
async fn an_http2_client_that_resets_most_of_its_streams_is_disconnected() {
    let origin = Origin::start(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        reply(200, &[], "late")
    })
    .await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let (mut send, driver) = h2c(strata.addr).await;
    let mut sent = 0;
    for _ in 0..400 {
        if send.ready().await.is_err() {
            break;
        }
        sent += 1;
        // Dropping the response future resets the stream (RST_STREAM
        // CANCEL) once Strata has it in hand.
        let pending = send.send_request(h2_get(&strata, "/slow"));
        let _ = tokio::time::timeout(Duration::from_millis(5), pending).await;
    }
    tokio::time::timeout(Duration::from_secs(15), driver)
        .await
        .expect("closed within the bound")
        .unwrap();
    assert!(
        sent < 400,
        "the connection stayed open for {sent} reset streams"
    );
    assert!(
        origin.count() < 400,
        "{} requests reached the origin",
        origin.count()
    );
}

#[tokio::test]
async fn a_response_longer_than_header_read_timeout_is_not_cut() {
    // The body takes 2.5 s, more than three timeouts of 0.8 s: the timer
    // bounds request heads, never a response being sent.
    let origin = Origin::start(|_req| async move {
        let chunks = futures_util::stream::unfold(0u8, |i| async move {
            if i == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                    bytes::Bytes::from_static(b"chunk"),
                )),
                i + 1,
            ))
        });
        let mut r = http::Response::new(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(chunks),
        ));
        r.headers_mut()
            .insert("cache-control", http::HeaderValue::from_static("no-store"));
        r
    })
    .await;
    let text = support::config_text(&[origin.addr], NO_HEALTH)
        .replace("[server]\n", "[server]\nheader_read_timeout = \"800ms\"\n");
    let strata = Strata::start_text(&text).await;
    let r = Client::new().get(&strata.url("/slow")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "chunk".repeat(5));
}

const BIG: usize = 8 << 20;

/// Starts Strata (with `server_keys` added to `[server]`) in front of an
/// origin of one cacheable 8 MiB response, stores it with a full-speed
/// miss, then asks for it again on a socket with a small receive window
/// (so the kernel cannot take the whole body) and reads its first byte.
async fn big_hit_read_one_byte(server_keys: &str) -> (Strata, Origin, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(|_req| async move {
        reply(
            200,
            &[("cache-control", "public, max-age=600")],
            vec![b'h'; BIG],
        )
    })
    .await;
    let text = support::config_text(&[origin.addr], NO_HEALTH)
        .replace("[server]\n", &format!("[server]\n{server_keys}"));
    let strata = Strata::start_text(&text).await;
    let request = b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let warm = support::http::raw(strata.addr, request).await;
    assert!(warm.starts_with("HTTP/1.1 200"));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(strata.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], b'H');
    (strata, origin, s)
}

#[tokio::test]
async fn a_hit_written_slowly_to_a_slow_reader_is_not_cut() {
    // An 8 MiB hit is one frame: hyper is done with the body at once but
    // writes it only as fast as the client reads. A client that stops
    // reading for three timeouts still gets all of it.
    use tokio::io::AsyncReadExt;
    let (_strata, origin, mut s) = big_hit_read_one_byte("header_read_timeout = \"1s\"\n").await;
    // The pause is the scenario: a reader that stalls.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest))
        .await
        .expect("read within 30 s")
        .expect("read");
    let mut all = b"H".to_vec();
    all.extend_from_slice(&rest);
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let head = String::from_utf8_lossy(&all[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("cache-status: strata; hit"), "{head}");
    assert_eq!(all.len() - head_end, BIG, "the whole body");
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_send_timeout() {
    // nginx's `send_timeout`: a client that takes no byte of its response
    // for `server.send_timeout` loses the connection, and its slot of
    // `max_connections` is free again.
    use tokio::io::AsyncReadExt;
    let (strata, _origin, mut stuck) =
        big_hit_read_one_byte("send_timeout = \"1s\"\nmax_connections = 1\n").await;
    // It reads nothing more. The only slot is its own until Strata cuts
    // it: another client's request is answered only then.
    let next = tokio::time::timeout(
        Duration::from_secs(20),
        support::http::raw(
            strata.addr,
            b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("the stalled connection's slot freed within 20 s");
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    // What the stalled client can still read ends short of the body.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stuck.read_to_end(&mut rest))
        .await
        .expect("closed, so the read ends");
    assert!(rest.len() + 1 < BIG, "{} bytes: not cut", rest.len() + 1);
}

/// A mutating admin request whose body stalls is answered `408` within
/// `header_read_timeout`: it held the admin connection open for good
/// (the token is needed, but a broken client or script holds one too).
#[tokio::test]
async fn a_stalled_admin_body_gets_408() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::fixed(&[], "ok").await;
    let text = support::config_text(&[origin.addr], NO_HEALTH)
        .replace("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n");
    let strata = Strata::start_text(&text).await;
    for path in ["/purge", "/upstreams/drain"] {
        let mut s = tokio::net::TcpStream::connect(strata.admin).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n\
             Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{{\"u"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let out = read_response(&mut s).await;
        assert!(out.starts_with("HTTP/1.1 408"), "{path}: {out}");
    }
}

/// SPEC §10's memory bound with large objects: misses of 8 MiB bodies
/// through a 32 MiB memory tier keep the real binary's memory within
/// 1.25 × capacity + 64 MiB (104 MiB). Counted as anonymous plus shared
/// resident memory, so the mapped binary (a debug build here) does not
/// count. Before, evicted bodies lived on until moka's maintenance ran
/// (it waits for enough operations to pile up) and freed ones stayed
/// committed in the allocator: about 200 MiB after 30 such misses.
#[tokio::test]
async fn large_objects_keep_memory_within_the_bound() {
    let origin = binary_origin(|_path| 8 << 20).await;
    let (bin, _dir) = binary_with_32_mib(&origin).await;
    let resident = || resident_mib(bin.pid());
    let c = Client::new();
    let mut peak = 0;
    for i in 0..30 {
        let r = c.get(&format!("http://{}/big/{i}", bin.addr)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 8 << 20);
        peak = peak.max(resident());
    }
    let bound = 32 * 5 / 4 + 64;
    assert!(peak <= bound, "peak {peak} MiB over {bound} MiB");
}

/// An origin answering each path with `len(path)` bytes (16 MiB at most)
/// of cacheable `application/octet-stream`, slices of one buffer.
async fn binary_origin(len: fn(&str) -> usize) -> Origin {
    static BODY: std::sync::LazyLock<bytes::Bytes> =
        std::sync::LazyLock::new(|| bytes::Bytes::from(vec![b'x'; 16 << 20]));
    Origin::start(move |req| {
        let body = BODY.slice(..len(req.uri().path()));
        async move {
            let mut r = reply(
                200,
                &[
                    ("cache-control", "public, max-age=300"),
                    ("content-type", "application/octet-stream"),
                ],
                "",
            );
            *r.body_mut() = support::origin::full(body);
            r
        }
    })
    .await
}

/// The real binary in front of `origin` with a 32 MiB memory tier (SPEC
/// §10's bound: 104 MiB); keep the directory while it runs.
async fn binary_with_32_mib(origin: &Origin) -> (support::binary::Binary, tempfile::TempDir) {
    binary_with_memory(origin, "32MiB").await
}

/// The real binary in front of `origin` with a memory tier of `capacity`
/// (`"64MiB"`); keep the directory while it runs.
async fn binary_with_memory(
    origin: &Origin,
    capacity: &str,
) -> (support::binary::Binary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(
        &path,
        support::config_text(
            &[origin.addr],
            &format!("{NO_HEALTH}[cache]\nmemory_capacity = \"{capacity}\"\n"),
        ),
    )
    .unwrap();
    (support::binary::Binary::start(&path, &[]).await, dir)
}

/// SPEC §10: an idle keep-alive connection costs at most 16 KiB. hyper
/// keeps two 8 KiB buffers and the service future's slot for as long as a
/// connection lives (19–20 KiB after a first request) unless Strata takes
/// idle connections back (`server/keepalive.rs`).
#[tokio::test]
async fn idle_keep_alive_connections_cost_at_most_16_kib() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=300")],
        "an idle connection's body",
    )
    .await;
    let get = b"GET /idle HTTP/1.1\r\nHost: x\r\nUser-Agent: idle\r\nAccept: */*\r\n\r\n";
    idle_connections_cost_at_most(&origin, get, 600, 16.0).await;
    assert_eq!(origin.count(), 1);
}

/// The same after a request with a body, once the body has been read to
/// its end: such a connection was never taken back (hyper might still have
/// been reading the body), 16.0–16.35 KiB each.
#[tokio::test]
async fn idle_connections_whose_last_request_had_a_body_are_taken_back_too() {
    const CONNS: u64 = 400;
    let origin = Origin::fixed(&[], "posted").await;
    let post = b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    // Well under the 16 KiB those connections cost when kept.
    idle_connections_cost_at_most(&origin, post, CONNS, 8.0).await;
    assert_eq!(origin.count(), 2 + CONNS as usize + 20);
}

/// Sends `request` twice on one connection, then once on each of `conns`
/// new ones, waits until the binary's RSS has grown by at most `kib` KiB
/// per connection, and sends it again on 20 of them (served once taken
/// back).
async fn idle_connections_cost_at_most(origin: &Origin, request: &[u8], conns: u64, kib: f64) {
    use tokio::io::AsyncWriteExt;
    let (bin, _dir) = binary_with_32_mib(origin).await;
    let mut warm = tokio::net::TcpStream::connect(bin.addr).await.unwrap();
    for _ in 0..2 {
        warm.write_all(request).await.unwrap();
        assert!(read_response(&mut warm).await.starts_with("HTTP/1.1 200"));
    }
    let before = resident_kib(bin.pid());
    let mut open = Vec::new();
    for _ in 0..conns {
        let mut s = tokio::net::TcpStream::connect(bin.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    idle_cost_at_most(bin.pid(), before, conns, kib).await;
    for s in open.iter_mut().take(20) {
        s.write_all(request).await.unwrap();
        assert!(read_response(s).await.starts_with("HTTP/1.1 200"));
    }
}

/// [`resident_kib`] in MiB.
fn resident_mib(pid: u32) -> u64 {
    resident_kib(pid) / 1024
}

/// `len` bytes of text that compresses like prose: words of a small
/// vocabulary with numbers, different for each `seed`.
fn prose(seed: u64, len: usize) -> String {
    const WORDS: [&str; 8] = [
        "alpha ", "beta ", "gamma ", "delta ", "cache ", "proxy ", "origin ", "purge ",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(WORDS[(x % 8) as usize]);
        out.push_str(&(x % 1000).to_string());
    }
    out.truncate(len);
    out
}

/// SPEC §10's memory bound with compressible misses: 100 MiB of 64 KiB
/// text misses, four clients at once, through a 32 MiB memory tier keep
/// the binary within 1.25 × capacity + 64 MiB (104 MiB). Each is encoded
/// (br, gzip) at admission; before, every blocking thread that encoded kept
/// the brotli encoder's 16–34 MiB of tables resident (cleared, hence
/// touched, when the allocator handed them out again), and a burst ran
/// 20–36 such threads: about 490 MiB.
#[tokio::test]
async fn compressed_admissions_keep_memory_within_the_bound() {
    let origin = Origin::start(|req| async move {
        let seed = req
            .uri()
            .path()
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        reply(
            200,
            &[
                ("cache-control", "public, max-age=300"),
                ("content-type", "text/plain"),
            ],
            prose(seed, 64 << 10),
        )
    })
    .await;
    let (bin, _dir) = binary_with_32_mib(&origin).await;
    let (addr, pid) = (bin.addr, bin.pid());
    let clients: Vec<_> = (0..4)
        .map(|client| {
            tokio::spawn(async move {
                let c = Client::new();
                let mut peak = 0;
                for i in 0..400 {
                    let r = c.get(&format!("http://{addr}/text/{client}/{i}")).await;
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body.len(), 64 << 10);
                    peak = peak.max(resident_mib(pid));
                }
                peak
            })
        })
        .collect();
    let mut peak = 0;
    for c in clients {
        peak = peak.max(c.await.unwrap());
    }
    let bound = 32 * 5 / 4 + 64;
    assert!(peak <= bound, "peak {peak} MiB over {bound} MiB");
}

/// The peak resident size of `pid` (MiB), sampled every 5 ms until every
/// one of `clients` has finished (each must succeed).
async fn peak_resident_mib(pid: u32, clients: Vec<tokio::task::JoinHandle<()>>) -> u64 {
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        tokio::task::spawn_blocking(move || {
            let mut peak = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(resident_mib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    for c in clients {
        c.await.unwrap();
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.await.unwrap().max(resident_mib(pid))
}

/// SPEC §10's memory bound with many large misses at once: 16 clients
/// fetching objects of 1 KiB to 16 MiB (each a new URL) through a 32 MiB
/// memory tier keep the real binary within 1.25 × capacity + 64 MiB
/// (104 MiB), sampled every 5 ms while they run. Before, every body being
/// collected for admission was held at once (now a budget bounds them; the
/// rest stream through unstored) and each upstream chunk was a slice of a
/// read buffer of up to ~400 KiB: 178–209 MiB at the peak, about 90 MiB
/// still resident after.
#[tokio::test]
async fn concurrent_large_misses_keep_memory_within_the_bound() {
    const CLIENTS: usize = 16;
    const SIZES: [usize; 7] = [
        1 << 10,
        64 << 10,
        1 << 20,
        4 << 20,
        16 << 20,
        300 << 10,
        8 << 20,
    ];
    let origin = binary_origin(|path| {
        let n: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        SIZES[n % SIZES.len()]
    })
    .await;
    let (bin, _dir) = binary_with_32_mib(&origin).await;
    let (addr, pid) = (bin.addr, bin.pid());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(async move {
                let c = Client::new();
                for i in client..client + 2 * SIZES.len() {
                    let r = c.get(&format!("http://{addr}/mix/{client}/{i}")).await;
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body.len(), SIZES[i % SIZES.len()]);
                }
            })
        })
        .collect();
    let peak = peak_resident_mib(pid, clients).await;
    eprintln!("peak {peak} MiB");
    let bound = 32 * 5 / 4 + 64;
    assert!(peak <= bound, "peak {peak} MiB over {bound} MiB");
    // Misses are stored again once the burst is over (the budget may keep
    // room for a refused large body for a second).
    let c = Client::new();
    support::wait_until(Duration::from_secs(5), "a miss stored, then hit", || {
        let c = &c;
        async move {
            let r = c.get(&format!("http://{addr}/mix/again/0")).await;
            assert_eq!(r.body.len(), 1 << 10);
            r.cache_status().contains("hit")
        }
    })
    .await;
}

/// SPEC §10's memory bound with mid-size objects: 24 clients fetching 64
/// new objects each of 200–300 KiB (every other one text, so encoded at
/// admission) through a 64 MiB memory tier keep the real binary within
/// 1.25 × capacity + 64 MiB (144 MiB). When only bodies of 1 MiB or more
/// had mappings of their own, freed bodies of this size stayed committed
/// in the allocator: 148–149 MiB here (debug binary; the chaos probe saw
/// 153–160 with 16 clients on the release binary), 122 MiB now.
#[tokio::test]
async fn mid_size_misses_keep_memory_within_the_bound() {
    const CLIENTS: usize = 24;
    const EACH: usize = 64;
    static BODY: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| {
        let text: String = (0..12_000)
            .map(|i| format!("line {i}: mid-size objects through a small tier\n"))
            .collect();
        bytes::Bytes::from(text)
    });
    let len = |n: usize| (200 << 10) + (n * 7919) % (100 << 10);
    let origin = Origin::start(move |req| {
        let n: usize = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let body = BODY.slice(..len(n));
        let kind = if n.is_multiple_of(2) {
            "text/plain"
        } else {
            "application/octet-stream"
        };
        async move {
            let mut r = reply(
                200,
                &[
                    ("cache-control", "public, max-age=300"),
                    ("content-type", kind),
                ],
                "",
            );
            *r.body_mut() = support::origin::full(body);
            r
        }
    })
    .await;
    let (bin, _dir) = binary_with_memory(&origin, "64MiB").await;
    let (addr, pid) = (bin.addr, bin.pid());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(async move {
                let c = Client::new();
                for i in 0..EACH {
                    let n = client * EACH + i;
                    let ae = if i % 3 == 0 { "identity" } else { "br, gzip" };
                    let r = c
                        .get_with(
                            &format!("http://{addr}/mid/{n}"),
                            &[("accept-encoding", ae)],
                        )
                        .await;
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    let peak = peak_resident_mib(pid, clients).await;
    eprintln!("peak {peak} MiB");
    let bound = 64 * 5 / 4 + 64;
    assert!(peak <= bound, "peak {peak} MiB over {bound} MiB");
}

/// A client that half-closes its connection right after its request
/// (shuts down its sending side, as `nc -N` and some scripts do) gets its
/// answer when the answer is ready at once: hyper took the end of input
/// for a closed connection and dropped the request before polling it, so
/// about half of such hits went unanswered, with no log line or count
/// (slow-peers probe). nginx and Varnish answer them.
#[tokio::test]
async fn a_hit_is_answered_to_a_client_that_half_closed_after_its_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::fixed(&[("cache-control", "max-age=300")], "stored").await;
    // The real binary: in the test's own runtime the client's bytes and
    // its end arrived apart, and the race never showed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, support::config_text(&[origin.addr], NO_HEALTH)).unwrap();
    let s = support::binary::Binary::start(&path, &[]).await;
    let c = Client::new();
    let url = format!("http://{}/half", s.addr);
    c.get(&url).await;
    assert!(c.get(&url).await.is_hit());
    for (i, version) in ["HTTP/1.1", "HTTP/1.0", "HTTP/1.1", "HTTP/1.0"]
        .iter()
        .cycle()
        .take(40)
        .enumerate()
    {
        let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let head = format!("GET /half {version}\r\nHost: {}\r\n\r\n", s.addr);
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out))
            .await
            .expect("the connection ends within 10 s")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains(" 200 ") && out.ends_with("stored"),
            "try {i}: {out:?}"
        );
    }
    assert_eq!(origin.count(), 1);
}

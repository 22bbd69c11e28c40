//! Conditional and range requests end to end where the cache's fetch
//! dropped them: a miss whose response is not stored (no-store, private,
//! Set-Cookie, Authorization, over `max_object_size`) is answered as the
//! origin would answer the same request forwarded (RFC 9110 §13.2.2, §14.2);
//! and the stored side: `If-Modified-Since` against the stored `Date`
//! (RFC 9111 §4.3.2), `Accept-Ranges` on what Strata serves ranges of.
//! Real origins count every request.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::origin::{field, reply};
use support::{http_date, wait_until, Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

async fn strata(origin: &Origin, extra: &str) -> Strata {
    Strata::start(&[origin.addr], &format!("{NO_HEALTH}{extra}")).await
}

/// A page of text (compressible, over the default `min_size`).
fn page() -> String {
    (0..100)
        .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect()
}

/// An origin that checks `If-Match` as origins do (412 when no tag
/// matches; `W/` never does), then `If-Unmodified-Since`, then
/// `If-None-Match` (304 for `"v1"` in it), and answers each path as its name says:
/// `/no-store…`, `/private…`, `/cookie…` (a `Set-Cookie`, no `public`),
/// anything else cacheable for a minute; `ETag: "v1"`, a day-old
/// `Last-Modified`.
async fn strict_origin() -> Origin {
    let modified = http_date(-86_400);
    Origin::start(move |req| {
        let modified = modified.clone();
        async move {
            let path = req.uri().path().to_string();
            let if_match = field(&req, "if-match");
            if if_match != "-" && !if_match.split(',').any(|t| t.trim() == "\"v1\"") {
                return reply(412, &[], "");
            }
            let unmodified = httpdate::parse_http_date(&field(&req, "if-unmodified-since"));
            let changed = httpdate::parse_http_date(&modified).ok();
            if if_match == "-" && unmodified.is_ok_and(|since| changed > Some(since)) {
                return reply(412, &[], "");
            }
            if field(&req, "if-none-match").contains("\"v1\"") {
                return reply(304, &[("etag", "\"v1\"")], "");
            }
            let cc = if path.starts_with("/no-store") {
                "no-store"
            } else if path.starts_with("/private") {
                "private, max-age=60"
            } else {
                "max-age=60"
            };
            let mut headers = vec![
                ("cache-control", cc),
                ("content-type", "text/plain"),
                ("etag", "\"v1\""),
                ("last-modified", modified.as_str()),
            ];
            if path.starts_with("/cookie") {
                headers.push(("set-cookie", "session=1"));
            }
            reply(200, &headers, page())
        }
    })
    .await
}

/// F1: `If-Match` and `If-Unmodified-Since` were dropped from the fetch and
/// never evaluated when the answer was not stored: the client got the 200
/// its precondition forbids, and the next identical request (hit-for-miss,
/// forwarded) got the origin's 412.
#[tokio::test]
async fn preconditions_hold_on_a_response_that_is_not_stored() {
    let origin = strict_origin().await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let old_date = "Mon, 01 Jan 2001 00:00:00 GMT";
    let mut n = 0;
    for path in ["/no-store", "/private", "/cookie", "/auth"] {
        for (method, condition) in [
            (Method::GET, ("if-match", "\"stale-v0\"")),
            (Method::GET, ("if-match", "W/\"v1\"")),
            (Method::HEAD, ("if-match", "\"stale-v0\"")),
            (Method::GET, ("if-unmodified-since", old_date)),
        ] {
            n += 1;
            let url = s.url(&format!("{path}{n}"));
            let mut headers = vec![condition, ("range", "bytes=0-9")];
            if path == "/auth" {
                headers.push(("authorization", "Bearer x"));
            }
            let first = c.send(method.clone(), &url, &headers, Bytes::new()).await;
            assert_eq!(
                first.status,
                412,
                "{method} {path} {condition:?}: {}",
                first.cache_status()
            );
            assert!(first.body.is_empty());
            assert!(
                first.cache_status().contains("fwd=miss"),
                "{}",
                first.cache_status()
            );
            // The same request again: forwarded (hit-for-miss), or a
            // miss again for Authorization; the same answer.
            let again = c.send(method.clone(), &url, &headers, Bytes::new()).await;
            assert_eq!(again.status, 412, "{method} {path} {condition:?} again");
        }
        // A precondition that holds: the response itself.
        n += 1;
        let url = s.url(&format!("{path}{n}"));
        let mut headers = vec![
            ("if-match", "\"other\", \"v1\""),
            ("if-unmodified-since", old_date),
        ];
        if path == "/auth" {
            headers.push(("authorization", "Bearer x"));
        }
        let r = c.send(Method::GET, &url, &headers, Bytes::new()).await;
        assert_eq!(
            r.status, 200,
            "{path}: If-Match wins over If-Unmodified-Since"
        );
        assert_eq!(r.text(), page());
        // If-Modified-Since against the origin's Last-Modified.
        n += 1;
        let url = s.url(&format!("{path}{n}"));
        let now = http_date(0);
        let mut headers = vec![("if-modified-since", now.as_str())];
        if path == "/auth" {
            headers.push(("authorization", "Bearer x"));
        }
        let r = c.send(Method::GET, &url, &headers, Bytes::new()).await;
        assert_eq!(r.status, 304, "{path}: If-Modified-Since");
        assert_eq!(r.header("etag"), Some("\"v1\""));
    }
    // A gzip client's tags of Strata's encoding name the origin's
    // representation, as on a forwarded request.
    let r = c
        .get_with(
            &s.url("/no-store-gz"),
            &[("accept-encoding", "gzip"), ("if-match", "\"v1-gzip\"")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.cache_status());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    // F5: a 304 carries the tag the client holds (the identity one here),
    // as the forwarded request's does, never one it cannot match.
    for (i, held) in ["\"v1\"", "W/\"v1-gzip\""].into_iter().enumerate() {
        let url = s.url(&format!("/no-store-inm{i}"));
        let headers = [("accept-encoding", "gzip"), ("if-none-match", held)];
        for attempt in ["miss", "bypass"] {
            let r = c.get_with(&url, &headers).await;
            assert_eq!(r.status, 304, "{held} {attempt}: {}", r.cache_status());
            assert_eq!(r.header("etag"), Some(held), "{held} {attempt}");
        }
    }
}

/// F1 with a body over `max_object_size`, F2: a range of it is cut from
/// the stream (the length is known from `Content-Length` before the
/// body), where the whole object was sent; preconditions first.
#[tokio::test]
async fn a_range_of_a_response_too_large_to_store_is_cut_from_the_stream() {
    const LEN: usize = 200 * 1024;
    let body: Bytes = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
    let served = body.clone();
    let origin = Origin::start(move |req| {
        let body = served.clone();
        async move {
            let etag = if req.uri().path().starts_with("/weak") {
                "W/\"big\""
            } else {
                "\"big\""
            };
            let ctype = if req.uri().path().starts_with("/text") {
                "text/plain"
            } else {
                "application/octet-stream"
            };
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-type", ctype),
                    ("etag", etag),
                ],
                body,
            )
        }
    })
    .await;
    let s = strata(&origin, "[cache]\nmax_object_size = \"64KiB\"\n").await;
    let c = Client::new();
    // Path, request fields, status, the bytes of a 206 (first, last).
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        u16,
        Option<(usize, usize)>,
    );
    let cases: [Case; 9] = [
        ("/a", &[("range", "bytes=100-199")], 206, Some((100, 199))),
        (
            "/b",
            &[("range", "bytes=-10")],
            206,
            Some((LEN - 10, LEN - 1)),
        ),
        (
            "/c",
            &[("range", "bytes=150000-")],
            206,
            Some((150_000, LEN - 1)),
        ),
        (
            "/d",
            &[("range", "bytes=0-0"), ("if-range", "\"big\"")],
            206,
            Some((0, 0)),
        ),
        ("/e", &[("range", "bytes=999999-")], 416, None),
        // The whole object: If-Range names another version; a weak tag;
        // several ranges; an encoding made on the fly.
        (
            "/f",
            &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
            200,
            None,
        ),
        ("/weak", &[("range", "bytes=0-9")], 200, None),
        ("/g", &[("range", "bytes=0-1,5-6")], 200, None),
        (
            "/text",
            &[("range", "bytes=0-9"), ("accept-encoding", "gzip")],
            200,
            None,
        ),
    ];
    for (path, headers, status, range) in cases {
        let r = c.get_with(&s.url(path), headers).await;
        assert_eq!(r.status, status, "{path} {headers:?}: {}", r.cache_status());
        assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
        match (status, range) {
            (206, Some((first, last))) => {
                assert!(r.body[..] == body[first..=last], "{path}: the bytes");
                let content_range = format!("bytes {first}-{last}/{LEN}");
                assert_eq!(r.header("content-range"), Some(content_range.as_str()));
                let count = (last - first + 1).to_string();
                assert_eq!(r.header("content-length"), Some(count.as_str()));
            }
            (416, _) => {
                let unsatisfied = format!("bytes */{LEN}");
                assert_eq!(r.header("content-range"), Some(unsatisfied.as_str()));
            }
            _ if path == "/text" => {
                assert_eq!(r.header("content-encoding"), Some("gzip"));
            }
            _ => assert!(r.body[..] == body[..], "{path}: the whole body"),
        }
    }
    // A resumed download of another version: 412, not its bytes.
    let r = c
        .get_with(
            &s.url("/h"),
            &[("range", "bytes=100-"), ("if-match", "\"old\"")],
        )
        .await;
    assert_eq!(r.status, 412);
    // HEAD: the fields of the whole response.
    let r = c
        .send(
            Method::HEAD,
            &s.url("/i"),
            &[("range", "bytes=0-9")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let whole = LEN.to_string();
    assert_eq!(r.header("content-length"), Some(whole.as_str()));
}

/// F3: RFC 9111 §4.3.2: a stored response without `Last-Modified` is
/// compared with `If-Modified-Since` by its `Date`.
#[tokio::test]
async fn if_modified_since_uses_the_stored_date_without_last_modified() {
    let date = http_date(-30);
    let sent = date.clone();
    let origin = Origin::start(move |_req| {
        let date = sent.clone();
        async move {
            reply(
                200,
                &[("cache-control", "max-age=300"), ("date", date.as_str())],
                "no last-modified",
            )
        }
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    let url = s.url("/nolm");
    assert_eq!(c.get(&url).await.status, 200);
    for (ims, status) in [
        (http_date(-10), 304),
        (date.clone(), 304),
        (http_date(-120), 200),
    ] {
        let r = c
            .get_with(&url, &[("if-modified-since", ims.as_str())])
            .await;
        assert!(r.is_hit(), "{}", r.cache_status());
        assert_eq!(r.status, status, "If-Modified-Since {ims}, Date {date}");
    }
    // If-None-Match decides when present.
    let r = c
        .get_with(
            &url,
            &[
                ("if-modified-since", http_date(-10).as_str()),
                ("if-none-match", "\"x\""),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.count(), 1);
}

/// F4: every stored 200 is served in byte ranges, its encoded copies too,
/// and says so (`Accept-Ranges: bytes`, RFC 9110 §14.3) on the miss and
/// the hits, in place of an origin's `none`, as nginx and Varnish do.
#[tokio::test]
async fn stored_200s_advertise_byte_ranges() {
    let origin = Origin::start(|req| async move {
        let path = req.uri().path().to_string();
        let mut headers = vec![
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ];
        if path == "/none" {
            headers.push(("accept-ranges", "none"));
        }
        let status = if path == "/missing" { 404 } else { 200 };
        reply(status, &headers, page())
    })
    .await;
    let s = strata(&origin, "").await;
    let c = Client::new();
    for path in ["/plain", "/none"] {
        let url = s.url(path);
        let miss = c.get(&url).await;
        assert_eq!(miss.header("accept-ranges"), Some("bytes"), "{path} miss");
        let hit = c.get(&url).await;
        assert!(hit.is_hit());
        assert_eq!(hit.header("accept-ranges"), Some("bytes"), "{path} hit");
        let r = c.get_with(&url, &[("range", "bytes=0-3")]).await;
        assert_eq!(r.status, 206, "{path}");
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{path} 206");
        wait_until(Duration::from_secs(10), "gzip copy stored", || async {
            let r = c.get_with(&url, &[("accept-encoding", "gzip")]).await;
            r.is_hit() && r.header("content-encoding") == Some("gzip")
        })
        .await;
        let r = c.get_with(&url, &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{path} gzip hit");
        let r = c
            .get_with(&url, &[("accept-encoding", "gzip"), ("range", "bytes=0-3")])
            .await;
        assert_eq!(r.status, 206, "{path} gzip range");
    }
    // A stored 404 is never served in ranges: nothing is said.
    c.get(&s.url("/missing")).await;
    let r = c.get(&s.url("/missing")).await;
    assert!(r.is_hit());
    assert_eq!(r.header("accept-ranges"), None);
}

/// A range or conditional miss is answered once its body is stored; a
/// body that stalls past `body_idle_timeout` is an upstream timeout: `504`
/// (SPEC §3), as the metric already called it. It was a `502`, and no
/// "upstream failed" line was logged, although Strata wrote that answer
/// itself (slow-peers probe).
#[tokio::test]
async fn a_range_or_conditional_miss_whose_body_stalls_is_a_504() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 1000\r\n\r\nonly ten b")
                    .await;
                // Holds the connection, sending nothing more.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let strata = Strata::start_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nservers = [\"{addr}\"]\nbody_idle_timeout = \"300ms\"\n{NO_HEALTH}"
    ))
    .await;
    let c = Client::new();
    for (i, field) in [("range", "bytes=0-4"), ("if-none-match", "\"zz\"")]
        .into_iter()
        .enumerate()
    {
        let r = c
            .get_with(&strata.url(&format!("/stall/{i}")), &[field])
            .await;
        assert_eq!(r.status, 504, "{field:?}: {}", r.cache_status());
    }
}

/// The same failure with a stale copy inside `grace`: the copy stands in,
/// as for a failure before the head (SPEC §6). It was a `504`
/// (regression probe).
#[tokio::test]
async fn a_stalled_range_miss_over_a_stale_copy_in_grace_serves_the_copy() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                if first {
                    // Closed after it: the next fetch takes a new connection.
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncache-control: max-age=1\r\nconnection: close\r\ncontent-length: 10\r\n\r\n0123456789")
                        .await;
                    return;
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncache-control: max-age=1\r\ncontent-length: 1000\r\n\r\nonly ten b")
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let strata = Strata::start_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\
         [upstream]\nservers = [\"{addr}\"]\nbody_idle_timeout = \"300ms\"\n{NO_HEALTH}\
         [cache]\ngrace = \"60s\"\n"
    ))
    .await;
    let c = Client::new();
    assert_eq!(c.get(&strata.url("/g")).await.text(), "0123456789");
    wait_until(Duration::from_secs(10), "the copy stale", || async {
        let v: serde_json::Value =
            serde_json::from_slice(&c.get(&strata.admin_url("/cache?url=/g")).await.body)
                .unwrap_or_default();
        v["objects"][0]["variants"][0]["ttl"]
            .as_i64()
            .is_some_and(|t| t <= 0)
    })
    .await;
    let r = c
        .get_with(&strata.url("/g"), &[("range", "bytes=0-3")])
        .await;
    assert_eq!(r.status, 206, "{}", r.cache_status());
    assert_eq!(r.text(), "0123");
    assert!(
        r.cache_status().contains("detail=grace"),
        "{}",
        r.cache_status()
    );
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

//! SPEC §6, wire side, end to end: message framing both ways (raw-socket
//! origins and clients where hyper would not misbehave), validators of
//! encoded responses, compression on every path, and 103 Early Hints.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use strata::compression::{decode, Coding};
use support::origin::reply;
use support::{Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

#[tokio::test]
async fn upstream_transfer_encoding_wins_over_content_length() {
    let (addr, answered) = support::origin::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let s = Strata::start(&[addr], NO_HEALTH).await;
    let r = Client::new().get(&s.url("/te-cl")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_ne!(r.header("content-length"), Some("3"));
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upstream_transfer_encoding_not_ending_in_chunked_is_read_to_close() {
    let (addr, answered) = support::origin::raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Type: image/png\r\n\r\nhello world",
    )
    .await;
    let s = Strata::start(&[addr], NO_HEALTH).await;
    let r = Client::new().get(&s.url("/close")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// RFC 9112 §6.1: a transfer coding other than `chunked` is not decoded,
/// so the relayed body is still in it: it is labelled as a content coding
/// (`Content-Encoding: gzip`), on the miss and on the hit. The coding was
/// dropped with the hop-by-hop field, and gzip bytes served and stored as
/// plain text.
#[tokio::test]
async fn an_upstream_transfer_coding_becomes_a_content_coding() {
    use std::io::Write;
    let text = "hello world, gzip then chunked\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n",
        gz.len()
    )
    .into_bytes();
    response.extend_from_slice(&gz);
    response.extend_from_slice(b"\r\n0\r\n\r\n");
    let (addr, answered) = support::origin::raw(Box::leak(response.into_boxed_slice())).await;
    let s = Strata::start(&[addr], NO_HEALTH).await;
    let c = Client::new();
    for expect in ["fwd=miss", "hit"] {
        let r = c.get(&s.url("/tegz")).await;
        assert_eq!(r.status, 200);
        assert!(r.cache_status().contains(expect), "{}", r.cache_status());
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(decode(Coding::Gzip, &r.body).unwrap(), text.as_bytes());
    }
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// RFC 9110 §8.6: an upstream `Content-Length` that repeats one value (as
/// a list or as two fields) reaches the client as that one value, on the
/// cache path and on a pass; the client used to get no response at all
/// (hyper's server refuses to send the list) while the body was stored.
#[tokio::test]
async fn a_repeated_upstream_content_length_goes_on_as_one_value() {
    for (head, cc) in [
        ("Content-Length: 5, 5\r\n", "max-age=60"),
        ("Content-Length: 5\r\nContent-Length: 5\r\n", "max-age=60"),
        ("Content-Length: 5,5,5\r\n", "no-store"),
    ] {
        let response =
            format!("HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\n{head}\r\nHELLO").into_bytes();
        let (addr, answered) = support::origin::raw(Box::leak(response.into_boxed_slice())).await;
        let s = Strata::start(&[addr], NO_HEALTH).await;
        let c = Client::new();
        for _ in 0..2 {
            let r = c.get(&s.url("/cl")).await;
            assert_eq!(r.status, 200, "{head}");
            assert_eq!(r.text(), "HELLO", "{head}");
            assert_eq!(r.header("content-length"), Some("5"), "{head}");
        }
        let expected = if cc == "no-store" { 2 } else { 1 };
        assert_eq!(answered.load(Ordering::SeqCst), expected, "{head}");
    }
}

/// An origin that reads every request body to its end and counts the
/// complete ones.
async fn body_counting_origin() -> (Origin, Arc<AtomicUsize>) {
    let complete = Arc::new(AtomicUsize::new(0));
    let c = complete.clone();
    let origin = Origin::start(move |req| {
        let c = c.clone();
        async move {
            match req.into_body().collect().await {
                Ok(_) => {
                    c.fetch_add(1, Ordering::SeqCst);
                    reply(200, &[], "ok")
                }
                Err(_) => reply(400, &[], "broken"),
            }
        }
    })
    .await;
    (origin, complete)
}

#[tokio::test]
async fn a_broken_client_body_is_the_clients_fault() {
    let (origin, complete) = body_counting_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    for raw in [
        &b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        &b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\nhello=world"[..],
        &b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello"[..],
        &b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let answer = support::http::raw(s.addr, raw).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{}: {answer}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(complete.load(Ordering::SeqCst), 0);
    let metrics = Client::new().get(&s.admin_url("/metrics")).await.text();
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("strata_upstream_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(counted.is_empty(), "{counted:?}");
    // A well-formed chunked POST still goes through.
    let ok = support::http::raw(
        s.addr,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(complete.load(Ordering::SeqCst), 1);
}

/// RFC 9112 §6.1: hyper decodes only the final `chunked`, so a coding
/// before it would be dropped on the way upstream (the origin would take
/// gzip bytes for the body): `501`, never forwarded. `chunked` twice is
/// broken framing: `400`. Neither is the upstream's fault.
#[tokio::test]
async fn a_transfer_coding_before_chunked_is_refused_not_dropped() {
    let (origin, complete) = body_counting_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (te, status) in [
        ("Transfer-Encoding: gzip, chunked", "501"),
        ("Transfer-Encoding: GZIP,chunked", "501"),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
            "501",
        ),
        ("Transfer-Encoding: chunked, chunked", "400"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "400",
        ),
    ] {
        let raw = format!("POST /p HTTP/1.1\r\nHost: x\r\n{te}\r\n\r\n{body}");
        let answer = support::http::raw(s.addr, raw.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{te}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("cache-status:"),
            "{answer}"
        );
    }
    assert_eq!(complete.load(Ordering::SeqCst), 0);
    assert_eq!(origin.count(), 0);
    let metrics = Client::new().get(&s.admin_url("/metrics")).await.text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("strata_upstream_errors_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Case and spaces of the one `chunked` do not matter.
    let ok = support::http::raw(
        s.addr,
        format!("POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\nConnection: close\r\n\r\n{body}").as_bytes(),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(complete.load(Ordering::SeqCst), 1);
}

fn page() -> String {
    (0..200)
        .map(|i| format!("<p>paragraph {i}: the quick brown fox</p>\n"))
        .collect()
}

#[tokio::test]
async fn encoded_etags_validate_on_uncached_responses() {
    // The origin answers 304 only to its own validator, compared as a
    // plain string.
    let origin = Origin::start(|req| async move {
        let inm = req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let h = [
            ("cache-control", "private, max-age=0, must-revalidate"),
            ("content-type", "text/html"),
            ("etag", "\"xyz\""),
        ];
        if inm.as_deref() == Some("\"xyz\"") {
            reply(304, &h[..1], "")
        } else {
            reply(200, &h, page())
        }
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let first = c
        .get_with(&s.url("/doc"), &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    let etag = first.header("etag").expect("etag").to_string();
    assert_eq!(
        decode(Coding::Gzip, &first.body).unwrap(),
        Bytes::from(page())
    );
    // Revalidated the way a browser does, three times (leader, then
    // hit-for-miss pass-through).
    for _ in 0..3 {
        let r = c
            .get_with(
                &s.url("/doc"),
                &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
            )
            .await;
        assert_eq!(r.status, 304, "{}", r.cache_status());
        assert!(r.body.is_empty());
    }
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn every_compressible_response_is_compressed_on_every_path() {
    let origin = Origin::start(|req| async move {
        let cc = if req.uri().path().starts_with("/cached") {
            "max-age=60"
        } else {
            "no-store"
        };
        reply(
            200,
            &[("cache-control", cc), ("content-type", "text/html")],
            page(),
        )
    })
    .await;
    let rules = "[[rules]]\nmatch = \"/ruled/*\"\ncache_control = \"no-store\"\n";
    let s = Strata::start(&[origin.addr], &format!("{NO_HEALTH}{rules}")).await;
    let off = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}[cache]\nenabled = false\n"),
    )
    .await;
    let c = Client::new();
    let br = [("accept-encoding", "br")];
    let check = |r: &support::Reply, what: &str| {
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.header("content-encoding"), Some("br"), "{what}");
        assert!(
            r.header("vary")
                .is_some_and(|v| v.contains("Accept-Encoding")),
            "{what}"
        );
        assert_eq!(
            decode(Coding::Br, &r.body).unwrap(),
            Bytes::from(page()),
            "{what}"
        );
    };
    // Uncacheable: the leader, then hit-for-miss pass-through.
    for i in 0..3 {
        check(
            &c.get_with(&s.url("/?q=7"), &br).await,
            &format!("no-store #{i}"),
        );
    }
    for i in 0..2 {
        check(
            &c.get_with(&s.url("/ruled/a"), &br).await,
            &format!("rule #{i}"),
        );
    }
    let post = c
        .send(
            Method::POST,
            &s.url("/form"),
            &br,
            Bytes::from_static(b"a=1"),
        )
        .await;
    check(&post, "POST");
    let disabled = c.get_with(&off.url("/cached"), &br).await;
    check(&disabled, "cache disabled");
    assert_eq!(disabled.cache_status(), "strata; fwd=bypass");
    // HEAD is never encoded on the pass path.
    let head = c
        .send(Method::HEAD, &s.url("/?q=7"), &br, Bytes::new())
        .await;
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn early_hints_do_not_break_the_final_response_and_are_never_stored() {
    let (addr, answered) = support::origin::raw(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\nHTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let s = Strata::start(&[addr], NO_HEALTH).await;
    let c = Client::new();
    let first = c.get(&s.url("/hinted")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello");
    let second = c.get(&s.url("/hinted")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "hello");
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// Upstream responses that must not reach the client as they came: a 204
/// carrying `Content-Length` (RFC 9110 §8.6 forbids it; it went out), and
/// a 101 to a request that asked for no upgrade (it went out without
/// `Upgrade`, leaving the client a dead connection): 502 on the cache path
/// and on pass-through alike.
#[tokio::test]
async fn a_204_loses_content_length_and_an_unasked_101_is_a_502() {
    let (no_content, _) = support::origin::raw(
        b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\njunk",
    )
    .await;
    let s = Strata::start(&[no_content], NO_HEALTH).await;
    let r = Client::new().get(&s.url("/gone")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None);
    assert!(r.body.is_empty());

    let (switch, answered) = support::origin::raw(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\nRAW",
    )
    .await;
    let s = Strata::start(&[switch], NO_HEALTH).await;
    let c = Client::new();
    let r = c.get(&s.url("/101")).await;
    assert_eq!(r.status, 502, "cache path: {:?}", r.headers);
    let r = c
        .send(Method::POST, &s.url("/101"), &[], Bytes::from_static(b"x"))
        .await;
    assert_eq!(r.status, 502, "pass-through: {:?}", r.headers);
    assert!(answered.load(Ordering::SeqCst) >= 2);
    // Counted as upstream errors (they were not, only as `101` answers).
    assert_eq!(protocol_errors(&s, switch).await, 2.0);
}

/// `strata_upstream_errors_total{kind="protocol"}` of `server`.
async fn protocol_errors(s: &Strata, server: std::net::SocketAddr) -> f64 {
    let text = Client::new().get(&s.admin_url("/metrics")).await.text();
    let series = format!("strata_upstream_errors_total{{kind=\"protocol\",server=\"{server}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap_or(-1.0))
}

/// An HTTP/1.0 client's `Expect: 100-continue` is ignored (RFC 9110
/// §10.1.1), not passed upstream as an HTTP/1.1 expectation.
#[tokio::test]
async fn an_http_1_0_expectation_is_not_forwarded() {
    let expected = Arc::new(AtomicUsize::new(0));
    let seen = expected.clone();
    let origin = Origin::start(move |req| {
        if req.headers().contains_key("expect") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        async move { reply(200, &[("cache-control", "no-store")], "ok") }
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let out = support::http::raw(
        s.addr,
        b"POST /up HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert_eq!(origin.count(), 1);
    assert_eq!(expected.load(Ordering::SeqCst), 0);
}

/// RFC 9112 §9.3: HTTP/1.0 has no chunked coding, so a body of unknown
/// length (an upstream's chunked miss) ends only when the connection
/// closes; a keep-alive HTTP/1.0 client was told `Connection: keep-alive`
/// and then the connection closed under its next request. It is now told
/// `Connection: close`; a response with a length keeps the connection.
#[tokio::test]
async fn an_http_1_0_client_is_told_close_when_only_closing_ends_the_body() {
    let (addr, _) = support::origin::raw(
        b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let s = Strata::start(&[addr], NO_HEALTH).await;
    let out = support::http::raw(
        s.addr,
        b"GET /chunked HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    let head = out.to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200"), "{out}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{out}");
    assert!(!head.contains("keep-alive"), "{out}");
    assert!(out.ends_with("hello"), "{out}");
    // With a length the connection may stay open.
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "sized").await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let out = support::http::raw(
        s.addr,
        b"GET /sized HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(
        !out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
}

/// An entity-tag may hold obs-text (RFC 9110 §8.8.3): a client's
/// `If-None-Match`, `If-Match` and `If-Range` naming such a tag are
/// compared byte for byte with the stored one (cache-tests.fyi's
/// `conditional-etag-strong-respond-obs-text`). They were read as text,
/// failed, and were ignored: a 200 for the matching `If-None-Match`, a 200
/// for the failing `If-Match`, a 206 for the failing `If-Range`.
#[tokio::test]
async fn conditionals_compare_an_obs_text_etag_byte_for_byte() {
    let (origin, answered) = support::origin::raw(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: \"abc\xfc\"\r\nContent-Length: 10\r\n\r\n0123456789",
    )
    .await;
    let s = Strata::start(&[origin], NO_HEALTH).await;
    let first = Client::new().get(&s.url("/obs")).await;
    assert_eq!(first.status, 200);
    let ask = |fields: &'static [u8]| {
        let addr = s.addr;
        let mut req =
            format!("GET /obs HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
        req.extend_from_slice(fields);
        req.extend_from_slice(b"\r\n");
        async move { support::http::raw(addr, &req).await }
    };
    let matching = ask(b"If-None-Match: \"abc\xfc\"\r\n").await;
    assert!(matching.starts_with("HTTP/1.1 304"), "{matching}");
    let other = ask(b"If-None-Match: \"abd\xfc\"\r\n").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    let failing = ask(b"If-Match: \"zzz\xfc\"\r\n").await;
    assert!(failing.starts_with("HTTP/1.1 412"), "{failing}");
    let holding = ask(b"If-Match: \"abc\xfc\"\r\n").await;
    assert!(holding.starts_with("HTTP/1.1 200"), "{holding}");
    let stale_range = ask(b"Range: bytes=0-1\r\nIf-Range: \"zzz\xfc\"\r\n").await;
    assert!(stale_range.starts_with("HTTP/1.1 200"), "{stale_range}");
    let range = ask(b"Range: bytes=0-1\r\nIf-Range: \"abc\xfc\"\r\n").await;
    assert!(range.starts_with("HTTP/1.1 206"), "{range}");
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "all answered from the cache"
    );
}

/// A `304` to a request Strata sent without a precondition answers
/// nothing that was asked (RFC 9110 §15.4.5): `502`, as Varnish's
/// built-in VCL does, on the cache path and on pass-through alike, and
/// never relayed (a browser holding nothing showed an empty page, and
/// the URL was then marked uncacheable). A stored copy whose
/// revalidation ends in one stands in under grace. A client's own
/// conditional request passed through still gets the origin's `304`.
#[tokio::test]
async fn a_304_to_an_unconditional_request_is_a_502() {
    let answered = Arc::new(AtomicUsize::new(0));
    let n = answered.clone();
    let origin = Origin::start(move |req| {
        let first_stale = req.uri().path() == "/stale" && n.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first_stale {
                // Stored already stale (Age = max-age), with a validator.
                return reply(
                    200,
                    &[
                        ("cache-control", "max-age=1"),
                        ("age", "1"),
                        ("etag", "\"a\""),
                    ],
                    "stored",
                );
            }
            reply(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"b\"")],
                "",
            )
        }
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    for _ in 0..2 {
        let miss = c.get(&s.url("/never")).await;
        assert_eq!(miss.status, 502, "{}", miss.cache_status());
    }
    let post = c
        .send(
            Method::POST,
            &s.url("/never"),
            &[],
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(post.status, 502);
    // A GET with a body passes through, its precondition with it.
    let asked = c
        .send(
            Method::GET,
            &s.url("/never"),
            &[("if-none-match", "\"b\"")],
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(asked.status, 304, "{}", asked.cache_status());
    let stored = c.get(&s.url("/stale")).await;
    assert_eq!(stored.text(), "stored");
    // Revalidated with `"a"`, answered `304 "b"` (selects nothing), asked
    // again unconditionally, answered 304 again: the stored copy, in grace.
    let graced = c.get(&s.url("/stale")).await;
    assert_eq!(graced.status, 200);
    assert_eq!(graced.text(), "stored");
    assert!(
        graced.cache_status().contains("detail=grace"),
        "{}",
        graced.cache_status()
    );
    // Each unasked 304 is an upstream error: two misses, the POST and the
    // revalidation's unconditional retry.
    assert_eq!(protocol_errors(&s, origin.addr).await, 4.0);
}

/// RFC 9110 §8.6: no `Content-Length` on a `204`; a HEAD answered from a
/// stored one carried `Content-Length: 0` (the GET's did not).
#[tokio::test]
async fn a_stored_204_has_no_content_length_for_head_either() {
    let origin =
        Origin::start(
            |_req| async move { reply(204, &[("cache-control", "public, max-age=60")], "") },
        )
        .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    for _ in 0..2 {
        let head = c
            .send(Method::HEAD, &s.url("/empty"), &[], Bytes::new())
            .await;
        assert_eq!(head.status, 204);
        assert_eq!(
            head.header("content-length"),
            None,
            "{}",
            head.cache_status()
        );
    }
    let get = c.get(&s.url("/empty")).await;
    assert!(get.is_hit(), "{}", get.cache_status());
    assert_eq!(get.header("content-length"), None);
    assert_eq!(origin.count(), 1);
}

/// RFC 9110 §6.6.1: a stored response with two `Date` lines (or an
/// unparsable one) goes out with one valid `Date`, the time it was
/// received; freshness already ignored the invalid field, and a cache
/// downstream reading the first line saw a response 100 s old.
#[tokio::test]
async fn an_invalid_date_is_replaced_by_the_time_received() {
    let origin = Origin::start(|req| async move {
        let date = match req.uri().path() {
            "/two" => vec![support::http_date(-100), support::http_date(0)],
            _ => vec!["yesterday".to_string()],
        };
        let mut headers = vec![("cache-control", "max-age=60")];
        headers.extend(date.iter().map(|d| ("date", d.as_str())));
        reply(200, &headers, "dated")
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    for path in ["/two", "/bad"] {
        for _ in 0..2 {
            let r = c.get(&s.url(path)).await;
            let dates: Vec<_> = r.headers.get_all("date").iter().collect();
            assert_eq!(dates.len(), 1, "{path}: {dates:?}");
            let sent = httpdate::parse_http_date(dates[0].to_str().unwrap()).unwrap();
            let skew = std::time::SystemTime::now()
                .duration_since(sent)
                .unwrap_or_default();
            assert!(
                skew < std::time::Duration::from_secs(30),
                "{path}: {dates:?}"
            );
        }
    }
}

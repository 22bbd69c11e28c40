//! Compression end to end: negotiation, stored encoded variants served
//! without recompression, pass-through of upstream encodings, and the
//! cases that must stay untouched.

mod support;

use bytes::Bytes;
use std::time::Duration;
use strata::compression::{decode, Coding};

use support::{wait_until, Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

fn page() -> String {
    (0..200)
        .map(|i| format!("<p>paragraph {i}: the quick brown fox jumps over the lazy dog</p>\n"))
        .collect()
}

async fn text_origin() -> Origin {
    Origin::start(|req| async move {
        let path = req.uri().path().to_string();
        let (ctype, body): (&str, Vec<u8>) = match path.as_str() {
            "/small.html" => ("text/html", b"<p>tiny</p>".to_vec()),
            "/image.png" => ("image/png", vec![7u8; 4096]),
            _ => ("text/html; charset=utf-8", page().into_bytes()),
        };
        let mut headers = vec![
            ("cache-control", "max-age=60"),
            ("content-type", ctype),
            ("etag", "\"doc\""),
        ];
        if path == "/no-transform.html" {
            headers[0] = ("cache-control", "max-age=60, no-transform");
        }
        support::origin::reply(200, &headers, body)
    })
    .await
}

async fn get(c: &Client, url: &str, ae: &str) -> support::Reply {
    c.get_with(url, &[("accept-encoding", ae)]).await
}

/// The entry answers hits as soon as the first client has its response;
/// its one-time compression lands just after: wait until hits are encoded.
async fn stored(c: &Client, url: &str) {
    wait_until(Duration::from_secs(10), "encoded entry stored", || async {
        let r = get(c, url, "br").await;
        r.cache_status().contains("hit") && r.header("content-encoding") == Some("br")
    })
    .await;
}

#[tokio::test]
async fn br_and_gzip_decode_to_the_original_and_hits_are_stored_bytes() {
    let origin = text_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let want = page();
    // The miss streams gzip; the stored representation is made once.
    let first = get(&c, &s.url("/doc.html"), "gzip").await;
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    assert_eq!(
        decode(Coding::Gzip, &first.body).unwrap(),
        Bytes::from(want.clone())
    );
    stored(&c, &s.url("/doc.html")).await;
    for coding in [Coding::Br, Coding::Gzip] {
        let a = get(&c, &s.url("/doc.html"), coding.as_str()).await;
        let b = get(&c, &s.url("/doc.html"), coding.as_str()).await;
        assert!(a.cache_status().contains("hit"), "{}", a.cache_status());
        assert_eq!(a.header("content-encoding"), Some(coding.as_str()));
        assert_eq!(a.body, b.body, "two hits serve the same stored bytes");
        assert_eq!(
            a.header("content-length"),
            Some(a.body.len().to_string().as_str())
        );
        assert!(a.body.len() < want.len() / 3);
        assert_eq!(decode(coding, &a.body).unwrap(), Bytes::from(want.clone()));
        assert!(a
            .header("vary")
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding"));
    }
    let identity = c.get(&s.url("/doc.html")).await;
    assert!(identity.header("content-encoding").is_none());
    assert_eq!(identity.text(), want);
    assert!(identity
        .header("vary")
        .unwrap()
        .to_ascii_lowercase()
        .contains("accept-encoding"));
    assert_eq!(origin.count(), 1, "hits never go upstream");
}

#[tokio::test]
async fn negotiation_follows_q_values() {
    let origin = text_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    stored(&c, &s.url("/n.html")).await;
    let cases = [
        ("gzip;q=1, br;q=0.5", Some("gzip")),
        ("br;q=0, gzip", Some("gzip")),
        ("br;q=0", None),
        ("*", Some("br")),
        ("gzip, br", Some("br")),
        ("zstd", None),
        ("identity", None),
        ("*;q=0", None),
    ];
    for (ae, want) in cases {
        let r = get(&c, &s.url("/n.html"), ae).await;
        assert_eq!(r.header("content-encoding"), want, "Accept-Encoding: {ae}");
        assert!(r.cache_status().contains("hit"));
    }
}

#[tokio::test]
async fn small_bodies_images_and_no_transform_are_untouched() {
    let origin = text_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    for path in ["/small.html", "/image.png", "/no-transform.html"] {
        for _ in 0..2 {
            let r = get(&c, &s.url(path), "br, gzip").await;
            assert!(r.header("content-encoding").is_none(), "{path}");
        }
    }
}

#[tokio::test]
async fn upstream_encoded_responses_pass_through_byte_for_byte() {
    let gz = strata::compression::encode(Coding::Gzip, 6, page().as_bytes()).unwrap();
    let body = gz.clone();
    let origin = Origin::start(move |_req| {
        let body = body.clone();
        async move {
            support::origin::reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-type", "text/html"),
                    ("content-encoding", "gzip"),
                    ("vary", "Accept-Encoding"),
                ],
                body,
            )
        }
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    for _ in 0..2 {
        let r = get(&c, &s.url("/pre.html"), "gzip, br").await;
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.body, gz);
    }
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn conditional_request_against_an_encoded_variant() {
    let origin = text_origin().await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    stored(&c, &s.url("/e.html")).await;
    let br = get(&c, &s.url("/e.html"), "br").await;
    let etag = br.header("etag").unwrap().to_string();
    assert_ne!(etag, "\"doc\"", "an encoded variant has its own ETag");
    let r = c
        .get_with(
            &s.url("/e.html"),
            &[("accept-encoding", "br"), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(r.status, 304);
    let r = c
        .get_with(&s.url("/e.html"), &[("if-none-match", "\"doc\"")])
        .await;
    assert_eq!(
        r.status, 304,
        "identity ETag validates the identity representation"
    );
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn uncached_responses_are_compressed_as_they_stream() {
    let origin = Origin::start(|_req| async move {
        support::origin::reply(
            200,
            &[
                ("cache-control", "no-store"),
                ("content-type", "application/json"),
            ],
            format!("[{}]", "1,".repeat(2000) + "1"),
        )
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let r = get(&Client::new(), &s.url("/api.json"), "gzip").await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.header("content-length").is_none() || r.body.len() < 4000);
    let plain = decode(Coding::Gzip, &r.body).unwrap();
    assert!(plain.starts_with(b"[1,1,"));
}

/// An entry revalidated (a reload's `no-cache`, answered `304`) before
/// its encoded representations were ready still gets them: the 304 keeps
/// the stored identity-only copy, and without re-encoding every gzip or br
/// client would get identity for the rest of the entry's life.
#[tokio::test]
async fn an_entry_revalidated_before_its_encodings_were_ready_gets_them() {
    let origin = Origin::start(|req| async move {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"big\"")
        {
            return support::origin::reply(304, &[("etag", "\"big\"")], "");
        }
        // About 3.9 MB of text: encoding it takes far longer than the
        // reload right after the first response.
        let body = page().repeat(300);
        support::origin::reply(
            200,
            &[
                ("cache-control", "max-age=300"),
                ("content-type", "text/plain"),
                ("etag", "\"big\""),
            ],
            body,
        )
    })
    .await;
    let s = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let first = get(&c, &s.url("/big"), "gzip").await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let reload = c
        .get_with(&s.url("/big"), &[("cache-control", "no-cache")])
        .await;
    assert!(
        reload.cache_status().contains("fwd-status=304"),
        "{}",
        reload.cache_status()
    );
    stored(&c, &s.url("/big")).await;
    let gz = get(&c, &s.url("/big"), "gzip").await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        decode(Coding::Gzip, &gz.body).unwrap(),
        page().repeat(300).as_bytes()
    );
    assert_eq!(origin.count(), 2);
}

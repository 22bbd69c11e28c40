//! Sticky sessions end to end (SPEC §8): the signed cookie pins a client
//! to a server, forged cookies are ignored, clients of an unhealthy or
//! drained server move and get a new cookie, hits never carry the cookie
//! and no stored entry holds it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use strata::cache::key::CacheKey;
use support::origin::reply;
use support::{wait_until, Client, Origin, Reply, Strata};

const STICKY: &str = "[upstream.sticky]\nsecret = \"test-secret-1\"\n";

/// An origin answering its own name, never stored.
async fn named(name: &'static str) -> Origin {
    Origin::start(move |_req| async move { reply(200, &[("cache-control", "no-store")], name) })
        .await
}

/// `strata_srv=VALUE` from a response's Set-Cookie.
fn cookie_of(r: &Reply) -> Option<String> {
    let set = r.header("set-cookie")?;
    assert!(set.starts_with("strata_srv="), "{set}");
    for attr in ["Max-Age=3600", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    Some(set.split(';').next()?.to_string())
}

#[tokio::test]
async fn cookie_pins_and_is_stripped_upstream() {
    let (a, b) = (named("a").await, named("b").await);
    let strata = Strata::start(&[a.addr, b.addr], STICKY).await;
    let client = Client::new();
    let first = client.get(&strata.url("/s")).await;
    let cookie = cookie_of(&first).expect("first response sets the cookie");
    let server = first.text();
    let header = format!("theme=dark; {cookie}");
    for _ in 0..20 {
        let r = client
            .get_with(&strata.url("/s"), &[("cookie", header.as_str())])
            .await;
        assert_eq!(r.text(), server, "a sticky request went elsewhere");
        assert!(r.header("set-cookie").is_none(), "valid cookie re-issued");
    }
    let pinned = if server == "a" { &a } else { &b };
    assert_eq!(pinned.count(), 21);
    // The cookie never reaches the upstream; the client's others do.
    let last = pinned.last().unwrap();
    assert_eq!(last.headers.get("cookie").unwrap(), "theme=dark");
}

#[tokio::test]
async fn forged_and_tampered_cookies_are_ignored() {
    let (a, b) = (named("a").await, named("b").await);
    let strata = Strata::start(&[a.addr, b.addr], STICKY).await;
    let client = Client::new();
    let genuine = cookie_of(&client.get(&strata.url("/f")).await).unwrap();
    // Flip the last hex digit of the MAC.
    let mut tampered = genuine.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    for forged in [
        "strata_srv=0000000000000001.99999999999.00".to_string(),
        "strata_srv=garbage".to_string(),
        tampered,
    ] {
        let r = client
            .get_with(&strata.url("/f"), &[("cookie", forged.as_str())])
            .await;
        assert_eq!(r.status, 200);
        let fresh = cookie_of(&r).expect("a forged cookie is replaced");
        assert_ne!(fresh, forged);
    }
}

async fn admin_post(client: &Client, strata: &Strata, path: &str, body: String) -> Reply {
    client
        .send(
            Method::POST,
            &strata.admin_url(path),
            &[("authorization", "Bearer secret")],
            Bytes::from(body),
        )
        .await
}

#[tokio::test]
async fn unhealthy_or_drained_server_moves_clients_with_a_new_cookie() {
    let (a, b) = (named("a").await, named("b").await);
    let extra = format!(
        "[upstream.health]\ninterval = \"50ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n{STICKY}"
    );
    let strata = Strata::start(&[a.addr, b.addr], &extra).await;
    let client = Client::new();
    let first = client.get(&strata.url("/m")).await;
    let cookie = cookie_of(&first).unwrap();
    let (pinned, other_name) = if first.text() == "a" {
        (&a, "b")
    } else {
        (&b, "a")
    };

    // Unhealthy: moved, with a cookie for the new server.
    pinned.set_healthy(false);
    wait_until(Duration::from_secs(10), "pinned server unhealthy", || {
        let client = client.clone();
        let url = strata.admin_url("/health");
        async move {
            let v: serde_json::Value =
                serde_json::from_slice(&client.get(&url).await.body).unwrap();
            v["healthy"] == 1
        }
    })
    .await;
    let r = client
        .get_with(&strata.url("/m"), &[("cookie", cookie.as_str())])
        .await;
    assert_eq!(r.text(), other_name);
    let moved = cookie_of(&r).expect("moved client gets a new cookie");
    assert_ne!(moved, cookie);
    let r = client
        .get_with(&strata.url("/m"), &[("cookie", moved.as_str())])
        .await;
    assert_eq!(r.text(), other_name);
    assert!(r.header("set-cookie").is_none());

    // Back to health; then drain the server the client now sticks to.
    pinned.set_healthy(true);
    wait_until(Duration::from_secs(10), "both healthy", || {
        let client = client.clone();
        let url = strata.admin_url("/health");
        async move {
            let v: serde_json::Value =
                serde_json::from_slice(&client.get(&url).await.body).unwrap();
            v["healthy"] == 2
        }
    })
    .await;
    let other = if other_name == "a" { &a } else { &b };
    let r = admin_post(
        &client,
        &strata,
        "/upstreams/drain",
        format!("{{\"server\": \"{}\"}}", other.addr),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = client
        .get_with(&strata.url("/m"), &[("cookie", moved.as_str())])
        .await;
    assert_ne!(r.text(), other_name, "drained server got a sticky request");
    assert!(cookie_of(&r).is_some());
}

#[tokio::test]
async fn hits_carry_no_cookie_and_entries_hold_none() {
    let origin =
        Origin::start(|_req| async move { reply(200, &[("cache-control", "max-age=60")], "doc") })
            .await;
    let strata = Strata::start(&[origin.addr], STICKY).await;
    let client = Client::new();
    let miss = client.get(&strata.url("/doc")).await;
    assert!(
        miss.cache_status().contains("fwd=miss"),
        "{}",
        miss.cache_status()
    );
    assert!(
        cookie_of(&miss).is_some(),
        "an upstream response sets the cookie"
    );
    let authority = strata.addr.to_string();
    wait_until(Duration::from_secs(5), "entry stored", || {
        let shared = strata.shared.clone();
        let authority = authority.clone();
        async move {
            let hash = CacheKey::hash_of(false, &authority, "/doc");
            shared
                .cache
                .lookup(hash, false, &authority, "/doc")
                .await
                .is_some()
        }
    })
    .await;
    let hash = CacheKey::hash_of(false, &authority, "/doc");
    let (object, _) = strata
        .shared
        .cache
        .lookup(hash, false, &authority, "/doc")
        .await
        .unwrap();
    for v in &object.variants {
        assert!(
            v.headers.get("set-cookie").is_none(),
            "stored entry holds Set-Cookie"
        );
    }
    for _ in 0..3 {
        let hit = client.get(&strata.url("/doc")).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        assert!(hit.header("set-cookie").is_none(), "a hit set the cookie");
    }
    assert_eq!(origin.count(), 1);
}

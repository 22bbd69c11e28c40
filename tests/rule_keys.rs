//! Rule key options end to end (SPEC §7): query normalisation, header and
//! cookie values in the key, purge by URL and unsafe-method invalidation
//! with the same normalisation (SPEC §10 path included), and `strata
//! check` on contradictory keys. Real origins count requests and record
//! what they received. `GET /cache` is in `tests/inspect.rs`.

mod support;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use support::{Client, Origin, Strata};

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";
const ADMIN: (&str, &str) = ("authorization", "Bearer secret");

async fn strata(origin: &Origin, rules: &str) -> Strata {
    Strata::start(&[origin.addr], &format!("{NO_HEALTH}{rules}")).await
}

async fn purge_url(s: &Strata, url: &str) -> u64 {
    let (status, body) = s.purge(&json!({ "url": url }).to_string()).await;
    assert_eq!(status, 200, "{body}");
    body["purged"].as_u64().expect("purged")
}

#[tokio::test]
async fn sorted_ignored_only_and_none_queries_share_entries_and_reach_upstream_as_sent() {
    let origin = Origin::echo(&[("cache-control", "max-age=600"), ("surrogate-key", "echo")]).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/sorted\"\nkey.query = \"sorted\"\nkey.query_ignore = [\"utm_*\", \"fbclid\"]\n\
         [[rules]]\nmatch = \"/only\"\nkey.query_only = [\"q\", \"page\"]\n\
         [[rules]]\nmatch = \"/none\"\nkey.query = \"none\"\n",
    )
    .await;
    let c = Client::new();
    let first = c.get(&s.url("/sorted?b=2&a=1&utm_source=mail")).await;
    assert_eq!(
        first.text(),
        "/sorted?b=2&a=1&utm_source=mail ",
        "the upstream gets the query as sent"
    );
    for same in [
        "/sorted?a=1&b=2",
        "/sorted?b=2&fbclid=x&a=1",
        "/sorted?utm_source=ad&a=1&b=2",
    ] {
        let r = c.get(&s.url(same)).await;
        assert!(r.is_hit(), "{same}: {}", r.cache_status());
    }
    let r = c.get(&s.url("/sorted?a=1&b=3")).await;
    assert!(!r.is_hit(), "another value is another entry");
    assert_eq!(origin.last().unwrap().path, "/sorted?a=1&b=3");
    assert_eq!(origin.count(), 2);

    c.get(&s.url("/only?q=x&page=1&session=1")).await;
    let r = c.get(&s.url("/only?q=x&tracking=3&page=1")).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    let r = c.get(&s.url("/only?page=1&q=x")).await;
    assert!(!r.is_hit(), "query_only keeps the order (query = all)");
    let r = c.get(&s.url("/only?q=y&page=1")).await;
    assert!(!r.is_hit());
    assert_eq!(origin.count(), 5);

    c.get(&s.url("/none?x=1")).await;
    let r = c.get(&s.url("/none?y=2")).await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.text(), "/none?x=1 ");
    assert_eq!(origin.count(), 6);
}

/// Parameter cloaking (rack#1732, CVE-2021-23336): an origin that splits
/// the query on `;` too reads `a=EVIL` inside an ignored parameter. Such a
/// parameter stays in the key, so the request gets an entry of its own and
/// a clean `?a=1` never receives its answer.
#[tokio::test]
async fn an_ignored_parameter_cannot_cloak_a_keyed_one() {
    let origin = Origin::echo(&[("cache-control", "max-age=600")]).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/**\"\nkey.query_ignore = [\"utm_*\"]\n",
    )
    .await;
    let c = Client::new();
    let cloaked = c.get(&s.url("/p?a=1&utm_content=x;a=EVIL")).await;
    assert!(cloaked.text().contains("a=EVIL"));
    let clean = c.get(&s.url("/p?a=1")).await;
    assert!(!clean.is_hit(), "{}", clean.cache_status());
    assert_eq!(clean.text(), "/p?a=1 ");
    let tracked = c.get(&s.url("/p?a=1&utm_source=mail")).await;
    assert!(tracked.is_hit(), "{}", tracked.cache_status());
    assert_eq!(origin.count(), 2);
}

/// Parameter cloaking through `query_only` (security probe F1, high):
/// names were matched as sent, so `%71`, `+q` and `Q` were left out of the
/// key while PHP, Django and Rack read `%71` and `+q` as `q` (last wins)
/// and ASP.NET reads `Q` as `q`: the attacker's value was stored under
/// the clean URL's key. Each spelling now keys an entry of its own.
#[tokio::test]
async fn a_parameter_the_origin_reads_as_a_kept_one_cannot_be_cloaked() {
    let origin = Origin::echo(&[("cache-control", "public, max-age=600")]).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/q/**\"\nkey.query_only = [\"q\"]\n",
    )
    .await;
    let c = Client::new();
    for cloak in ["%71", "+q", "Q", "q[]", "q%00"] {
        let attack = format!("/q/search?q=shoes&{cloak}=%3Cscript%3E");
        let r = c.get(&s.url(&attack)).await;
        assert_eq!(r.text(), format!("{attack} "));
        assert!(!r.is_hit(), "{cloak}: {}", r.cache_status());
    }
    let victim = c.get(&s.url("/q/search?q=shoes")).await;
    assert!(!victim.is_hit(), "{}", victim.cache_status());
    assert_eq!(victim.text(), "/q/search?q=shoes ");
    // What the rule is for still works: other parameters share the entry.
    let tracked = c.get(&s.url("/q/search?q=shoes&utm_source=x")).await;
    assert!(tracked.is_hit(), "{}", tracked.cache_status());
    assert_eq!(origin.count(), 6);
}

/// `key.cookies` keyed the first of repeated cookies only (security probe
/// F4): `currency=EUR; currency=USD`, which Django reads as USD, was a hit
/// for `currency=EUR`. Every value is keyed now.
#[tokio::test]
async fn a_repeated_cookie_is_keyed_by_every_value() {
    let origin = Origin::echo(&[("cache-control", "public, max-age=600")]).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/**\"\nkey.cookies = [\"currency\"]\n",
    )
    .await;
    let c = Client::new();
    let first = c
        .get_with(&s.url("/p"), &[("cookie", "currency=EUR; currency=USD")])
        .await;
    assert_eq!(first.text(), "/p currency=EUR; currency=USD");
    let eur = c
        .get_with(&s.url("/p"), &[("cookie", "currency=EUR")])
        .await;
    assert!(!eur.is_hit(), "{}", eur.cache_status());
    assert_eq!(eur.text(), "/p currency=EUR");
    let again = c
        .get_with(&s.url("/p"), &[("cookie", "currency=EUR; currency=USD")])
        .await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn currency_cookies_and_languages_split_the_cache_utm_source_does_not() {
    let origin = Origin::echo(&[("cache-control", "max-age=600"), ("surrogate-key", "echo")]).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/prices\"\nkey.cookies = [\"currency\"]\nkey.headers = [\"Accept-Language\"]\nkey.query_ignore = [\"utm_*\"]\n",
    )
    .await;
    let c = Client::new();
    let eur = [
        ("cookie", "currency=EUR; theme=dark"),
        ("accept-language", "fr"),
    ];
    let usd = [
        ("cookie", "theme=dark; currency=USD"),
        ("accept-language", "fr"),
    ];
    let a = c.get_with(&s.url("/prices"), &eur).await;
    assert!(a.text().contains("currency=EUR"), "{}", a.text());
    let b = c.get_with(&s.url("/prices"), &usd).await;
    assert!(
        b.text().contains("currency=USD"),
        "the USD user never gets the EUR page"
    );
    assert!(!b.is_hit(), "{}", b.cache_status());
    assert_eq!(origin.count(), 2);
    // Each currency hits its own entry; utm_source and other cookies do
    // not split it.
    let r = c
        .get_with(
            &s.url("/prices?utm_source=news"),
            &[("cookie", "currency=EUR"), ("accept-language", "fr")],
        )
        .await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert!(r.text().contains("currency=EUR"));
    let r = c.get_with(&s.url("/prices"), &usd).await;
    assert!(r.is_hit() && r.text().contains("currency=USD"));
    let r = c
        .get_with(
            &s.url("/prices"),
            &[("cookie", "currency=EUR"), ("accept-language", "de")],
        )
        .await;
    assert!(!r.is_hit(), "another language is another entry");
    let r = c.get(&s.url("/prices")).await;
    assert!(!r.is_hit(), "no cookie is its own entry");
    assert_eq!(origin.count(), 4);
    // The upstream got each request's own cookie and query.
    let seen = origin.seen();
    assert_eq!(seen[0].headers["cookie"], "currency=EUR; theme=dark");
    assert_eq!(seen[1].headers["cookie"], "theme=dark; currency=USD");

    // /cache lists every value's entry; a purge by URL removes them all.
    let inspect = c
        .get_with(&s.inspect_url("/prices?utm_source=x"), &[ADMIN])
        .await;
    assert_eq!(inspect.status, 200, "{}", inspect.text());
    let v: Value = serde_json::from_slice(&inspect.body).unwrap();
    let keys: Vec<&str> = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 4, "{v}");
    let eur_key = format!(
        "http://{}/prices#h.accept-language=fr&c.currency=EUR",
        s.addr
    );
    assert!(keys.contains(&eur_key.as_str()), "{keys:?}");
    assert_eq!(purge_url(&s, "/prices?utm_source=x").await, 4);
    let r = c.get_with(&s.url("/prices"), &eur).await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count(), 5);
}

#[tokio::test]
async fn an_unsafe_method_invalidates_every_keyed_entry_of_its_url() {
    let origin = Origin::echo(&[("cache-control", "max-age=600"), ("surrogate-key", "echo")]).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/cart\"\nkey.cookies = [\"currency\"]\nkey.query = \"sorted\"\n",
    )
    .await;
    let c = Client::new();
    for currency in ["currency=EUR", "currency=USD"] {
        c.get_with(&s.url("/cart?b=1&a=2"), &[("cookie", currency)])
            .await;
        let r = c
            .get_with(&s.url("/cart?a=2&b=1"), &[("cookie", currency)])
            .await;
        assert!(r.is_hit(), "{}", r.cache_status());
    }
    assert_eq!(origin.count(), 2);
    // RFC 9111 §4.4: the POST's target URI, keyed as its GET would be.
    let r = c
        .send(
            Method::POST,
            &s.url("/cart?b=1&a=2"),
            &[("cookie", "currency=EUR")],
            Bytes::from_static(b"add"),
        )
        .await;
    assert_eq!(r.status, 200);
    for currency in ["currency=EUR", "currency=USD"] {
        let r = c
            .get_with(&s.url("/cart?a=2&b=1"), &[("cookie", currency)])
            .await;
        assert!(!r.is_hit(), "{currency}: {}", r.cache_status());
    }
    assert_eq!(origin.count(), 5);
}

#[tokio::test]
async fn purge_by_url_normalises_like_requests() {
    let origin = Origin::echo(&[("cache-control", "max-age=600"), ("surrogate-key", "echo")]).await;
    let s = strata(
        &origin,
        "[[rules]]\nmatch = \"/b\"\nkey.query = \"sorted\"\nkey.query_ignore = [\"utm_*\"]\n",
    )
    .await;
    let c = Client::new();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = s.url(path);
        async move { c.get(&url).await }
    };
    // What a GET of the URL stores...
    assert!(!get("/a/../b?utm_source=x&z=1&a=2").await.is_hit());
    assert_eq!(origin.last().unwrap().path, "/b?utm_source=x&z=1&a=2");
    assert!(get("/b?a=2&z=1").await.is_hit());
    // ... is what a purge of the same URL removes.
    assert_eq!(purge_url(&s, "/a/../b?utm_source=x&z=1&a=2").await, 1);
    assert!(!get("/b?z=1&a=2").await.is_hit());
    // Encoded unreserved characters, other ignored values, absolute URLs.
    assert_eq!(purge_url(&s, "/%62?utm_campaign=q&a=2&z=1").await, 1);
    assert!(!get("/b?a=2&z=1").await.is_hit());
    let absolute = format!("http://{}/./b?z=1&utm_medium=m&a=2", s.addr);
    assert_eq!(purge_url(&s, &absolute).await, 1);
    assert_eq!(purge_url(&s, &absolute).await, 0, "already gone");
    assert_eq!(origin.count(), 3);
    // A path the proxy would refuse names nothing: 400, nothing purged.
    let (status, body) = s.purge(r#"{"url": "/a/..%2fb"}"#).await;
    assert_eq!(status, 400, "{body}");
}

#[test]
fn check_rejects_contradictory_key_options() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[[rules]]\nmatch = \"/a\"\n";
    let cases = [
        (
            "key.query_ignore = [\"utm_*\"]\nkey.query_only = [\"q\"]\n",
            ":10:18: rules[0].key.query_only: query_only and query_ignore exclude each other",
        ),
        (
            "key.query = \"none\"\nkey.query_only = [\"q\"]\n",
            ":9:13: rules[0].key.query: query = \"none\" drops the whole query",
        ),
        (
            "key.query = \"some\"\n",
            ":9:13: rules[0].key.query: expected \"all\", \"sorted\" or \"none\"",
        ),
        (
            "key.query_ignore = [\"[x\"]\n",
            ":9:21: rules[0].key.query_ignore:",
        ),
        (
            "key.headers = [\"bad header\"]\n",
            ":9:16: rules[0].key.headers: \"bad header\" is not a valid header name",
        ),
        (
            "key.cookies = [\"a=b\"]\n",
            ":9:16: rules[0].key.cookies: \"a=b\" is not a valid cookie name",
        ),
        ("key.hedaers = [\"x\"]\n", "unknown field `hedaers`"),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("keys{i}.toml"));
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let err = support::binary::check_fails(&path);
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
    // Every option together is fine.
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!("{base}key.query = \"sorted\"\nkey.query_ignore = [\"utm_*\", \"fbclid\"]\nkey.headers = [\"Accept-Language\"]\nkey.cookies = [\"currency\"]\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Stale copies while the origin fails, end to end: requests collapsed
//! behind a failing validation get the stale copy the leader got; a failing
//! background refresh backs off instead of passing the hit traffic to the
//! origin; a background refresh goes upstream without the triggering
//! client's `Authorization`. Real origins that count requests (and can be
//! switched to fail), the real listener.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::origin::{reply, Origin};
use support::{wait_until, Client, Strata};
use tokio::sync::Notify;

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

async fn strata(origin: std::net::SocketAddr, extra: &str) -> Strata {
    Strata::start(&[origin], &format!("{NO_HEALTH}{extra}")).await
}

/// How the origin fails a validation in [`waiters_on_a_failing_validation_all_get_the_stale_copy`].
#[derive(Clone, Copy, Debug)]
enum Failure {
    Status(u16),
    /// The connection closed without an answer.
    Drop,
}

/// An origin on raw TCP: the first request gets a `200` with
/// `Cache-Control: cc` and `Age: 15` (stored already stale); every later
/// one gets `failure`, the second once `gate` is notified. Returns the
/// address, the gate and the number of requests read.
async fn failing_origin(
    cc: &'static str,
    failure: Failure,
) -> (std::net::SocketAddr, Arc<Notify>, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(Notify::new());
    let count = Arc::new(AtomicUsize::new(0));
    let (g, n) = (gate.clone(), count.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (g, n) = (g.clone(), n.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let idle = Duration::from_secs(30);
                if support::origin::read_head(&mut s, &mut buf, idle)
                    .await
                    .is_none()
                {
                    return;
                }
                let k = n.fetch_add(1, Ordering::SeqCst);
                let answer = if k == 0 {
                    format!(
                        "HTTP/1.1 200 OK\r\ncache-control: {cc}\r\nage: 15\r\ncontent-length: 4\r\nconnection: close\r\n\r\ngood"
                    )
                } else {
                    if k == 1 {
                        g.notified().await;
                    }
                    match failure {
                        Failure::Status(status) => format!(
                            "HTTP/1.1 {status} Failing\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown"
                        ),
                        Failure::Drop => return, // closed unanswered
                    }
                };
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, gate, count)
}

/// SPEC §6 and RFC 5861 §4: when a stale entry may stand in for an error
/// (stale-if-error, or `grace`), every request collapsed behind its failing
/// validation gets the stale copy as the leader does (`collapsed`), with
/// no upstream request of its own. They had each gone upstream again after
/// the leader and got the raw 5xx / 502 (found by the time-based probe).
#[tokio::test]
async fn waiters_on_a_failing_validation_all_get_the_stale_copy() {
    for (cc, failure, detail, fwd_status) in [
        (
            "max-age=10, stale-if-error=600",
            Failure::Status(500),
            "detail=stale-if-error",
            "fwd-status=500",
        ),
        (
            "max-age=10",
            Failure::Status(503),
            "detail=grace",
            "fwd-status=503",
        ),
        (
            "max-age=10, stale-if-error=600",
            Failure::Drop,
            "detail=stale-if-error",
            "",
        ),
    ] {
        let case = format!("{cc} / {failure:?}");
        let (addr, gate, count) = failing_origin(cc, failure).await;
        let s = strata(addr, "").await;
        let c = Client::new();
        assert_eq!(c.get(&s.url("/f")).await.text(), "good", "{case}");
        let url = s.url("/f");
        let get = || {
            let url = url.clone();
            tokio::spawn(async move { Client::new().get(&url).await })
        };
        let leader = get();
        wait_until(Duration::from_secs(5), "the leader's validation", || {
            let n = count.load(Ordering::SeqCst);
            async move { n == 2 }
        })
        .await;
        let waiters: Vec<_> = (0..3).map(|_| get()).collect();
        wait_until(Duration::from_secs(5), "three waiters collapsed", || {
            let waiting = s.shared.cache.collapser().waiting();
            async move { waiting == 3 }
        })
        .await;
        gate.notify_one();
        let r = leader.await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "good".into()),
            "{case}"
        );
        let status = r.cache_status().to_string();
        assert!(status.contains(detail), "{case}: {status}");
        assert!(!status.contains("collapsed"), "{case}: {status}");
        for w in waiters {
            let r = w.await.unwrap();
            let status = r.cache_status().to_string();
            assert_eq!(
                (r.status.as_u16(), r.text()),
                (200, "good".into()),
                "{case}: {status}"
            );
            assert!(
                status.starts_with("strata; fwd=stale")
                    && status.contains(fwd_status)
                    && status.contains("collapsed")
                    && status.contains(detail),
                "{case}: {status}"
            );
        }
        assert_eq!(count.load(Ordering::SeqCst), 2, "{case}: one validation");
    }
}

/// An origin whose first answer is `200` with `cc` and `Age: age` (body
/// `v1`), and whose later answers are `500` while `fail` is set, `200`
/// with `cc` (body `v2`, no `Age`: fresh) otherwise.
async fn switchable_origin(cc: &'static str, age: &'static str) -> (Origin, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    let (f, n) = (fail.clone(), Arc::new(AtomicUsize::new(0)));
    let origin = Origin::start(move |_req| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        let failing = f.load(Ordering::SeqCst);
        async move {
            if failing {
                return reply(500, &[], "down");
            }
            if k > 0 {
                return reply(200, &[("cache-control", cc)], "v2");
            }
            reply(200, &[("cache-control", cc), ("age", age)], "v1")
        }
    })
    .await;
    (origin, fail)
}

/// After a failed background refresh (stale-while-revalidate,
/// refresh-ahead, soft purge), the entry's hits start no other for a
/// second (`REFRESH_BACKOFF`): 20 hits, each made once the refresh before
/// it is over, cost the failing origin at most one request per second
/// elapsed (plus the first). Every hit started one: 20 origin requests for
/// 20 hits (found by the time-based probe: 1,377 requests in 2 s under
/// load, on a fresh refresh-ahead entry).
#[tokio::test]
async fn a_failing_background_refresh_backs_off() {
    let cases = [
        // (what, Cache-Control, Age, config, soft purge first)
        (
            "stale-while-revalidate",
            "max-age=10, stale-while-revalidate=600",
            "15",
            "",
            false,
        ),
        (
            "refresh-ahead",
            "max-age=100",
            "60",
            "[cache]\nprefresh = 0.5\nprefresh_min_hits = 1\n",
            false,
        ),
        ("soft purge", "max-age=100", "0", "", true),
    ];
    for (what, cc, age, extra, soft) in cases {
        let (origin, fail) = switchable_origin(cc, age).await;
        let s = strata(origin.addr, extra).await;
        let c = Client::new();
        assert_eq!(c.get(&s.url("/r")).await.text(), "v1", "{what}");
        fail.store(true, Ordering::SeqCst);
        if soft {
            let (code, _) = s.purge(r#"{"url": "/r", "soft": true}"#).await;
            assert_eq!(code, 200, "{what}");
        }
        let started = Instant::now();
        for _ in 0..20 {
            let r = c.get(&s.url("/r")).await;
            assert_eq!((r.status.as_u16(), r.text()), (200, "v1".into()), "{what}");
            // Each hit after the refresh it may have started is over.
            wait_until(Duration::from_secs(5), "no refresh running", || {
                let running = s.shared.cache.collapser().in_flight();
                async move { running == 0 }
            })
            .await;
        }
        let refreshes = origin.count() - 1;
        let bound = 1 + started.elapsed().as_secs() as usize;
        assert!(
            (1..=bound).contains(&refreshes),
            "{what}: {refreshes} refreshes, at most {bound} allowed"
        );
        // The copy stays and is served; once the origin is back, the next
        // refresh after the back-off lands.
        fail.store(false, Ordering::SeqCst);
        wait_until(
            Duration::from_secs(10),
            "the refreshed copy served",
            || async { c.get(&s.url("/r")).await.text() == "v2" },
        )
        .await;
    }
}

/// A background refresh is made for the shared entry, not for the client
/// whose hit started it: it reaches the origin without that client's
/// `Authorization`, and its answer is judged as the answer to an anonymous
/// request (RFC 9111 §3.5). It had carried the credentials, so its answer
/// (not storable for an authenticated request) was thrown away under
/// stale-while-revalidate, and a soft purge became a removal plus
/// hit-for-miss (`fwd=bypass` for the next anonymous client).
#[tokio::test]
async fn a_background_refresh_goes_without_the_clients_authorization() {
    for (what, cc, age, soft) in [
        (
            "stale-while-revalidate",
            "max-age=10, stale-while-revalidate=600",
            "15",
            false,
        ),
        ("soft purge", "max-age=100", "0", true),
    ] {
        let (origin, _fail) = switchable_origin(cc, age).await;
        let s = strata(origin.addr, "").await;
        let c = Client::new();
        assert_eq!(c.get(&s.url("/a")).await.text(), "v1", "{what}");
        if soft {
            let (code, _) = s.purge(r#"{"url": "/a", "soft": true}"#).await;
            assert_eq!(code, 200, "{what}");
        }
        let signed_in = [("authorization", "Bearer carol")];
        let r = c.get_with(&s.url("/a"), &signed_in).await;
        assert_eq!(r.text(), "v1", "{what}: the stale copy at once");
        wait_until(Duration::from_secs(5), "the refresh sent", || async {
            origin.count() == 2
        })
        .await;
        let refresh = origin.last().unwrap();
        assert!(
            !refresh.headers.contains_key("authorization"),
            "{what}: the refresh carried {:?}",
            refresh.headers.get("authorization")
        );
        // Its answer replaced the entry: a hit for anyone.
        wait_until(
            Duration::from_secs(5),
            "the refreshed copy stored",
            || async {
                let r = c.get(&s.url("/a")).await;
                r.text() == "v2" && r.cache_status().starts_with("strata; hit")
            },
        )
        .await;
        assert_eq!(origin.count(), 2, "{what}");
    }
}

/// The one exception: an entry stored for its request's `Authorization`
/// (`Vary: Authorization`, shareable by `public`) is refreshed with that
/// same field, since an anonymous answer would be another variant's.
#[tokio::test]
async fn a_refresh_of_an_entry_varying_on_authorization_carries_it() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let origin = Origin::start(move |_req| {
        let k = n2.fetch_add(1, Ordering::SeqCst);
        async move {
            let cc = (
                "cache-control",
                "public, max-age=10, stale-while-revalidate=600",
            );
            let vary = ("vary", "authorization");
            if k == 0 {
                return reply(200, &[cc, vary, ("age", "15")], "v1");
            }
            reply(200, &[cc, vary], "v2")
        }
    })
    .await;
    let s = strata(origin.addr, "").await;
    let c = Client::new();
    let carol = [("authorization", "Bearer carol")];
    assert_eq!(c.get_with(&s.url("/v"), &carol).await.text(), "v1");
    let r = c.get_with(&s.url("/v"), &carol).await;
    assert_eq!(r.text(), "v1", "the stale copy at once");
    wait_until(Duration::from_secs(5), "the refresh sent", || async {
        origin.count() == 2
    })
    .await;
    let refresh = origin.last().unwrap();
    assert_eq!(
        refresh.headers.get("authorization").map(|v| v.as_bytes()),
        Some(&b"Bearer carol"[..])
    );
    wait_until(
        Duration::from_secs(5),
        "the refreshed copy stored",
        || async {
            let r = c.get_with(&s.url("/v"), &carol).await;
            r.text() == "v2" && r.cache_status().starts_with("strata; hit")
        },
    )
    .await;
}

/// `status_ttl = { "5xx" = "2s" }` in front of an origin that keeps
/// answering 503: each 503 is stored for two seconds, then replaced by the
/// next. The expired 503 was taken as a `grace` fallback for the new one:
/// the new 503 was thrown away, the old one served (`detail=grace`) and
/// every request went upstream until the old one left grace (found by the
/// invalidation probe: 27 origin requests for 28 client requests in 14 s).
#[tokio::test]
async fn a_stored_5xx_is_replaced_by_the_next_not_served_as_grace() {
    let origin = Origin::start(|_req| async move { reply(503, &[], "down") }).await;
    let s = strata(
        origin.addr,
        "[[rules]]\nmatch = \"/**\"\nstatus_ttl = { \"5xx\" = \"2s\" }\n",
    )
    .await;
    let c = Client::new();
    let first = c.get(&s.url("/e")).await;
    assert_eq!(first.status, 503);
    assert_eq!(
        first.header("cache-status"),
        Some("strata; fwd=miss; stored; ttl=2")
    );
    // Once the stored 503 has expired, the next request fetches again.
    wait_until(
        Duration::from_secs(10),
        "the stored 503 expired",
        || async {
            c.get(&s.url("/e")).await;
            origin.count() >= 2
        },
    )
    .await;
    let fetched = origin.count();
    assert_eq!(fetched, 2);
    // That fetch's 503 replaced the stored one: the next request is a hit
    // on it, not another trip upstream.
    let next = c.get(&s.url("/e")).await;
    assert_eq!(next.status, 503);
    let status = next.header("cache-status").unwrap_or_default().to_string();
    assert!(status.starts_with("strata; hit"), "{status}");
    assert_eq!(origin.count(), fetched);
    s.stop().await;
}

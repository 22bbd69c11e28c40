//! Load balancing end to end (SPEC §8): weights, least_request, consistent
//! hashing, slow start and drain, against real origins that count the
//! requests each one sees.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use strata::config::Config;
use support::origin::reply;
use support::{wait_until, Client, Origin, Strata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An origin whose responses are never stored, so every request reaches it.
async fn counting() -> Origin {
    Origin::start(|_req| async move { reply(200, &[("cache-control", "no-store")], "ok") }).await
}

fn text(servers: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\
         [upstream]\nservers = [{servers}]\n{extra}"
    )
}

fn quoted(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn hit_n(client: &Client, strata: &Strata, n: usize, path: &str) {
    for _ in 0..n {
        let r = client.get(&strata.url(path)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test]
async fn weights_three_to_one() {
    let (a, b) = (counting().await, counting().await);
    let strata = Strata::start_text(&text(
        &format!("{{ addr = \"{}\", weight = 3 }}, \"{}\"", a.addr, b.addr),
        "",
    ))
    .await;
    let client = Client::new();
    hit_n(&client, &strata, 400, "/w").await;
    assert_eq!(a.count() + b.count(), 400);
    // ±5% of 400 around the 300:100 split.
    assert!(
        (280..=320).contains(&a.count()),
        "a={} b={}",
        a.count(),
        b.count()
    );
}

#[tokio::test]
async fn least_request_prefers_the_idle_server() {
    let slow = Origin::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        reply(200, &[("cache-control", "no-store")], "slow")
    })
    .await;
    let fast = counting().await;
    let strata = Strata::start(&[slow.addr, fast.addr], "balance = \"least_request\"\n").await;
    let client = Client::new();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = strata.url("/lr");
            tokio::spawn(async move {
                for _ in 0..10 {
                    assert_eq!(client.get(&url).await.status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(slow.count() + fast.count(), 40);
    assert!(
        fast.count() >= 2 * slow.count(),
        "slow={} fast={}",
        slow.count(),
        fast.count()
    );
}

/// Sequential requests under `least_request` (nothing in flight, every
/// server tied) follow the weights, as nginx's `least_conn` does: 3:1 is
/// 75/25, not all on the heavier server.
#[tokio::test]
async fn least_request_follows_the_weights_sequentially() {
    let (a, b) = (counting().await, counting().await);
    let strata = Strata::start_text(&text(
        &format!("{{ addr = \"{}\", weight = 3 }}, \"{}\"", a.addr, b.addr),
        "balance = \"least_request\"\n",
    ))
    .await;
    hit_n(&Client::new(), &strata, 100, "/lw").await;
    assert!(
        (74..=76).contains(&a.count()) && a.count() + b.count() == 100,
        "a={} b={}",
        a.count(),
        b.count()
    );
}

/// Which origin saw each `x-user`.
fn owners(origins: &[&Origin]) -> HashMap<String, HashSet<usize>> {
    let mut map: HashMap<String, HashSet<usize>> = HashMap::new();
    for (i, o) in origins.iter().enumerate() {
        for s in o.seen() {
            if let Some(u) = s.headers.get("x-user").and_then(|v| v.to_str().ok()) {
                map.entry(u.to_string()).or_default().insert(i);
            }
        }
    }
    map
}

#[tokio::test]
async fn hash_keeps_keys_and_moves_few_on_removal() {
    let origins = [counting().await, counting().await, counting().await];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let extra = "balance = \"hash\"\nhash_key = \"header:x-user\"\n";
    let strata = Strata::start_text(&text(&quoted(&addrs), extra)).await;
    let client = Client::new();
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    for _ in 0..3 {
        for u in &users {
            let r = client
                .get_with(&strata.url("/h"), &[("x-user", u.as_str())])
                .await;
            assert_eq!(r.status, 200);
        }
    }
    let before = owners(&[&origins[0], &origins[1], &origins[2]]);
    assert_eq!(before.len(), 60);
    for (u, servers) in &before {
        assert_eq!(servers.len(), 1, "{u} went to {servers:?}");
    }
    let on_removed: HashSet<&String> = before
        .iter()
        .filter(|(_, s)| s.contains(&2))
        .map(|(u, _)| u)
        .collect();
    assert!(
        !on_removed.is_empty() && on_removed.len() < 40,
        "{}",
        on_removed.len()
    );

    // Remove the third server by a reload: only its keys move.
    let config = Config::parse(Path::new("t.toml"), &text(&quoted(&addrs[..2]), extra)).unwrap();
    strata.shared.reload(config);
    let seen_before = [origins[0].count(), origins[1].count()];
    for u in &users {
        let r = client
            .get_with(&strata.url("/h"), &[("x-user", u.as_str())])
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        origins[0].count() + origins[1].count(),
        seen_before[0] + seen_before[1] + 60
    );
    let after = owners(&[&origins[0], &origins[1]]);
    for (u, servers) in &after {
        if !on_removed.contains(u) {
            assert_eq!(servers.len(), 1, "{u} moved although its server stayed");
        }
    }
    // The removed server's health gauge went with it (it stayed at 1, so
    // an alert on all servers down could never fire once the others were).
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    let healthy: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("strata_upstream_healthy{"))
        .collect();
    assert_eq!(healthy.len(), 2, "{healthy:?}");
    assert!(
        !healthy.iter().any(|l| l.contains(&addrs[2].to_string())),
        "{healthy:?}"
    );
}

#[tokio::test]
async fn slow_start_ramps_a_recovered_server() {
    let (a, b) = (counting().await, counting().await);
    let extra = "slow_start = \"6s\"\n[upstream.health]\ninterval = \"50ms\"\n\
                 unhealthy_threshold = 1\nhealthy_threshold = 1\n";
    let strata = Strata::start(&[a.addr, b.addr], extra).await;
    let client = Client::new();
    let health = |want: bool| {
        let client = client.clone();
        let url = strata.admin_url("/health");
        let addr = a.addr.to_string();
        async move {
            let r = client.get(&url).await;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["server"] == addr.as_str() && s["healthy"] == want)
        }
    };
    a.set_healthy(false);
    wait_until(Duration::from_secs(10), "a unhealthy", || health(false)).await;
    a.set_healthy(true);
    wait_until(Duration::from_secs(10), "a healthy again", || health(true)).await;

    // Right after recovery: a small share (5% of its weight at first,
    // well under its equal half while the ramp is young).
    let a0 = a.count();
    hit_n(&client, &strata, 20, "/s").await;
    let early = a.count() - a0;
    assert!(early <= 6, "recovered server got {early}/20 at once");

    // Later: its full (equal) share, reached within the bounded wait.
    wait_until(Duration::from_secs(30), "a back at full weight", || {
        let client = client.clone();
        let url = strata.url("/s");
        let a = &a;
        async move {
            let before = a.count();
            for _ in 0..20 {
                client.get(&url).await;
            }
            a.count() - before >= 9
        }
    })
    .await;
}

async fn admin_post(
    client: &Client,
    strata: &Strata,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> support::Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    client
        .send(
            Method::POST,
            &strata.admin_url(path),
            &headers,
            Bytes::from(body.to_string()),
        )
        .await
}

#[tokio::test]
async fn drain_moves_new_requests_and_lets_in_flight_finish() {
    let a = Origin::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        reply(200, &[("cache-control", "no-store")], "a")
    })
    .await;
    let b = counting().await;
    let strata = Strata::start(&[a.addr, b.addr], "").await;
    let client = Client::new();
    let body = format!("{{\"server\": \"{}\"}}", a.addr);

    // Errors first.
    assert_eq!(
        admin_post(&client, &strata, "/upstreams/drain", None, &body)
            .await
            .status,
        401
    );
    assert_eq!(
        admin_post(&client, &strata, "/upstreams/drain", Some("wrong"), &body)
            .await
            .status,
        401
    );
    assert_eq!(
        admin_post(&client, &strata, "/upstreams/drain", Some("secret"), "{")
            .await
            .status,
        400
    );
    assert_eq!(
        admin_post(
            &client,
            &strata,
            "/upstreams/drain",
            Some("secret"),
            "{\"server\": \"127.0.0.1:1\"}"
        )
        .await
        .status,
        404
    );

    // A request in flight on `a` (the first pick) finishes after the drain.
    let slow = {
        let client = client.clone();
        let url = strata.url("/slow");
        tokio::spawn(async move { client.get(&url).await })
    };
    wait_until(Duration::from_secs(5), "slow request at a", || {
        let n = a.count();
        async move { n == 1 }
    })
    .await;
    let r = admin_post(&client, &strata, "/upstreams/drain", Some("secret"), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = slow.await.unwrap();
    assert_eq!(
        (done.status, done.text().as_str()),
        (http::StatusCode::OK, "a")
    );

    let health = client.get(&strata.admin_url("/health")).await;
    let v: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    let entry = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == a.addr.to_string().as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["draining"], true);
    assert_eq!(
        (health.status.as_u16(), &v["healthy"]),
        (200, &serde_json::json!(2))
    );

    let a_before = a.count();
    hit_n(&client, &strata, 10, "/d").await;
    assert_eq!(a.count(), a_before, "a drained server got new requests");

    // Drain survives a reload of the same servers.
    let config = Config::parse(
        Path::new("t.toml"),
        &support::config_text(&[a.addr, b.addr], ""),
    )
    .unwrap();
    strata.shared.reload(config);
    hit_n(&client, &strata, 6, "/d").await;
    assert_eq!(a.count(), a_before);

    let r = admin_post(
        &client,
        &strata,
        "/upstreams/undrain",
        Some("secret"),
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    hit_n(&client, &strata, 6, "/d").await;
    assert!(a.count() > a_before, "undrained server gets requests again");

    // Every server drained: uncached requests get 503, but /health stays
    // 200 (SPEC §4: 503 when none is *healthy*; drained servers are), the
    // drain shown per server: a drain is maintenance, and a container
    // health check must not restart an instance that serves its cache.
    for server in [a.addr, b.addr] {
        let body = format!("{{\"server\": \"{server}\"}}");
        let r = admin_post(&client, &strata, "/upstreams/drain", Some("secret"), &body).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(client.get(&strata.url("/d")).await.status, 503);
    let health = client.get(&strata.admin_url("/health")).await;
    let v: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(
        (&v["status"], &v["healthy"]),
        (&serde_json::json!("ok"), &serde_json::json!(2))
    );
    let servers = v["upstreams"].as_array().unwrap();
    assert!(servers.iter().all(|s| s["draining"] == true), "{v}");
    // The metrics say it too, so the shipped all-down rule (healthy and not
    // drained) fires; with health alone it could not (docs probe).
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    for server in [a.addr, b.addr] {
        let line = format!("strata_upstream_draining{{server=\"{server}\"}} 1");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

/// Each server is health-checked on its own schedule: one whose health
/// endpoint answers after several intervals delays no other server's
/// checks (they were all awaited together, so every server's period was
/// `interval` + the slowest check), and never has two checks at once.
#[tokio::test]
async fn a_slow_health_check_delays_no_other_server() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let fast = counting().await;
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, m) = (active.clone(), most.clone());
    let slow = Origin::start(move |_req| {
        let (active, most) = (a.clone(), m.clone());
        async move {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            active.fetch_sub(1, Ordering::SeqCst);
            reply(200, &[], "late")
        }
    })
    .await;
    // `/hc` is not the origins' built-in `/health`: they count it.
    let _strata = Strata::start(
        &[slow.addr, fast.addr],
        "[upstream.health]\npath = \"/hc\"\ninterval = \"200ms\"\ntimeout = \"5s\"\n",
    )
    .await;
    // Four checks take 3 intervals (600 ms) on their own schedule; behind
    // the slow one they took 3 × 2.2 s.
    wait_until(
        Duration::from_secs(3),
        "4 checks of the fast server",
        || async { fast.count() >= 4 },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "2 checks of the slow server",
        || async { slow.count() >= 2 },
    )
    .await;
    assert_eq!(most.load(Ordering::SeqCst), 1, "two checks at once");
    assert!(fast.seen().iter().all(|s| s.path == "/hc"));
}

/// An upstream on a fixed port that can be switched off (connections
/// refused) and on again. Every answer closes its connection, so each
/// request connects anew. Counts the requests it answers and, apart, its
/// health checks.
struct Flaky {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Flaky {
    async fn start() -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut flaky = Flaky {
            addr: listener.local_addr().unwrap(),
            served: Arc::default(),
            checks: Arc::default(),
            task: None,
        };
        flaky.serve(listener);
        flaky
    }

    fn serve(&mut self, listener: TcpListener) {
        let (served, checks) = (self.served.clone(), self.checks.clone());
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let counter = if head.starts_with(b"GET /health ") {
                    &checks
                } else {
                    &served
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: no-store\r\n\
                          connection: close\r\n\r\nflaky",
                    )
                    .await;
                let _ = stream.shutdown().await;
            }
        }));
    }

    /// Closes the listener: connects are refused.
    async fn off(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn on(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn checked(&self) -> bool {
        self.checks.load(Ordering::SeqCst) > 0
    }
}

/// Passive health counts connect failures in a row: an answer between two
/// of them resets the count (README `[upstream.health]`; nginx's
/// `max_fails`), so four sporadic connect failures, each followed by
/// answers from the same server, leave it in rotation.
#[tokio::test]
async fn sporadic_connect_failures_leave_a_server_in_rotation() {
    let mut flaky = Flaky::start().await;
    let steady = counting().await;
    // Checks once at start (unhealthy_threshold = 3 by default).
    let strata = Strata::start(
        &[flaky.addr, steady.addr],
        "[upstream.health]\ninterval = \"1h\"\n",
    )
    .await;
    wait_until(Duration::from_secs(10), "the start-up check", || async {
        flaky.checked()
    })
    .await;
    let client = Client::new();
    for round in 1..=4 {
        // Round-robin: one of the two goes to `flaky`, fails to connect
        // and is retried on `steady`.
        flaky.off().await;
        hit_n(&client, &strata, 2, "/f").await;
        flaky.on().await;
        let before = flaky.served();
        hit_n(&client, &strata, 6, "/f").await;
        assert_eq!(
            flaky.served() - before,
            3,
            "round {round}: out of rotation after {round} sporadic connect failures"
        );
    }
    let metrics = client.get(&strata.admin_url("/metrics")).await.text();
    let failures = format!(
        "strata_upstream_errors_total{{kind=\"connect\",server=\"{}\"}} 4\n",
        flaky.addr
    );
    assert!(metrics.contains(&failures), "{metrics}");
}

/// A run of connect failures does not take out the last server in
/// rotation (nginx never marks its only server down): once the origin is
/// back, the next request reaches it, rather than 503s until
/// `healthy_threshold` checks (here an hour apart) bring it back.
#[tokio::test]
async fn connect_failures_leave_the_last_server_in_rotation() {
    let mut flaky = Flaky::start().await;
    let strata = Strata::start(&[flaky.addr], "[upstream.health]\ninterval = \"1h\"\n").await;
    wait_until(Duration::from_secs(10), "the start-up check", || async {
        flaky.checked()
    })
    .await;
    let client = Client::new();
    flaky.off().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(client.get(&strata.url("/dead")).await.status.as_u16());
    }
    assert_eq!(statuses, vec![502; 5], "refused connects, no 503");
    flaky.on().await;
    let back = client.get(&strata.url("/back")).await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(flaky.served(), 1);
    let health = client.get(&strata.admin_url("/health")).await;
    let v: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(v["upstreams"][0]["healthy"], true, "{v}");
}

/// Which of the servers `/health` lists in rotation.
async fn in_rotation(client: &Client, strata: &Strata) -> Vec<bool> {
    let health = client.get(&strata.admin_url("/health")).await;
    let v: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    let list = v["upstreams"].as_array().cloned().unwrap_or_default();
    list.iter().map(|u| u["healthy"] == true).collect()
}

/// Connect failures take a server out for `fail_timeout` only (nginx's
/// `fail_timeout`, Envoy's `base_ejection_time`), then one request tries
/// it again. Three servers all down: two are taken out, the last one
/// stays; when the two come back (and the one left does not), requests
/// reach them after `fail_timeout`, not after `healthy_threshold` active
/// checks (here an hour apart).
#[tokio::test]
async fn connect_failure_ejection_ends_after_fail_timeout() {
    let mut flaky = [
        Flaky::start().await,
        Flaky::start().await,
        Flaky::start().await,
    ];
    let addrs: Vec<SocketAddr> = flaky.iter().map(|f| f.addr).collect();
    let strata = Strata::start(
        &addrs,
        "[upstream.health]\ninterval = \"1h\"\nfail_timeout = \"300ms\"\n",
    )
    .await;
    wait_until(Duration::from_secs(10), "the start-up checks", || async {
        flaky.iter().all(Flaky::checked)
    })
    .await;
    let client = Client::new();
    for f in &mut flaky {
        f.off().await;
    }
    // Three connect failures in a row take a server out (each request
    // fails on two); the last one in rotation stays.
    wait_until(Duration::from_secs(10), "two servers out", || async {
        let r = client.get(&strata.url("/down")).await;
        assert_eq!(r.status, 502, "{}", r.text());
        in_rotation(&client, &strata)
            .await
            .iter()
            .filter(|&&h| h)
            .count()
            == 1
    })
    .await;
    let up = in_rotation(&client, &strata).await;
    let left = up.iter().position(|&h| h).unwrap();
    for (i, f) in flaky.iter_mut().enumerate() {
        if i != left {
            f.on().await;
        }
    }
    wait_until(
        Duration::from_secs(10),
        "a request served after fail_timeout",
        || async { client.get(&strata.url("/back")).await.status == 200 },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "both revived servers back in rotation",
        || async {
            let up = in_rotation(&client, &strata).await;
            up.iter().enumerate().all(|(i, &h)| h == (i != left)) || {
                // The next trial is one more request away.
                let _ = client.get(&strata.url("/back")).await;
                false
            }
        },
    )
    .await;
    hit_n(&client, &strata, 6, "/up").await;
    assert_eq!(flaky[left].served(), 0);
}

/// A POST is never the trial of a server out for connect failures: it is
/// not retried on another server when its connect fails, so a server
/// still down after `fail_timeout` would cost that write its 502 once per
/// period. GETs take the trial (and are retried on the live server).
#[tokio::test]
async fn a_post_is_never_the_trial_of_an_ejected_server() {
    let mut flaky = Flaky::start().await;
    let steady = counting().await;
    let strata = Strata::start(
        &[flaky.addr, steady.addr],
        "[upstream.health]\ninterval = \"1h\"\nfail_timeout = \"100ms\"\n",
    )
    .await;
    wait_until(Duration::from_secs(10), "the start-up check", || async {
        flaky.checked()
    })
    .await;
    let client = Client::new();
    flaky.off().await;
    wait_until(Duration::from_secs(10), "the dead server out", || async {
        let r = client.get(&strata.url("/g")).await;
        assert_eq!(r.status, 200, "a GET is retried on the live server");
        in_rotation(&client, &strata).await == [false, true]
    })
    .await;
    for i in 0..10 {
        // Past the period on every round but the first: each POST comes
        // when a trial is due.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = client
            .send(
                Method::POST,
                &strata.url("/write"),
                &[],
                Bytes::from_static(b"x"),
            )
            .await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.text());
    }
    assert_eq!(in_rotation(&client, &strata).await, [false, true]);
    // A GET takes the due trial, fails to connect and is retried.
    let r = client.get(&strata.url("/g2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Under `hash`, an empty key (`Cookie: sid=`, an empty `X-User`) is a
/// missing one: round-robin. It hashed the empty string and pinned every
/// such client to one server (found by the load-balancing probe).
#[tokio::test]
async fn an_empty_hash_key_falls_back_to_round_robin() {
    for (key, header) in [
        ("cookie:sid", ("cookie", "sid=")),
        ("header:x-user", ("x-user", "")),
    ] {
        let origins = [counting().await, counting().await];
        let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
        let extra = format!("balance = \"hash\"\nhash_key = \"{key}\"\n");
        let strata = Strata::start_text(&text(&quoted(&addrs), &extra)).await;
        let client = Client::new();
        for _ in 0..4 {
            let r = client.get_with(&strata.url("/h"), &[header]).await;
            assert_eq!(r.status, 200);
        }
        assert_eq!([origins[0].count(), origins[1].count()], [2, 2], "{key}");
    }
}

/// A reload stops the replaced pool's health checks at once. They ran as
/// long as a request begun before the reload waited for its answer (the
/// pool lived on with it): a removed server kept being checked (and
/// alerted on, its `strata_upstream_healthy` series back), and a kept one
/// was checked twice per interval (found by the upstream probe).
#[tokio::test]
async fn a_reload_stops_the_old_pools_health_checks() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let origin = || {
        let gate = gate.clone();
        Origin::start(move |req| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == "/slow" {
                    gate.notified().await;
                }
                reply(200, &[("cache-control", "no-store")], "ok")
            }
        })
    };
    let (kept, removed) = (origin().await, origin().await);
    let health = "[upstream.health]\npath = \"/hc\"\ninterval = \"100ms\"\n";
    let strata = Strata::start_text(&text(&quoted(&[kept.addr, removed.addr]), health)).await;
    let checks = |o: &Origin| o.seen().iter().filter(|s| s.path == "/hc").count();
    let url = strata.url("/slow");
    let in_flight = tokio::spawn(async move { Client::new().get(&url).await });
    wait_until(Duration::from_secs(5), "a request in flight", || async {
        kept.count() + removed.count() - checks(&kept) - checks(&removed) == 1
    })
    .await;
    let config = Config::parse(Path::new("t.toml"), &text(&quoted(&[kept.addr]), health)).unwrap();
    strata.shared.reload(config);
    let (kept_at, removed_at) = (checks(&kept), checks(&removed));
    // Ten intervals of the new pool's checks: one per interval, at most
    // one more besides (a check of the old pool under way at the reload).
    wait_until(
        Duration::from_secs(10),
        "10 checks of the kept server",
        || async { checks(&kept) >= kept_at + 10 },
    )
    .await;
    assert!(
        checks(&removed) <= removed_at + 1,
        "{} > {removed_at} + 1",
        checks(&removed)
    );
    let started = std::time::Instant::now();
    let at = checks(&kept);
    wait_until(Duration::from_secs(10), "5 more checks", || async {
        checks(&kept) >= at + 5
    })
    .await;
    // Five checks at one per 100 ms take at least 400 ms; twice per
    // interval, about 250 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(380),
        "{:?}",
        started.elapsed()
    );
    gate.notify_waiters();
    in_flight.abort();
}

//! The dashboard in a real browser: the `strata` binary in front of a real
//! origin, traffic driven through it, `/dashboard` opened in headless
//! Chromium (over the DevTools protocol) with the read token; the test
//! waits (bounded) for the live figures to move and fails on any console
//! error, uncaught exception, CSP violation or failed load.
//!
//! Chromium is required in CI (`.ci/run` installs it); elsewhere the test
//! is skipped, saying so, when no Chromium is found. With
//! `STRATA_SCREENSHOT=docs/dashboard.png` it drives a longer, varied load
//! first and writes the README's screenshot there.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::json;
use support::binary::Binary;
use support::browser::{find_chromium, Browser};
use support::origin::reply;
use support::{Client, Origin};

/// An origin with a little of everything: long-lived assets, short-lived
/// API answers, uncacheable pages, 404s; misses take a few milliseconds.
async fn origin() -> Origin {
    Origin::start(|req| async move {
        let path = req.uri().path().to_string();
        let n = path.len() as u64;
        tokio::time::sleep(Duration::from_millis(2 + n % 7)).await;
        if path.starts_with("/assets/") {
            reply(
                200,
                &[("cache-control", "public, max-age=600")],
                vec![b'a'; 24_000],
            )
        } else if path.starts_with("/api/") {
            reply(
                200,
                &[("cache-control", "public, max-age=1")],
                format!("{{\"path\":\"{path}\"}}"),
            )
        } else if path.starts_with("/account") {
            reply(200, &[("cache-control", "private")], "yours only")
        } else {
            reply(404, &[], "not here")
        }
    })
    .await
}

/// Requests until `stop`: mostly assets (hits), API calls (misses and
/// revalidations every second), some private pages and 404s.
fn drive(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, limit: Duration) {
    tokio::spawn(async move {
        let c = Client::new();
        let deadline = tokio::time::Instant::now() + limit;
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            i += 1;
            let path = match i % 10 {
                0..=5 => format!("/assets/app-{}.js", i % 4),
                6 | 7 => format!("/api/items/{}", i % 3),
                8 => "/account".to_string(),
                _ => format!("/missing/{}", i % 5),
            };
            c.get(&format!("http://{addr}{path}")).await;
            // A burst every 8 seconds makes the charts worth looking at.
            let pause = if (i / 200) % 4 == 3 { 2 } else { 8 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_figures_in_headless_chromium_without_errors() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        eprintln!(
            "SKIPPED: no chromium on PATH (apt-get install -y chromium, or set STRATA_CHROMIUM)"
        );
        return;
    };
    let screenshot = std::env::var_os("STRATA_SCREENSHOT").map(PathBuf::from);
    let a = origin().await;
    let b = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\nread_token = \"reader\"\n\n\
         [upstream]\nservers = [\"{}\", \"{}\"]\n\n\
         [[rules]]\nmatch = \"/assets/**\"\ncache_control = \"public, max-age=600\"\n\n\
         [[rules]]\nmatch = \"/api/**\"\ncache_control = \"public, max-age=1\"\n\n\
         [[rules]]\nmatch = \"/missing/**\"\ncache_control = \"public, max-age=5\"\n",
        a.addr, b.addr
    );
    std::fs::write(&path, &config).unwrap();
    let bin = Binary::start(&path, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    drive(bin.addr, stop.clone(), Duration::from_secs(120));

    // Activity for the list: a purge, an applied and a refused reload.
    let c = Client::new();
    c.get(&format!("http://{}/assets/app-1.js", bin.addr)).await;
    let purge = c
        .send(
            Method::POST,
            &format!("http://{}/purge", bin.admin),
            &[("authorization", "Bearer secret")],
            Bytes::from_static(br#"{"prefix": "/assets/app-1"}"#),
        )
        .await;
    assert_eq!(purge.status, 200);
    assert_eq!(bin.reload().await["message"], "configuration reloaded");
    std::fs::write(&path, "[server]\nlisten = 1\n").unwrap();
    assert!(bin.reload().await["message"]
        .as_str()
        .unwrap()
        .starts_with("reload failed"));
    std::fs::write(&path, &config).unwrap();

    let url = format!("http://{}/dashboard", bin.admin);
    let shot = screenshot.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut br = Browser::launch(&chromium, 1440, 1180);
        br.extra_headers(json!({ "Authorization": "Bearer reader" }));
        br.open(&url);
        br.wait_until(Duration::from_secs(30), "the live figures to move", |b| {
            b.eval("document.documentElement.dataset.live || ''") == "moving"
        });
        // Every part was drawn from the stream.
        let state = br.eval(
            "({ charts: document.querySelectorAll('.uplot canvas').length,
                rps: document.getElementById('k-rps').textContent,
                ratio: document.getElementById('k-ratio').textContent,
                ups: document.querySelectorAll('#upstreams .dot.ok').length,
                rules: document.querySelectorAll('#rules .bar').length,
                feed: document.getElementById('feed').textContent,
                live: document.getElementById('p-live').textContent })",
        );
        if let Some(path) = &shot {
            // A longer run so the charts show a shape.
            std::thread::sleep(Duration::from_secs(45));
            br.screenshot(path);
        }
        (state, br.errors(), br.log())
    })
    .await
    .expect("browser task");
    stop.store(true, Ordering::Relaxed);
    let (state, errors, log) = result;
    assert!(
        errors.is_empty(),
        "browser errors: {errors:#?}\nchromium log:\n{log}"
    );
    assert_eq!(state["charts"], 4, "{state}");
    assert_ne!(state["rps"], "–", "{state}");
    assert!(state["ratio"].as_str().unwrap().ends_with('%'), "{state}");
    assert_eq!(state["ups"], 2, "{state}");
    assert_eq!(state["rules"], 3, "{state}");
    let feed = state["feed"].as_str().unwrap();
    assert!(
        feed.contains("purge")
            && feed.contains("reload failed")
            && feed.contains("prefix /assets/app-1 → 1 purged"),
        "{state}"
    );
    assert_eq!(state["live"], "live", "{state}");
    if let Some(path) = screenshot {
        eprintln!("screenshot written to {}", path.display());
    }
    bin.stop().await;
}

/// A dashboard whose stream was refused (`503` while every `/events`
/// slot is taken) reconnects by itself once a slot is free: a browser
/// never retries a refused `EventSource`, and the page said
/// "reconnecting…" for ever (found by the observability probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dashboard_stream_reconnects_by_itself() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        eprintln!("SKIPPED: no chromium on PATH");
        return;
    };
    let a = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    // Three `/events` streams at most.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 6\n\n\
         [upstream]\nservers = [\"{}\"]\n",
        a.addr
    );
    std::fs::write(&path, &config).unwrap();
    let bin = Binary::start(&path, &[]).await;
    let c = Client::new();
    let events = format!("http://{}/events", bin.admin);
    let mut held = Vec::new();
    for _ in 0..3 {
        let req = http::Request::get(&events)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = c.start(req).await;
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    assert_eq!(c.get(&events).await.status, 503, "every slot taken");
    let url = format!("http://{}/dashboard", bin.admin);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let browser = tokio::task::spawn_blocking(move || {
        let mut br = Browser::launch(&chromium, 1000, 800);
        br.open(&url);
        br.wait_until(Duration::from_secs(30), "the refusal shown", |b| {
            b.eval("document.getElementById('p-live').textContent")
                .as_str()
                .is_some_and(|t| t.starts_with("refused"))
        });
        tx.send(()).unwrap();
        br.wait_until(Duration::from_secs(60), "snapshots after the retry", |b| {
            b.eval("document.documentElement.dataset.snapshots || '0'") != "0"
        });
        br.eval("document.getElementById('p-live').textContent")
    });
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(40)))
        .await
        .unwrap()
        .expect("the page was refused");
    drop(held);
    let live = browser.await.expect("browser task");
    assert_eq!(live, "live");
    bin.stop().await;
}

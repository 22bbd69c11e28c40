//! Webhook alerts end to end: real origins, a real Strata, a real webhook
//! receiver on 127.0.0.1:0. Health transitions, the signature, retries and
//! drops against a receiver that fails or hangs (while clients are served),
//! the Slack and Alertmanager shapes, the rolling hit-ratio and 5xx-ratio
//! alerts, reload failures and expiring certificates.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::webhook::{Receiver, HANG};
use support::{wait_until, Client, Origin, Strata};

/// Checks every 100 ms, one failure or success flips a server.
const FAST_HEALTH: &str = "[upstream.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n";

fn webhook(url: &str, extra: &str) -> String {
    format!("[[alerts.webhooks]]\nurl = \"{url}\"\nbatch_window = \"50ms\"\n{extra}\n")
}

async fn metric(strata: &Strata, series: &str) -> f64 {
    let text = Client::new()
        .get(&strata.admin_url("/metrics"))
        .await
        .text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse().unwrap_or(-1.0))
        })
        .unwrap_or(-1.0)
}

/// Recomputes `t=UNIX,v1=HEX(HMAC-SHA256(secret, "t.body"))`.
fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let Some((t, v1)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = t.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    let expected: String = ring::hmac::sign(&key, &msg)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = t.parse::<u64>().is_ok_and(|t| now.abs_diff(t) < 300);
    fresh && expected == v1
}

#[tokio::test]
async fn health_transitions_are_signed_alerts_in_order() {
    let receiver = Receiver::start(200).await;
    let a = Origin::fixed(&[("cache-control", "no-store")], "a").await;
    let b = Origin::fixed(&[("cache-control", "no-store")], "b").await;
    let extra = format!(
        "{FAST_HEALTH}[alerts]\ninstance = \"edge-1\"\n{}",
        webhook(&receiver.url("/hook"), "secret = \"s3cret\"")
    );
    let strata = Strata::start(&[a.addr, b.addr], &extra).await;
    let down = Duration::from_secs(10);

    a.set_healthy(false); // /health answers 500
    wait_until(down, "upstream_down for a", || async {
        receiver.events() == ["upstream_down"]
    })
    .await;
    b.shutdown(); // killed: connection refused
    wait_until(
        down,
        "upstream_down for b, then all_upstreams_down",
        || async { receiver.events().len() >= 3 },
    )
    .await;
    a.set_healthy(true);
    wait_until(down, "upstream_up for a", || async {
        receiver.events().len() >= 4
    })
    .await;

    assert_eq!(
        receiver.events(),
        [
            "upstream_down",
            "upstream_down",
            "all_upstreams_down",
            "upstream_up"
        ]
    );
    let alerts = receiver.json_alerts();
    assert_eq!(alerts[0]["labels"]["server"], a.addr.to_string());
    assert_eq!(alerts[1]["labels"]["server"], b.addr.to_string());
    // Why each left: the check's status, and the connect error's cause (it
    // said only "connect error", a refused port and an unknown name alike).
    assert_eq!(
        alerts[0]["message"],
        format!(
            "upstream {} is out of rotation: status 500 Internal Server Error",
            a.addr
        )
    );
    let refused = alerts[1]["message"].as_str().unwrap_or_default();
    assert!(
        refused.starts_with(&format!(
            "upstream {0} is out of rotation: cannot connect to upstream {0}: ",
            b.addr
        )) && refused.contains("refused"),
        "{refused}"
    );
    assert_eq!(alerts[3]["labels"]["server"], a.addr.to_string());
    assert_eq!(alerts[2]["severity"], "critical");
    assert_eq!(alerts[3]["severity"], "info");
    for alert in &alerts {
        assert_eq!(alert["instance"], "edge-1");
        assert!(alert["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(alert["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    for d in receiver.deliveries() {
        assert_eq!(d.path, "/hook");
        assert_eq!(d.headers["content-type"], "application/json");
        let sig = d.headers["strata-signature"].to_str().unwrap();
        assert!(verify("s3cret", sig, &d.body), "bad signature {sig}");
        assert!(!verify("other", sig, &d.body));
    }
    assert_eq!(
        metric(
            &strata,
            "strata_alerts_total{event=\"all_upstreams_down\",result=\"sent\"}"
        )
        .await,
        1.0
    );
    strata.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_three_tries_then_alerts_are_dropped_and_counted() {
    // One receiver answers 500, the other never answers (timeout 300ms).
    let failing = Receiver::start(500).await;
    let hanging = Receiver::start(HANG).await;
    let a = Origin::fixed(&[("cache-control", "max-age=60")], "a").await;
    let b = Origin::fixed(&[("cache-control", "max-age=60")], "b").await;
    let extra = format!(
        "{FAST_HEALTH}{}{}",
        webhook(&failing.url("/500"), ""),
        webhook(&hanging.url("/hang"), "timeout = \"300ms\"")
    );
    let strata = Strata::start(&[a.addr, b.addr], &extra).await;
    let client = Client::new();
    a.set_healthy(false);
    wait_until(Duration::from_secs(10), "three tries each", || async {
        failing.deliveries().len() >= 3 && hanging.deliveries().len() >= 3
    })
    .await;
    // Meanwhile requests are served as usual, from b.
    for i in 0..20 {
        let r = client.get(&strata.url(&format!("/p{i}"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "b");
    }
    let failed = "strata_alerts_total{event=\"upstream_down\",result=\"failed\"}";
    wait_until(
        Duration::from_secs(10),
        "both deliveries given up",
        || async { metric(&strata, failed).await == 2.0 },
    )
    .await;
    assert_eq!(failing.deliveries().len(), 3, "exactly three tries");
    assert_eq!(hanging.deliveries().len(), 3, "exactly three tries");
    assert_eq!(
        metric(
            &strata,
            "strata_alerts_total{event=\"upstream_down\",result=\"sent\"}"
        )
        .await,
        0.0
    );
    strata.stop().await;
}

#[tokio::test]
async fn slack_and_alertmanager_bodies_have_their_shapes() {
    let receiver = Receiver::start(200).await;
    let a = Origin::fixed(&[], "a").await;
    let b = Origin::fixed(&[], "b").await;
    let extra = format!(
        "{FAST_HEALTH}{}{}",
        webhook(&receiver.url("/slack"), "format = \"slack\""),
        webhook(
            &receiver.url("/am"),
            "format = \"alertmanager\"\nevents = [\"upstream_down\", \"upstream_up\"]"
        )
    );
    let strata = Strata::start(&[a.addr, b.addr], &extra).await;
    a.set_healthy(false);
    let of = |path: &'static str| {
        let receiver = &receiver;
        move || async move { receiver.deliveries().iter().any(|d| d.path == path) }
    };
    wait_until(Duration::from_secs(10), "slack delivery", of("/slack")).await;
    wait_until(Duration::from_secs(10), "alertmanager delivery", of("/am")).await;
    let first_am = receiver
        .deliveries()
        .iter()
        .filter(|d| d.path == "/am")
        .count();
    a.set_healthy(true);
    wait_until(
        Duration::from_secs(10),
        "alertmanager resolution",
        || async {
            receiver
                .deliveries()
                .iter()
                .filter(|d| d.path == "/am")
                .count()
                > first_am
        },
    )
    .await;

    let deliveries = receiver.deliveries();
    let slack = deliveries
        .iter()
        .find(|d| d.path == "/slack")
        .unwrap()
        .json();
    let text = slack["text"].as_str().expect("slack text");
    assert!(text.contains("upstream_down"), "{text}");
    assert!(text.contains(&a.addr.to_string()), "{text}");
    assert_eq!(slack["blocks"][0]["type"], "section");

    let am: Vec<serde_json::Value> = deliveries
        .iter()
        .filter(|d| d.path == "/am")
        .flat_map(|d| {
            d.json()
                .as_array()
                .expect("alertmanager body is an array")
                .clone()
        })
        .collect();
    let fired = &am[0];
    assert_eq!(fired["labels"]["alertname"], "upstream_down");
    assert_eq!(fired["labels"]["server"], a.addr.to_string());
    assert_eq!(fired["labels"]["severity"], "warning");
    assert!(fired["labels"]["instance"].is_string());
    assert!(fired["annotations"]["summary"].is_string());
    let starts = fired["startsAt"].as_str().unwrap();
    assert!(
        starts.len() == 20 && starts.as_bytes()[10] == b'T' && starts.ends_with('Z'),
        "{starts}"
    );
    assert!(fired.get("endsAt").is_none());
    // The recovery resolves the same alert (same labels) with endsAt.
    let resolved = am.last().unwrap();
    assert_eq!(resolved["labels"], fired["labels"]);
    assert!(resolved["endsAt"].is_string());
    assert_eq!(resolved["annotations"]["event"], "upstream_up");
    // Alertmanager webhooks get only the events they asked for.
    assert!(am
        .iter()
        .all(|a| a["labels"]["alertname"] == "upstream_down"));
    strata.stop().await;
}

/// `all_upstreams_down` is resolved for Alertmanager when the first
/// upstream is back (it stayed firing until Alertmanager's own timeout);
/// a JSON webhook hears nothing more of it (its `upstream_up` says so).
/// The resolution is that `upstream_up`: annotated and counted as such,
/// not as a second `all_upstreams_down` (one outage counted 2, one per
/// webhook plus one for the resolution, and alert rules on the counter
/// fired again on recovery).
#[tokio::test]
async fn alertmanager_resolves_all_upstreams_down_when_one_is_back() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::fixed(&[], "a").await;
    let extra = format!(
        "{FAST_HEALTH}{}{}",
        webhook(
            &receiver.url("/am"),
            "format = \"alertmanager\"\nevents = [\"all_upstreams_down\"]"
        ),
        webhook(&receiver.url("/json"), "events = [\"all_upstreams_down\"]")
    );
    let strata = Strata::start(&[origin.addr], &extra).await;
    let am = || {
        receiver
            .deliveries()
            .iter()
            .filter(|d| d.path == "/am")
            .flat_map(|d| d.json().as_array().expect("an array").clone())
            .collect::<Vec<serde_json::Value>>()
    };
    origin.set_healthy(false);
    wait_until(
        Duration::from_secs(10),
        "all_upstreams_down fired",
        || async { !am().is_empty() },
    )
    .await;
    origin.set_healthy(true);
    wait_until(
        Duration::from_secs(10),
        "all_upstreams_down resolved",
        || async { am().len() >= 2 },
    )
    .await;
    let (fired, resolved) = (&am()[0], &am()[1]);
    assert_eq!(fired["labels"]["alertname"], "all_upstreams_down");
    assert!(fired.get("endsAt").is_none(), "{fired}");
    assert_eq!(resolved["labels"], fired["labels"], "the same alert");
    assert!(resolved["endsAt"].is_string(), "{resolved}");
    assert_eq!(
        resolved["annotations"]["event"], "upstream_up",
        "{resolved}"
    );
    // Counted once a delivery's answer is in: three sent in all, the
    // outage once per webhook and the resolution as the recovery.
    let sent = |event: &'static str| {
        let strata = &strata;
        async move {
            let series = format!("strata_alerts_total{{event=\"{event}\",result=\"sent\"}}");
            metric(strata, &series).await
        }
    };
    wait_until(Duration::from_secs(10), "three alerts counted", || async {
        sent("all_upstreams_down").await + sent("upstream_up").await >= 3.0
    })
    .await;
    assert_eq!(sent("all_upstreams_down").await, 2.0);
    assert_eq!(sent("upstream_up").await, 1.0);
    let json: Vec<_> = receiver
        .deliveries()
        .iter()
        .filter(|d| d.path == "/json")
        .map(|d| d.json())
        .collect();
    let events: usize = json
        .iter()
        .map(|j| j["alerts"].as_array().unwrap().len())
        .sum();
    assert_eq!(events, 1, "json hears of the outage once: {json:?}");
    strata.stop().await;
}

#[tokio::test]
async fn hit_ratio_alert_fires_under_misses_not_under_hits() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::fixed(&[("cache-control", "max-age=600")], "x").await;
    let extra = format!(
        "[upstream.health]\nenabled = false\n[alerts.hit_ratio_low]\nthreshold = 0.5\nwindow = \"500ms\"\nmin_rps = 5\n{}",
        webhook(&receiver.url("/hook"), "")
    );
    let strata = Strata::start(&[origin.addr], &extra).await;
    let client = Client::new();

    // Hits for three windows: the ratio stays near 1, nothing fires.
    let hits_until = tokio::time::Instant::now() + Duration::from_millis(1600);
    while tokio::time::Instant::now() < hits_until {
        client.get(&strata.url("/hot")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(origin.count(), 1, "one miss, then hits");
    let after_hits = receiver.events().len();

    // Then only misses (a new URL each time) until the alert arrives.
    let mut i = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !receiver.events().contains(&"hit_ratio_low".to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "no hit_ratio_low");
        client.get(&strata.url(&format!("/cold/{i}"))).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(after_hits, 0, "no alert under a hit load");
    assert_eq!(receiver.events(), ["hit_ratio_low"], "fires once");
    let alert = &receiver.json_alerts()[0];
    assert!(alert["message"].as_str().unwrap().contains("hit ratio"));
    strata.stop().await;
}

#[tokio::test]
async fn error_ratio_alert_fires_when_5xx_dominate() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::start(|_req| async { support::origin::reply(502, &[], "bad") }).await;
    let extra = format!(
        "[upstream.health]\nenabled = false\n[alerts.error_ratio_high]\nthreshold = 0.2\nwindow = \"400ms\"\nmin_rps = 5\n{}",
        webhook(&receiver.url("/hook"), "events = [\"error_ratio_high\"]")
    );
    let strata = Strata::start(&[origin.addr], &extra).await;
    let client = Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while receiver.events().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error_ratio_high"
        );
        assert_eq!(client.get(&strata.url("/api")).await.status, 502);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(receiver.events(), ["error_ratio_high"]);
    strata.stop().await;
}

/// A ratio alert turned off and on again by reloads starts afresh: it
/// fires again when its condition holds (it had stayed silent, still
/// "firing" from before it was turned off).
#[tokio::test]
async fn a_ratio_alert_removed_and_restored_by_reload_fires_again() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::start(|_req| async { support::origin::reply(502, &[], "bad") }).await;
    let hook = webhook(&receiver.url("/hook"), "events = [\"error_ratio_high\"]");
    let with = format!(
        "[upstream.health]\nenabled = false\n[alerts.error_ratio_high]\nthreshold = 0.2\nwindow = \"400ms\"\nmin_rps = 5\n{hook}"
    );
    let without = format!("[upstream.health]\nenabled = false\n{hook}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, support::config_text(&[origin.addr], &with)).unwrap();
    let strata = support::binary::Binary::start(&path, &[]).await;
    let client = Client::new();
    for expected in [1, 2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while receiver.events().len() < expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "error_ratio_high #{expected} never came: {:?}",
                receiver.events()
            );
            client.get(&format!("http://{}/api", strata.addr)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Off: the same 502s for longer than a window raise nothing.
        std::fs::write(&path, support::config_text(&[origin.addr], &without)).unwrap();
        let r = strata.reload().await;
        assert_eq!(r["message"], "configuration reloaded", "{r}");
        let quiet_until = tokio::time::Instant::now() + Duration::from_millis(800);
        while tokio::time::Instant::now() < quiet_until {
            client.get(&format!("http://{}/api", strata.addr)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(receiver.events().len(), expected, "nothing while off");
        // On again.
        std::fs::write(&path, support::config_text(&[origin.addr], &with)).unwrap();
        let r = strata.reload().await;
        assert_eq!(r["message"], "configuration reloaded", "{r}");
    }
    assert_eq!(receiver.events(), ["error_ratio_high", "error_ratio_high"]);
    strata.stop().await;
}

#[tokio::test]
async fn an_expiring_certificate_is_an_alert_at_start() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(5);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let extra = format!(
        "[upstream.health]\nenabled = false\n{}",
        webhook(&receiver.url("/hook"), "")
    );
    let text = support::config_text(&[origin.addr], &extra).replace(
        "[admin]",
        &format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n[admin]",
            cert_path.display(),
            key_path.display()
        ),
    );
    let strata = Strata::start_text(&text).await;
    let alert = expiring_in_five_days(&receiver).await;
    assert_eq!(alert["labels"]["cert"], cert_path.display().to_string());
    strata.stop().await;
}

/// A config whose TLS certificate is valid from `not_before` to
/// `not_after` (days from now), written in `dir`: its path and the cert's.
fn config_with_cert(
    dir: &std::path::Path,
    not_before: i64,
    not_after: i64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(not_before);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(not_after);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("c.pem"), dir.join("c.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let text = support::config_text(&["127.0.0.1:9".parse().unwrap()], "").replace(
        "[admin]",
        &format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n[admin]",
            cert_path.display(),
            key_path.display()
        ),
    );
    let path = dir.join("strata.toml");
    std::fs::write(&path, text).unwrap();
    (path, cert_path)
}

/// `strata check` on an expired certificate said `config ok` and nothing
/// else (serve then warned and served it): it is still accepted, as nginx
/// accepts it, with a warning naming the file, its key and the date.
#[test]
fn check_warns_of_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (path, cert_path) = config_with_cert(dir.path(), -30, -2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "config ok\n");
    assert!(stderr.starts_with("warning: "), "{stderr}");
    assert!(stderr.contains("server.tls.cert: certificate "), "{stderr}");
    assert!(
        stderr.contains(&cert_path.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("expired at "), "{stderr}");
}

/// A certificate not valid yet was said by `check` only: `serve` logged
/// nothing while every client refused it. It is warned of at start now
/// (no SPEC §9 event names it), and an expired one is said "expired".
#[tokio::test]
async fn serve_warns_of_a_certificate_not_valid_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = config_with_cert(dir.path(), 3, 30);
    let strata = support::binary::Binary::start(&path, &[]).await;
    wait_until(Duration::from_secs(10), "the not-valid-yet warning", || {
        let said = strata.events().iter().any(|e| {
            e["message"] == "TLS certificate not valid yet: clients will refuse it"
                && e["level"] == "WARN"
        });
        std::future::ready(said)
    })
    .await;
    strata.stop().await;
}

/// The first alert `receiver` gets, once it has one: a `cert_expiring`
/// for a certificate made to end in 5 days (4 once a day boundary passed).
async fn expiring_in_five_days(receiver: &Receiver) -> serde_json::Value {
    wait_until(Duration::from_secs(10), "cert_expiring", || async {
        !receiver.events().is_empty()
    })
    .await;
    let alert = receiver.json_alerts()[0].clone();
    assert_eq!(alert["event"], "cert_expiring");
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.contains("expires in 4 days") || message.contains("expires in 5 days"),
        "{message}"
    );
    alert
}

#[tokio::test]
async fn a_refused_reload_is_an_alert() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let extra = format!(
        "[upstream.health]\nenabled = false\n{}",
        webhook(&receiver.url("/hook"), "")
    );
    std::fs::write(&path, support::config_text(&[origin.addr], &extra)).unwrap();
    let strata = support::binary::Binary::start(&path, &[]).await;
    std::fs::write(&path, "[server]\nlisten = 12\n").unwrap();
    strata.signal("HUP");
    wait_until(Duration::from_secs(10), "reload_failed", || async {
        !receiver.events().is_empty()
    })
    .await;
    let alert = &receiver.json_alerts()[0];
    assert_eq!(alert["event"], "reload_failed");
    assert!(alert["message"].as_str().unwrap().contains("strata.toml"));
    strata.stop().await;
}

/// Secrets never reach the log: a Redis URL's password (at start, in the
/// tier's "starting" line) and a webhook URL's password (when a delivery
/// fails, logged with scheme, host and port only), with `debug` on.
#[tokio::test]
async fn passwords_in_redis_and_webhook_urls_never_reach_the_log() {
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let extra = format!(
        "[log]\nlevel = \"debug\"\n[upstream.health]\nenabled = false\n\
         [cache.redis]\nurls = [\"redis://:REDISPW-1@127.0.0.1:{port}\"]\n{}",
        webhook(
            &format!("http://user:HOOKPW-2@127.0.0.1:{port}/services/T0"),
            "events = [\"reload_failed\"]"
        )
    );
    std::fs::write(&path, support::config_text(&[origin.addr], &extra)).unwrap();
    let strata = support::binary::Binary::start(&path, &[]).await;
    wait_message(&strata, "redis tier starting").await;
    std::fs::write(&path, "[server]\nlisten = 12\n").unwrap();
    strata.signal("HUP");
    wait_message(&strata, "webhook delivery failed: alerts dropped").await;
    let (_, lines) = strata.stop().await;
    let log = lines.join("\n");
    assert!(log.contains(":***@127.0.0.1"), "{log}");
    assert!(!log.contains("REDISPW") && !log.contains("HOOKPW"), "{log}");
}

/// Waits (up to 20 s) for a log event whose message contains `text`.
async fn wait_message(strata: &support::binary::Binary, text: &str) {
    strata
        .wait_event(0, text, |e| {
            e["message"].as_str().is_some_and(|m| m.contains(text))
        })
        .await;
}

/// Credentials in a webhook URL are sent as HTTP Basic authorization
/// (percent-decoded, as curl and Alertmanager do) and the HTTP client
/// never sees them: its debug lines ("pooling idle connection for ...")
/// carried the password, and no Authorization header was sent.
#[tokio::test]
async fn webhook_url_credentials_are_sent_as_basic_authorization() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let url = format!("http://alice:HOOK%2FPASS@{}/c11", receiver.addr);
    let extra = format!(
        "[log]\nlevel = \"debug\"\n[upstream.health]\nenabled = false\n{}",
        webhook(&url, "events = [\"reload_failed\"]")
    );
    std::fs::write(&path, support::config_text(&[origin.addr], &extra)).unwrap();
    let strata = support::binary::Binary::start(&path, &[]).await;
    std::fs::write(&path, "[server]\nlisten = 12\n").unwrap();
    strata.signal("HUP");
    wait_until(Duration::from_secs(10), "reload_failed", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    let delivery = &receiver.deliveries()[0];
    assert_eq!(delivery.path, "/c11");
    // base64("alice:HOOK/PASS")
    assert_eq!(
        delivery.headers["authorization"],
        "Basic YWxpY2U6SE9PSy9QQVNT"
    );
    wait_message(&strata, "alerts delivered").await;
    let (_, lines) = strata.stop().await;
    let log = lines.join("\n");
    assert!(log.contains("alerts delivered"), "{log}");
    assert!(!log.contains("HOOK") && !log.contains("alice"), "{log}");
}

/// Writes a self-signed certificate for localhost ending in `days`, and
/// its key, to `cert` and `key`.
fn write_cert(cert: &std::path::Path, key: &std::path::Path, days: i64) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    std::fs::write(cert, params.self_signed(&pair).unwrap().pem()).unwrap();
    std::fs::write(key, pair.serialize_pem()).unwrap();
}

/// A certificate renewed in place (same path, new contents, as certbot
/// does) and reloaded is checked: only the list of paths was compared.
#[tokio::test]
async fn a_certificate_replaced_at_the_same_path_is_checked_on_reload() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    write_cert(&cert_path, &key_path, 90);
    let extra = format!(
        "[upstream.health]\nenabled = false\n{}",
        webhook(&receiver.url("/hook"), "events = [\"cert_expiring\"]")
    );
    let text = support::config_text(&[origin.addr], &extra).replace(
        "[admin]",
        &format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n[admin]",
            cert_path.display(),
            key_path.display()
        ),
    );
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, &text).unwrap();
    let strata = support::binary::Binary::start(&path, &[]).await;
    write_cert(&cert_path, &key_path, 5);
    let r = strata.reload().await;
    assert_eq!(r["message"], "configuration reloaded", "{r}");
    expiring_in_five_days(&receiver).await;
    strata.stop().await;
}

/// `cert_expiring` judges the certificates served, not the files. A
/// reload serves a 5-day certificate as the default; then, without a
/// reload, its files are renewed (90 days, as certbot does) and the SNI
/// entry's files are replaced by a 3-day certificate, which is not served.
/// The alert names the served 5-day certificate, and none names the 3-day
/// file. The watcher read the files: the served certificate went
/// unalerted until it expired, and the unserved one was alerted (TLS
/// probe, F1). In-process, the files change before the watcher runs again.
#[tokio::test]
async fn cert_expiring_judges_the_served_certificates_not_the_files() {
    let receiver = Receiver::start(200).await;
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    write_cert(&at("a.pem"), &at("a.key"), 90);
    write_cert(&at("b.pem"), &at("b.key"), 90);
    let extra = format!(
        "[upstream.health]\nenabled = false\n{}",
        webhook(&receiver.url("/hook"), "events = [\"cert_expiring\"]")
    );
    let text = support::config_text(&[origin.addr], &extra).replace(
        "[admin]",
        &format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n[admin]",
            at("a.pem").display(),
            at("a.key").display(),
            at("b.pem").display(),
            at("b.key").display()
        ),
    );
    let strata = Strata::start_text(&text).await;
    assert_eq!(
        Client::new().get(&strata.url("/")).await.status.as_u16(),
        200
    );
    write_cert(&at("a.pem"), &at("a.key"), 5);
    let config = strata::config::Config::parse(std::path::Path::new("test.toml"), &text).unwrap();
    strata.reloader.apply(config).expect("reloaded");
    // No await since the reload: the watcher has not looked yet.
    write_cert(&at("a.pem"), &at("a.key"), 90);
    write_cert(&at("b.pem"), &at("b.key"), 3);
    let alert = expiring_in_five_days(&receiver).await;
    assert_eq!(alert["labels"]["cert"], at("a.pem").display().to_string());
    let b = at("b.pem").display().to_string();
    for alert in receiver.json_alerts() {
        assert_ne!(alert["labels"]["cert"], b.as_str(), "{alert}");
    }
    strata.stop().await;
}

/// A receiver that never answers (each batch holds its delivery for 3
/// tries of 30 s) delays only its own alerts: the other webhook gets each
/// alert while the slow one is still waiting. All webhooks shared 8
/// delivery slots, so the fast one stalled from the 9th alert on.
#[tokio::test]
async fn a_dead_receiver_does_not_delay_another_webhook() {
    let slow = Receiver::start(HANG).await;
    let fast = Receiver::start(200).await;
    let origin = Origin::fixed(&[], "x").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let extra = format!(
        "[upstream.health]\nenabled = false\n{}{}",
        webhook(
            &slow.url("/slow"),
            "events = [\"reload_failed\"]\ntimeout = \"30s\""
        ),
        webhook(&fast.url("/fast"), "events = [\"reload_failed\"]")
    );
    std::fs::write(&path, support::config_text(&[origin.addr], &extra)).unwrap();
    let strata = support::binary::Binary::start(&path, &[]).await;
    std::fs::write(&path, "[server]\nlisten = 12\n").unwrap();
    for n in 1..=12 {
        strata.signal("HUP");
        // Each alert is a batch of its own for both webhooks (more than
        // `batch_window` apart); well under the slow receiver's 30 s.
        wait_until(
            Duration::from_secs(10),
            &format!("reload_failed #{n} at the fast receiver"),
            || async { fast.events().len() >= n },
        )
        .await;
    }
    assert_eq!(fast.events().len(), 12);
    wait_until(
        Duration::from_secs(5),
        "a try at the slow receiver",
        || async { !slow.deliveries().is_empty() },
    )
    .await;
    strata.stop().await;
}

/// A reload that turns active checks off put no server out by failed
/// checks back: no check runs any more and such a server gets no trial
/// requests, so it stayed out until a restart (all of them out: every
/// miss `503`), while the reload's line said "servers stay in rotation"
/// (found by the load-balancing probe). Now it returns, with
/// `upstream_up`, and takes traffic.
#[tokio::test]
async fn turning_checks_off_puts_check_ejected_servers_back() {
    let receiver = Receiver::start(200).await;
    let a = Origin::fixed(&[("cache-control", "no-store")], "a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let hook = webhook(&receiver.url("/hook"), "");
    std::fs::write(
        &path,
        support::config_text(&[a.addr], &format!("{FAST_HEALTH}{hook}")),
    )
    .unwrap();
    let strata = support::binary::Binary::start(&path, &[]).await;
    let c = Client::new();
    let url = format!("http://{}/x", strata.addr);
    a.set_healthy(false); // /health answers 500; requests still 200
    wait_until(Duration::from_secs(10), "a out of rotation", || async {
        c.get(&url).await.status == 503
    })
    .await;
    let off = FAST_HEALTH.replace(
        "[upstream.health]\n",
        "[upstream.health]\nenabled = false\n",
    );
    std::fs::write(
        &path,
        support::config_text(&[a.addr], &format!("{off}{hook}")),
    )
    .unwrap();
    let r = strata.reload().await;
    assert_eq!(r["message"], "configuration reloaded", "{r}");
    assert_eq!(c.get(&url).await.status, 200);
    wait_until(Duration::from_secs(10), "upstream_up", || async {
        receiver.events().iter().any(|e| e == "upstream_up")
    })
    .await;
    strata.stop().await;
}

/// A drained server is out of rotation: when the last server in rotation
/// fails while the others are drained, uncached requests get 503 and
/// `all_upstreams_down` is raised (README's alert table); undraining a
/// healthy one ends it. Only `upstream_down` was sent (found by the
/// observability probe).
#[tokio::test]
async fn the_last_server_in_rotation_failing_beside_drained_ones_is_an_outage() {
    let receiver = Receiver::start(200).await;
    let a = Origin::fixed(&[("cache-control", "no-store")], "a").await;
    let b = Origin::fixed(&[("cache-control", "no-store")], "b").await;
    let extra = format!("{FAST_HEALTH}{}", webhook(&receiver.url("/hook"), ""));
    let strata = Strata::start(&[a.addr, b.addr], &extra).await;
    let c = Client::new();
    let drain = |path: &'static str| {
        let (c, url) = (&c, strata.admin_url(path));
        let body = format!(r#"{{"server":"{}"}}"#, a.addr);
        async move {
            let headers = [
                ("authorization", "Bearer secret"),
                ("content-type", "application/json"),
            ];
            let r = c
                .send(http::Method::POST, &url, &headers, bytes::Bytes::from(body))
                .await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
    };
    drain("/upstreams/drain").await;
    b.set_healthy(false);
    let down = Duration::from_secs(10);
    wait_until(down, "upstream_down, then all_upstreams_down", || async {
        receiver.events().len() >= 2
    })
    .await;
    assert_eq!(c.get(&strata.url("/x")).await.status, 503);
    // The drained server fails and recovers: healthy again, not in
    // rotation, and the outage goes on (it said "back in rotation",
    // found by the regression probe).
    a.set_healthy(false);
    wait_until(down, "a down", || async { receiver.events().len() >= 3 }).await;
    a.set_healthy(true);
    wait_until(down, "a healthy", || async { receiver.events().len() >= 4 }).await;
    assert_eq!(c.get(&strata.url("/x")).await.status, 503);
    drain("/upstreams/undrain").await;
    wait_until(down, "the outage resolved", || async {
        receiver.events().len() >= 5
    })
    .await;
    assert_eq!(
        receiver.events(),
        [
            "upstream_down",
            "all_upstreams_down",
            "upstream_down",
            "upstream_up",
            "upstream_up"
        ]
    );
    let alerts = receiver.json_alerts();
    assert_eq!(
        alerts[1]["message"],
        "no upstream in rotation (1 down, 1 drained): uncached requests get 503"
    );
    assert_eq!(
        alerts[3]["message"],
        format!(
            "upstream {} is healthy again (drained: in rotation once undrained)",
            a.addr
        )
    );
    assert_eq!(
        alerts[4]["message"],
        format!("upstream {} was undrained: back in rotation", a.addr)
    );
    assert_eq!(c.get(&strata.url("/x")).await.text(), "a");
}

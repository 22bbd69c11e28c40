//! Conditions computed, not seen: a periodic task (never the request path)
//! samples the request counters and raises
//!
//! - `hit_ratio_low`: over the rolling `window`, `(hit + stale) / (hit +
//!   stale + revalidated + miss)` of `strata_requests_total` fell below
//!   `threshold`, while those cache lookups ran at `min_rps` or more;
//! - `error_ratio_high`: over the window, responses with a 5xx status over
//!   all responses rose above `threshold`, at `min_rps` or more;
//! - `cert_expiring`: a configured TLS certificate ends within
//!   `cert_expiry` (14 days); checked at start, after a reload that
//!   changes the certificates (their paths or their files' contents: a
//!   renewal in place), and daily.
//!
//! A ratio alert fires when the condition starts holding and re-arms once
//! the ratio is back past the threshold by a fifth of the way to 100%
//! (hit ratio) or to 0% (errors), so a long bad spell is one alert, not
//! one per tick, and a ratio hovering at the threshold does not page
//! again and again ([`REARM`]). `error_ratio_high` is judged from a tenth
//! of its window after start (a broken origin at deploy time is seen in
//! seconds, not after a whole window); `hit_ratio_low` waits for a whole
//! window, as a cache starts cold.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::xxh3_64;

use super::event::rfc3339;
use super::{Event, RatioAlert};
use crate::config::{CertPair, Config};
use crate::metrics::RequestTotals;
use crate::proxy::Shared;

/// How often certificates are re-read.
const CERT_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Starts the watcher; it stops when `shared` is dropped.
pub fn spawn(shared: Weak<Shared>) {
    tokio::spawn(async move {
        let mut hit = Rolling::default();
        let mut err = Rolling::default();
        let mut certs = CertWatch::default();
        loop {
            let tick = {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let config = shared.alerts.config();
                let totals = shared.metrics.request_totals();
                let now = Instant::now();
                if let Some(rule) = config.hit_ratio_low {
                    if let Some((ratio, rps, _)) = hit.observe(now, totals, &rule, hit_ratio, false)
                    {
                        shared.alerts.emit(
                            Event::HitRatioLow,
                            format!(
                                "hit ratio {:.1}% over the last {:?} is below {:.1}% ({rps:.1} cache lookups/s)",
                                ratio * 100.0,
                                rule.window,
                                rule.threshold * 100.0
                            ),
                            &[("window", &format!("{:?}", rule.window))],
                        );
                    }
                } else {
                    // Turned off by a reload: turned on again, it starts
                    // afresh instead of staying "firing" from before.
                    hit = Rolling::default();
                }
                if let Some(rule) = config.error_ratio_high {
                    if let Some((ratio, rps, span)) =
                        err.observe(now, totals, &rule, error_ratio, true)
                    {
                        shared.alerts.emit(
                            Event::ErrorRatioHigh,
                            format!(
                                "5xx ratio {:.1}% over the last {:?} is above {:.1}% ({rps:.1} requests/s)",
                                ratio * 100.0,
                                Duration::from_secs(span.as_secs_f64().round() as u64),
                                rule.threshold * 100.0
                            ),
                            &[("window", &format!("{:?}", rule.window))],
                        );
                    }
                } else {
                    err = Rolling::default();
                }
                let config_now = shared.runtime.load().config.clone();
                for pair in certs.due(&config_now) {
                    check_cert(&shared, &pair.cert, config.cert_expiry);
                }
                tick_for(&[config.hit_ratio_low, config.error_ratio_high])
            };
            tokio::time::sleep(tick).await;
        }
    });
}

/// When the certificates are checked: at start, daily, and after a reload
/// that changed them: other paths, or new contents at the same paths (a
/// certificate renewed in place, as certbot does).
#[derive(Default)]
struct CertWatch {
    /// The configuration last looked at (a reload swaps in another).
    config: Option<Arc<Config>>,
    checked: Option<(Instant, Vec<Fingerprint>)>,
}

/// A certificate file's path and the XXH3-64 of its contents (`None`:
/// unreadable).
type Fingerprint = (PathBuf, Option<u64>);

impl CertWatch {
    /// The certificates of `config` to check now (none most ticks: the
    /// files are read only when `config` is new or a day has passed).
    fn due(&mut self, config: &Arc<Config>) -> Vec<CertPair> {
        let reloaded = !self.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, config));
        let daily = self
            .checked
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= CERT_EVERY);
        if !reloaded && !daily {
            return Vec::new();
        }
        self.config = Some(config.clone());
        let certs: Vec<CertPair> = config
            .server
            .tls
            .as_ref()
            .map(|t| t.certificates.clone())
            .unwrap_or_default();
        let now = fingerprints(&certs);
        let changed = self.checked.as_ref().is_none_or(|(_, seen)| *seen != now);
        if !daily && !changed {
            return Vec::new();
        }
        self.checked = Some((Instant::now(), now));
        certs
    }
}

fn fingerprints(certs: &[CertPair]) -> Vec<Fingerprint> {
    certs
        .iter()
        .map(|p| {
            let hash = std::fs::read(&p.cert).ok().map(|d| xxh3_64(&d));
            (p.cert.clone(), hash)
        })
        .collect()
}

/// A tenth of the shortest window, between 50 ms and 5 s.
fn tick_for(rules: &[Option<RatioAlert>]) -> Duration {
    rules
        .iter()
        .flatten()
        .map(|r| r.window / 10)
        .min()
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// `(ratio, rate)` of a counter delta: hits over cache lookups.
fn hit_ratio(d: &RequestTotals) -> (u64, u64) {
    (d.hits(), d.lookups())
}

/// 5xx responses over all responses.
fn error_ratio(d: &RequestTotals) -> (u64, u64) {
    (d.server_errors, d.all())
}

/// The share of the distance from the threshold to the good end (100%
/// hits, 0% errors) the ratio must cover before the alert re-arms.
const REARM: f64 = 0.2;

/// Counter samples over one rolling window, and whether the alert fired.
#[derive(Default)]
struct Rolling {
    samples: VecDeque<(Instant, RequestTotals)>,
    firing: bool,
}

impl Rolling {
    /// Records `totals` at `now`; returns `(ratio, per second, span)` when
    /// the alert should fire now (`span`: the time the ratio is over, the
    /// window once it is full). `above` = fire when the ratio exceeds the
    /// threshold (else when it falls below), and judge a window a tenth
    /// full (else only a full one).
    fn observe(
        &mut self,
        now: Instant,
        totals: RequestTotals,
        rule: &RatioAlert,
        ratio_of: fn(&RequestTotals) -> (u64, u64),
        above: bool,
    ) -> Option<(f64, f64, Duration)> {
        self.samples.push_back((now, totals));
        // Keep one sample at least `window` old: the baseline.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= rule.window {
            self.samples.pop_front();
        }
        let (start, base) = *self.samples.front()?;
        let span = now.duration_since(start);
        let judged = if above { rule.window / 10 } else { rule.window };
        if span < judged || span.is_zero() {
            return None;
        }
        let (part, whole) = ratio_of(&totals.since(&base));
        let rate = whole as f64 / span.as_secs_f64();
        if whole == 0 || rate < rule.min_rps {
            return None;
        }
        let ratio = part as f64 / whole as f64;
        let bad = if above {
            ratio > rule.threshold
        } else {
            ratio < rule.threshold
        };
        let recovered = if above {
            ratio <= rule.threshold * (1.0 - REARM)
        } else {
            ratio >= rule.threshold + (1.0 - rule.threshold) * REARM
        };
        match (bad, self.firing) {
            (true, false) => {
                self.firing = true;
                Some((ratio, rate, span.min(rule.window)))
            }
            (false, true) if recovered => {
                self.firing = false;
                None
            }
            _ => None,
        }
    }
}

fn check_cert(shared: &Shared, path: &Path, within: Duration) {
    let Some((subject, not_before, not_after)) = crate::server::tls::validity(path) else {
        tracing::debug!(cert = %path.display(), "cannot read the certificate's expiry");
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_before > now {
        // Served, and refused by every client until then; no event of
        // SPEC §9 names it, so it is said in the log (as `check` says it).
        let start = rfc3339(UNIX_EPOCH + Duration::from_secs(not_before.max(0) as u64));
        tracing::warn!(cert = %path.display(), %subject, not_before = %start, "TLS certificate not valid yet: clients will refuse it");
    }
    let left = not_after - now;
    if left > within.as_secs() as i64 {
        return;
    }
    let end = rfc3339(UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64));
    let message = if left <= 0 {
        format!(
            "certificate {} ({subject}) expired at {end}",
            path.display()
        )
    } else {
        format!(
            "certificate {} ({subject}) expires in {} days, at {end}",
            path.display(),
            left / 86_400
        )
    };
    if left <= 0 {
        tracing::warn!(cert = %path.display(), not_after = %end, "TLS certificate expired");
    } else {
        tracing::warn!(cert = %path.display(), not_after = %end, "TLS certificate expiring");
    }
    shared.alerts.emit(
        Event::CertExpiring,
        message,
        &[("cert", &path.display().to_string()), ("not_after", &end)],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(hit: u64, miss: u64) -> RequestTotals {
        let mut t = RequestTotals::default();
        t.by_outcome[0] = hit;
        t.by_outcome[3] = miss;
        t
    }

    #[test]
    fn fires_once_when_the_ratio_crosses_and_rearms() {
        let rule = RatioAlert {
            threshold: 0.5,
            window: Duration::from_secs(10),
            min_rps: 1.0,
        };
        let t0 = Instant::now();
        let mut r = Rolling::default();
        let at = |s| t0 + Duration::from_secs(s);
        assert!(r
            .observe(at(0), totals(0, 0), &rule, hit_ratio, false)
            .is_none());
        assert!(
            r.observe(at(5), totals(0, 50), &rule, hit_ratio, false)
                .is_none(),
            "window not full"
        );
        let (ratio, rps, span) = r
            .observe(at(10), totals(0, 100), &rule, hit_ratio, false)
            .unwrap();
        assert_eq!(ratio, 0.0);
        assert_eq!(rps, 10.0);
        assert_eq!(span, Duration::from_secs(10));
        assert!(
            r.observe(at(11), totals(0, 110), &rule, hit_ratio, false)
                .is_none(),
            "once"
        );
        // Hits take over: re-arms, then a new drop fires again.
        assert!(r
            .observe(at(30), totals(1000, 110), &rule, hit_ratio, false)
            .is_none());
        assert!(!r.firing);
        assert!(r
            .observe(at(45), totals(1000, 2000), &rule, hit_ratio, false)
            .is_some());
    }

    /// A renewal in place (same path, new contents, then a reload) is
    /// checked; a reload that changes nothing, or no reload, is not.
    #[test]
    fn certificates_are_checked_when_a_reload_changes_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "old").unwrap();
        std::fs::write(&key, "key").unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\nlisten = \"127.0.0.1:0\"\n\
             cert = \"{}\"\nkey = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nservers = [\"127.0.0.1:1\"]\n",
            cert.display(),
            key.display()
        );
        let load = || Arc::new(Config::parse(Path::new("t.toml"), &text).unwrap());
        let mut watch = CertWatch::default();
        let first = load();
        assert_eq!(watch.due(&first).len(), 1, "at start");
        assert!(watch.due(&first).is_empty(), "no reload");
        let same = load();
        assert!(watch.due(&same).is_empty(), "a reload, same contents");
        std::fs::write(&cert, "renewed").unwrap();
        assert!(watch.due(&same).is_empty(), "renewed, no reload yet");
        let renewed = load();
        assert_eq!(watch.due(&renewed).len(), 1, "reloaded, new contents");
        assert!(watch.due(&renewed).is_empty());
    }

    /// A ratio hovering at the threshold fired on every crossing (twice
    /// in 45 s at about 50% hits, found by the observability probe); it
    /// re-arms only a fifth of the way back to 100%.
    #[test]
    fn a_ratio_hovering_at_the_threshold_fires_once() {
        let rule = RatioAlert {
            threshold: 0.5,
            window: Duration::from_secs(10),
            min_rps: 1.0,
        };
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut r = Rolling::default();
        r.observe(at(0), totals(0, 0), &rule, hit_ratio, false);
        // 45% over the first window: fires.
        assert!(r
            .observe(at(10), totals(45, 55), &rule, hit_ratio, false)
            .is_some());
        // 52% over the next window (not re-armed: 60% needed), then 45%.
        r.observe(at(20), totals(97, 103), &rule, hit_ratio, false);
        assert!(r.firing);
        assert!(r
            .observe(at(30), totals(142, 158), &rule, hit_ratio, false)
            .is_none());
        // 65%: re-armed; 45% again fires again.
        r.observe(at(40), totals(207, 193), &rule, hit_ratio, false);
        assert!(!r.firing);
        assert!(r
            .observe(at(50), totals(252, 248), &rule, hit_ratio, false)
            .is_some());
    }

    /// The 5xx ratio is judged from a tenth of its window after start: all
    /// 500s in the first 20 s of a 1-minute window alerted after a minute
    /// (found by the observability probe). The hit ratio waits for a whole
    /// window (a cold cache).
    #[test]
    fn errors_are_judged_before_the_first_window_is_full() {
        let rule = RatioAlert {
            threshold: 0.2,
            window: Duration::from_secs(60),
            min_rps: 1.0,
        };
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut r = Rolling::default();
        r.observe(at(0), totals(0, 0), &rule, error_ratio, true);
        let errors = |n: u64| {
            let mut t = RequestTotals {
                server_errors: n,
                ..Default::default()
            };
            t.by_outcome[3] = n;
            t
        };
        assert!(
            r.observe(at(3), errors(10), &rule, error_ratio, true)
                .is_none(),
            "a twentieth of the window"
        );
        let (ratio, _, span) = r
            .observe(at(6), errors(20), &rule, error_ratio, true)
            .unwrap();
        assert_eq!((ratio, span), (1.0, Duration::from_secs(6)));
        let mut h = Rolling::default();
        h.observe(at(0), totals(0, 0), &rule, hit_ratio, false);
        assert!(
            h.observe(at(30), totals(0, 300), &rule, hit_ratio, false)
                .is_none(),
            "a cold cache at start"
        );
    }

    #[test]
    fn quiet_traffic_is_not_judged() {
        let rule = RatioAlert {
            threshold: 0.5,
            window: Duration::from_secs(10),
            min_rps: 1.0,
        };
        let t0 = Instant::now();
        let mut r = Rolling::default();
        r.observe(t0, totals(0, 0), &rule, hit_ratio, false);
        assert!(r
            .observe(
                t0 + Duration::from_secs(10),
                totals(0, 5),
                &rule,
                hit_ratio,
                false
            )
            .is_none());
    }
}

//! Conditions computed, not seen: a periodic task (never the request path)
//! samples the request counters and raises
//!
//! - `hit_ratio_low`: over the rolling `window`, `(hit + stale) / (hit +
//!   stale + revalidated + miss)` of `strata_requests_total` fell below
//!   `threshold`, while those cache lookups ran at `min_rps` or more;
//! - `error_ratio_high`: over the window, responses with a 5xx status over
//!   all responses rose above `threshold`, at `min_rps` or more;
//! - `cert_expiring`: a certificate the TLS listener serves ends within
//!   `cert_expiry` (14 days). What is judged is each loaded chain's leaf
//!   as the acceptor holds it ([`tls::Leaf`]), never the files: files
//!   renewed without a reload are not served, and neither is a
//!   certificate a reload refused. Checked at start, after a reload that
//!   loads other certificates (other paths, or a renewal in place), and
//!   daily.
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
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::event::rfc3339;
use super::{Event, RatioAlert};
use crate::metrics::RequestTotals;
use crate::proxy::Shared;
use crate::server::tls::{self, Certificates, Leaf};

/// How often the served certificates are judged again without a reload.
const CERT_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Starts the watcher; it stops when `shared` is dropped. `tls`: the TLS
/// listener's acceptor, whose certificates `cert_expiring` judges.
pub fn spawn(shared: Weak<Shared>, tls: Option<tls::Acceptor>) {
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
                if let Some(acceptor) = &tls {
                    for leaf in certs.due(&acceptor.serving()) {
                        check_cert(&shared, &leaf, config.cert_expiry);
                    }
                }
                tick_for(&[config.hit_ratio_low, config.error_ratio_high])
            };
            tokio::time::sleep(tick).await;
        }
    });
}

/// When the served certificates are checked: at start, daily, and after a
/// reload that loaded other ones: other paths, or another certificate at
/// the same path (renewed in place, as certbot does, then reloaded).
#[derive(Default)]
struct CertWatch {
    /// The certificates last looked at (a reload swaps in others). Weak:
    /// replaced keys are not kept; the allocation it pins cannot be reused
    /// by newer ones, so a pointer match is the same load.
    served: Weak<Certificates>,
    checked: Option<(Instant, Vec<Leaf>)>,
}

impl CertWatch {
    /// The leaves of `served` to check now (none most ticks: they are
    /// compared only when `served` is new, and all judged daily).
    fn due(&mut self, served: &Arc<Certificates>) -> Vec<Leaf> {
        let swapped = !std::ptr::eq(self.served.as_ptr(), Arc::as_ptr(served));
        let daily = self
            .checked
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= CERT_EVERY);
        if !swapped && !daily {
            return Vec::new();
        }
        self.served = Arc::downgrade(served);
        let leaves = served.leaves().to_vec();
        let changed = self
            .checked
            .as_ref()
            .is_none_or(|(_, seen)| *seen != leaves);
        if !daily && !changed {
            return Vec::new();
        }
        self.checked = Some((Instant::now(), leaves.clone()));
        leaves
    }
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

/// Judges one served leaf: `cert_expiring` when it ends within `within`,
/// a warning when it is not valid yet.
fn check_cert(shared: &Shared, leaf: &Leaf, within: Duration) {
    let (path, subject) = (leaf.path.display(), &leaf.subject);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if leaf.not_before > now {
        // Served, and refused by every client until then; no event of
        // SPEC §9 names it, so it is said in the log (as `check` says it).
        let start = rfc3339(UNIX_EPOCH + Duration::from_secs(leaf.not_before.max(0) as u64));
        tracing::warn!(cert = %path, %subject, not_before = %start, "TLS certificate not valid yet: clients will refuse it");
    }
    let left = leaf.not_after - now;
    if left > within.as_secs() as i64 {
        return;
    }
    let end = rfc3339(UNIX_EPOCH + Duration::from_secs(leaf.not_after.max(0) as u64));
    let message = if left <= 0 {
        format!("certificate {path} ({subject}) expired at {end}")
    } else {
        format!(
            "certificate {path} ({subject}) expires in {} days, at {end}",
            left / 86_400
        )
    };
    if left <= 0 {
        tracing::warn!(cert = %path, not_after = %end, "TLS certificate expired");
    } else {
        tracing::warn!(cert = %path, not_after = %end, "TLS certificate expiring");
    }
    shared.alerts.emit(
        Event::CertExpiring,
        message,
        &[("cert", &path.to_string()), ("not_after", &end)],
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

    /// The served certificates are judged at start and when a reload loads
    /// other ones (a renewal in place included); a reload of the same
    /// ones is not, and files renewed without a reload are not served, so
    /// not looked at.
    #[test]
    fn served_certificates_are_checked_when_a_reload_loads_others() {
        use crate::config::{CertPair, TlsConfig};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let renew = || {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            std::fs::write(&cert, made.cert.pem()).unwrap();
            std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        };
        renew();
        let config = TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            certificates: vec![CertPair {
                cert: cert.clone(),
                key: key.clone(),
                cert_at: "t.toml:5:8: server.tls.cert".into(),
                key_at: "t.toml:6:7: server.tls.key".into(),
            }],
            handshake_timeout: Duration::from_secs(10),
        };
        let load = || Arc::new(Certificates::load(&config).unwrap());
        let mut watch = CertWatch::default();
        let first = load();
        assert_eq!(watch.due(&first), first.leaves(), "at start");
        assert!(watch.due(&first).is_empty(), "no reload");
        let same = load();
        assert!(watch.due(&same).is_empty(), "a reload, same certificate");
        renew();
        assert!(watch.due(&same).is_empty(), "renewed on disk, not loaded");
        let renewed = load();
        let due = watch.due(&renewed);
        assert_eq!(due, renewed.leaves(), "reloaded, another certificate");
        assert_ne!(due[0].fingerprint, first.leaves()[0].fingerprint);
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

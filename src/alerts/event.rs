//! The alert events (their names are part of the contract: they appear in
//! payloads, in `[[alerts.webhooks]] events` and in `strata_alerts_total`)
//! and one raised [`Alert`].

use std::collections::BTreeMap;
use std::time::SystemTime;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A server left rotation (failed health checks or connect failures).
    UpstreamDown,
    /// A server came back into rotation.
    UpstreamUp,
    /// No server is left in rotation: every uncached request gets 503.
    AllUpstreamsDown,
    /// The Redis circuit breaker opened: Redis is skipped (memory only).
    RedisBreakerOpen,
    /// Redis answers again.
    RedisBreakerClosed,
    /// A SIGHUP reload was refused; the old configuration keeps serving.
    ReloadFailed,
    /// The rolling hit ratio fell below `[alerts.hit_ratio_low]`.
    HitRatioLow,
    /// The rolling 5xx ratio rose above `[alerts.error_ratio_high]`.
    ErrorRatioHigh,
    /// A TLS certificate expires within 14 days (or has expired).
    CertExpiring,
}

/// How urgent an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Service is down for clients.
    Critical,
    /// Degraded, or about to be.
    Warning,
    /// A recovery.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl Event {
    pub const ALL: [Event; 9] = [
        Event::UpstreamDown,
        Event::UpstreamUp,
        Event::AllUpstreamsDown,
        Event::RedisBreakerOpen,
        Event::RedisBreakerClosed,
        Event::ReloadFailed,
        Event::HitRatioLow,
        Event::ErrorRatioHigh,
        Event::CertExpiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::UpstreamDown => "upstream_down",
            Event::UpstreamUp => "upstream_up",
            Event::AllUpstreamsDown => "all_upstreams_down",
            Event::RedisBreakerOpen => "redis_breaker_open",
            Event::RedisBreakerClosed => "redis_breaker_closed",
            Event::ReloadFailed => "reload_failed",
            Event::HitRatioLow => "hit_ratio_low",
            Event::ErrorRatioHigh => "error_ratio_high",
            Event::CertExpiring => "cert_expiring",
        }
    }

    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }

    pub fn severity(self) -> Severity {
        match self {
            Event::AllUpstreamsDown => Severity::Critical,
            Event::UpstreamUp | Event::RedisBreakerClosed => Severity::Info,
            _ => Severity::Warning,
        }
    }

    /// For a recovery, the event it ends (Alertmanager resolves that
    /// alert rather than raising a new one).
    pub fn resolves(self) -> Option<Event> {
        match self {
            Event::UpstreamUp => Some(Event::UpstreamDown),
            Event::RedisBreakerClosed => Some(Event::RedisBreakerOpen),
            _ => None,
        }
    }
}

/// One raised alert.
#[derive(Debug, Clone)]
pub struct Alert {
    pub event: Event,
    pub severity: Severity,
    /// Which Strata raised it (`[alerts] instance`).
    pub instance: String,
    /// One human sentence.
    pub message: String,
    /// What it is about, e.g. `server = "10.0.0.5:3001"`.
    pub labels: BTreeMap<String, String>,
    pub at: SystemTime,
    /// For formats that resolve alerts (Alertmanager) only: the event
    /// whose firing alert this recovery ends when that event has no
    /// recovery of its own (`all_upstreams_down` ends with the first
    /// `upstream_up`). Such an alert goes only to Alertmanager webhooks
    /// that asked for the ended event, and is counted in
    /// `strata_alerts_total` under `event` (the recovery), as a recovery
    /// of [`Event::resolves`] is.
    pub ends: Option<Event>,
}

/// `at` as RFC 3339 UTC (`2026-11-29T18:20:01Z`), as Alertmanager wants.
pub fn rfc3339(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at).replace_nanosecond(0);
    t.ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names_round_trip_and_time_formats() {
        for e in Event::ALL {
            assert_eq!(Event::parse(e.as_str()), Some(e));
        }
        assert_eq!(Event::parse("upstream-down"), None);
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_976_401_250)),
            "2026-11-29T18:20:01Z"
        );
    }
}

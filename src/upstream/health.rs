//! Active health checks: every `interval`, each server gets `GET <path>`
//! with a `timeout`, each on its own schedule (one task per server). By
//! default they judge liveness: any status below 500
//! is a success, so an app without a health route (a 404) stays in
//! rotation; `expect_status` (classes such as `2xx`, or codes) tightens
//! that. A connect error, a timeout or a 5xx is a failure. After
//! `unhealthy_threshold` consecutive failures a server leaves rotation;
//! after `healthy_threshold` consecutive successes it returns. Each
//! transition is logged, exported as `strata_upstream_healthy`, and raised
//! as an alert (`upstream_down`, `upstream_up`, `all_upstreams_down`),
//! as are a passive ejection and a trial request's return
//! ([`super::server`]).

use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use http::{header, HeaderValue, Request};
use http_body_util::BodyExt;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::client::empty_body;
use super::{ServerState, Upstreams};
use crate::alerts::{Alerts, Event};
use crate::config::HealthConfig;

/// Spawns one checker task per server of the pool, so that each server is
/// checked on its own schedule: every `interval` from the start, whatever
/// the other servers' checks take (a slow or hanging one delays no one
/// else's). A server's next check starts only once its previous one ended
/// (at most one in flight per server; a check longer than `interval`
/// delays that server's next one, never more). The tasks hold only a weak
/// reference and stop when the pool is replaced by a reload or dropped
/// (its token is cancelled); the new pool has tasks for its own servers.
pub fn spawn(pool: Weak<Upstreams>, stop: CancellationToken) {
    let Some(servers) = pool.upgrade().map(|p| p.balancer.servers().len()) else {
        return;
    };
    for index in 0..servers {
        tokio::spawn(check_forever(pool.clone(), index, stop.clone()));
    }
}

/// Checks server `index` every `interval` until the pool goes away.
async fn check_forever(pool: Weak<Upstreams>, index: usize, stop: CancellationToken) {
    let Some(interval) = pool.upgrade().map(|p| p.config().health.interval) else {
        return;
    };
    // `interval` is above zero (config); `tokio::time::interval` would
    // panic on zero.
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
    // After an overlong check: the next one at once, then every interval
    // from there (not a burst of the missed ones).
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(pool) = pool.upgrade() else { return };
        // A check under way when the pool is replaced records nothing.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = check_and_record(&pool, index) => {}
        }
    }
}

/// One check of server `index`, and what its result changes.
async fn check_and_record(pool: &Upstreams, index: usize) {
    let Some(server) = pool.balancer.servers().get(index) else {
        return;
    };
    let result = check_one(pool, index, &server.authority).await;
    let health = &pool.config().health;
    let name = server.authority.as_str();
    match result {
        Ok(()) => {
            if server.record_success(health) {
                came_back(pool, server, "health checks passed");
            }
        }
        Err(Unchecked::Failed(reason)) => {
            tracing::debug!(server = name, %reason, "health check failed");
            if server.record_failure(health) {
                went_down(pool, server, &reason);
            }
        }
        // Says nothing about the server: no failure recorded (out of file
        // descriptors, every check failed and took the servers out).
        Err(Unchecked::Local(reason)) => {
            tracing::warn!(server = name, %reason, "health check not run: no local resources");
        }
    }
}

/// Why a check did not pass: the server failed it, or Strata could not
/// run it (out of file descriptors or buffers).
enum Unchecked {
    Failed(String),
    Local(String),
}

/// A server just came back in rotation (`how`: the checks, or a trial
/// request's answer): log, metric, `upstream_up`, and the end of
/// `all_upstreams_down` when it was raised.
pub(super) fn came_back(pool: &Upstreams, server: &ServerState, how: &str) {
    let name = server.authority.as_str();
    pool.metrics().upstream_healthy(name, true);
    let mut outage = pool.outage.lock().unwrap_or_else(PoisonError::into_inner);
    // A drained server is healthy again but not in rotation until it is
    // undrained (which then says so, if that ends an outage).
    let message = if server.is_draining() {
        tracing::info!(
            server = name,
            how,
            "upstream healthy again; drained, so not in rotation"
        );
        format!("upstream {name} is healthy again (drained: in rotation once undrained)")
    } else {
        tracing::info!(server = name, how, "upstream healthy: back in rotation");
        format!("upstream {name} is back in rotation")
    };
    pool.alerts()
        .emit(Event::UpstreamUp, message, &[("server", name)]);
    // The first one back in rotation (not drained) ends "no upstream in
    // rotation".
    if *outage && pool.balancer.eligible_count() > 0 {
        *outage = false;
        pool.alerts().resolve(
            Event::AllUpstreamsDown,
            Event::UpstreamUp,
            format!("upstream {name} is back in rotation"),
            &[],
        );
    }
}

/// A drain changed (`drained`: the server is now drained): raises
/// `all_upstreams_down` when it took the last server in rotation out (the
/// others down or drained: uncached requests get 503), and ends it when
/// an undrain put a healthy one back.
pub(super) fn drain_changed(pool: &Upstreams, server: &ServerState, drained: bool) {
    let name = server.authority.as_str();
    let mut outage = pool.outage.lock().unwrap_or_else(PoisonError::into_inner);
    let in_rotation = pool.balancer.eligible_count();
    if drained && !*outage && in_rotation == 0 {
        *outage = true;
        raise_outage(pool, &format!("upstream {name} was drained"));
    } else if !drained && *outage && in_rotation > 0 {
        *outage = false;
        tracing::info!(server = name, "upstream undrained: back in rotation");
        pool.alerts().emit(
            Event::UpstreamUp,
            format!("upstream {name} was undrained: back in rotation"),
            &[("server", name)],
        );
        pool.alerts().resolve(
            Event::AllUpstreamsDown,
            Event::UpstreamUp,
            format!("upstream {name} was undrained: back in rotation"),
            &[],
        );
    }
}

/// Logs and sends `all_upstreams_down` (the caller holds the outage flag).
fn raise_outage(pool: &Upstreams, last: &str) {
    let servers = pool.balancer.servers();
    let drained = servers.iter().filter(|s| s.is_draining()).count();
    tracing::error!(last, "no upstream in rotation: uncached requests get 503");
    let detail = if drained == 0 {
        format!("all {} down", servers.len())
    } else {
        format!(
            "{} down, {drained} drained",
            servers.len().saturating_sub(drained)
        )
    };
    pool.alerts().emit(
        Event::AllUpstreamsDown,
        format!("no upstream in rotation ({detail}): uncached requests get 503"),
        &[],
    );
}

/// A reload turned active checks off: servers out by failed checks go
/// back in rotation ([`ServerState::checks_turned_off`]), each with its
/// `upstream_up`, as the start-up line says ("servers stay in rotation").
pub(super) fn checks_turned_off(servers: &[std::sync::Arc<ServerState>], alerts: &Alerts) {
    for server in servers {
        if server.checks_turned_off() {
            let name = server.authority.as_str();
            tracing::info!(
                server = name,
                "upstream back in rotation: health checks turned off"
            );
            alerts.emit(
                Event::UpstreamUp,
                format!("upstream {name} is back in rotation: health checks turned off"),
                &[("server", name)],
            );
        }
    }
}

/// Ends a raised `all_upstreams_down` (a reload put servers in rotation).
pub(super) fn ended_outage(outage: &Mutex<bool>, alerts: &Alerts, message: &str) {
    let mut outage = outage.lock().unwrap_or_else(PoisonError::into_inner);
    if std::mem::take(&mut *outage) {
        alerts.resolve(Event::AllUpstreamsDown, Event::UpstreamUp, message, &[]);
    }
}

/// A server just left rotation (`reason`: why its last check or connect
/// failed): log, metric, `upstream_down`, and `all_upstreams_down` when it
/// was the last one in rotation, the others down or drained (once per
/// outage: two servers leaving at once both see none left).
pub(super) fn went_down(pool: &Upstreams, server: &ServerState, reason: &str) {
    let name = server.authority.as_str();
    tracing::warn!(server = name, %reason, "upstream unhealthy: out of rotation");
    pool.metrics().upstream_healthy(name, false);
    let mut outage = pool.outage.lock().unwrap_or_else(PoisonError::into_inner);
    pool.alerts().emit(
        Event::UpstreamDown,
        format!("upstream {name} is out of rotation: {reason}"),
        &[("server", name)],
    );
    // In rotation: healthy and not drained (the others may be drained).
    if !*outage && pool.balancer.eligible_count() == 0 {
        *outage = true;
        raise_outage(pool, &format!("upstream {name} went down"));
    }
}

async fn check_one(
    pool: &Upstreams,
    index: usize,
    authority: &http::uri::Authority,
) -> Result<(), Unchecked> {
    let health = &pool.config().health;
    let mut req = Request::new(empty_body());
    *req.uri_mut() = health
        .path
        .parse()
        .map_err(|_| Unchecked::Failed(format!("invalid health path {:?}", health.path)))?;
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("strata-health-check"),
    );
    let work = async {
        let resp = pool
            .client()
            .request(index, req, true, health.timeout, health.timeout)
            .await
            // The whole cause, as a failed request logs it: a refused
            // connect and an unresolvable name read differently.
            .map_err(|f| {
                let reason = super::failure_log::Chain(&f.error).to_string();
                match f.error {
                    super::UpstreamError::LocalResources { .. } => Unchecked::Local(reason),
                    _ => Unchecked::Failed(reason),
                }
            })?;
        let status = resp.status();
        // Drain the body so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if health_ok(&health.expect_status, status.as_u16()) {
            Ok(())
        } else {
            Err(Unchecked::Failed(format!("status {status}")))
        }
    };
    match tokio::time::timeout(health.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Unchecked::Failed(format!(
            "no answer within {:?}",
            health.timeout
        ))),
    }
}

/// One accepted health-check status: a class (`"2xx"`) or a code (`"204"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// `1xx` … `5xx`: the hundreds digit.
    Class(u16),
    Code(u16),
}

impl StatusMatch {
    /// Parses `"2xx"` (case-insensitive) or a code `100`–`599`.
    pub fn parse(s: &str) -> Option<StatusMatch> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        if let Some(d) = lower.strip_suffix("xx") {
            return match d {
                "1" | "2" | "3" | "4" | "5" => d.parse().ok().map(StatusMatch::Class),
                _ => None,
            };
        }
        match s.parse::<u16>() {
            Ok(c) if (100..600).contains(&c) => Some(StatusMatch::Code(c)),
            _ => None,
        }
    }

    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Class(c) => status / 100 == c,
            StatusMatch::Code(c) => status == c,
        }
    }
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatch::Class(c) => write!(f, "{c}xx"),
            StatusMatch::Code(c) => write!(f, "{c}"),
        }
    }
}

/// Whether a health-check answer with `status` counts as up: one of
/// `expect`, or with none configured, any status below 500 (liveness).
pub fn health_ok(expect: &[StatusMatch], status: u16) -> bool {
    if expect.is_empty() {
        status < 500
    } else {
        expect.iter().any(|m| m.matches(status))
    }
}

/// What the checks judge, in words, for the one start-up log line.
pub fn describe(h: &HealthConfig) -> String {
    if !h.enabled {
        return "off (servers stay in rotation; only connect failures are seen)".to_string();
    }
    let up = if h.expect_status.is_empty() {
        "any status below 500 (liveness)".to_string()
    } else {
        let list: Vec<String> = h.expect_status.iter().map(ToString::to_string).collect();
        format!("status {}", list.join(" or "))
    };
    format!(
        "GET {} every {:?}; up = {up} within {:?}; out after {} failures, back after {} successes; \
         out after {} connect failures for {:?}, then one request tries again",
        h.path,
        h.interval,
        h.timeout,
        h.unhealthy_threshold,
        h.healthy_threshold,
        h.unhealthy_threshold,
        h.fail_timeout
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Activity;
    use crate::alerts::AlertsConfig;
    use crate::metrics::Metrics;

    /// Two servers that leave at once both see none left; one outage is
    /// one `all_upstreams_down`, and the next outage raises it again.
    #[tokio::test]
    async fn one_outage_raises_all_upstreams_down_once() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                    [upstream]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let metrics = Metrics::new();
        let alerts = Alerts::start(&AlertsConfig::default(), metrics.clone());
        let activity = Activity::new();
        alerts.attach(activity.clone());
        let pool = Upstreams::new(&config.upstream, None, metrics, alerts);
        let raised = || {
            activity
                .recent()
                .iter()
                .filter(|e| e.message.starts_with("all_upstreams_down"))
                .count()
        };
        let servers = pool.balancer.servers();
        for _ in 0..2 {
            // Both leave before either announces it (the race).
            assert!(servers.iter().all(|s| s.leave()));
            went_down(&pool, &servers[0], "connect error");
            went_down(&pool, &servers[1], "connect error");
            for s in servers {
                s.record_success(&pool.config().health);
                s.record_success(&pool.config().health);
                came_back(&pool, s, "checks");
            }
        }
        assert_eq!(raised(), 2, "{:?}", activity.recent());
    }

    #[test]
    fn liveness_by_default_and_expect_status_tightens() {
        assert!(health_ok(&[], 200));
        assert!(health_ok(&[], 404));
        assert!(health_ok(&[], 499));
        assert!(!health_ok(&[], 500));
        assert!(!health_ok(&[], 503));
        let expect = [
            StatusMatch::parse("2xx").unwrap(),
            StatusMatch::parse("301").unwrap(),
        ];
        assert!(health_ok(&expect, 204));
        assert!(health_ok(&expect, 301));
        assert!(!health_ok(&expect, 302));
        assert!(!health_ok(&expect, 404));
        assert_eq!(StatusMatch::parse("2XX"), Some(StatusMatch::Class(2)));
        assert_eq!(StatusMatch::parse("6xx"), None);
        assert_eq!(StatusMatch::parse("42"), None);
        assert_eq!(StatusMatch::parse("ok"), None);
    }
}

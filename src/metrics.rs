//! Prometheus metrics (`GET /metrics`) and their JSON twin (`GET /stats`).
//!
//! Label combinations used on every request are resolved once at start-up
//! (per-rule ones when the rules are loaded), so recording a hit is a few
//! atomic adds: no label hashing, no lock. The metric list, with types and
//! labels, is in the README ("Metrics").

mod connections;
mod families;
mod labels;
mod sample;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use families::Inner;
use labels::STATUS_CLASSES;
pub use labels::{MethodClass, Outcome, PurgeCause, Shed};
pub use sample::{Buckets, ProcessSample, Sample, UpstreamSample};
pub use stats::Stats;

use prometheus::{Encoder, IntCounter, TextEncoder};

/// Per-rule hit and miss counters (`strata_rule_requests_total`), resolved
/// when the rules are loaded (start-up and reload) so that counting a
/// request is one atomic add. Index = the rule's position in the file.
#[derive(Clone, Default)]
pub struct RuleCounters {
    /// `[hit, miss]` per rule.
    by_rule: Vec<[IntCounter; 2]>,
    /// The `rule` label per rule ([`crate::rules::RuleSet::labels`]).
    labels: Vec<String>,
}

impl RuleCounters {
    /// The rule's request was answered from the cache (fresh, or stale
    /// where allowed), without going upstream.
    pub fn hit(&self, rule: usize) {
        if let Some([hit, _]) = self.by_rule.get(rule) {
            hit.inc();
        }
    }

    /// The rule's request went upstream for the cache (miss, validation,
    /// or a collapsed wait on another request's fetch).
    pub fn miss(&self, rule: usize) {
        if let Some([_, miss]) = self.by_rule.get(rule) {
            miss.inc();
        }
    }
}

/// The `kind` label of `strata_upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "timeout", "protocol"];
/// Request counts since start, for ratios over time (see
/// [`Metrics::request_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTotals {
    /// Indexed like [`Outcome::ALL`].
    pub by_outcome: [u64; 6],
    /// Responses with a 5xx status (any outcome).
    pub server_errors: u64,
}

impl RequestTotals {
    /// Answered from the cache without the upstream: `hit` + `stale`.
    pub fn hits(&self) -> u64 {
        self.by_outcome[Outcome::Hit.index()] + self.by_outcome[Outcome::Stale.index()]
    }

    /// Requests the cache looked up: `hit` + `stale` + `revalidated` + `miss`
    /// (the hit ratio's denominator; `bypass` and `error` are not lookups).
    pub fn lookups(&self) -> u64 {
        self.hits()
            + self.by_outcome[Outcome::Revalidated.index()]
            + self.by_outcome[Outcome::Miss.index()]
    }

    pub fn all(&self) -> u64 {
        self.by_outcome.iter().sum()
    }

    /// The counts between `earlier` and `self` (counters only grow).
    pub fn since(&self, earlier: &RequestTotals) -> RequestTotals {
        let mut d = RequestTotals::default();
        for (i, v) in d.by_outcome.iter_mut().enumerate() {
            *v = self.by_outcome[i].saturating_sub(earlier.by_outcome[i]);
        }
        d.server_errors = self.server_errors.saturating_sub(earlier.server_errors);
        d
    }
}

/// One upstream server's series, resolved on first use and kept (the
/// pool holds one per configured server) so that counting a pass-through
/// is atomic adds, not a label hash and a lock per request. Lazily, so that
/// `/metrics` shows only statuses and durations that happened.
pub struct ServerSeries {
    metrics: Metrics,
    server: String,
    /// `strata_upstream_requests_total{server, status}` for `COMMON_STATUS`.
    by_status: [std::sync::OnceLock<IntCounter>; COMMON_STATUS.len()],
    duration: std::sync::OnceLock<prometheus::Histogram>,
}

impl ServerSeries {
    /// An upstream response with `status` after `elapsed` (head received).
    pub fn response(&self, status: u16, elapsed: Duration) {
        let i = &self.metrics.inner;
        match COMMON_STATUS.iter().position(|&s| s == status) {
            Some(p) => self.by_status[p]
                .get_or_init(|| {
                    i.upstream_requests.with_label_values(&[
                        self.server.as_str(),
                        itoa::Buffer::new().format(status),
                    ])
                })
                .inc(),
            None => i
                .upstream_requests
                .with_label_values(&[self.server.as_str(), itoa::Buffer::new().format(status)])
                .inc(),
        }
        self.observe(elapsed);
    }

    /// A failed upstream exchange of `kind` after `elapsed`.
    pub fn error(&self, kind: &str, elapsed: Duration) {
        let i = &self.metrics.inner;
        i.upstream_errors
            .with_label_values(&[self.server.as_str(), kind])
            .inc();
        self.observe(elapsed);
    }

    /// An exchange whose head was counted as a response and which still
    /// failed: its body broke (`protocol`) or stalled (`timeout`), or its
    /// head cannot be relayed (an unasked `101` or `304`, `protocol`).
    /// An error too, timed with the head already.
    pub fn body_error(&self, kind: &str) {
        self.metrics
            .inner
            .upstream_errors
            .with_label_values(&[self.server.as_str(), kind])
            .inc();
    }

    fn observe(&self, elapsed: Duration) {
        self.duration
            .get_or_init(|| {
                self.metrics
                    .inner
                    .upstream_duration
                    .with_label_values(&[self.server.as_str()])
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Statuses whose counters are pre-resolved.
const COMMON_STATUS: [u16; 12] = [200, 204, 206, 301, 302, 304, 400, 404, 500, 502, 503, 504];

/// Cheap-clone handle to every metric.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            inner: Arc::new(Inner::new()),
        }
    }

    /// One finished client request.
    pub fn request(&self, outcome: Outcome, status: u16, elapsed: Duration) {
        self.count_request(outcome, status);
        self.inner.duration_fast[outcome.index()].observe(elapsed.as_secs_f64());
    }

    /// `strata_requests_total{outcome, status}`.
    fn count_request(&self, outcome: Outcome, status: u16) {
        let i = &self.inner;
        match COMMON_STATUS.iter().position(|&s| s == status) {
            Some(p) => i.requests_fast[outcome.index()][p].inc(),
            None => i
                .requests
                .with_label_values(&[outcome.as_str(), itoa::Buffer::new().format(status)])
                .inc(),
        }
    }

    /// A request head hyper refused (`400`, `431`) before Strata saw a
    /// request: counted in `strata_requests_total{outcome="error"}` and by
    /// status class (method `other`), with no duration (none was measured).
    pub fn refused_head(&self, status: u16) {
        self.count_request(Outcome::Error, status);
        self.request_class(MethodClass::Other, status);
    }

    /// Body bytes of one response sent with this outcome. The hit path
    /// calls it: one atomic add on a pre-resolved counter.
    pub fn response_bytes(&self, outcome: Outcome, bytes: u64) {
        self.inner.response_bytes_fast[outcome.index()].inc_by(bytes);
    }

    /// One finished client request, by method and status class.
    pub fn request_class(&self, method: MethodClass, status: u16) {
        let i = &self.inner;
        match (status / 100).checked_sub(1).map(usize::from) {
            Some(c) if c < STATUS_CLASSES.len() => i.by_class_fast[method.index()][c].inc(),
            // Statuses 600-999 are legal on the wire, and rare.
            _ => i
                .by_class
                .with_label_values(&[method.as_str(), "other"])
                .inc(),
        }
    }

    pub fn hit(&self, tier: &str) {
        let i = &self.inner;
        match tier {
            "memory" => i.hits_fast[0].inc(),
            "redis" => i.hits_fast[1].inc(),
            other => i.hits.with_label_values(&[other]).inc(),
        }
    }

    /// Resolves the per-rule counters for `labels` (the rules' `rule`
    /// labels, in order: [`crate::rules::RuleSet::labels`], distinct).
    pub fn rule_counters(&self, labels: Vec<String>) -> RuleCounters {
        let rules = &self.inner.rule_requests;
        RuleCounters {
            by_rule: labels
                .iter()
                .map(|l| {
                    [
                        rules.with_label_values(&[l.as_str(), "hit"]),
                        rules.with_label_values(&[l.as_str(), "miss"]),
                    ]
                })
                .collect(),
            labels,
        }
    }

    /// The `strata_rate_limited_total` counter of limit `name` (created,
    /// and so exported at zero, by this call).
    pub fn rate_limited(&self, name: &str) -> IntCounter {
        self.inner.rate_limited.with_label_values(&[name])
    }

    /// A configuration reload was applied (`ok`) or refused.
    pub fn reload(&self, ok: bool) {
        self.inner
            .reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Counts by rule glob, hashing the labels each time; the request path
    /// uses [`RuleCounters`].
    pub fn rule(&self, rule: &str, hit: bool) {
        self.inner
            .rule_requests
            .with_label_values(&[rule, if hit { "hit" } else { "miss" }])
            .inc();
    }

    /// Exports `server`'s per-server series at zero before its first
    /// request: requests (`status="200"`), each error kind, the duration
    /// histogram.
    pub fn upstream_known(&self, server: &str) {
        let i = &self.inner;
        i.upstream_requests.with_label_values(&[server, "200"]);
        for kind in UPSTREAM_ERROR_KINDS {
            i.upstream_errors.with_label_values(&[server, kind]);
        }
        i.upstream_duration.with_label_values(&[server]);
    }

    pub fn upstream_healthy(&self, server: &str, healthy: bool) {
        self.inner
            .upstream_healthy
            .with_label_values(&[server])
            .set(i64::from(healthy));
    }

    /// `strata_upstream_draining`: 1 while `server` is drained. With
    /// `strata_upstream_healthy`, says whether it is in rotation (the
    /// shipped `StrataAllUpstreamsDown` rule).
    pub fn upstream_draining(&self, server: &str, draining: bool) {
        self.inner
            .upstream_draining
            .with_label_values(&[server])
            .set(i64::from(draining));
    }

    /// `server` left the configuration (a reload): its health and drain
    /// gauges go, so that alerts on `strata_upstream_healthy` (all down,
    /// say) see only the servers configured. Its counters stay, as
    /// Prometheus expects.
    pub fn upstream_removed(&self, server: &str) {
        let _ = self.inner.upstream_healthy.remove_label_values(&[server]);
        let _ = self.inner.upstream_draining.remove_label_values(&[server]);
    }

    /// The series of upstream server `server` (`host:port`).
    pub fn server_series(&self, server: &str) -> ServerSeries {
        ServerSeries {
            metrics: self.clone(),
            server: server.to_string(),
            by_status: Default::default(),
            duration: std::sync::OnceLock::new(),
        }
    }

    pub fn upstream_response(&self, server: &str, status: u16, elapsed: Duration) {
        self.server_series(server).response(status, elapsed);
    }

    pub fn upstream_error(&self, server: &str, kind: &str, elapsed: Duration) {
        self.server_series(server).error(kind, elapsed);
    }

    pub fn cache_size(&self, tier: &str, bytes: u64, entries: u64) {
        let i = &self.inner;
        i.cache_bytes
            .with_label_values(&[tier])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        i.cache_entries
            .with_label_values(&[tier])
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn redis_error(&self) {
        self.inner.redis_errors.inc();
    }

    pub fn redis_breaker(&self, open: bool) {
        self.inner.redis_breaker_open.set(i64::from(open));
    }

    pub fn redis_dropped_write(&self) {
        self.inner.redis_dropped_writes.inc();
    }

    pub fn redis_breaker_opened(&self) {
        self.inner.redis_breaker_opens.inc();
    }

    pub fn collapsed(&self) {
        self.inner.collapsed.inc();
    }

    /// A lookup answered by another request's Redis read of its URL.
    pub fn redis_coalesced(&self) {
        self.inner.redis_coalesced.inc();
    }

    /// An admission left something out for lack of memory.
    pub fn shed(&self, what: Shed) {
        self.inner.shed[what as usize].inc();
    }

    /// Entries purged (or soft-purged) for `cause`.
    pub fn purged(&self, cause: PurgeCause, n: u64) {
        self.inner.purged[cause as usize].inc_by(n);
    }

    /// One warming request (or `redis_hot` entry) and how it ended.
    pub fn warm_request(&self, source: &str, result: &str) {
        self.inner
            .warm_requests
            .with_label_values(&[source, result])
            .inc();
    }

    /// One alert's fate (`sent`, `failed`, `dropped`).
    pub fn alert(&self, event: &str, result: &str) {
        self.inner.alerts.with_label_values(&[event, result]).inc();
    }

    /// Exports `strata_alerts_total` at zero for every event and result,
    /// so dashboards and rules see the series before the first alert.
    pub fn alerts_init<'a>(&self, events: impl Iterator<Item = &'a str>) {
        for e in events {
            for result in ["sent", "failed", "dropped"] {
                self.inner.alerts.with_label_values(&[e, result]);
            }
        }
    }

    /// Sums of `strata_requests_total` by outcome, and of 5xx statuses
    /// (for the alert watcher; walks every series, so not for the
    /// request path).
    pub fn request_totals(&self) -> RequestTotals {
        use prometheus::core::Collector;
        let mut t = RequestTotals::default();
        for family in self.inner.requests.collect() {
            for m in family.get_metric() {
                let n = m.get_counter().get_value() as u64;
                let mut outcome = None;
                let mut server_error = false;
                for l in m.get_label() {
                    match l.name() {
                        "outcome" => {
                            outcome = Outcome::ALL.iter().position(|o| o.as_str() == l.value())
                        }
                        "status" => server_error = l.value().starts_with('5'),
                        _ => {}
                    }
                }
                if let Some(i) = outcome {
                    t.by_outcome[i] += n;
                }
                if server_error {
                    t.server_errors += n;
                }
            }
        }
        t
    }

    /// Reports the connections open on a listener (`"proxy"` or
    /// `"admin"`) as `strata_client_connections`: `size` permits of
    /// `limit`, one held per open connection, read at each scrape.
    pub fn watch_connections(
        &self,
        listener: &'static str,
        limit: std::sync::Weak<tokio::sync::Semaphore>,
        size: usize,
    ) {
        self.inner.connections.watch(listener, limit, size);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut buf)?;
        let mut text = String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        // A family with no series is left out by the encoder: said anyway.
        for (name, help) in [families::RULE_REQUESTS, families::RATE_LIMITED] {
            if !text.contains(&format!("# TYPE {name} ")) {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            }
        }
        Ok(text)
    }

    /// The same figures for JSON (`GET /stats`; shape in `metrics/stats.rs`).
    pub fn stats(&self) -> Stats {
        Stats::of(&self.inner.registry.gather())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    /// `process_cpu_seconds_total` follows the process's CPU time to the
    /// clock tick: after 60 ms of CPU it has moved by about that much, not
    /// by a whole second or nothing (the crate's integer counter).
    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_seconds_are_not_whole_seconds() {
        let m = Metrics::new();
        let cpu = || sample::process().expect("/proc/self").cpu_seconds;
        let exported = |m: &Metrics| -> f64 {
            m.render()
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
                .expect("exported")
                .parse()
                .unwrap()
        };
        let before = exported(&m);
        let start = cpu();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu() < start + 0.06 && std::time::Instant::now() < deadline {
            for i in 0..200_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let after = exported(&m);
        assert!(after <= cpu() + 1e-9, "{after}");
        assert!(after - before >= 0.04, "{before} -> {after}");
        assert!(after - before < 1.0, "{before} -> {after}");
    }

    #[test]
    fn registers_and_renders() {
        let m = Metrics::new();
        m.request(Outcome::Hit, 200, Duration::from_micros(80));
        m.request(Outcome::Miss, 599, Duration::from_millis(3));
        m.hit("memory");
        m.hit("redis");
        m.request_class(MethodClass::of(&Method::GET), 200);
        m.request_class(MethodClass::of(&Method::from_bytes(b"PURGE").unwrap()), 404);
        m.request_class(MethodClass::Post, 799);
        let rules = m.rule_counters(vec!["/a/**".into(), "/b".into()]);
        rules.hit(0);
        rules.miss(1);
        rules.miss(7); // out of range: ignored
        m.upstream_healthy("127.0.0.1:1", true);
        let text = m.render().unwrap();
        // Listed without a series too (SPEC §9: the dashboard names it).
        assert!(!text.contains("strata_rate_limited_total{"));
        assert!(text.contains("# TYPE strata_rate_limited_total counter\n"));
        assert!(text.contains("strata_cache_hits_total{tier=\"redis\"} 1"));
        assert!(text.contains(
            "strata_requests_by_class_total{method_class=\"GET\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "strata_requests_by_class_total{method_class=\"OTHER\",status_class=\"4xx\"} 1"
        ));
        assert!(text.contains(
            "strata_requests_by_class_total{method_class=\"POST\",status_class=\"other\"} 1"
        ));
        assert!(text.contains("strata_rule_requests_total{result=\"hit\",rule=\"/a/**\"} 1"));
        assert!(text.contains("strata_rule_requests_total{result=\"miss\",rule=\"/b\"} 1"));
        assert!(text.contains("strata_requests_total{outcome=\"hit\",status=\"200\"} 1"));
        assert!(text.contains("strata_requests_total{outcome=\"miss\",status=\"599\"} 1"));
        assert!(text.contains("strata_cache_hits_total{tier=\"memory\"} 1"));
        let json = serde_json::to_value(m.stats()).unwrap();
        assert!(json["strata_request_duration_seconds"].is_array());
    }
}

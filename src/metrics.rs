//! Prometheus metrics (`GET /metrics`) and their JSON twin (`GET /stats`).
//!
//! Label combinations used on every request are resolved once at start-up
//! (per-rule ones when the rules are loaded), so recording a hit is a few
//! atomic adds: no label hashing, no lock. The metric list, with types and
//! labels, is in the README ("Metrics").

mod labels;
mod sample;

use std::sync::Arc;
use std::time::Duration;

use labels::STATUS_CLASSES;
pub use labels::{MethodClass, Outcome};
pub use sample::{Buckets, ProcessSample, Sample, UpstreamSample};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Per-rule hit and miss counters (`strata_rule_requests_total`), resolved
/// when the rules are loaded (start-up and reload) so that counting a
/// request is one atomic add. Index = the rule's position in the file.
#[derive(Clone, Default)]
pub struct RuleCounters {
    /// `[hit, miss]` per rule.
    by_rule: Vec<[IntCounter; 2]>,
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

/// Why entries were purged: the `cause` label of `strata_purged_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeCause {
    /// `POST /purge`.
    Api = 0,
    /// A successful unsafe method (RFC 9111 §4.4).
    UnsafeMethod = 1,
    /// An `[[invalidation.cascade]]` set off by either of the above.
    Cascade = 2,
}

impl PurgeCause {
    pub const ALL: [PurgeCause; 3] = [
        PurgeCause::Api,
        PurgeCause::UnsafeMethod,
        PurgeCause::Cascade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PurgeCause::Api => "api",
            PurgeCause::UnsafeMethod => "unsafe_method",
            PurgeCause::Cascade => "cascade",
        }
    }
}

/// Cheap-clone handle to every metric.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    requests_fast: Vec<Vec<IntCounter>>,
    duration_fast: Vec<prometheus::Histogram>,
    /// `[method_class][status_class]`.
    by_class: IntCounterVec,
    by_class_fast: Vec<Vec<IntCounter>>,
    hits: IntCounterVec,
    /// `memory`, `redis`.
    hits_fast: [IntCounter; 2],
    upstream_healthy: IntGaugeVec,
    upstream_requests: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_duration: HistogramVec,
    cache_bytes: IntGaugeVec,
    cache_entries: IntGaugeVec,
    redis_errors: IntCounter,
    redis_breaker_open: IntGauge,
    redis_dropped_writes: IntCounter,
    redis_breaker_opens: IntCounter,
    collapsed: IntCounter,
    /// `[api, unsafe_method, cascade]`.
    purged: [IntCounter; 3],
    /// `strata_warm_requests_total{source,result}`.
    warm_requests: IntCounterVec,
    rule_requests: IntCounterVec,
    reloads: IntCounterVec,
    rate_limited: IntCounterVec,
    /// `strata_response_bytes_total`, one counter per [`Outcome`].
    response_bytes_fast: Vec<IntCounter>,
    alerts: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    register(r, Box::new(c.clone()));
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g =
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    register(r, Box::new(g.clone()));
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    register(r, Box::new(c.clone()));
    c
}

fn register(r: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Names are fixed in this file; a clash is a programming error caught
    // by the unit test below, never a runtime condition.
    if let Err(e) = r.register(c) {
        panic!("metric registration: {e}");
    }
}

/// Latency buckets from 50 µs (a memory hit) to 30 s (a slow upstream).
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0, 30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "strata_requests_total",
            "Client requests by cache outcome and response status.",
            &["outcome", "status"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "strata_request_duration_seconds",
                "Time from request head to response head, by cache outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        register(&r, Box::new(duration.clone()));
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "strata_upstream_duration_seconds",
                "Time to the upstream's response head, by server.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["server"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        register(&r, Box::new(upstream_duration.clone()));
        let requests_fast = Outcome::ALL
            .iter()
            .map(|o| {
                COMMON_STATUS
                    .iter()
                    .map(|s| requests.with_label_values(&[o.as_str(), &s.to_string()]))
                    .collect()
            })
            .collect();
        let duration_fast = Outcome::ALL
            .iter()
            .map(|o| duration.with_label_values(&[o.as_str()]))
            .collect();
        let by_class = counter_vec(
            &r,
            "strata_requests_by_class_total",
            "Client requests by method (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, OTHER) and status class (1xx-5xx).",
            &["method_class", "status_class"],
        );
        let by_class_fast = MethodClass::ALL
            .iter()
            .map(|m| {
                STATUS_CLASSES
                    .iter()
                    .map(|s| by_class.with_label_values(&[m.as_str(), s]))
                    .collect()
            })
            .collect();
        let hits = counter_vec(
            &r,
            "strata_cache_hits_total",
            "Cache hits by tier.",
            &["tier"],
        );
        let hits_fast = [
            hits.with_label_values(&["memory"]),
            hits.with_label_values(&["redis"]),
        ];
        let response_bytes = counter_vec(
            &r,
            "strata_response_bytes_total",
            "Response body bytes sent to clients, by cache outcome (from the stored size or Content-Length; see the README).",
            &["outcome"],
        );
        let response_bytes_fast = Outcome::ALL
            .iter()
            .map(|o| response_bytes.with_label_values(&[o.as_str()]))
            .collect();
        gauge_vec(
            &r,
            "strata_build_info",
            "Always 1; the label carries the running version.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, ... (the standard names; Linux only).
        #[cfg(target_os = "linux")]
        register(
            &r,
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        );
        let inner = Inner {
            response_bytes_fast,
            requests,
            requests_fast,
            duration_fast,
            by_class,
            by_class_fast,
            hits,
            hits_fast,
            upstream_healthy: gauge_vec(
                &r,
                "strata_upstream_healthy",
                "1 when the upstream server is in rotation.",
                &["server"],
            ),
            upstream_requests: counter_vec(
                &r,
                "strata_upstream_requests_total",
                "Upstream responses by server and status.",
                &["server", "status"],
            ),
            upstream_errors: counter_vec(
                &r,
                "strata_upstream_errors_total",
                "Upstream exchanges that failed, by server and kind (connect, timeout, protocol).",
                &["server", "kind"],
            ),
            upstream_duration,
            cache_bytes: gauge_vec(&r, "strata_cache_bytes", "Bytes held, by tier.", &["tier"]),
            cache_entries: gauge_vec(
                &r,
                "strata_cache_entries",
                "Entries held, by tier.",
                &["tier"],
            ),
            redis_errors: counter(&r, "strata_redis_errors_total", "Failed Redis operations."),
            redis_breaker_open: {
                let g = IntGauge::new(
                    "strata_redis_breaker_open",
                    "1 while the Redis circuit breaker is open (Redis skipped).",
                )
                .unwrap_or_else(|e| panic!("gauge: {e}"));
                register(&r, Box::new(g.clone()));
                g
            },
            redis_dropped_writes: counter(
                &r,
                "strata_redis_dropped_writes_total",
                "Redis writes dropped because the write queue was full.",
            ),
            redis_breaker_opens: counter(
                &r,
                "strata_redis_breaker_opens_total",
                "Times the Redis circuit breaker opened.",
            ),
            collapsed: counter(
                &r,
                "strata_collapsed_total",
                "Requests answered from another request's upstream fetch.",
            ),
            purged: {
                let purged = counter_vec(
                    &r,
                    "strata_purged_total",
                    "Cache entries removed (or marked stale by a soft purge), by cause: api (POST /purge), unsafe_method (RFC 9111 4.4), cascade ([[invalidation.cascade]]).",
                    &["cause"],
                );
                PurgeCause::ALL.map(|c| purged.with_label_values(&[c.as_str()]))
            },
            warm_requests: {
                let warm = counter_vec(
                    &r,
                    "strata_warm_requests_total",
                    "Cache warming items by source (urls_file, sitemap, redis_hot) and result (stored, hit, uncached, error).",
                    &["source", "result"],
                );
                // Exported at zero from the start, like every family.
                for source in ["urls_file", "sitemap", "redis_hot"] {
                    for result in ["stored", "hit", "uncached", "error"] {
                        warm.with_label_values(&[source, result]);
                    }
                }
                warm
            },
            rule_requests: counter_vec(
                &r,
                "strata_rule_requests_total",
                "Requests the cache handled, by matching rule (its glob) and result (hit or miss).",
                &["rule", "result"],
            ),
            reloads: {
                let reloads = counter_vec(
                    &r,
                    "strata_config_reloads_total",
                    "SIGHUP reloads by result (ok, or error: the old configuration kept serving).",
                    &["result"],
                );
                // Exported at zero from the start, like every family.
                for result in ["ok", "error"] {
                    reloads.with_label_values(&[result]);
                }
                reloads
            },
            rate_limited: counter_vec(
                &r,
                "strata_rate_limited_total",
                "Requests over a rate limit (answered 429, or only counted under dry_run), by limit name.",
                &["name"],
            ),
            alerts: counter_vec(
                &r,
                "strata_alerts_total",
                "Webhook alerts by event and result: sent, failed (every try failed; dropped) or dropped (queue full).",
                &["event", "result"],
            ),
            registry: r,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// One finished client request.
    pub fn request(&self, outcome: Outcome, status: u16, elapsed: Duration) {
        let i = &self.inner;
        match COMMON_STATUS.iter().position(|&s| s == status) {
            Some(p) => i.requests_fast[outcome.index()][p].inc(),
            None => i
                .requests
                .with_label_values(&[outcome.as_str(), itoa::Buffer::new().format(status)])
                .inc(),
        }
        i.duration_fast[outcome.index()].observe(elapsed.as_secs_f64());
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

    /// Resolves the per-rule counters for `patterns` (the rules' globs, in
    /// order).
    pub fn rule_counters<'a>(&self, patterns: impl Iterator<Item = &'a str>) -> RuleCounters {
        let rules = &self.inner.rule_requests;
        RuleCounters {
            by_rule: patterns
                .map(|p| {
                    [
                        rules.with_label_values(&[p, "hit"]),
                        rules.with_label_values(&[p, "miss"]),
                    ]
                })
                .collect(),
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

    /// Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// The same figures as JSON: `{metric: [{labels..., value | buckets}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        use prometheus::proto::MetricType;
        let mut out = serde_json::Map::new();
        for family in self.inner.registry.gather() {
            let mut series = Vec::new();
            for m in family.get_metric() {
                let mut obj = serde_json::Map::new();
                for l in m.get_label() {
                    obj.insert(l.name().to_string(), l.value().into());
                }
                match family.get_field_type() {
                    MetricType::COUNTER => {
                        obj.insert("value".into(), m.get_counter().get_value().into());
                    }
                    MetricType::GAUGE => {
                        obj.insert("value".into(), m.get_gauge().get_value().into());
                    }
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        obj.insert("count".into(), h.get_sample_count().into());
                        obj.insert("sum".into(), h.get_sample_sum().into());
                        let buckets: serde_json::Map<String, serde_json::Value> = h
                            .get_bucket()
                            .iter()
                            .map(|b| (b.upper_bound().to_string(), b.cumulative_count().into()))
                            .collect();
                        obj.insert("buckets".into(), buckets.into());
                    }
                    _ => continue,
                }
                series.push(serde_json::Value::Object(obj));
            }
            out.insert(family.name().to_string(), series.into());
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

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
        let rules = m.rule_counters(["/a/**", "/b"].into_iter());
        rules.hit(0);
        rules.miss(1);
        rules.miss(7); // out of range: ignored
        m.upstream_healthy("127.0.0.1:1", true);
        let text = m.render().unwrap();
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
        let json = m.to_json();
        assert!(json["strata_request_duration_seconds"].is_array());
    }
}

//! The metric families behind [`super::Metrics`]: their names, help
//! texts, label sets and buckets, registered once, with the label
//! combinations every request uses resolved up front.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::connections::Connections;
use super::labels::STATUS_CLASSES;
use super::{MethodClass, Outcome, PurgeCause, Shed, COMMON_STATUS};

/// Counter families whose series exist only with the config that makes
/// them (`[[rules]]`, `[[rate_limits]]`): name and help. Without one they
/// are still exported, with no sample, so that every metric the shipped
/// dashboard and rules name exists (SPEC §9).
pub(super) const RULE_REQUESTS: (&str, &str) = (
    "strata_rule_requests_total",
    "Requests the cache handled, by the rule that applied (its glob, or <glob> #<index> for a repeated glob) and result (hit or miss).",
);
pub(super) const RATE_LIMITED: (&str, &str) = (
    "strata_rate_limited_total",
    "Requests over a rate limit (answered 429, or only counted under dry_run), by limit name.",
);

pub(super) struct Inner {
    pub(super) registry: Registry,
    pub(super) requests: IntCounterVec,
    pub(super) requests_fast: Vec<Vec<IntCounter>>,
    pub(super) duration_fast: Vec<prometheus::Histogram>,
    /// `[method_class][status_class]`.
    pub(super) by_class: IntCounterVec,
    pub(super) by_class_fast: Vec<Vec<IntCounter>>,
    pub(super) hits: IntCounterVec,
    /// `memory`, `redis`.
    pub(super) hits_fast: [IntCounter; 2],
    pub(super) upstream_healthy: IntGaugeVec,
    pub(super) upstream_draining: IntGaugeVec,
    pub(super) upstream_requests: IntCounterVec,
    pub(super) upstream_errors: IntCounterVec,
    pub(super) upstream_duration: HistogramVec,
    pub(super) cache_bytes: IntGaugeVec,
    pub(super) cache_entries: IntGaugeVec,
    pub(super) redis_errors: IntCounter,
    pub(super) redis_breaker_open: IntGauge,
    pub(super) redis_dropped_writes: IntCounter,
    pub(super) redis_breaker_opens: IntCounter,
    pub(super) collapsed: IntCounter,
    pub(super) redis_coalesced: IntCounter,
    /// `[busy, encoding_backlog, brotli_memory]`.
    pub(super) shed: [IntCounter; 3],
    /// `[api, unsafe_method, cascade]`.
    pub(super) purged: [IntCounter; 3],
    /// `strata_warm_requests_total{source,result}`.
    pub(super) warm_requests: IntCounterVec,
    pub(super) rule_requests: IntCounterVec,
    pub(super) reloads: IntCounterVec,
    pub(super) rate_limited: IntCounterVec,
    /// `strata_response_bytes_total`, one counter per [`Outcome`].
    pub(super) response_bytes_fast: Vec<IntCounter>,
    pub(super) alerts: IntCounterVec,
    pub(super) connections: Connections,
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

/// The standard `process_*` families of the prometheus crate's process
/// collector, but `process_cpu_seconds_total` to the clock tick (10 ms)
/// rather than in the whole seconds its integer counter keeps (a
/// `rate()` over it was a staircase). Wrapped, not rewritten: the crate
/// keeps the other families (memory, fds, start time).
#[cfg(target_os = "linux")]
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

#[cfg(target_os = "linux")]
impl ProcessMetrics {
    fn new() -> ProcessMetrics {
        ProcessMetrics(prometheus::process_collector::ProcessCollector::for_self())
    }
}

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        if let Some(seconds) = super::sample::cpu_seconds() {
            for family in &mut families {
                if family.name() == "process_cpu_seconds_total" {
                    for metric in family.mut_metric() {
                        let mut counter = prometheus::proto::Counter::default();
                        counter.set_value(seconds);
                        metric.set_counter(counter);
                    }
                }
            }
        }
        families
    }
}

/// Latency buckets from 50 µs (a memory hit) to 30 s (a slow upstream).
pub(super) const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0, 30.0,
];

impl Inner {
    pub(super) fn new() -> Inner {
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
        register(&r, Box::new(ProcessMetrics::new()));
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
            "1 while the upstream server passes its health checks (drained or not).",
            &["server"],
        ),
        upstream_draining: gauge_vec(
            &r,
            "strata_upstream_draining",
            "1 while the upstream server is drained (POST /upstreams/drain): no new requests.",
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
        redis_coalesced: counter(
            &r,
            "strata_redis_coalesced_total",
            "Lookups answered by another request's Redis read of the same URL.",
        ),
        shed: {
            let shed = counter_vec(
                &r,
                "strata_admission_shed_total",
                "What admissions left out for lack of memory, by reason: busy (a storable response streamed without being stored: the collecting budget was full), encoding_backlog (stored without encoded representations), brotli_memory (stored without br).",
                &["reason"],
            );
            Shed::ALL.map(|w| shed.with_label_values(&[w.as_str()]))
        },
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
        rule_requests: counter_vec(&r, RULE_REQUESTS.0, RULE_REQUESTS.1, &["rule", "result"]),
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
        rate_limited: counter_vec(&r, RATE_LIMITED.0, RATE_LIMITED.1, &["name"]),
        alerts: counter_vec(
            &r,
            "strata_alerts_total",
            "Webhook alerts by event and result: sent, failed (every try failed; dropped) or dropped (queue full).",
            &["event", "result"],
        ),
        connections: {
            let c = Connections::new();
            register(&r, Box::new(c.clone()));
            c
        },
        registry: r,
    };
        inner
    }
}

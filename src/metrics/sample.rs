//! The read side of the metrics for the dashboard: [`Metrics::sample`]
//! reads every cumulative figure the live snapshot needs at one instant.
//! Called once a second by the `/events` producer (never per request, never
//! per subscriber); the differences between two samples give rates,
//! ratios and windowed latency quantiles.

use std::collections::BTreeMap;

use prometheus::core::{Collector, Metric};
use prometheus::IntCounterVec;

use super::families::LATENCY_BUCKETS;
use super::{Metrics, Outcome, RuleCounters};

/// Cumulative bucket counts of a latency histogram: `counts[i]` requests
/// took at most `LATENCY_BUCKETS[i]` seconds; the last entry is the total
/// (`+Inf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub counts: Vec<u64>,
}

impl Buckets {
    /// `self - earlier`, bucket by bucket (saturating: counters only grow).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The `q`-quantile (0..1) in seconds, interpolated linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does; `None` without
    /// observations. A quantile in the `+Inf` bucket is reported as the
    /// largest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = *self.counts.last()?;
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut lower_bound = 0.0;
        let mut lower_count = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                return LATENCY_BUCKETS.last().copied();
            };
            if count as f64 >= rank && count > lower_count {
                let within = (rank - lower_count as f64) / (count - lower_count) as f64;
                return Some(lower_bound + (upper - lower_bound) * within.clamp(0.0, 1.0));
            }
            lower_bound = upper;
            lower_count = count;
        }
        LATENCY_BUCKETS.last().copied()
    }
}

/// One upstream server's cumulative traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamSample {
    /// Responses received, any status.
    pub responses: u64,
    /// Responses with a 5xx status.
    pub responses_5xx: u64,
    /// Failed exchanges (connect, timeout, protocol).
    pub errors: u64,
}

/// CPU, memory and file descriptors of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub open_fds: f64,
}

/// Every cumulative figure of the dashboard, read at one instant.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Client requests by [`Outcome`] (index = `Outcome as usize`).
    pub requests: [u64; 6],
    /// Response body bytes by [`Outcome`].
    pub bytes: [u64; 6],
    /// Cache hits by tier: `[memory, redis]`.
    pub tier_hits: [u64; 2],
    /// Latency of fresh hits and of misses.
    pub hit_latency: Buckets,
    pub miss_latency: Buckets,
    /// By server authority.
    pub upstreams: BTreeMap<String, UpstreamSample>,
    /// Memory tier size, as last exported: `(bytes, entries)`.
    pub memory: (u64, u64),
    /// `None` where process figures are unavailable (not Linux).
    pub process: Option<ProcessSample>,
}

impl Metrics {
    /// Reads the dashboard's figures (a few hundred atomic loads, and the
    /// process figures from `/proc`: well under a millisecond).
    pub fn sample(&self) -> Sample {
        let i = &self.inner;
        let by_outcome = sum_by(&i.requests, "outcome", |_| true);
        let hits = |tier: &str| i.hits.with_label_values(&[tier]).get();
        let mut upstreams: BTreeMap<String, UpstreamSample> = BTreeMap::new();
        for (server, n) in sum_by(&i.upstream_requests, "server", |_| true) {
            upstreams.entry(server).or_default().responses = n;
        }
        for (server, n) in sum_by(&i.upstream_requests, "server", |m| {
            label(m, "status").is_some_and(|s| s.starts_with('5'))
        }) {
            upstreams.entry(server).or_default().responses_5xx = n;
        }
        for (server, n) in sum_by(&i.upstream_errors, "server", |_| true) {
            upstreams.entry(server).or_default().errors = n;
        }
        let gauge = |g: &prometheus::IntGaugeVec| {
            u64::try_from(g.with_label_values(&["memory"]).get()).unwrap_or(0)
        };
        Sample {
            requests: Outcome::ALL.map(|o| by_outcome.get(o.as_str()).copied().unwrap_or(0)),
            bytes: Outcome::ALL.map(|o| i.response_bytes_fast[o.index()].get()),
            tier_hits: [hits("memory"), hits("redis")],
            hit_latency: buckets(&i.duration_fast[Outcome::Hit.index()]),
            miss_latency: buckets(&i.duration_fast[Outcome::Miss.index()]),
            upstreams,
            memory: (gauge(&i.cache_bytes), gauge(&i.cache_entries)),
            process: process(),
        }
    }
}

/// This process's CPU time, resident memory and open fds from
/// `/proc/self` (the `procfs` crate). Also what the exported
/// `process_cpu_seconds_total` reports (see `families.rs`): the crate's
/// own CPU counter has whole-second steps, too coarse for a per-second
/// figure.
#[cfg(target_os = "linux")]
pub(super) fn process() -> Option<ProcessSample> {
    use procfs::WithCurrentSystemInfo as _;
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    Some(ProcessSample {
        cpu_seconds: cpu_of(&stat),
        resident_bytes: stat.rss_bytes().get() as f64,
        open_fds: me.fd_count().map_or(0.0, |n| n as f64),
    })
}

#[cfg(not(target_os = "linux"))]
pub(super) fn process() -> Option<ProcessSample> {
    None
}

/// This process's CPU time (user + system), in seconds to the clock tick:
/// `/proc/self/stat` only (for `process_cpu_seconds_total`).
#[cfg(target_os = "linux")]
pub(super) fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some(cpu_of(&stat))
}

#[cfg(target_os = "linux")]
fn cpu_of(stat: &procfs::process::Stat) -> f64 {
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

impl RuleCounters {
    /// `(label, (hits, misses))` per rule, in rule order.
    pub fn counts(&self) -> Vec<(String, (u64, u64))> {
        self.labels
            .iter()
            .zip(&self.by_rule)
            .map(|(label, [hit, miss])| (label.clone(), (hit.get(), miss.get())))
            .collect()
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

/// Sums a counter family by one label over the series `keep` accepts.
fn sum_by(
    vec: &IntCounterVec,
    by: &str,
    keep: impl Fn(&prometheus::proto::Metric) -> bool,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for family in vec.collect() {
        for m in family.get_metric().iter().filter(|m| keep(m)) {
            if let Some(key) = label(m, by) {
                *out.entry(key.to_string()).or_insert(0) += m.get_counter().get_value() as u64;
            }
        }
    }
    out
}

fn buckets(h: &prometheus::Histogram) -> Buckets {
    let proto = h.metric();
    let hist = proto.get_histogram();
    let mut counts: Vec<u64> = hist
        .get_bucket()
        .iter()
        .map(|b| b.cumulative_count())
        .collect();
    counts.push(hist.get_sample_count());
    Buckets { counts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let m = Metrics::new();
        let empty = m.sample();
        assert_eq!(empty.hit_latency.quantile(0.5), None);
        for _ in 0..99 {
            // In the (50 µs, 100 µs] bucket.
            m.request(Outcome::Hit, 200, Duration::from_micros(80));
        }
        m.request(Outcome::Hit, 200, Duration::from_millis(40));
        m.request(Outcome::Miss, 200, Duration::from_secs(60));
        m.response_bytes(Outcome::Hit, 1000);
        let s = m.sample();
        assert_eq!(s.requests[Outcome::Hit.index()], 100);
        assert_eq!(s.bytes[Outcome::Hit.index()], 1000);
        let window = s.hit_latency.since(&empty.hit_latency);
        let p50 = window.quantile(0.5).unwrap();
        assert!((0.00005..=0.0001).contains(&p50), "{p50}");
        let p99 = window.quantile(0.99).unwrap();
        assert!((0.00005..=0.0001).contains(&p99), "{p99}");
        let p100 = window.quantile(1.0).unwrap();
        assert!((0.025..=0.05).contains(&p100), "{p100}");
        // Beyond the last finite bucket: reported as 30 s.
        assert_eq!(s.miss_latency.quantile(0.5), Some(30.0));
    }

    #[test]
    fn upstreams_are_summed_by_server() {
        let m = Metrics::new();
        m.upstream_known("a:1");
        m.upstream_response("a:1", 200, Duration::ZERO);
        m.upstream_response("a:1", 503, Duration::ZERO);
        m.upstream_error("a:1", "connect", Duration::ZERO);
        let s = m.sample();
        assert_eq!(
            s.upstreams["a:1"],
            UpstreamSample {
                responses: 2,
                responses_5xx: 1,
                errors: 1
            }
        );
        #[cfg(target_os = "linux")]
        assert!(s.process.unwrap().resident_bytes > 0.0);
    }
}

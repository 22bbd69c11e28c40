//! The live snapshot behind `/events` and the dashboard: one JSON object
//! built from the last [`WINDOW`] of metric samples, the upstreams' and
//! Redis tier's state and the recent activity. Its shape is documented in
//! the README ("Watching Strata" → `/events`).
//!
//! The hit ratio is the README's one formula:
//! `(hit + stale) / (hit + stale + revalidated + miss)` — requests answered
//! from the cache without going upstream, over requests the cache handled
//! (bypassed requests and Strata's own errors are not the cache's to
//! answer). The byte hit ratio is the same over response body bytes.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::metrics::{Buckets, Outcome, Sample};
use crate::proxy::Shared;

/// Ratios and latency quantiles cover this much of the recent past (rates
/// per second cover the last second).
pub const WINDOW: Duration = Duration::from_secs(10);

/// Recent-activity entries per snapshot (newest first).
pub const ACTIVITY: usize = 20;

/// The outcomes served from the cache without going upstream.
const SERVED_FROM_CACHE: [Outcome; 2] = [Outcome::Hit, Outcome::Stale];
/// The outcomes the cache handled (the hit ratio's denominator).
const CACHE_HANDLED: [Outcome; 4] = [
    Outcome::Hit,
    Outcome::Stale,
    Outcome::Revalidated,
    Outcome::Miss,
];

/// A timed metric sample, with the per-rule counts of the rules then in
/// force (by `rule` label: the glob, `"<glob> #<index>"` for a repeated
/// one).
struct Point {
    at: Instant,
    sample: Sample,
    rules: Vec<(String, (u64, u64))>,
}

/// The samples of the last [`WINDOW`]; owned by the one producer task.
#[derive(Default)]
pub struct Window {
    points: VecDeque<Point>,
}

impl Window {
    pub fn new() -> Window {
        Window::default()
    }

    /// Samples now and builds the snapshot.
    pub fn snapshot(&mut self, shared: &Shared) -> Value {
        let now = Instant::now();
        shared.cache.export_sizes();
        let runtime = shared.runtime.load();
        let point = Point {
            at: now,
            sample: shared.metrics.sample(),
            rules: runtime.rule_counters.counts(),
        };
        while self
            .points
            .front()
            .is_some_and(|p| now.duration_since(p.at) > WINDOW + Duration::from_millis(500))
        {
            self.points.pop_front();
        }
        let previous = self.points.back();
        // The window starts at the oldest kept sample; the first snapshot
        // has none, so its window is empty (from now to now): its ratios
        // and quantiles are `null`, not the totals since start.
        let oldest = self.points.front().unwrap_or(&point);
        let cur = &point.sample;

        let per_s = |f: &dyn Fn(&Sample) -> u64| -> Value {
            match previous {
                Some(p) => rate(f(cur), f(&p.sample), now.duration_since(p.at)),
                None => Value::Null,
            }
        };
        let over_window =
            |f: &dyn Fn(&Sample) -> u64| -> u64 { f(cur).saturating_sub(f(&oldest.sample)) };
        let sum = |xs: &[u64; 6], outcomes: &[Outcome]| -> u64 {
            outcomes.iter().map(|o| xs[*o as usize]).sum()
        };
        let handled = over_window(&|s| sum(&s.requests, &CACHE_HANDLED));
        let from_cache = over_window(&|s| sum(&s.requests, &SERVED_FROM_CACHE));
        let handled_bytes = over_window(&|s| sum(&s.bytes, &CACHE_HANDLED));
        let cache_bytes = over_window(&|s| sum(&s.bytes, &SERVED_FROM_CACHE));

        let mut outcomes = Map::new();
        for o in Outcome::ALL {
            let i = o as usize;
            outcomes.insert(
                o.as_str().into(),
                json!({
                    "requests": cur.requests[i],
                    "bytes": cur.bytes[i],
                    "per_s": per_s(&|s| s.requests[i]),
                }),
            );
        }
        let tier = |i: usize| {
            json!({
                "hits": cur.tier_hits[i],
                "ratio": ratio(over_window(&|s| s.tier_hits[i]), handled),
            })
        };
        let latency = |f: fn(&Sample) -> &Buckets| {
            let window = f(cur).since(f(&oldest.sample));
            let ms = |q| window.quantile(q).map(|s| s * 1000.0);
            json!({ "p50": ms(0.5), "p99": ms(0.99) })
        };
        let rules: Vec<Value> = point
            .rules
            .iter()
            .map(|(label, (hits, misses))| {
                let (h0, m0) = oldest
                    .rules
                    .iter()
                    .find(|(g, _)| g == label)
                    .map_or((0, 0), |(_, c)| *c);
                let (dh, dm) = (hits.saturating_sub(h0), misses.saturating_sub(m0));
                json!({
                    "rule": label,
                    "hits": hits,
                    "misses": misses,
                    "hit_ratio": ratio(dh, dh + dm),
                })
            })
            .collect();
        let upstreams: Vec<Value> = runtime
            .upstreams
            .balancer
            .servers()
            .iter()
            .map(|s| {
                let name = s.authority.as_str();
                let traffic = |smp: &Sample| smp.upstreams.get(name).copied().unwrap_or_default();
                let t = traffic(cur);
                json!({
                    "server": name,
                    "healthy": s.is_healthy(),
                    "draining": s.is_draining(),
                    "responses": t.responses,
                    "responses_5xx": t.responses_5xx,
                    "errors": t.errors,
                    "per_s": per_s(&|smp| traffic(smp).responses),
                    "errors_per_s": per_s(&|smp| traffic(smp).errors),
                })
            })
            .collect();
        let redis = shared
            .cache
            .redis_state()
            .map(|(connected, breaker_open)| {
                json!({ "connected": connected, "breaker_open": breaker_open })
            });
        let process = cur.process.map(|p| {
            let cpu = previous.and_then(|prev| {
                let was = prev.sample.process?.cpu_seconds;
                let secs = now.duration_since(prev.at).as_secs_f64();
                (secs > 0.0).then(|| ((p.cpu_seconds - was) / secs).max(0.0))
            });
            json!({
                "cpu_seconds": p.cpu_seconds,
                "cpu_cores": cpu,
                "resident_bytes": p.resident_bytes,
                "open_fds": p.open_fds,
            })
        });
        let activity: Vec<_> = shared
            .activity
            .recent()
            .into_iter()
            .take(ACTIVITY)
            .collect();
        let window_s = now.duration_since(oldest.at).as_secs_f64();
        let snapshot = json!({
            "at_ms": unix_ms(),
            "version": env!("CARGO_PKG_VERSION"),
            "window_s": window_s,
            "requests": sum(&cur.requests, &Outcome::ALL),
            "requests_per_s": per_s(&|s| sum(&s.requests, &Outcome::ALL)),
            "bytes_per_s": per_s(&|s| sum(&s.bytes, &Outcome::ALL)),
            "hit_ratio": ratio(from_cache, handled),
            "byte_hit_ratio": ratio(cache_bytes, handled_bytes),
            "outcomes": outcomes,
            "tiers": { "memory": tier(0), "redis": tier(1) },
            "latency_ms": {
                "hit": latency(|s| &s.hit_latency),
                "miss": latency(|s| &s.miss_latency),
            },
            "rules": rules,
            "upstreams": upstreams,
            "redis": redis,
            "memory": { "bytes": cur.memory.0, "entries": cur.memory.1 },
            "process": process,
            "activity": activity,
        });
        self.points.push_back(point);
        snapshot
    }
}

/// `part / whole`, or `null` when nothing was handled.
fn ratio(part: u64, whole: u64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        json!(part as f64 / whole as f64)
    }
}

/// Events per second between two readings of a counter.
fn rate(now: u64, before: u64, elapsed: Duration) -> Value {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return Value::Null;
    }
    json!(now.saturating_sub(before) as f64 / secs)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

//! `GET /stats`: the figures of `/metrics` as JSON, `{"metric": [series,
//! ...]}` (metrics by name), each series its labels plus `value`, or for
//! a histogram `count`, `sum` and `buckets`: `{"upper bound": cumulative
//! count}` in ascending numeric order, ending with `"+Inf"` (equal to
//! `count`), as Prometheus' text exposition lists them. A type of its own,
//! not a `serde_json::Value`: that map sorts its keys as strings (`"1"`,
//! `"30"`, `"5"`).

use std::collections::BTreeMap;

use prometheus::proto::{MetricFamily, MetricType};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Every metric family's series, by metric name.
#[derive(serde::Serialize)]
#[serde(transparent)]
pub struct Stats(BTreeMap<String, Vec<Series>>);

/// One labelled series.
#[derive(serde::Serialize)]
pub struct Series {
    #[serde(flatten)]
    labels: BTreeMap<String, String>,
    #[serde(flatten)]
    figure: Figure,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum Figure {
    /// A counter or a gauge.
    Value { value: f64 },
    /// `count` observations summing to `sum` (seconds for durations).
    Histogram {
        count: u64,
        sum: f64,
        buckets: Buckets,
    },
}

/// `(upper bound as Prometheus' `le` spells it, cumulative count)`, in
/// ascending order of bound; serialized as a JSON object in that order.
struct Buckets(Vec<(String, u64)>);

impl Serialize for Buckets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (bound, count) in &self.0 {
            map.serialize_entry(bound, count)?;
        }
        map.end()
    }
}

impl Stats {
    /// The series of `families` (as the registry gathers them). Types
    /// other than counters, gauges and histograms are left out.
    pub(super) fn of(families: &[MetricFamily]) -> Stats {
        let mut out = BTreeMap::new();
        for family in families {
            let series = family
                .get_metric()
                .iter()
                .filter_map(|m| {
                    let figure = match family.get_field_type() {
                        MetricType::COUNTER => Figure::Value {
                            value: m.get_counter().get_value(),
                        },
                        MetricType::GAUGE => Figure::Value {
                            value: m.get_gauge().get_value(),
                        },
                        MetricType::HISTOGRAM => {
                            let h = m.get_histogram();
                            Figure::Histogram {
                                count: h.get_sample_count(),
                                sum: h.get_sample_sum(),
                                buckets: buckets(h),
                            }
                        }
                        _ => return None,
                    };
                    let labels = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_string(), l.value().to_string()))
                        .collect();
                    Some(Series { labels, figure })
                })
                .collect();
            out.insert(family.name().to_string(), series);
        }
        Stats(out)
    }
}

/// The histogram's buckets by ascending bound, then `+Inf` holding every
/// observation (the registry keeps the finite bounds only, sorted).
fn buckets(h: &prometheus::proto::Histogram) -> Buckets {
    let mut finite: Vec<(f64, u64)> = h
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .filter(|(bound, _)| bound.is_finite())
        .collect();
    finite.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut list: Vec<(String, u64)> = finite
        .into_iter()
        .map(|(bound, count)| (bound.to_string(), count))
        .collect();
    list.push(("+Inf".to_string(), h.get_sample_count()));
    Buckets(list)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::families::LATENCY_BUCKETS;
    use crate::metrics::{Metrics, Outcome};

    /// `(key, value)` of each `"buckets"` object in `text`, in text order.
    fn bucket_lists(text: &str) -> Vec<Vec<(String, u64)>> {
        text.split("\"buckets\":{")
            .skip(1)
            .map(|rest| {
                let inner = &rest[..rest.find('}').unwrap()];
                inner
                    .split(',')
                    .map(|pair| {
                        let (k, v) = pair.rsplit_once(':').unwrap();
                        (k.trim_matches('"').to_string(), v.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    /// The buckets go up by bound, as Prometheus lists them (they were in
    /// string order: "1", "30", "5"), and end with `+Inf` = `count`.
    #[test]
    fn histogram_buckets_ascend_and_end_with_inf() {
        let m = Metrics::new();
        m.request(Outcome::Hit, 200, Duration::from_millis(2));
        m.request(Outcome::Hit, 200, Duration::from_secs(3));
        m.request(Outcome::Hit, 200, Duration::from_secs(60));
        let text = serde_json::to_string(&m.stats()).unwrap();
        let family = &text[text.find("\"strata_request_duration_seconds\":[").unwrap()..];
        let family = &family[..family.find(']').unwrap()];
        let hit = family
            .split("},{")
            .find(|s| s.contains("\"outcome\":\"hit\""))
            .unwrap();
        assert!(hit.contains("\"count\":3"), "{hit}");
        let buckets = &bucket_lists(hit)[0];
        let mut expected: Vec<String> = LATENCY_BUCKETS.iter().map(f64::to_string).collect();
        expected.push("+Inf".to_string());
        let keys: Vec<&str> = buckets.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, expected);
        let at = |k: &str| buckets.iter().find(|(b, _)| b == k).unwrap().1;
        assert_eq!((at("0.001"), at("0.0025")), (0, 1));
        assert_eq!((at("1"), at("5"), at("30")), (1, 2, 2));
        assert_eq!(at("+Inf"), 3);
        // Every histogram of the registry, not just this one.
        for list in bucket_lists(&text) {
            assert_eq!(list.last().unwrap().0, "+Inf", "{text}");
        }
    }
}

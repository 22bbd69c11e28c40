//! `strata_client_connections{listener}`: the client connections open on
//! each listener, read when `/metrics` is scraped from the listener's
//! connection limit (`max_connections` less the permits free), so the
//! accept path and the hit path pay nothing for it. nginx's `stub_status`
//! "Active connections" is the same figure.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use tokio::sync::Semaphore;

/// The family's name and help.
const NAME: &str = "strata_client_connections";
const HELP: &str = "Client connections open, by listener (proxy: plain and TLS together, as they share server.max_connections; admin).";

/// A listener's connection limit: its label, its semaphore (held weakly,
/// so a stopped server's is reported as 0) and its size.
struct Listener {
    label: &'static str,
    limit: Weak<Semaphore>,
    size: usize,
}

/// The collector, registered once with the other families (a clone:
/// both share the gauge and the list).
#[derive(Clone)]
pub(super) struct Connections {
    gauge: IntGaugeVec,
    listeners: Arc<Mutex<Vec<Listener>>>,
}

impl Connections {
    pub(super) fn new() -> Connections {
        let gauge = IntGaugeVec::new(Opts::new(NAME, HELP), &["listener"])
            .unwrap_or_else(|e| panic!("{NAME}: {e}"));
        // Exported at zero before the listeners start.
        for label in ["proxy", "admin"] {
            gauge.with_label_values(&[label]).set(0);
        }
        Connections {
            gauge,
            listeners: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Reports `label`'s open connections from now on: `size` permits of
    /// `limit`, one held per open connection. A later call for the same
    /// label replaces the earlier one (a server started again).
    pub(super) fn watch(&self, label: &'static str, limit: Weak<Semaphore>, size: usize) {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners.retain(|l| l.label != label);
        listeners.push(Listener { label, limit, size });
    }
}

impl Collector for Connections {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for l in listeners.iter() {
            let open = l
                .limit
                .upgrade()
                .map_or(0, |s| l.size.saturating_sub(s.available_permits()));
            self.gauge
                .with_label_values(&[l.label])
                .set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(c: &Connections, label: &str) -> i64 {
        let families = c.collect();
        let metric = families[0]
            .get_metric()
            .iter()
            .find(|m| m.get_label()[0].value() == label)
            .expect("series");
        metric.get_gauge().get_value() as i64
    }

    #[test]
    fn open_connections_are_the_permits_taken() {
        let c = Connections::new();
        assert_eq!(value(&c, "proxy"), 0);
        let limit = Arc::new(Semaphore::new(10));
        c.watch("proxy", Arc::downgrade(&limit), 10);
        let a = limit.clone().try_acquire_owned().unwrap();
        let b = limit.clone().try_acquire_owned().unwrap();
        assert_eq!(value(&c, "proxy"), 2);
        drop(a);
        assert_eq!(value(&c, "proxy"), 1);
        assert_eq!(value(&c, "admin"), 0);
        drop(limit);
        assert_eq!(value(&c, "proxy"), 1, "a connection outlives its listener");
        drop(b);
        assert_eq!(value(&c, "proxy"), 0, "a stopped server has none open");
    }
}

//! Per-server health state and round-robin selection over healthy servers.
//!
//! State is atomics only: picking a server on the request path takes no
//! lock. Health transitions happen in the health checker and on passive
//! connect failures; each is reported once by the call that made it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;

use crate::config::HealthConfig;

/// One upstream server and its health.
#[derive(Debug)]
pub struct ServerState {
    pub authority: Authority,
    healthy: AtomicBool,
    /// Consecutive failures (active or passive) while healthy.
    failures: AtomicU32,
    /// Consecutive successful checks while unhealthy.
    successes: AtomicU32,
}

impl ServerState {
    fn new(authority: Authority) -> ServerState {
        ServerState {
            authority,
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a failed check; returns true when this made it unhealthy.
    pub fn record_failure(&self, health: &HealthConfig) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= health.unhealthy_threshold && self.healthy.swap(false, Ordering::Relaxed)
    }

    /// Records a successful check; returns true when this made it healthy.
    pub fn record_success(&self, health: &HealthConfig) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if self.is_healthy() {
            return false;
        }
        let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        n >= health.healthy_threshold && !self.healthy.swap(true, Ordering::Relaxed)
    }
}

/// Round-robin over the healthy servers.
pub struct Balancer {
    servers: Vec<Arc<ServerState>>,
    next: AtomicUsize,
}

impl Balancer {
    /// Servers that were in `previous` keep their state (a reload does not
    /// put a dead server back into rotation).
    pub fn new(servers: &[Authority], previous: Option<&Balancer>) -> Balancer {
        let servers = servers
            .iter()
            .map(|a| {
                previous
                    .and_then(|p| p.servers.iter().find(|s| &s.authority == a).cloned())
                    .unwrap_or_else(|| Arc::new(ServerState::new(a.clone())))
            })
            .collect();
        Balancer {
            servers,
            next: AtomicUsize::new(0),
        }
    }

    pub fn servers(&self) -> &[Arc<ServerState>] {
        &self.servers
    }

    pub fn healthy_count(&self) -> usize {
        self.servers.iter().filter(|s| s.is_healthy()).count()
    }

    /// The next healthy server in turn, other than `exclude`.
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| Some(i) != exclude && self.servers[i].is_healthy())
    }

    /// A passive connect failure; returns true when it ejected the server.
    pub fn passive_failure(&self, index: usize, health: &HealthConfig) -> bool {
        // Without active checks nothing would bring a server back, so
        // passive failures only eject when health checks run.
        if !health.enabled {
            return false;
        }
        let s = &self.servers[index];
        let ejected = s.record_failure(health);
        if ejected {
            tracing::warn!(server = %s.authority, "upstream unhealthy: connect failures");
        }
        ejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn health() -> HealthConfig {
        HealthConfig {
            enabled: true,
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }

    fn auths(n: usize) -> Vec<Authority> {
        (0..n)
            .map(|i| format!("127.0.0.1:{}", 1000 + i).parse().unwrap())
            .collect()
    }

    #[test]
    fn round_robin_skips_unhealthy() {
        let b = Balancer::new(&auths(3), None);
        let picks: Vec<_> = (0..6).map(|_| b.pick(None).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let h = health();
        assert!(!b.servers[1].record_failure(&h));
        assert!(b.servers[1].record_failure(&h));
        let picks: Vec<_> = (0..4).map(|_| b.pick(None).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert!(!b.servers[1].record_success(&h));
        assert!(b.servers[1].record_success(&h));
        assert_eq!(b.healthy_count(), 3);
    }

    #[test]
    fn none_healthy() {
        let b = Balancer::new(&auths(1), None);
        let h = health();
        b.servers[0].record_failure(&h);
        b.servers[0].record_failure(&h);
        assert_eq!(b.pick(None), None);
        let b2 = Balancer::new(&auths(2), Some(&b));
        assert!(!b2.servers[0].is_healthy());
        assert!(b2.servers[1].is_healthy());
        assert_eq!(b2.pick(Some(1)), None);
    }
}

//! Choosing an upstream server for a request (`upstream.balance`):
//!
//! - `round_robin`: smooth weighted round-robin, nginx's algorithm (each
//!   pick adds every eligible server's weight to its running score, takes
//!   the highest and subtracts the total from it), so 3:1 weights give
//!   `a a b a` rather than `a a a b`, and equal weights are plain
//!   round-robin in configuration order.
//! - `least_request`: nginx's `least_conn`: the server with the fewest
//!   requests in flight per unit of weight; ties (idle servers, say) are
//!   broken by smooth weighted round-robin among the tied servers, so
//!   sequential traffic follows the weights (3:1 gives 75% / 25%).
//! - `hash`: a consistent hash ring ([`ring`]) on the request's `hash_key`;
//!   a request without the key (no such header or cookie) falls back to
//!   round-robin.
//!
//! Every policy sees only eligible servers (healthy, not drained), never
//! the excluded one (the server a connect just failed on), and honours a
//! sticky preference when that server is eligible. Slow start scales a
//! server's weight by its ramp ([`ServerState::ramp`]) under round-robin
//! and least-request; the hash ring ignores it (moving keys back and forth
//! during a ramp would defeat the point of hashing).
//!
//! Before the policy (after a sticky preference), a server out for connect
//! failures alone whose `fail_timeout` has passed gets the request as its
//! one trial ([`ServerState::claim_trial`]). A retry after a connect
//! failure goes to a server in rotation first, and is the trial only when
//! no server is in rotation.

pub mod ring;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;

use super::server::ServerState;
use crate::config::{Balance, HealthConfig, UpstreamConfig};
use ring::Ring;

/// What a request asks of the balancer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Route {
    /// Never this server (a connect to it just failed).
    pub exclude: Option<usize>,
    /// This server if it is eligible (a valid sticky cookie).
    pub preferred: Option<usize>,
    /// The request's `hash_key` hash, for `balance = "hash"`.
    pub hash: Option<u64>,
    /// Never a trial of a server out for connect failures: the request
    /// would not be retried on another server if the trial failed (a
    /// non-idempotent method), so its client would get the 502.
    pub no_trial: bool,
}

/// The servers of one configuration and the policy that picks among them.
pub struct Balancer {
    servers: Vec<Arc<ServerState>>,
    weights: Vec<u32>,
    balance: Balance,
    slow_start: Duration,
    /// `upstream.health.fail_timeout`: how long connect failures take a
    /// server out before a trial request.
    fail_timeout: Duration,
    /// Smooth round-robin running scores, one per server. A std mutex: the
    /// critical section is a few additions and never awaits (nginx takes a
    /// lock for the same reason).
    scores: Mutex<Vec<i64>>,
    ring: Option<Ring>,
}

impl Balancer {
    /// Servers that were in `previous` keep their state (health, drain, an
    /// ongoing ramp); servers a reload adds start a slow-start ramp.
    pub fn new(config: &UpstreamConfig, previous: Option<&Balancer>) -> Balancer {
        let servers: Vec<Arc<ServerState>> = config
            .servers
            .iter()
            .map(|a| {
                let kept = previous.and_then(|p| p.servers.iter().find(|s| &s.authority == a));
                match (kept, previous) {
                    (Some(s), _) => s.clone(),
                    (None, Some(_)) => {
                        let s = ServerState::new(a.clone());
                        s.mark_entered();
                        Arc::new(s)
                    }
                    (None, None) => Arc::new(ServerState::new(a.clone())),
                }
            })
            .collect();
        let weights = if config.weights.len() == servers.len() {
            config.weights.clone()
        } else {
            vec![1; servers.len()]
        };
        let ring = matches!(config.balance, Balance::Hash(_)).then(|| {
            let pairs: Vec<(Authority, u32)> = servers
                .iter()
                .zip(&weights)
                .map(|(s, w)| (s.authority.clone(), *w))
                .collect();
            Ring::new(&pairs)
        });
        Balancer {
            scores: Mutex::new(vec![0; servers.len()]),
            servers,
            weights,
            balance: config.balance.clone(),
            slow_start: config.slow_start,
            fail_timeout: config.health.fail_timeout,
            ring,
        }
    }

    pub fn servers(&self) -> &[Arc<ServerState>] {
        &self.servers
    }

    pub fn balance(&self) -> &Balance {
        &self.balance
    }

    pub fn weight(&self, index: usize) -> u32 {
        self.weights.get(index).copied().unwrap_or(1)
    }

    pub fn healthy_count(&self) -> usize {
        self.servers.iter().filter(|s| s.is_healthy()).count()
    }

    /// Servers in rotation: healthy and not drained.
    pub fn eligible_count(&self) -> usize {
        self.servers.iter().filter(|s| s.is_eligible()).count()
    }

    /// The index of the server `authority` (`host:port`).
    pub fn find(&self, authority: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.authority.as_str().eq_ignore_ascii_case(authority))
    }

    fn eligible(&self, i: usize, route: &Route) -> bool {
        Some(i) != route.exclude && self.servers[i].is_eligible()
    }

    /// A server's weight scaled by its slow-start ramp (thousandths).
    fn effective(&self, i: usize) -> i64 {
        (u64::from(self.weight(i)) * self.servers[i].ramp(self.slow_start)) as i64
    }

    /// The server for a request; `None` when no server is eligible.
    pub fn pick(&self, route: &Route) -> Option<usize> {
        if let Some(p) = route.preferred.filter(|&p| p < self.servers.len()) {
            if self.eligible(p, route) {
                return Some(p);
            }
        }
        // A retry (a connect just failed) goes to a server in rotation
        // first: its client already paid one failed connect, and a second
        // server out for connect failures is likely dead too. A first
        // attempt may be the trial.
        let retry = route.exclude.is_some();
        if !route.no_trial && !retry {
            if let Some(t) = self.trial(route) {
                return Some(t);
            }
        }
        let picked = match (&self.balance, &self.ring, route.hash) {
            (Balance::Hash(_), Some(ring), Some(hash)) => {
                ring.find(hash, |i| self.eligible(i, route))
            }
            (Balance::LeastRequest, _, _) => self.least_request(route),
            _ => self.round_robin(route),
        };
        match picked {
            None if retry && !route.no_trial => self.trial(route),
            picked => picked,
        }
    }

    /// A server out for connect failures whose `fail_timeout` has passed
    /// (not excluded, not drained), claimed for one trial request. One
    /// atomic load per server while none is out; the clock is read only
    /// when one is.
    fn trial(&self, route: &Route) -> Option<usize> {
        let mut now = 0;
        (0..self.servers.len()).find(|&i| {
            let s = &self.servers[i];
            Some(i) != route.exclude
                && !s.is_draining()
                && s.claim_trial(&mut now, self.fail_timeout)
        })
    }

    fn round_robin(&self, route: &Route) -> Option<usize> {
        let eligible = (0..self.servers.len()).filter(|&i| self.eligible(i, route));
        self.smooth_pick(eligible)
    }

    /// nginx's smooth weighted round-robin over `candidates`: each gains its
    /// (ramped) weight, the highest score is picked and pays back the sum.
    fn smooth_pick(&self, candidates: impl Iterator<Item = usize>) -> Option<usize> {
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in candidates {
            let w = self.effective(i);
            scores[i] += w;
            total += w;
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        scores[best] -= total;
        Some(best)
    }

    /// nginx's `least_conn`: the eligible server with the fewest requests
    /// in flight per unit of (ramped) weight; servers tied on that share it
    /// by smooth weighted round-robin (over the tied ones only), so idle
    /// servers, as under sequential traffic, get their weights' shares.
    fn least_request(&self, route: &Route) -> Option<usize> {
        // One reading of each count, so both passes see the same loads (a
        // count read twice could change between them and leave no server
        // tied with the least).
        let loads: Vec<(usize, i128, i128)> = (0..self.servers.len())
            .filter(|&i| self.eligible(i, route))
            .map(|i| {
                let in_flight = self.servers[i].in_flight() as i128;
                (i, in_flight, i128::from(self.effective(i)))
            })
            .collect();
        // in_a / w_a < in_b / w_b, cross-multiplied (weights are > 0).
        let lighter = |a: &(usize, i128, i128), b: &(usize, i128, i128)| a.1 * b.2 < b.1 * a.2;
        let least =
            loads
                .iter()
                .fold(None, |best: Option<&(usize, i128, i128)>, l| match best {
                    Some(b) if !lighter(l, b) => Some(b),
                    _ => Some(l),
                })?;
        self.smooth_pick(loads.iter().filter(|l| !lighter(least, l)).map(|l| l.0))
    }

    /// A passive connect failure; returns true when it ejected the server:
    /// the `unhealthy_threshold`-th in a row, unless no other server is
    /// eligible (healthy, not drained). As nginx never marks its only server down (and
    /// with every server failed, tries them all again), a run of connect
    /// failures never leaves no server to try: a brief origin restart then
    /// costs a few 502s, not `healthy_threshold` checks' worth of 503s
    /// after it is back. Failed checks take the last one out all the same.
    /// An ejection lasts `fail_timeout`, then a trial request tries the
    /// server again ([`Balancer::pick`]); a failed trial (already out)
    /// returns false: the claim started its next period.
    pub fn passive_failure(&self, index: usize, health: &HealthConfig) -> bool {
        // Without active checks nothing would bring a server back, so
        // passive failures only eject when health checks run.
        if !health.enabled {
            return false;
        }
        let s = &self.servers[index];
        if !s.record_connect_failure(health)
            || !self.others_eligible(index)
            || !s.eject(self.fail_timeout)
        {
            return false;
        }
        // Two last servers failing at once both saw the other in rotation.
        if !self.others_eligible(index) {
            s.stay();
            return false;
        }
        true
    }

    /// Whether a server other than `index` may take new requests.
    fn others_eligible(&self, index: usize) -> bool {
        self.servers
            .iter()
            .enumerate()
            .any(|(i, s)| i != index && s.is_eligible())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HashKey;

    fn health() -> HealthConfig {
        super::super::server::health_for_tests(2)
    }

    fn config(weights: &[u32], balance: Balance) -> UpstreamConfig {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                    [upstream]\nservers = [\"127.0.0.1:1\"]\n";
        let mut c = crate::config::Config::parse(std::path::Path::new("t.toml"), text)
            .unwrap()
            .upstream;
        c.servers = (0..weights.len())
            .map(|i| format!("127.0.0.1:{}", 1000 + i).parse().unwrap())
            .collect();
        c.weights = weights.to_vec();
        c.balance = balance;
        c
    }

    fn picks(b: &Balancer, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(&Route::default()).unwrap()).collect()
    }

    #[test]
    fn round_robin_skips_unhealthy() {
        let b = Balancer::new(&config(&[1, 1, 1], Balance::RoundRobin), None);
        assert_eq!(picks(&b, 6), vec![0, 1, 2, 0, 1, 2]);
        let h = health();
        assert!(!b.servers[1].record_failure(&h));
        assert!(b.servers[1].record_failure(&h));
        assert!(!picks(&b, 4).contains(&1));
        assert!(!b.servers[1].record_success(&h));
        assert!(b.servers[1].record_success(&h));
        assert_eq!(b.healthy_count(), 3);
    }

    #[test]
    fn connect_failures_never_take_out_the_last_server_in_rotation() {
        let h = health(); // unhealthy_threshold = 2
        let one = Balancer::new(&config(&[1], Balance::RoundRobin), None);
        for _ in 0..5 {
            assert!(!one.passive_failure(0, &h));
        }
        assert_eq!(one.pick(&Route::default()), Some(0));
        // Failed checks still take it out.
        one.servers[0].record_failure(&h);
        assert!(one.servers[0].record_failure(&h));
        assert_eq!(one.pick(&Route::default()), None);

        let two = Balancer::new(&config(&[1, 1], Balance::RoundRobin), None);
        assert!(!two.passive_failure(0, &h));
        assert!(two.passive_failure(0, &h), "another server is in rotation");
        for _ in 0..5 {
            assert!(!two.passive_failure(1, &h), "the last one stays");
        }
        assert_eq!(picks(&two, 2), vec![1, 1]);
        // A drained server takes no requests: it does not count as one left.
        let drained = Balancer::new(&config(&[1, 1], Balance::RoundRobin), None);
        drained.servers[1].set_draining(true);
        for _ in 0..5 {
            assert!(!drained.passive_failure(0, &h));
        }
        assert_eq!(drained.pick(&Route::default()), Some(0));
        // Once another is back in rotation, the next failure ejects.
        drained.servers[1].set_draining(false);
        assert!(drained.passive_failure(0, &h));
    }

    #[test]
    fn a_retry_goes_to_a_server_in_rotation_before_a_trial() {
        let h = health(); // unhealthy_threshold = 2
        let mut c = config(&[1, 1, 1], Balance::RoundRobin);
        c.health.fail_timeout = Duration::from_millis(1);
        let b = Balancer::new(&c, None);
        for dead in [0, 1] {
            assert!(!b.passive_failure(dead, &h));
            assert!(b.passive_failure(dead, &h));
        }
        // Both trials are due once 1 ms has passed (sleep waits at least
        // that long).
        std::thread::sleep(Duration::from_millis(2));
        // A connect to server 0 (its trial) just failed: the retry goes
        // to server 2, in rotation, not to server 1's due trial.
        let retry = Route {
            exclude: Some(0),
            ..Route::default()
        };
        assert_eq!(b.pick(&retry), Some(2));
        // A first attempt is still a trial.
        assert_eq!(b.pick(&Route::default()), Some(0));
        // With no server in rotation, a retry may be the trial.
        let alone = Balancer::new(&c, None);
        alone.servers[2].set_draining(true);
        for dead in [0, 1] {
            alone.servers[dead].record_failure(&h);
            alone.servers[dead].eject(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(alone.pick(&retry), Some(1));
        let post = Route {
            no_trial: true,
            ..retry
        };
        assert_eq!(alone.pick(&post), None);
    }

    #[test]
    fn smooth_weighted() {
        let b = Balancer::new(&config(&[5, 1, 1], Balance::RoundRobin), None);
        // nginx's documented sequence for 5:1:1.
        assert_eq!(picks(&b, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        let b = Balancer::new(&config(&[3, 1], Balance::RoundRobin), None);
        let p = picks(&b, 400);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 300);
    }

    #[test]
    fn exclude_preferred_and_drain() {
        let b = Balancer::new(&config(&[1, 1], Balance::RoundRobin), None);
        let r = Route {
            exclude: Some(0),
            ..Route::default()
        };
        assert_eq!(b.pick(&r), Some(1));
        assert_eq!(b.pick(&r), Some(1));
        let r = Route {
            preferred: Some(1),
            ..Route::default()
        };
        assert_eq!(b.pick(&r), Some(1));
        b.servers[1].set_draining(true);
        assert_eq!(b.pick(&r), Some(0));
        assert!(!picks(&b, 5).contains(&1));
    }

    #[test]
    fn none_eligible() {
        let c = config(&[1], Balance::RoundRobin);
        let b = Balancer::new(&c, None);
        let h = health();
        b.servers[0].record_failure(&h);
        b.servers[0].record_failure(&h);
        assert_eq!(b.pick(&Route::default()), None);
        let b2 = Balancer::new(&config(&[1, 1], Balance::RoundRobin), Some(&b));
        assert!(!b2.servers[0].is_healthy());
        assert!(b2.servers[1].is_healthy());
        let r = Route {
            exclude: Some(1),
            ..Route::default()
        };
        assert_eq!(b2.pick(&r), None);
    }

    #[test]
    fn reload_keeps_drain_and_ramps_added_servers() {
        let b = Balancer::new(&config(&[1, 1], Balance::RoundRobin), None);
        b.servers[0].set_draining(true);
        let mut c = config(&[1, 1, 1], Balance::RoundRobin);
        c.slow_start = Duration::from_secs(60);
        let b2 = Balancer::new(&c, Some(&b));
        assert!(b2.servers[0].is_draining());
        assert_eq!(b2.servers[1].ramp(c.slow_start), 1000);
        assert!(b2.servers[2].ramp(c.slow_start) < 100);
        // The new server gets a small share while ramping.
        let p = picks(&b2, 200);
        let new = p.iter().filter(|&&i| i == 2).count();
        assert!(new < 20, "{new}");
    }

    #[test]
    fn least_request_prefers_idle() {
        let b = Balancer::new(&config(&[1, 1], Balance::LeastRequest), None);
        let _busy: Vec<_> = (0..5).map(|_| b.servers[0].begin()).collect();
        assert!(picks(&b, 50).iter().all(|&i| i == 1));
        // Per unit of weight: 4 in flight on weight 4 is lighter than 2 on
        // weight 1, and 4 on 4 ties 1 on 1 (then shared by weight).
        let b = Balancer::new(&config(&[4, 1], Balance::LeastRequest), None);
        let _a: Vec<_> = (0..4).map(|_| b.servers[0].begin()).collect();
        let b1: Vec<_> = (0..2).map(|_| b.servers[1].begin()).collect();
        assert!(picks(&b, 10).iter().all(|&i| i == 0));
        drop(b1);
        let _b1 = b.servers[1].begin();
        let p = picks(&b, 50);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 40, "{p:?}");
    }

    /// Sequential requests (nothing in flight: every server tied) follow
    /// the weights exactly, spread as smooth round-robin spreads them.
    #[test]
    fn least_request_honours_weights_when_idle() {
        let share = |weights: &[u32], n: usize| {
            let b = Balancer::new(&config(weights, Balance::LeastRequest), None);
            let p = picks(&b, n);
            (0..weights.len())
                .map(|s| p.iter().filter(|&&i| i == s).count())
                .collect::<Vec<_>>()
        };
        assert_eq!(share(&[3, 1], 200), vec![150, 50]);
        assert_eq!(share(&[100, 1, 1], 102), vec![100, 1, 1]);
        assert_eq!(share(&[1, 1, 1], 9), vec![3, 3, 3]);
        let b = Balancer::new(&config(&[5, 1, 1], Balance::LeastRequest), None);
        assert_eq!(picks(&b, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn hash_is_stable_and_skips_drained() {
        let b = Balancer::new(&config(&[1, 1, 1], Balance::Hash(HashKey::Uri)), None);
        let r = Route {
            hash: Some(Ring::hash(b"/x")),
            ..Route::default()
        };
        let first = b.pick(&r).unwrap();
        assert!((0..20).all(|_| b.pick(&r) == Some(first)));
        b.servers[first].set_draining(true);
        let moved = b.pick(&r).unwrap();
        assert_ne!(moved, first);
        // Without a key: round-robin.
        assert_eq!(picks(&b, 4).len(), 4);
    }
}

//! Rate limits (`[[rate_limits]]`; nginx's `limit_req`, HAProxy's
//! `http-request deny deny_status 429 if { sc_http_req_rate ... }`).
//!
//! Each limit is a GCRA (generic cell rate algorithm): `rate` requests per
//! period, with up to `burst` at once after a quiet spell. A request a
//! limit matches (by path glob, and by having the limit's key: a request
//! without the header or cookie a limit is keyed on is not counted, as in
//! nginx) is charged to that key's budget; over it, Strata answers `429`
//! with `Retry-After` (whole seconds, at least 1) and sends nothing
//! upstream.
//!
//! A request is charged only if every limit accepts it, whatever the order
//! of the limits (nginx's `limit_req` commits its zones only once all have
//! accepted): `rate_limit/enforce.rs` checks the Redis-backed ones of a
//! phase in one all-or-nothing script call (one per limit in cluster
//! mode), and the local ones in order, and gives back what was charged
//! when one refuses. The first limit over, in file order, counts the
//! request in `strata_rate_limited_total{name}`.
//! `dry_run` limits only count, and only see requests the enforced ones
//! let through (they answer "how many more 429s would this limit add").
//!
//! - `local` (`rate_limit/local.rs`): the `governor` crate's keyed
//!   limiter, per instance, on a `moka` cache of at most [`MAX_KEYS`]
//!   keys: a key idle until its budget is full again goes, and past the
//!   bound the least used keys are forgotten (TinyLFU), so a flood of
//!   distinct keys cannot free a client that is being limited. Every
//!   [`SWEEP_EVERY`] a sweeper runs moka's pending work.
//! - `redis`: one budget for the fleet, kept in Redis by an atomic Lua
//!   script (`rate_limit/shared.rs`) on the Redis tier's connection,
//!   behind its breaker and timeout. When Redis is down, slow or its
//!   breaker open, the local limiter decides: Redis never rejects traffic,
//!   and a call Redis runs after its deadline charges nothing. A refund
//!   goes to whichever of the two charged.
//!
//! `count = "all"` limits are checked as a request arrives; `count =
//! "origin"` ones only when a request is about to go to an upstream, so
//! cache hits are never charged. The same rule holds across the two
//! phases: when an origin limit may apply to the request's path, what the
//! arrival charged travels with the request as an [`Arrival`], refunded
//! if an origin limit refuses it ([`RateLimits::settle`]), and the arrival
//! phase's `dry_run` limits count it only then, once it was let through.
//! With no limits configured there is no [`RateLimits`] at all: the
//! request path pays one `Option` check.

mod enforce;
mod local;
mod shared;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use prometheus::IntCounter;
use tokio_util::sync::{CancellationToken, DropGuard};
use xxhash_rust::xxh3::xxh3_64;

use crate::cache::redis::RedisTier;
use crate::config::{LimitBackend, LimitCount, LimitKey, RateLimitConfig};
use crate::metrics::Metrics;
use crate::proxy::body::ProxyBody;

use local::Local;
pub use local::MAX_KEYS;

/// How often every local limiter runs its cache's pending work (idle keys
/// dropped, evictions), and warns when it is at its bound.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What a limit needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The path, without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// See `server.trusted_proxies`.
    pub client_ip: IpAddr,
}

/// Request extension on an upstream request: the client it is made for
/// (for the `count = "origin"` limits).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// A request over a limit.
#[derive(Debug, Clone)]
pub struct Limited {
    pub name: String,
    /// Until the next request would be allowed.
    pub retry_after: Duration,
    /// `strata_rate_limited_total{name}` of the refusing limit, counted by
    /// [`Limited::count`] when the `429` is the answer: a stale copy served
    /// instead (`count = "origin"` inside `stale-if-error`) is no refusal.
    pub(crate) counter: Option<IntCounter>,
}

impl Limited {
    /// Counts the refusal in `strata_rate_limited_total`: call it once, when
    /// the request is answered `429`.
    pub fn count(&self) {
        if let Some(c) = &self.counter {
            c.inc();
        }
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }

    /// The `429 Too Many Requests` answer (RFC 6585 §4).
    pub fn response(&self) -> Response<ProxyBody> {
        let mut r = Response::new(ProxyBody::from("too many requests\n"));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.retry_after_secs()),
        );
        r
    }
}

struct Limit {
    config: RateLimitConfig,
    local: Arc<Local>,
    limited: IntCounter,
}

impl Limit {
    /// The key `subject` is charged to under this limit; `None` when the
    /// limit does not apply (another `count`, another path, no such key).
    fn key(&self, count: LimitCount, subject: &Subject<'_>) -> Option<u64> {
        if self.config.count != count || !self.config.matcher.is_match(subject.path) {
            return None;
        }
        key_of(&self.config.key, subject)
    }
}

/// The budget that decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charged {
    /// This instance's ([`Local`]).
    Local,
    /// The fleet's, in Redis (`rate_limit/shared.rs`).
    Redis,
}

/// One charge of a request to a limit: the limit's index, the key, and
/// the budget that took it (`None`: a `dry_run` limit, not yet charged).
#[derive(Debug, Clone, Copy)]
struct Charge {
    index: usize,
    key: u64,
    charged: Option<Charged>,
}

/// What the arrival check did for a request an origin limit may still
/// refuse: the enforced `count = "all"` charges (to refund then) and the
/// `dry_run` ones' keys (counted only once the request was let through).
/// Given back to [`RateLimits::settle`] of the same [`RateLimits`] once
/// the request is answered.
#[derive(Debug)]
pub struct Arrival {
    charges: Vec<Charge>,
}

/// Every configured limit, for one configuration.
pub struct RateLimits {
    limits: Vec<Limit>,
    any_all: bool,
    any_origin: bool,
    redis: Option<RedisTier>,
    _sweeper: Option<DropGuard>,
}

impl RateLimits {
    /// `None` when `configs` is empty (no limiter, no cost). Limits of
    /// `previous` with the same name, key, rate and burst keep their local
    /// state. Starts the sweeper when inside a tokio runtime.
    pub fn new(
        configs: &[RateLimitConfig],
        previous: Option<&RateLimits>,
        redis: Option<RedisTier>,
        metrics: &Metrics,
    ) -> Option<Arc<RateLimits>> {
        if configs.is_empty() {
            return None;
        }
        let limits: Vec<Limit> = configs
            .iter()
            .filter_map(|c| {
                let kept = previous.and_then(|p| {
                    p.limits
                        .iter()
                        .find(|l| same_budget(&l.config, c))
                        .map(|l| l.local.clone())
                });
                let local = match kept {
                    Some(l) => l,
                    None => Arc::new(Local::new(c)?),
                };
                Some(Limit {
                    config: c.clone(),
                    local,
                    limited: metrics.rate_limited(&c.name),
                })
            })
            .collect();
        if configs.iter().any(|c| c.backend == LimitBackend::Redis) && redis.is_none() {
            tracing::warn!(
                "rate limits with backend = \"redis\" but no [cache.redis]: they are local"
            );
        }
        let sweeper = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let stop = CancellationToken::new();
            let locals: Vec<Arc<Local>> = limits.iter().map(|l| l.local.clone()).collect();
            rt.spawn(sweep(locals, stop.clone()));
            stop.drop_guard()
        });
        Some(Arc::new(RateLimits {
            any_all: limits.iter().any(|l| l.config.count == LimitCount::All),
            any_origin: limits.iter().any(|l| l.config.count == LimitCount::Origin),
            limits,
            redis,
            _sweeper: sweeper,
        }))
    }

    /// Whether any limit charges requests of `count`.
    pub fn charges(&self, count: LimitCount) -> bool {
        match count {
            LimitCount::All => self.any_all,
            LimitCount::Origin => self.any_origin,
        }
    }

    /// The `count = "all"` limits, charged as a request arrives. `Ok(None)`
    /// when no `count = "origin"` limit matches the path (the charges are
    /// final) or none was made; else `Ok(Some)` with what to [`RateLimits::settle`] once
    /// the request is answered (the `dry_run` limits wait for that).
    pub async fn on_arrival<B>(
        &self,
        req: &Request<B>,
        client_ip: IpAddr,
    ) -> Result<Option<Arrival>, Limited> {
        if !self.any_all {
            return Ok(None);
        }
        let subject = Subject {
            path: req.uri().path(),
            headers: req.headers(),
            client_ip,
        };
        // Only the path: the origin check reads the upstream request's
        // fields, which the forwarding fields add to.
        let pending = self.any_origin
            && self.limits.iter().any(|l| {
                l.config.count == LimitCount::Origin && l.config.matcher.is_match(subject.path)
            });
        if !pending {
            return self.check(LimitCount::All, &subject).await.map(|()| None);
        }
        let mut charges = Vec::new();
        self.enforce(LimitCount::All, &subject, Some(&mut charges))
            .await?;
        for (index, limit) in self.limits.iter().enumerate() {
            if limit.config.dry_run {
                if let Some(key) = limit.key(LimitCount::All, &subject) {
                    charges.push(Charge {
                        index,
                        key,
                        charged: None,
                    });
                }
            }
        }
        Ok((!charges.is_empty()).then_some(Arrival { charges }))
    }

    /// The request `arrival` was made for is answered: `refused` says
    /// whether a `count = "origin"` limit refused it (its answer is that
    /// limit's `429`), and then every arrival charge is refunded; else the
    /// arrival's `dry_run` limits are charged and count it if over.
    pub async fn settle(&self, arrival: Arrival, refused: bool) {
        for c in &arrival.charges {
            let Some(limit) = self.limits.get(c.index) else {
                continue;
            };
            match (refused, c.charged) {
                (true, Some(charged)) => self.refund_one(limit, c.key, charged).await,
                (false, None) => self.dry_run(limit, c.key).await,
                _ => {}
            }
        }
    }

    /// The `count = "origin"` limits, charged by a request about to go to
    /// an upstream (so hits never are); the client is the request's
    /// [`ClientIp`] extension (requests without one are not charged).
    pub async fn before_upstream<B>(&self, req: &Request<B>) -> Result<(), Limited> {
        if !self.any_origin {
            return Ok(());
        }
        let Some(ClientIp(client_ip)) = req.extensions().get::<ClientIp>().copied() else {
            return Ok(());
        };
        let subject = Subject {
            path: req.uri().path(),
            headers: req.headers(),
            client_ip,
        };
        self.check(LimitCount::Origin, &subject).await
    }

    /// Charges `subject` to every limit of `count` that matches it, or,
    /// when an enforced one is over, to none: `Err` names the first
    /// enforced limit (in configuration order) over which it is, and every
    /// limit that had accepted it before is refunded. `dry_run` limits are
    /// charged (and counted when over) only once every enforced one has
    /// accepted.
    pub async fn check(&self, count: LimitCount, subject: &Subject<'_>) -> Result<(), Limited> {
        self.enforce(count, subject, None).await?;
        for limit in self.limits.iter().filter(|l| l.config.dry_run) {
            if let Some(key) = limit.key(count, subject) {
                self.dry_run(limit, key).await;
            }
        }
        Ok(())
    }

    /// Keys held by each limit's local limiter (for tests and `/stats`).
    pub fn local_keys(&self) -> Vec<(String, usize)> {
        self.limits
            .iter()
            .map(|l| (l.config.name.clone(), l.local.len()))
            .collect()
    }
}

fn same_budget(a: &RateLimitConfig, b: &RateLimitConfig) -> bool {
    a.name == b.name && a.key == b.key && a.rate == b.rate && a.per == b.per && a.burst == b.burst
}

/// The key a request is charged to under `key`; `None` when the request
/// does not carry it.
fn key_of(key: &LimitKey, s: &Subject<'_>) -> Option<u64> {
    match key {
        LimitKey::Global => Some(0),
        LimitKey::Ip => Some(match s.client_ip {
            IpAddr::V4(v4) => xxh3_64(&v4.octets()),
            IpAddr::V6(v6) => xxh3_64(&v6.octets()),
        }),
        LimitKey::Header(name) => s.headers.get(name).map(|v| xxh3_64(v.as_bytes())),
        LimitKey::Cookie(name) => cookie_key(s.headers, name),
    }
}

/// The key of cookie `name`: its first value, as nginx's `$cookie_NAME`
/// reads it, with surrounding quotes taken off (RFC 6265 §4.1.1 allows
/// them; frameworks strip them). A `Cookie` line is read pair by pair
/// from its bytes: a pair with bytes that are not UTF-8 (obs-text) is
/// replaced, not the whole line dropped, so `sid=victim; x=\xe9` is still
/// counted as `victim` (it was not counted at all: a bypass of any
/// cookie-keyed limit; rate-limit probe). A repeated name counts under
/// its first value, as nginx does; an origin that reads the last one
/// sees another value (documented).
fn cookie_key(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get_all(header::COOKIE).iter().find_map(|line| {
        let text = String::from_utf8_lossy(line.as_bytes());
        cookie::Cookie::split_parse(text.as_ref())
            .flatten()
            .find(|c| c.name() == name)
            .map(|c| {
                let v = c.value();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                xxh3_64(v.as_bytes())
            })
    })
}

async fn sweep(locals: Vec<Arc<Local>>, stop: CancellationToken) {
    let start = tokio::time::Instant::now() + SWEEP_EVERY;
    let mut tick = tokio::time::interval_at(start, SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                for l in &locals {
                    l.sweep();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn limits(extra: &str) -> Arc<RateLimits> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nservers = [\"127.0.0.1:1\"]\n{extra}"
        );
        let c = crate::config::Config::parse(Path::new("t.toml"), &text).unwrap();
        RateLimits::new(&c.rate_limits, None, None, &Metrics::new()).unwrap()
    }

    fn subject<'a>(path: &'a str, h: &'a HeaderMap, ip: &str) -> Subject<'a> {
        Subject {
            path,
            headers: h,
            client_ip: ip.parse().unwrap(),
        }
    }

    /// A cookie-keyed limit counts `sid=victim` however the rest of the
    /// line is written: a non-UTF-8 byte in another cookie made the whole
    /// line unreadable and the request uncounted (rate-limit probe:
    /// `sid=victim; x=\xe9` was never limited); quotes are taken off.
    #[test]
    fn a_cookie_key_survives_odd_bytes_elsewhere_and_quotes() {
        let key = |line: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_bytes(line).unwrap());
            cookie_key(&h, "sid")
        };
        let victim = key(b"sid=victim");
        assert!(victim.is_some());
        for line in [
            &b"sid=victim; x=\xe9"[..],
            b"x=\xe9\xff; sid=victim",
            b"sid=\"victim\"",
            b"a=1;sid=victim;b=2",
            b"sid=victim; sid=other",
        ] {
            assert_eq!(key(line), victim, "{}", String::from_utf8_lossy(line));
        }
        assert_ne!(key(b"sid=other"), victim);
        assert_eq!(key(b"other=victim"), None);
        // Over several lines, the first that names it.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("sid=victim"));
        assert_eq!(cookie_key(&h, "sid"), victim);
    }

    #[tokio::test]
    async fn burst_then_limited_per_key() {
        let l = limits(
            "[[rate_limits]]\nname = \"api\"\nmatch = \"/api/**\"\nrate = \"1/m\"\nburst = 3",
        );
        let h = HeaderMap::new();
        for _ in 0..3 {
            assert!(l
                .check(LimitCount::All, &subject("/api/x", &h, "1.1.1.1"))
                .await
                .is_ok());
        }
        let over = l
            .check(LimitCount::All, &subject("/api/x", &h, "1.1.1.1"))
            .await
            .unwrap_err();
        assert_eq!(over.name, "api");
        assert!((1..=60).contains(&over.retry_after_secs()));
        // Another key, another budget; other paths are not limited.
        assert!(l
            .check(LimitCount::All, &subject("/api/x", &h, "2.2.2.2"))
            .await
            .is_ok());
        assert!(l
            .check(LimitCount::All, &subject("/other", &h, "1.1.1.1"))
            .await
            .is_ok());
        // Origin-counted limits are not charged by the arrival check.
        assert!(!l.charges(LimitCount::Origin));
    }

    #[tokio::test]
    async fn dry_run_and_missing_key() {
        let l = limits(
            "[[rate_limits]]\nname = \"d\"\nrate = \"1/h\"\nburst = 1\ndry_run = true\n\
             [[rate_limits]]\nname = \"h\"\nkey = \"header:x-user\"\nrate = \"1/h\"\nburst = 1",
        );
        let h = HeaderMap::new();
        for _ in 0..5 {
            assert!(l
                .check(LimitCount::All, &subject("/", &h, "1.1.1.1"))
                .await
                .is_ok());
        }
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("u1"));
        assert!(l
            .check(LimitCount::All, &subject("/", &h, "1.1.1.1"))
            .await
            .is_ok());
        assert!(l
            .check(LimitCount::All, &subject("/", &h, "1.1.1.1"))
            .await
            .is_err());
    }

    /// A flood of distinct keys past [`MAX_KEYS`] stays bounded and does
    /// not free a client being limited that keeps asking: the map used to
    /// be reset at once past the bound, so about 100k one-off keys (1.4 s
    /// of pipelined traffic) gave every limited client a fresh budget
    /// (rate-limit probe, medium).
    #[tokio::test]
    async fn a_flood_of_distinct_keys_stays_bounded_and_frees_nobody() {
        let l = limits("[[rate_limits]]\nname = \"ip\"\nrate = \"1/h\"\nburst = 1");
        let h = HeaderMap::new();
        let victim = subject("/", &h, "10.9.8.7");
        assert!(l.check(LimitCount::All, &victim).await.is_ok());
        for _ in 0..3 {
            assert!(l.check(LimitCount::All, &victim).await.is_err());
        }
        let total = MAX_KEYS as u32 + 20_000;
        for i in 0..total {
            let ip = IpAddr::from((0x2000_0000 + i).to_be_bytes());
            let s = Subject {
                path: "/",
                headers: &h,
                client_ip: ip,
            };
            let _ = l.check(LimitCount::All, &s).await;
            // The limited client keeps asking, as one does.
            if i % 1000 == 0 {
                assert!(l.check(LimitCount::All, &victim).await.is_err(), "at {i}");
            }
        }
        let (_, keys) = l.local_keys()[0].clone();
        assert!(keys as u64 <= MAX_KEYS, "{keys}");
        assert!(
            l.check(LimitCount::All, &victim).await.is_err(),
            "the flood gave the limited client a fresh budget"
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        let l = Limited {
            name: "x".into(),
            retry_after: Duration::from_millis(10),
            counter: None,
        };
        assert_eq!(l.retry_after_secs(), 1);
        let l = Limited {
            name: "x".into(),
            retry_after: Duration::from_millis(2100),
            counter: None,
        };
        assert_eq!(l.retry_after_secs(), 3);
        assert_eq!(l.response().headers()[header::RETRY_AFTER], "3");
    }
}

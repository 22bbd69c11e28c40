//! How a request is charged to the enforced limits of one phase
//! ([`RateLimits::enforce`]), all of them or none.
//!
//! Standalone and Sentinel: every Redis-backed limit that applies is
//! checked and charged in ONE script call, all or none
//! (`shared::check_all`), so a request one of them refuses never holds a
//! charge on another; then the local ones, in file order, without waiting
//! in between (a refusal gives back what they charged at once). Only when
//! a local limit refuses a request the Redis ones accepted are those
//! given back, one call each. When Redis cannot answer, the local limiter
//! decides for the Redis-backed limits too.
//!
//! Cluster: the keys of one request may live in different hash slots,
//! which one script cannot take, so each limit is its own call in file
//! order and a refusal gives back the ones before it afterwards
//! (`enforce_in_turn`): meanwhile a concurrent request can find those
//! budgets one request shorter.

use crate::cache::redis::RedisTier;
use crate::config::{LimitBackend, LimitCount};

use super::{shared, Charge, Charged, Limit, Limited, RateLimits, Subject};
use std::time::Duration;

/// What the one Redis call of a phase said.
enum Verdict {
    /// Every Redis-backed limit accepted and was charged.
    Charged,
    /// The Redis-backed limit of this index is the first over, with the
    /// longest wait of those over; none was charged.
    Refused(usize, Duration),
    /// Redis did not answer: the local limiter decides for them.
    Unavailable,
}

impl Limit {
    /// The refusal's answer; counted when it is sent ([`Limited::count`]).
    fn refuse(&self, wait: Duration) -> Limited {
        Limited {
            name: self.config.name.clone(),
            retry_after: wait,
            counter: Some(self.limited.clone()),
        }
    }
}

impl RateLimits {
    /// The enforced half of [`RateLimits::check`]: charges `subject` to
    /// every enforced limit of `count` that applies, or, when one is over,
    /// to none (`Err` names the first over, in file order, which counts
    /// the request). Each charge is pushed to `record` when given (they
    /// stand only if `Ok`).
    pub(super) async fn enforce(
        &self,
        count: LimitCount,
        subject: &Subject<'_>,
        record: Option<&mut Vec<Charge>>,
    ) -> Result<(), Limited> {
        if let Some(redis) = self.redis.as_ref().filter(|r| !r.is_cluster()) {
            // Allocates only when a Redis-backed limit applies.
            let batch: Vec<(usize, u64)> = self
                .limits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.config.dry_run && l.config.backend == LimitBackend::Redis)
                .filter_map(|(i, l)| l.key(count, subject).map(|key| (i, key)))
                .collect();
            if !batch.is_empty() {
                return self
                    .enforce_at_once(redis, count, subject, &batch, record)
                    .await;
            }
        }
        self.enforce_in_turn(count, subject, record).await
    }

    /// [`RateLimits::enforce`] with the Redis-backed limits of `batch`
    /// (index, key; every one that applies) in one call.
    async fn enforce_at_once(
        &self,
        redis: &RedisTier,
        count: LimitCount,
        subject: &Subject<'_>,
        batch: &[(usize, u64)],
        mut record: Option<&mut Vec<Charge>>,
    ) -> Result<(), Limited> {
        let keys: Vec<_> = batch
            .iter()
            .filter_map(|&(i, key)| self.limits.get(i).map(|l| (&l.config, key)))
            .collect();
        let verdict = match shared::check_all(redis, &keys).await {
            Ok(None) => Verdict::Charged,
            Ok(Some((at, wait))) => match batch.get(at) {
                Some(&(i, _)) => Verdict::Refused(i, wait),
                None => Verdict::Unavailable,
            },
            Err(e) => {
                tracing::debug!(error = %e, "redis rate limits unavailable: local limits apply");
                Verdict::Unavailable
            }
        };
        // Charged to the local limiters so far, given back if one refuses.
        let mut local: Vec<(usize, u64)> = Vec::new();
        for (i, limit) in self.limits.iter().enumerate() {
            if limit.config.dry_run {
                continue;
            }
            let Some(key) = limit.key(count, subject) else {
                continue;
            };
            let in_batch = |i: usize| batch.iter().any(|&(b, _)| b == i);
            // The limits after a refusing one the local limiter decides.
            let decided_here =
                |j: usize, _: &Limit| !in_batch(j) || matches!(verdict, Verdict::Unavailable);
            if let Verdict::Refused(at, wait) = verdict {
                if i == at {
                    self.give_back_local(&local);
                    let wait = self.longest_wait(count, subject, i, wait, decided_here);
                    return Err(limit.refuse(wait));
                }
            }
            let in_batch = in_batch(i);
            let charged = if in_batch && !matches!(verdict, Verdict::Unavailable) {
                // Accepted by Redis (charged, or nothing will be: a later
                // one refuses).
                Charged::Redis
            } else if let Some(wait) = limit.local.check(key) {
                self.give_back_local(&local);
                let wait = self.longest_wait(count, subject, i, wait, decided_here);
                if matches!(verdict, Verdict::Charged) {
                    for &(b, key) in batch {
                        if let Some(l) = self.limits.get(b) {
                            self.refund_one(l, key, Charged::Redis).await;
                        }
                    }
                }
                return Err(limit.refuse(wait));
            } else {
                local.push((i, key));
                Charged::Local
            };
            if let Some(record) = record.as_deref_mut() {
                record.push(Charge {
                    index: i,
                    key,
                    charged: Some(charged),
                });
            }
        }
        Ok(())
    }

    /// The longest wait among `wait` (the refusing limit's, index
    /// `refused`) and the enforced limits after it that would refuse
    /// `subject` too: `Retry-After` says when a follow-up request may
    /// succeed (RFC 9110 §10.2.3), and a client that waited only for the
    /// first limit was refused again by the next. Only the limits
    /// `decided_here` says the local limiter decides are looked at, each
    /// charged and at once given back when it accepts (governor has no
    /// look without a charge); the Redis-backed ones of one script call
    /// are in its wait already. The metric counts only the refusing limit.
    fn longest_wait(
        &self,
        count: LimitCount,
        subject: &Subject<'_>,
        refused: usize,
        wait: Duration,
        decided_here: impl Fn(usize, &Limit) -> bool,
    ) -> Duration {
        let mut longest = wait;
        for (i, limit) in self.limits.iter().enumerate().skip(refused + 1) {
            if limit.config.dry_run || !decided_here(i, limit) {
                continue;
            }
            let Some(key) = limit.key(count, subject) else {
                continue;
            };
            match limit.local.check(key) {
                Some(wait) => longest = longest.max(wait),
                None => limit.local.refund(key),
            }
        }
        longest
    }

    /// Takes back the local charges `(index, key)` at once.
    fn give_back_local(&self, charges: &[(usize, u64)]) {
        for &(i, key) in charges {
            if let Some(l) = self.limits.get(i) {
                l.local.refund(key);
            }
        }
    }

    /// [`RateLimits::enforce`] one limit after another, each Redis-backed
    /// one its own call (cluster mode, where the keys of one request may
    /// live in different hash slots): a refused request holds the charges
    /// of the limits before the refusing one until they are given back,
    /// one call each.
    async fn enforce_in_turn(
        &self,
        count: LimitCount,
        subject: &Subject<'_>,
        mut record: Option<&mut Vec<Charge>>,
    ) -> Result<(), Limited> {
        // Redis-backed limits the local limiter charged instead (Redis
        // unavailable): their refund goes there. Allocates only then.
        let mut fell_back: Vec<usize> = Vec::new();
        for (i, limit) in self.limits.iter().enumerate() {
            if limit.config.dry_run {
                continue;
            }
            let Some(key) = limit.key(count, subject) else {
                continue;
            };
            match self.decide(limit, key).await {
                (None, charged) => {
                    if charged == Charged::Local && self.shared(limit) {
                        fell_back.push(i);
                    }
                    if let Some(record) = record.as_deref_mut() {
                        record.push(Charge {
                            index: i,
                            key,
                            charged: Some(charged),
                        });
                    }
                }
                (Some(wait), _) => {
                    self.refund(count, subject, i, &fell_back).await;
                    // Cluster: a later Redis-backed limit would take a
                    // call of its own to look at; only local ones count.
                    let local_only = |_: usize, l: &Limit| !self.shared(l);
                    let wait = self.longest_wait(count, subject, i, wait, local_only);
                    return Err(limit.refuse(wait));
                }
            }
        }
        Ok(())
    }

    /// Charges `key` to the `dry_run` `limit`, counting it if over.
    pub(super) async fn dry_run(&self, limit: &Limit, key: u64) {
        if let (Some(_), _) = self.decide(limit, key).await {
            limit.limited.inc();
            tracing::debug!(limit = %limit.config.name, "over the rate limit (dry run)");
        }
    }

    /// Takes back what the enforced limits before index `refused` charged
    /// `subject` (they all accepted it, or `check` would have stopped
    /// there); `fell_back`: the Redis-backed ones the local limiter
    /// charged.
    async fn refund(
        &self,
        count: LimitCount,
        subject: &Subject<'_>,
        refused: usize,
        fell_back: &[usize],
    ) {
        for (i, limit) in self.limits[..refused].iter().enumerate() {
            if limit.config.dry_run {
                continue;
            }
            let Some(key) = limit.key(count, subject) else {
                continue;
            };
            let charged = if self.shared(limit) && !fell_back.contains(&i) {
                Charged::Redis
            } else {
                Charged::Local
            };
            self.refund_one(limit, key, charged).await;
        }
    }

    /// Takes back one charge of `key` from the budget that `charged` it.
    /// A refund Redis cannot take is lost (logged at debug): the budget
    /// stays one request shorter until it refills.
    pub(super) async fn refund_one(&self, limit: &Limit, key: u64, charged: Charged) {
        match (&self.redis, charged) {
            (Some(redis), Charged::Redis) => {
                if let Err(e) = shared::refund(redis, &limit.config, key).await {
                    tracing::debug!(limit = %limit.config.name, error = %e, "redis rate limit refund failed");
                }
            }
            _ => limit.local.refund(key),
        }
    }

    /// Whether `limit` is kept in Redis (when Redis answers).
    pub(super) fn shared(&self, limit: &Limit) -> bool {
        limit.config.backend == LimitBackend::Redis && self.redis.is_some()
    }

    /// Charges `key` to `limit`: `None` when allowed, else the wait until
    /// it would be; and which budget decided.
    async fn decide(&self, limit: &Limit, key: u64) -> (Option<Duration>, Charged) {
        if let (LimitBackend::Redis, Some(redis)) = (limit.config.backend, &self.redis) {
            match shared::check_all(redis, &[(&limit.config, key)]).await {
                Ok(verdict) => return (verdict.map(|(_, wait)| wait), Charged::Redis),
                Err(e) => {
                    tracing::debug!(limit = %limit.config.name, error = %e, "redis rate limit unavailable: local limit applies");
                }
            }
        }
        (limit.local.check(key), Charged::Local)
    }
}

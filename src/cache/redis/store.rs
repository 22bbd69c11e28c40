//! The operations on Redis behind [`RedisTier`](super::RedisTier): each
//! runs on the current connection within its time bound, through the
//! circuit breaker, and is counted and logged when it fails. Reads, writes
//! (object first, index entries after), unsafe-method invalidations,
//! purges through the indexes (a page's objects deleted, then its members
//! unindexed unless a write re-scored them meanwhile, see `index`; a
//! tag's objects checked for the tag, `edit`), publishes and the
//! path-index sweep.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::{RedisResult, Value};

use super::breaker::{Breaker, Permit};
use super::codec;
use super::conn::{not_connected, Backend, Conn};
use super::edit::{self, Change};
use super::failures::FailureLog;
use super::fleet::Fleet;
use super::index::{
    member, object_of_member, scored_members, Keys, PathRange, PAGE, SWEEP_GRACE_MS,
};
use crate::cache::entry::Object;
use crate::cache::freshness::now_millis;
use crate::cache::key::CacheKey;
use crate::cache::storage::{Selector, StorageError};
use crate::metrics::Metrics;

/// Work one sweep may do before yielding to the next interval.
const SWEEP_BUDGET: Duration = Duration::from_secs(2);

/// Time limits derived from `cache.redis.timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Request-path operations.
    pub(crate) timeout: Duration,
    /// Background operations, and each command's response timeout.
    pub(crate) write: Duration,
    /// One connect attempt to one node.
    pub(crate) connect: Duration,
}

impl Limits {
    pub(crate) fn new(timeout: Duration) -> Limits {
        Limits {
            timeout,
            write: timeout.max(Duration::from_secs(1)),
            connect: timeout.max(Duration::from_millis(250)),
        }
    }
}

/// What the background tasks share with the handle.
pub(crate) struct Core {
    pub(crate) keys: Keys,
    pub(crate) backend: Arc<Backend>,
    pub(crate) breaker: Breaker,
    pub(crate) metrics: Metrics,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) limits: Limits,
    /// Invalidations queued and not yet done: reading one is a miss.
    pub(crate) invalidating: super::pending::Pending,
    /// Failures logged at `warn` now and then.
    pub(crate) failure_log: FailureLog,
}

/// Whether an operation passes the breaker or is tried regardless (admin
/// purges), its outcome still recorded.
pub(super) enum Gate<'a> {
    Permit(Permit<'a>),
    Always,
}

impl Core {
    /// Runs `op` on the current connection within `bound`, records the
    /// outcome in the breaker and, on failure, counts and logs it.
    pub(super) async fn run<'a, T, F, Fut>(
        &'a self,
        what: &'static str,
        bound: Duration,
        gate: Gate<'a>,
        op: F,
    ) -> Result<T, StorageError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let Some(live) = self.backend.current() else {
            let err = not_connected();
            self.failed(what, gate, None, &err, started);
            return Err(err);
        };
        let result = match tokio::time::timeout(bound, op(live.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StorageError::Redis(e)),
            Err(_) => Err(StorageError::Timeout),
        };
        match &result {
            Ok(_) => match gate {
                Gate::Permit(p) => p.success(),
                Gate::Always => {
                    self.breaker.record(true);
                }
            },
            Err(err) => self.failed(what, gate, Some(live.generation), err, started),
        }
        result
    }

    fn failed(
        &self,
        what: &'static str,
        gate: Gate<'_>,
        generation: Option<u64>,
        err: &StorageError,
        started: Instant,
    ) {
        let opened = match gate {
            Gate::Permit(p) => p.failure(),
            Gate::Always => self.breaker.record(false),
        };
        if opened {
            // The error behind an opening says what is wrong (a cluster
            // node behind `mode = "standalone"` answers MOVED, a replica
            // READONLY); the rest are counted and logged at debug.
            tracing::warn!(op = what, error = %err, "redis: the failure that opened the circuit breaker");
        }
        if let Some(g) = generation {
            self.backend.failed(g, err);
        }
        self.metrics.redis_error();
        if !opened {
            self.failure_log.failed(what, err);
        }
        tracing::debug!(op = what, error = %err, elapsed_ms = started.elapsed().as_millis() as u64, "redis operation failed");
    }

    pub(super) fn permit(&self) -> Result<Gate<'_>, StorageError> {
        self.breaker
            .try_acquire()
            .map(Gate::Permit)
            .ok_or(StorageError::BreakerOpen)
    }

    /// A PING through the breaker (its probe while open), bounded by the
    /// write bound. In cluster mode `CLUSTER INFO` on a node instead,
    /// which must say `cluster_state:ok`: a live node answers PING while
    /// the cluster refuses every command (`CLUSTERDOWN`, a slot without a
    /// master), and the breaker would close on it every backoff.
    pub(crate) async fn ping(&self) -> Result<(), StorageError> {
        let gate = self.permit()?;
        self.run("ping", self.limits.write, gate, |mut c| async move {
            if matches!(c, Conn::Cluster(_)) {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await?;
                cluster_state_ok(&info)
            } else {
                redis::cmd("PING")
                    .query_async::<redis::Value>(&mut c)
                    .await
                    .map(drop)
            }
        })
        .await
    }

    /// Runs a Lua `script` on `keys` with integer arguments and an array
    /// of integers as its answer; request-path bound, through the breaker.
    pub(crate) async fn script(
        &self,
        what: &'static str,
        script: &redis::Script,
        keys: &[String],
        args: &[u64],
    ) -> Result<Vec<i64>, StorageError> {
        let gate = self.permit()?;
        self.run(what, self.limits.timeout, gate, |mut c| async move {
            let mut call = script.prepare_invoke();
            for key in keys {
                call.key(key);
            }
            call.arg(args).invoke_async(&mut c).await
        })
        .await
    }

    /// The payloads stored under `names`, in order (`None`: absent): one
    /// `GET`, or one `MGET` for several (`batch.rs`). Request-path bound,
    /// through the breaker, counted once.
    pub(super) async fn read_many(
        &self,
        names: &[String],
    ) -> Result<Vec<Option<Bytes>>, StorageError> {
        let gate = self.permit()?;
        self.run("get", self.limits.timeout, gate, |mut c| async move {
            if let [name] = names {
                let one: Option<Bytes> = redis::cmd("GET").arg(name).query_async(&mut c).await?;
                Ok(vec![one])
            } else {
                redis::cmd("MGET").arg(names).query_async(&mut c).await
            }
        })
        .await
    }

    /// The object in `payload`, read from Redis for `key`: `Ok(None)` when
    /// absent or another URL's (a hash collision); a corrupt entry is
    /// counted, logged and an error.
    pub(crate) fn decode(
        &self,
        payload: Option<Bytes>,
        key: &CacheKey,
    ) -> Result<Option<Arc<Object>>, StorageError> {
        let Some(payload) = payload else {
            return Ok(None);
        };
        match codec::decode_for(&payload, key) {
            Ok(object) => Ok(Some(Arc::new(object))),
            Err(codec::DecodeError::KeyMismatch { stored, .. }) => {
                tracing::debug!(key = %key, stored, "redis get: hash collision, treated as a miss");
                Ok(None)
            }
            // Written by a Strata of another entry format (a rolling
            // upgrade): a miss, whose fetch writes it anew; no fault.
            Err(codec::DecodeError::Version(version)) => {
                tracing::debug!(key = %key, version, "redis get: entry of another format version, treated as a miss");
                Ok(None)
            }
            Err(error) => {
                self.metrics.redis_error();
                self.failure_log.failed("get (corrupt entry)", &error);
                tracing::debug!(key = %key, %error, len = payload.len(), "redis get: corrupt entry, treated as a miss");
                Err(StorageError::Corrupt(error))
            }
        }
    }

    pub(crate) async fn put(&self, object: &Object, keep: Duration) -> Result<(), StorageError> {
        let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        if keep_ms == 0 {
            return Ok(());
        }
        let gate = self.permit()?;
        let payload = codec::encode(object).map_err(|error| {
            self.metrics.redis_error();
            tracing::debug!(key = %object.key, %error, "redis put: cannot encode");
            StorageError::Unencodable(error)
        })?;
        let write = self.keys.write(object, &payload, keep_ms, now_millis());
        drop(payload);
        self.run("put", self.limits.write, gate, |c| async move {
            // Detached, so that the time bound (or a caller going away)
            // never cuts between the object and its index: each command
            // is bounded by the connection's response timeout instead.
            tokio::spawn(write.run(c)).await.unwrap_or_else(|gone| {
                Err((
                    redis::ErrorKind::Io,
                    "redis write task ended",
                    gone.to_string(),
                )
                    .into())
            })
        })
        .await?;
        tracing::trace!(key = %object.key, keep_ms, "redis put");
        Ok(())
    }

    pub(crate) async fn invalidate(&self, key: &CacheKey) -> Result<(), StorageError> {
        let gate = self.permit()?;
        let message = self.fleet.encode(&Selector::Key(key.clone()), false);
        let (keys, channel) = (&self.keys, self.keys.channel());
        self.run("invalidate", self.limits.write, gate, |mut c| async move {
            unindex_and_delete(keys, &mut c, key).await?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async::<Value>(&mut c)
                .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn publish(
        &self,
        selector: &Selector,
        soft: bool,
        bound: Duration,
    ) -> Result<(), StorageError> {
        let message = self.fleet.encode(selector, soft);
        let channel = self.keys.channel();
        self.run("publish", bound, Gate::Always, |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async::<Value>(&mut c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Deletes what `selector` selects from Redis; returns how many objects.
    pub(crate) async fn purge_redis(
        &self,
        selector: &Selector,
        bound: Duration,
    ) -> Result<u64, StorageError> {
        let keys = &self.keys;
        self.run("purge", bound, Gate::Always, |c| async move {
            match selector {
                Selector::Key(k) => {
                    let mut c = c;
                    unindex_and_delete(keys, &mut c, k).await
                }
                Selector::PathAnyHost(path) => purge_paths(keys, c, PathRange::Exact(path)).await,
                Selector::Prefix(prefix) => purge_paths(keys, c, PathRange::Prefix(prefix)).await,
                Selector::Tags(tags) => {
                    let mut total = 0;
                    for tag in tags.iter().collect::<BTreeSet<_>>() {
                        total += purge_tag(&keys.tag(tag), selector, c.clone()).await?;
                    }
                    Ok(total)
                }
            }
        })
        .await
    }

    /// Removes path-index members whose objects expired (with a grace
    /// period for clock skew), and deletes tag sets whose every member
    /// expired; returns how many path members went. Bounded work: stops after
    /// [`SWEEP_BUDGET`] or the first error.
    pub(crate) async fn sweep(&self) -> Result<u64, StorageError> {
        let started = Instant::now();
        let before = now_millis().saturating_sub(SWEEP_GRACE_MS);
        let mut removed = 0u64;
        while started.elapsed() < SWEEP_BUDGET {
            let gate = self.permit()?;
            let cmd = self.keys.paths_sweep(before);
            let n: u64 = self
                .run("sweep", self.limits.write, gate, |mut c| async move {
                    cmd.query_async(&mut c).await
                })
                .await?;
            removed += n;
            if n < PAGE as u64 {
                break;
            }
        }
        // Tag sets whose newest member expired: deleted, then unregistered
        // (they have no expiry of their own; see `index`).
        let mut dropped = 0u64;
        while started.elapsed() < SWEEP_BUDGET {
            let gate = self.permit()?;
            let keys = &self.keys;
            let (read, gone) = self
                .run("sweep", self.limits.write, gate, |mut c| async move {
                    super::eviction::sweep_tag_sets(keys, &mut c, before).await
                })
                .await?;
            dropped += gone;
            if read < PAGE {
                break;
            }
        }
        if removed > 0 || dropped > 0 {
            tracing::debug!(
                removed,
                tag_sets = dropped,
                "redis indexes: swept expired members"
            );
        }
        Ok(removed)
    }
}

/// Unindexes one object, then deletes it (an index member without its
/// object is harmless, see `index`); answers how many objects went.
async fn unindex_and_delete(keys: &Keys, c: &mut Conn, key: &CacheKey) -> RedisResult<u64> {
    let object_key = keys.object(key);
    keys.paths_remove(&[Bytes::from(member(key.path(), &object_key))])
        .query_async::<Value>(c)
        .await?;
    Keys::delete(object_key.as_bytes())
        .query_async::<u64>(c)
        .await
}

/// Deletes objects named by `members` (path-index members or plain object
/// keys), one command per key so cluster mode never crosses slots.
/// `Ok` when a `CLUSTER INFO` reply (`field:value` lines) says
/// `cluster_state:ok`, else a `CLUSTERDOWN` error naming the state.
fn cluster_state_ok(info: &str) -> RedisResult<()> {
    let state = info
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("cluster_state:"));
    match state {
        Some("ok") => Ok(()),
        other => Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
            "CLUSTER INFO: the cluster cannot serve",
            format!("cluster_state:{}", other.unwrap_or("(missing)")),
        ))),
    }
}

async fn delete_objects(c: &Conn, objects: impl Iterator<Item = &[u8]>) -> RedisResult<u64> {
    let deleted = try_join_all(objects.map(|key| {
        let mut c = c.clone();
        let cmd = Keys::delete(key);
        async move { cmd.query_async::<u64>(&mut c).await }
    }))
    .await?;
    Ok(deleted.iter().sum())
}

/// Pages through `range` of the path index, deleting then unindexing:
/// a page whose deletes fail (a Cluster slot in migration answering
/// `ASK`, a timeout) stays indexed, so a later purge still finds its
/// objects (unindexed first, they were left in Redis where no path or
/// prefix purge could reach them). A member stored again meanwhile keeps
/// its place (see `index`).
async fn purge_paths(keys: &Keys, mut c: Conn, range: PathRange<'_>) -> RedisResult<u64> {
    let page = keys.paths_page_scored(range);
    let mut total = 0;
    loop {
        let scored: Vec<Bytes> = page.query_async(&mut c).await?;
        if scored.is_empty() {
            break;
        }
        let objects = scored_members(&scored).filter_map(|m| object_of_member(m));
        total += delete_objects(&c, objects).await?;
        let removed: u64 = keys
            .paths_remove_unchanged(&scored)
            .query_async(&mut c)
            .await?;
        // A short page was the last; a full one that lost nothing (each
        // member stored again meanwhile) would be read again as it is.
        if scored.len() / 2 < PAGE || removed == 0 {
            break;
        }
    }
    Ok(total)
}

/// Pages through one tag set: from each member's object it takes the
/// variants `selector` (tags) selects, checked against what the object
/// holds now (`edit`), then unindexes the page, but for a member stored
/// again meanwhile (see `index`); a member whose object was stored again
/// without the tag only leaves the index. Returns how many objects lost
/// variants (or went).
async fn purge_tag(tag_key: &str, selector: &Selector, mut c: Conn) -> RedisResult<u64> {
    let page = Keys::tag_page_scored(tag_key);
    let mut total = 0;
    loop {
        let scored: Vec<Bytes> = page.query_async(&mut c).await?;
        if scored.is_empty() {
            break;
        }
        // Objects first, then the index (as `purge_paths`): a page that
        // fails stays indexed for the next purge.
        let purged = |o: &Object| match selector.purged(o) {
            Some(left) => Change::Write(left),
            None => Change::None,
        };
        let members: Vec<&Bytes> = scored_members(&scored).collect();
        total += edit::apply_all(&c, &members, true, purged).await?;
        let removed: u64 = Keys::tag_remove_unchanged(tag_key, &scored)
            .query_async(&mut c)
            .await?;
        if members.len() < PAGE || removed == 0 {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Black-box finding F3: the cluster-mode probe reads the state, not
    /// just an answer.
    #[test]
    fn the_cluster_probe_reads_cluster_state() {
        let ok = "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n";
        assert!(cluster_state_ok(ok).is_ok());
        let down =
            "cluster_state:fail\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:10923\r\n";
        let err = cluster_state_ok(down).unwrap_err();
        assert_eq!(
            err.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
        );
        assert!(err.to_string().contains("cluster_state:fail"), "{err}");
        assert!(cluster_state_ok("cluster_enabled:1\r\n").is_err());
        assert!(cluster_state_ok("").is_err());
    }
}

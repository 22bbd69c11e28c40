//! The shared Redis tier: objects shared by every instance of a fleet,
//! fleet-wide purges, and graceful degradation when Redis is slow or down.
//!
//! - [`RedisTier::start`] never fails and never waits: the connection is made
//!   in the background (`conn`); until it exists every operation is a fast
//!   miss.
//! - Reads ([`RedisTier::get`]) are bounded by `cache.redis.timeout` and go
//!   through a circuit breaker (`breaker`); every failure is a miss,
//!   logged at debug and counted in `strata_redis_errors_total`.
//! - Writes ([`RedisTier::put_background`]) are queued (bounded by
//!   `write_queue`, dropped and counted when full) and written off the request
//!   path by worker tasks: the object ([`codec`]) with `SET .. PX keep`, then
//!   its path and tag index entries (`index`).
//! - Purges ([`RedisTier::purge`]) delete the selected objects through the
//!   indexes (a tag's objects read and checked for the tag, per variant:
//!   `edit`), then publish the selector on `{prefix}purge`; every instance
//!   forwards other instances' purges to its memory tier (`fleet`). Soft
//!   purges ([`RedisTier::soft_purge`]) mark the objects stale instead
//!   (`soft`) and are published the same way.
//!
//! - Reads of a key whose invalidation is queued and not yet done are
//!   misses (`pending`).
//!
//! Operation bounds: reads `timeout`; writes, unsafe-method invalidations
//! and their cascades (all in the background, never waited for by the
//! request) and publishes `max(timeout, 1 s)`; a purge at most 5 s in all. Every
//! operation (`store`) runs on the current connection within its bound,
//! through the breaker, and is counted and logged when it fails.
//!
//! Needs a tokio runtime: `start` spawns the connector, the subscriber, the
//! index sweeper, the breaker's prober and the write workers. They stop
//! when the last clone of the tier is dropped (the write workers after
//! draining their queues).

mod backoff;
mod batch;
mod breaker;
pub mod codec;
mod conn;
mod edit;
mod eviction;
mod failures;
mod fleet;
mod hot;
mod index;
mod inspect;
mod pending;
mod received;
mod soft;
mod store;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError, UnboundedSender};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::breaker::Breaker;
use self::conn::Backend;
use self::fleet::Fleet;
use self::index::Keys;
use self::store::Core;
pub(crate) use self::store::Limits;
use super::entry::Object;
use super::key::CacheKey;
use super::storage::{Invalidation, Selector, StorageError};
use crate::alerts::Alerts;
use crate::config::RedisConfig;
use crate::metrics::Metrics;

/// Upper bound of one purge, Redis deletes and publish together.
pub const PURGE_CAP: Duration = Duration::from_secs(5);
/// Write workers; a key always goes to the same one, so writes and
/// invalidations of one URL stay in order.
const LANES: usize = 4;
/// How often each instance sweeps expired members out of the path index.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

enum Job {
    /// Kept for the duration; queued after that many fleet purges.
    Put(Arc<Object>, Duration, u64),
    Invalidate(CacheKey),
    /// One sampled hit on the object (popularity, `hot`).
    Hit(Arc<Object>),
    /// Answered once every job queued before it on its lane is done.
    Barrier(oneshot::Sender<()>),
}

/// The shared Redis tier. Cheap to clone: clones share one connection,
/// breaker, write queue and subscription.
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    /// The queue to the read batcher (`batch`).
    reads: batch::Reads,
    lanes: Vec<mpsc::Sender<Job>>,
    /// Slots for [`RedisTier::purge_background`].
    background: Arc<tokio::sync::Semaphore>,
    /// Slots for [`RedisTier::purge_behind_queued_writes`].
    behind: Arc<tokio::sync::Semaphore>,
    _stop: DropGuard,
}

/// One write worker: drains its queue until every sender is gone.
async fn run_lane(core: Arc<Core>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.recv().await {
        // Failures are counted and logged inside; a lost write is a miss.
        match job {
            Job::Put(object, keep, queued) => core.put_unless_purged(&object, keep, queued).await,
            Job::Invalidate(key) => {
                let _ = core.invalidate(&key).await;
                core.invalidating.end(key.hash());
            }
            Job::Hit(object) => {
                let _ = core.count_hit(&object.key).await;
            }
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

async fn run_sweeper(core: Arc<Core>, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                // Failures are counted and logged inside.
                let _ = core.sweep().await;
            }
        }
    }
}

/// Probes Redis while the breaker is open, so that it closes about one
/// backoff after Redis returns even when no request comes to try (an
/// instance used for admin purges, or idle: its purges would skip Redis and
/// the fleet, and `/health` would report Redis down, until traffic came).
/// A PING through the breaker each [`breaker::REPROBE`] while it is open,
/// which is let through only once the backoff has passed; nothing while it
/// is closed but a tick a second.
async fn run_prober(core: Arc<Core>, stop: CancellationToken) {
    loop {
        let every = if core.breaker.is_open() {
            breaker::REPROBE
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if core.breaker.is_open() {
            // Failures are counted and logged inside.
            let _ = core.ping().await;
        }
    }
}

/// A fleet-unique id for this tier instance (so it can ignore its own
/// purge messages).
fn instance_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}-{}", h.finish(), std::process::id())
}

impl RedisTier {
    /// Starts the tier. Never fails because Redis is down: it connects in
    /// the background and keeps trying; until then every operation is a
    /// fast miss. Must be called inside a tokio runtime (outside one the
    /// tier stays off and says so in the log). Purges received from other
    /// instances go to `invalidations`.
    pub fn start(
        config: &RedisConfig,
        metrics: Metrics,
        alerts: Alerts,
        invalidations: UnboundedSender<Invalidation>,
    ) -> RedisTier {
        let limits = Limits::new(config.timeout);
        // The database of the data nodes: the first URL's (sentinel mode
        // passes it on to the master; a cluster has only 0).
        let db = config
            .urls
            .first()
            .and_then(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str()).ok())
            .map_or(0, |info| info.redis_settings().db());
        let keys = Keys::new(&config.key_prefix, db);
        let fleet = Arc::new(Fleet::new(
            instance_id(),
            keys.channel().to_string(),
            invalidations,
        ));
        let core = Arc::new(Core {
            keys,
            backend: Arc::new(Backend::new(config.mode)),
            breaker: Breaker::new(
                config.breaker_threshold,
                config.breaker_backoff,
                metrics.clone(),
                alerts,
            ),
            metrics,
            fleet,
            limits,
            invalidating: Default::default(),
            failure_log: Default::default(),
        });
        let stop = CancellationToken::new();
        let mut lanes = Vec::with_capacity(LANES);
        let mut reads = batch::Reads::off();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                reads = batch::Reads::start(core.clone(), &rt);
                rt.spawn(conn::run_connector(
                    config.clone(),
                    limits,
                    core.backend.clone(),
                    stop.clone(),
                ));
                rt.spawn(fleet::run_subscriber(
                    config.clone(),
                    core.clone(),
                    stop.clone(),
                ));
                rt.spawn(run_sweeper(core.clone(), stop.clone()));
                rt.spawn(run_prober(core.clone(), stop.clone()));
                let per_lane = config.write_queue.max(1).div_ceil(LANES);
                for _ in 0..LANES {
                    let (tx, rx) = mpsc::channel(per_lane);
                    rt.spawn(run_lane(core.clone(), rx));
                    lanes.push(tx);
                }
            }
            Err(_) => tracing::error!(
                "RedisTier::start called outside a tokio runtime; the Redis tier stays off"
            ),
        }
        tracing::info!(
            mode = config.mode.as_str(),
            urls = ?config
                .urls
                .iter()
                .map(|u| crate::telemetry::without_credentials(u))
                .collect::<Vec<_>>(),
            instance = core.fleet.id(),
            timeout_ms = config.timeout.as_millis() as u64,
            "redis tier starting (connecting in the background)"
        );
        RedisTier {
            inner: Arc::new(Inner {
                core,
                reads,
                lanes,
                background: Arc::new(tokio::sync::Semaphore::new(pending::MAX_BACKGROUND_PURGES)),
                behind: Arc::new(tokio::sync::Semaphore::new(pending::MAX_BACKGROUND_PURGES)),
                _stop: stop.drop_guard(),
            }),
        }
    }

    /// The object stored under `key`; `Ok(None)` is a miss. Bounded by
    /// `timeout`. Errors, timeouts and an open breaker are `Err`: the
    /// caller treats them as a miss. Failures other than
    /// [`StorageError::BreakerOpen`] are logged at debug and counted.
    /// Concurrent reads of different URLs share one `MGET` (`batch`); a
    /// URL whose invalidation is queued reads as a miss (`pending`).
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Object>>, StorageError> {
        let core = &self.inner.core;
        if core.invalidating.contains(key) {
            return Ok(None);
        }
        let payload = self.inner.reads.read(core.keys.object(key)).await?;
        let object = core.decode(payload, key)?;
        // A pending tag invalidation is known by the object's tags.
        Ok(object.filter(|o| !core.invalidating.selects(o)))
    }

    /// Queues `object` to be written, kept for `keep`; never blocks. A full
    /// queue drops the write and counts it (`strata_redis_dropped_writes_total`);
    /// while the breaker is open the write is skipped.
    pub fn put_background(&self, object: Arc<Object>, keep: Duration) {
        let purges = self.inner.core.fleet.received.count();
        self.enqueue(object.key.hash(), Job::Put(object, keep, purges));
    }

    /// Writes `object` now and waits for it (bounded by `max(timeout, 1 s)`).
    /// For callers that need the write done; the request path uses
    /// [`RedisTier::put_background`].
    pub async fn put_now(&self, object: Arc<Object>, keep: Duration) -> Result<(), StorageError> {
        self.inner.core.put(&object, keep).await
    }

    /// Waits until every write and invalidation queued before this call has
    /// been done (or failed), at most `within`; false if that ran out. For
    /// shutdown (let queued writes land) and tests.
    pub async fn flush(&self, within: Duration) -> bool {
        let lanes = &self.inner.lanes;
        let all = async {
            let mut done = Vec::with_capacity(lanes.len());
            for lane in lanes {
                let (tx, rx) = oneshot::channel();
                if lane.send(Job::Barrier(tx)).await.is_err() {
                    return false;
                }
                done.push(rx);
            }
            for rx in done {
                if rx.await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(within, all).await.unwrap_or(false)
    }

    /// Deletes what `selector` selects from Redis (and this instance's
    /// queued writes of it, `received`) and tells the fleet; returns how
    /// many objects went from Redis. Tried even while the breaker is open;
    /// bounded by [`PURGE_CAP`] in all; the first error is returned.
    pub async fn purge(&self, selector: &Selector) -> Result<u64, StorageError> {
        let core = &self.inner.core;
        core.fleet.received.record(selector);
        let publish_bound = core.limits.write.min(PURGE_CAP / 5);
        let deleted = core.purge_redis(selector, PURGE_CAP - publish_bound).await;
        let published = core.publish(selector, false, publish_bound).await;
        match (&deleted, published) {
            (Ok(n), Ok(())) => {
                tracing::debug!(selector = ?selector, deleted = n, "redis purge");
                Ok(*n)
            }
            (Ok(_), Err(e)) => Err(e),
            (Err(_), _) => deleted,
        }
    }

    /// Soft purge: marks what `selector` selects as stale in Redis (see
    /// `soft`) and tells the fleet; returns how many objects were marked.
    /// Bounds and errors as [`RedisTier::purge`].
    pub async fn soft_purge(&self, selector: &Selector) -> Result<u64, StorageError> {
        let core = &self.inner.core;
        core.fleet.received.record(selector);
        let publish_bound = core.limits.write.min(PURGE_CAP / 5);
        let marked = core
            .soft_purge_redis(selector, PURGE_CAP - publish_bound)
            .await;
        let published = core.publish(selector, true, publish_bound).await;
        match (&marked, published) {
            (Ok(n), Ok(())) => {
                tracing::debug!(selector = ?selector, marked = n, "redis soft purge");
                Ok(*n)
            }
            (Ok(_), Err(e)) => Err(e),
            (Err(_), _) => marked,
        }
    }

    /// Up to `limit` objects `selector` selects, read without changing
    /// them (for `GET /cache`); bounded by [`PURGE_CAP`], tried even while
    /// the breaker is open.
    pub async fn find(
        &self,
        selector: &Selector,
        limit: usize,
    ) -> Result<Vec<Arc<Object>>, StorageError> {
        self.inner.core.find_redis(selector, limit, PURGE_CAP).await
    }

    /// Invalidation after an unsafe method (RFC 9111 §4.4): deletes the
    /// key's object in Redis and tells the fleet. Queued like a write (same
    /// worker as the key's writes, so they stay in order); never blocks.
    /// Until the worker has done it, this instance reads the key as a miss
    /// (`pending`); a dropped invalidation (full queue, open breaker) is a
    /// lost write like any other.
    pub fn invalidate_background(&self, key: CacheKey) {
        let hash = key.hash();
        let pending = &self.inner.core.invalidating;
        pending.begin(hash);
        if !self.enqueue(hash, Job::Invalidate(key)) {
            pending.end(hash);
        }
    }

    /// Counts one sampled hit on `object` in the fleet's popularity set,
    /// off the request path (queued like a write; dropped when the queue
    /// is full or the breaker open).
    pub fn count_hit(&self, object: Arc<Object>) {
        let hash = object.key.hash();
        self.enqueue(hash, Job::Hit(object));
    }

    /// The `n` most requested URLs of the fleet (sampled hits), most
    /// requested first.
    pub async fn hot(&self, n: usize) -> Result<Vec<String>, StorageError> {
        self.inner.core.hot(n).await
    }

    /// Sweeps index entries of expired objects out of the path index now
    /// (every instance also does so every minute); returns how many went.
    pub async fn sweep_index(&self) -> Result<u64, StorageError> {
        self.inner.core.sweep().await
    }

    /// Runs a Lua `script` atomically on the keys `P{suffix}` (`P` =
    /// `key_prefix`) with integer arguments, answering an array of
    /// integers. Bounded by `timeout` and gated by the breaker like a read:
    /// any failure is an `Err` for the caller to fall back on. In cluster
    /// mode every key must be in one hash slot (else Redis answers
    /// `CROSSSLOT`; see [`RedisTier::is_cluster`]). Used by the fleet-wide
    /// rate limits.
    pub async fn run_script(
        &self,
        what: &'static str,
        script: &redis::Script,
        key_suffixes: &[String],
        args: &[u64],
    ) -> Result<Vec<i64>, StorageError> {
        let core = &self.inner.core;
        let keys: Vec<String> = key_suffixes.iter().map(|s| core.keys.other(s)).collect();
        core.script(what, script, &keys, args).await
    }

    /// Whether the tier is a Redis Cluster (`mode = "cluster"`), where one
    /// script cannot take keys of different hash slots.
    pub fn is_cluster(&self) -> bool {
        self.inner.core.backend.mode() == crate::config::RedisMode::Cluster
    }

    /// The bound of one read ([`RedisTier::get`]): `cache.redis.timeout`.
    pub fn read_timeout(&self) -> Duration {
        self.inner.core.limits.timeout
    }

    /// Whether an invalidation that may select `key` is queued or under
    /// way (reads of `key` are misses meanwhile; for tests and inspection).
    pub fn invalidation_pending(&self, key: &CacheKey) -> bool {
        self.inner.core.invalidating.contains(key)
    }

    /// Whether the circuit breaker is open (Redis being skipped).
    pub fn breaker_open(&self) -> bool {
        self.inner.core.breaker.is_open()
    }

    /// Whether a data connection exists (it may still be failing).
    pub fn is_connected(&self) -> bool {
        self.inner.core.backend.is_connected()
    }

    /// Whether this instance is subscribed to the fleet's purge channel
    /// now (false until the first subscription, and while it is lost).
    pub fn is_subscribed(&self) -> bool {
        self.inner.core.fleet.is_subscribed()
    }

    /// This instance's id on the purge channel.
    pub fn instance_id(&self) -> &str {
        self.inner.core.fleet.id()
    }

    /// The Redis key holding `key`'s object (for tools and tests).
    pub fn object_key(&self, key: &CacheKey) -> String {
        self.inner.core.keys.object(key)
    }

    /// Queues `job` on `hash`'s lane; `false` when it was skipped (breaker
    /// open) or dropped (queue full).
    fn enqueue(&self, hash: u128, job: Job) -> bool {
        let core = &self.inner.core;
        if core.breaker.is_open() {
            return false;
        }
        let Some(lane) = self.inner.lanes.get((hash % LANES as u128) as usize) else {
            core.metrics.redis_dropped_write();
            return false;
        };
        match lane.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                core.metrics.redis_dropped_write();
                tracing::debug!("redis write queue full: write dropped");
                false
            }
        }
    }
}

//! The RFC 9111 shared cache.
//!
//! - `cache/key.rs`: primary keys (scheme, authority, path and query).
//! - `cache/entry.rs`: stored objects, variants (Vary) and representations;
//!   `fields.rs`: header sections read back from Redis, parsed when read.
//! - `cache/directives.rs`: Cache-Control parsing.
//! - `cache/freshness.rs`: storability, freshness, age, reuse decisions;
//!   `http_date.rs`: HTTP-date parsing.
//! - `cache/storage.rs`: the tier seam; `memory.rs` (moka) and `redis.rs`
//!   (the shared tier: codec, breaker, connections, fleet purge, indexes).
//! - `cache/arena.rs`: mid-sized bodies in shared memory, sent with
//!   `sendfile`; `large.rs`: bodies of 1 MiB and more in mappings of their
//!   own, unmapped when evicted.
//! - `cache/collapse.rs`: collapsed forwarding of concurrent misses, and
//!   of concurrent Redis reads of one URL ([`Cache::lookup`]).
//! - `cache/refresh.rs`: when a stored copy is refreshed in the background
//!   (refresh-ahead's hit count, the back-off after a failed refresh).
//! - `cache/tags.rs`: surrogate keys.
//! - `cache/reads.rs`: reads of the Redis tier for this cache: coalesced
//!   lookups, and copies promoted into memory unless a purge overlapped.
//! - `cache/purge.rs`: admin purges (hard, soft, cascades), invalidation
//!   after unsafe methods, and inspection of what a purge would select.

#[allow(unsafe_code)]
pub mod arena;
pub mod budget;
pub mod collapse;
pub mod directives;
pub mod entry;
pub mod fields;
pub mod freshness;
pub mod http_date;
pub mod key;
#[allow(unsafe_code)]
pub mod large;
pub mod memory;
pub mod purge;
mod reads;
pub mod redis;
pub mod refresh;
pub mod storage;
pub mod tags;
pub mod vary;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use self::redis::RedisTier;
use crate::alerts::Alerts;
use crate::config::CacheConfig;
use crate::metrics::Metrics;
use budget::Budget;
use collapse::Collapser;
use entry::{Object, Variant};
use freshness::now_millis;
use key::CacheKey;
use memory::MemoryTier;
pub use purge::{Purge, PurgeError, Purged};
use storage::Invalidation;

/// Where a hit came from: the `detail=` of a `Cache-Status` hit and the
/// `tier` label of `strata_cache_hits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
        }
    }
}

/// How long a URL whose response was not storable skips the collapse lock
/// (Varnish's "hit-for-miss"): later requests go straight upstream in
/// parallel instead of queueing behind one another. A storable response
/// clears the mark.
const PASS_TTL: Duration = Duration::from_secs(60);

/// One hit in this many is counted in the fleet's popularity set (for
/// `[warming] redis_hot`), so that the hit path pays a thread-local
/// increment and, rarely, one queue send.
pub const HIT_SAMPLE: u32 = 64;

thread_local! {
    /// Hits seen by this worker thread (sampling; no shared cache line).
    static HITS: Cell<u32> = const { Cell::new(0) };
}

/// The cache: tiers, collapse locks and pass marks. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// Why a URL is hit-for-miss (Varnish's term): what a later answer must
/// show to lift the mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassMark {
    /// Its answer was not storable (`no-store`, `private`, an error, ...):
    /// any answer that would be stored lifts it.
    Uncacheable,
    /// Its body, of unknown length, outgrew `max_object_size`: its fields
    /// looked storable, so only an answer whose `Content-Length` fits
    /// lifts it (else every other request would collect it again).
    Oversize,
}

struct Inner {
    memory: MemoryTier,
    /// The shared tier, when `[cache.redis]` is configured.
    redis: Option<RedisTier>,
    collapser: Arc<Collapser>,
    /// Redis reads in flight, one per URL, shared by concurrent lookups.
    redis_reads: Arc<Collapser>,
    pass: memory::Cache<PassMark>,
    metrics: Metrics,
    /// Popularity sampling on (Redis configured and `redis_hot` set).
    track_hits: AtomicBool,
    /// Bodies waiting for (or in) admission encoding.
    encoding_backlog: Arc<Budget>,
    /// Bodies being collected from their upstream for admission.
    collecting: Arc<Budget>,
    /// Fetches that go on after their client left ([`CLIENTLESS`]).
    clientless: Arc<tokio::sync::Semaphore>,
}

/// Misses that may go on fetching at once after their client left before
/// the response head (`proxy/fetch.rs`): past it, such a fetch stops as
/// it did before, so that clients that ask and leave cannot start
/// unbounded upstream work.
pub const CLIENTLESS: usize = 64;

const MIN_ENCODING_BACKLOG: u64 = 4 << 20;
const MAX_ENCODING_BACKLOG: u64 = 16 << 20;
const MIN_COLLECTING: u64 = 8 << 20;
const MAX_COLLECTING: u64 = 32 << 20;
/// How long the collecting budget keeps room for a body it refused
/// (`cache/budget.rs`): long enough for a popular URL's next request.
const KEEP_ROOM: Duration = Duration::from_secs(1);

impl Cache {
    /// Builds the tiers; with Redis configured, also starts the fleet
    /// listener that applies other instances' purges to this memory tier.
    /// Must run inside a tokio runtime.
    pub fn new(config: &CacheConfig, metrics: Metrics, alerts: Alerts) -> Cache {
        let memory = MemoryTier::new(config.memory_capacity);
        let redis = config.redis.as_ref().map(|r| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Invalidation>();
            let listener = memory.clone();
            let tier = RedisTier::start(r, metrics.clone(), alerts, tx);
            // Weak: the tier's fleet holds this channel's sender, so a
            // strong handle here would keep the tier (and its tasks) alive
            // for ever.
            let own = tier.downgrade();
            tokio::spawn(async move {
                while let Some(Invalidation {
                    selector,
                    soft,
                    purge,
                }) = rx.recv().await
                {
                    let n = if soft {
                        listener.mark_stale(&selector)
                    } else {
                        listener.purge_now(&selector)
                    };
                    tracing::debug!(?selector, soft, entries = n, "fleet invalidation applied");
                    // A write of ours that landed in Redis after the purging
                    // instance deleted there, before its message reached
                    // us, is deleted again. Not for one URL (an unsafe
                    // request's invalidation, every write of the fleet:
                    // the repeat would cost each instance a flush and a
                    // scan per write), nor a soft purge (it would mark the
                    // copies the fleet revalidated meanwhile).
                    let broad = !matches!(selector, storage::Selector::Key(_));
                    if purge && !soft && broad {
                        if let Some(own) = own.upgrade() {
                            own.repeat_behind_queued_writes(selector, soft);
                        }
                    }
                }
            });
            tier
        });
        Cache {
            inner: Arc::new(Inner {
                memory,
                redis,
                collapser: Collapser::new(),
                redis_reads: Collapser::new(),
                pass: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(PASS_TTL)
                    .build_with_hasher(Default::default()),
                metrics,
                track_hits: AtomicBool::new(false),
                clientless: Arc::new(tokio::sync::Semaphore::new(CLIENTLESS)),
                encoding_backlog: Budget::new(
                    (config.memory_capacity / 8).clamp(MIN_ENCODING_BACKLOG, MAX_ENCODING_BACKLOG)
                        as usize,
                ),
                collecting: Budget::keeping_room(
                    (config.memory_capacity / 4).clamp(MIN_COLLECTING, MAX_COLLECTING) as usize,
                    KEEP_ROOM,
                ),
            }),
        }
    }

    /// Bodies that may wait for admission encoding or be encoded at once:
    /// an eighth of `memory_capacity`, between 4 and 16 MiB. A waiting body
    /// may already be evicted, so this is memory beyond the tier's; past it
    /// an object is stored without encodings.
    pub fn encoding_backlog(&self) -> &Arc<Budget> {
        &self.inner.encoding_backlog
    }

    /// Bodies that may be collected from their upstreams for admission at
    /// once: a quarter of `memory_capacity`, between 8 and 32 MiB (one body
    /// of any size when no other is). A body is memory beyond the tier's
    /// until it is admitted, and until the client it was fetched for has
    /// taken it (a lagging client may hold it after its eviction); past
    /// the budget a miss streams through
    /// without being stored. Before it, a burst of concurrent large misses
    /// held all their bodies at once: 16 clients fetching 1 KiB–16 MiB
    /// objects through a 32 MiB tier peaked at 123 MiB (SPEC §10's bound:
    /// 104), and more clients held more.
    pub fn collecting(&self) -> &Arc<Budget> {
        &self.inner.collecting
    }

    pub fn memory(&self) -> &MemoryTier {
        &self.inner.memory
    }

    pub fn collapser(&self) -> &Arc<Collapser> {
        &self.inner.collapser
    }

    /// Permits for fetches whose client left ([`CLIENTLESS`]).
    pub fn clientless(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.clientless
    }

    /// Redis reads in flight, shared by concurrent lookups of one URL
    /// (see [`Cache::lookup`]); `waiting()` counts the lookups sharing one.
    pub fn redis_reads(&self) -> &Arc<Collapser> {
        &self.inner.redis_reads
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Looks the URL up in memory (no allocation on a hit), then in Redis
    /// (bounded by its timeout; an error is a miss; see
    /// [`Cache::read_redis`]). A Redis hit is promoted into memory.
    pub async fn lookup(
        &self,
        hash: u128,
        https: bool,
        authority: &str,
        path: &str,
    ) -> Option<(Arc<Object>, Tier)> {
        if let Some(o) = self.inner.memory.lookup(hash, https, authority, path) {
            return Some((o, Tier::Memory));
        }
        let redis = self.inner.redis.as_ref()?;
        let key = CacheKey::new(https, authority, path);
        // Boxed: this future is part of every request's (see
        // `Shared::handle`); a memory hit never gets here.
        Box::pin(self.read_redis(redis, key))
            .await
            .map(|o| (o, Tier::Redis))
    }

    /// Turns popularity sampling (for `[warming] redis_hot`) on or off; it
    /// stays off without Redis.
    pub fn set_track_hits(&self, on: bool) {
        let on = on && self.inner.redis.is_some();
        self.inner.track_hits.store(on, Ordering::Relaxed);
    }

    /// A hit on `object`: one in [`HIT_SAMPLE`] is queued to the fleet's
    /// popularity set. Costs one relaxed load when sampling is off.
    pub fn sample_hit(&self, object: &Arc<Object>) {
        if !self.inner.track_hits.load(Ordering::Relaxed) {
            return;
        }
        let n = HITS.with(|h| {
            let n = h.get().wrapping_add(1);
            h.set(n);
            n
        });
        if n.is_multiple_of(HIT_SAMPLE) {
            if let Some(redis) = &self.inner.redis {
                redis.count_hit(object.clone());
            }
        }
    }

    /// The fleet's `n` most requested URLs. Waits (at most `connect`) for
    /// the Redis connection, which a just-started instance makes in the
    /// background. Without Redis: empty.
    pub async fn hot_urls(
        &self,
        n: usize,
        connect: Duration,
    ) -> Result<Vec<String>, storage::StorageError> {
        let Some(redis) = &self.inner.redis else {
            return Ok(Vec::new());
        };
        let deadline = tokio::time::Instant::now() + connect;
        while !redis.is_connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis.hot(n).await
    }

    /// The removal count now: read when a fetch for the cache begins, and
    /// given to [`Cache::admit`] with its response.
    pub fn removal_epoch(&self) -> u64 {
        self.inner.memory.removal_epoch()
    }

    /// Admits `variant` of `key` to memory now and to Redis in the
    /// background: added to what memory holds for the URL at that moment
    /// (`base`, the URL's object as the fetch saw it, when memory holds
    /// nothing), so variants admitted concurrently are all kept
    /// ([`MemoryTier::promote_variant`]). Not
    /// when its URL was removed (purged, invalidated after an unsafe
    /// request) since `since`, the [`Cache::removal_epoch`] when its fetch
    /// began: the response may have left the origin before the purge or
    /// the write, and storing it would undo them. Such a response is
    /// served to the requests that overlapped the removal, not stored.
    /// Returns the object stored, or `None`.
    pub fn admit(
        &self,
        key: &CacheKey,
        base: Option<&Object>,
        variant: &Arc<Variant>,
        since: u64,
    ) -> Option<Arc<Object>> {
        let stored = self.admit_memory(key, base, variant, since)?;
        self.write_behind(&stored);
        Some(stored)
    }

    /// Queues `object` for Redis (when configured), kept as long as its
    /// longest-lived variant may be used.
    fn write_behind(&self, object: &Arc<Object>) {
        if let Some(redis) = &self.inner.redis {
            let keep = Duration::from_secs(object.keep_secs(now_millis()));
            redis.put_background(object.clone(), keep);
        }
    }

    /// Makes `variant` visible in memory at once, before its encoded
    /// representations exist, on the terms of [`Cache::admit`];
    /// [`Cache::complete`] follows with them and the same `since`.
    pub fn admit_memory(
        &self,
        key: &CacheKey,
        base: Option<&Object>,
        variant: &Arc<Variant>,
        since: u64,
    ) -> Option<Arc<Object>> {
        self.inner.pass.invalidate(&key.hash());
        let built = Arc::new(Object::adding(base, key, variant.clone()));
        self.inner.memory.promote_variant(&built, variant, since)
    }

    /// Completes what [`Cache::admit_memory`] stored with `variant` (the
    /// same response with its encoded representations) and writes the
    /// result to Redis, unless it was purged or superseded by another
    /// response in between (a purge is never undone). A copy of the same
    /// response that replaced it meanwhile (a `304` revalidation, a soft
    /// purge: the same body) gets the encoded representations instead
    /// ([`Object::with_encodings_of`]). An object the memory tier evicted
    /// meanwhile (no purge since `epoch`) still goes to Redis. Returns
    /// whether it was stored.
    pub fn complete(&self, admitted: &Arc<Object>, variant: Arc<Variant>, epoch: u64) -> bool {
        let memory = &self.inner.memory;
        let complete = match memory.complete(admitted, &variant) {
            Some(stored) => stored,
            None if !memory.removed_since(admitted, epoch)
                && memory.get_key(&admitted.key).is_none() =>
            {
                Arc::new(admitted.with_variant(variant))
            }
            None => return false,
        };
        self.write_behind(&complete);
        true
    }

    /// Waits (bounded) for queued Redis writes to land; used at shutdown.
    pub async fn flush(&self, within: Duration) {
        if let Some(redis) = &self.inner.redis {
            if !redis.flush(within).await {
                tracing::warn!("some Redis writes were still queued at shutdown");
            }
        }
    }

    pub fn is_pass(&self, hash: u128) -> bool {
        self.inner.pass.contains_key(&hash)
    }

    /// Marks a URL hit-for-miss for [`PASS_TTL`]: its answer could not be
    /// stored.
    pub fn mark_pass(&self, hash: u128) {
        self.inner.pass.insert(hash, PassMark::Uncacheable);
    }

    /// Marks a URL hit-for-miss because its body outgrew
    /// `max_object_size` while it was collected.
    pub fn mark_oversize(&self, hash: u128) {
        self.inner.pass.insert(hash, PassMark::Oversize);
    }

    /// Why a URL is hit-for-miss, if it is.
    pub fn pass_mark(&self, hash: u128) -> Option<PassMark> {
        self.inner.pass.get(&hash)
    }

    /// Lifts a URL's hit-for-miss mark: a request that went upstream
    /// because of it got an answer that would be stored.
    pub fn unmark_pass(&self, hash: u128) {
        self.inner.pass.invalidate(&hash);
    }

    /// Removes one URL (every variant and encoding) from every tier, and
    /// from the fleet's memory tiers through Redis.
    pub fn remove(&self, key: &CacheKey) {
        // Redis first: from here this instance reads the key from Redis as
        // a miss, so a lookup after the memory removal cannot promote the
        // copy Redis still holds (`cache/redis/pending.rs`).
        if let Some(redis) = &self.inner.redis {
            redis.invalidate_background(key.clone());
        }
        self.inner.memory.remove(key);
    }

    /// The Redis tier's state for `/health`: `None` without Redis, else
    /// `(connected, breaker_open)`. Connected means in use: a connection
    /// is up, the purge channel is subscribed (else this instance misses
    /// the fleet's purges) and the breaker is closed (with the breaker
    /// open, the connection object may still exist while every command
    /// fails).
    pub fn redis_state(&self) -> Option<(bool, bool)> {
        self.inner.redis.as_ref().map(|r| {
            let open = r.breaker_open();
            (r.is_connected() && r.is_subscribed() && !open, open)
        })
    }

    /// The shared Redis tier, when configured (rate limits share its
    /// connection and breaker).
    pub fn redis(&self) -> Option<&RedisTier> {
        self.inner.redis.as_ref()
    }

    /// Publishes tier sizes to the metrics.
    pub fn export_sizes(&self) {
        let m = &self.inner.memory;
        self.inner
            .metrics
            .cache_size("memory", m.weighted_size(), m.entry_count());
    }
}

//! Admission: a storable miss's body is collected (up to
//! `max_object_size`) at the upstream's speed while its client is fed from
//! what was collected at its own pace ([`super::feed`]: a slow client
//! neither slows the fill nor keeps the collapsed requests waiting); at
//! the end the identity variant is admitted to memory *before* the
//! client's body ends — before its last byte, when the length is declared
//! (so the next request is a hit and a purge finds it), then compressed
//! once per configured coding (off the async workers) and stored complete,
//! in memory and Redis, unless a purge came in between. The collapse
//! waiters are answered with the identity object as soon as it is
//! admitted. A body that breaks, outgrows the limit or finds the cache's
//! collecting budget full ([`Cache::collecting`]: bodies held at once
//! before their admission) is never stored: the waiters are released
//! instead, and it streams on at its client's pace.

use std::sync::Arc;

use crate::upstream::UpstreamBody;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::body::{IdleTimeout, ProxyBody};
use super::feed::{self, Feed, Taken, Unfinished};
use crate::cache::budget::Reservation;
use crate::cache::collapse::{Flight, WriteLock};
use crate::cache::entry::{self, Encoded, Object, Variant, VaryKey};
use crate::cache::freshness::{Policy, Times};
use crate::cache::key::CacheKey;
use crate::cache::large::Collector;
use crate::cache::Cache;
use crate::compression::{self, Coding, CompressionPolicy};
use crate::metrics::Shed;

/// Everything known about a storable response before its body.
pub struct Plan {
    pub key: CacheKey,
    /// The object already stored for the URL (other variants), if any.
    pub base: Option<Arc<Object>>,
    pub vary: VaryKey,
    pub status: StatusCode,
    /// Headers to store: end-to-end, rule applied, no Age, no surrogates.
    pub headers: HeaderMap,
    pub times: Times,
    pub policy: Policy,
    pub tags: Vec<String>,
    /// The response's `Strata-Cache-Control` (see [`Variant::strata_cc`]).
    pub strata_cc: Option<HeaderValue>,
    pub max_size: u64,
    pub compression: Option<CompressionPolicy>,
    /// [`Cache::removal_epoch`] when the fetch began: a purge or an
    /// invalidation of the URL since then keeps the response out.
    pub since: u64,
    /// The body's place in the cache's collecting budget
    /// ([`Cache::collecting`]): its declared length, or nothing yet.
    pub reserved: Reservation,
    /// `server.send_timeout`: how long the client that fetched the body may
    /// take nothing, once the admission waits on it (a body not stored, or
    /// stored while the client still takes it), before it is cut off (see
    /// [`Feed::close`]).
    pub send_timeout: std::time::Duration,
}

/// How far a body that is not stored is read ahead of its client
/// (bytes): eight upstream reads of at most 64 KiB.
const AHEAD: usize = 512 << 10;

/// What a request answered from the stored variant learns of the
/// admission.
pub enum Admitted {
    Stored(Arc<Variant>),
    /// Not stored: the body (of unknown length) outgrew `max_object_size`,
    /// or did not fit in the cache's collecting budget
    /// ([`Cache::collecting`]). The whole body as it arrives, for the
    /// waiting request to send instead (what was read, then the rest).
    NotStored(ProxyBody),
    /// Not stored: the upstream body failed or was cut short; `stalled`
    /// when it stalled past `body_idle_timeout` (a timeout, `504`).
    Failed {
        stalled: bool,
    },
}

/// A request answered from the stored variant once admission gets far
/// enough.
pub enum Done {
    /// As soon as the identity variant is visible (a HEAD: its answer
    /// needs no body, and a request after it must be a hit).
    Visible(oneshot::Sender<Admitted>),
    /// Once the encoded representations are in too (a conditional or range
    /// request, answered in the client's coding).
    Complete(oneshot::Sender<Admitted>),
}

impl Done {
    fn send(self, outcome: Admitted) {
        let (Done::Visible(tx) | Done::Complete(tx)) = self;
        let _ = tx.send(outcome);
    }
}

/// Drives `body` to the end in its own task, at the upstream's speed while
/// it is collected: queues each chunk for `client` (if any, until it goes
/// away; see [`super::feed`]), collects it for storage, then admits.
/// `done` learns the outcome.
pub fn spawn(
    cache: Cache,
    plan: Plan,
    lock: Option<WriteLock>,
    body: IdleTimeout<UpstreamBody>,
    client: Option<Feed>,
    mut done: Option<Done>,
) {
    tokio::spawn(async move {
        let stored = run(&cache, plan, lock, body, client, &mut done).await;
        if let Some(done) = done {
            done.send(stored.map_or(Admitted::Failed { stalled: false }, Admitted::Stored));
        }
    });
}

async fn run(
    cache: &Cache,
    plan: Plan,
    mut lock: Option<WriteLock>,
    mut body: IdleTimeout<UpstreamBody>,
    mut client: Option<Feed>,
    done: &mut Option<Done>,
) -> Option<Arc<Variant>> {
    let declared = super::headers::content_length(&plan.headers);
    let mut collected = Collector::new(declared);
    // Counts the body against the cache's collecting budget until admitted
    // (and, after, until a lagging client has taken it).
    let mut reserved = plan.reserved;
    let mut total: u64 = 0;
    loop {
        let data = match body.frame().await {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(key = %plan.key, error = %e, "upstream body failed: not stored");
                if let Some(done) = done.take() {
                    done.send(Admitted::Failed {
                        stalled: e.is::<super::body::BodyIdle>(),
                    });
                }
                if let Some(feed) = client {
                    feed.close(Err(e), Some(reserved), plan.send_timeout);
                }
                return None; // the lock drops: waiters released
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        total += data.len() as u64;
        let too_large = total > plan.max_size;
        if too_large || !usize::try_from(total).is_ok_and(|t| reserved.cover(t)) {
            if let Some(l) = lock.take() {
                l.publish(Flight::Released);
            }
            if too_large {
                cache.mark_oversize(plan.key.hash());
            } else {
                cache.metrics().shed(Shed::Busy);
                tracing::debug!(
                    key = %plan.key,
                    budget = cache.collecting().limit(),
                    "bodies being collected fill their budget: streamed without storing"
                );
            }
            let feed = match done.take() {
                // The waiting request sends the body itself.
                Some(done) => {
                    let (feed, body) = feed::channel();
                    done.send(Admitted::NotStored(body));
                    feed.push_all(collected.into_chunks());
                    Some(feed)
                }
                // The client already has what was read queued.
                None => client,
            };
            if let Some(feed) = feed {
                stream_rest(feed, data, body, reserved, plan.send_timeout).await;
            }
            return None;
        }
        // The chunk that completes a declared length is held back until
        // the entry is admitted: with it the client has the whole response
        // (an HTTP/1.1 response ends at its Content-Length, not when its
        // body ends) and may ask again at once, and that request must be a
        // hit, never collapsed onto this admission (SPEC §6).
        if declared == Some(total) {
            collected.push(&data);
            break;
        }
        match &client {
            Some(feed) => {
                if !feed.push(collected.push_shared(&data)) {
                    client = None;
                }
            }
            None => collected.push(&data),
        }
    }
    if declared.is_some_and(|d| d != total) {
        if let Some(feed) = client {
            feed.close(Err(Box::new(Unfinished)), Some(reserved), plan.send_timeout);
        }
        return None;
    }
    // In one allocation of exactly its size, never a slice of hyper's
    // read buffers (a 1 KiB body would pin 8–64 KiB): the arena when it is
    // mid-sized (for `sendfile`), a mapping of its own when large.
    let body = collected.finish(total as usize);
    let encode = plan
        .compression
        .as_ref()
        .filter(|p| p.encodes_stored(plan.status, &plan.headers, total));
    let identity = Arc::new(identity_variant(
        plan.status,
        plan.headers,
        body,
        plan.vary,
        plan.times,
        plan.policy,
        plan.tags,
        plan.strata_cc,
        encode.is_some(),
    ));
    // The entry is visible (and purgeable) before the client's body ends;
    // encoded representations follow without hiding it (SPEC §6).
    // The collapse lock goes too: waiting requests get this object, and a
    // request after a purge fetches anew instead of waiting on the encoding.
    let since = plan.since;
    // What memory holds now (other variants admitted meanwhile included).
    let base = plan.base.as_deref();
    let admitted = match encode {
        Some(_) => cache.admit_memory(&plan.key, base, &identity, since),
        None => cache.admit(&plan.key, base, &identity, since),
    };
    if let Some(l) = lock.take() {
        // Purged or invalidated while fetched: the waiters collapse again
        // behind a new leader, whose fetch begins after the purge (one
        // more upstream request, and its answer stored), as when a leader
        // goes away; released, each went upstream and stored nothing.
        l.publish(admitted.clone().map_or(Flight::Abandoned, Flight::Stored));
    }
    if admitted.is_none() {
        tracing::debug!(key = %plan.key, "purged or invalidated while fetched: not stored");
    }
    if let Some(visible) = done.take_if(|d| matches!(d, Done::Visible(_))) {
        visible.send(Admitted::Stored(identity.clone()));
    }
    // The tier holds the body now; a client still taking it keeps it
    // counted until it has (it may outlive its eviction).
    match client {
        Some(feed) => {
            feed.complete(&identity.body);
            feed.close(Ok(()), Some(reserved), plan.send_timeout);
        }
        None => drop(reserved),
    }
    let (Some(policy), Some(admitted)) = (encode, admitted) else {
        return Some(identity);
    };
    let variant = Arc::new(with_encodings(&identity, policy, cache).await);
    if !cache.complete(&admitted, variant.clone(), since) {
        tracing::debug!(key = %plan.key, "purged or replaced while encoding: not stored again");
    }
    Some(variant)
}

/// Streams the rest of a body that turned out not to be stored, at its
/// client's pace: `first` (read, not yet queued), then the upstream's,
/// never more than [`AHEAD`] bytes ahead of the client. `reserved` (what
/// was read while it was collected) is given back once the client has
/// caught up; a client that takes nothing for `idle` (`send_timeout`) is
/// cut off and the upstream read stops.
async fn stream_rest(
    feed: Feed,
    first: Bytes,
    mut body: IdleTimeout<UpstreamBody>,
    reserved: Reservation,
    idle: std::time::Duration,
) {
    let mut reserved = Some(reserved);
    let mut next = Some(first);
    loop {
        if let Some(data) = next.take() {
            if !feed.push(data) {
                return;
            }
        }
        match feed.taken(AHEAD, idle).await {
            Taken::Drained => drop(reserved.take()),
            Taken::Gone => return,
            Taken::Stalled => {
                tracing::debug!("the client took nothing for send_timeout: cut off");
                feed.cut();
                return;
            }
        }
        match body.frame().await {
            None => return feed.close(Ok(()), None, idle),
            Some(Err(e)) => return feed.close(Err(e), None, idle),
            Some(Ok(frame)) => next = frame.into_data().ok(),
        }
    }
}

/// Builds the identity variant: headers completed (Content-Length, no
/// Age; `Date` was made one valid line when the response arrived,
/// `exchange.rs`) and `Vary: Accept-Encoding` when encodings will follow.
#[allow(clippy::too_many_arguments)]
fn identity_variant(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    vary: VaryKey,
    times: Times,
    policy: Policy,
    tags: Vec<String>,
    strata_cc: Option<HeaderValue>,
    encoded: bool,
) -> Variant {
    let mut headers = entry::owned_headers(&headers);
    headers.remove(header::AGE);
    if status == StatusCode::NO_CONTENT {
        // RFC 9110 §8.6: never on a 204, a HEAD's answer included.
        headers.remove(header::CONTENT_LENGTH);
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if encoded {
        compression::merge_vary_accept_encoding(&mut headers);
    }
    entry::room_to_serve(&mut headers);
    Variant {
        vary,
        status,
        headers,
        body,
        encoded: Vec::new(),
        times,
        policy,
        tags,
        strata_cc,
        soft_purged: false,
        hits: Default::default(),
        refresh: Default::default(),
    }
}

/// Admission encodings running at once: one per core ([`CORES`] turns), a
/// body taking one turn per [`ENCODING_TURN`] bytes (every turn at most,
/// so on two cores a body of 2 MiB or more is encoded alone). Encoding is
/// CPU-bound, so more at once finish no sooner; each holds an encoder's
/// tables (several MiB) and a blocking thread whose allocator keeps what it
/// freed, which a burst of misses had multiplied by 20–36 threads. A large
/// body's encoding holds tens of MiB (brotli at level 8 grows RSS by about
/// 5 MiB for a 1 MiB text body, 17 MiB for 4 MiB and 30 MiB for 16 MiB,
/// and the output grows by doubling), and SPEC §10's bound leaves 64 MiB
/// over the tier for everything. An admission waits here after its
/// identity variant is visible, so a wait delays only its encoded
/// representations.
static ENCODERS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(*CORES as usize));

/// brotli's working memory (at the store levels, lgwin 22, with the size
/// hint), counted against the collecting budget while it encodes: about 5
/// MiB for a 1 MiB body, 17 MiB for 4 MiB, 30 MiB for 16 MiB (RSS growth
/// measured in a separate program), so four bytes per byte of body, at
/// most [`BROTLI_WORKING_MAX`].
const BROTLI_WORKING_PER_BYTE: usize = 4;
const BROTLI_WORKING_MAX: usize = 32 << 20;

/// Bytes of body per turn of [`ENCODERS`].
const ENCODING_TURN: usize = 1 << 20;

/// The cores this process may run on, read once.
static CORES: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
});

/// The identity variant plus one encoded representation per configured
/// coding that comes out smaller (compressed off the async workers, at
/// most [`ENCODERS`] at once). When the body does not fit in the cache's
/// encoding backlog (bodies waiting for [`ENCODERS`] or being encoded; a
/// body may wait after its object was evicted, and is then held by its
/// admission alone: misses coming faster than the cores compress had grown
/// that backlog without bound and held RSS at three times SPEC §10's
/// limit), none: the object is stored with its identity variant only
/// (served as it is to every client) rather than queued. Without room for
/// brotli's working memory in the collecting budget, no `br`.
async fn with_encodings(identity: &Variant, policy: &CompressionPolicy, cache: &Cache) -> Variant {
    let Some(_pending) = cache.encoding_backlog().reserve(identity.body.len()) else {
        cache.metrics().shed(Shed::EncodingBacklog);
        tracing::debug!(
            bytes = identity.body.len(),
            "compression backlog full: stored without encoded representations"
        );
        return identity.clone();
    };
    let turns = u32::try_from(identity.body.len().div_ceil(ENCODING_TURN))
        .unwrap_or(u32::MAX)
        .clamp(1, *CORES);
    // Never closed; were it, encoding would go on unbounded.
    let _turn = ENCODERS.acquire_many(turns).await.ok();
    let mut encoded = Vec::new();
    for &coding in &policy.algorithms {
        // brotli's working memory is counted with the bodies being
        // collected; without room for it, the body is stored with its
        // other codings (gzip's state is about 256 KiB).
        let _working = if matches!(coding, Coding::Br) {
            let bytes = (BROTLI_WORKING_PER_BYTE.saturating_mul(identity.body.len()))
                .min(BROTLI_WORKING_MAX);
            let Some(r) = cache.collecting().try_reserve(bytes) else {
                cache.metrics().shed(Shed::BrotliMemory);
                tracing::debug!(
                    bytes,
                    "no room for brotli's working memory: stored without br"
                );
                continue;
            };
            Some(r)
        } else {
            None
        };
        let level = policy.store_level.for_coding(coding);
        let input = identity.body.clone();
        // Kept only when smaller than identity; a kept body goes into the
        // arena (when it suits) still off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            let kept = compression::encode(coding, level, &input)
                .map(|b| (b.len() < input.len()).then(|| crate::cache::arena::adopt(b)));
            compression::release_after_encoding(input.len());
            kept
        })
        .await;
        match result {
            Ok(Ok(Some(bytes))) => {
                let mut h = identity.headers.clone();
                compression::mark_encoded(&mut h, coding, Some(bytes.len() as u64));
                encoded.push(Encoded::new(coding, h, bytes));
            }
            Ok(Ok(None)) => {} // no smaller: identity only
            Ok(Err(e)) => tracing::warn!(error = %e, "compression failed"),
            Err(e) => tracing::warn!(error = %e, "compression task failed"),
        }
    }
    Variant {
        encoded,
        ..identity.clone()
    }
}

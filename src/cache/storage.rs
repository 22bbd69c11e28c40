//! The storage seam: a tier keeps [`Object`]s (all variants of one URL)
//! under a [`CacheKey`]. Two implementations: the in-process memory tier
//! (`memory.rs`, moka) and the shared Redis tier (`redis.rs`).
//!
//! Contract:
//! - **Concurrency**: every method may be called from many tasks at once;
//!   a `put` racing a `get` yields either the old or the new object.
//! - **Failure**: an error is a miss for `get` and a lost write for `put`.
//!   The caller logs and counts it; a tier error never fails a request.
//! - **Cancellation**: dropping a returned future abandons the operation;
//!   it may or may not have taken effect, and the tier stays consistent.
//! - **Bounds**: the memory tier never exceeds its byte capacity; the Redis
//!   tier bounds each operation by its timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::entry::Object;
use super::key::CacheKey;

/// A tier failure. Only the Redis tier produces them.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis operation timed out")]
    Timeout,
    #[error("redis skipped: circuit breaker open")]
    BreakerOpen,
    #[error("stored entry is corrupt: {0}")]
    Corrupt(String),
}

/// What a purge selects.
#[derive(Debug, Clone)]
pub enum Selector {
    /// One URL, all variants and encodings (`CacheKey`).
    Key(CacheKey),
    /// A path (with query) on every host.
    PathAnyHost(String),
    /// Every URL whose path starts with this prefix, on every host.
    Prefix(String),
    /// Every entry carrying any of these tags.
    Tags(Vec<String>),
}

pub trait Storage: Send + Sync + 'static {
    /// The object stored under `key`; `Ok(None)` is a miss.
    fn get(
        &self,
        key: &CacheKey,
    ) -> impl Future<Output = Result<Option<Arc<Object>>, StorageError>> + Send;

    /// Stores `object`, to be kept for `keep`.
    fn put(
        &self,
        object: Arc<Object>,
        keep: Duration,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Removes what `selector` selects; returns how many objects went.
    fn purge(&self, selector: &Selector) -> impl Future<Output = Result<u64, StorageError>> + Send;
}

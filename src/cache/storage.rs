//! What the tiers share: the purge [`Selector`] and the tier error
//! [`StorageError`]. The two tiers — memory (`memory.rs`, moka, synchronous)
//! and Redis (`redis.rs`, asynchronous, shared by the fleet) — differ too
//! much in shape for one trait to serve both honestly, so [`crate::cache::Cache`]
//! calls each directly; both keep this contract:
//! - **Concurrency**: every method may be called from many tasks at once;
//!   a `put` racing a `get` yields either the old or the new object.
//! - **Failure**: an error is a miss for `get` and a lost write for `put`.
//!   The caller logs and counts it; a tier error never fails a request.
//! - **Cancellation**: dropping a returned future abandons the operation;
//!   it may or may not have taken effect, and the tier stays consistent.
//! - **Bounds**: the memory tier never exceeds its byte capacity; the Redis
//!   tier bounds each operation by its timeout.

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
    #[error("stored entry is corrupt")]
    Corrupt(#[source] super::redis::codec::DecodeError),
    #[error("entry cannot be encoded")]
    Unencodable(#[source] super::redis::codec::EncodeError),
}

/// What a purge selects. Its `Debug` form (what logs show) leaves out
/// queries and appended key values, as [`CacheKey`]'s `Display` does:
/// they routinely carry credentials.
#[derive(Clone)]
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

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::cache::key::loggable;
        match self {
            Selector::Key(key) => write!(f, "Key({key})"),
            Selector::PathAnyHost(p) => write!(f, "PathAnyHost({:?})", loggable(p)),
            Selector::Prefix(p) => write!(f, "Prefix({:?})", loggable(p)),
            Selector::Tags(tags) => f.debug_tuple("Tags").field(tags).finish(),
        }
    }
}

impl Selector {
    /// Whether `object` is selected.
    pub fn selects(&self, object: &Object) -> bool {
        match self {
            Selector::Key(key) => &object.key == key,
            Selector::PathAnyHost(path) => object.key.path() == path,
            Selector::Prefix(prefix) => object.key.path().starts_with(prefix.as_str()),
            Selector::Tags(tags) => tags.iter().any(|t| object.has_tag(t)),
        }
    }

    /// Whether `key`'s object may be selected, from the key alone: tags
    /// are on the object, so a tag selector may select any key.
    pub fn may_select(&self, key: &CacheKey) -> bool {
        match self {
            Selector::Key(k) => k == key,
            Selector::PathAnyHost(path) => key.path() == path,
            Selector::Prefix(prefix) => key.path().starts_with(prefix.as_str()),
            Selector::Tags(_) => true,
        }
    }
}

/// A purge as the fleet sees it: what it selects, and whether the entries
/// are deleted or only marked stale (soft purge).
#[derive(Debug, Clone)]
pub struct Invalidation {
    pub selector: Selector,
    pub soft: bool,
}

#[cfg(test)]
mod log_tests {
    use super::Selector;
    use crate::cache::key::CacheKey;

    #[test]
    fn selectors_are_logged_without_queries() {
        let shown = |s: Selector| format!("{s:?}");
        assert_eq!(
            shown(Selector::Prefix("/ck/a?apikey=LEAK2#".into())),
            r#"Prefix("/ck/a?…#…")"#
        );
        assert_eq!(
            shown(Selector::PathAnyHost("/p?token=x".into())),
            r#"PathAnyHost("/p?…")"#
        );
        assert_eq!(
            shown(Selector::Prefix("/assets/".into())),
            r#"Prefix("/assets/")"#
        );
        let key = CacheKey::new(false, "h", "/a?secret=1");
        assert_eq!(shown(Selector::Key(key)), "Key(http://h/a?…)");
        assert_eq!(
            shown(Selector::Tags(vec!["news".into()])),
            r#"Tags(["news"])"#
        );
    }
}

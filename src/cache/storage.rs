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

use std::sync::Arc;

use super::entry::{Object, Variant};
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
    /// Every variant carrying any of these tags (the URL's other Vary
    /// variants stay).
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

    /// What a hard purge leaves of `object`: `None` when it selects
    /// nothing in it, else a copy without what it selects, which has no
    /// variants left when the object goes whole. A tag selects the Vary
    /// variants that carry it (per variant, as Varnish's xkey and Fastly's
    /// surrogate keys); the other selectors the whole object.
    pub fn purged(&self, object: &Object) -> Option<Object> {
        self.with_selected(object, |_| None)
    }

    /// What a soft purge makes of `object`: `None` when it selects nothing
    /// in it that is not marked already (a second soft purge changes and
    /// counts nothing: it was counted again, and `{"purged": N}` said so),
    /// else a copy with the variants it selects (as in
    /// [`Selector::purged`]) marked stale; those marked before are kept as
    /// they are.
    pub fn marked(&self, object: &Object) -> Option<Object> {
        let unmarked = |v: &Arc<Variant>| match self {
            Selector::Tags(tags) => tagged(v, tags) && !v.soft_purged,
            _ => !v.soft_purged,
        };
        if !object.variants.iter().any(unmarked) {
            return None;
        }
        self.with_selected(object, |v| {
            Some(if v.soft_purged {
                v.clone()
            } else {
                Arc::new(v.soft_purged_copy())
            })
        })
    }

    /// `object` with `each` applied to the variants this selector takes
    /// (all of them, or under a tag those carrying it; `None` drops one);
    /// `None` when it selects nothing in `object`.
    fn with_selected(
        &self,
        object: &Object,
        each: impl Fn(&Arc<Variant>) -> Option<Arc<Variant>>,
    ) -> Option<Object> {
        if !self.selects(object) {
            return None;
        }
        let variants = object
            .variants
            .iter()
            .filter_map(|v| match self {
                Selector::Tags(tags) if !tagged(v, tags) => Some(v.clone()),
                _ => each(v),
            })
            .collect();
        Some(Object {
            key: object.key.clone(),
            variants,
        })
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

/// Whether `variant` carries any of `tags`.
fn tagged(variant: &Variant, tags: &[String]) -> bool {
    variant.tags.iter().any(|t| tags.contains(t))
}

/// The latest selectors of some kind of removal, each with the count it
/// was given (removals in memory, purges seen by a Redis tier's write
/// lanes), so that a check asks only whether one since its own count may
/// select what it holds. Past `kept` of them, the oldest are forgotten;
/// a check older than a forgotten one counts as selected (a miss or a
/// skipped write, never a stale copy).
#[derive(Debug)]
pub struct SelectorLog {
    /// `(count, selector)`, oldest first.
    recent: std::collections::VecDeque<(u64, Selector)>,
    /// The highest count forgotten.
    forgotten: u64,
    kept: usize,
}

impl SelectorLog {
    pub fn new(kept: usize) -> SelectorLog {
        SelectorLog {
            recent: Default::default(),
            forgotten: 0,
            kept,
        }
    }

    /// Remembers `selector` under the count `at`.
    pub fn push(&mut self, at: u64, selector: Selector) {
        self.recent.push_back((at, selector));
        if self.recent.len() > self.kept {
            if let Some((old, _)) = self.recent.pop_front() {
                self.forgotten = self.forgotten.max(old);
            }
        }
    }

    /// Whether one remembered after `since` `selects`; with
    /// `forgotten_counts`, also whether one after it was forgotten.
    pub fn since(
        &self,
        since: u64,
        forgotten_counts: bool,
        selects: impl Fn(&Selector) -> bool,
    ) -> bool {
        (forgotten_counts && self.forgotten > since)
            || self
                .recent
                .iter()
                .any(|(at, selector)| *at > since && selects(selector))
    }
}

/// A purge as the fleet sees it: what it selects, and whether the entries
/// are deleted or only marked stale (soft purge).
#[derive(Debug, Clone)]
pub struct Invalidation {
    pub selector: Selector,
    pub soft: bool,
    /// Another instance's purge (not a resubscription's "drop everything"):
    /// this instance repeats it in Redis behind its own queued writes.
    pub purge: bool,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Selector;
    use crate::cache::entry::{one_byte_variant, Object, VaryKey};
    use crate::cache::key::CacheKey;

    /// `/p` in two Vary variants, `en` tagged `lang-en shared`, `fr`
    /// tagged `lang-fr shared`.
    fn object() -> Object {
        let variant = |lang: &str| {
            let vary = VaryKey(vec![(
                "accept-language".parse().unwrap(),
                Some(lang.into()),
            )]);
            let mut v = one_byte_variant(vary, 0);
            v.tags = vec![format!("lang-{lang}"), "shared".into()];
            Arc::new(v)
        };
        Object {
            key: CacheKey::new(false, "h", "/p"),
            variants: vec![variant("en"), variant("fr")],
        }
    }

    fn tags(t: &[&str]) -> Selector {
        Selector::Tags(t.iter().map(|t| t.to_string()).collect())
    }

    fn langs(o: &Object) -> Vec<String> {
        o.variants
            .iter()
            .flat_map(|v| v.tags[..1].to_vec())
            .collect()
    }

    #[test]
    fn a_tag_selects_the_variants_carrying_it() {
        let o = object();
        let left = tags(&["lang-en"]).purged(&o).unwrap();
        assert_eq!(langs(&left), ["lang-fr"]);
        assert!(tags(&["shared"]).purged(&o).unwrap().variants.is_empty());
        assert!(tags(&["lang-de"]).purged(&o).is_none());
        let whole = Selector::Prefix("/".into()).purged(&o).unwrap();
        assert!(whole.variants.is_empty());

        let marked = tags(&["lang-fr", "lang-de"]).marked(&o).unwrap();
        let stale: Vec<bool> = marked.variants.iter().map(|v| v.soft_purged).collect();
        assert_eq!(stale, [false, true]);
        assert!(tags(&["lang-de"]).marked(&o).is_none());
        assert!(
            tags(&["lang-fr"]).marked(&marked).is_none(),
            "marked already: nothing to count"
        );
        let all = Selector::PathAnyHost("/p".into()).marked(&o).unwrap();
        assert!(all.variants.iter().all(|v| v.soft_purged));
    }
}

//! The memory tier: a moka cache of [`Object`]s weighted by their bytes
//! (bodies, encoded bodies, headers, tags), bounded by `memory_capacity`,
//! evicting the least recently used,
//! with a per-entry expiry of the object's freshness lifetime plus stale
//! windows. Lookups are synchronous and lock-free on the hit path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::entry::{Object, Variant};
use super::freshness::now_millis;
use super::key::CacheKey;
use super::storage::{Selector, SelectorLog};

/// How long a URL's removal is remembered for [`MemoryTier::removed_since`]:
/// far longer than any admission takes to compress its representations.
const REMOVALS_KEPT: Duration = Duration::from_secs(600);

/// moka weighs in u32; larger objects are never admitted anyway
/// (`max_object_size` is far below this).
const MAX_WEIGHT: u64 = u32::MAX as u64;

/// A moka cache keyed by a URL's 128-bit key hash. Hashed again by moka
/// for its table with foldhash rather than the default SipHash (about 150
/// instructions less per lookup): the key is already a digest, and the
/// hasher's per-process random seed keeps the table's buckets unknown to
/// whoever chooses the URLs (the xxh3 digest itself is unseeded).
pub type Cache<V> = moka::sync::Cache<u128, V, foldhash::quality::RandomState>;

struct KeepFor;

impl Expiry<u128, Arc<Object>> for KeepFor {
    fn expire_after_create(&self, _k: &u128, v: &Arc<Object>, _now: Instant) -> Option<Duration> {
        Some(Duration::from_secs(v.keep_secs(now_millis())))
    }

    fn expire_after_update(
        &self,
        _k: &u128,
        v: &Arc<Object>,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.keep_secs(now_millis())))
    }
}

#[derive(Clone)]
pub struct MemoryTier {
    cache: Cache<Arc<Object>>,
    /// Counts explicit removals (purges, invalidations, soft purges; not
    /// evictions), so that work begun before one can tell it must not
    /// store again ([`MemoryTier::removed_since`]).
    removals: Arc<AtomicU64>,
    /// The count after the last removal by selector (prefix, tag, path on
    /// every host) or soft purge.
    broad_removal: Arc<AtomicU64>,
    /// The latest of those, with their counts (see [`RECENT_BROAD`]).
    recent_broad: Arc<Mutex<SelectorLog>>,
    /// The count after each URL's last removal (remembered for
    /// [`REMOVALS_KEPT`]).
    removed_urls: Cache<u64>,
}

/// Removals by selector remembered with their selectors (a
/// [`SelectorLog`]), so that one removes from consideration only what it
/// may have selected: a tag purge every second must not keep every miss
/// in flight from being stored. Past this many, the oldest are forgotten
/// and count for every URL.
const RECENT_BROAD: usize = 256;

/// Objects of at least this weight (bytes) are evicted for at once (see
/// [`MemoryTier::evict_now`]); lighter ones can pile up over capacity by
/// at most moka's batch of pending writes (a few MiB of them). The
/// maintenance is cheap next to fetching and copying a body this size.
const HEAVY: u64 = 256 * 1024;

impl MemoryTier {
    pub fn new(capacity: u64) -> MemoryTier {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            // LRU, as nginx and Varnish evict: every storable response is
            // admitted. moka's default TinyLFU admission refuses a new
            // entry whose estimated popularity is below that of the
            // entries it would evict, summed: a 256 KiB object displacing
            // a hundred small ones never got in once the tier was full,
            // and an entry must be a hit once its response is complete
            // (SPEC §6).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_k, v: &Arc<Object>| v.weight().min(MAX_WEIGHT) as u32)
            .expire_after(KeepFor)
            .build_with_hasher(Default::default());
        MemoryTier {
            cache,
            removals: Arc::new(AtomicU64::new(0)),
            broad_removal: Arc::new(AtomicU64::new(0)),
            recent_broad: Arc::new(Mutex::new(SelectorLog::new(RECENT_BROAD))),
            removed_urls: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REMOVALS_KEPT)
                .build_with_hasher(Default::default()),
        }
    }

    /// Hit-path lookup by the key's parts: no allocation.
    pub fn lookup(
        &self,
        hash: u128,
        https: bool,
        authority: &str,
        path: &str,
    ) -> Option<Arc<Object>> {
        self.cache
            .get(&hash)
            .filter(|o| o.key.matches(https, authority, path))
    }

    pub fn get_key(&self, key: &CacheKey) -> Option<Arc<Object>> {
        self.cache.get(&key.hash()).filter(|o| &o.key == key)
    }

    pub fn insert(&self, object: Arc<Object>) {
        let heavy = object.weight() >= HEAVY;
        self.cache.insert(object.key.hash(), object);
        if heavy {
            self.evict_now();
        }
    }

    /// Runs moka's maintenance, which evicts what is over capacity. moka
    /// runs it only once enough operations have piled up (or on reads), so
    /// after a few large objects the tier could hold several times its
    /// capacity until then — and keep holding it while idle — against
    /// SPEC §10's memory bound. Done after storing a [`HEAVY`] object.
    fn evict_now(&self) {
        self.cache.run_pending_tasks();
    }

    /// Adds `variant` (encoded representations included) to `admitted`,
    /// atomically, while `admitted` is still the stored object; or, when a
    /// copy of the same response replaced it (same body: a `304`
    /// revalidation, a soft purge), adds the encoded representations to
    /// that copy. A purge or another response in between wins. Returns
    /// what was stored.
    pub fn complete(&self, admitted: &Arc<Object>, variant: &Arc<Variant>) -> Option<Arc<Object>> {
        use moka::ops::compute::{CompResult, Op};
        let result =
            self.cache
                .entry(admitted.key.hash())
                .and_compute_with(|current| match current {
                    Some(e) if Arc::ptr_eq(e.value(), admitted) => {
                        Op::Put(Arc::new(admitted.with_variant(variant.clone())))
                    }
                    Some(e) => match e.value().with_encodings_of(variant) {
                        Some(copy) => Op::Put(Arc::new(copy)),
                        None => Op::Nop,
                    },
                    None => Op::Nop,
                });
        match result {
            CompResult::ReplacedWith(entry) => {
                let object = entry.into_value();
                if object.weight() >= HEAVY {
                    self.evict_now();
                }
                Some(object)
            }
            _ => None,
        }
    }

    /// The removal count now (see [`MemoryTier::removed_since`]).
    pub fn removal_epoch(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    /// Whether `object`'s URL may have been removed explicitly since
    /// `epoch`: by its own URL, or by a selector or soft purge that selects
    /// it. Other removals do not count, so a purge elsewhere never stops
    /// an admission from being stored.
    pub fn removed_since(&self, object: &Object, epoch: u64) -> bool {
        self.removed_where(&object.key, epoch, true, |s| s.selects(object))
    }

    /// Whether `key`'s URL was removed since `epoch`: by its own URL, or
    /// by a broad removal since then that `selects` (`forgotten`: one too
    /// old to be remembered counts).
    fn removed_where(
        &self,
        key: &CacheKey,
        epoch: u64,
        forgotten: bool,
        selects: impl Fn(&Selector) -> bool,
    ) -> bool {
        self.removed_urls
            .get(&key.hash())
            .is_some_and(|at| at > epoch)
            || (self.broad_removal.load(Ordering::SeqCst) > epoch && {
                let broad = self.recent_broad.lock().unwrap_or_else(|p| p.into_inner());
                broad.since(epoch, forgotten, selects)
            })
    }

    /// Bumps the removal count; returns the new count. Called before the
    /// removal and again after it: an admission whose epoch was read
    /// before the second bump counts the removal even if it raced with it,
    /// and a promotion that inserts and then checks (see
    /// [`MemoryTier::promote`]) sees the first bump whenever its insert
    /// may have come after the removal.
    fn next_removal(&self) -> u64 {
        self.removals.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A removal of what `selector` selects. Remembered before the count
    /// that says it happened is raised, so that a check that sees the
    /// count finds it.
    fn broad(&self, selector: &Selector) {
        let mut broad = self.recent_broad.lock().unwrap_or_else(|p| p.into_inner());
        let at = self.next_removal();
        broad.push(at, selector.clone());
        self.broad_removal.fetch_max(at, Ordering::SeqCst);
    }

    /// Records a removal of what `selector` selects without removing
    /// anything yet: from here an admission whose fetch began earlier is
    /// refused ([`MemoryTier::removed_since`]). A purge notes itself before
    /// it deletes in Redis, so that such an admission, landing while the
    /// purge works there, is neither stored here nor written to Redis
    /// behind the purge's delete.
    pub fn note_removal(&self, selector: &Selector) {
        match selector {
            Selector::Key(key) => self.removed_url(key),
            _ => self.broad(selector),
        }
    }

    pub fn remove(&self, key: &CacheKey) -> bool {
        self.removed_url(key);
        let removed = self.cache.remove(&key.hash()).is_some();
        self.removed_url(key);
        removed
    }

    /// Whether `key`'s URL was purged or invalidated since removal count
    /// `epoch`, judged from the key alone: by its own URL, or by a path or
    /// prefix selector that names it (a tag's is decided on the object, at
    /// admission, so it is not looked at here).
    pub fn url_removed_since(&self, key: &CacheKey, epoch: u64) -> bool {
        self.removed_where(key, epoch, false, |s| {
            !matches!(s, Selector::Tags(_)) && s.may_select(key)
        })
    }

    /// Records a removal of `key`'s URL (see [`MemoryTier::next_removal`]).
    fn removed_url(&self, key: &CacheKey) {
        let at = self.next_removal();
        // The highest count wins when two removals of one URL race.
        self.removed_urls
            .entry(key.hash())
            .and_upsert_with(|old| old.map_or(at, |old| at.max(*old.value())));
    }

    /// Inserts `object`, read from another tier when the removal count was
    /// `epoch`, unless its URL may have been removed since (a purge or
    /// invalidation that the read overlapped: the copy may be the one it
    /// removed). Inserts first and checks after, taking back its own
    /// insert when it lost the race, so a removal cannot fall between the
    /// check and the insert. Returns whether it stayed.
    pub fn promote(&self, object: &Arc<Object>, epoch: u64) -> bool {
        if self.removed_since(object, epoch) {
            return false;
        }
        self.insert(object.clone());
        if !self.removed_since(object, epoch) {
            return true;
        }
        use moka::ops::compute::Op;
        self.cache
            .entry(object.key.hash())
            .and_compute_with(|current| match current {
                Some(e) if Arc::ptr_eq(e.value(), object) => Op::Remove,
                _ => Op::Nop,
            });
        false
    }

    /// Stores `variant` for `admitted`'s URL on the terms of
    /// [`Self::promote`] (not when the URL was removed since `epoch`), as
    /// one atomic update: added to the object stored now when there is one
    /// (so a variant of another Vary key stored meanwhile, by a concurrent
    /// miss or refresh, is kept), else `admitted` itself, which holds
    /// `variant` over what its fetch saw. Returns what was stored.
    pub fn promote_variant(
        &self,
        admitted: &Arc<Object>,
        variant: &Arc<Variant>,
        epoch: u64,
    ) -> Option<Arc<Object>> {
        use moka::ops::compute::{CompResult, Op};
        if self.removed_since(admitted, epoch) {
            return None;
        }
        let result =
            self.cache
                .entry(admitted.key.hash())
                .and_compute_with(|current| match current {
                    Some(e) if e.value().key == admitted.key => {
                        Op::Put(Arc::new(e.value().with_variant(variant.clone())))
                    }
                    _ => Op::Put(admitted.clone()),
                });
        let stored = match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) => e.into_value(),
            _ => return None,
        };
        if stored.weight() >= HEAVY {
            self.evict_now();
        }
        if !self.removed_since(&stored, epoch) {
            return Some(stored);
        }
        self.cache
            .entry(stored.key.hash())
            .and_compute_with(|current| match current {
                Some(e) if Arc::ptr_eq(e.value(), &stored) => Op::Remove,
                _ => Op::Nop,
            });
        None
    }

    /// Up to `limit` objects `selector` selects (a full scan: for the
    /// admin API only).
    pub fn find(&self, selector: &Selector, limit: usize) -> Vec<Arc<Object>> {
        match selector {
            Selector::Key(key) => self.get_key(key).into_iter().collect(),
            _ => self
                .cache
                .iter()
                .filter(|(_, o)| selector.selects(o))
                .map(|(_, o)| o)
                .take(limit)
                .collect(),
        }
    }

    /// Removes what `selector` selects: whole objects, or under a tag the
    /// variants carrying it ([`Selector::purged`]); returns how many
    /// objects lost something (a URL counts once however many of its
    /// variants went).
    pub fn purge_now(&self, selector: &Selector) -> u64 {
        if let Selector::Key(key) = selector {
            return u64::from(self.remove(key));
        }
        self.broad(selector);
        let removed = self.edit_selected(selector, |o| selector.purged(o));
        self.broad(selector);
        removed
    }

    /// Soft purge: marks stale the variants `selector` selects
    /// ([`Selector::marked`]); returns how many objects.
    pub fn mark_stale(&self, selector: &Selector) -> u64 {
        self.broad(selector);
        let marked = self.edit_selected(selector, |o| selector.marked(o));
        // Counted as a removal: an admission in flight whose object was
        // evicted must not write its fresh copy over a soft purge it did
        // not see (see `Cache::complete`).
        self.broad(selector);
        marked
    }

    /// Replaces each object `selector` selects with `edit` of it, as one
    /// atomic update of what is stored at that moment, and removes it when
    /// the edit leaves no variant; returns how many objects changed.
    fn edit_selected(&self, selector: &Selector, edit: impl Fn(&Object) -> Option<Object>) -> u64 {
        use moka::ops::compute::{CompResult, Op};
        let selected: Vec<u128> = match selector {
            Selector::Key(key) => vec![key.hash()],
            _ => self
                .cache
                .iter()
                .filter(|(_, o)| selector.selects(o))
                .map(|(k, _)| *k)
                .collect(),
        };
        let changed = |hash: &u128| {
            let result = self.cache.entry(*hash).and_compute_with(|current| {
                match current.and_then(|e| edit(e.value())) {
                    None => Op::Nop,
                    Some(left) if left.variants.is_empty() => Op::Remove,
                    Some(left) => Op::Put(Arc::new(left)),
                }
            });
            matches!(result, CompResult::Removed(_) | CompResult::ReplacedWith(_))
        };
        selected.iter().filter(|h| changed(h)).count() as u64
    }

    /// Accounted bytes (after pending evictions are applied).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> CacheKey {
        CacheKey::new(false, "example.com", path)
    }

    /// A one-byte object of `key`, received now, fresh for a minute.
    fn object(key: &CacheKey) -> Arc<Object> {
        let variant = crate::cache::entry::one_byte_variant(Default::default(), now_millis());
        Arc::new(Object {
            key: key.clone(),
            variants: vec![Arc::new(variant)],
        })
    }

    #[test]
    fn a_copy_read_before_a_removal_of_its_url_is_not_promoted() {
        let tier = MemoryTier::new(1 << 20);
        let mine = key("/mine");
        let copy = object(&mine);
        let epoch = tier.removal_epoch();
        tier.remove(&key("/other"));
        assert!(tier.promote(&copy, epoch), "another URL's removal");
        assert!(tier.get_key(&mine).is_some_and(|o| Arc::ptr_eq(&o, &copy)));

        let epoch = tier.removal_epoch();
        tier.remove(&mine);
        let newer = object(&mine);
        tier.insert(newer.clone());
        assert!(!tier.promote(&copy, epoch), "its URL was removed since");
        assert!(
            tier.get_key(&mine).is_some_and(|o| Arc::ptr_eq(&o, &newer)),
            "what was stored after the removal stays"
        );
    }

    /// Two fetches that both saw `{a}` admit `b` and `c`: both are kept,
    /// and neither lands after its URL was removed.
    #[test]
    fn concurrent_variants_are_all_kept() {
        use crate::cache::entry::{one_byte_variant, VaryKey};
        let tier = MemoryTier::new(1 << 20);
        let k = key("/v");
        let variant = |v: &str| {
            let vary = VaryKey(vec![(http::HeaderName::from_static("x-v"), Some(v.into()))]);
            Arc::new(one_byte_variant(vary, now_millis()))
        };
        let seen = Arc::new(Object {
            key: k.clone(),
            variants: vec![variant("a")],
        });
        tier.insert(seen.clone());
        let epoch = tier.removal_epoch();
        for v in ["b", "c"] {
            let mine = variant(v);
            let built = Arc::new(seen.with_variant(mine.clone()));
            let stored = tier.promote_variant(&built, &mine, epoch).expect("stored");
            assert!(Arc::ptr_eq(&tier.get_key(&k).unwrap(), &stored));
        }
        let vary_values = |o: &Object| -> Vec<String> {
            o.variants
                .iter()
                .map(|v| v.vary.0[0].1.clone().unwrap_or_default())
                .collect()
        };
        assert_eq!(vary_values(&tier.get_key(&k).unwrap()), ["a", "b", "c"]);

        tier.remove(&k);
        let late = variant("d");
        let built = Arc::new(seen.with_variant(late.clone()));
        assert!(tier.promote_variant(&built, &late, epoch).is_none());
        assert!(tier.get_key(&k).is_none(), "a removal is never undone");
    }

    #[test]
    fn only_removals_that_may_touch_a_url_count_for_it() {
        let tier = MemoryTier::new(1 << 20);
        let mine = object(&key("/mine/a"));
        let epoch = tier.removal_epoch();
        tier.remove(&key("/other"));
        assert!(!tier.removed_since(&mine, epoch), "another URL's purge");
        tier.remove(&mine.key);
        assert!(tier.removed_since(&mine, epoch), "its own purge");

        let epoch = tier.removal_epoch();
        assert!(!tier.removed_since(&mine, epoch), "before, not since");
        tier.purge_now(&Selector::Prefix("/other/".into()));
        tier.purge_now(&Selector::Tags(vec!["other".into()]));
        tier.mark_stale(&Selector::PathAnyHost("/other".into()));
        assert!(
            !tier.removed_since(&mine, epoch),
            "selectors that do not select it"
        );
        tier.purge_now(&Selector::Prefix("/mine/".into()));
        assert!(tier.removed_since(&mine, epoch), "a purge by prefix");

        let epoch = tier.removal_epoch();
        tier.mark_stale(&Selector::PathAnyHost("/mine/a".into()));
        assert!(tier.removed_since(&mine, epoch), "a soft purge");
    }

    #[test]
    fn selectors_forgotten_count_for_every_url() {
        let tier = MemoryTier::new(1 << 20);
        let mine = object(&key("/mine"));
        let epoch = tier.removal_epoch();
        for i in 0..RECENT_BROAD {
            tier.purge_now(&Selector::Prefix(format!("/other{i}/")));
        }
        assert!(
            tier.removed_since(&mine, epoch),
            "more removals than remembered since: any may have selected it"
        );
        let epoch = tier.removal_epoch();
        tier.purge_now(&Selector::Prefix("/other/".into()));
        assert!(!tier.removed_since(&mine, epoch), "all remembered");
    }

    /// `/p` with an `en` and a `fr` variant, tagged `lang-en` and `lang-fr`.
    fn two_languages() -> Arc<Object> {
        let variant = |lang: &str| {
            let name = http::header::ACCEPT_LANGUAGE;
            let vary = crate::cache::entry::VaryKey(vec![(name, Some(lang.into()))]);
            let mut v = crate::cache::entry::one_byte_variant(vary, now_millis());
            v.tags = vec![format!("lang-{lang}")];
            Arc::new(v)
        };
        Arc::new(Object {
            key: key("/p"),
            variants: vec![variant("en"), variant("fr")],
        })
    }

    #[test]
    fn a_tag_purge_takes_only_the_variants_carrying_the_tag() {
        let tier = MemoryTier::new(1 << 20);
        let tags = |t: &str| Selector::Tags(vec![t.into()]);
        tier.insert(two_languages());
        assert_eq!(tier.purge_now(&tags("lang-de")), 0);
        assert_eq!(tier.mark_stale(&tags("lang-fr")), 1);
        let o = tier.get_key(&key("/p")).unwrap();
        let stale: Vec<bool> = o.variants.iter().map(|v| v.soft_purged).collect();
        assert_eq!(stale, [false, true]);
        assert_eq!(tier.purge_now(&tags("lang-en")), 1);
        let o = tier.get_key(&key("/p")).unwrap();
        assert_eq!(o.variants.len(), 1);
        assert!(o.has_tag("lang-fr"));
        assert_eq!(tier.purge_now(&tags("lang-fr")), 1);
        assert!(tier.get_key(&key("/p")).is_none());
    }
}

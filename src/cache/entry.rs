//! What the cache stores. An [`Object`] holds every stored variant of one
//! URL (RFC 9111 §4.1: several responses may be stored for one key,
//! selected by the request fields their `Vary` names). A [`Variant`] is one
//! stored response: status, headers, the identity body, any compressed
//! representations made at admission, its freshness policy and its tags.
//!
//! Bodies are `Bytes`, so a hit clones a reference count, never the bytes.
//! What is stored owns right-sized allocations ([`owned_headers`], and the
//! body copied once at admission): hyper hands out header values and body
//! chunks as slices of its read buffers, and an entry holding one slice
//! would keep the whole buffer alive (SPEC §10's memory bound). The
//! [`Variant::weight`] counts what an entry really holds, bookkeeping
//! included, so `memory_capacity` bounds the process's memory.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::fields::{FieldBlock, LazyFields};
use super::freshness::{self, Millis, Policy, Times};
use super::key::CacheKey;
pub use super::refresh::{HitCount, RefreshBackoff};
pub use super::vary::RequestFields;
use crate::compression::Coding;

/// Variants kept per URL; beyond this the oldest goes (a `Vary` on a
/// high-cardinality field must not grow one entry without bound).
pub const MAX_VARIANTS: usize = 16;

/// A compressed representation made once, at admission.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub coding: Coding,
    /// Headers of this representation (Content-Encoding, Content-Length,
    /// ETag with the coding's suffix, Vary with Accept-Encoding); read
    /// back from Redis, parsed only when first served ([`LazyFields`]).
    fields: LazyFields,
    pub body: Bytes,
}

impl Encoded {
    pub fn new(coding: Coding, mut headers: HeaderMap, body: Bytes) -> Encoded {
        room_to_serve(&mut headers);
        Encoded {
            coding,
            fields: LazyFields::Map(headers),
            body,
        }
    }

    /// A representation read back from a tier, its fields still stored.
    pub fn stored(coding: Coding, fields: FieldBlock, body: Bytes) -> Encoded {
        Encoded {
            coding,
            fields: LazyFields::stored(fields),
            body,
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        self.fields.get()
    }

    /// Changes the headers (see [`LazyFields::modify`]).
    pub fn modify_headers(&mut self, change: impl FnOnce(&mut HeaderMap)) {
        self.fields.modify(change)
    }

    /// The headers as read back from a tier, while unchanged.
    pub fn stored_fields(&self) -> Option<&FieldBlock> {
        self.fields.block()
    }
}

/// The request field values a variant was stored under, one per field
/// named by its `Vary` (absent fields are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaryKey(pub Vec<(HeaderName, Option<String>)>);

/// One stored response.
#[derive(Debug, Clone)]
pub struct Variant {
    pub vary: VaryKey,
    pub status: StatusCode,
    /// End-to-end headers as the client gets them for the identity
    /// representation (Content-Length set, hop-by-hop and surrogate fields
    /// removed, any rule's Cache-Control applied; no Age).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub encoded: Vec<Encoded>,
    pub times: Times,
    pub policy: Policy,
    pub tags: Vec<String>,
    /// The `Strata-Cache-Control` the stored response came with (RFC 9213:
    /// Strata's own targeted field), kept beside `headers` because it is
    /// never served: a 304 without one leaves it in force, as RFC 9111
    /// §4.3.4 leaves every stored field the 304 does not carry.
    pub strata_cc: Option<HeaderValue>,
    /// Marked stale by a soft purge (`POST /purge` with `"soft": true`):
    /// served stale once while one background revalidation runs.
    pub soft_purged: bool,
    /// Hits on this copy, counted only when `[cache] prefresh` is on.
    pub hits: HitCount,
    /// When a failed background refresh of this copy lets the next one
    /// start (see [`RefreshBackoff`]).
    pub refresh: RefreshBackoff,
}

/// Memory a stored field costs beyond its name and value bytes: its
/// bucket in `http`'s `HeaderMap` (hash, name, value handle, links: about
/// 100 bytes), its index slot, the value allocation's own header and
/// size-class rounding.
const FIELD_OVERHEAD: u64 = 160;

/// Memory a stored variant costs beyond its fields and bodies: the
/// `Variant` and its `Arc`, the header maps' tables, the `Object` and its
/// variant list, the cache's own entry (key, hash, eviction queues).
const VARIANT_OVERHEAD: u64 = 768;

/// Fields an answer from the cache gets on top of its stored ones:
/// `Age`, `Cache-Status` and `Via`.
pub const SERVED_FIELDS: usize = 3;

/// Makes room in a stored copy's `headers` for [`SERVED_FIELDS`] more
/// fields. A cloned `HeaderMap` keeps its index table's size, so a hit's
/// copy then takes them without growing and rehashing the table (about
/// 700 instructions per hit, measured with callgrind). Call it last on a
/// map that is stored.
pub fn room_to_serve(headers: &mut HeaderMap) {
    // Over `http`'s limit of 32,768 fields: a map that large is never
    // stored (the header size limits refuse it long before).
    let _ = headers.try_reserve(SERVED_FIELDS);
}

/// A copy of `h` whose values each own an allocation of their own size
/// (see the module doc): call it on upstream header maps before storing.
pub fn owned_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        let owned = match HeaderValue::from_bytes(value.as_bytes()) {
            Ok(mut v) => {
                v.set_sensitive(value.is_sensitive());
                v
            }
            // Cannot happen (the bytes were a valid value); keeping the
            // shared one is merely less compact.
            Err(_) => value.clone(),
        };
        out.append(name.clone(), owned);
    }
    out
}

impl Variant {
    /// A copy marked stale by a soft purge.
    pub fn soft_purged_copy(&self) -> Variant {
        let mut v = self.clone();
        v.soft_purged = true;
        v
    }

    /// Bytes this variant accounts for in a tier: what it really holds
    /// (see [`FIELD_OVERHEAD`], [`VARIANT_OVERHEAD`]).
    pub fn weight(&self) -> u64 {
        let headers = |h: &HeaderMap| -> u64 {
            h.iter()
                .map(|(k, v)| (k.as_str().len() + v.len()) as u64 + FIELD_OVERHEAD)
                .sum()
        };
        let encoded: u64 = self
            .encoded
            .iter()
            .map(|e| {
                let (bytes, fields) = e.fields.size();
                crate::cache::arena::footprint(&e.body) + bytes + fields * FIELD_OVERHEAD
            })
            .sum();
        crate::cache::arena::footprint(&self.body)
            + headers(&self.headers)
            + encoded
            + self.tags.iter().map(|t| t.len() as u64 + 48).sum::<u64>()
            + self.strata_cc.as_ref().map_or(0, |v| v.len() as u64 + 48)
            + self
                .vary
                .0
                .iter()
                .map(|(n, v)| {
                    64 + n.as_str().len() as u64 + v.as_ref().map_or(0, |v| v.len()) as u64
                })
                .sum::<u64>()
            + VARIANT_OVERHEAD
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    /// The stored `Last-Modified` when it is one valid HTTP-date: an
    /// invalid one is no validator (it was sent as `If-Modified-Since`).
    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers
            .get(header::LAST_MODIFIED)
            .filter(|_| freshness::last_modified_is_valid(&self.headers))
    }

    pub fn has_validators(&self) -> bool {
        freshness::has_validators(&self.headers)
    }

    /// Remaining freshness at `now`, in seconds: the freshness lifetime
    /// minus the current age (RFC 9111 §4.2), rounded up while fresh;
    /// ≤ 0 once stale.
    pub fn ttl(&self, now: Millis) -> i64 {
        freshness::ttl(&self.policy, &self.times, now)
    }

    /// [`Variant::ttl`] as reported (`Cache-Status`, `/cache`): at most 0
    /// once soft-purged, which makes a copy stale whatever its lifetime.
    pub fn reported_ttl(&self, now: Millis) -> i64 {
        let ttl = self.ttl(now);
        if self.soft_purged {
            ttl.min(0)
        } else {
            ttl
        }
    }

    /// Seconds a tier should keep this variant from `now`.
    pub fn keep_secs(&self, now: Millis) -> u64 {
        let total = freshness::keep_secs(&self.policy, self.has_validators());
        let age = freshness::current_age(&self.times, now);
        total.saturating_sub(age).max(1)
    }

    /// The representation for `coding` (identity when `None` or absent).
    pub fn representation(&self, coding: Option<Coding>) -> (&HeaderMap, &Bytes) {
        if let Some(c) = coding {
            if let Some(e) = self.encoded.iter().find(|e| e.coding == c) {
                return (e.headers(), &e.body);
            }
        }
        (&self.headers, &self.body)
    }

    /// Whether a request with these fields selects this variant.
    pub fn matches(&self, request: &(impl RequestFields + ?Sized)) -> bool {
        self.vary
            .0
            .iter()
            .all(|(name, stored)| request.vary_value(name).as_deref() == stored.as_deref())
    }
}

/// All variants of one URL.
#[derive(Debug, Clone)]
pub struct Object {
    pub key: CacheKey,
    pub variants: Vec<Arc<Variant>>,
}

impl Object {
    pub fn weight(&self) -> u64 {
        self.key.url().len() as u64 + self.variants.iter().map(|v| v.weight()).sum::<u64>()
    }

    /// The stored variant selected by this request, if any.
    pub fn select(&self, request: &(impl RequestFields + ?Sized)) -> Option<&Arc<Variant>> {
        // Newest first: a variant added later supersedes an older one. An
        // object with one variant (or none varying) compares once; with
        // several, the request's normalised values are computed once per
        // field, not once per variant.
        if self.variants.len() < 2 {
            return self.variants.iter().find(|v| v.matches(request));
        }
        let mut seen: Vec<(&HeaderName, Option<String>)> = Vec::new();
        self.variants.iter().rev().find(|v| {
            v.vary.0.iter().all(|(name, stored)| {
                let value = match seen.iter().position(|(n, _)| *n == name) {
                    Some(i) => &seen[i].1,
                    None => {
                        seen.push((name, request.vary_value(name)));
                        &seen[seen.len() - 1].1
                    }
                };
                value.as_deref() == stored.as_deref()
            })
        })
    }

    /// The collapsed-forwarding key of the variant `request` selects: the
    /// URL's hash when its responses vary on nothing, else the hash mixed
    /// with the request's values of the Vary fields (normalised as for
    /// selection). Concurrent misses for one variant make one upstream
    /// request (SPEC §3); those for different variants do not queue
    /// behind each other.
    pub fn collapse_key(&self, request: &(impl RequestFields + ?Sized)) -> u128 {
        let url = self.key.hash();
        let Some(names) = self.variants.last().map(|v| &v.vary.0) else {
            return url;
        };
        if names.is_empty() {
            return url;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&url.to_le_bytes());
        for (name, _) in names {
            h.update(name.as_str().as_bytes());
            match request.vary_value(name) {
                Some(v) => {
                    h.update(b"\x01");
                    h.update(v.as_bytes());
                }
                None => h.update(b"\x00"),
            }
            h.update(b"\x00");
        }
        h.digest128()
    }

    /// `base` (the URL's object as a fetch saw it, if any) with `variant`
    /// added; a new object of `key` holding only `variant` without one.
    pub fn adding(base: Option<&Object>, key: &CacheKey, variant: Arc<Variant>) -> Object {
        match base {
            Some(base) => base.with_variant(variant),
            None => Object {
                key: key.clone(),
                variants: vec![variant],
            },
        }
    }

    /// A copy with `variant` added, replacing any with the same Vary key
    /// (and every variant when the Vary field names changed).
    pub fn with_variant(&self, variant: Arc<Variant>) -> Object {
        let names = |v: &Variant| v.vary.0.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let new_names = names(&variant);
        let mut variants: Vec<Arc<Variant>> = self
            .variants
            .iter()
            .filter(|v| names(v) == new_names && v.vary != variant.vary)
            .cloned()
            .collect();
        variants.push(variant);
        if variants.len() > MAX_VARIANTS {
            variants.remove(0);
        }
        Object {
            key: self.key.clone(),
            variants,
        }
    }

    /// A copy with the variants of `other` (the same URL as another
    /// instance stored it) that this one lacks: same Vary field names, a
    /// Vary key none of ours has. Ours stay newest, so they win a tie;
    /// `None` when `other` adds nothing.
    pub fn with_missing_from(&self, other: &Object) -> Option<Object> {
        let names = |v: &Variant| v.vary.0.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let ours = self.variants.first().map(|v| names(v));
        let mut variants: Vec<Arc<Variant>> = other
            .variants
            .iter()
            .filter(|v| ours.as_ref().is_none_or(|n| *n == names(v)))
            .filter(|v| self.variants.iter().all(|mine| mine.vary != v.vary))
            .cloned()
            .collect();
        if variants.is_empty() {
            return None;
        }
        variants.extend(self.variants.iter().cloned());
        let excess = variants.len().saturating_sub(MAX_VARIANTS);
        variants.drain(..excess);
        Some(Object {
            key: self.key.clone(),
            variants,
        })
    }

    /// A copy with `encoded`'s representations given to the variant that
    /// holds the same response: the same Vary key and the same body bytes
    /// (the stored `Bytes`, not equal content), and no representations
    /// yet. Their fields are rebuilt from that variant's own, which a
    /// `304` may have refreshed since they were encoded. `None` when there
    /// is no such variant (purged and fetched again, or already complete).
    pub fn with_encodings_of(&self, encoded: &Variant) -> Option<Object> {
        let current = self.variants.iter().find(|v| v.vary == encoded.vary)?;
        let same_body = current.body.as_ptr() == encoded.body.as_ptr()
            && current.body.len() == encoded.body.len();
        if !same_body || !current.encoded.is_empty() || encoded.encoded.is_empty() {
            return None;
        }
        let mut v = (**current).clone();
        crate::compression::merge_vary_accept_encoding(&mut v.headers);
        v.encoded = encoded
            .encoded
            .iter()
            .map(|e| {
                let mut h = v.headers.clone();
                crate::compression::mark_encoded(&mut h, e.coding, Some(e.body.len() as u64));
                Encoded::new(e.coding, h, e.body.clone())
            })
            .collect();
        Some(self.with_variant(Arc::new(v)))
    }

    pub fn keep_secs(&self, now: Millis) -> u64 {
        self.variants
            .iter()
            .map(|v| v.keep_secs(now))
            .max()
            .unwrap_or(1)
    }

    /// Whether any variant is marked by a soft purge.
    pub fn is_soft_purged(&self) -> bool {
        self.variants.iter().any(|v| v.soft_purged)
    }

    /// A copy with every variant marked stale by a soft purge.
    pub fn soft_purged(&self) -> Object {
        Object {
            key: self.key.clone(),
            variants: self
                .variants
                .iter()
                .map(|v| Arc::new(v.soft_purged_copy()))
                .collect(),
        }
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.variants
            .iter()
            .any(|v| v.tags.iter().any(|t| t == tag))
    }
}

/// The Vary field names of a response, lowercased, in order, deduplicated.
pub fn vary_names(response: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in response.get_all(header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        for name in v.split(',') {
            if let Ok(n) = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    names
}

/// The Vary key of `request` for the fields a response names (read as
/// [`Variant::matches`] reads them, so the variant is found again).
pub fn vary_key(request: &(impl RequestFields + ?Sized), names: &[HeaderName]) -> VaryKey {
    VaryKey(
        names
            .iter()
            .map(|n| (n.clone(), request.vary_value(n)))
            .collect(),
    )
}

/// A one-byte `200` variant received at `received` (milliseconds since
/// the epoch), fresh for a minute: for tests of the cache's modules.
#[cfg(test)]
pub(crate) fn one_byte_variant(vary: VaryKey, received: Millis) -> Variant {
    Variant {
        vary,
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"x"),
        encoded: Vec::new(),
        times: Times {
            request: received,
            response: received,
            initial_age_ms: 0,
        },
        policy: Policy {
            lifetime: 60,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            must_revalidate: false,
            no_cache: false,
            grace: 0,
        },
        tags: vec![],
        strata_cc: None,
        soft_purged: false,
        hits: HitCount::default(),
        refresh: RefreshBackoff::default(),
    }
}

/// A header map of `pairs` (repeated names kept): for tests of the
/// cache's modules.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        test_headers(pairs)
    }

    fn variant(vary: VaryKey) -> Arc<Variant> {
        Arc::new(one_byte_variant(vary, 0))
    }

    /// Encoded representations made for one stored response go to a copy
    /// of it that replaced it meanwhile (a 304 refreshed its fields: theirs
    /// are rebuilt from the copy's), never to another response with equal
    /// content, nor to a copy that already has some.
    #[test]
    fn encodings_go_to_a_copy_of_the_same_response_only() {
        let admitted = variant(VaryKey::default());
        let mut refreshed = (*admitted).clone();
        refreshed.headers = h(&[("cache-control", "max-age=99"), ("etag", "\"e\"")]);
        let object = Object {
            key: CacheKey::new(false, "h", "/"),
            variants: vec![Arc::new(refreshed)],
        };
        let mut done = (*admitted).clone();
        done.encoded = vec![Encoded::new(
            Coding::Gzip,
            h(&[("etag", "\"old-gzip\"")]),
            Bytes::from_static(b"gz"),
        )];
        let merged = object.with_encodings_of(&done).expect("same body");
        let v = &merged.variants[0];
        assert_eq!(v.encoded.len(), 1);
        let fields = v.encoded[0].headers();
        assert_eq!(fields["cache-control"], "max-age=99");
        assert_eq!(fields["etag"], "\"e-gzip\"");
        assert_eq!(fields["content-encoding"], "gzip");
        assert_eq!(v.headers["vary"], "Accept-Encoding");
        // Complete already: nothing to add.
        assert!(merged.with_encodings_of(&done).is_none());
        // Equal content, another response (fetched again after a purge).
        let mut other = (*admitted).clone();
        other.body = Bytes::from(b"x".to_vec());
        let refetched = Object {
            key: CacheKey::new(false, "h", "/"),
            variants: vec![Arc::new(other)],
        };
        assert!(refetched.with_encodings_of(&done).is_none());
    }

    #[test]
    fn vary_selection_normalises() {
        let names = vary_names(&h(&[
            ("vary", "Accept-Language, X-Foo"),
            ("vary", "accept-language"),
        ]));
        assert_eq!(names.len(), 2);
        let en = vary_key(&h(&[("accept-language", "en,  fr")]), &names);
        let de = vary_key(&h(&[("accept-language", "de")]), &names);
        let obj = Object {
            key: CacheKey::new(false, "h", "/"),
            variants: vec![],
        };
        let obj = obj.with_variant(variant(en)).with_variant(variant(de));
        assert_eq!(obj.variants.len(), 2);
        assert!(obj.select(&h(&[("accept-language", "en, fr")])).is_some());
        assert!(obj
            .select(&h(&[("accept-language", "en"), ("accept-language", "fr")]))
            .is_some());
        assert!(obj.select(&h(&[("accept-language", "de")])).is_some());
        assert!(obj.select(&h(&[("accept-language", "es")])).is_none());
        assert!(obj
            .select(&h(&[("accept-language", "de"), ("x-foo", "1")]))
            .is_none());
        assert!(obj.select(&h(&[])).is_none());
    }

    #[test]
    fn same_vary_key_replaces() {
        let obj = Object {
            key: CacheKey::new(false, "h", "/"),
            variants: vec![],
        };
        let obj = obj
            .with_variant(variant(VaryKey::default()))
            .with_variant(variant(VaryKey::default()));
        assert_eq!(obj.variants.len(), 1);
    }
}

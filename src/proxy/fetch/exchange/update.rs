//! A 304's update of a stored variant (RFC 9111 §4.3.4): which stored
//! fields it replaces and which it never touches, the tags and selecting
//! fields kept beside the headers, the rule's Cache-Control, and the
//! directives in force after it (a targeted field the 304 lacks stays).

use http::header::{self, HeaderMap};
use http::request::Parts;

use super::super::super::headers;
use super::super::storability::STRATA_CACHE_CONTROL;
use super::{Exchange, CONTENT_MD5, PROXY_AUTHENTICATION_INFO};
use crate::cache::directives::CacheControl;
use crate::cache::entry::{self, Variant};
use crate::cache::freshness::{self, Millis};
use crate::cache::tags;
use crate::compression;
use crate::rules::lifetime;

/// RFC 9111 §4.3.4: a 304 updates the stored headers (all but the fields
/// that describe the stored body: `Content-Length`, `Content-Encoding`,
/// `Content-Range`, `Content-MD5`, Strata's `Accept-Ranges`; and those no
/// shared copy holds: `Set-Cookie`, `Proxy-Authentication-Info`) and restarts the
/// freshness clock. A rule's Cache-Control and TTL keys still apply, to
/// the stored status; a `Set-Cookie` on the 304 is the requester's, never
/// the shared copy's. Fields the 304 carries replace the stored ones and
/// absent ones are kept, which holds for two that Strata keeps beside the
/// headers: the tags (`Surrogate-Key` / `Cache-Tag`, purged by what the
/// entry carries now) and the selecting fields (RFC 9111 §4.1: a `Vary`
/// naming other fields makes the updated response the one stored for the
/// request that was validated, selected by its values of them). A `Vary`
/// on the 304 replaces the origin's fields only: a response Strata
/// encodes keeps `Accept-Encoding` in it, on every copy (SPEC §6).
impl Exchange {
    pub(super) fn freshen(
        &self,
        parts: &Parts,
        old: &Variant,
        update: &HeaderMap,
        request_time: Millis,
        response_time: Millis,
    ) -> Variant {
        let rule = self.rule(parts, &old.headers);
        // Owned values: the 304's are slices of the connection's read buffer.
        let mut update = entry::owned_headers(update);
        headers::strip_hop_by_hop(&mut update, false);
        let tagged = tags::carried(&update);
        let new_tags = tags::take(&mut update);
        let origin = self.directives(&update);
        let ruled = match rule
            .filter(|_| lifetime::rule_status(old.status) && !origin.private && !origin.no_store)
            .and_then(|r| r.cache_control_for(origin.no_transform))
        {
            Some(value) => {
                update.insert(header::CACHE_CONTROL, value);
                true
            }
            None => false,
        };
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::CONTENT_RANGE,
            CONTENT_MD5.clone(),
            PROXY_AUTHENTICATION_INFO.clone(),
            header::SET_COOKIE,
            freshness::SET_COOKIE2.clone(),
            // Strata's own (stored with the 200): the stored bytes are
            // served in ranges whatever the origin says now.
            header::ACCEPT_RANGES,
        ] {
            update.remove(name);
        }
        let apply = |target: &mut HeaderMap, keep_etag: bool| {
            let mut last: Option<header::HeaderName> = None;
            for (name, value) in update.iter() {
                if keep_etag && name == header::ETAG {
                    continue;
                }
                if last.as_ref() != Some(name) {
                    target.remove(name);
                    last = Some(name.clone());
                }
                target.append(name.clone(), value.clone());
            }
            target.remove(header::AGE);
        };
        let mut v = old.clone();
        v.soft_purged = false;
        if tagged {
            v.tags = new_tags;
        }
        if update.contains_key(header::VARY) {
            let names = entry::vary_names(&update);
            if !v.vary.0.iter().map(|(n, _)| n).eq(names.iter()) {
                // Keyed by the fields as this request sent them upstream
                // (the request the 304 answered), as lookups read them.
                v.vary = entry::vary_key(&self.as_forwarded(parts), &names);
            }
        }
        apply(&mut v.headers, false);
        // Strata's own targeted field: the 304's replaces the stored one;
        // without one, the stored one stays in force (never served).
        match v.headers.get(STRATA_CACHE_CONTROL) {
            Some(new) => v.strata_cc = Some(new.clone()),
            None => {
                if let Some(stored) = &v.strata_cc {
                    v.headers.insert(STRATA_CACHE_CONTROL, stored.clone());
                }
            }
        }
        let cc = if ruled {
            CacheControl::from_headers(&v.headers)
        } else {
            self.directives(&v.headers)
        };
        v.headers.remove(STRATA_CACHE_CONTROL);
        entry::room_to_serve(&mut v.headers);
        // RFC 9110 §7.7: a response that now says `no-transform` is never
        // served in a coding Strata made (its encoded copies made before
        // were served after the 304, with `no-transform` on them).
        if CacheControl::from_headers(&v.headers).no_transform {
            v.encoded.clear();
        }
        // A response Strata encodes varies on `Accept-Encoding` as well as
        // on what the origin names (added as admission adds it): a `Vary`
        // on the 304 replaces the origin's fields, not Strata's.
        let compression = self.runtime.config.compression.as_ref();
        if !v.encoded.is_empty()
            || compression
                .is_some_and(|p| p.encodes_stored(v.status, &v.headers, v.body.len() as u64))
        {
            compression::merge_vary_accept_encoding(&mut v.headers);
        }
        for e in &mut v.encoded {
            e.modify_headers(|h| {
                apply(h, true);
                h.remove(STRATA_CACHE_CONTROL);
                compression::merge_vary_accept_encoding(h);
            });
        }
        v.times = freshness::times(&update, request_time, response_time);
        v.policy = self.policy(parts, v.status, &v.headers, &cc, response_time);
        v
    }

    /// The origin's directives to Strata after a 304 with `update` to the
    /// stored `old` (RFC 9111 §4.3.4 with RFC 9213): a targeted field the
    /// 304 does not carry stays in force from the stored response (its
    /// `Strata-Cache-Control` kept beside the served fields, any other in
    /// them), so `no-store` or `private` in the 304's targeted field ends
    /// the entry, and `Cache-Control: no-store` beside a targeted field in
    /// force does not.
    pub(super) fn directives_after_304(&self, old: &Variant, update: &HeaderMap) -> CacheControl {
        let targeted = &self.runtime.config.cache.targeted_cache_control;
        let stored = |name: &header::HeaderName| {
            if *name == STRATA_CACHE_CONTROL {
                old.strata_cc.clone()
            } else {
                old.headers.get(name).cloned()
            }
        };
        let missing: Vec<_> = targeted
            .iter()
            .filter(|name| !update.contains_key(*name))
            .filter_map(|name| Some((name.clone(), stored(name)?)))
            .collect();
        if missing.is_empty() {
            return self.directives(update);
        }
        let mut merged = update.clone();
        for (name, value) in missing {
            merged.insert(name, value);
        }
        self.directives(&merged)
    }
}

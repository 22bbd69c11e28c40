//! Answering a request from a stored variant: representation choice
//! (compressed or identity), conditional requests (RFC 9110 §13: 304 and
//! 412, also for a response relayed unstored), single byte ranges
//! (206/416, `If-Range`: `range.rs`), HEAD, and `Age`. Everything here is
//! a clone of stored `Bytes` and headers; no body copy.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::body::ProxyBody;
use super::range::{
    if_range_holds, parse_range, partial, range_field, unsatisfiable, RangeOutcome,
};
use super::validate::{Field, Present};
use crate::cache::entry::Variant;
use crate::cache::freshness::{self, Millis};
use crate::compression::Coding;

/// Builds the response for `req` from `variant`, in `coding` (identity
/// when `None` or not stored). `wanted` is the client's first choice
/// ([`crate::compression::negotiate`]); when `coding` is another (the
/// first choice was not stored), an `If-None-Match` naming the first
/// choice's tag of this variant (what Strata sent when it encoded the
/// miss on the fly) still gets `304`: the client holds this version in
/// the coding it prefers (SPEC §6).
pub fn from_stored(
    variant: &Variant,
    method: &Method,
    req: &HeaderMap,
    present: Present,
    coding: Option<Coding>,
    wanted: Option<Coding>,
    now: Millis,
) -> Response<ProxyBody> {
    let (headers, body) = variant.representation(coding);
    let age = freshness::current_age(&variant.times, now);
    // Most hits carry no precondition and no range: no lookup for them.
    if present.has(Field::Conditional) {
        let received = Some(variant.times.response);
        if let Some(status) = precondition(variant.status, headers, req, method, received) {
            return not_modified_or_failed(status, headers, age);
        }
        if let Some(wanted) = wanted.filter(|&w| Some(w) != coding && variant.status.is_success()) {
            if held_in(wanted, &variant.headers, req)
                && (*method == Method::GET || *method == Method::HEAD)
            {
                // It names the representation the client holds (the one
                // encoded on the fly), not one it never got: a later
                // `If-Range` with a stored copy's strong tag would splice
                // that copy's bytes onto the client's.
                let mut resp = not_modified_or_failed(StatusCode::NOT_MODIFIED, headers, age);
                let held = variant
                    .headers
                    .get(header::ETAG)
                    .and_then(|e| crate::compression::encoded_etag(e, wanted, true));
                if let Some(held) = held {
                    resp.headers_mut().insert(header::ETAG, held);
                    crate::compression::merge_vary_accept_encoding(resp.headers_mut());
                }
                return resp;
            }
        }
        if variant.status == StatusCode::OK && *method == Method::GET {
            if let Some(range) = range_field(req) {
                // A date names no encoded bytes: Strata's encoder made them,
                // and a streamed miss's differ from the stored copy's.
                let encoded = !std::ptr::eq(headers, &variant.headers);
                if if_range_holds(headers, req, !encoded) {
                    match parse_range(range, body.len() as u64) {
                        RangeOutcome::Ignore => {}
                        RangeOutcome::Unsatisfiable => {
                            return unsatisfiable(headers, body.len() as u64, age)
                        }
                        RangeOutcome::Single(a, b) => return partial(headers, body, a, b, age),
                    }
                }
            }
        }
    }
    let mut resp = Response::new(if method == Method::HEAD {
        ProxyBody::empty()
    } else {
        ProxyBody::full(body.clone())
    });
    *resp.status_mut() = variant.status;
    if variant.status.canonical_reason().is_none() {
        // hyper writes `<none>` for a code it cannot name; the origin's
        // phrase is not stored (clients ignore it, RFC 9112 §4).
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b""));
    }
    *resp.headers_mut() = headers.clone();
    resp.headers_mut().insert(header::AGE, age_value(age));
    resp
}

/// The `Age` field's value for `age` seconds (RFC 9111 §5.1). Up to
/// [`AGE_TABLE_MAX`] it is a slice of one static text of every number, so
/// a hit's `Age` allocates nothing (formatting a `HeaderValue` allocates
/// twice) and its clone touches no shared counter; older ages are
/// formatted.
pub fn age_value(age: u64) -> HeaderValue {
    static TEXT: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
        let mut text = String::with_capacity(AGE_TEXT_LEN);
        for n in 0..=AGE_TABLE_MAX {
            text.push_str(itoa::Buffer::new().format(n));
        }
        debug_assert_eq!(text.len(), AGE_TEXT_LEN);
        // Once per process, 38,890 bytes, kept for its life.
        Box::leak(text.into_boxed_str())
    });
    // The numbers of one width follow every narrower one.
    let (base, width, offset) = match age {
        0..=9 => (0, 1, 0),
        10..=99 => (10, 2, 10),
        100..=999 => (100, 3, 190),
        1_000..=AGE_TABLE_MAX => (1_000, 4, 2_890),
        _ => return HeaderValue::from(age),
    };
    let start = (offset + (age - base) * width) as usize;
    let text: &'static str = *TEXT;
    text.get(start..start + width as usize)
        .and_then(|digits| {
            HeaderValue::from_maybe_shared(Bytes::from_static(digits.as_bytes())).ok()
        })
        .unwrap_or_else(|| HeaderValue::from(age))
}

/// The oldest `Age` [`age_value`] takes from its table (2 h 46 min).
const AGE_TABLE_MAX: u64 = 9_999;
/// The table's text: 10 one-digit, 90 two-digit, 900 three-digit and
/// 9,000 four-digit numbers.
const AGE_TEXT_LEN: usize = 10 + 90 * 2 + 900 * 3 + 9_000 * 4;

/// An HTTP-date field (RFC 9110 §5.6.7); `None` when absent or invalid.
pub(super) fn date_field(h: &HeaderMap, name: header::HeaderName) -> Option<std::time::SystemTime> {
    read_date(h, name, crate::cache::http_date::parse)
}

fn read_date(
    h: &HeaderMap,
    name: header::HeaderName,
    parse: fn(&str) -> Option<std::time::SystemTime>,
) -> Option<std::time::SystemTime> {
    h.get(name).and_then(|v| v.to_str().ok()).and_then(parse)
}

/// The coding `variant` is served in: `wanted` (the client's first
/// choice) when it is stored (the usual case: one comparison); else the
/// best of those stored that the client accepts (`req`'s
/// Accept-Encoding), by its q-values (brotli may not have fitted the
/// encoding budget while gzip did, and a browser accepts both); identity
/// when none is.
pub fn stored_coding(
    variant: &Variant,
    wanted: Option<Coding>,
    policy: Option<&crate::compression::CompressionPolicy>,
    req: &HeaderMap,
) -> Option<Coding> {
    let wanted = wanted?;
    if variant.encoded.iter().any(|e| e.coding == wanted) {
        return Some(wanted);
    }
    if variant.encoded.is_empty() {
        return None;
    }
    let mut stored = [wanted; 2];
    let mut n = 0;
    for &c in &policy?.algorithms {
        if n < stored.len() && variant.encoded.iter().any(|e| e.coding == c) {
            stored[n] = c;
            n += 1;
        }
    }
    crate::compression::negotiate(&stored[..n], req.get_all(header::ACCEPT_ENCODING).iter())
}

/// Whether `req`'s `If-None-Match` names the tag Strata gives the
/// representation in `coding` of the identity response with `identity`
/// fields (`"xyz-gzip"`, or weak when it was encoded on the fly). Weak
/// comparison, as for `If-None-Match` (RFC 9110 §13.1.2).
fn held_in(coding: Coding, identity: &HeaderMap, req: &HeaderMap) -> bool {
    let Some(inm) = req.get(header::IF_NONE_MATCH) else {
        return false;
    };
    let etag = identity.get(header::ETAG).map(HeaderValue::as_bytes);
    // Only the tags that carry the coding's suffix: an identity tag in the
    // same list is the precondition's to judge, and the 304 must not name
    // a representation the client does not hold.
    inm.as_bytes()
        .split(|&b| b == b',')
        .filter_map(|tag| std::str::from_utf8(tag).ok())
        .filter_map(|tag| crate::compression::strip_etag_suffix(tag, coding))
        .any(|base| etag_list_matches(base.as_bytes(), etag, false))
}

/// A request's precondition date, read exactly ([`parse_exact`]): not a
/// valid HTTP-date, it is ignored (RFC 9110 §13.1.3, §13.1.4).
///
/// [`parse_exact`]: crate::cache::http_date::parse_exact
fn precondition_date(req: &HeaderMap, name: header::HeaderName) -> Option<std::time::SystemTime> {
    read_date(req, name, crate::cache::http_date::parse_exact)
}

/// RFC 9110 §13.2.2 evaluation order; `Some(status)` short-circuits.
/// Preconditions are ignored for a response (`status`) other than 2xx
/// (§13.2.1): a stored `404` is no current representation to compare.
/// `received` (unix ms) is set for a stored response: without
/// `Last-Modified`, `If-Modified-Since` is evaluated against its `Date`,
/// else the time it was received (RFC 9111 §4.3.2); a response relayed
/// unstored is judged as its origin judges it, by `Last-Modified` alone.
fn precondition(
    status: StatusCode,
    headers: &HeaderMap,
    req: &HeaderMap,
    method: &Method,
    received: Option<Millis>,
) -> Option<StatusCode> {
    if !status.is_success() {
        return None;
    }
    // Bytes, not text: an entity-tag may hold obs-text (RFC 9110 §8.8.3).
    let etag = headers.get(header::ETAG).map(HeaderValue::as_bytes);
    // Parsed only for a date precondition (a hit without one, the usual
    // case, parses no date).
    let last_modified = || date_field(headers, header::LAST_MODIFIED);
    if let Some(im) = req.get(header::IF_MATCH).map(HeaderValue::as_bytes) {
        if !etag_list_matches(im, etag, true) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let Some(ius) = precondition_date(req, header::IF_UNMODIFIED_SINCE) {
        if last_modified().is_none_or(|lm| lm > ius) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    let safe = *method == Method::GET || *method == Method::HEAD;
    if let Some(inm) = req.get(header::IF_NONE_MATCH).map(HeaderValue::as_bytes) {
        if etag_list_matches(inm, etag, false) {
            return Some(if safe {
                StatusCode::NOT_MODIFIED
            } else {
                StatusCode::PRECONDITION_FAILED
            });
        }
    } else if safe {
        if let Some(ims) = precondition_date(req, header::IF_MODIFIED_SINCE) {
            let modified = last_modified().or_else(|| {
                let received = received?;
                date_field(headers, header::DATE).or_else(|| {
                    Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(received))
                })
            });
            if modified.is_some_and(|lm| lm <= ims) {
                return Some(StatusCode::NOT_MODIFIED);
            }
        }
    }
    None
}

/// Whether a list such as `"a", W/"b"` or `*` matches `etag`, the tag of
/// a current (2xx) representation, if it has one; weak comparison unless
/// `strong` (RFC 9110 §8.8.3.2). `*` matches any current representation,
/// with or without a tag (§13.1.1, §13.1.2). Bytes, as the fields came:
/// an opaque tag may hold obs-text (§8.8.3), which is not `str`.
pub fn etag_list_matches(list: &[u8], etag: Option<&[u8]>, strong: bool) -> bool {
    let list = list.trim_ascii();
    if list == b"*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    let (etag_weak, etag_opaque) = split_weak(etag.trim_ascii());
    if strong && etag_weak {
        return false;
    }
    list.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|candidate| {
            let (weak, opaque) = split_weak(candidate);
            opaque == etag_opaque && !(strong && weak)
        })
}

/// RFC 9111 §4.3.4: whether a `304` (its fields `not_modified`) selects a
/// stored response (its fields `stored`) for update. A strong `ETag`
/// selects only a stored response with that same strong tag; a weak one, a
/// stored tag equal by weak comparison; without an `ETag`, `Last-Modified`
/// must name the stored response's date. A `304` with neither selects the
/// stored response: Strata validates one stored response at a time, with
/// its own validators, so a bare `304` (RFC 9110 §15.4.5 asks the origin to
/// repeat the `ETag`; many do not) can only be about that one, as nginx and
/// Varnish read it; RFC 9111 §4.3.4 selects it only when it has no
/// validator either, which would refetch every such response. A `304` that
/// selects nothing must not be used to update anything.
pub fn selected_for_update(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    fn tag(h: &HeaderMap) -> Option<&[u8]> {
        h.get(header::ETAG).map(|v| v.as_bytes().trim_ascii())
    }
    if let Some(new) = tag(not_modified) {
        let (new_weak, new_opaque) = split_weak(new);
        return tag(stored).is_some_and(|old| {
            let (old_weak, old_opaque) = split_weak(old);
            old_opaque == new_opaque && (new_weak || !old_weak)
        });
    }
    if not_modified.contains_key(header::LAST_MODIFIED) {
        return date_field(not_modified, header::LAST_MODIFIED)
            .is_some_and(|new| date_field(stored, header::LAST_MODIFIED) == Some(new));
    }
    true
}

fn split_weak(tag: &[u8]) -> (bool, &[u8]) {
    match tag.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, tag),
    }
}

/// The fields a 304 carries (RFC 9110 §15.4.5), plus Last-Modified and an
/// upstream cache's `Cache-Status` (kept before Strata's, RFC 9211 §2, as
/// on the 200 it stands for).
const NOT_MODIFIED_FIELDS: [header::HeaderName; 8] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
    header::HeaderName::from_static("cache-status"),
];

/// The `304` or `412` that the request's preconditions (`req`, RFC 9110
/// §13.2.2) call for against `headers`, those of a response that was not
/// stored (no `Age`), if any; a `304` carries their validators and
/// metadata (§15.4.5).
pub fn preconditions(
    status: StatusCode,
    headers: &HeaderMap,
    req: &HeaderMap,
    method: &Method,
) -> Option<Response<ProxyBody>> {
    precondition(status, headers, req, method, None).map(|status| unstored(status, headers))
}

/// A `304` or `412` for a response that was not stored: no `Age`.
fn unstored(status: StatusCode, headers: &HeaderMap) -> Response<ProxyBody> {
    let mut resp = not_modified_or_failed(status, headers, 0);
    resp.headers_mut().remove(header::AGE);
    resp
}

fn not_modified_or_failed(
    status: StatusCode,
    headers: &HeaderMap,
    age: u64,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if status == StatusCode::NOT_MODIFIED {
        for name in &NOT_MODIFIED_FIELDS {
            for v in headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(header::AGE, age_value(age));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_values_are_the_decimal_numbers() {
        for age in (0..=10_050).chain([u64::from(u32::MAX), u64::MAX]) {
            assert_eq!(age_value(age).to_str().ok(), Some(age.to_string().as_str()));
        }
    }

    #[test]
    fn a_304_selects_only_the_response_its_validator_names() {
        let h = |fields: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in fields {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        const LM: &str = "Mon, 30 Nov 2026 10:00:00 GMT";
        const LATER: &str = "Mon, 30 Nov 2026 12:00:00 GMT";
        type Fields = &'static [(&'static str, &'static str)];
        let cases: [(Fields, Fields, bool); 10] = [
            (&[("etag", "\"v1\"")], &[("etag", "\"v1\"")], true),
            (&[("etag", "\"v1\"")], &[("etag", "\"v2\"")], false),
            // A strong tag names no weakly tagged response.
            (&[("etag", "W/\"v1\"")], &[("etag", "\"v1\"")], false),
            (&[("etag", "W/\"v1\"")], &[("etag", "W/\"v1\"")], true),
            (&[("etag", "\"v1\"")], &[("etag", "W/\"v1\"")], true),
            (&[("etag", "W/\"v1\"")], &[("etag", "W/\"v2\"")], false),
            (&[("last-modified", LM)], &[("last-modified", LM)], true),
            (&[("last-modified", LM)], &[("last-modified", LATER)], false),
            // No validator in the 304: the response whose validators
            // were sent (an origin that does not repeat them).
            (&[("etag", "\"v1\"")], &[], true),
            (&[], &[], true),
        ];
        for (stored, update, selected) in cases {
            assert_eq!(
                selected_for_update(&h(stored), &h(update)),
                selected,
                "{stored:?} / {update:?}"
            );
        }
    }

    #[test]
    fn etag_matching() {
        assert!(etag_list_matches(b"\"a\", \"b\"", Some(b"\"b\""), false));
        assert!(etag_list_matches(b"W/\"a\"", Some(b"\"a\""), false));
        assert!(!etag_list_matches(b"W/\"a\"", Some(b"\"a\""), true));
        assert!(etag_list_matches(b"*", Some(b"\"a\""), false));
        assert!(etag_list_matches(b"*", None, false));
        assert!(!etag_list_matches(b"\"c\"", Some(b"\"a\""), false));
        // obs-text in an opaque tag (RFC 9110 §8.8.3), as cache-tests.fyi's
        // conditional-etag-strong-respond-obs-text sends it.
        assert!(etag_list_matches(
            b"\"abc\xfc\"",
            Some(b"\"abc\xfc\""),
            true
        ));
        assert!(!etag_list_matches(b"\"abc\xfc\"", Some(b"\"abc\""), false));
    }
}

//! The header bookkeeping of an encoded representation: `Vary:
//! Accept-Encoding`, `Content-Encoding`, `Content-Length`, and the ETag of
//! an encoded variant (`"abc"` → `"abc-br"`) with its inverse for
//! conditional requests sent upstream (RFC 9110 §8.8.3: a different
//! representation needs a different strong validator).
//!
//! A body encoded as it streams (a miss, a pass) gets a **weak** ETag
//! (`W/"abc-br"`): its bytes depend on how the upstream's body arrived in
//! chunks, and differ from the stored copy encoded in one shot at store
//! level, so no strong validator can name both. A strong one let a client
//! resume a download begun on the miss with `If-Range` against the
//! stored bytes, and get a corrupt body.

use http::header::{ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::Coding;

/// Adds `Accept-Encoding` to the `Vary` header(s), merging the existing values
/// into one line without duplication (case-insensitive). `Vary: *` is left
/// alone.
pub fn merge_vary_accept_encoding(headers: &mut HeaderMap) {
    if !headers.contains_key(VARY) {
        // The usual case: nothing to merge with.
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        return;
    }
    let mut elements: Vec<&str> = Vec::new();
    for value in headers.get_all(VARY) {
        let Ok(value) = value.to_str() else {
            // Cannot rebuild an opaque value: add a line of our own instead.
            headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
            return;
        };
        elements.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    if elements
        .iter()
        .any(|e| *e == "*" || e.eq_ignore_ascii_case("accept-encoding"))
    {
        return;
    }
    elements.push("Accept-Encoding");
    match HeaderValue::from_str(&elements.join(", ")) {
        Ok(value) => {
            headers.insert(VARY, value);
        }
        Err(_) => {
            headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

/// Splits an entity-tag into (weak prefix, opaque part without quotes).
fn split_etag(etag: &[u8]) -> Option<(&[u8], &[u8])> {
    let (weak, rest) = match etag.strip_prefix(b"W/") {
        Some(rest) => (&b"W/"[..], rest),
        None => (&b""[..], etag),
    };
    let opaque = rest.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    (!opaque.contains(&b'"')).then_some((weak, opaque))
}

/// ETag of an encoded variant: `"abc"` becomes `"abc-br"` / `"abc-gzip"` and
/// `W/"abc"` becomes `W/"abc-br"`; with `weak`, always `W/"abc-br"`.
/// `None` if `etag` is not a valid entity-tag.
pub fn encoded_etag(etag: &HeaderValue, coding: Coding, weak: bool) -> Option<HeaderValue> {
    let (prefix, opaque) = split_etag(etag.as_bytes())?;
    let prefix = if weak { &b"W/"[..] } else { prefix };
    let value = [
        prefix,
        b"\"",
        opaque,
        b"-",
        coding.as_str().as_bytes(),
        b"\"",
    ]
    .concat();
    HeaderValue::from_bytes(&value).ok()
}

/// Inverse of [`encoded_etag`] for one entity-tag: `"abc-br"` with
/// [`Coding::Br`] gives `"abc"` (weakness kept). `None` if `etag` is not an
/// entity-tag carrying that coding's suffix.
pub fn strip_etag_suffix(etag: &str, coding: Coding) -> Option<String> {
    let (weak, opaque) = split_etag(etag.trim().as_bytes())?;
    let base = opaque.strip_suffix(coding.as_str().as_bytes())?;
    let base = std::str::from_utf8(base.strip_suffix(b"-")?).ok()?;
    Some(format!(
        "{}\"{base}\"",
        if weak.is_empty() { "" } else { "W/" }
    ))
}

/// Rewrites an `If-None-Match` or `If-Match` list for the upstream: each
/// entity-tag carrying the suffix of one of `codings` is replaced by its
/// base tag, the others (and `*`) are kept; one tag each, as the client
/// sent, so that an origin comparing the field as one string still
/// matches its own validator (SPEC §6). With `strong` (`If-None-Match`)
/// the base tag is strong: a streamed encoding's tag is weak only because
/// of Strata's encoder, `W/"xyz-gzip"` names the origin's `"xyz"`, and
/// under weak comparison an origin whose own tag is `W/"xyz"` matches
/// either way. Without it (`If-Match`, strong comparison, RFC 9110
/// §13.1.1) a weak tag stays weak, so it matches nothing, as the client's
/// own weak tag would not. `None` if the value is not valid UTF-8 or
/// nothing carries a suffix.
pub fn unmap_etag_list(
    value: &HeaderValue,
    codings: &[Coding],
    strong: bool,
) -> Option<HeaderValue> {
    let list = value.to_str().ok()?;
    let mut out = String::with_capacity(list.len());
    let mut mapped = false;
    for tag in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        match codings.iter().find_map(|&c| strip_etag_suffix(tag, c)) {
            Some(base) => {
                mapped = true;
                let base = if strong {
                    base.strip_prefix("W/").unwrap_or(&base)
                } else {
                    &base
                };
                out.push_str(base);
            }
            None => out.push_str(tag),
        }
    }
    if mapped {
        HeaderValue::from_str(&out).ok()
    } else {
        None
    }
}

/// Header fix-ups for a response whose body is now encoded with `coding`:
/// sets `Content-Encoding`, sets `Content-Length` to `encoded_len` (or removes
/// it when streaming), rewrites `ETag` with [`encoded_etag`] (weak when
/// streaming, see the module doc), removes `Accept-Ranges` when streaming
/// (ranges of a body encoded on the fly are not served; a stored one keeps
/// the identity's) and the digests of the identity bytes
/// (`Content-Digest` and `Repr-Digest`, RFC 9530, and `Content-MD5`: each
/// covers the encoded data, which Strata does not hash), and merges
/// `Vary: Accept-Encoding`.
pub fn mark_encoded(headers: &mut HeaderMap, coding: Coding, encoded_len: Option<u64>) {
    headers.insert(CONTENT_ENCODING, coding.header_value());
    match encoded_len {
        Some(len) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        None => {
            headers.remove(CONTENT_LENGTH);
        }
    }
    if let Some(etag) = headers.get(ETAG) {
        match encoded_etag(etag, coding, encoded_len.is_none()) {
            Some(tag) => headers.insert(ETAG, tag),
            None => headers.remove(ETAG),
        };
    }
    if encoded_len.is_none() {
        // Encoded as it streams: no byte of it can be asked for again. A
        // stored copy keeps the identity's field (Strata serves ranges of
        // its bytes).
        headers.remove(ACCEPT_RANGES);
    }
    for digest in &DIGESTS {
        headers.remove(digest);
    }
    merge_vary_accept_encoding(headers);
}

/// Fields that hash the content as sent: wrong once Strata encodes it.
/// Names built once, not parsed for every encoded response.
const DIGESTS: [HeaderName; 3] = [
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("repr-digest"),
    HeaderName::from_static("content-md5"),
];

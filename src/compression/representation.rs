//! The header bookkeeping of an encoded representation: `Vary:
//! Accept-Encoding`, `Content-Encoding`, `Content-Length`, and the ETag of
//! an encoded variant (`"abc"` → `"abc-br"`) with its inverse for
//! conditional requests sent upstream (RFC 9110 §8.8.3: a different
//! representation needs a different strong validator).

use http::header::{ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderMap, HeaderValue};

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
/// `W/"abc"` becomes `W/"abc-br"`. `None` if `etag` is not a valid entity-tag.
pub fn encoded_etag(etag: &HeaderValue, coding: Coding) -> Option<HeaderValue> {
    let (weak, opaque) = split_etag(etag.as_bytes())?;
    let value = [weak, b"\"", opaque, b"-", coding.as_str().as_bytes(), b"\""].concat();
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

/// Rewrites an `If-None-Match` / `If-Match` list for the upstream: every
/// entity-tag carrying `coding`'s suffix is mapped back to the base tag, the
/// others (and `*`) are kept. `None` if the value is not valid UTF-8.
pub fn strip_etag_suffixes(value: &HeaderValue, coding: Coding) -> Option<HeaderValue> {
    let tags: Vec<String> = value
        .to_str()
        .ok()?
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| strip_etag_suffix(t, coding).unwrap_or_else(|| t.to_owned()))
        .collect();
    HeaderValue::from_str(&tags.join(", ")).ok()
}

/// Header fix-ups for a response whose body is now encoded with `coding`:
/// sets `Content-Encoding`, sets `Content-Length` to `encoded_len` (or removes
/// it when streaming), rewrites `ETag` with [`encoded_etag`], removes
/// `Accept-Ranges` (ranges of the encoded variant are not served) and merges
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
        match encoded_etag(etag, coding) {
            Some(tag) => headers.insert(ETAG, tag),
            None => headers.remove(ETAG),
        };
    }
    headers.remove(ACCEPT_RANGES);
    merge_vary_accept_encoding(headers);
}

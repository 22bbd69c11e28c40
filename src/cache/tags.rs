//! Surrogate keys: `Surrogate-Key` / `Cache-Tag` response fields (space or
//! comma separated) tag an entry for purging, and are removed before the
//! response reaches a client. [`checked`] is the one rule for a tag named
//! by an operator (a cascade's `purge_tags`, an admin tag purge).

use http::HeaderMap;

pub const SURROGATE_KEY: &str = "surrogate-key";
pub const CACHE_TAG: &str = "cache-tag";

/// What separates the tags of one `Surrogate-Key` or `Cache-Tag` line.
const SEPARATORS: [char; 3] = [' ', ',', '\t'];

/// A tag that no stored entry can carry: [`take`] splits on spaces, tabs
/// and commas, so a tag containing one never matches anything, and reads
/// only visible ASCII (a field value with other bytes is not text to it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a non-empty tag of visible ASCII characters, without commas")]
pub struct BadTag;

/// `tag` trimmed, as [`take`] would have stored it; [`BadTag`] when it is
/// empty, holds a separator (space, tab, comma) or a character outside
/// visible ASCII, which no stored tag can.
pub fn checked(tag: &str) -> Result<&str, BadTag> {
    let tag = tag.trim();
    if tag.is_empty() || tag.contains(SEPARATORS) || !tag.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BadTag);
    }
    Ok(tag)
}

/// Whether `headers` carry a tag field (`Surrogate-Key` or `Cache-Tag`),
/// even an empty one: a `304` that does replaces the stored tags, one
/// that does not keeps them (RFC 9111 §4.3.4).
pub fn carried(headers: &HeaderMap) -> bool {
    headers.contains_key(SURROGATE_KEY) || headers.contains_key(CACHE_TAG)
}

/// Removes the tag fields from `headers` and returns the tags, deduplicated.
pub fn take(headers: &mut HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for name in [SURROGATE_KEY, CACHE_TAG] {
        for v in headers.get_all(name) {
            let Ok(v) = v.to_str() else { continue };
            for t in v.split(SEPARATORS).map(str::trim).filter(|t| !t.is_empty()) {
                if !tags.iter().any(|x| x == t) {
                    tags.push(t.to_string());
                }
            }
        }
        headers.remove(name);
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_removes() {
        let mut h = HeaderMap::new();
        h.append(SURROGATE_KEY, "a b  c".parse().unwrap());
        h.append(CACHE_TAG, "c,d, e".parse().unwrap());
        h.append("x-other", "1".parse().unwrap());
        assert_eq!(take(&mut h), vec!["a", "b", "c", "d", "e"]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn checked_refuses_what_take_splits() {
        assert_eq!(checked(" news "), Ok("news"));
        for bad in ["", "  ", "a b", "a,b", "a\tb", "café", "a\u{7f}"] {
            assert_eq!(checked(bad), Err(BadTag), "{bad:?}");
        }
    }
}

//! Surrogate keys: `Surrogate-Key` / `Cache-Tag` response fields (space or
//! comma separated) tag an entry for purging, and are removed before the
//! response reaches a client.

use http::HeaderMap;

pub const SURROGATE_KEY: &str = "surrogate-key";
pub const CACHE_TAG: &str = "cache-tag";

/// Removes the tag fields from `headers` and returns the tags, deduplicated.
pub fn take(headers: &mut HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for name in [SURROGATE_KEY, CACHE_TAG] {
        for v in headers.get_all(name) {
            let Ok(v) = v.to_str() else { continue };
            for t in v
                .split([' ', ',', '\t'])
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
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
}

//! A URL named by an admin request (`POST /purge` with `url`, `GET
//! /cache?url=`), keyed the way a GET for it would be: the path normalised
//! as a request's is (SPEC §10, `proxy/target.rs`), then the matching
//! rule's key options applied (`rules/key.rs`). So purging
//! `/a/../b?utm_source=x&z=1&a=2` removes what a GET of that URL stored.

use http::Uri;

use crate::proxy::target;
use crate::rules::{KeyTarget, RuleSet};

/// Why a URL names no entries (each becomes a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("invalid url {0:?}: expected an absolute http(s) URL or a path starting with /")]
    Invalid(String),
    #[error("invalid url {url:?}: {reason}")]
    Path { url: String, reason: &'static str },
    #[error("invalid {what} {text:?}: {found:?} cannot appear in a request target; percent-encode it ({encoded})")]
    Unencoded {
        /// `url` or `prefix`.
        what: &'static str,
        text: String,
        found: char,
        /// `found` percent-encoded (UTF-8 bytes): `%20`.
        encoded: String,
    },
}

/// Refuses `text` (a purge `url` or `prefix`, `what`) when it holds a
/// character no request target reaching the cache can carry: whitespace,
/// controls and non-ASCII (RFC 9112 §3.2), and `<`, `>`, `` ` `` (refused
/// with `400` by the proxy). No stored key can hold one, and a parse error
/// would name the wrong fault. The other characters RFC 3986 leaves out
/// (`"`, `{`, `|` …) are accepted in requests, as nginx does, and here.
pub fn encoded(what: &'static str, text: &str) -> Result<(), UrlError> {
    let bad = |c: char| !c.is_ascii_graphic() || "<>`".contains(c);
    match text.chars().find(|&c| bad(c)) {
        None => Ok(()),
        Some(found) => {
            let mut utf8 = [0; 4];
            let encoded = found
                .encode_utf8(&mut utf8)
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect();
            Err(UrlError::Unencoded {
                what,
                text: text.to_string(),
                found,
                encoded,
            })
        }
    }
}

/// What `url` (absolute `http(s)://authority/path?query`, or a path for
/// every host) names under `rules`.
pub fn key_target(rules: &RuleSet, url: &str) -> Result<KeyTarget, UrlError> {
    let invalid = || UrlError::Invalid(url.to_string());
    encoded("url", url)?;
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    let origin = match (uri.scheme_str(), uri.authority()) {
        (None, None) if url.starts_with('/') => None,
        (Some("http"), Some(a)) => Some((false, a.as_str())),
        (Some("https"), Some(a)) => Some((true, a.as_str())),
        _ => return Err(invalid()),
    };
    // The proxy's Host rule (no userinfo, a port up to 65535): an
    // authority no request can carry names no entry.
    if origin.is_some_and(|(_, a)| !crate::proxy::validate::valid_host(a)) {
        return Err(invalid());
    }
    let normal = target::normalize(&uri).map_err(|e| UrlError::Path {
        url: url.to_string(),
        reason: e.reason(),
    })?;
    let uri = normal.as_ref().unwrap_or(&uri);
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") => "/",
        Some(p) => p,
    };
    Ok(rules.key_target(origin, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::CacheKey;
    use crate::cache::Purge;
    use crate::rules::key::{KeyOptions, QueryFilter, QueryMode};
    use crate::rules::Rule;

    /// `{"url": "/n/sp x"}` was refused as "expected ... a path starting
    /// with /", which it is; the fault is the space.
    #[test]
    fn a_character_no_target_can_carry_is_named() {
        let e = key_target(&rules(), "/n/sp x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid url \"/n/sp x\": ' ' cannot appear in a request target; percent-encode it (%20)"
        );
        for (text, found) in [
            ("/a`b", '`'),
            ("/<x>", '<'),
            ("/t\tb", '\t'),
            ("/café", 'é'),
        ] {
            assert!(
                matches!(encoded("prefix", text), Err(UrlError::Unencoded { found: f, .. }) if f == found),
                "{text}"
            );
        }
        assert!(encoded("prefix", "/é")
            .unwrap_err()
            .to_string()
            .ends_with("(%C3%A9)"));
        assert!(encoded("url", "/a%20b?q=1&r=[2]&s=\"{|}\"").is_ok());
    }

    fn rules() -> RuleSet {
        RuleSet::new(vec![
            Rule::new("/b", None).unwrap().with_key(KeyOptions {
                query: QueryMode::Sorted,
                filter: Some(QueryFilter::ignore(["utm_*"]).unwrap()),
                ..KeyOptions::default()
            }),
            Rule::new("/prices", None).unwrap().with_key(KeyOptions {
                cookies: vec!["currency".into()],
                ..KeyOptions::default()
            }),
        ])
    }

    #[test]
    fn urls_are_keyed_like_requests() {
        let r = rules();
        let t = key_target(&r, "/a/../b?utm_source=x&z=1&a=2").unwrap();
        assert_eq!(t.path(), "/b?a=2&z=1");
        assert!(matches!(t.purge(), Purge::Url(u) if u == "/b?a=2&z=1"));
        assert!(t.selects(&CacheKey::new(false, "any", "/b?a=2&z=1")));
        let t = key_target(&r, "http://H.example:8080/%62?z=1").unwrap();
        assert!(matches!(t.purge(), Purge::Url(u) if u == "http://h.example:8080/b?z=1"));
        assert!(t.selects(&CacheKey::new(false, "h.example:8080", "/b?z=1")));
        assert!(!t.selects(&CacheKey::new(false, "other", "/b?z=1")));
        assert!(!t.selects(&CacheKey::new(true, "h.example:8080", "/b?z=1")));
        // Appended values: every value's entry.
        let t = key_target(&r, "/prices").unwrap();
        assert!(matches!(t.purge(), Purge::Prefix(p) if p == "/prices#"));
        assert!(t.selects(&CacheKey::new(false, "h", "/prices#c.currency=EUR")));
        assert!(!t.selects(&CacheKey::new(false, "h", "/prices2#c.currency=EUR")));
        assert!(!t.selects(&CacheKey::new(false, "h", "/prices")));
        // No rule: as given.
        let t = key_target(&r, "/c?b=1&a=2").unwrap();
        assert_eq!(t.path(), "/c?b=1&a=2");
        assert_eq!(key_target(&r, "http://h").unwrap().path(), "/");
    }

    #[test]
    fn bad_urls_are_errors() {
        let r = rules();
        for bad in [
            "nope",
            "ftp://h/x",
            "http:///x",
            "",
            "http://h:99999/a",
            "http://h:65536/a",
            "http://u@h/a",
        ] {
            assert!(
                matches!(key_target(&r, bad), Err(UrlError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            key_target(&r, "/a/..%2fb"),
            Err(UrlError::Path { .. })
        ));
        assert!(matches!(
            key_target(&r, "/../etc"),
            Err(UrlError::Path { .. })
        ));
    }
}

//! Cache keys. The primary key is scheme, authority and path-with-query
//! (RFC 9111 §2); GET and HEAD share it. In memory an entry is found by a
//! 128-bit hash of those parts, computed without allocating; the full URL
//! is kept in the entry and compared on lookup, so a hash collision is a
//! miss, never a wrong answer.
//!
//! The authority is keyed without the scheme's default port (RFC 9110
//! §4.2.3: `http://example.com:80/x` and `http://example.com/x` are the
//! same resource), so `Host: example.com:80` and `Host: example.com` share
//! one entry and a purge of either URL removes it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

/// The primary cache key of a request.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    hash: u128,
    /// `scheme://authority/path?query`, lowercase scheme and authority.
    url: Arc<str>,
    /// Byte offset of the path in `url`.
    path_at: usize,
}

/// Hashes the key parts the same way whether they come from a request or a
/// stored URL: xxh3-128 of `scheme \0 lowercased-authority \0 path`. The
/// digest names objects in Redis, so it must never change. A URL that fits
/// the stack buffer is hashed in one call without allocating; a longer one
/// is streamed (the same digest).
fn hash_parts(https: bool, authority: &str, path_and_query: &str) -> u128 {
    let scheme: &[u8] = if https { b"https" } else { b"http" };
    let len = scheme.len() + authority.len() + path_and_query.len() + 2;
    let mut buf = [0u8; 512];
    if len <= buf.len() {
        let (s, rest) = buf.split_at_mut(scheme.len());
        s.copy_from_slice(scheme);
        let (a, rest) = rest[1..].split_at_mut(authority.len());
        for (to, from) in a.iter_mut().zip(authority.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        rest[1..=path_and_query.len()].copy_from_slice(path_and_query.as_bytes());
        return xxhash_rust::xxh3::xxh3_128(&buf[..len]);
    }
    let mut h = Xxh3::new();
    h.update(scheme);
    h.update(b"\0");
    h.update(authority.to_ascii_lowercase().as_bytes());
    h.update(b"\0");
    h.update(path_and_query.as_bytes());
    h.digest128()
}

/// `authority` as keyed: without a port that is the scheme's default (80
/// for http, 443 for https, leading zeros allowed: RFC 3986's port is
/// `*DIGIT`) or empty (RFC 3986 §6.2.3), and without the root's trailing
/// dot of a fully qualified name (`example.com.` is `example.com`, as
/// nginx's `$host` keys it), case untouched. Borrowed unless a dot goes
/// from before a port that stays.
pub fn keyed_authority(https: bool, authority: &str) -> Cow<'_, str> {
    // Runs on every hit: a scan of the trailing digits, no parsing.
    let b = authority.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let colon = b.len() - digits;
    if colon == 0 || b[colon - 1] != b':' {
        // No port (an IPv6 literal ends in `]`).
        return Cow::Borrowed(without_root_dot(authority));
    }
    let port = &b[colon..];
    let significant = &port[port.iter().take_while(|&&c| c == b'0').count()..];
    let default: &[u8] = if https { b"443" } else { b"80" };
    let host = &authority[..colon - 1];
    if port.is_empty() || significant == default {
        Cow::Borrowed(without_root_dot(host))
    } else if without_root_dot(host).len() < host.len() {
        Cow::Owned(format!(
            "{}{}",
            without_root_dot(host),
            &authority[colon - 1..]
        ))
    } else {
        Cow::Borrowed(authority)
    }
}

/// `host` without a trailing `.` (the DNS root), unless that is all it is.
fn without_root_dot(host: &str) -> &str {
    match host.strip_suffix('.') {
        Some(name) if !name.is_empty() => name,
        _ => host,
    }
}

impl CacheKey {
    pub fn new(https: bool, authority: &str, path_and_query: &str) -> CacheKey {
        let authority = keyed_authority(https, authority);
        let authority: &str = &authority;
        let scheme = if https { "https://" } else { "http://" };
        // One buffer, no `format!` (a Redis lookup builds a key per request).
        let mut url = String::with_capacity(scheme.len() + authority.len() + path_and_query.len());
        url.push_str(scheme);
        url.extend(authority.chars().map(|c| c.to_ascii_lowercase()));
        let path_at = url.len();
        url.push_str(path_and_query);
        CacheKey {
            hash: hash_parts(https, &url[scheme.len()..path_at], path_and_query),
            url: url.into(),
            path_at,
        }
    }

    /// Parses an absolute `http(s)://authority/path?query` URL.
    pub fn from_url(url: &str) -> Option<CacheKey> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return None;
        }
        Some(CacheKey::new(https, authority, path))
    }

    /// The hash only, for a lookup that must not allocate. `authority` is
    /// as keyed ([`keyed_authority`]; the caller normalises it once).
    pub fn hash_of(https: bool, authority: &str, path_and_query: &str) -> u128 {
        debug_assert_eq!(keyed_authority(https, authority), authority);
        hash_parts(https, authority, path_and_query)
    }

    pub fn hash(&self) -> u128 {
        self.hash
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Path and query.
    pub fn path(&self) -> &str {
        &self.url[self.path_at..]
    }

    /// Whether this key is the one for these request parts; `authority` is
    /// as keyed ([`keyed_authority`]).
    pub fn matches(&self, https: bool, authority: &str, path_and_query: &str) -> bool {
        debug_assert_eq!(keyed_authority(https, authority), authority);
        let scheme = if https { "https://" } else { "http://" };
        let url: &str = &self.url;
        url.len() == scheme.len() + authority.len() + path_and_query.len()
            && url.starts_with(scheme)
            && &url[self.path_at..] == path_and_query
            && {
                // The stored authority is lowercase, as clients mostly
                // send it: one compare of the bytes, case folded only
                // when that fails.
                let stored = &url[scheme.len()..self.path_at];
                stored == authority || stored.eq_ignore_ascii_case(authority)
            }
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// The key as logs show it: the URL without its query (`?…`) and without
/// the request field and cookie values a rule appended (`#…`), which
/// routinely carry credentials (SPEC: secrets never in logs). The whole key
/// is [`CacheKey::url`].
impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&loggable(&self.url))
    }
}

/// A URL or path as logs may show it: its query cut to `?…` and the key
/// values a rule appended cut to `#…` (both routinely carry credentials);
/// borrowed when it has neither.
pub fn loggable(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(end) = url.find(['?', '#']) else {
        return url.into();
    };
    let mut out = url[..end].to_string();
    if url[end..].starts_with('?') {
        out.push_str("?…");
    }
    if url[end..].contains('#') {
        out.push_str("#…");
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_show_no_query_and_no_appended_values() {
        let k = CacheKey::new(false, "h", "/q3?token=QUERYTOK");
        assert_eq!(k.to_string(), "http://h/q3?…");
        assert!(k.url().contains("QUERYTOK"));
        let k = CacheKey::new(false, "h", "/q3#h.x-api-key=APIKEY&c.sid=COOKIE");
        assert_eq!(k.to_string(), "http://h/q3#…");
        let k = CacheKey::new(true, "h", "/a?b#c.sid=1");
        assert_eq!(k.to_string(), "https://h/a?…#…");
        assert_eq!(
            CacheKey::new(false, "h", "/plain").to_string(),
            "http://h/plain"
        );
    }

    #[test]
    fn keys_include_scheme_authority_path_and_query() {
        let a = CacheKey::new(false, "Example.com", "/a?x=1");
        assert_eq!(a.url(), "http://example.com/a?x=1");
        assert_eq!(a.path(), "/a?x=1");
        assert_ne!(
            a.hash(),
            CacheKey::new(true, "example.com", "/a?x=1").hash()
        );
        assert_ne!(
            a.hash(),
            CacheKey::new(false, "example.com", "/a?x=2").hash()
        );
        assert_ne!(
            a.hash(),
            CacheKey::new(false, "example.org", "/a?x=1").hash()
        );
        assert_eq!(a.hash(), CacheKey::hash_of(false, "EXAMPLE.com", "/a?x=1"));
        assert!(a.matches(false, "example.COM", "/a?x=1"));
        assert!(!a.matches(true, "example.com", "/a?x=1"));
        assert!(!a.matches(false, "example.com", "/a?x=10"));
    }

    /// The digest names objects in Redis: it is the one the streaming
    /// form always gave, for URLs on both sides of the stack buffer.
    #[test]
    fn the_digest_never_changes() {
        fn streamed(https: bool, authority: &str, path: &str) -> u128 {
            let mut h = Xxh3::new();
            h.update(if https { b"https" } else { b"http" });
            h.update(b"\0");
            h.update(authority.to_ascii_lowercase().as_bytes());
            h.update(b"\0");
            h.update(path.as_bytes());
            h.digest128()
        }
        let long_host = "Sub.".repeat(40) + "Example.COM";
        for n in [0, 1, 400, 490, 491, 492, 493, 494, 600, 5000] {
            let path = format!("/{}", "p".repeat(n));
            for host in ["Example.com:8080", long_host.as_str(), ""] {
                for https in [false, true] {
                    assert_eq!(
                        hash_parts(https, host, &path),
                        streamed(https, host, &path),
                        "{https} {host} {n}"
                    );
                }
            }
        }
        assert_eq!(
            CacheKey::new(false, "example.com", "/a?x=1").hash(),
            0xa990_f7a1_cd82_ae6d_ae6e_cd20_1b33_4588
        );
    }

    /// RFC 9110 §4.2.3: a default or empty port names the same resource.
    #[test]
    fn default_ports_are_not_keyed() {
        let plain = CacheKey::new(false, "example.com", "/x");
        for a in [
            "example.com:80",
            "Example.com:",
            "EXAMPLE.COM",
            "example.com:0080",
            // A fully qualified name's root dot (nginx's `$host` drops it).
            "example.com.",
            "Example.Com.:80",
        ] {
            let k = CacheKey::new(false, a, "/x");
            assert_eq!(k, plain, "{a}");
            let keyed = keyed_authority(false, a);
            assert_eq!(CacheKey::hash_of(false, &keyed, "/x"), plain.hash(), "{a}");
            assert!(plain.matches(false, &keyed, "/x"), "{a}");
        }
        assert_eq!(
            CacheKey::from_url("http://example.com:80/x").unwrap(),
            plain
        );
        assert_eq!(CacheKey::new(true, "h:443", "/").url(), "https://h/");
        for other in [
            "example.com:8080",
            "example.com:443",
            "example.com:180",
            "example.com:800",
            "example.com:0",
        ] {
            assert_ne!(CacheKey::new(false, other, "/x"), plain, "{other}");
            assert_eq!(keyed_authority(false, other), other);
            assert!(!plain.matches(false, other, "/x"), "{other}");
        }
        assert_eq!(CacheKey::new(true, "h:80", "/").url(), "https://h:80/");
        assert_eq!(keyed_authority(false, "[::1]:80"), "[::1]");
        assert_eq!(keyed_authority(false, "[::1]"), "[::1]");
        assert_eq!(keyed_authority(false, "h.:8080"), "h:8080");
        assert_eq!(keyed_authority(false, "."), ".");
        assert_eq!(CacheKey::from_url("http://example.com./x").unwrap(), plain);
    }

    #[test]
    fn from_url() {
        let k = CacheKey::from_url("https://h:8443/p?q").unwrap();
        assert_eq!(k, CacheKey::new(true, "h:8443", "/p?q"));
        assert_eq!(CacheKey::from_url("http://h").unwrap().path(), "/");
        assert!(CacheKey::from_url("ftp://h/").is_none());
        assert!(CacheKey::from_url("/relative").is_none());
    }
}

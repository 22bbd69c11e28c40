//! The request path, normalised once (SPEC §10, RFC 3986 §6.2.2): the
//! percent-encoded unreserved characters are decoded (§6.2.2.2) and the dot
//! segments removed (§6.2.2.3, §5.2.4). The normalised URI replaces the
//! request's own before anything reads it, so the rules, the cache key and
//! the request sent upstream all see the same path — a rule never matches a
//! different path than the origin serves (web cache deception).
//!
//! What stays ambiguous is refused with 400, because origins disagree on
//! it: a path that still holds a `.` or `..` segment once fully
//! percent-decoded and split on `/` and `\` (`/a/..%2fb`, `/a/%2e%2e%5cb`:
//! nginx resolves them, most frameworks do not), a dot segment with path
//! parameters (`/a/..;/b`: Tomcat and Jetty drop the `;…` and climb, a
//! proxy's rules would not), a NUL (`%00`), or a `..` that climbs above the
//! root. An encoded slash alone (`/repos/a%2Fb`) is not ambiguous and is
//! forwarded as sent, but for the case of its hex digits: every escape
//! that stays is written in upper case (§6.2.2.1), so `%2f` and `%2F` are
//! one path for the rules, the key and purges. Every other reserved
//! character, encoded or not, and the query are forwarded as sent.
//!
//! Hand-written rather than taken from a URL crate: `url` and friends
//! implement WHATWG parsing, which decodes differently and silently drops
//! `..` above the root instead of reporting it. An already-normal path (the
//! hit path's usual case) is only scanned, never copied.

use http::uri::{PathAndQuery, Uri};

/// Why a request target was refused (each becomes a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A dot segment hidden behind an encoded `/` or `\`, or a `\`.
    #[error("ambiguous path (dot segment behind an encoded separator)")]
    Ambiguous,
    /// A `.` or `..` segment with path parameters (`..;x`).
    #[error("ambiguous path (dot segment with parameters)")]
    DotParameters,
    /// `%00` in the path.
    #[error("NUL in path")]
    Nul,
    /// More `..` segments than there are segments above them.
    #[error("path climbs above the root")]
    AboveRoot,
    /// A `%` not followed by two hex digits (RFC 3986 §2.1), as nginx
    /// refuses it: origins would read it each their own way.
    #[error("invalid percent-encoding in path")]
    BadEscape,
}

impl TargetError {
    /// The short reason sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            TargetError::Ambiguous => "ambiguous path (dot segment behind an encoded separator)",
            TargetError::DotParameters => "ambiguous path (dot segment with parameters)",
            TargetError::Nul => "NUL in path",
            TargetError::AboveRoot => "path climbs above the root",
            TargetError::BadEscape => "invalid percent-encoding in path",
        }
    }
}

/// The normalised form of `uri`: `Ok(None)` when it already is normal (no
/// allocation), `Ok(Some(uri))` with only the path rewritten otherwise.
/// Targets that are not origin-form paths (`*`) are left alone.
///
/// An absolute-form target with an empty path and a query
/// (`http://h?q`) gets the path `/` (RFC 3986 §6.2.3: the same resource;
/// RFC 9112 §3.2.1: "If the target URI's path component is empty, the
/// client MUST send "/" as the path"), so that it is one target with
/// `/?q` for the rules, the key, purges and the origin-form request sent
/// upstream. (`Uri::path` already reads `/` there, but the path and
/// query, which the key and the upstream request take, is `?q`.)
pub fn normalize(uri: &Uri) -> Result<Option<Uri>, TargetError> {
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().starts_with('?'))
    {
        let slashed = format!("/{}", uri.path_and_query().map_or("", |pq| pq.as_str()));
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = PathAndQuery::try_from(slashed).ok();
        // A query already parsed parses after a `/`; a failure would be
        // a bug, and the original is then kept as it was before.
        let Ok(slashed) = Uri::from_parts(parts) else {
            return Ok(None);
        };
        return Ok(Some(normalize(&slashed)?.unwrap_or(slashed)));
    }
    let path = uri.path();
    // Raw UTF-8 in the query is encoded as in the path (the rest of the
    // query is forwarded as sent): one key with its `%XX` form.
    let raw_query = uri.query().is_some_and(|q| !q.is_ascii());
    if !path.starts_with('/') || (plainly_normal(path.as_bytes()) && !raw_query) {
        return Ok(None);
    }
    let rewrites = needs_rewrite(path);
    if !rewrites && !raw_query {
        check(path)?;
        return Ok(None);
    }
    let normal = if rewrites {
        rewrite(path)?
    } else {
        path.to_string()
    };
    check(&normal)?;
    let mut pq = normal;
    if let Some(q) = uri.query() {
        pq.push('?');
        for b in q.bytes() {
            if b.is_ascii() {
                pq.push(char::from(b));
            } else {
                push_escape(&mut pq, b);
            }
        }
    }
    let mut parts = uri.clone().into_parts();
    // Only unreserved characters were decoded and segments dropped: the
    // result is made of bytes the original path already held, so it
    // parses; a failure would be a bug, and keeping the original (which
    // `check` just passed) is then the safe side.
    parts.path_and_query = PathAndQuery::try_from(pq).ok();
    Ok(Uri::from_parts(parts).ok())
}

/// A path and query named by a response (an unsafe method's `Location` or
/// `Content-Location`, RFC 9111 §4.4) normalised as a request target is
/// ([`normalize`]), so that it names the key a `GET` of it stored:
/// borrowed when already normal; `None` when a request for it would be
/// refused (nothing is stored under it) or it is not a valid target.
pub fn normalize_reference(path_and_query: &str) -> Option<std::borrow::Cow<'_, str>> {
    let uri: Uri = path_and_query.parse().ok()?;
    match normalize(&uri).ok()? {
        None => Some(path_and_query.into()),
        Some(normal) => Some(normal.path_and_query()?.as_str().to_owned().into()),
    }
}

/// The usual case, decided in one pass: no `%` escape, no backslash and
/// no `.` or `..` segment, so there is nothing to decode, remove or refuse
/// (a NUL can only arrive escaped).
fn plainly_normal(path: &[u8]) -> bool {
    // Dots since the segment began; 3 once the segment is anything else.
    let mut dots = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' | 0x80.. => return false,
            b'/' | b';' if dots == 1 || dots == 2 => return false,
            b'/' => dots = 0,
            b'.' if dots < 3 => dots += 1,
            _ => dots = 3,
        }
    }
    dots != 1 && dots != 2
}

/// RFC 3986 §2.3.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XY` at `at` encodes, if `at` starts one.
fn escaped(bytes: &[u8], at: usize) -> Option<u8> {
    if bytes.get(at) != Some(&b'%') {
        return None;
    }
    Some(hex(*bytes.get(at + 1)?)? << 4 | hex(*bytes.get(at + 2)?)?)
}

/// Whether normalising would change `path`: an encoded unreserved
/// character, an escape written with lower-case hex digits, a byte outside
/// ASCII, or a literal `.` / `..` segment.
fn needs_rewrite(path: &str) -> bool {
    changes_escapes(path) || path.split('/').any(|s| s == "." || s == "..")
}

/// Whether [`normalize_escapes`] would change `path`: an encoded
/// unreserved character, an escape with lower-case hex digits, or a byte
/// outside ASCII.
fn changes_escapes(path: &str) -> bool {
    let bytes = path.as_bytes();
    !path.is_ascii()
        || (0..bytes.len()).any(|i| {
            escaped(bytes, i).is_some_and(|b| {
                unreserved(b) || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase)
            })
        })
}

/// `path` with its escapes normalised as a request path's are (RFC 3986
/// §6.2.2.1–2: unreserved characters decoded, the others' hex digits in
/// upper case) but nothing else: a purge prefix (`/a/x%2f` selects what
/// `/a/x%2F…` stored), where resolving dot segments would change what it
/// selects. Borrowed when already normal.
pub fn normalize_escapes(path: &str) -> std::borrow::Cow<'_, str> {
    if !changes_escapes(path) {
        return path.into();
    }
    decode_escapes(path).into()
}

/// Decodes unreserved characters and writes every other escape with
/// upper-case hex digits; a byte outside ASCII (raw UTF-8, which RFC 9112
/// §3.2 does not allow in a target but hyper accepts) is percent-encoded,
/// as a browser sends it, so that `/café` and `/caf%C3%A9` are one path
/// for the rules, the key, purges and the origin; any other byte is kept.
fn decode_escapes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match escaped(bytes, i) {
            Some(b) if unreserved(b) => {
                decoded.push(char::from(b));
                i += 3;
            }
            Some(b) => {
                // RFC 3986 §6.2.2.1: an escape that stays, in upper case.
                push_escape(&mut decoded, b);
                i += 3;
            }
            None if bytes[i] >= 0x80 => {
                push_escape(&mut decoded, bytes[i]);
                i += 1;
            }
            None => {
                // An ASCII byte: byte = char.
                decoded.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    decoded
}

/// `%XY` for `b`, upper-case hex digits.
fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Decodes unreserved characters, then removes dot segments (RFC 3986
/// §5.2.4, except that climbing above the root is an error).
fn rewrite(path: &str) -> Result<String, TargetError> {
    let decoded = decode_escapes(path);
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        match *s {
            "." | ".." => {
                if *s == ".." && out.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
                if i == last {
                    // `/a/b/..` is `/a/`: the directory, not the file `a`.
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in out {
        normal.push('/');
        normal.push_str(s);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Ok(normal)
}

/// Refuses what stays ambiguous once `path` is fully percent-decoded: a
/// `.`/`..` segment between `/` or `\` separators, or a NUL; and a `%`
/// that starts no escape. Runs over the bytes without decoding into a
/// buffer.
fn check(path: &str) -> Result<(), TargetError> {
    let bytes = path.as_bytes();
    // Length of the current decoded segment if it is all dots so far;
    // `None` once it holds anything else.
    let mut dots: Option<usize> = Some(0);
    let mut i = 0;
    while i <= bytes.len() {
        let (b, width) = match escaped(bytes, i) {
            Some(b) => (Some(b), 3),
            None if bytes.get(i) == Some(&b'%') => return Err(TargetError::BadEscape),
            None => (bytes.get(i).copied(), 1),
        };
        match b {
            Some(0) => return Err(TargetError::Nul),
            None | Some(b'/') | Some(b'\\') => {
                if matches!(dots, Some(1) | Some(2)) {
                    return Err(TargetError::Ambiguous);
                }
                dots = Some(0);
            }
            Some(b'.') => dots = dots.map(|n| n + 1),
            Some(b';') if matches!(dots, Some(1) | Some(2)) => {
                return Err(TargetError::DotParameters)
            }
            Some(_) => dots = None,
        }
        i += width;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(target: &str) -> Result<String, TargetError> {
        let uri: Uri = target.parse().unwrap();
        Ok(normalize(&uri)?.unwrap_or(uri).to_string())
    }

    #[test]
    fn references_are_normalised_as_targets() {
        let r = |p| normalize_reference(p).map(|n| n.into_owned());
        assert_eq!(r("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(r("/a/x/../b?q=%7e").as_deref(), Some("/a/b?q=%7e"));
        assert_eq!(r("/a/%62%2f").as_deref(), Some("/a/b%2F"));
        assert!(matches!(
            normalize_reference("/a/b"),
            Some(std::borrow::Cow::Borrowed("/a/b"))
        ));
        assert_eq!(r("/../above"), None);
        assert_eq!(r("/a b"), None);
    }

    #[test]
    fn normal_paths_are_left_alone() {
        for p in [
            "/",
            "/a/b.css",
            "/a/b/?q=%2e%2e/x",
            "/repos/group%2Fname",
            "/a%20b/%E2%82%AC",
            "/a/.well-known/x",
            "/a/...b/",
            "/a/...",
            "//a//b",
        ] {
            let uri: Uri = p.parse().unwrap();
            assert_eq!(normalize(&uri), Ok(None), "{p}");
        }
    }

    /// The one-pass fast path never calls a path normal that the full
    /// check would rewrite or refuse: every path of up to 6 bytes over
    /// an alphabet of separators, dots, escapes and letters.
    #[test]
    fn the_fast_path_agrees_with_the_full_check() {
        let alphabet = b"/.a%2e\\;";
        let mut path = vec![b'/'];
        fn walk(path: &mut Vec<u8>, alphabet: &[u8], left: usize) {
            let p = std::str::from_utf8(path).unwrap();
            if plainly_normal(path) {
                assert!(!needs_rewrite(p) && check(p).is_ok(), "{p}");
            }
            if left == 0 {
                return;
            }
            for &b in alphabet {
                path.push(b);
                walk(path, alphabet, left - 1);
                path.pop();
            }
        }
        walk(&mut path, alphabet, 6);
        assert!(plainly_normal(b"/a/...b/x.css"));
        assert!(!plainly_normal(b"/a/../b"));
        assert!(!plainly_normal(b"/a/."));
    }

    #[test]
    fn unreserved_decoded_and_dots_removed() {
        assert_eq!(norm("/%61ssets/%7Eme").unwrap(), "/assets/~me");
        assert_eq!(norm("/assets/%2e%2e/private/me").unwrap(), "/private/me");
        assert_eq!(
            norm("/assets/%2E%2E/private/me?x=1").unwrap(),
            "/private/me?x=1"
        );
        assert_eq!(norm("/assets/../private/me").unwrap(), "/private/me");
        assert_eq!(norm("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/a//../b").unwrap(), "/a/b");
        // Reserved characters stay encoded, their hex digits in upper case
        // (RFC 3986 §6.2.2.1), so both spellings are one key and one purge.
        assert_eq!(norm("/x/../a%2Fb%3f").unwrap(), "/a%2Fb%3F");
        assert_eq!(norm("/repos/a%2fb").unwrap(), "/repos/a%2Fb");
        assert_eq!(norm("/p/e%3ad?q=%2f").unwrap(), "/p/e%3Ad?q=%2f");
        assert_eq!(norm("/a%e2%82%ac").unwrap(), "/a%E2%82%AC");
        // Raw UTF-8 (hyper accepts it) is one path with its escapes: it
        // was a key of its own that no purge or invalidation could name.
        assert_eq!(norm("/t/caf\u{e9}").unwrap(), "/t/caf%C3%A9");
        assert_eq!(
            norm("/t/caf\u{e9}/../x\u{e9}?q=\u{e9}").unwrap(),
            "/t/x%C3%A9?q=%C3%A9"
        );
        assert_eq!(normalize_escapes("/t/caf\u{e9}"), "/t/caf%C3%A9");
        // The query's raw UTF-8 too, and nothing else of it.
        assert_eq!(
            norm("/t/x?q=caf\u{e9}&a=%2f").unwrap(),
            "/t/x?q=caf%C3%A9&a=%2f"
        );
        assert_eq!(
            norm("http://h.example/a/%2e/b").unwrap(),
            "http://h.example/a/b"
        );
    }

    #[test]
    fn prefixes_get_the_escapes_of_request_paths_and_nothing_else() {
        assert_eq!(normalize_escapes("/q1/x%2f"), "/q1/x%2F");
        assert_eq!(normalize_escapes("/q2/%41b/"), "/q2/Ab/");
        assert_eq!(normalize_escapes("/a/../x%2"), "/a/../x%2");
        assert!(matches!(
            normalize_escapes("/assets/%2F"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/assets/..%2fprivate/me",
            "/assets/..%2Fprivate/me",
            "/a/%2e%2e%5cb",
            "/a/%2e%2e%2f",
            "/a/.%2fb",
            "/a%2f..%2fb",
            "/a/..%5C",
            "/a/%2e%2e%5C..%5Cb",
        ] {
            assert_eq!(norm(p), Err(TargetError::Ambiguous), "{p}");
        }
        for p in [
            "/assets/..;/account",
            "/assets/.;/..;/account",
            "/assets/..;jsessionid=x/account",
            "/a/%2e%2e;/b",
            "/a/..%3b/b",
            "/a/.;",
        ] {
            assert_eq!(norm(p), Err(TargetError::DotParameters), "{p}");
        }
        for p in ["/a/b;v=1/c", "/a/...;x/b", "/a;b", "/.x;y"] {
            assert!(norm(p).is_ok(), "{p}");
        }
        for p in ["/n/%zz", "/n/%", "/n/%4", "/n/%4g/x", "/%2e%2e%"] {
            assert_eq!(norm(p), Err(TargetError::BadEscape), "{p}");
        }
        assert!(norm("/n/%41?q=%zz").is_ok(), "the query is the origin's");
        assert_eq!(norm("/a%00b"), Err(TargetError::Nul));
        assert_eq!(norm("/a/%2e%2e/%00"), Err(TargetError::Nul));
        for p in ["/..", "/../a", "/a/../..", "/%2e%2e/etc/passwd", "/./../x"] {
            assert_eq!(norm(p), Err(TargetError::AboveRoot), "{p}");
        }
    }

    /// Finding 1 of the wire probe: `http://y?a=1` kept `?a=1` as its path
    /// and query, so it went upstream in absolute-form and was keyed
    /// apart from `/?a=1`.
    #[test]
    fn an_empty_path_before_a_query_is_the_root() {
        let pq = |t: &str| {
            let uri: Uri = t.parse().unwrap();
            let normal = normalize(&uri).unwrap().unwrap_or(uri);
            normal.path_and_query().unwrap().as_str().to_owned()
        };
        assert_eq!(pq("http://y?a=1"), "/?a=1");
        assert_eq!(pq("http://y?"), "/?");
        assert_eq!(pq("https://y:8080?a=%2e"), "/?a=%2e");
        assert_eq!(pq("http://y"), "/");
        assert_eq!(pq("http://y/?a=1"), "/?a=1");
        let uri: Uri = "http://y?a=1".parse().unwrap();
        let normal = normalize(&uri).unwrap().unwrap();
        assert_eq!(normal.authority().unwrap().as_str(), "y");
        assert_eq!(normal.scheme_str(), Some("http"));
    }

    #[test]
    fn asterisk_form_is_left_alone() {
        let uri: Uri = "*".parse().unwrap();
        assert_eq!(normalize(&uri), Ok(None));
    }
}

//! Path globs: `[[rules]] match`, `[[rate_limits]] match` and
//! `[[invalidation.cascade]] on`, compiled and matched one way.
//!
//! `/` is the separator (`*` stays inside one segment, `**/` matches zero
//! or more whole segments) and `\` escapes. A glob sees the request path
//! with every run of `/` merged into one, as nginx's `merge_slashes on`
//! (its default) does before `location` matching: `//api/x` and
//! `/api//x` are `/api/x` to the glob, because many origins (Python's
//! `http.server`, most routers that split on `/`) serve them as that, and
//! a limit or rule on `/api/**` would otherwise be bypassed with one more
//! slash. Only matching sees the merged form: the cache key and the path
//! sent upstream keep the slashes as sent.

use std::borrow::Cow;

use globset::{GlobBuilder, GlobMatcher};

/// One compiled path glob.
#[derive(Debug, Clone)]
pub struct PathGlob {
    matcher: GlobMatcher,
}

impl PathGlob {
    /// Compiles `pattern` (`/` as separator, `\` escapes), its escapes
    /// normalised as a request path's are (`crate::proxy::target`):
    /// `/café/**` matches the path `/caf%C3%A9/x` that a request for
    /// `/café/x` (raw or encoded, any hex case) is normalised to; written
    /// raw, it matched nothing.
    pub fn new(pattern: &str) -> Result<PathGlob, globset::Error> {
        let pattern = crate::proxy::target::normalize_escapes(pattern);
        let matcher = GlobBuilder::new(&pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()?
            .compile_matcher();
        Ok(PathGlob { matcher })
    }

    /// Whether `path` (no query) matches, repeated slashes merged.
    pub fn is_match(&self, path: &str) -> bool {
        self.matcher.is_match(merge_slashes(path).as_ref())
    }
}

/// `path` with every run of `/` merged into one (nginx's `merge_slashes`).
/// A path without `//` (the usual case) is borrowed, not copied.
pub fn merge_slashes(path: &str) -> Cow<'_, str> {
    // A byte scan: `str::contains("//")` sets up a substring searcher,
    // about 340 instructions per request on the hit path.
    if !path.as_bytes().windows(2).any(|w| w == b"//") {
        return Cow::Borrowed(path);
    }
    let mut merged = String::with_capacity(path.len());
    let mut after_slash = false;
    for c in path.chars() {
        if c == '/' && after_slash {
            continue;
        }
        after_slash = c == '/';
        merged.push(c);
    }
    Cow::Owned(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_slashes_are_merged_for_matching() {
        assert!(matches!(merge_slashes("/api/x"), Cow::Borrowed("/api/x")));
        assert_eq!(merge_slashes("//api//x///y/"), "/api/x/y/");
        assert_eq!(merge_slashes("///"), "/");
        let g = PathGlob::new("/api/**").unwrap();
        for path in ["/api/x", "//api/x", "/api//x", "///api///x//"] {
            assert!(g.is_match(path), "{path}");
        }
        assert!(!g.is_match("/apix/y"));
        let g = PathGlob::new("/a/*/c").unwrap();
        assert!(g.is_match("/a//b//c"));
        assert!(!g.is_match("/a/b/x/c"));
    }

    /// Matched against normalised paths, so normalised alike.
    #[test]
    fn non_ascii_and_escapes_in_a_glob_match_the_normalised_path() {
        for glob in ["/caf\u{e9}/**", "/caf%c3%a9/**", "/caf%C3%A9/**"] {
            let g = PathGlob::new(glob).unwrap();
            assert!(g.is_match("/caf%C3%A9/x"), "{glob}");
        }
        // An encoded `*` stays encoded: never a wildcard.
        assert!(!PathGlob::new("/a%2A").unwrap().is_match("/abc"));
    }
}

//! Path rules: `[[rules]]` map a glob over the request path (without the
//! query) to a Cache-Control value that replaces the upstream's, both for
//! the cache's own decision and for the client. First match wins.
//!
//! Globs use `/` as a separator: `*` stays inside one segment, `**/` matches
//! zero or more whole segments, so `"**/*.html"` matches `/index.html` and
//! `/a/b/c.html`, and `"/assets/**"` matches everything below `/assets/`.

use globset::{GlobBuilder, GlobMatcher};
use http::HeaderValue;

use crate::cache::directives::CacheControl;

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pattern: String,
    matcher: GlobMatcher,
    cache_control: HeaderValue,
    directives: CacheControl,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("invalid glob {pattern:?}: {source}")]
    Glob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("invalid Cache-Control {value:?}: {reason}")]
    CacheControl { value: String, reason: String },
}

impl Rule {
    pub fn new(pattern: &str, cache_control: &str) -> Result<Rule, RuleError> {
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|source| RuleError::Glob {
                pattern: pattern.to_string(),
                source,
            })?
            .compile_matcher();
        let value = cache_control.trim();
        let header = HeaderValue::from_str(value).map_err(|_| RuleError::CacheControl {
            value: value.to_string(),
            reason: "not a valid header value".into(),
        })?;
        CacheControl::validate(value).map_err(|reason| RuleError::CacheControl {
            value: value.to_string(),
            reason,
        })?;
        let directives = CacheControl::from_value(&header);
        Ok(Rule {
            pattern: pattern.to_string(),
            matcher,
            cache_control: header,
            directives,
        })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn cache_control(&self) -> &HeaderValue {
        &self.cache_control
    }

    /// The rule's Cache-Control, parsed once.
    pub fn directives(&self) -> &CacheControl {
        &self.directives
    }
}

/// The ordered rules. Matching walks them in order and stops at the first
/// match: rule lists are short, and this allocates nothing on the hit path.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        RuleSet { rules }
    }

    /// The first rule whose glob matches `path` (no query), with its index.
    pub fn find(&self, path: &str) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.is_match(path))
    }

    /// The rule at `index` (as returned by [`RuleSet::find`]).
    pub fn get(&self, index: usize) -> Option<&Rule> {
        self.rules.get(index)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> RuleSet {
        RuleSet::new(vec![
            Rule::new("/assets/**", "public, max-age=31536000, immutable").unwrap(),
            Rule::new("/api/**", "no-cache").unwrap(),
            Rule::new("**/*.html", "public, max-age=3600").unwrap(),
        ])
    }

    #[test]
    fn first_match_wins() {
        let s = set();
        assert_eq!(s.find("/assets/app.js").map(|r| r.0), Some(0));
        assert_eq!(s.find("/assets/a/b/c.css").map(|r| r.0), Some(0));
        assert_eq!(s.find("/assets/page.html").map(|r| r.0), Some(0));
        assert_eq!(s.find("/api/items").map(|r| r.0), Some(1));
        assert_eq!(s.find("/index.html").map(|r| r.0), Some(2));
        assert_eq!(s.find("/a/b/c.html").map(|r| r.0), Some(2));
        assert_eq!(s.find("/other.txt").map(|r| r.0), None);
        assert_eq!(s.find("/apix").map(|r| r.0), None);
    }

    #[test]
    fn star_stays_in_segment() {
        let s = RuleSet::new(vec![Rule::new("/img/*.png", "max-age=1").unwrap()]);
        assert!(s.find("/img/a.png").is_some());
        assert!(s.find("/img/x/a.png").is_none());
    }

    #[test]
    fn bad_rules_are_errors() {
        assert!(matches!(
            Rule::new("[", "max-age=1"),
            Err(RuleError::Glob { .. })
        ));
        assert!(matches!(
            Rule::new("/a", "max-age=\"1"),
            Err(RuleError::CacheControl { .. })
        ));
        assert!(matches!(
            Rule::new("/a", "max-age=abc"),
            Err(RuleError::CacheControl { .. })
        ));
    }
}

//! Path rules: `[[rules]]` map a glob over the request path (without the
//! query) to what the cache does with it: a Cache-Control value that
//! replaces the upstream's (for the cache's own decision and the client),
//! TTL keys, and, optionally, the request methods and response media types
//! the rule is for. First match wins; a rule whose `methods` or
//! `content_type` do not fit is skipped and the next one tried.
//!
//! - `rules/lifetime.rs`: what a rule may and may not override (SPEC §10:
//!   never privacy, only success statuses) and the TTL keys.
//! - `rules/key.rs`: the key options (`key.*`: query normalisation, header
//!   and cookie values in the key) and what a URL names for purge and
//!   inspection.
//! - `rules/param_name.rs`: the names origin frameworks read a query
//!   parameter as (parameter cloaking), for the key options.
//! - `rules/path_glob.rs`: path globs, shared with rate limits and
//!   cascades, and the path they see (repeated slashes merged).
//!
//! Globs use `/` as a separator: `*` stays inside one segment, `**/` matches
//! zero or more whole segments, so `"**/*.html"` matches `/index.html` and
//! `/a/b/c.html`, and `"/assets/**"` matches everything below `/assets/`.

pub mod key;
pub mod lifetime;
pub mod param_name;
pub mod path_glob;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderValue, Method};

use crate::cache::directives::CacheControl;
pub use key::{KeyOptions, KeyTarget};
pub use lifetime::{Lifetime, Lifetimes};
pub use path_glob::PathGlob;

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pattern: String,
    matcher: PathGlob,
    /// The Cache-Control that replaces the upstream's, parsed once.
    cache_control: Option<(HeaderValue, CacheControl)>,
    /// `None`: any method.
    methods: Option<Vec<Method>>,
    /// Response media-type globs (lowercase, parameters ignored); `None`:
    /// any.
    content_type: Option<GlobSet>,
    pub lifetimes: Lifetimes,
    /// `None` when the key is the request's own: routing a hit under this
    /// rule then hashes borrowed parts and allocates nothing.
    key: Option<Box<KeyOptions>>,
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
    #[error("invalid method {0:?}")]
    Method(String),
    /// Methods are case-sensitive (RFC 9110 §9.1): `"get"` would never
    /// match a `GET` request.
    #[error("{given:?}: methods are case-sensitive (RFC 9110 §9.1), write {upper:?}")]
    MethodCase { given: String, upper: String },
    #[error("invalid media-type glob {pattern:?}: {source}")]
    ContentType {
        pattern: String,
        #[source]
        source: globset::Error,
    },
}

impl Rule {
    /// A rule for paths matching `pattern`, with an optional Cache-Control
    /// override; the other keys are set with the `with_*` methods.
    pub fn new(pattern: &str, cache_control: Option<&str>) -> Result<Rule, RuleError> {
        let matcher = PathGlob::new(pattern).map_err(|source| RuleError::Glob {
            pattern: pattern.to_string(),
            source,
        })?;
        let cache_control = match cache_control {
            None => None,
            Some(value) => {
                let value = value.trim();
                let header = HeaderValue::from_str(value).map_err(|_| RuleError::CacheControl {
                    value: value.to_string(),
                    reason: "not a valid header value".into(),
                })?;
                CacheControl::validate(value).map_err(|reason| RuleError::CacheControl {
                    value: value.to_string(),
                    reason,
                })?;
                let directives = CacheControl::from_value(&header);
                Some((header, directives))
            }
        };
        Ok(Rule {
            pattern: pattern.to_string(),
            matcher,
            cache_control,
            methods: None,
            content_type: None,
            lifetimes: Lifetimes::default(),
            key: None,
        })
    }

    /// Restricts the rule to these request methods (see [`parse_method`]).
    pub fn with_methods(mut self, methods: Vec<Method>) -> Rule {
        self.methods = Some(methods);
        self
    }

    /// Restricts the rule to responses whose media type (without
    /// parameters, case-insensitive) matches one of `globs` (see
    /// [`media_glob`]).
    pub fn with_content_type(mut self, globs: Vec<Glob>) -> Result<Rule, RuleError> {
        let mut set = GlobSetBuilder::new();
        for g in globs {
            set.add(g);
        }
        let set = set.build().map_err(|source| RuleError::ContentType {
            pattern: String::new(),
            source,
        })?;
        self.content_type = Some(set);
        Ok(self)
    }

    pub fn with_lifetimes(mut self, lifetimes: Lifetimes) -> Rule {
        self.lifetimes = lifetimes;
        self
    }

    /// Sets the key options; options that change nothing are dropped.
    pub fn with_key(mut self, key: KeyOptions) -> Rule {
        self.key = (!key.is_identity()).then(|| Box::new(key));
        self
    }

    /// The key options, when they change the key.
    pub fn key(&self) -> Option<&KeyOptions> {
        self.key.as_deref()
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The Cache-Control that replaces the upstream's, if the rule sets one.
    pub fn cache_control(&self) -> Option<&HeaderValue> {
        self.cache_control.as_ref().map(|(v, _)| v)
    }

    /// The rule's Cache-Control for a response whose origin sent
    /// `no-transform` (`origin_no_transform`) or not: a rule replaces the
    /// origin's directives but never lifts that one (RFC 9110 §7.7: a proxy
    /// MUST NOT transform such content, so Strata must not compress it, nor
    /// tell downstream caches they may).
    pub fn cache_control_for(&self, origin_no_transform: bool) -> Option<HeaderValue> {
        let (value, directives) = self.cache_control.as_ref()?;
        if !origin_no_transform || directives.no_transform {
            return Some(value.clone());
        }
        let mut kept = value.as_bytes().to_vec();
        kept.extend_from_slice(b", no-transform");
        HeaderValue::from_bytes(&kept).ok()
    }

    /// The rule's Cache-Control, parsed once.
    pub fn directives(&self) -> Option<&CacheControl> {
        self.cache_control.as_ref().map(|(_, d)| d)
    }

    /// Whether requests that match this rule bypass the cache outright: a
    /// `no-store` rule that does not wait for the response's media type.
    pub fn bypasses(&self) -> bool {
        self.content_type.is_none() && self.directives().is_some_and(|d| d.no_store)
    }

    /// Whether the rule waits for the response: with a `content_type`,
    /// whether it applies is known only from the response's media type
    /// ([`RuleSet::applied`]).
    pub fn waits_for_response(&self) -> bool {
        self.content_type.is_some()
    }

    fn fits_request(&self, path: &str, method: &Method) -> bool {
        self.matcher.is_match(path)
            && self
                .methods
                .as_ref()
                .is_none_or(|list| list.iter().any(|m| m == method))
    }

    /// Whether a response of media type `content_type` (the field value, as
    /// sent) is one the rule is for.
    fn fits_response(&self, content_type: Option<&[u8]>) -> bool {
        let Some(set) = &self.content_type else {
            return true;
        };
        let Some(value) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
            return false;
        };
        let essence = value.split(';').next().unwrap_or("").trim();
        set.is_match(essence.to_ascii_lowercase())
    }
}

/// A `methods` entry: an RFC 9110 method token, as written. Methods are
/// case-sensitive (RFC 9110 §9.1), so one with a lower-case letter would
/// match no request a client sends for the upper-case method:
/// [`RuleError::MethodCase`], naming the upper-case spelling.
pub fn parse_method(m: &str) -> Result<Method, RuleError> {
    let token = m.trim();
    if token.is_empty() {
        return Err(RuleError::Method(m.to_string()));
    }
    let method =
        Method::from_bytes(token.as_bytes()).map_err(|_| RuleError::Method(m.to_string()))?;
    if token.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(RuleError::MethodCase {
            given: m.to_string(),
            upper: token.to_ascii_uppercase(),
        });
    }
    Ok(method)
}

/// A `content_type` entry: a glob over lowercase media types such as
/// `"application/json"` or `"image/*"`.
pub fn media_glob(pattern: &str) -> Result<Glob, RuleError> {
    GlobBuilder::new(&pattern.trim().to_ascii_lowercase())
        .build()
        .map_err(|source| RuleError::ContentType {
            pattern: pattern.to_string(),
            source,
        })
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

    /// The first rule whose glob matches `path` (no query; repeated
    /// slashes merged, see [`path_glob`]) and whose `methods` allow
    /// `method`, with its index; `content_type` is not known yet (see
    /// [`RuleSet::for_response`]).
    pub fn find(&self, path: &str, method: &Method) -> Option<(usize, &Rule)> {
        if self.rules.is_empty() {
            return None;
        }
        let path = path_glob::merge_slashes(path);
        let path = path.as_ref();
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.fits_request(path, method))
    }

    /// The rule for a response: from `start` (the request's rule, as
    /// [`RuleSet::find`] gave it) on, the first that fits the request and
    /// whose `content_type` matches the response's `Content-Type`.
    pub fn for_response(
        &self,
        start: usize,
        path: &str,
        method: &Method,
        content_type: Option<&[u8]>,
    ) -> Option<&Rule> {
        self.get(self.applied(start, path, method, content_type)?)
    }

    /// The index of [`RuleSet::for_response`]'s rule: the rule that
    /// applies to a response of media type `content_type` (the field
    /// value, as sent; `None` without one), which
    /// `strata_rule_requests_total` counts the request under.
    pub fn applied(
        &self,
        start: usize,
        path: &str,
        method: &Method,
        content_type: Option<&[u8]>,
    ) -> Option<usize> {
        let path = path_glob::merge_slashes(path);
        let path = path.as_ref();
        self.rules
            .get(start..)?
            .iter()
            .position(|r| r.fits_request(path, method) && r.fits_response(content_type))
            .map(|offset| start + offset)
    }

    /// The label each rule's series of `strata_rule_requests_total` (and
    /// the rule's entry in `/events`) goes by, in rule order: its glob, or,
    /// for a rule whose glob an earlier rule has, `"<glob> #<index>"` with
    /// its index in `[[rules]]` from 0 (as `check`'s `rules[2]` numbers
    /// it), so that rules sharing a glob count apart.
    pub fn labels(&self) -> Vec<String> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if self.rules[..i].iter().any(|e| e.pattern == r.pattern) {
                    format!("{} #{i}", r.pattern)
                } else {
                    r.pattern.clone()
                }
            })
            .collect()
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
            Rule::new("/assets/**", Some("public, max-age=31536000, immutable")).unwrap(),
            Rule::new("/api/**", Some("no-cache")).unwrap(),
            Rule::new("**/*.html", Some("public, max-age=3600")).unwrap(),
        ])
    }

    #[test]
    fn first_match_wins() {
        let s = set();
        assert_eq!(s.find("/assets/app.js", &Method::GET).map(|r| r.0), Some(0));
        assert_eq!(
            s.find("/assets/a/b/c.css", &Method::GET).map(|r| r.0),
            Some(0)
        );
        assert_eq!(
            s.find("/assets/page.html", &Method::GET).map(|r| r.0),
            Some(0)
        );
        assert_eq!(s.find("/api/items", &Method::GET).map(|r| r.0), Some(1));
        assert_eq!(s.find("/index.html", &Method::GET).map(|r| r.0), Some(2));
        assert_eq!(s.find("/a/b/c.html", &Method::GET).map(|r| r.0), Some(2));
        assert_eq!(s.find("/other.txt", &Method::GET).map(|r| r.0), None);
        assert_eq!(s.find("/apix", &Method::GET).map(|r| r.0), None);
        // Repeated slashes are merged for matching (nginx's merge_slashes).
        assert_eq!(s.find("//api/x", &Method::GET).map(|r| r.0), Some(1));
        assert_eq!(s.find("/api//x", &Method::GET).map(|r| r.0), Some(1));
        let json = Some(&b"application/json"[..]);
        assert!(s.for_response(0, "//api/x", &Method::GET, json).is_some());
    }

    #[test]
    fn star_stays_in_segment() {
        let s = RuleSet::new(vec![Rule::new("/img/*.png", Some("max-age=1")).unwrap()]);
        assert!(s.find("/img/a.png", &Method::GET).is_some());
        assert!(s.find("/img/x/a.png", &Method::GET).is_none());
    }

    #[test]
    fn methods_and_content_type_skip_to_the_next_rule() {
        let s = RuleSet::new(vec![
            Rule::new("/api/**", Some("max-age=1"))
                .unwrap()
                .with_methods(vec![parse_method("GET").unwrap()])
                .with_content_type(vec![media_glob("application/json").unwrap()])
                .unwrap(),
            Rule::new("/api/**", Some("max-age=2")).unwrap(),
        ]);
        assert_eq!(s.find("/api/x", &Method::GET).map(|r| r.0), Some(0));
        assert_eq!(s.find("/api/x", &Method::HEAD).map(|r| r.0), Some(1));
        let json = Some(&b"Application/JSON; charset=utf-8"[..]);
        let html = Some(&b"text/html"[..]);
        let cc = |r: Option<&Rule>| r.and_then(|r| r.cache_control()).cloned();
        assert_eq!(
            cc(s.for_response(0, "/api/x", &Method::GET, json)),
            Some(HeaderValue::from_static("max-age=1"))
        );
        assert_eq!(
            cc(s.for_response(0, "/api/x", &Method::GET, html)),
            Some(HeaderValue::from_static("max-age=2"))
        );
        assert_eq!(
            cc(s.for_response(0, "/api/x", &Method::GET, None)),
            Some(HeaderValue::from_static("max-age=2"))
        );
        assert!(s.for_response(0, "/other", &Method::GET, json).is_none());
        let types = Rule::new("/i/**", None)
            .unwrap()
            .with_content_type(vec![media_glob("image/*").unwrap()])
            .unwrap();
        assert!(types.fits_response(Some(b"image/png")));
        assert!(!types.fits_response(Some(b"text/plain")));
        assert!(!types.bypasses());
        assert!(Rule::new("/x", Some("no-store")).unwrap().bypasses());
    }

    #[test]
    fn applied_names_the_rule_a_response_counts_under() {
        let json = || vec![media_glob("application/json").unwrap()];
        let s = RuleSet::new(vec![
            Rule::new("/api/**", None)
                .unwrap()
                .with_content_type(json())
                .unwrap(),
            Rule::new("/api/**", None)
                .unwrap()
                .with_methods(vec![Method::POST]),
            Rule::new("/**", None).unwrap(),
            Rule::new("/api/**", None).unwrap(),
        ]);
        let get = |ct: &'static str| s.applied(0, "/api//x", &Method::GET, Some(ct.as_bytes()));
        assert_eq!(get("application/json; charset=utf-8"), Some(0));
        // Not the POST rule: the next that fits the request and response.
        assert_eq!(get("text/plain"), Some(2));
        assert_eq!(s.applied(0, "/api/x", &Method::GET, None), Some(2));
        let only_json = RuleSet::new(vec![Rule::new("/api/**", None)
            .unwrap()
            .with_content_type(json())
            .unwrap()]);
        assert_eq!(
            only_json.applied(0, "/api/x", &Method::GET, Some(b"text/plain")),
            None
        );
        assert!(s.get(0).unwrap().waits_for_response());
        assert!(!s.get(2).unwrap().waits_for_response());
        assert_eq!(s.labels(), ["/api/**", "/api/** #1", "/**", "/api/** #3"]);
    }

    #[test]
    fn bad_rules_are_errors() {
        assert!(matches!(
            Rule::new("[", Some("max-age=1")),
            Err(RuleError::Glob { .. })
        ));
        assert!(matches!(
            Rule::new("/a", Some("max-age=\"1")),
            Err(RuleError::CacheControl { .. })
        ));
        assert!(matches!(
            Rule::new("/a", Some("max-age=abc")),
            Err(RuleError::CacheControl { .. })
        ));
        assert!(matches!(parse_method("G ET"), Err(RuleError::Method(_))));
        assert!(matches!(parse_method(" "), Err(RuleError::Method(_))));
        assert!(matches!(
            parse_method("get"),
            Err(RuleError::MethodCase { upper, .. }) if upper == "GET"
        ));
        assert_eq!(parse_method(" PURGE ").unwrap().as_str(), "PURGE");
        assert!(matches!(
            media_glob("text/[html"),
            Err(RuleError::ContentType { .. })
        ));
    }
}

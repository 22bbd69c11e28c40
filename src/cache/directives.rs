//! Cache-Control parsing (RFC 9111 §5.2), for responses and requests.
//!
//! Parsing is lenient, as RFC 9111 asks of caches: unknown directives are
//! ignored, a directive repeated with different values takes the most
//! restrictive one, and a malformed delta-seconds makes the response stale
//! (max-age = 0) rather than fresh forever. [`CacheControl::validate`] is the
//! strict form used for operator-written values in `[[rules]]`.
//!
//! Targeted fields (RFC 9213, e.g. `CDN-Cache-Control`) are RFC 8941
//! dictionaries, parsed with the `sfv` crate: a structured-field parser is
//! exactly what a well-kept crate does better than hand-written code.

use http::header::{HeaderMap, HeaderName, CACHE_CONTROL};
use http::HeaderValue;

/// RFC 9111 §1.2.2: a delta-seconds too large to represent is 2^31.
pub(crate) const DELTA_MAX: u64 = 2_147_483_648;

/// The directives Strata acts on. Absent numeric directives are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub no_transform: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    // Request directives (§5.2.1).
    /// `max-stale` with no value accepts any staleness: `Some(u64::MAX)`.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

impl CacheControl {
    /// Parses every Cache-Control field line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(CACHE_CONTROL) {
            cc.add(value);
        }
        cc
    }

    /// Parses one field value.
    pub fn from_value(value: &HeaderValue) -> CacheControl {
        let mut cc = CacheControl::default();
        cc.add(value);
        cc
    }

    fn add(&mut self, value: &HeaderValue) {
        let Ok(text) = value.to_str() else {
            return;
        };
        for (name, arg) in Directives::new(text) {
            self.apply(name, arg);
        }
    }

    fn apply(&mut self, name: &str, arg: Option<&str>) {
        // A missing or malformed number on a freshness directive must not
        // make a response fresh: it counts as 0 (stale).
        let secs = |arg: Option<&str>| arg.map_or(0, delta_seconds);
        let min = |slot: &mut Option<u64>, v: u64| {
            *slot = Some(slot.map_or(v, |old| old.min(v)));
        };
        // RFC 9111 §4.2.1: of repeated freshness directives the first
        // occurrence is used (over every Cache-Control line, in order).
        let first = |slot: &mut Option<u64>, v: u64| {
            slot.get_or_insert(v);
        };
        match name.to_ascii_lowercase().as_str() {
            "max-age" => first(&mut self.max_age, secs(arg)),
            "s-maxage" => first(&mut self.s_maxage, secs(arg)),
            "no-store" => self.no_store = true,
            // Qualified no-cache="field" and private="field" are treated as
            // unqualified, which RFC 9111 §5.2.2.4 and §5.2.2.7 allow.
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "no-transform" => self.no_transform = true,
            "immutable" => self.immutable = true,
            "stale-while-revalidate" => {
                if let Some(v) = arg.and_then(strict_delta) {
                    min(&mut self.stale_while_revalidate, v)
                }
            }
            "stale-if-error" => {
                if let Some(v) = arg.and_then(strict_delta) {
                    min(&mut self.stale_if_error, v)
                }
            }
            "max-stale" => match arg {
                None => self.max_stale = Some(u64::MAX),
                Some(a) => {
                    if let Some(v) = strict_delta(a) {
                        min(&mut self.max_stale, v)
                    }
                }
            },
            "min-fresh" => {
                if let Some(v) = arg.and_then(strict_delta) {
                    self.min_fresh = Some(self.min_fresh.map_or(v, |o| o.max(v)))
                }
            }
            "only-if-cached" => self.only_if_cached = true,
            _ => {}
        }
    }

    /// The directives Strata itself obeys for a response (RFC 9213): the
    /// first of `targeted` (e.g. `Strata-Cache-Control`,
    /// `CDN-Cache-Control`) present and valid as an RFC 8941 dictionary,
    /// else `Cache-Control`. An invalid targeted field is ignored.
    pub fn for_cache(headers: &HeaderMap, targeted: &[HeaderName]) -> CacheControl {
        targeted
            .iter()
            .find_map(|name| CacheControl::targeted(headers, name))
            .unwrap_or_else(|| CacheControl::from_headers(headers))
    }

    /// Parses the targeted field `name` (RFC 9213 §2.1): its lines joined
    /// form one RFC 8941 dictionary; `None` when absent or invalid.
    /// Directives with a value of the wrong type are ignored (a numeric
    /// directive needs a non-negative integer, others a boolean `true`,
    /// a token or a string).
    pub fn targeted(headers: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
        let mut joined = String::new();
        for value in headers.get_all(name) {
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(value.to_str().ok()?);
        }
        if joined.is_empty() {
            return None;
        }
        let dict: sfv::Dictionary = sfv::Parser::new(joined.as_str())
            .with_version(sfv::Version::Rfc8941)
            .parse()
            .ok()?;
        let mut cc = CacheControl::default();
        for (key, entry) in &dict {
            let sfv::ListEntry::Item(item) = entry else {
                continue;
            };
            let name = key.as_str();
            match &item.bare_item {
                sfv::BareItem::Integer(n) if is_numeric(name) => {
                    if let Ok(secs) = u64::try_from(i64::from(*n)) {
                        cc.apply(name, Some(&secs.to_string()));
                    }
                }
                _ if is_numeric(name) => {}
                sfv::BareItem::Boolean(true) => cc.apply(name, None),
                sfv::BareItem::Token(_) | sfv::BareItem::String(_) => cc.apply(name, None),
                _ => {}
            }
        }
        Some(cc)
    }

    /// Strict check of an operator-written value: every directive must be
    /// well formed and numeric directives must carry a number.
    pub fn validate(text: &str) -> Result<(), String> {
        if text.trim().is_empty() {
            return Err("empty value".into());
        }
        let mut quote_open = false;
        for c in text.chars() {
            if c == '"' {
                quote_open = !quote_open;
            }
        }
        if quote_open {
            return Err("unterminated quoted string".into());
        }
        for (name, arg) in Directives::new(text) {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(format!("invalid directive name {name:?}"));
            }
            let numeric = is_numeric(name) && !name.eq_ignore_ascii_case("max-stale");
            if numeric && arg.and_then(strict_delta).is_none() {
                return Err(format!("{name} needs a number of seconds, e.g. {name}=60"));
            }
        }
        Ok(())
    }
}

/// Splits a Cache-Control value into `(name, argument)` pairs, honouring
/// quoted strings (a comma inside quotes does not split).
struct Directives<'a> {
    rest: &'a str,
}

impl<'a> Directives<'a> {
    fn new(text: &'a str) -> Self {
        Directives { rest: text }
    }
}

impl<'a> Iterator for Directives<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = self.rest.trim_start_matches([' ', '\t', ',']);
            if text.is_empty() {
                self.rest = text;
                return None;
            }
            // Find the end of this directive: a comma outside quotes.
            let mut in_quotes = false;
            let mut escaped = false;
            let mut end = text.len();
            for (i, b) in text.bytes().enumerate() {
                if escaped {
                    escaped = false;
                    continue;
                }
                match b {
                    b'\\' if in_quotes => escaped = true,
                    b'"' => in_quotes = !in_quotes,
                    b',' if !in_quotes => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let item = text[..end].trim();
            self.rest = &text[end..];
            if item.is_empty() {
                continue;
            }
            // No whitespace around `=` (RFC 9111 §5.2: `token [ "=" ( token
            // / quoted-string ) ]`): `max-age =100` names no directive Strata
            // knows and `max-age= 100` has no valid value, so neither makes
            // a response fresh.
            return Some(match item.split_once('=') {
                None => (item, None),
                Some((n, v)) => {
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    (n, Some(v))
                }
            });
        }
    }
}

/// Directives whose argument is delta-seconds.
fn is_numeric(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "max-age"
            | "s-maxage"
            | "stale-while-revalidate"
            | "stale-if-error"
            | "max-stale"
            | "min-fresh"
    )
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// delta-seconds per RFC 9111 §1.2.2; anything else is 0 (stale).
fn delta_seconds(s: &str) -> u64 {
    strict_delta(s).unwrap_or(0)
}

/// delta-seconds (RFC 9111 §1.2.2) or `None`: digits only; a value beyond 2^31
/// is 2^31.
pub fn strict_delta(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Saturate: a huge number is 2^31, never an overflow.
    Some(s.parse::<u64>().map_or(DELTA_MAX, |v| v.min(DELTA_MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CacheControl {
        CacheControl::from_value(&HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn parses_common_directives() {
        let c = cc("public, max-age=3600, s-maxage=60, must-revalidate");
        assert_eq!(c.max_age, Some(3600));
        assert_eq!(c.s_maxage, Some(60));
        assert!(c.public && c.must_revalidate && !c.no_store);
        let c = cc("No-Store, PRIVATE");
        assert!(c.no_store && c.private);
    }

    #[test]
    fn quoted_and_invalid_values() {
        assert_eq!(cc("max-age=\"60\"").max_age, Some(60));
        assert_eq!(cc("max-age=abc").max_age, Some(0));
        assert_eq!(cc("max-age").max_age, Some(0));
        assert_eq!(cc("max-age =100").max_age, None);
        assert_eq!(cc("max-age= 100").max_age, Some(0));
        assert_eq!(cc("public , max-age=100 ").max_age, Some(100));
        assert_eq!(cc("max-age=99999999999999999999").max_age, Some(DELTA_MAX));
        let c = cc("private=\"a, b\", max-age=5");
        assert!(c.private);
        assert_eq!(c.max_age, Some(5));
    }

    #[test]
    fn repeated_directives() {
        // Freshness: the first occurrence (RFC 9111 §4.2.1).
        assert_eq!(cc("max-age=10, max-age=5").max_age, Some(10));
        assert_eq!(cc("max-age=5, max-age=10").max_age, Some(5));
        assert_eq!(cc("s-maxage=1800, s-maxage=1").s_maxage, Some(1800));
        let mut two_lines = HeaderMap::new();
        two_lines.append(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=1800"),
        );
        two_lines.append(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=1"),
        );
        assert_eq!(CacheControl::from_headers(&two_lines).max_age, Some(1800));
        // The stale windows: the shorter.
        assert_eq!(
            cc("stale-if-error=60, stale-if-error=5").stale_if_error,
            Some(5)
        );
    }

    #[test]
    fn request_directives() {
        let c = cc("max-stale");
        assert_eq!(c.max_stale, Some(u64::MAX));
        let c = cc("max-stale=10, min-fresh=5, only-if-cached");
        assert_eq!(
            (c.max_stale, c.min_fresh, c.only_if_cached),
            (Some(10), Some(5), true)
        );
    }

    #[test]
    fn multiple_lines() {
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, HeaderValue::from_static("max-age=10"));
        h.append(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let c = CacheControl::from_headers(&h);
        assert_eq!(c.max_age, Some(10));
        assert!(c.no_cache);
    }

    #[test]
    fn validate() {
        assert!(CacheControl::validate("public, max-age=31536000, immutable").is_ok());
        assert!(CacheControl::validate("no-cache").is_ok());
        assert!(CacheControl::validate("max-age=x").is_err());
        assert!(CacheControl::validate("max-age=\"1").is_err());
        assert!(CacheControl::validate("").is_err());
        assert!(CacheControl::validate("no cache").is_err());
    }

    fn targeted_of(lines: &[(&str, &str)]) -> CacheControl {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let names = [
            HeaderName::from_static("strata-cache-control"),
            HeaderName::from_static("cdn-cache-control"),
        ];
        CacheControl::for_cache(&h, &names)
    }

    #[test]
    fn targeted_fields() {
        let c = targeted_of(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=3600"),
        ]);
        assert_eq!(c.max_age, Some(3600));
        assert!(!c.no_store);
        // The first listed field present wins.
        let c = targeted_of(&[
            ("cdn-cache-control", "max-age=3600"),
            ("strata-cache-control", "private"),
        ]);
        assert!(c.private && c.max_age.is_none());
        // Invalid as a dictionary: ignored, the next one or Cache-Control.
        let c = targeted_of(&[
            ("strata-cache-control", "max-age=\"1"),
            ("cdn-cache-control", "no-cache"),
            ("cache-control", "max-age=5"),
        ]);
        assert!(c.no_cache && c.max_age.is_none());
        let c = targeted_of(&[
            ("cdn-cache-control", "max-age=1.5, ="),
            ("cache-control", "max-age=5"),
        ]);
        assert_eq!(c.max_age, Some(5));
        // A wrong-typed directive is ignored, the rest applies.
        let c = targeted_of(&[("cdn-cache-control", "max-age=\"60\", no-store")]);
        assert!(c.no_store && c.max_age.is_none());
        let c = targeted_of(&[("cdn-cache-control", "max-age=-1, s-maxage=10")]);
        assert_eq!((c.max_age, c.s_maxage), (None, Some(10)));
        // Lines join into one dictionary.
        let c = targeted_of(&[
            ("cdn-cache-control", "max-age=60"),
            ("cdn-cache-control", "private"),
        ]);
        assert!(c.private && c.max_age == Some(60));
        // Absent: Cache-Control.
        assert_eq!(
            targeted_of(&[("cache-control", "max-age=7")]).max_age,
            Some(7)
        );
    }
}

//! A rule's key options (`key.*`, SPEC §7): how the query takes part in
//! the cache key (`all`, `sorted`, `none`, parameters ignored or kept by
//! name glob) and which request header and cookie values are appended to
//! it. They change the cache key only, never the request sent upstream.
//!
//! The key's path part becomes `PATH[?QUERY][#h.NAME=VALUE&c.NAME=VALUE]`:
//! a request target never holds `#` (the `http` crate drops a fragment),
//! so the appended values cannot collide with a path; `%`, `#`, `&` and `=`
//! in values are percent-encoded. A missing header or cookie is written
//! without `=`, so it differs from an empty one. Cookies are parsed with
//! the `cookie` crate (RFC 6265 §4.2 `Cookie` fields); every value of a
//! repeated cookie name is keyed, in order.
//!
//! Parameters are kept in the key as sent. Their names are matched with
//! globs where `*` matches any run of characters, against every name an
//! origin framework may read them as (`rules/param_name.rs`: `%71`, `+q`,
//! `Q` and `q[]` are all `q` somewhere): `query_only` keeps a parameter
//! when any reading is kept (case-insensitively), `query_ignore` drops it
//! only when every reading is ignored, and `sorted` never reorders two
//! parameters a framework could read as one name (parameter cloaking).

use std::fmt::Write as _;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use http::header::{self, HeaderMap, HeaderName};
use http::Method;

use super::{param_name, RuleSet};
use crate::cache::key::CacheKey;
use crate::cache::Purge;

/// `key.query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryMode {
    /// As sent (less ignored parameters).
    #[default]
    All,
    /// Parameters sorted by name (stable), so `?b=2&a=1` and `?a=1&b=2`
    /// share an entry.
    Sorted,
    /// The query takes no part in the key.
    None,
}

impl QueryMode {
    /// `"all"`, `"sorted"` or `"none"`.
    pub fn parse(s: &str) -> Option<QueryMode> {
        match s {
            "all" => Some(QueryMode::All),
            "sorted" => Some(QueryMode::Sorted),
            "none" => Some(QueryMode::None),
            _ => None,
        }
    }
}

/// Which query parameters the key keeps, by name glob; built by
/// [`QueryFilter::ignore`] and [`QueryFilter::only`].
#[derive(Debug, Clone)]
pub enum QueryFilter {
    /// `key.query_ignore`: drop these (every reading of the name matches).
    Ignore(GlobSet),
    /// `key.query_only`: keep only these (some reading of the name
    /// matches; the globs match case-insensitively).
    Only(GlobSet),
}

impl QueryFilter {
    /// `key.query_ignore = globs`.
    pub fn ignore<'a>(
        globs: impl IntoIterator<Item = &'a str>,
    ) -> Result<QueryFilter, globset::Error> {
        Ok(QueryFilter::Ignore(name_globs(globs)?))
    }

    /// `key.query_only = globs`, matched case-insensitively (ASP.NET reads
    /// `Q` as `q`).
    pub fn only<'a>(
        globs: impl IntoIterator<Item = &'a str>,
    ) -> Result<QueryFilter, globset::Error> {
        let mut set = GlobSetBuilder::new();
        for g in globs {
            set.add(GlobBuilder::new(g).case_insensitive(true).build()?);
        }
        Ok(QueryFilter::Only(set.build()?))
    }

    /// Whether the key keeps a parameter sent with name `name`.
    fn keeps(&self, name: &str) -> bool {
        match self {
            QueryFilter::Ignore(set) => !param_name::every_reading(name, |r| set.is_match(r)),
            QueryFilter::Only(set) => param_name::any_reading(name, |r| set.is_match(r)),
        }
    }
}

/// A rule's key options; the default changes nothing.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    pub query: QueryMode,
    pub filter: Option<QueryFilter>,
    /// Request fields whose values are appended, in this order.
    pub headers: Vec<HeaderName>,
    /// Cookie names whose values are appended, in this order.
    pub cookies: Vec<String>,
}

/// Compiles parameter-name globs (`utm_*`, `fbclid`).
pub fn name_globs<'a>(globs: impl IntoIterator<Item = &'a str>) -> Result<GlobSet, globset::Error> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        set.add(Glob::new(g)?);
    }
    set.build()
}

/// Whether `name` is an RFC 9110 §5.6.2 token (a valid cookie name,
/// RFC 6265 §4.1.1).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl KeyOptions {
    /// Whether the options leave the key as the request gives it (such a
    /// rule keeps none, so the hit path hashes borrowed parts).
    pub fn is_identity(&self) -> bool {
        self.query == QueryMode::All && self.filter.is_none() && !self.appends()
    }

    /// Whether header or cookie values are appended to keys.
    pub fn appends(&self) -> bool {
        !(self.headers.is_empty() && self.cookies.is_empty())
    }

    /// The key's path part for a request: `path_and_query` normalised
    /// ([`KeyOptions::normalise`]), then the header and cookie values from
    /// `request`.
    pub fn request_path(&self, path_and_query: &str, request: &HeaderMap) -> String {
        // One allocation for the key in the usual case (short values).
        let mut out = String::with_capacity(path_and_query.len() + 64);
        self.normalise_into(path_and_query, &mut out);
        if !self.appends() {
            return out;
        }
        out.push('#');
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !std::mem::take(&mut first) {
                out.push('&');
            }
        };
        for name in &self.headers {
            sep(&mut out);
            out.push_str("h.");
            out.push_str(name.as_str());
            let mut values = request.get_all(name).iter().peekable();
            if values.peek().is_some() {
                out.push('=');
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    escape(&mut out, &String::from_utf8_lossy(v.as_bytes()));
                }
            }
        }
        for name in &self.cookies {
            sep(&mut out);
            out.push_str("c.");
            out.push_str(name);
            push_cookie(&mut out, request, name);
        }
        out
    }

    /// The query normalisation alone (purge by URL has no request fields):
    /// `path_and_query` with its query kept, sorted, filtered or dropped.
    pub fn normalise(&self, path_and_query: &str) -> String {
        let mut out = String::with_capacity(path_and_query.len());
        self.normalise_into(path_and_query, &mut out);
        out
    }

    /// [`KeyOptions::normalise`], appended to `out`; allocates only to sort.
    fn normalise_into(&self, path_and_query: &str, out: &mut String) {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        if self.query == QueryMode::All && self.filter.is_none() {
            out.push_str(path_and_query);
            return;
        }
        out.push_str(path);
        let Some(query) = query.filter(|_| self.query != QueryMode::None) else {
            return;
        };
        // A parameter holding `;` is always kept: origins that also split
        // on `;` (Rack, older Python) would read a second parameter inside
        // it, which dropping it from the key would let through unkeyed
        // (`?a=1&utm_x=1;a=EVIL` stored as `?a=1`: parameter cloaking).
        let kept = query.split('&').filter(|p| {
            !p.is_empty()
                && (p.contains(';') || self.filter.as_ref().is_none_or(|f| f.keeps(param_name(p))))
        });
        let mut push = |i: usize, p: &str| {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(p);
        };
        if self.query == QueryMode::Sorted {
            let mut params: Vec<&str> = kept.collect();
            // Stable, and by name regardless of ASCII case: parameters an
            // origin reads as one name (repeated, or `Q` and `q` for
            // ASP.NET) keep their relative order, which decides the value
            // it reads. A name of other characters (`q[]`, `%71`, `a.b`)
            // may be read as one of several names: such a query keeps its
            // order.
            if params.iter().all(|p| param_name::is_plain(param_name(p))) {
                params.sort_by(|a, b| {
                    let (a, b) = (param_name(a).bytes(), param_name(b).bytes());
                    a.map(|c| c.to_ascii_lowercase())
                        .cmp(b.map(|c| c.to_ascii_lowercase()))
                });
            }
            params.iter().enumerate().for_each(|(i, p)| push(i, p));
        } else {
            kept.enumerate().for_each(|(i, p)| push(i, p));
        }
    }
}

/// The entries a URL names (purge by URL, `GET /cache?url=`), keyed as a
/// GET for it would be: the matching rule's query normalisation applied,
/// and, when the rule appends header or cookie values, every value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTarget {
    /// Scheme (https?) and authority of an absolute URL; `None`: a path,
    /// for every host.
    origin: Option<(bool, String)>,
    /// The key's path and query, normalised, without appended values.
    path: String,
    /// The rule appends header or cookie values: the URL names every
    /// `PATH#…` key.
    appended: bool,
}

impl KeyTarget {
    /// The key path the URL names (without appended values).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether `key` is one of the URL's entries (host included for an
    /// absolute URL).
    pub fn selects(&self, key: &CacheKey) -> bool {
        let path_ok = if self.appended {
            key.path()
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('#'))
        } else {
            key.path() == self.path
        };
        path_ok
            && self
                .origin
                .as_ref()
                .is_none_or(|(https, authority)| key.matches(*https, authority, key.path()))
    }

    /// The URL as a purge names it: the normalised absolute URL or path;
    /// with appended values, the `PATH#` prefix of every value's entry.
    /// The Redis path index holds no host, so that prefix is purged on
    /// every host even for an absolute URL.
    pub fn purge(&self) -> Purge {
        if self.appended {
            return Purge::Prefix(format!("{}#", self.path));
        }
        match &self.origin {
            None => Purge::Url(self.path.clone()),
            Some((https, authority)) => Purge::Url(
                CacheKey::new(*https, authority, &self.path)
                    .url()
                    .to_string(),
            ),
        }
    }
}

impl RuleSet {
    /// What a URL names: `origin` is `(https, authority)` of an absolute
    /// URL (`None`: every host), `path_and_query` its path, already
    /// normalised as a request's is (SPEC §10). The rule is the one a GET
    /// of that path matches.
    pub fn key_target(&self, origin: Option<(bool, &str)>, path_and_query: &str) -> KeyTarget {
        let path_only = path_and_query.split('?').next().unwrap_or("/");
        let options = self
            .find(path_only, &Method::GET)
            .and_then(|(_, r)| r.key());
        let (path, appended) = match options {
            None => (path_and_query.to_string(), false),
            Some(k) => (k.normalise(path_and_query), k.appends()),
        };
        KeyTarget {
            origin: origin.map(|(https, a)| {
                let keyed = crate::cache::key::keyed_authority(https, a);
                (https, keyed.to_ascii_lowercase())
            }),
            path,
            appended,
        }
    }
}

/// A query parameter's name (`name=value` or a bare `name`).
fn param_name(p: &str) -> &str {
    p.split_once('=').map_or(p, |(n, _)| n)
}

/// Appends `=VALUES` for cookie `name` in the request's `Cookie` fields
/// (RFC 6265 §5.4; HTTP/2 crumbs were joined at validation), or nothing
/// when there is none. Origins differ on which cookie they read, so every
/// one that some origin could read as `name` is keyed, in order, `;`
/// between them:
///
/// - each cookie of that name (Django reads the last, nginx's `$cookie_`
///   the first);
/// - `~SPELLING=VALUE` for one whose name is another spelling of `name`
///   (PHP decodes names and reads `.` as `_`, ASP.NET ignores case: the
///   readings of `rules/param_name.rs`);
/// - `,VALUE` for one found only by splitting on `,` as well (Rack 2 reads
///   `x=a,currency=USD` as two cookies).
///
/// Values and spellings are escaped so that none holds `;`, `,`, `~` or
/// `=`. The `cookie` crate parses without copying.
fn push_cookie(out: &mut String, request: &HeaderMap, name: &str) {
    let cookies = request
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok);
    let mut first = true;
    let mut entry = |out: &mut String, prefix: &str, sent: &str, value: &str| {
        out.push(if std::mem::take(&mut first) { '=' } else { ';' });
        out.push_str(prefix);
        if sent != name {
            out.push('~');
            escape_cookie(out, sent);
            out.push('=');
        }
        escape_cookie(out, value);
    };
    let read_as_name = |sent: &str| {
        sent == name || param_name::any_reading(sent, |r| r.eq_ignore_ascii_case(name))
    };
    for c in cookies {
        if read_as_name(c.name()) {
            entry(out, "", c.name(), c.value());
        }
        for part in c.value().split(',').skip(1) {
            if let Some((sent, value)) = part.split_once('=') {
                let sent = sent.trim();
                if read_as_name(sent) {
                    entry(out, ",", sent, value);
                }
            }
        }
    }
}

fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | '#' | '&' | '=' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// [`escape`], and `;`, `,` and `~` too (the separators of
/// [`push_cookie`]).
fn escape_cookie(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | '#' | '&' | '=' | ';' | ',' | '~' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn opts(query: QueryMode, filter: Option<QueryFilter>) -> KeyOptions {
        KeyOptions {
            query,
            filter,
            ..KeyOptions::default()
        }
    }

    #[test]
    fn query_modes() {
        let all = opts(QueryMode::All, None);
        assert!(all.is_identity());
        assert_eq!(all.normalise("/p?b=2&a=1"), "/p?b=2&a=1");
        assert_eq!(all.normalise("/p"), "/p");
        let sorted = opts(QueryMode::Sorted, None);
        assert!(!sorted.is_identity());
        assert_eq!(sorted.normalise("/p?b=2&a=1&a=0"), "/p?a=1&a=0&b=2");
        assert_eq!(sorted.normalise("/p?"), "/p");
        assert_eq!(sorted.normalise("/p?x&&a"), "/p?a&x");
        let none = opts(QueryMode::None, None);
        assert_eq!(none.normalise("/p?b=2&a=1"), "/p");
        let ignore = opts(
            QueryMode::All,
            Some(QueryFilter::ignore(["utm_*", "fbclid"]).unwrap()),
        );
        assert_eq!(ignore.normalise("/p?utm_source=x&id=1&fbclid=9"), "/p?id=1");
        assert_eq!(ignore.normalise("/p?utm_source=x"), "/p");
        let only = opts(
            QueryMode::Sorted,
            Some(QueryFilter::only(["q", "page"]).unwrap()),
        );
        assert_eq!(only.normalise("/s?page=2&x=1&q=a"), "/s?page=2&q=a");
        assert_eq!(only.normalise("/s?x=1"), "/s");
    }

    /// Parameter cloaking: an origin that splits the query on `;` as well
    /// reads `a=EVIL` inside `utm_content=x;a=EVIL`; the parameter stays in
    /// the key, so that request never shares an entry with `?a=1`.
    #[test]
    fn a_parameter_holding_a_semicolon_is_never_dropped() {
        let ignore = opts(
            QueryMode::All,
            Some(QueryFilter::ignore(["utm_*"]).unwrap()),
        );
        assert_eq!(
            ignore.normalise("/p?a=1&utm_content=x;a=EVIL"),
            "/p?a=1&utm_content=x;a=EVIL"
        );
        assert_eq!(
            ignore.normalise("/p?a=1&utm_content;a=EVIL"),
            "/p?a=1&utm_content;a=EVIL"
        );
        assert_eq!(ignore.normalise("/p?a=1&utm_content=x"), "/p?a=1");
        let only = opts(QueryMode::Sorted, Some(QueryFilter::only(["a"]).unwrap()));
        assert_eq!(only.normalise("/p?x=1;a=EVIL&a=1"), "/p?a=1&x=1;a=EVIL");
        assert_eq!(only.normalise("/p?x=1&a=1"), "/p?a=1");
    }

    /// Parameter cloaking (security probe F1): a spelling an origin reads
    /// as a kept name (`%71`, `+q`, `Q`, `q[]`, `q%00`) was dropped from
    /// the key, so `?q=shoes&%71=EVIL` was stored as `?q=shoes` while PHP,
    /// Django and Rack rendered `q = EVIL`.
    #[test]
    fn a_spelling_an_origin_reads_as_a_kept_name_stays_in_the_key() {
        let only = opts(QueryMode::All, Some(QueryFilter::only(["q"]).unwrap()));
        for cloak in [
            "%71", "+q", "%20q", "Q", "q[]", "q%5B%5D", "q%00", "%u0071", "[q]",
        ] {
            let url = format!("/s?q=shoes&{cloak}=EVIL&x=1");
            assert_eq!(
                only.normalise(&url),
                format!("/s?q=shoes&{cloak}=EVIL"),
                "{cloak}"
            );
        }
        assert_eq!(only.normalise("/s?q=shoes&qq=1&x=1"), "/s?q=shoes");
        // PHP reads `a.b`, `a b` and `a[b` as `a_b`.
        let php = opts(QueryMode::All, Some(QueryFilter::only(["a_b"]).unwrap()));
        assert_eq!(
            php.normalise("/s?a.b=1&a+b=2&a[b=3&ab=4"),
            "/s?a.b=1&a+b=2&a[b=3"
        );
        // Dropped only when every reading is ignored.
        let ignore = opts(
            QueryMode::All,
            Some(QueryFilter::ignore(["utm_*", "fbclid"]).unwrap()),
        );
        assert_eq!(
            ignore.normalise("/p?a=1&utm_x=1&utm_a.b=2&%75tm_x=3&fbclid[]=4&UTM_X=5"),
            "/p?a=1&%75tm_x=3&fbclid[]=4&UTM_X=5"
        );
    }

    /// `sorted` must not reorder two parameters an origin reads as one
    /// name: with last-wins parsing, the order decides the value read.
    #[test]
    fn sorting_keeps_the_order_of_parameters_read_as_one_name() {
        let sorted = opts(QueryMode::Sorted, None);
        assert_eq!(sorted.normalise("/p?q=a&b=1&Q=b"), "/p?b=1&q=a&Q=b");
        assert_eq!(sorted.normalise("/p?Q=b&b=1&q=a"), "/p?b=1&Q=b&q=a");
        // A name that may be read as another keeps the query's order.
        assert_eq!(sorted.normalise("/p?q=a&b=1&%71=b"), "/p?q=a&b=1&%71=b");
        assert_eq!(sorted.normalise("/p?%71=b&b=1&q=a"), "/p?%71=b&b=1&q=a");
    }

    /// Security probe F4: only the first of repeated cookies was keyed, so
    /// `currency=EUR; currency=USD` (Django reads USD) shared the entry of
    /// `currency=EUR`.
    #[test]
    fn every_cookie_an_origin_may_read_is_keyed() {
        let o = KeyOptions {
            cookies: vec!["currency".into()],
            ..KeyOptions::default()
        };
        let key = |cookies: &[&str]| {
            let mut h = HeaderMap::new();
            for c in cookies {
                h.append("cookie", HeaderValue::from_str(c).unwrap());
            }
            o.request_path("/p", &h)
        };
        assert_eq!(key(&["currency=EUR"]), "/p#c.currency=EUR");
        assert_eq!(
            key(&["currency=EUR; currency=USD"]),
            "/p#c.currency=EUR;USD"
        );
        assert_eq!(
            key(&["currency=EUR", "currency=USD"]),
            "/p#c.currency=EUR;USD"
        );
        assert_eq!(
            key(&["currency=USD; currency=EUR"]),
            "/p#c.currency=USD;EUR"
        );
        // Rack 2 splits on `,` too; Django reads `x` only.
        assert_eq!(key(&["x=a,currency=USD"]), "/p#c.currency=,USD");
        assert_eq!(
            key(&["currency=EUR,USD"]),
            "/p#c.currency=EUR%2CUSD",
            "one value holding a comma"
        );
        // PHP decodes names, ASP.NET ignores case.
        assert_eq!(key(&["%63urrency=USD"]), "/p#c.currency=~%2563urrency=USD");
        assert_eq!(key(&["Currency=USD"]), "/p#c.currency=~Currency=USD");
        assert_eq!(key(&["other=1"]), "/p#c.currency");
    }

    #[test]
    fn headers_and_cookies_are_appended() {
        let o = KeyOptions {
            headers: vec![HeaderName::from_static("accept-language")],
            cookies: vec!["currency".into()],
            ..KeyOptions::default()
        };
        assert!(!o.is_identity());
        let mut h = HeaderMap::new();
        assert_eq!(
            o.request_path("/p?a", &h),
            "/p?a#h.accept-language&c.currency"
        );
        h.insert("accept-language", HeaderValue::from_static("fr"));
        h.append(
            "cookie",
            HeaderValue::from_static("session=abc; currency=EUR"),
        );
        assert_eq!(
            o.request_path("/p", &h),
            "/p#h.accept-language=fr&c.currency=EUR"
        );
        h.insert("cookie", HeaderValue::from_static("currency=a&c.x=1"));
        assert_eq!(
            o.request_path("/p", &h),
            "/p#h.accept-language=fr&c.currency=a%26c.x%3D1"
        );
        h.insert("cookie", HeaderValue::from_static("currency="));
        assert_eq!(
            o.request_path("/p", &h),
            "/p#h.accept-language=fr&c.currency="
        );
        // HTTP/2 may split the cookies over several fields.
        h.insert("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("currency=USD"));
        assert_eq!(
            o.request_path("/p", &h),
            "/p#h.accept-language=fr&c.currency=USD"
        );
    }

    #[test]
    fn tokens() {
        assert!(is_token("currency"));
        assert!(is_token("__Host-id"));
        for bad in ["", "a=b", "a b", "a;b", "a,b", "é"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}

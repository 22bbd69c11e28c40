//! `[[rules]]` → [`RuleSet`]: globs, Cache-Control, methods, media types,
//! TTL keys and key options, with the contradictions `strata check`
//! rejects (`min_ttl` above `max_ttl`, bad or repeated status patterns,
//! `key.query_only` with `key.query_ignore`, filters under `key.query =
//! "none"`), each error located at the offending key.

use super::*;
use crate::rules::key::{is_token, name_globs, KeyOptions, QueryFilter, QueryMode};
use crate::rules::{media_glob, parse_method, Lifetimes, Rule, RuleError, RuleSet};

impl Validator<'_> {
    pub(super) fn rules(&self, rules: Vec<file::RuleFile>) -> Result<RuleSet, ConfigError> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.into_iter().enumerate() {
            out.push(self.rule(i, r)?);
        }
        Ok(RuleSet::new(out))
    }

    fn rule(&self, i: usize, r: file::RuleFile) -> Result<Rule, ConfigError> {
        let file::RuleFile {
            pattern,
            cache_control,
            methods,
            content_type,
            ttl,
            min_ttl,
            max_ttl,
            status_ttl,
            stale_while_revalidate,
            stale_if_error,
            key,
        } = r;
        let at = |span: Range<usize>, field: &str, e: &dyn fmt::Display| {
            self.at.error(span, &format!("rules[{i}].{field}"), e)
        };
        let mut rule = Rule::new(
            pattern.get_ref(),
            cache_control.as_ref().map(|c| c.get_ref().as_str()),
        )
        .map_err(|e| match (&e, &cache_control) {
            (RuleError::CacheControl { .. }, Some(cc)) => at(cc.span(), "cache_control", &e),
            _ => at(pattern.span(), "match", &e),
        })?;
        // After the glob's syntax, so that a bad glob says so.
        self.path_glob(&pattern, &format!("rules[{i}].match"))?;
        if let Some(methods) = methods {
            if methods.get_ref().is_empty() {
                return Err(at(
                    methods.span(),
                    "methods",
                    &"an empty list matches no request (omit the key for every method)",
                ));
            }
            let list = methods
                .get_ref()
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    parse_method(m.get_ref())
                        .map_err(|e| at(m.span(), &format!("methods[{j}]"), &e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rule = rule.with_methods(list);
        }
        if let Some(types) = content_type {
            if types.get_ref().is_empty() {
                return Err(at(
                    types.span(),
                    "content_type",
                    &"an empty list matches no response (omit the key for every media type)",
                ));
            }
            let globs = types
                .get_ref()
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    let field = format!("content_type[{j}]");
                    media_range(t.get_ref()).map_err(|e| at(t.span(), &field, &e))?;
                    media_glob(t.get_ref()).map_err(|e| at(t.span(), &field, &e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rule = rule
                .with_content_type(globs)
                .map_err(|e| at(pattern.span(), "content_type", &e))?;
        }
        let secs = |d: &units::Dur| d.0.as_secs();
        let mut lifetimes = Lifetimes {
            ttl: ttl.as_ref().map(secs),
            min_ttl: min_ttl.as_ref().map(|d| secs(d.get_ref())),
            max_ttl: max_ttl.as_ref().map(|d| secs(d.get_ref())),
            stale_while_revalidate: stale_while_revalidate.as_ref().map(secs),
            stale_if_error: stale_if_error.as_ref().map(secs),
            ..Lifetimes::default()
        };
        if let (Some(min), Some(max)) = (&min_ttl, &max_ttl) {
            if min.get_ref() > max.get_ref() {
                return Err(at(
                    min.span(),
                    "min_ttl",
                    &format_args!(
                        "min_ttl ({}s) is above max_ttl ({}s)",
                        secs(min.get_ref()),
                        secs(max.get_ref())
                    ),
                ));
            }
        }
        // Keyed by plain strings so that a bad duration's error names its
        // status (`status_ttl.404`); a bad status is located at its value.
        for (pattern, d) in status_ttl.iter().flatten() {
            lifetimes
                .status_ttl
                .insert(pattern, secs(d.get_ref()))
                .map_err(|e| at(d.span(), &format!("status_ttl.{pattern}"), &e))?;
        }
        let rule = rule.with_lifetimes(lifetimes);
        Ok(match key {
            None => rule,
            Some(k) => rule.with_key(self.key(i, k)?),
        })
    }

    fn key(&self, i: usize, k: file::KeyFile) -> Result<KeyOptions, ConfigError> {
        let file::KeyFile {
            query,
            query_ignore,
            query_only,
            headers,
            cookies,
        } = k;
        let at = |span: Range<usize>, field: &str, e: &dyn fmt::Display| {
            self.at.error(span, &format!("rules[{i}].key.{field}"), e)
        };
        let mode = match &query {
            None => QueryMode::All,
            Some(q) => QueryMode::parse(q.get_ref()).ok_or_else(|| {
                at(
                    q.span(),
                    "query",
                    &format_args!(
                        "expected \"all\", \"sorted\" or \"none\", got {:?}",
                        q.get_ref()
                    ),
                )
            })?,
        };
        let globs = |list: &Spanned<Vec<Spanned<String>>>, field: &str, only: bool| {
            for g in list.get_ref() {
                name_globs([g.get_ref().as_str()]).map_err(|e| at(g.span(), field, &e))?;
            }
            let names = list.get_ref().iter().map(|g| g.get_ref().as_str());
            if only {
                QueryFilter::only(names)
            } else {
                QueryFilter::ignore(names)
            }
            .map_err(|e| at(list.span(), field, &e))
        };
        let filter = match (&query_ignore, &query_only) {
            (Some(_), Some(only)) => {
                return Err(at(
                    only.span(),
                    "query_only",
                    &"query_only and query_ignore exclude each other: keep one",
                ))
            }
            (Some(ignore), None) => Some(globs(ignore, "query_ignore", false)?),
            (None, Some(only)) => Some(globs(only, "query_only", true)?),
            (None, None) => None,
        };
        if let (Some(q), true) = (&query, mode == QueryMode::None && filter.is_some()) {
            return Err(at(
                q.span(),
                "query",
                &"query = \"none\" drops the whole query: query_ignore / query_only would do nothing",
            ));
        }
        let mut header_names = Vec::new();
        for h in headers.iter().flatten() {
            let name =
                http::HeaderName::from_bytes(h.get_ref().trim().as_bytes()).map_err(|_| {
                    at(
                        h.span(),
                        "headers",
                        &format_args!("{:?} is not a valid header name", h.get_ref()),
                    )
                })?;
            header_names.push(name);
        }
        let mut cookie_names = Vec::new();
        for c in cookies.iter().flatten() {
            let name = c.get_ref().trim();
            if !is_token(name) {
                return Err(at(
                    c.span(),
                    "cookies",
                    &format_args!("{name:?} is not a valid cookie name"),
                ));
            }
            cookie_names.push(name.to_string());
        }
        Ok(KeyOptions {
            query: mode,
            filter,
            headers: header_names,
            cookies: cookie_names,
        })
    }
}

/// Refuses a `content_type` entry the matcher can never match: it compares
/// the response's media type without its parameters (`type/subtype`, RFC
/// 9110 §8.3.1), lowercased, against the glob. So an entry with
/// parameters, an empty one, or a literal that is not `type/subtype` would
/// silently make the rule do nothing. Globs (`*`, `?`, `[...]`, `{a,b}`)
/// are left to the glob syntax: `"image/*"`, `"*/*"`, `"*"`,
/// `"application/*+json"` all match real types.
fn media_range(pattern: &str) -> Result<(), String> {
    let p = pattern.trim();
    if p.contains(';') {
        return Err(format!(
            "{pattern:?}: expected a media type without parameters, such as \"application/json\" (parameters are ignored when matching)"
        ));
    }
    if p.contains(['*', '?', '[', '{']) {
        return Ok(());
    }
    match p.split_once('/') {
        Some((ty, sub)) if is_token(ty) && is_token(sub) => Ok(()),
        _ => Err(format!(
            "{pattern:?}: expected a media type such as \"application/json\" or a glob such as \"image/*\""
        )),
    }
}

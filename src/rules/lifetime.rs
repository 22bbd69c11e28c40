//! What a rule may and may not do to an upstream response (SPEC §10, §7).
//!
//! A rule sets lifetimes; it never makes shareable what the origin (or the
//! request) made private. [`private`] is the gate no rule passes: the
//! origin's `no-store` or `private`, a `Set-Cookie` the origin did not mark
//! `public` / `s-maxage`, an `Authorization` request the origin did not
//! mark `public` / `s-maxage` / `must-revalidate` (RFC 9111 §3, §3.5).
//! Past the gate, a rule's `cache_control` and TTL keys apply only to the
//! statuses of [`rule_status`]; `status_ttl` names others explicitly
//! (negative caching). [`Lifetimes::adjust`] applies the TTL keys to the
//! [`Policy`] computed from the response.

use http::header::{self, HeaderMap};
use http::StatusCode;

use crate::cache::directives::CacheControl;
use crate::cache::freshness::{NotStorable, Policy};

/// Statuses a rule's `cache_control` and TTL keys apply to (SPEC §10):
/// successes and permanent redirects. Errors, 206 and temporary redirects
/// keep the origin's own Cache-Control unless `status_ttl` names them.
pub fn rule_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308)
}

/// Whether the origin's own `Cache-Control` (what the client and every
/// cache after Strata read) keeps the response `private` or `no-store`
/// while a targeted field (RFC 9213 `CDN-Cache-Control`,
/// `Strata-Cache-Control`) let Strata store it. A rule's `cache_control`
/// then sets Strata's lifetime only: the client gets the origin's
/// `Cache-Control` (SPEC §6), never the rule's `public, max-age=…`.
pub fn private_downstream(response: &HeaderMap) -> bool {
    response.contains_key(header::CACHE_CONTROL) && {
        let own = CacheControl::from_headers(response);
        own.private || own.no_store
    }
}

/// Why the response may not be shared, judged on the origin's own
/// directives `origin` and the request, before any rule: `Some` means
/// it is never stored and the client gets the origin's Cache-Control.
pub fn private(
    request: &HeaderMap,
    request_cc: &CacheControl,
    response: &HeaderMap,
    origin: &CacheControl,
) -> Option<NotStorable> {
    if origin.no_store || request_cc.no_store {
        return Some(NotStorable::NoStore);
    }
    if origin.private {
        return Some(NotStorable::Private);
    }
    // RFC 9111 §3.5.
    if request.contains_key(header::AUTHORIZATION)
        && !(origin.public || origin.must_revalidate || origin.s_maxage.is_some())
    {
        return Some(NotStorable::Authorization);
    }
    // Somebody's session: shared only when the origin says so itself.
    if crate::cache::freshness::sets_cookie(response)
        && !(origin.public || origin.s_maxage.is_some())
    {
        return Some(NotStorable::SetCookie);
    }
    None
}

/// Whether a rule may set the lifetime of a response to `request`: not
/// when the request carried `Authorization` and the origin let it be
/// shared only through `must-revalidate` (RFC 9111 §3.5), neither `public`
/// nor `s-maxage`. Then the origin's own lifetime and `must-revalidate`
/// stand, so the next client's credentials are checked once it is stale;
/// a rule's `public, max-age=31536000` served one user's authenticated
/// answer to anonymous clients for a year (security probe).
pub fn rule_may_apply(request: &HeaderMap, origin: &CacheControl) -> bool {
    !request.contains_key(header::AUTHORIZATION) || origin.public || origin.s_maxage.is_some()
}

/// `status_ttl`: lifetimes by exact status (`"404"`) or class (`"5xx"`);
/// an exact status beats its class. Seconds; 0 = never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusTtl {
    exact: Vec<(u16, u64)>,
    class: Vec<(u8, u64)>,
}

impl StatusTtl {
    /// Adds `pattern` (`"404"`, `"5xx"`; 100–599) with `secs`; the error
    /// says what was expected. A status about the request
    /// ([`crate::cache::freshness::about_the_request`]) with a lifetime is
    /// refused: it is never stored (a class such as `"4xx"` leaves it out).
    pub fn insert(&mut self, pattern: &str, secs: u64) -> Result<(), String> {
        let p = pattern.trim().to_ascii_lowercase();
        let bytes = p.as_bytes();
        let bad = || {
            format!("invalid status pattern {pattern:?}: expected a status such as \"404\" or a class such as \"5xx\"")
        };
        if bytes.len() != 3 || !(b'1'..=b'5').contains(&bytes[0]) {
            return Err(bad());
        }
        if &p[1..] == "xx" {
            let class = bytes[0] - b'0';
            if class == 1 && secs > 0 {
                return Err("1xx responses are interim, never stored (remove it)".to_string());
            }
            if self.class.iter().any(|(c, _)| *c == class) {
                return Err(format!("status pattern {pattern:?} given twice"));
            }
            self.class.push((class, secs));
        } else if bytes[1..].iter().all(u8::is_ascii_digit) {
            let code: u16 = p.parse().map_err(|_| bad())?;
            let about_request =
                StatusCode::from_u16(code).is_ok_and(crate::cache::freshness::about_the_request);
            if about_request && secs > 0 {
                return Err(format!(
                    "{code} is never stored: it answers one malformed or oversized request, not the resource, and stored it would answer everybody (remove it, or use \"0s\")"
                ));
            }
            // Interim answers; a part (ranges are served from whole
            // stored responses); a validation (merged into what is stored).
            if secs > 0 && (code < 200 || code == 206 || code == 304) {
                return Err(format!(
                    "{code} is never stored: ranges and 304s are answered from a stored whole response, and 1xx are interim (remove it)"
                ));
            }
            if self.exact.iter().any(|(c, _)| *c == code) {
                return Err(format!("status pattern {pattern:?} given twice"));
            }
            self.exact.push((code, secs));
        } else {
            return Err(bad());
        }
        Ok(())
    }

    /// The lifetime `status_ttl` gives `status`, if it names it.
    pub fn get(&self, status: StatusCode) -> Option<u64> {
        let code = status.as_u16();
        if let Some((_, s)) = self.exact.iter().find(|(c, _)| *c == code) {
            return Some(*s);
        }
        let class = (code / 100) as u8;
        self.class
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, s)| *s)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.class.is_empty()
    }
}

/// A rule's TTL keys, in seconds (SPEC §7). Absent keys change nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// The lifetime when the origin gives none.
    pub ttl: Option<u64>,
    pub min_ttl: Option<u64>,
    pub max_ttl: Option<u64>,
    pub status_ttl: StatusTtl,
    /// Added when the response sets none (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

/// How a rule's lifetime keys decide a response's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// No lifetime key speaks: the response's own headers decide.
    Origin,
    /// The rule provides a lifetime (`ttl` or `status_ttl`): storable even
    /// without explicit freshness or validators, for this many seconds
    /// when `Some`.
    Given(Option<u64>),
    /// `status_ttl` says `"0s"`: never stored.
    Never,
}

impl Lifetimes {
    /// What the keys say for a response with `status` whose final
    /// directives are `cc` (`explicit`: the response states a lifetime).
    pub fn decide(&self, status: StatusCode, explicit: bool) -> Lifetime {
        match self.status_ttl.get(status) {
            Some(0) => Lifetime::Never,
            Some(secs) => Lifetime::Given(Some(secs)),
            None if !rule_status(status) => Lifetime::Origin,
            None if !explicit && self.ttl.is_some() => Lifetime::Given(None),
            None => Lifetime::Origin,
        }
    }

    /// Applies the keys to `policy`, computed from the response with
    /// directives `cc`; `explicit` says whether the response stated a
    /// lifetime (max-age, s-maxage, Expires). `status_ttl` sets the
    /// lifetime outright; else `ttl` fills in a missing one and
    /// `min_ttl` / `max_ttl` clamp the result.
    pub fn adjust(
        &self,
        policy: &mut Policy,
        status: StatusCode,
        cc: &CacheControl,
        explicit: bool,
    ) {
        if let Some(secs) = self.status_ttl.get(status) {
            policy.lifetime = secs;
            // "Whatever the origin said": no-cache would make it useless.
            policy.no_cache = false;
        } else if rule_status(status) {
            if !explicit {
                if let Some(ttl) = self.ttl {
                    policy.lifetime = ttl;
                }
            }
            if let Some(min) = self.min_ttl {
                policy.lifetime = policy.lifetime.max(min);
            }
            if let Some(max) = self.max_ttl {
                policy.lifetime = policy.lifetime.min(max);
            }
        } else {
            return;
        }
        if cc.stale_while_revalidate.is_none() {
            if let Some(s) = self.stale_while_revalidate {
                policy.stale_while_revalidate = s;
            }
        }
        if cc.stale_if_error.is_none() {
            if let Some(s) = self.stale_if_error {
                policy.stale_if_error = s;
            }
        }
    }
}

/// Whether the response states its own lifetime (RFC 9111 §4.2.1).
pub fn explicit_lifetime(cc: &CacheControl, headers: &HeaderMap) -> bool {
    cc.s_maxage.is_some() || cc.max_age.is_some() || headers.contains_key(header::EXPIRES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn gate(
        req: &[(&'static str, &'static str)],
        resp: &[(&'static str, &'static str)],
    ) -> Option<NotStorable> {
        let (req, resp) = (h(req), h(resp));
        let cc = CacheControl::from_headers(&resp);
        private(&req, &CacheControl::from_headers(&req), &resp, &cc)
    }

    #[test]
    fn privacy_gate() {
        assert_eq!(
            gate(&[], &[("cache-control", "private")]),
            Some(NotStorable::Private)
        );
        assert_eq!(
            gate(&[], &[("cache-control", "no-store")]),
            Some(NotStorable::NoStore)
        );
        assert_eq!(
            gate(&[("cache-control", "no-store")], &[]),
            Some(NotStorable::NoStore)
        );
        assert_eq!(
            gate(&[], &[("set-cookie", "s=1")]),
            Some(NotStorable::SetCookie)
        );
        assert_eq!(
            gate(
                &[],
                &[("set-cookie", "s=1"), ("cache-control", "max-age=9")]
            ),
            Some(NotStorable::SetCookie)
        );
        assert_eq!(
            gate(&[], &[("set-cookie", "s=1"), ("cache-control", "public")]),
            None
        );
        assert_eq!(
            gate(
                &[],
                &[("set-cookie", "s=1"), ("cache-control", "s-maxage=9")]
            ),
            None
        );
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            gate(&auth, &[("cache-control", "max-age=60")]),
            Some(NotStorable::Authorization)
        );
        for ok in ["public", "s-maxage=5", "must-revalidate, max-age=5"] {
            let resp = [("cache-control", ok)];
            assert_eq!(gate(&auth, &resp), None, "{ok}");
        }
        assert_eq!(gate(&[], &[("cache-control", "max-age=60")]), None);
    }

    #[test]
    fn status_patterns() {
        let mut s = StatusTtl::default();
        s.insert("404", 10).unwrap();
        s.insert("4XX", 5).unwrap();
        s.insert("5xx", 0).unwrap();
        assert_eq!(s.get(StatusCode::NOT_FOUND), Some(10));
        assert_eq!(s.get(StatusCode::GONE), Some(5));
        assert_eq!(s.get(StatusCode::BAD_GATEWAY), Some(0));
        assert_eq!(s.get(StatusCode::OK), None);
        for bad in ["", "40", "4040", "6xx", "0xx", "x04", "4x4", "abc", "099"] {
            assert!(StatusTtl::default().insert(bad, 1).is_err(), "{bad}");
        }
        assert!(s.insert("404", 1).is_err(), "duplicate");
        // Never stored, so a lifetime for them would silently do nothing
        // (config probe); "0s" says so and is accepted.
        for never in ["206", "304", "101", "1xx"] {
            let e = StatusTtl::default().insert(never, 60).unwrap_err();
            assert!(e.contains("never stored"), "{never}: {e}");
            assert!(StatusTtl::default().insert(never, 0).is_ok(), "{never}");
        }
    }

    fn pol(lifetime: u64) -> Policy {
        Policy {
            lifetime,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            must_revalidate: false,
            no_cache: false,
            grace: 0,
        }
    }

    #[test]
    fn lifetimes() {
        let mut status_ttl = StatusTtl::default();
        status_ttl.insert("404", 10).unwrap();
        status_ttl.insert("5xx", 0).unwrap();
        let l = Lifetimes {
            ttl: Some(30),
            min_ttl: Some(5),
            max_ttl: Some(100),
            status_ttl,
            stale_while_revalidate: Some(7),
            stale_if_error: None,
        };
        let cc = CacheControl::default();
        assert_eq!(l.decide(StatusCode::OK, false), Lifetime::Given(None));
        assert_eq!(l.decide(StatusCode::OK, true), Lifetime::Origin);
        assert_eq!(
            l.decide(StatusCode::NOT_FOUND, true),
            Lifetime::Given(Some(10))
        );
        assert_eq!(
            l.decide(StatusCode::INTERNAL_SERVER_ERROR, true),
            Lifetime::Never
        );
        assert_eq!(l.decide(StatusCode::FORBIDDEN, false), Lifetime::Origin);
        let adjusted = |status, lifetime, explicit| {
            let mut p = pol(lifetime);
            l.adjust(&mut p, status, &cc, explicit);
            p
        };
        assert_eq!(
            adjusted(StatusCode::OK, 0, false).lifetime,
            30,
            "ttl fills in"
        );
        assert_eq!(adjusted(StatusCode::OK, 1, true).lifetime, 5, "min clamp");
        assert_eq!(
            adjusted(StatusCode::OK, 1000, true).lifetime,
            100,
            "max clamp"
        );
        assert_eq!(adjusted(StatusCode::OK, 50, true).stale_while_revalidate, 7);
        assert_eq!(
            adjusted(StatusCode::NOT_FOUND, 1000, true).lifetime,
            10,
            "status_ttl beats the rest"
        );
        assert_eq!(
            adjusted(StatusCode::FORBIDDEN, 1000, true),
            pol(1000),
            "other statuses untouched"
        );
        let mut p = pol(50);
        let own = CacheControl {
            stale_while_revalidate: Some(1),
            ..CacheControl::default()
        };
        l.adjust(&mut p, StatusCode::OK, &own, true);
        assert_eq!(
            p.stale_while_revalidate, 0,
            "the response's own swr stands (policy keeps its value)"
        );
    }
}

//! Freshness, storability and reuse as a *shared* cache (RFC 9111 §3, §4,
//! RFC 5861). Pure functions: time is passed in (unix milliseconds), so
//! everything here is unit-tested with injected clocks.

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

use super::directives::CacheControl;

/// Wall-clock time in unix milliseconds (shared with other instances via
/// Redis, so not a monotonic `Instant`).
pub type Millis = u64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Heuristic freshness settings (RFC 9111 §4.2.2).
#[derive(Debug, Clone, Copy)]
pub struct Heuristic {
    pub fraction: f64,
    pub max_secs: u64,
}

/// Why a response is not stored. `as_str` goes to logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    /// No explicit freshness, not heuristically cacheable, and no
    /// validators: storing it could never answer a request.
    NoFreshness,
    TooLarge,
}

impl NotStorable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshness => "no-freshness",
            NotStorable::TooLarge => "too-large",
        }
    }
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn has_explicit_freshness(cc: &CacheControl, headers: &HeaderMap) -> bool {
    cc.s_maxage.is_some() || cc.max_age.is_some() || headers.contains_key(header::EXPIRES)
}

pub fn has_validators(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// RFC 9111 §3 for a shared cache: may this response be stored?
/// `cc` is the response's Cache-Control after any rule override.
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    request_cc: &CacheControl,
    status: StatusCode,
    response: &HeaderMap,
    cc: &CacheControl,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    // Final statuses only; partial content is served from full objects,
    // never stored itself; 304 is handled as a validation.
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStorable::Status);
    }
    if cc.no_store || request_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    // must-understand: we understand every status we store.
    if request.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some())
    {
        return Err(NotStorable::Authorization);
    }
    // A Set-Cookie response is somebody's session: shared only when the
    // origin says so explicitly (as nginx and Varnish do by default).
    if response.contains_key(header::SET_COOKIE) && !(cc.public || cc.s_maxage.is_some()) {
        return Err(NotStorable::SetCookie);
    }
    if response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*")
    {
        return Err(NotStorable::VaryStar);
    }
    let explicit = has_explicit_freshness(cc, response) || cc.public;
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStorable::Status);
    }
    if !has_explicit_freshness(cc, response)
        && !has_validators(response)
        && !response.contains_key(header::LAST_MODIFIED)
    {
        // Heuristically cacheable but with nothing to compute a lifetime
        // from and nothing to validate with.
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

/// How a stored response may be used, computed once at store time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Freshness lifetime in seconds (RFC 9111 §4.2.1).
    pub lifetime: u64,
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    /// must-revalidate, proxy-revalidate or s-maxage: never served stale.
    pub must_revalidate: bool,
    /// Response no-cache: validated before every reuse.
    pub no_cache: bool,
}

/// When the response was received and how old it already was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub request: Millis,
    pub response: Millis,
    /// corrected_initial_age, seconds (RFC 9111 §4.2.3).
    pub initial_age: u64,
}

fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<Millis> {
    let v = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

pub fn policy(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    response_time: Millis,
    h: Heuristic,
) -> Policy {
    let date = http_date(headers, header::DATE).unwrap_or(response_time);
    let lifetime = if let Some(s) = cc.s_maxage {
        s
    } else if let Some(m) = cc.max_age {
        m
    } else if headers.contains_key(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired (§5.3).
        match http_date(headers, header::EXPIRES) {
            Some(exp) => exp.saturating_sub(date) / 1000,
            None => 0,
        }
    } else if heuristically_cacheable(status) || cc.public {
        match http_date(headers, header::LAST_MODIFIED) {
            Some(lm) if lm < date => {
                let secs = ((date - lm) as f64 / 1000.0 * h.fraction) as u64;
                secs.min(h.max_secs)
            }
            _ => 0,
        }
    } else {
        0
    };
    Policy {
        lifetime,
        stale_while_revalidate: cc.stale_while_revalidate.unwrap_or(0),
        stale_if_error: cc.stale_if_error.unwrap_or(0),
        must_revalidate: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
        no_cache: cc.no_cache,
    }
}

/// RFC 9111 §4.2.3 age bookkeeping at receipt.
pub fn times(headers: &HeaderMap, request_time: Millis, response_time: Millis) -> Times {
    let date = http_date(headers, header::DATE).unwrap_or(response_time);
    let apparent_age = response_time.saturating_sub(date) / 1000;
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let response_delay = response_time.saturating_sub(request_time) / 1000;
    let corrected_age_value = age_value.saturating_add(response_delay);
    Times {
        request: request_time,
        response: response_time,
        initial_age: apparent_age.max(corrected_age_value),
    }
}

/// current_age in seconds at `now`.
pub fn current_age(t: &Times, now: Millis) -> u64 {
    t.initial_age + now.saturating_sub(t.response) / 1000
}

/// What the cache may do with a stored response for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh and acceptable: serve it.
    Fresh { ttl: i64 },
    /// Stale inside stale-while-revalidate: serve it and refresh in the
    /// background.
    StaleWhileRevalidate { ttl: i64 },
    /// Stale, but the client accepts it (max-stale).
    StaleAccepted { ttl: i64 },
    /// Must be validated with the upstream first. If that fails, it may be
    /// served stale when `on_error` allows (stale-if-error).
    Validate { ttl: i64, on_error: bool },
}

/// RFC 9111 §4.2 and §5.2.1 plus RFC 5861.
pub fn reuse(p: &Policy, t: &Times, now: Millis, req: &CacheControl) -> Reuse {
    let age = current_age(t, now);
    let ttl = p.lifetime as i64 - age as i64;
    let staleness = (-ttl).max(0) as u64;
    let stale_if_error = |staleness: u64| {
        !p.must_revalidate
            && (staleness <= p.stale_if_error || req.stale_if_error.is_some_and(|s| staleness <= s))
    };
    if req.no_cache || p.no_cache {
        return Reuse::Validate {
            ttl,
            on_error: ttl > 0 || stale_if_error(staleness),
        };
    }
    let fresh = ttl > 0;
    if fresh {
        // Milliseconds, so that max-age=0 means "revalidate" even within
        // the first second of an entry's life.
        let age_ms = t.initial_age * 1000 + now.saturating_sub(t.response);
        let too_old = req.max_age.is_some_and(|m| m == 0 || age_ms > m * 1000);
        let not_fresh_enough = req.min_fresh.is_some_and(|m| (ttl as u64) < m);
        if too_old || not_fresh_enough {
            return Reuse::Validate {
                ttl,
                on_error: true,
            };
        }
        return Reuse::Fresh { ttl };
    }
    if p.must_revalidate {
        return Reuse::Validate {
            ttl,
            on_error: false,
        };
    }
    if req.max_stale.is_some_and(|m| staleness <= m) && req.max_age.is_none_or(|m| age <= m) {
        return Reuse::StaleAccepted { ttl };
    }
    if staleness <= p.stale_while_revalidate && req.max_age.is_none() {
        return Reuse::StaleWhileRevalidate { ttl };
    }
    Reuse::Validate {
        ttl,
        on_error: stale_if_error(staleness),
    }
}

/// How long a tier should keep the entry: its lifetime, its stale windows,
/// and, when it can be revalidated, an hour more for conditional requests.
pub fn keep_secs(p: &Policy, validators: bool) -> u64 {
    let windows = p.stale_while_revalidate.max(p.stale_if_error);
    let extra = if validators { 3600 } else { 0 };
    p.lifetime
        .saturating_sub(0)
        .saturating_add(windows)
        .saturating_add(extra)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const H: Heuristic = Heuristic {
        fraction: 0.1,
        max_secs: 86_400,
    };
    const T0: Millis = 1_700_000_000_000;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn date(ms: Millis) -> String {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
    }

    fn pol(h: &HeaderMap) -> Policy {
        policy(StatusCode::OK, h, &CacheControl::from_headers(h), T0, H)
    }

    fn st(status: u16, req: &[(&str, &str)], resp: &[(&str, &str)]) -> Result<(), NotStorable> {
        let (rq, rs) = (headers(req), headers(resp));
        storable(
            &Method::GET,
            &rq,
            &CacheControl::from_headers(&rq),
            StatusCode::from_u16(status).unwrap(),
            &rs,
            &CacheControl::from_headers(&rs),
        )
    }

    #[test]
    fn lifetime_precedence() {
        let d = date(T0);
        assert_eq!(
            pol(&headers(&[("cache-control", "max-age=60, s-maxage=10")])).lifetime,
            10
        );
        assert_eq!(
            pol(&headers(&[("cache-control", "max-age=60")])).lifetime,
            60
        );
        let exp = date(T0 + 120_000);
        let h = headers(&[("date", &d), ("expires", &exp)]);
        assert_eq!(pol(&h).lifetime, 120);
        assert_eq!(pol(&headers(&[("expires", "0")])).lifetime, 0);
        // Heuristic: 10% of (Date - Last-Modified).
        let lm = date(T0 - 10_000_000);
        let h = headers(&[("date", &d), ("last-modified", &lm)]);
        assert_eq!(pol(&h).lifetime, 1000);
        assert!(pol(&headers(&[("cache-control", "s-maxage=1")])).must_revalidate);
    }

    #[test]
    fn storability_as_shared_cache() {
        assert_eq!(st(200, &[], &[("cache-control", "max-age=60")]), Ok(()));
        assert_eq!(
            st(200, &[], &[("cache-control", "no-store, max-age=60")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            st(200, &[], &[("cache-control", "private, max-age=60")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            st(
                200,
                &[("authorization", "x")],
                &[("cache-control", "max-age=60")]
            ),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            st(
                200,
                &[("authorization", "x")],
                &[("cache-control", "public, max-age=60")]
            ),
            Ok(())
        );
        assert_eq!(
            st(
                200,
                &[("authorization", "x")],
                &[("cache-control", "s-maxage=60")]
            ),
            Ok(())
        );
        assert_eq!(
            st(
                200,
                &[],
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            st(200, &[], &[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(st(500, &[], &[]), Err(NotStorable::Status));
        assert_eq!(st(500, &[], &[("cache-control", "max-age=5")]), Ok(()));
        assert_eq!(st(200, &[], &[]), Err(NotStorable::NoFreshness));
        assert_eq!(st(200, &[], &[("etag", "\"a\"")]), Ok(()));
        assert_eq!(
            st(206, &[], &[("cache-control", "max-age=5")]),
            Err(NotStorable::Status)
        );
        assert_eq!(
            st(
                200,
                &[("cache-control", "no-store")],
                &[("cache-control", "max-age=5")]
            ),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn age_calculation() {
        // Origin says Age: 10; the response took 2 s to arrive.
        let h = headers(&[("age", "10"), ("date", &date(T0))]);
        let t = times(&h, T0 - 2000, T0);
        assert_eq!(t.initial_age, 12);
        assert_eq!(current_age(&t, T0 + 5000), 17);
        // A Date in the past gives an apparent age.
        let h = headers(&[("date", &date(T0 - 30_000))]);
        assert_eq!(times(&h, T0, T0).initial_age, 30);
    }

    fn policy_of(cc: &str) -> Policy {
        let h = headers(&[("cache-control", cc)]);
        pol(&h)
    }

    fn req(cc: &str) -> CacheControl {
        CacheControl::from_value(&HeaderValue::from_str(cc).unwrap())
    }

    #[test]
    fn reuse_decisions() {
        let t = times(&HeaderMap::new(), T0, T0);
        let none = CacheControl::default();
        let p = policy_of("max-age=60");
        assert_eq!(reuse(&p, &t, T0 + 10_000, &none), Reuse::Fresh { ttl: 50 });
        assert!(matches!(
            reuse(&p, &t, T0 + 70_000, &none),
            Reuse::Validate {
                on_error: false,
                ..
            }
        ));
        assert!(matches!(
            reuse(&p, &t, T0 + 10_000, &req("max-age=5")),
            Reuse::Validate { .. }
        ));
        assert!(matches!(
            reuse(&p, &t, T0 + 10_000, &req("min-fresh=55")),
            Reuse::Validate { .. }
        ));
        assert!(matches!(
            reuse(&p, &t, T0 + 10_000, &req("no-cache")),
            Reuse::Validate { .. }
        ));
        assert_eq!(
            reuse(&p, &t, T0 + 70_000, &req("max-stale=20")),
            Reuse::StaleAccepted { ttl: -10 }
        );
        assert!(matches!(
            reuse(&p, &t, T0 + 70_000, &req("max-stale=5")),
            Reuse::Validate { .. }
        ));

        let p = policy_of("max-age=60, stale-while-revalidate=30, stale-if-error=600");
        assert_eq!(
            reuse(&p, &t, T0 + 80_000, &none),
            Reuse::StaleWhileRevalidate { ttl: -20 }
        );
        assert_eq!(
            reuse(&p, &t, T0 + 100_000, &none),
            Reuse::Validate {
                ttl: -40,
                on_error: true
            }
        );
        assert_eq!(
            reuse(&p, &t, T0 + 700_000, &none),
            Reuse::Validate {
                ttl: -640,
                on_error: false
            }
        );

        let p = policy_of("max-age=60, must-revalidate, stale-while-revalidate=30");
        assert!(matches!(
            reuse(&p, &t, T0 + 70_000, &req("max-stale")),
            Reuse::Validate {
                on_error: false,
                ..
            }
        ));
        let p = policy_of("max-age=60, no-cache");
        assert!(matches!(
            reuse(&p, &t, T0 + 1000, &none),
            Reuse::Validate { on_error: true, .. }
        ));
    }
}

//! Freshness, storability and reuse as a *shared* cache (RFC 9111 §3, §4,
//! RFC 5861). Pure functions: time is passed in (unix milliseconds), so
//! everything here is unit-tested with injected clocks.

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

use super::directives::CacheControl;
use super::vary::varies_on_everything;

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
    /// The bodies being collected for admission fill their budget
    /// (`Cache::collecting`) at this moment: storable, but not stored now.
    Busy,
    /// A status about the request, not the resource
    /// ([`about_the_request`]): that request's alone, it neither marks
    /// the URL uncacheable nor replaces what is stored.
    RequestError,
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
            NotStorable::Busy => "busy",
            NotStorable::RequestError => "request-error",
        }
    }
}

/// Statuses that describe the request rather than the resource: `400`,
/// `408`, `411`, `413`, `414`, `417` (RFC 9110 §15.5), and `428`, `429`,
/// `431`, `511`, which RFC 6585 §3–§6 says a cache MUST NOT store. Never
/// stored, whatever the origin or a rule says: one client's malformed or
/// oversized request (a header the origin refuses, a query parameter the
/// key ignores), its rate limit, or a captive portal's login page would
/// otherwise answer everybody's (cache-poisoned denial of service, Nguyen
/// et al., CCS 2019).
pub fn about_the_request(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        400 | 408 | 411 | 413 | 414 | 417 | 428 | 429 | 431 | 511
    )
}

/// Statuses never stored whatever a rule says: informational, `206`
/// (served from full objects), `304` (a validation),
/// [`about_the_request`], and the invalid `600`–`999` (RFC 9110 §15: a
/// recipient treats them as a `5xx`, whose meaning no cache can know).
pub fn never_stored(status: StatusCode) -> bool {
    status.as_u16() >= 600
        || status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || about_the_request(status)
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose caching requirements Strata implements, for
/// `must-understand` (RFC 9111 §5.2.2.3): the final codes RFC 9110 §15
/// defines, plus 429 (RFC 6585) and 451 (RFC 7725). Nothing in them asks a
/// cache for more than RFC 9111 itself; an unregistered code (`299`, say)
/// might.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 429 | 451 | 500..=505
    )
}

fn has_explicit_freshness(cc: &CacheControl, headers: &HeaderMap) -> bool {
    cc.s_maxage.is_some() || cc.max_age.is_some() || headers.contains_key(header::EXPIRES)
}

/// `Set-Cookie2` (RFC 2965, obsoleted by RFC 6265 §9.3 but still sent by
/// old application servers): a client's state like `Set-Cookie`, so
/// treated alike wherever a shared copy must not carry one.
pub static SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

/// Whether a response sets some client's state: `Set-Cookie` or the
/// obsolete `Set-Cookie2`. Such a response is shared only when the origin
/// says so, and its cookies never enter the stored copy.
pub fn sets_cookie(response: &HeaderMap) -> bool {
    response.contains_key(header::SET_COOKIE) || response.contains_key(&SET_COOKIE2)
}

/// Whether `headers` carry a validator (RFC 9110 §8.8): an `ETag`, or a
/// `Last-Modified` that is one valid HTTP-date (an invalid one can neither
/// be sent as `If-Modified-Since` nor give a heuristic lifetime).
pub fn has_validators(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || last_modified_is_valid(headers)
}

/// Whether `Last-Modified` is one valid HTTP-date (RFC 9110 §8.8.2).
pub fn last_modified_is_valid(headers: &HeaderMap) -> bool {
    http_date(headers, header::LAST_MODIFIED).is_some()
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
    if about_the_request(status) {
        return Err(NotStorable::RequestError);
    }
    // Final statuses only; partial content is served from full objects,
    // never stored itself; 304 is handled as a validation; an answer
    // about the request is that request's alone.
    if never_stored(status) {
        return Err(NotStorable::Status);
    }
    if cc.no_store || request_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    // RFC 9111 §3, §5.2.2.3: with must-understand, only a status whose
    // caching requirements Strata knows. Its SHOULD (then ignore no-store)
    // is not followed: SPEC §10 never stores what the origin marked
    // no-store, and the check above has already refused it.
    if cc.must_understand && !understood(status) {
        return Err(NotStorable::Status);
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some())
    {
        return Err(NotStorable::Authorization);
    }
    // A Set-Cookie response is somebody's session: shared only when the
    // origin says so explicitly (as nginx and Varnish do by default).
    if sets_cookie(response) && !(cc.public || cc.s_maxage.is_some()) {
        return Err(NotStorable::SetCookie);
    }
    if varies_on_everything(response) {
        return Err(NotStorable::VaryStar);
    }
    let explicit = has_explicit_freshness(cc, response) || cc.public;
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStorable::Status);
    }
    if !has_explicit_freshness(cc, response) && !has_validators(response) {
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
    /// RFC 5861 windows in seconds; 0 = absent (no stale use at all).
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    /// must-revalidate, proxy-revalidate or s-maxage: never served stale.
    pub must_revalidate: bool,
    /// Response no-cache: validated before every reuse.
    pub no_cache: bool,
    /// Seconds past the lifetime the entry may stand in for a failed or
    /// 5xx upstream (`[cache] grace`, RFC 9111 §4.2.4 "disconnected");
    /// 0 when the response forbids serving it stale.
    pub grace: u64,
}

/// When the response was received and how old it already was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub request: Millis,
    pub response: Millis,
    /// corrected_initial_age (RFC 9111 §4.2.3), in milliseconds.
    pub initial_age_ms: u64,
}

/// The value of `name` as an HTTP-date (RFC 9110 §5.6.7), in unix
/// milliseconds. Only the three formats the RFC allows parse (httpdate is
/// exact about field widths: extra spaces, dashes in an IMF-fixdate, periods
/// in the time or a one-digit hour are rejected); more than one field line
/// is invalid too.
pub(crate) fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<Millis> {
    let mut values = headers.get_all(name).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let t = super::http_date::parse(v.to_str().ok()?)?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// RFC 9111 §4.2.1 and §4.2.2: the freshness lifetime and the stale
/// windows. `grace` is the configured grace in seconds; it is kept only
/// when the response allows stale use at all (not must-revalidate,
/// proxy-revalidate, s-maxage or no-cache).
pub fn policy(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    response_time: Millis,
    h: Heuristic,
    grace: u64,
) -> Policy {
    let date = http_date(headers, header::DATE).unwrap_or(response_time);
    let lifetime = if let Some(s) = cc.s_maxage {
        s
    } else if let Some(m) = cc.max_age {
        m
    } else if headers.contains_key(header::EXPIRES) {
        // An invalid Expires (e.g. "0", or two of them) means already
        // expired (§5.3); one at or before Date gives lifetime 0.
        match http_date(headers, header::EXPIRES) {
            // Capped as a delta-seconds is (RFC 9111 §1.2.2): `Expires`
            // in year 9999 was a lifetime of 251,605,969,136 s.
            Some(exp) => (exp.saturating_sub(date) / 1000).min(crate::cache::directives::DELTA_MAX),
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
    let must_revalidate = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    Policy {
        lifetime,
        stale_while_revalidate: cc.stale_while_revalidate.unwrap_or(0),
        stale_if_error: cc.stale_if_error.unwrap_or(0),
        must_revalidate,
        no_cache: cc.no_cache,
        grace: if must_revalidate || cc.no_cache {
            0
        } else {
            grace
        },
    }
}

/// The `Age` field's value in seconds (RFC 9111 §5.1): of a list (on one
/// line or several) the first member counts; a non-numeric, negative or
/// fractional first member is ignored (0); values beyond 2^31 are capped.
pub fn age_value(headers: &HeaderMap) -> u64 {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| super::directives::strict_delta(v.trim()))
        .unwrap_or(0)
}

/// RFC 9111 §4.2.3 age bookkeeping at receipt, in milliseconds.
///
/// Exact to the millisecond and never rounded in the entry's favour (SPEC
/// §6): the apparent age is `response_time - Date` with `Date` read as the
/// start of its second, so a response dated `12:00:00` and received at
/// `12:00:00.891` is 891 ms old, the most its one-second resolution allows.
/// The time the response took to arrive counts to the millisecond too.
pub fn times(headers: &HeaderMap, request_time: Millis, response_time: Millis) -> Times {
    let date = http_date(headers, header::DATE).unwrap_or(response_time);
    let apparent_age = response_time.saturating_sub(date);
    let response_delay = response_time.saturating_sub(request_time);
    let corrected_age_value = age_value(headers)
        .saturating_mul(1000)
        .saturating_add(response_delay);
    Times {
        request: request_time,
        response: response_time,
        initial_age_ms: apparent_age.max(corrected_age_value),
    }
}

/// current_age at `now`, in milliseconds (RFC 9111 §4.2.3).
pub fn current_age_ms(t: &Times, now: Millis) -> u64 {
    t.initial_age_ms
        .saturating_add(now.saturating_sub(t.response))
}

/// current_age at `now` in whole seconds, as the `Age` field sends it.
pub fn current_age(t: &Times, now: Millis) -> u64 {
    current_age_ms(t, now) / 1000
}

/// Remaining freshness in milliseconds at `now` (≤ 0: stale).
pub fn remaining_ms(p: &Policy, t: &Times, now: Millis) -> i64 {
    let lifetime = p.lifetime.saturating_mul(1000).min(i64::MAX as u64) as i64;
    let age = current_age_ms(t, now).min(i64::MAX as u64) as i64;
    lifetime.saturating_sub(age)
}

/// Remaining freshness in seconds for `Cache-Status: ttl` (RFC 9211 §2.6:
/// negative when stale), rounded away from zero: up while fresh, so that
/// `ttl > 0` exactly when the entry is fresh, and down once stale, so that
/// a copy 300 ms past its lifetime shows `-1`, not `0`.
pub fn ttl(p: &Policy, t: &Times, now: Millis) -> i64 {
    ttl_secs(remaining_ms(p, t, now))
}

fn ttl_secs(remaining_ms: i64) -> i64 {
    if remaining_ms > 0 {
        remaining_ms.saturating_add(999) / 1000
    } else {
        remaining_ms.div_euclid(1000)
    }
}

/// Why a stale (or unvalidated) response may stand in for a failed
/// validation: the upstream could not be reached, timed out, dropped the
/// connection or answered 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// RFC 5861 `stale-if-error` (the response's or the request's).
    StaleIfError,
    /// `[cache] grace`.
    Grace,
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
    /// served as `on_error` says (`None`: the failure is the answer).
    /// `requested`: the entry is fresh and only the request's directives
    /// (`no-cache`, `max-age`, `min-fresh`) refused it — RFC 9211 §2.2's
    /// `fwd=request` rather than `fwd=stale`.
    Validate {
        ttl: i64,
        on_error: Option<Fallback>,
        requested: bool,
    },
}

/// RFC 9111 §4.2 and §5.2.1 plus RFC 5861 and grace, to the millisecond:
/// an entry whose current age has reached its lifetime is stale.
pub fn reuse(p: &Policy, t: &Times, now: Millis, req: &CacheControl) -> Reuse {
    let age = current_age_ms(t, now);
    let remaining = remaining_ms(p, t, now);
    let ttl = ttl_secs(remaining);
    // Milliseconds past the lifetime (0 exactly at it, which is stale).
    let staleness = remaining.min(0).unsigned_abs();
    // A window of 0 seconds (or an absent directive) allows no staleness.
    let within = |window: u64| window > 0 && staleness <= window.saturating_mul(1000);
    let fallback = || {
        if p.must_revalidate {
            None
        } else if within(p.stale_if_error) || req.stale_if_error.is_some_and(within) {
            Some(Fallback::StaleIfError)
        } else if within(p.grace) {
            Some(Fallback::Grace)
        } else {
            None
        }
    };
    let fresh = remaining > 0;
    if p.no_cache {
        // RFC 9111 §5.2.2.4 and §4.2.4: without a successful validation the
        // response is never used, not even under `stale-if-error`.
        return Reuse::Validate {
            ttl,
            on_error: None,
            requested: false,
        };
    }
    if req.no_cache {
        // Fresh, but the client wants it validated: on an upstream failure
        // the fresh copy still answers.
        let on_error = if fresh {
            Some(Fallback::StaleIfError)
        } else {
            fallback()
        };
        return Reuse::Validate {
            ttl,
            on_error,
            requested: fresh,
        };
    }
    if fresh {
        let too_old = req
            .max_age
            .is_some_and(|m| m == 0 || age > m.saturating_mul(1000));
        let not_fresh_enough = req
            .min_fresh
            .is_some_and(|m| (remaining as u64) < m.saturating_mul(1000));
        if too_old || not_fresh_enough {
            return Reuse::Validate {
                ttl,
                on_error: Some(Fallback::StaleIfError),
                requested: true,
            };
        }
        return Reuse::Fresh { ttl };
    }
    if p.must_revalidate {
        return Reuse::Validate {
            ttl,
            on_error: None,
            requested: false,
        };
    }
    if req
        .max_stale
        .is_some_and(|m| staleness <= m.saturating_mul(1000))
        && req.max_age.is_none_or(|m| age <= m.saturating_mul(1000))
    {
        return Reuse::StaleAccepted { ttl };
    }
    // The origin's permission to serve stale, unless the client limits it:
    // `max-age`, `min-fresh` (a stale copy is not fresh for any time to
    // come) or a `max-stale` this staleness exceeds (RFC 9111 §5.2.1).
    if within(p.stale_while_revalidate)
        && req.max_age.is_none()
        && req.min_fresh.is_none()
        && req.max_stale.is_none()
    {
        return Reuse::StaleWhileRevalidate { ttl };
    }
    Reuse::Validate {
        ttl,
        on_error: fallback(),
        requested: false,
    }
}

/// How long a tier should keep the entry: its lifetime, its stale windows
/// (and grace), and, when it can be revalidated, an hour more for
/// conditional requests.
pub fn keep_secs(p: &Policy, validators: bool) -> u64 {
    let windows = p.stale_while_revalidate.max(p.stale_if_error).max(p.grace);
    let extra = if validators { 3600 } else { 0 };
    p.lifetime
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
        policy(StatusCode::OK, h, &CacheControl::from_headers(h), T0, H, 10)
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

    /// http-cache-tests' origin answered `999` with `max-age`: it was
    /// stored and served as a hit.
    #[test]
    fn invalid_statuses_are_never_stored() {
        for status in [600, 999] {
            assert!(
                never_stored(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
            let cc = [("cache-control", "public, max-age=3600")];
            assert_eq!(st(status, &[], &cc), Err(NotStorable::Status), "{status}");
        }
        assert!(!never_stored(StatusCode::from_u16(599).unwrap()));
    }

    #[test]
    fn must_understand_stores_only_understood_statuses() {
        let cc = [("cache-control", "max-age=100, must-understand")];
        assert_eq!(st(299, &[], &cc), Err(NotStorable::Status));
        assert_eq!(st(418, &[], &cc), Err(NotStorable::Status));
        assert_eq!(st(299, &[], &[("cache-control", "max-age=100")]), Ok(()));
        for status in [200, 301, 404, 410, 503, 500] {
            assert_eq!(st(status, &[], &cc), Ok(()), "{status}");
        }
        // SPEC §10 over RFC 9111's SHOULD: no-store still wins.
        assert_eq!(
            st(
                200,
                &[],
                &[("cache-control", "max-age=100, must-understand, no-store")]
            ),
            Err(NotStorable::NoStore)
        );
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
        assert_eq!(t.initial_age_ms, 12_000);
        assert_eq!(current_age(&t, T0 + 5000), 17);
        // A Date in the past gives an apparent age.
        let h = headers(&[("date", &date(T0 - 30_000))]);
        assert_eq!(times(&h, T0, T0).initial_age_ms, 30_000);
        // `Date` is read as the start of its second, never in the entry's
        // favour (SPEC §6): received 891 ms into that second, 891 ms old.
        let second = T0 / 1000 * 1000;
        let h = headers(&[("date", &date(second)), ("cache-control", "max-age=1")]);
        let t = times(&h, second + 891, second + 891);
        assert_eq!(t.initial_age_ms, 891);
        assert!(remaining_ms(&pol(&h), &t, second + 1000) <= 0);
        // Sub-second: the delay and the time since receipt count in ms.
        let t = times(&HeaderMap::new(), T0 - 250, T0);
        assert_eq!(current_age_ms(&t, T0 + 300), 550);
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
        // 15 s stale: beyond the 10 s grace.
        assert!(matches!(
            reuse(&p, &t, T0 + 75_000, &none),
            Reuse::Validate { on_error: None, .. }
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
        // The client's limits hold inside the window too.
        for limit in ["min-fresh=5", "min-fresh=0", "max-stale=0", "max-stale=10"] {
            assert!(
                matches!(
                    reuse(&p, &t, T0 + 80_000, &req(limit)),
                    Reuse::Validate { .. }
                ),
                "{limit}"
            );
        }
        assert_eq!(
            reuse(&p, &t, T0 + 80_000, &req("max-stale=30")),
            Reuse::StaleAccepted { ttl: -20 }
        );
        assert_eq!(
            reuse(&p, &t, T0 + 100_000, &none),
            Reuse::Validate {
                ttl: -40,
                on_error: Some(Fallback::StaleIfError),
                requested: false,
            }
        );
        assert_eq!(
            reuse(&p, &t, T0 + 700_000, &none),
            Reuse::Validate {
                ttl: -640,
                on_error: None,
                requested: false,
            }
        );

        let p = policy_of("max-age=60, must-revalidate, stale-while-revalidate=30");
        assert!(matches!(
            reuse(&p, &t, T0 + 70_000, &req("max-stale")),
            Reuse::Validate { on_error: None, .. }
        ));
        // Response no-cache: never reused unvalidated, not even on error,
        // and not under stale-if-error either (as must-revalidate; see
        // grace_and_its_limits).
        let p = policy_of("max-age=60, no-cache");
        assert!(matches!(
            reuse(&p, &t, T0 + 1000, &none),
            Reuse::Validate { on_error: None, .. }
        ));
    }

    /// A fresh hit for `cc` asked `at_ms` after receipt?
    fn fresh_at(resp: &[(&str, &str)], at_ms: u64) -> bool {
        let h = headers(resp);
        let p = pol(&h);
        let t = times(&h, T0, T0);
        matches!(
            reuse(&p, &t, T0 + at_ms, &CacheControl::default()),
            Reuse::Fresh { .. }
        )
    }

    #[test]
    fn freshness_is_exact_to_the_millisecond() {
        let d = date(T0);
        // max-age=0 (with validators or not) is stale at once, and there
        // is no stale-while-revalidate without the directive.
        assert!(!fresh_at(
            &[("cache-control", "max-age=0"), ("etag", "\"a\"")],
            0
        ));
        assert!(!fresh_at(&[("cache-control", "max-age=0")], 200));
        assert!(!fresh_at(
            &[
                ("cache-control", "public, max-age=0"),
                ("last-modified", &date(T0 - 86_400_000))
            ],
            200
        ));
        assert!(!fresh_at(&[("cache-control", "max-age=-1")], 0));
        assert!(!fresh_at(&[("expires", "0"), ("date", &d)], 0));
        assert!(!fresh_at(&[("expires", &d), ("date", &d)], 0));
        assert!(!fresh_at(&[("expires", &date(T0 - 5000)), ("date", &d)], 0));
        // max-age=2: fresh at 1.999 s, stale at 2.0 s and 2.3 s.
        let two = [("cache-control", "max-age=2")];
        assert!(fresh_at(&two, 1999));
        assert!(!fresh_at(&two, 2000));
        assert!(!fresh_at(&two, 2300));
        let h = headers(&two);
        let (p, t) = (pol(&h), times(&h, T0, T0));
        assert_eq!(ttl(&p, &t, T0 + 1500), 1);
        assert_eq!(ttl(&p, &t, T0 + 2300), -1);
        assert!(matches!(
            reuse(&p, &t, T0 + 2300, &CacheControl::default()),
            Reuse::Validate { .. }
        ));
        // The response delay counts: 1.2 s in flight plus 0.9 s stored.
        let t = times(&h, T0 - 1200, T0);
        assert!(matches!(
            reuse(&p, &t, T0 + 900, &CacheControl::default()),
            Reuse::Validate { .. }
        ));
    }

    #[test]
    fn invalid_expires_is_already_expired() {
        let d = date(T0);
        let later = date(T0 + 3_600_000); // a valid IMF-fixdate an hour on
        assert!(fresh_at(&[("expires", &later), ("date", &d)], 0));
        for bad in [
            later.replacen(' ', "  ", 2),                      // two spaces
            later.replacen(' ', "-", 3).replacen('-', " ", 1), // dd-Mon-yyyy
            later.replace(':', "."),                           // hh.mm.ss
            "Sun, 06 Nov 2050 8:49:37 GMT".to_string(),        // one-digit hour
            "tomorrow".to_string(),
        ] {
            assert!(!fresh_at(&[("expires", &bad), ("date", &d)], 0), "{bad}");
        }
        // Two Expires lines, even both valid.
        assert!(!fresh_at(
            &[("expires", &later), ("expires", &later), ("date", &d)],
            0
        ));
        // The other two HTTP-date formats are valid.
        assert!(fresh_at(
            &[("expires", "Sunday, 06-Nov-50 08:49:37 GMT")],
            0
        ));
        assert!(fresh_at(&[("expires", "Sun Nov  6 08:49:37 2050")], 0));
    }

    /// A far `Expires` is capped as a delta-seconds is (RFC 9111 §1.2.2):
    /// year 9999 was a lifetime of 251,605,969,136 s (bug-report probe).
    #[test]
    fn a_far_expires_is_capped_like_max_age() {
        let h = headers(&[
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("date", &date(T0)),
        ]);
        assert_eq!(pol(&h).lifetime, 2_147_483_648);
    }

    #[test]
    fn age_field() {
        let age = |vals: &[&str]| {
            let pairs: Vec<(&str, &str)> = vals.iter().map(|v| ("age", *v)).collect();
            age_value(&headers(&pairs))
        };
        assert_eq!(age(&["10"]), 10);
        assert_eq!(age(&["old"]), 0);
        assert_eq!(age(&["-5"]), 0);
        assert_eq!(age(&["1.5"]), 0);
        assert_eq!(age(&["30, 0"]), 30);
        assert_eq!(age(&["30", "0"]), 30);
        assert_eq!(age(&["old, 0"]), 0);
        assert_eq!(age(&["99999999999999999999"]), 2_147_483_648);
        assert_eq!(age(&["4294967297"]), 2_147_483_648);
        // A capped Age makes the entry stale, never fresh by wrapping.
        assert!(!fresh_at(
            &[("cache-control", "max-age=3600"), ("age", "4294967297")],
            0
        ));
    }

    #[test]
    fn a_fresh_entry_refused_by_the_request_is_requested_not_stale() {
        let t = times(&HeaderMap::new(), T0, T0);
        let p = policy_of("max-age=100");
        for directives in ["max-age=0", "max-age=5", "min-fresh=200", "no-cache"] {
            assert!(
                matches!(
                    reuse(&p, &t, T0 + 10_000, &req(directives)),
                    Reuse::Validate {
                        requested: true,
                        ..
                    }
                ),
                "{directives}"
            );
        }
        // Stale anyway: the request's no-cache does not make it `request`.
        assert!(matches!(
            reuse(&p, &t, T0 + 200_000, &req("no-cache")),
            Reuse::Validate {
                requested: false,
                ..
            }
        ));
        // The origin's no-cache is not the request's doing.
        let p = policy_of("max-age=100, no-cache");
        assert!(matches!(
            reuse(&p, &t, T0 + 10_000, &CacheControl::default()),
            Reuse::Validate {
                requested: false,
                ..
            }
        ));
    }

    #[test]
    fn ttl_is_negative_as_soon_as_stale() {
        let t = times(&HeaderMap::new(), T0, T0);
        let p = policy_of("max-age=10");
        assert_eq!(ttl(&p, &t, T0 + 9_500), 1);
        assert_eq!(ttl(&p, &t, T0 + 10_000), 0);
        assert_eq!(ttl(&p, &t, T0 + 10_300), -1);
        assert_eq!(ttl(&p, &t, T0 + 11_000), -1);
        assert_eq!(ttl(&p, &t, T0 + 11_001), -2);
    }

    #[test]
    fn grace_and_its_limits() {
        let none = CacheControl::default();
        let t = times(&HeaderMap::new(), T0, T0);
        let p = policy_of("max-age=1");
        assert_eq!(p.grace, 10);
        assert_eq!(
            reuse(&p, &t, T0 + 5000, &none),
            Reuse::Validate {
                ttl: -4,
                on_error: Some(Fallback::Grace),
                requested: false,
            }
        );
        assert!(matches!(
            reuse(&p, &t, T0 + 11_001, &none),
            Reuse::Validate { on_error: None, .. }
        ));
        // stale-if-error longer than grace wins (and names itself).
        let p = policy_of("max-age=1, stale-if-error=60");
        assert!(matches!(
            reuse(&p, &t, T0 + 30_000, &none),
            Reuse::Validate {
                on_error: Some(Fallback::StaleIfError),
                ..
            }
        ));
        for cc in [
            "max-age=1, must-revalidate",
            "max-age=1, proxy-revalidate",
            "s-maxage=1",
            "max-age=1, no-cache",
        ] {
            let p = policy_of(cc);
            assert_eq!(p.grace, 0, "{cc}");
            assert!(
                matches!(
                    reuse(&p, &t, T0 + 2000, &none),
                    Reuse::Validate { on_error: None, .. }
                ),
                "{cc}"
            );
        }
        // `no-cache` forbids any use without a successful validation, so
        // stale-if-error (the response's or the request's) never answers
        // for it, fresh or stale (RFC 9111 §5.2.2.4, §4.2.4).
        for cc in [
            "max-age=100, no-cache, stale-if-error=100",
            "no-cache, stale-if-error=100",
        ] {
            let p = policy_of(cc);
            for now in [T0 + 2000, T0 + 150_000] {
                for r in [&none, &req("stale-if-error=600")] {
                    assert!(
                        matches!(
                            reuse(&p, &t, now, r),
                            Reuse::Validate { on_error: None, .. }
                        ),
                        "{cc} at {now}"
                    );
                }
            }
        }
        // grace = 0 is off.
        let h = headers(&[("cache-control", "max-age=1")]);
        let p = policy(
            StatusCode::OK,
            &h,
            &CacheControl::from_headers(&h),
            T0,
            H,
            0,
        );
        assert!(matches!(
            reuse(&p, &t, T0 + 2000, &none),
            Reuse::Validate { on_error: None, .. }
        ));
    }
}

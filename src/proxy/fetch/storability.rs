//! Whether a response may be stored, and with which directives: a
//! matching rule applied within SPEC §10's privacy limits (what the origin
//! or the request made private stays so), the origin's word read from a
//! targeted field (RFC 9213) or Cache-Control, RFC 9111 §3's rules, the
//! rule's TTL keys standing in for missing freshness, and the size limit.
//! Used by the exchange (`exchange.rs`) and by hit-for-miss
//! ([`would_store`]).

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, StatusCode};

use super::super::validate::Present;
use super::super::{headers, Runtime};
use crate::cache::directives::CacheControl;
use crate::cache::freshness::{self, NotStorable};
use crate::rules::{lifetime, Lifetime, Rule};

/// RFC 9213 field addressed to Strata alone: obeyed, never passed on.
pub const STRATA_CACHE_CONTROL: header::HeaderName =
    header::HeaderName::from_static("strata-cache-control");

/// The rule for a response to `parts` with `headers`: from the request's
/// rule (index `rule`) on, the first whose `content_type` fits too.
pub(super) fn response_rule<'a>(
    runtime: &'a Runtime,
    rule: Option<usize>,
    parts: &Parts,
    headers: &HeaderMap,
) -> Option<&'a Rule> {
    runtime.config.rules.for_response(
        rule?,
        parts.uri.path(),
        &parts.method,
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
    )
}

/// The cache's decision on a response (`status`, `response` fields, shaped
/// in place by [`shape`]) to `request`: its directives when it may be
/// stored, else why not (the rule's and the origin's word, then the size).
pub(super) fn decide(
    runtime: &Runtime,
    rule: Option<usize>,
    request: &Parts,
    request_cc: &CacheControl,
    status: StatusCode,
    response: &mut HeaderMap,
) -> Result<CacheControl, NotStorable> {
    let cache = &runtime.config.cache;
    let cc = shape(
        response_rule(runtime, rule, request, response),
        &cache.targeted_cache_control,
        status,
        &request.headers,
        request_cc,
        response,
    )?;
    if headers::content_length(response).is_some_and(|len| len > cache.storable_size()) {
        return Err(NotStorable::TooLarge);
    }
    Ok(cc)
}

/// Whether a response to `request` would be stored: [`decide`] on a copy
/// of its fields. For hit-for-miss: a request that went upstream because
/// its URL was marked uncacheable learns whether the mark still holds.
pub fn would_store(
    runtime: &Runtime,
    rule: Option<usize>,
    request: &Parts,
    status: StatusCode,
    response: &HeaderMap,
) -> bool {
    // What the origin made unstorable (`no-store`, `private`) stays so
    // whatever a rule says ([`shape`] checks it before any rule): the usual
    // answer for a marked URL, read without copying its fields.
    let origin = CacheControl::for_cache(response, &runtime.config.cache.targeted_cache_control);
    if origin.no_store || origin.private {
        return false;
    }
    let request_cc = super::super::lookup::request_directives(&request.headers, Present::ALL);
    decide(
        runtime,
        rule,
        request,
        &request_cc,
        status,
        &mut response.clone(),
    )
    .is_ok()
}

/// Applies `rule` to a response within SPEC §10 and decides whether it
/// may be stored: the response's directives after the rule, or why not.
///
/// What the origin made private (or the request, `Authorization`) stays
/// private whatever the rule says, and the client gets the origin's own
/// Cache-Control; a rule's Cache-Control and TTL keys apply to success
/// statuses only, others only when `status_ttl` names them. A status
/// about the request ([`freshness::about_the_request`]) is never stored.
fn shape(
    rule: Option<&Rule>,
    targeted: &[header::HeaderName],
    status: StatusCode,
    request: &HeaderMap,
    request_cc: &CacheControl,
    response: &mut HeaderMap,
) -> Result<CacheControl, NotStorable> {
    // The origin's directives to Strata: a targeted field (RFC 9213) if
    // valid, else Cache-Control. Strata's own field is never passed on.
    let origin = CacheControl::for_cache(response, targeted);
    response.remove(STRATA_CACHE_CONTROL);
    // Before any rule or the origin's word: `status_ttl` cannot name it.
    if freshness::about_the_request(status) {
        return Err(NotStorable::RequestError);
    }
    if let Some(reason) = lifetime::private(request, request_cc, response, &origin) {
        return Err(reason);
    }
    let rule = rule.filter(|_| lifetime::rule_may_apply(request, &origin));
    let no_transform = origin.no_transform;
    let mut cc = origin;
    if let Some((value, directives)) = rule
        .filter(|_| lifetime::rule_status(status))
        .and_then(|r| Some((r.cache_control_for(no_transform)?, r.directives()?)))
    {
        if !lifetime::private_downstream(response) {
            response.insert(header::CACHE_CONTROL, value);
        }
        cc = directives.clone();
        cc.no_transform |= no_transform;
    }
    let verdict = freshness::storable(&Method::GET, request, request_cc, status, response, &cc);
    let given = rule.map_or(Lifetime::Origin, |r| {
        r.lifetimes
            .decide(status, lifetime::explicit_lifetime(&cc, response))
    });
    match (verdict, given) {
        (_, Lifetime::Never) => Err(NotStorable::Status),
        (Ok(()), _) => Ok(cc),
        // A rule's lifetime stands in for the freshness the response
        // lacks; never for what makes a response unstorable as such.
        (Err(NotStorable::Status | NotStorable::NoFreshness), Lifetime::Given(_))
            if !freshness::never_stored(status) =>
        {
            Ok(cc)
        }
        (Err(reason), _) => Err(reason),
    }
}

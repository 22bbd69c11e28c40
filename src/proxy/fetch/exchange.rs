//! One exchange with the upstream for the cache, and its classification:
//! the upstream request (whole and unconditional, or conditional on the
//! stored validators), the response's directives and whether it may be
//! stored (`storability.rs`), its freshness policy
//! with the rule's TTL keys, and a 304's update of the stored variant
//! (RFC 9111 §4.3.4, `exchange/update.rs`). Shared by the foreground fetch
//! and the background refresh.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, StatusCode};

use super::super::admit::Plan;
use super::super::as_forwarded::AsForwarded;
use super::super::body::IdleTimeout;
use super::super::error::ProxyError;
use super::super::{forward, headers, stored, ConnInfo, RequestCtx, Runtime};
use super::storability::{decide, response_rule, STRATA_CACHE_CONTROL};
use crate::cache::directives::CacheControl;
use crate::cache::entry::{self, Object, Variant};
use crate::cache::freshness::{self, now_millis, Heuristic, Millis, NotStorable};
use crate::cache::key::CacheKey;
use crate::cache::{tags, Cache};
use crate::metrics::Shed;
use crate::rules::{lifetime, Rule};
use crate::upstream::client::empty_body;
use crate::upstream::ServedBy;

mod update;

/// Request fields Strata removes before a fetch it may store: the cache
/// fetches whole, unconditional representations (or adds its own
/// validators) and answers the client's conditions and ranges itself.
pub(super) const CLIENT_CONDITIONALS: [header::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// `Accept-Ranges: bytes`, built once.
static BYTES: HeaderValue = HeaderValue::from_static("bytes");

/// An upstream body behind the idle timeout.
pub(super) type UpstreamBody = IdleTimeout<crate::upstream::UpstreamBody>;

/// The upstream's answer to a fetch for the cache, classified once.
pub(super) enum Fetched {
    /// The exchange failed.
    Failed(ProxyError),
    /// 5xx while a stale copy may stand in (the response is dropped).
    ServerError(StatusCode),
    /// 304 to a conditional fetch: the stored object now holding the
    /// refreshed variant (`None`: not stored, when purged while
    /// revalidated or no longer shareable), the variant, and what goes to
    /// the requester only.
    NotModified(Option<Arc<Object>>, Arc<Variant>, Requester),
    /// A response to store while it streams.
    Storable(Box<Plan>, http::response::Parts, UpstreamBody),
    /// A full response that must not be stored.
    Uncacheable(NotStorable, http::response::Parts, UpstreamBody),
}

/// What a `304` gives the request that triggered its validation and no
/// one else: the server that answered (for the access log) and the
/// fields the `304` carried that no shared copy holds, `Set-Cookie` and
/// `Proxy-Authentication-Info` (the requester's; never stored, never
/// given to collapsed requests).
pub(super) struct Requester {
    pub(super) served: Option<ServedBy>,
    pub(super) own_fields: Vec<(header::HeaderName, HeaderValue)>,
}

/// What a fetch for the cache needs, owned so that a background refresh
/// can carry it past the request.
pub(super) struct Exchange {
    pub(super) runtime: Arc<Runtime>,
    pub(super) cache: Cache,
    pub(super) conn: ConnInfo,
    pub(super) rule: Option<usize>,
    pub(super) req_cc: CacheControl,
}

// === impl Exchange ===

impl Exchange {
    pub(super) fn new(ctx: &RequestCtx<'_>) -> Exchange {
        Exchange {
            runtime: ctx.runtime.clone(),
            cache: ctx.shared.cache.clone(),
            conn: ctx.conn,
            rule: ctx.rule,
            req_cc: ctx.req_cc.clone(),
        }
    }

    /// The rule for a response to `parts` with `headers`: from the
    /// request's rule on, the first whose `content_type` fits too.
    fn rule(&self, parts: &Parts, headers: &HeaderMap) -> Option<&Rule> {
        response_rule(&self.runtime, self.rule, parts, headers)
    }

    /// The freshness policy of a response with final directives `cc`,
    /// with the rule's TTL keys applied.
    fn policy(
        &self,
        parts: &Parts,
        status: StatusCode,
        headers: &HeaderMap,
        cc: &CacheControl,
        response_time: Millis,
    ) -> freshness::Policy {
        let mut policy = freshness::policy(
            status,
            headers,
            cc,
            response_time,
            self.heuristic(),
            self.grace(),
        );
        if let Some(rule) = self.rule(parts, headers) {
            let explicit = lifetime::explicit_lifetime(cc, headers);
            rule.lifetimes.adjust(&mut policy, status, cc, explicit);
        }
        policy
    }

    fn heuristic(&self) -> Heuristic {
        let c = &self.runtime.config.cache;
        Heuristic {
            fraction: c.heuristic_fraction,
            max_secs: c.max_heuristic_lifetime.as_secs(),
        }
    }

    /// The origin's directives to Strata: the first valid targeted field
    /// (RFC 9213), else Cache-Control. A rule's Cache-Control, where it
    /// applies, replaces them (see `shape`).
    fn directives(&self, headers: &HeaderMap) -> CacheControl {
        CacheControl::for_cache(headers, &self.runtime.config.cache.targeted_cache_control)
    }

    /// `parts` as the origin gets them, for Vary.
    fn as_forwarded<'a>(&'a self, parts: &'a Parts) -> AsForwarded<'a> {
        let server = &self.runtime.config.server;
        AsForwarded::of_parts(&parts.uri, &parts.headers, parts.version, self.conn, server)
    }

    /// `[cache] grace` in seconds.
    fn grace(&self) -> u64 {
        self.runtime.config.cache.grace.as_secs()
    }

    /// The upstream request for a fetch Strata may store: a GET (HEAD is
    /// converted), the client's conditions and range removed, and the
    /// stored validators added when revalidating.
    fn upstream_request(
        &self,
        parts: &Parts,
        stale: Option<&Variant>,
    ) -> Request<crate::upstream::ReqBody> {
        let mut up = Request::new(empty_body());
        *up.method_mut() = Method::GET;
        *up.uri_mut() = parts.uri.clone();
        *up.version_mut() = parts.version;
        let mut h = parts.headers.clone();
        for name in &CLIENT_CONDITIONALS {
            h.remove(name);
        }
        if let Some(v) = stale {
            if let Some(etag) = v.etag() {
                h.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = v.last_modified() {
                h.insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
        *up.headers_mut() = h;
        forward::upstream_request(up, self.conn, &self.runtime.config.server, false)
    }

    /// Sends the fetch and classifies the answer. `stale` is the stored
    /// variant being validated; `stale_on_5xx` says a 5xx should give way
    /// to it.
    pub(super) async fn fetch(
        &self,
        parts: &Parts,
        key: &CacheKey,
        object: Option<&Arc<Object>>,
        stale: Option<&Arc<Variant>>,
        stale_on_5xx: bool,
    ) -> Fetched {
        let mut validating = stale;
        // Before the request leaves: a purge or invalidation of the URL
        // from here on keeps the response out of the cache.
        let since = self.cache.removal_epoch();
        let (answer, request_time) = loop {
            let upstream = self.upstream_request(parts, validating.map(|v| &**v));
            let request_time = now_millis();
            let answer = match forward::send(&self.runtime, upstream).await {
                Ok(a) => a,
                Err(e) => return Fetched::Failed(e),
            };
            // RFC 9111 §4.3.4: a 304 whose validator names another response
            // (an origin that compared only the date, say) updates nothing;
            // the response is asked for again, without conditions.
            match validating {
                Some(old)
                    if answer.response.status() == StatusCode::NOT_MODIFIED
                        && !stored::selected_for_update(
                            &old.headers,
                            answer.response.headers(),
                        ) =>
                {
                    tracing::debug!(%key, "304 names another validator than the stored response's; fetching it whole");
                    validating = None;
                }
                _ => break (answer, request_time),
            }
        };
        let response_time = now_millis();
        let status = answer.response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The cache path never asks for an upgrade.
            return Fetched::Failed(forward::unasked_switch(&answer.response));
        }
        if let (StatusCode::NOT_MODIFIED, Some(old)) = (status, validating) {
            let v = Arc::new(self.freshen(
                parts,
                old,
                answer.response.headers(),
                request_time,
                response_time,
            ));
            let now = self.directives_after_304(old, answer.response.headers());
            // Not when the origin no longer lets it be shared (SPEC §10)
            // or now varies on everything (`Vary: *`: no later request can
            // be selected for it, RFC 9111 §4.1), nor when it was purged
            // while revalidated.
            let shared = !(now.private
                || now.no_store
                || crate::cache::vary::varies_on_everything(answer.response.headers()));
            let stored = if shared {
                self.cache.admit(key, object.map(|o| &**o), &v, since)
            } else {
                self.cache.remove(key);
                None
            };
            let requester = Requester {
                served: answer.response.extensions().get().cloned(),
                own_fields: [
                    header::SET_COOKIE,
                    freshness::SET_COOKIE2.clone(),
                    PROXY_AUTHENTICATION_INFO.clone(),
                ]
                .into_iter()
                .flat_map(|name| {
                    let values = answer.response.headers().get_all(&name);
                    values.iter().map(move |v| (name.clone(), v.clone()))
                })
                .collect(),
            };
            return Fetched::NotModified(stored, v, requester);
        }
        if stale_on_5xx && stale.is_some() && status.is_server_error() {
            return Fetched::ServerError(status);
        }
        let (mut rparts, body) = answer.response.into_parts();
        let body = IdleTimeout::new(body, self.runtime.config.upstream.body_idle_timeout);
        let entry_tags = normalize_response(&mut rparts.headers, response_time);
        // Strata's own targeted field, removed by `decide` (never served):
        // an owned copy, not a slice pinning the connection's read buffer.
        let strata_cc = rparts
            .headers
            .get(STRATA_CACHE_CONTROL)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        let decided = decide(
            &self.runtime,
            self.rule,
            parts,
            &self.req_cc,
            status,
            &mut rparts.headers,
        );
        let cc = match decided {
            Ok(cc) => cc,
            Err(reason) => return Fetched::Uncacheable(reason, rparts, body),
        };
        // A declared length is reserved before the head goes out, so that
        // `Cache-Status` says `stored` only when there is room to collect
        // the body; one without grows its reservation as it arrives.
        let collecting = self.cache.collecting();
        let reserved = match headers::content_length(&rparts.headers) {
            Some(len) => match collecting.reserve(usize::try_from(len).unwrap_or(usize::MAX)) {
                Some(r) => r,
                None => {
                    self.cache.metrics().shed(Shed::Busy);
                    return Fetched::Uncacheable(NotStorable::Busy, rparts, body);
                }
            },
            None => collecting.reservation(),
        };
        if status == StatusCode::OK {
            // Strata serves byte ranges of every stored 200, whatever the
            // origin serves (`none` included), and says so on the miss and
            // on every hit (RFC 9110 §14.3), as nginx and Varnish do.
            rparts.headers.insert(header::ACCEPT_RANGES, BYTES.clone());
        }
        let max = self.runtime.config.cache.storable_size();
        let times = freshness::times(&rparts.headers, request_time, response_time);
        let policy = self.policy(parts, status, &rparts.headers, &cc, response_time);
        let names = entry::vary_names(&rparts.headers);
        let plan = Plan {
            key: key.clone(),
            base: object.cloned(),
            // Keyed by the fields as this request sent them upstream, as
            // lookups read them.
            vary: entry::vary_key(&self.as_forwarded(parts), &names),
            status,
            headers: stored_fields(&rparts.headers),
            times,
            policy,
            tags: entry_tags,
            strata_cc,
            max_size: max,
            compression: self.runtime.config.compression.clone(),
            since,
            reserved,
            send_timeout: self.runtime.config.server.send_timeout,
        };
        Fetched::Storable(Box::new(plan), rparts, body)
    }
}

/// The fields a stored copy keeps: all of the response's but `Set-Cookie`
/// (and the obsolete `Set-Cookie2`) and `Proxy-Authentication-Info`. A response stored although it sets a
/// cookie (the origin said `public` or `s-maxage`) is shareable; its
/// cookie is the state of the client whose request fetched it, who gets
/// it, and is never handed to the clients of later hits (one user's
/// session given to everyone). `Proxy-Authentication-Info` answers one
/// client's proxy credentials (RFC 9110 §11.7.3); RFC 9111 §3.1 keeps it
/// out of a cache's store like `Proxy-Authenticate` and
/// `Proxy-Authorization`, which are hop-by-hop here and never reach it.
fn stored_fields(response: &HeaderMap) -> HeaderMap {
    let mut fields = response.clone();
    fields.remove(header::SET_COOKIE);
    fields.remove(&freshness::SET_COOKIE2);
    fields.remove(&PROXY_AUTHENTICATION_INFO);
    fields
}

/// RFC 9110 §11.7.3 (not among `http`'s constants).
static PROXY_AUTHENTICATION_INFO: header::HeaderName =
    header::HeaderName::from_static("proxy-authentication-info");

/// RFC 1864's obsolete body digest: like `Content-Length`, it describes
/// the stored bytes, which a 304 does not replace.
static CONTENT_MD5: header::HeaderName = header::HeaderName::from_static("content-md5");

/// Shapes upstream response headers the way the cache stores and serves
/// them: hop-by-hop fields out, surrogate tags taken out (and returned).
fn normalize_response(headers: &mut HeaderMap, response_time: Millis) -> Vec<String> {
    headers::strip_hop_by_hop(headers, false);
    complete_date(headers, response_time);
    tags::take(headers)
}

/// RFC 9110 §6.6.1: the response's `Date` as one valid line, for the
/// stored copy and the client alike: added when missing, and replaced
/// when invalid (unparsable, or two lines, which freshness ignores: RFC
/// 9111 §4.2.3 then takes the time received), by the time the response
/// was received, so that no cache or client downstream reads an age
/// Strata did not.
fn complete_date(headers: &mut HeaderMap, response_time: Millis) {
    if freshness::http_date(headers, header::DATE).is_some() {
        return;
    }
    let received = std::time::UNIX_EPOCH + std::time::Duration::from_millis(response_time);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(received)) {
        headers.insert(header::DATE, v);
    }
}

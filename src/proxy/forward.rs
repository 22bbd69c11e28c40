//! Forwarding a request to an upstream: header rewriting, the retry rule,
//! streaming bodies both ways, response framing (RFC 9112 §6.3), protocol
//! upgrades (WebSocket), and on pass-through the same compression as the
//! cache path, with Strata's encoded ETags mapped back in the client's
//! conditions.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::{IdleTimeout, ProxyBody};
use super::cache_status::CacheStatus;
use super::error::ProxyError;
use super::headers;
use super::lookup::Pass;
use super::validate::{Field, Present};
use super::{Answered, ConnInfo, Runtime, Shared};
use crate::server::deadline::{BodyEnd, RequestBody};
use crate::upstream::{client::empty_body, Answer, ReqBody, UpstreamBody};

use crate::cache::directives::CacheControl;
use crate::cache::key::{keyed_authority, CacheKey};
use crate::cache::storage::Selector;
use crate::config::ServerConfig;
use crate::rules::lifetime;
use crate::traffic::ClientIp;

/// Rewrites a client request into the one sent upstream (hop-by-hop fields
/// and `server.strip_request_headers` out, Strata's forwarding fields in,
/// `Host` kept or set from the authority: [`forward_fields`]).
pub fn upstream_request(
    mut req: Request<ReqBody>,
    conn: ConnInfo,
    server: &ServerConfig,
    upgrade: bool,
) -> Request<ReqBody> {
    let version = req.version();
    // hyper's client assumes a GET or HEAD has no body unless it is told
    // the length or asked for chunked: a body of unknown length (HTTP/2
    // DATA frames, an HTTP/1.1 chunked upload) would be dropped unsent.
    let chunked_body = matches!(*req.method(), Method::GET | Method::HEAD)
        && !req.body().is_end_stream()
        && req.body().size_hint().exact().is_none()
        && !req.headers().contains_key(header::CONTENT_LENGTH);
    let authority = target_host(req.uri());
    let h = req.headers_mut();
    forward_fields(h, authority, version, conn, server, upgrade);
    if chunked_body {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    req.extensions_mut().insert(ClientIp(conn.client_ip));
    req
}

/// The authority of an absolute-form target (or an HTTP/2 request's
/// `:authority`) as a `Host` value: it replaces the client's `Host`
/// upstream (RFC 9112 §3.2.2).
pub(super) fn target_host(uri: &http::Uri) -> Option<HeaderValue> {
    uri.authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// `host` as the cache key names it ([`keyed_authority`]: case-folded,
/// without the scheme's default port, an empty port or the root's
/// trailing dot), when that differs from what the client wrote; `None`
/// when it is already so (the usual case: nothing is allocated). The
/// origin, and the `X-Forwarded-Host` and `Forwarded` fields made from
/// `Host`, see the host the entry is keyed by (SPEC §10: one form for key
/// and upstream), so `Host: EXAMPLE.com:80` cannot store a redirect to
/// `http://EXAMPLE.com:80/` that `Host: example.com` is then served
/// (nginx forwards `$host` with `proxy_set_header Host $host`).
fn keyed_host(https: bool, host: &HeaderValue) -> Option<HeaderValue> {
    let text = host.to_str().ok()?;
    let keyed = keyed_authority(https, text);
    if keyed.len() == text.len() && !text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    HeaderValue::from_str(&keyed.to_ascii_lowercase()).ok()
}

/// The fields of a request as they go upstream, rewritten in place: `Host`
/// set to `authority` ([`target_host`]) when there is one and written as
/// the cache key names it ([`keyed_host`]), hop-by-hop
/// fields out (`Upgrade` kept for an `upgrade`), an HTTP/1.0 `Expect` out,
/// `server.strip_request_headers` out, Strata's forwarding fields and
/// `Via` in ([`headers::add_forwarding`], SPEC §10). The one place these
/// rewrites are made: Vary matching reads the rewritten fields through it
/// too ([`super::as_forwarded`]), so a stored variant is keyed by what the
/// origin saw.
pub(super) fn forward_fields(
    h: &mut HeaderMap,
    authority: Option<HeaderValue>,
    version: http::Version,
    conn: ConnInfo,
    server: &ServerConfig,
    upgrade: bool,
) {
    if let Some(v) = authority {
        h.insert(header::HOST, v);
    }
    if let Some(v) = h.get(header::HOST).and_then(|v| keyed_host(conn.https, v)) {
        h.insert(header::HOST, v);
    }
    headers::strip_hop_by_hop(h, upgrade);
    if version == http::Version::HTTP_10 {
        // RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue expectation
        // is ignored, not passed on as HTTP/1.1's.
        h.remove(header::EXPECT);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers::strip_listed(h, &server.strip_request_headers);
    let by = headers::Forwarder {
        peer: conn.peer.ip(),
        https: conn.https,
        trusted: server.trusted_proxies.contains(conn.peer.ip()),
    };
    // A clone of the value (a reference count), not of its text.
    let host = h.get(header::HOST).cloned();
    headers::add_forwarding(h, by, host.as_ref(), version);
}

/// Sends a prepared request upstream. Idempotent body-less requests are
/// replayable: re-sent once on a fresh connection when a reused one was
/// closed before any response byte, and retried once on another server
/// after a connect failure (SPEC §6 "Upstream connections").
pub async fn send(runtime: &Runtime, req: Request<ReqBody>) -> Result<Answer, ProxyError> {
    if let Some(limits) = &runtime.rate_limits {
        limits
            .before_upstream(&req)
            .await
            .map_err(ProxyError::RateLimited)?;
    }
    let replayable = is_idempotent(req.method()) && req.body().is_end_stream();
    let mut answer = runtime.upstreams.send(req, replayable).await?;
    normalize_framing(&mut answer);
    Ok(answer)
}

/// RFC 9112 §6.3: a response with `Transfer-Encoding` is framed by it
/// (hyper reads a final `chunked` as chunks and anything else to
/// connection close); a `Content-Length` beside it is wrong and goes, so
/// the body is re-framed for the client (Transfer-Encoding is hop-by-hop
/// and stripped later).
fn normalize_framing(answer: &mut Answer) {
    let no_length = answer.response.status() == StatusCode::NO_CONTENT;
    let h = answer.response.headers_mut();
    // RFC 9110 §8.6: a 204 never carries Content-Length (its body, if an
    // origin sent one, was not read and closes the connection).
    if no_length || h.contains_key(header::TRANSFER_ENCODING) {
        h.remove(header::CONTENT_LENGTH);
        transfer_codings_as_content_codings(h);
    }
}

/// A transfer coding other than `chunked` (`Transfer-Encoding: gzip,
/// chunked`, or `gzip` read to close) is not decoded by hyper, so the body
/// Strata relays is still in that coding: it becomes a content coding of
/// the relayed response (appended to `Content-Encoding`, RFC 9110 §8.4),
/// so no client or cache takes gzip bytes for plain content. It was
/// dropped with the hop-by-hop `Transfer-Encoding`, and the coded bytes
/// served and stored as if they were the representation.
fn transfer_codings_as_content_codings(h: &mut http::HeaderMap) {
    use crate::compression::list_elements;
    // Codings named in a list field, parameters cut, `except` left out.
    let codings = |h: &http::HeaderMap, name, except: &'static str| {
        list_elements(h, name)
            .map(|e| e.split(';').next().unwrap_or("").trim())
            .filter(move |c| !c.is_empty() && !c.eq_ignore_ascii_case(except))
            .filter(|c| !c.eq_ignore_ascii_case("identity"))
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
    };
    // The usual `chunked` alone leaves this empty, allocating nothing.
    let transfer = codings(h, header::TRANSFER_ENCODING, "chunked");
    if transfer.is_empty() {
        return;
    }
    let mut content = codings(h, header::CONTENT_ENCODING, "identity");
    content.extend(transfer);
    if let Ok(v) = http::HeaderValue::from_str(&content.join(", ")) {
        h.insert(header::CONTENT_ENCODING, v);
    }
}

/// The error for a `101` to a request that asked for no upgrade: relayed,
/// it left the client a 101 without `Upgrade` and a dead connection.
pub(super) fn unasked_switch<B>(resp: &Response<B>) -> ProxyError {
    let server = resp
        .extensions()
        .get::<crate::upstream::ServedBy>()
        .map_or_else(String::new, |s| s.0.to_string());
    ProxyError::Upstream(crate::upstream::UpstreamError::UnaskedSwitch { server })
}

/// Turns an upstream response into the client response: hop-by-hop fields
/// out, the body streamed behind the idle timeout.
pub fn client_response(runtime: &Runtime, resp: Response<UpstreamBody>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let idle = runtime.config.upstream.body_idle_timeout;
    Response::from_parts(parts, ProxyBody::Upstream(IdleTimeout::new(body, idle)))
}

/// Pass-through: the cache is not involved (`fwd` says why).
pub async fn pass(
    shared: &Shared,
    runtime: &Arc<Runtime>,
    mut req: Request<Incoming>,
    conn: ConnInfo,
    pass: Pass,
    present: Present,
) -> Answered {
    let Pass { fwd, rule, marked } = pass;
    // Hit-for-miss (Varnish's): the request, kept only for a URL marked
    // uncacheable, to tell from the answer whether the mark still holds.
    let marked = marked.map(|hash| (hash, super::fetch::request_parts(&req)));
    // What the rule's Cache-Control needs of the request, kept only when
    // a rule matched (`rule_cache_control`).
    let ruled = rule.map(|i| RuledRequest::capture(i, &req));
    // Absent fields (most requests have no `Upgrade`, `Accept-Encoding`
    // or precondition) are not looked up.
    let upgrade = present.has(Field::Upgrade) && wants_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let compression = runtime.config.compression.as_ref();
    // Negotiated once for this request, as RequestCtx does on the cache path.
    // HEAD too: its fields are the GET's (RFC 9110 §9.3.2).
    let coding = compression
        .filter(|_| !upgrade && present.has(Field::AcceptEncoding))
        .and_then(|p| p.negotiate(req.headers().get_all(header::ACCEPT_ENCODING).iter()));
    let conditional = present.has(Field::Conditional);
    // The client's If-None-Match as sent, when it may name our encoding.
    let client_inm = coding
        .filter(|_| conditional)
        .and(req.headers().get(header::IF_NONE_MATCH).cloned());
    if let Some(policy) = compression.filter(|_| conditional) {
        unmap_etags(req.headers_mut(), policy, coding);
    }
    let unsafe_method = !is_safe(req.method());
    let is_head = req.method() == Method::HEAD;
    let target =
        unsafe_method.then(|| (req.uri().clone(), super::validate::request_authority(&req)));
    let end = req.extensions_mut().remove::<BodyEnd>();
    let req = req.map(|b| {
        if b.is_end_stream() {
            empty_body()
        } else {
            Either::Left(RequestBody::new(b, end))
        }
    });
    let req = upstream_request(req, conn, &runtime.config.server, upgrade);
    let status = CacheStatus::fwd(fwd);
    let answer = match send(runtime, req).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "upstream request failed");
            return Answered::error(&e, status);
        }
    };
    let mut resp = answer.response;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client_upgrade else {
            return Answered::error(&unasked_switch(&resp), status);
        };
        return switch_protocols(resp, client, status);
    }
    if let Some((uri, authority)) = target {
        // RFC 9111 §4.4: a non-error response to an unsafe method
        // invalidates the target URI and same-origin Location/Content-Location.
        if resp.status().is_success() || resp.status().is_redirection() {
            // Keyed as a GET of each URL would be (the rules' key options).
            let rules = &runtime.config.rules;
            shared.cache.invalidate_after_unsafe(
                &uri,
                authority.as_ref(),
                conn.https,
                resp.headers(),
                |https, authority, path| {
                    // Normalised as a request path is (a Location's
                    // `/a/./b` or `%7e` names the key `/a/b`, `~`); the
                    // request's own is already.
                    let normal = super::target::normalize_reference(path);
                    let path = normal.as_deref().unwrap_or(path);
                    let target = rules.key_target(Some((https, authority)), path);
                    target
                        .purge()
                        .selector()
                        .unwrap_or_else(|_| Selector::Key(CacheKey::new(https, authority, path)))
                },
            );
            // Cascades purge memory before the response goes out, so that
            // a client reading after its write sees the dependent entries
            // gone; Redis and the fleet follow in the background.
            let cascades = &runtime.config.invalidation;
            if !cascades.is_empty() {
                shared.cache.cascade_after_unsafe(uri.path(), cascades);
            }
        }
    }
    if let Some((hash, parts)) = &marked {
        // A storable answer lifts the mark: the next request is a miss
        // again, and its response is stored (SPEC §3, README "hit-for-miss").
        // A body that outgrew `max_object_size` looked storable by its
        // fields: without a length (that `would_store` checks) it would
        // again.
        let oversize = || {
            shared.cache.pass_mark(*hash) == Some(crate::cache::PassMark::Oversize)
                && headers::content_length(resp.headers()).is_none()
        };
        if super::fetch::would_store(runtime, rule, parts, resp.status(), resp.headers())
            && !oversize()
        {
            shared.cache.unmark_pass(*hash);
        }
    }
    if let Some(ruled) = &ruled {
        ruled.apply(runtime, resp.status(), resp.headers_mut());
    }
    strip_surrogate_fields(&mut resp);
    if let (Some(inm), Some(coding)) = (&client_inm, coding) {
        encoded_not_modified(&mut resp, inm, coding);
    }
    let resp = client_response(runtime, resp);
    let resp = super::fetch::compress_stream(resp, compression, coding);
    // A HEAD gets the fields of the GET's encoded representation; its
    // (empty) body is never encoded.
    let resp = if is_head {
        resp.map(|_| ProxyBody::empty())
    } else {
        resp
    };
    Answered::new(resp, status)
}

/// A `304` for the encoded representation the client holds: when the
/// origin's `ETag` is the base of one of the client's tags for `coding`
/// (mapped back by [`unmap_etags`]), the `304` carries the tag and `Vary`
/// the `200` would have (RFC 9110 §15.4.5), not the origin's identity tag.
pub(super) fn encoded_not_modified<B>(
    resp: &mut Response<B>,
    client_inm: &HeaderValue,
    coding: crate::compression::Coding,
) {
    if resp.status() != StatusCode::NOT_MODIFIED {
        return;
    }
    let h = resp.headers_mut();
    let Some(ours) = h
        .get(header::ETAG)
        .and_then(|e| crate::compression::encoded_etag(e, coding, true))
    else {
        return;
    };
    let held =
        super::stored::etag_list_matches(client_inm.as_bytes(), Some(ours.as_bytes()), false);
    if held {
        h.insert(header::ETAG, ours);
        crate::compression::merge_vary_accept_encoding(h);
    }
}

/// A passed-through request that matched a rule: what deciding the
/// client's Cache-Control needs once the request has gone upstream.
struct RuledRequest {
    rule: usize,
    path: String,
    method: Method,
    /// Only `Authorization` (RFC 9111 §3.5), if the request had one.
    authorization: HeaderMap,
    req_cc: CacheControl,
}

impl RuledRequest {
    fn capture<B>(rule: usize, req: &Request<B>) -> RuledRequest {
        let mut authorization = HeaderMap::new();
        if let Some(v) = req.headers().get(header::AUTHORIZATION) {
            authorization.insert(header::AUTHORIZATION, v.clone());
        }
        RuledRequest {
            rule,
            path: req.uri().path().to_owned(),
            method: req.method().clone(),
            authorization,
            req_cc: super::lookup::request_directives(req.headers(), Present::ALL),
        }
    }

    /// SPEC §2: the rule's `cache_control` replaces the origin's for the
    /// client on passed-through responses too (a `no-store` rule, a URL
    /// remembered as uncacheable), within SPEC §10's limits, exactly as
    /// on a miss.
    fn apply(&self, runtime: &Runtime, status: StatusCode, h: &mut HeaderMap) {
        let content_type = h.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
        let Some(rule) =
            runtime
                .config
                .rules
                .for_response(self.rule, &self.path, &self.method, content_type)
        else {
            return;
        };
        let origin = CacheControl::for_cache(h, &runtime.config.cache.targeted_cache_control);
        if !lifetime::rule_status(status)
            || lifetime::private(&self.authorization, &self.req_cc, h, &origin).is_some()
        {
            return;
        }
        if lifetime::private_downstream(h)
            || !lifetime::rule_may_apply(&self.authorization, &origin)
        {
            return;
        }
        if let Some(value) = rule.cache_control_for(origin.no_transform) {
            h.insert(header::CACHE_CONTROL, value);
        }
    }
}

/// Strata's ETags of encoded responses (`"xyz-gzip"`, `"xyz-br"`) mapped
/// back to the origin's own (`"xyz"`) in the client's `If-None-Match` and
/// `If-Match`, so that the origin's validator matches (SPEC §6;
/// [`crate::compression::unmap_etag_list`]). In `If-None-Match` only the
/// tags of `selected`, the representation this request gets, are mapped:
/// a client holding the gzip copy that now asks for br must not be told
/// its copy is current (RFC 9110 §13.1.2), and an origin's own tag that
/// looks like one of Strata's (Apache's mod_deflate adds `-gzip`) reaches
/// it unchanged unless the client accepts that coding. `If-Match` is
/// about the resource's state: every coding is mapped.
pub fn unmap_etags(
    h: &mut http::HeaderMap,
    policy: &crate::compression::CompressionPolicy,
    selected: Option<crate::compression::Coding>,
) {
    let selected = selected.as_slice();
    for (name, codings, strong) in [
        (header::IF_NONE_MATCH, selected, true),
        (header::IF_MATCH, &policy.algorithms[..], false),
    ] {
        let Some(value) = h.get(&name) else {
            continue;
        };
        if let Some(v) = crate::compression::unmap_etag_list(value, codings, strong) {
            h.insert(name, v);
        }
    }
}

/// `Surrogate-Key` / `Cache-Tag` and `Strata-Cache-Control` (RFC 9213)
/// are for Strata, never for clients.
pub fn strip_surrogate_fields<B>(resp: &mut Response<B>) {
    use crate::cache::tags::{CACHE_TAG, SURROGATE_KEY};
    let strata_cc = super::fetch::STRATA_CACHE_CONTROL;
    let h = resp.headers_mut();
    // One look at the few names present (usually none of these) instead
    // of three hashed removals.
    if h.keys()
        .any(|k| matches!(k.as_str(), SURROGATE_KEY | CACHE_TAG) || *k == strata_cc)
    {
        h.remove(SURROGATE_KEY);
        h.remove(CACHE_TAG);
        h.remove(strata_cc);
    }
}

fn switch_protocols(
    mut resp: Response<UpstreamBody>,
    client: hyper::upgrade::OnUpgrade,
    status: CacheStatus,
) -> Answered {
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    Answered::new(Response::from_parts(parts, ProxyBody::empty()), status)
}

/// An HTTP/1.1 protocol switch to tunnel: `Upgrade: websocket` named in
/// `Connection` (RFC 9110 §7.8; RFC 6455). Any other protocol (`h2c`, the
/// HTTP/2 upgrade RFC 9113 §3.1 deprecates and curl sends with `--http2`,
/// or an arbitrary token) makes an ordinary request, its Upgrade stripped
/// as hop-by-hop: once an origin answers `101`, the bytes that follow
/// reach it raw, past header stripping, path normalisation and rate
/// limits, so only WebSocket, whose frames are no HTTP, is let through
/// (security probe: `Upgrade: foo/1` tunnelled a raw `GET /admin`).
pub(super) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.version() == http::Version::HTTP_11
        && headers::list_members(h, header::UPGRADE).any(|p| p.eq_ignore_ascii_case("websocket"))
        && headers::list_members(h, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// RFC 9110 §9.2.1.
pub fn is_safe(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(m: &Method) -> bool {
    is_safe(m) || matches!(*m, Method::PUT | Method::DELETE)
}

//! Request validation, once, before anything else reads the request:
//! what must never reach an upstream (RFC 9112 §3.2 Host, §6.1 transfer
//! codings, CONNECT, TRACE, ambiguous paths: SPEC §10) and the normal form
//! every later phase reads (the path, the fields a client names in
//! `Connection` removed, fields whose name holds `_` dropped, and an
//! HTTP/2 client's `cookie` fields joined as one). Also the request's authority, read after it, and [`Present`]:
//! which of the fields the hit path reads the request has at all.

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Version};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::{headers, target};
use crate::config::ServerConfig;

/// A request field the hit path reads, as a bit of [`Present`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Field {
    Host = 1,
    TransferEncoding = 1 << 1,
    Connection = 1 << 2,
    Upgrade = 1 << 3,
    CacheControl = 1 << 4,
    Pragma = 1 << 5,
    AcceptEncoding = 1 << 6,
    /// Any field evaluated against a stored response: a precondition
    /// (`If-Match`, `If-None-Match`, `If-Modified-Since`,
    /// `If-Unmodified-Since`; RFC 9110 §13.1) or `Range`/`If-Range`
    /// (§14.2).
    Conditional = 1 << 7,
    /// A field whose name holds `_` ([`headers::drop_underscored`]).
    Underscored = 1 << 8,
}

/// Which [`Field`]s a request has, noted in one pass over its field names
/// so that the hit path looks up only the fields that are there: a hashed
/// lookup of an absent name costs as much as one of a present name, and
/// most requests carry few of these (a load generator's, only `Host`). A bit set means "may be present": validation may still remove
/// a field a `Connection` option names, and nothing between validation
/// and the cache adds a request field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Present(u16);

impl Present {
    /// Every field possibly present: for a caller that did not scan (it
    /// looks every field up, as before).
    pub const ALL: Present = Present(u16::MAX);

    /// The fields of `h`: one comparison per name and field, no hashing.
    pub fn of(h: &HeaderMap) -> Present {
        const NAMES: [(HeaderName, Field); 13] = [
            (header::HOST, Field::Host),
            (header::ACCEPT_ENCODING, Field::AcceptEncoding),
            (header::CACHE_CONTROL, Field::CacheControl),
            (header::CONNECTION, Field::Connection),
            (header::PRAGMA, Field::Pragma),
            (header::UPGRADE, Field::Upgrade),
            (header::TRANSFER_ENCODING, Field::TransferEncoding),
            (header::IF_MATCH, Field::Conditional),
            (header::IF_NONE_MATCH, Field::Conditional),
            (header::IF_MODIFIED_SINCE, Field::Conditional),
            (header::IF_UNMODIFIED_SINCE, Field::Conditional),
            (header::RANGE, Field::Conditional),
            (header::IF_RANGE, Field::Conditional),
        ];
        let mut bits = 0;
        for name in h.keys() {
            if let Some((_, field)) = NAMES.iter().find(|(n, _)| n == name) {
                bits |= *field as u16;
            } else if name.as_str().as_bytes().contains(&b'_') {
                bits |= Field::Underscored as u16;
            }
        }
        Present(bits)
    }

    pub fn has(self, field: Field) -> bool {
        self.0 & field as u16 != 0
    }
}

/// Rejects requests that must never reach an upstream (RFC 9112 §3.2,
/// SPEC §10), and replaces the request's path by its normalised form
/// ([`target::normalize`]) so every later phase reads the same one.
/// Returns the [`Present`] fields, for the phases after it.
/// Reads `server.max_header_size` (in bytes; checked here for HTTP/2 only,
/// hyper checks HTTP/1.1 heads) and `server.underscores_in_headers`.
pub(super) fn validate(
    req: &mut Request<Incoming>,
    server: &ServerConfig,
) -> Result<Present, ProxyError> {
    let present = Present::of(req.headers());
    let host = if present.has(Field::Host) {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(ProxyError::BadRequest("more than one Host header"));
        }
        host
    } else {
        None
    };
    match req.version() {
        // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request)
        // status code to any HTTP/1.1 request message that lacks a Host
        // header field", an absolute-form target included (nginx too).
        Version::HTTP_11 if host.is_none() => {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        Version::HTTP_2 if host.is_none() && req.uri().authority().is_none() => {
            return Err(ProxyError::BadRequest("missing :authority"));
        }
        _ => {}
    }
    if let Some(host) = host {
        if host.to_str().map_or(true, |h| !valid_host(h)) {
            return Err(ProxyError::BadRequest("invalid Host header"));
        }
        // RFC 9113 §8.3.1: a `host` naming another authority than
        // `:authority` makes an HTTP/2 request malformed.
        if req.version() == Version::HTTP_2 {
            if let Some(a) = req.uri().authority() {
                let default = if req.uri().scheme_str() == Some("https") {
                    ":443"
                } else {
                    ":80"
                };
                // Compared as RFC 3986 §6.2 normalises them: case, and a
                // default port written or not.
                let (a, h) = (a.as_str().as_bytes(), host.as_bytes());
                let a = a.strip_suffix(default.as_bytes()).unwrap_or(a);
                let h = h.strip_suffix(default.as_bytes()).unwrap_or(h);
                if !a.eq_ignore_ascii_case(h) {
                    return Err(ProxyError::BadRequest("Host differs from :authority"));
                }
            }
        }
    }
    // An absolute-form target (or HTTP/2 `:authority`) replaces Host, so
    // it gets Host's check: no userinfo (RFC 9110 §4.2.4), which would
    // reach the origin's Host and forwarding fields and key the cache apart.
    if let Some(a) = req.uri().authority() {
        if !valid_host(a.as_str()) {
            return Err(ProxyError::BadRequest(
                "invalid authority in the request target",
            ));
        }
    }
    // A reverse proxy tunnels nothing (405, as for a method it knows and
    // refuses); TRACE echoes the request, credentials included, back to
    // whoever can make a client send it (cross-site tracing).
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed);
    }
    let options = req.method() == Method::OPTIONS;
    if req.uri().path_and_query().is_none() && !options {
        return Err(ProxyError::BadRequest("invalid request target"));
    }
    if req.uri().path() == "*" && !options {
        // RFC 9112 §3.2.4: the asterisk-form is for OPTIONS only.
        return Err(ProxyError::BadRequest(
            "asterisk-form target with a method other than OPTIONS",
        ));
    }
    if present.has(Field::TransferEncoding) {
        if req.headers().contains_key(header::CONTENT_LENGTH) {
            return Err(ProxyError::BadRequest(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        transfer_codings(req.headers())?;
    }
    match target::normalize(req.uri()) {
        Ok(None) => {}
        Ok(Some(normal)) => *req.uri_mut() = normal,
        Err(e) => return Err(ProxyError::BadRequest(e.reason())),
    }
    if present.has(Field::Connection) {
        headers::strip_connection_options(req.headers_mut());
    }
    if req.version() == Version::HTTP_2 {
        // One `Cookie` for Vary, rule keys, sticky sessions and the
        // HTTP/1.1 upstream alike; joined before the fields are counted,
        // as the crumbs a browser splits it into (RFC 9113 §8.2.3) are
        // one field over HTTP/1.1.
        headers::join_cookies(req.headers_mut());
        http2_fields(req.headers())?;
        if header_list_size(req) > server.max_header_size {
            return Err(ProxyError::HeadTooLarge);
        }
        // Repeated equal values go upstream as one, as over HTTP/1.1
        // (whose parser joins them); differing ones are malformed. The
        // HTTP/2 server accepts both.
        crate::upstream::client::single_content_length(req.headers_mut())
            .map_err(|_| ProxyError::BadRequest("conflicting content-length fields"))?;
    }
    if present.has(Field::Underscored) && !server.underscores_in_headers {
        headers::drop_underscored(req.headers_mut());
    }
    Ok(present)
}

/// The size of an HTTP/2 request's header list as RFC 9113 §6.5.2 counts it
/// (each field's name and value plus 32 bytes, pseudo-header fields
/// included), in bytes. The h2 server's own limit is set above
/// `max_header_size` (see `server.rs`) so that a head between the two gets
/// Strata's `431`, stamped and counted, rather than the h2 library's bare one.
fn header_list_size<B>(req: &Request<B>) -> usize {
    let pseudo = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().scheme_str().map_or(0, str::len)
        + req.uri().authority().map_or(0, |a| a.as_str().len())
        + 4 * (32 + 8);
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum::<usize>()
        + pseudo
}

/// The HTTP/1.1 server refuses a head of more than [`MAX_FIELDS`] fields
/// with `431`; h2 has only a byte limit, so the count is checked here for
/// HTTP/2 alike. RFC 9113 §8.2.1: a value with leading or trailing
/// whitespace makes an HTTP/2 request malformed (an intermediary "MUST
/// NOT forward" it).
fn http2_fields(h: &http::HeaderMap) -> Result<(), ProxyError> {
    if h.len() > MAX_FIELDS {
        return Err(ProxyError::TooManyFields);
    }
    let padded = |v: &http::HeaderValue| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    };
    if h.values().any(padded) {
        return Err(ProxyError::BadRequest(
            "HTTP/2 field value with leading or trailing whitespace",
        ));
    }
    Ok(())
}

/// hyper's HTTP/1.1 limit on request header fields (its default, kept:
/// `server.rs`), applied to HTTP/2 requests too.
const MAX_FIELDS: usize = 100;

/// A request's `Transfer-Encoding` (all its lines) must be exactly one
/// `chunked`: hyper has already refused one whose last coding is not
/// `chunked`, and it decodes only that one, so any coding before it
/// (`gzip, chunked`) would be lost on the way upstream — `501`, as RFC 9112
/// §6.1 asks for a coding the server does not understand (and as nginx
/// answers) — and `chunked` applied twice is broken framing (§7.1): `400`.
fn transfer_codings(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !coding.is_empty() {
                return Err(ProxyError::NotImplemented("unsupported transfer coding"));
            }
        }
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest("chunked applied more than once"));
    }
    Ok(())
}

/// RFC 9110 §7.2 `Host = uri-host [ ":" port ]`, checked without
/// allocating: a reg-name, IPv4 or bracketed IPv6, and digits after ':'
/// (a port up to 65535). One table lookup per byte (it runs on every
/// request). Also the rule for an admin URL's authority
/// (`admin/target.rs`): what no request can be keyed under is a 400 there.
pub(crate) fn valid_host(h: &str) -> bool {
    let h = h.as_bytes();
    let (host, port) = match h.iter().rposition(|&b| b == b':') {
        Some(i) if !h[i..].contains(&b']') => (&h[..i], Some(&h[i + 1..])),
        _ => (h, None),
    };
    let host_ok = match host.strip_prefix(b"[") {
        Some(inner) => inner.strip_suffix(b"]").is_some_and(|ip| {
            !ip.is_empty()
                && ip
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }),
        // As nginx reads a host: no empty label inside (`a..b`), and not
        // empty once the root's trailing dot goes (`.`); each would be
        // keyed apart from the host it names.
        None => {
            host.iter().all(|&b| REG_NAME[usize::from(b)])
                && !host.windows(2).any(|w| w == b"..")
                && !host.strip_suffix(b".").unwrap_or(host).is_empty()
        }
    };
    // A port is digits, at most 65535 (empty: the scheme's default).
    let port_ok = |p: &[u8]| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
    };
    host_ok && port.is_none_or(port_ok)
}

/// The bytes of an RFC 3986 §3.2.2 reg-name (unreserved, sub-delims, and
/// `%` of pct-encoded), as a table indexed by byte.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// The authority the client asked for: the URI's (absolute-form, HTTP/2)
/// or else the Host header. Borrowed, so the hit path does not allocate.
/// Only for a request that passed [`validate`], which checked the Host
/// header's syntax once (not again here: it runs on every hit).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            debug_assert!(valid_host(host), "request_host before validate");
            Some(host)
        }
    }
}

/// [`request_host`] as an owned `Authority` (for invalidation).
pub fn request_authority<B>(req: &Request<B>) -> Option<http::uri::Authority> {
    request_host(req).and_then(|h| h.parse().ok())
}

/// Whether `req` is an HTTP/2 request that declares an empty body
/// (`content-length: 0`) but has not ended its stream: [`empty_body_end`]
/// must see the end before it goes upstream.
pub fn declared_empty_but_open(req: &Request<Incoming>) -> bool {
    use http_body::Body;
    req.version() == Version::HTTP_2
        && req.body().size_hint().exact() == Some(0)
        && !req.body().is_end_stream()
}

/// Waits (at most `idle` between frames) for the end of the stream of a
/// request [`declared_empty_but_open`]. A `content-length: 0` request went
/// upstream complete at its HEADERS, so `DATA` sent after them (malformed,
/// RFC 9113 §8.1.1) reached the client as a reset while the origin acted
/// on the request; bodies with a length hold back the frame that
/// completes it instead (`server::deadline::RequestBody`). `DATA` with
/// bytes is a `400`, a stream that does not end a `408`.
pub async fn empty_body_end(
    req: &mut Request<Incoming>,
    idle: std::time::Duration,
) -> Result<(), ProxyError> {
    use http_body_util::BodyExt;
    loop {
        match tokio::time::timeout(idle, req.body_mut().frame()).await {
            Err(_) => return Err(ProxyError::BodyStalled),
            Ok(None) => return Ok(()),
            Ok(Some(Ok(frame))) if frame.data_ref().is_none_or(|d| d.is_empty()) => {}
            Ok(Some(_)) => {
                return Err(ProxyError::BadRequest(
                    "request body longer than its content-length",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 request's repeated equal `content-length` went upstream as
    /// two fields; differing ones are a `400`.
    #[test]
    fn repeated_content_length_is_one_value_or_malformed() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.append(header::CONTENT_LENGTH, "5".parse().unwrap());
        let single_content_length = crate::upstream::client::single_content_length;
        assert!(single_content_length(&mut h).is_ok());
        assert_eq!(h.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        h.append(header::CONTENT_LENGTH, "6".parse().unwrap());
        assert!(single_content_length(&mut h).is_err());
        let mut none = HeaderMap::new();
        assert!(single_content_length(&mut none).is_ok());
    }

    #[test]
    fn present_notes_the_fields_the_hit_path_reads() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert(header::USER_AGENT, "x".parse().unwrap());
        h.append(header::PRAGMA, "no-cache".parse().unwrap());
        h.append(header::PRAGMA, "x".parse().unwrap());
        let p = Present::of(&h);
        assert!(p.has(Field::Host) && p.has(Field::Pragma));
        for absent in [
            Field::TransferEncoding,
            Field::Connection,
            Field::Upgrade,
            Field::CacheControl,
            Field::AcceptEncoding,
            Field::Conditional,
        ] {
            assert!(!p.has(absent), "{absent:?}");
            assert!(Present::ALL.has(absent));
        }
        for (name, field) in [
            (header::TRANSFER_ENCODING, Field::TransferEncoding),
            (header::CONNECTION, Field::Connection),
            (header::UPGRADE, Field::Upgrade),
            (header::CACHE_CONTROL, Field::CacheControl),
            (header::ACCEPT_ENCODING, Field::AcceptEncoding),
        ] {
            h.insert(name, "v".parse().unwrap());
            assert!(Present::of(&h).has(field), "{field:?}");
        }
        for name in [
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            header::RANGE,
            header::IF_RANGE,
        ] {
            let mut one = HeaderMap::new();
            one.insert(name.clone(), "v".parse().unwrap());
            assert_eq!(
                Present::of(&one),
                Present(Field::Conditional as u16),
                "{name}"
            );
        }
        assert_eq!(Present::of(&HeaderMap::new()), Present(0));
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:443",
            "[::1]",
            "a_b",
            "h:65535",
            "h:",
            "example.com.",
            "example.com.:80",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "u@h",
            "h:port",
            "h:123456",
            "h:99999",
            "h:65536",
            "[::1",
            "h?x",
            ":80",
            // An empty label, or nothing but the root (nginx: 400 too).
            "example.com..",
            "a..b",
            ".",
            ".:80",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}

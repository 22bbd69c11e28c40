//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop fields are removed
//! in both directions, including those named by `Connection`. The fields
//! that tell an origin who asked and how (`X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `Forwarded` (RFC 7239)) are
//! Strata's (SPEC §10): a client's own values reach the origin only when
//! its peer address is in `server.trusted_proxies`, because the cache key
//! does not hold them and an origin that reflects them would otherwise
//! store one client's value for everybody. The origin-steering fields of
//! `server.strip_request_headers` (`X-Original-URL` and friends) are
//! removed for the same reason.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// Fields that are always hop-by-hop (Connection first: see
/// [`strip_hop_by_hop`]).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The default `server.strip_request_headers`: fields some frameworks
/// (Symfony, IIS, Rails, Express method-override) honour to change the
/// path or method the origin acts on, which the cache key cannot see.
pub const STRIP_BY_DEFAULT: [&str; 4] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
];

/// The `Content-Length` of `headers`, when present and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The members of a comma-separated list field (RFC 9110 §5.6.1), every
/// line of it, trimmed; lines that are not visible ASCII are skipped.
pub fn list_members<'a>(
    headers: &'a HeaderMap,
    name: header::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The position of a lowercase field name in [`HOP_BY_HOP`], `Upgrade`
/// after them; one `match` on the name instead of nine comparisons.
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop fields, first those listed in `Connection`, then the
/// fixed set; `Upgrade` goes too unless `keep_upgrade` (a WebSocket
/// handshake being forwarded).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the message's few field names marks which of these
    // are present (usually none; on a response often just `Connection`),
    // and only those are removed, not each of the nine by a hashed lookup.
    let upgrade = (!keep_upgrade).then_some(&header::UPGRADE);
    let hop = || HOP_BY_HOP.iter().chain(upgrade);
    let mut present = 0u16;
    for k in headers.keys() {
        match hop_index(k.as_str()) {
            Some(i) if i < HOP_BY_HOP.len() || !keep_upgrade => present |= 1 << i,
            _ => {}
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // HOP_BY_HOP[0], Connection: the names it lists go first, in its
        // order. A listed hop-by-hop name (usually `keep-alive`) is taken
        // from the fixed set, not parsed, and only when present: removing
        // an absent name changes nothing, so the order of what stays is
        // the same, and the usual `Connection: keep-alive` allocates
        // nothing.
        let mut named: Vec<HeaderName> = Vec::new();
        for token in list_members(headers, header::CONNECTION) {
            if keep_upgrade && token.eq_ignore_ascii_case(header::UPGRADE.as_str()) {
                continue;
            }
            let index = if token.bytes().all(|b| !b.is_ascii_uppercase()) {
                hop_index(token)
            } else {
                hop().position(|h| h.as_str().eq_ignore_ascii_case(token))
            };
            match index {
                Some(i) if present & (1 << i) != 0 => {
                    present &= !(1 << i);
                    named.extend(hop().nth(i).cloned());
                }
                Some(_) => {}
                None => named.extend(connection_option(token)),
            }
        }
        for name in named {
            headers.remove(&name);
        }
    }
    // In the fixed order: `remove` swaps the last field into the hole, so
    // the order of removals decides the order of what stays.
    for (i, name) in hop().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// RFC 9110 §7.6.1: the fields a client names in `Connection` are meant
/// for Strata alone and do not go upstream. They are removed when the
/// request is validated, before the cache key, `Vary`, the rules and the
/// upstream request read it, so that all of them see the request the
/// origin gets: a stored variant is keyed by the values the origin saw.
/// `Host` is never removed (end-to-end, and the key's authority: a client
/// naming it would otherwise have the origin answer for another host under
/// this one's key); the hop-by-hop names, `close` and `Upgrade` are left to
/// [`strip_hop_by_hop`]. No work without a `Connection` field.
pub fn strip_connection_options(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let named: Vec<HeaderName> = list_members(headers, header::CONNECTION)
        .filter_map(connection_option)
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// The end-to-end field a `Connection` option names, if any: not `close`,
/// a hop-by-hop name or `Upgrade` (which [`strip_hop_by_hop`] handles), and
/// never `Host` (end-to-end, and the cache key's authority).
/// Compared before parsing, so the usual `keep-alive` or `close`
/// allocates nothing.
fn connection_option(token: &str) -> Option<HeaderName> {
    let ours = token.eq_ignore_ascii_case("close")
        || HOP_BY_HOP
            .iter()
            .chain([&header::UPGRADE, &header::HOST])
            .any(|h| h.as_str().eq_ignore_ascii_case(token));
    if ours {
        return None;
    }
    HeaderName::from_bytes(token.as_bytes()).ok()
}

/// Whether a field name is one of the forwarding fields Strata owns:
/// `Forwarded` or any `X-Forwarded-*`, also spelt with `_` for `-` (CGI,
/// PHP-FPM, Rack and WSGI servers read `X_Forwarded_Host` as the same
/// `HTTP_X_FORWARDED_HOST` as `X-Forwarded-Host`). `name` is lowercase.
pub(super) fn forwarding_field(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-forwarded-";
    let b = name.as_bytes();
    same_dashed(b, b"forwarded")
        || (b.len() > PREFIX.len() && same_dashed(&b[..PREFIX.len()], PREFIX))
}

/// Removes request fields whose name holds `_`, as nginx does by default
/// (`underscores_in_headers off`): CGI, PHP-FPM, Rack and WSGI servers
/// read `X_Lang` as the same `HTTP_X_LANG` variable as `X-Lang`, so such a
/// field would reach the origin as one that the cache key (`key.headers`)
/// and `Vary` matching never saw under that name. Called only when
/// validation's one scan of the names saw such a field.
pub fn drop_underscored(headers: &mut HeaderMap) {
    let underscored = |k: &HeaderName| k.as_str().as_bytes().contains(&b'_');
    let names: Vec<HeaderName> = headers.keys().filter(|k| underscored(k)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// `name` equals `dashed` when each `_` of `name` is read as `-`.
fn same_dashed(name: &[u8], dashed: &[u8]) -> bool {
    name.len() == dashed.len()
        && name
            .iter()
            .zip(dashed)
            .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
}

/// The `Via` entry for a message received with `version`.
pub fn via_value(version: Version) -> HeaderValue {
    // Constants: `from_static` outside a const context checks every byte
    // of the text on each call.
    const VIA_09: HeaderValue = HeaderValue::from_static("0.9 strata");
    const VIA_10: HeaderValue = HeaderValue::from_static("1.0 strata");
    const VIA_11: HeaderValue = HeaderValue::from_static("1.1 strata");
    const VIA_2: HeaderValue = HeaderValue::from_static("2 strata");
    const VIA_3: HeaderValue = HeaderValue::from_static("3 strata");
    match version {
        Version::HTTP_09 => VIA_09,
        Version::HTTP_10 => VIA_10,
        Version::HTTP_2 => VIA_2,
        Version::HTTP_3 => VIA_3,
        _ => VIA_11,
    }
}

/// Who forwarded a request, for [`add_forwarding`].
#[derive(Debug, Clone, Copy)]
pub struct Forwarder {
    /// The peer address of the client connection.
    pub peer: IpAddr,
    pub https: bool,
    /// The peer is in `server.trusted_proxies`: its forwarding fields are
    /// kept (and appended to), not replaced.
    pub trusted: bool,
}

/// Sets the forwarding fields on a request going upstream (see the module
/// doc): from an untrusted peer every client value is dropped first; from
/// a trusted one `X-Forwarded-For` and `Forwarded` are appended to and
/// `X-Forwarded-Proto` / `X-Forwarded-Host` kept when present. `host` is
/// the `Host` the request goes upstream with.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    by: Forwarder,
    host: Option<&HeaderValue>,
    version: Version,
) {
    // Room for the five fields at once: a request with few fields (a
    // load generator's, a health probe's) would otherwise grow and rehash
    // the map twice or three times on the way.
    headers.reserve(5);
    // One look at the names: a client's own forwarding fields are rare,
    // and without them none of the lookups below is needed. From an
    // untrusted peer every one goes, not only the four Strata sets:
    // frameworks act on `X-Forwarded-Scheme`, `-Port`, `-Prefix`, `-Ssl`
    // (redirects, links) and the key does not hold them.
    let mut kept = headers.keys().any(|k| forwarding_field(k.as_str()));
    if kept && !by.trusted {
        let theirs: Vec<HeaderName> = headers
            .keys()
            .filter(|k| forwarding_field(k.as_str()))
            .cloned()
            .collect();
        for name in theirs {
            headers.remove(name);
        }
        kept = false;
    }
    let scheme = if by.https { "https" } else { "http" };
    let peer = by.peer.to_canonical();
    let mut ip_buf = String::with_capacity(64);
    for prior in kept
        .then(|| headers.get_all(&X_FORWARDED_FOR))
        .into_iter()
        .flatten()
    {
        if let Ok(prior) = prior.to_str() {
            if !prior.trim().is_empty() {
                ip_buf.push_str(prior.trim());
                ip_buf.push_str(", ");
            }
        }
    }
    push_ip(&mut ip_buf, peer);
    if let Some(v) = owned_value(ip_buf) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !kept || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
    if let Some(host) = host {
        if !kept || !headers.contains_key(&X_FORWARDED_HOST) {
            // A clone of the value (a reference count), not of its text.
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
    let host = host.and_then(|h| h.to_str().ok());
    // RFC 7239 §4: an IPv6 node and a host with ':' are quoted strings.
    // (Writing to a String cannot fail.)
    let mut forwarded = String::with_capacity(96);
    for prior in kept
        .then(|| headers.get_all(header::FORWARDED))
        .into_iter()
        .flatten()
    {
        if let Ok(prior) = prior.to_str() {
            if !prior.trim().is_empty() {
                forwarded.push_str(prior.trim());
                forwarded.push_str(", ");
            }
        }
    }
    match peer {
        IpAddr::V4(_) => {
            forwarded.push_str("for=");
            push_ip(&mut forwarded, peer);
        }
        IpAddr::V6(_) => {
            forwarded.push_str("for=\"[");
            push_ip(&mut forwarded, peer);
            forwarded.push_str("]\"");
        }
    }
    if let Some(host) = host {
        let token = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        forwarded.push_str(if token { ";host=" } else { ";host=\"" });
        forwarded.push_str(host);
        if !token {
            forwarded.push('"');
        }
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(scheme);
    if let Some(v) = owned_value(forwarded) {
        headers.insert(header::FORWARDED, v);
    }
    headers.append(header::VIA, via_value(version));
}

/// `text` as a field value, without copying it (`HeaderValue::from_str`
/// copies into a new allocation); `None` if it is not a valid value.
fn owned_value(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text.into_bytes())).ok()
}

/// Appends `ip` as text. An IPv4 address is written an octet at a time
/// with `itoa`: through `Display` it costs about a thousand instructions,
/// and every forwarded request writes it twice.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        // Writing to a String cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Removes `names` (`server.strip_request_headers`), also when spelt with
/// `_` for `-` (see [`forwarding_field`]).
pub fn strip_listed(headers: &mut HeaderMap, names: &[HeaderName]) {
    let listed = |k: &HeaderName| {
        names
            .iter()
            .any(|n| same_dashed(k.as_str().as_bytes(), n.as_str().as_bytes()))
    };
    if headers.keys().any(listed) {
        let found: Vec<HeaderName> = headers.keys().filter(|k| listed(k)).cloned().collect();
        for name in found {
            headers.remove(name);
        }
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `Cookie` into several
/// fields; going to an HTTP/1.1 upstream they "MUST be concatenated into a
/// single octet string using the two-octet delimiter of 0x3b, 0x20" (an
/// origin may read only one `Cookie` line). Done when the request is
/// validated, so the cache key and Vary see the same field as HTTP/1.1
/// requests send. No work for one field or none.
pub fn join_cookies(h: &mut HeaderMap) {
    let mut fields = h.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_fixed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn strips_every_fixed_field_at_once() {
        for keep_upgrade in [false, true] {
            let mut h = HeaderMap::new();
            for name in &HOP_BY_HOP {
                h.append(name, HeaderValue::from_static("x"));
                h.append(name, HeaderValue::from_static("y"));
            }
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, keep_upgrade);
            assert!(h.contains_key("x-kept"));
            assert_eq!(h.contains_key(header::UPGRADE), keep_upgrade);
            assert_eq!(h.len(), 1 + usize::from(keep_upgrade), "{h:?}");
        }
    }

    /// The fields that stay keep the order they had before the one-pass
    /// search: removals happen in the fixed order (`HeaderMap::remove`
    /// moves the last field into the hole). A chunked nginx response.
    #[test]
    fn what_stays_keeps_its_order() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("server", "nginx"),
            ("date", "Mon, 30 Nov 2026 05:00:26 GMT"),
            ("content-type", "text/html"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
            ("vary", "Accept-Encoding"),
            ("etag", "\"a\""),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["server", "date", "content-type", "vary", "etag"]);
    }

    /// The hop-by-hop removal as it was first written: every name
    /// `Connection` lists parsed and removed in order, then the fixed set
    /// in order.
    fn strip_reference(headers: &mut HeaderMap, keep_upgrade: bool) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(&name);
        }
        for name in HOP_BY_HOP.iter() {
            headers.remove(name);
        }
        if !keep_upgrade {
            headers.remove(header::UPGRADE);
        }
    }

    #[test]
    fn connection_options_go_but_host_and_hop_by_hop_names_stay_for_later() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("close, HOST, X-A"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, upgrade, Cookie"),
        );
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(header::COOKIE, HeaderValue::from_static("s=1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_connection_options(&mut h);
        assert!(!h.contains_key("x-a") && !h.contains_key(header::COOKIE));
        for kept in ["host", "keep-alive", "upgrade", "connection"] {
            assert!(h.contains_key(kept), "{kept}");
        }
        // And the later hop-by-hop pass never takes Host either.
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::HOST], "a.test");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarding_fields_in_either_spelling() {
        for name in [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-scheme",
            "x_forwarded_host",
            "x-forwarded_port",
        ] {
            assert!(forwarding_field(name), "{name}");
        }
        for name in [
            "x-forwarded-",
            "x-forwarded",
            "forwarded-for",
            "x-forwardedfor",
            "via",
        ] {
            assert!(!forwarding_field(name), "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert("x_original_url", HeaderValue::from_static("/admin"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        h.insert("x-originalurl", HeaderValue::from_static("kept"));
        strip_listed(&mut h, &[HeaderName::from_static("x-original-url")]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-originalurl"));
    }

    #[test]
    fn hop_index_follows_the_fixed_order() {
        for (i, name) in HOP_BY_HOP.iter().chain([&header::UPGRADE]).enumerate() {
            assert_eq!(hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_index("vary"), None);
        assert_eq!(hop_index("Connection"), None, "lowercase names only");
    }

    #[test]
    fn agrees_with_the_reference_on_random_messages() {
        const NAMES: [&str; 12] = [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "transfer-encoding",
            "proxy-connection",
            "x-secret",
            "vary",
            "etag",
            "server",
            "date",
            "trailer",
        ];
        const TOKENS: [&str; 10] = [
            "keep-alive",
            "Keep-Alive",
            "close",
            "X-Secret",
            "upgrade",
            "TE",
            "",
            " vary ",
            "connection",
            "bad name",
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for round in 0..50_000 {
            let mut h = HeaderMap::new();
            for _ in 0..next(9) {
                let name = NAMES[next(NAMES.len())];
                let value = if name == "connection" {
                    (0..1 + next(3))
                        .map(|_| TOKENS[next(TOKENS.len())])
                        .collect::<Vec<_>>()
                        .join(",")
                } else {
                    format!("v{}", next(100))
                };
                h.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            let keep_upgrade = next(2) == 0;
            let mut want = h.clone();
            strip_reference(&mut want, keep_upgrade);
            let mut got = h.clone();
            strip_hop_by_hop(&mut got, keep_upgrade);
            let order = |m: &HeaderMap| -> Vec<(String, Vec<u8>)> {
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect()
            };
            assert_eq!(
                order(&got),
                order(&want),
                "round {round}: {h:?} {keep_upgrade}"
            );
        }
    }

    fn client_fields() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=10.0.0.1"));
        h
    }

    #[test]
    fn untrusted_client_values_are_replaced() {
        let mut h = client_fields();
        let by = Forwarder {
            peer: "127.0.0.1".parse().unwrap(),
            https: false,
            trusted: false,
        };
        let host = HeaderValue::from_static("shop.example:8080");
        add_forwarding(&mut h, by, Some(&host), Version::HTTP_11);
        assert_eq!(h[&X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.example:8080");
        assert_eq!(
            h[header::FORWARDED],
            "for=127.0.0.1;host=\"shop.example:8080\";proto=http"
        );
        assert_eq!(h[header::VIA], "1.1 strata");
    }

    #[test]
    fn trusted_client_values_are_kept_and_appended() {
        let mut h = client_fields();
        let by = Forwarder {
            peer: "::1".parse().unwrap(),
            https: false,
            trusted: true,
        };
        let host = HeaderValue::from_static("shop.example");
        add_forwarding(&mut h, by, Some(&host), Version::HTTP_11);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, ::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "evil.example");
        assert_eq!(
            h[header::FORWARDED],
            "for=10.0.0.1, for=\"[::1]\";host=shop.example;proto=http"
        );
    }
}

//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop fields are removed
//! in both directions, including those named by `Connection`; forwarded
//! requests carry `X-Forwarded-For`, `X-Forwarded-Proto` and `Via`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// Fields that are always hop-by-hop.
const HOP_BY_HOP: [HeaderName; 8] = [
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

/// The `Content-Length` of `headers`, when present and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Removes hop-by-hop fields, first those listed in `Connection`, then the
/// fixed set; `Upgrade` goes too unless `keep_upgrade` (a WebSocket
/// handshake being forwarded).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
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
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The `Via` entry for a message received with `version`.
pub fn via_value(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_09 => "0.9 strata",
        Version::HTTP_10 => "1.0 strata",
        Version::HTTP_2 => "2 strata",
        Version::HTTP_3 => "3 strata",
        _ => "1.1 strata",
    })
}

/// Sets the forwarding fields on a request going upstream.
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, https: bool, version: Version) {
    let mut ip_buf = String::with_capacity(64);
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(prior) = prior.to_str() {
            if !prior.trim().is_empty() {
                ip_buf.push_str(prior.trim());
                ip_buf.push_str(", ");
            }
        }
    }
    ip_buf.push_str(&client.to_string());
    if let Ok(v) = HeaderValue::from_str(&ip_buf) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    headers.append(header::VIA, via_value(version));
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
    fn forwarding_appends() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        add_forwarding(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            false,
            Version::HTTP_11,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[header::VIA], "1.1 strata");
    }
}

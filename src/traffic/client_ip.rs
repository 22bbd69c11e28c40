//! Who the client is (`server.trusted_proxies`, nginx's `set_real_ip_from`
//! with `real_ip_recursive on`, HAProxy's `option forwardfor` behind a
//! trusted `src`): when the peer is a trusted proxy, the client IP is the
//! first `X-Forwarded-For` hop, reading from the right, that is not itself
//! trusted; otherwise it is the peer address. A client outside the trusted
//! networks can therefore never choose its own IP by sending the header.
//!
//! CIDR matching is the `ipnet` crate's.

use std::net::IpAddr;

use http::header::HeaderMap;
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The networks whose `X-Forwarded-For` is believed. Empty = none (the
/// client IP is always the peer).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in a trusted network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client IP of a request from `peer` with `headers`: see the
    /// module doc. A hop that is not an IP address ends the walk at the
    /// last trusted hop (what lies left of it cannot be believed).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.nets.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut last = peer;
        let fields = headers.get_all(X_FORWARDED_FOR).iter().rev();
        for field in fields {
            let Ok(text) = field.to_str() else {
                return last;
            };
            for hop in text.rsplit(',') {
                let hop = hop.trim();
                if hop.is_empty() {
                    continue;
                }
                let Some(ip) = parse_hop(hop) else {
                    return last;
                };
                if !self.contains(ip) {
                    return ip;
                }
                last = ip;
            }
        }
        last
    }
}

/// `1.2.3.4`, `1.2.3.4:567`, `::1`, `[::1]` or `[::1]:567`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rightmost_untrusted_hop() {
        let t = trusted();
        let h = headers(&["6.6.6.6, 1.2.3.4, 10.0.0.2"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // Several fields read as one list.
        let h = headers(&["6.6.6.6", "1.2.3.4:555, 10.0.0.2"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // IPv6 peer and a bracketed hop.
        let h = headers(&["[2001:db8::1]:80"]);
        assert_eq!(t.client_ip(ip("::1"), &h), ip("2001:db8::1"));
    }

    #[test]
    fn untrusted_peer_or_no_config_is_the_peer() {
        let h = headers(&["1.2.3.4"]);
        assert_eq!(trusted().client_ip(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            trusted().client_ip(ip("::ffff:10.0.0.1"), &h),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn all_trusted_or_garbage() {
        let t = trusted();
        let h = headers(&["10.1.1.1, 10.0.0.2"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.1.1.1"));
        let h = headers(&["1.2.3.4, garbage, 10.0.0.2"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.2"));
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }
}

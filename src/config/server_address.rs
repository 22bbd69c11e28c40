//! One spelling per upstream server address (`upstream.servers`): a host
//! in lower case or a canonical IP address, a port without leading
//! zeros, so that a server given twice in two spellings is seen as one
//! (and refused), and hosts that read as numbers but are no dotted-quad
//! IPv4 address (resolvers disagree on them) are recognised.

use http::uri::Authority;

/// Whether `host` reads as a number (its last label is digits, or hex
/// `0x…`): an IPv4 address in some spelling (the WHATWG URL rule).
pub(super) fn numeric_host(host: &str) -> bool {
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// `authority` in one spelling: the host in lower case (an IP address in
/// its canonical form), the port without leading zeros. `None` if it has
/// no port (refused before this is asked).
pub(super) fn canonical(authority: &Authority) -> Option<Authority> {
    let port = authority.port_u16()?;
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let host = match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    };
    format!("{host}:{port}").parse().ok()
}

//! `strata healthcheck`: a dependency-free probe of the admin `/health`
//! endpoint for container `HEALTHCHECK`s (the runtime image has no curl).
//! One blocking HTTP/1.1 GET with `Connection: close`, bounded in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use http::Uri;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid URL {0:?}: expected http://host:port/path")]
    Url(String),
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: not an HTTP response")]
    Response { url: String },
    /// No connection, or no status line, within the probe's bound.
    #[error("{url}: timed out after {after:?} (no answer)")]
    Timeout { url: String, after: Duration },
}

/// The admin `/health` URL for an admin listener address; an unspecified
/// address (0.0.0.0, ::) is probed on loopback.
pub fn health_url(admin: SocketAddr) -> String {
    let ip = match admin.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/health", SocketAddr::new(ip, admin.port()))
}

/// `url` with `/health` as its path when it names none
/// (`http://127.0.0.1:9090` or `…:9090/`: the admin root is a `404`).
pub fn with_health_path(url: String) -> String {
    match url.parse::<Uri>() {
        Ok(uri)
            if uri.authority().is_some()
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none() =>
        {
            format!("{}/health", url.trim_end_matches('/'))
        }
        _ => url,
    }
}

/// GETs `url` and returns the response status.
pub fn get_status(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let uri: Uri = url.parse().map_err(|_| ProbeError::Url(url.into()))?;
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ProbeError::Url(url.into()));
    };
    // A socket timeout shows as `WouldBlock` ("Resource temporarily
    // unavailable") on reads and writes, `TimedOut` on connect.
    let io = |source: std::io::Error| match source.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ProbeError::Timeout {
            url: url.to_string(),
            after: timeout,
        },
        _ => ProbeError::Io {
            url: url.to_string(),
            source,
        },
    };
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| ProbeError::Url(url.into()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: strata-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    // The status line is all that is needed: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        let n = stream.read(&mut head[len..]).map_err(io)?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let mut parts = line.split_ascii_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(status)) if v.starts_with("HTTP/") => Ok(status),
        _ => Err(ProbeError::Response { url: url.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_admin_address_is_probed_on_loopback() {
        assert_eq!(
            health_url("0.0.0.0:9090".parse().unwrap()),
            "http://127.0.0.1:9090/health"
        );
        assert_eq!(
            health_url("[::]:9090".parse().unwrap()),
            "http://[::1]:9090/health"
        );
        assert_eq!(
            health_url("10.0.0.5:9090".parse().unwrap()),
            "http://10.0.0.5:9090/health"
        );
    }

    /// It said "Resource temporarily unavailable (os error 11)".
    #[test]
    fn a_silent_server_is_a_timeout_that_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        // Accepted by the kernel (backlog), never answered.
        let e = get_status(&url, Duration::from_millis(200)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{url}: timed out after 200ms (no answer)")
        );
        drop(listener);
    }

    #[test]
    fn bad_urls_are_refused() {
        let t = Duration::from_millis(100);
        assert!(matches!(get_status("ftp://x/", t), Err(ProbeError::Url(_))));
        assert!(matches!(get_status("/health", t), Err(ProbeError::Url(_))));
    }
}

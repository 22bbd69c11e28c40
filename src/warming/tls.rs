//! Warming `https://` URLs through Strata's own TLS listener, so that
//! they land under the `https` key that TLS clients read (README:
//! requests over TLS are cached under an `https` key of their own). A
//! warmed `https://` URL went to the plain listener and filled the `http`
//! entry, which no TLS client reads.
//!
//! The connection is to a loopback address of this process, so the trust
//! anchors are the listener's own configured certificates (every one of
//! each chain, read from the files the configuration names at the start
//! of the round): a URL whose host no configured certificate covers, or a
//! certificate expired, fails to warm as it would fail for a client. One
//! HTTP/1.1 connection per request (`hyper::client::conn`): warming is
//! paced, and the plain listener's pooled client needs no TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsConfig;

/// How warming reaches the TLS listener: its loopback address, and a
/// client configuration that trusts its certificates.
#[derive(Clone)]
pub struct TlsTarget {
    addr: SocketAddr,
    connector: TlsConnector,
}

impl TlsTarget {
    /// `None` (logged) when no certificate of `config` can be read as a
    /// trust anchor: `https://` URLs then warm through the plain listener.
    pub fn new(addr: SocketAddr, config: &TlsConfig) -> Option<TlsTarget> {
        let mut roots = rustls::RootCertStore::empty();
        for pair in &config.certificates {
            let Ok(chain) = CertificateDer::pem_file_iter(&pair.cert) else {
                continue;
            };
            for cert in chain.flatten() {
                // A leaf that is not self-signed is no anchor of its own
                // chain; its issuer, next in the file, is.
                let _ = roots.add(cert);
            }
        }
        if roots.is_empty() {
            tracing::warn!(
                "warming: the TLS certificates cannot be read; https:// URLs warm the http entries"
            );
            return None;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(TlsTarget {
            addr,
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// Sends `req` over a new TLS connection, SNI the `Host` without its
    /// port; `None` on any failure (connect, handshake, exchange).
    pub async fn send(&self, req: Request<Empty<Bytes>>) -> Option<Response<Incoming>> {
        let host = req
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .to_string();
        let name = sni(&host)?;
        let tcp = TcpStream::connect(self.addr).await.ok()?;
        let stream = self.connector.connect(name, tcp).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "warming: TLS connection ended");
            }
        });
        send.send_request(req).await.ok()
    }
}

/// The server name of a `Host` value (`example.com:8443`, `[::1]:8443`).
fn sni(host: &str) -> Option<ServerName<'static>> {
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(name.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_drop_the_port() {
        assert_eq!(
            sni("secure.example:8443"),
            ServerName::try_from("secure.example").ok()
        );
        assert_eq!(sni("[::1]:8443"), ServerName::try_from("::1").ok());
        assert_eq!(sni("a b"), None);
    }
}

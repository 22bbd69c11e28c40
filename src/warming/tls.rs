//! Warming `https://` URLs through Strata's own TLS listener, so that
//! they land under the `https` key that TLS clients read (README:
//! requests over TLS are cached under an `https` key of their own). A
//! warmed `https://` URL went to the plain listener and filled the `http`
//! entry, which no TLS client reads.
//!
//! The connection is to a loopback address of this process, so the
//! server is trusted when it presents one of the listener's own
//! configured certificates (the first of each file the configuration
//! names, read at the start of the round): pinned, not checked against a
//! CA, so a self-signed certificate made with `openssl req -x509` (a CA
//! certificate, which WebPKI refuses as a server's) warms too. One
//! HTTP/1.1 connection per request (`hyper::client::conn`): warming is
//! paced, and the plain listener's pooled client needs no TLS. A failed
//! handshake is logged at `warn` once per round.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsConfig;

/// How warming reaches the TLS listener: its loopback address, and a
/// client configuration that trusts its certificates.
#[derive(Clone)]
pub struct TlsTarget {
    addr: SocketAddr,
    connector: TlsConnector,
    /// Whether a failed handshake was logged this round.
    warned: Arc<AtomicBool>,
}

impl TlsTarget {
    /// `None` (logged) when no certificate of `config` can be read:
    /// `https://` URLs then warm through the plain listener.
    pub fn new(addr: SocketAddr, config: &TlsConfig) -> Option<TlsTarget> {
        let pinned: Vec<CertificateDer<'static>> = config
            .certificates
            .iter()
            .filter_map(|pair| {
                CertificateDer::pem_file_iter(&pair.cert)
                    .ok()?
                    .flatten()
                    .next()
            })
            .collect();
        if pinned.is_empty() {
            tracing::warn!(
                "warming: the TLS certificates cannot be read; https:// URLs warm the http entries"
            );
            return None;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(TlsTarget {
            addr,
            connector: TlsConnector::from(Arc::new(client)),
            warned: Arc::default(),
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
        let stream = match self.connector.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(error) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "warming: TLS handshake with the own listener failed; https:// URLs are not warmed");
                }
                return None;
            }
        };
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

/// Trusts exactly the listener's own certificates (compared byte for
/// byte); the handshake's signatures are still verified, so the peer
/// holds the key.
#[derive(Debug)]
struct Pinned {
    pinned: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
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

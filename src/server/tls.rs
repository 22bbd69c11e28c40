//! TLS termination with rustls: PEM certificate chains and keys, several
//! certificates chosen by SNI (the first is the default), ALPN `h2` and
//! `http/1.1`, TLS 1.2 and 1.3 only, and a bounded handshake. Certificates
//! are replaced on reload without touching established connections.
//! Keys are read by [`key`], which says why one cannot be used.
//! Each loaded pair keeps its leaf's validity ([`Leaf`]): what
//! `cert_expiring` judges is what the listener serves, not the files.

pub mod key;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{CertPair, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `at`: where the config names the file (`strata.toml:5:8:
    /// server.tls.cert`).
    #[error("{at}: {path}: cannot read certificate chain: {reason}")]
    Cert {
        at: String,
        path: PathBuf,
        reason: String,
    },
    /// `index` counts from 1 in the chain's order (leaf first).
    #[error("{at}: {path}: certificate {index} of {count} cannot be parsed: {reason}")]
    Unparsable {
        at: String,
        path: PathBuf,
        index: usize,
        count: usize,
        reason: String,
    },
    /// `at`: where the config names the key (`strata.toml:6:7:
    /// server.tls.key`).
    #[error("{at}: {path}: {problem}")]
    Key {
        at: String,
        path: PathBuf,
        problem: key::KeyProblem,
    },
    /// An X.509 v1 end-entity certificate (`openssl x509 -req -signkey`
    /// without extensions makes one): rustls cannot parse it to check the
    /// key, and TLS clients that verify with webpki refuse it.
    #[error("{at}: {path}: an X.509 v{version} certificate; TLS needs v3 (make one with `openssl req -x509`, or give `openssl x509 -req` an -extfile)")]
    Version {
        at: String,
        path: PathBuf,
        version: u32,
    },
    #[error("{at}: {cert} and {key}: the private key does not match the certificate")]
    Mismatch {
        at: String,
        cert: PathBuf,
        key: PathBuf,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A loaded TLS configuration: the rustls server config (certificates,
/// SNI resolver, ALPN, versions), the handshake timeout, and the leaf of
/// each chain as it was parsed when loaded.
pub struct Certificates {
    server: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    leaves: Vec<Leaf>,
}

/// The end-entity certificate of one loaded chain, read from the DER that
/// is served (never from the file again: it may have been renewed or
/// removed since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The file it was loaded from (`cert` of its pair).
    pub path: PathBuf,
    /// The subject, as `CN=example.com`.
    pub subject: String,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// XXH3-64 of its DER: a certificate renewed at the same path (and
    /// with the same dates) is still another certificate.
    pub fingerprint: u64,
}

impl Certificates {
    /// Reads and checks every certificate/key pair of `config`.
    pub fn load(config: &TlsConfig) -> Result<Certificates, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut keys = Vec::with_capacity(config.certificates.len());
        let mut leaves = Vec::with_capacity(config.certificates.len());
        for pair in &config.certificates {
            let (key, leaf) = load_pair(pair, &provider)?;
            keys.push(Arc::new(key));
            leaves.push(leaf);
        }
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { keys }));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Certificates {
            server: Arc::new(server),
            handshake_timeout: config.handshake_timeout,
            leaves,
        })
    }

    /// The leaf of each pair, in the configuration's order (the default
    /// certificate first).
    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }
}

/// Accepts TLS connections; cheap to clone, clones share the certificates.
/// They sit behind an `ArcSwap`: a reload replaces them for the next
/// handshake, while established connections keep the ones they started
/// with.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<ArcSwap<Certificates>>,
}

impl Acceptor {
    pub fn new(config: &TlsConfig) -> Result<Acceptor, TlsError> {
        Ok(Acceptor {
            current: Arc::new(ArcSwap::from_pointee(Certificates::load(config)?)),
        })
    }

    /// Serves `certificates` from the next handshake on.
    pub fn replace(&self, certificates: Certificates) {
        self.current.store(Arc::new(certificates));
    }

    /// The certificates new handshakes get now: those loaded at start or
    /// by the last reload that loaded any (a refused reload keeps them).
    pub fn serving(&self) -> Arc<Certificates> {
        self.current.load_full()
    }

    /// Completes the handshake, or gives up after the handshake timeout.
    pub async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        let (acceptor, limit) = {
            let current = self.current.load();
            (
                TlsAcceptor::from(current.server.clone()),
                current.handshake_timeout,
            )
        };
        let handshake = async {
            let mut first = [0u8; 1];
            if matches!(stream.peek(&mut first).await, Ok(1)) && first[0].is_ascii_uppercase() {
                plain_http(stream).await;
                return Err(std::io::Error::other(
                    "a plain HTTP request on the TLS port",
                ));
            }
            acceptor.accept(stream).await
        };
        match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }
}

/// The answer to a plain HTTP request on the TLS port (its first byte a
/// method's letter; a TLS record starts with 22): a `400` that says so, as
/// nginx answers ("The plain HTTP request was sent to HTTPS port"), not a
/// bare TLS alert the client cannot read. The request head is read first
/// (up to 16 KiB), so that closing does not reset the connection before
/// the client reads the answer; the caller's handshake timeout bounds it.
async fn plain_http(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str =
        "400 Bad Request: this port speaks HTTPS, and a plain HTTP request was sent to it\n";
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nCache-Status: strata; fwd=bypass\r\nVia: 1.1 strata\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Validates every certificate/key pair of `config` (for `strata check`).
/// `Ok` holds warnings: a certificate outside its validity period now
/// (expired, or not yet valid) loads and is served, as nginx serves it,
/// but clients refuse it.
pub fn check(config: &TlsConfig) -> Result<Vec<String>, TlsError> {
    let loaded = Certificates::load(config)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut warnings = Vec::new();
    for (leaf, pair) in loaded.leaves().iter().zip(&config.certificates) {
        let date = |t: i64| {
            crate::alerts::event::rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
            )
        };
        let (path, at, subject) = (leaf.path.display(), &pair.cert_at, &leaf.subject);
        if leaf.not_after < now {
            warnings.push(format!(
                "{at}: certificate {path} ({subject}) expired at {}: clients will refuse it",
                date(leaf.not_after)
            ));
        } else if leaf.not_before > now {
            warnings.push(format!(
                "{at}: certificate {path} ({subject}) is not valid before {}: clients will refuse it until then",
                date(leaf.not_before)
            ));
        }
    }
    Ok(warnings)
}

/// The pair's chain and key, checked, and its leaf as served.
fn load_pair(
    pair: &CertPair,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(CertifiedKey, Leaf), TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        at: pair.cert_at.clone(),
        path: pair.cert.clone(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| cert_err(pem_reason(&e, &pair.cert)))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(pem_reason(&e, &pair.cert)))?;
    // rustls takes any DER and fails the handshake later: a chain with a
    // garbage block must be refused here, by `check` and by a reload.
    let mut leaf = None;
    for (i, der) in chain.iter().enumerate() {
        match x509_parser::parse_x509_certificate(der) {
            Err(e) => {
                return Err(TlsError::Unparsable {
                    at: pair.cert_at.clone(),
                    path: pair.cert.clone(),
                    index: i + 1,
                    count: chain.len(),
                    reason: e.to_string(),
                })
            }
            Ok((_, parsed)) if i == 0 => {
                let validity = parsed.validity();
                leaf = Some((
                    parsed.version().0 + 1,
                    Leaf {
                        path: pair.cert.clone(),
                        subject: parsed.subject().to_string(),
                        not_before: validity.not_before.timestamp(),
                        not_after: validity.not_after.timestamp(),
                        fingerprint: xxh3_64(der),
                    },
                ));
            }
            Ok(_) => {}
        }
    }
    let Some((version, leaf)) = leaf else {
        // An empty chain.
        return Err(cert_err("no CERTIFICATE block found".into()));
    };
    // Told apart from a key mismatch, which is how rustls's key check
    // reported it.
    if version < 3 {
        return Err(TlsError::Version {
            at: pair.cert_at.clone(),
            path: pair.cert.clone(),
            version,
        });
    }
    let key_err = |problem: key::KeyProblem| TlsError::Key {
        at: pair.key_at.clone(),
        path: pair.key.clone(),
        problem,
    };
    let key = key::read(&pair.key).map_err(key_err)?;
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| key_err(key::refused(&key, &e)))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        at: pair.key_at.clone(),
        cert: pair.cert.clone(),
        key: pair.key.clone(),
    })?;
    Ok((certified, leaf))
}

/// A PEM reading error as an operator reads it: the section's label as
/// text, never the parser's byte arrays (RFC 7468 §2: a section runs from
/// `-----BEGIN label-----` to `-----END label-----`).
fn pem_reason(e: &rustls::pki_types::pem::Error, path: &Path) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => format!("no PEM item found in {}", path.display()),
        Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!(
                "PEM section BEGIN {label} without END (no \"-----END {label}-----\" line: is the file truncated?)"
            )
        }
        Error::IllegalSectionStart { line } => format!(
            "malformed PEM BEGIN line {:?}",
            String::from_utf8_lossy(line).trim_end()
        ),
        Error::Base64Decode(reason) => format!("invalid base64 in a PEM section: {reason}"),
        other => other.to_string(),
    }
}

/// Picks the first certificate valid for the SNI name, else the default.
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniResolver({} certificates)", self.keys.len())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let default = self.keys.first().cloned();
        let Some(name) = hello.server_name() else {
            return default;
        };
        let Ok(name) = ServerName::try_from(name) else {
            return default;
        };
        self.keys
            .iter()
            .find(|k| {
                k.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .cloned()
            .or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GARBAGE: &str = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";

    /// A config naming `cert_pem` and the key of a fresh self-signed
    /// certificate (`cert_pem` gets that certificate's PEM as `{cert}`).
    fn config(dir: &Path, cert_pem: &str) -> TlsConfig {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("a.pem"), dir.join("a.key"));
        std::fs::write(&cert, cert_pem.replace("{cert}", &made.cert.pem())).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            certificates: vec![CertPair {
                cert,
                key,
                cert_at: "t.toml:5:8: server.tls.cert".into(),
                key_at: "t.toml:6:7: server.tls.key".into(),
            }],
            handshake_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_good_chain_loads() {
        let dir = tempfile::tempdir().unwrap();
        check(&config(dir.path(), "{cert}")).unwrap();
    }

    /// nginx -t refuses it; rustls took it and failed every handshake.
    #[test]
    fn an_unparsable_certificate_in_a_chain_is_refused_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&config(dir.path(), &format!("{{cert}}{GARBAGE}")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:5:8: server.tls.cert: ")
                && e.contains("a.pem: certificate 2 of 2 cannot be parsed: "),
            "{e}"
        );
    }

    /// It showed `MissingSectionEnd { end_marker: [67, 69, ...] }`.
    #[test]
    fn a_truncated_pem_file_is_named_with_its_missing_end_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&config(dir.path(), "-----BEGIN CERTIFICATE-----\nMIIB"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:5:8: server.tls.cert: ") && e.contains("a.pem: cannot read certificate chain: PEM section BEGIN CERTIFICATE without END (no \"-----END CERTIFICATE-----\" line: is the file truncated?)"),
            "{e}"
        );
    }

    #[test]
    fn pem_errors_read_as_text() {
        use rustls::pki_types::pem::Error;
        let path = Path::new("k.pem");
        let bad_start = Error::IllegalSectionStart {
            line: b"-----BEGIN PRIVATE KEY\n".to_vec(),
        };
        assert_eq!(
            pem_reason(&bad_start, path),
            "malformed PEM BEGIN line \"-----BEGIN PRIVATE KEY\""
        );
        assert_eq!(
            pem_reason(&Error::Base64Decode("invalid byte 42".into()), path),
            "invalid base64 in a PEM section: invalid byte 42"
        );
        assert_eq!(
            pem_reason(&Error::NoItemsFound, path),
            "no PEM item found in k.pem"
        );
    }

    /// `check`'s error for the config of [`config`] with `key_pem` as the
    /// key file's contents.
    fn key_error(key_pem: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "{cert}");
        let key = &config.certificates[0].key;
        std::fs::write(
            key,
            key_pem.replace(
                "{cert}",
                &std::fs::read_to_string(&config.certificates[0].cert).unwrap(),
            ),
        )
        .unwrap();
        let e = check(&config).unwrap_err().to_string();
        let at = format!("t.toml:6:7: server.tls.key: {}: ", key.display());
        assert!(e.starts_with(&at), "{e}");
        e[at.len()..].replace(&key.display().to_string(), "KEY")
    }

    /// Both said "no PEM item found".
    #[test]
    fn an_encrypted_key_says_so() {
        for pem in [
            include_str!("../../tests/fixtures/tls/encrypted-p256.key"),
            include_str!("../../tests/fixtures/tls/rsa1024-legacy-encrypted.key"),
        ] {
            assert_eq!(
                key_error(pem),
                "encrypted private keys are not supported (decrypt it: openssl pkey -in KEY -out KEY.plain)"
            );
        }
    }

    /// It said "no PEM item found" of a file with a PEM item.
    #[test]
    fn a_certificate_given_as_the_key_says_what_the_file_holds() {
        assert_eq!(
            key_error("{cert}"),
            "no private key in the file (it holds CERTIFICATE; a key is a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section)"
        );
        assert_eq!(
            key_error(""),
            "cannot read private key: no PEM item found in KEY"
        );
    }

    /// Valid keys ring does not sign with said "failed to parse private
    /// key as RSA, ECDSA, or EdDSA".
    #[test]
    fn a_valid_key_of_an_unsupported_type_is_named() {
        for (pem, kind) in [
            (
                include_str!("../../tests/fixtures/tls/p521.key"),
                "ECDSA P-521",
            ),
            (
                include_str!("../../tests/fixtures/tls/secp256k1-sec1.key"),
                "ECDSA secp256k1",
            ),
            (
                include_str!("../../tests/fixtures/tls/rsa1024.key"),
                "RSA 1024 bits",
            ),
            (
                include_str!("../../tests/fixtures/tls/rsa1024-pkcs1.key"),
                "RSA 1024 bits",
            ),
            (include_str!("../../tests/fixtures/tls/ed448.key"), "Ed448"),
        ] {
            assert_eq!(
                key_error(pem),
                format!("unsupported private key: {kind} (supported: RSA 2048–4096 bits, ECDSA P-256 or P-384, Ed25519)")
            );
        }
    }

    #[test]
    fn a_key_that_cannot_be_decoded_says_so() {
        assert_eq!(
            key_error("-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n"),
            "invalid private key: its DER cannot be decoded (unexpected error: failed to parse private key as RSA, ECDSA, or EdDSA)"
        );
    }

    #[test]
    fn supported_keys_are_recognised_as_such() {
        for (alg, want) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ECDSA P-256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ECDSA P-384"),
            (&rcgen::PKCS_ED25519, "Ed25519"),
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let der = rustls::pki_types::PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
            let kind = key::kind(&der).unwrap();
            assert_eq!(kind.to_string(), want);
            assert!(kind.is_supported(), "{kind}");
        }
    }

    /// A v1 certificate of its own key was "the private key does not
    /// match the certificate" (docs probe): the operator went looking for
    /// another key.
    #[test]
    fn an_x509_v1_certificate_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut tls = config(
            dir.path(),
            include_str!("../../tests/fixtures/tls/v1-p256.pem"),
        );
        let pair = &mut tls.certificates[0];
        std::fs::write(
            &pair.key,
            include_str!("../../tests/fixtures/tls/v1-p256.key"),
        )
        .unwrap();
        let e = check(&tls).unwrap_err().to_string();
        assert!(
            e.contains("a.pem: an X.509 v1 certificate; TLS needs v3"),
            "{e}"
        );
        assert!(!e.contains("does not match"), "{e}");
    }

    /// It said "the private key does not match the certificate".
    #[test]
    fn a_chain_of_one_garbage_certificate_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&config(dir.path(), GARBAGE)).unwrap_err().to_string();
        assert!(
            e.contains("a.pem: certificate 1 of 1 cannot be parsed: "),
            "{e}"
        );
        assert!(!e.contains("does not match"), "{e}");
    }
}

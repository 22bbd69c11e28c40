//! The TLS listener's private keys: reading the first key of a PEM file,
//! and saying what is wrong with one that cannot be used, in the terms an
//! operator fixes it in: an encrypted key, a file holding only
//! certificates, or a valid key of a type or size ring does not sign with
//! (RSA 1024, ECDSA P-521, secp256k1, Ed448...), instead of "no PEM item
//! found" or "failed to parse private key".

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::PrivateKeyDer;
use x509_parser::der_parser::ber::{BerObject, BerObjectContent, Class};
use x509_parser::der_parser::der::parse_der;
use x509_parser::der_parser::oid::Oid;

/// The key types and sizes rustls's ring provider signs with (ring 0.17:
/// RSA moduli of 2048 to 4096 bits, `rsa/keypair.rs`), as the README's
/// `[server.tls]` table lists them.
pub const SUPPORTED: &str = "RSA 2048–4096 bits, ECDSA P-256 or P-384, Ed25519";

/// Why a key file gives no usable key. Shown after the config location and
/// the file (`strata.toml:6:7: server.tls.key: certs/a.key: ...`).
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    /// The file cannot be read, or its PEM is broken (truncated, bad
    /// base64), or it has no PEM section at all.
    #[error("cannot read private key: {0}")]
    Read(String),
    /// `ENCRYPTED PRIVATE KEY` (PKCS#8, RFC 5958 §3) or a legacy
    /// `Proc-Type: 4,ENCRYPTED` header: Strata has no passphrase to ask for.
    #[error("encrypted private keys are not supported (decrypt it: openssl pkey -in {path} -out {path}.plain)")]
    Encrypted { path: PathBuf },
    /// PEM sections, none of them a private key; `found` lists their labels
    /// (`CERTIFICATE`: the certificate given as the key).
    #[error("no private key in the file (it holds {found}; a key is a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section)")]
    NoKey { found: String },
    /// A well-formed key of a type or size the TLS library cannot sign with.
    #[error("unsupported private key: {0} (supported: {SUPPORTED})")]
    Unsupported(KeyKind),
    /// A key of a supported type (or one that cannot be decoded) that the
    /// TLS library refused; the reason is the library's.
    #[error("invalid private key: {0}")]
    Invalid(String),
}

/// What a private key is, as read from its DER: enough to name it in an
/// error, nothing is checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `bits`: the modulus length.
    Rsa {
        bits: usize,
    },
    RsaPss,
    /// `curve`: `P-256`, `P-384`, `P-521`, `secp256k1`, or the curve's OID.
    Ecdsa {
        curve: String,
    },
    Ed25519,
    Ed448,
    /// X25519 or X448: key agreement only, never a signing key.
    KeyAgreement(&'static str),
    Dsa,
    /// Any other algorithm, by OID.
    Other(String),
}

impl KeyKind {
    /// Whether ring signs with keys of this kind ([`SUPPORTED`]).
    pub fn is_supported(&self) -> bool {
        match self {
            KeyKind::Rsa { bits } => (2048..=4096).contains(bits),
            KeyKind::Ecdsa { curve } => curve == "P-256" || curve == "P-384",
            KeyKind::Ed25519 => true,
            _ => false,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA {bits} bits"),
            KeyKind::RsaPss => f.write_str("RSA-PSS"),
            KeyKind::Ecdsa { curve } => write!(f, "ECDSA {curve}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Ed448 => f.write_str("Ed448"),
            KeyKind::KeyAgreement(name) => write!(f, "{name} (a key-agreement key)"),
            KeyKind::Dsa => f.write_str("DSA"),
            KeyKind::Other(oid) => write!(f, "algorithm {oid}"),
        }
    }
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of the PEM file at
/// `path`.
pub fn read(path: &Path) -> Result<PrivateKeyDer<'static>, KeyProblem> {
    let text = std::fs::read(path).map_err(|e| KeyProblem::Read(e.to_string()))?;
    // RFC 1421 §4.6.1.1 headers inside an `RSA PRIVATE KEY` section; the
    // PEM reader would call them bad base64.
    if lines(&text).any(|l| l == b"Proc-Type: 4,ENCRYPTED") {
        return Err(KeyProblem::Encrypted { path: path.into() });
    }
    match PrivateKeyDer::from_pem_slice(&text) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(without_key(&text, path)),
        Err(e) => Err(KeyProblem::Read(super::pem_reason(&e, path))),
    }
}

/// Why the TLS library refused `key` (`error`): the key's kind when it is
/// one the library does not support, else the library's reason.
pub fn refused(key: &PrivateKeyDer<'_>, error: &rustls::Error) -> KeyProblem {
    match kind(key) {
        Some(k) if !k.is_supported() => KeyProblem::Unsupported(k),
        Some(k) => KeyProblem::Invalid(format!("{k}: {error}")),
        None => KeyProblem::Invalid(format!("its DER cannot be decoded ({error})")),
    }
}

/// A file with no private-key section: encrypted, holding other sections
/// (RFC 7468 labels), or no PEM at all.
fn without_key(text: &[u8], path: &Path) -> KeyProblem {
    let mut labels: Vec<String> = Vec::new();
    for line in lines(text) {
        let Some(label) = line
            .strip_prefix(b"-----BEGIN ")
            .and_then(|l| l.strip_suffix(b"-----"))
        else {
            continue;
        };
        let label = String::from_utf8_lossy(label).into_owned();
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    if labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
        KeyProblem::Encrypted { path: path.into() }
    } else if labels.is_empty() {
        KeyProblem::Read(super::pem_reason(&pem::Error::NoItemsFound, path))
    } else {
        KeyProblem::NoKey {
            found: labels.join(", "),
        }
    }
}

/// The lines of `text`, without surrounding whitespace (`\r` included).
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n').map(|l| l.trim_ascii())
}

/// What `key` is, or `None` if its DER cannot be read that far.
pub fn kind(key: &PrivateKeyDer<'_>) -> Option<KeyKind> {
    match key {
        PrivateKeyDer::Pkcs1(k) => rsa(k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => sec1(k.secret_sec1_der()),
        PrivateKeyDer::Pkcs8(k) => pkcs8(k.secret_pkcs8_der()),
        _ => None,
    }
}

/// RFC 5958 §2 `OneAsymmetricKey ::= SEQUENCE { version, privateKeyAlgorithm
/// AlgorithmIdentifier, privateKey OCTET STRING, ... }`.
fn pkcs8(der: &[u8]) -> Option<KeyKind> {
    let fields = sequence(der)?;
    let algorithm = fields.get(1)?.as_sequence().ok()?;
    let oid = algorithm.first()?.as_oid().ok()?.to_id_string();
    Some(match oid.as_str() {
        "1.2.840.113549.1.1.1" => rsa(fields.get(2)?.as_slice().ok()?)?,
        "1.2.840.113549.1.1.10" => KeyKind::RsaPss,
        // RFC 5480 §2.1.1: the parameters name the curve.
        "1.2.840.10045.2.1" => KeyKind::Ecdsa {
            curve: curve(algorithm.get(1)?.as_oid().ok()?),
        },
        // RFC 8410 §3.
        "1.3.101.110" => KeyKind::KeyAgreement("X25519"),
        "1.3.101.111" => KeyKind::KeyAgreement("X448"),
        "1.3.101.112" => KeyKind::Ed25519,
        "1.3.101.113" => KeyKind::Ed448,
        "1.2.840.10040.4.1" => KeyKind::Dsa,
        _ => KeyKind::Other(oid),
    })
}

/// RFC 8017 A.1.2 `RSAPrivateKey ::= SEQUENCE { version, modulus INTEGER,
/// ... }`.
fn rsa(der: &[u8]) -> Option<KeyKind> {
    let fields = sequence(der)?;
    let modulus = fields.get(1)?.as_slice().ok()?;
    let digits = &modulus[modulus.iter().position(|&b| b != 0)?..];
    let bits = digits.len() * 8 - digits.first()?.leading_zeros() as usize;
    Some(KeyKind::Rsa { bits })
}

/// RFC 5915 §3 `ECPrivateKey ::= SEQUENCE { version, privateKey OCTET
/// STRING, parameters [0] ECParameters OPTIONAL, publicKey [1] ... }`.
fn sec1(der: &[u8]) -> Option<KeyKind> {
    let fields = sequence(der)?;
    let parameters = fields
        .iter()
        .find(|f| f.header.class() == Class::ContextSpecific && f.header.tag().0 == 0)?;
    let (_, oid) = parse_der(parameters.as_slice().ok()?).ok()?;
    Some(KeyKind::Ecdsa {
        curve: curve(oid.as_oid().ok()?),
    })
}

/// A named curve (RFC 5480 §2.1.1.1, SEC 2 for secp256k1) by its usual name.
fn curve(oid: &Oid<'_>) -> String {
    let id = oid.to_id_string();
    match id.as_str() {
        "1.2.840.10045.3.1.7" => "P-256".into(),
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        _ => format!("curve {id}"),
    }
}

fn sequence(der: &[u8]) -> Option<Vec<BerObject<'_>>> {
    match parse_der(der).ok()?.1.content {
        BerObjectContent::Sequence(fields) => Some(fields),
        _ => None,
    }
}

//! Production edges against real servers: TLS (certificates made here with
//! rcgen, a rustls client), ALPN h2 and HTTP/1.1, SNI, certificate checks
//! by `strata check`, hot reload on SIGHUP with the real binary, the access
//! log, `/metrics` as Prometheus text and `/stats` as the same figures, the
//! container health probe and the Docker files' configs.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::binary::{idle_cost_at_most, resident_kib, Binary};
use support::origin::reply;
use support::{config_text, Client, Origin, Strata};
use tokio::sync::Notify;

const NO_HEALTH: &str = "[upstream.health]\nenabled = false\n";

// === certificates and a TLS client ===

/// A self-signed certificate and its key, written as PEM files.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        der: ck.cert.der().to_vec(),
    }
}

/// `[server.tls]` on port 0 with `default` first, then `more` for SNI.
fn tls_section(default: &Cert, more: &[&Cert]) -> String {
    let mut s = format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
        default.cert.display(),
        default.key.display()
    );
    for c in more {
        s.push_str(&format!(
            "[[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    s
}

/// A response over TLS, with what the handshake settled.
struct TlsReply {
    version: Version,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The server's end-entity certificate (DER).
    peer: Vec<u8>,
    alpn: Option<Vec<u8>>,
}

impl TlsReply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A TLS client trusting only `trust` and offering the `alpn` protocols.
fn tls_connector(trust: &[&Cert], alpn: &[&str]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in trust {
        roots.add(CertificateDer::from(c.der.clone())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr`, sending SNI `name` (none for an IP).
async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp))
        .await
        .expect("handshake within 10s")
        .expect("handshake")
}

/// GETs `path` over TLS from `addr`, sending SNI `name` (none for an IP),
/// trusting only `trust`, offering the `alpn` protocols; HTTP/2 when the
/// server picks `h2`.
async fn https_get(
    addr: SocketAddr,
    name: &str,
    trust: &[&Cert],
    alpn: &[&str],
    path: &str,
) -> TlsReply {
    let tls = tls_connect(&tls_connector(trust, alpn), addr, name).await;
    let (_, session) = tls.get_ref();
    let peer = session.peer_certificates().expect("peer certificate")[0].to_vec();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{name}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", name)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body within 10s")
        .unwrap()
        .to_bytes();
    TlsReply {
        version: parts.version,
        status: parts.status,
        headers: parts.headers,
        body,
        peer,
        alpn,
    }
}

async fn cacheable_origin() -> Origin {
    Origin::start(|req| async move {
        let body = format!("page {}", req.uri().path());
        reply(200, &[("cache-control", "public, max-age=60")], body)
    })
    .await
}

// === TLS and HTTP/2 ===

#[tokio::test]
async fn https_alpn_negotiates_h2_or_http11_and_hits_are_served_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a", &["a.test", "127.0.0.1"]);
    let origin = cacheable_origin().await;
    let strata = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}{}", tls_section(&cert, &[])),
    )
    .await;
    let tls = strata.tls.expect("TLS listener");

    let r = https_get(tls, "a.test", &[&cert], &["h2", "http/1.1"], "/doc").await;
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "page /doc");
    assert!(
        r.header("cache-status").contains("stored"),
        "{}",
        r.header("cache-status")
    );
    let seen = origin.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], "a.test");

    // The second request is a hit, over HTTP/2 and TLS.
    let r = https_get(tls, "a.test", &[&cert], &["h2", "http/1.1"], "/doc").await;
    assert!(r
        .header("cache-status")
        .starts_with("strata; hit; detail=memory"));
    assert_eq!(origin.count(), 1);

    // http/1.1 offered alone; and no ALPN at all (HTTP/1.1 is always there).
    let r = https_get(tls, "a.test", &[&cert], &["http/1.1"], "/doc").await;
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "page /doc");
    let r = https_get(tls, "a.test", &[&cert], &[], "/doc").await;
    assert_eq!(r.alpn, None);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.status, 200);
    // One cache key (https, a.test, /doc) whatever the protocol: all hits.
    assert_eq!(origin.count(), 1);
}

/// SPEC §10: an idle keep-alive connection costs at most 16 KiB, over TLS
/// too. rustls keeps about 13 KiB of its own per connection; hyper's two
/// 8 KiB buffers and the slot of its service future came on top (28.5 KiB
/// per connection, release build) until idle HTTP/1.1 connections over TLS
/// gave them back too (`server/keepalive.rs`).
#[tokio::test]
async fn idle_tls_keep_alive_connections_cost_at_most_16_kib() {
    use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
    const CONNS: u64 = 300;
    async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> String {
        s.write_all(b"GET /idle HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        support::http::read_response(s).await
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a", &["a.test"]);
    let origin = cacheable_origin().await;
    let path = dir.path().join("strata.toml");
    let extra = format!("{NO_HEALTH}{}", tls_section(&cert, &[]));
    std::fs::write(&path, config_text(&[origin.addr], &extra)).unwrap();
    let bin = Binary::start(&path, &[]).await;
    let addr = bin.tls.expect("TLS listener");
    let connector = tls_connector(&[&cert], &["http/1.1"]);
    let mut warm = tls_connect(&connector, addr, "a.test").await;
    for _ in 0..2 {
        assert!(get(&mut warm).await.starts_with("HTTP/1.1 200"));
    }
    let before = resident_kib(bin.pid());
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let mut s = tls_connect(&connector, addr, "a.test").await;
        assert!(get(&mut s).await.starts_with("HTTP/1.1 200"));
        conns.push(s);
    }
    let first = idle_cost_at_most(bin.pid(), before, CONNS, 16.0).await;
    // Still served once taken back.
    for s in conns.iter_mut().take(20) {
        assert!(get(s).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(origin.count(), 1, "{first:.1} KiB per connection at first");
}

/// Strata with a TLS listener (a certificate for `a.test`) in front of
/// [`cacheable_origin`], `server` added to its `[server]` section.
async fn tls_strata(server: &str) -> (tempfile::TempDir, Cert, Origin, Strata) {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a", &["a.test"]);
    let origin = cacheable_origin().await;
    let text = config_text(
        &[origin.addr],
        &format!("{NO_HEALTH}{}", tls_section(&cert, &[])),
    )
    .replace("[server]\n", &format!("[server]\n{server}"));
    let strata = Strata::start_text(&text).await;
    (dir, cert, origin, strata)
}

/// A plain HTTP request on the TLS port got a bare TLS alert and a close;
/// nginx answers `400` "The plain HTTP request was sent to HTTPS port".
/// Strata answers a readable `400` too, and TLS still works there.
#[tokio::test]
async fn a_plain_http_request_on_the_tls_port_gets_a_readable_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, cert, _origin, strata) = tls_strata("").await;
    let tls = strata.tls.expect("TLS listener");
    let mut plain = tokio::net::TcpStream::connect(tls).await.unwrap();
    plain
        .write_all(b"GET /doc HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), plain.read_to_string(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("this port speaks HTTPS"), "{answer}");
    assert!(
        answer.contains("Cache-Status: strata; fwd=bypass"),
        "{answer}"
    );
    let r = https_get(tls, "a.test", &[&cert], &["http/1.1"], "/doc").await;
    assert_eq!(r.status, 200);
}

/// `server.max_connections` counts connections, not listeners: each
/// listener took its slot before `accept` and held it while nobody came,
/// so with a limit of 1 the TLS listener never served anything.
#[tokio::test]
async fn max_connections_of_one_serves_the_tls_and_the_plain_listener() {
    let (_dir, cert, _origin, strata) = tls_strata("max_connections = 1\n").await;
    let tls = strata.tls.expect("TLS listener");
    for _ in 0..2 {
        let r = https_get(tls, "a.test", &[&cert], &["http/1.1"], "/doc").await;
        assert_eq!(r.status, 200);
        let r = Client::new()
            .get(&format!("http://{}/doc", strata.addr))
            .await;
        assert_eq!(r.status, 200);
    }
}

/// What rustls answers on its own while a TLS connection is taken back
/// from hyper is sent at once: a TLS 1.2 renegotiation attempt (`R` in
/// `openssl s_client`) got its `no_renegotiation` alert only when the idle
/// timeout closed the connection (nothing flushed it). (s_client then
/// gives up the connection.)
#[tokio::test]
async fn a_renegotiation_attempt_on_an_idle_tls_connection_is_answered_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _cert, origin, strata) = tls_strata("header_read_timeout = \"30s\"\n").await;
    let tls = strata.tls.expect("TLS listener");
    let mut client = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-crlf",
            "-msg",
            "-servername",
            "a.test",
        ])
        .arg("-connect")
        .arg(tls.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client (apt-get install openssl)");
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = client.stdout.take().unwrap();
    // What s_client printed so far; `until` waits for `what` after `from`.
    let mut seen = Vec::new();
    let mut until = async |what: &str, from: usize, within: u64| -> usize {
        let found = tokio::time::timeout(Duration::from_secs(within), async {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(at) = String::from_utf8_lossy(&seen[from..]).find(what) {
                    return from + at + what.len();
                }
                let n = stdout.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "s_client ended before {what:?}: {}",
                    String::from_utf8_lossy(&seen)
                );
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {what:?} within {within} s"))
    };
    stdin
        .write_all(b"GET /doc HTTP/1.1\nHost: a.test\n\n")
        .await
        .unwrap();
    let at = until("page /doc", 0, 10).await;
    // Idle for more than two sweeps (200 ms each): taken back from hyper.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stdin.write_all(b"R\n").await.unwrap();
    until("no_renegotiation", at, 5).await;
    assert_eq!(origin.count(), 1);
}

/// ALPN decides the protocol (RFC 7301 §3.2): a client that agreed on `h2`
/// and sends HTTP/1.1 is closed, not served; one that agreed on `http/1.1`
/// (or on nothing) and sends the h2 preface is not served HTTP/2. One that
/// closes (`close_notify`) before its first request gets a `close_notify`
/// back.
#[tokio::test]
async fn tls_clients_are_held_to_their_alpn_and_get_a_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, cert, origin, strata) = tls_strata("").await;
    let addr = strata.tls.expect("TLS listener");
    let mut h2 = tls_connect(&tls_connector(&[&cert], &["h2"]), addr, "a.test").await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"GET /doc HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    h2.flush().await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), h2.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "not closed within 10 s");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(origin.count(), 0);

    // The other way round: `http/1.1` (or no ALPN) and the h2 preface.
    for alpn in [&["http/1.1"][..], &[]] {
        let mut h1 = tls_connect(&tls_connector(&[&cert], alpn), addr, "a.test").await;
        h1.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        h1.flush().await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), h1.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "not closed within 10 s");
        let got = String::from_utf8_lossy(&got).into_owned();
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 4"),
            "{alpn:?}: {got}"
        );
    }

    let mut quiet = tls_connect(&tls_connector(&[&cert], &["http/1.1"]), addr, "a.test").await;
    quiet.shutdown().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), quiet.read(&mut [0u8; 16])).await;
    // `Ok(0)` only after the server's `close_notify` (an unexpected EOF
    // otherwise).
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
}

#[tokio::test]
async fn sni_picks_the_certificate_for_the_name_and_falls_back_to_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test", "127.0.0.1"]);
    let b = make_cert(dir.path(), "b", &["b.test", "*.b.test"]);
    let origin = cacheable_origin().await;
    let strata = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}{}", tls_section(&a, &[&b])),
    )
    .await;
    let tls = strata.tls.unwrap();
    let both = [&a, &b];

    let r = https_get(tls, "b.test", &both, &["h2"], "/x").await;
    assert!(r.peer == b.der, "b.test gets b's certificate");
    assert_eq!(r.status, 200);
    let r = https_get(tls, "www.b.test", &both, &["h2"], "/x").await;
    assert!(r.peer == b.der, "a wildcard name matches");
    let r = https_get(tls, "a.test", &both, &["h2"], "/x").await;
    assert!(r.peer == a.der, "a.test gets a's certificate");
    // No SNI (an IP address): the default, first, certificate.
    let r = https_get(tls, "127.0.0.1", &both, &["http/1.1"], "/x").await;
    assert!(r.peer == a.der, "no SNI gets the default certificate");
    assert_eq!(r.status, 200);
}

// === strata check on certificates ===

fn strata_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
}

fn check(config: &Path) -> (Option<i32>, String, String) {
    let out = strata_bin()
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_config_file(dir: &Path, name: &str, tls: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n{tls}[admin]\nlisten = \"127.0.0.1:9090\"\n[upstream]\nservers = [\"127.0.0.1:3001\"]\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tls_table(cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

#[test]
fn check_accepts_good_certificates_and_names_the_file_when_they_are_bad() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let b = make_cert(dir.path(), "b", &["b.test"]);

    let good = tls_config_file(dir.path(), "good.toml", &tls_table(&a.cert, &a.key));
    let (code, out, err) = check(&good);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "config ok");

    // A certificate path that does not exist: file, line, key and path.
    let missing = dir.path().join("missing.pem");
    let bad_path = tls_config_file(dir.path(), "bad-path.toml", &tls_table(&missing, &a.key));
    let (code, _, err) = check(&bad_path);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!(
            "{}:5:8: server.tls.cert: cannot read {}",
            bad_path.display(),
            missing.display()
        )),
        "{err}"
    );

    // a's certificate with b's key.
    let mismatch = tls_config_file(dir.path(), "mismatch.toml", &tls_table(&a.cert, &b.key));
    let (code, _, err) = check(&mismatch);
    assert_eq!(code, Some(1));
    // Found when the files are loaded, still located in the config.
    assert_eq!(
        err.trim(),
        format!(
            "{}:6:7: server.tls.key: {} and {}: the private key does not match the certificate",
            mismatch.display(),
            a.cert.display(),
            b.key.display()
        )
    );

    // `serve` says it as `check` does, on stderr (it was a `fatal` log
    // event on stdout; docs probe).
    let out = strata_bin()
        .arg("serve")
        .arg("--config")
        .arg(&mismatch)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("strata: {}", err.trim())
    );

    // A file that is not PEM at all.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let not_pem = tls_config_file(dir.path(), "junk.toml", &tls_table(&junk, &a.key));
    let (code, _, err) = check(&not_pem);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!(
            "{}:5:8: server.tls.cert: {}: cannot read certificate chain",
            not_pem.display(),
            junk.display()
        )),
        "{err}"
    );
}

// === hot reload with the real binary ===

fn write_config(path: &Path, upstream: SocketAddr, extra: &str) {
    std::fs::write(
        path,
        config_text(&[upstream], &format!("{NO_HEALTH}{extra}")),
    )
    .unwrap();
}

fn count_path(origin: &Origin, path: &str) -> usize {
    origin.seen().iter().filter(|s| s.path == path).count()
}

#[tokio::test]
async fn sighup_applies_a_rule_change_while_a_slow_request_completes_and_refuses_a_bad_file() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let origin = Origin::start(move |req| {
        let g = g.clone();
        async move {
            if req.uri().path() == "/slow" {
                g.notified().await;
                return reply(200, &[("cache-control", "no-store")], "slow done");
            }
            reply(200, &[("cache-control", "public, max-age=60")], "page")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    // Before: a rule keeps /page out of the cache.
    write_config(
        &path,
        origin.addr,
        "[[rules]]\nmatch = \"/page\"\ncache_control = \"no-store\"\n",
    );
    let bin = Binary::start(&path, &[]).await;
    let c = Client::new();
    let url = format!("http://{}/page", bin.addr);
    for _ in 0..2 {
        let r = c.get(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.cache_status(), "strata; fwd=bypass");
    }
    assert_eq!(count_path(&origin, "/page"), 2);

    // A slow request is in flight (held at the origin) across the reload.
    let slow = tokio::spawn({
        let c = c.clone();
        let url = format!("http://{}/slow", bin.addr);
        async move { c.get(&url).await }
    });
    support::wait_until(
        Duration::from_secs(10),
        "slow request at the origin",
        || async { count_path(&origin, "/slow") == 1 },
    )
    .await;

    // After: the rule makes /page cacheable.
    write_config(
        &path,
        origin.addr,
        "[[rules]]\nmatch = \"/page\"\ncache_control = \"public, max-age=60\"\n",
    );
    let outcome = bin.reload().await;
    assert_eq!(outcome["message"], "configuration reloaded", "{outcome}");
    support::wait_until(
        Duration::from_secs(10),
        "/page served from the cache",
        || async { c.get(&url).await.cache_status().contains("hit") },
    )
    .await;
    assert_eq!(
        count_path(&origin, "/page"),
        3,
        "one miss after the reload, then hits"
    );
    assert!(!slow.is_finished(), "the slow request is still held");
    gate.notify_one();
    let r = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("slow request done")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow done");

    // An invalid file: logged with its error, the old config keeps serving.
    std::fs::write(
        &path,
        config_text(
            &[origin.addr],
            "[[rules]]\nmatch = \"[\"\ncache_control = \"max-age=1\"\n",
        ),
    )
    .unwrap();
    let outcome = bin.reload().await;
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .starts_with("reload failed"),
        "{outcome}"
    );
    let error = outcome["error"].as_str().unwrap();
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("rules[0].match: invalid glob"), "{error}");
    let r = c.get(&url).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(count_path(&origin, "/page"), 3);

    let metrics = c.get(&format!("http://{}/metrics", bin.admin)).await.text();
    assert!(
        metrics.contains("strata_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    let (status, _) = bin.stop().await;
    assert_eq!(
        status.code(),
        Some(0),
        "still running until SIGTERM, then a clean exit"
    );
}

#[tokio::test]
async fn sighup_replaces_certificates_and_keeps_them_when_the_new_ones_are_bad() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["site.test"]);
    let b = make_cert(dir.path(), "b", &["site.test"]);
    let c_cert = make_cert(dir.path(), "c", &["site.test"]);
    let d = make_cert(dir.path(), "d", &["site.test"]);
    // The config always points at live.pem/live.key; reloads change them.
    let live = Cert {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
        der: Vec::new(),
    };
    std::fs::copy(&a.cert, &live.cert).unwrap();
    std::fs::copy(&a.key, &live.key).unwrap();
    let origin = cacheable_origin().await;
    let path = dir.path().join("strata.toml");
    write_config(&path, origin.addr, &tls_section(&live, &[]));
    let mut bin = Binary::start(&path, &[]).await;
    let tls = bin.tls.expect("TLS listener");
    let trust = [&a, &b, &c_cert, &d];

    let r = https_get(tls, "site.test", &trust, &["h2"], "/").await;
    assert!(r.peer == a.der);
    assert_eq!(r.status, 200);

    std::fs::copy(&b.cert, &live.cert).unwrap();
    std::fs::copy(&b.key, &live.key).unwrap();
    let outcome = bin.reload().await;
    assert_eq!(outcome["message"], "configuration reloaded", "{outcome}");
    let r = https_get(tls, "site.test", &trust, &["h2"], "/").await;
    assert!(r.peer == b.der, "new handshakes get the new certificate");
    assert_eq!(r.version, Version::HTTP_2);

    // c's certificate with d's key: refused, b keeps serving.
    std::fs::copy(&c_cert.cert, &live.cert).unwrap();
    std::fs::copy(&d.key, &live.key).unwrap();
    let outcome = bin.reload().await;
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .starts_with("reload failed"),
        "{outcome}"
    );
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("live.pem") && error.contains("does not match"),
        "{error}"
    );
    let r = https_get(tls, "site.test", &trust, &["h2"], "/").await;
    assert!(r.peer == b.der, "the old certificate keeps serving");
    assert_eq!(r.status, 200);
    assert!(bin.is_running());
}

#[tokio::test]
async fn sighup_changes_the_log_level() {
    let origin = cacheable_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    write_config(
        &path,
        origin.addr,
        "[log]\nlevel = \"info,strata::access=off\"\naccess_log = true\n",
    );
    let bin = Binary::start(&path, &[]).await;
    let c = Client::new();
    c.get(&format!("http://{}/quiet", bin.addr)).await;
    write_config(
        &path,
        origin.addr,
        "[log]\nlevel = \"info\"\naccess_log = true\n",
    );
    assert_eq!(bin.reload().await["message"], "configuration reloaded");
    c.get(&format!("http://{}/loud", bin.addr)).await;
    bin.wait_event(0, "access event for /loud", |e| e["path"] == "/loud")
        .await;
    let (_, lines) = bin.stop().await;
    assert!(
        !lines.iter().any(|l| l.contains("\"/quiet\"")),
        "access events were filtered out before the reload"
    );
}

// === access log ===

#[tokio::test]
async fn access_log_has_one_structured_event_per_request_and_can_be_turned_off() {
    let origin = Origin::start(|_req| async move {
        reply(
            200,
            &[("cache-control", "public, max-age=60")],
            "hello access log",
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    write_config(&path, origin.addr, "[log]\naccess_log = true\n");
    let bin = Binary::start(&path, &[]).await;
    let c = Client::new();
    let url = format!("http://{}/page?token=s3cr3t", bin.addr);
    assert!(c.get(&url).await.cache_status().contains("stored"));
    assert!(c.get(&url).await.cache_status().contains("hit"));
    let is_access = |e: &serde_json::Value| e["target"] == "strata::access";
    let (i, miss) = bin.wait_event(0, "access event (miss)", is_access).await;
    let (j, hit) = bin.wait_event(i + 1, "access event (hit)", is_access).await;

    for e in [&miss, &hit] {
        assert_eq!(e["level"], "INFO");
        assert_eq!(e["message"], "access");
        assert!(e["timestamp"].is_string(), "{e}");
        assert!(
            e["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{e}"
        );
        assert_eq!(e["scheme"], "http");
        assert_eq!(e["version"], "HTTP/1.1");
        assert_eq!(e["method"], "GET");
        assert_eq!(e["path"], "/page", "the query is not logged");
        assert_eq!(e["status"], 200);
        assert_eq!(e["bytes"], 16);
        assert!(e["duration_ms"].as_f64().unwrap() >= 0.0, "{e}");
    }
    assert_eq!(miss["cache"], "miss");
    assert_eq!(miss["upstream"], origin.addr.to_string());
    assert!(miss.get("tier").is_none(), "{miss}");
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["tier"], "memory");
    assert!(hit.get("upstream").is_none(), "{hit}");
    // A HEAD miss is answered from the entry it stored, and still names
    // the upstream that answered (black-box audit: it did not).
    let head = c
        .send(
            http::Method::HEAD,
            &format!("http://{}/head", bin.addr),
            &[],
            Bytes::new(),
        )
        .await;
    assert!(
        head.cache_status().contains("stored"),
        "{}",
        head.cache_status()
    );
    let (_, head) = bin
        .wait_event(j + 1, "access event (HEAD miss)", is_access)
        .await;
    assert_eq!(head["method"], "HEAD");
    assert_eq!(head["upstream"], origin.addr.to_string());

    // Turned off by a reload.
    write_config(&path, origin.addr, "[log]\naccess_log = false\n");
    assert_eq!(bin.reload().await["message"], "configuration reloaded");
    c.get(&format!("http://{}/after", bin.addr)).await;
    let (status, lines) = bin.stop().await;
    assert_eq!(status.code(), Some(0));
    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("strata::access"))
        .collect();
    assert_eq!(
        access.len(),
        3,
        "one event per request, none once off: {access:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("s3cr3t")),
        "query strings never reach the log"
    );
}

// === /metrics and /stats ===

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict little parser of the text exposition format: every line is a
/// comment (`# HELP`, `# TYPE`) or `name{labels} value`; every sample
/// belongs to a family with HELP and TYPE; counters end in `_total`.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !doc.is_empty(), "{line}");
            help.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE name type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            if ty == "counter" {
                assert!(name.ends_with("_total"), "counter {name} ends in _total");
            }
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let name_end = line.find(['{', ' ']).expect("name then labels or value");
        let name = &line[..name_end];
        assert!(valid_name(name), "{line}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            loop {
                let (start, c) = chars.next().expect("label or }");
                if c == '}' {
                    rest = &body[start + 1..];
                    break;
                }
                let eq = body[start..].find('=').expect("label=") + start;
                let key = body[start..eq].trim_start_matches(',');
                assert!(valid_name(key), "label name in {line}");
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("closing quote").1 {
                        '"' => break,
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        c => value.push(c),
                    }
                }
                if chars.peek().is_some_and(|(_, c)| *c == ',') {
                    chars.next();
                }
                labels.insert(key.to_string(), value);
            }
        }
        let value = rest.trim().split(' ').next().expect("value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let family = if types.contains_key(name) {
            name.to_string()
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or_else(|| panic!("{name} has no TYPE"));
            assert_eq!(
                types.get(base).map(String::as_str),
                Some("histogram"),
                "{line}"
            );
            if name.ends_with("_bucket") {
                assert!(labels.contains_key("le"), "{line}");
            }
            base.to_string()
        };
        assert!(help.contains(&family), "{family} has no HELP");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

/// The same figure from `/stats`: a series' `value`, or a histogram's
/// `count` (name given with `_count`).
fn stat(stats: &serde_json::Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (family, field) = match name.strip_suffix("_count") {
        Some(base) => (base, "count"),
        None => (name, "value"),
    };
    stats[family]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| labels.iter().all(|(k, v)| s[*k] == *v))
        .and_then(|s| s[field].as_f64())
        .unwrap_or(0.0)
}

/// A series (name, labels) and how much it should move.
type Expect<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic_and_stats_agree() {
    let origin = cacheable_origin().await;
    let strata = Strata::start(
        &[origin.addr],
        &format!("{NO_HEALTH}[[rules]]\nmatch = \"/assets/**\"\ncache_control = \"public, max-age=600\"\n"),
    )
    .await;
    let c = Client::new();
    let scrape = || async { parse_prometheus(&c.get(&strata.admin_url("/metrics")).await.text()) };
    let before = scrape().await;
    let server = origin.addr.to_string();
    let series: Vec<Expect> = vec![
        ("strata_cache_hits_total", vec![("tier", "memory")], 1.0),
        (
            "strata_requests_total",
            vec![("outcome", "hit"), ("status", "200")],
            1.0,
        ),
        (
            "strata_requests_total",
            vec![("outcome", "miss"), ("status", "200")],
            1.0,
        ),
        (
            "strata_request_duration_seconds_count",
            vec![("outcome", "hit")],
            1.0,
        ),
        (
            "strata_request_duration_seconds_count",
            vec![("outcome", "miss")],
            1.0,
        ),
        (
            "strata_requests_by_class_total",
            vec![("method_class", "GET"), ("status_class", "2xx")],
            2.0,
        ),
        (
            "strata_requests_by_class_total",
            vec![("method_class", "POST"), ("status_class", "2xx")],
            1.0,
        ),
        (
            "strata_rule_requests_total",
            vec![("rule", "/assets/**"), ("result", "miss")],
            1.0,
        ),
        (
            "strata_rule_requests_total",
            vec![("rule", "/assets/**"), ("result", "hit")],
            1.0,
        ),
        (
            "strata_upstream_requests_total",
            vec![("server", &server), ("status", "200")],
            2.0,
        ),
        (
            "strata_upstream_duration_seconds_count",
            vec![("server", &server)],
            2.0,
        ),
        ("strata_upstream_healthy", vec![("server", &server)], 0.0),
        ("strata_collapsed_total", vec![], 0.0),
        ("strata_purged_total", vec![("cause", "api")], 0.0),
        ("strata_purged_total", vec![("cause", "cascade")], 0.0),
        ("strata_redis_errors_total", vec![], 0.0),
    ];

    // A miss, then a hit, then a POST (a pass).
    assert!(c
        .get(&strata.url("/assets/app.js"))
        .await
        .cache_status()
        .contains("stored"));
    assert!(c
        .get(&strata.url("/assets/app.js"))
        .await
        .cache_status()
        .contains("hit"));
    let r = c
        .send(
            http::Method::POST,
            &strata.url("/form"),
            &[],
            Bytes::from_static(b"x=1"),
        )
        .await;
    assert_eq!(r.status, 200);

    let after = scrape().await;
    for (name, labels, delta) in &series {
        let moved = metric(&after, name, labels) - metric(&before, name, labels);
        assert_eq!(moved, *delta, "{name}{labels:?}");
    }
    assert_eq!(
        metric(&after, "strata_upstream_healthy", &[("server", &server)]),
        1.0
    );
    assert!(metric(&after, "strata_cache_entries", &[("tier", "memory")]) >= 1.0);
    assert!(metric(&after, "strata_cache_bytes", &[("tier", "memory")]) > 0.0);
    // The hit was faster than a second: it sits in a finite bucket.
    assert_eq!(
        metric(
            &after,
            "strata_request_duration_seconds_bucket",
            &[("outcome", "hit"), ("le", "1")]
        ),
        1.0
    );
    for name in [
        "strata_requests_total",
        "strata_cache_hits_total",
        "strata_request_duration_seconds_bucket",
        "strata_upstream_healthy",
        "strata_upstream_requests_total",
        "strata_cache_bytes",
        "strata_cache_entries",
        "strata_redis_errors_total",
        "strata_redis_breaker_open",
        "strata_collapsed_total",
        "strata_purged_total",
    ] {
        assert!(after.iter().any(|s| s.name == name), "{name} is exported");
    }

    // /stats carries the same figures.
    let stats: serde_json::Value =
        serde_json::from_slice(&c.get(&strata.admin_url("/stats")).await.body).unwrap();
    let now = scrape().await;
    for (name, labels, _) in &series {
        assert_eq!(
            stat(&stats, name, labels),
            metric(&now, name, labels),
            "{name}{labels:?}"
        );
    }
    assert_eq!(
        stat(&stats, "strata_cache_entries", &[("tier", "memory")]),
        metric(&now, "strata_cache_entries", &[("tier", "memory")])
    );
}

/// `strata_client_connections{listener}` counts the client connections
/// open on each listener, as nginx's stub_status "Active connections":
/// three idle ones on the proxy listener are 3, and 0 once closed.
#[tokio::test]
async fn client_connections_gauge_follows_open_connections() {
    let origin = cacheable_origin().await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    let c = Client::new();
    let open = || async {
        let text = c.get(&strata.admin_url("/metrics")).await.text();
        let samples = parse_prometheus(&text);
        (
            metric(
                &samples,
                "strata_client_connections",
                &[("listener", "proxy")],
            ),
            metric(
                &samples,
                "strata_client_connections",
                &[("listener", "admin")],
            ),
        )
    };
    let (proxy, admin) = open().await;
    assert_eq!(proxy, 0.0);
    assert!(admin >= 1.0, "the scrape's own connection: {admin}");
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(tokio::net::TcpStream::connect(strata.addr).await.unwrap());
    }
    support::wait_until(Duration::from_secs(5), "3 proxy connections", || async {
        open().await.0 == 3.0
    })
    .await;
    drop(conns);
    support::wait_until(Duration::from_secs(5), "0 proxy connections", || async {
        open().await.0 == 0.0
    })
    .await;
}

#[tokio::test]
async fn upstream_errors_and_latency_are_counted_per_server() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let strata = Strata::start(&[dead], NO_HEALTH).await;
    let c = Client::new();
    assert_eq!(c.get(&strata.url("/x")).await.status, 502);
    let m = parse_prometheus(&c.get(&strata.admin_url("/metrics")).await.text());
    let server = dead.to_string();
    let s = server.as_str();
    assert_eq!(
        metric(
            &m,
            "strata_upstream_errors_total",
            &[("server", s), ("kind", "connect")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "strata_upstream_duration_seconds_count",
            &[("server", s)]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "strata_requests_total",
            &[("outcome", "error"), ("status", "502")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "strata_requests_by_class_total",
            &[("method_class", "GET"), ("status_class", "5xx")]
        ),
        1.0
    );
}

// === the container health probe and the Docker files ===

#[tokio::test]
async fn healthcheck_subcommand_probes_admin_health() {
    let origin = cacheable_origin().await;
    let strata = Strata::start(&[origin.addr], NO_HEALTH).await;
    // `strata healthcheck FLAG VALUE`: its exit status and standard
    // output and error.
    let probe = |flag: &'static str, value: String| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["healthcheck", flag, &value])
            .output()
            .await
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = probe("--url", strata.admin_url("/health")).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "healthy");
    // A URL without a path probes /health (it probed / and got 404).
    for bare in [
        format!("http://{}", strata.admin),
        format!("http://{}/", strata.admin),
    ] {
        let (code, _, stderr) = probe("--url", bare.clone()).await;
        assert_eq!(code, Some(0), "{bare}: {stderr}");
    }

    // From a config: admin.listen gives the address.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let config = |admin: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"{admin}\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n"
        )
    };
    std::fs::write(&path, config(&strata.admin.to_string())).unwrap();
    let (code, _, stderr) = probe("--config", path.display().to_string()).await;
    assert_eq!(code, Some(0), "{stderr}");

    // Port 0 in the config: no port to probe; it says to pass --url (it
    // tried http://127.0.0.1:0/health, "Connection refused").
    std::fs::write(&path, config("127.0.0.1:0")).unwrap();
    let (code, _, stderr) = probe("--config", path.display().to_string()).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("admin.listen is port 0") && stderr.contains("--url"),
        "{stderr}"
    );

    // Nobody listening: exit 1 naming the URL.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{dead}/health");
    let (code, _, stderr) = probe("--url", url.clone()).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains(&url));
}

/// The `EXPOSE` ports of the Dockerfile.
fn exposed_ports(dockerfile: &str) -> Vec<u16> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("port"))
        .collect()
}

#[test]
fn docker_files_are_consistent_with_the_shipped_configs() {
    let dockerfile = std::fs::read_to_string("Dockerfile").unwrap();
    let compose = std::fs::read_to_string("docker-compose.yml").unwrap();
    // The image's config passes check, and its listeners are exposed.
    let (code, _, err) = check(Path::new("config/docker.toml"));
    assert_eq!(code, Some(0), "{err}");
    let config =
        strata::config::Config::load(Path::new("config/docker.toml")).expect("docker.toml");
    let ports = exposed_ports(&dockerfile);
    for port in [config.server.listen.port(), config.admin.listen.port()] {
        assert!(ports.contains(&port), "EXPOSE {port}");
    }
    assert!(ports.contains(&8443), "the TLS port is exposed");
    assert!(
        config.server.listen.ip().is_unspecified(),
        "listens on every interface"
    );
    assert!(config.admin.listen.ip().is_unspecified());
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("strata\", \"healthcheck\""));
    assert!(
        dockerfile.lines().any(|l| l.starts_with("USER ")),
        "non-root user"
    );
    // Its `[log]` comment promises the access log: it is on.
    assert!(config.log.access_log, "docker.toml turns the access log on");
    // `docker stop` sends SIGTERM, then SIGKILL after the service's
    // stop_grace_period (Docker's default: 10 s): each Strata service
    // gives the drain its whole timeout (the default 30 s, which
    // docker.toml keeps), as the systemd unit's TimeoutStopSec does.
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&compose).unwrap();
    let services = yaml["services"].as_mapping().expect("services");
    let mut stratas = 0;
    for (name, service) in services {
        if service["command"][0].as_str() != Some("serve") {
            continue;
        }
        stratas += 1;
        let grace = service["stop_grace_period"]
            .as_str()
            .unwrap_or_else(|| panic!("{name:?}: no stop_grace_period"));
        let grace: u64 = grace.strip_suffix('s').unwrap().parse().unwrap();
        assert!(
            Duration::from_secs(grace) > config.server.drain_timeout,
            "{name:?}: stop_grace_period {grace}s above the drain timeout"
        );
    }
    assert_eq!(stratas, 2, "both Strata services");
    // Every file the Dockerfile copies from the build context exists.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            if !src.starts_with("--") {
                assert!(Path::new(src).exists(), "COPY source {src} exists");
            }
        }
    }
    // Every config the compose file mounts exists and passes check; the
    // upstreams and Redis it names are services of the compose file.
    let mounted: Vec<&str> = compose
        .split_whitespace()
        .filter_map(|w| w.trim_matches(['"', '-']).strip_prefix("./"))
        .filter_map(|w| w.split(':').next())
        .filter(|w| w.ends_with(".toml"))
        .collect();
    assert!(!mounted.is_empty(), "compose mounts a config");
    for file in mounted {
        let (code, _, err) = check(Path::new(file));
        assert_eq!(code, Some(0), "{file}: {err}");
        let c = strata::config::Config::load(Path::new(file)).unwrap();
        for server in &c.upstream.servers {
            let host = server.host();
            assert!(
                compose.contains(&format!("  {host}:\n")),
                "service {host} in compose"
            );
        }
        if let Some(redis) = &c.cache.redis {
            for url in &redis.urls {
                let host = url
                    .trim_start_matches("redis://")
                    .split([':', '/'])
                    .next()
                    .unwrap();
                assert!(
                    compose.contains(&format!("  {host}:\n")),
                    "service {host} in compose"
                );
            }
        }
    }
}

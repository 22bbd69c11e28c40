//! raw-limit: a byte-level HTTP/1.1 reference for `compare.sh` (`LIMIT_BIN`),
//! built to answer one question of issue 12: how much of a request's cost is
//! hyper's, and how much is the work a cache does on top of it.
//!
//! It serves the same things as `../shared/bench/hyper-limit` (GETs of a
//! docroot's files from memory with the same four fields, `/api/*` forwarded
//! to the origin) without hyper:
//! - request heads are parsed in place with `httparse` and turned into an
//!   `http::HeaderMap`, as any server handing requests to Strata's logic
//!   must (values are slices of the read buffer, no copy);
//! - a file's response head is written into a reused buffer and sent with
//!   its body in one `writev`;
//! - `/api/*` goes over one upstream connection per client connection,
//!   driven by the client connection's own task: the request head is
//!   re-emitted with `Connection` dropped and `X-Forwarded-For` added, the
//!   response head is parsed with `httparse` and re-emitted with
//!   `Connection`/`Keep-Alive` dropped and `Via` added (nginx's way of
//!   proxying: bytes in, edits, bytes out; no `HeaderMap` for the response).
//!
//! It is a measuring instrument, not a server: GET only, no request bodies,
//! `Content-Length` upstream bodies only, any parse error closes the
//! connection. Figures and method: docs/performance.md §10.
//!
//! usage: raw-limit --listen ADDR --docroot DIR --origin ADDR
//! build: cargo build --release --manifest-path benches/raw-limit/Cargo.toml --target-dir /tmp/raw-limit
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Doc {
    body: Bytes,
    content_type: &'static str,
    etag: String,
}

fn load(root: &Path, dir: &Path, docs: &mut HashMap<String, Doc>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            load(root, &path, docs)?;
            continue;
        }
        let body = Bytes::from(std::fs::read(&path)?);
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let content_type = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => "application/json",
            Some("js") => "application/javascript",
            Some("html") => "text/html",
            _ => "application/octet-stream",
        };
        let sum = body.iter().map(|b| u64::from(*b)).sum::<u64>();
        let etag = format!("\"{:x}-{:x}\"", body.len(), sum);
        docs.insert(
            format!("/{}", rel.display()),
            Doc {
                body,
                content_type,
                etag,
            },
        );
    }
    Ok(())
}

/// Writes `head` then `body` in as few `writev`s as the socket allows.
async fn send(s: &mut TcpStream, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < head.len() + body.len() {
        let n = if off < head.len() {
            s.write_vectored(&[IoSlice::new(&head[off..]), IoSlice::new(body)])
                .await?
        } else {
            s.write(&body[off - head.len()..]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        off += n;
    }
    Ok(())
}

/// Reads more bytes into `buf`; `Err` at end of stream.
async fn fill(s: &mut TcpStream, buf: &mut BytesMut, want: usize) -> std::io::Result<()> {
    if buf.capacity() - buf.len() < want.max(1024) {
        buf.reserve(want.max(8192));
    }
    match s.read_buf(buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

struct Upstream {
    origin: Arc<String>,
    conn: Option<TcpStream>,
    buf: BytesMut,
}

impl Upstream {
    /// Forwards a GET of `path` with `headers`; returns the re-emitted
    /// response head and the body.
    async fn forward(
        &mut self,
        path: &str,
        headers: &HeaderMap,
        out: &mut Vec<u8>,
    ) -> std::io::Result<Bytes> {
        out.clear();
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            if name == http::header::CONNECTION {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: 127.0.0.1\r\n\r\n");
        if self.conn.is_none() {
            let conn = TcpStream::connect(self.origin.as_str()).await?;
            conn.set_nodelay(true)?;
            self.conn = Some(conn);
        }
        let Some(up) = self.conn.as_mut() else {
            unreachable!()
        };
        up.write_all(out).await?;
        let (head_len, body_len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 100];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    out.clear();
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
                    let mut len = 0;
                    for f in resp.headers.iter() {
                        if f.name.eq_ignore_ascii_case("content-length") {
                            len = std::str::from_utf8(f.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or(std::io::ErrorKind::InvalidData)?;
                        }
                        if f.name.eq_ignore_ascii_case("connection")
                            || f.name.eq_ignore_ascii_case("keep-alive")
                        {
                            continue;
                        }
                        out.extend_from_slice(f.name.as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(f.value);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"via: 1.1 raw-limit\r\n\r\n");
                    break (n, len);
                }
                Ok(httparse::Status::Partial) => fill(up, &mut self.buf, 0).await?,
                Err(_) => return Err(std::io::ErrorKind::InvalidData.into()),
            }
        };
        let _ = self.buf.split_to(head_len);
        while self.buf.len() < body_len {
            fill(up, &mut self.buf, body_len).await?;
        }
        Ok(self.buf.split_to(body_len).freeze())
    }
}

async fn serve(
    docs: Arc<HashMap<String, Doc>>,
    origin: Arc<String>,
    mut s: TcpStream,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8192);
    let mut head = Vec::with_capacity(512);
    let mut upstream = Upstream {
        origin,
        conn: None,
        buf: BytesMut::with_capacity(8192),
    };
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut fields);
        let n = match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                fill(&mut s, &mut buf, 0).await?;
                continue;
            }
            Err(_) => return Err(std::io::ErrorKind::InvalidData.into()),
        };
        // What a server handing the request to Strata's logic must build:
        // method, URI and a HeaderMap whose values share the read buffer.
        let base = buf.as_ptr() as usize;
        let spans: Vec<_> = req
            .headers
            .iter()
            .map(|f| {
                (
                    f.name.as_ptr() as usize - base,
                    f.name.len(),
                    f.value.as_ptr() as usize - base,
                    f.value.len(),
                )
            })
            .collect();
        let method = http::Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| std::io::ErrorKind::InvalidData)?;
        let uri: http::Uri = req
            .path
            .unwrap_or("/")
            .parse()
            .map_err(|_| std::io::ErrorKind::InvalidData)?;
        let bytes = buf.split_to(n).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for (name_at, name_len, value_at, value_len) in spans {
            let name = HeaderName::from_bytes(&bytes[name_at..name_at + name_len])
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(value_at..value_at + value_len))
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
            headers.append(name, value);
        }
        if method != http::Method::GET {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        if uri.path().starts_with("/api/") {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let body = upstream.forward(path, &headers, &mut head).await?;
            send(&mut s, &head, &body).await?;
            continue;
        }
        let path = if uri.path() == "/health" {
            "/small.json"
        } else {
            uri.path()
        };
        head.clear();
        let body = match docs.get(path) {
            Some(d) => {
                head.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: ");
                head.extend_from_slice(d.content_type.as_bytes());
                head.extend_from_slice(b"\r\ncache-control: public, max-age=3600\r\netag: ");
                head.extend_from_slice(d.etag.as_bytes());
                head.extend_from_slice(
                    b"\r\nlast-modified: Tue, 14 Nov 2023 22:13:20 GMT\r\ncontent-length: ",
                );
                head.extend_from_slice(d.body.len().to_string().as_bytes());
                // A fixed date: hyper-limit's is cached per second.
                head.extend_from_slice(b"\r\ndate: Mon, 30 Nov 2026 12:00:00 GMT\r\n\r\n");
                d.body.clone()
            }
            None => {
                head.extend_from_slice(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                Bytes::new()
            }
        };
        send(&mut s, &head, &body).await?;
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| {
                eprintln!("usage: raw-limit --listen ADDR --docroot DIR --origin ADDR");
                std::process::exit(2)
            })
    };
    let listen: SocketAddr = arg("--listen")
        .parse()
        .map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let root = std::path::PathBuf::from(arg("--docroot"));
    let mut docs = HashMap::new();
    load(&root, &root, &mut docs)?;
    let docs = Arc::new(docs);
    let origin = Arc::new(arg("--origin"));
    let listener = TcpListener::bind(listen).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(docs.clone(), origin.clone(), stream));
    }
}

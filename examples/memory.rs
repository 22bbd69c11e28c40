//! The memory bound (SPEC §10), measured: fills the memory tier through
//! the real proxy path (an origin on 127.0.0.1:0, Strata in this process,
//! an HTTP client) with objects of one size, then reports the process RSS
//! plus the body arena's pages (bodies of 16 KiB and more, kept in shared
//! memory for `sendfile`) against `memory_capacity` and the bound 1.25 × capacity + 64 MiB; then
//! holds idle keep-alive connections (each after one request) and reports
//! what one costs.
//!
//! `cargo run --release --example memory -- [OBJECT_SIZE] [CAPACITY] [IDLE]`
//! (defaults `1KiB 64MiB 2000`). It requests twice the capacity's worth
//! of distinct URLs, so the tier is full and evicting when measured. The
//! RSS includes the origin and the client living in the same process, so
//! it over-states Strata's own. Linux only (`/proc/self/status`).

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strata::config::units::parse_size;
use strata::config::Config;
use strata::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The allocator the `strata` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: f64 = 1024.0 * 1024.0;

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// An origin answering every path with `body` and typical headers, made
/// storable for an hour.
async fn origin(body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let etag = format!("\"{:x}\"", req.uri().path().len() * 7919);
                        let r = Response::builder()
                            .header("content-type", "application/octet-stream")
                            .header("cache-control", "public, max-age=3600")
                            .header("etag", etag)
                            .header("last-modified", "Mon, 02 Jan 2006 15:04:05 GMT")
                            .header("server", "memory-example")
                            .header("x-request-id", "0123456789abcdef0123456789abcdef")
                            .body(Full::new(body))
                            .expect("response");
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// GETs `path` from Strata; returns the body length.
async fn get(client: &HttpClient, addr: SocketAddr, path: String) -> usize {
    let uri = format!("http://{addr}{path}");
    let resp = client
        .get(uri.parse().expect("uri"))
        .await
        .expect("response");
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg =
        |i: usize, default: &str| parse_size(args.get(i).map_or(default, |s| s)).expect("size");
    let size = arg(0, "1KiB");
    let capacity = arg(1, "64MiB");
    let idle = arg(2, "2000") as usize;

    let upstream = origin(Bytes::from(vec![b'x'; size as usize])).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nservers = [\"{upstream}\"]\n[upstream.health]\nenabled = false\n\
         [cache]\nmemory_capacity = \"{capacity}\"\nmax_object_size = \"16MiB\"\n"
    );
    let config = Config::parse(Path::new("memory.toml"), &text).expect("config");
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr();
    let shared = server.shared();
    tokio::spawn(server.run(std::future::pending()));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    get(&client, addr, "/warmup".into()).await;
    let baseline = rss();

    let total = (2 * capacity / size).max(64);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let next = next.clone();
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                get(&client, addr, format!("/objects/{i}")).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    drop(client);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = shared.cache.memory();
    let accounted = memory.weighted_size();
    // Large bodies live in the body arena (shared memory, outside RSS
    // until read through the mapping): counted with the process.
    let arena = strata::cache::arena::get().map_or(0, |a| a.in_use());
    let filled = rss() + arena;
    let bound = 1.25 * capacity as f64 + 64.0 * MIB;
    println!(
        "objects of {size} B, capacity {:.1} MiB: {total} requested, {} stored, {:.1} MiB accounted",
        capacity as f64 / MIB,
        memory.entry_count(),
        accounted as f64 / MIB,
    );
    println!(
        "RSS + body arena {:.1} MiB (arena {:.1} MiB; baseline {:.1} MiB, growth {:.1} MiB = {:.2} × capacity); bound {:.1} MiB: {}",
        filled as f64 / MIB,
        arena as f64 / MIB,
        baseline as f64 / MIB,
        filled.saturating_sub(baseline) as f64 / MIB,
        filled.saturating_sub(baseline) as f64 / capacity as f64,
        bound / MIB,
        if (filled as f64) <= bound { "within" } else { "EXCEEDED" },
    );

    // Idle keep-alive connections, each after one (hit) request.
    let before = rss();
    let mut held = Vec::with_capacity(idle);
    for _ in 0..idle {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /objects/0 HTTP/1.1\r\nHost: memory\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let mut got = 0usize;
        // Read the head and body: the body is `size` bytes.
        while got < size as usize + 150 {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss();
    if idle > 0 {
        println!(
            "{idle} idle keep-alive connections: {:.1} KiB each",
            after.saturating_sub(before) as f64 / 1024.0 / idle as f64
        );
    }
    let _ = std::io::stdout().flush();
    drop(held);
}

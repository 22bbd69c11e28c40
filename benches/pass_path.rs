//! The pass-through path's Strata-side work, in three views:
//! - `rewrite`: the header work of one pass-through — the client request
//!   rewritten for the upstream (hop-by-hop fields out, `X-Forwarded-*`
//!   and `Via` in) and the upstream response's hop-by-hop fields removed;
//! - `pooled_exchange`: one request through the upstream connection pool
//!   to an in-process hyper origin over loopback (checkout, send, read the
//!   1 KiB body, checkin) — the pool's cost plus hyper's and the kernel's;
//! - `loopback`: a full HTTP/1.1 keep-alive request to a running Strata
//!   whose origin answers `Cache-Control: no-store` (every request passes
//!   through).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use strata::proxy::{forward, headers, ConnInfo};
use strata::upstream::{client::empty_body, UpstreamClient};

/// A browser-like request head.
fn client_request() -> Request<strata::upstream::ReqBody> {
    let mut req = Request::new(empty_body());
    *req.uri_mut() = "/api/items.json?page=2".parse().expect("uri");
    let h = req.headers_mut();
    for (k, v) in [
        ("host", "bench.local"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("cookie", "session=abc123; theme=dark"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    req
}

fn upstream_response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "1024"),
        ("cache-control", "no-store"),
        ("date", "Sun, 29 Nov 2026 18:00:00 GMT"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=60"),
        ("server", "nginx"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn rewrite(c: &mut Criterion) {
    let conn = ConnInfo::new("192.0.2.7:50000".parse().expect("peer"), false);
    let server = strata::config::Config::parse(
        std::path::Path::new("bench.toml"),
        &config_text("127.0.0.1:9".parse().expect("addr")),
    )
    .expect("config")
    .server;
    let resp_headers = upstream_response_headers();
    let mut g = c.benchmark_group("pass_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rewrite_request_and_response_heads", |b| {
        b.iter_batched(
            || (client_request(), resp_headers.clone()),
            |(req, mut resp)| {
                let req = forward::upstream_request(req, conn, &server, false);
                headers::strip_hop_by_hop(&mut resp, false);
                (req, resp)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// An in-process origin answering every request with 1 KiB, `no-store`.
async fn origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r =
                        Response::new(http_body_util::Full::new(Bytes::from(vec![b'x'; 1024])));
                    r.headers_mut()
                        .insert("cache-control", HeaderValue::from_static("no-store"));
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn config_text(origin: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nservers = [\"{origin}\"]\n[upstream.health]\nenabled = false\n"
    )
}

fn pooled_exchange(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt.block_on(async {
        let addr = origin().await;
        let config =
            strata::config::Config::parse(std::path::Path::new("bench.toml"), &config_text(addr))
                .expect("config");
        let authority: http::uri::Authority = addr.to_string().parse().expect("authority");
        UpstreamClient::new(std::iter::once(&authority), &config.upstream)
    });
    let mut g = c.benchmark_group("pass_path");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("pooled_exchange_1KiB", |b| {
        b.to_async(&rt).iter(|| async {
            let mut req = Request::new(empty_body());
            *req.uri_mut() = http::Uri::from_static("/api/items.json");
            req.headers_mut()
                .insert("host", HeaderValue::from_static("bench.local"));
            let resp = match client
                .request(0, req, true, Duration::from_secs(5), Duration::from_secs(5))
                .await
            {
                Ok(r) => r,
                Err(f) => panic!("exchange failed: {}", f.error),
            };
            resp.into_body().collect().await.expect("body").to_bytes()
        })
    });
    g.finish();
}

fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (uri, client) = rt.block_on(async {
        let addr = origin().await;
        let config =
            strata::config::Config::parse(std::path::Path::new("bench.toml"), &config_text(addr))
                .expect("config");
        let server = strata::server::Server::bind(config)
            .await
            .expect("bind strata");
        let uri: http::Uri = format!("http://{}/api/items.json", server.local_addr())
            .parse()
            .expect("uri");
        tokio::spawn(server.run(std::future::pending()));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        (uri, client)
    });
    let mut g = c.benchmark_group("pass_path");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("loopback_http1_pass_1KiB", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = client.get(uri.clone()).await.expect("response");
            resp.into_body().collect().await.expect("body").to_bytes()
        })
    });
    g.finish();
}

criterion_group!(benches, rewrite, pooled_exchange, loopback);
criterion_main!(benches);

//! The memory hit path, in two views:
//! - `lookup_respond`: what a hit does after parsing — hash the key parts,
//!   look up the memory tier, select the Vary variant, decide freshness,
//!   build the response (a clone of stored `Bytes` and headers) and its
//!   Cache-Status;
//! - `loopback`: a full HTTP/1.1 keep-alive request to a running Strata
//!   on 127.0.0.1 answered from memory (includes hyper and the kernel).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use strata::cache::directives::CacheControl;
use strata::cache::entry::{Object, Variant, VaryKey};
use strata::cache::freshness::{self, now_millis, Heuristic};
use strata::cache::key::CacheKey;
use strata::cache::memory::MemoryTier;
use strata::proxy::cache_status::{CacheStatus, Tier};
use strata::proxy::stored as respond;
use strata::proxy::validate::Present;

fn object(body: Bytes) -> Arc<Object> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("content-length", HeaderValue::from(body.len()));
    headers.insert("etag", HeaderValue::from_static("\"v1\""));
    let now = now_millis();
    let cc = CacheControl::from_headers(&headers);
    let h = Heuristic {
        fraction: 0.1,
        max_secs: 86_400,
    };
    let variant = Variant {
        vary: VaryKey::default(),
        status: StatusCode::OK,
        policy: freshness::policy(StatusCode::OK, &headers, &cc, now, h, 10),
        times: freshness::times(&headers, now, now),
        headers,
        body,
        encoded: Vec::new(),
        tags: Vec::new(),
        strata_cc: None,
        soft_purged: false,
        hits: Default::default(),
        refresh: Default::default(),
    };
    Arc::new(Object {
        key: CacheKey::new(false, "bench.local", "/small.json"),
        variants: vec![Arc::new(variant)],
    })
}

fn lookup_respond(c: &mut Criterion) {
    let tier = MemoryTier::new(64 << 20);
    tier.insert(object(Bytes::from(vec![b'x'; 1024])));
    let mut req = HeaderMap::new();
    req.insert("host", HeaderValue::from_static("bench.local"));
    req.insert("accept", HeaderValue::from_static("*/*"));
    let req_cc = CacheControl::default();
    let mut g = c.benchmark_group("hit_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup_respond_1KiB", |b| {
        b.iter(|| {
            let now = now_millis();
            let hash = CacheKey::hash_of(false, "bench.local", "/small.json");
            let obj = tier
                .lookup(hash, false, "bench.local", "/small.json")
                .expect("hit");
            let v = obj.select(&req).expect("variant");
            let ttl = match freshness::reuse(&v.policy, &v.times, now, &req_cc) {
                freshness::Reuse::Fresh { ttl } => ttl,
                other => panic!("{other:?}"),
            };
            let present = Present::of(&req);
            let mut resp = respond::from_stored(v, &Method::GET, &req, present, None, None, now);
            resp.headers_mut().insert(
                "cache-status",
                CacheStatus::hit(Tier::Memory, ttl).to_header(),
            );
            resp
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
    let (url, client) = rt.block_on(async {
        // An origin that answers a cacheable 1 KiB JSON body.
        let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let origin_addr = origin.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = origin.accept().await else { continue };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(vec![b'x'; 1024])));
                        r.headers_mut().insert("cache-control", HeaderValue::from_static("max-age=3600"));
                        r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nservers = [\"{origin_addr}\"]\n[upstream.health]\nenabled = false\n"
        );
        let config = strata::config::Config::parse(std::path::Path::new("bench.toml"), &text).expect("config");
        let server = strata::server::Server::bind(config).await.expect("bind strata");
        let url = format!("http://{}/small.json", server.local_addr());
        tokio::spawn(server.run(std::future::pending()));
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<Bytes>>();
        (url, client)
    });
    let uri: http::Uri = url.parse().expect("uri");
    let mut g = c.benchmark_group("hit_path");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("loopback_http1_1KiB", |b| {
        b.to_async(&rt).iter(|| async {
            use http_body_util::BodyExt;
            let resp = client.get(uri.clone()).await.expect("response");
            resp.into_body().collect().await.expect("body").to_bytes()
        })
    });
    g.finish();
}

criterion_group!(benches, lookup_respond, loopback);
criterion_main!(benches);

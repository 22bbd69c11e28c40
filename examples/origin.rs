//! A small example origin for trying Strata: `cargo run --example origin --
//! 127.0.0.1:3001 [more addresses]`. It serves an HTML page, a script and a
//! stylesheet under `/assets/`, a JSON API under `/api/`, `/health`, and
//! names the port that answered in `X-Origin` so round-robin is visible.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn page(title: &str) -> String {
    let mut s = format!(
        "<!doctype html><html><head><title>{title}</title>\
         <link rel=stylesheet href=/assets/site.css><script src=/assets/app.js></script></head><body>\n"
    );
    for i in 0..60 {
        s.push_str(&format!(
            "<p>Paragraph {i} of {title}: Strata serves this page from its cache after the first request.</p>\n"
        ));
    }
    s.push_str("</body></html>\n");
    s
}

fn script() -> String {
    let mut s = String::new();
    for i in 0..400 {
        s.push_str(&format!(
            "export function handler{i}(event) {{ return event.target.dataset.value + {i}; }}\n"
        ));
    }
    s
}

async fn answer(
    req: Request<Incoming>,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_string();
    let (status, ctype, body) = match path.as_str() {
        "/health" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/" | "/index.html" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            page("Strata demo"),
        ),
        "/assets/app.js" => (StatusCode::OK, "application/javascript", script()),
        "/assets/site.css" => (
            StatusCode::OK,
            "text/css",
            "body { font-family: sans-serif; max-width: 40em; margin: auto; }\n".repeat(30),
        ),
        p if p.starts_with("/api/") => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            (
                StatusCode::OK,
                "application/json",
                format!("{{\"path\":\"{p}\",\"served_by\":\"{addr}\",\"request\":{n},\"time\":{now}}}\n"),
            )
        }
        p if p.ends_with(".html") => (StatusCode::OK, "text/html; charset=utf-8", page(p)),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    if let Ok(v) = header::HeaderValue::from_str(&addr.to_string()) {
        h.insert("x-origin", v);
    }
    Ok(resp)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let addrs = if addrs.is_empty() {
        vec!["127.0.0.1:3001"
            .parse()
            .map_err(|e| std::io::Error::other(format!("{e}")))?]
    } else {
        addrs
    };
    let mut tasks = Vec::new();
    for addr in addrs {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("origin listening on http://{addr}");
        let hits = Arc::new(AtomicU64::new(0));
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let hits = hits.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| answer(req, addr, hits.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

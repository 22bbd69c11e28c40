//! Test support: real origins and a real Strata on 127.0.0.1:0, an HTTP
//! client, and bounded waits. Origins count every request they see.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod browser;
pub mod http;
pub mod origin;
pub mod redis;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use strata::config::Config;
use strata::server::Server;
use tokio::sync::oneshot;

pub use self::http::{Client, Reply};
pub use origin::{Origin, Seen};

/// An HTTP date `offset_secs` from now (negative: in the past).
pub fn http_date(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

/// Polls `cond` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running in-process Strata.
pub struct Strata {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub shared: std::sync::Arc<strata::proxy::Shared>,
    /// Applies a configuration as SIGHUP does (certificates included).
    pub reloader: strata::server::Reloader,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

/// Renders a minimal config: listeners on port 0, the given upstreams, and
/// `extra` TOML appended (sections such as `[cache]`, `[[rules]]`).
pub fn config_text(upstreams: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"secret\"\n\n[upstream]\nservers = [{}]\n",
        servers.join(", ")
    );
    text.push_str(extra);
    text
}

impl Strata {
    /// Starts Strata with `config_text(upstreams, extra)`.
    pub async fn start(upstreams: &[SocketAddr], extra: &str) -> Strata {
        Strata::start_text(&config_text(upstreams, extra)).await
    }

    /// Two instances with the same config (which names a Redis tier),
    /// returned once both are connected to Redis (within 10 s).
    pub async fn pair_sharing_redis(upstreams: &[SocketAddr], extra: &str) -> (Strata, Strata) {
        let a = Strata::start(upstreams, extra).await;
        let b = Strata::start(upstreams, extra).await;
        wait_until(
            Duration::from_secs(10),
            "both instances connected to Redis",
            || async {
                a.shared.cache.redis_state() == Some((true, false))
                    && b.shared.cache.redis_state() == Some((true, false))
            },
        )
        .await;
        (a, b)
    }

    pub async fn start_text(text: &str) -> Strata {
        let config = Config::parse(Path::new("test.toml"), text)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        Strata::start_config(config).await
    }

    pub async fn start_config(config: Config) -> Strata {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr();
        let admin = server.admin_addr().expect("admin addr");
        let tls = server.tls_addr();
        let shared = server.shared();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel();
        let done = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
        });
        Strata {
            addr,
            admin,
            tls,
            shared,
            reloader,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `POST /purge` with the test token and a JSON `body`: the status and
    /// the JSON answer (`Null` when it is not JSON).
    pub async fn purge(&self, body: &str) -> (u16, serde_json::Value) {
        let r = Client::new()
            .send(
                ::http::Method::POST,
                &self.admin_url("/purge"),
                &[
                    ("authorization", "Bearer secret"),
                    ("content-type", "application/json"),
                ],
                bytes::Bytes::from(body.to_string()),
            )
            .await;
        (
            r.status.as_u16(),
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `GET /cache?url=…` on the admin listener, `url` form-encoded.
    pub fn inspect_url(&self, url: &str) -> String {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("url", url)
            .finish();
        self.admin_url(&format!("/cache?{q}"))
    }

    /// Stops accepting and drains (bounded by the drain timeout).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), done).await;
        }
    }
}

impl Drop for Strata {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

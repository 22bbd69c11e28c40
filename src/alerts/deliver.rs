//! Sending one batch to one webhook: a `POST` with the formatted body,
//! optionally signed, bounded by the webhook's `timeout`, tried up to
//! [`TRIES`] times with a doubling backoff; then given up and counted.
//!
//! The client is hyper-util's pooled client over hyper-rustls (rustls with
//! the `ring` provider and Mozilla's roots from `webpki-roots`, so HTTPS
//! receivers work in a minimal container without a CA bundle). HMAC-SHA256
//! is the `hmac` and `sha2` crates (as for sticky cookies).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use super::WebhookConfig;

/// Tries per batch (the first and two retries).
pub const TRIES: u32 = 3;

/// The signature header: `t=UNIX,v1=HEX(HMAC-SHA256(secret, "t.body"))`.
pub const SIGNATURE: &str = "strata-signature";

/// Why one try failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot send: {0}")]
    Send(#[source] hyper_util::client::legacy::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("receiver answered {0}")]
    Status(http::StatusCode),
    #[error("invalid request: {0}")]
    Request(#[source] http::Error),
}

/// Delivers webhook bodies. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Base of the retry backoff (doubles per try).
    backoff: Duration,
}

impl Sender {
    pub fn new(backoff: Duration) -> Result<Sender, rustls::Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Sender { client, backoff })
    }

    /// Sends `body` to `hook`, retrying; `Ok(tries)` when a try got a 2xx,
    /// else the last error and the number of tries made.
    pub async fn deliver(
        &self,
        hook: &WebhookConfig,
        body: Bytes,
    ) -> Result<u32, (u32, DeliveryError)> {
        let mut last = None;
        for attempt in 1..=TRIES {
            match self.try_once(hook, body.clone()).await {
                Ok(()) => return Ok(attempt),
                Err(e) => {
                    tracing::debug!(url = %redacted(&hook.url), attempt, error = %e, "webhook delivery failed");
                    last = Some(e);
                }
            }
            if attempt < TRIES {
                tokio::time::sleep(self.backoff * 2u32.pow(attempt - 1)).await;
            }
        }
        Err((TRIES, last.unwrap_or(DeliveryError::Timeout(hook.timeout))))
    }

    async fn try_once(&self, hook: &WebhookConfig, body: Bytes) -> Result<(), DeliveryError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(hook.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("strata/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &hook.authorization {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        if let Some(secret) = &hook.secret {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match signature(secret, now, &body).map(|s| HeaderValue::from_str(&s)) {
                Some(Ok(v)) => req = req.header(SIGNATURE, v),
                _ => tracing::warn!("cannot sign the webhook body: sent unsigned"),
            }
        }
        let req = req.body(Full::new(body)).map_err(DeliveryError::Request)?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(DeliveryError::Send)?;
            let status = resp.status();
            // Read (and drop) the answer so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(DeliveryError::Status(status))
            }
        };
        tokio::time::timeout(hook.timeout, work)
            .await
            .unwrap_or(Err(DeliveryError::Timeout(hook.timeout)))
    }
}

/// `t=UNIX,v1=HEX(HMAC-SHA256(secret, "UNIX.body"))`: the receiver
/// recomputes it over the raw body and rejects old `t` (replays).
/// `None` only if the key is refused (HMAC takes keys of any length).
pub fn signature(secret: &str, unix: u64, body: &[u8]) -> Option<String> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(80);
    out.push_str("t=");
    out.push_str(&unix.to_string());
    out.push_str(",v1=");
    for b in tag.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    Some(out)
}

/// The URL without its path and query, which often embed a token (Slack
/// webhook URLs are secrets), and without userinfo: only scheme, host and
/// port are logged.
pub fn redacted(url: &http::Uri) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}/…",
        url.scheme_str().unwrap_or("http"),
        url.host().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Python: hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("s3cret", 1_700_000_000, b"{}").unwrap(),
            "t=1700000000,v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }

    #[test]
    fn logged_urls_hide_path_and_query() {
        let u: http::Uri = "https://hooks.example.com/services/T0/B0/XYZ?x=1"
            .parse()
            .unwrap();
        assert_eq!(redacted(&u), "https://hooks.example.com/…");
        let u: http::Uri = "http://user:WHPASS@127.0.0.1:24004/services/X"
            .parse()
            .unwrap();
        assert_eq!(redacted(&u), "http://127.0.0.1:24004/…");
    }
}

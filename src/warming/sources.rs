//! Where warming URLs come from: the URL file (one path or absolute URL a
//! line, `#` comments) and sitemaps (sitemaps.org: `<urlset>` and
//! `<sitemapindex>`, plain or gzip), parsed with `quick-xml` and inflated
//! with `flate2` rather than by hand.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use quick_xml::events::Event;
use quick_xml::Reader;

use super::Target;

/// Bytes one sitemap may hold, decompressed (the protocol's limit).
const MAX_SITEMAP_BYTES: usize = 50 * 1024 * 1024;
/// URLs one sitemap may list (the protocol's limit).
const MAX_URLS: usize = 50_000;
/// Sitemaps fetched in one round (an index and its children).
const MAX_SITEMAPS: usize = 1000;
/// Index levels followed below the configured sitemap.
const MAX_INDEX_DEPTH: usize = 2;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a source (or one sitemap) gave no URLs.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot read the URL file")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sitemap {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("sitemap {url}: the server answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("sitemap {url}: invalid gzip")]
    Gzip {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sitemap {url}: invalid XML: {reason}")]
    Xml { url: String, reason: String },
}

/// The URLs of the URL file. Lines that are neither a path nor an
/// absolute http(s) URL are skipped with a warning.
pub fn urls_file(
    path: &Path,
    host: Option<&str>,
    default_host: &str,
) -> Result<Vec<Target>, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_lines(
        &text,
        host,
        default_host,
        &path.display().to_string(),
    ))
}

fn parse_lines(text: &str, host: Option<&str>, default_host: &str, file: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match Target::parse(line, host, default_host) {
            Some(t) => out.push(t),
            None => tracing::warn!(
                file,
                line = n + 1,
                "warming: not a path or an absolute http(s) URL; skipped"
            ),
        }
    }
    out
}

/// A parsed sitemap document.
#[derive(Debug, Default, PartialEq, Eq)]
struct Document {
    /// `<sitemapindex>`: the `<loc>`s are sitemaps.
    index: bool,
    locs: Vec<String>,
}

/// Every page URL reachable from the sitemap at `url` (following indexes),
/// and the errors met on the way (a failing child sitemap does not lose
/// the others).
pub async fn sitemap(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    host: Option<&str>,
) -> (Vec<Target>, Vec<SourceError>) {
    let mut targets = Vec::new();
    let mut errors = Vec::new();
    let mut queue = vec![(url.to_string(), 0usize)];
    let mut fetched = HashSet::new();
    while let Some((url, depth)) = queue.pop() {
        if !fetched.insert(url.clone()) || fetched.len() > MAX_SITEMAPS {
            continue;
        }
        let doc = match fetch(client, &url).await.and_then(|b| parse(&url, &b)) {
            Ok(doc) => doc,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if doc.index {
            if depth < MAX_INDEX_DEPTH {
                queue.extend(doc.locs.into_iter().rev().map(|l| (l, depth + 1)));
            }
            continue;
        }
        let default_host = url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        for loc in doc.locs.iter().take(MAX_URLS) {
            match Target::parse(loc, host, &default_host) {
                Some(t) => targets.push(t),
                None => tracing::debug!(sitemap = %url, loc, "warming: unusable <loc> skipped"),
            }
        }
    }
    (targets, errors)
}

/// GETs a sitemap (plain HTTP), inflating gzip (recognised by its magic
/// bytes, whatever the name or Content-Type says).
async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<Bytes, SourceError> {
    let fail = |reason: String| SourceError::Fetch {
        url: url.to_string(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| fail("invalid URL".into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(fail("only http:// sitemaps can be fetched".into()));
    }
    let exchange = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|e| fail(format!("request failed: {e}")))?;
        if resp.status() != StatusCode::OK {
            return Err(SourceError::Status {
                url: url.to_string(),
                status: resp.status(),
            });
        }
        Limited::new(resp.into_body(), MAX_SITEMAP_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| fail(format!("body: {e}")))
    };
    let body = tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))??;
    if !body.starts_with(&[0x1f, 0x8b]) {
        return Ok(body);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(MAX_SITEMAP_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| SourceError::Gzip {
            url: url.to_string(),
            source,
        })?;
    if out.len() > MAX_SITEMAP_BYTES {
        return Err(fail("larger than 50 MiB once inflated".into()));
    }
    Ok(Bytes::from(out))
}

/// The root element kind and every `<loc>` (entities resolved).
fn parse(url: &str, xml: &[u8]) -> Result<Document, SourceError> {
    let bad = |reason: String| SourceError::Xml {
        url: url.to_string(),
        reason,
    };
    let mut reader = Reader::from_reader(xml);
    let mut doc = Document::default();
    let mut root = true;
    loop {
        match reader.read_event().map_err(|e| bad(e.to_string()))? {
            Event::Start(e) => {
                let name = e.local_name();
                if root {
                    root = false;
                    match name.as_ref() {
                        b"sitemapindex" => doc.index = true,
                        b"urlset" => {}
                        other => {
                            return Err(bad(format!(
                                "root element <{}>, expected <urlset> or <sitemapindex>",
                                String::from_utf8_lossy(other)
                            )))
                        }
                    }
                } else if name.as_ref() == b"loc" {
                    let end = e.to_end().into_owned();
                    let raw = reader
                        .read_text(end.name())
                        .map_err(|e| bad(e.to_string()))?;
                    let raw = raw.decode().map_err(|e| bad(e.to_string()))?;
                    let loc = quick_xml::escape::unescape(&raw).map_err(|e| bad(e.to_string()))?;
                    let loc = loc.trim();
                    if !loc.is_empty() {
                        doc.locs.push(loc.to_string());
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if root {
        return Err(bad("no root element".into()));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_file_lines() {
        let text = "# warm these\n\n/a\n  /b?x=1  \nhttp://h.example/c\nnot a url\n# /commented\n";
        let t = parse_lines(text, None, "127.0.0.1:80", "warm.txt");
        let got: Vec<(String, String)> = t.into_iter().map(|t| (t.host, t.path)).collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:80".to_string(), "/a".to_string()),
                ("127.0.0.1:80".to_string(), "/b?x=1".to_string()),
                ("h.example".to_string(), "/c".to_string()),
            ]
        );
    }

    #[test]
    fn sitemaps_and_indexes() {
        let urlset = br#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>http://www.example.com/</loc><lastmod>2024-01-01</lastmod></url>
  <url><loc> http://www.example.com/p?a=1&amp;b=2 </loc></url>
</urlset>"#;
        let doc = parse("u", urlset).unwrap();
        assert!(!doc.index);
        assert_eq!(
            doc.locs,
            [
                "http://www.example.com/",
                "http://www.example.com/p?a=1&b=2"
            ]
        );
        let index = br#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<sitemap><loc>http://h/s1.xml</loc></sitemap><sitemap><loc>http://h/s2.xml.gz</loc></sitemap>
</sitemapindex>"#;
        let doc = parse("u", index).unwrap();
        assert!(doc.index);
        assert_eq!(doc.locs, ["http://h/s1.xml", "http://h/s2.xml.gz"]);
        assert!(parse("u", b"<html><loc>x</loc></html>").is_err());
        assert!(parse("u", b"<urlset><url><loc>x</url></urlset>").is_err());
        assert!(parse("u", b"").is_err());
    }
}

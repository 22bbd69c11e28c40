//! `GET /dashboard`: one self-contained HTML page (HTML, CSS and scripts
//! inline, nothing fetched from elsewhere) that draws the `/events` stream
//! live.
//!
//! Charts are drawn by uPlot (MIT, vendored unmodified from the npm
//! package `uplot` 1.6.32, `dist/uPlot.iife.min.js` and `uPlot.min.css`,
//! its licence in `dashboard/uPlot.LICENSE`): a small, maintained
//! time-series library rather than hand-drawn canvas code. The assets are
//! compiled into the binary and assembled once; the page is about 70 KiB.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;

use crate::proxy::body::ProxyBody;

const TEMPLATE: &str = include_str!("dashboard/index.html");
const UPLOT_JS: &str = include_str!("dashboard/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("dashboard/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("dashboard/uPlot.LICENSE");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");

/// The assembled page.
static PAGE: LazyLock<Bytes> = LazyLock::new(|| {
    let license = format!(
        "/*! uPlot licence:\n{}*/\n",
        UPLOT_LICENSE.replace("*/", "* /")
    );
    Bytes::from(
        TEMPLATE
            .replace("/*UPLOT_CSS*/", UPLOT_CSS)
            .replace("/*UPLOT_JS*/", &format!("{license}{UPLOT_JS}"))
            .replace("/*DASHBOARD_JS*/", DASHBOARD_JS),
    )
});

/// What the page may load: itself, its own inline code, and `/events`.
/// Anything else (a CDN, a font) is refused by the browser and shows as a
/// console error, which the browser test fails on.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub fn page() -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(PAGE.clone()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_assembled_and_small() {
        let page = std::str::from_utf8(&PAGE).unwrap();
        assert!(!page.contains("/*UPLOT_") && !page.contains("/*DASHBOARD_JS*/"));
        assert!(page.contains("var uPlot=") && page.contains("new EventSource(\"events\")"));
        assert!(page.contains("The MIT License"));
        assert!(page.len() < 300 * 1024, "{} bytes", page.len());
        // Self-contained: nothing is loaded from elsewhere.
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    }
}

//! The dashboard: one HTML page with its CSS and vanilla JavaScript inline,
//! embedded in the binary (no build step, no CDN, nothing vendored). It
//! holds no data, so it is served without credentials; everything it shows
//! comes from the API and the stream, which are protected, and it shows a
//! login form when they answer 401. Every URL it uses is relative to the
//! page's own path, so it works wherever the router is nested.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the page, with a content security policy that allows only its
/// own inline code and same-origin requests.
pub(crate) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        PAGE,
    )
}

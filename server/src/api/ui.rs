//! The UI's script and stylesheet. They are files of their own, not inline
//! in the page, so the Content-Security-Policy can forbid inline script and
//! style (an injected `<script>` then does not run).

use axum::http::header;
use axum::response::IntoResponse;

const APP_JS: &str = include_str!("../../../web/app.js");
const APP_CSS: &str = include_str!("../../../web/app.css");

/// Not cached without asking: the page and its script change together when
/// the server is upgraded.
const CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

/// The UI's script.
#[utoipa::path(
    get,
    path = "/app.js",
    operation_id = "ui_script",
    tag = "ui",
    responses((status = 200, description = "The web UI's script.", body = String, content_type = "text/javascript"))
)]
pub async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            CACHE,
        ],
        APP_JS,
    )
}

/// The UI's stylesheet.
#[utoipa::path(
    get,
    path = "/app.css",
    operation_id = "ui_stylesheet",
    tag = "ui",
    responses((status = 200, description = "The web UI's stylesheet.", body = String, content_type = "text/css"))
)]
pub async fn app_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), CACHE],
        APP_CSS,
    )
}

//! The UI's page, script, stylesheet and bundled third-party code (CodeMirror,
//! uPlot: `web/vendor/`, built from `web/vendor-src/`). They are files of their
//! own, not inline in the page, so the Content-Security-Policy can forbid
//! inline script and style (an injected `<script>` then does not run).
//!
//! All are embedded at build time. For UI work, `WARDWATCH_WEB_DIR=<dir>`
//! makes the server read them from that directory on every request instead,
//! so a page change needs no rebuild (a development aid; read once at start).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// One UI file: its path under `web/`, its embedded copy and content type.
struct Asset {
    path: &'static str,
    embedded: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    path: "index.html",
    embedded: include_str!("../../../web/index.html"),
    content_type: "text/html; charset=utf-8",
};
const APP_JS: Asset = Asset {
    path: "app.js",
    embedded: include_str!("../../../web/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const APP_CSS: Asset = Asset {
    path: "app.css",
    embedded: include_str!("../../../web/app.css"),
    content_type: "text/css; charset=utf-8",
};
const VENDOR_JS: Asset = Asset {
    path: "vendor/vendor.js",
    embedded: include_str!("../../../web/vendor/vendor.js"),
    content_type: "text/javascript; charset=utf-8",
};
const VENDOR_CSS: Asset = Asset {
    path: "vendor/vendor.css",
    embedded: include_str!("../../../web/vendor/vendor.css"),
    content_type: "text/css; charset=utf-8",
};

fn web_dir() -> Option<&'static std::path::Path> {
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("WARDWATCH_WEB_DIR").map(Into::into))
        .as_deref()
}

/// Not cached without asking: the page and its script change together when
/// the server is upgraded.
fn serve(asset: &Asset) -> Response {
    let body = match web_dir() {
        Some(dir) => match std::fs::read_to_string(dir.join(asset.path)) {
            Ok(text) => text,
            Err(e) => {
                return (
                    axum::http::StatusCode::NOT_FOUND,
                    format!("WARDWATCH_WEB_DIR: {}: {e}", asset.path),
                )
                    .into_response()
            }
        },
        None => asset.embedded.to_string(),
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The UI: one page that reads the API.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "index",
    tag = "ui",
    responses((status = 200, description = "The web UI.", body = String, content_type = "text/html"))
)]
pub async fn index() -> Response {
    serve(&INDEX)
}

/// The UI's script.
#[utoipa::path(
    get,
    path = "/app.js",
    operation_id = "ui_script",
    tag = "ui",
    responses((status = 200, description = "The web UI's script.", body = String, content_type = "text/javascript"))
)]
pub async fn app_js() -> Response {
    serve(&APP_JS)
}

/// The UI's stylesheet.
#[utoipa::path(
    get,
    path = "/app.css",
    operation_id = "ui_stylesheet",
    tag = "ui",
    responses((status = 200, description = "The web UI's stylesheet.", body = String, content_type = "text/css"))
)]
pub async fn app_css() -> Response {
    serve(&APP_CSS)
}

/// The third-party code the UI bundles (CodeMirror and uPlot; built from
/// `web/vendor-src/`, committed, so building the server needs no Node).
#[utoipa::path(
    get,
    path = "/vendor.js",
    operation_id = "ui_vendor_script",
    tag = "ui",
    responses((status = 200, description = "The UI's bundled libraries.", body = String, content_type = "text/javascript"))
)]
pub async fn vendor_js() -> Response {
    serve(&VENDOR_JS)
}

/// The bundled libraries' stylesheet.
#[utoipa::path(
    get,
    path = "/vendor.css",
    operation_id = "ui_vendor_stylesheet",
    tag = "ui",
    responses((status = 200, description = "The UI's bundled libraries' stylesheet.", body = String, content_type = "text/css"))
)]
pub async fn vendor_css() -> Response {
    serve(&VENDOR_CSS)
}

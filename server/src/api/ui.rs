//! The UI's page, script, stylesheet and bundled third-party code (CodeMirror,
//! uPlot: `web/vendor/`, built from `web/vendor-src/`). They are files of their
//! own, not inline in the page, so the Content-Security-Policy can forbid
//! inline script and style (an injected `<script>` then does not run).
//!
//! All are embedded at build time. For UI work, `WARDWATCH_WEB_DIR=<dir>`
//! makes the server read them from that directory on every request instead,
//! so a page change needs no rebuild (a development aid; read once at start).

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

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
/// the server is upgraded. Asking is cheap: an unchanged file is a `304`
/// (its ETag is a hash of its content), so the 470 KB of bundled libraries
/// are not downloaded again on every page load.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    // Embedded files are served from the binary, not copied per request.
    let body: std::borrow::Cow<'static, str> = match web_dir() {
        Some(dir) => match std::fs::read_to_string(dir.join(asset.path)) {
            Ok(text) => text.into(),
            Err(e) => {
                return (
                    axum::http::StatusCode::NOT_FOUND,
                    format!("WARDWATCH_WEB_DIR: {}: {e}", asset.path),
                )
                    .into_response()
            }
        },
        None => asset.embedded.into(),
    };
    let etag = match web_dir() {
        Some(_) => etag_of(&body),
        // Embedded: hashed once.
        None => {
            static ETAGS: OnceLock<std::sync::Mutex<std::collections::HashMap<&str, String>>> =
                OnceLock::new();
            let mut etags = ETAGS
                .get_or_init(Default::default)
                .lock()
                .expect("etags lock");
            etags
                .entry(asset.path)
                .or_insert_with(|| etag_of(asset.embedded))
                .clone()
        }
    };
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let headers = [
        (header::CONTENT_TYPE, asset.content_type.to_string()),
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (header::ETAG, etag),
    ];
    if unchanged {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, body).into_response()
}

fn etag_of(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The UI: one page that reads the API.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "index",
    tag = "ui",
    responses(
        (status = 200, description = "The web UI.", body = String, content_type = "text/html"),
        (status = 304, description = "Unchanged since the ETag sent in `If-None-Match`."),
    )
)]
pub async fn index(request: HeaderMap) -> Response {
    serve(&INDEX, &request)
}

/// The UI's script.
#[utoipa::path(
    get,
    path = "/app.js",
    operation_id = "ui_script",
    tag = "ui",
    responses(
        (status = 200, description = "The web UI's script.", body = String, content_type = "text/javascript"),
        (status = 304, description = "Unchanged since the ETag sent in `If-None-Match`."),
    )
)]
pub async fn app_js(request: HeaderMap) -> Response {
    serve(&APP_JS, &request)
}

/// The UI's stylesheet.
#[utoipa::path(
    get,
    path = "/app.css",
    operation_id = "ui_stylesheet",
    tag = "ui",
    responses(
        (status = 200, description = "The web UI's stylesheet.", body = String, content_type = "text/css"),
        (status = 304, description = "Unchanged since the ETag sent in `If-None-Match`."),
    )
)]
pub async fn app_css(request: HeaderMap) -> Response {
    serve(&APP_CSS, &request)
}

/// The third-party code the UI bundles (CodeMirror and uPlot; built from
/// `web/vendor-src/`, committed, so building the server needs no Node).
#[utoipa::path(
    get,
    path = "/vendor.js",
    operation_id = "ui_vendor_script",
    tag = "ui",
    responses(
        (status = 200, description = "The UI's bundled libraries.", body = String, content_type = "text/javascript"),
        (status = 304, description = "Unchanged since the ETag sent in `If-None-Match`."),
    )
)]
pub async fn vendor_js(request: HeaderMap) -> Response {
    serve(&VENDOR_JS, &request)
}

/// The bundled libraries' stylesheet.
#[utoipa::path(
    get,
    path = "/vendor.css",
    operation_id = "ui_vendor_stylesheet",
    tag = "ui",
    responses(
        (status = 200, description = "The UI's bundled libraries' stylesheet.", body = String, content_type = "text/css"),
        (status = 304, description = "Unchanged since the ETag sent in `If-None-Match`."),
    )
)]
pub async fn vendor_css(request: HeaderMap) -> Response {
    serve(&VENDOR_CSS, &request)
}

//! The OpenAPI 3.1 document of the REST API, served at
//! `GET /api/openapi.json` for UI and client authors (and code generators).
//!
//! It is generated, never written: paths and methods from the route list
//! ([`super::routes`]), parameters and bodies from each handler's
//! `#[utoipa::path]`, schemas from the types in [`super::types`]. The
//! `openapi_http` end-to-end test checks the real answers against it. No
//! Swagger UI is bundled: the server often runs offline, and the JSON is
//! what tools read.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::types::LiveFeedLagged;

/// What the derive cannot learn from the routes: the title, the tags, and
/// schemas no route names as a body (the live feed's events).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wardwatch",
        description = "SQL streaming rules over patient vitals: rules, alerts, ingest, history SQL, replay and health. Every 4xx and 5xx answer of `/api/*` is an `ErrorBody`."
    ),
    components(schemas(LiveFeedLagged)),
    tags(
        (name = "rules", description = "Rules: SQL over `vitals`, compiled before they are stored, versioned."),
        (name = "alerts", description = "Alerts from history, acknowledgements, and the live feed."),
        (name = "ingest", description = "Events in over HTTP, and the events refused (dead letters)."),
        (name = "query", description = "Read-only SQL over history."),
        (name = "replay", description = "Rules over archived events: backtests and audits."),
        (name = "health", description = "Liveness, readiness and metrics."),
        (name = "meta", description = "This document."),
        (name = "ui", description = "The web UI."),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        super::routes()
            .into_openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    #[test]
    fn every_path_is_described_and_every_schema_it_names_exists() {
        let doc = doc();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = document();
        for (at, _) in text.match_indices("\"#/components/schemas/") {
            let name: String = text[at + 22..].chars().take_while(|c| *c != '"').collect();
            assert!(
                schemas.contains_key(&name),
                "{name} is named but not defined"
            );
        }
        assert!(schemas.contains_key("LiveFeedLagged"));
        let mut operation_ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
                assert!(op["tags"].is_array(), "{method} {path} has no tag");
                let id = op["operationId"].as_str().unwrap_or_default().to_string();
                assert!(
                    operation_ids.insert(id.clone()),
                    "{method} {path}: operationId `{id}` is not unique (set `operation_id`)"
                );
            }
        }
    }
}

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
        (name = "hospitals", description = "Hospitals onboarded by API, and the rule templates they start with."),
        (name = "auth", description = "The caller's identity, and API keys for services (admins)."),
        (name = "meta", description = "This document."),
        (name = "ui", description = "The web UI."),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = super::routes().into_openapi();
        // The refusals of the layers in front of every route (`Host`,
        // content type) are no handler's, so the routes do not list them.
        crate::transport::document_refusals(&mut doc);
        declare_authentication(&mut doc);
        doc.to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// Every route but the public ones ([`crate::auth::is_public`], and
/// `/metrics`, public by default) needs a bearer credential and can answer
/// 401 and 403: said once here rather than on each handler.
fn declare_authentication(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An OpenID Connect access token (JWT) from the configured identity \
                         provider, or an API key `wwk_…`.",
                    ))
                    .build(),
            ),
        );
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if crate::auth::is_public(path) || path == "/metrics" {
            continue;
        }
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                error(
                    "No credential, or an invalid, expired or revoked one (with a \
                     `WWW-Authenticate` header).",
                )
            });
            responses.entry("403".into()).or_insert_with(|| {
                error("The caller lacks the role this needs (named in the message).")
            });
        }
    }
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

    /// The UI's TypeScript types (`web/types/api.d.ts`) are generated from
    /// this document; they must be regenerated whenever it changes.
    #[test]
    fn the_typescript_types_are_generated_from_this_document() {
        use sha2::{Digest, Sha256};
        let types = include_str!("../../../web/types/api.d.ts");
        let first = types.lines().next().unwrap_or_default();
        let recorded = first
            .split("sha256 ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_default();
        // `wardwatch openapi` prints the document and a newline.
        let digest = Sha256::digest(format!("{}\n", document()).as_bytes());
        let now: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            recorded, now,
            "the API changed since web/types/api.d.ts was generated: run `sh web/types-src/generate.sh`"
        );
    }
}

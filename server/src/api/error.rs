//! Error responses: `{"error": {"message", "line", "column"}}` with a 4xx
//! status for the caller's mistakes and 5xx for ours.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sql_rules::RuleError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub position: Option<(u64, u64)>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            position: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            position: None,
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            position: None,
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            position: None,
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: e.message,
            position: Some((e.position.line, e.position.column)),
        }
    }
}

impl From<catalog::CatalogError> for ApiError {
    fn from(e: catalog::CatalogError) -> Self {
        use catalog::CatalogError as E;
        match e {
            E::InvalidRule(m) => Self::bad_request(m),
            E::RuleNotFound { .. } => Self::not_found(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.position {
            Some((line, column)) => {
                json!({"error": {"message": self.message, "line": line, "column": column}})
            }
            None => json!({"error": {"message": self.message}}),
        };
        (self.status, Json(body)).into_response()
    }
}

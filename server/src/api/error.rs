//! Error responses: [`ErrorBody`], `{"error": {"message", "line", "column"}}`,
//! with a 4xx status for the caller's mistakes and 5xx for ours. Requests
//! axum cannot read (malformed JSON, a wrong content type, a bad query
//! string) answer the same body, with axum's status.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sql_rules::RuleError;

use super::types::{ErrorBody, ErrorDetail};

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
    /// No or bad credentials; answered with a `WWW-Authenticate` header.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            position: None,
        }
    }
    /// Known caller, missing role or hospital.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
            position: None,
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
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

/// axum's rejections keep their status and message, in the error body.
macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(e: $rejection) -> Self {
                Self {
                    status: e.status(),
                    message: e.body_text(),
                    position: None,
                }
            }
        }
    )*};
}

from_rejection!(JsonRejection, QueryRejection, BytesRejection);

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: e.message,
                line: e.position.map(|(line, _)| line),
                column: e.position.map(|(_, column)| column),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let challenge = (self.status == StatusCode::UNAUTHORIZED).then(|| {
            // RFC 6750: the scheme, and why a presented token failed.
            axum::http::HeaderValue::from_static(r#"Bearer realm="wardwatch""#)
        });
        let mut response = (self.status, Json(ErrorBody::from(self))).into_response();
        if let Some(value) = challenge {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

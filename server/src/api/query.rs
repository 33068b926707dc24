//! `POST /api/query`: read-only SQL over history (`vitals`, `alerts`),
//! including events not yet flushed to Parquet. JSON by default; CSV with
//! `Accept: text/csv`; Arrow IPC with `Accept: application/vnd.apache.arrow.stream`.

use arrow::record_batch::RecordBatch;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use catalog::{CatalogError, QueryLimits};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::SharedState;

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Debug, serde::Deserialize)]
pub struct QueryRequest {
    pub sql: String,
}

impl From<CatalogError> for QueryError {
    fn from(e: CatalogError) -> Self {
        let status = match &e {
            CatalogError::QueryRefused { .. } | CatalogError::Query { .. } => {
                StatusCode::BAD_REQUEST
            }
            CatalogError::QueryTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            CatalogError::QueryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        QueryError(ApiError {
            status,
            message: e.to_string(),
            position: None,
        })
    }
}

pub struct QueryError(ApiError);

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

pub async fn query(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Json<QueryRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, QueryError> {
    let Json(req) = body.map_err(|e| {
        QueryError(ApiError::bad_request(format!(
            "expected {{\"sql\": \"SELECT …\"}}: {e}"
        )))
    })?;
    let limits = QueryLimits {
        max_rows: state.config.archive.query_max_rows,
        timeout: std::time::Duration::from_millis(state.config.archive.query_timeout_ms),
    };
    super::tables::refresh(&state)
        .await
        .map_err(|e| QueryError(ApiError::internal(format!("preparing history tables: {e}"))))?;
    let batches = state.history.query(&req.sql, &limits).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => {
            // An empty result still has columns.
            state
                .history
                .dataframe(&req.sql)
                .await?
                .schema()
                .as_arrow()
                .clone()
                .into()
        }
    };
    if accept.contains(ARROW_STREAM) {
        let mut bytes = Vec::new();
        {
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema).map_err(internal)?;
            for b in &batches {
                w.write(b).map_err(internal)?;
            }
            w.finish().map_err(internal)?;
        }
        return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], bytes).into_response());
    }
    if accept.contains("text/csv") {
        let mut bytes = Vec::new();
        {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut bytes);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(internal)?;
            }
            for b in &batches {
                w.write(b).map_err(internal)?;
            }
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response());
    }
    let columns: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let mut rows = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let mut row = Map::new();
            for (i, f) in b.schema().fields().iter().enumerate() {
                row.insert(
                    f.name().clone(),
                    sql_rules::json::cell(b.column(i).as_ref(), r),
                );
            }
            rows.push(Value::Object(row));
        }
    }
    Ok(Json(json!({"columns": columns, "rows": rows})).into_response())
}

fn internal(e: impl std::fmt::Display) -> QueryError {
    QueryError(ApiError::internal(e.to_string()))
}

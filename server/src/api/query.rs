//! `POST /api/query`: read-only SQL over history (`vitals`, `alerts`,
//! `rules`, `rule_versions`, `audit_log`), including events not yet flushed
//! to Parquet. JSON by default; CSV with `Accept: text/csv`; Arrow IPC with
//! `Accept: application/vnd.apache.arrow.stream`.
//!
//! SQL longer than `max_sql_bytes` or nested deeper than
//! `max_expression_depth` (`[limits]`) is refused with `400` before it is
//! planned. Small results are answered whole (and one over `query_max_rows` is a
//! 413). A result larger than [`STREAM_AFTER`] rows is streamed as it is
//! produced rather than buffered; if it then passes the row limit or the
//! time limit, a JSON answer ends with `"truncated": true` and an `error`,
//! and a CSV or Arrow answer is cut off with an error, never silently short.

use crate::auth::{need, Caller};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use catalog::CatalogError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::types::{Column, ErrorBody, QueryRequest, QueryResult};
use super::SharedState;

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Rows buffered before an answer switches to streaming.
pub const STREAM_AFTER: usize = 10_000;

pub struct QueryError(ApiError);

impl From<CatalogError> for QueryError {
    fn from(e: CatalogError) -> Self {
        let status = match &e {
            CatalogError::QueryRefused { .. } | CatalogError::Query { .. } => {
                StatusCode::BAD_REQUEST
            }
            CatalogError::QueryTooLarge { .. } | CatalogError::QueryOverBudget { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
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

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> QueryError {
    QueryError(ApiError::internal(e.to_string()))
}

fn timed_out(limit: Duration) -> QueryError {
    CatalogError::QueryTimeout {
        limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
    }
    .into()
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Arrow => "arrow",
        }
    }
}

/// Read-only SQL over history. The answer's format follows `Accept`.
#[utoipa::path(
    post,
    path = "/api/query",
    operation_id = "query",
    tag = "query",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "The result. JSON by default (`QueryResult`; a streamed one that passes the row or time limit ends with `truncated` and `error`); CSV with `Accept: text/csv`; Arrow IPC stream with `Accept: application/vnd.apache.arrow.stream` (CSV and Arrow answers are cut off with an error instead).", content(
            (QueryResult = "application/json"),
            (String = "text/csv"),
            ("application/vnd.apache.arrow.stream"),
        )),
        (status = 400, description = "Not a JSON `{\"sql\"}`, SQL that does not plan or is not read-only, or SQL over `max_sql_bytes` / `max_expression_depth`.", body = ErrorBody),
        (status = 413, description = "The result has more than `query_max_rows` rows, or the query needs more memory than one query may hold (`max_query_memory_bytes`, `max_function_output_bytes`).", body = ErrorBody),
        (status = 500, description = "The query failed while running.", body = ErrorBody),
        (status = 503, description = "`max_concurrent_queries` queries are already running; retry shortly.", body = ErrorBody),
        (status = 504, description = "The query ran past `query_timeout_ms`.", body = ErrorBody),
    )
)]
pub async fn query(
    State(state): State<SharedState>,
    caller: Caller<need::Auditor>,
    headers: HeaderMap,
    body: Result<Json<QueryRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, QueryError> {
    let Json(req) = body.map_err(|e| {
        QueryError(ApiError::bad_request(format!(
            "expected {{\"sql\": \"SELECT …\"}}: {e}"
        )))
    })?;
    let max_rows = state.config.archive.query_max_rows;
    let time_limit = Duration::from_millis(state.config.archive.query_timeout_ms);
    let deadline = Instant::now() + time_limit;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    };

    // Recorded before it runs: a refused or failed read was still an attempt.
    crate::audit::record_by(
        &state.audit,
        &caller,
        "history_query",
        serde_json::json!({"sql": req.sql, "format": format.name()}),
    )
    .await;
    // Before DataFusion sees it: SQL too long or nested too deep to plan
    // on a request thread's stack is refused with the limit.
    sql_rules::check_query_sql(&req.sql, &state.config.limits.rules())
        .map_err(|e| QueryError(ApiError::from(e)))?;
    // A bounded number at once: each can hold a scan's buffers in memory,
    // and alerting must keep its share of the machine. Held until the
    // answer has been sent, streamed ones included.
    let slot = query_slot(&state).map_err(QueryError)?;
    // A caller limited to hospitals sees only their rows: a filter inside
    // the plan on every scan of a table with a hospital_id column.
    let mut df = state
        .history
        .dataframe_scoped(&req.sql, caller.hospitals.as_deref())
        .await?;
    if !matches!(
        df.logical_plan(),
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)
    ) {
        // One row over the limit tells "too large" without running it all.
        df = df
            .limit(0, Some(max_rows.saturating_add(1)))
            .map_err(internal)?;
    }
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let mut stream = tokio::time::timeout_at(deadline.into(), df.execute_stream())
        .await
        .map_err(|_| timed_out(time_limit))?
        .map_err(|e| QueryError::from(CatalogError::query(e)))?;

    // Buffer the head; most answers end here.
    let mut head = VecDeque::new();
    let mut rows = 0usize;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Err(_) => return Err(timed_out(time_limit)),
            Ok(None) => {
                let batches: Vec<RecordBatch> = head.into_iter().collect();
                return whole(format, &schema, &batches);
            }
            Ok(Some(batch)) => {
                let batch = batch.map_err(|e| QueryError::from(CatalogError::query(e)))?;
                rows += batch.num_rows();
                if rows > max_rows {
                    return Err(CatalogError::QueryTooLarge { limit: max_rows }.into());
                }
                head.push_back(batch);
                if rows >= STREAM_AFTER {
                    break;
                }
            }
        }
    }
    let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        Arc::clone(&schema),
        stream.map(move |batch| {
            let _held = &slot;
            batch
        }),
    ));
    Ok(streamed(
        format, schema, head, stream, max_rows, deadline, time_limit,
    ))
}

fn json_rows(batch: &RecordBatch, out: &mut Vec<u8>, first: &mut bool) {
    for r in 0..batch.num_rows() {
        let mut row = Map::new();
        for (i, f) in batch.schema().fields().iter().enumerate() {
            row.insert(
                f.name().clone(),
                sql_rules::json::cell(batch.column(i).as_ref(), r),
            );
        }
        if !*first {
            out.push(b',');
        }
        *first = false;
        out.extend_from_slice(Value::Object(row).to_string().as_bytes());
    }
}

fn csv_rows(batch: &RecordBatch, with_header: bool) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut bytes = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(with_header)
            .build(&mut bytes);
        w.write(batch)?;
    }
    Ok(bytes)
}

/// The opening of a JSON answer, up to its first row: `{"columns":[…],"rows":[`.
/// The rest is written row by row ([`json_rows`]) and closed by `]}` or by
/// [`Streaming::end`]; the keys are [`QueryResult`]'s.
fn json_head(schema: &arrow::datatypes::Schema) -> Vec<u8> {
    let columns = serde_json::to_string(&Column::of(schema)).unwrap_or_else(|_| "[]".into());
    format!("{{\"columns\":{columns},\"rows\":[").into_bytes()
}

/// A complete answer from buffered batches.
fn whole(
    format: Format,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<Response, QueryError> {
    match format {
        Format::Arrow => {
            let mut bytes = Vec::new();
            {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, schema)
                    .map_err(internal)?;
                for b in batches {
                    w.write(b).map_err(internal)?;
                }
                w.finish().map_err(internal)?;
            }
            Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], bytes).into_response())
        }
        Format::Csv => {
            let mut bytes =
                csv_rows(&RecordBatch::new_empty(schema.clone()), true).map_err(internal)?;
            for b in batches {
                bytes.extend(csv_rows(b, false).map_err(internal)?);
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response())
        }
        Format::Json => {
            let mut rows = Vec::new();
            let mut first = true;
            for b in batches {
                json_rows(b, &mut rows, &mut first);
            }
            let mut body = json_head(schema);
            body.extend(rows);
            body.extend_from_slice(b"]}");
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
    }
}

struct Streaming {
    format: Format,
    head: VecDeque<RecordBatch>,
    rest: SendableRecordBatchStream,
    arrow: Option<arrow::ipc::writer::StreamWriter<Vec<u8>>>,
    first_row: bool,
    rows: usize,
    max_rows: usize,
    deadline: Instant,
    time_limit: Duration,
    done: bool,
}

impl Streaming {
    /// The end of the answer: normal, or marked/cut off by `problem`.
    fn end(&mut self, problem: Option<String>) -> Result<Bytes, std::io::Error> {
        self.done = true;
        match (self.format, problem) {
            (Format::Json, None) => Ok(Bytes::from_static(b"]}")),
            (Format::Json, Some(p)) => Ok(Bytes::from(format!(
                "],\"truncated\":true,\"error\":{}}}",
                Value::from(p)
            ))),
            (Format::Arrow, None) => {
                let mut w = self.arrow.take().expect("arrow writer");
                w.finish().map_err(std::io::Error::other)?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
            (_, Some(p)) => Err(std::io::Error::other(p)),
            (Format::Csv, None) => Ok(Bytes::new()),
        }
    }

    fn encode(&mut self, batch: &RecordBatch) -> Result<Bytes, std::io::Error> {
        match self.format {
            Format::Json => {
                let mut out = Vec::new();
                json_rows(batch, &mut out, &mut self.first_row);
                Ok(Bytes::from(out))
            }
            Format::Csv => Ok(Bytes::from(
                csv_rows(batch, false).map_err(std::io::Error::other)?,
            )),
            Format::Arrow => {
                let w = self.arrow.as_mut().expect("arrow writer");
                w.write(batch).map_err(std::io::Error::other)?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let batch = match self.head.pop_front() {
            Some(b) => b,
            None => match tokio::time::timeout_at(self.deadline.into(), self.rest.next()).await {
                Err(_) => {
                    return Some(self.end(Some(format!(
                        "the query ran past its time limit of {} ms",
                        self.time_limit.as_millis()
                    ))))
                }
                Ok(None) => return Some(self.end(None)),
                Ok(Some(Err(e))) => return Some(self.end(Some(e.to_string()))),
                Ok(Some(Ok(b))) => b,
            },
        };
        let room = self.max_rows - self.rows.min(self.max_rows);
        if batch.num_rows() > room {
            let chunk = self.encode(&batch.slice(0, room));
            self.rows = self.max_rows;
            let tail = self.end(Some(format!(
                "the result has more than {} rows (query_max_rows); narrow the query or aggregate",
                self.max_rows
            )));
            return Some(match (chunk, tail) {
                (Ok(a), Ok(b)) => Ok([a, b].concat().into()),
                (Err(e), _) | (_, Err(e)) => Err(e),
            });
        }
        self.rows += batch.num_rows();
        Some(self.encode(&batch))
    }
}

fn streamed(
    format: Format,
    schema: arrow::datatypes::SchemaRef,
    head: VecDeque<RecordBatch>,
    rest: SendableRecordBatchStream,
    max_rows: usize,
    deadline: Instant,
    time_limit: Duration,
) -> Response {
    let (content_type, prefix, arrow) = match format {
        Format::Json => ("application/json", json_head(&schema), None),
        Format::Csv => (
            "text/csv; charset=utf-8",
            csv_rows(&RecordBatch::new_empty(schema.clone()), true).unwrap_or_default(),
            None,
        ),
        Format::Arrow => match arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema) {
            Ok(mut w) => {
                let header = std::mem::take(w.get_mut());
                (ARROW_STREAM, header, Some(w))
            }
            Err(e) => return internal(e).into_response(),
        },
    };
    let state = Streaming {
        format,
        head,
        rest,
        arrow,
        first_row: true,
        rows: 0,
        max_rows,
        deadline,
        time_limit,
        done: false,
    };
    let body =
        futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(prefix)) })
            .chain(futures::stream::unfold(state, |mut st| async move {
                st.next_chunk().await.map(|chunk| (chunk, st))
            }));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Runs a read of the archive made by a route (not history SQL) within the
/// same bounds: one of the `max_concurrent_queries` slots, and
/// `query_timeout_ms` (504 past it).
pub async fn bounded_read<T>(
    state: &SharedState,
    read: impl std::future::Future<Output = Result<T, CatalogError>>,
) -> Result<T, ApiError> {
    let _slot = query_slot(state)?;
    let limit = Duration::from_millis(state.config.archive.query_timeout_ms);
    match tokio::time::timeout(limit, read).await {
        Ok(result) => result.map_err(|e| QueryError::from(e).0),
        Err(_) => Err(timed_out(limit).0),
    }
}

/// One of the `max_concurrent_queries` slots every read of the archive
/// holds while it runs, or 503 when all are taken.
pub fn query_slot(state: &SharedState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    Arc::clone(&state.query_slots)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable(format!(
                "{} history queries are already running, the limit (max_concurrent_queries); retry shortly",
                state.config.limits.max_concurrent_queries
            ))
        })
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    async fn json_of(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).expect("a JSON answer")
    }

    /// The JSON answer is written by hand, whole or streamed; it must read
    /// back as the documented [`QueryResult`] and write out the same.
    fn as_query_result(answer: Value) -> QueryResult {
        let result: QueryResult = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(serde_json::to_value(&result).unwrap(), answer);
        result
    }

    #[tokio::test]
    async fn json_answers_whole_or_cut_short_are_query_results() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let Ok(answer) = whole(Format::Json, &schema, std::slice::from_ref(&batch)) else {
            panic!("a whole answer");
        };
        let result = as_query_result(json_of(answer).await);
        assert_eq!(result.rows.len(), 3);
        assert_eq!(result.truncated, None);
        assert_eq!(
            result.columns,
            vec![Column {
                name: "n".into(),
                data_type: "Int64".into()
            }]
        );

        let rest: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            schema.clone(),
            futures::stream::iter(vec![Ok(batch.clone())]),
        ));
        let limit = Duration::from_secs(30);
        let answer = streamed(
            Format::Json,
            schema,
            VecDeque::from([batch]),
            rest,
            4,
            Instant::now() + limit,
            limit,
        );
        let result = as_query_result(json_of(answer).await);
        assert_eq!(result.rows.len(), 4);
        assert_eq!(result.truncated, Some(true));
        assert!(result.error.unwrap().contains("query_max_rows"));
    }
}

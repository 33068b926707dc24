//! The alert history: what `GET /api/alerts` lists and what an
//! acknowledgement looks up, read from the `alerts` archive table (Parquet
//! files plus the rows its writer still buffers) — the same rows history SQL
//! sees, so the two cannot disagree.
//!
//! Queries are built with DataFusion expressions, never SQL text, and read
//! newest first: the hours that hold alerts are listed (directories, not
//! files), then scanned from the newest back, a few hours at a time, until
//! enough rows are found. Listing the newest 100 alerts of a year reads the
//! last hours' files, not the year's. This module owns no state and writes
//! nothing.

use arrow::record_batch::RecordBatch;
use datafusion::prelude::{col, lit, Expr};
use futures::TryStreamExt;
use sql_rules::{Alert, AlertStatus};

use crate::archive::{alert_col as c, alerts_from_batch, alerts_schema, status_text};
use crate::{CatalogError, HistoryCatalog};

const HOUR_MS: i64 = 3_600_000;
/// Event times outside this range are not looked at (about ±73,000 years):
/// far enough for any clock, near enough that hour arithmetic cannot overflow.
const TIME_BOUND_MS: i64 = i64::MAX / 4;

/// Which alerts to list; every field narrows the list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AlertQuery {
    /// A rule id or a rule name.
    pub rule: Option<String>,
    /// `key.patient_id`.
    pub patient: Option<String>,
    pub severity: Option<String>,
    pub status: Option<AlertStatus>,
    /// The alert's id (for a lookup).
    pub id: Option<String>,
    /// Event time in ms, inclusive.
    pub since_ms: Option<i64>,
    /// Event time in ms, exclusive.
    pub until_ms: Option<i64>,
    /// At most this many alerts.
    pub limit: usize,
}

impl AlertQuery {
    /// The row filter, without the time range (added per scan).
    fn predicate(&self) -> Option<Expr> {
        let mut parts: Vec<Expr> = Vec::new();
        if let Some(rule) = &self.rule {
            parts.push(
                col(c::RULE_ID)
                    .eq(lit(rule.as_str()))
                    .or(col(c::RULE_NAME).eq(lit(rule.as_str()))),
            );
        }
        if let Some(patient) = &self.patient {
            parts.push(col(c::PATIENT_ID).eq(lit(patient.as_str())));
        }
        if let Some(severity) = &self.severity {
            parts.push(col(c::SEVERITY).eq(lit(severity.as_str())));
        }
        if let Some(status) = self.status {
            parts.push(col(c::STATUS).eq(lit(status_text(status))));
        }
        if let Some(id) = &self.id {
            parts.push(col(c::ID).eq(lit(id.as_str())));
        }
        parts.into_iter().reduce(Expr::and)
    }
}

/// The newest alerts (by event time, then id, descending) that match `query`.
pub async fn recent_alerts(
    history: &HistoryCatalog,
    query: &AlertQuery,
) -> Result<Vec<Alert>, CatalogError> {
    if query.limit == 0 {
        return Ok(Vec::new());
    }
    let since = query
        .since_ms
        .unwrap_or(-TIME_BOUND_MS)
        .clamp(-TIME_BOUND_MS, TIME_BOUND_MS);
    let until = query
        .until_ms
        .unwrap_or(TIME_BOUND_MS)
        .clamp(-TIME_BOUND_MS, TIME_BOUND_MS);
    let hours = history.hours(crate::archive::ALERTS, since, until).await?;
    let predicate = query.predicate();
    let mut found: Vec<Alert> = Vec::new();
    // Hours are scanned newest first in groups that double in size, so a
    // dense recent history costs one small scan and a sparse filter over a
    // long one a few dozen scans, not one per hour.
    let mut end = hours.len();
    let mut group = 1usize;
    while end > 0 && found.len() < query.limit {
        let start = end.saturating_sub(group);
        let from = (hours[start] * HOUR_MS).max(since);
        let to = ((hours[end - 1] + 1) * HOUR_MS).min(until);
        let remaining = query.limit - found.len();
        let batches = scan(history, predicate.clone(), from, to, remaining).await?;
        for batch in &batches {
            found.extend(alerts_from_batch(batch)?);
        }
        end = start;
        group = group.saturating_mul(2);
    }
    found.truncate(query.limit);
    Ok(found)
}

/// The alert with this id, wherever it is in history (newest hours first,
/// since acknowledgements are mostly of recent alerts).
pub async fn find_alert(history: &HistoryCatalog, id: &str) -> Result<Option<Alert>, CatalogError> {
    let query = AlertQuery {
        id: Some(id.to_string()),
        limit: 1,
        ..AlertQuery::default()
    };
    Ok(recent_alerts(history, &query).await?.into_iter().next())
}

/// One scan of `[from, to)`: matching rows, newest first, at most `limit`.
async fn scan(
    history: &HistoryCatalog,
    predicate: Option<Expr>,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<RecordBatch>, CatalogError> {
    let ts = |ms: i64| {
        lit(datafusion::scalar::ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    };
    // The time range prunes the scan to the hours it names.
    let mut filter = col(c::EVENT_TIME)
        .gt_eq(ts(from))
        .and(col(c::EVENT_TIME).lt(ts(to)));
    if let Some(predicate) = predicate {
        filter = filter.and(predicate);
    }
    let columns: Vec<String> = alerts_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let df = history
        .session()
        .table(crate::archive::ALERTS)
        .await
        .map_err(CatalogError::query)?
        .filter(filter)
        .and_then(|df| {
            df.sort(vec![
                col(c::EVENT_TIME).sort(false, false),
                col(c::ID).sort(false, false),
            ])
        })
        .and_then(|df| df.limit(0, Some(limit)))
        .and_then(|df| df.select_columns(&columns))
        .map_err(CatalogError::query)?;
    df.execute_stream()
        .await
        .map_err(CatalogError::query)?
        .try_collect()
        .await
        .map_err(CatalogError::query)
}

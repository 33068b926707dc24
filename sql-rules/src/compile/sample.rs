//! Running a compiled rule over sample readings before it is accepted.
//!
//! Planning checks names and types, but some SQL only fails when it
//! evaluates: a string literal that cannot be cast to the column's type
//! (`spo2_pct < 'abc'`), an integer division by a reading that can be zero.
//! Such a rule would fail on every batch and alert on nothing, so the
//! compiler runs it in a throwaway [`Engine`] over a few readings of every
//! kind the stream carries (normal, abnormal, all zero, all null where the
//! schema allows null) and refuses it with the error it hit.
//!
//! The sample is fixed, so the check is deterministic; it cannot prove a
//! rule never fails (a division by `spo2_pct - 97` fails only on 97, which
//! the sample leaves out on purpose, so such a rule is left for the
//! run-time `failing` state to show).

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::record_batch::RecordBatch;
use sqlparser::ast::{BinaryOperator, Expr, Spanned, Visit};

use super::plan::{offset_to_position, CompiledRule};
use super::window::WindowSpec;
use crate::engine::{Engine, EngineConfig, RuleSpec};
use crate::error::{EngineError, RuleError, SqlPosition};
use crate::stream::{idx, vitals_schema};

/// Event time of the first sample reading: 2026-01-01T00:00:00Z.
const SAMPLE_START_MS: i64 = 1_767_225_600_000;

/// One sample reading: patient, offset from [`SAMPLE_START_MS`], hospital,
/// the five readings (hr, spo2, rr, sbp, dbp), device, sequence number.
type Row = (
    &'static str,
    i64,
    Option<&'static str>,
    [Option<f64>; 5],
    Option<&'static str>,
    Option<u32>,
);

const ROWS: [Row; 6] = [
    (
        "SAMPLE-NORMAL",
        0,
        Some("H-SAMPLE"),
        [Some(72.0), Some(98.0), Some(16.0), Some(120.0), Some(80.0)],
        Some("BEDSIDE"),
        Some(1),
    ),
    (
        "SAMPLE-NORMAL",
        1_000,
        Some("H-SAMPLE"),
        [Some(75.5), Some(96.0), Some(18.0), Some(118.0), Some(76.0)],
        Some("BEDSIDE"),
        Some(2),
    ),
    (
        "SAMPLE-ABNORMAL",
        1_500,
        Some("H-SAMPLE"),
        [Some(142.0), Some(84.0), Some(31.0), Some(78.0), Some(44.0)],
        Some("PORTABLE"),
        Some(7),
    ),
    // Zero is a valid reading (asystole, a probe off the finger), and so
    // is sequence number 0.
    (
        "SAMPLE-ZERO",
        2_000,
        Some("H-SAMPLE"),
        [Some(0.0); 5],
        Some("AMBULATORY"),
        Some(0),
    ),
    (
        "SAMPLE-ZERO",
        2_500,
        Some("H-SAMPLE"),
        [Some(0.0); 5],
        Some("AMBULATORY"),
        Some(1),
    ),
    // Everything the schema lets be null.
    ("SAMPLE-NULL", 3_000, None, [None; 5], None, None),
];

/// The sample readings as a `vitals` batch.
pub fn sample_batch() -> RecordBatch {
    static BATCH: OnceLock<RecordBatch> = OnceLock::new();
    BATCH
        .get_or_init(|| {
            let ts: Vec<i64> = ROWS.iter().map(|r| SAMPLE_START_MS + r.1).collect();
            let reading = |i: usize| -> ArrayRef {
                Arc::new(Float64Array::from(
                    ROWS.iter().map(|r| r.3[i]).collect::<Vec<_>>(),
                ))
            };
            RecordBatch::try_new(
                vitals_schema(),
                vec![
                    Arc::new(StringArray::from(
                        ROWS.iter().map(|r| r.2).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(
                        ROWS.iter().map(|r| Some(r.0)).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(ts.clone())),
                    reading(0),
                    reading(1),
                    reading(2),
                    reading(3),
                    reading(4),
                    Arc::new(StringArray::from(
                        ROWS.iter().map(|r| r.4).collect::<Vec<_>>(),
                    )),
                    Arc::new(UInt32Array::from(
                        ROWS.iter().map(|r| r.5).collect::<Vec<_>>(),
                    )),
                    Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
                ],
            )
            .expect("the sample follows vitals_schema")
        })
        .clone()
}

/// The sample readings as events of `hospital` (those that name one): a
/// rule scoped to a hospital sees only its events, so over the made-up
/// `H-SAMPLE` it would be checked on nothing.
fn sample_batch_at(hospital: Option<&str>) -> RecordBatch {
    let batch = sample_batch();
    let Some(hospital) = hospital else {
        return batch;
    };
    let mut columns = batch.columns().to_vec();
    columns[idx::HOSPITAL_ID] = Arc::new(StringArray::from(
        ROWS.iter()
            .map(|r| r.2.map(|_| hospital))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(batch.schema(), columns).expect("the sample follows vitals_schema")
}

/// Where the divisions and modulos of the statement are: the likely place
/// of a division by zero (DataFusion's run-time errors carry no position).
/// `sql` is the text the statement was parsed from.
pub fn division_positions<T: Visit>(node: &T, sql: &str) -> Vec<SqlPosition> {
    let mut found = Vec::new();
    let _ = sqlparser::ast::visit_expressions(node, |expr: &Expr| {
        if let Expr::BinaryOp {
            op:
                BinaryOperator::Divide
                | BinaryOperator::Modulo
                | BinaryOperator::DuckIntegerDivide
                | BinaryOperator::MyIntegerDivide,
            left,
            right,
        } = expr
        {
            let at = operator_between(
                sql,
                SqlPosition::from_sqlparser(left.span().end),
                SqlPosition::from_sqlparser(right.span().start),
            )
            .unwrap_or_else(|| SqlPosition::from_sqlparser(left.span().start));
            if at.is_known() {
                found.push(at);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found.sort_by_key(|p| (p.line, p.column));
    found
}

/// The last `/` or `%` between the end of the left operand and the start
/// of the right one (spans leave out keywords such as CAST, so the text in
/// between is more than the operator).
fn operator_between(sql: &str, left_end: SqlPosition, right: SqlPosition) -> Option<SqlPosition> {
    let from = byte_offset(sql, left_end).unwrap_or(0);
    let to = byte_offset(sql, right)?;
    let between = sql.get(from..to)?;
    let at = between.rfind(['/', '%'])?;
    Some(offset_to_position(sql, from + at))
}

/// The byte offset of a 1-based line and column (in characters).
fn byte_offset(sql: &str, at: SqlPosition) -> Option<usize> {
    if !at.is_known() {
        return None;
    }
    let line_start: usize = sql
        .split_inclusive('\n')
        .take(at.line as usize - 1)
        .map(str::len)
        .sum();
    let line = sql.get(line_start..)?;
    Some(
        line_start
            + line
                .char_indices()
                .nth(at.column.saturating_sub(1) as usize)
                .map_or(line.len(), |(i, _)| i),
    )
}

/// Runs `rule` over the sample readings (as events of `hospital`, the
/// rule's scope, if it has one), closing every window, and turns the first
/// run-time error into a refusal.
pub fn check_over_sample(
    rule: &CompiledRule,
    sql: &str,
    hospital: Option<&str>,
    divisions: &[SqlPosition],
) -> Result<(), RuleError> {
    let last_ms = SAMPLE_START_MS + ROWS[ROWS.len() - 1].1;
    let span_ms = match rule.window() {
        None => 0,
        Some(WindowSpec::Tumble { size_ms }) | Some(WindowSpec::Hop { size_ms, .. }) => size_ms,
        Some(WindowSpec::Session { gap_ms }) => gap_ms,
    };
    let mut engine = Engine::new(EngineConfig::default());
    let spec = RuleSpec {
        id: "sample".into(),
        version: 1,
        name: "sample".into(),
        severity: "info".into(),
        cooldown_ms: 0,
        allowed_lateness_ms: Some(0),
        keep_duplicates: true,
        escalation: None,
        compiled: rule.clone(),
    };
    let ran = engine.upsert_rule(spec).and_then(|()| {
        let first = engine.process(0, &sample_batch_at(hospital), 0)?;
        let closed =
            engine.advance_watermark(last_ms.saturating_add(span_ms).saturating_add(1), 0)?;
        Ok(first.errors.into_iter().chain(closed.errors).next())
    });
    let error = match ran {
        Ok(None) => return Ok(()),
        Ok(Some(failure)) => failure.error,
        Err(error) => error,
    };
    // A cast that fails on a sample's made-up id (`CAST(hospital_id AS
    // INT)` over 'H-SAMPLE') says nothing about real ids: only a cast of a
    // literal written in the rule, of a device kind (every reading carries
    // one of three), or of the scope's hospital (every event the rule sees
    // names it) is certain to fail on real readings.
    if is_cast_of_sample_text(&error, sql, hospital) {
        return Ok(());
    }
    Err(refusal(&error, sql, divisions))
}

fn is_cast_of_sample_text(error: &EngineError, sql: &str, hospital: Option<&str>) -> bool {
    let detail = match error {
        EngineError::Evaluation { source, .. } => source.strip_backtrace(),
        other => other.to_string(),
    };
    let quoted = detail
        .split('\'')
        .nth(1)
        .filter(|_| detail.contains("Cannot cast"));
    quoted.is_some_and(|value| {
        !["BEDSIDE", "PORTABLE", "AMBULATORY"].contains(&value)
            && hospital != Some(value)
            && quoted_value_position(&detail, sql).is_none()
    })
}

fn refusal(error: &EngineError, sql: &str, divisions: &[SqlPosition]) -> RuleError {
    let detail = match error {
        EngineError::Evaluation { source, .. } => source.strip_backtrace(),
        other => other.to_string(),
    };
    let detail = detail
        .trim_start_matches("Arrow error: ")
        .trim_start_matches("Cast error: ")
        .to_string();
    let (hint, at) = if detail.contains("Divide by zero") {
        (
            "; zero is a valid reading (and sequence numbers start at 0): guard the divisor, e.g. `x / NULLIF(y, 0)`",
            divisions.first().copied(),
        )
    } else if detail.contains("Cannot cast") {
        (
            "; compare a column with a value of its type, e.g. `spo2_pct < 90`",
            quoted_value_position(&detail, sql),
        )
    } else {
        ("", None)
    };
    RuleError::new(
        format!(
            "the rule fails when it runs: {detail}{hint} (found by running it over sample readings: normal, abnormal, all zero and all null)"
        ),
        at.unwrap_or(SqlPosition::new(1, 1)),
    )
}

/// Where the `'value'` a cast error names appears in the SQL, if it does.
fn quoted_value_position(detail: &str, sql: &str) -> Option<SqlPosition> {
    let start = detail.find('\'')?;
    let len = detail[start + 1..].find('\'')?;
    let quoted = &detail[start..start + len + 2];
    sql.find(quoted).map(|at| offset_to_position(sql, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_holds_every_kind_of_reading_and_leaves_out_97() {
        let batch = sample_batch();
        assert_eq!(batch.num_rows(), ROWS.len());
        let spo2: Vec<Option<f64>> = ROWS.iter().map(|r| r.3[1]).collect();
        assert!(spo2.contains(&Some(0.0)) && spo2.contains(&None));
        // server/tests/rule_health.rs divides by `spo2_pct - 97` to show a
        // rule failing only at run time.
        assert!(!spo2.contains(&Some(97.0)));
    }

    #[test]
    fn a_division_is_found_at_its_operator() {
        let sql = "SELECT patient_id FROM vitals\nWHERE CAST(heart_rate_bpm AS BIGINT) / ( (x - y)) > 1 AND a % b = 0";
        let stmt =
            &sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::GenericDialect {}, sql)
                .unwrap()[0];
        assert_eq!(
            division_positions(stmt, sql),
            [SqlPosition::new(2, 38), SqlPosition::new(2, 61)]
        );
    }

    #[test]
    fn a_quoted_value_is_found_in_the_sql() {
        let sql = "SELECT patient_id FROM vitals\nWHERE spo2_pct < 'abc'";
        assert_eq!(
            quoted_value_position("Cannot cast string 'abc' to value of Float64 type", sql),
            Some(SqlPosition::new(2, 18))
        );
        assert_eq!(
            quoted_value_position("Cannot cast string 'BEDSIDE' to value", sql),
            None
        );
    }
}

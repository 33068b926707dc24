//! Alerts as Arrow rows, so fired and suppressed alerts are archived and
//! queried like vitals — and read back, because the `alerts` table is the
//! one alert history (REST lists, acknowledgements and SQL all read it).
//!
//! [`alerts_to_batch`] takes the engine's [`Alert`] structs straight to one
//! flat schema; [`alerts_from_batch`] turns rows of that schema back into
//! the same structs, so an alert read from history serializes to exactly the
//! JSON that went to Kafka and the live feed. Nested parts (`key`, `values`,
//! `explanation`) are kept as JSON text: their fields differ per rule, and
//! SQL can still pick them apart with string functions. The patient is
//! lifted out of `key` because it is what auditors filter on.
//!
//! `hospital_id` (the alert's hospital, [`Alert::hospital_id`]) came later:
//! files written before it lack the column. The history table's schema is
//! [`alerts_schema`], so DataFusion reads those files with the column null,
//! and [`alerts_from_batch`] reads a batch without it as alerts without a
//! hospital.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder, UInt32Array, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};
use sql_rules::{Alert, AlertStatus, Explanation};

use crate::CatalogError;

/// Column names of [`alerts_schema`].
pub mod alert_col {
    pub const ID: &str = "id";
    pub const RULE_ID: &str = "rule_id";
    pub const RULE_VERSION: &str = "rule_version";
    pub const RULE_NAME: &str = "rule_name";
    pub const SEVERITY: &str = "severity";
    pub const STATUS: &str = "status";
    pub const PATIENT_ID: &str = "patient_id";
    /// Null when unknown, and in files written before the column existed.
    pub const HOSPITAL_ID: &str = "hospital_id";
    pub const KEY_JSON: &str = "key_json";
    pub const WINDOW_START: &str = "window_start";
    pub const WINDOW_END: &str = "window_end";
    pub const VALUES_JSON: &str = "values_json";
    /// The archive partitions alerts by this column (UTC date and hour).
    pub const EVENT_TIME: &str = "event_time";
    pub const FIRED_AT: &str = "fired_at";
    pub const EXPLANATION_JSON: &str = "explanation_json";
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The schema of the `alerts` archive table.
///
/// Times are `Timestamp(ms, "UTC")` like `vitals.event_time`; `window_start`
/// and `window_end` are null for per-event rules; `patient_id` is
/// `key.patient_id` when the rule groups by patient, else null;
/// `hospital_id` is [`Alert::hospital_id`].
pub fn alerts_schema() -> SchemaRef {
    use alert_col as c;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(c::ID, DataType::Utf8, false),
                Field::new(c::RULE_ID, DataType::Utf8, false),
                Field::new(c::RULE_VERSION, DataType::UInt32, false),
                Field::new(c::RULE_NAME, DataType::Utf8, false),
                Field::new(c::SEVERITY, DataType::Utf8, false),
                Field::new(c::STATUS, DataType::Utf8, false),
                Field::new(c::PATIENT_ID, DataType::Utf8, true),
                Field::new(c::HOSPITAL_ID, DataType::Utf8, true),
                Field::new(c::KEY_JSON, DataType::Utf8, false),
                Field::new(c::WINDOW_START, timestamp_type(), true),
                Field::new(c::WINDOW_END, timestamp_type(), true),
                Field::new(c::VALUES_JSON, DataType::Utf8, false),
                Field::new(c::EVENT_TIME, timestamp_type(), false),
                Field::new(c::FIRED_AT, timestamp_type(), false),
                Field::new(c::EXPLANATION_JSON, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Converts alerts into one batch of [`alerts_schema`].
///
/// ```
/// use sql_rules::{Alert, AlertStatus, Explanation};
/// let alert = Alert {
///     id: "a1".into(), rule_id: "tachy".into(), rule_version: 2,
///     rule_name: "Tachycardia".into(), severity: "high".into(),
///     status: AlertStatus::Fired,
///     key: serde_json::json!({"patient_id": "P1"}).as_object().unwrap().clone(),
///     hospital_id: Some("H1".into()),
///     window_start_ms: Some(0), window_end_ms: Some(60_000),
///     values: serde_json::json!({"avg_hr": 131.0}).as_object().unwrap().clone(),
///     event_time_ms: 59_000, fired_at_ms: 60_500,
///     explanation: Explanation {
///         condition: "AVG(heart_rate_bpm) > 130".into(), event_count: 12,
///         first_event_ms: 1_000, last_event_ms: 59_000,
///         first_sequence_number: None, last_sequence_number: None,
///         suppressed_by: None, escalated_from: None, late: false, clears: None,
///     },
/// };
/// let batch = catalog::archive::alerts_to_batch(&[alert.clone()])?;
/// assert_eq!(batch.num_rows(), 1);
/// assert_eq!(catalog::archive::alerts_from_batch(&batch)?, vec![alert]);
/// # Ok::<(), catalog::CatalogError>(())
/// ```
pub fn alerts_to_batch(alerts: &[Alert]) -> Result<RecordBatch, CatalogError> {
    let n = alerts.len();
    let text = || StringBuilder::with_capacity(n, n * 16);
    let time = || TimestampMillisecondBuilder::with_capacity(n).with_data_type(timestamp_type());
    let (mut id, mut rule_id, mut rule_name, mut severity, mut status) =
        (text(), text(), text(), text(), text());
    let (mut patient, mut hospital, mut key_json, mut values_json, mut explanation_json) =
        (text(), text(), text(), text(), text());
    let mut rule_version = UInt32Builder::with_capacity(n);
    let (mut window_start, mut window_end, mut event_time, mut fired_at) =
        (time(), time(), time(), time());

    for alert in alerts {
        id.append_value(&alert.id);
        rule_id.append_value(&alert.rule_id);
        rule_version.append_value(alert.rule_version);
        rule_name.append_value(&alert.rule_name);
        severity.append_value(&alert.severity);
        status.append_value(status_text(alert.status));
        patient.append_option(alert.patient_id());
        hospital.append_option(alert.hospital_id.as_deref());
        key_json.append_value(object_json(&alert.key));
        window_start.append_option(alert.window_start_ms);
        window_end.append_option(alert.window_end_ms);
        values_json.append_value(object_json(&alert.values));
        event_time.append_value(alert.event_time_ms);
        fired_at.append_value(alert.fired_at_ms);
        // Serializing a struct of strings and numbers cannot fail.
        explanation_json.append_value(
            serde_json::to_string(&alert.explanation).unwrap_or_else(|_| "{}".to_string()),
        );
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(rule_id.finish()),
        Arc::new(rule_version.finish()),
        Arc::new(rule_name.finish()),
        Arc::new(severity.finish()),
        Arc::new(status.finish()),
        Arc::new(patient.finish()),
        Arc::new(hospital.finish()),
        Arc::new(key_json.finish()),
        Arc::new(window_start.finish()),
        Arc::new(window_end.finish()),
        Arc::new(values_json.finish()),
        Arc::new(event_time.finish()),
        Arc::new(fired_at.finish()),
        Arc::new(explanation_json.finish()),
    ];
    RecordBatch::try_new(alerts_schema(), columns).map_err(|source| CatalogError::Arrow {
        what: "build a batch of alerts".to_string(),
        source,
    })
}

/// The spelling of a status in the `status` column (and in alert JSON).
pub fn status_text(status: AlertStatus) -> &'static str {
    match status {
        AlertStatus::Fired => "fired",
        AlertStatus::Suppressed => "suppressed",
    }
}

fn object_json(object: &Map<String, Value>) -> String {
    // serde_json's Map is ordered by key, so the text is canonical.
    serde_json::to_string(object).unwrap_or_else(|_| "{}".to_string())
}

/// Turns rows of [`alerts_schema`] (columns found by name, so a scan that
/// adds partition columns works too) back into alerts. A batch without the
/// `hospital_id` column (one written before it) gives alerts without a
/// hospital.
///
/// A row that cannot be an alert (a missing column, a null where a value is
/// required, JSON text that does not parse) is an
/// [`CatalogError::InvalidAlert`] naming the row and the column.
pub fn alerts_from_batch(batch: &RecordBatch) -> Result<Vec<Alert>, CatalogError> {
    use alert_col as c;
    let invalid = |index: usize, reason: String| CatalogError::InvalidAlert { index, reason };
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| invalid(0, format!("the batch has no column '{name}'")))
    };
    let text = |name: &str| -> Result<&StringArray, CatalogError> {
        column(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| invalid(0, format!("column '{name}' is not Utf8")))
    };
    let time = |name: &str| -> Result<&TimestampMillisecondArray, CatalogError> {
        column(name)?
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| invalid(0, format!("column '{name}' is not a ms timestamp")))
    };
    let (id, rule_id, rule_name) = (text(c::ID)?, text(c::RULE_ID)?, text(c::RULE_NAME)?);
    let (severity, status) = (text(c::SEVERITY)?, text(c::STATUS)?);
    let (key, values, explanation) = (
        text(c::KEY_JSON)?,
        text(c::VALUES_JSON)?,
        text(c::EXPLANATION_JSON)?,
    );
    let version: &UInt32Array = column(c::RULE_VERSION)?
        .as_any()
        .downcast_ref()
        .ok_or_else(|| invalid(0, "column 'rule_version' is not UInt32".to_string()))?;
    let (window_start, window_end) = (time(c::WINDOW_START)?, time(c::WINDOW_END)?);
    let (event_time, fired_at) = (time(c::EVENT_TIME)?, time(c::FIRED_AT)?);
    let hospital = match batch.column_by_name(c::HOSPITAL_ID) {
        None => None,
        Some(_) => Some(text(c::HOSPITAL_ID)?),
    };

    (0..batch.num_rows())
        .map(|row| {
            let required_text = |array: &StringArray, name: &str| {
                if array.is_null(row) {
                    Err(invalid(row, format!("'{name}' is null")))
                } else {
                    Ok(array.value(row).to_string())
                }
            };
            let required_time = |array: &TimestampMillisecondArray, name: &str| {
                if array.is_null(row) {
                    Err(invalid(row, format!("'{name}' is null")))
                } else {
                    Ok(array.value(row))
                }
            };
            let optional_time =
                |array: &TimestampMillisecondArray| (!array.is_null(row)).then(|| array.value(row));
            let object = |array: &StringArray, name: &str| {
                let text = required_text(array, name)?;
                serde_json::from_str::<Map<String, Value>>(&text)
                    .map_err(|e| invalid(row, format!("'{name}' is not a JSON object: {e}")))
            };
            let status = match status.value(row) {
                "fired" => AlertStatus::Fired,
                "suppressed" => AlertStatus::Suppressed,
                other => {
                    return Err(invalid(
                        row,
                        format!("'status' must be fired or suppressed; found '{other}'"),
                    ))
                }
            };
            let explanation_text = required_text(explanation, c::EXPLANATION_JSON)?;
            let explanation: Explanation =
                serde_json::from_str(&explanation_text).map_err(|e| {
                    invalid(
                        row,
                        format!("'explanation_json' is not an explanation: {e}"),
                    )
                })?;
            if version.is_null(row) {
                return Err(invalid(row, "'rule_version' is null".to_string()));
            }
            Ok(Alert {
                id: required_text(id, c::ID)?,
                rule_id: required_text(rule_id, c::RULE_ID)?,
                rule_version: version.value(row),
                rule_name: required_text(rule_name, c::RULE_NAME)?,
                severity: required_text(severity, c::SEVERITY)?,
                status,
                key: object(key, c::KEY_JSON)?,
                hospital_id: hospital
                    .filter(|h| h.is_valid(row))
                    .map(|h| h.value(row).to_string()),
                window_start_ms: optional_time(window_start),
                window_end_ms: optional_time(window_end),
                values: object(values, c::VALUES_JSON)?,
                event_time_ms: required_time(event_time, c::EVENT_TIME)?,
                fired_at_ms: required_time(fired_at, c::FIRED_AT)?,
                explanation,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{TimestampMillisecondType, UInt32Type};
    use serde_json::json;

    fn alert(id: &str) -> Alert {
        Alert {
            id: id.to_string(),
            rule_id: "tachy".into(),
            rule_version: 3,
            rule_name: "Tachycardia".into(),
            severity: "high".into(),
            status: AlertStatus::Suppressed,
            key: json!({"patient_id": "P7", "hospital_id": "H1"})
                .as_object()
                .unwrap()
                .clone(),
            hospital_id: Some("H1".into()),
            window_start_ms: Some(1_000),
            window_end_ms: Some(61_000),
            values: json!({"avg_hr": 131.5, "n": 12, "label": "x", "none": null})
                .as_object()
                .unwrap()
                .clone(),
            event_time_ms: 60_500,
            fired_at_ms: 61_200,
            explanation: Explanation {
                condition: "avg(heart_rate_bpm) > 130".into(),
                event_count: 12,
                first_event_ms: 1_000,
                last_event_ms: 60_500,
                first_sequence_number: Some(4),
                last_sequence_number: Some(15),
                suppressed_by: Some("a0".into()),
                escalated_from: Some("e0".into()),
                late: false,
                clears: None,
            },
        }
    }

    fn per_event(id: &str) -> Alert {
        let mut a = alert(id);
        a.status = AlertStatus::Fired;
        a.window_start_ms = None;
        a.window_end_ms = None;
        a.key = json!({"bed": "12"}).as_object().unwrap().clone();
        a.hospital_id = None;
        a.explanation.first_sequence_number = None;
        a.explanation.last_sequence_number = None;
        a.explanation.suppressed_by = None;
        a.explanation.escalated_from = None;
        a
    }

    #[test]
    fn every_field_lands_in_its_column() {
        let batch = alerts_to_batch(&[alert("a"), per_event("b")]).unwrap();
        assert_eq!(batch.schema(), alerts_schema());
        assert_eq!(batch.num_rows(), 2);

        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let time = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<TimestampMillisecondType>()
                .clone()
        };
        assert_eq!(text("id").value(1), "b");
        assert_eq!(text("status").value(0), "suppressed");
        assert_eq!(text("status").value(1), "fired");
        assert_eq!(text("patient_id").value(0), "P7");
        assert!(text("patient_id").is_null(1));
        assert_eq!(text("hospital_id").value(0), "H1");
        assert!(text("hospital_id").is_null(1));
        assert_eq!(
            text("key_json").value(0),
            r#"{"hospital_id":"H1","patient_id":"P7"}"#
        );
        assert!(text("values_json").value(0).contains(r#""avg_hr":131.5"#));
        assert!(text("explanation_json").value(0).contains("event_count"));
        let version = batch.column_by_name("rule_version").unwrap();
        assert_eq!(version.as_primitive::<UInt32Type>().value(0), 3);
        assert_eq!(time("window_start").value(0), 1_000);
        assert!(time("window_start").is_null(1));
        assert!(time("window_end").is_null(1));
        assert_eq!(time("event_time").value(0), 60_500);
        assert_eq!(time("fired_at").value(1), 61_200);
    }

    #[test]
    fn a_batch_round_trips_every_field_of_every_alert() {
        let alerts = vec![alert("a"), per_event("b")];
        let batch = alerts_to_batch(&alerts).unwrap();
        let back = alerts_from_batch(&batch).unwrap();
        assert_eq!(back, alerts);
        // And so the JSON shape served from history is the one sent live.
        for (a, b) in alerts.iter().zip(&back) {
            assert_eq!(
                serde_json::to_string(a).unwrap(),
                serde_json::to_string(b).unwrap()
            );
        }
    }

    #[test]
    fn a_row_that_is_not_an_alert_is_named_by_row_and_column() {
        let batch = alerts_to_batch(&[alert("a"), alert("b")]).unwrap();
        let mut columns = batch.columns().to_vec();
        let status = alerts_schema().index_of(alert_col::STATUS).unwrap();
        columns[status] = Arc::new(StringArray::from(vec!["fired", "maybe"]));
        let bad = RecordBatch::try_new(alerts_schema(), columns).unwrap();
        let err = alerts_from_batch(&bad).unwrap_err().to_string();
        assert!(err.contains("alert #1"), "{err}");
        assert!(err.contains("'maybe'"), "{err}");

        let missing = batch.project(&[0, 1]).unwrap();
        let err = alerts_from_batch(&missing).unwrap_err().to_string();
        assert!(err.contains("no column"), "{err}");
    }

    /// A batch as alerts were written before `hospital_id` existed.
    fn without_hospital_column(batch: &RecordBatch) -> RecordBatch {
        let at = batch.schema().index_of(alert_col::HOSPITAL_ID).unwrap();
        let keep: Vec<usize> = (0..batch.num_columns()).filter(|i| *i != at).collect();
        batch.project(&keep).unwrap()
    }

    #[test]
    fn a_batch_written_before_hospitals_reads_as_alerts_without_one() {
        let alerts = vec![alert("a"), per_event("b")];
        let old = without_hospital_column(&alerts_to_batch(&alerts).unwrap());
        assert!(old.column_by_name(alert_col::HOSPITAL_ID).is_none());
        let back = alerts_from_batch(&old).unwrap();
        let expected: Vec<Alert> = alerts
            .into_iter()
            .map(|a| Alert {
                hospital_id: None,
                ..a
            })
            .collect();
        assert_eq!(back, expected);
        // And its JSON is what such an alert always serialized to.
        assert!(serde_json::to_value(&back[0])
            .unwrap()
            .get("hospital_id")
            .is_none());
    }

    #[test]
    fn no_alerts_make_an_empty_batch() {
        assert_eq!(alerts_to_batch(&[]).unwrap().num_rows(), 0);
        assert!(alerts_from_batch(&alerts_to_batch(&[]).unwrap())
            .unwrap()
            .is_empty());
    }
}

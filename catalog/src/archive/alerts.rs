//! Alerts as Arrow rows, so fired and suppressed alerts are archived and
//! queried like vitals.
//!
//! Alerts reach the catalog as JSON objects in the shape used everywhere
//! (Kafka, REST, replay); this module turns them into one flat schema. Nested
//! parts (`key`, `values`, `explanation`) are kept as JSON text: their fields
//! differ per rule, and SQL can still pick them apart with string functions.
//! The patient is lifted out of `key` because it is what auditors filter on.
//!
//! It does not depend on `sql-rules`' alert type, only on the JSON shape.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, StringBuilder, TimestampMillisecondBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

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
/// `key.patient_id` when the rule groups by patient, else null.
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

/// Converts alert JSON objects into one batch of [`alerts_schema`].
///
/// Expected shape (extra fields are ignored):
/// `{"id", "rule_id", "rule_version", "rule_name", "severity", "status",
///   "key": {...}, "window_start_ms", "window_end_ms", "values": {...},
///   "event_time_ms", "fired_at_ms", "explanation": {...}}`.
/// `window_start_ms`/`window_end_ms` may be null or missing; `key`, `values`
/// and `explanation` default to `{}` when missing. Anything else missing or
/// of the wrong type is an [`CatalogError::InvalidAlert`] naming the alert
/// and the field.
///
/// ```
/// let alert = serde_json::json!({
///     "id": "a1", "rule_id": "tachy", "rule_version": 2, "rule_name": "Tachycardia",
///     "severity": "high", "status": "fired", "key": {"patient_id": "P1"},
///     "window_start_ms": 0, "window_end_ms": 60000, "values": {"avg_hr": 131.0},
///     "event_time_ms": 59000, "fired_at_ms": 60500, "explanation": {"event_count": 12},
/// });
/// let batch = catalog::archive::alerts_to_batch(&[alert])?;
/// assert_eq!(batch.num_rows(), 1);
/// # Ok::<(), catalog::CatalogError>(())
/// ```
pub fn alerts_to_batch(alerts: &[Value]) -> Result<RecordBatch, CatalogError> {
    let n = alerts.len();
    let text = || StringBuilder::with_capacity(n, n * 16);
    let time = || TimestampMillisecondBuilder::with_capacity(n).with_data_type(timestamp_type());
    let (mut id, mut rule_id, mut rule_name, mut severity, mut status) =
        (text(), text(), text(), text(), text());
    let (mut patient, mut key_json, mut values_json, mut explanation_json) =
        (text(), text(), text(), text());
    let mut rule_version = UInt32Builder::with_capacity(n);
    let (mut window_start, mut window_end, mut event_time, mut fired_at) =
        (time(), time(), time(), time());

    for (index, alert) in alerts.iter().enumerate() {
        let fields = Fields::new(index, alert)?;
        id.append_value(fields.string("id")?);
        rule_id.append_value(fields.string("rule_id")?);
        rule_version.append_value(fields.version()?);
        rule_name.append_value(fields.string("rule_name")?);
        severity.append_value(fields.string("severity")?);
        status.append_value(fields.string("status")?);
        let key = fields.object("key")?;
        patient.append_option(
            key.and_then(|k| k.get("patient_id"))
                .and_then(Value::as_str),
        );
        key_json.append_value(object_json(key));
        window_start.append_option(fields.optional_ms("window_start_ms")?);
        window_end.append_option(fields.optional_ms("window_end_ms")?);
        values_json.append_value(object_json(fields.object("values")?));
        event_time.append_value(fields.ms("event_time_ms")?);
        fired_at.append_value(fields.ms("fired_at_ms")?);
        explanation_json.append_value(object_json(fields.object("explanation")?));
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(rule_id.finish()),
        Arc::new(rule_version.finish()),
        Arc::new(rule_name.finish()),
        Arc::new(severity.finish()),
        Arc::new(status.finish()),
        Arc::new(patient.finish()),
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

fn object_json(object: Option<&Map<String, Value>>) -> String {
    match object {
        // serde_json's Map is ordered by key, so the text is canonical.
        Some(map) => Value::Object(map.clone()).to_string(),
        None => "{}".to_string(),
    }
}

/// Field access with errors that say which alert and which field.
struct Fields<'a> {
    index: usize,
    object: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(index: usize, alert: &'a Value) -> Result<Self, CatalogError> {
        match alert.as_object() {
            Some(object) => Ok(Self { index, object }),
            None => Err(CatalogError::InvalidAlert {
                index,
                reason: "not a JSON object".to_string(),
            }),
        }
    }

    fn invalid(&self, field: &str, expected: &str) -> CatalogError {
        let found = match self.object.get(field) {
            None => "it is missing".to_string(),
            Some(value) => format!("found {value}"),
        };
        CatalogError::InvalidAlert {
            index: self.index,
            reason: format!("'{field}' must be {expected}; {found}"),
        }
    }

    fn string(&self, field: &str) -> Result<&'a str, CatalogError> {
        self.object
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| self.invalid(field, "a string"))
    }

    fn version(&self) -> Result<u32, CatalogError> {
        self.object
            .get("rule_version")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| self.invalid("rule_version", "a whole number from 0 to 4294967295"))
    }

    fn ms(&self, field: &str) -> Result<i64, CatalogError> {
        self.object
            .get(field)
            .and_then(Value::as_i64)
            .ok_or_else(|| self.invalid(field, "milliseconds since the epoch (an integer)"))
    }

    fn optional_ms(&self, field: &str) -> Result<Option<i64>, CatalogError> {
        match self.object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.ms(field).map(Some),
        }
    }

    fn object(&self, field: &str) -> Result<Option<&'a Map<String, Value>>, CatalogError> {
        match self.object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(self.invalid(field, "an object")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{TimestampMillisecondType, UInt32Type};
    use serde_json::json;

    fn alert(id: &str) -> Value {
        json!({
            "id": id, "rule_id": "tachy", "rule_version": 3, "rule_name": "Tachycardia",
            "severity": "high", "status": "suppressed",
            "key": {"patient_id": "P7", "hospital_id": "H1"},
            "window_start_ms": 1_000, "window_end_ms": 61_000,
            "values": {"avg_hr": 131.5},
            "event_time_ms": 60_500, "fired_at_ms": 61_200,
            "explanation": {"condition": "avg(heart_rate_bpm) > 130", "event_count": 12},
        })
    }

    #[test]
    fn every_field_lands_in_its_column() {
        let mut per_event = alert("b");
        per_event["window_start_ms"] = Value::Null;
        per_event.as_object_mut().unwrap().remove("window_end_ms");
        per_event["key"] = json!({"bed": "12"});
        let batch = alerts_to_batch(&[alert("a"), per_event]).unwrap();
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
        assert_eq!(text("patient_id").value(0), "P7");
        assert!(text("patient_id").is_null(1));
        assert_eq!(
            text("key_json").value(0),
            r#"{"hospital_id":"H1","patient_id":"P7"}"#
        );
        assert_eq!(text("values_json").value(0), r#"{"avg_hr":131.5}"#);
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
    fn a_malformed_alert_is_named_by_position_and_field() {
        let mut bad = alert("x");
        bad["event_time_ms"] = json!("yesterday");
        let err = alerts_to_batch(&[alert("a"), bad]).unwrap_err().to_string();
        assert!(err.contains("alert #1"), "{err}");
        assert!(err.contains("'event_time_ms'"), "{err}");
        assert!(err.contains("\"yesterday\""), "{err}");

        let mut missing = alert("y");
        missing.as_object_mut().unwrap().remove("rule_id");
        let err = alerts_to_batch(&[missing]).unwrap_err().to_string();
        assert!(
            err.contains("'rule_id' must be a string; it is missing"),
            "{err}"
        );

        let err = alerts_to_batch(&[json!([1, 2])]).unwrap_err().to_string();
        assert!(err.contains("not a JSON object"), "{err}");
    }

    #[test]
    fn no_alerts_make_an_empty_batch() {
        assert_eq!(alerts_to_batch(&[]).unwrap().num_rows(), 0);
    }
}

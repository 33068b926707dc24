//! The `vitals` stream as rules see it.
//!
//! This is the one definition of the canonical VitalEvent in Arrow form: the
//! decoder in `server::source` builds batches of exactly this schema, the
//! archive stores it, and rules are planned against it.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The stream name rules select from.
pub const STREAM_NAME: &str = "vitals";

/// Column names, kept as constants so decoder, archive and engine agree.
pub mod col {
    pub const HOSPITAL_ID: &str = "hospital_id";
    pub const PATIENT_ID: &str = "patient_id";
    pub const TIMESTAMP_UNIX_MS: &str = "timestamp_unix_ms";
    pub const HEART_RATE_BPM: &str = "heart_rate_bpm";
    pub const SPO2_PCT: &str = "spo2_pct";
    pub const RESPIRATION_RATE: &str = "respiration_rate";
    pub const SYSTOLIC_BP_MMHG: &str = "systolic_bp_mmhg";
    pub const DIASTOLIC_BP_MMHG: &str = "diastolic_bp_mmhg";
    pub const SOURCE_DEVICE: &str = "source_device";
    pub const SEQUENCE_NUMBER: &str = "sequence_number";
    pub const EVENT_TIME: &str = "event_time";
}

/// Index of each column in [`vitals_schema`], for builders that fill by position.
pub mod idx {
    pub const HOSPITAL_ID: usize = 0;
    pub const PATIENT_ID: usize = 1;
    pub const TIMESTAMP_UNIX_MS: usize = 2;
    pub const HEART_RATE_BPM: usize = 3;
    pub const SPO2_PCT: usize = 4;
    pub const RESPIRATION_RATE: usize = 5;
    pub const SYSTOLIC_BP_MMHG: usize = 6;
    pub const DIASTOLIC_BP_MMHG: usize = 7;
    pub const SOURCE_DEVICE: usize = 8;
    pub const SEQUENCE_NUMBER: usize = 9;
    pub const EVENT_TIME: usize = 10;
}

/// The five vital-sign readings, in schema order.
pub const READINGS: [&str; 5] = [
    col::HEART_RATE_BPM,
    col::SPO2_PCT,
    col::RESPIRATION_RATE,
    col::SYSTOLIC_BP_MMHG,
    col::DIASTOLIC_BP_MMHG,
];

/// Event time as rules see it: milliseconds since the epoch, UTC.
pub fn event_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The schema of the `vitals` stream.
pub fn vitals_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::HOSPITAL_ID, DataType::Utf8, true),
                Field::new(col::PATIENT_ID, DataType::Utf8, false),
                Field::new(col::TIMESTAMP_UNIX_MS, DataType::Int64, false),
                Field::new(col::HEART_RATE_BPM, DataType::Float64, true),
                Field::new(col::SPO2_PCT, DataType::Float64, true),
                Field::new(col::RESPIRATION_RATE, DataType::Float64, true),
                Field::new(col::SYSTOLIC_BP_MMHG, DataType::Float64, true),
                Field::new(col::DIASTOLIC_BP_MMHG, DataType::Float64, true),
                Field::new(col::SOURCE_DEVICE, DataType::Utf8, true),
                Field::new(col::SEQUENCE_NUMBER, DataType::UInt32, true),
                Field::new(col::EVENT_TIME, event_time_type(), false),
            ]))
        })
        .clone()
}

/// Source devices a VitalEvent may name.
pub const SOURCE_DEVICES: [&str; 3] = ["BEDSIDE", "PORTABLE", "AMBULATORY"];

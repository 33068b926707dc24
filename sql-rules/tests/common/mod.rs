//! What the hospital tests share: vitals batches of (patient, hospital,
//! event time, heart rate) events.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use sql_rules::stream::vitals_schema;

/// (patient, hospital, event time, heart rate).
pub type Ev = (&'static str, Option<&'static str>, i64, f64);

pub fn batch(events: &[Ev]) -> RecordBatch {
    let n = events.len();
    let floats = |v: f64| Arc::new(Float64Array::from(vec![Some(v); n]));
    RecordBatch::try_new(
        vitals_schema(),
        vec![
            Arc::new(StringArray::from(
                events.iter().map(|e| e.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                events.iter().map(|e| e.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                events.iter().map(|e| e.2).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| Some(e.3)).collect::<Vec<_>>(),
            )),
            floats(97.0),
            floats(16.0),
            floats(120.0),
            floats(80.0),
            Arc::new(StringArray::from(vec![Some("BEDSIDE"); n])),
            Arc::new(UInt32Array::from(
                events.iter().map(|e| e.2 as u32).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(events.iter().map(|e| e.2).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

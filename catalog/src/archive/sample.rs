//! Sample vitals and a Parquet reader for the archive and history tests.
//!
//! Every row carries a unique `sequence_number`, so a test can tell which
//! events landed where and whether any landed twice.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::UInt32Type;
use arrow::record_batch::RecordBatch;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sql_rules::stream::vitals_schema;

use crate::storage::list_all;

/// 2026-01-01T10:00:00Z.
pub(crate) const T0: i64 = 1_767_261_600_000;
/// One hour in milliseconds.
pub(crate) const HOUR: i64 = 3_600_000;

/// A vitals batch with one row per event time; sequence numbers count up
/// from `first_seq`.
pub(crate) fn vitals(times_ms: &[i64], first_seq: u32) -> RecordBatch {
    let n = times_ms.len();
    let seq: Vec<u32> = (0..n as u32).map(|i| first_seq + i).collect();
    let reading = |base: f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            seq.iter().map(|s| base + f64::from(s % 7)),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![Some("H1"); n])),
        Arc::new(StringArray::from_iter_values(
            seq.iter().map(|s| format!("P{}", s % 5)),
        )),
        Arc::new(Int64Array::from(times_ms.to_vec())),
        reading(80.0),
        reading(95.0),
        reading(16.0),
        reading(120.0),
        reading(80.0),
        Arc::new(StringArray::from(vec![Some("BEDSIDE"); n])),
        Arc::new(UInt32Array::from(seq.clone())),
        Arc::new(TimestampMillisecondArray::from(times_ms.to_vec()).with_timezone("UTC")),
    ];
    RecordBatch::try_new(vitals_schema(), columns).expect("sample batch matches the schema")
}

/// `count` events starting at `start_ms`, `step_ms` apart.
pub(crate) fn times(start_ms: i64, count: usize, step_ms: i64) -> Vec<i64> {
    (0..count as i64).map(|i| start_ms + i * step_ms).collect()
}

/// The sequence numbers in `batches`, sorted.
pub(crate) fn sequence_numbers(batches: &[RecordBatch]) -> Vec<u32> {
    let mut seqs: Vec<u32> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name("sequence_number").expect("a vitals batch");
            arrow::array::AsArray::as_primitive::<UInt32Type>(column.as_ref())
                .values()
                .to_vec()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Every Parquet file under `dir`, read back with the `parquet` crate, by
/// path.
pub(crate) async fn read_parquet_files(
    store: &dyn ObjectStore,
    dir: &Path,
) -> Vec<(Path, Vec<RecordBatch>)> {
    let mut objects = list_all(store, dir).await.expect("listing");
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    let mut files = Vec::new();
    for object in objects {
        let bytes = store
            .get(&object.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("a Parquet file")
            .build()
            .expect("a reader");
        let batches = reader.collect::<Result<Vec<_>, _>>().expect("readable");
        files.push((object.location, batches));
    }
    files
}

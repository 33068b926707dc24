//! One patient's archived readings over a time range: what the UI's trend
//! chart around an alert draws (`GET /api/patients/{id}/vitals`).
//!
//! Built with DataFusion expressions, never SQL text (the patient id comes
//! from a URL), over the same `vitals` table history SQL reads, buffered
//! rows included and damaged files skipped.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{cast, col, lit, Expr};
use sql_rules::stream::col as v;

use crate::archive::VITALS;
use crate::{CatalogError, HistoryCatalog};

/// One reading as the trend chart needs it; absent measurements are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub event_time_ms: i64,
    pub hospital_id: Option<String>,
    pub heart_rate_bpm: Option<f64>,
    pub spo2_pct: Option<f64>,
    pub respiration_rate: Option<f64>,
    pub systolic_bp_mmhg: Option<f64>,
    pub diastolic_bp_mmhg: Option<f64>,
    pub source_device: Option<String>,
}

/// The readings of `patient_id` with an event time in `[from_ms, to_ms)`,
/// oldest first, at most `limit`; `true` when there were more. A caller
/// limited to `hospitals` gets only rows of those hospitals.
pub async fn patient_readings(
    history: &HistoryCatalog,
    patient_id: &str,
    hospitals: Option<&[String]>,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<(Vec<Reading>, bool), CatalogError> {
    if from_ms >= to_ms || limit == 0 {
        return Ok((Vec::new(), false));
    }
    let ms = |name: &str| cast(col(name), DataType::Int64);
    // The time range prunes the scan to the hours it names.
    let mut filter = col(v::EVENT_TIME)
        .gt_eq(ts(from_ms))
        .and(col(v::EVENT_TIME).lt(ts(to_ms)))
        .and(col(v::PATIENT_ID).eq(lit(patient_id)));
    if let Some(hospitals) = hospitals {
        filter = filter.and(if hospitals.is_empty() {
            lit(false)
        } else {
            col(v::HOSPITAL_ID).in_list(hospitals.iter().map(|h| lit(h.as_str())).collect(), false)
        });
    }
    let columns: Vec<Expr> = vec![
        ms(v::EVENT_TIME).alias("t"),
        cast(col(v::HOSPITAL_ID), DataType::Utf8).alias("h"),
        col(v::HEART_RATE_BPM),
        col(v::SPO2_PCT),
        col(v::RESPIRATION_RATE),
        col(v::SYSTOLIC_BP_MMHG),
        col(v::DIASTOLIC_BP_MMHG),
        cast(col(v::SOURCE_DEVICE), DataType::Utf8).alias("d"),
    ];
    let batches = history
        .read(VITALS, |df| {
            df.filter(filter)?
                .sort(vec![col(v::EVENT_TIME).sort(true, false)])?
                .limit(0, Some(limit.saturating_add(1)))?
                .select(columns)
        })
        .await?;
    let mut readings = Vec::new();
    for batch in &batches {
        let time = batch.column(0).as_primitive::<Int64Type>();
        let hospital = batch.column(1).as_string::<i32>();
        let number = |i: usize| batch.column(i).as_primitive::<Float64Type>();
        let (hr, spo2, resp, sys, dia) = (number(2), number(3), number(4), number(5), number(6));
        let device = batch.column(7).as_string::<i32>();
        let opt =
            |a: &arrow::array::Float64Array, row: usize| a.is_valid(row).then(|| a.value(row));
        for row in 0..batch.num_rows() {
            readings.push(Reading {
                event_time_ms: time.value(row),
                hospital_id: hospital
                    .is_valid(row)
                    .then(|| hospital.value(row).to_string()),
                heart_rate_bpm: opt(hr, row),
                spo2_pct: opt(spo2, row),
                respiration_rate: opt(resp, row),
                systolic_bp_mmhg: opt(sys, row),
                diastolic_bp_mmhg: opt(dia, row),
                source_device: device.is_valid(row).then(|| device.value(row).to_string()),
            });
        }
    }
    let more = readings.len() > limit;
    readings.truncate(limit);
    Ok((readings, more))
}

/// An event-time literal of the archive's type.
pub(crate) fn ts(ms: i64) -> Expr {
    lit(datafusion::scalar::ScalarValue::TimestampMillisecond(
        Some(ms),
        Some("UTC".into()),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::ObjectStore;

    use super::*;
    use crate::archive::sample::{times, vitals, HOUR, T0};
    use crate::archive::{ArchiveConfig, ArchiveWriter};

    #[tokio::test]
    async fn one_patients_readings_in_order_from_files_and_the_buffer() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("arch");
        let mut writer =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        // Patients P0..P4 in turn, one reading a second, over two hours: the
        // first hour in a file, the second still buffered.
        writer
            .append(0, 0, &vitals(&times(T0, 100, 1_000), 0), T0)
            .await
            .unwrap();
        writer.flush_all().await.unwrap();
        writer
            .append(0, 100, &vitals(&times(T0 + HOUR, 100, 1_000), 100), T0)
            .await
            .unwrap();
        let history = HistoryCatalog::new(store, prefix)
            .unwrap()
            .with_unflushed(writer.buffered_view())
            .unwrap();

        let all = |from, to, limit, hospitals: Option<Vec<String>>| {
            let history = &history;
            async move {
                patient_readings(history, "P2", hospitals.as_deref(), from, to, limit)
                    .await
                    .unwrap()
            }
        };
        let (readings, more) = all(T0, T0 + 2 * HOUR, 1_000, None).await;
        assert!(!more);
        // Sequence numbers 2, 7, 12, … are P2's: 20 in each hour.
        let want: Vec<i64> = (0..200)
            .filter(|s| s % 5 == 2)
            .map(|s| {
                if s < 100 {
                    T0 + s * 1_000
                } else {
                    T0 + HOUR + (s - 100) * 1_000
                }
            })
            .collect();
        let got: Vec<i64> = readings.iter().map(|r| r.event_time_ms).collect();
        assert_eq!(got, want);
        let first = &readings[0];
        assert_eq!(first.hospital_id.as_deref(), Some("H1"));
        assert_eq!(first.source_device.as_deref(), Some("BEDSIDE"));
        // The sample's readings are base + seq % 7; seq 2 here.
        assert_eq!(first.heart_rate_bpm, Some(82.0));
        assert_eq!(first.spo2_pct, Some(97.0));

        // The range is half-open and the limit says when there was more.
        let (some, more) = all(T0 + 2_000, T0 + 12_000, 1, None).await;
        assert_eq!((some.len(), more), (1, true));
        assert_eq!(some[0].event_time_ms, T0 + 2_000);
        let (none, more) = all(T0 + 3_000, T0 + 7_000, 10, None).await;
        assert!(none.is_empty() && !more);
        // A caller limited to another hospital sees nothing.
        let (other, _) = all(T0, T0 + 2 * HOUR, 1_000, Some(vec!["H2".into()])).await;
        assert!(other.is_empty());
        let (mine, _) = all(T0, T0 + 2 * HOUR, 1_000, Some(vec!["H1".into()])).await;
        assert_eq!(mine.len(), 40);
    }
}

//! Newline-delimited JSON into the pipeline: `POST /api/ingest` and the
//! demo ward use this; it is the same decode and the same engine as Kafka.

use std::sync::Arc;

use super::decode::{EventTimeBounds, VitalsDecoder};
use crate::archive::ArchiveHandle;
use crate::pipeline::{Input, PipelineHandle, LOCAL_PARTITION};
use crate::sink::dead_letter::{DeadLetter, DeadLetters};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IngestResult {
    pub accepted: usize,
    pub rejected: usize,
}

/// Decodes each non-empty line as one VitalEvent; refused lines become
/// dead letters. Accepted events are handed to the pipeline before this
/// returns.
pub async fn ingest_ndjson(
    body: &[u8],
    origin: &str,
    pipeline: &PipelineHandle,
    dead_letters: &Arc<DeadLetters>,
    archive: &ArchiveHandle,
    max_batch_rows: usize,
    time_bounds: EventTimeBounds,
) -> Result<IngestResult, crate::pipeline::PipelineClosed> {
    // The clock is read once per request.
    let mut decoder = VitalsDecoder::new(max_batch_rows.min(65_536))
        .with_time_bounds(time_bounds, chrono::Utc::now().timestamp_millis());
    let mut letters = Vec::new();
    let mut result = IngestResult::default();
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match decoder.push_json(line) {
            Ok(()) => result.accepted += 1,
            Err(rejection) => {
                result.rejected += 1;
                letters.push(DeadLetter {
                    key: None,
                    payload: line.to_vec(),
                    reason: rejection.reason,
                    origin: origin.to_string(),
                    source: None,
                });
            }
        }
        if decoder.len() >= max_batch_rows {
            let batch = decoder.finish();
            archive.send_local(batch.clone()).await;
            pipeline
                .send_async(Input::Batch {
                    partition: LOCAL_PARTITION,
                    batch,
                })
                .await?;
        }
    }
    if !decoder.is_empty() {
        let batch = decoder.finish();
        archive.send_local(batch.clone()).await;
        pipeline
            .send_async(Input::Batch {
                partition: LOCAL_PARTITION,
                batch,
            })
            .await?;
    }
    dead_letters.record(letters).await;
    Ok(result)
}

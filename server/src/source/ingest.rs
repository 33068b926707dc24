//! Newline-delimited JSON into the intake: `POST /api/ingest` and the demo
//! ward use this; it is the same decode, intake and engine as Kafka.

use std::sync::Arc;

use super::decode::VitalsDecoder;
use crate::intake::{Intake, IntakeBatch, Origin};
use crate::pipeline::PipelineClosed;
use crate::sink::dead_letter::DeadLetter;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IngestResult {
    pub accepted: usize,
    pub rejected: usize,
}

/// Decodes each non-empty line as one VitalEvent; refused lines become
/// dead letters. Everything is handed to the intake before this returns.
pub async fn ingest_ndjson(
    body: &[u8],
    origin: &str,
    intake: &Intake,
    max_batch_rows: usize,
    hospitals: Option<&[String]>,
) -> Result<IngestResult, PipelineClosed> {
    let max_batch_rows = max_batch_rows.clamp(1, 65_536);
    // The clock is read once per request.
    let mut decoder = VitalsDecoder::new(max_batch_rows)
        .with_time_bounds(intake.time_bounds(), chrono::Utc::now().timestamp_millis())
        .with_hospitals(hospitals.map(Arc::from));
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
            intake
                .submit(IntakeBatch {
                    origin: Origin::Local,
                    batch: decoder.finish(),
                    dead_letters: std::mem::take(&mut letters),
                })
                .await?;
        }
    }
    if !decoder.is_empty() || !letters.is_empty() {
        intake
            .submit(IntakeBatch {
                origin: Origin::Local,
                batch: decoder.finish(),
                dead_letters: letters,
            })
            .await?;
    }
    Ok(result)
}

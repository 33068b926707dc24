//! Engine state as bytes, so a checkpoint can persist it and another
//! instance can resume a partition's rules where this one stopped.
//!
//! Layout: `WWSNAP1\n`, a little-endian u64 header length, a JSON header
//! (rule identities, watermarks, cooldowns, counters), then each Arrow IPC
//! stream blob as a u64 length and its bytes. Pane and session state travel
//! as Arrow record batches of the accumulators' own intermediate state, the
//! form DataFusion merges partial aggregates in.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, UInt32Array, UInt64Array};
use arrow::datatypes::{Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::error::EngineError;
use crate::window::GroupStats;

const MAGIC: &[u8; 8] = b"WWSNAP1\n";

/// Accumulates blobs while a snapshot is taken.
#[derive(Default)]
pub struct Blobs(pub Vec<Vec<u8>>);

impl Blobs {
    /// Stores a batch; returns its index for the header.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<usize, EngineError> {
        let mut bytes = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut bytes, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
        }
        self.0.push(bytes);
        Ok(self.0.len() - 1)
    }

    pub fn get(&self, index: usize) -> Result<RecordBatch, EngineError> {
        let bytes = self
            .0
            .get(index)
            .ok_or_else(|| EngineError::Restore(format!("missing state blob {index}")))?;
        let mut reader = StreamReader::try_new(bytes.as_slice(), None)?;
        reader
            .next()
            .transpose()?
            .ok_or_else(|| EngineError::Restore(format!("state blob {index} holds no batch")))
    }
}

pub fn encode(header: &serde_json::Value, blobs: &Blobs) -> Vec<u8> {
    let header = header.to_string();
    let mut out =
        Vec::with_capacity(16 + header.len() + blobs.0.iter().map(|b| b.len() + 8).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for blob in &blobs.0 {
        out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
        out.extend_from_slice(blob);
    }
    out
}

pub fn decode(bytes: &[u8]) -> Result<(serde_json::Value, Blobs), EngineError> {
    let bad = |what: &str| EngineError::Restore(format!("not an engine snapshot: {what}"));
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("wrong magic"));
    }
    let mut at = 8;
    let read_len = |at: &mut usize| -> Result<usize, EngineError> {
        let end = *at + 8;
        let slice = bytes.get(*at..end).ok_or_else(|| bad("truncated length"))?;
        *at = end;
        Ok(u64::from_le_bytes(slice.try_into().expect("8 bytes")) as usize)
    };
    let header_len = read_len(&mut at)?;
    let header_bytes = bytes
        .get(at..at + header_len)
        .ok_or_else(|| bad("truncated header"))?;
    at += header_len;
    let header: serde_json::Value = serde_json::from_slice(header_bytes)
        .map_err(|e| EngineError::Restore(format!("snapshot header: {e}")))?;
    let mut blobs = Blobs::default();
    while at < bytes.len() {
        let len = read_len(&mut at)?;
        let blob = bytes
            .get(at..at + len)
            .ok_or_else(|| bad("truncated blob"))?;
        blobs.0.push(blob.to_vec());
        at += len;
    }
    Ok((header, blobs))
}

/// Lays out key columns, per-aggregate state columns and group stats as one
/// batch (column names are positional; the header says how to split them).
pub fn state_batch(
    keys: &[ArrayRef],
    states: &[Vec<ArrayRef>],
    stats: &[GroupStats],
) -> Result<RecordBatch, EngineError> {
    let mut columns: Vec<ArrayRef> = keys.to_vec();
    for s in states {
        columns.extend(s.iter().cloned());
    }
    columns.push(Arc::new(UInt64Array::from_iter_values(
        stats.iter().map(|s| s.count),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(
        stats.iter().map(|s| s.first_event_ms),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(
        stats.iter().map(|s| s.last_event_ms),
    )));
    columns.push(Arc::new(UInt32Array::from_iter_values(
        stats.iter().map(|s| s.first_seq),
    )));
    columns.push(Arc::new(UInt32Array::from_iter_values(
        stats.iter().map(|s| s.last_seq),
    )));
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Splits a [`state_batch`] back into keys, states and stats.
#[allow(clippy::type_complexity)]
pub fn split_state_batch(
    batch: &RecordBatch,
    key_columns: usize,
    state_columns: &[usize],
) -> Result<(Vec<ArrayRef>, Vec<Vec<ArrayRef>>, Vec<GroupStats>), EngineError> {
    let expected = key_columns + state_columns.iter().sum::<usize>() + 5;
    if batch.num_columns() != expected {
        return Err(EngineError::Restore(format!(
            "pane state has {} columns, the rule expects {expected}: was the snapshot taken with another rule version?",
            batch.num_columns()
        )));
    }
    let cols = batch.columns();
    let keys = cols[..key_columns].to_vec();
    let mut at = key_columns;
    let mut states = Vec::with_capacity(state_columns.len());
    for &n in state_columns {
        states.push(cols[at..at + n].to_vec());
        at += n;
    }
    let as_u64 = cols[at].as_any().downcast_ref::<UInt64Array>();
    let as_first = cols[at + 1].as_any().downcast_ref::<Int64Array>();
    let as_last = cols[at + 2].as_any().downcast_ref::<Int64Array>();
    let as_first_seq = cols[at + 3].as_any().downcast_ref::<UInt32Array>();
    let as_last_seq = cols[at + 4].as_any().downcast_ref::<UInt32Array>();
    let (Some(count), Some(first), Some(last), Some(first_seq), Some(last_seq)) =
        (as_u64, as_first, as_last, as_first_seq, as_last_seq)
    else {
        return Err(EngineError::Restore(
            "pane stats columns have the wrong types".into(),
        ));
    };
    let stats = (0..batch.num_rows())
        .map(|i| GroupStats {
            count: count.value(i),
            first_event_ms: first.value(i),
            last_event_ms: last.value(i),
            first_seq: first_seq.value(i),
            last_seq: last_seq.value(i),
        })
        .collect();
    Ok((keys, states, stats))
}

//! Feeding the Parquet archive: every accepted raw event and every alert
//! goes to a writer task (object store I/O and Parquet encoding stay off
//! the engine thread), and a background task applies retention.
//!
//! Events from Kafka are archived under their partition and offsets. Events
//! from HTTP or the demo use partition -1 with offsets starting at
//! `startup ms × 1,000,000`, so a restart never reuses (and overwrites) an
//! earlier run's file names.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use catalog::archive::{apply_retention, ArchiveConfig, ArchiveWriter, BufferedView};
use catalog::log::JsonLog;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::mpsc;

use crate::config::ArchiveSettings;

pub struct ArchiveInput {
    pub partition: i32,
    pub offsets: RangeInclusive<i64>,
    pub batch: RecordBatch,
    /// Answered once the rows are in the writer's buffer (and so visible
    /// to history queries).
    pub accepted: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Sends batches to an archive writer task.
#[derive(Clone)]
pub struct ArchiveHandle {
    tx: mpsc::Sender<ArchiveInput>,
    local_next: Arc<AtomicI64>,
}

impl ArchiveHandle {
    /// Archives a batch consumed from Kafka (blocking: for the source thread).
    pub fn send_blocking(&self, input: ArchiveInput) {
        if self.tx.blocking_send(input).is_err() {
            tracing::error!("the archive writer has stopped; events are not being archived");
        }
    }

    /// Archives a batch that did not come from Kafka; returns once the rows
    /// are buffered, so a history query made afterwards sees them.
    pub async fn send_local(&self, batch: RecordBatch) {
        let n = batch.num_rows() as i64;
        if n == 0 {
            return;
        }
        let first = self.local_next.fetch_add(n, Ordering::Relaxed);
        let (accepted, buffered) = tokio::sync::oneshot::channel();
        let input = ArchiveInput {
            partition: catalog::archive::NO_PARTITION,
            offsets: first..=first + n - 1,
            batch,
            accepted: Some(accepted),
        };
        if self.tx.send(input).await.is_err() || buffered.await.is_err() {
            tracing::error!("the archive writer has stopped; events are not being archived");
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Starts a writer task for `writer`; returns its handle and live view of
/// buffered rows (for history queries).
pub fn start(
    mut writer: ArchiveWriter,
    what: &'static str,
) -> (ArchiveHandle, BufferedView, tokio::task::JoinHandle<()>) {
    let view = writer.buffered_view();
    let (tx, mut rx) = mpsc::channel::<ArchiveInput>(64);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => {
                        let rows = input.batch.num_rows();
                        if let Err(e) = writer.append_range(input.partition, input.offsets, &input.batch, now_ms()).await {
                            tracing::error!(error = %e, rows, partition = input.partition, "archiving {what}");
                        }
                        if let Some(accepted) = input.accepted {
                            let _ = accepted.send(());
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if let Err(e) = writer.flush_due(now_ms()).await {
                        tracing::error!(error = %e, "flushing the {what} archive");
                    }
                }
            }
        }
        if let Err(e) = writer.flush_all().await {
            tracing::error!(error = %e, "final flush of the {what} archive");
        }
    });
    let local_next = Arc::new(AtomicI64::new(now_ms().saturating_mul(1_000_000)));
    (ArchiveHandle { tx, local_next }, view, task)
}

pub fn writer_config(settings: &ArchiveSettings) -> ArchiveConfig {
    ArchiveConfig {
        max_file_bytes: settings.max_file_mb.max(1) * 1024 * 1024,
        flush_interval: Duration::from_millis(settings.flush_interval_ms.max(1)),
        ..ArchiveConfig::default()
    }
}

/// Deletes expired archive files every hour and records each deletion in
/// the audit log.
pub fn start_retention(
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    settings: ArchiveSettings,
    audit: Arc<JsonLog>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            for (table, days) in [
                ("vitals", settings.retention_days),
                ("alerts", settings.alerts_retention_days),
            ] {
                match apply_retention(store.as_ref(), &prefix, table, days, now_ms()).await {
                    Ok(deleted) if !deleted.is_empty() => {
                        let records: Vec<serde_json::Value> = deleted
                            .iter()
                            .map(|p| serde_json::json!({"at_ms": now_ms(), "action": "retention_delete", "table": table, "path": p.to_string(), "keep_days": days}))
                            .collect();
                        tracing::info!(
                            table,
                            files = deleted.len(),
                            "retention deleted expired archive files"
                        );
                        if let Err(e) = audit.append(&records).await {
                            tracing::error!(error = %e, "recording retention in the audit log");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, table, "applying retention"),
                }
            }
        }
    });
}

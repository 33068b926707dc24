//! Feeding the Parquet archive: every accepted raw event and every alert
//! goes to a writer task (object store I/O and Parquet encoding stay off
//! the engine thread), and a background task applies retention.
//!
//! Events from Kafka are archived under their partition and offsets, and
//! Kafka offsets are committed only as far as events are in written files
//! ([`ArchiveHandle::durable_offset`]); on assignment, files an earlier run
//! wrote past the committed offset are removed before reading resumes, so
//! each event is in the archive exactly once across restarts. Events
//! from HTTP or the demo use partition -1 with offsets starting at
//! `startup ms × 1,000,000`, so a restart never reuses (and overwrites) an
//! earlier run's file names.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
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

enum Message {
    Append(ArchiveInput),
    /// A partition was assigned and will be read from `next_offset`: files
    /// of earlier runs starting at or after it are removed (their rows come
    /// again), so nothing is archived twice.
    Resume {
        partition: i32,
        next_offset: i64,
        done: std::sync::mpsc::Sender<()>,
    },
    /// A partition was revoked: write what is buffered for it now.
    Flush {
        partition: i32,
        done: std::sync::mpsc::Sender<()>,
    },
    /// Shutdown: write everything buffered and stop the writer task.
    Close,
}

/// Sends batches to an archive writer task.
#[derive(Clone)]
pub struct ArchiveHandle {
    tx: mpsc::Sender<Message>,
    local_next: Arc<AtomicI64>,
    /// Per Kafka partition, the last offset whose event is in a written
    /// file: offsets are committed only up to here.
    durable: Arc<Mutex<HashMap<i32, i64>>>,
}

impl ArchiveHandle {
    /// Archives a batch consumed from Kafka (blocking: for the source thread).
    pub fn send_blocking(&self, input: ArchiveInput) {
        if self.tx.blocking_send(Message::Append(input)).is_err() {
            tracing::error!("the archive writer has stopped; events are not being archived");
        }
    }

    /// Last offset of `partition` whose event is durably archived.
    pub fn durable_offset(&self, partition: i32) -> Option<i64> {
        self.durable.lock().ok()?.get(&partition).copied()
    }

    /// See [`Message::Resume`]. Blocks until done (for the consumer thread).
    pub fn resume_blocking(&self, partition: i32, next_offset: i64) {
        let (done, wait) = std::sync::mpsc::channel();
        if self
            .tx
            .blocking_send(Message::Resume {
                partition,
                next_offset,
                done,
            })
            .is_ok()
        {
            let _ = wait.recv();
        }
    }

    /// See [`Message::Flush`]. Blocks until done (for the consumer thread).
    pub fn flush_blocking(&self, partition: i32) {
        let (done, wait) = std::sync::mpsc::channel();
        if self
            .tx
            .blocking_send(Message::Flush { partition, done })
            .is_ok()
        {
            let _ = wait.recv();
        }
    }

    /// Shutdown: the writer writes everything it buffers and stops; batches
    /// sent afterwards are refused with an error log. Await the writer's
    /// task handle to know the final flush is done.
    pub async fn close(&self) {
        let _ = self.tx.send(Message::Close).await;
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
        if self.tx.send(Message::Append(input)).await.is_err() || buffered.await.is_err() {
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
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let durable: Arc<Mutex<HashMap<i32, i64>>> = Arc::default();
    let published = Arc::clone(&durable);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut partitions: std::collections::BTreeSet<i32> = Default::default();
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Append(input)) => {
                        let rows = input.batch.num_rows();
                        partitions.insert(input.partition);
                        if let Err(e) = writer.append_range(input.partition, input.offsets, &input.batch, now_ms()).await {
                            tracing::error!(error = %e, rows, partition = input.partition, "archiving {what}");
                        }
                        if let Some(accepted) = input.accepted {
                            let _ = accepted.send(());
                        }
                    }
                    Some(Message::Resume { partition, next_offset, done }) => {
                        match writer.resume(partition, next_offset).await {
                            Ok(removed) if !removed.is_empty() => {
                                tracing::info!(partition, next_offset, files = removed.len(), "removed {what} files that will be rewritten from Kafka");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, partition, "resuming the {what} archive"),
                        }
                        let _ = done.send(());
                    }
                    Some(Message::Flush { partition, done }) => {
                        if let Err(e) = writer.flush_partition(partition).await {
                            tracing::error!(error = %e, partition, "flushing the {what} archive");
                        }
                        let _ = done.send(());
                    }
                    Some(Message::Close) | None => break,
                },
                _ = tick.tick() => {
                    if let Err(e) = writer.flush_due(now_ms()).await {
                        tracing::error!(error = %e, "flushing the {what} archive");
                    }
                }
            }
            if let Ok(mut d) = published.lock() {
                for &p in &partitions {
                    if let Some(o) = writer.durable_offset(p) {
                        d.insert(p, o);
                    }
                }
            }
        }
        if let Err(e) = writer.flush_all().await {
            tracing::error!(error = %e, "final flush of the {what} archive");
        }
    });
    let local_next = Arc::new(AtomicI64::new(now_ms().saturating_mul(1_000_000)));
    (
        ArchiveHandle {
            tx,
            local_next,
            durable,
        },
        view,
        task,
    )
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

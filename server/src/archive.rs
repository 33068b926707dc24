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
    /// Answered once the rows are in a written (and on local disk,
    /// fsync'd) file; dropped unanswered if the writer stops first.
    pub durable: Option<tokio::sync::oneshot::Sender<()>>,
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
    /// The partition of batches without Kafka offsets: -1, or one of this
    /// instance's own where several share the store.
    local_partition: i32,
}

impl ArchiveHandle {
    /// Archives batches without Kafka offsets under `partition` (negative),
    /// so instances sharing a store never name a file alike.
    pub fn with_local_partition(mut self, partition: i32) -> Self {
        debug_assert!(partition < 0);
        self.local_partition = partition;
        self
    }

    /// The partition batches without Kafka offsets are archived under.
    pub fn local_partition(&self) -> i32 {
        self.local_partition
    }

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
    /// Answers the archive offset given to the batch's last row (`None`
    /// for an empty batch or a stopped writer).
    pub async fn send_local(&self, batch: RecordBatch) -> Option<i64> {
        if batch.num_rows() == 0 {
            return None;
        }
        let (accepted, buffered) = tokio::sync::oneshot::channel();
        let input = self.local_input(batch, Some(accepted), None);
        let last = *input.offsets.end();
        if self.tx.send(Message::Append(input)).await.is_err() || buffered.await.is_err() {
            tracing::error!("the archive writer has stopped; events are not being archived");
            return None;
        }
        Some(last)
    }

    /// Like [`send_local`](Self::send_local), but what it returns resolves
    /// only once the rows are in a written file (see the [module docs](self)):
    /// the batch is queued before this returns, so a caller can hand it on
    /// (to the engine) and then wait. The wait errs if the writer stops
    /// first or refuses the batch; while writing fails it keeps waiting (the
    /// writer retries), so nothing is answered as durable that is not.
    pub async fn send_local_durable(
        &self,
        batch: RecordBatch,
    ) -> Result<impl std::future::Future<Output = Result<(), ArchiveStopped>>, ArchiveStopped> {
        let (durable, written) = tokio::sync::oneshot::channel();
        if batch.num_rows() == 0 {
            let _ = durable.send(());
        } else {
            let input = self.local_input(batch, None, Some(durable));
            if self.tx.send(Message::Append(input)).await.is_err() {
                tracing::error!("the archive writer has stopped; events are not being archived");
                return Err(ArchiveStopped);
            }
        }
        Ok(async move { written.await.map_err(|_| ArchiveStopped) })
    }

    fn local_input(
        &self,
        batch: RecordBatch,
        accepted: Option<tokio::sync::oneshot::Sender<()>>,
        durable: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> ArchiveInput {
        let n = batch.num_rows() as i64;
        let first = self.local_next.fetch_add(n, Ordering::Relaxed);
        ArchiveInput {
            partition: self.local_partition,
            offsets: first..=first + n - 1,
            batch,
            accepted,
            durable,
        }
    }
}

/// The archive writer stopped before a batch was written.
#[derive(Debug, thiserror::Error)]
#[error("the archive writer has stopped")]
pub struct ArchiveStopped;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Batches waiting to be answered once durable: (partition, last offset).
#[derive(Default)]
struct DurableWaiters {
    waiting: Vec<(i32, i64, tokio::sync::oneshot::Sender<()>)>,
    /// When the partitions of the waiting batches are written next.
    commit_at: Option<tokio::time::Instant>,
}

impl DurableWaiters {
    fn add(
        &mut self,
        partition: i32,
        last_offset: i64,
        tx: tokio::sync::oneshot::Sender<()>,
        next_commit: tokio::time::Instant,
    ) {
        self.waiting.push((partition, last_offset, tx));
        self.commit_at.get_or_insert(next_commit);
    }

    /// The partitions the waiting batches are in.
    fn partitions(&self) -> std::collections::BTreeSet<i32> {
        self.waiting.iter().map(|(p, _, _)| *p).collect()
    }

    /// Answers every waiting batch that is now durable.
    fn release(&mut self, writer: &ArchiveWriter) {
        let mut still = Vec::with_capacity(self.waiting.len());
        for (partition, last, tx) in self.waiting.drain(..) {
            if writer.durable_offset(partition).is_some_and(|d| d >= last) {
                let _ = tx.send(());
            } else {
                still.push((partition, last, tx));
            }
        }
        self.waiting = still;
        if self.waiting.is_empty() {
            self.commit_at = None;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts a writer task for `writer`; returns its handle and live view of
/// buffered rows (for history queries). Batches sent with
/// [`ArchiveHandle::send_local_durable`] are written at most
/// `commit_interval` after they arrive.
pub fn start(
    writer: ArchiveWriter,
    what: &'static str,
) -> (ArchiveHandle, BufferedView, tokio::task::JoinHandle<()>) {
    start_with_commit_interval(writer, what, DEFAULT_COMMIT_INTERVAL)
}

/// How long a batch waiting to be durable may wait for others to share its
/// write, unless configured (`[archive] ingest_commit_interval_ms`).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// [`start`] with the group-commit interval for durable local batches.
pub fn start_with_commit_interval(
    mut writer: ArchiveWriter,
    what: &'static str,
    commit_interval: Duration,
) -> (ArchiveHandle, BufferedView, tokio::task::JoinHandle<()>) {
    let view = writer.buffered_view();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let durable: Arc<Mutex<HashMap<i32, i64>>> = Arc::default();
    let published = Arc::clone(&durable);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut partitions: std::collections::BTreeSet<i32> = Default::default();
        let mut waiters = DurableWaiters::default();
        // An idle writer commits at once; a busy one at most every interval.
        let mut last_commit = tokio::time::Instant::now()
            .checked_sub(commit_interval)
            .unwrap_or_else(tokio::time::Instant::now);
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Append(input)) => {
                        let ArchiveInput { partition, offsets, batch, accepted, durable } = input;
                        let rows = batch.num_rows();
                        let last = *offsets.end();
                        partitions.insert(partition);
                        match writer.append_range(partition, offsets, &batch, now_ms()).await {
                            Ok(_) => {
                                if let Some(durable) = durable {
                                    // Group commit: no sooner than an interval after
                                    // the last one, so concurrent batches share it.
                                    let next = (last_commit + commit_interval).max(tokio::time::Instant::now());
                                    waiters.add(partition, last, durable, next);
                                }
                            }
                            // A durable sender is dropped: its batch is not archived.
                            Err(e) => tracing::error!(error = %e, rows, partition, "archiving {what}"),
                        }
                        if let Some(accepted) = accepted {
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
                _ = sleep_until(waiters.commit_at) => {
                    last_commit = tokio::time::Instant::now();
                    for partition in waiters.partitions() {
                        if let Err(e) = writer.flush_partition(partition).await {
                            tracing::error!(error = %e, partition, "writing the {what} archive for a durable answer; retrying");
                        }
                    }
                    // Whatever is still waiting (a write failed) retries.
                    waiters.commit_at = Some(last_commit + commit_interval.max(Duration::from_millis(100)));
                }
            }
            waiters.release(&writer);
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
        // Batches not written even now are dropped: their senders hear so.
        waiters.release(&writer);
    });
    let local_next = Arc::new(AtomicI64::new(now_ms().saturating_mul(1_000_000)));
    (
        ArchiveHandle {
            tx,
            local_next,
            durable,
            local_partition: catalog::archive::NO_PARTITION,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::decode::VitalsDecoder;

    fn batch(rows: u32) -> RecordBatch {
        let now = chrono::Utc::now().timestamp_millis();
        let mut decoder = VitalsDecoder::new(rows as usize);
        for seq in 0..rows {
            let line = format!(
                r#"{{"hospital_id":"H1","patient_id":"P1","timestamp_unix_ms":{},"heart_rate_bpm":80,"sequence_number":{seq}}}"#,
                now - 1_000 + i64::from(seq)
            );
            decoder.push_json(line.as_bytes()).unwrap();
        }
        decoder.finish()
    }

    fn parquet_files(dir: &std::path::Path) -> usize {
        let mut count = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    count += 1;
                }
            }
        }
        count
    }

    #[tokio::test]
    async fn a_durable_local_batch_is_answered_once_its_file_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, prefix) = catalog::open_store(tmp.path().to_str().unwrap()).unwrap();
        // Without durable answers nothing would be written for an hour.
        let config = ArchiveConfig {
            flush_interval: Duration::from_secs(3600),
            ..ArchiveConfig::default()
        };
        let (handle, _view, task) = start_with_commit_interval(
            ArchiveWriter::new(store, prefix, config),
            "vitals",
            Duration::from_millis(50),
        );

        handle.send_local(batch(3)).await;
        assert_eq!(parquet_files(tmp.path()), 0, "buffered only");

        let started = std::time::Instant::now();
        let written = handle.send_local_durable(batch(5)).await.unwrap();
        written.await.unwrap();
        let one = started.elapsed();
        assert_eq!(parquet_files(tmp.path()), 1, "both batches, one file");

        // Concurrent requests share a commit.
        let waits = futures::future::join_all((0..8).map(|_| {
            let handle = handle.clone();
            async move { handle.send_local_durable(batch(2)).await.unwrap().await }
        }))
        .await;
        assert!(waits.iter().all(Result::is_ok));
        let files = parquet_files(tmp.path());
        assert!((2..=3).contains(&files), "8 batches in {} files", files - 1);
        eprintln!("durable local batch answered in {one:?}");

        handle.close().await;
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_durable_wait_ends_in_an_error_when_the_writer_stops_first() {
        let (store, prefix) = catalog::open_store("memory://").unwrap();
        let config = ArchiveConfig {
            flush_interval: Duration::from_secs(3600),
            ..ArchiveConfig::default()
        };
        let (handle, _view, task) = start_with_commit_interval(
            ArchiveWriter::new(store, prefix, config),
            "vitals",
            Duration::from_secs(3600),
        );
        let written = handle.send_local_durable(batch(1)).await.unwrap();
        handle.close().await;
        task.await.unwrap();
        // The final flush wrote it: the wait ends well.
        assert!(written.await.is_ok());
        assert!(handle.send_local_durable(batch(1)).await.is_err());
    }
}

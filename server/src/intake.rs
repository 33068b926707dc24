//! The one way events enter: Kafka, `POST /api/ingest` and the demo ward
//! all hand a decoded batch, with its origin, offsets and refused events,
//! to [`Intake`], which fans it out in one fixed order — dead letters held,
//! archive, engine, dead letters delivered — and to nothing else.
//!
//! [`CommitGate`] owns the answer to "how far may the Kafka consumer
//! commit": no further than the archive has made durable, and never past an
//! event whose dead letter is not yet delivered. Checkpoints of engine state
//! will add their bound here, in the same place.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;

use crate::archive::{ArchiveHandle, ArchiveInput};
use crate::pipeline::{Input, PipelineClosed, PipelineHandle, LOCAL_PARTITION};
use crate::shutdown::ShutdownNotice;
use crate::sink::dead_letter::{DeadLetter, DeadLetters};
use crate::source::decode::EventTimeBounds;

/// Dead letters waiting for delivery past this many make a Kafka source
/// wait (the broker is slow or down) rather than buffer without bound.
const MAX_DEAD_LETTERS_IN_FLIGHT: usize = 100_000;

/// Where a batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Read from a Kafka partition: the offsets of every message the batch
    /// covers, refused ones included (they are committed together).
    Kafka {
        partition: i32,
        offsets: RangeInclusive<i64>,
    },
    /// `POST /api/ingest` or the demo ward: archived under partition -1
    /// with offsets the archive assigns.
    Local,
}

/// A decoded batch on its way in.
pub struct IntakeBatch {
    pub origin: Origin,
    /// Accepted events (may be empty when every event was refused).
    pub batch: RecordBatch,
    /// Refused events, with their reasons.
    pub dead_letters: Vec<DeadLetter>,
}

/// The single entry for decoded events. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    pipeline: PipelineHandle,
    archive: ArchiveHandle,
    dead_letters: Arc<DeadLetters>,
    gate: Arc<CommitGate>,
    rt: tokio::runtime::Handle,
    shutdown: ShutdownNotice,
    time_bounds: EventTimeBounds,
    /// Whether [`submit`](Self::submit) of a local batch waits until the
    /// archive has written it (`[archive] ingest_durable_ack`).
    durable_local: bool,
}

impl Intake {
    pub fn new(
        pipeline: PipelineHandle,
        archive: ArchiveHandle,
        dead_letters: Arc<DeadLetters>,
        rt: tokio::runtime::Handle,
        shutdown: ShutdownNotice,
        time_bounds: EventTimeBounds,
    ) -> Self {
        let gate = Arc::new(CommitGate {
            archive: archive.clone(),
            dead_letters: Arc::clone(&dead_letters),
        });
        Self {
            pipeline,
            archive,
            dead_letters,
            gate,
            rt,
            shutdown,
            time_bounds,
            durable_local: false,
        }
    }

    /// Makes [`submit`](Self::submit) of local batches (`POST /api/ingest`,
    /// the demo) return only once the archive has written them to a file
    /// (fsync'd on local disk) and embedded dead letters are written too.
    /// Costs up to the archive's group-commit interval plus one write per
    /// request, and one small Parquet file per commit and event hour.
    pub fn with_durable_local(mut self, durable: bool) -> Self {
        self.durable_local = durable;
        self
    }

    /// The event times sources accept around the server clock: decoders
    /// refuse the rest before they reach the intake.
    pub fn time_bounds(&self) -> EventTimeBounds {
        self.time_bounds
    }

    pub fn gate(&self) -> &Arc<CommitGate> {
        &self.gate
    }

    pub fn pipeline(&self) -> &PipelineHandle {
        &self.pipeline
    }

    pub fn archive(&self) -> &ArchiveHandle {
        &self.archive
    }

    /// For a Kafka source thread: blocks while the archive or the engine is
    /// busy (backpressure reaches the consumer) and delivers dead letters in
    /// the background, holding commits behind them until they are.
    pub fn submit_blocking(&self, input: IntakeBatch) {
        let IntakeBatch {
            origin,
            batch,
            dead_letters,
        } = input;
        let Origin::Kafka { partition, offsets } = origin else {
            // Local batches need the archive to assign offsets: use `submit`.
            let _ = self.rt.block_on(self.submit(IntakeBatch {
                origin,
                batch,
                dead_letters,
            }));
            return;
        };
        // Held before the archive (whose progress drives commits) sees the
        // batch, so no commit can pass a letter before it is delivered.
        let sources: Vec<(i32, i64)> = dead_letters.iter().filter_map(|l| l.source).collect();
        if !dead_letters.is_empty() {
            self.dead_letters
                .in_flight
                .hold(&sources, dead_letters.len());
        }
        // The copy for the archive shares the columns (Arc); no data is copied.
        self.archive.send_blocking(ArchiveInput {
            partition,
            offsets,
            batch: batch.clone(),
            accepted: None,
            durable: None,
        });
        if batch.num_rows() > 0 {
            let _ = self.pipeline.send(Input::Batch { partition, batch });
        }
        if !dead_letters.is_empty() {
            while self.dead_letters.in_flight.letters() > MAX_DEAD_LETTERS_IN_FLIGHT
                && !self.shutdown.is_requested()
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.dead_letters
                .record_in_background(&self.rt, dead_letters);
        }
    }

    /// For HTTP and the demo: returns once the events are in the archive's
    /// buffer (visible to history queries), handed to the engine, and the
    /// refused ones recorded; with [`with_durable_local`](Self::with_durable_local),
    /// once the events and the embedded dead letters are written to storage.
    pub async fn submit(&self, input: IntakeBatch) -> Result<(), PipelineClosed> {
        let IntakeBatch {
            origin,
            batch,
            dead_letters,
        } = input;
        let partition = match origin {
            Origin::Local => LOCAL_PARTITION,
            // A Kafka batch from async code: same order, without blocking
            // a runtime worker.
            Origin::Kafka { partition, offsets } => {
                let this = self.clone();
                let input = IntakeBatch {
                    origin: Origin::Kafka { partition, offsets },
                    batch,
                    dead_letters,
                };
                return tokio::task::spawn_blocking(move || this.submit_blocking(input))
                    .await
                    .map_err(|_| PipelineClosed);
            }
        };
        if !self.durable_local {
            if batch.num_rows() > 0 {
                self.archive.send_local(batch.clone()).await;
                self.pipeline
                    .send_async(Input::Batch { partition, batch })
                    .await?;
            }
            self.dead_letters.record(dead_letters).await;
            return Ok(());
        }
        // Durable: queued for the archive before the engine sees it (the
        // same order), then answered once written. A batch the archive does
        // not confirm is reported as not taken, never as accepted.
        let written = self
            .archive
            .send_local_durable(batch.clone())
            .await
            .map_err(|_| PipelineClosed)?;
        if batch.num_rows() > 0 {
            self.pipeline
                .send_async(Input::Batch { partition, batch })
                .await?;
        }
        let embedded_letters = !dead_letters.is_empty() && self.dead_letters.kafka.is_none();
        self.dead_letters.record(dead_letters).await;
        if embedded_letters {
            if let Err(e) = self.dead_letters.table.flush().await {
                tracing::error!(error = %e, "writing dead letters of a durable ingest");
                return Err(PipelineClosed);
            }
        }
        written.await.map_err(|_| PipelineClosed)
    }
}

/// What the Kafka consumer may commit, per partition.
pub struct CommitGate {
    archive: ArchiveHandle,
    dead_letters: Arc<DeadLetters>,
}

impl CommitGate {
    /// The last offset of `partition` that may be committed: everything up
    /// to it is in written archive files and has no dead letter in flight.
    /// `None` while nothing of the partition is durable yet.
    pub fn committable(&self, partition: i32) -> Option<i64> {
        let durable = self.archive.durable_offset(partition)?;
        Some(self.dead_letters.in_flight.commit_cap(partition, durable))
    }

    /// Writes what the archive buffers for `partition` and waits (at most
    /// `limit`) for its dead letters, so [`Self::committable`] reaches as
    /// far as what was read. For revocation and shutdown; blocking.
    pub fn settle_blocking(&self, partition: i32, limit: Duration) {
        self.archive.flush_blocking(partition);
        let started = std::time::Instant::now();
        while self.dead_letters.in_flight.pending(partition) && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

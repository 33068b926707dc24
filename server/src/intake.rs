//! The one way events enter: Kafka, `POST /api/ingest` and the demo ward
//! all hand a decoded batch, with its origin, offsets and refused events,
//! to [`Intake`], which fans it out in one fixed order — dead letters held,
//! archive, engine, dead letters delivered — and to nothing else.
//!
//! [`CommitGate`] owns the answer to "how far may the Kafka consumer
//! commit": no further than the archive has made durable, never past an
//! event whose dead letter is not yet delivered, and (with checkpoints) no
//! further than the latest checkpoint of engine state covers.
//!
//! After a checkpoint is restored, Kafka batches below the offsets it
//! covers are archived (again) but not given to the engine, whose state
//! already holds them ([`Intake::skip_engine_below`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Per Kafka partition, the offset from which the engine takes events
    /// again: below it, a restored checkpoint's state already holds them.
    engine_from: Arc<Mutex<HashMap<i32, i64>>>,
    /// Takes checkpoints (with Kafka and checkpoints on).
    checkpointer: Arc<OnceLock<Arc<crate::checkpoint::Checkpointer>>>,
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
            checkpointed: Mutex::new(None),
            observing: false,
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
            engine_from: Arc::default(),
            checkpointer: Arc::default(),
        }
    }

    /// Kafka batches go to the engine only: not to the archive or the
    /// dead letters, and commits follow checkpoints alone. Call before
    /// anything uses the commit gate.
    pub fn observing(mut self, observing: bool) -> Self {
        self.gate = Arc::new(CommitGate {
            archive: self.archive.clone(),
            dead_letters: Arc::clone(&self.dead_letters),
            checkpointed: Mutex::new(None),
            observing,
        });
        self
    }

    /// Whether Kafka batches skip the archive and the dead letters.
    pub fn is_observing(&self) -> bool {
        self.gate.observing
    }

    /// After a restore: per partition, events below these offsets are in
    /// the restored state, so they go to the archive only.
    pub fn skip_engine_below(&self, offsets: &BTreeMap<i32, i64>) {
        let mut from = self.engine_from.lock().expect("engine_from lock");
        from.clear();
        from.extend(offsets.iter().map(|(&p, &o)| (p, o)));
    }

    /// The offset of `partition` below which events skip the engine.
    pub fn engine_from(&self, partition: i32) -> Option<i64> {
        self.engine_from
            .lock()
            .expect("engine_from lock")
            .get(&partition)
            .copied()
    }

    /// Hands the checkpointer to every clone of this intake.
    pub fn set_checkpointer(&self, checkpointer: Arc<crate::checkpoint::Checkpointer>) {
        let _ = self.checkpointer.set(checkpointer);
    }

    /// For the Kafka source before it commits on shutdown or revocation:
    /// checkpoints what the engine holds now (at most `limit`), so the
    /// commit can reach as far as what was read. Blocking.
    pub fn checkpoint_blocking(&self, limit: Duration) {
        let Some(checkpointer) = self.checkpointer.get() else {
            return;
        };
        let checkpointer = Arc::clone(checkpointer);
        let done = self
            .rt
            .block_on(async move { tokio::time::timeout(limit, checkpointer.checkpoint()).await });
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "final checkpoint failed"),
            Err(_) => tracing::warn!("final checkpoint did not finish in {limit:?}"),
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
        // An observing instance hands the engine only: the partitions'
        // owners archive the batch and deliver its dead letters.
        let observing = self.is_observing();
        let dead_letters = if observing { Vec::new() } else { dead_letters };
        // Held before the archive (whose progress drives commits) sees the
        // batch, so no commit can pass a letter before it is delivered.
        let sources: Vec<(i32, i64)> = dead_letters.iter().filter_map(|l| l.source).collect();
        if !dead_letters.is_empty() {
            self.dead_letters
                .in_flight
                .hold(&sources, dead_letters.len());
        }
        // The copy for the archive shares the columns (Arc); no data is copied.
        let last_offset = *offsets.end();
        if !observing {
            self.archive.send_blocking(ArchiveInput {
                partition,
                offsets,
                batch: batch.clone(),
                accepted: None,
                durable: None,
            });
        }
        // Below a restored checkpoint's offsets the engine has these events
        // already (the source never cuts a batch across that offset).
        let engine = self
            .engine_from(partition)
            .is_none_or(|from| last_offset >= from);
        if engine {
            // Sent even when empty: the offsets of refused events count.
            let _ = self.pipeline.send(Input::Batch {
                partition,
                batch,
                last_offset: Some(last_offset),
            });
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
                    .send_async(Input::Batch {
                        partition,
                        batch,
                        last_offset: None,
                    })
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
                .send_async(Input::Batch {
                    partition,
                    batch,
                    last_offset: None,
                })
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
    /// With checkpoints: per partition, the next offset the latest durable
    /// checkpoint does not cover. `None`: checkpoints are off.
    checkpointed: Mutex<Option<BTreeMap<i32, i64>>>,
    /// Nothing is archived here (see [`Intake::observing`]): only
    /// checkpoints bound commits.
    observing: bool,
}

impl CommitGate {
    /// The last offset of `partition` that may be committed: everything up
    /// to it is in written archive files and has no dead letter in flight.
    /// `None` while nothing of the partition is durable yet.
    pub fn committable(&self, partition: i32) -> Option<i64> {
        if self.observing {
            let covered = self.checkpointed.lock().expect("checkpointed lock");
            return covered.as_ref()?.get(&partition).map(|next| next - 1);
        }
        let durable = self.archive.durable_offset(partition)?;
        let cap = self.dead_letters.in_flight.commit_cap(partition, durable);
        match &*self.checkpointed.lock().expect("checkpointed lock") {
            None => Some(cap),
            Some(covered) => covered.get(&partition).map(|next| cap.min(next - 1)),
        }
    }

    /// Checkpoints are on: commits wait for the first one.
    pub fn require_checkpoints(&self) {
        self.checkpointed
            .lock()
            .expect("checkpointed lock")
            .get_or_insert_with(BTreeMap::new);
    }

    /// A checkpoint covering `offsets` is durable: commits may reach them.
    pub fn checkpointed(&self, offsets: &BTreeMap<i32, i64>) {
        let mut covered = self.checkpointed.lock().expect("checkpointed lock");
        let covered = covered.get_or_insert_with(BTreeMap::new);
        for (&partition, &next) in offsets {
            let at = covered.entry(partition).or_insert(next);
            *at = (*at).max(next);
        }
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

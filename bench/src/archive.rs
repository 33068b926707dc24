//! The Parquet archive the `replay` and `query` scenarios read, generated
//! once per run (not timed) into a temporary data directory.
//!
//! The simulated ward is decoded per partition as the Kafka source would
//! (batches of up to 8 192 rows; malformed events refused and never
//! archived) and appended to the server's own [`ArchiveWriter`] with each
//! partition's message offsets, so the layout is exactly the server's:
//! `vitals/date=YYYY-MM-DD/hour=HH/part-<partition>-<offset>.parquet`, zstd,
//! with statistics. Only the file cuts differ from a live server: the
//! writer's age-based roll (every 10 s of wall-clock time by default) would
//! leave tens of thousands of tiny files a day, so here the writer flushes
//! every [`FLUSH_HOURS`] simulated hours instead, which gives one file per
//! partition and hour plus a small one for the late events of the hour
//! before each flush — roughly what a compacted archive looks like.
//!
//! With `with_alerts`, the 20 bench rules also run over the batches as they
//! are cut (as the live engine would, with the simulated clock as processing
//! time), and every alert, fired or suppressed, is archived in `alerts`
//! through [`catalog::alerts_to_batch`], as the server's alert sink does.
//!
//! To inspect an archive afterwards (with DuckDB, say), set
//! [`KEEP_ARCHIVE_ENV`] to an existing directory: the archive is then made
//! in a fresh `wardwatch-bench-*` directory inside it and left there.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use catalog::archive::{ArchiveConfig, ArchiveWriter, ArchivedFile, NO_PARTITION};
use object_store::path::Path;
use object_store::ObjectStore;
use sql_rules::{Alert, AlertStatus, Engine, RuleSpec};
use tokio::runtime::Runtime;

use crate::{partition_of, progress, Ward, BATCH_ROWS, PARTITIONS};
use wardwatch::demo::simulator::SimEvent;
use wardwatch::source::decode::VitalsDecoder;

/// Simulated hours between two flushes of every partition's buffers.
pub const FLUSH_HOURS: i64 = 6;
const HOUR_MS: i64 = 3_600_000;
/// Alerts per appended batch of the `alerts` table.
const ALERT_BATCH: usize = 4_096;
/// Names a directory to generate archives in and keep them (not removed on
/// drop); unset, they go to the system's temporary directory and are removed.
pub const KEEP_ARCHIVE_ENV: &str = "WARDWATCH_BENCH_KEEP_ARCHIVE";

/// Files written for one archive table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableFiles {
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
}

impl TableFiles {
    fn add(&mut self, written: &[ArchivedFile]) {
        for f in written {
            self.files += 1;
            self.bytes += f.bytes as u64;
            self.rows += f.rows as u64;
        }
    }
}

/// A generated archive; the directory is removed when this is dropped
/// (unless [`KEEP_ARCHIVE_ENV`] is set).
pub struct BenchArchive {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The first simulated millisecond, and the one just past the last
    /// simulated second: every on-time event is in `[start_ms, end_ms)`.
    pub start_ms: i64,
    pub end_ms: i64,
    /// Simulator events, including malformed ones.
    pub produced: u64,
    /// Events the decoder refused (not archived).
    pub rejected: u64,
    pub vitals: TableFiles,
    pub alerts: TableFiles,
    pub alerts_fired: u64,
    pub alerts_suppressed: u64,
}

impl BenchArchive {
    /// The directory of a table's files on the local disk.
    pub fn table_dir(&self, table: &str) -> std::path::PathBuf {
        let mut dir = self.dir.path().to_path_buf();
        for part in self.prefix.parts() {
            dir.push(part.as_ref());
        }
        dir.join(table)
    }
}

/// Writes the archive of `ward` (and, with `rules`, the alerts they fire)
/// into a fresh temporary directory (kept, inside the directory
/// [`KEEP_ARCHIVE_ENV`] names, if set). Blocks on `runtime`: call it from a
/// plain thread.
pub fn generate(ward: Ward, rules: Option<&[RuleSpec]>, runtime: &Runtime) -> Result<BenchArchive> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("wardwatch-bench-");
    let dir = match std::env::var_os(KEEP_ARCHIVE_ENV) {
        Some(parent) => {
            let dir = builder
                .disable_cleanup(true)
                .tempdir_in(&parent)
                .with_context(|| format!("creating a data directory in {parent:?}"))?;
            progress("archive", format!("keeping it in {}", dir.path().display()));
            dir
        }
        None => builder
            .tempdir()
            .context("creating a temporary data directory")?,
    };
    let location = dir
        .path()
        .to_str()
        .context("the temporary directory's path is not UTF-8")?;
    let (store, prefix) = catalog::storage::open_store(location)?;
    let config = ArchiveConfig {
        // Never by age: see the module docs.
        flush_interval: Duration::from_secs(365 * 86_400),
        ..ArchiveConfig::default()
    };
    let engine = match rules {
        Some(specs) => Some(crate::engine::engine_with(specs)?),
        None => None,
    };
    let start_ms = ward.config().start_ms;
    let mut gen = Generator {
        runtime,
        writer: ArchiveWriter::new(Arc::clone(&store), prefix.clone(), config.clone()),
        decoders: (0..PARTITIONS)
            .map(|_| VitalsDecoder::new(BATCH_ROWS))
            .collect(),
        next_offset: vec![0; PARTITIONS as usize],
        appended: vec![0; PARTITIONS as usize],
        engine,
        alerts: Vec::new(),
        produced: 0,
        rejected: 0,
        vitals: TableFiles::default(),
        failure: None,
    };
    let mut end_ms = start_ms;
    ward.simulate(|events, now_ms| {
        end_ms = now_ms;
        gen.tick(
            events,
            now_ms,
            (now_ms - start_ms) % (FLUSH_HOURS * HOUR_MS) == 0,
        );
    });
    gen.finish(end_ms);
    if let Some(e) = gen.failure.take() {
        return Err(e);
    }

    let mut alerts = TableFiles::default();
    let (mut fired, mut suppressed) = (0, 0);
    if !gen.alerts.is_empty() {
        let mut writer = ArchiveWriter::alerts(Arc::clone(&store), prefix.clone(), config);
        let mut offset = 0i64;
        for chunk in gen.alerts.chunks(ALERT_BATCH) {
            for a in chunk {
                match a.status {
                    AlertStatus::Fired => fired += 1,
                    AlertStatus::Suppressed => suppressed += 1,
                }
            }
            let batch = catalog::alerts_to_batch(chunk)?;
            let written = runtime.block_on(writer.append(NO_PARTITION, offset, &batch, end_ms))?;
            alerts.add(&written);
            offset += chunk.len() as i64;
        }
        alerts.add(&runtime.block_on(writer.flush_all())?);
    }

    Ok(BenchArchive {
        dir,
        store,
        prefix,
        start_ms,
        end_ms,
        produced: gen.produced,
        rejected: gen.rejected,
        vitals: gen.vitals,
        alerts,
        alerts_fired: fired,
        alerts_suppressed: suppressed,
    })
}

struct Generator<'a> {
    runtime: &'a Runtime,
    writer: ArchiveWriter,
    decoders: Vec<VitalsDecoder>,
    /// Per partition: the offset the next message gets, and the first one
    /// not yet handed to the writer.
    next_offset: Vec<i64>,
    appended: Vec<i64>,
    engine: Option<Engine>,
    alerts: Vec<Alert>,
    produced: u64,
    rejected: u64,
    vitals: TableFiles,
    failure: Option<anyhow::Error>,
}

impl Generator<'_> {
    fn tick(&mut self, events: &[SimEvent], now_ms: i64, flush: bool) {
        if self.failure.is_some() {
            return;
        }
        if let Err(e) = self.try_tick(events, now_ms, flush) {
            self.failure = Some(e);
        }
    }

    fn try_tick(&mut self, events: &[SimEvent], now_ms: i64, flush: bool) -> Result<()> {
        for e in events {
            self.produced += 1;
            let p = partition_of(&e.key) as usize;
            self.next_offset[p] += 1;
            if self.decoders[p].push_json(&e.payload).is_err() {
                self.rejected += 1;
            }
            if self.decoders[p].len() >= BATCH_ROWS {
                self.cut(p, now_ms)?;
            }
        }
        if flush {
            for p in 0..PARTITIONS as usize {
                self.cut(p, now_ms)?;
            }
            let written = self.runtime.block_on(self.writer.flush_all())?;
            self.vitals.add(&written);
        }
        Ok(())
    }

    /// Hands partition `p`'s decoded rows (and the offsets they cover) to
    /// the engine and the writer.
    fn cut(&mut self, p: usize, now_ms: i64) -> Result<()> {
        let (first, next) = (self.appended[p], self.next_offset[p]);
        if next == first {
            return Ok(());
        }
        let batch = self.decoders[p].finish();
        if let Some(engine) = self.engine.as_mut() {
            if batch.num_rows() > 0 {
                let out = engine.process(p as i32, &batch, now_ms)?;
                if let Some(e) = out.errors.first() {
                    anyhow::bail!("a rule failed while generating the archive: {e}");
                }
                self.alerts.extend(out.alerts);
            }
        }
        let written = self.runtime.block_on(self.writer.append_range(
            p as i32,
            first..=next - 1,
            &batch,
            now_ms,
        ))?;
        self.vitals.add(&written);
        self.appended[p] = next;
        Ok(())
    }

    /// Cuts and writes everything left, and closes every window.
    fn finish(&mut self, end_ms: i64) {
        if self.failure.is_some() {
            return;
        }
        let result = (|| -> Result<()> {
            for p in 0..PARTITIONS as usize {
                self.cut(p, end_ms)?;
            }
            let written = self.runtime.block_on(self.writer.flush_all())?;
            self.vitals.add(&written);
            if let Some(engine) = self.engine.as_mut() {
                // Past the longest window, so everything still open closes.
                let end = end_ms + HOUR_MS;
                let out = engine.advance_watermark(end, end)?;
                if let Some(e) = out.errors.first() {
                    anyhow::bail!("a rule failed while generating the archive: {e}");
                }
                self.alerts.extend(out.alerts);
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.failure = Some(e);
        }
    }
}

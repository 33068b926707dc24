//! Buffers incoming batches per (source partition, event hour) and rolls each
//! buffer into one Parquet file.
//!
//! The writer is owned by one task (`&mut self` for everything that writes);
//! history queries see the rows it still holds through a [`BufferedView`],
//! which shares the buffers behind a lock taken once per batch, never per
//! row. Why flushing works per partition and what the caller must do on a
//! restart is the exactly-once argument in the [module docs](super).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::layout::{self, hour_index, partition_values};
use super::{ArchiveConfig, ArchiveTable};
use crate::storage::{list_all, put_overwrite};
use crate::CatalogError;

/// A file the writer has written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    /// Where it is, relative to the store root.
    pub path: Path,
    /// Source partition (`-1` for input not from Kafka).
    pub partition: i32,
    /// The `date=` partition value, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// The `hour=` partition value, `00` to `23` (UTC).
    pub hour: String,
    /// First source offset of the batches in the file (also in its name).
    pub first_offset: i64,
    /// Last source offset of the batches in the file.
    pub last_offset: i64,
    /// Rows in the file.
    pub rows: usize,
    /// Size of the Parquet file.
    pub bytes: usize,
    /// Earliest and latest event time in the file, ms since the epoch.
    pub min_time_ms: i64,
    /// See `min_time_ms`.
    pub max_time_ms: i64,
}

/// Rows buffered for one future file, as [`BufferedView::snapshot`] returns
/// them.
#[derive(Debug, Clone)]
pub struct PendingFile {
    /// The path the buffer will be written to.
    pub path: Path,
    /// Source partition.
    pub partition: i32,
    /// Hours since the epoch of every row's event time.
    pub hour_index: i64,
    /// The `date=` partition value.
    pub date: String,
    /// The `hour=` partition value.
    pub hour: String,
    /// The buffered rows, in the table's schema.
    pub batches: Vec<RecordBatch>,
}

/// A read-only handle on a writer's buffered rows, for history queries.
///
/// Cheap to clone; it stays valid (and current) while the writer runs.
#[derive(Clone)]
pub struct BufferedView {
    table: ArchiveTable,
    buffers: Arc<Mutex<Buffers>>,
}

impl fmt::Debug for BufferedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedView")
            .field("table", &self.table.name())
            .finish_non_exhaustive()
    }
}

impl BufferedView {
    /// The table whose buffers this is.
    pub fn table(&self) -> &ArchiveTable {
        &self.table
    }

    /// Everything buffered right now, one entry per future file.
    ///
    /// A buffer stays here until its file has been written, so for a moment
    /// a row can be both here and in a listed file; history tables drop the
    /// entries whose `path` they also found in the listing.
    pub fn snapshot(&self) -> Vec<PendingFile> {
        lock(&self.buffers)
            .iter()
            .map(|(key, buffer)| PendingFile {
                path: buffer.path.clone(),
                partition: key.partition,
                hour_index: key.hour,
                date: buffer.date.clone(),
                hour: buffer.hour.clone(),
                // Batches are reference-counted; this copies pointers only.
                batches: buffer.batches.clone(),
            })
            .collect()
    }
}

type Buffers = BTreeMap<BufferKey, Buffer>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BufferKey {
    partition: i32,
    hour: i64,
}

impl BufferKey {
    fn partition_range(partition: i32) -> RangeInclusive<BufferKey> {
        BufferKey {
            partition,
            hour: i64::MIN,
        }..=BufferKey {
            partition,
            hour: i64::MAX,
        }
    }
}

struct Buffer {
    path: Path,
    date: String,
    hour: String,
    first_offset: i64,
    last_offset: i64,
    batches: Vec<RecordBatch>,
    rows: usize,
    /// Arrow memory of `batches`, the size that rolls the file.
    bytes: usize,
    /// `now_ms` of the append that opened the buffer: the age that rolls it.
    opened_at_ms: i64,
    min_time_ms: i64,
    max_time_ms: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct PartitionState {
    /// Last offset handed to [`ArchiveWriter::append_range`] (or before the
    /// resume point).
    last_offset: Option<i64>,
    /// The durable offset when the partition last had no open buffer; stays
    /// put while any buffer of the partition is open.
    durable: Option<i64>,
}

/// One slice of an incoming batch whose rows share an event hour.
struct HourSlice {
    hour: i64,
    batch: RecordBatch,
    min_time_ms: i64,
    max_time_ms: i64,
}

/// What a flush writes for one buffer; owned, so encoding can run on a
/// blocking thread.
struct FileJob {
    key: BufferKey,
    file: ArchivedFile,
    batches: Vec<RecordBatch>,
}

/// Writes one archive table, see the [module docs](self).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use catalog::archive::{ArchiveConfig, ArchiveWriter};
/// use object_store::{memory::InMemory, path::Path};
///
/// let store = Arc::new(InMemory::new());
/// let mut writer = ArchiveWriter::new(store, Path::from("archive"), ArchiveConfig::default());
/// # let batch = arrow::record_batch::RecordBatch::new_empty(sql_rules::stream::vitals_schema());
/// // For each decoded batch of Kafka partition 3 starting at offset 1200:
/// writer.append(3, 1200, &batch, 1_767_261_600_000).await?;
/// // Periodically, and before committing offsets:
/// writer.flush_due(1_767_261_610_000).await?;
/// let commit_up_to = writer.durable_offset(3);
/// # let _ = commit_up_to;
/// # Ok::<(), catalog::CatalogError>(())
/// # }).unwrap();
/// ```
pub struct ArchiveWriter {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    table: ArchiveTable,
    config: ArchiveConfig,
    /// Shared with [`BufferedView`]s; locked once per batch, never across an
    /// await.
    buffers: Arc<Mutex<Buffers>>,
    partitions: HashMap<i32, PartitionState>,
}

impl fmt::Debug for ArchiveWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("table", &self.table.name())
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .field("buffered_rows", &self.buffered_rows())
            .finish_non_exhaustive()
    }
}

impl ArchiveWriter {
    /// A writer for the `vitals` table under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, config: ArchiveConfig) -> Self {
        Self::for_table(store, prefix, ArchiveTable::vitals(), config)
    }

    /// A writer for the `alerts` table under `prefix`; feed it
    /// [`alerts_to_batch`](super::alerts_to_batch) output with partition `-1`.
    pub fn alerts(store: Arc<dyn ObjectStore>, prefix: Path, config: ArchiveConfig) -> Self {
        Self::for_table(store, prefix, ArchiveTable::alerts(), config)
    }

    /// A writer for any [`ArchiveTable`].
    pub fn for_table(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        table: ArchiveTable,
        config: ArchiveConfig,
    ) -> Self {
        Self {
            store,
            prefix,
            table,
            config,
            buffers: Arc::new(Mutex::new(BTreeMap::new())),
            partitions: HashMap::new(),
        }
    }

    /// The table this writer writes.
    pub fn table(&self) -> &ArchiveTable {
        &self.table
    }

    /// Appends a batch whose rows are consecutive source offsets starting at
    /// `first_offset` (row `i` is offset `first_offset + i`), and writes the
    /// partition's files if that makes any of them due.
    ///
    /// Returns the files written. Input without Kafka offsets uses partition
    /// `-1` and a sequence number advanced by the row count of each batch.
    /// When rows are not consecutive offsets (invalid messages went to the
    /// dead-letter topic in between), use [`append_range`](Self::append_range)
    /// so the durable offset can move past them.
    ///
    /// If writing fails, the batch is still buffered and the write is retried
    /// by the next flush; do not append it again.
    pub async fn append(
        &mut self,
        partition: i32,
        first_offset: i64,
        batch: &RecordBatch,
        now_ms: i64,
    ) -> Result<Vec<ArchivedFile>, CatalogError> {
        if batch.num_rows() == 0 {
            self.conform(batch)?;
            return self.flush_partition_if_due(partition, now_ms).await;
        }
        let last_offset = i64::try_from(batch.num_rows() - 1)
            .ok()
            .and_then(|rows| first_offset.checked_add(rows))
            .ok_or_else(|| self.offset_error(partition, first_offset, "offsets overflow"))?;
        self.append_range(partition, first_offset..=last_offset, batch, now_ms)
            .await
    }

    /// Appends a batch that covers source offsets `offsets` (inclusive); it
    /// may hold fewer rows than offsets, or none: an empty batch records that
    /// those offsets were consumed without anything to archive.
    ///
    /// Offsets of a partition must increase from one call to the next.
    /// Returns the files written because the partition became due.
    pub async fn append_range(
        &mut self,
        partition: i32,
        offsets: RangeInclusive<i64>,
        batch: &RecordBatch,
        now_ms: i64,
    ) -> Result<Vec<ArchivedFile>, CatalogError> {
        let (first, last) = (*offsets.start(), *offsets.end());
        self.check_offsets(partition, first, last, batch.num_rows())?;
        let batch = self.conform(batch)?;
        let slices = self.split_by_hour(&batch)?;
        // Resolve every directory before touching the buffers, so a bad event
        // time leaves the writer unchanged.
        let mut placed = Vec::with_capacity(slices.len());
        for slice in slices {
            let (date, hour) = partition_values(slice.hour).ok_or_else(|| {
                self.schema_error(format!(
                    "event time {} ms is outside the representable calendar range",
                    slice.min_time_ms
                ))
            })?;
            placed.push((slice, date, hour));
        }

        {
            let mut buffers = lock(&self.buffers);
            let state = self.partitions.entry(partition).or_default();
            if buffers
                .range(BufferKey::partition_range(partition))
                .next()
                .is_none()
            {
                state.durable = state.last_offset;
            }
            state.last_offset = Some(last);
            for (slice, date, hour) in placed {
                let key = BufferKey {
                    partition,
                    hour: slice.hour,
                };
                let buffer = buffers.entry(key).or_insert_with(|| Buffer {
                    path: layout::file_path(
                        &self.prefix,
                        self.table.name(),
                        &date,
                        &hour,
                        partition,
                        first,
                    ),
                    date,
                    hour,
                    first_offset: first,
                    last_offset: last,
                    batches: Vec::new(),
                    rows: 0,
                    bytes: 0,
                    opened_at_ms: now_ms,
                    min_time_ms: slice.min_time_ms,
                    max_time_ms: slice.max_time_ms,
                });
                buffer.last_offset = last;
                buffer.rows += slice.batch.num_rows();
                buffer.bytes += slice.batch.get_array_memory_size();
                buffer.min_time_ms = buffer.min_time_ms.min(slice.min_time_ms);
                buffer.max_time_ms = buffer.max_time_ms.max(slice.max_time_ms);
                buffer.batches.push(slice.batch);
            }
        }
        self.flush_partition_if_due(partition, now_ms).await
    }

    /// Writes the buffers of every partition that has one due by size or by
    /// age at `now_ms`. Call it every second or so, and before committing
    /// offsets.
    ///
    /// Partitions are written one after another; if one fails the others are
    /// still tried, and the first error is returned.
    pub async fn flush_due(&mut self, now_ms: i64) -> Result<Vec<ArchivedFile>, CatalogError> {
        let due: Vec<i32> = {
            let buffers = lock(&self.buffers);
            let mut due: Vec<i32> = buffers
                .iter()
                .filter(|(_, buffer)| self.is_due(buffer, now_ms))
                .map(|(key, _)| key.partition)
                .collect();
            due.dedup();
            due
        };
        self.flush_partitions(due).await
    }

    /// Writes every buffer now (for shutdown).
    pub async fn flush_all(&mut self) -> Result<Vec<ArchivedFile>, CatalogError> {
        let all: Vec<i32> = {
            let buffers = lock(&self.buffers);
            let mut all: Vec<i32> = buffers.keys().map(|key| key.partition).collect();
            all.dedup();
            all
        };
        self.flush_partitions(all).await
    }

    /// Writes every buffer of `partition` now (before giving the partition
    /// up in a rebalance).
    pub async fn flush_partition(
        &mut self,
        partition: i32,
    ) -> Result<Vec<ArchivedFile>, CatalogError> {
        let jobs = self.jobs_for(partition);
        self.write_jobs(jobs).await
    }

    /// Every buffered batch, in (partition, hour) order, for queries that
    /// must see events not yet written.
    pub fn buffered(&self) -> Vec<RecordBatch> {
        lock(&self.buffers)
            .values()
            .flat_map(|buffer| buffer.batches.iter().cloned())
            .collect()
    }

    /// Rows buffered and not yet written.
    pub fn buffered_rows(&self) -> usize {
        lock(&self.buffers).values().map(|buffer| buffer.rows).sum()
    }

    /// A shareable handle on the buffered rows, for
    /// [`HistoryCatalog::with_unflushed`](crate::history::HistoryCatalog::with_unflushed).
    pub fn buffered_view(&self) -> BufferedView {
        BufferedView {
            table: self.table.clone(),
            buffers: Arc::clone(&self.buffers),
        }
    }

    /// The highest offset of `partition` such that every event up to it that
    /// this writer was given is in a written file: commit `durable + 1` to
    /// Kafka, never more.
    ///
    /// `None` until something of the partition is durable (or
    /// [`resume`](Self::resume) said where it starts).
    pub fn durable_offset(&self, partition: i32) -> Option<i64> {
        let state = self.partitions.get(&partition)?;
        let open = lock(&self.buffers)
            .range(BufferKey::partition_range(partition))
            .next()
            .is_some();
        if open {
            state.durable
        } else {
            state.last_offset
        }
    }

    /// Declares that `partition` continues at `next_offset` (the committed
    /// Kafka offset) and removes what a previous owner wrote from there on.
    ///
    /// Call it when the partition is assigned, before its first batch. It
    /// drops anything this writer still buffers for the partition, deletes
    /// every `part-{partition}-{first}` file with `first >= next_offset` (all
    /// of their rows will be read again, see the [module docs](super)), and
    /// returns the deleted paths. It lists the whole table once.
    pub async fn resume(
        &mut self,
        partition: i32,
        next_offset: i64,
    ) -> Result<Vec<Path>, CatalogError> {
        if next_offset < 0 {
            return Err(self.offset_error(partition, next_offset, "offsets start at 0"));
        }
        self.release(partition);
        let dir = layout::table_dir(&self.prefix, self.table.name());
        let mut stale: Vec<Path> = list_all(self.store.as_ref(), &dir)
            .await?
            .into_iter()
            .filter(|object| {
                object
                    .location
                    .filename()
                    .and_then(layout::parse_file_name)
                    .is_some_and(|(p, first)| p == partition && first >= next_offset)
            })
            .map(|object| object.location)
            .collect();
        stale.sort();
        for path in &stale {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CatalogError::store(path, e)),
            }
        }
        if !stale.is_empty() {
            tracing::info!(
                table = self.table.name(),
                partition,
                next_offset,
                files = stale.len(),
                "removed archive files written after the committed offset; they will be rewritten"
            );
        }
        let before = (next_offset > 0).then(|| next_offset - 1);
        self.partitions.insert(
            partition,
            PartitionState {
                last_offset: before,
                durable: before,
            },
        );
        Ok(stale)
    }

    /// Forgets `partition`: drops its buffers unwritten and its offsets.
    /// Returns how many rows were dropped.
    ///
    /// For a partition revoked in a rebalance whose buffers could not be
    /// flushed: its next owner re-reads them from the committed offset.
    pub fn release(&mut self, partition: i32) -> usize {
        self.partitions.remove(&partition);
        let mut buffers = lock(&self.buffers);
        let keys: Vec<BufferKey> = buffers
            .range(BufferKey::partition_range(partition))
            .map(|(key, _)| *key)
            .collect();
        keys.iter()
            .filter_map(|key| buffers.remove(key))
            .map(|buffer| buffer.rows)
            .sum()
    }

    fn is_due(&self, buffer: &Buffer, now_ms: i64) -> bool {
        let interval_ms = i64::try_from(self.config.flush_interval.as_millis()).unwrap_or(i64::MAX);
        buffer.bytes >= self.config.max_file_bytes
            || now_ms.saturating_sub(buffer.opened_at_ms) >= interval_ms
    }

    async fn flush_partition_if_due(
        &mut self,
        partition: i32,
        now_ms: i64,
    ) -> Result<Vec<ArchivedFile>, CatalogError> {
        let due = lock(&self.buffers)
            .range(BufferKey::partition_range(partition))
            .any(|(_, buffer)| self.is_due(buffer, now_ms));
        if due {
            self.flush_partition(partition).await
        } else {
            Ok(Vec::new())
        }
    }

    async fn flush_partitions(
        &mut self,
        partitions: Vec<i32>,
    ) -> Result<Vec<ArchivedFile>, CatalogError> {
        let mut written = Vec::new();
        let mut first_error = None;
        for partition in partitions {
            match self.flush_partition(partition).await {
                Ok(files) => written.extend(files),
                Err(e) => {
                    tracing::warn!(table = self.table.name(), partition, error = %e, "archive flush failed; will retry");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(written),
            Some(e) => Err(e),
        }
    }

    /// Every buffer of the partition, as owned write jobs.
    fn jobs_for(&self, partition: i32) -> Vec<FileJob> {
        lock(&self.buffers)
            .range(BufferKey::partition_range(partition))
            .map(|(key, buffer)| FileJob {
                key: *key,
                file: ArchivedFile {
                    path: buffer.path.clone(),
                    partition,
                    date: buffer.date.clone(),
                    hour: buffer.hour.clone(),
                    first_offset: buffer.first_offset,
                    last_offset: buffer.last_offset,
                    rows: buffer.rows,
                    bytes: 0,
                    min_time_ms: buffer.min_time_ms,
                    max_time_ms: buffer.max_time_ms,
                },
                // Pointer copies: the buffer keeps its batches (history
                // queries still see them) until the file is written.
                batches: buffer.batches.clone(),
            })
            .collect()
    }

    /// Encodes and writes the jobs concurrently, then drops the buffers that
    /// made it. A buffer whose write failed stays, so the partition's durable
    /// offset does not move and the next flush retries it.
    async fn write_jobs(&mut self, jobs: Vec<FileJob>) -> Result<Vec<ArchivedFile>, CatalogError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let writes = jobs.into_iter().map(|job| {
            let store = Arc::clone(&self.store);
            let schema = Arc::clone(self.table.schema());
            let props = self.writer_properties(&job.file);
            async move {
                let FileJob {
                    key,
                    mut file,
                    batches,
                } = job;
                let path = file.path.clone();
                let bytes = tokio::task::spawn_blocking(move || encode(schema, &batches, props))
                    .await
                    .map_err(|e| CatalogError::Task {
                        what: format!("encode {path}"),
                        reason: e.to_string(),
                    })?
                    .map_err(|source| CatalogError::Parquet {
                        path: file.path.to_string(),
                        source,
                    })?;
                file.bytes = bytes.len();
                put_overwrite(store.as_ref(), &file.path, bytes).await?;
                Ok::<_, CatalogError>((key, file))
            }
        });
        let results = futures::future::join_all(writes).await;

        let mut written = Vec::with_capacity(results.len());
        let mut first_error = None;
        {
            let mut buffers = lock(&self.buffers);
            for result in results {
                match result {
                    Ok((key, file)) => {
                        buffers.remove(&key);
                        written.push(file);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        for file in &written {
            tracing::debug!(path = %file.path, rows = file.rows, bytes = file.bytes, "archived");
        }
        match first_error {
            None => Ok(written),
            Some(e) => Err(e),
        }
    }

    fn writer_properties(&self, file: &ArchivedFile) -> WriterProperties {
        let level = ZstdLevel::try_new(self.config.zstd_level).unwrap_or_default();
        let metadata = vec![
            KeyValue::new("wardwatch.table".to_string(), self.table.name().to_string()),
            KeyValue::new(
                "wardwatch.partition".to_string(),
                file.partition.to_string(),
            ),
            KeyValue::new(
                "wardwatch.first_offset".to_string(),
                file.first_offset.to_string(),
            ),
            KeyValue::new(
                "wardwatch.last_offset".to_string(),
                file.last_offset.to_string(),
            ),
        ];
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            // Row-group and page statistics are what lets readers skip data.
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.config.max_row_group_rows.max(1)))
            .set_key_value_metadata(Some(metadata))
            .build()
    }

    fn check_offsets(
        &self,
        partition: i32,
        first: i64,
        last: i64,
        rows: usize,
    ) -> Result<(), CatalogError> {
        if first < 0 {
            return Err(self.offset_error(partition, first, "offsets start at 0"));
        }
        if last < first {
            return Err(self.offset_error(
                partition,
                first,
                &format!("the range ends at {last}, before it starts"),
            ));
        }
        let span = u64::try_from(last - first)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        if rows as u64 > span {
            return Err(self.offset_error(
                partition,
                first,
                &format!("{rows} rows cannot come from the {span} offsets {first}..={last}"),
            ));
        }
        if let Some(previous) = self.partitions.get(&partition).and_then(|s| s.last_offset) {
            if first <= previous {
                return Err(self.offset_error(
                    partition,
                    first,
                    &format!(
                        "offsets up to {previous} were already appended; \
                         after a restart or rebalance call resume() first"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Returns the batch with exactly the table's schema, so files of one
    /// table never differ in field metadata or nullability.
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch, CatalogError> {
        let expected = self.table.schema();
        if batch.schema_ref() == expected {
            return Ok(batch.clone());
        }
        let actual = batch.schema();
        let same_columns = actual.fields().len() == expected.fields().len()
            && actual
                .fields()
                .iter()
                .zip(expected.fields().iter())
                .all(|(a, e)| a.name() == e.name() && a.data_type() == e.data_type());
        if !same_columns {
            return Err(self.schema_error(format!(
                "the batch has columns {}, expected {}",
                describe_columns(&actual),
                describe_columns(expected)
            )));
        }
        RecordBatch::try_new(Arc::clone(expected), batch.columns().to_vec())
            .map_err(|e| self.schema_error(e.to_string()))
    }

    fn split_by_hour(&self, batch: &RecordBatch) -> Result<Vec<HourSlice>, CatalogError> {
        let column = batch.column(self.table.time_column());
        let Some(times) = column.as_primitive_opt::<TimestampMillisecondType>() else {
            return Err(self.schema_error(format!(
                "time column is {}, expected a millisecond timestamp",
                column.data_type()
            )));
        };
        if times.null_count() > 0 {
            return Err(self.schema_error(format!(
                "{} rows have no event time in column '{}'",
                times.null_count(),
                self.table.schema().field(self.table.time_column()).name()
            )));
        }
        let values = times.values();
        let (Some(&min), Some(&max)) = (values.iter().min(), values.iter().max()) else {
            return Ok(Vec::new());
        };
        if hour_index(min) == hour_index(max) {
            return Ok(vec![HourSlice {
                hour: hour_index(min),
                batch: batch.clone(),
                min_time_ms: min,
                max_time_ms: max,
            }]);
        }
        // Rare (an hour boundary, or late events in the batch): each hour's
        // rows are copied into their own batch, since a file holds one hour.
        let hours: BTreeSet<i64> = values.iter().map(|t| hour_index(*t)).collect();
        let mut slices = Vec::with_capacity(hours.len());
        for hour in hours {
            let mask: BooleanArray = values
                .iter()
                .map(|t| Some(hour_index(*t) == hour))
                .collect();
            let part = filter_record_batch(batch, &mask).map_err(|source| CatalogError::Arrow {
                what: format!("split a batch for '{}' by hour", self.table.name()),
                source,
            })?;
            let in_hour = values.iter().copied().filter(|t| hour_index(*t) == hour);
            let (lo, hi) = in_hour.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
            slices.push(HourSlice {
                hour,
                batch: part,
                min_time_ms: lo,
                max_time_ms: hi,
            });
        }
        Ok(slices)
    }

    fn schema_error(&self, reason: String) -> CatalogError {
        CatalogError::ArchiveSchema {
            table: self.table.name().to_string(),
            reason,
        }
    }

    fn offset_error(&self, partition: i32, offset: i64, reason: &str) -> CatalogError {
        CatalogError::ArchiveOffset {
            table: self.table.name().to_string(),
            partition,
            offset,
            reason: reason.to_string(),
        }
    }
}

fn describe_columns(schema: &arrow::datatypes::Schema) -> String {
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    format!("({})", columns.join(", "))
}

/// Encodes batches as one Parquet file in memory.
fn encode(
    schema: arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    props: WriterProperties,
) -> Result<Bytes, parquet::errors::ParquetError> {
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props))?;
    for batch in batches {
        writer.write(batch)?;
    }
    Ok(Bytes::from(writer.into_inner()?))
}

fn lock(buffers: &Mutex<Buffers>) -> MutexGuard<'_, Buffers> {
    // Buffers are only changed in whole steps under the lock, so a panic
    // elsewhere cannot leave them half-updated; keep serving them.
    buffers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::Compression;

    use super::*;
    use crate::archive::sample::{read_parquet_files, sequence_numbers, times, vitals, HOUR, T0};
    use crate::archive::{alerts_to_batch, ArchiveConfig};

    fn memory() -> Arc<dyn ObjectStore> {
        Arc::new(InMemory::new())
    }

    fn names(files: &[ArchivedFile]) -> Vec<String> {
        let mut names: Vec<String> = files.iter().map(|f| f.path.to_string()).collect();
        names.sort();
        names
    }

    async fn archived_sequences(store: &dyn ObjectStore, table: &str) -> Vec<u32> {
        let files = read_parquet_files(store, &Path::from(format!("arch/{table}"))).await;
        let batches: Vec<RecordBatch> = files.into_iter().flat_map(|(_, b)| b).collect();
        sequence_numbers(&batches)
    }

    #[tokio::test]
    async fn every_event_lands_once_in_the_file_of_its_partition_and_event_hour() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
        let mut writer = ArchiveWriter::new(
            Arc::clone(&store),
            Path::from("arch"),
            ArchiveConfig::default(),
        );

        // Partition 0: two batches in hour 10. Partition 1: one batch that
        // crosses from hour 10 into hour 11, plus a late event from hour 9.
        writer
            .append(0, 0, &vitals(&times(T0, 100, 1_000), 0), T0)
            .await
            .unwrap();
        writer
            .append(0, 100, &vitals(&times(T0 + 100_000, 50, 1_000), 100), T0)
            .await
            .unwrap();
        let mut crossing = times(T0 + HOUR - 30_000, 60, 1_000);
        crossing.push(T0 - 1);
        writer
            .append(1, 500, &vitals(&crossing, 150), T0)
            .await
            .unwrap();
        assert_eq!(writer.buffered_rows(), 211);
        assert_eq!(
            sequence_numbers(&writer.buffered()),
            (0..211).collect::<Vec<_>>()
        );

        let files = writer.flush_all().await.unwrap();
        assert_eq!(
            names(&files),
            [
                "arch/vitals/date=2026-01-01/hour=09/part-1-00000000000000000500.parquet",
                "arch/vitals/date=2026-01-01/hour=10/part-0-00000000000000000000.parquet",
                "arch/vitals/date=2026-01-01/hour=10/part-1-00000000000000000500.parquet",
                "arch/vitals/date=2026-01-01/hour=11/part-1-00000000000000000500.parquet",
            ]
        );
        assert_eq!(writer.buffered_rows(), 0);
        let p0 = files.iter().find(|f| f.partition == 0).unwrap();
        assert_eq!((p0.first_offset, p0.last_offset, p0.rows), (0, 149, 150));
        assert_eq!((p0.min_time_ms, p0.max_time_ms), (T0, T0 + 149_000));

        // The files on disk hold every event exactly once, each in its hour.
        assert_eq!(
            archived_sequences(store.as_ref(), "vitals").await,
            (0..211).collect::<Vec<_>>()
        );
        for (path, batches) in read_parquet_files(store.as_ref(), &Path::from("arch")).await {
            let hour = path.as_ref().split("hour=").nth(1).unwrap()[..2].to_string();
            for batch in batches {
                let column = batch.column_by_name("event_time").unwrap();
                let times = column.as_primitive::<TimestampMillisecondType>();
                for t in times.values() {
                    assert_eq!(partition_values(hour_index(*t)).unwrap().1, hour, "{path}");
                }
            }
        }
        assert!(tmp
            .path()
            .join("arch/vitals/date=2026-01-01/hour=09/part-1-00000000000000000500.parquet")
            .is_file());
    }

    #[tokio::test]
    async fn files_are_zstd_with_statistics_and_carry_their_offsets() {
        let store = memory();
        let mut writer = ArchiveWriter::new(
            Arc::clone(&store),
            Path::from("arch"),
            ArchiveConfig::default(),
        );
        writer
            .append(4, 42, &vitals(&times(T0, 10, 1_000), 0), T0)
            .await
            .unwrap();
        let files = writer.flush_all().await.unwrap();
        let bytes = store
            .get(&files[0].path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(files[0].bytes, bytes.len());

        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let metadata = builder.metadata().clone();
        assert_eq!(metadata.file_metadata().num_rows(), 10);
        let time_index = builder.schema().index_of("event_time").unwrap();
        for column in metadata.row_group(0).columns() {
            assert!(
                matches!(column.compression(), Compression::ZSTD(_)),
                "{column:?}"
            );
            assert!(column.statistics().is_some());
        }
        let stats = metadata
            .row_group(0)
            .column(time_index)
            .statistics()
            .unwrap();
        assert_eq!(stats.min_bytes_opt().map(<[u8]>::len), Some(8));
        let kv: HashMap<String, Option<String>> = metadata
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(kv["wardwatch.partition"].as_deref(), Some("4"));
        assert_eq!(kv["wardwatch.first_offset"].as_deref(), Some("42"));
        assert_eq!(kv["wardwatch.last_offset"].as_deref(), Some("51"));
        // The Arrow schema (with the UTC time zone) comes back as written.
        assert_eq!(
            builder.schema().fields(),
            sql_rules::stream::vitals_schema().fields()
        );
    }

    #[tokio::test]
    async fn a_buffer_rolls_when_it_reaches_the_size_limit() {
        let store = memory();
        let one_batch = vitals(&times(T0, 100, 10), 0).get_array_memory_size();
        let config = ArchiveConfig {
            max_file_bytes: one_batch * 3,
            ..ArchiveConfig::default()
        };
        let mut writer = ArchiveWriter::new(Arc::clone(&store), Path::from("arch"), config);
        let mut rolled = Vec::new();
        for i in 0..7u32 {
            let batch = vitals(&times(T0 + i64::from(i) * 1_000, 100, 10), i * 100);
            let files = writer
                .append(0, i64::from(i) * 100, &batch, T0)
                .await
                .unwrap();
            rolled.push(files.len());
        }
        // Every third batch fills a buffer; the seventh waits.
        assert_eq!(rolled, [0, 0, 1, 0, 0, 1, 0]);
        assert_eq!(writer.buffered_rows(), 100);
        assert_eq!(writer.durable_offset(0), Some(599));
        let files = writer.flush_all().await.unwrap();
        assert_eq!(files[0].first_offset, 600);
        assert_eq!(
            archived_sequences(store.as_ref(), "vitals").await,
            (0..700).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_buffer_rolls_when_its_oldest_event_has_waited_the_flush_interval() {
        let store = memory();
        let config = ArchiveConfig {
            flush_interval: Duration::from_secs(10),
            ..ArchiveConfig::default()
        };
        let mut writer = ArchiveWriter::new(Arc::clone(&store), Path::from("arch"), config);
        let arrival = T0 + 5_000;
        writer
            .append(0, 0, &vitals(&[T0], 0), arrival)
            .await
            .unwrap();
        writer
            .append(0, 1, &vitals(&[T0 + 1], 1), arrival + 9_000)
            .await
            .unwrap();
        assert!(writer.flush_due(arrival + 9_999).await.unwrap().is_empty());
        assert_eq!(writer.durable_offset(0), None);

        let files = writer.flush_due(arrival + 10_000).await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            files[0].rows, 2,
            "the younger event goes with the older one"
        );
        assert_eq!(writer.durable_offset(0), Some(1));

        // An append that finds its partition due writes it at once.
        writer
            .append(0, 2, &vitals(&[T0 + 2], 2), arrival + 20_000)
            .await
            .unwrap();
        let files = writer
            .append(0, 3, &vitals(&[T0 + 3], 3), arrival + 30_000)
            .await
            .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(writer.buffered_rows(), 0);
    }

    #[tokio::test]
    async fn appending_the_same_batch_after_a_restart_rewrites_the_same_file() {
        let store = memory();
        let batch = vitals(&times(T0, 20, 1_000), 0);
        for _restart in 0..2 {
            let mut writer = ArchiveWriter::new(
                Arc::clone(&store),
                Path::from("arch"),
                ArchiveConfig::default(),
            );
            writer.append(3, 1_000, &batch, T0).await.unwrap();
            writer.flush_all().await.unwrap();
        }
        let files = read_parquet_files(store.as_ref(), &Path::from("arch")).await;
        assert_eq!(files.len(), 1);
        assert_eq!(
            archived_sequences(store.as_ref(), "vitals").await,
            (0..20).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_restart_that_cuts_batches_differently_neither_loses_nor_duplicates() {
        let store = memory();
        let events = times(T0, 300, 1_000);
        let prefix = Path::from("arch");

        // First run: two complete flushes. The server committed after the
        // first (durable 99) and then died before committing 299.
        let committed = {
            let mut writer =
                ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
            writer.resume(0, 0).await.unwrap();
            writer
                .append(0, 0, &vitals(&events[..100], 0), T0)
                .await
                .unwrap();
            writer.flush_all().await.unwrap();
            let committed = writer.durable_offset(0).unwrap();
            writer
                .append(0, 100, &vitals(&events[100..130], 100), T0)
                .await
                .unwrap();
            writer
                .append(0, 130, &vitals(&events[130..300], 130), T0)
                .await
                .unwrap();
            writer.flush_all().await.unwrap();
            assert_eq!(writer.durable_offset(0), Some(299));
            committed
        };
        assert_eq!(committed, 99);

        // Second run resumes at the committed offset; the consumer now cuts
        // the batches at 100..180 and 180..300.
        let mut writer =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        let removed = writer.resume(0, committed + 1).await.unwrap();
        assert_eq!(
            removed
                .iter()
                .map(|p| p.filename().unwrap().to_string())
                .collect::<Vec<_>>(),
            ["part-0-00000000000000000100.parquet"]
        );
        writer
            .append(0, 100, &vitals(&events[100..180], 100), T0)
            .await
            .unwrap();
        writer
            .append(0, 180, &vitals(&events[180..300], 180), T0)
            .await
            .unwrap();
        writer.flush_all().await.unwrap();
        assert_eq!(
            archived_sequences(store.as_ref(), "vitals").await,
            (0..300).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn resume_only_touches_its_own_partition_from_the_offset_on() {
        let store = memory();
        let prefix = Path::from("arch");
        let mut writer =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        for (partition, offset) in [(0, 0), (0, 50), (1, 50), (-1, 50)] {
            let hour = T0 + offset * HOUR;
            writer
                .append(partition, offset, &vitals(&[hour], offset as u32), T0)
                .await
                .unwrap();
            writer.flush_all().await.unwrap();
        }
        writer.append(0, 60, &vitals(&[T0], 60), T0).await.unwrap();

        let removed = writer.resume(0, 50).await.unwrap();
        assert_eq!(removed.len(), 1);
        assert!(removed[0]
            .as_ref()
            .ends_with("part-0-00000000000000000050.parquet"));
        assert_eq!(writer.buffered_rows(), 0, "its buffers are dropped too");
        assert_eq!(writer.durable_offset(0), Some(49));
        assert_eq!(read_parquet_files(store.as_ref(), &prefix).await.len(), 3);
    }

    #[tokio::test]
    async fn the_durable_offset_waits_for_every_buffer_of_the_partition() {
        let store = memory();
        let mut writer = ArchiveWriter::new(
            Arc::clone(&store),
            Path::from("arch"),
            ArchiveConfig::default(),
        );
        assert_eq!(writer.durable_offset(0), None);
        writer
            .append(0, 10, &vitals(&[T0, T0 + HOUR], 0), T0)
            .await
            .unwrap();
        assert_eq!(writer.durable_offset(0), None);
        writer.flush_partition(0).await.unwrap();
        assert_eq!(writer.durable_offset(0), Some(11));

        // Offsets 12..=20 were dead letters: nothing to archive, but durable.
        let empty = RecordBatch::new_empty(sql_rules::stream::vitals_schema());
        writer.append_range(0, 12..=20, &empty, T0).await.unwrap();
        assert_eq!(writer.durable_offset(0), Some(20));

        // Rows at offsets 21 and 25 (22..=24 went to the dead-letter topic).
        writer
            .append_range(0, 21..=25, &vitals(&[T0, T0], 2), T0)
            .await
            .unwrap();
        writer.append_range(0, 26..=26, &empty, T0).await.unwrap();
        assert_eq!(writer.durable_offset(0), Some(20));
        writer.flush_all().await.unwrap();
        assert_eq!(writer.durable_offset(0), Some(26));
        assert_eq!(writer.durable_offset(1), None);
    }

    #[tokio::test]
    async fn offsets_that_go_backwards_or_do_not_fit_are_refused() {
        let mut writer = ArchiveWriter::new(memory(), Path::from("arch"), ArchiveConfig::default());
        writer
            .append(0, 10, &vitals(&[T0, T0], 0), T0)
            .await
            .unwrap();
        let err = writer
            .append(0, 11, &vitals(&[T0], 2), T0)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("offsets up to 11 were already appended"),
            "{err}"
        );
        let err = writer
            .append_range(0, 20..=20, &vitals(&[T0, T0], 3), T0)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("2 rows cannot come from the 1 offsets"),
            "{err}"
        );
        let err = writer
            .append(0, -5, &vitals(&[T0], 3), T0)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("partition 0 at offset -5"),
            "{err}"
        );
        // A refused batch changes nothing.
        assert_eq!(writer.buffered_rows(), 2);
    }

    #[tokio::test]
    async fn a_batch_of_another_schema_is_refused_with_both_column_lists() {
        let mut writer = ArchiveWriter::new(memory(), Path::from("arch"), ArchiveConfig::default());
        let alerts = alerts_to_batch(&[]).unwrap();
        let err = writer
            .append(0, 0, &alerts, T0)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("the batch has columns (id Utf8"), "{err}");
        let batch = vitals(&[T0], 0).project(&[0, 1, 2]).unwrap();
        let err = writer
            .append(0, 1, &batch, T0)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot archive into 'vitals'"), "{err}");
        assert!(err.contains("expected (hospital_id Utf8"), "{err}");
    }

    #[tokio::test]
    async fn alerts_are_archived_by_event_hour_like_vitals() {
        let store = memory();
        let mut writer = ArchiveWriter::alerts(
            Arc::clone(&store),
            Path::from("arch"),
            ArchiveConfig::default(),
        );
        let alert: sql_rules::Alert = serde_json::from_value(serde_json::json!({
            "id": "a1", "rule_id": "tachy", "rule_version": 1, "rule_name": "Tachycardia",
            "severity": "high", "status": "fired", "key": {"patient_id": "P1"},
            "window_start_ms": T0, "window_end_ms": T0 + 60_000, "values": {},
            "event_time_ms": T0 + 59_000, "fired_at_ms": T0 + 61_000,
            "explanation": {"condition": "true", "event_count": 1,
                            "first_event_ms": T0, "last_event_ms": T0 + 59_000},
        }))
        .unwrap();
        let batch = alerts_to_batch(&[alert]).unwrap();
        writer.append(-1, 0, &batch, T0).await.unwrap();
        let files = writer.flush_all().await.unwrap();
        assert_eq!(
            names(&files),
            ["arch/alerts/date=2026-01-01/hour=10/part--1-00000000000000000000.parquet"]
        );
        let read = read_parquet_files(store.as_ref(), &Path::from("arch/alerts")).await;
        assert_eq!(read[0].1[0].num_rows(), 1);
        assert_eq!(read[0].1[0].schema(), crate::archive::alerts_schema());
    }

    #[tokio::test]
    async fn a_view_sees_buffers_until_their_file_is_written() {
        let mut writer = ArchiveWriter::new(memory(), Path::from("arch"), ArchiveConfig::default());
        let view = writer.buffered_view();
        writer
            .append(2, 7, &vitals(&[T0, T0 + HOUR], 0), T0)
            .await
            .unwrap();
        let pending = view.snapshot();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].hour, "10");
        assert_eq!(pending[1].hour, "11");
        assert!(pending[1]
            .path
            .as_ref()
            .ends_with("hour=11/part-2-00000000000000000007.parquet"));
        writer.flush_all().await.unwrap();
        assert!(view.snapshot().is_empty());
        assert_eq!(writer.release(2), 0);
    }
}

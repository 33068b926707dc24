//! The Parquet archive: every accepted raw event (and every alert), kept on
//! the object store, partitioned by event time.
//!
//! ```text
//! {prefix}/vitals/date=YYYY-MM-DD/hour=HH/part-{partition}-{first_offset:020}.parquet
//! {prefix}/alerts/date=YYYY-MM-DD/hour=HH/part-{partition}-{first_offset:020}.parquet
//! ```
//!
//! - [`ArchiveWriter`] buffers batches per (source partition, event date,
//!   event hour) and writes each buffer as one zstd-compressed Parquet file,
//!   with column statistics, in a single `put`;
//! - [`apply_retention`] deletes whole files once their `date=` directory is
//!   older than the retention period;
//! - [`alerts_to_batch`] turns the engine's alerts into rows of
//!   [`alerts_schema`] so alerts are archived by the same writer, and
//!   [`alerts_from_batch`] turns rows back into alerts;
//! - [`crate::history`] reads it all back with SQL, and
//!   [`crate::alert_history`] lists alerts newest first from it;
//! - [`SkipDamagedParquet`] keeps damaged files (a footer cut off by a power
//!   cut on a store without atomic writes) out of those reads.
//!
//! The archive does not decode events, does not talk to Kafka, and does not
//! read a clock: the caller passes source offsets and `now_ms`.
//!
//! # Exactly once, across restarts
//!
//! Kafka is the write-ahead log; the archive only has to make sure the
//! offsets the server commits are archived, and that re-reading what was not
//! committed does not leave a second copy. The argument has four steps.
//!
//! 1. **Names carry the start.** A file is named after its source partition
//!    and the first offset of the batch that opened its buffer; every row in
//!    it comes from that offset or later.
//! 2. **A partition flushes as a unit.** When any buffer of a partition is due
//!    (by size or age), all of that partition's buffers are written, and only
//!    when all of them are written does [`ArchiveWriter::durable_offset`]
//!    advance, to the last offset the partition was given. So if `D` is the
//!    durable offset, every file named `<= D` holds only offsets `<= D`, and
//!    every file written after `D` became durable (including the files of a
//!    flush that died half way) is named `> D` and holds only offsets `> D`.
//! 3. **The server commits only durable offsets.** It commits `D + 1` for a
//!    partition, never more, so after a crash or a rebalance the next owner
//!    starts reading at some committed `C + 1` with `C` a durable offset.
//! 4. **Resume removes what will be read again.** Before appending a
//!    partition's first batch, the owner calls
//!    [`ArchiveWriter::resume`]`(partition, C + 1)`, which deletes every
//!    `part-{partition}-{first}` with `first >= C + 1`: by step 2 these are
//!    exactly the files whose rows come after the commit point, and the
//!    consumer is about to deliver all of those rows again. Files named
//!    `<= C` are complete and hold nothing after `C`.
//!
//! Each event is therefore in exactly one file. Files are written with a
//! single `put` of the whole encoded file (`PutMode::Overwrite`): object
//! stores make a put atomic, so a crash never leaves a readable half-file, and
//! when a replay happens to cut the same batches it simply rewrites the same
//! names. The file name alone is *not* enough without step 4: after a restart
//! the consumer may cut batches at different offsets, and the age-based roll
//! depends on `now_ms`, so a re-read could produce `part-p-150` next to a
//! stale `part-p-120` holding the same rows. Resume lists the table once per
//! partition assignment; that is the price of not keeping a manifest.
//!
//! A partition has one writer at a time. On revocation the server flushes
//! (or [`releases`](ArchiveWriter::release)) the partition and commits before
//! the next owner resumes it; otherwise the old owner could write a file
//! after the new owner's resume.
//!
//! Input that is not from Kafka (the HTTP ingest, the demo simulator, the
//! alert sink) uses partition `-1` and a sequence number it keeps itself.

mod alerts;
pub mod intact;
mod layout;
pub mod retention;
#[cfg(test)]
pub(crate) mod sample;
pub mod writer;

use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::CatalogError;

pub use alerts::{alert_col, alerts_from_batch, alerts_schema, alerts_to_batch, status_text};
pub use intact::SkipDamagedParquet;
pub use retention::apply_retention;
pub use writer::{ArchiveWriter, ArchivedFile, BufferedView, PendingFile};

/// Name of the raw-events table (and its directory under the prefix).
pub const VITALS: &str = "vitals";
/// Name of the alerts table (and its directory under the prefix).
pub const ALERTS: &str = "alerts";

/// Partition number for input that does not come from a Kafka partition.
pub const NO_PARTITION: i32 = -1;

/// What one archive table looks like: its name, its Arrow schema, and the
/// event-time column its files are partitioned by.
#[derive(Debug, Clone)]
pub struct ArchiveTable {
    name: String,
    schema: SchemaRef,
    time_column: usize,
    pruning_columns: Vec<String>,
}

impl ArchiveTable {
    /// A table `name` with rows of `schema`, partitioned by `time_column`,
    /// which must be a non-null `Timestamp(Millisecond, _)` column.
    ///
    /// `name` becomes a path segment: 1-64 characters from `a-z`, `0-9`, `_`
    /// and `-`.
    pub fn new(name: &str, schema: SchemaRef, time_column: &str) -> Result<Self, CatalogError> {
        layout::validate_table_name(name)?;
        let schema_error = |reason: String| CatalogError::ArchiveSchema {
            table: name.to_string(),
            reason,
        };
        let time_index = schema
            .index_of(time_column)
            .map_err(|_| schema_error(format!("the schema has no time column '{time_column}'")))?;
        let field = schema.field(time_index);
        if !matches!(
            field.data_type(),
            DataType::Timestamp(TimeUnit::Millisecond, _)
        ) {
            return Err(schema_error(format!(
                "time column '{time_column}' is {}, expected a millisecond timestamp",
                field.data_type()
            )));
        }
        for reserved in ["date", "hour"] {
            if schema.field_with_name(reserved).is_ok() {
                return Err(schema_error(format!(
                    "column '{reserved}' is reserved for the partition value"
                )));
            }
        }
        Ok(Self {
            name: name.to_string(),
            schema,
            time_column: time_index,
            pruning_columns: vec![time_column.to_string()],
        })
    }

    /// The `vitals` table: [`sql_rules::stream::vitals_schema`] partitioned
    /// by `event_time`. A history query's bounds on `event_time` or on
    /// `timestamp_unix_ms` (the same instant as milliseconds) both prune.
    pub fn vitals() -> Self {
        use sql_rules::stream::{col, vitals_schema};
        Self {
            name: VITALS.to_string(),
            schema: vitals_schema(),
            time_column: sql_rules::stream::idx::EVENT_TIME,
            pruning_columns: vec![
                col::EVENT_TIME.to_string(),
                col::TIMESTAMP_UNIX_MS.to_string(),
            ],
        }
    }

    /// The `alerts` table: [`alerts_schema`] partitioned by the alert's
    /// `event_time`, so a replay over an event-time range finds the alerts
    /// fired for that range in the same directories.
    pub fn alerts() -> Self {
        let schema = alerts_schema();
        let time_column = schema
            .index_of(alert_col::EVENT_TIME)
            .unwrap_or_else(|_| unreachable!("alerts_schema has event_time"));
        Self {
            name: ALERTS.to_string(),
            schema,
            time_column,
            pruning_columns: vec![alert_col::EVENT_TIME.to_string()],
        }
    }

    /// The table name, which is also its directory under the prefix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema of the rows (without the `date` and `hour` partition
    /// columns, which live in the path).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Index of the event-time column in [`schema`](Self::schema).
    pub fn time_column(&self) -> usize {
        self.time_column
    }

    /// Columns holding the event time as milliseconds (a timestamp or an
    /// integer); bounds on any of them prune `date=`/`hour=` directories.
    pub fn pruning_columns(&self) -> &[String] {
        &self.pruning_columns
    }
}

/// When the writer rolls a buffer into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Roll once a buffer holds this many bytes of Arrow memory. The default,
    /// 64 MiB, gives Parquet files of roughly ten to thirty megabytes for
    /// vitals.
    pub max_file_bytes: usize,
    /// Roll once the oldest buffered batch has waited this long (by the
    /// caller's `now_ms`). Bounds how far the committed Kafka offset trails
    /// the consumer, and how much is lost from memory (not from Kafka) in a
    /// crash. Default 10 s.
    pub flush_interval: Duration,
    /// Most rows per Parquet row group; statistics are kept per row group and
    /// per page, so smaller groups prune finer. Default 1 Mi rows.
    pub max_row_group_rows: usize,
    /// zstd level, 1 (fast) to 22 (small). Default 3.
    pub zstd_level: i32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 * 1024 * 1024,
            flush_interval: Duration::from_secs(10),
            max_row_group_rows: 1024 * 1024,
            zstd_level: 3,
        }
    }
}

pub(crate) use layout::{hour_index, partition_values};

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn a_table_needs_a_millisecond_time_column() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        assert!(ArchiveTable::new("x", schema.clone(), "ts").is_ok());
        let err = ArchiveTable::new("x", schema.clone(), "t").unwrap_err();
        assert!(
            err.to_string().contains("expected a millisecond timestamp"),
            "{err}"
        );
        let err = ArchiveTable::new("x", schema.clone(), "nope").unwrap_err();
        assert!(err.to_string().contains("no time column 'nope'"), "{err}");
        let err = ArchiveTable::new("X/y", schema, "ts").unwrap_err();
        assert!(
            matches!(err, CatalogError::InvalidTableName { .. }),
            "{err}"
        );
    }

    #[test]
    fn the_built_in_tables_point_at_event_time() {
        let vitals = ArchiveTable::vitals();
        assert_eq!(
            vitals.schema().field(vitals.time_column()).name(),
            "event_time"
        );
        let alerts = ArchiveTable::alerts();
        assert_eq!(
            alerts.schema().field(alerts.time_column()).name(),
            "event_time"
        );
        assert_eq!(alerts.name(), "alerts");
    }
}

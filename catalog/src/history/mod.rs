//! History SQL: read-only DataFusion queries over the archive.
//!
//! [`HistoryCatalog`] owns a DataFusion [`SessionContext`] in which each
//! archive table (`vitals`, `alerts`) is the union of
//!
//! - a listing table over its Parquet files, with the hive partition columns
//!   `date` (`YYYY-MM-DD`) and `hour` (`00`-`23`) taken from the path, and
//! - the rows its [`ArchiveWriter`](crate::archive::ArchiveWriter) still
//!   buffers, attached with [`HistoryCatalog::with_unflushed`] and read at
//!   the moment each query is planned, so a query sees what just arrived.
//!
//! # Pruning
//!
//! (Pruning is in `pruning.rs`; the table provider in `provider.rs`.)
//!
//! `WHERE date = '2026-01-01' AND hour = '10'` prunes directories directly.
//! Bounds on the event time (`event_time >= TIMESTAMP '…'`, `BETWEEN`, and
//! for vitals also `timestamp_unix_ms`) are translated into the matching
//! `date`/`hour` predicates when the table is scanned (see
//! [`hour_partition_filters`]), so a one-hour query over thirty days lists
//! one hour's directory and opens one hour of files. Within the files that
//! remain, Parquet row-group statistics prune further. Nothing else about the
//! query changes: the original predicates are still applied to every row.
//!
//! [`HistoryCatalog::hours`] tells which hours of a range hold anything at
//! all, for callers that read a long range one hour at a time; replay does,
//! through [`HistoryCatalog::events_in_order`] ([`replay_input`]).
//!
//! # State tables
//!
//! `rules`, `rule_versions` and `audit_log` show the current state of the
//! rule store and the audit log, read when a query scans them
//! ([`state_tables`], registered once with
//! [`HistoryCatalog::register_state_tables`]).
//!
//! # Read-only
//!
//! [`HistoryCatalog::query`] plans the SQL, refuses DDL, DML, `COPY` and
//! statements such as `SET` (via [`SQLOptions`]), refuses file-reading table
//! functions (`read_parquet` and friends are registered to fail), and runs it
//! under a row limit and a time limit. URL tables (`SELECT * FROM 'file'`)
//! are never enabled.
//!
//! The object store is registered under [`ARCHIVE_STORE_URL`] in this
//! context only. The listing cache is off, so a file written a moment ago is
//! seen by the next query.
//!
//! # Hospital scope
//!
//! [`HistoryCatalog::dataframe_scoped`] and [`HistoryCatalog::query_scoped`]
//! run a caller's SQL limited to some hospitals: a table with a
//! `hospital_id` column (`vitals`; `alerts` once alerts carry their
//! hospital) shows only their rows however the SQL names or combines it,
//! `rules` and `rule_versions` show their hospitals' rules and the global
//! ones (`hospital_id` NULL), and every other table
//! (`audit_log`: nothing to limit it by) is not available. See [`scope`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::archive::{hour_index, ArchiveTable, BufferedView};
use crate::CatalogError;
use sql_rules::bounded_functions;

mod provider;
mod pruning;
pub mod replay_input;
pub mod scope;
pub mod state_tables;

use provider::ArchiveTableProvider;
pub use pruning::hour_partition_filters;
use pruning::{parse_date_segment, parse_hour_segment};

pub use replay_input::{EventsInOrder, RecordedAlert};

/// The URL the archive's object store is registered under in the history
/// session; table locations are `wardwatch://archive/{prefix}/{table}/`.
pub const ARCHIVE_STORE_URL: &str = "wardwatch://archive/";

/// Table functions a history query may call; every other one is removed.
const ALLOWED_TABLE_FUNCTIONS: [&str; 2] = ["generate_series", "range"];

/// Table functions that read files in DataFusion or its CLI, registered to
/// fail with a clear message instead of "not found".
const FILE_FUNCTIONS: [&str; 9] = [
    "read_parquet",
    "read_csv",
    "read_json",
    "read_ndjson",
    "read_avro",
    "read_arrow",
    "parquet_metadata",
    "parquet_scan",
    "parquet_schema",
];

/// Limits one history query runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLimits {
    /// More result rows than this is an error ([`CatalogError::QueryTooLarge`]);
    /// the query is stopped once it has produced one row too many.
    pub max_rows: usize,
    /// Planning and running together may take this long before the query is
    /// cancelled ([`CatalogError::QueryTimeout`]).
    pub timeout: Duration,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Read-only SQL over the archive, see the [module docs](self).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use catalog::archive::{ArchiveConfig, ArchiveWriter};
/// use catalog::history::{HistoryCatalog, QueryLimits};
/// use object_store::{memory::InMemory, path::Path};
///
/// let store = Arc::new(InMemory::new());
/// let writer = ArchiveWriter::new(store.clone(), Path::from("archive"), ArchiveConfig::default());
/// let history = HistoryCatalog::new(store, Path::from("archive"))?
///     .with_unflushed(writer.buffered_view())?;
/// let rows = history.query("SELECT count(*) AS n FROM vitals", &QueryLimits::default()).await?;
/// assert_eq!(rows[0].num_rows(), 1);
/// assert!(history.query("DROP TABLE vitals", &QueryLimits::default()).await.is_err());
/// # Ok::<(), catalog::CatalogError>(())
/// # }).unwrap();
/// ```
pub struct HistoryCatalog {
    ctx: SessionContext,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    resources: QueryResources,
}

/// What one history query may hold, whatever it asks for; see
/// [`HistoryCatalog::with_resources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryResources {
    /// Bytes one query's operators (sorts, aggregates, joins) may reserve in
    /// DataFusion's memory pool. Over it the query fails with
    /// [`CatalogError::QueryOverBudget`]; nothing spills to disk.
    pub max_memory_bytes: usize,
    /// Bytes one call of a size-amplifying function (`repeat`, `lpad`,
    /// `range`, …) may produce: the pool does not see scalar values.
    pub max_function_output_bytes: usize,
}

impl Default for QueryResources {
    fn default() -> Self {
        Self {
            max_memory_bytes: 512 * 1024 * 1024,
            max_function_output_bytes: 16 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for HistoryCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryCatalog")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl HistoryCatalog {
    /// A history session over the archive under `prefix` in `store`, with
    /// `vitals` and `alerts` registered (files only; see
    /// [`with_unflushed`](Self::with_unflushed)).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Result<Self, CatalogError> {
        // No list-files cache: its default keeps a listing forever, and the
        // writer adds files all the time. Statistics and footer caches check
        // size and modification time, so they stay on.
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
            .build_arc()
            .map_err(CatalogError::query)?;
        let mut config = SessionConfig::new().with_information_schema(false);
        // Evaluate filters while decoding Parquet (late materialisation):
        // a query for one patient decodes the other columns only for that
        // patient's rows.
        config.options_mut().execution.parquet.pushdown_filters = true;
        config.options_mut().execution.parquet.reorder_filters = true;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);

        let url =
            url::Url::parse(ARCHIVE_STORE_URL).map_err(|e| CatalogError::InvalidLocation {
                location: ARCHIVE_STORE_URL.to_string(),
                reason: e.to_string(),
            })?;
        // Damaged Parquet files (a footer cut off by a power cut) are left
        // out of listings, so one cannot fail every query over its hours.
        ctx.register_object_store(
            &url,
            Arc::new(crate::archive::SkipDamagedParquet::new(Arc::clone(&store))),
        );

        let registered: Vec<String> = ctx.state().table_functions().keys().cloned().collect();
        for name in registered {
            if !ALLOWED_TABLE_FUNCTIONS.contains(&name.as_str()) {
                ctx.deregister_udtf(&name);
            }
        }
        for name in FILE_FUNCTIONS {
            ctx.register_udtf(name, Arc::new(RefusedFileFunction { name }));
        }

        let resources = QueryResources::default();
        bounded_functions::register(&ctx, resources.max_function_output_bytes);
        let catalog = Self {
            ctx,
            store,
            prefix,
            resources,
        };
        catalog.register_table(ArchiveTable::vitals(), None)?;
        catalog.register_table(ArchiveTable::alerts(), None)?;
        Ok(catalog)
    }

    /// Makes the table of `view` (for example `vitals`) include the rows its
    /// writer has buffered but not yet written.
    pub fn with_unflushed(self, view: BufferedView) -> Result<Self, CatalogError> {
        let table = view.table().clone();
        self.register_table(table, Some(view))?;
        Ok(self)
    }

    /// Registers (or replaces) an archive table, optionally with a writer's
    /// buffered rows.
    pub fn register_table(
        &self,
        table: ArchiveTable,
        unflushed: Option<BufferedView>,
    ) -> Result<(), CatalogError> {
        let provider = ArchiveTableProvider::try_new(&self.prefix, table, unflushed)
            .map_err(CatalogError::query)?;
        let name = provider.table.name().to_string();
        self.ctx
            .deregister_table(&name)
            .map_err(CatalogError::query)?;
        self.ctx
            .register_table(&name, Arc::new(provider))
            .map_err(CatalogError::query)?;
        Ok(())
    }

    /// Bounds what each query may hold (memory, function output); the
    /// defaults are [`QueryResources::default`]. With `max_concurrent_queries`
    /// this bounds the memory history SQL can take from alerting.
    pub fn with_resources(mut self, resources: QueryResources) -> Self {
        bounded_functions::register(&self.ctx, resources.max_function_output_bytes);
        self.resources = resources;
        self
    }

    /// The limits set by [`with_resources`](Self::with_resources).
    pub fn resources(&self) -> QueryResources {
        self.resources
    }

    /// A session for one query: the shared catalog and caches, with a memory
    /// pool of its own (so one query cannot starve the others) and no
    /// spilling (a query over its memory is refused, never fills the disk).
    ///
    /// With `hospitals`, the session's catalog is not the shared one but a
    /// copy of it limited to those hospitals ([`scope::scoped_catalogs`]);
    /// everything else (functions, limits, object store) is the same.
    async fn query_session(
        &self,
        hospitals: Option<&[String]>,
    ) -> Result<SessionContext, CatalogError> {
        let base = self.ctx.runtime_env();
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(self.resources.max_memory_bytes),
            std::num::NonZeroUsize::new(3).expect("3 is not zero"),
        );
        let runtime = RuntimeEnvBuilder::from_runtime_env(&base)
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(CatalogError::query)?;
        let mut state =
            SessionStateBuilder::new_from_existing(self.ctx.state()).with_runtime_env(runtime);
        // First in line, so `||` is planned bounded before DataFusion's own
        // planners see it.
        let concat = bounded_functions::ConcatOperator::new(
            &self.ctx,
            self.resources.max_function_output_bytes,
        );
        state
            .expr_planners()
            .get_or_insert_with(Vec::new)
            .insert(0, Arc::new(concat));
        if let Some(hospitals) = hospitals {
            let catalogs = scope::scoped_catalogs(&self.ctx, hospitals)
                .await
                .map_err(CatalogError::query)?;
            state = state.with_catalog_list(catalogs);
        }
        Ok(SessionContext::new_with_state(state.build()))
    }

    /// The DataFusion session, to register further read-only tables.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// Rows of archive table `table`, as `build` shapes a DataFrame of it
    /// (filters, sorts, aggregates: expressions, never SQL text), collected.
    pub async fn read(
        &self,
        table: &str,
        build: impl FnOnce(DataFrame) -> Result<DataFrame, DataFusionError>,
    ) -> Result<Vec<RecordBatch>, CatalogError> {
        let df = self.ctx.table(table).await.map_err(CatalogError::query)?;
        futures::TryStreamExt::try_collect(
            build(df)
                .map_err(CatalogError::query)?
                .execute_stream()
                .await
                .map_err(CatalogError::query)?,
        )
        .await
        .map_err(CatalogError::query)
    }

    /// Plans `sql` after the read-only checks, for callers that stream the
    /// result themselves (they own the row and time limits then).
    pub async fn dataframe(&self, sql: &str) -> Result<DataFrame, CatalogError> {
        self.dataframe_scoped(sql, None).await
    }

    /// [`dataframe`](Self::dataframe) for a caller limited to `hospitals`
    /// (`None`: not limited, the same as `dataframe`).
    ///
    /// A limited caller's query reads only those hospitals' rows of the
    /// tables with a `hospital_id` column (`vitals`), whatever SQL it is
    /// (joins, subqueries, CTEs, set operations, qualified names), and of
    /// `rules` and `rule_versions` also the global rules (no hospital);
    /// naming any other table
    /// (`audit_log`, `alerts` while it has no hospital column) fails to
    /// plan, and so does `EXPLAIN` (a plan shows the files and row counts of
    /// every hospital). An empty list sees no rows. See [`scope`].
    pub async fn dataframe_scoped(
        &self,
        sql: &str,
        hospitals: Option<&[String]>,
    ) -> Result<DataFrame, CatalogError> {
        let ctx = self.query_session(hospitals).await?;
        let plan = ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(planning_error)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| CatalogError::QueryRefused {
                reason: format!("{}; only queries are allowed", plain_message(e)),
            })?;
        if hospitals.is_some() && explains(&plan) {
            return Err(CatalogError::query(DataFusionError::Plan(
                "EXPLAIN is not available to a caller limited to hospitals: \
                 a plan describes the archive files and row counts of every hospital"
                    .to_string(),
            )));
        }
        ctx.execute_logical_plan(plan)
            .await
            .map_err(CatalogError::query)
    }

    /// The hours (since the epoch, ascending) of archive table `table` that
    /// may hold rows with an event time in `[from_ms, to_ms)`: those with a
    /// `date=/hour=` directory, and those the table's writer still buffers
    /// (see [`with_unflushed`](Self::with_unflushed)).
    ///
    /// One listing of the table's top level and one per day of the range
    /// that has a directory, so reading a long, sparse range hour by hour
    /// costs nothing for the hours without data. An hour first written after
    /// this call is not included.
    pub async fn hours(
        &self,
        table: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<i64>, CatalogError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let (first, last) = (hour_index(from_ms), hour_index(to_ms - 1));
        let provider = self
            .ctx
            .table_provider(table)
            .await
            .map_err(CatalogError::query)?;
        let Some(archive) = provider.downcast_ref::<ArchiveTableProvider>() else {
            return Err(CatalogError::query(DataFusionError::Plan(format!(
                "'{table}' is not an archive table"
            ))));
        };
        let mut hours = BTreeSet::new();
        if let Some(view) = &archive.unflushed {
            hours.extend(
                view.snapshot()
                    .iter()
                    .map(|part| part.hour_index)
                    .filter(|h| (first..=last).contains(h)),
            );
        }
        let dir = self.prefix.clone().join(archive.table.name());
        for day in self.list_dirs(&dir).await? {
            let Some(day_start) = day.filename().and_then(parse_date_segment) else {
                continue;
            };
            if day_start > last || day_start + 23 < first {
                continue;
            }
            for hour_dir in self.list_dirs(&day).await? {
                if let Some(hour) = hour_dir.filename().and_then(parse_hour_segment) {
                    let index = day_start + i64::from(hour);
                    if (first..=last).contains(&index) {
                        hours.insert(index);
                    }
                }
            }
        }
        Ok(hours.into_iter().collect())
    }

    /// The directories directly under `dir` (none if it does not exist).
    async fn list_dirs(&self, dir: &Path) -> Result<Vec<Path>, CatalogError> {
        match self.store.list_with_delimiter(Some(dir)).await {
            Ok(listing) => Ok(listing.common_prefixes),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(CatalogError::store(dir, e)),
        }
    }

    /// Runs read-only `sql` and returns its result, within `limits`.
    pub async fn query(
        &self,
        sql: &str,
        limits: &QueryLimits,
    ) -> Result<Vec<RecordBatch>, CatalogError> {
        self.query_scoped(sql, limits, None).await
    }

    /// [`query`](Self::query) for a caller limited to `hospitals` (`None`:
    /// not limited); see [`dataframe_scoped`](Self::dataframe_scoped).
    pub async fn query_scoped(
        &self,
        sql: &str,
        limits: &QueryLimits,
        hospitals: Option<&[String]>,
    ) -> Result<Vec<RecordBatch>, CatalogError> {
        let run = async {
            let mut df = self.dataframe_scoped(sql, hospitals).await?;
            let wraps_limit = !matches!(
                df.logical_plan(),
                LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)
            );
            if wraps_limit {
                // One row more than allowed tells "too large" from "exactly
                // at the limit" without running the whole query.
                df = df
                    .limit(0, Some(limits.max_rows.saturating_add(1)))
                    .map_err(CatalogError::query)?;
            }
            let mut stream = df.execute_stream().await.map_err(CatalogError::query)?;
            let mut rows = 0usize;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(CatalogError::query)?;
                rows += batch.num_rows();
                if rows > limits.max_rows {
                    return Err(CatalogError::QueryTooLarge {
                        limit: limits.max_rows,
                    });
                }
                batches.push(batch);
            }
            Ok(batches)
        };
        match tokio::time::timeout(limits.timeout, run).await {
            Ok(result) => result,
            // Dropping the stream cancels DataFusion's tasks.
            Err(_) => Err(CatalogError::QueryTimeout {
                limit_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }
}

/// A file-reading table function, registered so that calling it says why it
/// is not available.
#[derive(Debug)]
struct RefusedFileFunction {
    name: &'static str,
}

#[derive(Debug)]
struct FileFunctionRefused(&'static str);

impl std::fmt::Display for FileFunctionRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}() reads files, and history SQL may only read the archive tables",
            self.0
        )
    }
}

impl std::error::Error for FileFunctionRefused {}

impl TableFunctionImpl for RefusedFileFunction {
    fn call_with_args(
        &self,
        _args: TableFunctionArgs,
    ) -> Result<Arc<dyn TableProvider>, DataFusionError> {
        Err(DataFusionError::External(Box::new(FileFunctionRefused(
            self.name,
        ))))
    }
}

/// A planning error, or a refusal if a refused function caused it.
fn planning_error(error: DataFusionError) -> CatalogError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<FileFunctionRefused>() {
            return CatalogError::QueryRefused {
                reason: refused.to_string(),
            };
        }
        cause = current.source();
    }
    CatalogError::query(error)
}

/// Whether `plan` is or holds an `EXPLAIN` (with or without `ANALYZE`).
fn explains(plan: &LogicalPlan) -> bool {
    let mut found = false;
    // The closure never fails, so neither does the walk.
    let _ = plan.apply_with_subqueries(|node| {
        found = matches!(node, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// DataFusion's message without its "Error during planning: " prefix.
fn plain_message(error: DataFusionError) -> String {
    match error.find_root() {
        DataFusionError::Plan(message) => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::compute::cast;
    use arrow::datatypes::DataType;
    use arrow::datatypes::Int64Type;
    use datafusion::physical_plan::{collect, displayable};
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    use super::provider::listed_files;
    use super::*;
    use crate::archive::sample::{times, vitals, HOUR, T0};
    use crate::archive::{alerts_to_batch, ArchiveConfig, ArchiveWriter};

    fn limits() -> QueryLimits {
        QueryLimits::default()
    }

    async fn count(history: &HistoryCatalog, sql: &str) -> i64 {
        let batches = history.query(sql, &limits()).await.unwrap();
        let column = batches[0].column(0);
        column.as_primitive::<Int64Type>().value(0)
    }

    /// Partition `p` gets one file per hour for `hours` hours, `per_hour`
    /// events each, at offsets that keep increasing.
    async fn archive_hours(
        writer: &mut ArchiveWriter,
        partitions: &[i32],
        hours: i64,
        per_hour: usize,
    ) {
        for &partition in partitions {
            for h in 0..hours {
                let offset = h * per_hour as i64;
                let seq = (partition as u32) * 1_000_000 + offset as u32;
                let batch = vitals(&times(T0 + h * HOUR, per_hour, 1_000), seq);
                writer.append(partition, offset, &batch, T0).await.unwrap();
                writer.flush_partition(partition).await.unwrap();
            }
        }
    }

    /// The files the physical plan of `sql` reads.
    async fn planned_files(history: &HistoryCatalog, sql: &str) -> Vec<String> {
        let plan = history
            .dataframe(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut files: Vec<String> = listed_files(&plan)
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn count_sees_flushed_and_buffered_events_once_each() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
        let prefix = Path::from("arch");
        let mut writer =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        let history = HistoryCatalog::new(Arc::clone(&store), prefix)
            .unwrap()
            .with_unflushed(writer.buffered_view())
            .unwrap();
        assert_eq!(count(&history, "SELECT count(*) FROM vitals").await, 0);

        writer
            .append(0, 0, &vitals(&times(T0, 100, 1_000), 0), T0)
            .await
            .unwrap();
        writer.flush_all().await.unwrap();
        writer
            .append(0, 100, &vitals(&times(T0, 30, 1_000), 100), T0)
            .await
            .unwrap();
        writer
            .append(1, 0, &vitals(&times(T0 + HOUR, 20, 1_000), 130), T0)
            .await
            .unwrap();
        assert_eq!(writer.buffered_rows(), 50);

        let sql = "SELECT count(*), count(DISTINCT sequence_number) FROM vitals";
        let batches = history.query(sql, &limits()).await.unwrap();
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
            150
        );
        assert_eq!(
            batches[0].column(1).as_primitive::<Int64Type>().value(0),
            150
        );

        // Buffered rows carry their partition values and obey predicates.
        let hour11 = "SELECT count(*) FROM vitals WHERE date = '2026-01-01' AND hour = '11'";
        assert_eq!(count(&history, hour11).await, 20);

        // Flushing moves rows from memory to files; the total stays put.
        writer.flush_all().await.unwrap();
        assert_eq!(writer.buffered_rows(), 0);
        assert_eq!(count(&history, "SELECT count(*) FROM vitals").await, 150);
    }

    #[tokio::test]
    async fn a_buffer_whose_file_already_exists_is_counted_once() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("arch");
        let batch = vitals(&times(T0, 40, 1_000), 0);
        let mut first =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        first.append(0, 0, &batch, T0).await.unwrap();
        first.flush_all().await.unwrap();

        // A second writer buffers the very same file (as during the moment
        // between a file's put and its buffer's removal).
        let mut second =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        second.append(0, 0, &batch, T0).await.unwrap();
        let history = HistoryCatalog::new(store, prefix)
            .unwrap()
            .with_unflushed(second.buffered_view())
            .unwrap();
        assert_eq!(count(&history, "SELECT count(*) FROM vitals").await, 40);
    }

    #[tokio::test]
    async fn a_one_hour_query_over_two_days_reads_one_hour_of_files() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("arch");
        let mut writer =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        archive_hours(&mut writer, &[0, 1], 48, 10).await;
        let history = HistoryCatalog::new(Arc::clone(&store), prefix).unwrap();
        assert_eq!(count(&history, "SELECT count(*) FROM vitals").await, 960);

        let expected_files = [
            "arch/vitals/date=2026-01-02/hour=03/part-0-00000000000000000170.parquet",
            "arch/vitals/date=2026-01-02/hour=03/part-1-00000000000000000170.parquet",
        ];
        // Hour 17 after T0 (10:00 on the 1st) is 03:00 on the 2nd.
        let by_time = "SELECT count(*) FROM vitals \
             WHERE event_time >= TIMESTAMP '2026-01-02T03:00:00Z' \
               AND event_time < TIMESTAMP '2026-01-02T04:00:00Z'";
        let by_millis = format!(
            "SELECT count(*) FROM vitals WHERE timestamp_unix_ms BETWEEN {} AND {}",
            T0 + 17 * HOUR,
            T0 + 18 * HOUR - 1
        );
        let by_partition = "SELECT count(*) FROM vitals WHERE date = '2026-01-02' AND hour = '03'";
        let by_text = "SELECT count(*) FROM vitals \
             WHERE event_time >= '2026-01-02T03:00:00Z' AND event_time < '2026-01-02T04:00:00Z'";
        for sql in [by_time, by_text, by_millis.as_str(), by_partition] {
            assert_eq!(planned_files(&history, sql).await, expected_files, "{sql}");
            assert_eq!(count(&history, sql).await, 20, "{sql}");
        }

        // EXPLAIN ANALYZE shows the same: only that hour's files are scanned.
        let explain = history
            .query(&format!("EXPLAIN ANALYZE {by_time}"), &limits())
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&explain)
            .unwrap()
            .to_string();
        println!("{text}");
        assert!(
            text.contains("hour=03/part-0-00000000000000000170.parquet"),
            "{text}"
        );
        assert!(
            text.contains("hour=03/part-1-00000000000000000170.parquet"),
            "{text}"
        );
        assert_eq!(text.matches(".parquet").count(), 2, "{text}");
        assert!(text.contains("files_opened=2,"), "{text}");

        // A range across midnight reads exactly the hours it touches.
        let across = "SELECT count(*) FROM vitals \
             WHERE event_time BETWEEN TIMESTAMP '2026-01-01T23:30:00Z' \
                                  AND TIMESTAMP '2026-01-02T00:00:05Z'";
        let files = planned_files(&history, across).await;
        assert_eq!(files.len(), 4, "{files:?}");
        assert!(files.iter().all(
            |f| f.contains("date=2026-01-01/hour=23") || f.contains("date=2026-01-02/hour=00")
        ));
        // 23:30-23:59:59 holds no events (each hour's 10 events are in its
        // first 10 s); 00:00:00-00:00:05 holds 6 per partition.
        assert_eq!(count(&history, across).await, 12);
    }

    #[tokio::test]
    async fn hours_are_the_directories_and_buffers_of_the_range() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("arch");
        let mut writer =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        // Files for 10:00 on the 1st and 16:00 on the 2nd; 15:00 buffered.
        for (offset, t) in [(0, T0), (10, T0 + 30 * HOUR)] {
            writer
                .append(0, offset, &vitals(&[t], 0), T0)
                .await
                .unwrap();
            writer.flush_all().await.unwrap();
        }
        writer
            .append(0, 20, &vitals(&[T0 + 5 * HOUR], 0), T0)
            .await
            .unwrap();
        let history = HistoryCatalog::new(store, prefix)
            .unwrap()
            .with_unflushed(writer.buffered_view())
            .unwrap();
        let h0 = T0 / HOUR;
        let hours = |from: i64, to: i64| {
            let history = &history;
            async move { history.hours("vitals", from, to).await.unwrap() }
        };
        assert_eq!(
            hours(T0 - HOUR, T0 + 48 * HOUR).await,
            [h0, h0 + 5, h0 + 30]
        );
        // Half open: an hour starting at `to` is out, one ending after
        // `from` is in.
        assert_eq!(hours(T0 + 1, T0 + 30 * HOUR).await, [h0, h0 + 5]);
        assert_eq!(
            hours(T0 + 6 * HOUR, T0 + 29 * HOUR).await,
            Vec::<i64>::new()
        );
        assert!(hours(T0, T0).await.is_empty());
        assert!(history.hours("nope", T0, T0 + HOUR).await.is_err());
    }

    #[tokio::test]
    async fn buffered_rows_outside_the_time_range_are_not_scanned() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("arch");
        let mut writer =
            ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        writer
            .append(0, 0, &vitals(&[T0, T0 + 5 * HOUR], 0), T0)
            .await
            .unwrap();
        let history = HistoryCatalog::new(store, prefix)
            .unwrap()
            .with_unflushed(writer.buffered_view())
            .unwrap();
        let sql = format!(
            "SELECT count(*) FROM vitals WHERE timestamp_unix_ms >= {}",
            T0 + HOUR
        );
        assert_eq!(count(&history, &sql).await, 1);
        let plan = history
            .dataframe(&sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        // One buffer (one batch) is in range; the hour-10 one is left out.
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        assert!(shown.contains("partition_sizes=[1]"), "{shown}");
        let rows = collect(plan, history.session().task_ctx()).await.unwrap();
        assert_eq!(rows[0].num_rows(), 1);
    }

    #[tokio::test]
    async fn alerts_are_queryable_by_time_and_patient() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("arch");
        let mut writer =
            ArchiveWriter::alerts(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
        let alert = |id: &str, patient: &str, t: i64| -> sql_rules::Alert {
            serde_json::from_value(serde_json::json!({
                "id": id, "rule_id": "tachy", "rule_version": 1, "rule_name": "Tachycardia",
                "severity": "high", "status": "fired", "key": {"patient_id": patient},
                "window_start_ms": null, "window_end_ms": null, "values": {"hr": 140},
                "event_time_ms": t, "fired_at_ms": t + 100,
                "explanation": {"condition": "hr > 130", "event_count": 1,
                                "first_event_ms": t, "last_event_ms": t},
            }))
            .unwrap()
        };
        let batch = alerts_to_batch(&[
            alert("a", "P1", T0),
            alert("b", "P2", T0 + 1_000),
            alert("c", "P1", T0 + 3 * HOUR),
        ])
        .unwrap();
        writer.append(-1, 0, &batch, T0).await.unwrap();
        writer.flush_all().await.unwrap();
        let later = alerts_to_batch(&[alert("d", "P1", T0 + 2)]).unwrap();
        writer.append(-1, 3, &later, T0).await.unwrap();

        let history = HistoryCatalog::new(store, prefix)
            .unwrap()
            .with_unflushed(writer.buffered_view())
            .unwrap();
        let sql = "SELECT id FROM alerts WHERE patient_id = 'P1' \
                   AND event_time < TIMESTAMP '2026-01-01T11:00:00Z' ORDER BY id";
        let batches = history.query(sql, &limits()).await.unwrap();
        let ids: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.column(0).as_string::<i32>().iter().flatten())
            .collect();
        assert_eq!(ids, ["a", "d"]);
    }

    #[tokio::test]
    async fn writes_and_file_access_are_refused_with_a_reason() {
        let history = HistoryCatalog::new(Arc::new(InMemory::new()), Path::default()).unwrap();
        let refused = [
            ("CREATE TABLE t AS SELECT 1", "DDL"),
            ("CREATE VIEW v AS SELECT * FROM vitals", "DDL"),
            ("DROP TABLE vitals", "DDL"),
            (
                "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
                "DDL",
            ),
            ("INSERT INTO vitals SELECT * FROM vitals", "DML"),
            ("DELETE FROM vitals", "DML"),
            ("COPY (SELECT 1) TO '/tmp/wardwatch-out.csv'", "COPY"),
            ("SET datafusion.execution.batch_size = 1", "Statement"),
            (
                "SELECT * FROM read_parquet('/etc/passwd')",
                "read_parquet() reads files",
            ),
            (
                "SELECT * FROM read_csv('/etc/passwd')",
                "read_csv() reads files",
            ),
        ];
        for (sql, why) in refused {
            let err = history.query(sql, &limits()).await.unwrap_err();
            assert!(
                matches!(err, CatalogError::QueryRefused { .. }),
                "{sql}: {err}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with("history queries are read-only"),
                "{message}"
            );
            assert!(message.contains(why), "{sql}: {message}");
        }
        // File paths as table names are not tables here.
        let err = history
            .query("SELECT * FROM '/etc/passwd'", &limits())
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::Query { .. }), "{err}");
        // Ordinary reads, EXPLAIN and the safe table functions still work.
        for sql in [
            "SELECT * FROM vitals",
            "EXPLAIN SELECT count(*) FROM alerts",
            "SELECT * FROM generate_series(1, 3)",
        ] {
            history.query(sql, &limits()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn results_over_the_row_limit_are_an_error_and_at_the_limit_are_not() {
        let history = HistoryCatalog::new(Arc::new(InMemory::new()), Path::default()).unwrap();
        let limits = QueryLimits {
            max_rows: 10,
            ..QueryLimits::default()
        };
        let at = history
            .query("SELECT * FROM generate_series(1, 10)", &limits)
            .await
            .unwrap();
        assert_eq!(at.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
        let err = history
            .query("SELECT * FROM generate_series(1, 1000000000)", &limits)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CatalogError::QueryTooLarge { limit: 10 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn size_amplifying_functions_are_bounded_per_call() {
        let history = HistoryCatalog::new(Arc::new(InMemory::new()), Path::default()).unwrap();
        // Within the bound they answer as DataFusion's own do.
        let n = count(
            &history,
            "SELECT CAST(length(repeat('ab', 1000)) AS BIGINT)",
        )
        .await;
        assert_eq!(n, 2000);
        let n = count(
            &history,
            "SELECT CAST(cardinality(range(1, 1001)) AS BIGINT)",
        )
        .await;
        assert_eq!(n, 1000);
        let n = count(
            &history,
            "SELECT CAST(length(concat(replace('P-0042', 'P', 'Q'), '/', lpad('7', 3, '0'))) AS BIGINT)",
        )
        .await;
        assert_eq!(n, 10);
        // `||` keeps its meaning: NULL in, NULL out; numbers become text;
        // lists concatenate, append and prepend.
        let text = |sql: &'static str| {
            let history = &history;
            async move {
                let batches = history.query(sql, &limits()).await.unwrap();
                let column = cast(batches[0].column(0), &DataType::Utf8).unwrap();
                let column = column.as_string::<i32>();
                (!column.is_null(0)).then(|| column.value(0).to_string())
            }
        };
        assert_eq!(
            text("SELECT 'P-' || '0042' || 7").await.as_deref(),
            Some("P-00427")
        );
        assert_eq!(text("SELECT 'a' || NULL").await, None);
        assert_eq!(
            text("SELECT array_to_string([1, 2] || [3] || 4, ',')")
                .await
                .as_deref(),
            Some("1,2,3,4")
        );
        assert_eq!(
            text("SELECT array_to_string(0 || [1, 2], ',')")
                .await
                .as_deref(),
            Some("0,1,2")
        );
        let n = count(
            &history,
            "SELECT CAST(count(*) AS BIGINT) FROM generate_series(1, 10) AS t(v) \
             WHERE 'P' || CAST(v AS VARCHAR) IN ('P3', 'P7')",
        )
        .await;
        assert_eq!(n, 2);
        // Two numbers: an error, as DataFusion's own operator gives.
        assert!(history.query("SELECT 1 || 2", &limits()).await.is_err());
        // The newly bounded functions still work within the bound.
        assert_eq!(
            text("SELECT encode('ab', 'hex') || translate('abc', 'b', 'x') || array_to_string(make_array(1, 2), '-')")
                .await
                .as_deref(),
            Some("6162axc1-2")
        );
        let started = std::time::Instant::now();
        for sql in [
            "SELECT length(repeat('x', 1000000000))",
            "SELECT length(lpad('x', 2000000000))",
            "SELECT cardinality(range(1, 10000000000))",
            "SELECT cardinality(array_repeat(1, 100000000))",
            "SELECT cardinality(generate_series(TIMESTAMP '1970-01-01', TIMESTAMP '2070-01-01', \
             INTERVAL '1 millisecond'))",
            // Each argument within the bound, the result far over it.
            "SELECT length(replace(repeat('a', 10000), 'a', repeat('b', 10000000)))",
            "SELECT length(regexp_replace(repeat('a', 100000), '', repeat('b', 100000), 'g'))",
            "SELECT cardinality(array_repeat(repeat('x', 16000000), 1000))",
            "SELECT length(concat(repeat('x', 8000000), repeat('x', 8000000), repeat('x', 8000000)))",
        ] {
            let err = history.query(sql, &limits()).await.unwrap_err();
            assert!(
                matches!(&err, CatalogError::QueryOverBudget { reason } if reason.contains("per function call")),
                "{sql}: {err}"
            );
        }
        // Refused before allocating: five gigabyte-sized calls take no time.
        assert!(started.elapsed() < Duration::from_secs(5));
        // The `||` operator, directly and doubling through CTEs (each step
        // within the bound until one is not); lists as well.
        for sql in [
            "SELECT length(repeat('x', 10000000) || repeat('y', 10000000))",
            "WITH a AS (SELECT repeat('x', 4000000) AS s), b AS (SELECT s || s AS s FROM a), \
             c AS (SELECT s || s AS s FROM b), d AS (SELECT s || s AS s FROM c) \
             SELECT length(s) FROM d",
            "SELECT cardinality(array_repeat(1, 1500000) || array_repeat(2, 1500000))",
            "SELECT cardinality(array_concat(array_repeat(1, 1500000), array_repeat(2, 1500000)))",
            // Other functions that grow their input, doubling through CTEs.
            "WITH a AS (SELECT repeat('x', 6000000) AS s), b AS (SELECT encode(s, 'hex') AS s FROM a), \
             c AS (SELECT encode(s, 'hex') AS s FROM b) SELECT length(s) FROM c",
            "WITH a AS (SELECT repeat('x', 6000000) AS s), \
             b AS (SELECT array_to_string(make_array(s, s), '') AS s FROM a), \
             c AS (SELECT array_to_string(make_array(s, s), '') AS s FROM b) SELECT length(s) FROM c",
            "SELECT length(translate(repeat('a', 6000000), 'a', '𝄞'))",
            "SELECT length(array_to_string(make_array(1, 2, 3, 4), repeat('-', 6000000)))",
        ] {
            let err = history.query(sql, &limits()).await.unwrap_err();
            assert!(
                matches!(&err, CatalogError::QueryOverBudget { reason } if reason.contains("per function call")),
                "{sql}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_query_over_its_memory_budget_is_stopped_and_others_still_run() {
        let small = QueryResources {
            max_memory_bytes: 1024 * 1024,
            ..QueryResources::default()
        };
        let history = HistoryCatalog::new(Arc::new(InMemory::new()), Path::default())
            .unwrap()
            .with_resources(small);
        // A million groups need far more than 1 MiB of hash table.
        let sql = "SELECT count(*) FROM (SELECT value FROM generate_series(1, 3000000) \
                   GROUP BY value)";
        let err = history.query(sql, &limits()).await.unwrap_err();
        assert!(
            matches!(&err, CatalogError::QueryOverBudget { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("more memory than one query may hold"),
            "{err}"
        );
        // The pool is the query's own: a small query right after runs.
        assert_eq!(
            count(&history, "SELECT count(*) FROM generate_series(1, 10)").await,
            10
        );
        // And with the default budget the same query answers.
        let history = history.with_resources(QueryResources::default());
        assert_eq!(count(&history, sql).await, 3_000_000);
    }

    #[tokio::test]
    async fn a_query_past_its_time_limit_is_cancelled() {
        let history = HistoryCatalog::new(Arc::new(InMemory::new()), Path::default()).unwrap();
        let limits = QueryLimits {
            timeout: Duration::from_millis(50),
            ..QueryLimits::default()
        };
        let started = std::time::Instant::now();
        let err = history
            .query(
                "SELECT count(*) FROM generate_series(1, 100000000000) a",
                &limits,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, CatalogError::QueryTimeout { limit_ms: 50 }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

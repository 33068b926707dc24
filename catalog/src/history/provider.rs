//! The archive tables as DataFusion sees them: a listing table over the
//! Parquet files of `vitals` or `alerts`, unioned with the rows the table's
//! writer still buffers, and pruned by event time (see [`super::pruning`]).
//!
//! The listing never includes a damaged file: before its first scan, a table
//! makes sure the session's archive store is wrapped in
//! [`SkipDamagedParquet`], so one half-written file is left out (counted and
//! logged) instead of failing every query over its hours.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use object_store::path::Path;

use super::pruning::{hour_partition_filters, time_bounds};
use super::ARCHIVE_STORE_URL;
use crate::archive::{hour_index, ArchiveTable, BufferedView, PendingFile, SkipDamagedParquet};

/// One archive table as DataFusion sees it: Parquet files plus buffered rows.
#[derive(Debug)]
pub(super) struct ArchiveTableProvider {
    pub(super) table: ArchiveTable,
    files: Arc<ListingTable>,
    /// The file columns followed by `date` and `hour`.
    schema: SchemaRef,
    pub(super) unflushed: Option<BufferedView>,
}

impl ArchiveTableProvider {
    pub(super) fn try_new(
        prefix: &Path,
        table: ArchiveTable,
        unflushed: Option<BufferedView>,
    ) -> Result<Self, DataFusionError> {
        let location = if prefix.as_ref().is_empty() {
            format!("{ARCHIVE_STORE_URL}{}/", table.name())
        } else {
            format!("{ARCHIVE_STORE_URL}{prefix}/{}/", table.name())
        };
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("date".to_string(), DataType::Utf8),
                ("hour".to_string(), DataType::Utf8),
            ]);
        let config = ListingTableConfig::new(ListingTableUrl::parse(&location)?)
            .with_listing_options(options)
            .with_schema(Arc::clone(table.schema()));
        let files = Arc::new(ListingTable::try_new(config)?);
        let schema = files.schema();
        Ok(Self {
            table,
            files,
            schema,
            unflushed,
        })
    }

    async fn scan_archive(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        // Snapshot the buffers before listing: a buffer flushed in between
        // then shows up in the listing and is dropped below, never missed.
        let pending = self
            .unflushed
            .as_ref()
            .map(BufferedView::snapshot)
            .unwrap_or_default();

        skip_damaged_files(state)?;
        let (from_ms, to_ms) = time_bounds(filters, self.table.pruning_columns());
        let mut file_filters = filters.to_vec();
        file_filters.extend(hour_partition_filters(from_ms, to_ms));
        let files = self
            .files
            .scan(state, projection, &file_filters, limit)
            .await?;
        if pending.is_empty() {
            return Ok(files);
        }

        let listed = listed_files(&files);
        let (from_hour, to_hour) = (from_ms.map(hour_index), to_ms.map(hour_index));
        let mut batches = Vec::new();
        for part in pending {
            let in_range = from_hour.is_none_or(|h| part.hour_index >= h)
                && to_hour.is_none_or(|h| part.hour_index <= h);
            if in_range && !listed.contains(&part.path) {
                self.add_partition_columns(&part, &mut batches)?;
            }
        }
        if batches.is_empty() {
            return Ok(files);
        }
        let memory =
            MemorySourceConfig::try_new(&[batches], Arc::clone(&self.schema), projection.cloned())?
                .with_limit(limit);
        UnionExec::try_new(vec![files, DataSourceExec::from_data_source(memory)])
    }

    /// Appends the buffered batches of `part` with its `date` and `hour`
    /// values as columns. These are per-query copies of two short strings
    /// per row, over rows that are at most a few flush intervals old.
    fn add_partition_columns(
        &self,
        part: &PendingFile,
        out: &mut Vec<RecordBatch>,
    ) -> Result<(), DataFusionError> {
        for batch in &part.batches {
            let rows = batch.num_rows();
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec![part.date.as_str(); rows])));
            columns.push(Arc::new(StringArray::from(vec![part.hour.as_str(); rows])));
            out.push(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
        }
        Ok(())
    }
}

impl TableProvider for ArchiveTableProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        // Inexact for everything: the files use filters to prune, and
        // DataFusion still applies them to every row, buffered ones included.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    // `TableProvider` is declared with `#[async_trait]`; the workspace does not
    // carry that crate, so this is the signature it expands to.
    fn scan<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        state: &'life1 dyn Session,
        projection: Option<&'life2 Vec<usize>>,
        filters: &'life3 [Expr],
        limit: Option<usize>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<Arc<dyn ExecutionPlan>, DataFusionError>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.scan_archive(state, projection, filters, limit))
    }
}

/// Wraps the session's archive store in [`SkipDamagedParquet`] unless it
/// already is (the first scan of a session does it; later ones find it done).
fn skip_damaged_files(state: &dyn Session) -> Result<(), DataFusionError> {
    let url = ObjectStoreUrl::parse(ARCHIVE_STORE_URL)?;
    let runtime = state.runtime_env();
    let store = runtime.object_store(&url)?;
    if !SkipDamagedParquet::wraps(store.as_ref()) {
        runtime.register_object_store(url.as_ref(), Arc::new(SkipDamagedParquet::new(store)));
    }
    Ok(())
}

/// The files a scan plan will read.
pub(super) fn listed_files(plan: &Arc<dyn ExecutionPlan>) -> HashSet<Path> {
    let mut paths = HashSet::new();
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
        {
            for group in &config.file_groups {
                paths.extend(group.iter().map(|f| f.object_meta.location.clone()));
            }
        }
        stack.extend(node.children().into_iter().cloned());
    }
    paths
}

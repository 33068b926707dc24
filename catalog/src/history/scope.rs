//! Hospital scope: a caller limited to some hospitals sees only their rows,
//! whatever SQL it writes.
//!
//! The limit is part of the plan, not of the SQL text. A scoped query is
//! planned in a session of its own whose only catalog holds
//!
//! - every shared table with a `hospital_id` column (`vitals`, `alerts`,
//!   `rules`, `rule_versions`) wrapped in a [`ScopedTable`], whose scans
//!   return only the caller's hospitals' rows (a row without a hospital is
//!   no one's, except in the rule tables, [`GLOBAL_ROW_TABLES`], where it
//!   is a global rule and everyone's);
//! - nothing else: a name such as `audit_log` (no hospital column to limit
//!   by) fails to plan with a message saying why. The rule is the column,
//!   not a list of names, so a table registered later is left out unless
//!   it can be limited.
//!
//! The shared session's catalogs are not in the scoped session at all, so no
//! spelling of a name (`datafusion.public.vitals`, another catalog or
//! schema, `information_schema`) reaches an unscoped table: every scan of a
//! hospital table, in a join, subquery, CTE or set operation, is a
//! [`ScopedTable`] scan.
//!
//! # The scan
//!
//! A [`ScopedTable`] scan is the inner table's scan under a [`ScopeExec`],
//! which keeps the rows whose `hospital_id` is one of the caller's (a NULL
//! hospital is no one's) and only then projects and applies `LIMIT`. The
//! inner scan is also given `hospital_id IN (…)` to prune files and row
//! groups with, but the answer never depends on it. [`ScopeExec`] is opaque
//! to DataFusion's optimizer: it reports unknown statistics (the inner
//! scan's row counts are the whole archive's), and no filter, projection,
//! limit or dynamic filter from above is pushed through it, so no
//! expression of the caller's is evaluated on another hospital's row (where
//! an error, such as a failed cast, would tell that the row exists). For
//! the same reason only filters that cannot fail on any row (a column
//! compared with a literal of its own type) are handed to the inner scan
//! for pruning.
//!
//! `EXPLAIN` is refused for scoped callers (see
//! [`HistoryCatalog::dataframe_scoped`](super::HistoryCatalog::dataframe_scoped)):
//! plans and their metrics describe the files and row counts of every
//! hospital.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    SchemaProvider, Session, TableProvider,
};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_expr::expressions::{binary, in_list, is_null, lit, Column};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::state_tables::{RULES, RULE_VERSIONS};

/// The column a scope limits rows by.
pub const HOSPITAL_COLUMN: &str = sql_rules::stream::col::HOSPITAL_ID;

/// Tables whose rows without a hospital every scoped caller sees: there
/// they are global rules (definitions, no patient data), which run over
/// every hospital's events, the caller's too.
pub const GLOBAL_ROW_TABLES: [&str; 2] = [RULES, RULE_VERSIONS];

/// The catalogs of a scoped session: the shared session's default schema,
/// limited to `hospitals` as the [module docs](self) describe, under the
/// same catalog and schema names (so qualified names keep working).
pub(super) async fn scoped_catalogs(
    shared: &SessionContext,
    hospitals: &[String],
) -> Result<Arc<dyn CatalogProviderList>, DataFusionError> {
    let hospitals: Arc<[String]> = hospitals
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let options = shared.copied_config();
    let (catalog_name, schema_name) = {
        let catalog = &options.options().catalog;
        (
            catalog.default_catalog.clone(),
            catalog.default_schema.clone(),
        )
    };

    let mut schema = ScopedSchema {
        tables: HashMap::new(),
        hidden: BTreeSet::new(),
    };
    let shared_schema = shared
        .catalog(&catalog_name)
        .and_then(|catalog| catalog.schema(&schema_name));
    if let Some(shared_schema) = shared_schema {
        for name in shared_schema.table_names() {
            let Some(table) = shared_schema.table(&name).await? else {
                continue;
            };
            if table.schema().field_with_name(HOSPITAL_COLUMN).is_ok() {
                let mut scoped = ScopedTable::try_new(table, Arc::clone(&hospitals))?;
                if GLOBAL_ROW_TABLES.contains(&name.as_str()) {
                    scoped = scoped.with_global_rows();
                }
                schema.tables.insert(name, Arc::new(scoped));
            } else {
                schema.hidden.insert(name.to_lowercase());
            }
        }
    }

    let catalog = MemoryCatalogProvider::new();
    catalog.register_schema(&schema_name, Arc::new(schema))?;
    let catalogs = MemoryCatalogProviderList::new();
    catalogs.register_catalog(catalog_name, Arc::new(catalog));
    Ok(Arc::new(catalogs))
}

/// The error for a table a scoped caller may not read.
fn not_available(name: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "table '{name}' is not available to a caller limited to hospitals: \
         it has no {HOSPITAL_COLUMN} column to limit it by"
    ))
}

/// The default schema of a scoped session. Read-only: registering a table
/// is refused (DataFusion's default), and DDL is refused before that.
#[derive(Debug)]
struct ScopedSchema {
    tables: HashMap<String, Arc<dyn TableProvider>>,
    /// Shared tables left out, lowercased, to say why a query naming one
    /// fails (in any case: `"ALERTS"` is refused the same way).
    hidden: BTreeSet<String>,
}

impl ScopedSchema {
    fn lookup(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if let Some(table) = self.tables.get(name) {
            return Ok(Some(Arc::clone(table)));
        }
        if self.hidden.contains(&name.to_lowercase()) {
            return Err(not_available(name));
        }
        Ok(None)
    }
}

impl SchemaProvider for ScopedSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    // `SchemaProvider` is declared with `#[async_trait]`; the workspace does
    // not carry that crate, so this is the signature it expands to.
    fn table<'life0, 'life1, 'async_trait>(
        &'life0 self,
        name: &'life1 str,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<Option<Arc<dyn TableProvider>>, DataFusionError>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let found = self.lookup(name);
        Box::pin(async move { found })
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

/// A table with a hospital column, limited to some hospitals; see the
/// [module docs](self).
#[derive(Debug)]
pub struct ScopedTable {
    inner: Arc<dyn TableProvider>,
    /// Sorted, without duplicates.
    hospitals: Arc<[String]>,
    /// Whether rows without a hospital are everyone's (global rules)
    /// rather than no one's.
    global_rows: bool,
}

impl ScopedTable {
    /// `inner` limited to the rows whose [`HOSPITAL_COLUMN`] is one of
    /// `hospitals`; an error if `inner` has no such column.
    pub fn try_new(
        inner: Arc<dyn TableProvider>,
        hospitals: Arc<[String]>,
    ) -> Result<Self, DataFusionError> {
        inner.schema().field_with_name(HOSPITAL_COLUMN)?;
        Ok(Self {
            inner,
            hospitals,
            global_rows: false,
        })
    }

    /// Also the rows without a hospital, which are everyone's here (see
    /// [`GLOBAL_ROW_TABLES`]).
    pub fn with_global_rows(mut self) -> Self {
        self.global_rows = true;
        self
    }

    async fn scan_scoped(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let schema = self.inner.schema();
        if self.hospitals.is_empty() && !self.global_rows {
            // No hospital: nothing to read.
            let projected = match projection {
                Some(columns) => Arc::new(schema.project(columns)?),
                None => schema,
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let hospital = schema.index_of(HOSPITAL_COLUMN)?;
        // The inner scan reads the hospital column too, even if the query
        // does not; it is projected away above the scope filter.
        let (inner_projection, output) = match projection {
            None => (None, None),
            Some(columns) if columns.contains(&hospital) => (Some(columns.clone()), None),
            Some(columns) => {
                let mut with_hospital = columns.clone();
                with_hospital.push(hospital);
                (Some(with_hospital), Some((0..columns.len()).collect()))
            }
        };
        let hints = pruning_hints(filters, &schema, &self.hospitals, self.global_rows);
        // No limit for the inner scan: its first rows may all be other
        // hospitals'. `ScopeExec` stops at the limit after filtering.
        let input = self
            .inner
            .scan(state, inner_projection.as_ref(), &hints, None)
            .await?;
        Ok(Arc::new(ScopeExec::try_new(
            input,
            Arc::clone(&self.hospitals),
            self.global_rows,
            output,
            limit,
        )?))
    }
}

impl TableProvider for ScopedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        // Inexact: DataFusion applies every filter above the scan (above
        // `ScopeExec`), on the caller's rows only; the scan may use the safe
        // ones to prune.
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
        Box::pin(self.scan_scoped(state, projection, filters, limit))
    }
}

/// What the inner scan of a [`ScopedTable`] is given to prune with: the
/// scope itself, and the conjuncts of the caller's `filters` that cannot
/// fail on any row. Hints only: DataFusion applies all of the caller's
/// filters above the scan (they are `Inexact`), and [`ScopeExec`] applies
/// the scope, whatever the inner scan does with these.
fn pruning_hints(
    filters: &[Expr],
    schema: &Schema,
    hospitals: &[String],
    global_rows: bool,
) -> Vec<Expr> {
    use datafusion::logical_expr::{col, lit};
    let mut hints: Vec<Expr> = filters
        .iter()
        .flat_map(split_conjunction)
        .filter(|f| cannot_fail(f, schema))
        .cloned()
        .collect();
    let mine = (!hospitals.is_empty()).then(|| {
        col(HOSPITAL_COLUMN).in_list(hospitals.iter().map(|h| lit(h.as_str())).collect(), false)
    });
    let everyones = global_rows.then(|| col(HOSPITAL_COLUMN).is_null());
    hints.extend(match (mine, everyones) {
        (Some(mine), Some(everyones)) => Some(mine.or(everyones)),
        (mine, everyones) => mine.or(everyones),
    });
    hints
}

/// Whether `expr` can be evaluated on any row of `schema` without an error:
/// a column compared with (or between, or in a list of) literals of its own
/// type, a column's null test, and `AND`/`OR`/`NOT` of those. Comparison
/// kernels do not fail on values; casts and functions may.
fn cannot_fail(expr: &Expr, schema: &Schema) -> bool {
    let column_type = |e: &Expr| match e {
        Expr::Column(c) => schema
            .field_with_name(&c.name)
            .ok()
            .map(|f| f.data_type().clone()),
        _ => None,
    };
    let literal_of =
        |e: &Expr, ty: &DataType| matches!(e, Expr::Literal(v, _) if v.data_type() == *ty);
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => cannot_fail(left, schema) && cannot_fail(right, schema),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => match (column_type(left), column_type(right)) {
                (Some(ty), _) => literal_of(right, &ty),
                (None, Some(ty)) => literal_of(left, &ty),
                (None, None) => false,
            },
            _ => false,
        },
        Expr::Between(Between {
            expr, low, high, ..
        }) => column_type(expr).is_some_and(|ty| literal_of(low, &ty) && literal_of(high, &ty)),
        Expr::InList(InList { expr, list, .. }) => {
            column_type(expr).is_some_and(|ty| list.iter().all(|e| literal_of(e, &ty)))
        }
        Expr::IsNull(e) | Expr::IsNotNull(e) => column_type(e).is_some(),
        Expr::Not(e) => cannot_fail(e, schema),
        _ => false,
    }
}

/// Keeps the rows of `input` whose [`HOSPITAL_COLUMN`] is one of a scope's
/// hospitals, then projects and stops at a limit. See the
/// [module docs](self) for why it is opaque to the optimizer.
#[derive(Debug, Clone)]
pub struct ScopeExec {
    input: Arc<dyn ExecutionPlan>,
    hospitals: Arc<[String]>,
    /// Whether rows without a hospital are kept (see [`GLOBAL_ROW_TABLES`]).
    global_rows: bool,
    /// `hospital_id IN (…)` (`OR hospital_id IS NULL` with `global_rows`)
    /// over `input`'s schema.
    predicate: Arc<dyn PhysicalExpr>,
    /// Columns of `input` to output; all of them if `None`.
    projection: Option<Vec<usize>>,
    /// Rows to output at most, per partition.
    fetch: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl ScopeExec {
    fn try_new(
        input: Arc<dyn ExecutionPlan>,
        hospitals: Arc<[String]>,
        global_rows: bool,
        projection: Option<Vec<usize>>,
        fetch: Option<usize>,
    ) -> Result<Self, DataFusionError> {
        let input_schema = input.schema();
        let index = input_schema.index_of(HOSPITAL_COLUMN)?;
        let data_type = input_schema.field(index).data_type();
        // The scope's names as values of the column's own type, so the
        // comparison is exact (a column of another type fails here).
        let list = hospitals
            .iter()
            .map(|h| {
                ScalarValue::Utf8(Some(h.clone()))
                    .cast_to(data_type)
                    .map(|v| lit(v) as Arc<dyn PhysicalExpr>)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(HOSPITAL_COLUMN, index));
        let mine = if list.is_empty() {
            None
        } else {
            Some(in_list(Arc::clone(&column), list, &false, &input_schema)?)
        };
        let everyones = if global_rows {
            Some(is_null(column)?)
        } else {
            None
        };
        let predicate = match (mine, everyones) {
            (Some(mine), Some(everyones)) => binary(mine, Operator::Or, everyones, &input_schema)?,
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => lit(false),
        };
        let schema = match &projection {
            Some(columns) => Arc::new(input_schema.project(columns)?),
            None => input_schema,
        };
        // Only what holds after dropping rows and columns: the partition
        // count and how the input emits. Orderings and equivalences are not
        // carried over (the archive scans declare none).
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Ok(Self {
            input,
            hospitals,
            global_rows,
            predicate,
            projection,
            fetch,
            properties: Arc::new(properties),
        })
    }

    /// The scope's hospitals.
    pub fn hospitals(&self) -> &[String] {
        &self.hospitals
    }

    /// The scope's rows of `batch`, projected.
    fn apply(
        predicate: &dyn PhysicalExpr,
        projection: Option<&[usize]>,
        batch: &RecordBatch,
    ) -> Result<RecordBatch, DataFusionError> {
        let mask = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
        let Some(mask) = mask.as_boolean_opt() else {
            return Err(DataFusionError::Internal(
                "the hospital scope predicate is not boolean".to_string(),
            ));
        };
        // NULL (a NULL hospital) counts as false.
        let kept = filter_record_batch(batch, mask)?;
        Ok(match projection {
            Some(columns) => kept.project(columns)?,
            None => kept,
        })
    }
}

impl DisplayAs for ScopeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ScopeExec: {HOSPITAL_COLUMN} in {} hospital(s)",
            self.hospitals.len()
        )?;
        if self.global_rows {
            write!(f, " or null")?;
        }
        if let Some(fetch) = self.fetch {
            write!(f, ", fetch={fetch}")?;
        }
        Ok(())
    }
}

// Every method left at its default is what keeps this node a barrier:
// unknown statistics, no filter or projection pushed through, no limit
// pushdown, no sort pushed below it (`maintains_input_order` is false, so a
// sort is never moved under it to sort every hospital's rows).
impl ExecutionPlan for ScopeExec {
    fn name(&self) -> &str {
        "ScopeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion, DataFusionError>,
    ) -> Result<TreeNodeRecursion, DataFusionError> {
        f(&self.predicate)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "ScopeExec has one input, not {}",
                children.len()
            )));
        }
        let input = children.swap_remove(0);
        // The predicate and projection are by column position: a new input
        // must have the very same columns.
        let (old, new) = (self.input.schema(), input.schema());
        let same_columns = old.fields().len() == new.fields().len()
            && old
                .fields()
                .iter()
                .zip(new.fields().iter())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same_columns {
            return Err(DataFusionError::Internal(
                "ScopeExec's input cannot change its columns".to_string(),
            ));
        }
        match options.children_properties {
            ChildrenPropertiesMode::Keep => Ok(Arc::new(Self {
                input,
                ..Self::clone(&*self)
            })),
            ChildrenPropertiesMode::Recompute => Ok(Arc::new(Self::try_new(
                input,
                Arc::clone(&self.hospitals),
                self.global_rows,
                self.projection.clone(),
                self.fetch,
            )?)),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream, DataFusionError> {
        let input = self.input.execute(partition, context)?;
        let predicate = Arc::clone(&self.predicate);
        let projection = self.projection.clone();
        let rows = input
            .map(move |batch| {
                batch.and_then(|b| Self::apply(predicate.as_ref(), projection.as_deref(), &b))
            })
            .scan(self.fetch, |left, batch| {
                let next = match (left.as_mut(), batch) {
                    (Some(0), Ok(_)) => None,
                    (Some(left), Ok(batch)) => {
                        let take = batch.num_rows().min(*left);
                        *left -= take;
                        Some(Ok(batch.slice(0, take)))
                    }
                    (_, batch) => Some(batch),
                };
                futures::future::ready(next)
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), rows)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{Array, StringArray};
    use arrow::datatypes::{Int64Type, UInt32Type};
    use datafusion::datasource::memory::DataSourceExec;
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::ObjectStore;
    use sql_rules::stream::idx;

    use super::*;
    use crate::archive::sample::{times, vitals, HOUR, T0};
    use crate::archive::{ArchiveConfig, ArchiveWriter};
    use crate::history::{HistoryCatalog, QueryLimits};
    use crate::log::JsonLog;
    use crate::rules::{RuleDraft, RuleStore};
    use crate::CatalogError;

    /// One archived event as the tests check it.
    #[derive(Debug, Clone)]
    struct Row {
        hospital: Option<String>,
        patient: String,
        seq: u32,
    }

    /// A vitals batch, one event a second from `start_ms`, whose row `i`
    /// belongs to `hospitals[i]` (`None`: a row without a hospital).
    fn vitals_of(hospitals: &[Option<&str>], start_ms: i64, first_seq: u32) -> RecordBatch {
        let sample = vitals(&times(start_ms, hospitals.len(), 1_000), first_seq);
        let mut columns = sample.columns().to_vec();
        columns[idx::HOSPITAL_ID] = Arc::new(StringArray::from(hospitals.to_vec()));
        RecordBatch::try_new(sample.schema(), columns).unwrap()
    }

    fn rows_of(batch: &RecordBatch) -> Vec<Row> {
        let hospital = batch.column(idx::HOSPITAL_ID).as_string::<i32>();
        let patient = batch.column(idx::PATIENT_ID).as_string::<i32>();
        let seq = batch
            .column(idx::SEQUENCE_NUMBER)
            .as_primitive::<UInt32Type>();
        (0..batch.num_rows())
            .map(|i| Row {
                hospital: hospital.is_valid(i).then(|| hospital.value(i).to_string()),
                patient: patient.value(i).to_string(),
                seq: seq.value(i),
            })
            .collect()
    }

    fn repeat(hospital: Option<&'static str>, n: usize) -> Vec<Option<&'static str>> {
        vec![hospital; n]
    }

    /// An archive of three hospitals (and rows of none) in Parquet files and
    /// in the writer's buffer, other hospitals' rows first in each, with
    /// the state tables registered.
    struct Fixture {
        history: HistoryCatalog,
        rows: Vec<Row>,
        rules: i64,
        /// Alerts of h1 (of 5 archived).
        alerts_h1: i64,
        /// Holds the buffered rows the history reads.
        _writer: ArchiveWriter,
    }

    impl Fixture {
        async fn new() -> Self {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let prefix = Path::from("arch");
            let mut writer =
                ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
            let mut rows = Vec::new();

            // Hour 0, partition 0: h2's rows first, then h1's, h3's, none's.
            let hospitals = [
                repeat(Some("h2"), 30),
                repeat(Some("h1"), 10),
                repeat(Some("h3"), 5),
                repeat(None, 2),
            ]
            .concat();
            let batch = vitals_of(&hospitals, T0, 0);
            rows.extend(rows_of(&batch));
            writer.append(0, 0, &batch, T0).await.unwrap();
            writer.flush_partition(0).await.unwrap();
            // Hour 1, partition 1: only h2.
            let batch = vitals_of(&repeat(Some("h2"), 20), T0 + HOUR, 100);
            rows.extend(rows_of(&batch));
            writer.append(1, 0, &batch, T0).await.unwrap();
            writer.flush_partition(1).await.unwrap();
            // Hour 1, partition 0: h2 and h1 taking turns.
            let hospitals: Vec<Option<&str>> = (0..14)
                .map(|i| Some(if i % 2 == 0 { "h2" } else { "h1" }))
                .collect();
            let batch = vitals_of(&hospitals, T0 + HOUR, 200);
            rows.extend(rows_of(&batch));
            writer.append(0, 100, &batch, T0).await.unwrap();
            writer.flush_partition(0).await.unwrap();
            // Hour 2, buffered (not flushed): h2 first, then h1.
            let hospitals = [repeat(Some("h2"), 6), repeat(Some("h1"), 4)].concat();
            let batch = vitals_of(&hospitals, T0 + 2 * HOUR, 300);
            rows.extend(rows_of(&batch));
            writer.append(0, 200, &batch, T0).await.unwrap();
            assert_eq!(writer.buffered_rows(), 10);

            // Alerts of h1, h2 and of no hospital. (Before alerts had a
            // hospital, `hospital_id` is ignored and the table is refused
            // to a limited caller.)
            let alert = |id: &str, hospital: Option<&str>| -> sql_rules::Alert {
                serde_json::from_value(serde_json::json!({
                    "id": id, "rule_id": "tachy", "rule_version": 1, "rule_name": "Tachycardia",
                    "severity": "high", "status": "fired", "key": {"patient_id": "P1"},
                    "hospital_id": hospital,
                    "window_start_ms": null, "window_end_ms": null, "values": {"hr": 140},
                    "event_time_ms": T0, "fired_at_ms": T0 + 100,
                    "explanation": {"condition": "hr > 130", "event_count": 1,
                                    "first_event_ms": T0, "last_event_ms": T0},
                }))
                .unwrap()
            };
            let alerts = [
                alert("a", Some("h2")),
                alert("b", Some("h1")),
                alert("c", None),
                alert("d", Some("h2")),
                alert("e", Some("h1")),
            ];
            let mut alert_writer =
                ArchiveWriter::alerts(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
            alert_writer
                .append(
                    -1,
                    0,
                    &crate::archive::alerts_to_batch(&alerts).unwrap(),
                    T0,
                )
                .await
                .unwrap();
            alert_writer.flush_all().await.unwrap();

            let history = HistoryCatalog::new(Arc::clone(&store), prefix)
                .unwrap()
                .with_unflushed(writer.buffered_view())
                .unwrap();
            let rule_store = RuleStore::open(Arc::clone(&store), Path::default())
                .await
                .unwrap();
            let audit = Arc::new(
                JsonLog::open(Arc::clone(&store), Path::default(), "audit_log")
                    .await
                    .unwrap(),
            );
            history
                .register_state_tables(rule_store.clone(), Arc::clone(&audit))
                .unwrap();
            for (i, name) in ["Low SpO2", "Tachycardia"].into_iter().enumerate() {
                rule_store
                    .create(RuleDraft::new(name, "SELECT 1"), 1_000 + i as i64)
                    .await
                    .unwrap();
            }
            audit
                .append(&[serde_json::json!({"at_ms": 1_000, "action": "rule_created"})])
                .await
                .unwrap();
            Self {
                history,
                rows,
                rules: 2,
                alerts_h1: 2,
                _writer: writer,
            }
        }

        /// The rows of `hospitals`.
        fn of(&self, hospitals: &[&str]) -> Vec<&Row> {
            self.rows
                .iter()
                .filter(|r| {
                    r.hospital
                        .as_deref()
                        .is_some_and(|h| hospitals.contains(&h))
                })
                .collect()
        }

        async fn run(
            &self,
            scope: Option<&[&str]>,
            sql: &str,
        ) -> Result<Vec<RecordBatch>, CatalogError> {
            let scope: Option<Vec<String>> =
                scope.map(|s| s.iter().map(|h| h.to_string()).collect());
            self.history
                .query_scoped(sql, &QueryLimits::default(), scope.as_deref())
                .await
        }

        async fn h1(&self, sql: &str) -> Result<Vec<RecordBatch>, CatalogError> {
            self.run(Some(&["h1"]), sql).await
        }

        /// The single BIGINT `sql` answers for a caller limited to h1.
        async fn h1_count(&self, sql: &str) -> i64 {
            let batches = self.h1(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            single(&batches, sql)
        }
    }

    fn single(batches: &[RecordBatch], sql: &str) -> i64 {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 1, "{sql}");
        let batch = batches.iter().find(|b| b.num_rows() == 1).unwrap();
        batch.column(0).as_primitive::<Int64Type>().value(0)
    }

    fn row_count(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The values of the string column `name`, in order (NULL as `None`).
    fn strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
        batches
            .iter()
            .flat_map(|b| {
                let column = b.column_by_name(name).unwrap().as_string::<i32>();
                column
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn only_h1(values: &[Option<String>]) -> bool {
        values.iter().all(|v| v.as_deref() == Some("h1"))
    }

    #[tokio::test]
    async fn a_caller_limited_to_h1_sees_only_h1_rows_whatever_the_sql() {
        let f = Fixture::new().await;
        let h1 = f.of(&["h1"]);
        let n = h1.len() as i64;
        assert_eq!(n, 10 + 7 + 4, "the fixture");

        // Plain select: exactly h1's events.
        let batches = f
            .h1("SELECT hospital_id, sequence_number FROM vitals")
            .await
            .unwrap();
        assert!(only_h1(&strings(&batches, "hospital_id")));
        let mut seqs: Vec<u32> = batches
            .iter()
            .flat_map(|b| b.column(1).as_primitive::<UInt32Type>().values().to_vec())
            .collect();
        seqs.sort_unstable();
        let mut expected: Vec<u32> = h1.iter().map(|r| r.seq).collect();
        expected.sort_unstable();
        assert_eq!(seqs, expected);

        // Counts, however the table is named or combined.
        let mut per_patient: BTreeMap<&str, i64> = BTreeMap::new();
        for row in &h1 {
            *per_patient.entry(row.patient.as_str()).or_default() += 1;
        }
        let self_join: i64 = per_patient.values().map(|c| c * c).sum();
        let patients = per_patient.len() as i64;
        let counts = [
            ("SELECT count(*) FROM vitals", n),
            ("SELECT count(*) FROM datafusion.public.vitals", n),
            ("SELECT count(*) FROM public.vitals", n),
            ("SELECT count(*) FROM Vitals", n),
            ("SELECT count(*) FROM VITALS", n),
            ("SELECT count(*) FROM \"vitals\"", n),
            (
                "SELECT count(*) FROM vitals a JOIN vitals b ON a.patient_id = b.patient_id",
                self_join,
            ),
            (
                "SELECT count(*) FROM vitals a JOIN datafusion.public.vitals b \
                 ON a.patient_id = b.patient_id AND b.hospital_id = 'h2'",
                0,
            ),
            (
                "SELECT count(*) FROM vitals CROSS JOIN rules",
                n * f.rules,
            ),
            (
                "SELECT count(*) FROM rules r JOIN vitals v ON v.hospital_id <> r.id",
                n * f.rules,
            ),
            ("SELECT (SELECT count(*) FROM vitals)", n),
            (
                "SELECT count(*) FROM rules WHERE (SELECT count(*) FROM vitals) = 21",
                if n == 21 { f.rules } else { 0 },
            ),
            (
                "SELECT count(*) FROM vitals WHERE patient_id IN \
                 (SELECT patient_id FROM vitals WHERE hospital_id = 'h2')",
                0,
            ),
            (
                "SELECT count(*) FROM vitals WHERE patient_id NOT IN \
                 (SELECT patient_id FROM vitals WHERE hospital_id = 'h2')",
                n,
            ),
            (
                "SELECT count(*) FROM rules WHERE EXISTS \
                 (SELECT 1 FROM vitals WHERE hospital_id = 'h2')",
                0,
            ),
            (
                "SELECT count(*) FROM rules WHERE NOT EXISTS \
                 (SELECT 1 FROM vitals WHERE hospital_id IN ('h2', 'h3') OR hospital_id IS NULL)",
                f.rules,
            ),
            (
                "SELECT count(*) FROM vitals v WHERE EXISTS \
                 (SELECT 1 FROM vitals w WHERE w.patient_id = v.patient_id AND w.hospital_id <> 'h1')",
                0,
            ),
            (
                "SELECT count(*) FROM (SELECT hospital_id FROM vitals WHERE hospital_id = 'h2' \
                 UNION ALL SELECT hospital_id FROM vitals)",
                n,
            ),
            (
                "SELECT count(*) FROM (SELECT hospital_id FROM vitals UNION SELECT 'h2')",
                2,
            ),
            (
                "SELECT count(*) FROM (SELECT patient_id FROM vitals \
                 INTERSECT SELECT patient_id FROM vitals)",
                patients,
            ),
            (
                "SELECT count(*) FROM (SELECT 'h2' EXCEPT SELECT hospital_id FROM vitals)",
                1,
            ),
            ("WITH v AS (SELECT * FROM vitals) SELECT count(*) FROM v", n),
            (
                "WITH v AS (SELECT * FROM datafusion.public.vitals WHERE hospital_id <> 'h1') \
                 SELECT count(*) FROM v",
                0,
            ),
            (
                "WITH RECURSIVE r(k, h) AS (SELECT 1, hospital_id FROM vitals \
                 UNION ALL SELECT k + 1, h FROM r WHERE k < 3) \
                 SELECT count(*) FROM r",
                3 * n,
            ),
            (
                "WITH RECURSIVE r(k, h) AS (SELECT 1, hospital_id FROM vitals \
                 UNION ALL SELECT k + 1, h FROM r WHERE k < 3) \
                 SELECT count(*) FROM r WHERE h <> 'h1'",
                0,
            ),
            (
                "SELECT count(*) FROM generate_series(1, 3) g CROSS JOIN vitals",
                3 * n,
            ),
            (
                "SELECT count(*) FROM range(2) r JOIN vitals v ON v.hospital_id = 'h2'",
                0,
            ),
            (
                "SELECT count(*) FROM (SELECT unnest(make_array(hospital_id, patient_id)) AS u \
                 FROM vitals)",
                2 * n,
            ),
            (
                "SELECT count(*) FROM (SELECT unnest(make_array(hospital_id)) AS h FROM vitals) \
                 WHERE h <> 'h1'",
                0,
            ),
            (
                "SELECT count(*) FROM vitals WHERE hospital_id = 'h2' OR hospital_id IS NULL",
                0,
            ),
            (
                "SELECT CAST(max(k) AS BIGINT) FROM \
                 (SELECT row_number() OVER (ORDER BY sequence_number) AS k FROM vitals)",
                n,
            ),
            // A filter that fails on any h2 row (a cast of 'P0' to a
            // number) is never evaluated on one: it runs above the scope.
            (
                "SELECT count(*) FROM vitals \
                 WHERE CASE WHEN hospital_id = 'h2' THEN CAST(patient_id AS INT) ELSE 1 END = 1",
                n,
            ),
            (
                "SELECT count(*) FROM vitals \
                 WHERE CASE WHEN hospital_id = 'h2' THEN CAST(hospital_id AS INT) ELSE 1 END = 1",
                n,
            ),
            (
                "SELECT count(*) FROM vitals a JOIN vitals b ON a.patient_id = b.patient_id \
                 WHERE CASE WHEN b.hospital_id = 'h2' THEN CAST(b.hospital_id AS INT) ELSE 1 END = 1",
                self_join,
            ),
        ];
        for (sql, expected) in counts {
            assert_eq!(f.h1_count(sql).await, expected, "{sql}");
        }
        // The failing filter does fail when h2's rows are there to see.
        let sql = "SELECT count(*) FROM vitals \
                   WHERE CASE WHEN hospital_id = 'h2' THEN CAST(patient_id AS INT) ELSE 1 END = 1";
        assert!(f.run(None, sql).await.is_err());

        // Aggregates name only h1.
        let batches = f
            .h1("SELECT hospital_id, count(*) AS n FROM vitals GROUP BY 1")
            .await
            .unwrap();
        assert_eq!(strings(&batches, "hospital_id"), [Some("h1".to_string())]);
        assert_eq!(single(&[batches[0].project(&[1]).unwrap()], "n"), n);

        // LIMIT counts h1's rows, though h2's come first in every file and
        // in the buffer.
        for sql in [
            "SELECT hospital_id FROM vitals LIMIT 5",
            "SELECT * FROM vitals LIMIT 5",
            "SELECT hospital_id FROM vitals WHERE patient_id <> 'none' LIMIT 5",
            "SELECT hospital_id FROM (SELECT * FROM vitals LIMIT 5)",
        ] {
            let batches = f.h1(sql).await.unwrap();
            let hospitals = strings(&batches, "hospital_id");
            assert_eq!(hospitals.len(), 5, "{sql}");
            assert!(only_h1(&hospitals), "{sql}");
        }
        // Ordering with a limit (TopK) picks among h1's rows.
        let batches = f
            .h1("SELECT hospital_id, sequence_number FROM vitals ORDER BY sequence_number LIMIT 3")
            .await
            .unwrap();
        let top: Vec<u32> = batches
            .iter()
            .flat_map(|b| b.column(1).as_primitive::<UInt32Type>().values().to_vec())
            .collect();
        assert_eq!(top, expected[..3]);
        assert!(only_h1(&strings(&batches, "hospital_id")));

        // Rows from both sides of a self-join and of a set operation.
        let batches = f
            .h1("SELECT DISTINCT b.hospital_id FROM vitals a \
                 JOIN vitals b ON a.patient_id = b.patient_id")
            .await
            .unwrap();
        assert_eq!(strings(&batches, "hospital_id"), [Some("h1".to_string())]);

        // Describing the table shows columns, not rows.
        let batches = f.h1("DESCRIBE vitals").await.unwrap();
        assert!(row_count(&batches) > 0);
    }

    #[tokio::test]
    async fn tables_without_a_hospital_and_explain_are_refused_to_a_limited_caller() {
        let f = Fixture::new().await;
        // A table registered later, without a hospital column: left out too
        // (the rule is the column, not a list of names).
        let staff = RecordBatch::try_new(
            Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
                "name",
                DataType::Utf8,
                false,
            )])),
            vec![Arc::new(StringArray::from(vec!["Ann"]))],
        )
        .unwrap();
        let staff = MemTable::try_new(staff.schema(), vec![vec![staff]]).unwrap();
        f.history
            .session()
            .register_table("staff", Arc::new(staff))
            .unwrap();
        let mut refused = vec![
            ("SELECT count(*) FROM audit_log", "audit_log"),
            ("SELECT * FROM public.audit_log", "audit_log"),
            ("SELECT * FROM datafusion.public.audit_log", "audit_log"),
            ("SELECT * FROM \"AUDIT_LOG\"", "AUDIT_LOG"),
            (
                "WITH a AS (SELECT * FROM audit_log) SELECT count(*) FROM a",
                "audit_log",
            ),
            (
                "SELECT count(*) FROM vitals WHERE patient_id IN (SELECT action FROM audit_log)",
                "audit_log",
            ),
            ("DESCRIBE audit_log", "audit_log"),
            ("SELECT * FROM staff", "staff"),
        ];
        let alerts_have_hospitals = crate::archive::alerts_schema()
            .field_with_name(HOSPITAL_COLUMN)
            .is_ok();
        if alerts_have_hospitals {
            // Alerts that name their hospital are limited like vitals.
            for (sql, expected) in [
                ("SELECT count(*) FROM alerts", f.alerts_h1),
                ("SELECT count(*) FROM datafusion.public.alerts", f.alerts_h1),
                (
                    "SELECT count(*) FROM alerts WHERE hospital_id IS DISTINCT FROM 'h1'",
                    0,
                ),
                (
                    "SELECT count(*) FROM alerts a JOIN vitals v ON a.patient_id = v.patient_id \
                     WHERE v.hospital_id <> 'h1'",
                    0,
                ),
            ] {
                assert_eq!(f.h1_count(sql).await, expected, "{sql}");
            }
            let batches = f.run(None, "SELECT count(*) FROM alerts").await.unwrap();
            assert_eq!(single(&batches, "count"), 5);
        } else {
            refused.extend([
                ("SELECT * FROM alerts", "alerts"),
                ("SELECT * FROM datafusion.public.alerts", "alerts"),
                ("SELECT * FROM \"ALERTS\"", "ALERTS"),
                (
                    "SELECT count(*) FROM vitals WHERE patient_id IN (SELECT patient_id FROM alerts)",
                    "alerts",
                ),
            ]);
        }
        for (sql, table) in refused {
            let err = f.h1(sql).await.unwrap_err();
            assert!(matches!(err, CatalogError::Query { .. }), "{sql}: {err}");
            let message = err.to_string();
            assert!(
                message.contains(&format!(
                    "table '{table}' is not available to a caller limited to hospitals"
                )),
                "{sql}: {message}"
            );
        }
        // The unlimited caller still reads it.
        f.run(None, "SELECT * FROM staff").await.unwrap();
        // Other catalogs and schemas hold nothing: not the shared session's
        // tables either.
        for sql in [
            // Quoted names are case-sensitive: there is no "VITALS" table.
            "SELECT * FROM \"VITALS\"",
            "SELECT * FROM \"Vitals\"",
            "SELECT * FROM other.public.vitals",
            "SELECT * FROM datafusion.other.vitals",
            "SELECT * FROM information_schema.tables",
            "SHOW TABLES",
            "SHOW COLUMNS FROM vitals",
        ] {
            let err = f.h1(sql).await.unwrap_err();
            assert!(matches!(err, CatalogError::Query { .. }), "{sql}: {err}");
        }
        for sql in [
            "EXPLAIN SELECT count(*) FROM vitals",
            "EXPLAIN VERBOSE SELECT count(*) FROM vitals",
            "EXPLAIN ANALYZE SELECT count(*) FROM vitals",
            "EXPLAIN SELECT 1",
        ] {
            let err = f.h1(sql).await.unwrap_err();
            assert!(
                err.to_string()
                    .contains("EXPLAIN is not available to a caller limited to hospitals"),
                "{sql}: {err}"
            );
        }
        // Still read-only, with the same refusals as everyone.
        for sql in [
            "DROP TABLE vitals",
            "CREATE VIEW v AS SELECT * FROM vitals",
            "INSERT INTO vitals SELECT * FROM vitals",
            "COPY (SELECT * FROM vitals) TO '/tmp/wardwatch-scope.csv'",
            "SELECT * FROM read_parquet('/etc/passwd')",
        ] {
            let err = f.h1(sql).await.unwrap_err();
            assert!(
                matches!(err, CatalogError::QueryRefused { .. }),
                "{sql}: {err}"
            );
        }
        // The rule tables are readable.
        assert_eq!(f.h1_count("SELECT count(*) FROM rules").await, f.rules);
        assert_eq!(
            f.h1_count("SELECT count(*) FROM datafusion.public.rule_versions")
                .await,
            f.rules
        );
    }

    #[tokio::test]
    async fn an_unlimited_caller_sees_every_hospital_and_table() {
        let f = Fixture::new().await;
        let total = f.rows.len() as i64;
        for scope in [None, Some(&["h1"][..])] {
            // A limited query first: it must leave the shared session as it was.
            let _ = f.run(scope, "SELECT count(*) FROM vitals").await.unwrap();
            let batches = f.run(None, "SELECT count(*) FROM vitals").await.unwrap();
            assert_eq!(single(&batches, "count"), total);
        }
        let batches = f
            .run(
                None,
                "SELECT hospital_id FROM vitals GROUP BY 1 ORDER BY 1 NULLS LAST",
            )
            .await
            .unwrap();
        assert_eq!(
            strings(&batches, "hospital_id"),
            [Some("h1"), Some("h2"), Some("h3"), None]
                .map(|h| h.map(str::to_string))
                .to_vec()
        );
        // `dataframe` and `query` are the unlimited calls.
        let df = f
            .history
            .dataframe("SELECT count(*) FROM vitals")
            .await
            .unwrap();
        assert_eq!(single(&df.collect().await.unwrap(), "count"), total);
        for sql in [
            "SELECT count(*) FROM alerts",
            "SELECT count(*) FROM audit_log",
            "SELECT count(*) FROM rules",
            "SELECT count(*) FROM rule_versions",
        ] {
            f.run(None, sql).await.unwrap();
            f.history.query(sql, &QueryLimits::default()).await.unwrap();
        }
        f.run(None, "EXPLAIN SELECT count(*) FROM vitals")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_scope_of_several_hospitals_sees_each_and_an_empty_scope_sees_none() {
        let f = Fixture::new().await;
        let both = f.of(&["h1", "h3"]).len() as i64;
        let batches = f
            .run(
                Some(&["h3", "h1", "h3"]),
                "SELECT hospital_id, count(*) FROM vitals GROUP BY 1 ORDER BY 1",
            )
            .await
            .unwrap();
        assert_eq!(
            strings(&batches, "hospital_id"),
            [Some("h1".to_string()), Some("h3".to_string())]
        );
        let batches = f
            .run(Some(&["h1", "h3"]), "SELECT count(*) FROM vitals")
            .await
            .unwrap();
        assert_eq!(single(&batches, "count"), both);

        // A hospital with no rows, and no hospital at all: nothing.
        for scope in [&["h9"][..], &[][..]] {
            for sql in [
                "SELECT * FROM vitals",
                "SELECT * FROM vitals LIMIT 5",
                "SELECT hospital_id, count(*) FROM vitals GROUP BY 1",
                "SELECT * FROM vitals a JOIN vitals b ON a.patient_id = b.patient_id",
            ] {
                let batches = f.run(Some(scope), sql).await.unwrap();
                assert_eq!(row_count(&batches), 0, "{scope:?} {sql}");
            }
            let batches = f
                .run(Some(scope), "SELECT count(*) FROM vitals")
                .await
                .unwrap();
            assert_eq!(single(&batches, "count"), 0);
            assert!(f.run(Some(scope), "SELECT * FROM audit_log").await.is_err());
            // Refused, or (once alerts name their hospital) empty.
            match f.run(Some(scope), "SELECT * FROM alerts").await {
                Ok(batches) => assert_eq!(row_count(&batches), 0),
                Err(e) => assert!(e.to_string().contains("not available"), "{e}"),
            }
            let batches = f
                .run(Some(scope), "SELECT count(*) FROM rules")
                .await
                .unwrap();
            assert_eq!(single(&batches, "count"), f.rules);
        }
    }

    /// Every scan that can read a hospital's rows sits under a `ScopeExec`,
    /// and no statistics above it tell how many rows it hides.
    #[tokio::test]
    async fn every_archive_scan_of_a_limited_plan_is_under_the_scope() {
        fn check(plan: &Arc<dyn ExecutionPlan>, scoped: bool, scans: &mut usize) {
            let scoped = scoped || plan.downcast_ref::<ScopeExec>().is_some();
            if let Some(exec) = plan.downcast_ref::<DataSourceExec>() {
                let files = exec
                    .data_source()
                    .downcast_ref::<FileScanConfig>()
                    .is_some();
                if files || plan.schema().field_with_name(HOSPITAL_COLUMN).is_ok() {
                    assert!(scoped, "an unscoped scan: {}", plan.name());
                    *scans += 1;
                }
            }
            for child in plan.children() {
                check(child, scoped, scans);
            }
        }
        let f = Fixture::new().await;
        let scope = ["h1".to_string()];
        let sql = "WITH c AS (SELECT patient_id FROM vitals) \
                   SELECT count(*) FROM vitals a JOIN c ON a.patient_id = c.patient_id \
                   WHERE EXISTS (SELECT 1 FROM datafusion.public.vitals v WHERE v.hospital_id = 'h2') \
                   UNION ALL SELECT (SELECT count(*) FROM Vitals) FROM rules";
        let plan = f
            .history
            .dataframe_scoped(sql, Some(&scope))
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut scans = 0;
        check(&plan, false, &mut scans);
        assert!(scans >= 4, "{scans} archive scans");

        let plan = f
            .history
            .dataframe_scoped("SELECT * FROM vitals", Some(&scope))
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut node = Some(&plan);
        while let Some(current) = node {
            if current.downcast_ref::<ScopeExec>().is_some() {
                let stats = StatisticsContext::new()
                    .compute(current.as_ref(), &StatisticsArgs::new())
                    .unwrap();
                assert_eq!(stats.num_rows.get_value(), None, "{stats:?}");
                assert_eq!(stats.total_byte_size.get_value(), None, "{stats:?}");
                break;
            }
            node = current.children().into_iter().next();
        }
        assert!(node.is_some(), "no ScopeExec");
    }

    /// The scope does not rely on the inner table honouring the filter or
    /// the limit it is given: a `MemTable` ignores both.
    #[tokio::test]
    async fn the_scope_holds_over_a_table_that_ignores_filters_and_limits() {
        let hospitals = [repeat(Some("h2"), 50), repeat(Some("h1"), 7)].concat();
        let batch = vitals_of(&hospitals, T0, 0);
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        let scoped = ScopedTable::try_new(Arc::new(table), vec!["h1".to_string()].into()).unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("vitals", Arc::new(scoped)).unwrap();
        for (sql, expected) in [
            ("SELECT hospital_id FROM vitals", 7),
            ("SELECT hospital_id FROM vitals LIMIT 5", 5),
            ("SELECT hospital_id FROM vitals WHERE hospital_id = 'h2'", 0),
            ("SELECT count(*) AS hospital_id FROM vitals", 1),
        ] {
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(row_count(&batches), expected, "{sql}");
            if sql.contains("count") {
                let count = batches[0].column(0).as_primitive::<Int64Type>().value(0);
                assert_eq!(count, 7);
            } else {
                assert!(only_h1(&strings(&batches, "hospital_id")), "{sql}");
            }
        }
    }

    #[test]
    fn the_inner_scan_gets_the_scope_and_the_filters_that_cannot_fail() {
        use datafusion::logical_expr::{case, cast, col, lit};
        let schema = sql_rules::stream::vitals_schema();
        let failing = case(col("hospital_id"))
            .when(lit("h2"), cast(col("patient_id"), DataType::Int32))
            .otherwise(lit(1_i32))
            .unwrap()
            .eq(lit(1_i32));
        let safe = col("timestamp_unix_ms").gt_eq(lit(5_i64));
        let filters = [
            failing.clone().and(col("patient_id").eq(lit("P1"))),
            safe.clone(),
        ];
        let hints = pruning_hints(
            &filters,
            &schema,
            &["h1".to_string(), "h2".to_string()],
            false,
        );
        assert_eq!(
            hints,
            [
                col("patient_id").eq(lit("P1")),
                safe,
                col("hospital_id").in_list(vec![lit("h1"), lit("h2")], false),
            ]
        );
        assert!(!hints.contains(&failing));
    }

    #[test]
    fn only_filters_that_cannot_fail_are_handed_to_the_inner_scan() {
        use datafusion::logical_expr::{cast, col, lit};
        let schema = sql_rules::stream::vitals_schema();
        let safe = [
            col("patient_id").eq(lit("P1")),
            lit("P1").eq(col("patient_id")),
            col("timestamp_unix_ms").gt_eq(lit(5_i64)),
            col("timestamp_unix_ms").between(lit(1_i64), lit(2_i64)),
            col("hospital_id").in_list(vec![lit("h1")], false),
            col("hospital_id").is_null(),
            col("patient_id")
                .eq(lit("P1"))
                .or(col("patient_id").eq(lit("P2"))),
        ];
        for expr in safe {
            assert!(cannot_fail(&expr, &schema), "{expr}");
        }
        let unsafe_ = [
            cast(col("patient_id"), DataType::Int32).eq(lit(1_i32)),
            col("timestamp_unix_ms").gt_eq(lit(5_i32)),
            (col("timestamp_unix_ms") / lit(0_i64)).eq(lit(1_i64)),
            col("patient_id").eq(col("hospital_id")),
            col("patient_id")
                .eq(lit("P1"))
                .and(cast(col("patient_id"), DataType::Int32).eq(lit(1_i32))),
            col("no_such_column").eq(lit("x")),
        ];
        for expr in unsafe_ {
            assert!(!cannot_fail(&expr, &schema), "{expr}");
        }
    }
}

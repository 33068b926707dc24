//! The small history tables — `rules`, `rule_versions`, `audit_log` — as
//! table providers that read the current state of the [`RuleStore`] and the
//! audit [`JsonLog`] each time a query scans them.
//!
//! They are registered once, when the history catalog is built
//! ([`HistoryCatalog::register_state_tables`]), so a query never changes the
//! session's tables and any number of queries can run at once. They are
//! thousands of rows, not millions: a scan builds one batch of the whole
//! table (projection and limit are applied to it), with no filter pushdown.
//!
//! This module reads; it never writes a rule or an audit record.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::scope::HOSPITAL_COLUMN;
use super::HistoryCatalog;
use crate::log::JsonLog;
use crate::rules::RuleStore;
use crate::CatalogError;

/// Name of the table of rules at their current version.
pub const RULES: &str = "rules";
/// Name of the table of every stored rule version.
pub const RULE_VERSIONS: &str = "rule_versions";
/// Name of the table of audit records (the in-memory tail of the log).
pub const AUDIT_LOG: &str = "audit_log";

impl HistoryCatalog {
    /// Registers `rules`, `rule_versions` and `audit_log` (see the
    /// [module docs](self)): they show the state of `rules` and `audit` at
    /// the moment a query scans them, so a rule created or an audit record
    /// appended afterwards is seen by the next query.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use catalog::{HistoryCatalog, JsonLog, QueryLimits, RuleDraft, RuleStore};
    /// use object_store::{memory::InMemory, path::Path};
    ///
    /// let store = Arc::new(InMemory::new());
    /// let rules = RuleStore::open(store.clone(), Path::default()).await?;
    /// let audit = Arc::new(JsonLog::open(store.clone(), Path::default(), "audit_log").await?);
    /// let history = HistoryCatalog::new(store, Path::from("archive"))?;
    /// history.register_state_tables(rules.clone(), audit)?;
    /// rules.create(RuleDraft::new("Low SpO2", "SELECT 1"), 1_000).await?;
    /// let rows = history.query("SELECT name FROM rules", &QueryLimits::default()).await?;
    /// assert_eq!(rows[0].num_rows(), 1);
    /// # Ok::<(), catalog::CatalogError>(())
    /// # }).unwrap();
    /// ```
    pub fn register_state_tables(
        &self,
        rules: RuleStore,
        audit: Arc<JsonLog>,
    ) -> Result<(), CatalogError> {
        let tables = [
            StateTable::new(Source::Rules(rules.clone())),
            StateTable::new(Source::RuleVersions(rules)),
            StateTable::new(Source::AuditLog(audit)),
        ];
        for table in tables {
            let name = table.source.name();
            self.session()
                .deregister_table(name)
                .map_err(CatalogError::query)?;
            self.session()
                .register_table(name, Arc::new(table))
                .map_err(CatalogError::query)?;
        }
        Ok(())
    }
}

/// Where a state table's rows come from.
enum Source {
    Rules(RuleStore),
    RuleVersions(RuleStore),
    AuditLog(Arc<JsonLog>),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Rules(_) => RULES,
            Source::RuleVersions(_) => RULE_VERSIONS,
            Source::AuditLog(_) => AUDIT_LOG,
        }
    }

    fn schema(&self) -> SchemaRef {
        let fields = match self {
            Source::Rules(_) => vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("active", DataType::Boolean, false),
                Field::new("version", DataType::UInt32, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("severity", DataType::Utf8, false),
                Field::new("cooldown_seconds", DataType::UInt64, false),
                Field::new("sql", DataType::Utf8, false),
                Field::new("created_at", ts_type(), false),
                Field::new("updated_at", ts_type(), false),
                // NULL: a global rule. Last, so `SELECT *` keeps its columns.
                Field::new(HOSPITAL_COLUMN, DataType::Utf8, true),
            ],
            Source::RuleVersions(_) => vec![
                Field::new("rule_id", DataType::Utf8, false),
                Field::new("version", DataType::UInt32, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("severity", DataType::Utf8, false),
                Field::new("cooldown_seconds", DataType::UInt64, false),
                Field::new("allowed_lateness_ms", DataType::Int64, true),
                Field::new("sql", DataType::Utf8, false),
                Field::new("created_at", ts_type(), false),
                Field::new(HOSPITAL_COLUMN, DataType::Utf8, true),
            ],
            Source::AuditLog(_) => vec![
                // Order of recording, for records within the same millisecond.
                Field::new("seq", DataType::UInt64, false),
                Field::new("at", ts_type(), false),
                Field::new("action", DataType::Utf8, false),
                Field::new("details", DataType::Utf8, false),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    /// The table's current rows, in the columns of [`schema`](Self::schema).
    async fn columns(&self) -> Vec<ArrayRef> {
        match self {
            Source::Rules(store) => {
                let rules = store.list().await;
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rules.iter().map(|r| r.id.as_str()),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        rules.iter().map(|r| Some(r.active)),
                    )),
                    Arc::new(UInt32Array::from_iter_values(
                        rules.iter().map(|r| r.current.version),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rules.iter().map(|r| r.current.name.as_str()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rules.iter().map(|r| r.current.severity.as_str()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        rules.iter().map(|r| r.current.cooldown_seconds),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rules.iter().map(|r| r.current.sql.as_str()),
                    )),
                    ts(rules.iter().map(|r| r.created_at_ms)),
                    ts(rules.iter().map(|r| r.updated_at_ms)),
                    Arc::new(StringArray::from_iter(
                        rules.iter().map(|r| r.current.hospital()),
                    )),
                ]
            }
            Source::RuleVersions(store) => {
                let versions = store.all_versions().await;
                vec![
                    Arc::new(StringArray::from_iter_values(
                        versions.iter().map(|v| v.rule_id.as_str()),
                    )),
                    Arc::new(UInt32Array::from_iter_values(
                        versions.iter().map(|v| v.version),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        versions.iter().map(|v| v.name.as_str()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        versions.iter().map(|v| v.severity.as_str()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        versions.iter().map(|v| v.cooldown_seconds),
                    )),
                    Arc::new(Int64Array::from_iter(
                        versions.iter().map(|v| v.allowed_lateness_ms),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        versions.iter().map(|v| v.sql.as_str()),
                    )),
                    ts(versions.iter().map(|v| v.created_at_ms)),
                    Arc::new(StringArray::from_iter(
                        versions.iter().map(|v| v.hospital()),
                    )),
                ]
            }
            Source::AuditLog(log) => {
                // Oldest first.
                let mut records = log.recent(usize::MAX, |_| true);
                records.reverse();
                vec![
                    Arc::new(UInt64Array::from_iter_values(0..records.len() as u64)),
                    ts(records
                        .iter()
                        .map(|a| a.get("at_ms").and_then(|v| v.as_i64()).unwrap_or(0))),
                    Arc::new(StringArray::from_iter_values(
                        records
                            .iter()
                            .map(|a| a.get("action").and_then(|v| v.as_str()).unwrap_or("")),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        records.iter().map(|a| a.to_string()),
                    )),
                ]
            }
        }
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn ts(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// One of the state tables as DataFusion sees it.
struct StateTable {
    source: Source,
    schema: SchemaRef,
}

impl std::fmt::Debug for StateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTable")
            .field("name", &self.source.name())
            .finish_non_exhaustive()
    }
}

impl StateTable {
    fn new(source: Source) -> Self {
        let schema = source.schema();
        Self { source, schema }
    }

    async fn scan_state(
        &self,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let columns = self.source.columns().await;
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let memory = MemorySourceConfig::try_new(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?
        .with_limit(limit);
        Ok(DataSourceExec::from_data_source(memory))
    }
}

impl TableProvider for StateTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    // `TableProvider` is declared with `#[async_trait]`; the workspace does not
    // carry that crate, so this is the signature it expands to.
    fn scan<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        _state: &'life1 dyn Session,
        projection: Option<&'life2 Vec<usize>>,
        _filters: &'life3 [Expr],
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
        Box::pin(self.scan_state(projection, limit))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType, UInt32Type};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::ObjectStore;

    use super::*;
    use crate::rules::RuleDraft;
    use crate::QueryLimits;

    async fn catalog() -> (Arc<HistoryCatalog>, RuleStore, Arc<JsonLog>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let rules = RuleStore::open(Arc::clone(&store), Path::default())
            .await
            .unwrap();
        let audit = Arc::new(
            JsonLog::open(Arc::clone(&store), Path::default(), "audit_log")
                .await
                .unwrap(),
        );
        let history = HistoryCatalog::new(store, Path::from("archive")).unwrap();
        history
            .register_state_tables(rules.clone(), Arc::clone(&audit))
            .unwrap();
        (Arc::new(history), rules, audit)
    }

    async fn count(history: &HistoryCatalog, sql: &str) -> i64 {
        let batches = history.query(sql, &QueryLimits::default()).await.unwrap();
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    }

    /// Regression: the tables used to be re-registered by every query, and
    /// concurrent queries failed with "table 'rules' already exists".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_queries_all_succeed_and_see_rules_created_since() {
        let (history, rules, _audit) = catalog().await;
        rules
            .create(RuleDraft::new("Low SpO2", "SELECT 1"), 1_000)
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let history = Arc::clone(&history);
            tasks.spawn(async move {
                let sql = match i % 4 {
                    0 => "SELECT 1",
                    1 => "SELECT count(*) FROM rules",
                    2 => "SELECT count(*) FROM rule_versions",
                    _ => "SELECT count(*) FROM audit_log",
                };
                history.query(sql, &QueryLimits::default()).await
            });
        }
        while let Some(result) = tasks.join_next().await {
            let batches = result.unwrap().unwrap();
            assert_eq!(batches[0].num_rows(), 1);
        }

        // A rule created after the tables were registered is in the next query.
        let second = rules
            .create(RuleDraft::new("Tachycardia", "SELECT 2"), 2_000)
            .await
            .unwrap();
        assert_eq!(count(&history, "SELECT count(*) FROM rules").await, 2);
        let sql = format!("SELECT count(*) FROM rules WHERE id = '{}'", second.id);
        assert_eq!(count(&history, &sql).await, 1);
    }

    /// A caller limited to hospitals sees their rules and the global ones
    /// (which run over their events too), not other hospitals' rules.
    #[tokio::test]
    async fn rule_tables_show_a_limited_caller_their_hospitals_and_global_rules() {
        let (history, rules, _audit) = catalog().await;
        for (name, hospital) in [
            ("Global", None),
            ("Of h1", Some("h1")),
            ("Of h2", Some("h2")),
        ] {
            let mut draft = RuleDraft::new(name, "SELECT 1");
            draft.hospital_id = hospital.map(str::to_string);
            let rule = rules.create(draft.clone(), 1_000).await.unwrap();
            rules.update(&rule.id, draft, 2_000).await.unwrap();
        }
        let names = |scope: Option<&'static [&'static str]>, table: &'static str| {
            let history = Arc::clone(&history);
            async move {
                let scope: Option<Vec<String>> =
                    scope.map(|s| s.iter().map(|h| h.to_string()).collect());
                let sql = format!(
                    "SELECT name, hospital_id FROM {table} ORDER BY hospital_id NULLS FIRST, name"
                );
                let batches = history
                    .query_scoped(&sql, &QueryLimits::default(), scope.as_deref())
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                batches
                    .iter()
                    .flat_map(|b| {
                        let names = b.column(0).as_string::<i32>();
                        let hospitals = b.column(1).as_string::<i32>();
                        (0..b.num_rows())
                            .map(|i| {
                                let hospital = hospitals.is_valid(i).then(|| hospitals.value(i));
                                format!("{}@{}", names.value(i), hospital.unwrap_or("-"))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            names(None, RULES).await,
            ["Global@-", "Of h1@h1", "Of h2@h2"]
        );
        assert_eq!(names(Some(&["h1"]), RULES).await, ["Global@-", "Of h1@h1"]);
        assert_eq!(
            names(Some(&["h1"]), RULE_VERSIONS).await,
            ["Global@-", "Global@-", "Of h1@h1", "Of h1@h1"]
        );
        assert_eq!(names(Some(&[]), RULES).await, ["Global@-"]);
        assert_eq!(
            names(Some(&["h2", "h1"]), RULES).await,
            ["Global@-", "Of h1@h1", "Of h2@h2"]
        );
    }

    #[tokio::test]
    async fn tables_show_current_versions_every_version_and_the_audit_records() {
        let (history, rules, audit) = catalog().await;
        let rule = rules
            .create(RuleDraft::new("Low SpO2", "SELECT 85"), 1_000)
            .await
            .unwrap();
        rules
            .update(&rule.id, RuleDraft::new("Low SpO2", "SELECT 88"), 2_000)
            .await
            .unwrap();
        rules.set_active(&rule.id, false, 3_000).await.unwrap();
        audit
            .append(&[
                serde_json::json!({"at_ms": 1_000, "action": "rule_created"}),
                serde_json::json!({"at_ms": 1_000, "action": "rule_updated", "id": rule.id}),
            ])
            .await
            .unwrap();

        let limits = QueryLimits::default();
        let rows = history
            .query(
                "SELECT id, active, version, sql, updated_at FROM rules",
                &limits,
            )
            .await
            .unwrap();
        let row = &rows[0];
        assert_eq!(row.num_rows(), 1);
        assert_eq!(row.column(0).as_string::<i32>().value(0), rule.id);
        assert!(!row.column(1).as_boolean().value(0));
        assert_eq!(row.column(2).as_primitive::<UInt32Type>().value(0), 2);
        assert_eq!(row.column(3).as_string::<i32>().value(0), "SELECT 88");
        let updated = row.column(4).as_primitive::<TimestampMillisecondType>();
        assert_eq!(updated.value(0), 3_000);

        let rows = history
            .query(
                "SELECT version, sql, allowed_lateness_ms FROM rule_versions ORDER BY version",
                &limits,
            )
            .await
            .unwrap();
        let sqls: Vec<&str> = rows
            .iter()
            .flat_map(|b| b.column(1).as_string::<i32>().iter().flatten())
            .collect();
        assert_eq!(sqls, ["SELECT 85", "SELECT 88"]);

        let rows = history
            .query(
                "SELECT seq, action, details FROM audit_log ORDER BY seq",
                &limits,
            )
            .await
            .unwrap();
        let actions: Vec<&str> = rows
            .iter()
            .flat_map(|b| b.column(1).as_string::<i32>().iter().flatten())
            .collect();
        assert_eq!(actions, ["rule_created", "rule_updated"]);
        let details = rows[0].column(2).as_string::<i32>().value(1);
        assert!(details.contains(&rule.id), "{details}");

        // Still read-only.
        assert!(history.query("DROP TABLE rules", &limits).await.is_err());
        assert!(history
            .query("INSERT INTO rules SELECT * FROM rules", &limits)
            .await
            .is_err());
    }
}

//! DataFusion plans the rule; we keep the pieces a streaming operator needs.
//!
//! The logical plan of a windowed rule is
//! `Projection ← Filter(HAVING) ← Aggregate ← Filter(WHERE) ← TableScan`;
//! of a per-event rule `Projection ← Filter(WHERE) ← TableScan`. Each part
//! is turned into physical expressions over Arrow batches. The aggregate
//! becomes one DataFusion `AggregateFunctionExpr` per aggregate, so every
//! DataFusion aggregate works in a rule without extra code here.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use sqlparser::dialect::GenericDialect;

use super::limits::{
    check_expression_depth, check_sql_length, check_window, on_compile_stack, RuleLimits,
};
use super::validate::streaming_query;
use super::window::{rewrite_windows, WindowSpec, WINDOWED_TABLE, WINDOW_END, WINDOW_START};
use crate::error::{RuleError, SqlPosition};
use crate::stream::{col, event_time_type, STREAM_NAME};

/// A row-level step over a batch: keep rows, or compute new columns.
#[derive(Debug, Clone)]
pub enum RowOp {
    Filter(Arc<dyn PhysicalExpr>),
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

/// One aggregate of a windowed rule, ready to create accumulators.
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    pub function: Arc<AggregateFunctionExpr>,
    /// Arguments, evaluated over the (filtered) input batch.
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    /// `FILTER (WHERE …)` of this aggregate.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// What a group-by position holds in a windowed rule's aggregate.
#[derive(Debug, Clone)]
pub enum GroupSlot {
    WindowStart,
    WindowEnd,
    /// Index into [`Windowed::key_exprs`].
    Key(usize),
}

/// The incremental parts of a windowed rule.
#[derive(Debug, Clone)]
pub struct Windowed {
    pub window: WindowSpec,
    /// Group-by key expressions (not the window), over the input batch.
    pub key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the key columns, for the group table.
    pub key_schema: SchemaRef,
    /// The aggregate's group-by list, in order.
    pub group_slots: Vec<GroupSlot>,
    pub aggregates: Vec<AggregateSpec>,
    /// The schema of the aggregate's output (groups then aggregates):
    /// what HAVING and the projection are planned against.
    pub aggregate_schema: SchemaRef,
}

/// The two kinds of rule.
#[derive(Debug, Clone)]
pub enum RuleShape {
    /// Fires on each event that passes its filter.
    PerEvent,
    /// Aggregates events into windows and fires when a window closes.
    Windowed(Box<Windowed>),
}

/// A rule DataFusion has planned and we can run incrementally.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub sql: String,
    pub shape: RuleShape,
    /// Row steps over the input `vitals` batch (WHERE; for per-event rules
    /// also the projection).
    pub input_ops: Vec<RowOp>,
    /// Row steps over the aggregate output (HAVING and the projection);
    /// empty for per-event rules.
    pub output_ops: Vec<RowOp>,
    /// The rule's result columns.
    pub output_schema: SchemaRef,
    /// Result columns that identify the alert's subject (the GROUP BY
    /// columns; `patient_id`/`hospital_id` for per-event rules).
    pub key_columns: Vec<usize>,
    /// `EMIT EARLY`: fire as soon as HAVING holds within an open window,
    /// then not again for that window and key.
    pub emit_early: bool,
    /// The hospital the rule is limited to: its alerts carry it.
    pub scope: Option<String>,
    /// Whether each of its alerts concerns one patient: it groups by the
    /// `patient_id` column (per-event rules: their result has it). Such a
    /// rule needs only its patients' events, so it runs exactly on any
    /// instance reading their partitions (events are keyed by patient);
    /// any other rule needs every partition.
    pub keyed_by_patient: bool,
}

impl CompiledRule {
    /// Compiles `sql` against the `vitals` stream schema.
    pub fn compile(sql: &str, schema: &SchemaRef) -> Result<CompiledRule, RuleError> {
        RuleCompiler::new(Arc::clone(schema)).compile(sql)
    }

    pub fn window(&self) -> Option<WindowSpec> {
        match &self.shape {
            RuleShape::PerEvent => None,
            RuleShape::Windowed(w) => Some(w.window),
        }
    }
}

/// Holds the DataFusion session rules are planned in. Create one and reuse it.
pub struct RuleCompiler {
    ctx: SessionContext,
    schema: SchemaRef,
    limits: RuleLimits,
}

impl std::fmt::Debug for RuleCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleCompiler")
            .field("schema", &self.schema)
            .field("limits", &self.limits)
            .finish()
    }
}

fn windowed_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(WINDOW_START, event_time_type(), false));
    fields.push(Field::new(WINDOW_END, event_time_type(), false));
    Arc::new(Schema::new(fields))
}

impl RuleCompiler {
    pub fn new(schema: SchemaRef) -> Self {
        let mut config = SessionConfig::new().with_target_partitions(1);
        config.options_mut().sql_parser.collect_spans = true;
        let ctx = SessionContext::new_with_config(config);
        crate::functions::register(&ctx);
        let limits = RuleLimits::default();
        let ctx = crate::bounded_functions::install(&ctx, limits.max_function_output_bytes);
        let plain: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(Arc::clone(&schema)));
        let windowed: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(windowed_schema(&schema)));
        ctx.register_table(STREAM_NAME, plain)
            .expect("fresh context accepts a table");
        ctx.register_table(WINDOWED_TABLE, windowed)
            .expect("fresh context accepts a table");
        Self {
            ctx,
            schema,
            limits,
        }
    }

    /// The budgets [`compile`](Self::compile) holds rules to.
    pub fn with_limits(mut self, limits: RuleLimits) -> Self {
        if limits.max_function_output_bytes != self.limits.max_function_output_bytes {
            self.ctx =
                crate::bounded_functions::install(&self.ctx, limits.max_function_output_bytes);
        }
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &RuleLimits {
        &self.limits
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Compiles a rule within this compiler's [`RuleLimits`]. Every caller
    /// (REST, replay, the server's start-up) goes through here, so a rule
    /// over a budget, stored by an older version, is refused rather than run.
    pub fn compile(&self, sql: &str) -> Result<CompiledRule, RuleError> {
        self.compile_scoped(sql, None)
    }

    /// [`compile`](Self::compile) for a rule scoped to `hospital`: it sees
    /// only that hospital's events (`None`: a global rule, every event).
    pub fn compile_scoped(
        &self,
        sql: &str,
        hospital: Option<&str>,
    ) -> Result<CompiledRule, RuleError> {
        self.compile_within_scoped(sql, hospital, &self.limits)
    }

    /// Compiles a rule within `limits`: the SQL's length is checked first,
    /// then everything else runs on a thread with a large stack (see
    /// [`limits`](super::limits)), so no SQL can overflow the caller's.
    pub fn compile_within(
        &self,
        sql: &str,
        limits: &RuleLimits,
    ) -> Result<CompiledRule, RuleError> {
        self.compile_within_scoped(sql, None, limits)
    }

    /// [`compile_within`](Self::compile_within) for a rule scoped to
    /// `hospital` (see [`compile_scoped`](Self::compile_scoped)).
    pub fn compile_within_scoped(
        &self,
        sql: &str,
        hospital: Option<&str>,
        limits: &RuleLimits,
    ) -> Result<CompiledRule, RuleError> {
        check_sql_length(sql, limits)?;
        on_compile_stack(|| self.compile_on_this_thread(sql, hospital, limits, true))
    }

    /// Compiles a rule that was accepted before (a stored rule, at start-up)
    /// within this compiler's limits, without running it over the sample
    /// readings: the sample check guards submissions, and a stored rule an
    /// older version accepted must keep running (an error at run time shows
    /// it `failing`) rather than silently not start.
    pub fn compile_accepted(&self, sql: &str) -> Result<CompiledRule, RuleError> {
        self.compile_accepted_scoped(sql, None)
    }

    /// [`compile_accepted`](Self::compile_accepted) for a rule scoped to
    /// `hospital` (see [`compile_scoped`](Self::compile_scoped)).
    pub fn compile_accepted_scoped(
        &self,
        sql: &str,
        hospital: Option<&str>,
    ) -> Result<CompiledRule, RuleError> {
        check_sql_length(sql, &self.limits)?;
        on_compile_stack(|| self.compile_on_this_thread(sql, hospital, &self.limits, false))
    }

    fn compile_on_this_thread(
        &self,
        sql: &str,
        hospital: Option<&str>,
        limits: &RuleLimits,
        sample: bool,
    ) -> Result<CompiledRule, RuleError> {
        if sql.trim().is_empty() {
            return Err(RuleError::at_start("the rule's SQL is empty"));
        }
        let (sql_text, emit_early) = strip_emit_early(sql);
        let table_function = super::tvf::rewrite_table_functions(&sql_text)?;
        let parse_text = table_function
            .as_ref()
            .map_or(sql_text.as_str(), |(text, _, _)| text.as_str());
        let mut statements = DFParser::parse_sql_with_dialect(parse_text, &GenericDialect {})
            .map_err(|e| parser_error(&e, parse_text))?;
        if statements.len() != 1 {
            return Err(RuleError::at_start(format!(
                "a rule is exactly one SELECT statement, found {}",
                statements.len()
            )));
        }
        let statement = statements.pop_front().expect("one statement");
        let DFStatement::Statement(mut stmt) = statement else {
            return Err(RuleError::at_start("a rule must be a SELECT query"));
        };
        check_expression_depth(&*stmt, limits.max_expression_depth)?;
        let divisions = super::sample::division_positions(&*stmt, parse_text);
        let query = streaming_query(&mut stmt)?;
        let rewritten = rewrite_windows(query)?;
        // After every check of the author's SQL, so its errors point into
        // the SQL as written; the scope is AST, never text spliced in.
        if let Some(hospital) = hospital {
            scope_to_hospital(query, hospital)?;
        }
        let window = match (rewritten.window, table_function.map(|(_, w, at)| (w, at))) {
            (Some(_), Some(_)) => {
                return Err(RuleError::at_start(
                    "use either a window table function or a window in GROUP BY, not both",
                ))
            }
            (Some(w), None) => Some((w, rewritten.window_at)),
            (None, b) => b,
        };
        if let Some((w, at)) = &window {
            check_window(w, *at, limits)?;
        }
        let window = window.map(|(w, _)| w);

        let state = self.ctx.state();
        let plan = futures_lite_block_on(state.statement_to_plan(DFStatement::Statement(stmt)))
            .map_err(|e| datafusion_error(&e, sql))?;
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| datafusion_error(&e, sql))?;
        let mut rule = Planner { state: &state, sql }.build(plan, window)?;
        if emit_early {
            match rule.window() {
                Some(WindowSpec::Tumble { .. } | WindowSpec::Hop { .. }) => rule.emit_early = true,
                Some(WindowSpec::Session { .. }) => {
                    return Err(RuleError::new(
                        "EMIT EARLY is not supported for SESSION windows: a session's bounds are only known when it closes",
                        self_position(sql, "EMIT"),
                    ))
                }
                None => {
                    return Err(RuleError::new(
                        "EMIT EARLY needs a window: a rule without one already fires on each event",
                        self_position(sql, "EMIT"),
                    ))
                }
            }
        }
        rule.scope = hospital.map(str::to_string);
        if sample {
            super::sample::check_over_sample(&rule, sql, hospital, &divisions)?;
        }
        Ok(rule)
    }
}

/// Limits a rule to one hospital's events: ANDs `hospital_id = '<hospital>'`
/// into the WHERE of the SELECT that reads `vitals`. That is the innermost
/// one when the rule reads a derived table (`FROM (SELECT … FROM vitals)
/// t`), so an outer column named `hospital_id` (say `'h1' AS hospital_id`)
/// cannot stand in for the event's own. A scoped rule must read `vitals`
/// exactly once, through plain SELECTs: anything else (a CTE, a set
/// operation, a second reference in a subquery) could read events the
/// filter does not stand in front of, so it is refused.
fn scope_to_hospital(query: &mut sqlparser::ast::Query, hospital: &str) -> Result<(), RuleError> {
    use sqlparser::ast::{
        visit_relations, BinaryOperator, Expr as SqlExpr, Ident, SetExpr, TableFactor, Value,
    };

    let refuse = || {
        RuleError::at_start(
            "a rule limited to a hospital must read vitals once, through plain SELECTs \
             (no WITH, UNION, joins or subqueries that read it again)",
        )
    };
    let mut relations = 0usize;
    let _ = visit_relations(&*query, |_| {
        relations += 1;
        std::ops::ControlFlow::<()>::Continue(())
    });
    if relations != 1 {
        return Err(refuse());
    }
    let mut query = query;
    loop {
        if query.with.is_some() {
            return Err(refuse());
        }
        let select = match query.body.as_mut() {
            SetExpr::Select(select) => select,
            SetExpr::Query(inner) => {
                query = inner;
                continue;
            }
            _ => return Err(refuse()),
        };
        let [from] = select.from.as_mut_slice() else {
            return Err(refuse());
        };
        if !from.joins.is_empty() {
            return Err(refuse());
        }
        match &mut from.relation {
            TableFactor::Derived { subquery, .. } => {
                query = subquery;
                continue;
            }
            // The stream, or its windowed form (`rewrite_windows` renames it).
            TableFactor::Table {
                name, args: None, ..
            } if ["vitals", super::window::WINDOWED_TABLE]
                .iter()
                .any(|t| name.to_string().trim_matches('"').eq_ignore_ascii_case(t)) => {}
            _ => return Err(refuse()),
        }
        let scope = SqlExpr::BinaryOp {
            left: Box::new(SqlExpr::Identifier(Ident::new(col::HOSPITAL_ID))),
            op: BinaryOperator::Eq,
            right: Box::new(SqlExpr::Value(
                Value::SingleQuotedString(hospital.to_string()).with_empty_span(),
            )),
        };
        select.selection = Some(match select.selection.take() {
            None => scope,
            // The scope first, so a batch of other hospitals' events stops at
            // it; the rule's filter nested, so `a OR b` stays one operand.
            Some(filter) => SqlExpr::BinaryOp {
                left: Box::new(scope),
                op: BinaryOperator::And,
                right: Box::new(SqlExpr::Nested(Box::new(filter))),
            },
        });
        return Ok(());
    }
}

/// DataFusion's planning future resolves synchronously for in-memory tables;
/// poll it to completion without pulling an async runtime into this crate.
fn futures_lite_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

struct Planner<'a> {
    state: &'a SessionState,
    sql: &'a str,
}

impl Planner<'_> {
    fn err(&self, e: DataFusionError) -> RuleError {
        datafusion_error(&e, self.sql)
    }

    fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>, RuleError> {
        self.state
            .create_physical_expr(expr.clone(), schema)
            .map_err(|e| self.err(e))
    }

    /// Collects Filter/Projection steps from `plan` down to the first node
    /// that is neither; returns the steps bottom-up and that node.
    fn row_ops<'p>(
        &self,
        mut plan: &'p LogicalPlan,
    ) -> Result<(Vec<RowOp>, &'p LogicalPlan), RuleError> {
        let mut ops = vec![];
        loop {
            match plan {
                LogicalPlan::Filter(f) => {
                    ops.push(RowOp::Filter(
                        self.physical(&f.predicate, f.input.schema())?,
                    ));
                    plan = f.input.as_ref();
                }
                LogicalPlan::Projection(p) => {
                    let exprs = p
                        .expr
                        .iter()
                        .map(|e| self.physical(e, p.input.schema()))
                        .collect::<Result<Vec<_>, _>>()?;
                    let schema = Arc::new(p.schema.as_arrow().clone());
                    ops.push(RowOp::Project { exprs, schema });
                    plan = p.input.as_ref();
                }
                LogicalPlan::SubqueryAlias(a) => plan = a.input.as_ref(),
                _ => break,
            }
        }
        ops.reverse();
        Ok((ops, plan))
    }

    fn build(
        &self,
        plan: LogicalPlan,
        window: Option<WindowSpec>,
    ) -> Result<CompiledRule, RuleError> {
        let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let (top_ops, below) = self.row_ops(&plan)?;
        match (below, window) {
            (LogicalPlan::TableScan(scan), None) => {
                check_scan(scan)?;
                let key_columns = output_schema
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name() == col::PATIENT_ID || f.name() == col::HOSPITAL_ID)
                    .map(|(i, _)| i)
                    .collect();
                let keyed_by_patient = output_schema
                    .fields()
                    .iter()
                    .any(|f| f.name() == col::PATIENT_ID);
                Ok(CompiledRule {
                    keyed_by_patient,
                    sql: self.sql.to_string(),
                    shape: RuleShape::PerEvent,
                    input_ops: top_ops,
                    output_ops: vec![],
                    output_schema,
                    key_columns,
                    emit_early: false,
                    scope: None,
                })
            }
            (LogicalPlan::Aggregate(_), None) => Err(RuleError::new(
                "aggregates over the whole stream never finish: group by a window, e.g. GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id",
                self.position_of_word("GROUP").unwrap_or(SqlPosition::new(1, 1)),
            )),
            (LogicalPlan::Aggregate(agg), Some(window)) => {
                let (input_ops, scan) = self.row_ops(agg.input.as_ref())?;
                let LogicalPlan::TableScan(scan) = scan else {
                    return Err(unsupported(scan));
                };
                check_scan(scan)?;
                for op in &input_ops {
                    if matches!(op, RowOp::Project { .. }) {
                        return Err(RuleError::at_start("subqueries are not supported in rules yet"));
                    }
                }
                let input_schema = agg.input.schema();
                let mut key_exprs = vec![];
                let mut key_fields = vec![];
                let mut group_slots = vec![];
                for g in &agg.group_expr {
                    match g {
                        Expr::Column(c) if c.name == WINDOW_START => group_slots.push(GroupSlot::WindowStart),
                        Expr::Column(c) if c.name == WINDOW_END => group_slots.push(GroupSlot::WindowEnd),
                        other => {
                            let (_, field) = other.to_field(input_schema).map_err(|e| self.err(e))?;
                            key_fields.push(field.as_ref().clone().with_name(other.schema_name().to_string()));
                            group_slots.push(GroupSlot::Key(key_exprs.len()));
                            key_exprs.push(self.physical(other, input_schema)?);
                        }
                    }
                }
                if !group_slots.iter().any(|s| matches!(s, GroupSlot::WindowStart | GroupSlot::WindowEnd)) {
                    return Err(RuleError::new(
                        "a windowed rule must GROUP BY window_start, window_end (the window table function's columns)",
                        self.position_of_word("GROUP BY").unwrap_or_default(),
                    ));
                }
                let aggregates = agg
                    .aggr_expr
                    .iter()
                    .map(|e| self.aggregate(e, input_schema))
                    .collect::<Result<Vec<_>, _>>()?;
                // Which output columns are plain references to key columns.
                let key_names: Vec<String> = agg
                    .group_expr
                    .iter()
                    .filter(|g| !matches!(g, Expr::Column(c) if c.name == WINDOW_START || c.name == WINDOW_END))
                    .map(|g| g.schema_name().to_string())
                    .collect();
                let key_columns = projected_keys(&plan, &key_names);
                let keyed_by_patient = agg
                    .group_expr
                    .iter()
                    .any(|g| matches!(g, Expr::Column(c) if c.name == col::PATIENT_ID));
                Ok(CompiledRule {
                    keyed_by_patient,
                    sql: self.sql.to_string(),
                    shape: RuleShape::Windowed(Box::new(Windowed {
                        window,
                        key_exprs,
                        key_schema: Arc::new(Schema::new(key_fields)),
                        group_slots,
                        aggregates,
                        aggregate_schema: Arc::new(agg.schema.as_arrow().clone()),
                    })),
                    input_ops,
                    output_ops: top_ops,
                    output_schema,
                    key_columns,
                    emit_early: false,
                    scope: None,
                })
            }
            (LogicalPlan::TableScan(_), Some(_)) => Err(RuleError::at_start(
                "a windowed rule must aggregate: add aggregates such as COUNT(*) or AVG(heart_rate_bpm)",
            )),
            (other, _) => Err(unsupported(other)),
        }
    }

    fn aggregate(&self, expr: &Expr, input: &DFSchema) -> Result<AggregateSpec, RuleError> {
        let name = expr.schema_name().to_string();
        let inner = match expr {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::AggregateFunction(f) = inner else {
            return Err(RuleError::at_start(format!(
                "unsupported aggregate expression {expr}"
            )));
        };
        let args = f
            .params
            .args
            .iter()
            .map(|a| self.physical(a, input))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = f
            .params
            .filter
            .as_ref()
            .map(|p| self.physical(p, input))
            .transpose()?;
        // `FIRST_VALUE(x ORDER BY event_time)`, `… WITHIN GROUP (ORDER BY x)`.
        let order_bys = datafusion::physical_expr::create_physical_sort_exprs(
            &f.params.order_by,
            input,
            self.state.execution_props(),
            &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext::default(
            ),
        )
        .map_err(|e| self.err(e))?;
        let function = AggregateExprBuilder::new(Arc::clone(&f.func), args)
            .schema(Arc::new(input.as_arrow().clone()))
            .alias(name)
            .order_by(order_bys)
            .with_distinct(f.params.distinct)
            .with_ignore_nulls(matches!(
                f.params.null_treatment,
                Some(datafusion::logical_expr::expr::NullTreatment::IgnoreNulls)
            ))
            .build()
            .map_err(|e| self.err(e))?;
        // Accumulators receive the arguments followed by the ordering
        // columns, as in DataFusion's own AggregateExec.
        let all = function.all_expressions();
        let args = all.args.into_iter().chain(all.order_by_exprs).collect();
        Ok(AggregateSpec {
            function: Arc::new(function),
            args,
            filter,
        })
    }

    fn position_of_word(&self, word: &str) -> Option<SqlPosition> {
        let upper = self.sql.to_ascii_uppercase();
        let at = upper.find(&word.to_ascii_uppercase())?;
        Some(offset_to_position(self.sql, at))
    }
}

fn check_scan(scan: &datafusion::logical_expr::TableScan) -> Result<(), RuleError> {
    let name = scan.table_name.table();
    if name != STREAM_NAME && name != WINDOWED_TABLE {
        return Err(RuleError::at_start(format!(
            "rules read the `vitals` stream, not `{name}`"
        )));
    }
    Ok(())
}

fn unsupported(plan: &LogicalPlan) -> RuleError {
    let what = match plan {
        LogicalPlan::Sort(_) => "ORDER BY cannot run over an unbounded stream",
        LogicalPlan::Limit(_) => "LIMIT cannot run over an unbounded stream",
        LogicalPlan::Join(_) => "joins are not supported in rules yet",
        LogicalPlan::Window(_) => {
            "window functions with OVER are not supported: group by TUMBLE, HOP or SESSION"
        }
        LogicalPlan::Distinct(_) => {
            "DISTINCT over a stream is not supported: group by a window instead"
        }
        LogicalPlan::Union(_) => "UNION is not supported in rules",
        _ => "this query shape cannot run as a streaming rule",
    };
    RuleError::at_start(format!("{what} (plan node: {})", plan.display()))
}

/// Output columns of the top projection that are plain references to a key.
fn projected_keys(plan: &LogicalPlan, key_names: &[String]) -> Vec<usize> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(p) => {
                return p
                    .expr
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        let base = match e {
                            Expr::Alias(a) => a.expr.as_ref(),
                            e => e,
                        };
                        matches!(base, Expr::Column(_))
                            && key_names.contains(&base.schema_name().to_string())
                    })
                    .map(|(i, _)| i)
                    .collect();
            }
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            _ => return vec![],
        }
    }
}

/// 1-based line and column of a byte offset in `sql`.
pub fn offset_to_position(sql: &str, offset: usize) -> SqlPosition {
    let before = &sql[..offset.min(sql.len())];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    SqlPosition::new(line, column)
}

/// Parser errors say "at Line: 3, Column: 15"; lift that into a position.
/// `sql` is the text parsed, to tell nesting past the parser's limit from
/// a syntax error (see [`super::limits::nesting_error`]).
fn parser_error(e: &DataFusionError, sql: &str) -> RuleError {
    let text = e.to_string();
    if let Some(e) = super::limits::nesting_error(&text, sql) {
        return e;
    }
    let position = find_line_column(&text).unwrap_or(SqlPosition::new(1, 1));
    let message = text
        .trim_start_matches("SQL error: ")
        .trim_start_matches("ParserError(\"")
        .trim_end_matches("\")")
        .to_string();
    RuleError::new(format!("syntax error: {message}"), position)
}

fn find_line_column(text: &str) -> Option<SqlPosition> {
    let l = text.find("Line: ")? + "Line: ".len();
    let line: u64 = text[l..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()?;
    let c = text[l..].find("Column: ")? + l + "Column: ".len();
    let column: u64 = text[c..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()?;
    Some(SqlPosition::new(line, column))
}

/// Turns a DataFusion planning error into a message for a rule author, with
/// the position DataFusion's diagnostics carry or, failing that, the first
/// place the offending name appears in the SQL.
fn datafusion_error(e: &DataFusionError, sql: &str) -> RuleError {
    let diagnostic = e.iter().find_map(|e| e.diagnostic());
    let mut message: String = match diagnostic {
        Some(d) => d.message.clone(),
        None => e.strip_backtrace().to_string(),
    };
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "type_coercion\ncaused by\n",
        "Optimizer rule 'type_coercion' failed\ncaused by\n",
    ] {
        message = message.replace(prefix, "");
    }
    message = message.replace(&format!("{WINDOWED_TABLE}."), "vitals.");
    // A type error in a function call surfaces wrapped as an internal error
    // with a bug-report plea; the author needs the last, plain sentence.
    if let Some(at) = message.find("No function matches") {
        message = message[at..]
            .replace("\n\tCandidate functions:\n\t", " Candidates: ")
            .replace("\n\t", "; ");
    }
    message = message.replace("Internal error: ", "");
    if let Some(at) = message.find("This issue was likely caused by a bug") {
        message.truncate(at);
    }
    let mut message = message.trim().to_string();
    if message.starts_with("column '") && message.ends_with("not found") {
        let columns: Vec<String> = crate::stream::vitals_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        message = format!("{message}; vitals has {}", columns.join(", "));
    }
    if let Some(help) = diagnostic.and_then(|d| d.helps.first()) {
        message = format!("{message}; {}", help.message);
    }
    let position = diagnostic
        .and_then(|d| d.span)
        .map(|s| SqlPosition::new(s.start.line, s.start.column))
        .filter(|p| p.is_known())
        .or_else(|| guess_position(&message, sql))
        .unwrap_or(SqlPosition::new(1, 1));
    RuleError::new(message, position)
}

/// Finds a quoted or named identifier from the message in the SQL text.
fn guess_position(message: &str, sql: &str) -> Option<SqlPosition> {
    let candidates = message
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| w.len() > 2)
        .map(|w| w.rsplit('.').next().unwrap_or(w));
    let lower = sql.to_ascii_lowercase();
    for word in candidates {
        let word = word.to_ascii_lowercase();
        if matches!(
            word.as_str(),
            "field"
                | "named"
                | "valid"
                | "fields"
                | "are"
                | "and"
                | "the"
                | "vitals"
                | "column"
                | "table"
                | "not"
                | "found"
                | "with"
                | "from"
        ) {
            continue;
        }
        let mut start = 0;
        while let Some(i) = lower[start..].find(&word) {
            let at = start + i;
            let before_ok = at == 0
                || !lower.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && lower.as_bytes()[at - 1] != b'_';
            let end = at + word.len();
            let after_ok = end >= lower.len()
                || !lower.as_bytes()[end].is_ascii_alphanumeric() && lower.as_bytes()[end] != b'_';
            if before_ok && after_ok {
                return Some(offset_to_position(sql, at));
            }
            start = end;
        }
    }
    None
}

/// The type the exact SUM/AVG yield, re-exported for callers building schemas.
pub fn reading_type() -> DataType {
    DataType::Float64
}

/// Removes a trailing `EMIT EARLY` (blanked, so positions stay put).
fn strip_emit_early(sql: &str) -> (String, bool) {
    let trimmed = sql.trim_end().trim_end_matches(';').trim_end();
    let upper = trimmed.to_ascii_uppercase();
    if let Some(rest) = upper.strip_suffix("EARLY") {
        let rest = rest.trim_end();
        if let Some(before) = rest.strip_suffix("EMIT") {
            if before.is_empty() || before.ends_with(|c: char| c.is_whitespace()) {
                let start = before.len();
                let mut out = sql.to_string();
                let blank: String = sql[start..trimmed.len()]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' })
                    .collect();
                out.replace_range(start..trimmed.len(), &blank);
                return (out, true);
            }
        }
    }
    (sql.to_string(), false)
}

fn self_position(sql: &str, word: &str) -> SqlPosition {
    sql.to_ascii_uppercase()
        .rfind(word)
        .map_or(SqlPosition::new(1, 1), |at| offset_to_position(sql, at))
}

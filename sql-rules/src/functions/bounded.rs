//! Size-amplifying SQL functions, bounded: in history SQL and in rules
//! alike (a rule's `repeat(patient_id, 100000000)` took 3 GB to validate).
//!
//! DataFusion's memory pool accounts for what operators buffer (sorts,
//! aggregates, joins), not for the values a scalar function returns:
//! `SELECT length(repeat('x', 1000000000))` allocates a gigabyte in one call
//! with the pool none the wiser, and three at once abort the process. The
//! functions whose output size is set by an argument rather than by their
//! input alone (`repeat`, `lpad`, `rpad`, `array_repeat`, `array_resize`,
//! `range`, `generate_series`, and `replace`, `regexp_replace`, `concat`,
//! `concat_ws`, which multiply or add their inputs) are wrapped here: before
//! delegating to DataFusion's own
//! implementation, the wrapper estimates the bytes the call would produce
//! from its arguments and refuses a call over the limit with a
//! `ResourcesExhausted` error that names the function and the limit.
//! Everything else about the function (signature, types, aliases) is the
//! original's.
//!
//! The `||` operator grows values too, and doubles them through a chain of
//! CTEs. DataFusion plans it as a binary expression for text and as calls of
//! its own `array_concat`/`array_append`/`array_prepend` instances for lists,
//! both past the wrappers, so [`ConcatOperator`], an expression planner put
//! first in each query's session, plans it as a bounded call instead: the
//! session's wrapped array functions, or [`StringConcat`] for text (the
//! operator's semantics: NULL if either side is NULL).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalMonthDayNanoType, IntervalUnit, TimeUnit,
};
use datafusion::common::DFSchema;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ExprSchemable, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times `n`.
    Repeat,
    /// `lpad/rpad(text, n[, fill])`: `n` characters of up to 4 bytes.
    Pad,
    /// `array_repeat(element, n)`, `array_resize(array, n[, value])`: `n`
    /// elements, each the size of the first argument's (at least 8 bytes).
    Elements,
    /// `replace(text, from, to)`, `regexp_replace(text, pattern, to, …)`:
    /// every match of `from` (every position, if it can match empty) becomes
    /// `to`.
    Replace,
    /// `concat(…)`, `concat_ws(sep, …)`: the sum of the arguments.
    Sum,
    /// `range/generate_series([start,] stop[, step])`: (stop − start) / step
    /// elements (counted at 8 bytes).
    Series,
    /// `encode(bytes, 'hex')` (twice the input), `translate` (a character
    /// may become one of 4 bytes): the first argument's bytes times this.
    Scale(u8),
    /// `array_to_string(list, sep[, null])`: the elements' bytes plus the
    /// separator once per element.
    Join,
}

const BOUNDED: &[(&str, Growth)] = &[
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::Elements),
    ("array_resize", Growth::Elements),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::Replace),
    ("concat", Growth::Sum),
    ("concat_ws", Growth::Sum),
    ("array_concat", Growth::Sum),
    ("array_append", Growth::Sum),
    ("array_prepend", Growth::Sum),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
    ("encode", Growth::Scale(2)),
    ("translate", Growth::Scale(4)),
    ("overlay", Growth::Sum),
    ("make_array", Growth::Sum),
    ("array_to_string", Growth::Join),
];

/// Replaces the registered size-amplifying functions of `ctx` with bounded
/// wrappers allowing at most `max_bytes` of output per call.
pub fn register(ctx: &SessionContext, max_bytes: usize) {
    for (name, growth) in BOUNDED {
        if let Some(mut inner) = ctx.state().scalar_functions().get(*name).cloned() {
            // Registered again with another limit: wrap the original.
            if let Some(bounded) = inner.inner().downcast_ref::<Bounded>() {
                inner = Arc::clone(&bounded.inner);
            }
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner,
                growth: *growth,
                max_bytes,
            }));
        }
    }
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_bytes: usize,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name() && self.max_bytes == other.max_bytes
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.max_bytes.hash(state);
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let bytes = estimate(self.growth, &arrays)?;
        if bytes > self.max_bytes as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would produce about {} in one call; wardwatch allows {} per function \
                 call (max_function_output_bytes)",
                self.inner.name(),
                mib(bytes),
                mib(self.max_bytes as u128),
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

/// `ctx` with its size-amplifying functions bounded to `max_bytes` of
/// output per call and `||` planned bounded: a new context sharing `ctx`'s
/// tables (the expression planners can only be put first by rebuilding).
/// Installing again with another limit supersedes the earlier one.
pub fn install(ctx: &SessionContext, max_bytes: usize) -> SessionContext {
    register(ctx, max_bytes);
    let mut state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state());
    let concat: Arc<dyn ExprPlanner> = Arc::new(ConcatOperator::new(ctx, max_bytes));
    state
        .expr_planners()
        .get_or_insert_with(Vec::new)
        .insert(0, concat);
    SessionContext::new_with_state(state.build())
}

/// Plans `a || b` as a bounded call (see the module docs). Built per
/// query session with the session's wrapped array functions.
#[derive(Debug)]
pub struct ConcatOperator {
    text: Arc<ScalarUDF>,
    array_concat: Option<Arc<ScalarUDF>>,
    array_append: Option<Arc<ScalarUDF>>,
    array_prepend: Option<Arc<ScalarUDF>>,
}

impl ConcatOperator {
    /// `ctx`'s functions must have been [`register`]ed already.
    pub fn new(ctx: &SessionContext, max_bytes: usize) -> Self {
        let function = |name: &str| ctx.state().scalar_functions().get(name).cloned();
        Self {
            text: Arc::new(ScalarUDF::new_from_impl(StringConcat {
                signature: Signature::user_defined(Volatility::Immutable),
                max_bytes,
            })),
            array_concat: function("array_concat"),
            array_append: function("array_append"),
            array_prepend: function("array_prepend"),
        }
    }
}

impl ExprPlanner for ConcatOperator {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        if expr.op != BinaryOperator::StringConcat {
            return Ok(PlannerResult::Original(expr));
        }
        let left = list_depth(&expr.left.get_type(schema)?);
        let right = list_depth(&expr.right.get_type(schema)?);
        // The same choice as DataFusion's own planner for lists.
        let function = match left.cmp(&right) {
            _ if left + right == 0 => Some(&self.text),
            std::cmp::Ordering::Equal => self.array_concat.as_ref(),
            std::cmp::Ordering::Greater => self.array_append.as_ref(),
            std::cmp::Ordering::Less => self.array_prepend.as_ref(),
        };
        Ok(match function {
            Some(f) => PlannerResult::Planned(f.call(vec![expr.left, expr.right])),
            None => PlannerResult::Original(expr),
        })
    }
}

fn list_depth(t: &DataType) -> usize {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            1 + list_depth(f.data_type())
        }
        _ => 0,
    }
}

/// `a || b` over text, bounded: NULL when either is NULL (unlike `concat`),
/// anything else cast to text first, as the operator does.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StringConcat {
    signature: Signature,
    max_bytes: usize,
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        "||"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return Err(DataFusionError::Plan(format!(
                "|| takes two operands, not {}",
                arg_types.len()
            )));
        }
        // As DataFusion's operator: text with anything, but not two
        // non-text values (`1 || 2` is an error, not '12').
        let text = |t: &DataType| {
            matches!(
                t,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
            )
        };
        if !arg_types.iter().any(text) {
            return Err(DataFusionError::Plan(format!(
                "|| needs text (or lists) on one side at least, not {} and {}",
                arg_types[0], arg_types[1]
            )));
        }
        Ok(vec![DataType::Utf8; 2])
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalars = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let bytes = estimate(Growth::Sum, &arrays)?;
        if bytes > self.max_bytes as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "|| would produce about {} in one call; wardwatch allows {} per function \
                 call (max_function_output_bytes)",
                mib(bytes),
                mib(self.max_bytes as u128),
            )));
        }
        let text = |a: &ArrayRef| cast(a, &DataType::Utf8);
        let (left, right) = (text(&arrays[0])?, text(&arrays[1])?);
        let joined = arrow::compute::kernels::concat_elements::concat_elements_utf8(
            left.as_string::<i32>(),
            right.as_string::<i32>(),
        )?;
        let joined: ArrayRef = Arc::new(joined);
        Ok(if scalars {
            ColumnarValue::Scalar(datafusion::scalar::ScalarValue::try_from_array(&joined, 0)?)
        } else {
            ColumnarValue::Array(joined)
        })
    }
}

fn mib(bytes: u128) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The bytes a call over these argument rows would produce, summed over
/// rows (saturating); arguments that cannot be read count as nothing and
/// are left for the function itself to refuse.
fn estimate(growth: Growth, args: &[ArrayRef]) -> Result<u128> {
    let rows = args.first().map_or(0, |a| a.len());
    let count = |i: usize| -> Result<Option<Vec<i128>>> { integers(args.get(i)) };
    let mut total: u128 = 0;
    match growth {
        Growth::Repeat => {
            let (Some(text), Some(n)) = (args.first(), count(1)?) else {
                return Ok(0);
            };
            let lengths = arrow::compute::kernels::length::length(text)
                .ok()
                .and_then(|l| integers(Some(&l)).ok().flatten());
            let Some(lengths) = lengths else {
                return Ok(0);
            };
            for row in 0..rows {
                total = total.saturating_add(mul(lengths[row], n[row]));
            }
        }
        Growth::Pad => {
            let Some(n) = count(1)? else { return Ok(0) };
            total = n.iter().map(|v| mul(*v, 4)).sum();
        }
        Growth::Elements => {
            let Some(n) = count(1)? else { return Ok(0) };
            let sizes = element_sizes(args.first(), rows);
            for row in 0..rows {
                total = total.saturating_add(mul(n[row], sizes[row]));
            }
        }
        Growth::Replace => {
            let (Some(text), Some(to)) = (lengths(args.first()), lengths(args.get(2))) else {
                return Ok(0);
            };
            // regexp_replace's pattern may match the empty string: count a
            // match at every position. replace's `from` is literal.
            let from = lengths(args.get(1));
            for row in 0..rows {
                let matches = match &from {
                    Some(from) if from[row] > 0 => text[row] / from[row],
                    _ => text[row] + 1,
                };
                total = total
                    .saturating_add(mul(matches, to[row]))
                    .saturating_add(text[row].max(0) as u128);
            }
        }
        Growth::Sum => {
            for arg in args {
                let sizes = element_sizes(Some(arg), rows);
                total = total.saturating_add(sizes.iter().map(|s| s.max(&0).unsigned_abs()).sum());
            }
        }
        Growth::Scale(factor) => {
            let sizes = element_sizes(args.first(), rows);
            let bytes: u128 = sizes.iter().map(|s| s.max(&0).unsigned_abs()).sum();
            total = bytes.saturating_mul(u128::from(factor));
        }
        Growth::Join => {
            let Some(list) = args.first() else {
                return Ok(0);
            };
            // The elements' own bytes, then one separator per element.
            total = list.get_array_memory_size() as u128;
            let elements = list_lengths(list);
            let separator = element_sizes(args.get(1), rows);
            for row in 0..rows.min(elements.len()) {
                total = total.saturating_add(mul(elements[row], separator[row]));
            }
        }
        Growth::Series => {
            let (start, stop, step) = match args.len() {
                1 => (None, count(0)?, None),
                2 => (count(0)?, count(1)?, None),
                _ => (count(0)?, count(1)?, steps(args.get(2))?),
            };
            let Some(stop) = stop else { return Ok(0) };
            for row in 0..rows {
                let from = start.as_ref().map_or(0, |s| s[row]);
                let by = step.as_ref().map_or(1, |s| s[row]).unsigned_abs().max(1);
                let span = stop[row].saturating_sub(from).unsigned_abs();
                total = total.saturating_add((span / by).saturating_mul(8));
            }
        }
    }
    Ok(total)
}

/// Bytes of each row's value: a text's length, 8 for a number, else the
/// array's average (at least 8). Never read from buffer sizes alone for
/// text: a sliced batch would look as large as its whole buffer.
fn element_sizes(array: Option<&ArrayRef>, rows: usize) -> Vec<i128> {
    let Some(array) = array else {
        return vec![0; rows];
    };
    if let Some(text) = lengths(Some(array)) {
        return text;
    }
    let average = if array.data_type().is_primitive() {
        8
    } else {
        (array.get_array_memory_size() / array.len().max(1)).max(8) as i128
    };
    vec![average; rows]
}

/// Elements in each row of a list argument (0 for anything else).
fn list_lengths(array: &ArrayRef) -> Vec<i128> {
    let lengths = |offsets: &[i64]| -> Vec<i128> {
        offsets
            .windows(2)
            .map(|w| i128::from(w[1] - w[0]))
            .collect()
    };
    match array.data_type() {
        DataType::List(_) => {
            let offsets: Vec<i64> = array
                .as_list::<i32>()
                .offsets()
                .iter()
                .map(|&o| i64::from(o))
                .collect();
            lengths(&offsets)
        }
        DataType::LargeList(_) => lengths(array.as_list::<i64>().offsets()),
        DataType::FixedSizeList(_, n) => vec![i128::from(*n); array.len()],
        _ => vec![0; array.len()],
    }
}

/// Byte lengths of a text argument (`None` if it is not text).
fn lengths(array: Option<&ArrayRef>) -> Option<Vec<i128>> {
    let array = array?;
    let text = matches!(
        array.data_type(),
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    );
    if !text {
        return None;
    }
    let lengths = arrow::compute::kernels::length::length(array).ok()?;
    integers(Some(&lengths)).ok().flatten()
}

fn mul(a: i128, b: i128) -> u128 {
    (a.max(0) as u128).saturating_mul(b.max(0) as u128)
}

/// An argument as integers: integers as they are, dates and timestamps in
/// nanoseconds (so a series over time compares with its interval step);
/// nulls count as 0. `None` for any other type.
fn integers(array: Option<&ArrayRef>) -> Result<Option<Vec<i128>>> {
    let Some(array) = array else { return Ok(None) };
    let as_i64 = match array.data_type() {
        t if t.is_integer() => cast(array, &DataType::Int64)?,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => {
            let nanos = cast(array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
            cast(&nanos, &DataType::Int64)?
        }
        _ => return Ok(None),
    };
    let values = as_i64.as_primitive::<Int64Type>();
    Ok(Some(
        (0..values.len())
            .map(|i| {
                if values.is_null(i) {
                    0
                } else {
                    i128::from(values.value(i))
                }
            })
            .collect(),
    ))
}

/// A series step as an integer: itself, or an interval in nanoseconds
/// (a month counted as 28 days, the shortest, so the estimate is never low).
fn steps(array: Option<&ArrayRef>) -> Result<Option<Vec<i128>>> {
    let Some(array) = array else { return Ok(None) };
    if !matches!(array.data_type(), DataType::Interval(_)) {
        return integers(Some(array));
    }
    let mdn = cast(array, &DataType::Interval(IntervalUnit::MonthDayNano))?;
    let values = mdn.as_primitive::<IntervalMonthDayNanoType>();
    const DAY: i128 = 86_400_000_000_000;
    Ok(Some(
        (0..values.len())
            .map(|i| {
                let v = values.value(i);
                i128::from(v.months) * 28 * DAY
                    + i128::from(v.days) * DAY
                    + i128::from(v.nanoseconds)
            })
            .collect(),
    ))
}

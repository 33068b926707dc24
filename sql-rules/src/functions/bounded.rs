//! Size-amplifying SQL functions, bounded.
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

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalMonthDayNanoType, IntervalUnit, TimeUnit,
};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;

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
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
];

/// Replaces the registered size-amplifying functions of `ctx` with bounded
/// wrappers allowing at most `max_bytes` of output per call.
pub(super) fn register(ctx: &SessionContext, max_bytes: usize) {
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
                "{}() would produce about {} in one call; history SQL allows {} per function \
                 call (max_function_output_bytes)",
                self.inner.name(),
                mib(bytes),
                mib(self.max_bytes as u128),
            )));
        }
        self.inner.invoke_with_args(args)
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

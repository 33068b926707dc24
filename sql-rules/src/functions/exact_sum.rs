//! SUM and AVG of floating-point readings, accumulated exactly.
//!
//! A float sum depends on the order of its terms, so the same window could
//! average 89.99999999999999 or 90.0 depending on how the stream was cut into
//! batches, and `AVG(spo2_pct) < 90` would decide differently. Readings carry
//! one decimal; we accumulate each value as an integer number of millionths
//! (i128), which is associative, so the result is the same for any batching
//! and any merge order of panes. Values finer than 1e-6 are rounded to the
//! nearest millionth before summing.
//!
//! Integer and decimal inputs keep DataFusion's own `sum`/`avg` (already exact).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, UInt64Array,
};
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef, Float64Type, UInt64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature,
};

/// Fixed-point scale: values are summed as integer millionths.
pub const SCALE: i128 = 1_000_000;
const SCALE_DIGITS: i8 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Sum,
    Avg,
}

/// `sum` or `avg`, exact for Float64 and delegating to DataFusion otherwise.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ExactSum {
    kind: Kind,
    inner: Arc<AggregateUDF>,
    aliases: Vec<String>,
}

pub fn exact_sum_udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(ExactSum {
        kind: Kind::Sum,
        inner: datafusion::functions_aggregate::sum::sum_udaf(),
        aliases: vec![],
    })
}

pub fn exact_avg_udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(ExactSum {
        kind: Kind::Avg,
        inner: datafusion::functions_aggregate::average::avg_udaf(),
        aliases: vec!["mean".to_string()],
    })
}

fn is_float(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Float64 | DataType::Float32 | DataType::Float16
    )
}

impl ExactSum {
    fn exact_for(&self, input: &[FieldRef]) -> bool {
        input.len() == 1 && is_float(input[0].data_type())
    }
}

impl AggregateUDFImpl for ExactSum {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if self.exact_for(args.expr_fields) && !args.is_distinct {
            Ok(Box::new(ExactAccumulator {
                kind: self.kind,
                sum: 0,
                count: 0,
                non_finite: None,
            }))
        } else {
            self.inner.accumulator(args)
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if self.exact_for(args.input_fields) && !args.is_distinct {
            Ok(state_fields(args.name))
        } else {
            self.inner.inner().state_fields(args)
        }
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        if self.exact_for(args.expr_fields) && !args.is_distinct {
            true
        } else {
            self.inner.inner().groups_accumulator_supported(args)
        }
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        if self.exact_for(args.expr_fields) && !args.is_distinct {
            Ok(Box::new(ExactGroups {
                kind: self.kind,
                sums: vec![],
                counts: vec![],
                non_finite: vec![],
            }))
        } else {
            self.inner.inner().create_groups_accumulator(args)
        }
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.inner().default_value(data_type)
    }
}

fn state_fields(name: &str) -> Vec<FieldRef> {
    vec![
        Arc::new(Field::new(
            format!("{name}[sum_millionths]"),
            DataType::Decimal128(38, SCALE_DIGITS),
            true,
        )),
        Arc::new(Field::new(format!("{name}[count]"), DataType::UInt64, true)),
        // Sum of any NaN/inf inputs; NaN-free readings leave it null.
        Arc::new(Field::new(
            format!("{name}[non_finite]"),
            DataType::Float64,
            true,
        )),
    ]
}

/// Converts a reading to integer millionths. Non-finite values cannot be
/// represented and are tracked separately.
#[inline]
fn to_fixed(v: f64) -> i128 {
    let scaled = (v * SCALE as f64).round();
    // f64 → i128 is a libcall; through i64 it is one instruction, and every
    // reading fits.
    if scaled.abs() < 9.0e18 {
        scaled as i64 as i128
    } else {
        scaled as i128
    }
}

fn finish(kind: Kind, sum: i128, count: u64, non_finite: Option<f64>) -> Option<f64> {
    if count == 0 {
        return None;
    }
    if let Some(nf) = non_finite {
        return Some(nf);
    }
    Some(match kind {
        // One correctly rounded division each: the result is the f64 nearest
        // to the exact decimal value.
        Kind::Sum => sum as f64 / SCALE as f64,
        Kind::Avg => sum as f64 / (count as f64 * SCALE as f64),
    })
}

fn merge_non_finite(acc: &mut Option<f64>, v: f64) {
    *acc = Some(acc.map_or(v, |a| a + v));
}

#[derive(Debug)]
struct ExactAccumulator {
    kind: Kind,
    sum: i128,
    count: u64,
    non_finite: Option<f64>,
}

impl Accumulator for ExactAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let values = as_f64(&values[0])?;
        let values = values.as_primitive::<Float64Type>();
        for v in values.iter().flatten() {
            if v.is_finite() {
                self.sum += to_fixed(v);
            } else {
                merge_non_finite(&mut self.non_finite, v);
            }
            self.count += 1;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(finish(
            self.kind,
            self.sum,
            self.count,
            self.non_finite,
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Decimal128(Some(self.sum), 38, SCALE_DIGITS),
            ScalarValue::UInt64(Some(self.count)),
            ScalarValue::Float64(self.non_finite),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let sums = states[0].as_primitive::<Decimal128Type>();
        let counts = states[1].as_primitive::<UInt64Type>();
        let nfs = states[2].as_primitive::<Float64Type>();
        for i in 0..sums.len() {
            if sums.is_valid(i) {
                self.sum += sums.value(i);
            }
            if counts.is_valid(i) {
                self.count += counts.value(i);
            }
            if nfs.is_valid(i) {
                merge_non_finite(&mut self.non_finite, nfs.value(i));
            }
        }
        Ok(())
    }
}

fn as_f64(array: &ArrayRef) -> Result<ArrayRef> {
    if array.data_type() == &DataType::Float64 {
        Ok(Arc::clone(array))
    } else {
        Ok(arrow::compute::cast(array, &DataType::Float64)?)
    }
}

#[derive(Debug)]
struct ExactGroups {
    kind: Kind,
    sums: Vec<i128>,
    counts: Vec<u64>,
    non_finite: Vec<Option<f64>>,
}

impl ExactGroups {
    fn resize(&mut self, n: usize) {
        self.sums.resize(n, 0);
        self.counts.resize(n, 0);
        self.non_finite.resize(n, None);
    }
}

#[inline]
fn selected(filter: Option<&BooleanArray>, i: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(i) && f.value(i))
}

impl GroupsAccumulator for ExactGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        let values = as_f64(&values[0])?;
        let values = values.as_primitive::<Float64Type>();
        let raw = values.values();
        let no_nulls = values.null_count() == 0;
        if no_nulls && opt_filter.is_none() {
            for (&g, &v) in group_indices.iter().zip(raw.iter()) {
                if v.is_finite() {
                    self.sums[g] += to_fixed(v);
                } else {
                    merge_non_finite(&mut self.non_finite[g], v);
                }
                self.counts[g] += 1;
            }
            return Ok(());
        }
        if let Some(filter) = opt_filter.filter(|f| f.null_count() == 0) {
            // Selected rows only, by their set bits.
            for i in filter.values().set_indices() {
                if !values.is_valid(i) {
                    continue;
                }
                let (g, v) = (group_indices[i], raw[i]);
                if v.is_finite() {
                    self.sums[g] += to_fixed(v);
                } else {
                    merge_non_finite(&mut self.non_finite[g], v);
                }
                self.counts[g] += 1;
            }
            return Ok(());
        }
        for (i, &g) in group_indices.iter().enumerate() {
            if !values.is_valid(i) || !selected(opt_filter, i) {
                continue;
            }
            let v = raw[i];
            if v.is_finite() {
                self.sums[g] += to_fixed(v);
            } else {
                merge_non_finite(&mut self.non_finite[g], v);
            }
            self.counts[g] += 1;
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let sums = emit_to.take_needed(&mut self.sums);
        let counts = emit_to.take_needed(&mut self.counts);
        let nfs = emit_to.take_needed(&mut self.non_finite);
        let out: Float64Array = sums
            .iter()
            .zip(counts.iter())
            .zip(nfs.iter())
            .map(|((&s, &c), &nf)| finish(self.kind, s, c, nf))
            .collect();
        Ok(Arc::new(out))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let sums = emit_to.take_needed(&mut self.sums);
        let counts = emit_to.take_needed(&mut self.counts);
        let nfs = emit_to.take_needed(&mut self.non_finite);
        let sums = Decimal128Array::from(sums).with_precision_and_scale(38, SCALE_DIGITS)?;
        Ok(vec![
            Arc::new(sums),
            Arc::new(UInt64Array::from(counts)),
            Arc::new(Float64Array::from(nfs)),
        ])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        let sums = values[0].as_primitive::<Decimal128Type>();
        let counts = values[1].as_primitive::<UInt64Type>();
        let nfs = values[2].as_primitive::<Float64Type>();
        for (i, &g) in group_indices.iter().enumerate() {
            if sums.is_valid(i) {
                self.sums[g] += sums.value(i);
            }
            if counts.is_valid(i) {
                self.counts[g] += counts.value(i);
            }
            if nfs.is_valid(i) {
                merge_non_finite(&mut self.non_finite[g], nfs.value(i));
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // One row's own state: what merge_batch expects from a partial aggregate.
        let values = as_f64(&values[0])?;
        let values = values.as_primitive::<Float64Type>();
        let n = values.len();
        let mut sums = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut nfs = Vec::with_capacity(n);
        for i in 0..n {
            let take = values.is_valid(i) && selected(opt_filter, i);
            let v = values.value(i);
            sums.push(if take && v.is_finite() {
                to_fixed(v)
            } else {
                0
            });
            counts.push(u64::from(take));
            nfs.push(if take && !v.is_finite() {
                Some(v)
            } else {
                None
            });
        }
        Ok(vec![
            Arc::new(Decimal128Array::from(sums).with_precision_and_scale(38, SCALE_DIGITS)?),
            Arc::new(UInt64Array::from(counts)),
            Arc::new(Float64Array::from(nfs)),
        ])
    }

    fn size(&self) -> usize {
        self.sums.capacity() * 16 + self.counts.capacity() * 8 + self.non_finite.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avg_of(values: &[f64], splits: &[usize]) -> f64 {
        // Accumulate in the given chunking, merging partial states as panes do.
        let mut parts = vec![];
        let mut start = 0;
        for &end in splits.iter().chain(std::iter::once(&values.len())) {
            let mut acc = ExactGroups {
                kind: Kind::Avg,
                sums: vec![],
                counts: vec![],
                non_finite: vec![],
            };
            let chunk: ArrayRef = Arc::new(Float64Array::from(values[start..end].to_vec()));
            acc.update_batch(&[chunk], &vec![0; end - start], None, 1)
                .unwrap();
            parts.push(acc.state(EmitTo::All).unwrap());
            start = end;
        }
        let mut total = ExactGroups {
            kind: Kind::Avg,
            sums: vec![],
            counts: vec![],
            non_finite: vec![],
        };
        for p in parts.iter().rev() {
            total.merge_batch(p, &[0], 1).unwrap();
        }
        total
            .evaluate(EmitTo::All)
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0)
    }

    #[test]
    fn an_average_exactly_on_the_threshold_is_exact_for_any_split() {
        // 143 one-decimal readings averaging exactly 90.0, in an order where
        // naive float summation drifts.
        let mut values = vec![];
        for i in 0..71 {
            values.push(90.0 + 0.1 * ((i % 7) as f64 + 1.0));
            values.push(90.0 - 0.1 * ((i % 7) as f64 + 1.0));
        }
        values.push(90.0);
        assert_eq!(values.len(), 143);
        for splits in [vec![], vec![1], vec![50, 51, 100], vec![7, 30, 31, 99, 142]] {
            assert_eq!(avg_of(&values, &splits), 90.0, "split {splits:?}");
        }
    }

    #[test]
    fn sum_of_no_values_is_null() {
        let mut acc = ExactGroups {
            kind: Kind::Sum,
            sums: vec![],
            counts: vec![],
            non_finite: vec![],
        };
        let chunk: ArrayRef = Arc::new(Float64Array::from(vec![None, Some(1.5)]));
        acc.update_batch(&[chunk], &[0, 1], None, 2).unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        let out = out.as_primitive::<Float64Type>();
        assert!(out.is_null(0));
        assert_eq!(out.value(1), 1.5);
    }
}

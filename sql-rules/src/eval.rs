//! Running a compiled rule's row steps over a batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use arrow::compute::{filter, filter_record_batch};
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::physical_expr::PhysicalExpr;

use crate::compile::RowOp;

/// Evaluates a predicate to a mask where NULL counts as false.
pub fn predicate_mask(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let value = expr.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = value.as_boolean();
    Ok(if mask.null_count() == 0 {
        mask.clone()
    } else {
        // SQL WHERE keeps only TRUE rows.
        arrow::compute::prep_null_mask_filter(mask)
    })
}

/// Evaluates expressions to arrays of the batch's length.
pub fn evaluate_all(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

/// The result of row steps: the output rows and, for each, the index of the
/// base row it came from (so callers can look up event time or group stats).
pub struct Evaluated {
    pub output: RecordBatch,
    pub base_rows: UInt32Array,
}

/// Applies `ops` to `base`, tracking which base rows survive the filters.
pub fn apply_ops(ops: &[RowOp], base: &RecordBatch) -> Result<Evaluated> {
    let mut current = base.clone(); // cheap: Arc'd columns
    let mut rows = UInt32Array::from_iter_values(0..base.num_rows() as u32);
    for op in ops {
        if current.num_rows() == 0 {
            break;
        }
        match op {
            RowOp::Filter(pred) => {
                let mask = predicate_mask(pred, &current)?;
                if mask.true_count() == mask.len() {
                    continue;
                }
                current = filter_record_batch(&current, &mask)?;
                rows = filter(&rows, &mask)?.as_primitive().clone();
            }
            RowOp::Project { exprs, schema } => {
                let columns = evaluate_all(exprs, &current)?;
                current = RecordBatch::try_new_with_options(
                    Arc::clone(schema),
                    columns,
                    &arrow::record_batch::RecordBatchOptions::new()
                        .with_row_count(Some(current.num_rows())),
                )?;
            }
        }
    }
    if let Some(RowOp::Project { schema, .. }) = ops
        .iter()
        .rev()
        .find(|o| matches!(o, RowOp::Project { .. }))
    {
        if current.num_rows() == 0 && current.schema() != *schema {
            current = RecordBatch::new_empty(Arc::clone(schema));
        }
    }
    Ok(Evaluated {
        output: current,
        base_rows: rows,
    })
}

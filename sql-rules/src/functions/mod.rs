//! Functions wardwatch adds to or overrides in DataFusion's registry.

pub mod bounded;
pub mod exact_sum;

use std::sync::Arc;

use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;

/// Registers wardwatch's functions, replacing DataFusion's `sum` and `avg`
/// with order-independent versions for floating-point readings.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(exact_sum::exact_sum_udaf());
    ctx.register_udaf(exact_sum::exact_avg_udaf());
    debug_assert!(ctx.udaf("avg").is_ok());
    let _ = Arc::<()>::default;
}

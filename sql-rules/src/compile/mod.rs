//! Rule SQL → a validated streaming plan.
//!
//! Compilation runs in four steps: parse (DataFusion's parser, with spans),
//! refuse what cannot stream (with the position of the offending clause),
//! rewrite window syntax into plain columns ([`window`]), and let DataFusion
//! plan, resolve and type-check the query ([`plan`]); last, the rule runs
//! over sample readings so that what only fails when it evaluates (a bad
//! cast, a division by zero) is refused too ([`sample`]). The result is a
//! [`CompiledRule`]: physical expressions and aggregate functions that the
//! engine runs incrementally.

pub mod limits;
pub mod plan;
pub mod sample;
pub mod tvf;
pub mod validate;
pub mod window;

pub use limits::{check_query_sql, RuleLimits};
pub use plan::{reading_type, CompiledRule, RowOp, RuleCompiler, RuleShape};
pub use window::WindowSpec;

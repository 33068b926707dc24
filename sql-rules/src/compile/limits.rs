//! Budgets SQL must fit before anything plans or runs it.
//!
//! Two kinds of input can take a server down instead of failing:
//!
//! * SQL nested so deeply that working on it overflows a thread's stack.
//!   Parsing `1+1+…+1` is iterative, so the parser's own recursion limit
//!   does not stop it, but the tree it yields is thousands of levels deep
//!   and DataFusion's planning, type coercion, simplification and physical
//!   planning recurse over it, as do `Drop`, `Clone` and `Display` of the
//!   tree. [`check_expression_depth`] refuses such a tree right after
//!   parsing, and [`on_compile_stack`] runs the whole compilation on a
//!   thread with a stack far larger than any allowed tree needs, so the
//!   check itself (and the drop of the refused tree) cannot overflow either.
//! * Windows whose work never ends: a HOP of 1 ms panes over 100 years
//!   visits billions of panes for one event, and a 100-year session never
//!   closes. [`check_window`] bounds a window's length and the panes each
//!   window is merged from (which also bounds the windows, and so the
//!   alerts, one event can produce).
//!
//! Every refusal names the limit, its value and the setting that changes it,
//! with the position of the offending SQL.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Spanned, Visit, Visitor};

use super::window::{fmt_ms, WindowSpec};

/// A duration as a person would write it: whole days or hours where it is
/// one, as the window description would show it otherwise.
fn human_ms(ms: i64) -> String {
    const HOUR: i64 = 3_600_000;
    if ms == 24 * HOUR {
        "1 day".into()
    } else if ms >= 24 * HOUR && ms % (24 * HOUR) == 0 {
        format!("{} days", ms / (24 * HOUR))
    } else if ms >= HOUR && ms % HOUR == 0 {
        format!("{} h", ms / HOUR)
    } else {
        fmt_ms(ms)
    }
}
use crate::error::{RuleError, SqlPosition};

/// Stack of the thread a rule (or a query's SQL) is checked and compiled on.
/// Only touched pages are committed, so an ordinary rule costs no more than
/// on a default thread; a tree at the depth limit needs well under a tenth.
pub const COMPILE_STACK_BYTES: usize = 64 * 1024 * 1024;

/// How much SQL the server accepts, and how much work a window may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleLimits {
    /// Longest SQL text, in bytes.
    pub max_sql_bytes: usize,
    /// Deepest nesting of expressions: each operator of a chain such as
    /// `a + b + c`, each function call, CASE or parenthesis is one level.
    pub max_expression_depth: usize,
    /// Longest window size (TUMBLE, HOP) or session gap, in milliseconds.
    pub max_window_ms: i64,
    /// Most panes one HOP window is merged from: size / gcd(size, slide).
    /// This also bounds the windows (and alerts) a single event belongs to.
    pub max_panes_per_window: i64,
    /// Most bytes one call of a size-amplifying function (`repeat`, `lpad`,
    /// `||`, …; see [`crate::bounded_functions`]) may produce over a batch.
    pub max_function_output_bytes: usize,
}

impl Default for RuleLimits {
    fn default() -> Self {
        Self {
            max_sql_bytes: 64 * 1024,
            max_expression_depth: 200,
            max_window_ms: 24 * 60 * 60 * 1000,
            max_panes_per_window: 1440,
            max_function_output_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The recursion limit of DataFusion's SQL parser (its default): each
/// parenthesis, function call, CASE or NOT nested in another is a level.
pub const PARSER_RECURSION_LIMIT: usize = 50;

/// The limit of the second parse [`nesting_error`] runs. Far more than any
/// SQL the first parse accepts, and small enough for the compile stack.
const DEEP_PARSE_LIMIT: usize = 400;

/// Levels the parser spends above a rule's expressions (statement, query,
/// clause), so the expression that crossed its limit is about this many
/// levels less deep.
const PARSER_LEVELS_ABOVE_EXPRESSIONS: usize = 4;

/// Tells nesting past the parser's recursion limit from a syntax error, for
/// SQL that did not parse. The parser says so itself
/// (`RecursionLimitExceeded`) only some of the time: when it fails on a
/// keyword it retries the keyword as a name, so a CASE nested 50 deep fails
/// as a CASE, parses as a column named `case`, and the error is a
/// misleading "Expected: end of statement, found: ELSE" further on. So the
/// SQL is nested too deeply when the parser says so, when its CASE … END
/// and parentheses nest past the limit, or when it parses with a much
/// higher limit. Call on the compile stack ([`on_compile_stack`]): the
/// second parse recurses.
pub fn nesting_error(parser_message: &str, sql: &str) -> Option<RuleError> {
    use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
    let max = PARSER_RECURSION_LIMIT - PARSER_LEVELS_ABOVE_EXPRESSIONS;
    let too_deep = |position| {
        RuleError::new(
            format!(
                "the expression is nested too deeply: parentheses, function calls, CASE or NOT more than \
                 {PARSER_RECURSION_LIMIT} deep (the SQL parser's recursion limit); simplify it, e.g. one CASE \
                 with several WHEN branches instead of a CASE nested in each ELSE"
            ),
            position,
        )
    };
    if let Some(at) = token_nesting_past(sql, max) {
        return Some(too_deep(at));
    }
    let said_so = parser_message.contains("RecursionLimitExceeded");
    let deep = DFParserBuilder::new(sql)
        .with_dialect(&sqlparser::dialect::GenericDialect {})
        .with_recursion_limit(DEEP_PARSE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
        .and_then(|mut p| p.parse_statements().map_err(|e| e.to_string()));
    let statements = match deep {
        Ok(statements) => Some(statements),
        Err(e) if said_so || e.contains("RecursionLimitExceeded") => None,
        Err(_) => return None,
    };
    // Point at the expression where the nesting went past the limit.
    let position = statements
        .iter()
        .flatten()
        .find_map(|s| match s {
            DFStatement::Statement(s) => check_expression_depth(&**s, max).err(),
            _ => None,
        })
        .map_or(SqlPosition::new(1, 1), |e| e.position);
    Some(too_deep(position))
}

/// The position of the first `(` or `CASE` nested more than `max` deep in
/// parentheses and CASE … END, if any.
fn token_nesting_past(sql: &str, max: usize) -> Option<SqlPosition> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = sqlparser::dialect::GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .ok()?;
    let mut depth = 0usize;
    for t in tokens {
        match &t.token {
            Token::LParen => depth += 1,
            Token::Word(w) if w.keyword == Keyword::CASE => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if w.keyword == Keyword::END => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if depth > max {
            return Some(SqlPosition::from_sqlparser(t.span.start));
        }
    }
    None
}

/// Refuses SQL longer than `max_sql_bytes`, pointing at where it overflows.
pub fn check_sql_length(sql: &str, limits: &RuleLimits) -> Result<(), RuleError> {
    if sql.len() <= limits.max_sql_bytes {
        return Ok(());
    }
    let mut at = limits.max_sql_bytes;
    while !sql.is_char_boundary(at) {
        at -= 1;
    }
    Err(RuleError::new(
        format!(
            "the SQL is {} bytes long; the limit is {} bytes (max_sql_bytes)",
            sql.len(),
            limits.max_sql_bytes
        ),
        super::plan::offset_to_position(sql, at),
    ))
}

/// Refuses an AST whose expressions nest deeper than `max_depth`.
///
/// The visitor keeps its own depth count; the walk itself recurses once
/// per level, so call this on a thread from [`on_compile_stack`].
pub fn check_expression_depth<T: Visit>(node: &T, max_depth: usize) -> Result<(), RuleError> {
    struct Depth {
        now: usize,
        max: usize,
    }
    impl Visitor for Depth {
        type Break = SqlPosition;
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<SqlPosition> {
            self.now += 1;
            if self.now > self.max {
                // Computing a span walks the subtree: done once, on the way out.
                return ControlFlow::Break(SqlPosition::from_sqlparser(expr.span().start));
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<SqlPosition> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    let mut depth = Depth {
        now: 0,
        max: max_depth,
    };
    match node.visit(&mut depth) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(at) => Err(RuleError::new(
            format!(
                "the SQL nests expressions more than {max_depth} levels deep (max_expression_depth); \
                 each operator of a chain such as `a + b + c` is a level: shorten it, or use IN (…) instead of a long OR chain"
            ),
            if at.is_known() { at } else { SqlPosition::new(1, 1) },
        )),
    }
}

/// Refuses a window longer than `max_window_ms`, or a HOP whose windows
/// are each merged from more than `max_panes_per_window` panes. `at` is the
/// position of the window call.
pub fn check_window(
    window: &WindowSpec,
    at: SqlPosition,
    limits: &RuleLimits,
) -> Result<(), RuleError> {
    let max = limits.max_window_ms;
    let too_long = |what: &str, ms: i64| {
        RuleError::new(
            format!(
                "{what} is {}; the longest allowed is {} (max_window_ms = {max}): a longer window keeps state for longer than an alert is useful",
                human_ms(ms),
                human_ms(max),
            ),
            at,
        )
    };
    match *window {
        WindowSpec::Tumble { size_ms } if size_ms > max => {
            Err(too_long("the TUMBLE size", size_ms))
        }
        WindowSpec::Session { gap_ms } if gap_ms > max => Err(too_long("the SESSION gap", gap_ms)),
        WindowSpec::Hop { size_ms, .. } if size_ms > max => Err(too_long("the HOP size", size_ms)),
        WindowSpec::Hop { slide_ms, size_ms } => {
            let pane_ms = window.pane_ms();
            let panes = size_ms / pane_ms;
            let limit = limits.max_panes_per_window;
            if panes <= limit {
                return Ok(());
            }
            // The smallest slide dividing the size that fits the budget.
            let hint = (1..=limit)
                .rev()
                .find(|n| size_ms % n == 0)
                .map(|n| size_ms / n)
                .map_or(String::new(), |s| {
                    format!(
                        ": use a slide of at least {} that divides the size",
                        fmt_ms(s)
                    )
                });
            Err(RuleError::new(
                format!(
                    "a HOP of {} every {} is built from {panes} panes of {} per window (and puts each event in {} windows); \
                     the limit is {limit} panes per window (max_panes_per_window){hint}",
                    human_ms(size_ms),
                    human_ms(slide_ms),
                    human_ms(pane_ms),
                    size_ms / slide_ms,
                ),
                at,
            ))
        }
        _ => Ok(()),
    }
}

/// Runs `work` on a fresh thread with [`COMPILE_STACK_BYTES`] of stack and
/// waits for it. A panic in `work` becomes an error instead of unwinding
/// into the caller (a request handler or the server's startup).
pub fn on_compile_stack<T: Send>(
    work: impl FnOnce() -> Result<T, RuleError> + Send,
) -> Result<T, RuleError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("wardwatch-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn_scoped(scope, work)
            .map_err(|e| {
                RuleError::at_start(format!("could not start a thread to compile the SQL: {e}"))
            })?;
        handle.join().unwrap_or_else(|_| {
            Err(RuleError::at_start(
                "compiling this SQL failed inside the planner (a bug in wardwatch or DataFusion); it was not accepted",
            ))
        })
    })
}

/// The SQL checks of a history query (`POST /api/query`): its length, and
/// the depth of every statement's expressions. SQL that does not parse
/// passes, so that DataFusion reports the syntax error itself, unless it is
/// nested past the parser's recursion limit.
pub fn check_query_sql(sql: &str, limits: &RuleLimits) -> Result<(), RuleError> {
    use datafusion::sql::parser::{CopyToSource, DFParser, Statement as DFStatement};
    check_sql_length(sql, limits)?;
    let max_depth = limits.max_expression_depth;
    on_compile_stack(|| {
        let statements =
            match DFParser::parse_sql_with_dialect(sql, &sqlparser::dialect::GenericDialect {}) {
                Ok(statements) => statements,
                Err(e) => return nesting_error(&e.to_string(), sql).map_or(Ok(()), Err),
            };
        fn check(statement: &DFStatement, max_depth: usize) -> Result<(), RuleError> {
            match statement {
                DFStatement::Statement(s) => check_expression_depth(&**s, max_depth),
                DFStatement::Explain(e) => check(&e.statement, max_depth),
                DFStatement::CopyTo(c) => match &c.source {
                    CopyToSource::Query(q) => check_expression_depth(&**q, max_depth),
                    CopyToSource::Relation(_) => Ok(()),
                },
                DFStatement::CreateExternalTable(_) | DFStatement::Reset(_) => Ok(()),
            }
        }
        statements.iter().try_for_each(|s| check(s, max_depth))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(terms: usize) -> String {
        format!("SELECT {}", vec!["1"; terms].join("+"))
    }

    #[test]
    fn a_long_operator_chain_is_refused_with_the_limit_not_a_stack_overflow() {
        for terms in [2_000, 10_000] {
            let err = check_query_sql(&chain(terms), &RuleLimits::default()).unwrap_err();
            assert!(
                err.message.contains("more than 200 levels deep"),
                "{}",
                err.message
            );
            assert!(err.position.is_known());
        }
    }

    #[test]
    fn a_chain_within_the_limit_passes() {
        // 200 terms are 199 nested additions: 199 levels.
        check_query_sql(&chain(200), &RuleLimits::default()).unwrap();
    }

    #[test]
    fn sql_over_the_length_limit_is_refused_before_parsing() {
        let limits = RuleLimits {
            max_sql_bytes: 10,
            ..RuleLimits::default()
        };
        let err = check_sql_length("SELECT 1234567890", &limits).unwrap_err();
        assert!(err.message.contains("limit is 10 bytes"), "{}", err.message);
        assert_eq!(err.position, SqlPosition::new(1, 11));
    }

    #[test]
    fn hop_panes_over_the_budget_are_refused_with_a_slide_that_fits() {
        let limits = RuleLimits::default();
        let at = SqlPosition::new(2, 10);
        let hop = WindowSpec::Hop {
            slide_ms: 1_000,
            size_ms: 3_600_000,
        };
        let err = check_window(&hop, at, &limits).unwrap_err();
        assert!(err.message.contains("3600 panes"), "{}", err.message);
        assert!(
            err.message.contains("slide of at least 2500 ms"),
            "{}",
            err.message
        );
        assert_eq!(err.position, at);
        let fits = WindowSpec::Hop {
            slide_ms: 60_000,
            size_ms: 3_600_000,
        };
        check_window(&fits, at, &limits).unwrap();
    }

    #[test]
    fn windows_longer_than_a_day_are_refused() {
        let limits = RuleLimits::default();
        let at = SqlPosition::new(1, 1);
        let day = 86_400_000;
        check_window(&WindowSpec::Tumble { size_ms: day }, at, &limits).unwrap();
        for w in [
            WindowSpec::Tumble { size_ms: day + 1 },
            WindowSpec::Session { gap_ms: day * 365 },
            WindowSpec::Hop {
                slide_ms: day,
                size_ms: 2 * day,
            },
        ] {
            let err = check_window(&w, at, &limits).unwrap_err();
            assert!(err.message.contains("max_window_ms"), "{}", err.message);
        }
    }

    #[test]
    fn a_panic_while_compiling_is_an_error_not_a_crash() {
        let err = on_compile_stack::<()>(|| panic!("planner bug")).unwrap_err();
        assert!(err.message.contains("not accepted"), "{}", err.message);
    }
}

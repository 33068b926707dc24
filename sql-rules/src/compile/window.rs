//! Finding the window in a rule's SQL and rewriting it into plain SQL that
//! DataFusion can plan.
//!
//! `GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id` becomes
//! `GROUP BY window_start, window_end, patient_id` over a table that carries
//! those two columns, and `TUMBLE_END(...)` in the projection or HAVING becomes
//! `window_end`. The engine fills the two columns itself from pane
//! assignment, so DataFusion plans every expression and aggregate while the
//! streaming operator owns time.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName,
    ObjectNamePart, Query, SetExpr, Spanned, TableFactor, Value, VisitMut,
};

use crate::error::{RuleError, SqlPosition};
use crate::stream::{col, STREAM_NAME};

/// Name of the internal table that is `vitals` plus window columns.
pub const WINDOWED_TABLE: &str = "__vitals_windowed";
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// The window a rule aggregates over. Sizes are milliseconds of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WindowSpec {
    Tumble { size_ms: i64 },
    Hop { slide_ms: i64, size_ms: i64 },
    Session { gap_ms: i64 },
}

impl WindowSpec {
    /// Width of the panes windows are built from: gcd(size, slide), so each
    /// event is aggregated into exactly one pane.
    pub fn pane_ms(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { size_ms } => size_ms,
            WindowSpec::Hop { slide_ms, size_ms } => gcd(slide_ms, size_ms),
            WindowSpec::Session { gap_ms } => gap_ms,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            WindowSpec::Tumble { size_ms } => format!("TUMBLE {}", fmt_ms(size_ms)),
            WindowSpec::Hop { slide_ms, size_ms } => {
                format!("HOP {} every {}", fmt_ms(size_ms), fmt_ms(slide_ms))
            }
            WindowSpec::Session { gap_ms } => format!("SESSION gap {}", fmt_ms(gap_ms)),
        }
    }
}

pub(crate) fn fmt_ms(ms: i64) -> String {
    if ms % 60_000 == 0 {
        format!("{} min", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

pub fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Tumble,
    Hop,
    Session,
}

impl Family {
    fn from_name(name: &str) -> Option<(Family, Option<bool>)> {
        // Returns the family and, for the auxiliary functions, whether it is
        // the START (false) or END (true) accessor.
        let upper = name.to_ascii_uppercase();
        let (fam, rest) = if let Some(r) = upper.strip_prefix("TUMBLE") {
            (Family::Tumble, r)
        } else if let Some(r) = upper.strip_prefix("HOP") {
            (Family::Hop, r)
        } else if let Some(r) = upper.strip_prefix("SESSION") {
            (Family::Session, r)
        } else {
            return None;
        };
        match rest {
            "" => Some((fam, None)),
            "_START" => Some((fam, Some(false))),
            "_END" => Some((fam, Some(true))),
            _ => None,
        }
    }
}

fn function_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(id)] => Some(id.value.clone()),
        _ => None,
    }
}

fn position_of(expr: &Expr) -> SqlPosition {
    SqlPosition::from_sqlparser(expr.span().start)
}

fn unnamed_args(args: &FunctionArguments, at: SqlPosition) -> Result<Vec<&Expr>, RuleError> {
    let list = match args {
        FunctionArguments::List(list) => list,
        _ => return Err(RuleError::new("window function needs arguments", at)),
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
            _ => Err(RuleError::new(
                "window function arguments must be plain expressions",
                at,
            )),
        })
        .collect()
}

/// Converts an `INTERVAL '…' UNIT` literal to milliseconds.
pub fn interval_ms(expr: &Expr) -> Result<i64, RuleError> {
    let at = position_of(expr);
    let Expr::Interval(iv) = expr else {
        return Err(RuleError::new(
            format!("expected an INTERVAL literal such as INTERVAL '60' SECOND, found `{expr}`"),
            at,
        ));
    };
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => {
                return Err(RuleError::new(
                    format!("unsupported interval value {other}"),
                    at,
                ))
            }
        },
        other => {
            return Err(RuleError::new(
                format!("unsupported interval value {other}"),
                at,
            ))
        }
    };
    if iv.last_field.is_some() {
        return Err(RuleError::new(
            "interval ranges (e.g. HOUR TO MINUTE) are not supported",
            at,
        ));
    }
    let full = match &iv.leading_field {
        Some(field) => format!("{text} {field}"),
        None => text,
    };
    let parsed = arrow::compute::kernels::cast_utils::parse_interval_month_day_nano(&full)
        .map_err(|e| RuleError::new(format!("invalid interval '{full}': {e}"), at))?;
    if parsed.months != 0 {
        return Err(RuleError::new(
            "window sizes in months or years are not supported: their length varies",
            at,
        ));
    }
    let ms = parsed.days as i64 * 86_400_000 + parsed.nanoseconds / 1_000_000;
    if parsed.nanoseconds % 1_000_000 != 0 {
        return Err(RuleError::new(
            "window sizes must be whole milliseconds",
            at,
        ));
    }
    if ms <= 0 {
        return Err(RuleError::new(
            format!("window size must be positive, got '{full}'"),
            at,
        ));
    }
    Ok(ms)
}

fn is_event_time(expr: &Expr) -> bool {
    match expr {
        Expr::Identifier(id) => id.value.eq_ignore_ascii_case(col::EVENT_TIME),
        Expr::CompoundIdentifier(ids) => ids
            .last()
            .is_some_and(|id| id.value.eq_ignore_ascii_case(col::EVENT_TIME)),
        _ => false,
    }
}

fn parse_window_call(
    family: Family,
    args: &[&Expr],
    at: SqlPosition,
) -> Result<WindowSpec, RuleError> {
    let name = format!("{family:?}").to_uppercase();
    let expected = match family {
        Family::Tumble => 2,
        Family::Hop => 3,
        Family::Session => 2,
    };
    if args.len() != expected {
        let usage = match family {
            Family::Tumble => "TUMBLE(event_time, INTERVAL '1' MINUTE)",
            Family::Hop => {
                "HOP(event_time, INTERVAL '1' MINUTE /* slide */, INTERVAL '5' MINUTE /* size */)"
            }
            Family::Session => "SESSION(event_time, INTERVAL '30' SECOND /* gap */)",
        };
        return Err(RuleError::new(
            format!(
                "{name} takes {expected} arguments, got {}: write {usage}",
                args.len()
            ),
            at,
        ));
    }
    if !is_event_time(args[0]) {
        return Err(RuleError::new(
            format!(
                "{name} must be over the event time column `event_time`, found `{}`",
                args[0]
            ),
            position_of(args[0]),
        ));
    }
    Ok(match family {
        Family::Tumble => WindowSpec::Tumble {
            size_ms: interval_ms(args[1])?,
        },
        Family::Hop => {
            let slide_ms = interval_ms(args[1])?;
            let size_ms = interval_ms(args[2])?;
            if slide_ms > size_ms {
                return Err(RuleError::new(
                    format!("HOP slide ({slide_ms} ms) must not exceed its size ({size_ms} ms): events between windows would be skipped"),
                    position_of(args[1]),
                ));
            }
            WindowSpec::Hop { slide_ms, size_ms }
        }
        Family::Session => WindowSpec::Session {
            gap_ms: interval_ms(args[1])?,
        },
    })
}

/// The outcome of rewriting: the window (if any) and the rewritten query.
pub struct Rewritten {
    pub window: Option<WindowSpec>,
    /// Where the window call is in the SQL (for budget refusals).
    pub window_at: SqlPosition,
}

/// Rewrites `query` in place, removing window syntax. Returns the window.
pub fn rewrite_windows(query: &mut Query) -> Result<Rewritten, RuleError> {
    let select = match query.body.as_mut() {
        SetExpr::Select(select) => select,
        _ => {
            return Err(RuleError::at_start(
                "a rule must be a single SELECT (UNION, VALUES and the like are not supported)",
            ))
        }
    };

    // 1. Windows in GROUP BY.
    let mut window: Option<(WindowSpec, Family, SqlPosition)> = None;
    if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
        let mut rewritten = Vec::with_capacity(exprs.len() + 1);
        for expr in exprs.drain(..) {
            let call = match &expr {
                Expr::Function(f) => function_name(&f.name)
                    .and_then(|n| Family::from_name(&n))
                    .filter(|(_, acc)| acc.is_none())
                    .map(|(fam, _)| (fam, f)),
                _ => None,
            };
            match call {
                Some((family, f)) => {
                    let at = position_of(&expr);
                    if window.is_some() {
                        return Err(RuleError::new("a rule may group by only one window", at));
                    }
                    let args = unnamed_args(&f.args, at)?;
                    window = Some((parse_window_call(family, &args, at)?, family, at));
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_START)));
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_END)));
                }
                None => rewritten.push(expr),
            }
        }
        *exprs = rewritten;
    }

    // 2. TUMBLE_START / HOP_END / ... accessors anywhere in the query.
    let mut failure: Option<RuleError> = None;
    let _ = sqlparser::ast::visit_expressions_mut(query, |expr| {
        let Expr::Function(f) = &*expr else {
            return ControlFlow::Continue(());
        };
        let Some((family, Some(is_end))) =
            function_name(&f.name).and_then(|n| Family::from_name(&n))
        else {
            return ControlFlow::Continue(());
        };
        let at = position_of(expr);
        let check = unnamed_args(&f.args, at).and_then(|args| {
            let spec = parse_window_call(family, &args, at)?;
            match window {
                Some((w, fam, _)) if w == spec && fam == family => Ok(()),
                Some(_) => Err(RuleError::new(
                    format!("`{expr}` does not match the window in GROUP BY"),
                    at,
                )),
                None => Err(RuleError::new(
                    format!("`{expr}` needs the same window in GROUP BY"),
                    at,
                )),
            }
        });
        if let Err(e) = check {
            failure = Some(e);
            return ControlFlow::Break(());
        }
        *expr = Expr::Identifier(Ident::new(if is_end { WINDOW_END } else { WINDOW_START }));
        ControlFlow::Continue(())
    });
    if let Some(e) = failure {
        return Err(e);
    }

    // 3. A windowed rule reads the table that carries the window columns.
    if window.is_some() {
        let select = match query.body.as_mut() {
            SetExpr::Select(select) => select,
            _ => unreachable!("checked above"),
        };
        for twj in &mut select.from {
            if let TableFactor::Table { name, alias, .. } = &mut twj.relation {
                if function_name(name).is_some_and(|n| n.eq_ignore_ascii_case(STREAM_NAME)) {
                    *name = ObjectName::from(vec![Ident::new(WINDOWED_TABLE)]);
                    if alias.is_none() {
                        *alias = Some(sqlparser::ast::TableAlias {
                            explicit: true,
                            name: Ident::new(STREAM_NAME),
                            columns: vec![],
                            at: None,
                        });
                    }
                }
            }
        }
    }
    Ok(Rewritten {
        window: window.map(|(w, _, _)| w),
        window_at: window.map_or(SqlPosition::new(1, 1), |(_, _, at)| at),
    })
}

/// Visits the query so `VisitMut` stays in scope for callers that extend it.
#[allow(dead_code)]
fn _assert_visit_mut<T: VisitMut>(_: &T) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_interval(sql: &str) -> Result<i64, RuleError> {
        let dialect = sqlparser::dialect::GenericDialect {};
        let expr = sqlparser::parser::Parser::new(&dialect)
            .try_with_sql(sql)
            .unwrap()
            .parse_expr()
            .unwrap();
        interval_ms(&expr)
    }

    #[test]
    fn intervals_in_common_spellings_convert_to_milliseconds() {
        assert_eq!(parse_interval("INTERVAL '60' SECOND").unwrap(), 60_000);
        assert_eq!(parse_interval("INTERVAL '5' MINUTE").unwrap(), 300_000);
        assert_eq!(parse_interval("INTERVAL '1 hour'").unwrap(), 3_600_000);
        assert_eq!(parse_interval("INTERVAL '500 milliseconds'").unwrap(), 500);
    }

    #[test]
    fn month_windows_are_refused() {
        let err = parse_interval("INTERVAL '1' MONTH").unwrap_err();
        assert!(err.message.contains("months"), "{}", err.message);
    }

    #[test]
    fn hop_panes_are_the_gcd_of_slide_and_size() {
        let w = WindowSpec::Hop {
            slide_ms: 60_000,
            size_ms: 300_000,
        };
        assert_eq!(w.pane_ms(), 60_000);
        let w = WindowSpec::Hop {
            slide_ms: 40_000,
            size_ms: 100_000,
        };
        assert_eq!(w.pane_ms(), 20_000);
    }
}

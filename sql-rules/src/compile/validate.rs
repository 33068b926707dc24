//! Refusals that are clearer on the SQL text than on DataFusion's plan:
//! what cannot run over an unbounded stream, with the position of the clause.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SetExpr, Spanned, Statement};

use crate::error::{RuleError, SqlPosition};

fn pos<T: Spanned>(node: &T) -> SqlPosition {
    let p = SqlPosition::from_sqlparser(node.span().start);
    if p.is_known() {
        p
    } else {
        SqlPosition::new(1, 1)
    }
}

/// Checks the statement is a single streaming SELECT and returns its query.
pub fn streaming_query(stmt: &mut Statement) -> Result<&mut Query, RuleError> {
    let at = pos(&*stmt);
    let Statement::Query(query) = stmt else {
        return Err(RuleError::new(
            "a rule must be a SELECT query; statements that change data or schema are not rules",
            at,
        ));
    };
    if let Some(with) = &query.with {
        return Err(RuleError::new(
            "WITH (common table expressions) is not supported in rules yet",
            pos(with),
        ));
    }
    if let Some(order_by) = &query.order_by {
        return Err(RuleError::new(
            "ORDER BY cannot run over an unbounded stream: alerts are emitted in event-time order as windows close",
            pos(order_by),
        ));
    }
    if let Some(limit) = &query.limit_clause {
        return Err(RuleError::new(
            "LIMIT cannot run over an unbounded stream",
            pos(limit),
        ));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(RuleError::new(
            "a rule must be a single SELECT (UNION, VALUES and the like are not supported)",
            pos(query.body.as_ref()),
        ));
    };
    if matches!(
        select.distinct,
        Some(sqlparser::ast::Distinct::Distinct | sqlparser::ast::Distinct::On(_))
    ) {
        return Err(RuleError::new(
            "SELECT DISTINCT over a stream is not supported: group by a window instead",
            pos(select.as_ref()),
        ));
    }
    match select.from.as_slice() {
        [] => {
            return Err(RuleError::new(
                "a rule must read FROM vitals",
                pos(select.as_ref()),
            ))
        }
        [one] => {
            if let Some(join) = one.joins.first() {
                return Err(RuleError::new(
                    "joins are not supported in rules yet",
                    pos(join),
                ));
            }
        }
        [_, second, ..] => {
            return Err(RuleError::new(
                "joins are not supported in rules yet",
                pos(second),
            ));
        }
    }
    // Window functions with OVER and subqueries, anywhere in the query.
    let mut found: Option<RuleError> = None;
    let _ = sqlparser::ast::visit_expressions(query.as_ref(), |expr: &Expr| {
        let err = match expr {
            Expr::Function(f) if f.over.is_some() => Some(RuleError::new(
                format!(
                    "`{}` with OVER is not supported: group by TUMBLE, HOP or SESSION instead",
                    f.name
                ),
                pos(expr),
            )),
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => Some(
                RuleError::new("subqueries are not supported in rules yet", pos(expr)),
            ),
            _ => None,
        };
        match err {
            Some(e) => {
                found = Some(e);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    });
    if let Some(e) = found {
        return Err(e);
    }
    Ok(query.as_mut())
}

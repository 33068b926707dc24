//! Pruning: which `date=`/`hour=` directories a history scan must read.
//!
//! Bounds on the event time in a query's filters ([`time_bounds`]) become
//! `date`/`hour` predicates ([`hour_partition_filters`]) that the listing
//! table prunes directories with; the archive's path segments are parsed
//! back into hours for [`HistoryCatalog::hours`](super::HistoryCatalog::hours).
//! Nothing here reads storage.

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{col, lit, Between, BinaryExpr, Expr, Operator};

use crate::archive::{hour_index, partition_values};

/// The `date`/`hour` predicates implied by an event-time range, for pruning.
///
/// `from_ms` and `to_ms` are inclusive bounds in milliseconds (either may be
/// open). The result holds only for rows whose event time is in the range,
/// so adding it to a query never changes the answer, only what is read:
///
/// - within one hour: `date = 'D' AND hour = 'H'` (the equalities narrow the
///   listing to that hour's directory);
/// - within one day: `date = 'D' AND hour >= 'H1' AND hour <= 'H2'` (the
///   equality also narrows the listing to one directory);
/// - across days: `date >= 'D1' AND (date > 'D1' OR hour >= 'H1')` and
///   `date <= 'D2' AND (date < 'D2' OR hour <= 'H2')`.
///
/// Partition values are zero-padded strings, so string order is time order.
/// History tables apply this to every scan by themselves.
pub fn hour_partition_filters(from_ms: Option<i64>, to_ms: Option<i64>) -> Vec<Expr> {
    let lower = from_ms.and_then(|t| partition_values(hour_index(t)));
    let upper = to_ms.and_then(|t| partition_values(hour_index(t)));
    let date = || col("date");
    let hour = || col("hour");
    match (lower, upper) {
        (Some((d1, h1)), Some((d2, h2))) if d1 == d2 && h1 == h2 => {
            vec![date().eq(lit(d1)), hour().eq(lit(h1))]
        }
        (Some((d1, h1)), Some((d2, h2))) if d1 == d2 => vec![
            date().eq(lit(d1)),
            hour().gt_eq(lit(h1)),
            hour().lt_eq(lit(h2)),
        ],
        (lower, upper) => {
            let mut filters = Vec::new();
            if let Some((d1, h1)) = lower {
                filters.push(date().gt_eq(lit(d1.clone())));
                filters.push(date().gt(lit(d1)).or(hour().gt_eq(lit(h1))));
            }
            if let Some((d2, h2)) = upper {
                filters.push(date().lt_eq(lit(d2.clone())));
                filters.push(date().lt(lit(d2)).or(hour().lt_eq(lit(h2))));
            }
            filters
        }
    }
}

/// The first hour (since the epoch) of a `date=YYYY-MM-DD` path segment.
pub(super) fn parse_date_segment(segment: &str) -> Option<i64> {
    let value = segment.strip_prefix("date=")?;
    let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    let midnight = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
    Some(midnight.div_euclid(3600))
}

/// The hour of an `hour=HH` path segment, as the writer spells it.
pub(super) fn parse_hour_segment(segment: &str) -> Option<u8> {
    let value = segment.strip_prefix("hour=")?;
    if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|h| *h < 24)
}

/// The tightest inclusive millisecond bounds that `filters` put on any of
/// `columns` (which hold the event time as a timestamp or as integer ms).
pub(super) fn time_bounds(filters: &[Expr], columns: &[String]) -> (Option<i64>, Option<i64>) {
    let mut lo: Option<i64> = None;
    let mut hi: Option<i64> = None;
    let mut raise = |v: i64| lo = Some(lo.map_or(v, |l| l.max(v)));
    let mut bounds = Vec::new();
    for filter in filters {
        for conjunct in split_conjunction(filter) {
            collect_bounds(conjunct, columns, &mut bounds);
        }
    }
    for (low, high) in bounds {
        if let Some(v) = low {
            raise(v);
        }
        if let Some(v) = high {
            hi = Some(hi.map_or(v, |h: i64| h.min(v)));
        }
    }
    (lo, hi)
}

/// Appends the (lower, upper) inclusive ms bounds one conjunct implies.
fn collect_bounds(expr: &Expr, columns: &[String], out: &mut Vec<(Option<i64>, Option<i64>)>) {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, literal) = if is_time_column(left, columns) {
                (*op, right.as_ref())
            } else if is_time_column(right, columns) {
                match op.swap() {
                    Some(op) => (op, left.as_ref()),
                    None => return,
                }
            } else {
                return;
            };
            let Some(value) = literal_ms(literal) else {
                return;
            };
            let bound = match op {
                Operator::GtEq => (Some(value.ceil()), None),
                Operator::Gt => (value.floor().checked_add(1), None),
                Operator::LtEq => (None, Some(value.floor())),
                Operator::Lt => (None, value.ceil().checked_sub(1)),
                Operator::Eq => (Some(value.ceil()), Some(value.floor())),
                _ => return,
            };
            out.push(bound);
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_time_column(expr, columns) => {
            out.push((
                literal_ms(low).map(|v| v.ceil()),
                literal_ms(high).map(|v| v.floor()),
            ));
        }
        _ => {}
    }
}

fn is_time_column(expr: &Expr, columns: &[String]) -> bool {
    match expr {
        Expr::Column(column) => columns.iter().any(|c| c == &column.name),
        // A millisecond timestamp cast to another timestamp unit keeps its
        // order, so bounds on the cast still bound the column.
        Expr::Cast(cast) if matches!(cast.field.data_type(), DataType::Timestamp(..)) => {
            is_time_column(&cast.expr, columns)
        }
        _ => false,
    }
}

/// A literal as milliseconds, kept exact as `whole + fraction` so strict and
/// non-strict bounds round the right way.
#[derive(Debug, Clone, Copy)]
struct Millis {
    floor: i64,
    exact: bool,
}

impl Millis {
    fn floor(self) -> i64 {
        self.floor
    }
    fn ceil(self) -> i64 {
        if self.exact {
            self.floor
        } else {
            self.floor.saturating_add(1)
        }
    }
}

fn literal_ms(expr: &Expr) -> Option<Millis> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let scaled = |v: i64, per_ms: i64| Millis {
        floor: v.div_euclid(per_ms),
        exact: v.rem_euclid(per_ms) == 0,
    };
    let exact = |v: i64| Millis {
        floor: v,
        exact: true,
    };
    match value {
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1000).map(exact),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some(exact(*v)),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(scaled(*v, 1_000)),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(scaled(*v, 1_000_000)),
        ScalarValue::Int64(Some(v)) => Some(exact(*v)),
        ScalarValue::Int32(Some(v)) => Some(exact(i64::from(*v))),
        ScalarValue::UInt32(Some(v)) => Some(exact(i64::from(*v))),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok().map(exact),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::sample::{HOUR, T0};

    #[test]
    fn time_predicates_become_inclusive_millisecond_bounds() {
        let columns = vec!["event_time".to_string(), "timestamp_unix_ms".to_string()];
        let ts = |ms: i64| {
            lit(ScalarValue::TimestampMillisecond(
                Some(ms),
                Some("UTC".into()),
            ))
        };
        let ns = |ns: i64| lit(ScalarValue::TimestampNanosecond(Some(ns), None));
        let t = || col("event_time");
        let cases = [
            (
                vec![t().gt_eq(ts(100)), t().lt(ts(200))],
                (Some(100), Some(199)),
            ),
            (
                vec![t().gt(ts(100)), t().lt_eq(ts(200))],
                (Some(101), Some(200)),
            ),
            (vec![ts(100).lt_eq(t())], (Some(100), None)),
            (vec![t().eq(ts(150))], (Some(150), Some(150))),
            (vec![t().between(ts(1), ts(9))], (Some(1), Some(9))),
            (vec![t().gt_eq(ns(1_500_000))], (Some(2), None)),
            (vec![t().lt(ns(1_500_000))], (None, Some(1))),
            (vec![t().lt(ns(2_000_000))], (None, Some(1))),
            (
                vec![col("timestamp_unix_ms").gt_eq(lit(5i64))],
                (Some(5), None),
            ),
            (
                vec![t().gt_eq(ts(5)).and(t().gt_eq(ts(7)))],
                (Some(7), None),
            ),
            (vec![t().gt_eq(ts(5)).or(t().lt(ts(2)))], (None, None)),
            (vec![col("heart_rate_bpm").gt(lit(100.0))], (None, None)),
            (vec![t().not_between(ts(1), ts(9))], (None, None)),
        ];
        for (filters, expected) in cases {
            assert_eq!(time_bounds(&filters, &columns), expected, "{filters:?}");
        }
    }

    #[test]
    fn hour_filters_use_equality_within_a_day_and_ranges_across_days() {
        let shown = |filters: Vec<Expr>| {
            filters
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let same_day = hour_partition_filters(Some(T0), Some(T0 + HOUR + 5));
        assert_eq!(
            shown(same_day),
            "date = Utf8(\"2026-01-01\") AND hour >= Utf8(\"10\") AND hour <= Utf8(\"11\")"
        );
        let across = hour_partition_filters(Some(T0), Some(T0 + 20 * HOUR));
        let text = shown(across);
        assert!(text.contains("date >= Utf8(\"2026-01-01\")"), "{text}");
        assert!(
            text.contains("date < Utf8(\"2026-01-02\") OR hour <= Utf8(\"06\")"),
            "{text}"
        );
        let one_hour = hour_partition_filters(Some(T0 + 5), Some(T0 + HOUR - 1));
        assert_eq!(
            shown(one_hour),
            "date = Utf8(\"2026-01-01\") AND hour = Utf8(\"10\")"
        );
        assert!(hour_partition_filters(None, None).is_empty());
        assert_eq!(hour_partition_filters(Some(T0), None).len(), 2);
    }
}

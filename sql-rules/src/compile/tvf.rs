//! Windowing table functions:
//! `FROM TABLE(TUMBLE(TABLE vitals, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))`
//! and `TABLE(HOP(TABLE vitals, DESCRIPTOR(event_time), slide, size))`.
//!
//! The SQL parser does not know this syntax, so it is recognised in the
//! text and replaced by the internal windowed table, padded with spaces to
//! the same length so every later error still points at the right column.

use super::window::{interval_ms, WindowSpec, WINDOWED_TABLE};
use crate::compile::plan::offset_to_position;
use crate::error::{RuleError, SqlPosition};
use crate::stream::{col, STREAM_NAME};

/// Finds a windowing table function, returns the rewritten SQL and window.
/// The position returned is that of the window function (`TUMBLE` or `HOP`).
pub fn rewrite_table_functions(
    sql: &str,
) -> Result<Option<(String, WindowSpec, SqlPosition)>, RuleError> {
    let upper = sql.to_ascii_uppercase();
    let bytes = upper.as_bytes();
    let mut search = 0;
    while let Some(found) = upper[search..].find("TABLE") {
        let start = search + found;
        search = start + 5;
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let mut p = skip_ws(bytes, start + 5);
        if bytes.get(p) != Some(&b'(') {
            continue;
        }
        p = skip_ws(bytes, p + 1);
        let family = if upper[p..].starts_with("TUMBLE") {
            "TUMBLE"
        } else if upper[p..].starts_with("HOP") {
            "HOP"
        } else {
            continue;
        };
        let at = offset_to_position(sql, p);
        let open = skip_ws(bytes, p + family.len());
        if bytes.get(open) != Some(&b'(') {
            continue;
        }
        let (args, close) = split_args(sql, open)
            .ok_or_else(|| RuleError::new(format!("unclosed {family}( … )"), at))?;
        let outer_close = skip_ws(bytes, close + 1);
        if bytes.get(outer_close) != Some(&b')') {
            return Err(RuleError::new(
                format!("expected `)` closing TABLE({family}(…))"),
                offset_to_position(sql, outer_close),
            ));
        }
        let usage = if family == "TUMBLE" {
            "TABLE(TUMBLE(TABLE vitals, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))"
        } else {
            "TABLE(HOP(TABLE vitals, DESCRIPTOR(event_time), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE))"
        };
        let want = if family == "TUMBLE" { 3 } else { 4 };
        if args.len() != want {
            return Err(RuleError::new(
                format!("{family} takes {want} arguments here: write {usage}"),
                at,
            ));
        }
        let (table_text, table_at) = &args[0];
        let table = table_text.trim();
        let table_ok = table
            .get(..5)
            .is_some_and(|t| t.eq_ignore_ascii_case("TABLE"))
            && table[5..].trim().eq_ignore_ascii_case(STREAM_NAME);
        if !table_ok {
            return Err(RuleError::new(
                format!("expected `TABLE vitals`, found `{table}`"),
                offset_to_position(sql, *table_at),
            ));
        }
        let (desc_text, desc_at) = &args[1];
        let desc = desc_text.trim().to_ascii_lowercase().replace(' ', "");
        if desc != format!("descriptor({})", col::EVENT_TIME) {
            return Err(RuleError::new(
                format!(
                    "windows are over event time: expected `DESCRIPTOR(event_time)`, found `{}`",
                    desc_text.trim()
                ),
                offset_to_position(sql, *desc_at),
            ));
        }
        let interval = |i: usize| -> Result<i64, RuleError> {
            let (text, offset) = &args[i];
            let dialect = sqlparser::dialect::GenericDialect {};
            let expr = sqlparser::parser::Parser::new(&dialect)
                .try_with_sql(text)
                .and_then(|mut p| p.parse_expr())
                .map_err(|e| {
                    RuleError::new(
                        format!("invalid interval: {e}"),
                        offset_to_position(sql, *offset),
                    )
                })?;
            interval_ms(&expr)
                .map_err(|e| RuleError::new(e.message, offset_to_position(sql, *offset)))
        };
        let window = if family == "TUMBLE" {
            WindowSpec::Tumble {
                size_ms: interval(2)?,
            }
        } else {
            let slide_ms = interval(2)?;
            let size_ms = interval(3)?;
            if slide_ms > size_ms {
                return Err(RuleError::new(
                    "HOP slide must not exceed its size",
                    offset_to_position(sql, args[2].1),
                ));
            }
            WindowSpec::Hop { slide_ms, size_ms }
        };
        // Same length, same line breaks: positions after it stay right.
        let replacement_core = format!("{WINDOWED_TABLE} {STREAM_NAME}");
        let span = &sql[start..=outer_close];
        let mut replacement: String = span
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        if replacement.len() >= replacement_core.len()
            && !replacement[..replacement_core.len()].contains('\n')
        {
            replacement.replace_range(..replacement_core.len(), &replacement_core);
        } else {
            replacement = format!("{replacement_core} ");
        }
        let mut out = String::with_capacity(sql.len());
        out.push_str(&sql[..start]);
        out.push_str(&replacement);
        out.push_str(&sql[outer_close + 1..]);
        return Ok(Some((out, window, at)));
    }
    Ok(None)
}

fn skip_ws(bytes: &[u8], mut p: usize) -> usize {
    while p < bytes.len() && bytes[p].is_ascii_whitespace() {
        p += 1;
    }
    p
}

/// Splits `( a, b(c, d), 'x,y' )` at top-level commas. Returns each
/// argument's text with its byte offset, and the offset of the closing `)`.
fn split_args(sql: &str, open: usize) -> Option<(Vec<(String, usize)>, usize)> {
    let bytes = sql.as_bytes();
    let mut depth = 0;
    let mut in_string = false;
    let mut args = vec![];
    let mut arg_start = open + 1;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'\'' => in_string = !in_string,
            _ if in_string => {}
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    args.push((sql[arg_start..i].to_string(), arg_start));
                    return Some((args, i));
                }
            }
            b',' if depth == 1 => {
                args.push((sql[arg_start..i].to_string(), arg_start));
                arg_start = i + 1;
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble_table_function_is_rewritten_in_place() {
        let sql = "SELECT patient_id, COUNT(*) FROM TABLE(TUMBLE(TABLE vitals, DESCRIPTOR(event_time), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end, patient_id";
        let (out, w, at) = rewrite_table_functions(sql).unwrap().unwrap();
        assert_eq!(at, SqlPosition::new(1, 40));
        assert_eq!(w, WindowSpec::Tumble { size_ms: 60_000 });
        assert_eq!(out.len(), sql.len());
        assert!(out.contains("FROM __vitals_windowed vitals"), "{out}");
        assert!(out.ends_with("GROUP BY window_start, window_end, patient_id"));
    }

    #[test]
    fn hop_table_function_takes_slide_then_size() {
        let sql = "SELECT 1 FROM TABLE(HOP(TABLE vitals, DESCRIPTOR(event_time), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)) GROUP BY window_start, window_end";
        let (_, w, _) = rewrite_table_functions(sql).unwrap().unwrap();
        assert_eq!(
            w,
            WindowSpec::Hop {
                slide_ms: 60_000,
                size_ms: 300_000
            }
        );
    }

    #[test]
    fn a_wrong_descriptor_is_refused_with_its_position() {
        let sql = "SELECT 1 FROM TABLE(TUMBLE(TABLE vitals, DESCRIPTOR(ts), INTERVAL '1' MINUTE))";
        let err = rewrite_table_functions(sql).unwrap_err();
        assert!(
            err.message.contains("DESCRIPTOR(event_time)"),
            "{}",
            err.message
        );
        assert_eq!(err.position.column, 41);
    }
}

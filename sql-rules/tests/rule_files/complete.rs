//! `--complete`: rewriting the expect blocks of a file from the alerts the
//! engine actually produced, for a person to review with `git diff`.
//!
//! Only blocks that failed are touched, and within them only what failed:
//! a wanted line that matched keeps its text (the author chose which fields
//! to pin), one that matched nothing is dropped, a `repeat` that matched
//! fewer alerts gets the count that did, and every alert no line accounted
//! for is appended with all its fields. Comments, rules and events are
//! copied byte for byte, so completing a correct file changes nothing.

use crate::replay::{line, ExpectResult, Rendered};

/// Lines for `alerts`, consecutive identical ones folded into `repeat <n>`.
pub fn folded(alerts: &[Rendered]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = vec![];
    for a in alerts {
        let text = line(a);
        match out.last_mut() {
            Some((n, last)) if *last == text => *n += 1,
            _ => out.push((1, text)),
        }
    }
    out
}

/// `text` with its failed expect blocks rewritten (see the module doc).
pub fn complete(text: &str, expects: &[ExpectResult]) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(text.len());
    let mut next = 0;
    for expect in expects.iter().filter(|e| !e.passed()) {
        for l in &lines[next..expect.body.start] {
            out.push_str(l);
        }
        for (j, l) in lines
            .iter()
            .enumerate()
            .take(expect.body.end)
            .skip(expect.body.start)
        {
            let repeat = expect
                .wanted
                .iter()
                .find(|w| w.first_line == j && w.pattern_line != j);
            let pattern = expect.wanted.iter().find(|w| w.pattern_line == j);
            if let Some(w) = repeat {
                if w.matched == w.count {
                    out.push_str(l);
                } else if w.matched > 1 {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    out.push_str(&format!("{indent}repeat {}{newline}", w.matched));
                }
            } else if let Some(w) = pattern {
                if w.matched > 0 {
                    out.push_str(l);
                }
            } else {
                out.push_str(l);
            }
        }
        for (n, text) in folded(&expect.unexpected) {
            if n > 1 {
                out.push_str(&format!("repeat {n}{newline}"));
            }
            out.push_str(&text);
            out.push_str(newline);
        }
        next = expect.body.end;
    }
    for l in &lines[next..] {
        out.push_str(l);
    }
    out
}

//! Reading a `.rules` file into steps (the format is described at the top of
//! `rule_files.rs` and in `tests/rules/README.md`).
//!
//! Parsing only reads: rules are compiled here (a rule that does not compile
//! is a parse error naming its line), but refusals, expectations and late
//! counts are checked by [`crate::replay`]. Expect blocks keep their source
//! lines so that `--complete` can leave a correct block byte for byte alone.

use sql_rules::stream::vitals_schema;
use sql_rules::{CompiledRule, Escalation, RuleBudgets, RuleSpec};

/// A parse error: the 1-based line and what is wrong with it.
#[derive(Debug)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

type Parsed<T> = Result<T, ParseError>;

fn error<T>(line: usize, message: impl Into<String>) -> Parsed<T> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub ts: i64,
    pub patient: String,
    pub hospital: Option<String>,
    pub hr: Option<f64>,
    pub spo2: Option<f64>,
    pub rr: Option<f64>,
    pub sbp: Option<f64>,
    pub dbp: Option<f64>,
    pub seq: Option<u32>,
}

/// One alert an `expect` block asks for: the fields it names (any others
/// the alert has are not checked).
pub type Pattern = Vec<(String, String)>;

/// A line of an `expect` block that asks for alerts, with the `repeat` line
/// before it if any.
#[derive(Debug)]
pub struct Wanted {
    /// 0-based index of its first source line (the `repeat` line if any).
    pub first_line: usize,
    /// 0-based index of the line holding the pattern.
    pub pattern_line: usize,
    /// How many alerts it asks for (`repeat <n>`; 1 without).
    pub count: usize,
    pub pattern: Pattern,
}

#[derive(Debug)]
pub struct Expect {
    /// 1-based line of `expect`.
    pub line: usize,
    /// 0-based indices of the block's body: the lines between `expect` and
    /// `end`, comments included.
    pub body: std::ops::Range<usize>,
    pub wanted: Vec<Wanted>,
}

#[derive(Debug)]
pub enum Step {
    Rule(Box<RuleSpec>),
    Refuse {
        line: usize,
        position: (u64, u64),
        fragment: String,
        sql: String,
    },
    Events {
        partition: i32,
        events: Vec<Event>,
    },
    Tick(i64),
    Watermark(i64),
    Expect(Expect),
    Late {
        line: usize,
        rule: String,
        count: u64,
    },
    /// `budgets <name>=<n>…`: the engine's run-time budgets from here on.
    Budgets(RuleBudgets),
    /// `suspended <rule> <reason|none>`: the rule is suspended for this
    /// reason (`alerts_per_minute`, `work_per_batch`, `state_bytes`), or
    /// with `none` still runs.
    Suspended {
        line: usize,
        rule: String,
        reason: Option<String>,
    },
}

/// `repeat <n> [<field>+=<step>…]`: the next line of the block counts `n`
/// times; each copy of an event adds `step` to the field of the previous
/// copy.
struct Repeat {
    line: usize,
    first_line: usize,
    count: usize,
    steps: Vec<(String, f64)>,
}

fn parse_repeat(lineno: usize, words: &[&str]) -> Parsed<Repeat> {
    let count: usize = match words.get(1).map(|w| w.parse()) {
        Some(Ok(n)) if n > 0 => n,
        _ => {
            return error(
                lineno,
                "expected `repeat <count>` with a count of 1 or more",
            )
        }
    };
    let mut steps = vec![];
    for w in &words[2..] {
        let Some((field, step)) = w.split_once("+=") else {
            return error(
                lineno,
                format!("expected `<field>+=<step>` after the count, found `{w}`"),
            );
        };
        let Ok(step) = step.parse::<f64>() else {
            return error(lineno, format!("`{w}`: the step is not a number"));
        };
        steps.push((field.to_string(), step));
    }
    Ok(Repeat {
        line: lineno,
        first_line: lineno - 1,
        count,
        steps,
    })
}

fn number(lineno: usize, what: &str, v: &str) -> Parsed<f64> {
    v.parse()
        .or_else(|_| error(lineno, format!("{what}: `{v}` is not a number")))
}

fn parse_opt(lineno: usize, what: &str, v: &str) -> Parsed<Option<f64>> {
    if v == "null" {
        Ok(None)
    } else {
        number(lineno, what, v).map(Some)
    }
}

fn parse_event(lineno: usize, line: &str) -> Parsed<Event> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 2 {
        return error(lineno, "expected `<ts_ms> <patient> [field=value…]`");
    }
    let Ok(ts) = f[0].parse() else {
        return error(lineno, format!("`{}` is not a timestamp in ms", f[0]));
    };
    let mut e = Event {
        ts,
        patient: f[1].into(),
        hospital: Some("H01".into()),
        hr: None,
        spo2: None,
        rr: None,
        sbp: None,
        dbp: None,
        seq: None,
    };
    for kv in &f[2..] {
        let Some((k, v)) = kv.split_once('=') else {
            return error(lineno, format!("expected key=value, found `{kv}`"));
        };
        match k {
            "hr" => e.hr = parse_opt(lineno, k, v)?,
            "spo2" => e.spo2 = parse_opt(lineno, k, v)?,
            "rr" => e.rr = parse_opt(lineno, k, v)?,
            "sbp" => e.sbp = parse_opt(lineno, k, v)?,
            "dbp" => e.dbp = parse_opt(lineno, k, v)?,
            "hospital" => e.hospital = Some(v.into()),
            "seq" => {
                let Ok(seq) = v.parse() else {
                    return error(lineno, format!("seq: `{v}` is not a sequence number"));
                };
                e.seq = Some(seq);
            }
            other => return error(lineno, format!("unknown field `{other}`")),
        }
    }
    Ok(e)
}

/// The `i`-th copy of `e` under `repeat` (the 0th is `e` itself).
fn stepped(e: &Event, repeat: &Repeat, i: usize) -> Parsed<Event> {
    let mut e = e.clone();
    let i = i as f64;
    for (field, step) in &repeat.steps {
        let missing = |e: &Option<f64>| {
            e.map_or_else(
                || {
                    error(
                        repeat.line,
                        format!("`{field}+=` needs the event to have {field}="),
                    )
                },
                Ok,
            )
        };
        match field.as_str() {
            "ts" => e.ts += (step * i) as i64,
            "seq" => {
                let seq = missing(&e.seq.map(f64::from))?;
                e.seq = Some((seq + step * i) as u32);
            }
            "hr" => e.hr = Some(missing(&e.hr)? + step * i),
            "spo2" => e.spo2 = Some(missing(&e.spo2)? + step * i),
            "rr" => e.rr = Some(missing(&e.rr)? + step * i),
            "sbp" => e.sbp = Some(missing(&e.sbp)? + step * i),
            "dbp" => e.dbp = Some(missing(&e.dbp)? + step * i),
            other => {
                return error(
                    repeat.line,
                    format!("`{other}+=`: only ts, seq, hr, spo2, rr, sbp and dbp can step"),
                )
            }
        }
    }
    Ok(e)
}

fn parse_pattern(lineno: usize, line: &str) -> Parsed<Pattern> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 2 {
        return error(lineno, "expected `<rule> <patient|-> [field=value…]`");
    }
    let mut fields = vec![
        ("rule".to_string(), f[0].to_string()),
        ("patient".to_string(), f[1].to_string()),
    ];
    for kv in &f[2..] {
        let Some((k, v)) = kv.split_once('=') else {
            return error(lineno, format!("expected key=value, found `{kv}`"));
        };
        fields.push((k.to_string(), v.to_string()));
    }
    Ok(fields)
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Parses the text of a rule file.
pub fn parse(text: &str) -> Parsed<Vec<Step>> {
    let lines: Vec<&str> = text.lines().collect();
    // The body of the block opened at `start` (0-based): the lines up to the
    // next `end`, and the index of that `end`.
    let block = |start: usize| -> Parsed<(std::ops::Range<usize>, usize)> {
        let body = start + 1;
        match lines[body..].iter().position(|l| l.trim() == "end") {
            Some(n) => Ok((body..body + n, body + n)),
            None => error(
                start + 1,
                format!("`{}` block without `end`", lines[start].trim()),
            ),
        }
    };
    let mut steps = vec![];
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let lineno = i + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        let arg = |n: usize, what: &str| -> Parsed<&str> {
            words
                .get(n)
                .copied()
                .map_or_else(|| error(lineno, format!("`{}` needs {what}", words[0])), Ok)
        };
        match words.first().copied() {
            None => {}
            Some(w) if w.starts_with('#') => {}
            Some("rule") => {
                let id = arg(1, "an id")?.to_string();
                let mut cooldown = 0;
                let mut lateness = None;
                let mut keep_duplicates = false;
                let mut escalation = None;
                for w in &words[2..] {
                    if let Some(v) = w.strip_prefix("cooldown=") {
                        cooldown = number(lineno, "cooldown", v)? as i64;
                    } else if let Some(v) = w.strip_prefix("lateness=") {
                        lateness = Some(number(lineno, "lateness", v)? as i64);
                    } else if *w == "keep_duplicates" {
                        keep_duplicates = true;
                    } else if let Some(v) = w.strip_prefix("escalate=") {
                        // escalate=<column>><value>:<severity>
                        let Some(((column, above), severity)) = v
                            .split_once(':')
                            .and_then(|(c, s)| Some((c.split_once('>')?, s)))
                        else {
                            return error(lineno, "expected escalate=<column>><value>:<severity>");
                        };
                        escalation = Some(Escalation {
                            column: column.into(),
                            above: Some(number(lineno, "escalate", above)?),
                            below: None,
                            severity: Some(severity.into()),
                        });
                    } else {
                        return error(lineno, format!("unknown rule option `{w}`"));
                    }
                }
                let (body, end) = block(i)?;
                let sql = lines[body].join("\n");
                let compiled = CompiledRule::compile(&sql, &vitals_schema())
                    .or_else(|e| error(lineno, format!("rule {id} does not compile: {e}")))?;
                steps.push(Step::Rule(Box::new(RuleSpec {
                    id: id.clone(),
                    version: 1,
                    name: id,
                    severity: "high".into(),
                    cooldown_ms: cooldown,
                    allowed_lateness_ms: lateness,
                    keep_duplicates,
                    escalation,
                    compiled,
                })));
                i = end;
            }
            Some("events") => {
                let partition: i32 = match words.get(1) {
                    None => 0,
                    Some(w) => match w.strip_prefix("partition=").map(str::parse) {
                        Some(Ok(p)) => p,
                        _ => return error(lineno, "expected `events [partition=<n>]`"),
                    },
                };
                let (body, end) = block(i)?;
                let mut events = vec![];
                let mut repeat: Option<Repeat> = None;
                for n in body {
                    if is_blank_or_comment(lines[n]) {
                        continue;
                    }
                    let words: Vec<&str> = lines[n].split_whitespace().collect();
                    if words[0] == "repeat" {
                        if repeat.is_some() {
                            return error(n + 1, "`repeat` follows `repeat`");
                        }
                        repeat = Some(parse_repeat(n + 1, &words)?);
                        continue;
                    }
                    let e = parse_event(n + 1, lines[n])?;
                    match repeat.take() {
                        None => events.push(e),
                        Some(r) => {
                            for k in 0..r.count {
                                events.push(stepped(&e, &r, k)?);
                            }
                        }
                    }
                }
                if let Some(r) = repeat {
                    return error(r.line, "`repeat` with no event after it");
                }
                steps.push(Step::Events { partition, events });
                i = end;
            }
            Some("tick") => {
                let t = arg(1, "a processing time in ms")?;
                steps.push(Step::Tick(number(lineno, "tick", t)? as i64));
            }
            Some("watermark") => {
                let w = arg(1, "an event time in ms")?;
                steps.push(Step::Watermark(number(lineno, "watermark", w)? as i64));
            }
            Some("late") => {
                let rule = arg(1, "a rule id")?.to_string();
                let count = arg(2, "a count")?;
                let Ok(count) = count.parse::<u64>() else {
                    return error(lineno, format!("`{count}` is not a count"));
                };
                steps.push(Step::Late {
                    line: lineno,
                    rule,
                    count,
                });
            }
            Some("budgets") => {
                let mut budgets = RuleBudgets::default();
                for w in &words[1..] {
                    let Some((name, value)) = w.split_once('=') else {
                        return error(lineno, format!("expected <budget>=<n>, found `{w}`"));
                    };
                    let Ok(value) = value.parse::<u64>() else {
                        return error(lineno, format!("`{value}` is not a count"));
                    };
                    match name {
                        "alerts_per_minute" => budgets.max_alerts_per_minute = value,
                        "work_per_batch" => budgets.max_work_per_batch = value,
                        "state_bytes" => budgets.max_state_bytes = value,
                        other => {
                            return error(
                                lineno,
                                format!("unknown budget `{other}` (alerts_per_minute, work_per_batch, state_bytes)"),
                            )
                        }
                    }
                }
                steps.push(Step::Budgets(budgets));
            }
            Some("suspended") => {
                let rule = arg(1, "a rule id")?.to_string();
                let reason = arg(2, "a reason or `none`")?;
                steps.push(Step::Suspended {
                    line: lineno,
                    rule,
                    reason: (reason != "none").then(|| reason.to_string()),
                });
            }
            Some("expect") => {
                let (body, end) = block(i)?;
                let mut wanted = vec![];
                let mut repeat: Option<Repeat> = None;
                for n in body.clone() {
                    if is_blank_or_comment(lines[n]) {
                        continue;
                    }
                    let words: Vec<&str> = lines[n].split_whitespace().collect();
                    if words[0] == "repeat" {
                        if repeat.is_some() {
                            return error(n + 1, "`repeat` follows `repeat`");
                        }
                        let r = parse_repeat(n + 1, &words)?;
                        if !r.steps.is_empty() {
                            return error(n + 1, "in `expect`, `repeat` takes only a count");
                        }
                        repeat = Some(r);
                        continue;
                    }
                    let pattern = parse_pattern(n + 1, lines[n])?;
                    let (first_line, count) = match repeat.take() {
                        Some(r) => (r.first_line, r.count),
                        None => (n, 1),
                    };
                    wanted.push(Wanted {
                        first_line,
                        pattern_line: n,
                        count,
                        pattern,
                    });
                }
                if let Some(r) = repeat {
                    return error(r.line, "`repeat` with no alert after it");
                }
                steps.push(Step::Expect(Expect {
                    line: lineno,
                    body,
                    wanted,
                }));
                i = end;
            }
            Some("refuse") => {
                let rest = line["refuse".len()..].trim();
                let Some((position, fragment)) = rest.split_once(' ') else {
                    return error(
                        lineno,
                        "expected `refuse <line>:<column> <message fragment>`",
                    );
                };
                let Some((l, c)) = position
                    .split_once(':')
                    .and_then(|(l, c)| Some((l.parse::<u64>().ok()?, c.parse::<u64>().ok()?)))
                else {
                    return error(lineno, format!("`{position}` is not <line>:<column>"));
                };
                let (body, end) = block(i)?;
                steps.push(Step::Refuse {
                    line: lineno,
                    position: (l, c),
                    fragment: fragment.trim().to_string(),
                    sql: lines[body].join("\n"),
                });
                i = end;
            }
            Some("repeat") => {
                return error(
                    lineno,
                    "`repeat` applies to the next line inside `events` or `expect`",
                )
            }
            Some(other) => return error(lineno, format!("unknown directive `{other}`")),
        }
        i += 1;
    }
    Ok(steps)
}

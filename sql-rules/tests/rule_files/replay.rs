//! Running a parsed rule file through an [`Engine`] and checking what it
//! expects: alerts, late counts, refusals.
//!
//! Checks never panic: each one that fails becomes a [`Problem`] or an
//! [`ExpectResult`] that did not pass, so one run reports everything wrong
//! with a file, and `--complete` knows which expect blocks to rewrite.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, CompiledRule, Engine, EngineConfig};

use crate::format::{Event, Pattern, Step};

/// An alert as `name=value` fields, in the order `--complete` writes them.
pub type Rendered = Vec<(String, String)>;

/// A failed check other than an expect block.
#[derive(Debug)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

/// How an expect block compared with the alerts so far.
#[derive(Debug)]
pub struct ExpectResult {
    /// 1-based line of `expect`.
    pub line: usize,
    /// See [`crate::format::Expect::body`].
    pub body: Range<usize>,
    pub wanted: Vec<WantedResult>,
    /// Alerts so far that no wanted line accounts for, in emission order.
    pub unexpected: Vec<Rendered>,
}

/// How many alerts a wanted line asked for and how many it got.
#[derive(Debug)]
pub struct WantedResult {
    /// 0-based lines of its `repeat` (if any) and of its pattern.
    pub first_line: usize,
    pub pattern_line: usize,
    pub count: usize,
    pub matched: usize,
    pub pattern: Pattern,
}

impl ExpectResult {
    pub fn passed(&self) -> bool {
        self.unexpected.is_empty() && self.wanted.iter().all(|w| w.count == w.matched)
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Every alert, in emission order.
    pub alerts: Vec<Rendered>,
    /// Patients the engine forgot (see [`run`]'s `forget_after_ms`).
    pub forgotten: u64,
    pub expects: Vec<ExpectResult>,
    pub problems: Vec<Problem>,
}

fn batch(events: &[Event]) -> RecordBatch {
    let floats = |f: fn(&Event) -> Option<f64>| {
        Arc::new(Float64Array::from(events.iter().map(f).collect::<Vec<_>>()))
    };
    RecordBatch::try_new(
        vitals_schema(),
        vec![
            Arc::new(StringArray::from(
                events
                    .iter()
                    .map(|e| e.hospital.clone())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                events.iter().map(|e| e.patient.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                events.iter().map(|e| e.ts).collect::<Vec<_>>(),
            )),
            floats(|e| e.hr),
            floats(|e| e.spo2),
            floats(|e| e.rr),
            floats(|e| e.sbp),
            floats(|e| e.dbp),
            Arc::new(StringArray::from(vec![Some("BEDSIDE"); events.len()])),
            Arc::new(UInt32Array::from(
                events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(events.iter().map(|e| e.ts).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ],
    )
    .expect("the columns follow vitals_schema")
}

/// The alert's fields: rule, patient, window, status, severity, the rule's
/// output values, any other group key columns, then the hospital. A
/// signal-loss clear names the alert it clears by that alert's window
/// (`clears`, looked up in `windows`: alert id → window) and the returning
/// reading's time (`at`).
pub fn render(a: &Alert, windows: &std::collections::HashMap<String, String>) -> Rendered {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut f = vec![
        ("rule".to_string(), a.rule_id.clone()),
        (
            "patient".to_string(),
            a.patient_id().unwrap_or("-").to_string(),
        ),
    ];
    if let (Some(s), Some(e)) = (a.window_start_ms, a.window_end_ms) {
        f.push(("window".into(), format!("{s}..{e}")));
    }
    f.push((
        "status".to_string(),
        format!("{:?}", a.status).to_lowercase(),
    ));
    f.push(("severity".to_string(), a.severity.clone()));
    // A late alert (explanation.late) says so; `late=true` pins it.
    if a.explanation.late {
        f.push(("late".to_string(), "true".to_string()));
    }
    if let Some(cleared) = &a.explanation.clears {
        let window = windows.get(cleared).cloned();
        f.push((
            "clears".to_string(),
            window.unwrap_or_else(|| format!("unknown alert {cleared}")),
        ));
        f.push(("at".to_string(), a.event_time_ms.to_string()));
    }
    for (k, v) in &a.values {
        f.push((k.clone(), text(v)));
    }
    for (k, v) in &a.key {
        if k != "patient_id" {
            f.push((k.clone(), text(v)));
        }
    }
    // Last, so lines written before alerts had a hospital still match.
    if let Some(hospital) = &a.hospital_id {
        f.push(("hospital".to_string(), hospital.clone()));
    }
    f
}

/// The line an expect block would hold for these fields.
pub fn line(fields: &[(String, String)]) -> String {
    let mut words = vec![];
    for (k, v) in fields {
        if k == "rule" || k == "patient" {
            words.push(v.clone());
        } else {
            words.push(format!("{k}={v}"));
        }
    }
    words.join(" ")
}

fn value_matches(want: &str, got: &str) -> bool {
    match (want.parse::<f64>(), got.parse::<f64>()) {
        (Ok(w), Ok(g)) => (w - g).abs() <= 1e-9 * w.abs().max(1.0),
        _ => want == got,
    }
}

/// Does `got` have every field `want` names, with a matching value?
pub fn matches(want: &[(String, String)], got: &[(String, String)]) -> bool {
    want.iter()
        .all(|(k, v)| got.iter().any(|(gk, gv)| gk == k && value_matches(v, gv)))
}

/// Pairs wanted patterns with distinct alerts, as many as possible (a
/// maximum bipartite matching), so a loose pattern listed first cannot take
/// the alert a stricter one after it needed. Returns the alert paired with
/// each pattern.
fn pair(wants: &[&Pattern], got: &[Rendered]) -> Vec<Option<usize>> {
    let candidates: Vec<Vec<usize>> = wants
        .iter()
        .map(|w| (0..got.len()).filter(|&g| matches(w, &got[g])).collect())
        .collect();
    let mut owner: Vec<Option<usize>> = vec![None; got.len()];
    fn augment(
        w: usize,
        candidates: &[Vec<usize>],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for &g in &candidates[w] {
            if seen[g] {
                continue;
            }
            seen[g] = true;
            let free = match owner[g] {
                None => true,
                Some(o) => augment(o, candidates, owner, seen),
            };
            if free {
                owner[g] = Some(w);
                return true;
            }
        }
        false
    }
    for w in 0..wants.len() {
        // A free alert first: repeated patterns then pair in linear time.
        if let Some(&g) = candidates[w].iter().find(|&&g| owner[g].is_none()) {
            owner[g] = Some(w);
            continue;
        }
        let mut seen = vec![false; got.len()];
        augment(w, &candidates, &mut owner, &mut seen);
    }
    let mut paired = vec![None; wants.len()];
    for (g, w) in owner.iter().enumerate() {
        if let Some(w) = w {
            paired[*w] = Some(g);
        }
    }
    paired
}

fn check_expect(expect: &crate::format::Expect, got: &[Rendered]) -> ExpectResult {
    // One entry per alert asked for: `repeat <n>` counts n times.
    let owners: Vec<usize> = expect
        .wanted
        .iter()
        .enumerate()
        .flat_map(|(i, w)| std::iter::repeat_n(i, w.count))
        .collect();
    let wants: Vec<&Pattern> = owners.iter().map(|&i| &expect.wanted[i].pattern).collect();
    let paired = pair(&wants, got);
    let mut matched = vec![0; expect.wanted.len()];
    let mut used = vec![false; got.len()];
    for (k, g) in paired.iter().enumerate() {
        if let Some(g) = g {
            matched[owners[k]] += 1;
            used[*g] = true;
        }
    }
    ExpectResult {
        line: expect.line,
        body: expect.body.clone(),
        wanted: expect
            .wanted
            .iter()
            .zip(matched)
            .map(|(w, matched)| WantedResult {
                first_line: w.first_line,
                pattern_line: w.pattern_line,
                count: w.count,
                matched,
                pattern: w.pattern.clone(),
            })
            .collect(),
        unexpected: got
            .iter()
            .zip(used)
            .filter(|(_, u)| !u)
            .map(|(g, _)| g.clone())
            .collect(),
    }
}

/// Runs `steps` on a fresh engine: events in one batch per `events` block,
/// or with `one_event_batches` in one batch per event (partition order
/// kept); with `forget_after_ms`, patients are forgotten after that span
/// instead of the default.
pub fn run(steps: &[Step], one_event_batches: bool, forget_after_ms: Option<i64>) -> Outcome {
    let mut out = Outcome::default();
    let mut engine = Engine::new(EngineConfig::default());
    if let Some(ms) = forget_after_ms {
        engine.set_forget_patients_after_ms(ms);
    }
    let partitions: Vec<i32> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Events { partition, .. } => Some(*partition),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    engine.assign_partitions(&partitions, 0);
    let mut now = 0;
    // Alert id → window, for the alerts a clear names.
    let mut windows = std::collections::HashMap::new();
    let problem = |line: Option<usize>, message: String| Problem { line, message };
    for step in steps {
        let result = match step {
            Step::Rule(spec) => engine
                .upsert_rule((**spec).clone())
                .map(|()| vec![])
                .map_err(|e| format!("rule {}: {e}", spec.id)),
            Step::Refuse {
                line,
                position,
                fragment,
                sql,
            } => {
                match CompiledRule::compile(sql, &vitals_schema()) {
                    Ok(_) => out.problems.push(problem(
                        Some(*line),
                        "expected a refusal, the rule compiled".into(),
                    )),
                    Err(e) => {
                        if !e.message.contains(fragment.as_str()) {
                            out.problems.push(problem(
                                Some(*line),
                                format!("the refusal `{}` lacks `{fragment}`", e.message),
                            ));
                        }
                        let got = (e.position.line, e.position.column);
                        if got != *position {
                            out.problems.push(problem(
                                Some(*line),
                                format!(
                                    "the refusal `{}` is at {}:{}, expected {}:{}",
                                    e.message, got.0, got.1, position.0, position.1
                                ),
                            ));
                        }
                    }
                }
                Ok(vec![])
            }
            Step::Events { partition, events } => {
                let chunk = if one_event_batches { 1 } else { events.len() };
                let mut alerts = vec![];
                let mut failed = None;
                for events in events.chunks(chunk.max(1)) {
                    match engine.process(*partition, &batch(events), now) {
                        Ok(o) => {
                            for e in o.errors {
                                out.problems
                                    .push(problem(None, format!("partition {partition}: {e}")));
                            }
                            alerts.extend(o.alerts);
                        }
                        Err(e) => {
                            failed = Some(format!("partition {partition}: {e}"));
                            break;
                        }
                    }
                }
                failed.map_or(Ok(alerts), Err)
            }
            Step::Tick(t) => {
                now = *t;
                engine
                    .tick(now)
                    .map(|o| o.alerts)
                    .map_err(|e| format!("tick {t}: {e}"))
            }
            Step::Watermark(w) => engine
                .advance_watermark(*w, now)
                .map(|o| o.alerts)
                .map_err(|e| format!("watermark {w}: {e}")),
            Step::Late { line, rule, count } => {
                match engine.rule_stats(rule) {
                    None => out
                        .problems
                        .push(problem(Some(*line), format!("no rule {rule}"))),
                    Some(stats) if stats.late_events != *count => out.problems.push(problem(
                        Some(*line),
                        format!(
                            "{rule} counted {} late events, expected {count}",
                            stats.late_events
                        ),
                    )),
                    Some(_) => {}
                }
                Ok(vec![])
            }
            Step::Expect(expect) => {
                out.expects.push(check_expect(expect, &out.alerts));
                Ok(vec![])
            }
            Step::Budgets(budgets) => {
                engine.set_budgets(*budgets);
                Ok(vec![])
            }
            Step::Suspended { line, rule, reason } => {
                let got = engine.rule_stats(rule).map(|s| {
                    s.suspension.map(|s| {
                        serde_json::to_value(s.reason)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    })
                });
                match got {
                    None => out
                        .problems
                        .push(problem(Some(*line), format!("no rule {rule}"))),
                    Some(got) if got != *reason => out.problems.push(problem(
                        Some(*line),
                        format!(
                            "{rule} is {}, expected {}",
                            got.map_or("running".into(), |r| format!("suspended ({r})")),
                            reason
                                .as_ref()
                                .map_or("running".into(), |r| format!("suspended ({r})"))
                        ),
                    )),
                    Some(_) => {}
                }
                Ok(vec![])
            }
        };
        match result {
            Ok(alerts) => {
                for a in &alerts {
                    if let (Some(s), Some(e)) = (a.window_start_ms, a.window_end_ms) {
                        windows.insert(a.id.clone(), format!("{s}..{e}"));
                    }
                    out.alerts.push(render(a, &windows));
                }
            }
            Err(message) => {
                // The engine refused a step: later steps would only report
                // consequences of it.
                out.problems
                    .push(problem(None, format!("{message} (run stopped here)")));
                break;
            }
        }
    }
    out.forgotten = engine.patients_forgotten();
    out
}

/// The alerts of `a` missing from `b` and those of `b` missing from `a`
/// (as multisets).
pub fn difference(a: &[Rendered], b: &[Rendered]) -> (Vec<Rendered>, Vec<Rendered>) {
    let mut only_b: Vec<Rendered> = b.to_vec();
    let mut only_a = vec![];
    for x in a {
        match only_b.iter().position(|y| y == x) {
            Some(p) => {
                only_b.remove(p);
            }
            None => only_a.push(x.clone()),
        }
    }
    (only_a, only_b)
}

//! Rule semantics as files: `tests/rules/*.rules` hold rules, input events
//! and the alerts they must produce (the sqllogictest habit), so a reader
//! sees behaviour without reading Rust.
//!
//! Format (blank lines and `#` comments are ignored):
//!
//! ```text
//! rule <id> [cooldown=<ms>] [lateness=<ms>] [keep_duplicates] [escalate=<col>><value>:<severity>]
//! <SQL…>
//! end
//! events [partition=<n>]          # one batch
//! <ts_ms> <patient> [hr=…] [spo2=…] [rr=…] [sbp=…] [dbp=…] [hospital=…] [seq=…]
//! end
//! tick <processing_ms>            # processing time passes (idle partitions)
//! watermark <ms>                  # close every window ending at or before
//! expect                          # every alert so far, in any order
//! <rule> <patient|-> [window=<start>..<end>] [status=fired|suppressed] [col=value…]
//! end
//! late <rule> <count>
//! refuse <line>:<column> <message fragment>
//! <SQL…>
//! end
//! ```
//!
//! Every file also runs a second time with each event in its own batch
//! (partition order kept); the alerts must be identical.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, CompiledRule, Engine, EngineConfig, RuleSpec};

#[derive(Clone, Debug)]
struct Event {
    ts: i64,
    patient: String,
    hospital: Option<String>,
    hr: Option<f64>,
    spo2: Option<f64>,
    rr: Option<f64>,
    sbp: Option<f64>,
    dbp: Option<f64>,
    seq: Option<u32>,
}

#[derive(Debug)]
enum Step {
    Rule(Box<RuleSpec>),
    Events {
        partition: i32,
        events: Vec<Event>,
    },
    Tick(i64),
    Watermark(i64),
    Expect {
        line: usize,
        alerts: Vec<Vec<(String, String)>>,
    },
    Late {
        line: usize,
        rule: String,
        count: u64,
    },
}

fn parse_opt(v: &str) -> Option<f64> {
    if v == "null" {
        None
    } else {
        Some(v.parse().expect("a number or null"))
    }
}

fn batch(events: &[Event]) -> RecordBatch {
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
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.hr).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.spo2).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.rr).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.sbp).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                events.iter().map(|e| e.dbp).collect::<Vec<_>>(),
            )),
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
    .expect("valid batch")
}

/// Parses a file into steps; refusals are checked while parsing.
fn parse(path: &Path) -> Vec<Step> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut steps = vec![];
    let mut i = 0;
    let block = |i: &mut usize| -> Vec<(usize, String)> {
        let mut out = vec![];
        *i += 1;
        while *i < lines.len() && lines[*i].trim() != "end" {
            out.push((*i + 1, lines[*i].to_string()));
            *i += 1;
        }
        assert!(*i < lines.len(), "{name}: block without `end`");
        out
    };
    while i < lines.len() {
        let line = lines[i].trim();
        let lineno = i + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            None => {}
            Some(w) if w.starts_with('#') => {}
            Some("rule") => {
                let id = words[1].to_string();
                let mut cooldown = 0;
                let mut lateness = None;
                let mut keep_duplicates = false;
                let mut escalation = None;
                for w in &words[2..] {
                    if let Some(v) = w.strip_prefix("cooldown=") {
                        cooldown = v.parse().unwrap();
                    }
                    if let Some(v) = w.strip_prefix("lateness=") {
                        lateness = Some(v.parse().unwrap());
                    }
                    if *w == "keep_duplicates" {
                        keep_duplicates = true;
                    }
                    // escalate=<column>><value>:<severity>
                    if let Some(v) = w.strip_prefix("escalate=") {
                        let (cond, severity) =
                            v.split_once(':').expect("escalate=col>value:severity");
                        let (column, above) =
                            cond.split_once('>').expect("escalate=col>value:severity");
                        escalation = Some(sql_rules::engine::Escalation {
                            column: column.into(),
                            above: Some(above.parse().unwrap()),
                            below: None,
                            severity: Some(severity.into()),
                        });
                    }
                }
                let sql: Vec<String> = block(&mut i).into_iter().map(|(_, l)| l).collect();
                let sql = sql.join("\n");
                let compiled = CompiledRule::compile(&sql, &vitals_schema())
                    .unwrap_or_else(|e| panic!("{name}:{lineno}: rule {id} does not compile: {e}"));
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
            }
            Some("events") => {
                let partition = words
                    .get(1)
                    .and_then(|w| w.strip_prefix("partition="))
                    .map_or(0, |p| p.parse().unwrap());
                let events = block(&mut i)
                    .into_iter()
                    .filter(|(_, l)| !l.trim().is_empty() && !l.trim().starts_with('#'))
                    .map(|(n, l)| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let mut e = Event {
                            ts: f[0]
                                .parse()
                                .unwrap_or_else(|_| panic!("{name}:{n}: bad ts")),
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
                            let (k, v) = kv
                                .split_once('=')
                                .unwrap_or_else(|| panic!("{name}:{n}: expected key=value"));
                            match k {
                                "hr" => e.hr = parse_opt(v),
                                "spo2" => e.spo2 = parse_opt(v),
                                "rr" => e.rr = parse_opt(v),
                                "sbp" => e.sbp = parse_opt(v),
                                "dbp" => e.dbp = parse_opt(v),
                                "hospital" => e.hospital = Some(v.into()),
                                "seq" => e.seq = Some(v.parse().unwrap()),
                                other => panic!("{name}:{n}: unknown field {other}"),
                            }
                        }
                        e
                    })
                    .collect();
                steps.push(Step::Events { partition, events });
            }
            Some("tick") => steps.push(Step::Tick(words[1].parse().unwrap())),
            Some("watermark") => steps.push(Step::Watermark(words[1].parse().unwrap())),
            Some("late") => steps.push(Step::Late {
                line: lineno,
                rule: words[1].into(),
                count: words[2].parse().unwrap(),
            }),
            Some("expect") => {
                let alerts = block(&mut i)
                    .into_iter()
                    .filter(|(_, l)| !l.trim().is_empty() && !l.trim().starts_with('#'))
                    .map(|(_, l)| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let mut fields = vec![
                            ("rule".to_string(), f[0].to_string()),
                            ("patient".to_string(), f[1].to_string()),
                        ];
                        for kv in &f[2..] {
                            let (k, v) = kv.split_once('=').expect("key=value");
                            fields.push((k.to_string(), v.to_string()));
                        }
                        fields
                    })
                    .collect();
                steps.push(Step::Expect {
                    line: lineno,
                    alerts,
                });
            }
            Some("refuse") => {
                let (pos, fragment) = line["refuse".len()..]
                    .trim()
                    .split_once(' ')
                    .expect("refuse <line>:<col> <fragment>");
                let (l, c) = pos.split_once(':').expect("<line>:<col>");
                let sql: Vec<String> = block(&mut i).into_iter().map(|(_, l)| l).collect();
                let sql = sql.join("\n");
                match CompiledRule::compile(&sql, &vitals_schema()) {
                    Ok(_) => {
                        panic!("{name}:{lineno}: expected a refusal, the rule compiled:\n{sql}")
                    }
                    Err(e) => {
                        assert!(
                            e.message.contains(fragment.trim()),
                            "{name}:{lineno}: message `{}` lacks `{}`",
                            e.message,
                            fragment.trim()
                        );
                        let want: (u64, u64) = (l.parse().unwrap(), c.parse().unwrap());
                        assert_eq!(
                            (e.position.line, e.position.column),
                            want,
                            "{name}:{lineno}: position of `{}`",
                            e.message
                        );
                    }
                }
            }
            Some(other) => panic!("{name}:{lineno}: unknown directive `{other}`"),
        }
        i += 1;
    }
    steps
}

fn render(a: &Alert) -> Vec<(String, String)> {
    let mut f = vec![
        ("rule".to_string(), a.rule_id.clone()),
        (
            "patient".to_string(),
            a.key
                .get("patient_id")
                .and_then(|v| v.as_str())
                .unwrap_or("-")
                .to_string(),
        ),
        (
            "status".to_string(),
            format!("{:?}", a.status).to_lowercase(),
        ),
        ("severity".to_string(), a.severity.clone()),
    ];
    if let (Some(s), Some(e)) = (a.window_start_ms, a.window_end_ms) {
        f.push(("window".into(), format!("{s}..{e}")));
    }
    for (k, v) in &a.values {
        f.push((
            k.clone(),
            match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        ));
    }
    for (k, v) in &a.key {
        if k != "patient_id" {
            f.push((
                k.clone(),
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            ));
        }
    }
    f
}

fn value_matches(want: &str, got: &str) -> bool {
    match (want.parse::<f64>(), got.parse::<f64>()) {
        (Ok(w), Ok(g)) => (w - g).abs() <= 1e-9 * w.abs().max(1.0),
        _ => want == got,
    }
}

/// Does `got` satisfy every field `want` names?
fn matches(want: &[(String, String)], got: &[(String, String)]) -> bool {
    want.iter().all(|(k, v)| {
        got.iter().any(|(gk, gv)| gk == k && value_matches(v, gv))
            || (k == "status" && v == "fired" && !got.iter().any(|(gk, _)| gk == "status"))
    })
}

fn run(name: &str, steps: &[Step], one_event_batches: bool) -> Vec<Vec<(String, String)>> {
    let mut engine = Engine::new(EngineConfig::default());
    let mut alerts: Vec<Alert> = vec![];
    let partitions: Vec<i32> = steps
        .iter()
        .filter_map(|s| {
            if let Step::Events { partition, .. } = s {
                Some(*partition)
            } else {
                None
            }
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    engine.assign_partitions(&partitions, 0);
    let mut now = 0;
    for step in steps {
        match step {
            Step::Rule(spec) => engine.upsert_rule((**spec).clone()).unwrap(),
            Step::Events { partition, events } => {
                let chunks: Vec<&[Event]> = if one_event_batches {
                    events.chunks(1).collect()
                } else {
                    vec![events.as_slice()]
                };
                for chunk in chunks {
                    let out = engine.process(*partition, &batch(chunk), now).unwrap();
                    assert!(out.errors.is_empty(), "{name}: {:?}", out.errors);
                    alerts.extend(out.alerts);
                }
            }
            Step::Tick(t) => {
                now = *t;
                alerts.extend(engine.tick(now).unwrap().alerts);
            }
            Step::Watermark(w) => alerts.extend(engine.advance_watermark(*w, now).unwrap().alerts),
            Step::Late { line, rule, count } => {
                let stats = engine
                    .rule_stats(rule)
                    .unwrap_or_else(|| panic!("{name}:{line}: no rule {rule}"));
                assert_eq!(
                    stats.late_events, *count,
                    "{name}:{line}: late events of {rule}"
                );
            }
            Step::Expect { line, alerts: want } => {
                let got: Vec<Vec<(String, String)>> = alerts.iter().map(render).collect();
                let mut unmatched: Vec<&Vec<(String, String)>> = got.iter().collect();
                for w in want {
                    match unmatched.iter().position(|g| matches(w, g)) {
                        Some(p) => {
                            unmatched.remove(p);
                        }
                        None => {
                            panic!("{name}:{line}: expected alert {w:?} not found among\n{got:#?}")
                        }
                    }
                }
                assert!(
                    unmatched.is_empty(),
                    "{name}:{line}: unexpected alerts {unmatched:#?}"
                );
            }
        }
    }
    let mut all: Vec<Vec<(String, String)>> = alerts.iter().map(render).collect();
    all.sort();
    all
}

#[test]
fn rule_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "rule files are missing from {}",
        dir.display()
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let steps = parse(&path);
        let whole = run(&name, &steps, false);
        let single = run(&name, &steps, true);
        assert_eq!(whole, single, "{name}: alerts depend on batching");
        println!("{name}: ok ({} alerts)", whole.len());
    }
}

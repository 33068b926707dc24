//! The 20 rules the benchmarks run, each as a streaming rule and as the
//! equivalent batch query for the DataFusion baseline.
//!
//! A realistic mix built from variations of the clinical rules (tachycardia,
//! hypoxemia, bradycardia, hypotension, NEWS2, critical readings): 8 tumbling,
//! 5 hopping, 3 session and 4 per-event rules, over patients and one over
//! hospitals. One rule (missing heart-rate readings per hospital and minute)
//! fires in every ward, so a run of any size has alerts to check.
//!
//! The batch twin computes the same windows the simplest honest way in plain
//! SQL: `date_bin` for tumbling windows, a cross join with the window offsets
//! for hopping ones (each event lands in size/slide windows), `LAG` and a
//! running `SUM` for sessions. Every twin returns the key first and then
//! `window_start` (the event time for per-event rules), windowed ones also
//! `window_end`, so a result can be cut to the windows inside a time range.
//! It does not drop late or duplicate events and has no cooldown, so over a
//! live stream its row count is reported but not expected to equal our alert
//! count; the `replay` scenario feeds both deduplicated, in event-time order,
//! and there they must agree.

/// How a rule groups events in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Tumble { size_s: u32 },
    Hop { slide_s: u32, size_s: u32 },
    Session { gap_s: u32 },
    PerEvent,
}

/// One benchmark rule.
#[derive(Debug, Clone)]
pub struct BenchRule {
    pub name: String,
    /// `info`, `low`, `medium`, `high` or `critical`.
    pub severity: &'static str,
    pub cooldown_seconds: u64,
    pub shape: Shape,
    /// The streaming rule, as a clinician would write it.
    pub sql: String,
    /// The same rule as one batch query over the `vitals` table: the key,
    /// `window_start`, `window_end` (windowed rules), then the rule's columns.
    pub batch_sql: String,
}

/// What a windowed rule computes, before it is spelled for either side.
struct Parts<'a> {
    name: &'a str,
    severity: &'static str,
    cooldown_seconds: u64,
    shape: Shape,
    /// `patient_id` or `hospital_id`.
    key: &'a str,
    /// Aggregates (windowed) or columns (per-event) after the key.
    select: &'a str,
    filter: Option<&'a str>,
    having: Option<&'a str>,
}

impl Parts<'_> {
    fn build(self) -> BenchRule {
        let where_ = self
            .filter
            .map(|f| format!(" WHERE {f}"))
            .unwrap_or_default();
        let having = self
            .having
            .map(|h| format!(" HAVING {h}"))
            .unwrap_or_default();
        let (key, select) = (self.key, self.select);
        let (sql, batch_sql) = match self.shape {
            Shape::PerEvent => (
                format!("SELECT {key}, {select} FROM vitals{where_}"),
                format!("SELECT {key}, event_time AS window_start, {select} FROM vitals{where_}"),
            ),
            Shape::Tumble { size_s } => {
                let bin = format!("date_bin(INTERVAL '{size_s} seconds', event_time)");
                (
                    format!(
                        "SELECT {key}, {select} FROM vitals{where_} \
                         GROUP BY TUMBLE(event_time, INTERVAL '{size_s}' SECOND), {key}{having}"
                    ),
                    format!(
                        "SELECT {key}, {bin} AS window_start, \
                         {bin} + INTERVAL '{size_s} seconds' AS window_end, {select} FROM vitals{where_} \
                         GROUP BY {key}, {bin}{having}"
                    ),
                )
            }
            Shape::Hop { slide_s, size_s } => {
                let offsets: Vec<String> = (0..size_s / slide_s)
                    .map(|i| format!("(INTERVAL '{} seconds')", i * slide_s))
                    .collect();
                let start =
                    format!("date_bin(INTERVAL '{slide_s} seconds', v.event_time) - k.back");
                (
                    format!(
                        "SELECT {key}, {select} FROM vitals{where_} \
                         GROUP BY HOP(event_time, INTERVAL '{slide_s}' SECOND, INTERVAL '{size_s}' SECOND), {key}{having}"
                    ),
                    format!(
                        "SELECT v.{key}, {start} AS window_start, \
                         {start} + INTERVAL '{size_s} seconds' AS window_end, {select} \
                         FROM vitals v CROSS JOIN (VALUES {}) AS k(back){where_} \
                         GROUP BY v.{key}, {start}{having}",
                        offsets.join(", ")
                    ),
                )
            }
            Shape::Session { gap_s } => {
                let gap_ms = u64::from(gap_s) * 1000;
                (
                    format!(
                        "SELECT {key}, {select} FROM vitals{where_} \
                         GROUP BY SESSION(event_time, INTERVAL '{gap_s}' SECOND), {key}{having}"
                    ),
                    // A new session starts where the gap to the key's previous
                    // (matching) event is at least the gap, as in the engine
                    // (a session is [first, last + gap)); number them with a
                    // running sum and group by that number.
                    format!(
                        "SELECT {key}, MIN(event_time) AS window_start, \
                           MAX(event_time) + INTERVAL '{gap_s} seconds' AS window_end, session_id, {select} FROM ( \
                           SELECT *, SUM(CASE WHEN prev_ms IS NULL OR timestamp_unix_ms - prev_ms >= {gap_ms} THEN 1 ELSE 0 END) \
                             OVER (PARTITION BY {key} ORDER BY timestamp_unix_ms \
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session_id \
                           FROM ( \
                             SELECT *, LAG(timestamp_unix_ms) OVER (PARTITION BY {key} ORDER BY timestamp_unix_ms) AS prev_ms \
                             FROM vitals{where_}) AS with_prev) AS sessions \
                         GROUP BY {key}, session_id{having}"
                    ),
                )
            }
        };
        BenchRule {
            name: self.name.to_owned(),
            severity: self.severity,
            cooldown_seconds: self.cooldown_seconds,
            shape: self.shape,
            sql,
            batch_sql,
        }
    }
}

/// NEWS2-style early-warning score from the worst readings in the window.
const NEWS2: &str = "MAX(CASE WHEN respiration_rate <= 8 OR respiration_rate >= 25 THEN 3 \
      WHEN respiration_rate >= 21 THEN 2 WHEN respiration_rate <= 11 THEN 1 ELSE 0 END) \
 + MAX(CASE WHEN spo2_pct <= 91 THEN 3 WHEN spo2_pct <= 93 THEN 2 WHEN spo2_pct <= 95 THEN 1 ELSE 0 END) \
 + MAX(CASE WHEN systolic_bp_mmhg <= 90 OR systolic_bp_mmhg >= 220 THEN 3 \
      WHEN systolic_bp_mmhg <= 100 THEN 2 WHEN systolic_bp_mmhg <= 110 THEN 1 ELSE 0 END) \
 + MAX(CASE WHEN heart_rate_bpm <= 40 OR heart_rate_bpm >= 131 THEN 3 WHEN heart_rate_bpm >= 111 THEN 2 \
      WHEN heart_rate_bpm <= 50 OR heart_rate_bpm >= 91 THEN 1 ELSE 0 END)";

/// The 20 rules, in a fixed order.
pub fn rules() -> Vec<BenchRule> {
    use Shape::*;
    let p = "patient_id";
    let news2 = format!("{NEWS2} AS news2");
    let parts = [
        // --- tumbling windows
        Parts {
            name: "Sustained tachycardia",
            severity: "high",
            cooldown_seconds: 300,
            shape: Tumble { size_s: 60 },
            key: p,
            select: "AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n",
            filter: Some("heart_rate_bpm > 100"),
            having: Some("COUNT(*) >= 5 AND AVG(heart_rate_bpm) > 110"),
        },
        Parts {
            name: "Bradycardia",
            severity: "medium",
            cooldown_seconds: 300,
            shape: Tumble { size_s: 30 },
            key: p,
            select: "MAX(heart_rate_bpm) AS max_hr",
            filter: None,
            having: Some("MAX(heart_rate_bpm) < 45"),
        },
        Parts {
            name: "NEWS2 medium risk",
            severity: "high",
            cooldown_seconds: 600,
            shape: Tumble { size_s: 300 },
            key: p,
            select: &news2,
            filter: None,
            having: Some("news2 >= 5"),
        },
        Parts {
            name: "Heart-rate variability",
            severity: "low",
            cooldown_seconds: 600,
            shape: Tumble { size_s: 300 },
            key: p,
            select: "MAX(heart_rate_bpm) - MIN(heart_rate_bpm) AS hr_range, COUNT(*) AS n",
            filter: None,
            having: Some("MAX(heart_rate_bpm) - MIN(heart_rate_bpm) > 30 AND COUNT(*) >= 60"),
        },
        Parts {
            name: "Missing heart-rate readings per hospital",
            severity: "info",
            cooldown_seconds: 300,
            shape: Tumble { size_s: 60 },
            key: "hospital_id",
            select: "COUNT(*) - COUNT(heart_rate_bpm) AS missing_hr, COUNT(*) AS n",
            filter: None,
            having: Some("COUNT(*) - COUNT(heart_rate_bpm) >= 1"),
        },
        Parts {
            name: "Shock index above 1",
            severity: "high",
            cooldown_seconds: 300,
            shape: Tumble { size_s: 120 },
            key: p,
            select: "AVG(heart_rate_bpm) / AVG(systolic_bp_mmhg) AS shock_index, COUNT(*) AS n",
            filter: None,
            having: Some("AVG(heart_rate_bpm) / AVG(systolic_bp_mmhg) > 1.0 AND COUNT(*) >= 30"),
        },
        Parts {
            name: "Repeated desaturation",
            severity: "medium",
            cooldown_seconds: 300,
            shape: Tumble { size_s: 60 },
            key: p,
            select:
                "SUM(CASE WHEN spo2_pct < 90 THEN 1 ELSE 0 END) AS low_n, MIN(spo2_pct) AS min_spo2",
            filter: None,
            having: Some("SUM(CASE WHEN spo2_pct < 90 THEN 1 ELSE 0 END) >= 20"),
        },
        Parts {
            name: "Tachycardia over 10 minutes",
            severity: "medium",
            cooldown_seconds: 1800,
            shape: Tumble { size_s: 600 },
            key: p,
            select: "AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n",
            filter: None,
            having: Some("AVG(heart_rate_bpm) > 105 AND COUNT(*) >= 300"),
        },
        // --- hopping windows
        Parts {
            name: "Sustained hypoxemia",
            severity: "high",
            cooldown_seconds: 300,
            shape: Hop {
                slide_s: 60,
                size_s: 300,
            },
            key: p,
            select: "AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n",
            filter: None,
            having: Some("AVG(spo2_pct) < 90 AND COUNT(*) >= 10"),
        },
        Parts {
            name: "Hypotension",
            severity: "high",
            cooldown_seconds: 300,
            shape: Hop {
                slide_s: 30,
                size_s: 120,
            },
            key: p,
            select: "AVG(systolic_bp_mmhg) AS avg_sbp",
            filter: None,
            having: Some("AVG(systolic_bp_mmhg) < 90"),
        },
        Parts {
            name: "Tachypnoea",
            severity: "medium",
            cooldown_seconds: 300,
            shape: Hop {
                slide_s: 10,
                size_s: 60,
            },
            key: p,
            select: "AVG(respiration_rate) AS avg_rr, COUNT(*) AS n",
            filter: None,
            having: Some("AVG(respiration_rate) > 24 AND COUNT(*) >= 20"),
        },
        Parts {
            name: "Hypoxemia with tachypnoea",
            severity: "high",
            cooldown_seconds: 300,
            shape: Hop {
                slide_s: 60,
                size_s: 180,
            },
            key: p,
            select: "AVG(spo2_pct) AS avg_spo2, AVG(respiration_rate) AS avg_rr",
            filter: None,
            having: Some("AVG(spo2_pct) < 92 AND AVG(respiration_rate) > 22"),
        },
        Parts {
            name: "Prolonged hypoxemia",
            severity: "high",
            cooldown_seconds: 900,
            shape: Hop {
                slide_s: 300,
                size_s: 900,
            },
            key: p,
            select: "AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n",
            filter: None,
            having: Some("AVG(spo2_pct) < 92 AND COUNT(*) >= 300"),
        },
        // --- session windows
        Parts {
            name: "Desaturation episode",
            severity: "medium",
            cooldown_seconds: 300,
            shape: Session { gap_s: 30 },
            key: p,
            select: "COUNT(*) AS n, MIN(spo2_pct) AS lo",
            filter: Some("spo2_pct < 92"),
            having: Some("COUNT(*) >= 3"),
        },
        Parts {
            name: "Tachycardia run",
            severity: "medium",
            cooldown_seconds: 300,
            shape: Session { gap_s: 20 },
            key: p,
            select: "COUNT(*) AS n, MAX(heart_rate_bpm) AS hi",
            filter: Some("heart_rate_bpm > 120"),
            having: Some("COUNT(*) >= 10"),
        },
        Parts {
            name: "Low blood pressure episode",
            severity: "high",
            cooldown_seconds: 300,
            shape: Session { gap_s: 60 },
            key: p,
            select: "COUNT(*) AS n, MIN(systolic_bp_mmhg) AS lo",
            filter: Some("systolic_bp_mmhg < 90"),
            having: Some("COUNT(*) >= 5"),
        },
        // --- per-event rules
        Parts {
            name: "Critical SpO2 reading",
            severity: "critical",
            cooldown_seconds: 120,
            shape: PerEvent,
            key: p,
            select: "hospital_id, spo2_pct",
            filter: Some("spo2_pct < 85"),
            having: None,
        },
        Parts {
            name: "Extreme heart rate",
            severity: "critical",
            cooldown_seconds: 120,
            shape: PerEvent,
            key: p,
            select: "hospital_id, heart_rate_bpm",
            filter: Some("heart_rate_bpm >= 150 OR heart_rate_bpm <= 38"),
            having: None,
        },
        Parts {
            name: "Critical hypotension",
            severity: "critical",
            cooldown_seconds: 120,
            shape: PerEvent,
            key: p,
            select: "hospital_id, systolic_bp_mmhg",
            filter: Some("systolic_bp_mmhg < 75"),
            having: None,
        },
        Parts {
            name: "Hypertensive crisis",
            severity: "critical",
            cooldown_seconds: 300,
            shape: PerEvent,
            key: p,
            select: "hospital_id, systolic_bp_mmhg, diastolic_bp_mmhg",
            filter: Some("systolic_bp_mmhg >= 180 OR diastolic_bp_mmhg >= 120"),
            having: None,
        },
    ];
    parts.into_iter().map(Parts::build).collect()
}

/// 20 rules whose windows all last five minutes (10 tumbling, 10 hopping
/// every minute), for the `state` scenario: every one keeps state per
/// patient for as long as its window is open.
pub fn five_minute_rules() -> Vec<BenchRule> {
    let news2 = format!("{NEWS2} AS news2");
    let measures: [(&str, &str, &str); 10] = [
        (
            "Heart rate",
            "AVG(heart_rate_bpm) AS avg_hr",
            "AVG(heart_rate_bpm) > 110",
        ),
        ("SpO2", "AVG(spo2_pct) AS avg_spo2", "AVG(spo2_pct) < 90"),
        (
            "Systolic low",
            "MIN(systolic_bp_mmhg) AS min_sbp",
            "MIN(systolic_bp_mmhg) < 80",
        ),
        (
            "Respiration high",
            "MAX(respiration_rate) AS max_rr",
            "MAX(respiration_rate) > 30",
        ),
        (
            "Diastolic",
            "COUNT(*) AS n, AVG(diastolic_bp_mmhg) AS avg_dbp",
            "AVG(diastolic_bp_mmhg) < 50",
        ),
        ("NEWS2", &news2, "news2 >= 5"),
        (
            "Heart-rate range",
            "MAX(heart_rate_bpm) - MIN(heart_rate_bpm) AS hr_range",
            "MAX(heart_rate_bpm) - MIN(heart_rate_bpm) > 30",
        ),
        (
            "Shock index",
            "AVG(heart_rate_bpm) / AVG(systolic_bp_mmhg) AS shock_index",
            "AVG(heart_rate_bpm) / AVG(systolic_bp_mmhg) > 1.0",
        ),
        (
            "Desaturations",
            "SUM(CASE WHEN spo2_pct < 90 THEN 1 ELSE 0 END) AS low_n",
            "SUM(CASE WHEN spo2_pct < 90 THEN 1 ELSE 0 END) >= 20",
        ),
        (
            "Respiration",
            "AVG(respiration_rate) AS avg_rr, COUNT(*) AS n",
            "AVG(respiration_rate) > 24",
        ),
    ];
    let shapes = [
        ("5 min tumble", Shape::Tumble { size_s: 300 }),
        (
            "5 min hop",
            Shape::Hop {
                slide_s: 60,
                size_s: 300,
            },
        ),
    ];
    let mut out = Vec::with_capacity(20);
    for (label, shape) in shapes {
        for (name, select, having) in measures {
            out.push(
                Parts {
                    name: &format!("{name} ({label})"),
                    severity: "medium",
                    cooldown_seconds: 300,
                    shape,
                    key: "patient_id",
                    select,
                    filter: None,
                    having: Some(having),
                }
                .build(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sql_rules::stream::vitals_schema;
    use sql_rules::RuleCompiler;

    #[test]
    fn twenty_distinct_rules_that_compile_in_the_right_shape() {
        let rules = rules();
        assert_eq!(rules.len(), 20);
        let names: std::collections::BTreeSet<&str> =
            rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 20, "names are distinct");
        let compiler = RuleCompiler::new(vitals_schema());
        for rule in &rules {
            let compiled = compiler
                .compile(&rule.sql)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", rule.name, rule.sql));
            let window = compiled.window();
            match rule.shape {
                Shape::PerEvent => assert!(window.is_none(), "{}", rule.name),
                _ => assert!(window.is_some(), "{}", rule.name),
            }
        }
        let count = |f: fn(&Shape) -> bool| rules.iter().filter(|r| f(&r.shape)).count();
        assert_eq!(count(|s| matches!(s, Shape::Tumble { .. })), 8);
        assert_eq!(count(|s| matches!(s, Shape::Hop { .. })), 5);
        assert_eq!(count(|s| matches!(s, Shape::Session { .. })), 3);
        assert_eq!(count(|s| matches!(s, Shape::PerEvent)), 4);
    }

    #[test]
    fn twenty_five_minute_rules_that_compile() {
        let rules = five_minute_rules();
        assert_eq!(rules.len(), 20);
        let compiler = RuleCompiler::new(vitals_schema());
        for rule in &rules {
            let window = compiler
                .compile(&rule.sql)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", rule.name, rule.sql))
                .window()
                .expect("windowed");
            assert_eq!(window.pane_ms() % 60_000, 0, "{}", rule.name);
        }
    }
}

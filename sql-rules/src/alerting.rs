//! Turning a rule's result rows into alerts: deterministic ids, cooldown
//! per key, escalation during a cooldown, and the explanation.
//!
//! The engine decides *which* rows alert (windows closing, EMIT EARLY,
//! late windows, budgets); this module decides *what* each alert is. It
//! holds one piece of state per rule, the last fired alert of each key,
//! which snapshots carry so a restored engine suppresses exactly as the
//! original would have.

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use crate::alert::{alert_id_for_key_text, Alert, AlertStatus, Explanation};
use crate::compile::plan::GroupSlot;
use crate::compile::{CompiledRule, RuleShape};
use crate::engine::{RuleSpec, RuleStats};
use crate::json::cell;
use crate::keys::PatientIndex;
use crate::stream::{col, idx};
use crate::window::GroupStats;

/// Re-fire during cooldown when a value crosses a higher threshold, e.g.
/// `avg_hr` above 140 after an alert at 115.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Escalation {
    /// One of the rule's output columns.
    pub column: String,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    /// Severity of the escalated alert (default: the rule's).
    #[serde(default)]
    pub severity: Option<String>,
}

impl Escalation {
    pub(crate) fn crossed(&self, values: &Map<String, Value>) -> bool {
        let Some(v) = values.get(&self.column).and_then(Value::as_f64) else {
            return false;
        };
        self.above.is_some_and(|a| v > a) || self.below.is_some_and(|b| v < b)
    }
}

/// One result row on its way to becoming an alert.
pub(crate) struct Candidate<'a> {
    /// The GROUP BY columns (`patient_id`, `hospital_id` for per-event rules).
    pub key: Map<String, Value>,
    /// The other output columns.
    pub values: Map<String, Value>,
    /// Start and end of the window, for windowed rules.
    pub window: Option<(i64, i64)>,
    /// Event time of the (last) event behind the alert.
    pub event_time_ms: i64,
    /// The time cooldowns are measured in: the window end, or the event's
    /// time for a per-event rule.
    pub alert_time_ms: i64,
    /// What tells this alert from others of the rule and key in its id.
    pub discriminator: &'a str,
    pub stats: GroupStats,
    pub processing_time_ms: i64,
    /// See [`Alert::hospital_id`]; not part of the id or the cooldown key.
    pub hospital_id: Option<String>,
}

/// Where a rule's alerts take their hospital from, decided once per rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HospitalSource {
    /// A rule limited to one hospital: that hospital, whatever the key
    /// (two hospitals may reuse a patient id).
    Scoped(String),
    /// A per-event rule: the event's `hospital_id`.
    Event,
    /// A windowed rule grouped by `hospital_id`: that key, the column at
    /// this index of the window's result rows.
    Key(usize),
    /// A windowed rule grouped by `patient_id` (and not `hospital_id`):
    /// where the patient was at the group's last event (see
    /// [`PatientIndex::hospital_of`]); the patient is the column at this
    /// index of the window's result rows.
    Patient(usize),
    /// Grouped by neither: no one hospital.
    Unknown,
}

impl HospitalSource {
    pub fn of(rule: &CompiledRule) -> Self {
        use datafusion::physical_expr::expressions::Column;
        if let Some(hospital) = &rule.scope {
            return Self::Scoped(hospital.clone());
        }
        let RuleShape::Windowed(plan) = &rule.shape else {
            return Self::Event;
        };
        // The window result rows are the aggregate's: one column per group
        // slot (in order), then the aggregates. Keys are matched on the
        // plan, not on output names, so an alias or a key left out of the
        // SELECT list changes nothing.
        let slot_of = |index: usize, name: &str| {
            plan.group_slots.iter().position(|slot| {
                matches!(slot, GroupSlot::Key(k) if plan.key_exprs[*k]
                    .downcast_ref::<Column>()
                    .is_some_and(|c| c.index() == index && c.name() == name))
            })
        };
        if let Some(at) = slot_of(idx::HOSPITAL_ID, col::HOSPITAL_ID) {
            Self::Key(at)
        } else if let Some(at) = slot_of(idx::PATIENT_ID, col::PATIENT_ID) {
            Self::Patient(at)
        } else {
            Self::Unknown
        }
    }

    /// The hospital of one window result row whose group's last event was
    /// at `last_event_ms`.
    pub fn for_window_row(
        &self,
        rows: &RecordBatch,
        row: usize,
        last_event_ms: i64,
        index: &PatientIndex,
    ) -> Option<String> {
        let text = |at: usize| match cell(rows.column(at).as_ref(), row) {
            Value::String(s) => Some(s),
            _ => None,
        };
        match self {
            Self::Scoped(hospital) => Some(hospital.clone()),
            Self::Key(at) => text(*at),
            Self::Patient(at) => index
                .hospital_of(&text(*at)?, last_event_ms)
                .map(str::to_string),
            Self::Event | Self::Unknown => None,
        }
    }
}

/// A rule's alerting: its condition text for explanations, and per key the
/// alert time and id of the last fired alert and whether it was past the
/// escalation threshold (the cooldown).
#[derive(Debug, Default)]
pub(crate) struct AlertMaker {
    condition: String,
    pub last_fired: HashMap<String, (i64, String, bool)>,
    /// How far behind the watermark an alert's time can still be (late
    /// alerts: the late horizon); cooldowns are kept that much longer.
    keep_behind_ms: i64,
    /// Event time of the next pass that forgets expired cooldowns.
    next_prune_ms: i64,
}

impl AlertMaker {
    pub fn new(sql: &str) -> Self {
        Self {
            condition: condition_text(sql),
            last_fired: HashMap::new(),
            keep_behind_ms: 0,
            next_prune_ms: i64::MIN,
        }
    }

    /// Keeps cooldowns `ms` past their end behind the watermark (the late
    /// horizon, since a late alert's time is that far behind).
    pub fn keeping(mut self, ms: i64) -> Self {
        self.keep_behind_ms = ms.max(0);
        self
    }

    /// Forgets cooldowns that can no longer suppress anything: once a
    /// minute of event time, those that ended more than the late horizon
    /// behind `watermark`. Without it, every key that ever alerted stays
    /// in the map for as long as the rule runs.
    pub fn prune(&mut self, cooldown_ms: i64, watermark: i64) {
        if watermark < self.next_prune_ms {
            return;
        }
        self.next_prune_ms = watermark.saturating_add(60_000);
        let horizon = watermark.saturating_sub(self.keep_behind_ms);
        self.last_fired
            .retain(|_, (last, _, _)| last.saturating_add(cooldown_ms) > horizon);
    }

    /// Forgets every cooldown (the rule's state is being dropped).
    pub fn forget(&mut self) {
        self.last_fired = HashMap::new();
    }

    /// The alert for one result row, through the rule's cooldown and
    /// escalation; counts it as fired or suppressed in `counters`.
    pub fn make(&mut self, spec: &RuleSpec, counters: &mut RuleStats, row: Candidate<'_>) -> Alert {
        let Candidate {
            key,
            values,
            window,
            event_time_ms,
            alert_time_ms,
            discriminator,
            stats,
            processing_time_ms,
            hospital_id,
        } = row;
        let key_text = Value::Object(key.clone()).to_string();
        let id = alert_id_for_key_text(&spec.id, spec.version, &key_text, discriminator);
        let mut suppressed_by = None;
        let mut escalated_from = None;
        let mut severity = spec.severity.clone();
        let crossed = spec.escalation.as_ref().is_some_and(|e| e.crossed(&values));
        let escalated_severity = || spec.escalation.as_ref().and_then(|e| e.severity.clone());
        let status = match self.last_fired.get(&key_text) {
            Some((last, last_id, last_crossed))
                if spec.cooldown_ms > 0
                    && alert_time_ms < last.saturating_add(spec.cooldown_ms) =>
            {
                if crossed && !last_crossed {
                    // Worse than the alert that started the cooldown: fire,
                    // once, and restart the cooldown from here.
                    escalated_from = Some(last_id.clone());
                    severity = escalated_severity().unwrap_or(severity);
                    self.last_fired
                        .insert(key_text, (alert_time_ms, id.clone(), true));
                    AlertStatus::Fired
                } else {
                    suppressed_by = Some(last_id.clone());
                    AlertStatus::Suppressed
                }
            }
            _ => {
                if crossed {
                    severity = escalated_severity().unwrap_or(severity);
                }
                // Without a cooldown there is nothing to remember.
                if spec.cooldown_ms > 0 {
                    self.last_fired
                        .insert(key_text, (alert_time_ms, id.clone(), crossed));
                }
                AlertStatus::Fired
            }
        };
        match status {
            AlertStatus::Fired => counters.alerts_fired += 1,
            AlertStatus::Suppressed => counters.alerts_suppressed += 1,
        }
        Alert {
            id,
            rule_id: spec.id.clone(),
            rule_version: spec.version,
            rule_name: spec.name.clone(),
            severity,
            status,
            key,
            hospital_id,
            window_start_ms: window.map(|w| w.0),
            window_end_ms: window.map(|w| w.1),
            values,
            event_time_ms,
            fired_at_ms: processing_time_ms,
            explanation: Explanation {
                condition: self.condition.clone(),
                event_count: stats.count,
                first_event_ms: stats.first_event_ms,
                last_event_ms: stats.last_event_ms,
                first_sequence_number: (stats.first_seq != crate::window::NO_SEQ)
                    .then_some(stats.first_seq),
                last_sequence_number: (stats.last_seq != crate::window::NO_SEQ)
                    .then_some(stats.last_seq),
                suppressed_by,
                escalated_from,
                late: false,
                clears: None,
            },
        }
    }
}

impl AlertMaker {
    /// The clear of a fired signal-loss alert whose key's readings
    /// returned at `returned_ms` (see [`crate::window::clears`]): same rule
    /// and key, the cleared alert's values and hospital, severity `info`,
    /// an id derived from the cleared alert's, the returning reading's
    /// event time.
    pub fn clear(
        &self,
        spec: &RuleSpec,
        counters: &mut RuleStats,
        cleared: crate::window::clears::Pending,
        returned_ms: i64,
        processing_time_ms: i64,
    ) -> Alert {
        let key_text = Value::Object(cleared.key.clone()).to_string();
        let discriminator = format!("clears={}", cleared.alert_id);
        counters.alerts_fired += 1;
        Alert {
            id: alert_id_for_key_text(&spec.id, spec.version, &key_text, &discriminator),
            rule_id: spec.id.clone(),
            rule_version: spec.version,
            rule_name: spec.name.clone(),
            severity: CLEAR_SEVERITY.into(),
            status: AlertStatus::Fired,
            key: cleared.key,
            hospital_id: cleared.hospital_id,
            window_start_ms: None,
            window_end_ms: None,
            values: cleared.values,
            event_time_ms: returned_ms,
            fired_at_ms: processing_time_ms,
            explanation: Explanation {
                condition: CLEAR_CONDITION.into(),
                event_count: 1,
                first_event_ms: returned_ms,
                last_event_ms: returned_ms,
                first_sequence_number: None,
                last_sequence_number: None,
                suppressed_by: None,
                escalated_from: None,
                late: false,
                clears: Some(cleared.alert_id),
            },
        }
    }
}

/// Severity of a signal-loss clear: news, not a page.
pub const CLEAR_SEVERITY: &str = "info";

/// The explanation's condition of a signal-loss clear.
pub const CLEAR_CONDITION: &str = "readings returned";

/// Splits one output row into the alert's key and values.
pub(crate) fn split_row(
    rule: &CompiledRule,
    output: &RecordBatch,
    row: usize,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut key = Map::new();
    let mut values = Map::new();
    for (i, field) in output.schema().fields().iter().enumerate() {
        let v = cell(output.column(i).as_ref(), row);
        if rule.key_columns.contains(&i) {
            key.insert(field.name().clone(), v);
        } else {
            values.insert(field.name().clone(), v);
        }
    }
    (key, values)
}

/// The HAVING clause, or WHERE for per-event rules, as the author wrote it.
fn condition_text(sql: &str) -> String {
    let upper = sql.to_ascii_uppercase();
    let pick = |word: &str| -> Option<String> {
        let at = upper.rfind(word)?;
        let rest = &sql[at + word.len()..];
        let end_words = [" GROUP BY", " HAVING", " ORDER BY", " LIMIT"];
        let rest_upper = rest.to_ascii_uppercase();
        let end = end_words
            .iter()
            .filter_map(|w| rest_upper.find(w))
            .min()
            .unwrap_or(rest.len());
        Some(rest[..end].split_whitespace().collect::<Vec<_>>().join(" "))
    };
    pick("HAVING").or_else(|| pick("WHERE")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_is_the_having_clause_else_the_where_clause() {
        assert_eq!(
            condition_text(
                "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 100 \
                 GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id HAVING COUNT(*) >= 5"
            ),
            "COUNT(*) >= 5"
        );
        assert_eq!(
            condition_text("SELECT patient_id FROM vitals WHERE spo2_pct  <\n 85"),
            "spo2_pct < 85"
        );
    }

    #[test]
    fn a_repeat_within_the_cooldown_is_suppressed_unless_it_crosses_the_escalation() {
        let sql = "SELECT patient_id, heart_rate_bpm AS hr FROM vitals WHERE heart_rate_bpm > 100";
        let spec = RuleSpec {
            id: "r".into(),
            version: 1,
            name: "r".into(),
            severity: "high".into(),
            cooldown_ms: 60_000,
            allowed_lateness_ms: None,
            keep_duplicates: false,
            escalation: Some(Escalation {
                column: "hr".into(),
                above: Some(140.0),
                below: None,
                severity: Some("critical".into()),
            }),
            compiled: CompiledRule::compile(sql, &crate::stream::vitals_schema()).unwrap(),
        };
        let mut maker = AlertMaker::new(sql);
        let mut counters = RuleStats::default();
        let mut at = |maker: &mut AlertMaker, t: i64, hr: f64| {
            let mut key = Map::new();
            key.insert("patient_id".into(), "P1".into());
            let mut values = Map::new();
            values.insert("hr".into(), hr.into());
            let discriminator = format!("e={t}");
            let row = Candidate {
                key,
                values,
                window: None,
                event_time_ms: t,
                alert_time_ms: t,
                discriminator: &discriminator,
                stats: GroupStats::one(t, 1),
                processing_time_ms: 0,
                hospital_id: None,
            };
            let a = maker.make(&spec, &mut counters, row);
            (a.status, a.severity)
        };
        assert_eq!(
            at(&mut maker, 0, 120.0),
            (AlertStatus::Fired, "high".into())
        );
        assert_eq!(
            at(&mut maker, 10_000, 125.0),
            (AlertStatus::Suppressed, "high".into())
        );
        assert_eq!(
            at(&mut maker, 20_000, 150.0),
            (AlertStatus::Fired, "critical".into())
        );
        assert_eq!(
            at(&mut maker, 30_000, 155.0),
            (AlertStatus::Suppressed, "high".into())
        );
        assert_eq!(
            at(&mut maker, 90_000, 120.0),
            (AlertStatus::Fired, "high".into())
        );
        assert_eq!((counters.alerts_fired, counters.alerts_suppressed), (3, 2));
    }

    #[test]
    fn cooldowns_are_forgotten_once_they_can_suppress_nothing() {
        let sql = "SELECT patient_id FROM vitals WHERE heart_rate_bpm > 120";
        let spec = |cooldown_ms| RuleSpec {
            id: "r".into(),
            version: 1,
            name: "r".into(),
            severity: "high".into(),
            cooldown_ms,
            allowed_lateness_ms: None,
            keep_duplicates: false,
            escalation: None,
            compiled: CompiledRule::compile(sql, &crate::stream::vitals_schema()).unwrap(),
        };
        let fire = |maker: &mut AlertMaker, spec: &RuleSpec, patient: usize, t: i64| {
            let mut key = Map::new();
            key.insert("patient_id".into(), format!("P{patient}").into());
            let discriminator = format!("e={t}");
            let row = Candidate {
                key,
                values: Map::new(),
                window: None,
                event_time_ms: t,
                alert_time_ms: t,
                discriminator: &discriminator,
                stats: GroupStats::one(t, 1),
                processing_time_ms: 0,
                hospital_id: None,
            };
            maker.make(spec, &mut RuleStats::default(), row).status
        };
        // No cooldown: nothing is remembered, however many patients alert.
        let none = spec(0);
        let mut maker = AlertMaker::new(sql);
        for p in 0..1_000 {
            assert_eq!(fire(&mut maker, &none, p, 1_000), AlertStatus::Fired);
        }
        assert!(maker.last_fired.is_empty());

        // A 5 min cooldown, a 10 min late horizon: kept while it can still
        // suppress an alert (late ones included), then forgotten.
        let five = spec(300_000);
        let mut maker = AlertMaker::new(sql).keeping(600_000);
        for p in 0..1_000 {
            fire(&mut maker, &five, p, 0);
        }
        maker.prune(five.cooldown_ms, 899_999);
        assert_eq!(maker.last_fired.len(), 1_000);
        assert_eq!(fire(&mut maker, &five, 7, 299_999), AlertStatus::Suppressed);
        maker.prune(five.cooldown_ms, 960_000);
        assert!(maker.last_fired.is_empty());
    }
}

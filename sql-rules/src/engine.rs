//! The engine: every active rule over one stream, incrementally.
//!
//! The caller hands it `vitals` batches tagged with the Kafka partition they
//! came from and the current processing time; it returns alerts. Event time
//! drives everything else:
//!
//! * Per partition we track the maximum event time seen. An event is *late*
//!   for a windowed rule when the first window that contains it ends at or
//!   before `max event time seen earlier in its partition − allowed
//!   lateness` (or a window that already fired). Late events are counted per
//!   rule and left out of aggregation. Because this is decided per event in
//!   partition order, the result does not depend on how the stream was cut
//!   into batches.
//! * A rule's watermark is the stream time minus its allowed lateness;
//!   windows fire once, when it passes their end. The stream time is the
//!   minimum over partitions that are not idle of their max event time; a
//!   partition is idle only after other partitions have moved past it and
//!   it delivered nothing for the idle timeout, and a stream quiet as a
//!   whole starts over (see [`crate::window::watermark`]). A partition far
//!   ahead of the others only keeps more panes open: nothing is dropped or
//!   split.
//! * When every partition is caught up and quiet, [`Engine::tick`] closes
//!   windows whose end plus lateness is `quiet_close_ms` behind the
//!   stream's clock (for live traffic, processing time), if some event
//!   reached them.
//!
//! * Each rule runs within [`RuleBudgets`] of state, work per call and
//!   alerts per minute of event time; a rule over one is suspended (its
//!   state dropped, no longer evaluated, the reason in its
//!   [`RuleStats::suspension`]) while the others keep running, until a new
//!   version of it is upserted (see [`crate::budget`]).
//!
//! * Signal loss: a SESSION rule without HAVING alerts once per closed
//!   session; when the key's readings return, the fired alert is cleared
//!   by one alert with `explanation.clears` (see [`crate::window::clears`]).
//! * Patients not seen for [`Engine::set_forget_patients_after_ms`] of
//!   event time, whose rows no rule holds any more, are forgotten: their
//!   interned id, whereabouts and duplicate memory go (see
//!   [`Engine::patients_held`]). A patient who comes back is interned again
//!   as a new one; alerts are the same either way.
//!
//! The engine has no clock and does no I/O: processing time is an argument.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use serde_json::Value;

use crate::alert::{Alert, AlertStatus};
pub use crate::alerting::Escalation;
use crate::alerting::{split_row, AlertMaker, Candidate, HospitalSource};
use crate::budget::{Meter, RuleBudgets, Suspension, SuspensionReason};
use crate::compile::{CompiledRule, RuleShape};
use crate::error::EngineError;
use crate::eval::{apply_ops, predicate_mask};
use crate::json::cell;
use crate::keys::PatientIndex;
use crate::stream::idx;
use crate::window::watermark::StreamClock;
use crate::window::{ClosedWindow, GroupStats, WindowOperator};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Allowed lateness for rules that do not set their own.
    pub default_lateness_ms: i64,
    /// A partition that other partitions have moved past, and that
    /// delivers nothing for this long (processing time), stops holding back
    /// the watermark. A stream quiet this long as a whole starts over.
    pub idle_timeout_ms: i64,
    /// When no partition has delivered anything for this long and every
    /// partition is caught up ([`Engine::tick`]), windows whose end plus
    /// lateness is this far behind the stream's clock (the latest event
    /// time plus the processing time since the last delivery, at most
    /// processing time) close, if an event reached them. `None`: off.
    pub quiet_close_ms: Option<i64>,
    /// A closed TUMBLE or HOP window is kept this long (event time past
    /// its end) so that a late event that turns its decision from no alert
    /// into an alert raises an alert marked `late` (see
    /// [`crate::window::panes`]' `late` module). 0: late events are only
    /// counted.
    pub late_alert_horizon_ms: i64,
    /// What each rule may cost at run time before it is suspended.
    pub budgets: RuleBudgets,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_lateness_ms: 500,
            idle_timeout_ms: 10_000,
            quiet_close_ms: Some(5_000),
            late_alert_horizon_ms: 600_000,
            budgets: RuleBudgets::default(),
        }
    }
}

/// A rule as the engine runs it: identity, alerting policy, compiled plan.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub id: String,
    pub version: u32,
    pub name: String,
    pub severity: String,
    /// After an alert for a key, later alerts of this rule for the same key
    /// within this much event time are suppressed. 0 disables.
    pub cooldown_ms: i64,
    pub allowed_lateness_ms: Option<i64>,
    /// Aggregate duplicate events too; off by default, when an event that
    /// repeats the sequence number or timestamp of a recent one from the
    /// same patient and device is dropped.
    pub keep_duplicates: bool,
    /// A suppressed repeat that crosses this threshold fires anyway.
    pub escalation: Option<Escalation>,
    pub compiled: CompiledRule,
}

/// Per-rule counters, cumulative since the rule (version) was added.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleStats {
    pub events_matched: u64,
    pub late_events: u64,
    /// Fired alerts, signal-loss clears included.
    pub alerts_fired: u64,
    pub alerts_suppressed: u64,
    pub open_panes: u64,
    /// Set when the rule went over a run-time budget: it no longer runs
    /// and holds no state. Cleared only by a new version of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<Suspension>,
}

enum Operator {
    PerEvent,
    Window(WindowOperator),
    /// Over a budget: state dropped, not evaluated.
    Suspended,
}

struct RuleRuntime {
    spec: Arc<RuleSpec>,
    lateness_ms: i64,
    /// Ids, cooldowns, escalation and explanations of its alerts.
    alerting: AlertMaker,
    /// Where its alerts' `hospital_id` comes from.
    hospital: HospitalSource,
    operator: Operator,
    /// EMIT EARLY: (window start, key) that already alerted while open.
    fired_early: std::collections::HashSet<(i64, String)>,
    stats: RuleStats,
    /// Panes merged into each window result (size / pane for HOP, else 1):
    /// the work one result row costs.
    panes_per_window: u64,
    meter: Meter,
}

/// Approximate bytes of one cooldown or EMIT EARLY entry (key text and
/// map overhead), counted towards a rule's state without walking the maps.
const BOOKKEEPING_ENTRY_BYTES: usize = 96;

/// What one call produced.
#[derive(Debug, Default)]
pub struct EngineOutput {
    pub alerts: Vec<Alert>,
    pub late_events: u64,
    /// Duplicate events in this input (not aggregated by rules that
    /// deduplicate).
    pub duplicates: u64,
    /// Rules that failed on this input. One failing rule never stops the
    /// others.
    pub errors: Vec<RuleFailure>,
    /// Rules suspended during this call for going over a budget.
    pub suspended: Vec<RuleSuspended>,
}

/// A rule the engine suspended (see [`crate::budget`]).
#[derive(Debug, Clone)]
pub struct RuleSuspended {
    pub rule_id: String,
    pub suspension: Suspension,
}

/// Runs one rule's step so that a bug it hits (a panic in an operator or a
/// DataFusion kernel) fails that rule on this input, like an evaluation
/// error, instead of unwinding the engine thread and silencing every rule.
fn isolated<T>(step: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(EngineError::Panicked(what))
        }
    }
}

/// One rule's failure on one input.
#[derive(Debug)]
pub struct RuleFailure {
    pub rule_id: String,
    pub error: EngineError,
}

impl std::fmt::Display for RuleFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            // Already names the rule.
            EngineError::Evaluation { .. } => write!(f, "{}", self.error),
            other => write!(f, "rule {}: {other}", self.rule_id),
        }
    }
}

/// Default of [`Engine::set_forget_patients_after_ms`]: a day of event time.
pub const DEFAULT_FORGET_PATIENTS_AFTER_MS: i64 = 24 * 3_600_000;

/// A forgetting pass runs once this many patients were interned since the
/// last one (or half the patients held, if more), or once a quarter of the
/// span of event time has passed: a pass walks every patient and, when
/// some are due, the panes keyed by patient, so it is kept rare.
const FORGET_PASS_MIN_GROWTH: usize = 4096;

pub struct Engine {
    config: EngineConfig,
    /// Patients not seen for this long (event time) and held by no rule
    /// are forgotten; 0 never.
    forget_after_ms: i64,
    /// How far event time has got anywhere in the engine: the latest
    /// event, or watermark a rule fired at. Never goes back. Patients are
    /// stamped with it ([`PatientIndex::note_seen`]).
    event_clock_ms: i64,
    /// Event clock at which the next forgetting pass is due anyway.
    next_forget_pass_ms: i64,
    /// Patient ids interned once per batch for every rule, and the
    /// hospital each patient is at.
    patients: PatientIndex,
    /// Scratch: the patient index of each row of the batch in hand.
    row_patients: Vec<u32>,
    dedup: crate::dedup::Deduplicator,
    duplicates: u64,
    rules: Vec<RuleRuntime>,
    clock: StreamClock,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            clock: StreamClock::new(config.idle_timeout_ms, config.quiet_close_ms),
            config,
            forget_after_ms: DEFAULT_FORGET_PATIENTS_AFTER_MS,
            event_clock_ms: i64::MIN,
            next_forget_pass_ms: i64::MIN,
            patients: PatientIndex::default(),
            row_patients: Vec::new(),
            dedup: Default::default(),
            duplicates: 0,
            rules: Vec::new(),
        }
    }

    /// Adds a rule, or replaces the rule with the same id (a new version
    /// starts with fresh state and a clean record: this is what clears a
    /// suspension; the other rules are untouched).
    pub fn upsert_rule(&mut self, spec: RuleSpec) -> Result<(), EngineError> {
        let alerting =
            AlertMaker::new(&spec.compiled.sql).keeping(self.config.late_alert_horizon_ms);
        let panes_per_window = match spec.compiled.window() {
            Some(w @ crate::compile::WindowSpec::Hop { size_ms, .. }) => {
                (size_ms / w.pane_ms().max(1)).max(1) as u64
            }
            _ => 1,
        };
        let operator = match &spec.compiled.shape {
            RuleShape::PerEvent => Operator::PerEvent,
            RuleShape::Windowed(w) => Operator::Window(
                WindowOperator::new(Arc::new((**w).clone()))
                    .map_err(eval_err(&spec))?
                    .with_late_alerts(self.config.late_alert_horizon_ms, &spec.compiled.output_ops)
                    .with_clears(signal_loss(&spec.compiled)),
            ),
        };
        let runtime = RuleRuntime {
            lateness_ms: spec
                .allowed_lateness_ms
                .unwrap_or(self.config.default_lateness_ms),
            hospital: HospitalSource::of(&spec.compiled),
            spec: Arc::new(spec),
            alerting,
            operator,
            fired_early: Default::default(),
            stats: RuleStats::default(),
            panes_per_window,
            meter: Meter::default(),
        };
        match self.rules.iter_mut().find(|r| r.spec.id == runtime.spec.id) {
            Some(existing) => *existing = runtime,
            None => self.rules.push(runtime),
        }
        Ok(())
    }

    pub fn remove_rule(&mut self, id: &str) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.spec.id != id);
        before != self.rules.len()
    }

    pub fn rules(&self) -> impl Iterator<Item = (&RuleSpec, &RuleStats)> {
        self.rules.iter().map(|r| (r.spec.as_ref(), &r.stats))
    }

    /// Changes the run-time budgets of every rule; counts so far are kept,
    /// and rules already suspended stay so.
    pub fn set_budgets(&mut self, budgets: RuleBudgets) {
        self.config.budgets = budgets;
    }

    pub fn budgets(&self) -> &RuleBudgets {
        &self.config.budgets
    }

    pub fn rule_stats(&self, id: &str) -> Option<RuleStats> {
        self.rules.iter().find(|r| r.spec.id == id).map(|r| {
            let mut s = r.stats.clone();
            if let Operator::Window(w) = &r.operator {
                s.open_panes = w.open_state() as u64;
            }
            s
        })
    }

    /// Declares partitions this instance owns, so a partition that has not
    /// delivered anything yet holds the watermark back (until idle: other
    /// partitions have delivered for the idle timeout while it did not).
    /// Assignment alone starts no idle count, so the processing time is
    /// not needed.
    pub fn assign_partitions(&mut self, partitions: &[i32], _processing_time_ms: i64) {
        self.clock.assign(partitions);
    }

    /// Bytes of state the engine holds: window state of every rule, the
    /// events remembered for duplicate detection, the interned patient ids
    /// and where each patient is (cooldown maps and counters are small and
    /// not counted).
    pub fn state_bytes(&self) -> usize {
        let windows: usize = self
            .rules
            .iter()
            .map(|r| match &r.operator {
                Operator::Window(w) => w.state_bytes(),
                Operator::PerEvent | Operator::Suspended => 0,
            })
            .sum();
        windows + self.dedup.state_bytes() + self.patients.state_bytes()
    }

    /// Forget patients not seen for `ms` of event time (the engine's event
    /// clock: the latest event or watermark reached) once no rule holds
    /// anything of theirs; 0 (or less) never forgets. Default
    /// [`DEFAULT_FORGET_PATIENTS_AFTER_MS`]. Alerts do not depend on it:
    /// it only bounds memory when ids keep changing.
    pub fn set_forget_patients_after_ms(&mut self, ms: i64) {
        self.forget_after_ms = ms.max(0);
        self.next_forget_pass_ms = i64::MIN;
    }

    pub fn forget_patients_after_ms(&self) -> i64 {
        self.forget_after_ms
    }

    /// Patients the engine holds (interned ids, each with where they are
    /// and their duplicate memory): the size of the patient interner.
    pub fn patients_held(&self) -> usize {
        self.patients.held()
    }

    /// Patients forgotten since the engine started (see
    /// [`Self::set_forget_patients_after_ms`]).
    pub fn patients_forgotten(&self) -> u64 {
        self.patients.forgotten()
    }

    /// Duplicate events seen since the engine started.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Each partition's latest event time (`i64::MIN` before its first
    /// event) and whether it is idle, ordered by partition: for metrics.
    pub fn partition_clocks(&self) -> Vec<(i32, i64, bool)> {
        let mut clocks: Vec<(i32, i64, bool)> = self
            .clock
            .partitions()
            .map(|(p, c)| (p, c.max_event_ms, c.idle))
            .collect();
        clocks.sort_unstable();
        clocks
    }

    pub fn revoke_partitions(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.dedup.forget(*p);
            self.clock.revoke(*p);
        }
    }

    /// Runs every rule over one batch of `vitals` from `partition`.
    pub fn process(
        &mut self,
        partition: i32,
        batch: &RecordBatch,
        processing_time_ms: i64,
    ) -> Result<EngineOutput, EngineError> {
        let mut out = EngineOutput::default();
        self.start_call();
        if batch.num_rows() > 0 {
            let ts_col = batch
                .column(idx::EVENT_TIME)
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| {
                    EngineError::Schema("column event_time is not a millisecond timestamp".into())
                })?;
            let ts = ts_col.values();
            let prior_max = self.clock.max_event(partition);
            let patient_col = batch
                .column(idx::PATIENT_ID)
                .as_string_opt::<i32>()
                .ok_or_else(|| EngineError::Schema("column patient_id is not a string".into()))?;
            self.patients
                .index_column(patient_col, &mut self.row_patients);
            // At or past every row's event time and lateness threshold, so
            // whatever a rule keeps of these rows is gone once its
            // watermark is its reach past this stamp (`released_through`).
            if let Some(&max) = ts.iter().max() {
                self.event_clock_ms = self.event_clock_ms.max(max);
            }
            self.patients
                .note_seen(&self.row_patients, self.event_clock_ms);
            let hospital_col = batch
                .column(idx::HOSPITAL_ID)
                .as_string_opt::<i32>()
                .ok_or_else(|| EngineError::Schema("column hospital_id is not a string".into()))?;
            // Before the rules run, so windows closing in this call know
            // where their patients were (see `keys::Whereabouts`).
            self.patients
                .note_hospitals(&self.row_patients, hospital_col, ts);
            let duplicates = self.dedup.mark(partition, batch, &self.row_patients);
            if let Some(marks) = &duplicates {
                let n = marks.iter().filter(|d| **d).count() as u64;
                out.duplicates += n;
                self.duplicates += n;
            }
            let batch_max_event = ts.iter().copied().max();
            let budgets = self.config.budgets;
            for rule in &mut self.rules {
                if matches!(rule.operator, Operator::Suspended) {
                    continue;
                }
                let rows = RowsIn {
                    batch,
                    ts,
                    patients: &self.row_patients,
                    index: &self.patients,
                    duplicates: duplicates.as_deref().filter(|_| !rule.spec.keep_duplicates),
                };
                let at = Moment {
                    event_ms: batch_max_event
                        .max(Some(prior_max))
                        .filter(|t| *t > i64::MIN),
                    processing_ms: processing_time_ms,
                };
                let result = isolated(|| rule.process(rows, prior_max, at, &budgets, &mut out));
                rule.settle(result, &mut out);
            }
            // Duplicates are the same event again: they do not move time.
            let batch_max = match &duplicates {
                None => ts.iter().copied().max(),
                Some(marks) => ts
                    .iter()
                    .zip(marks)
                    .filter(|(_, d)| !**d)
                    .map(|(t, _)| *t)
                    .max(),
            }
            .unwrap_or(i64::MIN);
            self.clock.deliver(partition, batch_max, processing_time_ms);
        }
        self.fire_due(processing_time_ms, None, None, &mut out)?;
        self.forget_patients();
        Ok(out)
    }

    /// Lets processing time pass. Call it only when every partition has
    /// delivered everything available (the Kafka source's caught-up
    /// signal; a source that hands events over as they arrive always is):
    /// partitions that others have moved past and that delivered nothing
    /// for the idle timeout stop holding back the watermark, and, when no
    /// partition has delivered anything for `quiet_close_ms`, windows whose
    /// end plus lateness is that far behind the stream's clock (see
    /// [`EngineConfig::quiet_close_ms`]) close.
    pub fn tick(&mut self, processing_time_ms: i64) -> Result<EngineOutput, EngineError> {
        self.start_call();
        self.clock.tick(processing_time_ms);
        let quiet_floor = self.clock.quiet_floor(processing_time_ms);
        let mut out = EngineOutput::default();
        self.fire_due(processing_time_ms, None, quiet_floor, &mut out)?;
        self.forget_patients();
        Ok(out)
    }

    /// Closes every window that ends at or before `event_time_ms`, as if all
    /// partitions had moved past it. Replay uses this at the end of its range.
    pub fn advance_watermark(
        &mut self,
        event_time_ms: i64,
        processing_time_ms: i64,
    ) -> Result<EngineOutput, EngineError> {
        let mut out = EngineOutput::default();
        self.start_call();
        self.fire_due(processing_time_ms, Some(event_time_ms), None, &mut out)?;
        self.forget_patients();
        Ok(out)
    }

    /// Forgets patients not seen for the span whose rows no rule holds any
    /// more, when a pass is due (see [`FORGET_PASS_MIN_GROWTH`]). What a
    /// patient's rows can leave behind in a rule is gone once the rule's
    /// watermark has passed the patient's stamp by the rule's reach
    /// (window size and late horizon, or session gap): that covers state
    /// keyed by the id's text, which needs the index only for where the
    /// patient is. Panes keyed by index are also checked directly, since
    /// a reused index still held would mix two patients. Cooldowns, EMIT
    /// EARLY markers and signal-loss clears are keyed by text and never
    /// need the index: they are kept and behave the same either way.
    fn forget_patients(&mut self) {
        if self.forget_after_ms <= 0 || self.event_clock_ms == i64::MIN {
            return;
        }
        let grown = self.patients.interned_since_sweep()
            >= (self.patients.held() / 2).max(FORGET_PASS_MIN_GROWTH);
        if !grown && self.event_clock_ms < self.next_forget_pass_ms {
            return;
        }
        self.patients.start_sweep();
        self.next_forget_pass_ms = self
            .event_clock_ms
            .saturating_add((self.forget_after_ms / 4).max(1_000));
        let cutoff = self.rules.iter().map(RuleRuntime::released_through).fold(
            self.event_clock_ms.saturating_sub(self.forget_after_ms),
            i64::min,
        );
        let Some(mut dead) = self.patients.seen_at_or_before(cutoff) else {
            return;
        };
        for rule in &self.rules {
            if let Operator::Window(op) = &rule.operator {
                op.keep_referenced(&mut dead);
            }
        }
        self.dedup.forget_patients(&dead);
        self.patients.forget(&dead);
    }

    /// Work is budgeted per engine call: start counting afresh.
    fn start_call(&mut self) {
        for rule in &mut self.rules {
            rule.meter.work = 0;
        }
    }

    /// Fires what is due: at `forced` if given, else at each rule's
    /// watermark (stream time − lateness), raised by the quiet close when
    /// `quiet_floor` is given (see [`Self::tick`]).
    fn fire_due(
        &mut self,
        processing_time_ms: i64,
        forced: Option<i64>,
        quiet_floor: Option<i64>,
        out: &mut EngineOutput,
    ) -> Result<(), EngineError> {
        let stream_time = self.clock.stream_time().filter(|t| *t > i64::MIN);
        let latest = self.clock.latest_event().filter(|t| *t > i64::MIN);
        let budgets = self.config.budgets;
        for rule in &mut self.rules {
            if matches!(rule.operator, Operator::Suspended) {
                continue;
            }
            let by_events = stream_time.map(|t| t.saturating_sub(rule.lateness_ms));
            // Capped at the last window the latest event can be in: the
            // quiet close finishes windows that hold data, and never marks
            // a window no event has reached as fired (later events there
            // would count as late).
            let by_quiet = match (quiet_floor, latest, &rule.operator) {
                (Some(floor), Some(latest), Operator::Window(op)) => Some(
                    floor
                        .saturating_sub(rule.lateness_ms)
                        .min(op.last_window_end(latest)),
                ),
                _ => None,
            };
            let watermark = match (forced, by_events.max(by_quiet)) {
                (Some(f), _) => f,
                (None, Some(w)) => w,
                (None, None) => continue,
            };
            self.event_clock_ms = self.event_clock_ms.max(watermark);
            let patients = &self.patients;
            let at = Moment {
                event_ms: latest,
                processing_ms: processing_time_ms,
            };
            let result = isolated(|| rule.fire(watermark, at, &budgets, patients, out));
            rule.settle(result, out);
        }
        Ok(())
    }

    /// Serialises all rule state (open windows, cooldowns, counters),
    /// partition clocks, where each patient is (for alerts' hospitals) and
    /// the duplicate memory.
    /// Restoring into an engine with the same rules and continuing gives
    /// the same alerts as never stopping.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, EngineError> {
        let mut blobs = crate::snapshot::Blobs::default();
        let mut rules = Vec::with_capacity(self.rules.len());
        for rule in &mut self.rules {
            let window = match &mut rule.operator {
                Operator::PerEvent | Operator::Suspended => serde_json::Value::Null,
                Operator::Window(w) => w.snapshot(&mut blobs, &self.patients)?,
            };
            let mut last_fired: Vec<(&String, &(i64, String, bool))> =
                rule.alerting.last_fired.iter().collect();
            last_fired.sort();
            rules.push(serde_json::json!({
                "id": rule.spec.id,
                "version": rule.spec.version,
                "stats": rule.stats,
                "last_fired": last_fired,
                "fired_early": rule.fired_early.iter().collect::<std::collections::BTreeSet<_>>(),
                "window": window,
            }));
        }
        let mut partitions: Vec<_> = self.clock.partitions().collect();
        partitions.sort_by_key(|(p, _)| *p);
        let partitions: Vec<serde_json::Value> = partitions
            .into_iter()
            .map(|(p, c)| serde_json::json!({"partition": p, "max_event_ms": c.max_event_ms, "idle": c.idle}))
            .collect();
        // Where each patient is: without it, alerts of rules grouped by
        // patient would have no hospital until the patient's next event.
        let whereabouts = blobs.push(&self.patients.whereabouts_batch()?)?;
        // Recent events per device: a resend arriving after a restart is
        // still recognised as one.
        let dedup = blobs.push(&self.dedup.snapshot_batch(&self.patients)?)?;
        // When each patient was seen, so a restored engine forgets them
        // when this one would have.
        let seen = blobs.push(&self.patients.seen_batch()?)?;
        let header = serde_json::json!({
            "format": 1,
            "partitions": partitions,
            "rules": rules,
            "whereabouts": whereabouts,
            "dedup": dedup,
            "patients_seen": seen,
            "event_clock_ms": self.event_clock_ms,
        });
        Ok(crate::snapshot::encode(&header, &blobs))
    }

    /// Restores a [`snapshot`](Self::snapshot) into this engine. Rules must
    /// already be added; state is restored for rules whose id and version
    /// match, and the ids of the others are returned (they start fresh).
    /// Idle counts start over (processing time is not needed): a restart
    /// never makes a partition idle sooner.
    pub fn restore(
        &mut self,
        bytes: &[u8],
        _processing_time_ms: i64,
    ) -> Result<Vec<String>, EngineError> {
        let (header, blobs) = crate::snapshot::decode(bytes)?;
        let bad = |what: &str| EngineError::Restore(format!("snapshot header: {what}"));
        if header["format"].as_u64() != Some(1) {
            return Err(bad("unknown format"));
        }
        for p in header["partitions"]
            .as_array()
            .ok_or_else(|| bad("partitions"))?
        {
            let partition = p["partition"].as_i64().ok_or_else(|| bad("partition"))? as i32;
            self.clock.restore(
                partition,
                p["max_event_ms"]
                    .as_i64()
                    .ok_or_else(|| bad("max_event_ms"))?,
                p["idle"].as_bool().unwrap_or(false),
            );
        }
        // Absent from snapshots taken before patients were forgotten: then
        // each is kept a full span from the restore (stamped below).
        if let Some(blob) = header["patients_seen"].as_u64() {
            let batch = blobs.get(blob as usize)?;
            self.patients.restore_seen(&batch).map_err(|e| bad(&e))?;
        }
        // Absent from snapshots taken before alerts carried a hospital: then
        // each patient's is learnt again from their next event.
        if let Some(blob) = header["whereabouts"].as_u64() {
            let batch = blobs.get(blob as usize)?;
            self.patients
                .restore_whereabouts(&batch)
                .map_err(|e| bad(&e))?;
        }
        // Absent from snapshots taken before duplicate memory was kept.
        if let Some(blob) = header["dedup"].as_u64() {
            let batch = blobs.get(blob as usize)?;
            self.dedup
                .restore_batch(&batch, &mut self.patients)
                .map_err(|e| bad(&e))?;
        }
        let mut skipped = Vec::new();
        // Open panes to rebuild, by rule: done after the loop, on two
        // threads (the larger part of a restore at 100 k patients).
        let mut rebuild = Vec::new();
        for snap in header["rules"].as_array().ok_or_else(|| bad("rules"))? {
            let id = snap["id"].as_str().ok_or_else(|| bad("rule id"))?;
            let version = snap["version"]
                .as_u64()
                .ok_or_else(|| bad("rule version"))? as u32;
            let Some((at, rule)) = self
                .rules
                .iter_mut()
                .enumerate()
                .find(|(_, r)| r.spec.id == id && r.spec.version == version)
            else {
                skipped.push(format!("{id} v{version}"));
                continue;
            };
            rule.stats =
                serde_json::from_value(snap["stats"].clone()).map_err(|e| bad(&e.to_string()))?;
            rule.alerting.last_fired =
                serde_json::from_value::<Vec<(String, (i64, String, bool))>>(
                    snap["last_fired"].clone(),
                )
                .map_err(|e| bad(&e.to_string()))?
                .into_iter()
                .collect();
            rule.fired_early =
                serde_json::from_value::<Vec<(i64, String)>>(snap["fired_early"].clone())
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
            if rule.stats.suspension.is_some() {
                // Suspended when the snapshot was taken: stays so.
                rule.suspend_in_place();
            } else if let Operator::Window(w) = &mut rule.operator {
                if let Some(panes) = w.restore(&snap["window"], &blobs, &mut self.patients)? {
                    rebuild.push((at, panes));
                }
            }
        }
        rebuild_panes(&mut self.rules, rebuild)?;
        let reached = self
            .clock
            .latest_event()
            .into_iter()
            .chain(header["event_clock_ms"].as_i64())
            .chain(self.rules.iter().filter_map(|r| match &r.operator {
                Operator::Window(w) => Some(w.fired_through()),
                Operator::PerEvent | Operator::Suspended => None,
            }))
            .max();
        if let Some(reached) = reached {
            self.event_clock_ms = self.event_clock_ms.max(reached);
        }
        self.patients.stamp_unseen(self.event_clock_ms);
        self.next_forget_pass_ms = i64::MIN;
        Ok(skipped)
    }

    /// The watermark a rule currently uses (for metrics and tests).
    pub fn watermark(&self, rule_id: &str) -> Option<i64> {
        let rule = self.rules.iter().find(|r| r.spec.id == rule_id)?;
        self.clock
            .stream_time()
            .filter(|t| *t > i64::MIN)
            .map(|t| t - rule.lateness_ms)
    }
}

/// Rebuilds restored rules' open panes, the rules split between two
/// threads (each rule's panes are its own; no shared state).
fn rebuild_panes(
    rules: &mut [RuleRuntime],
    mut work: Vec<(usize, crate::window::panes::PanesToRebuild)>,
) -> Result<(), EngineError> {
    work.sort_by_key(|(at, _)| *at);
    let mut jobs: Vec<(&mut WindowOperator, crate::window::panes::PanesToRebuild)> = Vec::new();
    let mut work = work.into_iter().peekable();
    for (at, rule) in rules.iter_mut().enumerate() {
        if work.peek().is_some_and(|(w, _)| *w == at) {
            let (_, panes) = work.next().expect("peeked");
            if let Operator::Window(w) = &mut rule.operator {
                jobs.push((w, panes));
            }
        }
    }
    // Alternate, so neither thread gets all the heavy (HOP) rules.
    let mut second = Vec::new();
    let mut first = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        if i % 2 == 0 {
            first.push(job);
        } else {
            second.push(job);
        }
    }
    let run = |jobs: Vec<(&mut WindowOperator, crate::window::panes::PanesToRebuild)>| {
        jobs.into_iter()
            .try_for_each(|(w, panes)| w.restore_panes(panes))
    };
    std::thread::scope(|scope| {
        let other = scope.spawn(|| run(second));
        let mine = run(first);
        let other = other
            .join()
            .unwrap_or_else(|_| Err(EngineError::Restore("rebuilding panes panicked".into())));
        mine.and(other)
    })
}

/// The signal-loss form: a SESSION rule without HAVING, whose every
/// closed session is an alert ("nothing since …"). Its fired alerts are
/// cleared when readings return (see [`crate::window::clears`]).
fn signal_loss(rule: &CompiledRule) -> bool {
    matches!(
        rule.window(),
        Some(crate::compile::WindowSpec::Session { .. })
    ) && !rule
        .output_ops
        .iter()
        .any(|op| matches!(op, crate::compile::RowOp::Filter(_)))
}

fn eval_err(rule: &RuleSpec) -> impl Fn(datafusion::error::DataFusionError) -> EngineError + '_ {
    move |source| EngineError::Evaluation {
        rule: format!("{} v{}", rule.id, rule.version),
        source,
    }
}

/// One batch as a rule sees it.
struct RowsIn<'a> {
    batch: &'a RecordBatch,
    /// Event time of each row, in milliseconds.
    ts: &'a [i64],
    /// Patient index of each row.
    patients: &'a [u32],
    index: &'a PatientIndex,
    /// Rows that repeat an earlier event, for rules that leave them out.
    duplicates: Option<&'a [bool]>,
}

/// When something happened, for a suspension's record.
#[derive(Debug, Clone, Copy)]
struct Moment {
    /// Event time reached (`None` before any event).
    event_ms: Option<i64>,
    processing_ms: i64,
}

impl RuleRuntime {
    /// Records the outcome of one step of this rule: a budget it went over
    /// suspends it, an error is reported, and the other rules are
    /// unaffected either way.
    fn settle(&mut self, result: Result<(), EngineError>, out: &mut EngineOutput) {
        match result {
            Ok(()) => {}
            Err(EngineError::OverBudget(suspension)) => {
                self.suspend_in_place();
                self.stats.suspension = Some((*suspension).clone());
                out.suspended.push(RuleSuspended {
                    rule_id: self.spec.id.clone(),
                    suspension: *suspension,
                });
            }
            Err(error) => out.errors.push(RuleFailure {
                rule_id: self.spec.id.clone(),
                error,
            }),
        }
    }

    /// Drops every piece of state and stops evaluating the rule.
    fn suspend_in_place(&mut self) {
        self.operator = Operator::Suspended;
        self.alerting.forget();
        self.fired_early = Default::default();
        self.meter = Meter::default();
        self.stats.open_panes = 0;
    }

    fn over_budget(
        reason: SuspensionReason,
        budget: u64,
        observed: u64,
        at: Moment,
    ) -> EngineError {
        EngineError::OverBudget(Box::new(Suspension::new(
            reason,
            budget,
            observed,
            at.event_ms,
            at.processing_ms,
        )))
    }

    /// The latest patient stamp (see [`PatientIndex::note_seen`]) of which
    /// this rule may hold nothing any more: its watermark less its reach.
    fn released_through(&self) -> i64 {
        match &self.operator {
            Operator::PerEvent | Operator::Suspended => i64::MAX,
            Operator::Window(op) => op.fired_through().saturating_sub(op.reach_ms()),
        }
    }

    /// The session operator, if this rule clears signal loss.
    fn sessions(&mut self) -> Option<&mut crate::window::session::SessionOperator> {
        match &mut self.operator {
            Operator::Window(op) => op.clearing_sessions(),
            Operator::PerEvent | Operator::Suspended => None,
        }
    }

    /// Emits the clear of a signal-loss alert whose key's readings
    /// returned at `returned_ms`. Not through cooldown (a return is news
    /// however soon it comes) nor the alert budget (at most one per alert
    /// that was counted).
    fn clear(
        &mut self,
        pending: crate::window::clears::Pending,
        returned_ms: i64,
        at: Moment,
        out: &mut EngineOutput,
    ) {
        let spec = Arc::clone(&self.spec);
        let alert = self.alerting.clear(
            &spec,
            &mut self.stats,
            pending,
            returned_ms,
            at.processing_ms,
        );
        out.alerts.push(alert);
    }

    /// Bytes of state this rule holds: its window operator's, plus an
    /// estimate for its cooldown and EMIT EARLY entries.
    fn state_bytes(&self) -> usize {
        let window = match &self.operator {
            Operator::Window(w) => w.state_bytes(),
            Operator::PerEvent | Operator::Suspended => 0,
        };
        window + (self.alerting.last_fired.len() + self.fired_early.len()) * BOOKKEEPING_ENTRY_BYTES
    }

    /// Hands an alert out, within the alert budget: the fired alert that
    /// would go over is not emitted and suspends the rule instead.
    fn emit(
        &mut self,
        alert: Alert,
        alert_time_ms: i64,
        at: Moment,
        budgets: &RuleBudgets,
        out: &mut EngineOutput,
    ) -> Result<(), EngineError> {
        if alert.status == AlertStatus::Fired {
            let budget = budgets.max_alerts_per_minute;
            if let Err(observed) = self.meter.count_alert(alert_time_ms, budget) {
                self.stats.alerts_fired -= 1;
                let at = Moment {
                    event_ms: Some(alert_time_ms),
                    ..at
                };
                return Err(Self::over_budget(
                    SuspensionReason::AlertsPerMinute,
                    budget,
                    observed,
                    at,
                ));
            }
        }
        out.alerts.push(alert);
        Ok(())
    }

    fn process(
        &mut self,
        rows: RowsIn<'_>,
        prior_max: i64,
        at: Moment,
        budgets: &RuleBudgets,
        out: &mut EngineOutput,
    ) -> Result<(), EngineError> {
        let processing_time_ms = at.processing_ms;
        let RowsIn {
            batch,
            ts,
            patients,
            index,
            duplicates,
        } = rows;
        let duplicate = |i: usize| duplicates.is_some_and(|d| d[i]);
        let spec = Arc::clone(&self.spec);
        match &mut self.operator {
            Operator::Suspended => {}
            Operator::PerEvent => {
                let evaluated =
                    apply_ops(&spec.compiled.input_ops, batch).map_err(eval_err(&spec))?;
                // A string column: `Engine::process` checked it.
                let hospitals = batch.column(idx::HOSPITAL_ID).as_string::<i32>();
                for (row, &base) in evaluated.base_rows.values().iter().enumerate() {
                    let base = base as usize;
                    if duplicate(base) {
                        continue;
                    }
                    self.stats.events_matched += 1;
                    let event_ms = ts[base];
                    let (key, values) = split_row(&spec.compiled, &evaluated.output, row);
                    let seq = cell(batch.column(idx::SEQUENCE_NUMBER).as_ref(), base);
                    let patient = cell(batch.column(idx::PATIENT_ID).as_ref(), base);
                    let discriminator = format!("e={event_ms};p={patient};s={seq}");
                    let seq_col = batch
                        .column(idx::SEQUENCE_NUMBER)
                        .as_primitive::<arrow::datatypes::UInt32Type>();
                    let seq = if seq_col.is_valid(base) {
                        seq_col.value(base)
                    } else {
                        crate::window::NO_SEQ
                    };
                    let stats = GroupStats::one(event_ms, seq);
                    let hospital_id = hospitals
                        .is_valid(base)
                        .then(|| hospitals.value(base).to_string());
                    let row = Candidate {
                        key,
                        values,
                        window: None,
                        event_time_ms: event_ms,
                        alert_time_ms: event_ms,
                        discriminator: &discriminator,
                        stats,
                        processing_time_ms,
                        hospital_id,
                    };
                    let alert = self.alerting.make(&spec, &mut self.stats, row);
                    self.emit(alert, event_ms, at, budgets, out)?;
                }
            }
            Operator::Window(op) => {
                // Duplicates out, WHERE, then lateness per event in
                // partition order.
                let mut keep: Vec<bool> = match duplicates {
                    Some(d) => d.iter().map(|dup| !dup).collect(),
                    None => vec![true; batch.num_rows()],
                };
                for step in &spec.compiled.input_ops {
                    if let crate::compile::RowOp::Filter(pred) = step {
                        let mask = predicate_mask(pred, batch).map_err(eval_err(&spec))?;
                        for (k, m) in keep.iter_mut().zip(mask.values().iter()) {
                            *k &= m;
                        }
                    }
                }
                let mut running = prior_max;
                let fired = op.fired_through();
                let mut late = 0u64;
                // Late rows and the threshold each was judged against.
                let mut late_rows: Vec<(u32, i64)> = Vec::new();
                for (i, &t) in ts.iter().enumerate() {
                    if duplicate(i) {
                        // The same event again does not move time.
                        continue;
                    }
                    let threshold = running.saturating_sub(self.lateness_ms).max(fired);
                    if keep[i] && op.late_bound(t) <= threshold {
                        keep[i] = false;
                        late += 1;
                        late_rows.push((i as u32, threshold));
                    }
                    running = running.max(t);
                }
                self.stats.late_events += late;
                out.late_events += late;
                if !late_rows.is_empty() {
                    // Held for closed windows that may alert late.
                    op.hold_late(batch, ts, &late_rows, patients)
                        .map_err(eval_err(&spec))?;
                }
                let kept = keep.iter().filter(|k| **k).count();
                self.stats.events_matched += kept as u64;
                if kept == 0 {
                    return Ok(());
                }
                let keep = (kept < batch.num_rows()).then_some(keep.as_slice());
                op.insert(batch, ts, keep, patients)
                    .map_err(eval_err(&spec))?;
                let mut open = Vec::new();
                if spec.compiled.emit_early {
                    op.peek_touched(&mut open, index).map_err(eval_err(&spec))?;
                }
                if self.meter.state_check_due(kept) {
                    let budget = budgets.max_state_bytes;
                    let held = self.state_bytes() as u64;
                    if held > budget {
                        return Err(Self::over_budget(
                            SuspensionReason::StateBytes,
                            budget,
                            held,
                            at,
                        ));
                    }
                }
                if spec.compiled.emit_early {
                    self.emit_windows(open, true, at, budgets, index, out)?;
                }
            }
        }
        Ok(())
    }

    fn fire(
        &mut self,
        watermark: i64,
        at: Moment,
        budgets: &RuleBudgets,
        index: &PatientIndex,
        out: &mut EngineOutput,
    ) -> Result<(), EngineError> {
        let spec = Arc::clone(&self.spec);
        let Operator::Window(op) = &mut self.operator else {
            self.alerting.prune(spec.cooldown_ms, watermark);
            return Ok(());
        };
        let mut closed: Vec<ClosedWindow> = Vec::new();
        op.fire(watermark, &mut closed, index)
            .map_err(eval_err(&spec))?;
        self.emit_windows(closed, false, at, budgets, index, out)?;
        // Returns the watermark has reached whose session is still open
        // (a closing one cleared its key's alert above, in emit_windows).
        if let Operator::Window(op) = &mut self.operator {
            if let Some(sessions) = op.clearing_sessions() {
                for pending in sessions.due_clears(watermark) {
                    let returned = pending.returned_ms.unwrap_or(watermark);
                    self.clear(pending, returned, at, out);
                }
            }
        }
        // After the windows up to `watermark` have alerted: later alerts
        // are for windows ending after it, or late ones within the horizon.
        self.alerting.prune(spec.cooldown_ms, watermark);
        Ok(())
    }

    /// Turns window results into alerts. `early`: the windows are still
    /// open; each (window, key) alerts at most once either way. Each
    /// result row is work: the panes merged into it.
    fn emit_windows(
        &mut self,
        windows: Vec<ClosedWindow>,
        early: bool,
        at: Moment,
        budgets: &RuleBudgets,
        index: &PatientIndex,
        out: &mut EngineOutput,
    ) -> Result<(), EngineError> {
        let spec = Arc::clone(&self.spec);
        let processing_time_ms = at.processing_ms;
        for window in windows {
            let units = (window.rows.num_rows() as u64).saturating_mul(self.panes_per_window);
            let budget = budgets.max_work_per_batch;
            if let Err(observed) = self.meter.add_work(units, budget) {
                return Err(Self::over_budget(
                    SuspensionReason::WorkPerBatch,
                    budget,
                    observed,
                    at,
                ));
            }
            let evaluated =
                apply_ops(&spec.compiled.output_ops, &window.rows).map_err(eval_err(&spec))?;
            for (row, &base) in evaluated.base_rows.values().iter().enumerate() {
                let stats = window.stats[base as usize];
                let (key, values) = split_row(&spec.compiled, &evaluated.output, row);
                if spec.compiled.emit_early {
                    let marker = (window.start_ms, Value::Object(key.clone()).to_string());
                    let already = if early {
                        !self.fired_early.insert(marker)
                    } else {
                        self.fired_early.remove(&marker)
                    };
                    if already {
                        continue;
                    }
                }
                // A late alert's id differs from the on-time one's; the
                // event count tells successive late alerts apart.
                let discriminator = if window.late {
                    format!("w={};late;n={}", window.start_ms, stats.count)
                } else {
                    format!("w={}", window.start_ms)
                };
                let hospital_id = self.hospital.for_window_row(
                    &window.rows,
                    base as usize,
                    stats.last_event_ms,
                    index,
                );
                let row = Candidate {
                    key,
                    values,
                    window: Some((window.start_ms, window.end_ms)),
                    event_time_ms: stats.last_event_ms,
                    alert_time_ms: window.end_ms,
                    discriminator: &discriminator,
                    stats,
                    processing_time_ms,
                    hospital_id,
                };
                // Signal loss: this session is the return of the key's last
                // silence that alerted (clear it first), and its own alert
                // waits for the next return if it fires.
                let clearing = window
                    .session_key
                    .as_ref()
                    .and_then(|key| self.sessions()?.take_pending(key));
                if let Some(pending) = clearing {
                    self.clear(pending, window.start_ms, at, out);
                }
                let mut alert = self.alerting.make(&spec, &mut self.stats, row);
                alert.explanation.late = window.late;
                if let (Some(key), AlertStatus::Fired) = (&window.session_key, alert.status) {
                    let pending = crate::window::clears::Pending {
                        alert_id: alert.id.clone(),
                        key: alert.key.clone(),
                        values: alert.values.clone(),
                        hospital_id: alert.hospital_id.clone(),
                        silent_from_ms: window.end_ms,
                        returned_ms: None,
                    };
                    if let Some(sessions) = self.sessions() {
                        sessions.hold_pending(key.clone(), pending);
                    }
                }
                self.emit(alert, window.end_ms, at, budgets, out)?;
            }
            if !early && spec.compiled.emit_early {
                // Keys that fired early but fail HAVING at close leave
                // markers behind; drop them with the window.
                self.fired_early
                    .retain(|(start, _)| *start != window.start_ms);
            }
        }
        Ok(())
    }
}

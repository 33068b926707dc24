//! Run-time budgets of one rule, and the suspension of a rule over one.
//!
//! Submit-time limits ([`crate::RuleLimits`]) refuse what can never run
//! safely; these catch a rule that is allowed but turns out to cost too much
//! on the stream it meets: window state that keeps growing (a key per event,
//! a day-long window), work far beyond reading its input (EMIT EARLY over a
//! HOP of many panes re-merges every pane of every touched window on each
//! batch), or an alert storm (a HOP with cooldown 0 alerts once per window
//! an event is in).
//!
//! The engine has no clock, so every budget counts something deterministic:
//! bytes, units of work, alerts per minute of *event* time. A rule over one
//! is suspended: its state is dropped, it is no longer evaluated, and its
//! [`RuleStats`](crate::RuleStats) say why and when. Every other rule keeps
//! running. Only a new version of the rule (an upsert) clears a suspension.

use std::collections::BTreeMap;

/// Per-rule run-time budgets (engine-wide settings; `[limits]` in the
/// server's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleBudgets {
    /// Bytes of state a rule's window operator may hold (open panes, sealed
    /// pane states, buffered session rows), plus its cooldown and EMIT
    /// EARLY bookkeeping. Checked every [`STATE_CHECK_ROWS`] rows the rule
    /// aggregates.
    pub max_state_bytes: u64,
    /// Units of work one engine call (one batch, tick or watermark) may
    /// cost a rule beyond reading its input: each window result row it
    /// evaluates counts the panes merged into it (1 for TUMBLE and
    /// SESSION, size/gcd(size, slide) for HOP). Measured as windows are
    /// emitted; the work already done cannot be undone, but the rule does
    /// not get to do it again.
    pub max_work_per_batch: u64,
    /// Alerts a rule may fire (not counting suppressed ones) within one
    /// minute of event time (alert time: the window end, or the event's
    /// time for a per-event rule). The alert that would go over is not
    /// emitted, so the cut does not depend on how the stream was batched.
    pub max_alerts_per_minute: u64,
}

impl Default for RuleBudgets {
    fn default() -> Self {
        Self {
            max_state_bytes: 256 * 1024 * 1024,
            // A few seconds of merging on one core: past it, one rule is
            // holding up every other (and /healthz would soon say stalled).
            max_work_per_batch: 1_000_000_000,
            // Per rule, all patients together: a ward-wide event with
            // per-patient cooldowns stays far below it; a rule paging
            // this often is broken, and would flood pagers and the topic.
            max_alerts_per_minute: 100_000,
        }
    }
}

/// The state budget is checked after this many aggregated rows (and on any
/// batch at least this large): computing a rule's state size walks its
/// panes or sessions, too much to do for every small batch.
pub const STATE_CHECK_ROWS: usize = 1024;

/// Minutes of alert counts a rule keeps (alerts older than these are no
/// longer counted; windows fire in order, so this only matters across
/// partitions far apart in event time).
const MINUTES_KEPT: usize = 8;

/// Which budget a rule went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspensionReason {
    StateBytes,
    WorkPerBatch,
    AlertsPerMinute,
}

impl SuspensionReason {
    /// The server setting (`[limits]`) behind the budget.
    pub fn setting(self) -> &'static str {
        match self {
            SuspensionReason::StateBytes => "max_rule_state_bytes",
            SuspensionReason::WorkPerBatch => "max_rule_work_per_batch",
            SuspensionReason::AlertsPerMinute => "max_alerts_per_rule_minute",
        }
    }

    fn what(self) -> &'static str {
        match self {
            SuspensionReason::StateBytes => "bytes of window state",
            SuspensionReason::WorkPerBatch => "units of window work in one batch",
            SuspensionReason::AlertsPerMinute => "alerts fired within one minute of event time",
        }
    }
}

/// Why and when a rule was suspended: part of its stats, so the API, the
/// UI and a restored snapshot all see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suspension {
    pub reason: SuspensionReason,
    /// The budget, in the unit of `reason`.
    pub budget: u64,
    /// What the rule reached when it was stopped (at least `budget + 1`).
    pub observed: u64,
    /// For people: what happened, the setting, and what clears it.
    pub message: String,
    /// Event time the rule had reached (the alert's time for an alert
    /// storm); `None` when no event had arrived.
    pub at_event_ms: Option<i64>,
    /// Processing time of the engine call that suspended it.
    pub at_processing_ms: i64,
}

impl Suspension {
    pub fn new(
        reason: SuspensionReason,
        budget: u64,
        observed: u64,
        at_event_ms: Option<i64>,
        at_processing_ms: i64,
    ) -> Self {
        let message = format!(
            "suspended for going over its budget of {budget} {} (it reached {observed}; [limits] {}): \
             its state was dropped and it does not run again until a new version of the rule is saved",
            reason.what(),
            reason.setting(),
        );
        Self {
            reason,
            budget,
            observed,
            message,
            at_event_ms,
            at_processing_ms,
        }
    }
}

impl std::fmt::Display for Suspension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One rule's running counts against its budgets.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Work in the current engine call.
    pub work: u64,
    /// Rows aggregated since the state was last measured.
    pub rows_since_state_check: usize,
    /// Fired alerts per minute of event time (minute index → count).
    alerts_by_minute: BTreeMap<i64, u64>,
}

impl Meter {
    /// Counts `units` of work; `Err(observed)` once over `budget`.
    pub fn add_work(&mut self, units: u64, budget: u64) -> Result<(), u64> {
        self.work = self.work.saturating_add(units);
        if self.work > budget {
            Err(self.work)
        } else {
            Ok(())
        }
    }

    /// Whether `rows` more aggregated rows call for measuring the state.
    pub fn state_check_due(&mut self, rows: usize) -> bool {
        self.rows_since_state_check += rows;
        if self.rows_since_state_check >= STATE_CHECK_ROWS {
            self.rows_since_state_check = 0;
            true
        } else {
            false
        }
    }

    /// Counts a fired alert at `alert_time_ms`; `Err(observed)` when it
    /// would make its minute go over `budget` (it is then not counted).
    pub fn count_alert(&mut self, alert_time_ms: i64, budget: u64) -> Result<(), u64> {
        let minute = alert_time_ms.div_euclid(60_000);
        let count = self.alerts_by_minute.entry(minute).or_insert(0);
        if *count >= budget {
            return Err(*count + 1);
        }
        *count += 1;
        while self.alerts_by_minute.len() > MINUTES_KEPT {
            self.alerts_by_minute.pop_first();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_counted_per_minute_of_event_time_and_the_one_over_is_refused() {
        let mut m = Meter::default();
        for i in 0..3 {
            m.count_alert(60_000 + i * 1_000, 3).unwrap();
        }
        // The fourth in the same minute goes over; the next minute is fresh.
        assert_eq!(m.count_alert(119_999, 3), Err(4));
        m.count_alert(120_000, 3).unwrap();
        // Negative times (before 1970) fall in their own minute too.
        m.count_alert(-1, 3).unwrap();
    }

    #[test]
    fn only_the_latest_minutes_are_kept() {
        let mut m = Meter::default();
        for minute in 0..100 {
            m.count_alert(minute * 60_000, 1).unwrap();
        }
        assert_eq!(m.alerts_by_minute.len(), MINUTES_KEPT);
    }

    #[test]
    fn work_is_summed_over_a_call_and_state_is_measured_every_so_many_rows() {
        let mut m = Meter::default();
        m.add_work(600, 1_000).unwrap();
        assert_eq!(m.add_work(600, 1_000), Err(1_200));
        assert!(!m.state_check_due(STATE_CHECK_ROWS - 1));
        assert!(m.state_check_due(1));
        assert!(m.state_check_due(STATE_CHECK_ROWS * 4));
    }

    #[test]
    fn the_message_names_the_setting_and_what_clears_it() {
        let s = Suspension::new(SuspensionReason::AlertsPerMinute, 10, 11, Some(5), 6);
        assert!(s.message.contains("max_alerts_per_rule_minute"), "{s}");
        assert!(s.message.contains("new version"), "{s}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["reason"], "alerts_per_minute");
    }
}

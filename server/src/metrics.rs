//! Prometheus metrics in text exposition format.
//!
//! A handful of counters and one latency histogram, updated with relaxed
//! atomics on the hot path (once per batch, never per event).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the batch-latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct Metrics {
    pub events_in: AtomicU64,
    pub events_rejected: AtomicU64,
    /// Of those, refused for being dated too far ahead of the server clock…
    pub events_rejected_future: AtomicU64,
    /// …or older than the archive's retention.
    pub events_rejected_too_old: AtomicU64,
    pub events_late: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub batches: AtomicU64,
    pub alerts_fired: AtomicU64,
    pub alerts_suppressed: AtomicU64,
    pub alerts_delivered_kafka: AtomicU64,
    pub alert_delivery_errors: AtomicU64,
    pub dead_letters_delivered: AtomicU64,
    pub dead_letter_errors: AtomicU64,
    /// Rule evaluations that failed at run time.
    pub rule_errors: AtomicU64,
    /// Rules suspended for going over a run-time budget.
    pub rules_suspended: AtomicU64,
    /// Checkpoints written, and attempts that failed.
    pub checkpoints: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    /// Size and duration of the latest checkpoint; when it was taken.
    pub checkpoint_bytes: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    /// Patients the engine's interner holds, and has forgotten since start.
    pub patients_held: AtomicU64,
    /// Active rules that no live instance runs (several instances: a rule
    /// not grouped by patient while no `global_rules` instance is live).
    pub rules_unplaced: AtomicU64,
    pub patients_forgotten: AtomicU64,
    /// The wait before the next checkpoint (the interval, or longer to
    /// keep checkpoints within their share of the time).
    pub checkpoint_wait_micros: AtomicU64,
    pub checkpoint_at_ms: AtomicU64,
    /// Time the start-up restore took (0: nothing restored).
    pub restore_micros: AtomicU64,
    /// Alerts made again after a restore that were already delivered
    /// before the crash, so not delivered again.
    pub alerts_resuppressed: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// Counts refused events, by reason (once per group of dead letters).
    pub fn count_rejected<'a>(&self, reasons: impl Iterator<Item = &'a str>) {
        let (mut all, mut future, mut too_old) = (0, 0, 0);
        for reason in reasons {
            all += 1;
            if reason.starts_with(crate::source::decode::FUTURE) {
                future += 1;
            } else if reason.starts_with(crate::source::decode::OLDER_THAN_RETENTION) {
                too_old += 1;
            }
        }
        self.events_rejected.fetch_add(all, Relaxed);
        self.events_rejected_future.fetch_add(future, Relaxed);
        self.events_rejected_too_old.fetch_add(too_old, Relaxed);
    }

    /// Records the time the engine took for one batch.
    pub fn observe_batch(&self, seconds: f64) {
        self.batches.fetch_add(1, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add((seconds * 1e6) as u64, Relaxed);
        for (bound, bucket) in BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, &AtomicU64); 16] = [
            ("wardwatch_events_duplicate_total", "Duplicate events dropped before rules (same patient, device and sequence number or timestamp).", &self.events_duplicate),
            ("wardwatch_events_in_total", "Events accepted into the pipeline.", &self.events_in),
            ("wardwatch_events_rejected_total", "Events refused (malformed or impossible values) and dead-lettered.", &self.events_rejected),
            ("wardwatch_events_late_total", "Events past the allowed lateness for some windowed rule (archived, not aggregated).", &self.events_late),
            ("wardwatch_batches_total", "Micro-batches processed by the engine.", &self.batches),
            ("wardwatch_alerts_fired_total", "Alerts fired.", &self.alerts_fired),
            ("wardwatch_alerts_suppressed_total", "Alerts suppressed by cooldown (recorded, not delivered).", &self.alerts_suppressed),
            ("wardwatch_alerts_delivered_kafka_total", "Alerts acknowledged by Kafka.", &self.alerts_delivered_kafka),
            ("wardwatch_alert_delivery_errors_total", "Alerts Kafka failed to accept.", &self.alert_delivery_errors),
            ("wardwatch_dead_letters_total", "Events written to the dead-letter topic or table.", &self.dead_letters_delivered),
            ("wardwatch_dead_letter_errors_total", "Dead letters that could not be written.", &self.dead_letter_errors),
            ("wardwatch_rule_errors_total", "Rule evaluations that failed at run time (the rule keeps running; see GET /api/rules).", &self.rule_errors),
            ("wardwatch_checkpoints_total", "Checkpoints of engine state written (with the Kafka offsets they cover).", &self.checkpoints),
            ("wardwatch_checkpoint_failures_total", "Checkpoints that could not be taken or written (offsets then stay committed at the previous one).", &self.checkpoint_failures),
            ("wardwatch_alerts_resuppressed_total", "Alerts made again after a restore that had already been delivered before the crash, so not delivered again.", &self.alerts_resuppressed),
            ("wardwatch_rules_suspended_total", "Rules suspended for going over a run-time budget ([limits] max_rule_state_bytes, max_rule_work_per_batch, max_alerts_per_rule_minute); a new version of the rule clears it.", &self.rules_suspended),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let name = "wardwatch_events_rejected_by_reason_total";
        let _ = writeln!(
            out,
            "# HELP {name} Events refused for their event time, by reason (a part of wardwatch_events_rejected_total).\n# TYPE {name} counter"
        );
        for (reason, value) in [
            ("timestamp_in_the_future", &self.events_rejected_future),
            (
                "timestamp_older_than_retention",
                &self.events_rejected_too_old,
            ),
        ] {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", value.load(Relaxed));
        }
        // Process-wide, kept by the catalog's readers (catalog::damage).
        let name = "wardwatch_damaged_files_total";
        let _ = writeln!(
            out,
            "# HELP {name} Damaged stored files (rule files, log segments, archive Parquet) skipped or recovered from.\n# TYPE {name} counter\n{name} {}",
            catalog::damaged_files()
        );
        for (name, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "wardwatch_batch_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Engine time per micro-batch.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.latency_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_batch(0.002);
        m.observe_batch(0.2);
        let text = m.render(&[]);
        assert!(
            text.contains("wardwatch_batch_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wardwatch_batch_seconds_bucket{le=\"0.25\"} 2"),
            "{text}"
        );
        assert!(text.contains("wardwatch_batch_seconds_count 2"), "{text}");
    }

    #[test]
    fn refusals_by_event_time_are_counted_by_reason() {
        let m = Metrics::default();
        m.count_rejected(
            [
                "timestamp in the future: timestamp_unix_ms 32503593600000 …",
                "timestamp older than retention: timestamp_unix_ms 1 …",
                "missing patient_id",
                "timestamp in the future: …",
            ]
            .into_iter(),
        );
        let text = m.render(&[]);
        assert!(text.contains("wardwatch_events_rejected_total 4"), "{text}");
        assert!(
            text.contains(
                "wardwatch_events_rejected_by_reason_total{reason=\"timestamp_in_the_future\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "wardwatch_events_rejected_by_reason_total{reason=\"timestamp_older_than_retention\"} 1"
            ),
            "{text}"
        );
    }
}

//! Background replays: a replay started on a task of its own, followed by
//! its [`Progress`] and cancelled through it, its outcome kept for whoever
//! asks by job id.
//!
//! What runs is the caller's (usually [`super::run`]); this module only
//! keeps the jobs and tells their state.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Progress, ReplayError, ReplayReport};

/// A background replay.
#[derive(Debug)]
pub struct ReplayJob {
    /// Who started it (the caller's subject): only they, or an admin, may
    /// read or cancel it.
    pub owner: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub started_at_ms: i64,
    pub progress: Progress,
    /// `None` while running.
    outcome: Mutex<Option<Result<ReplayReport, ReplayError>>>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    /// Asked to stop, not stopped yet.
    Cancelling,
    Done,
    Cancelled,
    Failed,
}

/// A job as `GET /api/replay/{job}` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobView {
    pub job: String,
    pub state: JobState,
    /// Events handed to the engine so far.
    pub events: u64,
    /// Event time reached so far.
    pub event_time_ms: i64,
    /// Share of the range's event time covered, 0 to 1 (1 once done).
    pub fraction: f64,
    pub started_at_ms: i64,
    /// The report once done, else null.
    pub result: Option<ReplayReport>,
    /// Why it failed or stopped, else null.
    pub error: Option<String>,
}

impl ReplayJob {
    /// The job's state now.
    pub fn view(&self, id: &str) -> JobView {
        let events = self.progress.events.load(Relaxed);
        let reached = self.progress.event_time_ms.load(Relaxed);
        let cancelled = self.progress.cancelled.load(Relaxed);
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        let fraction = ((reached - self.from_ms).max(0) as f64 / span).min(1.0);
        let outcome = self.outcome.lock().expect("replay job lock");
        let (state, result, error) = match &*outcome {
            None if cancelled => (JobState::Cancelling, None, None),
            None => (JobState::Running, None, None),
            // The report is copied: the view outlives the lock.
            Some(Ok(report)) => (JobState::Done, Some(report.clone()), None),
            Some(Err(e)) if cancelled => (JobState::Cancelled, None, Some(e.to_string())),
            Some(Err(e)) => (JobState::Failed, None, Some(e.to_string())),
        };
        JobView {
            job: id.to_string(),
            state,
            events,
            event_time_ms: reached,
            fraction: if state == JobState::Done {
                1.0
            } else {
                fraction
            },
            started_at_ms: self.started_at_ms,
            result,
            error,
        }
    }

    /// Asks the replay to stop at its next batch.
    pub fn cancel(&self) {
        self.progress.cancelled.store(true, Relaxed);
    }
}

/// The replays of this process: a bounded pool of running ones (each
/// holds the engine and an hour of events in memory), and background jobs
/// by id, of which only the newest finished ones are kept.
#[derive(Debug)]
pub struct ReplayJobs {
    jobs: Mutex<HashMap<String, Arc<ReplayJob>>>,
    slots: Arc<Semaphore>,
    max_running: usize,
    keep_finished: usize,
}

impl Default for ReplayJobs {
    fn default() -> Self {
        Self::new(2, 16)
    }
}

/// Every replay slot is taken.
#[derive(Debug, thiserror::Error)]
#[error("{0} replays are already running, the limit (max_concurrent_replays); retry when one has finished")]
pub struct ReplaysBusy(pub usize);

impl ReplayJobs {
    pub fn new(max_running: usize, keep_finished: usize) -> Self {
        let max_running = max_running.max(1);
        Self {
            jobs: Mutex::default(),
            slots: Arc::new(Semaphore::new(max_running)),
            max_running,
            keep_finished,
        }
    }

    /// A running slot, held for as long as a replay runs (foreground or
    /// background); refused at once when all are taken.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, ReplaysBusy> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| ReplaysBusy(self.max_running))
    }

    /// Forgets the oldest finished jobs past `keep_finished`.
    fn evict(&self, jobs: &mut HashMap<String, Arc<ReplayJob>>) {
        let mut finished: Vec<(i64, String)> = jobs
            .iter()
            .filter(|(_, j)| j.outcome.lock().expect("replay job lock").is_some())
            .map(|(id, j)| (j.started_at_ms, id.clone()))
            .collect();
        if finished.len() <= self.keep_finished {
            return;
        }
        finished.sort();
        let excess = finished.len() - self.keep_finished;
        for (_, id) in finished.into_iter().take(excess) {
            jobs.remove(&id);
        }
    }

    /// Starts a job over `[from_ms, to_ms)` on a task of its own: `replay`
    /// gets the job (to report progress into it) and its outcome is kept.
    /// Returns the new job's id and the job.
    pub fn start<F, Fut>(
        &self,
        slot: OwnedSemaphorePermit,
        owner: &str,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        replay: F,
    ) -> (String, Arc<ReplayJob>)
    where
        F: FnOnce(Arc<ReplayJob>) -> Fut,
        Fut: Future<Output = Result<ReplayReport, ReplayError>> + Send + 'static,
    {
        let id = format!("{:016x}", rand::random::<u64>());
        let job = Arc::new(ReplayJob {
            owner: owner.to_string(),
            from_ms,
            to_ms,
            started_at_ms: now_ms,
            progress: Progress::default(),
            outcome: Mutex::new(None),
        });
        {
            let mut jobs = self.jobs.lock().expect("replay jobs lock");
            self.evict(&mut jobs);
            jobs.insert(id.clone(), Arc::clone(&job));
        }
        let running = replay(Arc::clone(&job));
        let task_job = Arc::clone(&job);
        tokio::spawn(async move {
            let outcome = running.await;
            *task_job.outcome.lock().expect("replay job lock") = Some(outcome);
            drop(slot);
        });
        (id, job)
    }

    /// The job with this id, running or finished.
    pub fn get(&self, id: &str) -> Option<Arc<ReplayJob>> {
        self.jobs.lock().expect("replay jobs lock").get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ReplayReport {
        ReplayReport {
            rule_id: "r".into(),
            version: 1,
            from_ms: 0,
            to_ms: 1,
            events: 0,
            alerts: Vec::new(),
            audit: None,
        }
    }

    #[tokio::test]
    async fn running_replays_are_bounded_and_a_slot_returns_when_a_job_ends() {
        let jobs = ReplayJobs::new(1, 4);
        let slot = jobs.slot().expect("one slot");
        assert!(jobs.slot().is_err(), "the second replay must be refused");
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (id, job) = jobs.start(slot, "tester", 0, 1, 0, move |_| async move {
            let _ = gate_rx.await;
            Ok(report())
        });
        assert!(jobs.slot().is_err(), "held while the job runs");
        gate_tx.send(()).unwrap();
        for _ in 0..100 {
            if job.view(&id).state == JobState::Done {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(job.view(&id).state, JobState::Done);
        assert!(jobs.slot().is_ok(), "the slot came back");
    }

    #[tokio::test]
    async fn only_the_newest_finished_jobs_are_kept() {
        let jobs = ReplayJobs::new(1, 2);
        let mut ids = Vec::new();
        for started in 0..5 {
            let slot = jobs.slot().expect("free slot");
            let (id, job) = jobs.start(slot, "tester", 0, 1, started, |_| async { Ok(report()) });
            while job.view(&id).state != JobState::Done {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            ids.push(id);
        }
        // Eviction runs when a job starts: the newest (running or just
        // finished) plus at most 2 earlier finished ones remain.
        let kept: Vec<bool> = ids.iter().map(|id| jobs.get(id).is_some()).collect();
        assert_eq!(kept, [false, false, true, true, true]);
    }
}

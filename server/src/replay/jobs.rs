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

use super::{Progress, ReplayError, ReplayReport};

/// A background replay.
#[derive(Debug)]
pub struct ReplayJob {
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

/// The background replays of this process, by job id.
#[derive(Debug, Default)]
pub struct ReplayJobs {
    jobs: Mutex<HashMap<String, Arc<ReplayJob>>>,
}

impl ReplayJobs {
    /// Starts a job over `[from_ms, to_ms)` on a task of its own: `replay`
    /// gets the job (to report progress into it) and its outcome is kept.
    /// Returns the new job's id and the job.
    pub fn start<F, Fut>(
        &self,
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
            from_ms,
            to_ms,
            started_at_ms: now_ms,
            progress: Progress::default(),
            outcome: Mutex::new(None),
        });
        self.jobs
            .lock()
            .expect("replay jobs lock")
            .insert(id.clone(), Arc::clone(&job));
        let running = replay(Arc::clone(&job));
        let task_job = Arc::clone(&job);
        tokio::spawn(async move {
            let outcome = running.await;
            *task_job.outcome.lock().expect("replay job lock") = Some(outcome);
        });
        (id, job)
    }

    /// The job with this id, running or finished.
    pub fn get(&self, id: &str) -> Option<Arc<ReplayJob>> {
        self.jobs.lock().expect("replay jobs lock").get(id).cloned()
    }
}

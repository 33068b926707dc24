//! Explicit shutdown: one notice every task listens to, and a completion
//! barrier the server waits on (the shape of mini-redis's `server.rs`).
//!
//! [`Shutdown::trigger`] tells every holder of a [`ShutdownNotice`] to stop:
//! live feeds end, sources stop fetching, periodic tasks return. Tasks that
//! must finish work before the process exits hold a [`Completion`] token;
//! [`Shutdown::finished`] resolves once every token is dropped. The order in
//! which the pipeline drains (sources, engine, alert delivery, archive,
//! logs) is written out once, in `server::run_until`.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Owned by the server: triggers the notice and waits for completion.
pub struct Shutdown {
    notice: watch::Sender<bool>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

/// A cheap, cloneable view of the shutdown notice.
#[derive(Clone)]
pub struct ShutdownNotice {
    rx: watch::Receiver<bool>,
}

/// Held by a task that must finish before the process exits; dropping it
/// (when the task ends) tells the server.
#[derive(Clone)]
pub struct Completion {
    _tx: mpsc::Sender<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (notice, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            notice,
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    pub fn notice(&self) -> ShutdownNotice {
        ShutdownNotice {
            rx: self.notice.subscribe(),
        }
    }

    /// A token for a task the server must wait for.
    pub fn completion(&self) -> Completion {
        Completion {
            _tx: self
                .done_tx
                .clone()
                .expect("completion tokens are handed out before shutdown"),
        }
    }

    /// Tells every task to stop. Idempotent.
    pub fn trigger(&self) {
        self.notice.send_replace(true);
    }

    /// Waits until every [`Completion`] is dropped, for at most `limit`.
    /// Returns whether everything completed in time.
    pub async fn finished(&mut self, limit: Duration) -> bool {
        self.done_tx = None;
        tokio::time::timeout(limit, self.done_rx.recv())
            .await
            .is_ok()
    }
}

impl ShutdownNotice {
    /// A notice that never fires (tests and tools that run without a server).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `requested()` stays pending.
        std::mem::forget(tx);
        Self { rx }
    }

    /// Whether shutdown has been requested (for loops on plain threads).
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is requested.
    pub async fn requested(mut self) {
        // An error means the server (the sender) is gone: stop as well.
        let _ = self.rx.wait_for(|&stop| stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_hears_the_notice_and_the_server_waits_for_completion() {
        let mut shutdown = Shutdown::new();
        let notice = shutdown.notice();
        let token = shutdown.completion();
        let worker = tokio::spawn(async move {
            notice.requested().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(token);
        });
        assert!(!shutdown.notice().is_requested());
        shutdown.trigger();
        assert!(shutdown.notice().is_requested());
        assert!(shutdown.finished(Duration::from_secs(5)).await);
        worker.await.unwrap();
    }

    #[tokio::test]
    async fn a_task_that_never_finishes_is_reported() {
        let mut shutdown = Shutdown::new();
        let _stuck = shutdown.completion();
        shutdown.trigger();
        assert!(!shutdown.finished(Duration::from_millis(50)).await);
    }
}

//! Explicit shutdown: one notice every task listens to (the shape of
//! mini-redis's `server.rs`).
//!
//! [`Shutdown::trigger`] tells every holder of a [`ShutdownNotice`] to stop:
//! live feeds end, sources stop fetching, periodic tasks return. What the
//! server waits for, and in which order (HTTP and periodic tasks, sources,
//! engine, alert delivery, archive, logs), is written out once, in
//! `server::run_until`, as bounded joins on each stage's handle: that
//! sequence is the completion barrier.

use tokio::sync::watch;

/// Owned by the server: triggers the notice.
pub struct Shutdown {
    notice: watch::Sender<bool>,
}

/// A cheap, cloneable view of the shutdown notice.
#[derive(Clone)]
pub struct ShutdownNotice {
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (notice, _) = watch::channel(false);
        Self { notice }
    }

    pub fn notice(&self) -> ShutdownNotice {
        ShutdownNotice {
            rx: self.notice.subscribe(),
        }
    }

    /// Tells every task to stop. Idempotent.
    pub fn trigger(&self) {
        self.notice.send_replace(true);
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
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_listener_hears_the_notice() {
        let shutdown = Shutdown::new();
        let listeners: Vec<_> = (0..3)
            .map(|_| tokio::spawn(shutdown.notice().requested()))
            .collect();
        assert!(!shutdown.notice().is_requested());
        shutdown.trigger();
        assert!(shutdown.notice().is_requested());
        for listener in listeners {
            tokio::time::timeout(Duration::from_secs(5), listener)
                .await
                .expect("the notice reaches every listener")
                .unwrap();
        }
    }
}

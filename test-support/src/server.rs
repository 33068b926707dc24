//! A wardwatch server running inside the test or benchmark process:
//! `wardwatch::server::run_until` spawned on the current Tokio runtime, on a
//! free port of 127.0.0.1 and a temporary data directory, with a REST client
//! and a reader of its `/metrics`.
//!
//! One harness for both users: the end-to-end tests start a server and wait
//! for it ([`Server::start`], [`Server::start_in`] for a restart on the same
//! data directory); the benchmarks spawn one without waiting
//! ([`Server::spawn_in`]) and poll its metrics while it consumes.
//!
//! A server runs until [`Server::stop`] is called (or its runtime ends):
//! dropping the handle does not stop it. The `pipeline` benchmark relies on
//! that to keep a rules-only server alive beside the consuming one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use wardwatch::config::Config;

use crate::broker::free_port;

/// How often the harness polls the server.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// How long [`Server::start`] waits for `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Server::stop`] waits for a graceful stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A `wardwatch::server::run_until` task in the current Tokio runtime.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The data directory; it outlives the server as long as a clone of
    /// this handle is held (restart a server on it with [`Server::start_in`]).
    pub data_dir: Arc<TempDir>,
    /// A client for the server's REST API.
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<Result<()>>,
    stop: Arc<tokio::sync::Notify>,
}

impl Server {
    /// Starts `serve` with `config` (its listen address and data directory
    /// are filled in) on a fresh temporary directory, and waits until it
    /// answers `/healthz`.
    pub async fn start(config: Config) -> Result<Self> {
        let data_dir = tempfile::tempdir().context("creating a data directory")?;
        Self::start_in(config, Arc::new(data_dir)).await
    }

    /// Starts a server on an existing data directory (a restart) and waits
    /// until it answers `/healthz`.
    pub async fn start_in(config: Config, data_dir: Arc<TempDir>) -> Result<Self> {
        let mut server = Self::spawn_in(config, data_dir)?;
        server.wait_healthy(START_TIMEOUT).await?;
        Ok(server)
    }

    /// Spawns a server on `data_dir` without waiting for it to answer.
    pub fn spawn_in(mut config: Config, data_dir: Arc<TempDir>) -> Result<Self> {
        let port = free_port()?;
        config.listen = format!("127.0.0.1:{port}").parse()?;
        config.data_dir = data_dir.path().to_string_lossy().into_owned();
        // Tests of other things run without credentials (loopback only);
        // the security tests turn authentication on.
        config.auth.required.get_or_insert(false);
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(wardwatch::server::run_until(config, false, async move {
            stopped.notified().await;
        }));
        Ok(Self {
            base_url: format!("http://127.0.0.1:{port}"),
            data_dir,
            http: reqwest::Client::new(),
            task,
            stop,
        })
    }

    /// `base_url` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// GETs `path` and returns its JSON body; panics (failing the test)
    /// when the server does not answer with JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.http.get(self.url(path)).send().await;
        let response = response.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// POSTs newline-delimited events to `/api/ingest`, checks the `202`,
    /// and returns `{"accepted","rejected"}`.
    pub async fn ingest(&self, ndjson: String) -> serde_json::Value {
        let response = self
            .http
            .post(self.url("/api/ingest"))
            .header("content-type", "application/x-ndjson")
            .body(ndjson)
            .send();
        let response = response.await.expect("POST /api/ingest");
        assert_eq!(response.status(), 202, "POST /api/ingest");
        response.json().await.expect("POST /api/ingest: JSON")
    }

    /// Fails with the server's own error if it has stopped.
    pub async fn check_alive(&mut self) -> Result<()> {
        if self.task.is_finished() {
            return match (&mut self.task).await {
                Ok(Ok(())) => bail!("the wardwatch server stopped unexpectedly"),
                Ok(Err(e)) => Err(e.context("the wardwatch server failed")),
                Err(e) => bail!("the wardwatch server panicked: {e}"),
            };
        }
        Ok(())
    }

    /// Waits until `/healthz` answers 2xx, failing at once if the server
    /// stops meanwhile.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive().await?;
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the wardwatch server did not answer /healthz within {timeout:?}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The server's `/metrics` as name → value (labelled series keep their
    /// labels).
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(parse_metrics(&text))
    }

    /// Stops the server gracefully (it stops consuming, flushes its archive
    /// and logs) and waits for it, at most a minute.
    pub async fn stop(self) -> Result<()> {
        self.stop_within(STOP_TIMEOUT).await
    }

    /// [`Server::stop`], waiting at most `timeout`.
    pub async fn stop_within(self, timeout: Duration) -> Result<()> {
        let Self {
            http, task, stop, ..
        } = self;
        // Our idle keep-alive connections would hold the graceful shutdown
        // of the HTTP server back.
        drop(http);
        stop.notify_one();
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => bail!("the wardwatch server panicked: {e}"),
            Err(_) => bail!("the wardwatch server did not stop within {timeout:?}"),
        }
    }
}

/// `back` whole `unit`s before now, aligned to `unit` (ms): event times
/// that the server accepts (inside retention, not in the future) and that
/// start windows cleanly.
pub fn recent_ms(unit: i64, back: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64;
    (now / unit - back) * unit
}

/// Prometheus text as name → value; comments are skipped, labelled series
/// keep their labels in the name.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_parses_counters_and_gauges() {
        let text = "# HELP a x\n# TYPE a counter\nwardwatch_events_in_total 42\n\
                    wardwatch_active_rules 20\nwardwatch_batch_seconds_bucket{le=\"0.5\"} 3\n";
        let m = parse_metrics(text);
        assert_eq!(m["wardwatch_events_in_total"], 42.0);
        assert_eq!(m["wardwatch_active_rules"], 20.0);
        assert_eq!(m["wardwatch_batch_seconds_bucket{le=\"0.5\"}"], 3.0);
    }
}

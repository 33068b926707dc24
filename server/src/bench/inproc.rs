//! A `wardwatch` server running inside the benchmark process, for the
//! scenarios that go end to end through a broker (`pipeline`, `latency`):
//! starting it on a free port, creating rules over REST, reading its
//! `/metrics`, and stopping it.
//!
//! A server started here runs until [`InProcessServer::stop`] is called;
//! dropping the handle does not stop it (the `pipeline` scenario never stops
//! its servers, see there).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::broker::{free_port, Broker};
use crate::config::Config;

/// What an end-to-end scenario runs in: tansu on 127.0.0.1, a temporary
/// data directory for the server (it must outlive the runtime: the server's
/// flush tasks write there until they stop), and a multi-threaded runtime.
pub fn broker_and_runtime(
    name: &str,
) -> Result<(Broker, tempfile::TempDir, tokio::runtime::Runtime)> {
    let broker = Broker::start().with_context(|| {
        format!(
            "the {name} benchmark needs a Kafka-protocol broker (tansu) on 127.0.0.1 and it could not start"
        )
    })?;
    super::progress(name, format!("tansu broker on {}", broker.bootstrap));
    let data_dir = tempfile::tempdir().context("creating a data directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} benchmark's runtime"))?;
    Ok((broker, data_dir, runtime))
}

/// How often the helpers poll the server.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// A `wardwatch::server::run_until` task in the current Tokio runtime.
pub struct InProcessServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    handle: tokio::task::JoinHandle<Result<()>>,
    stop: Arc<tokio::sync::Notify>,
}

impl InProcessServer {
    /// Starts a server on a free port with `data_dir` as its data directory
    /// (does not wait for it to answer).
    pub async fn start(mut config: Config, data_dir: &std::path::Path) -> Result<Self> {
        let port = free_port()?;
        config.listen = format!("127.0.0.1:{port}").parse()?;
        config.data_dir = data_dir.to_string_lossy().into_owned();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::clone(&stop);
        let handle = tokio::spawn(crate::server::run_until(config, false, async move {
            stopped.notified().await;
        }));
        Ok(Self {
            base: format!("http://127.0.0.1:{port}"),
            handle,
            stop,
        })
    }

    /// Fails with the server's own error if it has stopped.
    pub async fn check_alive(&mut self) -> Result<()> {
        if self.handle.is_finished() {
            return match (&mut self.handle).await {
                Ok(Ok(())) => bail!("the wardwatch server stopped unexpectedly"),
                Ok(Err(e)) => Err(e.context("the wardwatch server failed")),
                Err(e) => bail!("the wardwatch server panicked: {e}"),
            };
        }
        Ok(())
    }

    /// Waits until `/healthz` answers 2xx.
    pub async fn wait_healthy(&mut self, http: &reqwest::Client, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive().await?;
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send().await {
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

    /// The server's `/metrics` as name → value.
    pub async fn metrics(&self, http: &reqwest::Client) -> Result<HashMap<String, f64>> {
        metrics(http, &self.base).await
    }

    /// Stops the server gracefully (it stops consuming, flushes its archive
    /// and logs) and waits for it, at most `timeout`.
    pub async fn stop(self, timeout: Duration) -> Result<()> {
        self.stop.notify_one();
        match tokio::time::timeout(timeout, self.handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => bail!("the wardwatch server panicked: {e}"),
            Err(_) => bail!("the wardwatch server did not stop within {timeout:?}"),
        }
    }
}

/// Starts a server without Kafka on `data_dir` and creates `rules` (REST
/// bodies for `POST /api/rules`) there, so a server started afterwards on
/// the same data directory has them loaded before it reads any event.
/// Returns the rules server, still running.
pub async fn create_rules(
    http: &reqwest::Client,
    data_dir: &std::path::Path,
    rules: &[Value],
) -> Result<InProcessServer> {
    let mut server = InProcessServer::start(Config::default(), data_dir).await?;
    server
        .wait_healthy(http, Duration::from_secs(60))
        .await
        .context("starting the rules server")?;
    for rule in rules {
        let name = rule["name"].as_str().unwrap_or("?");
        let r = http
            .post(format!("{}/api/rules", server.base))
            .json(rule)
            .send()
            .await
            .with_context(|| format!("creating rule `{name}` over REST"))?;
        if r.status() != reqwest::StatusCode::CREATED {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            bail!("creating rule `{name}` over REST: {status}: {body}");
        }
    }
    Ok(server)
}

/// The server configuration for consuming from `broker` in a fresh
/// consumer group; everything else is the default.
pub fn consuming_config(broker: &Broker) -> Result<Config> {
    let mut config = Config::default();
    config.kafka.brokers = Some(broker.bootstrap.clone());
    config.kafka.group_id = format!("wardwatch-bench-{}", free_port()?);
    // The simulated ward is dated 2024, older than the default retention:
    // the server would refuse it.
    config.archive.retention_days = 36_500;
    Ok(config)
}

/// A server's `/metrics` as name → value (labelled series keep their labels).
pub async fn metrics(http: &reqwest::Client, base: &str) -> Result<HashMap<String, f64>> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_metrics(&text))
}

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

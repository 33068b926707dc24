//! The setup shared by the scenarios that go end to end through a broker
//! (`pipeline`, `latency`): tansu, a data directory and a runtime for an
//! in-process server ([`wardwatch_test_support::Server`], the same harness
//! the end-to-end tests use), rules created over REST before the consuming
//! server starts, and that server's configuration.
//!
//! A server started here runs until it is stopped; dropping the handle does
//! not stop it (the `pipeline` scenario never stops its servers, see there).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;
use wardwatch::config::Config;
use wardwatch_test_support::{free_port, Broker, Server};

pub use wardwatch_test_support::server::POLL_EVERY;

/// What an end-to-end scenario runs in: tansu on 127.0.0.1, a temporary
/// data directory for the server (it must outlive the runtime: the server's
/// flush tasks write there until they stop), and a multi-threaded runtime.
pub fn broker_and_runtime(name: &str) -> Result<(Broker, Arc<TempDir>, tokio::runtime::Runtime)> {
    let broker = Broker::start().with_context(|| {
        format!(
            "the {name} benchmark needs a Kafka-protocol broker (tansu) on 127.0.0.1 and it could not start"
        )
    })?;
    crate::progress(name, format!("tansu broker on {}", broker.bootstrap));
    let data_dir = tempfile::tempdir().context("creating a data directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} benchmark's runtime"))?;
    Ok((broker, Arc::new(data_dir), runtime))
}

/// Starts a server without Kafka on `data_dir` and creates `rules` (REST
/// bodies for `POST /api/rules`) there, so a server started afterwards on
/// the same data directory has them loaded before it reads any event.
/// Returns the rules server, still running.
pub async fn create_rules(data_dir: &Arc<TempDir>, rules: &[Value]) -> Result<Server> {
    let mut server = Server::spawn_in(Config::default(), Arc::clone(data_dir))?;
    server
        .wait_healthy(Duration::from_secs(60))
        .await
        .context("starting the rules server")?;
    for rule in rules {
        let name = rule["name"].as_str().unwrap_or("?");
        let r = server
            .http
            .post(server.url("/api/rules"))
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

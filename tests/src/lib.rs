//! Shared harness for the end-to-end tests: a real Kafka-protocol broker
//! (tansu) on 127.0.0.1, a wardwatch server running in-process on a free
//! port, and an independent Kafka client to produce and read back.
//!
//! Nothing is skipped silently: if the broker cannot start, the test fails
//! and says why.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The test broker: tansu on 127.0.0.1 with in-memory storage, killed on
/// drop. The same launcher serves `wardwatch bench pipeline`.
pub use wardwatch::bench::broker::Broker;

/// A free TCP port on 127.0.0.1 (racy in theory, fine for tests).
pub fn free_port() -> u16 {
    wardwatch::bench::broker::free_port().expect("a free port on 127.0.0.1")
}

/// A wardwatch server running in this process.
pub struct Server {
    pub base_url: String,
    pub data_dir: std::sync::Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts `serve` with the given configuration (listen address and data
    /// directory are filled in) and waits until it answers.
    pub async fn start(config: wardwatch::config::Config) -> Result<Self> {
        Self::start_in(config, std::sync::Arc::new(tempfile::tempdir()?)).await
    }

    /// Starts a server on an existing data directory (a restart).
    pub async fn start_in(
        mut config: wardwatch::config::Config,
        data_dir: std::sync::Arc<tempfile::TempDir>,
    ) -> Result<Self> {
        let port = free_port();
        config.listen = format!("127.0.0.1:{port}").parse()?;
        config.data_dir = data_dir.path().to_string_lossy().into_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            wardwatch::server::run_until(config, false, async {
                let _ = stopped.await;
            })
            .await
        });
        let server = Server {
            base_url: format!("http://127.0.0.1:{port}"),
            data_dir,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = server.http.get(server.url("/healthz")).send().await {
                if r.status().is_success() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                bail!("the server did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server gracefully and waits until it has flushed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }
}

/// Runs `sql` in DuckDB (an independent reader of the archive) with
/// `{vitals}` replaced by a `read_parquet` over `data_dir`'s raw-event
/// files, and returns the first row as Python prints it. Fails, never skips,
/// when python3 or duckdb is missing.
pub fn duckdb_first_row(data_dir: &std::path::Path, sql: &str) -> String {
    let files = format!(
        "read_parquet('{}/vitals/**/*.parquet', hive_partitioning=true)",
        data_dir.display()
    );
    let sql = sql.replace("{vitals}", &files);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import duckdb; print(duckdb.connect().execute(\"{sql}\").fetchone())"),
        ])
        .output()
        .expect("python3 runs (bash tests/run.sh installs duckdb)");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

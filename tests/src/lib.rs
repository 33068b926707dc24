//! Shared harness for the end-to-end tests: a real Kafka-protocol broker
//! (tansu) on 127.0.0.1, a wardwatch server running in-process on a free
//! port, and an independent Kafka client to produce and read back.
//!
//! Nothing is skipped silently: if the broker cannot start, the test fails
//! and says why.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// A free TCP port on 127.0.0.1 (racy in theory, fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn tansu_path() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WARDWATCH_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var("HOME").context("HOME is not set")?;
    let p = PathBuf::from(home).join(".cache/wardwatch/tools/bin/tansu");
    if p.exists() {
        Ok(p)
    } else {
        bail!("the tansu broker is not installed: run the tests with `bash tests/run.sh`, which installs it, or set WARDWATCH_TANSU")
    }
}

/// A tansu broker with in-memory storage; killed on drop.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
}

impl Broker {
    pub fn start() -> Result<Self> {
        let path = tansu_path()?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("wardwatch-tansu-{port}.log"));
        let child = Command::new(&path)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::create(
                log.with_extension("err"),
            )?))
            .spawn()
            .with_context(|| format!("starting the broker {}", path.display()))?;
        let broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the broker did not accept connections on port {port} within 20 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin.create_topics(&[topic], &AdminOptions::new()).await?;
        for r in results {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

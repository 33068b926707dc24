//! A throwaway Kafka-protocol broker (tansu, in-memory storage) on
//! 127.0.0.1 for the end-to-end tests and the `pipeline` and `latency`
//! benchmarks. The binary comes from `$WARDWATCH_TANSU` or
//! `~/.cache/wardwatch/tools/bin/tansu` (`bash tests/run.sh` installs it
//! there); without it [`Broker::start`] fails and says how to get it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// A free TCP port on 127.0.0.1 (another process could take it before we
/// bind it; good enough for tests and benchmarks).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn tansu_path() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WARDWATCH_TANSU") {
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!(
                "WARDWATCH_TANSU points at {}, which does not exist",
                p.display()
            );
        }
        return Ok(p);
    }
    let home = std::env::var("HOME").context("HOME is not set")?;
    let p = PathBuf::from(home).join(".cache/wardwatch/tools/bin/tansu");
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "the tansu broker (a Kafka-protocol broker for tests and benchmarks) is not installed at {}: \
             run `bash tests/run.sh` once (it installs it) or set WARDWATCH_TANSU",
            p.display()
        )
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
        let port = free_port()?;
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
        let mut broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!(
                    "the broker {} exited ({status}) before accepting connections; see {}",
                    path.display(),
                    log.with_extension("err").display()
                );
            }
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
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("creating a Kafka admin client")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .with_context(|| format!("creating topic {name}"))?;
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

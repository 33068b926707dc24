//! Running the real `wardwatch` binary for the tests in this folder.
#![allow(dead_code)] // each test binary uses its own subset

pub mod stream;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `wardwatch serve` process, killed with SIGKILL on drop.
pub struct Running {
    pub child: Child,
    pub url: String,
    /// When the process was spawned.
    pub started: Instant,
    /// Its stdout and stderr, next to the data directory.
    pub log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free now and not handed out before in this test process: two
/// servers spawned back to back (before either binds) could otherwise be
/// given the same one, and the second fails with "address in use".
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Spawns `wardwatch serve --config CONFIG` on `data` (and a free port)
/// without waiting for it. Its log goes next to the data directory.
pub fn spawn_with_config(config: &Path, data: &Path) -> Running {
    spawn(data, &["--config", &config.to_string_lossy()])
}

fn spawn(data: &Path, args: &[&str]) -> Running {
    let port = free_port();
    let log = data.with_extension(format!("{port}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_wardwatch"))
        .args(["serve", "--no-auth", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("the wardwatch binary starts");
    Running {
        child,
        url: format!("http://127.0.0.1:{port}"),
        started,
        log,
    }
}

/// Starts `wardwatch serve` embedded (no Kafka) on `data` and waits until
/// it answers. Its log goes next to the data directory.
pub async fn start(data: &std::path::Path, http: &reqwest::Client) -> Running {
    start_with(data, http, &[]).await
}

/// [`start`] with more command-line arguments (for example `--config F`).
pub async fn start_with(data: &std::path::Path, http: &reqwest::Client, args: &[&str]) -> Running {
    let running = spawn(data, args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{}/healthz", running.url))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

/// POSTs JSON and returns the JSON answer, failing the test on an error status.
pub async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let r = http.post(url).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{status}: {v}");
    v
}

/// GETs JSON.
pub async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Produces readings `from..from + n` to `vitals`: 40 patients, keyed by
/// patient, 200 ms apart from `t0`, sequence number = position.
pub async fn produce_readings(broker: &wardwatch_test_support::Broker, from: i64, n: i64, t0: i64) {
    let producer: rdkafka::producer::FutureProducer = broker
        .client_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let sends: Vec<_> = (from..from + n)
        .map(|i| {
            let producer = producer.clone();
            async move {
                let patient = format!("P{:03}", i % 40);
                let payload =
                    serde_json::json!({"patient_id": patient, "timestamp_unix_ms": t0 + i * 200,
                                     "heart_rate_bpm": 80.0, "sequence_number": i})
                    .to_string();
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to("vitals")
                            .key(&patient)
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|_| ())
            }
        })
        .collect();
    for s in futures::future::join_all(sends).await {
        s.map_err(|(e, _)| e).expect("produce");
    }
}

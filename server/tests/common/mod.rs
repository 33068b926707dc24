//! Running the real `wardwatch` binary for the tests in this folder.
#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Running {
    pub child: Child,
    pub url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Starts `wardwatch serve` embedded (no Kafka) on `data` and waits until
/// it answers. Its log goes next to the data directory.
pub async fn start(data: &std::path::Path, http: &reqwest::Client) -> Running {
    start_with(data, http, &[]).await
}

/// [`start`] with more command-line arguments (for example `--config F`).
pub async fn start_with(data: &std::path::Path, http: &reqwest::Client, args: &[&str]) -> Running {
    let port = free_port();
    let log = std::fs::File::create(data.with_extension(format!("{port}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wardwatch"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("the wardwatch binary starts");
    let running = Running {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
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

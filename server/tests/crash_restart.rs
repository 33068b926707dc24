//! A crash, not a graceful stop: the `wardwatch` binary is killed with
//! SIGKILL while events sit in archive buffers not yet written, then started
//! again on the same data directory and consumer group. Every event must be
//! in the archive exactly once: re-read from the committed offset, with the
//! files a previous run wrote past it replaced rather than duplicated.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wardwatch_test_support::Broker;

async fn count(http: &reqwest::Client, server: &common::Running) -> Option<(i64, i64)> {
    let r = http
        .post(format!("{}/api/query", server.url))
        .json(&json!({"sql": "SELECT count(*) AS n, count(DISTINCT sequence_number) AS d FROM vitals"}))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    Some((v["rows"][0]["n"].as_i64()?, v["rows"][0]["d"].as_i64()?))
}

async fn wait_for(http: &reqwest::Client, server: &common::Running, want: i64) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(c) = count(http, server).await {
            if c.0 >= want || Instant::now() > deadline {
                return c;
            }
        } else if Instant::now() > deadline {
            panic!("the server never answered /api/query");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_file_neither_loses_nor_duplicates_archived_events() {
    let broker = Broker::start().expect("the test broker must start");
    for (topic, partitions) in [("vitals", 4), ("alert-events", 1), ("vitals-dlq", 1)] {
        broker.create_topic(topic, partitions).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("wardwatch.toml");
    // A short session timeout lets the group drop the killed member fast.
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"crash-test\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n[archive]\nflush_interval_ms = 1500\n",
            broker.bootstrap
        ),
    )
    .unwrap();
    // Recent event time: retention (30 days) would delete older files.
    let hour = 3_600_000;
    let t0 = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        / hour
        - 1)
        * hour;
    let http = reqwest::Client::new();

    let first = common::spawn_with_config(&config, &data);
    common::produce_readings(&broker, 0, 2000, t0).await;
    assert_eq!(wait_for(&http, &first, 2000).await, (2000, 2000));
    // Let some files land and offsets commit, then add events that stay in
    // buffers and kill the process before they are written.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    common::produce_readings(&broker, 2000, 1500, t0).await;
    assert_eq!(wait_for(&http, &first, 3500).await, (3500, 3500));
    drop(first); // SIGKILL: no flush, no final commit

    let second = common::spawn_with_config(&config, &data);
    common::produce_readings(&broker, 3500, 500, t0).await;
    assert_eq!(
        wait_for(&http, &second, 4000).await,
        (4000, 4000),
        "every event once after the crash"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        count(&http, &second).await,
        Some((4000, 4000)),
        "no duplicate once buffers are written"
    );
    let glob = format!("{}/vitals/**/*.parquet", data.display());
    let out = Command::new("python3")
        .args(["-c", &format!("import duckdb; print(duckdb.connect().execute(\"SELECT count(*), count(DISTINCT sequence_number) FROM read_parquet('{glob}', hive_partitioning=true)\").fetchone())")])
        .output()
        .expect("python3 runs (bash tests/run.sh installs duckdb)");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "(4000, 4000)");
}

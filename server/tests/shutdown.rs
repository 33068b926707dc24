//! A graceful stop of the real binary: `SIGTERM` while a live-feed client
//! holds its connection open. The process must exit within 5 s, and
//! everything it had accepted must be on disk: the events in Parquet, the
//! alert in history, and an acknowledgement made just before the signal.
//! A restart on the same data directory is the reader that checks it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{post, start};
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn sigterm_with_a_live_feed_open_exits_within_5_s_with_everything_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let server = start(&data, &http).await;

    post(
        &http,
        format!("{}/api/rules", server.url),
        json!({"name": "canary low spo2", "severity": "critical", "cooldown_seconds": 0,
               "sql": "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85"}),
    )
    .await;

    // A live-feed client that never disconnects on its own.
    let feed = http
        .get(format!("{}/api/alerts/stream", server.url))
        .send()
        .await
        .unwrap();
    assert!(feed.status().is_success());
    let mut feed = feed.bytes_stream();

    // 500 events, one of them low enough to alert. The archive flushes every
    // 10 s by default, so these are still buffered when the signal comes.
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    let mut body = String::new();
    for i in 0..500i64 {
        let spo2 = if i == 250 { 80.0 } else { 97.0 };
        body.push_str(
            &json!({"patient_id": format!("P{:03}", i % 20), "timestamp_unix_ms": t0 + i * 10,
                    "heart_rate_bpm": 80.0, "spo2_pct": spo2, "sequence_number": i})
            .to_string(),
        );
        body.push('\n');
    }
    let r = http
        .post(format!("{}/api/ingest", server.url))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // The alert reaches the live feed; acknowledge it right away.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("event: alert") {
        let chunk = tokio::time::timeout_at(deadline.into(), feed.next())
            .await
            .expect("the alert reached the live feed")
            .expect("the feed stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let alerts = http
        .get(format!("{}/api/alerts", server.url))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let id = alerts["alerts"][0]["id"].as_str().unwrap().to_string();
    post(
        &http,
        format!("{}/api/alerts/{id}/ack", server.url),
        json!({"by": "nurse on shift", "note": "just before the restart"}),
    )
    .await;

    // SIGTERM, with the feed still open.
    let mut server = server;
    let pid = server.child.id().to_string();
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    // The feed was ended by the server, not left hanging.
    let rest = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = feed.next().await {}
    })
    .await;
    assert!(rest.is_ok(), "the live feed did not end");
    eprintln!("exited {took:?} after SIGTERM");

    // Everything accepted is there after a restart on the same directory.
    let again = start(&data, &http).await;
    let counted = post(
        &http,
        format!("{}/api/query", again.url),
        json!({"sql": "SELECT count(*) AS n, count(DISTINCT sequence_number) AS d FROM vitals"}),
    )
    .await;
    assert_eq!(counted["rows"][0]["n"], 500, "{counted}");
    assert_eq!(counted["rows"][0]["d"], 500, "{counted}");
    let parquet_files = walk(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert!(parquet_files >= 1, "no Parquet file written at shutdown");
    let alerts = http
        .get(format!("{}/api/alerts", again.url))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let alert = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap_or_else(|| panic!("alert {id} lost at shutdown: {alerts}"));
    assert_eq!(alert["ack"]["by"], "nurse on shift", "{alert}");
    let in_sql = post(
        &http,
        format!("{}/api/query", again.url),
        json!({"sql": format!("SELECT count(*) AS n FROM alerts WHERE id = '{id}'")}),
    )
    .await;
    assert_eq!(in_sql["rows"][0]["n"], 1, "{in_sql}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

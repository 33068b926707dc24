//! Damaged files on a real local directory: a Parquet file cut in half, a
//! JSON-lines segment with garbage appended, a half-written rule file. Each
//! must be skipped (and counted), never fatal to opening or to queries.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::record_batch::RecordBatch;
use catalog::archive::{ArchiveConfig, ArchiveWriter};
use catalog::log::JsonLog;
use catalog::rules::{RuleDraft, RuleStore};
use catalog::{damaged_files, open_store, HistoryCatalog, QueryLimits};
use object_store::path::Path;
use object_store::ObjectStore;
use serde_json::json;
use sql_rules::stream::vitals_schema;

const HOUR: i64 = 3_600_000;

/// The start of an hour a few hours ago: inside retention, whole hours apart.
fn recent_hour(hours_ago: i64) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    (now / HOUR - hours_ago) * HOUR
}

/// `n` events of one patient from `start_ms`, a second apart.
fn vitals(start_ms: i64, n: usize, first_seq: u32) -> RecordBatch {
    let times: Vec<i64> = (0..n as i64).map(|i| start_ms + i * 1_000).collect();
    let reading = |v: f64| -> ArrayRef { Arc::new(Float64Array::from(vec![v; n])) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![Some("H1"); n])),
        Arc::new(StringArray::from(vec![Some("P1"); n])),
        Arc::new(Int64Array::from(times.clone())),
        reading(80.0),
        reading(97.0),
        reading(16.0),
        reading(120.0),
        reading(80.0),
        Arc::new(StringArray::from(vec![Some("BEDSIDE"); n])),
        Arc::new(UInt32Array::from_iter_values(
            (0..n as u32).map(|i| first_seq + i),
        )),
        Arc::new(TimestampMillisecondArray::from(times).with_timezone("UTC")),
    ];
    RecordBatch::try_new(vitals_schema(), columns).unwrap()
}

async fn count(history: &HistoryCatalog, sql: &str) -> i64 {
    let batches = history.query(sql, &QueryLimits::default()).await.unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn a_parquet_file_cut_in_half_is_skipped_by_queries_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, prefix) = open_store(tmp.path().to_str().unwrap()).unwrap();
    let mut writer =
        ArchiveWriter::new(Arc::clone(&store), prefix.clone(), ArchiveConfig::default());
    let hours = [recent_hour(5), recent_hour(4), recent_hour(3)];
    for (i, start) in hours.iter().enumerate() {
        let first = i as i64 * 100;
        writer
            .append(
                0,
                first,
                &vitals(*start, 10 * (i + 1), first as u32),
                *start,
            )
            .await
            .unwrap();
    }
    writer.flush_all().await.unwrap();
    let files = parquet_files(tmp.path());
    assert_eq!(files.len(), 3, "{files:?}");

    let history = HistoryCatalog::new(Arc::clone(&store), prefix.clone()).unwrap();
    assert_eq!(count(&history, "SELECT count(*) FROM vitals").await, 60);

    // What a power cut leaves on a store without fsync: the second hour's
    // file, cut in half.
    let damaged = &files[1];
    let bytes = std::fs::read(damaged).unwrap();
    std::fs::write(damaged, &bytes[..bytes.len() / 2]).unwrap();

    let before = damaged_files();
    let history = HistoryCatalog::new(Arc::clone(&store), prefix.clone()).unwrap();
    assert_eq!(
        count(&history, "SELECT count(*) FROM vitals").await,
        40,
        "the other two files answer"
    );
    assert!(damaged_files() > before, "the skip is counted");
    // A query of the damaged hour alone answers (with nothing), and so do
    // later queries, without a second count of the same file.
    let (from, to) = (hours[1], hours[1] + HOUR);
    let sql = format!(
        "SELECT count(*) FROM vitals WHERE event_time >= to_timestamp_millis({from}) \
         AND event_time < to_timestamp_millis({to})"
    );
    assert_eq!(count(&history, &sql).await, 0);
    assert_eq!(count(&history, "SELECT count(*) FROM vitals").await, 40);

    // Replay reads the archive the same way.
    let mut events = history
        .events_in_order(hours[0], hours[2] + HOUR)
        .await
        .unwrap();
    let mut rows = 0;
    while let Some(hour) = events.next_hour().await {
        rows += hour
            .unwrap()
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>();
    }
    assert_eq!(rows, 40);
}

#[tokio::test]
async fn a_log_segment_with_garbage_appended_opens_with_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, prefix) = open_store(tmp.path().to_str().unwrap()).unwrap();
    let log = JsonLog::open(Arc::clone(&store), prefix.clone(), "acks")
        .await
        .unwrap()
        .with_durable_appends();
    for i in 0..3 {
        log.append(&[json!({"alert_id": format!("a{i}"), "by": "nurse"})])
            .await
            .unwrap();
    }
    drop(log);

    let segment = tmp.path().join("acks/seg-000000000002.jsonl");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(b"{\"alert_id\": \"a3\", \"by\": \"nu\x00\xff garbage");
    std::fs::write(&segment, bytes).unwrap();

    let before = damaged_files();
    let log = JsonLog::open(Arc::clone(&store), prefix.clone(), "acks")
        .await
        .unwrap();
    let ids: Vec<String> = log
        .recent(10, |_| true)
        .iter()
        .map(|r| r["alert_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a2", "a1", "a0"]);
    assert_eq!(log.damaged_files().len(), 1);
    assert!(log.damaged_files()[0]
        .path
        .ends_with("acks/seg-000000000002.jsonl"));
    assert!(damaged_files() > before);

    // The log goes on: the bad line kept its number, no segment name clashes.
    log.append(&[json!({"alert_id": "a4"})]).await.unwrap();
    log.flush().await.unwrap();
    assert!(tmp.path().join("acks/seg-000000000004.jsonl").is_file());
}

#[tokio::test]
async fn half_written_rule_files_do_not_stop_the_rules_from_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, prefix) = open_store(tmp.path().to_str().unwrap()).unwrap();
    let rules = RuleStore::open(Arc::clone(&store), prefix.clone())
        .await
        .unwrap();
    let tachy = rules
        .create(RuleDraft::new("Tachy", "SELECT 1"), 1_000)
        .await
        .unwrap();
    rules
        .update(&tachy.id, RuleDraft::new("Tachy", "SELECT 2"), 2_000)
        .await
        .unwrap();
    let brady = rules
        .create(RuleDraft::new("Brady", "SELECT 3"), 3_000)
        .await
        .unwrap();
    drop(rules);

    // Tachy's rule.json cut in half; Brady's only version cut in half.
    let cut = |path: std::path::PathBuf| {
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    };
    cut(tmp.path().join("rules").join(&tachy.id).join("rule.json"));
    cut(tmp
        .path()
        .join("rules")
        .join(&brady.id)
        .join("v000001.json"));

    let before = damaged_files();
    let rules = RuleStore::open(Arc::clone(&store), prefix.clone())
        .await
        .unwrap();
    let loaded = rules.get(&tachy.id).await.unwrap();
    assert_eq!(loaded.current.sql, "SELECT 2");
    assert!(loaded.active);
    assert!(rules.get(&brady.id).await.is_none());
    let damaged = rules.damaged_files();
    assert_eq!(damaged.len(), 2, "{damaged:?}");
    assert!(damaged_files() >= before + 2);

    // Writes still work after the recovery.
    let next = rules
        .update(&tachy.id, RuleDraft::new("Tachy", "SELECT 4"), 4_000)
        .await
        .unwrap();
    assert_eq!(next.current.version, 3);
    let reopened = RuleStore::open(store as Arc<dyn ObjectStore>, Path::default())
        .await
        .unwrap();
    assert_eq!(reopened.get(&tachy.id).await.unwrap().current.version, 3);
}

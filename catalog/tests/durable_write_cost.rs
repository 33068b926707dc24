//! What fsync costs on the archive and log paths: the same writes through
//! `DurableLocalStore` and through a plain `LocalFileSystem`. Ignored by
//! default (it measures the disk, it does not check behaviour); run with
//! `wcargo test -p wardwatch-catalog --test durable_write_cost -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use catalog::log::JsonLog;
use catalog::storage::DurableLocalStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

async fn puts(store: &dyn ObjectStore, files: usize, bytes: usize) -> f64 {
    let payload = bytes::Bytes::from(vec![7u8; bytes]);
    let started = Instant::now();
    for i in 0..files {
        let path = Path::from(format!(
            "vitals/date=2026-01-01/hour={:02}/part-0-{i:020}.parquet",
            i % 24
        ));
        store
            .put(&path, PutPayload::from(payload.clone()))
            .await
            .unwrap();
    }
    started.elapsed().as_secs_f64() * 1000.0 / files as f64
}

async fn appends(store: Arc<dyn ObjectStore>, durable: bool, n: usize) -> f64 {
    let log = JsonLog::open(store, Path::default(), "acks").await.unwrap();
    let log = if durable {
        log.with_durable_appends()
    } else {
        log
    };
    let started = Instant::now();
    for i in 0..n {
        log.append(&[serde_json::json!({"alert_id": format!("a{i}"), "by": "nurse"})])
            .await
            .unwrap();
    }
    log.flush().await.unwrap();
    started.elapsed().as_secs_f64() * 1000.0 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures the disk"]
async fn fsync_cost_per_archive_file_and_per_ack() {
    for (files, bytes) in [(200, 64 * 1024), (50, 4 * 1024 * 1024)] {
        let plain_dir = tempfile::tempdir_in(".").unwrap();
        let durable_dir = tempfile::tempdir_in(".").unwrap();
        let plain = LocalFileSystem::new_with_prefix(plain_dir.path()).unwrap();
        let durable = DurableLocalStore::new(durable_dir.path()).unwrap();
        let plain_ms = puts(&plain, files, bytes).await;
        let durable_ms = puts(&durable, files, bytes).await;
        println!(
            "archive file of {} KiB: {plain_ms:.2} ms without fsync, {durable_ms:.2} ms with ({files} files)",
            bytes / 1024
        );
    }
    let dir = tempfile::tempdir_in(".").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DurableLocalStore::new(dir.path()).unwrap());
    let buffered = appends(Arc::clone(&store), false, 200).await;
    let dir = tempfile::tempdir_in(".").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DurableLocalStore::new(dir.path()).unwrap());
    let durable = appends(Arc::clone(&store), true, 1_000).await;
    println!(
        "ack append: {buffered:.3} ms buffered, {durable:.2} ms durable (written and fsync'd)"
    );
    let started = Instant::now();
    let reopened = JsonLog::open(store, Path::default(), "acks").await.unwrap();
    println!(
        "opening a log of {} one-record segments: {:.1} ms",
        reopened.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
}

//! `replay_rule` (the engine behind `POST /api/replay`) reads the archive
//! one event-time hour at a time: over a generated archive with late,
//! duplicate and malformed events, every one of the 20 benchmark rules gives
//! exactly the alerts of one sorted read of the whole range, each hour's
//! query lists only that hour's directory, and no hour is read more than an
//! hour ahead of the engine.
//!
//! It lives here rather than beside `replay_rule` because its archive and
//! rules are the benchmark suite's (`wardwatch-bench`), which the server
//! crate does not depend on.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use catalog::HistoryCatalog;
use futures::stream::BoxStream;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use serde_json::Value;
use sql_rules::stream::vitals_schema;
use sql_rules::{Alert, Engine, EngineConfig, RuleSpec};
use wardwatch::replay::{replay_rule, Progress, Replayed};
use wardwatch_bench::{archive, engine::rule_specs, rules, Ward};

const HOUR_MS: i64 = 3_600_000;

type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = object_store::Result<T>> + Send + 'a>>;

/// The archive's store, noting for every read of a `vitals` file its
/// hour and how many events the replay had handed to the engine by then.
struct Watched {
    inner: Arc<dyn ObjectStore>,
    progress: Arc<Progress>,
    reads: Mutex<Vec<(i64, u64)>>,
    /// Prefixes of recursive listings.
    listed: Mutex<Vec<String>>,
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watched({:?})", self.inner)
    }
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watched({})", self.inner)
    }
}

/// The hour (since the epoch) of a `…/date=YYYY-MM-DD/hour=HH/…` path.
fn path_hour(path: &str) -> Option<i64> {
    let date = path.split("date=").nth(1)?.get(..10)?;
    let hour: i64 = path.split("hour=").nth(1)?.get(..2)?.parse().ok()?;
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let midnight = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
    Some(midnight / 3600 + hour)
}

// `ObjectStore` is an `#[async_trait]`; these are the signatures it
// expands to (the workspace does not carry that crate).
impl ObjectStore for Watched {
    fn put_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> StoreFuture<'c, PutResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_opts(location, payload, opts)
    }

    fn put_multipart_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b StorePath,
        opts: PutMultipartOptions,
    ) -> StoreFuture<'c, Box<dyn MultipartUpload>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_multipart_opts(location, opts)
    }

    fn get_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b StorePath,
        options: GetOptions,
    ) -> StoreFuture<'c, GetResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        let path = location.as_ref();
        if path.contains("vitals/date=") {
            if let Some(hour) = path_hour(path) {
                let events = self.progress.events.load(Relaxed);
                self.reads.lock().unwrap().push((hour, events));
            }
        }
        self.inner.get_opts(location, options)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let shown = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.listed.lock().unwrap().push(shown);
        self.inner.list(prefix)
    }

    fn list_with_delimiter<'a, 'b, 'c>(
        &'a self,
        prefix: Option<&'b StorePath>,
    ) -> StoreFuture<'c, ListResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.list_with_delimiter(prefix)
    }

    fn copy_opts<'a, 'b, 'c, 'd>(
        &'a self,
        from: &'b StorePath,
        to: &'c StorePath,
        options: CopyOptions,
    ) -> StoreFuture<'d, ()>
    where
        'a: 'd,
        'b: 'd,
        'c: 'd,
        Self: 'd,
    {
        self.inner.copy_opts(from, to, options)
    }
}

/// The replay as it was: the whole range in one history query sorted by
/// DataFusion, fed to the engine in one go.
async fn replay_in_one_sorted_read(
    history: &HistoryCatalog,
    spec: RuleSpec,
    from_ms: i64,
    to_ms: i64,
) -> Replayed {
    use futures::StreamExt;
    let mut engine = Engine::new(EngineConfig::default());
    engine.upsert_rule(spec).unwrap();
    engine.assign_partitions(&[0], 0);
    let columns: Vec<String> = vitals_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let sql = format!(
        "SELECT {} FROM vitals WHERE timestamp_unix_ms >= {from_ms} AND timestamp_unix_ms < {to_ms} \
         ORDER BY event_time, patient_id, sequence_number",
        columns.join(", "),
    );
    let mut stream = history
        .dataframe(&sql)
        .await
        .unwrap()
        .execute_stream()
        .await
        .unwrap();
    let (mut alerts, mut events) = (Vec::new(), 0);
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        let batch = RecordBatch::try_new(vitals_schema(), batch.columns().to_vec()).unwrap();
        events += batch.num_rows();
        alerts.extend(engine.process(0, &batch, 0).unwrap().alerts);
    }
    alerts.extend(engine.advance_watermark(to_ms, 0).unwrap().alerts);
    alerts.retain(|a: &Alert| match (a.window_start_ms, a.window_end_ms) {
        (Some(s), Some(e)) => s >= from_ms && e <= to_ms,
        _ => a.event_time_ms >= from_ms && a.event_time_ms < to_ms,
    });
    Replayed { events, alerts }
}

/// Alerts as comparable text, without the processing time.
fn comparable(alerts: &[Alert]) -> Vec<String> {
    let mut out: Vec<String> = alerts
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap();
            v["fired_at_ms"] = Value::Null;
            v.to_string()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn hour_by_hour_replay_matches_one_sorted_read_and_reads_at_most_an_hour_ahead() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Seven hours of 6 patients, with late, duplicate and malformed
    // events. The generator flushes every 6 simulated hours, so the late
    // events of hour 5 that arrive after 06:00 are in extra files.
    let ward = Ward {
        patients: 6,
        seconds: 7 * 3600,
    };
    let archive = archive::generate(ward, None, &runtime).unwrap();
    // 02:20 to 06:40: five hours, the first and last clipped.
    let from_ms = archive.start_ms + 2 * HOUR_MS + 20 * 60_000;
    let to_ms = archive.start_ms + 6 * HOUR_MS + 40 * 60_000;
    let (first_hour, last_hour) = (from_ms / HOUR_MS, (to_ms - 1) / HOUR_MS);
    let specs = rule_specs(&rules::rules()).unwrap();

    runtime.block_on(async {
        let plain =
            HistoryCatalog::new(Arc::clone(&archive.store), archive.prefix.clone()).unwrap();
        // Late events of an earlier hour sit in their own file: some
        // partition has two files in one hour of the range.
        let mut files: BTreeMap<(i64, String), usize> = BTreeMap::new();
        let mut listing = archive.store.list(Some(&archive.prefix));
        while let Some(meta) = futures::StreamExt::next(&mut listing).await {
            let path = meta.unwrap().location.to_string();
            let (Some(hour), Some(name)) = (path_hour(&path), path.rsplit('/').next()) else {
                continue;
            };
            if path.contains("vitals/") && (first_hour..=last_hour).contains(&hour) {
                let partition = name.rsplit_once('-').unwrap().0.to_string();
                *files.entry((hour, partition)).or_default() += 1;
            }
        }
        assert!(files.values().any(|n| *n > 1), "{files:?}");
        assert_eq!(
            plain.hours("vitals", from_ms, to_ms).await.unwrap(),
            (first_hour..=last_hour).collect::<Vec<_>>()
        );
        // Events per hour of the range.
        let mut per_hour = Vec::new();
        for hour in first_hour..=last_hour {
            let lo = from_ms.max(hour * HOUR_MS);
            let hi = to_ms.min((hour + 1) * HOUR_MS);
            let sql = format!(
                "SELECT count(*) FROM vitals \
                 WHERE timestamp_unix_ms >= {lo} AND timestamp_unix_ms < {hi}"
            );
            let rows = plain
                .query(&sql, &catalog::QueryLimits::default())
                .await
                .unwrap();
            let n = sql_rules::json::cell(rows[0].column(0).as_ref(), 0);
            per_hour.push(n.as_u64().unwrap());
        }
        assert!(per_hour.iter().all(|n| *n > 0), "{per_hour:?}");

        let mut alerts = 0;
        for (i, spec) in specs.into_iter().enumerate() {
            let reference = replay_in_one_sorted_read(&plain, spec.clone(), from_ms, to_ms).await;
            let progress = Arc::new(Progress::default());
            let store = Arc::new(Watched {
                inner: Arc::clone(&archive.store),
                progress: Arc::clone(&progress),
                reads: Mutex::new(Vec::new()),
                listed: Mutex::new(Vec::new()),
            });
            let history = HistoryCatalog::new(store.clone(), archive.prefix.clone()).unwrap();
            let replayed = replay_rule(
                &history,
                spec.clone(),
                from_ms,
                to_ms,
                sql_rules::RuleBudgets::default(),
                &progress,
            )
            .await
            .unwrap();
            assert_eq!(replayed.events, reference.events, "{}", spec.name);
            assert_eq!(replayed.events as u64, per_hour.iter().sum::<u64>());
            assert_eq!(
                comparable(&replayed.alerts),
                comparable(&reference.alerts),
                "{}",
                spec.name
            );
            alerts += replayed.alerts.len();
            if i > 0 {
                continue;
            }
            // Each hour's query lists only that hour's directory.
            let listed = store.listed.lock().unwrap().clone();
            let listed_hours: Vec<Option<i64>> = listed.iter().map(|p| path_hour(p)).collect();
            let expected: Vec<Option<i64>> = (first_hour..=last_hour).map(Some).collect();
            assert_eq!(listed_hours, expected, "{listed:?}");
            // Hour k is read only once hours 0..k-2 went through the
            // engine: never more than the next hour ahead. (One sorted
            // read opens every file before the first event.)
            let reads = store.reads.lock().unwrap().clone();
            assert!(!reads.is_empty());
            for (hour, events) in reads {
                assert!((first_hour..=last_hour).contains(&hour), "hour {hour} read");
                let k = (hour - first_hour) as usize;
                let done: u64 = per_hour[..k.saturating_sub(1)].iter().sum();
                assert!(
                    events >= done,
                    "hour {k} of the range read after {events} events, before hour {} was done",
                    k.saturating_sub(2)
                );
            }
        }
        assert!(alerts > 0);
    });
}

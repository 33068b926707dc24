//! Dead letters: events wardwatch refused, with the original bytes and the
//! reason. With Kafka they go to the dead-letter topic (reason in a header);
//! embedded, to the `dead_letters` table. Always counted, never dropped
//! silently.
//!
//! The embedded table is bounded ([`DeadLetters::apply_retention`], run every
//! minute by [`run_retention`]): in memory, where `GET /api/dead-letters`
//! reads, the newest `[archive] max_dead_letters` letters younger than
//! `dead_letter_retention_hours`; in storage, segments older than that or
//! holding only letters beyond the newest `max_dead_letters_stored` are
//! deleted. The Kafka topic's retention is the broker's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use catalog::log::JsonLog;

use super::kafka::KafkaProducer;
use crate::metrics::Metrics;

/// The embedded dead-letter table keeps at most this much of each refused
/// payload (the Kafka topic gets the original bytes): a client must not be
/// able to make the server keep, and list, megabytes per refused line.
pub const MAX_KEPT_PAYLOAD: usize = 4096;

pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub reason: String,
    /// Where it came from: `kafka:vitals/3@1234`, `http:/api/ingest`, `demo`.
    pub origin: String,
    /// The Kafka partition and offset it was read from, if any.
    pub source: Option<(i32, i64)>,
}

/// Dead letters handed over for delivery and not yet acknowledged, by the
/// partition and offset they were read from. The consumer must not commit
/// past one of them: after a crash it would be lost.
#[derive(Default)]
pub struct InFlight {
    by_partition: Mutex<HashMap<i32, BTreeMap<i64, usize>>>,
    letters: AtomicUsize,
}

impl InFlight {
    /// Holds back commits at these source offsets from the moment the
    /// letters exist, before they are even handed over.
    pub fn hold(&self, sources: &[(i32, i64)], letters: usize) {
        self.letters.fetch_add(letters, Relaxed);
        let mut map = self.by_partition.lock().expect("in-flight lock");
        for &(p, o) in sources {
            *map.entry(p).or_default().entry(o).or_default() += 1;
        }
    }

    /// Delivered: commits may pass these offsets.
    fn done(&self, sources: &[(i32, i64)], letters: usize) {
        let mut map = self.by_partition.lock().expect("in-flight lock");
        for &(p, o) in sources {
            let offsets = map.entry(p).or_default();
            if let Some(n) = offsets.get_mut(&o) {
                *n -= 1;
                if *n == 0 {
                    offsets.remove(&o);
                }
            }
        }
        self.letters.fetch_sub(letters, Relaxed);
    }

    /// The last offset of `partition` that may be committed when `wanted`
    /// would be: just before the oldest letter still in flight.
    pub fn commit_cap(&self, partition: i32, wanted: i64) -> i64 {
        let map = self.by_partition.lock().expect("in-flight lock");
        match map.get(&partition).and_then(|o| o.keys().next()) {
            Some(&oldest) => wanted.min(oldest - 1),
            None => wanted,
        }
    }

    /// Letters handed over and not yet acknowledged.
    pub fn letters(&self) -> usize {
        self.letters.load(Relaxed)
    }

    /// Whether a letter read from `partition` is still in flight.
    pub fn pending(&self, partition: i32) -> bool {
        let map = self.by_partition.lock().expect("in-flight lock");
        map.get(&partition).is_some_and(|o| !o.is_empty())
    }
}

/// How long and how many embedded dead letters are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age_ms: i64,
    pub max_stored: u64,
}

impl Retention {
    pub fn from_config(settings: &crate::config::ArchiveSettings) -> Self {
        let hours = i64::try_from(settings.dead_letter_retention_hours).unwrap_or(i64::MAX);
        Self {
            max_age_ms: hours.saturating_mul(3_600_000),
            max_stored: settings.max_dead_letters_stored,
        }
    }
}

/// How often the embedded dead-letter table is trimmed.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

pub struct DeadLetters {
    /// Opened with the in-memory bound (`[archive] max_dead_letters`).
    pub table: JsonLog,
    pub kafka: Option<(KafkaProducer, String)>,
    pub metrics: Arc<Metrics>,
    pub in_flight: InFlight,
}

impl DeadLetters {
    /// Forgets embedded letters received before `now_ms - max_age_ms` and
    /// deletes stored segments that are too old or beyond `max_stored`
    /// letters. Returns (letters forgotten in memory, segments deleted).
    pub async fn apply_retention(
        &self,
        now_ms: i64,
        retention: Retention,
    ) -> Result<(usize, usize), catalog::CatalogError> {
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        // Letters are appended in receiving order; one without a time (never
        // written by this code) is as old as the one before it.
        let forgotten = self.table.forget_oldest_while(|letter| {
            letter
                .get("received_at_ms")
                .and_then(serde_json::Value::as_i64)
                .is_none_or(|at| at < cutoff)
        });
        let deleted = self
            .table
            .delete_old_segments(cutoff, retention.max_stored)
            .await?;
        if forgotten > 0 || !deleted.is_empty() {
            tracing::info!(
                forgotten,
                segments_deleted = deleted.len(),
                "dead-letter retention"
            );
        }
        Ok((forgotten, deleted.len()))
    }

    /// Delivers letters without waiting for them: the Kafka source goes on
    /// reading while they are produced (a broker round trip each time would
    /// stall it). Until acknowledged they hold back the consumer's commits
    /// (see [`InFlight::commit_cap`]): the caller has [`InFlight::hold`]
    /// them since it read them.
    pub fn record_in_background(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        letters: Vec<DeadLetter>,
    ) {
        if letters.is_empty() {
            return;
        }
        let sources: Vec<(i32, i64)> = letters.iter().filter_map(|l| l.source).collect();
        let count = letters.len();
        let this = Arc::clone(self);
        rt.spawn(async move {
            if this.record(letters).await {
                this.in_flight.done(&sources, count);
            } else {
                // Not delivered even after the producer's retries: keep
                // holding commits, so a restart reads these events again and
                // retries them, rather than committing past them.
                this.in_flight.letters.fetch_sub(count, Relaxed);
                tracing::error!(
                    letters = count,
                    "dead letters not delivered; commits for their partitions stay behind them until a restart"
                );
            }
        });
    }

    /// Returns whether every letter was delivered.
    pub async fn record(&self, letters: Vec<DeadLetter>) -> bool {
        if letters.is_empty() {
            return true;
        }
        self.metrics
            .count_rejected(letters.iter().map(|l| l.reason.as_str()));
        match &self.kafka {
            Some((producer, topic)) => {
                // All in flight at once: one broker round trip for the lot,
                // not one per letter (the source waits for this).
                let sends = letters.iter().map(|letter| async move {
                    let key = letter
                        .key
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .to_string();
                    let headers = [
                        ("reason", letter.reason.as_str()),
                        ("origin", letter.origin.as_str()),
                    ];
                    (
                        letter,
                        producer.send(topic, &key, &letter.payload, &headers).await,
                    )
                });
                let mut all = true;
                for (letter, result) in futures::future::join_all(sends).await {
                    match result {
                        Ok(()) => self.metrics.dead_letters_delivered.fetch_add(1, Relaxed),
                        Err(e) => {
                            all = false;
                            tracing::error!(error = %e, reason = %letter.reason, "dead letter not delivered");
                            self.metrics.dead_letter_errors.fetch_add(1, Relaxed)
                        }
                    };
                }
                all
            }
            None => {
                let now = chrono::Utc::now().timestamp_millis();
                let records: Vec<serde_json::Value> = letters
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "received_at_ms": now,
                            "reason": l.reason,
                            "origin": l.origin,
                            "key": l.key.as_deref().map(String::from_utf8_lossy),
                            "payload": String::from_utf8_lossy(&l.payload[..l.payload.len().min(MAX_KEPT_PAYLOAD)]),
                            "payload_bytes": l.payload.len(),
                            "payload_truncated": l.payload.len() > MAX_KEPT_PAYLOAD,
                        })
                    })
                    .collect();
                match self.table.append(&records).await {
                    Ok(()) => {
                        self.metrics
                            .dead_letters_delivered
                            .fetch_add(records.len() as u64, Relaxed);
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "recording dead letters");
                        self.metrics
                            .dead_letter_errors
                            .fetch_add(records.len() as u64, Relaxed);
                        false
                    }
                }
            }
        }
    }
}

/// Applies [`DeadLetters::apply_retention`] every minute until shutdown.
pub async fn run_retention(
    letters: Arc<DeadLetters>,
    retention: Retention,
    stop: crate::shutdown::ShutdownNotice,
) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.clone().requested() => return,
        }
        let now = chrono::Utc::now().timestamp_millis();
        if let Err(e) = letters.apply_retention(now, retention).await {
            tracing::error!(error = %e, "applying dead-letter retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStore;

    fn letter(payload: &[u8]) -> DeadLetter {
        DeadLetter {
            key: None,
            payload: payload.to_vec(),
            reason: "malformed".into(),
            origin: "http:/api/ingest".into(),
            source: None,
        }
    }

    #[tokio::test]
    async fn embedded_dead_letters_are_bounded_by_count_and_age() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, prefix) = catalog::open_store(tmp.path().to_str().unwrap()).unwrap();
        let open = |limit| {
            let store: Arc<dyn ObjectStore> = Arc::clone(&store);
            let prefix = prefix.clone();
            async move {
                DeadLetters {
                    table: JsonLog::open_with_limit(store, prefix, "dead_letters", limit)
                        .await
                        .unwrap(),
                    kafka: None,
                    metrics: Arc::default(),
                    in_flight: InFlight::default(),
                }
            }
        };
        let letters = open(5).await;
        for batch in 0..4 {
            let refused = (0..3).map(|i| letter(format!("{batch}-{i}").as_bytes()));
            assert!(letters.record(refused.collect()).await);
            letters.table.flush().await.unwrap();
        }
        // Count in memory: the newest five of twelve.
        let kept = letters.table.recent(100, |_| true);
        assert_eq!(kept.len(), 5);
        assert_eq!(kept[0]["payload"], "3-2");
        assert_eq!(letters.table.len(), 12);

        // Count in storage: segments holding only letters beyond the newest
        // four go; the segment holding letter 9 stays.
        let retention = Retention {
            max_age_ms: 3_600_000,
            max_stored: 4,
        };
        let now = chrono::Utc::now().timestamp_millis();
        assert_eq!(
            letters.apply_retention(now, retention).await.unwrap(),
            (0, 2)
        );
        let stored = std::fs::read_dir(tmp.path().join("dead_letters"))
            .unwrap()
            .count();
        assert_eq!(stored, 2);

        // Age: an hour and a second later, every letter is past retention;
        // the newest segment stays (its name carries the numbering on).
        let later = now + 3_601_000;
        let (forgotten, deleted) = letters.apply_retention(later, retention).await.unwrap();
        assert_eq!((forgotten, deleted), (5, 1));
        assert!(letters.table.recent(100, |_| true).is_empty());
        let reopened = open(5).await;
        assert_eq!(reopened.table.len(), 12, "numbering carries on");
        assert_eq!(reopened.table.recent(100, |_| true).len(), 3);
    }

    #[test]
    fn commits_stop_before_the_oldest_letter_in_flight() {
        let f = InFlight::default();
        assert_eq!(f.commit_cap(0, 100), 100);
        f.hold(&[(0, 40), (0, 70), (1, 5)], 3);
        assert_eq!(f.letters(), 3);
        assert_eq!(f.commit_cap(0, 100), 39);
        assert_eq!(f.commit_cap(0, 20), 20);
        assert_eq!(f.commit_cap(1, 100), 4);
        assert_eq!(f.commit_cap(2, 100), 100);
        f.done(&[(0, 40)], 1);
        assert_eq!(f.commit_cap(0, 100), 69);
        f.done(&[(0, 70), (1, 5)], 2);
        assert!(!f.pending(0) && !f.pending(1));
        assert_eq!(f.commit_cap(0, 100), 100);
        assert_eq!(f.letters(), 0);
    }
}

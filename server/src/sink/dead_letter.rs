//! Dead letters: events wardwatch refused, with the original bytes and the
//! reason. With Kafka they go to the dead-letter topic (reason in a header);
//! embedded, to the `dead_letters` table. Always counted, never dropped
//! silently.

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

pub struct DeadLetters {
    pub table: JsonLog,
    pub kafka: Option<(KafkaProducer, String)>,
    pub metrics: Arc<Metrics>,
    pub in_flight: InFlight,
}

impl DeadLetters {
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

#[cfg(test)]
mod tests {
    use super::*;

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

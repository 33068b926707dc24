//! Dead letters: events wardwatch refused, with the original bytes and the
//! reason. With Kafka they go to the dead-letter topic (reason in a header);
//! embedded, to the `dead_letters` table. Always counted, never dropped
//! silently.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use catalog::log::JsonLog;

use super::kafka::KafkaProducer;
use crate::metrics::Metrics;

pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub reason: String,
    /// Where it came from: `kafka:vitals/3@1234`, `http:/api/ingest`, `demo`.
    pub origin: String,
}

pub struct DeadLetters {
    pub table: JsonLog,
    pub kafka: Option<(KafkaProducer, String)>,
    pub metrics: Arc<Metrics>,
}

impl DeadLetters {
    pub async fn record(&self, letters: Vec<DeadLetter>) {
        if letters.is_empty() {
            return;
        }
        self.metrics
            .events_rejected
            .fetch_add(letters.len() as u64, Relaxed);
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
                for (letter, result) in futures::future::join_all(sends).await {
                    match result {
                        Ok(()) => self.metrics.dead_letters_delivered.fetch_add(1, Relaxed),
                        Err(e) => {
                            tracing::error!(error = %e, reason = %letter.reason, "dead letter not delivered");
                            self.metrics.dead_letter_errors.fetch_add(1, Relaxed)
                        }
                    };
                }
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
                            "payload": String::from_utf8_lossy(&l.payload),
                        })
                    })
                    .collect();
                match self.table.append(&records).await {
                    Ok(()) => self
                        .metrics
                        .dead_letters_delivered
                        .fetch_add(records.len() as u64, Relaxed),
                    Err(e) => {
                        tracing::error!(error = %e, "recording dead letters");
                        self.metrics
                            .dead_letter_errors
                            .fetch_add(records.len() as u64, Relaxed)
                    }
                };
            }
        }
    }
}

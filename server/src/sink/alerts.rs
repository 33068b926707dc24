//! The alert hub: every alert the engine emits goes to the alert history
//! (the archive's `alerts` table, which `GET /api/alerts`, acknowledgements
//! and history SQL all read), the live feed (SSE), and, when Kafka is
//! configured, the `alert-events` topic keyed by patient with the alert id
//! as a header. Suppressed alerts are recorded and counted, not delivered
//! to Kafka or people.
//!
//! One representation travels the whole way: the engine's [`Alert`]. It is
//! serialized once per Kafka message and per live-feed event, and turned
//! into Arrow columns for the archive; it is never round-tripped through JSON.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use catalog::alert_history::AlertQuery;
use catalog::log::JsonLog;
use serde_json::Value;
use sql_rules::{Alert, AlertStatus};
use tokio::sync::{broadcast, mpsc::UnboundedReceiver};

use super::kafka::KafkaProducer;
use crate::metrics::Metrics;

pub struct AlertHub {
    pub live: broadcast::Sender<Arc<Alert>>,
    /// Acknowledgements: who saw an alert, when, with what note.
    pub acks: JsonLog,
    /// The latest acknowledgement of each alert, by alert id.
    ack_index: RwLock<HashMap<String, Value>>,
}

impl AlertHub {
    pub fn new(acks: JsonLog) -> Self {
        let (live, _) = broadcast::channel(4096);
        let mut index = HashMap::new();
        // Oldest first, so the latest acknowledgement of an alert wins.
        for ack in acks.recent(usize::MAX, |_| true).into_iter().rev() {
            if let Some(id) = ack.get("alert_id").and_then(Value::as_str) {
                index.insert(id.to_string(), ack.clone());
            }
        }
        Self {
            live,
            acks,
            ack_index: RwLock::new(index),
        }
    }

    /// Records an acknowledgement (kept in history; a later one supersedes
    /// the earlier in alert views).
    pub async fn acknowledge(&self, ack: Value) -> Result<(), catalog::CatalogError> {
        self.acks.append(std::slice::from_ref(&ack)).await?;
        if let Some(id) = ack.get("alert_id").and_then(Value::as_str) {
            self.ack_index
                .write()
                .expect("ack index lock")
                .insert(id.to_string(), ack.clone());
        }
        Ok(())
    }

    /// Alerts in their JSON shape, with the `ack` field on those that have one.
    pub fn with_acks(&self, alerts: &[Alert]) -> Vec<Value> {
        let index = self.ack_index.read().expect("ack index lock");
        alerts
            .iter()
            .map(|alert| {
                let mut value = serde_json::to_value(alert).unwrap_or(Value::Null);
                if let (Some(ack), Some(obj)) = (index.get(&alert.id), value.as_object_mut()) {
                    obj.insert("ack".into(), ack.clone());
                }
                value
            })
            .collect()
    }
}

/// Filters accepted by `GET /api/alerts` and the live feed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AlertFilter {
    pub rule: Option<String>,
    pub patient: Option<String>,
    pub severity: Option<String>,
    pub status: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<usize>,
}

impl AlertFilter {
    /// Whether a live alert passes the filter (`limit` aside).
    pub fn matches(&self, a: &Alert) -> bool {
        self.rule
            .as_deref()
            .is_none_or(|r| a.rule_id == r || a.rule_name == r)
            && self
                .patient
                .as_deref()
                .is_none_or(|p| a.patient_id() == Some(p))
            && self.severity.as_deref().is_none_or(|x| a.severity == x)
            && self
                .status
                .as_deref()
                .is_none_or(|x| catalog::archive::status_text(a.status) == x)
            && self.since.is_none_or(|since| a.event_time_ms >= since)
            && self.until.is_none_or(|until| a.event_time_ms < until)
    }

    /// The history query for this filter, returning at most `limit` alerts;
    /// `None` when nothing can match (a status that is neither `fired` nor
    /// `suppressed`).
    pub fn history_query(&self, limit: usize) -> Option<AlertQuery> {
        let status = match self.status.as_deref() {
            None => None,
            Some("fired") => Some(AlertStatus::Fired),
            Some("suppressed") => Some(AlertStatus::Suppressed),
            Some(_) => return None,
        };
        Some(AlertQuery {
            rule: self.rule.clone(),
            patient: self.patient.clone(),
            severity: self.severity.clone(),
            status,
            id: None,
            since_ms: self.since,
            until_ms: self.until,
            limit,
        })
    }
}

/// Delivers alerts until the engine's sender is dropped.
pub async fn deliver(
    mut rx: UnboundedReceiver<Vec<Alert>>,
    hub: Arc<AlertHub>,
    kafka: Option<(KafkaProducer, String)>,
    metrics: Arc<Metrics>,
    archive: crate::archive::ArchiveHandle,
) {
    let mut pending = Vec::new();
    loop {
        // Take everything queued, so history is appended in batches.
        let Some(first) = rx.recv().await else { break };
        pending.extend(first);
        while let Ok(more) = rx.try_recv() {
            pending.extend(more);
        }
        // Kafka first: people wait on it, while the archive may be busy
        // writing a file. Live subscribers hear of an alert once history has
        // it (`send_local` returns when the rows are buffered, and history
        // reads buffered rows), so what they see they can also look up.
        let batch = catalog::archive::alerts_to_batch(&pending);
        let alerts: Vec<Arc<Alert>> = pending.drain(..).map(Arc::new).collect();
        for alert in &alerts {
            if alert.status != AlertStatus::Fired {
                continue;
            }
            if let Some((producer, topic)) = &kafka {
                let producer = producer.clone();
                let topic = topic.clone();
                let metrics = Arc::clone(&metrics);
                let alert = Arc::clone(alert);
                tokio::spawn(async move {
                    let payload = serde_json::to_vec(alert.as_ref()).expect("alerts serialize");
                    let key = alert.patient_id().unwrap_or(&alert.rule_id).to_string();
                    let headers = [
                        ("alert_id", alert.id.as_str()),
                        ("rule_id", alert.rule_id.as_str()),
                        ("severity", alert.severity.as_str()),
                    ];
                    // Retried by librdkafka within message.timeout.ms; an
                    // error here is after those retries.
                    match producer.send(&topic, &key, &payload, &headers).await {
                        Ok(()) => metrics.alerts_delivered_kafka.fetch_add(1, Relaxed),
                        Err(e) => {
                            tracing::error!(error = %e, alert = %alert.id, "alert not delivered to Kafka");
                            metrics.alert_delivery_errors.fetch_add(1, Relaxed)
                        }
                    };
                });
            }
        }
        // Fired and suppressed alerts alike go to the `alerts` table.
        match batch {
            Ok(batch) => archive.send_local(batch).await,
            Err(e) => tracing::error!(error = %e, "converting alerts for the archive"),
        }
        for alert in alerts {
            match alert.status {
                AlertStatus::Fired => metrics.alerts_fired.fetch_add(1, Relaxed),
                AlertStatus::Suppressed => metrics.alerts_suppressed.fetch_add(1, Relaxed),
            };
            let _ = hub.live.send(alert);
        }
    }
}

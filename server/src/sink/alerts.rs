//! The alert hub: every alert the engine emits goes to the history log
//! (queryable by `GET /api/alerts`), the live feed (SSE), and, when Kafka is
//! configured, the `alert-events` topic keyed by patient with the alert id
//! as a header. Suppressed alerts are recorded and counted, not delivered
//! to Kafka or people.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use catalog::log::JsonLog;
use sql_rules::{Alert, AlertStatus};
use tokio::sync::{broadcast, mpsc::UnboundedReceiver};

use super::kafka::KafkaProducer;
use crate::metrics::Metrics;

pub struct AlertHub {
    pub log: JsonLog,
    pub live: broadcast::Sender<Arc<Alert>>,
    /// Acknowledgements: who saw an alert, when, with what note.
    pub acks: JsonLog,
    ack_index: std::sync::RwLock<std::collections::HashMap<String, serde_json::Value>>,
}

impl AlertHub {
    pub fn new(log: JsonLog, acks: JsonLog) -> Self {
        let (live, _) = broadcast::channel(4096);
        let mut index = std::collections::HashMap::new();
        // Oldest first, so the latest acknowledgement of an alert wins.
        for ack in acks.recent(usize::MAX, |_| true).into_iter().rev() {
            if let Some(id) = ack.get("alert_id").and_then(|v| v.as_str()) {
                index.insert(id.to_string(), ack.clone());
            }
        }
        Self {
            log,
            live,
            acks,
            ack_index: std::sync::RwLock::new(index),
        }
    }

    /// Records an acknowledgement (kept in history; a later one supersedes
    /// the earlier in alert views).
    pub async fn acknowledge(&self, ack: serde_json::Value) -> Result<(), catalog::CatalogError> {
        self.acks.append(std::slice::from_ref(&ack)).await?;
        if let Some(id) = ack.get("alert_id").and_then(|v| v.as_str()) {
            self.ack_index
                .write()
                .expect("ack index lock")
                .insert(id.to_string(), ack.clone());
        }
        Ok(())
    }

    /// Adds the `ack` field to alert records that have one.
    pub fn with_acks(&self, mut alerts: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
        let index = self.ack_index.read().expect("ack index lock");
        for a in &mut alerts {
            let ack = a
                .get("id")
                .and_then(|v| v.as_str())
                .and_then(|id| index.get(id))
                .cloned();
            if let (Some(ack), Some(obj)) = (ack, a.as_object_mut()) {
                obj.insert("ack".into(), ack);
            }
        }
        alerts
    }
}

/// Filters accepted by `GET /api/alerts`.
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
    pub fn matches(&self, a: &serde_json::Value) -> bool {
        let s = |k: &str| a.get(k).and_then(|v| v.as_str());
        let t = a.get("event_time_ms").and_then(|v| v.as_i64()).unwrap_or(0);
        self.rule
            .as_deref()
            .is_none_or(|r| s("rule_id") == Some(r) || s("rule_name") == Some(r))
            && self.patient.as_deref().is_none_or(|p| {
                a.get("key")
                    .and_then(|k| k.get("patient_id"))
                    .and_then(|v| v.as_str())
                    == Some(p)
            })
            && self
                .severity
                .as_deref()
                .is_none_or(|x| s("severity") == Some(x))
            && self
                .status
                .as_deref()
                .is_none_or(|x| s("status") == Some(x))
            && self.since.is_none_or(|since| t >= since)
            && self.until.is_none_or(|until| t < until)
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
        // Kafka first: people wait on it, while history and the archive may
        // be busy writing a file. Live subscribers hear of an alert once
        // history has it, so what they see they can also look up.
        let records: Vec<serde_json::Value> = pending
            .iter()
            .map(|a| serde_json::to_value(a).expect("alerts serialize"))
            .collect();
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
        if let Err(e) = hub.log.append(&records).await {
            tracing::error!(error = %e, "recording alerts in history");
        }
        for alert in alerts {
            match alert.status {
                AlertStatus::Fired => metrics.alerts_fired.fetch_add(1, Relaxed),
                AlertStatus::Suppressed => metrics.alerts_suppressed.fetch_add(1, Relaxed),
            };
            let _ = hub.live.send(alert);
        }
        // Fired and suppressed alerts alike go to the `alerts` table.
        match catalog::archive::alerts_to_batch(&records) {
            Ok(batch) => archive.send_local(batch).await,
            Err(e) => tracing::error!(error = %e, "converting alerts for the archive"),
        }
    }
}

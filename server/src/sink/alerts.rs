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
    /// Serialises acknowledgements, so "already acknowledged?" and the
    /// write are one step.
    ack_writes: tokio::sync::Mutex<()>,
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
            ack_writes: tokio::sync::Mutex::new(()),
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

    /// Records an acknowledgement unless the alert has one already; then
    /// nothing is written and the earlier one is returned. Concurrent
    /// acknowledgements of one alert: exactly one is recorded.
    pub async fn acknowledge_once(
        &self,
        ack: Value,
    ) -> Result<Option<Value>, catalog::CatalogError> {
        let _one_at_a_time = self.ack_writes.lock().await;
        if let Some(id) = ack.get("alert_id").and_then(Value::as_str) {
            if let Some(earlier) = self.ack_index.read().expect("ack index lock").get(id) {
                return Ok(Some(earlier.clone()));
            }
        }
        self.acknowledge(ack).await?;
        Ok(None)
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
    /// For a caller limited to these hospitals: only alerts whose
    /// `hospital_id` is one of them. An alert without a hospital is no
    /// one's, so a limited caller never sees it. `None`: not limited. Set
    /// by the handler from the caller, never from the query string.
    #[serde(skip)]
    pub hospitals: Option<Vec<String>>,
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
            && self.hospitals.as_ref().is_none_or(|hospitals| {
                a.hospital_id
                    .as_ref()
                    .is_some_and(|h| hospitals.contains(h))
            })
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
            hospitals: self.hospitals.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(hospital: Option<&str>) -> Alert {
        serde_json::from_value(serde_json::json!({
            "id": "a", "rule_id": "r", "rule_version": 1, "rule_name": "R",
            "severity": "high", "status": "fired", "key": {"patient_id": "P1"},
            "hospital_id": hospital, "window_start_ms": null, "window_end_ms": null,
            "values": {}, "event_time_ms": 0, "fired_at_ms": 0,
            "explanation": {"condition": "", "event_count": 1,
                            "first_event_ms": 0, "last_event_ms": 0},
        }))
        .unwrap()
    }

    #[test]
    fn a_filter_limited_to_hospitals_passes_only_their_alerts() {
        let (h1, h2, nowhere) = (alert(Some("H1")), alert(Some("H2")), alert(None));
        let open = AlertFilter::default();
        assert!(open.matches(&h1) && open.matches(&h2) && open.matches(&nowhere));

        let limited = AlertFilter {
            hospitals: Some(vec!["H1".into(), "H3".into()]),
            ..AlertFilter::default()
        };
        assert!(limited.matches(&h1));
        assert!(!limited.matches(&h2));
        assert!(!limited.matches(&nowhere), "no hospital: no one's");
        let none = AlertFilter {
            hospitals: Some(vec![]),
            ..AlertFilter::default()
        };
        assert!(!none.matches(&h1) && !none.matches(&nowhere));

        // History is asked the same.
        let query = limited.history_query(10).unwrap();
        assert_eq!(query.hospitals, limited.hospitals);
        assert_eq!(open.history_query(10).unwrap().hospitals, None);
    }

    #[test]
    fn hospitals_cannot_be_set_from_a_query_string() {
        let filter: AlertFilter =
            serde_json::from_value(serde_json::json!({"hospitals": ["H1"], "rule": "r"})).unwrap();
        assert_eq!(filter.hospitals, None);
        assert_eq!(filter.rule.as_deref(), Some("r"));
    }
}

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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use catalog::alert_history::AlertQuery;
use catalog::log::JsonLog;
use futures::FutureExt;
use serde_json::Value;
use sql_rules::{Alert, AlertStatus};
use tokio::sync::{broadcast, mpsc::UnboundedReceiver, oneshot};
use tokio::task::JoinHandle;

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

    /// The ids of alerts acknowledged at or after `since_ms` (all with
    /// `None`), the most recent [`MAX_ACK_FILTER`] of them.
    pub fn acknowledged_ids(&self, since_ms: Option<i64>) -> Vec<String> {
        let index = self.ack_index.read().expect("ack index lock");
        let at = |ack: &Value| ack.get("at_ms").and_then(Value::as_i64).unwrap_or(i64::MAX);
        let mut acked: Vec<(i64, &String)> = index
            .iter()
            .map(|(id, ack)| (at(ack), id))
            .filter(|(at, _)| since_ms.is_none_or(|since| *at >= since))
            .collect();
        if acked.len() > MAX_ACK_FILTER {
            acked.select_nth_unstable_by(MAX_ACK_FILTER, |a, b| b.0.cmp(&a.0));
            acked.truncate(MAX_ACK_FILTER);
        }
        acked.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Reads the acknowledgements other instances sharing the store made
    /// since the last look into the index. Where two instances acknowledged
    /// one alert at once, the earlier acknowledgement wins on every
    /// instance.
    pub async fn refresh_acks(&self) -> Result<usize, catalog::CatalogError> {
        let arrived = self.acks.refresh().await?;
        let at = |ack: &Value| ack.get("at_ms").and_then(Value::as_i64).unwrap_or(i64::MAX);
        let mut index = self.ack_index.write().expect("ack index lock");
        for ack in &arrived {
            let Some(id) = ack.get("alert_id").and_then(Value::as_str) else {
                continue;
            };
            match index.get(id) {
                Some(known) if at(known) <= at(ack) => {}
                _ => {
                    index.insert(id.to_string(), ack.clone());
                }
            }
        }
        Ok(arrived.len())
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

/// Acknowledgements an `acknowledged=` filter considers at most (the most
/// recent): it widens each scan by as many rows.
pub const MAX_ACK_FILTER: usize = 100_000;

/// An alert is acknowledged after it happened, give or take the clock skew
/// events may have (`max_future_skew_ms` is at most minutes): an alert of
/// event time `t` was not acknowledged before `t` − this.
const ACK_BEFORE_EVENT_MS: i64 = 24 * 3_600_000;

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
    /// `Some(false)`: only alerts nobody has acknowledged; `Some(true)`: only
    /// acknowledged ones.
    pub acknowledged: Option<bool>,
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
            // Live alerts are new: none is acknowledged yet.
            && self.acknowledged != Some(true)
            && self.hospitals.as_ref().is_none_or(|hospitals| {
                a.hospital_id
                    .as_ref()
                    .is_some_and(|h| hospitals.contains(h))
            })
    }

    /// The history query for this filter, returning at most `limit` alerts;
    /// `None` when nothing can match (a status that is neither `fired` nor
    /// `suppressed`).
    /// `acknowledged(since)`: the ids of alerts acknowledged at or after
    /// `since`, asked for only when the filter needs it (only the ones that
    /// can be of alerts in the filter's time range).
    pub fn history_query(
        &self,
        limit: usize,
        acknowledged: impl FnOnce(Option<i64>) -> Vec<String>,
    ) -> Option<AlertQuery> {
        let status = match self.status.as_deref() {
            None => None,
            Some("fired") => Some(AlertStatus::Fired),
            Some("suppressed") => Some(AlertStatus::Suppressed),
            Some(_) => return None,
        };
        let mut query = AlertQuery {
            rule: self.rule.clone(),
            patient: self.patient.clone(),
            hospitals: self.hospitals.clone(),
            severity: self.severity.clone(),
            status,
            id: None,
            since_ms: self.since,
            until_ms: self.until,
            limit,
            ..AlertQuery::default()
        };
        let acked_since = self
            .since
            .map(|since| since.saturating_sub(ACK_BEFORE_EVENT_MS));
        match self.acknowledged {
            Some(true) => query.only_ids = Some(acknowledged(acked_since)),
            Some(false) => {
                query.exclude_ids = Some(std::sync::Arc::new(
                    acknowledged(acked_since).into_iter().collect(),
                ))
            }
            None => {}
        }
        Some(query)
    }
}

/// What the engine thread hands to delivery, in order.
pub enum Delivery {
    Alerts(Vec<Alert>),
    /// A checkpoint took the engine's state here. Answered once every alert
    /// sent before it is confirmed by Kafka (retried until it is), so a
    /// checkpoint never covers an alert that could still be lost.
    Mark(tokio::sync::oneshot::Sender<DeliveryMark>),
}

/// Where delivery stood at a [`Delivery::Mark`].
#[derive(Debug, Clone, Default)]
pub struct DeliveryMark {
    /// Per partition of the alert topic, one past the last offset Kafka
    /// confirmed for an alert sent before the mark (never below the topic's
    /// end when delivery started): every alert sent after the mark is at or
    /// past it.
    pub positions: BTreeMap<i32, i64>,
    /// Alerts recorded before the mark that the alert history has not
    /// written to storage yet (fired and suppressed alike): a checkpoint
    /// keeps them, so a crash cannot lose them with the history's buffer.
    pub unwritten: Vec<Alert>,
}

/// Alerts delivered before a crash, learnt when the latest checkpoint is
/// restored: the restored engine makes them again (same ids) and delivery
/// lets each through nowhere it already reached.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Already on the alert topic, with where (partition, offset): not
    /// produced or sent live again. Until an alert is made again, marks
    /// report no position past it, so a checkpoint taken meanwhile still
    /// reads it back.
    pub on_kafka: HashMap<String, (i32, i64)>,
    /// Already in the alert history: not recorded again.
    pub in_history: HashSet<String>,
}

/// Alerts in the history's buffer past this many (its writer is stuck):
/// the oldest are no longer carried in checkpoints.
const MAX_UNWRITTEN: usize = 100_000;

/// Delivers alerts until the engine's sender is dropped. `start_positions`:
/// where alerts sent from now on land at or past (the alert topic's end
/// when delivery started, or the restored checkpoint's positions).
pub async fn deliver(
    mut rx: UnboundedReceiver<Delivery>,
    hub: Arc<AlertHub>,
    kafka: Option<(KafkaProducer, String)>,
    metrics: Arc<Metrics>,
    archive: crate::archive::ArchiveHandle,
    start_positions: BTreeMap<i32, i64>,
    delivered: Delivered,
) {
    let mut task = DeliveryTask {
        hub,
        kafka,
        metrics,
        archive,
        delivered,
        start_positions,
        pending: Vec::new(),
        outstanding: Vec::new(),
        confirmed: BTreeMap::new(),
        previous: None,
        unwritten: VecDeque::new(),
    };
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        // Take everything queued, so history is appended in batches.
        while let Ok(more) = rx.try_recv() {
            items.push(more);
        }
        for item in items {
            match item {
                Delivery::Alerts(alerts) => task.pending.extend(alerts),
                Delivery::Mark(reply) => {
                    // What came before the mark goes out before it.
                    task.deliver_pending().await;
                    task.mark(reply);
                }
            }
        }
        task.deliver_pending().await;
        task.harvest();
    }
}

struct DeliveryTask {
    hub: Arc<AlertHub>,
    kafka: Option<(KafkaProducer, String)>,
    metrics: Arc<Metrics>,
    archive: crate::archive::ArchiveHandle,
    delivered: Delivered,
    start_positions: BTreeMap<i32, i64>,
    pending: Vec<Alert>,
    /// Kafka sends since the last mark, each answering where it landed.
    outstanding: Vec<JoinHandle<Option<(i32, i64)>>>,
    /// Where the sends since the last mark that already finished landed.
    confirmed: BTreeMap<i32, i64>,
    /// The previous mark's positions, which the next mark starts from.
    previous: Option<oneshot::Receiver<BTreeMap<i32, i64>>>,
    /// Alerts handed to the history with the archive offset of their batch,
    /// until the history has written that far.
    unwritten: VecDeque<(i64, Alert)>,
}

impl DeliveryTask {
    /// Delivers what is pending: Kafka first (people wait on it, while the
    /// archive may be busy writing a file), then history, then live
    /// subscribers, who hear of an alert once history has it (`send_local`
    /// returns when the rows are buffered, and history reads buffered
    /// rows), so what they see they can also look up.
    async fn deliver_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let alerts: Vec<Arc<Alert>> = self.pending.drain(..).map(Arc::new).collect();
        // Made again after a restore: where each already went, it does not go again.
        let delivered = &mut self.delivered;
        let mut reached_kafka = Vec::with_capacity(alerts.len());
        let mut to_history = Vec::with_capacity(alerts.len());
        for alert in &alerts {
            let on_kafka =
                !delivered.on_kafka.is_empty() && delivered.on_kafka.remove(&alert.id).is_some();
            if on_kafka {
                self.metrics.alerts_resuppressed.fetch_add(1, Relaxed);
            }
            reached_kafka.push(on_kafka);
            if delivered.in_history.is_empty() || !delivered.in_history.remove(&alert.id) {
                to_history.push(alert.as_ref().clone());
            }
        }
        for (alert, &on_kafka) in alerts.iter().zip(&reached_kafka) {
            if alert.status != AlertStatus::Fired || on_kafka {
                continue;
            }
            if let Some((producer, topic)) = &self.kafka {
                self.outstanding.push(tokio::spawn(produce_until_confirmed(
                    producer.clone(),
                    topic.clone(),
                    Arc::clone(&self.metrics),
                    Arc::clone(alert),
                )));
            }
        }
        // Fired and suppressed alerts alike go to the `alerts` table.
        if !to_history.is_empty() {
            match catalog::archive::alerts_to_batch(&to_history) {
                Ok(batch) => {
                    if let Some(last) = self.archive.send_local(batch).await {
                        self.unwritten
                            .extend(to_history.into_iter().map(|a| (last, a)));
                    }
                }
                Err(e) => tracing::error!(error = %e, "converting alerts for the archive"),
            }
        }
        for (alert, on_kafka) in alerts.into_iter().zip(reached_kafka) {
            match alert.status {
                AlertStatus::Fired => self.metrics.alerts_fired.fetch_add(1, Relaxed),
                AlertStatus::Suppressed => self.metrics.alerts_suppressed.fetch_add(1, Relaxed),
            };
            if !on_kafka {
                let _ = self.hub.live.send(alert);
            }
        }
    }

    /// Answers a mark once every Kafka send before it is confirmed, with
    /// the positions they reached and the alerts history has not written.
    fn mark(&mut self, reply: oneshot::Sender<DeliveryMark>) {
        let written = self.archive.durable_offset(self.archive.local_partition());
        self.unwritten
            .retain(|(offset, _)| written.is_none_or(|w| *offset > w));
        if self.unwritten.len() > MAX_UNWRITTEN {
            tracing::error!(
                unwritten = self.unwritten.len(),
                "the alert history is not writing; checkpoints carry only its newest alerts"
            );
            let excess = self.unwritten.len() - MAX_UNWRITTEN;
            self.unwritten.drain(..excess);
        }
        let unwritten = self.unwritten.iter().map(|(_, a)| a.clone()).collect();
        // Delivered before a restore and not made again yet: a checkpoint's
        // state precedes them, so its positions must too.
        let mut awaited: BTreeMap<i32, i64> = BTreeMap::new();
        for &(partition, offset) in self.delivered.on_kafka.values() {
            let at = awaited.entry(partition).or_insert(offset);
            *at = (*at).min(offset);
        }
        let handles = std::mem::take(&mut self.outstanding);
        let landed = std::mem::take(&mut self.confirmed);
        let before = self.previous.take();
        let (next, after) = oneshot::channel();
        self.previous = Some(after);
        let start = self.start_positions.clone();
        tokio::spawn(async move {
            let mut positions = match before {
                Some(before) => before.await.unwrap_or(start),
                None => start,
            };
            let finished = handles
                .into_iter()
                .map(|h| async move { h.await.ok().flatten() });
            for (partition, offset) in futures::future::join_all(finished)
                .await
                .into_iter()
                .flatten()
            {
                raise(&mut positions, partition, offset + 1);
            }
            for (partition, next) in landed {
                raise(&mut positions, partition, next);
            }
            let _ = next.send(positions.clone());
            for (partition, offset) in awaited {
                let at = positions.entry(partition).or_insert(offset);
                *at = (*at).min(offset);
            }
            let _ = reply.send(DeliveryMark {
                positions,
                unwritten,
            });
        });
    }

    /// Confirmed sends are harvested now, so the list stays short when no
    /// mark comes (checkpoints off).
    fn harvest(&mut self) {
        let confirmed = &mut self.confirmed;
        self.outstanding.retain_mut(|handle| {
            if !handle.is_finished() {
                return true;
            }
            if let Some(Ok(Some((partition, offset)))) = handle.now_or_never() {
                raise(confirmed, partition, offset + 1);
            }
            false
        });
    }
}

/// `positions[partition] = max(positions[partition], next)`.
fn raise(positions: &mut BTreeMap<i32, i64>, partition: i32, next: i64) {
    let at = positions.entry(partition).or_insert(next);
    *at = (*at).max(next);
}

/// Produces one alert, retrying (with backoff up to 30 s) until Kafka
/// confirms it: an alert is never given up while the process lives, and a
/// checkpoint waits for it. Returns the (partition, offset) it landed at.
async fn produce_until_confirmed(
    producer: KafkaProducer,
    topic: String,
    metrics: Arc<Metrics>,
    alert: Arc<Alert>,
) -> Option<(i32, i64)> {
    let payload = serde_json::to_vec(alert.as_ref()).expect("alerts serialize");
    let key = alert.patient_id().unwrap_or(&alert.rule_id).to_string();
    let headers = [
        ("alert_id", alert.id.as_str()),
        ("rule_id", alert.rule_id.as_str()),
        ("severity", alert.severity.as_str()),
    ];
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        // librdkafka retries within message.timeout.ms; an error here is
        // after those retries.
        match producer.send_at(&topic, &key, &payload, &headers).await {
            Ok(position) => {
                metrics.alerts_delivered_kafka.fetch_add(1, Relaxed);
                return Some(position);
            }
            Err(e) => {
                tracing::error!(error = %e, alert = %alert.id, "alert not delivered to Kafka yet; retrying");
                metrics.alert_delivery_errors.fetch_add(1, Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
            }
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
        let query = limited.history_query(10, |_| Vec::new()).unwrap();
        assert_eq!(query.hospitals, limited.hospitals);
        assert_eq!(
            open.history_query(10, |_| Vec::new()).unwrap().hospitals,
            None
        );
    }

    #[test]
    fn hospitals_cannot_be_set_from_a_query_string() {
        let filter: AlertFilter =
            serde_json::from_value(serde_json::json!({"hospitals": ["H1"], "rule": "r"})).unwrap();
        assert_eq!(filter.hospitals, None);
        assert_eq!(filter.rule.as_deref(), Some("r"));
    }
}

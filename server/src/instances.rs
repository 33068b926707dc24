//! Who runs on a shared data directory.
//!
//! Every instance with an `[instance] id` writes `instances/i{id}.json`
//! (its role, partitions, address, pid) every [`ANNOUNCE_EVERY`] and
//! deletes it when it stops cleanly. This is status, not coordination:
//! Kafka assignment (`[kafka] partitions`) decides who reads what. It lets
//! `GET /api/ops` list the instances, and lets the API refuse a rule that
//! no live instance would run (a rule that is stored but never evaluated
//! is alerting that silently does not happen).

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::config::{Config, InstanceRole};
use crate::shutdown::ShutdownNotice;

/// How often an instance says it is alive.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// An instance not heard from for this long counts as gone (a process
/// killed without a clean stop leaves its file behind).
pub const LIVE_FOR_MS: i64 = 10_000;

const DIR: &str = "instances";

/// One instance, as it last described itself.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStatus {
    pub id: u32,
    /// `all`, `patient_rules` or `global_rules`.
    pub role: String,
    /// The Kafka partitions it reads (`[]`: all; absent: group member or
    /// no Kafka).
    pub partitions: Option<Vec<i32>>,
    pub listen: String,
    pub pid: u32,
    pub started_at_ms: i64,
    pub seen_at_ms: i64,
    /// Heard from within the last 10 s (computed when read).
    #[serde(default)]
    pub live: bool,
}

fn role_name(role: InstanceRole) -> &'static str {
    match role {
        InstanceRole::All => "all",
        InstanceRole::PatientRules => "patient_rules",
        InstanceRole::GlobalRules => "global_rules",
    }
}

fn path(prefix: &Path, id: u32) -> Path {
    prefix.clone().join(DIR).join(format!("i{id}.json"))
}

/// Announces this instance until the shutdown notice, then removes its
/// file. Nothing to do without an id.
pub fn spawn(
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    config: &Config,
    stop: ShutdownNotice,
) -> Option<tokio::task::JoinHandle<()>> {
    let id = config.instance.id?;
    let mut status = InstanceStatus {
        id,
        role: role_name(config.instance.role).into(),
        partitions: config.kafka.partitions.clone(),
        listen: config.listen.to_string(),
        pid: std::process::id(),
        started_at_ms: now_ms(),
        seen_at_ms: 0,
        live: true,
    };
    let at = path(&prefix, id);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.clone().requested() => break,
            }
            status.seen_at_ms = now_ms();
            let body = serde_json::to_vec(&status).unwrap_or_default();
            if let Err(e) = store.put(&at, PutPayload::from(body)).await {
                tracing::warn!(error = %e, "announcing this instance");
            }
        }
        let _ = store.delete(&at).await;
    }))
}

/// Every instance that announced itself, live or not, by id.
pub async fn list(store: &dyn ObjectStore, prefix: &Path) -> Vec<InstanceStatus> {
    use futures::TryStreamExt;
    let dir = prefix.clone().join(DIR);
    let objects: Vec<_> = match store.list(Some(&dir)).try_collect().await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!(error = %e, "listing instances");
            return Vec::new();
        }
    };
    let now = now_ms();
    let mut found = Vec::new();
    for o in objects {
        let Ok(got) = store.get(&o.location).await else {
            continue; // removed by its stop meanwhile
        };
        let Ok(bytes) = got.bytes().await else {
            continue;
        };
        if let Ok(mut status) = serde_json::from_slice::<InstanceStatus>(&bytes) {
            status.live = now - status.seen_at_ms < LIVE_FOR_MS;
            found.push(status);
        }
    }
    found.sort_by_key(|s| s.id);
    found
}

/// Whether `instance` is live and runs rules keyed (or not) by patient.
pub fn runs_live(instance: &InstanceStatus, keyed_by_patient: bool) -> bool {
    instance.live
        && match instance.role.as_str() {
            "all" => true,
            "patient_rules" => keyed_by_patient,
            "global_rules" => !keyed_by_patient,
            _ => false,
        }
}

/// Refuses a rule no live instance would run: on a `patient_rules`
/// instance, a rule not grouped by `patient_id` runs only where a
/// `global_rules` instance is live. `None`: it will run.
pub async fn unplaced(
    config: &Config,
    store: &dyn ObjectStore,
    prefix: &Path,
    keyed_by_patient: bool,
) -> Option<String> {
    let role = config.instance.role;
    if role.runs(keyed_by_patient) {
        return None;
    }
    let live = list(store, prefix)
        .await
        .iter()
        .any(|s| runs_live(s, keyed_by_patient));
    (!live).then(|| {
        if keyed_by_patient {
            "this rule is grouped by patient_id: it runs on the patient_rules instances, \
             and none is running; start one, or submit it where one runs"
                .to_string()
        } else {
            "this rule is not grouped by patient_id (it needs every partition's events): \
             it runs on the instance with [instance] role = \"global_rules\", and none is \
             running; start one before adding the rule"
                .to_string()
        }
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

//! Hospitals onboarded over the API (`/api/hospitals`) and the rule
//! templates they start with (`/api/rule-templates`).

use catalog::hospitals::HospitalRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/hospitals`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHospitalRequest {
    /// The `hospital_id` its events carry: 1–128 letters, digits, `-`, `_`
    /// or `.`.
    pub id: String,
    /// 1–200 characters.
    pub name: String,
    /// IANA time zone, e.g. `Europe/Amsterdam`.
    pub time_zone: String,
    /// Where its events come from. Absent or the server's vitals topic:
    /// the shared topic, events carrying this `hospital_id`. Another name: a
    /// Kafka topic of its own (it may not exist yet), read from the moment
    /// of onboarding, without a restart. Its events need no `hospital_id`
    /// (they get this one); one naming another hospital is a dead letter.
    #[serde(default)]
    pub topic: Option<String>,
    /// Rule templates (`GET /api/rule-templates`) to start it with: each
    /// becomes a rule limited to this hospital.
    #[serde(default)]
    pub templates: Vec<String>,
}

/// `PUT /api/hospitals/{id}`: what may change.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateHospitalRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// A hospital as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HospitalView {
    pub id: String,
    pub name: String,
    pub time_zone: String,
    /// The rules made for it at onboarding.
    pub rule_ids: Vec<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub updated_at_ms: i64,
    /// Set once retired: its onboarding rules are deactivated (and its own
    /// topic no longer read).
    pub retired_at_ms: Option<i64>,
    /// Its own Kafka topic; null when its events come on the shared one.
    #[schema(required)]
    pub topic: Option<String>,
}

impl From<HospitalRecord> for HospitalView {
    fn from(h: HospitalRecord) -> Self {
        Self {
            id: h.id,
            name: h.name,
            time_zone: h.time_zone,
            rule_ids: h.rule_ids,
            created_at_ms: h.created_at_ms,
            created_by: h.created_by,
            updated_at_ms: h.updated_at_ms,
            retired_at_ms: h.retired_at_ms,
            topic: h.topic.map(|t| t.name),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HospitalList {
    pub hospitals: Vec<HospitalView>,
}

/// A rule a hospital can start with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleTemplateView {
    /// What `templates` names, e.g. `critical-spo2-reading`.
    pub template: String,
    pub name: String,
    pub severity: String,
    pub cooldown_seconds: u64,
    pub sql: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleTemplateList {
    pub templates: Vec<RuleTemplateView>,
}

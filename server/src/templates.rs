//! Rule templates: the clinical starter rules a hospital is onboarded with
//! (`POST /api/hospitals` with `templates`) and the demo starts with.

use catalog::rules::{RuleDraft, Severity};

/// A named starter rule.
#[derive(Debug, Clone)]
pub struct Template {
    /// What `templates` names: the rule's name in lower case with hyphens.
    pub template: String,
    pub draft: RuleDraft,
}

/// The starter rules, by template name.
pub fn starter_rules() -> Vec<Template> {
    let rule = |name: &str, severity: Severity, cooldown: u64, sql: &str| Template {
        template: name.to_lowercase().replace(' ', "-"),
        draft: RuleDraft {
            name: name.into(),
            sql: sql.trim().into(),
            severity,
            cooldown_seconds: cooldown,
            allowed_lateness_ms: None,
            description: None,
            keep_duplicates: false,
            escalation: None,
            hospital_id: None,
        },
    };
    vec![
        rule(
            "Sustained tachycardia",
            Severity::High,
            300,
            "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n,
       TUMBLE_END(event_time, INTERVAL '60' SECOND) AS window_end
FROM vitals WHERE heart_rate_bpm > 100
GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id
HAVING COUNT(*) >= 5 AND AVG(heart_rate_bpm) > 110",
        ),
        rule(
            "Sustained hypoxemia",
            Severity::High,
            300,
            "SELECT patient_id, AVG(spo2_pct) AS avg_spo2, COUNT(*) AS n,
       HOP_END(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE) AS window_end
FROM vitals
GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), patient_id
HAVING AVG(spo2_pct) < 90 AND COUNT(*) >= 10",
        ),
        rule(
            "Bradycardia",
            Severity::Medium,
            300,
            "SELECT patient_id, MAX(heart_rate_bpm) AS max_hr
FROM vitals
GROUP BY TUMBLE(event_time, INTERVAL '30' SECOND), patient_id
HAVING MAX(heart_rate_bpm) < 45",
        ),
        rule(
            "Critical SpO2 reading",
            Severity::Critical,
            120,
            "SELECT patient_id, hospital_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
        ),
    ]
}

/// The template named `name`.
pub fn find(name: &str) -> Option<Template> {
    starter_rules().into_iter().find(|t| t.template == name)
}

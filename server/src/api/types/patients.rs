use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

// ---------------------------------------------------------------- patients

/// Query string of `GET /api/patients/{patient_id}/vitals`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PatientVitalsParams {
    /// Event time from (Unix ms, inclusive); default `until` − 1 h.
    pub since: Option<i64>,
    /// Event time until (Unix ms, exclusive); default now. At most 24 h
    /// after `since`.
    pub until: Option<i64>,
}

/// `GET /api/patients/{patient_id}/vitals`: the archived readings, oldest
/// first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PatientVitals {
    pub patient_id: String,
    pub since: i64,
    pub until: i64,
    pub readings: Vec<ReadingView>,
    /// More readings than the 10,000 returned were in the range (the
    /// newest are left out).
    pub truncated: bool,
}

/// One archived reading; absent measurements are null.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReadingView {
    pub event_time_ms: i64,
    #[schema(required)]
    pub hospital_id: Option<String>,
    #[schema(required)]
    pub heart_rate_bpm: Option<f64>,
    #[schema(required)]
    pub spo2_pct: Option<f64>,
    #[schema(required)]
    pub respiration_rate: Option<f64>,
    #[schema(required)]
    pub systolic_bp_mmhg: Option<f64>,
    #[schema(required)]
    pub diastolic_bp_mmhg: Option<f64>,
    #[schema(required)]
    pub source_device: Option<String>,
}

impl From<catalog::patient_history::Reading> for ReadingView {
    fn from(r: catalog::patient_history::Reading) -> Self {
        // Spelt out, so a field added to the domain type fails to compile here.
        let catalog::patient_history::Reading {
            event_time_ms,
            hospital_id,
            heart_rate_bpm,
            spo2_pct,
            respiration_rate,
            systolic_bp_mmhg,
            diastolic_bp_mmhg,
            source_device,
        } = r;
        Self {
            event_time_ms,
            hospital_id,
            heart_rate_bpm,
            spo2_pct,
            respiration_rate,
            systolic_bp_mmhg,
            diastolic_bp_mmhg,
            source_device,
        }
    }
}

// ---------------------------------------------------------------- alert rate

/// Query string of `GET /api/rules/{id}/alert-rate`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertRateParams {
    /// Event time from (Unix ms, inclusive); default `until` − 24 h.
    pub since: Option<i64>,
    /// Event time until (Unix ms, exclusive); default now.
    pub until: Option<i64>,
    /// Bucket size in ms (default 1 h, at least 1 min); at most 1,440
    /// buckets in the range.
    pub bucket_ms: Option<i64>,
}

/// `GET /api/rules/{id}/alert-rate`: a rule's alerts (all versions) per
/// bucket of event time, from the alert history; empty buckets left out.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertRate {
    pub rule_id: String,
    pub since: i64,
    pub until: i64,
    pub bucket_ms: i64,
    pub buckets: Vec<RateBucketView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RateBucketView {
    /// The bucket's start (Unix ms, a multiple of `bucket_ms`).
    pub start_ms: i64,
    pub fired: u64,
    pub suppressed: u64,
}

impl From<catalog::alert_history::RateBucket> for RateBucketView {
    fn from(b: catalog::alert_history::RateBucket) -> Self {
        let catalog::alert_history::RateBucket {
            start_ms,
            fired,
            suppressed,
        } = b;
        Self {
            start_ms,
            fired,
            suppressed,
        }
    }
}

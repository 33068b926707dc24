//! Onboarding a hospital by API, live without a restart: `POST
//! /api/hospitals` records it and makes its starter rules from templates,
//! each limited to its `hospital_id` and running at once; its events are
//! those on the shared vitals topic (or `POST /api/ingest`) that carry its
//! id, or those on a Kafka topic of its own, read from the moment it is
//! onboarded (see [`crate::source::topics`]). Hospitals are listed, changed and retired (its rules deactivated)
//! over the same routes, every change in the audit log.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use catalog::hospitals::{valid_id, HospitalRecord, HospitalStore};
use serde_json::json;

use super::error::ApiError;
use super::types::{
    CreateHospitalRequest, ErrorBody, HospitalList, HospitalView, RuleTemplateList,
    RuleTemplateView, UpdateHospitalRequest,
};
use super::SharedState;
use crate::auth::{need, Caller, Principal};
use crate::pipeline::Input;

const MAX_NAME_CHARS: usize = 200;
const MAX_TIME_ZONE_CHARS: usize = 64;
const MAX_TEMPLATES: usize = 32;
/// Kafka's own limit on a topic name's length.
const MAX_TOPIC_CHARS: usize = 249;

static ONBOARDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A topic of its own: a Kafka topic name (letters, digits, `.`, `_`, `-`),
/// on a server that reads Kafka, and not one of the server's other topics.
fn check_topic(state: &SharedState, topic: &str) -> Result<(), ApiError> {
    let kafka = &state.config.kafka;
    if state.topics.is_none() {
        return Err(ApiError::bad_request(format!(
            "this server reads no Kafka (no [kafka] brokers): a topic of its own ('{topic}') \
             cannot be read; send its events to POST /api/ingest"
        )));
    }
    let valid = !topic.is_empty()
        && topic.chars().count() <= MAX_TOPIC_CHARS
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(ApiError::bad_request(format!(
            "`topic` must be a Kafka topic name: 1–{MAX_TOPIC_CHARS} letters, digits, '.', '_' or '-'"
        )));
    }
    if topic == kafka.alerts_topic || topic == kafka.dlq_topic {
        return Err(ApiError::bad_request(format!(
            "'{topic}' is one of the server's own topics (alerts or dead letters)"
        )));
    }
    Ok(())
}

/// The topic record for `name`: the next source number, after every
/// hospital's (retired ones' too: their numbers name archive files). A
/// topic another hospital has (or had) is refused.
async fn allocate_topic(
    hospitals: &HospitalStore,
    name: &str,
) -> Result<catalog::hospitals::HospitalTopic, ApiError> {
    let (all, damaged) = hospitals.list().await?;
    // A damaged record may hold a topic or a number: none is handed out
    // until it is repaired.
    if let Some(d) = damaged.first() {
        return Err(ApiError::unavailable(format!(
            "a hospital record cannot be read ({}): a topic of its own cannot be numbered \
             safely until it is repaired",
            d.path
        )));
    }
    if let Some(other) = all
        .iter()
        .find(|h| h.topic.as_ref().is_some_and(|t| t.name == name))
    {
        return Err(ApiError::conflict(format!(
            "topic '{name}' is hospital '{}''s already",
            other.id
        )));
    }
    let next = all
        .iter()
        .filter_map(|h| h.topic.as_ref().map(|t| t.source))
        .max()
        .unwrap_or(0)
        + 1;
    if next > crate::source::topics::MAX_SOURCE {
        return Err(ApiError::bad_request(format!(
            "no more hospital topics can be numbered (at most {})",
            crate::source::topics::MAX_SOURCE
        )));
    }
    Ok(catalog::hospitals::HospitalTopic {
        name: name.to_string(),
        source: next,
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn store(state: &SharedState) -> HospitalStore {
    HospitalStore::new(std::sync::Arc::clone(&state.store), &state.store_prefix)
}

/// A caller limited to hospitals sees, changes and onboards only those.
fn in_scope(caller: &Principal, id: &str) -> bool {
    caller
        .hospitals
        .as_ref()
        .is_none_or(|mine| mine.iter().any(|h| h == id))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let n = name.trim().chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "`name` must be 1–{MAX_NAME_CHARS} characters"
        )));
    }
    Ok(())
}

/// An IANA name's shape (`Area/Location`, `UTC`): letters, digits, `/`,
/// `_`, `+`, `-`. Which zones exist is the reader's business.
fn check_time_zone(tz: &str) -> Result<(), ApiError> {
    let ok = !tz.is_empty()
        && tz.chars().count() <= MAX_TIME_ZONE_CHARS
        && tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '+' | '-'));
    if !ok {
        return Err(ApiError::bad_request(
            "`time_zone` must be an IANA time zone name such as `Europe/Amsterdam`",
        ));
    }
    Ok(())
}

/// The rule templates a hospital can be onboarded with.
#[utoipa::path(
    get,
    path = "/api/rule-templates",
    operation_id = "list_rule_templates",
    tag = "hospitals",
    responses((status = 200, description = "The templates.", body = RuleTemplateList))
)]
pub async fn templates(_caller: Caller<need::Viewer>) -> Json<RuleTemplateList> {
    let templates = crate::templates::starter_rules()
        .into_iter()
        .map(|t| RuleTemplateView {
            template: t.template,
            name: t.draft.name,
            severity: t.draft.severity.as_str().to_string(),
            cooldown_seconds: t.draft.cooldown_seconds,
            sql: t.draft.sql,
        })
        .collect();
    Json(RuleTemplateList { templates })
}

/// Every onboarded hospital (a caller limited to hospitals: theirs).
#[utoipa::path(
    get,
    path = "/api/hospitals",
    operation_id = "list_hospitals",
    tag = "hospitals",
    responses((status = 200, description = "The hospitals, retired ones too.", body = HospitalList))
)]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
) -> Result<Json<HospitalList>, ApiError> {
    let (hospitals, _damaged) = store(&state).list().await?;
    let hospitals = hospitals
        .into_iter()
        .filter(|h| in_scope(&caller, &h.id))
        .map(HospitalView::from)
        .collect();
    Ok(Json(HospitalList { hospitals }))
}

async fn find(
    state: &SharedState,
    caller: &Principal,
    id: &str,
) -> Result<HospitalRecord, ApiError> {
    let not_found = || ApiError::not_found(format!("no hospital '{id}'"));
    if !valid_id(id) || !in_scope(caller, id) {
        return Err(not_found());
    }
    store(state).get(id).await?.ok_or_else(not_found)
}

/// One hospital.
#[utoipa::path(
    get,
    path = "/api/hospitals/{id}",
    operation_id = "get_hospital",
    tag = "hospitals",
    params(("id" = String, Path, description = "The hospital's id.")),
    responses(
        (status = 200, description = "The hospital.", body = HospitalView),
        (status = 404, description = "No such hospital.", body = ErrorBody),
    )
)]
pub async fn get_one(
    State(state): State<SharedState>,
    caller: Caller<need::Viewer>,
    Path(id): Path<String>,
) -> Result<Json<HospitalView>, ApiError> {
    Ok(Json(find(&state, &caller, &id).await?.into()))
}

/// Onboards a hospital: recorded, its template rules made (limited to it)
/// and running before this answers.
#[utoipa::path(
    post,
    path = "/api/hospitals",
    operation_id = "onboard_hospital",
    tag = "hospitals",
    request_body = CreateHospitalRequest,
    responses(
        (status = 201, description = "Onboarded; its rules run.", body = HospitalView),
        (status = 400, description = "A field is invalid, a template unknown, or a topic of its own asked for on a server without Kafka (or named like one of its own topics).", body = ErrorBody),
        (status = 409, description = "A hospital with this id exists, or another has this topic.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller<need::Admin>,
    body: Result<Json<CreateHospitalRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<HospitalView>), ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"id\", \"name\", \"time_zone\", \"templates\"?: [\"…\"]}}: {e}"
        ))
    })?;
    if !valid_id(&req.id) {
        return Err(ApiError::bad_request(
            "`id` must be 1–128 letters, digits, '-', '_' or '.': the hospital_id its events carry",
        ));
    }
    check_name(&req.name)?;
    check_time_zone(&req.time_zone)?;
    if !in_scope(&caller, &req.id) {
        return Err(ApiError::forbidden(format!(
            "you are limited to other hospitals than '{}'",
            req.id
        )));
    }
    let shared = &state.config.kafka.vitals_topic;
    let own_topic = req.topic.as_deref().filter(|t| *t != shared);
    if let Some(topic) = own_topic {
        check_topic(&state, topic)?;
    }
    if req.templates.len() > MAX_TEMPLATES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_TEMPLATES} templates"
        )));
    }
    let templates = req
        .templates
        .iter()
        .map(|name| {
            crate::templates::find(name).ok_or_else(|| {
                let known: Vec<String> = crate::templates::starter_rules()
                    .into_iter()
                    .map(|t| t.template)
                    .collect();
                ApiError::bad_request(format!(
                    "no rule template '{name}'; there are: {}",
                    known.join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Every template compiles for this hospital before anything is stored.
    let mut drafts = Vec::with_capacity(templates.len());
    for t in templates {
        let mut draft = t.draft;
        draft.name = format!("{} ({})", draft.name, req.id);
        draft.hospital_id = Some(req.id.clone());
        let compiled = super::rules::compile_draft(&state, &draft)?;
        drafts.push((draft, compiled));
    }

    // One onboarding at a time: a topic's source number is the next free one.
    let _onboarding = ONBOARDING.lock().await;
    let hospitals = store(&state);
    let topic = match own_topic {
        Some(name) => Some(allocate_topic(&hospitals, name).await?),
        None => None,
    };
    let now = now_ms();
    let mut record = HospitalRecord {
        id: req.id.clone(),
        name: req.name.trim().to_string(),
        time_zone: req.time_zone.clone(),
        rule_ids: vec![],
        created_at_ms: now,
        created_by: caller.subject.clone(),
        updated_at_ms: now,
        retired_at_ms: None,
        topic: topic.clone(),
    };
    match hospitals.create(&record).await {
        Ok(()) => {}
        Err(catalog::CatalogError::AlreadyExists { .. }) => {
            return Err(ApiError::conflict(format!(
                "hospital '{}' exists already",
                req.id
            )))
        }
        Err(e) => return Err(e.into()),
    }
    // Stored with its topic: read from now on, as after any restart (even
    // if a rule below fails to start).
    if let (Some(t), Some(topics)) = (&topic, &state.topics) {
        topics.add(crate::source::topics::Topic {
            name: t.name.clone(),
            source: t.source,
            hospital: Some(record.id.clone()),
        });
    }
    {
        let _guard = state.rule_writes.lock().await;
        for (draft, compiled) in drafts {
            let rule = super::rules::store_and_run(&state, &caller, draft, compiled).await?;
            record.rule_ids.push(rule.id);
        }
    }
    hospitals.update(&record).await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "hospital_onboarded",
        json!({"hospital_id": record.id, "name": record.name, "time_zone": record.time_zone,
               "templates": req.templates, "rule_ids": record.rule_ids,
               "topic": topic.as_ref().map(|t| &t.name)}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// Changes a hospital's name or time zone.
#[utoipa::path(
    put,
    path = "/api/hospitals/{id}",
    operation_id = "update_hospital",
    tag = "hospitals",
    params(("id" = String, Path, description = "The hospital's id.")),
    request_body = UpdateHospitalRequest,
    responses(
        (status = 200, description = "Changed.", body = HospitalView),
        (status = 400, description = "A field is invalid.", body = ErrorBody),
        (status = 404, description = "No such hospital.", body = ErrorBody),
    )
)]
pub async fn update(
    State(state): State<SharedState>,
    caller: Caller<need::Admin>,
    Path(id): Path<String>,
    body: Result<Json<UpdateHospitalRequest>, JsonRejection>,
) -> Result<Json<HospitalView>, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!("expected {{\"name\"?, \"time_zone\"?}}: {e}"))
    })?;
    let mut record = find(&state, &caller, &id).await?;
    if let Some(name) = &req.name {
        check_name(name)?;
        record.name = name.trim().to_string();
    }
    if let Some(tz) = &req.time_zone {
        check_time_zone(tz)?;
        record.time_zone = tz.clone();
    }
    record.updated_at_ms = now_ms();
    store(&state).update(&record).await?;
    crate::audit::record_by(
        &state.audit,
        &caller,
        "hospital_changed",
        json!({"hospital_id": record.id, "name": record.name, "time_zone": record.time_zone}),
    )
    .await;
    Ok(Json(record.into()))
}

/// Retires a hospital: its onboarding rules stop running (their versions
/// stay), its record stays.
#[utoipa::path(
    delete,
    path = "/api/hospitals/{id}",
    operation_id = "retire_hospital",
    tag = "hospitals",
    params(("id" = String, Path, description = "The hospital's id.")),
    responses(
        (status = 200, description = "Retired.", body = HospitalView),
        (status = 404, description = "No such hospital.", body = ErrorBody),
    )
)]
pub async fn retire(
    State(state): State<SharedState>,
    caller: Caller<need::Admin>,
    Path(id): Path<String>,
) -> Result<Json<HospitalView>, ApiError> {
    let mut record = find(&state, &caller, &id).await?;
    if record.retired_at_ms.is_none() {
        let _guard = state.rule_writes.lock().await;
        for rule_id in &record.rule_ids {
            // A rule moved to another hospital since onboarding is theirs now.
            let ours = state.rules.get(rule_id).await.is_some_and(|rule| {
                rule.current.hospital_id.as_deref() == Some(record.id.as_str())
            });
            if !ours {
                continue;
            }
            match state.rules.set_active(rule_id, false, now_ms()).await {
                Ok(_) => {}
                // A rule deleted by hand since is nothing to stop.
                Err(catalog::CatalogError::RuleNotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            state
                .pipeline
                .send_async(Input::Remove(rule_id.clone()))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
        }
        let now = now_ms();
        record.retired_at_ms = Some(now);
        record.updated_at_ms = now;
        store(&state).update(&record).await?;
        // Retired on record: its topic is no longer read (what was read of
        // it is archived and committed first).
        if let Some(topics) = &state.topics {
            topics.remove_hospital(&record.id);
        }
        crate::audit::record_by(
            &state.audit,
            &caller,
            "hospital_retired",
            json!({"hospital_id": record.id, "rule_ids": record.rule_ids}),
        )
        .await;
    }
    Ok(Json(record.into()))
}

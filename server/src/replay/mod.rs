//! Replay: a stored rule version, or a draft's SQL, run over archived
//! events with the same engine as live; optionally with an audit that diffs
//! the result against the alerts actually recorded ([`audit`]), and in the
//! background with progress and cancellation ([`jobs`]).
//!
//! Events are replayed in event-time order as one stream; the end of the
//! range is a final watermark. Only windows entirely inside the range are
//! reported (a window that began before `from_ms` would miss events).
//!
//! This module owns what a replay means: which rule runs ([`RuleSource`]),
//! how the engine is fed ([`replay_rule`]) and what is reported
//! ([`ReplayReport`]). It must not speak HTTP (the API maps [`ReplayError`]
//! to responses) and does not read the archive itself: the catalog does
//! ([`HistoryCatalog::events_in_order`], [`HistoryCatalog::recorded_alerts`]).

pub mod audit;
pub mod jobs;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use catalog::rules::RuleStore;
use catalog::{CatalogError, HistoryCatalog};
use sql_rules::{Alert, Engine, EngineConfig, EngineError, RuleCompiler, RuleError, RuleSpec};

pub use audit::AuditDiff;

/// A replay's progress, shared with whoever watches it (a background job's
/// status), and its cancellation switch.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events handed to the engine so far.
    pub events: AtomicU64,
    /// Event time reached so far.
    pub event_time_ms: AtomicI64,
    /// Set to stop the replay at the next batch.
    pub cancelled: AtomicBool,
}

/// Which rule a replay runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// A stored rule, at `version` or else its current version.
    Stored {
        rule_id: String,
        version: Option<u32>,
    },
    /// A draft never activated (a backtest). It runs as rule `draft`,
    /// version 0, severity `medium`, over the events of `hospital_id` only
    /// if it names one (as the draft would once stored with that scope).
    Draft {
        sql: String,
        hospital_id: Option<String>,
    },
}

impl RuleSource {
    /// The source named by a request that may give a stored rule or a
    /// draft's SQL (and its hospital): exactly one of them.
    pub fn new(
        rule_id: Option<String>,
        version: Option<u32>,
        sql: Option<String>,
        hospital_id: Option<String>,
    ) -> Result<Self, ReplayError> {
        match (rule_id, sql) {
            (Some(_), Some(_)) => Err(ReplayError::RuleAndDraft),
            (None, None) => Err(ReplayError::NoRule),
            (Some(_), None) if hospital_id.is_some() => Err(ReplayError::StoredRuleScope),
            (Some(rule_id), None) => Ok(Self::Stored { rule_id, version }),
            (None, Some(sql)) => Ok(Self::Draft { sql, hospital_id }),
        }
    }
}

/// One replay to run, see [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub source: RuleSource,
    /// Overrides the rule's cooldown (a draft's defaults to 300 s).
    pub cooldown_seconds: Option<u64>,
    /// Start of the event-time range (inclusive).
    pub from_ms: i64,
    /// End of the event-time range (exclusive), also the final watermark.
    pub to_ms: i64,
    /// Whether to diff the result against the alerts recorded live (stored
    /// rules only; a draft never ran live).
    pub audit: bool,
    /// The run-time budgets live rules run within (`[limits]`): a replay
    /// over one is refused, as the live rule would have been suspended.
    pub budgets: sql_rules::RuleBudgets,
}

/// What [`run`] reports: the answer of `POST /api/replay`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReplayReport {
    pub rule_id: String,
    pub version: u32,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Archived events read from the range.
    pub events: usize,
    /// See [`Replayed::alerts`].
    pub alerts: Vec<Alert>,
    /// Present when an audit was asked for a stored rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditDiff>,
}

/// What [`replay_rule`] produced.
#[derive(Debug)]
pub struct Replayed {
    /// Archived events read from the range.
    pub events: usize,
    /// Alerts (fired and suppressed) of windows entirely inside the range,
    /// and of per-event matches inside it.
    pub alerts: Vec<Alert>,
}

/// Why a replay did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("give either rule_id (a stored rule) or sql (a draft), not both")]
    RuleAndDraft,
    #[error("give rule_id (a stored rule) or sql (a draft to backtest)")]
    NoRule,
    #[error("hospital_id is for a draft: a stored rule replays with its own")]
    StoredRuleScope,
    #[error("no rule with id '{rule_id}'")]
    RuleNotFound { rule_id: String },
    #[error("rule '{rule_id}' has no version {version}")]
    VersionNotFound { rule_id: String, version: u32 },
    /// The rule's SQL does not compile (the position is in the error).
    #[error("{}", .0.message)]
    Compile(#[from] RuleError),
    /// The engine would not take the compiled rule.
    #[error("{0}")]
    RuleRefused(EngineError),
    #[error("replay cancelled after {events} events")]
    Cancelled { events: usize },
    #[error("reading the archive: {0}")]
    Archive(#[from] CatalogError),
    #[error("{0}")]
    Engine(EngineError),
    /// The rule went over a run-time budget during the replay: what it
    /// produced after that point would be missing, so there is no result.
    #[error("the rule went over a run-time budget during the replay, which stopped there: {0}")]
    Suspended(String),
}

/// Resolves `replay.source`, replays it over the range and, if asked, audits
/// the result against the alerts recorded live.
pub async fn run(
    rules: &RuleStore,
    compiler: &RuleCompiler,
    history: &HistoryCatalog,
    replay: &Replay,
    progress: &Progress,
) -> Result<ReplayReport, ReplayError> {
    let spec = rule_spec(rules, compiler, &replay.source, replay.cooldown_seconds).await?;
    let (rule_id, version) = (spec.id.clone(), spec.version);
    let Replayed { events, alerts } = replay_rule(
        history,
        spec,
        replay.from_ms,
        replay.to_ms,
        replay.budgets,
        progress,
    )
    .await?;
    let audit = match &replay.source {
        RuleSource::Stored { .. } if replay.audit => Some(
            audit::audit(
                history,
                &rule_id,
                version,
                replay.from_ms,
                replay.to_ms,
                &alerts,
            )
            .await?,
        ),
        _ => None,
    };
    Ok(ReplayReport {
        rule_id,
        version,
        from_ms: replay.from_ms,
        to_ms: replay.to_ms,
        events,
        alerts,
        audit,
    })
}

/// The engine's rule for `source`: a stored version (compiled now, with the
/// compiler of today), or the draft.
pub async fn rule_spec(
    rules: &RuleStore,
    compiler: &RuleCompiler,
    source: &RuleSource,
    cooldown_seconds: Option<u64>,
) -> Result<RuleSpec, ReplayError> {
    match source {
        RuleSource::Stored { rule_id, version } => {
            let rule = rules
                .get(rule_id)
                .await
                .ok_or_else(|| ReplayError::RuleNotFound {
                    rule_id: rule_id.clone(),
                })?;
            let version = version.unwrap_or(rule.current.version);
            let stored = rules.version(rule_id, version).await.ok_or_else(|| {
                ReplayError::VersionNotFound {
                    rule_id: rule_id.clone(),
                    version,
                }
            })?;
            let compiled = compiler.compile_scoped(&stored.sql, stored.hospital())?;
            let mut spec = stored.spec(compiled);
            if let Some(c) = cooldown_seconds {
                spec.cooldown_ms = c as i64 * 1000;
            }
            Ok(spec)
        }
        RuleSource::Draft { sql, hospital_id } => Ok(RuleSpec {
            id: "draft".into(),
            version: 0,
            name: "draft".into(),
            severity: "medium".into(),
            cooldown_ms: cooldown_seconds.unwrap_or(300) as i64 * 1000,
            allowed_lateness_ms: None,
            keep_duplicates: false,
            escalation: None,
            compiled: compiler.compile_scoped(sql, hospital_id.as_deref())?,
        }),
    }
}

/// Replays one rule over the archived events of `[from_ms, to_ms)`: the
/// engine behind `POST /api/replay` (and the replay benchmark).
///
/// Events are fed to a fresh engine holding only `spec`, as one partition,
/// in event-time order (then patient, then sequence number, nulls last);
/// `to_ms` is then a final watermark. Alerts of windows that began before
/// `from_ms` or end after `to_ms` are left out (they would miss events).
/// Stops with [`ReplayError::Cancelled`] when `progress.cancelled` is set.
///
/// The archive is read one event-time hour at a time
/// ([`HistoryCatalog::events_in_order`]): memory is bounded by the events of
/// about two hours, not by the range — the hour the engine runs over, and
/// the next one, read and sorted in the background meanwhile. Progress and
/// cancellation are per batch of the engine.
pub async fn replay_rule(
    history: &HistoryCatalog,
    spec: RuleSpec,
    from_ms: i64,
    to_ms: i64,
    budgets: sql_rules::RuleBudgets,
    progress: &Progress,
) -> Result<Replayed, ReplayError> {
    let mut engine = Engine::new(EngineConfig {
        budgets,
        ..EngineConfig::default()
    });
    engine.upsert_rule(spec).map_err(ReplayError::RuleRefused)?;
    engine.assign_partitions(&[0], 0);
    let now = chrono::Utc::now().timestamp_millis();
    let mut alerts: Vec<Alert> = Vec::new();
    let mut events = 0usize;
    let mut hours = history.events_in_order(from_ms, to_ms).await?;
    while !hours.is_done() {
        if progress.cancelled.load(Relaxed) {
            return Err(ReplayError::Cancelled { events });
        }
        let Some(sorted) = hours.next_hour().await else {
            break;
        };
        for batch in sorted? {
            events += batch.num_rows();
            progress.events.store(events as u64, Relaxed);
            if let Some(last) = batch
                .column(sql_rules::stream::idx::TIMESTAMP_UNIX_MS)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .and_then(|t| t.values().last().copied())
            {
                progress.event_time_ms.store(last, Relaxed);
            }
            if progress.cancelled.load(Relaxed) {
                return Err(ReplayError::Cancelled { events });
            }
            let out = engine
                .process(0, &batch, now)
                .map_err(ReplayError::Engine)?;
            refuse_suspended(&out)?;
            alerts.extend(out.alerts);
            // An hour can be long: let the runtime's other tasks (the next
            // hour's read among them) have this thread between batches.
            tokio::task::yield_now().await;
        }
    }
    let out = engine
        .advance_watermark(to_ms, now)
        .map_err(ReplayError::Engine)?;
    refuse_suspended(&out)?;
    alerts.extend(out.alerts);
    alerts.retain(|a| inside(a, from_ms, to_ms));
    Ok(Replayed { events, alerts })
}

/// A replay whose rule was suspended would silently miss everything after:
/// an error instead (the budgets are `[limits]`', as live).
fn refuse_suspended(out: &sql_rules::EngineOutput) -> Result<(), ReplayError> {
    match out.suspended.first() {
        Some(s) => Err(ReplayError::Suspended(s.suspension.message.clone())),
        None => Ok(()),
    }
}

/// Whether a replay of `[from_ms, to_ms)` can fully account for `alert`:
/// its window lies inside the range, or (per-event) its event does.
pub fn inside(alert: &Alert, from_ms: i64, to_ms: i64) -> bool {
    match (alert.window_start_ms, alert.window_end_ms) {
        (Some(s), Some(e)) => s >= from_ms && e <= to_ms,
        _ => alert.event_time_ms >= from_ms && alert.event_time_ms < to_ms,
    }
}

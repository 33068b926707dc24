//! Rules changed through another instance run here too.
//!
//! Instances sharing a data directory share its rule store. Every
//! `[instance] rule_watch_interval_ms` this task reads the store again (one
//! listing when nothing changed, see [`catalog::rules::RuleStore::reload`])
//! and hands the engine what differs from what it last handed it: a new or
//! changed current version is upserted, a deactivated or vanished rule is
//! removed. It holds the API's rule-write lock while it does, so a change
//! made through this instance and one seen in the store are never applied
//! out of order. The engine ignores a version it already runs, so sending
//! one the API already sent costs nothing and restarts no state.
//!
//! It also counts the active rules no live instance runs
//! (`wardwatch_rules_unplaced`, every [`PLACEMENT_EVERY`]): rules not
//! grouped by patient while no `global_rules` instance is live. Stored
//! rules that nobody evaluates are alerting that silently does not happen.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::api::AppState;
use crate::config::InstanceRole;
use crate::pipeline::Input;
use crate::shutdown::ShutdownNotice;

/// How often the rules no live instance runs are counted.
pub const PLACEMENT_EVERY: Duration = Duration::from_secs(5);

/// Runs until the shutdown notice. `running`: the (id, version) handed to
/// the engine at start.
pub async fn run(
    state: Arc<AppState>,
    running: HashMap<String, u32>,
    interval: Duration,
    stop: ShutdownNotice,
) {
    let mut running: HashMap<String, Known> = running
        .into_iter()
        .map(|(id, version)| {
            (
                id,
                Known {
                    version,
                    keyed_by_patient: None,
                },
            )
        })
        .collect();
    let mut last_placement = tokio::time::Instant::now() - PLACEMENT_EVERY;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.clone().requested() => return,
        }
        let _guard = state.rule_writes.lock().await;
        match state.rules.reload().await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the shared rule store again");
                continue;
            }
        }
        if let Err(e) = apply(&state, &mut running).await {
            tracing::warn!(error = %e, "applying rule changes from the shared store");
        }
        if last_placement.elapsed() >= PLACEMENT_EVERY {
            last_placement = tokio::time::Instant::now();
            count_unplaced(&state, &mut running).await;
        }
    }
}

/// What the watcher handed the engine for one rule.
struct Known {
    version: u32,
    /// Its kind, once compiled here (`None`: handed over at start).
    keyed_by_patient: Option<bool>,
}

/// Sets `wardwatch_rules_unplaced`: the active rules of a kind this
/// instance does not run, while no live instance that runs it is listed.
async fn count_unplaced(state: &AppState, running: &mut HashMap<String, Known>) {
    let role = state.config.instance.role;
    if role == InstanceRole::All {
        return;
    }
    let instances = crate::instances::list(state.store.as_ref(), &state.store_prefix).await;
    let runs_elsewhere = |keyed: bool| {
        instances
            .iter()
            .any(|i| crate::instances::runs_live(i, keyed))
    };
    let mut unplaced = 0u64;
    for (id, known) in running.iter_mut() {
        let keyed = match known.keyed_by_patient {
            Some(k) => k,
            None => match state.rules.get(id).await.and_then(|r| {
                state
                    .compiler
                    .compile_accepted_scoped(&r.current.sql, r.current.hospital())
                    .ok()
            }) {
                Some(c) => c.keyed_by_patient,
                None => continue,
            },
        };
        known.keyed_by_patient = Some(keyed);
        if !role.runs(keyed) && !runs_elsewhere(keyed) {
            unplaced += 1;
        }
    }
    let before = state
        .metrics
        .rules_unplaced
        .swap(unplaced, std::sync::atomic::Ordering::Relaxed);
    if unplaced > 0 && before == 0 {
        tracing::error!(rules = unplaced, ?role, "active rules run on no live instance: start the instance that runs them ([instance] role)");
    }
}

/// Hands the engine every difference between the store's active rules and
/// `running`, and records it there.
async fn apply(
    state: &AppState,
    running: &mut HashMap<String, Known>,
) -> Result<(), crate::pipeline::PipelineClosed> {
    let rules = state.rules.list().await;
    let active: HashMap<&str, &catalog::rules::Rule> = rules
        .iter()
        .filter(|r| r.active)
        .map(|r| (r.id.as_str(), r))
        .collect();
    for (id, rule) in &active {
        if running.get(*id).map(|k| k.version) == Some(rule.current.version) {
            continue;
        }
        let mut keyed_by_patient = None;
        match state
            .compiler
            .compile_accepted_scoped(&rule.current.sql, rule.current.hospital())
        {
            Ok(compiled) => {
                keyed_by_patient = Some(compiled.keyed_by_patient);
                tracing::info!(rule = %id, version = rule.current.version, "rule changed in the shared store");
                state
                    .pipeline
                    .send_async(Input::Upsert(Box::new(crate::api::rules::rule_spec(
                        &rule.current,
                        compiled,
                    ))))
                    .await?;
            }
            Err(e) => {
                tracing::error!(rule = %id, error = %e, "a rule from the shared store does not compile; not running it")
            }
        }
        running.insert(
            id.to_string(),
            Known {
                version: rule.current.version,
                keyed_by_patient,
            },
        );
    }
    let gone: Vec<String> = running
        .keys()
        .filter(|id| !active.contains_key(id.as_str()))
        .cloned()
        .collect();
    for id in gone {
        tracing::info!(rule = %id, "rule deactivated in the shared store");
        state.pipeline.send_async(Input::Remove(id.clone())).await?;
        running.remove(&id);
    }
    Ok(())
}

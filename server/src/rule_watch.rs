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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::api::AppState;
use crate::pipeline::Input;
use crate::shutdown::ShutdownNotice;

/// Runs until the shutdown notice. `running`: the (id, version) handed to
/// the engine at start.
pub async fn run(
    state: Arc<AppState>,
    mut running: HashMap<String, u32>,
    interval: Duration,
    stop: ShutdownNotice,
) {
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
    }
}

/// Hands the engine every difference between the store's active rules and
/// `running`, and records it there.
async fn apply(
    state: &AppState,
    running: &mut HashMap<String, u32>,
) -> Result<(), crate::pipeline::PipelineClosed> {
    let rules = state.rules.list().await;
    let active: HashMap<&str, &catalog::rules::Rule> = rules
        .iter()
        .filter(|r| r.active)
        .map(|r| (r.id.as_str(), r))
        .collect();
    for (id, rule) in &active {
        if running.get(*id) == Some(&rule.current.version) {
            continue;
        }
        match state
            .compiler
            .compile_accepted_scoped(&rule.current.sql, rule.current.hospital())
        {
            Ok(compiled) => {
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
        running.insert(id.to_string(), rule.current.version);
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

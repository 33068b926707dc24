//! `serve --demo`: a simulated ward feeding the pipeline and example rules,
//! so a new user sees alerts within a minute with no other software.

pub mod simulator;

use std::time::Duration;

use catalog::rules::RuleDraft;

use crate::intake::Intake;
use crate::shutdown::ShutdownNotice;
use crate::source::ingest::ingest_ndjson;
use simulator::{SimEvent, WardConfig, WardSimulator};

/// The example rules a demo starts with (only when no rules exist yet):
/// the rule templates hospitals are onboarded with.
pub fn example_rules() -> Vec<RuleDraft> {
    crate::templates::starter_rules()
        .into_iter()
        .map(|t| t.draft)
        .collect()
}

fn to_ndjson(events: &[SimEvent]) -> Vec<u8> {
    let mut body = Vec::with_capacity(events.len() * 200);
    for e in events {
        body.extend_from_slice(&e.payload);
        body.push(b'\n');
    }
    body
}

/// Runs the simulated ward: first replays the last few minutes at full speed
/// so windows close at once, then one reading per patient per second, until
/// shutdown.
pub async fn run(
    patients: usize,
    seed: u64,
    intake: Intake,
    max_batch_rows: usize,
    shutdown: ShutdownNotice,
) {
    const BACKFILL_SECONDS: i64 = 180;
    let now = chrono::Utc::now().timestamp_millis();
    let start_ms = (now / 1000 - BACKFILL_SECONDS) * 1000;
    let mut ward = WardSimulator::new(WardConfig {
        patients,
        seed,
        start_ms,
        ..WardConfig::default()
    });
    let mut events = Vec::new();
    tracing::info!(
        patients,
        "demo ward started ({BACKFILL_SECONDS} s of backfill, then real time)"
    );
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Catch up to the wall clock, then wait for the next second.
        while ward.now_ms() <= chrono::Utc::now().timestamp_millis() {
            if shutdown.is_requested() {
                return;
            }
            events.clear();
            ward.tick(&mut events);
            let body = to_ndjson(&events);
            if ingest_ndjson(&body, "demo", &intake, max_batch_rows, None)
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.clone().requested() => return,
        }
    }
}

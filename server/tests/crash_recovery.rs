//! kill -9 at any moment loses nothing, splits nothing and repeats nothing
//! (issue 13: checkpoints and exactly-once alerts without transactions).
//!
//! One deterministic stream (seeded: 32 patients on 4 partitions, 20
//! minutes of event time, tachycardia episodes and desaturations, some
//! duplicate deliveries and a few malformed payloads) is read by two real
//! `wardwatch` processes on a tansu broker, each with its own data
//! directory and consumer group, and the same four windowed rules created
//! over REST in the same order (TUMBLE, HOP, SESSION with cooldown 0, and a
//! TUMBLE rule with a 5-minute cooldown, so cooldown memory matters):
//!
//! - run A, the reference, is never killed;
//! - run B is killed with SIGKILL three times while the stream is produced
//!   chunk by chunk, and restarted on the same data directory and config:
//!   (a) as soon as it has read its first events (before any checkpoint or
//!   commit, most likely), (b) mid-stream, once it has written at least
//!   three checkpoints and committed offsets, just after it has read more
//!   (windows open, alerts possibly fired since the last checkpoint), and
//!   (c) at a seeded random moment while a chunk is being produced and
//!   read (possibly during a checkpoint write); then it is stopped
//!   gracefully (d, SIGTERM, as a rolling upgrade does): it must exit
//!   within 5 s having committed everything it read.
//!
//! Then, read back with an independent consumer from `alert-events`:
//! every alert id of run B is on the topic exactly once; run B's alerts
//! (rule, patient, window, values, what the explanation counts) are run
//! A's; run A's alerts of the three cooldown-free rules are what a brute
//! force evaluation of the generated readings says (so the reference is
//! itself right, and not empty). Run B's alert history (`GET /api/alerts`)
//! holds each id once: its fired alerts are those on the topic, and with
//! the suppressed ones it equals run A's history. The checkpoint and
//! restore metrics are exported, and each restart reads again within 2 s
//! of the process starting (the servers read by assignment, `[kafka]
//! partitions = []`, so no group join is waited for).
//!
//! Event-time results only: the idle-partition timeout and the quiet close
//! act on processing time (how long the stream paused, which differs
//! between a run that is killed and one that is not), so both runs turn
//! them off (`idle_timeout_ms` an hour, `quiet_close_ms = 0`) and a
//! trailing event on every partition, ten minutes past the stream, closes
//! every window. With those, the alerts are a function of each partition's
//! sequence of events, which both runs read from the same topic.
//!
//! `WARDWATCH_CRASH_SEED=<u64>` replays another stream and other kill
//! moments.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::stream::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureProducer;
use wardwatch_test_support::{recent_ms, Broker};

// ----------------------------------------------------------------- test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_moment_neither_loses_splits_nor_repeats_an_alert() {
    let seed = seed();
    println!("seed {seed} (WARDWATCH_CRASH_SEED replays another)");
    let broker = Broker::start().expect("the test broker must start");
    for (topic, partitions) in [("vitals", PARTITIONS), (ALERT_TOPIC, 1), ("vitals-dlq", 1)] {
        broker.create_topic(topic, partitions).await.unwrap();
    }
    let bootstrap = broker.bootstrap.clone();
    let dir = tempfile::tempdir().unwrap();
    // Recent event time, on a minute: inside retention, never in the future.
    let t0 = recent_ms(MINUTE_MS, 60);
    let stream = generate(seed, t0);
    let expected = brute_force(&stream.readings);
    println!(
        "stream: t0 {t0} (chunk c: event time t0 + [c, c + 1) min), {} readings, {} duplicates, \
         {} malformed, {} chunks; brute force: {} alerts of the cooldown-free rules",
        stream.readings.len(),
        stream.duplicates,
        stream.malformed,
        stream.chunks.len(),
        expected.len()
    );
    assert!(
        !expected.is_empty(),
        "the generated stream must make the rules fire (seed {seed})"
    );

    let (config_a, data_a, group_a) = write_config(dir.path(), "a", &bootstrap);
    let (config_b, data_b, group_b) = write_config(dir.path(), "b", &bootstrap);
    let http = reqwest::Client::new();
    let mut logs = Logs::default();
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // The kill moments, from the seed too.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut restarts: Vec<(&str, Duration)> = vec![];
    let mut resuppressed = 0.0;

    // Both servers up, the same rules in the same order, before any event.
    let a = common::spawn_with_config(&config_a, &data_a);
    logs.add("run A", &a);
    let mut b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B, first start", &b);
    wait_healthy(&http, &a, &logs).await;
    wait_healthy(&http, &b, &logs).await;
    let rules_a = create_rules(&http, &a, &logs).await;
    let rules_b = create_rules(&http, &b, &logs).await;
    println!("rules: A {rules_a:?}, B {rules_b:?}");

    // (a) Killed as soon as it has read its first events.
    produce(&producer, &stream.chunks[0]).await;
    let ms = Duration::from_millis(5);
    let minute = Duration::from_secs(60);
    wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    drop(b);
    println!("kill (a): after the first events read");
    produce(&producer, &stream.chunks[1]).await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after kill (a)", &b);
    let first = wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    restarts.push(("after kill (a)", first));

    // (b) Mid-stream: after several checkpoints and a commit, just after
    // it has read more.
    for chunk in &stream.chunks[2..=7] {
        produce(&producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let every_100ms = Duration::from_millis(100);
    wait_metric(
        &http,
        &b,
        "wardwatch_checkpoints_total",
        3.0,
        Duration::from_secs(30),
        every_100ms,
        &logs,
    )
    .await;
    wait_committed(
        &bootstrap,
        &group_b,
        Some(1),
        Duration::from_secs(30),
        &logs,
    )
    .await;
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    let read = metric(&m, "wardwatch_events_in_total").unwrap_or(0.0);
    produce(&producer, &stream.chunks[8]).await;
    wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        read + 1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    drop(b);
    println!(
        "kill (b): after {} checkpoints and a commit, mid-chunk 8",
        metric(&m, "wardwatch_checkpoints_total").unwrap_or(0.0)
    );
    produce(&producer, &stream.chunks[9]).await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after kill (b)", &b);
    let first = wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    restarts.push(("after kill (b)", first));

    // (c) At a random moment while a chunk is produced and read.
    let k = rng.gen_range(11..=15usize);
    let delay = Duration::from_millis(rng.gen_range(0..400));
    for chunk in &stream.chunks[10..k] {
        produce(&producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    let producing = {
        let (producer, chunk) = (producer.clone(), stream.chunks[k].clone());
        tokio::spawn(async move { produce(&producer, &chunk).await })
    };
    tokio::time::sleep(delay).await;
    drop(b);
    println!("kill (c): {delay:?} into producing chunk {k}");
    producing.await.unwrap();
    produce(&producer, &stream.chunks[k + 1]).await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after kill (c)", &b);
    let first = wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    restarts.push(("after kill (c)", first));

    // (d) A graceful stop (SIGTERM), as a rolling upgrade does: the last
    // checkpoint and commit cover everything read, and the process exits
    // within seconds.
    produce(&producer, &stream.chunks[k + 2]).await;
    let read_so_far: usize = stream.chunks[..=k + 2].iter().map(Vec::len).sum();
    let m = metrics(&http, &b).await.unwrap_or_default();
    let read = metric(&m, "wardwatch_events_in_total").unwrap_or(0.0);
    wait_metric(
        &http,
        &b,
        "wardwatch_events_in_total",
        read + 1.0,
        minute,
        ms,
        &logs,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    let stopping = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
    let exit = loop {
        if let Some(exit) = b.child.try_wait().expect("waiting for the server") {
            break exit;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "the server did not exit within 10 s of SIGTERM; logs:{}",
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stop_took = stopping.elapsed();
    println!("graceful stop (d): exited {exit} {stop_took:?} after SIGTERM");
    assert!(
        exit.success() && stop_took < Duration::from_secs(5),
        "SIGTERM: exit {exit} after {stop_took:?}; logs:{}",
        logs.dump()
    );
    // Committed at once on the way out: nothing read is read again.
    wait_committed(
        &bootstrap,
        &group_b,
        Some(read_so_far as i64),
        Duration::from_secs(2),
        &logs,
    )
    .await;
    b = common::spawn_with_config(&config_b, &data_b);
    logs.add("run B after a graceful stop (d)", &b);

    // The rest of the stream, then every partition far ahead.
    for chunk in &stream.chunks[k + 3..] {
        produce(&producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&producer, &stream.trailers).await;

    // Both runs have checkpointed and committed everything (a checkpoint
    // covers only alerts Kafka has confirmed), and nothing more arrives.
    // Counted from what was produced: tansu reports a partition's end as
    // its newest record batch's base + 1, short of the true end.
    let produced =
        (stream.chunks.iter().map(Vec::len).sum::<usize>() + stream.trailers.len()) as i64;
    wait_committed(&bootstrap, &group_a, Some(produced), minute, &logs).await;
    wait_committed(&bootstrap, &group_b, Some(produced), minute, &logs).await;
    let on_topic = read_alert_topic_settled(&bootstrap, &logs).await;
    let topic: Vec<Seen> = on_topic.iter().map(seen).collect();
    let topic_a: Vec<Seen> = topic
        .iter()
        .filter(|s| rules_a.contains_key(&s.rule_id))
        .cloned()
        .collect();
    let topic_b: Vec<Seen> = topic
        .iter()
        .filter(|s| rules_b.contains_key(&s.rule_id))
        .cloned()
        .collect();
    let others = topic.len() - topic_a.len() - topic_b.len();
    println!(
        "{ALERT_TOPIC}: {} alerts of run A {:?}, {} of run B {:?}, {others} of neither",
        topic_a.len(),
        per_rule(&topic_a),
        topic_b.len(),
        per_rule(&topic_b)
    );
    for (label, d) in &restarts {
        println!("restart {label}: process start to first event read {d:?}");
    }
    // What each run's (last) process counted, to read a failure by.
    for (run, p) in [("A", &a), ("B (last process)", &b)] {
        let m = metrics(&http, p).await.unwrap_or_default();
        let counts: Vec<String> = [
            "wardwatch_events_in_total",
            "wardwatch_events_duplicate_total",
            "wardwatch_events_late_total",
            "wardwatch_events_rejected_total",
            "wardwatch_alerts_fired_total",
            "wardwatch_alerts_suppressed_total",
            "wardwatch_alerts_resuppressed_total",
            "wardwatch_checkpoints_total",
        ]
        .iter()
        .map(|n| {
            format!(
                "{}={}",
                n.trim_start_matches("wardwatch_"),
                metric(&m, n).map_or("-".into(), |v| v.to_string())
            )
        })
        .collect();
        println!("run {run}: {}", counts.join(" "));
    }

    // The reference is right: the cooldown-free rules as brute force says.
    let free: BTreeSet<&str> = [HR_TUMBLE, DESAT_HOP, TACHY_SESSION].into();
    let a_free = counted(
        topic_a
            .iter()
            .filter(|s| free.contains(s.rule_name.as_str()))
            .map(|s| &s.identity),
    );
    let want = counted(expected.iter());
    assert!(
        a_free == want,
        "run A (never killed) does not alert as the brute force evaluation of the stream says \
         (seed {seed}):{}\nlogs:{}",
        diff("brute force", &want, "run A", &a_free),
        logs.dump()
    );
    assert!(
        topic_a.iter().all(|s| s.status == "fired"),
        "only fired alerts go to {ALERT_TOPIC}"
    );

    // Every alert id of run B on the topic exactly once.
    let ids_b = counted(topic_b.iter().map(|s| &s.id));
    let repeated: Vec<(&String, &usize)> = ids_b.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} alert ids of run B reached {ALERT_TOPIC} more than once (seed {seed}): {:?}\nlogs:{}",
        repeated.len(),
        repeated.iter().take(25).collect::<Vec<_>>(),
        logs.dump()
    );
    let ids_a = counted(topic_a.iter().map(|s| &s.id));
    assert!(
        ids_a.values().all(|n| *n == 1),
        "run A delivered an alert id twice"
    );

    // Run B alerts as run A: nothing lost, split or added across the kills.
    let full_a = counted(topic_a.iter().map(|s| &s.full));
    let full_b = counted(topic_b.iter().map(|s| &s.full));
    assert!(
        full_a == full_b,
        "run B (killed three times) alerts differently from run A (seed {seed}):{}\nlogs:{}",
        diff("run A", &full_a, "run B", &full_b),
        logs.dump()
    );

    // Run B's history: each id once; its fired alerts are those on the
    // topic; with the suppressed ones it is run A's history.
    let topic_ids_b: BTreeSet<String> = ids_b.keys().cloned().collect();
    let topic_ids_a: BTreeSet<String> = ids_a.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (history_a, history_b) = loop {
        let ha = history(&http, &a).await.unwrap_or_default();
        let hb = history(&http, &b).await.unwrap_or_default();
        let ha: Vec<Seen> = ha
            .iter()
            .map(seen)
            .filter(|s| rules_a.contains_key(&s.rule_id))
            .collect();
        let hb: Vec<Seen> = hb
            .iter()
            .map(seen)
            .filter(|s| rules_b.contains_key(&s.rule_id))
            .collect();
        let fired = |h: &[Seen]| -> BTreeSet<String> {
            h.iter()
                .filter(|s| s.status == "fired")
                .map(|s| s.id.clone())
                .collect()
        };
        if (fired(&hb) == topic_ids_b && fired(&ha) == topic_ids_a && hb.len() >= ha.len())
            || Instant::now() > deadline
        {
            break (ha, hb);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let history_ids_b = counted(history_b.iter().map(|s| &s.id));
    let twice: Vec<(&String, &usize)> = history_ids_b.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} alert ids are in run B's history more than once (seed {seed}): {:?}\nlogs:{}",
        twice.len(),
        twice.iter().take(25).collect::<Vec<_>>(),
        logs.dump()
    );
    let fired_history_b: BTreeMap<String, usize> = counted(
        history_b
            .iter()
            .filter(|s| s.status == "fired")
            .map(|s| &s.id),
    );
    assert!(
        fired_history_b == ids_b,
        "run B's history (fired) and {ALERT_TOPIC} differ (seed {seed}):{}\nlogs:{}",
        diff(ALERT_TOPIC, &ids_b, "history", &fired_history_b),
        logs.dump()
    );
    let with_status = |h: &[Seen]| -> BTreeMap<String, usize> {
        let lines: Vec<String> = h
            .iter()
            .map(|s| format!("{} | {}", s.full, s.status))
            .collect();
        counted(lines.iter())
    };
    let (status_a, status_b) = (with_status(&history_a), with_status(&history_b));
    let suppressed = history_a
        .iter()
        .filter(|s| s.status == "suppressed")
        .count();
    println!(
        "history: run A {} alerts ({suppressed} suppressed), run B {}",
        history_a.len(),
        history_b.len()
    );
    assert!(
        status_a == status_b,
        "run B's alert history differs from run A's (seed {seed}):{}\nlogs:{}",
        diff("run A", &status_a, "run B", &status_b),
        logs.dump()
    );

    // The checkpoint and restore metrics of the last restarted process.
    let m = metrics(&http, &b).await.unwrap_or_default();
    resuppressed += metric(&m, "wardwatch_alerts_resuppressed_total").unwrap_or(0.0);
    println!(
        "metrics of run B's last process: checkpoints {:?}, bytes {:?}, duration {:?}, age {:?}, \
         restore {:?}; alerts re-suppressed after restores, all processes: {resuppressed}",
        metric(&m, "wardwatch_checkpoints_total"),
        metric(&m, "wardwatch_checkpoint_bytes"),
        metric(&m, "wardwatch_checkpoint_duration_seconds"),
        metric(&m, "wardwatch_checkpoint_age_seconds"),
        metric(&m, "wardwatch_restore_seconds"),
    );
    for name in [
        "wardwatch_checkpoints_total",
        "wardwatch_checkpoint_bytes",
        "wardwatch_checkpoint_duration_seconds",
        "wardwatch_checkpoint_age_seconds",
        "wardwatch_restore_seconds",
        "wardwatch_alerts_resuppressed_total",
    ] {
        assert!(metric_present(&m, name), "/metrics has no {name}");
    }
    for name in ["wardwatch_checkpoints_total", "wardwatch_checkpoint_bytes"] {
        assert!(
            metric(&m, name).unwrap_or(0.0) > 0.0,
            "{name} is {:?} after a run with checkpoints every 500 ms",
            metric(&m, name)
        );
    }
    // Per partition, how far its events are behind the server clock (the
    // stream is about an hour old) and, when librdkafka has reported it,
    // the consumer's lag.
    for p in 0..PARTITIONS {
        let lag = m
            .get(&format!(
                "wardwatch_partition_event_lag_seconds{{partition=\"{p}\"}}"
            ))
            .copied();
        assert!(
            lag.is_some_and(|s| (0.0..7_200.0).contains(&s)),
            "partition {p}: event lag {lag:?} s"
        );
        println!(
            "partition {p}: event lag {lag:?} s, consumer lag {:?}",
            m.get(&format!(
                "wardwatch_partition_consumer_lag{{partition=\"{p}\"}}"
            ))
        );
    }
    for (label, d) in &restarts {
        assert!(
            *d < RESTART_BOUND,
            "restart {label}: {d:?} from process start to the first event read; logs:{}",
            logs.dump()
        );
    }
    drop(a);
    drop(b);
}

/// The generated stream and the brute force evaluation are what the engine
/// computes when nothing is killed and there is no Kafka (`POST
/// /api/ingest`, one partition): if this fails, the oracle of the test
/// above (or the engine's windows) is wrong, not crash recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brute_force_evaluation_is_what_the_engine_computes_without_a_crash() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("embedded.toml");
    std::fs::write(
        &config,
        "[pipeline]\nquiet_close_ms = 0\nidle_timeout_ms = 3600000\n",
    )
    .unwrap();
    let t0 = recent_ms(MINUTE_MS, 60);
    let stream = generate(seed, t0);
    let expected = counted(brute_force(&stream.readings).iter());
    let http = reqwest::Client::new();
    let mut logs = Logs::default();
    let server = common::spawn_with_config(&config, &dir.path().join("data"));
    logs.add("embedded server", &server);
    wait_healthy(&http, &server, &logs).await;
    let rules = create_rules(&http, &server, &logs).await;
    for chunk in stream.chunks.iter().chain([&stream.trailers]) {
        let body: Vec<&str> = chunk.iter().map(|m| m.payload.as_str()).collect();
        let r = http
            .post(format!("{}/api/ingest", server.url))
            .header("content-type", "application/x-ndjson")
            .body(body.join("\n"))
            .send()
            .await
            .expect("POST /api/ingest");
        assert_eq!(r.status(), 202, "POST /api/ingest; logs:{}", logs.dump());
    }
    let free: BTreeSet<&str> = [HR_TUMBLE, DESAT_HOP, TACHY_SESSION].into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let alerts: Vec<Seen> = history(&http, &server)
            .await
            .unwrap_or_default()
            .iter()
            .map(seen)
            .filter(|s| rules.contains_key(&s.rule_id) && free.contains(s.rule_name.as_str()))
            .collect();
        let got = counted(alerts.iter().map(|s| &s.identity));
        if got == expected || Instant::now() > deadline {
            println!(
                "embedded: {} alerts of the cooldown-free rules {:?}",
                alerts.len(),
                per_rule(&alerts)
            );
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        got == expected,
        "the engine and the brute force evaluation disagree (seed {seed}):{}\nlogs:{}",
        diff("brute force", &expected, "engine", &got),
        logs.dump()
    );
}

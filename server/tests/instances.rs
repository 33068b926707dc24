//! Several `wardwatch` instances on one data directory (issue 13, "many
//! instances"), each a real process with its own `[instance] id`, HTTP
//! port, lock (`wardwatch-i{id}.lock`) and checkpoints, on a tansu broker.
//!
//! The stream is `crash_recovery.rs`'s (`common::stream`: 32 patients on 4
//! partitions, 20 minutes of event time produced chunk by chunk, duplicate
//! deliveries and malformed payloads, a trailing event on every partition
//! ten minutes later that closes every window). Two `patient_rules`
//! instances split the partitions (A: 0 and 1, B: 2 and 3, one consumer
//! group); the rules are created over REST on A only, and B runs them
//! because it reads the shared rule store. Alert ids are deterministic, so
//! what both put on `alert-events`, read back with a consumer of its own,
//! must be what one process alone would alert: the brute force evaluation
//! of the cooldown-free rules, what a reference (a single server on a data
//! directory of its own, reading every partition, never stopped, the same
//! rules) alerts for every rule, the cooldown rule included, and every id
//! once. Each instance's `GET /api/alerts` answers from the shared
//! history: every fired id, each id once, the same from every instance,
//! and (fired and suppressed) the reference's.
//!
//! - one instance killed with SIGKILL mid-stream and restarted reads again
//!   within 2 s (from its own checkpoint) and loses and repeats nothing;
//! - a rolling restart (SIGTERM A, restart it, then B) while a producer
//!   keeps producing loses and repeats nothing;
//! - a rule grouped by hospital runs on a third, `global_rules` instance G
//!   (every partition, a group of its own), not on A or B, and alerts
//!   exactly as a brute force evaluation per hospital and minute says,
//!   across a SIGKILL of G; the patient rules are still exact, G writes no
//!   dead letters and archives no readings;
//! - a second process with an instance id already running is refused, and
//!   so is a process without an id where instances run (and vice versa).
//!
//! The heavy tests run one at a time (two CPUs, a broker and up to three
//! servers each). `WARDWATCH_CRASH_SEED=<u64>` replays another stream.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::stream::*;
use common::Running;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use wardwatch_test_support::{recent_ms, Broker};

/// One test at a time: they measure restarts and stops against bounds.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The consumer group of the patient instances (A and B).
const PATIENT_GROUP: &str = "instances-patients";
/// The global instance's own group.
const GLOBAL_GROUP: &str = "instances-global";
/// The reference's group.
const REFERENCE_GROUP: &str = "instances-reference";
/// The reference's dead letters (the instances' go to `vitals-dlq`).
const REFERENCE_DLQ: &str = "reference-dlq";
const RULE_WATCH_MS: u64 = 500;
/// From a rule created on one instance to it running on another (the
/// watch interval, plus the engine's stats refresh, on a loaded machine).
const RULE_PICKUP_BOUND: Duration = Duration::from_secs(3);
/// SIGTERM to exit.
const STOP_BOUND: Duration = Duration::from_secs(5);
const MINUTE: Duration = Duration::from_secs(60);
const EVERY_5MS: Duration = Duration::from_millis(5);
const EVERY_100MS: Duration = Duration::from_millis(100);

/// One instance's settings.
struct Spec {
    name: &'static str,
    id: u32,
    role: &'static str,
    partitions: &'static [i32],
    group: &'static str,
    /// `[kafka] hospital_topics`: on one of the instances splitting the
    /// shared topic only.
    hospital_topics: bool,
}

const A: Spec = Spec {
    name: "A",
    id: 0,
    role: "patient_rules",
    partitions: &[0, 1],
    group: PATIENT_GROUP,
    hospital_topics: true,
};
const B: Spec = Spec {
    name: "B",
    id: 1,
    role: "patient_rules",
    partitions: &[2, 3],
    group: PATIENT_GROUP,
    hospital_topics: false,
};
const G: Spec = Spec {
    name: "G",
    id: 2,
    role: "global_rules",
    partitions: &[],
    group: GLOBAL_GROUP,
    hospital_topics: true,
};

/// A broker with the topics, the shared data directory, and what every
/// test needs around them.
struct Cluster {
    bootstrap: String,
    dir: tempfile::TempDir,
    /// The data directory every instance shares.
    shared: PathBuf,
    http: reqwest::Client,
    logs: Logs,
    producer: FutureProducer,
    // Last: stopped after everything that talks to it.
    _broker: Broker,
}

impl Cluster {
    async fn start() -> Self {
        let broker = Broker::start().expect("the test broker must start");
        for (topic, partitions) in [
            ("vitals", PARTITIONS),
            (ALERT_TOPIC, 1),
            ("vitals-dlq", 1),
            (REFERENCE_DLQ, 1),
        ] {
            broker.create_topic(topic, partitions).await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let producer: FutureProducer = broker
            .client_config()
            .set("linger.ms", "5")
            .create()
            .unwrap();
        Self {
            bootstrap: broker.bootstrap.clone(),
            dir,
            shared,
            http: reqwest::Client::new(),
            logs: Logs::default(),
            producer,
            _broker: broker,
        }
    }

    /// Writes the config of instance `spec` on `data`; returns its path.
    fn config_on(&self, spec: &Spec, data: &Path) -> PathBuf {
        let on = data.file_name().unwrap_or_default().to_string_lossy();
        let path = self
            .dir
            .path()
            .join(format!("{}-{}-on-{on}.toml", spec.name, spec.id));
        let head = format!("data_dir = {:?}\n", data.display().to_string());
        let kafka_extra = format!("hospital_topics = {}\n", spec.hospital_topics);
        let tail = format!(
            "[instance]\nid = {}\nrole = \"{}\"\nrule_watch_interval_ms = {RULE_WATCH_MS}\n",
            spec.id, spec.role
        );
        let text = config_text(
            &head,
            &self.bootstrap,
            spec.group,
            spec.partitions,
            &kafka_extra,
            &tail,
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The config of instance `spec` on the shared data directory.
    fn config(&self, spec: &Spec) -> PathBuf {
        self.config_on(spec, &self.shared)
    }

    /// Starts `wardwatch serve` with `config` on the shared directory.
    fn spawn(&mut self, config: &Path, what: &str) -> Running {
        let p = common::spawn_with_config(config, &self.shared);
        self.logs.add(what, &p);
        p
    }

    /// The reference: a single server (no `[instance]`) on a data
    /// directory of its own, reading every partition under a group of its
    /// own, never stopped: what one process alone alerts.
    fn spawn_reference(&mut self) -> Running {
        let data = self.dir.path().join("reference-data");
        let config = self.dir.path().join("reference.toml");
        let dlq = format!("dlq_topic = \"{REFERENCE_DLQ}\"\n");
        let text = config_text("", &self.bootstrap, REFERENCE_GROUP, &[], &dlq, "");
        std::fs::write(&config, text).unwrap();
        let p = common::spawn_with_config(&config, &data);
        self.logs.add("the reference (a single server)", &p);
        p
    }

    /// Everything produced (chunks and trailers), as offsets of `vitals`.
    fn produced(stream: &Stream) -> i64 {
        (stream.chunks.iter().map(Vec::len).sum::<usize>() + stream.trailers.len()) as i64
    }
}

/// Creates one rule on `p`; its id.
async fn create_rule(
    http: &reqwest::Client,
    p: &Running,
    name: &str,
    sql: &str,
    logs: &Logs,
) -> String {
    let r = http
        .post(format!("{}/api/rules", p.url))
        .json(&json!({"name": name, "sql": sql, "severity": "high", "cooldown_seconds": 0}))
        .send()
        .await
        .expect("POST /api/rules");
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    assert_eq!(
        status,
        201,
        "creating rule {name}: {body}; logs:{}",
        logs.dump()
    );
    body["id"].as_str().expect("a rule id").to_string()
}

/// The engine counters of rule `id` on `p` (`GET /api/rules/{id}`):
/// `Value::Null` when `p` does not run it, `None` when `p` does not answer
/// or does not know the rule.
async fn rule_stats(http: &reqwest::Client, p: &Running, id: &str) -> Option<Value> {
    let r = http
        .get(format!("{}/api/rules/{id}", p.url))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    Some(v["stats"].clone())
}

/// Waits until `p` runs every rule of `ids` (it shows their counters);
/// returns how long that took.
async fn wait_running(
    http: &reqwest::Client,
    p: &Running,
    what: &str,
    ids: &[&String],
    logs: &Logs,
) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    loop {
        let mut missing = vec![];
        for id in ids {
            if !rule_stats(http, p, id).await.is_some_and(|s| s.is_object()) {
                missing.push(id.as_str());
            }
        }
        if missing.is_empty() {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "instance {what} does not run rules {missing:?} 30 s after they were created; logs:{}",
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `p` has fired no alert of rule `id` (it does not run it,
/// or its counters say none).
async fn assert_fires_none(http: &reqwest::Client, p: &Running, what: &str, id: &str, logs: &Logs) {
    let stats = rule_stats(http, p, id).await;
    let fired = stats
        .as_ref()
        .map(|s| s["alerts_fired"].as_u64().unwrap_or(0));
    assert!(
        stats.is_some() && fired == Some(0),
        "instance {what} runs rule {id}, which is not for its role: stats {stats:?}; logs:{}",
        logs.dump()
    );
}

/// Creates [`RULES`] on `on` and waits until every instance of `all` runs
/// them (picked up from the shared rule store); id → name.
async fn create_patient_rules(
    c: &Cluster,
    on: &Running,
    all: &[(&str, &Running)],
) -> BTreeMap<String, String> {
    let rules = create_rules(&c.http, on, &c.logs).await;
    let ids: Vec<&String> = rules.keys().collect();
    for (what, p) in all {
        let took = wait_running(&c.http, p, what, &ids, &c.logs).await;
        println!(
            "instance {what} runs the {} rules {took:?} after they were created",
            ids.len()
        );
        assert!(
            took < RULE_PICKUP_BOUND,
            "instance {what} ran the rules only {took:?} after they were created \
             (rule_watch_interval_ms = {RULE_WATCH_MS}); logs:{}",
            c.logs.dump()
        );
    }
    rules
}

/// Kills `p` with SIGKILL once it has written a checkpoint and just after
/// it has read more (`chunk` produced): windows open, alerts possibly fired
/// since its last checkpoint.
async fn kill_9_mid_stream(c: &Cluster, p: Running, what: &str, chunk: &[Msg]) {
    wait_metric(
        &c.http,
        &p,
        "wardwatch_checkpoints_total",
        1.0,
        Duration::from_secs(30),
        EVERY_100MS,
        &c.logs,
    )
    .await;
    let m = metrics(&c.http, &p).await.unwrap_or_default();
    let read = metric(&m, "wardwatch_events_in_total").unwrap_or(0.0);
    produce(&c.producer, chunk).await;
    wait_metric(
        &c.http,
        &p,
        "wardwatch_events_in_total",
        read + 1.0,
        MINUTE,
        EVERY_5MS,
        &c.logs,
    )
    .await;
    drop(p);
    println!(
        "kill -9 {what}: after {} checkpoints and {read} events read, just after reading more",
        metric(&m, "wardwatch_checkpoints_total").unwrap_or(0.0)
    );
}

/// Produces the stream's first six chunks, kills `victim` with SIGKILL
/// while it reads the seventh (after a checkpoint), produces the eighth and
/// restarts it with `config`: returns the new process and how long after
/// its start it read an event again.
async fn kill_9_and_restart(
    c: &mut Cluster,
    victim: Running,
    what: &str,
    config: &Path,
    stream: &Stream,
) -> (Running, Duration) {
    for chunk in &stream.chunks[..=5] {
        produce(&c.producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    kill_9_mid_stream(c, victim, what, &stream.chunks[6]).await;
    produce(&c.producer, &stream.chunks[7]).await;
    let restarted = c.spawn(config, &format!("{what} after kill -9"));
    let first = wait_metric(
        &c.http,
        &restarted,
        "wardwatch_events_in_total",
        1.0,
        MINUTE,
        EVERY_5MS,
        &c.logs,
    )
    .await;
    println!("{what} restarted: process start to first event read {first:?}");
    (restarted, first)
}

/// Stops `p` with SIGTERM: it must exit successfully within 5 s.
async fn stop_gracefully(p: &mut Running, what: &str, logs: &Logs) {
    let (exit, took) = sigterm(p, logs).await;
    println!("SIGTERM {what}: exited {exit} {took:?} after SIGTERM");
    assert!(
        exit.success() && took < STOP_BOUND,
        "SIGTERM {what}: exit {exit} after {took:?}; logs:{}",
        logs.dump()
    );
}

/// Once everything is produced: waits until `groups` and the reference's
/// have committed it all, reads `alert-events` back and asserts, for the
/// alerts of `rules` (id → name): the cooldown-free patient rules as the
/// brute force says, the patient rules ([`RULES`], the cooldown rule
/// included) as the reference (`reference`: the process and its rules),
/// only fired alerts, every id once; and that every instance of
/// `instances` lists every fired id once in `GET /api/alerts`, each id
/// once, the same history from every instance, and for the patient rules
/// the reference's history (fired and suppressed). Returns the alerts of
/// `rules` on the topic.
async fn check_alerts(
    c: &Cluster,
    stream: &Stream,
    groups: &[&str],
    rules: &BTreeMap<String, String>,
    instances: &[(&str, &Running)],
    reference: (&Running, &BTreeMap<String, String>),
    seed: u64,
) -> Vec<Value> {
    let (reference, reference_rules) = reference;
    for group in groups.iter().chain([&REFERENCE_GROUP]) {
        wait_committed(
            &c.bootstrap,
            group,
            Some(Cluster::produced(stream)),
            MINUTE,
            &c.logs,
        )
        .await;
    }
    let everything = read_alert_topic_settled(&c.bootstrap, &c.logs).await;
    let of = |rules: &BTreeMap<String, String>| -> Vec<Value> {
        everything
            .iter()
            .filter(|v| rules.contains_key(v["rule_id"].as_str().unwrap_or_default()))
            .cloned()
            .collect()
    };
    let on_topic = of(rules);
    let topic: Vec<Seen> = on_topic.iter().map(seen).collect();
    let reference_topic: Vec<Seen> = of(reference_rules).iter().map(seen).collect();
    println!(
        "{ALERT_TOPIC}: {} alerts of the instances {:?}, {} of the reference {:?}",
        topic.len(),
        per_rule(&topic),
        reference_topic.len(),
        per_rule(&reference_topic)
    );
    for (what, p) in instances.iter().chain([&("reference", reference)]) {
        let m = metrics(&c.http, p).await.unwrap_or_default();
        let counts: Vec<String> = [
            "wardwatch_events_in_total",
            "wardwatch_events_duplicate_total",
            "wardwatch_events_late_total",
            "wardwatch_events_rejected_total",
            "wardwatch_alerts_fired_total",
            "wardwatch_alerts_suppressed_total",
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
        println!("instance {what}: {}", counts.join(" "));
    }

    // The cooldown-free patient rules: what one process alone alerts.
    let free: BTreeSet<&str> = [HR_TUMBLE, DESAT_HOP, TACHY_SESSION].into();
    let got = counted(
        topic
            .iter()
            .filter(|s| free.contains(s.rule_name.as_str()))
            .map(|s| &s.identity),
    );
    let want = counted(brute_force(&stream.readings).iter());
    assert!(
        !want.is_empty(),
        "the generated stream must make the rules fire (seed {seed})"
    );
    assert!(
        got == want,
        "the instances together do not alert as the brute force evaluation of the stream says \
         (seed {seed}):{}\nlogs:{}",
        diff("brute force", &want, "instances", &got),
        c.logs.dump()
    );
    assert!(
        topic.iter().all(|s| s.status == "fired"),
        "only fired alerts go to {ALERT_TOPIC}"
    );
    // The patient rules, the cooldown rule included: as one process alone.
    let patient: BTreeSet<&str> = RULES.iter().map(|r| r.0).collect();
    let full = |alerts: &[Seen]| {
        counted(
            alerts
                .iter()
                .filter(|s| patient.contains(s.rule_name.as_str()))
                .map(|s| &s.full),
        )
    };
    let (got, want) = (full(&topic), full(&reference_topic));
    assert!(
        got == want,
        "the instances together do not alert as one process alone (seed {seed}):{}\nlogs:{}",
        diff("the reference", &want, "instances", &got),
        c.logs.dump()
    );
    let ids = counted(topic.iter().map(|s| &s.id));
    let repeated: Vec<(&String, &usize)> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} alert ids reached {ALERT_TOPIC} more than once (seed {seed}): {:?}\nlogs:{}",
        repeated.len(),
        repeated.iter().take(25).collect::<Vec<_>>(),
        c.logs.dump()
    );

    // Every instance's history (the shared one): every fired id, each id
    // once (fired or suppressed), and the same alerts from every instance.
    struct History {
        what: String,
        /// `id | what it says | status`, counted.
        lines: BTreeMap<String, usize>,
        /// Ids, whatever their status, counted.
        ids: BTreeMap<String, usize>,
        fired: BTreeMap<String, usize>,
        /// Of the patient rules: `what it says | status`, counted.
        said: BTreeMap<String, usize>,
    }
    let said = |h: &[Seen]| {
        let lines: Vec<String> = h
            .iter()
            .filter(|s| patient.contains(s.rule_name.as_str()))
            .map(|s| format!("{} | {}", s.full, s.status))
            .collect();
        counted(lines.iter())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let histories = loop {
        let mut histories = vec![];
        for (what, p) in instances {
            let h: Vec<Seen> = history(&c.http, p)
                .await
                .unwrap_or_default()
                .iter()
                .map(seen)
                .filter(|s| rules.contains_key(&s.rule_id))
                .collect();
            let lines: Vec<String> = h
                .iter()
                .map(|s| format!("{} | {} | {}", s.id, s.full, s.status))
                .collect();
            histories.push(History {
                what: what.to_string(),
                lines: counted(lines.iter()),
                ids: counted(h.iter().map(|s| &s.id)),
                fired: counted(h.iter().filter(|s| s.status == "fired").map(|s| &s.id)),
                said: said(&h),
            });
        }
        let done = histories
            .iter()
            .all(|h| h.fired == ids && h.lines == histories[0].lines);
        if done || Instant::now() > deadline {
            break histories;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for h in &histories {
        let what = &h.what;
        assert!(
            h.fired == ids,
            "GET /api/alerts of instance {what} (fired) and {ALERT_TOPIC} differ (seed {seed}):{}\n\
             logs:{}",
            diff(ALERT_TOPIC, &ids, "history", &h.fired),
            c.logs.dump()
        );
        let twice: Vec<(&String, &usize)> = h.ids.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{} alert ids are in the history read from instance {what} more than once \
             (seed {seed}): {:?}\nlogs:{}",
            twice.len(),
            twice.iter().take(25).collect::<Vec<_>>(),
            c.logs.dump()
        );
        let first = &histories[0];
        assert!(
            h.lines == first.lines,
            "the history read from instance {what} differs from the one read from {} \
             (seed {seed}):{}\nlogs:{}",
            first.what,
            diff(&first.what, &first.lines, what, &h.lines),
            c.logs.dump()
        );
    }
    let suppressed = histories[0].ids.len() - ids.len();
    println!(
        "history: {} alerts ({suppressed} suppressed), the same from every instance",
        histories[0].ids.len()
    );

    // The patient rules' history, suppressed alerts included, is the
    // reference's (cooldown memory survives restarts and the split).
    let reference_fired = counted(reference_topic.iter().map(|s| &s.id));
    let deadline = Instant::now() + Duration::from_secs(30);
    let reference_said = loop {
        let h: Vec<Seen> = history(&c.http, reference)
            .await
            .unwrap_or_default()
            .iter()
            .map(seen)
            .filter(|s| reference_rules.contains_key(&s.rule_id))
            .collect();
        let fired = counted(h.iter().filter(|s| s.status == "fired").map(|s| &s.id));
        let reference_said = said(&h);
        if (fired == reference_fired && reference_said == histories[0].said)
            || Instant::now() > deadline
        {
            break reference_said;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        histories[0].said == reference_said,
        "the instances' alert history of the patient rules differs from the reference's \
         (seed {seed}):{}\nlogs:{}",
        diff(
            "the reference",
            &reference_said,
            "instances",
            &histories[0].said
        ),
        c.logs.dump()
    );
    on_topic
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_and_one_killed_9_and_restarted_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let seed = seed();
    let began = Instant::now();
    let t0 = recent_ms(MINUTE_MS, 60);
    let stream = generate(seed, t0);
    let mut c = Cluster::start().await;
    let (config_a, config_b) = (c.config(&A), c.config(&B));
    let a = c.spawn(&config_a, "A");
    let b = c.spawn(&config_b, "B, first start");
    let r = c.spawn_reference();
    wait_healthy(&c.http, &a, &c.logs).await;
    wait_healthy(&c.http, &b, &c.logs).await;
    let rules = create_patient_rules(&c, &a, &[("A", &a), ("B", &b)]).await;
    wait_healthy(&c.http, &r, &c.logs).await;
    let reference_rules = create_rules(&c.http, &r, &c.logs).await;

    let (b, first) = kill_9_and_restart(&mut c, b, "B", &config_b, &stream).await;
    for chunk in &stream.chunks[8..] {
        produce(&c.producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&c.producer, &stream.trailers).await;

    check_alerts(
        &c,
        &stream,
        &[PATIENT_GROUP],
        &rules,
        &[("A", &a), ("B", &b)],
        (&r, &reference_rules),
        seed,
    )
    .await;
    assert!(
        first < RESTART_BOUND,
        "B restarted after kill -9: {first:?} from process start to the first event read; logs:{}",
        c.logs.dump()
    );
    // Each instance checkpoints to a directory of its own.
    for id in [A.id, B.id] {
        let dir = c.shared.join(format!("checkpoints/i{id}"));
        let files = std::fs::read_dir(&dir).map_or(0, |d| d.count());
        assert!(files > 0, "no checkpoint in {}", dir.display());
    }
    let m = metrics(&c.http, &b).await.unwrap_or_default();
    assert!(
        metric_present(&m, "wardwatch_restore_seconds"),
        "/metrics of the restarted B has no wardwatch_restore_seconds"
    );
    println!("took {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_two_instances_under_load_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let seed = seed();
    let began = Instant::now();
    let t0 = recent_ms(MINUTE_MS, 60);
    let stream = generate(seed, t0);
    let mut c = Cluster::start().await;
    let (config_a, config_b) = (c.config(&A), c.config(&B));
    let mut a = c.spawn(&config_a, "A, first start");
    let mut b = c.spawn(&config_b, "B, first start");
    let r = c.spawn_reference();
    wait_healthy(&c.http, &a, &c.logs).await;
    wait_healthy(&c.http, &b, &c.logs).await;
    let rules = create_patient_rules(&c, &a, &[("A", &a), ("B", &b)]).await;
    wait_healthy(&c.http, &r, &c.logs).await;
    let reference_rules = create_rules(&c.http, &r, &c.logs).await;

    // A producer that keeps producing, a chunk every 300 ms, but never
    // past chunk `allowed` (raised as each instance is back, so that there
    // is always more to read after a restart).
    let (allowed, mut allowed_rx) = tokio::sync::watch::channel(10usize);
    let (produced_tx, mut produced) = tokio::sync::watch::channel(0usize);
    let producing = {
        let (producer, chunks) = (c.producer.clone(), stream.chunks.clone());
        tokio::spawn(async move {
            for (i, chunk) in chunks.iter().enumerate() {
                allowed_rx
                    .wait_for(|n| i < *n)
                    .await
                    .expect("the test holds the sender");
                produce(&producer, chunk).await;
                let _ = produced_tx.send(i + 1);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    produced.wait_for(|n| *n >= 3).await.unwrap();

    // A, then B: SIGTERM, restart, reading again.
    let mut back = vec![];
    for (what, p, config, allow) in [
        ("A", &mut a, &config_a, 15),
        ("B", &mut b, &config_b, stream.chunks.len()),
    ] {
        wait_metric(
            &c.http,
            p,
            "wardwatch_checkpoints_total",
            1.0,
            Duration::from_secs(30),
            EVERY_100MS,
            &c.logs,
        )
        .await;
        let m = metrics(&c.http, p).await.unwrap_or_default();
        println!(
            "{what}: {:?} events read, {:?} checkpoints, just before SIGTERM",
            metric(&m, "wardwatch_events_in_total"),
            metric(&m, "wardwatch_checkpoints_total")
        );
        stop_gracefully(p, what, &c.logs).await;
        println!("{what} stopped with {} chunks produced", *produced.borrow());
        *p = c.spawn(config, &format!("{what} after SIGTERM"));
        allowed.send_replace(allow);
        let first = wait_metric(
            &c.http,
            p,
            "wardwatch_events_in_total",
            1.0,
            MINUTE,
            EVERY_5MS,
            &c.logs,
        )
        .await;
        println!("{what} restarted: process start to first event read {first:?}");
        back.push((what, first));
    }
    producing.await.unwrap();
    produce(&c.producer, &stream.trailers).await;

    check_alerts(
        &c,
        &stream,
        &[PATIENT_GROUP],
        &rules,
        &[("A", &a), ("B", &b)],
        (&r, &reference_rules),
        seed,
    )
    .await;
    println!("restarts {back:?}; took {:?}", began.elapsed());
}

/// Per hospital and minute of the readings (each once): (count, sum of
/// heart rates in tenths).
fn hospital_minutes(readings: &[Reading]) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut out: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for r in readings {
        let start = r.ts.div_euclid(MINUTE_MS) * MINUTE_MS;
        let e = out.entry((r.hospital.clone(), start)).or_default();
        e.0 += 1;
        e.1 += (r.hr * 10.0).round() as i64;
    }
    out
}

/// A hospital-minute alert as compared: `hospital | start..end | n=…`.
fn hospital_identity(hospital: &str, start: i64, end: i64, n: i64) -> String {
    format!("{hospital} | {start}..{end} | n={n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_grouped_by_hospital_is_exact_with_two_instances() {
    let _serial = SERIAL.lock().await;
    let seed = seed();
    let began = Instant::now();
    let t0 = recent_ms(MINUTE_MS, 60);
    let stream = generate_in_hospitals(seed, t0, 2);
    let mut spread: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    for r in &stream.readings {
        spread
            .entry(r.hospital.as_str())
            .or_default()
            .insert(r.partition);
    }
    assert!(
        spread.len() == 2 && spread.values().all(|p| p.len() == PARTITIONS as usize),
        "two hospitals, each on every partition: {spread:?}"
    );

    // The threshold: a tenth at the median hospital-minute average, plus
    // 0.0123 (no average of readings given to a tenth over fewer than 1,000
    // readings equals it, nor comes within float error of it), so that
    // some windows fire and some do not.
    let minutes = hospital_minutes(&stream.readings);
    let avg = |(n, sum): (i64, i64)| sum as f64 / 10.0 / n as f64;
    let mut averages: Vec<f64> = minutes.values().map(|v| avg(*v)).collect();
    averages.sort_by(f64::total_cmp);
    let threshold = (averages[averages.len() / 2] * 10.0).floor() / 10.0 + 0.0123;
    let threshold = format!("{threshold:.4}");
    let limit: f64 = threshold.parse().unwrap();
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for ((hospital, start), v) in &minutes {
        if avg(*v) > limit {
            want.insert(
                hospital_identity(hospital, *start, start + MINUTE_MS, v.0),
                avg(*v),
            );
        }
    }
    println!(
        "{} hospital-minutes, {} with AVG(heart_rate_bpm) > {threshold}",
        minutes.len(),
        want.len()
    );
    assert!(
        !want.is_empty() && want.len() < minutes.len(),
        "some hospital-minutes must fire and some not (seed {seed}): {} of {}",
        want.len(),
        minutes.len()
    );
    let hospital_sql = format!(
        "SELECT hospital_id, COUNT(*) AS n, AVG(heart_rate_bpm) AS avg_hr
FROM vitals
GROUP BY hospital_id, TUMBLE(event_time, INTERVAL '1' MINUTE)
HAVING AVG(heart_rate_bpm) > {threshold}"
    );

    let mut c = Cluster::start().await;
    let (config_a, config_b, config_g) = (c.config(&A), c.config(&B), c.config(&G));
    let a = c.spawn(&config_a, "A");
    let b = c.spawn(&config_b, "B");
    let g = c.spawn(&config_g, "G, first start");
    let r = c.spawn_reference();
    for p in [&a, &b, &g, &r] {
        wait_healthy(&c.http, p, &c.logs).await;
    }
    let mut rules = create_patient_rules(&c, &a, &[("A", &a), ("B", &b)]).await;
    wait_healthy(&c.http, &r, &c.logs).await;
    let reference_rules = create_rules(&c.http, &r, &c.logs).await;
    let hospital_rule = create_rule(
        &c.http,
        &a,
        "Ward HR (hospital, 1 min)",
        &hospital_sql,
        &c.logs,
    )
    .await;
    let took = wait_running(&c.http, &g, "G", &[&hospital_rule], &c.logs).await;
    println!("instance G runs the hospital rule {took:?} after it was created on A");
    assert!(
        took < RULE_PICKUP_BOUND,
        "G ran the hospital rule only {took:?} after it was created; logs:{}",
        c.logs.dump()
    );
    rules.insert(hospital_rule.clone(), "Ward HR (hospital, 1 min)".into());

    let (g, _) = kill_9_and_restart(&mut c, g, "G", &config_g, &stream).await;
    // Restarted, it loaded the rule from the shared store at start.
    wait_running(&c.http, &g, "G (restarted)", &[&hospital_rule], &c.logs).await;
    println!(
        "G restarted: runs the hospital rule {:?} after starting",
        g.started.elapsed()
    );
    for chunk in &stream.chunks[8..] {
        produce(&c.producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&c.producer, &stream.trailers).await;

    // The patient rules as before, every id once, every history complete.
    let on_topic = check_alerts(
        &c,
        &stream,
        &[PATIENT_GROUP, GLOBAL_GROUP],
        &rules,
        &[("A", &a), ("B", &b), ("G", &g)],
        (&r, &reference_rules),
        seed,
    )
    .await;

    // The hospital rule: as the brute force says (its average to 1e-6: a
    // sum of some 240 readings in another order may differ in the last
    // bits).
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut averages: BTreeMap<String, f64> = BTreeMap::new();
    for v in on_topic
        .iter()
        .filter(|v| v["rule_id"].as_str() == Some(hospital_rule.as_str()))
    {
        let hospital = v["key"]
            .get("hospital_id")
            .or_else(|| v.get("hospital_id"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let identity = hospital_identity(
            hospital,
            v["window_start_ms"].as_i64().unwrap_or(-1),
            v["window_end_ms"].as_i64().unwrap_or(-1),
            v["values"]["n"].as_i64().unwrap_or(-1),
        );
        averages.insert(
            identity.clone(),
            v["values"]["avg_hr"].as_f64().unwrap_or(f64::NAN),
        );
        *got.entry(identity).or_default() += 1;
    }
    let want_counted = counted(want.keys());
    assert!(
        got == want_counted,
        "the rule grouped by hospital does not alert as the brute force evaluation says \
         (seed {seed}):{}\nlogs:{}",
        diff("brute force", &want_counted, "instances", &got),
        c.logs.dump()
    );
    for (identity, want_avg) in &want {
        let got_avg = averages[identity];
        assert!(
            (want_avg - got_avg).abs() < 1e-6,
            "{identity}: avg_hr {got_avg}, the brute force says {want_avg}"
        );
    }
    println!(
        "hospital rule: {} alerts, as the brute force says",
        got.len()
    );

    // A and B do not run the hospital rule, G runs no patient rule.
    for (what, p) in [("A", &a), ("B", &b)] {
        assert_fires_none(&c.http, p, what, &hospital_rule, &c.logs).await;
    }
    for id in rules.keys().filter(|id| **id != hospital_rule) {
        assert_fires_none(&c.http, &g, "G", id, &c.logs).await;
    }

    // Dead letters: the malformed payloads once each (from A and B; G,
    // killed once, writes none).
    let bootstrap = c.bootstrap.clone();
    let dead: Vec<Vec<u8>> =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, "vitals-dlq"))
            .await
            .unwrap();
    assert!(
        dead.len() == stream.malformed,
        "{} dead letters on vitals-dlq for {} malformed payloads: {:?}\nlogs:{}",
        dead.len(),
        stream.malformed,
        dead.iter()
            .take(20)
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect::<Vec<_>>(),
        c.logs.dump()
    );

    // The archive: each reading of the topic once (A and B archive it, G
    // nothing), read from any instance.
    let valid = (stream.readings.len() + stream.trailers.len()) as i64;
    let accepted = [valid, valid + stream.duplicates as i64];
    for (what, p) in [("A", &a), ("G", &g)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let archived = loop {
            let r = c
                .http
                .post(format!("{}/api/query", p.url))
                .json(&json!({"sql": "SELECT COUNT(*) AS n FROM vitals"}))
                .send()
                .await
                .expect("POST /api/query");
            let v: Value = r.json().await.unwrap_or_default();
            let n = v["rows"][0]["n"].as_i64();
            if n.is_some_and(|n| accepted.contains(&n)) || Instant::now() > deadline {
                break n.ok_or(v);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        println!("archive, read from {what}: {archived:?} readings");
        assert!(
            archived.as_ref().is_ok_and(|n| accepted.contains(n)),
            "the archive, read from {what}, holds {archived:?} readings; {valid} were produced \
             once ({} more delivered twice); logs:{}",
            stream.duplicates,
            c.logs.dump()
        );
    }
    println!("took {:?}", began.elapsed());
}

/// Waits (at most 30 s) for `p` to exit; its exit status and log.
async fn wait_exit(p: &mut Running, logs: &Logs) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = p.child.try_wait().expect("waiting for the server") {
            return (exit, std::fs::read_to_string(&p.log).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "a second process on a held data directory still runs after 30 s; logs:{}",
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `p` is refused: it exits with an error that says which
/// lock it could not take and what to do about instances, and holds
/// every one of `naming`.
async fn assert_refused(p: &mut Running, what: &str, naming: &[&str], logs: &Logs) {
    let (exit, log) = wait_exit(p, logs).await;
    let error = log
        .lines()
        .find(|l| l.starts_with("Error"))
        .unwrap_or_default();
    println!("{what}: {exit}; {error}");
    let lower = error.to_lowercase();
    assert!(
        !exit.success()
            && lower.contains("lock")
            && lower.contains("instance")
            && naming.iter().all(|n| error.contains(n)),
        "{what}: exit {exit}; its error should name the lock ({naming:?}) and say what to do \
         about instance ids:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_instance_id_is_refused() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start().await;
    let config_a = c.config(&A);
    let a = c.spawn(&config_a, "A");
    wait_healthy(&c.http, &a, &c.logs).await;
    assert!(
        c.shared.join("wardwatch-i0.lock").exists(),
        "no wardwatch-i0.lock in the data directory"
    );

    // The same id again.
    let mut again = c.spawn(&config_a, "a second A");
    assert_refused(
        &mut again,
        "a second process with id 0",
        &["wardwatch-i0.lock", "id = 0"],
        &c.logs,
    )
    .await;

    // No id, where instances run.
    let single = c.dir.path().join("single.toml");
    let head = format!("data_dir = {:?}\n", c.shared.display().to_string());
    std::fs::write(
        &single,
        config_text(&head, &c.bootstrap, "instances-single", &[], "", ""),
    )
    .unwrap();
    let mut alone = c.spawn(&single, "a server without an id");
    assert_refused(
        &mut alone,
        "a server without an id",
        &["wardwatch.lock"],
        &c.logs,
    )
    .await;

    // Another id shares the directory; A was not disturbed.
    let config_b = c.config(&B);
    let b = c.spawn(&config_b, "B");
    wait_healthy(&c.http, &b, &c.logs).await;
    wait_healthy(&c.http, &a, &c.logs).await;

    // Vice versa: an instance where a server without an id runs.
    let other = c.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let head = format!("data_dir = {:?}\n", other.display().to_string());
    std::fs::write(
        &single,
        config_text(&head, &c.bootstrap, "instances-single", &[], "", ""),
    )
    .unwrap();
    let s = common::spawn_with_config(&single, &other);
    c.logs.add("a server without an id, alone", &s);
    wait_healthy(&c.http, &s, &c.logs).await;
    let config_on_other = c.config_on(&A, &other);
    let mut instance = common::spawn_with_config(&config_on_other, &other);
    c.logs
        .add("an instance where a server without an id runs", &instance);
    assert_refused(
        &mut instance,
        "an instance where a server without an id runs",
        &["wardwatch.lock"],
        &c.logs,
    )
    .await;
    wait_healthy(&c.http, &s, &c.logs).await;
}

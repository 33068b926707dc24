//! The archive with Kafka across a restart: events consumed by one server,
//! then more events consumed by a second server on the same data directory
//! and consumer group, are each archived exactly once — counted by the
//! server's SQL and by DuckDB reading the files.

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use wardwatch_tests::{Broker, Server};

/// Recent event time: the archive's retention (30 days) would rightly
/// delete older files at startup.
fn t0() -> i64 {
    let hour = 3_600_000;
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        / hour
        - 1)
        * hour
}

async fn produce(broker: &Broker, from: i64, count: i64) {
    let t0 = t0();
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut sends = vec![];
    for i in from..from + count {
        let patient = format!("P{:03}", i % 40);
        let payload = json!({"patient_id": patient, "timestamp_unix_ms": t0 + i * 250, "heart_rate_bpm": 80.0,
                             "source_device": "BEDSIDE", "sequence_number": i})
        .to_string();
        let producer = producer.clone();
        sends.push(async move {
            producer
                .send(
                    FutureRecord::to("vitals").key(&patient).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map(|_| ())
        });
    }
    for s in futures::future::join_all(sends).await {
        s.map_err(|(e, _)| e).expect("produce");
    }
}

async fn count(server: &Server) -> i64 {
    let r: Value = server
        .http
        .post(server.url("/api/query"))
        .json(&json!({"sql": "SELECT count(*) AS n, count(DISTINCT sequence_number) AS d FROM vitals"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = r["rows"][0]["n"].as_i64().unwrap();
    assert_eq!(
        r["rows"][0]["d"].as_i64().unwrap(),
        n,
        "an event is in the archive twice: {r}"
    );
    n
}

async fn wait_for(server: &Server, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = count(server).await;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_archived_exactly_once_across_a_restart() {
    let broker = Broker::start().expect("the test broker must start");
    broker.create_topic("vitals", 4).await.unwrap();
    broker.create_topic("alert-events", 1).await.unwrap();
    broker.create_topic("vitals-dlq", 1).await.unwrap();
    let config = || {
        let mut c = wardwatch::config::Config::default();
        c.kafka.brokers = Some(broker.bootstrap.clone());
        c.kafka.group_id = "wardwatch-archive".into();
        c.archive.flush_interval_ms = 300;
        c
    };

    let first = Server::start(config()).await.expect("first server");
    produce(&broker, 0, 3000).await;
    assert_eq!(wait_for(&first, 3000).await, 3000);
    let data_dir = first.data_dir.clone();
    // Let files and offset commits land, then stop as a deploy would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.stop().await.expect("graceful stop");

    produce(&broker, 3000, 2000).await;
    let second = Server::start_in(config(), data_dir)
        .await
        .expect("second server");
    assert_eq!(
        wait_for(&second, 5000).await,
        5000,
        "first run's events plus the new ones, once each"
    );
    // Files written, then counted by another tool.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&second).await, 5000);
    assert_eq!(
        wardwatch_tests::duckdb_first_row(
            second.data_dir.path(),
            "SELECT count(*), count(DISTINCT sequence_number) FROM {vitals}"
        ),
        "(5000, 5000)"
    );
}

/// A server started before its topic exists (a fresh cluster, a topic
/// created by a later deploy step) starts consuming within seconds of the
/// topic's creation, not after librdkafka's five-minute metadata refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_start_is_consumed_within_seconds() {
    let broker = Broker::start().expect("the test broker must start");
    broker.create_topic("alert-events", 1).await.unwrap();
    broker.create_topic("vitals-dlq", 1).await.unwrap();
    let mut config = wardwatch::config::Config::default();
    config.kafka.brokers = Some(broker.bootstrap.clone());
    config.kafka.group_id = "wardwatch-late-topic".into();
    config.archive.flush_interval_ms = 300;
    let server = Server::start(config).await.expect("server starts");
    // Long enough for the consumer to have joined its group with no topic.
    tokio::time::sleep(Duration::from_secs(6)).await;

    broker.create_topic("vitals", 2).await.unwrap();
    let created = Instant::now();
    produce(&broker, 0, 200).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while Instant::now() < deadline {
        n = count(&server).await;
        if n >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(n, 200, "events of a topic created after start");
    eprintln!(
        "consumed {:?} after the topic was created",
        created.elapsed()
    );
}

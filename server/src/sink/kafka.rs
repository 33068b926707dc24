//! The Kafka producer shared by the alert and dead-letter sinks.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;

#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer,
}

pub fn client_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

impl KafkaProducer {
    pub fn new(kafka: &KafkaConfig, brokers: &str) -> Result<Self> {
        let mut cfg = client_config(kafka, brokers);
        cfg.set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000");
        let producer: FutureProducer = cfg.create().context("creating the Kafka producer")?;
        Ok(Self { producer })
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<()> {
        self.send_at(topic, key, payload, headers).await.map(|_| ())
    }

    /// [`send`](Self::send), answering the (partition, offset) the record
    /// landed at.
    pub async fn send_at(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(i32, i64)> {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(h);
        let delivery = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        Ok((delivery.partition, delivery.offset))
    }
}

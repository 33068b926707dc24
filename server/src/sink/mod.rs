//! Where results leave wardwatch: alerts (history, live feed, Kafka) and
//! dead letters (Kafka topic or, embedded, a table).

pub mod alerts;
pub mod dead_letter;
pub mod kafka;

//! Where events enter: Kafka ([`kafka`]), newline-delimited JSON over HTTP
//! and the demo ward ([`ingest`]); all decode with [`decode`] into the same
//! Arrow batches and hand them to the one [`crate::intake::Intake`].

pub mod decode;
pub mod ingest;
pub mod kafka;
pub mod topics;

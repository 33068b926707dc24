//! JSON `VitalEvent` payloads → Arrow, on the ingest hot path.
//!
//! This module owns the translation of one Kafka message body into one row of
//! the canonical `vitals` batch ([`sql_rules::stream::vitals_schema`]) and the
//! decision of whether an event is acceptable at all. It is pure: no Kafka, no
//! clock, no I/O. The source loop feeds payloads to [`VitalsDecoder::push_json`],
//! sends refused payloads to the dead-letter topic with [`Rejection::reason`]
//! as the `reason` header, and calls [`VitalsDecoder::finish`] to cut a batch.
//!
//! Event time is checked against the server's clock when the source asks for
//! it ([`VitalsDecoder::with_time_bounds`]): an event more than
//! `max_future_skew_ms` ahead of the clock, or older than the archive keeps
//! events, is refused. The clock is data here: the source reads it once per
//! chunk and hands it over with [`VitalsDecoder::set_now`]. This is what
//! keeps one event with a wild timestamp from moving a partition's event time
//! (and so the watermark) anywhere past `now + max_future_skew_ms`.
//!
//! Decoding is two-step and allocation-free per event in the common case:
//! the payload is parsed with serde into a stack-only [`RawEvent`] whose strings
//! borrow from the payload (only strings containing JSON escapes are copied),
//! and whose values are kept loosely typed so that a wrong type becomes a
//! specific rejection rather than a generic serde error. The raw event is then
//! validated as a whole, and only a fully valid event is appended to the Arrow
//! builders, so a rejected event never leaves a partial row behind.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    UInt32Builder,
};
use arrow::record_batch::RecordBatch;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sql_rules::stream::{col, event_time_type, vitals_schema, SOURCE_DEVICES};

/// Why an event was refused, for the dead-letter `reason` header.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Short, specific and human-readable, e.g. `missing patient_id`.
    /// Refusals by event time start with [`FUTURE`] or
    /// [`OLDER_THAN_RETENTION`].
    pub reason: String,
}

/// How a refusal of an event dated too far ahead of the server clock starts.
pub const FUTURE: &str = "timestamp in the future";

/// How a refusal of an event older than the archive keeps starts.
pub const OLDER_THAN_RETENTION: &str = "timestamp older than retention";

const DAY_MS: i64 = 86_400_000;

/// Which event times the server accepts, relative to its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeBounds {
    /// An event more than this far ahead of the server clock is refused.
    pub max_future_skew_ms: i64,
    /// An event dated before the first day the archive keeps (today, UTC,
    /// minus this many days) is refused: retention would delete it.
    pub retention_days: u32,
}

impl Default for EventTimeBounds {
    fn default() -> Self {
        Self {
            max_future_skew_ms: 300_000,
            retention_days: 30,
        }
    }
}

impl EventTimeBounds {
    /// The bounds a server runs with: `[pipeline] max_future_skew_ms` and
    /// `[archive] retention_days`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_future_skew_ms: config.pipeline.max_future_skew_ms,
            retention_days: config.archive.retention_days,
        }
    }

    /// The accepted range `[earliest, latest]` at server time `now_ms`. The
    /// earliest is midnight UTC `retention_days` before today's, the first
    /// instant the archive's retention keeps (it deletes whole days).
    fn accepted(self, now_ms: i64) -> (i64, i64) {
        let today = now_ms.div_euclid(DAY_MS).saturating_mul(DAY_MS);
        let earliest = today.saturating_sub(i64::from(self.retention_days).saturating_mul(DAY_MS));
        (
            earliest,
            now_ms.saturating_add(self.max_future_skew_ms.max(0)),
        )
    }
}

/// The accepted event-time range at the last [`VitalsDecoder::set_now`].
#[derive(Debug, Clone, Copy)]
struct TimeCheck {
    bounds: EventTimeBounds,
    now_ms: i64,
    earliest_ms: i64,
    latest_ms: i64,
}

impl TimeCheck {
    fn new(bounds: EventTimeBounds, now_ms: i64) -> Self {
        let (earliest_ms, latest_ms) = bounds.accepted(now_ms);
        Self {
            bounds,
            now_ms,
            earliest_ms,
            latest_ms,
        }
    }

    #[inline]
    fn check(&self, ts: i64) -> Result<(), Rejection> {
        if ts > self.latest_ms {
            return Err(Rejection::new(format!(
                "{FUTURE}: {} {ts} ({}) is more than {} ms ahead of the server clock ({})",
                col::TIMESTAMP_UNIX_MS,
                utc(ts),
                self.bounds.max_future_skew_ms,
                utc(self.now_ms),
            )));
        }
        if ts < self.earliest_ms {
            return Err(Rejection::new(format!(
                "{OLDER_THAN_RETENTION}: {} {ts} ({}) is before {}, the oldest day the archive keeps ({} days)",
                col::TIMESTAMP_UNIX_MS,
                utc(ts),
                utc(self.earliest_ms),
                self.bounds.retention_days,
            )));
        }
        Ok(())
    }
}

/// A timestamp for people, e.g. `2026-01-01T00:00:00.000Z`.
fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Rejection {}

/// Exclusive upper bound on event time: 3000-01-01T00:00:00Z in ms.
const YEAR_3000_MS: i64 = 32_503_680_000_000;

/// Longest piece of a payload string echoed back in a rejection reason.
const ECHO_MAX_CHARS: usize = 32;

/// Plausible range of one reading, inclusive at both ends.
struct Bounds {
    name: &'static str,
    min: f64,
    max: f64,
}

impl Bounds {
    const fn new(name: &'static str, min: f64, max: f64) -> Self {
        Self { name, min, max }
    }
}

/// Bounds of the five readings, in schema order (`sql_rules::stream::READINGS`).
const READING_BOUNDS: [Bounds; 5] = [
    Bounds::new(col::HEART_RATE_BPM, 0.0, 400.0),
    Bounds::new(col::SPO2_PCT, 0.0, 100.0),
    Bounds::new(col::RESPIRATION_RATE, 0.0, 200.0),
    Bounds::new(col::SYSTOLIC_BP_MMHG, 0.0, 400.0),
    Bounds::new(col::DIASTOLIC_BP_MMHG, 0.0, 300.0),
];

/// Accumulates decoded events into Arrow builders, one per column of
/// [`vitals_schema`], and cuts them into [`RecordBatch`]es.
#[derive(Debug)]
pub struct VitalsDecoder {
    capacity: usize,
    columns: Columns,
    rows: usize,
    /// `None`: event time is checked only against fixed bounds (years 1970
    /// to 3000), as for archived or generated events.
    time: Option<TimeCheck>,
    /// `Some`: only events of these hospitals are taken (a sender limited
    /// to some hospitals).
    hospitals: Option<Arc<[String]>>,
    /// `Some`: every event is this hospital's (read from its own topic):
    /// one without `hospital_id` gets it, one naming another is refused.
    own_hospital: Option<Arc<str>>,
}

impl VitalsDecoder {
    /// A decoder whose builders are pre-sized for `capacity` events per batch
    /// (they still grow if more are pushed).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            columns: Columns::with_capacity(capacity),
            rows: 0,
            time: None,
            hospitals: None,
            own_hospital: None,
        }
    }

    /// Events of one hospital only, as from its own topic: those without a
    /// `hospital_id` get `hospital`, those naming another are refused.
    pub fn with_own_hospital(mut self, hospital: Option<Arc<str>>) -> Self {
        self.own_hospital = hospital;
        self
    }

    /// Also refuses events of other hospitals than these, and events
    /// without a hospital.
    pub fn with_hospitals(mut self, hospitals: Option<Arc<[String]>>) -> Self {
        self.hospitals = hospitals;
        self
    }

    /// Also refuses events outside `bounds` around the server clock, which
    /// reads `now_ms` until the next [`set_now`](Self::set_now).
    pub fn with_time_bounds(mut self, bounds: EventTimeBounds, now_ms: i64) -> Self {
        self.time = Some(TimeCheck::new(bounds, now_ms));
        self
    }

    /// The server clock, read by the caller once per chunk (not per event).
    /// Without [`with_time_bounds`](Self::with_time_bounds) it is not used.
    pub fn set_now(&mut self, now_ms: i64) {
        if let Some(check) = &mut self.time {
            *check = TimeCheck::new(check.bounds, now_ms);
        }
    }

    /// Decodes one JSON event and appends it; on rejection nothing is appended.
    pub fn push_json(&mut self, payload: &[u8]) -> Result<(), Rejection> {
        let raw: RawEvent<'_> = serde_json::from_slice(payload).map_err(json_rejection)?;
        let mut event = raw.validate()?;
        if let Some(own) = &self.own_hospital {
            match event.hospital_id.as_deref() {
                None => event.hospital_id = Some(Cow::Owned(own.to_string())),
                Some(h) if h == &**own => {}
                Some(h) => {
                    return Err(Rejection::new(format!(
                        "hospital_id '{}' on the topic of hospital '{own}': its topic carries only its own events",
                        h.chars().take(ECHO_MAX_CHARS).collect::<String>()
                    )))
                }
            }
        }
        // After the other checks: a malformed event is refused for what is
        // wrong with it, whatever its date.
        if let Some(check) = &self.time {
            check.check(event.timestamp_unix_ms)?;
        }
        if let Some(allowed) = &self.hospitals {
            match event.hospital_id.as_deref() {
                Some(h) if allowed.iter().any(|a| a == h) => {}
                Some(h) => {
                    return Err(Rejection::new(format!(
                        "hospital_id '{}' is not one this sender may send events for",
                        h.chars().take(ECHO_MAX_CHARS).collect::<String>()
                    )))
                }
                None => {
                    return Err(Rejection::new(
                        "hospital_id is required of a sender limited to hospitals",
                    ))
                }
            }
        }
        self.columns.append(&event);
        self.rows += 1;
        Ok(())
    }

    /// Events appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no event has been appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Finishes the batch (schema exactly `vitals_schema()`) and resets the builders.
    pub fn finish(&mut self) -> RecordBatch {
        // Swap in fresh, pre-sized builders: finishing an Arrow builder hands its
        // buffers to the array and would otherwise leave it to regrow from zero.
        let mut done = std::mem::replace(&mut self.columns, Columns::with_capacity(self.capacity));
        self.rows = 0;
        done.finish()
    }
}

/// One Arrow builder per column, in schema order.
#[derive(Debug)]
struct Columns {
    hospital_id: StringBuilder,
    patient_id: StringBuilder,
    timestamp_unix_ms: Int64Builder,
    readings: [Float64Builder; 5],
    source_device: StringBuilder,
    sequence_number: UInt32Builder,
    event_time: TimestampMillisecondBuilder,
}

impl Columns {
    fn with_capacity(rows: usize) -> Self {
        // Ids are short ("H01", "P000123", "BEDSIDE"): 8 bytes a row is a fair guess.
        let bytes = rows.saturating_mul(8);
        Self {
            hospital_id: StringBuilder::with_capacity(rows, bytes),
            patient_id: StringBuilder::with_capacity(rows, bytes),
            timestamp_unix_ms: Int64Builder::with_capacity(rows),
            readings: std::array::from_fn(|_| Float64Builder::with_capacity(rows)),
            source_device: StringBuilder::with_capacity(rows, bytes),
            sequence_number: UInt32Builder::with_capacity(rows),
            event_time: TimestampMillisecondBuilder::with_capacity(rows)
                .with_data_type(event_time_type()),
        }
    }

    fn append(&mut self, event: &ValidEvent<'_>) {
        self.hospital_id.append_option(event.hospital_id.as_deref());
        self.patient_id.append_value(&event.patient_id);
        self.timestamp_unix_ms.append_value(event.timestamp_unix_ms);
        for (builder, reading) in self.readings.iter_mut().zip(event.readings) {
            builder.append_option(reading);
        }
        self.source_device.append_option(event.source_device);
        self.sequence_number.append_option(event.sequence_number);
        self.event_time.append_value(event.timestamp_unix_ms);
    }

    fn finish(&mut self) -> RecordBatch {
        let [hr, spo2, rr, sbp, dbp] = &mut self.readings;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.hospital_id.finish()),
            Arc::new(self.patient_id.finish()),
            Arc::new(self.timestamp_unix_ms.finish()),
            Arc::new(hr.finish()),
            Arc::new(spo2.finish()),
            Arc::new(rr.finish()),
            Arc::new(sbp.finish()),
            Arc::new(dbp.finish()),
            Arc::new(self.source_device.finish()),
            Arc::new(self.sequence_number.finish()),
            Arc::new(self.event_time.finish()),
        ];
        // Column order, types and lengths are fixed by construction and only
        // validated events (which never put a null in a required column) are
        // appended, so a mismatch here is a bug in this module, not bad input.
        RecordBatch::try_new(vitals_schema(), columns)
            .expect("decoder columns always match vitals_schema()")
    }
}

/// An event that passed validation, borrowing from the payload.
struct ValidEvent<'a> {
    hospital_id: Option<Cow<'a, str>>,
    patient_id: Cow<'a, str>,
    timestamp_unix_ms: i64,
    readings: [Option<f64>; 5],
    source_device: Option<&'static str>,
    sequence_number: Option<u32>,
}

/// Maps a serde_json failure to a rejection: malformed text versus
/// well-formed JSON that is not an event object (or repeats a field).
fn json_rejection(err: serde_json::Error) -> Rejection {
    match err.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            Rejection::new(format!("invalid JSON: {err}"))
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            Rejection::new(format!("invalid event: {err}"))
        }
    }
}

/// A payload string as it may appear in a rejection reason: quoted, escaped,
/// and cut short so a hostile payload cannot bloat the dead-letter header.
fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
    }
}

/// A JSON value as the decoder needs it: scalars kept (strings borrowed from
/// the payload when they contain no escapes), containers skipped and only
/// named. Accepting any value here keeps type errors out of serde, so they can
/// be reported per field.
#[derive(Debug, Clone, PartialEq)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    /// The JSON type name, for "must be a number, got string" reasons.
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "boolean",
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) => "number",
            Scalar::Str(_) => "string",
            Scalar::Array => "array",
            Scalar::Object => "object",
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Scalar::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::UInt(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// The fields of a VitalEvent object the decoder knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    HospitalId,
    PatientId,
    TimestampUnixMs,
    /// Index into [`READING_BOUNDS`].
    Reading(usize),
    SourceDevice,
    SequenceNumber,
    Unknown,
}

impl Key {
    fn from_name(name: &str) -> Self {
        match name {
            col::HOSPITAL_ID => Key::HospitalId,
            col::PATIENT_ID => Key::PatientId,
            col::TIMESTAMP_UNIX_MS => Key::TimestampUnixMs,
            col::SOURCE_DEVICE => Key::SourceDevice,
            col::SEQUENCE_NUMBER => Key::SequenceNumber,
            other => READING_BOUNDS
                .iter()
                .position(|b| b.name == other)
                .map_or(Key::Unknown, Key::Reading),
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key::from_name(v))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A VitalEvent object as parsed, before validation: each known field is
/// `None` when absent and `Some(Scalar::Null)` when explicitly null.
#[derive(Debug, Default)]
struct RawEvent<'a> {
    hospital_id: Option<Scalar<'a>>,
    patient_id: Option<Scalar<'a>>,
    timestamp_unix_ms: Option<Scalar<'a>>,
    readings: [Option<Scalar<'a>>; 5],
    source_device: Option<Scalar<'a>>,
    sequence_number: Option<Scalar<'a>>,
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawEventVisitor)
    }
}

struct RawEventVisitor;

impl<'de> Visitor<'de> for RawEventVisitor {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a VitalEvent JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut event = RawEvent::default();
        while let Some(key) = map.next_key::<Key>()? {
            let (slot, name) = match key {
                Key::HospitalId => (&mut event.hospital_id, col::HOSPITAL_ID),
                Key::PatientId => (&mut event.patient_id, col::PATIENT_ID),
                Key::TimestampUnixMs => (&mut event.timestamp_unix_ms, col::TIMESTAMP_UNIX_MS),
                Key::Reading(i) => (&mut event.readings[i], READING_BOUNDS[i].name),
                Key::SourceDevice => (&mut event.source_device, col::SOURCE_DEVICE),
                Key::SequenceNumber => (&mut event.sequence_number, col::SEQUENCE_NUMBER),
                Key::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
            }
            *slot = Some(map.next_value::<Scalar<'de>>()?);
        }
        Ok(event)
    }
}

/// Longest `patient_id` or `hospital_id`, in bytes.
pub const MAX_ID_BYTES: usize = 128;

impl<'a> RawEvent<'a> {
    /// Checks every field; the first problem found is the rejection.
    fn validate(self) -> Result<ValidEvent<'a>, Rejection> {
        let patient_id = match self.patient_id {
            None | Some(Scalar::Null) => return Err(Rejection::new("missing patient_id")),
            Some(Scalar::Str(s)) if s.is_empty() => {
                return Err(Rejection::new("patient_id must not be empty"))
            }
            // Every id is interned and kept in engine state: a device must
            // not be able to park megabytes per event there.
            Some(Scalar::Str(s)) if s.len() > MAX_ID_BYTES => {
                return Err(Rejection::new(format!(
                    "patient_id is {} bytes long; the limit is {MAX_ID_BYTES}",
                    s.len()
                )))
            }
            Some(Scalar::Str(s)) => s,
            Some(other) => {
                return Err(Rejection::new(format!(
                    "patient_id must be a string, got {}",
                    other.kind()
                )))
            }
        };

        let hospital_id = match self.hospital_id {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Str(s)) if s.len() > MAX_ID_BYTES => {
                return Err(Rejection::new(format!(
                    "hospital_id is {} bytes long; the limit is {MAX_ID_BYTES}",
                    s.len()
                )))
            }
            Some(Scalar::Str(s)) => Some(s),
            Some(other) => {
                return Err(Rejection::new(format!(
                    "hospital_id must be a string or null, got {}",
                    other.kind()
                )))
            }
        };

        let timestamp_unix_ms = match self.timestamp_unix_ms {
            None | Some(Scalar::Null) => return Err(Rejection::new("missing timestamp_unix_ms")),
            Some(value) => validate_timestamp(&value)?,
        };

        let mut readings = [None; 5];
        for ((slot, raw), bounds) in readings.iter_mut().zip(&self.readings).zip(&READING_BOUNDS) {
            *slot = validate_reading(raw.as_ref(), bounds)?;
        }

        let source_device = match self.source_device {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Str(s)) => match SOURCE_DEVICES.iter().find(|d| **d == s) {
                Some(device) => Some(*device),
                None => {
                    return Err(Rejection::new(format!(
                        "source_device must be one of {}, got {}",
                        SOURCE_DEVICES.join(", "),
                        echo(&s)
                    )))
                }
            },
            Some(other) => {
                return Err(Rejection::new(format!(
                    "source_device must be a string or null, got {}",
                    other.kind()
                )))
            }
        };

        let sequence_number = match self.sequence_number {
            None | Some(Scalar::Null) => None,
            Some(value) => Some(validate_sequence_number(&value)?),
        };

        Ok(ValidEvent {
            hospital_id,
            patient_id,
            timestamp_unix_ms,
            readings,
            source_device,
            sequence_number,
        })
    }
}

/// A JSON number that must be integral: integers as they are, floats only
/// when they have no fractional part (e.g. `1.7e12`). `Err` carries the text
/// to show after "got".
fn integral(value: &Scalar<'_>) -> Result<i128, String> {
    match *value {
        Scalar::Int(v) => Ok(i128::from(v)),
        Scalar::UInt(v) => Ok(i128::from(v)),
        // Beyond ±2^63 the value is out of every range we accept anyway; the
        // bound keeps the cast exact.
        Scalar::Float(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.2e18 => Ok(v as i128),
        Scalar::Float(v) => Err(v.to_string()),
        ref other => Err(other.kind().to_owned()),
    }
}

fn validate_timestamp(value: &Scalar<'_>) -> Result<i64, Rejection> {
    let ms = integral(value).map_err(|got| {
        Rejection::new(format!(
            "{} must be an integer, got {got}",
            col::TIMESTAMP_UNIX_MS
        ))
    })?;
    match i64::try_from(ms) {
        Ok(ms) if ms > 0 && ms < YEAR_3000_MS => Ok(ms),
        _ => Err(Rejection::new(format!(
            "{} must be after 1970-01-01 and before year 3000, got {ms}",
            col::TIMESTAMP_UNIX_MS
        ))),
    }
}

fn validate_sequence_number(value: &Scalar<'_>) -> Result<u32, Rejection> {
    let n = integral(value).map_err(|got| {
        Rejection::new(format!(
            "{} must be an integer, got {got}",
            col::SEQUENCE_NUMBER
        ))
    })?;
    u32::try_from(n).map_err(|_| {
        Rejection::new(format!(
            "{} must be between 0 and {}, got {n}",
            col::SEQUENCE_NUMBER,
            u32::MAX
        ))
    })
}

fn validate_reading(value: Option<&Scalar<'_>>, bounds: &Bounds) -> Result<Option<f64>, Rejection> {
    let v = match value {
        None | Some(Scalar::Null) => return Ok(None),
        Some(Scalar::Int(v)) => *v as f64,
        Some(Scalar::UInt(v)) => *v as f64,
        Some(Scalar::Float(v)) => *v,
        Some(other) => {
            return Err(Rejection::new(format!(
                "{} must be a number or null, got {}",
                bounds.name,
                other.kind()
            )))
        }
    };
    // `contains` is false for NaN and the infinities, so they are refused too.
    if (bounds.min..=bounds.max).contains(&v) {
        Ok(Some(v))
    } else {
        Err(Rejection::new(format!(
            "{} must be between {} and {}, got {v}",
            bounds.name, bounds.min, bounds.max
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType, UInt32Type};
    use sql_rules::stream::idx;

    const VALID: &str = r#"{"hospital_id":"H01","patient_id":"P000123","timestamp_unix_ms":1704067200123,
        "heart_rate_bpm":72.5,"spo2_pct":98,"respiration_rate":16.0,"systolic_bp_mmhg":120.1,
        "diastolic_bp_mmhg":80,"source_device":"BEDSIDE","sequence_number":42}"#;

    fn reject(payload: &str) -> String {
        let mut decoder = VitalsDecoder::new(4);
        let rejection = decoder
            .push_json(payload.as_bytes())
            .expect_err("payload should be rejected");
        assert!(decoder.is_empty(), "a rejected event must not append a row");
        rejection.reason
    }

    /// A valid event with one field's raw JSON value replaced (or the field removed with `None`).
    fn with_field(field: &str, value: Option<&str>) -> String {
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(VALID).expect("test fixture is valid JSON");
        match value {
            Some(v) => {
                object.insert(
                    field.to_owned(),
                    serde_json::from_str(v).expect("test value is JSON"),
                );
            }
            None => {
                object.remove(field);
            }
        }
        serde_json::Value::Object(object).to_string()
    }

    #[test]
    fn a_hospitals_own_topic_fills_in_its_id_and_refuses_others() {
        let mut decoder = VitalsDecoder::new(8).with_own_hospital(Some(Arc::from("H01")));
        decoder
            .push_json(with_field("hospital_id", None).as_bytes())
            .expect("no hospital_id: it is this hospital's");
        decoder.push_json(VALID.as_bytes()).expect("its own id");
        let rejection = decoder
            .push_json(with_field("hospital_id", Some("\"H02\"")).as_bytes())
            .expect_err("another hospital's event");
        assert!(
            rejection.reason.contains("on the topic of hospital 'H01'"),
            "{}",
            rejection.reason
        );
        let batch = decoder.finish();
        assert_eq!(batch.num_rows(), 2);
        let hospitals = batch.column(idx::HOSPITAL_ID).as_string::<i32>();
        assert_eq!((hospitals.value(0), hospitals.value(1)), ("H01", "H01"));
    }

    #[test]
    fn valid_event_round_trips_into_the_batch() {
        let mut decoder = VitalsDecoder::new(8);
        decoder.push_json(VALID.as_bytes()).expect("valid event");
        assert_eq!(decoder.len(), 1);
        let batch = decoder.finish();
        assert_eq!(batch.num_rows(), 1);
        assert!(decoder.is_empty());

        assert_eq!(
            batch.column(idx::HOSPITAL_ID).as_string::<i32>().value(0),
            "H01"
        );
        assert_eq!(
            batch.column(idx::PATIENT_ID).as_string::<i32>().value(0),
            "P000123"
        );
        assert_eq!(
            batch
                .column(idx::TIMESTAMP_UNIX_MS)
                .as_primitive::<Int64Type>()
                .value(0),
            1_704_067_200_123
        );
        let reading = |i: usize| batch.column(i).as_primitive::<Float64Type>().value(0);
        assert_eq!(reading(idx::HEART_RATE_BPM), 72.5);
        assert_eq!(reading(idx::SPO2_PCT), 98.0);
        assert_eq!(reading(idx::RESPIRATION_RATE), 16.0);
        assert_eq!(reading(idx::SYSTOLIC_BP_MMHG), 120.1);
        assert_eq!(reading(idx::DIASTOLIC_BP_MMHG), 80.0);
        assert_eq!(
            batch.column(idx::SOURCE_DEVICE).as_string::<i32>().value(0),
            "BEDSIDE"
        );
        assert_eq!(
            batch
                .column(idx::SEQUENCE_NUMBER)
                .as_primitive::<UInt32Type>()
                .value(0),
            42
        );
        assert_eq!(
            batch
                .column(idx::EVENT_TIME)
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            1_704_067_200_123
        );
    }

    #[test]
    fn schema_is_exactly_vitals_schema() {
        let mut decoder = VitalsDecoder::new(0);
        assert_eq!(decoder.finish().schema(), vitals_schema(), "empty batch");
        decoder.push_json(VALID.as_bytes()).expect("valid event");
        let batch = decoder.finish();
        assert_eq!(batch.schema(), vitals_schema());
        assert_eq!(
            batch.column(idx::EVENT_TIME).data_type(),
            &event_time_type()
        );
        // And again after a reset, which swaps in new builders.
        decoder.push_json(VALID.as_bytes()).expect("valid event");
        assert_eq!(decoder.finish().schema(), vitals_schema());
    }

    #[test]
    fn nulls_and_absent_optional_fields_become_nulls() {
        let payload = r#"{"patient_id":"P1","timestamp_unix_ms":1000,"heart_rate_bpm":null,
            "spo2_pct":97,"hospital_id":null,"source_device":null,"sequence_number":null}"#;
        let mut decoder = VitalsDecoder::new(1);
        decoder.push_json(payload.as_bytes()).expect("valid event");
        let batch = decoder.finish();
        for i in [
            idx::HOSPITAL_ID,
            idx::HEART_RATE_BPM,
            idx::RESPIRATION_RATE,
            idx::SYSTOLIC_BP_MMHG,
            idx::DIASTOLIC_BP_MMHG,
            idx::SOURCE_DEVICE,
            idx::SEQUENCE_NUMBER,
        ] {
            assert!(batch.column(i).is_null(0), "column {i} should be null");
        }
        assert!(batch.column(idx::SPO2_PCT).is_valid(0));
        assert_eq!(
            batch
                .column(idx::SPO2_PCT)
                .as_primitive::<Float64Type>()
                .value(0),
            97.0
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_escapes_are_decoded() {
        let payload = r#"{"extra":{"nested":[1,2,{"a":null}]},"patient_id":"P\u00e9 1",
            "timestamp_unix_ms":1.7e12,"firmware":"v2"}"#;
        let mut decoder = VitalsDecoder::new(1);
        decoder.push_json(payload.as_bytes()).expect("valid event");
        let batch = decoder.finish();
        assert_eq!(
            batch.column(idx::PATIENT_ID).as_string::<i32>().value(0),
            "Pé 1"
        );
        assert_eq!(
            batch
                .column(idx::TIMESTAMP_UNIX_MS)
                .as_primitive::<Int64Type>()
                .value(0),
            1_700_000_000_000
        );
    }

    #[test]
    fn rejects_malformed_json() {
        assert_eq!(
            reject("garbage"),
            "invalid JSON: expected value at line 1 column 1"
        );
        assert_eq!(
            reject("nope"),
            "invalid JSON: expected ident at line 1 column 2"
        );
        assert!(reject(r#"{"patient_id":"P1""#).starts_with("invalid JSON: EOF"));
        assert!(reject("").starts_with("invalid JSON: EOF"));
        assert!(reject(&format!("{VALID} x")).starts_with("invalid JSON: trailing characters"));
    }

    #[test]
    fn rejects_json_that_is_not_an_event_object() {
        assert!(reject(r#"["P1",1000]"#).starts_with(
            "invalid event: invalid type: sequence, expected a VitalEvent JSON object"
        ));
        assert!(reject("42").starts_with("invalid event: invalid type: integer"));
        assert!(
            reject(r#"{"patient_id":"P1","timestamp_unix_ms":1,"patient_id":"P2"}"#)
                .starts_with("invalid event: duplicate field `patient_id`"),
        );
    }

    #[test]
    fn ids_longer_than_the_limit_are_refused() {
        let long = format!("\"{}\"", "P".repeat(MAX_ID_BYTES + 1));
        assert_eq!(
            reject(&with_field("patient_id", Some(&long))),
            format!(
                "patient_id is {} bytes long; the limit is {MAX_ID_BYTES}",
                MAX_ID_BYTES + 1
            )
        );
        assert!(
            reject(&with_field("hospital_id", Some(&long))).starts_with("hospital_id is 129 bytes")
        );
        let longest = format!("\"{}\"", "P".repeat(MAX_ID_BYTES));
        let mut d = VitalsDecoder::new(4);
        assert!(d
            .push_json(with_field("patient_id", Some(&longest)).as_bytes())
            .is_ok());
    }

    #[test]
    fn rejects_missing_or_bad_patient_id() {
        assert_eq!(
            reject(&with_field("patient_id", None)),
            "missing patient_id"
        );
        assert_eq!(
            reject(&with_field("patient_id", Some("null"))),
            "missing patient_id"
        );
        assert_eq!(
            reject(&with_field("patient_id", Some(r#""""#))),
            "patient_id must not be empty"
        );
        assert_eq!(
            reject(&with_field("patient_id", Some("123"))),
            "patient_id must be a string, got number"
        );
    }

    #[test]
    fn rejects_missing_or_bad_timestamp() {
        let ts = |v: Option<&str>| reject(&with_field("timestamp_unix_ms", v));
        assert_eq!(ts(None), "missing timestamp_unix_ms");
        assert_eq!(ts(Some("null")), "missing timestamp_unix_ms");
        assert_eq!(
            ts(Some(r#""1704067200000""#)),
            "timestamp_unix_ms must be an integer, got string"
        );
        assert_eq!(
            ts(Some("1704067200000.5")),
            "timestamp_unix_ms must be an integer, got 1704067200000.5"
        );
        assert_eq!(
            ts(Some("0")),
            "timestamp_unix_ms must be after 1970-01-01 and before year 3000, got 0"
        );
        assert_eq!(
            ts(Some("-5")),
            "timestamp_unix_ms must be after 1970-01-01 and before year 3000, got -5"
        );
        assert_eq!(
            ts(Some("32503680000000")),
            "timestamp_unix_ms must be after 1970-01-01 and before year 3000, got 32503680000000"
        );
        assert_eq!(
            ts(Some("18446744073709551615")),
            "timestamp_unix_ms must be after 1970-01-01 and before year 3000, got 18446744073709551615"
        );
        // The last millisecond before year 3000 is fine.
        let mut decoder = VitalsDecoder::new(1);
        decoder
            .push_json(with_field("timestamp_unix_ms", Some("32503679999999")).as_bytes())
            .expect("in range");
    }

    /// 2026-12-01T12:00:00Z, the server clock in the event-time tests.
    const NOW: i64 = 1_796_126_400_000;

    fn bounded() -> VitalsDecoder {
        VitalsDecoder::new(4).with_time_bounds(EventTimeBounds::default(), NOW)
    }

    #[test]
    fn an_event_far_in_the_future_is_refused_whatever_the_fixed_bounds_allow() {
        let mut decoder = bounded();
        // 2999-12-31: inside the fixed bound (year 3000), refused by the clock.
        let reason = decoder
            .push_json(with_field("timestamp_unix_ms", Some("32503593600000")).as_bytes())
            .expect_err("refused")
            .reason;
        assert!(reason.starts_with(FUTURE), "{reason}");
        assert!(reason.contains("2999-12-31T00:00:00.000Z"), "{reason}");
        assert!(reason.contains("300000 ms ahead"), "{reason}");
        assert!(decoder.is_empty());
        // Up to the skew is fine, one millisecond more is not.
        let at = |ms: i64| with_field("timestamp_unix_ms", Some(&ms.to_string()));
        decoder
            .push_json(at(NOW + 300_000).as_bytes())
            .expect("exactly the allowed skew");
        assert!(decoder
            .push_json(at(NOW + 300_001).as_bytes())
            .expect_err("past the skew")
            .reason
            .starts_with(FUTURE));
        assert_eq!(decoder.len(), 1);
    }

    #[test]
    fn an_event_older_than_the_archive_keeps_is_refused() {
        let mut decoder = bounded();
        let at = |ms: i64| with_field("timestamp_unix_ms", Some(&ms.to_string()));
        // Retention keeps whole days: 30 days before today's midnight is kept.
        let oldest_kept = 1_796_083_200_000 - 30 * DAY_MS; // 2026-11-01T00:00:00Z
        decoder
            .push_json(at(oldest_kept).as_bytes())
            .expect("the oldest kept day");
        let reason = decoder
            .push_json(at(oldest_kept - 1).as_bytes())
            .expect_err("a day the archive would delete")
            .reason;
        assert!(reason.starts_with(OLDER_THAN_RETENTION), "{reason}");
        assert!(reason.contains("2026-11-01T00:00:00.000Z"), "{reason}");
        assert_eq!(decoder.len(), 1);
    }

    #[test]
    fn the_clock_moves_only_when_the_source_says_so() {
        let mut decoder = bounded();
        let ahead = with_field("timestamp_unix_ms", Some(&(NOW + 600_000).to_string()));
        assert!(decoder.push_json(ahead.as_bytes()).is_err());
        decoder.set_now(NOW + 600_000);
        decoder
            .push_json(ahead.as_bytes())
            .expect("accepted once the clock has caught up");
        // Without bounds only the fixed range applies (archives, benchmarks).
        let mut unbounded = VitalsDecoder::new(1);
        unbounded.set_now(NOW);
        unbounded
            .push_json(with_field("timestamp_unix_ms", Some("1000")).as_bytes())
            .expect("no clock, no refusal by it");
    }

    #[test]
    fn a_malformed_event_is_refused_for_what_is_wrong_with_it_not_its_date() {
        let mut decoder = bounded();
        // VALID is dated 2024, older than retention, and its heart rate is bad.
        let reason = decoder
            .push_json(with_field("heart_rate_bpm", Some("-5")).as_bytes())
            .expect_err("refused")
            .reason;
        assert!(reason.starts_with("heart_rate_bpm"), "{reason}");
    }

    #[test]
    fn rejects_implausible_or_mistyped_readings() {
        let r = |field: &str, v: &str| reject(&with_field(field, Some(v)));
        assert_eq!(
            r("heart_rate_bpm", "-5"),
            "heart_rate_bpm must be between 0 and 400, got -5"
        );
        assert_eq!(
            r("heart_rate_bpm", "400.1"),
            "heart_rate_bpm must be between 0 and 400, got 400.1"
        );
        assert_eq!(
            r("spo2_pct", "101.5"),
            "spo2_pct must be between 0 and 100, got 101.5"
        );
        assert_eq!(
            r("respiration_rate", "201"),
            "respiration_rate must be between 0 and 200, got 201"
        );
        assert_eq!(
            r("systolic_bp_mmhg", "1e3"),
            "systolic_bp_mmhg must be between 0 and 400, got 1000"
        );
        assert_eq!(
            r("diastolic_bp_mmhg", "-0.5"),
            "diastolic_bp_mmhg must be between 0 and 300, got -0.5"
        );
        assert_eq!(
            r("heart_rate_bpm", r#""72""#),
            "heart_rate_bpm must be a number or null, got string"
        );
        assert_eq!(
            r("spo2_pct", "true"),
            "spo2_pct must be a number or null, got boolean"
        );
        assert_eq!(
            r("spo2_pct", "[97]"),
            "spo2_pct must be a number or null, got array"
        );
        // JSON cannot spell NaN or infinity, and an overflowing literal is a syntax error.
        assert!(reject(&VALID.replace("72.5", "NaN")).starts_with("invalid JSON"));
        assert!(reject(&VALID.replace("72.5", "1e999"))
            .starts_with("invalid JSON: number out of range"));
        // Bounds are inclusive.
        let mut decoder = VitalsDecoder::new(2);
        decoder
            .push_json(with_field("spo2_pct", Some("100")).as_bytes())
            .expect("100% is fine");
        decoder
            .push_json(with_field("heart_rate_bpm", Some("0")).as_bytes())
            .expect("asystole is data");
    }

    #[test]
    fn non_finite_readings_are_refused_by_the_bounds_check() {
        let bounds = &READING_BOUNDS[0];
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = validate_reading(Some(&Scalar::Float(v)), bounds).expect_err("non-finite");
            assert!(err
                .reason
                .starts_with("heart_rate_bpm must be between 0 and 400, got"));
        }
    }

    #[test]
    fn rejects_bad_source_device_and_sequence_number() {
        assert_eq!(
            reject(&with_field("source_device", Some(r#""WRIST""#))),
            r#"source_device must be one of BEDSIDE, PORTABLE, AMBULATORY, got "WRIST""#
        );
        assert_eq!(
            reject(&with_field("source_device", Some(r#""bedside""#))),
            r#"source_device must be one of BEDSIDE, PORTABLE, AMBULATORY, got "bedside""#
        );
        let long = format!("\"{}\"", "X".repeat(1000));
        let reason = reject(&with_field("source_device", Some(&long)));
        assert!(
            reason.len() < 120,
            "long input is not echoed in full: {reason}"
        );
        assert!(reason.ends_with("..."));
        assert_eq!(
            reject(&with_field("source_device", Some("1"))),
            "source_device must be a string or null, got number"
        );
        assert_eq!(
            reject(&with_field("hospital_id", Some("7"))),
            "hospital_id must be a string or null, got number"
        );
        assert_eq!(
            reject(&with_field("sequence_number", Some("-1"))),
            "sequence_number must be between 0 and 4294967295, got -1"
        );
        assert_eq!(
            reject(&with_field("sequence_number", Some("4294967296"))),
            "sequence_number must be between 0 and 4294967295, got 4294967296"
        );
        assert_eq!(
            reject(&with_field("sequence_number", Some("1.5"))),
            "sequence_number must be an integer, got 1.5"
        );
    }

    #[test]
    fn mixed_batch_keeps_only_valid_rows_in_order() {
        let payloads = [
            with_field("patient_id", Some(r#""P1""#)),
            "{not json".to_owned(),
            with_field("patient_id", Some(r#""P2""#)),
            with_field("heart_rate_bpm", Some("-5")),
            with_field("patient_id", None),
            with_field("patient_id", Some(r#""P3""#)),
        ];
        let mut decoder = VitalsDecoder::new(2);
        let outcomes: Vec<bool> = payloads
            .iter()
            .map(|p| decoder.push_json(p.as_bytes()).is_ok())
            .collect();
        assert_eq!(outcomes, [true, false, true, false, false, true]);
        assert_eq!(decoder.len(), 3);
        let batch = decoder.finish();
        assert_eq!(batch.num_rows(), 3);
        let ids = batch.column(idx::PATIENT_ID).as_string::<i32>();
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Some("P1"), Some("P2"), Some("P3")]
        );
        for column in batch.columns() {
            assert_eq!(column.len(), 3);
        }
        // The decoder is reusable after finishing.
        decoder.push_json(VALID.as_bytes()).expect("valid event");
        assert_eq!(decoder.finish().num_rows(), 1);
    }
}

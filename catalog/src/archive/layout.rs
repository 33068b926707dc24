//! Where archive files live: the one place that spells the path layout.
//!
//! ```text
//! {prefix}/{table}/date=YYYY-MM-DD/hour=HH/part-{partition}-{first_offset:020}.parquet
//! ```
//!
//! `date` and `hour` are the UTC date and hour of the rows' event time, so the
//! directory a row lands in never depends on when it arrived. The writer, the
//! retention task and the history tables all go through these functions, so
//! they cannot disagree about a name.

use chrono::{DateTime, NaiveDate};
use object_store::path::Path;

use crate::CatalogError;

/// Milliseconds in an hour: the unit of event-time partitioning.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// Hours since the Unix epoch (floor), the key of one `date=/hour=` directory.
pub(crate) fn hour_index(time_ms: i64) -> i64 {
    time_ms.div_euclid(HOUR_MS)
}

/// The `date` and `hour` partition values of an hour index, e.g.
/// `("2026-01-01", "07")`.
///
/// `None` for hours chrono cannot represent (hundreds of thousands of years
/// away), which the writer reports as an unusable event time.
pub(crate) fn partition_values(hour: i64) -> Option<(String, String)> {
    let time = DateTime::from_timestamp(hour.checked_mul(3600)?, 0)?;
    Some((
        time.format("%Y-%m-%d").to_string(),
        time.format("%H").to_string(),
    ))
}

/// `{prefix}/{table}`.
pub(crate) fn table_dir(prefix: &Path, table: &str) -> Path {
    prefix.clone().join(table)
}

/// The full path of the file that holds rows of `hour` for `partition`,
/// starting at source offset `first_offset`.
pub(crate) fn file_path(
    prefix: &Path,
    table: &str,
    date: &str,
    hour: &str,
    partition: i32,
    first_offset: i64,
) -> Path {
    table_dir(prefix, table)
        .join(format!("date={date}"))
        .join(format!("hour={hour}"))
        .join(file_name(partition, first_offset))
}

/// `part-{partition}-{first_offset:020}.parquet`; zero padding makes names
/// of one partition sort in offset order.
pub(crate) fn file_name(partition: i32, first_offset: i64) -> String {
    format!("part-{partition}-{first_offset:020}.parquet")
}

/// The (partition, first offset) a file name encodes, or `None` for any
/// other object.
pub(crate) fn parse_file_name(name: &str) -> Option<(i32, i64)> {
    let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    // The partition may be negative (`part--1-...`), so split at the last dash.
    let (partition, offset) = stem.rsplit_once('-')?;
    if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// The date of a `date=YYYY-MM-DD` path segment.
pub(crate) fn parse_date_segment(segment: &str) -> Option<NaiveDate> {
    let value = segment.strip_prefix("date=")?;
    NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()
}

/// Archive table names become path segments: 1-64 characters from `a-z`,
/// `0-9`, `_` and `-`.
pub(crate) fn validate_table_name(name: &str) -> Result<(), CatalogError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(CatalogError::InvalidTableName {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_utc_and_floor_before_the_epoch() {
        // 2026-01-01T10:59:59.999Z
        let t = 1_767_265_199_999;
        assert_eq!(
            partition_values(hour_index(t)).unwrap(),
            ("2026-01-01".to_string(), "10".to_string())
        );
        assert_eq!(hour_index(-1), -1);
        assert_eq!(
            partition_values(-1).unwrap(),
            ("1969-12-31".to_string(), "23".to_string())
        );
        assert!(partition_values(i64::MAX / 1000).is_none());
    }

    #[test]
    fn file_names_round_trip_including_negative_partitions() {
        for (partition, offset) in [(0, 0), (7, 123_456), (-1, 42), (i32::MAX, i64::MAX)] {
            let name = file_name(partition, offset);
            assert_eq!(parse_file_name(&name), Some((partition, offset)), "{name}");
        }
        assert_eq!(file_name(3, 42), "part-3-00000000000000000042.parquet");
        for other in [
            "part-3.parquet",
            "x-1-2.parquet",
            "part-a-1.parquet",
            "part-1--2.parquet",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_full_path_follows_the_documented_layout() {
        let path = file_path(&Path::from("arch"), "vitals", "2026-01-01", "07", 2, 99);
        assert_eq!(
            path.as_ref(),
            "arch/vitals/date=2026-01-01/hour=07/part-2-00000000000000000099.parquet"
        );
        let root = file_path(&Path::default(), "alerts", "2026-01-01", "00", -1, 0);
        assert_eq!(
            root.as_ref(),
            "alerts/date=2026-01-01/hour=00/part--1-00000000000000000000.parquet"
        );
    }
}

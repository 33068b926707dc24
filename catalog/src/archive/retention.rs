//! Retention: deletes archive files once their event date is out of the
//! retention period, whole `date=` directories at a time.
//!
//! Deciding by the `date=` directory (not by object age or by the rows'
//! times) means a day of data goes at once, a file is never rewritten to
//! drop some of its rows, and the decision costs one listing of the table's
//! top level plus one listing per expired day. The caller runs this as a
//! background task with its own `now_ms` and writes the returned paths to
//! the audit log; this module does neither.

use chrono::{DateTime, Days, NaiveDate};
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;

use super::layout;
use crate::storage::list_all;
use crate::CatalogError;

/// Deletes every file of `table` under `prefix` whose `date=YYYY-MM-DD`
/// directory is more than `keep_days` whole days before the UTC date of
/// `now_ms`, and returns the deleted paths (sorted).
///
/// With `keep_days = 30` and `now_ms` on 2026-02-10, `date=2026-01-10` and
/// earlier go and `date=2026-01-11` stays, so no row younger than 30 days is
/// ever deleted. `keep_days = 0` keeps only today. Objects outside
/// `date=` directories are left alone.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use object_store::{memory::InMemory, path::Path};
/// let store = InMemory::new();
/// let deleted = catalog::archive::apply_retention(&store, &Path::default(), "vitals", 30, 0).await?;
/// assert!(deleted.is_empty());
/// # Ok::<(), catalog::CatalogError>(())
/// # }).unwrap();
/// ```
pub async fn apply_retention(
    store: &dyn ObjectStore,
    prefix: &Path,
    table: &str,
    keep_days: u32,
    now_ms: i64,
) -> Result<Vec<Path>, CatalogError> {
    layout::validate_table_name(table)?;
    let Some(cutoff) = oldest_kept_date(keep_days, now_ms) else {
        // The cutoff is before the calendar starts: nothing is old enough.
        return Ok(Vec::new());
    };
    let dir = layout::table_dir(prefix, table);
    let listing = store
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(|e| CatalogError::store(&dir, e))?;

    let mut deleted = Vec::new();
    for day in listing.common_prefixes {
        let Some(date) = day.filename().and_then(layout::parse_date_segment) else {
            continue;
        };
        if date >= cutoff {
            continue;
        }
        let mut files: Vec<Path> = list_all(store, &day)
            .await?
            .into_iter()
            .map(|object| object.location)
            .collect();
        files.sort();
        let paths = futures::stream::iter(files.into_iter().map(Ok)).boxed();
        let mut results = store.delete_stream(paths);
        while let Some(result) = results.next().await {
            match result {
                Ok(path) => deleted.push(path),
                // Gone already (another instance's retention run): fine.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CatalogError::store(&day, e)),
            }
        }
    }
    deleted.sort();
    if !deleted.is_empty() {
        tracing::info!(table, keep_days, files = deleted.len(), %cutoff, "retention deleted expired archive files");
    }
    Ok(deleted)
}

/// The first date that is kept: today (UTC) minus `keep_days`.
fn oldest_kept_date(keep_days: u32, now_ms: i64) -> Option<NaiveDate> {
    let today = DateTime::from_timestamp_millis(now_ms)?.date_naive();
    today.checked_sub_days(Days::new(u64::from(keep_days)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    const DAY_MS: i64 = 86_400_000;
    /// 2026-02-10T15:00:00Z
    const NOW: i64 = 1_770_735_600_000;

    async fn put(store: &InMemory, path: &str) {
        store.put(&Path::from(path), "x".into()).await.unwrap();
    }

    async fn all(store: &InMemory) -> Vec<String> {
        let mut names: Vec<String> = list_all(store, &Path::default())
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.location.to_string())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn exactly_the_expired_days_go() {
        let store = InMemory::new();
        let file = |date: &str, hour: &str, part: &str| {
            format!("arch/vitals/date={date}/hour={hour}/part-{part}-00000000000000000000.parquet")
        };
        let expired = [
            file("2026-01-09", "00", "0"),
            file("2026-01-10", "00", "0"),
            file("2026-01-10", "23", "1"),
            file("2026-01-10", "23", "-1"),
        ];
        let kept = [
            file("2026-01-11", "00", "0"),
            file("2026-02-10", "14", "0"),
            // Another table and unrelated objects are not touched.
            "arch/alerts/date=2025-01-01/hour=00/part--1-00000000000000000000.parquet".to_string(),
            "arch/vitals/README.txt".to_string(),
            "arch/vitals/date=garbage/hour=00/x.parquet".to_string(),
            "arch/vitalsx/date=2020-01-01/hour=00/x.parquet".to_string(),
        ];
        for path in expired.iter().chain(&kept) {
            put(&store, path).await;
        }

        let deleted = apply_retention(&store, &Path::from("arch"), "vitals", 30, NOW)
            .await
            .unwrap();
        let mut expected: Vec<String> = expired.to_vec();
        expected.sort();
        let deleted: Vec<String> = deleted.iter().map(|p| p.to_string()).collect();
        assert_eq!(deleted, expected);
        let mut left = kept.to_vec();
        left.sort();
        assert_eq!(all(&store).await, left);

        // Nothing more to do the same day; the next day takes 2026-01-11.
        let again = apply_retention(&store, &Path::from("arch"), "vitals", 30, NOW)
            .await
            .unwrap();
        assert!(again.is_empty());
        let next_day = apply_retention(&store, &Path::from("arch"), "vitals", 30, NOW + DAY_MS)
            .await
            .unwrap();
        assert_eq!(next_day, vec![Path::from(file("2026-01-11", "00", "0"))]);
    }

    #[tokio::test]
    async fn keep_zero_days_keeps_only_today() {
        let store = InMemory::new();
        put(
            &store,
            "vitals/date=2026-02-09/hour=23/part-0-00000000000000000000.parquet",
        )
        .await;
        put(
            &store,
            "vitals/date=2026-02-10/hour=00/part-0-00000000000000000000.parquet",
        )
        .await;
        let deleted = apply_retention(&store, &Path::default(), "vitals", 0, NOW)
            .await
            .unwrap();
        assert_eq!(deleted.len(), 1);
        assert!(deleted[0].as_ref().contains("2026-02-09"));
    }

    #[tokio::test]
    async fn a_missing_table_or_a_bad_name_is_handled() {
        let store = InMemory::new();
        let none = apply_retention(&store, &Path::default(), "alerts", 365, NOW)
            .await
            .unwrap();
        assert!(none.is_empty());
        let err = apply_retention(&store, &Path::default(), "../x", 1, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CatalogError::InvalidTableName { .. }),
            "{err}"
        );
    }
}

//! The reads behind reports: credit rows, click counts and converted hits,
//! each over a bounded set of partitions (site × UTC day ×
//! [`CREDIT_BUCKETS`]) read a few at a time.

use chrono::NaiveDate;
use futures_util::{stream, StreamExt, TryStreamExt};
use uuid::Uuid;

use super::rows::{stored_channel, CreditDbRow};
use super::CassandraStore;
use crate::domain::{ClickRow, CreditRow};
use crate::store::StoreError;

/// Partitions per site and UTC day in `credits_by_day`. Part of the
/// schema: changing it makes earlier rows unreachable, so it only changes
/// with a new schema version and a data migration.
pub const CREDIT_BUCKETS: i32 = 8;

/// Partitions a report reads at once.
const REPORT_CONCURRENCY: usize = 16;

/// The credit partition bucket of a hit. The low bits of a UUID v7 are
/// random, so hits spread evenly; the same hit always lands in the same
/// bucket, which keeps redelivered writes idempotent.
pub fn credit_bucket(hit: Uuid) -> i32 {
    (hit.as_u128() % CREDIT_BUCKETS as u128) as i32
}

/// The partitions a report over `from..=to` reads: every (day, bucket).
pub fn report_partitions(from: NaiveDate, to: NaiveDate) -> Vec<(NaiveDate, i32)> {
    from.iter_days()
        .take_while(|d| *d <= to)
        .flat_map(|d| (0..CREDIT_BUCKETS).map(move |b| (d, b)))
        .collect()
}

pub(super) async fn credit_rows(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
    goal: Option<Uuid>,
) -> Result<Vec<CreditRow>, StoreError> {
    let st = store.st().await?;
    let parts = stream::iter(report_partitions(from, to))
        .map(|(day, bucket)| async move {
            let rows: Vec<CreditDbRow> = match goal {
                Some(g) => {
                    store
                        .all_rows(&st.select_credits_for_goal, (site, day, bucket, g))
                        .await?
                }
                None => {
                    store
                        .all_rows(&st.select_credits, (site, day, bucket))
                        .await?
                }
            };
            // A path's steps that earn nothing under the recorded model
            // are not credits.
            Ok::<_, StoreError>(
                rows.into_iter()
                    .filter(|row| row.5.is_some_and(|credit| credit > 0.0))
                    .map(
                        move |(
                            goal,
                            source,
                            medium,
                            campaign,
                            ad,
                            credit,
                            value,
                            channel,
                            currency,
                        )| {
                            let source = source.unwrap_or_default();
                            CreditRow {
                                day,
                                goal,
                                channel: stored_channel(channel, &source, &medium, &campaign),
                                source,
                                medium,
                                campaign,
                                ad,
                                credit: credit.unwrap_or(0.0),
                                value: value.unwrap_or(0.0),
                                currency,
                            }
                        },
                    )
                    .collect::<Vec<_>>(),
            )
        })
        .buffer_unordered(REPORT_CONCURRENCY)
        .try_collect::<Vec<Vec<CreditRow>>>()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

pub(super) async fn click_rows(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<ClickRow>, StoreError> {
    let st = store.st().await?;
    type ClickDbRow = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let parts = stream::iter(report_partitions(from, to))
        .map(|(day, bucket)| async move {
            let rows: Vec<ClickDbRow> = store
                .all_rows(&st.select_clicks, (site, day, bucket))
                .await?;
            Ok::<_, StoreError>(
                rows.into_iter()
                    .map(move |(source, medium, campaign, ad, channel)| {
                        let source = source.unwrap_or_default();
                        ClickRow {
                            day,
                            channel: stored_channel(channel, &source, &medium, &campaign),
                            source,
                            medium,
                            campaign,
                            ad,
                            clicks: 1,
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .buffer_unordered(REPORT_CONCURRENCY)
        .try_collect::<Vec<Vec<ClickRow>>>()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

pub(super) async fn converted_hits(
    store: &CassandraStore,
    site: &str,
    from: NaiveDate,
    to: NaiveDate,
    limit: usize,
) -> Result<Vec<Uuid>, StoreError> {
    let st = store.st().await?;
    let parts = stream::iter(report_partitions(from, to))
        .map(|(day, bucket)| async move {
            let rows: Vec<(Uuid,)> = store
                .all_rows(&st.select_credit_hits, (site, day, bucket))
                .await?;
            Ok::<_, StoreError>(rows.into_iter().map(|(h,)| h).collect::<Vec<_>>())
        })
        .buffer_unordered(REPORT_CONCURRENCY)
        .try_collect::<Vec<Vec<Uuid>>>()
        .await?;
    // UUID v7 order is time order: newest first, each hit once.
    let hits: std::collections::BTreeSet<Uuid> = parts.into_iter().flatten().collect();
    Ok(hits.into_iter().rev().take(limit).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_bucket_is_stable_in_range_and_spreads() {
        let mut seen = [0usize; CREDIT_BUCKETS as usize];
        for _ in 0..4_000 {
            let id = Uuid::now_v7();
            let b = credit_bucket(id);
            assert!((0..CREDIT_BUCKETS).contains(&b));
            assert_eq!(b, credit_bucket(id));
            seen[b as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 300), "uneven buckets: {seen:?}");
    }

    #[test]
    fn report_reads_days_times_buckets_partitions() {
        let d = |day| NaiveDate::from_ymd_opt(2026, 11, day).unwrap();
        let parts = report_partitions(d(20), d(22));
        assert_eq!(parts.len(), 3 * CREDIT_BUCKETS as usize);
        assert_eq!(parts.first(), Some(&(d(20), 0)));
        assert_eq!(parts.last(), Some(&(d(22), CREDIT_BUCKETS - 1)));
        assert!(report_partitions(d(22), d(20)).is_empty());
        assert_eq!(report_partitions(d(1), d(1)).len(), CREDIT_BUCKETS as usize);
    }
}

//! The console's overview: counts of what arrived since a time and what became of it, and of
//! what waits for someone now (due and dead jobs, open tasks, quarantined events). Reads only.

use super::quarantine::COUNT_QUARANTINED;
use super::{Backend, Sql, Storable};
use crate::store::{Millis, Overview, StoreError};
use sqlx::{ColumnIndex, Executor, Pool};

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Storable<DB>,
    String: Storable<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(crate) async fn overview(
        pool: &Pool<DB>,
        since: Millis,
        now: Millis,
    ) -> Result<Overview, StoreError> {
        let per_minute: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT (received_at / 60000) * 60000 AS minute, COUNT(*) FROM events \
             WHERE received_at >= $1 GROUP BY minute ORDER BY minute",
        )
        .bind(since)
        .fetch_all(pool)
        .await?;
        let (matched_events, rule_errors): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(DISTINCT CASE WHEN verdict = 'matched' THEN event_id END), \
             COUNT(CASE WHEN verdict = 'error' THEN 1 END) FROM rule_verdicts WHERE at >= $1",
        )
        .bind(since)
        .fetch_one(pool)
        .await?;
        let jobs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM jobs WHERE created_at >= $1 GROUP BY status",
        )
        .bind(since)
        .fetch_all(pool)
        .await?;
        let (dead_jobs_total,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE status = 'dead'")
                .fetch_one(pool)
                .await?;
        let (due_jobs, oldest_due_at): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(CASE WHEN next_attempt_at > created_at THEN next_attempt_at \
             ELSE created_at END) FROM jobs \
             WHERE status IN ('pending', 'retrying') AND next_attempt_at <= $1",
        )
        .bind(now)
        .fetch_one(pool)
        .await?;
        let (open_callback_tasks,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM callback_tasks WHERE status IN ('open', 'claimed')",
        )
        .fetch_one(pool)
        .await?;
        let (quarantined_events,): (i64,) =
            sqlx::query_as(COUNT_QUARANTINED).fetch_one(pool).await?;
        Ok(Overview {
            quarantined_events,
            events: per_minute.iter().map(|(_, n)| n).sum(),
            events_per_minute: per_minute,
            matched_events,
            rule_errors,
            jobs: jobs.into_iter().collect(),
            dead_jobs_total,
            due_jobs,
            oldest_due_at,
            open_callback_tasks,
        })
    }
}

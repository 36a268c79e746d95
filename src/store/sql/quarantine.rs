//! Events that fail to load or to process: the failures the processor records, their
//! quarantine, and an operator's retry (see docs/quarantine.md).

use super::{Backend, RowsAffected, Sql, Storable};
use crate::store::{EventFailure, EventId, EventNext, Millis, QuarantinedEvent, StoreError};
use sqlx::{ColumnIndex, Encode, Executor, Pool, Type};

/// Binds: failures, reason, retry at (0 when quarantined), quarantined at (or NULL), event id,
/// owner.
const FAIL_EVENT: &str = "UPDATE event_queue SET failures = $1, last_error = $2, \
     lease_owner = NULL, lease_until = $3, quarantined_at = $4 \
     WHERE event_id = $5 AND lease_owner = $6";

/// Binds: event id. The last error stays, so that the trace still says why it was quarantined.
const RETRY_EVENT: &str = "UPDATE event_queue SET quarantined_at = NULL, failures = 0, \
     lease_owner = NULL, lease_until = 0 WHERE event_id = $1 AND quarantined_at IS NOT NULL";

/// Binds: limit.
const LIST_QUARANTINED: &str = "SELECT event_id, failures, last_error, quarantined_at \
     FROM event_queue WHERE quarantined_at IS NOT NULL ORDER BY event_id DESC LIMIT $1";

/// The number of quarantined events.
pub(crate) const COUNT_QUARANTINED: &str =
    "SELECT COUNT(*) FROM event_queue WHERE quarantined_at IS NOT NULL";

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB> + ColumnIndex<DB::Row>,
    i64: Storable<DB>,
    Option<i64>: Storable<DB>,
    String: Storable<DB>,
{
    /// `Store::fail_events`: one transaction; an entry is false when `owner` lost the lease.
    pub(crate) async fn fail_events(
        writer: &Pool<DB>,
        failures: &[EventFailure],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        let mut recorded = Vec::with_capacity(failures.len());
        let mut tx = writer.begin().await?;
        for failure in failures {
            let (retry_at, quarantined_at) = match failure.next {
                EventNext::RetryAt(at) => (at, None),
                EventNext::Quarantine => (0, Some(now)),
            };
            let done = sqlx::query(FAIL_EVENT)
                .bind(failure.failures)
                .bind(stored_reason(&failure.reason))
                .bind(retry_at)
                .bind(quarantined_at)
                .bind(failure.event_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            recorded.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    pub(crate) async fn retry_event(writer: &Pool<DB>, id: EventId) -> Result<bool, StoreError> {
        let done = sqlx::query(RETRY_EVENT).bind(id).execute(writer).await?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn list_quarantined(
        pool: &Pool<DB>,
        limit: u32,
    ) -> Result<Vec<QuarantinedEvent>, StoreError> {
        Ok(sqlx::query_as(LIST_QUARANTINED)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?)
    }
}

/// A reason as stored: NUL characters (which PostgreSQL text cannot hold) dropped, and cut to
/// a length an operator can read.
fn stored_reason(reason: &str) -> String {
    const MAX_CHARS: usize = 2_000;
    let clean: String = reason
        .chars()
        .filter(|c| *c != '\0')
        .take(MAX_CHARS)
        .collect();
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_storable() {
        assert_eq!(stored_reason("a\0b"), "ab");
        assert_eq!(stored_reason(&"x".repeat(5_000)).len(), 2_000);
    }
}

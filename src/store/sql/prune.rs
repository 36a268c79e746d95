//! Pruning what no window can need any more: old counter hits and their per-second buckets,
//! closed throttle windows, and instances long gone.

use super::counters::bucket_of;
use super::{Backend, RowsAffected, Sql, Storable};
use crate::store::{Millis, StoreError};
use sqlx::{Executor, Pool};

/// Counter hits older than the retention, a bounded number at a time. Binds: before, limit.
const PRUNE_COUNTER_HITS: &str = "DELETE FROM counter_hits WHERE (key, event_id) IN \
     (SELECT key, event_id FROM counter_hits WHERE at < $1 LIMIT $2)";

/// Per-second buckets older than the retention. Binds: before (a second), limit.
const PRUNE_COUNTER_BUCKETS: &str = "DELETE FROM counter_buckets WHERE (key, second) IN \
     (SELECT key, second FROM counter_buckets WHERE second < $1 LIMIT $2)";

/// Throttle windows that have closed. Binds: now, limit.
const PRUNE_THROTTLES: &str = "DELETE FROM throttles WHERE (rule, key) IN \
     (SELECT rule, key FROM throttles WHERE until < $1 LIMIT $2)";

/// Instances not seen for a week (a row per process that ever ran). Binds: before, limit.
const PRUNE_INSTANCES: &str = "DELETE FROM instances WHERE id IN \
     (SELECT id FROM instances WHERE seen_at < $1 LIMIT $2)";

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Storable<DB>,
{
    /// `Store::prune`: one bounded delete per statement, so the writer is never held for long.
    pub(crate) async fn prune(
        writer: &Pool<DB>,
        counters_before: Millis,
        now: Millis,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let limit = i64::from(limit);
        let mut pruned = 0;
        for (sql, before) in [
            (PRUNE_COUNTER_HITS, counters_before),
            (PRUNE_COUNTER_BUCKETS, bucket_of(counters_before)),
            (PRUNE_THROTTLES, now),
            (PRUNE_INSTANCES, now.saturating_sub(7 * 24 * 3600 * 1000)),
        ] {
            let done = sqlx::query(sql)
                .bind(before)
                .bind(limit)
                .execute(writer)
                .await?;
            pruned += done.rows_affected();
        }
        Ok(pruned)
    }
}

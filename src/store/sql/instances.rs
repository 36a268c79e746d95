//! Running instances: each one's heartbeat row, and the ones seen lately.

use super::{Backend, Sql, Storable};
use crate::store::{InstanceInfo, Millis, StoreError};
use sqlx::{ColumnIndex, Executor, Pool};

/// Binds: id, started_at, seen_at, ruleset_version, rules_dir, listen, version.
const HEARTBEAT: &str = "INSERT INTO instances (id, started_at, seen_at, \
     ruleset_version, rules_dir, listen, version) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, \
     ruleset_version = excluded.ruleset_version";

/// Bind: seen since.
const LIST_INSTANCES: &str = "SELECT id, started_at, seen_at, ruleset_version, \
     rules_dir, listen, version FROM instances WHERE seen_at >= $1 ORDER BY started_at, id";

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    i64: Storable<DB>,
    String: Storable<DB>,
{
    pub(crate) async fn heartbeat(
        writer: &Pool<DB>,
        instance: &InstanceInfo,
    ) -> Result<(), StoreError> {
        sqlx::query(HEARTBEAT)
            .bind(&instance.id)
            .bind(instance.started_at)
            .bind(instance.seen_at)
            .bind(&instance.ruleset_version)
            .bind(&instance.rules_dir)
            .bind(&instance.listen)
            .bind(&instance.version)
            .execute(writer)
            .await?;
        Ok(())
    }

    pub(crate) async fn list_instances(
        pool: &Pool<DB>,
        since: Millis,
    ) -> Result<Vec<InstanceInfo>, StoreError> {
        Ok(sqlx::query_as(LIST_INSTANCES)
            .bind(since)
            .fetch_all(pool)
            .await?)
    }
}

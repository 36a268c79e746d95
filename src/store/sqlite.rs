//! The embedded SQLite backend: one database file in WAL mode with `synchronous=FULL`, so a
//! commit is on disk before the call returns.

use super::{
    CallbackRequest, CallbackTask, EventId, EventQuery, Finished, FinishedAttempt, Inserted,
    InstanceInfo, Lease, Millis, Mute, NewEvent, NewJob, Overview, Store, StoreError,
    StoredAttempt, StoredEvaluation, StoredEvent, StoredJob, TaskQuery,
    row::{AttemptRow, EVENT_SELECT, EvaluationRow, EventRow, JobRow, TaskRow},
    sql,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// Rows per multi-row statement: 10 parameters each stays far below SQLite's variable limit.
const ROWS_PER_STATEMENT: usize = 256;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The SQLite store. All writes go through one connection, so writers queue in the pool (fairly,
/// without SQLite's sleeping busy handler) and each transaction runs without lock contention;
/// reads use a separate pool and run concurrently with writes (WAL)..
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (creating the file and its folder on first run) and applies
    /// migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let path = options.get_filename();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }
}

super::impl_store! {
    SqliteStore, Sqlite, writer = writer, reader = reader, row_lock = "";

    async fn insert_events(&self, batch: &[NewEvent]) -> Result<Vec<Inserted>, StoreError> {
        let columns = batch
            .iter()
            .map(EventRow::columns_of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.writer.begin().await?;
        // One multi-row statement per chunk: with sqlx every statement is a round trip to the
        // connection's thread, so statements per batch, not rows, set the cost.
        let mut inserted: HashMap<String, EventId> = HashMap::with_capacity(batch.len());
        for (events, columns) in batch
            .chunks(ROWS_PER_STATEMENT)
            .zip(columns.chunks(ROWS_PER_STATEMENT))
        {
            let mut qb: QueryBuilder<Sqlite> = sql::insert_events(events, columns);
            let rows: Vec<(EventId, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            inserted.extend(rows.into_iter().map(|(id, key)| (key, id)));
        }
        // Keys already stored before this batch.
        let mut existing: HashMap<String, EventId> = HashMap::new();
        let missing: Vec<&str> = batch
            .iter()
            .map(|e| e.dedupe_key.as_str())
            .filter(|k| !inserted.contains_key(*k))
            .collect();
        for keys in missing.chunks(ROWS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT id, dedupe_key FROM events WHERE dedupe_key IN (");
            let mut list = qb.separated(", ");
            for key in keys {
                list.push_bind(*key);
            }
            qb.push(")");
            let rows: Vec<(EventId, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            existing.extend(rows.into_iter().map(|(id, key)| (key, id)));
        }
        // New events join the processing queue in the same transaction.
        let new_ids: Vec<EventId> = inserted.values().copied().collect();
        for ids in new_ids.chunks(ROWS_PER_STATEMENT * 4) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO event_queue (event_id) ");
            qb.push_values(ids, |mut row, id| {
                row.push_bind(*id);
            });
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        sql::resolve_inserted(batch, inserted, existing)
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!("{EVENT_SELECT} WHERE 1 = 1"));
        sql::push_event_filters(&mut qb, query);
        let rows: Vec<EventRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }

    async fn claim_events(
        &self,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // Only the lease is written (a short write transaction); the rows are read afterwards
        // on a reader connection, so the single writer is not held while they are fetched.
        let claimed: Vec<(EventId,)> = sqlx::query_as(
            "UPDATE event_queue SET lease_owner = ?, lease_until = ?, attempts = attempts + 1 \
             WHERE event_id IN (SELECT event_id FROM event_queue WHERE lease_until < ? \
             ORDER BY event_id LIMIT ?) RETURNING event_id",
        )
        .bind(&lease.owner)
        .bind(lease.until)
        .bind(lease.now)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("{EVENT_SELECT} WHERE e.id IN ("));
        let mut list = qb.separated(", ");
        for (id,) in &claimed {
            list.push_bind(*id);
        }
        qb.push(") ORDER BY e.id");
        let rows: Vec<EventRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }

    async fn record_hit(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        // The one writer connection numbers hits one at a time; each sees every hit before it.
        let mut writer = RelaxedWriter::acquire(&self.writer).await?;
        let ordinal = record_hit_on(&mut writer.conn, key, event_id, at, window_ms).await;
        writer.restore().await;
        ordinal
    }

    async fn claim_jobs(
        &self,
        lease: &Lease,
        kind: &str,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        let claimed: Vec<(i64,)> = sqlx::query_as(
            "UPDATE jobs SET lease_owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM jobs \
             WHERE status IN ('pending', 'retrying') AND next_attempt_at <= $3 \
             AND lease_until < $3 AND kind = $4 ORDER BY next_attempt_at, id LIMIT $5) \
             RETURNING id",
        )
        .bind(&lease.owner)
        .bind(lease.until)
        .bind(lease.now)
        .bind(kind)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = claimed.into_iter().map(|(id,)| id).collect();
        sql::jobs_by_id!(Sqlite, &self.reader, &ids)
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// A new hit, numbered after its key's last. Binds: key, event id, at, window, ordinal.
const INSERT_HIT: &str = "INSERT INTO counter_hits (key, event_id, at, seq, window_ms, ordinal) \
     VALUES ($1, $2, $3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM counter_hits WHERE key = $1), \
     $4, $5)";
/// Adds a hit to its second's bucket. Binds: key, second.
const ADD_TO_BUCKET: &str = "INSERT INTO counter_buckets (key, second, hits) VALUES ($1, $2, 1) \
     ON CONFLICT (key, second) DO UPDATE SET hits = counter_buckets.hits + 1";

/// `Store::record_hit` in one transaction on the writer connection `conn`.
async fn record_hit_on(
    conn: &mut SqliteConnection,
    key: &str,
    event_id: EventId,
    at: Millis,
    window_ms: Millis,
) -> Result<u64, StoreError> {
    let mut tx = conn.begin().await?;
    let own: Option<(i64,)> =
        sqlx::query_as("SELECT seq FROM counter_hits WHERE key = $1 AND event_id = $2")
            .bind(key)
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?;
    if own.is_some() {
        // Evaluated again: the count it had.
        let ordinal = sql::hit_ordinal_as_of!(&mut *tx, key, event_id, at, window_ms)?;
        tx.commit().await?;
        return Ok(ordinal);
    }
    let since = at.saturating_sub(window_ms);
    let before: Result<u64, StoreError> = sql::count_hits!(&mut *tx, key, since);
    let ordinal = before?.saturating_add(1);
    sqlx::query(INSERT_HIT)
        .bind(key)
        .bind(event_id)
        .bind(at)
        .bind(window_ms)
        .bind(i64::try_from(ordinal).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    sqlx::query(ADD_TO_BUCKET)
        .bind(key)
        .bind(sql::bucket_of(at))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ordinal)
}

/// The writer connection with `synchronous=NORMAL`, for a counter hit's transaction: its commit
/// is not flushed to disk by itself but by the next durable one (every other commit on the
/// connection is `FULL`), and SQLite's WAL is appended and recovered in order. So a power loss
/// can only lose hits recorded after the last durable commit, whose evaluations (committed
/// after their hits) were lost with them: those events are evaluated again and numbered afresh,
/// and no stored evaluation disagrees with the hits it counted. Put back to `FULL` before the
/// connection returns to the pool; one that could not be is closed instead.
struct RelaxedWriter {
    conn: PoolConnection<Sqlite>,
    restored: bool,
}

impl RelaxedWriter {
    async fn acquire(pool: &SqlitePool) -> Result<Self, StoreError> {
        let mut writer = RelaxedWriter {
            conn: pool.acquire().await?,
            restored: false,
        };
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *writer.conn)
            .await?;
        Ok(writer)
    }

    async fn restore(mut self) {
        match sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *self.conn)
            .await
        {
            Ok(_) => self.restored = true,
            Err(error) => tracing::warn!(
                %error,
                "could not set the writer back to synchronous=FULL; closing that connection"
            ),
        }
    }
}

impl Drop for RelaxedWriter {
    fn drop(&mut self) {
        if !self.restored {
            self.conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hit_leaves_the_writer_durable() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("sb.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let (event,): (i64,) = sqlx::query_as(
            "INSERT INTO events (dedupe_key, received_at, raw_body, decoded, warnings) \
             VALUES ('e', 1, x'', '{}', '[]') RETURNING id",
        )
        .fetch_one(&store.writer)
        .await
        .unwrap();
        assert_eq!(
            store.record_hit("k", event, 1_000, 60_000).await.unwrap(),
            1
        );
        assert_eq!(
            store.record_hit("k", event, 1_000, 60_000).await.unwrap(),
            1
        );
        // 2 is FULL: the relaxed setting never outlives the hit's transaction.
        let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(level, 2);
    }
}

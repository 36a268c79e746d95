//! The PostgreSQL backend, shared by several instances: uniqueness is enforced by the database,
//! and processors claim queued events with `FOR UPDATE SKIP LOCKED` under a lease.

use super::{
    CallbackRequest, CallbackTask, EventId, EventQuery, Finished, FinishedAttempt, Inserted,
    InstanceInfo, Lease, Millis, Mute, NewEvent, NewJob, Overview, Store, StoreError,
    StoredAttempt, StoredEvaluation, StoredEvent, StoredJob, TaskQuery, Wakeup,
    row::{AttemptRow, EVENT_SELECT, EvaluationRow, EventRow, JobRow, TaskRow},
    sql,
};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use std::collections::HashMap;
use std::time::Duration;

/// Rows per multi-row statement: 10 parameters each stays far below PostgreSQL's 65,535.
const ROWS_PER_STATEMENT: usize = 1024;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The channels the triggers of migration 0009 notify.
const EVENTS_CHANNEL: &str = "switchboard_events";
const JOBS_CHANNEL: &str = "switchboard_jobs";

/// The PostgreSQL store. Cheap to share: it is a connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://…` and applies migrations. Several instances starting at once are
    /// safe: the migrator holds an advisory lock while it runs.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

super::impl_store! {
    PostgresStore, Postgres, writer = pool, reader = pool, row_lock = " FOR UPDATE";

    async fn insert_events(&self, batch: &[NewEvent]) -> Result<Vec<Inserted>, StoreError> {
        let columns = batch
            .iter()
            .map(EventRow::columns_of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        let mut inserted: HashMap<String, EventId> = HashMap::with_capacity(batch.len());
        for (events, columns) in batch
            .chunks(ROWS_PER_STATEMENT)
            .zip(columns.chunks(ROWS_PER_STATEMENT))
        {
            // A key another instance is inserting right now makes this statement wait for that
            // transaction; if it commits, the row is skipped here and found below.
            let mut qb: QueryBuilder<Postgres> = sql::insert_events(events, columns);
            let rows: Vec<(EventId, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            inserted.extend(rows.into_iter().map(|(id, key)| (key, id)));
        }
        let missing: Vec<String> = batch
            .iter()
            .filter(|e| !inserted.contains_key(&e.dedupe_key))
            .map(|e| e.dedupe_key.clone())
            .collect();
        let existing: HashMap<String, EventId> = if missing.is_empty() {
            HashMap::new()
        } else {
            let rows: Vec<(EventId, String)> =
                sqlx::query_as("SELECT id, dedupe_key FROM events WHERE dedupe_key = ANY($1)")
                    .bind(&missing)
                    .fetch_all(&mut *tx)
                    .await?;
            rows.into_iter().map(|(id, key)| (key, id)).collect()
        };
        let new_ids: Vec<EventId> = inserted.values().copied().collect();
        if !new_ids.is_empty() {
            sqlx::query("INSERT INTO event_queue (event_id) SELECT * FROM UNNEST($1::BIGINT[])")
                .bind(&new_ids)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        sql::resolve_inserted(batch, inserted, existing)
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("{EVENT_SELECT} WHERE 1 = 1"));
        sql::push_event_filters(&mut qb, query);
        let rows: Vec<EventRow> = qb.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }

    async fn claim_events(
        &self,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // SKIP LOCKED: concurrent processors on other instances take disjoint rows.
        let claimed: Vec<(EventId,)> = sqlx::query_as(
            "UPDATE event_queue SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE event_id IN (SELECT event_id FROM event_queue WHERE lease_until < $3 \
             AND quarantined_at IS NULL ORDER BY event_id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING event_id",
        )
        .bind(&lease.owner)
        .bind(lease.until)
        .bind(lease.now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<EventId> = claimed.into_iter().map(|(id,)| id).collect();
        let sql = format!("{EVENT_SELECT} WHERE e.id = ANY($1) ORDER BY e.id");
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }

    async fn finish_events(
        &self,
        finished: &[Finished],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<EventId>, StoreError> {
        sql::finish_events!(Postgres, self.pool, finished, owner, now)
    }

    async fn count_hits(&self, key: &str, since: Millis) -> Result<u64, StoreError> {
        sql::count_hits!(&self.pool, key, since)
    }

    async fn hit_ordinal_as_of(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        sql::hit_ordinal_as_of!(&self.pool, key, event_id, at, window_ms)
    }

    async fn record_hit(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        // One round trip: migration 0014's function takes the key's lock, numbers the hit and
        // commits it (see there why its commit need not wait for the WAL flush).
        let since = at.saturating_sub(window_ms);
        let (ordinal,): (i64,) =
            sqlx::query_as("SELECT switchboard_counter_hit($1, $2, $3, $4, $5, $6, $7)")
                .bind(key)
                .bind(event_id)
                .bind(at)
                .bind(window_ms)
                .bind(since)
                .bind(sql::bucket_of(since))
                .bind(sql::bucket_of(at))
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(ordinal).unwrap_or(0))
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
             AND lease_until < $3 AND kind = $4 ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(&lease.owner)
        .bind(lease.until)
        .bind(lease.now)
        .bind(kind)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = claimed.into_iter().map(|(id,)| id).collect();
        sql::jobs_by_id!(Postgres, &self.pool, &ids)
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Wakeup>>, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen_all([EVENTS_CHANNEL, JOBS_CHANNEL]).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    received = listener.recv() => received,
                    _ = tx.closed() => break,
                };
                match received {
                    Ok(notification) => {
                        let wakeup = if notification.channel() == EVENTS_CHANNEL {
                            Wakeup::Events
                        } else {
                            Wakeup::Jobs
                        };
                        // A full channel already holds a wake-up: nothing is lost by dropping.
                        let _ = tx.try_send(wakeup);
                    }
                    Err(error) => {
                        // The listener reconnects on the next call; polling covers the gap.
                        tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

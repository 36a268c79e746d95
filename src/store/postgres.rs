//! The PostgreSQL backend, shared by several instances: uniqueness is enforced by the database,
//! and processors claim queued events with `FOR UPDATE SKIP LOCKED` under a lease.

use super::sql::Sql;
use super::sql::counters::bucket_of;
use super::sql::events::{EVENT_SELECT, EventRow, resolve_inserted};
use super::*;
use async_trait::async_trait;
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
pub(super) struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://…` and applies migrations. Several instances starting at once are
    /// safe: the migrator holds an advisory lock while it runs.
    pub(super) async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    // Intake.

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
            let mut qb: QueryBuilder<Postgres> = Sql::insert_events_query(events, columns);
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
        resolve_inserted(batch, inserted, existing)
    }

    // Events and their processing.

    async fn get_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        Sql::get_event(&self.pool, id).await
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        Sql::list_events(&self.pool, query).await
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

    async fn fail_events(
        &self,
        failures: &[EventFailure],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        Sql::fail_events(&self.pool, failures, owner, now).await
    }

    async fn retry_event(&self, id: EventId) -> Result<bool, StoreError> {
        Sql::retry_event(&self.pool, id).await
    }

    async fn list_quarantined(&self, limit: u32) -> Result<Vec<QuarantinedEvent>, StoreError> {
        Sql::list_quarantined(&self.pool, limit).await
    }

    async fn finish_events(
        &self,
        finished: &[Finished],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<EventId>, StoreError> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let ids = Sql::finish_events(&mut tx, finished, owner, now).await?;
        tx.commit().await?;
        Ok(ids)
    }

    // Windowed counters (see docs/counters.md).

    async fn count_hits(&self, key: &str, since: Millis) -> Result<u64, StoreError> {
        Sql::count_hits(&self.pool, key, since).await
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
                .bind(bucket_of(since))
                .bind(bucket_of(at))
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(ordinal).unwrap_or(0))
    }

    async fn hit_ordinal_as_of(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        Sql::hit_ordinal_as_of(&self.pool, key, event_id, at, window_ms).await
    }

    // Evaluations.

    async fn get_evaluation(
        &self,
        event_id: EventId,
    ) -> Result<Option<StoredEvaluation>, StoreError> {
        Sql::get_evaluation(&self.pool, event_id).await
    }

    async fn list_evaluations(
        &self,
        ids: &[EventId],
    ) -> Result<Vec<(EventId, StoredEvaluation)>, StoreError> {
        Sql::list_evaluations(&self.pool, ids).await
    }

    // Jobs and their attempts.

    async fn list_event_jobs(&self, event_id: EventId) -> Result<Vec<StoredJob>, StoreError> {
        Sql::list_event_jobs(&self.pool, event_id).await
    }

    async fn claim_jobs(
        &self,
        lease: &Lease,
        kind: JobKind,
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
        .bind(kind.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = claimed.into_iter().map(|(id,)| id).collect();
        Sql::jobs_by_id(&self.pool, &ids).await
    }

    async fn record_attempts(
        &self,
        owner: &str,
        batch: &[FinishedAttempt],
    ) -> Result<Vec<bool>, StoreError> {
        Sql::record_attempts(&self.pool, owner, batch).await
    }

    async fn list_job_attempts(&self, job_id: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        Sql::list_job_attempts(&self.pool, job_id).await
    }

    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        Sql::list_jobs(&self.pool, status, before_id, limit).await
    }

    async fn get_job(&self, id: i64) -> Result<Option<StoredJob>, StoreError> {
        Sql::get_job(&self.pool, id).await
    }

    async fn retry_job(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
        Sql::retry_job(&self.pool, id, now).await
    }

    async fn cancel_job(&self, id: i64, note: &str, now: Millis) -> Result<bool, StoreError> {
        Sql::cancel_job(&self.pool, id, note, now).await
    }

    async fn insert_replay_jobs(
        &self,
        event_id: EventId,
        run: &str,
        jobs: &[NewJob],
        now: Millis,
    ) -> Result<u64, StoreError> {
        Sql::insert_replay_jobs(&self.pool, event_id, run, jobs, now).await
    }

    // Callback tasks.

    async fn upsert_callback_tasks(
        &self,
        requests: &[CallbackRequest],
        now: Millis,
    ) -> Result<Vec<UpsertedTask>, StoreError> {
        Sql::upsert_callback_tasks(&self.pool, requests, now).await
    }

    async fn close_callback_tasks_many(
        &self,
        closes: &[(String, String)],
        now: Millis,
    ) -> Result<Vec<u64>, StoreError> {
        Sql::close_callback_tasks_many(&self.pool, closes, now).await
    }

    async fn list_callback_tasks(
        &self,
        query: &TaskQuery,
    ) -> Result<Vec<CallbackTask>, StoreError> {
        Sql::list_callback_tasks(&self.pool, query).await
    }

    async fn get_callback_task(&self, id: i64) -> Result<Option<CallbackTask>, StoreError> {
        Sql::get_callback_task(&self.pool, id).await
    }

    async fn update_callback_task(
        &self,
        id: i64,
        transition: TaskTransition,
        agent: Option<&str>,
        outcome: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Sql::update_callback_task(&self.pool, id, transition, agent, outcome, now).await
    }

    // The console: its overview, mutes, running instances.

    async fn overview(&self, since: Millis, now: Millis) -> Result<Overview, StoreError> {
        Sql::overview(&self.pool, since, now).await
    }

    async fn add_mute(
        &self,
        scope: &str,
        value: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<Mute, StoreError> {
        Sql::add_mute(&self.pool, scope, value, until, reason, now).await
    }

    async fn list_mutes(&self, active_only: bool, now: Millis) -> Result<Vec<Mute>, StoreError> {
        Sql::list_mutes(&self.pool, active_only, now).await
    }

    async fn lift_mute(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
        Sql::lift_mute(&self.pool, id, now).await
    }

    async fn heartbeat(&self, instance: &InstanceInfo) -> Result<(), StoreError> {
        Sql::heartbeat(&self.pool, instance).await
    }

    async fn list_instances(&self, since: Millis) -> Result<Vec<InstanceInfo>, StoreError> {
        Sql::list_instances(&self.pool, since).await
    }

    // Housekeeping.

    async fn prune(
        &self,
        counters_before: Millis,
        now: Millis,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Sql::prune(&self.pool, counters_before, now, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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

    async fn close(&self) {
        self.pool.close().await;
    }
}

//! The PostgreSQL backend, shared by several instances: uniqueness is enforced by the database,
//! and processors claim queued events with `FOR UPDATE SKIP LOCKED` under a lease.

use super::{
    CallbackRequest, CallbackTask, EventId, EventQuery, Finished, FinishedAttempt, Inserted,
    InstanceInfo, Lease, Millis, Mute, NewEvent, NewJob, Overview, Store, StoreError,
    StoredAttempt, StoredEvaluation, StoredEvent, StoredJob, TaskQuery,
    row::{AttemptRow, EVENT_SELECT, EvaluationRow, EventRow, JobRow, TaskRow},
    sql,
};
use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use std::collections::HashMap;
use std::time::Duration;

/// Rows per multi-row statement: 10 parameters each stays far below PostgreSQL's 65,535.
const ROWS_PER_STATEMENT: usize = 1024;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

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

#[async_trait]
impl Store for PostgresStore {
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

    async fn get_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        sql::fetch_one_row!(&self.pool, EventRow, sql::GET_EVENT.as_str(), id)
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
             ORDER BY event_id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING event_id",
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

    async fn get_evaluation(
        &self,
        event_id: EventId,
    ) -> Result<Option<StoredEvaluation>, StoreError> {
        sql::fetch_one_row!(
            &self.pool,
            EvaluationRow,
            sql::GET_EVALUATION.as_str(),
            event_id
        )
    }

    async fn list_event_jobs(&self, event_id: EventId) -> Result<Vec<StoredJob>, StoreError> {
        sql::fetch_rows!(&self.pool, JobRow, sql::LIST_EVENT_JOBS.as_str(), event_id)
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

    async fn record_attempts(
        &self,
        owner: &str,
        batch: &[FinishedAttempt],
    ) -> Result<Vec<bool>, StoreError> {
        sql::record_attempts!(self.pool, owner, batch)
    }

    async fn list_job_attempts(&self, job_id: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        sql::fetch_rows!(
            &self.pool,
            AttemptRow,
            sql::LIST_JOB_ATTEMPTS.as_str(),
            job_id
        )
    }

    async fn upsert_callback_task(
        &self,
        request: &CallbackRequest,
        now: Millis,
    ) -> Result<CallbackTask, StoreError> {
        sql::upsert_callback_task!(self.pool, " FOR UPDATE", request, now)
    }

    async fn close_callback_tasks(
        &self,
        phone: &str,
        outcome: &str,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::CLOSE_CALLBACK_TASKS)
            .bind(outcome)
            .bind(now)
            .bind(phone)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn list_callback_tasks(
        &self,
        query: &TaskQuery,
    ) -> Result<Vec<CallbackTask>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(sql::LIST_TASKS.as_str())
            .bind(&query.status)
            .bind(&query.phone)
            .bind(query.due_before)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(TaskRow::into_stored).collect()
    }

    async fn list_jobs(
        &self,
        status: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(sql::LIST_JOBS.as_str())
            .bind(status)
            .bind(before_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(JobRow::into_stored).collect()
    }

    async fn get_job(&self, id: i64) -> Result<Option<StoredJob>, StoreError> {
        sql::fetch_one_row!(&self.pool, JobRow, sql::GET_JOB.as_str(), id)
    }

    async fn retry_job(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::RETRY_JOB)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel_job(&self, id: i64, note: &str, now: Millis) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::CANCEL_JOB)
            .bind(note)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_callback_task(&self, id: i64) -> Result<Option<CallbackTask>, StoreError> {
        sql::fetch_one_row!(&self.pool, TaskRow, sql::GET_TASK.as_str(), id)
    }

    async fn update_callback_task(
        &self,
        id: i64,
        from: &[&str],
        status: &str,
        agent: Option<&str>,
        outcome: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let pool = &self.pool;
        sql::update_callback_task!(*pool, id, from, status, agent, outcome, now)
    }

    async fn list_evaluations(
        &self,
        ids: &[EventId],
    ) -> Result<Vec<(EventId, StoredEvaluation)>, StoreError> {
        sql::list_evaluations!(Postgres, &self.pool, ids)
    }

    async fn insert_replay_jobs(
        &self,
        event_id: EventId,
        run: &str,
        jobs: &[NewJob],
        now: Millis,
    ) -> Result<u64, StoreError> {
        sql::insert_replay_jobs!(self.pool, event_id, run, jobs, now)
    }

    async fn overview(&self, since: Millis, now: Millis) -> Result<Overview, StoreError> {
        sql::overview!(&self.pool, since, now)
    }

    async fn add_mute(
        &self,
        scope: &str,
        value: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<Mute, StoreError> {
        Ok(sqlx::query_as(sql::ADD_MUTE.as_str())
            .bind(scope)
            .bind(value)
            .bind(until)
            .bind(reason)
            .bind(now)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn list_mutes(&self, active_only: bool, now: Millis) -> Result<Vec<Mute>, StoreError> {
        Ok(sqlx::query_as(sql::LIST_MUTES.as_str())
            .bind(i64::from(active_only))
            .bind(now)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn lift_mute(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::LIFT_MUTE)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn heartbeat(&self, instance: &InstanceInfo) -> Result<(), StoreError> {
        sqlx::query(sql::HEARTBEAT)
            .bind(&instance.id)
            .bind(instance.started_at)
            .bind(instance.seen_at)
            .bind(&instance.ruleset_version)
            .bind(&instance.rules_dir)
            .bind(&instance.listen)
            .bind(&instance.version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_instances(&self, since: Millis) -> Result<Vec<InstanceInfo>, StoreError> {
        Ok(sqlx::query_as(sql::LIST_INSTANCES)
            .bind(since)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

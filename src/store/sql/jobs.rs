//! Jobs (the actions matching rules asked for) and their delivery attempts: queuing them for
//! finished events and replays, recording attempts, listings, and an operator's retry or cancel.
//! Claims differ per backend and live there.

use super::{Backend, RowsAffected, Sql, Storable};
use crate::store::{
    AttemptRecord, EventId, Finished, FinishedAttempt, JobNext, JobStatus, Millis, NewJob,
    StoreError, StoredAttempt, StoredJob,
};
use sqlx::{ColumnIndex, Encode, Executor, Pool, QueryBuilder, Type};
use std::collections::HashMap;
use std::sync::LazyLock;

/// The columns of a `jobs` row.
const JOB_SELECT: &str = "SELECT id, idempotency_key, event_id, rule, action_index, \
     kind, spec, status, note, created_at, attempts, next_attempt_at, finished_at, replay_run \
     FROM jobs";

/// Jobs, newest first. Binds: status or NULL, before id or NULL, limit.
static LIST_JOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{JOB_SELECT} WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3"
    )
});

/// One job. Bind: id.
static GET_JOB: LazyLock<String> = LazyLock::new(|| format!("{JOB_SELECT} WHERE id = $1"));

/// One event's jobs, in order. Bind: event id.
static LIST_EVENT_JOBS: LazyLock<String> =
    LazyLock::new(|| format!("{JOB_SELECT} WHERE event_id = $1 ORDER BY id"));

/// Binds: now, id.
const RETRY_JOB: &str = "UPDATE jobs SET status = 'pending', next_attempt_at = $1, \
     finished_at = NULL, note = 'retried by an operator' WHERE id = $2 AND status = 'dead'";

/// Binds: note, now, id.
const CANCEL_JOB: &str = "UPDATE jobs SET status = 'cancelled', note = $1, \
     finished_at = $2, lease_owner = NULL WHERE id = $3 AND status IN ('pending', 'retrying', 'dead')";

/// A job's attempts, in order. Bind: job id.
const LIST_JOB_ATTEMPTS: &str = "SELECT attempt, started_at, duration_ms, outcome, code, \
     detail FROM job_attempts WHERE job_id = $1 ORDER BY attempt";

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    idempotency_key: String,
    event_id: i64,
    rule: String,
    action_index: i64,
    kind: String,
    spec: String,
    status: String,
    note: Option<String>,
    created_at: Millis,
    attempts: i64,
    next_attempt_at: Millis,
    finished_at: Option<Millis>,
    replay_run: Option<String>,
}

impl JobRow {
    fn into_stored(self) -> Result<StoredJob, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            what: "job",
            message,
        };
        Ok(StoredJob {
            id: self.id,
            idempotency_key: self.idempotency_key,
            event_id: self.event_id,
            rule: self.rule,
            action_index: self.action_index,
            kind: self.kind.parse().map_err(|e| corrupt(format!("{e}")))?,
            spec: serde_json::from_str(&self.spec).map_err(|e| corrupt(format!("spec: {e}")))?,
            status: self.status.parse().map_err(|e| corrupt(format!("{e}")))?,
            note: self.note,
            created_at: self.created_at,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            finished_at: self.finished_at,
            replay_run: self.replay_run,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i64,
    started_at: Millis,
    duration_ms: i64,
    outcome: String,
    code: Option<i64>,
    detail: Option<String>,
}

impl AttemptRow {
    fn into_stored(self) -> StoredAttempt {
        StoredAttempt {
            attempt: self.attempt,
            record: AttemptRecord {
                started_at: self.started_at,
                duration_ms: self.duration_ms,
                outcome: self.outcome,
                code: self.code,
                detail: self.detail,
            },
        }
    }
}

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    i64: Storable<DB>,
    Option<i64>: Storable<DB>,
    String: Storable<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Jobs of finished events, each once by its idempotency key; `None` when there are none.
    /// Jobs of the rules in `held_back` (event id, rule → status and note: `suppressed` by a
    /// throttle, or `muted`) are recorded with that status instead of `pending`.
    pub(crate) fn insert_jobs<'a>(
        finished: &'a [&'a Finished],
        held_back: &'a HashMap<(EventId, String), (JobStatus, String)>,
        now: Millis,
        replay_run: Option<&'a str>,
    ) -> Result<Option<QueryBuilder<'a, DB>>, StoreError> {
        let mut jobs = Vec::new();
        for f in finished {
            for job in &f.jobs {
                let spec = serde_json::to_string(&job.spec).map_err(|e| StoreError::Corrupt {
                    what: "job spec",
                    message: e.to_string(),
                })?;
                let held = held_back.get(&(f.event_id, job.rule.clone()));
                let key = match replay_run {
                    Some(run) => format!("{}:{run}", job.idempotency_key(f.event_id)),
                    None => job.idempotency_key(f.event_id),
                };
                jobs.push((key, f.event_id, job, spec, held));
            }
        }
        if jobs.is_empty() {
            return Ok(None);
        }
        let mut qb = QueryBuilder::new(
            "INSERT INTO jobs (idempotency_key, event_id, rule, action_index, kind, spec, status, \
             note, created_at, replay_run) ",
        );
        qb.push_values(jobs, |mut row, (key, event_id, job, spec, held)| {
            row.push_bind(key)
                .push_bind(event_id)
                .push_bind(&job.rule)
                .push_bind(i64::from(job.action_index))
                .push_bind(job.kind.as_str())
                .push_bind(spec)
                .push_bind(
                    held.map_or(JobStatus::Pending, |(status, _)| *status)
                        .as_str(),
                )
                .push_bind(held.map(|(_, note)| note.as_str()))
                .push_bind(now)
                .push_bind(replay_run);
        });
        qb.push(" ON CONFLICT (idempotency_key) DO NOTHING");
        Ok(Some(qb))
    }

    /// `Store::insert_replay_jobs`: mutes apply, throttles do not.
    pub(crate) async fn insert_replay_jobs(
        writer: &Pool<DB>,
        event_id: EventId,
        run: &str,
        jobs: &[NewJob],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let replayed = Finished {
            event_id,
            ruleset_version: String::new(),
            record: Default::default(),
            jobs: jobs.to_vec(),
            throttles: Vec::new(),
        };
        let chunk = [&replayed];
        let mut tx = writer.begin().await?;
        let mutes = Self::active_mutes(&mut tx, now).await?;
        let held_back = Self::muted_jobs(&mut tx, &mutes, &chunk).await?;
        let mut queued = 0;
        if let Some(mut qb) = Self::insert_jobs(&chunk, &held_back, now, Some(run))? {
            queued = DB::build(&mut qb).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(queued)
    }

    /// Jobs by id (after a claim), earliest due first.
    pub(crate) async fn jobs_by_id(
        pool: &Pool<DB>,
        ids: &[i64],
    ) -> Result<Vec<StoredJob>, StoreError> {
        let mut qb = QueryBuilder::new(format!("{JOB_SELECT} WHERE id IN ("));
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        qb.push(") ORDER BY next_attempt_at, id");
        let rows: Vec<JobRow> = DB::build_query_as(&mut qb).fetch_all(pool).await?;
        rows.into_iter().map(JobRow::into_stored).collect()
    }

    /// `Store::record_attempts`: one transaction for the whole batch. A job whose lease `owner`
    /// no longer holds is left alone (its entry is false).
    pub(crate) async fn record_attempts(
        writer: &Pool<DB>,
        owner: &str,
        batch: &[FinishedAttempt],
    ) -> Result<Vec<bool>, StoreError> {
        let mut recorded = Vec::with_capacity(batch.len());
        let mut tx = writer.begin().await?;
        for done in batch {
            let attempt = &done.attempt;
            let ended = attempt.started_at + attempt.duration_ms;
            let (status, next_at, finished_at) = match done.next {
                JobNext::Done => (JobStatus::Done, 0, Some(ended)),
                JobNext::RetryAt(at) => (JobStatus::Retrying, at, None),
                JobNext::Dead => (JobStatus::Dead, 0, Some(ended)),
            };
            let updated: Option<(i64,)> = sqlx::query_as(
                "UPDATE jobs SET attempts = attempts + 1, status = $1, next_attempt_at = $2, \
                 finished_at = $3, lease_owner = NULL, lease_until = 0 \
                 WHERE id = $4 AND lease_owner = $5 RETURNING attempts",
            )
            .bind(status.as_str())
            .bind(next_at)
            .bind(finished_at)
            .bind(done.job_id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((number,)) = updated else {
                recorded.push(false);
                continue;
            };
            sqlx::query(
                "INSERT INTO job_attempts (job_id, attempt, started_at, duration_ms, outcome, \
                 code, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(done.job_id)
            .bind(number)
            .bind(attempt.started_at)
            .bind(attempt.duration_ms)
            .bind(&attempt.outcome)
            .bind(attempt.code)
            .bind(attempt.detail.as_deref())
            .execute(&mut *tx)
            .await?;
            recorded.push(true);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    pub(crate) async fn list_job_attempts(
        pool: &Pool<DB>,
        job_id: i64,
    ) -> Result<Vec<StoredAttempt>, StoreError> {
        let rows: Vec<AttemptRow> = sqlx::query_as(LIST_JOB_ATTEMPTS)
            .bind(job_id)
            .fetch_all(pool)
            .await?;
        Ok(rows.into_iter().map(AttemptRow::into_stored).collect())
    }

    pub(crate) async fn list_event_jobs(
        pool: &Pool<DB>,
        event_id: EventId,
    ) -> Result<Vec<StoredJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(LIST_EVENT_JOBS.as_str())
            .bind(event_id)
            .fetch_all(pool)
            .await?;
        rows.into_iter().map(JobRow::into_stored).collect()
    }

    pub(crate) async fn list_jobs(
        pool: &Pool<DB>,
        status: Option<JobStatus>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(LIST_JOBS.as_str())
            .bind(status.map(JobStatus::as_str))
            .bind(before_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        rows.into_iter().map(JobRow::into_stored).collect()
    }

    pub(crate) async fn get_job(pool: &Pool<DB>, id: i64) -> Result<Option<StoredJob>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(GET_JOB.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.map(JobRow::into_stored).transpose()
    }

    pub(crate) async fn retry_job(
        writer: &Pool<DB>,
        id: i64,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(RETRY_JOB)
            .bind(now)
            .bind(id)
            .execute(writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn cancel_job(
        writer: &Pool<DB>,
        id: i64,
        note: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(CANCEL_JOB)
            .bind(note)
            .bind(now)
            .bind(id)
            .execute(writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

//! The embedded SQLite backend: one database file in WAL mode with `synchronous=FULL`, so a
//! commit is on disk before the call returns.

use super::sql::Sql;
use super::sql::events::{EVENT_SELECT, EventRow, resolve_inserted};
use super::sqlite_hits::PendingHits;
use super::*;
use async_trait::async_trait;
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Rows per multi-row statement: 10 parameters each stays far below SQLite's variable limit.
const ROWS_PER_STATEMENT: usize = 256;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The SQLite store. All writes go through one connection, so writers queue in the pool (fairly,
/// without SQLite's sleeping busy handler) and each transaction runs without lock contention;
/// reads use a separate pool and run concurrently with writes (WAL).
#[derive(Debug, Clone)]
pub(super) struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Windowed-counter hits numbered and not stored yet (the file is this process's alone).
    hits: Arc<PendingHits>,
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (creating the file and its folder on first run) and applies
    /// migrations. The URL may carry `?max_page_count=N`: the database cannot grow beyond N pages
    /// (of 4 KiB), which makes a full disk without filling one.
    pub(super) async fn open(url: &str) -> Result<Self, StoreError> {
        let (url, max_page_count) = take_max_page_count(url)?;
        let mut options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(pages) = max_page_count {
            options = options.pragma("max_page_count", pages.to_string());
        }
        let path = options.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A write that failed inside a transaction leaves the connection in doubt: its
            // rollback may still be queued, or may itself have failed (SQLite may already have
            // rolled back after a full disk or an I/O error, and sqlx then still counts the
            // transaction as open, so its next BEGIN would only be a SAVEPOINT and its next
            // COMMIT would commit nothing). Such a connection is closed, which rolls back
            // whatever is left, and the next write gets a fresh one.
            .after_release(|conn, _| {
                Box::pin(async move {
                    let clean = !conn.is_in_transaction();
                    if !clean {
                        tracing::warn!(
                            "a write failed inside a transaction; replacing the database connection"
                        );
                    }
                    Ok(clean)
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(|error| open_error(&path, error))?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(|error| open_error(&path, error))?;
        Ok(Self {
            writer,
            reader,
            hits: Arc::default(),
        })
    }
}

/// Removes `max_page_count=N` from a SQLite URL's query (sqlx does not know it): the URL without
/// it, and N.
fn take_max_page_count(url: &str) -> Result<(String, Option<u32>), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut pages = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("max_page_count", value)) => {
                let n = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        StoreError::InvalidUrlOption(format!(
                            "max_page_count must be a whole number of pages above 0, not `{value}`"
                        ))
                    })?;
                pages = Some(n);
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, pages))
}

/// Why the database at `path` cannot be opened, with the path and, where the OS can tell, its
/// reason: SQLite itself only says "unable to open database file".
fn open_error(path: &Path, error: sqlx::Error) -> StoreError {
    let reason = os_reason(path).unwrap_or_else(|| error.to_string());
    StoreError::Open {
        path: path.display().to_string(),
        reason,
    }
}

/// What the OS says when the database file is opened for writing, or (SQLite in WAL mode keeps
/// its `-wal` and `-shm` files beside the database) when they are; `None` when all of that works.
fn os_reason(path: &Path) -> Option<String> {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
    };
    if let Err(error) = open(path) {
        return Some(format!("it cannot be opened for writing: {error}"));
    }
    for suffix in ["-wal", "-shm"] {
        let mut beside = path.as_os_str().to_owned();
        beside.push(suffix);
        let beside = std::path::PathBuf::from(beside);
        if let Err(error) = open(&beside) {
            return Some(format!("{} cannot be created: {error}", beside.display()));
        }
    }
    None
}

#[async_trait]
impl Store for SqliteStore {
    // Intake.

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
            let mut qb: QueryBuilder<Sqlite> = Sql::insert_events_query(events, columns);
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
        resolve_inserted(batch, inserted, existing)
    }

    // Events and their processing.

    async fn get_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        Sql::get_event(&self.reader, id).await
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        Sql::list_events(&self.reader, query).await
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
             AND quarantined_at IS NULL ORDER BY event_id LIMIT ?) RETURNING event_id",
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

    async fn fail_events(
        &self,
        failures: &[EventFailure],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        Sql::fail_events(&self.writer, failures, owner, now).await
    }

    async fn retry_event(&self, id: EventId) -> Result<bool, StoreError> {
        Sql::retry_event(&self.writer, id).await
    }

    async fn list_quarantined(&self, limit: u32) -> Result<Vec<QuarantinedEvent>, StoreError> {
        Sql::list_quarantined(&self.reader, limit).await
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
        // The batch stores every hit numbered so far with it (so every hit its evaluations
        // counted), and they stop being pending once it has committed.
        let hits = self.hits.snapshot().await;
        let mut tx = self.writer.begin().await?;
        let ids = Sql::finish_events(&mut tx, finished, owner, now).await?;
        self.hits.commit_with(tx, hits).await?;
        Ok(ids)
    }

    // Windowed counters (see docs/counters.md).

    async fn count_hits(&self, key: &str, since: Millis) -> Result<u64, StoreError> {
        self.hits.count(&self.reader, key, since).await
    }

    async fn record_hit(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        self.hits
            .record(&self.reader, key, event_id, at, window_ms)
            .await
    }

    async fn hit_ordinal_as_of(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        self.hits
            .ordinal_as_of(&self.reader, key, event_id, at, window_ms)
            .await
    }

    // Evaluations.

    async fn get_evaluation(
        &self,
        event_id: EventId,
    ) -> Result<Option<StoredEvaluation>, StoreError> {
        Sql::get_evaluation(&self.reader, event_id).await
    }

    async fn list_evaluations(
        &self,
        ids: &[EventId],
    ) -> Result<Vec<(EventId, StoredEvaluation)>, StoreError> {
        Sql::list_evaluations(&self.reader, ids).await
    }

    // Jobs and their attempts.

    async fn list_event_jobs(&self, event_id: EventId) -> Result<Vec<StoredJob>, StoreError> {
        Sql::list_event_jobs(&self.reader, event_id).await
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
             AND lease_until < $3 AND kind = $4 ORDER BY next_attempt_at, id LIMIT $5) \
             RETURNING id",
        )
        .bind(&lease.owner)
        .bind(lease.until)
        .bind(lease.now)
        .bind(kind.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = claimed.into_iter().map(|(id,)| id).collect();
        Sql::jobs_by_id(&self.reader, &ids).await
    }

    async fn record_attempts(
        &self,
        owner: &str,
        batch: &[FinishedAttempt],
    ) -> Result<Vec<bool>, StoreError> {
        Sql::record_attempts(&self.writer, owner, batch).await
    }

    async fn list_job_attempts(&self, job_id: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        Sql::list_job_attempts(&self.reader, job_id).await
    }

    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError> {
        Sql::list_jobs(&self.reader, status, before_id, limit).await
    }

    async fn get_job(&self, id: i64) -> Result<Option<StoredJob>, StoreError> {
        Sql::get_job(&self.reader, id).await
    }

    async fn retry_job(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
        Sql::retry_job(&self.writer, id, now).await
    }

    async fn cancel_job(&self, id: i64, note: &str, now: Millis) -> Result<bool, StoreError> {
        Sql::cancel_job(&self.writer, id, note, now).await
    }

    async fn insert_replay_jobs(
        &self,
        event_id: EventId,
        run: &str,
        jobs: &[NewJob],
        now: Millis,
    ) -> Result<u64, StoreError> {
        Sql::insert_replay_jobs(&self.writer, event_id, run, jobs, now).await
    }

    // Callback tasks.

    async fn upsert_callback_tasks(
        &self,
        requests: &[CallbackRequest],
        now: Millis,
    ) -> Result<Vec<UpsertedTask>, StoreError> {
        Sql::upsert_callback_tasks(&self.writer, requests, now).await
    }

    async fn close_callback_tasks_many(
        &self,
        closes: &[(String, String)],
        now: Millis,
    ) -> Result<Vec<u64>, StoreError> {
        Sql::close_callback_tasks_many(&self.writer, closes, now).await
    }

    async fn list_callback_tasks(
        &self,
        query: &TaskQuery,
    ) -> Result<Vec<CallbackTask>, StoreError> {
        Sql::list_callback_tasks(&self.reader, query).await
    }

    async fn get_callback_task(&self, id: i64) -> Result<Option<CallbackTask>, StoreError> {
        Sql::get_callback_task(&self.reader, id).await
    }

    async fn update_callback_task(
        &self,
        id: i64,
        transition: TaskTransition,
        agent: Option<&str>,
        outcome: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Sql::update_callback_task(&self.writer, id, transition, agent, outcome, now).await
    }

    // The console: its overview, mutes, running instances.

    async fn overview(&self, since: Millis, now: Millis) -> Result<Overview, StoreError> {
        Sql::overview(&self.reader, since, now).await
    }

    async fn add_mute(
        &self,
        scope: &str,
        value: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<Mute, StoreError> {
        Sql::add_mute(&self.writer, scope, value, until, reason, now).await
    }

    async fn list_mutes(&self, active_only: bool, now: Millis) -> Result<Vec<Mute>, StoreError> {
        Sql::list_mutes(&self.reader, active_only, now).await
    }

    async fn lift_mute(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
        Sql::lift_mute(&self.writer, id, now).await
    }

    async fn heartbeat(&self, instance: &InstanceInfo) -> Result<(), StoreError> {
        Sql::heartbeat(&self.writer, instance).await
    }

    async fn list_instances(&self, since: Millis) -> Result<Vec<InstanceInfo>, StoreError> {
        Sql::list_instances(&self.reader, since).await
    }

    // Housekeeping.

    async fn prune(
        &self,
        counters_before: Millis,
        now: Millis,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Sql::prune(&self.writer, counters_before, now, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_page_count_is_taken_out_of_the_url() {
        assert_eq!(
            take_max_page_count("sqlite://data/sb.db").unwrap(),
            ("sqlite://data/sb.db".to_string(), None)
        );
        assert_eq!(
            take_max_page_count("sqlite://sb.db?max_page_count=300").unwrap(),
            ("sqlite://sb.db".to_string(), Some(300))
        );
        assert_eq!(
            take_max_page_count("sqlite://sb.db?mode=rwc&max_page_count=300").unwrap(),
            ("sqlite://sb.db?mode=rwc".to_string(), Some(300))
        );
        for bad in ["0", "-1", "x", ""] {
            let error = take_max_page_count(&format!("sqlite://sb.db?max_page_count={bad}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("max_page_count"), "{error}");
        }
    }
}

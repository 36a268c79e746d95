//! The store interface: everything Switchboard keeps (events, processing state) goes through the
//! [`Store`] trait, so that the embedded SQLite backend and a shared PostgreSQL backend are
//! interchangeable. Times are unix milliseconds (UTC).
//!
//! Each backend implements the trait itself (`sqlite.rs`, `postgres.rs`); the SQL they run
//! alike lives in `sql/`, one module per topic, and the types callers see in `model.rs`.

mod classify;
mod model;
mod postgres;
mod sql;
mod sqlite;
mod sqlite_hits;

pub use model::*;

use async_trait::async_trait;
use postgres::PostgresStore;
use sqlite::SqliteStore;
use std::sync::Arc;

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (expected sqlite://… or postgres://…): {0}")]
    UnsupportedUrl(String),
    #[error("could not prepare the database location {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("stored data could not be read back ({what}): {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("cannot open the SQLite database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("invalid database URL option: {0}")]
    InvalidUrlOption(String),
}

/// The store interface. Every method is one transaction: a batch is committed whole or not at all.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Intake.

    /// Stores a batch of accepted events in one transaction, durably (the call returns after the
    /// commit reached disk). Events whose dedupe key is already stored (or repeated within the
    /// batch) are not stored again: their entry names the existing id with `duplicate: true`.
    async fn insert_events(&self, batch: &[NewEvent]) -> Result<Vec<Inserted>, StoreError>;

    // Events and their processing.

    /// One event by id.
    async fn get_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError>;

    /// Events matching the query, newest (highest id) first.
    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;

    /// Claims up to `limit` events that are pending, or whose previous lease has expired, oldest
    /// first, and leases them to `lease.owner` until `lease.until`.
    async fn claim_events(&self, lease: &Lease, limit: u32)
    -> Result<Vec<StoredEvent>, StoreError>;

    /// Records failed processing attempts of claimed events, all in one transaction: each
    /// failure is counted with its reason, and the event either waits in the queue until
    /// `retry_at` or is quarantined. An entry is false (nothing recorded) when `owner` no longer
    /// holds that event's lease.
    async fn fail_events(
        &self,
        failures: &[EventFailure],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<bool>, StoreError>;

    /// Puts a quarantined event back in the processing queue, due now, with its failures reset.
    /// False when the event is not quarantined.
    async fn retry_event(&self, id: EventId) -> Result<bool, StoreError>;

    /// Quarantined events, newest first.
    async fn list_quarantined(&self, limit: u32) -> Result<Vec<QuarantinedEvent>, StoreError>;

    /// Records processed events, all in one transaction: each one leaves the queue and gets its
    /// evaluation and jobs (its counter hits were recorded while it was evaluated; SQLite stores
    /// them, and every other hit numbered so far, in this transaction). Events that
    /// `owner` no longer holds the lease on (it expired and another processor claimed them) are
    /// left alone, so that an event's jobs are written once; the returned ids are the events
    /// this call finished.
    async fn finish_events(
        &self,
        finished: &[Finished],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<EventId>, StoreError>;

    // Windowed counters (see docs/counters.md).

    /// How many hits `key` has at or after `since` (committed ones only).
    async fn count_hits(&self, key: &str, since: Millis) -> Result<u64, StoreError>;

    /// Records event `event_id`'s hit on the windowed counter `key` at `at` and returns its
    /// ordinal within the window of `window_ms` ending at `at`: how many of the key's hits at or
    /// after `at - window_ms` were recorded before it, plus one. Atomic per key, however many
    /// processors and instances record at once: two hits of a key never get the same ordinal
    /// and none is skipped; different keys do not wait on each other. Every later hit counts
    /// it: PostgreSQL commits it before returning (its own transaction); SQLite (one process)
    /// numbers it in process and stores it with the next batch finished, before or with every
    /// evaluation that counted it. A hit the event already has is kept: the call answers the
    /// count it had ([`Store::hit_ordinal_as_of`]), so an event evaluated again sees what it saw
    /// the first time.
    async fn record_hit(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError>;

    /// The ordinal event `event_id` had (or would have had) on `key` within the window of
    /// `window_ms` ending at `at`, without recording anything (replay and what-if re-evaluate
    /// history with it): for a hit it has, the one it got (the same window), or its key's hits
    /// in the window up to and including it (another window); for a key it never hit, the hits
    /// of earlier events within the window up to `at`, plus one.
    async fn hit_ordinal_as_of(
        &self,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError>;

    // Evaluations.

    /// The evaluation of a processed event.
    async fn get_evaluation(
        &self,
        event_id: EventId,
    ) -> Result<Option<StoredEvaluation>, StoreError>;

    /// Evaluations of the given events (those that have one), in no particular order.
    async fn list_evaluations(
        &self,
        ids: &[EventId],
    ) -> Result<Vec<(EventId, StoredEvaluation)>, StoreError>;

    // Jobs and their attempts.

    /// The jobs an event's evaluation produced, in order.
    async fn list_event_jobs(&self, event_id: EventId) -> Result<Vec<StoredJob>, StoreError>;

    /// Claims up to `limit` jobs of `kind` that are due (pending or retrying, `next_attempt_at`
    /// reached) and not leased by a live worker, earliest due first.
    async fn claim_jobs(
        &self,
        lease: &Lease,
        kind: JobKind,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError>;

    /// Records attempts of claimed jobs and what happens next to each, all in one transaction.
    /// An entry is false (and nothing is recorded for it) when `owner` no longer holds that
    /// job's lease.
    async fn record_attempts(
        &self,
        owner: &str,
        batch: &[FinishedAttempt],
    ) -> Result<Vec<bool>, StoreError>;

    /// A job's attempts, in order.
    async fn list_job_attempts(&self, job_id: i64) -> Result<Vec<StoredAttempt>, StoreError>;

    /// Jobs, newest first: all, or those with `status`; `before_id` pages.
    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError>;

    /// One job.
    async fn get_job(&self, id: i64) -> Result<Option<StoredJob>, StoreError>;

    /// Gives a dead job another attempt now. False when the job is not dead.
    async fn retry_job(&self, id: i64, now: Millis) -> Result<bool, StoreError>;

    /// Cancels a job that has not succeeded (pending, retrying or dead). False otherwise.
    async fn cancel_job(&self, id: i64, note: &str, now: Millis) -> Result<bool, StoreError>;

    /// Queues the jobs of a real replay of an event, marked with the run (`replay_run`) and
    /// keyed `{event}:{index}:{rule}:{run}` so that they never collide with the first run's or
    /// another replay's. Mutes apply; throttles
    /// do not (a replay is an operator's decision). Returns how many were queued.
    async fn insert_replay_jobs(
        &self,
        event_id: EventId,
        run: &str,
        jobs: &[NewJob],
        now: Millis,
    ) -> Result<u64, StoreError>;

    // Callback tasks.

    /// Records call-back requests, all in one transaction: for each, a new open task for the
    /// phone, or (when one is open or claimed) the request merged into it: its reason added
    /// (once per event and rule), the priority raised and the due time brought forward if the
    /// request asks for it. A new task with `request.dispatch` also gets its dispatch job. The
    /// answers are in the order of the requests.
    async fn upsert_callback_tasks(
        &self,
        requests: &[CallbackRequest],
        now: Millis,
    ) -> Result<Vec<UpsertedTask>, StoreError>;

    /// Marks each phone's open or claimed tasks done with its outcome, all in one transaction;
    /// how many for each `(phone, outcome)`.
    async fn close_callback_tasks_many(
        &self,
        closes: &[(String, String)],
        now: Millis,
    ) -> Result<Vec<u64>, StoreError>;

    /// Tasks matching the query, most urgent first: priority, then due time.
    async fn list_callback_tasks(&self, query: &TaskQuery)
    -> Result<Vec<CallbackTask>, StoreError>;

    /// One callback task.
    async fn get_callback_task(&self, id: i64) -> Result<Option<CallbackTask>, StoreError>;

    /// Moves a task as `transition` says, recording the agent (claims) or outcome. False when
    /// the task is not in one of the statuses it moves from.
    async fn update_callback_task(
        &self,
        id: i64,
        transition: TaskTransition,
        agent: Option<&str>,
        outcome: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError>;

    // The console: its overview, mutes, running instances.

    /// The console's counts for events received at or after `since`.
    async fn overview(&self, since: Millis, now: Millis) -> Result<Overview, StoreError>;

    /// Mutes a rule or a phone (`scope` `rule` or `phone`) until `until`.
    async fn add_mute(
        &self,
        scope: &str,
        value: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<Mute, StoreError>;

    /// Mutes, newest first: those in force at `now`, or all.
    async fn list_mutes(&self, active_only: bool, now: Millis) -> Result<Vec<Mute>, StoreError>;

    /// Lifts a mute in force. False when there is none with that id in force.
    async fn lift_mute(&self, id: i64, now: Millis) -> Result<bool, StoreError>;

    /// Records (or refreshes) this instance's row.
    async fn heartbeat(&self, instance: &InstanceInfo) -> Result<(), StoreError>;

    /// Instances seen at or after `since`, oldest start first.
    async fn list_instances(&self, since: Millis) -> Result<Vec<InstanceInfo>, StoreError>;

    // Housekeeping.

    /// Deletes up to `limit` of what no window can need any more: counter hits before
    /// `counters_before` (and their per-second buckets), throttle windows that closed before
    /// `now`, and instances not seen for a week. Returns how many rows went (up to `limit` of
    /// each); call again while it returns any.
    async fn prune(
        &self,
        counters_before: Millis,
        now: Millis,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Wake-ups when another instance (or this one) queues work in a shared database
    /// (PostgreSQL LISTEN/NOTIFY). `None` where the store is this process's alone (SQLite):
    /// in-process notifications already cover it. Polling remains the fallback either way.
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Wakeup>>, StoreError> {
        Ok(None)
    }

    /// Waits for in-flight work and closes the connections (SQLite: checkpoints the WAL).
    async fn close(&self);
}

/// Opens (creating and migrating as needed) the store a database URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// A database URL with any password replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://sb:s3cret@db:5432/sb?sslmode=require"),
            "postgres://sb:***@db:5432/sb?sslmode=require"
        );
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }
}

//! The store interface: everything Switchboard keeps (events, processing state) goes through the
//! [`Store`] trait, so that the embedded SQLite backend and a shared PostgreSQL backend are
//! interchangeable. Times are unix milliseconds (UTC).

mod classify;
mod common;
mod postgres;
mod quarantine;
mod row;
mod sql;
mod sqlite;
mod sqlite_hits;

use common::impl_store;

pub use postgres::PostgresStore;
pub use quarantine::{EventFailure, EventNext, QuarantinedEvent, Unreadable};
pub use sqlite::SqliteStore;

use crate::event::{CallEvent, Warning};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The id of a stored event, assigned by the store.
pub type EventId = i64;

/// Unix time in milliseconds.
pub type Millis = i64;

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

/// A notification accepted by the intake, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub dedupe_key: String,
    pub received_at: Millis,
    /// Peer address of the HTTP connection.
    pub source_addr: Option<String>,
    pub content_type: Option<String>,
    /// The body exactly as received.
    pub raw_body: Vec<u8>,
    pub event: CallEvent,
    pub warnings: Vec<Warning>,
}

/// What storing one [`NewEvent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Inserted {
    pub id: EventId,
    /// True when an event with the same dedupe key was already stored; `id` is that event's.
    pub duplicate: bool,
}

/// Where an event stands in processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingState {
    /// Accepted, waiting for a processor.
    Pending,
    /// Claimed by a processor under a lease (or left by one that died: once the lease expires
    /// another processor claims it).
    Processing,
    /// Done: its evaluation is recorded.
    Processed,
    /// Failed to load or to process too many times: left out of processing until an operator
    /// retries it (`last_error` says why).
    Quarantined,
}

impl ProcessingState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingState::Pending => "pending",
            ProcessingState::Processing => "processing",
            ProcessingState::Processed => "processed",
            ProcessingState::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ProcessingState::Pending),
            "processing" => Some(ProcessingState::Processing),
            "processed" => Some(ProcessingState::Processed),
            "quarantined" => Some(ProcessingState::Quarantined),
            _ => None,
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub id: EventId,
    pub dedupe_key: String,
    pub received_at: Millis,
    pub source_addr: Option<String>,
    pub content_type: Option<String>,
    #[serde(skip)]
    pub raw_body: Vec<u8>,
    pub event: CallEvent,
    pub warnings: Vec<Warning>,
    pub state: ProcessingState,
    /// How many times a processor claimed it.
    pub attempts: i64,
    pub processed_at: Option<Millis>,
    /// Failed processing attempts so far (while it waits in the queue).
    pub failures: i64,
    /// Why the last processing attempt failed.
    pub last_error: Option<String>,
    /// When it was quarantined, if it is.
    pub quarantined_at: Option<Millis>,
    /// Why the stored row could not be read back in full, if it could not: `event` and
    /// `warnings` are then empty, and the event must not be evaluated (see [`Self::readable`]).
    pub unreadable: Option<String>,
}

impl StoredEvent {
    /// The decoded view if the row could be read back (what evaluation may use), or why not.
    pub fn readable(&self) -> Result<&CallEvent, Unreadable> {
        match &self.unreadable {
            None => Ok(&self.event),
            Some(reason) => Err(Unreadable {
                id: self.id,
                reason: reason.clone(),
            }),
        }
    }
}

/// The outcome of processing one claimed event, recorded in the transaction that finishes it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub event_id: EventId,
    /// The version of the rule set the event was evaluated against.
    pub ruleset_version: String,
    /// The evaluation record (each rule's verdict, actions, errors, timing).
    pub record: serde_json::Value,
    /// The actions matching rules asked for.
    pub jobs: Vec<NewJob>,
    /// Throttles of the rules that matched: a rule whose window for the key is still open gets
    /// its jobs recorded as `suppressed`; otherwise the window opens (until `at + window_ms`).
    pub throttles: Vec<RuleThrottle>,
}

/// A matched rule's throttle, as it applies to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleThrottle {
    pub rule: String,
    pub key: String,
    pub window_ms: Millis,
    /// The event's time.
    pub at: Millis,
}

/// An action to execute, as a matching rule asked for it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub rule: String,
    /// The action's position in the rule's list: with the event and rule, its identity.
    pub action_index: u32,
    pub kind: String,
    /// The fully rendered action (JSON).
    pub spec: serde_json::Value,
}

impl NewJob {
    /// The key that makes this job exist once: event, action index and rule.
    pub fn idempotency_key(&self, event_id: EventId) -> String {
        format!("{event_id}:{}:{}", self.action_index, self.rule)
    }
}

/// A processed event's evaluation as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvaluation {
    pub processed_at: Millis,
    pub attempts: i64,
    pub ruleset_version: Option<String>,
    pub record: Option<serde_json::Value>,
}

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredJob {
    pub id: i64,
    pub idempotency_key: String,
    pub event_id: EventId,
    pub rule: String,
    pub action_index: i64,
    pub kind: String,
    pub spec: serde_json::Value,
    pub status: String,
    /// Why the job is in its status, e.g. the throttle that suppressed it.
    pub note: Option<String>,
    pub created_at: Millis,
    /// Attempts made so far.
    pub attempts: i64,
    /// When the job is next due (pending and retrying jobs).
    pub next_attempt_at: Millis,
    /// When it ended (done or dead).
    pub finished_at: Option<Millis>,
}

/// Job statuses, as stored.
pub mod job_status {
    pub const PENDING: &str = "pending";
    pub const RETRYING: &str = "retrying";
    pub const DONE: &str = "done";
    pub const DEAD: &str = "dead";
    pub const SUPPRESSED: &str = "suppressed";
    pub const MUTED: &str = "muted";
    pub const CANCELLED: &str = "cancelled";
}

/// One delivery attempt, as the worker saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub started_at: Millis,
    pub duration_ms: i64,
    /// `success`, `transient` or `permanent`.
    pub outcome: String,
    /// HTTP status or SMTP reply code, when there was one.
    pub code: Option<i64>,
    /// The error or reply text.
    pub detail: Option<String>,
}

/// What happens to a job after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobNext {
    Done,
    RetryAt(Millis),
    /// Dead-lettered: kept, listed, and retried only by an operator.
    Dead,
}

/// An attempt of a claimed job, ready to record.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedAttempt {
    pub job_id: i64,
    pub attempt: AttemptRecord,
    pub next: JobNext,
}

/// An attempt as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredAttempt {
    pub attempt: i64,
    #[serde(flatten)]
    pub record: AttemptRecord,
}

/// A matching rule's request for a call-back.
#[derive(Debug, Clone)]
pub struct CallbackRequest {
    pub phone: String,
    pub customer_name: Option<String>,
    pub reason: String,
    pub event_id: EventId,
    pub rule: String,
    /// Higher is more urgent.
    pub priority: i64,
    pub due_at: Millis,
    /// Queue a [`CALLBACK_DISPATCH_KIND`] job (in the same transaction) when this creates a task.
    pub dispatch: bool,
}

/// The job kind that sends a new callback task out (Udesk's web callback API or a webhook).
/// Its spec is `{"task_id": …}`.
pub const CALLBACK_DISPATCH_KIND: &str = "callback_dispatch";

/// What recording a call-back request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpsertedTask {
    /// The phone's open task.
    pub id: i64,
    /// Whether this request created it (otherwise it was merged into it).
    pub created: bool,
}

/// A callback task as stored.
#[derive(Debug, Clone, Serialize)]
pub struct CallbackTask {
    pub id: i64,
    pub phone: String,
    pub customer_name: Option<String>,
    /// `open`, `claimed`, `done` or `cancelled`.
    pub status: String,
    pub priority: i64,
    pub due_at: Millis,
    /// Why the task exists: `[{reason, event_id, rule, at}]`, oldest first.
    pub reasons: serde_json::Value,
    pub claimed_by: Option<String>,
    pub outcome: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub closed_at: Option<Millis>,
}

/// Filters for listing callback tasks; all given must hold.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<String>,
    pub phone: Option<String>,
    /// Due before this time.
    pub due_before: Option<Millis>,
    pub limit: u32,
}

/// Filters for listing events, newest first. All given filters must hold.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub call_id: Option<String>,
    pub customer_phone: Option<String>,
    /// Received at or after.
    pub since: Option<Millis>,
    /// Received before.
    pub until: Option<Millis>,
    /// Only ids below this one (the cursor for the next page).
    pub before_id: Option<EventId>,
    /// The decoded outcome (`answered`, `abandoned_in_queue`, …).
    pub outcome: Option<String>,
    /// Events this rule matched.
    pub matched_rule: Option<String>,
    pub limit: u32,
}

/// Counts for the console's overview: events received since a time, and what became of them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    /// `(start of minute, events received in it)`, minutes with events only, oldest first.
    pub events_per_minute: Vec<(Millis, i64)>,
    pub events: i64,
    /// Events at least one rule matched.
    pub matched_events: i64,
    /// Rule failures (one per rule and event).
    pub rule_errors: i64,
    /// Jobs created in the window, by status.
    pub jobs: std::collections::BTreeMap<String, i64>,
    /// All dead jobs, whenever created: each one is waiting for an operator.
    pub dead_jobs_total: i64,
    /// Jobs due now or earlier and not yet done (pending or retrying).
    pub due_jobs: i64,
    /// When the oldest due job became due (its retry time, or its creation for a first attempt).
    pub oldest_due_at: Option<Millis>,
    pub open_callback_tasks: i64,
    /// Events quarantined now (whenever received): each is waiting for an operator.
    pub quarantined_events: i64,
}

/// An operator's mute: a rule's actions, or every action for a phone, are recorded as muted
/// (not run) until a time.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Mute {
    pub id: i64,
    /// `rule` or `phone`.
    pub scope: String,
    pub value: String,
    pub until: Millis,
    pub reason: String,
    pub created_at: Millis,
    pub lifted_at: Option<Millis>,
}

/// A running instance as it reports itself.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceInfo {
    pub id: String,
    pub started_at: Millis,
    /// Refreshed while the instance runs.
    pub seen_at: Millis,
    pub ruleset_version: String,
    pub rules_dir: String,
    pub listen: String,
    /// The Switchboard version it runs.
    pub version: String,
}

/// What a wake-up from the store says appeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Events queued for processing.
    Events,
    /// Jobs queued (or retried by an operator).
    Jobs,
}

/// A processor's claim on events: who holds it and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: String,
    pub now: Millis,
    pub until: Millis,
}

/// The store interface. Every method is one transaction: a batch is committed whole or not at all.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch of accepted events in one transaction, durably (the call returns after the
    /// commit reached disk). Events whose dedupe key is already stored (or repeated within the
    /// batch) are not stored again: their entry names the existing id with `duplicate: true`.
    async fn insert_events(&self, batch: &[NewEvent]) -> Result<Vec<Inserted>, StoreError>;

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

    /// The evaluation of a processed event.
    async fn get_evaluation(
        &self,
        event_id: EventId,
    ) -> Result<Option<StoredEvaluation>, StoreError>;

    /// The jobs an event's evaluation produced, in order.
    async fn list_event_jobs(&self, event_id: EventId) -> Result<Vec<StoredJob>, StoreError>;

    /// Claims up to `limit` jobs of `kind` that are due (pending or retrying, `next_attempt_at`
    /// reached) and not leased by a live worker, earliest due first.
    async fn claim_jobs(
        &self,
        lease: &Lease,
        kind: &str,
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

    /// Jobs, newest first: all, or those with `status`; `before_id` pages.
    async fn list_jobs(
        &self,
        status: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredJob>, StoreError>;

    /// One job.
    async fn get_job(&self, id: i64) -> Result<Option<StoredJob>, StoreError>;

    /// Gives a dead job another attempt now. False when the job is not dead.
    async fn retry_job(&self, id: i64, now: Millis) -> Result<bool, StoreError>;

    /// Cancels a job that has not succeeded (pending, retrying or dead). False otherwise.
    async fn cancel_job(&self, id: i64, note: &str, now: Millis) -> Result<bool, StoreError>;

    /// One callback task.
    async fn get_callback_task(&self, id: i64) -> Result<Option<CallbackTask>, StoreError>;

    /// Moves a task to `status` (`claimed`, `done` or `cancelled`) from one of `from`, recording
    /// the agent (claims) or outcome. False when the task is not in one of `from`.
    async fn update_callback_task(
        &self,
        id: i64,
        from: &[&str],
        status: &str,
        agent: Option<&str>,
        outcome: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Evaluations of the given events (those that have one), in no particular order.
    async fn list_evaluations(
        &self,
        ids: &[EventId],
    ) -> Result<Vec<(EventId, StoredEvaluation)>, StoreError>;

    /// Queues the jobs of a real replay of an event, keyed `{event}:{index}:{rule}:{run}` so
    /// that they never collide with the first run's or another replay's. Mutes apply; throttles
    /// do not (a replay is an operator's decision). Returns how many were queued.
    async fn insert_replay_jobs(
        &self,
        event_id: EventId,
        run: &str,
        jobs: &[NewJob],
        now: Millis,
    ) -> Result<u64, StoreError>;

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

//! The store's domain types: what callers hand to the [`Store`](super::Store) and what it hands
//! back (events, evaluations, jobs and their attempts, callback tasks, mutes, instances, the
//! console's counts). Times are unix milliseconds (UTC).

pub use crate::action::{JobKind, UnknownName};
use crate::event::{CallEvent, Warning};
use serde::{Deserialize, Serialize};

/// The id of a stored event, assigned by the store.
pub type EventId = i64;

/// Unix time in milliseconds.
pub type Millis = i64;

// Events and their processing.

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

/// An event left out of a listing, replay or what-if because its stored row could not be read
/// back (processing quarantines it; its trace shows the raw push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub id: EventId,
    pub reason: String,
}

/// A processor's claim on events: who holds it and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: String,
    pub now: Millis,
    pub until: Millis,
}

/// One failed processing attempt of a claimed event, and what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFailure {
    pub event_id: EventId,
    /// Failed attempts so far, this one included.
    pub failures: i64,
    /// Why it failed (no secrets: never the stored values themselves).
    pub reason: String,
    pub next: EventNext,
}

/// What happens to an event after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventNext {
    /// Claimable again from this time on.
    RetryAt(Millis),
    /// Left out of processing until an operator retries it.
    Quarantine,
}

/// A quarantined event, as the overview lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QuarantinedEvent {
    pub event_id: EventId,
    pub failures: i64,
    pub last_error: Option<String>,
    pub quarantined_at: Millis,
}

/// What a wake-up from the store says appeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Events queued for processing.
    Events,
    /// Jobs queued (or retried by an operator).
    Jobs,
}

// What processing an event produces.

/// The outcome of processing one claimed event, recorded in the transaction that finishes it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub event_id: EventId,
    /// The version of the rule set the event was evaluated against.
    pub ruleset_version: String,
    /// The evaluation record (each rule's verdict, actions, errors, timing).
    pub record: EvaluationRecord,
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
    pub kind: JobKind,
    /// The fully rendered action (JSON).
    pub spec: serde_json::Value,
}

impl NewJob {
    /// The key that makes this job exist once: event, action index and rule.
    pub fn idempotency_key(&self, event_id: EventId) -> String {
        format!("{event_id}:{}:{}", self.action_index, self.rule)
    }
}

/// The record an evaluation leaves: what `rules::Evaluation` serializes to, read back typed
/// (the store knows its shape, not the rules engine). Fields older records may lack default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRecord {
    #[serde(default)]
    pub ruleset_version: String,
    /// How many rules ran.
    #[serde(default)]
    pub evaluated: u64,
    /// The rules that matched or failed.
    #[serde(default)]
    pub verdicts: Vec<RecordedVerdict>,
    /// Rules that ran and did not match (names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_matched: Vec<String>,
    /// The windowed counters the rules hit (`{key, at_ms, window_ms, count}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counter_hits: Vec<serde_json::Value>,
    #[serde(default)]
    pub elapsed_us: u64,
}

/// One rule's verdict in an [`EvaluationRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedVerdict {
    pub rule: String,
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub matched: bool,
    /// The actions it asked for, as rendered (shown and compared, never run from here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A processed event's evaluation as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvaluation {
    pub processed_at: Millis,
    pub attempts: i64,
    pub ruleset_version: Option<String>,
    pub record: Option<EvaluationRecord>,
    /// Why the stored record could not be read back, if it could not (`record` is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

// Jobs and their attempts.

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredJob {
    pub id: i64,
    pub idempotency_key: String,
    pub event_id: EventId,
    pub rule: String,
    pub action_index: i64,
    pub kind: JobKind,
    pub spec: serde_json::Value,
    pub status: JobStatus,
    /// Why the job is in its status, e.g. the throttle that suppressed it.
    pub note: Option<String>,
    pub created_at: Millis,
    /// Attempts made so far.
    pub attempts: i64,
    /// When the job is next due (pending and retrying jobs).
    pub next_attempt_at: Millis,
    /// When it ended (done or dead).
    pub finished_at: Option<Millis>,
    /// The replay run that queued it (its key ends with it too); none for the jobs of the
    /// event's own evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_run: Option<String>,
}

/// Where a job stands. Stored and shown by its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its first attempt.
    Pending,
    /// Failed, and due again at `next_attempt_at`.
    Retrying,
    Done,
    /// Dead-lettered: retried only by an operator.
    Dead,
    /// Not run: its rule's throttle window was open.
    Suppressed,
    /// Not run: an operator's mute was in force.
    Muted,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Pending,
        JobStatus::Retrying,
        JobStatus::Done,
        JobStatus::Dead,
        JobStatus::Suppressed,
        JobStatus::Muted,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Retrying => "retrying",
            JobStatus::Done => "done",
            JobStatus::Dead => "dead",
            JobStatus::Suppressed => "suppressed",
            JobStatus::Muted => "muted",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, UnknownName> {
        UnknownName::find("job status", name, Self::ALL, Self::as_str)
    }
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

// Callback tasks.

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
    /// Queue a [`JobKind::CallbackDispatch`] job (in the same transaction) when this creates a
    /// task.
    pub dispatch: bool,
}

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
    pub status: TaskStatus,
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

/// Where a callback task stands. Stored and shown by its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for an agent; call-back requests for its phone merge into it.
    Open,
    /// An agent took it (requests still merge into it).
    Claimed,
    Done,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Open,
        TaskStatus::Claimed,
        TaskStatus::Done,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Open => "open",
            TaskStatus::Claimed => "claimed",
            TaskStatus::Done => "done",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Done or cancelled: nothing happens to it any more.
    pub fn is_closed(self) -> bool {
        matches!(self, TaskStatus::Done | TaskStatus::Cancelled)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, UnknownName> {
        UnknownName::find("task status", name, Self::ALL, Self::as_str)
    }
}

/// What an agent or operator does to a callback task: the task state machine (rules close
/// tasks too, see `Store::close_callback_tasks_many`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskTransition {
    /// Open → claimed, recording the agent.
    Claim,
    /// Open or claimed → done, recording the outcome.
    Complete,
    /// Open or claimed → cancelled, recording the outcome.
    Cancel,
}

impl TaskTransition {
    /// The statuses it moves a task from.
    pub fn from(self) -> &'static [TaskStatus] {
        match self {
            TaskTransition::Claim => &[TaskStatus::Open],
            TaskTransition::Complete | TaskTransition::Cancel => {
                &[TaskStatus::Open, TaskStatus::Claimed]
            }
        }
    }

    /// The status it moves a task to.
    pub fn to(self) -> TaskStatus {
        match self {
            TaskTransition::Claim => TaskStatus::Claimed,
            TaskTransition::Complete => TaskStatus::Done,
            TaskTransition::Cancel => TaskStatus::Cancelled,
        }
    }

    /// `from()` as text: `open or claimed`.
    pub fn from_names(self) -> String {
        let names: Vec<&str> = self.from().iter().map(|s| s.as_str()).collect();
        names.join(" or ")
    }
}

/// Filters for listing callback tasks; all given must hold.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub phone: Option<String>,
    /// Due before this time.
    pub due_before: Option<Millis>,
    pub limit: u32,
}

// The console.

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

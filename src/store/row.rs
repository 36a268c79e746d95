//! The event row as both backends read it (an event joined with its queue and evaluation
//! rows), and its conversion to [`StoredEvent`].

use super::{
    AttemptRecord, CallbackTask, Millis, NewEvent, ProcessingState, StoreError, StoredAttempt,
    StoredEvaluation, StoredEvent, StoredJob,
};

/// The select list and joins of every event query, in [`EventRow`]'s order. Callers append
/// `WHERE …` clauses on `e.` columns.
pub(super) const EVENT_SELECT: &str = "SELECT e.id, e.dedupe_key, e.received_at, e.source_addr, \
     e.content_type, e.raw_body, e.decoded, e.warnings, q.lease_owner, \
     COALESCE(v.attempts, q.attempts, 0) AS attempts, v.processed_at \
     FROM events e \
     LEFT JOIN event_queue q ON q.event_id = e.id \
     LEFT JOIN evaluations v ON v.event_id = e.id";

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    id: i64,
    dedupe_key: String,
    received_at: Millis,
    source_addr: Option<String>,
    content_type: Option<String>,
    raw_body: Vec<u8>,
    decoded: String,
    warnings: String,
    lease_owner: Option<String>,
    attempts: i64,
    processed_at: Option<Millis>,
}

/// The JSON text columns of a new event.
pub(super) struct JsonColumns {
    pub decoded: String,
    pub warnings: String,
}

impl EventRow {
    pub(super) fn columns_of(new: &NewEvent) -> Result<JsonColumns, StoreError> {
        let encode = |what, r: serde_json::Result<String>| {
            r.map_err(|e| StoreError::Corrupt {
                what,
                message: e.to_string(),
            })
        };
        Ok(JsonColumns {
            decoded: encode("decoded event", serde_json::to_string(&new.event))?,
            warnings: encode("warnings", serde_json::to_string(&new.warnings))?,
        })
    }

    pub(super) fn into_stored(self) -> Result<StoredEvent, StoreError> {
        let corrupt = |what: &'static str, e: serde_json::Error| StoreError::Corrupt {
            what,
            message: e.to_string(),
        };
        let state = match (self.processed_at, &self.lease_owner) {
            (Some(_), _) => ProcessingState::Processed,
            (None, Some(_)) => ProcessingState::Processing,
            (None, None) => ProcessingState::Pending,
        };
        Ok(StoredEvent {
            id: self.id,
            dedupe_key: self.dedupe_key,
            received_at: self.received_at,
            source_addr: self.source_addr,
            content_type: self.content_type,
            raw_body: self.raw_body,
            event: serde_json::from_str(&self.decoded).map_err(|e| corrupt("decoded event", e))?,
            warnings: serde_json::from_str(&self.warnings).map_err(|e| corrupt("warnings", e))?,
            state,
            attempts: self.attempts,
            processed_at: self.processed_at,
        })
    }
}

/// The columns of an `evaluations` row.
pub(super) const EVALUATION_SELECT: &str =
    "SELECT processed_at, attempts, ruleset_version, record FROM evaluations";

#[derive(sqlx::FromRow)]
pub(super) struct EvaluationRow {
    processed_at: Millis,
    attempts: i64,
    ruleset_version: Option<String>,
    record: Option<String>,
}

impl EvaluationRow {
    pub(super) fn into_stored(self) -> Result<StoredEvaluation, StoreError> {
        Ok(StoredEvaluation {
            processed_at: self.processed_at,
            attempts: self.attempts,
            ruleset_version: self.ruleset_version,
            record: self
                .record
                .map(|r| serde_json::from_str(&r))
                .transpose()
                .map_err(|e| StoreError::Corrupt {
                    what: "evaluation record",
                    message: e.to_string(),
                })?,
        })
    }
}

/// An evaluation with its event id.
#[derive(sqlx::FromRow)]
pub(super) struct EvaluationWithIdRow {
    pub(super) event_id: super::EventId,
    #[sqlx(flatten)]
    pub(super) evaluation: EvaluationRow,
}

/// The columns of a `jobs` row.
pub(super) const JOB_SELECT: &str = "SELECT id, idempotency_key, event_id, rule, action_index, \
     kind, spec, status, note, created_at, attempts, next_attempt_at, finished_at FROM jobs";

#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
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
}

impl JobRow {
    pub(super) fn into_stored(self) -> Result<StoredJob, StoreError> {
        Ok(StoredJob {
            id: self.id,
            idempotency_key: self.idempotency_key,
            event_id: self.event_id,
            rule: self.rule,
            action_index: self.action_index,
            kind: self.kind,
            spec: serde_json::from_str(&self.spec).map_err(|e| StoreError::Corrupt {
                what: "job spec",
                message: e.to_string(),
            })?,
            status: self.status,
            note: self.note,
            created_at: self.created_at,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            finished_at: self.finished_at,
        })
    }
}

/// The columns of a `job_attempts` row.
pub(super) const ATTEMPT_SELECT: &str = "SELECT attempt, started_at, duration_ms, outcome, code, \
     detail FROM job_attempts";

#[derive(sqlx::FromRow)]
pub(super) struct AttemptRow {
    attempt: i64,
    started_at: Millis,
    duration_ms: i64,
    outcome: String,
    code: Option<i64>,
    detail: Option<String>,
}

impl AttemptRow {
    pub(super) fn into_stored(self) -> Result<StoredAttempt, StoreError> {
        Ok(StoredAttempt {
            attempt: self.attempt,
            record: AttemptRecord {
                started_at: self.started_at,
                duration_ms: self.duration_ms,
                outcome: self.outcome,
                code: self.code,
                detail: self.detail,
            },
        })
    }
}

/// The columns of a `callback_tasks` row.
pub(super) const TASK_SELECT: &str = "SELECT id, phone, customer_name, status, priority, due_at, \
     claimed_by, outcome, created_at, updated_at, closed_at FROM callback_tasks";

#[derive(sqlx::FromRow)]
pub(super) struct TaskRow {
    id: i64,
    phone: String,
    customer_name: Option<String>,
    status: String,
    priority: i64,
    due_at: Millis,
    claimed_by: Option<String>,
    outcome: Option<String>,
    created_at: Millis,
    updated_at: Millis,
    closed_at: Option<Millis>,
}

impl TaskRow {
    /// The task without its reasons (they live in `callback_task_reasons`; see
    /// `sql::with_reasons!`).
    pub(super) fn into_stored(self) -> Result<CallbackTask, StoreError> {
        Ok(CallbackTask {
            id: self.id,
            phone: self.phone,
            customer_name: self.customer_name,
            status: self.status,
            priority: self.priority,
            due_at: self.due_at,
            reasons: serde_json::Value::Array(Vec::new()),
            claimed_by: self.claimed_by,
            outcome: self.outcome,
            created_at: self.created_at,
            updated_at: self.updated_at,
            closed_at: self.closed_at,
        })
    }
}

/// One reason of a callback task.
#[derive(sqlx::FromRow)]
pub(super) struct ReasonRow {
    pub(super) task_id: i64,
    pub(super) event_id: i64,
    pub(super) rule: String,
    pub(super) reason: String,
    pub(super) at: Millis,
}

impl ReasonRow {
    pub(super) fn into_json(self) -> serde_json::Value {
        serde_json::json!({
            "reason": self.reason, "event_id": self.event_id, "rule": self.rule, "at": self.at,
        })
    }
}

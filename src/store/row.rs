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
     COALESCE(v.attempts, q.attempts, 0) AS attempts, v.processed_at, \
     COALESCE(q.failures, 0) AS failures, q.last_error, q.quarantined_at \
     FROM events e \
     LEFT JOIN event_queue q ON q.event_id = e.id \
     LEFT JOIN evaluations v ON v.event_id = e.id";

/// An event row, read tolerantly: a column of the event itself that cannot be decoded (a wrong
/// type, invalid UTF-8) is left out and named in `problems` instead of failing the whole query,
/// so that one bad row never fails a claim or a listing. Only the id and the queue's own
/// columns must read.
pub(super) struct EventRow {
    id: i64,
    dedupe_key: Option<String>,
    received_at: Option<Millis>,
    source_addr: Option<String>,
    content_type: Option<String>,
    raw_body: Option<Vec<u8>>,
    decoded: Option<String>,
    warnings: Option<String>,
    lease_owner: Option<String>,
    attempts: i64,
    processed_at: Option<Millis>,
    failures: i64,
    last_error: Option<String>,
    quarantined_at: Option<Millis>,
    /// Columns that could not be decoded, and why.
    problems: Vec<String>,
}

impl<'r, R> sqlx::FromRow<'r, R> for EventRow
where
    R: sqlx::Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let mut problems = Vec::new();
        let dedupe_key = tolerant(row, "dedupe_key", &mut problems);
        let received_at = tolerant(row, "received_at", &mut problems);
        let source_addr = tolerant::<R, Option<String>>(row, "source_addr", &mut problems);
        let content_type = tolerant::<R, Option<String>>(row, "content_type", &mut problems);
        let raw_body = tolerant(row, "raw_body", &mut problems);
        let decoded = tolerant(row, "decoded", &mut problems);
        let warnings = tolerant(row, "warnings", &mut problems);
        Ok(EventRow {
            id: row.try_get("id")?,
            dedupe_key,
            received_at,
            source_addr: source_addr.flatten(),
            content_type: content_type.flatten(),
            raw_body,
            decoded,
            warnings,
            lease_owner: row.try_get("lease_owner")?,
            attempts: row.try_get("attempts")?,
            processed_at: row.try_get("processed_at")?,
            failures: row.try_get("failures")?,
            last_error: row.try_get("last_error")?,
            quarantined_at: row.try_get("quarantined_at")?,
            problems,
        })
    }
}

/// A column's value, or `None` with the reason added to `problems`.
fn tolerant<'r, R, T>(row: &'r R, column: &'static str, problems: &mut Vec<String>) -> Option<T>
where
    R: sqlx::Row,
    &'r str: sqlx::ColumnIndex<R>,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    match row.try_get::<T, _>(column) {
        Ok(value) => Some(value),
        Err(error) => {
            // sqlx names the column and the type mismatch or encoding error, never the value.
            problems.push(format!("column `{column}`: {error}"));
            None
        }
    }
}

/// What is wrong with stored JSON text, without quoting it: type errors would quote stored
/// values (a signed recording URL, a phone number), so only their place is given.
pub(super) fn json_problem(what: &str, error: &serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Data => format!(
            "{what}: a value does not have the expected type at line {}, column {}",
            error.line(),
            error.column()
        ),
        _ => format!("{what}: {error}"),
    }
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

    /// The stored event. A row whose own columns cannot be read back in full still loads: it
    /// comes with `unreadable` saying why (and an empty view), to be skipped, flagged or
    /// quarantined by the caller, never to fail the rest of a batch.
    pub(super) fn into_stored(self) -> Result<StoredEvent, StoreError> {
        let mut problems = self.problems;
        let event = self.decoded.and_then(|text| {
            serde_json::from_str(&text)
                .map_err(|e| problems.push(json_problem("decoded view", &e)))
                .ok()
        });
        let warnings = self.warnings.and_then(|text| {
            serde_json::from_str(&text)
                .map_err(|e| problems.push(json_problem("warnings", &e)))
                .ok()
        });
        let state = match (self.processed_at, self.quarantined_at, &self.lease_owner) {
            (Some(_), _, _) => ProcessingState::Processed,
            (None, Some(_), _) => ProcessingState::Quarantined,
            (None, None, Some(_)) => ProcessingState::Processing,
            (None, None, None) => ProcessingState::Pending,
        };
        let unreadable = (!problems.is_empty()).then(|| {
            format!(
                "the stored event could not be read back: {}",
                problems.join("; ")
            )
        });
        Ok(StoredEvent {
            id: self.id,
            dedupe_key: self.dedupe_key.unwrap_or_default(),
            received_at: self.received_at.unwrap_or_default(),
            source_addr: self.source_addr,
            content_type: self.content_type,
            raw_body: self.raw_body.unwrap_or_default(),
            event: event.unwrap_or_default(),
            warnings: warnings.unwrap_or_default(),
            state,
            attempts: self.attempts,
            processed_at: self.processed_at,
            failures: self.failures,
            last_error: self.last_error,
            quarantined_at: self.quarantined_at,
            unreadable,
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

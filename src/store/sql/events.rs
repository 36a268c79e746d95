//! Events and the processing queue as both backends read them: the event row (read
//! tolerantly, so that one bad row never fails a claim or a listing), the insert of new events,
//! and lookups and listings of stored events. Claims differ per backend and live there.

use super::{Backend, Sql, Storable};
use crate::store::{
    EventId, EventQuery, Inserted, Millis, NewEvent, ProcessingState, StoreError, StoredEvent,
};
use sqlx::{ColumnIndex, Encode, Executor, Pool, QueryBuilder, Type};
use std::collections::HashMap;
use std::sync::LazyLock;

/// The select list and joins of every event query, in [`EventRow`]'s order. Callers append
/// `WHERE …` clauses on `e.` columns.
pub(crate) const EVENT_SELECT: &str = "SELECT e.id, e.dedupe_key, e.received_at, e.source_addr, \
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
pub(crate) struct EventRow {
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
fn json_problem(what: &str, error: &serde_json::Error) -> String {
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
pub(crate) struct JsonColumns {
    pub decoded: String,
    pub warnings: String,
}

impl EventRow {
    pub(crate) fn columns_of(new: &NewEvent) -> Result<JsonColumns, StoreError> {
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
    pub(crate) fn into_stored(self) -> Result<StoredEvent, StoreError> {
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

/// One event by id.
static GET_EVENT: LazyLock<String> = LazyLock::new(|| format!("{EVENT_SELECT} WHERE e.id = $1"));

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    i64: Storable<DB>,
    String: Storable<DB>,
    Vec<u8>: Storable<DB>,
{
    /// The multi-row insert of new events; returns `(id, dedupe_key)` of the rows it inserted (a
    /// dedupe key already stored, or repeated in the batch, inserts nothing).
    pub(crate) fn insert_events_query<'a>(
        events: &'a [NewEvent],
        columns: &'a [JsonColumns],
    ) -> QueryBuilder<'a, DB> {
        let mut qb = QueryBuilder::new(
            "INSERT INTO events (dedupe_key, received_at, source_addr, content_type, raw_body, \
             decoded, warnings, call_id, customer_phone, outcome) ",
        );
        qb.push_values(events.iter().zip(columns), |mut row, (new, json)| {
            row.push_bind(&new.dedupe_key)
                .push_bind(new.received_at)
                .push_bind(new.source_addr.as_deref())
                .push_bind(new.content_type.as_deref())
                .push_bind(&new.raw_body)
                .push_bind(&json.decoded)
                .push_bind(&json.warnings)
                .push_bind(new.event.call_id.as_deref())
                .push_bind(new.event.customer_phone.as_deref())
                .push_bind(new.event.outcome.map(|o| -> &'a str { o.as_str() }));
        });
        qb.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key");
        qb
    }

    pub(crate) async fn get_event(
        pool: &Pool<DB>,
        id: EventId,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let row: Option<EventRow> = sqlx::query_as(GET_EVENT.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.map(EventRow::into_stored).transpose()
    }

    /// Events matching `query`, newest first.
    pub(crate) async fn list_events(
        pool: &Pool<DB>,
        query: &EventQuery,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut qb = QueryBuilder::new(format!("{EVENT_SELECT} WHERE 1 = 1"));
        if let Some(call_id) = &query.call_id {
            qb.push(" AND e.call_id = ").push_bind(call_id);
        }
        if let Some(phone) = &query.customer_phone {
            qb.push(" AND e.customer_phone = ").push_bind(phone);
        }
        if let Some(since) = query.since {
            qb.push(" AND e.received_at >= ").push_bind(since);
        }
        if let Some(until) = query.until {
            qb.push(" AND e.received_at < ").push_bind(until);
        }
        if let Some(before) = query.before_id {
            qb.push(" AND e.id < ").push_bind(before);
        }
        if let Some(outcome) = &query.outcome {
            qb.push(" AND e.outcome = ").push_bind(outcome);
        }
        if let Some(rule) = &query.matched_rule {
            qb.push(
                " AND EXISTS (SELECT 1 FROM rule_verdicts v WHERE v.event_id = e.id \
                 AND v.verdict = 'matched' AND v.rule = ",
            )
            .push_bind(rule)
            .push(")");
        }
        qb.push(" ORDER BY e.id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows: Vec<EventRow> = DB::build_query_as(&mut qb).fetch_all(pool).await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }
}

/// The answer for each event of a batch, from the keys the insert stored (`inserted`) and the
/// ids of keys that were stored before (`existing`). The first occurrence of a key inserted by
/// this batch is new; every other occurrence is a duplicate.
pub(crate) fn resolve_inserted(
    batch: &[NewEvent],
    mut inserted: HashMap<String, EventId>,
    mut existing: HashMap<String, EventId>,
) -> Result<Vec<Inserted>, StoreError> {
    batch
        .iter()
        .map(|new| {
            if let Some(id) = inserted.remove(&new.dedupe_key) {
                existing.insert(new.dedupe_key.clone(), id);
                return Ok(Inserted {
                    id,
                    duplicate: false,
                });
            }
            existing
                .get(&new.dedupe_key)
                .map(|&id| Inserted {
                    id,
                    duplicate: true,
                })
                .ok_or_else(|| StoreError::Corrupt {
                    what: "dedupe key",
                    message: format!("{} neither inserted nor found", new.dedupe_key),
                })
        })
        .collect()
}

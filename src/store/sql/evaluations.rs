//! Processed events: finishing a batch (each event leaves the queue and gets its evaluation,
//! rule verdicts and jobs, in one transaction), and reading evaluations back.

use super::{Backend, Sql, Storable};
use crate::store::{EventId, Finished, Millis, StoreError, StoredEvaluation};
use sqlx::{ColumnIndex, Encode, Executor, Pool, QueryBuilder, Transaction, Type};
use std::collections::HashMap;
use std::sync::LazyLock;

/// The columns of an `evaluations` row.
const EVALUATION_SELECT: &str =
    "SELECT processed_at, attempts, ruleset_version, record FROM evaluations";

/// One event's evaluation. Bind: event id.
static GET_EVALUATION: LazyLock<String> =
    LazyLock::new(|| format!("{EVALUATION_SELECT} WHERE event_id = $1"));

#[derive(sqlx::FromRow)]
struct EvaluationRow {
    processed_at: Millis,
    attempts: i64,
    ruleset_version: Option<String>,
    record: Option<String>,
}

impl EvaluationRow {
    /// The stored evaluation. A record that cannot be read back still loads: without its
    /// record, with `unreadable` saying why, to be flagged by the caller.
    fn into_stored(self) -> StoredEvaluation {
        let (record, unreadable) = match self.record.as_deref().map(serde_json::from_str) {
            None => (None, None),
            Some(Ok(record)) => (Some(record), None),
            Some(Err(e)) => (
                None,
                Some(format!("the evaluation record could not be read back: {e}")),
            ),
        };
        StoredEvaluation {
            processed_at: self.processed_at,
            attempts: self.attempts,
            ruleset_version: self.ruleset_version,
            record,
            unreadable,
        }
    }
}

/// An evaluation with its event id.
#[derive(sqlx::FromRow)]
struct EvaluationWithIdRow {
    event_id: EventId,
    #[sqlx(flatten)]
    evaluation: EvaluationRow,
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
    /// The body of `Store::finish_events`, in `tx` (the caller begins and commits it, after
    /// checking that there is anything to finish): remove the events `owner` still holds from
    /// the queue, then write their evaluations, verdicts and jobs, muted or throttled jobs
    /// recorded as such. Returns the ids of the events finished, in order.
    pub(crate) async fn finish_events(
        tx: &mut Transaction<'_, DB>,
        finished: &[Finished],
        owner: &str,
        now: Millis,
    ) -> Result<Vec<EventId>, StoreError> {
        let mut qb = QueryBuilder::new("DELETE FROM event_queue WHERE lease_owner = ");
        qb.push_bind(owner).push(" AND event_id IN (");
        let mut list = qb.separated(", ");
        for f in finished {
            list.push_bind(f.event_id);
        }
        qb.push(") RETURNING event_id, attempts");
        let held: HashMap<EventId, i64> = DB::build_query_as::<(EventId, i64)>(&mut qb)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
        let kept: Vec<&Finished> = finished
            .iter()
            .filter(|f| held.contains_key(&f.event_id))
            .collect();
        let mutes = Self::active_mutes(tx, now).await?;
        // Chunks keep every statement well inside the backends' parameter limits.
        for chunk in kept.chunks(64) {
            let records = record_texts(chunk)?;
            DB::build(&mut Self::insert_evaluations(chunk, &records, &held, now))
                .execute(&mut **tx)
                .await?;
            if let Some(mut qb) = Self::insert_verdicts(chunk, now) {
                DB::build(&mut qb).execute(&mut **tx).await?;
            }
            let mut held_back = Self::muted_jobs(tx, &mutes, chunk).await?;
            Self::apply_throttles(tx, chunk, &mut held_back).await?;
            if let Some(mut qb) = Self::insert_jobs(chunk, &held_back, now, None)? {
                DB::build(&mut qb).execute(&mut **tx).await?;
            }
        }
        let mut ids: Vec<EventId> = kept.iter().map(|f| f.event_id).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The evaluation rows of the events in `held` (event id → claim attempts).
    fn insert_evaluations<'a>(
        finished: &'a [&'a Finished],
        records: &'a [String],
        held: &'a HashMap<EventId, i64>,
        now: Millis,
    ) -> QueryBuilder<'a, DB> {
        let mut qb = QueryBuilder::new(
            "INSERT INTO evaluations (event_id, processed_at, attempts, ruleset_version, record) ",
        );
        qb.push_values(finished.iter().zip(records), |mut row, (f, record)| {
            row.push_bind(f.event_id)
                .push_bind(now)
                .push_bind(held.get(&f.event_id).copied().unwrap_or(1))
                .push_bind(&f.ruleset_version)
                .push_bind(record);
        });
        qb
    }

    /// The rules that matched or failed on each finished event (from its evaluation record), for
    /// search and counts; `None` when there are none.
    fn insert_verdicts<'a>(
        finished: &'a [&'a Finished],
        now: Millis,
    ) -> Option<QueryBuilder<'a, DB>> {
        let verdicts: Vec<(EventId, &str, &'static str)> = finished
            .iter()
            .flat_map(|f| {
                f.record.verdicts.iter().filter_map(|v| {
                    let verdict = match (&v.error, v.matched) {
                        (Some(_), _) => "error",
                        (None, true) => "matched",
                        (None, false) => return None,
                    };
                    Some((f.event_id, v.rule.as_str(), verdict))
                })
            })
            .collect();
        if verdicts.is_empty() {
            return None;
        }
        let mut qb = QueryBuilder::new("INSERT INTO rule_verdicts (event_id, rule, verdict, at) ");
        qb.push_values(verdicts, |mut row, (event_id, rule, verdict)| {
            row.push_bind(event_id)
                .push_bind(rule)
                .push_bind(verdict)
                .push_bind(now);
        });
        qb.push(" ON CONFLICT (event_id, rule) DO NOTHING");
        Some(qb)
    }

    pub(crate) async fn get_evaluation(
        pool: &Pool<DB>,
        event_id: EventId,
    ) -> Result<Option<StoredEvaluation>, StoreError> {
        let row: Option<EvaluationRow> = sqlx::query_as(GET_EVALUATION.as_str())
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
        Ok(row.map(EvaluationRow::into_stored))
    }

    /// Evaluations of the given events (those that have one), 500 ids per statement.
    pub(crate) async fn list_evaluations(
        pool: &Pool<DB>,
        ids: &[EventId],
    ) -> Result<Vec<(EventId, StoredEvaluation)>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut qb = QueryBuilder::new(
                "SELECT event_id, processed_at, attempts, ruleset_version, record \
                 FROM evaluations WHERE event_id IN (",
            );
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            qb.push(")");
            let rows: Vec<EvaluationWithIdRow> =
                DB::build_query_as(&mut qb).fetch_all(pool).await?;
            for row in rows {
                found.push((row.event_id, row.evaluation.into_stored()));
            }
        }
        Ok(found)
    }
}

/// The JSON text of each finished event's evaluation record.
fn record_texts(finished: &[&Finished]) -> Result<Vec<String>, StoreError> {
    finished
        .iter()
        .map(|f| {
            serde_json::to_string(&f.record).map_err(|e| StoreError::Corrupt {
                what: "evaluation record",
                message: e.to_string(),
            })
        })
        .collect()
}

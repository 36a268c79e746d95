//! Operators' mutes: adding, listing and lifting them, and the jobs they hold back when a batch
//! is finished or a replay queued.

use super::{Backend, RowsAffected, Sql, Storable};
use crate::store::{EventId, Finished, JobStatus, Millis, Mute, StoreError};
use sqlx::{ColumnIndex, Encode, Executor, Pool, QueryBuilder, Transaction, Type};
use std::collections::HashMap;
use std::sync::LazyLock;

const MUTE_COLUMNS: &str = "id, scope, value, until, reason, created_at, lifted_at";

/// Binds: scope, value, until, reason, now.
static ADD_MUTE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO mutes (scope, value, until, reason, created_at) VALUES ($1, $2, $3, $4, $5) \
         RETURNING {MUTE_COLUMNS}"
    )
});

/// Binds: 1 for mutes in force only (else 0), now.
static LIST_MUTES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {MUTE_COLUMNS} FROM mutes WHERE ($1 = 0 OR (until > $2 AND lifted_at IS NULL)) \
         ORDER BY id DESC LIMIT 500"
    )
});

/// Binds: now, id.
const LIFT_MUTE: &str =
    "UPDATE mutes SET lifted_at = $1 WHERE id = $2 AND lifted_at IS NULL AND until > $1";

/// Mutes in force. Bind: now.
const ACTIVE_MUTES: &str = "SELECT scope, value, until, reason FROM mutes \
     WHERE until > $1 AND lifted_at IS NULL";

/// A mute in force: scope, value, until, reason.
pub(crate) type ActiveMute = (String, String, Millis, String);

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB> + ColumnIndex<DB::Row>,
    i64: Storable<DB>,
    String: Storable<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(crate) async fn add_mute(
        writer: &Pool<DB>,
        scope: &str,
        value: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<Mute, StoreError> {
        Ok(sqlx::query_as(ADD_MUTE.as_str())
            .bind(scope)
            .bind(value)
            .bind(until)
            .bind(reason)
            .bind(now)
            .fetch_one(writer)
            .await?)
    }

    pub(crate) async fn list_mutes(
        pool: &Pool<DB>,
        active_only: bool,
        now: Millis,
    ) -> Result<Vec<Mute>, StoreError> {
        Ok(sqlx::query_as(LIST_MUTES.as_str())
            .bind(i64::from(active_only))
            .bind(now)
            .fetch_all(pool)
            .await?)
    }

    pub(crate) async fn lift_mute(
        writer: &Pool<DB>,
        id: i64,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(LIFT_MUTE)
            .bind(now)
            .bind(id)
            .execute(writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The mutes in force at `now`, read in `tx`.
    pub(crate) async fn active_mutes(
        tx: &mut Transaction<'_, DB>,
        now: Millis,
    ) -> Result<Vec<ActiveMute>, StoreError> {
        Ok(sqlx::query_as(ACTIVE_MUTES)
            .bind(now)
            .fetch_all(&mut **tx)
            .await?)
    }

    /// The jobs of `chunk` (finished events) that `mutes` hold back: (event, rule) → (`muted`,
    /// the mute's note). Reads the events' phones in `tx` when any mute is in force.
    pub(crate) async fn muted_jobs(
        tx: &mut Transaction<'_, DB>,
        mutes: &[ActiveMute],
        chunk: &[&Finished],
    ) -> Result<HashMap<(EventId, String), (JobStatus, String)>, StoreError> {
        let mut held_back = HashMap::new();
        if mutes.is_empty() {
            return Ok(held_back);
        }
        let mut qb = QueryBuilder::new("SELECT id, customer_phone FROM events WHERE id IN (");
        let mut list = qb.separated(", ");
        for f in chunk {
            list.push_bind(f.event_id);
        }
        qb.push(")");
        let phones: HashMap<EventId, Option<String>> = DB::build_query_as(&mut qb)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
        for f in chunk {
            let phone = phones.get(&f.event_id).cloned().flatten();
            for job in &f.jobs {
                if let Some(note) = mute_note(mutes, &job.rule, phone.as_deref()) {
                    held_back.insert((f.event_id, job.rule.clone()), (JobStatus::Muted, note));
                }
            }
        }
        Ok(held_back)
    }
}

/// Why a rule's jobs for an event are muted, if they are: the rule's mute first, then the
/// phone's.
fn mute_note(mutes: &[ActiveMute], rule: &str, phone: Option<&str>) -> Option<String> {
    let hit = |scope: &str, value: Option<&str>| {
        mutes
            .iter()
            .find(|(s, v, _, _)| s == scope && Some(v.as_str()) == value)
    };
    hit("rule", Some(rule))
        .or_else(|| hit("phone", phone))
        .map(|(scope, value, until, reason)| {
            format!("muted: {scope} `{value}` until {until} (unix ms): {reason}")
        })
}

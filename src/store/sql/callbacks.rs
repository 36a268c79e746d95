//! Callback tasks: one open task per phone that call-back requests merge into (each with its
//! reasons), the job that dispatches a new one, and an agent's or operator's updates.

use super::{Backend, RowsAffected, Sql, Storable};
use crate::store::{
    CallbackRequest, CallbackTask, JobKind, Millis, StoreError, TaskQuery, TaskTransition,
    UpsertedTask,
};
use sqlx::{ColumnIndex, Encode, Executor, Pool, QueryBuilder, Type};
use std::collections::HashMap;
use std::sync::LazyLock;

/// The columns of a `callback_tasks` row.
const TASK_SELECT: &str = "SELECT id, phone, customer_name, status, priority, due_at, \
     claimed_by, outcome, created_at, updated_at, closed_at FROM callback_tasks";

/// One callback task. Bind: id.
static GET_TASK: LazyLock<String> = LazyLock::new(|| format!("{TASK_SELECT} WHERE id = $1"));

/// Callback tasks, most urgent first. Binds: status, phone, due before (each NULL for any), limit.
static LIST_TASKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{TASK_SELECT} WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR phone = $2) \
         AND ($3 IS NULL OR due_at < $3) ORDER BY priority DESC, due_at, id LIMIT $4"
    )
});

/// Closes a phone's open and claimed tasks. Binds: outcome, now, phone.
const CLOSE_CALLBACK_TASKS: &str = "UPDATE callback_tasks SET status = 'done', \
     outcome = $1, closed_at = $2, updated_at = $2 WHERE phone = $3 AND status IN ('open', 'claimed')";

#[derive(sqlx::FromRow)]
struct TaskRow {
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
    /// `Sql::with_reasons`).
    fn into_stored(self) -> Result<CallbackTask, StoreError> {
        Ok(CallbackTask {
            id: self.id,
            phone: self.phone,
            customer_name: self.customer_name,
            status: self.status.parse().map_err(|e| StoreError::Corrupt {
                what: "callback task",
                message: format!("{e}"),
            })?,
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
struct ReasonRow {
    task_id: i64,
    event_id: i64,
    rule: String,
    reason: String,
    at: Millis,
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
    /// `Store::upsert_callback_tasks`, all in one transaction: for each request, merge into the
    /// phone's open task, or insert one. A concurrent insert for the same phone by another
    /// instance makes the insert do nothing; the second round then finds and merges into it
    /// (locking it where the backend can, [`Backend::ROW_LOCK`]). A merge adds one row to
    /// `callback_task_reasons` (once per event and rule), whatever the number of reasons before.
    pub(crate) async fn upsert_callback_tasks(
        writer: &Pool<DB>,
        requests: &[CallbackRequest],
        now: Millis,
    ) -> Result<Vec<UpsertedTask>, StoreError> {
        let select = format!(
            "{TASK_SELECT} WHERE phone = $1 AND status IN ('open', 'claimed'){}",
            DB::ROW_LOCK
        );
        // Phones in one order, so that two instances locking several never wait on each other
        // in a cycle.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|a, b| requests[*a].phone.cmp(&requests[*b].phone));
        let mut results = vec![None; requests.len()];
        let mut tx = writer.begin().await?;
        for index in order {
            let request = &requests[index];
            let mut task = None;
            for _ in 0..2 {
                let open: Option<TaskRow> = sqlx::query_as(&select)
                    .bind(&request.phone)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = open {
                    let current = row.into_stored()?;
                    sqlx::query(
                        "UPDATE callback_tasks SET priority = $1, due_at = $2, \
                         customer_name = COALESCE(customer_name, $3), updated_at = $4 WHERE id = $5",
                    )
                    .bind(current.priority.max(request.priority))
                    .bind(current.due_at.min(request.due_at))
                    .bind(request.customer_name.as_deref())
                    .bind(now)
                    .bind(current.id)
                    .execute(&mut *tx)
                    .await?;
                    task = Some(UpsertedTask {
                        id: current.id,
                        created: false,
                    });
                    break;
                }
                let inserted: Option<(i64,)> = sqlx::query_as(
                    "INSERT INTO callback_tasks (phone, customer_name, status, priority, due_at, \
                     created_at, updated_at) VALUES ($1, $2, 'open', $3, $4, $5, $5) \
                     ON CONFLICT DO NOTHING RETURNING id",
                )
                .bind(&request.phone)
                .bind(request.customer_name.as_deref())
                .bind(request.priority)
                .bind(request.due_at)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((id,)) = inserted {
                    if request.dispatch {
                        // The new task goes out (Udesk web callback or a webhook) through the
                        // job queue; queued in this transaction, so a task is never created
                        // without it.
                        sqlx::query(
                            "INSERT INTO jobs (idempotency_key, event_id, rule, action_index, \
                             kind, spec, status, created_at) \
                             VALUES ($1, $2, $3, 0, $4, $5, 'pending', $6) \
                             ON CONFLICT (idempotency_key) DO NOTHING",
                        )
                        .bind(format!("callback-task:{id}:dispatch"))
                        .bind(request.event_id)
                        .bind(&request.rule)
                        .bind(JobKind::CallbackDispatch.as_str())
                        .bind(serde_json::json!({ "task_id": id }).to_string())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    task = Some(UpsertedTask { id, created: true });
                    break;
                }
            }
            let Some(task) = task else {
                return Err(StoreError::Corrupt {
                    what: "callback task",
                    message: format!("the open task for {} kept changing", request.phone),
                });
            };
            // Once per event and rule: a retried job adds nothing.
            sqlx::query(
                "INSERT INTO callback_task_reasons (task_id, event_id, rule, reason, at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(task.id)
            .bind(request.event_id)
            .bind(&request.rule)
            .bind(&request.reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            results[index] = Some(task);
        }
        tx.commit().await?;
        Ok(results.into_iter().flatten().collect())
    }

    /// `Store::close_callback_tasks_many`: phones in one order (see above), one transaction.
    pub(crate) async fn close_callback_tasks_many(
        writer: &Pool<DB>,
        closes: &[(String, String)],
        now: Millis,
    ) -> Result<Vec<u64>, StoreError> {
        let mut order: Vec<usize> = (0..closes.len()).collect();
        order.sort_by(|a, b| closes[*a].0.cmp(&closes[*b].0));
        let mut closed = vec![0; closes.len()];
        let mut tx = writer.begin().await?;
        for index in order {
            let (phone, outcome) = &closes[index];
            let done = sqlx::query(CLOSE_CALLBACK_TASKS)
                .bind(outcome)
                .bind(now)
                .bind(phone)
                .execute(&mut *tx)
                .await?;
            closed[index] = done.rows_affected();
        }
        tx.commit().await?;
        Ok(closed)
    }

    pub(crate) async fn list_callback_tasks(
        pool: &Pool<DB>,
        query: &TaskQuery,
    ) -> Result<Vec<CallbackTask>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(LIST_TASKS.as_str())
            .bind(query.status.map(|s| s.as_str()))
            .bind(query.phone.as_deref())
            .bind(query.due_before)
            .bind(i64::from(query.limit))
            .fetch_all(pool)
            .await?;
        let tasks = rows
            .into_iter()
            .map(TaskRow::into_stored)
            .collect::<Result<_, _>>()?;
        Self::with_reasons(pool, tasks).await
    }

    pub(crate) async fn get_callback_task(
        pool: &Pool<DB>,
        id: i64,
    ) -> Result<Option<CallbackTask>, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(GET_TASK.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await?;
        let task = row.map(TaskRow::into_stored).transpose()?;
        let tasks = Self::with_reasons(pool, task.into_iter().collect()).await?;
        Ok(tasks.into_iter().next())
    }

    /// `tasks` with their reasons from `callback_task_reasons`, oldest first.
    async fn with_reasons(
        pool: &Pool<DB>,
        mut tasks: Vec<CallbackTask>,
    ) -> Result<Vec<CallbackTask>, StoreError> {
        if tasks.is_empty() {
            return Ok(tasks);
        }
        let mut qb = QueryBuilder::new(
            "SELECT task_id, event_id, rule, reason, at FROM callback_task_reasons \
             WHERE task_id IN (",
        );
        let mut list = qb.separated(", ");
        for task in &tasks {
            list.push_bind(task.id);
        }
        qb.push(") ORDER BY task_id, at, event_id, rule");
        let rows: Vec<ReasonRow> = DB::build_query_as(&mut qb).fetch_all(pool).await?;
        let mut by_task: HashMap<i64, Vec<serde_json::Value>> = HashMap::new();
        for row in rows {
            by_task
                .entry(row.task_id)
                .or_default()
                .push(serde_json::json!({
                    "reason": row.reason, "event_id": row.event_id, "rule": row.rule, "at": row.at,
                }));
        }
        for task in &mut tasks {
            task.reasons = serde_json::Value::Array(by_task.remove(&task.id).unwrap_or_default());
        }
        Ok(tasks)
    }

    /// `Store::update_callback_task`.
    pub(crate) async fn update_callback_task(
        writer: &Pool<DB>,
        id: i64,
        transition: TaskTransition,
        agent: Option<&str>,
        outcome: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let to = transition.to();
        let mut qb = QueryBuilder::new("UPDATE callback_tasks SET status = ");
        qb.push_bind(to.as_str())
            .push(", updated_at = ")
            .push_bind(now)
            .push(", claimed_by = COALESCE(")
            .push_bind(agent)
            .push(", claimed_by), outcome = COALESCE(")
            .push_bind(outcome)
            .push(", outcome), closed_at = ")
            .push_bind(to.is_closed().then_some(now))
            .push(" WHERE id = ")
            .push_bind(id)
            .push(" AND status IN (");
        let mut list = qb.separated(", ");
        for state in transition.from() {
            list.push_bind(state.as_str());
        }
        qb.push(")");
        let done = DB::build(&mut qb).execute(writer).await?;
        Ok(done.rows_affected() == 1)
    }
}

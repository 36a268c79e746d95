//! The `Store` methods both backends share word for word: `impl_store!` writes a backend's whole
//! `impl Store` from its specific methods (passed in) and these, run on its writer and reader
//! pools (one pool for both on PostgreSQL). The SQL itself lives in [`super::sql`].

/// `impl_store! { Type, SqlxDatabase, writer = field, reader = field, row_lock = "…"; methods }`
/// with the backend's own methods after the `;`. `row_lock` is appended to a `SELECT` that must
/// lock the rows it reads, where the backend can.
macro_rules! impl_store {
    ($store:ident, $db:ty, writer = $w:ident, reader = $r:ident, row_lock = $lock:expr; $($specific:tt)*) => {
        #[async_trait::async_trait]
        impl Store for $store {
            $($specific)*

            async fn get_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
                sql::fetch_one_row!(&self.$r, EventRow, sql::GET_EVENT.as_str(), id)
            }

            async fn fail_events(
                &self,
                failures: &[super::EventFailure],
                owner: &str,
                now: Millis,
            ) -> Result<Vec<bool>, StoreError> {
                let mut recorded = Vec::with_capacity(failures.len());
                let mut tx = self.$w.begin().await?;
                for failure in failures {
                    let (retry_at, quarantined_at) = match failure.next {
                        super::EventNext::RetryAt(at) => (at, None),
                        super::EventNext::Quarantine => (0, Some(now)),
                    };
                    let done = sqlx::query(super::quarantine::FAIL_EVENT)
                        .bind(failure.failures)
                        .bind(super::quarantine::stored_reason(&failure.reason))
                        .bind(retry_at)
                        .bind(quarantined_at)
                        .bind(failure.event_id)
                        .bind(owner)
                        .execute(&mut *tx)
                        .await?;
                    recorded.push(done.rows_affected() == 1);
                }
                tx.commit().await?;
                Ok(recorded)
            }

            async fn retry_event(&self, id: EventId) -> Result<bool, StoreError> {
                let done = sqlx::query(super::quarantine::RETRY_EVENT)
                    .bind(id)
                    .execute(&self.$w)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_quarantined(
                &self,
                limit: u32,
            ) -> Result<Vec<super::QuarantinedEvent>, StoreError> {
                Ok(sqlx::query_as(super::quarantine::LIST_QUARANTINED)
                    .bind(i64::from(limit))
                    .fetch_all(&self.$r)
                    .await?)
            }

            async fn get_evaluation(
                &self,
                event_id: EventId,
            ) -> Result<Option<StoredEvaluation>, StoreError> {
                sql::fetch_one_row!(
                    &self.$r,
                    EvaluationRow,
                    sql::GET_EVALUATION.as_str(),
                    event_id
                )
            }

            async fn list_event_jobs(&self, event_id: EventId) -> Result<Vec<StoredJob>, StoreError> {
                sql::fetch_rows!(
                    &self.$r,
                    JobRow,
                    sql::LIST_EVENT_JOBS.as_str(),
                    event_id
                )
            }

            async fn record_attempts(
                &self,
                owner: &str,
                batch: &[FinishedAttempt],
            ) -> Result<Vec<bool>, StoreError> {
                sql::record_attempts!(self.$w, owner, batch)
            }

            async fn list_job_attempts(&self, job_id: i64) -> Result<Vec<StoredAttempt>, StoreError> {
                sql::fetch_rows!(
                    &self.$r,
                    AttemptRow,
                    sql::LIST_JOB_ATTEMPTS.as_str(),
                    job_id
                )
            }

            async fn upsert_callback_tasks(
                &self,
                requests: &[CallbackRequest],
                now: Millis,
            ) -> Result<Vec<super::UpsertedTask>, StoreError> {
                sql::upsert_callback_tasks!(self.$w, $lock, requests, now)
            }

            async fn close_callback_tasks_many(
                &self,
                closes: &[(String, String)],
                now: Millis,
            ) -> Result<Vec<u64>, StoreError> {
                let mut order: Vec<usize> = (0..closes.len()).collect();
                order.sort_by(|a, b| closes[*a].0.cmp(&closes[*b].0));
                let mut closed = vec![0; closes.len()];
                let mut tx = self.$w.begin().await?;
                for index in order {
                    let (phone, outcome) = &closes[index];
                    let done = sqlx::query(sql::CLOSE_CALLBACK_TASKS)
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

            async fn list_callback_tasks(
                &self,
                query: &TaskQuery,
            ) -> Result<Vec<CallbackTask>, StoreError> {
                let rows: Vec<TaskRow> = sqlx::query_as(sql::LIST_TASKS.as_str())
                    .bind(&query.status)
                    .bind(&query.phone)
                    .bind(query.due_before)
                    .bind(i64::from(query.limit))
                    .fetch_all(&self.$r)
                    .await?;
                let tasks = rows
                    .into_iter()
                    .map(TaskRow::into_stored)
                    .collect::<Result<Vec<_>, _>>()?;
                sql::with_reasons!($db, &self.$r, tasks)
            }

            async fn list_jobs(
                &self,
                status: Option<&str>,
                before_id: Option<i64>,
                limit: u32,
            ) -> Result<Vec<StoredJob>, StoreError> {
                let rows: Vec<JobRow> = sqlx::query_as(sql::LIST_JOBS.as_str())
                    .bind(status)
                    .bind(before_id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.$r)
                    .await?;
                rows.into_iter().map(JobRow::into_stored).collect()
            }

            async fn get_job(&self, id: i64) -> Result<Option<StoredJob>, StoreError> {
                sql::fetch_one_row!(&self.$r, JobRow, sql::GET_JOB.as_str(), id)
            }

            async fn retry_job(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
                let done = sqlx::query(sql::RETRY_JOB)
                    .bind(now)
                    .bind(id)
                    .execute(&self.$w)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn cancel_job(&self, id: i64, note: &str, now: Millis) -> Result<bool, StoreError> {
                let done = sqlx::query(sql::CANCEL_JOB)
                    .bind(note)
                    .bind(now)
                    .bind(id)
                    .execute(&self.$w)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_callback_task(&self, id: i64) -> Result<Option<CallbackTask>, StoreError> {
                let task: Option<CallbackTask> =
                    sql::fetch_one_row!(&self.$r, TaskRow, sql::GET_TASK.as_str(), id)?;
                let tasks = sql::with_reasons!($db, &self.$r, task.into_iter().collect())?;
                Ok(tasks.into_iter().next())
            }

            async fn update_callback_task(
                &self,
                id: i64,
                from: &[&str],
                status: &str,
                agent: Option<&str>,
                outcome: Option<&str>,
                now: Millis,
            ) -> Result<bool, StoreError> {
                let pool = &self.$w;
                sql::update_callback_task!(*pool, id, from, status, agent, outcome, now)
            }

            async fn list_evaluations(
                &self,
                ids: &[EventId],
            ) -> Result<Vec<(EventId, StoredEvaluation)>, StoreError> {
                sql::list_evaluations!($db, &self.$r, ids)
            }

            async fn insert_replay_jobs(
                &self,
                event_id: EventId,
                run: &str,
                jobs: &[NewJob],
                now: Millis,
            ) -> Result<u64, StoreError> {
                sql::insert_replay_jobs!($db, self.$w, event_id, run, jobs, now)
            }

            async fn overview(&self, since: Millis, now: Millis) -> Result<Overview, StoreError> {
                sql::overview!(&self.$r, since, now)
            }

            async fn add_mute(
                &self,
                scope: &str,
                value: &str,
                until: Millis,
                reason: &str,
                now: Millis,
            ) -> Result<Mute, StoreError> {
                Ok(sqlx::query_as(sql::ADD_MUTE.as_str())
                    .bind(scope)
                    .bind(value)
                    .bind(until)
                    .bind(reason)
                    .bind(now)
                    .fetch_one(&self.$w)
                    .await?)
            }

            async fn list_mutes(&self, active_only: bool, now: Millis) -> Result<Vec<Mute>, StoreError> {
                Ok(sqlx::query_as(sql::LIST_MUTES.as_str())
                    .bind(i64::from(active_only))
                    .bind(now)
                    .fetch_all(&self.$r)
                    .await?)
            }

            async fn lift_mute(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
                let done = sqlx::query(sql::LIFT_MUTE)
                    .bind(now)
                    .bind(id)
                    .execute(&self.$w)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn heartbeat(&self, instance: &InstanceInfo) -> Result<(), StoreError> {
                sqlx::query(sql::HEARTBEAT)
                    .bind(&instance.id)
                    .bind(instance.started_at)
                    .bind(instance.seen_at)
                    .bind(&instance.ruleset_version)
                    .bind(&instance.rules_dir)
                    .bind(&instance.listen)
                    .bind(&instance.version)
                    .execute(&self.$w)
                    .await?;
                Ok(())
            }

            async fn list_instances(&self, since: Millis) -> Result<Vec<InstanceInfo>, StoreError> {
                Ok(sqlx::query_as(sql::LIST_INSTANCES)
                    .bind(since)
                    .fetch_all(&self.$r)
                    .await?)
            }

            async fn prune(
                &self,
                counters_before: Millis,
                now: Millis,
                limit: u32,
            ) -> Result<u64, StoreError> {
                let limit = i64::from(limit);
                let mut pruned = 0;
                // One bounded delete per statement, so the writer is never held for long.
                for (sql, before) in [
                    (sql::PRUNE_COUNTER_HITS, counters_before),
                    (sql::PRUNE_COUNTER_BUCKETS, sql::bucket_of(counters_before)),
                    (sql::PRUNE_THROTTLES, now),
                    (sql::PRUNE_INSTANCES, now.saturating_sub(7 * 24 * 3600 * 1000)),
                ] {
                    let done = sqlx::query(sql)
                        .bind(before)
                        .bind(limit)
                        .execute(&self.$w)
                        .await?;
                    pruned += done.rows_affected();
                }
                Ok(pruned)
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.$r).await?;
                Ok(())
            }
        }
    };
}
pub(super) use impl_store;

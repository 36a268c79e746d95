//! Runs `callback_task` and `close_callback_tasks` jobs, which only write to the store: a batch's
//! tasks are recorded (merged per phone) or closed in one transaction.

use crate::action::ActionRequest;
use crate::delivery::retry::AttemptResult;
use crate::delivery::worker::Deliver;
use crate::store::{CallbackRequest, JobKind, Store, StoreError, StoredJob};
use crate::time::now_millis;
use std::sync::Arc;
use tokio::sync::Notify;

/// Records `callback_task` jobs as callback tasks (merged per phone), and runs
/// `close_callback_tasks` jobs.
pub(crate) struct CallbackDeliverer {
    pub(crate) store: Arc<dyn Store>,
    /// `callback_task` or `close_callback_tasks`.
    pub(crate) kind: JobKind,
    /// Set when new tasks are dispatched: woken when one is created.
    pub(crate) dispatch: Option<Arc<Notify>>,
}

#[async_trait::async_trait]
impl Deliver for CallbackDeliverer {
    fn kind(&self) -> JobKind {
        self.kind
    }

    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>) {
        self.attempt_all(std::slice::from_ref(job))
            .await
            .pop()
            .unwrap_or((
                AttemptResult::Transient {
                    reason: "no result".into(),
                    retry_after: None,
                },
                None,
            ))
    }

    fn batched(&self) -> bool {
        true
    }

    /// The batch's tasks recorded (or closed) in one transaction.
    async fn attempt_all(&self, jobs: &[StoredJob]) -> Vec<(AttemptResult, Option<i64>)> {
        let now = now_millis();
        // Each job's request, or why it has none (a permanent failure of that job alone).
        let mut requests = Vec::new();
        let mut closes = Vec::new();
        let mut results: Vec<Option<AttemptResult>> = Vec::with_capacity(jobs.len());
        for job in jobs {
            match serde_json::from_value(job.spec.clone()) {
                Ok(ActionRequest::CallbackTask {
                    phone,
                    name,
                    reason,
                    due_in_secs,
                    priority,
                }) if self.kind == JobKind::CallbackTask => {
                    let due_in =
                        i64::try_from(due_in_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                    requests.push(CallbackRequest {
                        phone,
                        customer_name: name,
                        reason,
                        event_id: job.event_id,
                        rule: job.rule.clone(),
                        priority,
                        due_at: job.created_at.saturating_add(due_in),
                        dispatch: self.dispatch.is_some(),
                    });
                    results.push(None);
                }
                Ok(ActionRequest::CloseCallbackTasks { phone, note })
                    if self.kind == JobKind::CloseCallbackTasks =>
                {
                    let outcome = note.unwrap_or_else(|| format!("closed by rule {}", job.rule));
                    closes.push((phone, outcome));
                    results.push(None);
                }
                _ => results.push(Some(AttemptResult::Permanent {
                    reason: format!("job {} is not a {} action", job.id, self.kind),
                })),
            }
        }
        let transient = |error: StoreError| AttemptResult::Transient {
            reason: error.to_string(),
            retry_after: None,
        };
        // Together first; if that fails, each on its own, so that one request the store refuses
        // does not hold up the others.
        let together = self.store_all(&requests, &closes, now).await;
        let mut outcomes: Vec<AttemptResult> = match together {
            Ok(()) => vec![AttemptResult::Success; requests.len() + closes.len()],
            Err(error) if requests.len() + closes.len() <= 1 => vec![transient(error)],
            Err(_) => {
                let mut each = Vec::new();
                for request in &requests {
                    let stored = self
                        .store_all(std::slice::from_ref(request), &[], now)
                        .await;
                    each.push(stored.map_or_else(transient, |()| AttemptResult::Success));
                }
                for close in &closes {
                    let stored = self.store_all(&[], std::slice::from_ref(close), now).await;
                    each.push(stored.map_or_else(transient, |()| AttemptResult::Success));
                }
                each
            }
        };
        outcomes.reverse();
        results
            .into_iter()
            .map(|result| {
                let result = result
                    .or_else(|| outcomes.pop())
                    .unwrap_or(AttemptResult::Success);
                (result, None)
            })
            .collect()
    }
}

impl CallbackDeliverer {
    /// Records the requests (or closes) in one transaction; wakes the dispatcher for new tasks.
    async fn store_all(
        &self,
        requests: &[CallbackRequest],
        closes: &[(String, String)],
        now: i64,
    ) -> Result<(), StoreError> {
        if !requests.is_empty() {
            let tasks = self.store.upsert_callback_tasks(requests, now).await?;
            if let Some(wake) = &self.dispatch
                && tasks.iter().any(|t| t.created)
            {
                wake.notify_one();
            }
        }
        if !closes.is_empty() {
            self.store.close_callback_tasks_many(closes, now).await?;
        }
        Ok(())
    }
}

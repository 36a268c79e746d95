//! Dispatches new callback tasks (`callback_dispatch` jobs) where `[callback_dispatch]` says.

use super::WebhookSettings;
use crate::delivery::retry::AttemptResult;
use crate::delivery::udesk;
use crate::delivery::udesk::CallbackDispatch;
use crate::delivery::webhook::{self, Clients};
use crate::delivery::worker::Deliver;
use crate::store::{JobKind, Store, StoredJob};
use crate::time::now_millis;
use std::sync::Arc;

/// Sends each new callback task where `[callback_dispatch]` says: Udesk's web callback API, or a
/// webhook target (signed like any webhook, `webhook-id` from the job's key).
pub(crate) struct DispatchDeliverer {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) dispatch: CallbackDispatch,
    pub(crate) webhooks: WebhookSettings,
    pub(crate) clients: Clients,
}

#[async_trait::async_trait]
impl Deliver for DispatchDeliverer {
    fn kind(&self) -> JobKind {
        JobKind::CallbackDispatch
    }

    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>) {
        let permanent = |reason: String| (AttemptResult::Permanent { reason }, None);
        let Some(task_id) = job.spec["task_id"].as_i64() else {
            return permanent(format!("job {} names no callback task", job.id));
        };
        let task = match self.store.get_callback_task(task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => return permanent(format!("callback task {task_id} does not exist")),
            Err(error) => {
                let reason = format!("reading callback task {task_id} failed: {error}");
                let result = AttemptResult::Transient {
                    reason,
                    retry_after: None,
                };
                return (result, None);
            }
        };
        if task.status.is_closed() {
            let reason = format!(
                "task {task_id} was {} before it was dispatched",
                task.status
            );
            return (AttemptResult::Skipped { reason }, None);
        }
        let now = now_millis();
        match &self.dispatch {
            CallbackDispatch::Udesk(api) => {
                let seed = format!("{}:{}", job.idempotency_key, job.attempts + 1);
                let request = udesk::prepare_web_callback(api, &task, &seed, now / 1000);
                let sent = webhook::send(&self.clients, &request).await;
                (udesk::classify_answer(sent.result, &sent.body), sent.code)
            }
            CallbackDispatch::Webhook(target) => {
                let (ctx, key) = (self.webhooks.context(), &job.idempotency_key);
                let body = udesk::task_webhook_body(&task);
                match webhook::prepare(&ctx, Some(target), None, &body, key, now / 1000) {
                    Ok(request) => {
                        let sent = webhook::send(&self.clients, &request).await;
                        (sent.result, sent.code)
                    }
                    Err(error) => permanent(error.to_string()),
                }
            }
        }
    }
}

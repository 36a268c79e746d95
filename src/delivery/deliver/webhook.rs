//! Delivers `webhook` jobs: the request prepared from the job (its body, by default the event
//! and the rule that fired) and sent.

use crate::action::{ActionRequest, JobKind};
use crate::delivery::address::AllowedUrl;
use crate::delivery::retry::AttemptResult;
use crate::delivery::webhook::WebhookTarget;
use crate::delivery::webhook::{self, Clients, WebhookContext};
use crate::delivery::worker::Deliver;
use crate::store::{Store, StoredJob};
use crate::time::now_millis;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the webhook deliverer needs from the configuration.
#[derive(Clone)]
pub(crate) struct WebhookSettings {
    pub(crate) targets: Arc<BTreeMap<String, WebhookTarget>>,
    pub(crate) allowlist: Arc<Vec<AllowedUrl>>,
    pub(crate) allow_private: bool,
}

impl WebhookSettings {
    /// The settings as [`webhook::prepare`] takes them.
    pub(crate) fn context(&self) -> WebhookContext<'_> {
        WebhookContext {
            targets: &self.targets,
            allowlist: &self.allowlist,
            allow_private: self.allow_private,
        }
    }
}

/// Delivers `webhook` jobs.
pub(crate) struct WebhookDeliverer {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) settings: WebhookSettings,
    pub(crate) clients: Clients,
}

#[async_trait::async_trait]
impl Deliver for WebhookDeliverer {
    fn kind(&self) -> JobKind {
        JobKind::Webhook
    }

    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>) {
        match build_request(&self.store, &self.settings, job, now_millis()).await {
            Ok(request) => {
                let sent = webhook::send(&self.clients, &request).await;
                (sent.result, sent.code)
            }
            Err(result) => (result, None),
        }
    }
}

/// The request for a job, or the permanent failure that makes it unsendable.
async fn build_request(
    store: &Arc<dyn Store>,
    settings: &WebhookSettings,
    job: &StoredJob,
    now: i64,
) -> Result<webhook::PreparedRequest, AttemptResult> {
    let permanent = |reason: String| AttemptResult::Permanent { reason };
    let Ok(ActionRequest::Webhook { target, url, body }) = serde_json::from_value(job.spec.clone())
    else {
        return Err(permanent(format!("job {} is not a webhook action", job.id)));
    };
    let body = match body {
        Some(body) => body,
        None => {
            // The default body: the event as decoded, and the rule that fired.
            let event =
                store
                    .get_event(job.event_id)
                    .await
                    .map_err(|e| AttemptResult::Transient {
                        reason: format!("reading the event failed: {e}"),
                        retry_after: None,
                    })?;
            let event = match &event {
                Some(stored) => Some(stored.readable().map_err(|skipped| {
                    permanent(format!(
                        "the default body needs event {}, which cannot be read back: {}",
                        skipped.id, skipped.reason
                    ))
                })?),
                None => None,
            };
            serde_json::json!({
                "rule": job.rule,
                "event_id": job.event_id,
                "event": event,
            })
        }
    };
    webhook::prepare(
        &settings.context(),
        target.as_deref(),
        url.as_deref(),
        &body,
        &job.idempotency_key,
        now / 1000,
    )
    .map_err(|e| permanent(e.to_string()))
}

//! The delivery worker: claims due jobs of one kind under a lease, runs them concurrently (a slow
//! target holds up only its own job), and records every attempt with what happens next: done,
//! retry at a time from the schedule, or dead-lettered. A job whose worker died is taken over
//! when its lease expires; a job is recorded once, by the worker that holds it. Each kind has its
//! own worker, so a dead mail server holds up no webhook.

use super::retry::{AttemptResult, Decision, Schedule, decide};
use super::webhook::{self, Clients, WebhookContext};
use crate::config::WebhookTarget;
use crate::rules::ActionRequest;
use crate::store::{AttemptRecord, JobNext, Lease, Store, StoredJob, now_millis};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Runs one attempt of a job of one kind.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + 'static {
    /// The job kind this deliverer runs (`webhook`, `email`).
    fn kind(&self) -> &'static str;
    /// One attempt: its result, and the HTTP status or SMTP code when there was one.
    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>);
}

/// What the webhook deliverer needs from the configuration.
#[derive(Clone)]
pub struct WebhookSettings {
    pub targets: Arc<BTreeMap<String, WebhookTarget>>,
    pub allowlist: Arc<Vec<String>>,
    pub allow_private: bool,
}

/// Delivers `webhook` jobs.
pub struct WebhookDeliverer {
    pub store: Arc<dyn Store>,
    pub settings: WebhookSettings,
    pub clients: Clients,
}

#[async_trait::async_trait]
impl Deliver for WebhookDeliverer {
    fn kind(&self) -> &'static str {
        "webhook"
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

/// How a worker claims work.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub owner: String,
    pub batch: u32,
    /// Longer than any attempt can take (the longest target timeout and then some).
    pub lease: Duration,
    pub poll: Duration,
}

/// Runs a worker for `deliver`'s kind until `shutdown`, finishing the attempts in hand first.
pub async fn run(
    store: Arc<dyn Store>,
    deliver: Arc<dyn Deliver>,
    schedule: Arc<Schedule>,
    wake: Arc<Notify>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
    while !shutdown.is_cancelled() {
        let now = now_millis();
        let lease = Lease {
            owner: config.owner.clone(),
            now,
            until: now.saturating_add(lease_ms),
        };
        match store.claim_jobs(&lease, deliver.kind(), config.batch).await {
            Ok(jobs) if !jobs.is_empty() => {
                let mut running = tokio::task::JoinSet::new();
                for job in jobs {
                    let (store, deliver, schedule, owner) = (
                        store.clone(),
                        deliver.clone(),
                        schedule.clone(),
                        config.owner.clone(),
                    );
                    running.spawn(async move {
                        let (attempt, next) = attempt_job(&*deliver, &schedule, &job).await;
                        record(&*store, &job, &owner, &attempt, next).await;
                    });
                }
                running.join_all().await;
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, kind = deliver.kind(), "claiming jobs failed; will retry")
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(config.poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

async fn record(
    store: &dyn Store,
    job: &StoredJob,
    owner: &str,
    attempt: &AttemptRecord,
    next: JobNext,
) {
    match store.record_attempt(job.id, owner, attempt, next).await {
        Ok(true) => match next {
            JobNext::Dead => tracing::error!(
                job = job.id, rule = %job.rule, kind = %job.kind,
                reason = attempt.detail.as_deref().unwrap_or(""),
                "job dead-lettered: no further attempts (an operator can retry it)"
            ),
            JobNext::RetryAt(at) => tracing::warn!(
                job = job.id, rule = %job.rule, attempt = job.attempts + 1, retry_at = at,
                reason = attempt.detail.as_deref().unwrap_or(""),
                "delivery failed; will retry"
            ),
            JobNext::Done => tracing::debug!(job = job.id, "delivered"),
        },
        Ok(false) => tracing::warn!(
            job = job.id,
            "lease lost before recording; another worker has the job"
        ),
        Err(error) => {
            tracing::error!(job = job.id, %error, "recording the attempt failed; the job runs again after its lease")
        }
    }
}

/// One attempt of a job: its record, and what happens next.
async fn attempt_job(
    deliver: &dyn Deliver,
    schedule: &Schedule,
    job: &StoredJob,
) -> (AttemptRecord, JobNext) {
    let started_at = now_millis();
    let clock = Instant::now();
    let (result, code) = deliver.attempt(job).await;
    let attempt_number = u32::try_from(job.attempts + 1).unwrap_or(u32::MAX);
    let next = match decide(
        schedule,
        attempt_number,
        &result,
        now_millis(),
        &job.idempotency_key,
    ) {
        Decision::Done => JobNext::Done,
        Decision::RetryAt(at) => JobNext::RetryAt(at),
        Decision::Dead { .. } => JobNext::Dead,
    };
    let (outcome, detail) = match result {
        AttemptResult::Success => ("success", None),
        AttemptResult::Transient { reason, .. } => ("transient", Some(reason)),
        AttemptResult::Permanent { reason } => ("permanent", Some(reason)),
    };
    let attempt = AttemptRecord {
        started_at,
        duration_ms: i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX),
        outcome: outcome.to_string(),
        code,
        detail,
    };
    (attempt, next)
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
            serde_json::json!({
                "rule": job.rule,
                "event_id": job.event_id,
                "event": event.map(|e| e.event),
            })
        }
    };
    let ctx = WebhookContext {
        targets: &settings.targets,
        allowlist: &settings.allowlist,
        allow_private: settings.allow_private,
    };
    webhook::prepare(
        &ctx,
        target.as_deref(),
        url.as_deref(),
        &body,
        &job.idempotency_key,
        now / 1000,
    )
    .map_err(|e| permanent(e.to_string()))
}

/// Delivers `email` jobs.
pub struct EmailDeliverer {
    pub mailer: super::email::Mailer,
    pub from: lettre::message::Mailbox,
}

#[async_trait::async_trait]
impl Deliver for EmailDeliverer {
    fn kind(&self) -> &'static str {
        "email"
    }

    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>) {
        let permanent = |reason: String| (AttemptResult::Permanent { reason }, None);
        let Ok(ActionRequest::Email(spec)) = serde_json::from_value(job.spec.clone()) else {
            return permanent(format!("job {} is not an email action", job.id));
        };
        match super::email::build_message(&self.from, &spec, &job.idempotency_key) {
            Ok(message) => self.mailer.send(message).await,
            Err(error) => permanent(error.to_string()),
        }
    }
}

/// Records `callback_task` jobs as callback tasks (merged per phone), and runs
/// `close_callback_tasks` jobs.
pub struct CallbackDeliverer {
    pub store: Arc<dyn Store>,
    /// `callback_task` or `close_callback_tasks`.
    pub kind: &'static str,
}

#[async_trait::async_trait]
impl Deliver for CallbackDeliverer {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>) {
        let stored = match serde_json::from_value(job.spec.clone()) {
            Ok(ActionRequest::CallbackTask {
                phone,
                name,
                reason,
                due_in_secs,
                priority,
            }) => {
                let due_in = i64::try_from(due_in_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                let request = crate::store::CallbackRequest {
                    phone,
                    customer_name: name,
                    reason,
                    event_id: job.event_id,
                    rule: job.rule.clone(),
                    priority,
                    due_at: job.created_at.saturating_add(due_in),
                };
                self.store
                    .upsert_callback_task(&request, now_millis())
                    .await
                    .map(|_| ())
            }
            Ok(ActionRequest::CloseCallbackTasks { phone, note }) => {
                let outcome = note.unwrap_or_else(|| format!("closed by rule {}", job.rule));
                self.store
                    .close_callback_tasks(&phone, &outcome, now_millis())
                    .await
                    .map(|_| ())
            }
            _ => {
                let reason = format!("job {} is not a callback action", job.id);
                return (AttemptResult::Permanent { reason }, None);
            }
        };
        match stored {
            Ok(()) => (AttemptResult::Success, None),
            Err(error) => (
                AttemptResult::Transient {
                    reason: error.to_string(),
                    retry_after: None,
                },
                None,
            ),
        }
    }
}

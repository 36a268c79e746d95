//! The delivery worker: claims due jobs of one kind under a lease, runs them concurrently (a slow
//! target holds up only its own job), and records every attempt with what happens next: done,
//! retry at a time from the schedule, or dead-lettered. A job whose worker died is taken over
//! when its lease expires; a job is recorded once, by the worker that holds it. Each kind has its
//! own worker, so a dead mail server holds up no webhook.

use super::retry::{AttemptResult, Decision, Schedule, decide};
use super::webhook::{self, Clients, WebhookContext, WebhookTarget};
use crate::health::{Backoff, WriteHealth, op};
use crate::metrics::{AttemptLabels, KindLabels, Metrics};
use crate::rules::ActionRequest;
use crate::store::{AttemptRecord, FinishedAttempt, JobNext, Lease, Store, StoredJob, now_millis};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// One wake-up per job kind: whoever queues jobs of a kind wakes that kind's worker (and only
/// that one: an idle worker's claim is a write transaction for nothing).
#[derive(Debug, Default)]
pub struct Wakers(BTreeMap<&'static str, Arc<Notify>>);

impl Wakers {
    /// The wake-up of `kind`'s worker (made on first use).
    pub fn of(&mut self, kind: &'static str) -> Arc<Notify> {
        self.0.entry(kind).or_default().clone()
    }

    /// Wakes the worker of `kind`, if there is one.
    pub fn wake(&self, kind: &str) {
        if let Some(notify) = self.0.get(kind) {
            notify.notify_one();
        }
    }

    /// Wakes every worker.
    pub fn wake_all(&self) {
        self.0.values().for_each(|n| n.notify_one());
    }
}

/// Runs one attempt of a job of one kind.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + 'static {
    /// The job kind this deliverer runs (`webhook`, `email`).
    fn kind(&self) -> &'static str;
    /// One attempt: its result, and the HTTP status or SMTP code when there was one.
    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>);

    /// Whether the jobs claimed together run together ([`Deliver::attempt_all`]) rather than
    /// each on its own: for work that is a store write, one transaction for the batch.
    fn batched(&self) -> bool {
        false
    }

    /// One attempt of each job, together; the results in the jobs' order. By default, each on
    /// its own, one after another.
    async fn attempt_all(&self, jobs: &[StoredJob]) -> Vec<(AttemptResult, Option<i64>)> {
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            results.push(self.attempt(job).await);
        }
        results
    }
}

/// What the webhook deliverer needs from the configuration.
#[derive(Clone)]
pub struct WebhookSettings {
    pub targets: Arc<BTreeMap<String, WebhookTarget>>,
    pub allowlist: Arc<Vec<super::address::AllowedUrl>>,
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
    /// Most jobs claimed at once.
    pub batch: u32,
    /// Most attempts in flight at once.
    pub max_in_flight: usize,
    /// Longer than any attempt can take (the longest target timeout and then some).
    pub lease: Duration,
    pub poll: Duration,
}

/// An attempt made, on its way to the recorder.
struct Made {
    job: StoredJob,
    done: FinishedAttempt,
}

/// Runs a worker for `deliver`'s kind until `shutdown`, finishing the attempts in hand first.
///
/// Jobs are claimed while there is room (`max_in_flight`) and each runs on its own, so a slow
/// target holds up only its own jobs. Finished attempts go to one recorder, which writes all that
/// have arrived in one transaction: a few commits per second however many jobs complete. A store
/// write that fails is logged and retried after a growing delay; the worker never ends on one.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    store: Arc<dyn Store>,
    deliver: Arc<dyn Deliver>,
    schedule: Arc<Schedule>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    health: Arc<WriteHealth>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let (made_tx, made_rx) = mpsc::channel::<Made>(config.max_in_flight.max(1));
    let recorder = tokio::spawn(record_loop(
        Recorder {
            store: store.clone(),
            owner: config.owner.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            kind: deliver.kind(),
            lease: config.lease,
            shutdown: shutdown.clone(),
        },
        made_rx,
    ));
    let mut backoff = Backoff::store();
    loop {
        // Wait for room for at least one attempt, then take what room there is.
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            _ = shutdown.cancelled() => break,
        };
        let mut permits = vec![first];
        while permits.len() < config.batch as usize {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let now = now_millis();
        let lease = Lease {
            owner: config.owner.clone(),
            now,
            until: now.saturating_add(lease_ms),
        };
        let wanted = permits.len();
        let started = Instant::now();
        let claimed = store
            .claim_jobs(
                &lease,
                deliver.kind(),
                u32::try_from(wanted).unwrap_or(u32::MAX),
            )
            .await;
        metrics.store_call(op::CLAIM_JOBS, started);
        health.record(op::CLAIM_JOBS, &claimed);
        let claimed = match claimed {
            Ok(jobs) => {
                backoff.succeeded();
                jobs
            }
            Err(error) => {
                tracing::error!(%error, kind = deliver.kind(), "claiming jobs failed; will retry");
                drop(permits);
                // Not the wake-up: new jobs would have it retry at once.
                tokio::select! {
                    _ = tokio::time::sleep(backoff.failed()) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        let full = claimed.len() == wanted;
        if deliver.batched() {
            if !claimed.is_empty() {
                let permits: Vec<_> = permits.drain(..claimed.len()).collect();
                let (deliver, schedule, made_tx) =
                    (deliver.clone(), schedule.clone(), made_tx.clone());
                tokio::spawn(async move {
                    let started_at = now_millis();
                    let clock = Instant::now();
                    let results = deliver.attempt_all(&claimed).await;
                    let took = clock.elapsed();
                    for (job, (result, code)) in claimed.into_iter().zip(results) {
                        let done =
                            finished_attempt(&schedule, &job, result, code, started_at, took);
                        let _ = made_tx.send(Made { job, done }).await;
                    }
                    drop(permits);
                });
            }
        } else {
            for (job, permit) in claimed.into_iter().zip(permits.drain(..)) {
                let (deliver, schedule, made_tx) =
                    (deliver.clone(), schedule.clone(), made_tx.clone());
                tokio::spawn(async move {
                    let done = attempt_job(&*deliver, &schedule, &job).await;
                    // The permit is held until the recorder has the attempt: in-flight work
                    // stays bounded, and shutdown waits for every attempt to be handed over.
                    let _ = made_tx.send(Made { job, done }).await;
                    drop(permit);
                });
            }
        }
        drop(permits);
        if full {
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(config.poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // Every attempt in flight finishes and is handed to the recorder, which then drains.
    let all = u32::try_from(config.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    drop(made_tx);
    let _ = recorder.await;
}

/// What the recorder writes with, and where it reports.
struct Recorder {
    store: Arc<dyn Store>,
    owner: String,
    metrics: Arc<Metrics>,
    health: Arc<WriteHealth>,
    kind: &'static str,
    /// The workers' lease: a failed write is retried for this long, while the jobs are ours.
    lease: Duration,
    /// Once cancelled, a failed write is not retried (the jobs run again after their lease).
    shutdown: CancellationToken,
}

/// Records finished attempts, as many per transaction as have arrived. A failed write is retried
/// (the same attempts) while the jobs' leases last, so that a short store outage does not send
/// them again; after that they run again once their lease expires.
async fn record_loop(recorder: Recorder, mut made_rx: mpsc::Receiver<Made>) {
    const MOST_PER_COMMIT: usize = 512;
    let Recorder {
        store,
        owner,
        metrics,
        health,
        kind,
        lease,
        shutdown,
    } = recorder;
    let mut made = Vec::with_capacity(MOST_PER_COMMIT);
    while made_rx.recv_many(&mut made, MOST_PER_COMMIT).await > 0 {
        let batch: Vec<FinishedAttempt> = made.iter().map(|m| m.done.clone()).collect();
        let give_up_at = Instant::now() + lease;
        let mut backoff = Backoff::store();
        loop {
            let started = Instant::now();
            let recorded = store.record_attempts(&owner, &batch).await;
            metrics.store_call(op::RECORD_ATTEMPTS, started);
            health.record(op::RECORD_ATTEMPTS, &recorded);
            match recorded {
                Ok(recorded) => {
                    for (m, recorded) in made.iter().zip(recorded) {
                        log_recorded(&m.job, &m.done, recorded);
                        if recorded {
                            count_attempt(&metrics, kind, &m.done);
                        }
                    }
                    break;
                }
                Err(error) => {
                    let delay = backoff.failed();
                    if Instant::now() + delay >= give_up_at || shutdown.is_cancelled() {
                        tracing::error!(
                            jobs = made.len(), %error,
                            "recording attempts failed; those jobs run again after their lease"
                        );
                        break;
                    }
                    tracing::error!(
                        jobs = made.len(), %error, retry_in_ms = delay.as_millis() as u64,
                        "recording attempts failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        made.clear();
    }
}

/// Counts a recorded attempt: its outcome, and a retry or dead letter it led to.
fn count_attempt(metrics: &Metrics, kind: &'static str, done: &FinishedAttempt) {
    let outcome = match done.attempt.outcome.as_str() {
        "success" => "success",
        "transient" => "transient",
        "permanent" => "permanent",
        _ => "skipped",
    };
    metrics
        .job_attempts
        .get_or_create(&AttemptLabels { kind, outcome })
        .inc();
    match done.next {
        JobNext::RetryAt(_) => metrics
            .job_retries
            .get_or_create(&KindLabels { kind })
            .inc(),
        JobNext::Dead => metrics
            .jobs_dead_lettered
            .get_or_create(&KindLabels { kind })
            .inc(),
        JobNext::Done => 0,
    };
}

fn log_recorded(job: &StoredJob, done: &FinishedAttempt, recorded: bool) {
    let reason = done.attempt.detail.as_deref().unwrap_or("");
    if !recorded {
        tracing::warn!(
            job = job.id,
            "lease lost before recording; another worker has the job"
        );
        return;
    }
    match done.next {
        JobNext::Dead => tracing::error!(
            job = job.id, rule = %job.rule, kind = %job.kind, reason,
            "job dead-lettered: no further attempts (an operator can retry it)"
        ),
        JobNext::RetryAt(at) => tracing::warn!(
            job = job.id, rule = %job.rule, attempt = job.attempts + 1, retry_at = at, reason,
            "delivery failed; will retry"
        ),
        JobNext::Done => tracing::debug!(job = job.id, "delivered"),
    }
}

/// One attempt of a job: its record, and what happens next.
async fn attempt_job(
    deliver: &dyn Deliver,
    schedule: &Schedule,
    job: &StoredJob,
) -> FinishedAttempt {
    let started_at = now_millis();
    let clock = Instant::now();
    let (result, code) = deliver.attempt(job).await;
    finished_attempt(schedule, job, result, code, started_at, clock.elapsed())
}

/// An attempt's record and what happens next, from its result.
fn finished_attempt(
    schedule: &Schedule,
    job: &StoredJob,
    result: AttemptResult,
    code: Option<i64>,
    started_at: i64,
    took: Duration,
) -> FinishedAttempt {
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
        AttemptResult::Skipped { reason } => ("skipped", Some(reason)),
    };
    let attempt = AttemptRecord {
        started_at,
        duration_ms: i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
        outcome: outcome.to_string(),
        code,
        detail,
    };
    FinishedAttempt {
        job_id: job.id,
        attempt,
        next,
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
    /// Set when new tasks are dispatched: woken when one is created.
    pub dispatch: Option<Arc<Notify>>,
}

#[async_trait::async_trait]
impl Deliver for CallbackDeliverer {
    fn kind(&self) -> &'static str {
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
                }) if self.kind == "callback_task" => {
                    let due_in =
                        i64::try_from(due_in_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                    requests.push(crate::store::CallbackRequest {
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
                    if self.kind == "close_callback_tasks" =>
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
        let transient = |error: crate::store::StoreError| AttemptResult::Transient {
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
        requests: &[crate::store::CallbackRequest],
        closes: &[(String, String)],
        now: i64,
    ) -> Result<(), crate::store::StoreError> {
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

/// Sends each new callback task where `[callback_dispatch]` says: Udesk's web callback API, or a
/// webhook target (signed like any webhook, `webhook-id` from the job's key).
pub struct DispatchDeliverer {
    pub store: Arc<dyn Store>,
    pub dispatch: super::udesk::CallbackDispatch,
    pub webhooks: WebhookSettings,
    pub clients: Clients,
}

#[async_trait::async_trait]
impl Deliver for DispatchDeliverer {
    fn kind(&self) -> &'static str {
        crate::store::CALLBACK_DISPATCH_KIND
    }

    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>) {
        let Some(task_id) = job.spec["task_id"].as_i64() else {
            let reason = format!("job {} names no callback task", job.id);
            return (AttemptResult::Permanent { reason }, None);
        };
        let task = match self.store.get_callback_task(task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => {
                let reason = format!("callback task {task_id} does not exist");
                return (AttemptResult::Permanent { reason }, None);
            }
            Err(error) => {
                let reason = format!("reading callback task {task_id} failed: {error}");
                let result = AttemptResult::Transient {
                    reason,
                    retry_after: None,
                };
                return (result, None);
            }
        };
        if matches!(task.status.as_str(), "done" | "cancelled") {
            let reason = format!(
                "task {task_id} was {} before it was dispatched",
                task.status
            );
            return (AttemptResult::Skipped { reason }, None);
        }
        let now = now_millis();
        match &self.dispatch {
            super::udesk::CallbackDispatch::Udesk(api) => {
                let seed = format!("{}:{}", job.idempotency_key, job.attempts + 1);
                let request = super::udesk::prepare_web_callback(api, &task, &seed, now / 1000);
                let sent = webhook::send(&self.clients, &request).await;
                (
                    super::udesk::classify_answer(sent.result, &sent.body),
                    sent.code,
                )
            }
            super::udesk::CallbackDispatch::Webhook(target) => {
                let ctx = WebhookContext {
                    targets: &self.webhooks.targets,
                    allowlist: &self.webhooks.allowlist,
                    allow_private: self.webhooks.allow_private,
                };
                let body = super::udesk::task_webhook_body(&task);
                match webhook::prepare(
                    &ctx,
                    Some(target),
                    None,
                    &body,
                    &job.idempotency_key,
                    now / 1000,
                ) {
                    Ok(request) => {
                        let sent = webhook::send(&self.clients, &request).await;
                        (sent.result, sent.code)
                    }
                    Err(error) => (
                        AttemptResult::Permanent {
                            reason: error.to_string(),
                        },
                        None,
                    ),
                }
            }
        }
    }
}

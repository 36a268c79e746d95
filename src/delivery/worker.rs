//! The delivery worker: claims due jobs of one kind under a lease, runs them concurrently (a slow
//! target holds up only its own job), and records every attempt with what happens next: done,
//! retry at a time from the schedule, or dead-lettered. A job whose worker died is taken over
//! when its lease expires; a job is recorded once, by the worker that holds it. Each kind has its
//! own worker, so a dead mail server holds up no webhook. What one attempt does is up to the
//! kind's [`Deliver`] (`super::deliver`).

use super::retry::{AttemptResult, Decision, Schedule, decide};
use crate::health::{Backoff, WriteHealth, op};
use crate::metrics::{AttemptLabels, KindLabels, Metrics};
use crate::store::{AttemptRecord, FinishedAttempt, JobKind, JobNext, Lease, Store, StoredJob};
use crate::time::now_millis;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Runs one attempt of a job of one kind.
#[async_trait::async_trait]
pub(crate) trait Deliver: Send + Sync + 'static {
    /// The job kind this deliverer runs.
    fn kind(&self) -> JobKind;
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

/// How a worker claims work.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    pub(crate) owner: String,
    /// Most jobs claimed at once.
    pub(crate) batch: u32,
    /// Most attempts in flight at once.
    pub(crate) max_in_flight: usize,
    /// Longer than any attempt can take (the longest target timeout and then some).
    pub(crate) lease: Duration,
    pub(crate) poll: Duration,
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
pub(crate) async fn run(
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
            kind: deliver.kind().as_str(),
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
                tracing::error!(%error, kind = deliver.kind().as_str(), "claiming jobs failed; will retry");
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

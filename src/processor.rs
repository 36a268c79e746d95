//! Processing of accepted events, decoupled from intake: processors claim unprocessed events from
//! the store under a lease, evaluate each against the current rule set, and record the
//! evaluations with the jobs they ask for. Events accepted before a crash are claimed after
//! restart, and an expired lease lets another processor (or instance) take over. An event that
//! fails to load or to process is retried on its own after a backoff and quarantined after too
//! many failures; the rest of its batch goes on.

use crate::evaluation::{StoreCounters, finished, on_evaluation_thread};
use crate::health::{Backoff, WriteHealth, op};
use crate::metrics::{Metrics, RuleLabels};
use crate::rules::{EvalContext, Evaluation, Rules};
use crate::store::{EventFailure, EventNext, Finished, JobKind, Lease, Store, StoredEvent};
use crate::time::{Millis, now_millis};
use crate::wakeup::Wakers;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How a processor claims work.
#[derive(Debug, Clone)]
pub(crate) struct ProcessorConfig {
    /// Identifies this processor in leases; unique per process.
    pub(crate) owner: String,
    /// Most events claimed at once.
    pub(crate) batch: u32,
    /// How long claimed events stay ours.
    pub(crate) lease: Duration,
    /// How often to look for work without a wake-up (events from other instances).
    pub(crate) poll: Duration,
    /// After a batch that was not full, wait this long before claiming again, so that under a
    /// steady stream of notifications batches grow instead of one transaction per commit.
    pub(crate) settle: Duration,
    /// Failed attempts before an event is quarantined.
    pub(crate) max_failures: u32,
    /// The wait after an event's first failure; doubled after each further one.
    pub(crate) retry_backoff: Duration,
}

/// The longest wait between two attempts at an event, however many failures.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(3600);

/// What becomes of an event that failed for the `failures`-th time (PURE): retried after
/// `backoff` doubled per earlier failure (at most [`MAX_RETRY_BACKOFF`]), or quarantined once
/// `failures` reaches `max_failures`.
fn after_failure(failures: i64, max_failures: u32, backoff: Duration, now: Millis) -> EventNext {
    if failures >= i64::from(max_failures) {
        return EventNext::Quarantine;
    }
    let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 31)).unwrap_or(31);
    let wait = backoff
        .saturating_mul(1u32 << doublings)
        .min(MAX_RETRY_BACKOFF);
    EventNext::RetryAt(now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)))
}

/// Runs until `shutdown` is cancelled, finishing the batch in hand first. A store write that
/// fails is logged and retried after a growing delay ([`Backoff`]); the loop never ends on one.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    store: Arc<dyn Store>,
    rules: Arc<Rules>,
    wake: Arc<Notify>,
    workers: Arc<Wakers>,
    metrics: Arc<Metrics>,
    health: Arc<WriteHealth>,
    rule_errors: Arc<RuleErrorLog>,
    config: ProcessorConfig,
    shutdown: CancellationToken,
) {
    let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
    let mut backoff = Backoff::store();
    while !shutdown.is_cancelled() {
        let now = now_millis();
        let lease = Lease {
            owner: config.owner.clone(),
            now,
            until: now.saturating_add(lease_ms),
        };
        let started = Instant::now();
        let claimed = store.claim_events(&lease, config.batch).await;
        metrics.store_call(op::CLAIM_EVENTS, started);
        health.record(op::CLAIM_EVENTS, &claimed);
        let failed = match claimed {
            Ok(events) if !events.is_empty() => {
                let full = events.len() == config.batch as usize;
                let batch = Batch {
                    store: &store,
                    metrics: &metrics,
                    health: &health,
                    rule_errors: &rule_errors,
                    config: &config,
                    lease: &lease,
                    shutdown: &shutdown,
                };
                match process(&batch, &rules, events).await {
                    Some(kinds) => {
                        backoff.succeeded();
                        kinds.into_iter().for_each(|kind| workers.wake(kind));
                        if full {
                            continue; // more is waiting
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(config.settle) => {}
                            _ = shutdown.cancelled() => break,
                        }
                        continue;
                    }
                    None => true,
                }
            }
            Ok(_) => {
                backoff.succeeded();
                false
            }
            Err(error) => {
                tracing::error!(%error, "claiming events failed; will retry");
                true
            }
        };
        if failed {
            // Not the wake-up: under a steady stream of pushes it would retry at once.
            tokio::select! {
                _ = tokio::time::sleep(backoff.failed()) => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(config.poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// What processing one claimed batch works with.
struct Batch<'a> {
    store: &'a Arc<dyn Store>,
    metrics: &'a Arc<Metrics>,
    health: &'a WriteHealth,
    rule_errors: &'a RuleErrorLog,
    config: &'a ProcessorConfig,
    lease: &'a Lease,
    shutdown: &'a CancellationToken,
}

/// An event of the batch that failed this time, and why.
struct Failed {
    event_id: i64,
    /// Failures before this one.
    failures: i64,
    reason: String,
}

/// Evaluates a batch of claimed events (on an evaluation thread: evaluation is CPU work, records
/// counter hits synchronously, each as it is made, and may need a deep stack) and records every
/// evaluation, with its jobs, in the one transaction that finishes the batch. An event that
/// cannot be read back or evaluated, or whose evaluation the store refuses, is failed on its own
/// (retried later, or quarantined) while the rest are recorded. Returns the kinds of the jobs it recorded, or `None` when the
/// batch could not be recorded because the store failed: a failed write is retried while the
/// lease lasts (the events are still ours), after that the events are claimed and evaluated
/// again.
async fn process(
    batch: &Batch<'_>,
    rules: &Arc<Rules>,
    events: Vec<StoredEvent>,
) -> Option<std::collections::BTreeSet<JobKind>> {
    let (store, metrics, config) = (batch.store, batch.metrics, batch.config);
    let count = events.len();
    let (events, unreadable): (Vec<StoredEvent>, Vec<StoredEvent>) =
        events.into_iter().partition(|e| e.unreadable.is_none());
    let mut failed: Vec<Failed> = unreadable
        .into_iter()
        .map(|e| Failed {
            event_id: e.id,
            failures: e.failures,
            reason: e.unreadable.unwrap_or_default(),
        })
        .collect();
    let (store2, rules) = (store.clone(), rules.clone());
    let eval_metrics = metrics.clone();
    let handle = tokio::runtime::Handle::current();
    let evaluated = on_evaluation_thread(move || {
        let ruleset = rules.current();
        events
            .iter()
            .map(|event| {
                let ctx = EvalContext {
                    counters: Arc::new(StoreCounters {
                        store: store2.clone(),
                        runtime: handle.clone(),
                        event_id: event.id,
                    }),
                    at_ms: event.received_at,
                    record_stats: true,
                    prefilter: true,
                };
                // Rules are sandboxed and each one's panic is caught, but nothing outside them
                // may take the batch down either: a panic fails this event only.
                let evaluation = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ruleset.evaluate(&event.event, &ctx)
                }))
                .map_err(|panic| Failed {
                    event_id: event.id,
                    failures: event.failures,
                    reason: format!("evaluation panicked: {}", panic_message(&*panic)),
                })?;
                metrics_for(&eval_metrics, &evaluation);
                let finished =
                    finished(event.id, event.received_at, &evaluation).map_err(|e| Failed {
                        event_id: event.id,
                        failures: event.failures,
                        reason: format!("its evaluation could not be recorded: {e}"),
                    })?;
                Ok((event.failures, finished))
            })
            .collect::<Vec<Result<(i64, Finished), Failed>>>()
    })
    .await;
    let results = match evaluated {
        Ok(results) => results,
        Err(error) => {
            tracing::error!(%error, events = count, "evaluation task failed; the events will be retried after the lease");
            return None;
        }
    };
    let mut results_ok = Vec::with_capacity(results.len());
    let mut failures_of = HashMap::new();
    for result in results {
        match result {
            Ok((failures, finished)) => {
                failures_of.insert(finished.event_id, failures);
                results_ok.push(finished);
            }
            Err(failure) => failed.push(failure),
        }
    }
    let results = results_ok;
    batch.rule_errors.log(&results);
    let recorded = record(batch, &results, &failures_of, &mut failed).await?;
    if !failed.is_empty() {
        fail(store, metrics, config, failed).await;
    }
    Some(
        recorded
            .iter()
            .flat_map(|r| r.jobs.iter().map(|j| j.kind))
            .collect(),
    )
}

/// Records the evaluations of a batch in one transaction. When the store refuses the batch for
/// its data (not because it is down), each event is recorded on its own, and those it still
/// refuses are added to `failed`. Returns the evaluations recorded, or `None` when the store
/// failed (not the data) past the lease.
async fn record<'a>(
    batch: &Batch<'_>,
    results: &'a [Finished],
    failures_of: &HashMap<i64, i64>,
    failed: &mut Vec<Failed>,
) -> Option<Vec<&'a Finished>> {
    let (store, metrics, lease) = (batch.store, batch.metrics, batch.lease);
    let owner = lease.owner.as_str();
    if results.is_empty() {
        return Some(Vec::new());
    }
    let mut backoff = Backoff::store();
    let error = loop {
        let started = Instant::now();
        let outcome = store.finish_events(results, owner, now_millis()).await;
        metrics.store_call(op::FINISH_EVENTS, started);
        batch.health.record(op::FINISH_EVENTS, &outcome);
        let error = match outcome {
            Ok(finished) => {
                if finished.len() < results.len() {
                    tracing::warn!(
                        lost = results.len() - finished.len(),
                        "leases lost before finishing; another processor has those events"
                    );
                }
                tracing::debug!(events = finished.len(), "events processed");
                return Some(results.iter().collect());
            }
            Err(error) => error,
        };
        if !error.is_store_fault() {
            break error;
        }
        // A retry writes what the failed try would have: the transaction was all or nothing,
        // and events whose lease went to another processor are left alone either way.
        let delay = backoff.failed();
        let retry_at = now_millis().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(0));
        if retry_at >= lease.until || batch.shutdown.is_cancelled() {
            tracing::error!(%error, events = results.len(), "recording processing failed; the events are processed again after their lease");
            return None;
        }
        tracing::error!(%error, events = results.len(), retry_in_ms = delay.as_millis() as u64, "recording processing failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = batch.shutdown.cancelled() => {}
        }
    };
    if let [result] = results {
        failed.push(Failed {
            event_id: result.event_id,
            failures: failures_of.get(&result.event_id).copied().unwrap_or(0),
            reason: format!("recording its evaluation failed: {error}"),
        });
        return Some(Vec::new());
    }
    tracing::warn!(%error, events = results.len(), "the store refused a batch of evaluations; recording them one by one");
    let mut recorded = Vec::new();
    for result in results {
        match store
            .finish_events(std::slice::from_ref(result), owner, now_millis())
            .await
        {
            Ok(_) => recorded.push(result),
            Err(error) if error.is_store_fault() => {
                tracing::error!(%error, "recording processing failed; will retry after the lease");
                return None;
            }
            Err(error) => failed.push(Failed {
                event_id: result.event_id,
                failures: failures_of.get(&result.event_id).copied().unwrap_or(0),
                reason: format!("recording its evaluation failed: {error}"),
            }),
        }
    }
    Some(recorded)
}

/// Records failed attempts: each event waits for its backoff, or is quarantined.
async fn fail(
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    config: &ProcessorConfig,
    failed: Vec<Failed>,
) {
    let now = now_millis();
    let failures: Vec<EventFailure> = failed
        .into_iter()
        .map(|f| {
            let failures = f.failures.saturating_add(1);
            EventFailure {
                event_id: f.event_id,
                failures,
                next: after_failure(failures, config.max_failures, config.retry_backoff, now),
                reason: f.reason,
            }
        })
        .collect();
    match store.fail_events(&failures, &config.owner, now).await {
        Ok(recorded) => {
            for (failure, recorded) in failures.iter().zip(recorded) {
                if !recorded {
                    continue; // another processor holds it now
                }
                metrics.event_failures.inc();
                match failure.next {
                    EventNext::Quarantine => {
                        metrics.events_quarantined.inc();
                        tracing::error!(
                            event = failure.event_id,
                            failures = failure.failures,
                            reason = %failure.reason,
                            "event quarantined: it failed too many times; the rest of the queue goes on (POST /v1/events/{{id}}/retry puts it back)"
                        );
                    }
                    EventNext::RetryAt(at) => tracing::warn!(
                        event = failure.event_id,
                        failures = failure.failures,
                        max_failures = config.max_failures,
                        retry_in_ms = at - now,
                        reason = %failure.reason,
                        "processing an event failed; it will be retried on its own"
                    ),
                }
            }
        }
        Err(error) => tracing::error!(
            %error,
            events = failures.len(),
            "could not record failed processing attempts; the events will be retried after the lease"
        ),
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Counts an evaluation: its latency, and each rule that matched or failed.
fn metrics_for(metrics: &Metrics, evaluation: &Evaluation) {
    metrics
        .evaluation_seconds
        .observe(evaluation.elapsed_us as f64 / 1e6);
    for verdict in &evaluation.verdicts {
        let labels = RuleLabels {
            rule: verdict.rule.clone(),
        };
        if verdict.matched {
            metrics.rule_matches.get_or_create(&labels).inc();
        }
        if verdict.error.is_some() {
            metrics.rule_errors.get_or_create(&labels).inc();
        }
    }
}

/// How often a rule that keeps failing is logged (each failure is in its event's record).
const RULE_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The log of rules that fail: at most one line per rule every [`RULE_ERROR_LOG_EVERY`], with
/// how many failures that line stands for, so a rule broken for every event cannot flood the
/// log. One per instance, shared by its processors.
#[derive(Debug, Default)]
pub(crate) struct RuleErrorLog {
    /// Per rule: when it was last logged, and failures since.
    logged: Mutex<HashMap<String, (Option<Instant>, u64)>>,
}

impl RuleErrorLog {
    /// Logs the rules that failed in a batch.
    fn log(&self, results: &[Finished]) {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        for result in results {
            for verdict in &result.record.verdicts {
                let Some(error) = &verdict.error else {
                    continue;
                };
                let entry = logged.entry(verdict.rule.clone()).or_insert((None, 0));
                entry.1 += 1;
                if entry
                    .0
                    .is_none_or(|at| at.elapsed() >= RULE_ERROR_LOG_EVERY)
                {
                    tracing::warn!(
                        rule = %verdict.rule,
                        event = result.event_id,
                        %error,
                        failures = entry.1,
                        "rule failed (failures counts this one and those not logged since the last line)"
                    );
                    *entry = (Some(Instant::now()), 0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_then_quarantine() {
        let backoff = Duration::from_secs(2);
        assert_eq!(
            after_failure(1, 5, backoff, 1_000),
            EventNext::RetryAt(3_000)
        );
        assert_eq!(
            after_failure(2, 5, backoff, 1_000),
            EventNext::RetryAt(5_000)
        );
        assert_eq!(
            after_failure(4, 5, backoff, 1_000),
            EventNext::RetryAt(17_000)
        );
        assert_eq!(after_failure(5, 5, backoff, 1_000), EventNext::Quarantine);
        assert_eq!(after_failure(1, 1, backoff, 1_000), EventNext::Quarantine);
        // Many failures allowed: the wait stops growing at an hour.
        assert_eq!(
            after_failure(40, 100, backoff, 0),
            EventNext::RetryAt(3_600_000)
        );
    }
}

//! Processing of accepted events, decoupled from intake: processors claim unprocessed events from
//! the store under a lease, evaluate each against the current rule set, and record the
//! evaluations with the jobs they ask for. Events accepted before a crash are claimed after
//! restart, and an expired lease lets another processor (or instance) take over.

use crate::delivery::worker::Wakers;
use crate::health::{Backoff, WriteHealth, op};
use crate::metrics::{Metrics, RuleLabels};
use crate::rules::{CounterSource, EvalContext, Evaluation, Rules};
use crate::store::{Finished, Lease, Millis, NewJob, RuleThrottle, Store, StoredEvent, now_millis};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How a processor claims work.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Identifies this processor in leases; unique per process.
    pub owner: String,
    /// Most events claimed at once.
    pub batch: u32,
    /// How long claimed events stay ours.
    pub lease: Duration,
    /// How often to look for work without a wake-up (events from other instances).
    pub poll: Duration,
    /// After a batch that was not full, wait this long before claiming again, so that under a
    /// steady stream of notifications batches grow instead of one transaction per commit.
    pub settle: Duration,
}

/// Runs until `shutdown` is cancelled, finishing the batch in hand first. A store write that
/// fails is logged and retried after a growing delay ([`Backoff`]); the loop never ends on one.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    store: Arc<dyn Store>,
    rules: Arc<Rules>,
    wake: Arc<Notify>,
    workers: Arc<Wakers>,
    metrics: Arc<Metrics>,
    health: Arc<WriteHealth>,
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
        let started = std::time::Instant::now();
        let claimed = store.claim_events(&lease, config.batch).await;
        metrics.store_call(op::CLAIM_EVENTS, started);
        health.record(op::CLAIM_EVENTS, &claimed);
        let failed = match claimed {
            Ok(events) if !events.is_empty() => {
                let full = events.len() == config.batch as usize;
                match process(&store, &rules, &metrics, &health, &lease, events, &shutdown).await {
                    Some(kinds) => {
                        backoff.succeeded();
                        for kind in kinds {
                            workers.wake(&kind);
                        }
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

/// Evaluates a batch of claimed events (on a blocking thread: evaluation is CPU work and reads
/// counters synchronously) and records every evaluation, with its counter hits and jobs, in the
/// one transaction that finishes the batch. Returns the kinds of the jobs it recorded, or `None`
/// when the batch could not be recorded: a failed write is retried while `lease` lasts (the
/// events are still ours), after that the events are claimed and evaluated again.
async fn process(
    store: &Arc<dyn Store>,
    rules: &Arc<Rules>,
    metrics: &Arc<Metrics>,
    health: &WriteHealth,
    lease: &Lease,
    events: Vec<StoredEvent>,
    shutdown: &CancellationToken,
) -> Option<std::collections::BTreeSet<String>> {
    let count = events.len();
    let (store2, rules) = (store.clone(), rules.clone());
    let eval_metrics = metrics.clone();
    let handle = tokio::runtime::Handle::current();
    let evaluated = tokio::task::spawn_blocking(move || {
        let ruleset = rules.current();
        let counters = Arc::new(StoreCounters::new(store2, handle));
        events
            .iter()
            .map(|event| {
                let ctx = EvalContext {
                    counters: counters.clone(),
                    at_ms: event.received_at,
                    record_stats: true,
                    prefilter: true,
                };
                let evaluation = ruleset.evaluate(&event.event, &ctx);
                counters.add(&evaluation);
                metrics_for(&eval_metrics, &evaluation);
                finished(event.id, event.received_at, evaluation)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let results = match evaluated {
        Ok(results) => results,
        Err(error) => {
            tracing::error!(%error, events = count, "evaluation task failed; the events will be retried after the lease");
            return None;
        }
    };
    log_rule_errors(&results);
    let mut backoff = Backoff::store();
    loop {
        let started = std::time::Instant::now();
        let recorded = store
            .finish_events(&results, &lease.owner, now_millis())
            .await;
        metrics.store_call(op::FINISH_EVENTS, started);
        health.record(op::FINISH_EVENTS, &recorded);
        let error = match recorded {
            Ok(finished) => {
                if finished.len() < results.len() {
                    tracing::warn!(
                        lost = results.len() - finished.len(),
                        "leases lost before finishing; another processor has those events"
                    );
                }
                tracing::debug!(events = finished.len(), "events processed");
                let kinds: std::collections::BTreeSet<String> = results
                    .iter()
                    .flat_map(|r| r.jobs.iter().map(|j| j.kind.clone()))
                    .collect();
                return Some(kinds);
            }
            Err(error) => error,
        };
        // A retry writes what the failed try would have: the transaction was all or nothing,
        // and events whose lease went to another processor are left alone either way.
        let delay = backoff.failed();
        let retry_at = now_millis().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(0));
        if retry_at >= lease.until || shutdown.is_cancelled() {
            tracing::error!(%error, events = count, "recording processing failed; the events are processed again after their lease");
            return None;
        }
        tracing::error!(%error, events = count, retry_in_ms = delay.as_millis() as u64, "recording processing failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
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

/// Logs rules that failed in this batch: at most once per rule every [`RULE_ERROR_LOG_EVERY`],
/// with how many failures that line stands for, so a rule broken for every event cannot flood
/// the log.
fn log_rule_errors(results: &[Finished]) {
    /// Per rule: when it was last logged, and failures since.
    type Logged = HashMap<String, (Option<std::time::Instant>, u64)>;
    static LAST: std::sync::OnceLock<Mutex<Logged>> = std::sync::OnceLock::new();
    let mut last = LAST
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for result in results {
        let verdicts = result.record.get("verdicts").and_then(|v| v.as_array());
        for verdict in verdicts
            .into_iter()
            .flatten()
            .filter(|v| v.get("error").is_some())
        {
            let rule = verdict["rule"].as_str().unwrap_or("?").to_string();
            let entry = last.entry(rule.clone()).or_insert((None, 0));
            entry.1 += 1;
            if entry
                .0
                .is_none_or(|at| at.elapsed() >= RULE_ERROR_LOG_EVERY)
            {
                tracing::warn!(
                    %rule,
                    event = result.event_id,
                    error = %verdict["error"],
                    failures = entry.1,
                    "rule failed (failures counts this one and those not logged since the last line)"
                );
                *entry = (Some(std::time::Instant::now()), 0);
            }
        }
    }
}

/// The record of one event's evaluation, with a job for each action of each matching rule and
/// the throttles those rules asked for (applied at `evaluated_at`, the event's time).
pub fn finished(event_id: i64, evaluated_at: Millis, evaluation: Evaluation) -> Finished {
    let jobs = evaluation
        .matched()
        .flat_map(|verdict| {
            verdict
                .actions
                .iter()
                .enumerate()
                .map(|(index, action)| NewJob {
                    rule: verdict.rule.clone(),
                    action_index: u32::try_from(index).unwrap_or(u32::MAX),
                    kind: action.kind().to_string(),
                    spec: serde_json::to_value(action).unwrap_or_default(),
                })
        })
        .collect();
    let throttles = evaluation
        .matched()
        .filter_map(|verdict| {
            verdict.throttle.as_ref().map(|t| RuleThrottle {
                rule: verdict.rule.clone(),
                key: t.key.clone(),
                window_ms: t.window_ms,
                at: evaluated_at,
            })
        })
        .collect();
    Finished {
        event_id,
        throttles,
        ruleset_version: evaluation.ruleset_version.clone(),
        counter_hits: evaluation
            .counter_hits
            .iter()
            .map(|hit| (hit.key.clone(), hit.at_ms))
            .collect(),
        record: serde_json::to_value(&evaluation).unwrap_or_default(),
        jobs,
    }
}

/// Counters as the store has them, plus the hits of this batch's earlier events (not yet
/// committed: the batch is recorded in one transaction). Reads block on the runtime: use it from
/// a blocking thread. Dry runs use it too, and simply never store the hits.
pub struct StoreCounters {
    store: Arc<dyn Store>,
    runtime: tokio::runtime::Handle,
    batch_hits: Mutex<Vec<(String, Millis)>>,
}

impl StoreCounters {
    pub fn new(store: Arc<dyn Store>, runtime: tokio::runtime::Handle) -> Self {
        StoreCounters {
            store,
            runtime,
            batch_hits: Mutex::default(),
        }
    }

    fn add(&self, evaluation: &Evaluation) {
        let mut hits = self.batch_hits.lock().unwrap_or_else(|p| p.into_inner());
        hits.extend(
            evaluation
                .counter_hits
                .iter()
                .map(|h| (h.key.clone(), h.at_ms)),
        );
    }
}

impl CounterSource for StoreCounters {
    fn count_since(&self, key: &str, since_ms: i64) -> Result<u64, String> {
        let stored = self
            .runtime
            .block_on(self.store.count_hits(key, since_ms))
            .map_err(|error| format!("the counter store is unavailable: {error}"))?;
        let pending = self
            .batch_hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, at)| k == key && *at >= since_ms)
            .count() as u64;
        Ok(stored + pending)
    }
}

/// Counters as they stood when a stored event was first evaluated: the hits of earlier events
/// up to its time. Replay and what-if use it, so that re-evaluating history counts what the
/// event saw, not what came after it. Reads block on the runtime: use it from a blocking thread.
pub struct HistoricCounters {
    pub store: Arc<dyn Store>,
    pub runtime: tokio::runtime::Handle,
    pub event_id: i64,
    pub at_ms: Millis,
}

impl CounterSource for HistoricCounters {
    fn count_since(&self, key: &str, since_ms: i64) -> Result<u64, String> {
        self.runtime
            .block_on(
                self.store
                    .count_hits_as_of(key, since_ms, self.at_ms, self.event_id),
            )
            .map_err(|error| format!("the counter store is unavailable: {error}"))
    }
}

/// A processor id unique to this process: pid and start time.
pub fn owner_id() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-pid{}-{started:x}", std::process::id())
}

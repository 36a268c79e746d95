//! Processing of accepted events, decoupled from intake: processors claim unprocessed events from
//! the store under a lease, evaluate each against the current rule set, and record the
//! evaluations with the jobs they ask for. Events accepted before a crash are claimed after
//! restart, and an expired lease lets another processor (or instance) take over.

use crate::delivery::worker::Wakers;
use crate::metrics::{Metrics, RuleLabels};
use crate::rules::{CounterSource, EvalContext, Evaluation, Rules};
use crate::store::{
    EventId, Finished, Lease, Millis, NewJob, RuleThrottle, Store, StoredEvent, now_millis,
};
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

/// Runs until `shutdown` is cancelled, finishing the batch in hand first.
pub async fn run(
    store: Arc<dyn Store>,
    rules: Arc<Rules>,
    wake: Arc<Notify>,
    workers: Arc<Wakers>,
    metrics: Arc<Metrics>,
    config: ProcessorConfig,
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
        let started = std::time::Instant::now();
        let claimed = store.claim_events(&lease, config.batch).await;
        metrics.store_call("claim_events", started);
        match claimed {
            Ok(events) if !events.is_empty() => {
                let full = events.len() == config.batch as usize;
                for kind in process(&store, &rules, &metrics, &config.owner, events).await {
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
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "claiming events failed; will retry"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(config.poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Evaluates a batch of claimed events (on a blocking thread: evaluation is CPU work and records
/// counter hits synchronously, each as it is made) and records every evaluation, with its jobs,
/// in the one transaction that finishes the batch. Returns the kinds of the jobs it recorded.
async fn process(
    store: &Arc<dyn Store>,
    rules: &Arc<Rules>,
    metrics: &Arc<Metrics>,
    owner: &str,
    events: Vec<StoredEvent>,
) -> std::collections::BTreeSet<String> {
    let count = events.len();
    let (store2, rules) = (store.clone(), rules.clone());
    let eval_metrics = metrics.clone();
    let handle = tokio::runtime::Handle::current();
    let evaluated = tokio::task::spawn_blocking(move || {
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
                let evaluation = ruleset.evaluate(&event.event, &ctx);
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
            return Default::default();
        }
    };
    log_rule_errors(&results);
    let started = std::time::Instant::now();
    let recorded = store.finish_events(&results, owner, now_millis()).await;
    metrics.store_call("finish_events", started);
    match recorded {
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
            kinds
        }
        Err(error) => {
            tracing::error!(%error, events = count, "recording processing failed; will retry after the lease");
            Default::default()
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
        record: serde_json::to_value(&evaluation).unwrap_or_default(),
        jobs,
    }
}

/// The windowed counters of one event being processed: each hit is recorded in the store as it
/// is made and gets its exact ordinal there (per key, across processors and instances); an
/// event evaluated again gets the ordinals it had. Blocks on the runtime: use it from a
/// blocking thread.
pub struct StoreCounters {
    pub store: Arc<dyn Store>,
    pub runtime: tokio::runtime::Handle,
    pub event_id: EventId,
}

impl CounterSource for StoreCounters {
    fn hit(&self, key: &str, at_ms: i64, window_ms: i64) -> Result<u64, String> {
        self.runtime
            .block_on(self.store.record_hit(key, self.event_id, at_ms, window_ms))
            .map_err(|error| format!("the counter store is unavailable: {error}"))
    }
}

/// Counters as the store has them, for a dry run: what the next hit's ordinal would be, and
/// nothing is recorded. Blocks on the runtime: use it from a blocking thread.
pub struct DryRunCounters {
    pub store: Arc<dyn Store>,
    pub runtime: tokio::runtime::Handle,
}

impl CounterSource for DryRunCounters {
    fn hit(&self, key: &str, at_ms: i64, window_ms: i64) -> Result<u64, String> {
        self.runtime
            .block_on(self.store.count_hits(key, at_ms.saturating_sub(window_ms)))
            .map(|stored| stored + 1)
            .map_err(|error| format!("the counter store is unavailable: {error}"))
    }
}

/// Counters as they stood when a stored event was first evaluated: the ordinals its hits got
/// (for a key it never counted, the hits of earlier events up to its time, plus one). Replay and
/// what-if use it, so that re-evaluating history counts what the event saw, not what came after
/// it; nothing is recorded. Blocks on the runtime: use it from a blocking thread.
pub struct HistoricCounters {
    pub store: Arc<dyn Store>,
    pub runtime: tokio::runtime::Handle,
    pub event_id: EventId,
}

impl CounterSource for HistoricCounters {
    fn hit(&self, key: &str, at_ms: i64, window_ms: i64) -> Result<u64, String> {
        self.runtime
            .block_on(
                self.store
                    .hit_ordinal_as_of(key, self.event_id, at_ms, window_ms),
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

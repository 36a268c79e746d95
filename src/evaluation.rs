//! Evaluating rules in the service (as opposed to `rules`' pure evaluation): the windowed
//! counters over the store (recording for the processor, historic for replay and what-if, a dry
//! run for the API), the deep-stack thread evaluation runs on, and the record an evaluation leaves
//! in the store: its jobs and throttles. The processor, replay and the API share these.

use crate::rules::{CounterSource, Evaluation};
use crate::store::{EventId, Finished, NewJob, RuleThrottle, Store, StoreError};
use crate::time::Millis;
use std::sync::Arc;

/// The stack of the threads rules run on. A rule may build data nested as deep as its size
/// limits allow (about 11,000 levels of arrays and maps), and Rhai checks, copies and drops
/// such data recursively: far more stack than a runtime thread's 2 MiB. Only the pages used
/// are ever touched.
const EVALUATION_STACK_BYTES: usize = 256 << 20;

/// Why evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EvaluationThreadError {
    #[error("could not start an evaluation thread: {0}")]
    Spawn(std::io::Error),
    #[error("the evaluation thread panicked")]
    Panicked,
}

/// Runs rule evaluation (`work`) on a thread of its own with a deep stack (see
/// [`EVALUATION_STACK_BYTES`]), and waits for its result without blocking the runtime. `work`
/// may block on the runtime (windowed counters read the store).
pub(crate) async fn on_evaluation_thread<T, F>(work: F) -> Result<T, EvaluationThreadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rule-evaluation".into())
        .stack_size(EVALUATION_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(EvaluationThreadError::Spawn)?;
    rx.await.map_err(|_| EvaluationThreadError::Panicked)
}

/// The record of one event's evaluation, with a job for each action of each matching rule and
/// the throttles those rules asked for (applied at `evaluated_at`, the event's time). Fails
/// when the evaluation does not serialize to its record (nothing of it is then stored).
pub(crate) fn finished(
    event_id: i64,
    evaluated_at: Millis,
    evaluation: &Evaluation,
) -> Result<Finished, serde_json::Error> {
    let mut jobs = Vec::new();
    for verdict in evaluation.matched() {
        for (index, action) in verdict.actions.iter().enumerate() {
            jobs.push(NewJob {
                rule: verdict.rule.clone(),
                action_index: u32::try_from(index).unwrap_or(u32::MAX),
                kind: action.kind(),
                spec: serde_json::to_value(action)?,
            });
        }
    }
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
    Ok(Finished {
        event_id,
        throttles,
        ruleset_version: evaluation.ruleset_version.clone(),
        record: serde_json::from_value(serde_json::to_value(evaluation)?)?,
        jobs,
    })
}

/// The windowed counters of one event being processed: each hit is recorded in the store as it
/// is made and gets its exact ordinal there (per key, across processors and instances); an
/// event evaluated again gets the ordinals it had. Blocks on the runtime: use it from a
/// blocking thread.
pub(crate) struct StoreCounters {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) event_id: EventId,
}

impl CounterSource for StoreCounters {
    fn hit(&self, key: &str, at_ms: i64, window_ms: i64) -> Result<u64, String> {
        self.runtime
            .block_on(self.store.record_hit(key, self.event_id, at_ms, window_ms))
            .map_err(unavailable)
    }
}

/// Counters as the store has them, for a dry run: what the next hit's ordinal would be, and
/// nothing is recorded. Blocks on the runtime: use it from a blocking thread.
pub(crate) struct DryRunCounters {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl CounterSource for DryRunCounters {
    fn hit(&self, key: &str, at_ms: i64, window_ms: i64) -> Result<u64, String> {
        self.runtime
            .block_on(self.store.count_hits(key, at_ms.saturating_sub(window_ms)))
            .map(|stored| stored + 1)
            .map_err(unavailable)
    }
}

/// Counters as they stood when a stored event was first evaluated: the ordinals its hits got
/// (for a key it never counted, the hits of earlier events up to its time, plus one). Replay and
/// what-if use it, so that re-evaluating history counts what the event saw, not what came after
/// it; nothing is recorded. Blocks on the runtime: use it from a blocking thread.
pub(crate) struct HistoricCounters {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) event_id: EventId,
}

impl CounterSource for HistoricCounters {
    fn hit(&self, key: &str, at_ms: i64, window_ms: i64) -> Result<u64, String> {
        self.runtime
            .block_on(
                self.store
                    .hit_ordinal_as_of(key, self.event_id, at_ms, window_ms),
            )
            .map_err(unavailable)
    }
}

/// A counter read the store failed: the calling rule fails (recorded) rather than count wrong.
fn unavailable(error: StoreError) -> String {
    format!("the counter store is unavailable: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{ActionRequest, JobKind};
    use crate::rules::{CounterHit, RuleVerdict, Throttle};

    #[test]
    fn the_stored_record_is_the_evaluation_as_it_serializes() {
        let verdict = |rule: &str, matched: bool, error: Option<&str>| RuleVerdict {
            rule: rule.into(),
            file: format!("{rule}.rhai"),
            matched,
            actions: Vec::new(),
            throttle: None,
            error: error.map(String::from),
        };
        let close = ActionRequest::CloseCallbackTasks {
            phone: "13800138000".into(),
            note: Some("reached".into()),
        };
        let evaluation = Evaluation {
            ruleset_version: "v7".into(),
            evaluated: 3,
            verdicts: vec![
                RuleVerdict {
                    actions: vec![close.clone()],
                    throttle: Some(Throttle {
                        key: "13800138000".into(),
                        window_ms: 60_000,
                    }),
                    ..verdict("a", true, None)
                },
                verdict("b", false, Some("boom")),
            ],
            not_matched: vec!["c".into()],
            counter_hits: vec![CounterHit {
                key: "k".into(),
                at_ms: 5,
                window_ms: 10,
                count: Some(2),
            }],
            elapsed_us: 42,
        };
        let done = finished(9, 1_000, &evaluation).unwrap();
        assert_eq!(
            serde_json::to_value(&done.record).unwrap(),
            serde_json::to_value(&evaluation).unwrap()
        );
        assert_eq!(done.jobs.len(), 1);
        assert_eq!(done.jobs[0].kind, JobKind::CloseCallbackTasks);
        assert_eq!(done.throttles.len(), 1);
    }
}

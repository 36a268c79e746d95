//! Write health: whether this instance's writes reach the store. The intake's commits and the
//! background loops (processing, delivery, heartbeat, pruning) report each write's outcome here;
//! `/readyz` answers from it, `/metrics` counts the failures by operation, and [`Backoff`] spaces
//! a loop's retries while its writes fail.
//!
//! Readiness follows the intake: an instance is not ready from a failed commit of notifications
//! until a later one succeeds. A background write that fails (a poison event's batch, say) is
//! logged and counted but does not take the instance out of rotation. When no push arrives for
//! [`PROBE_AFTER_IDLE`], the heartbeat's tiny write serves as the probe: its success makes the
//! instance ready again, so one taken out of rotation does not wait for traffic that never comes.

use crate::metrics::Metrics;
use crate::time::{Millis, now_millis};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the intake must have been without a commit before a successful heartbeat write
/// counts as proof that writes work again.
pub const PROBE_AFTER_IDLE: Duration = Duration::from_secs(10);

/// The store operations that report here, as labelled in `switchboard_store_failures_total`.
pub mod op {
    pub const INSERT_EVENTS: &str = "insert_events";
    pub const CLAIM_EVENTS: &str = "claim_events";
    pub const FINISH_EVENTS: &str = "finish_events";
    pub const CLAIM_JOBS: &str = "claim_jobs";
    pub const RECORD_ATTEMPTS: &str = "record_attempts";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const PRUNE: &str = "prune";
}

/// Why the instance is not ready: the intake's writes are failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFailure {
    /// The operation that failed last.
    pub op: &'static str,
    /// Its error.
    pub error: String,
    /// When the first failure of this run happened (unix ms).
    pub since: Millis,
    /// Failures in a row.
    pub failures: u64,
}

/// The shared write-health state of one running service.
pub struct WriteHealth {
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Set from a failed commit of notifications until a commit (or an idle probe) succeeds.
    intake: Option<WriteFailure>,
    /// When the intake last tried to commit.
    last_commit: Option<Instant>,
}

impl WriteHealth {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        WriteHealth {
            metrics,
            state: Mutex::default(),
        }
    }

    /// Records the outcome of a write: failures are counted by `op`; the intake's commits
    /// ([`op::INSERT_EVENTS`]) set readiness, and a heartbeat after an idle spell probes it.
    pub fn record<T, E: std::fmt::Display>(&self, op: &'static str, result: &Result<T, E>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(error) => {
                self.metrics.store_failed(op);
                if op == op::INSERT_EVENTS {
                    state.last_commit = Some(Instant::now());
                    let failures = state.intake.as_ref().map_or(0, |f| f.failures) + 1;
                    let since = state.intake.as_ref().map_or_else(now_millis, |f| f.since);
                    state.intake = Some(WriteFailure {
                        op,
                        error: error.to_string(),
                        since,
                        failures,
                    });
                }
            }
            Ok(_) if op == op::INSERT_EVENTS => {
                state.last_commit = Some(Instant::now());
                if let Some(failure) = state.intake.take() {
                    tracing::info!(
                        failures = failure.failures,
                        since = failure.since,
                        "committing notifications works again: ready"
                    );
                }
            }
            Ok(_) if op == op::HEARTBEAT => {
                let idle = state
                    .last_commit
                    .is_none_or(|at| at.elapsed() >= PROBE_AFTER_IDLE);
                if idle && let Some(failure) = state.intake.take() {
                    tracing::info!(
                        failures = failure.failures,
                        since = failure.since,
                        "a probe write succeeded after the intake's commits failed: ready again"
                    );
                }
            }
            Ok(_) => {}
        }
    }

    /// Why the instance is not ready, if it is not.
    pub fn intake_failure(&self) -> Option<WriteFailure> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.intake.clone()
    }
}

/// Delays between the retries of a failing write: doubling from `first` up to `most`, back to
/// `first` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    most: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, most: Duration) -> Self {
        Backoff {
            first,
            most,
            next: first,
        }
    }

    /// The store loops' default: 100 ms, doubling up to 10 s.
    pub const fn store() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// A failure: how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.most);
        delay
    }

    pub fn succeeded(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> WriteHealth {
        WriteHealth::new(Arc::new(Metrics::new()))
    }

    #[test]
    fn a_failed_commit_makes_it_not_ready_until_one_succeeds() {
        let health = health();
        assert_eq!(health.intake_failure(), None);
        health.record::<(), _>(op::INSERT_EVENTS, &Err("disk full"));
        health.record::<(), _>(op::INSERT_EVENTS, &Err("disk full again"));
        let failure = health.intake_failure().unwrap();
        assert_eq!((failure.op, failure.failures), ("insert_events", 2));
        assert_eq!(failure.error, "disk full again");
        // Background writes neither break nor restore readiness; a heartbeat right after a
        // failed commit is no proof either.
        health.record::<(), &str>(op::FINISH_EVENTS, &Ok(()));
        health.record::<(), &str>(op::HEARTBEAT, &Ok(()));
        assert!(health.intake_failure().is_some());
        health.record::<(), &str>(op::INSERT_EVENTS, &Ok(()));
        assert_eq!(health.intake_failure(), None);
        health.record::<(), _>(op::FINISH_EVENTS, &Err("poison"));
        assert_eq!(health.intake_failure(), None);
    }

    #[test]
    fn an_idle_intake_is_probed_by_the_heartbeat() {
        let health = health();
        health.record::<(), _>(op::INSERT_EVENTS, &Err("connection refused"));
        // As if the failed commit were long ago.
        health.state.lock().unwrap().last_commit = Instant::now().checked_sub(PROBE_AFTER_IDLE);
        health.record::<(), _>(op::HEARTBEAT, &Err("connection refused"));
        assert!(health.intake_failure().is_some());
        health.record::<(), &str>(op::HEARTBEAT, &Ok(()));
        assert_eq!(health.intake_failure(), None);
    }

    #[test]
    fn failures_are_counted_by_operation() {
        let metrics = Arc::new(Metrics::new());
        let health = WriteHealth::new(metrics.clone());
        health.record::<(), _>(op::FINISH_EVENTS, &Err("x"));
        health.record::<(), _>(op::FINISH_EVENTS, &Err("x"));
        health.record::<(), _>(op::INSERT_EVENTS, &Err("x"));
        let text = metrics.render();
        assert!(
            text.contains("switchboard_store_failures_total{op=\"finish_events\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_store_failures_total{op=\"insert_events\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(100));
    }
}

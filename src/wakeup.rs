//! Wake-ups: whoever queues work wakes the task that runs it, rather than leaving it to its next
//! poll. The processor is woken by the committer, each job kind's worker by whoever queues jobs of
//! that kind, and on PostgreSQL both by the store's LISTEN/NOTIFY when another instance queued
//! the work.

use crate::store::{JobKind, Wakeup};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// One wake-up per job kind: whoever queues jobs of a kind wakes that kind's worker (and only
/// that one: an idle worker's claim is a write transaction for nothing).
#[derive(Debug, Default)]
// `pub` only because `api::AppState` holds one: the module is private, so nothing outside
// the crate can name it.
pub struct Wakers(BTreeMap<JobKind, Arc<Notify>>);

impl Wakers {
    /// The wake-up of `kind`'s worker (made on first use).
    pub(crate) fn of(&mut self, kind: JobKind) -> Arc<Notify> {
        self.0.entry(kind).or_default().clone()
    }

    /// Wakes the worker of `kind`, if there is one.
    pub(crate) fn wake(&self, kind: JobKind) {
        if let Some(notify) = self.0.get(&kind) {
            notify.notify_one();
        }
    }

    /// Wakes every worker.
    pub(crate) fn wake_all(&self) {
        self.0.values().for_each(|n| n.notify_one());
    }
}

/// Passes the store's wake-ups on, until `stop`: new events to the processor, new jobs to every
/// worker.
pub(crate) async fn forward(
    mut wakeups: mpsc::Receiver<Wakeup>,
    processor: Arc<Notify>,
    job_workers: Arc<Wakers>,
    stop: CancellationToken,
) {
    loop {
        let wakeup = tokio::select! {
            wakeup = wakeups.recv() => wakeup,
            _ = stop.cancelled() => break,
        };
        match wakeup {
            Some(Wakeup::Events) => processor.notify_one(),
            Some(Wakeup::Jobs) => job_workers.wake_all(),
            None => break,
        }
    }
}

//! Group commit for accepted notifications: requests queue their event, one task commits
//! whatever has queued up in one transaction, then answers every request of the batch. Under load
//! batches grow by themselves, so the store does one fsync for many notifications.

use crate::health::{WriteHealth, op};
use crate::store::{Inserted, NewEvent, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Why an event could not be committed. Either way nothing was stored and the sender may retry.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CommitError {
    #[error("the service is shutting down")]
    Closed,
    #[error(transparent)]
    Store(Arc<StoreError>),
}

struct Pending {
    event: NewEvent,
    reply: oneshot::Sender<Result<Inserted, CommitError>>,
}

/// The handle requests use to commit an event. Cheap to clone; the commit task ends once every
/// handle is dropped and the queue is drained.
#[derive(Clone)]
// `pub` only because `api::AppState` holds one: the module is private, so nothing outside
// the crate can name it.
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts the commit task. `committed` is notified after each batch that stored a new event;
    /// `health` hears of every commit's outcome.
    pub(crate) fn spawn(
        store: Arc<dyn Store>,
        committed: Arc<Notify>,
        max_batch: usize,
        metrics: Arc<crate::metrics::Metrics>,
        health: Arc<WriteHealth>,
    ) -> (Committer, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(max_batch.max(1) * 4);
        let task = tokio::spawn(commit_loop(
            store,
            committed,
            rx,
            max_batch.max(1),
            metrics,
            health,
        ));
        (Committer { queue }, task)
    }

    /// Queues an event and waits until it is durably committed (or found to be a duplicate).
    pub(crate) async fn commit(&self, event: NewEvent) -> Result<Inserted, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { event, reply })
            .await
            .map_err(|_| CommitError::Closed)?;
        answer.await.map_err(|_| CommitError::Closed)?
    }
}

async fn commit_loop(
    store: Arc<dyn Store>,
    committed: Arc<Notify>,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    metrics: Arc<crate::metrics::Metrics>,
    health: Arc<WriteHealth>,
) {
    let mut events = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    let mut buffer = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut buffer, max_batch).await > 0 {
        for Pending { event, reply } in buffer.drain(..) {
            events.push(event);
            replies.push(reply);
        }
        let started = std::time::Instant::now();
        let inserted = store.insert_events(&events).await;
        metrics.store_call(op::INSERT_EVENTS, started);
        health.record(op::INSERT_EVENTS, &inserted);
        match inserted {
            Ok(results) => {
                if results.iter().any(|r| !r.duplicate) {
                    committed.notify_one();
                }
                for (reply, result) in replies.drain(..).zip(results) {
                    // The request may have gone away (client hung up); the event is stored anyway.
                    let _ = reply.send(Ok(result));
                }
            }
            Err(error) => {
                // Nothing of the batch is stored (the transaction rolled back) and every sender
                // hears so: none of them gets an acknowledgement.
                tracing::error!(%error, batch = events.len(), "committing notifications failed");
                let error = CommitError::Store(Arc::new(error));
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        events.clear();
    }
}

//! Processing of accepted events, decoupled from intake: processors claim unprocessed events from
//! the store under a lease, handle them, and record the result. Events accepted before a crash are
//! claimed after restart, and an expired lease lets another processor (or instance) take over.

use crate::store::{Finished, Lease, Store, StoredEvent, now_millis};
use std::sync::Arc;
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
    wake: Arc<Notify>,
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
        match store.claim_events(&lease, config.batch).await {
            Ok(events) if !events.is_empty() => {
                process(store.as_ref(), &config.owner, &events).await;
                if events.len() == config.batch as usize {
                    continue; // more is waiting
                }
                tokio::select! {
                    _ = tokio::time::sleep(config.settle) => {}
                    _ = shutdown.cancelled() => break,
                }
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

/// Handles a batch of claimed events. This is the seam where rule evaluation plugs in: evaluate
/// each event, then record the evaluations (and the jobs they ask for) in the one transaction that
/// finishes the batch.
async fn process(store: &dyn Store, owner: &str, events: &[StoredEvent]) {
    let results: Vec<Finished> = events
        .iter()
        .map(|e| Finished {
            event_id: e.id,
            ruleset_version: String::new(),
            record: serde_json::json!({}),
            counter_hits: Vec::new(),
            jobs: Vec::new(),
        })
        .collect();
    match store.finish_events(&results, owner, now_millis()).await {
        Ok(finished) => {
            if finished.len() < results.len() {
                tracing::warn!(
                    lost = results.len() - finished.len(),
                    "leases lost before finishing; another processor has those events"
                );
            }
            tracing::debug!(events = finished.len(), "events processed");
        }
        Err(error) => {
            tracing::error!(%error, events = results.len(), "recording processing failed; will retry after the lease")
        }
    }
}

/// A processor id unique to this process: pid and start time.
pub fn owner_id() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("pid{}-{started:x}", std::process::id())
}
